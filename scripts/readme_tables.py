"""Result tables generated from the saved benchmark results, so that no table can drift from its data.

    python scripts/readme_tables.py            # refresh every generated table in README.md and docs/
    python scripts/readme_tables.py --check    # exit 1, naming the files, where a table is stale
    python scripts/readme_tables.py --print results/quick results/paper   # print folders' tables

A generated table sits between a marker comment and ``<!-- end table -->``; everything outside the
markers is prose and stays as written. Markers (paths relative to the repository root; a path may
be a glob, the first folder holding a method wins for that method):

    <!-- table: docs/results/quick/fmnist-mlp -->
        the task's compact table (benchmarks.report.compact_table): every method, every column
    <!-- table: FOLDER methods=a,b columns=final,best,post_nll -->
        those methods (in that order) and columns, under the column names of COLUMNS below
    <!-- pivot: value=best methods=a,b copy=FOLDER[,FOLDER...] pixel-fmnist=FOLDER[,...] -->
        one value per method (rows) and task (columns), each task read from its folders in order
    <!-- uncertainty: FOLDER [FOLDER...] [methods=a,b] -->
        the task's uncertainty table (benchmarks.report.uncertainty_table): accuracy, NLL, ECE, Brier,
        temperature-scaled NLL, OOD detection and rotated accuracy, for the model and the posterior
    <!-- posterior: FOLDER [methods=a,b] -->
        the posterior round's table (benchmarks.report.posterior_table): each method's reported
        prediction, its NLL under corruption and its cost

Accuracies in ``table ... columns=`` and pivots are printed in percent, with the sd over seeds.
"""

import argparse
import glob
import json
import re
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import compact_table, posterior_table, summary_rows, time_baseline, uncertainty_table  # noqa: E402

# the pages that hold generated tables
PAGES = ["README.md", "docs/results.md", "docs/pypi.md", "docs/transformers.md"]

COLUMNS = {
    "final": "test {metric} (final)",
    "best": "test {metric} (best validation epoch)",
    "test_loss": "test loss (final)",
    "ece": "test ECE (final)",
    "post_acc": "posterior accuracy",
    "post_nll": "posterior NLL",
    "post_ece": "posterior ECE",
    "post_bpc": "posterior bits/char (final)",
    "ess": "ESS (test log-lik)",
    "rhat": "R-hat (test log-lik)",
    "ratio": "time/epoch vs {baseline}",
    "violation": "max violation",
    "seeds": "seeds",
}
PERCENT = {"final", "best", "post_acc"}  # accuracies, where the metric is accuracy

MARKER = re.compile(r"(<!-- (table|pivot|uncertainty|posterior): (.*?) -->\n)(.*?)(<!-- end table -->)", re.S)


def load(pattern: str) -> List[dict]:
    """The results.json of every folder matching ``pattern``, in sorted order."""
    paths = sorted(glob.glob(str(ROOT / pattern)))
    found = [json.loads((Path(p) / "results.json").read_text()) for p in paths if (Path(p) / "results.json").is_file()]
    if not found:
        raise SystemExit(f"no results.json under {pattern!r}")
    return found


def _cell(row: dict, column: str, metric: str) -> str:
    value = str(row[column])
    if row["status"] != "done" and value == "–":
        return "diverged" if "diverged" in row["status"] else row["status"]
    if column in PERCENT and metric == "accuracy" and "±" in value:
        mean, sd = (float(v) for v in value.split("±"))
        value = f"{100 * mean:.1f} ± {100 * sd:.1f}%"
    if row["status"] != "done":  # some seeds diverged: the value is over the others
        value += f" ({row['status'].split(':')[0]})"
    return value


def _first_holders(folders: List[str]) -> Dict[str, dict]:
    """method -> the results of the first folder holding it (the folders in the order given, each
    pattern's matches sorted): where a method ran in several, the first wins."""
    holders: Dict[str, dict] = {}
    for pattern in folders:
        for results in load(pattern):
            for run in results["runs"]:
                holders.setdefault(run["method"], results)
    return holders


