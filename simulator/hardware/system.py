"""A system: one compute unit, memory tiers made of devices, and the links between them.

Built from the ``system`` section of a run config and the device profiles. Every device of a
non-local tier reaches the compute unit's own memory (the *local* tier, e.g. HBM) over its
``path`` of links; a fetch from device D crosses D's read channel, each link of the path in
the toward-compute direction, and the local device's write channel (see engine/flows.py for
how concurrent transfers share them). A copy between two non-local devices (migration,
re-homing after a fault) climbs the source's links to where the two paths meet and descends
the destination's in their reverse direction (``System.move_path``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config.schema import SystemConfig
from ..engine.flows import Resource
from ..errors import ConfigError
from .profiles import (ComputeSpec, LinkSpec, MemorySpec, Profile, compute_spec, get_profile,
                       link_spec, memory_spec)


@dataclass
class Link:
    name: str
    spec: LinkSpec
    profile: Profile
    fwd: Resource            # toward the compute unit
    rev: Resource            # away from it


@dataclass
class Device:
    index: int
    name: str                # "dram", or "cxl.0", "cxl.1" when a tier has several devices
    tier: str
    spec: MemorySpec
    profile: Profile
    path: tuple[Link, ...]
    is_local: bool
    read: Resource
    write: Resource          # same object as ``read`` when the device has one shared bus

    @property
    def path_latency_s(self) -> float:
        return self.spec.latency_s + sum(l.spec.latency_s for l in self.path)


@dataclass
class System:
    compute: ComputeSpec
    compute_profile: Profile
    devices: list[Device]
    links: dict[str, Link]
    local_tier: str
    tiers: dict[str, list[Device]] = field(default_factory=dict)

    @property
    def local(self) -> Device:
        return self.tiers[self.local_tier][0]

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def fetch_path(self, src: Device) -> tuple[tuple[Resource, ...], float]:
        """Resources and latency of a transfer from ``src`` into the local device."""
        dst = self.local
        res = (src.read,) + tuple(l.fwd for l in src.path) + (dst.write,)
        return res, src.path_latency_s

    def move_path(self, src: Device, dst: Device) -> tuple[tuple[Resource, ...], float]:
        """Resources and latency of a copy from ``src`` to ``dst``, two non-local devices
        (migration, re-homing). Paths are lists of links toward the compute unit, so the
        links two paths end with are shared up to the point where they meet (e.g. the host
        root complex before the PCIe link to the GPU): the copy climbs ``src``'s links up to
        that point (their toward-compute direction), then descends ``dst``'s (their away
        direction), reading ``src``'s channel and writing ``dst``'s."""
        if src.is_local or dst.is_local:
            raise ValueError("move_path is between two non-local devices")
        sp, dp = src.path, dst.path
        common = 0
        while (common < min(len(sp), len(dp))
               and sp[len(sp) - 1 - common] is dp[len(dp) - 1 - common]):
            common += 1
        up, down = sp[:len(sp) - common], dp[:len(dp) - common]
        res = ((src.read,) + tuple(l.fwd for l in up) + tuple(l.rev for l in reversed(down))
               + (dst.write,))
        lat = (src.spec.latency_s + dst.spec.latency_s
               + sum(l.spec.latency_s for l in up) + sum(l.spec.latency_s for l in down))
        return res, lat

    def memory_cost_usd(self) -> dict[str, float]:
        return {d.name: d.spec.capacity_bytes * d.spec.cost_usd_per_byte for d in self.devices}

    def describe(self) -> dict:
        """Resolved hardware with every value's source, for the results folder."""
        def prof(p: Profile) -> dict:
            return {"profile": p.name, "description": p.description,
                    **{k: {"value": v.value, "source": v.source} for k, v in p.values.items()},
                    **({"flags": p.flags} if p.flags else {})}
        return {
            "compute": prof(self.compute_profile),
            "local_tier": self.local_tier,
            "devices": {d.name: {**prof(d.profile), "tier": d.tier,
                                 "path": [l.name for l in d.path]} for d in self.devices},
            "links": {n: prof(l.profile) for n, l in self.links.items()},
        }


