"""Importers of public routing formats: real files (counts from shared/traces/SOURCES.md) and
small synthetic files with defects written in tmp_path."""
from __future__ import annotations

import csv
import io
import json
import pickle
import tarfile
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest

from simulator.errors import ConfigError, TraceError
from simulator.traces.counts import ExpertCounts, read_counts, write_counts
from simulator.traces.importers import detect_format, import_path
from simulator.traces.io import read_trace, write_trace
from simulator.traces.schema import DECODE, PREFILL

MIX = "speculative-moe-mixtral"
FLAME = "flame-moe-dynande"
DS = "moe-beyond-deepseek-v2-lite"
NPZ = f"{DS}/deepseek_v2_lite_chat_prefill_topk.npz"
QWEN = "moe-ocs-qwen"
OLMOE = "olmoe-routing-analysis"


def need(root: Path, rel: str) -> Path:
    p = root / rel
    if not p.exists():
        pytest.skip(f"{rel} not present in the shared traces")
    return p


def roundtrip(trace, tmp_path: Path, name: str = "t.parquet"):
    """Write to Parquet and read back (read_trace validates); check the arrays survive."""
    out = write_trace(trace, tmp_path / name)
    back = read_trace(out)
    assert back.meta.model == trace.meta.model
    assert back.meta.notes == json.loads(json.dumps(trace.meta.notes))
    for attr in ("request_id", "token", "phase", "experts", "scores", "imputed"):
        a, b = getattr(trace, attr), getattr(back, attr)
        assert (a is None) == (b is None), attr
        if a is not None:
            assert np.array_equal(a, b), attr
    return back


# ============================================================================ real files
# ---------------------------------------------------------------- Mixtral (speculative-moe)
def test_mixtral_decode_file_truncates_per_request(shared_traces, tmp_path):
    f = need(shared_traces, f"{MIX}/humaneval_2_routing.jsonl")
    res = import_path(f)
    tr, rep = res.trace, res.report
    assert rep["layout"] == "decode" and rep["rows_read"] == 10_779
    assert tr.num_requests() == 2 and tr.meta.model == "mixtral-8x7b"
    assert (tr.num_layers, tr.meta.num_experts, tr.top_k) == (32, 8, 2)
    t0, t1 = rep["truncation"]["0"], rep["truncation"]["1"]
    assert (t0["rows_per_layer_min"], t0["rows_per_layer_max"]) == (81, 83)
    assert (t1["rows_per_layer_min"], t1["rows_per_layer_max"]) == (252, 255)
    assert t0["rows"] + t1["rows"] == 10_779
    assert t0["rows_dropped"] == t0["rows"] - 81 * 32
    assert t1["rows_dropped"] == t1["rows"] - 252 * 32
    assert rep["rows_dropped"] == 10_779 - (81 + 252) * 32
    assert tr.phase_counts() == {"prefill": 0, "decode": 81 + 252}
    assert tr.meta.notes["cross_layer_alignment"] == "approximate"
    assert tr.meta.notes["request_map"] == {"0": "humaneval/0", "1": "humaneval/1"}
    assert "Mario928/speculative-moe" in tr.meta.source and "216e26e" in tr.meta.source
    # first row of the file: problem 0, layer 0, experts [6, 5], probs 0.696/0.304
    assert tr.experts[0, 0].tolist() == [6, 5]
    assert tr.scores[0, 0] == pytest.approx([0.6960, 0.3040], abs=1e-4)
    assert (np.diff(tr.scores, axis=2) <= 0).all()
    roundtrip(tr, tmp_path)


def test_mixtral_decode_file_gaps_error_explains(shared_traces):
    f = need(shared_traces, f"{MIX}/humaneval_2_routing.jsonl")
    with pytest.raises(TraceError, match="cannot be recovered") as ei:
        import_path(f, options={"gaps": "error"})
    assert ei.value.source == str(f) and ei.value.request == 0


