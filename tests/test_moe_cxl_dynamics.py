"""MoE-CXL's moving parts: CXL-aware fetch scheduling, replicas, migration with hysteresis and
device faults, checked against closed forms, hand-computed choices and invariants (no access
lost, every read from a live device, bytes conserved)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import assert_one_line_error
from simulator import load_config
from simulator.engine.simulation import Simulation
from simulator.policies.placement.tiering import private_bandwidth
from simulator.resources import bundled_dir
from simulator.traces.io import read_trace
from simulator.traces.schema import DECODE

MOE_CXL = bundled_dir("experiments") / "moe_cxl.yaml"
# moe_cxl.yaml with 40 GB on CXL-A, B and D (16 GB in the file), so that replicas and moves
# find room
ROOMY = ["system.tiers.cxl.devices=[{profile: cxl_a, path: [port_a, pcie], capacity_gb: 40}, "
         "{profile: cxl_b, path: [port_b, pcie], capacity_gb: 40}, "
         "{profile: cxl_c, path: [port_c, pcie]}, "
         "{profile: cxl_d, path: [port_d, pcie], capacity_gb: 40}]"]


def _sim(sets=(), trace=None, events=True) -> Simulation:
    return Simulation(load_config(MOE_CXL, list(sets) + [f"output.events={str(events).lower()}"]),
                      trace=trace)


def _two_on_one_device(h, sim):
    for d in sim.system.devices:
        objs = [o for o in range(len(h.home)) if h.home[o] == d.index and not h.pinned[o]]
        if len(objs) >= 2:
            return d.index, objs[:2]
    raise AssertionError("no device holds two experts")


# ---------------------------------------------------------------------------- scheduling
@pytest.mark.parametrize("order", ["lookup", "fair"])
def test_issue_order_closed_form(order):
    """Two misses of size s on one device (path latency lat, bottleneck B): issued in order,
    the first lands at lat + s/B and the second at lat + 2s/B; all at once (fair), both at
    lat + 2s/B."""
    sim = _sim(["scheduler.name=cxl_aware", f"scheduler.order={order}"])
    h = sim.hierarchy
    dev, (a, b) = _two_on_one_device(h, sim)
    _u, _a, arrivals, items = h.access(1, 0, [a, b], None, 0.0)
    res, lat = h.paths[dev]
    s, B = h.ctx.object_bytes[a], min(r.capacity for r in res)
    want = [lat + s / B, lat + 2 * s / B] if order == "lookup" else [lat + 2 * s / B] * 2
    assert [it[0] for it in items] == [a, b]
    assert arrivals == pytest.approx(want, rel=1e-12)


def test_least_completion_reads_the_copy_that_finishes_first():
    """Three misses homed on CXL-C (5.1 GB/s) with copies on CXL-A: each goes to the copy of
    least lat + (queued + s)/B, taken largest first (all one size: lookup order), which is
    worked out here from the device figures and compared with the devices that served."""
    sim = _sim(["scheduler.name=cxl_aware", "scheduler.order=fair",
                "system.tiers.cxl.devices=[{profile: cxl_a, path: [port_a, pcie], "
                "capacity_gb: 128}, {profile: cxl_c, path: [port_c, pcie]}]",
                "system.links={pcie: {profile: pcie5_x16}, port_a: {profile: cxl_x8}, "
                "port_c: {profile: cxl_x8}, nvme_link: {profile: pcie4_x4}}",
                "system.tiers.dram.capacity_gb=64"])
    h = sim.hierarchy
    cxl = sim.system.tiers["cxl"]
    a_dev, c_dev = cxl[0].index, cxl[1].index
    on_c = [o for o in range(len(h.home)) if h.home[o] == c_dev][:3]
    assert len(on_c) == 3
    for o in on_c:
        h.add_replica(o, a_dev)
    lat = {d.index: sim.system.fetch_path(d)[1] for d in cxl}
    bw = dict(zip([d.index for d in cxl], private_bandwidth(cxl)))
    s = h.ctx.object_bytes[on_c[0]]
    queued, want = {a_dev: 0.0, c_dev: 0.0}, []
    for _o in on_c:
        d = min((c_dev, a_dev), key=lambda d: (lat[d] + (queued[d] + s) / bw[d], d))
        queued[d] += s
        want.append(d)
    before = list(h.served[1])
    h.access(1, 0, on_c, None, 0.0)
    got = {d: h.served[1][d] - before[d] for d in (a_dev, c_dev)}
    assert got == {d: want.count(d) for d in (a_dev, c_dev)}
    assert want.count(a_dev) >= 2          # the fast copy takes most, not one read each


def test_replicas_need_a_least_completion_scheduler_to_pay():
    """Replicas read in turn (fair) send every other read of a hot expert to its second
    copy, whichever device that is; cxl_aware reads the copy that finishes first, so it is
    never slower than no replicas at all on this config."""
    base = ROOMY + ["workload.max_requests=3", "placement.replicate_top=0.3"]
    none = _sim(base, events=False).run().summary["tpot_s.mean"]
    rr = _sim(base + ["placement.replication=2"], events=False).run().summary
    ca = _sim(base + ["placement.replication=2", "scheduler.name=cxl_aware"],
              events=False).run().summary
    assert ca["tpot_s.mean"] <= none * (1 + 1e-9) < rr["tpot_s.mean"]


# ---------------------------------------------------------------------------- migration
def _alternating_trace(block: int = 8):
    """The bundled trace with the hot set flipped every ``block`` tokens: experts e of the
    tokens of odd blocks become (e + 4) mod 8, so the frequencies swing back and forth every
    few seconds of decode."""
    tr = read_trace(bundled_dir("traces") / "default.parquet")
    flip = (np.arange(tr.experts.shape[0]) // block) % 2 == 1
    ex = tr.experts.copy()
    ex[flip] = (ex[flip] + 4) % tr.meta.num_experts
    tr.experts = ex
    return tr


def _migrations(sets):
    sim = _sim(ROOMY + ["placement.frequency=first_requests", "placement.profile_requests=1",
                "migration.name=hysteresis", "migration.interval_s=1", "migration.decay=0.1",
                "migration.max_moves=8"] + list(sets), trace=_alternating_trace(), events=False)
    res = sim.run()
    log = sim.hierarchy.move_log
    per = {}
    for e in log:
        per[e[2]] = per.get(e[2], 0) + 1
    return res.summary, log, per


def test_migration_with_hysteresis_is_bounded_and_without_it_thrashes():
    """Bound (policies/migration/hysteresis.py): an expert moves at most once per
    min_residence_s, so at most 1 + floor(T / min_residence_s) times in a run of length T
    (T = 145 s, min_residence_s = 40 s: 4 moves per expert), and the run makes at most that
    times the number of experts it moves. Without hysteresis (thresholds 0, no residence)
    the hot set swinging every 8 tokens moves experts back and forth past that bound."""
    hyst, _log_h, per_h = _migrations(["migration.high=0.25", "migration.low=0.1",
                                       "migration.min_residence_s=40"])
    thrash, log_t, per_t = _migrations(["migration.high=0", "migration.low=0",
                                        "migration.min_residence_s=0"])
    bound = 1 + math.floor(hyst["makespan_s"] / 40)
    assert bound == 4
    assert hyst["migrations"] == sum(per_h.values()) > 0
    assert max(per_h.values()) <= bound
    assert hyst["migrations"] <= bound * len(per_h)
    assert thrash["migrations"] > hyst["migrations"]
    back = 0                       # thrashing: experts go back to a device they left
    seen: dict = {}
    for _s, _e, oid, src, dst, _why in log_t:
        back += dst in seen.get(oid, set())
        seen.setdefault(oid, set()).add(src)
    assert back > 0 and max(per_t.values()) > bound


def test_bytes_are_conserved_over_replicas_migration_and_faults():
    """Every byte read from a device crossed the links of its path and was written at its
    destination: per resource, the network's byte counters equal the summary's reads and
    writes of each device and the bytes on each link, and moves read = moves written."""
    sim = _sim(ROOMY + ["placement.replication=2", "placement.replicate_top=0.2",
                "scheduler.name=cxl_aware", "migration.name=hysteresis",
                "migration.high=0", "migration.low=0", "migration.min_residence_s=0",
                "faults.events=[{device: cxl.1, fail_at_s: 0.1, down_for_s: 1}, "
                "{device: cxl.3, fail_at_s: 20, down_for_s: 15}]",
                "workload.max_requests=3"], trace=_alternating_trace(), events=False)
    s = sim.run().summary
    h = sim.hierarchy
    assert s["bytes.moved"] > 0 and s["faults.events"] == 2
    assert s["faults.restarted_transfers"] > 0 and sum(map(sum, h.cut_bytes)) > 0
    for d in sim.system.devices:
        r, w = s[f"bytes.read.{d.name}"], s[f"bytes.written.{d.name}"]
        if d.is_local:
            assert d.write.bytes == pytest.approx(w, rel=1e-9)
        elif d.read is d.write:
            assert d.read.bytes == pytest.approx(r + w, rel=1e-9, abs=1.0)
        else:
            assert (d.read.bytes, d.write.bytes) == pytest.approx((r, w), rel=1e-9, abs=1.0)
    for n, l in sim.system.links.items():
        assert l.fwd.bytes + l.rev.bytes == pytest.approx(s[f"bytes.link.{n}"], rel=1e-9,
                                                          abs=1.0)
    moved_read = sum(b for (_p, src, _d), b in h.moved.items())
    assert moved_read == pytest.approx(s["bytes.moved"])


# ---------------------------------------------------------------------------- faults
def _fault_run(events, sets=()):
    sim = _sim([f"faults.events={events}", "workload.max_requests=4"] + list(sets))
    res = sim.run()
    return sim, res


def test_an_outage_loses_no_access_and_reads_only_live_devices():
    """CXL-D fails at 10 s for 20 s: every lookup is served from some source, every decode
    token is produced, and no transfer that completed started on a device while it was
    down (checked on the transfers table against the fault log)."""
    sim, res = _fault_run("[{device: cxl.3, fail_at_s: 10, down_for_s: 20}]")
    s = res.summary
    for ph in ("prefill", "decode"):
        served = sum(s[f"lookups_served.{ph}.{d.name}"] for d in sim.system.devices)
        assert served == s[f"lookups.{ph}"]
    assert s["decode_tokens"] == sum(q.n_decode for q in sim.requests)
    assert s["faults.events"] == 1 and s["faults.unavailable_accesses"] == 0
    log = sim.hierarchy.faults.log
    (t_fail, dev, _f), (t_ret, dev2, _r) = log
    assert dev == dev2 == sim.system.device("cxl.3").index and (t_fail, t_ret) == (10.0, 30.0)
    tr = res.transfers
    name = sim.system.devices[dev].name
    during = tr[(tr.src_device == name) & (tr.start_s >= t_fail) & (tr.start_s < t_ret)]
    assert len(during) == 0
    # the device's experts were served from elsewhere meanwhile, then moved back
    assert s["faults.returned_bytes"] > 0
    assert s["faults.tpot_down_s"] > s["faults.tpot_before_s"]


def test_tpot_returns_within_5_percent_after_the_moves_back():
    """After the return, TPOT is back within 5% of its pre-fault level once the experts have
    been moved back: no later than the moves' bytes over the device's private bandwidth
    (what the moves need at least) plus a 10 s allowance for a window of decode gaps."""
    sim, res = _fault_run("[{device: cxl.0, fail_at_s: 10, down_for_s: 20}]",
                          ["workload.max_requests=6"])
    s = res.summary
    d = sim.system.device("cxl.0")
    bw = private_bandwidth(sim.system.tiers["cxl"])[sim.system.tiers["cxl"].index(d)]
    assert math.isfinite(s["faults.recovery_s"])
    assert s["faults.recovery_s"] <= s["faults.returned_bytes"] / bw + 10.0


def test_every_copy_down_is_unavailability_not_a_crash():
    """The backing tier (NVMe) and CXL-A fail together: CXL-A's experts have no live copy
    until NVMe returns; their accesses wait (counted), none is lost."""
    sim, res = _fault_run("[{device: nvme, fail_at_s: 5, return_at_s: 25}, "
                          "{device: cxl.0, fail_at_s: 8, down_for_s: 10}]")
    s = res.summary
    assert s["faults.unavailable_accesses"] > 0 and s["faults.unavailable_wait_s"] > 0
    assert s["decode_tokens"] == sum(q.n_decode for q in sim.requests)
    assert s["faults.unavailable_wait_s"] <= s["faults.unavailable_accesses"] * 20.0


def test_a_failure_keyed_to_a_request_happens_at_its_admission():
    sim, res = _fault_run("[{device: cxl.1, fail_at_request: 2, down_for_s: 5}]")
    t_fail = sim.hierarchy.faults.log[0][0]
    admitted = sorted(q.admitted for q in sim.requests)
    assert t_fail == admitted[2]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("sets,needles", [
    (["faults.events=[{device: cxl.9, fail_at_s: 1, down_for_s: 1}]"],
     ["faults.events[0].device", "cxl.9"]),
    (["faults.events=[{device: cxl.0, fail_at_s: 5, return_at_s: 2}]"],
     ["faults.events[0].return_at_s", "after"]),
    (["faults.events=[{device: hbm, fail_at_s: 5, return_at_s: 6}]"],
     ["faults.events[0].device", "local"]),
    (["faults.events=[{device: cxl.0, fail_at_s: 5}]"], ["return_at_s"]),
    (["faults.events=[{device: cxl.0, fail_at_s: 1, down_for_s: 1}]",
      "faults.backing_tier=dram"], ["faults.backing_tier", "cannot hold"]),
    (["placement.replication=5"], ["placement.replication", "4"]),
    (["migration.name=hysteresis", "migration.decay=0"], ["migration.decay", "(0, 1]"]),
    (["migration.name=hysteresis", "migration.high=-1"], ["migration.high"]),
    (["migration.name=hysteresis", "migration.low=0.5", "migration.high=0.2"],
     ["migration.low"]),
    (["placement.decay=1.5"], ["placement.decay"]),
])
def test_bad_input_is_one_line_naming_the_key(capsys, tmp_path, sets, needles):
    argv = ["run", str(MOE_CXL), "-o", str(tmp_path / "out")]
    for x in sets:
        argv += ["--set", x]
    assert_one_line_error(capsys, argv, *needles)
