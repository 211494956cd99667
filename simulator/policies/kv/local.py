"""KV cache held in the compute unit's own memory (HBM / LPDDR): attention reads it at that
memory's bandwidth (the roofline's bytes term); its footprint is reported, never offloaded."""
from __future__ import annotations

from ..base import KV, KVPolicy


@KV.register("local")
class LocalKV(KVPolicy):
    """Uncompressed K and V of every cached token at ``model.kv_precision``, all local."""

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        prec = ctx.config.model.kv_precision
        self._per_token_layer = ctx.model.kv_bytes_per_token_per_layer(prec)
        self._per_token = ctx.model.kv_bytes_per_token(prec)

    def read_bytes_per_token_layer(self) -> float:
        return self._per_token_layer

    def footprint_bytes(self, tokens: int) -> float:
        return tokens * self._per_token
