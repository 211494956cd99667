"""Max Rank routing: cached experts may replace non-cached ones within the router's top-M.

UNVERIFIED reconstruction (shared/reference/policies.md §2.2): the paper (arXiv 2412.00099)
names the method but its definition could not be read; this is our reading of the name and of
how the paper frames the family. Confirm against §3–4 of arXiv 2412.00099v2 before relying on it.

Per decode token at a layer, with the experts in the router's own order (ranks 1..E):

* the top-J (``protect``) are always kept;
* the other k - J slots are filled first with resident experts (pinned, cached or staged)
  ranked within the top M (``rank``), best rank first, then with the best-ranked
  non-resident experts;
* the chosen set is returned in the router's order; combine weights are the original
  probabilities restricted to it (renormalised only if the model renormalises top-k).

M = k is vanilla top-k (every candidate is already chosen). Why: a bounded-rank substitute
needs no probability calibration, only the router's ranking, so it is the most robust of the
three to an approximate (completed) distribution. Decode only; prefill is vanilla.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ...errors import ConfigError
from ..base import ROUTING
from .cache_aware import CacheAwareRouting, fill_from_candidates


@ROUTING.register("max_rank")
class MaxRank(CacheAwareRouting):

    @dataclass(frozen=True, kw_only=True)
    class Params(CacheAwareRouting.Params):
        rank: int | None = field(None, min=1, help="M: a resident expert ranked within the "
                                                   "router's top M may be chosen; default k+2")

    def check_params(self, params):
        M = self.k + 2 if params.rank is None else params.rank
        if M < self.k:
            raise ConfigError(f"rank={M} is below the model's top_k={self.k}",
                              source=self.ctx.source, key="routing.rank")
        self.M = min(M, self.E)

    def _choose(self, rows, layer, p, order, resident):
        width = np.full(p.shape[0], self.M, dtype=np.int64)
        return fill_from_candidates(order, resident, self.k, self.params.protect, width)
