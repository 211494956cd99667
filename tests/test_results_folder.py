"""A results folder is whole or absent: ``moesim run`` killed with SIGKILL mid-simulation,
mid-write or mid-swap leaves no folder, the complete old run or the complete new run (never a
mix), a rerun leaves no file of an earlier run, and a user's own folder is never replaced."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import assert_one_line_error, run_cli
from simulator.errors import ConfigError
from simulator.results.writer import is_complete, recover, write_folder_atomically

# Runs ``moesim ARGV`` after arranging to SIGKILL itself at one point:
#   sim N     at the N-th progress update of the simulation (every 256 iterations)
#   file N    right after the N-th file of the results folder is written
#   rename N  right after the N-th rename of the folder swap
KILLER = r"""
import os, signal, sys
mode, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
count = [0]
def tick():
    count[0] += 1
    if count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
if mode == "sim":
    os.environ["MOESIM_PROGRESS"] = "1"
    import simulator.progress as progress
    class Killer:
        n = 0
        def update(self, k=1): tick()
        def __enter__(self): return self
        def __exit__(self, *exc): pass
    progress.bar = lambda *a, **k: Killer()
elif mode == "file":
    import simulator.results.writer as w
    files = w._files
    w._files = lambda *a, **k: [(name, lambda p, f=f: (f(p), tick()))
                                for name, f in files(*a, **k)]
elif mode == "rename":
    rename = os.rename
    def killing_rename(a, b):
        rename(a, b)
        tick()
    os.rename = killing_rename
from simulator.cli import main
sys.exit(main(argv))
"""

EVENT_FILES = 10       # with output.events: true (steps and transfers); 8 without


def _killed_run(out: Path, mode: str, n: int, *sets: str) -> subprocess.Popen:
    argv = ["run", "-o", str(out), *(x for s in sets for x in ("--set", s))]
    env = {**os.environ, "MOESIM_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-c", KILLER, mode, str(n), *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _state(d: Path) -> tuple[str, ...] | None:
    """None if the folder is absent, else the config hash every file agrees on; fails if
    the folder is incomplete, mixed, or holds files its run.json does not list."""
    if not d.exists():
        return None
    assert is_complete(d), sorted(p.name for p in d.iterdir())
    run = json.loads((d / "run.json").read_text())
    assert sorted(p.name for p in d.iterdir()) == sorted(run["files"]), (
        "stale or missing files", sorted(p.name for p in d.iterdir()), run["files"])
    h = run["config_hash"]
    assert pd.read_csv(d / "summary.csv")["config_hash"].tolist() == [h]
    assert set(pd.read_parquet(d / "requests.parquet")["config_hash"]) == {h}
    assert set(pd.read_csv(d / "layers.csv")["config_hash"]) == {h}
    for name in ("steps", "transfers"):
        if (d / f"{name}.parquet").exists():
            assert set(pd.read_parquet(d / f"{name}.parquet")["config_hash"]) <= {h}
    summary = json.loads((d / "summary.json").read_text())
    assert summary["requests"] == len(pd.read_parquet(d / "requests.parquet"))
    return h


def _siblings(d: Path) -> list[str]:
    return sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}."))


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A finished run (events on, 12 GB cache) to be overwritten: (folder, config hash)."""
    d = tmp_path_factory.mktemp("old") / "res"
    code = subprocess.run([sys.executable, "-m", "simulator.cli", "run", "-q", "-o", str(d),
                           "--set", "cache.capacity_gb=12"], capture_output=True).returncode
    assert code == 0
    return d, json.loads((d / "run.json").read_text())["config_hash"]


