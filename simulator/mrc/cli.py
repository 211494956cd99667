"""``moesim mrc CONFIG``: hit rate vs expert-cache size (LRU and Belady) of a run's lookups."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import MoesimError

POLICIES = ("lru", "belady")
PHASES = ("all", "prefill", "decode")
COLUMNS = ["policy", "phase", "capacity_objects", "capacity_gb", "lookups", "hits", "hit_rate",
           "miss_ratio"]
DEFAULT_POINTS = 16
TABLE_SUFFIXES = (".csv", ".parquet")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    if not vals:
        raise MoesimError(f"{flag}: empty list; expected some of {', '.join(allowed)}")
    for v in vals:
        if v not in allowed:
            raise MoesimError(f"{flag}: '{v}' is not one of {', '.join(allowed)}")
    return list(dict.fromkeys(vals))


def _sizes_arg(text: str) -> list[int]:
    out = []
    for v in text.split(","):
        v = v.strip()
        try:
            n = int(v)
        except ValueError:
            raise MoesimError(f"--sizes: '{v}' is not a whole number of experts") from None
        if n <= 0:
            raise MoesimError(f"--sizes: {n} must be > 0 experts")
        out.append(n)
    return sorted(set(out))


def grid(c_max: int, points: int = DEFAULT_POINTS) -> list[int]:
    """About ``points`` evenly spaced capacities in (0, c_max]."""
    return sorted(set(int(np.ceil(x)) for x in np.linspace(c_max / points, c_max, points)))


def curve_rows(stream, policies, phases, sizes) -> tuple[list[dict], dict]:
    """Table rows (COLUMNS) and per-policy stats for ``sizes`` (objects)."""
    from .curves import belady_curve, lru_curve
    rows, stats = [], {}
    look = stream.lookups()
    for pol in policies:
        t0 = time.perf_counter()
        res = (lru_curve if pol == "lru" else belady_curve)(stream, sizes)
        stats[pol] = {"seconds": time.perf_counter() - t0,
                      **{k: res[k] for k in ("windowed", "rounds") if k in res}}
        for ph in phases:
            for j, C in enumerate(res["sizes"].tolist()):
                h = int(res["hits"][j].sum() if ph == "all" else res["hits"][j, PHASES.index(ph) - 1])
                n = int(look.sum() if ph == "all" else look[PHASES.index(ph) - 1])
                rate = h / n if n else float("nan")
                rows.append({"policy": pol, "phase": ph, "capacity_objects": int(C),
                             "capacity_gb": C * stream.object_bytes / 1e9, "lookups": n,
                             "hits": h, "hit_rate": rate, "miss_ratio": 1.0 - rate})
    return rows, stats


def write_table(rows: list[dict], path: Path) -> None:
    import pandas as pd
    from ..serialize import atomic_write
    df = pd.DataFrame(rows, columns=COLUMNS)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def _print(stream, loaded, rows, policies, phases, sizes, stats) -> None:
    gs = stream.group_sizes
    print(f"moesim mrc '{loaded.config.name}' ({stream.label}): {stream.n:,} cached lookups in "
          f"{gs.size:,} groups (largest {stream.max_group}), {stream.num_objects:,} objects of "
          f"{stream.object_bytes / 1e9:.4g} GB; pinned lookups {sum(stream.pinned_lookups):,} "
          "(hits at every size)")
    print(f"  lookups {stream.how}")
    by = {(r["policy"], r["phase"], r["capacity_objects"]): r for r in rows}
    for ph in phases:
        n = next(r["lookups"] for r in rows if r["phase"] == ph)
        print(f"\n  phase {ph} ({n:,} lookups)      hit rate")
        print("   cache GB   experts" + "".join(f"{p:>10}" for p in policies))
        for C in sizes:
            line = f"  {C * stream.object_bytes / 1e9:9.4g} {C:9d}"
            for p in policies:
                line += f"{by[(p, ph, C)]['hit_rate']:10.4f}"
            print(line)
    if "lru" in stats:
        s = stats["lru"]
        print(f"\n  lru: exact under the engine's group semantics at every size: one pass, plus "
              f"{s['windowed']:,} lookups whose hit depends on the order inside their last group "
              f"resolved per size ({s['rounds']} rounds at most); {s['seconds']:.2f} s")
    if "belady" in stats:
        print(f"  belady: the project's Belady replayed group by group at each of the "
              f"{len(sizes)} sizes; {stats['belady']['seconds']:.2f} s")
    for note in stream.notes:
        print(f"  note: {note}")
    free = stream.local_free_bytes
    if free is not None and sizes and sizes[-1] * stream.object_bytes > free:
        print(f"  note: caches above {max(free, 0) / 1e9:.4g} GB do not fit the local tier next to "
              "the weights and pinned experts (a run at that size is refused)")


def cmd_mrc(a) -> int:
    from .. import load_config
    from ..outputs import check_output_file
    from .lookups import lookup_stream
    policies = _choices(a.policy, POLICIES, "--policy")
    phases = _choices(a.phase, PHASES, "--phase")
    if a.sizes is not None and a.max_gb is not None:
        raise MoesimError("give --sizes or --max-gb, not both")
    sizes = _sizes_arg(a.sizes) if a.sizes is not None else None
    if a.max_gb is not None and not a.max_gb > 0:
        raise MoesimError(f"--max-gb: {a.max_gb} must be > 0 GB")
    out = check_output_file(a.output, "-o", suffixes=TABLE_SUFFIXES) if a.output else None
    plot = check_output_file(a.plot, "--plot", suffixes=PLOT_SUFFIXES) if a.plot else None
    loaded = load_config(a.config, list(a.set or []))
    stream = lookup_stream(loaded)
    if stream.n == 0:
        raise MoesimError(f"{loaded.source}: every lookup is of a pinned expert; no cache to size")
    if a.max_gb is not None:
        c_max = stream.capacity_objects(a.max_gb * 1e9)
        if c_max < 1:
            raise MoesimError(f"--max-gb: {a.max_gb} GB is below one expert "
                              f"({stream.object_bytes / 1e9:.4g} GB)")
        sizes = grid(c_max)
    elif sizes is None:
        sizes = grid(stream.num_objects)
    rows, stats = curve_rows(stream, policies, phases, sizes)
    if out is not None:
        write_table(rows, out)
    if plot is not None:
        import pandas as pd
        from ..plots import render
        render("mrc", pd.DataFrame(rows, columns=COLUMNS), plot)
    if a.json:
        from ..serialize import to_plain
        print(json.dumps(to_plain({"config": str(loaded.source), "model": stream.label,
                                   "lookups_from": stream.how, "notes": stream.notes,
                                   "object_gb": stream.object_bytes / 1e9, "rows": rows}),
                         indent=1))
    else:
        _print(stream, loaded, rows, policies, phases, sizes, stats)
        for what, p in (("table", out), ("figure", plot)):
            if p is not None:
                print(f"  wrote {what} {p}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "mrc", help="hit rate vs expert-cache size (LRU, Belady) of a run's lookups",
        description="Miss-ratio curve of the lookups the engine performs for CONFIG (layer by "
        "layer, the groups it really looks up): LRU exactly at every size from one pass over the "
        "stream, Belady (offline optimum) by a replay at each size. Prints hit rate vs cache "
        "size in GB and experts per policy and phase; -o writes the table (policy, phase, "
        "capacity_objects, capacity_gb, lookups, hits, hit_rate, miss_ratio), --plot draws it.")
    p.add_argument("config", nargs="?", help="run config YAML (default experiments/default.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--policy", default="lru,belady", help="lru, belady or both (default lru,belady)")
    p.add_argument("--sizes", metavar="N,N,...", help="cache sizes in experts")
    p.add_argument("--max-gb", type=float, default=None, metavar="G",
                   help=f"{DEFAULT_POINTS} sizes up to G GB (default: up to every object cached)")
    p.add_argument("--phase", default="all",
                   help="all (prefill + decode), prefill, decode, or a comma list (default all)")
    p.add_argument("-o", "--output", metavar="TABLE", help="write the table (.csv or .parquet)")
    p.add_argument("--plot", metavar="FILE", help="draw the curve (.png, .svg, .pdf)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_mrc)
