"""Cumsum (cumulative probability threshold) routing: cached experts may replace non-cached
ones inside the router's top-τ probability mass.

UNVERIFIED reconstruction (shared/reference/policies.md §2.2): the paper (arXiv 2412.00099)
names the method but its definition could not be read; this is our reading of the name and of
how the paper frames the family. Confirm against §3–4 of arXiv 2412.00099v2 before relying on it.

Per decode token at a layer, with the experts in the router's own order and p their router
probabilities:

* the candidate set A is the smallest prefix of that order whose cumulative p reaches τ
  (``mass``, top-p style), and never fewer than k experts;
* the top-J (``protect``) are always kept; the other k - J slots go first to resident experts
  (pinned, cached or staged) in A, best rank first, then to the best-ranked non-resident ones;
* the chosen set is returned in the router's order; combine weights are the original
  probabilities restricted to it (renormalised only if the model renormalises top-k).

A small τ (A = the top-k) is vanilla top-k. Why: the tolerance adapts per token: a confident
router (mass concentrated in few experts) allows no substitution, a flat one allows many.
Decode only; prefill is vanilla.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ...errors import ConfigError
from ..base import ROUTING
from .cache_aware import CacheAwareRouting, fill_from_candidates


@ROUTING.register("cumsum")
class Cumsum(CacheAwareRouting):

    @dataclass(frozen=True, kw_only=True)
    class Params(CacheAwareRouting.Params):
        mass: float = field(0.9, help="τ in (0, 1]: a resident expert inside the smallest "
                                      "prefix of the router's order holding this much "
                                      "probability may be chosen")

    def check_params(self, params):
        if not 0.0 < params.mass <= 1.0:
            raise ConfigError(f"mass={params.mass} must be in (0, 1]", source=self.ctx.source,
                              key="routing.mass")

    def _choose(self, rows, layer, p, order, resident):
        po = np.take_along_axis(p, order, axis=1)
        cs = np.cumsum(po, axis=1)
        # prefix length: first index where the cumulative mass reaches τ, plus one
        reach = (cs >= self.params.mass - 1e-12)
        width = np.where(reach.any(axis=1), reach.argmax(axis=1) + 1, self.E)
        width = np.maximum(width, self.k)
        return fill_from_candidates(order, resident, self.k, self.params.protect, width)
