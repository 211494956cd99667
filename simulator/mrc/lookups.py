"""The lookup groups the engine really performs for a config, as a :class:`LookupStream`.

Batch 1 with trace routing: requests run one at a time in workload order, whatever the
arrival process, so the grouping is the canonical stream of engine/stream.py (prefill layer by
layer, distinct experts ascending; decode token by token, the token's experts in gate order),
derived from the trace without running the engine. Otherwise (several requests per iteration,
or a routing policy that rewrites experts) the groups are recorded from one engine run through
``Simulation.observe_lookups``; with closed-loop or all-at-once arrivals and trace routing the
grouping does not depend on timing, with poisson/trace arrivals or re-routing it is that run's
grouping (said in the notes).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, MoesimError
from ..traces.schema import DECODE, PREFILL
from .curves import LookupStream


def _from_groups(oids: np.ndarray, sizes: np.ndarray, phases: np.ndarray,
                 pinned: np.ndarray, object_bytes: float, how: str) -> LookupStream:
    """Drop pinned objects (counted as hits per phase) and empty groups."""
    gid = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    keep = ~pinned[oids] if oids.size else np.zeros(0, dtype=bool)
    lph = phases[gid] if oids.size else np.zeros(0, dtype=np.int8)
    pin = tuple(int(((~keep) & (lph == p)).sum()) for p in (PREFILL, DECODE))
    oids, gid = oids[keep], gid[keep]
    first = np.r_[True, gid[1:] != gid[:-1]] if gid.size else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(first).astype(np.int64)
    return LookupStream(oids.astype(np.int64), starts, phases[gid[starts]].astype(np.int8),
                        float(object_bytes), pin, how)


def _derived(sim) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ..engine.stream import trace_stream
    ctx = sim.ctx
    oids, starts = trace_stream(ctx.trace, ctx.requests, slices=ctx.slices_per_expert,
                                groups=True)
    L = ctx.num_layers
    phases = []
    for q in ctx.requests:
        if q.n_prefill:
            phases.append(np.full(L, PREFILL, dtype=np.int8))
        if q.n_decode:
            phases.append(np.full(q.n_decode * L, DECODE, dtype=np.int8))
    phases = np.concatenate(phases) if phases else np.zeros(0, dtype=np.int8)
    sizes = np.diff(np.r_[starts, oids.size]).astype(np.int64)
    if sizes.size != phases.size:
        raise MoesimError(f"internal: {sizes.size} lookup groups but {phases.size} group phases")
    return oids, sizes, phases


def _recorded(sim) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    groups: list = []
    phases: list = []
    sim.observe_lookups(lambda phase, layer, oids: (groups.append(list(oids)), phases.append(phase)))
    sim.run()
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    oids = np.fromiter((o for g in groups for o in g), dtype=np.int64, count=int(sizes.sum()))
    return oids, sizes, np.asarray(phases, dtype=np.int8)


def lookup_stream(loaded, trace=None) -> LookupStream:
    """The engine's lookup groups for ``loaded`` (a LoadedConfig); see the module notes."""
    from ..engine.simulation import Simulation
    from ..policies.base import WarmupPolicy
    sim = Simulation(loaded, trace)
    ctx, cfg, src = sim.ctx, loaded.config, loaded.source
    w = type(sim.warmup)
    if w.initialize is not WarmupPolicy.initialize or w.on_prefill_end is not WarmupPolicy.on_prefill_end:
        raise ConfigError(f"warmup '{cfg.warmup.get('name')}' fills or edits the cache; a miss-ratio "
                          "curve assumes a cold start and no cache edits (use warmup: {name: empty})",
                          source=src, key="warmup.name")
    sizes = np.unique(ctx.object_bytes)
    if sizes.size != 1:
        raise ConfigError(f"objects of {sizes.size} sizes; a curve in objects needs one size",
                          source=src, key="model")
    wl = cfg.workload
    notes = []
    if sim.prefetch_active:
        notes.append(f"prefetch '{cfg.prefetch.get('name')}' ignored: the curve is the cache's "
                     "demand lookups without prefetching")
    if wl.batch_size == 1 and sim.routing.identity:
        oids, gsizes, phases = _derived(sim)
        how = "derived from the trace (batch 1: the grouping does not depend on timing)"
    else:
        oids, gsizes, phases = _recorded(sim)
        timing_free = sim.routing.identity and wl.arrivals.process in ("closed_loop", "all_at_once")
        if timing_free:
            how = (f"recorded from an engine run (batch {wl.batch_size}, {wl.arrivals.process} "
                   "arrivals: the grouping does not depend on timing)")
        else:
            why = (f"{wl.arrivals.process} arrivals with batch {wl.batch_size}"
                   if sim.routing.identity else f"routing '{cfg.routing.get('name')}'")
            how = (f"recorded from one engine run at cache {cfg.cache.get('name')} "
                   f"{cfg.cache.get('capacity_gb', 0)} GB; with {why} the grouping depends on "
                   "timing, so the curve holds for that run's grouping")
    ls = _from_groups(oids, gsizes, phases, np.asarray(ctx.pinned, dtype=bool), float(sizes[0]), how)
    ls.notes = notes
    ls.local_free_bytes = float(sim.system.local.spec.capacity_bytes - sim.non_expert_bytes
                                - sim.pinned_bytes)
    ls.label = f"{sim.model.name} {sim.precision}"
    return ls
