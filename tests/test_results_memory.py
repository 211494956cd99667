"""Results tables carry the config once, and the transfers table is written without a pandas
frame (the issue: a 10M-access replay with events on peaked at 2-2.8 GB RSS because every
transfer row got ~22 cfg.* columns and the table went through several pandas copies).

* event tables: a ``config_hash`` column, no ``cfg.*`` columns; the config in the Parquet
  schema metadata, round-tripping to the run's resolved config;
* transfers.parquet written from the TransferLog in row groups equals the DataFrame the
  results used to be built from (multi-device run with prefetch, several row groups);
* the memory of writing the transfers (traced Python/numpy allocations plus Arrow's pool) is
  a fraction of the table's column bytes, not a multiple.
"""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from simulator import load_config
from simulator.config.load import config_hash
from simulator.engine import transfer_log
from simulator.engine.simulation import Simulation
from simulator.engine.transfer_log import TransferLog
from simulator.metrics.summary import TransfersTable
from simulator.results import writer
from simulator.traces.schema import PHASE_NAMES
from simulator.metrics.summary import PURPOSE_NAMES

SETS = ["prefetch.name=oracle_next_layer", "output.events=true"]
SMALL_ROW_GROUP = 2048          # well below the run's transfers: several row groups
SPILL = 5000                    # transfers the log holds in memory in the cxl run


def _experiment(name: str) -> str:
    from pathlib import Path
    return str(Path(__file__).resolve().parents[1] / "experiments" / name)


@pytest.fixture(scope="module")
def cxl_run(tmp_path_factory):
    """cxl_expanders (four CXL devices + DRAM) with the oracle prefetcher, events on, written
    with small row groups: (loaded, sim, result, folder)."""
    loaded = load_config(_experiment("cxl_expanders.yaml"), SETS)
    mp = pytest.MonkeyPatch()
    mp.setattr(transfer_log, "SPILL_TRANSFERS", SPILL)      # the log spills segments too
    mp.setattr(writer, "ROW_GROUP_ROWS", SMALL_ROW_GROUP)
    try:
        sim = Simulation(loaded)
        res = sim.run()
        out = tmp_path_factory.mktemp("cxl") / "res"
        writer.write_results(res, loaded, out)
    finally:
        mp.undo()
    assert len(sim.hierarchy.transfers._segments) >= 3
    return loaded, sim, res, out


