"""The canonical expert access stream of a run.

Order (what the engine does when requests run one at a time, ``batch_size: 1``):
requests in workload order; for each request its prefill iteration, layer by layer, each
layer looking up the *distinct* experts its prompt tokens chose in ascending expert id; then
its decode tokens one by one, each layer looking up the token's experts in trace order.

Offline policies (Belady) read their future from it; benchmarks and tests replay it through
libCacheSim to check hit counts.
"""
from __future__ import annotations

import numpy as np

from ..traces.schema import PREFILL


def request_prefill_oids(ex_pre: np.ndarray, num_experts: int, slices: int = 1) -> list[np.ndarray]:
    """Per layer, the ascending distinct object ids a prefill of tokens ``ex_pre`` (n, L, k)
    looks up (slice 0 of each expert)."""
    n, L, k = ex_pre.shape
    if n == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(L)]
    base = np.arange(L, dtype=np.int64)[None, :, None] * num_experts
    counts = np.bincount((base + ex_pre).ravel(), minlength=L * num_experts).reshape(L, num_experts)
    return [(np.flatnonzero(counts[l]) + l * num_experts) * slices for l in range(L)]


def canonical_stream(ctx, *, exclude_pinned: bool = False) -> np.ndarray:
    """The stream of a simulation context (its requests, slices and pinned objects)."""
    return trace_stream(ctx.trace, ctx.requests, slices=ctx.slices_per_expert,
                        pinned=ctx.pinned if exclude_pinned else None)


def trace_stream(trace, requests=None, *, slices: int = 1, pinned: np.ndarray | None = None,
                 groups: bool = False):
    """Canonical lookup stream of ``trace`` for ``requests`` (default: every request in trace
    order), without objects flagged in ``pinned``.

    With ``groups=True`` also return the start offset of every *lookup group*: the distinct
    objects one layer of one iteration looks up together (a prefill layer, or one decode
    token's layer). The engine decides a group's hits at the router decision and inserts its
    misses afterwards (see engine/simulation.py)."""
    if requests is None:
        from .workload import Request
        ids, starts, ends = trace.request_bounds()
        n_pre = np.add.reduceat((trace.phase == PREFILL).astype(np.int64), starts)
        requests = [Request(int(r), int(s), int(p), int(e - s - p))
                    for r, s, e, p in zip(ids, starts, ends, n_pre)]
    L, E = trace.meta.num_layers, trace.meta.num_experts
    base = (np.arange(L, dtype=np.int64) * E)[None, :, None]
    k = trace.meta.top_k
    parts, sizes = [], []
    for req in requests:
        if req.n_prefill:
            ex = trace.experts[req.start:req.start + req.n_prefill]
            layer_oids = request_prefill_oids(ex, E, slices)
            parts.extend(layer_oids)
            sizes.extend(o.size for o in layer_oids)
        if req.n_decode:
            s = req.start + req.n_prefill
            ex = trace.experts[s:s + req.n_decode].astype(np.int64)
            parts.append(((ex + base) * slices).ravel())
            sizes.extend([k] * (req.n_decode * L))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    group_of = np.repeat(np.arange(len(sizes)), sizes) if groups else None
    if pinned is not None:
        keep = ~pinned[stream]
        stream = stream[keep]
        if groups:
            group_of = group_of[keep]
    if not groups:
        return stream
    starts = np.flatnonzero(np.r_[True, group_of[1:] != group_of[:-1]]) if stream.size else \
        np.zeros(0, dtype=np.int64)
    return stream, starts
