"""Synthetic traces: deterministic per seed, bundled traces reproducible from their documented
commands, and each knob moves the statistic it is meant to move."""
from __future__ import annotations

import shlex

import numpy as np
import pytest

from simulator.cli import main
from simulator.errors import ConfigError
from simulator.resources import bundled_dir
from simulator.traces import stats
from simulator.traces.io import read_trace
from simulator.traces.synthetic import RoutingModel, generate


def small(**kw):
    base = dict(num_layers=6, num_experts=16, top_k=2, seed=3)
    base.update(kw)
    return RoutingModel.from_knobs(**base)


def gen(tmp_path, model, name="t.parquet", **kw):
    args = dict(requests=6, prompt_len=20, decode_len=40, seed=1)
    args.update(kw)
    p = tmp_path / name
    generate(model, p, **args)
    return p


def same_trace(a, b) -> bool:
    ta, tb = read_trace(a), read_trace(b)
    return (ta.meta == tb.meta and np.array_equal(ta.experts, tb.experts)
            and np.array_equal(ta.scores, tb.scores) and np.array_equal(ta.token, tb.token)
            and np.array_equal(ta.phase, tb.phase) and ta.arrival_s == tb.arrival_s)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    m = small()
    a = gen(tmp_path, m, "a.parquet", arrival_rate=2.0)
    b = gen(tmp_path, m, "b.parquet", arrival_rate=2.0)
    c = gen(tmp_path, m, "c.parquet", arrival_rate=2.0, seed=2)
    assert a.read_bytes() == b.read_bytes()
    assert not same_trace(a, c)


def test_chunks_bound_requests_and_tokens_and_cover_each_request_once():
    from simulator.traces.synthetic import CHUNK_ACCESSES, CHUNK_REQUESTS, chunks
    per_token = 64                                   # e.g. 32 layers x top-2
    CHUNK_TOKENS = CHUNK_ACCESSES // per_token
    lengths = np.array([100] * 1000 + [CHUNK_TOKENS + 5000] + [10] * 600)
    got = list(chunks(lengths, per_token))
    seen = np.concatenate([idx for _w0, _w1, idx in got])
    assert sorted(seen.tolist()) == list(range(lengths.size))
    for w0, w1, idx in got:
        assert w0 <= idx.min() and idx.max() < w1
        assert idx.size <= CHUNK_REQUESTS
        assert lengths[idx].sum() <= CHUNK_TOKENS or idx.size == 1
        assert (np.diff(lengths[idx]) >= 0).all()          # similar lengths together
    assert [idx.tolist() for *_w, idx in got if lengths[idx].sum() > CHUNK_TOKENS] == [[1000]]


def test_generation_holds_at_most_one_window_in_memory(monkeypatch):
    """Bounded memory: sample_arrays yields window by window, none larger than
    WINDOW_ACCESSES (unless one request alone is), requests in order and each exactly once."""
    from simulator.traces import synthetic
    monkeypatch.setattr(synthetic, "WINDOW_ACCESSES", 4000)
    monkeypatch.setattr(synthetic, "CHUNK_ACCESSES", 1500)
    m = small()
    per_token = m.num_layers * m.top_k
    P = np.array([5, 30, 2, 0, 40, 7, 3, 90, 1, 12] * 2 + [300] + [5, 30, 2, 0, 40, 7, 3, 90, 1, 12] * 2)
    D = np.array([9, 1, 20, 6, 0, 14, 3, 2, 60, 5] * 2 + [50] + [9, 1, 20, 6, 0, 14, 3, 2, 60, 5] * 2)
    blocks = list(synthetic.sample_arrays(m, P, D, seed=3, scores=True))
    assert len(blocks) >= -(-int((P + D).sum()) * per_token // 4000)      # >= 4 windows
    nxt = 0
    for w0, w1, ex, sc, _pr in blocks:
        assert w0 == nxt and w1 > w0
        nxt = w1
        assert ex.shape == (int((P + D)[w0:w1].sum()), m.num_layers, m.top_k)
        assert sc.shape == ex.shape
        assert ex.size <= 4000 or w1 - w0 == 1
    assert nxt == P.size
    # the one request larger than a window (350 tokens x 12 accesses) is a window of its own
    assert [(w0, w1) for w0, w1, ex, *_ in blocks if ex.size > 4000] == [(20, 21)]


@pytest.mark.parametrize("name", ["default", "deepseek_v2_lite_small", "mixtral_batch32"])
def test_bundled_traces_regenerate_from_documented_command(tmp_path, name):
    readme = (bundled_dir("traces") / "README.md").read_text()
    block = readme.split("```")[1].replace("\\\n", " ")
    cmd = next(line for line in block.splitlines() if f"traces/{name}.parquet" in line)
    argv = shlex.split(cmd)[1:]
    out = tmp_path / f"{name}.parquet"
    argv[argv.index("-o") + 1] = str(out)
    assert main(argv) == 0
    assert same_trace(out, bundled_dir("traces") / f"{name}.parquet")


def test_knobs_move_their_statistics(tmp_path):
    def stat(fn, **knobs):
        return fn(read_trace(gen(tmp_path, small(**knobs), f"{id(knobs)}.parquet", requests=8)))
    overlap = lambda t: stats.consecutive_overlap(t, phase=1)["overall"]
    assert stat(overlap, locality_decode=0.7) > stat(overlap, locality_decode=0.0) + 0.3
    top_gini = lambda t: float(np.mean(stats.gini(stats.popularity(t))))
    assert stat(top_gini, zipf_alpha=1.5) > stat(top_gini, zipf_alpha=0.0) + 0.2
    mi = lambda t: stats.cross_layer_dependence(stats.transition_counts(t))
    assert stat(mi, cross_layer=0.9, transition_concentration=0.05) > stat(mi, cross_layer=0.0)
    top1 = lambda t: float(t.scores[:, :, 0].mean())
    assert stat(top1, gate_sigma=3.0) > stat(top1, gate_sigma=0.2)


def test_uniform_knobs_give_uniform_marginals(tmp_path):
    t = read_trace(gen(tmp_path, small(zipf_alpha=0.0, locality_decode=0.0, locality_prefill=0.0,
                                       cross_layer=0.0), requests=40, prompt_len=0, decode_len=50))
    pop = stats.popularity(t)
    assert np.abs(pop - 1 / 16).max() < 0.02          # 40x50x2 = 4000 draws per layer
    ov = stats.consecutive_overlap(t, phase=1)
    assert ov["overall"] == pytest.approx(2 / 16, abs=0.02)


@pytest.mark.parametrize("knob,value", [("locality_decode", 1.5), ("zipf_alpha", -1.0),
                                        ("top_k", 20), ("request_concentration", 0.0)])
def test_bad_knobs_are_config_errors(knob, value):
    with pytest.raises(ConfigError, match=knob):
        small(**{knob: value})


def test_scores_descend_and_router_probs_are_distributions(tmp_path):
    t = read_trace(gen(tmp_path, small(gate_sigma=1.5, norm_topk=False), router_probs=True))
    assert (np.diff(t.scores, axis=2) <= 1e-6).all()
    probs = t.router_probs.astype(np.float64)
    assert np.allclose(probs.sum(axis=2), 1.0, atol=1e-2)
    # the chosen experts are the router's top-k, with their probabilities as scores
    top = np.argsort(-probs, axis=2)[:, :, :2]
    assert (np.sort(top, axis=2) == np.sort(t.experts.astype(int), axis=2)).mean() > 0.99