def _raw_rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def test_mixtral_raw_file_exact_alignment_and_imputation(shared_traces, tmp_path):
    f = need(shared_traces, f"{MIX}/routing_raw.jsonl")
    rows = _raw_rows(f)
    res = import_path(f)
    tr, rep = res.trace, res.report
    assert rep["layout"] == "raw" and rep["rows_read"] == len(rows) == 6_777
    assert tr.phase_counts() == {"prefill": 135, "decode": 83}
    assert tr.token.tolist() == list(range(135 + 83))
    # Independent count of the missing rows: the prefill block is layer-major and ends at the
    # first token_pos-0 row whose layer does not increase (the first decode row).
    n_missing = (135 + 83) * 32 - len(rows)
    layer_pre = Counter()
    for r in rows:
        if layer_pre and r["token_pos"] == 0 and r["layer"] <= max(layer_pre):
            break
        layer_pre[r["layer"]] += 1
    assert sum(layer_pre.values()) == 4_198 and layer_pre[5] == 127
    assert tr.imputed.sum() == n_missing == 199 == rep["imputed_cells"]
    assert tr.imputed[:135].sum() == 135 * 32 - 4_198 == 122 == rep["missing_cells_prefill"]
    assert tr.imputed[135:].sum() == 77 == rep["missing_cells_decode"]
    assert tr.imputed[:135, 5].sum() == 135 - 127
    # About 57% of tokens lack at least one layer (so dropping tokens would lose most of them)
    assert rep["tokens_with_missing_layer"] == int(tr.imputed.any(axis=1).sum()) == 124
    # Imputed cells copy the nearest earlier token at that layer (or the next for token 0)
    for t, l_ in np.argwhere(tr.imputed):
        present = np.flatnonzero(~tr.imputed[:, l_])
        earlier = present[present < t]
        s = earlier[-1] if earlier.size else present[present > t][0]
        assert np.array_equal(tr.experts[t, l_], tr.experts[s, l_])
    back = roundtrip(tr, tmp_path)
    assert back.imputed.sum() == 199


def test_mixtral_raw_decode_matches_decode_file(shared_traces):
    """The raw file's decode part is the routing of humaneval_2 problem 0: identical at layer 0
    (no gaps in either) and at every non-imputed cell of layers the decode file has complete --
    which checks the step segmentation of the raw file."""
    f_raw = need(shared_traces, f"{MIX}/routing_raw.jsonl")
    f_dec = need(shared_traces, f"{MIX}/humaneval_2_routing.jsonl")
    raw = import_path(f_raw).trace
    dec = raw.phase == DECODE
    ex, sc, imp = raw.experts[dec], raw.scores[dec], raw.imputed[dec]
    per_layer: dict[int, list[dict]] = {}
    for r in _raw_rows(f_dec):
        if r["problem_id"] == 0:
            per_layer.setdefault(r["layer"], []).append(r)
    l0 = sorted(per_layer[0], key=lambda r: r["token_idx"])
    assert len(l0) == 83 and not imp[:, 0].any()
    assert ex[:, 0].tolist() == [r["experts"] for r in l0]
    assert np.allclose(sc[:, 0], [r["gating_probs"] for r in l0], atol=1e-6)
    complete = [l_ for l_, rs in per_layer.items() if len(rs) == 83]
    assert len(complete) >= 10
    checked = 0
    for l_ in complete:
        rs = sorted(per_layer[l_], key=lambda r: r["token_idx"])
        for t, r in enumerate(rs):
            if not imp[t, l_]:
                assert ex[t, l_].tolist() == r["experts"], (t, l_)
                checked += 1
    assert checked > 1000


def test_mixtral_raw_drop_token_and_error(shared_traces):
    f = need(shared_traces, f"{MIX}/routing_raw.jsonl")
    res = import_path(f, options={"gaps": "drop-token"})
    assert res.trace.num_tokens == 218 - 124 and res.report["tokens_dropped"] == 124
    assert res.trace.imputed is None
    assert res.report["tokens_with_missing_layer_fraction"] == pytest.approx(124 / 218, abs=1e-4)
    with pytest.raises(TraceError, match="199 .* rows are missing") as ei:
        import_path(f, options={"gaps": "error"})
    assert ei.value.token is not None and ei.value.layer is not None
    with pytest.raises(ConfigError, match="truncate"):
        import_path(f, options={"gaps": "truncate"})


# ---------------------------------------------------------------- FLAME-MoE
def test_flame_encoder_batch(shared_traces, tmp_path):
    d = need(shared_traces, f"{FLAME}/Encoder_Batch_0-32")
    res = import_path(d)
    tr = res.trace
    assert tr.experts.shape == (2048, 8, 6) and tr.num_requests() == 1
    assert tr.meta.model == "flame-moe-290m" and tr.meta.num_experts == 64
    assert tr.phase_counts() == {"prefill": 2048, "decode": 0}
    assert res.report["rows_read"] == 2048 * 8 and res.report["files_read"] == 8
    assert (tr.scores > 0).all() and (np.diff(tr.scores, axis=2) <= 0).all()
    assert tr.router_probs is None and "teacher_forced" in tr.meta.notes
    sums = tr.scores.sum(axis=2)          # not renormalised: row sums 0.10-0.90
    assert 0.09 < sums.min() < 0.11 and 0.89 < sums.max() < 0.91
    roundtrip(tr, tmp_path)
    t64 = import_path(d, options={"request_tokens": "64"}).trace
    assert t64.num_requests() == 32 and t64.token.max() == 63
    assert np.array_equal(t64.experts, tr.experts)


