"""Metric vs a swept key, one series per hue value: ``latency``, ``line`` and ``bar``.

Each mark is the mean over the table's rows sharing (x, hue) — repetitions with different
seeds — with the sample standard deviation as an error bar when there are several.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .inputs import Inputs
from .points import (check_metric, default_hue, default_x, groups, is_numeric, mean_std,
                     note_averaged, ordered_values)
from .style import axis_label, fmt_value, is_bound, legend, new_figure

LATENCY_METRICS = ("ttft_s.mean", "tpot_s.mean")


def _hue(src: Inputs, df: pd.DataFrame, x: str, hue: str | None) -> str | None:
    if hue is None:
        return default_hue(df, x)
    return src.column(df, hue, "--hue")


def _positions(df: pd.DataFrame, x: str):
    """x values as drawn: the numbers themselves, or 0..n-1 for categories (with labels)."""
    if is_numeric(df[x]):
        return None
    cats = ordered_values(df[x])
    return {v: i for i, v in enumerate(cats)}


def draw_lines(ax, df: pd.DataFrame, x: str, y: str, hue: str | None) -> None:
    """One line per hue value through the (x, mean y) points, std as error bars."""
    xlabel, xs = axis_label(x)
    ylabel, ys = axis_label(y)
    pos = _positions(df, x)
    for value, rows in groups(df, hue):
        agg = mean_std(rows, [x], y)
        xv = agg[x].map(pos).to_numpy(float) if pos else agg[x].to_numpy(float) * xs
        mean = agg["mean"].to_numpy(float) * ys
        line, = ax.plot(xv, mean, marker="o", linestyle="--" if is_bound(value) else "-",
                        label=fmt_value(value) if hue else ylabel)
        if (agg["n"] > 1).any():
            ax.errorbar(xv, mean, yerr=np.nan_to_num(agg["std"].to_numpy(float)) * ys, fmt="none",
                        ecolor=line.get_color(), elinewidth=0.8, capsize=2, label="_nolegend_")
    if pos:
        ax.set_xticks(list(pos.values()), [fmt_value(v) for v in pos],
                      rotation=30 if len(pos) > 4 else 0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _legend(ax, hue: str | None, outside: bool = False) -> None:
    if hue:
        legend(ax, title=axis_label(hue)[0], outside=outside)


def latency(src: Inputs, *, x: str | None = None, y: str | None = None,
            hue: str | None = None):
    """TTFT and TPOT (means over requests, ms) vs the swept key ``x``, one line per ``hue``
    (default ``variant``). ``y`` draws one metric instead. Reads a table of points."""
    df = src.points()
    metrics = [check_metric(src, df, y)] if y else list(LATENCY_METRICS)
    src.require(df, metrics, "(latency metrics)")
    x = src.column(df, x, "--x") if x else default_x(src, df, numeric=True)
    hue = _hue(src, df, x, hue)
    note_averaged(src, df, [x, hue])
    fig, axes = new_figure(ncols=len(metrics))
    for ax, m in zip(axes, metrics):
        draw_lines(ax, df, x, m, hue)
        if len(metrics) > 1:
            ax.set_title(m.split(".")[0].removesuffix("_s").upper())
    _legend(axes[-1], hue, outside=len(axes) > 1)
    return fig


def line(src: Inputs, *, x: str | None = None, y: str | None = None, hue: str | None = None):
    """Generic ``y`` (a metric) vs ``x`` (a key or metric) per ``hue``: mean ± std."""
    df = src.points()
    if not y:
        raise src.error("give --y METRIC")
    y = check_metric(src, df, y)
    x = src.column(df, x, "--x") if x else default_x(src, df, numeric=False)
    hue = _hue(src, df, x, hue)
    note_averaged(src, df, [x, hue])
    fig, (ax,) = new_figure()
    draw_lines(ax, df, x, y, hue)
    _legend(ax, hue)
    return fig


def bar(src: Inputs, *, x: str | None = None, y: str | None = None, hue: str | None = None):
    """Grouped bars: one group per ``x`` value, one bar per ``hue`` value, height the mean
    of ``y`` with std error bars."""
    df = src.points()
    if not y:
        raise src.error("give --y METRIC")
    y = check_metric(src, df, y)
    if x:
        x = src.column(df, x, "--x")
    else:
        try:
            x = default_x(src, df, numeric=False)
        except ConfigError:
            if "variant" not in df.columns:
                raise
            x = "variant"
    hue = _hue(src, df, x, hue)
    note_averaged(src, df, [x, hue])
    xlabel, _ = axis_label(x)
    ylabel, ys = axis_label(y)
    cats = ordered_values(df[x])
    pos = {v: i for i, v in enumerate(cats)}
    hues = list(groups(df, hue))
    width = 0.8 / len(hues)
    fig, (ax,) = new_figure(width_in=3.5 if len(cats) * len(hues) <= 16 else 7.0)
    for i, (value, rows) in enumerate(hues):
        agg = mean_std(rows, [x], y)
        xv = agg[x].map(pos).to_numpy(float) + (i - (len(hues) - 1) / 2) * width
        mean = agg["mean"].to_numpy(float) * ys
        bars = ax.bar(xv, mean, width=width, label=fmt_value(value) if hue else ylabel)
        if (agg["n"] > 1).any():
            ax.errorbar(xv, mean, yerr=np.nan_to_num(agg["std"].to_numpy(float)) * ys, fmt="none",
                        ecolor="black", elinewidth=0.8, capsize=2, label="_nolegend_")
        if is_bound(value):
            for b in bars:
                b.set_hatch("//")
    ax.set_xticks(range(len(cats)), [fmt_value(v) for v in cats], rotation=30 if len(cats) > 4 else 0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="x", visible=False)
    _legend(ax, hue)
    return fig
