"""Random warm-up (a SliceMoE baseline): at each prefill -> decode transition the cache holds
a uniformly random subset of the objects that were in DRAM during the request's prefill,
filled in random order until the next object does not fit.

Retention rule (empty.py): candidates are the retention set, objects resident at the
transition ∪ objects the prefill looked up or loaded; keeping them costs no transfer. The
draw uses the run's generator (``ctx.rng``, seeded from the config's ``seed``) over the
candidates in ascending id, so a run reproduces from its seed; insertion order is the drawn
order (the first drawn is evicted first).
"""
from __future__ import annotations

from ..base import WARMUP
from .empty import StateWarmup


@WARMUP.register("random")
class RandomWarmup(StateWarmup):
    def choose(self, request_id, cache, resident, evicted):
        cands = sorted(resident + evicted)
        if not cands:
            return []
        order = self.ctx.rng.permutation(len(cands)).tolist()
        sizes, cap = self.ctx.object_bytes, cache.capacity_bytes
        used, out = 0.0, []
        for i in order:
            oid = cands[i]
            s = float(sizes[oid])
            if used + s > cap:
                break                        # stop at the first that does not fit
            used += s
            out.append(oid)
        return out
