"""Print README's result tables (compact form) from saved benchmark results.

    python scripts/readme_tables.py results/quick results/paper
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import compact_table  # noqa: E402

for folder in sys.argv[1:]:
    for path in sorted(Path(folder).glob("*/results.json")):
        results = json.loads(path.read_text())
        seeds = sorted({r["seed"] for r in results["runs"]})
        print(f"**{results['task']}** ({results['preset']}, {len(seeds)} seeds; `{results.get('command', '')}`)\n")
        print(compact_table(results) + "\n")
