"""SliceMoE's Predictive Cache Warmup (PCW; arXiv 2512.12990): at each request's prefill ->
decode transition, keep the prompt's most used experts from what the prefill streamed
through DRAM, dropping LSB slices first, and order the cache by prefill frequency.

Statistics, per (layer, expert), over the request's prefill tokens (trace rows ``start ..
start + n_prefill - 1``, as recorded: a routing policy's rerouting is not seen):

    f = prefill frequency: prefill tokens that chose the expert
    g = accumulated gate score: the sum of its gate weights over those tokens

Rule. Candidates = the retention set (empty.py: objects resident at the transition ∪
objects the prefill looked up or loaded; keeping them costs no transfer, and the choice
across layers is made with the whole prompt's statistics, an idealisation: a real device
decides what an early layer keeps before the prompt's last layer is done). Pinned objects
are not candidates. If all fit, all are kept; otherwise, until the kept set fits:

    (a) drop LSB slices (slice 1, only with 2 slices per expert) by ascending g
        (ties: ascending object id)
    (b) then drop MSB / whole-expert objects by ascending f (ties: ascending g, then id)

Objects the prompt never used (f = 0: left by earlier requests) rank lowest in their group.
The kept objects are re-inserted so that the eviction order follows prefill frequency: LSB
slices first (ascending g; the slice cache evicts LSBs first anyway), then MSB / whole
objects by ascending f (ties as above), so the most used expert is the most recent.

``drop_lsb_below`` > 0 also drops LSB slices whose g is below it even when they fit, and
``min_frequency`` > 0 MSB / whole objects with f below it. Only SliceMoE's abstract is
public: it gives the three rules (prefill frequency as the predictor, LSBs dropped first,
eviction order by frequency) and nothing finer; the tie-breaks, the use of g to rank LSBs
and the two thresholds are ours. With 2 objects per expert slice 1 is taken to be an LSB
slice (``mixed_precision: dbsc``); under another two-object layout (hobbit: a low-bit copy)
the rule still runs but its "LSB first" premise does not hold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ...errors import ConfigError, SimulationError
from ..base import WARMUP
from .empty import StateWarmup


@WARMUP.register("pcw")
class PredictiveCacheWarmup(StateWarmup):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        drop_lsb_below: float = field(0.0, min=0.0, help="also drop LSB slices whose "
                                      "accumulated prefill gate score is below this, even "
                                      "when they fit (0: drop LSBs only to make room)")
        min_frequency: int = field(0, min=0, help="also drop MSB / whole-expert objects "
                                   "chosen by fewer prefill tokens than this, even when they "
                                   "fit (0: drop only to make room)")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if ctx.trace.scores is None:
            raise ConfigError("pcw ranks slices by their accumulated gate scores, but the "
                              f"trace ({ctx.trace.path or 'in memory'}) has no 'scores' field; "
                              "import it with an importer that records gate weights, or "
                              "make one with `moesim trace synth`", source=ctx.source,
                              key="warmup.name")
        if ctx.slices_per_expert not in (1, 2):
            raise ConfigError(f"pcw handles whole experts or MSB/LSB slice pairs; this run "
                              f"stores {ctx.slices_per_expert} objects per expert",
                              source=ctx.source, key="warmup.name")
        self._requests = {q.rid: q for q in ctx.requests}

    def prefill_stats(self, request_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(f, g) of the request's prefill, each a flat array over ``layer * E + expert``."""
        q = self._requests.get(request_id)
        if q is None:
            raise SimulationError(f"pcw: no request {request_id} in the workload")
        ctx = self.ctx
        L, E = ctx.num_layers, ctx.num_experts
        rows = slice(q.start, q.start + q.n_prefill)
        ex = ctx.trace.experts[rows].astype(np.int64)                # (n, L, k)
        sc = ctx.trace.scores[rows].astype(np.float64)
        flat = (np.arange(L, dtype=np.int64)[None, :, None] * E + ex).ravel()
        f = np.bincount(flat, minlength=L * E)
        g = np.bincount(flat, weights=sc.ravel(), minlength=L * E)
        return f, g

    def choose(self, request_id, cache, resident, evicted):
        ctx, p = self.ctx, self.params
        S = ctx.slices_per_expert
        f, g = self.prefill_stats(request_id)
        f, g = f.tolist(), g.tolist()
        lsb, msb = [], []
        for oid in resident + evicted:
            (lsb if S == 2 and oid % 2 else msb).append(oid)
        # drop order = insertion order (first = least valuable = evicted first)
        lsb.sort(key=lambda o: (f[o // S] > 0, g[o // S], o))
        msb.sort(key=lambda o: (f[o // S], g[o // S], o))
        if p.drop_lsb_below > 0:
            lsb = [o for o in lsb if g[o // S] >= p.drop_lsb_below]
        if p.min_frequency > 0:
            msb = [o for o in msb if f[o // S] >= p.min_frequency]
        sizes, cap = ctx.object_bytes, cache.capacity_bytes
        total = math.fsum(float(sizes[o]) for o in lsb + msb)
        i = 0
        while total > cap and i < len(lsb):          # (a) LSB slices, ascending g
            total -= float(sizes[lsb[i]])
            i += 1
        j = 0
        while total > cap and j < len(msb):          # (b) MSB / whole, ascending f
            total -= float(sizes[msb[j]])
            j += 1
        return lsb[i:] + msb[j:]
