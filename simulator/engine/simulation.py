"""Wiring and the run loop: trace + config -> SimPy environment -> counters.

One executor process runs *iterations* on the compute unit (continuous batching, vLLM-like):
newly admitted requests get a prefill iteration (all their prompt tokens, layer by layer,
each layer needing the union of the experts those tokens chose); otherwise all running
requests advance one decode token. Per layer: attention, then the router's experts are looked
up (pinned by placement, else the cache); resident experts run as one grouped kernel while
missing ones are fetched over the flow network, each running as soon as it arrives.

Where experts live and how they move is the memory hierarchy's part (engine/hierarchy.py):
per layer the loop asks it for the layer's resident experts and the arrival times of the
others, and times compute around them. The engine never names a policy.

Clock. The executor keeps its own time ``self.t``. It is the only source of transfers, so the
flow network is advanced lazily to its clock and schedules no SimPy events; the executor
yields to SimPy only when another process is due first (``env.peek()``), so hits, compute
and fetches advance time arithmetically. ``fast_path=False`` sends every fetch through the
fluid network and hands control to SimPy at every layer: tests run both and compare.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import simpy

from ..config.load import LoadedConfig
from ..errors import ConfigError, SimulationError
from ..hardware.system import System, build_system
from ..models.spec import ModelSpec, check_trace_matches, get_model, load_model_file
from ..policies.base import make_policy, policy_class
from ..traces.io import read_trace
from ..traces.schema import DECODE, PREFILL, Trace
from .compute import ComputeModel
from .context import SimContext
from .hierarchy import MemoryHierarchy
from .workload import Request, build_requests, closed_loop_concurrency

class Simulation:
    _progress = None                    # set by run(progress=...)

    def __init__(self, loaded: LoadedConfig, trace: Trace | None = None, *,
                 fast_path: bool = True):
        cfg = loaded.config
        self.loaded, self.cfg = loaded, cfg
        src = loaded.source
        if trace is None:
            trace = read_trace(loaded.resolve_path(cfg.trace))
        model = self._resolve_model(loaded, trace)
        check_trace_matches(model, trace.meta, source=trace.path)
        self.model = model
        self.precision = cfg.model.precision or model.native_precision
        self.system: System = build_system(cfg.system, source=src)
        self.rng = np.random.default_rng(cfg.seed)
        requests, trace = build_requests(trace, cfg.workload, self.rng, source=src)
        self.trace = trace
        self.requests = requests
        # the mixed-precision policy decides how many objects make an expert and their sizes
        mixed_cls = policy_class("mixed_precision", cfg.mixed_precision, source=src)
        self.ctx = SimContext(config=cfg, model=model, precision=self.precision, trace=trace,
                              system=self.system, rng=self.rng, requests=requests, source=src,
                              slices_per_expert=mixed_cls.slices)
        self.mixed = make_policy("mixed_precision", cfg.mixed_precision, self.ctx, source=src)
        self.mixed_active = bool(self.mixed.active)
        if self.mixed_active:
            per = self.mixed.slice_bytes(float(model.expert_bytes(self.precision)))
            self.ctx.object_bytes = np.tile(np.asarray(per, dtype=np.float64),
                                            self.ctx.num_objects // len(per))
            self.ctx.full_expert_bytes = float(
                self.mixed.full_bytes(float(model.expert_bytes(self.precision))))
        self._object_sizes = self.ctx.object_bytes.tolist()   # plain floats for the hot path
        self.fast_path = fast_path

        # policies
        self.placement = make_policy("placement", cfg.placement, self.ctx, source=src)
        home = np.asarray(self.placement.place(), dtype=np.int32)
        if home.shape != (self.ctx.num_objects,):
            raise SimulationError(f"placement returned {home.shape}, expected ({self.ctx.num_objects},)")
        self.home = home                  # initial placement (the hierarchy keeps the live one)
        self.ctx.pinned = home == self.system.local.index
        self.ctx.home = home              # read-only for policies (the prefetch gate's homes)
        self.cache = make_policy("cache", cfg.cache, self.ctx, source=src)
        self.prefetch = make_policy("prefetch", cfg.prefetch, self.ctx, source=src)
        self.routing = make_policy("routing", cfg.routing, self.ctx, source=src)
        self.warmup = make_policy("warmup", cfg.warmup, self.ctx, source=src)
        self.kv = make_policy("kv", cfg.kv, self.ctx, source=src)
        self.scheduler = make_policy("scheduler", cfg.scheduler, self.ctx, source=src)
        self.migration = make_policy("migration", cfg.migration, self.ctx, source=src)
        # lookups straight from the trace (no routing or precision choice to make)
        self._direct = self.routing.identity and not self.mixed_active
        self._check_capacities()

        self.compute = ComputeModel(model, self.system.compute, self.system.local.spec,
                                    self.precision, self.kv.read_bytes_per_token_layer())
        self.env = simpy.Environment()
        self.prefetch_active = bool(self.prefetch.active)
        self.log_events = cfg.output.events
        faults = cfg.faults.events
        self.migration_active = bool(self.migration.active)
        self.hierarchy = MemoryHierarchy(
            self.ctx, self.system, home, self.cache,
            self.prefetch if self.prefetch_active else None,
            log_events=self.log_events, fast_path=fast_path,
            scheduler=self.scheduler if self.scheduler.active else None,
            dynamic=self.migration_active or bool(faults),
            fills=self.mixed_active and bool(self.mixed.fills))
        self.hierarchy.track_prefill = bool(self.warmup.tracks_prefill)
        self._after_lookup = self.mixed.after_lookup if self.hierarchy.fills else None
        self.ctx.hierarchy = self.hierarchy      # for dynamic policies (migration)
        for i, (oid, dev) in enumerate(self.placement.replicas()):
            try:
                self.hierarchy.add_replica(int(oid), int(dev))
            except SimulationError as exc:
                raise ConfigError(f"replica {i}: {exc}", source=src, key="placement") from None
        if faults:
            from .faults import FaultState, backing_devices
            self.hierarchy.backing = backing_devices(
                cfg.faults, self.system, self.ctx.object_bytes, self.ctx.pinned, home,
                source=src)
            self.hierarchy.faults = FaultState(cfg.faults, self.system, source=src)

        L = self.ctx.num_layers
        self.t = 0.0
        # counters [phase]
        self.accesses = [0, 0]            # token -> expert uses (n_tokens x k per layer)
        self.phase_time = [0.0, 0.0]
        self.iterations = [0, 0]
        self.kv_tokens_live = 0
        self.kv_peak_tokens = 0
        self.steps: list[tuple] = []
        self.warm_objects: list[int] = []
        # hot-path tables: MoE block time by resident experts, per batch size
        self._moe_tables: dict[int, list[float]] = {}
        self._slots_per_token = trace.meta.top_k * self.ctx.slices_per_expert
        self._serial1 = self.compute.unit_expert_time()

    # ------------------------------------------------------------------ setup helpers
    @staticmethod
    def _resolve_model(loaded: LoadedConfig, trace: Trace) -> ModelSpec:
        mc = loaded.config.model
        if mc.file and mc.name:
            raise ConfigError("give model.name or model.file, not both", source=loaded.source,
                              key="model")
        if mc.file:
            return load_model_file(loaded.resolve_path(mc.file))
        return get_model(mc.name or trace.meta.model,
                         key="model.name" if mc.name else f"{trace.path}: metadata.model")

    def _check_capacities(self) -> None:
        ctx, src = self.ctx, self.loaded.source
        obj = float(ctx.object_bytes.max())
        gb = 1e9
        if self.cfg.cache.get("name") != "none" and self.cache.capacity_bytes < obj:
            what = (f"one expert ({obj / gb:.4g} GB at {self.precision})"
                    if ctx.slices_per_expert == 1 and not self.mixed_active else
                    f"its largest cached object ({obj / gb:.4g} GB: one "
                    f"{'MSB slice' if ctx.slices_per_expert == 2 else 'expert copy'} under "
                    f"mixed_precision '{self.cfg.mixed_precision.get('name')}')")
            raise ConfigError(f"{self.cache.capacity_bytes / gb:g} GB is below {what}; use "
                              "cache: {name: none} for no cache", source=src,
                              key="cache.capacity_gb")
        local = self.system.local
        used_by = np.bincount(self.home, weights=ctx.object_bytes, minlength=len(self.system.devices))
        for d in self.system.devices:
            if d.is_local:
                continue
            if used_by[d.index] > d.spec.capacity_bytes:
                raise ConfigError(f"device '{d.name}' holds {used_by[d.index] / gb:.4g} GB of "
                                  f"experts but its capacity is {d.spec.capacity_bytes / gb:.4g} GB",
                                  source=src, key=f"system.tiers.{d.tier}")
            if 0 < d.spec.capacity_bytes < obj:
                raise ConfigError(f"capacity {d.spec.capacity_bytes / gb:g} GB is below one expert "
                                  f"({obj / gb:.4g} GB)", source=src, key=f"system.tiers.{d.tier}")
        self.non_expert_bytes = float(self.model.non_expert_bytes(self.precision))
        self.pinned_bytes = float(used_by[local.index])
        static = self.non_expert_bytes + self.pinned_bytes + self.cache.capacity_bytes
        if static > local.spec.capacity_bytes:
            raise ConfigError(
                f"local tier '{local.name}' ({local.spec.capacity_bytes / gb:.4g} GB) cannot hold "
                f"non-expert weights {self.non_expert_bytes / gb:.4g} GB + pinned experts "
                f"{self.pinned_bytes / gb:.4g} GB + expert cache "
                f"{self.cache.capacity_bytes / gb:.4g} GB", source=src,
                key=f"system.tiers.{local.tier}.capacity_gb")

    # ------------------------------------------------------------------ the MoE block
    def _run_arrivals(self, phase: int, arrivals, items, t_hit: float, sizes=None) -> float:
        """Missing experts run one by one as they arrive, after the resident ones.
        ``arrivals``: one time (all together) or one per item of ``items`` [(oid, count, ...)].
        ``sizes``: object bytes when objects differ in size (mixed precision): each expert's
        kernel then reads its own object's bytes."""
        if sizes is not None:
            if type(arrivals) is float:
                arrivals = [arrivals] * len(items)
            expert_w = self.compute.expert_weights
            end = t_hit
            for arrival, it in sorted(zip(arrivals, items), key=lambda p: p[0]):
                end = (end if end > arrival else arrival) + expert_w(it[1], sizes[it[0]], phase)
            return end
        if type(arrivals) is float:
            start = t_hit if t_hit > arrivals else arrivals
            return start + self.compute.experts_serial([it[1] for it in items], phase)
        d0 = arrivals[0]
        if all(d == d0 for d in arrivals):          # one batch arriving together (common case)
            start = t_hit if t_hit > d0 else d0
            return start + self.compute.experts_serial([it[1] for it in items], phase)
        expert_time = self.compute.expert
        end = t_hit
        for arrival, c in sorted(zip(arrivals, (it[1] for it in items)), key=lambda p: p[0]):
            end = (end if end > arrival else arrival) + expert_time(c, phase)
        return end

    def _sync(self):
        """Hand control to SimPy up to our clock if any other event is due by then."""
        env = self.env
        if env.peek() <= self.t:
            yield env.timeout(max(0.0, self.t - env.now))

    # ------------------------------------------------------------------ iterations
    def _contexts(self, rows: np.ndarray) -> float:
        return float((self.trace.token[rows].astype(np.float64) + 1.0).sum())

    def _route(self, phase: int, layer: int, rows: np.ndarray):
        """Routed experts of trace ``rows`` at ``layer`` after the routing policy, as
        (ascending oids, token counts)."""
        ex = self.trace.experts[rows, layer].astype(np.int64)
        if not self.routing.identity:
            ex = np.asarray(self.routing.route(phase, layer, rows, ex), dtype=np.int64)
        if self.mixed_active:
            return self.mixed.select(phase, layer, rows, ex, self.hierarchy,
                                     self.routing.gate_scores(phase, layer, rows))
        o = (layer * self.ctx.num_experts + ex.ravel()) * self.ctx.slices_per_expert
        if rows.size == 1:       # one token: its experts in its own (gate) order, as unrouted
            seen = dict.fromkeys(o.tolist(), 0)
            for x in o.tolist():
                seen[x] += 1
            return list(seen), list(seen.values())
        u, c = np.unique(o, return_counts=True)
        return u.tolist(), c.tolist()

    def _iteration(self, phase: int, rows: np.ndarray, n_out: int, kv_read: float, lookups,
                   ctx_sum: float | None = None):
        """Run one iteration over trace ``rows`` starting at ``self.t``: dense layers and LM
        head, then per MoE layer attention and the MoE block over ``lookups(layer)`` =
        (object ids, token counts or None). ``ctx_sum``: the rows' summed context lengths,
        if the caller has them. Returns the end time."""
        compute, L = self.compute, self.ctx.num_layers
        t0 = self.t
        n = int(rows.size)
        if ctx_sum is None:
            ctx_sum = self._contexts(rows)
        t = t0 + compute.dense_and_head(n, n_out, ctx_sum, kv_read, phase)
        t_full, t_lin = compute.attention(n, ctx_sum, kv_read, phase)
        (ff, fb), (lf, lb) = compute.attention_cost(n, ctx_sum, kv_read)
        full = compute.full_attention
        n_full = sum(full)
        compute.account(phase, n_full * ff + (L - n_full) * lf, n_full * fb + (L - n_full) * lb)
        self.accesses[phase] += n * L * self.ctx.trace.meta.top_k
        access, moe, run_arrivals = self.hierarchy.access, compute.moe, self._run_arrivals
        # unit-count layers (each object serves one assignment: decode at small batch) are
        # timed from tables and accounted once per iteration
        moe_t = self._moe_tables.get(n)
        if moe_t is None:
            moe_t = self._moe_tables[n] = compute.moe_unit_times(n, n * self._slots_per_token)
        serial1 = self._serial1
        ub = ur = ul = 0
        env = self.env
        # nothing else can schedule an event while this process runs, so the next one is
        # known for the whole iteration (-inf: hand control to SimPy at every layer)
        horizon = env.peek() if self.fast_path else -math.inf
        per_layer = type(lookups) is list               # precomputed (oids, counts) per layer
        mixed = self.mixed_active
        after = self._after_lookup
        for layer in range(L):
            t += t_full if full[layer] else t_lin
            oids, counts = lookups[layer] if per_layer else lookups(layer)
            if t >= horizon:                          # another process is due first: let it run
                self.t = t
                yield env.timeout(t - env.now)
                horizon = env.peek() if self.fast_path else -math.inf
            res_u, res_a, arrivals, items = access(phase, layer, oids, counts, t, rows)
            if after is not None:
                after(phase, layer, t)
            if counts is None:
                ub += 1
                ur += res_u
                t_hit = t + moe_t[res_u]
                if arrivals is None:
                    t = t_hit
                elif type(arrivals) is float:     # all arrive together, one assignment each
                    ul += len(items)
                    t = (t_hit if t_hit > arrivals else arrivals) + serial1 * len(items)
                else:
                    t = run_arrivals(phase, arrivals, items, t_hit)
                continue
            if mixed:                 # objects of several sizes: compute reads their bytes
                sizes = self._object_sizes
                res_b = sum(sizes[o] for o in oids) - (
                    sum(sizes[it[0]] for it in items) if items else 0.0)
                t_hit = t + compute.moe_weights(n, res_a, res_b, phase)
                t = (t_hit if arrivals is None
                     else run_arrivals(phase, arrivals, items, t_hit, sizes))
                continue
            t_hit = t + moe(n, res_a, res_u, phase)
            t = t_hit if arrivals is None else run_arrivals(phase, arrivals, items, t_hit)
        if ub:
            compute.account_moe(phase, n, ub, ur, ur, ul)
        self._end_iteration(phase, t0, t, n, rows)
        return t

    def _prefill(self, batch: list[Request]):
        """All prompt tokens of ``batch`` together; a layer looks up the distinct experts its
        tokens chose (ascending id), each with its token count. KV of every sequence is read
        once (flash-attention style)."""
        rows = np.concatenate([np.arange(q.start, q.start + q.n_prefill) for q in batch])
        kv_read = float(sum(int(self.trace.token[q.start + q.n_prefill - 1]) + 1 for q in batch))
        if self._direct:
            L, E, S = self.ctx.num_layers, self.ctx.num_experts, self.ctx.slices_per_expert
            base = np.arange(L, dtype=np.int64)[None, :, None] * E
            cnt = np.bincount((base + self.trace.experts[rows]).ravel(), minlength=L * E)
            nz = np.flatnonzero(cnt)                 # (layer, expert) ids, ascending
            oids, counts = (nz * S).tolist(), cnt[nz].tolist()
            cut = np.searchsorted(nz, np.arange(L + 1) * E).tolist()

            def lookups(layer):
                return oids[cut[layer]:cut[layer + 1]], counts[cut[layer]:cut[layer + 1]]
        else:
            lookups = lambda layer: self._route(PREFILL, layer, rows)
        t = yield from self._iteration(PREFILL, rows, len(batch), kv_read, lookups)
        for q in batch:
            q.first_token = t
            q.token_times.append(t)
            # KV follows the position (as attention does): the prompt's last position + 1
            q.kv_tokens = int(self.trace.token[q.start + q.n_prefill - 1]) + 1
            self.kv_tokens_live += q.kv_tokens
            self.warmup.on_prefill_end(q.rid, self.cache)
        self.kv_peak_tokens = max(self.kv_peak_tokens, self.kv_tokens_live)

    def _decode(self, batch: list[Request]):
        """One decode token per running request; each token reads its whole context."""
        n = len(batch)
        rows = np.fromiter((q.start + q.n_prefill + q.decoded for q in batch), dtype=np.int64,
                           count=n)
        if not self._direct:
            lookups = lambda layer: self._route(DECODE, layer, rows)
        elif n == 1:
            lookups = [(o, None) for o in batch[0].dec_oids[batch[0].decoded]]
        else:
            token_oids = [q.dec_oids[q.decoded] for q in batch]

            def lookups(layer):
                cnt: dict[int, int] = {}
                for to in token_oids:
                    for o in to[layer]:
                        cnt[o] = cnt.get(o, 0) + 1
                oids = sorted(cnt)
                return oids, [cnt[o] for o in oids]
        # a decode token reads its whole context, positions 0..position; KV then holds them
        kv = (self.trace.token[rows] + 1).tolist()
        ctx_sum = float(sum(kv))
        t = yield from self._iteration(DECODE, rows, n, ctx_sum, lookups, ctx_sum)
        for q, c in zip(batch, kv):
            self.kv_tokens_live += c - q.kv_tokens
            q.kv_tokens = c
        self.kv_peak_tokens = max(self.kv_peak_tokens, self.kv_tokens_live)
        for q in batch:
            q.decoded += 1
            q.token_times.append(t)
            if q.decoded == 1 and not q.n_prefill:
                q.first_token = t

    def _end_iteration(self, phase: int, t0: float, t: float, n: int, rows) -> None:
        self.phase_time[phase] += t - t0
        self.iterations[phase] += 1
        if self.log_events:
            self.steps.append((self.iterations[0] + self.iterations[1] - 1, phase, t0, t, n,
                               self.cache.used_bytes))
        self.t = t
        self.placement.on_iteration_end(t)
        if self.migration_active:
            self.migration.on_iteration_end(phase, rows, t)

    def _prepare_decode(self, q: Request) -> None:
        if q.n_decode and self._direct:
            E, S, L = self.ctx.num_experts, self.ctx.slices_per_expert, self.ctx.num_layers
            s = q.start + q.n_prefill
            ex = self.trace.experts[s:s + q.n_decode].astype(np.int64)
            base = np.arange(L, dtype=np.int64)[None, :, None] * E
            q.dec_oids = ((ex + base) * S).tolist()

    def _finish(self, q: Request, t: float) -> None:
        q.finish = t
        self.kv_tokens_live -= q.kv_tokens
        q.dec_oids = None

    # ------------------------------------------------------------------ main process
    def _executor(self):
        wl = self.cfg.workload
        B = wl.batch_size
        closed = wl.arrivals.process == "closed_loop"
        backlog = deque(self.requests)
        future: deque[Request] = deque()
        if closed:
            for _ in range(min(closed_loop_concurrency(wl), len(backlog))):
                q = backlog.popleft()
                q.arrival = 0.0
                future.append(q)
        else:
            future, backlog = backlog, deque()
        waiting: deque[Request] = deque()
        running: list[Request] = []
        bar = self._progress            # tokens simulated, flushed every 256 iterations
        faults = self.hierarchy.faults
        pending = iters = 0
        while True:
            if self.env.peek() <= self.t:
                yield from self._sync()
            while future and future[0].arrival <= self.t:
                waiting.append(future.popleft())
            new = []
            while waiting and len(running) + len(new) < B:
                q = waiting.popleft()
                q.admitted = self.t
                if faults is not None:
                    faults.on_admit(self.t)
                self._prepare_decode(q)
                new.append(q)
            prefill = [q for q in new if q.n_prefill]
            running.extend(q for q in new if not q.n_prefill)
            done: list[Request] = []
            if bar is not None:
                pending += sum(q.n_prefill for q in prefill) if prefill else len(running)
                iters += 1
                if iters % 256 == 0:
                    bar.update(pending)
                    pending = 0
            if prefill:
                yield from self._prefill(prefill)
                for q in prefill:
                    (running.append(q) if q.n_decode else done.append(q))
            elif running:
                yield from self._decode(running)
                done = [q for q in running if q.decoded >= q.n_decode]
                if done:
                    running = [q for q in running if q.decoded < q.n_decode]
            elif future:
                self.t = max(self.t, future[0].arrival)
                continue
            else:
                if bar is not None:
                    bar.update(pending)
                break
            for q in done:
                self._finish(q, self.t)
                if closed and backlog:
                    nq = backlog.popleft()
                    nq.arrival = self.t
                    future.append(nq)

    def observe_lookups(self, observer) -> None:
        """Call ``observer(phase, layer, oids)`` with every lookup group the run performs (a
        layer's distinct objects in lookup order, pinned ones included), before its hits are
        decided. For tools that need the exact grouping of a run (miss-ratio curves); the
        hierarchy's lookup is wrapped on this instance only, so runs without an observer pay
        nothing."""
        hier = self.hierarchy
        inner = hier.access

        def wrapped(phase, layer, oids, counts, t, rows=None):
            observer(phase, layer, oids)
            return inner(phase, layer, oids, counts, t, rows)
        hier.access = wrapped

    def run(self, *, progress=None):
        """Run to completion and return a :class:`simulator.metrics.summary.RunResult`.
        ``progress``: a :func:`simulator.progress.bar` over the trace's tokens, or None."""
        from ..metrics.summary import collect
        self._progress = progress
        self.warm_objects = list(self.warmup.initialize(self.cache))
        self.hierarchy.initialize()
        proc = self.env.process(self._executor())
        self.env.run(until=proc)
        if self.env.now < self.t:
            self.env.run(until=self.t)
        self.hierarchy.close(self.t)
        return collect(self)
