"""The router's full distribution over a layer's experts, for cache-aware routing policies.

Cache-aware routing (Cache-Prior, Max Rank, Cumsum; arXiv 2412.00099, see
``shared/reference/policies.md`` §2) needs every expert's router probability, not only the
recorded top-k. :class:`RouterDistribution` gives, per (trace rows, layer), an (n, E) matrix
of probabilities ``p`` and the *vanilla order* (the router's own ranking) of each row.

Source of ``p``:

* the trace's ``router_probs`` when present (renormalised per row to sum to 1, in float64);
* otherwise, with ``completion`` on, a deterministic **completion** from ``scores``:

  1. The recorded top-k keep their weights: ``p[top-k] = scores``. When the model
     renormalises its top-k (``renormalize``: the scores then sum to 1 and say nothing about
     the mass outside), the top-k keep their *ratios* and give up an assumed ``residual``
     share: ``p[top-k] = scores * (1 - r)``, with ``r = min(residual, a / (1 + a))``,
     ``a = (E - k) * min(scores)``, the largest residual under which the top-k can still be the
     top-k (every outsider at most the smallest recorded weight). ``residual`` is an
     UNVERIFIED assumption; only a trace with ``router_probs`` removes it.
  2. The remaining mass ``1 - sum(p[top-k])`` is spread over the other experts in proportion
     to a prior fitted from the trace: the per-layer count of how often each expert is routed
     to (all rows, all phases) plus one (Laplace smoothing, so no expert gets 0).
  3. No outsider may exceed the token's smallest recorded weight (the recorded experts are the
     router's top-k): shares above that cap are clipped to it and the excess re-spread over the
     uncapped outsiders by the prior (water-filling). If even all outsiders at the cap cannot
     hold the remaining mass (recorded weights inconsistent with a softmax top-k), the row is
     scaled to sum 1 and counted in :attr:`RouterDistribution.infeasible_rows`.

  Every row sums to 1. Runs that used the completion must say so
  (:meth:`RouterDistribution.label`).

Logits are ``log(p)`` (any softmax's logits up to a per-row constant, which neither ranking
nor the logit range depends on).

The vanilla order of a row is its recorded experts in recorded order, then the others by
descending ``p`` (ties by expert id); ranking code breaks ties by it, so a policy that changes
nothing returns exactly the trace's experts in the trace's order.
"""
from __future__ import annotations

import numpy as np

from ...errors import ConfigError

# Whether each model renormalises its top-k gate weights (``norm_topk_prob``), for configs
# whose model spec does not say. The catalog's ModelSpec has the field and is used first.
# Mixtral: softmax over the top-2 logits == renormalised top-k; Qwen3-MoE: norm_topk_prob
# true; OLMoE, DeepSeek-V2-Lite, Qwen1.5-MoE-A2.7B: false (their config.json).
RENORMALIZES = {
    "mixtral-8x7b": True, "mixtral-8x22b": True, "qwen3-30b-a3b": True, "qwen3-moe": True,
    "olmoe-1b-7b": False, "deepseek-v2-lite": False, "qwen1.5-moe-a2.7b": False,
}

_FLOOR = 1e-30          # probabilities below this are floored before taking logs


def resolve_renormalize(setting: str, model) -> bool:
    """``renormalize: auto|true|false`` -> bool; auto reads the model spec's
    ``norm_topk_prob``, else :data:`RENORMALIZES`, else True."""
    if setting == "true":
        return True
    if setting == "false":
        return False
    flag = getattr(model, "norm_topk_prob", None)
    if isinstance(flag, bool):
        return flag
    return RENORMALIZES.get(getattr(model, "name", ""), True)


