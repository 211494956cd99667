#!/usr/bin/env python3
"""A 20-size LRU cache-size sweep three ways, in one run: the one-pass curve (simulator/mrc)
vs 20 full simulations (``simulator.run`` at each ``cache.capacity_gb``) vs 20 libCacheSim
replays driven with the same lookup groups (``simulator.peers.replay_grouped``).

    python benchmarks/bench_mrc.py                          # default + bundled DeepSeek small
    python benchmarks/bench_mrc.py --trace deepseek-v2-lite --max-requests 200   # real trace

Sizes: 20 evenly spaced capacities from the largest lookup group up to every object (or what
fits the local tier next to the weights). Prints wall times, ratios, and checks that the three
agree on the hits at every size (exit 1 if not).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("MOESIM_SHARED_TRACES", REPO.parent / "shared" / "traces"))
REAL = {
    "deepseek-v2-lite": "moe-beyond-deepseek-v2-lite/deepseek_v2_lite_chat_prefill_topk.npz",
    "mixtral-decode": "speculative-moe-mixtral/humaneval_2_routing.jsonl",
    "qwen1.5-moe": "moe-ocs-qwen/outputs/experiment_traces",
}


def case(label: str, sets: list[str], trace=None, points: int = 20) -> bool:
    import simulator
    from simulator.mrc.curves import lru_curve
    from simulator.mrc.lookups import lookup_stream
    from simulator.peers import replay_grouped
    loaded = simulator.load_config(None, sets)
    t0 = time.perf_counter()
    ls = lookup_stream(loaded, trace)
    t_stream = time.perf_counter() - t0
    top = ls.num_objects
    if ls.local_free_bytes is not None:
        top = min(top, ls.capacity_objects(ls.local_free_bytes))
    sizes = sorted(set(np.linspace(ls.max_group, top, points).round().astype(int).tolist()))
    t0 = time.perf_counter()
    curve = lru_curve(ls, sizes)
    t_curve = time.perf_counter() - t0
    size = ls.object_bytes
    sims, peers = [], []
    t0 = time.perf_counter()
    for C in sizes:
        l = simulator.load_config(None, sets + ["cache.name=lru", f"cache.capacity_gb={C * size / 1e9!r}"])
        s = simulator.run(l, trace).summary
        sims.append(s["hits.prefill"] + s["hits.decode"])
    t_sims = time.perf_counter() - t0
    t0 = time.perf_counter()
    for C in sizes:
        peers.append(replay_grouped("lru", ls.oids, ls.starts, int(C * size), int(size))[0]
                     + sum(ls.pinned_lookups))
    t_peer = time.perf_counter() - t0
    ours = curve["hits"].sum(axis=1).tolist()
    agree = ours == sims == peers
    one = t_stream + t_curve
    print(f"{label}: {ls.n:,} lookups in {ls.starts.size:,} groups (largest {ls.max_group}), "
          f"{ls.num_objects:,} objects; {len(sizes)} sizes {sizes[0]}..{sizes[-1]} objects")
    print(f"  one-pass curve   {one:8.3f} s  (stream {t_stream:.3f} s + curve {t_curve:.3f} s; "
          f"{curve['windowed']:,} windowed lookups, <= {curve['rounds']} rounds)")
    print(f"  20 simulations   {t_sims:8.3f} s  ({t_sims / one:6.1f} x the curve)")
    print(f"  20 libCacheSim   {t_peer:8.3f} s  ({t_peer / one:6.1f} x the curve)")
    print(f"  hits agree at every size: {agree}"
          + ("" if agree else f"\n    curve {ours}\n    sims  {sims}\n    lcs   {peers}"))
    return agree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", choices=["bundled", *REAL], default="bundled",
                    help="bundled: default + deepseek_v2_lite_small; or a real trace")
    ap.add_argument("--max-requests", type=int, default=200)
    a = ap.parse_args()
    ok = True
    import simulator
    from simulator.mrc.lookups import lookup_stream
    lookup_stream(simulator.load_config(None, ["workload.max_requests=1"]))   # imports, warm
    if a.trace == "bundled":
        ok &= case("default (Mixtral-8x7B synthetic, 8 requests)", [])
        ok &= case("deepseek_v2_lite_small (bundled)",
                   ["trace=bundled:deepseek_v2_lite_small", "model.precision=bf16"])
    else:
        path = SHARED / REAL[a.trace]
        if not path.exists():
            print(f"{path} not found", file=sys.stderr)
            return 2
        from simulator.traces.importers import import_path
        tr = import_path(path).trace
        tr = tr.select_requests(tr.request_bounds()[0][:a.max_requests])
        ok &= case(f"{a.trace} (first {a.max_requests} requests, {tr.num_tokens:,} tokens)",
                   ["model.precision=bf16"], tr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
