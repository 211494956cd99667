"""Miss-ratio curves (simulator/mrc): the one-pass LRU curve and the per-size Belady curve equal
the engine's own hits, libCacheSim driven with the same lookup groups, and a brute-force
group-semantics LRU; ``moesim mrc`` writes the contract table and fails in one line."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import simulator
from conftest import REAL_TRACE_SOURCES, assert_one_line_error, real_trace, run_cli
from simulator.engine.hierarchy import MemoryHierarchy
from simulator.engine.simulation import Simulation
from simulator.engine.stream import trace_stream
from simulator.mrc.cli import COLUMNS
from simulator.mrc.curves import LookupStream, belady_curve, lru_bounds_all_sizes, lru_curve
from simulator.mrc.lookups import lookup_stream
from simulator.traces.io import read_trace
from simulator.resources import default_trace_path

SMALL = ["workload.max_requests=4"]          # default trace, ~0.1 s per engine run


def group_lru_hits(stream: np.ndarray, starts: np.ndarray, C: int) -> int:
    """Reference: the engine's lookup semantics on an OrderedDict of C objects."""
    d: OrderedDict = OrderedDict()
    hits = 0
    bounds = starts.tolist() + [stream.size]
    s = stream.tolist()
    for g in range(len(bounds) - 1):
        missed = []
        for o in s[bounds[g]:bounds[g + 1]]:
            if o in d:
                d.move_to_end(o)
                hits += 1
            else:
                missed.append(o)
        for o in missed:
            if len(d) >= C:
                d.popitem(last=False)
            d[o] = None
    return hits


def _stream(oids, starts, size=1.0):
    starts = np.asarray(starts, dtype=np.int64)
    return LookupStream(np.asarray(oids, dtype=np.int64), starts,
                        np.zeros(starts.size, dtype=np.int8), size)


def _engine(loaded_sets, trace=None, *, policy="lru", C=None, size=None):
    sets = list(loaded_sets) + [f"cache.name={policy}", f"cache.capacity_gb={C * size / 1e9!r}"]
    s = simulator.run(simulator.load_config(None, sets), trace).summary
    return s["hits.prefill"], s["hits.decode"]


def test_lru_curve_equals_group_lru_at_every_size_on_random_groups():
    rng = np.random.default_rng(7)
    for _ in range(150):
        n_obj = int(rng.integers(3, 25))
        groups = [rng.choice(n_obj, size=int(rng.integers(1, min(n_obj, 7) + 1)), replace=False)
                  for _ in range(int(rng.integers(5, 60)))]
        oids = np.concatenate(groups)
        starts = np.r_[0, np.cumsum([g.size for g in groups])[:-1]]
        ls = _stream(oids, starts)
        sizes = list(range(1, n_obj + 2))
        got = lru_curve(ls, sizes)["hits"].sum(axis=1)
        want = [group_lru_hits(oids, starts, C) for C in sizes]
        assert got.tolist() == want


def test_flat_stack_distances_are_not_the_engine_and_bounds_hold():
    """Why the windows are resolved: the flat (one get at a time) stack distance misses the
    engine's hits-before-misses order inside a group on the default trace; the one-pass
    bounds bracket the exact curve at every size."""
    from simulator.traces.stats import lru_hit_counts, stack_distances_stream
    tr = read_trace(default_trace_path())
    oids, starts = trace_stream(tr, groups=True)
    ls = _stream(oids, starts)
    sizes = list(range(1, ls.num_objects + 1))
    exact = lru_curve(ls, sizes)
    # flat distances counted at the group's start: positions of the same group do not count
    sd = stack_distances_stream(oids)
    flat = lru_hit_counts(sd, sizes)
    assert (flat != exact["hits"].sum(axis=1)).any()
    bounds = lru_bounds_all_sizes(ls)
    tot = exact["hits"].sum(axis=1)
    assert (bounds["lower"].sum(axis=1) <= tot).all() and (tot <= bounds["upper"].sum(axis=1)).all()
    for C in (8, 63, 100, 200):
        assert tot[C - 1] == group_lru_hits(oids, starts, C)


