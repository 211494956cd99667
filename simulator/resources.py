"""Where bundled data lives: device profiles, the default trace and experiment files.

The top-level folders ``device_profiles/``, ``traces/`` and ``experiments/`` are installed as
``simulator.bundled.*`` (see pyproject.toml), so the same lookup works from a source checkout,
an editable install and a wheel.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
_FOLDERS = {"device_profiles": "device_profiles", "traces": "traces", "experiments": "experiments"}


def bundled_dir(name: str) -> Path:
    """Folder of bundled data ``name`` (one of device_profiles, traces, experiments)."""
    folder = _FOLDERS[name]
    try:
        # The folders have no __init__.py (namespace packages), so ask the import system
        # where they are rather than importlib.resources (a MultiplexedPath there).
        spec = importlib.util.find_spec(f"simulator.bundled.{folder}")
    except ModuleNotFoundError:
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if Path(loc).is_dir():
            return Path(loc)
    return _REPO_ROOT / folder


def default_config_path() -> Path:
    return bundled_dir("experiments") / "default.yaml"


def default_trace_path() -> Path:
    return bundled_dir("traces") / "default.parquet"
