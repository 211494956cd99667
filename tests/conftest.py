"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_traces_dir() -> Path:
    """The read-only real-trace folder: $MOESIM_SHARED_TRACES, else ../shared/traces next to
    the repository."""
    env = os.environ.get("MOESIM_SHARED_TRACES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "traces"


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """Folder of the real public traces (see its SOURCES.md); skips the test when absent."""
    d = shared_traces_dir()
    if not d.is_dir():
        pytest.skip(f"real traces not available at {d} (set MOESIM_SHARED_TRACES)")
    return d
