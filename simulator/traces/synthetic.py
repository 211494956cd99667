"""Seeded synthetic routing traces from an explicit generative routing model.

A :class:`RoutingModel` says, per phase and MoE layer, how a token picks its k experts:

    for each request r:
        for each layer l:  pi_rl ~ Dirichlet(kappa_l * pi_l)        (request "topic"; kappa=inf: pi_l)
        for each token t of r (prefill tokens, then decode tokens), for each layer l:
            keep m ~ Binomial(k, rho[phase][l]) experts of the token that ran d tokens
                earlier at layer l, d ~ reuse_distance[phase][l]   (temporal locality)
            draw the other k - m without replacement from
                q(e) ∝ (1 - gamma_l) * pi_rl(e) + gamma_l * mean_{e' in S(t, l-1)} T_l[e', e]
                                                                    (cross-layer correlation)
            gate: logits z ~ N(0, sigma^2) per expert, the k largest given to the chosen
                experts in random order; router_probs = softmax(z / temperature);
                scores = the chosen experts' probabilities (renormalised if norm_topk)

Tokens are generated for many requests at once (vectorised over requests) and streamed to
Parquet a chunk of requests at a time, so memory stays bounded for long traces. The same
(model, lengths, seed) gives byte-identical files.

``RoutingModel.from_knobs`` builds a model from a few intuitive knobs (Zipf skew, locality,
cross-layer weight) for tests and defaults; ``moesim trace fit`` (issue: calibrated synthesis)
estimates one from a real trace. Both serialise to readable YAML.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .io import TraceWriter
from .schema import DECODE, PHASE_NAMES, PREFILL, TraceMeta, expert_dtype

MAX_REUSE_DISTANCE = 64


@dataclass
class PhaseModel:
    """Per-layer routing parameters of one phase."""

    popularity: np.ndarray          # (L, E) rows sum to 1
    stickiness: np.ndarray          # (L,) probability a slot is reused from an earlier token
    reuse_distance: np.ndarray      # (L, D) distribution of the look-back distance d = 1..D
    cross_weight: np.ndarray        # (L,) gamma_l (layer 0 ignores it)
    concentration: np.ndarray       # (L,) kappa_l; inf = no per-request variation
    gate_sigma: float = 1.0
    gate_temperature: float = 1.0


@dataclass
class RoutingModel:
    num_layers: int
    num_experts: int
    top_k: int
    model: str = "synthetic"
    norm_topk: bool = True
    phases: dict[str, PhaseModel] = field(default_factory=dict)
    transition: np.ndarray | None = None       # (L-1, E, E) rows sum to 1: T_l = P(l+1 | l)
    source: str = "synthetic"
    notes: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_knobs(cls, *, num_layers: int, num_experts: int, top_k: int, model: str = "synthetic",
                   zipf_alpha: float = 0.8, locality_decode: float = 0.3,
                   locality_prefill: float = 0.15, cross_layer: float = 0.3,
                   transition_concentration: float = 0.3, request_concentration: float = math.inf,
                   gate_sigma: float = 1.0, norm_topk: bool = True, seed: int = 0) -> "RoutingModel":
        """A model from intuitive knobs. Popularity at every layer is Zipf(zipf_alpha) over a
        random permutation of the experts; transitions are Dirichlet(transition_concentration)
        rows (small = peaky = strong layer-to-layer correlation)."""
        _check_knobs(num_layers=num_layers, num_experts=num_experts, top_k=top_k,
                     zipf_alpha=zipf_alpha, locality_decode=locality_decode,
                     locality_prefill=locality_prefill, cross_layer=cross_layer,
                     transition_concentration=transition_concentration,
                     request_concentration=request_concentration, gate_sigma=gate_sigma)
        rng = np.random.default_rng(seed)
        L, E = num_layers, num_experts
        ranks = np.arange(1, E + 1, dtype=np.float64) ** (-zipf_alpha)
        pop = np.empty((L, E))
        for l in range(L):
            pop[l, rng.permutation(E)] = ranks / ranks.sum()
        trans = rng.dirichlet(np.full(E, transition_concentration), size=(max(L - 1, 0), E))
        one_back = np.zeros((L, MAX_REUSE_DISTANCE))
        one_back[:, 0] = 1.0
        phases = {}
        for name, rho in (("prefill", locality_prefill), ("decode", locality_decode)):
            phases[name] = PhaseModel(popularity=pop.copy(), stickiness=np.full(L, rho),
                                      reuse_distance=one_back.copy(),
                                      cross_weight=np.full(L, cross_layer),
                                      concentration=np.full(L, request_concentration),
                                      gate_sigma=gate_sigma)
        return cls(L, E, top_k, model=model, norm_topk=norm_topk, phases=phases,
                   transition=trans, source=f"synthetic knobs (seed {seed})",
                   notes={"knobs": dict(zipf_alpha=zipf_alpha, locality_decode=locality_decode,
                                        locality_prefill=locality_prefill, cross_layer=cross_layer,
                                        transition_concentration=transition_concentration,
                                        request_concentration=request_concentration,
                                        gate_sigma=gate_sigma, seed=seed)})

    def validate(self) -> "RoutingModel":
        L, E, k = self.num_layers, self.num_experts, self.top_k
        if not (L >= 1 and E >= 1 and 1 <= k <= E):
            raise ConfigError(f"need num_layers >= 1 and 1 <= top_k <= num_experts; got L={L}, "
                              f"E={E}, k={k}")
        for name, ph in self.phases.items():
            key = f"phases.{name}"
            _check_rows(ph.popularity, (L, E), f"{key}.popularity")
            _check_rows(ph.reuse_distance, (L, ph.reuse_distance.shape[1]), f"{key}.reuse_distance")
            for arr, nm in ((ph.stickiness, "stickiness"), (ph.cross_weight, "cross_weight")):
                if arr.shape != (L,) or (arr < 0).any() or (arr > 1).any():
                    raise ConfigError(f"needs {L} values in [0, 1]", key=f"{key}.{nm}")
            if ph.concentration.shape != (L,) or (ph.concentration <= 0).any():
                raise ConfigError(f"needs {L} values > 0 (inf allowed)", key=f"{key}.concentration")
            if not ph.gate_sigma >= 0 or not ph.gate_temperature > 0:
                raise ConfigError("gate_sigma must be >= 0 and gate_temperature > 0", key=key)
        if L > 1:
            if self.transition is None:
                raise ConfigError("needs a transition matrix per layer pair", key="transition")
            _check_rows(self.transition.reshape(-1, E), ((L - 1) * E, E), "transition")
        return self


def _check_knobs(**kw) -> None:
    for name in ("num_layers", "num_experts", "top_k"):
        if int(kw[name]) < 1:
            raise ConfigError(f"must be >= 1, got {kw[name]}", key=name)
    if kw["top_k"] > kw["num_experts"]:
        raise ConfigError(f"top_k {kw['top_k']} > num_experts {kw['num_experts']}", key="top_k")
    for name in ("locality_decode", "locality_prefill", "cross_layer"):
        if not 0 <= kw[name] <= 1:
            raise ConfigError(f"must be in [0, 1], got {kw[name]}", key=name)
    for name in ("zipf_alpha", "gate_sigma"):
        if not kw[name] >= 0:
            raise ConfigError(f"must be >= 0, got {kw[name]}", key=name)
    for name in ("transition_concentration", "request_concentration"):
        if not kw[name] > 0:
            raise ConfigError(f"must be > 0, got {kw[name]}", key=name)


def _check_rows(a: np.ndarray, shape, key: str) -> None:
    if a.shape != tuple(shape):
        raise ConfigError(f"expected shape {tuple(shape)}, got {a.shape}", key=key)
    if not np.isfinite(a).all() or (a < 0).any():
        raise ConfigError("entries must be finite and >= 0", key=key)
    s = a.sum(axis=-1)
    if not np.allclose(s, 1.0, atol=1e-6):
        bad = int(np.flatnonzero(~np.isclose(s, 1.0, atol=1e-6))[0])
        raise ConfigError(f"row {bad} sums to {s[bad]:.6g}, not 1", key=key)


# ---------------------------------------------------------------------- sampling
CHUNK_REQUESTS = 256          # requests generated together (vectorised over requests)
CHUNK_TOKENS = 65536          # ... and at most this many tokens per chunk (bounded memory)


def chunks(lengths: np.ndarray):
    """Consecutive request ranges [c0, c1) of at most CHUNK_REQUESTS requests and
    CHUNK_TOKENS tokens (at least one request each). Fixed: part of what a seed means."""
    c0, n = 0, len(lengths)
    while c0 < n:
        c1, tok = c0, 0
        while c1 < n and c1 - c0 < CHUNK_REQUESTS and (c1 == c0 or tok + lengths[c1] <= CHUNK_TOKENS):
            tok += int(lengths[c1])
            c1 += 1
        yield c0, c1
        c0 = c1
def _sample_without_replacement(rng, logq: np.ndarray, k: int) -> np.ndarray:
    """Gumbel-top-k: k draws without replacement from softmax(logq), per row (n, E) -> (n, k),
    in draw order."""
    g = logq + rng.gumbel(size=logq.shape)
    part = np.argpartition(-g, kth=min(k, g.shape[1] - 1) - 1, axis=1)[:, :k] if k < g.shape[1] \
        else np.tile(np.arange(g.shape[1]), (g.shape[0], 1))
    gv = np.take_along_axis(g, part, axis=1)
    order = np.argsort(-gv, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


class _ChunkSampler:
    """Generates one chunk of requests, token step by token step, all layers."""

    def __init__(self, model: RoutingModel, rng: np.random.Generator, prompt_lens, decode_lens,
                 with_scores: bool, with_probs: bool):
        self.m, self.rng = model, rng
        self.P = np.asarray(prompt_lens, dtype=np.int64)
        self.D = np.asarray(decode_lens, dtype=np.int64)
        self.with_scores, self.with_probs = with_scores, with_probs

    def run(self):
        m, rng = self.m, self.rng
        L, E, k = m.num_layers, m.num_experts, m.top_k
        R = self.P.size
        n_tok = self.P + self.D
        T = int(n_tok.max()) if R else 0
        # per-request popularity (topic)
        pops = {}
        for name, ph in m.phases.items():
            pr = np.empty((R, L, E))
            for l in range(L):
                kap = ph.concentration[l]
                if math.isinf(kap):
                    pr[:, l] = ph.popularity[l]
                else:
                    pr[:, l] = rng.dirichlet(np.maximum(kap * ph.popularity[l], 1e-6), size=R)
            pops[name] = np.log(np.maximum(pr, 1e-300))
        out = np.zeros((R, T, L, k), dtype=np.int32)
        scores = np.zeros((R, T, L, k), dtype=np.float32) if self.with_scores else None
        probs = np.zeros((R, T, L, E), dtype=np.float32) if self.with_probs else None
        rows = np.arange(R)
        for t in range(T):
            alive = rows[t < n_tok]
            if alive.size == 0:
                break
            is_dec = t >= self.P[alive]
            prev_layer = None
            for l in range(L):
                chosen = np.empty((alive.size, k), dtype=np.int64)
                for ph_code, name in enumerate(PHASE_NAMES):
                    sel = (is_dec if ph_code == DECODE else ~is_dec)
                    if not sel.any():
                        continue
                    ph = m.phases[name]
                    rr = alive[sel]
                    logq = pops[name][rr, l].copy()
                    gam = ph.cross_weight[l] if l > 0 else 0.0
                    if gam > 0 and prev_layer is not None:
                        tr = m.transition[l - 1][prev_layer[sel]].mean(axis=1)     # (n, E)
                        logq = np.log(np.maximum((1 - gam) * np.exp(logq) + gam * tr, 1e-300))
                    chosen[sel] = self._draw(rng, ph, l, t, rr, logq, out)
                out[alive, t, l] = chosen
                prev_layer = chosen
                if self.with_scores or self.with_probs:
                    self._gate(alive, t, l, chosen, is_dec, scores, probs)
        return out, scores, probs

    def _draw(self, rng, ph: PhaseModel, l: int, t: int, rr: np.ndarray, logq: np.ndarray,
              out: np.ndarray) -> np.ndarray:
        k = self.m.top_k
        n = rr.size
        rho = ph.stickiness[l]
        kept_mask = np.zeros((n, k), dtype=bool)
        src = None
        if rho > 0 and t > 0:
            D = ph.reuse_distance.shape[1]
            d = rng.choice(D, size=n, p=ph.reuse_distance[l]) + 1
            d = np.minimum(d, t)                                   # cannot look before token 0
            src = out[rr, t - d, l]                                # (n, k)
            m = rng.binomial(k, rho, size=n)
            pri = rng.random((n, k))
            rank = np.argsort(np.argsort(pri, axis=1), axis=1)
            kept_mask = rank < m[:, None]
        if src is not None and kept_mask.any():
            logq = logq.copy()
            np.put_along_axis(logq, src, np.where(kept_mask, -np.inf, np.take_along_axis(logq, src, 1)), 1)
        fresh = _sample_without_replacement(rng, logq, k)
        if src is None:
            return fresh
        # kept experts first (in source order), then fresh draws, k in total per row
        cand = np.concatenate([src, fresh], axis=1)
        cand_key = np.concatenate([np.where(kept_mask, np.arange(k), 10 * k),
                                   k + np.arange(k)[None, :].repeat(n, 0)], axis=1)
        order = np.argsort(cand_key, axis=1, kind="stable")[:, :k]
        res = np.take_along_axis(cand, order, axis=1)
        # the k slots are a set: give them a random gate order
        perm = np.argsort(rng.random((n, k)), axis=1)
        return np.take_along_axis(res, perm, axis=1)

    def _gate(self, alive, t, l, chosen, is_dec, scores, probs) -> None:
        m, rng = self.m, self.rng
        E, k = m.num_experts, m.top_k
        n = alive.size
        sig = np.where(is_dec, m.phases["decode"].gate_sigma, m.phases["prefill"].gate_sigma)
        temp = np.where(is_dec, m.phases["decode"].gate_temperature,
                        m.phases["prefill"].gate_temperature)
        z = rng.normal(size=(n, E)) * sig[:, None]
        zs = -np.sort(-z, axis=1)
        # chosen experts take the k largest logits, in slot order (slot 0 = best)
        logits = np.empty((n, E))
        others = np.ones((n, E), dtype=bool)
        np.put_along_axis(others, chosen, False, axis=1)
        np.put_along_axis(logits, chosen, zs[:, :k], axis=1)
        # remaining values to the other experts in random order
        rest = zs[:, k:]
        perm = np.argsort(rng.random(rest.shape), axis=1)
        rest = np.take_along_axis(rest, perm, axis=1)
        logits[others] = rest.ravel()
        p = np.exp((logits - logits.max(axis=1, keepdims=True)) / temp[:, None])
        p /= p.sum(axis=1, keepdims=True)
        if probs is not None:
            probs[alive, t, l] = p
        if scores is not None:
            sc = np.take_along_axis(p, chosen, axis=1)
            if m.norm_topk:
                sc = sc / sc.sum(axis=1, keepdims=True)
            scores[alive, t, l] = sc


def generate(model: RoutingModel, path: str | Path, *, requests: int, prompt_len: int,
             decode_len: int, seed: int = 0, len_jitter: float = 0.0,
             arrival_rate: float | None = None, scores: bool = True, router_probs: bool = False,
             trace_model: str | None = None) -> dict[str, Any]:
    """Stream a synthetic trace to ``path``. Returns a small report (tokens, accesses).

    Prompt and decode lengths are ``prompt_len`` / ``decode_len``, each drawn uniformly from
    ``[(1 - len_jitter) x, (1 + len_jitter) x]`` when ``len_jitter`` > 0. ``arrival_rate``
    (requests/s) records Poisson arrival times in the trace.
    """
    model.validate()
    if requests < 1:
        raise ConfigError(f"must be >= 1, got {requests}", key="requests")
    if prompt_len < 0 or decode_len < 0 or prompt_len + decode_len < 1:
        raise ConfigError("prompt_len and decode_len must be >= 0 and not both 0",
                          key="prompt_len/decode_len")
    if not 0 <= len_jitter < 1:
        raise ConfigError(f"must be in [0, 1), got {len_jitter}", key="len_jitter")
    rng = np.random.default_rng(seed)

    def lengths(mean: int) -> np.ndarray:
        if len_jitter == 0 or mean == 0:
            return np.full(requests, mean, dtype=np.int64)
        lo, hi = max(0, int(round(mean * (1 - len_jitter)))), int(round(mean * (1 + len_jitter)))
        return rng.integers(lo, hi + 1, size=requests)

    P, D = lengths(prompt_len), lengths(decode_len)
    empty = (P + D) == 0
    D[empty] = 1
    arrivals = None
    if arrival_rate:
        gaps = rng.exponential(1.0 / arrival_rate, size=requests)
        arrivals = {i: float(t) for i, t in enumerate(np.cumsum(gaps) - gaps[0])}
    meta = TraceMeta(model=trace_model or model.model, num_layers=model.num_layers,
                     num_experts=model.num_experts, top_k=model.top_k, source=model.source,
                     notes={"generator": "simulator.traces.synthetic", "seed": seed,
                            "requests": requests, "prompt_len": prompt_len,
                            "decode_len": decode_len, "len_jitter": len_jitter, **model.notes})
    L, k, E = model.num_layers, model.top_k, model.num_experts
    tokens = 0
    with TraceWriter(path, meta, list(range(requests)), arrival_s=arrivals, has_scores=scores,
                     probs_dtype=np.float16 if router_probs else None) as w:
        for c0, c1 in chunks(P + D):
            # One generator per chunk, seeded by (seed, first request): the draws depend on
            # the seed and the request lengths only (chunks are a fixed function of those).
            crng = np.random.default_rng([seed, c0])
            sampler = _ChunkSampler(model, crng, P[c0:c1], D[c0:c1], scores, router_probs)
            ex, sc, pr = sampler.run()
            for i, r in enumerate(range(c0, c1)):
                n = int(P[r] + D[r])
                ph = (np.arange(n) >= P[r]).astype(np.int8)
                w.write(np.full(n, r), np.arange(n), ph, ex[i, :n],
                        None if sc is None else sc[i, :n],
                        None if pr is None else pr[i, :n].astype(np.float16))
                tokens += n
    return {"path": str(path), "requests": requests, "tokens": tokens,
            "prefill_tokens": int(P.sum()), "decode_tokens": int(D.sum()),
            "accesses": tokens * L * k}
