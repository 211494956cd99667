"""Empty cache: the run starts cold (no expert in the cache region); with ``clear_at_decode``
the cache is also emptied at every request's prefill -> decode transition (SliceMoE's
"Empty" initial decode state).

Decode-start warm-ups. SliceMoE (arXiv 2512.12990) runs one request at a time on a phone, so
a request's decode starts right after its prefill; its Predictive Cache Warmup (pcw.py) and
the baselines (``empty`` with ``clear_at_decode``, ``last_layer``, ``random``) set the cache
content at that transition. One rule keeps them comparable: the decode-start state may hold
only objects that were in DRAM during that request's prefill, the *retention set* = objects
resident in the cache at the transition ∪ objects the prefill looked up or loaded
(``hierarchy.take_prefill_seen()``). Keeping any of them costs no transfer: they passed
through DRAM while prefill streamed them. The idealisation: the choice across layers is made
with the whole prompt's statistics, as if the retention decision for an early layer could
wait until the prompt's last layer was done. Pinned objects are never cache content and are
skipped. :class:`StateWarmup` below is the shared machinery (retention set, the state change,
the ``warmup.*`` counters); the state change removes every resident object not kept, then
re-inserts the kept ones in the chosen order (for LRU-type caches insertion order is recency:
the first inserted is evicted first) and checks that nothing was evicted and the capacity
holds. Other caches (LFU, Belady) get the same content but lose their own per-object state
(frequencies, next uses) for the re-inserted objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config.strict import field
from ...errors import SimulationError
from ..base import WARMUP, CachePolicy, WarmupPolicy

# an object that fits by the exact sum but not by the cache's own running float sum is
# dropped only if the excess is below this fraction of the capacity (rounding); more is a bug
_ROUNDING = 1e-9


class StateWarmup(WarmupPolicy):
    """Base of the decode-start warm-ups: subclasses implement :meth:`choose`."""

    tracks_prefill: ClassVar[bool] = True

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.transitions = 0
        self.kept_objects = 0
        self.kept_bytes = 0.0

    # ------------------------------------------------------------------ the hook
    def on_prefill_end(self, request_id: int, cache: CachePolicy) -> None:
        seen = self.ctx.hierarchy.take_prefill_seen()      # cleared per request, always
        resident, evicted = self.retention(cache, seen)
        kept = self.choose(request_id, cache, resident, evicted)
        self.apply(cache, kept)

    def retention(self, cache: CachePolicy, seen) -> tuple[list[int], list[int]]:
        """The retention set as (resident objects in the cache's order, least recent first;
        objects the prefill looked up or loaded that are no longer resident, ascending id).
        Ascending id is the engine's prefill lookup order (layer by layer, ascending ids
        within a layer) for unrouted full-precision runs; the hierarchy records a set, so
        that order is the best one available for objects already gone. Pinned excluded."""
        pinned = self.ctx.pinned
        resident = [int(o) for o in cache.resident()]
        res_set = set(resident)
        if pinned is not None:
            resident = [o for o in resident if not pinned[o]]
        gone = sorted(int(o) for o in seen if o not in res_set
                      and (pinned is None or not pinned[o]))
        return resident, gone

    def choose(self, request_id: int, cache: CachePolicy, resident: list[int],
               evicted: list[int]) -> list[int]:
        """The objects the decode starts with, in insertion order (first = evicted first),
        drawn from ``resident`` + ``evicted`` and fitting ``cache.capacity_bytes``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the state change
    def apply(self, cache: CachePolicy, kept: list[int]) -> None:
        """Make ``kept`` the cache content, inserted in that order."""
        sizes = self.ctx.object_bytes
        cap = cache.capacity_bytes
        for oid in list(cache.resident()):
            cache.remove(oid)
        placed = 0
        placed_bytes = 0.0
        for oid in kept:
            size = float(sizes[oid])
            if cache.used_bytes + size > cap:
                if cache.used_bytes + size - cap <= _ROUNDING * cap:
                    continue                     # fits only up to float rounding
                raise SimulationError(
                    f"warm-up '{self.registry_name}' chose {len(kept)} objects that do not fit "
                    f"the cache ({cache.used_bytes + size:.6g} B > {cap:.6g} B)")
            evicted = cache.insert(oid, size)
            if evicted:
                raise SimulationError(f"warm-up '{self.registry_name}': inserting object {oid} "
                                      f"evicted {evicted}")
            placed += 1
            placed_bytes += size
        if cache.used_bytes > cap:
            raise SimulationError(f"warm-up '{self.registry_name}' left {cache.used_bytes:.6g} B "
                                  f"in a {cap:.6g} B cache")
        self.transitions += 1
        self.kept_objects += placed
        self.kept_bytes += placed_bytes

    def summary(self) -> dict[str, float]:
        return {"warmup.transitions": self.transitions,
                "warmup.kept_objects": self.kept_objects,
                "warmup.kept_bytes": self.kept_bytes}


@WARMUP.register("empty")
class EmptyWarmup(WarmupPolicy):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        clear_at_decode: bool = field(False, help="also empty the cache at every request's "
                                                  "prefill -> decode transition (false: only "
                                                  "the run starts cold)")

    def __new__(cls, params=None, ctx=None):
        # the clearing variant is its own class, so that tools that ask whether a warm-up
        # edits the cache (type(warmup).on_prefill_end, simulator/mrc/lookups.py) see it does
        if cls is EmptyWarmup and params is not None and params.clear_at_decode:
            cls = _ClearingEmpty
        return super().__new__(cls)


class _ClearingEmpty(StateWarmup, EmptyWarmup):
    """``empty`` with ``clear_at_decode: true``."""

    tracks_prefill: ClassVar[bool] = False     # nothing is kept: no need to record prefill

    def on_prefill_end(self, request_id: int, cache: CachePolicy) -> None:
        self.apply(cache, [])

    def choose(self, request_id, cache, resident, evicted):
        return []

