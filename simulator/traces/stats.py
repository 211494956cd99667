"""Statistics of a routing trace: ``moesim trace stats`` and the pieces of ``trace compare``.

Every statistic is a separate, vectorised numpy function that takes a :class:`Trace` (or the
arrays another statistic returned) and returns plain arrays or dicts, so a real and a synthetic
trace can be compared statistic by statistic. :func:`trace_stats` bundles them into one
JSON-serialisable dict and :func:`format_stats` prints it.

Conventions (T tokens, L MoE layers, E experts per layer, k experts per token and layer):

* an *access* is one (token, layer, slot) use of an expert; a trace holds T*L*k of them;
* ``phase`` arguments take ``None`` (all tokens), ``"prefill"``/``"decode"`` or 0/1;
* *shares* are fractions of accesses (rows sum to 1); distances are counted in tokens of the
  trace (index differences, so 1 = the previous token of the trace) or in distinct objects;
* an LRU *object* is a (layer, expert) pair; there are L*E of them.

The one non-obvious algorithm is the exact LRU stack distance of all T*L*k accesses
(:func:`stack_distances`); its notes are above :func:`_grouped_stack_distances`.
"""
from __future__ import annotations

import math
import textwrap
from typing import Any, Iterable

import numpy as np

from ..errors import MoesimError
from ..serialize import to_plain
from .schema import DECODE, PHASE_NAMES, PREFILL, Trace

# Reuse-distance bins are 1, 2, 3-4, 5-8, ..., (2^(m-1), 2^m], then "> 2^m" and "cold".
DEFAULT_REUSE_MAX_LOG2 = 10
DEFAULT_CACHE_FRACTIONS = (0.10, 0.25, 0.50, 0.75, 0.90)
DEFAULT_SCORE_THRESHOLDS = (0.5, 0.7, 0.9)
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# ====================================================================== helpers
def _phase_code(phase) -> int | None:
    """None -> None; 'prefill'/0 -> 0; 'decode'/1 -> 1."""
    if phase is None:
        return None
    if isinstance(phase, str):
        if phase in PHASE_NAMES:
            return PHASE_NAMES.index(phase)
    elif isinstance(phase, (int, np.integer)) and int(phase) in (PREFILL, DECODE):
        return int(phase)
    raise MoesimError(f"phase must be None, 'prefill', 'decode', 0 or 1; got {phase!r}")


def _token_mask(trace: Trace, phase) -> np.ndarray | None:
    """(T,) bool mask of the tokens of ``phase``, or None for all tokens."""
    code = _phase_code(phase)
    return None if code is None else trace.phase == code


def _words(num_experts: int) -> int:
    """uint64 words needed for a bit set over ``num_experts`` ids."""
    return (int(num_experts) + 63) // 64


def _bits(ids: np.ndarray, nw: int) -> np.ndarray:
    """ids (...) -> (..., nw) uint64 one-hot bit sets."""
    ids = np.asarray(ids)
    out = np.zeros(ids.shape + (nw,), dtype=np.uint64)
    low = np.left_shift(np.uint64(1), (ids & 63).astype(np.uint64))
    if nw == 1:
        out[..., 0] = low
    else:
        np.put_along_axis(out, (ids.astype(np.int64) >> 6)[..., None], low[..., None], axis=-1)
    return out


