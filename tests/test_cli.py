"""The command line: bad inputs give one-line errors and a non-zero exit; the results folder
honours its contract (summary.json keys are documented metrics; --set overrides any key)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from simulator.cli import build_parser, main
from simulator.metrics.definitions import definition_of
from simulator.resources import default_config_path, default_trace_path
from simulator.results.writer import read_config_metadata

from conftest import assert_one_line_error, run_cli


# ---------------------------------------------------------------------------- bad traces
def _rewrite(tmp_path, name, transform):
    tab = pq.read_table(default_trace_path())
    md = tab.schema.metadata
    out = tmp_path / name
    pq.write_table(transform(tab).replace_schema_metadata(md), out)
    return out


def _set_list_col(tab, col, values, k):
    idx = tab.schema.get_field_index(col)
    typ = tab.schema.field(col).type.value_type
    return tab.set_column(idx, col, pa.FixedSizeListArray.from_arrays(pa.array(values, type=typ), k))


def test_trace_expert_out_of_range(tmp_path, capsys):
    def t(tab):
        v = tab.column("experts").combine_chunks().flatten().to_numpy().copy()
        v[2 * 5000 + 1] = 9
        return _set_list_col(tab, "experts", v, 2)
    f = _rewrite(tmp_path, "oor.parquet", t)
    assert_one_line_error(capsys, ["trace", "validate", str(f)], "oor.parquet", "row 5000",
                          "layer 8", "experts[1]", "out of range")
    assert_one_line_error(capsys, ["run", "--trace", str(f), "-o", str(tmp_path / "r")], "out of range")


def test_trace_missing_layer(tmp_path, capsys):
    f = _rewrite(tmp_path, "gap.parquet", lambda tab: pa.concat_tables([tab.slice(0, 3000), tab.slice(3001)]))
    assert_one_line_error(capsys, ["trace", "validate", str(f)], "gap.parquet", "row 3000",
                          "layer 24", "missing")


def test_trace_nan_score(tmp_path, capsys):
    def t(tab):
        v = tab.column("scores").combine_chunks().flatten().to_numpy().copy()
        v[777] = np.nan
        return _set_list_col(tab, "scores", v, 2)
    f = _rewrite(tmp_path, "nan.parquet", t)
    assert_one_line_error(capsys, ["trace", "validate", str(f)], "row 388", "scores[1]", "nan")


def test_trace_truncated(tmp_path, capsys):
    data = default_trace_path().read_bytes()
    f = tmp_path / "trunc.parquet"
    f.write_bytes(data[: len(data) * 2 // 3])
    assert_one_line_error(capsys, ["trace", "validate", str(f)], "trunc.parquet", "truncated")


def test_trace_without_metadata(tmp_path, capsys):
    f = tmp_path / "plain.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(f)
    assert_one_line_error(capsys, ["trace", "stats", str(f)], "moesim.trace", "trace import")


def test_trace_model_mismatch(tmp_path, capsys):
    assert_one_line_error(capsys, ["run", "--set", "model.name=olmoe-1b-7b", "-o", str(tmp_path)],
                          "8 experts", "olmoe-1b-7b", "64")


# ---------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("setting,needles", [
    ("cache.capacity_gbb=3", ["cache.capacity_gbb", "unknown key", "capacity_gb"]),
    ("workload.batchsize=2", ["workload.batchsize", "unknown key", "batch_size"]),
    ("system.links.pcie.bw_gbytes_per_s=-5", ["system.links.pcie.bw_gbytes_per_s", ">= 0"]),
    ("system.tiers.dram.read_bw_gbytes_per_s=0", ["read_bw_gbytes_per_s", "> 0"]),
    ("cache.capacity_gb=0.1", ["cache.capacity_gb", "below one expert"]),
    ("system.tiers.dram.capacity_gb=0.2", ["system.tiers.dram", "GB of experts"]),
    ("system.tiers.dram.profile=ddr9", ["system.tiers.dram.profile", "unknown memory profile",
                                        "ddr5_4800_8ch"]),
    ("system.compute.profile=pcie5_x16", ["link profile", "expected compute"]),
    ("cache.name=lfru", ["cache.name", "unknown cache policy 'lfru'", "lru"]),
    ("cache.capacity_gb=200", ["capacity_gb", "cannot hold"]),
    ("workload.batch_size=0", ["workload.batch_size", ">= 1"]),
    ("workload.arrivals.process=trace", ["no arrival times"]),
    ("system.tiers.dram.path=[nvlink9]", ["unknown link 'nvlink9'"]),
    ("model.precision=fp7", ["model.precision", "fp8"]),
])
def test_bad_config_values(tmp_path, capsys, setting, needles):
    line = assert_one_line_error(capsys, ["run", "--set", setting, "-o", str(tmp_path)], *needles)
    assert "--set" in line


def test_bad_config_files(tmp_path, capsys):
    assert_one_line_error(capsys, ["run", str(tmp_path / "nope.yaml")], "nope.yaml", "not found")
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\nsystem: [1, 2\n")
    assert_one_line_error(capsys, ["run", str(bad)], "broken.yaml", "invalid YAML", "line")
    cfg = yaml.safe_load(default_config_path().read_text())
    cfg["sytem"] = cfg.pop("system")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(cfg))
    assert_one_line_error(capsys, ["run", str(typo)], "typo.yaml", "sytem", "unknown key")
    assert_one_line_error(capsys, ["run", "--set", "nokeyvalue"], "KEY=VALUE")


def test_bad_profile_file(tmp_path, capsys, monkeypatch):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "mine.yaml").write_text("name: mine\nkind: link\nbw_gbytes_per_s: 10\n"
                                 "latency_ns: {value: 1, source: test}\nenergy_pj_per_bit: {value: 1, source: test}\n")
    monkeypatch.setenv("MOESIM_PROFILES", str(d))
    from simulator.hardware import profiles
    profiles._load_dir.cache_clear()
    try:
        assert_one_line_error(capsys, ["profiles", "list"], "mine.yaml", "bw_gbytes_per_s", "source")
    finally:
        profiles._load_dir.cache_clear()


# ---------------------------------------------------------------------------- help and listing
def test_help_of_every_subcommand(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    for cmd in ("run", "trace", "profiles", "models", "policies", "metrics"):
        assert cmd in top
    def commands(p, prefix):
        """Every command path of the parser tree (walked, so a new subcommand is covered)."""
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield prefix + [name]
                    yield from commands(sub, prefix + [name])

    argvs = list(commands(parser, []))
    assert ["trace", "fit"] in argvs and ["trace", "holdout"] in argvs and len(argvs) >= 13
    for argv in argvs:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv + ["--help"])
        assert e.value.code == 0
        assert "usage: moesim" in capsys.readouterr().out


def test_listings(capsys):
    code, out, _ = run_cli(capsys, "profiles", "list")
    assert code == 0 and "h100_sxm" in out and "cxl_d" in out and "ufs31" in out
    code, out, _ = run_cli(capsys, "profiles", "show", "pcie5_x16")
    assert code == 0 and "source:" in out
    code, out, _ = run_cli(capsys, "models", "show", "mistralai/Mixtral-8x7B-v0.1")
    assert code == 0 and "352,321,536" in out
    code, out, _ = run_cli(capsys, "policies", "cache")
    assert code == 0 and "lru" in out and "belady" in out and "capacity_gb" in out
    code, out, _ = run_cli(capsys, "metrics")
    assert code == 0 and "tpot_s.mean" in out


def test_console_script_is_installed():
    """The installed distribution declares `moesim = simulator.cli:main`, and it runs."""
    from importlib.metadata import entry_points
    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "moesim"]
    assert len(eps) == 1 and eps[0].value == "simulator.cli:main"
    assert eps[0].load() is main
    r = subprocess.run([sys.executable, "-m", "simulator.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("moesim ")


# ---------------------------------------------------------------------------- results contract
def test_run_default_writes_documented_results(tmp_path, capsys):
    out_dir = tmp_path / "res"
    code, out, err = run_cli(capsys, "run", "-o", str(out_dir), "--set", "cache.capacity_gb=12")
    assert code == 0, err
    assert "TTFT" in out and "hit rate" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    undocumented = [k for k in summary if definition_of(k) is None]
    assert not undocumented, undocumented
    assert all(v is None or isinstance(v, (int, float)) for v in summary.values())
    assert summary["cache.capacity_bytes"] == 12e9
    cfg = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert cfg["cache"]["capacity_gb"] == 12
    req = pd.read_parquet(out_dir / "requests.parquet")
    assert len(req) == summary["requests"]
    # the config once per table: the hash on every row, the config in the Parquet metadata;
    # summary.csv alone has the cfg.* columns
    assert not [c for c in req.columns if c.startswith("cfg.")]
    assert req["config_hash"].nunique() == 1
    h, meta_cfg = read_config_metadata(out_dir / "requests.parquet")
    assert meta_cfg["cache"]["capacity_gb"] == 12 and req["config_hash"].iloc[0] == h
    assert (pd.read_csv(out_dir / "summary.csv")["cfg.cache.capacity_gb"] == 12).all()
    tx = pd.read_parquet(out_dir / "transfers.parquet")
    assert tx["bytes"].sum() == pytest.approx(summary["bytes.fetched.prefill"] + summary["bytes.fetched.decode"])
    hw = yaml.safe_load((out_dir / "hardware.yaml").read_text())
    assert hw["links"]["pcie"]["bw_gbytes_per_s"]["source"]
    assert not list(out_dir.glob("*.partial"))


def test_set_changes_results_and_is_reproducible(tmp_path, capsys):
    a, b, c = (tmp_path / n for n in "abc")
    assert run_cli(capsys, "run", "-q", "-o", str(a))[0] == 0
    assert run_cli(capsys, "run", "-q", "-o", str(b))[0] == 0
    assert run_cli(capsys, "run", "-q", "-o", str(c), "--set", "cache.name=lfu")[0] == 0
    sa, sb, sc = (json.loads((d / "summary.json").read_text()) for d in (a, b, c))
    assert sa == sb          # JSON holds NaN as null, so equal runs compare equal
    assert sa["hits.decode"] != sc["hits.decode"]


# ---------------------------------------------------------------------------- trace commands
def test_trace_stats_text_and_json(capsys):
    code, out, err = run_cli(capsys, "trace", "stats", str(default_trace_path()))
    assert code == 0, err
    assert "mixtral-8x7b" in out and "gini" in out and "reuse distance" in out
    code, out, _ = run_cli(capsys, "trace", "stats", "--json", str(default_trace_path()))
    st = json.loads(out)
    assert code == 0 and st["counts"]["requests"] == 8
    assert set(st) >= {"overlap", "reuse", "gate_scores", "lru"}


def test_trace_synth_then_run(tmp_path, capsys):
    out = tmp_path / "olmoe.parquet"
    code, text, err = run_cli(capsys, "trace", "synth", "-o", str(out), "--model", "olmoe-1b-7b",
                              "--requests", "2", "--prompt-len", "8", "--decode-len", "4",
                              "--arrival-rate", "5")
    assert code == 0, err
    assert "2 requests" in text
    code, text, err = run_cli(capsys, "run", "--trace", str(out), "-o", str(tmp_path / "r"),
                              "--set", "workload.arrivals.process=trace", "--set", "cache.capacity_gb=1")
    assert code == 0, err
    req = pd.read_csv(tmp_path / "r" / "requests.csv")
    assert req["arrival_s"].iloc[0] == 0 and req["arrival_s"].iloc[1] > 0


def test_trace_import_cli(tmp_path, capsys):
    """A tiny file in the Qwen routing.json format, converted and validated."""
    routes = []
    for pos in range(3):
        layers = {str(l): {"experts": [(pos + l) % 60, (pos + l + 1) % 60, (pos + l + 2) % 60,
                                       (pos + l + 3) % 60], "weights": [0.4, 0.3, 0.2, 0.1]}
                  for l in range(24)}
        routes.append({"token_pos": pos, "token_id": 1, "token_str": "x",
                       "phase": "prefill" if pos < 2 else "decode", "layers": layers})
    src = tmp_path / "routing.json"
    src.write_text(json.dumps({"meta": {"model_id": "Qwen1.5-MoE-A2.7B-Chat-4bit", "num_layers": 24,
                                        "num_moe_layers": 24, "num_experts": 60, "top_k": 4,
                                        "prompt_len": 2, "generated_len": 1},
                               "prompt_tokens": [1, 1], "generated_tokens": [1], "routes": routes}))
    out = tmp_path / "q.parquet"
    code, text, err = run_cli(capsys, "trace", "import", str(src), "-o", str(out))
    assert code == 0, err
    assert "qwen1.5-moe-a2.7b" in text
    code, text, _ = run_cli(capsys, "trace", "validate", str(out))
    assert code == 0 and "2 prefill + 1 decode" in text
    assert_one_line_error(capsys, ["trace", "import", str(src), "-o", str(out), "--option", "nope=1"],
                          "nope")
    assert_one_line_error(capsys, ["trace", "import", str(tmp_path / "none.json"), "-o", str(out)],
                          "none.json")
