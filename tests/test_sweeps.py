"""moesim sweep: expansion equals a hand-expanded grid, every bad input is a one-line error,
and real `moesim sweep` subprocesses survive SIGKILL / Ctrl-C / a crashing worker / a failing
point, resume to the same table as a clean run, and give the same table on Dask."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from simulator.resources import bundled_dir, default_config_path, default_trace_path
from simulator.sweeps.spec import parse_experiment, validate

from conftest import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]
SMALL = {"output.events": False, "workload.max_requests": 1}


def write_exp(tmp_path: Path, name: str = "exp", **body) -> Path:
    body.setdefault("base", str(default_config_path()))
    body.setdefault("set", dict(SMALL))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def sweep_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "simulator.cli", "sweep", *map(str, args)]


def run_sweep_proc(*args, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(sweep_cmd(*args), capture_output=True, text=True, cwd=REPO)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def table(d: Path) -> pd.DataFrame:
    return pd.read_parquet(d / "results.parquet")


def same_table(a: Path, b: Path) -> None:
    """Equal in every column but wall_s (parquet and csv)."""
    ta, tb = table(a), table(b)
    assert list(ta.columns) == list(tb.columns)
    pd.testing.assert_frame_equal(ta.drop(columns="wall_s"), tb.drop(columns="wall_s"))
    ca = pd.read_csv(a / "results.csv", dtype=str, keep_default_na=False).drop(columns="wall_s")
    cb = pd.read_csv(b / "results.csv", dtype=str, keep_default_na=False).drop(columns="wall_s")
    assert ca.to_csv(index=False) == cb.to_csv(index=False)


def wait_for(pred, proc=None, timeout=120.0, poll=0.002):
    t0 = time.monotonic()
    while not pred():
        if proc is not None and proc.poll() is not None:
            return False
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(poll)
    return True


def point_files(d: Path) -> list[Path]:
    return sorted((d / "points").glob("*.json")) if (d / "points").is_dir() else []


# ---------------------------------------------------------------------------- expansion
def test_expansion_equals_hand_grid(tmp_path):
    exp = parse_experiment(write_exp(
        tmp_path, axes=[
            {"key": "cache.capacity_gb", "range": {"start": 6, "stop": 48, "num": 3}},
            {"zip": [{"key": "system.links.pcie.profile", "values": ["pcie4_x16", "pcie5_x16"]},
                     {"key": "name", "values": ["gen4", "gen5"]}]},
            {"variants": {"lru": {"cache.name": "lru"},
                          "belady+pf": {"cache.name": "belady", "prefetch.name": "oracle_next_layer"}}},
        ], repeat={"count": 2}))
    expected = []
    for cap in (6, 27, 48):
        for link, name in (("pcie4_x16", "gen4"), ("pcie5_x16", "gen5")):
            for var, cname, pf in (("lru", "lru", "none"), ("belady+pf", "belady", "oracle_next_layer")):
                for rep in (0, 1):
                    expected.append(({"cache.capacity_gb": cap, "system.links.pcie.profile": link,
                                      "name": name, "variant": var, "rep": rep, "seed": rep},
                                     (cap, link, name, cname, pf, rep)))
    assert len(exp.points) == len(expected) == 24
    assert exp.columns == ["cache.capacity_gb", "system.links.pcie.profile", "name", "variant",
                           "rep", "seed"]
    for p, (vals, (cap, link, name, cname, pf, seed)) in zip(exp.points, expected):
        assert p.values == vals
        r = p.raw
        assert (r["cache"]["capacity_gb"], r["system"]["links"]["pcie"]["profile"], r["name"],
                r["cache"]["name"], r["prefetch"]["name"], r["seed"]) == (cap, link, name, cname, pf, seed)
        assert r["workload"]["max_requests"] == 1 and r["output"]["events"] is False
    assert [p.point_id for p in exp.points] == list(range(24))
    validate(exp)
    assert len({p.config_hash for p in exp.points}) == 24


@pytest.mark.parametrize("rng, values", [
    ({"start": 0.1, "stop": 0.5, "step": 0.1}, [0.1, 0.2, 0.3, 0.4, 0.5]),     # no 0.30000000000000004
    ({"start": 1, "stop": 10, "step": 4}, [1, 5, 9]),                          # stop not hit
    ({"start": 10, "stop": 1, "step": -4.5}, [10.0, 5.5, 1.0]),
    ({"start": 6, "stop": 48, "num": 8}, [6, 12, 18, 24, 30, 36, 42, 48]),
    ({"start": 1, "stop": 32, "num": 6, "scale": "log"}, [1, 2, 4, 8, 16, 32]),
    ({"start": 0.5, "stop": 8, "num": 5, "scale": "log"}, [0.5, 1.0, 2.0, 4.0, 8.0]),
    ({"start": 0.001, "stop": 1000, "num": 7, "scale": "log"}, [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]),
    ({"start": 3, "stop": 9, "num": 1}, [3]),
])
def test_ranges(tmp_path, rng, values):
    exp = parse_experiment(write_exp(tmp_path, axes=[{"key": "seed", "range": rng}]))
    got = [p.values["seed"] for p in exp.points]
    assert got == values
    assert [type(v) for v in got] == [type(v) for v in values]


def test_trace_axis_and_variant_merge(tmp_path):
    other = REPO / "traces" / "deepseek_v2_lite_small.parquet"
    sub = tmp_path / "sub"
    sub.mkdir()
    rel = os.path.relpath(other, sub)                 # relative to the experiment file
    exp = parse_experiment(write_exp(sub, axes=[
        {"key": "trace", "values": ["bundled:default", rel]},
        {"variants": {"lfu": {"cache.name": "lfu"}, "none": {"cache": {"name": "none"}}}},
    ], set={**SMALL, "cache.capacity_gb": 12}))
    validate(exp)
    assert [(p.values["trace"], p.values["variant"]) for p in exp.points] == [
        ("bundled:default", "lfu"), ("bundled:default", "none"), (rel, "lfu"), (rel, "none")]
    assert [Path(p.trace_path).resolve() for p in exp.points] == [default_trace_path().resolve()] * 2 + [other.resolve()] * 2
    # a dotted key keeps the section's other keys; a mapping naming another policy replaces it
    assert exp.points[0].raw["cache"] == {"name": "lfu", "capacity_gb": 12}
    assert exp.points[1].raw["cache"] == {"name": "none"}


def test_bundled_sweeps_expand_and_validate(capsys):
    files = sorted((bundled_dir("experiments") / "sweeps").glob("*.yaml"))
    assert {f.stem for f in files} >= {"cache_policies", "pcie_generation", "batch_size"}
    plots = pytest.importorskip("simulator.plots")
    for f in files:
        code, out, err = run_cli(capsys, "sweep", str(f), "--dry-run")
        assert code == 0, err
        exp = parse_experiment(f)
        assert len(out.strip().splitlines()) == 1 + len(exp.points)
        assert exp.figures and all(fig["kind"] in plots.KINDS for fig in exp.figures)
    cp = parse_experiment(bundled_dir("experiments") / "sweeps" / "cache_policies.yaml")
    assert {p.values["variant"] for p in cp.points} == {"lru", "lfu", "belady", "none"}
    bs = parse_experiment(bundled_dir("experiments") / "sweeps" / "batch_size.yaml")
    assert [p.values["workload.batch_size"] for p in bs.points] == [1, 2, 4, 8, 16, 32]


# ---------------------------------------------------------------------------- bad input
BAD = [
    ({"axis": []}, ["exp.yaml", "axis", "unknown key"]),
    ({"axes": [{"key": "cache.capacity_gb", "vals": [1]}]}, ["axes[0].vals", "unknown key"]),
    ({"axes": [{"key": "cache.capacity_gbb", "values": [12]}]}, ["point 0", "capacity_gbb"]),
    ({"axes": [{"key": "workload.max_request", "values": [1]}]}, ["point 0", "max_request"]),
    ({"axes": []}, ["axes", "at least one axis"]),
    ({"axes": [{"key": "cache.capacity_gb", "values": []}]}, ["axes[0].values", "no values"]),
    ({"axes": [{"zip": [{"key": "cache.capacity_gb", "values": [12, 24]},
                        {"key": "name", "values": ["a", "b", "c"]}]}]},
     ["axes[0].zip", "cache.capacity_gb has 2", "name has 3"]),
    ({"axes": [{"key": "seed", "range": {"start": 1, "stop": 4, "step": 0}}]}, ["axes[0].range.step", "0"]),
    ({"axes": [{"key": "seed", "range": {"start": 1, "stop": 4, "num": 0}}]}, ["axes[0].range.num", "0"]),
    ({"axes": [{"key": "cache.capacity_gb", "range": {"start": 0, "stop": 4, "num": 3, "scale": "log"}}]},
     ["axes[0].range.start", "log"]),
    ({"axes": [{"variants": {"a": {"cache.name": "lru"}, "b": {"cache.name": "lru"}}}]},
     ["point 1 (variant=b)", "point 0 (variant=a)", "duplicate"]),
    ({"axes": [{"key": "cache.capacity_gb", "values": [24, 24.0]}]}, ["point 1", "point 0", "duplicate"]),
    ({"base": "nope.yaml", "axes": [{"key": "seed", "values": [1]}]}, ["exp.yaml", "base", "nope.yaml"]),
    ({"axes": [{"key": "trace", "values": ["missing.parquet"]}]}, ["point 0", "trace", "missing.parquet"]),
    ({"axes": [{"key": "cache.capacity_gb", "values": [12, 0.1]},
               {"variants": {"lfu": {"cache.name": "lfu"}}}]},
     ["exp.yaml: point 1 (cache.capacity_gb=0.1, variant=lfu)", "cache.capacity_gb", "below one expert"]),
    ({"axes": [{"key": "seed", "values": [1]}], "metrics": ["tpot_s.meen"]}, ["metrics[0]", "tpot_s.meen"]),
    ({"axes": [{"key": "seed", "values": [1]}], "repeat": {"count": 2}}, ["seed", "twice"]),
]


@pytest.mark.parametrize("body, needles", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_experiment(tmp_path, capsys, body, needles):
    f = write_exp(tmp_path, **body)
    assert_one_line_error(capsys, ["sweep", str(f), "--dry-run"], *needles)


def test_bad_figure_kind(tmp_path, capsys):
    pytest.importorskip("simulator.plots")
    f = write_exp(tmp_path, axes=[{"key": "seed", "values": [1]}],
                  figures=[{"kind": "pie", "x": "seed"}])
    assert_one_line_error(capsys, ["sweep", str(f), "--dry-run"], "figures[0].kind", "pie")
    f = write_exp(tmp_path, axes=[{"key": "seed", "values": [1]}],
                  figures=[{"kind": "energy", "x": "seed", "y": "tpot_s.mean"}])
    assert_one_line_error(capsys, ["sweep", str(f), "--dry-run"], "figures[0].y", "energy")
    f = write_exp(tmp_path, axes=[{"key": "seed", "values": [1]}],
                  figures=[{"kind": "line", "x": "cache.capacity_gb", "y": "tpot_s.mean"}])
    assert_one_line_error(capsys, ["sweep", str(f), "--dry-run"], "figures[0].x", "cache.capacity_gb")


def test_bad_output_and_scheduler(tmp_path, capsys):
    f = write_exp(tmp_path, axes=[{"key": "seed", "values": [1]}])
    assert_one_line_error(capsys, ["sweep", str(f), "-o", "/proc/x"], "/proc/x")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(capsys, ["sweep", str(f), "-o", str(tmp_path / "afile")], "afile", "file")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    assert_one_line_error(capsys, ["sweep", str(f), "-o", str(tmp_path / "junk")], "junk", "not empty")
    assert_one_line_error(capsys, ["sweep", str(f), "-o", str(tmp_path / "junk"), "--resume"],
                          "junk", "sweep.json")
    t0 = time.monotonic()
    assert_one_line_error(capsys, ["sweep", str(f), "-o", str(tmp_path / "o"), "--scheduler",
                                   "tcp://127.0.0.1:1"], "tcp://127.0.0.1:1", "no Dask scheduler")
    assert time.monotonic() - t0 < 30
    assert_one_line_error(capsys, ["sweep", str(f), "-o", str(tmp_path / "o"), "--scheduler",
                                   "local:zero"], "local:zero")


# ---------------------------------------------------------------------------- real runs
SLOW_SET = {"output.events": False}              # full default trace: ~0.2 s a point


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A 6-point sweep run to completion by a real `moesim sweep` subprocess."""
    d = tmp_path_factory.mktemp("clean")
    f = write_exp(d, name="kr", set=dict(SLOW_SET), axes=[
        {"key": "cache.capacity_gb", "values": [12, 24, 48]},
        {"variants": {"lru": {"cache.name": "lru"}, "lfu": {"cache.name": "lfu"}}}])
    p = run_sweep_proc(f, "-o", d / "out", "--workers", "1", "-q")
    assert "6 points, 6 ok, 0 failed" in p.stdout
    return f, d / "out"


