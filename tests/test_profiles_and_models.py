"""Bundled data: device profiles (device_profiles/*.yaml) and the model catalog (catalog.yaml).

Checks that every bundled profile loads, converts to SI and carries a source for every number;
spot-checks values against shared/reference/hardware_and_models.md; checks that the profile loader
rejects malformed files by naming the key; and recomputes the reference's derived model sizes
(§2.1 "Computed total / active", §2.2 bytes per expert and KV bytes) from the catalog specs.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from simulator.errors import ConfigError
from simulator.hardware.profiles import (
    _load_dir,
    all_profiles,
    compute_spec,
    link_spec,
    memory_spec,
    parse_profile,
)
from simulator.models.spec import _norm, catalog, find_model
from simulator.resources import bundled_dir

SI_VIEW = {"memory": memory_spec, "link": link_spec, "compute": compute_spec}
EVIDENCE_TAG = re.compile(r"\[(DS|MP|EST|UNV)|\(2nd\)")

EXPECTED_PROFILES = {
    "compute": {"h100_sxm", "a100_sxm_80g", "mobile_xpu", "h200_sxm"},
    "memory": {"hbm3_h100_sxm", "hbm2e_a100_80g", "hbm3e_h200", "ddr5_4800_8ch", "ddr4_3200_8ch",
               "cxl_a", "cxl_b", "cxl_c", "cxl_d", "lpddr4_x32", "lpddr5x_8533_x64", "ufs31",
               "ufs40", "nvme_gen4", "nvme_gen5"},
    "link": {"pcie4_x16", "pcie5_x16", "pcie4_x4", "cxl_x8", "cxl_x16", "nvlink4", "ufs_gear4_x2"},
}


# ---------------------------------------------------------------------- bundled profiles
@pytest.fixture(scope="module")
def profiles():
    return all_profiles()


def test_expected_profiles_are_bundled(profiles):
    for kind, names in EXPECTED_PROFILES.items():
        for name in names:
            assert name in profiles, f"missing profile {name}"
            assert profiles[name].kind == kind, name


def test_every_profile_converts_to_si(profiles):
    for name, prof in profiles.items():
        spec = SI_VIEW[prof.kind](prof)
        assert spec.profile == name


def test_file_name_is_profile_name(profiles):
    for name, prof in profiles.items():
        if Path(prof.path).resolve().parent == bundled_dir("device_profiles").resolve():
            assert Path(prof.path).stem == name


def test_every_value_has_a_tagged_source(profiles):
    """Every number names where it comes from, with the reference doc's evidence tag."""
    for name, prof in profiles.items():
        assert prof.description, name
        for key, sourced in prof.values.items():
            assert sourced.source.strip(), f"{name}.{key}: empty source"
            assert EVIDENCE_TAG.search(sourced.source), f"{name}.{key}: no evidence tag"
            assert "hardware_and_models.md" in sourced.source, f"{name}.{key}: no reference citation"


def test_compute_default_memory_exists(profiles):
    for name, prof in profiles.items():
        if prof.kind == "compute":
            assert prof.default_memory in profiles, name
            assert profiles[prof.default_memory].kind == "memory", name


def test_shared_bus_flags(profiles):
    """HBM and DRAM have one shared bus; Flash and NVMe do not."""
    for name in ("hbm3_h100_sxm", "hbm2e_a100_80g", "hbm3e_h200", "ddr5_4800_8ch",
                 "ddr4_3200_8ch", "lpddr4_x32", "lpddr5x_8533_x64"):
        assert memory_spec(profiles[name]).shared_bus, name
    for name in ("ufs31", "ufs40", "nvme_gen4", "nvme_gen5"):
        assert not memory_spec(profiles[name]).shared_bus, name


def test_hbm_static_power_is_counted_on_the_gpu(profiles):
    """HBM background power sits in the GPU board's static power, never in both."""
    for gpu in ("h100_sxm", "a100_sxm_80g", "h200_sxm"):
        c = profiles[gpu]
        assert compute_spec(c).static_power_w > 0
        assert memory_spec(profiles[c.default_memory]).static_power_w == 0


