"""LFU expert cache, in-cache frequency, LRU among equal frequencies.

    on access(x):   if x cached: freq[x] += 1, x becomes the most recent of its frequency; hit
    on insert(x):   while used + size(x) > capacity:
                        evict the least-recently-promoted object of the lowest frequency
                    freq[x] = 1
    (frequency is forgotten on eviction)

This is exactly libCacheSim's LFU (frequency buckets, each a queue ordered by when objects
entered it; eviction from the head of the lowest bucket): tests compare hit counts on the
same streams and on hand-worked tie-breaking cases.
"""
from __future__ import annotations

from collections import OrderedDict

from ..base import CACHE, CachePolicy


@CACHE.register("lfu")
class LFU(CachePolicy):
    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self._freq: dict[int, int] = {}
        self._size: dict[int, float] = {}
        self._buckets: dict[int, OrderedDict[int, None]] = {}
        self._min = 0
        self.access = self._access

    def _unlink(self, oid: int, f: int) -> None:
        """Take ``oid`` out of frequency bucket ``f`` (dropping the bucket when empty)."""
        b = self._buckets[f]
        del b[oid]
        if not b:
            del self._buckets[f]
            if self._min == f:
                self._min = f + 1

    def _access(self, oid: int) -> bool:
        f = self._freq.get(oid)
        if f is None:
            return False
        self._unlink(oid, f)
        nb = self._buckets.get(f + 1)
        if nb is None:
            nb = self._buckets[f + 1] = OrderedDict()
        nb[oid] = None
        self._freq[oid] = f + 1
        return True

    def contains(self, oid: int) -> bool:
        return oid in self._freq

    def _evict_one(self) -> int:
        while self._min not in self._buckets:
            self._min += 1
        b = self._buckets[self._min]
        victim, _ = b.popitem(last=False)
        if not b:
            del self._buckets[self._min]
        del self._freq[victim]
        self.used_bytes -= self._size.pop(victim)
        return victim

    def insert(self, oid: int, size: float) -> list[int]:
        if size > self.capacity_bytes:
            return [oid]
        evicted = []
        while self.used_bytes + size > self.capacity_bytes:
            evicted.append(self._evict_one())
        self._freq[oid] = 1
        self._size[oid] = size
        self._buckets.setdefault(1, OrderedDict())[oid] = None
        self._min = 1
        self.used_bytes += size
        return evicted

    def remove(self, oid: int) -> bool:
        f = self._freq.pop(oid, None)
        if f is None:
            return False
        self._unlink(oid, f)
        self.used_bytes -= self._size.pop(oid)
        return True

    def resident(self):
        return list(self._freq)

