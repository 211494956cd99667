"""LRU expert cache (MoE-Infinity / EdgeMoE style baseline).

    on access(x):   if x cached: move x to the most-recent end; hit
    on insert(x):   while used + size(x) > capacity: evict the least-recent object
                    append x at the most-recent end

Objects are (layer, expert[, slice]) with their byte size; one cache shared by all layers.
Hit/miss counts equal libCacheSim's LRU on the same stream (tests/test_cache_vs_libcachesim.py).
"""
from __future__ import annotations

from collections import OrderedDict

from ..base import CACHE, CachePolicy


@CACHE.register("lru")
class LRU(CachePolicy):
    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self._d: OrderedDict[int, float] = OrderedDict()
        self.access = self._access          # bound once: the engine calls it per lookup

    def _access(self, oid: int) -> bool:
        d = self._d
        if oid in d:
            d.move_to_end(oid)
            return True
        return False

    def contains(self, oid: int) -> bool:
        return oid in self._d

    def insert(self, oid: int, size: float) -> list[int]:
        if size > self.capacity_bytes:
            return [oid]                    # cannot hold it at all: used once, not kept
        d, cap, used = self._d, self.capacity_bytes, self.used_bytes
        evicted = []
        while used + size > cap:
            victim, vsize = d.popitem(last=False)
            used -= vsize
            evicted.append(victim)
        d[oid] = size
        self.used_bytes = used + size
        return evicted

    def remove(self, oid: int) -> bool:
        size = self._d.pop(oid, None)
        if size is None:
            return False
        self.used_bytes -= size
        return True

    def resident(self):
        return list(self._d)

