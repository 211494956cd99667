"""KV cache held in the compute unit's own memory (HBM / LPDDR): attention reads it at that
memory's bandwidth (the roofline's bytes term); its footprint is reported, never offloaded."""
from __future__ import annotations

from ..base import KV, KVPolicy


@KV.register("local")
class LocalKV(KVPolicy):
    pass
