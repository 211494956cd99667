"""The results folder of a run (the contract scripts and sweeps rely on).

    DIR/summary.json      flat {metric name: number}; names and units in metrics/definitions.py
    DIR/summary.csv       the same as one row, plus the flattened config (``cfg.*`` columns)
                          and config_hash
    DIR/requests.parquet  one row per request (+ .csv)
    DIR/layers.csv        lookups and hits per (phase, layer)
    DIR/steps.parquet     one row per iteration       (output.events: true)
    DIR/transfers.parquet one row per transfer        (output.events: true)
    DIR/config.yaml       the resolved config (after --set), DIR/hardware.yaml every device
                          value with its source, DIR/run.json name, hash, versions, notes and
                          the list of files (written last: the folder's completion marker)

The tables other than summary.csv carry the config once, not per row: a ``config_hash``
column (the run's, the same on every row, so tables of several runs can be concatenated and
told apart), and each Parquet file has the config in its schema metadata, under the keys
``moesim.config_hash`` and ``moesim.config`` (the resolved config as JSON, serialised as for
the hash: :func:`read_config_metadata` reads it back). The transfers table is written from
the engine's transfer log in row groups of :data:`ROW_GROUP_ROWS` rows with pyarrow, never as
one pandas frame, so writing it costs about one row group of memory.

A results folder is whole or absent (:func:`write_folder_atomically`): it is written into a
hidden sibling ``.DIR.partial-<pid>`` and swapped into place, so DIR is always absent, the
complete previous run or the complete new run -- never a mix, and no file of an earlier run
(say ``steps.parquet`` after a rerun with ``output.events: false``) survives a rerun.

The swap, and what a crash at each point leaves:

1. write everything into ``.DIR.partial-<pid>`` (crash: DIR untouched; the partial folder is
   garbage);
2. if DIR exists, rename it to ``.DIR.old-<pid>`` (crash right after: DIR is absent, the old
   run sits complete under the hidden name);
3. rename the partial folder to DIR (crash right after: DIR is the complete new run; the old
   one is garbage);
4. delete ``.DIR.old-<pid>``.

:func:`recover` (called by every writer before it starts, and callable by readers) cleans up
after a crashed writer whose process is gone: it puts a complete ``.old`` folder back when DIR
is missing (case 2: the interrupted run never happened) and deletes leftover ``.partial`` and
``.old`` folders. Folders of a live writer (its pid still running) are left alone.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config.load import LoadedConfig
from ..errors import ConfigError, MoesimError
from ..metrics.summary import LazyTable, RunResult
from ..serialize import pid_alive, to_plain

MARKER = "run.json"
# Every name write_results can leave in a folder (plus per-file temporaries of older
# versions): a folder holding only these is a moesim results folder and may be replaced.
RESULT_FILES = frozenset({"summary.json", "summary.csv", "requests.parquet", "requests.csv",
                          "layers.csv", "steps.parquet", "transfers.parquet", "config.yaml",
                          "hardware.yaml", MARKER})


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": scalar}; lists of mappings use [i]; other lists are JSON."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, list) and any(isinstance(v, dict) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}[{i}]"))
    elif isinstance(d, list):
        out[prefix] = json.dumps(d)
    else:
        out[prefix] = d
    return out


def config_columns(loaded: LoadedConfig) -> dict[str, Any]:
    """summary.csv's config columns: ``cfg.<flattened key>`` for every config value, and
    config_hash."""
    cols = {f"cfg.{k}": v for k, v in flatten(loaded.raw).items()}
    cols["config_hash"] = loaded.config_hash
    return cols


CONFIG_HASH_KEY = b"moesim.config_hash"
CONFIG_KEY = b"moesim.config"
ROW_GROUP_ROWS = 1 << 16         # rows per Parquet row group (and in-memory piece of transfers)


def config_metadata(loaded: LoadedConfig) -> dict[bytes, bytes]:
    """The Parquet schema metadata every results table carries: the config hash and the
    resolved config as JSON (the serialisation the hash is computed from, keys in order)."""
    return {CONFIG_HASH_KEY: loaded.config_hash.encode(),
            CONFIG_KEY: json.dumps(loaded.raw, default=str).encode()}


def read_config_metadata(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(config_hash, resolved config) from a results Parquet file's schema metadata."""
    import pyarrow.parquet as pq
    meta = pq.read_schema(str(path)).metadata or {}
    if CONFIG_HASH_KEY not in meta or CONFIG_KEY not in meta:
        raise MoesimError(f"{path}: no moesim.config metadata (not a moesim results table, "
                          "or written by an older version: see the folder's config.yaml)")
    return meta[CONFIG_HASH_KEY].decode(), json.loads(meta[CONFIG_KEY])


