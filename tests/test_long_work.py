"""What a user sees: progress bars on long work (only on a terminal or MOESIM_PROGRESS=1, off
with -q) that reach their totals, an energy line whose parts add up to the total, one cost
format, and policy descriptions printed whole."""
from __future__ import annotations

import json
import re

import pytest

from conftest import run_cli
from simulator.cli import _dollars, energy_parts, policy_summary
from simulator.resources import default_trace_path


def _numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"(-?[\d,]+(?:\.\d+)?) J\b", text)]


def _rounding(printed: float) -> float:
    """Half a unit in the last printed place (whole J from 1,000 J, else 4 digits)."""
    if abs(printed) >= 1000:
        return 0.5
    if printed == 0:
        return 5e-5
    digits = 4 - 1 - int(f"{abs(printed):e}".split("e")[1])
    return 0.5 * 10.0 ** -digits


@pytest.mark.parametrize("sets", [(), ("cache.name=none", "output.events=false")])
def test_energy_line_states_parts_that_sum_to_the_total(tmp_path, capsys, sets):
    argv = ["run", "-o", str(tmp_path / "r")] + [x for s in sets for x in ("--set", s)]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    # the grouping covers every component energy_j.total is defined as the sum of
    parts = energy_parts(s)
    assert sum(v for _n, v in parts) == pytest.approx(s["energy_j.total"], rel=1e-12)
    lines = out.splitlines()
    i = next(j for j, line in enumerate(lines) if line.strip().startswith("energy:"))
    first, second = lines[i], lines[i + 1]
    total, *printed = _numbers(first)
    assert [n for n, _v in parts] == re.findall(r"(?:= |\+ )([A-Za-z][A-Za-z /]+?) [\d,.]+ J", first)
    assert len(printed) == len(parts)
    for p, (_n, v) in zip(printed, parts):               # each printed part is its key's value
        assert abs(p - v) <= _rounding(p) + 1e-9
    assert abs(sum(printed) - total) <= sum(map(_rounding, printed)) + _rounding(total)
    static = next(v for n, v in parts if n == "static power")
    assert f"({100 * static / s['energy_j.total']:.0f} %)" in first
    # second line: the same total split by phase, and the per-token figure
    by_phase = _numbers(second)[:3]
    assert abs(sum(by_phase) - total) <= sum(map(_rounding, by_phase)) + _rounding(total)
    assert f"{s['energy_j_per_decode_token']:.4g} J per decode token" in second
    assert f"cost {_dollars(s['memory_cost_usd'])};" in out


def test_one_cost_format():
    assert [_dollars(v) for v in (5801.6, 3504.0, 120_000.4, 99.5, 3.25, 0.0)] == [
        "$5,802", "$3,504", "$120,000", "$99.50", "$3.25", "$0.00"]


def test_policy_descriptions_are_whole_sentences(capsys):
    import sys
    from simulator.policies.base import AXES
    code, out, _ = run_cli(capsys, "policies")
    assert code == 0
    for axis, reg in AXES.items():
        for name, cls in reg.items():
            doc = sys.modules[cls.__module__].__doc__.strip()
            first = " ".join(doc.split("\n\n")[0].split())
            assert policy_summary(cls) == first
            assert f"  {name}: {first}\n" in out, (axis, name)
            assert first.endswith((".", ")", ".)")), (axis, name, first)


@pytest.fixture
def bars(monkeypatch):
    """Every bar the commands open (the real ones, drawn into the captured stderr)."""
    import simulator.progress as progress
    opened = []
    real = progress.bar

    def recording(*a, **k):
        b = real(*a, **k)
        opened.append(b)
        return b
    monkeypatch.setattr(progress, "bar", recording)
    monkeypatch.setenv("MOESIM_PROGRESS", "1")
    return opened


def _finished(bars, desc):
    """(n, total) of the bars named ``desc``; pops them."""
    found = [b for b in bars if getattr(b, "desc", "") == desc]
    bars[:] = [b for b in bars if all(b is not f for f in found)]
    return [(b.n, b.total) for b in found]


def test_progress_bars_reach_their_totals_and_honour_quiet(tmp_path, capsys, bars, monkeypatch):
    code, _out, err = run_cli(capsys, "run", "-o", str(tmp_path / "r"))
    assert code == 0 and "simulating" in err
    req = json.loads((tmp_path / "r" / "summary.json").read_text())
    tokens = req["prefill_tokens"] + req["decode_tokens"]
    assert _finished(bars, "simulating") == [(tokens, tokens)]
    assert run_cli(capsys, "run", "-q", "-o", str(tmp_path / "r"))[2] == ""

    syn = tmp_path / "s.parquet"
    argv = ["trace", "synth", "-o", str(syn), "--requests", "5", "--prompt-len", "7",
            "--decode-len", "9"]
    code, _out, err = run_cli(capsys, *argv)
    assert code == 0 and "trace synth" in err
    assert _finished(bars, "trace synth") == [(80, 80)]
    assert run_cli(capsys, *argv, "-q")[2] == ""

    src = str(default_trace_path())
    code, _out, err = run_cli(capsys, "trace", "compare", src, str(syn))
    steps = 5 + 2 * (1 + 9) * 2               # sections + per phase and trace: stream, 9 sizes
    assert code == 0 and "trace compare" in err
    assert _finished(bars, "trace compare") == [(steps, steps)]
    assert run_cli(capsys, "trace", "compare", src, str(syn), "-q")[2] == ""

    code, _out, err = run_cli(capsys, "trace", "fit", src, "-o", str(tmp_path / "m.yaml"),
                              "--iterations", "1")
    assert code == 0 and "trace fit" in err
    assert "calibration 0/1" not in err          # the bar replaces the lines on a terminal
    (n, total), = _finished(bars, "trace fit")
    assert total == 1 + 2 + 7 and 1 + 2 < n <= total   # stage 2 may stop early
    assert run_cli(capsys, "trace", "fit", src, "-o", str(tmp_path / "m.yaml"),
                   "--no-calibrate", "-q")[2] == ""
    monkeypatch.setenv("MOESIM_PROGRESS", "0")  # not a terminal: lines, stage 2 included
    code, _out, err = run_cli(capsys, "trace", "fit", src, "-o", str(tmp_path / "m.yaml"),
                              "--iterations", "1")
    assert "calibration 1/1" in err and "cross-layer chain weight 0.3" in err
