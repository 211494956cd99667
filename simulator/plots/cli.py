"""``moesim plot RESULTS --kind K [-o FILE] [--x KEY] [--y METRIC] [--hue KEY] [--phase P]
[--title T]``."""
from __future__ import annotations

import sys

from ..errors import ConfigError


def cmd_plot(a) -> int:
    from . import KINDS, render
    if not a.kind:
        raise ConfigError(f"moesim plot needs --kind: one of {', '.join(KINDS)}", key="--kind")
    notes: list[str] = []
    params = {"x": a.x, "y": a.y, "hue": a.hue, "phase": a.phase, "title": a.title}
    out = render(a.kind, a.results, a.output, notes=notes, **params)
    for n in notes:
        print(f"moesim plot: note: {n}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    from .catalog import READS as KINDS
    kinds = "; ".join(f"{name}: {reads}" for name, reads in KINDS.items())
    p = sub.add_parser(
        "plot", help="draw a figure (PNG/SVG/PDF) from a sweep table, a run folder or an MRC table",
        description="Draw one figure from results tables only (never re-simulating). RESULTS is "
        "a sweep folder (its results.parquet), a results table (.parquet/.csv), a run folder "
        "from `moesim run -o DIR`, or an MRC table from `moesim mrc -o`. Kinds and what they "
        f"read: {kinds}. Rows whose status is not ok are skipped (noted on stderr).")
    p.add_argument("results", metavar="RESULTS", help="sweep folder or table, run folder, MRC table")
    p.add_argument("--kind", help=f"plot kind: {', '.join(KINDS)}")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="figure file, .png/.svg/.pdf (default: RESULTS folder/figures/KIND.png)")
    p.add_argument("--x", help="swept key on the x axis (default: the only numeric one that varies)")
    p.add_argument("--y", help="metric on the y axis (line, bar; one metric for latency; "
                               "hit_rate or miss_ratio for mrc)")
    p.add_argument("--hue", help="key with one series per value (default: variant, if present)")
    p.add_argument("--phase", help="prefill or decode (layer_hits, occupancy; also all for mrc)")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=cmd_plot)
