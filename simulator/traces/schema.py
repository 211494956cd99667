"""The canonical routing trace (DESIGN §2) as dense numpy arrays, and its validation.

One logical record per (request, token position, MoE layer). In memory the records of a trace
are held token-major:

* ``experts``      (T, L, k) unsigned ints: experts the router chose, best first
                   (``meta.expert_order == "unordered"`` when the source lost the order);
* ``scores``       (T, L, k) float32 or None: their gate weights;
* ``router_probs`` (T, L, E) float16/32 or None: the full router distribution;
* ``imputed``      (T, L) bool or None: cells an importer filled in for a defect of the source;
* per token: ``request_id``, ``token`` (position in the sequence) and ``phase``
  (0 = prefill, 1 = decode).

Tokens are grouped by request, in request order; within a request token positions increase and
all prefill tokens come before decode tokens. Per-request arrival times are optional
(``arrival_s``). Validation is vectorised and its errors name file, row, request, token, layer
and field.

**Positions may have gaps** (a trace cut from the middle of requests, a source with missing
rows, a decode-only run of a prompted request). ``token`` is the position in the real
sequence, and the simulator gives it one meaning everywhere: a token at position p attends to
p + 1 cached positions (attention FLOPs and KV reads), and after it its request's KV cache
holds p + 1 entries (``local.kv_peak_bytes``), whether or not the earlier positions are rows
of the trace. Only the rows are simulated as tokens (expert lookups, MoE compute, token
counts and latencies); positions missing from the trace still occupy KV.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import TraceError

PREFILL = 0
DECODE = 1
PHASE_NAMES = ("prefill", "decode")
SCHEMA_VERSION = 1
METADATA_KEY = b"moesim.trace"


MAX_EXPERTS = 65536
# Gate scores of a token's k experts are softmax (or renormalised) weights: they sum to at
# most 1. Allowed excess, for sources that round k weights to bf16 (8 significant bits) and
# renormalise in low precision: the Qwen3.6 vLLM trace reaches 1.0112 (top-8).
SCORE_SUM_TOL = 0.05
# A token's router_probs are a distribution over the E experts: |sum - 1| <= this.
PROBS_SUM_TOL = 0.02


def expert_dtype(num_experts: int) -> np.dtype:
    """Smallest unsigned dtype that holds expert ids 0..num_experts-1."""
    if num_experts <= 256:
        return np.dtype(np.uint8)
    if num_experts <= MAX_EXPERTS:
        return np.dtype(np.uint16)
    raise TraceError(f"num_experts={num_experts} exceeds {MAX_EXPERTS}")


@dataclass
class TraceMeta:
    """Trace-level metadata, stored as JSON in the Parquet file's key-value metadata."""

    model: str
    num_layers: int
    num_experts: int
    top_k: int
    source: str = "unknown"
    # "descending": experts listed by descending gate weight; "unordered": the source lost the
    # order (DeepSeek's remote code uses topk(sorted=False)); policies that need rank must
    # then rely on scores.
    expert_order: str = "descending"
    # Free-form provenance and defect report (importer choices, counts of imputed cells, ...).
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<trace>") -> "TraceMeta":
        """Metadata from the file's JSON, every field's type and range checked here (before
        any array is sized from it)."""
        if not isinstance(data, dict):
            raise TraceError(f"must be a JSON object, got {type(data).__name__}", source=source,
                             field="metadata")
        missing = [k for k in ("model", "num_layers", "num_experts", "top_k") if k not in data]
        if missing:
            raise TraceError(f"trace metadata lacks {', '.join(missing)}", source=source,
                             field="metadata")
        for name in ("num_layers", "num_experts", "top_k"):
            v = data[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TraceError(f"must be a positive integer, got {v!r}", source=source,
                                 field=f"metadata.{name}")
        if data["num_experts"] > MAX_EXPERTS:
            raise TraceError(f"must be <= {MAX_EXPERTS}, got {data['num_experts']}",
                             source=source, field="metadata.num_experts")
        if data["top_k"] > data["num_experts"]:
            raise TraceError(f"top_k={data['top_k']} exceeds num_experts={data['num_experts']}",
                             source=source, field="metadata.top_k")
        for name, default in (("model", ...), ("source", "unknown")):
            v = data.get(name, default)
            if not isinstance(v, str) or not v:
                raise TraceError(f"must be a non-empty string, got {v!r}", source=source,
                                 field=f"metadata.{name}")
        order = data.get("expert_order", "descending")
        if order not in ("descending", "unordered"):
            raise TraceError(f"must be 'descending' or 'unordered', got {order!r}",
                             source=source, field="metadata.expert_order")
        if not isinstance(data.get("notes", {}), dict):
            raise TraceError(f"must be a JSON object, got {data['notes']!r}", source=source,
                             field="metadata.notes")
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version > SCHEMA_VERSION:
            raise TraceError(f"schema version {version!r} is not one this moesim reads "
                             f"(<= {SCHEMA_VERSION}); upgrade moesim", source=source,
                             field="metadata.schema_version")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Trace:
    meta: TraceMeta
    request_id: np.ndarray          # (T,) int64: request of each token
    token: np.ndarray               # (T,) int32: position in its sequence
    phase: np.ndarray               # (T,) int8: PREFILL / DECODE
    experts: np.ndarray             # (T, L, k)
    scores: np.ndarray | None = None
    router_probs: np.ndarray | None = None
    imputed: np.ndarray | None = None
    # Per request (in request order): id and optional arrival time in seconds.
    arrival_s: dict[int, float] | None = None
    path: str = "<memory>"

    # ------------------------------------------------------------------ structure
    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return self.meta.num_layers

    @property
    def top_k(self) -> int:
        return self.meta.top_k

    @property
    def num_accesses(self) -> int:
        """Routed (token, layer, expert) uses: T x L x k."""
        return int(self.experts.size)

    def request_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, starts, ends): token index range [start, end) of each request, in order."""
        rid = self.request_id
        if rid.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        change = np.flatnonzero(rid[1:] != rid[:-1]) + 1
        starts = np.concatenate(([0], change)).astype(np.int64)
        ends = np.concatenate((change, [rid.size])).astype(np.int64)
        return rid[starts].astype(np.int64), starts, ends

    def positions(self) -> np.ndarray:
        """(T,) int64: index of each token within its request's run of rows (0, 1, ...).
        Equals ``token`` for a request recorded from its start; differs for a trace cut from
        the middle of requests (``token`` keeps the recorded positions)."""
        _ids, starts, ends = self.request_bounds()
        return np.arange(self.num_tokens, dtype=np.int64) - np.repeat(starts, ends - starts)

    def num_requests(self) -> int:
        return int(self.request_bounds()[0].size)

    def phase_counts(self) -> dict[str, int]:
        return {"prefill": int(np.count_nonzero(self.phase == PREFILL)),
                "decode": int(np.count_nonzero(self.phase == DECODE))}

    def select_requests(self, ids) -> "Trace":
        """A new trace holding only the given request ids (in this trace's order)."""
        mask = np.isin(self.request_id, np.asarray(list(ids), dtype=np.int64))
        return self._take(mask)

    def _take(self, mask: np.ndarray) -> "Trace":
        def sub(a):
            return None if a is None else a[mask]
        arrivals = None
        if self.arrival_s is not None:
            keep = set(np.unique(self.request_id[mask]).tolist())
            arrivals = {k: v for k, v in self.arrival_s.items() if k in keep}
        return Trace(meta=dataclasses.replace(self.meta, notes=dict(self.meta.notes)),
                     request_id=self.request_id[mask], token=self.token[mask],
                     phase=self.phase[mask], experts=self.experts[mask],
                     scores=sub(self.scores), router_probs=sub(self.router_probs),
                     imputed=sub(self.imputed), arrival_s=arrivals, path=self.path)

    # ------------------------------------------------------------------ validation
    def validate(self) -> "Trace":
        """Check every invariant of DESIGN §2; raise TraceError naming the first offender.

        Row numbers refer to the canonical Parquet layout: row = token_index * L + layer.
        """
        m, src = self.meta, self.path
        for name in ("num_layers", "num_experts", "top_k"):
            v = getattr(m, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise TraceError(f"must be a positive integer, got {v!r}", source=src,
                                 field=f"metadata.{name}")
        if m.top_k > m.num_experts:
            raise TraceError(f"top_k={m.top_k} exceeds num_experts={m.num_experts}",
                             source=src, field="metadata.top_k")
        if m.expert_order not in ("descending", "unordered"):
            raise TraceError(f"must be 'descending' or 'unordered', got {m.expert_order!r}",
                             source=src, field="metadata.expert_order")
        T = self.experts.shape[0] if self.experts.ndim else 0
        L, k, E = m.num_layers, m.top_k, m.num_experts
        if self.experts.ndim != 3 or self.experts.shape[1:] != (L, k):
            raise TraceError(f"expected shape (tokens, {L}, {k}), got {self.experts.shape}",
                             source=src, field="experts")
        for name in ("request_id", "token", "phase"):
            arr = getattr(self, name)
            if arr.shape != (T,):
                raise TraceError(f"expected shape ({T},), got {arr.shape}", source=src, field=name)
        if T == 0:
            raise TraceError("trace holds no tokens", source=src)

        def where(t: int, layer: int | None = None, **kw) -> dict:
            return dict(source=src, row=int(t) * L + (layer or 0), request=int(self.request_id[t]),
                        token=int(self.token[t]), layer=layer, **kw)

        # Expert ids in range and k distinct per (token, layer), in chunks of tokens and in
        # the array's own dtype, so validating a 30M-access trace needs little extra memory.
        signed = self.experts.dtype.kind == "i"
        step = max(1, 1_000_000 // max(1, L * k))
        for t0 in range(0, T, step):
            ex = self.experts[t0:t0 + step]
            bad = (ex >= E) | (ex < 0) if signed else (ex >= E)
            if bad.any():
                t, layer, slot = np.argwhere(bad)[0]
                t += t0
                raise TraceError(f"expert id {int(self.experts[t, layer, slot])} out of range [0, {E})",
                                 **where(t, int(layer), field=f"experts[{slot}]"))
            if k > 1:
                srt = np.sort(ex, axis=2)
                dup = (srt[:, :, 1:] == srt[:, :, :-1]).any(axis=2)
                if dup.any():
                    t, layer = np.argwhere(dup)[0]
                    t += t0
                    raise TraceError(f"repeats an expert: {self.experts[t, layer].tolist()}",
                                     **where(t, int(layer), field="experts"))
        if not np.isin(self.phase, (PREFILL, DECODE)).all():
            t = int(np.flatnonzero(~np.isin(self.phase, (PREFILL, DECODE)))[0])
            raise TraceError(f"phase code {int(self.phase[t])} is neither prefill nor decode",
                             **where(t, field="phase"))
        # Requests contiguous, positions increasing, prefill before decode.
        ids, starts, ends = self.request_bounds()
        if np.unique(ids).size != ids.size:
            dup_id = ids[np.flatnonzero(np.bincount(np.unique(ids, return_inverse=True)[1]) > 1)[0]]
            t = int(np.flatnonzero(self.request_id == dup_id)[0])
            raise TraceError("request's tokens are not contiguous (request appears twice)",
                             **where(t, field="request_id"))
        same_req = self.request_id[1:] == self.request_id[:-1]
        back = same_req & (self.token[1:] <= self.token[:-1])
        if back.any():
            t = int(np.flatnonzero(back)[0]) + 1
            raise TraceError(f"token position {int(self.token[t])} does not increase "
                             f"(previous {int(self.token[t - 1])})", **where(t, field="token"))
        pre_after_dec = same_req & (self.phase[1:] == PREFILL) & (self.phase[:-1] == DECODE)
        if pre_after_dec.any():
            t = int(np.flatnonzero(pre_after_dec)[0]) + 1
            raise TraceError("prefill token after a decode token of the same request",
                             **where(t, field="phase"))
        if (self.token < 0).any():
            t = int(np.flatnonzero(self.token < 0)[0])
            raise TraceError("negative token position", **where(t, field="token"))
        if self.scores is not None:
            if self.scores.shape != (T, L, k):
                raise TraceError(f"expected shape ({T}, {L}, {k}), got {self.scores.shape}",
                                 source=src, field="scores")
            step = max(1, 1_000_000 // max(1, L * k))
            for t0 in range(0, T, step):
                sc = self.scores[t0:t0 + step]
                fin = np.isfinite(sc)
                if not fin.all():
                    t, layer, slot = np.argwhere(~fin)[0]
                    raise TraceError(f"is {sc[t, layer, slot]} (scores must be finite)",
                                     **where(t + t0, int(layer), field=f"scores[{slot}]"))
                if (sc < 0).any():
                    t, layer, slot = np.argwhere(sc < 0)[0]
                    raise TraceError(f"is negative ({sc[t, layer, slot]})",
                                     **where(t + t0, int(layer), field=f"scores[{slot}]"))
                if m.expert_order == "descending" and k > 1:
                    up = sc[:, :, 1:] > sc[:, :, :-1]
                    if up.any():
                        t, layer, slot = np.argwhere(up)[0]
                        raise TraceError(
                            f"not descending ({sc[t, layer].tolist()}) while metadata.expert_order "
                            "is 'descending' (experts best first); sort them, or write "
                            "expert_order 'unordered'",
                            **where(t + t0, int(layer), field=f"scores[{slot + 1}]"))
                tot = sc.sum(axis=2, dtype=np.float64)
                over = tot > 1.0 + SCORE_SUM_TOL
                if over.any():
                    t, layer = np.argwhere(over)[0]
                    raise TraceError(
                        f"sum to {tot[t, layer]:.4g} > 1 (+{SCORE_SUM_TOL} tolerance): gate "
                        f"weights of the top-{k} experts are at most the whole softmax mass",
                        **where(t + t0, int(layer), field="scores"))
        if self.router_probs is not None:
            if self.router_probs.shape != (T, L, E):
                raise TraceError(f"expected shape ({T}, {L}, {E}), got {self.router_probs.shape}",
                                 source=src, field="router_probs")
            step = max(1, 1_000_000 // max(1, L * E))
            for t0 in range(0, T, step):
                pr = self.router_probs[t0:t0 + step]
                fin = np.isfinite(pr)
                if not fin.all():
                    t, layer, e = np.argwhere(~fin)[0]
                    raise TraceError("router probability is not finite",
                                     **where(t + t0, int(layer), field=f"router_probs[{e}]"))
                if (pr < 0).any():
                    t, layer, e = np.argwhere(pr < 0)[0]
                    raise TraceError(f"router probability is negative ({pr[t, layer, e]})",
                                     **where(t + t0, int(layer), field=f"router_probs[{e}]"))
                tot = pr.sum(axis=2, dtype=np.float64)
                off = np.abs(tot - 1.0) > PROBS_SUM_TOL
                if off.any():
                    t, layer = np.argwhere(off)[0]
                    raise TraceError(f"sum to {tot[t, layer]:.4g}, not 1 (tolerance "
                                     f"{PROBS_SUM_TOL}): not a distribution over the experts",
                                     **where(t + t0, int(layer), field="router_probs"))
        if self.imputed is not None and self.imputed.shape != (T, L):
            raise TraceError(f"expected shape ({T}, {L}), got {self.imputed.shape}",
                             source=src, field="imputed")
        if self.arrival_s is not None:
            for rid in ids.tolist():
                a = self.arrival_s.get(int(rid))
                if a is None or not np.isfinite(a) or a < 0:
                    raise TraceError(f"arrival time {a!r} must be a finite number >= 0",
                                     source=src, request=int(rid), field="arrival_s")
        return self

    def summary_line(self) -> str:
        pc = self.phase_counts()
        return (f"{self.meta.model}: {self.num_requests()} requests, {pc['prefill']} prefill + "
                f"{pc['decode']} decode tokens, {self.meta.num_layers} layers x top-"
                f"{self.meta.top_k} of {self.meta.num_experts} experts")


def make_trace(meta: TraceMeta, request_id, token, phase, experts, scores=None,
               router_probs=None, imputed=None, arrival_s=None, path="<memory>",
               validate: bool = True) -> Trace:
    """Build a trace from array-likes, normalising dtypes (and validating by default)."""
    experts = np.asarray(experts)
    ex64 = experts.astype(np.int64, copy=False)
    if validate and ((ex64 < 0).any() or (ex64 >= meta.num_experts).any()):
        # Validate before narrowing the dtype, so out-of-range ids are reported, not wrapped.
        tmp = Trace(meta=meta, request_id=np.asarray(request_id, dtype=np.int64),
                    token=np.asarray(token, dtype=np.int32), phase=np.asarray(phase, dtype=np.int8),
                    experts=ex64, path=path)
        tmp.validate()
    tr = Trace(
        meta=meta,
        request_id=np.asarray(request_id, dtype=np.int64),
        token=np.asarray(token, dtype=np.int32),
        phase=np.asarray(phase, dtype=np.int8),
        experts=ex64.astype(expert_dtype(meta.num_experts)),
        scores=None if scores is None else np.asarray(scores, dtype=np.float32),
        router_probs=None if router_probs is None else np.asarray(router_probs),
        imputed=None if imputed is None else np.asarray(imputed, dtype=bool),
        arrival_s=None if arrival_s is None else {int(k): float(v) for k, v in arrival_s.items()},
        path=path,
    )
    return tr.validate() if validate else tr


# JSON has no infinity or NaN (Python's json writes the non-standard tokens Infinity/NaN that
# other readers reject): non-finite floats in the metadata are written as these strings and
# read back as the floats.
_NONFINITE = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def _encode_nonfinite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _encode_nonfinite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode_nonfinite(v) for v in x]
    if isinstance(x, (float, np.floating)) and not np.isfinite(x):
        return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, np.generic):
        return x.item()
    return x


def decode_nonfinite(x: Any) -> Any:
    """Inverse of the writer's encoding of non-finite floats (strings back to floats)."""
    if isinstance(x, dict):
        return {k: decode_nonfinite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [decode_nonfinite(v) for v in x]
    if isinstance(x, str) and x in _NONFINITE:
        return _NONFINITE[x]
    return x


def meta_bytes(meta: TraceMeta, requests: list[int], arrival_s: dict[int, float] | None) -> bytes:
    """The metadata as strict JSON (``allow_nan=False``; non-finite floats as strings)."""
    data = {"schema_version": SCHEMA_VERSION, **meta.to_json(), "requests": list(map(int, requests))}
    if arrival_s is not None:
        data["arrival_s"] = [float(arrival_s[r]) for r in requests]
    return json.dumps(_encode_nonfinite(data), allow_nan=False).encode()
