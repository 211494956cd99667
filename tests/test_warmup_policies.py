"""Decode-start warm-ups: empty(clear_at_decode), last_layer, random and SliceMoE's Predictive
Cache Warmup (policies/warmup/*.py): hand-worked states on a fake context with a real LRU
cache, the retention rule and capacity in real runs (whole experts and MSB/LSB slices), pcw
against the Empty state on a trace with locality, and bad input."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest

from simulator import load_config
from simulator.config.load import load_mapping
from simulator.engine.simulation import Simulation
from simulator.engine.workload import Request
from simulator.errors import ConfigError
from simulator.policies.base import WarmupPolicy, make_policy
from simulator.policies.cache.lru import LRU
from simulator.policies.cache.slice_lru import SliceLRU
from simulator.resources import bundled_dir
from simulator.traces.synthetic import RoutingModel, generate

WARMUPS = ({"name": "empty"}, {"name": "empty", "clear_at_decode": True},
           {"name": "last_layer"}, {"name": "last_layer", "layers": 3}, {"name": "random"},
           {"name": "pcw"}, {"name": "pcw", "min_frequency": 2})


# ---------------------------------------------------------------------------- a fake context
class FakeHierarchy:
    def __init__(self):
        self.seen: set[int] = set()
        self.takes = 0

    def take_prefill_seen(self):
        self.takes += 1
        seen, self.seen = self.seen, set()
        return seen


class FakeCtx(SimpleNamespace):
    def layer_of(self, oid):
        return oid // (self.num_experts * self.slices_per_expert)


def _ctx(experts, scores, requests, S, sizes, seed=0, pinned=None):
    experts = np.asarray(experts, dtype=np.int16)
    T, L, _k = experts.shape
    E = 3
    trace = SimpleNamespace(experts=experts, scores=None if scores is None else
                            np.asarray(scores, dtype=np.float32), path="fake.parquet")
    n = L * E * S
    return FakeCtx(slices_per_expert=S, num_layers=L, num_experts=E, trace=trace,
                   requests=requests, object_bytes=np.asarray(sizes, dtype=np.float64)[:n],
                   pinned=np.zeros(n, dtype=bool) if pinned is None else pinned,
                   hierarchy=FakeHierarchy(), rng=np.random.default_rng(seed), source="test")


def _lru(ctx, capacity, content=()):
    c = LRU(LRU.Params(capacity_gb=0.0), ctx)
    c.capacity_bytes = float(capacity)
    for o in content:
        assert c.insert(o, float(ctx.object_bytes[o])) == []
    return c


def _policy(ctx, name, **params):
    return make_policy("warmup", {"name": name, **params}, ctx)


# A request 1 of 4 prefill tokens (rows 2..5) after request 0 (rows 0..1), 2 layers of 3
# experts, top-2, (expert, gate score) per token:
#   layer 0: t0 (0 .6)(1 .4)  t1 (0 .7)(2 .3)  t2 (1 .5)(0 .5)   t3 (0 .9)(2 .1)
#   layer 1: t0 (2 .8)(1 .2)  t1 (2 .6)(1 .4)  t2 (1 .55)(2 .45) t3 (2 .7)(1 .3)
# prefill frequency f and accumulated score g per (layer, expert):
#   L0e0 f4 g2.7   L0e1 f2 g0.9   L0e2 f2 g0.4   L1e0 f0 g0   L1e1 f4 g1.45   L1e2 f4 g2.55
# Request 0 and the decode rows all pick L1e0 with large scores: reading the wrong rows
# would rank L1e0 first.
_PRE = [[[0, 1], [2, 1]], [[0, 2], [2, 1]], [[1, 0], [1, 2]], [[0, 2], [2, 1]]]
_PRE_SC = [[[.6, .4], [.8, .2]], [[.7, .3], [.6, .4]], [[.5, .5], [.55, .45]],
           [[.9, .1], [.7, .3]]]
_OTHER, _OTHER_SC = [[0, 1], [0, 1]], [[.9, .1], [.9, .1]]
EXPERTS = [_OTHER, _OTHER] + _PRE + [_OTHER, _OTHER]
SCORES = [_OTHER_SC, _OTHER_SC] + _PRE_SC + [_OTHER_SC, _OTHER_SC]
REQS = [Request(0, 0, 2, 0), Request(1, 2, 4, 2)]
# S = 2: oid = (l*3 + e)*2 + s; MSB (s = 0) 30 B, LSB (s = 1) 10 B
#   L0e0 -> 0, 1   L0e1 -> 2, 3   L0e2 -> 4, 5   L1e0 -> 6, 7   L1e1 -> 8, 9   L1e2 -> 10, 11
SIZES2 = [30.0, 10.0] * 6
# before the transition the cache holds L1e0 (left from request 0) and layer 1's slices;
# the prefill looked up every used MSB and the LSBs of 1, 3, 9, 11 (not 5, not 7)
CONTENT2 = [7, 6, 10, 11, 8, 9]                       # 120 B, least recent first
SEEN2 = {0, 1, 2, 3, 4, 8, 9, 10, 11}
# retention set: {0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11}: 6 MSB (180 B) + 5 LSB (50 B) = 230 B


def _pcw_state(capacity, **params):
    ctx = _ctx(EXPERTS, SCORES, REQS, 2, SIZES2)
    cache = _lru(ctx, 120.0, CONTENT2)
    cache.capacity_bytes = float(capacity)
    ctx.hierarchy.seen = set(SEEN2)
    w = _policy(ctx, "pcw", **params)
    w.on_prefill_end(1, cache)
    assert ctx.hierarchy.seen == set() and ctx.hierarchy.takes == 1
    assert cache.used_bytes <= cache.capacity_bytes
    return cache, w


@pytest.mark.parametrize("capacity, expected", [
    # everything fits: all kept; LSBs first by (used?, g): 7 (unused), 3 .9, 9 1.45,
    # 11 2.55, 1 2.7; then MSBs by (f, g): 6 (f0), 4 (f2 .4), 2 (f2 .9), 8 (f4 1.45),
    # 10 (f4 2.55), 0 (f4 2.7)
    (1000.0, [7, 3, 9, 11, 1, 6, 4, 2, 8, 10, 0]),
    # 230 B > 200: (a) drops LSBs 7, 3, 9 (-30 B) -> 200 B fits
    (200.0, [11, 1, 6, 4, 2, 8, 10, 0]),
    # 150: (a) drops every LSB (180 B left), (b) drops MSB 6 (the unused L1e0) -> 150 B
    (150.0, [4, 2, 8, 10, 0]),
    # 120: (b) then drops 4 (f2, g .4 < .9 of 2)
    (120.0, [2, 8, 10, 0]),
    # 60: only the two most frequent with the largest g: 10 and 0
    (60.0, [10, 0]),
    (29.0, []),
])
def test_pcw_hand_worked_state_and_order(capacity, expected):
    cache, w = _pcw_state(capacity)
    assert cache.resident() == expected
    assert w.summary() == {"warmup.transitions": 1, "warmup.kept_objects": len(expected),
                           "warmup.kept_bytes": sum(SIZES2[o] for o in expected)}


def test_pcw_eviction_follows_the_kept_order():
    cache, _w = _pcw_state(200.0)
    assert cache.insert(99, 30.0) == [11, 1, 6]     # 200 B full: LSBs 11 (10) + 1 (10) + 6 (30)


def test_pcw_thresholds():
    # LSBs with g < 1.0 (7: 0, 3: 0.9) and MSBs with f < 1 (6) go even though all fit
    cache, _w = _pcw_state(1000.0, drop_lsb_below=1.0, min_frequency=1)
    assert cache.resident() == [9, 11, 1, 4, 2, 8, 10, 0]
    cache, _w = _pcw_state(1000.0, min_frequency=3)          # f2 experts 4, 2 go too
    assert cache.resident() == [7, 3, 9, 11, 1, 8, 10, 0]


def test_pcw_ranks_unused_objects_below_used_ones_with_zero_score():
    # L0e2's recorded gate weights are 0 (f2, g0), L1e0 is unused (f0, g0): by (g, id) alone
    # LSB 5 would go before LSB 7; an object the prompt never used ranks lowest
    scores = copy.deepcopy(SCORES)
    scores[3][0][1] = scores[5][0][1] = 0.0                   # t1 and t3 at layer 0, expert 2
    ctx = _ctx(EXPERTS, scores, REQS, 2, SIZES2)
    cache = _lru(ctx, 1000.0, [5, 4, 7, 6])
    _policy(ctx, "pcw").on_prefill_end(1, cache)
    assert cache.resident() == [7, 5, 6, 4]


def test_pcw_whole_experts():
    # S = 1: oid = l*3 + e; 30 B each; resident L1e0 (3) from before, seen: used experts
    ctx = _ctx(EXPERTS, SCORES, REQS, 1, [30.0] * 6)
    cache = _lru(ctx, 90.0, [3, 5])
    cache.capacity_bytes = 100.0
    ctx.hierarchy.seen = {0, 1, 2, 4, 5}
    w = _policy(ctx, "pcw")
    w.on_prefill_end(1, cache)
    # 6 objects (180 B) > 100: drop 3 (f0), 2 (f2 g.4), 1 (f2 g.9) -> 4 (f4 1.45), 5, 0
    assert cache.resident() == [4, 5, 0]


def test_pcw_skips_pinned_objects():
    pinned = np.zeros(12, dtype=bool)
    pinned[0] = True
    ctx = _ctx(EXPERTS, SCORES, REQS, 2, SIZES2, pinned=pinned)
    cache = _lru(ctx, 1000.0, [7, 6])
    ctx.hierarchy.seen = {0, 1, 8}
    _policy(ctx, "pcw").on_prefill_end(1, cache)
    assert cache.resident() == [7, 1, 6, 8]


def test_pcw_on_a_slice_cache_keeps_lsbs_in_their_queue():
    ctx = _ctx(EXPERTS, SCORES, REQS, 2, SIZES2)
    cache = SliceLRU(SliceLRU.Params(capacity_gb=0.0), ctx)
    cache.capacity_bytes = 120.0
    for o in CONTENT2:
        assert cache.insert(o, SIZES2[o]) == []
    cache.capacity_bytes = 200.0
    ctx.hierarchy.seen = set(SEEN2)
    _policy(ctx, "pcw").on_prefill_end(1, cache)
    assert cache.resident() == [11, 1, 6, 4, 2, 8, 10, 0]
    assert cache.insert(98, 30.0) == [11, 1, 6]     # LSBs first, then the least frequent MSB


# ---------------------------------------------------------------------------- baselines, unit
def test_empty_clear_at_decode_leaves_nothing():
    ctx = _ctx(EXPERTS, SCORES, REQS, 2, SIZES2)
    cache = _lru(ctx, 120.0, CONTENT2)
    w = _policy(ctx, "empty", clear_at_decode=True)
    w.on_prefill_end(1, cache)
    assert list(cache.resident()) == [] and cache.used_bytes == 0
    assert w.summary()["warmup.transitions"] == 1
    assert w.summary()["warmup.kept_objects"] == 0


def test_empty_default_is_the_cold_start_only():
    ctx = _ctx(EXPERTS, SCORES, REQS, 2, SIZES2)
    cache = _lru(ctx, 120.0, CONTENT2)
    w = _policy(ctx, "empty")
    w.on_prefill_end(1, cache)
    assert cache.resident() == CONTENT2 and w.summary() == {}
    # tools that need an unedited cache (miss-ratio curves) tell the two apart by class
    assert type(w).on_prefill_end is WarmupPolicy.on_prefill_end
    assert not type(w).tracks_prefill
    clearing = _policy(ctx, "empty", clear_at_decode=True)
    assert type(clearing).on_prefill_end is not WarmupPolicy.on_prefill_end


def test_last_layer_keeps_only_the_last_layers_in_cache_order():
    ctx = _ctx(EXPERTS, SCORES, REQS, 2, SIZES2)
    cache = _lru(ctx, 200.0, [10, 2, 0, 7, 6, 11])           # 120 B
    ctx.hierarchy.seen = {0, 1, 8, 9, 10}
    w = _policy(ctx, "last_layer")
    w.on_prefill_end(1, cache)
    # layer 1 = oids 6..11: gone ones first (8, 9: ascending), then resident order 10, 7, 6, 11
    assert cache.resident() == [8, 9, 10, 7, 6, 11]
    # two layers: everything of the retention set fits (30*3 + 10*2 + 10 + 30 + 10 = 180 B)
    cache = _lru(ctx, 200.0, [10, 2, 0, 7, 6, 11])
    ctx.hierarchy.seen = {0, 1, 8, 9, 10}
    _policy(ctx, "last_layer", layers=2).on_prefill_end(1, cache)
    assert cache.resident() == [1, 8, 9, 10, 2, 0, 7, 6, 11]


def test_last_layer_trims_the_oldest_first():
    ctx = _ctx(EXPERTS, SCORES, REQS, 2, SIZES2)
    cache = _lru(ctx, 85.0, [10, 7, 6, 11])                  # 80 B
    ctx.hierarchy.seen = {0, 1, 8, 9}
    _policy(ctx, "last_layer").on_prefill_end(1, cache)
    # layer 1 in order: 8, 9 (evicted during prefill), then 10, 7, 6, 11 = 120 B > 85:
    # from the most recent back 11, 6, 7, 10 (80 B) fit, 9 would not -> 8 and 9 go
    assert cache.resident() == [10, 7, 6, 11]
    cache = _lru(ctx, 85.0, [7, 6, 11])
    cache.capacity_bytes = 60.0
    ctx.hierarchy.seen = {10, 8}
    _policy(ctx, "last_layer").on_prefill_end(1, cache)
    assert cache.resident() == [7, 6, 11]                     # 8 and 10 (older) dropped


def _random_state(seed, capacity=100.0):
    ctx = _ctx(EXPERTS, SCORES, REQS, 2, SIZES2, seed=seed)
    cache = _lru(ctx, 120.0, CONTENT2)
    cache.capacity_bytes = capacity
    ctx.hierarchy.seen = set(SEEN2)
    _policy(ctx, "random").on_prefill_end(1, cache)
    assert cache.used_bytes <= capacity
    return cache.resident()


def test_random_is_seeded_and_stops_at_the_first_misfit():
    retention = sorted(set(CONTENT2) | SEEN2)
    states = {}
    for seed in range(6):
        got = _random_state(seed)
        assert got == _random_state(seed)                      # reproducible
        assert set(got) <= set(retention)
        # the state is the drawn order's longest prefix that fits
        perm = [retention[i] for i in np.random.default_rng(seed).permutation(len(retention))]
        assert got == perm[:len(got)]
        assert sum(SIZES2[o] for o in perm[:len(got) + 1]) > 100.0
        states[seed] = tuple(got)
    assert len(set(states.values())) > 1                       # seeds differ


def test_a_cache_below_every_object_ends_empty():
    for name in ("last_layer", "random", "pcw"):
        ctx = _ctx(EXPERTS, SCORES, REQS, 2, SIZES2)
        cache = _lru(ctx, 120.0, CONTENT2)
        cache.capacity_bytes = 5.0                             # below every object
        ctx.hierarchy.seen = set(SEEN2)
        _policy(ctx, name).on_prefill_end(1, cache)
        assert cache.resident() == [] and cache.used_bytes == 0, name
        assert ctx.hierarchy.takes == 1, name


# ---------------------------------------------------------------------------- runs
L, E, K = 32, 8, 2


def _cfg(trace, warmup, capacity_gb, **over):
    cfg = {
        "name": "t", "trace": str(trace), "model": {"precision": "bf16"}, "seed": 0,
        "system": {"compute": {"profile": "h100_sxm"}, "local_tier": "hbm",
                   "tiers": {"hbm": {"profile": "hbm3_h100_sxm"},
                             "dram": {"profile": "ddr5_4800_8ch", "path": ["pcie"]}},
                   "links": {"pcie": {"profile": "pcie5_x16"}}},
        "placement": {"name": "single_tier", "tier": "dram"},
        "cache": {"name": "lru", "capacity_gb": capacity_gb},
        "prefetch": {"name": "none"}, "warmup": warmup,
        "workload": {"batch_size": 1}, "output": {"events": False},
    }
    cfg.update(over)
    return load_mapping(copy.deepcopy(cfg), source="test")


@pytest.fixture(scope="module")
def local_trace(tmp_path_factory):
    """Mixtral-shaped (32 layers x 8 experts, top-2), requests with their own popular experts
    and decode locality: the prompt predicts the decode."""
    m = RoutingModel.from_knobs(num_layers=L, num_experts=E, top_k=K, model="mixtral-8x7b",
                                zipf_alpha=1.0, locality_decode=0.6, locality_prefill=0.3,
                                request_concentration=5.0, seed=3)
    path = tmp_path_factory.mktemp("tr") / "local.parquet"
    generate(m, path, requests=6, prompt_len=32, decode_len=24, seed=3)
    return path


def _checked(sim):
    """Wrap the warm-up so every transition checks the retention rule and the capacity."""
    w, cache, hier = sim.warmup, sim.cache, sim.hierarchy
    inner, take = w.on_prefill_end, hier.take_prefill_seen
    log = []

    def taken():
        seen = take()
        log[-1]["seen"] = set(seen)
        return seen

    def wrapped(rid, c):
        assert c is cache
        log.append({"before": list(cache.resident()), "seen": set()})
        inner(rid, c)
        log[-1]["after"] = list(cache.resident())
        assert cache.used_bytes <= cache.capacity_bytes
        assert abs(cache.used_bytes - sum(sim.ctx.object_bytes[o] for o in cache.resident())) \
            <= 1e-6 * max(cache.capacity_bytes, 1.0)
    hier.take_prefill_seen = taken
    w.on_prefill_end = wrapped
    return log


def _check_log(sim, log, warmup):
    assert len(log) == len(sim.requests)
    pinned = sim.ctx.pinned
    for entry in log:
        retention = set(entry["before"]) | entry["seen"]
        after = entry["after"]
        assert set(after) <= retention                        # the retention rule
        assert not any(pinned[o] for o in after)
        if warmup == {"name": "empty"}:
            assert after == entry["before"]
        elif warmup.get("clear_at_decode"):
            assert after == []
        elif warmup["name"] == "last_layer":
            first = sim.ctx.num_layers - warmup.get("layers", 1)
            assert all(sim.ctx.layer_of(o) >= first for o in after)
            assert set(after) == {o for o in retention if sim.ctx.layer_of(o) >= first} \
                or sim.cache.used_bytes + float(sim.ctx.object_bytes.max()) > \
                sim.cache.capacity_bytes
        else:
            assert entry["seen"], "the warm-up asked for no prefill record"


@pytest.mark.parametrize("warmup", WARMUPS, ids=lambda w: ",".join(map(str, w.values())))
@pytest.mark.parametrize("capacity_gb", [4.0, 45.0])
def test_runs_keep_the_retention_rule_whole_experts(local_trace, warmup, capacity_gb):
    sim = Simulation(_cfg(local_trace, warmup, capacity_gb))
    log = _checked(sim)
    s = sim.run().summary
    _check_log(sim, log, warmup)
    ws = sim.warmup.summary()
    if warmup == {"name": "empty"}:
        assert ws == {}
    else:
        assert ws["warmup.transitions"] == len(sim.requests)
        assert ws["warmup.kept_objects"] == sum(len(e["after"]) for e in log)
        assert ws["warmup.kept_bytes"] == pytest.approx(
            sum(sim.ctx.object_bytes[e["after"]].sum() for e in log))
    assert s["misses.decode"] >= 0


MOBILE = bundled_dir("experiments") / "mobile_xpu_flash.yaml"   # DeepSeek-V2-Lite, batch 1


@pytest.mark.parametrize("warmup", WARMUPS, ids=lambda w: ",".join(map(str, w.values())))
def test_runs_keep_the_retention_rule_slices(warmup):
    sets = ["output.events=false", "workload.max_requests=3", "mixed_precision.name=dbsc",
            "cache.name=slice_lru"] + [f"warmup.{k}={str(v).lower()}" for k, v in warmup.items()]
    sim = Simulation(load_config(MOBILE, sets))
    assert sim.ctx.slices_per_expert == 2
    log = _checked(sim)
    sim.run()
    _check_log(sim, log, warmup)
    if warmup["name"] == "pcw":   # something was kept, LSBs (odd ids) before every MSB
        for e in log:
            after = e["after"]
            assert after
            odd = [i for i, o in enumerate(after) if o % 2]
            even = [i for i, o in enumerate(after) if o % 2 == 0]
            assert not odd or not even or max(odd) < min(even)


def _decode_misses(trace, warmup, capacity_gb, seed=0):
    return Simulation(_cfg(trace, warmup, capacity_gb, seed=seed)).run().summary["misses.decode"]


@pytest.mark.parametrize("capacity_gb", [30.0, 45.0, 60.0])
def test_pcw_misses_less_than_the_empty_state(local_trace, capacity_gb):
    pcw = _decode_misses(local_trace, {"name": "pcw"}, capacity_gb)
    empty = _decode_misses(local_trace, {"name": "empty", "clear_at_decode": True}, capacity_gb)
    assert pcw < empty


def test_random_reproduces_from_the_seed(local_trace):
    def kept(seed):
        sim = Simulation(_cfg(local_trace, {"name": "random"}, 45.0, seed=seed))
        log = _checked(sim)
        s = sim.run().summary
        return [e["after"] for e in log], s["misses.decode"]
    a, b, c = kept(1), kept(1), kept(2)
    assert a == b
    assert a[0] != c[0]


def test_default_empty_is_unchanged(local_trace):
    """The default and an explicit clear_at_decode: false are the same run (no prefill
    record, no edits)."""
    a = Simulation(_cfg(local_trace, {"name": "empty"}, 45.0))
    b = Simulation(_cfg(local_trace, {"name": "empty", "clear_at_decode": False}, 45.0))
    assert not a.hierarchy.track_prefill and not b.hierarchy.track_prefill
    sa, sb = a.run().summary, b.run().summary
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k] == sb[k] or (sa[k] != sa[k] and sb[k] != sb[k]), k


# ---------------------------------------------------------------------------- bad input
def test_pcw_needs_gate_scores(tmp_path):
    m = RoutingModel.from_knobs(num_layers=L, num_experts=E, top_k=K, model="mixtral-8x7b",
                                seed=1)
    path = tmp_path / "noscores.parquet"
    generate(m, path, requests=2, prompt_len=4, decode_len=4, seed=1, scores=False)
    with pytest.raises(ConfigError) as exc:
        Simulation(_cfg(path, {"name": "pcw"}, 8.0))
    assert exc.value.key == "warmup.name"
    assert "'scores'" in exc.value.message and "moesim trace synth" in exc.value.message
    Simulation(_cfg(path, {"name": "random"}, 8.0)).run()       # the others need no scores


@pytest.mark.parametrize("section, key", [
    ({"name": "last_layer", "layers": 0}, "warmup.layers"),
    ({"name": "pcw", "drop_lsb_below": -1.0}, "warmup.drop_lsb_below"),
    ({"name": "pcw", "min_frequency": -1}, "warmup.min_frequency"),
    ({"name": "empty", "clear_at_decode": 1}, "warmup.clear_at_decode"),
    ({"name": "random", "seed": 3}, "warmup"),
])
def test_bad_parameters(local_trace, section, key):
    with pytest.raises(ConfigError) as exc:
        Simulation(_cfg(local_trace, section, 8.0))
    assert (exc.value.key or "").startswith(key)


@pytest.mark.parametrize("warmup", [{"name": "empty", "clear_at_decode": True}, {"name": "pcw"}])
def test_miss_ratio_curves_refuse_warmups_that_edit_the_cache(local_trace, warmup):
    from simulator.mrc.lookups import lookup_stream
    with pytest.raises(ConfigError) as exc:
        lookup_stream(_cfg(local_trace, warmup, 8.0))
    assert exc.value.key == "warmup.name"
    lookup_stream(_cfg(local_trace, {"name": "empty"}, 8.0))   # the cold start only: fine
