"""Experiment files: parse, expand into points, validate every point before anything runs.

An experiment file names a base run config and the axes to sweep::

    name: cache_policies                 # default: the file's stem
    description: free text               # optional
    base: ../default.yaml                # run config (relative to this file), bundled:NAME,
                                         # or an inline mapping {trace: ..., system: ...}
    set: {output.events: false}          # dotted overrides applied to every point
    axes:                                # grid product, in order (first = slowest)
      - {key: cache.capacity_gb, values: [6, 12, 24, 48]}
      # (a key is swept once; instead of a list, a range:)
      #  {key: cache.capacity_gb, range: {start: 6, stop: 48, num: 8, scale: log}}
      - {key: workload.batch_size, range: {start: 1, stop: 9, step: 2}}   # 1,3,5,7,9
      - zip:                             # move together (equal lengths)
          - {key: system.links.pcie.profile, values: [pcie4_x16, pcie5_x16]}
          - {key: name, values: [gen4, gen5]}
      - variants:                        # named override sets -> column `variant`
          lru: {cache.name: lru}
          belady+prefetch: {cache.name: belady, prefetch.name: oracle_next_layer}
          none: {cache: {name: none}}
      - {key: trace, values: [bundled:default, ../../traces/deepseek_v2_lite_small.parquet]}
    repeat: {count: 3}                   # column `rep` (0..2); `seed` = the point's seed + rep
    metrics: [tpot_s.mean, hit_rate.decode]   # default: every summary metric
    save_runs: false                     # true: DIR/runs/<point_id>/ is each point's results folder
    figures:                             # `moesim sweep ... --plot` -> DIR/figures/
      - {kind: latency, x: cache.capacity_gb, hue: variant, file: tpot_vs_cache.png}

Overrides. A dotted key with a plain value replaces that key (like ``--set``); a mapping value
merges into the section like ``extends:`` does (a different policy ``name`` replaces the whole
section, so ``cache: {name: none}`` drops ``capacity_gb``, while ``cache.name: none`` keeps it).
Overrides apply in order: ``set``, then each axis in file order, then the repetition seed.
Paths given in the experiment file (``trace``, ``model.file``) are relative to the experiment
file; they are rewritten relative to the base config's folder, so the config hash does not
depend on where the checkout lives.

Ranges. ``{start, stop, num, scale: linear|log}`` gives ``num`` values from start to stop
inclusive (log: geometric); ``{start, stop, step}`` steps linearly and includes ``stop`` when a
step lands on it. Values are rounded to 12 significant digits (no 0.30000000000000004) and are
integers when start, stop (and step) are integers and every value is whole.

Points are numbered 0.. in grid order (first axis slowest, repetitions fastest). Each point's
config is built and checked like ``moesim run`` would (strict keys, policy parameters, trace,
model and capacities) before any point runs; two points with the same resolved config are an
error naming both.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config.load import (LoadedConfig, apply_set, deep_merge, load_mapping, read_config_yaml,
                           read_yaml)
from ..errors import ConfigError, MoesimError
from ..resources import bundled_dir

TOP_KEYS = ("name", "description", "base", "set", "axes", "repeat", "metrics", "save_runs",
            "figures")
AXIS_KINDS = ("values", "range", "zip", "variants")
PATH_KEYS = ("trace", "model.file")           # paths in an experiment file: relative to it
SIG_DIGITS = 12


@dataclass
class Axis:
    """One axis of the grid: its table columns and its levels (column values + overrides)."""

    columns: list[str]
    levels: list[tuple[tuple, list[tuple[str, Any]]]]   # (values per column, overrides)


@dataclass
class Point:
    point_id: int
    values: dict[str, Any]                    # table column -> value
    overrides: list[tuple[str, Any]]          # (dotted key, value) in application order
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    config_hash: str = ""
    trace_path: str = ""                      # resolved trace file
    loaded: LoadedConfig | None = field(repr=False, default=None)

    @property
    def key(self) -> str:
        return ", ".join(f"{k}={format_value(v)}" for k, v in self.values.items())

    def manifest_entry(self) -> dict[str, Any]:
        return {"point_id": self.point_id, "point_key": self.key, "values": self.values,
                "overrides": [[k, v] for k, v in self.overrides], "config_hash": self.config_hash}


@dataclass
class Experiment:
    name: str
    path: Path
    description: str
    base_raw: dict[str, Any]
    base_dir: Path
    axes: list[Axis]
    repeat: int                               # 0 = no repetition axis
    metrics: list[str] | None
    save_runs: bool
    figures: list[dict[str, Any]]
    points: list[Point] = field(default_factory=list)

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def columns(self) -> list[str]:
        cols = [c for a in self.axes for c in a.columns]
        return cols + (["rep", "seed"] if self.repeat else [])

    def sha256(self) -> str:
        """Digest of what decides the points' results (not metrics/figures: they only select
        and draw, so changing them is allowed on --resume)."""
        body = {"name": self.name, "points": [p.manifest_entry() for p in self.points]}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def format_value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def clean_number(v: float) -> float:
    """Round to 12 significant digits so range arithmetic leaves no 1e-17 residue."""
    return float(f"{float(v):.{SIG_DIGITS}g}")


# ---------------------------------------------------------------------------- parsing
def _err(src: str, key: str, msg: str) -> ConfigError:
    return ConfigError(msg, source=src, key=key)


def _check_keys(d: dict, allowed, src: str, key: str) -> None:
    for k in d:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise _err(src, where, f"unknown key '{k}' (expected {', '.join(allowed)})")


def _expand_range(r: Any, src: str, key: str) -> list:
    if not isinstance(r, dict):
        raise _err(src, key, f"must be a mapping {{start, stop, num|step, scale}}, got {r!r}")
    _check_keys(r, ("start", "stop", "num", "step", "scale"), src, key)
    for k in ("start", "stop"):
        if k not in r:
            raise _err(src, f"{key}.{k}", "is required")
        if isinstance(r[k], bool) or not isinstance(r[k], (int, float)) or not math.isfinite(r[k]):
            raise _err(src, f"{key}.{k}", f"must be a finite number, got {r[k]!r}")
    start, stop = r["start"], r["stop"]
    scale = r.get("scale", "linear")
    if scale not in ("linear", "log"):
        raise _err(src, f"{key}.scale", f"must be linear or log, got {scale!r}")
    if ("num" in r) == ("step" in r):
        raise _err(src, key, "give exactly one of num or step")
    ints = [start, stop]
    if "num" in r:
        num = r["num"]
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise _err(src, f"{key}.num", f"must be an integer >= 1, got {num!r}")
        if scale == "log":
            if start <= 0 or stop <= 0:
                raise _err(src, f"{key}.start" if start <= 0 else f"{key}.stop",
                           f"a log range needs start and stop > 0, got {start!r}..{stop!r}")
            vals = np.geomspace(start, stop, num) if num > 1 else np.array([start], float)
        else:
            vals = np.linspace(start, stop, num) if num > 1 else np.array([start], float)
    else:
        step = r["step"]
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            raise _err(src, f"{key}.step", f"must be a finite number, got {step!r}")
        if step == 0:
            raise _err(src, f"{key}.step", "must not be 0")
        if scale == "log":
            raise _err(src, f"{key}.scale", "a log range takes num, not step")
        if (stop - start) * step < 0:
            raise _err(src, f"{key}.step", f"step {step!r} never reaches stop {stop!r} from "
                       f"start {start!r}")
        n = int(math.floor((stop - start) / step * (1 + 1e-12) + 1e-9)) + 1
        if n > 1_000_000:
            raise _err(src, f"{key}.step", f"gives {n:,} values (more than 1,000,000)")
        vals = start + step * np.arange(n)
        ints.append(step)
    out = [clean_number(v) for v in vals]
    if all(isinstance(x, int) for x in ints) and all(v.is_integer() for v in out):
        return [int(v) for v in out]
    return out


def _values_axis(entry: dict, src: str, key: str) -> tuple[str, list]:
    """A {key, values|range} entry -> (config key, list of values)."""
    _check_keys(entry, ("key", "values", "range"), src, key)
    k = entry.get("key")
    if not isinstance(k, str) or not k or any(not p for p in k.split(".")):
        raise _err(src, f"{key}.key", f"must be a dotted config key, got {k!r}")
    if ("values" in entry) == ("range" in entry):
        raise _err(src, key, f"axis '{k}' needs exactly one of values or range")
    if "values" in entry:
        vals = entry["values"]
        if not isinstance(vals, list):
            raise _err(src, f"{key}.values", f"must be a list, got {vals!r}")
    else:
        vals = _expand_range(entry["range"], src, f"{key}.range")
    if not vals:
        raise _err(src, f"{key}.values", f"axis '{k}' has no values")
    return k, vals


def _overrides(mapping: Any, src: str, key: str) -> list[tuple[str, Any]]:
    if not isinstance(mapping, dict):
        raise _err(src, key, f"must be a mapping of dotted keys to values, got {mapping!r}")
    out = []
    for k, v in mapping.items():
        if not isinstance(k, str) or not k or any(not p for p in k.split(".")):
            raise _err(src, key, f"bad key {k!r}")
        out.append((k, v))
    return out


def _parse_axis(entry: Any, i: int, src: str) -> Axis:
    key = f"axes[{i}]"
    if not isinstance(entry, dict):
        raise _err(src, key, f"must be a mapping (key/values, key/range, zip or variants), got {entry!r}")
    if "zip" in entry:
        _check_keys(entry, ("zip",), src, key)
        subs = entry["zip"]
        if not isinstance(subs, list) or not subs:
            raise _err(src, f"{key}.zip", "must be a non-empty list of {key, values|range} axes")
        parsed = []
        for j, sub in enumerate(subs):
            if not isinstance(sub, dict):
                raise _err(src, f"{key}.zip[{j}]", f"must be a mapping {{key, values}}, got {sub!r}")
            parsed.append(_values_axis(sub, src, f"{key}.zip[{j}]"))
        lens = {len(v) for _, v in parsed}
        if len(lens) > 1:
            desc = ", ".join(f"{k} has {len(v)}" for k, v in parsed)
            raise _err(src, f"{key}.zip", f"zipped axes need equal lengths: {desc}")
        cols = [k for k, _ in parsed]
        if len(set(cols)) != len(cols):
            raise _err(src, f"{key}.zip", f"a key appears twice: {cols}")
        levels = [(tuple(v[n] for _, v in parsed), [(k, v[n]) for k, v in parsed])
                  for n in range(len(parsed[0][1]))]
        return Axis(cols, levels)
    if "variants" in entry:
        _check_keys(entry, ("variants",), src, key)
        var = entry["variants"]
        if not isinstance(var, dict) or not var:
            raise _err(src, f"{key}.variants", "must be a non-empty mapping name -> overrides")
        levels = []
        for name, ov in var.items():
            ov = {} if ov is None else ov
            levels.append(((str(name),), _overrides(ov, src, f"{key}.variants.{name}")))
        return Axis(["variant"], levels)
    k, vals = _values_axis(entry, src, key)
    return Axis([k], [((v,), [(k, v)]) for v in vals])


def _rebase(key: str, value: Any, exp_dir: Path, base_dir: Path) -> Any:
    """A path the experiment file gives (relative to it) -> relative to the base config."""
    if key not in PATH_KEYS or not isinstance(value, str) or value.startswith("bundled:"):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    return os.path.relpath(os.path.normpath(exp_dir / p), base_dir)


def apply_override(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Apply one (dotted key, value) override to a raw config mapping (returns it)."""
    parts = key.split(".")
    if isinstance(value, dict):
        nested: Any = copy.deepcopy(value)
        for p in reversed(parts):
            nested = {p: nested}
        return deep_merge(raw, nested)
    apply_set(raw, parts, copy.deepcopy(value))
    return raw


