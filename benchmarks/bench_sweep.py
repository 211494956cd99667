"""Sweep benchmark: parallel speed-up, per-point overhead, driver memory and table folding.

    python benchmarks/bench_sweep.py            # both parts (a few minutes on 2 cores)
    python benchmarks/bench_sweep.py --part 64  # or --part 1000

Part 64: a 64-point sweep of the bundled default (16 cache sizes x LRU/LFU/Belady/none,
output.events false) run by `moesim sweep` with --workers 1 and --workers 2. Speed-up =
wall(1) / wall(2). Per-point overhead = (wall(1) - sum of the points' simulate times) / 64,
where the simulate time of each point is `simulator.run(loaded, trace)` timed in this
process with the trace already in memory; it covers the driver (validation, point files,
fold), process start, imports and trace loads.

Part 1000: a 1,000-point sweep of a small config (workload.max_requests 1; 250 cache sizes x
4 policies): the driver's peak RSS (VmHWM of the driver process, sampled from /proc), the
validation time, and the time to fold the table from 250, 500 and 1,000 point files (it
must grow linearly).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def experiment(folder: Path, name: str, axes: list, sets: dict) -> Path:
    path = folder / f"{name}.yaml"
    body = {"name": name, "base": str(REPO / "experiments" / "default.yaml"), "set": sets,
            "axes": axes}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


POLICIES = {"variants": {"lru": {"cache.name": "lru"}, "lfu": {"cache.name": "lfu"},
                         "belady": {"cache.name": "belady"}, "none": {"cache.name": "none"}}}


TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for k in kids:
            out += _tree(k)
    return out


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])          # utime + stime


def run_driver(exp: Path, out: Path, *extra) -> tuple[float, int, float]:
    """Run `moesim sweep` as a subprocess; (wall s, driver peak RSS bytes, CPU s of the
    driver and every process under it: forkserver, workers — sampled every 20 ms from
    /proc, so CPU time is a load-independent measure of the work done)."""
    cmd = [sys.executable, "-m", "simulator.cli", "sweep", str(exp), "-o", str(out), "-q", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hwm, ticks = 0, {}
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]) * 1024)
            for p in _tree(proc.pid):
                try:
                    ticks[p] = max(ticks.get(p, 0), _cpu_ticks(p))
                except (OSError, IndexError, ValueError):
                    pass
        except OSError:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    out_s, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}): {err.strip()}")
    print(f"    {out_s.strip()}")
    return wall, hwm, sum(ticks.values()) / TICK


def simulate_times(exp_path: Path) -> list[float]:
    """Each point's simulate time in this process (trace in memory, config prebuilt)."""
    import simulator
    from simulator.sweeps.spec import TraceCache, parse_experiment, validate
    exp = parse_experiment(exp_path)
    cache = TraceCache()
    validate(exp, cache, keep_loaded=True)
    out = []
    for p in exp.points:
        tr = cache.get(p.trace_path)
        t0, c0 = time.perf_counter(), time.process_time()
        simulator.run(p.loaded, tr)
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i
    return x


def control_speedup() -> float:
    """The machine's own ceiling: pure-Python CPU work (16 equal tasks) on the same kind of
    pool with 1 and 2 workers. On a shared machine this is what 2 workers can gain at most."""
    from concurrent.futures import ProcessPoolExecutor
    from simulator.sweeps.runner import PoolExecutor
    walls = []
    for w in (1, 2):
        with ProcessPoolExecutor(w, mp_context=PoolExecutor.context()) as ex:
            list(ex.map(spin, [10] * w))
            t0 = time.perf_counter()
            list(ex.map(spin, [2_000_000] * 16))
            walls.append(time.perf_counter() - t0)
    return walls[0] / walls[1]


