"""``occupancy``: what the memory system does over simulated time, from a run's tables."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .inputs import Inputs
from .style import COLUMN_WIDTH_IN, new_figure

TRANSFER_COLUMNS = ("start_s", "end_s", "bytes", "src_device")
DEFAULT_BINS = 200


def spread(start, end, weight, edges) -> np.ndarray:
    """Σ over intervals of ``weight`` × (share of the interval inside each bin): a
    transfer's bytes spread evenly over its duration. Zero-length intervals put all their
    weight in the bin holding their start. O((n + bins) log n)."""
    start, end, weight = (np.asarray(a, dtype=np.float64) for a in (start, end, weight))
    dur = end - start
    point = dur <= 0
    out = np.histogram(start[point], bins=edges, weights=weight[point])[0].astype(np.float64)
    s, e, w = start[~point], end[~point], weight[~point] / dur[~point]
    # F(t) = Σ w_i · clip(t - s_i, 0, e_i - s_i) = Σ_{s_i<t} w_i (t - s_i) - Σ_{e_i<t} w_i (t - e_i)
    def ramp(at, w):
        order = np.argsort(at, kind="stable")
        at, w = at[order], w[order]
        cw = np.concatenate(([0.0], np.cumsum(w)))
        cwa = np.concatenate(([0.0], np.cumsum(w * at)))
        k = np.searchsorted(at, edges, side="left")
        return edges * cw[k] - cwa[k]
    F = ramp(s, w) - ramp(e, w)
    return out + np.diff(F)


def union(start, end) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint intervals covering the union of [start, end) intervals."""
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    if start.size == 0:
        return start, end
    order = np.argsort(start, kind="stable")
    s, e = start[order], np.maximum.accumulate(end[order])
    new = np.concatenate(([True], s[1:] > e[:-1]))
    last = np.concatenate((new[1:], [True]))
    return s[new], e[last]


def busy_fraction(start, end, edges) -> np.ndarray:
    """Share of each bin during which at least one interval is active."""
    s, e = union(start, end)
    return spread(s, e, e - s, edges) / np.diff(edges)


def device_links(hardware: dict | None) -> dict[str, list[str]]:
    """Source device -> the links its fetches cross (hardware.yaml's device paths)."""
    devs = (hardware or {}).get("devices") or {}
    return {str(d): [str(l) for l in (spec or {}).get("path") or []] for d, spec in devs.items()}


def _legend_above(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(len(labels), 5),
                  fontsize=6, handlelength=1.2, columnspacing=0.8, borderaxespad=0.2)


def occupancy(src: Inputs, *, phase: str | None = None, bins: int = DEFAULT_BINS):
    """Three panels over simulated time (s), in ``bins`` equal bins from 0 to the makespan:

    1. fetch rate (GB/s) per source device: each transfer's bytes (transfers table) spread
       evenly over its [start_s, end_s], per bin, divided by the bin width;
    2. link utilisation (%): the share of each bin during which at least one transfer whose
       source device's path (hardware.yaml) crosses the link was in flight (the summary's
       ``utilization.link.<link>``, resolved in time);
    3. expert-cache occupancy (GB) at the end of each iteration (steps table ``cache_bytes``)
       with the cache capacity dashed — drawn only when the steps table has that column.

    ``phase`` keeps only the transfers of that phase. Panel 2 is left out without
    hardware.yaml."""
    tx = src.run_table("transfers")
    src.require(tx, TRANSFER_COLUMNS, "(a run's transfers.parquet)")
    if phase:
        src.require(tx, ["phase"])
        present = sorted(set(map(str, tx["phase"])))
        if phase not in ("prefill", "decode") and phase not in present:
            raise src.error(f"--phase {phase}: expected prefill or decode")
        tx = tx[tx["phase"].astype(str) == phase]
    if int(bins) < 1:
        raise src.error(f"bins={bins}: expected at least 1")
    steps = src.run_table("steps", required=False)
    summary = src.summary() or {}
    hardware = src.hardware()
    links = device_links(hardware)
    ends = [float(tx["end_s"].max()) if len(tx) else 0.0, float(summary.get("makespan_s") or 0.0)]
    if steps is not None and len(steps) and "end_s" in steps:
        ends.append(float(steps["end_s"].max()))
    t_end = max(ends)
    if not t_end > 0:
        raise src.error("nothing happened in simulated time (no transfers, makespan 0)")
    edges = np.linspace(0.0, t_end, int(bins) + 1)
    width = np.diff(edges)
    mids = 0.5 * (edges[1:] + edges[:-1])
    show_cache = steps is not None and "cache_bytes" in steps.columns and len(steps)
    n = 1 + bool(links) + bool(show_cache)
    fig, axes = new_figure(width_in=COLUMN_WIDTH_IN, height_in=0.4 + 1.45 * n, nrows=n, sharex=True)
    ax = axes[0]
    seen = set(map(str, pd.unique(tx["src_device"].astype(str))))
    devices = [d for d in links if d in seen] + sorted(seen - set(links))   # hardware order
    for d in devices:
        rows = tx[tx["src_device"].astype(str) == d]
        rate = spread(rows["start_s"], rows["end_s"], rows["bytes"], edges) / width
        ax.step(mids, rate * 1e-9, where="mid", label=d)
    ax.set_ylabel("fetch rate (GB/s)")
    _legend_above(ax)
    i = 1
    if links:
        ax = axes[i]
        i += 1
        used = {l for d in devices for l in links.get(d, [])}
        names = [l for l in (hardware.get("links") or {}) if l in used] + sorted(
            used - set(hardware.get("links") or {}))
        for link in names:
            rows = tx[tx["src_device"].astype(str).isin([d for d in devices if link in links.get(d, [])])]
            ax.step(mids, 100.0 * busy_fraction(rows["start_s"], rows["end_s"], edges), where="mid",
                    label=link)
        ax.set_ylabel("link busy (%)")
        ax.set_ylim(0, 105)
        _legend_above(ax)
    if show_cache:
        ax = axes[i]
        st = steps.sort_values("end_s")
        ax.step(st["end_s"].to_numpy(float), st["cache_bytes"].to_numpy(float) * 1e-9,
                where="post", label="occupancy")
        cap = summary.get("cache.capacity_bytes")
        if cap is not None and np.isfinite(cap):
            ax.axhline(float(cap) * 1e-9, linestyle="--", color="grey", linewidth=0.8,
                       label="capacity")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("expert cache (GB)")
        _legend_above(ax)
    axes[-1].set_xlabel("simulated time (s)")
    axes[-1].set_xlim(0, t_end)
    return fig