def _old_transfers_frame(sim) -> pd.DataFrame:
    """The transfers DataFrame as metrics.summary.collect built it before (reference)."""
    rows = sim.hierarchy.transfers.rows()
    names = [d.name for d in sim.system.devices]
    tx = pd.DataFrame({
        "start_s": rows["start_s"], "end_s": rows["end_s"], "bytes": rows["bytes"],
        "src_device": pd.Categorical.from_codes(rows["src"], categories=names),
        "object_id": rows["object_id"],
        "phase": pd.Categorical.from_codes(rows["phase"], categories=list(PHASE_NAMES)),
        "purpose": pd.Categorical.from_codes(rows["purpose"], categories=list(PURPOSE_NAMES)),
    })
    E, S = sim.ctx.num_experts, sim.ctx.slices_per_expert
    tx["layer"] = tx["object_id"] // (E * S)
    tx["expert"] = (tx["object_id"] // S) % E
    return tx


def test_event_tables_carry_the_hash_and_the_config_once(cxl_run):
    loaded, _sim, _res, out = cxl_run
    h = loaded.config_hash
    for name in ("requests.parquet", "steps.parquet", "transfers.parquet", "requests.csv",
                 "layers.csv"):
        p = out / name
        cols = (pq.read_schema(p).names if p.suffix == ".parquet"
                else pd.read_csv(p, nrows=1).columns.tolist())
        assert not [c for c in cols if c.startswith("cfg.")], name
        assert "config_hash" in cols, name
        tab = pd.read_parquet(p, columns=["config_hash"]) if p.suffix == ".parquet" else pd.read_csv(p)
        assert set(tab["config_hash"]) == {h}, name
    cfg_yaml = yaml.safe_load((out / "config.yaml").read_text())
    for name in ("requests", "steps", "transfers"):
        meta = pq.read_schema(out / f"{name}.parquet").metadata
        assert meta[b"moesim.config_hash"].decode() == h
        got_hash, got = writer.read_config_metadata(out / f"{name}.parquet")
        assert got_hash == h and got == loaded.raw == cfg_yaml
        assert config_hash(got) == h                       # same serialisation as the hash
        assert list(got) == list(loaded.raw)               # key order kept
        assert json.loads(meta[b"moesim.config"]) == got
    # summary.csv keeps the flattened config, one row
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 1 and summary["config_hash"].tolist() == [h]
    assert summary["cfg.prefetch.name"].tolist() == ["oracle_next_layer"]
    assert summary["cfg.placement.tier"].tolist() == ["cxl"]


def test_streamed_transfers_equal_the_old_frame(cxl_run):
    _loaded, sim, res, out = cxl_run
    old = _old_transfers_frame(sim)
    # the run is the interesting kind: several source devices, demand and prefetch, and more
    # transfers than one row group
    assert old["src_device"].nunique() >= 4
    assert set(old["purpose"]) == {"demand", "prefetch"}
    pf = pq.ParquetFile(out / "transfers.parquet")
    assert pf.metadata.num_rows == len(old) > 3 * SMALL_ROW_GROUP
    assert pf.num_row_groups > 3
    written = pd.read_parquet(out / "transfers.parquet")
    assert written.columns.tolist() == old.columns.tolist() + ["config_hash"]
    pd.testing.assert_frame_equal(written.drop(columns="config_hash"), old)
    # the lazy DataFrame of the result is the same table
    pd.testing.assert_frame_equal(res.transfers, old)
    assert res.transfers is res.transfers                  # built once, then kept
    # steps: the engine's tuples, as before
    steps = pd.DataFrame(sim.steps, columns=["iteration", "phase", "start_s", "end_s", "tokens",
                                             "cache_bytes"])
    steps["phase"] = steps["phase"].map(dict(enumerate(PHASE_NAMES)))
    pd.testing.assert_frame_equal(res.steps, steps)
    got = pd.read_parquet(out / "steps.parquet").drop(columns="config_hash")
    pd.testing.assert_frame_equal(got, steps, check_dtype=False)
    assert got["phase"].tolist() == steps["phase"].tolist()


def test_chunks_cover_the_log_exactly(cxl_run):
    _loaded, sim, _res, _out = cxl_run
    rows = sim.hierarchy.transfers.rows()
    assert len(rows["object_id"]) == len(sim.hierarchy.transfers)
    for size in (1, 7, 1000, 10**9):
        pieces = list(sim.hierarchy.transfers.chunks(size))
        for name, col in rows.items():
            got = np.concatenate([p[name] for p in pieces])
            assert got.dtype == col.dtype and np.array_equal(got, col), (size, name)
        assert max(len(p["object_id"]) for p in pieces) <= max(size, SPILL) + 64


def test_spilled_log_equals_the_in_memory_log():
    rng = np.random.default_rng(3)
    mem, spilled = TransferLog(spill_at=0), TransferLog(spill_at=37)
    t = 0.0
    for _ in range(2000):
        n = int(rng.integers(1, 9))
        args = (t, t + float(rng.random()), float(rng.integers(1, 5)) * 1e6, n,
                int(rng.integers(0, 5)), int(rng.integers(0, 2)), int(rng.integers(0, 2)),
                rng.integers(0, 10**6, n).tolist())
        mem.add(*args)
        spilled.add(*args)
        t += 0.5
    assert len(spilled._segments) > 10 and not mem._segments
    assert len(mem) == len(spilled) and mem.nbytes == spilled.nbytes
    a, b = mem.rows(), spilled.rows()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].dtype == b[k].dtype
    spilled.close()


def test_empty_transfers_table_has_its_columns(tmp_path):
    from simulator.engine.transfer_log import TransferLog
    tab = TransfersTable(TransferLog(), ["hbm", "dram"], 8, 1)
    assert len(tab) == 0
    df = tab.to_pandas()
    assert df.columns.tolist() == list(TransfersTable.arrow_schema(tab).names) and len(df) == 0
    loaded = load_config(None, ["output.events=true"])
    writer.write_table_parquet(tab, tmp_path / "t.parquet", loaded)
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert len(back) == 0 and back.columns.tolist() == df.columns.tolist() + ["config_hash"]


def test_writing_transfers_needs_a_row_group_of_memory_not_the_table(cxl_run, tmp_path,
                                                                      monkeypatch):
    """Peak allocation while writing transfers.parquet (tracemalloc: Python and numpy; a
    proxy pool: Arrow) stays a fraction of the expanded columns' bytes. The old path (a pandas
    frame, a copy with the cfg.* columns, its Arrow conversion) needed several times them."""
    loaded, _sim, res, _out = cxl_run
    src = res.table_source("transfers")
    assert isinstance(src, TransfersTable)
    table_bytes = src.nbytes
    monkeypatch.setattr(writer, "ROW_GROUP_ROWS", SMALL_ROW_GROUP)
    writer.write_table_parquet(src, tmp_path / "warm.parquet", loaded)   # imports, caches
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    old_pool = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        writer.write_table_parquet(src, tmp_path / "t.parquet", loaded)
        _cur, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(old_pool)
    peak = traced_peak + pool.max_memory()
    assert peak < 0.75 * table_bytes, (peak, table_bytes)
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.num_rows == len(src)
