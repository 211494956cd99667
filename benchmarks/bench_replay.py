#!/usr/bin/env python3
"""Replay speed and memory of the simulator against libCacheSim on the same access stream.

    python benchmarks/bench_replay.py                      # DeepSeek-V2-Lite prefill trace
    python benchmarks/bench_replay.py --trace mixtral-decode
    python benchmarks/bench_replay.py --trace deepseek-v2-lite --as-decode --max-requests 400
    python benchmarks/bench_replay.py --trace synthetic    # when ../shared/traces is absent
    python benchmarks/bench_replay.py --cases [--repeat 3] [--rss-10m] [--json FILE]

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

``--cases`` instead measures the engine cases of the performance issue in one run (so the
ratios are comparable), on one synthetic 1M-access Mixtral-8x7B decode trace (see
``cases_main``): plain LRU, oracle prefetch, 4 and 8 CXL expanders, 8 CXL + prefetch, Belady,
the bare LRU replay of plain LRU's lookup groups, start-up time, and with ``--rss-10m`` the
peak RSS of a 10M-access replay that writes a results folder with event tables.
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
    if "--cases" in sys.argv[1:] or "--case-child" in sys.argv[1:]:
        return cases_main(sys.argv[1:])
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
    ap.add_argument("--cases", action="store_true",
                    help="measure the engine cases instead (see --cases --help)")
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


# ================================================================ --cases: the engine cases
# Every case is a bundled experiment with --set overrides, run on the benchmark trace with
# one cache size; each repeat of each case is a fresh child process (cases interleaved across
# repeats, so a change of machine load hits all of them alike). Only public entry points are
# used (simulator.load_config, Simulation(loaded, trace).run(), observe_lookups, the CLI), so
# the script runs unchanged on a restructured engine.
EXPERIMENTS = REPO / "experiments"
PREFETCH_SET = ["prefetch={name: oracle_next_layer}"]
# 8 expanders, each on its own port, all behind the host's PCIe 5.0 x16 (as cxl_expanders.yaml
# with 4); single_tier placement interleaves the experts round-robin over the tier's devices.
_CXL8 = [("cxl_a", "cxl_x8"), ("cxl_b", "cxl_x8"), ("cxl_c", "cxl_x8"), ("cxl_d", "cxl_x16")] * 2
CXL8_SET = [
    "system.tiers.cxl.devices=[" + ", ".join(
        f"{{profile: {p}, path: [port_{i}, pcie]}}" for i, (p, _) in enumerate(_CXL8)) + "]",
    "system.links={pcie: {profile: pcie5_x16}, " + ", ".join(
        f"port_{i}: {{profile: {lk}}}" for i, (_, lk) in enumerate(_CXL8)) + "}",
]
# the MoE-CXL system as a user runs it: Algorithm 1 placement (moe_cxl.yaml), CXL-aware fetch
# scheduling, a predictive prefetcher and background migration with hysteresis
MOE_CXL_SET = ["scheduler.name=cxl_aware", "prefetch={name: transition}",
               "migration.name=hysteresis"]
# name -> (label, experiment file, extra --set items)
CASES = {
    "plain_lru": ("decode b1, LRU, DDR5 over PCIe (default.yaml)", "default.yaml", []),
    "prefetch": ("+ oracle_next_layer prefetch", "default.yaml", PREFETCH_SET),
    "cxl4": ("experts over 4 CXL devices (cxl_expanders.yaml)", "cxl_expanders.yaml", []),
    "cxl8": ("experts over 8 CXL devices", "cxl_expanders.yaml", CXL8_SET),
    "cxl8_prefetch": ("8 CXL devices + prefetch", "cxl_expanders.yaml", CXL8_SET + PREFETCH_SET),
    "belady": ("Belady, same capacity", "default.yaml", ["cache.name=belady"]),
    "transition": ("+ transition prefetch (online, gated)", "default.yaml",
                   ["prefetch={name: transition}"]),
    "moe_infinity": ("+ moe_infinity prefetch (online, gated)", "default.yaml",
                     ["prefetch={name: moe_infinity}"]),
    "moe_cxl": ("MoE-CXL: 4 CXL + DRAM + NVMe, Algorithm 1, cxl_aware, transition "
                "prefetch, migration", "moe_cxl.yaml", MOE_CXL_SET),
    "moe_cxl_noprefetch": ("the same without prefetch", "moe_cxl.yaml",
                           ["scheduler.name=cxl_aware", "migration.name=hysteresis"]),
    "dbsc": ("SliceMoE DBSC: MSB/LSB slices, slice_lru, LSB fills", "default.yaml",
             ["mixed_precision={name: dbsc}", "cache.name=slice_lru"]),
    "bare_lru": ("bare LRU class replay of plain_lru's lookups", "default.yaml", []),
}
SIM_CASES = [c for c in CASES if c != "bare_lru"]
TARGETS = {   # from the performance issue
    "plain_lru_acc_per_s": 1e6, "plain_vs_bare": 0.4, "slowdown_prefetch_cxl": 3.0,
    "slowdown_belady": 1.5, "startup_s": 0.3,
}


def _case_sets(args, parquet: str) -> list[str]:
    return [f"trace={parquet}", f"cache.capacity_gb={args.cache_gb!r}",
            "workload.batch_size=1", f"output.events={'false' if args.no_events else 'true'}"]


def _summary_counts(s: dict) -> tuple[int, int, int]:
    acc = s["expert_accesses.prefill"] + s["expert_accesses.decode"]
    return acc, s["lookups.prefill"] + s["lookups.decode"], s["hits.prefill"] + s["hits.decode"]


def case_child(case: str, parquet: str, sets: list[str]) -> dict:
    """One timed run of ``case`` in this (fresh) process."""
    from simulator import load_config, load_trace
    from simulator.engine.simulation import Simulation
    _, exp, extra = CASES[case]
    tr = load_trace(parquet)
    loaded = load_config(EXPERIMENTS / exp, sets + extra)
    gc.collect()
    if case != "bare_lru":
        t0 = time.perf_counter()
        sim = Simulation(loaded, tr)
        t1 = time.perf_counter()
        res = sim.run()
        t2 = time.perf_counter()
        acc, lk, hits = _summary_counts(res.summary)
        return {"case": case, "wall_s": t2 - t0, "setup_s": t1 - t0, "run_s": t2 - t1,
                "accesses": acc, "lookups": lk, "hits": hits}
    # bare replay: record plain_lru's lookup groups (untimed), then drive the project's LRU
    # class over them with the engine's group semantics (all hits first, then misses inserted
    # in lookup order). Nothing is pinned in default.yaml (all experts in DDR5).
    groups: list[tuple] = []
    sim = Simulation(loaded, tr)
    sim.observe_lookups(lambda phase, layer, oids: groups.append(tuple(oids)))
    res = sim.run()
    acc, lk, sim_hits = _summary_counts(res.summary)
    from simulator.models.spec import get_model
    from simulator.policies.cache.lru import LRU
    size = float(get_model(tr.meta.model).expert_bytes(loaded.config.model.precision or "bf16"))
    section = dict(loaded.config.cache)
    cache = LRU(LRU.parse_params(section, key="cache", source="bench"), None)   # ctx unused
    del sim, res
    gc.collect()
    access, insert = cache.access, cache.insert
    t0 = time.perf_counter()
    hits = 0
    for g in groups:
        missed = [o for o in g if not access(o)]
        hits += len(g) - len(missed)
        for o in missed:
            insert(o, size)
    wall = time.perf_counter() - t0
    return {"case": case, "wall_s": wall, "accesses": acc, "lookups": sum(map(len, groups)),
            "hits": hits, "sim_hits": sim_hits, "sim_lookups": lk}


_STARTUP = r"""
import os, sys, time
from simulator.cli import main
from simulator.engine.simulation import Simulation
_run = Simulation.run
def _stop(*a):
    print("FIRST", time.monotonic(), flush=True)
    os._exit(0)
