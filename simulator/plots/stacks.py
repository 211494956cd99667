"""Stacked bars per point: ``energy`` (per component) and ``placement`` (per device).

One bar per point (or per distinct ``x`` / ``hue`` value, the mean over the rows sharing
it). A device or link a point does not have counts 0 for it; components that are 0 in every
bar are left out of the stack and the legend.
"""
from __future__ import annotations

import re

import matplotlib
import numpy as np
import pandas as pd

from .inputs import Inputs
from .points import bar_labels, ordered_values
from .style import axis_label, fmt_value, new_figure

ENERGY_GROUPS = (("energy_j.static.", "static"), ("energy_j.dynamic.", "dynamic"),
                 ("energy_j.link.", "link"))


def energy_components(columns) -> list[tuple[str, str]]:
    """(column, legend label) of every energy component in stacking order: compute, static
    (compute unit, then devices), dynamic per device, link per link. Their sum is
    ``energy_j.total``."""
    cols = [str(c) for c in columns]
    out = [(c, lab) for c, lab in (("energy_j.compute", "compute"),
                                   ("energy_j.static.compute", "static: compute")) if c in cols]
    for prefix, lab in ENERGY_GROUPS:
        out += [(c, f"{lab}: {c[len(prefix):]}") for c in cols
                if c.startswith(prefix) and c != "energy_j.static.compute"]
    return out


def _bars(df: pd.DataFrame, keys: list[str], columns: list[str]):
    """Bar labels, bar positions (a gap between groups of the first key when there are
    several keys) and the mean of each column per bar (missing devices as 0)."""
    vals = df[columns].astype(float).fillna(0.0)
    grouped = pd.concat([df[keys], vals], axis=1).groupby(keys, sort=False, dropna=False).mean()
    order = grouped.index.to_frame(index=False)
    idx = np.arange(len(order))
    for k in reversed(keys):
        rank = {v: i for i, v in enumerate(ordered_values(df[k]))}
        idx = idx[np.argsort(order[k].iloc[idx].map(rank).to_numpy(), kind="stable")]
    grouped = grouped.iloc[idx]
    labels = [" / ".join(fmt_value(v) for v in (t if isinstance(t, tuple) else (t,)))
              for t in grouped.index]
    x = np.arange(len(labels), dtype=float)
    if len(keys) > 1:
        first = order[keys[0]].iloc[idx].to_numpy()
        x += 0.5 * np.concatenate(([0], np.cumsum(first[1:] != first[:-1])))
    return labels, x, grouped.reset_index(drop=True)


def _colors(n: int):
    cmap = matplotlib.colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def draw_stack(ax, labels, x, means: pd.DataFrame, components, scale: float, ylabel: str):
    """Stack ``components`` (column, label) bar by bar at positions ``x``; one BarContainer
    per component."""
    kept = [(c, lab) for c, lab in components if (means[c] != 0).any()]
    bottom = np.zeros(len(labels))
    for (c, lab), color in zip(kept, _colors(len(kept))):
        h = means[c].to_numpy(float) * scale
        ax.bar(x, h, bottom=bottom, width=0.6, label=lab, color=color)
        bottom += h
    ax.set_xticks(x, labels, rotation=30 if len(labels) > 3 else 0,
                  ha="right" if len(labels) > 3 else "center")
    ax.set_ylabel(ylabel)
    ax.grid(axis="x", visible=False)
    ax.set_xlim(x[0] - 0.6, x[-1] + 0.6)
    return kept


def energy(src: Inputs, *, x: str | None = None, hue: str | None = None):
    """Energy per component (J) stacked per point: compute, static power of the compute unit
    and of each device, dynamic (read/write) energy per device, link energy per link. Reads
    a table of points (sweep or a run's summary)."""
    df = src.points()
    comps = energy_components(df.columns)
    if not comps:
        src.require(df, ["energy_j.compute", "energy_j.static.<device>",
                         "energy_j.dynamic.<device>", "energy_j.link.<link>"], "(energy components)")
    df, keys = bar_labels(src, df, x, hue)
    labels, x, means = _bars(df, keys, [c for c, _ in comps])
    fig, (ax,) = new_figure(width_in=3.5 if len(labels) <= 6 else 7.0)
    draw_stack(ax, labels, x, means, comps, 1.0, "energy (J)")
    ax.set_xlabel(" / ".join(axis_label(k)[0] for k in keys))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6)
    return fig


_DEVICE_INDEX = re.compile(r"\.\d+$")


def placement(src: Inputs, *, x: str | None = None, hue: str | None = None, by: str = "device"):
    """Experts (count) and expert bytes (GB) homed on each device (``by="tier"``: each tier,
    devices ``cxl.0``, ``cxl.1``... summed into ``cxl``), stacked per point. Reads
    ``placement.experts.<device>`` and ``placement.bytes.<device>`` from a table of points."""
    if by not in ("device", "tier"):
        raise src.error(f"by={by!r}: expected 'device' or 'tier'")
    df = src.points()
    exp = [c for c in df.columns if str(c).startswith("placement.experts.")]
    byt = [c for c in df.columns if str(c).startswith("placement.bytes.")]
    if not exp or not byt:
        src.require(df, ["placement.experts.<device>", "placement.bytes.<device>"],
                    "(written by moesim since the placement keys were added; rerun)")
    df, keys = bar_labels(src, df, x, hue)
    panels = []
    for prefix, cols in (("placement.experts.", exp), ("placement.bytes.", byt)):
        if by == "tier":
            tiers: dict[str, list[str]] = {}
            for c in cols:
                tiers.setdefault(prefix + _DEVICE_INDEX.sub("", c[len(prefix):]), []).append(c)
            summed = pd.DataFrame({t: df[cs].astype(float).fillna(0.0).sum(axis=1)
                                   for t, cs in tiers.items()})
            df = pd.concat([df.drop(columns=[c for c in summed if c in df]), summed], axis=1)
            cols = list(tiers)
        panels.append((prefix, cols))
    fig, axes = new_figure(ncols=2)
    for ax, (prefix, cols) in zip(axes, panels):
        labels, x, means = _bars(df, keys, cols)
        scale = axis_label(cols[0])[1]          # bytes -> GB
        ylabel = {"placement.experts.": "experts homed (count)",
                  "placement.bytes.": "expert bytes homed (GB)"}[prefix]
        draw_stack(ax, labels, x, means, [(c, c[len(prefix):]) for c in cols], scale, ylabel)
        ax.set_xlabel(" / ".join(axis_label(k)[0] for k in keys))
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title=by)
    return fig
