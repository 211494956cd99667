"""Policy interfaces, one per decision axis, and their registries.

The engine never names a concrete policy: it looks each axis up by the ``name`` key of its
YAML section (``cache: {name: lru, capacity_gb: 24}``) and talks to it through the methods
below. A new policy is one file in the axis folder (``policies/cache/lru.py``) holding a
subclass with a ``Params`` dataclass, registered with the axis decorator::

    @CACHE.register("lru")
    class LRU(CachePolicy):
        @dataclass(frozen=True, kw_only=True)
        class Params(CachePolicy.Params): ...

Objects. Everything a cache can hold is an integer *object id* with a size in bytes:
``oid = (layer * num_experts + expert) * slices_per_expert + slice``. Today an expert is one
slice; bit-sliced caching (SliceMoE) splits it into MSB/LSB slices without changing the
engine or the cache interface.

Hooks. Policies observe the run through the ``on_*`` methods; defaults do nothing, and the
engine skips axes whose policy declares it needs no calls (``active = False``), so a
baseline costs nothing on the hot path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import numpy as np

from ..config.strict import build, field
from ..registry import Registry
from ..units import gb_to_bytes

if TYPE_CHECKING:
    from ..engine.context import SimContext

PLACEMENT: Registry[type["PlacementPolicy"]] = Registry("placement policy", "simulator.policies.placement")
CACHE: Registry[type["CachePolicy"]] = Registry("cache policy", "simulator.policies.cache")
PREFETCH: Registry[type["PrefetchPolicy"]] = Registry("prefetch policy", "simulator.policies.prefetch")
ROUTING: Registry[type["RoutingPolicy"]] = Registry("routing policy", "simulator.policies.routing")
WARMUP: Registry[type["WarmupPolicy"]] = Registry("warmup policy", "simulator.policies.warmup")
KV: Registry[type["KVPolicy"]] = Registry("KV-cache policy", "simulator.policies.kv")
SCHEDULER: Registry[type["SchedulerPolicy"]] = Registry("fetch scheduler",
                                                         "simulator.policies.scheduler")
MIGRATION: Registry[type["MigrationPolicy"]] = Registry("migration policy",
                                                         "simulator.policies.migration")
MIXED_PRECISION: Registry[type["MixedPrecisionPolicy"]] = Registry(
    "mixed-precision policy", "simulator.policies.mixed_precision")

AXES: dict[str, Registry] = {"placement": PLACEMENT, "cache": CACHE, "prefetch": PREFETCH,
                             "routing": ROUTING, "warmup": WARMUP, "kv": KV,
                             "scheduler": SCHEDULER, "migration": MIGRATION,
                             "mixed_precision": MIXED_PRECISION}


class Policy:
    """Common plumbing: a ``Params`` dataclass built strictly from the YAML section."""

    registry_name: ClassVar[str] = "?"

    @dataclass(frozen=True, kw_only=True)
    class Params:
        pass

    def __init__(self, params: "Policy.Params", ctx: "SimContext"):
        self.params = params
        self.ctx = ctx

    @classmethod
    def parse_params(cls, section: dict[str, Any], *, key: str, source: str | None):
        data = {k: v for k, v in section.items() if k != "name"}
        return build(cls.Params, data, key=key, source=source)


def make_policy(axis: str, section: dict[str, Any], ctx: "SimContext", *, source: str | None = None):
    cls = policy_class(axis, section, source=source)
    return cls(cls.parse_params(section, key=axis, source=source), ctx)


def policy_class(axis: str, section: dict[str, Any], *, source: str | None = None):
    from ..errors import ConfigError
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError("needs a 'name' key naming the policy; choose from "
                          f"{', '.join(AXES[axis].names())}", source=source, key=axis)
    return AXES[axis].get(section["name"], key=f"{axis}.name", source=source)


# ---------------------------------------------------------------------------- placement
class PlacementPolicy(Policy):
    """Decides the *home* device of every object: where it lives when not cached.

    Objects homed on a device of the local tier are pinned there: always hits, never evicted.
    """

    def place(self) -> np.ndarray:
        """Return an int array (n_objects,) of device indices (``ctx.devices``)."""
        raise NotImplementedError

    def on_iteration_end(self, now: float) -> None:
        """Hook for dynamic placement (migration); default: static."""

    def replicas(self) -> list[tuple[int, int]]:
        """Extra copies to keep from the start, as (object, device) pairs (default none);
        the engine adds them to the memory hierarchy after checking capacity."""
        return []


# ---------------------------------------------------------------------------- cache
class CachePolicy(Policy):
    """An eviction policy over a byte budget in the local tier.

    Contract (identical to libCacheSim's ``get`` = ``find`` + ``insert``): the engine calls
    :meth:`access` on every lookup; on a miss it fetches the object and calls :meth:`insert`,
    which evicts as needed and returns the evicted ids. ``used_bytes`` never exceeds
    ``capacity_bytes``.
    """

    @dataclass(frozen=True, kw_only=True)
    class Params:
        capacity_gb: float = field(0.0, min=0.0, help="cache budget in the local tier, GB (10^9 B)")

    capacity_bytes: float
    used_bytes: float

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.capacity_bytes = gb_to_bytes(params.capacity_gb)
        self.used_bytes = 0.0

    def access(self, oid: int) -> bool:
        """Lookup with state update. True = hit."""
        raise NotImplementedError

    def contains(self, oid: int) -> bool:
        """Lookup without state update."""
        raise NotImplementedError

    def insert(self, oid: int, size: float) -> list[int]:
        """Admit ``oid`` after a miss; return the ids evicted to make room (may include
        ``oid`` itself when the policy declines to keep it)."""
        raise NotImplementedError

    def remove(self, oid: int) -> bool:
        """Drop ``oid`` if present (invalidation, migration)."""
        raise NotImplementedError

    def resident(self) -> Iterable[int]:
        raise NotImplementedError


# ---------------------------------------------------------------------------- prefetch
class PrefetchPolicy(Policy):
    """Chooses objects to fetch ahead of demand; the engine issues them as background flows
    that overlap compute, and inserts them into the cache when they arrive."""

    active: ClassVar[bool] = True

    def on_layer_start(self, phase: int, layer: int, tokens: np.ndarray) -> list[int]:
        """Called when an iteration starts ``layer`` for token rows ``tokens``; return object
        ids to prefetch now."""
        return []


# ---------------------------------------------------------------------------- routing
class RoutingPolicy(Policy):
    """May change which experts a token uses (cache-aware routing)."""

    identity: ClassVar[bool] = False

    def route(self, phase: int, layer: int, tokens: np.ndarray, experts: np.ndarray) -> np.ndarray:
        """Return the (n_tokens, k) experts to use at ``layer`` for trace rows ``tokens``,
        given the recorded choice ``experts``."""
        raise NotImplementedError

    def gate_scores(self, phase: int, layer: int, rows: np.ndarray) -> np.ndarray | None:
        """Gate weights (n, k) of the experts the last ``route`` call returned for ``rows``,
        aligned with them (default: the trace's recorded scores, or None without them)."""
        sc = self.ctx.trace.scores
        if sc is None:
            return None
        return sc[rows, layer] if rows.size != 1 else sc[int(rows[0]), layer][None, :]

    def stats(self) -> dict[str, float]:
        """Summary metrics of the rerouting (``routing.*``); none by default."""
        return {}

    def labels(self) -> list[str]:
        """Notes the run's results must carry (e.g. an approximated router distribution)."""
        return []


# ---------------------------------------------------------------------------- warmup
class WarmupPolicy(Policy):
    """Sets the cache state at the start of the run and at phase transitions."""

    tracks_prefill: ClassVar[bool] = False   # True: the hierarchy records prefill lookups
    #                                          (``ctx.hierarchy.take_prefill_seen()``)

    def initialize(self, cache: CachePolicy) -> list[int]:
        """Fill the cache before the run; return the object ids placed (loaded off the clock)."""
        return []

    def on_prefill_end(self, request_id: int, cache: CachePolicy) -> None:
        """Hook at a request's prefill -> decode transition."""

    def summary(self) -> dict[str, float]:
        """``warmup.*`` metrics of the warm-ups done (none by default)."""
        return {}


# ---------------------------------------------------------------------------- KV cache
class KVPolicy(Policy):
    """Where the KV cache lives and what attention reads cost.

    The engine asks it two things: how many bytes of compute-local memory attention reads
    per cached token and full-attention layer (the roofline's KV bytes term), and how many
    bytes the live KV of a number of tokens occupies there (``local.kv_peak_bytes``).
    Sharded, compressed or offloaded KV (PiKV) will override these and add transfers.
    """

    def read_bytes_per_token_layer(self) -> float:
        raise NotImplementedError

    def footprint_bytes(self, tokens: int) -> float:
        raise NotImplementedError


# ---------------------------------------------------------------------------- scheduling
class SchedulerPolicy(Policy):
    """Which copy each missed object of a layer is read from, and in what order the layer's
    fetches are issued. The memory hierarchy asks only when it has a choice to make (copies,
    failed devices) or the policy is ``active``; ``fair`` (the default) reads the home (copies
    in turn) and starts a layer's fetches together, sharing bandwidth max-min fairly."""

    active: ClassVar[bool] = False

    def plan(self, hierarchy, items: list[tuple[int, float, tuple[int, ...]]], t: float):
        """``items``: (object, bytes, live copies) per missed object, in lookup order.
        Return (device per item, issue priority per item or None). Priorities are floats in
        [0, 1): smaller first (strict priority, engine/flows.py); None = all share."""
        raise NotImplementedError

    def choose(self, hierarchy, oid: int, size: float, copies: tuple[int, ...]) -> int:
        """The copy a prefetch of ``oid`` reads (default: the first live one)."""
        return copies[0]


# ---------------------------------------------------------------------------- migration
class MigrationPolicy(Policy):
    """Moves experts between devices during the run (background copies through the memory
    hierarchy's ``move``). Called after every iteration with the trace rows it served; the
    hierarchy is ``ctx.hierarchy``."""

    active: ClassVar[bool] = False

    def on_iteration_end(self, phase: int, rows: np.ndarray, now: float) -> None:
        """Observe an iteration that ended at ``now``; start moves if due."""


# ---------------------------------------------------------------------------- mixed precision
class MixedPrecisionPolicy(Policy):
    """Which copy of an expert a token's use needs, and so at what precision it runs.

    An expert may be stored as several objects (``slices``: e.g. a full-precision copy and a
    low-bit one); the policy sizes them (``slice_bytes``) and, per MoE layer, picks the
    objects the tokens look up (``select``), knowing what is resident now. Compute reads the
    picked objects' bytes (the weights at the precision they are stored in), so a low-bit
    expert also runs faster. ``full`` (the default) is one object per expert at the model's
    precision and is never called."""

    active: ClassVar[bool] = False
    slices: ClassVar[int] = 1
    fills: ClassVar[bool] = False     # True: ``after_lookup`` may start background cache
    #                                   fills (``hierarchy.fill``)

    def slice_bytes(self, expert_bytes: float) -> list[float]:
        """Bytes of each of an expert's ``slices`` objects (full precision: ``expert_bytes``)."""
        return [expert_bytes]

    def select(self, phase: int, layer: int, rows: np.ndarray, experts: np.ndarray,
               hierarchy, scores: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        """The objects trace ``rows`` use at ``layer`` given their routed ``experts`` (n, k)
        and those experts' gate ``scores`` (n, k; None if the trace has none), as (object
        ids, token counts); ``hierarchy.resident(oid)`` tells what is resident. An object
        with count 0 is read by the kernel but adds no FLOPs (a slice completing another)."""
        raise NotImplementedError

    def full_bytes(self, expert_bytes: float) -> float:
        """One expert at its highest precision (all slices that make it up), the unit of
        high-bit-normalised miss rates (default: ``expert_bytes``)."""
        return expert_bytes

    def after_lookup(self, phase: int, layer: int, t: float) -> None:
        """Called after the layer's lookups were decided at ``t`` (only when ``fills``)."""

    def summary(self) -> dict[str, float]:
        """``precision.*`` metrics (uses at low precision and their share)."""
        return {"precision.low_uses": 0, "precision.low_fraction": 0.0}