def test_flame_decoder_batch_and_parent(shared_traces, tmp_path):
    d = need(shared_traces, f"{FLAME}/Decoder_Batch_0-64")
    tr = import_path(d).trace
    assert tr.num_requests() == 64 and tr.num_tokens == 640
    assert tr.token[:10].tolist() == list(range(10))
    # SOURCES.md example: 10th/Layer_2 row 0 -> chunk 0 position 9, MoE layer 0
    assert tr.experts[9, 0].tolist() == [16, 28, 17, 47, 38, 42]
    assert tr.scores[9, 0] == pytest.approx([0.038, 0.035, 0.035, 0.031, 0.029, 0.028],
                                            abs=6e-4)
    roundtrip(tr, tmp_path)
    both = import_path(need(shared_traces, FLAME))
    assert both.trace.num_requests() == 65 and both.trace.num_tokens == 2048 + 640
    # the first 4 decoder chunks (512 tokens each) are tokens of the encoder batch
    assert both.report["decoder_chunks_duplicating_encoder"] == [0, 1, 2, 3]
    enc = import_path(need(shared_traces, FLAME), options={"batch": "encoder"}).trace
    assert enc.num_tokens == 2048


# ---------------------------------------------------------------- DeepSeek (moe-beyond)
@pytest.fixture(scope="module")
def deepseek_npz(shared_traces):
    return import_path(need(shared_traces, NPZ))


def test_deepseek_npz(deepseek_npz, tmp_path):
    tr, rep = deepseek_npz.trace, deepseek_npz.report
    assert tr.experts.shape == (192_023, 26, 6)
    assert tr.num_requests() == 1_999 == rep["prompts_found"]
    assert 317 in rep["prompts_missing"]["training"]
    assert 317 not in set(np.unique(tr.request_id).tolist())
    assert tr.experts[0, 0].tolist() == [8, 26, 56, 57, 60, 43]
    assert tr.experts[0, 1].tolist() == [3, 35, 38, 62, 63, 60]
    assert tr.meta.expert_order == "unordered" and tr.scores is None
    assert tr.meta.model == "deepseek-v2-lite" and (tr.phase == PREFILL).all()
    # prompt 1 has 33 tokens (858 CSV rows / 26 layers)
    assert int((tr.request_id == 1).sum()) == 33
    roundtrip(tr, tmp_path)


def test_deepseek_tar_csv_matches_npz(shared_traces, deepseek_npz):
    a = need(shared_traces, f"{DS}/training_data_eamc.tar.xz")
    res = import_path(a, options={"max_prompts": "3"})
    tr = res.trace
    assert res.report["files_read"] == 3 and tr.num_requests() == 3
    ref = deepseek_npz.trace.select_requests(np.unique(tr.request_id))
    assert np.array_equal(tr.request_id, ref.request_id)
    assert np.array_equal(tr.token, ref.token)
    assert np.array_equal(tr.experts, ref.experts)


def test_deepseek_prompt_selection_reports_absent(shared_traces):
    d = need(shared_traces, DS)
    if not (d / "training_data_eamc.tar.xz").exists():
        pytest.skip("archive not present")
    res = import_path(d / "training_data_eamc.tar.xz", options={"prompts": "1,317"})
    assert np.unique(res.trace.request_id).tolist() == [1]
    assert res.report["selected_prompts_absent"] == [317]


# ---------------------------------------------------------------- Qwen (moe_ocs)
QWEN15_ROUTES = {"cooking_1": 185, "history_1": 183, "history_2": 191, "ml_moe_1": 181,
                 "ml_moe_2": 183, "ml_moe_3": 173}


def test_qwen15_folder(shared_traces, tmp_path):
    d = need(shared_traces, f"{QWEN}/outputs/experiment_traces")
    res = import_path(d)
    tr = res.trace
    names = [Path(v).parent.name for v in tr.meta.notes["requests"].values()]
    assert len(names) == 5 or len(names) == 6
    assert tr.meta.model == "qwen1.5-moe-a2.7b" and (tr.num_layers, tr.top_k) == (24, 4)
    ids, starts, ends = tr.request_bounds()
    assert ids.tolist() == list(range(len(names)))
    for name, s, e in zip(names, starts, ends):
        assert e - s == QWEN15_ROUTES[name], name
        assert int((tr.phase[s:e] == DECODE).sum()) == 128
    assert (np.diff(tr.scores, axis=2) <= 0).all()
    assert "manifest.json" in res.report["skipped_json"]
    roundtrip(tr, tmp_path)


