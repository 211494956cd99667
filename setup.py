"""Package list for setuptools: the simulator's own packages plus the top-level data
folders mapped under ``simulator.bundled`` (see ``package-dir`` in pyproject.toml).
Everything else lives in pyproject.toml."""
from setuptools import find_packages, setup

BUNDLED = [
    "simulator.bundled.device_profiles",
    "simulator.bundled.traces",
    "simulator.bundled.experiments",
]

setup(packages=find_packages(include=["simulator", "simulator.*"]) + BUNDLED)
