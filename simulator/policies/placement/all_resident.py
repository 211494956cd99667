"""Every expert pinned in the compute unit's own memory: the upper bound (no fetch ever).

The run fails with a clear error if the model's weights do not fit in the local tier.
"""
from __future__ import annotations

import numpy as np

from ..base import PLACEMENT, PlacementPolicy


@PLACEMENT.register("all_resident")
class AllResident(PlacementPolicy):
    def place(self) -> np.ndarray:
        return np.full(self.ctx.num_objects, self.ctx.system.local.index, dtype=np.int32)
