"""Figures from results tables (``moesim plot``), never from the simulator itself.

``figure(kind, source, **params)`` returns a matplotlib Figure (Agg, no display);
``render(kind, source, out, **params)`` writes it as PNG, SVG or PDF. ``source`` is a sweep
folder or table, a run folder, an MRC table, or DataFrames (see ``inputs``). Each kind's
docstring says exactly what it draws and reads; ``KINDS`` maps names to kinds.

The names are loaded on first use (``api``), so importing the package for the command line's
help does not import matplotlib.
"""
from __future__ import annotations

__all__ = ["KINDS", "Kind", "figure", "render", "default_output", "get_kind", "new_figure", "save"]


def __getattr__(name: str):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
