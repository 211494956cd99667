"""The run's transfer log: one record per transfer batch in typed buffers, expanded to
columns only when the results are collected (DESIGN §4, the transfers table)."""
from __future__ import annotations

from array import array
from typing import Iterator

import numpy as np


def _col(buf, dtype) -> np.ndarray:
    """A typed buffer as a numpy array (a view; empty buffers as an empty array)."""
    return np.frombuffer(buf, dtype=dtype) if len(buf) else np.zeros(0, dtype=dtype)


class TransferLog:
    """Log of every transfer in typed buffers (no Python object per value).

    Transfers are logged per *batch* (flows that started together from one device, of one
    size, ending together) plus one object id per transfer; ``rows()`` expands the batches,
    ``chunks()`` does the same a bounded number of transfers at a time (the results writer
    streams the transfers table from it without holding every expanded column at once).
    """

    # (column, buffer attribute, dtype) of the per-batch values
    BATCH_COLUMNS = (("start_s", "start", np.float64), ("end_s", "end", np.float64),
                     ("bytes", "size", np.float64), ("src", "src", np.int32),
                     ("phase", "phase", np.int8), ("purpose", "purpose", np.int8))

    def __init__(self):
        self.start = array("d")
        self.end = array("d")
        self.size = array("d")
        self.count = array("q")
        self.src = array("i")
        self.phase = array("b")
        self.purpose = array("b")
        self.oid = array("q")

    def add(self, start, end, size, count, src, phase, purpose, oids) -> None:
        self.start.append(start)
        self.end.append(end)
        self.size.append(size)
        self.count.append(count)
        self.src.append(src)
        self.phase.append(phase)
        self.purpose.append(purpose)
        self.oid.extend(oids)

    def __len__(self) -> int:
        """Number of transfers (rows of the expanded table)."""
        return len(self.oid)

    @property
    def nbytes(self) -> int:
        """Bytes held by the log's buffers."""
        return sum(b.itemsize * len(b) for b in (self.start, self.end, self.size, self.count,
                                                  self.src, self.phase, self.purpose, self.oid))

    def rows(self) -> dict[str, np.ndarray]:
        n = _col(self.count, np.int64)
        rep = lambda buf, dt: np.repeat(_col(buf, dt), n)
        return {"start_s": rep(self.start, np.float64), "end_s": rep(self.end, np.float64),
                "bytes": rep(self.size, np.float64), "src": rep(self.src, np.int32),
                "object_id": _col(self.oid, np.int64), "phase": rep(self.phase, np.int8),
                "purpose": rep(self.purpose, np.int8)}

    def chunks(self, rows: int = 1 << 18) -> Iterator[dict[str, np.ndarray]]:
        """The columns of ``rows()`` in consecutive pieces of about ``rows`` transfers (whole
        batches; a single batch larger than ``rows`` is one piece). Concatenated, the pieces
        are ``rows()``; each piece is fresh memory (no view of the log's buffers survives)."""
        counts = _col(self.count, np.int64)
        if not counts.size:
            return
        ends = np.cumsum(counts)                          # transfers up to batch b inclusive
        per_batch = {name: _col(getattr(self, attr), dt)
                     for name, attr, dt in self.BATCH_COLUMNS}
        oid = _col(self.oid, np.int64)
        b0, r0, nb = 0, 0, counts.size
        while b0 < nb:
            b1 = int(np.searchsorted(ends, r0 + rows, side="right"))
            b1 = min(max(b1, b0 + 1), nb)
            r1 = int(ends[b1 - 1])
            n = counts[b0:b1]
            piece = {name: np.repeat(col[b0:b1], n) for name, col in per_batch.items()}
            piece["object_id"] = oid[r0:r1].copy()
            yield piece
            b0, r0 = b1, r1
