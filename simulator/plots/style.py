"""Paper-column figures and axis labels with units.

Figures are 3.5 in wide for one panel (a paper column) and 7 in for two or more, with 8 pt
text. Units come from ``simulator.metrics.definitions`` (metric names with device or link
suffixes match its patterns) and are converted for reading: per-token latencies s -> ms,
bytes -> GB, fractions -> %. Config keys get their unit from the key's suffix
(``capacity_gb`` -> GB).
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import ConfigError
from ..metrics.definitions import definition_of
from ..outputs import check_output_file
from ..serialize import atomic_write

COLUMN_WIDTH_IN = 3.5
DOUBLE_WIDTH_IN = 7.0
FORMATS = ("png", "svg", "pdf")
DPI = 300

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.fontsize": 7, "legend.title_fontsize": 7,
    "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "legend.frameon": False, "pdf.fonttype": 42, "svg.fonttype": "none",
}


def style():
    """Context manager: the rcParams every plot is drawn and saved with."""
    return matplotlib.rc_context(RC)


def new_figure(ncols: int = 1, nrows: int = 1, *, height_in: float | None = None,
               width_in: float | None = None, sharex: bool = False):
    """A figure (Agg canvas, no display) and its axes as a flat list."""
    width = width_in or (COLUMN_WIDTH_IN if ncols == 1 else DOUBLE_WIDTH_IN)
    height = height_in or 2.4 * nrows
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex)
    return fig, [ax for row in axes for ax in row]


def check_output(out: str | Path) -> str:
    """The figure format of ``out`` (png, svg or pdf, from its suffix), after checking the
    file can be written — before any drawing."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"figure type must be one of .png, .svg, .pdf (from the file suffix), "
                          f"got {out.suffix or 'no suffix'!r}", source=str(out), key="-o")
    check_output_file(out, "-o")
    return fmt


def save(fig: Figure, out: str | Path) -> Path:
    """Write ``fig`` as PNG, SVG or PDF (from the suffix), atomically."""
    out = Path(out)
    fmt = check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with style():
        atomic_write(out, lambda p: fig.savefig(p, format=fmt, dpi=DPI))
    return out


# ------------------------------------------------------------------------ labels and units
# (unit in the definitions, metric prefix) -> (shown unit, scale)
_PER_TOKEN_LATENCY = ("ttft_s", "tpot_s", "queue_s")
_UNIT_SCALE = {"B": ("GB", 1e-9), "fraction": ("%", 100.0)}
_PRETTY = {
    "ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_s": "end-to-end latency", "queue_s": "queueing",
    "makespan_s": "makespan", "hit_rate": "hit rate", "energy_j": "energy",
    "energy_j_per_decode_token": "energy per decode token", "energy_j_per_token": "energy per token",
    "decode_tokens_per_s": "decode throughput", "tokens_per_s": "throughput",
    "memory_cost_usd": "memory cost", "utilization": "utilisation", "bytes": "bytes",
    "lookups_served": "lookups served", "expert_accesses": "expert accesses",
}


def metric_unit(metric: str) -> tuple[str, float]:
    """(unit as drawn, factor from the table's unit) of a summary metric."""
    d = definition_of(metric)
    if d is None:
        return "", 1.0
    unit = d[1]
    if unit == "s" and metric.split(".")[0] in _PER_TOKEN_LATENCY:
        return "ms", 1e3
    return _UNIT_SCALE.get(unit, (unit, 1.0))


def metric_name(metric: str) -> str:
    """Short readable name: ``tpot_s.p99`` -> ``TPOT p99``."""
    head, _, rest = metric.partition(".")
    name = _PRETTY.get(head, head.replace("_", " "))
    if rest in ("prefill", "decode"):
        return f"{rest} {name}"
    return f"{name} {rest}".strip() if rest else name


def fmt_value(v) -> str:
    """A key value as a tick or legend label: 12.0 -> 12, 0.25 -> 0.25, text as is."""
    if isinstance(v, float) and v == v:
        return f"{v:g}"
    return str(v)


# config-key suffix -> unit (longest first)
_KEY_UNITS = [
    ("_gbytes_per_s", "GB/s"), ("_pj_per_bit", "pJ/bit"), ("_pj_per_flop", "pJ/FLOP"),
    ("_usd_per_gb", "USD/GB"), ("_per_s", "1/s"), ("_gb", "GB"), ("_ns", "ns"), ("_us", "µs"),
    ("_ms", "ms"), ("_s", "s"), ("_w", "W"), ("_tflops", "TFLOP/s"), ("_bytes", "B"),
]
_KEY_NAMES = {"name": "config", "point_id": "point"}
_KEY_PLAIN_UNITS = {"batch_size": "requests", "capacity_objects": "objects",
                    "max_requests": "requests"}
_KEY_NOISE = {"system", "tiers", "links", "workload", "devices", "overrides", "cfg"}


def key_unit(key: str) -> tuple[str, str]:
    """(name, unit) of a config key column: ``cache.capacity_gb`` -> (cache capacity, GB)."""
    if key in _KEY_NAMES:
        return _KEY_NAMES[key], ""
    parts = [p for p in key.split(".") if p not in _KEY_NOISE] or [key]
    last = parts[-1]
    unit = _KEY_PLAIN_UNITS.get(last, "")
    if not unit:
        for suffix, u in _KEY_UNITS:
            if last.endswith(suffix) and len(last) > len(suffix):
                unit, last = u, last[: -len(suffix)]
                break
    parts[-1] = last
    name = " ".join(p.replace("_", " ") for p in parts)
    name = re.sub(r"\[(\d+)\]", r" \1", name)
    return name, unit


def axis_label(column: str) -> tuple[str, float]:
    """Axis label with unit, and the factor to apply to the column's values."""
    if definition_of(column) is not None:
        unit, scale = metric_unit(column)
        return (f"{metric_name(column)} ({unit})" if unit else metric_name(column)), scale
    name, unit = key_unit(column)
    return (f"{name} ({unit})" if unit else name), 1.0


def is_bound(name) -> bool:
    """Belady (MIN) is the offline optimum: drawn dashed as the bound."""
    return "belady" in str(name).lower()


def legend(ax, *, title: str | None = None, outside: bool = False):
    """Inside the axes where it hides least; ``outside`` (multi-panel figures): right of the
    last panel, so no panel's data is covered."""
    if outside:
        return ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                         borderaxespad=0.0)
    return ax.legend(title=title)
