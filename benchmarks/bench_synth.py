#!/usr/bin/env python3
"""Speed and peak memory of streaming synthesis (``moesim trace synth --from``).

    python benchmarks/bench_synth.py                          # 10M accesses, Mixtral fit
    python benchmarks/bench_synth.py --trace deepseek-v2-lite --accesses 30e6
    python benchmarks/bench_synth.py --from MODEL.yaml --prompt-len 256 --decode-len 256

A routing model is fitted on a real trace from ../shared/traces (or $MOESIM_SHARED_TRACES;
quick fit, ``--iterations``) or read from ``--from``; without either, a model from knobs in
the same shape. Child processes then stream traces of ``--accesses`` (default 10M) token ->
expert accesses, of a hundredth, a tenth and three times that, to Parquet, and report wall
time, accesses/s, file size and peak RSS above the child's baseline after imports and model
load. Streaming means the peak stops growing once a trace is longer than the generation
window (``WINDOW_ACCESSES`` in simulator/traces/synthetic.py): it is bounded by the window,
not the trace.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_replay import REAL, SHARED, peak_rss_mb, rss_mb  # noqa: E402


def prepare_model(args, out: Path) -> str:
    from simulator.traces.synthetic import RoutingModel
    if args.from_:
        RoutingModel.from_yaml(args.from_).to_yaml(out)
        return f"model {args.from_}"
    src = SHARED / REAL.get(args.trace, args.trace)
    if src.exists():
        from simulator.traces.fit import fit_trace
        from simulator.traces.importers import import_path
        tr = import_path(src).trace
        t0 = time.perf_counter()
        fit_trace(tr, iterations=args.iterations, seed=0).to_yaml(out)
        return f"fitted on {args.trace} ({tr.num_tokens:,} tokens) in {time.perf_counter() - t0:.1f} s"
    print(f"[{src} not found; using a model from knobs, Mixtral-8x7B shape]")
    RoutingModel.from_knobs(num_layers=32, num_experts=8, top_k=2, model="mixtral-8x7b",
                            seed=1).to_yaml(out)
    return "knobs (Mixtral-8x7B shape)"


def child(model_yaml: str, out: str, requests: int, prompt_len: int, decode_len: int) -> dict:
    from simulator.traces.synthetic import RoutingModel, generate
    m = RoutingModel.from_yaml(model_yaml)
    gc.collect()
    base = rss_mb()
    t0 = time.perf_counter()
    rep = generate(m, out, requests=requests, prompt_len=prompt_len, decode_len=decode_len, seed=1)
    wall = time.perf_counter() - t0
    peak = peak_rss_mb()
    return {"accesses": rep["accesses"], "tokens": rep["tokens"], "requests": requests,
            "wall_s": wall, "accesses_per_s": rep["accesses"] / wall,
            "file_mb": os.path.getsize(out) / 2**20, "baseline_rss_mb": base,
            "peak_above_baseline_mb": peak - base,
            "accesses_array_mb": rep["accesses"] * 4 / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default="mixtral-decode",
                    help=f"real trace to fit on: one of {', '.join(REAL)}, or a path")
    ap.add_argument("--from", dest="from_", help="use this fitted model YAML instead of fitting")
    ap.add_argument("--iterations", type=int, default=8, help="calibration iterations of the fit")
    ap.add_argument("--accesses", type=float, default=10e6, help="token -> expert accesses")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode-len", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        y, o, r, p, d = args.child
        print(json.dumps(child(y, o, int(r), int(p), int(d))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.yaml"
        desc = prepare_model(args, model)
        from simulator.traces.synthetic import RoutingModel
        m = RoutingModel.from_yaml(model)
        per_request = m.num_layers * m.top_k * (args.prompt_len + args.decode_len)
        for scale in (0.01, 0.1, 1.0, 3.0):
            requests = max(1, math.ceil(args.accesses * scale / per_request))
            out = Path(tmp) / f"synth_{scale}.parquet"
            cmd = [sys.executable, __file__, "--child", str(model), str(out), str(requests),
                   str(args.prompt_len), str(args.decode_len)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                sys.stderr.write(res.stderr)
                return res.returncode
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            out.unlink()
    if args.json:
        print(json.dumps({"model": desc, "runs": rows}, indent=1))
        return 0
    print(f"model: {desc}; {m.num_layers} layers, top-{m.top_k} of {m.num_experts}; "
          f"requests of {args.prompt_len} prompt + {args.decode_len} decode tokens")
    print(f"{'accesses':>12} {'tokens':>10} {'wall s':>8} {'accesses/s':>12} {'file MB':>8} "
          f"{'expert ids MB':>14} {'peak RSS above baseline MB':>27}")
    for r in rows:
        print(f"{r['accesses']:>12,} {r['tokens']:>10,} {r['wall_s']:>8.2f} "
              f"{r['accesses_per_s']:>12,.0f} {r['file_mb']:>8.1f} {r['accesses_array_mb']:>14.1f} "
              f"{r['peak_above_baseline_mb']:>27.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
