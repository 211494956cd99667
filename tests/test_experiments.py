"""Every bundled experiment config loads and runs (one request each, to stay quick)."""
from __future__ import annotations

import math

import pytest

from simulator import load_config, run
from simulator.resources import bundled_dir

CONFIGS = sorted(p.name for p in bundled_dir("experiments").glob("*.yaml"))


@pytest.mark.parametrize("name", CONFIGS)
def test_experiment_runs(name):
    loaded = load_config(bundled_dir("experiments") / name, ["workload.max_requests=1"])
    res = run(loaded)
    s = res.summary
    assert s["requests"] == 1
    assert s["makespan_s"] > 0 and math.isfinite(s["energy_j.total"])
    assert s["cache.peak_bytes"] <= s["cache.capacity_bytes"]