def test_sigkill_at_any_point_leaves_no_folder_or_a_whole_one(tmp_path, old_run):
    """Kill points: mid-simulation, after the first/middle/last file of the new folder,
    after each rename of the swap; into a fresh place and over an old run (which had
    events on, the rerun has them off). All cases run side by side (each its own folder)."""
    old_dir, old_hash = old_run
    cases = {}
    for where in ("fresh", "over-old"):
        nfiles = EVENT_FILES if where == "fresh" else EVENT_FILES - 2
        points = [("sim", 1), ("file", 1), ("file", nfiles // 2), ("file", nfiles), ("rename", 1)]
        if where == "over-old":
            points.append(("rename", 2))
        for mode, n in points:
            d = tmp_path / f"{where}-{mode}{n}" / "res"
            d.parent.mkdir()
            if where == "over-old":
                shutil.copytree(old_dir, d)
            sets = ("output.events=false",) if where == "over-old" else ()
            cases[(where, mode, n)] = (d, _killed_run(d, mode, n, *sets))
    new_hash = None
    for (where, mode, n), (d, proc) in cases.items():
        _out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, (where, mode, n, proc.returncode, err)
        state = _state(d)
        if where == "fresh":
            # complete only once the folder has been renamed into place
            assert (state is not None) == (mode == "rename"), (where, mode, n, state)
        else:
            expect_old = mode in ("sim", "file")
            if expect_old:
                assert state == old_hash and (d / "steps.parquet").exists(), (mode, n)
            elif n == 1:            # old moved aside, new not yet in place: absent
                assert state is None, (mode, n)
            else:                   # new in place (no stale steps/transfers), old not yet deleted
                assert state not in (None, old_hash) and not (d / "steps.parquet").exists()
                new_hash = state
        if mode == "sim":
            assert not _siblings(d), _siblings(d)      # killed before the write started
    assert new_hash is not None
    # what a later reader or writer does with the leftovers of the dead writers
    for (where, mode, n), (d, _p) in cases.items():
        recover(d)
        assert not _siblings(d), (where, mode, n, _siblings(d))
        if where == "over-old" and mode == "rename" and n == 1:
            assert _state(d) == old_hash       # the interrupted run never happened
    # a rerun after a crash mid-swap completes normally
    d = cases[("over-old", "rename", 1)][0]
    assert subprocess.run([sys.executable, "-m", "simulator.cli", "run", "-q", "-o", str(d),
                           "--set", "output.events=false"], capture_output=True).returncode == 0
    assert _state(d) == new_hash and not _siblings(d)


def test_rerun_with_events_off_leaves_no_stale_file(tmp_path, capsys):
    d = tmp_path / "res"
    assert run_cli(capsys, "run", "-q", "-o", str(d))[0] == 0
    first = _state(d)
    assert (d / "steps.parquet").exists() and (d / "transfers.parquet").exists()
    code, out, err = run_cli(capsys, "run", "-o", str(d), "--set", "output.events=false")
    assert code == 0, err
    second = _state(d)
    assert second != first
    assert not (d / "steps.parquet").exists() and not (d / "transfers.parquet").exists()
    assert "steps" not in out.splitlines()[-1]           # the closing line lists what is there
    assert not _siblings(d)


def test_a_users_folder_is_never_replaced(tmp_path, capsys):
    d = tmp_path / "thesis"
    d.mkdir()
    (d / "chapter1.tex").write_text("precious")
    assert_one_line_error(capsys, ["run", "-q", "-o", str(d)], str(d), "not a moesim results folder")
    assert [p.name for p in d.iterdir()] == ["chapter1.tex"]
    assert not _siblings(d)
    # a half-written folder of an older version (result files only, no run.json) is replaced
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "summary.json").write_text("{}")
    (legacy / "config.yaml.partial").write_text("")
    assert run_cli(capsys, "run", "-q", "-o", str(legacy))[0] == 0
    assert _state(legacy) is not None and not (legacy / "config.yaml.partial").exists()
    # an empty folder is fine too; a symlink keeps pointing at the new folder
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    assert run_cli(capsys, "run", "-q", "-o", str(tmp_path / "link"))[0] == 0
    assert (tmp_path / "link").is_symlink() and _state(tmp_path / "empty") is not None


def test_write_folder_atomically_for_other_writers(tmp_path):
    """The helper the sweeps use for point folders: a write_fn that fails leaves the old
    folder as it was and no temporary folder; one that succeeds replaces it whole."""
    d = tmp_path / "point"

    def write(files):
        def fn(tmp):
            for name, text in files.items():
                (tmp / name).write_text(text)
                if text == "boom":
                    raise OSError("disk full")
        return fn

    write_folder_atomically(d, write({"a.txt": "1", "done.json": "{}"}), marker="done.json")
    assert is_complete(d, marker="done.json") and not is_complete(d)
    with pytest.raises(OSError, match="disk full"):
        write_folder_atomically(d, write({"b.txt": "boom", "done.json": "{}"}), marker="done.json")
    assert sorted(p.name for p in d.iterdir()) == ["a.txt", "done.json"] and not _siblings(d)
    write_folder_atomically(d, write({"c.txt": "2", "done.json": "{}"}), marker="done.json")
    assert sorted(p.name for p in d.iterdir()) == ["c.txt", "done.json"] and not _siblings(d)
    with pytest.raises(RuntimeError, match="did not write done.json"):
        write_folder_atomically(d, write({"x.txt": "3"}), marker="done.json")
    assert (d / "c.txt").exists()
    # a folder of other files (no marker) is refused, not deleted
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a moesim results folder"):
        write_folder_atomically(other, write({"done.json": "{}"}), marker="done.json")
    assert (other / "notes.txt").read_text() == "mine"
    # leftovers of a live writer are left alone by recover(); a dead writer's are removed
    live = d.with_name(f".{d.name}.partial-{os.getppid()}")
    dead = d.with_name(f".{d.name}.partial-{_dead_pid()}")
    live.mkdir()
    dead.mkdir()
    recover(d)
    assert live.exists() and not dead.exists()
    live.rmdir()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
