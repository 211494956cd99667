"""What a plot reads: results tables only, never the simulator.

``RESULTS`` may be a sweep folder (its ``results.parquet`` or ``results.csv``), a table file
(``.parquet`` / ``.csv``: a sweep table, a miss-ratio-curve table from ``moesim mrc -o``, or
one of a run folder's tables), or a run folder from ``moesim run -o DIR``. Tests and callers
may pass DataFrames instead: one frame is the table the kind reads first, a mapping names
them (``{"transfers": df, "steps": df, "hardware": dict, "summary": dict}``).

Every problem is a one-line :class:`ConfigError` naming the file, the plot kind and what is
missing, so a user sees which input to fix.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..config import yamlload
from ..errors import ConfigError

TABLE_SUFFIXES = (".parquet", ".csv")
# files of a run folder that are event/layer tables, not a table of points
RUN_TABLES = ("layers", "steps", "transfers", "requests")


class Inputs:
    """The results a plot kind draws from, loaded on demand and checked."""

    def __init__(self, source: Any, kind: str):
        self.kind = kind
        self.notes: list[str] = []
        self.frames: dict[str, Any] = {}
        self.table_file: Path | None = None
        self.run_dir: Path | None = None
        self.label = "<table>"
        if isinstance(source, pd.DataFrame):
            self.frames["table"] = source
        elif isinstance(source, Mapping):
            self.frames.update(source)
        else:
            self._resolve(Path(source))
        self._cache: dict[str, Any] = {}

    # ---------------------------------------------------------------- errors
    def error(self, message: str, where: str | Path | None = None) -> ConfigError:
        return ConfigError(f"plot {self.kind}: {message}", source=str(where or self.label))

    def _resolve(self, p: Path) -> None:
        self.label = str(p)
        if not p.exists():
            raise self.error("no such file or folder (expected a sweep folder, a results table "
                             ".parquet/.csv or a run folder from `moesim run -o DIR`)", p)
        if p.is_dir():
            for name in ("results.parquet", "results.csv"):
                if (p / name).is_file():
                    self.table_file = p / name
                    self.label = str(self.table_file)
                    break
            if (p / "summary.json").is_file():
                self.run_dir = p
            if self.table_file is None and self.run_dir is None:
                raise self.error("folder holds neither results.parquet/.csv (a sweep) nor "
                                 "summary.json (a run)", p)
            return
        if p.name == "summary.json":
            self.run_dir = p.parent
            return
        if p.suffix.lower() not in TABLE_SUFFIXES:
            raise self.error(f"a results table must be .parquet or .csv, got {p.suffix or 'no suffix'!r}", p)
        self.table_file = p
        if (p.parent / "summary.json").is_file():
            self.run_dir = p.parent

    @property
    def directory(self) -> Path | None:
        """Folder the results live in (where ``figures/`` goes by default)."""
        if self.run_dir is not None and self.table_file is None:
            return self.run_dir
        return self.table_file.parent if self.table_file is not None else None

    # ---------------------------------------------------------------- readers
    def _read(self, path: Path) -> pd.DataFrame:
        key = str(path)
        if key not in self._cache:
            try:
                if path.suffix.lower() == ".parquet":
                    df = pd.read_parquet(path)
                else:
                    df = pd.read_csv(path)
            except Exception as exc:                      # corrupt or foreign file
                raise self.error(f"cannot read the table: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}", path) from None
            self._cache[key] = df
        return self._cache[key]

    def _file_is_run_table(self) -> bool:
        return self.table_file is not None and self.table_file.stem in RUN_TABLES

    def points(self) -> pd.DataFrame:
        """The table of points: a sweep/MRC table (rows whose status is not ``ok`` dropped,
        with a note), or a run folder's summary as one row named by the run."""
        if "points" in self.frames or "table" in self.frames:
            df, where = self.frames.get("points", self.frames.get("table")), self.label
        elif self.table_file is not None and not self._file_is_run_table():
            df, where = self._read(self.table_file), self.table_file
        elif self.run_dir is not None:
            df, where = pd.DataFrame([self.summary(required=True)]), self.run_dir / "summary.json"
            run = self._run_json()
            df.insert(0, "name", run.get("name", self.run_dir.name))
            if "config_hash" in run:
                df["config_hash"] = run["config_hash"]
        else:
            raise self.error(f"needs a sweep table or a run folder, got the run's "
                             f"{self.table_file.name} table", self.table_file)
        self.label = str(where)
        return self._ok_rows(df, where)

    def _ok_rows(self, df: pd.DataFrame, where) -> pd.DataFrame:
        if len(df) == 0:
            raise self.error("the table has no rows", where)
        if "status" not in df.columns:
            return df
        ok = df["status"].astype(str) == "ok"
        bad = int((~ok).sum())
        if bad == len(df):
            first = ""
            if "error" in df.columns and df["error"].notna().any():
                first = f"; first error: {str(df['error'].dropna().iloc[0]).splitlines()[0][:200]}"
            raise self.error(f"no rows with status ok (all {bad} failed{first})", where)
        if bad:
            self.notes.append(f"{where}: skipped {bad} of {len(df)} rows whose status is not ok")
        return df[ok].reset_index(drop=True)

    def run_table(self, name: str, *, required: bool = True) -> pd.DataFrame | None:
        """One of a run folder's tables (``layers``, ``steps``, ``transfers``): the frame
        given for it, the table file named on the command line, or the run folder's file."""
        if name in self.frames:
            return self.frames[name]
        if "table" in self.frames and name == self._primary_table():
            return self.frames["table"]
        if self.table_file is not None and self.table_file.stem == name:
            if required:
                self.label = str(self.table_file)
            return self._read(self.table_file)
        if self.run_dir is not None:
            for suffix in (".parquet", ".csv"):
                path = self.run_dir / f"{name}{suffix}"
                if path.is_file():
                    if required:
                        self.label = str(path)
                    return self._read(path)
        if not required:
            return None
        file = "layers.csv" if name == "layers" else f"{name}.parquet"
        hint = " (written when output.events is true)" if name in ("steps", "transfers") else ""
        where = self.run_dir or self.table_file or self.label
        what = "this run folder has none" if self.run_dir else "got no run folder"
        raise self.error(f"needs a run's {file}{hint}; {what}", where)

    def _primary_table(self) -> str:
        return {"layer_hits": "layers", "occupancy": "transfers"}.get(self.kind, "points")

    def summary(self, *, required: bool = False) -> dict | None:
        if "summary" in self.frames:
            return dict(self.frames["summary"])
        if self.run_dir is None or not (self.run_dir / "summary.json").is_file():
            if required:
                raise self.error("needs a run folder with summary.json", self.run_dir or self.label)
            return None
        path = self.run_dir / "summary.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise self.error(f"cannot read: {exc}", path) from None
        return {k: (float("nan") if v is None else v) for k, v in data.items()}

    def _run_json(self) -> dict:
        path = self.run_dir / "run.json" if self.run_dir else None
        if path is None or not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def hardware(self) -> dict | None:
        """The run's hardware.yaml (devices with their link paths), if present."""
        if "hardware" in self.frames:
            return self.frames["hardware"]
        path = self.run_dir / "hardware.yaml" if self.run_dir else None
        if path is None or not path.is_file():
            return None
        try:
            return yamlload.load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise self.error(f"cannot read: {exc}", path) from None

    # ---------------------------------------------------------------- column checks
    def require(self, df: pd.DataFrame, columns, what: str = "") -> None:
        """Every column in ``columns`` is in ``df``; else name the missing ones."""
        missing = [c for c in columns if c not in df.columns]
        if missing:
            have = ", ".join(map(str, list(df.columns)[:12])) + (", ..." if df.shape[1] > 12 else "")
            raise self.error(f"the table lacks column{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)}{' ' + what if what else ''} (it has: {have})")

    def column(self, df: pd.DataFrame, name: str, flag: str) -> str:
        """``name`` is a column of ``df``; else list close matches."""
        if name in df.columns:
            return name
        raise self.error(f"{flag} {name}: not a column of the table; {close_matches(name, df.columns)}")


def close_matches(name: str, columns) -> str:
    cols = [str(c) for c in columns]
    near = difflib.get_close_matches(name, cols, n=6, cutoff=0.5)
    near += [c for c in cols if name.lower() in c.lower() and c not in near][:6 - len(near)]
    if near:
        return "close matches: " + ", ".join(near)
    shown = ", ".join(cols[:15]) + (", ..." if len(cols) > 15 else "")
    return f"columns are: {shown}"
