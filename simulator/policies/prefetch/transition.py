"""Layer-to-layer transition prefetch: online statistics of which expert follows which.

    counts C[l][e][e'] += 1 whenever a token chose e at layer l and e' at layer l+1
    N[l][e]             = tokens that chose e at layer l (and whose layer l+1 was seen)
    at layer l of an iteration (tokens T, their experts X_t at l, just decided):
        p(e' | e)   = (C[l][e][e'] + prior) / (N[l][e] + prior * E / k)
                      (rows with N[l][e] = 0: the marginal frequency of e' at layer l+1
                      so far, the fraction of tokens that used it, smoothed alike as
                      (M + prior k / E) / (tokens + prior); nothing before any data)
                      With prior > 0 every p stays below 1.
        p_t(e')     = mean over e in X_t of p(e' | e)        (each token's k picks)
        p(e' used)  = 1 - prod_t (1 - p_t(e'))               (any token of the batch)
        prefetch, per target layer, the experts whose p passes the gate (gate.py), at most
        top_n, in descending p

Why: the router of layer l+1 reads the hidden state layer l produced, and the experts of
consecutive layers are strongly correlated (the observation behind Pre-gated MoE and
AdapMoE's next-gate speculation); counting the pairs is the cheapest predictor that uses it,
needs no model weights and learns the trace's correlation as it goes.

Lookahead > 1 chains the one-step matrices (a Markov chain over layers): the expected pick
indicator of layer j+1 is p_t^(j+1) = p_t^(j) . P_j / k, where P_j is the (E, E) matrix of
p(e' | e) for layers j -> j+1 (rows sum to k, so p_t^(j) / k is a distribution over a pick).

Information. At layer l only layers <= l of the current tokens are read. The counts of an
iteration are committed when the next one starts: the pair (j, j+1) of this iteration is
first needed at layer j of a later iteration, so this is exactly online learning.
Cost: the smoothed conditionals are kept as an (L-1, E, E) array whose rows are refreshed
when an iteration's counts touch them; a call sums the k rows of its token (one-token
iterations: k row additions and one selection) or, for a batch, O(n k E) numpy work.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ..base import PREFETCH
from .gate import Gate, GateParams, OnlinePrefetch


@PREFETCH.register("transition")
class TransitionPrefetch(OnlinePrefetch):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        lookahead: int = field(1, min=1, help="target layers l+1 .. l+lookahead (chained transitions)")
        top_n: int = field(8, min=1, help="at most this many experts per target layer")
        min_prob: float = field(0.05, min=0.0, max=1.0, help="floor on p(used) for a prefetch "
                                "(the whole rule when gate.enabled is false)")
        prior: float = field(1.0, min=0.0, help="Laplace pseudo-count per (e, e') pair")
        gate: GateParams = field(default_factory=GateParams, help="cost/benefit gate (gate.py)")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        L, E = ctx.num_layers, ctx.num_experts
        self.L, self.E, self.k = L, E, ctx.trace.experts.shape[2]
        Lp = max(L - 1, 1)
        self.C = np.zeros((Lp, E, E))        # pair counts (l, l+1)
        self.N = np.zeros((Lp, E))           # tokens with pick e at l whose l+1 was seen
        self.P = np.zeros((Lp, E, E))        # smoothed p(e' | e), valid where N > 0
        self.M = np.zeros((L, E))            # marginal pick counts per layer
        self.seen = np.zeros(L)              # tokens seen per layer
        self.gate = Gate(params.gate, ctx, params.min_prob)
        self._last: np.ndarray | None = None  # rows of the running iteration
        self._maxl = -1                       # deepest layer observed of it
        self._full: dict[int, np.ndarray] = {}   # full matrices (with fallback rows) this iteration
        self._ready = [False] * Lp            # every source expert of the pair has data
        self._row = -1                        # the iteration's row when it has one token

    # ------------------------------------------------------------------ learning
    def _begin(self, tokens: np.ndarray) -> None:
        self._row = int(tokens[0]) if tokens.size == 1 else -1

    def _commit(self) -> None:
        """Count the finished iteration's observed layers 0..maxl; refresh the touched rows
        of the smoothed conditionals."""
        T, m = self._last, self._maxl + 1
        self._last, self._maxl, self._full = None, -1, {}
        if T is None or m <= 0 or T.size == 0:
            return
        E, k, a = self.E, self.k, self.params.prior
        X = self.ctx.trace.experts[T, :m].astype(np.int64)          # (n, m, k), all observed
        n = X.shape[0]
        self.M[:m] += np.bincount((np.arange(m)[None, :, None] * E + X).ravel(),
                                  minlength=m * E).reshape(m, E)
        self.seen[:m] += n
        if m >= 2:
            src, dst = X[:, :-1, :], X[:, 1:, :]                     # (n, m-1, k)
            rows = np.arange(m - 1)[None, :, None] * E + src         # (layer, e) row ids
            idx = rows[:, :, :, None] * E + dst[:, :, None, :]
            np.add.at(self.C.reshape(-1), idx.ravel(), 1.0)
            np.add.at(self.N.reshape(-1), rows.ravel(), 1.0)
            touched = np.unique(rows)
            C2, P2 = self.C.reshape(-1, E), self.P.reshape(-1, E)
            P2[touched] = (C2[touched] + a) / (self.N.reshape(-1)[touched] + a * E / k)[:, None]
            self._ready = self.N.all(axis=1).tolist()

    def _marginal(self, l: int) -> np.ndarray:
        """Fraction of tokens that used each expert at layer l so far, smoothed the same way
        ((M + prior k / E) / (tokens + prior)); zeros before any token was seen."""
        s, a = self.seen[l], self.params.prior
        return (self.M[l] + a * self.k / self.E) / (s + a) if s > 0 else np.zeros(self.E)

    def _cond(self, l: int) -> np.ndarray:
        """(E, E) p(e' at l+1 | e at l) with the marginal of l+1 for rows without data."""
        P = self._full.get(l)
        if P is None:
            P = self.P[l].copy()
            empty = self.N[l] == 0
            if empty.any():
                P[empty] = self._marginal(l + 1)
            self._full[l] = P
        return P

    # ------------------------------------------------------------------ prediction
    def on_layer_start(self, phase: int, layer: int, tokens: np.ndarray) -> list[int]:
        self._observe(layer, tokens)
        hi = layer + self.params.lookahead
        if hi > self.L - 1:
            hi = self.L - 1
        if layer >= hi:
            return []
        Pl = self.P[layer] if self._ready[layer] else self._cond(layer)
        if self._row >= 0 and hi == layer + 1:                        # one token, one step
            x = self.ctx.trace.experts[self._row, layer].tolist()     # its k picks: decided now
            p = Pl[x[0]]
            for e in x[1:]:
                p = p + Pl[e]
            return self.gate.choose1(hi, p * (1.0 / self.k), self.params.top_n)
        X = self.ctx.trace.experts[tokens, layer]                     # (n, k): decided now
        pt = Pl[X].sum(axis=1) * (1.0 / self.k)                       # (n, E): mean over picks
        rows = [pt]
        for j in range(layer + 1, hi):
            pt = pt @ self._cond(j) * (1.0 / self.k)
            rows.append(pt)
        if pt.shape[0] == 1:
            P = np.concatenate(rows) if len(rows) > 1 else rows[0]
        else:
            P = np.stack([1.0 - np.prod(1.0 - np.minimum(r, 1.0), axis=0) for r in rows])
        return self.gate.choose(layer + 1, P, self.params.top_n)
