"""No expert cache: every access not pinned by placement is fetched on demand.

The CPU-offload baseline (DeepSpeed-MoE style) with placement ``single_tier``: an expert is
copied into a staging buffer, used once and dropped, so the cache never hits.
"""
from __future__ import annotations

from ..base import CACHE, CachePolicy


@CACHE.register("none")
class NoCache(CachePolicy):
    def access(self, oid: int) -> bool:
        return False

    def contains(self, oid: int) -> bool:
        return False

    def insert(self, oid: int, size: float) -> list[int]:
        return [oid]

    def remove(self, oid: int) -> bool:
        return False

    def resident(self):
        return []
