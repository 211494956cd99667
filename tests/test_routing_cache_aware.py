"""Cache-aware routing (cache_prior, cumsum, max_rank) and the router-distribution helper."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simulator import load_config, run
from simulator.engine.simulation import Simulation
from simulator.errors import ConfigError
from simulator.policies.base import make_policy
from simulator.policies.routing.distribution import RouterDistribution
from simulator.resources import bundled_dir
from simulator.traces.io import read_trace
from simulator.traces.schema import DECODE, Trace, TraceMeta

from conftest import assert_one_line_error

EXP = bundled_dir("experiments") / "default.yaml"
SMALL = ["workload.max_requests=2", "output.events=false"]


def _summary(sets):
    s = run(load_config(EXP, SMALL + sets)).summary
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in s.items()}


class FakeHierarchy:
    def __init__(self, resident_oids):
        self.res = set(int(o) for o in resident_oids)

    def resident(self, oid):
        return int(oid) in self.res


@pytest.fixture(scope="module")
def sim():
    return Simulation(load_config(EXP, SMALL))


def _policy(sim, **section):
    return make_policy("routing", section, sim.ctx)


def _decode_rows(sim, n=60):
    return np.flatnonzero(sim.trace.phase == DECODE)[:n]


def test_cache_prior_boost_zero_is_trace_routing():
    base = _summary([])
    for J in (0, 1):
        got = _summary(["routing.name=cache_prior", "routing.boost=0", f"routing.protect={J}"])
        assert got["routing.mass_moved"] == 0 and got["routing.rerouted_uses"] == 0
        assert got["accuracy.proxy"] == 0
        assert {k: v for k, v in got.items()
                if not k.startswith(("routing.", "accuracy."))} == base


def test_cumsum_tiny_mass_and_max_rank_k_are_vanilla(sim):
    rng = np.random.default_rng(1)
    sim.ctx.hierarchy = FakeHierarchy(np.flatnonzero(rng.random(sim.ctx.num_objects) < 0.5))
    for pol in (_policy(sim, name="cumsum", mass=1e-6, protect=0),
                _policy(sim, name="max_rank", rank=2, protect=0)):
        for r in _decode_rows(sim):
            for layer in range(sim.ctx.num_layers):
                ex = sim.trace.experts[[r], layer].astype(np.int64)
                assert np.array_equal(pol.route(DECODE, layer, np.array([r]), ex), ex)
        assert pol.stats()["routing.mass_moved"] == 0
        assert pol.stats()["routing.rerouted_uses"] == 0


def test_huge_boost_chooses_only_resident_or_protected(sim):
    E, L = sim.ctx.num_experts, sim.ctx.num_layers
    res = {layer: {(3 * layer) % E, (3 * layer + 5) % E} for layer in range(L)}
    sim.ctx.hierarchy = FakeHierarchy(sim.ctx.oid(l, e) for l, s in res.items() for e in s)
    rows = _decode_rows(sim, 40)
    for J in (0, 1):
        pol = _policy(sim, name="cache_prior", boost=1e6, protect=J)
        for r in rows:
            for layer in range(L):
                ex = sim.trace.experts[[r], layer].astype(np.int64)
                out = pol.route(DECODE, layer, np.array([r]), ex)
                allowed = res[layer] | set(ex[0, :J].tolist())
                assert set(out[0].tolist()) <= allowed, (J, r, layer, out, ex)
                assert len(set(out[0].tolist())) == out.shape[1]
        assert pol.stats()["routing.rerouted_uses"] > 0
        assert pol.stats()["routing.mass_moved"] > 0
        # prefill is vanilla
        ex = sim.trace.experts[[0], 0].astype(np.int64)
        assert pol.route(0, 0, np.array([0]), ex) is ex


def test_no_reroute_no_mass_moved(sim):
    # everything resident: nothing to gain, nothing moves
    sim.ctx.hierarchy = FakeHierarchy(range(sim.ctx.num_objects))
    for sec in ({"name": "cache_prior", "boost": 5.0, "protect": 0},
                {"name": "cumsum", "protect": 0}, {"name": "max_rank", "protect": 0}):
        pol = _policy(sim, **sec)
        for r in _decode_rows(sim, 20):
            for layer in range(sim.ctx.num_layers):
                ex = sim.trace.experts[[r], layer].astype(np.int64)
                assert np.array_equal(pol.route(DECODE, layer, np.array([r]), ex), ex)
        st = pol.stats()
        assert st["routing.mass_moved"] == 0 and st["routing.rerouted_uses"] == 0
        assert st["routing.decode_uses"] == 20 * sim.ctx.num_layers * 2
        assert pol.labels() and "completed router distribution" in pol.labels()[0]


def _check_completion(trace, renormalized):
    d = RouterDistribution(trace, completion=True, renormalized=renormalized, residual=0.2)
    rows = np.arange(min(trace.num_tokens, 200))
    for layer in (0, trace.meta.num_layers - 1):
        p, ex = d.probs(rows, layer)
        ar = np.arange(rows.size)[:, None]
        s = trace.scores[rows, layer].astype(np.float64)
        top = p[ar, ex]
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
        assert (p > 0).all()
        if renormalized:       # ratios kept
            np.testing.assert_allclose(top / top.sum(1, keepdims=True), s / s.sum(1, keepdims=True),
                                       rtol=1e-9)
        else:                  # weights kept exactly
            np.testing.assert_allclose(top, s, rtol=1e-12)
        out = p.copy()
        out[ar, ex] = -1
        assert (out.max(axis=1) <= top.min(axis=1) * (1 + 1e-9)).all()   # top-k stay top-k
    assert d.infeasible_rows == 0
    assert d.label("x") is not None


def test_completion_keeps_topk_and_sums_to_one():
    _check_completion(read_trace(bundled_dir("traces") / "default.parquet"), True)
    _check_completion(read_trace(bundled_dir("traces") / "deepseek_v2_lite_small.parquet"), False)


def _tiny_trace(with_probs=True, with_scores=True):
    rng = np.random.default_rng(0)
    T, L, E, k = 12, 2, 6, 2
    logits = rng.normal(size=(T, L, E))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ex = np.argsort(-probs, axis=-1)[..., :k]
    sc = np.take_along_axis(probs, ex, axis=-1)
    return Trace(meta=TraceMeta(model="tiny", num_layers=L, num_experts=E, top_k=k),
                 request_id=np.repeat([0, 1], T // 2), token=np.tile(np.arange(T // 2), 2),
                 phase=np.tile([0, 0, 1, 1, 1, 1], 2).astype(np.int8),
                 experts=ex.astype(np.uint8),
                 scores=sc.astype(np.float32) if with_scores else None,
                 router_probs=probs.astype(np.float32) if with_probs else None), probs


def test_router_probs_used_untouched():
    tr, probs = _tiny_trace()
    d = RouterDistribution(tr, completion=False, renormalized=False, residual=0.2)
    p, ex = d.probs(np.arange(12), 1)
    np.testing.assert_allclose(p, probs[:, 1], rtol=1e-6)
    assert d.label("x") is None and not d.completed


def test_missing_fields_are_one_line_errors():
    tr, _ = _tiny_trace(with_probs=False)
    with pytest.raises(ConfigError, match="router_probs") as e:
        RouterDistribution(tr, completion=False, renormalized=False, residual=0.2)
    assert "routing.completion" in str(e.value) and "\n" not in str(e.value)
    tr, _ = _tiny_trace(with_probs=False, with_scores=False)
    with pytest.raises(ConfigError, match="scores"):
        RouterDistribution(tr, completion=True, renormalized=False, residual=0.2)


@pytest.mark.parametrize("sets, needles", [
    (["routing.name=cache_prior", "routing.boost=-1"], ["routing.boost"]),
    (["routing.name=cache_prior", "routing.protect=3"], ["routing.protect", "top_k=2"]),
    (["routing.name=cumsum", "routing.mass=0"], ["routing.mass", "(0, 1]"]),
    (["routing.name=cumsum", "routing.mass=1.5"], ["routing.mass"]),
    (["routing.name=max_rank", "routing.rank=1"], ["routing.rank"]),
    (["routing.name=cache_prior", "routing.completion=false"],
     ["routing.completion", "router_probs"]),
])
def test_bad_input_one_line_errors(capsys, sets, needles):
    argv = ["run", str(EXP)] + [x for s in sets for x in ("--set", s)]
    assert_one_line_error(capsys, argv, *needles)
