"""One exception family for everything a user can get wrong.

Library code raises these; only ``simulator.cli`` turns them into a one-line message and a
non-zero exit code. Each error names *where* the problem is (file, key path, row, field) so a
user can fix the input without reading a traceback.
"""
from __future__ import annotations


class MoesimError(Exception):
    """Base class: a problem with the user's input or request, reported in one line."""


class ConfigError(MoesimError):
    """A run configuration, experiment file or device profile is invalid.

    ``source`` is the file (or ``--set``) and ``key`` the dotted key path inside it.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.message = message
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class TraceError(MoesimError):
    """A routing trace is malformed. Names the file, row (and request/token), layer and field."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        row: int | None = None,
        request: int | None = None,
        token: int | None = None,
        layer: int | None = None,
        field: str | None = None,
    ):
        self.source, self.row, self.request, self.token, self.layer, self.field = (
            source, row, request, token, layer, field)
        parts = []
        if source:
            parts.append(str(source))
        loc = []
        if row is not None:
            loc.append(f"row {row}")
        if request is not None:
            loc.append(f"request {request}")
        if token is not None:
            loc.append(f"token {token}")
        if layer is not None:
            loc.append(f"layer {layer}")
        if loc:
            parts.append(" ".join(loc))
        if field:
            parts.append(field)
        parts.append(message)
        super().__init__(": ".join(parts))


class ModelSpecError(ConfigError):
    """A model specification is unknown or inconsistent with a trace."""


class SimulationError(MoesimError):
    """The simulated system cannot run the workload (e.g. an expert larger than every tier)."""
