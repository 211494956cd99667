"""The README documents what the code does: every metric, the two quick-start commands."""
from pathlib import Path

from simulator.metrics.definitions import METRICS, markdown_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_metrics_table_is_the_generated_one():
    assert markdown_table() in README
    for name, _unit, _formula in METRICS:
        assert f"`{name}`" in README


def test_readme_gives_install_run_and_test_commands():
    assert "pip install . && moesim run" in README
    assert "pip install '.[test]' && pytest" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "pip install '.[test]' && pytest" in ci
