"""Every expert lives in one tier (host DRAM, CXL, NVMe, Flash): the offload baseline.

    home(x) = tier's device (x mod n_devices) for a tier of n devices (round-robin interleave)

With ``cache: none`` this is DeepSpeed-MoE-style CPU offload: each needed expert is copied
to the compute unit on demand.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...config.strict import field
from ..base import PLACEMENT, PlacementPolicy


@PLACEMENT.register("single_tier")
class SingleTier(PlacementPolicy):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        tier: Optional[str] = field(None, help="tier holding every expert; default: the first "
                                               "tier that is not the local one")

    def place(self) -> np.ndarray:
        ctx = self.ctx
        tier = self.params.tier or ctx.default_backing_tier()
        devs = ctx.tier_devices(tier, key="placement.tier")
        idx = np.array([d.index for d in devs], dtype=np.int32)
        return idx[np.arange(ctx.num_objects) % idx.size]
