"""End-to-end engine checks against closed forms, invariants and a peer cache simulator.

The hardware numbers are pinned in the configs below (profile values overridden), so the
hand computations in these tests do not move when a profile's sourced value is revised.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from simulator.config.load import load_mapping
from simulator.engine.simulation import Simulation
from simulator.engine.stream import trace_stream
from simulator.traces.io import read_trace
from simulator.traces.synthetic import RoutingModel, generate

GB = 1e9
# OLMoE-1B-7B shapes (public config.json), written out here independently of the catalog:
H, INTER, E, K, LAYERS, HEADS, HD, VOCAB = 2048, 1024, 64, 8, 16, 16, 128, 50304
P_BF16 = 2
PE = 3 * H * INTER                          # params per routed expert (SwiGLU)
A = H * HEADS * HD + 2 * H * HEADS * HD + HEADS * HD * H   # q, k, v, o
KV_PER_TOKEN_LAYER = 2 * HEADS * HD * P_BF16
EXPERT_BYTES = PE * P_BF16
# pinned hardware
F = 1000e12          # FLOP/s
B_HBM = 3000e9       # B/s
B_DRAM, LAT_DRAM = 200e9, 100e-9
B_PCIE, LAT_PCIE = 50e9, 10e-6


@pytest.fixture(scope="module")
def olmoe_trace(tmp_path_factory):
    m = RoutingModel.from_knobs(num_layers=LAYERS, num_experts=E, top_k=K, model="olmoe-1b-7b",
                                zipf_alpha=0.9, locality_decode=0.3, seed=5)
    path = tmp_path_factory.mktemp("tr") / "olmoe.parquet"
    generate(m, path, requests=3, prompt_len=20, decode_len=12, seed=5, len_jitter=0.3)
    return path


def base_config(trace_path, **sections) -> dict:
    cfg = {
        "name": "test", "seed": 1, "trace": str(trace_path),
        "model": {"precision": "bf16"},
        "system": {
            "compute": {"profile": "h100_sxm", "peak_tflops_bf16": F / 1e12, "compute_efficiency": 1.0},
            "local_tier": "hbm",
            "tiers": {"hbm": {"profile": "hbm3_h100_sxm", "read_bw_gbytes_per_s": B_HBM / GB,
                              "write_bw_gbytes_per_s": B_HBM / GB},
                      "dram": {"profile": "ddr5_4800_8ch", "path": ["pcie"],
                               "read_bw_gbytes_per_s": B_DRAM / GB, "write_bw_gbytes_per_s": B_DRAM / GB,
                               "latency_ns": LAT_DRAM * 1e9}},
            "links": {"pcie": {"profile": "pcie5_x16", "bw_gbytes_per_s": B_PCIE / GB,
                               "latency_ns": LAT_PCIE * 1e9}},
        },
        "placement": {"name": "single_tier", "tier": "dram"},
        "cache": {"name": "lru", "capacity_gb": 2.0},
        "workload": {"batch_size": 1},
    }
    for k, v in sections.items():
        cfg[k] = v
    return cfg


def simulate(cfg: dict, fast_path: bool = True):
    loaded = load_mapping(copy.deepcopy(cfg), source="test")
    sim = Simulation(loaded, fast_path=fast_path)
    return sim, sim.run()


def decode_time_all_resident(pos: int, kv_per_token_layer: float = KV_PER_TOKEN_LAYER) -> float:
    """Hand roofline of one batch-1 decode iteration of OLMoE at position ``pos``."""
    c = pos + 1                                             # context incl. the token itself
    att_fl = 2 * A + 2 * HEADS * (HD + HD) * c
    att_by = A * P_BF16 + kv_per_token_layer * (c + 1)      # read context, write own KV
    moe_fl = 2 * PE * K + 2 * H * E                         # 8 experts + router
    moe_by = EXPERT_BYTES * K + H * E * P_BF16
    layer = max(att_fl / F, att_by / B_HBM) + max(moe_fl / F, moe_by / B_HBM)
    head = max(2 * H * VOCAB / F, H * VOCAB * P_BF16 / B_HBM)
    return LAYERS * layer + head


def test_all_resident_tpot_equals_hand_roofline(olmoe_trace):
    cfg = base_config(olmoe_trace, placement={"name": "all_resident"}, cache={"name": "none"})
    sim, res = simulate(cfg)
    tr = sim.trace
    expected = []
    for q in sim.requests:
        pos = tr.token[q.start + q.n_prefill: q.start + q.n_prefill + q.n_decode]
        expected.extend(decode_time_all_resident(int(p)) for p in pos)
    assert res.summary["misses.decode"] == 0 and res.summary["hit_rate"] == 1.0
    assert res.summary["tpot_s.mean"] == pytest.approx(np.mean(expected), rel=1e-12)
    assert res.summary["tpot_s.p99"] == pytest.approx(np.percentile(expected, 99), rel=1e-12)
    # roughly 1 ms per token for OLMoE on an H100-class GPU
    assert 2e-4 < res.summary["tpot_s.mean"] < 3e-3


def test_kv_policy_sets_attention_bytes_and_footprint(olmoe_trace):
    """The KV axis is live: ``local`` reports the hand-computed footprint, and a KV policy
    that stores a quarter of the bytes (e.g. 4x compressed) changes the roofline's KV term
    and the footprint exactly."""
    from simulator.policies.base import KV
    from simulator.policies.kv.local import LocalKV

    if "test_quarter" not in KV:
        @KV.register("test_quarter")
        class QuarterKV(LocalKV):
            def read_bytes_per_token_layer(self):
                return super().read_bytes_per_token_layer() / 4

            def footprint_bytes(self, tokens):
                return super().footprint_bytes(tokens) / 4

    base = base_config(olmoe_trace, placement={"name": "all_resident"}, cache={"name": "none"})
    for name, kv in (("local", KV_PER_TOKEN_LAYER), ("test_quarter", KV_PER_TOKEN_LAYER / 4)):
        sim, res = simulate({**base, "kv": {"name": name}})
        tr = sim.trace
        expected = [decode_time_all_resident(int(p), kv) for q in sim.requests
                    for p in tr.token[q.start + q.n_prefill: q.start + q.n_prefill + q.n_decode]]
        assert res.summary["tpot_s.mean"] == pytest.approx(np.mean(expected), rel=1e-12), name
        assert res.summary["local.kv_peak_bytes"] == sim.kv_peak_tokens * LAYERS * kv, name


def test_on_demand_decode_layer_is_closed_form(olmoe_trace):
    """No cache: each layer fetches its 8 experts together over one path (processor sharing:
    all arrive at lat + 8*b/min(bw)), then runs them one by one."""
    cfg = base_config(olmoe_trace, cache={"name": "none"},
                      workload={"batch_size": 1, "phases": "decode", "max_requests": 1})
    sim, res = simulate(cfg)
    q = sim.requests[0]
    pos0 = int(sim.trace.token[q.start])
    c = pos0 + 1
    att = max((2 * A + 2 * HEADS * 2 * HD * c) / F, (A * P_BF16 + KV_PER_TOKEN_LAYER * (c + 1)) / B_HBM)
    fetch = LAT_DRAM + LAT_PCIE + K * EXPERT_BYTES / min(B_DRAM, B_PCIE, B_HBM)
    one_expert = max(2 * PE / F, EXPERT_BYTES / B_HBM)
    head = max(2 * H * VOCAB / F, H * VOCAB * P_BF16 / B_HBM)
    expected_first = LAYERS * (att + fetch + K * one_expert) + head
    assert res.requests.loc[0, "ttft_s"] == pytest.approx(expected_first, rel=1e-12)
    assert res.summary["hits.decode"] == 0
    assert res.summary["bytes.fetched.decode"] == res.summary["misses.decode"] * EXPERT_BYTES


def test_bytes_conserved_and_energy_is_sum_of_parts(olmoe_trace):
    sim, res = simulate(base_config(olmoe_trace))
    s, tx = res.summary, res.transfers
    fetched = s["bytes.fetched.prefill"] + s["bytes.fetched.decode"]
    assert tx["bytes"].sum() == pytest.approx(fetched)
    assert fetched == (s["misses.prefill"] + s["misses.decode"]) * EXPERT_BYTES
    # what left DRAM crossed PCIe and landed in HBM
    assert s["bytes.read.dram"] == pytest.approx(fetched)
    assert s["bytes.link.pcie"] == pytest.approx(fetched)
    assert s["bytes.written.hbm"] == pytest.approx(fetched)
    assert sim.system.links["pcie"].fwd.bytes == pytest.approx(fetched, rel=1e-9)
    # energy: total = sum of components = sum over phases + idle
    parts = [v for k, v in s.items() if k.startswith(("energy_j.dynamic.", "energy_j.link.",
                                                       "energy_j.static."))]
    assert s["energy_j.total"] == pytest.approx(s["energy_j.compute"] + sum(parts), rel=1e-12)
    assert s["energy_j.total"] == pytest.approx(
        s["energy_j.prefill"] + s["energy_j.decode"] + s["energy_j.idle"], rel=1e-9)
    # an independent recount of two components from the transfers table and profiles
    pcie = sim.system.links["pcie"].spec
    assert s["energy_j.link.pcie"] == pytest.approx(tx["bytes"].sum() * pcie.j_per_byte)
    dram = sim.system.device("dram").spec
    assert s["energy_j.dynamic.dram"] == pytest.approx(tx["bytes"].sum() * dram.read_j_per_byte)
    assert s["energy_j_per_decode_token"] == pytest.approx(s["energy_j.total"] / s["decode_tokens"])


@pytest.mark.parametrize("cache", ["lru", "lfu", "belady"])
def test_cache_never_exceeds_capacity_and_hits_match_stream(olmoe_trace, cache):
    cap_gb = 5 * EXPERT_BYTES / GB
    sim, res = simulate(base_config(olmoe_trace, cache={"name": cache, "capacity_gb": cap_gb}))
    s = res.summary
    assert s["cache.peak_bytes"] <= s["cache.capacity_bytes"]
    assert s["cache.peak_bytes"] == 5 * EXPERT_BYTES
    assert s["lookups.prefill"] + s["lookups.decode"] == trace_stream(sim.trace).size
    # the transfers are exactly libCacheSim's misses on the same grouped lookups, in order
    if cache in ("lru", "lfu"):
        from test_cache_vs_libcachesim import peer_grouped
        stream, starts = trace_stream(sim.trace, groups=True)
        hits, missed = peer_grouped(cache, stream, starts, 5)
        assert hits == s["hits.prefill"] + s["hits.decode"]
        assert res.transfers["object_id"].tolist() == missed


def test_belady_is_a_bound_on_lru_and_lfu(olmoe_trace):
    misses = {}
    for cache in ("lru", "lfu", "belady"):
        _, res = simulate(base_config(olmoe_trace, cache={"name": cache, "capacity_gb": 8 * EXPERT_BYTES / GB}))
        misses[cache] = res.summary["misses.prefill"] + res.summary["misses.decode"]
    assert misses["belady"] <= min(misses["lru"], misses["lfu"])


@pytest.mark.parametrize("n_pinned", [100, 5, 21])   # 5 x and 21 x EXPERT_BYTES / GB * 1e9 round down
def test_static_frequency_pins_hottest_experts(olmoe_trace, n_pinned):
    cfg = base_config(olmoe_trace, cache={"name": "none"},
                      placement={"name": "static_frequency",
                                 "pinned_gb": n_pinned * EXPERT_BYTES / GB, "tier": "dram"})
    sim, res = simulate(cfg)
    tr = sim.trace
    counts = np.bincount((np.arange(LAYERS)[None, :, None] * E + tr.experts.astype(int)).ravel(),
                         minlength=LAYERS * E)
    top = set(np.lexsort((np.arange(counts.size), -counts))[:n_pinned].tolist())
    assert set(np.flatnonzero(sim.ctx.pinned).tolist()) == top
    assert res.summary["local.pinned_bytes"] == n_pinned * EXPERT_BYTES
    # every miss is an unpinned object
    assert not set(res.transfers["object_id"].tolist()) & top


@pytest.mark.parametrize("workload", [
    {"batch_size": 1},
    {"batch_size": 2, "arrivals": {"process": "poisson", "rate_per_s": 50.0}},
    {"batch_size": 3, "arrivals": {"process": "all_at_once"}},
])
def test_fast_path_equals_event_path(olmoe_trace, workload):
    cfg = base_config(olmoe_trace, workload=workload)
    _, fast = simulate(cfg, fast_path=True)
    _, slow = simulate(cfg, fast_path=False)
    for k, v in fast.summary.items():
        w = slow.summary[k]
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(w), k
        else:
            assert w == pytest.approx(v, rel=1e-9, abs=1e-15), k


def test_same_config_and_seed_give_identical_results(olmoe_trace):
    cfg = base_config(olmoe_trace, workload={"batch_size": 2,
                                             "arrivals": {"process": "poisson", "rate_per_s": 20.0}})
    _, a = simulate(cfg)
    _, b = simulate(cfg)
    same = lambda x, y: x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
    assert a.summary.keys() == b.summary.keys()
    assert all(same(a.summary[k], b.summary[k]) for k in a.summary)
    assert a.requests.equals(b.requests) and a.transfers.equals(b.transfers)
    cfg["seed"] = 2
    _, c = simulate(cfg)
    assert c.requests["arrival_s"].tolist() != a.requests["arrival_s"].tolist()


def test_batching_raises_throughput(olmoe_trace):
    outs = {}
    for b in (1, 3):
        _, res = simulate(base_config(olmoe_trace, workload={"batch_size": b}))
        outs[b] = res.summary
    assert outs[3]["decode_tokens_per_s"] > outs[1]["decode_tokens_per_s"]
    # batched decode looks up each distinct expert once per layer
    assert outs[3]["lookups.decode"] < outs[3]["expert_accesses.decode"]
    assert outs[1]["lookups.decode"] == outs[1]["expert_accesses.decode"]


@pytest.mark.parametrize("n", [1, 2])
def test_max_requests_keeps_exactly_the_first_requests(olmoe_trace, n):
    tr = read_trace(olmoe_trace)
    ids, starts, ends = tr.request_bounds()
    pre = [(tr.phase[s:e] == 0).sum() for s, e in zip(starts, ends)]
    dec = [(tr.phase[s:e] == 1).sum() for s, e in zip(starts, ends)]
    _, res = simulate(base_config(olmoe_trace, workload={"batch_size": 1, "max_requests": n}))
    assert res.summary["requests"] == n
    assert res.summary["prefill_tokens"] == sum(pre[:n])
    assert res.summary["decode_tokens"] == sum(dec[:n])


# ---------------------------------------------------------------------------- prefetch
def _distinct_objects(trace, layers):
    ex = trace.experts.astype(int)
    return sum(np.unique(ex[:, l]).size for l in layers)


def test_oracle_prefetch_counts_match_the_trace(olmoe_trace):
    """With a cache that never evicts, the oracle prefetches every object the first time its
    layer (>= 1) needs it; only layer-0 objects are fetched on demand. Prefetching changes
    when bytes arrive, not what the cache holds: hits equal the run without prefetch."""
    cfg = base_config(olmoe_trace, cache={"name": "lru", "capacity_gb": LAYERS * E * EXPERT_BYTES / GB})
    _, base = simulate(cfg)
    sim, res = simulate({**cfg, "prefetch": {"name": "oracle_next_layer"}})
    s = res.summary
    tr = sim.trace
    assert s["prefetch.issued"] == _distinct_objects(tr, range(1, LAYERS))
    assert s["prefetch.accuracy"] == 1.0 and s["prefetch.wasted"] == 0
    for k in ("hits.prefill", "hits.decode", "misses.prefill", "misses.decode"):
        assert s[k] == base.summary[k], k
    misses = s["misses.prefill"] + s["misses.decode"]
    assert misses - s["prefetch.useful"] == _distinct_objects(tr, [0])
    tx = res.transfers
    assert (tx["purpose"] == "prefetch").sum() == s["prefetch.issued"]
    assert tx["bytes"].sum() == pytest.approx(misses * EXPERT_BYTES)
    assert (tx[tx["purpose"] == "prefetch"]["layer"] >= 1).all()


@pytest.mark.parametrize("cache", [{"name": "lru", "capacity_gb": 20 * EXPERT_BYTES / GB},
                                   {"name": "none"}])
@pytest.mark.parametrize("pcie_gb", [50, 2000])
def test_oracle_prefetch_is_never_slower(olmoe_trace, cache, pcie_gb):
    cfg = base_config(olmoe_trace, cache=cache)
    cfg["system"]["links"]["pcie"]["bw_gbytes_per_s"] = pcie_gb
    cfg["system"]["tiers"]["dram"]["read_bw_gbytes_per_s"] = 4 * pcie_gb
    _, base = simulate(cfg)
    _, pf = simulate({**cfg, "prefetch": {"name": "oracle_next_layer"}})
    assert pf.summary["e2e_s.mean"] <= base.summary["e2e_s.mean"] * (1 + 1e-12)
    assert pf.summary["tpot_s.mean"] <= base.summary["tpot_s.mean"] * (1 + 1e-12)
    if pcie_gb == 2000:       # fetches comparable to compute: overlapping them pays
        assert pf.summary["tpot_s.mean"] < 0.95 * base.summary["tpot_s.mean"]


def test_prefetch_runs_identically_with_and_without_fast_path(olmoe_trace):
    cfg = base_config(olmoe_trace, prefetch={"name": "oracle_next_layer", "lookahead": 2},
                      workload={"batch_size": 2})
    _, fast = simulate(cfg, fast_path=True)
    _, slow = simulate(cfg, fast_path=False)
    for k, v in fast.summary.items():
        w = slow.summary[k]
        assert (math.isnan(v) and math.isnan(w)) or w == pytest.approx(v, rel=1e-9, abs=1e-15), k


# ---------------------------------------------------------------------------- routing
def test_rerouting_path_equals_a_pre_rerouted_trace(olmoe_trace, tmp_path):
    """A routing policy that sends every token to expert (e + 1) mod E gives exactly the
    result of trace routing on a trace whose experts were shifted beforehand."""
    from simulator.policies.base import ROUTING, RoutingPolicy
    from simulator.traces.io import write_trace

    if "test_shift" not in ROUTING:
        @ROUTING.register("test_shift")
        class Shift(RoutingPolicy):
            def route(self, phase, layer, tokens, experts):
                return (experts + 1) % self.ctx.num_experts

    tr = read_trace(olmoe_trace)
    tr.experts = ((tr.experts.astype(int) + 1) % E).astype(tr.experts.dtype)
    shifted = tmp_path / "shifted.parquet"
    write_trace(tr, shifted)
    for wl in ({"batch_size": 1}, {"batch_size": 3}):
        _, a = simulate(base_config(olmoe_trace, routing={"name": "test_shift"}, workload=wl))
        _, b = simulate(base_config(shifted, workload=wl))
        assert a.summary == pytest.approx(b.summary, nan_ok=True)
        assert a.transfers["object_id"].tolist() == b.transfers["object_id"].tolist()


@pytest.mark.parametrize("cache", [{"name": "lru", "capacity_gb": 20 * EXPERT_BYTES / GB},
                                   {"name": "none"}])
def test_each_prefetch_is_used_at_most_once_and_bytes_balance(olmoe_trace, cache):
    """A slow link makes prefetches late; a late prefetch is used by the lookup that waited
    for it and must not land in the staging buffer for a second, free use. Every miss is
    served by one transfer (demand or a useful prefetch), so the bytes moved are
    (misses - useful + issued) experts."""
    cfg = base_config(olmoe_trace, cache=cache, prefetch={"name": "oracle_next_layer"},
                      workload={"batch_size": 2})
    cfg["system"]["links"]["pcie"]["bw_gbytes_per_s"] = 50
    _, res = simulate(cfg)
    s = res.summary
    assert s["prefetch.late"] > 0
    assert 0 <= s["prefetch.useful"] <= s["prefetch.issued"]
    assert s["prefetch.wasted"] >= 0 and s["prefetch.accuracy"] <= 1.0
    misses = s["misses.prefill"] + s["misses.decode"]
    expected = misses - s["prefetch.useful"] + s["prefetch.issued"]
    assert res.transfers["bytes"].sum() == pytest.approx(expected * EXPERT_BYTES)
