"""Turn the engine's counters into the run's summary and tables (DESIGN §4).

Energy is linear in the counters, so it is computed once here from aggregate bytes, FLOPs and
times rather than per access on the hot path. Every summary key is documented in
``definitions.METRICS``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from ..traces.schema import PHASE_NAMES

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from ..engine.simulation import Simulation
    from ..engine.transfer_log import TransferLog

# pandas and pyarrow are imported where a table is built, not here: a run simulates without
# them, and ``moesim run`` writes the transfers table from the log's arrays with pyarrow alone.

PURPOSE_NAMES = ("demand", "prefetch", "migrate", "fill")   # engine/hierarchy.py codes
STEP_COLUMNS = ("iteration", "phase", "start_s", "end_s", "tokens", "cache_bytes")
TRANSFER_COLUMNS = ("start_s", "end_s", "bytes", "src_device", "object_id", "phase", "purpose",
                    "layer", "expert")


class LazyTable:
    """A results table kept in the engine's form until asked for: ``to_pandas()`` builds the
    DataFrame (RunResult does that on first attribute access)."""

    def to_pandas(self) -> "pd.DataFrame":
        raise NotImplementedError


class FrameBuilder(LazyTable):
    """A table built by a function (small tables: requests, layers)."""

    def __init__(self, build: Callable[[], "pd.DataFrame"]):
        self._build = build

    def to_pandas(self) -> "pd.DataFrame":
        return self._build()


class StepsTable(LazyTable):
    """One row per iteration, from the engine's list of (iteration, phase, start_s, end_s,
    tokens, cache_bytes) tuples. ``cache_bytes``: expert-cache occupancy when the iteration
    ended."""

    def __init__(self, steps: list[tuple]):
        self._steps = steps

    def __len__(self) -> int:
        return len(self._steps)

    def _columns(self) -> dict[str, np.ndarray]:
        if not self._steps:
            return {"iteration": np.zeros(0, np.int64), "phase": np.zeros(0, object),
                    "start_s": np.zeros(0), "end_s": np.zeros(0),
                    "tokens": np.zeros(0, np.int64), "cache_bytes": np.zeros(0)}
        cols = {name: np.asarray(col) for name, col in zip(STEP_COLUMNS, zip(*self._steps))}
        cols["phase"] = np.asarray(PHASE_NAMES, dtype=object)[cols["phase"].astype(np.intp)]
        return cols

    def to_pandas(self) -> "pd.DataFrame":
        import pandas as pd
        steps = pd.DataFrame(self._steps, columns=list(STEP_COLUMNS))
        if len(steps):
            steps["phase"] = steps["phase"].map(dict(enumerate(PHASE_NAMES)))
        return steps

    def to_arrow(self) -> "pa.Table":
        import pyarrow as pa
        cols = self._columns()
        arrays = [pa.array(cols[n], type=pa.string()) if n == "phase" else pa.array(cols[n])
                  for n in STEP_COLUMNS]
        return pa.Table.from_arrays(arrays, names=list(STEP_COLUMNS))


class TransfersTable(LazyTable):
    """One row per transfer, kept as the engine's :class:`TransferLog` (typed per-batch
    buffers and one object id per transfer). Columns: start_s, end_s, bytes, src_device,
    object_id, phase, purpose (the last three categorical), layer and expert (from the
    object id)."""

    def __init__(self, log: "TransferLog", device_names: list[str], num_experts: int,
                 slices_per_expert: int):
        self._log = log
        self.device_names = list(device_names)
        self._E, self._S = int(num_experts), int(slices_per_expert)

    def __len__(self) -> int:
        return len(self._log)

    @property
    def nbytes(self) -> int:
        """Bytes of the expanded table's columns (1-byte category codes)."""
        return len(self) * (8 * 3 + 1 + 8 + 1 + 1 + 8 + 8)

    def _derived(self, oid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        E, S = self._E, self._S
        return oid // (E * S), (oid // S) % E

    def to_pandas(self) -> "pd.DataFrame":
        import pandas as pd
        rows = self._log.rows()
        transfers = pd.DataFrame({
            "start_s": rows["start_s"],
            "end_s": rows["end_s"],
            "bytes": rows["bytes"],
            "src_device": pd.Categorical.from_codes(rows["src"], categories=self.device_names),
            "object_id": rows["object_id"],
            "phase": pd.Categorical.from_codes(rows["phase"], categories=list(PHASE_NAMES)),
            "purpose": pd.Categorical.from_codes(rows["purpose"], categories=list(PURPOSE_NAMES)),
        }, copy=False)
        transfers["layer"], transfers["expert"] = self._derived(rows["object_id"])
        return transfers

    def arrow_schema(self) -> "pa.Schema":
        import pyarrow as pa
        cat = pa.dictionary(self._code_type(), pa.string())
        return pa.schema([("start_s", pa.float64()), ("end_s", pa.float64()),
                          ("bytes", pa.float64()), ("src_device", cat),
                          ("object_id", pa.int64()), ("phase", pa.dictionary(pa.int8(), pa.string())),
                          ("purpose", pa.dictionary(pa.int8(), pa.string())),
                          ("layer", pa.int64()), ("expert", pa.int64())])

    def _code_type(self):
        import pyarrow as pa
        return pa.int8() if len(self.device_names) < 128 else pa.int32()

    def record_batches(self, rows: int = 1 << 18) -> Iterator["pa.RecordBatch"]:
        """The table as Arrow record batches of about ``rows`` rows, expanded from the log
        one batch at a time (memory: one batch, not the table)."""
        import pyarrow as pa
        schema = self.arrow_schema()
        code = np.int8 if pa.types.is_int8(self._code_type()) else np.int32
        dicts = {"src_device": pa.array(self.device_names, type=pa.string()),
                 "phase": pa.array(list(PHASE_NAMES), type=pa.string()),
                 "purpose": pa.array(list(PURPOSE_NAMES), type=pa.string())}
        for piece in self._log.chunks(rows):
            oid = piece["object_id"]
            layer, expert = self._derived(oid)
            cats = {"src_device": piece["src"].astype(code), "phase": piece["phase"],
                    "purpose": piece["purpose"]}
            arrays = [pa.array(piece["start_s"]), pa.array(piece["end_s"]),
                      pa.array(piece["bytes"])]
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(cats["src_device"]),
                                                         dicts["src_device"]))
            arrays.append(pa.array(oid))
            for name in ("phase", "purpose"):
                arrays.append(pa.DictionaryArray.from_arrays(pa.array(cats[name]), dicts[name]))
            arrays += [pa.array(layer), pa.array(expert)]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)


