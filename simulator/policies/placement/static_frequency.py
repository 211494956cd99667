"""Static frequency-based placement: pin the most frequently used experts in local memory.

    count(x) = number of tokens routed to x in the profiling window
    sort objects by count (descending; ties by object id)
    pin objects in that order while their bytes fit in pinned_gb
    every other object lives in the backing tier (as in single_tier)

Profiling window: ``oracle`` counts the whole trace (what an offline profile of the same
workload would give); ``first_requests`` counts only the first ``profile_requests`` requests,
as a deployment would from a warm-up period (counting in placement/frequency.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...config.strict import field
from ...units import gb_to_bytes
from ..base import PLACEMENT, PlacementPolicy
from .frequency import activation_counts


@PLACEMENT.register("static_frequency")
class StaticFrequency(PlacementPolicy):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        pinned_gb: float = field(help="local-memory budget for pinned experts, GB", min=0.0)
        tier: Optional[str] = field(None, help="backing tier of unpinned experts; default: the "
                                               "first tier that is not the local one")
        profile: str = field("oracle", choices=("oracle", "first_requests"),
                             help="which part of the trace the frequencies come from")
        profile_requests: int = field(10, min=1, help="requests counted with first_requests")

    def frequencies(self) -> np.ndarray:
        return activation_counts(self.ctx, self.params.profile,
                                 profile_requests=self.params.profile_requests)

    def place(self) -> np.ndarray:
        ctx = self.ctx
        tier = self.params.tier or ctx.default_backing_tier()
        devs = ctx.tier_devices(tier, key="placement.tier")
        idx = np.array([d.index for d in devs], dtype=np.int32)
        home = idx[np.arange(ctx.num_objects) % idx.size]
        counts = self.frequencies()
        order = np.lexsort((np.arange(counts.size), -counts))
        sizes = ctx.object_bytes[order]
        fits = np.cumsum(sizes) <= gb_to_bytes(self.params.pinned_gb)
        home[order[fits]] = ctx.system.local.index
        return home
