"""The oracle next-layer prefetch policy returns, for every (layer, tokens) call, exactly
what its original per-layer ``np.unique`` formulation returned (the fast version computes an
iteration's oids once and slices them per layer)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest

from simulator.config.load import load_mapping
from simulator.engine.simulation import Simulation
from simulator.policies.prefetch.oracle_next_layer import OracleNextLayer
from simulator.traces.io import read_trace
from simulator.traces.synthetic import RoutingModel, generate

L, E, K = 32, 8, 2          # Mixtral-8x7B shapes


def reference(ctx, lookahead: int, layer: int, tokens: np.ndarray) -> list[int]:
    """The original algorithm, verbatim."""
    L, E, S = ctx.num_layers, ctx.num_experts, ctx.slices_per_expert
    out: list[int] = []
    for target in range(layer + 1, min(L, layer + 1 + lookahead)):
        ex = np.unique(ctx.trace.experts[tokens, target])
        out.extend(((ex.astype(np.int64) + target * E) * S).tolist())
    return out


@pytest.fixture(scope="module")
def mixtral_path(tmp_path_factory):
    m = RoutingModel.from_knobs(num_layers=L, num_experts=E, top_k=K, model="mixtral-8x7b",
                                zipf_alpha=0.8, locality_decode=0.3, seed=3)
    path = tmp_path_factory.mktemp("tr") / "mixtral.parquet"
    generate(m, path, requests=6, prompt_len=12, decode_len=20, seed=3, len_jitter=0.4)
    return path


def _ctx(trace, slices: int = 1):
    m = trace.meta
    return SimpleNamespace(trace=trace, num_layers=m.num_layers, num_experts=m.num_experts,
                           slices_per_expert=slices)


@pytest.mark.parametrize("slices", [1, 2])
@pytest.mark.parametrize("lookahead", [1, 3, 40])
@pytest.mark.parametrize("batch", [1, 4, 17])
def test_every_call_equals_the_reference(mixtral_path, batch, lookahead, slices):
    tr = read_trace(mixtral_path)
    ctx = _ctx(tr, slices)
    pol = OracleNextLayer(OracleNextLayer.Params(lookahead=lookahead), ctx)
    rng = np.random.default_rng(batch * 100 + lookahead)
    for it in range(30):
        rows = np.sort(rng.choice(tr.num_tokens, size=batch, replace=False)).astype(np.int64)
        for layer in range(L):
            got = pol.on_layer_start(1, layer, rows)
            assert got == reference(ctx, lookahead, layer, rows), (it, layer)
            assert all(type(x) is int for x in got)
        # layers called out of order, and repeated, still agree
        for layer in (5, 0, 31, 5, 30):
            assert pol.on_layer_start(1, layer, rows) == reference(ctx, lookahead, layer, rows)


def test_a_new_array_with_other_rows_is_recomputed(mixtral_path):
    tr = read_trace(mixtral_path)
    ctx = _ctx(tr)
    pol = OracleNextLayer(OracleNextLayer.Params(lookahead=2), ctx)
    a, b = np.array([0], dtype=np.int64), np.array([7], dtype=np.int64)
    for layer in (3, 4):          # a fresh array mid-iteration (not layer 0) is noticed
        assert pol.on_layer_start(1, layer, a) == reference(ctx, 2, layer, a)
        assert pol.on_layer_start(1, layer, b) == reference(ctx, 2, layer, b)
    out = pol.on_layer_start(1, 1, a)
    out.append(-1)                # the caller owns the returned list
    assert pol.on_layer_start(1, 1, a) == reference(ctx, 2, 1, a)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("lookahead", [1, 3])
def test_engine_calls_equal_the_reference(mixtral_path, batch, lookahead):
    """Inside a real run (prefill and decode iterations, continuous batching)."""
    cfg = {
        "name": "t", "trace": str(mixtral_path), "model": {"precision": "bf16"},
        "system": {"compute": {"profile": "h100_sxm"}, "local_tier": "hbm",
                   "tiers": {"hbm": {"profile": "hbm3_h100_sxm"},
                             "dram": {"profile": "ddr5_4800_8ch", "path": ["pcie"]}},
                   "links": {"pcie": {"profile": "pcie5_x16"}}},
        "placement": {"name": "single_tier", "tier": "dram"},
        "cache": {"name": "lru", "capacity_gb": 8.0},
        "prefetch": {"name": "oracle_next_layer", "lookahead": lookahead},
        "workload": {"batch_size": batch}, "output": {"events": False},
    }
    sim = Simulation(load_mapping(copy.deepcopy(cfg), source="test"))
    inner, calls = sim.prefetch.on_layer_start, []

    def checked(phase, layer, tokens):
        got = inner(phase, layer, tokens)
        assert got == reference(sim.ctx, lookahead, layer, tokens), (phase, layer, tokens)
        calls.append(tokens.size)
        return got
    sim.prefetch.on_layer_start = checked
    res = sim.run()
    assert len(calls) == L * (res.summary["iterations.prefill"] + res.summary["iterations.decode"])
    assert max(calls) > 1
