"""``moe-ocs-json``: Qwen MoE routing traces from jinlong-huo/moe_ocs_learning (``routing.json``).

One JSON object per request: ``meta`` (model_id, num_moe_layers, num_experts, top_k, prompt_len,
generated_len, backend, ...) and ``routes``, one entry per processed token in order, with
``token_pos``, ``phase`` ("prefill" | "decode") and ``layers`` {"0": {experts, weights}, ...}.

A single file is one request (id 0). A folder is searched recursively for such files (other JSON
files, e.g. ``manifest.json``, are skipped and listed in the report); they are sorted by path and
become requests 0..n-1, their relative paths recorded in ``notes.requests``. All files must
record the same model (and layer/expert/top-k counts): a folder mixing models is refused.

Each row's experts are sorted by descending weight (the vLLM capture writes them ascending).
Weights become ``scores`` as they are (Qwen1.5 MLX: raw top-4 softmax mass; Qwen3.6:
renormalised top-8). There are no router_probs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import TraceError
from ..schema import DECODE, PREFILL, TraceMeta, make_trace
from ...config.strict import field
from . import IMPORTERS, Importer, ImportResult

REPO = "jinlong-huo/moe_ocs_learning"
COMMIT = "49da2657a12eea4c40b30f01ee4ae7b8420deff8"
OLD_COMMIT = "83eeb5f9e8ed115b584aced27db84744f9af3391"
META_KEYS = ("model_id", "num_experts", "top_k")


def model_name(model_id: str) -> str | None:
    """Catalog name of a moe_ocs model id (path prefixes such as ./models/ are ignored)."""
    base = str(model_id).rstrip("/").split("/")[-1]
    low = base.lower()
    if low.startswith("qwen1.5-moe-a2.7b"):
        return "qwen1.5-moe-a2.7b"
    if "qwen3.6-35b-a3b" in low:
        return "qwen3.6-35b-a3b"
    return None


def _looks_like_routing(p: Path) -> bool:
    try:
        with open(p, encoding="utf-8") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return '"meta"' in head and '"model_id"' in head and '"top_k"' in head


def _upstream_rel(p: Path) -> str:
    """Path inside the upstream repository when recognisable (outputs/..., data/...)."""
    parts = p.resolve().parts
    for i in range(len(parts) - 1):
        if (parts[i], parts[i + 1]) in (("outputs", "experiment_traces"),
                                         ("data", "routing_traces")):
            return "/".join(parts[i:])
    return p.name


def _source(rel: str) -> str:
    if rel.endswith("routing_pretrained.mlx-83eeb5f.json"):
        return (f"github.com/{REPO}@{OLD_COMMIT}: data/routing_traces/routing_pretrained.json "
                "(older version, renamed)")
    return f"github.com/{REPO}@{COMMIT}: {rel}"


@IMPORTERS.register("moe-ocs-json")
class MoeOcsJson(Importer):
    description = ("Qwen MoE routing.json traces from jinlong-huo/moe_ocs_learning (one file = "
                   "one request; a folder = several)")

    @dataclass(frozen=True)
    class Options:
        model: str = field("", help='override the catalog model name derived from meta.model_id')

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        if p.is_file():
            return p.suffix == ".json" and _looks_like_routing(p)
        if p.is_dir():
            for i, f in enumerate(sorted(p.rglob("*.json"))):
                if i >= 50:
                    break
                if _looks_like_routing(f):
                    return True
        return False

    # ------------------------------------------------------------------ one file
    @classmethod
    def _load(cls, f: Path, rel: str, o) -> dict:
        src = str(f)
        try:
            with open(f, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise TraceError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                             source=src, row=exc.lineno) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TraceError(f"cannot read: {exc}", source=src) from None
        if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
            raise TraceError("no 'meta' object: not a moe_ocs routing file", source=src,
                             field="meta")
        meta = data["meta"]
        for key in META_KEYS:
            if key not in meta:
                raise TraceError("missing", source=src, field=f"meta.{key}")
        L = meta.get("num_moe_layers", meta.get("num_layers"))
        E, k = meta["num_experts"], meta["top_k"]
        for name, v in (("num_moe_layers", L), ("num_experts", E), ("top_k", k)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TraceError(f"must be a positive integer, got {v!r}", source=src,
                                 field=f"meta.{name}")
        model = o.model or model_name(meta["model_id"])
        if model is None:
            raise TraceError(f"unknown model_id {meta['model_id']!r} (known: "
                             "Qwen1.5-MoE-A2.7B-Chat*, *Qwen3.6-35B-A3B*); pass --option "
                             "model=<catalog name>", source=src, field="meta.model_id")
        routes = data.get("routes")
        if not isinstance(routes, list) or not routes:
            raise TraceError("'routes' must be a non-empty list", source=src, field="routes")
        T = len(routes)
        ex = np.empty((T, L, k), np.int64)
        w = np.empty((T, L, k), np.float64)
        pos = np.empty(T, np.int64)
        ph = np.empty(T, np.int8)
        keys = [str(l_) for l_ in range(L)]
        for t, r in enumerate(routes):
            def fail(msg, fld, layer=None):
                raise TraceError(f"route {t}: {msg}", source=src, row=t, token=t, layer=layer,
                                 field=fld)
            if not isinstance(r, dict):
                fail("is not an object", "routes")
            tp, phase, layers = r.get("token_pos"), r.get("phase"), r.get("layers")
            if not isinstance(tp, int) or isinstance(tp, bool) or tp < 0:
                fail(f"token_pos must be a non-negative integer, got {tp!r}", "token_pos")
            if phase not in ("prefill", "decode"):
                fail(f"phase must be 'prefill' or 'decode', got {phase!r}", "phase")
            if not isinstance(layers, dict):
                fail("'layers' must be an object", "layers")
            if set(layers) != set(keys):
                extra = sorted(set(layers) - set(keys))
                miss = [x for x in keys if x not in layers]
                fail(f"layers must be '0'..'{L - 1}' (missing {miss[:5]}, extra {extra[:5]})",
                     "layers", int(miss[0]) if miss else None)
            pos[t] = tp
            ph[t] = PREFILL if phase == "prefill" else DECODE
            for l_, key in enumerate(keys):
                cell = layers[key]
                if not isinstance(cell, dict):
                    fail("is not an object", f"layers.{key}", l_)
                e, wt = cell.get("experts"), cell.get("weights")
                if (not isinstance(e, list) or len(e) != k
                        or not all(isinstance(x, int) and not isinstance(x, bool) for x in e)):
                    fail(f"experts must be a list of {k} integers, got {e!r}",
                         f"layers.{key}.experts", l_)
                if (not isinstance(wt, list) or len(wt) != k or not all(
                        isinstance(x, (int, float)) and not isinstance(x, bool)
                        and math.isfinite(x) for x in wt)):
                    fail(f"weights must be a list of {k} finite numbers, got {wt!r}",
                         f"layers.{key}.weights", l_)
                bad = [x for x in e if not 0 <= x < E]
                if bad:
                    fail(f"expert id {bad[0]} out of range [0, {E})", f"layers.{key}.experts", l_)
                ex[t, l_] = e
                w[t, l_] = wt
        if (w < 0).any():
            t, l_, _ = np.argwhere(w < 0)[0]
            raise TraceError("negative weight", source=src, row=int(t), token=int(t),
                             layer=int(l_), field=f"layers.{l_}.weights")
        if T > 1 and (np.diff(pos) <= 0).any():
            t = int(np.flatnonzero(np.diff(pos) <= 0)[0]) + 1
            raise TraceError(f"token_pos {int(pos[t])} does not increase (previous "
                             f"{int(pos[t - 1])})", source=src, row=t, field="token_pos")
        # Sort each row by descending weight (stable: ties keep the file's order).
        order = np.argsort(-w, axis=2, kind="stable")
        moved = (order != np.arange(k)).any(axis=2)
        was_asc = bool((np.diff(w, axis=2) >= 0).all()) and bool((np.diff(w, axis=2) > 0).any())
        was_desc = bool((np.diff(w, axis=2) <= 0).all())
        ex = np.take_along_axis(ex, order, axis=2)
        w = np.take_along_axis(w, order, axis=2)
        n_pre, n_dec = int((ph == PREFILL).sum()), int((ph == DECODE).sum())
        info = {
            "file": rel, "model_id": meta["model_id"], "model": model,
            "backend": meta.get("backend"), "run_id": meta.get("run_id"),
            "routes": T, "prefill": n_pre, "decode": n_dec,
            "prompt_len": meta.get("prompt_len"), "generated_len": meta.get("generated_len"),
            "weights_order": ("descending" if was_desc else "ascending" if was_asc else "mixed"),
            "cells_reordered": int(moved.sum()),
            "weight_row_sum_range": [round(float(w.sum(axis=2).min()), 4),
                                     round(float(w.sum(axis=2).max()), 4)],
        }
        if meta.get("prompt_len") is not None and meta["prompt_len"] != n_pre:
            info["prompt_len_mismatch"] = f"meta.prompt_len={meta['prompt_len']}, {n_pre} prefill routes"
        if meta.get("generated_len") is not None and meta["generated_len"] != n_dec:
            info["decode_routes_vs_generated_len"] = (
                f"{n_dec} decode routes for generated_len={meta['generated_len']}")
        return {"model": model, "L": L, "E": E, "k": k, "ex": ex, "w": w, "pos": pos, "ph": ph,
                "info": info, "src": src, "rel": rel}

    # ------------------------------------------------------------------ run
    @classmethod
    def run(cls, path: Path, options: "MoeOcsJson.Options") -> ImportResult:
        p = Path(path)
        skipped: list[str] = []
        if p.is_file():
            files = [(p, p.name)]
        elif p.is_dir():
            files = []
            for f in sorted(p.rglob("*.json")):
                rel = f.relative_to(p).as_posix()
                (files.append((f, rel)) if _looks_like_routing(f) else skipped.append(rel))
            if not files:
                raise TraceError("no routing JSON file (with meta.model_id and routes) found",
                                 source=str(p))
        else:
            raise TraceError("no such file or folder", source=str(p))
        loaded = [cls._load(f, rel, options) for f, rel in files]
        first = loaded[0]
        for d in loaded[1:]:
            for key, name in (("model", "model"), ("L", "num_moe_layers"),
                              ("E", "num_experts"), ("k", "top_k")):
                if d[key] != first[key]:
                    raise TraceError(
                        f"{name} is {d[key]!r} here but {first[key]!r} in {first['rel']}: a "
                        "folder must hold traces of one model (import the files separately)",
                        source=d["src"], field=f"meta.{name}")
        rid = np.concatenate([np.full(d["pos"].size, i, np.int64) for i, d in enumerate(loaded)])
        infos = [d["info"] for d in loaded]
        notes = {
            "input": p.name,
            "requests": {str(i): d["rel"] for i, d in enumerate(loaded)},
            "per_request": infos,
            "expert_order": ("each row sorted by descending weight (stable for ties); the vLLM "
                             "capture writes ascending weights"),
            "scores": "the file's weights as they are (not renormalised here)",
            "phase": "from each route's 'phase' field",
            "token_positions": "route token_pos (absolute position in the sequence)",
        }
        if len(loaded) == 1:
            notes["source_file"] = first["rel"]
        backends = sorted({str(i.get("backend")) for i in infos})
        notes["backend"] = backends[0] if len(backends) == 1 else backends
        meta = TraceMeta(model=first["model"], num_layers=first["L"], num_experts=first["E"],
                         top_k=first["k"],
                         source=(_source(_upstream_rel(files[0][0])) if len(loaded) == 1 else
                                 f"github.com/{REPO}@{COMMIT}: {len(loaded)} routing files "
                                 f"under {p.name}/"),
                         expert_order="descending", notes=notes)
        trace = make_trace(meta, rid, np.concatenate([d["pos"] for d in loaded]),
                           np.concatenate([d["ph"] for d in loaded]),
                           np.concatenate([d["ex"] for d in loaded]),
                           scores=np.concatenate([d["w"] for d in loaded]), path=str(p))
        report = {"format": "moe-ocs-json", "files_read": len(loaded),
                  "rows_read": int(sum(d["ex"].shape[0] * d["L"] for d in loaded)),
                  "requests": trace.num_requests(), "tokens": trace.phase_counts(),
                  "cells_reordered": int(sum(i["cells_reordered"] for i in infos)),
                  "per_file": {i["file"]: {k_: i[k_] for k_ in
                                           ("routes", "prefill", "decode", "weights_order",
                                            "cells_reordered")} for i in infos}}
        if skipped:
            report["skipped_json"] = skipped
            notes["skipped_json"] = skipped
        return ImportResult(trace=trace, report=report)
