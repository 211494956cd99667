"""Slice-aware LRU for bit-sliced experts (SliceMoE's Dynamic Bit-Sliced Caching cache side).

Each expert is two objects (``mixed_precision: dbsc``): slice 0 = its MSB slice (a usable
low-bit expert), slice 1 = its LSB slice (the remaining bits; with the MSB it makes the
high-bit expert). One cache shared by all layers keeps them in two LRU queues:

    on access(x):   x cached -> x becomes the most recent of its queue; hit
    on insert(x):   evict least-recent LSB slices first; only when no LSB is left, the
                    least-recent MSB slices. So an LSB, once used, is the first to go.
                    ``lsb_evicts_msb: false``: an LSB that would need an MSB evicted is not
                    kept (never pushes out a usable expert; with a budget full of MSBs no
                    LSB then ever enters, and DBSC degenerates into the low-bit model)

``lsb_first: false`` makes it one LRU over all slices (LSBs treated like MSBs). With every
expert critical (both slices looked up together) and a budget of whole experts that is plain
LRU on whole experts (tests/test_slicemoe.py checks it). SliceMoE's text (abstract, arXiv
2512.12990) gives "MSB slices LRU, LSB slices lowest priority, evicted first"; whether an
LSB may displace a cold MSB is not said: the default lets it (the cold MSB is older than
the LSB just used).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ...config.strict import field
from ...errors import ConfigError
from ..base import CACHE, CachePolicy


@CACHE.register("slice_lru")
class SliceLRU(CachePolicy):
    @dataclass(frozen=True, kw_only=True)
    class Params(CachePolicy.Params):
        lsb_first: bool = field(True, help="evict LSB slices before any MSB slice (false: one "
                                           "LRU over all slices)")
        lsb_evicts_msb: bool = field(True, help="an LSB slice may evict least-recent MSB "
                                                "slices when no LSB is left to evict (false: "
                                                "it is not kept)")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        if ctx.slices_per_expert != 2:
            raise ConfigError("slice_lru caches experts stored as an MSB and an LSB slice; "
                              f"this run stores {ctx.slices_per_expert} object(s) per expert: "
                              "use mixed_precision: {name: dbsc}", source=ctx.source,
                              key="cache.name")
        self._msb: OrderedDict[int, float] = OrderedDict()
        self._lsb: OrderedDict[int, float] = (OrderedDict() if params.lsb_first else self._msb)
        self._lsb_bytes = 0.0                # bytes in the LSB queue (when it is separate)
        self.access = self._access

    def _queue(self, oid: int):
        return self._lsb if oid & 1 else self._msb

    def _access(self, oid: int) -> bool:
        q = self._lsb if oid & 1 else self._msb
        if oid in q:
            q.move_to_end(oid)
            return True
        return False

    def contains(self, oid: int) -> bool:
        return oid in (self._lsb if oid & 1 else self._msb)

    def insert(self, oid: int, size: float) -> list[int]:
        cap = self.capacity_bytes
        if size > cap:
            return [oid]
        used = self.used_bytes
        lsb, msb = self._lsb, self._msb
        is_lsb = bool(oid & 1)
        if (is_lsb and lsb is not msb and not self.params.lsb_evicts_msb
                and used - self._lsb_bytes + size > cap):
            return [oid]                     # room only by evicting MSBs: not kept
        evicted = []
        split = lsb is not msb
        while used + size > cap:
            if split and lsb:
                victim, vsize = lsb.popitem(last=False)
                self._lsb_bytes -= vsize
            else:
                victim, vsize = msb.popitem(last=False)
            used -= vsize
            evicted.append(victim)
        if is_lsb and split:
            lsb[oid] = size
            self._lsb_bytes += size
        else:
            msb[oid] = size
        self.used_bytes = used + size
        return evicted

    def remove(self, oid: int) -> bool:
        q = self._queue(oid)
        size = q.pop(oid, None)
        if size is None:
            return False
        if q is self._lsb and self._lsb is not self._msb:
            self._lsb_bytes -= size
        self.used_bytes -= size
        return True

    def resident(self):
        if self._lsb is self._msb:
            return list(self._msb)
        return list(self._lsb) + list(self._msb)
