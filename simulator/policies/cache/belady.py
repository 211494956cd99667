"""Belady's MIN: the offline optimum of demand paging, a bound no online policy can beat.

    on access(x) at stream position i:   hit iff x cached; next(x) := next position of x after i
    on insert(x):   while used + size(x) > capacity:
                        evict the cached object whose next use is furthest in the future
                    keep x (demand paging: the missed expert must be brought in)

The future comes from the run's canonical access stream (engine/stream.py: requests in
arrival order, prefill layer by layer, decode token by token), which is exactly the order
the engine looks objects up in when requests run one at a time. When a run departs from it
(batching several requests, re-routing), the policy uses the next occurrence of the object
at or after its current stream position and counts the departure in ``resyncs``.
Equals libCacheSim's Belady on the same stream (tests/test_cache_vs_libcachesim.py).
"""
from __future__ import annotations

import heapq
from bisect import bisect_left

import numpy as np

from ..base import CACHE, CachePolicy

NEVER = np.iinfo(np.int64).max


def next_use(stream: np.ndarray) -> np.ndarray:
    """nxt[i] = smallest j > i with stream[j] == stream[i], or NEVER."""
    n = stream.size
    order = np.argsort(stream, kind="stable")
    nxt = np.full(n, NEVER, dtype=np.int64)
    same = stream[order[1:]] == stream[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


@CACHE.register("belady")
class Belady(CachePolicy):
    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self._stream = ctx.cache_stream()
        self._nxt = next_use(self._stream)
        # per-access reads through memoryviews: Python ints without numpy scalar overhead
        self._stream_at = memoryview(np.ascontiguousarray(self._stream, dtype=np.int64))
        self._nxt_at = memoryview(self._nxt)
        self._n = int(self._stream.size)
        self._pos = 0
        self._next: dict[int, int] = {}        # resident oid -> its next use
        self._size: dict[int, float] = {}
        self._heap: list[tuple[int, int]] = []  # (-next use, oid), lazily invalidated
        self._pending: dict[int, int] = {}     # missed oid -> its next use, until inserted
        self._occ: dict[int, list[int]] | None = None
        self.resyncs = 0

    def _resync(self, oid: int, pos: int) -> int:
        """The next occurrence of ``oid`` at or after ``pos`` (the run left the stream)."""
        self.resyncs += 1
        if self._occ is None:
            order = np.argsort(self._stream, kind="stable")
            vals = self._stream[order]
            cuts = np.flatnonzero(np.diff(vals)) + 1
            self._occ = {int(v[0]): idx.tolist() for v, idx in
                         zip(np.split(vals, cuts), np.split(order, cuts)) if v.size}
        occ = self._occ.get(oid)
        if not occ:
            return -1
        j = bisect_left(occ, pos)
        return occ[j] if j < len(occ) else -1

    def access(self, oid: int) -> bool:
        pos = self._pos
        if pos < self._n and self._stream_at[pos] == oid:     # on the stream (the rule)
            nxt = self._nxt_at[pos]
            self._pos = pos + 1
        else:
            i = self._resync(oid, pos)
            nxt = self._nxt_at[i] if i >= 0 else NEVER
            if i == pos:
                self._pos = pos + 1
        if oid in self._next:
            self._next[oid] = nxt
            heapq.heappush(self._heap, (-nxt, oid))
            return True
        self._pending[oid] = nxt
        return False

    def contains(self, oid: int) -> bool:
        return oid in self._next

    def insert(self, oid: int, size: float) -> list[int]:
        if size > self.capacity_bytes:
            return [oid]
        evicted = []
        while self.used_bytes + size > self.capacity_bytes:
            neg, victim = heapq.heappop(self._heap)
            if self._next.get(victim) != -neg:
                continue                         # stale heap entry
            del self._next[victim]
            self.used_bytes -= self._size.pop(victim)
            evicted.append(victim)
        nxt = self._pending.pop(oid, NEVER)
        self._next[oid] = nxt
        self._size[oid] = size
        heapq.heappush(self._heap, (-nxt, oid))
        self.used_bytes += size
        return evicted

    def remove(self, oid: int) -> bool:
        if oid not in self._next:
            return False
        del self._next[oid]
        self.used_bytes -= self._size.pop(oid)
        return True

    def resident(self):
        return list(self._next)
