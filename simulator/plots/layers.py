"""``layer_hits``: hit rate per MoE layer and phase, as a heatmap."""
from __future__ import annotations

import numpy as np

from .inputs import Inputs
from .style import DOUBLE_WIDTH_IN, new_figure

LAYER_COLUMNS = ("layer", "phase", "lookups", "hits")
PHASE_ORDER = ("prefill", "decode")


def hit_matrix(table, phases) -> tuple[np.ndarray, np.ndarray]:
    """(layers, hits/lookups in % per [phase, layer]); NaN where a layer had no lookups.
    Rows for the same (phase, layer) — tables of several runs — are summed first."""
    agg = table.groupby(["phase", "layer"])[["lookups", "hits"]].sum()
    layers = np.sort(table["layer"].unique())
    m = np.full((len(phases), len(layers)), np.nan)
    col = {int(v): j for j, v in enumerate(layers)}
    for i, p in enumerate(phases):
        if p not in agg.index.get_level_values(0):
            continue
        sub = agg.loc[p]
        for layer, row in sub.iterrows():
            if row["lookups"] > 0:
                m[i, col[int(layer)]] = 100.0 * row["hits"] / row["lookups"]
    return layers, m


def layer_hits(src: Inputs, *, phase: str | None = None):
    """Hit rate (%) of each MoE layer (columns) in each phase (rows: prefill, decode; or the
    one ``phase``), from a run's ``layers.csv`` (layer, phase, lookups, hits). Cells of a
    layer with no lookups in that phase are blank."""
    t = src.run_table("layers")
    src.require(t, LAYER_COLUMNS, "(a run's layers.csv)")
    present = [p for p in PHASE_ORDER if p in set(t["phase"])] + sorted(
        set(map(str, t["phase"])) - set(PHASE_ORDER))
    if phase:
        if phase not in present:
            raise src.error(f"--phase {phase}: not in the table (phases: {', '.join(present)})")
        phases = [phase]
    else:
        phases = [p for p in present if t.loc[t["phase"] == p, "lookups"].sum() > 0] or present
    layers, m = hit_matrix(t, phases)
    fig, (ax,) = new_figure(width_in=DOUBLE_WIDTH_IN if len(layers) > 16 else 3.5,
                            height_in=0.9 + 0.35 * len(phases))
    im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", vmin=0, vmax=100, cmap="viridis",
                   interpolation="nearest",
                   extent=(layers[0] - 0.5, layers[-1] + 0.5, len(phases) - 0.5, -0.5))
    ax.set_yticks(range(len(phases)), phases)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("phase")
    ax.grid(False)
    step = max(1, int(np.ceil(len(layers) / 16)))
    ax.set_xticks(layers[::step])
    cb = fig.colorbar(im, ax=ax, pad=0.01)
    cb.set_label("hit rate (%)")
    return fig
