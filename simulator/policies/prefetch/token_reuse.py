"""Token-reuse prefetch: a token tends to use the experts its predecessor used at the same layer.

    at layer l of an iteration, for each token t of the batch whose previous token t-1
    belongs to the same request and was processed in an earlier iteration:
        t is predicted to use, at each target layer j = l+1 .. l+lookahead, the experts
        t-1 used at j, each with probability rho_j
    rho_j  = (reused_j + prior * k / E) / (total_j + prior)     learned online: reused_j of
             total_j previous-token experts (k per token) were used again by the next token
             at layer j (prior mean k / E: what a random router would reuse)
    p(e used at j) = 1 - (1 - rho_j)^c_j(e)     c_j(e): tokens of the batch whose
                                                predecessor used e at j
    prefetch per target layer what passes the gate (gate.py), at most top_n, descending p

Why: decode tokens of one sequence reuse experts (temporal locality, the effect that makes
an LRU expert cache work at all); this predictor turns it into prefetches without any model
state, and rho_j measures per layer how strong the effect is on the trace being replayed.

Tokens with no usable predecessor predict nothing: the first token of a request, and every
prompt token of a prefill iteration (its predecessor is in the same iteration, so layers > l
of it are not decided yet). Decode-only requests' first tokens likewise.

Information. The predecessor's experts are read only once its iteration is over (all its
layers decided); the current tokens' experts are read at commit time, after the iteration
ran all its layers. The counts of an iteration are committed when the next one starts
(rho_j of this iteration is needed only by later iterations), so learning is online.
Cost: the per-layer candidate lists of an iteration are built once, in one vectorised pass
when the iteration starts; each call concatenates the lists of its target layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ..base import PREFETCH
from .gate import Gate, GateParams, OnlinePrefetch


@PREFETCH.register("token_reuse")
class TokenReusePrefetch(OnlinePrefetch):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        lookahead: int = field(1, min=1, help="target layers l+1 .. l+lookahead")
        top_n: int = field(8, min=1, help="at most this many experts per target layer")
        min_prob: float = field(0.05, min=0.0, max=1.0, help="floor on p(used) for a prefetch "
                                "(the whole rule when gate.enabled is false)")
        prior: float = field(1.0, min=0.0, help="pseudo-count of the reuse rate's prior (mean k/E)")
        gate: GateParams = field(default_factory=GateParams, help="cost/benefit gate (gate.py)")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        L, E = ctx.num_layers, ctx.num_experts
        self.L, self.E, self.k = L, E, ctx.trace.experts.shape[2]
        self.reused = np.zeros(L)
        self.total = np.zeros(L)
        self.seen_upto = np.full(ctx.trace.experts.shape[0], -1, dtype=np.int16)
        self.gate = Gate(params.gate, ctx, params.min_prob)
        self._last: np.ndarray | None = None
        self._maxl = -1
        self._lists: list[list[int]] = [[] for _ in range(L)]

    def rho(self) -> np.ndarray:
        a = self.params.prior
        den = self.total + a
        return np.where(den > 0, (self.reused + a * self.k / self.E) / np.where(den > 0, den, 1.0), 0.0)

    def _pred(self, T: np.ndarray):
        """(rows of T with a usable predecessor, their predecessors, how deep each was seen)."""
        rid = self.ctx.trace.request_id
        prev = T - 1
        ok = prev >= 0
        ok[ok] &= rid[prev[ok]] == rid[T[ok]]
        ok[ok] &= self.seen_upto[prev[ok]] >= 0
        return T[ok], prev[ok], self.seen_upto[prev[ok]]

    # ------------------------------------------------------------------ learning
    def _commit(self) -> None:
        T, m = self._last, self._maxl + 1
        self._last, self._maxl = None, -1
        if T is None or m <= 0 or T.size == 0:
            return
        cur, prev, depth = self._pred(T)
        if cur.size:
            ex = self.ctx.trace.experts
            A = ex[cur, :m].astype(np.int64)                      # (n, m, k) observed
            B = ex[prev, :m].astype(np.int64)                     # predecessors (done)
            hit = (B[:, :, :, None] == A[:, :, None, :]).any(axis=3).sum(axis=2)   # (n, m)
            valid = np.arange(m)[None, :] <= depth[:, None]
            self.reused[:m] += (hit * valid).sum(axis=0)
            self.total[:m] += valid.sum(axis=0) * self.k
        np.maximum.at(self.seen_upto, T, m - 1)

    def _begin(self, T: np.ndarray) -> None:
        """Candidate lists of every target layer for this iteration's tokens."""
        L, E = self.L, self.E
        self._lists = [[] for _ in range(L)]
        cur, prev, depth = self._pred(T)
        if cur.size == 0:
            return
        B = self.ctx.trace.experts[prev].astype(np.int64)        # (n, L, k), earlier tokens
        lay = np.broadcast_to(np.arange(L)[None, :, None], B.shape)
        use = lay <= depth[:, None, None]
        c = np.bincount((lay * E + B)[use], minlength=L * E).reshape(L, E)
        P = np.where(c > 0, 1.0 - (1.0 - self.rho()[:, None]) ** c, 0.0)
        rows = np.flatnonzero((P > self.gate.thr).any(axis=1))
        for j in rows.tolist():
            self._lists[j] = self.gate.choose(j, P[j], self.params.top_n)

    # ------------------------------------------------------------------ prediction
    def on_layer_start(self, phase: int, layer: int, tokens: np.ndarray) -> list[int]:
        self._observe(layer, tokens)
        hi = min(self.L - 1, layer + self.params.lookahead)
        if hi == layer + 1:
            return list(self._lists[hi])
        out: list[int] = []
        for j in range(layer + 1, hi + 1):
            out.extend(self._lists[j])
        return out
