"""The depth sweeps of the init claims (scripts/depth_sweep.sh): the final training loss and the test
accuracy against depth, one line per method and init, and a table.

    python scripts/depth_report.py docs/results/depth     # reads <task>-d<DEPTH>-<INIT>/<task>/results.json

Writes FOLDER/depth.png and FOLDER/depth.md. Every depth is read at the same number of steps (the
fewest epochs any depth of the task ran; a depth trained longer is also reported at its end): the
training loss after those epochs, and the test accuracy at the best validation epoch among them, as
every task reports it. A diverged run counts as untrained (NaN); a run not finished is left out.
For the ICNN sweep, also the epochs until the training loss first falls to
``LOSS_TARGET`` (the acceleration claim, in epochs because the cores were shared: seconds per epoch
are in each folder's results.md). Mean and standard deviation over the seeds that ran.
"""

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import _order, _styles  # noqa: E402

LOSS_TARGET = 0.5  # cross-entropy (about 82% training accuracy on fmnist-icnn): "trains"
FOLDER = re.compile(r"(?P<task>.+)-d(?P<depth>\d+)-(?P<init>[a-z_]+)$")
INIT_STYLE = {"near_binary": "-", "icnn": "-", "centred": "--", "default": "--"}


def best_epoch(rows):
    """The row of the best validation accuracy among ``rows`` (None if none was evaluated)."""
    rows = [r for r in rows if "val_accuracy" in r]
    return max(rows, key=lambda r: r["val_accuracy"]) if rows else None


def epochs_to(run, target):
    return next((r["epoch"] for r in run["epochs"] if r["train_loss"] <= target), None)


def summary(epochs):
    """The training loss after the last of ``epochs`` and the test accuracy at the best validation
    epoch among them (NaN where a run stopped before: a diverged run counts as not trained)."""
    last = epochs[-1]["train_loss"] if epochs else float("nan")
    best = best_epoch(epochs)
    return {"train_loss": last if math.isfinite(last) else float("nan"), "test_accuracy": best["test_accuracy"] if best else float("nan")}


def collect(folder: Path):
    """{task: {(method, init): {depth: [run summaries per seed]}}}, each task's epochs per depth.

    Every depth is summarised at the task's common budget (the fewest epochs any depth ran), so
    that the depths compare at the same number of steps; a depth trained longer also gets its
    summary at the end (``long``)."""
    found = []
    for path in sorted(folder.glob("*-d*-*/*/results.json")):
        m = FOLDER.match(path.parent.parent.name)
        if m:
            found.append((int(m["depth"]), m["init"], json.loads(path.read_text())))
    epochs = {}
    for depth, init, results in found:
        epochs.setdefault(results["task"], {})[depth] = results["settings"]["epochs"]
    out = {}
    for depth, init, results in found:
        task = results["task"]
        budget = min(epochs[task].values())
        for run in results["runs"]:
            if run["status"] != "done" and not run["status"].startswith("diverged"):
                continue  # not finished: left out, not counted
            rows = run["epochs"]
            lasted = run["status"] == "done" or bool(rows and rows[-1]["epoch"] > budget)  # diverged after the budget
            entry = summary([r for r in rows if r["epoch"] <= budget] if lasted else [])
            entry["diverged"] = not lasted
            entry["epochs_to_target"] = epochs_to(run, LOSS_TARGET)
            if epochs[task][depth] > budget:
                entry["long"] = summary(rows if run["status"] == "done" else [])
            out.setdefault(task, {}).setdefault((run["method"], init), {}).setdefault(depth, []).append(entry)
    return out, epochs


def mean_sd(values):
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(runs, key, spec):
    m, s = mean_sd([r[key] for r in runs])
    return f"{spec.format(m)} ± {spec.format(s)}" if m == m else "-"


def reach(runs, epochs):
    hit = sorted(r["epochs_to_target"] for r in runs if r["epochs_to_target"] is not None)
    if not hit:
        return f"not in {epochs}"
    return f"{statistics.median(hit):g}" + (f" ({len(hit)}/{len(runs)} seeds)" if len(hit) < len(runs) else "")