def _with_hash(df, config_hash: str):
    """A small table with the config_hash column appended (a copy)."""
    df = df.copy()
    df["config_hash"] = config_hash
    return df


def _hash_column(config_hash: str, n: int):
    import pyarrow as pa
    return pa.repeat(pa.scalar(config_hash, type=pa.string()), n)


def _add_metadata(schema, meta: dict[bytes, bytes]):
    return schema.with_metadata({**(schema.metadata or {}), **meta})


def write_table_parquet(src, path: Path, loaded: LoadedConfig) -> None:
    """A table (DataFrame or LazyTable) as Parquet with config_hash and the config metadata.
    A source with ``record_batches()`` (the transfers) is streamed row group by row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    h, meta = loaded.config_hash, config_metadata(loaded)
    if isinstance(src, LazyTable) and hasattr(src, "record_batches"):
        schema = _add_metadata(src.arrow_schema().append(pa.field("config_hash", pa.string())),
                               meta)
        with pq.ParquetWriter(str(path), schema) as w:
            for batch in src.record_batches(ROW_GROUP_ROWS):
                cols = batch.columns + [_hash_column(h, batch.num_rows)]
                w.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))
                del batch, cols
        pa.default_memory_pool().release_unused()
        return
    if isinstance(src, LazyTable) and hasattr(src, "to_arrow"):
        tab = src.to_arrow()
        tab = tab.append_column(pa.field("config_hash", pa.string()),
                                _hash_column(h, tab.num_rows))
    else:
        tab = pa.Table.from_pandas(_with_hash(_frame(src), h), preserve_index=False)
    pq.write_table(tab.replace_schema_metadata(_add_metadata(tab.schema, meta).metadata),
                   str(path), row_group_size=ROW_GROUP_ROWS)
    del tab
    # the Parquet encoder's buffers stay in Arrow's pool otherwise (~70 MB for 160k steps)
    pa.default_memory_pool().release_unused()


def _frame(src):
    return src.to_pandas() if isinstance(src, LazyTable) else src


# ---------------------------------------------------------------------------- whole or absent
def _sibling(dest: Path, kind: str, pid: int | None = None) -> Path:
    return dest.with_name(f".{dest.name}.{kind}-{os.getpid() if pid is None else pid}")


def _siblings(dest: Path) -> list[tuple[str, int, Path]]:
    """Leftover ``.partial``/``.old`` folders of DIR: (kind, pid, path)."""
    pat = re.compile(rf"^\.{re.escape(dest.name)}\.(partial|old)-(\d+)$")
    out = []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return out
    for p in entries:
        m = pat.match(p.name)
        if m:
            out.append((m.group(1), int(m.group(2)), p))
    return out


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False            # our own leftovers (an earlier call that raised) are garbage
    return pid_alive(pid)


def is_complete(path: str | os.PathLike, marker: str = MARKER) -> bool:
    """Whether ``path`` is a finished results folder: a directory holding the marker
    (``run.json``, written last) and, when the marker lists them, every file it names.
    Folders written by :func:`write_folder_atomically` are complete whenever they exist;
    the check also rejects folders left half-written by older versions."""
    d = Path(path)
    m = d / marker
    if not d.is_dir() or not m.is_file():
        return False
    if marker != MARKER:
        return True
    try:
        files = json.loads(m.read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return False
    return all((d / f).is_file() for f in files or ())


def recover(path: str | os.PathLike) -> None:
    """Clean up after a writer of ``path`` that died mid-swap (see the module docstring):
    put back a complete old folder if ``path`` is missing, delete dead writers' leftovers."""
    dest = Path(path)
    dead = [(kind, pid, p) for kind, pid, p in _siblings(dest) if not _alive(pid)]
    if not dest.exists():
        for kind, _pid, p in dead:
            if kind == "old" and p.is_dir():
                try:
                    os.rename(p, dest)
                    break
                except OSError:
                    pass
    for _kind, _pid, p in dead:
        if p.exists() or p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _replaceable(dest: Path, marker: str, known: frozenset[str] | None) -> bool:
    """A folder may be replaced if empty, a results folder (holds the marker), or holding
    only names ``write_fn`` produces: never a user's folder of other files."""
    names = [p.name for p in dest.iterdir()]
    if not names or marker in names:
        return True
    return known is not None and all(n in known or n.endswith(".partial") for n in names)