def _cell_masks(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(T, L, k) expert ids -> (T, L, nw) uint64: the set of experts of each (token, layer)."""
    T, L, K = experts.shape
    nw = _words(num_experts)
    masks = np.zeros((T, L, nw), dtype=np.uint64)
    for s in range(K):           # k is small: one pass per slot keeps temporaries at (T, L)
        masks |= _bits(experts[:, :, s], nw)
    return masks


def _popcount(words: np.ndarray) -> np.ndarray:
    """Number of set bits over the last axis (the words of one bit set), as int32."""
    c = np.bitwise_count(words)
    if words.shape[-1] == 1:
        return c[..., 0].astype(np.int32)
    return c.sum(axis=-1, dtype=np.int32)


def _summary(x: np.ndarray) -> dict[str, float]:
    """min / median / mean / max of a 1-D array (zeros for an empty one)."""
    if x.size == 0:
        return {"min": 0.0, "median": 0.0, "mean": 0.0, "max": 0.0}
    return {"min": float(x.min()), "median": float(np.median(x)), "mean": float(x.mean()),
            "max": float(x.max())}


def _previous_use(experts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Previous use of the same expert at the same layer, over the whole trace.

    Returns ``gap`` (T, L, k) int32: tokens back to the last earlier token that chose this
    expert at this layer (0 = none, i.e. a first use in the trace) and ``prev_slot`` (T, L, k):
    that token's slot holding the expert. Requests are ignored here; callers that need
    within-request distances check the request of token ``t - gap``.
    """
    T, L, K = experts.shape
    gap = np.zeros((T, L, K), dtype=np.int32)
    prev_slot = np.zeros((T, L, K), dtype=np.int16 if K < 32768 else np.int32)
    for layer in range(L):
        flat = np.ascontiguousarray(experts[:, layer, :]).ravel()
        # Stable sort by expert keeps each expert's uses in trace order (radix sort for the
        # uint8/uint16 ids of a trace); neighbours with the same expert are consecutive uses.
        order = np.argsort(flat, kind="stable")
        same = flat[order[1:]] == flat[order[:-1]]
        cur, prev = order[1:][same], order[:-1][same]
        g = np.zeros(flat.size, dtype=np.int32)
        g[cur] = cur // K - prev // K
        ps = np.zeros(flat.size, dtype=prev_slot.dtype)
        ps[cur] = prev % K
        gap[:, layer, :] = g.reshape(T, K)
        prev_slot[:, layer, :] = ps.reshape(T, K)
    return gap, prev_slot


# ====================================================================== 1. counts
def basic_counts(trace: Trace) -> dict[str, Any]:
    """Sizes of the trace.

    requests; tokens per phase; tokens per request per phase (min/median/mean/max over all
    requests, a request without tokens of a phase counting 0); accesses = T*L*k (token, layer,
    slot uses of an expert), in total and per phase.
    """
    ids, starts, ends = trace.request_bounds()
    per_token = trace.num_layers * trace.top_k
    dec = (trace.phase == DECODE).astype(np.int64)
    n_dec = np.add.reduceat(dec, starts) if starts.size else np.zeros(0, np.int64)
    n_all = ends - starts
    n_pre = n_all - n_dec
    pc = trace.phase_counts()
    return {
        "requests": int(ids.size),
        "tokens": int(trace.num_tokens),
        "prefill_tokens": pc["prefill"],
        "decode_tokens": pc["decode"],
        "requests_with_prefill": int(np.count_nonzero(n_pre)),
        "requests_with_decode": int(np.count_nonzero(n_dec)),
        "tokens_per_request": {"prefill": _summary(n_pre), "decode": _summary(n_dec),
                               "all": _summary(n_all)},
        "accesses": int(trace.num_accesses),
        "prefill_accesses": pc["prefill"] * per_token,
        "decode_accesses": pc["decode"] * per_token,
    }


# ====================================================================== 2. popularity
def popularity(trace: Trace, phase=None) -> np.ndarray:
    """(L, E) float64: share of a layer's accesses that went to each expert.

    Each row sums to 1 (a row of zeros if the phase has no tokens).
    """
    mask = _token_mask(trace, phase)
    ex = trace.experts if mask is None else trace.experts[mask]
    L, E = trace.num_layers, trace.meta.num_experts
    counts = np.zeros((L, E), dtype=np.int64)
    for layer in range(L):
        counts[layer] = np.bincount(ex[:, layer, :].ravel(), minlength=E)[:E]
    tot = counts.sum(axis=1, keepdims=True)
    return counts / np.where(tot > 0, tot, 1)


def top_experts(pop: np.ndarray, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` most popular experts of each layer: (ids (L, n) int64, shares (L, n)).

    Ties go to the lower expert id.
    """
    pop = np.asarray(pop, dtype=np.float64)
    ids = np.argsort(-pop, axis=-1, kind="stable")[..., :n]
    return ids.astype(np.int64), np.take_along_axis(pop, ids, axis=-1)


def gini(pop: np.ndarray) -> np.ndarray:
    """Gini coefficient of the E shares of each row (dimensionless).

    G = sum_i sum_j |x_i - x_j| / (2 E sum_i x_i): 0 for a uniform row, 1 - 1/E when one
    expert takes every access. NaN for an all-zero row.
    """
    x = np.sort(np.asarray(pop, dtype=np.float64), axis=-1)
    E = x.shape[-1]
    i = np.arange(1, E + 1, dtype=np.float64)
    tot = x.sum(axis=-1)
    # With x sorted ascending, sum_ij |x_i - x_j| = 2 sum_i (2i - E - 1) x_i.
    num = ((2 * i - E - 1) * x).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, num / (E * tot), np.nan)


def normalized_entropy(pop: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row divided by ln E (dimensionless, 1 = uniform, 0 = one expert).

    Rows are normalised first; NaN for an all-zero row or E = 1.
    """
    p = np.asarray(pop, dtype=np.float64)
    E = p.shape[-1]
    tot = p.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = p / tot
        h = -np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0).sum(axis=-1)
        out = h / math.log(E) if E > 1 else np.full(h.shape, np.nan)
    return np.where(tot[..., 0] > 0, out, np.nan)


def tvd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation distance 0.5 * sum |p - q| over the last axis (0 = equal, 1 = disjoint)."""
    return 0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum(axis=-1)


# ====================================================================== 3. temporal overlap
def _overlap_counts(trace: Trace, masks: np.ndarray) -> np.ndarray:
    """(T-1, L) int32: |S_t ∩ S_(t-1)| for every consecutive pair of trace tokens."""
    return _popcount(masks[1:] & masks[:-1])


def consecutive_overlap(trace: Trace, phase=None, *, _inter: np.ndarray | None = None
                        ) -> dict[str, Any]:
    """Mean of |S_t ∩ S_(t-1)| / k over consecutive token pairs (fraction of the k experts a
    token shares with the previous token at the same layer).

    A pair counts only if both tokens belong to the same request and the same phase (and to
    ``phase`` if given); a request boundary or the prefill -> decode switch breaks the chain.
    Returns ``per_layer`` (L,), ``overall`` (the mean over layers, equal to the pooled mean
    since every layer has the same pairs), ``pairs`` (number of token pairs) and ``baseline``
    = k/E, the value for independent uniformly random k-subsets: E|S ∩ S'| = k * k/E.
    """
    L, E, k = trace.num_layers, trace.meta.num_experts, trace.top_k
    if _inter is None:
        _inter = _overlap_counts(trace, _cell_masks(trace.experts, E))
    valid = (trace.request_id[1:] == trace.request_id[:-1]) & (trace.phase[1:] == trace.phase[:-1])
    code = _phase_code(phase)
    if code is not None:
        valid &= trace.phase[1:] == code
    pairs = int(np.count_nonzero(valid))
    if pairs:
        per_layer = _inter[valid].sum(axis=0, dtype=np.int64) / (pairs * k)
    else:
        per_layer = np.full(L, np.nan)
    return {"per_layer": per_layer,
            "overall": float(per_layer.mean()) if pairs else float("nan"),
            "pairs": pairs, "baseline": k / E}


# ====================================================================== 4. reuse distance
def reuse_bin_labels(max_log2: int = DEFAULT_REUSE_MAX_LOG2) -> list[str]:
    """Labels of the reuse-distance bins: 1, 2, 3-4, 5-8, ..., >2^max_log2, cold."""
    labels = ["1", "2"]
    for m in range(2, max_log2 + 1):
        labels.append(f"{(1 << (m - 1)) + 1}-{1 << m}")
    return labels[:max_log2 + 1] + [f">{1 << max_log2}", "cold"]


def _reuse_counts(trace: Trace, gap: np.ndarray, max_log2: int) -> np.ndarray:
    """(L, 2, bins) int64 reuse-distance histogram per layer and phase (prefill, decode)."""
    T, L, K = trace.experts.shape
    nb = max_log2 + 3
    top = 1 << max_log2
    # lut[d] = bin of distance d: 0 -> cold, 1 -> "1", 2 -> "2", 3..4 -> "3-4", ...,
    # top + 1 (any larger distance, clipped) -> ">top"
    d = np.arange(top + 2)
    lut = np.empty(top + 2, dtype=np.int32)
    lut[1:] = np.frexp((d[1:] - 1).astype(np.float64))[1]    # ceil(log2 d) for d >= 1
    lut[top + 1] = nb - 2
    lut[0] = nb - 1
    lut = lut[:, None] + np.array([0, nb], dtype=np.int32)   # (top+2, phase): phase offset
    # Requests are contiguous: the earlier use is in the same request iff gap <= position of
    # the token within its request's run of tokens.
    pos = trace.positions().astype(np.int32)[:, None]
    ph = (trace.phase == DECODE).astype(np.intp)[:, None]
    counts = np.zeros((L, 2, nb), dtype=np.int64)
    for layer in range(L):
        g = gap[:, layer, :]                                   # (T, k)
        b = lut[np.where(g <= pos, np.minimum(g, top + 1), 0), ph]
        counts[layer] = np.bincount(b.ravel(), minlength=2 * nb).reshape(2, nb)
    return counts


def _reuse_result(counts: np.ndarray, labels: list[str]) -> dict[str, Any]:
    pooled = counts.sum(axis=0)
    tot = counts.sum(axis=1, keepdims=True)
    return {"labels": labels, "counts": counts,
            "fractions": counts / np.where(tot > 0, tot, 1),
            "pooled_counts": pooled,
            "pooled_fractions": pooled / max(int(pooled.sum()), 1),
            "accesses": int(pooled.sum())}


def reuse_distances(trace: Trace, phase=None, *, max_log2: int = DEFAULT_REUSE_MAX_LOG2
                    ) -> dict[str, Any]:
    """Histogram of the reuse distance of every access, per layer and pooled.

    Reuse distance of access (t, layer, e): tokens (trace index difference, 1 = previous
    token) back to the last earlier token *of the same request* that chose e at this layer;
    "cold" if there is none. Bins: 1, 2, 3-4, ..., (2^(m-1), 2^m] for m <= ``max_log2``, then
    ">2^max_log2" and "cold". ``phase`` selects which accesses are counted; the earlier use may
    be in either phase (a decode token's expert used during the prompt is a reuse).
    Returns ``labels``, ``counts`` (L, bins) int64, ``fractions`` (L, bins), ``pooled_counts``,
    ``pooled_fractions`` (bins,) and ``accesses``.
    """
    code = _phase_code(phase)
    counts = _reuse_counts(trace, _previous_use(trace.experts)[0], max_log2)
    counts = counts.sum(axis=1) if code is None else counts[:, code]
    return _reuse_result(counts, reuse_bin_labels(max_log2))


# ====================================================================== 5. LRU stack distance
# Exact LRU stack distances of a *grouped* access stream, in O(N (log N + W)) numpy work.
#
# The stream is a sequence of groups (tokens); a group holds one cell per layer, layers in
# order; a cell holds distinct objects (its k experts). An object is (layer, expert), so objects
# of different layers never coincide. For access i = (token t, layer l, slot s) of expert e
# whose previous access was (t' = t - w, l, s'), the stack distance is the number of distinct
# objects accessed strictly between the two, which splits by layer:
#
#   layer l' < l : experts of l' in tokens [t'+1, t]     (t' used l' before e, t after it)
#   layer l' > l : experts of l' in tokens [t', t-1]
#   layer l      : experts of l in tokens [t'+1, t-1], plus the slots after s' in (t', l) and
#                  the slots before s in (t, l)
#
# Every window is w (or w-1) tokens long, so with U_w[x, l'] the bit set of layer-l' experts
# in tokens [x-w+1, x] and PF_w[x, l] = sum_{l' < l} popcount(U_w[x, l']):
#
#   sd = PF_w[t, l] + (PF_w[t-1, L] - PF_w[t-1, l+1])
#        + popcount(U_(w-1)[t-1, l] | after(t', l, s') | before(t, l, s)).
#
# Short gaps (w <= W) are answered while U_w is built up one token at a time (U_w = U_(w-1)
# OR-ed with the masks shifted by w-1), chunk of tokens by chunk of tokens; long gaps use a
# sparse table of OR-ed windows of 2^j tokens (two overlapping windows cover any length in
# [2^j, 2^(j+1)]) and count layer by layer. W is chosen from the gap histogram to minimise
# the estimated work. Tested against an OrderedDict LRU in tests/test_trace_stats.py.

# Rough per-element costs (relative) of the two paths, measured on the synthetic benchmark.
_COST_SHORT_STEP = 1.0      # per (token, layer, word) per step of the short-gap loop
_COST_LONG_QUERY = 9.0      # per (long access, layer, word)
_COST_LEVEL = 1.0           # per (token, layer, word) per sparse-table level


def _choose_window(gap: np.ndarray, T: int, L: int, nw: int, w_max: int = 254) -> int:
    """Split W between the short- and long-gap paths minimising the estimated work."""
    # The choice only affects speed: a subsample of tokens is enough for the histogram.
    step = max(1, gap.shape[0] // max(1, (1 << 21) // max(1, gap[0].size)))
    hist = np.bincount(np.minimum(gap[::step].ravel(), w_max + 1), minlength=w_max + 2) * step
    # long(W) = accesses with gap > W (cold accesses have gap 0 and cost nothing)
    long_counts = hist[::-1].cumsum()[::-1]                    # long_counts[j] = #(gap >= j)
    Ws = np.arange(1, w_max + 1)
    n_long = long_counts[Ws + 1]
    levels = max(1, int(T).bit_length())
    cost = (_COST_SHORT_STEP * Ws * T * L * nw
            + _COST_LONG_QUERY * n_long * L * nw
            + np.where(n_long > 0, _COST_LEVEL * levels * T * L * nw, 0))
    return int(Ws[int(np.argmin(cost))])


def _grouped_stack_distances(X: np.ndarray, num_ids: int, gap: np.ndarray | None = None,
                             prev_slot: np.ndarray | None = None, *, window: int | None = None,
                             chunk_cells: int = 1 << 19) -> np.ndarray:
    """LRU stack distances of the token-major stream of X (T, L, K) (see the notes above).

    X holds ids in [0, num_ids) per layer, distinct within each (token, layer) cell. Returns
    (T, L, K) int32: distinct other objects since the previous access of the same object,
    -1 for a first access.
    """
    X = np.asarray(X)
    T, L, K = X.shape
    nw = _words(num_ids)
    if gap is None or prev_slot is None:
        gap, prev_slot = _previous_use(X)
    W = _choose_window(gap, T, L, nw) if window is None else int(max(1, min(window, 254)))
    gf = gap.reshape(-1)
    psf = prev_slot.reshape(-1)
    LK = L * K
    sd = np.full(T * LK, -1, dtype=np.int32)
    chunk = max(1, chunk_cells // LK)
    slots = np.arange(K)

    # ---- short gaps: 1 <= w <= W
    for x0 in range(0, T, chunk):
        x1 = min(T, x0 + chunk)
        gc = gf[x0 * LK:x1 * LK]
        sd_c = sd[x0 * LK:x1 * LK]                             # views of this chunk
        ps_c = psf[x0 * LK:x1 * LK]
        sel = np.flatnonzero((gc >= 1) & (gc <= W)).astype(np.int32)
        if sel.size == 0:
            continue
        base = max(0, x0 - W - 1)           # earliest token a window of this chunk reaches
        n = x1 - base
        Xc = X[base:x1]
        # per access: OR of the slots before it (excl) and after it (after) in its cell
        incl = np.empty((n, L, K, nw), dtype=np.uint64)
        incl[:, :, 0] = _bits(Xc[:, :, 0], nw)
        for s in range(1, K):
            incl[:, :, s] = incl[:, :, s - 1] | _bits(Xc[:, :, s], nw)
        mask = np.ascontiguousarray(incl[:, :, K - 1])        # (n, L, nw) cell sets
        excl = incl ^ _bits(Xc, nw)
        after = mask[:, :, None, :] & ~incl
        excl_f = excl.reshape(n * LK, nw)
        after_f = after.reshape(n * LK, nw)
        del incl, excl, after
        wsel = gc[sel].astype(np.uint8)
        order = np.argsort(wsel, kind="stable")
        sel = sel[order]
        bounds = np.searchsorted(wsel[order], np.arange(1, W + 2))
        # chunk-local coordinates of every selected access
        off = np.int32(x0 - base)
        acc = sel + off * LK                                   # access index in the chunk
        cell = acc // K
        prev_acc = (cell * K + ps_c[sel]).astype(np.int32)    # minus w*LK below
        U = np.zeros((n, L, nw), dtype=np.uint64)
        U_f = U.reshape(n * L, nw)
        PF = np.zeros((n, L + 1), dtype=np.int32)
        PF_f = PF.reshape(-1)
        if L > 1:
            t_all = cell // L
            r_all = t_all * (L + 1) + (cell - t_all * L)       # PF index of (t, l)
            e_all = t_all * (L + 1) - 1                        # PF index of (t-1, L)
        for w in range(1, W + 1):
            a, b = bounds[w - 1], bounds[w]
            if a < b:
                c = cell[a:b]
                same = _popcount(U_f[c - L] | after_f[prev_acc[a:b] - w * LK] | excl_f[acc[a:b]])
            if w <= n:
                U[w - 1:] |= mask[:n - w + 1]                     # U now holds U_w
            if a < b:
                if L > 1:
                    np.cumsum(_popcount(U), axis=1, out=PF[:, 1:])
                    r = r_all[a:b]
                    # PF[t, l] + PF[t-1, L] - PF[t-1, l+1]
                    same += PF_f[r] + PF_f[e_all[a:b]] - PF_f[r - L]
                sd_c[sel[a:b]] = same

    # ---- long gaps: w > W, by sparse-table level j = floor(log2(w - 1))
    lidx = np.flatnonzero(gf > W)
    if lidx.size:
        wl = gf[lidx].astype(np.int64)
        lev = np.frexp((wl - 1).astype(np.float64))[1] - 1
        V = _cell_masks(X, num_ids)              # level 0: windows of one token
        lar = np.arange(L)
        batch = max(1, (1 << 19) // (L * nw))
        for j in range(int(lev.max()) + 1):
            if j > 0:
                h = 1 << (j - 1)
                np.bitwise_or(V[h:], V[:-h], out=V[h:])    # windows of 2^j tokens ending at x
            at = np.flatnonzero(lev == j)
            p2 = 1 << j
            for c0 in range(0, at.size, batch):
                q = lidx[at[c0:c0 + batch]]
                w = wl[at[c0:c0 + batch]]
                t, rem = np.divmod(q, LK)
                l, s = np.divmod(rem, K)
                tp = t - w
                # layers before l: tokens [t-w+1, t]; after l: [t-w, t-1]; l: [t-w+1, t-1]
                c1 = _popcount(V[t] | V[tp + p2])                  # (n, L)
                c2 = _popcount(V[t - 1] | V[tp + p2 - 1])
                cross = (np.where(lar < l[:, None], c1, 0).sum(axis=1)
                         + np.where(lar > l[:, None], c2, 0).sum(axis=1))
                u3 = V[t - 1, l] | V[tp + p2, l]
                own_p = _bits(X[tp, l], nw)                          # (n, K, nw)
                own_c = _bits(X[t, l], nw)
                ps = psf[q].astype(np.int64)
                after = np.bitwise_or.reduce(
                    np.where((slots > ps[:, None])[..., None], own_p, np.uint64(0)), axis=1)
                before = np.bitwise_or.reduce(
                    np.where((slots < s[:, None])[..., None], own_c, np.uint64(0)), axis=1)
                sd[q] = cross + _popcount(u3 | after | before)
    return sd.reshape(T, L, K)


def stack_distances(trace: Trace, order: str = "token-major", *, _prev=None) -> np.ndarray:
    """Exact LRU stack distance of every access: (T, L, k) int32, -1 for a first (cold) access.

    Stack distance = number of *distinct other* (layer, expert) objects accessed since the
    previous access to the same object, in the access stream given by ``order``:

    * ``"token-major"``: tokens in trace order, within a token layers 0..L-1, within a
      (token, layer) the k experts in slot order: the order of a batch-1 decode replay with one
      cache shared by all layers;
    * ``"layer-major"``: layer 0 of every token in trace order, then layer 1, ...; then only
      experts of the same layer lie between two uses, so the distances are those of L separate
      per-layer LRU stacks (a cache partitioned by layer).

    An LRU cache of C objects hits an access iff its stack distance is in [0, C)
    (:func:`lru_hit_rate_curve`). Requests are not separated: the stack persists across them.
    The result is indexed like ``trace.experts`` whatever the order.
    """
    X = trace.experts
    E = trace.meta.num_experts
    gap, prev_slot = _previous_use(X) if _prev is None else _prev
    if order == "token-major":
        return _grouped_stack_distances(X, E, gap, prev_slot)
    if order == "layer-major":
        out = np.empty(X.shape, dtype=np.int32)
        for layer in range(X.shape[1]):
            sl = slice(layer, layer + 1)
            out[:, sl] = _grouped_stack_distances(X[:, sl], E, gap[:, sl], prev_slot[:, sl])
        return out
    raise MoesimError(f"order must be 'token-major' or 'layer-major'; got {order!r}")


def _fenwick_stack_distances(ids: np.ndarray) -> np.ndarray:
    """Textbook O(N log N) stack distances: a Fenwick tree marks the latest access of every
    object; the distance of an access is the number of marks after its previous access."""
    n = int(ids.size)
    tree = [0] * (n + 1)
    last: dict[int, int] = {}
    out = np.empty(n, dtype=np.int32)

    def add(i: int, v: int) -> None:
        i += 1
        while i <= n:
            tree[i] += v
            i += i & -i

    def prefix(i: int) -> int:          # marks at positions < i
        s = 0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    marks = 0
    for i, o in enumerate(ids.tolist()):
        p = last.get(o)
        if p is None:
            out[i] = -1
        else:
            out[i] = marks - prefix(p + 1)
            add(p, -1)
            marks -= 1
        add(i, 1)
        marks += 1
        last[o] = i
    return out


def stack_distances_stream(objects, *, max_table_words: int = 1 << 27) -> np.ndarray:
    """Exact LRU stack distances of an arbitrary 1-D stream of integer (or sortable) object ids.

    Returns (N,) int32, -1 for first accesses. Uses the algorithm of :func:`stack_distances`
    with one access per group while its bit-set table (N x distinct objects / 64 words) stays
    under ``max_table_words``; beyond that a pure-Python Fenwick tree (exact, O(N log N), about
    a microsecond per access).
    """
    obj = np.asarray(objects).ravel()
    if obj.size == 0:
        return np.zeros(0, dtype=np.int32)
    _, ids = np.unique(obj, return_inverse=True)
    ids = ids.reshape(-1)
    M = int(ids.max()) + 1
    if obj.size * _words(M) > max_table_words:
        return _fenwick_stack_distances(ids)
    return _grouped_stack_distances(ids.reshape(-1, 1, 1), M).reshape(-1)


def phase_stream(trace: Trace, code: int, max_lookups: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Canonical lookup stream of the tokens of phase ``code`` only (its first
    ``max_lookups``), and the LRU stack distance of each of its lookups.

    The decode stream is the token-major order of the decode tokens' experts (tokens in trace
    order, layers 0..L-1, slots in order), so its distances come from the grouped
    :func:`stack_distances` (one bit set of E experts per layer: far faster than the flat
    stream's L x E-object table, which for large L x E falls back to a Python Fenwick tree);
    the prefill stream's variable-size groups go through :func:`stack_distances_stream`.
    The distances of a prefix are those of the whole stream at its positions, so a decode
    prefix is cut at whole tokens first and then trimmed.
    """
    from ..engine.stream import trace_stream
    sub = trace._take(trace.phase == code)
    per_token = trace.meta.num_layers * trace.meta.top_k
    if code == DECODE:
        if max_lookups is not None:
            sub = sub._take(np.arange(sub.num_tokens) < -(-max_lookups // per_token))
        stream = trace_stream(sub)[:max_lookups]
        sd = stack_distances(sub, "token-major").reshape(-1)[:max_lookups]
    else:
        stream = trace_stream(sub)[:max_lookups]
        sd = stack_distances_stream(stream)
    return stream, sd


def lru_hit_counts(stack_dist: np.ndarray, sizes: Iterable[int]) -> np.ndarray:
    """Hits of an LRU cache of each size (in objects): accesses with 0 <= stack distance < size."""
    sd = np.asarray(stack_dist).ravel()
    sd = sd[sd >= 0].astype(np.int64)
    sizes = np.asarray(list(sizes), dtype=np.int64)
    if sd.size == 0:
        return np.zeros(sizes.shape, dtype=np.int64)
    cum = np.concatenate(([0], np.cumsum(np.bincount(sd))))    # cum[c] = #(sd < c)
    return cum[np.clip(sizes, 0, cum.size - 1)]


def lru_hit_rate_curve(stack_dist: np.ndarray, sizes: Iterable[int]) -> np.ndarray:
    """LRU hit rate (fraction of all accesses, cold ones included) at each cache size."""
    n = np.asarray(stack_dist).size
    return lru_hit_counts(stack_dist, sizes) / max(n, 1)


# ====================================================================== 6. gate scores
def gate_score_stats(trace: Trace, phase=None,
                     thresholds: Iterable[float] = DEFAULT_SCORE_THRESHOLDS) -> dict[str, Any]:
    """Gate-weight statistics.

    * ``per_rank`` (only when ``meta.expert_order == "descending"``): for each slot rank
      0..k-1, mean and quantiles (5/25/50/75/95 %) of the gate weight;
    * ``top1``: the largest weight of each (token, layer) (order-independent): mean, quantiles,
      histogram over [0, 0.1), ..., [0.9, 1.0], > 1.0;
    * ``top1_gt[th]``: fraction of (token, layer) cells whose top-1 weight exceeds ``th``;
    * ``top1_share_gt[th]``: the same for top-1 / sum of the k weights;
    * ``order_violations``: fraction of cells whose weights are not non-increasing by slot
      (only for descending traces; should be 0).

    Without scores returns ``{"available": False, "reason": "no scores"}``.
    """
    if trace.scores is None:
        return {"available": False, "reason": "no scores in this trace"}
    thresholds = [float(x) for x in thresholds]
    mask = _token_mask(trace, phase)
    sc = trace.scores if mask is None else trace.scores[mask]
    k = sc.shape[2]
    out: dict[str, Any] = {"available": True, "cells": int(sc.shape[0] * sc.shape[1]),
                           "expert_order": trace.meta.expert_order}
    if sc.size == 0:
        out.update(available=False, reason="no tokens in this phase")
        return out
    if trace.meta.expert_order == "descending":
        ranks = []
        for r in range(k):
            v = sc[:, :, r].ravel()
            qs = np.quantile(v, _QUANTILES)
            ranks.append({"rank": r, "mean": float(v.mean()),
                          **{f"p{int(q * 100):02d}": float(x) for q, x in zip(_QUANTILES, qs)}})
        out["per_rank"] = ranks
        viol = np.zeros(sc.shape[:2], dtype=bool)
        for r in range(k - 1):
            viol |= sc[:, :, r + 1] > sc[:, :, r]
        out["order_violations"] = float(viol.mean())
    else:
        out["per_rank"] = None
        out["per_rank_note"] = ("expert order is 'unordered': slots are not ranks, so no "
                                "per-rank statistics")
    top1 = sc[:, :, 0].astype(np.float64)          # slot by slot: (T, L) temporaries only
    total = sc[:, :, 0].astype(np.float64)
    for r in range(1, k):
        np.maximum(top1, sc[:, :, r], out=top1)
        total += sc[:, :, r]
    top1, total = top1.ravel(), total.ravel()
    share = np.divide(top1, total, out=np.zeros_like(top1), where=total > 0)
    edges = np.linspace(0.0, 1.0, 11)
    # bins [i/10, (i+1)/10) for i < 9, [0.9, 1.0] (1.0 included), then > 1
    idx = np.searchsorted(edges[1:-1], top1, side="right")
    idx[top1 > 1.0] = 10
    hist = np.bincount(idx, minlength=11)
    over = int(hist[10])
    hist = hist[:10]
    qs = np.quantile(top1, _QUANTILES)
    out["top1"] = {"mean": float(top1.mean()),
                   **{f"p{int(q * 100):02d}": float(x) for q, x in zip(_QUANTILES, qs)},
                   "hist_edges": edges.tolist(), "hist_counts": hist.tolist(),
                   "hist_over_1": over}
    out["top1_gt"] = {str(th): float(np.mean(top1 > th)) for th in thresholds}
    out["top1_share_gt"] = {str(th): float(np.mean(share > th)) for th in thresholds}
    out["top1_share_mean"] = float(share.mean())
    return out


# ====================================================================== 7. cross-layer
def transition_counts(trace: Trace, phase=None, pairing: str = "all") -> np.ndarray:
    """(L-1, E, E) int64: C[l, a, b] = times expert a at layer l and expert b at layer l+1 were
    chosen by the same token.

    ``pairing="all"`` counts all k x k slot pairs of a token; ``"slot"`` only the i-th choice
    at l with the i-th at l+1 (the convention of OLMoE's cross-layer histograms, see
    :mod:`simulator.traces.counts`).
    """
    if pairing not in ("all", "slot"):
        raise MoesimError(f"pairing must be 'all' or 'slot'; got {pairing!r}")
    mask = _token_mask(trace, phase)
    ex = trace.experts if mask is None else trace.experts[mask]
    L, E = trace.num_layers, trace.meta.num_experts
    out = np.zeros((max(L - 1, 0), E, E), dtype=np.int64)
    for layer in range(L - 1):
        src = ex[:, layer, :].astype(np.int32) * E
        dst = ex[:, layer + 1, :].astype(np.int32)
        key = src[:, :, None] + dst[:, None, :] if pairing == "all" else src + dst
        out[layer] = np.bincount(key.ravel(), minlength=E * E).reshape(E, E)
    return out


def _row_normalize(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    tot = c.sum(axis=-1, keepdims=True)
    return c / np.where(tot > 0, tot, 1)


def cross_layer_transitions(trace: Trace, phase=None, pairing: str = "all") -> np.ndarray:
    """(L-1, E, E) P[l, a, b] = P(expert b at layer l+1 | expert a at layer l), each row summing
    to 1 (rows of experts never chosen at layer l are 0). See :func:`transition_counts`."""
    return _row_normalize(transition_counts(trace, phase, pairing))


def js_divergence(P: np.ndarray, Q: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Jensen-Shannon divergence (bits, 0 = equal, 1 = disjoint) of two stacks of transition
    matrices (..., E, E), one value per matrix: the mean over source rows of the row JS.

    P and Q may be counts or row-normalised. Rows are weighted by ``weights`` (..., E) if
    given, else by the mean of the two source-frequency distributions derived from the row
    sums (with counts this is "weighted by source frequency"; with row-normalised inputs all
    rows present weigh the same). Rows empty in P or Q are skipped; NaN if none is left.
    """
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    if P.shape != Q.shape:
        raise MoesimError(f"transition matrices differ in shape: {P.shape} vs {Q.shape}")
    rp, rq = P.sum(axis=-1), Q.sum(axis=-1)
    p, q = _row_normalize(P), _row_normalize(Q)
    m = 0.5 * (p + q)

    def kl(a):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(m > 0, m, 1)),
                            0.0).sum(axis=-1)

    js = 0.5 * kl(p) + 0.5 * kl(q)
    if weights is None:
        fp = rp / np.maximum(rp.sum(axis=-1, keepdims=True), 1e-300)
        fq = rq / np.maximum(rq.sum(axis=-1, keepdims=True), 1e-300)
        wts = 0.5 * (fp + fq)
    else:
        wts = np.broadcast_to(np.asarray(weights, dtype=np.float64), rp.shape)
    wts = np.where((rp > 0) & (rq > 0), wts, 0.0)
    tot = wts.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (wts * js).sum(axis=-1) / tot, np.nan)


def mutual_information(counts: np.ndarray) -> np.ndarray:
    """Mutual information (bits) of each joint count matrix (..., E, E): between the expert of
    a random (layer l, layer l+1) slot pair of one token. Plug-in estimate, biased upwards by
    about (E-1)^2 / (2 n ln 2) bits for n pairs."""
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum(axis=(-2, -1), keepdims=True)
    p = c / np.where(n > 0, n, 1)
    pa = p.sum(axis=-1, keepdims=True)
    pb = p.sum(axis=-2, keepdims=True)
    denom = pa * pb
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1) / np.where(denom > 0, denom, 1)),
                         0.0)
    return terms.sum(axis=(-2, -1))


def mutual_information_bias(counts: np.ndarray) -> np.ndarray:
    """Expected plug-in :func:`mutual_information` (bits) of *independent* layers at this
    sample size, (A - 1)(B - 1) / (2 n ln 2) with A, B the experts seen at each layer and n the
    pairs (Miller-Madow). Pairs of one token are not independent draws, so this is a rough
    floor: compare two traces' MI only when it is well above it."""
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum(axis=(-2, -1))
    a = np.count_nonzero(c.sum(axis=-1), axis=-1)
    b = np.count_nonzero(c.sum(axis=-2), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.maximum(a - 1, 0) * np.maximum(b - 1, 0) / (2 * n * math.log(2)),
                        np.nan)


def cross_layer_dependence(counts: np.ndarray) -> float:
    """Mean over adjacent layer pairs of :func:`mutual_information` (bits); 0 = independent."""
    mi = mutual_information(counts)
    return float(mi.mean()) if mi.size else float("nan")


# ====================================================================== 8. bundle + report
def trace_stats(trace: Trace, *, cache_fractions: Iterable[float] = DEFAULT_CACHE_FRACTIONS,
                lru: bool = True, per_layer_lru: bool = False, top_n: int = 3,
                max_log2: int = DEFAULT_REUSE_MAX_LOG2) -> dict[str, Any]:
    """All statistics of ``trace`` as one JSON-serialisable dict (lists, floats; NaN -> None).

    ``lru`` computes the exact stack distances (the slowest part, a few seconds per 10^7
    accesses); ``per_layer_lru`` adds the hit rates of a cache partitioned by layer
    (layer-major stack distances) at the same total sizes.
    """
    m = trace.meta
    L, E, k = m.num_layers, m.num_experts, m.top_k
    out: dict[str, Any] = {
        "meta": {"model": m.model, "source": m.source, "path": trace.path, "num_layers": L,
                 "num_experts": E, "top_k": k, "expert_order": m.expert_order,
                 "notes": m.notes},
        "counts": basic_counts(trace),
    }
    if trace.imputed is not None:
        n_imp = int(np.count_nonzero(trace.imputed))
        out["imputed"] = {"cells": n_imp, "fraction": n_imp / max(trace.imputed.size, 1)}
    else:
        out["imputed"] = None
    pop = popularity(trace)
    ids, shares = top_experts(pop, top_n)
    inter = _overlap_counts(trace, _cell_masks(trace.experts, E))
    ov = consecutive_overlap(trace, _inter=inter)
    ov_phase = {name: consecutive_overlap(trace, name, _inter=inter)["overall"]
                for name in PHASE_NAMES}
    del inter
    g = gini(pop)
    h = normalized_entropy(pop)
    out["layers"] = {"top_experts": ids, "top_shares": shares, "gini": g, "entropy": h,
                     "overlap": ov["per_layer"]}
    out["popularity_summary"] = {"gini_mean": float(np.nanmean(g)) if L else None,
                                 "entropy_mean": float(np.nanmean(h)) if L else None}
    out["overlap"] = {"overall": ov["overall"], "pairs": ov["pairs"],
                      "baseline": ov["baseline"], **{f"{p}": v for p, v in ov_phase.items()}}
    prev = _previous_use(trace.experts)
    rc = _reuse_counts(trace, prev[0], max_log2)
    labels = reuse_bin_labels(max_log2)
    rd = _reuse_result(rc.sum(axis=1), labels)
    rd_dec = _reuse_result(rc[:, DECODE], labels)
    out["reuse"] = {"labels": rd["labels"], "pooled_counts": rd["pooled_counts"],
                    "pooled_fractions": rd["pooled_fractions"],
                    "decode_pooled_fractions": rd_dec["pooled_fractions"],
                    "per_layer_counts": rd["counts"]}
    out["gate_scores"] = gate_score_stats(trace)
    tc = transition_counts(trace)
    mi = mutual_information(tc)
    bias = mutual_information_bias(tc)
    out["cross_layer"] = {"mutual_information_bits": mi,
                          "dependence_bits": cross_layer_dependence(tc),
                          "independence_floor_bits": float(bias.mean()) if bias.size else None}
    if lru:
        fr = [float(f) for f in cache_fractions]
        sizes = [int(round(f * L * E)) for f in fr]
        sd = stack_distances(trace, "token-major", _prev=prev)
        lru_out = {"objects": L * E, "fractions": fr, "sizes": sizes,
                   "hit_rate": lru_hit_rate_curve(sd, sizes),
                   "cold_fraction": float(np.mean(sd < 0))}
        del sd
        if per_layer_lru:
            sd = stack_distances(trace, "layer-major", _prev=prev)
            per_sizes = [int(round(f * E)) for f in fr]
            lru_out["per_layer_sizes"] = per_sizes
            lru_out["per_layer_hit_rate"] = lru_hit_rate_curve(sd, per_sizes)
            del sd
        out["lru"] = lru_out
    else:
        out["lru"] = None
    return to_plain(out)


def _fmt_int(n) -> str:
    return f"{int(n):,}"


def _wrap(prefix: str, items: list[str], width: int = 99, sep: str = "  ") -> list[str]:
    """``prefix`` then the items separated by ``sep``, continued under the prefix."""
    lines, cur = [], prefix
    for it in items:
        add = it if cur == prefix or cur.isspace() else sep + it
        if len(cur) + len(add) > width and cur.strip() and cur.strip() != prefix.strip():
            lines.append((cur + sep).rstrip())
            cur = " " * len(prefix) + it
        else:
            cur += add
    if cur.strip():
        lines.append(cur.rstrip())
    return lines


def _f(x, spec: str = ".3f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def format_stats(stats: dict[str, Any]) -> str:
    """A text report of :func:`trace_stats` output, lines under 100 characters."""
    m, c = stats["meta"], stats["counts"]
    L, E, k = m["num_layers"], m["num_experts"], m["top_k"]
    out = [f"trace {m['path']}",
           f"model {m['model']}: {L} MoE layers x {E} experts, top-{k}, "
           f"expert order {m['expert_order']}"]
    out += textwrap.wrap(f"source {m['source']}", width=99, subsequent_indent="       ",
                         break_long_words=True, break_on_hyphens=False)
    out.append(f"requests {_fmt_int(c['requests'])}; tokens {_fmt_int(c['tokens'])} = "
               f"{_fmt_int(c['prefill_tokens'])} prefill + {_fmt_int(c['decode_tokens'])} decode; "
               f"accesses {_fmt_int(c['accesses'])}")
    for ph in ("prefill", "decode"):
        s = c["tokens_per_request"][ph]
        out.append(f"  {ph} tokens per request: min {s['min']:g}, median {s['median']:g}, "
                   f"mean {s['mean']:.1f}, max {s['max']:g}")
    notes = m.get("notes") or {}
    if notes:
        items = []
        for key, val in notes.items():
            item = f"{key}={val if isinstance(val, str) else repr(val)}"
            items.append(item if len(item) <= 88 else item[:85] + "...")
        out += _wrap("notes: ", items, sep="; ")
    imp = stats.get("imputed")
    if imp is not None:
        out.append(f"imputed cells: {_fmt_int(imp['cells'])} ({100 * imp['fraction']:.2f}% of "
                   f"token x layer cells)")

    # per-layer table
    lay = stats["layers"]
    ov = stats["overlap"]
    out.append("")
    out.append("per layer: top experts by share of accesses, Gini and normalised entropy of the "
               "shares,")
    out.append(f"  overlap = mean |S_t & S_t-1| / k of consecutive tokens "
               f"(random baseline k/E = {ov['baseline']:.3f})")
    n_top = len(lay["top_experts"][0]) if lay["top_experts"] else 0
    top_w = max(9 * n_top, 12)
    out.append(f"{'layer':>5}  {'top experts (share)':<{top_w}}  {'gini':>6}  {'entropy':>7}  "
               f"{'overlap':>7}")
    for i in range(L):
        tops = " ".join(f"{e}:{s:.3f}" for e, s in zip(lay["top_experts"][i], lay["top_shares"][i]))
        out.append(f"{i:>5}  {tops:<{top_w}}  {_f(lay['gini'][i]):>6}  "
                   f"{_f(lay['entropy'][i]):>7}  {_f(lay['overlap'][i]):>7}")
    ps = stats["popularity_summary"]
    out.append(f"{'mean':>5}  {'':<{top_w}}  {_f(ps['gini_mean']):>6}  "
               f"{_f(ps['entropy_mean']):>7}  {_f(ov['overall']):>7}")
    out.append(f"overlap by phase: prefill {_f(ov.get('prefill'))}, decode {_f(ov.get('decode'))} "
               f"({_fmt_int(ov['pairs'])} token pairs in all)")

    # reuse distances
    rd = stats["reuse"]
    out.append("")
    out.append("reuse distance (tokens back to the same request's last use of the expert at the "
               "layer):")
    cells = [f"{lab}:{100 * f:.1f}%" for lab, f in zip(rd["labels"], rd["pooled_fractions"])]
    out += _wrap("  all     ", cells)
    if rd.get("decode_pooled_fractions") is not None and any(rd["decode_pooled_fractions"]):
        cells = [f"{lab}:{100 * f:.1f}%"
                 for lab, f in zip(rd["labels"], rd["decode_pooled_fractions"])]
        out += _wrap("  decode  ", cells)

    # gate scores
    gs = stats["gate_scores"]
    out.append("")
    if not gs.get("available"):
        out.append(f"gate scores: {gs.get('reason', 'not available')}")
    else:
        t1 = gs["top1"]
        out.append(f"gate scores ({_fmt_int(gs['cells'])} token x layer cells):")
        if gs.get("per_rank"):
            items = [f"r{r['rank']} {r['mean']:.3f} [{r['p05']:.3f}, {r['p95']:.3f}]"
                     for r in gs["per_rank"]]
            out += _wrap("  mean [p5, p95] by rank: ", items)
            if gs.get("order_violations"):
                out.append(f"  WARNING: {100 * gs['order_violations']:.2f}% of cells have "
                           f"scores not descending by slot")
        else:
            out.append(f"  {gs.get('per_rank_note', 'no per-rank statistics')}")
        out.append(f"  top-1 weight: mean {t1['mean']:.3f}, median {t1['p50']:.3f}; "
                   f"top-1 / sum(top-{k}): mean {gs['top1_share_mean']:.3f}")
        out.append("  cells with top-1 weight > " + ", ".join(
            f"{th}: {100 * v:.1f}%" for th, v in gs["top1_gt"].items()))
        out.append("  cells with top-1 / sum(top-k) > " + ", ".join(
            f"{th}: {100 * v:.1f}%" for th, v in gs["top1_share_gt"].items()))
        tot = max(sum(t1["hist_counts"]) + t1["hist_over_1"], 1)
        e = t1["hist_edges"]
        hist = [f"{e[i]:.1f}-{e[i + 1]:.1f}:{100 * n / tot:.1f}%"
                for i, n in enumerate(t1["hist_counts"])]
        if t1["hist_over_1"]:
            hist.append(f">1:{100 * t1['hist_over_1'] / tot:.1f}%")
        out += _wrap("  top-1 histogram ", hist)

    # cross-layer dependence
    cl = stats["cross_layer"]
    out.append("")
    mi = [x for x in cl["mutual_information_bits"] if x is not None]
    if mi:
        out.append(f"cross-layer dependence: mutual information of adjacent layers' experts, "
                   f"mean {cl['dependence_bits']:.4f} bits")
        out.append(f"  (min {min(mi):.4f}, max {max(mi):.4f} over {len(mi)} layer pairs; at most "
                   f"log2 E = {math.log2(E):.2f}; independent layers")
        out.append(f"  would give about {_f(cl.get('independence_floor_bits'), '.4f')} bits at "
                   f"this sample size)")
    else:
        out.append("cross-layer dependence: - (a single MoE layer)")

    # LRU
    lru = stats.get("lru")
    if lru:
        out.append("")
        out.append(f"LRU hit rate, one cache of (layer, expert) objects ({_fmt_int(lru['objects'])} "
                   f"in all), token-major order;")
        out.append(f"  cold (first-use) accesses {100 * lru['cold_fraction']:.2f}%")
        hdr = "  cache size".ljust(22) + "".join(
            f"{f'{100 * f:g}% ({s})':>14}" for f, s in zip(lru["fractions"], lru["sizes"]))
        out.append(hdr)
        out.append("  unified".ljust(22) + "".join(f"{100 * h:>13.1f}%" for h in lru["hit_rate"]))
        if lru.get("per_layer_hit_rate") is not None:
            out.append("  per-layer caches".ljust(22) + "".join(
                f"{100 * h:>13.1f}%" for h in lru["per_layer_hit_rate"]))
            out.append("  (per-layer: each layer its own LRU of "
                       + "/".join(str(s) for s in lru["per_layer_sizes"]) + " experts)")
    return "\n".join(out)
