"""Oracle next-layer prefetch: the upper bound of layer-ahead prefetching.

    at layer l's router decision of an iteration (tokens T):
        prefetch the distinct experts that layers l+1 .. l+lookahead of T will use,
        read from the trace (so the prediction is never wrong)

Real predictors (Pre-gated MoE, AdapMoE: apply the next layer's gate to the current hidden
state) can at best match it; the gap between this and ``none`` bounds what layer-ahead
prefetching can buy on a given system. Prefetches share links with demand fetches and
land in the expert cache (with ``cache: none``, in a one-use staging buffer).

Cost. The engine calls :meth:`on_layer_start` once per MoE layer with the same ``tokens``
array for the whole iteration (1-8 rows in decode). The distinct experts of every layer of
those tokens are computed once, in one vectorised pass, when a new array arrives; each call
is then a slice of one Python list (ascending expert id within a target layer, target
layers in order).
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

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        # The iteration whose oids are cached. Holding a reference to its tokens array keeps
        # the identity test sound: a new array can never reuse the id of one still alive.
        self._last: np.ndarray | None = None
        self._oids: list[int] = []        # distinct (layer, expert) oids of _last, ascending
        self._cut: list[int] = []         # _oids[_cut[l]:_cut[l + 1]] = layer l's
        self._shape = None                # (L, lookahead, layer bases, cut points), on first use

    def _build(self, tokens: np.ndarray) -> None:
        ctx = self.ctx
        if self._shape is None:
            L, E = ctx.num_layers, ctx.num_experts
            self._shape = (L, self.params.lookahead, np.arange(L, dtype=np.int64)[:, None] * E,
                           np.arange(L + 1, dtype=np.int64) * E)
        L, _, base, cuts = self._shape
        used = np.zeros(cuts[-1], dtype=bool)
        used[(base + ctx.trace.experts[tokens]).ravel()] = True   # (n, L, k) -> layer*E + expert
        nz = np.flatnonzero(used)                                  # ascending
        S = ctx.slices_per_expert
        self._oids = (nz * S if S != 1 else nz).tolist()
        self._cut = np.searchsorted(nz, cuts).tolist()
        self._last = tokens

    def on_layer_start(self, phase: int, layer: int, tokens: np.ndarray) -> list[int]:
        if tokens is not self._last or layer == 0:
            self._build(tokens)
        L, lookahead = self._shape[0], self._shape[1]
        lo = layer + 1
        if lo >= L:
            return []
        hi = lo + lookahead
        cut = self._cut
        return self._oids[cut[lo]:cut[hi if hi < L else L]]
