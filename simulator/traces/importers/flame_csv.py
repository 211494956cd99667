"""``flame-csv``: FLAME-MoE-290M routing samples (Akash-N-Pai/DynaNDE-Simulator CSVs).

Each CSV holds one MoE layer (the layer is in the ``Layer_N`` folder and the file name; the
``layer_id`` column is always 0): header ``layer_id,token_id,expert_0..expert_63``, one row per
token, the router softmax score of the 6 chosen experts and 0 elsewhere.

Accepted inputs:

* an **encoder batch** folder: ``Layer_{2..9}/*.csv``, 2,048 contiguous tokens of the training
  stream. They become requests of ``request_tokens`` tokens (default 2048 = one request;
  upstream's artificial split is ``request_tokens=64``).
* a **decoder batch** folder: ``{1st..10th}/Layer_{2..9}/*.csv``; row c of the p-th folder is
  position p-1 of chunk c. Each of the 64 chunks becomes a request of 10 tokens (positions 0..9).
* the parent folder holding both (``Encoder_*`` and ``Decoder_*``): encoder requests first, then
  the decoder chunks (``batch=encoder|decoder`` picks one).

The routing is teacher-forced on pretraining text (no generation): every token gets
``phase=prefill`` by default (option ``phase``). Experts are the 6 non-zero columns sorted by
descending score; scores are those softmax values (over 64 experts, not renormalised). Only the
top-6 is known, so there are no router_probs. Model layers 2..9 become MoE layers 0..7; layer
folders outside that range (upstream pads the model to 25 layers with copies) are ignored and
reported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError, TraceError
from ..schema import DECODE, PREFILL, TraceMeta, make_trace
from ...config.strict import field
from . import IMPORTERS, Importer, ImportResult

REPO = "Akash-N-Pai/DynaNDE-Simulator"
COMMIT = "f274466b9095e0b417f701a3ef3a14a6639b6aed"
ORDINALS = {"1st": 0, "2nd": 1, "3rd": 2, **{f"{i}th": i - 1 for i in range(4, 21)},
            "21st": 20, "22nd": 21, "23rd": 22}
LAYER_DIR = re.compile(r"^Layer_(\d+)$")
FILE_LAYER = re.compile(r"_layer(\d+)_")
CHUNK_SHAPE = re.compile(r"_(\d+)x(\d+)\.csv$")


def _layer_dirs(folder: Path) -> dict[int, Path]:
    out = {}
    for d in folder.iterdir():
        m = LAYER_DIR.match(d.name)
        if m and d.is_dir():
            out[int(m.group(1))] = d
    return out


def _kind(folder: Path) -> str | None:
    """'encoder' (Layer_N/ inside), 'decoder' (ordinal/Layer_N/ inside), 'both' or None."""
    try:
        if not folder.is_dir():
            return None
        if _layer_dirs(folder):
            return "encoder"
        subs = [d for d in folder.iterdir() if d.is_dir()]
        if any(d.name in ORDINALS and _layer_dirs(d) for d in subs):
            return "decoder"
        kinds = {_kind(d) for d in subs if d.name.lower().startswith(("encoder", "decoder"))}
        if kinds & {"encoder", "decoder"}:
            return "both"
    except OSError:
        return None
    return None


@IMPORTERS.register("flame-csv")
class FlameCsv(Importer):
    description = ("FLAME-MoE-290M teacher-forced routing CSVs (DynaNDE-Simulator sample traces: "
                   "encoder batch, decoder batch, or their parent folder)")

    @dataclass(frozen=True)
    class Options:
        request_tokens: int = field(2048, min=1, help='encoder batch: tokens per request')
        phase: str = field("prefill", choices=("prefill", "decode"),
                           help='phase label for every token (no generation happened)')
        batch: str = field("auto", choices=("auto", "encoder", "decoder"),
                           help='parent folder: auto (both) | encoder | decoder')
        first_moe_layer: int = field(2, min=0, help='model layer of MoE layer 0')
        num_layers: int = field(8, min=1, help='MoE layers in the files (FLAME-MoE-290M: 8)')
        num_experts: int = field(64, min=1, help='routed experts per layer')
        top_k: int = field(6, min=1, help='experts per token (non-zeros per row)')

    @classmethod
    def detect(cls, path: Path) -> bool:
        return _kind(Path(path)) is not None

    # ------------------------------------------------------------------ reading
    @classmethod
    def _read_csv(cls, f: Path, opts) -> tuple[np.ndarray, np.ndarray]:
        """(experts (n, k) int64, scores (n, k) float32) of one layer file, validated."""
        src, E, k = str(f), opts.num_experts, opts.top_k
        try:
            with open(f, encoding="utf-8") as fh:
                header = fh.readline().strip().split(",")
                expected = ["layer_id", "token_id"] + [f"expert_{e}" for e in range(E)]
                if header != expected:
                    raise TraceError(f"header is not layer_id,token_id,expert_0..expert_{E - 1} "
                                     f"(got {len(header)} columns starting {header[:3]})",
                                     source=src, row=1, field="header")
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TraceError(f"cannot read: {exc}", source=src) from None
        lines = [ln for ln in lines if ln.strip()]
        if not lines:
            raise TraceError("holds no data rows", source=src, row=2)
        try:
            arr = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError:
            arr = None
        if arr is None or arr.shape[1] != E + 2:
            # Find the offending line for the message.
            for i, ln in enumerate(lines):
                cells = ln.split(",")
                if len(cells) != E + 2:
                    raise TraceError(f"has {len(cells)} columns, expected {E + 2}", source=src,
                                     row=i + 2)
                for j, c in enumerate(cells):
                    try:
                        float(c)
                    except ValueError:
                        raise TraceError(f"{c!r} is not a number", source=src, row=i + 2,
                                         field=expected[j]) from None
            raise TraceError("cannot parse the rows", source=src)
        n = arr.shape[0]
        tid = arr[:, 1]
        if not np.array_equal(tid, np.arange(n)):
            i = int(np.flatnonzero(tid != np.arange(n))[0])
            raise TraceError(f"token_id {tid[i]:g} != row index {i}", source=src, row=i + 2,
                             field="token_id")
        sc = arr[:, 2:]
        bad = ~np.isfinite(sc) | (sc < 0)
        if bad.any():
            i, e = np.argwhere(bad)[0]
            raise TraceError(f"score {sc[i, e]} is not a finite number >= 0", source=src,
                             row=int(i) + 2, field=f"expert_{e}")
        nnz = np.count_nonzero(sc, axis=1)
        if (nnz != k).any():
            i = int(np.flatnonzero(nnz != k)[0])
            raise TraceError(f"has {int(nnz[i])} non-zero expert scores, expected exactly "
                             f"top_k={k} (data row {i}, token_id {i})", source=src, row=i + 2,
                             field="expert_*")
        order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        return order.astype(np.int64), np.take_along_axis(sc, order, axis=1).astype(np.float32)

    @classmethod
    def _read_layers(cls, folder: Path, opts, ignored: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Stack the layer files of one folder: (n, L, k) experts and scores."""
        L, first = opts.num_layers, opts.first_moe_layer
        dirs = _layer_dirs(folder)
        want = list(range(first, first + L))
        missing = [m for m in want if m not in dirs]
        if missing:
            raise TraceError(f"no Layer_{missing[0]} folder (expected model layers "
                             f"{want[0]}..{want[-1]})", source=str(folder), field="layer")
        for extra in sorted(set(dirs) - set(want)):
            ignored.append(str(dirs[extra]))
        exs, scs, files = [], [], []
        for m in want:
            csvs = sorted(dirs[m].glob("*.csv"))
            if len(csvs) != 1:
                raise TraceError(f"expected exactly one CSV, found {len(csvs)}",
                                 source=str(dirs[m]))
            f = csvs[0]
            fm = FILE_LAYER.search(f.name)
            if fm and int(fm.group(1)) != m:
                raise TraceError(f"file name says layer {fm.group(1)} but the folder is "
                                 f"Layer_{m}", source=str(f), field="layer")
            ex, sc = cls._read_csv(f, opts)
            if exs and ex.shape[0] != exs[0].shape[0]:
                raise TraceError(f"{ex.shape[0]} rows, but layer {first} has "
                                 f"{exs[0].shape[0]}", source=str(f))
            exs.append(ex)
            scs.append(sc)
            files.append(f.name)
        return np.stack(exs, axis=1), np.stack(scs, axis=1), files

    # ------------------------------------------------------------------ run
    @classmethod
    def run(cls, path: Path, options: "FlameCsv.Options") -> ImportResult:
        path, o = Path(path), options
        kind = _kind(path)
        if kind is None:
            raise TraceError("not a FLAME CSV folder (no Layer_N/ or 1st..10th/Layer_N/ "
                             "sub-folders)", source=str(path))
        enc_dir = dec_dir = None
        if kind == "encoder":
            enc_dir = path
        elif kind == "decoder":
            dec_dir = path
        else:
            for d in sorted(p for p in path.iterdir() if p.is_dir()):
                k_ = _kind(d)
                if k_ == "encoder" and d.name.lower().startswith("encoder"):
                    if enc_dir is not None:
                        raise TraceError(f"two encoder batches ({enc_dir.name}, {d.name}); "
                                         "import them one by one", source=str(path))
                    enc_dir = d
                elif k_ == "decoder" and d.name.lower().startswith("decoder"):
                    if dec_dir is not None:
                        raise TraceError(f"two decoder batches ({dec_dir.name}, {d.name}); "
                                         "import them one by one", source=str(path))
                    dec_dir = d
        if o.batch == "encoder":
            if enc_dir is None:
                raise ConfigError("batch=encoder but there is no encoder batch here",
                                  key="--option batch")
            dec_dir = None
        elif o.batch == "decoder":
            if dec_dir is None:
                raise ConfigError("batch=decoder but there is no decoder batch here",
                                  key="--option batch")
            enc_dir = None

        ignored: list[str] = []
        report: dict = {"format": "flame-csv", "files_read": 0, "rows_read": 0}
        notes: dict = {
            "input": path.name,
            "teacher_forced": ("routing captured during training on pretraining text: no "
                               "prompts and no generation; every token is labelled "
                               f"phase={o.phase}"),
            "layers": (f"model layers {o.first_moe_layer}..{o.first_moe_layer + o.num_layers - 1}"
                       f" -> MoE layers 0..{o.num_layers - 1}"),
            "scores": (f"router softmax over all {o.num_experts} experts of the {o.top_k} chosen "
                       "(not renormalised); experts sorted by descending score, ties by expert id"),
            "router_probs": f"absent (only the top-{o.top_k} scores are in the files)",
            "shared_experts": "2 always-on shared experts are not logged",
        }
        ph_code = PREFILL if o.phase == "prefill" else DECODE
        rid, tok, exs, scs = [], [], [], []
        next_id = 0
        enc_ex = None
        if enc_dir is not None:
            ex, sc, files = cls._read_layers(enc_dir, o, ignored)
            enc_ex = ex
            n = ex.shape[0]
            report["files_read"] += len(files)
            report["rows_read"] += n * o.num_layers
            ids = next_id + np.arange(n) // o.request_tokens
            rid.append(ids)
            tok.append(np.arange(n) % o.request_tokens)
            exs.append(ex)
            scs.append(sc)
            n_req = int(ids[-1] - next_id + 1)
            report["encoder"] = {"folder": enc_dir.name, "tokens": n, "requests": n_req,
                                 "request_tokens": o.request_tokens,
                                 "request_ids": [next_id, next_id + n_req - 1]}
            notes["encoder_batch"] = (
                f"{enc_dir.name}: {n} contiguous tokens of the training stream, cut into requests "
                f"of {o.request_tokens} tokens (request ids {next_id}..{next_id + n_req - 1}); "
                "upstream's 32x64 split is artificial")
            next_id += n_req
        if dec_dir is not None:
            pos_dirs = sorted(((ORDINALS[d.name], d) for d in dec_dir.iterdir()
                               if d.is_dir() and d.name in ORDINALS), key=lambda x: x[0])
            positions = [p for p, _ in pos_dirs]
            if positions != list(range(len(positions))):
                missing = sorted(set(range(max(positions) + 1)) - set(positions))
                raise TraceError(f"position folders are not contiguous: missing position(s) "
                                 f"{[p + 1 for p in missing]} (1st = position 0)",
                                 source=str(dec_dir))
            per_pos = []
            chunk_len = None
            for p, d in pos_dirs:
                ex, sc, files = cls._read_layers(d, o, ignored)
                report["files_read"] += len(files)
                report["rows_read"] += ex.shape[0] * o.num_layers
                if per_pos and ex.shape[0] != per_pos[0][0].shape[0]:
                    raise TraceError(f"{ex.shape[0]} chunks, but position 1 has "
                                     f"{per_pos[0][0].shape[0]}", source=str(d))
                per_pos.append((ex, sc))
                m = CHUNK_SHAPE.search(files[0])
                if m:
                    chunk_len = int(m.group(2))
            P = len(per_pos)
            C = per_pos[0][0].shape[0]
            ex = np.stack([e for e, _ in per_pos], axis=1).reshape(C * P, o.num_layers, o.top_k)
            sc = np.stack([s for _, s in per_pos], axis=1).reshape(C * P, o.num_layers, o.top_k)
            rid.append(next_id + np.repeat(np.arange(C), P))
            tok.append(np.tile(np.arange(P), C))
            exs.append(ex)
            scs.append(sc)
            report["decoder"] = {"folder": dec_dir.name, "requests": C, "tokens_per_request": P,
                                 "tokens": C * P, "chunk_tokens": chunk_len,
                                 "request_ids": [next_id, next_id + C - 1]}
            notes["decoder_batch"] = (
                f"{dec_dir.name}: positions 0..{P - 1} of {C} chunks"
                + (f" of {chunk_len} tokens" if chunk_len else "")
                + f"; chunk c = request {next_id}+c, tokens 0..{P - 1}; these are not "
                  "autoregressive decode steps")
            if enc_ex is not None and chunk_len:
                # Chunks that lie inside the encoder batch route the very same tokens.
                same = []
                for c in range(C):
                    lo = c * chunk_len
                    if lo + P > enc_ex.shape[0]:
                        break
                    if np.array_equal(ex[c * P:(c + 1) * P], enc_ex[lo:lo + P]):
                        same.append(c)
                report["decoder_chunks_duplicating_encoder"] = same
                if same:
                    notes["overlap"] = (
                        f"decoder chunks {same} have exactly the routing of encoder tokens "
                        f"c*{chunk_len}+p: both batches start at the same place in the stream, "
                        f"so these {len(same) * P} tokens appear twice (kept)")
            next_id += C
        if ignored:
            report["ignored_layer_folders"] = ignored
            notes["ignored_layer_folders"] = (
                f"{len(ignored)} Layer_N folders outside model layers {o.first_moe_layer}.."
                f"{o.first_moe_layer + o.num_layers - 1} ignored (upstream pads the model to 25 "
                "layers by copying layers 2-9)")
        experts = np.concatenate(exs)
        meta = TraceMeta(model="flame-moe-290m", num_layers=o.num_layers,
                         num_experts=o.num_experts, top_k=o.top_k,
                         source=(f"github.com/{REPO}@{COMMIT}: Sample routing traces/ (from HF "
                                 "CMU-FLAME/FLAME-MoE-Traces, run 31066, iteration 5473)"),
                         expert_order="descending", notes=notes)
        trace = make_trace(meta, np.concatenate(rid), np.concatenate(tok),
                           np.full(experts.shape[0], ph_code, np.int8), experts,
                           scores=np.concatenate(scs), path=str(path))
        report["requests"] = trace.num_requests()
        report["tokens"] = trace.phase_counts()
        notes["report"] = {k: v for k, v in report.items() if k != "ignored_layer_folders"}
        return ImportResult(trace=trace, report=report)
