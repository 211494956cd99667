"""Add summary keys that are new to tests/golden/summaries.json without touching pinned ones."""
# Usage: python tests/golden/add_new_keys.py  (from the project root)
import json, sys
sys.path.insert(0, "tests")
from test_golden import CASES, summary_of, GOLDEN
g = json.loads(GOLDEN.read_text())
for case in sorted(CASES):
    got = summary_of(case)
    if case not in g:
        g[case] = got; print("new case", case); continue
    for k in set(got) - set(g[case]):
        g[case][k] = got[k]
    for k in set(g[case]) - set(got):
        del g[case][k]
GOLDEN.write_text(json.dumps(g, indent=1, sort_keys=True) + "\n")
