"""Device faults: a schedule of failures and returns, applied to the memory hierarchy at their
instants, and the report of what they cost.

Model (``faults:`` in the run config).

* Every object outside the local tier has a **backing copy** on the ``backing_tier`` (default:
  the last tier of the system, e.g. NVMe), its devices taking the objects in turn. The tier
  must hold every such object (capacity checked at start; a config where it cannot is
  refused). An object homed on the backing tier is its own backing copy.
* At a failure (``fail_at_s``, or when the k-th request is admitted: ``fail_at_request``) the
  device holds nothing usable: transfers reading it stop and demand fetches and prefetches
  restart at once from another live copy (memory hierarchy ``fail``); copies (replicas) on it
  are dropped. With ``rehome`` each object homed there gets a new home: the live device of
  its tier with room for it where a fetch is fastest (latency + size / private bandwidth),
  copied there from the backing copy in the background, or else the backing copy itself. Until a copy lands, reads go to the backing
  copy.
* At its return (``return_at_s`` or ``down_for_s`` later) the device is empty; with ``rehome``
  the objects it lost are moved back to it in the background (a re-homed object's reads use
  its interim home until the move lands). ``rehome: false`` models an outage that keeps the
  device's contents (a port or link down): reads go to the backing copy meanwhile and to the
  device again from its return, with nothing moved.
* An object with no live copy (its home and backing copy both down) is **unavailable**: an
  access to it waits for the first of its devices to return, counted in
  ``faults.unavailable_accesses`` and ``faults.unavailable_wait_s``; it is never lost.

Report (summary ``faults.*``, from the requests' token times around the first fault): TPOT
before it, while the device is down, and the time after its return until TPOT (mean of the
next ``RECOVERY_WINDOW`` decode gaps) is back within 5% of the pre-fault mean.
"""
from __future__ import annotations

import heapq
import math

import numpy as np

from ..errors import ConfigError, SimulationError
from ..policies.placement.tiering import private_bandwidth

RECOVERY_WINDOW = 8          # decode gaps averaged when testing for recovery
RECOVERY_TOLERANCE = 0.05    # within 5% of the pre-fault TPOT


def backing_devices(cfg, system, object_bytes: np.ndarray, pinned: np.ndarray, home: np.ndarray,
                    *, source: str | None) -> np.ndarray:
    """Device index of every object's backing copy (-1 for pinned objects); refuses a
    backing tier that is the local one, unknown, or too small for the objects."""
    tier = cfg.backing_tier or list(system.tiers)[-1]
    key = "faults.backing_tier"
    if tier not in system.tiers:
        raise ConfigError(f"unknown tier '{tier}'; tiers: {', '.join(system.tiers)}",
                          source=source, key=key)
    if tier == system.local_tier:
        raise ConfigError(f"'{tier}' is the local tier; a backing copy must be outside it "
                          "(e.g. dram or nvme)", source=source, key=key)
    devs = system.tiers[tier]
    back = np.full(home.shape, -1, dtype=np.int32)
    used = {d.index: float(object_bytes[home == d.index].sum()) for d in devs}
    idx = {d.index for d in devs}
    nxt = 0
    for oid in np.flatnonzero(~pinned).tolist():
        h = int(home[oid])
        if h in idx:
            back[oid] = h                         # its home is its backing copy
            continue
        size = float(object_bytes[oid])
        for step in range(len(devs)):
            d = devs[(nxt + step) % len(devs)]
            if used[d.index] + size <= d.spec.capacity_bytes:
                back[oid] = d.index
                used[d.index] += size
                nxt = (nxt + step + 1) % len(devs)
                break
        else:
            need = float(object_bytes[~pinned].sum())
            cap = sum(d.spec.capacity_bytes for d in devs)
            raise ConfigError(f"tier '{tier}' ({cap / 1e9:.4g} GB) cannot hold a backing copy "
                              f"of every expert outside the local tier ({need / 1e9:.4g} GB): "
                              "name a larger tier or raise its capacity_gb", source=source,
                              key=key)
    return back


