"""Two routing traces side by side: ``moesim trace compare A B``.

Meant for a real trace against a synthetic one fitted to it. Every section reuses a statistic
of :mod:`simulator.traces.stats` computed on both traces; what matters most to this simulator
is the ``cache`` section: the LRU and Belady hit rates of each trace's canonical lookup stream
(:func:`simulator.engine.stream.trace_stream`) at the same cache sizes, and the largest gap
between the two traces in percentage points.

Result layout (:func:`compare`; JSON-serialisable, NaN -> None). Per-trace values sit under the
fixed keys ``"a"`` and ``"b"`` (the display names are in ``names``); every difference is
**b - a**; phases are the ones with tokens in both traces:

* ``basic``:       per trace model, path, requests, prefill/decode tokens, accesses;
* ``popularity``:  per phase, per-layer TVD of the two per-layer expert shares (mean, max) and
                   per-layer Gini of each;
* ``overlap``:     per phase, consecutive-token overlap (overall, per layer) of each, the diff;
* ``reuse``:       per phase, pooled reuse-distance histograms (fractions) of each and the TVD;
* ``cross_layer``: weighted JS divergence (bits) of the layer-to-layer transition matrices per
                   layer pair and mean; mutual information of each with its independence floor;
* ``gate``:        top-1 / sum(top-k) share histograms (bins of 0.05), their TVD and the cells
                   above 0.5 / 0.7 / 0.9, when both traces carry scores;
* ``cache``:       per phase, LRU (exact, every size from one pass of stack distances) and
                   Belady (replay of the engine's
                   :class:`~simulator.policies.cache.belady.Belady`, on a prefix of at most
                   ``belady_max_lookups`` lookups) hit rates at each cache size, and
                   ``max_abs_diff_pp``; ``headline`` repeats the maxima per phase.

Cache streams are per phase: *decode* = the canonical stream of the trace's decode tokens only
(token by token, each layer's k experts in trace order); *prefill* = that of its prefill tokens
only (per request and layer one group of the distinct experts, ascending). A hit rate is hits /
lookups, first (cold) lookups included; a cache of C objects holds C (layer, expert) pairs,
C = max(1, round(fraction x L x E)).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable

import numpy as np

from ..errors import MoesimError, TraceError
from ..serialize import to_plain
from . import stats
from .schema import PHASE_NAMES, Trace

DEFAULT_COMPARE_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_BELADY_MAX_LOOKUPS = 300_000
SHARE_BIN_WIDTH = 0.05
SHARE_THRESHOLDS = stats.DEFAULT_SCORE_THRESHOLDS
KEYS = ("a", "b")
_PLOT_FORMATS = ("png", "svg", "pdf")


# ====================================================================== helpers
def _check_shapes(a: Trace, b: Trace, names) -> None:
    fields = ("num_layers", "num_experts", "top_k")
    diff = [f for f in fields if getattr(a.meta, f) != getattr(b.meta, f)]
    if diff:
        def shape(t):
            return f"{t.meta.num_layers} layers x {t.meta.num_experts} experts, top-{t.meta.top_k}"
        raise TraceError(f"cannot compare traces of different shapes ({', '.join(diff)} differ): "
                         f"{names[0]} has {shape(a)}, {names[1]} has {shape(b)}")


def _belady_hits(stream: np.ndarray, sizes: Iterable[int], tick=None) -> list[int]:
    """Hits of the engine's Belady policy replayed on ``stream`` (demand paging) per size;
    ``tick()`` after each size (progress)."""
    from ..policies.cache.belady import Belady
    stream = np.ascontiguousarray(stream, dtype=np.int64)
    n_distinct = int(np.unique(stream).size)
    lookups = stream.tolist()
    done: dict[int, int] = {}
    out = []
    for size in sizes:
        size = int(size)
        if size not in done:
            if size >= n_distinct:          # everything fits: only first uses miss
                done[size] = len(lookups) - n_distinct
            else:
                ctx = SimpleNamespace(cache_stream=lambda: stream)
                # objects of 1 GB and a budget of `size` GB: exactly `size` objects
                cache = Belady(Belady.Params(capacity_gb=float(size)), ctx)
                access, insert = cache.access, cache.insert
                hits = 0
                for oid in lookups:
                    if access(oid):
                        hits += 1
                    else:
                        insert(oid, 1e9)
                done[size] = hits
        out.append(done[size])
        if tick is not None:
            tick()
    return out


def _cold_note(phase: str, names, basic, ceiling, bel_ceiling) -> str | None:
    """Why two streams of different request counts differ whatever their routing: every hit
    rate counts the first (cold) lookup of each object as a miss, and a stream of fewer
    requests has fewer lookups per object, so a lower ceiling (1 - distinct / lookups)."""
    ra, rb = basic["a"]["requests"], basic["b"]["requests"]
    gap = max(abs(ceiling["b"] - ceiling["a"]), abs(bel_ceiling["b"] - bel_ceiling["a"]))
    if ra == rb or 100 * gap < 1.0:
        return None
    def pair(c):
        return f"{names[0]} {100 * c['a']:.1f} %, {names[1]} {100 * c['b']:.1f} %"
    bel = ("" if bel_ceiling == ceiling else f"; on the Belady prefix {pair(bel_ceiling)}")
    return (f"{phase}: {names[0]} has {ra:,} requests, {names[1]} {rb:,}; hit rates count each "
            f"object's first (cold) lookup as a miss, so the highest reachable hit rate "
            f"(1 - distinct objects / lookups) is {pair(ceiling)}{bel}: up to "
            f"{100 * gap:.0f} pp of the gaps come from the request count, not the routing")


def _share_hist(trace: Trace) -> np.ndarray:
    """Fractions of (token, layer) cells per bin of top-1 / sum(top-k) gate weight; bins of
    ``SHARE_BIN_WIDTH`` over [0, 1] (the last bin includes 1)."""
    sc = trace.scores
    top1 = sc[:, :, 0].astype(np.float64)
    total = sc[:, :, 0].astype(np.float64)
    for r in range(1, sc.shape[2]):
        np.maximum(top1, sc[:, :, r], out=top1)
        total += sc[:, :, r]
    share = np.divide(top1, total, out=np.zeros_like(top1), where=total > 0).ravel()
    edges = np.linspace(0.0, 1.0, int(round(1 / SHARE_BIN_WIDTH)) + 1)
    counts, _ = np.histogram(np.clip(share, 0.0, 1.0), bins=edges)
    return counts / max(share.size, 1)


def _argmax_abs(x: np.ndarray) -> int | None:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or np.isnan(x).all():
        return None
    return int(np.nanargmax(np.abs(x)))


# ====================================================================== compare
def compare(a: Trace, b: Trace, *,
            cache_fractions: Iterable[float] = DEFAULT_COMPARE_FRACTIONS,
            belady_max_lookups: int | None = DEFAULT_BELADY_MAX_LOOKUPS,
            names: tuple[str, str] = ("A", "B"), quiet: bool = True) -> dict[str, Any]:
    """Compare trace ``a`` with trace ``b`` (see the module docstring for the result).

    ``belady_max_lookups`` bounds the Belady replay (a Python loop, about a microsecond per
    lookup and cache size): longer streams are replayed on their first that many lookups and
    the result says so (``None`` = no bound). Raises :class:`TraceError` when the traces differ
    in num_layers, num_experts or top_k. ``quiet=False`` draws a progress bar (on a terminal).
    """
    from ..progress import bar
    cache_fractions = list(cache_fractions)
    ca, cb = a.phase_counts(), b.phase_counts()
    both = sum(1 for p in PHASE_NAMES if ca[p] > 0 and cb[p] > 0)
    steps = 5 + (1 if b is a else 2) * (1 + len(cache_fractions)) * both
    with bar(steps, desc="trace compare", unit="step", quiet=quiet) as pb:
        return _compare(a, b, cache_fractions=cache_fractions,
                        belady_max_lookups=belady_max_lookups, names=names, tick=pb.update)


def _compare(a: Trace, b: Trace, *, cache_fractions, belady_max_lookups, names, tick
             ) -> dict[str, Any]:
    names = tuple(str(n) for n in names)
    if len(names) != 2:
        raise MoesimError(f"names must hold two names, got {names!r}")
    _check_shapes(a, b, names)
    fr = [float(f) for f in cache_fractions]
    if not fr or any(not (f > 0 and math.isfinite(f)) for f in fr):
        raise MoesimError(f"cache fractions must be positive numbers, got {fr!r}")
    if belady_max_lookups is not None and int(belady_max_lookups) < 1:
        raise MoesimError(f"belady_max_lookups must be >= 1 or None, got {belady_max_lookups!r}")
    L, E, k = a.meta.num_layers, a.meta.num_experts, a.meta.top_k
    objects = L * E
    tr = {"a": a, "b": b}
    counts = {key: t.phase_counts() for key, t in tr.items()}
    phases = [p for p in PHASE_NAMES if counts["a"][p] > 0 and counts["b"][p] > 0]
    notes: list[str] = []
    for p in PHASE_NAMES:
        only = [names[i] for i, key in enumerate(KEYS) if counts[key][p] > 0]
        if len(only) == 1:
            notes.append(f"only {only[0]} has {p} tokens: {p} is not compared")

    out: dict[str, Any] = {
        "names": list(names),
        "shape": {"num_layers": L, "num_experts": E, "top_k": k, "objects": objects},
        "phases": phases,
        "diff": "b - a",
    }

    # ---- basic
    basic = {}
    for key, t in tr.items():
        c = stats.basic_counts(t)
        basic[key] = {"model": t.meta.model, "path": str(t.path), "source": t.meta.source,
                      "requests": c["requests"], "prefill_tokens": c["prefill_tokens"],
                      "decode_tokens": c["decode_tokens"], "accesses": c["accesses"],
                      "prefill_accesses": c["prefill_accesses"],
                      "decode_accesses": c["decode_accesses"],
                      "has_scores": t.scores is not None}
    out["basic"] = basic

    # ---- popularity
    pop_out = {}
    for p in phases:
        pa, pb = stats.popularity(a, p), stats.popularity(b, p)
        tv = stats.tvd(pa, pb)
        ga, gb = stats.gini(pa), stats.gini(pb)
        pop_out[p] = {"tvd_per_layer": tv, "tvd_mean": float(tv.mean()),
                      "tvd_max": float(tv.max()), "tvd_max_layer": int(np.argmax(tv)),
                      "gini": {"a": ga, "b": gb},
                      "gini_mean": {"a": float(np.nanmean(ga)), "b": float(np.nanmean(gb))}}
    out["popularity"] = pop_out
    tick()

    # ---- overlap
    inter = {key: stats._overlap_counts(t, stats._cell_masks(t.experts, E)) if phases else None
             for key, t in tr.items()}
    ov_out: dict[str, Any] = {"baseline": k / E}
    for p in phases:
        ov = {key: stats.consecutive_overlap(t, p, _inter=inter[key]) for key, t in tr.items()}
        entry = {key: {"overall": ov[key]["overall"], "per_layer": ov[key]["per_layer"],
                       "pairs": ov[key]["pairs"]} for key in KEYS}
        entry["diff_overall"] = ov["b"]["overall"] - ov["a"]["overall"]
        dl = ov["b"]["per_layer"] - ov["a"]["per_layer"]
        entry["diff_per_layer"] = dl
        j = _argmax_abs(dl)
        entry["max_abs_diff_layer"] = j
        entry["max_abs_diff"] = None if j is None else float(abs(dl[j]))
        ov_out[p] = entry
    out["overlap"] = ov_out
    tick()
    del inter

    # ---- reuse distances
    rd_out: dict[str, Any] = {"labels": stats.reuse_bin_labels()}
    for p in phases:
        rd = {key: stats.reuse_distances(t, p) for key, t in tr.items()}
        rd_out[p] = {"a": rd["a"]["pooled_fractions"], "b": rd["b"]["pooled_fractions"],
                     "accesses": {key: rd[key]["accesses"] for key in KEYS},
                     "tvd": float(stats.tvd(rd["a"]["pooled_fractions"],
                                            rd["b"]["pooled_fractions"]))}
    out["reuse"] = rd_out
    tick()

    # ---- cross-layer
    if L < 2:
        out["cross_layer"] = {"available": False, "note": "a single MoE layer: no layer pairs"}
    else:
        tc = {key: stats.transition_counts(t) for key, t in tr.items()}
        js = stats.js_divergence(tc["a"], tc["b"])
        cl: dict[str, Any] = {"available": True, "tokens": "all", "js_per_pair": js,
                              "js_mean": float(np.nanmean(js)) if not np.isnan(js).all() else None,
                              "js_max": float(np.nanmax(js)) if not np.isnan(js).all() else None,
                              "js_max_pair": _argmax_abs(js)}
        for key in KEYS:
            mi = stats.mutual_information(tc[key])
            bias = stats.mutual_information_bias(tc[key])
            cl[key] = {"mi_per_pair": mi, "dependence_bits": stats.cross_layer_dependence(tc[key]),
                       "independence_floor_bits": float(np.nanmean(bias))
                       if not np.isnan(bias).all() else None}
        cl["dependence_diff"] = cl["b"]["dependence_bits"] - cl["a"]["dependence_bits"]
        out["cross_layer"] = cl

    tick()
    # ---- gate scores
    missing = [names[i] for i, key in enumerate(KEYS) if tr[key].scores is None]
    if missing:
        out["gate"] = {"available": False,
                       "note": f"no gate scores in {' and '.join(missing)}: not compared"}
    else:
        edges = np.linspace(0.0, 1.0, int(round(1 / SHARE_BIN_WIDTH)) + 1)
        g: dict[str, Any] = {"available": True, "tokens": "all", "bin_edges": edges}
        for key, t in tr.items():
            gs = stats.gate_score_stats(t, thresholds=SHARE_THRESHOLDS)
            g[key] = {"hist": _share_hist(t), "share_mean": gs["top1_share_mean"],
                      "share_gt": gs["top1_share_gt"], "top1_mean": gs["top1"]["mean"],
                      "expert_order": t.meta.expert_order}
        g["tvd"] = float(stats.tvd(g["a"]["hist"], g["b"]["hist"]))
        out["gate"] = g

    tick()
    # ---- cache
    sizes = [max(1, int(round(f * objects))) for f in fr]
    cache: dict[str, Any] = {"objects": objects, "fractions": fr, "sizes": sizes,
                             "belady_max_lookups": belady_max_lookups}
    headline = {}
    for p in phases:
        code = PHASE_NAMES.index(p)
        lru, bel, lookups, bel_lookups, trunc, lru_prefix = {}, {}, {}, {}, {}, {}
        ceiling, bel_ceiling = {}, {}
        for key, t in tr.items():
            if key == "b" and b is a:       # compare(t, t): same curves, computed once
                for d in (lru, bel, lookups, bel_lookups, trunc, lru_prefix, ceiling, bel_ceiling):
                    d["b"] = d["a"]
                continue
            s, sd = stats.phase_stream(t, code)
            tick()
            n = int(s.size)
            lookups[key] = n
            lru[key] = stats.lru_hit_counts(sd, sizes) / max(n, 1)
            m = n if belady_max_lookups is None else min(n, int(belady_max_lookups))
            bel_lookups[key] = m
            trunc[key] = m < n
            # the first lookup of each object misses in any cache: 1 - distinct / lookups
            ceiling[key] = float((sd >= 0).sum()) / max(n, 1)
            bel_ceiling[key] = float((sd[:m] >= 0).sum()) / max(m, 1)
            bel[key] = np.asarray(_belady_hits(s[:m], sizes, tick=tick)) / max(m, 1)
            # stack distances of a prefix are those of the whole stream at its positions
            lru_prefix[key] = stats.lru_hit_counts(sd[:m], sizes) / max(m, 1)
            del sd, s
        lru_diff = 100 * (lru["b"] - lru["a"])
        bel_diff = 100 * (bel["b"] - bel["a"])
        il, ib = int(np.argmax(np.abs(lru_diff))), int(np.argmax(np.abs(bel_diff)))
        entry = {
            "lookups": lookups,
            "lru": {"a": lru["a"], "b": lru["b"], "diff_pp": lru_diff,
                    "max_abs_diff_pp": float(abs(lru_diff[il])), "max_at_fraction": fr[il]},
            "belady": {"a": bel["a"], "b": bel["b"], "diff_pp": bel_diff,
                       "max_abs_diff_pp": float(abs(bel_diff[ib])), "max_at_fraction": fr[ib],
                       "lookups": bel_lookups, "truncated": trunc,
                       "truncated_any": bool(trunc["a"] or trunc["b"]), "ceiling": bel_ceiling},
            "ceiling": ceiling,
        }
        note = _cold_note(p, names, basic, ceiling, bel_ceiling)
        if note:
            entry["cold_note"] = note
            notes.append(note)
        if entry["belady"]["truncated_any"]:
            cut = [f"{names[i]} on its first {bel_lookups[key]:,} of {lookups[key]:,} lookups"
                   for i, key in enumerate(KEYS) if trunc[key]]
            note = (f"{p}: Belady replayed on a prefix ({'; '.join(cut)}; "
                    f"belady_max_lookups={belady_max_lookups:,})")
            entry["belady"]["note"] = note
            entry["belady"]["lru_on_prefix"] = lru_prefix
            notes.append(note)
        cache[p] = entry
        headline[p] = {"lru_max_abs_diff_pp": entry["lru"]["max_abs_diff_pp"],
                       "belady_max_abs_diff_pp": entry["belady"]["max_abs_diff_pp"],
                       "belady_truncated": entry["belady"]["truncated_any"]}
    out["cache"] = cache
    out["headline"] = headline
    if not phases:
        notes.append("no phase has tokens in both traces: nothing per phase is compared")
    out["notes"] = notes
    return to_plain(out)


# ====================================================================== text report
def _pct(x, spec: str = "6.1f") -> str:
    return "-" if x is None else format(100 * x, spec) + "%"


def _num(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_compare(result: dict[str, Any]) -> str:
    """A text report of :func:`compare` output (lines under 100 characters)."""
    names = result["names"]
    tag = dict(zip(KEYS, ("A", "B")))
    sh = result["shape"]
    out = [f"trace compare: A = {names[0]}, B = {names[1]} (diff = B - A)"]
    for i, key in enumerate(KEYS):
        bc = result["basic"][key]
        head = f"{tag[key]}: {names[i]}"
        if bc["path"] != names[i]:
            head += f" ({bc['path']})"
        out += textwrap.wrap(head, width=99, subsequent_indent="   ", break_long_words=True,
                             break_on_hyphens=False)
        out.append(f"   model {bc['model']}: {stats._fmt_int(bc['requests'])} requests, "
                   f"{stats._fmt_int(bc['prefill_tokens'])} prefill + "
                   f"{stats._fmt_int(bc['decode_tokens'])} decode tokens, "
                   f"{stats._fmt_int(bc['accesses'])} accesses"
                   f"{'' if bc['has_scores'] else ', no gate scores'}")
    out.append(f"shape: {sh['num_layers']} MoE layers x {sh['num_experts']} experts, "
               f"top-{sh['top_k']}; cache objects (layer, expert): {sh['objects']:,}")
    phases = result["phases"]
    out.append(f"phases in both: {', '.join(phases) if phases else 'none'}")

    # ---- cache tables
    cache = result["cache"]
    for p in phases:
        c = cache[p]
        lk = c["lookups"]
        bl = c["belady"]
        out.append("")
        out.append(f"cache hit rate, {p} stream (lookups: A {lk['a']:,}, B {lk['b']:,})")
        if bl["truncated_any"]:
            out.append(f"  Belady on the first {bl['lookups']['a']:,} (A) / "
                       f"{bl['lookups']['b']:,} (B) lookups (belady_max_lookups)")
        out.append(f"  {'size %':>6} {'objects':>8} {'LRU A':>8} {'LRU B':>8} {'diff pp':>8}"
                   f" {'Belady A':>9} {'Belady B':>9} {'diff pp':>8}")
        for i, (f, s) in enumerate(zip(cache["fractions"], cache["sizes"])):
            out.append(f"  {100 * f:>6g} {s:>8,} {_pct(c['lru']['a'][i], '7.1f'):>8} "
                       f"{_pct(c['lru']['b'][i], '7.1f'):>8} {c['lru']['diff_pp'][i]:>+8.1f} "
                       f"{_pct(bl['a'][i], '8.1f'):>9} {_pct(bl['b'][i], '8.1f'):>9} "
                       f"{bl['diff_pp'][i]:>+8.1f}")
        out.append(f"  max |diff|: LRU {c['lru']['max_abs_diff_pp']:.1f} pp (at "
                   f"{100 * c['lru']['max_at_fraction']:g}%), Belady "
                   f"{bl['max_abs_diff_pp']:.1f} pp (at {100 * bl['max_at_fraction']:g}%)")
        if c.get("cold_note"):
            ce = c["ceiling"]
            out.append(f"  highest reachable hit rate (1 - distinct / lookups): A "
                       f"{_pct(ce['a'], '.1f')}, B {_pct(ce['b'], '.1f')} (see the notes)")

    if phases:
        # ---- popularity
        out.append("")
        out.append("popularity: TVD of per-layer expert shares (0 = same, 1 = disjoint), "
                   "mean Gini of each")
        for p in phases:
            po = result["popularity"][p]
            out.append(f"  {p:<8} TVD mean {_num(po['tvd_mean'])}, max {_num(po['tvd_max'])} "
                       f"(layer {po['tvd_max_layer']}); Gini A {_num(po['gini_mean']['a'])}, "
                       f"B {_num(po['gini_mean']['b'])}")
        # ---- overlap
        ov = result["overlap"]
        out.append("")
        out.append(f"consecutive-token overlap (mean |S_t & S_t-1| / k; random k/E = "
                   f"{_num(ov['baseline'])})")
        for p in phases:
            o = ov[p]
            lay = ("" if o["max_abs_diff_layer"] is None else
                   f"; largest layer |diff| {_num(o['max_abs_diff'])} (layer "
                   f"{o['max_abs_diff_layer']})")
            d = o["diff_overall"]
            out.append(f"  {p:<8} A {_num(o['a']['overall'])}, B {_num(o['b']['overall'])}, "
                       f"diff {'-' if d is None else format(d, '+.3f')}{lay}")
        # ---- reuse
        rd = result["reuse"]
        labels = rd["labels"]
        out.append("")
        out.append("reuse distance (tokens back to the same request's last use), pooled "
                   "fractions in %:")
        w = max(5, max(len(x) for x in labels) + 1)
        per_line = max(1, (99 - 14) // w)
        for p in phases:
            r = rd[p]
            out.append(f"  {p}: TVD {_num(r['tvd'])}")
            for j0 in range(0, len(labels), per_line):
                js = range(j0, min(len(labels), j0 + per_line))
                out.append("    " + "bin".ljust(8) + "".join(f"{labels[j]:>{w}}" for j in js))
                for key in KEYS:
                    out.append(f"    {tag[key]:<8}" + "".join(f"{100 * r[key][j]:>{w}.1f}"
                                                           for j in js))
    # ---- cross-layer
    cl = result["cross_layer"]
    out.append("")
    if not cl.get("available"):
        out.append(f"cross-layer: {cl.get('note')}")
    else:
        pair = cl["js_max_pair"]
        out.append(f"cross-layer transitions (all tokens): JS divergence mean "
                   f"{_num(cl['js_mean'], '.4f')} bits, max {_num(cl['js_max'], '.4f')}"
                   + ("" if pair is None else f" (layers {pair}->{pair + 1})"))
        out.append(f"  mutual information of adjacent layers' experts, mean over pairs: A "
                   f"{_num(cl['a']['dependence_bits'], '.4f')}, B "
                   f"{_num(cl['b']['dependence_bits'], '.4f')} bits")
        out.append(f"  (independent layers would give about A "
                   f"{_num(cl['a']['independence_floor_bits'], '.4f')}, B "
                   f"{_num(cl['b']['independence_floor_bits'], '.4f')} bits at these sample "
                   f"sizes)")
    # ---- gate
    g = result["gate"]
    out.append("")
    if not g.get("available"):
        out.append(f"gate scores: {g.get('note')}")
    else:
        out.append(f"gate top-1 share (top-1 / sum of top-k weights, all tokens, bins of "
                   f"{SHARE_BIN_WIDTH:g}): TVD {_num(g['tvd'])}")
        out.append(f"  mean share A {_num(g['a']['share_mean'])}, B {_num(g['b']['share_mean'])}")
        ga, gb = g["a"]["share_gt"], g["b"]["share_gt"]
        out.append("  cells with share > " + ", ".join(
            f"{th}: A {_pct(ga[th], '.1f')} B {_pct(gb[th], '.1f')}" for th in ga))
    if result.get("notes"):
        out.append("")
        for n in result["notes"]:
            out += textwrap.wrap(n, width=99, initial_indent="note: ", subsequent_indent="      ",
                                 break_on_hyphens=False)
    return "\n".join(out)


# ====================================================================== figure
def plot_compare(result: dict[str, Any], path) -> list[str]:
    """Draw :func:`compare` output into one figure at ``path`` (png, svg or pdf, from the
    extension). Returns the panel titles, in drawing order."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in _PLOT_FORMATS:
        raise MoesimError(f"{path}: figure type must be one of {', '.join(_PLOT_FORMATS)} "
                          f"(from the file extension), got {path.suffix or 'no extension'!r}")
    names = result["names"]
    phases = result["phases"]
    colors = {"a": "tab:blue", "b": "tab:orange"}
    label = dict(zip(KEYS, names))
    panels: list[tuple[str, Any]] = []

    cache = result["cache"]
    for p in phases:
        def draw_cache(ax, p=p):
            c = cache[p]
            x = [100 * f for f in cache["fractions"]]
            for key in KEYS:
                lw = 2.4 if key == "a" else 1.2       # A under B: both visible when equal
                ax.plot(x, [100 * v for v in c["lru"][key]], "-o", color=colors[key], ms=3,
                        lw=lw, label=f"{label[key]} LRU")
                pre = " (prefix)" if c["belady"]["truncated"][key] else ""
                ax.plot(x, [100 * v for v in c["belady"][key]], "--s", color=colors[key], ms=3,
                        lw=lw, label=f"{label[key]} Belady{pre}")
            if c.get("cold_note"):
                # the cold-miss ceilings and why the curves cannot meet
                for key in KEYS:
                    ax.axhline(100 * c["ceiling"][key], color=colors[key], ls=":", lw=1,
                               label=f"{label[key]} ceiling (cold misses)")
                rq = result["basic"]
                ax.text(0.02, 0.9, textwrap.fill(
                    f"{label['a']}: {rq['a']['requests']:,} requests, {label['b']}: "
                    f"{rq['b']['requests']:,}. Cold (first) lookups cap the hit rate at "
                    f"{100 * c['ceiling']['a']:.0f} % vs {100 * c['ceiling']['b']:.0f} %: "
                    f"that part of the gap comes from the request count, not the routing.", 60),
                    transform=ax.transAxes, fontsize=6.5, va="top", zorder=5,
                    bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85, "lw": 0.5})
            ax.set_xlabel(f"cache size (% of {cache['objects']:,} (layer, expert) objects)")
            ax.set_ylabel("hit rate (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        panels.append((f"Hit rate vs cache size ({p})", draw_cache))

    if phases:
        def draw_pop(ax):
            width = 0.8 / len(phases)
            for i, p in enumerate(phases):
                tv = [np.nan if v is None else v for v in result["popularity"][p]["tvd_per_layer"]]
                x = np.arange(len(tv)) + (i - (len(phases) - 1) / 2) * width
                ax.bar(x, tv, width=width, label=p, color=("tab:green", "tab:purple")[i % 2])
            ax.set_xlabel("MoE layer")
            ax.set_ylabel(f"TVD of expert shares, {names[0]} vs {names[1]}")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3, axis="y")
        panels.append(("Per-layer popularity TVD", draw_pop))

        rp = "decode" if "decode" in phases else phases[0]

        def draw_reuse(ax, rp=rp):
            r = result["reuse"][rp]
            labels = result["reuse"]["labels"]
            x = np.arange(len(labels))
            for i, key in enumerate(KEYS):
                ax.bar(x + (i - 0.5) * 0.4, [100 * v for v in r[key]], width=0.4,
                       color=colors[key], label=label[key])
            ax.set_xticks(x)
            ax.set_xticklabels(labels, rotation=60, fontsize=7)
            ax.set_xlabel("reuse distance (tokens)")
            ax.set_ylabel("accesses (%)")
            ax.legend(fontsize=7, title=f"TVD {r['tvd']:.3f}", title_fontsize=7)
            ax.grid(alpha=0.3, axis="y")
        panels.append((f"Reuse distance ({rp}, pooled over layers)", draw_reuse))

    g = result["gate"]
    if g.get("available"):
        def draw_gate(ax):
            edges = np.asarray(g["bin_edges"])
            centers = 0.5 * (edges[1:] + edges[:-1])
            w = edges[1] - edges[0]
            for i, key in enumerate(KEYS):
                ax.bar(centers + (i - 0.5) * w * 0.4, [100 * v for v in g[key]["hist"]],
                       width=w * 0.4, color=colors[key], label=label[key])
            ax.set_xlabel("top-1 weight / sum of top-k weights")
            ax.set_ylabel("(token, layer) cells (%)")
            ax.set_xlim(0, 1)
            ax.legend(fontsize=7, title=f"TVD {g['tvd']:.3f}", title_fontsize=7)
            ax.grid(alpha=0.3, axis="y")
        panels.append(("Gate top-1 share", draw_gate))

    if not panels:
        def draw_empty(ax):
            ax.text(0.5, 0.5, "no phase has tokens in both traces", ha="center", va="center")
            ax.set_axis_off()
        panels.append(("Nothing to compare", draw_empty))

    n = len(panels)
    ncols = 1 if n == 1 else 2
    nrows = (n + ncols - 1) // ncols
    fig = Figure(figsize=(6.0 * ncols, 4.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{names[0]} vs {names[1]}")
    titles = []
    for i, (title, draw) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        draw(ax)
        ax.set_title(title, fontsize=10)
        titles.append(title)
    fig.savefig(path, format=fmt)
    return titles
