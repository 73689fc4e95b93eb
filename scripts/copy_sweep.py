"""The copy task's length sweep: final test recall and test loss against T, one line per method,
with the memoryless baseline; and the table of where each method falls to the baseline.

    python scripts/copy_sweep.py docs/results/copy-sweep --paper docs/results/copy-paper

Reads FOLDER/T*/copy/results.json and writes FOLDER/sweep.png and FOLDER/sweep.md. With ``--paper``,
a method that has a longer run at a swept length (the paper preset: T = 1000, the same hidden size,
batch and epoch length, 4,000 steps) but no sweep run there is read from that run's evaluation at the
sweep's step count. It is the same trajectory: the same seed, the same data and a constant lr (a run
with an lr schedule is refused, since its lr at that step would depend on its length). Where both
exist, the two are compared and sweep.md says whether they agree.

A method is *at the baseline* at length T when its final
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
    """{method: {T: [(recall, loss / baseline), ... per seed]}}, the settings of each T and the
    runs' hyper-parameters {method: {T: [...]}}."""
    out, settings, hparams = {}, {}, {}
    for path in sorted(folder.glob("T*/copy/results.json")):
        results = json.loads(path.read_text())
        t = int(results["settings"]["T"])
        settings[t] = {k: results["settings"][k] for k in ("hidden", "batch_size", "steps_per_epoch", "epochs")}
        for run in results["runs"]:
            recall, loss = final(run, "test_accuracy"), final(run, "test_loss")
            if recall is None or run["status"] != "done":
                recall, loss = float("nan"), float("nan")
            out.setdefault(run["method"], {}).setdefault(t, []).append((recall, loss / results["baseline"]))
            hparams.setdefault(run["method"], {}).setdefault(t, []).append(run.get("hyperparameters"))
    return out, settings, hparams


def read_early(run, epoch: int):
    """(recall, loss) of a longer run at the end of ``epoch``, or NaNs where it had diverged by then."""
    rows = [r for r in run["epochs"] if r.get("epoch") == epoch and "test_accuracy" in r]
    if rows:
        return rows[0]["test_accuracy"], rows[0]["test_loss"]
    if run["status"] != "done" and len(run["epochs"]) < epoch:
        return float("nan"), float("nan")
    raise SystemExit(f"the longer run of {run['method']} has no test evaluation at epoch {epoch}")


def add_longer_runs(data, settings, hparams, results_path: Path):
    """Fill in, from the longer runs in ``results_path``, the swept lengths a method lacks. Returns
    ({(method, T) read from the longer run}, [sentences on the runs that exist both ways])."""
    results = json.loads(results_path.read_text())
    t = int(results["settings"]["T"])
    if t not in settings:
        return set(), []
    mine, theirs = settings[t], results["settings"]
    same = ("hidden", "batch_size", "steps_per_epoch")
    if any(mine[k] != theirs[k] for k in same) or theirs["epochs"] < mine["epochs"]:
        raise SystemExit(f"{results_path}: not the sweep's run at T = {t} continued ({', '.join(f'{k} {theirs[k]}' for k in same + ('epochs',))}; "
                         f"the sweep has {', '.join(f'{k} {mine[k]}' for k in same + ('epochs',))})")
    step = mine["epochs"] * mine["steps_per_epoch"]
    early = {}  # method -> [(recall, loss / baseline) per seed], in the runs' order
    for run in results["runs"]:
        m, hp = run["method"], dict(run.get("hyperparameters") or {})
        if "schedule" in hp:
            raise SystemExit(f"{results_path}: {m} ran with an lr schedule; its lr at step {step:,} depends on the run's length")
        others = [h for length, hs in hparams.get(m, {}).items() if length != t for h in hs]
        if any(h != hp for h in others):
            raise SystemExit(f"{results_path}: {m}'s hyper-parameters {hp} differ from its sweep runs' {others[0]}")
        recall, loss = read_early(run, mine["epochs"])
        early.setdefault(m, []).append((recall, loss / results["baseline"]))
    added, checks = set(), []
    for m, values in early.items():
        if t in data.get(m, {}):
            agree = data[m][t] == values
            checks.append(f"{m} (the sweep run and the longer run at step {step:,} " + ("agree exactly)" if agree else f"differ: {data[m][t]} against {values})"))
        else:
            data.setdefault(m, {})[t] = values
            added.add((m, t))
    return added, checks


def falls_at(by_t):
    for t in sorted(by_t):
        if all(not (ratio < AT_BASELINE) for _, ratio in by_t[t]):  # NaN (diverged) counts as fallen
            return t
    return None


def table(data, lengths, longer=frozenset()) -> str:
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
            mark = " \\*" if (m, t) in longer else ""
            cells.append(("diverged" if ratio != ratio else f"{100 * recall:.1f}%, {ratio:.3f}") + mark)  # NaN: a seed diverged
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
    parser.add_argument("--paper", type=Path, help="a results folder of longer runs at a swept length (its copy/results.json), read at the sweep's step count where a method has no sweep run")
    args = parser.parse_args()
    data, settings, hparams = collect(args.folder)
    if not data:
        print(f"no T*/copy/results.json under {args.folder}", file=sys.stderr)
        return 1
    lengths = sorted(settings)
    budget = {(s["steps_per_epoch"] * s["epochs"], s["batch_size"], s["hidden"]) for s in settings.values()}
    if len(budget) != 1:
        raise SystemExit(f"the lengths were run with different budgets {sorted(budget)}: not a sweep at a fixed budget")
    steps, batch, hidden = budget.pop()
    longer, checks = set(), []
    if args.paper is not None:
        longer, checks = add_longer_runs(data, settings, hparams, args.paper / "copy" / "results.json")
    notes = ""
    if longer:
        notes += (f"\n\n\\* Read from the longer run in `{args.paper}` at step {steps:,}: the same seed, data and constant lr, "
                  "so the same trajectory as a sweep run.")
    if checks:
        notes += "\n\nRuns that exist both ways: " + "; ".join(checks) + "."
    plot(data, lengths, args.folder / "sweep.png")
    text = (
        f"# Copy task: the length sweep\n\n{steps:,} steps of batch {batch}, hidden {hidden}, at every length; final test recall "
        f"(chance 12.5%) and final test loss over the memoryless baseline (1 = memoryless; at or above {AT_BASELINE}: at the baseline). "
        f"Generated by `python scripts/copy_sweep.py {args.folder}"
        + (f" --paper {args.paper}" if args.paper is not None else "") + "`.\n\n" + table(data, lengths, longer) + notes + "\n\n![sweep](sweep.png)\n"
    )
    (args.folder / "sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
