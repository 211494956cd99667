"""Bandwidth sharing: a fluid max-min fair network of links and device channels.

Sharing discipline (DESIGN §3 asks us to name it): every transfer is a *flow* over a path of
resources (the source device's read channel, each link, the destination's write channel).
A flow first waits out the sum of the path's latencies, during which it uses no bandwidth;
then it moves bytes at a rate given by **max-min fairness** (progressive filling) over all
flows active at that instant: a resource of capacity C shared by n flows that are not
bottlenecked elsewhere gives each C/n, and rates are recomputed whenever a flow activates,
ends, is promoted or is cancelled. A flow may carry its own rate ``cap``.

Background flows (prefetches; ``priority`` > 0) get only what demand flows leave: **strict
priority between classes** (0 first), max-min fairness within a class, so they never slow a
demand fetch. A background flow whose bottleneck demand saturates is paused (rate 0) and
resumes when demand leaves it room. ``promote`` raises unfinished flows to priority 0.

Closed forms this yields (tested):

* one flow of b bytes: ``latency + b / min(capacity on the path)``;
* n flows of b1 <= ... <= bn bytes starting together on one resource of capacity C:
  flow i ends at ``latency + (b1 + ... + b(i-1) + (n-i+1) bi) / C`` (two flows:
  ``lat + 2 b1/C`` and ``lat + (b1 + b2)/C``);
* a background flow of b bytes alone from t0, preempted by a demand flow of d bytes on its
  bottleneck at t1: the demand flow ends at ``t1 + lat + d/C``, the background one at
  ``t0 + lat + (b + d)/C`` (it is paused meanwhile, so the bytes simply queue behind).

Representation (cost per change does not grow with the number of concurrent flows).
Flows with the same (path, cap, priority) are symmetric under max-min fairness, so they always
share one rate: active flows are kept in *groups* keyed by that triple. A group has a virtual
service clock ``V`` (bytes served to each member since the group was created) and a min-heap
of member finish tags ``V at activation + size`` (flows activated together with one size share
one heap entry); a member ends when ``V`` reaches its tag. Rates are weighted progressive
filling over groups (weight = member count), with cheap special cases for one group and for
all groups on one path (no caps: the first class shares the path's bottleneck, the others are
paused). A change (activation, completion, promotion) costs O(#groups x path length) +
O(log n) heap work; #groups is bounded by paths x caps x classes, not by flows. Promotion moves
a flow to the demand group of its path with its remaining bytes (tag - V) as its new tag
there. Flows in their latency phase wait in a heap of batches (one batch per ``start`` call
and key) ordered by activation time.

Time is advanced lazily: rates are constant between changes, so the groups' clocks are only
integrated when a change is applied; ``advance_to(t)`` before the next change just moves the
clock (O(1)). A group also accumulates the bytes it moved and credits them to its resources
when it empties (so ``Resource.bytes`` and ``busy_time`` are exact whenever no flow crosses
the resource, and after ``close``). ``busy_time`` counts time with at least one flow past its
latency and not finished crossing the resource (a paused background flow counts). Float
residue is settled at completion (a member is done when its time left is below ``_TIME_TOL``
of the clock; the sliver it still had is credited too), so bytes are conserved.

``FlowNetwork.isolated_same_path`` / ``isolated_uniform`` are closed forms for an idle
network whose flows nothing can disturb before they end (the caller guarantees that by
``horizon``, the next time anything else can start); ``run_isolated`` runs the general case
on shadow resources and applies it only if it ends before ``horizon``. The network schedules
no events of its own: the caller advances it (``advance_to``, ``run_until_done``), and
``on_complete`` reports flows in completion-time order as the state passes their ``done_at``.
"""
from __future__ import annotations

import heapq
import math
from typing import Callable

_EPS = 1e-15          # absolute slack for activation instants
_TIME_TOL = 1e-12     # relative time resolution for completions (1 ps per second)
_SAT = 1e-12          # a resource with residual below this fraction of capacity is saturated
_INF = math.inf