def _load_base(base: Any, path: Path) -> tuple[dict[str, Any], Path]:
    src = str(path)
    if base is None:
        raise _err(src, "base", "is required (a run config path, bundled:NAME or a mapping)")
    if isinstance(base, dict):
        raw = copy.deepcopy(base)
        parent = raw.pop("extends", None)
        if parent is not None:
            if not isinstance(parent, str):
                raise _err(src, "base.extends", f"must be a file name, got {parent!r}")
            ppath = path.parent / parent
            if not ppath.exists():
                raise _err(src, "base.extends", f"'{parent}' does not exist ({ppath})")
            raw = deep_merge(read_config_yaml(ppath), raw)
        return raw, path.parent
    if not isinstance(base, str) or not base:
        raise _err(src, "base", f"must be a path, bundled:NAME or a mapping, got {base!r}")
    if base.startswith("bundled:"):
        name = base.split(":", 1)[1]
        bpath = bundled_dir("experiments") / (name if name.endswith(".yaml") else f"{name}.yaml")
    else:
        bpath = Path(base).expanduser()
        if not bpath.is_absolute():
            bpath = path.parent / bpath
        bpath = Path(os.path.normpath(bpath))
    if not bpath.is_file():
        raise _err(src, "base", f"base config '{base}' not found ({bpath})")
    return read_config_yaml(bpath), bpath.parent


