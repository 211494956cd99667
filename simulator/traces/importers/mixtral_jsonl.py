"""``mixtral-jsonl``: Mixtral-8x7B routing logged by Mario928/speculative-moe (vLLM hook).

One JSON object per (request, layer, token): ``dataset``, ``problem_id``, ``layer``, ``experts``
(top-2 ids), ``gating_probs`` (top-2 softmax renormalised to sum 1) and either

* ``token_idx`` -- the post-processed **decode** files (``*_2_routing.jsonl``): decode tokens only,
  rows sorted by (problem, layer, token) and re-numbered 0,1,.. per (problem, layer) *after*
  some rows were lost. Token *i* at layer *L* is therefore not guaranteed to be token *i* at
  layer *L+1*: cross-layer alignment is not recoverable. ``gaps=truncate`` (default) keeps the
  first ``min over layers`` tokens of each request, aligned by index, and marks the trace
  ``notes.cross_layer_alignment = "approximate"``; ``gaps=error`` refuses.
* ``token_pos`` -- the **raw** hook output (``routing_raw.jsonl``): the prefill pass is written
  layer-major with its batch positions 0..N-1, then each decode step writes one row per layer
  (``token_pos`` 0) in layer order. Exact alignment is recovered from the file order: a new
  forward pass starts whenever (layer, token_pos) does not increase. Missing (token, layer) cells
  are a real defect; ``gaps=fill-previous`` (default) copies the nearest earlier token of the
  request at that layer (the nearest later one if there is none) and marks ``imputed``;
  ``gaps=drop-token`` drops every token with a missing layer; ``gaps=error`` refuses.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError, TraceError
from ..schema import DECODE, PREFILL, TraceMeta, make_trace
from ...config.strict import field
from . import IMPORTERS, Importer, ImportResult

REPO = "Mario928/speculative-moe"
COMMIT = "216e26eb86ee09fa46bb0e8c000be7e9758e10b6"
UPSTREAM_PATHS = {
    "humaneval_2_routing.jsonl": "routing_data_collected/humaneval_2_routing.jsonl",
    "gsm8k_2_routing.jsonl": "routing_data_collected/gsm8k_2_routing.jsonl",
    "routing_raw.jsonl": "analysis/deep_analysis/routing_raw.jsonl",
}
REQUIRED = ("problem_id", "layer", "experts", "gating_probs")


def _source(path: Path) -> str:
    up = UPSTREAM_PATHS.get(path.name)
    where = up if up else f"{path.name} (not a known upstream file name)"
    return f"github.com/{REPO}@{COMMIT}: {where}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class _Row:
    line: int
    dataset: str
    problem: int
    layer: int
    pos: int            # token_idx (decode layout) or token_pos (raw layout)
    experts: list[int]
    probs: list[float]


@IMPORTERS.register("mixtral-jsonl")
class MixtralJsonl(Importer):
    description = ("Mixtral-8x7B vLLM routing JSONL from Mario928/speculative-moe (decode files "
                   "with token_idx, or the raw prefill+decode file with token_pos)")

    @dataclass(frozen=True)
    class Options:
        gaps: str = field("auto", help='defect handling: decode files truncate|error, raw files fill-previous|drop-token|error; auto = truncate (decode) / fill-previous (raw)')
        num_layers: int = field(32, min=1, help='MoE layers (Mixtral-8x7B: 32)')
        num_experts: int = field(8, min=1, help='experts per layer')
        top_k: int = field(2, min=1, help='experts per token')

    @classmethod
    def detect(cls, path: Path) -> bool:
        if not path.is_file() or path.suffix != ".jsonl":
            return False
        try:
            with open(path, encoding="utf-8") as fh:
                first = fh.readline()
            obj = json.loads(first)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return (isinstance(obj, dict) and all(k in obj for k in REQUIRED)
                and ("token_idx" in obj or "token_pos" in obj))

    # ------------------------------------------------------------------ parsing
    @classmethod
    def _read(cls, path: Path, opts: "MixtralJsonl.Options") -> tuple[list[_Row], str]:
        src = str(path)
        rows: list[_Row] = []
        layout = None
        try:
            fh = open(path, encoding="utf-8")
        except OSError as exc:
            raise TraceError(f"cannot open: {exc}", source=src) from None
        with fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TraceError(f"line {line_no} is not valid JSON ({exc.msg} at column "
                                     f"{exc.colno})", source=src, row=line_no) from None
                if not isinstance(obj, dict):
                    raise TraceError(f"line {line_no} is not a JSON object", source=src,
                                     row=line_no)
                for key in REQUIRED:
                    if key not in obj:
                        raise TraceError(f"line {line_no} lacks field '{key}'", source=src,
                                         row=line_no, field=key)
                this = ("decode" if "token_idx" in obj else "raw" if "token_pos" in obj else None)
                if this is None or ("token_idx" in obj and "token_pos" in obj):
                    raise TraceError(f"line {line_no} must have exactly one of 'token_idx' "
                                     "(decode file) or 'token_pos' (raw file)", source=src,
                                     row=line_no, field="token_idx")
                if layout is None:
                    layout = this
                elif layout != this:
                    raise TraceError(f"line {line_no} mixes the decode layout (token_idx) and "
                                     "the raw layout (token_pos) in one file", source=src,
                                     row=line_no, field="token_idx" if this == "decode" else "token_pos")
                pos_key = "token_idx" if this == "decode" else "token_pos"
                rows.append(cls._check_row(obj, line_no, pos_key, src, opts))
        if not rows:
            raise TraceError("holds no routing rows", source=src)
        return rows, layout  # type: ignore[return-value]

    @staticmethod
    def _check_row(obj: dict, line_no: int, pos_key: str, src: str, opts) -> _Row:
        def fail(msg, fld):
            raise TraceError(f"line {line_no}: {msg}", source=src, row=line_no, field=fld)

        for key in ("problem_id", "layer", pos_key):
            v = obj[key]
            if not _is_int(v) or v < 0:
                fail(f"must be a non-negative integer, got {v!r}", key)
        if not 0 <= obj["layer"] < opts.num_layers:
            fail(f"layer {obj['layer']} out of range [0, {opts.num_layers})", "layer")
        ex, gp = obj["experts"], obj["gating_probs"]
        k = opts.top_k
        if not isinstance(ex, list) or len(ex) != k or not all(_is_int(e) for e in ex):
            fail(f"must be a list of {k} integers, got {ex!r}", "experts")
        if any(e < 0 or e >= opts.num_experts for e in ex):
            fail(f"expert id out of range [0, {opts.num_experts}): {ex}", "experts")
        if len(set(ex)) != k:
            fail(f"repeats an expert: {ex}", "experts")
        if (not isinstance(gp, list) or len(gp) != k
                or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in gp)):
            fail(f"must be a list of {k} numbers, got {gp!r}", "gating_probs")
        if not all(math.isfinite(p) and p >= 0 for p in gp):
            fail(f"must be finite and >= 0, got {gp}", "gating_probs")
        ds = obj.get("dataset", "")
        return _Row(line_no, str(ds), obj["problem_id"], obj["layer"], obj[pos_key], ex, gp)

    # ------------------------------------------------------------------ run
    @classmethod
    def run(cls, path: Path, options: "MixtralJsonl.Options") -> ImportResult:
        path = Path(path)
        rows, layout = cls._read(path, options)
        gaps = options.gaps
        allowed = {"decode": ("truncate", "error"), "raw": ("fill-previous", "drop-token", "error")}
        if gaps == "auto":
            gaps = "truncate" if layout == "decode" else "fill-previous"
        if gaps not in allowed[layout]:
            raise ConfigError(f"gaps={gaps!r} does not apply to a {layout} file ({path.name}); "
                              f"choose from {', '.join(allowed[layout])}", key="--option gaps")
        # Requests: datasets in order of first appearance, problems ascending within each.
        ds_order: list[str] = []
        problems: dict[str, set[int]] = defaultdict(set)
        for r in rows:
            if r.dataset not in problems:
                ds_order.append(r.dataset)
            problems[r.dataset].add(r.problem)
        req_of: dict[tuple[str, int], int] = {}
        offset = 0
        for ds in ds_order:
            for p in sorted(problems[ds]):
                req_of[(ds, p)] = offset + p
            offset += max(problems[ds]) + 1
        by_req: dict[int, list[_Row]] = defaultdict(list)
        for r in rows:
            by_req[req_of[(r.dataset, r.problem)]].append(r)
        ordered = sorted(by_req)
        report: dict = {"format": "mixtral-jsonl", "layout": layout, "gaps": gaps,
                        "rows_read": len(rows), "requests": len(ordered)}
        notes: dict = {
            "input": path.name, "layout": layout, "gaps": gaps,
            "request_map": {str(req_of[key]): f"{key[0]}/{key[1]}" for key in sorted(
                req_of, key=lambda kk: req_of[kk])},
            "scores": "gating_probs: top-2 softmax weights renormalised to sum 1 (not the full "
                      "router distribution)",
            "model_checkpoint": "neuralmagic/Mixtral-8x7B-Instruct-v0.1-FP8 on vLLM, greedy",
        }
        if len(ds_order) > 1:
            notes["request_id_offsets"] = {ds: min(req_of[(ds, p)] - p for p in problems[ds])
                                           for ds in ds_order}
        parts = (cls._decode(path, by_req, ordered, options, gaps, report, notes)
                 if layout == "decode" else
                 cls._raw(path, by_req, ordered, options, gaps, report, notes))
        rid, tok, ph, ex, sc, imp = parts
        # Experts best first: verify descending gating_probs, sort where not.
        order = np.argsort(-sc, axis=2, kind="stable")
        unsorted = (order != np.arange(options.top_k)).any(axis=2)
        n_unsorted = int(unsorted.sum())
        if n_unsorted:
            ex = np.take_along_axis(ex, order, axis=2)
            sc = np.take_along_axis(sc, order, axis=2)
        report["cells_reordered_by_score"] = n_unsorted
        notes["expert_order"] = ("gating_probs were already descending in every row"
                                 if not n_unsorted else
                                 f"{n_unsorted} cells re-sorted by descending gating_probs")
        meta = TraceMeta(model="mixtral-8x7b", num_layers=options.num_layers,
                         num_experts=options.num_experts, top_k=options.top_k,
                         source=_source(path), expert_order="descending", notes=notes)
        trace = make_trace(meta, rid, tok, ph, ex, scores=sc, imputed=imp, path=str(path))
        report["tokens"] = trace.phase_counts()
        report["requests"] = trace.num_requests()
        notes["report"] = report
        return ImportResult(trace=trace, report=report)

    # ------------------------------------------------------------------ decode layout
    @classmethod
    def _decode(cls, path, by_req, ordered, opts, gaps, report, notes):
        src, L, k = str(path), opts.num_layers, opts.top_k
        rid, tok, ph, exs, scs = [], [], [], [], []
        per_req = {}
        total_dropped = 0
        for r_id in ordered:
            cells: dict[int, dict[int, _Row]] = defaultdict(dict)
            for r in by_req[r_id]:
                if r.pos in cells[r.layer]:
                    raise TraceError(f"line {r.line}: duplicate token_idx {r.pos} at layer "
                                     f"{r.layer} (first at line {cells[r.layer][r.pos].line})",
                                     source=src, row=r.line, request=r_id, token=r.pos,
                                     layer=r.layer, field="token_idx")
                cells[r.layer][r.pos] = r
            missing_layers = [l_ for l_ in range(L) if l_ not in cells]
            if missing_layers:
                raise TraceError(f"request has no rows at layers {missing_layers}", source=src,
                                 request=r_id, layer=missing_layers[0], field="layer")
            counts = {l_: len(cells[l_]) for l_ in range(L)}
            for l_ in range(L):
                if max(cells[l_]) != counts[l_] - 1:
                    gap = min(set(range(counts[l_])) - set(cells[l_]))
                    raise TraceError(f"token_idx is not numbered 0..{counts[l_] - 1} (no token "
                                     f"{gap}): not a post-processed decode file?", source=src,
                                     request=r_id, layer=l_, token=gap, field="token_idx")
            n_min, n_max = min(counts.values()), max(counts.values())
            dropped = sum(c - n_min for c in counts.values())
            if gaps == "error" and n_min != n_max:
                short = [l_ for l_ in range(L) if counts[l_] < n_max]
                raise TraceError(
                    f"layers hold different numbers of rows ({n_min}..{n_max}; short layers "
                    f"{short}): some (token, layer) rows were lost and token_idx was re-numbered "
                    "afterwards, so token i at one layer is not known to be token i at another; "
                    "the cross-layer alignment cannot be recovered (use gaps=truncate to keep "
                    "the first min-over-layers tokens, aligned approximately)",
                    source=src, request=r_id, layer=short[0], field="token_idx")
            total_dropped += dropped
            per_req[str(r_id)] = {"rows": sum(counts.values()), "rows_per_layer_min": n_min,
                                  "rows_per_layer_max": n_max, "tokens_kept": n_min,
                                  "rows_dropped": dropped}
            ex = np.empty((n_min, L, k), np.int64)
            sc = np.empty((n_min, L, k), np.float32)
            for l_ in range(L):
                for t in range(n_min):
                    r = cells[l_][t]
                    ex[t, l_] = r.experts
                    sc[t, l_] = r.probs
            rid.append(np.full(n_min, r_id, np.int64))
            tok.append(np.arange(n_min, dtype=np.int32))
            ph.append(np.full(n_min, DECODE, np.int8))
            exs.append(ex)
            scs.append(sc)
        report["truncation"] = per_req
        report["rows_dropped"] = total_dropped
        notes["cross_layer_alignment"] = "approximate"
        notes["alignment_reason"] = (
            "rows were lost upstream and token_idx was re-numbered per (problem, layer) "
            "afterwards; tokens are aligned across layers by index")
        notes["truncation"] = ("per request, kept the first n_min = min over layers of the row "
                               "count; rows beyond n_min at longer layers were dropped")
        notes["token_positions"] = ("decode-step index from 0 (the prompt length is not in the "
                                    "file); all tokens are decode")
        return (np.concatenate(rid), np.concatenate(tok), np.concatenate(ph),
                np.concatenate(exs), np.concatenate(scs), None)

    # ------------------------------------------------------------------ raw layout
    @classmethod
    def _raw(cls, path, by_req, ordered, opts, gaps, report, notes):
        src, L, k = str(path), opts.num_layers, opts.top_k
        rid, tok, ph, exs, scs, imps = [], [], [], [], [], []
        per_req = {}
        tot = Counter()
        for r_id in ordered:
            rws = by_req[r_id]
            # Segment the file order into forward passes: a new pass starts when
            # (layer, token_pos) does not increase. Pass 0 = prefill, then one per decode step.
            passes: list[list[_Row]] = [[rws[0]]]
            for prev, cur in zip(rws, rws[1:]):
                if (cur.layer, cur.pos) <= (prev.layer, prev.pos):
                    passes.append([cur])
                else:
                    passes[-1].append(cur)
            pre, dec = passes[0], passes[1:]
            bad = next((r for p in dec for r in p if r.pos != 0), None)
            if bad is not None:
                raise TraceError(f"line {bad.line}: token_pos {bad.pos} in a decode step (decode "
                                 "rows have token_pos 0; a second prefill or a batch of several "
                                 "sequences is not supported)", source=src, row=bad.line,
                                 request=r_id, layer=bad.layer, field="token_pos")
            n_pre = max(r.pos for r in pre) + 1
            T = n_pre + len(dec)
            ex = np.zeros((T, L, k), np.int64)
            sc = np.zeros((T, L, k), np.float32)
            have = np.zeros((T, L), bool)
            for r in pre:
                ex[r.pos, r.layer], sc[r.pos, r.layer], have[r.pos, r.layer] = r.experts, r.probs, True
            for s, p in enumerate(dec):
                for r in p:
                    ex[n_pre + s, r.layer] = r.experts
                    sc[n_pre + s, r.layer] = r.probs
                    have[n_pre + s, r.layer] = True
            miss = ~have
            m_pre, m_dec = int(miss[:n_pre].sum()), int(miss[n_pre:].sum())
            tok_miss_pre = int(miss[:n_pre].any(axis=1).sum())
            tok_miss_dec = int(miss[n_pre:].any(axis=1).sum())
            info = {"rows": len(rws), "prefill_tokens": n_pre, "decode_steps": len(dec),
                    "missing_cells_prefill": m_pre, "missing_cells_decode": m_dec,
                    "missing_cells": m_pre + m_dec,
                    "missing_cell_fraction": round((m_pre + m_dec) / (T * L), 5),
                    "tokens_with_missing_layer_prefill": tok_miss_pre,
                    "tokens_with_missing_layer_decode": tok_miss_dec,
                    "tokens_with_missing_layer_fraction": round(
                        (tok_miss_pre + tok_miss_dec) / T, 4),
                    "missing_rows_per_layer": {str(l_): int(miss[:, l_].sum())
                                               for l_ in range(L) if miss[:, l_].any()}}
            per_req[str(r_id)] = info
            tot.update({k_: v for k_, v in info.items() if isinstance(v, int)})
            if miss.any() and gaps == "error":
                t, l_ = np.argwhere(miss)[0]
                raise TraceError(
                    f"{m_pre + m_dec} (token, layer) rows are missing ({m_pre} prefill, {m_dec} "
                    f"decode; {tok_miss_pre + tok_miss_dec} of {T} tokens lack a layer), the first "
                    f"here; use gaps=fill-previous or gaps=drop-token", source=src, request=r_id,
                    token=int(t), layer=int(l_), field="layer")
            positions = np.arange(T, dtype=np.int32)
            phases = np.where(positions < n_pre, PREFILL, DECODE).astype(np.int8)
            imputed = miss.copy()
            if gaps == "fill-previous" and miss.any():
                for l_ in np.flatnonzero(miss.any(axis=0)):
                    present = np.flatnonzero(have[:, l_])
                    if present.size == 0:
                        raise TraceError("layer has no row at all for this request: nothing to "
                                         "fill from", source=src, request=r_id, layer=int(l_),
                                         field="layer")
                    for t in np.flatnonzero(miss[:, l_]):
                        j = np.searchsorted(present, t) - 1   # nearest earlier present token
                        srcs_t = present[j] if j >= 0 else present[0]
                        ex[t, l_], sc[t, l_] = ex[srcs_t, l_], sc[srcs_t, l_]
            keep = slice(None)
            if gaps == "drop-token":
                keep = ~miss.any(axis=1)
                info["tokens_dropped"] = int((~keep).sum())
                tot["tokens_dropped"] += int((~keep).sum())
                imputed = None
            rid.append(np.full(T, r_id, np.int64)[keep])
            tok.append(positions[keep])
            ph.append(phases[keep])
            exs.append(ex[keep])
            scs.append(sc[keep])
            imps.append(None if imputed is None else imputed)
        report["per_request"] = per_req
        report["missing_cells"] = tot["missing_cells"]
        report["missing_cells_prefill"] = tot["missing_cells_prefill"]
        report["missing_cells_decode"] = tot["missing_cells_decode"]
        n_tok = tot["prefill_tokens"] + tot["decode_steps"]
        n_bad = tot["tokens_with_missing_layer_prefill"] + tot["tokens_with_missing_layer_decode"]
        report["tokens_with_missing_layer"] = n_bad
        report["tokens_with_missing_layer_fraction"] = round(n_bad / n_tok, 4) if n_tok else 0.0
        report["missing_cell_fraction"] = (round(tot["missing_cells"] / (n_tok * L), 5)
                                           if n_tok else 0.0)
        if gaps == "fill-previous":
            report["imputed_cells"] = tot["missing_cells"]
            notes["imputation"] = (
                "missing (token, layer) cells were filled with the experts and gating_probs of "
                "the nearest earlier token of the same request at that layer (the nearest later "
                "one when no earlier token exists) and marked imputed")
        elif gaps == "drop-token":
            report["tokens_dropped"] = tot["tokens_dropped"]
            notes["dropped"] = "tokens with any missing layer were dropped (positions keep gaps)"
        notes["cross_layer_alignment"] = "exact"
        notes["alignment_method"] = (
            "prefill: by token_pos; decode: the file order is segmented into steps (a new "
            "forward pass starts when (layer, token_pos) does not increase)")
        notes["token_positions"] = ("prefill 0..N-1 (token_pos), decode step s at N+s")
        notes["missing_cells"] = report["missing_cells"]
        imputed = (None if gaps == "drop-token"
                   else np.concatenate([i for i in imps]))
        return (np.concatenate(rid), np.concatenate(tok), np.concatenate(ph),
                np.concatenate(exs), np.concatenate(scs), imputed)