_heappush = heapq.heappush
_heappop = heapq.heappop


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
        self._active = 0             # live flow groups crossing it (per path occurrence)
        self._busy_since = 0.0

    def __repr__(self) -> str:
        return f"Resource({self.name}, {self.capacity:.3g} B/s)"


class Flow:
    """One transfer. ``done_at`` is set (from nan) when its last byte arrives."""

    __slots__ = ("size", "path", "latency", "tag", "cap", "priority", "start_at",
                 "activate_at", "done_at", "rate", "_group", "_vtag", "_entry", "cancelled")

    def __init__(self, size: float, path: tuple[Resource, ...], latency: float, tag=None,
                 cap: float = _INF, priority: int = 0):
        if size < 0:
            raise ValueError("flow size must be >= 0")
        if not cap > 0:
            raise ValueError(f"flow cap must be > 0, got {cap}")
        self.size = float(size)
        self.path = path
        self.latency = float(latency)
        self.cap = cap               # per-flow rate cap (e.g. a shared bus read at read_bw)
        self.priority = priority     # 0 = demand; larger = background (gets what is left)
        self.tag = tag
        self.start_at = math.nan
        self.activate_at = math.nan
        self.done_at = math.nan
        self.cancelled = False       # stopped by FlowNetwork.cancel (never completes)
        self._group = None           # _Group while active; then also _vtag (its finish tag in
        #                              the group's clock) and _entry (its heap entry) are set.
        #                              ``rate`` is set by max_min_rates only (see
        #                              FlowNetwork.rate for the network's rate of a flow).

    def __repr__(self) -> str:
        return f"Flow({self.size:.6g} B, prio {self.priority}, tag={self.tag!r})"


# ---------------------------------------------------------------------- per-flow reference
def max_min_rates(flows: list[Flow]) -> list[float]:
    """Assign ``Flow.rate`` (and return the rates): strict priority between classes
    (``Flow.priority``, 0 first), max-min fair (progressive filling) within a class over what
    higher classes left. Per flow; the network uses the grouped form (``_fill_groups``)."""
    if not flows:
        return []
    residual: dict[Resource, float] = {}
    for f in flows:
        for r in f.path:
            residual[r] = r.capacity
    for prio in sorted({f.priority for f in flows}):
        cls = [f for f in flows if f.priority == prio]
        rates = _fill([(f.path, f.cap, 1) for f in cls], residual)
        for f, x in zip(cls, rates):
            f.rate = x
    return [f.rate for f in flows]


def _fill(items: list[tuple], residual: dict[Resource, float]) -> list[float]:
    """Weighted progressive filling. ``items`` are (path, cap, weight); returns the rate of
    one unit of each item; ``residual`` (capacity left per resource) is consumed."""
    rates = [-1.0] * len(items)
    users: dict[Resource, int] = {}
    for path, _cap, w in items:
        for r in path:
            users[r] = users.get(r, 0) + w
    unfrozen = len(items)
    while unfrozen:
        # The tightest constraint: a resource's fair share or an item's own cap.
        share, bottleneck, capped = _INF, None, -1
        for r, n in users.items():
            if n:
                s = residual[r] / n
                if s < share:
                    share, bottleneck = s, r
        for i, (_p, cap, _w) in enumerate(items):
            if rates[i] < 0 and cap < share:
                share, capped, bottleneck = cap, i, None
        for i, (path, _cap, w) in enumerate(items):
            if rates[i] >= 0:
                continue
            if i == capped or share == _INF or (bottleneck is not None and bottleneck in path):
                rates[i] = share
                unfrozen -= 1
                for r in path:
                    left = residual[r] - share * w
                    residual[r] = left if left > _SAT * r.capacity else 0.0
                    users[r] -= w
    return rates


# ---------------------------------------------------------------------- the network
def _by_cap(g) -> float:
    return g.cap


