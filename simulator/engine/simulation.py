"""Wiring and the run loop: trace + config -> SimPy environment -> counters.

One executor process runs *iterations* on the compute unit (continuous batching, vLLM-like):
newly admitted requests get a prefill iteration (all their prompt tokens, layer by layer,
each layer needing the union of the experts those tokens chose); otherwise all running
requests advance one decode token. Per layer: attention, then the router's experts are looked
up (pinned by placement, else the cache); resident experts run as one grouped kernel while
missing ones are fetched over the flow network, each running as soon as it arrives.

Lookup semantics. A layer's distinct experts are looked up together at the router decision:
those resident then (pinned, or in the cache) are hits and update the policy's state; the
misses are then fetched and inserted in lookup order, so a fetch never evicts an expert the
same layer found resident before it was used. (libCacheSim's one-request-at-a-time ``get``
can; tests drive libCacheSim group by group and get the engine's hits exactly.)

Clock. The executor keeps its own time ``self.t`` and only hands control to SimPy when
something else could happen first: before it reads the request queue or starts a transfer it
checks ``env.peek()`` (the next scheduled event); if that lies beyond ``self.t`` nothing can
interleave, so hits, compute and uncontended fetches advance the clock arithmetically with
no SimPy event. Otherwise it yields a timeout to ``self.t`` and uses events (contended
transfers, background prefetches, arrivals). ``engine.fast_path`` is therefore an
optimisation only: tests run both ways and compare.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import simpy

from ..config.load import LoadedConfig
from ..errors import ConfigError, SimulationError
from ..hardware.system import System, build_system
from ..models.spec import ModelSpec, check_trace_matches, get_model, load_model_file
from ..policies.base import make_policy
from ..traces.io import read_trace
from ..traces.schema import DECODE, PREFILL, Trace
from .compute import ComputeModel
from .context import SimContext
from .flows import Flow, FlowNetwork
from .transfer_log import TransferLog
from .workload import Request, build_requests, closed_loop_concurrency

DEMAND, PREFETCH = 0, 1


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
        self.ctx = SimContext(config=cfg, model=model, precision=self.precision, trace=trace,
                              system=self.system, rng=self.rng, requests=requests, source=src)
        self.fast_path = fast_path

        # policies
        self.placement = make_policy("placement", cfg.placement, self.ctx, source=src)
        home = np.asarray(self.placement.place(), dtype=np.int32)
        if home.shape != (self.ctx.num_objects,):
            raise SimulationError(f"placement returned {home.shape}, expected ({self.ctx.num_objects},)")
        self.home = home
        self.ctx.pinned = home == self.system.local.index
        self.cache = make_policy("cache", cfg.cache, self.ctx, source=src)
        self.prefetch = make_policy("prefetch", cfg.prefetch, self.ctx, source=src)
        self.routing = make_policy("routing", cfg.routing, self.ctx, source=src)
        self.warmup = make_policy("warmup", cfg.warmup, self.ctx, source=src)
        self.kv = make_policy("kv", cfg.kv, self.ctx, source=src)
        self._check_capacities()

        self.compute = ComputeModel(model, self.system.compute, self.system.local.spec,
                                    self.precision, self.kv.read_bytes_per_token_layer())
        self.env = simpy.Environment()
        self.net = FlowNetwork(self.env)
        self.net.on_complete = self._on_flow_done
        # fetch path per device (resources, latency)
        self.paths = [self.system.fetch_path(d) if not d.is_local else ((), 0.0)
                      for d in self.system.devices]

        nd, L = len(self.system.devices), self.ctx.num_layers
        self.t = 0.0
        # counters [phase]
        self.lookups = [0, 0]
        self.hits = [0, 0]
        self.accesses = [0, 0]            # token -> expert uses (n_tokens x k per layer)
        # plain lists, not numpy: they are bumped on the hot path
        self.layer_lookups = [[0] * L, [0] * L]
        self.layer_hits = [[0] * L, [0] * L]
        self.served = [[0] * nd, [0] * nd]           # lookups served per device
        self.fetched_bytes = [[0.0] * nd, [0.0] * nd]
        self.evictions = 0
        self.insertions = 0
        self.peak_cache_bytes = 0.0
        self.phase_time = [0.0, 0.0]
        self.iterations = [0, 0]
        self.kv_tokens_live = 0
        self.kv_peak_tokens = 0
        self.transfers = TransferLog()
        self.steps: list[tuple] = []
        self.log_events = cfg.output.events
        self.warm_objects: list[int] = []
        # prefetch state (only touched when the prefetch policy is active)
        self.prefetch_active = bool(self.prefetch.active)
        self.inflight: dict[int, Flow] = {}      # object -> its prefetch flow, until it lands
        self.staged: set[int] = set()            # landed prefetches, not used yet
        self.staged_bytes = self.pf_peak_buffer = 0.0
        self.pf_issued = self.pf_useful = self.pf_late = self.pf_wasted = 0
        self.pf_bytes = [0.0, 0.0]

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
            raise ConfigError(f"{self.cache.capacity_bytes / gb:g} GB is below one expert "
                              f"({obj / gb:.4g} GB at {self.precision}); use cache: {{name: none}} "
                              "for no cache", source=src, key="cache.capacity_gb")
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

    # ------------------------------------------------------------------ transfers
    def _on_flow_done(self, f: Flow) -> None:
        oid, dev, phase, purpose = f.tag
        self.fetched_bytes[phase][dev] += f.size
        if self.log_events:
            self.transfers.add(f.start_at, f.done_at, f.size, 1, dev, phase, purpose, (oid,))
        if purpose == PREFETCH and self.inflight.get(oid) is f:
            # a prefetched expert lands in the staging buffer; it enters the cache on first
            # use, as a demand fetch would have. (A prefetch that a lookup already waited
            # for, a late one, was used then and left ``inflight``: it is not staged again.)
            del self.inflight[oid]
            self.staged.add(oid)
            self.staged_bytes += f.size
            if self.staged_bytes > self.pf_peak_buffer:
                self.pf_peak_buffer = self.staged_bytes

    def _admit(self, oid: int, size: float) -> bool:
        """Insert ``oid`` into the cache, counting insertions and evictions (and wasted
        prefetches evicted unused). False if the cache declined to keep it."""
        evicted = self._cache_insert(oid, size)
        kept = not (evicted and evicted[-1] == oid)
        self.evictions += len(evicted) - (0 if kept else 1)
        if kept:
            self.insertions += 1
        used = self.cache.used_bytes
        if used > self.peak_cache_bytes:
            self.peak_cache_bytes = used
        return kept

    def _issue_prefetch(self, phase: int, oids, t: float):
        """Start background fetches of ``oids`` at ``t`` (those not pinned, cached, staged or
        already in flight). They use only bandwidth demand fetches leave, land in the staging
        buffer and enter the cache on first use."""
        pinned, contains, home, sizes = self._pinned, self.cache.contains, self.home, self._obj_bytes
        flows = []
        for oid in oids:
            if pinned[oid] or oid in self.inflight or oid in self.staged or contains(oid):
                continue
            dev = home[oid]
            f = Flow(sizes[oid], *self.paths[dev], tag=(oid, dev, phase, PREFETCH), priority=1)
            flows.append(f)
            self.inflight[oid] = f
            self.pf_issued += 1
            self.pf_bytes[phase] += f.size
        if flows:
            env = self.env
            if t > env.now:
                yield env.timeout(t - env.now)
            self.net.start(flows)

    # ------------------------------------------------------------------ the MoE block
    def _moe_layer(self, phase: int, layer: int, oids, counts, n: int, t: float):
        """Look up ``oids`` (with per-object token counts, or None = 1 each) and time the MoE
        block starting at ``t``. Returns the end time, or a state tuple when the fetches must
        go through SimPy events (see ``_moe_layer_events``)."""
        pinned = self._pinned
        access = self._cache_access
        hit_u = hit_a = 0
        missed = None
        i = 0
        for oid in oids:
            c = 1 if counts is None else counts[i]
            i += 1
            if pinned[oid] or access(oid):
                hit_u += 1
                hit_a += c
            else:
                if missed is None:
                    missed = []
                missed.append((oid, c))
        self.lookups[phase] += i
        self.hits[phase] += hit_u
        self.layer_lookups[phase][layer] += i
        self.layer_hits[phase][layer] += hit_u
        t_hit = t + self.compute.moe(n, hit_a, hit_u, phase)
        if missed is None:
            return t_hit
        return self._fetch_missed(phase, missed, t, t_hit)

    def _moe_layer_prefetching(self, phase: int, layer: int, oids, counts, n: int, t: float):
        """``_moe_layer`` when a prefetch policy is active. Objects neither pinned nor cached
        are misses, as without prefetching; a miss already staged (landed) runs as a resident
        expert, one still in flight is waited for (and promoted to demand priority), and both
        then enter the cache exactly as a demand fetch would have."""
        pinned, access = self._pinned, self._cache_access
        inflight, staged = self.inflight, self.staged
        sizes, home, served = self._obj_bytes, self.home, self.served[phase]
        # 1. hits, decided for the whole group before the cache changes (as without prefetch)
        res_u = res_a = hit_u = 0
        rest = []
        for i, oid in enumerate(oids):
            c = 1 if counts is None else counts[i]
            if pinned[oid] or access(oid):
                hit_u += 1
                res_u += 1
                res_a += c
            else:
                rest.append((oid, c))
        # 2. the rest enter the cache in lookup order, as demand fetches would have: staged
        # (landed, so resident for compute), late (in flight: waited for) or missed (fetched)
        missed, late = [], []
        for oid, c in rest:
            if oid in staged:
                staged.discard(oid)
                self.staged_bytes -= sizes[oid]
                self.pf_useful += 1
                res_u += 1
                res_a += c
            elif oid in inflight:
                late.append((oid, c, inflight.pop(oid)))
                self.pf_useful += 1
                self.pf_late += 1
            else:
                missed.append((oid, c))
            served[home[oid]] += 1
            self._admit(oid, sizes[oid])
        nl = len(oids)
        self.lookups[phase] += nl
        self.hits[phase] += hit_u
        self.layer_lookups[phase][layer] += nl
        self.layer_hits[phase][layer] += hit_u
        t_hit = t + self.compute.moe(n, res_a, res_u, phase)
        if not missed and not late:
            return t_hit
        flows = []
        for oid, _c in missed:
            dev = home[oid]
            flows.append(Flow(sizes[oid], *self.paths[dev], tag=(oid, dev, phase, DEMAND)))
        return (flows, missed, t, t_hit, late)

    def _fetch_missed(self, phase: int, missed, t: float, t_hit: float):
        """Insert the missed objects into the cache and fetch them; return the layer's end
        time (analytic path) or a state tuple for the event path."""
        uni = self._uniform
        if uni is not None and self.fast_path:
            # Common case, specialised: one backing device, one object size, batch fetch.
            dev, size = uni
            n = len(missed)
            insert = self._cache_insert
            ev = ins = 0
            for oid, _c in missed:
                evicted = insert(oid, size)
                if evicted:
                    if evicted[-1] == oid:
                        ev += len(evicted) - 1
                        continue
                    ev += len(evicted)
                ins += 1
            self.evictions += ev
            self.insertions += ins
            used = self.cache.used_bytes
            if used > self.peak_cache_bytes:
                self.peak_cache_bytes = used
            res, lat = self.paths[dev]
            end = self.net.isolated_uniform(res, lat, size, n, t, self.env.peek())
            if end is not None:
                self.served[phase][dev] += n
                self.fetched_bytes[phase][dev] += n * size
                if self.log_events:
                    self.transfers.add(t, end, size, n, dev, phase, DEMAND, [o for o, _c in missed])
                start = t_hit if t_hit > end else end
                return start + self.compute.experts_serial([c for _o, c in missed], phase)
            return self._fetch_general(phase, missed, t, t_hit, inserted=True)
        return self._fetch_general(phase, missed, t, t_hit, inserted=False)

    def _fetch_general(self, phase: int, missed, t: float, t_hit: float, inserted: bool):
        home, sizes = self.home, self._obj_bytes
        served = self.served[phase]
        devs = []
        msizes = []
        for oid, _c in missed:
            dev = home[oid]
            served[dev] += 1
            devs.append(dev)
            size = sizes[oid]
            msizes.append(size)
            if not inserted:
                self._admit(oid, size)
        if self.fast_path:
            dev0 = devs[0]
            if all(d == dev0 for d in devs):
                res, lat = self.paths[dev0]
                done = self.net.isolated_same_path(res, lat, msizes, t, self.env.peek())
                if done is not None:
                    self.fetched_bytes[phase][dev0] += sum(msizes)
                    if self.log_events:
                        for (oid, _c), d, sz in zip(missed, done, msizes):
                            self.transfers.add(t, d, sz, 1, dev0, phase, DEMAND, (oid,))
                    return self._schedule_late(phase, done, missed, t_hit)
        paths = self.paths
        flows = [Flow(size, *paths[dev], tag=(oid, dev, phase, DEMAND))
                 for (oid, _c), dev, size in zip(missed, devs, msizes)]
        if self.fast_path and self.net.run_isolated(flows, t, self.env.peek()):
            return self._schedule_late(phase, [f.done_at for f in flows], missed, t_hit)
        return (flows, missed, t, t_hit)

    def _schedule_late(self, phase: int, done, missed, t_hit: float) -> float:
        """Missing experts run one by one as they arrive, after the resident ones."""
        d0 = done[0]
        if all(d == d0 for d in done):          # one batch arriving together (common case)
            start = t_hit if t_hit > d0 else d0
            return start + self.compute.experts_serial([c for _o, c in missed], phase)
        expert_time = self.compute.expert
        end = t_hit
        for arrival, c in sorted(zip(done, (c for _o, c in missed)), key=lambda p: p[0]):
            end = (end if end > arrival else arrival) + expert_time(c, phase)
        return end

    def _moe_layer_events(self, phase: int, state):
        flows, missed, t, t_hit, *rest = state
        late = rest[0] if rest else []
        env = self.env
        if t > env.now:
            yield env.timeout(t - env.now)
        events = self.net.start(flows) if flows else []
        if late:
            self.net.promote([f for _o, _c, f in late])
        events += [f.event for _o, _c, f in late if not f.event.triggered]
        if events:
            yield env.all_of(events)
        done = [f.done_at for f in flows] + [f.done_at for _o, _c, f in late]
        return self._schedule_late(phase, done, list(missed) + [(o, c) for o, c, _f in late], t_hit)

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
        ex = np.asarray(self.routing.route(phase, layer, rows, ex), dtype=np.int64)
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
        prefetching = self.prefetch_active
        moe_layer = self._moe_layer_prefetching if prefetching else self._moe_layer
        peek = self.env.peek
        for layer in range(L):
            t += t_full if full[layer] else t_lin
            oids, counts = lookups(layer)
            if peek() <= t:                       # background events due: apply them first
                self.t = t
                yield from self._sync()
            r = moe_layer(phase, layer, oids, counts, n, t)
            if prefetching:
                yield from self._issue_prefetch(phase, self.prefetch.on_layer_start(phase, layer, rows), t)
            if type(r) is tuple:
                r = yield from self._moe_layer_events(phase, r)
            t = r
        self._end_iteration(phase, t0, t, n)
        return t

    def _prefill(self, batch: list[Request]):
        """All prompt tokens of ``batch`` together; a layer looks up the distinct experts its
        tokens chose (ascending id), each with its token count. KV of every sequence is read
        once (flash-attention style)."""
        rows = np.concatenate([np.arange(q.start, q.start + q.n_prefill) for q in batch])
        kv_read = float(sum(int(self.trace.token[q.start + q.n_prefill - 1]) + 1 for q in batch))
        if self.routing.identity:
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
        if not self.routing.identity:
            lookups = lambda layer: self._route(DECODE, layer, rows)
        elif n == 1:
            token = batch[0].dec_oids[batch[0].decoded]
            lookups = lambda layer: (token[layer], None)
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

    def _end_iteration(self, phase: int, t0: float, t: float, n: int) -> None:
        self.phase_time[phase] += t - t0
        self.iterations[phase] += 1
        if self.log_events:
            self.steps.append((self.iterations[0] + self.iterations[1] - 1, phase, t0, t, n,
                               self.cache.used_bytes))
        self.t = t
        self.placement.on_iteration_end(t)

    def _prepare_decode(self, q: Request) -> None:
        if q.n_decode and self.routing.identity:
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
        MoE-block methods are wrapped on this instance only, so runs without an observer
        pay nothing."""
        for name in ("_moe_layer", "_moe_layer_prefetching"):
            inner = getattr(self, name)

            def wrapped(phase, layer, oids, counts, n, t, _inner=inner):
                observer(phase, layer, oids)
                return _inner(phase, layer, oids, counts, n, t)
            setattr(self, name, wrapped)

    def run(self, *, progress=None):
        """Run to completion and return a :class:`simulator.metrics.summary.RunResult`.
        ``progress``: a :func:`simulator.progress.bar` over the trace's tokens, or None."""
        from ..metrics.summary import collect
        self._progress = progress
        self._pinned = self.ctx.pinned.tolist()
        self._obj_bytes = self.ctx.object_bytes.tolist()
        self._cache_access = self.cache.access
        self._cache_insert = self.cache.insert
        # (device, size) when every unpinned object lives on one device and all objects have
        # one size: the miss path then needs no per-object bookkeeping.
        unpinned = self.home[~self.ctx.pinned]
        sizes = self.ctx.object_bytes
        self._uniform = None
        if (unpinned.size and (unpinned == unpinned[0]).all() and (sizes == sizes[0]).all()
                and not self.prefetch_active):
            self._uniform = (int(unpinned[0]), float(sizes[0]))
        self.warm_objects = list(self.warmup.initialize(self.cache))
        self.peak_cache_bytes = self.cache.used_bytes
        proc = self.env.process(self._executor())
        self.env.run(until=proc)
        if self.env.now < self.t:
            self.env.run(until=self.t)
        self.net.close(self.t)
        self.pf_wasted = self.pf_issued - self.pf_useful     # landed or in flight, never used
        return collect(self)
