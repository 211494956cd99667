"""MoE-Infinity request-level activation matching (Xue et al.; reference notes §4.3).

    every running request r keeps an L x E count matrix A_r (its expert activation matrix,
    EAM): A_r[j][e] = tokens of r that used e at layer j so far
    finished requests' matrices go into a store of ``capacity`` entries; when it is full
    the entry matched least often (ties: the oldest) is replaced
    at layer l of an iteration, per request r of the batch:
        sim(r, s)  = mean over j = 0..l of cos(A_r[j], S_s[j])    (rows L2-normalised;
                     A_r[j] includes this iteration's tokens up to the current layer)
        best       = argmax_s sim(r, s)          (counted as one match of s)
        p_r(e at j) = w_j * f_best[j][e],  w_j = 1 - (j - l) / (L + 1),   j = l+1 .. l+lookahead
                     f_best[j][e]: fraction of the best entry's tokens that used e at j
    p(e used at j) = 1 - prod_r (1 - p_r(e at j))^{n_r}   (n_r: r's tokens in the batch;
                                                            batched decode: per request, union)
    prefetch the experts with score > 0 that pass the gate (gate.py), at most top_n per
    target layer, all targets in descending score (MoE-Infinity's order)

Why: requests of one workload activate experts in recurring patterns that a single
request's early layers already reveal; matching whole-request matrices (rather than
per-token statistics) captures that with a bounded memory. MoE-Infinity's own score is
w_j times the row-normalised EAM; here the row is normalised to a per-token frequency so the
score reads as a probability for the gate, which preserves the order within a layer.

Deviation from the code. The notes read the code as filling the stored traces' past layers
(<= current) with 1e-9 before comparing, which would ignore the layers already observed;
this matches on the observed layers 0..l, as the paper describes.

A request finishes when its last trace row (``ctx.requests``: start + n_prefill + n_decode
- 1) has been processed through every layer; its matrix is stored when the next iteration
starts. (A new request id appearing is not used: with continuous batching a request can
still be running when others start.)

Information. At layer l only layers <= l of the current tokens are read; earlier iterations'
tokens are read when the next iteration starts. Cost per call: one (B, E) x (E, stored)
product for the new layer's cosines (the mean over layers is kept as a running sum per
iteration), an argmax, and the candidate selection.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ..base import PREFETCH
from .gate import Gate, GateParams, OnlinePrefetch


@PREFETCH.register("moe_infinity")
class MoEInfinityPrefetch(OnlinePrefetch):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        lookahead: int = field(1, min=1, help="target layers l+1 .. l+lookahead (MoE-Infinity "
                               "itself prefetches every future layer: lookahead = num_layers)")
        capacity: int = field(1000, min=1, help="stored request matrices (MoE-Infinity: 1000)")
        top_n: int = field(8, min=1, help="at most this many experts per target layer")
        min_prob: float = field(0.05, min=0.0, max=1.0, help="floor on the score for a prefetch "
                                "(the whole rule when gate.enabled is false)")
        gate: GateParams = field(default_factory=GateParams, help="cost/benefit gate (gate.py)")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        L, E = ctx.num_layers, ctx.num_experts
        self.L, self.E = L, E
        cap = params.capacity
        # stored matrices, layer-major so that one layer of every entry is contiguous
        self.unit = np.zeros((L, cap, E))        # rows L2-normalised
        self.frac = np.zeros((L, cap, E))        # rows / tokens (per-token frequency)
        self.matched = np.zeros(cap, dtype=np.int64)
        self.stamp = np.zeros(cap, dtype=np.int64)   # insertion order (ties of replacement)
        self.n_stored = 0
        self._inserted = 0
        # request of each trace row (index into ctx.requests) and each request's last row
        n_rows = ctx.trace.experts.shape[0]
        self.req_of = np.full(n_rows, -1, dtype=np.int64)
        self.last_row = np.zeros(len(ctx.requests), dtype=np.int64)
        for i, q in enumerate(ctx.requests):
            end = q.start + q.n_prefill + q.n_decode
            self.req_of[q.start:end] = i
            self.last_row[i] = end - 1
        self.running: dict[int, np.ndarray] = {}  # request index -> its counts (L, E)
        self.gate = Gate(params.gate, ctx, params.min_prob)
        self._w = 1.0 - np.arange(L + 1) / (L + 1)   # w by distance j - l
        self._last: np.ndarray | None = None
        self._maxl = -1

    # ------------------------------------------------------------------ store
    def _store(self, A: np.ndarray) -> None:
        if self.n_stored < self.params.capacity:
            i = self.n_stored
            self.n_stored += 1
        else:
            i = int(np.lexsort((self.stamp, self.matched))[0])
        tok = A.sum(axis=1, keepdims=True)
        nrm = np.sqrt((A * A).sum(axis=1, keepdims=True))
        self.unit[:, i] = A / np.where(nrm > 0, nrm, 1.0)
        # every token has k picks per layer: tokens = row sum / k
        k = self.ctx.trace.experts.shape[2]
        self.frac[:, i] = np.minimum(A * k / np.where(tok > 0, tok, 1.0), 1.0)
        self.matched[i] = 0
        self.stamp[i] = self._inserted
        self._inserted += 1

    # ------------------------------------------------------------------ learning
    def _commit(self) -> None:
        T, m = self._last, self._maxl + 1
        self._last, self._maxl = None, -1
        if T is None or m <= 0 or T.size == 0:
            return
        L, E = self.L, self.E
        X = self.ctx.trace.experts[T, :m].astype(np.int64)           # (n, m, k) observed
        for r, rows in zip(*self._groups(T)):
            A = self.running.get(r)
            if A is None:
                A = self.running[r] = np.zeros((L, E))
            x = X[rows]
            A[:m] += np.bincount((np.arange(m)[None, :, None] * E + x).ravel(),
                                 minlength=m * E).reshape(m, E)
            if m == L and self.last_row[r] in T[rows]:
                self._store(self.running.pop(r))

    def _groups(self, T: np.ndarray):
        """The batch's requests (indices into ctx.requests) and the positions of their rows."""
        req = self.req_of[T]
        if req.size == 1 or (req == req[0]).all():
            return [int(req[0])], [slice(None)]
        u, inv = np.unique(req, return_inverse=True)
        return u.tolist(), [np.flatnonzero(inv == i) for i in range(u.size)]

    def _begin(self, T: np.ndarray) -> None:
        reqs, rows = self._groups(T)
        self._reqs, self._rows = reqs, rows
        B = len(reqs)
        self._inv = np.zeros(T.size, dtype=np.int64)
        for b, rw in enumerate(rows):
            self._inv[rw] = b
        self._ntok = np.array([T[rw].size for rw in rows], dtype=np.float64)
        zero = np.zeros((self.L, self.E))
        self._base = np.stack([self.running.get(r, zero) for r in reqs])   # (B, L, E)
        self._sim = np.zeros((B, self.n_stored))
        self._single = B == 1 and T.size == 1             # batch-1 decode: the cheap path
        if self._single:
            self._row = int(T[0])
            self._base0 = self._base[0]
            self._sim0 = self._sim[0]                     # a view: _sim stays the state
        self._upto = -1                      # layers whose cosines are in _sim

    # ------------------------------------------------------------------ prediction
    def on_layer_start(self, phase: int, layer: int, tokens: np.ndarray) -> list[int]:
        self._observe(layer, tokens)
        ns = self.n_stored
        if ns == 0:
            return []
        ex = self.ctx.trace.experts
        single, unit = self._single, self.unit
        for j in range(self._upto + 1, layer + 1):        # normally just j = layer
            if single:                                    # one token: its k picks at j
                cnt = self._base0[j].copy()
                for e in ex[self._row, j].tolist():
                    cnt[e] += 1.0
                self._sim0 += (unit[j, :ns] @ cnt) * (1.0 / np.sqrt(cnt @ cnt))
            else:
                cnt = self._base[:, j, :].copy()          # (B, E)
                np.add.at(cnt, (self._inv[:, None], ex[tokens, j]), 1.0)
                cnt /= np.sqrt(np.einsum("be,be->b", cnt, cnt))[:, None]
                self._sim += cnt @ unit[j, :ns].T         # (B, ns)
            self._upto = j
        hi = min(self.L - 1, layer + self.params.lookahead)
        if layer >= hi:
            return []
        if single:
            b = int(self._sim0.argmax())                  # ties: the lower slot
            self.matched[b] += 1
            if hi == layer + 1:
                return self.gate.choose1(hi, self.frac[hi, b] * self._w[1], self.params.top_n)
            P = self.frac[layer + 1:hi + 1, b] * self._w[1:hi - layer + 1][:, None]   # (m, E)
        else:
            best = self._sim.argmax(axis=1)
            np.add.at(self.matched, best, 1)
            w = self._w[1:hi - layer + 1][:, None, None]  # (m, 1, 1)
            pr = w * self.frac[layer + 1:hi + 1, best]     # (m, B, E)
            P = 1.0 - np.prod((1.0 - pr) ** self._ntok[None, :, None], axis=1)
        return self.gate.choose(layer + 1, P, self.params.top_n, by_score=True)
