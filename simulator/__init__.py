"""moesim: a trace-driven discrete-event simulator of memory hierarchies for MoE inference.

Public API::

    from simulator import load_config, load_trace, run
    loaded = load_config("experiments/default.yaml", sets=["cache.capacity_gb=24"])
    result = run(loaded)            # -> RunResult(summary, requests, steps, transfers, layers)
"""
from __future__ import annotations

__version__ = "0.1.0"


def load_config(path=None, sets=None):
    """Load and validate a run config (YAML + ``--set`` overrides)."""
    from .config.load import load_config as _load
    return _load(path, sets)


def load_trace(path):
    """Read and validate a canonical Parquet trace."""
    from .traces.io import read_trace
    return read_trace(path)


def run(loaded, trace=None, *, fast_path: bool = True):
    """Simulate a loaded config; returns a RunResult."""
    from .engine.simulation import Simulation
    return Simulation(loaded, trace, fast_path=fast_path).run()
