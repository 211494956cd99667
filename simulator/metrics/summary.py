"""Turn the engine's counters into the run's summary and tables (DESIGN §4).

Energy is linear in the counters, so it is computed once here from aggregate bytes, FLOPs and
times rather than per access on the hot path. Every summary key is documented in
``definitions.METRICS``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..traces.schema import PHASE_NAMES

if TYPE_CHECKING:
    from ..engine.simulation import Simulation


@dataclass
class RunResult:
    summary: dict[str, float]
    requests: pd.DataFrame
    steps: pd.DataFrame
    transfers: pd.DataFrame
    layers: pd.DataFrame
    hardware: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _stats(prefix: str, values, out: dict) -> None:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        out[f"{prefix}.mean"] = out[f"{prefix}.p50"] = out[f"{prefix}.p99"] = float("nan")
        return
    out[f"{prefix}.mean"] = float(arr.mean())
    out[f"{prefix}.p50"] = float(np.percentile(arr, 50))
    out[f"{prefix}.p99"] = float(np.percentile(arr, 99))


def collect(sim: "Simulation") -> RunResult:
    s: dict[str, float] = {}
    h = sim.hierarchy
    sysm = sim.system
    devs = sysm.devices
    reqs = sim.requests
    local = sysm.local
    makespan = sim.t - min((q.arrival for q in reqs), default=0.0) if reqs else 0.0
    makespan = max(makespan, 0.0)
    # ------------------------------------------------------------ workload and latency
    s["requests"] = len(reqs)
    s["prefill_tokens"] = int(sum(q.n_prefill for q in reqs))
    s["decode_tokens"] = int(sum(q.decoded for q in reqs))
    for p, name in enumerate(PHASE_NAMES):
        s[f"iterations.{name}"] = sim.iterations[p]
        s[f"time.{name}_s"] = sim.phase_time[p]
    s["makespan_s"] = makespan
    ttft = [q.first_token - q.arrival for q in reqs]
    gaps: list[float] = []
    req_rows = []
    for q in reqs:
        tt = np.asarray(q.token_times, dtype=np.float64)
        g = np.diff(tt)
        gaps.extend(g.tolist())
        req_rows.append({
            "request_id": q.rid, "arrival_s": q.arrival, "admitted_s": q.admitted,
            "first_token_s": q.first_token, "finish_s": q.finish,
            "ttft_s": q.first_token - q.arrival, "e2e_s": q.finish - q.arrival,
            "queue_s": q.admitted - q.arrival,
            "prompt_tokens": q.n_prefill, "decode_tokens": q.decoded,
            "tpot_mean_s": float(g.mean()) if g.size else float("nan"),
            "tpot_p50_s": float(np.percentile(g, 50)) if g.size else float("nan"),
            "tpot_p99_s": float(np.percentile(g, 99)) if g.size else float("nan"),
        })
    _stats("ttft_s", ttft, s)
    _stats("tpot_s", gaps, s)
    _stats("e2e_s", [q.finish - q.arrival for q in reqs], s)
    s["queue_s.mean"] = float(np.mean([q.admitted - q.arrival for q in reqs])) if reqs else float("nan")
    s["decode_tokens_per_s"] = s["decode_tokens"] / makespan if makespan > 0 else float("nan")
    s["tokens_per_s"] = ((s["prefill_tokens"] + s["decode_tokens"]) / makespan
                         if makespan > 0 else float("nan"))
    # ------------------------------------------------------------ accesses
    tot_l = tot_h = 0
    for p, name in enumerate(PHASE_NAMES):
        s[f"expert_accesses.{name}"] = sim.accesses[p]
        s[f"lookups.{name}"] = h.lookups[p]
        s[f"hits.{name}"] = h.hits[p]
        s[f"misses.{name}"] = h.lookups[p] - h.hits[p]
        s[f"hit_rate.{name}"] = h.hits[p] / h.lookups[p] if h.lookups[p] else float("nan")
        tot_l += h.lookups[p]
        tot_h += h.hits[p]
        for d in devs:
            served = h.hits[p] if d.is_local else int(h.served[p][d.index])
            s[f"lookups_served.{name}.{d.name}"] = served
    s["hit_rate"] = tot_h / tot_l if tot_l else float("nan")
    # ------------------------------------------------------------ bytes
    fetched = np.asarray(h.fetched_bytes, dtype=np.float64)   # [phase, src device]
    compute_read = sim.compute.local_bytes           # [phase]
    for p, name in enumerate(PHASE_NAMES):
        s[f"bytes.fetched.{name}"] = float(fetched[p].sum())
    total_fetched = float(fetched.sum())
    read = {d.name: float(fetched[:, d.index].sum()) for d in devs}
    written = {d.name: 0.0 for d in devs}
    read[local.name] = float(sum(compute_read))
    written[local.name] = total_fetched
    for d in devs:
        s[f"bytes.read.{d.name}"] = read[d.name]
        s[f"bytes.written.{d.name}"] = written[d.name]
    link_bytes = {n: 0.0 for n in sysm.links}
    link_phase = {n: [0.0, 0.0] for n in sysm.links}
    for d in devs:
        for l in d.path:
            link_bytes[l.name] += float(fetched[:, d.index].sum())
            for p in (0, 1):
                link_phase[l.name][p] += float(fetched[p, d.index])
    for n, b in link_bytes.items():
        s[f"bytes.link.{n}"] = b
    # ------------------------------------------------------------ energy
    comp = sysm.compute
    e_compute = [f * comp.j_per_flop for f in sim.compute.flops]
    e_dyn_phase = [0.0, 0.0]
    for d in devs:
        if d.is_local:
            per_phase = [compute_read[p] * d.spec.read_j_per_byte + float(fetched[p].sum())
                         * d.spec.write_j_per_byte for p in (0, 1)]
        else:
            per_phase = [float(fetched[p, d.index]) * d.spec.read_j_per_byte for p in (0, 1)]
        s[f"energy_j.dynamic.{d.name}"] = sum(per_phase)
        e_dyn_phase[0] += per_phase[0]
        e_dyn_phase[1] += per_phase[1]
    e_link_phase = [0.0, 0.0]
    for n, l in sysm.links.items():
        s[f"energy_j.link.{n}"] = link_bytes[n] * l.spec.j_per_byte
        for p in (0, 1):
            e_link_phase[p] += link_phase[n][p] * l.spec.j_per_byte
    static_w = comp.static_power_w + sum(d.spec.static_power_w for d in devs)
    s["energy_j.compute"] = sum(e_compute)
    s["energy_j.static.compute"] = comp.static_power_w * makespan
    for d in devs:
        s[f"energy_j.static.{d.name}"] = d.spec.static_power_w * makespan
    total = (s["energy_j.compute"] + sum(s[f"energy_j.dynamic.{d.name}"] for d in devs)
             + sum(s[f"energy_j.link.{n}"] for n in sysm.links)
             + s["energy_j.static.compute"] + sum(s[f"energy_j.static.{d.name}"] for d in devs))
    s["energy_j.total"] = total
    for p, name in enumerate(PHASE_NAMES):
        s[f"energy_j.{name}"] = (e_compute[p] + e_dyn_phase[p] + e_link_phase[p]
                                 + static_w * sim.phase_time[p])
    s["energy_j.idle"] = static_w * max(0.0, makespan - sum(sim.phase_time))
    s["energy_j_per_decode_token"] = total / s["decode_tokens"] if s["decode_tokens"] else float("nan")
    ntok = s["prefill_tokens"] + s["decode_tokens"]
    s["energy_j_per_token"] = total / ntok if ntok else float("nan")
    # ------------------------------------------------------------ cost, memory
    costs = sysm.memory_cost_usd()
    s["memory_cost_usd"] = float(sum(costs.values()))
    for n, c in costs.items():
        s[f"memory_cost_usd.{n}"] = c
    kv_peak = sim.kv.footprint_bytes(sim.kv_peak_tokens)
    s["local.capacity_bytes"] = local.spec.capacity_bytes
    s["local.non_expert_bytes"] = sim.non_expert_bytes
    s["local.pinned_bytes"] = sim.pinned_bytes
    s["local.kv_peak_bytes"] = kv_peak
    s["local.headroom_bytes"] = (local.spec.capacity_bytes - sim.non_expert_bytes - sim.pinned_bytes
                                 - sim.cache.capacity_bytes - kv_peak)
    s["cache.capacity_bytes"] = sim.cache.capacity_bytes
    s["cache.peak_bytes"] = h.peak_cache_bytes
    s["cache.insertions"] = h.insertions
    s["cache.evictions"] = h.evictions
    # ------------------------------------------------------------ placement (home of each expert)
    homed = np.bincount(h.home, minlength=len(devs))
    homed_bytes = np.bincount(h.home, weights=sim.ctx.object_bytes, minlength=len(devs))
    S = sim.ctx.slices_per_expert
    for d in devs:
        n = int(homed[d.index])
        s[f"placement.experts.{d.name}"] = n // S if n % S == 0 else n / S
    for d in devs:
        s[f"placement.bytes.{d.name}"] = float(homed_bytes[d.index])
    # ------------------------------------------------------------ prefetch
    misses = s["misses.prefill"] + s["misses.decode"]
    s["prefetch.issued"] = h.pf_issued
    s["prefetch.useful"] = h.pf_useful
    s["prefetch.late"] = h.pf_late
    s["prefetch.wasted"] = h.pf_wasted
    s["prefetch.peak_buffer_bytes"] = h.pf_peak_buffer
    s["prefetch.accuracy"] = h.pf_useful / h.pf_issued if h.pf_issued else float("nan")
    s["prefetch.coverage"] = h.pf_useful / misses if misses else float("nan")
    for p, name in enumerate(PHASE_NAMES):
        s[f"bytes.prefetched.{name}"] = h.pf_bytes[p]
    # ------------------------------------------------------------ utilisation
    s["utilization.compute"] = sum(sim.phase_time) / makespan if makespan > 0 else float("nan")
    for n, l in sysm.links.items():
        busy = max(l.fwd.busy_time, l.rev.busy_time)
        s[f"utilization.link.{n}"] = busy / makespan if makespan > 0 else float("nan")
    for d in devs:
        busy = max(d.read.busy_time, d.write.busy_time)
        s[f"utilization.device.{d.name}"] = busy / makespan if makespan > 0 else float("nan")
    for tier, tdevs in sysm.tiers.items():
        if len(tdevs) > 1:
            b = np.array([read[d.name] for d in tdevs])
            s[f"load_balance_cv.{tier}"] = float(b.std() / b.mean()) if b.mean() > 0 else float("nan")

    # ------------------------------------------------------------ tables
    requests = pd.DataFrame(req_rows)
    # cache_bytes: expert-cache occupancy when the iteration ended
    steps = pd.DataFrame(sim.steps, columns=["iteration", "phase", "start_s", "end_s", "tokens",
                                             "cache_bytes"])
    if len(steps):
        steps["phase"] = steps["phase"].map(dict(enumerate(PHASE_NAMES)))
    names = [d.name for d in devs]
    rows = h.transfers.rows()
    transfers = pd.DataFrame({
        "start_s": rows["start_s"],
        "end_s": rows["end_s"],
        "bytes": rows["bytes"],
        "src_device": pd.Categorical.from_codes(rows["src"], categories=names),
        "object_id": rows["object_id"],
        "phase": pd.Categorical.from_codes(rows["phase"], categories=list(PHASE_NAMES)),
        "purpose": pd.Categorical.from_codes(rows["purpose"], categories=["demand", "prefetch"]),
    }, copy=False)
    E, S = sim.ctx.num_experts, sim.ctx.slices_per_expert
    if len(transfers):
        transfers["layer"] = transfers["object_id"] // (E * S)
        transfers["expert"] = (transfers["object_id"] // S) % E
    L = sim.ctx.num_layers
    layers = pd.DataFrame({
        "layer": np.tile(np.arange(L), 2),
        "phase": np.repeat(list(PHASE_NAMES), L),
        "lookups": np.asarray(h.layer_lookups, dtype=np.int64).ravel(),
        "hits": np.asarray(h.layer_hits, dtype=np.int64).ravel(),
    })
    notes = []
    if s["local.headroom_bytes"] < 0:
        notes.append(f"local memory over-committed by {-s['local.headroom_bytes'] / 1e9:.3g} GB "
                     "at the KV peak")
    if getattr(sim.cache, "resyncs", 0):
        notes.append(f"Belady's future departed from the canonical stream {sim.cache.resyncs} "
                     "times (batched or re-routed run): its result is then not exactly optimal")
    if sim.trace.meta.notes.get("cross_layer_alignment") == "approximate":
        notes.append("trace: cross-layer alignment is approximate (see trace notes)")
    if sim.trace.imputed is not None and sim.trace.imputed.any():
        notes.append(f"trace: {int(sim.trace.imputed.sum())} (token, layer) cells were imputed "
                     "by the importer")
    return RunResult(summary=s, requests=requests, steps=steps, transfers=transfers,
                     layers=layers, hardware=sysm.describe(), notes=notes)