def parse_experiment(path: str | Path) -> Experiment:
    """Read an experiment file and expand its points (not yet validated: see validate)."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise ConfigError("experiment file not found", source=src)
    doc = read_yaml(path)
    _check_keys(doc, TOP_KEYS, src, "")
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise _err(src, "name", f"must be a non-empty name without '/', got {name!r}")
    desc = doc.get("description", "") or ""
    base_raw, base_dir = _load_base(doc.get("base"), path)
    exp_dir = path.parent

    sets = _overrides(doc.get("set") or {}, src, "set")
    sets = [(k, _rebase(k, v, exp_dir, base_dir)) for k, v in sets]
    for k, v in sets:
        base_raw = apply_override(base_raw, k, v)

    axes_doc = doc.get("axes")
    if axes_doc is None or (isinstance(axes_doc, list) and not axes_doc):
        raise _err(src, "axes", "needs at least one axis")
    if not isinstance(axes_doc, list):
        raise _err(src, "axes", f"must be a list of axes, got {axes_doc!r}")
    axes = [_parse_axis(e, i, src) for i, e in enumerate(axes_doc)]
    for a in axes:
        a.levels = [(vals, [(k, _rebase(k, v, exp_dir, base_dir)) for k, v in ov])
                    for vals, ov in a.levels]

    rep = doc.get("repeat")
    count = 0
    if rep is not None:
        if not isinstance(rep, dict):
            raise _err(src, "repeat", f"must be a mapping {{count: N}}, got {rep!r}")
        _check_keys(rep, ("count",), src, "repeat")
        count = rep.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise _err(src, "repeat.count", f"must be an integer >= 1, got {count!r}")

    cols = [c for a in axes for c in a.columns] + (["rep", "seed"] if count else [])
    seen = set()
    for c in cols:
        if c in seen:
            why = " (repeat sets seed)" if c in ("seed", "rep") and count else ""
            raise _err(src, "axes", f"column '{c}' is swept twice{why}")
        seen.add(c)
    reserved = {"point_id", "config_hash", "status", "error", "wall_s"} & seen
    if reserved:
        raise _err(src, "axes", f"'{sorted(reserved)[0]}' is a column of the results table, "
                   "not a config key")

    metrics = doc.get("metrics")
    if metrics is not None:
        metrics = _parse_metrics(metrics, src)
    save_runs = doc.get("save_runs", False)
    if not isinstance(save_runs, bool):
        raise _err(src, "save_runs", f"must be true or false, got {save_runs!r}")
    figures = _parse_figures(doc.get("figures") or [], src, cols, metrics)

    exp = Experiment(name, path, str(desc), base_raw, base_dir, axes, count, metrics,
                     save_runs, figures)
    exp.points = expand(exp)
    return exp


def _parse_metrics(metrics: Any, src: str) -> list[str]:
    from ..metrics.definitions import definition_of
    if not isinstance(metrics, list) or not metrics:
        raise _err(src, "metrics", f"must be a non-empty list of summary metric names, got {metrics!r}")
    for i, m in enumerate(metrics):
        if not isinstance(m, str) or definition_of(m) is None:
            raise _err(src, f"metrics[{i}]", f"unknown metric {m!r} (see `moesim metrics`)")
    if len(set(metrics)) != len(metrics):
        raise _err(src, "metrics", "a metric is listed twice")
    return list(metrics)


def _parse_figures(figs: Any, src: str, cols: list[str], metrics: list[str] | None) -> list[dict]:
    if not isinstance(figs, list):
        raise _err(src, "figures", f"must be a list of {{kind, file, ...}}, got {figs!r}")
    KINDS = None
    if figs:                                    # matplotlib is slow to import: only if needed
        try:
            from ..plots import KINDS
        except ImportError:
            pass
    from ..metrics.definitions import definition_of
    known = set(cols) | {"point_id", "config_hash"}
    files = set()
    out = []
    for i, f in enumerate(figs):
        key = f"figures[{i}]"
        if not isinstance(f, dict):
            raise _err(src, key, f"must be a mapping {{kind, file, ...}}, got {f!r}")
        kind = f.get("kind")
        if not isinstance(kind, str):
            raise _err(src, f"{key}.kind", f"is required (a plot kind), got {kind!r}")
        if KINDS is not None and kind not in KINDS:
            raise _err(src, f"{key}.kind", f"unknown plot kind '{kind}' (choose from "
                       f"{', '.join(sorted(KINDS))})")
        if KINDS is not None:
            takes = list(getattr(KINDS[kind], "params", None) or [])
            for p in f:
                if p not in ("kind", "file", "title") and takes and p not in takes:
                    raise _err(src, f"{key}.{p}", f"plot kind '{kind}' takes no '{p}' (it "
                               f"takes {', '.join(takes)})")
        fname = f.get("file", f"{kind}.png")
        if not isinstance(fname, str) or not fname or "/" in fname or fname.startswith("."):
            raise _err(src, f"{key}.file", f"must be a file name inside figures/, got {fname!r}")
        if fname in files:
            raise _err(src, f"{key}.file", f"'{fname}' is written by two figures")
        files.add(fname)
        for p in ("x", "hue"):
            v = f.get(p)
            if isinstance(v, str) and v not in known and definition_of(v) is None:
                raise _err(src, f"{key}.{p}", f"'{v}' is not a column of the table (swept: "
                           f"{', '.join(cols)})")
        y = f.get("y")
        if isinstance(y, str) and metrics is not None and y not in metrics and y not in known:
            raise _err(src, f"{key}.y", f"'{y}' is not among the experiment's metrics")
        out.append(dict(f, file=fname))
    return out


def expand(exp: Experiment) -> list[Point]:
    """The grid in order: first axis slowest, repetitions fastest."""
    import itertools
    level_lists = [a.levels for a in exp.axes]
    points = []
    for combo in itertools.product(*level_lists):
        values: dict[str, Any] = {}
        ovs: list[tuple[str, Any]] = []
        for axis, (vals, ov) in zip(exp.axes, combo):
            values.update(zip(axis.columns, vals))
            ovs.extend(ov)
        reps = range(exp.repeat) if exp.repeat else [None]
        for r in reps:
            raw = copy.deepcopy(exp.base_raw)
            for k, v in ovs:
                raw = apply_override(raw, k, v)
            vals = dict(values)
            pov = list(ovs)
            if r is not None:
                seed = raw.get("seed", 0)
                if isinstance(seed, bool) or not isinstance(seed, int):
                    raise _err(exp.source, "repeat", f"needs an integer base seed, got {seed!r}")
                vals["rep"], vals["seed"] = r, seed + r
                raw["seed"] = seed + r
                pov.append(("seed", seed + r))
            points.append(Point(len(points), vals, pov, raw))
    return points


# ---------------------------------------------------------------------------- validation
class TraceCache:
    """Traces read once per process, keyed by resolved path + size + mtime (a changed file
    is read again)."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._items: dict[tuple, Any] = {}
        self.reads = 0

    def get(self, path: str | Path):
        from ..traces.io import read_trace
        p = os.path.realpath(path)
        st = os.stat(p)
        k = (p, st.st_size, st.st_mtime_ns)
        tr = self._items.pop(k, None)
        if tr is None:
            tr = read_trace(path)
            self.reads += 1
        self._items[k] = tr                      # most recent last
        while len(self._items) > self.keep:
            self._items.pop(next(iter(self._items)))
        return tr