def test_spot_checks_against_reference(profiles):
    p = profiles
    # §1.6: PCIe 5.0 x16 measured 55 GB/s H2D, 57 GB/s D2H; PCIe 4.0 x16 25 GB/s H2D
    pcie5 = link_spec(p["pcie5_x16"])
    assert pcie5.bw == pytest.approx(55e9) and pcie5.reverse_bw == pytest.approx(57e9)
    assert link_spec(p["pcie4_x16"]).bw == pytest.approx(25e9)
    # §1.4: CXL x8 31.5 GB/s per direction; seed expander latencies
    assert link_spec(p["cxl_x8"]).bw == pytest.approx(31.5e9)
    assert link_spec(p["cxl_x16"]).bw == pytest.approx(63.0e9)
    for name, ns in (("cxl_a", 214), ("cxl_b", 239), ("cxl_d", 271)):
        assert memory_spec(p[name]).latency_s == pytest.approx(ns * 1e-9)
    assert memory_spec(p["cxl_c"]).capacity_bytes == pytest.approx(16e9)
    # §1.10: SliceMoE LPDDR4 ~104 Gb/s = 13 GB/s, 8 GB, 1.5 pJ/bit
    lp = memory_spec(p["lpddr4_x32"])
    assert lp.read_bw == pytest.approx(13e9)
    assert lp.capacity_bytes == pytest.approx(8e9)
    assert lp.read_j_per_byte == pytest.approx(1.5e-12 * 8)
    # §1.10: SliceMoE UFS 3.1 10 Gb/s, 128 GB, 103 pJ/bit
    ufs = memory_spec(p["ufs31"])
    assert ufs.read_bw == pytest.approx(10e9 / 8)
    assert ufs.capacity_bytes == pytest.approx(128e9)
    assert ufs.read_j_per_byte == pytest.approx(103e-12 * 8)
    # §1.7: SliceMoE XPU 16.4 TOPS INT8 at 3.18 TOPS/W
    xpu = compute_spec(p["mobile_xpu"])
    assert xpu.flops_for("int8") == pytest.approx(16.4e12)
    assert xpu.j_per_flop == pytest.approx(1 / 3.18e12, rel=1e-3)
    # §1.1: H100 989 TFLOPS BF16, 1,979 FP8 dense; A100 HBM2e 1,774 GB/s measured
    h100 = compute_spec(p["h100_sxm"])
    assert h100.flops_for("bf16") == pytest.approx(989e12)
    assert h100.flops_for("fp8") == pytest.approx(1979e12)
    assert memory_spec(p["hbm2e_a100_80g"]).read_bw == pytest.approx(1774e9)
    # §1.5: NVMe Gen4 7.45 GB/s read
    assert memory_spec(p["nvme_gen4"]).read_bw == pytest.approx(7.45e9)


