"""Cache-Prior routing (Skliar et al., arXiv 2412.00099 §2.1 of shared/reference/policies.md).

Algorithm, per decode token at MoE layer l, with router logits z (E,), cached set C_l, top-k
k and protected ranks J:

* Δ_l: running average of the token's logit range max(z) - min(z), kept per (request, layer):
  seeded with the request's first range at that layer, then Δ ← ema·Δ + (1 - ema)·range
  (updated before use). Reset per request (= per generation): a request's first decode
  token starts a new tracker.
* m_i = 1 if expert i is resident (pinned, cached or staged: ``hierarchy.resident``) or among
  the router's own top-J, else 0. Protecting the top-J means a cached expert can never push
  out the router's J best.
* z̃ = z + λ·Δ_l·m; the chosen set is the top-k of z̃. z̃ only ranks: the combine weights are
  the original probabilities restricted to the chosen set, renormalised only if the model
  renormalises its top-k (``renormalize``; they feed the accuracy proxy, not the timing).
* Prefill is vanilla (the trace's experts).

Why: a cached expert within λ·Δ of the k-th logit replaces a missed one, trading a small,
bounded shift of gate mass (``routing.mass_moved``) for a hit. λ = 0 is exactly the trace's
routing. Defaults λ = 0.2, J = 2, ema 0.99 are those of malmong/CECAR (`_select_mocce`), the
public re-implementation that matches the paper's description.

Ranking details (ours): ties in z̃ go to the router's own order; an outsider's logit is never
ranked above the recorded top-k's lowest (the recorded experts *are* the router's top-k),
so boost 0 reproduces the trace even where stored router_probs disagree by rounding.
Without ``router_probs`` in the trace the logits come from the completion in
``distribution.py`` (labelled run; see there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ..base import ROUTING
from .cache_aware import CacheAwareRouting
from .distribution import logits


@ROUTING.register("cache_prior")
class CachePrior(CacheAwareRouting):

    @dataclass(frozen=True, kw_only=True)
    class Params(CacheAwareRouting.Params):
        boost: float = field(0.2, min=0.0, help="λ: logit bonus of resident experts, in units "
                                                "of the running logit range")
        ema: float = field(0.99, min=0.0, max=1.0, help="weight of the old value in the "
                                                        "running logit range Δ")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self._delta: dict[int, np.ndarray] = {}        # request id -> Δ per layer (nan = unset)
        self._rid = ctx.trace.request_id

    def _choose(self, rows, layer, p, order, resident):
        n, k, J = p.shape[0], self.k, self.params.protect
        z = logits(p)
        ar = np.arange(n)[:, None]
        rng = z.max(axis=1) - z.min(axis=1)
        delta = np.empty(n)
        a = self.params.ema
        for i, r in enumerate(self._rid[rows].tolist()):
            d = self._delta.get(r)
            if d is None:
                d = self._delta[r] = np.full(self.ctx.num_layers, np.nan)
            v = d[layer]
            d[layer] = v = rng[i] if v != v else a * v + (1.0 - a) * rng[i]
            delta[i] = v
        # z and the bonus mask in vanilla order (column j = the row's j-th ranked expert)
        zo = z[ar, order]
        zo[:, k:] = np.minimum(zo[:, k:], zo[:, :k].min(axis=1, keepdims=True))
        m = resident[order]
        m[:, :J] = True
        zo += (self.params.boost * delta)[:, None] * m
        pick = np.argsort(-zo, axis=1, kind="stable")[:, :k]   # ties: vanilla order
        return order[ar, pick]

    def on_request_end(self, rid: int) -> None:       # not called by the engine today
        self._delta.pop(rid, None)