def test_qwen36_vllm_file_resorted(shared_traces, tmp_path):
    f = need(shared_traces, f"{QWEN}/data/routing_traces/routing_pretrained.json")
    raw = json.loads(f.read_text())
    cell = raw["routes"][0]["layers"]["0"]
    assert cell["weights"] == sorted(cell["weights"])          # ascending in the file
    res = import_path(f)
    tr = res.trace
    assert tr.experts.shape == (163, 40, 8) and tr.meta.model == "qwen3.6-35b-a3b"
    assert tr.meta.source.endswith("49da2657a12eea4c40b30f01ee4ae7b8420deff8: "
                                   "data/routing_traces/routing_pretrained.json")
    assert tr.phase_counts() == {"prefill": 36, "decode": 127}
    assert (np.diff(tr.scores, axis=2) <= 0).all()
    assert res.report["per_file"]["routing_pretrained.json"]["weights_order"] == "ascending"
    assert set(tr.experts[0, 0].tolist()) == set(cell["experts"])
    assert tr.experts[0, 0, 0] == cell["experts"][int(np.argmax(cell["weights"]))]
    roundtrip(tr, tmp_path)
    mlx = import_path(need(shared_traces,
                           f"{QWEN}/data/routing_traces/routing_pretrained.mlx-83eeb5f.json"))
    assert mlx.trace.experts.shape == (164, 40, 8)
    assert mlx.report["cells_reordered"] == 0


def test_qwen_mixed_models_refused(shared_traces):
    d = need(shared_traces, QWEN)
    with pytest.raises(TraceError, match="one model"):
        import_path(d)


# ---------------------------------------------------------------- OLMoE counts
def test_olmoe_counts(shared_traces, tmp_path):
    d = need(shared_traces, OLMOE)
    with pytest.raises(ConfigError, match="several models"):
        import_path(d)
    res = import_path(d, options={"model": "olmoe"})
    c = res.counts
    assert res.trace is None and c.model == "olmoe-1b-7b" and c.top_k == 8
    assert c.model_layers == [0, 7, 15] and c.layer_pairs == [(0, 7), (7, 15)]
    assert c.counts["arxiv"].shape == (3, 64)
    assert c.counts["arxiv"].sum(axis=1).tolist() == [1_671_168] * 3
    assert c.tokens("arxiv") == 208_896
    pop = c.popularity("arxiv")
    assert np.allclose(pop.sum(axis=1), 1.0)
    assert pop[0].max() == pytest.approx(0.122, abs=5e-4)
    assert pop.max(axis=1) == pytest.approx([0.122, 0.098, 0.117], abs=5e-4)
    for dom in c.crosslayer:
        assert c.crosslayer[dom].sum(axis=(1, 2)).tolist() == [c.counts[dom][0].sum()] * 2
        assert c.crosslayer_top1[dom].sum(axis=(1, 2)).tolist() == [c.top1[dom][0].sum()] * 2
    # the converted JSON holds the same numbers
    j = import_path(d / "expert_counts_converted.json", options={"model": "olmoe"}).counts
    for kind in ("counts", "top1", "crosslayer", "crosslayer_top1"):
        for dom, arr in c.family(kind).items():
            assert np.array_equal(arr, j.family(kind)[dom]), (kind, dom)
    back = read_counts(write_counts(c, tmp_path / "c.parquet"))
    for kind in ("counts", "top1", "crosslayer", "crosslayer_top1"):
        for dom, arr in c.family(kind).items():
            assert np.array_equal(arr, back.family(kind)[dom]), (kind, dom)
    assert back.model == c.model and back.layer_pairs == c.layer_pairs


def test_mixtral_counts(shared_traces):
    c = import_path(need(shared_traces, f"{OLMOE}/mistral")).counts
    assert c.model == "mixtral-8x7b" and c.top_k == 2 and c.model_num_layers == 32
    assert c.counts["arxiv"].shape == (3, 8)
    assert c.counts["arxiv"].sum(axis=1).tolist() == [417_792] * 3
    shares = c.popularity("arxiv")
    assert shares.min() == pytest.approx(0.061, abs=1e-3)
    assert shares.max() == pytest.approx(0.159, abs=1e-3)
    for dom in c.crosslayer:
        assert (c.crosslayer[dom].sum(axis=(1, 2)) == 417_792).all()


