"""Merge the runs of several ``results.json`` of one task and preset (e.g. seeds run in parallel
processes with different --out folders) into one folder, then rebuild its report.

    python scripts/merge_results.py results/paper results/paper-s1 results/paper-s2

The first folder is the target; where it holds no results yet, the first source's are its start.
``--methods a,b`` keeps only those methods' runs (an lr grid's winner, taken out of a grid point that
ran every method). ``--evaluated-only`` keeps only the evaluated epochs' rows (and the last): long
runs (two-spirals' 10,000 epochs) record a row per epoch, too large to keep in docs/results; the
tables and curves need the evaluated ones (the time per epoch is then the mean over those epochs).
``--mixed-hparams`` merges runs made with different task hyper-parameters (a round that sets each
method's chosen lr with ``--set``): each run then records its own ``task_hparams``, and the top
level keeps only the values they share.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import rebuild  # noqa: E402
from benchmarks.runner import save_results  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("target", type=Path)
parser.add_argument("sources", type=Path, nargs="+")
parser.add_argument("--methods", help="comma-separated methods to keep (default: all)")
parser.add_argument("--evaluated-only", action="store_true")
parser.add_argument("--mixed-hparams", action="store_true", help="merge runs whose task hyper-parameters differ (a round's per-method --set values): each run keeps its own")
args = parser.parse_args()
keep = set(args.methods.split(",")) if args.methods else None

tasks = sorted({p.parent.name for folder in [args.target, *args.sources] for p in folder.glob("*/results.json")})
for task in tasks:
    merged = None
    for folder in [args.target, *args.sources]:
        path = folder / task / "results.json"
        if not path.is_file():
            continue
        extra = json.loads(path.read_text())
        extra["runs"] = [r for r in extra["runs"] if keep is None or r["method"] in keep]
        if merged is None:
            merged = extra
            continue
        if (extra["preset"], extra["settings"]) != (merged["preset"], merged["settings"]):
            raise SystemExit(f"{path}: different preset or settings; not merged")
        if extra["task_hparams"] != merged["task_hparams"]:
            if not args.mixed_hparams:
                raise SystemExit(f"{path}: different task hyper-parameters; not merged (--mixed-hparams merges runs made with per-method --set values)")
            # each run keeps the task's hyper-parameters it ran with; the top level keeps those all agree on
            for results in (merged, extra):
                for run in results["runs"]:
                    run.setdefault("task_hparams", results["task_hparams"])
            merged["task_hparams"] = {k: v for k, v in merged["task_hparams"].items() if extra["task_hparams"].get(k) == v}
        keys = {(r["method"], r["seed"]) for r in extra["runs"]}
        merged["runs"] = [r for r in merged["runs"] if (r["method"], r["seed"]) not in keys] + extra["runs"]
    merged["runs"].sort(key=lambda r: (r["seed"], r["method"]))
    if args.evaluated_only:
        for run in merged["runs"]:
            last = run["epochs"][-1:]
            run["epochs"] = [row for row in run["epochs"][:-1] if any(k.startswith("test_") for k in row)] + last
        merged["epochs_kept"] = "evaluated epochs only (scripts/merge_results.py --evaluated-only)"
    save_results(merged, args.target / task)
rebuild(args.target)
print(f"merged into {args.target}")
