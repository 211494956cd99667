"""The figure API behind ``simulator.plots`` (see the package docstring).

``figure(kind, source, **params)`` returns a matplotlib Figure (Agg, no display);
``render(kind, source, out, **params)`` writes it as PNG, SVG or PDF. ``source`` is a sweep
folder or table, a run folder, an MRC table, or DataFrames (see ``inputs``). Each kind's
docstring says exactly what it draws and reads.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from .catalog import READS
from .curves import bar, latency, line
from .inputs import Inputs
from .layers import layer_hits
from .mrc import mrc
from .stacks import energy, placement
from .style import check_output, new_figure, save, style
from .timeline import occupancy


@dataclass(frozen=True)
class Kind:
    name: str
    draw: Callable[..., Any]
    reads: str            # what input it needs (help text, README)

    @property
    def params(self) -> list[str]:
        return [p for p in inspect.signature(self.draw).parameters if p != "src"]


KINDS: dict[str, Kind] = {name: Kind(name, draw, READS[name]) for name, draw in (
    ("latency", latency), ("energy", energy), ("layer_hits", layer_hits),
    ("occupancy", occupancy), ("mrc", mrc), ("placement", placement), ("line", line),
    ("bar", bar))}


def get_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ConfigError(f"unknown plot kind {kind!r}; choose from {', '.join(KINDS)}",
                          key="--kind")
    return KINDS[kind]


def _figure(kind: str, source: Any, params: dict) -> tuple[Any, Inputs]:
    k = get_kind(kind)
    title = params.pop("title", None)
    given = {p: v for p, v in params.items() if v is not None}
    unused = [p for p in given if p not in k.params]
    src = Inputs(source, kind)
    if unused:
        flags = ", ".join(f"--{p}" if p in ("x", "y", "hue", "phase") else p for p in unused)
        raise src.error(f"{flags} not used by this kind (it takes: "
                        f"{', '.join(k.params) or 'no options'})")
    with style():
        fig = k.draw(src, **given)
        if title:
            if len(fig.axes) == 1 or kind in ("layer_hits",):
                fig.axes[0].set_title(title)
            else:
                fig.suptitle(title)
        fig.tight_layout()
    fig.moesim_notes = list(src.notes)
    return fig, src


def figure(kind: str, table_or_source: Any, **params):
    """The Figure of plot ``kind`` drawn from ``table_or_source``; notes (skipped rows,
    averaged keys) in ``fig.moesim_notes``."""
    return _figure(kind, table_or_source, params)[0]


def default_output(kind: str, source: Any) -> Path:
    """``<results folder>/figures/<kind>.png``."""
    src = Inputs(source, kind)
    base = src.directory or Path(".")
    return base / "figures" / f"{kind}.png"


def render(kind: str, source: Any, out: str | Path | None = None, *, notes: list | None = None,
           **params) -> Path:
    """Draw plot ``kind`` from ``source`` and write it to ``out`` (default
    ``<results folder>/figures/<kind>.png``); returns the path written. Notes (skipped
    rows, averaged keys) are appended to ``notes`` when given."""
    get_kind(kind)
    out = Path(out) if out is not None else default_output(kind, source)
    check_output(out)
    fig, src = _figure(kind, source, params)
    if notes is not None:
        notes.extend(src.notes)
    return save(fig, out)


__all__ = ["KINDS", "Kind", "figure", "render", "default_output", "new_figure", "save"]