def run(self, *a, **k):
    self.observe_lookups(_stop)
    return _run(self, *a, **k)
Simulation.run = run
main(sys.argv[1:])
print("NOITER", flush=True)
"""


def startup_once(out_dir: str) -> float:
    """Seconds from spawning ``moesim run experiments/default.yaml`` to its first lookup
    group (interpreter start, imports, config, trace read, Simulation, first layer)."""
    cmd = [sys.executable, "-c", _STARTUP, "run", str(EXPERIMENTS / "default.yaml"), "-q",
           "-o", out_dir]
    t0 = time.monotonic()           # CLOCK_MONOTONIC: one clock for all processes on Linux
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=out_dir, env=_child_env())
    line = [x for x in out.stdout.splitlines() if x.startswith("FIRST")]
    if not line:
        raise RuntimeError(f"start-up child reached no iteration:\n{out.stdout}{out.stderr}")
    return float(line[0].split()[1]) - t0


_RSS = r"""
import json, sys
from pathlib import Path
def hwm(field):
    for l in Path("/proc/self/status").read_text().splitlines():
        if l.startswith(field + ":"):
            return int(l.split()[1]) / 1024.0
from simulator.cli import main
import numpy, pandas, pyarrow  # noqa: the run's own imports, in the baseline
base = hwm("VmRSS")
code = main(sys.argv[1:])
print("RSS", json.dumps({"code": code, "baseline_mb": base, "peak_mb": hwm("VmHWM")}), flush=True)
"""


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def synth(out: Path, requests: int, decode_len: int, seed: int, fit: Path | None) -> str:
    """Write the benchmark trace with the project's synthesizer (CLI), untimed."""
    base = [sys.executable, "-m", "simulator.cli", "trace", "synth", "-o", str(out), "-q",
            "--requests", str(requests), "--prompt-len", "0", "--decode-len", str(decode_len),
            "--seed", str(seed)]
    if fit is not None:
        cmd = base + ["--from", str(fit)]
        desc = f"synthesised from a fit of {fit.name}"
    else:
        cmd = base + ["--model", "mixtral-8x7b"]
        desc = "synthesised from the default knobs"
    subprocess.run(cmd, check=True, env=_child_env(), stdout=subprocess.DEVNULL)
    return f"Mixtral-8x7B decode, {requests} requests x {decode_len} tokens, seed {seed}, {desc}"