def test_clean_table_contract(clean):
    f, out = clean
    tab = table(out)
    assert list(tab.columns[:4]) == ["point_id", "cache.capacity_gb", "variant", "config_hash"]
    assert list(tab.columns[-3:]) == ["status", "error", "wall_s"]
    assert tab["point_id"].tolist() == list(range(6)) and (tab["status"] == "ok").all()
    metrics = tab.columns[4:-3]
    assert "tpot_s.mean" in metrics and all(tab[m].dtype == "float64" for m in metrics)
    man = json.loads((out / "sweep.json").read_text())
    assert man["experiment"] == "kr" and len(man["points"]) == 6 and len(man["sha256"]) == 64
    assert tab["config_hash"].tolist() == [e["config_hash"] for e in man["points"]]
    # each row equals a fresh simulator.run of that point's config (fresh trace read too)
    import simulator
    from simulator.config.load import load_mapping
    exp = parse_experiment(f)
    for i in (0, 5):
        res = simulator.run(load_mapping(exp.points[i].raw, base_dir=exp.base_dir))
        for m in ("tpot_s.mean", "ttft_s.mean", "hit_rate.decode", "energy_j.total"):
            assert tab.loc[i, m] == res.summary[m]
    assert tab.loc[0, "hit_rate.decode"] < tab.loc[4, "hit_rate.decode"]   # 12 GB < 48 GB LRU
    # the workers read the trace once per worker, not once per point
    recs = [json.loads(p.read_text()) for p in point_files(out)]
    assert len({r["worker"] for r in recs}) == 1
    assert [r["trace_reads"] for r in recs] == [1] * 6


