"""The run configuration: one frozen dataclass per YAML section.

A run config names a trace, a model (default: the trace's), a system (compute unit, memory
tiers made of devices, links) composed from device profiles, one policy per axis, a workload
and output options. Policy sections hold ``name`` plus that policy's own parameters, checked
against the policy's ``Params`` dataclass when the config is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError
from .strict import field

POLICY_AXES = ("placement", "cache", "prefetch", "routing", "warmup", "kv", "scheduler",
               "migration", "mixed_precision")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: Optional[str] = field(None, help="model catalog name or alias; default: the trace's model")
    file: Optional[str] = field(None, help="YAML file with a model spec (instead of name)")
    precision: Optional[str] = field(
        None, help="weight precision of experts and other weights (bf16, fp8, int8, int4); "
                   "default: the model's native precision",
        choices=("fp32", "bf16", "fp16", "fp8", "int8", "int4"))
    kv_precision: str = field("bf16", help="KV-cache precision",
                              choices=("fp32", "bf16", "fp16", "fp8", "int8", "int4"))


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One memory device of a tier. Profile values can be overridden by extra keys."""

    profile: str = field(help="memory profile name (see `moesim profiles list`)")
    path: list[str] = field(default_factory=list,
                            help="links crossed from this device to the compute unit's memory")
    overrides: dict[str, Any] = field(default_factory=dict,
                                      help="profile values replaced for this device")


@dataclass(frozen=True, kw_only=True)
class TierConfig:
    devices: list[DeviceConfig] = field(help="devices of the tier (several for e.g. CXL expanders)")


@dataclass(frozen=True, kw_only=True)
class LinkConfig:
    profile: str = field(help="link profile name")
    overrides: dict[str, Any] = field(default_factory=dict, help="profile values replaced")


@dataclass(frozen=True, kw_only=True)
class ComputeConfig:
    profile: str = field(help="compute profile name")
    overrides: dict[str, Any] = field(default_factory=dict, help="profile values replaced")


@dataclass(frozen=True, kw_only=True)
class SystemConfig:
    compute: ComputeConfig = field(help="the compute unit")
    local_tier: str = field(help="tier that is the compute unit's own memory (HBM, LPDDR)")
    tiers: dict[str, TierConfig] = field(help="memory tiers by name")
    links: dict[str, LinkConfig] = field(default_factory=dict, help="links by name")


@dataclass(frozen=True, kw_only=True)
class ArrivalConfig:
    process: str = field("closed_loop", help="how requests arrive",
                         choices=("closed_loop", "trace", "all_at_once", "poisson"))
    rate_per_s: Optional[float] = field(None, min=0.0,
                                        help="mean request rate of the poisson process, 1/s")
    concurrency: Optional[int] = field(None, min=1, help="closed_loop: requests in flight "
                                       "(default: batch_size)")

    def __post_init__(self) -> None:
        # A key the chosen process ignores is an error, like an unknown key: it would
        # otherwise look like it changed the run.
        for key, applies_to in (("rate_per_s", "poisson"), ("concurrency", "closed_loop")):
            if getattr(self, key) is not None and self.process != applies_to:
                raise ConfigError(f"only applies to process: {applies_to}, but process is "
                                  f"{self.process}; remove it (or set it to null)", key=key)


@dataclass(frozen=True, kw_only=True)
class WorkloadConfig:
    batch_size: int = field(1, min=1, help="maximum requests in one decode iteration "
                                           "(continuous batching)")
    arrivals: ArrivalConfig = field(default_factory=ArrivalConfig, help="arrival process")
    max_requests: Optional[int] = field(None, min=1, help="simulate only the first N requests")
    phases: str = field("both", choices=("both", "prefill", "decode"),
                        help="which phases of the trace to simulate")


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    events: bool = field(True, help="write the per-iteration and per-transfer event tables")


