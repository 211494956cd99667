"""MoE-CXL Algorithm 1: tiered placement by activation frequency over heterogeneous devices.

    f(x)   = activation count of object x (placement/frequency.py: oracle | first_requests | ema)
    p(x)   = f(x) / tokens in the frequency window   (expected uses of x per token)
    sort objects by f descending, ties by object id; then, in that order:
      1. local (GPU) tier: pin while the pinned bytes fit in gpu_gb;
      2. cxl_tier: put x on the device d with room for it that minimises
             cost_d(x) = lat_d + (W_d + p(x) * s(x)) / B_d
      3. each tier of ``then`` in order (default dram, nvme; tiers the system lacks are
         skipped): round-robin over its devices, skipping full ones;
    an object that fits nowhere is a configuration error.

Cost terms. ``s(x)`` is the object's bytes; ``lat_d`` the latency of d's fetch path (device
plus links, ``System.fetch_path``); ``B_d`` d's private bandwidth (placement/tiering.py:
min of its read channel and the links only it crosses, e.g. its own CXL port; the host PCIe
link that every expander shares caps their sum, not the choice between them); ``W_d`` the
expected bytes per token already placed on d:

    W_d = sum of p(y) * s(y) over objects y already on d       (load_scope: layer -> only y of
                                                                 x's layer; all -> every y)

so cost_d(x) is the expected time to finish reading x from d when d also serves its other
expected fetches: an expected per-token queue over a bandwidth plus a latency. The default
``load_scope: layer`` counts only experts of x's own layer, because without prefetch one
layer's misses are fetched together and the layer waits for the slowest device, while
different layers' fetches do not overlap; ``all`` balances the whole run's bytes instead (the
right load when prefetch overlaps layers). Capacity is respected: a device is a candidate only
while its homed bytes plus s(x) fit its capacity. Ties go to the device listed first.

Replicas (``replication: r > 1``). After the homes are set, the hottest ``replicate_top``
fraction of the experts homed on cxl_tier get r - 1 more copies, each on the other cxl_tier
device with room left of least lat_d + (W_d + s(x)) / B_d: the completion of a fetch of x
that missed, the cost the cxl_aware scheduler uses to pick a copy (with p(x) s(x) in its
place, as for homes, an empty slow expander would take every copy and never be read). The
copies' expected load is counted in W_d. r cannot exceed the number of cxl_tier devices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...config.strict import field
from ...errors import ConfigError
from ...units import gb_to_bytes
from ..base import PLACEMENT, PlacementPolicy
from .frequency import SOURCES, activation_counts
from .tiering import private_bandwidth

DEFAULT_THEN = ("dram", "nvme")


@PLACEMENT.register("moe_cxl")
class MoECXL(PlacementPolicy):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        gpu_gb: float = field(0.0, min=0.0, help="local (GPU) budget of pinned experts, GB")
        cxl_tier: str = field("cxl", help="tier whose devices are chosen by expected fetch time")
        then: Optional[list[str]] = field(None, help="tiers filled after cxl_tier, in order, "
                                                     "round-robin up to capacity; default "
                                                     "[dram, nvme] minus tiers the system lacks")
        frequency: str = field("oracle", choices=SOURCES,
                               help="activation-frequency source (placement/frequency.py)")
        profile_requests: int = field(10, min=1, help="requests in the first_requests / ema window")
        decay: float = field(1.0, help="ema: per-request decay in (0, 1]; 1 = plain counts")
        load_scope: str = field("layer", choices=("layer", "all"),
                                help="W_d counts experts of the same layer, or all experts")
        replication: int = field(1, min=1, help="copies of each replicated expert on "
                                                "cxl_tier devices (1 = no replicas)")
        replicate_top: float = field(0.1, min=0.0, help="fraction of the experts homed on "
                                     "cxl_tier, hottest first, that get replicas")

        def __post_init__(self):
            if not 0.0 < self.decay <= 1.0:
                raise ConfigError(f"must lie in (0, 1], got {self.decay:g}", key="decay")
            if self.replicate_top > 1.0:
                raise ConfigError(f"is a fraction in [0, 1], got {self.replicate_top:g}",
                                  key="replicate_top")

    def frequencies(self) -> np.ndarray:
        p = self.params
        return activation_counts(self.ctx, p.frequency, profile_requests=p.profile_requests,
                                 decay=p.decay)

    def _tiers(self) -> list[str]:
        ctx, p = self.ctx, self.params
        local = ctx.system.local_tier
        names = [p.cxl_tier]
        if p.then is None:
            names += [t for t in DEFAULT_THEN if t in ctx.system.tiers]
        else:
            names += list(p.then)
        for i, t in enumerate(names):
            key = "placement.cxl_tier" if i == 0 else f"placement.then[{i - 1}]"
            ctx.tier_devices(t, key=key)
            if t == local:
                raise ConfigError(f"'{t}' is the local tier (pinned experts are set by gpu_gb)",
                                  source=ctx.source, key=key)
            if t in names[:i]:
                raise ConfigError(f"tier '{t}' is named twice", source=ctx.source, key=key)
        return names

    def place(self) -> np.ndarray:
        ctx, p = self.ctx, self.params
        tiers = self._tiers()
        sysm = ctx.system
        n = ctx.num_objects
        sizes = ctx.object_bytes
        counts = self.frequencies()
        order = np.lexsort((np.arange(n), -counts))

        # expected uses per token: counts over the tokens of the window (each token makes
        # top_k * slices uses per layer, so a layer's counts sum to tokens * top_k * slices)
        per_layer = counts.reshape(ctx.num_layers, -1).sum(axis=1)
        tokens = per_layer.max() / (ctx.trace.meta.top_k * ctx.slices_per_expert)
        prob = counts / tokens if tokens > 0 else np.zeros(n)
        layer_of = np.arange(n) // (ctx.num_experts * ctx.slices_per_expert)

        home = np.full(n, -1, dtype=np.int32)
        fits = np.cumsum(sizes[order]) <= gb_to_bytes(p.gpu_gb)
        home[order[fits]] = sysm.local.index
        rest = order[~fits]

        cxl = ctx.tier_devices(tiers[0], key="placement.cxl_tier")
        if p.replication > len(cxl):
            raise ConfigError(f"{p.replication} copies need {p.replication} devices; tier "
                              f"'{tiers[0]}' has {len(cxl)}", source=ctx.source,
                              key="placement.replication")
        lat = np.array([sysm.fetch_path(d)[1] for d in cxl])
        bw = np.array(private_bandwidth(cxl))
        cap = np.array([d.spec.capacity_bytes for d in cxl], dtype=np.float64)
        used = np.zeros(len(cxl))
        load = np.zeros((ctx.num_layers if p.load_scope == "layer" else 1, len(cxl)))
        # later tiers: (devices, bytes homed on each, next device of the round-robin)
        others = [(sysm.tiers[t], [0.0] * len(sysm.tiers[t]), [0]) for t in tiers[1:]]
        for oid in rest.tolist():
            s = sizes[oid]
            room = used + s <= cap
            if room.any():
                row = layer_of[oid] if p.load_scope == "layer" else 0
                cost = np.where(room, lat + (load[row] + prob[oid] * s) / bw, np.inf)
                j = int(np.argmin(cost))
                home[oid] = cxl[j].index
                used[j] += s
                load[row, j] += prob[oid] * s
                continue
            for devs, dused, rr in others:
                k = len(devs)
                for step in range(k):
                    j = (rr[0] + step) % k
                    if dused[j] + s <= devs[j].spec.capacity_bytes:
                        home[oid] = devs[j].index
                        dused[j] += s
                        rr[0] = (j + 1) % k
                        break
                if home[oid] >= 0:
                    break
            if home[oid] < 0:
                total = gb_to_bytes(p.gpu_gb) + sum(
                    d.spec.capacity_bytes for t in tiers for d in sysm.tiers[t])
                raise ConfigError(
                    f"experts ({sizes.sum() / 1e9:.4g} GB) do not fit in gpu_gb plus the "
                    f"capacity of tiers {', '.join(tiers)} ({total / 1e9:.4g} GB in all); raise "
                    "a capacity_gb or gpu_gb, or add a tier to placement.then",
                    source=ctx.source, key="placement.then")
        self._replicas = self._place_replicas(home, [d.index for d in cxl], lat, bw, cap,
                                              used, load, prob, layer_of, sizes, order)
        return home

    def _place_replicas(self, home, idx, lat, bw, cap, used, load, prob, layer_of, sizes,
                        order) -> list[tuple[int, int]]:
        p = self.params
        if p.replication <= 1:
            return []
        pos = {d: j for j, d in enumerate(idx)}
        on_cxl = [o for o in order.tolist() if int(home[o]) in pos]
        n_rep = int(round(p.replicate_top * len(on_cxl)))
        out = []
        for oid in on_cxl[:n_rep]:
            s = sizes[oid]
            row = layer_of[oid] if p.load_scope == "layer" else 0
            have = {pos[int(home[oid])]}
            for _ in range(p.replication - 1):
                room = (used + s <= cap)
                room[list(have)] = False
                if not room.any():
                    break
                # where a fetch of x, given that it missed, finishes soonest: its whole size
                # queues behind the device's expected bytes (the cxl_aware scheduler's
                # E_d, which decides whether the copy is ever read)
                cost = np.where(room, lat + (load[row] + s) / bw, np.inf)
                j = int(np.argmin(cost))
                have.add(j)
                used[j] += s
                load[row, j] += prob[oid] * s
                out.append((oid, idx[j]))
        return out

    def replicas(self) -> list[tuple[int, int]]:
        return list(getattr(self, "_replicas", []))
