"""Bandwidth sharing: a fluid max-min fair network of links and device channels.

Sharing discipline (DESIGN §3 asks us to name it): every transfer is a *flow* over a path of
resources (the source device's read channel, each link, the destination's write channel).
A flow first waits out the sum of the path's latencies, during which it uses no bandwidth;
then it moves bytes at a rate given by **max-min fairness** (progressive filling) over all
flows active at that instant: a resource of capacity C shared by n flows that are not
bottlenecked elsewhere gives each C/n, and rates are recomputed whenever a flow starts or ends.

Closed forms this yields (tested):

* one flow of b bytes: ``latency + b / min(capacity on the path)``;
* two flows of b1 <= b2 bytes starting together on one resource of capacity C:
  the first ends at ``latency + 2*b1/C``, the second at ``latency + (b1 + b2)/C``.

Background flows (prefetches; ``priority`` > 0) get only what demand flows leave: strict
priority between classes, max-min fairness within a class, so they never slow a demand fetch.

The network is advanced lazily: its state changes only at flow start/activation/completion
instants. ``FlowNetwork.run_isolated`` computes those instants analytically for a set of flows
when nothing else can interfere (the caller checks that no other SimPy event is due before the
last completion), so uncontended fetches cost no SimPy event at all; otherwise
``FlowNetwork.start`` drives the same computation with SimPy events.
"""
from __future__ import annotations

import math
from typing import Callable

import simpy

_EPS = 1e-15
_TIME_TOL = 1e-12     # relative time resolution for completions (1 ps per second)


class Resource:
    """A bandwidth-limited channel (a link direction or a device's read/write channel)."""

    __slots__ = ("name", "capacity", "bytes", "busy_time", "_active", "_busy_since")

    def __init__(self, name: str, capacity: float):
        if not capacity > 0:
            raise ValueError(f"resource {name}: capacity must be > 0, got {capacity}")
        self.name = name
        self.capacity = float(capacity)
        self.bytes = 0.0             # bytes that crossed this resource
        self.busy_time = 0.0         # time with at least one flow moving bytes through it
        self._active = 0
        self._busy_since = 0.0

    def __repr__(self) -> str:
        return f"Resource({self.name}, {self.capacity:.3g} B/s)"


class Flow:
    """One transfer. ``done_at`` is set when its last byte arrives."""

    __slots__ = ("size", "remaining", "path", "latency", "activate_at", "rate", "done_at",
                 "event", "tag", "start_at", "cap", "priority")

    def __init__(self, size: float, path: tuple[Resource, ...], latency: float, tag=None,
                 cap: float = math.inf, priority: int = 0):
        if size < 0:
            raise ValueError("flow size must be >= 0")
        self.size = float(size)
        self.remaining = float(size)
        self.path = path
        self.latency = float(latency)
        self.cap = cap               # per-flow rate cap (e.g. a shared bus read at read_bw)
        self.priority = priority     # 0 = demand; larger = background (gets what is left)
        self.tag = tag
        self.rate = 0.0
        self.start_at = math.nan
        self.activate_at = math.nan
        self.done_at = math.nan
        self.event: simpy.Event | None = None


def max_min_rates(flows: list[Flow]) -> None:
    """Assign rates: strict priority between classes (``Flow.priority``, 0 first), max-min
    fair (progressive filling) within a class over what higher classes left."""
    if not flows:
        return
    if len(flows) == 1:
        f = flows[0]
        f.rate = min(min(r.capacity for r in f.path), f.cap)
        return
    residual: dict[Resource, float] = {}
    for f in flows:
        for r in f.path:
            residual[r] = r.capacity
    classes = sorted({f.priority for f in flows})
    for prio in classes:
        group = [f for f in flows if f.priority == prio] if len(classes) > 1 else flows
        _fill(group, residual)


def _fill(flows: list[Flow], residual: dict[Resource, float]) -> None:
    users: dict[Resource, int] = {}
    for f in flows:
        f.rate = -1.0
        for r in f.path:
            users[r] = users.get(r, 0) + 1
    unfrozen = len(flows)
    while unfrozen:
        # The tightest constraint: a resource's fair share or a flow's own cap.
        share, bottleneck = math.inf, None
        for r, n in users.items():
            if n:
                s = residual[r] / n
                if s < share:
                    share, bottleneck = s, r
        capped = None
        for f in flows:
            if f.rate < 0 and f.cap < share:
                share, capped, bottleneck = f.cap, f, None
        for f in flows:
            if f.rate >= 0:
                continue
            if (capped is not None and f is capped) or (bottleneck is not None and bottleneck in f.path):
                f.rate = share
                unfrozen -= 1
                for r in f.path:
                    residual[r] = max(0.0, residual[r] - share)
                    users[r] -= 1


