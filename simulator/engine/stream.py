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

from ..traces.schema import DECODE, PREFILL


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


def trace_stream(trace, requests=None, *, slices: int = 1, pinned: np.ndarray | None = None
                 ) -> np.ndarray:
    """Canonical lookup stream of ``trace`` for ``requests`` (default: every request in trace
    order), without objects flagged in ``pinned``."""
    if requests is None:
        from .workload import Request
        ids, starts, ends = trace.request_bounds()
        n_pre = np.add.reduceat((trace.phase == PREFILL).astype(np.int64), starts)
        requests = [Request(int(r), int(s), int(p), int(e - s - p))
                    for r, s, e, p in zip(ids, starts, ends, n_pre)]
    L, E = trace.meta.num_layers, trace.meta.num_experts
    base = (np.arange(L, dtype=np.int64) * E)[None, :, None]
    parts = []
    for req in requests:
        if req.n_prefill:
            ex = trace.experts[req.start:req.start + req.n_prefill]
            parts.extend(request_prefill_oids(ex, E, slices))
        if req.n_decode:
            s = req.start + req.n_prefill
            ex = trace.experts[s:s + req.n_decode].astype(np.int64)
            parts.append(((ex + base) * slices).ravel())
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if pinned is not None:
        stream = stream[~pinned[stream]]
    return stream
