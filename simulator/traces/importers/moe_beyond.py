"""``moe-beyond``: DeepSeek-V2-Lite-Chat prefill routing from ngavhane/moe-beyond.

Inputs (prefill only; no gate scores were written upstream):

* the numpy re-encoding ``deepseek_v2_lite_chat_prefill_topk.npz`` (``experts`` uint8 (T, 26, 6),
  ``prompt_id``, ``token_pos``, ``source`` 0 = training / 1 = validation prompts, ``layer_ids``);
  imported fully vectorised;
* a ``.tar.xz`` archive of upstream CSVs (members are streamed with :mod:`tarfile`, never
  extracted to disk);
* a folder of ``prompt_N_data.csv`` files (recursive), or one such CSV;
* the folder holding the npz and/or the archives: the npz is used when present (``use=csv``
  reads the archives and CSVs instead).

CSV rows: ``Layer ID,Batch Number,Token,Activated Expert IDs``, grouped by layer (1..26); token
t of the prompt is the t-th row of each layer block. Tokens contain commas and quotes, so the
rows are read with :mod:`csv`. Expert lists are DeepSeek's ``topk(sorted=False)`` output: the
order carries no meaning, so ``expert_order="unordered"``.

Request id = prompt number; validation prompts (npz ``source`` 1, or CSVs under a
``test_datasets`` path) get ``validation_offset`` + their number. Model layers 1..26 become MoE
layers 0..25.
"""
from __future__ import annotations

import csv
import io
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import ConfigError, TraceError
from ..schema import PREFILL, TraceMeta, make_trace
from ...config.strict import field
from . import IMPORTERS, Importer, ImportResult

REPO = "ngavhane/moe-beyond"
COMMIT = "4dca2eacb7bc0a3086770a4de7a57cc0b81479bd"
NPZ_KEYS = {"experts", "prompt_id", "token_pos", "source", "layer_ids"}
CSV_NAME = re.compile(r"(?:^|/)prompt_(\d+)_data\.csv$")
HEADER = ["Layer ID", "Batch Number", "Token", "Activated Expert IDs"]
VALIDATION_MARKERS = ("test_datasets", "validation")


def _is_npz(p: Path) -> bool:
    if p.suffix != ".npz" or not p.is_file():
        return False
    try:
        with zipfile.ZipFile(p) as z:
            names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
    except (OSError, zipfile.BadZipFile):
        return False
    return {"experts", "prompt_id", "token_pos"} <= names


def _is_archive(p: Path) -> bool:
    return p.is_file() and p.name.endswith((".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar"))


def _archive_has_csv(p: Path) -> bool:
    try:
        with tarfile.open(p) as tf:
            for i, m in enumerate(tf):
                if m.isfile():
                    return bool(CSV_NAME.search(m.name))
                if i > 20:
                    return False
    except (OSError, tarfile.TarError, EOFError):
        return False
    return False


def _is_validation(name: str) -> bool:
    return any(m in name for m in VALIDATION_MARKERS)


def _parse_selection(text: str) -> set[int] | None:
    text = text.strip()
    if not text:
        return None
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out.update(range(int(a), int(b) + 1))
            elif part:
                out.add(int(part))
    except ValueError:
        raise ConfigError(f"cannot parse prompt selection {text!r} (use e.g. '1-5,42')",
                          key="--option prompts") from None
    return out