def _canonical(raw: Any) -> str:
    """A config's identity for duplicate detection: 24 and 24.0 are the same value."""
    def num(x):
        if isinstance(x, dict):
            return {str(k): num(v) for k, v in x.items()}
        if isinstance(x, list):
            return [num(v) for v in x]
        if isinstance(x, int) and not isinstance(x, bool):
            return float(x)
        return x
    return hashlib.sha256(json.dumps(num(raw), sort_keys=True, default=str).encode()).hexdigest()


def point_source(exp: Experiment, p: Point) -> str:
    return f"{exp.source}: point {p.point_id} ({p.key})"


def validate(exp: Experiment, traces: TraceCache | None = None, progress=None, *,
             keep_loaded: bool = False) -> None:
    """Build every point's config and its simulation (without running it), so a bad point is
    a one-line error now, not a failure an hour in. Fills config_hash and trace_path."""
    from ..engine.simulation import Simulation
    traces = traces or TraceCache()
    by_hash: dict[str, Point] = {}
    for p in exp.points:
        src = point_source(exp, p)
        try:
            loaded = load_mapping(p.raw, source=src, base_dir=exp.base_dir)
            tpath = loaded.resolve_path(loaded.config.trace)
            if not tpath.is_file():
                raise ConfigError(f"trace file not found: {loaded.config.trace} ({tpath})",
                                  source=src, key="trace")
            trace = traces.get(tpath)
            Simulation(loaded, trace)
        except ConfigError as exc:
            if exc.source and exc.source.startswith(src):
                raise
            raise MoesimError(f"{src}: {exc}") from None
        except MoesimError as exc:
            raise MoesimError(f"{src}: {exc}") from None
        p.config_hash, p.trace_path = loaded.config_hash, str(tpath)
        p.loaded = loaded if keep_loaded else None    # 1,000s of points: keep the driver small
        same = _canonical(loaded.raw)
        other = by_hash.get(same)
        if other is not None:
            raise ConfigError(f"point {p.point_id} ({p.key}) and point {other.point_id} "
                              f"({other.key}) have the same resolved config "
                              f"{p.config_hash}: duplicate points", source=exp.source, key="axes")
        by_hash[same] = p
        if progress is not None:
            progress.update(1)
