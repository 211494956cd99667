"""No prefetching: experts are fetched only when a layer needs them (the baseline)."""
from __future__ import annotations

from ..base import PREFETCH, PrefetchPolicy


@PREFETCH.register("none")
class NoPrefetch(PrefetchPolicy):
    active = False
