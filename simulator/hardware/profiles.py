"""Device profiles: YAML files in ``device_profiles/``, every number with its source.

A profile file describes one device::

    name: ddr5_4800_8ch
    kind: memory                    # memory | link | compute
    description: Host DDR5-4800, one socket, 8 channels
    read_bw_gbytes_per_s:  {value: 215, source: "307.2 GB/s peak [DS] x ~0.7 efficiency [MP]; ..."}
    ...

Each numeric key maps to ``{value, source}``; a bare number is rejected, so no number enters
the simulator without provenance (run configs may override a value; the override is recorded
as its source). Names carry units; this module converts them to SI once and nothing converts
again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from ..config import yamlload
from ..errors import ConfigError
from ..resources import bundled_dir
from ..units import GB, NS, PJ, BITS_PER_BYTE, TERA, gb_to_bytes

# key -> (required, help text with unit). Converted to SI by _to_si below.
MEMORY_KEYS: dict[str, tuple[bool, str]] = {
    "capacity_gb": (True, "capacity in GB (10^9 bytes)"),
    "read_bw_gbytes_per_s": (True, "sustained read bandwidth, GB/s"),
    "write_bw_gbytes_per_s": (True, "sustained write bandwidth, GB/s"),
    "latency_ns": (True, "access latency added once per transfer, ns"),
    "read_energy_pj_per_bit": (True, "dynamic energy per bit read, pJ/bit"),
    "write_energy_pj_per_bit": (True, "dynamic energy per bit written, pJ/bit"),
    "static_power_w": (True, "static/background power of the device, W"),
    "cost_usd_per_gb": (True, "cost per GB of capacity, USD/GB"),
}
LINK_KEYS: dict[str, tuple[bool, str]] = {
    "bw_gbytes_per_s": (True, "bandwidth per direction toward the compute unit, GB/s"),
    "reverse_bw_gbytes_per_s": (False, "bandwidth away from the compute unit, GB/s "
                                       "(default: same as bw_gbytes_per_s)"),
    "latency_ns": (True, "per-transfer latency (setup + flight), ns"),
    "energy_pj_per_bit": (True, "energy per bit moved across the link, pJ/bit"),
}
COMPUTE_KEYS: dict[str, tuple[bool, str]] = {
    "peak_tflops_bf16": (True, "dense BF16/FP16 peak, TFLOP/s"),
    "peak_tflops_fp8": (False, "dense FP8 peak, TFLOP/s (default: bf16 peak)"),
    "peak_tops_int8": (False, "dense INT8 peak, TOP/s (default: fp8 peak)"),
    "energy_pj_per_flop": (True, "dynamic energy per FLOP (or int op), pJ"),
    "static_power_w": (True, "idle/static power of the compute unit, W"),
    "compute_efficiency": (False, "achievable fraction of peak FLOP/s (default 1.0)"),
}
FLAGS = {"memory": {"shared_bus": False}, "link": {}, "compute": {}}
KEYS = {"memory": MEMORY_KEYS, "link": LINK_KEYS, "compute": COMPUTE_KEYS}
TEXT_KEYS = {"name", "kind", "description", "default_memory"}


@dataclass(frozen=True)
class Sourced:
    value: float
    source: str


@dataclass(frozen=True)
class Profile:
    """A device profile as written (YAML units), with sources."""

    name: str
    kind: str
    description: str
    values: dict[str, Sourced]
    flags: dict[str, Any] = field(default_factory=dict)
    default_memory: str | None = None
    path: str = ""

    def value(self, key: str, default: float | None = None) -> float:
        v = self.values.get(key)
        if v is None:
            if default is None:
                raise KeyError(key)
            return default
        return v.value

    def with_overrides(self, overrides: dict[str, Any], *, source: str, key_prefix: str) -> "Profile":
        """Copy with some values replaced by config overrides (recorded as their source)."""
        allowed = KEYS[self.kind]
        vals = dict(self.values)
        flags = dict(self.flags)
        for k, v in overrides.items():
            if k in FLAGS[self.kind]:
                if not isinstance(v, bool):
                    raise ConfigError(f"must be true or false, got {v!r}", source=source,
                                      key=f"{key_prefix}.{k}")
                flags[k] = v
                continue
            if k not in allowed:
                raise ConfigError(f"'{k}' is not a {self.kind} parameter; allowed: "
                                  f"{', '.join(sorted(list(allowed) + list(FLAGS[self.kind])))}",
                                  source=source, key=f"{key_prefix}.{k}")
            vals[k] = Sourced(_check_number(v, source=source, key=f"{key_prefix}.{k}"),
                              f"override in {source} ({key_prefix}.{k})")
        return dataclasses.replace(self, values=vals, flags=flags)


def _check_number(v: Any, *, source: str, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"must be a number, got {v!r}", source=source, key=key)
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(f"must be finite, got {v}", source=source, key=key)
    if v < 0:
        raise ConfigError(f"must be >= 0, got {v:g}", source=source, key=key)
    return v


def parse_profile(data: Any, *, source: str) -> Profile:
    if not isinstance(data, dict):
        raise ConfigError("a device profile must be a mapping", source=source)
    kind = data.get("kind")
    if kind not in KEYS:
        raise ConfigError(f"must be one of memory, link, compute; got {kind!r}", source=source,
                          key="kind")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("missing profile name", source=source, key="name")
    allowed = KEYS[kind]
    values: dict[str, Sourced] = {}
    flags = dict(FLAGS[kind])
    for key, raw in data.items():
        if key in TEXT_KEYS:
            continue
        if key in flags:
            if not isinstance(raw, bool):
                raise ConfigError(f"must be true or false, got {raw!r}", source=source, key=key)
            flags[key] = raw
            continue
        if key not in allowed:
            raise ConfigError(f"unknown key for a {kind} profile; allowed: "
                              f"{', '.join(sorted(list(allowed) + list(flags)))}",
                              source=source, key=key)
        if not isinstance(raw, dict) or set(raw) != {"value", "source"}:
            raise ConfigError("must be {value: <number>, source: <where the number comes from>}",
                              source=source, key=key)
        src = raw["source"]
        if not isinstance(src, str) or len(src.strip()) < 3:
            raise ConfigError("source must name where the number comes from", source=source,
                              key=f"{key}.source")
        values[key] = Sourced(_check_number(raw["value"], source=source, key=f"{key}.value"), src)
    missing = [k for k, (req, _) in allowed.items() if req and k not in values]
    if missing:
        raise ConfigError(f"missing required key(s): {', '.join(missing)}", source=source)
    return Profile(name=name, kind=kind, description=str(data.get("description", "")),
                   values=values, flags=flags, default_memory=data.get("default_memory"),
                   path=source)


def profile_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    """Search path: user folders first (``extra``, then $MOESIM_PROFILES), then bundled.

    A user folder that does not exist is an error, not an empty folder: a mistyped
    MOESIM_PROFILES would otherwise silently run with the bundled profiles only."""
    import os
    dirs = [Path(p) for p in (extra or [])]
    env = os.environ.get("MOESIM_PROFILES")
    if env:
        for p in env.split(os.pathsep):
            if p and not Path(p).is_dir():
                raise ConfigError(f"folder '{p}' {'is not a folder' if Path(p).exists() else 'does not exist'} "
                                  "(unset it to use the bundled profiles only)",
                                  source="MOESIM_PROFILES")
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"profile folder '{d}' does not exist", source=str(d))
    dirs.append(bundled_dir("device_profiles"))
    return dirs


@lru_cache(maxsize=None)
def _load_dir(path: Path) -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    if not path.is_dir():
        return out
    for f in sorted(path.glob("*.yaml")):
        try:
            with open(f) as fh:
                data = yamlload.load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(yamlload.error_text(exc), source=str(f)) from None
        prof = parse_profile(data, source=str(f))
        if prof.name in out:
            raise ConfigError(f"profile '{prof.name}' also defined in {out[prof.name].path}",
                              source=str(f), key="name")
        out[prof.name] = prof
    return out


def all_profiles(extra_dirs: list[str | Path] | None = None) -> dict[str, Profile]:
    merged: dict[str, Profile] = {}
    for d in reversed(profile_dirs(extra_dirs)):
        merged.update(_load_dir(Path(d).resolve()))
    return merged


def get_profile(name: str, *, kind: str | None = None, key: str = "profile", source: str = "",
                extra_dirs: list[str | Path] | None = None) -> Profile:
    profiles = all_profiles(extra_dirs)
    prof = profiles.get(name)
    candidates = sorted(n for n, p in profiles.items() if kind is None or p.kind == kind)
    if prof is None:
        raise ConfigError(f"unknown {kind or 'device'} profile '{name}'; choose from "
                          f"{', '.join(candidates)}", source=source, key=key)
    if kind and prof.kind != kind:
        raise ConfigError(f"profile '{name}' is a {prof.kind} profile, expected {kind}; choose "
                          f"from {', '.join(candidates)}", source=source, key=key)
    return prof


# ---------------------------------------------------------------------- SI runtime views
@dataclass(frozen=True)
class MemorySpec:
    """A memory device in SI units (bytes, bytes/s, s, J/byte, W, USD/byte)."""

    profile: str
    capacity_bytes: float
    read_bw: float
    write_bw: float
    latency_s: float
    read_j_per_byte: float
    write_j_per_byte: float
    static_power_w: float
    cost_usd_per_byte: float
    shared_bus: bool


@dataclass(frozen=True)
class LinkSpec:
    profile: str
    bw: float             # toward the compute unit (host-to-device), bytes/s
    reverse_bw: float     # away from it, bytes/s
    latency_s: float
    j_per_byte: float


@dataclass(frozen=True)
class ComputeSpec:
    profile: str
    peak_flops: dict[str, float]     # precision -> FLOP/s (already x compute_efficiency)
    j_per_flop: float
    static_power_w: float

    def flops_for(self, precision: str) -> float:
        p = precision.lower()
        if p in ("bf16", "fp16", "fp32"):
            return self.peak_flops["bf16"]
        if p == "fp8":
            return self.peak_flops["fp8"]
        return self.peak_flops["int8"]       # int8 / int4 weights run on the integer path


def memory_spec(p: Profile) -> MemorySpec:
    v = p.value
    return MemorySpec(
        profile=p.name,
        capacity_bytes=gb_to_bytes(v("capacity_gb")),
        read_bw=v("read_bw_gbytes_per_s") * GB,
        write_bw=v("write_bw_gbytes_per_s") * GB,
        latency_s=v("latency_ns") * NS,
        read_j_per_byte=v("read_energy_pj_per_bit") * PJ * BITS_PER_BYTE,
        write_j_per_byte=v("write_energy_pj_per_bit") * PJ * BITS_PER_BYTE,
        static_power_w=v("static_power_w"),
        cost_usd_per_byte=v("cost_usd_per_gb") / GB,
        shared_bus=bool(p.flags.get("shared_bus", False)),
    )


def link_spec(p: Profile) -> LinkSpec:
    v = p.value
    bw = v("bw_gbytes_per_s") * GB
    return LinkSpec(profile=p.name, bw=bw,
                    reverse_bw=v("reverse_bw_gbytes_per_s", bw / GB) * GB,
                    latency_s=v("latency_ns") * NS,
                    j_per_byte=v("energy_pj_per_bit") * PJ * BITS_PER_BYTE)


def compute_spec(p: Profile) -> ComputeSpec:
    v = p.value
    eff = v("compute_efficiency", 1.0)
    if not 0 < eff <= 1:
        raise ConfigError(f"must be in (0, 1], got {eff}", source=p.path, key="compute_efficiency")
    bf16 = v("peak_tflops_bf16") * TERA
    fp8 = v("peak_tflops_fp8", bf16 / TERA) * TERA
    int8 = v("peak_tops_int8", fp8 / TERA) * TERA
    if min(bf16, fp8, int8) <= 0:
        raise ConfigError("peak throughput must be > 0", source=p.path, key="peak_tflops_bf16")
    return ComputeSpec(profile=p.name,
                       peak_flops={"bf16": bf16 * eff, "fp8": fp8 * eff, "int8": int8 * eff},
                       j_per_flop=v("energy_pj_per_flop") * PJ,
                       static_power_w=v("static_power_w"))
