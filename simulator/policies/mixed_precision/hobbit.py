"""HOBBIT-style mixed-precision offloading (token level): a missed expert that matters little
to the token is fetched as a low-bit copy, which is smaller to move and faster to run.

    each expert = slice 0, its copy at the model precision (P bytes per weight),
                  slice 1, a low-bit copy (low_bits / 8 bytes per weight, scales included)
    for routed expert e at layer l, g = its largest gate score over the tokens using it
    (one token in decode; in a batch or prefill one copy serves all of e's tokens):
        full copy resident (pinned, cached or staged)  -> use it (full precision)
        else if g < threshold                          -> use the low-bit copy (a hit if it
                                                          is cached, else a fetch of it)
        else                                           -> fetch the full copy

Both copies live in one expert cache and have homes like any object. ``low_bits`` defaults to
4.5: llama.cpp's Q4_0 block (32 4-bit weights + one fp16 scale = 18 bytes), the format HOBBIT
builds on (arXiv 2411.01433 uses llama.cpp). The gate score is the trace's top-k weight; a
trace without scores is refused. Compute reads the copy's bytes (engine/compute.py) at the
model's FLOP rate (low-bit weights are dequantised in the kernel). What this costs in output
quality is not modelled here (the SliceMoE issue's accuracy proxy is the place for it); the
summary reports how many uses ran at low precision.

HOBBIT's other two parts (layer-level adaptive prefetch, sequence-level multidimensional
cache) are not this policy: combine it with a prefetch and cache policy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config.strict import field
from ...errors import ConfigError
from ..base import MIXED_PRECISION, MixedPrecisionPolicy


@MIXED_PRECISION.register("hobbit")
class Hobbit(MixedPrecisionPolicy):
    active = True
    slices = 2

    @dataclass(frozen=True, kw_only=True)
    class Params:
        threshold: float = field(0.2, min=0.0, help="gate score below which a missed expert "
                                                    "is fetched as its low-bit copy")
        low_bits: float = field(4.5, help="bits per weight of the low-bit copy, scales "
                                          "included (4.5 = llama.cpp Q4_0)")

        def __post_init__(self):
            if not 0.0 < self.low_bits <= 16.0:
                raise ConfigError(f"must lie in (0, 16], got {self.low_bits:g}", key="low_bits")
            if self.threshold > 1.0:
                raise ConfigError(f"is a gate score in [0, 1], got {self.threshold:g}",
                                  key="threshold")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if ctx.trace.scores is None:
            raise ConfigError("hobbit needs the trace's gate scores (a 'scores' column); this "
                              "trace has none", source=ctx.source, key="mixed_precision.name")
        self.low_uses = 0
        self.uses = 0

    def slice_bytes(self, expert_bytes: float) -> list[float]:
        from ...units import precision_bytes
        P = precision_bytes(self.ctx.precision)
        low = expert_bytes * (self.params.low_bits / 8.0) / P
        if low >= expert_bytes:
            raise ConfigError(f"a {self.params.low_bits:g}-bit copy is not smaller than the "
                              f"{self.ctx.precision} expert", source=self.ctx.source,
                              key="mixed_precision.low_bits")
        return [expert_bytes, low]

    def select(self, phase, layer, rows, experts, hierarchy, scores=None):
        ctx = self.ctx
        resident = hierarchy.resident
        thr = self.params.threshold
        if scores is None:
            scores = ctx.trace.scores[rows, layer]
        base = layer * ctx.num_experts
        # per expert: its token count and its largest gate score over the tokens using it
        count: dict[int, int] = {}
        top: dict[int, float] = {}
        for e, g in zip(experts.ravel().tolist(), scores.ravel().tolist()):
            count[e] = count.get(e, 0) + 1
            if g > top.get(e, -1.0):
                top[e] = g
        oids, counts = [], []
        low = 0
        for e, c in count.items():
            hi = (base + e) * 2
            if resident(hi) or top[e] >= thr:
                oids.append(hi)
            else:
                oids.append(hi + 1)
                low += c
            counts.append(c)
        self.uses += experts.size
        self.low_uses += low
        if rows.size == 1:                 # one token: gate order, as unrouted lookups
            return oids, counts
        order = sorted(range(len(oids)), key=oids.__getitem__)
        return [oids[i] for i in order], [counts[i] for i in order]

    def summary(self):
        return {"precision.low_uses": self.low_uses,
                "precision.low_fraction": self.low_uses / self.uses if self.uses else 0.0}
