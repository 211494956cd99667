"""The memory hierarchy: where every object lives, what a group of lookups finds there, and
where and when each missing object arrives.

An object (an expert, or one slice of it: policies/base.py) is, at any instant, in one of

    pinned      on the local device for the whole run (placement put it there);
    cached      in the local expert cache (the cache policy decides what stays);
    staged      a prefetch that landed in the staging buffer and was not used yet (released
                when its layer's lookups pass without it);
    in flight   a prefetch still moving;
    at home     only on its home device (placement's choice; ``rehome`` and ``move``
                change it), and on any replica devices (``add_replica``), and, with faults
                on, on its backing device (engine/faults.py).

The iteration loop (engine/simulation.py) asks one thing per MoE layer: ``access`` decides
the layer's hits (the cache policy's state is updated; the rest enter the cache in lookup
order), lets the prefetcher issue background transfers, and returns when each missing object
arrives. Which copy a miss reads is planned per fetch (``_plan``): the home when no scheduler,
replica, migration or fault is configured; otherwise a live copy, in turn or as the
scheduler policy chooses (it also sets the issue order). Migration moves objects between devices
in the background (``move``); faults stop devices and restart what they were sending
(``fail``, ``recover``). Policies change the state only through these methods, so a new
policy never touches the loop.

Transfers run on the fluid network of engine/flows.py. The executor is the only source of
transfers and issues them in time order, so the network needs no events: it is advanced
lazily to the executor's clock (``advance_to``), and a fetch runs it until its own flows are
done. Uncontended fetches from one device (the common case) take closed forms instead; with
``fast_path=False`` every fetch goes through the general network (tests compare both).
"""
from __future__ import annotations

import math

_INF = math.inf

import numpy as np

from ..errors import SimulationError
from ..hardware.system import System
from .flows import Flow, FlowNetwork, Resource
from .transfer_log import TransferLog

DEMAND, PREFETCH, MIGRATE, FILL = 0, 1, 2, 3
MIGRATE_PRIORITY = 2          # below prefetches: migrations use what demand and prefetch leave
FILL_PRIORITY = 0.5           # background fills: after demand, before prefetches


def _no_prefetch(phase, layer, rows):
    return ()


