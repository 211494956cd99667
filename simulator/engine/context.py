"""What policies may see: the model, trace, hardware, object table and a seeded RNG.

One ``SimContext`` per simulation; nothing global. Object ids are
``(layer * num_experts + expert) * slices_per_expert + slice`` (policies/base.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..config.schema import RunConfig
from ..errors import ConfigError
from ..hardware.system import Device, System
from ..models.spec import ModelSpec
from ..traces.schema import Trace


@dataclass
class SimContext:
    config: RunConfig
    model: ModelSpec
    precision: str
    trace: Trace
    system: System
    rng: np.random.Generator
    requests: list                        # engine.workload.Request, in workload order
    slices_per_expert: int = 1
    source: str | None = None
    object_bytes: np.ndarray = field(init=False)
    pinned: np.ndarray | None = None      # set by the engine after placement
    hierarchy: object = None              # the MemoryHierarchy, set by the engine (dynamic
    #                                       policies read and move state through it)
    full_expert_bytes: float = 0.0        # one expert at full (high-bit) precision, all its
    #                                       slices: the unit of high-bit-normalised miss rates
    _stream_factory: Callable[["SimContext"], np.ndarray] | None = None
    _stream: np.ndarray | None = None

    def __post_init__(self) -> None:
        eb = self.model.expert_bytes(self.precision)
        self.object_bytes = np.full(self.num_objects, eb / self.slices_per_expert, dtype=np.float64)
        self.full_expert_bytes = float(eb)

    @property
    def num_layers(self) -> int:
        return self.trace.meta.num_layers

    @property
    def num_experts(self) -> int:
        return self.trace.meta.num_experts

    @property
    def num_objects(self) -> int:
        return self.num_layers * self.num_experts * self.slices_per_expert

    def oid(self, layer: int, expert: int, slice_: int = 0) -> int:
        return (layer * self.num_experts + expert) * self.slices_per_expert + slice_

    def layer_of(self, oid: int) -> int:
        return oid // (self.num_experts * self.slices_per_expert)

    def expert_of(self, oid: int) -> int:
        return (oid // self.slices_per_expert) % self.num_experts

    # ------------------------------------------------------------------ hardware helpers
    def default_backing_tier(self) -> str:
        for name in self.system.tiers:
            if name != self.system.local_tier:
                return name
        raise ConfigError("the system has no tier besides the local one to hold experts",
                          source=self.source, key="system.tiers")

    def tier_devices(self, tier: str, *, key: str) -> list[Device]:
        devs = self.system.tiers.get(tier)
        if not devs:
            raise ConfigError(f"unknown tier '{tier}'; tiers: {', '.join(self.system.tiers)}",
                              source=self.source, key=key)
        return devs

    # ------------------------------------------------------------------ oracle
    def cache_stream(self) -> np.ndarray:
        """Object ids the cache will be asked for, in the canonical order (for offline
        policies such as Belady): see engine/stream.py."""
        if self._stream is None:
            from .stream import canonical_stream
            self._stream = canonical_stream(self, exclude_pinned=True)
        return self._stream
