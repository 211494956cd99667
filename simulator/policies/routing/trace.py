"""Routing as recorded: every token uses the experts its trace row lists (no cache-aware
re-routing)."""
from __future__ import annotations

from ..base import ROUTING, RoutingPolicy


@ROUTING.register("trace")
class TraceRouting(RoutingPolicy):
    identity = True

    def route(self, phase, layer, tokens, experts):
        return experts
