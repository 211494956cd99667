#!/usr/bin/env python3
"""Cost of the bandwidth-sharing network (simulator/engine/flows.py), per transfer and per layer.

    python benchmarks/bench_flows.py            # all cases
    python benchmarks/bench_flows.py --quick    # fewer repetitions

1. Per transfer vs concurrency: N flows of distinct sizes over two paths that share a link,
   both priority classes, started together and run to completion (so ~N/2 are active on
   average, and every completion is its own change). Compared with the per-flow algorithm the
   network used before groups (progressive filling over every active flow at every change;
   taken from git history when available) and with the test oracle tests/flows_reference.py.
2. Steady state: N flows kept active (each completion starts a replacement), new network and
   the old per-flow algorithm.
3. Layer pattern (the engine's hot path with prefetching): per layer start 2 background flows,
   then 2 demand flows on one path, and run_until_done the demand ones; the background flows
   carry on into later layers. Reported in µs per layer, with and without building the Flows.
4. Engine pattern (what MemoryHierarchy does per layer with oracle_next_layer prefetching and
   one backing device): start the next layer's prefetch (1 background flow), promote this
   layer's prefetch when it is still in flight (late) and run_until_done it, then compute.

Prints only; no asserts.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulator.engine.flows import Flow, FlowNetwork, Resource  # noqa: E402
from tests import flows_reference as ref  # noqa: E402

CONCURRENCY = (1, 4, 16, 64, 256)
OLD_COMMIT = "6626fd3"        # last commit with the per-flow network


def old_module():
    """The pre-group flows.py from git history (None if unavailable)."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:simulator/engine/flows.py"],
                             capture_output=True, text=True, check=True).stdout
        import simpy  # noqa: F401  (the old module imports it)
    except Exception:
        return None
    path = Path(tempfile.mkdtemp()) / "old_flows.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_flows", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def topology(mod):
    shared = mod.Resource("link", 64e9)
    p1 = (mod.Resource("dram:read", 200e9), shared, mod.Resource("hbm:write", 3000e9))
    p2 = (mod.Resource("ssd:read", 7e9), shared, mod.Resource("hbm:write2", 3000e9))
    return p1, p2


def sizes(n):
    return [(1 + (i * 7919) % 97) * 1e6 for i in range(n)]


def timeit(fn, reps):
    best = math.inf
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


# ---------------------------------------------------------------------- batch to completion
def batch_new(n):
    p1, p2 = topology(sys.modules[__name__])
    net = FlowNetwork()
    fs = [Flow(s, p1 if i % 2 else p2, 1e-6, priority=i % 3 == 0) for i, s in enumerate(sizes(n))]
    net.start(fs, 0.0)
    net.run_until_done(fs)


def batch_old(mod, n):
    p1, p2 = topology(mod)
    net = mod.FlowNetwork.__new__(mod.FlowNetwork)
    net.t, net.pending, net.active = 0.0, [], []
    fs = [mod.Flow(s, p1 if i % 2 else p2, 1e-6, priority=i % 3 == 0) for i, s in enumerate(sizes(n))]
    net._admit(fs, 0.0)
    net._advance(math.inf)


def batch_ref(n):
    caps = [200e9, 64e9, 3000e9, 7e9, 3000e9]
    specs = [(0.0, s, (0, 1, 2) if i % 2 else (3, 1, 4), 1e-6, math.inf, int(i % 3 == 0), None)
             for i, s in enumerate(sizes(n))]
    ref.simulate(caps, specs)


# ---------------------------------------------------------------------- steady state
def steady_new(n, total):
    p1, p2 = topology(sys.modules[__name__])
    net = FlowNetwork()
    sz = sizes(total + n)
    k = [0]

    def refill(f):
        i = k[0]
        if i < total:
            k[0] = i + 1
            net.start([Flow(sz[i], p1 if i % 2 else p2, 1e-6, priority=i % 3 == 0)], net.t)

    net.on_complete = refill
    k[0] = n
    net.start([Flow(sz[i], p1 if i % 2 else p2, 1e-6, priority=i % 3 == 0) for i in range(n)], 0.0)
    net.advance_to(math.inf)


def steady_old(mod, n, total):
    p1, p2 = topology(mod)
    net = mod.FlowNetwork.__new__(mod.FlowNetwork)
    net.t, net.pending, net.active = 0.0, [], []
    sz = sizes(total + n)
    net._admit([mod.Flow(sz[i], p1 if i % 2 else p2, 1e-6, priority=i % 3 == 0)
                for i in range(n)], 0.0)
    k = n
    while net.pending or net.active:
        done = net._advance(net._next_change())
        for _f in done:
            if k < total:
                net._admit([mod.Flow(sz[k], p1 if k % 2 else p2, 1e-6, priority=k % 3 == 0)], net.t)
                k += 1
        mod.max_min_rates(net.active)


