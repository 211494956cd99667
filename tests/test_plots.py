"""moesim plot: every kind drawn from a small results table, read back from the Figure
(axis labels with units, number of series, their data = the table's means), the placement
summary keys' invariants, and each class of bad input as a one-line error."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.collections import LineCollection
from matplotlib.container import BarContainer

from conftest import assert_one_line_error, run_cli
from simulator import load_config, run
from simulator.models.spec import get_model
from simulator.plots import KINDS, figure, render
from simulator.plots.timeline import busy_fraction, spread
from simulator.resources import bundled_dir

EXPERIMENTS = bundled_dir("experiments")
CAPS = [12.0, 24.0, 36.0]
VARIANTS = ["lru", "lfu", "belady"]


# ---------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def cxl_run(tmp_path_factory):
    """A real one-request run of the CXL expanders experiment (4 devices, 5 links)."""
    out = tmp_path_factory.mktemp("plots") / "cxl"
    from simulator.cli import main
    assert main(["run", str(EXPERIMENTS / "cxl_expanders.yaml"), "-o", str(out), "-q",
                 "--set", "workload.max_requests=1"]) == 0
    return out


def sweep_table() -> pd.DataFrame:
    """cache size x variant x 2 repetitions with different metric values, plus one failed
    point (which plots skip)."""
    rng = np.random.default_rng(7)
    rows = []
    pid = 0
    for cap in CAPS:
        for vi, v in enumerate(VARIANTS):
            for rep in (0, 1):
                base = 0.2 - cap / 400 - 0.02 * vi
                rows.append({
                    "point_id": pid, "cache.capacity_gb": cap, "variant": v, "rep": rep,
                    "seed": rep, "config_hash": f"h{pid}",
                    "ttft_s.mean": 1.5 + rng.random(), "tpot_s.mean": base + 0.01 * rng.random(),
                    "tpot_s.p99": base * 2 + 0.01 * rng.random(),
                    "hit_rate.decode": cap / 50 + 0.05 * vi + 0.01 * rep,
                    "hit_rate.prefill": cap / 100 + 0.02 * vi,
                    "hit_rate": cap / 60 + 0.03 * vi,
                    "energy_j.total": 0.0, "energy_j.compute": 30 + cap + rep,
                    "energy_j.static.compute": 900 - cap, "energy_j.static.dram": 200.0,
                    "energy_j.static.hbm": 0.0,
                    "energy_j.dynamic.hbm": 40 + vi, "energy_j.dynamic.dram": 300 - cap * 2,
                    "energy_j.link.pcie": 100 + 10 * vi + rep,
                    "placement.experts.dram": 256, "placement.experts.hbm": 0,
                    "placement.bytes.dram": 256 * 352321536.0, "placement.bytes.hbm": 0.0,
                    "decode_tokens_per_s": 3 + cap / 10 + vi + rep,
                    "status": "ok", "error": None, "wall_s": 0.5,
                })
                pid += 1
    df = pd.DataFrame(rows)
    comps = [c for c in df.columns if c.startswith("energy_j.") and c != "energy_j.total"]
    df["energy_j.total"] = df[comps].sum(axis=1)
    bad = dict(rows[0], point_id=pid, status="error", error="SimulationError: boom",
               **{"ttft_s.mean": np.nan, "tpot_s.mean": np.nan})
    return pd.concat([df, pd.DataFrame([bad])], ignore_index=True)


def ok(df):
    return df[df["status"] == "ok"]


def series(ax):
    """The labelled lines of an axes (error-bar caps and bound lines have _ labels)."""
    return [l for l in ax.get_lines() if not l.get_label().startswith("_")]


def legend_texts(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def bars(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


# ---------------------------------------------------------------------------- latency, line, bar
def test_latency_two_panels_means_and_std_per_variant():
    df = sweep_table()
    fig = figure("latency", df)
    assert any("skipped 1 of 19 rows" in n for n in fig.moesim_notes)
    assert len(fig.axes) == 2
    assert fig.get_size_inches()[0] == pytest.approx(7.0)
    good = ok(df)
    for ax, metric in zip(fig.axes, ("ttft_s.mean", "tpot_s.mean")):
        assert ax.get_xlabel() == "cache capacity (GB)"
        assert ax.get_ylabel() == f"{metric.split('_')[0].upper()} mean (ms)"
        lines = series(ax)
        assert [l.get_label() for l in lines] == VARIANTS
        for l, v in zip(lines, VARIANTS):
            g = good[good["variant"] == v].groupby("cache.capacity_gb")[metric]
            np.testing.assert_allclose(l.get_xdata(), CAPS)
            np.testing.assert_allclose(l.get_ydata(), g.mean().to_numpy() * 1e3)
            assert l.get_linestyle() == ("--" if v == "belady" else "-")
        # one error-bar collection per series, half-length = sample std
        errs = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(errs) == 3
        seg = np.asarray(errs[0].get_segments())
        std = good[good["variant"] == "lru"].groupby("cache.capacity_gb")[metric].std(ddof=1)
        np.testing.assert_allclose((seg[:, 1, 1] - seg[:, 0, 1]) / 2, std.to_numpy() * 1e3)
    assert legend_texts(fig.axes[-1]) == VARIANTS


def test_latency_one_metric_with_y():
    fig = figure("latency", sweep_table(), y="tpot_s.p99")
    (ax,) = fig.axes
    assert fig.get_size_inches()[0] == pytest.approx(3.5)
    assert ax.get_ylabel() == "TPOT p99 (ms)"
    good = ok(sweep_table())
    want = good[good["variant"] == "lfu"].groupby("cache.capacity_gb")["tpot_s.p99"].mean()
    np.testing.assert_allclose(series(ax)[1].get_ydata(), want.to_numpy() * 1e3)


def test_line_categorical_x_keeps_sweep_order():
    df = ok(sweep_table()).copy()
    df["system.links.pcie.profile"] = df["cache.capacity_gb"].map(
        {12.0: "pcie5_x16", 24.0: "pcie4_x16", 36.0: "pcie3_x16"})
    df = df.drop(columns=["cache.capacity_gb"])
    fig = figure("line", df, x="system.links.pcie.profile", y="decode_tokens_per_s")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "pcie profile"
    assert ax.get_ylabel() == "decode throughput (tokens/s)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["pcie5_x16", "pcie4_x16", "pcie3_x16"]
    lines = series(ax)
    assert len(lines) == 3
    for l, v in zip(lines, VARIANTS):
        g = df[df["variant"] == v].groupby("system.links.pcie.profile", sort=False)["decode_tokens_per_s"]
        np.testing.assert_allclose(l.get_xdata(), [0, 1, 2])
        np.testing.assert_allclose(l.get_ydata(), g.mean().to_numpy())


def zipped_table() -> pd.DataFrame:
    """Like pcie_generation.yaml: the link profile zipped with the config name, x cache size."""
    rows = []
    for prof, name, slow in (("pcie4_x16", "pcie4", 2.0), ("pcie5_x16", "pcie5", 1.0)):
        for cap in CAPS:
            rows.append({"point_id": len(rows), "system.links.pcie.profile": prof, "name": name,
                         "cache.capacity_gb": cap, "config_hash": f"h{len(rows)}",
                         "ttft_s.mean": slow * (2 - cap / 40), "tpot_s.mean": slow * (0.5 - cap / 100),
                         "energy_j.compute": 10.0, "energy_j.link.pcie": slow * cap,
                         "status": "ok", "error": "", "wall_s": 1.0})
    return pd.DataFrame(rows)


def test_defaults_treat_zipped_keys_as_one():
    df = zipped_table()
    fig = figure("latency", df)
    assert fig.moesim_notes == []                          # nothing averaged away
    lines = series(fig.axes[1])
    assert [l.get_label() for l in lines] == ["pcie4_x16", "pcie5_x16"]
    np.testing.assert_allclose(lines[0].get_ydata(), 1e3 * 2 * (0.5 - np.array(CAPS) / 100))
    assert legend_texts(fig.axes[1]) == ["pcie4_x16", "pcie5_x16"]
    fig = figure("energy", df)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        f"{p} / {c:g}" for p in ("pcie4_x16", "pcie5_x16") for c in CAPS]
    np.testing.assert_allclose(fig.axes[0].get_xticks(), [0, 1, 2, 3.5, 4.5, 5.5])  # group gap
    link = bars(fig.axes[0])[-1]
    np.testing.assert_allclose([b.get_height() for b in link], df["energy_j.link.pcie"])
    fig = figure("latency", df, hue="name", x="cache.capacity_gb")
    assert fig.moesim_notes == []
    # averaging over a key that is not drawn is said
    fig = figure("line", df.drop(columns=["name"]).assign(variant="lru"), x="cache.capacity_gb",
                 y="tpot_s.mean")
    assert any("average over rows that differ in system.links.pcie.profile" in n
               for n in fig.moesim_notes)
    np.testing.assert_allclose(series(fig.axes[0])[0].get_ydata(),
                               1e3 * 1.5 * (0.5 - np.array(CAPS) / 100))


def test_bar_groups_by_x_one_container_per_hue():
    df = sweep_table()
    fig = figure("bar", df, x="cache.capacity_gb", y="hit_rate.decode", hue="variant")
    (ax,) = fig.axes
    assert ax.get_ylabel() == "decode hit rate (%)"
    assert ax.get_xlabel() == "cache capacity (GB)"
    cont = bars(ax)
    assert len(cont) == 3 and legend_texts(ax) == VARIANTS
    good = ok(df)
    for c, v in zip(cont, VARIANTS):
        want = good[good["variant"] == v].groupby("cache.capacity_gb")["hit_rate.decode"].mean()
        np.testing.assert_allclose([b.get_height() for b in c], want.to_numpy() * 100)


# ---------------------------------------------------------------------------- energy
def test_energy_stacks_components_per_variant():
    df = sweep_table()
    df = df[df["cache.capacity_gb"] == 24.0]
    fig = figure("energy", df)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "energy (J)"
    assert [t.get_text() for t in ax.get_xticklabels()] == VARIANTS
    cont = bars(ax)
    # energy_j.static.hbm is 0 everywhere: left out
    assert legend_texts(ax) == ["compute", "static: compute", "static: dram", "dynamic: hbm",
                                "dynamic: dram", "link: pcie"]
    assert len(cont) == 6
    tops = np.sum([[b.get_height() for b in c] for c in cont], axis=0)
    want = ok(df).groupby("variant", sort=False)["energy_j.total"].mean()
    np.testing.assert_allclose(tops, want.to_numpy())
    link = ok(df).groupby("variant", sort=False)["energy_j.link.pcie"].mean()
    np.testing.assert_allclose([b.get_height() for b in cont[-1]], link.to_numpy())


def test_energy_from_a_run_sums_to_the_total(cxl_run):
    s = json.loads((cxl_run / "summary.json").read_text())
    fig = figure("energy", cxl_run)
    (ax,) = fig.axes
    cont = bars(ax)
    assert all(len(c) == 1 for c in cont)
    assert sum(c[0].get_height() for c in cont) == pytest.approx(s["energy_j.total"], rel=1e-12)
    labels = legend_texts(ax)
    assert "link: port_d" in labels and "static: cxl.3" in labels
    assert len(labels) == sum(1 for k, v in s.items() if v and k.startswith(
        ("energy_j.static.", "energy_j.dynamic.", "energy_j.link.", "energy_j.compute")))


# ---------------------------------------------------------------------------- placement
@pytest.mark.parametrize("name", ["default.yaml", "cxl_expanders.yaml", "static_frequency.yaml"])
def test_placement_keys_cover_every_expert_once(name):
    s = run(load_config(EXPERIMENTS / name, ["workload.max_requests=1"])).summary
    spec = get_model("mixtral-8x7b")
    experts = {k[len("placement.experts."):]: v for k, v in s.items() if k.startswith("placement.experts.")}
    nbytes = {k[len("placement.bytes."):]: v for k, v in s.items() if k.startswith("placement.bytes.")}
    devices = {k[len("bytes.read."):] for k in s if k.startswith("bytes.read.")}
    assert set(experts) == set(nbytes) == devices
    assert sum(experts.values()) == spec.moe_layers * spec.num_experts
    assert sum(nbytes.values()) == spec.moe_layers * spec.num_experts * spec.expert_bytes("bf16")
    for d in devices:
        assert nbytes[d] == experts[d] * spec.expert_bytes("bf16")
    assert nbytes["hbm"] == s["local.pinned_bytes"]       # pinned = homed in the local tier
    if name == "cxl_expanders.yaml":
        assert experts["hbm"] == experts["dram"] == 0
        assert all(experts[f"cxl.{i}"] > 0 for i in range(4))
    if name == "static_frequency.yaml":
        assert experts["hbm"] > 0


def test_placement_plot_from_run_and_by_tier(cxl_run):
    s = json.loads((cxl_run / "summary.json").read_text())
    fig = figure("placement", cxl_run)
    ax_e, ax_b = fig.axes
    assert ax_e.get_ylabel() == "experts homed (count)"
    assert ax_b.get_ylabel() == "expert bytes homed (GB)"
    assert legend_texts(ax_b) == ["cxl.0", "cxl.1", "cxl.2", "cxl.3"]
    np.testing.assert_allclose([c[0].get_height() for c in bars(ax_e)],
                               [s[f"placement.experts.cxl.{i}"] for i in range(4)])
    np.testing.assert_allclose([c[0].get_height() for c in bars(ax_b)],
                               [s[f"placement.bytes.cxl.{i}"] * 1e-9 for i in range(4)])
    fig = figure("placement", cxl_run, by="tier")
    (c,) = bars(fig.axes[0])
    assert legend_texts(fig.axes[1]) == ["cxl"]
    assert c[0].get_height() == 256


def test_placement_bars_per_point_of_a_sweep():
    df = sweep_table()
    fig = figure("placement", df, x="variant")
    cont = bars(fig.axes[0])
    assert len(cont) == 1 and len(cont[0]) == 3       # hbm holds nothing: one stack level
    assert [b.get_height() for b in cont[0]] == [256, 256, 256]


# ---------------------------------------------------------------------------- run tables
def test_layer_hits_heatmap_is_hits_over_lookups(cxl_run):
    layers = pd.read_csv(cxl_run / "layers.csv")
    fig = figure("layer_hits", cxl_run)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "MoE layer"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["prefill", "decode"]
    assert fig.axes[1].get_ylabel() == "hit rate (%)"            # the colorbar
    img = ax.images[0].get_array()
    for i, p in enumerate(("prefill", "decode")):
        t = layers[layers["phase"] == p].sort_values("layer")
        np.testing.assert_allclose(img[i], 100 * t["hits"] / t["lookups"])
    fig = figure("layer_hits", cxl_run / "layers.csv", phase="decode")
    assert fig.axes[0].images[0].get_array().shape == (1, 32)


def test_layer_hits_from_a_table_sums_runs_and_blanks_empty_layers():
    t = pd.DataFrame({"layer": [0, 1, 2, 0, 1, 2, 0], "phase": ["decode"] * 3 + ["prefill"] * 3 + ["decode"],
                      "lookups": [10, 0, 4, 8, 8, 8, 10], "hits": [5, 0, 1, 2, 4, 8, 10]})
    fig = figure("layer_hits", t)
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (2, 3)
    np.testing.assert_allclose(img[0], [25.0, 50.0, 100.0])                # prefill
    assert img[1, 0] == 75.0 and img.mask[1, 1] and img[1, 2] == 25.0      # decode: 15/20, -, 1/4


def test_occupancy_from_tables_closed_form():
    """dram -> pcie; ssd -> pcie2 + pcie. 4 GB over [0, 2) s and 2 GB over [1, 2) s from dram, 1 GB
    over [3, 4) s from ssd; 4 bins of 1 s."""
    frames = {
        "transfers": pd.DataFrame({"start_s": [0.0, 1.0, 3.0], "end_s": [2.0, 2.0, 4.0],
                                   "bytes": [4e9, 2e9, 1e9], "src_device": ["dram", "dram", "ssd"]}),
        "hardware": {"devices": {"hbm": {"path": []}, "dram": {"path": ["pcie"]},
                                 "ssd": {"path": ["pcie2", "pcie"]}},
                     "links": {"pcie": {}, "pcie2": {}}},
        "steps": pd.DataFrame({"end_s": [1.0, 2.5, 4.0], "cache_bytes": [1e9, 3e9, 3e9]}),
        "summary": {"makespan_s": 4.0, "cache.capacity_bytes": 3e9},
    }
    fig = figure("occupancy", frames, bins=4)
    ax_f, ax_l, ax_c = fig.axes
    dram, ssd = series(ax_f)
    np.testing.assert_allclose(dram.get_ydata(), [2.0, 4.0, 0.0, 0.0])     # GB/s
    np.testing.assert_allclose(ssd.get_ydata(), [0.0, 0.0, 0.0, 1.0])
    pcie, pcie2 = series(ax_l)
    assert (pcie.get_label(), pcie2.get_label()) == ("pcie", "pcie2")
    np.testing.assert_allclose(pcie.get_ydata(), [100.0, 100.0, 0.0, 100.0])
    np.testing.assert_allclose(pcie2.get_ydata(), [0.0, 0.0, 0.0, 100.0])
    np.testing.assert_allclose(series(ax_c)[0].get_ydata(), [1.0, 3.0, 3.0])
    assert len(figure("occupancy", {k: v for k, v in frames.items() if k != "steps"}).axes) == 2


def test_spread_and_busy_fraction_closed_form():
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    start, end, w = [0.0, 1.0, 3.5], [2.0, 3.0, 3.5], [4.0, 2.0, 5.0]   # last: zero length
    np.testing.assert_allclose(spread(start, end, w, edges), [2.0, 3.0, 1.0, 5.0])
    np.testing.assert_allclose(busy_fraction([0.0, 0.5, 2.5], [1.5, 1.0, 2.75], edges),
                               [1.0, 0.5, 0.25, 0.0])
    # against a brute-force fine grid on random intervals
    rng = np.random.default_rng(3)
    s = rng.uniform(0, 9, 200)
    e = s + rng.exponential(0.05, 200)
    grid = np.linspace(0, 10, 200_001)[:-1] + 0.5e-4
    active = ((grid[:, None] >= s) & (grid[:, None] < e)).any(axis=1)
    edges = np.linspace(0, 10, 11)
    brute = np.add.reduceat(active, np.arange(0, 200_000, 20_000)) / 20_000
    np.testing.assert_allclose(busy_fraction(s, e, edges), brute, atol=2e-4)


def test_occupancy_panels_integrate_to_the_summary(cxl_run):
    s = json.loads((cxl_run / "summary.json").read_text())
    hw = yaml.safe_load((cxl_run / "hardware.yaml").read_text())
    steps = pd.read_parquet(cxl_run / "steps.parquet")
    fig = figure("occupancy", cxl_run)
    ax_f, ax_l, ax_c = fig.axes
    assert ax_f.get_ylabel() == "fetch rate (GB/s)"
    assert ax_l.get_ylabel() == "link busy (%)"
    assert ax_c.get_ylabel() == "expert cache (GB)"
    assert ax_c.get_xlabel() == "simulated time (s)"
    width = s["makespan_s"] / 200
    fetched = series(ax_f)
    assert [l.get_label() for l in fetched] == ["cxl.0", "cxl.1", "cxl.2", "cxl.3"]
    for l in fetched:      # GB/s x bin width = every byte read from the device
        assert l.get_ydata().sum() * width * 1e9 == pytest.approx(s[f"bytes.read.{l.get_label()}"])
    links = series(ax_l)
    assert [l.get_label() for l in links] == list(hw["links"])
    for l in links:        # transfer intervals include access latency: within 0.5 %
        busy = l.get_ydata().sum() / 100 * width / s["makespan_s"]
        assert busy == pytest.approx(s[f"utilization.link.{l.get_label()}"], abs=0.005)
        assert busy >= s[f"utilization.link.{l.get_label()}"] - 1e-9
    occ, cap = ax_c.get_lines()
    np.testing.assert_allclose(occ.get_ydata(), steps.sort_values("end_s")["cache_bytes"] * 1e-9)
    assert cap.get_ydata()[0] == pytest.approx(s["cache.capacity_bytes"] * 1e-9)
    assert steps["cache_bytes"].max() <= s["cache.capacity_bytes"]
    assert steps["cache_bytes"].max() == s["cache.peak_bytes"]
    # --phase keeps that phase's transfers only
    fig = figure("occupancy", cxl_run, phase="prefill")
    tx = pd.read_parquet(cxl_run / "transfers.parquet")
    pre = tx[tx["phase"] == "prefill"].groupby("src_device", observed=True)["bytes"].sum()
    for l in series(fig.axes[0]):
        assert l.get_ydata().sum() * width * 1e9 == pytest.approx(pre[l.get_label()])


# ---------------------------------------------------------------------------- mrc
def mrc_table() -> pd.DataFrame:
    rows = []
    for policy, bonus in (("lru", 0.0), ("belady", 0.1)):
        for phase in ("prefill", "decode", "all"):
            for n in (16, 32, 64, 128):
                hr = min(1.0, n / 256 + bonus + (0.05 if phase == "decode" else 0.0))
                rows.append({"policy": policy, "phase": phase, "capacity_objects": n,
                             "capacity_gb": n * 0.352321536, "lookups": 1000,
                             "hits": round(1000 * hr), "hit_rate": hr, "miss_ratio": 1 - hr})
    return pd.DataFrame(rows)


def test_mrc_table_panels_per_phase_belady_dashed():
    t = mrc_table()
    fig = figure("mrc", t)
    assert [ax.get_title() for ax in fig.axes] == ["prefill", "decode", "prefill + decode"]
    for ax, phase in zip(fig.axes, ("prefill", "decode", "all")):
        assert ax.get_xlabel() == "cache size (GB)" and ax.get_ylabel() == "hit rate (%)"
        lru, bel = series(ax)
        assert (lru.get_label(), bel.get_label()) == ("lru", "belady (bound)")
        assert bel.get_linestyle() == "--" and lru.get_linestyle() == "-"
        want = t[(t["policy"] == "belady") & (t["phase"] == phase)]
        np.testing.assert_allclose(bel.get_xdata(), want["capacity_gb"])
        np.testing.assert_allclose(bel.get_ydata(), want["hit_rate"] * 100)
    fig = figure("mrc", t, y="miss_ratio", phase="decode", x="capacity_objects")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "cache size (objects)" and ax.get_ylabel() == "miss ratio (%)"
    want = t[(t["policy"] == "lru") & (t["phase"] == "decode")]
    np.testing.assert_allclose(series(ax)[0].get_ydata(), want["miss_ratio"] * 100)
    np.testing.assert_allclose(series(ax)[0].get_xdata(), want["capacity_objects"])


def test_mrc_from_a_sweep_table_means_over_repetitions():
    df = sweep_table()
    fig = figure("mrc", df, phase="decode")
    (ax,) = fig.axes
    lines = series(ax)
    assert [l.get_label() for l in lines] == ["lru", "lfu", "belady (bound)"]
    good = ok(df)
    want = good[good["variant"] == "lfu"].groupby("cache.capacity_gb")["hit_rate.decode"].mean()
    np.testing.assert_allclose(lines[1].get_ydata(), want.to_numpy() * 100)
    assert [a.get_title() for a in figure("mrc", df).axes] == ["prefill", "decode", "prefill + decode"]


# ---------------------------------------------------------------------------- CLI and files
@pytest.fixture
def sweep_dir(tmp_path):
    d = tmp_path / "sweep"
    d.mkdir()
    sweep_table().to_parquet(d / "results.parquet", index=False)
    return d


def test_cli_default_output_and_formats(sweep_dir, capsys):
    code, out, err = run_cli(capsys, "plot", str(sweep_dir), "--kind", "latency")
    assert code == 0, err
    png = sweep_dir / "figures" / "latency.png"
    assert out.strip() == f"wrote {png}"
    assert "skipped 1 of 19 rows" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for suffix, magic in ((".svg", b"<svg"), (".pdf", b"%PDF")):
        f = sweep_dir / f"t{suffix}"
        code, out, err = run_cli(capsys, "plot", str(sweep_dir / "results.parquet"), "--kind", "bar",
                                 "--x", "variant", "--y", "tpot_s.mean", "--title", "TPOT", "-o", str(f))
        assert code == 0, err
        assert magic in f.read_bytes()[:400]
    assert render("mrc", sweep_dir, sweep_dir / "m.png").stat().st_size > 1000


def test_every_kind_renders_from_the_cli(sweep_dir, cxl_run, tmp_path, capsys):
    (tmp_path / "mrc.csv").write_text(mrc_table().to_csv(index=False))
    sources = {"layer_hits": cxl_run, "occupancy": cxl_run, "mrc": tmp_path / "mrc.csv",
               "placement": cxl_run}
    extra = {"line": ["--y", "hit_rate"], "bar": ["--y", "hit_rate"]}
    for kind in KINDS:
        out = tmp_path / f"{kind}.png"
        code, _, err = run_cli(capsys, "plot", str(sources.get(kind, sweep_dir)), "--kind", kind,
                               "-o", str(out), *extra.get(kind, []))
        assert code == 0, (kind, err)
        assert out.stat().st_size > 1000


@pytest.mark.parametrize("case", [
    "unknown-kind", "no-kind", "missing-results", "lacks-columns", "layers-lack-columns",
    "bad-y", "bad-x", "bad-hue", "no-ok-rows", "unwritable", "bad-suffix", "unused-flag",
    "needs-run-folder", "no-events", "bad-phase", "ambiguous-x", "not-a-table"])
def test_bad_input_is_one_line_error(case, sweep_dir, cxl_run, tmp_path, capsys):
    res = str(sweep_dir)
    table = str(sweep_dir / "results.parquet")
    argv, needles = {
        "unknown-kind": (["plot", res, "--kind", "pie"], ["pie", "latency, energy, layer_hits"]),
        "no-kind": (["plot", res], ["--kind", "mrc"]),
        "missing-results": (["plot", str(tmp_path / "nope"), "--kind", "latency"],
                            ["nope", "plot latency", "no such file"]),
        "lacks-columns": (["plot", str(_drop(sweep_dir, tmp_path, "tpot_s.mean")), "--kind", "latency"],
                          ["dropped.csv", "plot latency", "tpot_s.mean"]),
        "layers-lack-columns": (["plot", table, "--kind", "layer_hits"],
                                ["results.parquet", "layer_hits", "layers.csv"]),
        "bad-y": (["plot", res, "--kind", "line", "--y", "tpot.mean"],
                  ["--y tpot.mean", "close matches: tpot_s.mean"]),
        "bad-x": (["plot", res, "--kind", "latency", "--x", "cache.capacity"],
                  ["--x cache.capacity", "cache.capacity_gb"]),
        "bad-hue": (["plot", res, "--kind", "latency", "--hue", "variants"], ["--hue variants", "variant"]),
        "no-ok-rows": (["plot", str(_all_failed(sweep_dir, tmp_path)), "--kind", "latency"],
                       ["failed.parquet", "no rows with status ok", "boom"]),
        "unwritable": (["plot", res, "--kind", "latency", "-o", "/proc/moesim/x.png"], ["/proc/moesim"]),
        "bad-suffix": (["plot", res, "--kind", "latency", "-o", str(tmp_path / "f.jpg")],
                       ["f.jpg", ".png, .svg, .pdf"]),
        "unused-flag": (["plot", res, "--kind", "latency", "--phase", "decode"],
                        ["plot latency", "--phase not used"]),
        "needs-run-folder": (["plot", res, "--kind", "occupancy"], ["occupancy", "transfers.parquet"]),
        "no-events": (["plot", str(_without(cxl_run, tmp_path, "transfers.parquet")), "--kind", "occupancy"],
                      ["no-events", "transfers.parquet", "output.events"]),
        "bad-phase": (["plot", str(cxl_run), "--kind", "layer_hits", "--phase", "warmup"],
                      ["layers.csv", "--phase warmup", "prefill, decode"]),
        "ambiguous-x": (["plot", str(_two_keys(sweep_dir, tmp_path)), "--kind", "latency"],
                        ["give --x", "cache.capacity_gb", "workload.batch_size"]),
        "not-a-table": (["plot", str(cxl_run / "run.json"), "--kind", "energy"], ["run.json", ".parquet or .csv"]),
    }[case]
    assert_one_line_error(capsys, argv, *needles)


def _without(run_dir, tmp_path, name):
    import shutil
    d = shutil.copytree(run_dir, tmp_path / "no-events")
    (d / name).unlink()
    return d


def _drop(sweep_dir, tmp_path, col):
    p = tmp_path / "dropped.csv"
    pd.read_parquet(sweep_dir / "results.parquet").drop(columns=[col]).to_csv(p, index=False)
    return p


def _all_failed(sweep_dir, tmp_path):
    p = tmp_path / "failed.parquet"
    df = pd.read_parquet(sweep_dir / "results.parquet")
    df.assign(status="error", error="SimulationError: boom").to_parquet(p, index=False)
    return p


def _two_keys(sweep_dir, tmp_path):
    p = tmp_path / "two.parquet"
    df = pd.read_parquet(sweep_dir / "results.parquet")
    df.assign(**{"workload.batch_size": df["rep"] + 1}).to_parquet(p, index=False)
    return p