@IMPORTERS.register("moe-beyond")
class MoeBeyond(Importer):
    description = ("DeepSeek-V2-Lite-Chat prefill routing from ngavhane/moe-beyond (npz "
                   "re-encoding, .tar.xz of CSVs, or a folder of prompt_N_data.csv)")

    @dataclass(frozen=True)
    class Options:
        use: str = field("auto", choices=("auto", "npz", "csv"),
                         help='folder input: auto (npz if present) | npz | csv')
        max_prompts: int = field(0, min=0,
                                 help='CSV inputs: stop after this many prompt files (0 = all)')
        prompts: str = field("", help='only these prompt numbers, e.g. "1-5,42" (training ids)')
        validation_offset: int = field(10000, min=1,
                                       help='request id of validation prompt n = offset + n')
        first_moe_layer: int = field(1, min=0, help='model layer of MoE layer 0')
        num_layers: int = field(26, min=1, help='MoE layers (DeepSeek-V2-Lite: 26)')
        num_experts: int = field(64, min=1, help='routed experts per layer')
        top_k: int = field(6, min=1, help='experts per token')

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        try:
            if p.is_file():
                if p.suffix == ".npz":
                    return _is_npz(p)
                if p.suffix == ".csv":
                    return bool(CSV_NAME.search(p.name))
                return _is_archive(p) and _archive_has_csv(p)
            if p.is_dir():
                if any(_is_npz(f) for f in p.glob("*.npz")):
                    return True
                if any(_is_archive(f) and _archive_has_csv(f) for f in p.iterdir()):
                    return True
                return next((True for f in p.rglob("prompt_*_data.csv")), False)
        except OSError:
            return False
        return False

    # ------------------------------------------------------------------ run
    @classmethod
    def run(cls, path: Path, options: "MoeBeyond.Options") -> ImportResult:
        p, o = Path(path), options
        sel = _parse_selection(o.prompts)
        if p.is_file() and p.suffix == ".npz":
            return cls._run_npz(p, o, sel)
        if p.is_dir():
            npzs = sorted(f for f in p.glob("*.npz") if _is_npz(f))
            if o.use in ("auto", "npz") and npzs:
                if len(npzs) > 1:
                    raise TraceError(f"several npz files ({', '.join(f.name for f in npzs)}); "
                                     "import one", source=str(p))
                return cls._run_npz(npzs[0], o, sel)
            if o.use == "npz":
                raise ConfigError(f"use=npz but {p} holds no npz", key="--option use")
        return cls._run_csv(p, o, sel)

    # ------------------------------------------------------------------ npz
    @classmethod
    def _run_npz(cls, f: Path, o, sel) -> ImportResult:
        src = str(f)
        try:
            z = np.load(f, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise TraceError(f"cannot load npz: {exc}", source=src) from None
        with z:
            missing = sorted(NPZ_KEYS - set(z.files))
            if missing:
                raise TraceError(f"npz lacks arrays {missing}", source=src, field=missing[0])
            try:
                experts = z["experts"]
                pid = z["prompt_id"].astype(np.int64)
                pos = z["token_pos"].astype(np.int64)
                source = z["source"].astype(np.int64)
                layer_ids = z["layer_ids"].astype(np.int64)
            except ValueError as exc:
                raise TraceError(f"cannot read npz arrays: {exc}", source=src) from None
        T = experts.shape[0] if experts.ndim else 0
        L, k = o.num_layers, o.top_k
        if experts.ndim != 3 or experts.shape[1:] != (L, k):
            raise TraceError(f"expected shape (tokens, {L}, {k}), got {experts.shape}",
                             source=src, field="experts")
        for name, a in (("prompt_id", pid), ("token_pos", pos), ("source", source)):
            if a.shape != (T,):
                raise TraceError(f"expected shape ({T},), got {a.shape}", source=src, field=name)
        want_layers = np.arange(o.first_moe_layer, o.first_moe_layer + L)
        if not np.array_equal(layer_ids, want_layers):
            raise TraceError(f"layer_ids must be {o.first_moe_layer}..{want_layers[-1]}, got "
                             f"{layer_ids.tolist()}", source=src, field="layer_ids")
        if not np.isin(source, (0, 1)).all():
            i = int(np.flatnonzero(~np.isin(source, (0, 1)))[0])
            raise TraceError(f"source {int(source[i])} is neither 0 (training) nor 1 "
                             "(validation)", source=src, row=i, field="source")
        if sel is not None:
            keep = np.isin(pid, np.fromiter(sel, np.int64)) & (source == 0)
            experts, pid, pos, source = experts[keep], pid[keep], pos[keep], source[keep]
            if not keep.any():
                raise TraceError("none of the selected prompts is in the file", source=src,
                                 field="prompt_id")
        rid = np.where(source == 1, pid + o.validation_offset, pid)
        # Rows sorted by (source, prompt, position) with positions 0..n-1 per prompt.
        key_change = np.ones(rid.size, bool)
        key_change[1:] = rid[1:] != rid[:-1]
        starts = np.flatnonzero(key_change)
        expect_pos = np.arange(rid.size) - np.repeat(starts, np.diff(np.append(starts, rid.size)))
        if not np.array_equal(pos, expect_pos):
            i = int(np.flatnonzero(pos != expect_pos)[0])
            raise TraceError(f"token_pos {int(pos[i])}, expected {int(expect_pos[i])} (rows must "
                             "be sorted by source, prompt, position from 0)", source=src, row=i,
                             field="token_pos")
        report, notes = cls._summary(source, pid, o)
        notes["input"] = f.name
        notes["npz"] = ("numpy re-encoding of the upstream CSVs made for moesim's shared data "
                        "(not upstream data)")
        trace = cls._make(rid, pos, experts, o, src, notes,
                          source_str=(f"github.com/{REPO}@{COMMIT}: training_data_eamc/ and "
                                      "expert_activation_scripts/training_data_eamc/ "
                                      f"prompt_N_data.csv, via {f.name}"))
        report.update({"format": "moe-beyond", "input": "npz", "rows_read": int(T) * L,
                       "requests": trace.num_requests(), "tokens": trace.phase_counts()})
        notes["report"] = dict(report)
        return ImportResult(trace=trace, report=report)

    @staticmethod
    def _summary(source, pid, o):
        ids_tr = np.unique(pid[source == 0])
        ids_va = np.unique(pid[source == 1])
        report: dict = {"prompts_found": int(ids_tr.size + ids_va.size),
                        "training_prompts": int(ids_tr.size),
                        "validation_prompts": int(ids_va.size)}

        def missing(ids):
            if ids.size == 0:
                return []
            return sorted(set(range(1, int(ids.max()) + 1)) - set(ids.tolist()))

        report["prompts_missing"] = {"training": missing(ids_tr), "validation": missing(ids_va)}
        notes = {
            "prefill_only": ("one teacher-forced forward pass over each prompt (batch 1, no "
                             "generation): every token is prefill"),
            "expert_order": ("unordered: DeepSeek's remote-code gate uses topk(sorted=False); "
                             "gate weights were not written, so there are no scores"),
            "layers": (f"model layers {o.first_moe_layer}..{o.first_moe_layer + o.num_layers - 1}"
                       f" (layers before {o.first_moe_layer} are dense) -> MoE layers "
                       f"0..{o.num_layers - 1}"),
            "request_ids": "prompt number; validation prompt n -> validation_offset + n",
            "prompts_missing": report["prompts_missing"],
            "quantisation": "model loaded with bitsandbytes load_in_8bit",
            "shared_experts": "2 always-on shared experts are not logged",
        }
        return report, notes

    @staticmethod
    def _make(rid, pos, experts, o, src, notes, source_str):
        meta = TraceMeta(model="deepseek-v2-lite", num_layers=o.num_layers,
                         num_experts=o.num_experts, top_k=o.top_k, source=source_str,
                         expert_order="unordered", notes=notes)
        meta.notes["validation_offset"] = o.validation_offset
        return make_trace(meta, rid, pos, np.full(rid.size, PREFILL, np.int8), experts,
                          path=src)

    # ------------------------------------------------------------------ CSV
    @classmethod
    def _members(cls, p: Path, o, sel, report) -> Iterator[tuple[str, str, bytes]]:
        """Yield (display source, member path, CSV bytes) of the selected prompt files."""
        count = 0

        def wanted(name: str) -> bool:
            m = CSV_NAME.search(name)
            if not m:
                return False
            if "predicted" in name:
                # upstream test_datasets/predicted_csvs/ hold predictor outputs, not routing
                report.setdefault("skipped_predicted_csvs", []).append(name)
                return False
            return sel is None or (int(m.group(1)) in sel and not _is_validation(name))

        def done() -> bool:
            return bool(o.max_prompts) and count >= o.max_prompts

        def from_archive(a: Path):
            nonlocal count
            try:
                with tarfile.open(a) as tf:
                    for m in tf:
                        if done():
                            return
                        if not m.isfile() or not wanted(m.name):
                            continue
                        fh = tf.extractfile(m)
                        if fh is None:
                            continue
                        count += 1
                        report["archives_members_read"] = report.get("archives_members_read", 0) + 1
                        yield f"{a}::{m.name}", m.name, fh.read()
            except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
                raise TraceError(f"cannot read archive: {exc}", source=str(a)) from None

        def prompt_key(f: Path):
            m = CSV_NAME.search(f.as_posix())
            return (_is_validation(f.as_posix()), int(m.group(1)) if m else 0, str(f))

        if p.is_file():
            if _is_archive(p):
                yield from from_archive(p)
            else:
                count += 1
                yield str(p), p.name, p.read_bytes()
            return
        archives = sorted(f for f in p.iterdir() if _is_archive(f))
        for a in archives:
            yield from from_archive(a)
            if done():
                return
        for f in sorted(p.rglob("prompt_*_data.csv"), key=prompt_key):
            if done():
                return
            rel = f.relative_to(p).as_posix()
            if not wanted(rel):
                continue
            count += 1
            try:
                data = f.read_bytes()
            except OSError as exc:
                raise TraceError(f"cannot read: {exc}", source=str(f)) from None
            yield str(f), rel, data

    @classmethod
    def _parse_csv(cls, src: str, data: bytes, o) -> tuple[np.ndarray, list[str]]:
        """(experts (n, L, k) int64, token strings) of one prompt file, validated."""
        L, k, E, first = o.num_layers, o.top_k, o.num_experts, o.first_moe_layer
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TraceError(f"not UTF-8: {exc}", source=src) from None
        rd = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(rd, None)
        except csv.Error as exc:
            raise TraceError(f"malformed CSV: {exc}", source=src, row=1) from None
        if header is None:
            raise TraceError("empty file", source=src, row=1)
        if [h.strip() for h in header] != HEADER:
            raise TraceError(f"header is {header}, expected {HEADER}", source=src, row=1,
                             field="header")
        blocks: dict[int, tuple[list[list[int]], list[str]]] = {}
        order: list[int] = []
        try:
            for row in rd:
                line = rd.line_num
                if not row:
                    continue
                if len(row) != 4:
                    raise TraceError(f"has {len(row)} fields, expected 4 (unquoted comma in a "
                                     "token?)", source=src, row=line)
                try:
                    layer = int(row[0])
                except ValueError:
                    raise TraceError(f"{row[0]!r} is not an integer", source=src, row=line,
                                     field="Layer ID") from None
                if not first <= layer < first + L:
                    raise TraceError(f"layer {layer} out of range {first}..{first + L - 1}",
                                     source=src, row=line, field="Layer ID")
                s = row[3].strip()
                if not (s.startswith("[") and s.endswith("]")):
                    raise TraceError(f"{row[3]!r} is not a list of expert ids", source=src,
                                     row=line, field="Activated Expert IDs")
                try:
                    ids = [int(x) for x in s[1:-1].split(",")] if s[1:-1].strip() else []
                except ValueError:
                    raise TraceError(f"{row[3]!r} is not a list of integers", source=src,
                                     row=line, field="Activated Expert IDs") from None
                if len(ids) != k:
                    raise TraceError(f"{len(ids)} expert ids, expected top_k={k}: {ids}",
                                     source=src, row=line, field="Activated Expert IDs")
                bad = [e for e in ids if not 0 <= e < E]
                if bad:
                    raise TraceError(f"expert id {bad[0]} out of range [0, {E}): {ids}",
                                     source=src, row=line, field="Activated Expert IDs")
                if len(set(ids)) != k:
                    raise TraceError(f"repeats an expert: {ids}", source=src, row=line,
                                     field="Activated Expert IDs")
                if layer not in blocks:
                    blocks[layer] = ([], [])
                    order.append(layer)
                elif order[-1] != layer:
                    raise TraceError(f"layer {layer} appears again after layer {order[-1]}: rows "
                                     "are not grouped by layer, so token positions are unknown",
                                     source=src, row=line, field="Layer ID")
                blocks[layer][0].append(ids)
                blocks[layer][1].append(row[2])
        except csv.Error as exc:
            raise TraceError(f"malformed CSV: {exc}", source=src, row=rd.line_num) from None
        missing = [m for m in range(first, first + L) if m not in blocks]
        if missing:
            raise TraceError(f"no rows for layer(s) {missing}", source=src, field="Layer ID",
                             layer=missing[0] - first)
        ref_tokens = blocks[first][1]
        n = len(ref_tokens)
        if n == 0:
            raise TraceError("no tokens", source=src)
        for m in range(first, first + L):
            ids, toks = blocks[m]
            if len(toks) != n:
                raise TraceError(f"layer {m} has {len(toks)} tokens, layer {first} has {n}",
                                 source=src, layer=m - first, field="Layer ID")
            if toks != ref_tokens:
                t = next(i for i, (a, b) in enumerate(zip(toks, ref_tokens)) if a != b)
                raise TraceError(f"layer {m} token {t} is {toks[t]!r} but {ref_tokens[t]!r} at "
                                 f"layer {first}: rows misaligned", source=src, token=t,
                                 layer=m - first, field="Token")
        ex = np.empty((n, L, k), np.int64)
        for m in range(first, first + L):
            ex[:, m - first] = np.asarray(blocks[m][0], dtype=np.int64)
        return ex, ref_tokens

    @classmethod
    def _run_csv(cls, p: Path, o, sel) -> ImportResult:
        report: dict = {"format": "moe-beyond", "input": "csv", "files_read": 0, "rows_read": 0}
        found: dict[tuple[int, int], tuple[str, np.ndarray]] = {}
        for disp, name, data in cls._members(p, o, sel, report):
            m = CSV_NAME.search(name)
            num = int(m.group(1)) if m else None
            if num is None:
                raise TraceError("file name is not prompt_N_data.csv: the prompt number is "
                                 "unknown", source=disp)
            src_flag = 1 if _is_validation(name) else 0
            ex, toks = cls._parse_csv(disp, data, o)
            if (src_flag, num) in found:
                raise TraceError(f"prompt {num} appears twice (also {found[(src_flag, num)][0]})",
                                 source=disp)
            found[(src_flag, num)] = (disp, ex)
            report["files_read"] += 1
            report["rows_read"] += ex.shape[0] * o.num_layers
        if not found:
            raise TraceError("no prompt_N_data.csv found" + (
                " for the selected prompts" if sel is not None else ""), source=str(p))
        keys = sorted(found)
        exs = [found[key][1] for key in keys]
        lens = np.array([e.shape[0] for e in exs])
        source = np.repeat(np.array([s for s, _ in keys]), lens)
        pid = np.repeat(np.array([n for _, n in keys]), lens)
        rid = np.where(source == 1, pid + o.validation_offset, pid)
        pos = np.concatenate([np.arange(n) for n in lens])
        limited = bool(o.max_prompts) or sel is not None
        report_s, notes = cls._summary(source, pid, o)
        if limited:
            report_s["prompts_missing"] = "not computed (a selection or max_prompts was given)"
            if sel is not None and not o.max_prompts:
                absent = sorted(sel - {n for s_, n in keys if s_ == 0})
                report_s["selected_prompts_absent"] = absent
                notes["selected_prompts_absent"] = absent
            notes["prompts_missing"] = report_s["prompts_missing"]
            notes["selection"] = {"max_prompts": o.max_prompts, "prompts": o.prompts}
        report.update(report_s)
        notes["input"] = p.name
        notes["csv_files"] = len(keys)
        trace = cls._make(rid, pos, np.concatenate(exs), o, str(p), notes,
                          source_str=f"github.com/{REPO}@{COMMIT}: prompt_N_data.csv from {p.name}")
        report.update({"requests": trace.num_requests(), "tokens": trace.phase_counts()})
        notes["report"] = dict(report)
        return ImportResult(trace=trace, report=report)
