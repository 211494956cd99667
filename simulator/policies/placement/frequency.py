"""Activation frequency of every object, shared by the frequency-driven placements.

    count(x) = sum over tokens t in the window routed to x of weight(t)

Sources (``source``):

* ``oracle``: the whole trace, every token weight 1 (an offline profile of the very workload
  being replayed: the foreknowledge bound);
* ``first_requests``: the first ``profile_requests`` requests of the trace, weight 1 (a
  deployment profiles a warm-up period, then freezes the table);
* ``ema``: the same window, but a token of request r (0-based, in trace order) weighs
  ``decay ** (n - 1 - r)`` for a window of n requests, i.e. its age in requests at the end of
  the window. ``decay = 1`` gives plain counts (equal to ``first_requests``); smaller values
  forget early requests faster. ``decay`` must lie in (0, 1].

The table is per object id (``(layer * E + expert) * slices + slice``); every slice of an
expert gets the expert's count.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConfigError

if TYPE_CHECKING:
    from ...engine.context import SimContext

SOURCES = ("oracle", "first_requests", "ema")


def activation_counts(ctx: "SimContext", source: str = "oracle", *, profile_requests: int = 10,
                      decay: float = 1.0, key: str = "placement") -> np.ndarray:
    """(num_objects,) float64 activation counts of every object (see the module docstring)."""
    if source not in SOURCES:
        raise ConfigError(f"must be one of {', '.join(SOURCES)}; got '{source}'",
                          source=ctx.source, key=f"{key}.frequency")
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"must lie in (0, 1], got {decay:g}", source=ctx.source,
                          key=f"{key}.decay")
    tr = ctx.trace
    L, E = tr.meta.num_layers, tr.meta.num_experts
    if source == "oracle":
        ex = tr.experts
        weights = None
    else:
        _ids, _starts, ends = tr.request_bounds()
        n = min(profile_requests, ends.size)
        ex = tr.experts[: ends[n - 1]] if n else tr.experts[:0]
        weights = None
        if source == "ema" and decay != 1.0 and n:
            per_request = decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
            lengths = np.diff(np.concatenate(([0], ends[:n])))
            per_token = np.repeat(per_request, lengths)
            weights = np.broadcast_to(per_token[:, None, None], ex.shape).ravel()
    flat = (np.arange(L, dtype=np.int64)[None, :, None] * E + ex.astype(np.int64)).ravel()
    per_expert = np.bincount(flat, weights=weights, minlength=L * E).astype(np.float64)
    return np.repeat(per_expert, ctx.slices_per_expert)
