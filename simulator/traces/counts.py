"""Aggregate per-expert routing counts: the form of sources that are not per-token traces.

Some public routing data (the OLMoE routing analysis) only hold histograms: how often each expert
was chosen at a few layers, per text domain, and how often pairs of experts were chosen at two
layers for the same token. They cannot drive the simulator token by token, but they give real
expert-popularity distributions (for a synthetic generator, or to check a trace against).

:class:`ExpertCounts` holds them as dense int64 arrays:

* ``counts[domain]``          (n_layers, E): times expert e was in a token's top-k at layer i;
* ``top1[domain]``            (n_layers, E): the same, counting only each token's top-1 choice;
* ``crosslayer[domain]``      (n_pairs, E, E): times (e at layer a, f at layer b) were chosen for
  the same token, slot by slot (the i-th choice at a with the i-th choice at b);
* ``crosslayer_top1[domain]`` (n_pairs, E, E): the same for the top-1 choices only.

``model_layers`` are the *original* layer indices of the model (e.g. 0, 7, 15), ``layer_pairs``
the original indices of each cross-layer pair. Any of the optional families may be absent or
hold only some domains.

Canonical on-disk form: Parquet, one row per non-zero cell (kind, domain, layer, layer_b,
expert, expert_b, count), with the metadata as JSON under the key ``moesim.counts`` of the
file's key-value metadata (like the trace's ``moesim.trace``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import TraceError
from ..serialize import atomic_write

COUNTS_METADATA_KEY = b"moesim.counts"
COUNTS_SCHEMA_VERSION = 1
KINDS = ("counts", "top1", "crosslayer", "crosslayer_top1")


@dataclass
class ExpertCounts:
    model: str
    source: str
    model_layers: list[int]
    num_experts: int
    top_k: int
    counts: dict[str, np.ndarray]
    top1: dict[str, np.ndarray] | None = None
    crosslayer: dict[str, np.ndarray] | None = None
    crosslayer_top1: dict[str, np.ndarray] | None = None
    layer_pairs: list[tuple[int, int]] = field(default_factory=list)
    # Number of MoE layers of the whole model (the counts cover only ``model_layers``).
    model_num_layers: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    path: str = "<memory>"

    # ------------------------------------------------------------------ access
    @property
    def domains(self) -> list[str]:
        return list(self.counts)

    def family(self, kind: str) -> dict[str, np.ndarray] | None:
        if kind not in KINDS:
            raise KeyError(kind)
        return getattr(self, kind)

    def selections_per_layer(self, domain: str | None = None) -> np.ndarray:
        """(n_layers,) total top-k selections per recorded layer (all domains if None)."""
        return self._summed(domain).sum(axis=1)

    def tokens(self, domain: str) -> int:
        """Tokens counted for a domain (selections of the first layer / top_k)."""
        return int(self.counts[domain][0].sum()) // self.top_k

    def _summed(self, domain: str | None) -> np.ndarray:
        if domain is None:
            return np.sum(np.stack(list(self.counts.values())), axis=0)
        if domain not in self.counts:
            raise TraceError(f"unknown domain {domain!r}; domains: {', '.join(self.counts)}",
                             source=self.path, field="domain")
        return self.counts[domain]

    def popularity(self, domain: str | None = None) -> np.ndarray:
        """(n_layers, E) float64: per recorded layer, the probability that a selection goes to
        each expert (rows sum to 1). ``domain=None`` pools all domains."""
        c = self._summed(domain).astype(np.float64)
        tot = c.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(tot > 0, c / np.where(tot > 0, tot, 1), 0.0)
        return p

    # ------------------------------------------------------------------ validation
    def validate(self) -> "ExpertCounts":
        src = self.path
        n, E = len(self.model_layers), self.num_experts
        if not self.counts:
            raise TraceError("holds no domain", source=src, field="counts")
        if self.top_k < 1 or E < 1 or self.top_k > E:
            raise TraceError(f"bad top_k={self.top_k} / num_experts={E}", source=src,
                             field="metadata")
        for kind in KINDS:
            fam = self.family(kind)
            if fam is None:
                continue
            shape = (n, E) if kind in ("counts", "top1") else (len(self.layer_pairs), E, E)
            for dom, arr in fam.items():
                if not isinstance(arr, np.ndarray) or arr.shape != shape:
                    raise TraceError(f"expected shape {shape}, got "
                                     f"{getattr(arr, 'shape', type(arr).__name__)}",
                                     source=src, field=f"{kind}[{dom}]")
                if arr.dtype != np.int64:
                    fam[dom] = arr = arr.astype(np.int64)
                if (arr < 0).any():
                    raise TraceError("holds a negative count", source=src, field=f"{kind}[{dom}]")
        for a, b in self.layer_pairs:
            if a not in self.model_layers or b not in self.model_layers:
                raise TraceError(f"layer pair ({a}, {b}) is not among the recorded layers "
                                 f"{self.model_layers}", source=src, field="layer_pairs")
        return self

    def metadata(self) -> dict[str, Any]:
        return {
            "schema_version": COUNTS_SCHEMA_VERSION,
            "model": self.model, "source": self.source,
            "model_layers": [int(x) for x in self.model_layers],
            "model_num_layers": self.model_num_layers,
            "num_experts": int(self.num_experts), "top_k": int(self.top_k),
            "layer_pairs": [[int(a), int(b)] for a, b in self.layer_pairs],
            "domains": {kind: list(fam) for kind in KINDS
                        if (fam := self.family(kind)) is not None},
            "notes": self.notes,
        }


# ---------------------------------------------------------------------- Parquet I/O
def _schema(meta: dict) -> pa.Schema:
    return pa.schema([
        pa.field("kind", pa.dictionary(pa.int8(), pa.string())),
        pa.field("domain", pa.dictionary(pa.int16(), pa.string())),
        pa.field("layer", pa.int16()),      # original model layer (first layer of a pair)
        pa.field("layer_b", pa.int16()),    # second layer of a pair, -1 for per-layer counts
        pa.field("expert", pa.int32()),
        pa.field("expert_b", pa.int32()),   # expert at layer_b, -1 for per-layer counts
        pa.field("count", pa.int64()),
    ], metadata={COUNTS_METADATA_KEY: json.dumps(meta).encode()})


def write_counts(counts: ExpertCounts, path: str | os.PathLike) -> Path:
    """Write counts to Parquet (non-zero cells only), atomically."""
    counts.validate()
    meta = counts.metadata()
    cols: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("kind", "domain", "layer", "layer_b", "expert",
                                           "expert_b", "count")}
    kinds: list[str] = []
    domains: list[str] = []
    layers = np.asarray(counts.model_layers, dtype=np.int16)
    pairs = np.asarray(counts.layer_pairs, dtype=np.int16).reshape(-1, 2)
    for kind in KINDS:
        fam = counts.family(kind)
        if fam is None:
            continue
        for dom, arr in fam.items():
            idx = np.nonzero(arr)
            n = idx[0].size
            if kind not in kinds:
                kinds.append(kind)
            if dom not in domains:
                domains.append(dom)
            cols["kind"].append(np.full(n, kinds.index(kind), np.int8))
            cols["domain"].append(np.full(n, domains.index(dom), np.int16))
            if arr.ndim == 2:
                cols["layer"].append(layers[idx[0]])
                cols["layer_b"].append(np.full(n, -1, np.int16))
                cols["expert"].append(idx[1].astype(np.int32))
                cols["expert_b"].append(np.full(n, -1, np.int32))
            else:
                cols["layer"].append(pairs[idx[0], 0])
                cols["layer_b"].append(pairs[idx[0], 1])
                cols["expert"].append(idx[1].astype(np.int32))
                cols["expert_b"].append(idx[2].astype(np.int32))
            cols["count"].append(arr[idx].astype(np.int64))
    cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
    schema = _schema(meta)
    table = pa.Table.from_pydict({
        "kind": pa.DictionaryArray.from_arrays(pa.array(cat["kind"].astype(np.int8)),
                                               pa.array(kinds, pa.string())),
        "domain": pa.DictionaryArray.from_arrays(pa.array(cat["domain"].astype(np.int16)),
                                                 pa.array(domains, pa.string())),
        "layer": pa.array(cat["layer"].astype(np.int16)),
        "layer_b": pa.array(cat["layer_b"].astype(np.int16)),
        "expert": pa.array(cat["expert"].astype(np.int32)),
        "expert_b": pa.array(cat["expert_b"].astype(np.int32)),
        "count": pa.array(cat["count"].astype(np.int64)),
    }, schema=schema)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: pq.write_table(table, str(tmp), compression="zstd"))


def read_counts(path: str | os.PathLike) -> ExpertCounts:
    """Read counts written by :func:`write_counts` (validates)."""
    src = str(path)
    if not Path(path).exists():
        raise TraceError("file not found", source=src)
    try:
        table = pq.read_table(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TraceError(f"not a readable Parquet file: {exc}", source=src) from None
    raw = (table.schema.metadata or {}).get(COUNTS_METADATA_KEY)
    if raw is None:
        raise TraceError("no 'moesim.counts' metadata: not a moesim expert-counts file",
                         source=src, field="metadata")
    try:
        meta = json.loads(raw)
        layers = [int(x) for x in meta["model_layers"]]
        E, k = int(meta["num_experts"]), int(meta["top_k"])
        pairs = [(int(a), int(b)) for a, b in meta.get("layer_pairs", [])]
        domains = {kind: list(v) for kind, v in meta["domains"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"metadata is malformed ({type(exc).__name__}: {exc})", source=src,
                         field="metadata") from None
    for col in ("kind", "domain", "layer", "layer_b", "expert", "expert_b", "count"):
        if col not in table.column_names:
            raise TraceError("required column is missing", source=src, field=col)

    def np_col(name):
        return np.asarray(table.column(name).combine_chunks().to_numpy(zero_copy_only=False))

    kind = np.asarray(table.column("kind").to_pylist(), dtype=object)
    dom = np.asarray(table.column("domain").to_pylist(), dtype=object)
    layer, layer_b = np_col("layer"), np_col("layer_b")
    ex, ex_b, cnt = np_col("expert"), np_col("expert_b"), np_col("count")
    if ((ex < 0) | (ex >= E)).any():
        r = int(np.flatnonzero((ex < 0) | (ex >= E))[0])
        raise TraceError(f"expert {int(ex[r])} out of range [0, {E})", source=src, row=r,
                         field="expert")
    lidx = {l_: i for i, l_ in enumerate(layers)}
    pidx = {p: i for i, p in enumerate(pairs)}
    fams: dict[str, dict[str, np.ndarray]] = {}
    for kd, doms in domains.items():
        if kd not in KINDS:
            raise TraceError(f"unknown kind {kd!r}", source=src, field="metadata.domains")
        fams[kd] = {}
        for d in doms:
            sel = (kind == kd) & (dom == d)
            if kd in ("counts", "top1"):
                arr = np.zeros((len(layers), E), np.int64)
                try:
                    li = np.array([lidx[int(x)] for x in layer[sel]], dtype=np.int64)
                except KeyError as exc:
                    raise TraceError(f"layer {exc.args[0]} is not among {layers}", source=src,
                                     field="layer") from None
                arr[li, ex[sel]] = cnt[sel]
            else:
                arr = np.zeros((len(pairs), E, E), np.int64)
                try:
                    pi = np.array([pidx[(int(a), int(b))] for a, b in zip(layer[sel], layer_b[sel])],
                                  dtype=np.int64)
                except KeyError as exc:
                    raise TraceError(f"layer pair {exc.args[0]} is not among {pairs}",
                                     source=src, field="layer_b") from None
                eb = ex_b[sel]
                if ((eb < 0) | (eb >= E)).any():
                    raise TraceError("expert_b out of range", source=src, field="expert_b")
                arr[pi, ex[sel], eb] = cnt[sel]
            fams[kd][d] = arr
    if "counts" not in fams:
        raise TraceError("no per-layer counts", source=src, field="kind")
    return ExpertCounts(model=meta.get("model", "unknown"), source=meta.get("source", "unknown"),
                        model_layers=layers, num_experts=E, top_k=k, counts=fams["counts"],
                        top1=fams.get("top1"), crosslayer=fams.get("crosslayer"),
                        crosslayer_top1=fams.get("crosslayer_top1"), layer_pairs=pairs,
                        model_num_layers=meta.get("model_num_layers"),
                        notes=meta.get("notes") or {}, path=src).validate()