# ---------------------------------------------------------------------- loader rejections
GOOD_LINK = """\
name: test_link
kind: link
description: a test link
bw_gbytes_per_s: {value: 10, source: "test value [EST]"}
latency_ns: {value: 100, source: "test value [EST]"}
energy_pj_per_bit: {value: 5, source: "test value [EST]"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "test_link.yaml").write_text(text)
    return tmp_path


def test_good_tiny_profile_loads(tmp_path):
    profs = _load_dir(_write(tmp_path, GOOD_LINK))
    assert link_spec(profs["test_link"]).bw == pytest.approx(10e9)


@pytest.mark.parametrize("text, key", [
    # a bare number, without its source
    (GOOD_LINK.replace('latency_ns: {value: 100, source: "test value [EST]"}', "latency_ns: 100"),
     "latency_ns"),
    # an unknown key
    (GOOD_LINK + 'bandwidth: {value: 1, source: "typo [EST]"}\n', "bandwidth"),
    # a negative value
    (GOOD_LINK.replace("value: 100,", "value: -5,"), "latency_ns"),
    # a missing required key
    (GOOD_LINK.replace('energy_pj_per_bit: {value: 5, source: "test value [EST]"}\n', ""),
     "energy_pj_per_bit"),
    # an empty source
    (GOOD_LINK.replace('{value: 5, source: "test value [EST]"}', '{value: 5, source: ""}'),
     "energy_pj_per_bit"),
])
def test_loader_rejects_and_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as exc:
        _load_dir(_write(tmp_path, text))
    assert key in str(exc.value)
    assert "test_link.yaml" in str(exc.value)


def test_parse_profile_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="kind"):
        parse_profile({"name": "x", "kind": "disk"}, source="inline")


def test_parse_profile_rejects_non_bool_flag():
    data = {"name": "m", "kind": "memory", "shared_bus": "yes"}
    with pytest.raises(ConfigError, match="shared_bus"):
        parse_profile(data, source="inline")


# ---------------------------------------------------------------------- model catalog
REQUIRED_MODELS = {
    "mixtral-8x7b", "mixtral-8x22b", "switch-base-128", "deepseek-v2-lite", "deepseek-v2",
    "deepseek-v3", "qwen1.5-moe-a2.7b", "qwen2-57b-a14b", "qwen3-30b-a3b", "qwen3-235b-a22b",
    "olmoe-1b-7b", "phi-3.5-moe", "dbrx", "gpt-oss-20b", "gpt-oss-120b", "flame-moe-290m",
    "qwen3.6-35b-a3b",
}

# Reference §2.2, "Bytes / routed expert (bf16)".
EXPERT_BYTES_BF16 = {
    "mixtral-8x7b": 352_321_536,
    "mixtral-8x22b": 603_979_776,
    "switch-base-128": 9_437_184,
    "deepseek-v2-lite": 17_301_504,
    "deepseek-v2": 47_185_920,
    "deepseek-v3": 88_080_384,
    "qwen1.5-moe-a2.7b": 17_301_504,
    "qwen2-57b-a14b": 55_050_240,
    "qwen3-30b-a3b": 9_437_184,
    "qwen3-235b-a22b": 37_748_736,
    "olmoe-1b-7b": 12_582_912,
    "phi-3.5-moe": 157_286_400,
    "dbrx": 396_361_728,
    "gpt-oss-20b": 49_766_400,
    "gpt-oss-120b": 49_766_400,
}

# Reference §2.2, "KV B/token/layer (bf16)" (MLA: the cached latent; Switch: decoder self-attn).
KV_BYTES_PER_TOKEN_PER_LAYER = {
    "mixtral-8x7b": 4_096,
    "mixtral-8x22b": 4_096,
    "switch-base-128": 3_072,
    "deepseek-v2-lite": 1_152,
    "deepseek-v2": 1_152,
    "deepseek-v3": 1_152,
    "qwen1.5-moe-a2.7b": 8_192,
    "qwen2-57b-a14b": 2_048,
    "qwen3-30b-a3b": 2_048,
    "qwen3-235b-a22b": 2_048,
    "olmoe-1b-7b": 8_192,
    "phi-3.5-moe": 4_096,
    "dbrx": 4_096,
    "gpt-oss-20b": 2_048,
    "gpt-oss-120b": 2_048,
}

# Reference §2.1, "Computed total / active (this doc)", in billions. None = not compared (see below).
COMPUTED_TOTAL_ACTIVE_B = {
    "mixtral-8x7b": (46.70, 12.88),
    "mixtral-8x22b": (140.6, 39.2),
    # Switch: the spec ignores decoder cross-attention (~28M parameters); that is negligible in the
    # 7.42B total but is ~12% of the ~0.22B active count, so active is not compared.
    "switch-base-128": (7.42, None),
    "deepseek-v2-lite": (15.5, 2.44),
    # DeepSeek-V2 active: the reference notes that its own 20.0B misses the published 21B; the
    # spec gives 21.4B. Checked against the published figure in a separate test instead.
    "deepseek-v2": (234.4, None),
    "deepseek-v3": (671.0, 37.6),
    "qwen1.5-moe-a2.7b": (14.32, 2.69),
    "qwen2-57b-a14b": (57.4, 14.3),
    "qwen3-30b-a3b": (30.53, 3.35),
    "qwen3-235b-a22b": (235.1, 22.2),
    "olmoe-1b-7b": (6.92, 1.28),
    "phi-3.5-moe": (41.87, 6.64),
    "dbrx": (131.6, 36.5),
    "gpt-oss-20b": (20.91, 3.61),
    "gpt-oss-120b": (116.79, 5.13),
}

# Active counts in the reference that include only ONE of the two (untied) embedding matrices,
# while ModelSpec.active_params counts both: gpt-oss (stated in the reference: "one embedding
# matrix counted") and DeepSeek-V2-Lite (its computed 2.44B is the spec's 2.66B minus exactly
# one 102400 x 2048 matrix; the publisher's 2.4B follows the same convention). For these the
# comparison subtracts one embedding matrix from the spec's active count.
ACTIVE_WITH_ONE_EMBEDDING = {"gpt-oss-20b", "gpt-oss-120b", "deepseek-v2-lite"}
# DeepSeek-V2-Lite's reference total (15.5B) follows the same one-matrix convention: the spec's
# total is 1.33 % above it, and exactly equal (-0.02 %) minus one 102400 x 2048 matrix.
TOTAL_WITH_ONE_EMBEDDING = {"deepseek-v2-lite"}
# Largest remaining difference: DeepSeek-V2 total +0.57 %. Tight enough that a dropped or
# doubled embedding matrix (0.8-2.8 % of most totals) fails.
PARAM_REL_TOL = 6e-3


@pytest.fixture(scope="module")
def models():
    return catalog()


def test_catalog_has_required_models(models):
    assert REQUIRED_MODELS <= set(models)


def test_every_model_has_sources_and_unique_aliases(models):
    seen: dict[str, str] = {}
    for name, spec in models.items():
        assert spec.sources, name
        assert spec.display_name, name
        for key in {_norm(name), *(_norm(a) for a in spec.aliases)}:
            assert seen.setdefault(key, name) == name, f"alias {key} used by {seen[key]} and {name}"


@pytest.mark.parametrize("name, expected", sorted(EXPERT_BYTES_BF16.items()))
def test_expert_bytes_match_reference(models, name, expected):
    assert models[name].expert_bytes("bf16") == expected


@pytest.mark.parametrize("name, expected", sorted(KV_BYTES_PER_TOKEN_PER_LAYER.items()))
def test_kv_bytes_match_reference(models, name, expected):
    assert models[name].kv_bytes_per_token_per_layer("bf16") == expected


@pytest.mark.parametrize("name, expected", sorted(COMPUTED_TOTAL_ACTIVE_B.items()))
def test_param_counts_match_reference(models, name, expected):
    spec = models[name]
    total_b, active_b = expected
    total = spec.total_params
    if name in TOTAL_WITH_ONE_EMBEDDING:
        total -= spec.vocab * spec.hidden
    assert total / 1e9 == pytest.approx(total_b, rel=PARAM_REL_TOL)
    if active_b is not None:
        active = spec.active_params
        if name in ACTIVE_WITH_ONE_EMBEDDING:
            active -= spec.vocab * spec.hidden
        assert active / 1e9 == pytest.approx(active_b, rel=PARAM_REL_TOL)


def test_deepseek_v2_active_matches_published(models):
    """Published 21B active (DeepSeek-V2 README); the reference's own computation gives 20.0B."""
    assert models["deepseek-v2"].active_params / 1e9 == pytest.approx(21.0, rel=0.02)


