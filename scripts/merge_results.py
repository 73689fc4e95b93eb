"""Merge the runs of several ``results.json`` of one task and preset (e.g. seeds run in parallel
processes with different --out folders) into one folder, then rebuild its report.

    python scripts/merge_results.py results/paper results/paper-s1 results/paper-s2

``--evaluated-only`` keeps only the evaluated epochs' rows (and the last): long runs (two-spirals'
10,000 epochs) record a row per epoch, too large to keep in docs/results; the tables and curves
need the evaluated ones (the time per epoch is then the mean over those epochs).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import rebuild  # noqa: E402
from benchmarks.runner import save_results  # noqa: E402

args = sys.argv[1:]
evaluated_only = "--evaluated-only" in args
target, *sources = (Path(p) for p in args if p != "--evaluated-only")
for task_dir in sorted(target.glob("*/results.json")):
    merged = json.loads(task_dir.read_text())
    for src in sources:
        other = src / task_dir.parent.name / "results.json"
        if not other.is_file():
            continue
        extra = json.loads(other.read_text())
        if (extra["preset"], extra["settings"], extra["task_hparams"]) != (merged["preset"], merged["settings"], merged["task_hparams"]):
            raise SystemExit(f"{other}: different preset or settings; not merged")
        keys = {(r["method"], r["seed"]) for r in extra["runs"]}
        merged["runs"] = [r for r in merged["runs"] if (r["method"], r["seed"]) not in keys] + extra["runs"]
    merged["runs"].sort(key=lambda r: (r["seed"], r["method"]))
    if evaluated_only:
        for run in merged["runs"]:
            last = run["epochs"][-1:]
            run["epochs"] = [row for row in run["epochs"][:-1] if any(k.startswith("test_") for k in row)] + last
        merged["epochs_kept"] = "evaluated epochs only (scripts/merge_results.py --evaluated-only)"
    save_results(merged, task_dir.parent)
rebuild(target)
print(f"merged into {target}")
