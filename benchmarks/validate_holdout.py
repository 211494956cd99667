#!/usr/bin/env python3
"""Held-out validation of ``trace fit`` on every real trace in ../shared/traces.

    python benchmarks/validate_holdout.py                 # all traces present, markdown table
    python benchmarks/validate_holdout.py --only mixtral-decode qwen1.5-moe --json out.json

For each trace (imported from ../shared/traces or $MOESIM_SHARED_TRACES): fit on the first
70 % (whole requests when it has >= 5 requests, else the first 70 % of each request's
tokens), synthesise the held-out part (seed 1), and compare
(simulator/traces/holdout.py). Each cell shows ``synthetic / fit part``, both measured
against the held-out part: the second number is how far the source drifts from itself.
The table in traces/README.md was produced by this script.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import REAL_TRACE_SOURCES, shared_traces_dir  # noqa: E402

COLUMNS = [("LRU hit rate, max gap (pp)", "LRU gap pp", "{:.1f}"),
           ("Belady hit rate, max gap (pp)", "Belady gap pp", "{:.1f}"),
           ("popularity TVD, mean over layers", "popularity TVD", "{:.3f}"),
           ("consecutive-token overlap, gap", "overlap gap", "{:.3f}"),
           ("reuse-distance TVD", "reuse-dist. TVD", "{:.3f}")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=list(REAL_TRACE_SOURCES))
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--iterations", type=int, default=24)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    from simulator.traces.holdout import holdout_validation
    from simulator.traces.importers import import_path
    results = {}
    for name in args.only:
        src = shared_traces_dir() / REAL_TRACE_SOURCES[name]
        if not src.exists():
            print(f"[skip {name}: {src} not found]", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        res = holdout_validation(import_path(src).trace, fraction=args.fraction,
                                 iterations=args.iterations)
        res = {k: res[k] for k in ("split", "tokens", "rows")}
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        results[name] = res
        print(f"[{name}: {res['split']}; {res['wall_s']} s]", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))

    head = ["trace", "phase", "held-out tokens"] + [c[1] for c in COLUMNS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    cross = []
    for name, res in results.items():
        rows = res["rows"]
        for phase in dict.fromkeys(r["phase"] for r in rows if r["phase"] != "all"):
            by = {r["statistic"]: r for r in rows if r["phase"] == phase}
            cells = [name, phase, f"{res['tokens']['held_out'][phase]:,}"]
            for key, _label, fmt in COLUMNS:
                r = by.get(key)
                cells.append("-" if r is None or r["synthetic"] is None else
                             f"{fmt.format(r['synthetic'])} / " +
                             ("-" if r["fit_part"] is None else fmt.format(r["fit_part"])))
            print("| " + " | ".join(cells) + " |")
        extra = {r["statistic"]: r for r in rows if r["phase"] == "all"}
        dep = extra.get("cross-layer dependence (bits)")
        js = extra.get("cross-layer transition JS divergence, mean")
        gate = extra.get("top-1 gate share histogram TVD")
        cross.append([name,
                      "-" if js is None else f"{js['synthetic']:.3f} / {js['fit_part']:.3f}",
                      "-" if dep is None else f"{dep['held_out']:.3f} / "
                      f"{dep['synthetic']:.3f} / {dep['fit_part']:.3f}",
                      "-" if gate is None else f"{gate['synthetic']:.3f} / {gate['fit_part']:.3f}"])
    print()
    print("| trace | cross-layer JS | dependence bits (held-out / synthetic / fit part) "
          "| top-1 gate share TVD |")
    print("|---|---|---|---|")
    for c in cross:
        print("| " + " | ".join(c) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
