"""Bad inputs (issue 8): every class is one ``moesim: error:`` line naming the file and the
key or row, exit 2, no traceback; and the inputs that used to change a result silently now
error (or are accepted as a YAML 1.2 reader would).

Bad traces are edited copies of the bundled default (pyarrow), bad configs are small YAML
files extending the bundled default config; every case runs in its own temporary folder.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import run_cli
from simulator.resources import bundled_dir, default_config_path, default_trace_path
from simulator.traces.schema import METADATA_KEY

ROW = 5000          # a (token, layer) row of the bundled default trace (55,104 rows, k = 2)
K = 2


# ---------------------------------------------------------------------------- bad traces
def _table() -> pa.Table:
    return pq.read_table(default_trace_path())


def _meta(tab: pa.Table) -> dict:
    return json.loads(tab.schema.metadata[METADATA_KEY])


def _write(tab: pa.Table, path, meta: dict | None = None) -> str:
    md = dict(_table().schema.metadata)
    if meta is not None:
        md[METADATA_KEY] = json.dumps(meta).encode()
    pq.write_table(tab.replace_schema_metadata(md), str(path))
    return str(path)


def _replace(tab: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    i = tab.schema.get_field_index(name)
    if i < 0:
        return tab.append_column(name, arr)
    return tab.set_column(i, name, arr)


def _flat(tab: pa.Table, name: str) -> np.ndarray:
    return tab.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False).copy()


def _lists(values: np.ndarray, width: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values), width)


def trace_float_expert(tmp, value):
    tab = _table()
    ex = _flat(tab, "experts").astype(np.float64)
    ex[ROW * K + 1] = value
    return _write(_replace(tab, "experts", _lists(ex, K)), tmp / "float_expert.parquet")


def trace_string_request_ids(tmp):
    tab = _table()
    rid = tab.column("request_id").to_numpy()
    return _write(_replace(tab, "request_id", pa.array([str(r) for r in rid])),
                  tmp / "string_ids.parquet")


def trace_float_positions(tmp):
    tab = _table()
    tok = tab.column("token").to_numpy().astype(np.float64)
    return _write(_replace(tab, "token", pa.array(tok + 0.5)), tmp / "float_tokens.parquet")


def trace_router_probs(tmp, mutate):
    tab = _table()
    E = _meta(tab)["num_experts"]
    probs = np.full((tab.num_rows, E), 1.0 / E, dtype=np.float32)
    mutate(probs[ROW])
    return _write(_replace(tab, "router_probs", _lists(probs.reshape(-1), E)),
                  tmp / "probs.parquet")


def _negative(p):
    p[0], p[1] = -p[0], p[1] + 2 * p[0]       # still sums to 1


def _doubled(p):
    p *= 2


def trace_scores(tmp, row_scores):
    tab = _table()
    sc = _flat(tab, "scores").astype(np.float32)
    sc[ROW * K:(ROW + 1) * K] = row_scores(sc[ROW * K:(ROW + 1) * K])
    return _write(_replace(tab, "scores", _lists(sc, K)), tmp / "scores.parquet")


def trace_meta(tmp, **changes):
    tab = _table()
    meta = {**_meta(tab), **changes}
    return _write(tab, tmp / "meta.parquet", meta)


def trace_top1(tmp):
    """The bundled Mixtral (top-2) trace cut to its best expert: a top-1 trace."""
    tab = _table()
    ex = _flat(tab, "experts").reshape(-1, K)[:, :1].reshape(-1)
    sc = _flat(tab, "scores").reshape(-1, K)[:, :1].reshape(-1)
    tab = _replace(_replace(tab, "experts", _lists(ex, 1)), "scores", _lists(sc, 1))
    return _write(tab, tmp / "top1.parquet", {**_meta(_table()), "top_k": 1})


# ---------------------------------------------------------------------------- bad configs
def config(tmp, text: str, name="bad.yaml") -> str:
    path = tmp / name
    path.write_text(f"extends: {default_config_path()}\n{text}")
    return str(path)


def expert_counts(tmp) -> str:
    from simulator.traces.counts import ExpertCounts, write_counts
    c = ExpertCounts(model="olmoe-1b-7b", source="test", model_layers=[0, 1], num_experts=64,
                     top_k=8, counts={"a": np.arange(128).reshape(2, 64)})
    return str(write_counts(c, tmp / "counts.parquet"))


def bad_profile_dir(tmp) -> str:
    d = tmp / "profiles"
    d.mkdir()
    text = (bundled_dir("device_profiles") / "pcie5_x16.yaml").read_text()
    (d / "mine.yaml").write_text(text.replace("name: pcie5_x16", "name: mine\nname: mine2"))
    return str(d)


def boom(_args):
    raise ZeroDivisionError("boom")


# Each case: (id, build(tmp, monkeypatch) -> (argv, needles)). The file the error must name
# is among the needles (its path), with the key, field or row.
CASES = [
    # --- output locations (checked before the work starts)
    ("run -o /proc", lambda t, m: (["run", "-o", "/proc/x"], ["/proc/x", "-o"])),
    ("run -o existing file", lambda t, m: (
        ["run", "-o", str(_touch(t / "taken"))], [str(t / "taken"), "existing file"])),
    ("run -o /dev/null/sub", lambda t, m: (["run", "-o", "/dev/null/sub"],
                                           ["/dev/null/sub", "not a directory"])),
    ("import -o /proc", lambda t, m: (["trace", "import", str(default_trace_path()), "-o",
                                       "/proc/x.parquet"], ["/proc/x.parquet", "-o"])),
    ("synth -o /dev/null/x", lambda t, m: (["trace", "synth", "-o", "/dev/null/x.parquet"],
                                           ["/dev/null/x.parquet", "not a directory"])),
    ("fit -o directory", lambda t, m: (["trace", "fit", str(default_trace_path()), "-o", str(t)],
                                       [str(t), "existing directory"])),
    ("compare --plot /proc", lambda t, m: (
        ["trace", "compare", str(default_trace_path()), str(default_trace_path()),
         "--plot", "/proc/x.png"], ["/proc/x.png", "--plot"])),
    # --- values numpy / the standard library used to reject deep inside
    ("metadata num_layers -3", lambda t, m: (["trace", "validate", trace_meta(t, num_layers=-3)],
                                             ["meta.parquet", "metadata.num_layers", "-3"])),
    ("metadata model not a string", lambda t, m: (["trace", "validate", trace_meta(t, model=5)],
                                                  ["meta.parquet", "metadata.model"])),
    ("metadata notes not an object", lambda t, m: (["trace", "validate", trace_meta(t, notes=[1])],
                                                   ["meta.parquet", "metadata.notes"])),
    ("metadata top_k 0", lambda t, m: (["trace", "validate", trace_meta(t, top_k=0)],
                                       ["meta.parquet", "metadata.top_k"])),
    ("metadata num_experts 70000", lambda t, m: (
        ["trace", "validate", trace_meta(t, num_experts=70000)], ["meta.parquet", "metadata.num_experts"])),
    ("arrival_s string", lambda t, m: (
        ["trace", "validate", trace_meta(t, arrival_s=["soon"] + [0.0] * 7)],
        ["meta.parquet", "metadata.arrival_s[0]", "soon"])),
    ("synth --arrival-rate -1", lambda t, m: (
        ["trace", "synth", "-o", str(t / "s.parquet"), "--arrival-rate", "-1"], ["arrival_rate", "-1"])),
    ("synth --seed -1", lambda t, m: (["trace", "synth", "-o", str(t / "s.parquet"), "--seed", "-1"],
                                      ["seed", "-1"])),
    ("fit --iterations -1", lambda t, m: (
        ["trace", "fit", str(default_trace_path()), "-o", str(t / "f.yaml"), "--iterations", "-1"],
        ["iterations", "-1"])),
    ("fit COUNTS --num-layers -3", lambda t, m: (
        ["trace", "fit", expert_counts(t), "-o", str(t / "f.yaml"), "--num-layers", "-3"],
        ["num_layers", "-3"])),
    ("synth --from a folder", lambda t, m: (["trace", "synth", "--from", str(t), "-o", str(t / "s.parquet")],
                                            [str(t), "directory"])),
    ("synth --from a Parquet file", lambda t, m: (
        ["trace", "synth", "--from", str(default_trace_path()), "-o", str(t / "s.parquet")],
        [str(default_trace_path()), "not a text file"])),
    # --- the backstop
    ("internal error", lambda t, m: (m.setattr("simulator.cli.cmd_metrics", boom) or ["metrics"],
                                     ["metrics: internal error: ZeroDivisionError: boom", "--debug"])),
    # --- the Parquet reader as strict as the importers
    ("expert id 2.5", lambda t, m: (["trace", "validate", trace_float_expert(t, 2.5)],
                                    ["float_expert.parquet", f"row {ROW}", "experts[1]", "2.5"])),
    ("expert id NaN", lambda t, m: (["trace", "validate", trace_float_expert(t, math.nan)],
                                    ["float_expert.parquet", f"row {ROW}", "experts[1]", "nan"])),
    ("expert ids integral floats", lambda t, m: (
        ["trace", "validate", trace_float_expert(t, 1.0)], ["float_expert.parquet", "experts", "double"])),
    ("string request ids", lambda t, m: (["trace", "validate", trace_string_request_ids(t)],
                                         ["string_ids.parquet", "request_id", "integer"])),
    ("float token positions", lambda t, m: (["trace", "validate", trace_float_positions(t)],
                                            ["float_tokens.parquet", "token", "integer"])),
    ("negative router_probs", lambda t, m: (["trace", "validate", trace_router_probs(t, _negative)],
                                            ["probs.parquet", f"row {ROW}", "router_probs[0]", "negative"])),
    ("router_probs sum 2", lambda t, m: (["trace", "validate", trace_router_probs(t, _doubled)],
                                         ["probs.parquet", f"row {ROW}", "router_probs", "sum to 2"])),
    ("scores ascending", lambda t, m: (["trace", "validate", trace_scores(t, lambda s: s[::-1])],
                                       ["scores.parquet", f"row {ROW}", "scores[1]", "descending"])),
    ("scores sum 1.8", lambda t, m: (["trace", "validate", trace_scores(t, lambda s: [0.9, 0.9])],
                                     ["scores.parquet", f"row {ROW}", "scores", "1.8"])),
    # --- top-k of the trace vs the model, in run and in validate
    ("run top-1 trace on top-2 model", lambda t, m: (
        ["run", "--trace", trace_top1(t), "-o", str(t / "out")],
        ["top1.parquet", "metadata.top_k", "top-2", "model.file"])),
    ("validate top-1 trace", lambda t, m: (["trace", "validate", trace_top1(t)],
                                           ["top1.parquet", "metadata.top_k", "top-2"])),
    # --- system
    ("path names a link twice", lambda t, m: (["run", config(t, (
        "system:\n  tiers:\n    dram: {profile: ddr5_4800_8ch, path: [pcie, pcie], capacity_gb: 512}\n"))],
        ["bad.yaml", "system.tiers.dram.path", "pcie"])),
    ("link on no path", lambda t, m: (["run", config(t, "system:\n  links:\n    nv: {profile: nvlink4}\n")],
                                      ["bad.yaml", "system.links.nv"])),
    # --- keys that do nothing, duplicate keys, a missing profile folder
    ("rate_per_s on closed_loop", lambda t, m: (["run", config(t, (
        "workload:\n  arrivals: {process: closed_loop, rate_per_s: 5}\n"))],
        ["bad.yaml", "workload.arrivals.rate_per_s", "closed_loop"])),
    ("concurrency on poisson", lambda t, m: (["run", config(t, (
        "workload:\n  arrivals: {process: poisson, rate_per_s: 5, concurrency: 2}\n"))],
        ["bad.yaml", "workload.arrivals.concurrency", "poisson"])),
    ("duplicate YAML key", lambda t, m: (["run", config(t, "seed: 1\nseed: 2\n")],
                                         ["bad.yaml", "line 3", "duplicate key 'seed'"])),
    ("duplicate key in a profile", lambda t, m: (
        m.setenv("MOESIM_PROFILES", bad_profile_dir(t)) or ["profiles", "list"],
        ["mine.yaml", "duplicate key 'name'"])),
    ("MOESIM_PROFILES missing", lambda t, m: (
        m.setenv("MOESIM_PROFILES", str(t / "nope")) or ["profiles", "list"],
        ["MOESIM_PROFILES", str(t / "nope"), "does not exist"])),
    # --- a run name that escapes results/
    ("name ../", lambda t, m: (["run", config(t, "name: ../escaped\n")], ["bad.yaml", "name", "../escaped"])),
    ("name a/b", lambda t, m: (["run", "--set", "name=a/b"], ["--set", "name", "a/b"])),
    # --- numbers that are not finite
    ("capacity 1e400 in YAML", lambda t, m: (["run", config(t, "cache: {name: lru, capacity_gb: 1e400}\n")],
                                             ["bad.yaml", "cache.capacity_gb", "finite"])),
    ("--set capacity 1e400", lambda t, m: (["run", "--set", "cache.capacity_gb=1e400"],
                                           ["--set", "cache.capacity_gb", "finite"])),
]


def _touch(path):
    path.write_text("not a folder\n")
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run in an empty folder (results/ would land here) with the profile cache cleared."""
    from simulator.hardware import profiles
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOESIM_PROFILES", raising=False)
    monkeypatch.delenv("MOESIM_DEBUG", raising=False)
    profiles._load_dir.cache_clear()
    yield tmp_path
    profiles._load_dir.cache_clear()


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error(isolated, monkeypatch, capsys, build):
    argv, needles = build(isolated, monkeypatch)
    code, out, err = run_cli(capsys, *argv)
    assert "Traceback" not in err + out
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("moesim: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    # nothing escaped the working folder, no half-written output left next to it
    assert not (isolated.parent / "escaped").exists()


def test_debug_flag_and_env_show_the_traceback(isolated, monkeypatch, capsys):
    monkeypatch.setattr("simulator.cli.cmd_metrics", boom)
    code, _out, err = run_cli(capsys, "--debug", "metrics")
    assert code == 2 and "Traceback" in err and "ZeroDivisionError: boom" in err
    assert err.strip().splitlines()[-1].startswith("moesim: error: metrics: internal error")
    monkeypatch.setenv("MOESIM_DEBUG", "1")
    code, _out, err = run_cli(capsys, "metrics")
    assert code == 2 and "Traceback" in err


def test_output_checked_before_the_work(isolated, monkeypatch, capsys):
    """`trace fit` into an unwritable place fails before fitting (it used to throw the
    finished fit away)."""
    import simulator.traces.fit as fit
    called = []
    monkeypatch.setattr(fit, "fit_trace", lambda *a, **k: called.append(1))
    code, _out, err = run_cli(capsys, "trace", "fit", str(default_trace_path()), "-o",
                              "/proc/m.yaml")
    assert code == 2 and not called and "/proc/m.yaml" in err


# ---------------------------------------------------------------------------- silently wrong before
def test_scientific_notation_is_a_number(isolated):
    """YAML 1.2 floats (PyYAML alone reads 2.4e1 and 1.2e1 as strings)."""
    from simulator.config.load import load_config
    path = config(isolated, "cache: {name: lru, capacity_gb: 2.4e1}\nseed: 1e1\n")
    cfg = load_config(path).config
    assert cfg.cache["capacity_gb"] == 24.0 and cfg.seed == 10
    cfg = load_config(None, ["cache.capacity_gb=1.2e1", "system.links.pcie.bw_gbytes_per_s=.5e2"]).config
    assert cfg.cache["capacity_gb"] == 12.0
    assert cfg.system.links["pcie"].overrides["bw_gbytes_per_s"] == 50.0
    from simulator.config.yamlload import load
    assert load("[1e3, -2.5E-1, .5, 7, 0x10, 1_000, abc, 1e]") == [1000.0, -0.25, 0.5, 7, 16,
                                                                 1000, "abc", "1e"]


def test_top_k_override_via_model_file(isolated, capsys):
    """The top-k error says to use model.file; doing so runs the top-1 variant."""
    from simulator.models.spec import get_model
    spec = get_model("mixtral-8x7b").to_dict()
    spec.update(name="mixtral-8x7b-top1", top_k=1, aliases=[])
    (isolated / "top1.yaml").write_text(yaml.safe_dump(spec))
    code, out, err = run_cli(capsys, "run", "--trace", trace_top1(isolated), "-o",
                             str(isolated / "out"), "--set", f"model.file={isolated / 'top1.yaml'}",
                             "--set", "workload.max_requests=1", "-q")
    assert code == 0, err
    s = json.loads((isolated / "out" / "summary.json").read_text())
    assert s["expert_accesses.decode"] == s["decode_tokens"] * 32 * 1


def test_token_gap_kv_follows_position(isolated):
    """A request with positions missing in the middle: its KV peak is its last position + 1
    (as attention's context is), not its number of rows."""
    from simulator.config.load import load_config
    from simulator.engine.simulation import Simulation
    from simulator.traces.io import read_trace
    tr = read_trace(default_trace_path())
    tr = tr.select_requests([int(tr.request_bounds()[0][0])])
    keep = np.ones(tr.num_tokens, bool)
    keep[10:40] = False                     # 30 prompt positions absent from the trace
    tr = tr._take(keep)
    assert tr.validate() and tr.token[-1] + 1 == tr.num_tokens + 30
    sim = Simulation(load_config(None, ["workload.max_requests=1"]), trace=tr)
    sim.run()
    assert sim.kv_peak_tokens == int(tr.token[-1]) + 1
    assert sim.kv_tokens_live == 0


def test_run_json_is_strict_json(isolated, capsys):
    code, out, _ = run_cli(capsys, "run", "--json", "-o", str(isolated / "out"),
                           "--set", "workload.max_requests=1")
    assert code == 0

    def reject(token):
        raise AssertionError(f"non-JSON token {token}")
    s = json.loads(out, parse_constant=reject)
    assert s["prefetch.accuracy"] is None        # 0 / 0 prefetches: null, not NaN


@pytest.mark.parametrize("name", ["default", "deepseek_v2_lite_small"])
def test_bundled_trace_metadata_is_strict_json(name):
    from simulator.traces.io import read_trace

    def reject(token):
        raise AssertionError(f"non-JSON token {token}")
    path = bundled_dir("traces") / f"{name}.parquet"
    json.loads(pq.ParquetFile(path).schema_arrow.metadata[METADATA_KEY], parse_constant=reject)
    assert read_trace(path).meta.notes["knobs"]["request_concentration"] == math.inf


def test_trace_metadata_nonfinite_roundtrip(tmp_path):
    from simulator.traces.io import read_trace, write_trace
    tr = read_trace(default_trace_path())
    tr.meta.notes.update(big=math.inf, small=-math.inf, nested={"x": [math.nan, 1.5]})
    back = read_trace(write_trace(tr, tmp_path / "t.parquet"))

    def reject(token):
        raise AssertionError(f"non-JSON token {token}")
    json.loads(pq.ParquetFile(tmp_path / "t.parquet").schema_arrow.metadata[METADATA_KEY],
               parse_constant=reject)
    assert back.meta.notes["big"] == math.inf and back.meta.notes["small"] == -math.inf
    assert math.isnan(back.meta.notes["nested"]["x"][0]) and back.meta.notes["nested"]["x"][1] == 1.5
