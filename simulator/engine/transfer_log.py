"""The run's transfer log: one record per transfer batch in typed buffers, expanded to
columns only when the results are collected (DESIGN §4, the transfers table).

A replay with the events on logs millions of transfers (a 10M-access Mixtral decode replay:
5M transfers in 4M batches, 200 MB of buffers). The log therefore keeps at most
:data:`SPILL_TRANSFERS` transfers in memory: full buffers are appended, as one *segment*, to
an anonymous temporary file (``tempfile.TemporaryFile``: in ``$TMPDIR``, already unlinked, so
nothing is left behind even by a killed run) and read back a segment at a time when the
table is written (:meth:`TransferLog.chunks`) or built (:meth:`TransferLog.rows`).
"""
from __future__ import annotations

import tempfile
from array import array
from typing import Iterator

import numpy as np

SPILL_TRANSFERS = 1 << 18        # transfers held in memory before a segment is spilled

# (name in rows(), buffer attribute, array typecode, numpy dtype) of the per-batch values
_BATCH = (("start_s", "start", "d", np.float64), ("end_s", "end", "d", np.float64),
          ("bytes", "size", "d", np.float64), ("count", "count", "q", np.int64),
          ("src", "src", "i", np.int32), ("phase", "phase", "b", np.int8),
          ("purpose", "purpose", "b", np.int8))
_OID = ("object_id", "oid", "q", np.int64)


_NB = len(_BATCH)


def _columns(flat: np.ndarray) -> dict[str, np.ndarray]:
    """Interleaved per-batch doubles -> one column per value of _BATCH: strided views (no
    copy); :func:`_pieces` gives each piece its dtype."""
    m = flat.reshape(-1, _NB)
    return {name: m[:, j] for j, (name, *_r) in enumerate(_BATCH)}


def _col(buf, dtype) -> np.ndarray:
    """A typed buffer as a numpy array (a view; empty buffers as an empty array)."""
    return np.frombuffer(buf, dtype=dtype) if len(buf) else np.zeros(0, dtype=dtype)


def _pieces(batch: dict[str, np.ndarray], oid: np.ndarray, rows: int,
            ) -> Iterator[dict[str, np.ndarray]]:
    """Expanded columns of a run of batches, about ``rows`` transfers (whole batches) at a
    time; fresh arrays, no views of the inputs."""
    counts = batch["count"]
    ends = np.cumsum(counts)
    b0, r0, nb = 0, 0, counts.size
    while b0 < nb:
        b1 = int(np.searchsorted(ends, r0 + rows, side="right"))
        b1 = min(max(b1, b0 + 1), nb)
        r1 = int(ends[b1 - 1])
        n = counts[b0:b1].astype(np.int64)   # (counts are exact as doubles)
        piece = {name: np.repeat(batch[name][b0:b1], n).astype(dt, copy=False)
                 for name, _a, _t, dt in _BATCH if name != "count"}
        piece["object_id"] = oid[r0:r1].copy()
        yield piece
        b0, r0 = b1, r1


class TransferLog:
    """Log of every transfer in typed buffers (no Python object per value).

    Transfers are logged per *batch* (flows that started together from one device, of one
    size, ending together) plus one object id per transfer; ``rows()`` expands the batches,
    ``chunks()`` does the same a bounded number of transfers at a time (the results writer
    streams the transfers table from it). Buffers beyond ``spill_at`` transfers (default
    :data:`SPILL_TRANSFERS`, read when the log is made) go to a temporary file (see the
    module docstring); ``spill_at=0`` keeps everything in memory.
    """

    def __init__(self, spill_at: int | None = None):
        spill_at = SPILL_TRANSFERS if spill_at is None else spill_at
        self._spill_at = spill_at if spill_at > 0 else float("inf")
        self._file = None
        self._segments: list[tuple[int, int, int]] = []   # (file offset, batches, transfers)
        self._spilled = 0
        self._new_buffers()

    def _new_buffers(self) -> None:
        # the per-batch values of _BATCH, interleaved (one extend per batch on the hot path;
        # integers below 2**53 are exact as doubles)
        self.batch = array("d")
        self.oid = array("q")

    def add(self, start, end, size, count, src, phase, purpose, oids) -> None:
        self.batch.extend((start, end, size, count, src, phase, purpose))
        self.oid.extend(oids)
        if len(self.oid) >= self._spill_at:
            self._spill()

    def _spill(self) -> None:
        """Append the in-memory buffers to the temporary file as one segment; start anew."""
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="moesim-transfers-")
        f = self._file
        f.seek(0, 2)
        off = f.tell()
        self.batch.tofile(f)
        self.oid.tofile(f)
        self._segments.append((off, len(self.batch) // _NB, len(self.oid)))
        self._spilled += len(self.oid)
        self._new_buffers()

    def _read_segment(self, off: int, nb: int, nt: int):
        f = self._file
        f.flush()
        f.seek(off)
        batch = _columns(np.frombuffer(f.read(nb * _NB * 8), dtype=np.float64))
        oid = np.frombuffer(f.read(nt * 8), dtype=np.int64)
        return batch, oid

    def _segments_iter(self):
        """(per-batch columns, object ids) of every segment, oldest first, then the buffers."""
        for off, nb, nt in self._segments:
            yield self._read_segment(off, nb, nt)
        yield _columns(_col(self.batch, np.float64)), _col(self.oid, np.int64)

    def __len__(self) -> int:
        """Number of transfers (rows of the expanded table)."""
        return self._spilled + len(self.oid)

    @property
    def nbytes(self) -> int:
        """Bytes of the log, in memory and spilled."""
        mem = 8 * (len(self.batch) + len(self.oid))
        spilled = sum(nb * _NB * 8 + nt * 8 for _o, nb, nt in self._segments)
        return mem + spilled

    def chunks(self, rows: int = 1 << 18) -> Iterator[dict[str, np.ndarray]]:
        """The columns of ``rows()`` in consecutive pieces of about ``rows`` transfers (whole
        batches; a single batch larger than ``rows`` is one piece). Concatenated, the pieces
        are ``rows()``; each piece is fresh memory (no view of the log's buffers survives)."""
        for batch, oid in self._segments_iter():
            if batch["count"].size:
                yield from _pieces(batch, oid, rows)

    def rows(self) -> dict[str, np.ndarray]:
        parts = list(self.chunks(max(len(self), 1)))
        names = [n for n, *_ in _BATCH if n != "count"] + ["object_id"]
        dts = {n: dt for n, _a, _t, dt in _BATCH + (_OID,)}
        if not parts:
            return {n: np.zeros(0, dtype=dts[n]) for n in names}
        if len(parts) == 1:
            return parts[0]
        return {n: np.concatenate([p[n] for p in parts]) for n in names}

    def close(self) -> None:
        """Drop the temporary file (also done when the log is garbage-collected)."""
        if self._file is not None:
            self._file.close()