class FaultState:
    """The pending failures and returns of one run, and what happened."""

    def __init__(self, cfg, system, *, source: str | None):
        self.cfg = cfg
        self.system = system
        self._heap: list = []                 # (time, seq, kind, device)
        self._seq = 0
        self._by_request: dict[int, list] = {}  # admission index -> [(device, down_for)]
        self.admitted = 0
        self.down_until: dict[int, float] = {}
        self.log: list[tuple] = []            # (time, device, "fail" | "return")
        self.displaced: dict[int, int] = {}   # object -> the failed device that was its home
        local = system.local_tier
        spans: dict[int, list] = {}
        for i, ev in enumerate(cfg.events):
            key = f"faults.events[{i}].device"
            try:
                dev = system.device(ev.device)
            except KeyError:
                raise ConfigError(f"unknown device '{ev.device}'; devices: "
                                  f"{', '.join(d.name for d in system.devices)}",
                                  source=source, key=key) from None
            if dev.tier == local:
                raise ConfigError(f"'{ev.device}' is the compute unit's own memory; only "
                                  "devices outside the local tier can fail here",
                                  source=source, key=key)
            if ev.fail_at_request is not None:
                self._by_request.setdefault(ev.fail_at_request, []).append((dev.index,
                                                                            ev.down_for_s))
                continue
            ret = ev.return_at_s if ev.return_at_s is not None else ev.fail_at_s + ev.down_for_s
            for a, b in spans.get(dev.index, []):
                if ev.fail_at_s < b and a < ret:
                    raise ConfigError(f"'{ev.device}' is already down from {a:g} to {b:g} s",
                                      source=source, key=f"faults.events[{i}]")
            spans.setdefault(dev.index, []).append((ev.fail_at_s, ret))
            self._push(ev.fail_at_s, "fail", dev.index)
            self._push(ret, "return", dev.index)
        self.first_fail: float | None = None
        self.first_return: float | None = None

    def _push(self, t: float, kind: str, dev: int) -> None:
        self._seq += 1
        # returns before failures at one instant (a device may come back as another fails)
        heapq.heappush(self._heap, (t, 0 if kind == "return" else 1, self._seq, kind, dev))

    @property
    def next_time(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def return_time(self, dev: int) -> float:
        """When a down device returns (inf if up or unknown)."""
        return self.down_until.get(dev, math.inf)

    def on_admit(self, t: float) -> None:
        """A request is admitted at ``t``: failures keyed to its index are scheduled now."""
        for dev, down_for in self._by_request.pop(self.admitted, ()):
            self._push(t, "fail", dev)
            self._push(t + down_for, "return", dev)
        self.admitted += 1

    def apply_due(self, hier, t: float) -> None:
        """Apply every failure and return due at or before ``t`` (the network is at ``t``)."""
        while self._heap and self._heap[0][0] <= t:
            tf, _o, _s, kind, dev = heapq.heappop(self._heap)
            if kind == "fail":
                self._fail(hier, dev, tf)
            else:
                self._return(hier, dev, tf)

    def _fail(self, hier, dev: int, t: float) -> None:
        if dev in hier.down:
            raise SimulationError(f"device '{self.system.devices[dev].name}' fails at {t:g} s "
                                  "while already down (overlapping faults)")
        # its return time is known from the schedule: the first pending return of it
        ret = min((e[0] for e in self._heap if e[3] == "return" and e[4] == dev),
                  default=math.inf)
        self.down_until[dev] = ret
        self.log.append((t, dev, "fail"))
        if self.first_fail is None:
            self.first_fail = t
            self.first_return = ret
        homed = hier.fail(dev, t)
        if not self.cfg.rehome:
            return
        tier = self.system.devices[dev].tier
        tdevs = self.system.tiers[tier]
        speed = {d.index: (self.system.fetch_path(d)[1], b)
                 for d, b in zip(tdevs, private_bandwidth(tdevs))}
        peers = [d.index for d in tdevs if d.index != dev and d.index not in hier.down]
        interim = []
        for oid in homed:
            self.displaced[oid] = dev
            size = hier._sizes[oid]
            # the live peer with room where a fetch of it is fastest (latency + size / B)
            fits = [d for d in peers if hier.room(d) >= size]
            best = min(fits, key=lambda d: (speed[d][0] + size / speed[d][1], d), default=None)
            if best is not None and hier.move(oid, best, t, reason="rehome"):
                continue
            interim.append(oid)
        if interim:
            hier.adopt_backing(interim)

    def _return(self, hier, dev: int, t: float) -> None:
        self.down_until.pop(dev, None)
        self.log.append((t, dev, "return"))
        hier.recover(dev, t)
        if not self.cfg.rehome:
            return
        back = [o for o, d in self.displaced.items() if d == dev]
        for oid in back:
            del self.displaced[oid]
            if oid in hier.moves:                 # still being re-homed: stop, then go back
                hier.cancel_moves([oid], t)
            hier.move(oid, dev, t, reason="return")


def fault_report(sim) -> dict[str, float]:
    """TPOT before, during and after the first fault, and the recovery time (module doc)."""
    nan = float("nan")
    h = sim.hierarchy
    out = {"faults.events": 0, "faults.unavailable_accesses": h.unavailable,
           "faults.unavailable_wait_s": h.unavailable_wait,
           "faults.restarted_transfers": h.restarted,
           "faults.rehomed_bytes": h.move_bytes["rehome"],
           "faults.returned_bytes": h.move_bytes["return"],
           "faults.tpot_before_s": nan, "faults.tpot_down_s": nan,
           "faults.tpot_after_s": nan, "faults.recovery_s": nan}
    fs = h.faults
    if fs is None or fs.first_fail is None:
        return out
    out["faults.events"] = sum(1 for e in fs.log if e[2] == "fail")
    t_fail, t_ret = fs.first_fail, fs.first_return
    ends, gaps = [], []
    for q in sim.requests:
        tt = np.asarray(q.token_times[1:] if q.n_prefill else q.token_times, dtype=np.float64)
        if tt.size > 1:
            ends.append(tt[1:])
            gaps.append(np.diff(tt))
    if not ends:
        return out
    end, gap = np.concatenate(ends), np.concatenate(gaps)
    order = np.argsort(end, kind="stable")
    end, gap = end[order], gap[order]
    before = gap[end <= t_fail]
    during = gap[(end > t_fail) & (end <= t_ret)]
    after_mask = end > t_ret
    out["faults.tpot_before_s"] = float(before.mean()) if before.size else nan
    out["faults.tpot_down_s"] = float(during.mean()) if during.size else nan
    out["faults.tpot_after_s"] = float(gap[after_mask].mean()) if after_mask.any() else nan
    if before.size and after_mask.any():
        target = (1.0 + RECOVERY_TOLERANCE) * before.mean()
        ea, ga = end[after_mask], gap[after_mask]
        w = RECOVERY_WINDOW
        for i in range(0, max(1, ga.size - w + 1)):
            if ga[i:i + w].mean() <= target:
                out["faults.recovery_s"] = float(max(0.0, ea[i] - ga[i] - t_ret))
                break
    return out
