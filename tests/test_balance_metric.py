"""load_balance_cv.<tier>: population std / mean of the bytes read from each device of a tier."""
from __future__ import annotations

import math
from types import SimpleNamespace as NS

from simulator import load_config, run
from simulator.metrics.definitions import definition_of
from simulator.metrics.summary import balance_cv
from simulator.resources import bundled_dir


def _devs(*names):
    return [NS(name=n) for n in names]


def test_by_hand():
    tiers = {"hbm": _devs("hbm"), "cxl": _devs("c0", "c1", "c2", "c3"), "pair": _devs("p0", "p1")}
    # cxl: 1, 1, 1, 5 -> mean 2, population variance (1+1+1+9)/4 = 3 -> cv sqrt(3)/2
    read = {"hbm": 7.0, "c0": 1.0, "c1": 1.0, "c2": 1.0, "c3": 5.0, "p0": 0.0, "p1": 0.0}
    out = balance_cv(read, tiers)
    assert set(out) == {"load_balance_cv.cxl", "load_balance_cv.pair"}        # single-device tiers skipped
    assert math.isclose(out["load_balance_cv.cxl"], math.sqrt(3) / 2, rel_tol=1e-12)
    assert math.isnan(out["load_balance_cv.pair"])                       # mean 0
    # one of n devices serves everything: sqrt(n - 1)
    one = balance_cv({"c0": 9.0, "c1": 0.0, "c2": 0.0, "c3": 0.0}, {"cxl": tiers["cxl"]})
    assert math.isclose(one["load_balance_cv.cxl"], math.sqrt(3), rel_tol=1e-12)
    assert balance_cv({"c0": 4.0, "c1": 4.0}, {"t": _devs("c0", "c1")})["load_balance_cv.t"] == 0.0
    assert definition_of("load_balance_cv.cxl")[0] == "load_balance_cv.<tier>"


def test_in_a_run_matches_bytes_read():
    loaded = load_config(bundled_dir("experiments") / "cxl_expanders.yaml",
                         ["workload.max_requests=1", "output.events=false"])
    s = run(loaded).summary
    b = [s[f"bytes.read.cxl.{i}"] for i in range(4)]
    mean = sum(b) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in b) / 4)
    assert mean > 0
    assert math.isclose(s["load_balance_cv.cxl"], std / mean, rel_tol=1e-12)
    assert "load_balance_cv.hbm" not in s and "load_balance_cv.dram" not in s