# ---------------------------------------------------------------- detection
def test_detect_format_real_paths(shared_traces):
    cases = {
        f"{MIX}/humaneval_2_routing.jsonl": "mixtral-jsonl",
        f"{MIX}/routing_raw.jsonl": "mixtral-jsonl",
        FLAME: "flame-csv",
        f"{FLAME}/Encoder_Batch_0-32": "flame-csv",
        f"{FLAME}/Decoder_Batch_0-64": "flame-csv",
        NPZ: "moe-beyond",
        f"{DS}/training_data_eamc.tar.xz": "moe-beyond",
        DS: "moe-beyond",
        f"{QWEN}/outputs/experiment_traces": "moe-ocs-json",
        f"{QWEN}/outputs/experiment_traces/cooking_1/routing.json": "moe-ocs-json",
        f"{QWEN}/data/routing_traces/routing_pretrained.json": "moe-ocs-json",
        OLMOE: "olmoe-counts",
        f"{OLMOE}/olmoe": "olmoe-counts",
        f"{OLMOE}/expert_counts_converted.json": "olmoe-counts",
    }
    seen = 0
    for rel, fmt in cases.items():
        p = shared_traces / rel
        if p.exists():
            assert detect_format(p) == fmt, rel
            seen += 1
    assert seen
    for rel in (f"{MIX}/humaneval_2_outputs.jsonl", "SOURCES.md", f"{DS}/tagged_puffin_prompts.txt",
                f"{QWEN}/outputs/experiment_traces/manifest.json"):
        p = shared_traces / rel
        if p.exists():
            with pytest.raises(TraceError, match="unrecognised format"):
                detect_format(p)


# ============================================================================ synthetic files
def _mix_cell(t: int, layer: int) -> tuple[list[int], list[float]]:
    return [(t + layer) % 8, (t + layer + 3) % 8], [0.6 + 0.01 * t, 0.4 - 0.01 * t]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mix_raw(path: Path, n_pre=3, n_dec=2, drop=()) -> Path:
    rows = []
    for layer in range(32):
        for p in range(n_pre):
            if (p, layer) not in drop:
                e, g = _mix_cell(p, layer)
                rows.append({"dataset": "humaneval", "problem_id": 0, "layer": layer,
                             "token_pos": p, "experts": e, "gating_probs": g})
    for s in range(n_dec):
        for layer in range(32):
            if (n_pre + s, layer) not in drop:
                e, g = _mix_cell(n_pre + s, layer)
                rows.append({"dataset": "humaneval", "problem_id": 0, "layer": layer,
                             "token_pos": 0, "experts": e, "gating_probs": g})
    return _write_jsonl(path, rows)


def test_synthetic_mixtral_raw_imputes_missing_row(tmp_path):
    drop = {(0, 2), (4, 5), (3, 31)}   # first prefill token, a decode token, a step's last layer
    f = _mix_raw(tmp_path / "routing_raw.jsonl", drop=drop)
    assert detect_format(f) == "mixtral-jsonl"
    res = import_path(f)
    tr = res.trace
    assert tr.phase.tolist() == [PREFILL] * 3 + [DECODE] * 2
    assert tr.token.tolist() == [0, 1, 2, 3, 4]
    assert {tuple(x) for x in np.argwhere(tr.imputed).tolist()} == drop
    assert res.report["imputed_cells"] == 3
    assert tr.experts[0, 2].tolist() == _mix_cell(1, 2)[0]     # nearest later (first token)
    assert tr.experts[4, 5].tolist() == _mix_cell(3, 5)[0]     # nearest earlier
    assert tr.experts[3, 31].tolist() == _mix_cell(2, 31)[0]   # earlier, across phases
    for t in range(5):
        for layer in range(32):
            if (t, layer) not in drop:
                assert tr.experts[t, layer].tolist() == _mix_cell(t, layer)[0]
    roundtrip(tr, tmp_path)
    dropped = import_path(f, options={"gaps": "drop-token"}).trace
    assert dropped.token.tolist() == [1, 2]
    with pytest.raises(TraceError) as ei:
        import_path(f, options={"gaps": "error"})
    assert (ei.value.token, ei.value.layer) == (0, 2)


def test_synthetic_mixtral_decode_two_datasets(tmp_path):
    rows = []
    for ds, prob, n in (("humaneval", 0, 4), ("humaneval", 1, 3), ("gsm8k", 0, 2)):
        for layer in range(32):
            m = n - 1 if (ds, prob, layer) == ("humaneval", 0, 7) else n   # a lost row
            for t in range(m):
                e, g = _mix_cell(t, layer)
                rows.append({"dataset": ds, "problem_id": prob, "layer": layer,
                             "experts": e, "gating_probs": g[::-1] if t == 1 else g,
                             "token_idx": t})
    f = _write_jsonl(tmp_path / "x_2_routing.jsonl", rows)
    res = import_path(f)
    tr = res.trace
    assert tr.meta.notes["request_map"] == {"0": "humaneval/0", "1": "humaneval/1",
                                            "2": "gsm8k/0"}
    ids, starts, ends = tr.request_bounds()
    assert ids.tolist() == [0, 1, 2] and (ends - starts).tolist() == [3, 3, 2]
    assert res.report["truncation"]["0"]["rows_dropped"] == 31
    # token 1 had ascending probs: re-sorted, experts swapped with them
    assert res.report["cells_reordered_by_score"] > 0
    assert (np.diff(tr.scores, axis=2) <= 0).all()
    assert tr.experts[1, 0].tolist() == _mix_cell(1, 0)[0][::-1]
    with pytest.raises(TraceError, match="cannot be recovered"):
        import_path(f, options={"gaps": "error"})


