"""``moesim sweep EXPERIMENT.yaml``: run an experiment file's points, fold one table."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import MoesimError

EXIT_INTERRUPTED = 130


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cmd_sweep(a) -> int:
    from .runner import run_sweep
    from .spec import parse_experiment, validate
    exp = parse_experiment(a.experiment)
    if a.workers is not None and a.workers < 1:
        raise MoesimError(f"--workers must be >= 1, got {a.workers}")
    if a.dry_run:
        validate(exp)
        cols = ", ".join(exp.columns)
        print(f"sweep '{exp.name}' ({exp.source}): {len(exp.points)} points over {cols}; "
              f"base config dir {exp.base_dir}")
        for p in exp.points:
            print(f"  {p.point_id:05d}  {p.config_hash}  {p.key}")
        return 0
    out = Path(a.output) if a.output else Path("results") / "sweeps" / exp.name
    workers = a.workers if a.workers is not None else _cores()
    res = run_sweep(exp, out, workers=workers, scheduler=a.scheduler, resume=a.resume,
                    retry_failed=a.retry_failed, quiet=a.quiet)
    import pandas as pd
    tab = pd.read_parquet(res.table, columns=["status"])
    ok = int((tab["status"] == "ok").sum())
    failed = len(tab) - ok
    if res.interrupted:
        print(f"interrupted: {len(tab)} finished points kept; rerun with --resume "
              f"(table {res.table})", file=sys.stderr)
        return EXIT_INTERRUPTED
    kept = f" ({res.kept} kept from before)" if res.kept else ""
    print(f"sweep '{exp.name}': {len(exp.points)} points, {ok} ok, {failed} failed{kept}; "
          f"wall {res.wall:.1f} s; table {res.table}")
    if failed:
        bad = tab.index[tab["status"] != "ok"]
        first = pd.read_parquet(res.table, columns=["point_id", "error"]).iloc[bad[0]]
        print(f"  first failure: point {int(first['point_id'])}: {first['error']}", file=sys.stderr)
    if a.plot:
        for path in plot_figures(exp, out):
            print(f"  figure {path}")
    return 1 if failed else 0


def plot_figures(exp, out: Path) -> list[Path]:
    """Render the experiment's ``figures:`` from DIR/results.parquet into DIR/figures/."""
    from .. import plots
    made = []
    for fig in exp.figures:
        params = {k: v for k, v in fig.items() if k not in ("kind", "file")}
        made.append(plots.render(fig["kind"], out / "results.parquet",
                                 out / "figures" / fig["file"], **params))
    return made


def add_parser(sub) -> None:
    sw = sub.add_parser(
        "sweep", help="run an experiment file's grid of configs into one table",
        description="Expand EXPERIMENT.yaml (a base run config and axes: values, ranges, "
        "zipped keys, named variants, traces, repetitions) into points, validate every point, "
        "run them on local worker processes or a Dask cluster, and fold one table "
        "(DIR/results.parquet and .csv, one row per point). Each finished point is saved at "
        "once in DIR/points/, so an interrupted sweep continues with --resume.")
    sw.add_argument("experiment", help="experiment YAML file (see experiments/sweeps/)")
    sw.add_argument("-o", "--output", help="results folder (default results/sweeps/<name>)")
    sw.add_argument("--dry-run", action="store_true",
                    help="print the expanded, validated points (id, config hash, axis values) and exit")
    sw.add_argument("--workers", type=int, default=None,
                    help="local worker processes (default: the cores available)")
    sw.add_argument("--scheduler", metavar="tcp://HOST:PORT|local:N",
                    help="run on an existing Dask scheduler, or start a LocalCluster of N workers")
    sw.add_argument("--resume", action="store_true",
                    help="continue the sweep in -o: skip finished points, run the rest")
    sw.add_argument("--retry-failed", action="store_true",
                    help="with --resume: also rerun points recorded with an error")
    sw.add_argument("--plot", action="store_true",
                    help="render the experiment's figures into DIR/figures/ at the end")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)