class RouterDistribution:
    """Full router probabilities per (rows, layer) from a trace; see the module docstring."""

    def __init__(self, trace, *, completion: bool, renormalized: bool, residual: float,
                 source: str | None = None, policy: str = "routing"):
        self.trace = trace
        E, k = trace.meta.num_experts, trace.meta.top_k
        self.E, self.k = E, k
        self.renormalized = bool(renormalized)
        self.residual = float(residual)
        self.completed = trace.router_probs is None
        self.infeasible_rows = 0
        self.rows_completed = 0
        if self.completed:
            if not completion:
                raise ConfigError(
                    f"{policy} needs the full router distribution: the trace has no "
                    "'router_probs' field; record it (a trace importer that keeps the router's "
                    "softmax over all experts) or set routing.completion=true to complete it "
                    "from the top-k scores", source=source, key="routing.completion")
            if trace.scores is None:
                raise ConfigError(
                    f"{policy} needs gate weights: the trace has neither 'router_probs' nor "
                    "'scores'; re-import it with the router's top-k weights (scores) or its "
                    "full softmax (router_probs)", source=source, key="routing.completion")
            L = trace.meta.num_layers
            ex = trace.experts.astype(np.int64)
            base = np.arange(L, dtype=np.int64)[None, :, None] * E
            cnt = np.bincount((ex + base).ravel(), minlength=L * E).reshape(L, E)
            self.prior = cnt.astype(np.float64) + 1.0          # (L, E), Laplace-smoothed

    # ---------------------------------------------------------------- probabilities
    def probs(self, rows: np.ndarray, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(p (n, E) float64 rows summing to 1, recorded experts (n, k) int64)."""
        tr = self.trace
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        ex = tr.experts[rows, layer].astype(np.int64).reshape(-1, self.k)
        if not self.completed:
            p = np.asarray(tr.router_probs[rows, layer], dtype=np.float64).reshape(-1, self.E)
            p = np.maximum(p, 0.0)
            return p / p.sum(axis=1, keepdims=True), ex
        prior = np.broadcast_to(self.prior[layer], (rows.size, self.E))
        return self._complete(rows, np.full(rows.size, layer), ex, prior), ex

    def block(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Everything a ranking policy needs for trace ``rows`` at every layer, computed in
        one vectorised pass (rows x layers x experts): ``p``, ``ex`` (recorded experts),
        ``order`` (vanilla order) and ``pos`` (each expert's rank in it), all (n, L, ...)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n, L, E, k = rows.size, self.trace.meta.num_layers, self.E, self.k
        ex = self.trace.experts[rows].astype(np.int64).reshape(n * L, k)
        if not self.completed:
            p = np.asarray(self.trace.router_probs[rows], dtype=np.float64).reshape(n * L, E)
            p = np.maximum(p, 0.0)
            p = p / p.sum(axis=1, keepdims=True)
        else:
            layers = np.tile(np.arange(L), n)
            p = self._complete(np.repeat(rows, L), layers, ex, self.prior[layers])
        order = self.vanilla_order(p, ex)
        pos = np.empty_like(order)
        np.put_along_axis(pos, order, np.broadcast_to(np.arange(E), order.shape), axis=1)
        return {"p": p.reshape(n, L, E), "ex": ex.reshape(n, L, k),
                "order": order.reshape(n, L, E), "pos": pos.reshape(n, L, E)}

    def _complete(self, rows, layers, ex, prior):
        """Completed distribution of (row, layer) pairs ``rows[i], layers[i]`` with recorded
        experts ``ex`` (n, k) and per-pair prior (n, E)."""
        n, E, k = ex.shape[0], self.E, self.k
        s = np.asarray(self.trace.scores[rows, layers], dtype=np.float64).reshape(n, k)
        s = np.maximum(s, 0.0)
        if self.renormalized:
            tot = s.sum(axis=1, keepdims=True)
            s = s / np.where(tot > 0, tot, 1.0)
            a = (E - k) * s.min(axis=1, keepdims=True)
            r = np.minimum(self.residual, a / (1.0 + a))
            top = s * (1.0 - r)
        else:
            top = s
        ar = np.arange(n)[:, None]
        p = np.zeros((n, E), dtype=np.float64)
        p[ar, ex] = top
        rem = np.maximum(1.0 - top.sum(axis=1), 0.0)                # (n,)
        cap = top.min(axis=1)                                        # (n,)
        free = np.ones((n, E), dtype=bool)
        free[ar, ex] = False
        out = np.zeros((n, E), dtype=np.float64)
        left = rem.copy()
        for _ in range(E - k + 1):                                   # water-filling
            w = np.where(free, prior, 0.0)
            ws = w.sum(axis=1)
            share = np.where(ws[:, None] > 0, w * (left / np.where(ws > 0, ws, 1.0))[:, None], 0.0)
            over = free & (share > cap[:, None] * (1 + 1e-12))
            if not over.any():
                out += share
                break
            out = np.where(over, cap[:, None], out)
            left = left - (over * cap[:, None]).sum(axis=1)
            free &= ~over
        p += out
        tot = p.sum(axis=1)
        bad = np.abs(tot - 1.0) > 1e-9
        if bad.any():
            self.infeasible_rows += int(bad.sum())
            p /= np.where(tot > 0, tot, 1.0)[:, None]
        self.rows_completed += n
        return p

    # ---------------------------------------------------------------- ranking helpers
    def vanilla_order(self, p: np.ndarray, ex: np.ndarray) -> np.ndarray:
        """(n, E) expert ids: the recorded experts in recorded order, then the others by
        descending p (ties by id)."""
        n, E = p.shape
        ar = np.arange(n)[:, None]
        key = -p.copy()
        key[ar, ex] = -np.inf                                         # recorded first...
        order = np.argsort(key, axis=1, kind="stable")
        order[:, :ex.shape[1]] = ex                                   # ...in recorded order
        return order

    def label(self, policy: str) -> str | None:
        """The run note for a run that used the completion (None if it did not)."""
        if not self.completed or not self.rows_completed:
            return None
        how = (f"top-k ratios kept, assumed outside mass <= {self.residual:g}"
               if self.renormalized else "recorded top-k weights kept")
        extra = (f"; {self.infeasible_rows} rows rescaled (weights inconsistent with a top-k)"
                 if self.infeasible_rows else "")
        return (f"routing: {policy} used a completed router distribution (trace lacks "
                f"router_probs; {how}, rest spread by the trace's per-layer expert "
                f"frequencies){extra}: approximate, not the model's router")


def combine_weights(p: np.ndarray, chosen: np.ndarray, renormalize: bool) -> np.ndarray:
    """Combine weights of the ``chosen`` (n, k) experts: the original probabilities
    restricted to them, renormalised over them only if the model renormalises its top-k."""
    w = np.take_along_axis(p, chosen, axis=1)
    if renormalize:
        w = w / np.maximum(w.sum(axis=1, keepdims=True), _FLOOR)
    return w


def logits(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, _FLOOR))
