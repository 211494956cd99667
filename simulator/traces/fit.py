"""Fit a generative routing model (traces/synthetic.py) to a real trace, or to aggregate counts.

Direct estimates, per phase (prefill / decode) and MoE layer:

* popularity: expert selection shares, with a small pseudo-count;
* cross-layer correlation: a bank of ``CHAIN_BANK`` recorded token routings (k experts at
  every layer). Real tokens' experts are coherent across layers as whole sets, which pairwise
  layer-to-layer transition statistics cannot express (chains built from the pairwise
  transitions of DeepSeek-V2-Lite keep 0.11 of its 0.58 bits); synthetic tokens lean toward
  a bank pattern;
* gate scores: quantiles of the top-1 share of the top-k mass (how often one expert
  dominates: SliceMoE's critical-expert threshold), the mean split of the rest over ranks
  2..k with a Dirichlet concentration from its variance, and quantiles of the top-k mass
  when the source did not renormalise;
* request lengths (prompt, decode), in order.

Then a simulated-moments calibration: synthesise a trace with the same request lengths
(a subset of the requests when the source is large), compare, adjust, repeat:

* reuse (stickiness and the reuse-distance bins) so that each layer's reuse-distance
  histogram (1, 2, 3-4, ..., 33-64 tokens back) matches: q_bin <- q_bin * (real/synthetic)^eta;
* the repeat bias nu so the number of distinct experts a request uses per layer matches
  (it sets the working set of a prefill and the cold misses);
* per-request concentration kappa so the number of distinct experts grows with request
  length as in the source (long prompts stay on topic);
* popularity again, so selection shares stay those of the source;
* coupling lambda (reuse decided for all layers of a token together) so the LRU hit-rate
  curve of each phase's stream matches: correlated reuse across layers shortens LRU stack
  distances even when every layer's own reuse distances are right.

Each iterate is scored (worst LRU gap x 10 + mean statistical mismatch, statistics averaged
over ``seeds`` syntheses) and the best is kept. A second stage raises the chain weight (fresh
draws tilted toward a bank pattern) toward the source's layer-to-layer mutual information
while the score stays within 10 % of the best (cache fidelity first; what was reached is in
``notes.calibration``).

These are the statistics that decide LRU behaviour: reuse distances set hits at small
caches, distinct-expert counts set the working set and cold misses.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import TraceError
from . import stats
from .compare import DEFAULT_COMPARE_FRACTIONS
from .schema import DECODE, PHASE_NAMES, PREFILL, Trace, TraceMeta, make_trace
from .synthetic import (CHAIN_BANK, REUSE_BINS, GateModel, PhaseModel, RoutingModel, sample_arrays)

MIN_TOKENS = 16
POP_PSEUDOCOUNT = 0.05       # per expert and layer
QUANTILES = 21
KAPPA_INF = 1e6              # stands for "no per-request variation"


def _require(trace: Trace) -> None:
    src = trace.path
    T = trace.num_tokens
    if T < MIN_TOKENS:
        raise TraceError(f"has {T} tokens; fitting needs at least {MIN_TOKENS}", source=src)
    ids, starts, ends = trace.request_bounds()
    if int((ends - starts).max()) < 2:
        raise TraceError("every request has a single token: temporal locality cannot be "
                         "estimated (fitting needs a request with 2 or more tokens)", source=src)


PREFIX_MAX_POSITIONS = 64
PREFIX_MIN_SHARE = 0.05          # a pattern enters the bank if this share of requests has it


def _prefix_bank(trace: Trace) -> list[list[tuple[float, np.ndarray]]]:
    """Routing patterns (experts of all layers) that several requests share at the same
    leading position: BOS and chat-template tokens. Stops at the first position with none."""
    ids, starts, ends = trace.request_bounds()
    n_req = ids.size
    if n_req < 2:
        return []
    bank = []
    for pos in range(PREFIX_MAX_POSITIONS):
        rows = starts[(ends - starts) > pos] + pos
        if rows.size < 2:
            break
        ex = np.sort(trace.experts[rows].astype(np.int64), axis=2)          # (n, L, k)
        keys, inv, cnt = np.unique(ex.reshape(rows.size, -1), axis=0, return_inverse=True,
                                   return_counts=True)
        keep = np.flatnonzero((cnt >= 2) & (cnt >= PREFIX_MIN_SHARE * rows.size))
        if keep.size == 0:
            break
        L, k = ex.shape[1:]
        bank.append([(float(cnt[i] / rows.size), keys[i].reshape(L, k)) for i in
                     keep[np.argsort(-cnt[keep], kind="stable")]])
    return bank


def _lengths(trace: Trace) -> list[tuple[int, int]]:
    ids, starts, ends = trace.request_bounds()
    pre = np.add.reduceat((trace.phase == PREFILL).astype(np.int64), starts)
    return [(int(p), int(e - s - p)) for s, e, p in zip(starts, ends, pre)]


# ---------------------------------------------------------------------- statistics
REUSE_MAX_LOG2 = REUSE_BINS[-1][1].bit_length() - 1     # the model's last bin ends at 2^6


def _reuse_fractions(trace: Trace, phases) -> dict[int, np.ndarray]:
    """phase -> (L, len(REUSE_BINS) + 2): fractions of the phase's accesses at reuse distance
    1, 2, 3-4, ..., 33-64, > 64 tokens back (same request), and cold (as
    :func:`stats.reuse_distances`, with the previous uses found once for all phases)."""
    counts = stats._reuse_counts(trace, stats._previous_use(trace.experts)[0], REUSE_MAX_LOG2)
    out = {}
    for p in phases:
        c = counts[:, p].astype(float)
        out[p] = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    return out


def _distinct_counts(trace: Trace, phase: int) -> tuple[np.ndarray, np.ndarray]:
    """(requests, L) number of distinct experts each request's tokens of ``phase`` use at each
    layer, and (requests,) those tokens' counts (requests without such tokens omitted)."""
    mask = trace.phase == phase
    rid = trace.request_id[mask]
    L, E = trace.meta.num_layers, trace.meta.num_experts
    if rid.size == 0:
        return np.zeros((0, L), dtype=np.int64), np.zeros(0, dtype=np.int64)
    ex = trace.experts[mask].astype(np.int64)
    _, req, n_per = np.unique(rid, return_inverse=True, return_counts=True)
    D = np.empty((n_per.size, L), dtype=np.int64)
    for l in range(L):
        key = np.unique(req[:, None] * E + ex[:, l, :])
        D[:, l] = np.bincount(key // E, minlength=n_per.size)
    return D, n_per


def _distinct_per_request(D: np.ndarray, n_per: np.ndarray) -> np.ndarray:
    """(L,): mean over requests (with >= 2 tokens of the phase) of the number of distinct
    experts the request's tokens of that phase use at each layer; NaN if no such request."""
    keep = n_per >= 2
    if not keep.any():
        return np.full(D.shape[1], np.nan)
    return D[keep].sum(axis=0) / int(keep.sum())


def _distinct_by_length(D: np.ndarray, n_per: np.ndarray) -> np.ndarray:
    """(LEN_BUCKETS,): mean over requests and layers of a request's distinct experts per
    layer, by the request's token count in the phase (buckets 2, 3-4, 5-8, ..., > 512);
    NaN where no request falls. The shape of this curve tells how concentrated long
    requests stay (per-request concentration kappa)."""
    out = np.full(LEN_BUCKETS, np.nan)
    if n_per.size == 0:
        return out
    U = D.sum(axis=1) / D.shape[1]
    bucket = np.minimum(np.ceil(np.log2(np.maximum(n_per, 2))).astype(int) - 1, LEN_BUCKETS - 1)
    for b in range(LEN_BUCKETS):
        sel = (bucket == b) & (n_per >= 2)
        if sel.any():
            out[b] = U[sel].mean()
    return out


LEN_BUCKETS = 10


LRU_FRACTIONS = np.array(DEFAULT_COMPARE_FRACTIONS)      # the sizes `trace compare` reports
LRU_MAX_ACCESSES = 2_000_000


def lru_curve(trace: Trace, phase: int, fractions=LRU_FRACTIONS,
              max_accesses: int = LRU_MAX_ACCESSES) -> np.ndarray | None:
    """LRU hit rate of the phase's canonical stream (decode: token by token; prefill: layer
    by layer) at cache sizes = fractions x (L * E) objects; None if the phase is absent."""
    if not (trace.phase == phase).any():
        return None
    st, sd = stats.phase_stream(trace, phase, max_accesses)
    n = trace.meta.num_layers * trace.meta.num_experts
    sizes = [max(1, int(round(f * n))) for f in fractions]
    return np.asarray(stats.lru_hit_counts(sd, sizes), dtype=float) / max(1, st.size)


def _mi(trace: Trace) -> np.ndarray:
    """(L-1,): mutual information (bits) between an expert of layer l and one of l+1."""
    if trace.meta.num_layers < 2:
        return np.zeros(0)
    return np.asarray(stats.mutual_information(stats.transition_counts(trace)), dtype=float)


@dataclass
class _Targets:
    reuse: dict[int, np.ndarray]        # phase -> (L, 9)
    distinct: dict[int, np.ndarray]     # phase -> (L,)
    by_length: dict[int, np.ndarray]    # phase -> (LEN_BUCKETS,)
    mi: np.ndarray | None               # (L-1,); None when not computed (stage 1)
    lru: dict[int, np.ndarray | None]   # phase -> hit rates at LRU_FRACTIONS
    shares: dict[int, np.ndarray]       # phase -> (L, E) selection shares

    FIELDS = ("reuse", "distinct", "by_length", "mi", "lru", "shares")

    @classmethod
    def mean(cls, items: list["_Targets"]) -> "_Targets":
        def avg(xs):
            return None if any(x is None for x in xs) else np.mean(xs, axis=0)
        first = items[0]
        return cls(*[{p: avg([getattr(t, f)[p] for t in items]) for p in getattr(first, f)}
                     if isinstance(getattr(first, f), dict) else avg([getattr(t, f) for t in items])
                     for f in cls.FIELDS])

    @classmethod
    def of(cls, trace: Trace, phases, *, mi: bool = True) -> "_Targets":
        distinct = {p: _distinct_counts(trace, p) for p in phases}
        return cls(_reuse_fractions(trace, phases),
                   {p: _distinct_per_request(*distinct[p]) for p in phases},
                   {p: _distinct_by_length(*distinct[p]) for p in phases},
                   _mi(trace) if mi else None,
                   {p: lru_curve(trace, p) for p in phases},
                   {p: stats.popularity(trace, p) for p in phases})


# ---------------------------------------------------------------------- direct estimates
def _popularity(trace: Trace, phase: int | None) -> np.ndarray:
    L, E = trace.meta.num_layers, trace.meta.num_experts
    mask = np.ones(trace.num_tokens, bool) if phase is None else trace.phase == phase
    ex = trace.experts[mask].astype(np.int64)
    c = np.zeros((L, E))
    for l in range(L):
        c[l] = np.bincount(ex[:, l, :].ravel(), minlength=E)
    c += POP_PSEUDOCOUNT
    return c / c.sum(axis=1, keepdims=True)




def _chain_bank(trace: Trace, seed: int) -> np.ndarray | None:
    """CHAIN_BANK token routings (k experts at every layer) sampled from the trace: the
    cross-layer patterns synthetic tokens lean toward."""
    if trace.meta.num_layers < 2:
        return None
    rng = np.random.default_rng([seed, 5151])
    n = trace.num_tokens
    idx = np.sort(rng.choice(n, size=min(CHAIN_BANK, n), replace=False))
    return trace.experts[idx].astype(np.int64)


def _gate(trace: Trace, phase: int, k: int) -> tuple[GateModel, dict]:
    if trace.scores is None:
        return GateModel(), {"gate": "no gate scores in the source: default logits model"}
    mask = trace.phase == phase
    sc = trace.scores[mask].astype(np.float64).reshape(-1, k)
    if sc.shape[0] == 0:
        return GateModel(), {}
    sc = -np.sort(-sc, axis=1)                     # rank order (also for unordered sources)
    mass = sc.sum(axis=1)
    good = mass > 0
    sc, mass = sc[good], mass[good]
    share = sc / mass[:, None]
    q = np.linspace(0, 1, QUANTILES)
    top1 = np.quantile(share[:, 0], q)
    note = {}
    if k > 1:
        rest = share[:, 1:] / np.maximum(1.0 - share[:, :1], 1e-12)
        prop = rest.mean(axis=0)
        prop = prop / prop.sum()
        v = rest[:, 0].var()
        p0 = prop[0]
        conc = float(np.clip(p0 * (1 - p0) / v - 1.0, 0.5, 1e4)) if v > 0 else 1e4
    else:
        prop, conc = None, 10.0
    normalised = bool(np.abs(mass - 1.0).max() < 1e-3)
    topk = None if normalised else np.clip(np.quantile(mass, q), 0, 1)
    return GateModel(kind="empirical", top1_share=top1.tolist(),
                     rest_proportions=None if prop is None else prop.tolist(),
                     rest_concentration=conc,
                     topk_mass=None if topk is None else topk.tolist()), note


# ---------------------------------------------------------------------- calibration
CALIBRATION_MAX_REQUEST_TOKENS = 512


def _truncate_requests(trace: Trace, cap: int) -> Trace:
    """Keep each request's first ``cap`` tokens (a synthesis step costs the same for one
    long request as for hundreds of short ones)."""
    ids, starts, ends = trace.request_bounds()
    if int((ends - starts).max()) <= cap:
        return trace
    pos = trace.positions()
    return trace._take(pos < cap)


def _subset(trace: Trace, budget: int, blocks: int = 8) -> Trace:
    """The calibration sample: ``blocks`` runs of consecutive requests spread evenly over the
    trace (consecutive, because neighbouring requests can be related and the cache sees
    them in order) until ``budget`` tokens, or everything when it fits; each request cut to
    its first CALIBRATION_MAX_REQUEST_TOKENS tokens. Real and synthetic statistics are both
    computed on this same sample."""
    trace = _truncate_requests(trace, CALIBRATION_MAX_REQUEST_TOKENS)
    ids, starts, ends = trace.request_bounds()
    if trace.num_tokens <= budget:
        return trace
    n = ids.size
    lens = ends - starts
    per_block = budget / blocks
    chosen: list[int] = []
    for b in range(blocks):
        i, tok = int(b * n / blocks), 0
        while i < n and (tok == 0 or tok + lens[i] <= per_block):
            chosen.append(i)
            tok += int(lens[i])
            i += 1
    return trace.select_requests(ids[sorted(set(chosen))])


def _synthesise(model: RoutingModel, lengths, meta: TraceMeta, seed: int, *,
                scores: bool = False) -> Trace:
    """An in-memory synthetic trace of the given (prompt, decode) lengths (calibration,
    validation); ``scores`` adds gate scores (drawn from the same seeded stream)."""
    P = np.array([p for p, _ in lengths], dtype=np.int64)
    D = np.array([d for _, d in lengths], dtype=np.int64)
    parts = list(sample_arrays(model, P, D, seed, scores=scores))
    ex = np.concatenate([b[2] for b in parts])
    sc = np.concatenate([b[3] for b in parts]) if scores else None
    rid = np.repeat(np.arange(P.size), P + D)
    tok = np.concatenate([np.arange(p + d) for p, d in zip(P, D)])
    ph = np.concatenate([(np.arange(p + d) >= p) for p, d in zip(P, D)]).astype(np.int8)
    return make_trace(meta, rid, tok, ph, ex, scores=sc, validate=False)


def _loss(real: _Targets, sim: _Targets, phases) -> float:
    """Calibration score: the worst LRU hit-rate gap over phases and cache sizes (what the
    simulator is sensitive to), in fractions, x 10, plus the mean statistical mismatch."""
    worst = 0.0
    stat = 0.0
    for p in phases:
        a, b = real.lru[p], sim.lru[p]
        if a is not None and b is not None:
            worst = max(worst, float(np.abs(a - b).max()))
        stat += float(np.abs(real.reuse[p] - sim.reuse[p]).sum(axis=1).mean())
        stat += float(stats.tvd(real.shares[p], sim.shares[p]).mean())
        for x, y in ((real.distinct[p], sim.distinct[p]), (real.by_length[p], sim.by_length[p])):
            ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
            if ok.any():
                stat += float(np.mean(np.abs(x[ok] - y[ok]) / x[ok]))
    return 10.0 * worst + stat / max(1, len(phases))


def _update(model: RoutingModel, real: _Targets, sim: _Targets, phases, eta: float) -> float:
    """One multiplicative step toward the targets; returns the current mismatch."""
    nb = len(REUSE_BINS)
    err = 0.0
    for p in phases:
        ph = model.phases[PHASE_NAMES[p]]
        hr, hs = real.reuse[p][:, :nb], sim.reuse[p][:, :nb]
        # copies from bin b show up (mostly) as reuse in bin b: an additive, Newton-like step
        q = ph.stickiness[:, None] * ph.reuse_bins
        q = np.clip(q + eta * (hr - hs), 0.0, None)
        tot = q.sum(axis=1)
        scale = np.where(tot > 0.97, 0.97 / np.maximum(tot, 1e-12), 1.0)
        q = q * scale[:, None]
        tot = q.sum(axis=1)
        ph.stickiness = np.clip(tot, 0.0, 0.97)
        ph.reuse_bins = np.where(tot[:, None] > 0, q / np.maximum(tot[:, None], 1e-12),
                                 ph.reuse_bins)
        err += float(np.abs(hr - hs).sum(axis=1).mean())
        # distinct experts per request and layer <- repeat bias (additive, in log space)
        ur, us = real.distinct[p], sim.distinct[p]
        ok = np.isfinite(ur) & np.isfinite(us) & (us > 0) & (ur > 0)
        if ok.any():
            step = np.where(ok, np.log(np.where(ok, ur, 1.0) / np.where(ok, us, 1.0)), 0.0)
            ph.repeat_bias = np.clip(ph.repeat_bias + 8.0 * eta * step, -5.0, 5.0)
            err += float(np.mean(np.abs(ur[ok] - us[ok]) / ur[ok]))
        # how distinct-expert counts grow with request length <- per-request concentration:
        # long requests with more distinct experts than real (relative to short ones) ->
        # concentrate them (smaller kappa), and back toward inf
        br, bs = real.by_length[p], sim.by_length[p]
        ok = np.isfinite(br) & np.isfinite(bs) & (br > 0) & (bs > 0)
        if ok.sum() >= 2:
            idx = np.flatnonzero(ok)
            lg = np.log(bs[idx] / br[idx])
            w = idx - idx.mean()                   # positive for the longer buckets
            slope = float(np.sum(w * (lg - lg.mean())) / max(np.sum(w * w), 1e-12))
            kap = np.minimum(ph.concentration, KAPPA_INF)
            if slope > 0.002 and (kap >= KAPPA_INF * 0.999).all():
                kap = np.full_like(kap, 2000.0)   # start concentrating from mild
            kap = np.clip(kap * np.exp(-25.0 * eta * slope), 1.0, KAPPA_INF)
            ph.concentration = np.where(kap >= KAPPA_INF * 0.999, np.inf, kap)
            err += abs(slope)
        # marginal popularity <- shares (chains and the repeat bias bend them)
        sr, ss = real.shares[p], sim.shares[p]
        pop = ph.popularity * ((sr + 1e-4) / (ss + 1e-4)) ** eta
        ph.popularity = pop / pop.sum(axis=1, keepdims=True)
        err += float(stats.tvd(sr, ss).mean())
        # LRU hit rates of the phase stream <- coupling of reuse across a token's layers
        # (correlated reuse shortens stack distances: more coupling, more hits)
        a, b = real.lru[p], sim.lru[p]
        if a is not None and b is not None:
            gap = float(np.mean(a - b))
            ph.coupling = float(np.clip(ph.coupling + 2.5 * eta * gap, 0.0, 1.0))
            err += float(np.abs(a - b).max())
    return err


CHAIN_WEIGHT_STEPS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)    # stage 2


