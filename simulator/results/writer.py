"""The results folder of a run (the contract scripts and sweeps rely on).

    DIR/summary.json      flat {metric name: number}; names and units in metrics/definitions.py
    DIR/summary.csv       the same as one row, plus the flattened config and config_hash
    DIR/requests.parquet  one row per request (+ .csv), carrying config columns
    DIR/layers.csv        lookups and hits per (phase, layer)
    DIR/steps.parquet     one row per iteration       (output.events: true)
    DIR/transfers.parquet one row per transfer        (output.events: true)
    DIR/config.yaml       the resolved config (after --set), DIR/hardware.yaml every device
                          value with its source, DIR/run.json name, hash, versions, notes

Every file is written to a temporary name and renamed, so a killed run never leaves a
half-written file behind.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..config.load import LoadedConfig
from ..metrics.summary import RunResult
from ..serialize import atomic_write, to_plain


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": scalar}; lists of mappings use [i]; other lists are JSON."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, list) and any(isinstance(v, dict) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}[{i}]"))
    elif isinstance(d, list):
        out[prefix] = json.dumps(d)
    else:
        out[prefix] = d
    return out


def config_columns(loaded: LoadedConfig) -> dict[str, Any]:
    cols = {f"cfg.{k}": v for k, v in flatten(loaded.raw).items()}
    cols["config_hash"] = loaded.config_hash
    return cols


def _with_config(df: pd.DataFrame, cols: dict[str, Any]) -> pd.DataFrame:
    df = df.copy()
    for k, v in cols.items():
        df[k] = v if v is None or isinstance(v, (int, float, str, bool)) else str(v)
    return df


def write_results(result: RunResult, loaded: LoadedConfig, out_dir: str | Path, *,
                  extra: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = config_columns(loaded)
    summary = to_plain(result.summary)
    atomic_write(out / "summary.json",
            lambda p: p.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n"))
    row = pd.DataFrame([{**result.summary, **cols}])
    atomic_write(out / "summary.csv", lambda p: row.to_csv(p, index=False))
    req = _with_config(result.requests, cols)
    atomic_write(out / "requests.parquet", lambda p: req.to_parquet(p, index=False))
    atomic_write(out / "requests.csv", lambda p: req.to_csv(p, index=False))
    atomic_write(out / "layers.csv", lambda p: _with_config(result.layers, cols).to_csv(p, index=False))
    if loaded.config.output.events:
        for name, df in (("steps", result.steps), ("transfers", result.transfers)):
            tab = _with_config(df, cols)
            atomic_write(out / f"{name}.parquet", lambda p, tab=tab: tab.to_parquet(p, index=False))
    atomic_write(out / "config.yaml",
            lambda p: p.write_text(yaml.safe_dump(loaded.raw, sort_keys=False)))
    atomic_write(out / "hardware.yaml",
            lambda p: p.write_text(yaml.safe_dump(result.hardware, sort_keys=False, width=110)))
    from .. import __version__
    run = {"name": loaded.config.name, "config_hash": loaded.config_hash,
           "config_source": loaded.source, "moesim_version": __version__,
           "python": platform.python_version(), "notes": result.notes, **(extra or {})}
    atomic_write(out / "run.json", lambda p: p.write_text(json.dumps(run, indent=1, default=str) + "\n"))
    return out
