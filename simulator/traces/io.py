"""Canonical Parquet form of a routing trace (read, write, stream-write).

Layout: one row per (request, token, MoE layer), sorted by request order, token, layer::

    request_id int64 | token int32 | phase dictionary<int8,string> | layer int16 |
    experts fixed_size_list<uint8|uint16>[k] | scores fixed_size_list<float32>[k]? |
    router_probs fixed_size_list<float16|float32>[E]? | imputed bool?

Trace metadata (model, num_layers, num_experts, top_k, source, expert_order, notes, request
ids and optional arrival times) is JSON under the key ``moesim.trace`` of the file's key-value
metadata. Reading goes row group by row group into preallocated dense arrays, so peak memory
stays near the size of the in-memory trace.

Reading uses pyarrow.parquet only: column data reaches numpy through the Arrow buffers
(:func:`_np`), not ``Array.to_numpy``/``flatten``, which import pandas and pyarrow.compute
(about 0.5 s of start-up that ``moesim run`` does not need). Errors may take slower paths.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import TraceError
from .schema import (DECODE, METADATA_KEY, PHASE_NAMES, PREFILL, Trace, TraceMeta,
                     decode_nonfinite, expert_dtype, meta_bytes)



@functools.lru_cache(maxsize=None)
def _phase_dict() -> pa.Array:
    # built on first write: pa.array imports pandas, which reading a trace never needs
    return pa.array(list(PHASE_NAMES), type=pa.string())


def _np(arr: pa.Array) -> np.ndarray:
    """A fixed-width Arrow array without nulls as a numpy array (a view where possible).

    Reads the data buffer directly: ``Array.to_numpy`` would import pandas (and
    pyarrow.compute) on first use. Booleans are bit-packed and are unpacked."""
    n, off = len(arr), arr.offset
    buf = arr.buffers()[1]
    if pa.types.is_boolean(arr.type):
        if buf is None or n == 0:
            return np.zeros(n, dtype=bool)
        bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
        return bits[off:off + n].astype(bool)
    dt = np.dtype(arr.type.to_pandas_dtype())
    if buf is None or n == 0:
        return np.zeros(n, dtype=dt)
    return np.frombuffer(buf, dtype=dt, count=off + n)[off:]


def _list_values(arr: pa.Array) -> pa.Array:
    """The child values of a list array's rows (what ``flatten`` returns, for fixed-size
    lists without importing pyarrow.compute)."""
    if pa.types.is_fixed_size_list(arr.type):
        w = arr.type.list_size
        return arr.values.slice(arr.offset * w, len(arr) * w)
    return arr.flatten()


def _arrow_schema(meta: TraceMeta, has_scores: bool, probs_dtype, has_imputed: bool,
                  requests: list[int], arrival_s) -> pa.Schema:
    k, E = meta.top_k, meta.num_experts
    ex_type = pa.from_numpy_dtype(expert_dtype(E))
    fields = [
        pa.field("request_id", pa.int64()),
        pa.field("token", pa.int32()),
        pa.field("phase", pa.dictionary(pa.int8(), pa.string())),
        pa.field("layer", pa.int16()),
        pa.field("experts", pa.list_(ex_type, k)),
    ]
    if has_scores:
        fields.append(pa.field("scores", pa.list_(pa.float32(), k)))
    if probs_dtype is not None:
        fields.append(pa.field("router_probs", pa.list_(pa.from_numpy_dtype(probs_dtype), E)))
    if has_imputed:
        fields.append(pa.field("imputed", pa.bool_()))
    return pa.schema(fields, metadata={METADATA_KEY: meta_bytes(meta, requests, arrival_s)})


def _token_block_table(schema: pa.Schema, meta: TraceMeta, request_id, token, phase, experts,
                       scores, router_probs, imputed) -> pa.Table:
    """Arrow table for a block of whole tokens (rows = tokens x layers)."""
    T = experts.shape[0]
    L, k, E = meta.num_layers, meta.top_k, meta.num_experts
    rep = np.repeat
    cols = {
        "request_id": pa.array(rep(np.asarray(request_id, np.int64), L)),
        "token": pa.array(rep(np.asarray(token, np.int32), L)),
        "phase": pa.DictionaryArray.from_arrays(pa.array(rep(np.asarray(phase, np.int8), L)),
                                                _phase_dict()),
        "layer": pa.array(np.tile(np.arange(L, dtype=np.int16), T)),
        "experts": pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(experts, dtype=expert_dtype(E)).reshape(-1)), k),
    }
    if "scores" in schema.names:
        cols["scores"] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(scores, dtype=np.float32).reshape(-1)), k)
    if "router_probs" in schema.names:
        dt = schema.field("router_probs").type.value_type.to_pandas_dtype()
        cols["router_probs"] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(router_probs, dtype=dt).reshape(-1)), E)
    if "imputed" in schema.names:
        cols["imputed"] = pa.array(np.asarray(imputed, dtype=bool).reshape(-1))
    return pa.Table.from_pydict(cols, schema=schema)


class TraceWriter:
    """Stream a trace to Parquet block by block (bounded memory for long synthetic traces).

    The metadata, including every request id (and arrival time), is fixed when the writer is
    opened. Blocks must hold whole tokens, in canonical order.
    """

    def __init__(self, path: str | os.PathLike, meta: TraceMeta, requests: list[int], *,
                 arrival_s: dict[int, float] | None = None, has_scores: bool = False,
                 probs_dtype=None, has_imputed: bool = False, row_group_tokens: int = 8192):
        self.path = Path(path)
        self.meta = meta
        self.schema = _arrow_schema(meta, has_scores, None if probs_dtype is None
                                    else np.dtype(probs_dtype), has_imputed, requests, arrival_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema, compression="zstd")
        self.row_group_rows = max(1, row_group_tokens) * meta.num_layers
        self.tokens_written = 0

    def write(self, request_id, token, phase, experts, scores=None, router_probs=None,
              imputed=None) -> None:
        table = _token_block_table(self.schema, self.meta, request_id, token, phase, experts,
                                   scores, router_probs, imputed)
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        self.tokens_written += int(np.asarray(experts).shape[0])

    def close(self) -> None:
        """Finish the file and move it into place atomically (no half-written traces)."""
        self._writer.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_trace(trace: Trace, path: str | os.PathLike, *, block_tokens: int = 8192) -> Path:
    """Write ``trace`` to canonical Parquet (atomically)."""
    ids, _, _ = trace.request_bounds()
    probs_dtype = None if trace.router_probs is None else trace.router_probs.dtype
    with TraceWriter(path, trace.meta, ids.tolist(), arrival_s=trace.arrival_s,
                     has_scores=trace.scores is not None, probs_dtype=probs_dtype,
                     has_imputed=trace.imputed is not None,
                     row_group_tokens=block_tokens) as w:
        for s in range(0, trace.num_tokens, block_tokens):
            e = min(s + block_tokens, trace.num_tokens)
            w.write(trace.request_id[s:e], trace.token[s:e], trace.phase[s:e],
                    trace.experts[s:e],
                    None if trace.scores is None else trace.scores[s:e],
                    None if trace.router_probs is None else trace.router_probs[s:e],
                    None if trace.imputed is None else trace.imputed[s:e])
    return Path(path)


def read_trace_meta(path: str | os.PathLike) -> tuple[TraceMeta, dict, pq.ParquetFile]:
    src = str(path)
    if not Path(path).exists():
        raise TraceError("file not found", source=src)
    try:
        pf = pq.ParquetFile(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceError(f"not a readable Parquet trace (truncated or corrupt?): {exc}",
                         source=src) from None
    raw = (pf.schema_arrow.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise TraceError("no 'moesim.trace' metadata: not a canonical moesim trace "
                         "(convert it with `moesim trace import`)", source=src, field="metadata")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"metadata is not valid JSON: {exc}", source=src, field="metadata") from None
    if isinstance(data, dict) and isinstance(data.get("notes"), dict):
        data["notes"] = decode_nonfinite(data["notes"])
    meta = TraceMeta.from_json(data, src)
    _check_request_list(data, src)
    return meta, data, pf


def _check_request_list(data: dict, src: str) -> None:
    """``requests`` (ids) and ``arrival_s`` (seconds or null, one per id) of the metadata."""
    reqs = data.get("requests")
    if reqs is not None:
        if not isinstance(reqs, list):
            raise TraceError(f"must be a list of request ids, got {type(reqs).__name__}",
                             source=src, field="metadata.requests")
        for i, r in enumerate(reqs):
            if isinstance(r, bool) or not isinstance(r, int):
                raise TraceError(f"must be an integer request id, got {r!r}", source=src,
                                 field=f"metadata.requests[{i}]")
    arr = data.get("arrival_s")
    if arr is not None:
        if not isinstance(arr, list):
            raise TraceError(f"must be a list of seconds, got {type(arr).__name__}",
                             source=src, field="metadata.arrival_s")
        for i, a in enumerate(arr):
            if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float))):
                rid = reqs[i] if isinstance(reqs, list) and i < len(reqs) else "?"
                raise TraceError(f"must be a number of seconds (or null), got {a!r} "
                                 f"(request {rid})", source=src, field=f"metadata.arrival_s[{i}]")


def read_trace(path: str | os.PathLike, *, validate: bool = True) -> Trace:
    """Load and validate a canonical Parquet trace into dense arrays."""
    src = str(path)
    meta, data, pf = read_trace_meta(path)
    L, k, E = int(meta.num_layers), int(meta.top_k), int(meta.num_experts)
    names = set(pf.schema_arrow.names)
    for col in ("request_id", "token", "phase", "layer", "experts"):
        if col not in names:
            raise TraceError("required column is missing", source=src, field=col)
    n_rows = pf.metadata.num_rows
    if n_rows % L:
        _locate_missing_layer(pf, src, L)
        raise TraceError(f"{n_rows} rows is not a multiple of num_layers={L}: a layer is missing "
                         "for some token (or the file is truncated)", source=src, field="layer")
    T = n_rows // L
    experts = np.empty((T, L, k), dtype=expert_dtype(E))
    request_id = np.empty(T, dtype=np.int64)
    token = np.empty(T, dtype=np.int32)
    phase = np.empty(T, dtype=np.int8)
    scores = np.empty((T, L, k), dtype=np.float32) if "scores" in names else None
    probs = None
    if "router_probs" in names:
        pdt = pf.schema_arrow.field("router_probs").type.value_type.to_pandas_dtype()
        probs = np.empty((T, L, E), dtype=pdt)
    imputed = np.empty((T, L), dtype=bool) if "imputed" in names else None
    layer_pattern = np.arange(L, dtype=np.int16)

    # Row groups written by moesim hold whole tokens; a foreign file whose groups split a
    # token is read in one piece instead.
    aligned = all(pf.metadata.row_group(i).num_rows % L == 0 for i in range(pf.num_row_groups))
    blocks = (range(pf.num_row_groups) if aligned else [None])
    row0 = 0
    try:
        for rg in blocks:
            tab = pf.read() if rg is None else pf.read_row_group(rg)
            n = tab.num_rows
            t0, t1 = row0 // L, (row0 + n) // L
            _fill_block(tab, src, row0, L, k, E, layer_pattern,
                        request_id[t0:t1], token[t0:t1], phase[t0:t1], experts[t0:t1],
                        None if scores is None else scores[t0:t1],
                        None if probs is None else probs[t0:t1],
                        None if imputed is None else imputed[t0:t1])
            row0 += n
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceError(f"cannot read row data (truncated or corrupt?): {exc}",
                         source=src) from None
    arrivals = None
    if data.get("arrival_s") is not None:
        reqs = data.get("requests") or []
        if len(reqs) != len(data["arrival_s"]):
            raise TraceError("metadata 'requests' and 'arrival_s' differ in length", source=src,
                             field="metadata.arrival_s")
        arrivals = {int(r): float(a) if a is not None else float("nan")
                    for r, a in zip(reqs, data["arrival_s"])}
    tr = Trace(meta=meta, request_id=request_id, token=token, phase=phase, experts=experts,
               scores=scores, router_probs=probs, imputed=imputed, arrival_s=arrivals, path=src)
    # Arrow's allocator keeps freed decode buffers; hand them back so a loaded trace costs
    # about its own arrays (benchmarks/bench_replay.py measures this).
    pa.default_memory_pool().release_unused()
    return tr.validate() if validate else tr


def _fill_block(tab: pa.Table, src: str, row0: int, L: int, k: int, E: int, layer_pattern,
                request_id, token, phase, experts, scores, probs, imputed) -> None:
    n = tab.num_rows
    T = n // L

    def col_np(name, dtype=None):
        arr = tab.column(name).combine_chunks()
        if arr.null_count:
            bad = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
            raise TraceError("is null", source=src, row=row0 + bad, field=name)
        return arr

    # Column types as strict as the importers: a float expert id or token position would be
    # truncated, a string request id parsed, by the numpy assignments below.
    for name in ("request_id", "token", "layer"):
        tp = tab.schema.field(name).type
        if not pa.types.is_integer(tp):
            raise TraceError(f"must be an integer column, got {tp}", source=src, field=name)
    for name, pred, what in (("experts", pa.types.is_integer, "integer expert ids"),
                             ("scores", pa.types.is_floating, "floats"),
                             ("router_probs", pa.types.is_floating, "floats")):
        if name not in tab.schema.names:
            continue
        tp = tab.schema.field(name).type
        if not (pa.types.is_fixed_size_list(tp) or pa.types.is_list(tp)
                or pa.types.is_large_list(tp)):
            raise TraceError(f"must be a list of {what}, got {tp}", source=src, field=name)
        if not pred(tp.value_type):
            vals = tab.column(name).combine_chunks()
            msg = f"must be a list of {what}, got {tp}"
            if name == "experts" and pa.types.is_floating(tp.value_type):
                flat = vals.flatten().to_numpy(zero_copy_only=False)
                frac = ~np.isfinite(flat) | (flat != np.round(flat))
                if frac.any():
                    i = int(np.flatnonzero(frac)[0])
                    kk = tp.list_size if pa.types.is_fixed_size_list(tp) else k
                    raise TraceError(f"expert id {flat[i]} is not an integer ({msg})",
                                     source=src, row=row0 + i // kk, field=f"experts[{i % kk}]")
            raise TraceError(msg, source=src, field=name)
        inner = _list_values(col_np(name))
        if inner.null_count:
            i = int(np.flatnonzero(np.asarray(inner.is_null()))[0])
            width = tp.list_size if pa.types.is_fixed_size_list(tp) else max(1, k)
            raise TraceError("holds a null value", source=src, row=row0 + i // width,
                             field=f"{name}[{i % width}]")
    if "imputed" in tab.schema.names and not pa.types.is_boolean(tab.schema.field("imputed").type):
        raise TraceError(f"must be a boolean column, got {tab.schema.field('imputed').type}",
                         source=src, field="imputed")

    layer = _np(col_np("layer")).reshape(T, L)
    if not (layer == layer_pattern).all():
        t, l_ = np.argwhere(layer != layer_pattern)[0]
        raise TraceError(f"expected layer {l_}, found layer {int(layer[t, l_])} "
                         f"(a layer is missing or rows are out of order)",
                         source=src, row=row0 + int(t) * L + int(l_), field="layer")
    rid = _np(col_np("request_id")).reshape(T, L)
    tok = _np(col_np("token")).reshape(T, L)
    ph_arr = col_np("phase")
    if pa.types.is_dictionary(ph_arr.type):
        dict_vals = ph_arr.dictionary.to_pylist()
        codes = np.asarray(_np(ph_arr.indices), dtype=np.int64)
        lut = np.array([PHASE_NAMES.index(v) if v in PHASE_NAMES else -1 for v in dict_vals],
                       dtype=np.int8)
        ph = lut[codes]
    else:
        vals = np.asarray(ph_arr.to_pylist(), dtype=object)
        ph = np.full(vals.shape, -1, dtype=np.int8)
        ph[vals == "prefill"], ph[vals == "decode"] = PREFILL, DECODE
    if (ph < 0).any():
        bad = int(np.flatnonzero(ph < 0)[0])
        raise TraceError("must be 'prefill' or 'decode'", source=src, row=row0 + bad,
                         field="phase")
    ph = ph.reshape(T, L)
    for name, arr in (("request_id", rid), ("token", tok), ("phase", ph)):
        diff = (arr != arr[:, :1]).any(axis=1)
        if diff.any():
            t = int(np.flatnonzero(diff)[0])
            raise TraceError("differs between the layers of one token (rows out of order?)",
                             source=src, row=row0 + t * L, field=name)
    request_id[:], token[:], phase[:] = rid[:, 0], tok[:, 0], ph[:, 0]

    ex = col_np("experts")
    if not pa.types.is_fixed_size_list(ex.type) or ex.type.list_size != k:
        raise TraceError(f"expected a fixed-size list of top_k={k} ids, got {ex.type}",
                         source=src, field="experts")
    ex_vals = _np(_list_values(ex))
    bad = (ex_vals >= E) | (ex_vals < 0) if ex_vals.dtype.kind == "i" else (ex_vals >= E)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        r = i // k
        raise TraceError(f"expert id {int(ex_vals[i])} out of range [0, {E})", source=src,
                         row=row0 + r, request=int(rid.reshape(-1)[r]), token=int(tok.reshape(-1)[r]),
                         layer=r % L, field=f"experts[{i % k}]")
    experts[:] = ex_vals.reshape(T, L, k)
    if scores is not None:
        sc = col_np("scores")
        if not pa.types.is_fixed_size_list(sc.type) or sc.type.list_size != k:
            raise TraceError(f"expected a fixed-size list of {k} floats, got {sc.type}",
                             source=src, field="scores")
        scores[:] = _np(_list_values(sc)).reshape(T, L, k)
    if probs is not None:
        pr = col_np("router_probs")
        if not pa.types.is_fixed_size_list(pr.type) or pr.type.list_size != E:
            raise TraceError(f"expected a fixed-size list of num_experts={E} floats, got {pr.type}",
                             source=src, field="router_probs")
        probs[:] = _np(_list_values(pr)).reshape(T, L, E)
    if imputed is not None:
        imputed[:] = _np(col_np("imputed")).reshape(T, L)


def _locate_missing_layer(pf: pq.ParquetFile, src: str, L: int) -> None:
    """Raise a TraceError at the first (request, token) whose layers are not 0..L-1."""
    try:
        tab = pf.read(columns=["request_id", "token", "layer"])
    except (pa.ArrowInvalid, OSError):
        return
    rid = tab.column("request_id").to_numpy()
    tok = tab.column("token").to_numpy()
    lay = tab.column("layer").to_numpy().astype(np.int64)
    new_tok = np.ones(rid.size, dtype=bool)
    new_tok[1:] = (rid[1:] != rid[:-1]) | (tok[1:] != tok[:-1])
    starts = np.flatnonzero(new_tok)
    expected = np.arange(rid.size) - np.repeat(starts, np.diff(np.append(starts, rid.size)))
    bad = np.flatnonzero(lay != expected)
    sizes = np.diff(np.append(starts, rid.size))
    if bad.size:
        r = int(bad[0])
        raise TraceError(f"expected layer {int(expected[r])}, found layer {int(lay[r])} "
                         f"(layer {int(expected[r])} of this token is missing)", source=src,
                         row=r, request=int(rid[r]), token=int(tok[r]), field="layer")
    short = np.flatnonzero(sizes != L)
    if short.size:
        r = int(starts[short[0]])
        raise TraceError(f"token has {int(sizes[short[0]])} layers, expected {L} "
                         f"(layers {int(sizes[short[0]])}..{L - 1} are missing)", source=src,
                         row=r, request=int(rid[r]), token=int(tok[r]), field="layer")
