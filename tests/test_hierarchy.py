"""The memory hierarchy (engine/hierarchy.py) on its own: object states, rehoming, and the
fast (closed-form) and general (fluid network) fetch paths giving one result."""
from __future__ import annotations

import math

import pytest

from simulator import load_config
from simulator.engine.simulation import Simulation
from simulator.errors import SimulationError
from simulator.resources import bundled_dir


def _sim(name="default.yaml", sets=(), **kw) -> Simulation:
    return Simulation(load_config(bundled_dir("experiments") / name,
                                  list(sets) + ["output.events=true"]), **kw)


def test_an_object_moves_through_in_flight_staged_and_cached():
    sim = _sim(sets=["prefetch.name=oracle_next_layer"])
    h = sim.hierarchy
    h._ahead = lambda phase, layer, rows: []      # only the prefetches the test issues
    oid = next(o for o in range(len(h.home)) if not h.pinned[o])
    assert h.where(oid).startswith("at home (")
    h.prefetch(1, [oid], 0.0)
    assert h.where(oid) == "in flight" and h.pf_issued == 1
    h.prefetch(1, [oid], 0.0)                       # already in flight: not issued twice
    assert h.pf_issued == 1
    h.advance_to(0.5e-6)                           # inside the path latency: still moving
    assert h.where(oid) == "in flight"
    h.advance_to(10.0)
    assert h.where(oid) == "staged" and h.staged_bytes == h.ctx.object_bytes[oid]
    res_u, _a, arrivals, items = h.access(1, sim.ctx.layer_of(oid), [oid], None, 10.0)
    assert (res_u, arrivals, items) == (1, None, None)   # a staged prefetch is resident ...
    assert h.hits[1] == 0 and h.pf_useful == 1        # ... but not a hit
    assert h.where(oid) == "cached" and h.staged_bytes == 0


def test_a_late_prefetch_is_waited_for_and_ends_no_later_than_a_demand_fetch():
    sim = _sim(sets=["prefetch.name=oracle_next_layer"])
    h = sim.hierarchy
    h._ahead = lambda phase, layer, rows: []      # only the prefetches the test issues
    oid = next(o for o in range(len(h.home)) if not h.pinned[o])
    h.prefetch(1, [oid], 0.0)
    _u, _a, arrivals, items = h.access(1, sim.ctx.layer_of(oid), [oid], None, 1e-6)
    assert [it[0] for it in items] == [oid] and len(items[0]) == 3 and h.pf_late == 1
    (arrival,) = arrivals
    res, lat = h.paths[h.home[oid]]
    alone = lat + h.ctx.object_bytes[oid] / min(r.capacity for r in res)
    assert arrival == pytest.approx(alone, rel=1e-12)   # it started at 0, alone on the link


def test_rehome_moves_fetches_to_the_new_device_and_checks_capacity():
    sim = _sim("cxl_expanders.yaml")
    h = sim.hierarchy
    devs = sim.system.devices
    cxl = [d.index for d in devs if d.tier == "cxl"]
    oid = next(o for o in range(len(h.home)) if h.home[o] == cxl[0])
    h.rehome(oid, cxl[1])
    assert h.where(oid) == f"at home ({devs[cxl[1]].name})"
    h.access(1, sim.ctx.layer_of(oid), [oid], None, 0.0)
    assert h.served[1][cxl[1]] == 1 and h.served[1][cxl[0]] == 0
    with pytest.raises(SimulationError, match="cannot pin"):
        h.rehome(oid, sim.system.local.index)
    small = next(d for d in devs if d.tier == "cxl" and d.spec.capacity_bytes == 64e9)
    others = [o for o in range(len(h.home)) if h.home[o] != small.index and not h.pinned[o]]
    with pytest.raises(SimulationError, match="is full"):
        for o in others:
            h.rehome(o, small.index)