_TABLES = ("requests", "steps", "transfers", "layers")


def _table_property(name: str) -> property:
    def get(self: "RunResult") -> "pd.DataFrame":
        frame = self._frames.get(name)
        if frame is None:
            src = self._sources[name]
            frame = src.to_pandas() if isinstance(src, LazyTable) else src
            self._frames[name] = frame
        return frame

    def put(self: "RunResult", value) -> None:
        self._sources[name] = value
        self._frames.pop(name, None)

    return property(get, put, doc=f"The {name} table as a pandas DataFrame (built on first "
                                  "access, then kept).")


class RunResult:
    """A run's summary (flat {metric: number}), tables, hardware description and notes.

    ``requests``, ``steps``, ``transfers`` and ``layers`` are pandas DataFrames, built on
    first attribute access from the engine's records (a run with the events on holds millions
    of transfers; the results writer streams them from :meth:`table_source` instead)."""

    requests = _table_property("requests")
    steps = _table_property("steps")
    transfers = _table_property("transfers")
    layers = _table_property("layers")

    def __init__(self, summary: dict[str, float], requests, steps, transfers, layers,
                 hardware: dict[str, Any] | None = None, notes: list[str] | None = None):
        self.summary = summary
        self._sources: dict[str, Any] = {"requests": requests, "steps": steps,
                                         "transfers": transfers, "layers": layers}
        self._frames: dict[str, Any] = {}
        self.hardware = {} if hardware is None else hardware
        self.notes = [] if notes is None else notes

    def table_source(self, name: str):
        """The table as given: a :class:`LazyTable` (not yet a DataFrame) or a DataFrame."""
        return self._sources[name]

    def __repr__(self) -> str:
        return (f"RunResult({len(self.summary)} summary metrics, tables "
                f"{', '.join(_TABLES)}, {len(self.notes)} notes)")