def write_folder_atomically(path: str | os.PathLike, write_fn: Callable[[Path], Any], *,
                            marker: str = MARKER, known_files: frozenset[str] | None = None,
                            ) -> Path:
    """Write a folder whole or not at all: ``write_fn(tmp)`` fills a fresh hidden sibling
    folder, which then replaces ``path`` (see the module docstring for the swap and its crash
    cases). ``write_fn`` must write ``marker`` last (readers check it with
    :func:`is_complete`). An existing ``path`` that is not a folder of this kind (no marker,
    and files other than ``known_files``) is refused with a ConfigError, never deleted.
    A symlink ``path`` keeps pointing at the new folder. Used for run results and the
    sweeps' per-point folders."""
    dest = Path(path)
    if dest.is_symlink():
        dest = dest.resolve()
    if dest.exists() and not dest.is_dir():
        raise ConfigError("is an existing file; a results folder is wanted",
                          source=f"output folder {dest}")
    recover(dest)
    if dest.is_dir() and not _replaceable(dest, marker, known_files):
        raise ConfigError(f"exists and is not a moesim results folder (no {marker}); "
                          "refusing to replace it: choose another folder or empty it",
                          source=f"output folder {dest}")
    tmp, old = _sibling(dest, "partial"), _sibling(dest, "old")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise MoesimError(f"output folder {dest}: cannot be written: "
                          f"{exc.strerror or exc}") from None
    try:
        write_fn(tmp)
        if not (tmp / marker).exists():
            raise RuntimeError(f"write_folder_atomically: write_fn did not write {marker}")
        had_old = dest.exists()
        if had_old:
            os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except BaseException:
            if had_old and not dest.exists():
                os.rename(old, dest)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------- run results
def _files(result: RunResult, loaded: LoadedConfig, extra: dict[str, Any] | None,
           ) -> list[tuple[str, Callable[[Path], Any]]]:
    """(file name, writer) in writing order; run.json (the marker) comes last."""
    import pandas as pd
    cols = config_columns(loaded)
    h = loaded.config_hash
    summary = to_plain(result.summary)
    row = pd.DataFrame([{**result.summary, **cols}])
    req = _frame(result.table_source("requests"))
    files: list[tuple[str, Callable[[Path], Any]]] = [
        ("summary.json", lambda p: p.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")),
        ("summary.csv", lambda p: row.to_csv(p, index=False)),
        ("requests.parquet", lambda p: write_table_parquet(req, p, loaded)),
        ("requests.csv", lambda p: _with_hash(req, h).to_csv(p, index=False)),
        ("layers.csv", lambda p: _with_hash(_frame(result.table_source("layers")), h)
         .to_csv(p, index=False)),
    ]
    if loaded.config.output.events:
        for name in ("steps", "transfers"):
            files.append((f"{name}.parquet", lambda p, name=name: write_table_parquet(
                result.table_source(name), p, loaded)))
    files.append(("config.yaml", lambda p: p.write_text(yaml.safe_dump(loaded.raw, sort_keys=False))))
    files.append(("hardware.yaml", lambda p: p.write_text(
        yaml.safe_dump(result.hardware, sort_keys=False, width=110))))
    from .. import __version__
    run = {"name": loaded.config.name, "config_hash": loaded.config_hash,
           "config_source": loaded.source, "moesim_version": __version__,
           "python": platform.python_version(), "notes": result.notes, **(extra or {}),
           "files": [n for n, _w in files] + [MARKER]}
    files.append((MARKER, lambda p: p.write_text(json.dumps(run, indent=1, default=str) + "\n")))
    return files


def write_results(result: RunResult, loaded: LoadedConfig, out_dir: str | Path, *,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write the results folder ``out_dir`` whole (replacing an earlier run's folder there)."""
    files = _files(result, loaded, extra)

    def write_all(tmp: Path) -> None:
        for name, write in files:
            write(tmp / name)

    return write_folder_atomically(out_dir, write_all, known_files=RESULT_FILES)
