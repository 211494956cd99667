"""moe_cxl (MoE-CXL Algorithm 1) and hash_shard placements, and the shared frequency table.

The hand-worked cases build a SimContext directly from a hand-made trace and a system built
from a config, so every number in them is written here; the end-to-end cases run the engine
on a small synthetic OLMoE trace (as tests/test_engine.py does).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from simulator.config.load import load_mapping
from simulator.engine.context import SimContext
from simulator.engine.simulation import Simulation
from simulator.errors import ConfigError
from simulator.hardware.system import build_system
from simulator.models.spec import get_model
from simulator.policies.base import make_policy
from simulator.policies.placement.frequency import activation_counts
from simulator.policies.placement.hash_shard import unit_hash
from simulator.policies.placement.tiering import private_bandwidth
from simulator.traces.schema import DECODE, Trace, TraceMeta
from simulator.traces.synthetic import RoutingModel, generate

GB = 1e9
S = 3 * 2048 * 1024 * 2          # one OLMoE-1B-7B expert in bf16 (SwiGLU, H 2048, I 1024)


# ---------------------------------------------------------------------------- helpers
def make_trace(experts: np.ndarray, request_id: np.ndarray, num_experts: int) -> Trace:
    T, L, k = experts.shape
    return Trace(meta=TraceMeta(model="olmoe-1b-7b", num_layers=L, num_experts=num_experts,
                                top_k=k),
                 request_id=request_id.astype(np.int64), token=np.arange(T, dtype=np.int32),
                 phase=np.full(T, DECODE, dtype=np.int8), experts=experts.astype(np.int16))


def make_ctx(system_cfg: dict, trace: Trace, slices: int = 1) -> SimContext:
    cfg = {"name": "t", "trace": "unused.parquet", "system": system_cfg,
           "placement": {"name": "single_tier"}}
    loaded = load_mapping(copy.deepcopy(cfg), source="test")
    system = build_system(loaded.config.system, source="test")
    return SimContext(config=loaded.config, model=get_model("olmoe-1b-7b"), precision="bf16",
                      trace=trace, system=system, rng=np.random.default_rng(0), requests=[],
                      slices_per_expert=slices, source="test")


def cxl_dev(profile, port, bw, lat_ns, cap_gb):
    return {"profile": profile, "path": [port, "pcie"], "read_bw_gbytes_per_s": bw,
            "write_bw_gbytes_per_s": bw, "latency_ns": lat_ns, "capacity_gb": cap_gb}


# Three expanders X, Y, Z behind their own x16 ports and one shared PCIe link (10 us):
#   X: 30 GB/s, 200 ns, room for 3 experts;   Y: 20 GB/s, 300 ns, room for 2;
#   Z: 100 GB/s on a 63 GB/s port (B_Z = 63), 1 ms, room for 1;   DRAM: plenty.
HAND_SYSTEM = {
    "compute": "h100_sxm", "local_tier": "hbm",
    "tiers": {"hbm": {"profile": "hbm3_h100_sxm"},
              "cxl": {"devices": [cxl_dev("cxl_d", "px", 30, 200, 0.0378),
                                  cxl_dev("cxl_d", "py", 20, 300, 0.0252),
                                  cxl_dev("cxl_d", "pz", 100, 1e6, 0.0126)]},
              "dram": {"profile": "ddr5_4800_8ch", "path": ["pcie"]}},
    "links": {"pcie": {"profile": "pcie5_x16", "latency_ns": 10000},
              "px": {"profile": "cxl_x16"}, "py": {"profile": "cxl_x16"},
              "pz": {"profile": "cxl_x16"}},
}
# 2 layers x 4 experts, top-1, 10 tokens: counts per object id (layer * 4 + expert)
HAND_COUNTS = np.array([5, 3, 2, 0, 6, 4, 0, 0], dtype=float)


def hand_ctx() -> SimContext:
    ex = np.zeros((10, 2, 1), dtype=np.int16)
    return make_ctx(HAND_SYSTEM, make_trace(ex, np.zeros(10), num_experts=4))


def place(ctx, section, counts=None):
    pol = make_policy("placement", section, ctx, source="test")
    if counts is not None:
        pol.frequencies = lambda: counts
    return pol.place()


def names(ctx, home):
    return [ctx.system.devices[i].name for i in home]


# ---------------------------------------------------------------------------- Algorithm 1
def test_algorithm1_on_a_hand_table():
    """Worked by hand (p = count / 10 tokens; transfer times S/30 GB/s = 0.419 ms,
    S/20 GB/s = 0.629 ms; lat = device + 10 us PCIe):
      order by count: 4 (6), 0 (5), 5 (4), 1 (3), 2 (2), 3, 6, 7 (0; ties by id)
      4 -> hbm (gpu_gb holds one expert)
      0 (L0 p.5): X 0.010+0.5*0.419=0.220  Y 0.010+0.5*0.629=0.325  Z >1   -> X  (X L0 .5S)
      5 (L1 p.4): X 0.010+0.4*0.419=0.178  Y 0.262                       -> X  (X L1 .4S)
      1 (L0 p.3): X 0.010+0.8*0.419=0.346  Y 0.010+0.3*0.629=0.199       -> Y  (Y L0 .3S)
      2 (L0 p.2): X 0.010+0.7*0.419=0.304  Y 0.010+0.5*0.629=0.325       -> X  (X full: 3)
      3 (L0 p0):  Y 0.010+0.3*0.629=0.199  Z 1.01                        -> Y  (Y full: 2)
      6: only Z has room -> Z (full); 7: CXL full -> dram
    """
    ctx = hand_ctx()
    X, Y, Z = (d.name for d in ctx.system.tiers["cxl"])
    home = place(ctx, {"name": "moe_cxl", "gpu_gb": 0.0126}, HAND_COUNTS)
    assert names(ctx, home) == [X, Y, X, Y, "hbm", X, Z, "dram"]
    assert private_bandwidth(ctx.system.tiers["cxl"]) == [30e9, 20e9, 63e9]
    # load over all layers instead: 5 sees X's 0.5S of layer 0 too, so Y is cheaper
    #   5: X 0.010+(0.5+0.4)*0.419=0.388  Y 0.010+0.4*0.629=0.262 -> Y
    home_all = place(ctx, {"name": "moe_cxl", "gpu_gb": 0.0126, "load_scope": "all"}, HAND_COUNTS)
    assert names(ctx, home_all)[5] == Y


def test_algorithm1_spills_to_then_tiers_round_robin_and_skips_missing():
    sysc = copy.deepcopy(HAND_SYSTEM)
    sysc["tiers"]["dram"] = {"devices": [{"profile": "ddr5_4800_8ch", "path": ["pcie"],
                                          "capacity_gb": 0.0126}] * 2}
    sysc["tiers"]["nvme"] = {"profile": "nvme_gen4", "path": ["pcie"]}
    ex = np.zeros((10, 2, 1), dtype=np.int16)
    ctx = make_ctx(sysc, make_trace(ex, np.zeros(10), 4))
    # no GPU budget: 4, 0, 5, 1, 2, 3 fill X (3), Y (2), Z (1); 6, 7 -> dram.0, dram.1 (one
    # each); nothing left for nvme. With cxl full at 6 objects the then-tiers take the rest.
    home = names(ctx, place(ctx, {"name": "moe_cxl"}, HAND_COUNTS))
    assert sorted(home[i] for i in (6, 7)) == ["dram.0", "dram.1"]
    assert "hbm" not in home and "nvme" not in home
    # explicit then: [nvme] skips dram
    home = names(ctx, place(ctx, {"name": "moe_cxl", "then": ["nvme"]}, HAND_COUNTS))
    assert home[6] == home[7] == "nvme"
    # default then on a system without nvme: dram only (missing tiers skipped)
    ctx2 = hand_ctx()
    assert names(ctx2, place(ctx2, {"name": "moe_cxl"}, HAND_COUNTS))[7] == "dram"


@pytest.fixture(scope="module")
def olmoe_trace(tmp_path_factory):
    m = RoutingModel.from_knobs(num_layers=16, num_experts=64, top_k=8, model="olmoe-1b-7b",
                                zipf_alpha=0.9, locality_decode=0.3, seed=5)
    path = tmp_path_factory.mktemp("tr") / "olmoe.parquet"
    generate(m, path, requests=3, prompt_len=20, decode_len=12, seed=5, len_jitter=0.3)
    return path


def engine_config(trace_path, placement, tiers, links=None, cache=None) -> dict:
    return {
        "name": "t", "seed": 1, "trace": str(trace_path), "model": {"precision": "bf16"},
        "system": {"compute": "h100_sxm", "local_tier": "hbm",
                   "tiers": {"hbm": {"profile": "hbm3_h100_sxm"}, **tiers},
                   "links": {"pcie": {"profile": "pcie5_x16"}, **(links or {})}},
        "placement": placement, "cache": cache or {"name": "lru", "capacity_gb": 2.0},
        "workload": {"batch_size": 1},
    }


def simulate(cfg):
    sim = Simulation(load_mapping(copy.deepcopy(cfg), source="test"))
    return sim, sim.run()


SMALL_TIERS = {
    "cxl": {"devices": [cxl_dev("cxl_a", "pa", 32, 214, 2.0), cxl_dev("cxl_b", "pb", 26, 239, 1.5),
                        cxl_dev("cxl_c", "pc", 5.1, 400, 0.5)]},
    "dram": {"profile": "ddr5_4800_8ch", "path": ["pcie"], "capacity_gb": 3.0},
    "nvme": {"profile": "nvme_gen4", "path": ["pn", "pcie"]},
}
SMALL_LINKS = {"pa": {"profile": "cxl_x8"}, "pb": {"profile": "cxl_x8"},
               "pc": {"profile": "cxl_x8"}, "pn": {"profile": "pcie4_x4"}}


def test_capacities_and_gpu_budget_respected(olmoe_trace):
    # 1024 experts x 12.6 MB = 12.9 GB: 2 GB pinned, 4 GB CXL, 3 GB DRAM, the rest NVMe
    cfg = engine_config(olmoe_trace, {"name": "moe_cxl", "gpu_gb": 2.0}, SMALL_TIERS, SMALL_LINKS)
    sim, res = simulate(cfg)
    used = np.bincount(sim.home, weights=sim.ctx.object_bytes, minlength=len(sim.system.devices))
    for d in sim.system.devices:
        if not d.is_local:
            assert used[d.index] <= d.spec.capacity_bytes, d.name
            assert used[d.index] > 0, d.name          # every tier got some: all paths used
    assert used[sim.system.local.index] <= 2.0 * GB
    assert 2.0 * GB - used[sim.system.local.index] < S   # budget filled to within one expert
    # the pinned experts are the most frequently activated
    counts = activation_counts(sim.ctx, "oracle")
    pinned = sim.home == sim.system.local.index
    assert counts[pinned].min() >= counts[~pinned].max()
    s = res.summary
    assert s["placement.share.hbm"] == pytest.approx(used[0] / used.sum())
    assert sum(s[f"placement.share.{t}"] for t in sim.system.tiers) == pytest.approx(1.0)


def test_equal_to_dram_offload_when_cxl_device_equals_dram(olmoe_trace):
    dram = {"profile": "ddr5_4800_8ch", "path": ["pcie"], "read_bw_gbytes_per_s": 200,
            "write_bw_gbytes_per_s": 200, "latency_ns": 100}
    cxl = {"profile": "cxl_d", "path": ["pcie"], "read_bw_gbytes_per_s": 200,
           "write_bw_gbytes_per_s": 200, "latency_ns": 100, "capacity_gb": 512}
    tiers = {"cxl": cxl, "dram": dram}
    _, a = simulate(engine_config(olmoe_trace, {"name": "moe_cxl", "gpu_gb": 0}, tiers))
    _, b = simulate(engine_config(olmoe_trace, {"name": "single_tier", "tier": "dram"}, tiers))
    assert a.summary["placement.share.cxl"] == 1.0 and b.summary["placement.share.dram"] == 1.0
    for k in ("makespan_s", "tpot_s.mean", "ttft_s.mean"):
        assert a.summary[k] == pytest.approx(b.summary[k], rel=1e-12), k


# ---------------------------------------------------------------------------- hash_shard
HASH_TIERS = {"cxl": {"devices": [cxl_dev("cxl_a", "pa", 32, 214, 512),
                                  cxl_dev("cxl_b", "pb", 26, 239, 512),
                                  cxl_dev("cxl_c", "pc", 5.1, 400, 512),
                                  cxl_dev("cxl_d", "pd", 52, 271, 512)]}}
HASH_LINKS = {"pa": {"profile": "cxl_x8"}, "pb": {"profile": "cxl_x8"},
              "pc": {"profile": "cxl_x8"}, "pd": {"profile": "cxl_x16"}}


def hash_ctx(devices, slices=8):
    sysc = {"compute": "h100_sxm", "local_tier": "hbm",
            "tiers": {"hbm": {"profile": "hbm3_h100_sxm"}, "cxl": {"devices": devices}},
            "links": {"pcie": {"profile": "pcie5_x16"},
                      **{d["path"][0]: HASH_LINKS[d["path"][0]] for d in devices}}}
    ex = np.zeros((4, 16, 8), dtype=np.int16)
    return make_ctx(sysc, make_trace(ex, np.zeros(4), num_experts=64), slices=slices)


def test_hash_shard_deterministic_order_independent_and_bandwidth_weighted():
    devs = HASH_TIERS["cxl"]["devices"]
    ctx = hash_ctx(devs)
    prof = lambda c, home: [c.system.devices[i].profile.name for i in home]  # noqa: E731
    a = place(ctx, {"name": "hash_shard"})
    assert np.array_equal(a, place(ctx, {"name": "hash_shard"}))            # same twice
    rev = hash_ctx(devs[::-1])
    assert prof(ctx, a) == prof(rev, place(rev, {"name": "hash_shard"}))    # listing order
    assert not np.array_equal(a, place(ctx, {"name": "hash_shard", "seed": 1}))
    # shares of 8192 objects vs w_d / sum w, w = (31.5, 26, 5.1, 52) GB/s (A capped by its port)
    w = np.array(private_bandwidth(ctx.system.tiers["cxl"]))
    assert np.allclose(w, [31.5e9, 26e9, 5.1e9, 52e9])
    idx = [d.index for d in ctx.system.tiers["cxl"]]
    share = np.array([(a == i).mean() for i in idx])
    assert np.abs(share - w / w.sum()).max() < 0.02, share
    # dropping a device moves only the objects that were on it
    ctx3 = hash_ctx(devs[:3])
    b = prof(ctx3, place(ctx3, {"name": "hash_shard"}))
    pa = prof(ctx, a)
    assert all(x == y for x, y in zip(pa, b) if x != "cxl_d")


def test_hash_shard_overflow_respects_capacity():
    devs = copy.deepcopy(HASH_TIERS["cxl"]["devices"])
    devs[3]["capacity_gb"] = 1.0       # CXL-D would take ~45% of 12.9 GB
    ctx = hash_ctx(devs)
    home = place(ctx, {"name": "hash_shard"})
    used = np.bincount(home, weights=ctx.object_bytes, minlength=len(ctx.system.devices))
    d = ctx.system.tiers["cxl"][3]
    assert used[d.index] <= 1.0 * GB and used[d.index] > 1.0 * GB - S
    with pytest.raises(ConfigError, match=r"placement\.tier"):
        small = copy.deepcopy(devs)
        for x in small:
            x["capacity_gb"] = 1.0
        place(hash_ctx(small), {"name": "hash_shard"})


def test_unit_hash_is_uniform_in_open_interval():
    h = unit_hash(7, np.arange(200_000), "dev")
    assert 0 < h.min() and h.max() < 1
    assert abs(h.mean() - 0.5) < 0.005
    assert np.array_equal(h, unit_hash(7, np.arange(200_000), "dev"))


# ---------------------------------------------------------------------------- frequencies
def two_phase_ctx():
    """Request 0 (5 tokens) uses expert 0, requests 1 and 2 (5 tokens each) expert 3."""
    ex = np.zeros((15, 2, 1), dtype=np.int16)
    ex[5:] = 3
    rid = np.repeat([0, 1, 2], 5)
    return make_ctx(HAND_SYSTEM, make_trace(ex, rid, num_experts=4))


def test_ema_decay_one_is_first_requests_and_oracle_sees_late_requests():
    ctx = two_phase_ctx()
    first = activation_counts(ctx, "first_requests", profile_requests=1)
    assert np.array_equal(first, [5, 0, 0, 0, 5, 0, 0, 0])
    for n in (1, 2, 3):
        assert np.array_equal(activation_counts(ctx, "ema", profile_requests=n, decay=1.0),
                              activation_counts(ctx, "first_requests", profile_requests=n))
    oracle = activation_counts(ctx, "oracle")
    assert np.array_equal(oracle, [5, 0, 0, 10, 5, 0, 0, 10])
    # ema over 2 requests with decay 0.5: request 0 is 1 request old at the window's end
    assert np.allclose(activation_counts(ctx, "ema", profile_requests=2, decay=0.5),
                       [2.5, 0, 0, 5, 2.5, 0, 0, 5])
    # and the placement follows: first_requests pins expert 0, oracle expert 3
    home_f = place(ctx, {"name": "moe_cxl", "gpu_gb": 0.0126, "frequency": "first_requests",
                         "profile_requests": 1})
    home_o = place(ctx, {"name": "moe_cxl", "gpu_gb": 0.0126, "frequency": "oracle"})
    assert names(ctx, home_f)[0] == "hbm" and names(ctx, home_o)[3] == "hbm"


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("section, key", [
    ({"decay": 0}, "placement.decay"),
    ({"decay": 1.5}, "placement.decay"),
    ({"gpu_gb": -1}, "placement.gpu_gb"),
    ({"cxl_tier": "cxl9"}, "placement.cxl_tier"),
    ({"then": ["dram", "flash"]}, "placement.then[1]"),
    ({"then": ["hbm"]}, "placement.then[0]"),
    ({"frequency": "future"}, "placement.frequency"),
])
def test_bad_input_is_a_one_line_error_naming_the_key(olmoe_trace, section, key):
    cfg = engine_config(olmoe_trace, {"name": "moe_cxl", **section}, SMALL_TIERS, SMALL_LINKS)
    with pytest.raises(ConfigError) as exc:
        simulate(cfg)
    msg = str(exc.value)
    assert key in msg and "\n" not in msg, msg


def test_experts_that_fit_in_no_tier_is_an_error(olmoe_trace):
    tiers = copy.deepcopy(SMALL_TIERS)
    del tiers["nvme"]
    links = {k: v for k, v in SMALL_LINKS.items() if k != "pn"}
    cfg = engine_config(olmoe_trace, {"name": "moe_cxl", "gpu_gb": 1.0}, tiers, links)
    with pytest.raises(ConfigError) as exc:
        simulate(cfg)
    msg = str(exc.value)
    assert "placement.then" in msg and "do not fit" in msg and "\n" not in msg, msg
