"""``mrc``: hit rate (or miss ratio) vs cache size per policy, Belady dashed as the bound.

Reads either a miss-ratio-curve table (``moesim mrc -o FILE``: policy, phase,
capacity_objects, capacity_gb, lookups, hits, hit_rate, miss_ratio) or a sweep table over
``cache.capacity_gb`` with ``variant`` (or ``cache.name``) naming the policy and
``hit_rate.prefill`` / ``hit_rate.decode`` / ``hit_rate`` as the phases' hit rates (mean
over repetitions).
"""
from __future__ import annotations

import pandas as pd

from .inputs import Inputs
from .points import mean_std, ordered_values
from .style import fmt_value, is_bound, legend, new_figure

MRC_COLUMNS = ("policy", "phase", "hit_rate")
SWEEP_PHASES = {"prefill": "hit_rate.prefill", "decode": "hit_rate.decode", "all": "hit_rate"}
PHASE_ORDER = ("prefill", "decode", "all")
PHASE_TITLES = {"all": "prefill + decode"}
X_LABELS = {"capacity_gb": "cache size (GB)", "capacity_objects": "cache size (objects)",
            "cache.capacity_gb": "cache size (GB)"}


def curves(src: Inputs, df: pd.DataFrame, x: str | None) -> tuple[pd.DataFrame, str]:
    """Long table (policy, phase, <x>, hit_rate) from either input shape, and the x column."""
    if all(c in df.columns for c in MRC_COLUMNS) and (
            "capacity_gb" in df.columns or "capacity_objects" in df.columns):
        x = x or ("capacity_gb" if "capacity_gb" in df.columns else "capacity_objects")
        if x not in ("capacity_gb", "capacity_objects"):
            raise src.error(f"--x {x}: expected capacity_gb or capacity_objects")
        src.require(df, [x])
        long = df[["policy", "phase", x, "hit_rate"]].copy()
        long["phase"] = long["phase"].astype(str)
        return long, x
    if "cache.capacity_gb" in df.columns and any(c in df.columns for c in SWEEP_PHASES.values()):
        pol = "variant" if "variant" in df.columns else "cache.name" if "cache.name" in df.columns else None
        if pol is None:
            raise src.error("a sweep table for the mrc plot needs a variant or cache.name column "
                            "naming the policy")
        if x not in (None, "cache.capacity_gb"):
            raise src.error(f"--x {x}: a sweep table's curve is drawn over cache.capacity_gb")
        x = "cache.capacity_gb"
        parts = []
        for phase, col in SWEEP_PHASES.items():
            if col in df.columns:
                agg = mean_std(df, [pol, x], col).rename(columns={pol: "policy", "mean": "hit_rate"})
                agg["phase"] = phase
                parts.append(agg[["policy", "phase", x, "hit_rate"]])
        return pd.concat(parts, ignore_index=True), x
    raise src.error("the table lacks the columns of a miss-ratio curve: policy, phase, "
                    "capacity_gb or capacity_objects, hit_rate (from `moesim mrc -o`), or "
                    "cache.capacity_gb, variant or cache.name, hit_rate.<phase> (a sweep)")


def mrc(src: Inputs, *, x: str | None = None, y: str | None = None, phase: str | None = None):
    """One panel per phase (prefill, decode, all; or the one ``phase``): ``y`` = hit_rate
    (default) or miss_ratio (= 1 - hit rate), in %, vs cache size, one line per policy;
    Belady (MIN, the offline optimum) dashed as the bound."""
    df = src.points()
    long, x = curves(src, df, x)
    y = y or "hit_rate"
    if y not in ("hit_rate", "miss_ratio"):
        raise src.error(f"--y {y}: the mrc plot draws hit_rate or miss_ratio")
    present = [p for p in PHASE_ORDER if p in set(long["phase"])] + sorted(
        set(long["phase"]) - set(PHASE_ORDER))
    if phase:
        if phase not in present:
            raise src.error(f"--phase {phase}: not in the table (phases: {', '.join(present)})")
        present = [phase]
    fig, axes = new_figure(ncols=len(present))
    for ax, p in zip(axes, present):
        rows = long[long["phase"] == p]
        for pol in ordered_values(rows["policy"]):
            curve = mean_std(rows[rows["policy"] == pol], [x], "hit_rate")
            v = curve["mean"].to_numpy(float)
            v = 100.0 * (1.0 - v if y == "miss_ratio" else v)
            bound = is_bound(pol)
            ax.plot(curve[x].to_numpy(float), v, marker="o" if len(v) <= 25 else None,
                    linestyle="--" if bound else "-", color="black" if bound else None,
                    label=f"{pol} (bound)" if bound else fmt_value(pol))
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel(("miss ratio" if y == "miss_ratio" else "hit rate") + " (%)")
        ax.set_ylim(0, 100)
        ax.set_title(PHASE_TITLES.get(p, p))
    legend(axes[-1], title="policy", outside=len(axes) > 1)
    return fig