def test_lru_and_belady_curves_equal_engine_and_libcachesim_on_default():
    lcs = pytest.importorskip("libcachesim")  # noqa: F841
    from simulator.peers import replay_grouped
    ls = lookup_stream(simulator.load_config(None, SMALL))
    assert ls.max_group == 8
    sizes = [2, 7, 8, 9, 40, 120]           # below, at and above the largest group
    lru = lru_curve(ls, sizes)["hits"]
    bel = belady_curve(ls, sizes)["hits"]
    size = ls.object_bytes
    for j, C in enumerate(sizes):
        assert tuple(lru[j]) == _engine(SMALL, C=C, size=size), C
        assert tuple(bel[j]) == _engine(SMALL, policy="belady", C=C, size=size), C
        peer, _ = replay_grouped("lru", ls.oids, ls.starts, int(C * size), int(size))
        assert peer == lru[j].sum(), C
    assert lru[-1].sum() > lru[0].sum()


def _real(name: str):
    tr = real_trace(name)
    ids = tr.request_bounds()[0]
    keep, tokens = [], 0
    for r, n in zip(ids, np.diff(np.r_[tr.request_bounds()[1], tr.num_tokens])):
        if keep and tokens + n > 3000:
            break
        keep.append(r)
        tokens += n
    tr = tr.select_requests(keep)
    if tr.num_tokens > 3000:                 # one long request: its first 3000 tokens
        tr = tr._take(np.arange(tr.num_tokens) < 3000)
    return tr


