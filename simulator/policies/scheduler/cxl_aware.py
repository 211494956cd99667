"""CXL-aware fetch scheduling (MoE-CXL): each miss reads the copy that finishes it soonest,
and a layer's fetches are issued in an order, not all at once.

Copy choice (``replica_choice: least_completion``). The layer's misses are taken largest
first; miss x goes to the live copy d minimising its expected completion

    E_d(x) = lat_d + (Q_d + s(x)) / B_d

with ``lat_d`` the latency of d's fetch path, ``B_d`` its private bandwidth
(placement/tiering.py: its channel and own port; the host link every expander shares caps
their sum, not the choice) and ``Q_d`` the demand bytes of this layer already sent to d.
Background transfers (prefetch, migration) are not counted in Q_d: they yield to demand
(engine/flows.py), so they do not delay it. ``round_robin`` reads the copies in turn, as
``fair`` does (the ablation with balancing off).

Issue order (``order``). ``fair`` starts the layer's fetches together: they share every link
max-min fairly, so fetches from one device all land at the end. The others issue one fetch
after another (a copy engine's queue: strict priority by rank, engine/flows.py), so early ones
land early and their experts compute while the rest move: ``largest_first`` issues in
decreasing E (the slowest device first, longest-processing-time order, which bounds the
layer's finish by the slowest device's queue), ``smallest_first`` in increasing E,
``lookup`` in the router's order.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config.strict import field
from ..base import SCHEDULER, SchedulerPolicy
from ..placement.tiering import private_bandwidth

ORDERS = ("largest_first", "smallest_first", "lookup", "fair")


@SCHEDULER.register("cxl_aware")
class CXLAware(SchedulerPolicy):
    active = True

    @dataclass(frozen=True, kw_only=True)
    class Params:
        replica_choice: str = field("least_completion", choices=("least_completion",
                                                                  "round_robin"),
                                    help="which live copy a miss reads")
        order: str = field("largest_first", choices=ORDERS,
                           help="issue order of a layer's fetches (fair: all at once)")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        sysm = ctx.system
        self.lat = [0.0] * len(sysm.devices)
        self.bw = [1.0] * len(sysm.devices)
        for tier, devs in sysm.tiers.items():
            if tier == sysm.local_tier:
                continue
            for d, b in zip(devs, private_bandwidth(devs)):
                self.lat[d.index] = sysm.fetch_path(d)[1]
                self.bw[d.index] = b
        self._turn: dict[int, int] = {}

    def choose(self, hierarchy, oid, size, copies):
        """A prefetch reads the copy it would finish soonest from alone (lat + s / B)."""
        if self.params.replica_choice == "round_robin" or len(copies) == 1:
            return copies[0]
        lat, bw = self.lat, self.bw
        return min(copies, key=lambda c: (lat[c] + size / bw[c], c))

    def plan(self, hierarchy, items, t):
        lat, bw = self.lat, self.bw
        n = len(items)
        queued: dict[int, float] = {}
        devs = [0] * n
        est = [0.0] * n
        rr = self.params.replica_choice == "round_robin"
        for i in sorted(range(n), key=lambda i: (-items[i][1], i)):
            oid, size, copies = items[i]
            if rr or len(copies) == 1:
                k = self._turn.get(oid, 0) if len(copies) > 1 else 0
                d = copies[k % len(copies)]
                if len(copies) > 1:
                    self._turn[oid] = k + 1
            else:
                d = min(copies, key=lambda c: (lat[c] + (queued.get(c, 0.0) + size) / bw[c], c))
            q = queued.get(d, 0.0) + size
            queued[d] = q
            devs[i] = d
            est[i] = lat[d] + q / bw[d]
        order = self.params.order
        if order == "fair" or n == 1:
            return devs, None
        if order == "lookup":
            ranks = list(range(n))
        else:
            sign = -1.0 if order == "largest_first" else 1.0
            seq = sorted(range(n), key=lambda i: (sign * est[i], i))
            ranks = [0] * n
            for r, i in enumerate(seq):
                ranks[i] = r
        return devs, [r / n for r in ranks]