def fit_humaneval(d: Path) -> Path | None:
    src = SHARED / REAL["mixtral-decode"]
    if not src.exists():
        return None
    pq, yml = d / "humaneval.parquet", d / "humaneval_fit.yaml"
    env = _child_env()
    subprocess.run([sys.executable, "-m", "simulator.cli", "trace", "import", str(src), "-o",
                    str(pq)], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "simulator.cli", "trace", "fit", str(pq), "-o",
                    str(yml), "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    return yml


def _run_child(args_list: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--case-child"] + args_list
    out = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    if out.returncode:
        raise RuntimeError(f"child {args_list[:1]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def cases_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="bench_replay.py --cases",
        description="Engine cases of the performance issue, on one 1M-access Mixtral-8x7B "
                    "decode trace, in one run: accesses/s and ratios to plain LRU and to the "
                    "bare LRU replay, start-up time, optionally peak RSS of a 10M replay.")
    ap.add_argument("--cases", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (median; default 3)")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(CASES))
    ap.add_argument("--requests", type=int, default=18)
    ap.add_argument("--decode-len", type=int, default=868,
                    help="18 x 868 tokens x 32 layers x top-2 = 1.0M accesses")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--fit", action="store_true",
                    help="synthesise from a fit of the shared humaneval Mixtral trace (when "
                         "present; slower to prepare) instead of the default knobs")
    ap.add_argument("--cache-gb", type=float, default=None,
                    help="expert cache for every case (default: default.yaml's capacity_gb)")
    ap.add_argument("--no-events", action="store_true",
                    help="output.events=false (default: as default.yaml, events on)")
    ap.add_argument("--startup-repeat", type=int, default=5)
    ap.add_argument("--no-startup", action="store_true")
    ap.add_argument("--rss-10m", action="store_true",
                    help="also: peak RSS of a 10M-access replay writing a results folder")
    ap.add_argument("--json", metavar="FILE", help="save the numbers as JSON")
    ap.add_argument("--case-child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case_child:
        case, parquet, *sets = args.case_child
        print(json.dumps(case_child(case, parquet, sets)))
        return 0
    from simulator import load_config
    if args.cache_gb is None:
        args.cache_gb = float(load_config(EXPERIMENTS / "default.yaml").config.cache["capacity_gb"])
    cases = [c for c in (args.only.split(",") if args.only else CASES) if c]
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    if "bare_lru" in cases or any(c != "plain_lru" for c in cases):
        cases = ["plain_lru"] + [c for c in cases if c != "plain_lru"]   # the reference
    load = {"uptime_before": _uptime(), "cpus": os.cpu_count()}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        fit = fit_humaneval(d) if args.fit else None
        if args.fit and fit is None:
            print(f"[humaneval trace not found under {SHARED}; using the default knobs]")
        pq = d / "bench.parquet"
        desc = synth(pq, args.requests, args.decode_len, args.seed, fit)
        sets = _case_sets(args, str(pq))
        runs: dict[str, list[dict]] = {c: [] for c in cases}
        for r in range(args.repeat):
            for c in cases:
                runs[c].append(_run_child([c, str(pq)] + sets))
                print(f"  [{r + 1}/{args.repeat}] {c}: {runs[c][-1]['wall_s']:.2f} s", file=sys.stderr)
        for c, rs in runs.items():
            wall = _median([x["wall_s"] for x in rs])
            rows[c] = {**{k: v for k, v in rs[0].items() if k != "wall_s"},
                       "label": CASES[c][0], "wall_s": wall,
                       "walls_s": [x["wall_s"] for x in rs],
                       "accesses_per_s": rs[0]["accesses"] / wall,
                       "lookups_per_s": rs[0]["lookups"] / wall}
        startup = None
        if not args.no_startup:
            ts = [startup_once(str(d)) for _ in range(args.startup_repeat)]
            startup = {"median_s": _median(ts), "runs_s": ts}
        rss = rss_10m(args, d, fit) if args.rss_10m else None
    load["uptime_after"] = _uptime()
    plain = rows["plain_lru"]
    bare = rows.get("bare_lru")
    for c, r in rows.items():
        r["slowdown_vs_plain"] = plain["accesses_per_s"] / r["accesses_per_s"]
        if bare:
            r["slowdown_vs_bare"] = bare["accesses_per_s"] / r["accesses_per_s"]
    out = {"trace": desc, "cache_gb": args.cache_gb, "events": not args.no_events,
           "repeat": args.repeat, "load": load, "cases": rows, "startup": startup,
           "rss_10m": rss, "targets": check_targets(rows, startup, rss)}
    if bare and bare["hits"] != plain["hits"]:
        out["warning"] = f"bare replay hits {bare['hits']} != plain_lru's {plain['hits']}"
    print_table(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def rss_10m(args, d: Path, fit: Path | None) -> dict:
    """Peak RSS (VmHWM) of a child running ``moesim run`` over a 10M-access decode trace
    with event tables, writing its results folder to ``d``; next to the trace arrays' size."""
    from simulator import load_trace
    pq = d / "bench10m.parquet"
    desc = synth(pq, args.requests * 10, args.decode_len, args.seed, fit)
    tr = load_trace(pq)
    arrays = sum(a.nbytes for a in (tr.experts, tr.scores, tr.router_probs, tr.imputed,
                                    tr.request_id, tr.token, tr.phase) if a is not None)
    accesses = int(tr.experts.size)
    del tr
    cmd = [sys.executable, "-c", _RSS, "run", str(EXPERIMENTS / "default.yaml"), "-q",
           "-o", str(d / "out10m"), "--trace", str(pq),
           "--set", f"cache.capacity_gb={args.cache_gb!r}", "--set", "output.events=true"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(d), env=_child_env())
    wall = time.perf_counter() - t0
    line = [x for x in out.stdout.splitlines() if x.startswith("RSS")]
    if out.returncode or not line:
        raise RuntimeError(f"10M child failed:\n{out.stdout}{out.stderr}")
    r = json.loads(line[0][4:])
    files = sorted(p.name for p in (d / "out10m").iterdir()) if (d / "out10m").is_dir() else []
    arr_mb = arrays / 2**20
    return {"trace": desc, "accesses": accesses, "trace_array_mb": arr_mb,
            "peak_rss_mb": r["peak_mb"], "baseline_rss_mb": r["baseline_mb"],
            "peak_above_baseline_mb": r["peak_mb"] - r["baseline_mb"],
            "budget_mb": 2 * arr_mb + 200, "wall_s": wall, "results_files": files}


def check_targets(rows: dict, startup, rss) -> list[dict]:
    t = []

    def add(what, value, target, ok):
        t.append({"target": what, "value": value, "limit": target, "met": bool(ok)})
    p = rows["plain_lru"]
    add("plain LRU accesses/s >= 1M", p["accesses_per_s"], TARGETS["plain_lru_acc_per_s"],
        p["accesses_per_s"] >= TARGETS["plain_lru_acc_per_s"])
    if "bare_lru" in rows:
        v = 1.0 / p["slowdown_vs_bare"]
        add("plain LRU >= 0.4 x bare LRU replay (throughput)", v, TARGETS["plain_vs_bare"],
            v >= TARGETS["plain_vs_bare"])
    for c in ("prefetch", "cxl4", "cxl8", "cxl8_prefetch", "moe_cxl"):
        if c in rows:
            v = rows[c]["slowdown_vs_plain"]
            add(f"{c} time/access within 3x plain LRU", v, TARGETS["slowdown_prefetch_cxl"],
                v <= TARGETS["slowdown_prefetch_cxl"])
    if "belady" in rows:
        v = rows["belady"]["slowdown_vs_plain"]
        add("belady time/access within 1.5x plain LRU", v, TARGETS["slowdown_belady"],
            v <= TARGETS["slowdown_belady"])
    if startup:
        add("start-up < 0.3 s", startup["median_s"], TARGETS["startup_s"],
            startup["median_s"] < TARGETS["startup_s"])
    if rss:
        v = rss["peak_above_baseline_mb"]
        add("10M replay peak RSS above baseline <= 2 x trace arrays + 200 MB", v,
            rss["budget_mb"], v <= rss["budget_mb"])
    return t


def print_table(out: dict) -> None:
    rows = out["cases"]
    print(f"trace: {out['trace']}")
    print(f"cache {out['cache_gb']:g} GB for every case; events logged: {out['events']}; "
          f"median of {out['repeat']} runs, each a fresh process")
    print(f"load: before: {out['load']['uptime_before']}\n      after:  {out['load']['uptime_after']}"
          f" ({out['load']['cpus']} CPUs)")
    hdr = f"{'case':<15} {'accesses/s':>12} {'lookups/s':>12} {'wall s':>7} {'x plain':>8} {'x bare':>7}  hit rate  description"
    print(hdr)
    print("-" * len(hdr))
    for c, r in rows.items():
        xb = f"{r['slowdown_vs_bare']:7.2f}" if "slowdown_vs_bare" in r else f"{'-':>7}"
        print(f"{c:<15} {r['accesses_per_s']:>12,.0f} {r['lookups_per_s']:>12,.0f} "
              f"{r['wall_s']:>7.3f} {r['slowdown_vs_plain']:>8.2f} {xb}  "
              f"{r['hits'] / r['lookups']:.4f}    {r['label']}")
    print("(x plain / x bare: time per access relative to plain_lru / to the bare LRU replay; "
          "accesses = token->expert uses)")
    if out["startup"]:
        s = out["startup"]
        print(f"start-up (spawn of `moesim run experiments/default.yaml` to its first lookup): "
              f"median {s['median_s']:.3f} s of {', '.join(f'{x:.3f}' for x in s['runs_s'])}")
    if out["rss_10m"]:
        r = out["rss_10m"]
        print(f"10M replay ({r['accesses']:,} accesses, events on, results folder written, "
              f"{r['wall_s']:.1f} s): peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"{r['peak_above_baseline_mb']:.0f} MB above the {r['baseline_rss_mb']:.0f} MB "
              f"baseline; trace arrays {r['trace_array_mb']:.1f} MB (budget 2 x arrays + 200 MB "
              f"= {r['budget_mb']:.0f} MB)")
    if out.get("warning"):
        print("WARNING:", out["warning"])
    print("targets:")
    for t in out["targets"]:
        print(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']:,.3f} "
              f"(limit {t['limit']:,})")


if __name__ == "__main__":
    sys.exit(main())
