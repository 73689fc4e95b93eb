"""The posterior round at two budgets on one figure: test NLL and Brier score of each method's
reported prediction (its posterior average where it has one) against its gradient evaluations, in
units of one SGD-momentum run of the first (shorter) round; mean ± sd over seeds, a line joining a
method's two budgets.

    python scripts/budget_plot.py docs/results/posterior/fmnist-cnn docs/results/posterior-long/fmnist-cnn \\
        --methods ensemble-sgd-momentum,ens-sgld,o-cola-ud-cyclical,swag,sgd-momentum \\
        --out docs/results/posterior-long/budgets.png
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import _final, _reported_prefix  # noqa: E402


def points(results, methods):
    """Per method: (mean gradient evaluations, [NLL per seed], [Brier per seed]) of its done runs."""
    out = {}
    for m in methods:
        runs = [r for r in results["runs"] if r["method"] == m and r["status"] == "done"]
        if not runs:
            continue
        prefix = _reported_prefix(runs)
        nll = [_final(r, "posterior_nll" if prefix == "posterior" else "test_loss") for r in runs]
        brier = [_final(r, f"{prefix}_brier") for r in runs]
        out[m] = (statistics.mean(r["gradient_evaluations"] for r in runs), nll, brier)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rounds", nargs="+", type=Path, help="results folders (each with results.json), shortest budget first")
    parser.add_argument("--methods", required=True, help="comma-separated methods to draw")
    parser.add_argument("--baseline", default="sgd-momentum", help="the unit of cost: one run of this method in the first round")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    rounds = [json.loads((folder / "results.json").read_text()) for folder in args.rounds]
    base = [r["gradient_evaluations"] for r in rounds[0]["runs"] if r["method"] == args.baseline]
    if not base:
        raise SystemExit(f"budget_plot: no {args.baseline} run in {args.rounds[0]} to measure the cost against")
    unit = statistics.mean(base)
    per_round = [points(r, methods) for r in rounds]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10").colors  # one colour per drawn method (the registry's styles repeat within a few)
    markers = "os^D"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for m in methods:
        for ax, which in zip(axes, (1, 2)):
            xs, ys = [], []
            for i, (rnd, pts) in enumerate(zip(rounds, per_round)):
                if m not in pts:
                    continue
                x = pts[m][0] / unit
                values = [v for v in pts[m][which] if v is not None]
                y = statistics.mean(values)
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                ax.errorbar([x], [y], yerr=[sd], color=colors[methods.index(m) % 10], marker=markers[i % 4], capsize=3,
                            label=m if not xs else None)
                xs.append(x)
                ys.append(y)
            ax.plot(xs, ys, color=colors[methods.index(m) % 10], alpha=0.5)
    axes[0].set_ylabel("test NLL (posterior average where the method has one)")
    axes[1].set_ylabel("test Brier score")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"gradient evaluations (x one {args.baseline} run of {rounds[0]['settings']['epochs']} epochs)")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7)
    budgets = ", ".join(f"{markers[i % 4]!r} {r['settings']['epochs']}" for i, r in enumerate(rounds))
    fig.suptitle(f"{rounds[0]['task']}: the posterior round's budgets (marker: epochs per member or chain: {budgets}); "
                 "mean ± sd over seeds", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
