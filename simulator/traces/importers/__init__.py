"""Converters from public routing-data formats to the canonical trace (or expert counts).

One module per source format, each registering an :class:`Importer` subclass::

    @IMPORTERS.register("mixtral-jsonl")
    class MixtralJsonl(Importer): ...

``moesim trace import`` auto-detects the format (``Importer.detect``) or takes ``--format``.
An importer never silently repairs a defect: each choice it makes (imputing a missing cell,
truncating, dropping a file) is an explicit option, and the counts go into ``ImportResult.report``
and the trace's ``meta.notes``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

import yaml

from ...config import yamlload
from ...config.strict import build
from ...errors import TraceError
from ...registry import Registry
from ..schema import Trace

IMPORTERS: Registry[type["Importer"]] = Registry("trace format", package=__name__)


@dataclass
class ImportResult:
    """What an importer produced: a per-token trace, or aggregate counts (never both)."""

    trace: Trace | None = None
    counts: Any = None                     # simulator.traces.counts.ExpertCounts
    report: dict[str, Any] = field(default_factory=dict)


class Importer:
    """Base class. Subclasses set ``description`` and ``Options`` and implement detect/run."""

    description: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Options:
        pass

    @classmethod
    def detect(cls, path: Path) -> bool:
        """True if ``path`` (file or folder) looks like this format. Must be cheap."""
        raise NotImplementedError

    @classmethod
    def run(cls, path: Path, options: "Importer.Options") -> ImportResult:
        raise NotImplementedError

    @classmethod
    def parse_options(cls, raw: dict[str, str]) -> "Importer.Options":
        """Build Options from ``--option key=value`` strings: values of non-string options
        are read as YAML scalars, then checked like any config (types, ``min``, ``choices``
        declared on the fields) by :func:`simulator.config.strict.build`."""
        hints = get_type_hints(cls.Options)
        typed: dict[str, Any] = {}
        for key, value in raw.items():
            if hints.get(key, str) is str:
                typed[key] = value
                continue
            try:
                typed[key] = yamlload.load(value)   # the one YAML reader (1.2 floats)
            except yaml.YAMLError:
                typed[key] = value          # reported by build() as the wrong type
        return build(cls.Options, typed, key="--option")


def detect_format(path: str | Path) -> str:
    path = Path(path)
    matches = [name for name, imp in IMPORTERS.items() if imp.detect(path)]
    if not matches:
        raise TraceError(f"unrecognised format; pass --format (one of {', '.join(IMPORTERS.names())})",
                         source=str(path))
    if len(matches) > 1:
        raise TraceError(f"ambiguous format (matches {', '.join(matches)}); pass --format",
                         source=str(path))
    return matches[0]


def import_path(path: str | Path, fmt: str | None = None, options: dict[str, str] | None = None
                ) -> ImportResult:
    p = Path(path)
    if not p.exists():
        raise TraceError("no such file or folder", source=str(p))
    name = fmt or detect_format(p)
    imp = IMPORTERS.get(name, key="--format")
    return imp.run(p, imp.parse_options(options or {}))
