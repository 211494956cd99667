"""Hash-based sharding of experts over one tier's devices, weighted by device bandwidth.

Weighted rendezvous (highest-random-weight) hashing:

    h(x, d)     = splitmix64(seed, x, key(d)) mapped into (0, 1)   (fixed 64-bit hash)
    score(x, d) = w_d / -ln h(x, d)          with w_d = B_d (placement/tiering.py)
    home(x)     = the device of highest score with room for x (objects taken in id order;
                  a full device passes x to its next-ranked device)

Without capacity overflow, device d receives each object with probability w_d / sum w
(the minimum of independent exponentials -ln h / w_d is d's with that probability), and
where an object lives depends only on the seed, its id and the devices themselves
(``key(d)`` is its profile, path, bandwidth and capacity, not its position in the list): the
same placement every run and for any listing order of the devices, and adding or removing a
device moves only the objects that go to or came from it. With overflow, the result still
does not depend on device order, but does on which objects filled a device first (id
order). No frequency information is used: this is the location-only baseline.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...config.strict import field
from ...errors import ConfigError
from ..base import PLACEMENT, PlacementPolicy
from .tiering import device_key, private_bandwidth

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def unit_hash(seed: int, oids: np.ndarray, key: str) -> np.ndarray:
    """h(x, d) in (0, 1) for objects ``oids`` and a device named ``key``: deterministic
    across runs, platforms and Python versions (no ``hash()``)."""
    k = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    s = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        x = _splitmix64(oids.astype(np.uint64) ^ s)
        x = _splitmix64(x ^ np.uint64(k))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53


@PLACEMENT.register("hash_shard")
class HashShard(PlacementPolicy):
    @dataclass(frozen=True, kw_only=True)
    class Params:
        tier: Optional[str] = field(None, help="tier sharded over; default 'cxl' if the system "
                                               "has it, else the first non-local tier")
        seed: int = field(0, min=0, help="hash seed (a different seed, a different sharding)")

    def scores(self, devs) -> np.ndarray:
        """(num_objects, n_devices) rendezvous scores w_d / -ln h(x, d)."""
        oids = np.arange(self.ctx.num_objects, dtype=np.int64)
        w = private_bandwidth(devs)
        return np.stack([w_d / -np.log(unit_hash(self.params.seed, oids, k))
                         for w_d, k in zip(w, device_key(devs))], axis=1)

    def place(self) -> np.ndarray:
        ctx = self.ctx
        tier = self.params.tier or ("cxl" if "cxl" in ctx.system.tiers
                                    else ctx.default_backing_tier())
        devs = ctx.tier_devices(tier, key="placement.tier")
        if tier == ctx.system.local_tier:
            raise ConfigError(f"'{tier}' is the local tier; shard over a tier experts are "
                              "fetched from", source=ctx.source, key="placement.tier")
        ranked = np.argsort(-self.scores(devs), axis=1, kind="stable")
        cap = [d.spec.capacity_bytes for d in devs]
        used = [0.0] * len(devs)
        home = np.empty(ctx.num_objects, dtype=np.int32)
        for oid, row in enumerate(ranked.tolist()):
            s = ctx.object_bytes[oid]
            for j in row:
                if used[j] + s <= cap[j]:
                    used[j] += s
                    home[oid] = devs[j].index
                    break
            else:
                raise ConfigError(
                    f"experts ({ctx.object_bytes.sum() / 1e9:.4g} GB) exceed the capacity of "
                    f"tier '{tier}' ({sum(cap) / 1e9:.4g} GB); raise a device's capacity_gb or "
                    "choose a larger tier", source=ctx.source, key="placement.tier")
        return home