def part64(tmp: Path) -> None:
    print("part 64: 16 cache sizes x {lru, lfu, belady, none} on the bundled default")
    exp = experiment(tmp, "bench64", [
        {"key": "cache.capacity_gb", "range": {"start": 4.5, "stop": 72, "num": 16}}, POLICIES],
        {"output.events": False})
    one = experiment(tmp, "bench1", [{"key": "cache.capacity_gb", "values": [24]}],
                     {"output.events": False})
    sim = simulate_times(exp)
    n = len(sim)
    sim_wall, sim_cpu = sum(w for w, _ in sim), sum(c for _, c in sim)
    one_sim_cpu = min(c for _, c in simulate_times(one) * 1)
    print(f"  simulate time in-process (trace in memory): wall {sim_wall:.2f} s, CPU {sim_cpu:.2f} s; "
          f"mean point {sim_wall / n * 1e3:.0f} ms wall, {sim_cpu / n * 1e3:.0f} ms CPU")
    _, _, one_cpu = run_driver(one, tmp / "out1", "--workers", "1")
    fixed = one_cpu - one_sim_cpu
    print(f"  fixed cost of a sweep (1-point sweep's CPU - its simulate CPU): {fixed:.2f} s CPU "
          "(CLI start, validation, forkserver + imports, fold)")
    walls = {}
    for w in (1, 2):
        out = tmp / f"out64_w{w}"
        walls[w], _, cpu = run_driver(exp, out, "--workers", str(w))
        recs = [json.loads(p.read_text()) for p in sorted((out / "points").glob("*.json"))]
        in_cpu = sum(r["cpu_s"] for r in recs)
        marginal = (cpu - fixed - sim_cpu) / (n - 1)
        amort = (cpu - sim_cpu) / n
        print(f"  --workers {w}: wall {walls[w]:.2f} s; CPU of driver + workers {cpu:.2f} s "
              f"(inside points {in_cpu:.2f} s); trace reads per worker "
              f"{max(r['trace_reads'] for r in recs)}")
        print(f"    overhead per point: marginal {marginal * 1e3:.1f} ms CPU "
              f"({marginal / (sim_cpu / n) * 100:.1f}% of a mean point's simulate CPU); with the "
              f"fixed cost spread over {n} points {amort * 1e3:.1f} ms "
              f"({amort / (sim_cpu / n) * 100:.1f}%)")
    print(f"  speed-up 1 -> 2 workers (wall): {walls[1] / walls[2]:.2f}x; the machine's ceiling "
          f"now (pure-Python work, same pool, 1 vs 2 workers): {control_speedup():.2f}x")


def part1000(tmp: Path) -> None:
    from simulator.sweeps.spec import parse_experiment, validate
    from simulator.sweeps.table import fold
    print("part 1000: 250 cache sizes x 4 policies, workload.max_requests 1")
    exp_path = experiment(tmp, "bench1000", [
        {"key": "cache.capacity_gb", "range": {"start": 1, "stop": 72, "num": 250}}, POLICIES],
        {"output.events": False, "workload.max_requests": 1})
    t0 = time.perf_counter()
    exp = parse_experiment(exp_path)
    t1 = time.perf_counter()
    validate(exp)
    t2 = time.perf_counter()
    print(f"  parse + expand {t1 - t0:.2f} s, validate {t2 - t1:.2f} s "
          f"({(t2 - t1) / len(exp.points) * 1e3:.2f} ms per point)")
    out = tmp / "out1000"
    wall, hwm, cpu = run_driver(exp_path, out, "--workers", "2")
    print(f"  --workers 2: wall {wall:.1f} s, CPU {cpu:.1f} s, driver peak RSS {hwm / 2**20:.0f} MiB")
    man = json.loads((out / "sweep.json").read_text())
    for n in (250, 500, 1000):
        sub = dict(man, points=man["points"][:n])
        best = min(_timed(fold, out, sub, None) for _ in range(3))
        print(f"  fold {n:>5} point files -> parquet + csv: {best * 1e3:.0f} ms "
              f"({best / n * 1e6:.0f} us per point)")
    fold(out, man, None)


def _timed(f, *a) -> float:
    t0 = time.perf_counter()
    f(*a)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("64", "1000", "all"), default="all")
    a = ap.parse_args()
    print(f"cores available: {len(os.sched_getaffinity(0))}; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="moesim-bench-sweep-"))
    try:
        if a.part in ("64", "all"):
            part64(tmp)
        if a.part in ("1000", "all"):
            part1000(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
