#!/usr/bin/env python3
"""In-sample LRU fidelity of ``trace fit`` on every real trace in ../shared/traces, whole.

    python benchmarks/validate_fit.py                     # all traces present, markdown table
    python benchmarks/validate_fit.py --only deepseek-v2-lite --json out.json

For each trace (imported from ../shared/traces or $MOESIM_SHARED_TRACES): fit with the
defaults of ``moesim trace fit`` (seed 0), synthesise the same requests (lengths and phase
mix, seed 1), and compare the LRU hit rates of each phase stream at 10 %..90 % of the
(layer, expert) objects. Exit status 1 when a gap exceeds 3 percentage points.

This is the full form of the LRU-fidelity test in tests/test_fit.py: the test runs it on
every trace whole except DeepSeek-V2-Lite (1,999 prompts, three to five minutes on two
cores), of which it checks a slice (see LRU_SLICES there).
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

LRU_TOLERANCE_PP = 3.0


def lru_gaps(trace, *, seed: int = 0, **fit_kw) -> dict[str, float]:
    """Max |LRU hit rate gap| (pp) per phase present: real vs a synthetic of its requests."""
    import numpy as np
    from simulator.traces.fit import _lengths, _synthesise, fit_trace, lru_curve
    from simulator.traces.schema import PHASE_NAMES
    model = fit_trace(trace, seed=seed, **fit_kw)
    syn = _synthesise(model, _lengths(trace), trace.meta, seed=seed + 1)
    out = {}
    for phase, name in enumerate(PHASE_NAMES):
        a, b = lru_curve(trace, phase), lru_curve(syn, phase)
        if a is not None:
            out[name] = float(100 * np.abs(a - b).max())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=list(REAL_TRACE_SOURCES))
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    from simulator.traces.importers import import_path
    rows, bad = [], False
    print("| trace | tokens | prefill gap pp | decode gap pp | fit + check s |")
    print("|---|---:|---:|---:|---:|")
    for name in args.only:
        path = shared_traces_dir() / REAL_TRACE_SOURCES[name]
        if not path.exists():
            print(f"| {name} | absent | | | |")
            continue
        trace = import_path(path).trace
        t0 = time.perf_counter()
        gaps = lru_gaps(trace)
        wall = time.perf_counter() - t0
        bad |= any(g > LRU_TOLERANCE_PP for g in gaps.values())
        cell = {p: "-" if p not in gaps else f"{gaps[p]:.2f}" for p in ("prefill", "decode")}
        print(f"| {name} | {trace.num_tokens:,} | {cell['prefill']} | {cell['decode']} | "
              f"{wall:.0f} |", flush=True)
        rows.append({"trace": name, "tokens": trace.num_tokens, "gaps_pp": gaps, "wall_s": wall})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if bad:
        print(f"a gap exceeds {LRU_TOLERANCE_PP} pp", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