@pytest.mark.parametrize("name", list(REAL_TRACE_SOURCES))
def test_lru_curve_equals_engine_and_libcachesim_on_real_traces(name):
    pytest.importorskip("libcachesim")
    from simulator.peers import replay_grouped
    tr = _real(name)
    sets = ["model.precision=bf16"]
    ls = lookup_stream(simulator.load_config(None, sets), tr)
    N, g = ls.num_objects, ls.max_group
    sizes = sorted({max(1, g - 1), g, g + 1, N // 3, (2 * N) // 3})
    lru = lru_curve(ls, sizes)["hits"]
    for j, C in enumerate(sizes):
        assert tuple(lru[j]) == _engine(sets, tr, C=C, size=ls.object_bytes), (name, C)
        peer, _ = replay_grouped("lru", ls.oids, ls.starts, int(C * ls.object_bytes),
                                 int(ls.object_bytes))
        assert peer == lru[j].sum(), (name, C)
    if name in ("mixtral-raw", "qwen1.5-moe"):           # Belady: two traces keep it quick
        bel = belady_curve(ls, sizes[-2:])["hits"]
        for j, C in enumerate(sizes[-2:]):
            assert tuple(bel[j]) == _engine(sets, tr, policy="belady", C=C, size=ls.object_bytes)


def test_recorded_groups_equal_derived_groups_at_batch_1():
    """The observer hook sees exactly the groups the trace-derived stream predicts."""
    loaded = simulator.load_config(None, SMALL)
    ls = lookup_stream(loaded)
    seen = []
    sim = Simulation(loaded)
    assert sim.hierarchy.access.__func__ is MemoryHierarchy._access   # no observer: unwrapped
    sim.observe_lookups(lambda phase, layer, oids: seen.append((phase, list(oids))))
    sim.run()
    assert [p for p, _ in seen] == ls.group_phase.tolist()
    assert np.concatenate([o for _, o in seen]).tolist() == ls.oids.tolist()
    assert np.cumsum([0] + [len(o) for _, o in seen])[:-1].tolist() == ls.starts.tolist()


def test_batched_closed_loop_curve_equals_engine_at_every_size():
    sets = SMALL + ["workload.batch_size=3"]
    ls = lookup_stream(simulator.load_config(None, sets))
    assert "does not depend on timing" in ls.how and "recorded" in ls.how
    sizes = [8, 60, 150]
    lru = lru_curve(ls, sizes)["hits"]
    for j, C in enumerate(sizes):
        assert tuple(lru[j]) == _engine(sets, C=C, size=ls.object_bytes)


def test_poisson_batched_curve_holds_for_the_recorded_run():
    size = 352_321_536
    sets = SMALL + ["workload.batch_size=3", "workload.arrivals.process=poisson",
                    "workload.arrivals.rate_per_s=0.3", "cache.name=lru",
                    f"cache.capacity_gb={100 * size / 1e9!r}"]
    ls = lookup_stream(simulator.load_config(None, sets))
    assert "holds for that run's grouping" in ls.how
    assert tuple(lru_curve(ls, [100])["hits"][0]) == _engine(sets, C=100, size=size)


def test_batch_1_poisson_is_derived_in_arrival_order():
    sets = SMALL + ["workload.arrivals.process=poisson", "workload.arrivals.rate_per_s=5"]
    ls = lookup_stream(simulator.load_config(None, sets))
    assert ls.how.startswith("derived")
    assert tuple(lru_curve(ls, [70])["hits"][0]) == _engine(sets, C=70, size=ls.object_bytes)


def test_pinned_experts_are_hits_at_every_size():
    sets = SMALL + ["placement.name=static_frequency", "placement.pinned_gb=10"]
    ls = lookup_stream(simulator.load_config(None, sets))
    assert sum(ls.pinned_lookups) > 0
    for C in (5, 60):
        assert tuple(lru_curve(ls, [C])["hits"][0]) == _engine(sets, C=C, size=ls.object_bytes)


# ---------------------------------------------------------------------- CLI
def test_cli_prints_and_writes_contract_table(capsys, tmp_path):
    import pandas as pd
    out = tmp_path / "mrc.csv"
    code, text, err = run_cli(capsys, "mrc", "--set", "workload.max_requests=4", "--sizes",
                              "8,40,120", "--phase", "all,decode", "-o", str(out))
    assert code == 0, err
    assert "lru" in text and "belady" in text and "40" in text
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS
    assert len(df) == 2 * 2 * 3
    ls = lookup_stream(simulator.load_config(None, SMALL))
    want = lru_curve(ls, [8, 40, 120])["hits"]
    got = df[(df.policy == "lru") & (df.phase == "all")].sort_values("capacity_objects")
    assert got["hits"].tolist() == want.sum(axis=1).tolist()
    assert np.allclose(got["hit_rate"] + got["miss_ratio"], 1.0)
    assert np.allclose(got["capacity_gb"], got["capacity_objects"] * ls.object_bytes / 1e9)
    pq = tmp_path / "mrc.parquet"
    code, _, err = run_cli(capsys, "mrc", "--set", "workload.max_requests=4", "--policy", "lru",
                           "--max-gb", "20", "-o", str(pq), "--json")
    assert code == 0, err
    t = pd.read_parquet(pq)
    assert list(t.columns) == COLUMNS and t["capacity_gb"].max() <= 20
    assert t["capacity_objects"].max() == int(20e9 // ls.object_bytes)


def test_cli_plot(capsys, tmp_path):
    pytest.importorskip("simulator.plots")
    fig = tmp_path / "mrc.png"
    code, _, err = run_cli(capsys, "mrc", "--set", "workload.max_requests=2", "--sizes", "20,80",
                           "--plot", str(fig))
    assert code == 0, err
    assert fig.stat().st_size > 0


def test_cli_bad_inputs_are_one_line_errors(capsys, tmp_path, monkeypatch):
    import simulator.mrc.lookups as lk

    def no_work(*a, **k):
        raise AssertionError("the work started before the arguments were checked")
    bad = [(["mrc", "--policy", "lru,lfu"], ["--policy", "lfu"]),
           (["mrc", "--sizes", "8,0"], ["--sizes", "0"]),
           (["mrc", "--sizes", "8,x"], ["--sizes", "'x'"]),
           (["mrc", "--max-gb", "-1"], ["--max-gb", "-1"]),
           (["mrc", "--phase", "warm"], ["--phase", "warm"]),
           (["mrc", "-o", str(tmp_path / "t.txt")], ["-o", ".csv"]),
           (["mrc", "-o", "/proc/nope/t.csv"], ["-o", "/proc/nope/t.csv"]),
           (["mrc", "--plot", str(tmp_path / "f.gif")], ["--plot", ".png"])]
    monkeypatch.setattr(lk, "lookup_stream", no_work)
    for argv, needles in bad:
        assert_one_line_error(capsys, argv, *needles)
    monkeypatch.undo()
    assert_one_line_error(capsys, ["mrc", str(tmp_path / "none.yaml")], "none.yaml")
    assert_one_line_error(capsys, ["mrc", "--set", "cache.capacity_gb=-3"], "cache.capacity_gb")
    assert_one_line_error(capsys, ["mrc", "--set", "workload.max_requests=2", "--max-gb", "0.1"],
                          "--max-gb", "below one expert")
