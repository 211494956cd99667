#!/usr/bin/env python3
"""Replay speed and memory of the simulator against libCacheSim on the same access stream.

    python benchmarks/bench_replay.py                      # DeepSeek-V2-Lite prefill trace
    python benchmarks/bench_replay.py --trace mixtral-decode
    python benchmarks/bench_replay.py --trace deepseek-v2-lite --as-decode --max-requests 400
    python benchmarks/bench_replay.py --trace synthetic    # when ../shared/traces is absent

The trace is imported from ../shared/traces (or $MOESIM_SHARED_TRACES) into a temporary
canonical Parquet file; a child process then loads it, runs the LRU config with full timing,
energy and event tables (the bundled default hardware, cache = --cache-fraction of all
(layer, expert) objects), and replays the same lookup stream through libCacheSim's LRU twice:
driven from Python one request at a time, and from C over a binary oracleGeneral file.
It prints:

* simulated expert accesses per wall second (token->expert uses; the stream of cache lookups
  is shorter in prefill, where a layer looks each distinct expert up once) and lookups/s;
* peak RSS of the child above its baseline after imports, next to the in-memory trace size
  (target: within 2 x trace arrays + 200 MB);
* the ratio to libCacheSim on the identical stream, and that the hit counts agree.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOESIM_SHARED_TRACES", REPO.parent / "shared" / "traces"))
REAL = {
    "deepseek-v2-lite": "moe-beyond-deepseek-v2-lite/deepseek_v2_lite_chat_prefill_topk.npz",
    "mixtral-decode": "speculative-moe-mixtral/humaneval_2_routing.jsonl",
    "qwen1.5-moe": "moe-ocs-qwen/outputs/experiment_traces",
    "flame-decoder": "flame-moe-dynande/Decoder_Batch_0-64",
}


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB. (getrusage's ru_maxrss survives exec on Linux,
    so a child would inherit its parent's peak; VmHWM belongs to this process image.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def prepare(args, out: Path) -> str:
    """Write the benchmark trace as canonical Parquet; return a description."""
    from simulator.traces.io import write_trace
    if args.trace == "synthetic" or (args.trace in REAL and not (SHARED / REAL[args.trace]).exists()):
        from simulator.traces.synthetic import RoutingModel, generate
        if args.trace != "synthetic":
            print(f"[{args.trace} not found under {SHARED}; using a synthetic trace]")
        m = RoutingModel.from_knobs(num_layers=26, num_experts=64, top_k=6, model="deepseek-v2-lite",
                                    zipf_alpha=0.6, locality_decode=0.25, seed=1)
        generate(m, out, requests=args.synthetic_requests, prompt_len=16, decode_len=240, seed=1,
                 scores=True)
        return "synthetic DeepSeek-V2-Lite-shaped trace"
    from simulator.traces.importers import import_path
    src = Path(args.trace) if args.trace not in REAL else SHARED / REAL[args.trace]
    tr = import_path(src).trace
    if args.max_requests:
        tr = tr.select_requests(tr.request_bounds()[0][: args.max_requests])
    if args.as_decode:
        tr.phase[:] = 1          # teacher-forced prompt tokens replayed one step at a time
    write_trace(tr, out)
    return f"{src.name}{' (as decode)' if args.as_decode else ''}"


def child(parquet: str, cache_fraction: float, events: bool) -> dict:
    import numpy as np
    import libcachesim as lcs
    from simulator.config.load import load_config
    from simulator.engine.simulation import Simulation
    from simulator.engine.stream import trace_stream
    from simulator.traces.io import read_trace
    from simulator.models.spec import get_model
    gc.collect()
    base = rss_mb()
    tr = read_trace(parquet)
    arrays = sum(a.nbytes for a in (tr.experts, tr.scores, tr.router_probs, tr.imputed,
                                    tr.request_id, tr.token, tr.phase) if a is not None)
    model = get_model(tr.meta.model)
    n_obj = tr.meta.num_layers * tr.meta.num_experts
    cap_objects = max(1, int(cache_fraction * n_obj))
    cap_gb = cap_objects * model.expert_bytes("bf16") / 1e9
    loaded = load_config(None, [f"trace={parquet}", f"cache.capacity_gb={cap_gb!r}",
                                f"output.events={'true' if events else 'false'}"])
    t0 = time.perf_counter()
    sim = Simulation(loaded, tr)
    res = sim.run()
    wall = time.perf_counter() - t0
    peak = peak_rss_mb()
    s = res.summary
    accesses = s["expert_accesses.prefill"] + s["expert_accesses.decode"]
    lookups = s["lookups.prefill"] + s["lookups.decode"]
    hits = s["hits.prefill"] + s["hits.decode"]
    del sim, res
    gc.collect()

    stream, starts = trace_stream(tr, groups=True)
    size = model.expert_bytes("bf16")
    from simulator.peers import replay_flat, replay_grouped
    # speed: libCacheSim's own replay of the same lookups, driven from Python
    t0 = time.perf_counter()
    replay_flat("lru", stream, cap_objects * size, size)
    py_wall = time.perf_counter() - t0
    # agreement: libCacheSim driven with the engine's layer-grouped lookups (not timed)
    peer_hits, _ = replay_grouped("lru", stream, starts, cap_objects * size, size)
    # C replay over a binary oracleGeneral file of the same stream
    dt = np.dtype([("t", "<u4"), ("id", "<u8"), ("sz", "<u4"), ("nx", "<i8")])
    rec = np.zeros(stream.size, dtype=dt)
    rec["t"], rec["id"], rec["sz"], rec["nx"] = np.arange(stream.size), stream, size, -1
    with tempfile.NamedTemporaryFile(suffix=".oracleGeneral.bin", delete=False) as fh:
        rec.tofile(fh)
        bin_path = fh.name
    reader = lcs.TraceReader(bin_path, trace_type=lcs.TraceType.ORACLE_GENERAL_TRACE)
    ccache = lcs.LRU(cache_size=cap_objects * size)
    t0 = time.perf_counter()
    miss_ratio, _ = ccache.process_trace(reader)
    c_wall = time.perf_counter() - t0
    os.unlink(bin_path)
    return {
        "trace": tr.summary_line(), "accesses": accesses, "lookups": lookups,
        "cache_objects": cap_objects, "objects": n_obj, "events": events,
        "wall_s": wall, "accesses_per_s": accesses / wall, "lookups_per_s": lookups / wall,
        "hits": hits, "hit_rate": hits / lookups,
        "peer_grouped_hits": int(peer_hits), "peer_py_lookups_per_s": stream.size / py_wall,
        "peer_c_hit_rate": 1.0 - miss_ratio, "peer_c_lookups_per_s": stream.size / c_wall,
        "trace_array_mb": arrays / 2**20, "baseline_rss_mb": base, "peak_rss_mb": peak,
        "peak_above_baseline_mb": peak - base,
        "memory_budget_mb": 2 * arrays / 2**20 + 200,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default="deepseek-v2-lite",
                    help=f"one of {', '.join(REAL)}, 'synthetic', or a path to import")
    ap.add_argument("--as-decode", action="store_true",
                    help="replay prompt tokens one decode step at a time (teacher-forced)")
    ap.add_argument("--max-requests", type=int, default=0, help="use only the first N requests")
    ap.add_argument("--cache-fraction", type=float, default=0.25,
                    help="LRU capacity as a fraction of all (layer, expert) objects")
    ap.add_argument("--no-events", action="store_true", help="do not log per-transfer events")
    ap.add_argument("--synthetic-requests", type=int, default=400)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.cache_fraction, not args.no_events)))
        return 0
    with tempfile.TemporaryDirectory() as d:
        pq = Path(d) / "bench.parquet"
        desc = prepare(args, pq)
        cmd = [sys.executable, __file__, "--child", str(pq), "--cache-fraction",
               str(args.cache_fraction)] + (["--no-events"] if args.no_events else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr)
            return out.returncode
        r = json.loads(out.stdout.strip().splitlines()[-1])
    r["source"] = desc
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    agree = r["hits"] == r["peer_grouped_hits"]
    print(f"trace: {desc}\n  {r['trace']}")
    print(f"  LRU cache {r['cache_objects']} of {r['objects']} objects; events logged: {r['events']}")
    print(f"moesim: {r['accesses']:,} expert accesses ({r['lookups']:,} lookups) in {r['wall_s']:.2f} s"
          f" -> {r['accesses_per_s']:,.0f} accesses/s, {r['lookups_per_s']:,.0f} lookups/s;"
          f" hit rate {r['hit_rate']:.4f}")
    print(f"libCacheSim LRU, same stream: Python-driven {r['peer_py_lookups_per_s']:,.0f} lookups/s "
          f"(moesim/libCacheSim = {r['lookups_per_s'] / r['peer_py_lookups_per_s']:.2f}); "
          f"C replay {r['peer_c_lookups_per_s']:,.0f} lookups/s "
          f"(ratio {r['lookups_per_s'] / r['peer_c_lookups_per_s']:.3f})")
    print(f"  hits equal libCacheSim driven with the same layer-grouped lookups: {agree} "
          f"({r['hits']:,} vs {r['peer_grouped_hits']:,}; libCacheSim's flat replay hit rate "
          f"{r['peer_c_hit_rate']:.4f})")
    print(f"memory: trace arrays {r['trace_array_mb']:.1f} MB; peak RSS {r['peak_rss_mb']:.0f} MB, "
          f"{r['peak_above_baseline_mb']:.0f} MB above the {r['baseline_rss_mb']:.0f} MB baseline "
          f"(budget 2 x arrays + 200 MB = {r['memory_budget_mb']:.0f} MB)")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
