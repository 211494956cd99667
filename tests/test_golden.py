"""Golden summaries: every bundled experiment (and the prefetch, batched and multi-device
paths) gives exactly the summary pinned in tests/golden/summaries.json.

Engine work (memory hierarchy, transfers, hot path) must leave results identical; a change
that is meant to move a number regenerates the file with tests/golden/make_golden.py and says
which values changed and why in its commit message.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simulator import load_config, run
from simulator.resources import bundled_dir

GOLDEN = Path(__file__).resolve().parent / "golden" / "summaries.json"

# case name -> (experiment file, --set overrides)
CASES: dict[str, tuple[str, list[str]]] = {
    p.stem: (p.name, []) for p in sorted(bundled_dir("experiments").glob("*.yaml"))}
CASES["all_resident_h200"] = ("all_resident_h200.yaml", ["workload.max_requests=2"])
CASES.update({
    "default+prefetch": ("default.yaml", ["prefetch.name=oracle_next_layer"]),
    "default+prefetch+nocache": ("default.yaml", ["prefetch.name=oracle_next_layer",
                                                  "cache.name=none"]),
    "default+batch4": ("default.yaml", ["workload.batch_size=4"]),
    "cxl_expanders+prefetch": ("cxl_expanders.yaml", ["prefetch.name=oracle_next_layer"]),
    "default+poisson": ("default.yaml", ["workload.batch_size=2",
                                         "workload.arrivals.process=poisson",
                                         "workload.arrivals.rate_per_s=0.2"]),
})


def summary_of(case: str) -> dict:
    name, sets = CASES[case]
    res = run(load_config(bundled_dir("experiments") / name, sets + ["output.events=false"]))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in res.summary.items()}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_summary_equals_golden(case, golden):
    assert case in golden, f"{case} not pinned: run tests/golden/make_golden.py"
    want, got = golden[case], summary_of(case)
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    diff = {k: (want[k], got[k]) for k in want
            if not (want[k] == got[k] or (want[k] is not None and got[k] is not None
                                          and math.isclose(want[k], got[k], rel_tol=1e-12,
                                                           abs_tol=1e-15)))}
    assert not diff, f"{case}: {len(diff)} values differ (golden, now): {diff}"


@pytest.mark.parametrize("name,sets", [("default.yaml", []), ("cxl_expanders.yaml", []),
                                       ("default.yaml", ["workload.batch_size=4"])])
def test_prefetch_never_changes_hits(name, sets):
    """Prefetching changes when bytes arrive, never what the cache holds: hits, per layer and
    phase, equal the same run without prefetch. (Before the fix, staged and late prefetches
    entered the cache inside the lookup loop and could evict an expert the same layer was
    about to find resident: 13,191 vs 13,192 decode hits on the bundled default.)"""
    def layers(extra):
        res = run(load_config(bundled_dir("experiments") / name,
                              sets + extra + ["output.events=false"]))
        return res.summary, res.layers
    s0, l0 = layers([])
    s1, l1 = layers(["prefetch.name=oracle_next_layer"])
    assert s1["prefetch.issued"] > 0
    for k in ("hits.decode", "hits.prefill", "lookups.decode", "cache.insertions",
              "cache.evictions"):
        assert s1[k] == s0[k], k
    assert l1["hits"].tolist() == l0["hits"].tolist()
