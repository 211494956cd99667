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


# Every per-token real trace format present in ../shared/traces, by a short name.
REAL_TRACE_SOURCES = {
    "mixtral-decode": "speculative-moe-mixtral/humaneval_2_routing.jsonl",
    "mixtral-raw": "speculative-moe-mixtral/routing_raw.jsonl",
    "flame-encoder": "flame-moe-dynande/Encoder_Batch_0-32",
    "flame-decoder": "flame-moe-dynande/Decoder_Batch_0-64",
    "deepseek-v2-lite": "moe-beyond-deepseek-v2-lite/deepseek_v2_lite_chat_prefill_topk.npz",
    "qwen1.5-moe": "moe-ocs-qwen/outputs/experiment_traces",
    "qwen3.6-vllm": "moe-ocs-qwen/data/routing_traces/routing_pretrained.json",
}

_IMPORTED: dict = {}


def real_trace(name: str):
    """Import one real trace (cached per session); skips the test if the source is absent."""
    path = shared_traces_dir() / REAL_TRACE_SOURCES[name]
    if not path.exists():
        pytest.skip(f"real trace {name} not available at {path}")
    if name not in _IMPORTED:
        from simulator.traces.importers import import_path
        _IMPORTED[name] = import_path(path).trace
    return _IMPORTED[name]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``moesim ARGV`` in-process; (exit code, stdout, stderr)."""
    from simulator.cli import main
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(capsys, argv, *needles):
    """The command fails with exactly one ``moesim: error: ...`` line containing ``needles``."""
    code, out, err = run_cli(capsys, *argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("moesim: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