def table(task, data, epochs) -> str:
    depths = sorted({d for by_depth in data.values() for d in by_depth})
    icnn = task == "fmnist-icnn"
    budget = min(epochs.values())
    lines = [
        f"**{task}**: training loss after {budget} epochs / test accuracy at the best validation epoch of those"
        + (f" / epochs until the training loss first reaches {LOSS_TARGET:g} (median, over the whole run)" if icnn else "")
        + "; epochs run per depth: " + ", ".join(f"{d}: {epochs[d]}" for d in depths),
        "",
        "| method | init | " + " | ".join(f"depth {d}" for d in depths) + " |",
        "|" + "---|" * (len(depths) + 2),
    ]
    for method in _order({m for m, _ in data}):
        for (m, init), by_depth in sorted(data.items(), key=lambda kv: kv[0][1]):
            if m != method:
                continue
            cells = []
            for d in depths:
                runs = by_depth.get(d)
                if not runs:
                    cells.append("-")
                    continue
                diverged = sum(r["diverged"] for r in runs)
                if diverged == len(runs):
                    cells.append(f"diverged ({diverged}/{len(runs)} seeds)")
                    continue
                text = f"{cell(runs, 'train_loss', '{:.2f}')} / {cell(runs, 'test_accuracy', '{:.3f}')}"
                if icnn:
                    text += f" / {reach(runs, epochs[d])}"
                if diverged:
                    text += f" ({diverged}/{len(runs)} seeds diverged: the others)"
                cells.append(text + (f" (n={len(runs)})" if len(runs) != 3 else ""))
            lines.append(f"| {method} | {init} | " + " | ".join(cells) + " |")
    longer = [d for d in depths if epochs[d] > budget]
    for d in longer:
        lines += ["", f"After all {epochs[d]} epochs at depth {d}: training loss / test accuracy", "", "| method | init | result |", "|---|---|---|"]
        for (method, init), by_depth in sorted(data.items(), key=lambda kv: (_order({m for m, _ in data}).index(kv[0][0]), kv[0][1])):
            runs = [r["long"] for r in by_depth.get(d, []) if "long" in r]
            if runs:
                text = f"{cell(runs, 'train_loss', '{:.2f}')} / {cell(runs, 'test_accuracy', '{:.3f}')}"
                lines.append(f"| {method} | {init} | {text if text != '- / -' else 'diverged'} |")
    return "\n".join(lines) + "\n"


def plot(out, epochs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(out)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        styles = _styles(sorted({m for m, _ in out[task]}))
        for (method, init), by_depth in sorted(out[task].items()):
            depths = sorted(by_depth)
            for ax, key in zip(row, ("train_loss", "test_accuracy")):
                stats = [mean_sd([r[key] for r in by_depth[d]]) for d in depths]
                ax.errorbar(depths, [m for m, _ in stats], yerr=[s for _, s in stats], color=styles[method]["color"],
                            linestyle=INIT_STYLE.get(init, ":"), marker="o", ms=3, capsize=2, label=f"{method}, {init}")
        budget = min(epochs[task].values())
        depths = sorted(epochs[task])
        for ax, key in zip(row, (f"training loss after {budget} epochs", "test accuracy (best validation epoch)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(depths, [str(d) for d in depths])
            ax.minorticks_off()
            ax.set_xlabel("depth (a missing point: every seed diverged)")
            ax.set_title(f"{task}: {key}")
        row[0].set_yscale("log")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    out, epochs = collect(args.folder)
    if not out:
        raise SystemExit(f"no <task>-d<DEPTH>-<INIT>/<task>/results.json under {args.folder}")
    text = "\n".join(table(task, out[task], epochs[task]) for task in sorted(out))
    (args.folder / "depth.md").write_text(text)
    plot(out, epochs, args.folder / "depth.png")
    print(text)


if __name__ == "__main__":
    main()
