"""SliceMoE's bit-sliced caching: the dbsc precision policy, the slice_lru cache, the static
quantized baselines and the accuracy proxy (policies/mixed_precision/dbsc.py, quantized.py,
policies/cache/slice_lru.py, quant/error_model.py)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import assert_one_line_error
from simulator import load_config
from simulator.engine.simulation import Simulation
from simulator.policies.cache.lru import LRU
from simulator.policies.cache.slice_lru import SliceLRU
from simulator.quant import amat
from simulator.resources import bundled_dir
from simulator.traces.io import read_trace, write_trace

MOBILE = bundled_dir("experiments") / "mobile_xpu_flash.yaml"   # DeepSeek-V2-Lite, LPDDR4 + UFS


def _sim(sets, trace=None):
    return Simulation(load_config(MOBILE, ["output.events=false"] + list(sets)), trace)


def _run(sets, trace=None):
    sim = _sim(sets, trace)
    return sim, sim.run().summary


DBSC = ["mixed_precision.name=dbsc", "cache.name=slice_lru"]


# ---------------------------------------------------------------------------- slice cache
def _slice_cache(capacity, lsb_first=True, lsb_evicts_msb=True):
    ctx = SimpleNamespace(slices_per_expert=2, source=None)
    p = SliceLRU.Params(capacity_gb=capacity / 1e9, lsb_first=lsb_first,
                        lsb_evicts_msb=lsb_evicts_msb)
    return SliceLRU(p, ctx)


def test_slice_cache_never_exceeds_capacity_and_evicts_lsbs_first():
    rng = np.random.default_rng(3)
    sizes = {o: (5.0 if o % 2 == 0 else 4.0) for o in range(200)}
    c = _slice_cache(60.0)
    for _ in range(5000):
        o = int(rng.integers(200))
        if c.access(o):
            continue
        lsb_before = [x for x in c.resident() if x % 2]
        ev = c.insert(o, sizes[o])
        assert c.used_bytes <= c.capacity_bytes + 1e-9
        assert c.used_bytes == pytest.approx(sum(sizes[x] for x in c.resident()))
        # no MSB is evicted while an LSB that was resident before is still resident after
        if any(x % 2 == 0 for x in ev):
            assert not any(x in lsb_before and x not in ev for x in lsb_before), ev


def test_lsb_is_evicted_before_older_msbs():
    c = _slice_cache(14.0)
    c.insert(0, 5.0)            # MSB of expert 0 (oldest)
    c.insert(3, 4.0)            # LSB of expert 1
    c.insert(2, 5.0)            # MSB of expert 1  -> full (14)
    assert c.insert(4, 5.0) == [3, 0]   # the LSB goes first, then the least-recent MSB
    assert sorted(c.resident()) == [2, 4]


def test_lsb_that_would_evict_an_msb_is_declined_when_asked():
    c = _slice_cache(10.0, lsb_evicts_msb=False)
    c.insert(0, 5.0)
    c.insert(2, 5.0)
    assert c.insert(1, 4.0) == [1]          # not kept
    assert sorted(c.resident()) == [0, 2]


def test_slice_cache_with_lsb_first_off_is_plain_lru():
    rng = np.random.default_rng(5)
    stream = rng.integers(0, 120, 4000).tolist()
    a = _slice_cache(40.0, lsb_first=False)
    b = LRU(LRU.Params(capacity_gb=40.0 / 1e9), SimpleNamespace())
    for o in stream:
        size = 5.0 if o % 2 == 0 else 4.0
        ha, hb = a.access(o), b.access(o)
        assert ha == hb
        if not ha:
            assert a.insert(o, size) == b.insert(o, size)


# ---------------------------------------------------------------------------- dbsc
def test_dbsc_objects_are_the_amat_slices():
    sim = _sim(DBSC)
    sb = amat.expert_slice_bytes(sim.model, 8, 4, 32)
    assert sim.ctx.slices_per_expert == 2
    assert sim.ctx.object_bytes[0] == sb.msb and sim.ctx.object_bytes[1] == sb.lsb
    assert sb.msb + sb.lsb == sb.high                       # the catalog expert packs exactly
    assert sim.ctx.full_expert_bytes == sb.high


class _FakeHierarchy:
    def __init__(self, resident):
        self._r = set(resident)
        self.filled = []

    def resident(self, oid):
        return oid in self._r

    def fill(self, phase, oids, t):
        self.filled += list(oids)


def test_critical_expert_with_only_its_msb_counts_one_slice_miss_and_runs_low():
    sim = _sim(DBSC + ["mixed_precision.threshold=0.3"])
    pol = sim.mixed
    hier = _FakeHierarchy({(0 * 64 + 5) * 2})              # expert 5's MSB only
    sim.ctx.hierarchy = hier
    experts = np.array([[5, 9]])
    scores = np.array([[0.6, 0.1]])                       # 5 critical, 9 not
    oids, counts = pol.select(1, 0, np.array([0]), experts, hier, scores)
    assert oids == [10, 18] and counts == [1, 1]            # MSBs only: nothing at b_high
    assert pol.msb_misses[1] == 1 and pol.msb_lookups[1] == 2   # expert 9's MSB missed
    assert pol.lsb_lookups[1] == 1 and pol.lsb_misses[1] == 1   # expert 5's LSB missed
    assert pol.high_uses[1] == 0 and pol.low_uses[1] == 2
    pol.after_lookup(1, 0, 0.0)
    assert hier.filled == [11]                              # its LSB loads in the background
    # both slices resident: b_high, LSB read with no extra FLOPs
    hier2 = _FakeHierarchy({10, 11})
    oids, counts = pol.select(1, 0, np.array([0]), np.array([[5, 9]]), hier2, scores)
    assert oids == [10, 11, 18] and counts == [1, 0, 1]
    assert pol.high_uses[1] == 1
    assert pol.error_mass == pytest.approx(0.6 * pol.err_low + 0.1 * pol.err_low
                                           + 0.6 * pol.err_high + 0.1 * pol.err_low)


def test_wait_mode_fetches_the_lsb_with_the_layer():
    sim = _sim(DBSC + ["mixed_precision.threshold=0.3", "mixed_precision.lsb_miss=wait"])
    hier = _FakeHierarchy({10})
    oids, counts = sim.mixed.select(1, 0, np.array([0]), np.array([[5, 9]]), hier,
                                    np.array([[0.6, 0.1]]))
    assert oids == [10, 11, 18] and counts == [1, 0, 1]
    assert sim.mixed.high_uses[1] == 1


def test_flash_bytes_are_slice_misses_times_slice_bytes():
    sim, s = _run(DBSC + ["mixed_precision.threshold=0.15"])
    assert s["slices.lsb_lookups.decode"] > 0 and s["slices.lsb_misses.decode"] > 0
    want = sum(s[f"slices.msb_misses.{p}"] * s["slices.msb_bytes"]
               + s[f"slices.lsb_misses.{p}"] * s["slices.lsb_bytes"]
               for p in ("prefill", "decode"))
    assert s["bytes.read.flash"] == pytest.approx(want, rel=1e-12)
    assert s["fills"] == s["slices.lsb_misses.prefill"] + s["slices.lsb_misses.decode"]
    assert s["cache.peak_bytes"] <= s["cache.capacity_bytes"]


def test_energy_per_component_sums_to_the_total():
    _sim_, s = _run(DBSC + ["mixed_precision.threshold=0.15"])
    parts = [v for k, v in s.items() if k.startswith(("energy_j.dynamic.", "energy_j.link.",
                                                     "energy_j.static."))]
    assert s["energy_j.total"] == pytest.approx(s["energy_j.compute"] + sum(parts), rel=1e-12)
    assert s["energy_j.total"] == pytest.approx(
        s["energy_j.prefill"] + s["energy_j.decode"] + s["energy_j.idle"], rel=1e-9)


def test_all_critical_slice_lru_equals_whole_expert_lru():
    """Threshold 0 (every expert critical), LSBs treated like MSBs, the LSB fetched with the
    layer, and a budget of whole high-bit experts: slice LRU is whole-expert LRU, so each
    slice misses exactly when the 8-bit expert misses under plain LRU."""
    sim0 = _sim(DBSC)
    high = sim0.ctx.full_expert_bytes
    cap = 300 * high / 1e9
    _s1, sl = _run(DBSC + ["mixed_precision.threshold=0", "mixed_precision.lsb_miss=wait",
                           "cache.lsb_first=false", f"cache.capacity_gb={cap!r}"])
    _s2, whole = _run(["mixed_precision.name=quantized", "mixed_precision.bits=8",
                       "cache.name=lru", f"cache.capacity_gb={cap!r}"])
    assert _s2.ctx.object_bytes[0] == high
    for p in ("prefill", "decode"):
        assert sl[f"slices.msb_misses.{p}"] == whole[f"misses.{p}"]
        assert sl[f"slices.lsb_misses.{p}"] == whole[f"misses.{p}"]
        assert sl[f"slices.msb_lookups.{p}"] == whole[f"lookups.{p}"]
    assert sl["precision.low_uses"] == 0
    assert sl["bytes.read.flash"] == pytest.approx(whole["bytes.read.flash"], rel=1e-12)


def test_precision_sets_compute_bytes_and_error():
    """Nothing critical: every expert runs from its MSB slice (b_low): fewer DRAM bytes read
    by compute, and a larger weight error, than the same run at b_high."""
    _a, low = _run(DBSC + ["mixed_precision.threshold=1.0"])
    _b, high = _run(DBSC + ["mixed_precision.threshold=0", "mixed_precision.lsb_miss=wait"])
    assert low["precision.low_fraction"] == 1.0 and high["precision.low_fraction"] == 0.0
    assert low["bytes.read.dram"] < high["bytes.read.dram"]
    assert low["accuracy.quant_error_per_token"] > 10 * high["accuracy.quant_error_per_token"]
    assert low["precision.bits_mean"] == 4 and high["precision.bits_mean"] == 8


def test_quantized_baselines_share_bytes_and_differ_in_error():
    _a, ind = _run(["mixed_precision.name=quantized", "mixed_precision.bits=4"])
    _b, am = _run(["mixed_precision.name=quantized", "mixed_precision.bits=4",
                   "mixed_precision.method=amat"])
    _c, hi = _run(["mixed_precision.name=quantized", "mixed_precision.bits=8"])
    assert ind["bytes.read.flash"] == am["bytes.read.flash"] < hi["bytes.read.flash"]
    assert (hi["accuracy.quant_error_per_token"] < ind["accuracy.quant_error_per_token"]
            < am["accuracy.quant_error_per_token"] < 2 * ind["accuracy.quant_error_per_token"])


def test_accuracy_proxy_is_zero_at_model_precision_with_trace_routing():
    _s, full = _run([])
    assert "accuracy.proxy" not in full
    _s, q16 = _run(["mixed_precision.name=quantized", "mixed_precision.bits=16"])
    assert q16["accuracy.mass_moved_per_token"] == 0.0
    assert 0 <= q16["accuracy.quant_error_per_token"] < 1e-4


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("sets,needles", [
    (DBSC + ["mixed_precision.b_low=8"], ["mixed_precision.b_low", "below b_high"]),
    (DBSC + ["mixed_precision.b_high=17"], ["mixed_precision.b_high", "1..16"]),
    (DBSC + ["mixed_precision.b_low=0"], ["mixed_precision.b_low", "1..16"]),
    (DBSC + ["mixed_precision.group=7"], ["mixed_precision.group", "does not divide"]),
    (DBSC + ["mixed_precision.threshold=1.5"], ["mixed_precision.threshold", "[0, 1]"]),
    (DBSC + ["cache.capacity_gb=0.001"], ["cache.capacity_gb", "MSB slice"]),
    (["cache.name=slice_lru"], ["cache.name", "dbsc"]),
    (["mixed_precision.name=quantized", "mixed_precision.bits=0"], ["mixed_precision.bits"]),
])
def test_bad_input(capsys, tmp_path, sets, needles):
    argv = ["run", str(MOBILE), "-o", str(tmp_path / "o")]
    for x in sets:
        argv += ["--set", x]
    assert_one_line_error(capsys, argv, *needles)


def test_dbsc_on_a_trace_without_scores(capsys, tmp_path):
    tr = read_trace(bundled_dir("traces") / "deepseek_v2_lite_small.parquet")
    path = write_trace(dataclasses.replace(tr, scores=None), tmp_path / "noscores.parquet")
    argv = ["run", str(MOBILE), "-o", str(tmp_path / "o"), "--set", f"trace={path}"]
    for x in DBSC:
        argv += ["--set", x]
    assert_one_line_error(capsys, argv, "mixed_precision.name", "'scores'", "trace synth")
