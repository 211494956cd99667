"""``olmoe-counts``: per-expert routing histograms of allenai/OLMoE ``scripts/routing_output/``.

NOT a per-token trace: the result is an :class:`~simulator.traces.counts.ExpertCounts`
(``ImportResult.counts``). Teacher-forced passes over 2,048-token chunks of six text domains
(208,896 tokens per domain), recorded at model layers 0, 7 and 15 only.

Layout: ``<model>/<family>/<domain>.pkl`` with model in olmoe, olmoe-sft, olmoe-dpo, mistral and
family in expert_counts, expert_counts_top1, expert_counts_crosslayer,
expert_counts_crosslayer_top1. ``expert_counts*``: a list of 3 ``collections.Counter``
{expert: count}; ``crosslayer*``: a list of 2 Counters {(expert_a, expert_b): count} for the
layer pairs (0, 7) and (7, 15). The pickles are read with a restricted unpickler that only
resolves ``collections.Counter``, ``collections.defaultdict``, ``numpy.dtype`` and numpy's scalar
reconstructor (what :mod:`pickletools` shows they reference); anything else is refused.

Inputs: the ``olmoe-routing-analysis`` folder (option ``model`` picks one of its model folders;
required when there are several), one model folder, or the converted JSON
``{model: {family: {domain: counts}}}`` (option ``model`` again). In the folder the pickles are
used; ``use=json`` takes the converted JSON next to them instead.
"""
from __future__ import annotations

import io
import json
import pickle
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError, TraceError
from ...models.spec import get_model
from ..counts import ExpertCounts
from ...config.strict import field
from . import IMPORTERS, Importer, ImportResult

REPO = "allenai/OLMoE"
COMMIT = "357454f4f647385839c0ff6b99a688dc7cd9c13f"
FAMILIES = {"expert_counts": "counts", "expert_counts_top1": "top1",
            "expert_counts_crosslayer": "crosslayer",
            "expert_counts_crosslayer_top1": "crosslayer_top1"}
# Upstream folder -> (catalog model, checkpoint, MoE layers of the model, top_k)
MODELS = {
    "olmoe": ("olmoe-1b-7b", "allenai/OLMoE-1B-7B-0924", 16, 8),
    "olmoe-sft": ("olmoe-1b-7b", "allenai/OLMoE-1B-7B-0924-SFT", 16, 8),
    "olmoe-dpo": ("olmoe-1b-7b", "allenai/OLMoE-1B-7B-0924-Instruct", 16, 8),
    "mistral": ("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", 32, 2),
}
MODEL_LAYERS = [0, 7, 15]
LAYER_PAIRS = [(0, 7), (7, 15)]


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


class _SafeUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("collections", "Counter"): lambda: Counter,
        ("collections", "defaultdict"): lambda: defaultdict,
        ("numpy", "dtype"): lambda: np.dtype,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    }

    def find_class(self, module, name):
        get = self.ALLOWED.get((module, name))
        if get is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return get()


