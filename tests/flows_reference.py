"""A deliberately simple reference for engine/flows.py: one flow at a time, no groups, no
virtual clocks, no laziness.

An event loop over a set of flows given up front. At every instant where anything can change
(a start, an activation, a promotion, a completion) it recomputes every active flow's rate by
progressive filling over *all* active flows (strict priority between classes, max-min within
a class, per-flow caps), then moves time to the next such instant, decrementing each flow's
remaining bytes and crediting each resource. This is the pre-group algorithm written plainly;
tests compare the grouped network to it.

A flow is ``(start, size, path, latency, cap, priority, promote_at)`` with ``path`` a tuple of
resource indices into ``capacities`` and ``promote_at`` None or a time after ``start``.
Conventions shared with the network: a flow is done when its time left is below 1e-12 of the
clock (the sliver is credited to its resources); zero-size flows and flows over an empty path
without a cap are done on activation; ``busy`` counts time with at least one active flow
(past its latency, unfinished) crossing the resource, even a paused one.
"""
from __future__ import annotations

import math

TIME_TOL = 1e-12
EPS = 1e-15
SAT = 1e-12


def rates(active: list[dict], capacities: list[float]) -> None:
    """Set ``f['rate']`` for every flow of ``active``: progressive filling per class."""
    residual = {r: capacities[r] for f in active for r in f["path"]}
    for prio in sorted({f["prio"] for f in active}):
        cls = [f for f in active if f["prio"] == prio]
        for f in cls:
            f["rate"] = None
        while any(f["rate"] is None for f in cls):
            todo = [f for f in cls if f["rate"] is None]
            users = {}
            for f in todo:
                for r in f["path"]:
                    users[r] = users.get(r, 0) + 1
            # tightest constraint: a resource's equal share of what is left, or a flow's cap
            share, bottleneck, capped = math.inf, None, None
            for r, n in users.items():
                if residual[r] / n < share:
                    share, bottleneck = residual[r] / n, r
            for f in todo:
                if f["cap"] < share:
                    share, bottleneck, capped = f["cap"], None, f
            for f in todo:
                if f is capped or share == math.inf or (bottleneck is not None
                                                        and bottleneck in f["path"]):
                    f["rate"] = share
                    for r in f["path"]:
                        left = residual[r] - share
                        residual[r] = left if left > SAT * capacities[r] else 0.0


def simulate(capacities: list[float], specs: list[tuple]) -> dict:
    """Run ``specs`` to completion; return ``done`` (per flow), ``bytes`` and ``busy``
    (per resource)."""
    flows = []
    for start, size, path, lat, cap, prio, promote in specs:
        flows.append(dict(start=start, size=float(size), rem=float(size), path=tuple(path),
                          act=start + lat, cap=cap, prio=prio, promote=promote,
                          state="waiting", done=math.nan, rate=0.0))
    nres = len(capacities)
    moved = [0.0] * nres
    busy = [0.0] * nres
    t = min((f["start"] for f in flows), default=0.0)
    while True:
        # apply everything due at t until nothing changes
        tol = TIME_TOL * max(1.0, abs(t))
        for f in flows:
            if f["promote"] is not None and f["promote"] <= t and f["state"] != "done":
                f["prio"] = 0
            if f["state"] == "waiting" and f["start"] <= t:
                f["state"] = "latency"
            if f["state"] == "latency" and f["act"] <= t + EPS:
                if f["size"] <= 0 or (not f["path"] and f["cap"] == math.inf):
                    f["state"], f["done"] = "done", t
                else:
                    f["state"] = "active"
            elif f["state"] == "active" and (f["rem"] <= 0 or (f["rate"] > 0 and
                                                              f["rem"] / f["rate"] <= tol)):
                for r in f["path"]:
                    moved[r] += f["rem"]
                f["rem"], f["state"], f["done"] = 0.0, "done", t
        active = [f for f in flows if f["state"] == "active"]
        rates(active, capacities)
        nxt = math.inf
        for f in flows:
            if f["state"] == "waiting":
                nxt = min(nxt, f["start"])
            elif f["state"] == "latency":
                nxt = min(nxt, f["act"])
            elif f["state"] == "active" and f["rate"] > 0:
                nxt = min(nxt, t + f["rem"] / f["rate"])
            if f["state"] != "done" and f["promote"] is not None and f["promote"] > t:
                nxt = min(nxt, f["promote"])
        if nxt == math.inf:
            break
        dt = nxt - t
        carrying = set()
        for f in active:
            f["rem"] -= f["rate"] * dt
            for r in f["path"]:
                moved[r] += f["rate"] * dt
                carrying.add(r)
        for r in carrying:
            busy[r] += dt
        t = nxt
    return {"done": [f["done"] for f in flows], "bytes": moved, "busy": busy}
