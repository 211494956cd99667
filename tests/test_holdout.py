"""Held-out validation: the split keeps every token exactly once, in the right part, and the
report compares synthetic and fit-part data with the held-out part."""
from __future__ import annotations

import json

import numpy as np
import pytest

from simulator.cli import main
from simulator.errors import TraceError
from simulator.resources import default_trace_path
from simulator.traces.holdout import split_holdout
from simulator.traces.io import read_trace
from simulator.traces.schema import PHASE_NAMES


def test_split_by_request_keeps_whole_requests():
    tr = read_trace(default_trace_path())            # 8 requests
    fit, held, how, tail = split_holdout(tr, 0.25)
    assert tail is None and how.startswith("by request")
    ids = tr.request_bounds()[0]
    assert fit.request_bounds()[0].tolist() == ids[:6].tolist()
    assert held.request_bounds()[0].tolist() == ids[6:].tolist()
    assert fit.num_tokens + held.num_tokens == tr.num_tokens
    np.testing.assert_array_equal(np.concatenate([fit.experts, held.experts]), tr.experts)


def test_split_inside_requests_renumbers_tails_and_keeps_phases():
    tr = read_trace(default_trace_path()).select_requests([0, 1])
    fit, held, how, tail = split_holdout(tr, 0.3)
    assert how.startswith("by token")
    _ids, s, e = tr.request_bounds()
    n_fit = np.round((e - s) * 0.7).astype(int)
    assert fit.num_tokens == n_fit.sum() and held.num_tokens == tr.num_tokens - n_fit.sum()
    np.testing.assert_array_equal(held.experts, tr.experts[tail])
    np.testing.assert_array_equal(held.phase, tr.phase[tail])
    _hid, hs, he = held.request_bounds()
    for a, b in zip(hs, he):                         # each tail is a request from token 0
        assert held.token[a:b].tolist() == list(range(b - a))
    held.validate()


def test_split_rejects_bad_fraction_and_tiny_parts():
    tr = read_trace(default_trace_path())
    with pytest.raises(TraceError, match=r"fraction must be in \(0, 1\)"):
        split_holdout(tr, 1.0)
    one = tr.select_requests([0])
    short = one._take(np.arange(one.num_tokens) < 30)
    with pytest.raises(TraceError, match="held-out part has 9 tokens"):
        split_holdout(short, 0.3)


def test_holdout_cli_reports_both_references(capsys):
    assert main(["trace", "holdout", str(default_trace_path()), "--iterations", "2", "-q",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"].startswith("by request")
    stats = {(r["phase"], r["statistic"]) for r in res["rows"]}
    for phase in PHASE_NAMES:
        assert (phase, "LRU hit rate, max gap (pp)") in stats
    for r in res["rows"]:
        assert r["synthetic"] is not None and r["synthetic"] >= 0
        assert r["fit_part"] is not None
    total = sum(res["tokens"]["fit"].values()) + sum(res["tokens"]["held_out"].values())
    assert total == read_trace(default_trace_path()).num_tokens
