"""The README's uncertainty figure: the reliability diagram and the rotation curves (accuracy and
NLL against the angle) of chosen predictions, pooled over seeds.

    python scripts/uncertainty_figure.py docs/results/uncertainty/fmnist-mlp \\
        --show c-cola-ud:posterior,ensemble-sgd-momentum:test --out docs/results/uncertainty/figure.png

``METHOD:test`` is the trained model's prediction, ``METHOD:posterior`` its posterior average
(SampleCollector snapshots, or SWAG's draws). The reliability diagram pools the seeds' bins (counts
summed, accuracy and confidence weighted by count); the rotation curves are means over seeds, with
0 degrees the test set itself.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import _styles  # noqa: E402


def pooled_reliability(runs, prefix):
    count = acc = conf = None
    for run in runs:
        r = run["epochs"][-1][f"{prefix}_reliability"]
        c = r["count"]
        if count is None:
            count, acc, conf = [0.0] * len(c), [0.0] * len(c), [0.0] * len(c)
        for i, n in enumerate(c):
            if n:
                count[i] += n
                acc[i] += n * r["accuracy"][i]
                conf[i] += n * r["confidence"][i]
    return [(conf[i] / count[i], acc[i] / count[i], count[i]) for i in range(len(count)) if count[i]]


def rotation_curve(runs, prefix):
    angles = {"0": [(r["epochs"][-1][f"{prefix}_accuracy"], r["epochs"][-1]["test_loss" if prefix == "test" else "posterior_nll"]) for r in runs]}
    for run in runs:
        for a, sc in run["epochs"][-1][f"{prefix}_rotated"].items():
            angles.setdefault(a, []).append((sc["accuracy"], sc["nll"]))
    order = sorted(angles, key=float)
    return [float(a) for a in order], [statistics.mean(v[0] for v in angles[a]) for a in order], [statistics.mean(v[1] for v in angles[a]) for a in order]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a task's results folder (holding results.json)")
    parser.add_argument("--show", required=True, help="comma-separated METHOD:test or METHOD:posterior")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = json.loads((args.folder / "results.json").read_text())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shows = [s.split(":") for s in args.show.split(",")]
    styles = _styles([m for m, _ in shows])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    axes[0].plot([0, 1], [0, 1], color="k", ls=":", lw=1, label="calibrated")
    for method, prefix in shows:
        runs = [r for r in results["runs"] if r["method"] == method and r["status"] == "done"]
        if not runs:
            raise SystemExit(f"--show {method}:{prefix}: no finished run of {method} in {args.folder}")
        label = f"{method} ({'posterior' if prefix == 'posterior' else 'model'}, {len(runs)} seeds)"
        style = {k: v for k, v in styles[method].items() if k not in ("ls", "linestyle")}
        bins = pooled_reliability(runs, prefix)
        axes[0].plot([b[0] for b in bins], [b[1] for b in bins], marker="o", label=label, **style)
        angles, acc, nll = rotation_curve(runs, prefix)
        axes[1].plot(angles, acc, marker="o", label=label, **style)
        axes[2].plot(angles, nll, marker="o", label=label, **style)
    axes[0].set_xlabel("confidence (max probability), per bin")
    axes[0].set_ylabel("accuracy in the bin")
    axes[0].set_title("reliability (test set)")
    axes[1].set_ylabel("test accuracy")
    axes[2].set_ylabel("test NLL")
    for ax in axes[1:]:
        ax.set_xlabel("rotation of the test images (degrees)")
    axes[1].set_title("shift by rotation")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['task']} ({results['preset']})")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