class MemoryHierarchy:
    def __init__(self, ctx, system: System, home: np.ndarray, cache, prefetcher=None, *,
                 log_events: bool, fast_path: bool = True, scheduler=None,
                 dynamic: bool = False, fills: bool = False):
        self.ctx, self.system, self.cache = ctx, system, cache
        self.home = home                                   # device index per object
        self.pinned = home == system.local.index
        self.fast_path = fast_path
        self.log_events = log_events
        self.net = FlowNetwork()
        self.net.on_complete = self._on_flow_done
        # fetch path (resources, latency) per device
        self.paths = [system.fetch_path(d) if not d.is_local else ((), 0.0)
                      for d in system.devices]
        nd, L = len(system.devices), ctx.num_layers
        # counters [phase]; plain lists, not numpy: they are bumped on the hot path
        self.layer_lookups = [[0] * L, [0] * L]
        self.layer_hits = [[0] * L, [0] * L]
        self.served = [[0] * nd, [0] * nd]                 # lookups served per device
        self.fetched_bytes = [[0.0] * nd, [0.0] * nd]
        self.evictions = self.insertions = 0
        self.peak_cache_bytes = 0.0
        self.transfers = TransferLog()
        # prefetch state
        self.prefetching = prefetcher is not None
        # background cache fills (``fill``): the network then carries traffic nothing waits
        # for, so lookups advance it first and the one-device closed form is off
        self.fills = fills
        self.filling: dict[int, Flow] = {}       # object -> its fill flow, until it lands
        self.fill_count = 0
        self.fill_bytes = [0.0, 0.0]
        # bytes of the objects lookups missed (not pinned or cached; staged prefetches count,
        # as in the hit counts) plus those of fills, per phase: the miss-rate meter that
        # routing constraints read (``missed_bytes[phase]`` / (expert lookups x full bytes))
        self.missed_bytes = [0.0, 0.0]
        # objects looked up during prefill since the last ``take_prefill_seen`` (warm-up
        # policies that choose the decode-start cache from what prefill streamed through)
        self.track_prefill = False
        self._prefill_seen: set[int] = set()
        self.inflight: dict[int, Flow] = {}      # object -> its prefetch flow, until it lands
        self.staged: dict[int, int] = {}         # landed prefetches, not used yet -> source
        self._released: set = set()              # prefetch flows released before landing
        self._per_layer = ctx.num_experts * ctx.slices_per_expert
        self._replicas: dict[int, list[int]] = {}  # object -> its copies (home first)
        self.staged_bytes = self.pf_peak_buffer = 0.0
        self.pf_issued = self.pf_useful = self.pf_late = 0
        self.pf_bytes = [0.0, 0.0]
        self.pf_useful_bytes = self.pf_late_bytes = 0.0
        self.prefetcher = prefetcher
        self._ahead = prefetcher.on_layer_start if prefetcher is not None else _no_prefetch
        # general state (any of these set: every fetch plans its sources, see _plan)
        self.scheduler = scheduler               # chooses copies and issue order, or None
        self.dynamic = dynamic                   # migration or faults change homes mid-run
        self.down: set[int] = set()              # failed devices
        self.backing: np.ndarray | None = None   # device of each object's backing copy
        self.faults = None                       # engine/faults.py FaultState, or None
        self.moves: dict[int, tuple] = {}        # object -> (flow, dst, reason)
        self._reserved = [0.0] * nd              # bytes of moves under way, per destination
        self.moved: dict[tuple, float] = {}      # (phase, src, dst) -> bytes of finished moves
        self.move_log: list[tuple] = []          # (start, end, oid, src, dst, reason)
        self.move_counts = {"migrate": 0, "rehome": 0, "return": 0}
        self.move_bytes = {"migrate": 0.0, "rehome": 0.0, "return": 0.0}
        self.unavailable = 0                     # lookups that found no live copy (waited)
        self.unavailable_wait = 0.0              # seconds they waited for a recovery
        self.restarted = 0                       # transfers restarted from another source
        self.cut_bytes = [[0.0] * nd, [0.0] * nd]  # bytes fetched before a failure cut them
        self._demand: list | None = None         # the demand flows of the fetch under way
        self._phase = 0                          # phase of the last lookup (moves count in it)
        self.reads = [0] * ctx.num_objects       # reads of each object from a device (kept
        #                                          when sources are planned: dynamic runs)
        self.access = (self._access_prefetching if prefetcher is not None or dynamic or fills
                       else self._access)
        # fetch shortcuts: the one-device closed form (set by _refresh) and reused outcomes of
        # isolated multi-device fetches, each settled onto the resources at the end
        self._uniform = None
        self._uni_bytes = self._uni_busy = 0.0
        self._isolated: dict = {}                # (device, size) mix -> its isolated outcome
        self._isolated_uses: dict = {}
        self._refresh()

    def _refresh(self) -> None:
        """Hot-path copies of the placement (plain lists) and the one-device shortcut."""
        self._settle_uniform()
        self._pinned = self.pinned.tolist()
        self._home = self.home.tolist()              # the device the next read goes to
        self._sizes = self.ctx.object_bytes.tolist()
        self._cache_access, self._insert = self.cache.access, self.cache.insert
        # bytes homed (and held as copies) per device, for capacity checks
        used = np.bincount(self.home, weights=self.ctx.object_bytes,
                           minlength=len(self.system.devices)).tolist()
        for o, c in self._replicas.items():
            for d in c[1:]:
                used[d] += self._sizes[o]
        self._used = used
        # (device, size) when every unpinned object lives on one device and all objects have
        # one size: the miss path then needs no per-object bookkeeping
        unpinned, sizes = self.home[~self.pinned], self.ctx.object_bytes
        self._uniform = None
        self._plain = (self.scheduler is None and not self.dynamic and not self._replicas)
        if (self.fast_path and not self.prefetching and not self.fills and unpinned.size
                and self._plain
                and (unpinned == unpinned[0]).all() and (sizes == sizes[0]).all()):
            self._uniform = (int(unpinned[0]), float(sizes[0]))
            res, self._uni_lat = self.paths[self._uniform[0]]
            self._uni_cap = min(r.capacity for r in res)
        self._uni_bytes = self._uni_busy = 0.0

    # ------------------------------------------------------------------ state
    def where(self, oid: int) -> str:
        """The object's state now (see the module docstring)."""
        if self._pinned[oid]:
            return "pinned"
        if self.cache.contains(oid):
            return "cached"
        if oid in self.staged:
            return "staged"
        if oid in self.inflight:
            return "in flight"
        names = [self.system.devices[d].name for d in self.replicas(oid)]
        return f"at home ({names[0]})" + (f", copies on {', '.join(names[1:])}"
                                          if len(names) > 1 else "")

    def resident(self, oid: int) -> bool:
        """Usable without a fetch now: pinned, cached or staged (no cache state update)."""
        return self._pinned[oid] or oid in self.staged or self.cache.contains(oid)

    def replicas(self, oid: int) -> tuple[int, ...]:
        """Devices holding the object outside the local tier: its home first, then copies."""
        copies = self._replicas.get(oid)
        return (int(self.home[oid]),) + (tuple(copies[1:]) if copies else ())

    def _used_bytes(self, device: int) -> float:
        return self._used[device]

    def _check_room(self, oid: int, device: int, what: str):
        d = self.system.devices[device]
        if d.is_local or self._pinned[oid]:
            raise SimulationError(f"object {oid}: {what} cannot pin or unpin (to '{d.name}')")
        # capacity 0 holds nothing, as in the engine's start-up check
        if self._used_bytes(device) + self._sizes[oid] > d.spec.capacity_bytes:
            raise SimulationError(f"object {oid}: device '{d.name}' is full")

    def add_replica(self, oid: int, device: int) -> None:
        """Keep a copy of the object on ``device`` too (capacity checked); reads then
        alternate between its copies."""
        if device in self.replicas(oid):
            return
        self._check_room(oid, device, "add_replica")
        self._replicas.setdefault(oid, [int(self.home[oid])]).append(device)
        self._refresh()

    def drop_replica(self, oid: int, device: int) -> None:
        """Remove the copy on ``device`` (not the home: ``rehome`` moves that)."""
        copies = self._replicas.get(oid)
        if not copies or device not in copies[1:]:
            raise SimulationError(f"object {oid} has no copy on device {device}")
        copies.remove(device)
        if len(copies) == 1:
            del self._replicas[oid]
        self._refresh()

    def _rotate(self, oid: int, read=None) -> None:
        """The next read of a replicated object goes to the copy after ``read`` (default:
        the one this read used)."""
        copies = self._replicas[oid]
        d = self._home[oid] if read is None else read
        i = copies.index(d) + 1 if d in copies else 0
        self._home[oid] = copies[i % len(copies)]

    def _set_home(self, oid: int, device: int) -> None:
        """``device`` becomes the object's home; a copy already there becomes the home, and
        the old home is no longer a copy. No checks (callers check room)."""
        copies = self._replicas.get(oid)
        if copies:
            if device in copies:
                copies.remove(device)
            copies[0] = device
            if len(copies) == 1:
                del self._replicas[oid]
        self.home[oid] = device

    def rehome(self, oid: int, device: int) -> None:
        """Make ``device`` the object's home (placement or migration moving it). Its capacity
        is checked; an object cannot be pinned or unpinned this way (the local tier's budget
        is fixed at start)."""
        if device in self.replicas(oid)[1:]:
            raise SimulationError(f"object {oid} already has a copy on device {device}; "
                                  "drop it first")
        self._check_room(oid, device, "rehome")
        self._set_home(oid, device)
        self._refresh()

    def initialize(self) -> None:
        """Start of the run (after warm-up filled the cache): bind the hot-path references
        again, so policies wrapped after construction (tests, tools) are the ones called."""
        self._refresh()
        if self.prefetcher is not None:
            self._ahead = self.prefetcher.on_layer_start
        self.peak_cache_bytes = self.cache.used_bytes

    # ------------------------------------------------------------------ lookups
    @property
    def lookups(self) -> list[int]:
        return [sum(x) for x in self.layer_lookups]

    @property
    def hits(self) -> list[int]:
        return [sum(x) for x in self.layer_hits]

    def _hits(self, phase: int, layer: int, oids, counts):
        """Decide a lookup group's hits (pinned, or found by the cache policy, which updates
        its state) before anything enters the cache. Returns (hits, their token assignments,
        the others as [(oid, count)] in lookup order or None)."""
        pinned, access = self._pinned, self._cache_access
        hit_u = hit_a = 0
        rest = None
        i = 0
        for oid in oids:
            c = 1 if counts is None else counts[i]
            i += 1
            if pinned[oid] or access(oid):
                hit_u += 1
                hit_a += c
            elif rest is None:
                rest = [(oid, c)]
            else:
                rest.append((oid, c))
        self.layer_lookups[phase][layer] += i
        self.layer_hits[phase][layer] += hit_u
        if rest is not None:
            sizes = self._sizes
            self.missed_bytes[phase] += sum(sizes[o] for o, _c in rest)
        if phase == 0 and self.track_prefill:
            self._prefill_seen.update(oids)
        return hit_u, hit_a, rest

    def take_prefill_seen(self) -> set[int]:
        """Objects looked up (or filled) in prefill since the last call, and forget them.
        Only kept while ``track_prefill`` is set (a warm-up policy asks for it)."""
        seen, self._prefill_seen = self._prefill_seen, set()
        return seen

    def _access(self, phase: int, layer: int, oids, counts, t: float, rows=None):
        """Look up a layer's distinct objects at ``t`` (token counts per object, or None = 1
        each) and fetch the misses. Returns (resident objects, their token assignments,
        arrivals, items): ``items`` the non-resident objects as [(oid, count, ...)] in lookup
        order, ``arrivals`` None (all resident), one time (all arrive together) or a list
        aligned with ``items``. Hits update the cache policy's state; misses then enter the
        cache in lookup order, so a fetch never evicts an expert the same layer found
        resident (libCacheSim's one-at-a-time ``get`` can)."""
        hit_u, hit_a, missed = self._hits(phase, layer, oids, counts)
        if missed is None:
            return hit_u, hit_a, None, None
        uni = self._uniform
        if uni is not None:
            return hit_u, hit_a, self._fetch_uniform(phase, missed, uni[0], uni[1], t), missed
        return hit_u, hit_a, self._fetch_general(phase, missed, None, t, False), missed

    def _access_prefetching(self, phase: int, layer: int, oids, counts, t: float, rows=None):
        """``_access`` when a prefetcher runs. Background transfers due by ``t`` land first.
        Hits are decided for the whole group before the cache changes, so prefetching never
        changes them; the rest enter the cache in lookup order, as demand fetches would: a
        staged object is resident for compute, a late one (still in flight) is waited for at
        demand priority, the others are fetched. The prefetcher is asked after the hits are
        decided and before the misses move (its transfers start at ``t`` too)."""
        net = self.net
        self.advance_to(t)
        res_u, res_a, rest = self._hits(phase, layer, oids, counts)
        late = []
        if self.filling:
            res_u, res_a = self._pending_fills(oids, counts, rest, res_u, res_a, late)
        if rest is None and late:
            rest = []
        if rest is None:
            if self.staged or self.inflight:
                self._release(layer, oids)
            self.prefetch(phase, self._ahead(phase, layer, rows), t)
            return res_u, res_a, None, None
        inflight, staged = self.inflight, self.staged
        sizes, served, admit = self._sizes, self.served[phase], self._admit
        self._phase = phase
        missed = []
        for oid, c in rest:
            if oid in staged:
                served[staged.pop(oid)] += 1      # counted where the prefetch read it
                self.staged_bytes -= sizes[oid]
                self.pf_useful += 1
                self.pf_useful_bytes += sizes[oid]
                res_u += 1
                res_a += c
            elif oid in inflight:
                f = inflight.pop(oid)
                late.append((oid, c, f))
                served[f.tag[1]] += 1
                self.pf_useful += 1
                self.pf_late += 1
                self.pf_useful_bytes += f.size
                self.pf_late_bytes += f.size
            else:
                missed.append((oid, c))
            admit(oid, sizes[oid])
        if staged or inflight:
            self._release(layer, oids)
        self.prefetch(phase, self._ahead(phase, layer, rows), t)
        if not missed:
            if not late:
                return res_u, res_a, None, None
            flows = [f for _o, _c, f in late]       # only late prefetches: wait for them
            net.promote(flows, t)
            self._run(flows)
            return res_u, res_a, [f.done_at for f in flows], late
        arrivals = self._fetch_general(phase, missed, late or None, t, True)
        return res_u, res_a, arrivals, missed + late

    def _pending_fills(self, oids, counts, rest, res_u, res_a, late):
        """Lookups of objects whose background fill is still moving: a cache hit waits for
        the fill's flow (joined to ``late``, promoted to demand); a miss (the object was
        evicted before it landed) forgets the fill, whose bytes still move. Returns the
        resident counts without the waited-for hits."""
        filling = self.filling
        missed = {o for o, _c in rest} if rest else ()
        for i, oid in enumerate(oids):
            f = filling.get(oid)
            if f is None:
                continue
            del filling[oid]
            if oid in missed:
                continue
            c = 1 if counts is None else counts[i]
            late.append((oid, c, f))
            res_u -= 1
            res_a -= c
        return res_u, res_a

    def fill(self, phase: int, oids, t: float) -> None:
        """Load ``oids`` into the cache in the background at ``t``: each is admitted now (as a
        demand miss is, evicting what the cache policy chooses) and its bytes move from its
        home below demand priority (``FILL_PRIORITY``: demand fetches go first, prefetches
        after), and nothing waits for them. A later lookup that finds the object still moving waits for it. Used
        by mixed-precision policies that run an expert at the precision resident now and load
        the rest of it for next time (SliceMoE's LSB slices). Needs ``fills=True``."""
        if not self.fills:
            raise SimulationError("fill() needs a MemoryHierarchy built with fills=True")
        self.advance_to(t)
        pinned, contains, sizes, paths = self._pinned, self.cache.contains, self._sizes, self.paths
        track = phase == 0 and self.track_prefill
        flows = []
        for oid in oids:
            if pinned[oid] or contains(oid) or oid in self.staged or oid in self.filling:
                continue
            if oid in self.inflight:                  # a prefetch already moving it
                continue
            size = sizes[oid]
            if not self._admit(oid, size):
                continue
            if self._plain:
                dev, wait = self._home[oid], 0.0
            else:
                dev, wait = self._source(oid, t)
                self.reads[oid] += 1
            f = Flow(size, paths[dev][0], paths[dev][1] + wait, (oid, dev, phase, FILL), _INF,
                     FILL_PRIORITY)
            flows.append(f)
            self.filling[oid] = f
            self.fill_count += 1
            self.fill_bytes[phase] += size
            self.missed_bytes[phase] += size
            if track:
                self._prefill_seen.add(oid)
        if flows:
            # the layer's demand fetch may have run the network past ``t``: a fill is below
            # demand priority on the same paths, so starting it then loses nothing
            self.net.start(flows, max(t, self.net.t))

    def _release(self, layer: int, oids) -> None:
        """The layer's lookups are done: prefetches of its objects that it did not use are
        released (a staged one leaves the buffer, one still moving will not be staged), as
        Pre-gated MoE and AdapMoE free a mispredicted expert's buffer. The buffer so holds
        only guesses for layers still to come."""
        per = self._per_layer
        looked = None
        for oid in [o for o in self.staged if o // per == layer]:
            if looked is None:
                looked = set(oids)
            if oid not in looked:
                del self.staged[oid]
                self.staged_bytes -= self._sizes[oid]
        for oid in [o for o in self.inflight if o // per == layer]:
            if looked is None:
                looked = set(oids)
            if oid not in looked:
                self._released.add(self.inflight.pop(oid))

    def _admit(self, oid: int, size: float) -> bool:
        """Insert ``oid`` into the cache, counting insertions and evictions. False if the
        cache declined to keep it."""
        evicted = self._insert(oid, size)
        kept = not (evicted and evicted[-1] == oid)
        self.evictions += len(evicted) - (0 if kept else 1)
        if kept:
            self.insertions += 1
        used = self.cache.used_bytes
        if used > self.peak_cache_bytes:
            self.peak_cache_bytes = used
        return kept

    # ------------------------------------------------------------------ transfers
    def advance_to(self, t: float) -> None:
        """Let background transfers due by ``t`` land (cheap when none is)."""
        net = self.net
        faults = self.faults
        if faults is not None:
            while faults.next_time <= t:              # failures and returns due first
                tf = faults.next_time
                net.advance_to(tf)
                faults.apply_due(self, tf)
        if net.next_change() <= t:
            net.advance_to(t)

    def prefetch(self, phase: int, oids, t: float) -> None:
        """Start background fetches of ``oids`` at ``t`` (those not pinned, cached, staged or
        in flight). They use only bandwidth demand fetches leave, land in the staging buffer
        and enter the cache on first use."""
        pinned, contains, home, sizes = self._pinned, self.cache.contains, self._home, self._sizes
        inflight, staged, paths = self.inflight, self.staged, self.paths
        replicated = self._replicas
        plain = self._plain
        flows = None
        for oid in oids:
            if pinned[oid] or oid in inflight or oid in staged or contains(oid):
                continue
            if plain:
                dev = home[oid]
            else:
                if self.scheduler is not None and oid in replicated:
                    live = self.live_copies(oid)
                    if not live:
                        continue
                    dev = self.scheduler.choose(self, oid, sizes[oid], live)
                else:
                    dev, wait = self._source(oid, t)
                    if wait:                  # no live copy: not worth a prefetch
                        continue
                self.reads[oid] += 1
            size = sizes[oid]
            f = Flow(size, *paths[dev], (oid, dev, phase, PREFETCH), _INF, 1)
            if flows is None:
                flows = [f]
            else:
                flows.append(f)
            inflight[oid] = f
            if plain and replicated and oid in replicated:
                self._rotate(oid)
            self.pf_issued += 1
            self.pf_bytes[phase] += size
        if flows is not None:
            self.net.start(flows, t)

    def _fetch_uniform(self, phase, missed, dev: int, size: float, t: float):
        """One backing device, one object size: insert in lookup order and move the batch in
        closed form (all arrive together). Only this path moves bytes then (no prefetcher, no
        other device), so the network stays idle."""
        insert = self._insert
        n = len(missed)
        self.served[phase][dev] += n
        ev = ins = 0
        for oid, _c in missed:
            evicted = insert(oid, size)
            if evicted:
                if evicted[-1] == oid:
                    ev += len(evicted) - 1
                    continue
                ev += len(evicted)
            ins += 1
        self.evictions += ev
        self.insertions += ins
        used = self.cache.used_bytes
        if used > self.peak_cache_bytes:
            self.peak_cache_bytes = used
        # the closed form of n equal flows alone on one path (the network is idle: nothing
        # else moves on this path); the resources' totals are settled by _settle_uniform
        total = n * size
        busy = total / self._uni_cap
        end = t + self._uni_lat + busy
        self._uni_bytes += total
        self._uni_busy += busy
        self.fetched_bytes[phase][dev] += total
        if self.log_events:
            self.transfers.add(t, end, size, n, dev, phase, DEMAND, [o for o, _c in missed])
        return end

    def _settle_uniform(self) -> None:
        """Carry the one-device shortcut's bytes and busy time over to its resources."""
        if self._uniform is not None and self._uni_bytes:
            for r in self.paths[self._uniform[0]][0]:
                r.bytes += self._uni_bytes
                r.busy_time += self._uni_busy
        self._uni_bytes = self._uni_busy = 0.0

    def _fetch_general(self, phase: int, missed, late, t: float, admitted: bool):
        """Any fetch of ``missed`` [(oid, count)] at ``t``, waiting also for ``late``
        prefetches [(oid, count, flow)]. ``admitted``: the lookup already admitted the misses
        to the cache. Returns the arrival times (misses, then late ones)."""
        sizes, paths = self._sizes, self.paths
        served = self.served[phase]
        if not admitted:
            for oid, _c in missed:
                self._admit(oid, sizes[oid])
        devs, prios, waits = self._plan(missed, t)
        msizes = [sizes[oid] for oid, _c in missed]
        for d in devs:
            served[d] += 1
        net = self.net
        if (self.fast_path and late is None and waits is None and net.idle
                and self.faults is None):
            # nothing else moves: the outcome depends only on which devices, sizes and issue
            # priorities, so it is solved once per such mix and reused (relative to the start)
            pr = prios if prios is not None else [0] * len(devs)
            key = tuple(sorted(zip(devs, msizes, pr)))
            sol = self._isolated.get(key)
            if sol is not None:
                self._isolated_uses[key] = self._isolated_uses.get(key, 0) + 1
            else:
                sol = self._solve_isolated(key)
                for r, b, busy in sol[1]:       # (once: later uses are settled at the end)
                    r.bytes += b
                    r.busy_time += busy
            rel, incr = sol
            fetched = self.fetched_bytes[phase]
            done = []
            log = self.transfers.add if self.log_events else None
            for (oid, _c), d, sz, q in zip(missed, devs, msizes, pr):
                end = t + rel[d, sz, q]
                done.append(end)
                fetched[d] += sz
                if log is not None:
                    log(t, end, sz, 1, d, phase, DEMAND, (oid,))
            return done
        flows = []
        for i, ((oid, _c), dev, size) in enumerate(zip(missed, devs, msizes)):
            res, lat = paths[dev]
            if waits is not None and waits[i]:
                lat += waits[i]                     # no live copy: waits for a recovery
            flows.append(Flow(size, res, lat, (oid, dev, phase, DEMAND), _INF,
                              0 if prios is None else prios[i]))
        if prios is None:
            if flows:
                net.start(flows, t)
        else:                                       # issue order: one start per rank
            for f in flows:
                net.start([f], t)
        if late:
            lflows = [f for _o, _c, f in late]
            net.promote(lflows, t)
            flows = flows + lflows
        self._run(flows)
        return [f.done_at for f in flows]

    # ------------------------------------------------------------------ sources
    def _plan(self, missed, t: float):
        """The device each missed object is read from, issue priorities (None: all start
        together and share) and waits for a recovery (None: none waits). Plain runs read the
        home, or the copies of a replicated object in turn; otherwise live copies only, the
        scheduler policy choosing among them and the order."""
        home = self._home
        if self._plain:
            devs = [home[oid] for oid, _c in missed]
            if self._replicas:
                for oid, _c in missed:
                    if oid in self._replicas:
                        self._rotate(oid)
            return devs, None, None
        sizes = self._sizes
        reads = self.reads
        for oid, _c in missed:
            reads[oid] += 1
        sched = self.scheduler
        if not self.down and not self._replicas:
            if sched is None:
                return [home[oid] for oid, _c in missed], None, None
            devs, prios = sched.plan(self, [(oid, sizes[oid], (home[oid],))
                                            for oid, _c in missed], t)
            return devs, prios, None
        if sched is not None and len(missed) > 0:
            items = [(oid, sizes[oid], self.live_copies(oid)) for oid, _c in missed]
            if all(c for _o, _s, c in items):
                devs, prios = sched.plan(self, items, t)
                return devs, prios, None
        devs, waits = [], []
        for oid, _c in missed:
            d, w = self._demand_source(oid, t)
            devs.append(d)
            waits.append(w)
        return devs, None, (waits if any(waits) else None)

    def live_copies(self, oid: int) -> tuple[int, ...]:
        """Devices that can serve a read of ``oid`` now: its home and copies that are up,
        else its backing copy if that is up (empty: none is)."""
        down = self.down
        copies = self.replicas(oid)
        if not down:
            return copies
        live = tuple(d for d in copies if d not in down)
        if not live and self.backing is not None:
            b = int(self.backing[oid])
            if b not in down:
                return (b,)
        return live

    def _source(self, oid: int, t: float) -> tuple[int, float]:
        """(device, wait) for one read of ``oid`` at ``t``: a live copy in turn (replicas
        rotate); with none live, the copy whose device returns first and the wait for it
        (the caller counts it as unavailability)."""
        if not self.down and oid not in self._replicas:
            return self._home[oid], 0.0
        live = self.live_copies(oid)
        if live:
            d = self._home[oid]
            if d not in live:
                d = live[0]
            if oid in self._replicas:
                self._rotate(oid, d)
            return d, 0.0
        cands = list(self.replicas(oid))
        if self.backing is not None:
            cands.append(int(self.backing[oid]))
        back = [(self.faults.return_time(d), d) for d in cands] if self.faults else []
        back = [(tr, d) for tr, d in back if tr < _INF]
        if not back:
            raise SimulationError(f"object {oid}: every copy is down and none returns")
        tr, d = min(back)
        return d, tr - t

    def _demand_source(self, oid: int, t: float) -> tuple[int, float]:
        """``_source`` for a demand read: a wait for a recovery counts as unavailability."""
        d, w = self._source(oid, t)
        if w:
            self.unavailable += 1
            self.unavailable_wait += w
        return d, w

    def _run(self, flows) -> None:
        """Run the network until ``flows`` are done; failures and returns due meanwhile are
        applied at their instants (a flow cancelled by a failure is replaced in ``flows`` by
        its restart from another source)."""
        faults = self.faults
        if faults is None:
            self.net.run_until_done(flows)
            return
        net = self.net
        self._demand = flows
        try:
            while True:
                if all(f.done_at == f.done_at for f in flows):
                    return
                tf = faults.next_time
                nc = net.next_change()
                if nc > tf:
                    net.advance_to(tf)
                    faults.apply_due(self, tf)
                elif nc == _INF:
                    raise SimulationError("a transfer can never finish")
                else:
                    net.advance_to(nc)
        finally:
            self._demand = None

    def _solve_isolated(self, key: tuple):
        """Run the flows of ``key`` ((device, size, priority) per flow) from time 0 on copies
        of their resources: each one's completion time and what each resource carried."""
        shadow: dict = {}
        flows = []
        for dev, size, prio in key:
            res, lat = self.paths[dev]
            path = tuple(shadow.setdefault(r, Resource(r.name, r.capacity)) for r in res)
            flows.append(Flow(size, path, lat, None, _INF, prio))
        scratch = FlowNetwork()
        scratch.start(flows, 0.0)
        scratch.run_until_done(flows)
        scratch.close(scratch.t)
        rel = {k: f.done_at for k, f in zip(key, flows)}
        incr = [(r, s.bytes, s.busy_time) for r, s in shadow.items()]
        sol = (rel, incr)
        if len(self._isolated) < 65536:
            self._isolated[key] = sol
        return sol

    def _settle_isolated(self) -> None:
        """Carry the reused isolated fetches' bytes and busy time over to the resources."""
        for key, n in self._isolated_uses.items():
            for r, b, busy in self._isolated[key][1]:
                r.bytes += b * n
                r.busy_time += busy * n
        self._isolated_uses.clear()

    # ------------------------------------------------------------------ moves
    def room(self, device: int) -> float:
        """Bytes ``device`` can still take (homes, copies and moves under way counted)."""
        d = self.system.devices[device]
        return d.spec.capacity_bytes - self._used_bytes(device) - self._reserved[device]

    def move(self, oid: int, dst: int, t: float, *, reason: str = "migrate",
             demand: bool = False) -> bool:
        """Copy ``oid`` to device ``dst`` in the background from a live copy, then make
        ``dst`` its home (``reason``: migrate, rehome or return). The copy reserves room on
        ``dst`` while it moves, runs below demand and prefetch priority (it uses bandwidth
        they leave; ``demand``: at demand priority instead, sharing max-min fairly with
        demand fetches, so it cannot starve behind a saturated device) and crosses
        ``System.move_path``. Reads use the old copies until it
        lands. False (nothing started) when the object is pinned, already moving, already
        there, has no live copy, or ``dst`` is down or has no room."""
        if (self._pinned[oid] or oid in self.moves or dst in self.down
                or dst in self.replicas(oid) or self.system.devices[dst].is_local):
            return False
        size = self._sizes[oid]
        if self.room(dst) < size:
            return False
        live = self.live_copies(oid)
        if not live:
            return False
        src = live[0]
        res, lat = self.system.move_path(self.system.devices[src], self.system.devices[dst])
        f = Flow(size, res, lat, (oid, src, self._phase, MIGRATE), _INF,
                 0 if demand else MIGRATE_PRIORITY)
        self._reserved[dst] += size
        self.moves[oid] = (f, dst, reason)
        self.net.start([f], t)
        return True

    def _move_done(self, f: Flow) -> None:
        oid, src, phase, _p = f.tag
        entry = self.moves.get(oid)
        if entry is None or entry[0] is not f:
            return
        del self.moves[oid]
        _f, dst, reason = entry
        size = f.size
        self._reserved[dst] -= size
        key = (phase, src, dst)
        self.moved[key] = self.moved.get(key, 0.0) + size
        self.move_counts[reason] += 1
        self.move_bytes[reason] += size
        self.move_log.append((f.start_at, f.done_at, oid, src, dst, reason))
        self._set_home(oid, dst)
        self._refresh()

    def cancel_moves(self, oids, t: float) -> None:
        """Stop the moves of ``oids`` (their reservations are released)."""
        for oid in list(oids):
            entry = self.moves.pop(oid, None)
            if entry is not None:
                f, dst = entry[0], entry[1]
                self.net.advance_to(t)
                part = f.size - self.net.remaining(f)
                self.net.cancel([f], t)
                self._reserved[dst] -= f.size
                if part > 0:                       # moved, then discarded: still counted
                    key = (f.tag[2], f.tag[1], dst)
                    self.moved[key] = self.moved.get(key, 0.0) + part

    # ------------------------------------------------------------------ faults
    def fail(self, device: int, t: float) -> list[int]:
        """``device`` fails at ``t`` (the network is at ``t``): copies on it are dropped;
        transfers reading it (demand, prefetch, moves) and moves to it stop; demand fetches
        and prefetches restart from another live copy. Returns the objects whose home it was (engine/faults.py re-homes
        them)."""
        self.down.add(device)
        for oid in [o for o, c in self._replicas.items() if device in c[1:]]:
            copies = self._replicas[oid]           # a copy on it is gone
            copies.remove(device)
            if len(copies) == 1:
                del self._replicas[oid]
        self._refresh()
        net = self.net
        self.cancel_moves([o for o, e in self.moves.items()
                           if e[0].tag[1] == device or e[1] == device], t)
        lost = [(o, f) for o, f in self.inflight.items() if f.tag[1] == device]
        if lost:
            for _o, f in lost:
                self.cut_bytes[f.tag[2]][device] += f.size - net.remaining(f)
            net.cancel([f for _o, f in lost], t)
            for o, f in lost:
                del self.inflight[o]
                self.pf_issued -= 1                 # re-issued below (counted once)
                self.pf_bytes[f.tag[2]] -= f.size
                self.restarted += 1
            self.prefetch(self._phase, [o for o, _f in lost], t)
        flows = self._demand
        if flows:
            for i, f in enumerate(flows):
                if f.done_at != f.done_at and not f.cancelled and f.tag[1] == device:
                    oid, _d, phase, purpose = f.tag
                    self.cut_bytes[phase][device] += f.size - net.remaining(f)
                    net.cancel([f], t)
                    dev, wait = self._demand_source(oid, t)
                    res, lat = self.paths[dev]
                    nf = Flow(f.size, res, lat + wait, (oid, dev, phase, purpose), _INF, 0)
                    net.start([nf], t)
                    self.served[phase][dev] += 1
                    self.served[phase][device] -= 1
                    flows[i] = nf
                    self.restarted += 1
        return np.flatnonzero((self.home == device) & ~self.pinned).tolist()

    def adopt_backing(self, oids) -> None:
        """Make each object's backing copy its home (its home failed and no live device of
        its tier could take it). No capacity check: the copy is already there."""
        for oid in oids:
            self._set_home(oid, int(self.backing[oid]))
        self._refresh()

    def recover(self, device: int, t: float) -> None:
        """``device`` is back at ``t`` (empty: engine/faults.py moves its objects back)."""
        self.down.discard(device)
        self._refresh()

    def _on_flow_done(self, f: Flow) -> None:
        oid, dev, phase, purpose = f.tag
        if purpose == MIGRATE:
            self._move_done(f)
            return
        self.fetched_bytes[phase][dev] += f.size
        if self.log_events:
            self.transfers.add(f.start_at, f.done_at, f.size, 1, dev, phase, purpose, (oid,))
        if purpose == FILL:
            if self.filling.get(oid) is f:
                del self.filling[oid]
            return
        if purpose == PREFETCH and self._released and f in self._released:
            self._released.discard(f)            # released before it landed: not staged
            return
        if purpose == PREFETCH and self.inflight.get(oid) is f:
            # a prefetched expert lands in the staging buffer; it enters the cache on first
            # use, as a demand fetch would have. (A late prefetch, one a lookup already waited
            # for, left ``inflight`` then: it is not staged again.)
            del self.inflight[oid]
            self.staged[oid] = dev
            self.staged_bytes += f.size
            if self.staged_bytes > self.pf_peak_buffer:
                self.pf_peak_buffer = self.staged_bytes

    def close(self, t: float) -> None:
        """End of run: settle the network's accounting at ``t``. Fills still moving are
        completed first (their bytes were asked for and count; the run's time does not wait)."""
        if self.filling:
            self._run(list(self.filling.values()))
        self._settle_uniform()
        self._settle_isolated()
        self.net.close(t)

    @property
    def pf_wasted(self) -> int:
        """Prefetches never used (landed or still in flight at the end)."""
        return self.pf_issued - self.pf_useful

    @property
    def pf_wasted_bytes(self) -> float:
        """Bytes of prefetches never used."""
        return sum(self.pf_bytes) - self.pf_useful_bytes
