"""Held-out validation of calibrated synthesis: fit on part of a real trace, synthesise the
part that was not used, and compare.

Split: a trace with at least ``MIN_REQUESTS_FOR_REQUEST_SPLIT`` requests keeps its first
``1 - fraction`` of requests for fitting and holds out the rest (whole requests: prompt
templates, lengths and topics are then genuinely unseen). Traces of a few long requests
(most public decode traces hold one or two) are split inside every request instead: the
first ``1 - fraction`` of each request's tokens fit, the rest are held out as requests of
their own, keeping their phases (a held-out tail of a request is usually all decode).

The synthetic trace has the held-out requests' lengths and phase mix (seeded). Beside the
``synthetic vs held-out`` comparison, the same statistics of ``fit part vs held-out`` show
how far the real trace drifts from itself: a synthetic trace cannot be expected to match
held-out data more closely than other data from the same source does (for cache curves
that reference also differs in length, so read it as a scale, not a bound).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TraceError
from .compare import DEFAULT_BELADY_MAX_LOOKUPS, compare
from .fit import MIN_TOKENS, _lengths, _synthesise, fit_trace
from .schema import Trace, make_trace

MIN_REQUESTS_FOR_REQUEST_SPLIT = 5


def split_holdout(trace: Trace, fraction: float = 0.3) -> tuple[Trace, Trace, str, Any]:
    """(fit part, held-out part, description, how to cut the held-out part from a trace with
    the source's request lengths, or None for a split by request); see the module docstring."""
    if not 0.0 < fraction < 1.0:
        raise TraceError(f"held-out fraction must be in (0, 1), got {fraction}")
    ids, starts, ends = trace.request_bounds()
    n = ids.size
    if n >= MIN_REQUESTS_FOR_REQUEST_SPLIT:
        n_fit = min(n - 1, max(1, int(round(n * (1 - fraction)))))
        fit = trace.select_requests(ids[:n_fit])
        held = trace.select_requests(ids[n_fit:])
        how = f"by request: first {n_fit} of {n} requests fit, last {n - n_fit} held out"
        tail = None
    else:
        pos = trace.positions()
        cut = np.repeat(np.round((ends - starts) * (1 - fraction)).astype(np.int64), ends - starts)
        fit = trace._take(pos < cut)
        held = _renumbered(trace._take(pos >= cut))
        tail = pos >= cut
        how = (f"by token: first {1 - fraction:.0%} of each of the {n} requests' tokens fit, "
               f"the rest held out")
    for name, part in (("fit", fit), ("held-out", held)):
        if part.num_tokens < MIN_TOKENS:
            raise TraceError(f"{trace.path}: the {name} part has {part.num_tokens} tokens, "
                             f"need at least {MIN_TOKENS}; use a longer trace or another fraction")
    return fit, held, how, tail


def _renumbered(t: Trace) -> Trace:
    """Tokens of each request renumbered from 0 (a held-out tail is a request of its own)."""
    return make_trace(t.meta, t.request_id, t.positions(), t.phase, t.experts, scores=t.scores,
                      router_probs=t.router_probs, imputed=t.imputed, path=t.path,
                      validate=False)


# (label, function of a compare() result and a phase -> number or None)
def _stat_rows(res: dict[str, Any], phase: str) -> list[tuple[str, Any]]:
    cache, pop, ov, rd = (res["cache"].get(phase), res["popularity"].get(phase),
                          res["overlap"].get(phase), res["reuse"].get(phase))
    rows = [
        ("LRU hit rate, max gap (pp)", cache and cache["lru"]["max_abs_diff_pp"]),
        ("Belady hit rate, max gap (pp)", cache and cache["belady"]["max_abs_diff_pp"]),
        ("popularity TVD, mean over layers", pop and pop["tvd_mean"]),
        ("consecutive-token overlap, gap", ov and abs(ov["diff_overall"])),
        ("reuse-distance TVD", rd and rd["tvd"]),
    ]
    return rows


def holdout_validation(trace: Trace, *, fraction: float = 0.3, seed: int = 0,
                       iterations: int = 24,
                       belady_max_lookups: int | None = DEFAULT_BELADY_MAX_LOOKUPS,
                       progress=None, quiet: bool = True) -> dict[str, Any]:
    """Fit on the fit part, synthesise with ``seed + 1``, compare on the held-out part.
    ``progress`` gets the fit's lines; ``quiet=False`` draws progress bars (on a terminal).

    A split by request synthesises requests of the held-out lengths. A split inside requests
    synthesises whole requests of the source's lengths and keeps their held-out positions,
    so the synthetic tails sit as far into their requests as the real ones (the model knows
    about request starts: prompt templates, per-request topics)."""
    fit_part, held, how, tail = split_holdout(trace, fraction)
    model = fit_trace(fit_part, seed=seed, iterations=iterations, progress=progress,
                      quiet=quiet)
    sc = trace.scores is not None
    if tail is None:
        syn = _synthesise(model, _lengths(held), held.meta, seed=seed + 1, scores=sc)
    else:
        syn = _renumbered(_synthesise(model, _lengths(trace), held.meta, seed=seed + 1,
                                      scores=sc)._take(tail))
    vs_syn = compare(held, syn, names=("held-out", "synthetic"),
                     belady_max_lookups=belady_max_lookups, quiet=quiet)
    vs_fit = compare(held, fit_part, names=("held-out", "fit part"),
                     belady_max_lookups=belady_max_lookups, quiet=quiet)
    rows = []
    for phase in vs_syn["phases"]:
        ref = dict(_stat_rows(vs_fit, phase)) if phase in vs_fit["phases"] else {}
        for label, value in _stat_rows(vs_syn, phase):
            rows.append({"phase": phase, "statistic": label, "synthetic": value,
                         "fit_part": ref.get(label)})
    cl_s, cl_f = vs_syn["cross_layer"], vs_fit["cross_layer"]
    if cl_s.get("available"):
        rows.append({"phase": "all", "statistic": "cross-layer transition JS divergence, mean",
                     "synthetic": cl_s["js_mean"], "fit_part": cl_f.get("js_mean")})
        rows.append({"phase": "all", "statistic": "cross-layer dependence (bits)",
                     "held_out": cl_s["a"]["dependence_bits"],
                     "synthetic": cl_s["b"]["dependence_bits"],
                     "fit_part": cl_f["b"]["dependence_bits"]})
    g_s, g_f = vs_syn["gate"], vs_fit["gate"]
    if g_s.get("available"):
        rows.append({"phase": "all", "statistic": "top-1 gate share histogram TVD",
                     "synthetic": g_s["tvd"], "fit_part": g_f.get("tvd")})
    return {"split": how, "fraction": fraction, "seed": seed,
            "tokens": {"fit": fit_part.phase_counts(), "held_out": held.phase_counts()},
            "rows": rows, "synthetic_vs_heldout": vs_syn, "fit_part_vs_heldout": vs_fit}


def format_holdout(res: dict[str, Any]) -> str:
    t = res["tokens"]
    lines = [f"split {res['split']}",
             f"  fit part: {t['fit']['prefill']:,} prefill + {t['fit']['decode']:,} decode tokens; "
             f"held out: {t['held_out']['prefill']:,} prefill + {t['held_out']['decode']:,} decode",
             "", f"{'phase':<8} {'statistic':<48} {'synthetic':>10} {'fit part':>10}",
             "         (each vs the held-out part; smaller = closer)"]
    for r in res["rows"]:
        label = r["statistic"] + (f", held-out {_fmt(r['held_out'])}" if "held_out" in r else "")
        lines.append(f"{r['phase']:<8} {label:<48} {_fmt(r['synthetic']):>10} "
                     f"{_fmt(r['fit_part']):>10}")
    return "\n".join(lines)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"
