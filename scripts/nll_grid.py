"""A grid tuned on validation NLL, read from its results.json files (the posterior round:
scripts/posterior_round.sh). Each folder is one grid point, named ``...-METHOD-SETTINGS`` (the
settings after the method's name, e.g. ``grid-sgld-cyclical-lr=0.03,TN=1``). Per method and point:
the validation NLL of the prediction the method reports (its posterior average where it has one,
else the final model's; a language model's in nats per character), and the validation accuracy
(next-character accuracy) beside it. The test split is not read.
The lowest NLL is chosen. Usage: python scripts/nll_grid.py runs/posterior/grid-*

``--previous TABLE`` starts from the points of an earlier table this script wrote (a grid extended
on a machine that no longer holds the earlier points' runs); a point run again replaces its row."""

import argparse
import json
import math
from pathlib import Path


def validation(run):
    """(NLL, accuracy) on the validation split of what the run predicts with, at its last epoch."""
    last = run["epochs"][-1] if run["epochs"] else {}
    if "posterior_val_bpc" in last:  # a language model's posterior: nats per character
        return last["posterior_val_bpc"] * math.log(2), last.get("posterior_val_char_accuracy", math.nan)
    nll = last.get("posterior_val_nll", last.get("val_loss", math.nan))
    return nll, last.get("val_accuracy", last.get("val_char_accuracy", math.nan))


def previous_rows(path):
    """{method: {point: (NLL, accuracy)}} read back from a table this script printed."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("method", "---"):
            rows.setdefault(cells[0], {})[cells[1]] = (float(cells[2]), float(cells[3]))
    return rows


def main(folders, previous=None):
    rows = previous_rows(previous) if previous else {}
    for folder in folders:
        for path in Path(folder).glob("*/results.json"):
            data = json.loads(path.read_text())
            for run in data["runs"]:
                name = Path(folder).name
                point = name[name.index(run["method"]) + len(run["method"]) + 1 :]
                nll, acc = validation(run) if run["status"] == "done" else (math.nan, math.nan)
                rows.setdefault(run["method"], {})[point] = (nll, acc)
    print("Validation NLL (and validation accuracy) per grid point, seed 0; the lowest NLL is chosen.\n")
    print("| method | grid point | validation NLL | validation accuracy | chosen |")
    print("|---|---|---|---|---|")
    for method, points in sorted(rows.items()):
        best = min(points, key=lambda p: points[p][0] if points[p][0] == points[p][0] else math.inf)
        for point in sorted(points):
            nll, acc = points[point]
            print(f"| {method} | {point} | {nll:.4f} | {acc:.4f} | {'**chosen**' if point == best else ''} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="the grid points' results folders")
    parser.add_argument("--previous", metavar="TABLE", help="an earlier table of this script's, extended by the folders' points")
    args = parser.parse_args()
    main(args.folders, args.previous)
