"""Tables of points (one row per sweep point or run): which columns are swept keys and which
are metrics, the default x and hue, and the mean ± std over rows that share them.

A column is a metric when ``definitions`` documents it; bookkeeping columns (point id,
repetition, seed, hash, status, error, wall time) are neither; every other column is a key
(the sweep names its columns by the dotted config key).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics.definitions import definition_of
from .inputs import Inputs, close_matches

BOOKKEEPING = ("point_id", "rep", "seed", "config_hash", "status", "error", "wall_s")


def is_metric(column: str) -> bool:
    return definition_of(str(column)) is not None


def key_columns(df: pd.DataFrame) -> list[str]:
    """Columns that describe a point (swept keys and ``variant``), not ``cfg.*`` copies."""
    return [c for c in df.columns if c not in BOOKKEEPING and not is_metric(c)
            and not str(c).startswith("cfg.")]


def varied(df: pd.DataFrame, columns) -> list[str]:
    return [c for c in columns if df[c].nunique(dropna=False) > 1]


def _determines(df: pd.DataFrame, by, column: str) -> bool:
    """Every group of ``by`` has one value of ``column``."""
    return bool(df.groupby(list(by), dropna=False)[column].nunique(dropna=False).max() <= 1)


def distinct_keys(df: pd.DataFrame, columns) -> list[str]:
    """``columns`` without zip partners: a column that maps one-to-one onto an earlier one
    (``name`` zipped with ``system.links.pcie.profile``) adds no grouping."""
    keep: list[str] = []
    for c in columns:
        if not any(_determines(df, [k], c) and _determines(df, [c], k) for k in keep):
            keep.append(c)
    return keep


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def default_x(src: Inputs, df: pd.DataFrame, *, numeric: bool, exclude=("variant",)) -> str:
    """The only varied key column (numeric ones if ``numeric``); else ask for ``--x``."""
    cands = [c for c in distinct_keys(df, varied(df, key_columns(df))) if c not in exclude]
    if numeric:
        cands = [c for c in cands if is_numeric(df[c])]
    if len(cands) == 1:
        return cands[0]
    what = "numeric swept column" if numeric else "swept column"
    if not cands:
        raise src.error(f"give --x KEY: no {what} varies in the table "
                        f"(key columns: {', '.join(key_columns(df)) or 'none'})")
    raise src.error(f"give --x KEY: several {what}s vary: {', '.join(cands)}")


def default_hue(df: pd.DataFrame, x: str) -> str | None:
    """``variant`` if the table has one; else the one other swept key that varies (zip
    partners count once), if there is exactly one."""
    if "variant" in df.columns and x != "variant":
        return "variant"
    others = [c for c in distinct_keys(df, varied(df, key_columns(df)))
              if c != x and not (_determines(df, [x], c) and _determines(df, [c], x))]
    return others[0] if len(others) == 1 else None


def check_metric(src: Inputs, df: pd.DataFrame, name: str, flag: str = "--y") -> str:
    if name in df.columns:
        if not is_numeric(df[name]):
            raise src.error(f"{flag} {name}: the column is not numeric")
        return name
    metrics = [c for c in df.columns if is_metric(c)]
    raise src.error(f"{flag} {name}: not a column of the table; "
                    f"{close_matches(name, metrics or df.columns)}")


def note_averaged(src: Inputs, df: pd.DataFrame, used) -> None:
    """Say when rows that differ in other keys are averaged into one mark."""
    used = [u for u in used if u]
    other = [c for c in varied(df, key_columns(df)) if c not in used
             and not (used and _determines(df, used, c))]
    if other:
        src.notes.append(f"{src.label}: marks average over rows that differ in "
                         f"{', '.join(other)} (use --hue or filter the table)")


def ordered_values(series: pd.Series) -> list:
    """Sorted when numeric, else in order of first appearance (the sweep's order)."""
    vals = list(pd.unique(series))
    if is_numeric(series):
        return sorted(vals)
    return vals


def mean_std(df: pd.DataFrame, by: list[str], y: str) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for a single row) and count of ``y`` per ``by`` group,
    in ``ordered_values`` order of each key."""
    g = df.groupby(by, sort=False, dropna=False)[y]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}).reset_index()
    for col in reversed(by):
        order = {v: i for i, v in enumerate(ordered_values(df[col]))}
        out = out.iloc[np.argsort(out[col].map(order).to_numpy(), kind="stable")]
    return out.reset_index(drop=True)


def groups(df: pd.DataFrame, hue: str | None):
    """(hue value, rows) in hue order; one unnamed group without a hue."""
    if hue is None:
        yield None, df
        return
    for v in ordered_values(df[hue]):
        yield v, df[df[hue].isna()] if pd.isna(v) else df[df[hue] == v]


def bar_labels(src: Inputs, df: pd.DataFrame, x: str | None, hue: str | None):
    """The keys that name one bar of a stacked-bar plot (energy, placement): ``x`` and/or
    ``hue`` when given; else the varied swept key and ``variant``; else the run's name or
    the point id."""
    if x and not hue and x != "variant" and "variant" in varied(df, key_columns(df)):
        hue = "variant"
    keys = [k for k in (x, hue) if k]
    for k in keys:
        src.column(df, k, "--x" if k == x else "--hue")
    if not keys:
        vary = distinct_keys(df, varied(df, key_columns(df)))
        keys = [c for c in vary if c != "variant"] + (["variant"] if "variant" in vary else [])
        if not keys:
            keys = [c for c in ("name", "point_id") if c in df.columns][:1]
    if not keys:
        df = df.assign(point=np.arange(len(df)))
        keys = ["point"]
    note_averaged(src, df, keys)
    return df, keys