class _Group:
    """Active flows of one (path, cap, priority): one rate, one virtual clock."""

    __slots__ = ("key", "path", "cap", "prio", "cmin", "V", "heap", "n", "rate", "t_next",
                 "live", "moved")

    def __init__(self, key, path, cap, prio):
        self.key = key
        self.path = path
        self.cap = cap
        self.prio = prio
        c = _INF
        for r in path:
            if r.capacity < c:
                c = r.capacity
        self.cmin = c                # the path's bottleneck capacity
        self.V = 0.0                 # bytes served to each member (reset when it empties)
        # entries [finish tag, seq, flows, live]: flows activated together with one size share
        # an entry; live counts those still members (promotion moves a flow out)
        self.heap: list = []
        self.n = 0                   # members
        self.rate = 0.0              # per member
        self.t_next = _INF           # next member completion at this rate
        self.live = False            # in FlowNetwork._glist (has members)
        self.moved = 0.0             # bytes over each path resource not yet credited to it

    def top(self) -> float:
        """Smallest live finish tag (pops entries whose members were all promoted away)."""
        h = self.heap
        while not h[0][3]:
            _heappop(h)
        return h[0][0]


class FlowNetwork:
    """All flows of one simulation, advanced lazily in simulated time by its caller."""

    def __init__(self):
        self.t = 0.0                         # time the state was last advanced to
        self.on_complete: Callable[[Flow], None] | None = None   # accounting hook
        self._ts = 0.0                       # time the groups were integrated to
        self._next = _INF                    # cached next_change()
        # latency phase: heap of batches [activate_at, seq, path, cap, prio, flows, mixed]
        # (mixed: a member was promoted while pending, so the batch splits on activation)
        self._pend: list = []
        self._groups: dict = {}              # (path, cap, prio) -> _Group, kept for reuse
        self._glist: list[_Group] = []       # the groups that have members
        self._seq = 0

    # ------------------------------------------------------------------ queries
    @property
    def idle(self) -> bool:
        """Nothing pending (latency phase) or active."""
        return not self._pend and not self._glist

    def next_change(self) -> float:
        """Earliest activation/completion time (inf if idle)."""
        return self._next

    def remaining(self, f: Flow) -> float:
        """Bytes ``f`` still has to move at time ``t`` (its size before it activates)."""
        g = f._group
        if g is None:
            return 0.0 if f.done_at == f.done_at or f.cancelled else f.size
        return max(0.0, f._vtag - g.V - g.rate * (self.t - self._ts))

    def rate(self, f: Flow) -> float:
        """Current rate of ``f`` (0 unless it is moving bytes)."""
        g = f._group
        return 0.0 if g is None else g.rate

    # ------------------------------------------------------------------ advancing
    def advance_to(self, t: float) -> None:
        """Apply every activation/completion at or before ``t``; the state is then at ``t``."""
        if t < self._next:
            if t > self.t:
                self.t = t
            return
        while self._next <= t and self._next != _INF:
            self._step()
        if t > self.t:
            self.t = t

    def run_until_done(self, flows) -> float:
        """Advance change by change until every flow of ``flows`` is done; return the latest
        ``done_at``. The state is left at that time; other flows carry on correctly."""
        last = -_INF
        for f in flows:
            d = f.done_at
            while d != d:                    # nan: not done yet
                if self._next == _INF:
                    raise RuntimeError(f"{f!r} can never finish (not started on this network?)")
                self._step()
                d = f.done_at
            if d > last:
                last = d
        return last

    def close(self, now: float) -> None:
        """Settle accounting at the end of the run: advance to ``max(now, t)`` and bring
        ``bytes`` and ``busy_time`` of resources still carrying flows up to that time.
        (May be called again later; nothing is counted twice.)"""
        self.advance_to(max(now, self.t))
        t = self.t
        self._settle(t)
        for g in self._glist:
            moved = g.moved
            g.moved = 0.0
            for r in g.path:
                r.bytes += moved
                if r._busy_since < t:
                    r.busy_time += t - r._busy_since
                    r._busy_since = t

    # ------------------------------------------------------------------ changes
    def start(self, flows, at: float) -> None:
        """Admit ``flows`` starting at ``at`` (after advancing to it): each waits its
        latency, then shares bandwidth. Zero-size zero-latency flows complete at once."""
        nxt = self._next
        if at < nxt:
            t = self.t
            if at > t:
                self.t = at
            elif at < t and t - at > _TIME_TOL * max(1.0, abs(t)):
                raise ValueError(f"start at {at!r} is before the network's time {t!r}")
        else:
            self.advance_to(at)
            nxt = self._next
        if not flows:
            return
        f0 = flows[0]
        path, cap, prio, lat = f0.path, f0.cap, f0.priority, f0.latency
        act = at + lat
        for f in flows:
            f.start_at = at
            f.activate_at = act
            if f.latency != lat or f.path is not path or f.cap != cap or f.priority != prio:
                break
        else:                                # one batch (the common case)
            self._seq += 1
            b = [act, self._seq, path, cap, prio, list(flows), False]
            if act > self.t + _EPS:
                _heappush(self._pend, b)
                if act < nxt:
                    self._next = act
                return
            self._activate_now([b])
            return
        by: dict = {}
        for f in flows:
            f.start_at = at
            f.activate_at = at + f.latency
            by.setdefault((f.activate_at, f.path, f.cap, f.priority), []).append(f)
        now = []
        lim = self.t + _EPS
        for (a, p, c, pr), fs in by.items():
            self._seq += 1
            b = [a, self._seq, p, c, pr, fs, False]
            if a <= lim:
                now.append(b)
            else:
                _heappush(self._pend, b)
                if a < nxt:
                    nxt = a
        self._next = nxt
        if now:
            self._activate_now(now)

    def promote(self, flows, at: float) -> None:
        """Advance to ``at``; unfinished flows of ``flows`` become priority 0 from then on."""
        self.advance_to(at)
        moved = False
        for f in flows:
            if not f.priority or f.done_at == f.done_at:
                continue
            f.priority = 0
            g = f._group
            if g is None:                    # pending (or not started): mark its batch
                for b in self._pend:
                    if b[4] and f in b[5]:
                        b[6] = True
                        break
                continue
            if not moved:
                self._settle(self.t)
                moved = True
            rem = f._vtag - g.V              # bytes left, carried into the demand group
            if g.n == 1:
                key0 = (g.path, g.cap, 0)
                ng = self._groups.get(key0)
                if ng is None or not ng.live:
                    self._relabel(g, ng, key0, f, rem)
                    continue
            f._entry[3] -= 1
            ng = self._group(g.path, g.cap, 0, self._ts)
            g.n -= 1
            if not g.n:
                self._drop(g, self._ts)
            self._seq += 1
            f._vtag = vt = ng.V + rem
            f._group = ng
            ng.n += 1
            f._entry = e = [vt, self._seq, [f], 1]
            _heappush(ng.heap, e)
        if moved:
            self._recompute(self._ts)

    def cancel(self, flows, at: float) -> None:
        """Advance to ``at`` and stop the unfinished flows of ``flows`` there (their source
        failed). Bytes they moved so far stay counted on their resources; a cancelled flow
        never completes (``done_at`` stays nan) and is not reported to ``on_complete``."""
        self.advance_to(at)
        changed = False
        for f in flows:
            if f.done_at == f.done_at or f.cancelled:
                continue
            f.cancelled = True
            g = f._group
            if g is None:                        # still in its latency phase
                for b in self._pend:
                    if f in b[5]:
                        b[5].remove(f)
                        if not b[5]:
                            self._pend.remove(b)
                            heapq.heapify(self._pend)
                        changed = True
                        break
                continue
            if not changed:
                self._settle(self.t)
            changed = True
            f._entry[3] -= 1
            f._group = None
            g.n -= 1
            if not g.n:
                self._drop(g, self._ts)
        if changed:
            self._recompute(self._ts)

    # ------------------------------------------------------------------ internals
    def _relabel(self, g: _Group, ng, key0, f: Flow, rem: float) -> None:
        """Promote ``f``, the lone member of background group ``g``, when its path has no
        live demand group: ``g`` itself becomes that demand group. Exactly what moving ``f``
        would do (a fresh demand group whose clock starts at 0 with ``f`` tagged ``rem``,
        ``g`` dropped and its bytes credited, the new group last in the active list) without
        touching the resources' live counts (they would go up, then down: no busy change)."""
        moved = g.moved
        if moved:
            for r in g.path:
                r.bytes += moved
        g.V = g.moved = 0.0
        okey = g.key
        groups = self._groups
        if ng is not None:                   # the idle demand group takes g's old label
            ng.key, ng.prio = okey, g.prio
            groups[okey] = ng
        else:
            del groups[okey]
        g.key, g.prio = key0, 0
        groups[key0] = g
        self._seq += 1
        f._vtag = rem
        f._entry = e = [rem, self._seq, [f], 1]
        g.heap = [e]
        gl = self._glist
        if gl[-1] is not g:
            gl.remove(g)
            gl.append(g)

    def _group(self, path, cap, prio, t: float) -> _Group:
        """The group of (path, cap, prio), made live at ``t`` if it was not."""
        key = (path, cap, prio)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = _Group(key, path, cap, prio)
        if not g.live:
            g.live = True
            self._glist.append(g)
            for r in path:                   # resources count their live groups
                if not r._active:
                    r._busy_since = t
                r._active += 1
        return g

    def _drop(self, g: _Group, t: float) -> None:
        """``g`` has no members left at ``t``: credit its bytes and busy time to its
        resources, take it out of the active list and reset its clock for reuse."""
        moved = g.moved
        for r in g.path:
            r.bytes += moved
            r._active -= 1
            if not r._active:
                r.busy_time += t - r._busy_since
        g.live = False
        g.V = g.moved = g.rate = 0.0
        g.heap.clear()
        g.t_next = _INF
        self._glist.remove(g)

    def _settle(self, t: float) -> None:
        """Integrate every group from ``_ts`` to ``t`` at the current rates."""
        dt = t - self._ts
        if dt > 0:
            for g in self._glist:
                rate = g.rate
                if rate > 0:
                    inc = rate * dt
                    g.V += inc
                    g.moved += inc * g.n
            self._ts = t
        if t > self.t:
            self.t = t

    def _activate_now(self, batches: list) -> None:
        """Activate ``batches`` at the current time (zero latency), then rates and reports."""
        t = self.t if self.t > self._ts else self._ts
        self._settle(t)
        done: list[Flow] = []
        for b in batches:
            self._activate(b, t, done)
        self._recompute(t)
        cb = self.on_complete
        if cb is not None:
            for f in done:
                cb(f)

    def _activate(self, b: list, t: float, done: list) -> None:
        """Move batch ``b`` from the latency phase into its group(s) at ``t``."""
        flows = b[5]
        if b[6]:                             # promoted while pending: split by priority
            by: dict = {}
            for f in flows:
                by.setdefault(f.priority, []).append(f)
            for prio, fs in by.items():
                self._activate([b[0], b[1], b[2], b[3], prio, fs, False], t, done)
            return
        path, cap = b[2], b[3]
        if not path and cap == _INF:         # nothing to cross: done on arrival
            for f in flows:
                f.done_at = t
                done.append(f)
            return
        size = flows[0].size
        for f in flows:
            if f.size != size:
                break
        else:
            if size > 0:                     # the common case: one size, one heap entry
                g = self._group(path, cap, b[4], t)
                vt = g.V + size
                e = [vt, b[1], flows, len(flows)]
                for f in flows:
                    f._vtag = vt
                    f._group = g
                    f._entry = e
                _heappush(g.heap, e)
                g.n += e[3]
                return
        g = None
        seq = self._seq
        for f in flows:
            size = f.size
            if size <= 0:
                f.done_at = t
                done.append(f)
                continue
            if g is None:
                g = self._group(path, cap, b[4], t)
                heap, V = g.heap, g.V
            seq += 1
            vt = V + size
            f._vtag = vt
            f._group = g
            f._entry = e = [vt, seq, [f], 1]
            _heappush(heap, e)
            g.n += 1
        self._seq = seq

    def _step(self) -> None:
        """Apply the next change (all activations and completions due at ``_next``)."""
        t = self._next
        if t < self._ts:
            t = self._ts
        self._settle(t)
        gl = self._glist
        done: list[Flow] = []
        tol = _TIME_TOL * (t if t > 1.0 else (-t if t < -1.0 else 1.0))
        if gl:
            due = t + tol
            for g in tuple(gl):
                if g.t_next > due:
                    continue
                # finish the members whose time left at t is below the tolerance
                h, V = g.heap, g.V
                lim = V + tol * g.rate
                k = 0
                while h:
                    e = h[0]
                    if not e[3]:             # every member promoted away
                        _heappop(h)
                        continue
                    vt = e[0]
                    if vt > lim:
                        break
                    _heappop(h)
                    if vt != V:              # float residue: settle it (bytes conserved)
                        g.moved += (vt - V) * e[3]
                    for f in e[2]:
                        if f._group is g:
                            f._group = None
                            f.done_at = t
                            done.append(f)
                    k += e[3]
                if k:
                    g.n -= k
                    if not g.n:
                        self._drop(g, t)
        pend = self._pend
        if pend:
            lim = t + _EPS
            while pend and pend[0][0] <= lim:
                self._activate(_heappop(pend), t, done)
        self._recompute(t)
        cb = self.on_complete
        if cb is not None:
            for f in done:
                cb(f)

    def _recompute(self, t: float) -> None:
        """New rates for every group, then each group's next completion and ``_next``."""
        gl = self._glist
        nxt = self._pend[0][0] if self._pend else _INF
        n = len(gl)
        if n == 1:
            g = gl[0]                        # alone: its members share the bottleneck
            share = g.cmin / g.n
            rate = g.rate = share if share < g.cap else g.cap
            h = g.heap
            while not h[0][3]:
                _heappop(h)
            tn = g.t_next = t + (h[0][0] - g.V) / rate
            self._next = tn if tn < nxt else nxt
            return
        if not n:
            self._next = nxt
            return
        p0 = gl[0].path
        top, users, mode = None, 0, 0        # mode 0: one path, no caps; 1: one path; 2: any
        for g in gl:
            if g.path is not p0 and g.path != p0:
                mode = 2
                break
            if g.cap != _INF:
                mode = 1
            p = g.prio
            if top is None or p < top:
                top, users = p, g.n
            elif p == top:
                users += g.n
        if mode == 0:
            # the first class takes the whole bottleneck, shared by its members; the others
            # are paused
            share = gl[0].cmin / users
            for g in gl:
                h = g.heap
                while not h[0][3]:
                    _heappop(h)
                if g.prio == top:
                    g.rate = share
                    tn = t + (h[0][0] - g.V) / share
                else:
                    g.rate = 0.0
                    tn = t if h[0][0] <= g.V else _INF
                g.t_next = tn
                if tn < nxt:
                    nxt = tn
            self._next = nxt
            return
        if mode == 1:
            self._fill_one_path()
        else:
            self._fill_groups()
        for g in gl:
            rate = g.rate
            if rate > 0:
                tn = t + (g.top() - g.V) / rate
            elif g.top() <= g.V:
                tn = t                       # paused, but nothing left (float residue)
            else:
                tn = _INF
            g.t_next = tn
            if tn < nxt:
                nxt = tn
        self._next = nxt

    def _fill_one_path(self) -> None:
        """Every group on one path, some capped: the bottleneck is the path's smallest
        capacity; each class in turn water-fills what the classes before it left, caps
        first. (Without caps, ``_recompute`` gives the first class all of it.)"""
        gl = self._glist
        avail = gl[0].cmin
        sat = _SAT * avail if avail != _INF else 0.0     # an empty path has no bottleneck
        for prio in sorted({g.prio for g in gl}):
            cls = [g for g in gl if g.prio == prio]
            if avail <= 0.0:
                for g in cls:
                    g.rate = 0.0
                continue
            users = 0
            for g in cls:
                users += g.n
            cls.sort(key=_by_cap)
            left = avail
            for i, g in enumerate(cls):
                share = left / users
                if g.cap < share:
                    g.rate = g.cap
                    left -= g.cap * g.n
                    users -= g.n
                else:
                    for h in cls[i:]:
                        h.rate = share
                    left = 0.0
                    break
            avail = left if left > sat else 0.0

    def _fill_groups(self) -> None:
        """General case: weighted progressive filling over groups, class by class."""
        gl = self._glist
        residual: dict[Resource, float] = {}
        for g in gl:
            for r in g.path:
                residual[r] = r.capacity
        prios = sorted({g.prio for g in gl})
        for prio in prios:
            cls = [g for g in gl if g.prio == prio] if len(prios) > 1 else gl
            rates = _fill([(g.path, g.cap, g.n) for g in cls], residual)
            for g, x in zip(cls, rates):
                g.rate = x

    # ------------------------------------------------------------------ analytic path
    def run_isolated(self, flows: list[Flow], at: float, horizon: float) -> bool:
        """Run ``flows`` starting at ``at`` to completion at once.

        Valid only when the network is idle and nothing else can start a flow before the last
        completion; the caller passes ``horizon`` = the next time anything else can happen.
        Returns False, changing nothing, if the flows would not all finish before ``horizon``.
        """
        if not self.idle or at < self.t or not flows:
            return False
        p0, l0 = flows[0].path, flows[0].latency
        if p0 and all(f.path == p0 and f.latency == l0 and f.cap == _INF for f in flows):
            # every flow on one path with one latency and no caps (all misses of a layer from
            # one tier): processor sharing, whose end is known in closed form
            if at + l0 + sum(f.size for f in flows) / min(r.capacity for r in p0) >= horizon:
                return False
            self.start(flows, at)
            self.run_until_done(flows)
            return True
        # general case: run on copies of the resources (so a run ending too late has no side
        # effects), then carry the outcome over
        scratch = FlowNetwork()
        scratch.t = scratch._ts = at
        shadow: dict[Resource, Resource] = {}
        clones = []
        for f in flows:
            path = tuple(shadow.setdefault(r, Resource(r.name, r.capacity)) for r in f.path)
            clones.append(Flow(f.size, path, f.latency, cap=f.cap, priority=f.priority))
        order: list[int] = []
        index = {id(g): i for i, g in enumerate(clones)}
        scratch.on_complete = lambda g: order.append(index[id(g)])
        scratch.start(clones, at)
        end = scratch.run_until_done(clones)
        if end >= horizon:
            return False
        for g, f in zip(clones, flows):
            f.start_at, f.activate_at, f.done_at = g.start_at, g.activate_at, g.done_at
        for r, s in shadow.items():
            r.bytes += s.bytes
            r.busy_time += s.busy_time
        self.t = self._ts = end
        cb = self.on_complete
        if cb is not None:
            for i in order:
                cb(flows[i])
        return True

    def isolated_same_path(self, path: tuple[Resource, ...], latency: float, sizes: list[float],
                           at: float, horizon: float) -> list[float] | None:
        """Closed form of :meth:`run_isolated` for flows that share one path and latency.

        Processor sharing on the path's bottleneck C: with sizes sorted ascending
        s_1 <= ... <= s_n, flow i ends at ``at + latency + (s_1 + ... + s_{i-1} + (n-i+1) s_i) / C``.
        Returns completion times aligned with ``sizes`` (no Flow objects), or None when the
        network is busy or the last completion would not precede ``horizon``.
        """
        if self._pend or self._glist or at < self.t:
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
        self.t = self._ts = end
        return done

    def isolated_uniform(self, path: tuple[Resource, ...], latency: float, size: float, n: int,
                         at: float, horizon: float) -> float | None:
        """:meth:`isolated_same_path` for n flows of one size: all end together at
        ``at + latency + n * size / C``. Returns that time, or None (see there)."""
        if self._pend or self._glist or at < self.t:
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
        self.t = self._ts = end
        return end
