"""Full precision: one object per expert, at the model's precision (the default)."""
from __future__ import annotations

from ..base import MIXED_PRECISION, MixedPrecisionPolicy


@MIXED_PRECISION.register("full")
class Full(MixedPrecisionPolicy):
    active = False
