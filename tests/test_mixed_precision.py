"""HOBBIT-style mixed precision (policies/mixed_precision/hobbit.py): which copy each use
reads, the bytes that follow, and the reduction to full precision at threshold 0."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import assert_one_line_error
from simulator import load_config
from simulator.engine.simulation import Simulation
from simulator.resources import bundled_dir
from simulator.traces.schema import DECODE

OFFLOAD = bundled_dir("experiments") / "cpu_offload.yaml"   # no cache: every use is a fetch


def _run(sets):
    sim = Simulation(load_config(OFFLOAD, ["output.events=false", "workload.max_requests=3"]
                                 + list(sets)))
    return sim, sim.run().summary


def test_decode_bytes_follow_the_gate_scores():
    """Without a cache nothing is resident, so a decode use with gate score < threshold
    fetches the low-bit copy (low_bits / 16 of a bf16 expert) and every other use the full
    copy: bytes fetched in decode, counted here from the trace, match exactly."""
    thr, bits = 0.3, 4.5
    sim, s = _run(["mixed_precision.name=hobbit", f"mixed_precision.threshold={thr}",
                   f"mixed_precision.low_bits={bits}"])
    tr = sim.trace
    full = float(sim.model.expert_bytes("bf16"))
    rows = np.concatenate([np.arange(q.start + q.n_prefill, q.start + q.n_prefill + q.n_decode)
                           for q in sim.requests])
    assert (tr.phase[rows] == DECODE).all()
    sc = tr.scores[rows]
    n_lo = int((sc < thr).sum())
    n_hi = sc.size - n_lo
    assert n_lo > 0 and n_hi > 0
    want = n_hi * full + n_lo * full * bits / 16.0
    assert s["bytes.fetched.decode"] == pytest.approx(want, rel=1e-12)
    assert s["precision.low_uses"] >= n_lo


def test_threshold_zero_is_full_precision():
    _sim, full = _run([])
    _sim, hob = _run(["mixed_precision.name=hobbit", "mixed_precision.threshold=0"])
    assert hob["precision.low_uses"] == 0
    for k in ("tpot_s.mean", "ttft_s.mean", "bytes.fetched.decode", "energy_j.total",
              "makespan_s"):
        assert hob[k] == pytest.approx(full[k], rel=1e-9), k


def test_low_bit_copies_cut_decode_time_and_energy():
    _sim, full = _run([])
    _sim, hob = _run(["mixed_precision.name=hobbit", "mixed_precision.threshold=0.5"])
    assert hob["tpot_s.mean"] < full["tpot_s.mean"]
    assert hob["bytes.fetched.decode"] < full["bytes.fetched.decode"]
    assert 0 < hob["precision.low_fraction"] < 1


def test_hobbit_beside_a_cache_uses_a_resident_full_copy():
    """With an LRU cache, a use whose full copy is cached runs at full precision even when
    its score is low: fewer low-bit uses than without the cache."""
    _sim, nocache = _run(["mixed_precision.name=hobbit", "mixed_precision.threshold=0.5"])
    _sim, cached = _run(["mixed_precision.name=hobbit", "mixed_precision.threshold=0.5",
                         "cache={name: lru, capacity_gb: 24}"])
    assert cached["precision.low_uses"] < nocache["precision.low_uses"]


@pytest.mark.parametrize("sets,needles", [
    (["mixed_precision.name=hobbit", "mixed_precision.low_bits=0"],
     ["mixed_precision.low_bits"]),
    (["mixed_precision.name=hobbit", "mixed_precision.low_bits=16"],
     ["mixed_precision.low_bits", "not smaller"]),
    (["mixed_precision.name=hobbit", "mixed_precision.threshold=-0.1"],
     ["mixed_precision.threshold"]),
])
def test_bad_input(capsys, tmp_path, sets, needles):
    argv = ["run", str(OFFLOAD), "-o", str(tmp_path / "o")]
    for x in sets:
        argv += ["--set", x]
    assert_one_line_error(capsys, argv, *needles)
