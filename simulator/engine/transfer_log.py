"""The run's transfer log: one record per transfer batch in typed buffers, expanded to
columns only when the results are collected (DESIGN §4, the transfers table)."""
from __future__ import annotations

from array import array

import numpy as np


class TransferLog:
    """Log of every transfer in typed buffers (no Python object per value).

    Transfers are logged per *batch* (flows that started together from one device, of one
    size, ending together) plus one object id per transfer; ``rows()`` expands the batches.
    """

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

    def rows(self) -> dict[str, np.ndarray]:
        def col(buf, dtype):
            return np.frombuffer(buf, dtype=dtype) if len(buf) else np.zeros(0, dtype=dtype)
        n = col(self.count, np.int64)
        rep = lambda buf, dt: np.repeat(col(buf, dt), n)
        return {"start_s": rep(self.start, np.float64), "end_s": rep(self.end, np.float64),
                "bytes": rep(self.size, np.float64), "src": rep(self.src, np.int32),
                "object_id": col(self.oid, np.int64), "phase": rep(self.phase, np.int8),
                "purpose": rep(self.purpose, np.int8)}