def test_sigkill_then_resume_equals_clean_run(clean, tmp_path, capsys):
    f, ref = clean
    out = tmp_path / "out"
    proc = subprocess.Popen(sweep_cmd(f, "-o", out, "--workers", "1", "-q"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(lambda: len(point_files(out)) >= 1, proc), proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in point_files(out)}
    assert 1 <= len(before) < 6, before.keys()
    assert not (out / "results.parquet").exists()
    # without --resume the folder is refused
    assert_one_line_error(capsys, ["sweep", str(f), "-o", str(out)], "--resume")
    code, stdout, err = run_cli(capsys, "sweep", str(f), "-o", str(out), "--resume", "--workers", "1", "-q")
    assert code == 0 and f"({len(before)} kept from before)" in stdout, err
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in point_files(out)}
    assert len(after) == 6
    for name, st in before.items():                 # no finished point was recomputed
        assert after[name] == st
    same_table(out, ref)
    # a resume of a finished folder runs nothing and rewrites no point
    code, stdout, _ = run_cli(capsys, "sweep", str(f), "-o", str(out), "--resume", "-q")
    assert code == 0 and "(6 kept from before)" in stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in point_files(out)} == \
        {k: v[:2] for k, v in after.items()}


def test_resume_refuses_other_or_changed_experiment(clean, tmp_path, capsys):
    f, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    other = write_exp(tmp_path, name="other", axes=[{"key": "seed", "values": [1]}])
    assert_one_line_error(capsys, ["sweep", str(other), "-o", str(out), "--resume"],
                          "holds sweep 'kr'", "'other'")
    body = yaml.safe_load(f.read_text())
    body["axes"][0]["values"] = [12, 36, 48, 60]     # points 2-3 change, 6-7 are new
    changed = tmp_path / "kr.yaml"
    changed.write_text(yaml.safe_dump(body, sort_keys=False))
    assert_one_line_error(capsys, ["sweep", str(changed), "-o", str(out), "--resume"],
                          "changed 2-3", "added 6-7", "points")
    body["axes"][0]["values"] = [12, 24]
    changed.write_text(yaml.safe_dump(body, sort_keys=False))
    assert_one_line_error(capsys, ["sweep", str(changed), "-o", str(out), "--resume"], "removed 4-5")


