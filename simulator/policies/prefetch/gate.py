"""The cost/benefit gate shared by the predictive prefetchers (transition, token_reuse,
moe_infinity), and their common per-layer selection.

A predictor estimates p = p(object x is looked up by the layer it targets). The gate then
prefetches x only where the expected saving beats the expected cost::

    p * saved(x)  >  bandwidth_weight * link(x)  +  (1 - p) * pollution_cost_s

    saved(x) = lat_d + size_x / B_d     the demand fetch of x from its home device d
                                        (lat_d, B_d: latency and narrowest resource of
                                        ``system.fetch_path(d)``); 0 for pinned objects
    link(x)  = size_x / B_d             the link time the transfer takes from other traffic

``bandwidth_weight`` is the fraction of that link time charged to the prefetch: prefetches run
at background priority (they use only bandwidth demand fetches leave), so a transfer does
not cost its full link time, but it does delay the prefetches and the demand fetches that
queue behind it. ``pollution_cost_s`` is the expected cost of a wasted staging/cache slot,
paid only when the guess is wrong (probability 1 - p). Solved for p, the gate is a threshold
per object, p > (w link + c) / (saved + c): with the defaults (w = 0.25, c = 1 ms) it is 0.35
for a Mixtral-8x7B bf16 expert over PCIe 5.0 x16 (352 MB, 6.4 ms: default.yaml), 0.26-0.35
over the CXL expanders of moe_cxl.yaml (0.26 on the 5.1 GB/s one) and 0.34 for a
DeepSeek-V2-Lite int8 expert from UFS flash (mobile_xpu_flash.yaml), so it rejects the
unlikely guesses while keeping the ones predictors are confident about.

Measured (bundled traces, batch 1, transition predictor; the staging buffer releases a
guess its layer did not use): the gate lifts next-layer precision from 0.26 to 0.46-0.52 and
prefetch.accuracy from 0.21 to 0.42-0.52; ungated, the wasted transfers cost about what the
right ones save (cxl_expanders.yaml 471.4 s vs 471.9 s without prefetch), gated the run
takes 460.2 s (the oracle: 416.1 s).

``min_prob`` (each policy's own parameter) is a floor on p that applies in any case; with
the gate off the rule is that plain threshold, p >= min_prob (and p > 0). With both costs 0
the inequality is p * saved > 0, i.e. the ungated rule except for pinned objects (which the
hierarchy would skip anyway).

Homes. The saving is read from ``ctx.home`` (the engine's placement array, the one the memory
hierarchy re-homes in place), checked at every iteration start (:meth:`Gate.refresh`), so
migrations change the thresholds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ...errors import SimulationError
from ..base import PrefetchPolicy


@dataclass(frozen=True, kw_only=True)
class GateParams:
    enabled: bool = field(True, help="apply the cost/benefit gate (false: plain threshold p >= min_prob)")
    bandwidth_weight: float = field(0.25, min=0.0, help="fraction of a prefetch's link time "
                                    "(size / bandwidth of its fetch path) charged as its cost")
    pollution_cost_s: float = field(1e-3, min=0.0, help="expected cost of a wasted staging/"
                                    "cache slot, s (charged with probability 1 - p)")


class Gate:
    """Filters (object, probability) candidates; see the module docstring.

    The rule is evaluated in its threshold form: an object passes when p > thr(x), with
    thr(x) = max(0, the largest float below min_prob, (w link(x) + c) / (saved(x) + c)),
    which is p > 0 and p >= min_prob and p (saved + c) > w link + c, the inequality of the
    module docstring rearranged (inf for pinned objects, which have nothing to save)."""

    def __init__(self, params: GateParams, ctx, min_prob: float):
        self.params, self.ctx, self.min_prob = params, ctx, float(min_prob)
        self.enabled = bool(params.enabled)
        self._home = None                  # copy of ctx.home the thresholds were built on
        self.saved = self.link = None      # (num_objects,) seconds
        self.thr = None                    # (L, E) threshold of each (layer, expert)
        E, S = ctx.num_experts, ctx.slices_per_expert
        self._base = [l * E * S for l in range(ctx.num_layers)]
        self._floor = max(0.0, float(np.nextafter(self.min_prob, -np.inf)))

    # ------------------------------------------------------------------ per-object times
    def refresh(self) -> None:
        """(Re)build saved/link times and thresholds when the placement changed (one array
        comparison otherwise). Called by the policies at every iteration start."""
        ctx = self.ctx
        L, E, S = ctx.num_layers, ctx.num_experts, ctx.slices_per_expert
        if not self.enabled:
            if self.thr is None:
                self.thr = np.full((L, E), self._floor)
            return
        home = getattr(ctx, "home", None)
        if home is None:
            raise SimulationError("the prefetch cost/benefit gate needs ctx.home (the engine "
                                  "sets it); set gate.enabled: false to run without it")
        if self._home is not None and np.array_equal(self._home, home):
            return
        system, size = ctx.system, np.asarray(ctx.object_bytes, dtype=np.float64)
        nd = len(system.devices)
        lat, bw = np.zeros(nd), np.full(nd, np.inf)
        for d in system.devices:
            if d.is_local:
                continue
            res, lat[d.index] = system.fetch_path(d)
            bw[d.index] = min(r.capacity for r in res) if res else np.inf
        home = np.asarray(home)
        link = size / bw[home]
        saved = lat[home] + link
        pinned = home == system.local.index
        saved[pinned] = 0.0
        link[pinned] = 0.0
        self.saved, self.link = saved, link
        self._home = home.copy()
        first = (np.arange(L * E, dtype=np.int64) * S)          # slice 0 of every expert
        self.thr = np.maximum(self.threshold(first), self._floor).reshape(L, E)

    def threshold(self, oids) -> np.ndarray:
        """The gate's own threshold on p per object, (w link + c) / (saved + c) (inf for
        pinned objects: nothing to save), without the min_prob floor."""
        if self.saved is None:
            self.refresh()
        o = np.asarray(oids, dtype=np.int64)
        w, c = self.params.bandwidth_weight, self.params.pollution_cost_s
        saved = self.saved[o]
        num = w * self.link[o] + c
        den = np.where(saved > 0, saved + c, 1.0)
        return np.where(saved > 0, num / den, np.inf)

    # ------------------------------------------------------------------ the rule
    def keep(self, oids, p) -> np.ndarray:
        """Boolean mask: which candidates (object ids, their p) pass."""
        if self.thr is None:
            self.refresh()
        o = np.asarray(oids, dtype=np.int64)
        S, E = self.ctx.slices_per_expert, self.ctx.num_experts
        return np.asarray(p) > self.thr.reshape(-1)[o // S]

    def choose1(self, layer: int, p: np.ndarray, top_n: int) -> list[int]:
        """:meth:`choose` for one target layer, ``p`` of shape (E,) (the hot path)."""
        idx = (p > self.thr[layer]).nonzero()[0]
        n = idx.size
        if n == 0:
            return []
        if n > 1:
            idx = idx[(-p[idx]).argsort(kind="stable")[:top_n]]
        S = self.ctx.slices_per_expert
        return (self._base[layer] + (idx * S if S != 1 else idx)).tolist()

    def choose(self, first: int, P: np.ndarray, top_n: int, by_score: bool = False) -> list[int]:
        """Object ids to prefetch from ``P`` (m, E) or (E,): p(expert e used at layer
        ``first + i``). Per target layer the candidates that pass are taken in descending p
        (ties: lower expert first), at most ``top_n``; the result lists target layers in
        order, or with ``by_score`` all of them in descending p (ties: nearer layer)."""
        if self.thr is None:
            self.refresh()
        thr, base, S = self.thr, self._base, self.ctx.slices_per_expert
        if P.ndim == 1:
            P = P[None, :]
        out: list[int] = []
        ps: list[float] = []
        for i in range(P.shape[0]):
            p = P[i]
            j = first + i
            idx = (p > thr[j]).nonzero()[0]
            if idx.size == 0:
                continue
            if idx.size > 1:
                idx = idx[(-p[idx]).argsort(kind="stable")[:top_n]]
            out.extend((base[j] + idx * S).tolist() if S != 1 else (base[j] + idx).tolist())
            if by_score:
                ps.extend(p[idx].tolist())
        if by_score and P.shape[0] > 1 and out:
            order = sorted(range(len(out)), key=lambda q: -ps[q])    # stable: nearer first
            out = [out[q] for q in order]
        return out


class OnlinePrefetch(PrefetchPolicy):
    """What the online predictors (transition, token_reuse, moe_infinity) share: the engine
    calls ``on_layer_start`` with one rows array per iteration, so a new array (or layer 0)
    starts an iteration. ``_observe`` then commits what the last one taught (``_commit``),
    refreshes the gate's thresholds (homes may have moved) and lets the policy prepare the new
    rows (``_begin``); ``_maxl`` is the deepest layer of the iteration seen so far."""

    _last: np.ndarray | None = None
    _maxl = -1

    def _observe(self, layer: int, tokens: np.ndarray) -> None:
        if tokens is not self._last or layer == 0:
            self._commit()
            self._last = tokens
            self.gate.refresh()
            self._begin(tokens)
        if layer > self._maxl:
            self._maxl = layer

    def _commit(self) -> None:
        """Learn from the iteration that just ended (rows ``_last``, layers <= ``_maxl``)."""

    def _begin(self, tokens: np.ndarray) -> None:
        """Prepare predictions for a new iteration's rows."""