# ---------------------------------------------------------------------- layer pattern
def layer_pattern(layers, prebuilt):
    path = (Resource("dram:read", 200e9), Resource("pcie", 55e9), Resource("hbm:write", 3000e9))
    lat = 110e-9 + 10e-6
    net = FlowNetwork()
    size = 11_010_048.0
    if prebuilt:
        flows = [(Flow(size, path, lat, priority=1), Flow(size, path, lat, priority=1),
                  Flow(size, path, lat), Flow(size, path, lat)) for _ in range(layers)]
    t = 0.0
    t0 = time.process_time()
    for i in range(layers):
        if prebuilt:
            b1, b2, d1, d2 = flows[i]
        else:
            b1, b2 = Flow(size, path, lat, priority=1), Flow(size, path, lat, priority=1)
            d1, d2 = Flow(size, path, lat), Flow(size, path, lat)
        net.start([b1, b2], t)
        demand = [d1, d2]
        net.start(demand, t)
        t = net.run_until_done(demand) + 500e-6      # then the layer's compute (prefetches land)
    elapsed = time.process_time() - t0
    return elapsed / layers * 1e6


def engine_pattern(layers, compute=150e-6):
    path = (Resource("dram:read", 200e9), Resource("pcie", 55e9), Resource("hbm:write", 3000e9))
    lat = 110e-9 + 10e-6
    net = FlowNetwork()
    size = 11_010_048.0
    flows = [Flow(size, path, lat, priority=1) for _ in range(layers + 1)]
    t = 0.0
    t0 = time.process_time()
    net.start([flows[0]], t)
    for i in range(layers):
        net.advance_to(t)
        net.start([flows[i + 1]], t)
        f = flows[i]
        if f.done_at != f.done_at:                  # late: wait for it at demand priority
            late = [f]
            net.promote(late, t)
            t = net.run_until_done(late)
        t += compute
    elapsed = time.process_time() - t0
    return elapsed / layers * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 2 if args.quick else 5
    old = old_module()
    t0 = time.process_time()
    x = 0
    for i in range(1_000_000):
        x += i
    calib = time.process_time() - t0
    print(f"python {sys.version.split()[0]}; old per-flow network: "
          f"{'git ' + OLD_COMMIT if old else 'unavailable'}; machine speed: a 1M-iteration "
          f"`x += i` loop takes {calib:.3f} s (CPU time)")

    print("\n1. N flows started together, run to completion: µs per transfer "
          "(includes building the network and resources, which dominates at N=1)")
    print(f"{'N':>5} {'new':>10} {'old':>10} {'reference':>10}")
    for n in CONCURRENCY:
        new = timeit(lambda: batch_new(n), reps) / n * 1e6
        o = timeit(lambda: batch_old(old, n), reps) / n * 1e6 if old else math.nan
        r = timeit(lambda: batch_ref(n), 1 if n >= 64 else reps) / n * 1e6
        print(f"{n:>5} {new:>10.2f} {o:>10.2f} {r:>10.1f}")

    total = 2000 if args.quick else 5000
    print(f"\n2. N flows kept active, {total} transfers: µs per transfer")
    print(f"{'N':>5} {'new':>10} {'old':>10}")
    for n in CONCURRENCY:
        new = timeit(lambda: steady_new(n, total), reps) / total * 1e6
        m = total if n <= 64 else total // 5
        o = timeit(lambda: steady_old(old, n, m), 1) / m * 1e6 if old else math.nan
        print(f"{n:>5} {new:>10.2f} {o:>10.2f}")

    layers = 20_000 if args.quick else 100_000
    print(f"\n3. layer pattern (2 background + 2 demand flows, run_until_done the demand), "
          f"{layers} layers: µs per layer")
    best = min(layer_pattern(layers, False) for _ in range(reps))
    pre = min(layer_pattern(layers, True) for _ in range(reps))
    print(f"   including Flow construction: {best:.2f}")
    print(f"   Flows prebuilt:              {pre:.2f}")
    print(f"\n4. engine pattern (start 1 prefetch, promote and wait for the late one), "
          f"{layers} layers: µs per layer (Flows prebuilt)")
    print(f"   {min(engine_pattern(layers) for _ in range(reps)):.2f}")


if __name__ == "__main__":
    main()