def test_models_outside_the_reference_table(models):
    # FLAME-MoE-290M-1.3B: 290M active / 1.3B total (CMU-FLAME model and trace cards).
    flame = models["flame-moe-290m"]
    assert flame.total_params / 1e9 == pytest.approx(1.3, rel=0.02)
    assert flame.active_params / 1e9 == pytest.approx(0.29, rel=0.05)
    assert (flame.layers, flame.moe_layers, flame.dense_layers) == (9, 8, 1)
    # Qwen3.6-35B-A3B: 35B / 3B published; the spec leaves out the attention output gate, the
    # linear-attention layers' own shapes, MTP and vision, so only a loose check.
    qwen = models["qwen3.6-35b-a3b"]
    assert qwen.total_params / 1e9 == pytest.approx(35, rel=0.05)
    assert qwen.active_params / 1e9 == pytest.approx(3, rel=0.05)
    assert qwen.attention.full_attention_every == 4
    assert qwen.kv_layers == 10


@pytest.mark.parametrize("name, moe_layers, experts, top_k", [
    # the shapes of the routing traces in shared/traces (SOURCES.md)
    ("mixtral-8x7b", 32, 8, 2),
    ("flame-moe-290m", 8, 64, 6),
    ("deepseek-v2-lite", 26, 64, 6),
    ("qwen1.5-moe-a2.7b", 24, 60, 4),
    ("qwen3.6-35b-a3b", 40, 256, 8),
    ("olmoe-1b-7b", 16, 64, 8),
])
def test_trace_models_have_trace_shapes(models, name, moe_layers, experts, top_k):
    spec = models[name]
    assert (spec.moe_layers, spec.num_experts, spec.top_k) == (moe_layers, experts, top_k)


@pytest.mark.parametrize("alias, name", [
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
    ("Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
    ("Qwen1.5-MoE-A2.7B-Chat-4bit", "qwen1.5-moe-a2.7b"),
    ("Qwen1.5-MoE-A2.7B-Chat", "qwen1.5-moe-a2.7b"),
    ("DeepSeek-V2-Lite-Chat", "deepseek-v2-lite"),
    ("OLMoE-1B-7B-0924", "olmoe-1b-7b"),
    ("Qwen3.6-35B-A3B-4bit", "qwen3.6-35b-a3b"),
    ("FLAME-MoE-290M-1.3B", "flame-moe-290m"),
    ("google/switch-base-128", "switch-base-128"),
    ("DEEPSEEK-V3", "deepseek-v3"),
])
def test_find_model_resolves_aliases(alias, name):
    spec = find_model(alias)
    assert spec is not None and spec.name == name


def test_find_model_unknown_returns_none():
    assert find_model("no-such-model-8x1b") is None
