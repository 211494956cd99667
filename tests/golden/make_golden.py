"""Regenerate tests/golden/summaries.json: the full summary of every golden case.

    python tests/golden/make_golden.py

Only when a change is *meant* to move results: the commit that regenerates the file must list
every changed value and why (test_golden.py prints the differences).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from test_golden import CASES, summary_of  # noqa: E402

if __name__ == "__main__":
    out = {case: summary_of(case) for case in CASES}
    (HERE / "summaries.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {HERE / 'summaries.json'}: {len(out)} cases, "
          f"{sum(len(v) for v in out.values())} values")