class FlowNetwork:
    """All flows of one simulation, advanced lazily in simulated time."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.t = 0.0                       # time the flow state was last advanced to
        self.pending: list[Flow] = []      # in their latency phase
        self.active: list[Flow] = []       # moving bytes
        self._wake_gen = 0
        self._wake_at = math.inf
        self.on_complete: Callable[[Flow], None] | None = None   # accounting hook

    # ------------------------------------------------------------------ fluid core
    @property
    def idle(self) -> bool:
        return not self.pending and not self.active

    def _next_change(self) -> float:
        nxt = math.inf
        for f in self.pending:
            if f.activate_at < nxt:
                nxt = f.activate_at
        for f in self.active:
            if f.rate > 0:
                t = self.t + f.remaining / f.rate
                if t < nxt:
                    nxt = t
        return nxt

    def _set_active(self, flows: list[Flow], now: float) -> None:
        for f in flows:
            for r in f.path:
                if r._active == 0:
                    r._busy_since = now
                r._active += 1

    def _set_inactive(self, f: Flow, now: float) -> None:
        for r in f.path:
            r._active -= 1
            if r._active == 0:
                r.busy_time += now - r._busy_since

    def _advance(self, until: float) -> list[Flow]:
        """Advance the fluid state to ``until``; return flows completed on the way."""
        done: list[Flow] = []
        while True:
            nxt = self._next_change()
            if nxt == math.inf and until == math.inf:
                return done                  # drained: nothing left to advance
            step_to = min(nxt, until)
            dt = step_to - self.t
            if dt > 0:
                for f in self.active:
                    moved = f.rate * dt
                    f.remaining -= moved
                    for r in f.path:
                        r.bytes += moved
                self.t = step_to
            if nxt > until:
                return done
            changed = False
            # activations due now
            if self.pending:
                due = [f for f in self.pending if f.activate_at <= self.t + _EPS]
                if due:
                    self.pending = [f for f in self.pending if f.activate_at > self.t + _EPS]
                    zero = [f for f in due if f.remaining <= 0]
                    movers = [f for f in due if f.remaining > 0]
                    for f in zero:
                        f.done_at = self.t
                        done.append(f)
                    self._set_active(movers, self.t)
                    self.active.extend(movers)
                    changed = True
            # completions due now (relative tolerance guards float residue)
            still = []
            tol = _TIME_TOL * max(1.0, abs(self.t))
            for f in self.active:
                # Done when the time left is below the clock's resolution (float residue of
                # rate x dt would otherwise leave a sliver of bytes that never finishes).
                if f.remaining <= 0 or (f.rate > 0 and f.remaining / f.rate <= tol):
                    for r in f.path:
                        r.bytes += f.remaining   # settle float residue so bytes are conserved
                    f.remaining = 0.0
                    f.done_at = self.t
                    self._set_inactive(f, self.t)
                    done.append(f)
                    changed = True
                else:
                    still.append(f)
            self.active = still
            if changed:
                max_min_rates(self.active)

    def _admit(self, flows: list[Flow], at: float) -> None:
        for f in flows:
            f.start_at = at
            f.activate_at = at + f.latency
        self.pending.extend(flows)

    # ------------------------------------------------------------------ analytic path
    def run_isolated(self, flows: list[Flow], at: float, horizon: float) -> bool:
        """Run ``flows`` starting at ``at`` to completion without SimPy events.

        Valid only when the network is idle and nothing else can start a flow before the last
        completion; the caller passes ``horizon`` = the time of the next scheduled SimPy event
        (``env.peek()``). Returns False, changing nothing, if the flows would not all finish
        before ``horizon`` (then the caller must use :meth:`start`).
        """
        if not self.idle or at < self.t:
            return False
        p0, l0 = flows[0].path, flows[0].latency
        if all(f.path == p0 and f.latency == l0 and f.cap == math.inf for f in flows):
            # every flow on one path with one latency and no caps (all misses of a layer from
            # one tier): processor sharing, whose end is known in closed form
            if at + l0 + sum(f.size for f in flows) / min(r.capacity for r in p0) >= horizon:
                return False
            self.t = at
            self._admit(flows, at)
            done = self._advance(math.inf)
        else:
            done = self._run_on_shadow(flows, at, horizon)
            if done is None:
                return False
        if self.on_complete:
            for f in done:
                self.on_complete(f)
        return True

    def _run_on_shadow(self, flows: list[Flow], at: float, horizon: float) -> list[Flow] | None:
        """Run ``flows`` on copies of their resources (so that a run ending too late has no
        side effects); if all finish before ``horizon``, carry the outcome over to the flows
        and resources (bytes, busy time, clock) and return the flows in completion order."""
        scratch = FlowNetwork.__new__(FlowNetwork)
        scratch.t, scratch.pending, scratch.active = at, [], []
        shadow: dict[Resource, Resource] = {}
        clones = {}
        for f in flows:
            path = tuple(shadow.setdefault(r, Resource(r.name, r.capacity)) for r in f.path)
            clones[Flow(f.size, path, f.latency, cap=f.cap, priority=f.priority)] = f
        scratch._admit(list(clones), at)
        done = scratch._advance(math.inf)
        if max(g.done_at for g in clones) >= horizon:
            return None
        for g, f in clones.items():
            f.start_at, f.activate_at, f.done_at = g.start_at, g.activate_at, g.done_at
            f.remaining, f.rate = g.remaining, g.rate
        for r, s in shadow.items():
            r.bytes += s.bytes
            r.busy_time += s.busy_time
        self.t = scratch.t
        return [clones[g] for g in done]

    def isolated_same_path(self, path: tuple[Resource, ...], latency: float, sizes: list[float],
                           at: float, horizon: float) -> list[float] | None:
        """Closed form of :meth:`run_isolated` for flows that share one path and latency.

        Processor sharing on the path's bottleneck C: with sizes sorted ascending
        s_1 <= ... <= s_n, flow i ends at ``at + latency + (s_1 + ... + s_{i-1} + (n-i+1) s_i) / C``.
        Returns completion times aligned with ``sizes`` (no Flow objects, no events), or None
        when the network is busy or the last completion would not precede ``horizon``.
        """
        if not self.idle or at < self.t:
            return None
        cap = min(r.capacity for r in path)
        total = sum(sizes)
        end = at + latency + total / cap
        if end >= horizon:
            return None
        n = len(sizes)
        s0 = sizes[0]
        if all(s == s0 for s in sizes):
            done = [end] * n
        else:
            done = [0.0] * n
            cum = 0.0
            for rank, i in enumerate(sorted(range(n), key=sizes.__getitem__)):
                s = sizes[i]
                done[i] = at + latency + (cum + (n - rank) * s) / cap
                cum += s
        busy = total / cap
        for r in path:
            r.bytes += total
            r.busy_time += busy
        self.t = end
        return done

    def isolated_uniform(self, path: tuple[Resource, ...], latency: float, size: float, n: int,
                         at: float, horizon: float) -> float | None:
        """:meth:`isolated_same_path` for n flows of one size: all end together at
        ``at + latency + n * size / C``. Returns that time, or None (see there)."""
        if self.pending or self.active or at < self.t:
            return None
        cap = path[0].capacity
        for r in path:
            if r.capacity < cap:
                cap = r.capacity
        total = n * size
        busy = total / cap
        end = at + latency + busy
        if end >= horizon:
            return None
        for r in path:
            r.bytes += total
            r.busy_time += busy
        self.t = end
        return end

    # ------------------------------------------------------------------ event path
    def start(self, flows: list[Flow]) -> list[simpy.Event]:
        """Start ``flows`` now (SimPy time); return one event per flow, fired at completion."""
        env = self.env
        done = self._advance(env.now)
        self._finish(done)
        for f in flows:
            f.event = env.event()
        self._admit(flows, env.now)
        done = self._advance(env.now)      # zero-latency, zero-byte flows finish at once
        max_min_rates(self.active)
        self._finish(done)
        self._reschedule()
        return [f.event for f in flows]

    def promote(self, flows: list[Flow]) -> None:
        """Raise unfinished ``flows`` to demand priority now (SimPy time)."""
        done = self._advance(self.env.now)
        self._finish(done)
        changed = False
        for f in flows:
            if f.priority and math.isnan(f.done_at):
                f.priority = 0
                changed = True
        if changed:
            max_min_rates(self.active)
            self._reschedule()

    def _finish(self, done: list[Flow]) -> None:
        for f in done:
            if self.on_complete:
                self.on_complete(f)
            if f.event is not None and not f.event.triggered:
                f.event.succeed(f)

    def _reschedule(self) -> None:
        nxt = self._next_change()
        if nxt == math.inf or nxt == self._wake_at:
            return
        self._wake_gen += 1
        gen = self._wake_gen
        self._wake_at = nxt
        ev = self.env.timeout(max(0.0, nxt - self.env.now))
        ev.callbacks.append(lambda _ev, gen=gen: self._on_wake(gen))

    def _on_wake(self, gen: int) -> None:
        if gen != self._wake_gen:
            return                      # superseded by a later reschedule
        self._wake_at = math.inf
        done = self._advance(self.env.now)
        self._finish(done)
        self._reschedule()

    def close(self, now: float) -> None:
        """Settle busy-time accounting at the end of the run."""
        self._advance(max(now, self.t))


class _LazyShim(FlowNetwork):  # DEV ONLY: the lazy API on the old network
    def __init__(self):
        super().__init__(None)

    def next_change(self):
        return self._next_change()

    def advance_to(self, t):
        self._finish(self._advance(t))

    def start(self, flows, at):
        self._finish(self._advance(at))
        self._admit(flows, at)
        self._finish(self._advance(at))
        max_min_rates(self.active)

    def promote(self, flows, at):
        self._finish(self._advance(at))
        for f in flows:
            if f.priority and math.isnan(f.done_at):
                f.priority = 0
        max_min_rates(self.active)

    def run_until_done(self, flows):
        while any(math.isnan(f.done_at) for f in flows):
            self._finish(self._advance(self._next_change()))
        return max(f.done_at for f in flows)
