"""Folding point files into the sweep's tidy table (``results.parquet`` and ``results.csv``).

One row per finished point, sorted by ``point_id``; columns in this order: ``point_id``, one
column per swept key (``variant`` for variants, ``rep`` and ``seed`` for repetitions),
``config_hash``, the chosen metrics (default: every summary metric, in order of first
appearance), ``status``, ``error``, ``wall_s``. Column types come from the experiment, not
from which points happen to be present: axis columns are int64, float64, bool or string by
their values over *all* points; metrics are float64 with NaN where a point has no value.

The table is folded once, at the end (or on interrupt), in one pass over the point files —
O(points) — and written atomically. ``wall_s`` is the only column that differs between two
runs of the same experiment (on any executor).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..serialize import atomic_write

FIXED_TAIL = ("status", "error", "wall_s")


def _column(values: list[Any]) -> tuple[str, Any]:
    """The dtype of an axis column from all its values (and a converter)."""
    if all(isinstance(v, bool) for v in values):
        return "bool", bool
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int64", int
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "float64", float
    if all(isinstance(v, str) for v in values):
        return "object", str
    return "object", lambda v: v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _metric(v: Any) -> float:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def build_table(points: list[tuple[dict, dict]], columns: list[str], all_values: dict[str, list],
                metrics: list[str] | None) -> pd.DataFrame:
    """``points``: (manifest entry, point record) in point-id order."""
    if metrics is None:
        seen: dict[str, None] = {}
        for _, rec in points:
            for k in rec.get("metrics") or {}:
                seen.setdefault(k, None)
        metrics = list(seen)
    data: dict[str, Any] = {"point_id": np.array([e["point_id"] for e, _ in points], dtype=np.int64)}
    for c in columns:
        dtype, conv = _column(all_values[c])
        data[c] = pd.Series([conv(e["values"][c]) for e, _ in points], dtype=dtype)
    data["config_hash"] = pd.Series([e["config_hash"] for e, _ in points], dtype="object")
    for m in metrics:
        data[m] = np.array([_metric((rec.get("metrics") or {}).get(m)) for _, rec in points],
                           dtype=np.float64)
    data["status"] = pd.Series([rec.get("status", "error") for _, rec in points], dtype="object")
    data["error"] = pd.Series([rec.get("error") or "" for _, rec in points], dtype="object")
    data["wall_s"] = np.array([_metric(rec.get("wall_s")) for _, rec in points], dtype=np.float64)
    return pd.DataFrame(data)


def fold(out: Path, manifest: dict, metrics: list[str] | None) -> Path:
    """Read every finished point file once; write DIR/results.parquet and .csv."""
    from .runner import read_point
    out = Path(out)
    columns = manifest["columns"]
    entries = sorted(manifest["points"], key=lambda e: e["point_id"])
    all_values = {c: [e["values"][c] for e in entries] for c in columns}
    rows = []
    for e in entries:
        rec = read_point(out, e["point_id"])
        if rec is not None and rec.get("config_hash") == e["config_hash"]:
            rows.append((e, rec))
    df = build_table(rows, columns, all_values, metrics)
    path = out / "results.parquet"
    atomic_write(path, lambda p: df.to_parquet(p, index=False, engine="pyarrow"))
    atomic_write(out / "results.csv", lambda p: df.to_csv(p, index=False))
    return path
