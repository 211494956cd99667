"""`moesim run` imports only what it uses (issue: start-up): no pandas or matplotlib before
the results are written, trace reading without pyarrow.compute, every YAML read through the
C-based strict loader. Checked in fresh interpreters (sys.modules), not with wall-clock
times."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "matplotlib", "pyarrow.compute")


def _child(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MOESIM_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


LOADED = "[m for m in %r if m in sys.modules]" % (HEAVY,)


def test_simulation_runs_without_pandas_or_matplotlib():
    out = _child(f"""
import json, sys
from simulator import load_config
from simulator.engine.simulation import Simulation
loaded = load_config(None)                      # the bundled default config (events on)
sim = Simulation(loaded)
built = {LOADED}
res = sim.run()                                 # simulate and collect the summary
ran = {LOADED}
n = len(res.transfers)                          # the DataFrame: pandas from here on
print(json.dumps({{"built": built, "ran": ran, "after": {LOADED}, "n": n}}))
""")
    assert out["built"] == [] and out["ran"] == [], out
    assert "pandas" in out["after"] and out["n"] > 0          # the check can fail


def test_cli_parser_and_run_until_the_simulation_import_no_pandas(tmp_path):
    """Building the parser imports neither; nor does ``moesim run`` until the simulation
    starts (Simulation.run is stopped on entry: config, trace, hardware and policies done)."""
    out = _child(f"""
import json, sys
from simulator.cli import build_parser
build_parser().parse_args(["run", "experiments/default.yaml"])
parser = {LOADED}
from simulator.engine import simulation
seen = {{}}
def stop(self, **kw):
    seen["run"] = {LOADED}
    raise SystemExit(0)
simulation.Simulation.run = stop
from simulator.cli import main
try:
    main(["run", "experiments/cxl_expanders.yaml", "-q", "-o", {str(tmp_path / "res")!r}])
except SystemExit:
    pass
print(json.dumps({{"parser": parser, "run": seen.get("run")}}))
""")
    assert out["parser"] == [] and out["run"] == [], out


def test_every_yaml_read_uses_the_c_strict_loader():
    """Configs (with extends), device profiles and the model catalog are all read through
    config.yamlload's StrictLoader, which is built on PyYAML's CSafeLoader when present."""
    out = _child("""
import json, sys, yaml
from simulator.config import yamlload
used = []
real = yaml.load
def spy(stream, Loader=None, **kw):
    used.append(Loader.__name__ if Loader else None)
    return real(stream, Loader=Loader, **kw)
yaml.load = spy
from simulator import load_config
from simulator.engine.simulation import Simulation
Simulation(load_config("experiments/cxl_expanders.yaml"))
from simulator.models.spec import catalog
catalog()
print(json.dumps({"used": used, "c": hasattr(yaml, "CSafeLoader"),
                  "bases": [b.__name__ for b in yamlload.StrictLoader.__mro__]}))
""")
    assert len(out["used"]) >= 3 and set(out["used"]) == {"StrictLoader"}, out
    if out["c"]:
        assert "CSafeLoader" in out["bases"]