def load_pickle(path: Path):
    """Load one routing-analysis pickle with the restricted unpickler."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read: {exc}", source=str(path)) from None
    try:
        return _SafeUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as exc:
        raise TraceError(f"cannot unpickle ({type(exc).__name__}: {exc})", source=str(path)
                         ) from None


def _is_model_dir(d: Path) -> bool:
    return d.is_dir() and any((d / fam).is_dir() for fam in FAMILIES)


def _looks_like_json(p: Path) -> bool:
    try:
        with open(p, encoding="utf-8") as fh:
            head = fh.read(512)
    except (OSError, UnicodeDecodeError):
        return False
    return '"expert_counts' in head and '"meta"' not in head


def _to_array(obj, kind: str, E: int | None, src: str, n_expected: int):
    """Pickled list of Counters -> int64 array ((n, E) or (n, E, E))."""
    if not isinstance(obj, list) or len(obj) != n_expected:
        raise TraceError(f"expected a list of {n_expected} Counters, got "
                         f"{type(obj).__name__} of length {len(obj) if hasattr(obj, '__len__') else '?'}",
                         source=src)
    pair = kind.startswith("crosslayer")
    keys = []
    for i, c in enumerate(obj):
        if not isinstance(c, dict):
            raise TraceError(f"entry {i} is {type(c).__name__}, not a Counter", source=src,
                             row=i)
        for key, v in c.items():
            ok = (isinstance(key, tuple) and len(key) == 2) if pair else not isinstance(key, tuple)
            if not ok:
                raise TraceError(f"key {key!r} is not {'an expert pair' if pair else 'an expert id'}",
                                 source=src, row=i, field="key")
            try:
                ids = [int(x) for x in (key if pair else (key,))]
                cnt = int(v)
            except (TypeError, ValueError):
                raise TraceError(f"bad entry {key!r}: {v!r}", source=src, row=i) from None
            if min(ids) < 0 or cnt < 0:
                raise TraceError(f"negative id or count in {key!r}: {v!r}", source=src, row=i)
            keys.append((i, ids, cnt))
    top = max((max(ids) for _, ids, _ in keys), default=-1) + 1
    E = E or top
    if top > E:
        raise TraceError(f"expert id {top - 1} >= num_experts {E}", source=src)
    arr = np.zeros((n_expected, E, E) if pair else (n_expected, E), np.int64)
    for i, ids, cnt in keys:
        arr[(i, *ids)] += cnt
    return arr


@IMPORTERS.register("olmoe-counts")
class OlmoeCounts(Importer):
    description = ("OLMoE routing-analysis per-expert counts (allenai/OLMoE scripts/"
                   "routing_output): aggregate histograms, not a per-token trace")

    @dataclass(frozen=True)
    class Options:
        model: str = field("", help='olmoe | olmoe-sft | olmoe-dpo | mistral (required if several)')
        use: str = field("auto", choices=("auto", "pickle", "json"),
                         help='folder input: auto (pickles) | pickle | json')

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        try:
            if p.is_file():
                if p.suffix == ".json":
                    return _looks_like_json(p)
                return (p.suffix == ".pkl" and p.parent.name in FAMILIES)
            if p.is_dir():
                return (_is_model_dir(p) or any(_is_model_dir(d) for d in p.iterdir())
                        or any(_looks_like_json(f) for f in p.glob("*.json")))
        except OSError:
            return False
        return False

    @classmethod
    def run(cls, path: Path, options: "OlmoeCounts.Options") -> ImportResult:
        p, o = Path(path), options
        if p.is_file() and p.suffix == ".pkl":
            raise TraceError("give the model folder (e.g. olmoe/) or the routing_output folder, "
                             "not a single pickle", source=str(p))
        if p.is_file():
            return cls._from_json(p, o)
        if not p.is_dir():
            raise TraceError("no such file or folder", source=str(p))
        if _is_model_dir(p) and o.use != "json":
            if o.model and o.model != p.name:
                raise ConfigError(f"model={o.model!r} but {p} is the {p.name!r} folder",
                                  key="--option model")
            return cls._from_pickles(p, o)
        jsons = sorted(f for f in p.glob("*.json") if _looks_like_json(f))
        model_dirs = sorted(d.name for d in p.iterdir() if _is_model_dir(d))
        if o.use == "json" or (not model_dirs and jsons):
            if not jsons:
                raise TraceError("no converted counts JSON here", source=str(p))
            return cls._from_json(jsons[0], o)
        if not model_dirs:
            raise TraceError("no model folder with expert_counts*/ here", source=str(p))
        name = cls._pick(o.model, model_dirs, str(p))
        return cls._from_pickles(p / name, o)

    @staticmethod
    def _pick(model: str, choices: list[str], src: str) -> str:
        if model:
            if model not in choices:
                raise ConfigError(f"model {model!r} is not here; choose from {', '.join(choices)}",
                                  source=src, key="--option model")
            return model
        if len(choices) > 1:
            raise ConfigError(f"several models ({', '.join(choices)}); pick one with "
                              "--option model=<name>", source=src, key="--option model")
        return choices[0]

    # ------------------------------------------------------------------ builders
    @classmethod
    def _build(cls, folder_name: str, fams: dict[str, dict[str, np.ndarray]], src: str,
               input_desc: str, files: int) -> ImportResult:
        if folder_name not in MODELS:
            raise TraceError(f"unknown model folder {folder_name!r} (known: "
                             f"{', '.join(MODELS)})", source=src)
        model, ckpt, n_layers, k = MODELS[folder_name]
        if "counts" not in fams or not fams["counts"]:
            raise TraceError("no expert_counts/ data (per-layer counts are required)", source=src,
                             field="expert_counts")
        E = {a.shape[-1] for fam in fams.values() for a in fam.values()}
        if len(E) != 1:
            raise TraceError(f"families disagree on the number of experts: {sorted(E)}",
                             source=src)
        num_e = E.pop()
        # Pad arrays built from sparse Counters to the common width.
        report: dict = {"format": "olmoe-counts", "model_folder": folder_name,
                        "files_read": files, "domains": {}, "checks": {}}
        checks = report["checks"]
        for dom, arr in fams["counts"].items():
            sel = arr.sum(axis=1)
            c: dict = {"selections_per_layer": sel.tolist()}
            top1 = (fams.get("top1") or {}).get(dom)
            if top1 is not None:
                c["top1_per_layer"] = top1.sum(axis=1).tolist()
            for kind, ref in (("crosslayer", sel[0]), ("crosslayer_top1",
                                                       None if top1 is None else top1.sum(axis=1)[0])):
                m = (fams.get(kind) or {}).get(dom)
                if m is not None and ref is not None:
                    tot = m.reshape(m.shape[0], -1).sum(axis=1)
                    c[f"{kind}_per_pair"] = tot.tolist()
                    c[f"{kind}_matches_per_layer_total"] = bool((tot == ref).all())
            checks[dom] = c
        tk = {}
        for dom, arr in fams["counts"].items():
            tot = arr.sum(axis=1)
            if len(set(tot.tolist())) != 1:
                raise TraceError(f"layers hold different totals {tot.tolist()}", source=src,
                                 field=f"expert_counts[{dom}]")
            top1 = (fams.get("top1") or {}).get(dom)
            if top1 is not None:
                t1 = top1.sum(axis=1)
                if len(set(t1.tolist())) == 1 and t1[0] and tot[0] % t1[0] == 0:
                    tk[dom] = int(tot[0] // t1[0])
            shares = arr / np.maximum(tot[:, None], 1)
            report["domains"][dom] = {
                "selections_per_layer": int(tot[0]), "tokens": int(tot[0] // k),
                "hottest_share": [round(float(x), 4) for x in shares.max(axis=1)],
                "coldest_share": [round(float(x), 4) for x in shares.min(axis=1)]}
        bad_k = {d: v for d, v in tk.items() if v != k}
        if bad_k:
            raise TraceError(f"counts/top1 ratio {bad_k} differs from {folder_name}'s top_k={k}",
                             source=src)
        notes = {
            "not_a_trace": "aggregate counts over teacher-forced passes; no per-token order",
            "checkpoint": ckpt, "variant": folder_name,
            "layers": ("only model layers 0, 7 and 15 were recorded"
                       + (" (Mixtral's layers 16-31 are absent)" if model == "mixtral-8x7b" else "")),
            "crosslayer": ("pairs formed slot by slot: the i-th choice at one layer with the i-th "
                           "choice at the other; _top1 pairs the top-1 choices"),
            "tokens_per_domain": {d: int(a[0].sum()) // k for d, a in fams["counts"].items()},
            "input": input_desc,
        }
        counts = ExpertCounts(
            model=model, source=f"github.com/{REPO}@{COMMIT}: scripts/routing_output/{folder_name}/",
            model_layers=list(MODEL_LAYERS), num_experts=num_e, top_k=k,
            counts=fams["counts"], top1=fams.get("top1"), crosslayer=fams.get("crosslayer"),
            crosslayer_top1=fams.get("crosslayer_top1"),
            layer_pairs=list(LAYER_PAIRS) if ("crosslayer" in fams or "crosslayer_top1" in fams)
            else [], model_num_layers=n_layers, notes=notes, path=src).validate()
        report["families"] = {kind: sorted(fam) for kind, fam in fams.items()}
        notes["report"] = {k_: v for k_, v in report.items() if k_ != "checks"}
        return ImportResult(counts=counts, report=report)

    @classmethod
    def _from_pickles(cls, folder: Path, o) -> ImportResult:
        fams: dict[str, dict[str, np.ndarray]] = {}
        files = 0
        E = None
        for fam_dir, kind in FAMILIES.items():
            d = folder / fam_dir
            if not d.is_dir():
                continue
            for f in sorted(d.glob("*.pkl")):
                n = len(LAYER_PAIRS) if kind.startswith("crosslayer") else len(MODEL_LAYERS)
                arr = _to_array(load_pickle(f), kind, None, str(f), n)
                fams.setdefault(kind, {})[f.stem] = arr
                files += 1
        # Widen sparse arrays to the widest expert range seen (an expert never chosen in one
        # file would otherwise shrink it).
        widths = [a.shape[-1] for fam in fams.values() for a in fam.values()]
        if widths:
            E = max(widths)
            if folder.name in MODELS:      # the catalog knows the model's expert count
                E = max(E, get_model(MODELS[folder.name][0]).num_experts)
            for fam in fams.values():
                for dom, a in list(fam.items()):
                    if a.shape[-1] < E:
                        pad = [(0, 0)] + [(0, E - a.shape[-1])] * (a.ndim - 1)
                        fam[dom] = np.pad(a, pad)
        return cls._build(folder.name, fams, str(folder), f"pickles under {folder.name}/", files)

    @classmethod
    def _from_json(cls, f: Path, o) -> ImportResult:
        src = str(f)
        try:
            with open(f, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise TraceError(f"not valid JSON: {exc.msg} at line {exc.lineno}", source=src,
                             row=exc.lineno) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TraceError(f"cannot read: {exc}", source=src) from None
        if not isinstance(data, dict) or not data:
            raise TraceError("expected {model: {family: {domain: counts}}}", source=src)
        name = cls._pick(o.model, sorted(data), src)
        fams: dict[str, dict[str, np.ndarray]] = {}
        files = 0
        for fam_name, doms in data[name].items():
            kind = FAMILIES.get(fam_name)
            if kind is None:
                continue
            if not isinstance(doms, dict):
                raise TraceError("expected {domain: counts}", source=src, field=f"{name}.{fam_name}")
            for dom, v in doms.items():
                try:
                    arr = np.asarray(v, dtype=np.int64)
                except (ValueError, TypeError):
                    raise TraceError("not a rectangular integer array", source=src,
                                     field=f"{name}.{fam_name}.{dom}") from None
                want_nd = 3 if kind.startswith("crosslayer") else 2
                n = len(LAYER_PAIRS) if want_nd == 3 else len(MODEL_LAYERS)
                if arr.ndim != want_nd or arr.shape[0] != n:
                    raise TraceError(f"shape {arr.shape}, expected ({n}, E{', E' if want_nd == 3 else ''})",
                                     source=src, field=f"{name}.{fam_name}.{dom}")
                fams.setdefault(kind, {})[dom] = arr
                files += 1
        return cls._build(name, fams, src, f"{f.name} [{name}]", files)