def fit_trace(trace: Trace, *, seed: int = 0, calibrate: bool = True, iterations: int = 24,
              calibration_tokens: int = 12_000, seeds: int | None = None,
              progress: Callable[[str], None] | None = None, quiet: bool = True) -> RoutingModel:
    """Estimate a :class:`RoutingModel` from ``trace`` (see the module docstring).
    ``progress`` receives one line per calibration step; ``quiet=False`` draws a progress
    bar over the steps (on a terminal)."""
    from ..config.strict import check_arg
    from ..progress import bar
    iterations = check_arg(iterations, "iterations", integer=True, min=0)
    seed = check_arg(seed, "seed", integer=True, min=0)
    steps = 1 + (iterations + 1 + len(CHAIN_WEIGHT_STEPS) if calibrate else 0)
    with bar(steps, desc="trace fit", unit="step", quiet=quiet) as pb:
        return _fit_trace(trace, seed=seed, calibrate=calibrate, iterations=iterations,
                          calibration_tokens=calibration_tokens, seeds=seeds,
                          progress=progress, pb=pb)


def _fit_trace(trace: Trace, *, seed, calibrate, iterations, calibration_tokens, seeds,
               progress, pb) -> RoutingModel:
    _require(trace)
    say = progress or (lambda _m: None)
    m = trace.meta
    L, E, k = m.num_layers, m.num_experts, m.top_k
    counts = trace.phase_counts()
    present = [p for p in (PREFILL, DECODE) if counts[PHASE_NAMES[p]] > 0]
    notes: dict[str, Any] = {"fitted_from": trace.path, "tokens": dict(counts),
                             "requests": trace.num_requests(), "source_model": m.model}
    phases: dict[str, PhaseModel] = {}
    for p in present:
        name = PHASE_NAMES[p]
        gate, gnote = _gate(trace, p, k)
        notes.update({f"{name}_{k_}": v for k_, v in gnote.items()})
        phases[name] = PhaseModel(popularity=_popularity(trace, p), stickiness=np.zeros(L),
                                  reuse_bins=np.tile(np.eye(len(REUSE_BINS))[0], (L, 1)),
                                  concentration=np.full(L, np.inf), gate=gate)
    for p in (PREFILL, DECODE):
        name = PHASE_NAMES[p]
        if name not in phases:
            other = PHASE_NAMES[present[0]]
            src = phases[other]
            phases[name] = PhaseModel(popularity=src.popularity.copy(), stickiness=src.stickiness,
                                      reuse_bins=src.reuse_bins,
                                      concentration=src.concentration, gate=src.gate)
            notes[f"missing_{name}"] = (f"the source has no {name} tokens: {name} parameters are "
                                        f"copies of the {other} ones")
    if m.expert_order == "unordered":
        notes["expert_order"] = "unordered in the source: gate ranks come from scores only"
    model = RoutingModel(L, E, k, model=m.model, norm_topk=trace.scores is None or bool(
        np.abs(trace.scores.sum(axis=2) - 1.0).max() < 1e-3), phases=phases,
        chain_bank=_chain_bank(trace, seed), lengths=_lengths(trace),
        prefix=_prefix_bank(trace),
        source=f"fitted from {trace.path} ({trace.summary_line()})", notes=notes)
    pb.update()
    if calibrate:
        say("direct estimates done; calibrating")
        sub = _subset(trace, calibration_tokens)
        lengths = _lengths(sub)
        if seeds is None:     # small samples are noisy and cheap: average more syntheses
            seeds = int(np.clip(round(10_000 / max(1, sub.num_tokens)), 2, 4))
        real = _Targets.of(sub, present)
        history = []
        # start reuse from the excess of real reuse over what chance alone gives (rho = 0)
        base_trace = _synthesise(model, lengths, m, seed)
        base_reuse = _reuse_fractions(base_trace, present)
        nb = len(REUSE_BINS)
        for p in present:
            ph = model.phases[PHASE_NAMES[p]]
            q = np.clip(real.reuse[p][:, :nb] - base_reuse[p][:, :nb], 0.0, None) * 1.1
            tot = q.sum(axis=1)
            q = q * np.where(tot > 0.9, 0.9 / np.maximum(tot, 1e-12), 1.0)[:, None]
            tot = q.sum(axis=1)
            ph.stickiness = tot
            ph.reuse_bins = np.where(tot[:, None] > 0, q / np.maximum(tot[:, None], 1e-12),
                                     ph.reuse_bins)
        def score(mdl, mi=False):
            # statistics averaged over a few syntheses: less noise in the score and steps;
            # the cross-layer MI only matters to stage 2
            sim = _Targets.mean([_Targets.of(_synthesise(mdl, lengths, m, seed + j), present,
                                             mi=mi) for j in range(seeds)])
            return sim, _loss(real, sim, present)

        # Stage 1: what shapes cache behaviour (reuse, repeat bias, kappa, coupling, shares).
        # Every iterate is scored and the best one kept (a single synthesis is noisy, so
        # rejecting worse steps would stall).
        best, best_loss = None, math.inf
        for it in range(iterations + 1):
            sim, loss = score(model)
            history.append(round(loss, 4))
            say(f"calibration {it}/{iterations}: loss {loss:.4f}")
            pb.update()
            pb.set_postfix_str(f"calibration loss {loss:.4f}")
            if loss < best_loss:
                best, best_loss = copy.deepcopy(model), loss
            if it == iterations:
                break
            _update(model, real, sim, present, eta=0.8 if it < iterations // 2 else 0.5)
            for p in (PREFILL, DECODE):           # absent phases follow the present one
                if p not in present:
                    src = model.phases[PHASE_NAMES[present[0]]]
                    dst = model.phases[PHASE_NAMES[p]]
                    dst.stickiness, dst.reuse_bins = src.stickiness, src.reuse_bins
                    dst.concentration, dst.repeat_bias = src.concentration, src.repeat_bias
                    dst.coupling = src.coupling
        model = best
        # Stage 2: cross-layer structure. Raise the chain weight (fresh draws tilted toward a
        # recorded token's cross-layer pattern) toward the source's layer-to-layer mutual
        # information while the score stays within 10 % of the best.
        mi_steps = []
        if model.chain_bank is not None and real.mi.size:
            for gamma in CHAIN_WEIGHT_STEPS:
                cand = copy.deepcopy(model)
                for ph in cand.phases.values():
                    ph.chain_weight = np.full(L, gamma)
                sim, loss = score(cand, mi=True)
                mi_steps.append((gamma, round(float(sim.mi.mean()), 4), round(loss, 4)))
                say(f"cross-layer chain weight {gamma}: MI {sim.mi.mean():.4f} of "
                    f"{real.mi.mean():.4f} bits, loss {loss:.4f}")
                pb.update()
                pb.set_postfix_str(f"cross-layer weight {gamma}")
                if loss > best_loss * 1.10 + 0.02:
                    break
                model = cand
                if sim.mi.mean() >= real.mi.mean():
                    break
        model.notes["calibration"] = {
            "requests": sub.num_requests(), "tokens": sub.num_tokens, "iterations": iterations,
            "seeds": seeds, "loss": history, "best_loss": round(best_loss, 4),
            "cross_layer_mi_bits": {"source": round(float(real.mi.mean()), 4) if real.mi.size else None,
                                    "chain_weight_steps (weight, mi, loss)": mi_steps}}
    return model.validate()


def fit_counts(counts, *, num_layers: int | None = None) -> RoutingModel:
    """A model from aggregate per-expert counts (``traces/counts.py``): only popularity is
    known, at the recorded layers; everything else is stated as missing in ``notes``."""
    from ..models.spec import find_model
    from ..config.strict import check_arg
    num_layers = check_arg(num_layers, "num_layers", integer=True, min=1, optional=True)
    E, k = counts.num_experts, counts.top_k
    spec = find_model(counts.model)
    L = num_layers or counts.model_num_layers or (spec.moe_layers if spec else None)
    if not L:
        raise TraceError("the counts do not say how many MoE layers the model has; pass "
                         "num_layers", source=counts.path)
    pop_rec = counts.popularity()                       # (n_recorded, E)
    rec = list(counts.model_layers)
    pop = np.empty((L, E))
    for l in range(L):
        nearest = min(range(len(rec)), key=lambda i: (abs(rec[i] - l), rec[i]))
        pop[l] = pop_rec[nearest]
    pop = pop + POP_PSEUDOCOUNT / max(1, E)
    pop /= pop.sum(axis=1, keepdims=True)
    missing_layers = [l for l in range(L) if l not in rec]
    phase = PhaseModel(popularity=pop, stickiness=np.zeros(L),
                       reuse_bins=np.tile(np.eye(len(REUSE_BINS))[0], (L, 1)),
                       concentration=np.full(L, np.inf))
    notes = {
        "fitted_from": counts.path, "source_model": counts.model,
        "recorded_layers": rec,
        "missing": {
            "layers": (f"popularity of layers {missing_layers} is copied from the nearest "
                       "recorded layer" if missing_layers else "none"),
            "temporal_locality": "unknown (counts have no token order): stickiness 0, tokens "
                                 "are independent draws",
            "cross_layer": "cross-layer patterns unknown (the counts pair layers "
                           f"{counts.layer_pairs} only): no bank, layers independent",
            "gate_scores": "unknown: default logits model",
            "request_lengths": "unknown: give --prompt-len and --decode-len",
            "phases": "no prefill/decode split: both phases use the same popularity",
        },
    }
    return RoutingModel(L, E, k, model=spec.name if spec else counts.model, norm_topk=True,
                        phases={"prefill": phase, "decode": PhaseModel(
                            popularity=pop.copy(), stickiness=np.zeros(L),
                            reuse_bins=phase.reuse_bins.copy(),
                            concentration=np.full(L, np.inf))},
                        source=f"fitted from aggregate counts {counts.path}",
                        notes=notes).validate()
