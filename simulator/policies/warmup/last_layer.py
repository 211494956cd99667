"""Last-layer warm-up (a SliceMoE baseline): at each prefill -> decode transition the cache
holds only the objects of the last ``layers`` MoE layers that were in DRAM during the
request's prefill (all their slices), in the cache's own order.

Retention rule (empty.py): candidates are the retention set, objects resident at the
transition ∪ objects the prefill looked up or loaded; keeping them costs no transfer, and
the choice is made with the whole prompt seen (the idealisation shared with pcw). Order:
objects no longer resident (evicted during the prefill, so older than every resident one)
first in ascending id, then the resident ones in their current recency; the list is trimmed
to the capacity by dropping the oldest first.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config.strict import field
from ..base import WARMUP
from .empty import StateWarmup


@WARMUP.register("last_layer")
class LastLayerWarmup(StateWarmup):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        layers: int = field(1, min=1, help="keep the objects of this many last MoE layers")

    def choose(self, request_id, cache, resident, evicted):
        ctx = self.ctx
        first = ctx.num_layers - self.params.layers
        layer_of = ctx.layer_of
        ordered = [o for o in evicted + resident if layer_of(o) >= first]
        sizes, cap = ctx.object_bytes, cache.capacity_bytes
        used, start = 0.0, len(ordered)
        while start > 0 and used + float(sizes[ordered[start - 1]]) <= cap:
            start -= 1                       # the longest most-recent suffix that fits
            used += float(sizes[ordered[start]])
        return ordered[start:]