def build_system(cfg: SystemConfig, *, source: str | None = None) -> System:
    cp = get_profile(cfg.compute.profile, kind="compute", key="system.compute.profile",
                     source=source or "")
    cp = cp.with_overrides(cfg.compute.overrides, source=source or "config",
                           key_prefix="system.compute")
    compute = compute_spec(cp)

    links: dict[str, Link] = {}
    for name, lc in cfg.links.items():
        key = f"system.links.{name}"
        lp = get_profile(lc.profile, kind="link", key=f"{key}.profile", source=source or "")
        lp = lp.with_overrides(lc.overrides, source=source or "config", key_prefix=key)
        spec = link_spec(lp)
        if spec.bw <= 0 or spec.reverse_bw <= 0:
            raise ConfigError("bandwidth must be > 0", source=source, key=f"{key}.bw_gbytes_per_s")
        links[name] = Link(name, spec, lp, Resource(f"{name}:fwd", spec.bw),
                           Resource(f"{name}:rev", spec.reverse_bw))

    if cfg.local_tier not in cfg.tiers:
        raise ConfigError(f"'{cfg.local_tier}' is not one of the tiers "
                          f"({', '.join(cfg.tiers)})", source=source, key="system.local_tier")
    devices: list[Device] = []
    tiers: dict[str, list[Device]] = {}
    used_links: set[str] = set()
    for tname, tc in cfg.tiers.items():
        if not tc.devices:
            raise ConfigError("a tier needs at least one device", source=source,
                              key=f"system.tiers.{tname}")
        is_local = tname == cfg.local_tier
        if is_local and len(tc.devices) != 1:
            raise ConfigError("the local tier must be exactly one device", source=source,
                              key=f"system.tiers.{tname}")
        for i, dc in enumerate(tc.devices):
            key = (f"system.tiers.{tname}" if len(tc.devices) == 1
                   else f"system.tiers.{tname}.devices[{i}]")
            mp = get_profile(dc.profile, kind="memory", key=f"{key}.profile", source=source or "")
            mp = mp.with_overrides(dc.overrides, source=source or "config", key_prefix=key)
            spec = memory_spec(mp)
            for bw_key, bw in (("read_bw_gbytes_per_s", spec.read_bw),
                               ("write_bw_gbytes_per_s", spec.write_bw)):
                if bw <= 0:
                    raise ConfigError("bandwidth must be > 0", source=source, key=f"{key}.{bw_key}")
            if is_local and dc.path:
                raise ConfigError("the local tier is the compute unit's own memory; it has no "
                                  "path", source=source, key=f"{key}.path")
            if not is_local and not dc.path:
                raise ConfigError("needs a path: the links from this device to the "
                                  f"'{cfg.local_tier}' tier", source=source, key=f"{key}.path")
            path = []
            for ln in dc.path:
                if ln not in links:
                    raise ConfigError(f"unknown link '{ln}'; defined links: "
                                      f"{', '.join(links) or '(none)'}", source=source,
                                      key=f"{key}.path")
                if any(l.name == ln for l in path):
                    raise ConfigError(f"names link '{ln}' twice ({list(dc.path)}): a transfer "
                                      "crosses each link once (its bytes would count twice)",
                                      source=source, key=f"{key}.path")
                path.append(links[ln])
                used_links.add(ln)
            dname = tname if len(tc.devices) == 1 else f"{tname}.{i}"
            if spec.shared_bus:
                bus = Resource(f"{dname}:bus", max(spec.read_bw, spec.write_bw))
                rd = wr = bus
            else:
                rd = Resource(f"{dname}:read", spec.read_bw)
                wr = Resource(f"{dname}:write", spec.write_bw)
            dev = Device(len(devices), dname, tname, spec, mp, tuple(path), is_local, rd, wr)
            devices.append(dev)
            tiers.setdefault(tname, []).append(dev)
    unused = [n for n in links if n not in used_links]
    if unused:
        # A link on no path carries nothing: most likely a path that forgot it.
        raise ConfigError(f"link '{unused[0]}' is on no device's path, so it would carry no "
                          "traffic; add it to a path or remove it", source=source,
                          key=f"system.links.{unused[0]}")
    return System(compute, cp, devices, links, cfg.local_tier, tiers)
