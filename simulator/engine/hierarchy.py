"""The memory hierarchy: where every object lives, what a group of lookups finds there, and
where and when each missing object arrives.

An object (an expert, or one slice of it: policies/base.py) is, at any instant, in one of

    pinned      on the local device for the whole run (placement put it there);
    cached      in the local expert cache (the cache policy decides what stays);
    staged      a prefetch that landed in the staging buffer and was not used yet;
    in flight   a prefetch still moving;
    at home     only on its home device (placement's choice; ``rehome`` moves it).

The iteration loop (engine/simulation.py) asks three things per MoE layer: ``lookup`` (which
of the layer's objects are resident now: hits update the cache policy's state, the rest
enter the cache in lookup order as they are fetched), ``prefetch`` (background transfers a
policy asks for) and ``fetch`` (when each missing object arrives). Placement, prefetch and
migration change the state only through these methods, so a new policy never touches the loop.

Transfers run on the fluid network of engine/flows.py. The executor is the only source of
transfers and issues them in time order, so the network needs no events: it is advanced
lazily to the executor's clock (``advance_to``), and a fetch runs it until its own flows are
done. Uncontended fetches from one device (the common case) take closed forms instead; with
``fast_path=False`` every fetch goes through the general network (tests compare both).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import SimulationError
from ..hardware.system import System
from .flows import Flow, _LazyShim as FlowNetwork
from .transfer_log import TransferLog

DEMAND, PREFETCH = 0, 1


class MemoryHierarchy:
    def __init__(self, ctx, system: System, home: np.ndarray, cache, *, prefetching: bool,
                 log_events: bool, fast_path: bool = True):
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
        self.lookups = [0, 0]
        self.hits = [0, 0]
        self.layer_lookups = [[0] * L, [0] * L]
        self.layer_hits = [[0] * L, [0] * L]
        self.served = [[0] * nd, [0] * nd]                 # lookups served per device
        self.fetched_bytes = [[0.0] * nd, [0.0] * nd]
        self.evictions = self.insertions = 0
        self.peak_cache_bytes = 0.0
        self.transfers = TransferLog()
        # prefetch state
        self.prefetching = prefetching
        self.inflight: dict[int, Flow] = {}      # object -> its prefetch flow, until it lands
        self.staged: set[int] = set()            # landed prefetches, not used yet
        self.staged_bytes = self.pf_peak_buffer = 0.0
        self.pf_issued = self.pf_useful = self.pf_late = 0
        self.pf_bytes = [0.0, 0.0]
        self.lookup = self._lookup_prefetching if prefetching else self._lookup
        self._refresh()

    def _refresh(self) -> None:
        """Hot-path copies of the placement (plain lists) and the one-device shortcut."""
        self._pinned = self.pinned.tolist()
        self._home = self.home.tolist()
        self._sizes = self.ctx.object_bytes.tolist()
        self._access, self._insert = self.cache.access, self.cache.insert
        # (device, size) when every unpinned object lives on one device and all objects have
        # one size: the miss path then needs no per-object bookkeeping
        unpinned, sizes = self.home[~self.pinned], self.ctx.object_bytes
        self._uniform = None
        if (self.fast_path and not self.prefetching and unpinned.size
                and (unpinned == unpinned[0]).all() and (sizes == sizes[0]).all()):
            self._uniform = (int(unpinned[0]), float(sizes[0]))

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
        return f"at home ({self.system.devices[self._home[oid]].name})"

    def rehome(self, oid: int, device: int) -> None:
        """Make ``device`` the object's home (placement or migration moving it). Its capacity
        is checked; an object cannot be pinned or unpinned this way (the local tier's budget
        is fixed at start)."""
        d = self.system.devices[device]
        if d.is_local or self._pinned[oid]:
            raise SimulationError(f"object {oid}: rehome cannot pin or unpin (to '{d.name}')")
        if d.spec.capacity_bytes:
            used = float(self.ctx.object_bytes[self.home == device].sum())
            if used + self._sizes[oid] > d.spec.capacity_bytes:
                raise SimulationError(f"object {oid}: device '{d.name}' is full")
        self.home[oid] = device
        self._refresh()

    def initialize(self, warm: list[int]) -> None:
        self.peak_cache_bytes = self.cache.used_bytes

    # ------------------------------------------------------------------ lookups
    def _count(self, phase: int, layer: int, n: int, hits: int) -> None:
        self.lookups[phase] += n
        self.hits[phase] += hits
        self.layer_lookups[phase][layer] += n
        self.layer_hits[phase][layer] += hits

    def _lookup(self, phase: int, layer: int, oids, counts):
        """Look up a layer's distinct objects (token counts per object, or None = 1 each).
        Returns (resident objects, their token assignments, misses as [(oid, count)] or None,
        late prefetches as [(oid, count, flow)] or None). Misses are fetched by ``fetch``."""
        pinned, access = self._pinned, self._access
        hit_u = hit_a = 0
        missed = None
        i = 0
        for oid in oids:
            c = 1 if counts is None else counts[i]
            i += 1
            if pinned[oid] or access(oid):
                hit_u += 1
                hit_a += c
            else:
                if missed is None:
                    missed = []
                missed.append((oid, c))
        self._count(phase, layer, i, hit_u)
        return hit_u, hit_a, missed, None

    def _lookup_prefetching(self, phase: int, layer: int, oids, counts):
        """``_lookup`` when prefetches may be staged or in flight. Hits are decided for the
        whole group first, so prefetching never changes them; the rest then enter the cache
        in lookup order, as demand fetches would: a staged object is resident for compute, a
        late one (still in flight) is waited for, the others are misses."""
        pinned, access = self._pinned, self._access
        inflight, staged = self.inflight, self.staged
        sizes, home, served = self._sizes, self._home, self.served[phase]
        res_u = res_a = hit_u = 0
        rest = []
        for i, oid in enumerate(oids):
            c = 1 if counts is None else counts[i]
            if pinned[oid] or access(oid):
                hit_u += 1
                res_u += 1
                res_a += c
            else:
                rest.append((oid, c))
        missed, late = [], []
        for oid, c in rest:
            if oid in staged:
                staged.discard(oid)
                self.staged_bytes -= sizes[oid]
                self.pf_useful += 1
                res_u += 1
                res_a += c
            elif oid in inflight:
                late.append((oid, c, inflight.pop(oid)))
                self.pf_useful += 1
                self.pf_late += 1
            else:
                missed.append((oid, c))
            served[home[oid]] += 1
            self._admit(oid, sizes[oid])
        self._count(phase, layer, len(oids), hit_u)
        return res_u, res_a, missed or None, late or None

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
        if net.next_change() <= t:
            net.advance_to(t)

    def prefetch(self, phase: int, oids, t: float) -> None:
        """Start background fetches of ``oids`` at ``t`` (those not pinned, cached, staged or
        in flight). They use only bandwidth demand fetches leave, land in the staging buffer
        and enter the cache on first use."""
        pinned, contains, home, sizes = self._pinned, self.cache.contains, self._home, self._sizes
        inflight, staged, paths = self.inflight, self.staged, self.paths
        flows = []
        for oid in oids:
            if pinned[oid] or oid in inflight or oid in staged or contains(oid):
                continue
            dev = home[oid]
            f = Flow(sizes[oid], *paths[dev], tag=(oid, dev, phase, PREFETCH), priority=1)
            flows.append(f)
            inflight[oid] = f
            self.pf_issued += 1
            self.pf_bytes[phase] += f.size
        if flows:
            self.net.start(flows, t)

    def fetch(self, phase: int, missed, late, t: float):
        """Fetch the misses of a lookup at ``t`` (and wait for its late prefetches, raised to
        demand priority). Returns when each arrives: one time when all arrive together, else
        a list aligned with ``missed + late``."""
        uni = self._uniform
        if uni is not None and late is None:
            dev, size = uni
            end = self._fetch_uniform(phase, missed, dev, size, t)
            if end is not None:
                return end
            return self._fetch_general(phase, missed, None, t, counted=True)
        return self._fetch_general(phase, missed, late, t, counted=self.prefetching)

    def _fetch_uniform(self, phase, missed, dev: int, size: float, t: float):
        """One backing device, one object size: insert in lookup order and move the batch in
        closed form (all arrive together). None when the network is busy."""
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
        res, lat = self.paths[dev]
        end = self.net.isolated_uniform(res, lat, size, n, t, math.inf)
        if end is None:
            return None
        self.fetched_bytes[phase][dev] += n * size
        if self.log_events:
            self.transfers.add(t, end, size, n, dev, phase, DEMAND, [o for o, _c in missed])
        return end

    def _fetch_general(self, phase: int, missed, late, t: float, counted: bool):
        """Any fetch: ``counted`` when the lookup already admitted the misses to the cache
        and counted them as served by their devices."""
        home, sizes, paths = self._home, self._sizes, self.paths
        served = self.served[phase]
        missed = missed or []
        devs, msizes = [], []
        for oid, _c in missed:
            dev = home[oid]
            if not counted:
                served[dev] += 1
                self._admit(oid, sizes[oid])
            devs.append(dev)
            msizes.append(sizes[oid])
        net = self.net
        if self.fast_path and late is None and net.idle:
            dev0 = devs[0]
            if all(d == dev0 for d in devs):
                res, lat = paths[dev0]
                done = net.isolated_same_path(res, lat, msizes, t, math.inf)
                if done is not None:
                    self.fetched_bytes[phase][dev0] += sum(msizes)
                    if self.log_events:
                        for (oid, _c), d, sz in zip(missed, done, msizes):
                            self.transfers.add(t, d, sz, 1, dev0, phase, DEMAND, (oid,))
                    return done
        flows = [Flow(size, *paths[dev], tag=(oid, dev, phase, DEMAND))
                 for (oid, _c), dev, size in zip(missed, devs, msizes)]
        if flows:
            net.start(flows, t)
        if late:
            lflows = [f for _o, _c, f in late]
            net.promote(lflows, t)
            flows = flows + lflows
        net.run_until_done(flows)
        return [f.done_at for f in flows]

    def _on_flow_done(self, f: Flow) -> None:
        oid, dev, phase, purpose = f.tag
        self.fetched_bytes[phase][dev] += f.size
        if self.log_events:
            self.transfers.add(f.start_at, f.done_at, f.size, 1, dev, phase, purpose, (oid,))
        if purpose == PREFETCH and self.inflight.get(oid) is f:
            # a prefetched expert lands in the staging buffer; it enters the cache on first
            # use, as a demand fetch would have. (A late prefetch, one a lookup already waited
            # for, left ``inflight`` then: it is not staged again.)
            del self.inflight[oid]
            self.staged.add(oid)
            self.staged_bytes += f.size
            if self.staged_bytes > self.pf_peak_buffer:
                self.pf_peak_buffer = self.staged_bytes

    def close(self, t: float) -> None:
        """End of run: settle the network's accounting at ``t``."""
        self.net.close(t)

    @property
    def pf_wasted(self) -> int:
        """Prefetches never used (landed or still in flight at the end)."""
        return self.pf_issued - self.pf_useful
