"""Empty initial cache: the run starts cold (no expert in the cache region)."""
from __future__ import annotations

from ..base import WARMUP, WarmupPolicy


@WARMUP.register("empty")
class EmptyWarmup(WarmupPolicy):
    pass
