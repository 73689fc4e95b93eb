"""The copy task's length sweep: final test recall and test loss against T, one line per method,
with the memoryless baseline; and the table of where each method falls to the baseline.

    python scripts/copy_sweep.py docs/results/copy-sweep     # reads T*/copy/results.json

Writes FOLDER/sweep.png and FOLDER/sweep.md. A method is *at the baseline* at length T when its final
test loss is at least AT_BASELINE times the memoryless baseline ``10 ln 8 / (T + 20)`` (it has learnt
nothing the blanks-then-guess strategy does not know); "falls to the baseline at" is the shortest
swept T where it is, for every seed that ran. Final values, not best-epoch ones: every length has
the same budget, and nothing is chosen.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import _order, _styles  # noqa: E402

AT_BASELINE = 0.95  # loss / baseline at or above this: no better than memoryless


def final(run, key):
    rows = [r for r in run["epochs"] if key in r]
    return rows[-1][key] if rows else None


def collect(folder: Path):
    """{method: {T: [(recall, loss / baseline), ... per seed]}} and the settings of each T."""
    out, settings = {}, {}
    for path in sorted(folder.glob("T*/copy/results.json")):
        results = json.loads(path.read_text())
        t = int(results["settings"]["T"])
        settings[t] = {k: results["settings"][k] for k in ("hidden", "batch_size", "steps_per_epoch", "epochs")}
        for run in results["runs"]:
            recall, loss = final(run, "test_accuracy"), final(run, "test_loss")
            if recall is None or run["status"] != "done":
                recall, loss = float("nan"), float("nan")
            out.setdefault(run["method"], {}).setdefault(t, []).append((recall, loss / results["baseline"]))
    return out, settings


def falls_at(by_t):
    for t in sorted(by_t):
        if all(not (ratio < AT_BASELINE) for _, ratio in by_t[t]):  # NaN (diverged) counts as fallen
            return t
    return None


def table(data, lengths) -> str:
    head = "| method | " + " | ".join(f"T = {t}: recall, loss / baseline" for t in lengths) + " | falls to the baseline at |"
    lines = [head, "|" + "---|" * (len(lengths) + 2)]
    for m in _order(data):
        cells = []
        for t in lengths:
            vals = data[m].get(t)
            if not vals:
                cells.append("-")
                continue
            recall = statistics.mean(v[0] for v in vals)
            ratio = statistics.mean(v[1] for v in vals)
            cells.append("diverged" if ratio != ratio else f"{100 * recall:.1f}%, {ratio:.3f}")  # NaN: a seed diverged
        fell = falls_at(data[m])
        missing = [t for t in lengths if t not in data[m]]
        where = f"T = {fell}" if fell is not None else (f"not at T <= {max(data[m])}" if not missing else f"not at the lengths run ({', '.join(str(t) for t in sorted(data[m]))})")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {where} |")
    return "\n".join(lines)


def plot(data, lengths, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = _styles(list(data))
    for m in _order(data):
        ts = [t for t in lengths if t in data[m]]
        axes[0].plot(ts, [100 * statistics.mean(v[0] for v in data[m][t]) for t in ts], marker="o", label=m, **styles[m])
        axes[1].plot(ts, [statistics.mean(v[1] for v in data[m][t]) for t in ts], marker="o", label=m, **styles[m])
    axes[0].axhline(100 / 8, color="k", ls=":", lw=1, label="chance (1/8)")
    axes[1].axhline(1.0, color="k", ls=":", lw=1, label="memoryless baseline")
    axes[0].set_ylabel("final test recall (%)")
    axes[1].set_ylabel("final test loss / baseline 10 ln 8 / (T + 20)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.minorticks_off()
        ax.set_xlabel("T (blanks between the symbols and the marker)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("copy task: the same budget at every length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    data, settings = collect(args.folder)
    if not data:
        print(f"no T*/copy/results.json under {args.folder}", file=sys.stderr)
        return 1
    lengths = sorted(settings)
    budget = {(s["steps_per_epoch"] * s["epochs"], s["batch_size"], s["hidden"]) for s in settings.values()}
    if len(budget) != 1:
        raise SystemExit(f"the lengths were run with different budgets {sorted(budget)}: not a sweep at a fixed budget")
    steps, batch, hidden = budget.pop()
    plot(data, lengths, args.folder / "sweep.png")
    text = (
        f"# Copy task: the length sweep\n\n{steps:,} steps of batch {batch}, hidden {hidden}, at every length; final test recall "
        f"(chance 12.5%) and final test loss over the memoryless baseline (1 = memoryless; at or above {AT_BASELINE}: at the baseline). "
        f"Generated by `python scripts/copy_sweep.py {args.folder}`.\n\n" + table(data, lengths) + "\n\n![sweep](sweep.png)\n"
    )
    (args.folder / "sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