def test_synthetic_mixtral_malformed_line(tmp_path):
    f = _mix_raw(tmp_path / "routing_raw.jsonl")
    lines = f.read_text().splitlines()
    lines[2] = lines[2][:-5]                       # truncate line 3
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError, match="line 3 is not valid JSON") as ei:
        import_path(f, fmt="mixtral-jsonl")
    assert ei.value.source == str(f) and ei.value.row == 3
    lines = f.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["experts"] = [1, 9]
    lines[1], lines[2] = json.dumps(bad), lines[0]
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError, match="out of range") as ei:
        import_path(f, fmt="mixtral-jsonl")
    assert ei.value.row == 2 and ei.value.field == "experts"


def _flame_csv(path: Path, rows: np.ndarray, layer: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "layer_id,token_id," + ",".join(f"expert_{e}" for e in range(64))
    lines = [header] + [f"0,{i}," + ",".join(f"{x:g}" for x in r) for i, r in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def _flame_scores(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sc = np.zeros((n, 64))
    for i in range(n):
        sc[i, rng.choice(64, 6, replace=False)] = np.round(rng.uniform(0.01, 0.2, 6), 4)
    return sc


def test_synthetic_flame(tmp_path):
    enc = tmp_path / "Encoder_Batch_0-32"
    truth = {}
    for layer in range(2, 10):
        truth[layer] = _flame_scores(4, layer)
        _flame_csv(enc / f"Layer_{layer}" / f"m_layer{layer}_x.csv", truth[layer], layer)
    res = import_path(enc)
    tr = res.trace
    assert tr.experts.shape == (4, 8, 6) and tr.num_requests() == 1
    for layer in range(2, 10):
        sc = truth[layer][1]
        assert tr.experts[1, layer - 2].tolist() == np.argsort(-sc, kind="stable")[:6].tolist()
        assert tr.scores[1, layer - 2] == pytest.approx(np.sort(sc)[::-1][:6])
    assert import_path(enc, options={"request_tokens": "2"}).trace.num_requests() == 2
    # decoder layout: 2 positions x 3 chunks
    dec = tmp_path / "Decoder_Batch_0-64"
    for pos, name in enumerate(("1st", "2nd")):
        for layer in range(2, 10):
            _flame_csv(dec / name / f"Layer_{layer}" / f"m_layer{layer}_x_3x512.csv",
                       _flame_scores(3, 100 * pos + layer), layer)
    d = import_path(dec).trace
    assert d.request_id.tolist() == [0, 0, 1, 1, 2, 2] and d.token.tolist() == [0, 1] * 3
    both = import_path(tmp_path)
    assert both.trace.num_requests() == 4
    # defect: a row with 5 non-zeros
    bad = truth[5].copy()
    bad[2, np.flatnonzero(bad[2])[0]] = 0.0
    f = enc / "Layer_5" / "m_layer5_x.csv"
    _flame_csv(f, bad, 5)
    with pytest.raises(TraceError, match="5 non-zero") as ei:
        import_path(enc)
    assert ei.value.source == str(f) and ei.value.row == 4      # line 4 = data row 2
    # defect: a layer folder missing
    _flame_csv(f, truth[5], 5)
    (enc / "Layer_9" / "m_layer9_x.csv").unlink()
    with pytest.raises(TraceError, match="expected exactly one CSV"):
        import_path(enc)


def _ds_csv(rows: list[tuple[int, str, list[int]]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["Layer ID", "Batch Number", "Token", "Activated Expert IDs"])
    for layer, tok, ids in rows:
        w.writerow([layer, 0, tok, str(ids)])
    return buf.getvalue().encode()


TOKS = ["<｜begin▁of▁sentence｜>", 'a,"b"', "Ġc"]


def _ds_rows(seed: int, bad=None):
    rng = np.random.default_rng(seed)
    rows = []
    for layer in (1, 2):
        for t, tok in enumerate(TOKS):
            ids = rng.choice(64, 6, replace=False).tolist()
            if bad == (layer, t):
                ids[3] = 64
            rows.append((layer, tok, ids))
    return rows


def test_synthetic_deepseek_csv_folder_and_archive(tmp_path):
    d = tmp_path / "training_data_eamc"
    d.mkdir()
    rows = {n: _ds_rows(n) for n in (2, 1)}
    for n, r in rows.items():
        (d / f"prompt_{n}_data.csv").write_bytes(_ds_csv(r))
    assert detect_format(d) == "moe-beyond"
    tr = import_path(d, options={"num_layers": "2"}).trace
    assert tr.request_id.tolist() == [1, 1, 1, 2, 2, 2] and tr.token.tolist() == [0, 1, 2] * 2
    assert tr.experts[1, 1].tolist() == rows[1][4][2]            # prompt 1, token 1, layer 2
    assert tr.meta.expert_order == "unordered"
    arc = tmp_path / "a.tar.xz"
    with tarfile.open(arc, "w:xz") as tf:
        for n in (2, 1):
            tf.add(d / f"prompt_{n}_data.csv", arcname=f"training_data_eamc/prompt_{n}_data.csv")
    assert detect_format(arc) == "moe-beyond"
    ta = import_path(arc, options={"num_layers": "2"}).trace
    assert np.array_equal(ta.experts, tr.experts) and np.array_equal(ta.request_id, tr.request_id)
    one = import_path(arc, options={"num_layers": "2", "max_prompts": "1"}).trace
    assert one.num_requests() == 1


def test_synthetic_deepseek_bad_expert_id(tmp_path):
    f = tmp_path / "prompt_7_data.csv"
    f.write_bytes(_ds_csv(_ds_rows(7, bad=(2, 1))))
    with pytest.raises(TraceError, match="expert id 64 out of range") as ei:
        import_path(f, options={"num_layers": "2"})
    assert ei.value.source == str(f)
    assert ei.value.row == 6                      # header + 3 rows of layer 1 + 2nd of layer 2
    assert ei.value.field == "Activated Expert IDs"
    # a token that differs between layers: misaligned rows
    rows = _ds_rows(7)
    rows[4] = (2, "X", rows[4][2])
    f.write_bytes(_ds_csv(rows))
    with pytest.raises(TraceError, match="misaligned"):
        import_path(f, options={"num_layers": "2"})
    # a missing layer with the default 26 layers
    f.write_bytes(_ds_csv(_ds_rows(7)))
    with pytest.raises(TraceError, match="no rows for layer"):
        import_path(f)


def _qwen_json(model_id: str, n_pre=2, n_dec=2, L=2, k=3, E=10, ascending=False) -> dict:
    rng = np.random.default_rng(len(model_id))
    routes = []
    for t in range(n_pre + n_dec):
        layers = {}
        for layer in range(L):
            e = rng.choice(E, k, replace=False).tolist()
            w = sorted(rng.uniform(0.01, 0.3, k).round(4).tolist(), reverse=not ascending)
            layers[str(layer)] = {"experts": e, "weights": w}
        routes.append({"token_pos": t, "token_id": 1, "token_str": "x",
                       "phase": "prefill" if t < n_pre else "decode", "layers": layers})
    return {"meta": {"model_id": model_id, "model_type": "qwen2_moe", "num_layers": L,
                     "num_moe_layers": L, "num_experts": E, "top_k": k, "prompt_len": n_pre,
                     "generated_len": n_dec, "backend": "mlx"}, "routes": routes}


def test_synthetic_qwen(tmp_path):
    a = _qwen_json("./models/Qwen3.6-35B-A3B-4bit", ascending=True)
    f = tmp_path / "r" / "b" / "routing.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(a, indent=1))
    assert detect_format(f) == "moe-ocs-json"
    tr = import_path(f).trace
    assert tr.meta.model == "qwen3.6-35b-a3b" and tr.phase.tolist() == [0, 0, 1, 1]
    cell = a["routes"][3]["layers"]["1"]
    assert tr.experts[3, 1].tolist() == cell["experts"][::-1]
    assert tr.scores[3, 1] == pytest.approx(cell["weights"][::-1])
    g = tmp_path / "r" / "a" / "routing.json"
    g.parent.mkdir()
    g.write_text(json.dumps(_qwen_json("./models/Qwen3.6-35B-A3B-4bit")))
    two = import_path(tmp_path / "r").trace
    assert two.num_requests() == 2
    assert two.meta.notes["requests"] == {"0": "a/routing.json", "1": "b/routing.json"}
    h = tmp_path / "r" / "c" / "routing.json"
    h.parent.mkdir()
    h.write_text(json.dumps(_qwen_json("Qwen1.5-MoE-A2.7B-Chat-4bit")))
    with pytest.raises(TraceError, match="one model"):
        import_path(tmp_path / "r")
    h.write_text(json.dumps(_qwen_json("Qwen1.5-MoE-A2.7B-Chat-4bit"), indent=1)[:-40])
    with pytest.raises(TraceError, match="not valid JSON") as ei:
        import_path(h, fmt="moe-ocs-json")
    assert ei.value.source == str(h) and ei.value.row
    bad = _qwen_json("Qwen1.5-MoE-A2.7B-Chat-4bit")
    bad["routes"][1]["layers"]["1"]["experts"][0] = 99
    h.write_text(json.dumps(bad))
    with pytest.raises(TraceError, match="out of range") as ei:
        import_path(h)
    assert (ei.value.row, ei.value.layer) == (1, 1)
    unknown = _qwen_json("Some-Other-MoE")
    h.write_text(json.dumps(unknown))
    with pytest.raises(TraceError, match="unknown model_id"):
        import_path(h)
    assert import_path(h, options={"model": "my-moe"}).trace.meta.model == "my-moe"


def test_synthetic_olmoe_pickles_and_restricted_unpickler(tmp_path):
    m = tmp_path / "routing_output" / "mistral"
    for fam in ("expert_counts", "expert_counts_top1"):
        (m / fam).mkdir(parents=True)
    c = [Counter({np.int64(e): 3 for e in range(8)}) for layer in range(3)]
    (m / "expert_counts" / "arxiv.pkl").write_bytes(pickle.dumps(c))
    t1 = [Counter({np.int64(e): 1 for e in range(8)}) for _ in range(3)]
    (m / "expert_counts_top1" / "arxiv.pkl").write_bytes(pickle.dumps(t1))
    assert detect_format(tmp_path / "routing_output") == "olmoe-counts"
    with pytest.raises(TraceError, match="counts/top1 ratio"):
        import_path(m)          # 24 selections for 8 top-1 choices: not Mixtral's top-2
    c = [Counter({np.int64(e): 2 for e in range(8)}) for _ in range(3)]
    (m / "expert_counts" / "arxiv.pkl").write_bytes(pickle.dumps(c))
    res = import_path(tmp_path / "routing_output")
    assert res.counts.counts["arxiv"].tolist() == [[2] * 8] * 3
    assert res.counts.popularity().tolist() == [[0.125] * 8] * 3
    (m / "expert_counts" / "book.pkl").write_bytes(pickle.dumps([OrderedDict()] * 3))
    with pytest.raises(TraceError, match="collections.OrderedDict is not allowed") as ei:
        import_path(m)
    assert ei.value.source.endswith("book.pkl")


def test_expert_counts_parquet_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    c = ExpertCounts(model="m", source="s", model_layers=[0, 5], num_experts=4, top_k=2,
                     counts={"a": rng.integers(0, 9, (2, 4)), "b": np.zeros((2, 4), np.int64)},
                     crosslayer={"a": rng.integers(0, 9, (1, 4, 4))}, layer_pairs=[(0, 5)],
                     notes={"x": 1})
    back = read_counts(write_counts(c, tmp_path / "c.parquet"))
    assert back.domains == ["a", "b"] and back.top1 is None
    assert np.array_equal(back.counts["a"], c.counts["a"]) and not back.counts["b"].any()
    assert np.array_equal(back.crosslayer["a"], c.crosslayer["a"])
    assert back.notes == {"x": 1} and back.layer_pairs == [(0, 5)]
    with pytest.raises(TraceError, match="no 'moesim.counts' metadata"):
        tr_path = tmp_path / "t.parquet"
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"x": [1]}), tr_path)
        read_counts(tr_path)


def test_detect_format_unknown_file(tmp_path):
    f = tmp_path / "notes.jsonl"
    f.write_text('{"problem_id": 0, "prompt": "x"}\n')
    with pytest.raises(TraceError, match="unrecognised format"):
        detect_format(f)
    with pytest.raises(TraceError, match="no such file"):
        import_path(tmp_path / "absent.jsonl")


@pytest.mark.parametrize("option, needle", [
    ("num_layers=0", "--option.num_layers: must be >= 1, got 0"),
    ("num_layers=abc", "--option.num_layers: must be a number"),
    ("phase=train", "--option.phase: must be one of prefill, decode"),
    ("batch=both", "--option.batch: must be one of auto, encoder, decoder"),
    ("colour=red", "--option.colour: unknown key"),
])
def test_import_options_are_checked_with_one_line_errors(tmp_path, capsys, option, needle):
    """--option values go through the same checks as config keys (type, min, choices)."""
    from conftest import assert_one_line_error
    enc = tmp_path / "Encoder_Batch_0-32"
    for layer in range(2, 10):
        _flame_csv(enc / f"Layer_{layer}" / f"m_layer{layer}_x.csv", _flame_scores(4, layer), layer)
    assert_one_line_error(capsys, ["trace", "import", str(enc), "-o", str(tmp_path / "t.parquet"),
                                   "--option", option], needle)
