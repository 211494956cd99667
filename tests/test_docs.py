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


def test_readme_documents_every_subcommand():
    """Each `moesim trace ACTION` and `moesim profiles ACTION` the CLI offers is in the README."""
    import argparse
    from simulator.cli import build_parser
    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = next(a for a in top.choices["trace"]._actions
               if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) >= 7
    for action in sub.choices:
        assert f"moesim trace {action}" in README, f"moesim trace {action}"
    for action in ("list", "show"):
        assert f"moesim profiles {action}" in README
