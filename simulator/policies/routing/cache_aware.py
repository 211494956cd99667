"""Shared plumbing of the cache-aware routing policies (cache_prior, cumsum, max_rank).

Not a policy itself. A subclass implements :meth:`CacheAwareRouting._choose`: given the
router probabilities ``p`` (n, E), the vanilla order (n, E) and the layer's resident mask
(E,), return the chosen (n, k) experts. This base class

* applies the policy at decode only (prefill returns the trace's experts: the papers change
  routing per generated token, and prefill is compute-bound anyway);
* builds the full router distribution (``distribution.py``: the trace's ``router_probs``, or
  its documented completion when ``completion`` is on);
* asks the memory hierarchy what is resident (``ctx.hierarchy.resident``: pinned, cached or
  staged, without touching cache state);
* returns the chosen experts in vanilla order (by the router's own probabilities; recorded
  order for recorded experts), so a policy that reroutes nothing reproduces the trace
  exactly, lookup order included;
* accumulates the statistics of :meth:`stats`: ``routing.mass_moved`` = sum over decode
  (token, layer) of p(router's own top-k) - p(chosen set), the gate mass the policy moved
  away from the router's choice (input to an accuracy proxy); ``routing.rerouted_uses`` =
  (token, layer, expert) uses of an expert outside the recorded top-k;
  ``routing.rerouted_tokens`` = (token, layer) pairs with at least one such use;
  ``routing.decode_uses`` = all decode uses the policy saw.

:meth:`labels` gives run notes (the completion's). The run summary does not read either yet
(see the branch report for the one-line summary.py change).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ...errors import ConfigError
from ...traces.schema import DECODE
from ..base import RoutingPolicy
from .distribution import RouterDistribution, combine_weights, resolve_renormalize


class CacheAwareRouting(RoutingPolicy):
    identity = False

    @dataclass(frozen=True, kw_only=True)
    class Params(RoutingPolicy.Params):
        protect: int = field(2, min=0, help="J: the router's own top-J experts are always kept "
                                           "(must be <= top_k)")
        completion: bool = field(True, help="without router_probs in the trace, complete the "
                                            "distribution from the top-k scores (labelled run); "
                                            "false = error")
        residual: float = field(0.2, min=0.0, max=1.0,
                                help="completion only, renormalising models: assumed router mass "
                                     "outside the top-k (UNVERIFIED; router_probs remove it)")
        renormalize: str = field("auto", choices=("auto", "true", "false"),
                                 help="whether combine weights are renormalised over the chosen "
                                      "set; auto = the model's norm_topk_prob")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        tr = ctx.trace
        self.k = tr.meta.top_k
        self.E = tr.meta.num_experts
        name = getattr(type(self), "registry_name", "routing")
        if params.protect > self.k:
            raise ConfigError(f"protect={params.protect} exceeds the model's top_k={self.k}",
                              source=ctx.source, key="routing.protect")
        self.check_params(params)
        self.renormalize = resolve_renormalize(params.renormalize, ctx.model)
        self.dist = RouterDistribution(tr, completion=params.completion,
                                       renormalized=self.renormalize, residual=params.residual,
                                       source=ctx.source, policy=f"routing '{name}'")
        self._oids = np.arange(ctx.num_layers * self.E, dtype=np.int64).reshape(
            ctx.num_layers, self.E) * ctx.slices_per_expert
        self.mass_moved = 0.0
        self.rerouted_uses = 0
        self.rerouted_tokens = 0
        self.decode_uses = 0
        self._last = None                                  # (p, chosen) of the last call
        # per-request blocks of the distribution (all decode rows x layers at once), built on
        # a request's first routed decode row and dropped after its last row's last layer
        rid = tr.request_id
        T = rid.shape[0]
        change = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
        ends = np.r_[change[1:], T]
        dec = tr.phase == DECODE
        self._blk_start = np.empty(T, dtype=np.int64)
        self._blk_end = np.empty(T, dtype=np.int64)
        for a, b in zip(change.tolist(), ends.tolist()):
            d = np.flatnonzero(dec[a:b])
            s0 = a + int(d[0]) if d.size else b
            self._blk_start[a:b] = s0
            self._blk_end[a:b] = b
        self._blocks: dict[int, dict] = {}
        self._L = ctx.num_layers

    def check_params(self, params) -> None:
        """Subclass hook for parameter checks that need the model (raise ConfigError)."""

    # ------------------------------------------------------------------ engine hook
    def resident_mask(self, layer: int) -> np.ndarray:
        hier = self.ctx.hierarchy
        return np.fromiter((hier.resident(int(o)) for o in self._oids[layer]), dtype=bool,
                           count=self.E)

    def _gather(self, rows: np.ndarray, layer: int):
        """(p, ex, order, pos) of decode ``rows`` at ``layer`` from the request blocks."""
        parts = []
        for r in rows.tolist():
            s0 = int(self._blk_start[r])
            b = self._blocks.get(s0)
            if b is None:
                b = self._blocks[s0] = self.dist.block(np.arange(s0, int(self._blk_end[r])))
            i = r - s0
            parts.append((b["p"][i, layer], b["ex"][i, layer], b["order"][i, layer],
                          b["pos"][i, layer]))
            if layer == self._L - 1 and r == int(self._blk_end[r]) - 1:
                del self._blocks[s0]
        if len(parts) == 1:
            return tuple(x[None, :] for x in parts[0])
        return tuple(np.stack(x) for x in zip(*parts))

    def route(self, phase, layer, tokens, experts):
        if phase != DECODE:
            return experts
        rows = np.asarray(tokens, dtype=np.int64).reshape(-1)
        p, ex, order, pos = self._gather(rows, layer)
        chosen = self._choose(rows, layer, p, order, self.resident_mask(layer))
        # return the chosen set in vanilla order (rank of each chosen expert in ``order``)
        n = rows.size
        ar = np.arange(n)[:, None]
        chosen = chosen[ar, np.argsort(pos[ar, chosen], axis=1, kind="stable")]
        # statistics
        own = p[ar, ex].sum()
        got = p[ar, chosen].sum()
        outside = ~(chosen[:, :, None] == ex[:, None, :]).any(axis=2)
        moved = float(own - got)
        if moved or outside.any():
            self.mass_moved += moved
            self.rerouted_uses += int(outside.sum())
            self.rerouted_tokens += int(outside.any(axis=1).sum())
        self.decode_uses += int(chosen.size)
        self._last = (p, chosen)
        return chosen

    @property
    def last_weights(self) -> np.ndarray | None:
        """Combine weights of the last routed call (original p restricted to the chosen
        set, renormalised per ``renormalize``); for the accuracy proxy."""
        if self._last is None:
            return None
        p, chosen = self._last
        return combine_weights(p, chosen, self.renormalize)

    def gate_scores(self, phase, layer, rows):
        """Decode: the combine weights of the experts the last call chose (aligned with
        them); prefill (vanilla): the trace's scores."""
        if phase == DECODE and self._last is not None:
            return self.last_weights
        return super().gate_scores(phase, layer, rows)

    def _choose(self, rows, layer, p, order, resident) -> np.ndarray:
        raise NotImplementedError

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, float]:
        return {"routing.mass_moved": self.mass_moved,
                "routing.mass_moved_per_token": (self.mass_moved / (self.decode_uses / self.k)
                                                 if self.decode_uses else 0.0),
                "routing.rerouted_uses": self.rerouted_uses,
                "routing.rerouted_tokens": self.rerouted_tokens,
                "routing.decode_uses": self.decode_uses}

    def labels(self) -> list[str]:
        lab = self.dist.label(getattr(type(self), "registry_name", "routing"))
        return [lab] if lab else []


def fill_from_candidates(order: np.ndarray, resident: np.ndarray, k: int, J: int,
                         width: np.ndarray) -> np.ndarray:
    """Max Rank / Cumsum frame: keep each row's top-J (vanilla order), then fill the other
    k - J slots first with resident experts among the row's first ``width[i]`` (>= k) ranks,
    by rank, then with the highest-ranked non-resident experts. Returns (n, k) experts."""
    n, E = order.shape
    res = resident[order]                                       # (n, E) by rank
    rank = np.arange(E)[None, :]
    in_a = rank < width[:, None]
    tail = rank >= J
    # priority: 0 = top-J, 1 = resident candidate, 2 = the rest (by rank)
    pri = np.where(~tail, 0, np.where(in_a & res, 1, 2))
    key = pri * E + rank
    pick = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(order, pick, axis=1)