@pytest.mark.parametrize("name,sets", [
    ("default.yaml", []), ("cxl_expanders.yaml", []),
    ("cxl_expanders.yaml", ["prefetch.name=oracle_next_layer"]),
    ("default.yaml", ["workload.batch_size=4", "prefetch.name=oracle_next_layer"]),
])
def test_fast_and_general_paths_give_one_result(name, sets):
    """Closed forms (one device, idle network) and the fluid network agree on every number."""
    sets = list(sets) + ["workload.max_requests=3"]
    a, b = _sim(name, sets).run(), _sim(name, sets, fast_path=False).run()
    for k, v in a.summary.items():
        w = b.summary[k]
        assert v == w or (math.isnan(v) and math.isnan(w)) or math.isclose(v, w, rel_tol=1e-12), k
    # the same transfers (the fast path logs a layer's fetches in lookup order, the network
    # in completion order)
    key = ["start_s", "object_id", "purpose"]
    ta = a.transfers.sort_values(key, kind="stable").reset_index(drop=True)
    tb = b.transfers.sort_values(key, kind="stable").reset_index(drop=True)
    assert ta["object_id"].tolist() == tb["object_id"].tolist()
    assert ta["end_s"].to_numpy() == pytest.approx(tb["end_s"].to_numpy(), rel=1e-12)


def test_cache_never_exceeds_capacity_and_bytes_balance():
    """Every lookup that is not resident is served by exactly one transfer of its bytes."""
    sim = _sim("cxl_expanders.yaml", ["prefetch.name=oracle_next_layer", "workload.max_requests=4"])
    res = sim.run()
    h, s = sim.hierarchy, res.summary
    assert s["cache.peak_bytes"] <= s["cache.capacity_bytes"]
    size = float(sim.ctx.object_bytes[0])
    served = sum(sum(p) for p in h.served)
    assert served == s["misses.prefill"] + s["misses.decode"]
    tx = res.transfers
    assert tx["bytes"].sum() == pytest.approx(
        (s["misses.prefill"] + s["misses.decode"] - s["prefetch.useful"] + s["prefetch.issued"]) * size)


def test_replicas_spread_reads_over_their_copies_and_count_capacity():
    """An object with copies is read from home, then each copy, in turn; a copy takes room
    on its device; rehome and drop_replica keep the copies consistent."""
    sim = _sim("cxl_expanders.yaml", ["cache.name=none"])
    h = sim.hierarchy
    devs = sim.system.devices
    cxl = [d.index for d in devs if d.tier == "cxl"]
    oid = next(o for o in range(len(h.home)) if h.home[o] == cxl[0])
    h.add_replica(oid, cxl[1])
    h.add_replica(oid, cxl[2])
    assert h.replicas(oid) == (cxl[0], cxl[1], cxl[2])
    assert h.where(oid) == (f"at home ({devs[cxl[0]].name}), copies on "
                            f"{devs[cxl[1]].name}, {devs[cxl[2]].name}")
    layer = sim.ctx.layer_of(oid)
    for t in range(6):
        h.access(1, layer, [oid], None, float(t))
    assert [h.served[1][d] for d in cxl[:3]] == [2, 2, 2]
    assert h.fetched_bytes[1][cxl[1]] == 2 * h.ctx.object_bytes[oid]
    h.drop_replica(oid, cxl[2])
    assert h.replicas(oid) == (cxl[0], cxl[1])
    with pytest.raises(SimulationError, match="no copy"):
        h.drop_replica(oid, cxl[2])
    with pytest.raises(SimulationError, match="already has a copy"):
        h.rehome(oid, cxl[1])
    h.rehome(oid, cxl[3])
    assert h.replicas(oid) == (cxl[3], cxl[1])
    # copies count against the device's capacity
    small = next(d for d in devs if d.tier == "cxl" and d.spec.capacity_bytes == 64e9)
    before = h._used_bytes(small.index)
    other = next(o for o in range(len(h.home)) if h.home[o] != small.index and not h.pinned[o])
    h.add_replica(other, small.index)
    assert h._used_bytes(small.index) == before + h.ctx.object_bytes[other]
