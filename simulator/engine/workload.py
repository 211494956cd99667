"""Requests and their arrival times.

A request is a contiguous run of trace tokens: ``n_prefill`` prompt tokens (processed in one
prefill iteration) followed by ``n_decode`` decode tokens (one per decode iteration).
Arrival processes (``workload.arrivals.process``):

* ``closed_loop`` (default): ``concurrency`` requests (default: batch_size) are in flight;
  the next one arrives when one finishes — throughput mode, no queueing delay;
* ``trace``: the arrival times recorded in the trace (error if it has none);
* ``all_at_once``: every request at t = 0 (queueing delay shows in TTFT);
* ``poisson``: exponential inter-arrival times with mean 1/rate_per_s, from the run's seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config.schema import WorkloadConfig
from ..errors import ConfigError
from ..traces.schema import DECODE, PREFILL, Trace


@dataclass
class Request:
    rid: int
    start: int             # first token row in the trace (after phase filtering)
    n_prefill: int
    n_decode: int
    arrival: float = float("nan")
    # filled by the engine
    admitted: float = float("nan")
    first_token: float = float("nan")
    finish: float = float("nan")
    token_times: list = field(default_factory=list)
    decoded: int = 0
    kv_tokens: int = 0     # KV entries held: last processed position + 1 (see traces/schema.py)
    # cached per-request data for the hot loop
    dec_oids: list | None = None


def build_requests(trace: Trace, wl: WorkloadConfig, rng: np.random.Generator,
                   source: str | None = None) -> tuple[list[Request], Trace]:
    """Requests in arrival order, and the (possibly phase-filtered) trace they index."""
    if wl.phases != "both":
        keep = PREFILL if wl.phases == "prefill" else DECODE
        trace = trace._take(trace.phase == keep)
        if trace.num_tokens == 0:
            raise ConfigError(f"the trace has no {wl.phases} tokens", source=source,
                              key="workload.phases")
    ids, starts, ends = trace.request_bounds()
    # per-request prefill counts over the full bounds (reduceat's last segment runs to the end)
    n_pre = np.add.reduceat((trace.phase == PREFILL).astype(np.int64), starts) if ids.size else \
        np.zeros(0, dtype=np.int64)
    if wl.max_requests is not None:
        m = wl.max_requests
        ids, starts, ends, n_pre = ids[:m], starts[:m], ends[:m], n_pre[:m]
    reqs = [Request(int(r), int(s), int(p), int(e - s - p))
            for r, s, e, p in zip(ids, starts, ends, n_pre)]
    arr = wl.arrivals
    if arr.process == "trace":
        if trace.arrival_s is None:
            raise ConfigError("the trace records no arrival times; use closed_loop, "
                              "all_at_once or poisson", source=source, key="workload.arrivals.process")
        for q in reqs:
            q.arrival = trace.arrival_s[q.rid]
    elif arr.process == "all_at_once":
        for q in reqs:
            q.arrival = 0.0
    elif arr.process == "poisson":
        if not arr.rate_per_s:
            raise ConfigError("poisson arrivals need rate_per_s > 0", source=source,
                              key="workload.arrivals.rate_per_s")
        gaps = rng.exponential(1.0 / arr.rate_per_s, size=len(reqs))
        for q, t in zip(reqs, np.cumsum(gaps) - gaps[0] if len(reqs) else []):
            q.arrival = float(t)
    # closed_loop: arrivals are set by the engine as requests finish
    if arr.process != "closed_loop":
        reqs.sort(key=lambda q: (q.arrival, q.start))
    return reqs, trace


def closed_loop_concurrency(wl: WorkloadConfig) -> int:
    return wl.arrivals.concurrency or wl.batch_size