@dataclass(frozen=True, kw_only=True)
class FaultEvent:
    device: str = field(help="device name (as in the summary: 'cxl.2', 'dram')")
    fail_at_s: Optional[float] = field(None, min=0.0, help="failure time, s of simulated time")
    fail_at_request: Optional[int] = field(None, min=0, help="fail when the k-th request "
                                           "(0-based, in admission order) is admitted")
    return_at_s: Optional[float] = field(None, min=0.0, help="return time, s (after fail_at_s)")
    down_for_s: Optional[float] = field(None, min=0.0, help="outage length, s (instead of "
                                        "return_at_s)")

    def __post_init__(self) -> None:
        if (self.fail_at_s is None) == (self.fail_at_request is None):
            raise ConfigError("give exactly one of fail_at_s and fail_at_request", key="fail_at_s")
        if (self.return_at_s is None) == (self.down_for_s is None):
            raise ConfigError("give exactly one of return_at_s and down_for_s (a device that "
                              "never returns would leave its experts' accesses waiting forever "
                              "once their other copies fail)", key="return_at_s")
        if self.down_for_s is not None and not self.down_for_s > 0:
            raise ConfigError(f"must be > 0, got {self.down_for_s:g}", key="down_for_s")
        if self.return_at_s is not None:
            if self.fail_at_s is None:
                raise ConfigError("with fail_at_request, give down_for_s (the failure time is "
                                  "known only when the run gets there)", key="return_at_s")
            if not self.return_at_s > self.fail_at_s:
                raise ConfigError(f"return_at_s {self.return_at_s:g} must be after fail_at_s "
                                  f"{self.fail_at_s:g}", key="return_at_s")


@dataclass(frozen=True, kw_only=True)
class FaultsConfig:
    events: list[FaultEvent] = field(default_factory=list, help="failures, each with its return")
    backing_tier: Optional[str] = field(None, help="tier holding a backing copy of every "
                                        "expert (default: the last tier); needed with events")
    rehome: bool = field(True, help="move a failed device's experts to live devices of its "
                                    "tier (from the backing copy), and back on its return")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    name: str = field("run", help="name of the run, copied into every result row")
    seed: int = field(0, min=0, help="seed of every random choice in the run")
    trace: str = field(help="canonical Parquet trace; relative paths are relative to the "
                            "config file; 'bundled:default' is the bundled default trace")
    model: ModelConfig = field(default_factory=ModelConfig, help="model")
    system: SystemConfig = field(help="hardware")
    placement: dict[str, Any] = field(default_factory=lambda: {"name": "single_tier"},
                                      help="expert placement policy")
    cache: dict[str, Any] = field(default_factory=lambda: {"name": "none"},
                                  help="expert cache (eviction) policy in the local tier")
    prefetch: dict[str, Any] = field(default_factory=lambda: {"name": "none"}, help="prefetch policy")
    routing: dict[str, Any] = field(default_factory=lambda: {"name": "trace"}, help="routing policy")
    warmup: dict[str, Any] = field(default_factory=lambda: {"name": "empty"},
                                   help="initial cache state policy")
    kv: dict[str, Any] = field(default_factory=lambda: {"name": "local"}, help="KV-cache policy")
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "fair"},
                                      help="fetch scheduling: which copy a miss reads, in what order")
    migration: dict[str, Any] = field(default_factory=lambda: {"name": "none"},
                                      help="background migration of experts between devices")
    mixed_precision: dict[str, Any] = field(default_factory=lambda: {"name": "full"},
                                            help="which copy (precision) of an expert a use "
                                                 "needs (HOBBIT-style low-bit copies)")
    faults: "FaultsConfig" = field(default_factory=lambda: FaultsConfig(),
                                   help="device failures and returns (default: none)")
    workload: WorkloadConfig = field(default_factory=WorkloadConfig, help="workload")
    output: OutputConfig = field(default_factory=OutputConfig, help="output")

    def __post_init__(self) -> None:
        # The name becomes results/<name>/: one plain folder name, nothing that escapes.
        n = self.name
        if not n.strip() or n in (".", "..") or any(c in n for c in "/\\\0"):
            raise ConfigError(f"must be a plain folder name (not empty, '.' or '..', no '/' or "
                              f"'\\'): it names results/<name>/; got {n!r}", key="name")