def _distinct(results_list):
    return list({id(r): r for r in results_list}.values())


def _rows(folders: List[str]) -> Dict[str, tuple]:
    """method -> (summary row, results) from the first folder that has the method."""
    holders = _first_holders(folders)
    summaries = {id(r): {row["method"]: row for row in summary_rows(r)} for r in _distinct(holders.values())}
    return {m: (summaries[id(results)][m], results) for m, results in holders.items()}


def _options(text: str):
    words = text.split()
    paths = [w for w in words if "=" not in w]
    options = dict(w.split("=", 1) for w in words if "=" in w)
    return paths, options


def render_table(spec: str) -> str:
    paths, options = _options(spec)
    if not options:
        (results,) = load(paths[0])
        return compact_table(results)
    rows = _rows(paths)
    methods = options["methods"].split(",") if "methods" in options else list(rows)
    columns = options.get("columns", "final,best,test_loss,ratio,violation").split(",")
    first = rows[methods[0]][1]
    metric = "accuracy" if first["metric"] == "accuracy" else "bits/char"
    baseline = time_baseline(first)
    head = ["method"] + [COLUMNS[c].format(metric=metric, baseline=baseline) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        if m not in rows:
            raise SystemExit(f"{spec!r}: no run of method {m!r}")
        row, results = rows[m]
        lines.append("| " + " | ".join([f"`{m}`"] + [_cell(row, c, results["metric"]) for c in columns]) + " |")
    return "\n".join(lines)


def render_pivot(spec: str) -> str:
    _, options = _options(spec)
    value = options.pop("value", "best")
    methods = options.pop("methods").split(",")
    tasks = {task: _rows(folders.split(",")) for task, folders in options.items()}
    lines = ["| method | " + " | ".join(f"`{t}`" for t in tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for m in methods:
        cells = [_cell(rows[m][0], value, rows[m][1]["metric"]) if m in rows else "–" for rows in tasks.values()]
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_uncertainty(spec: str) -> str:
    paths, options = _options(spec)
    # one task's runs, gathered from several folders
    holders = _first_holders(paths)
    runs = [run for results in _distinct(holders.values()) for run in results["runs"] if holders[run["method"]] is results]
    results = dict(next(iter(holders.values())), runs=runs)
    table = uncertainty_table(results, options["methods"].split(",") if "methods" in options else None)
    if table is None:
        raise SystemExit(f"{spec!r}: no run recorded the uncertainty columns")
    return table


def render_posterior(spec: str) -> str:
    paths, options = _options(spec)
    if len(paths) != 1:
        raise SystemExit(f"{spec!r}: a posterior table reads one folder")
    (results,) = load(paths[0])
    table = posterior_table(results, options["methods"].split(",") if "methods" in options else None)
    if table is None:
        raise SystemExit(f"{spec!r}: no run recorded the corruption columns")
    return table


def refresh(text: str) -> str:
    def one(match):
        kind, spec = match.group(2), match.group(3)
        body = {"table": render_table, "pivot": render_pivot, "uncertainty": render_uncertainty, "posterior": render_posterior}[kind](spec)
        return match.group(1) + body + "\n" + match.group(5)

    return MARKER.sub(one, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale tables instead of rewriting them")
    parser.add_argument("--print", nargs="+", metavar="FOLDER", help="print the compact tables of these results folders")
    args = parser.parse_args(argv)
    if args.print:
        for folder in args.print:
            for path in sorted(Path(folder).glob("*/results.json")):
                results = json.loads(path.read_text())
                seeds = sorted({r["seed"] for r in results["runs"]})
                print(f"**{results['task']}** ({results['preset']}, {len(seeds)} seeds; `{results.get('command', '')}`)\n")
                print(compact_table(results) + "\n")
        return 0
    stale = []
    for page in PAGES:
        path = ROOT / page
        text = path.read_text()
        new = refresh(text)
        if new != text:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("stale generated tables in " + ", ".join(stale) + ": run python scripts/readme_tables.py")
        return 1
    print(("rewrote " + ", ".join(stale)) if stale else "every generated table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