def test_ctrl_c_keeps_finished_points(clean, tmp_path):
    f, _ = clean
    out = tmp_path / "out"
    proc = subprocess.Popen(sweep_cmd(f, "-o", out, "--workers", "1", "-q"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(point_files(out)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    n = len(point_files(out))
    assert 1 <= n < 6
    assert f"interrupted: {n} finished points kept; rerun with --resume" in err
    tab = table(out)
    assert len(tab) == n and (tab["status"] == "ok").all()


def test_failing_point_is_recorded_and_others_finish(tmp_path, capsys):
    b = tmp_path / "b.parquet"
    shutil.copy(default_trace_path(), b)
    f = write_exp(tmp_path, set=dict(SLOW_SET), axes=[
        {"key": "trace", "values": ["bundled:default", "b.parquet"]},
        {"key": "cache.capacity_gb", "values": [24, 48]}])
    out = tmp_path / "out"
    proc = subprocess.Popen(sweep_cmd(f, "-o", out, "--workers", "1", "-q"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # validated (manifest written) -> the trace of points 2-3 disappears before they run
    assert wait_for(lambda: (out / "sweep.json").exists(), proc)
    b.unlink()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    tab = table(out)
    assert tab["status"].tolist() == ["ok", "ok", "error", "error"]
    assert tab.loc[0:1, "error"].tolist() == ["", ""]
    for e in tab.loc[2:3, "error"]:
        assert e.startswith("FileNotFoundError: ") and "b.parquet" in e and "\n" not in e
    assert tab.loc[2:3, "tpot_s.mean"].isna().all() and tab.loc[0:1, "tpot_s.mean"].notna().all()
    assert "first failure: point 2: FileNotFoundError" in err
    # --resume keeps recorded errors; --retry-failed reruns them (and only them)
    shutil.copy(default_trace_path(), b)
    ok_files = {p.name: p.stat().st_mtime_ns for p in point_files(out)[:2]}
    code, stdout, _ = run_cli(capsys, "sweep", str(f), "-o", str(out), "--resume", "-q")
    assert code == 1 and "2 ok, 2 failed (4 kept from before)" in stdout
    code, stdout, err = run_cli(capsys, "sweep", str(f), "-o", str(out), "--resume", "--retry-failed", "-q")
    assert code == 0 and "4 ok, 0 failed (2 kept from before)" in stdout, err
    assert (table(out)["status"] == "ok").all()
    assert {p.name: p.stat().st_mtime_ns for p in point_files(out)[:2]} == ok_files


def _descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for k in kids:
            out += [k] + _descendants(k)
    return out


def _pool_workers(pid: int) -> list[int]:
    """Process-pool workers: children of the forkserver (itself a child of the driver)."""
    found = []
    for d in _descendants(pid):
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            pcmd = Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"forkserver" in cmd and b"forkserver" in pcmd:
            found.append(d)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_crashed_worker_is_recorded_and_pool_rebuilt(clean, tmp_path):
    f, ref = clean
    out = tmp_path / "out"
    proc = subprocess.Popen(sweep_cmd(f, "-o", out, "--workers", "1", "-q"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(point_files(out)) >= 1, proc)
    workers = []
    assert wait_for(lambda: workers.extend(_pool_workers(proc.pid)) or workers, proc, timeout=30)
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    tab = table(out)
    assert len(tab) == 6, err
    bad = tab[tab["status"] != "ok"]
    assert len(bad) == 1 and bad["error"].iloc[0].startswith("worker crashed"), tab[["status", "error"]]
    assert proc.returncode == 1
    good = tab["status"] == "ok"
    pd.testing.assert_frame_equal(tab[good].drop(columns="wall_s"),
                                  table(ref)[good].drop(columns="wall_s"))


def test_dask_cluster_equals_process_pool(clean, tmp_path, capsys):
    """An existing Dask cluster (a LocalCluster on loopback, 2 worker processes, reached by
    its tcp:// address like any user's cluster) gives the process pool's table exactly
    (except wall_s)."""
    distributed = pytest.importorskip("distributed")
    import logging
    f, pool = clean
    dask = tmp_path / "dask"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        addr = cluster.scheduler_address
        assert addr.startswith("tcp://127.0.0.1:")
        code, out, err = run_cli(capsys, "sweep", str(f), "-o", str(dask), "--scheduler", addr, "-q")
    assert code == 0, err
    assert "6 points, 6 ok, 0 failed" in out
    same_table(pool, dask)
    recs = [json.loads(p.read_text()) for p in point_files(dask)]
    assert 1 <= len({r["worker"] for r in recs}) <= 2


def test_save_runs_writes_each_points_results_folder(tmp_path, capsys):
    f = write_exp(tmp_path, save_runs=True, metrics=["tpot_s.mean", "hit_rate.decode"],
                  axes=[{"key": "cache.capacity_gb", "values": [24, 48]}])
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "sweep", str(f), "-o", str(out), "--workers", "1", "-q")
    assert code == 0, err
    tab = table(out)
    assert list(tab.columns) == ["point_id", "cache.capacity_gb", "config_hash", "tpot_s.mean",
                                 "hit_rate.decode", "status", "error", "wall_s"]
    for i in (0, 1):
        summ = json.loads((out / "runs" / f"{i:05d}" / "summary.json").read_text())
        run = json.loads((out / "runs" / f"{i:05d}" / "run.json").read_text())
        assert run["config_hash"] == tab.loc[i, "config_hash"]
        assert summ["tpot_s.mean"] == tab.loc[i, "tpot_s.mean"]
        assert summ["cache.capacity_bytes"] == [24e9, 48e9][i]


def test_plot_regenerates_figures_on_resume(clean, tmp_path, capsys):
    """Adding figures to a finished sweep's file is not a change of its points: --resume
    --plot reruns nothing and renders them into DIR/figures/."""
    pytest.importorskip("simulator.plots")
    f, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    body = yaml.safe_load(f.read_text())
    body["figures"] = [{"kind": "latency", "x": "cache.capacity_gb", "hue": "variant",
                        "file": "tpot.png"},
                       {"kind": "line", "x": "cache.capacity_gb", "y": "hit_rate.decode",
                        "hue": "variant", "file": "hits.svg"}]
    g = tmp_path / "kr.yaml"
    g.write_text(yaml.safe_dump(body, sort_keys=False))
    code, stdout, err = run_cli(capsys, "sweep", str(g), "-o", str(out), "--resume", "--plot", "-q")
    assert code == 0, err
    assert "(6 kept from before)" in stdout
    assert (out / "figures" / "tpot.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (out / "figures" / "hits.svg").read_bytes()[:400]
    same_table(out, ref)


def crash_on_3(task):
    """A task function whose worker process dies on point 3 (module level: pickled by name)."""
    if task["point_id"] == 3:
        os._exit(7)
    time.sleep(0.3)            # point 2 (started with 3) is still running when 3's worker dies
    return {"point_id": task["point_id"], "status": "ok", "error": "", "metrics": {"x": 1.0},
            "worker": str(os.getpid()), "wall_s": 0.05}


def test_pool_finds_the_crashing_point_among_several_in_flight():
    """Two workers, points 0-7: the pool breaks with two points in flight; each is rerun alone,
    the one whose worker dies alone is recorded as crashed, and every other point finishes."""
    from simulator.sweeps.runner import PoolExecutor
    got = {}
    with PoolExecutor(2, fn=crash_on_3) as ex:
        ex.run([{"point_id": i} for i in range(8)], lambda r: got.setdefault(r["point_id"], r))
    assert sorted(got) == list(range(8))
    assert [i for i, r in got.items() if r["status"] != "ok"] == [3]
    assert got[3]["error"].startswith("worker crashed")
    assert ex.broken == 1 and ex.rerun_alone == 2              # points 2 and 3 were in flight


def test_one_driver_per_folder(clean, tmp_path, capsys):
    f, ref = clean
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    (out / ".moesim-sweep.lock").write_text(f"{os.getpid()}\n")      # a live driver
    assert_one_line_error(capsys, ["sweep", str(f), "-o", str(out), "--resume"],
                          "another moesim sweep", str(os.getpid()))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".moesim-sweep.lock").write_text(f"{dead.pid}\n")         # a SIGKILLed driver's
    code, stdout, err = run_cli(capsys, "sweep", str(f), "-o", str(out), "--resume", "-q")
    assert code == 0 and "(6 kept from before)" in stdout, err
    assert not (out / ".moesim-sweep.lock").exists()