def _stats(prefix: str, values, out: dict) -> None:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        out[f"{prefix}.mean"] = out[f"{prefix}.p50"] = out[f"{prefix}.p99"] = float("nan")
        return
    out[f"{prefix}.mean"] = float(arr.mean())
    out[f"{prefix}.p50"] = float(np.percentile(arr, 50))
    out[f"{prefix}.p99"] = float(np.percentile(arr, 99))


# ---------------------------------------------------------------- load_balance_cv.<tier>
def balance_cv(read: dict[str, float], tiers: dict) -> dict[str, float]:
    """``load_balance_cv.<tier>``: coefficient of variation (population std / mean) of the bytes
    read from each device of the tier, for tiers with at least two devices; NaN when the
    tier's devices were not read at all. 0 = perfectly even; sqrt(n - 1) = one of n devices
    served everything. ``read``: device name -> bytes read; ``tiers``: tier -> devices."""
    out: dict[str, float] = {}
    for tier, tdevs in tiers.items():
        if len(tdevs) < 2:
            continue
        b = np.array([read[d.name] for d in tdevs], dtype=np.float64)
        mean = float(b.mean())
        out[f"load_balance_cv.{tier}"] = float(b.std() / mean) if mean > 0 else float("nan")
    return out


def _frame(data) -> "pd.DataFrame":
    import pandas as pd
    return pd.DataFrame(data)


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
    link_bytes = {n: 0.0 for n in sysm.links}
    link_phase = {n: [0.0, 0.0] for n in sysm.links}
    for d in devs:
        for l in d.path:
            link_bytes[l.name] += float(fetched[:, d.index].sum())
            for p in (0, 1):
                link_phase[l.name][p] += float(fetched[p, d.index])
    # bytes a failure cut short (read, crossed the links, then discarded) and moves between
    # devices (migration, re-homing): read at the source, written at the destination, on
    # the links of System.move_path
    cut = np.asarray(h.cut_bytes, dtype=np.float64)
    moved_read = {d.name: float(cut[:, d.index].sum()) for d in devs}
    moved_written = {d.name: 0.0 for d in devs}
    e_move_phase = [0.0, 0.0]
    for d in devs:
        for l in d.path:
            for p in (0, 1):
                link_phase[l.name][p] += float(cut[p, d.index])
                link_bytes[l.name] += float(cut[p, d.index])
        e_move_phase[0] += float(cut[0, d.index]) * d.spec.read_j_per_byte
        e_move_phase[1] += float(cut[1, d.index]) * d.spec.read_j_per_byte
    for (p, src, dst), b in h.moved.items():
        sd, dd = devs[src], devs[dst]
        moved_read[sd.name] += b
        moved_written[dd.name] += b
        e_move_phase[p] += b * (sd.spec.read_j_per_byte + dd.spec.write_j_per_byte)
        res, _lat = sysm.move_path(sd, dd)
        names = {r.name for r in res}
        for ln, l in sysm.links.items():
            if l.fwd.name in names or l.rev.name in names:
                link_bytes[ln] += b
                link_phase[ln][p] += b
    written[local.name] += float(cut.sum())
    for d in devs:
        read[d.name] += moved_read[d.name]
        written[d.name] += moved_written[d.name]
        s[f"bytes.read.{d.name}"] = read[d.name]
        s[f"bytes.written.{d.name}"] = written[d.name]
    s["migrations"] = h.move_counts["migrate"]
    s["bytes.migrated"] = h.move_bytes["migrate"]
    s["bytes.moved"] = float(sum(h.moved.values()))
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
    # moves and cut transfers, per device
    for d in devs:
        extra = float(cut[:, d.index].sum()) * d.spec.read_j_per_byte
        if d.is_local:                      # cut transfers were written here as they came
            extra += float(cut.sum()) * d.spec.write_j_per_byte
            e_move_phase[0] += float(cut[0].sum()) * d.spec.write_j_per_byte
            e_move_phase[1] += float(cut[1].sum()) * d.spec.write_j_per_byte
        for (p, src, dst), b in h.moved.items():
            if src == d.index:
                extra += b * d.spec.read_j_per_byte
            if dst == d.index:
                extra += b * d.spec.write_j_per_byte
        s[f"energy_j.dynamic.{d.name}"] += extra
    e_dyn_phase[0] += e_move_phase[0]
    e_dyn_phase[1] += e_move_phase[1]
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
    total_bytes = float(homed_bytes.sum())
    for tname, tdevs in sysm.tiers.items():
        tb = float(sum(homed_bytes[d.index] for d in tdevs))
        s[f"placement.share.{tname}"] = tb / total_bytes if total_bytes else float("nan")
    # ------------------------------------------------------------ prefetch
    misses = s["misses.prefill"] + s["misses.decode"]
    s["prefetch.issued"] = h.pf_issued
    s["prefetch.useful"] = h.pf_useful
    s["prefetch.late"] = h.pf_late
    s["prefetch.wasted"] = h.pf_wasted
    s["prefetch.late_bytes"] = h.pf_late_bytes
    s["prefetch.wasted_bytes"] = h.pf_wasted_bytes
    s["prefetch.peak_buffer_bytes"] = h.pf_peak_buffer
    s["prefetch.accuracy"] = h.pf_useful / h.pf_issued if h.pf_issued else float("nan")
    s["prefetch.coverage"] = h.pf_useful / misses if misses else float("nan")
    for p, name in enumerate(PHASE_NAMES):
        s[f"bytes.prefetched.{name}"] = h.pf_bytes[p]
    # ------------------------------------------------------------ mixed precision
    s.update(sim.mixed.summary())
    s.update(sim.routing.stats())                         # cache-aware routing (routing.*)
    if h.fills:
        s["fills"] = h.fill_count
        for p, name in enumerate(PHASE_NAMES):
            s[f"bytes.filled.{name}"] = h.fill_bytes[p]
    if sim.mixed_active or "routing.mass_moved" in s:
        # accuracy proxy per decode token-layer: gate mass rerouted + gate-weighted weight error
        tl = s["decode_tokens"] * sim.ctx.num_layers
        nan = float("nan")
        mm = s.get("routing.mass_moved", 0.0) / tl if tl else nan
        em = s.get("precision.error_mass", None if sim.mixed_active else 0.0)
        qe = (em / tl if tl else nan) if em is not None else nan
        s["accuracy.mass_moved_per_token"] = mm
        s["accuracy.quant_error_per_token"] = qe
        s["accuracy.proxy"] = mm + qe
    # ------------------------------------------------------------ faults
    from ..engine.faults import fault_report
    s.update(fault_report(sim))
    # ------------------------------------------------------------ utilisation
    s["utilization.compute"] = sum(sim.phase_time) / makespan if makespan > 0 else float("nan")
    for n, l in sysm.links.items():
        busy = max(l.fwd.busy_time, l.rev.busy_time)
        s[f"utilization.link.{n}"] = busy / makespan if makespan > 0 else float("nan")
    for d in devs:
        busy = max(d.read.busy_time, d.write.busy_time)
        s[f"utilization.device.{d.name}"] = busy / makespan if makespan > 0 else float("nan")
    s.update(balance_cv(read, sysm.tiers))

    # ------------------------------------------------------------ tables
    # Built on first use (RunResult): the engine's records are kept as they are.
    requests = FrameBuilder(lambda: _frame(req_rows))
    steps = StepsTable(sim.steps)
    transfers = TransfersTable(h.transfers, [d.name for d in devs], sim.ctx.num_experts,
                               sim.ctx.slices_per_expert)
    L = sim.ctx.num_layers
    layer_lookups = np.asarray(h.layer_lookups, dtype=np.int64).ravel()
    layer_hits = np.asarray(h.layer_hits, dtype=np.int64).ravel()
    layers = FrameBuilder(lambda: _frame({
        "layer": np.tile(np.arange(L), 2),
        "phase": np.repeat(list(PHASE_NAMES), L),
        "lookups": layer_lookups,
        "hits": layer_hits,
    }))
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
    notes.extend(sim.routing.labels())
    return RunResult(summary=s, requests=requests, steps=steps, transfers=transfers,
                     layers=layers, hardware=sysm.describe(), notes=notes)
