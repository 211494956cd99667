"""Oracle next-layer prefetch: the upper bound of layer-ahead prefetching.

    at layer l's router decision of an iteration (tokens T):
        prefetch the distinct experts that layers l+1 .. l+lookahead of T will use,
        read from the trace (so the prediction is never wrong)

Real predictors (Pre-gated MoE, AdapMoE: apply the next layer's gate to the current hidden
state) can at best match it; the gap between this and ``none`` bounds what layer-ahead
prefetching can buy on a given system. Prefetches share links with demand fetches and
land in the expert cache (with ``cache: none``, in a one-use staging buffer).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ..base import PREFETCH, PrefetchPolicy


@PREFETCH.register("oracle_next_layer")
class OracleNextLayer(PrefetchPolicy):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        lookahead: int = field(1, min=1, help="how many layers ahead to prefetch")

    def on_layer_start(self, phase: int, layer: int, tokens: np.ndarray) -> list[int]:
        ctx = self.ctx
        L, E, S = ctx.num_layers, ctx.num_experts, ctx.slices_per_expert
        out: list[int] = []
        for target in range(layer + 1, min(L, layer + 1 + self.params.lookahead)):
            ex = np.unique(ctx.trace.experts[tokens, target])
            out.extend(((ex.astype(np.int64) + target * E) * S).tolist())
        return out
