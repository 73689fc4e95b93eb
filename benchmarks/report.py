"""Tables (markdown) and plots (PNG) from saved ``results.json`` files."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .methods import METHODS

BASELINE = "sgd-momentum"


def time_baseline(results: Dict[str, Any]) -> Optional[str]:
    """The method times are compared with: sgd-momentum, else adamw (the transformer task's
    baseline), or, where neither has a timed epoch (diverged in the first), the first method in
    the usual order that has one."""
    timed = {run["method"] for run in results["runs"] if run["epochs"]}
    for baseline in (BASELINE, "adamw"):
        if baseline in timed:
            return baseline
    ordered = _order(timed)
    return ordered[0] if ordered else None


def _mean_std(values: List[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return _number(values[0])
    return f"{_number(statistics.mean(values))} ± {_number(statistics.stdev(values))}"


def _number(x: float) -> str:
    # an exploded loss (1e23) in fixed point would be a 24-digit cell
    return f"{x:.4f}" if abs(x) < 1e5 else f"{x:.2e}"


def _final(run: Dict[str, Any], key: str) -> Optional[float]:
    for row in reversed(run["epochs"]):
        if key in row:
            return row[key]
    return None


def _best(run: Dict[str, Any], key: str, higher: bool) -> Optional[float]:
    """``key`` at the best evaluated epoch: the epoch with the best validation metric where the task
    has a validation split (``val_*`` next to ``test_*``), else the best value of ``key`` itself."""
    chooser = "val_" + key.split("_", 1)[1]
    rows = [row for row in run["epochs"] if key in row]
    if rows and all(chooser in row for row in rows):
        pick = (max if higher else min)(rows, key=lambda row: row[chooser])
        return pick[key]
    values = [row[key] for row in rows]
    return (max if higher else min)(values) if values else None


def _has_validation(results: Dict[str, Any]) -> bool:
    return any(f"val_{results['metric']}" in row for run in results["runs"] for row in run["epochs"])


def _order(methods) -> List[str]:
    known = [m for m in METHODS if m in methods]
    return known + sorted(m for m in methods if m not in METHODS)


def summary_rows(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    metric = results["metric"]
    key, higher = f"test_{metric}", metric == "accuracy"
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for run in results["runs"]:
        by_method.setdefault(run["method"], []).append(run)
    sec = {m: statistics.mean(r["seconds"] for run in runs for r in run["epochs"]) for m, runs in by_method.items() if any(run["epochs"] for run in runs)}
    base = time_baseline(results)
    rows = []
    for m in _order(by_method):
        runs = sorted(by_method[m], key=lambda r: r["seed"])
        violations = [r["max_violation"] for r in runs if r.get("max_violation") is not None]
        rows.append(
            {
                "method": m,
                "seeds": len(runs),
                "final": _mean_std([_final(r, key) for r in runs]),
                "best": _mean_std([_best(r, key, higher) for r in runs]),
                "test_loss": _mean_std([_final(r, "test_loss") for r in runs]),
                "train_loss": _mean_std([_final(r, "train_loss") for r in runs]),
                "seconds": f"{sec[m]:.2f}" if m in sec else "–",
                "ratio": f"{sec[m] / sec[base]:.2f}x" if m in sec and base in sec else "–",
                "violation": f"{max(violations):.1e}" if violations else "–",
                "at_wall": _mean_std([r.get("at_wall") for r in runs]),
                "ece": _mean_std([_final(r, "test_ece") for r in runs]),
                "post_acc": _mean_std([_final(r, "posterior_accuracy") for r in runs]),
                "post_nll": _mean_std([_final(r, "posterior_nll") for r in runs]),
                "post_ece": _mean_std([_final(r, "posterior_ece") for r in runs]),
                "post_bpc": _mean_std([_final(r, "posterior_bpc") for r in runs]),
                "status": _status(runs),
                **_chain_columns(runs),
                "binarised": _mean_std([_final(r, "test_binarised_accuracy") for r in runs]),
                "sampled": _mean_std([_final(r, "test_sampled_accuracy") for r in runs]),
                "sampled_sd": _mean_std([_final(r, "test_sampled_accuracy_sd") for r in runs]),
            }
        )
    return rows


def _chain_columns(runs: List[Dict[str, Any]]) -> Dict[str, str]:
    """ESS and split R-hat (ArviZ) over the seeds as chains, where 2 or more seeds recorded a chain
    trace: of the test log-likelihood, and the worst over the weights' random projections."""
    traces = [r["chain_trace"] for r in runs if r.get("chain_trace") and r["status"] == "done"]
    empty = {"ess": "–", "rhat": "–", "proj_rhat": "–"}
    if len(traces) < 2:
        return empty
    try:
        from constrained_sgld import chain_diagnostics

        diag = chain_diagnostics(traces)
    except ImportError:
        return {"ess": "(needs arviz)", "rhat": "(needs arviz)", "proj_rhat": "(needs arviz)"}
    out = dict(empty)
    if "test_loglik" in diag:
        d = diag["test_loglik"]
        out["ess"] = f"{d['ess']:.0f} of {d['chains'] * d['draws']}"
        out["rhat"] = f"{d['rhat']:.2f}"
    projections = [d["rhat"] for name, d in diag.items() if name.startswith("projection_")]
    if projections:
        out["proj_rhat"] = f"{max(projections):.2f}"
    return out


def _has_binary(rows: List[Dict[str, Any]]) -> bool:
    return any(r.get("binarised", "–") != "–" for r in rows)


def _has_chains(rows: List[Dict[str, Any]]) -> bool:
    return any(r.get("rhat", "–") != "–" for r in rows)


def _status(runs: List[Dict[str, Any]]) -> str:
    """``done``, or each other status with how many of the seeds ended that way."""
    others = [r["status"] for r in runs if r["status"] != "done"]
    if not others:
        return "done"
    if len(others) == len(runs) and len(set(others)) == 1:
        return others[0] if len(runs) == 1 else f"{others[0]} (every seed)"
    return "; ".join(f"{others.count(st)} of {len(runs)} seeds {st}" for st in sorted(set(others)))


def _has_posterior(rows: List[Dict[str, Any]]) -> bool:
    return any(r["post_acc"] != "–" or r["post_bpc"] != "–" for r in rows)


def _has_ece(metric: str, rows: List[Dict[str, Any]]) -> bool:
    """Classification tasks always show the test ECE; a language model where it recorded one (the
    next-character ECE)."""
    return metric == "accuracy" or any(r["ece"] != "–" for r in rows)


def markdown_table(results: Dict[str, Any]) -> str:
    metric = results["metric"]
    name = "accuracy" if metric == "accuracy" else "bits/char"
    rows = summary_rows(results)
    extra_head, extra_rule = "", ""
    if _has_ece(metric, rows):
        extra_head, extra_rule = " final test ECE |", "---|"
    if _has_posterior(rows) and metric == "accuracy":
        extra_head += " posterior accuracy | posterior NLL | posterior ECE |"
        extra_rule += "---|---|---|"
    elif _has_posterior(rows):
        extra_head += " posterior bits/char | posterior ECE |"
        extra_rule += "---|---|"
    if _has_chains(rows):
        extra_head += " ESS (test log-lik) | R-hat (test log-lik) | worst R-hat (weight projections) |"
        extra_rule += "---|---|---|"
    if _has_binary(rows):
        extra_head += " sign-binarised test accuracy | sampled binary test accuracy | sd over draws |"
        extra_rule += "---|---|---|"
    walls = any(r["at_wall"] != "–" for r in rows)
    if walls:
        extra_head += " on the wall at the end |"
        extra_rule += "---|"
    lines = [
        f"| method | seeds | final test {name} | best test {name} | final test loss | final train loss |{extra_head} s/epoch | time vs {time_baseline(results)} | max violation | status |",
        f"|---|---|---|---|---|---|{extra_rule}---|---|---|---|",
    ]
    for r in rows:
        extra = f" {r['ece']} |" if _has_ece(metric, rows) else ""
        if _has_posterior(rows) and metric == "accuracy":
            extra += f" {r['post_acc']} | {r['post_nll']} | {r['post_ece']} |"
        elif _has_posterior(rows):
            extra += f" {r['post_bpc']} | {r['post_ece']} |"
        if _has_chains(rows):
            extra += f" {r['ess']} | {r['rhat']} | {r['proj_rhat']} |"
        if _has_binary(rows):
            extra += f" {r['binarised']} | {r['sampled']} | {r['sampled_sd']} |"
        if walls:
            extra += f" {r['at_wall']} |"
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['final']} | {r['best']} | {r['test_loss']} | {r['train_loss']} |{extra} {r['seconds']} | {r['ratio']} | {r['violation']} | {r['status']} |"
        )
    return "\n".join(lines)


UNCERTAINTY_COLUMNS = (  # (results key without its prefix, column head)
    ("accuracy", "accuracy"),
    ("nll", "NLL"),
    ("ece", "ECE"),
    ("brier", "Brier"),
    ("nll_calibrated", "NLL, temperature-scaled"),
    ("ood_auroc", "OOD AUROC (max prob)"),
    ("ood_fpr95", "OOD FPR95 (max prob)"),
    ("ood_auroc_entropy", "OOD AUROC (entropy)"),
)
SHIFT_ANGLES = ("30", "60")  # the rotated test sets shown in the table (rotation.png has them all)


def uncertainty_table(results: Dict[str, Any], methods: Optional[Sequence[str]] = None) -> Optional[str]:
    """The final epoch's uncertainty columns (:mod:`benchmarks.uncertainty`), one row per method and
    one more per method with a posterior average (``methods``: those, in that order); None where no
    run recorded them."""
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for run in results["runs"]:
        by_method.setdefault(run["method"], []).append(run)
    rows = []
    for m in methods or _order(by_method):
        runs = by_method.get(m, [])
        for prefix, label in (("test", m), ("posterior", f"{m} (posterior)")):
            if not any(f"{prefix}_brier" in (r["epochs"][-1] if r["epochs"] else {}) for r in runs):
                continue  # no uncertainty columns recorded for this prediction
            names = {"nll": "test_loss" if prefix == "test" else "posterior_nll"}
            cells = [_mean_std([_final(r, names.get(k, f"{prefix}_{k}")) for r in runs]) for k, _ in UNCERTAINTY_COLUMNS]
            cells += [_mean_std([(_final(r, f"{prefix}_rotated") or {}).get(a, {}).get("accuracy") for r in runs]) for a in SHIFT_ANGLES]
            if any(c != "–" for c in cells):
                rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if not rows:
        return None
    head = [h for _, h in UNCERTAINTY_COLUMNS] + [f"accuracy rotated {a}°" for a in SHIFT_ANGLES]
    return "\n".join([f"| method | {' | '.join(head)} |", "|---|" + "---|" * len(head), *rows])


def _last(run: Dict[str, Any]) -> Dict[str, Any]:
    return run["epochs"][-1] if run["epochs"] else {}


def _reported_prefix(runs: List[Dict[str, Any]]) -> str:
    """``posterior`` where the method's runs predict with a posterior average, else ``test``."""
    return "posterior" if any("posterior_nll" in _last(r) for r in runs) else "test"


def _models_per_input(run: Dict[str, Any]) -> Optional[int]:
    """Forward passes of the network per input at prediction: the posterior's samples (times a
    multi-chain run's chains, or the members of ensemble-started chains), an ensemble's members,
    else one."""
    hp, last = run.get("hyperparameters", {}), _last(run)
    if "posterior_samples" in last:
        return int(last["posterior_samples"]) * int(hp.get("chains", hp.get("members", 1)))
    return int(hp.get("members", METHODS[run["method"]].members if run["method"] in METHODS else 1))


def cost_ratios(results: Dict[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """Per method, its training cost against one run of the time baseline (sgd-momentum): gradient
    evaluations (every model's, every step) and the training time (the epochs' clocks summed; the
    posterior's own evaluation, ``posterior_seconds``, is not training)."""
    base = time_baseline(results)
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for run in results["runs"]:
        by_method.setdefault(run["method"], []).append(run)

    def mean(runs, f):
        values = [f(r) for r in runs if r["epochs"]]
        values = [v for v in values if v is not None]
        return statistics.mean(values) if values else None

    def grads(r):
        return r.get("gradient_evaluations")

    def seconds(r):
        return sum(e["seconds"] for e in r["epochs"])

    g0, t0 = mean(by_method.get(base, []), grads), mean(by_method.get(base, []), seconds)
    out = {}
    for m, runs in by_method.items():
        g, t = mean(runs, grads), mean(runs, seconds)
        out[m] = {"gradients": g / g0 if g and g0 else None, "time": t / t0 if t and t0 else None}
    return out


def posterior_table(results: Dict[str, Any], methods: Optional[List[str]] = None) -> Optional[str]:
    """One row per method, the prediction it reports (its posterior average where it has one): the
    in-distribution scores, OOD detection, the NLL under the synthetic corruptions (mean of the
    kinds, per severity), and the cost: gradient evaluations and training time against one
    sgd-momentum run, forward passes per input at prediction. ``methods``: those rows, in that
    order (default: every method). None where no run has corruptions."""
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for run in results["runs"]:
        by_method.setdefault(run["method"], []).append(run)
    if not any("test_corrupted" in _last(r) for r in results["runs"]):
        return None
    costs = cost_ratios(results)
    base = time_baseline(results)
    severities = sorted({sev for r in results["runs"] for kinds in (_last(r).get("test_corrupted") or {}).values() for sev in kinds})
    rows = []
    for m in (methods if methods is not None else _order(by_method)):
        if m not in by_method:
            raise ValueError(f"posterior_table: no run of method {m!r} (methods recorded: {', '.join(sorted(by_method))})")
        runs = [r for r in by_method[m] if r["status"] == "done"]
        if not runs:
            continue
        prefix = _reported_prefix(runs)
        names = {"nll": "test_loss" if prefix == "test" else "posterior_nll"}
        cells = [_mean_std([_final(r, names.get(k, f"{prefix}_{k}")) for r in runs]) for k in ("accuracy", "nll", "brier", "ece", "nll_calibrated", "ood_auroc_entropy")]
        for sev in severities:
            cells.append(_mean_std([
                statistics.mean(kinds[sev]["nll"] for kinds in (_last(r).get(f"{prefix}_corrupted") or {}).values()) if _last(r).get(f"{prefix}_corrupted") else None
                for r in runs
            ]))
        c = costs.get(m, {})
        cells += [f"{c['gradients']:.1f}x" if c.get("gradients") else "–", f"{c['time']:.1f}x" if c.get("time") else "–",
                  str(_models_per_input(runs[0]) or "–")]
        rows.append(f"| {m} | {'posterior' if prefix == 'posterior' else 'final model'} | " + " | ".join(cells) + " |")
    head = ["accuracy", "NLL", "Brier", "ECE", "NLL, temperature-scaled", "OOD AUROC (entropy)"]
    head += [f"NLL corrupted, severity {sev}" for sev in severities]
    head += [f"gradient evaluations (x {base})", f"training time (x {base})", "forward passes per input"]
    return "\n".join([f"| method | prediction | {' | '.join(head)} |", "|---|---|" + "---|" * len(head), *rows])


def plot_nll_against_cost(results: Dict[str, Any], path: Path) -> bool:
    """Test NLL of each method's reported prediction (its posterior average where it has one)
    against its training cost relative to one sgd-momentum run: gradient evaluations (left) and
    training time (right); mean ± sd over seeds. Drawn where runs recorded a posterior and their
    gradient evaluations; returns whether it drew."""
    if results["metric"] != "accuracy" or not any("posterior_nll" in _last(r) for r in results["runs"]):
        return False
    if not all("gradient_evaluations" in r for r in results["runs"]):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for run in results["runs"]:
        if run["status"] == "done":
            by_method.setdefault(run["method"], []).append(run)
    costs = cost_ratios(results)
    styles = _styles(list(by_method))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for m in _order(by_method):
        runs = by_method[m]
        key = "posterior_nll" if _reported_prefix(runs) == "posterior" else "test_loss"
        values = [v for v in (_final(r, key) for r in runs) if v is not None]
        if not values:
            continue
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        for ax, which in zip(axes, ("gradients", "time")):
            x = costs[m][which]
            if x is None:
                continue
            ax.errorbar([x], [statistics.mean(values)], yerr=[sd], color=styles[m]["color"], marker="o", capsize=3, label=m)
            ax.annotate(m, (x, statistics.mean(values)), textcoords="offset points", xytext=(4, 3), fontsize=7)
    base = time_baseline(results)
    axes[0].set_xlabel(f"gradient evaluations (x one {base} run)")
    axes[1].set_xlabel(f"training time (x one {base} run; the runs shared two cores)")
    axes[0].set_ylabel("test NLL (posterior average where the method has one)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3, which="both")
    n_seeds = len({r["seed"] for r in results["runs"]})
    fig.suptitle(f"{results['task']} ({results['preset']}): test NLL against training cost, mean ± sd over {n_seeds} seed(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def task_markdown(results: Dict[str, Any], heading: str = "#") -> str:
    settings = ", ".join(f"{k}={v}" for k, v in results["settings"].items())
    parts = [
        f"{heading} {results['task']} ({results['preset']})",
        "",
        f"{results['description']}. Data: {results['data']}.",
        "",
        f"Settings: {settings}. Device: {results.get('device', '?')}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
        + ".",
        "",
        f"Command: `{results.get('command') or 'python -m benchmarks run --task ' + results['task'] + ' --preset ' + results['preset']}`",
        "",
        "Mean ± standard deviation over seeds; *final* is the last evaluated epoch, *best* "
        + ("the test value at the epoch with the best validation value (the validation split is carved from the training data). "
           if _has_validation(results) else "the best evaluated epoch (an optimistic number: this task has no validation split). ")
        + "Time is the training part of an epoch. "
        "ECE: expected calibration error (15 bins). *Posterior*: the prediction averaged over 20 snapshots taken "
        "in the second half of a tempered run (SampleCollector), against the single final model.",
        "",
        markdown_table(results),
        "",
    ]
    table = uncertainty_table(results)
    if table is not None:
        parts += [
            "Uncertainty at the final epoch (mean ± sd over seeds): the Brier score; the NLL after temperature scaling "
            "(the temperature fitted on the validation split); out-of-distribution detection with real MNIST digits as "
            "the outside (AUROC and FPR at 95% TPR, scored by the max probability or the predictive entropy); and the "
            "accuracy on the test set rotated by 30 and 60 degrees (every angle in rotation.png).",
            "",
            table,
            "",
        ]
    table = posterior_table(results)
    if table is not None:
        parts += [
            "Each method's reported prediction (its posterior average where it has one) with its cost (mean ± sd over seeds): "
            "the NLL on the test images under Gaussian noise, Gaussian blur and reduced contrast (mean over the three kinds, "
            "per severity; `benchmarks.uncertainty.CORRUPTIONS`), OOD AUROC of the predictive entropy, the gradient "
            "evaluations and training time against one run of the baseline, and the network's forward passes per input "
            "at prediction (cost.png draws the NLL against the cost).",
            "",
            table,
            "",
        ]
    if "baseline" in results:
        parts += [f"Memoryless baseline (cross-entropy per step of outputting blanks, then guessing): {results['baseline']:.4f}.", ""]
    parts += [
        "Hyper-parameters (as run, seed 0 or the first seed):",
        "",
    ]
    seen = set()
    for run in sorted(results["runs"], key=lambda r: r["seed"]):
        if run["method"] not in seen:
            seen.add(run["method"])
            parts.append(f"- `{run['method']}`: {json.dumps(run['hyperparameters'], sort_keys=True)}")
    return "\n".join(parts) + "\n"


def plot_curves(results: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["metric"]
    key = f"test_{metric}"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for run in results["runs"]:
        by_method.setdefault(run["method"], []).append(run)
    styles = _styles(list(by_method))
    for m in _order(by_method):
        color = styles[m]["color"]
        for ax, k in ((axes[0], key), (axes[1], "train_loss")):
            curves: Dict[int, List[float]] = {}
            for run in by_method[m]:
                for row in run["epochs"]:
                    if k in row and math.isfinite(row[k]):
                        curves.setdefault(row["epoch"], []).append(row[k])
            if not curves:
                continue
            epochs = sorted(curves)
            mean = [statistics.mean(curves[e]) for e in epochs]
            ax.plot(epochs, mean, label=m, lw=1.4, marker="." if len(epochs) < 15 else None, **styles[m])
            if any(len(curves[e]) > 1 for e in epochs):
                sd = [statistics.stdev(curves[e]) if len(curves[e]) > 1 else 0.0 for e in epochs]
                low = [a - b for a, b in zip(mean, sd)]
                if k == "train_loss":  # log axis: keep the band above zero
                    low = [max(lo, a / 10) for lo, a in zip(low, mean)]
                ax.fill_between(epochs, low, [a + b for a, b in zip(mean, sd)], color=color, alpha=0.15)
    if "baseline" in results:
        axes[1].axhline(results["baseline"], color="k", ls=":", lw=1, label="memoryless baseline")
    axes[0].set_ylabel("test accuracy" if metric == "accuracy" else "test bits per character")
    axes[1].set_ylabel("training loss")
    axes[1].set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside the axes, off the data
    n_seeds = len({r["seed"] for r in results["runs"]})
    fig.suptitle(f"{results['task']} ({results['preset']}, " + (f"mean ± sd over {n_seeds} seeds)" if n_seeds > 1 else "one seed)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_against_time(results: Dict[str, Any], path: Path, seconds_per_step: Optional[Dict[str, float]] = None) -> bool:
    """The validation metric (the test one where a task has no validation split) against the
    training time, per method (mean over seeds): what a method buys per second, not per epoch.
    The time is the runs' own clock, or, with ``seconds_per_step`` (method -> an iteration's time
    measured alone), the steps taken times that (a round whose runs shared the cores: their clocks
    do not compare), on a log axis. Drawn for the bits-per-character tasks; returns whether it drew."""
    if results["metric"] != "bpc":
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "val_bpc" if _has_validation(results) else "test_bpc"
    steps = results["settings"].get("steps_per_epoch")
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for run in results["runs"]:
        if seconds_per_step is None or run["method"] in seconds_per_step:
            by_method.setdefault(run["method"], []).append(run)
    styles = _styles(list(by_method))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drew = False
    for m in _order(by_method):
        points: Dict[int, List[Tuple[float, float]]] = {}
        for run in by_method[m]:
            elapsed = 0.0
            for row in run["epochs"]:
                elapsed = row["epoch"] * steps * seconds_per_step[m] if seconds_per_step else elapsed + row["seconds"]
                if key in row and math.isfinite(row[key]):
                    points.setdefault(row["epoch"], []).append((elapsed, row[key]))
        if not points:
            continue
        epochs = sorted(points)
        ax.plot([statistics.mean(t for t, _ in points[e]) for e in epochs], [statistics.mean(v for _, v in points[e]) for e in epochs],
                label=m, lw=1.4, marker=".", **styles[m])
        drew = True
    if not drew:
        plt.close(fig)
        return False
    if seconds_per_step:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # the minor labels of a log axis overlap
        low, high = ax.get_xlim()
        ax.set_xticks([t for t in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if low <= t <= high])
        ax.set_xlabel("training time alone (s, log): steps x the measured iteration time")
    else:
        ax.set_xlabel("training time (s, as run)")
    ax.set_ylabel(("validation" if key.startswith("val") else "test") + " bits per character")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    n_seeds = len({r["seed"] for r in results["runs"]})
    alone = " alone" if seconds_per_step else ""
    ax.set_title(f"{results['task']} ({results['preset']}): against the time{alone}, mean over {n_seeds} seed(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_rotation(results: Dict[str, Any], path: Path) -> bool:
    """Accuracy and NLL against the rotation of the test set (0: the test set itself), one line per
    method and, dashed, per posterior average (mean over seeds); returns whether it drew."""
    curves: Dict[str, Dict[str, List[Dict[str, float]]]] = {}
    for run in results["runs"]:
        last = next((r for r in reversed(run["epochs"]) if "test_rotated" in r), None)
        if last is None:
            continue
        for prefix, label in (("test", run["method"]), ("posterior", run["method"] + " (posterior)")):
            if f"{prefix}_rotated" in last:
                base = {"accuracy": last[f"{prefix}_accuracy"], "nll": last["test_loss" if prefix == "test" else "posterior_nll"]}
                curves.setdefault(label, {}).setdefault("0", []).append(base)
                for angle, scores in last[f"{prefix}_rotated"].items():
                    curves[label].setdefault(angle, []).append(scores)
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = sorted({label.replace(" (posterior)", "") for label in curves})
    styles = _styles(methods)
    for label in sorted(curves):
        method = label.replace(" (posterior)", "")
        angles = sorted(curves[label], key=float)
        style = {k: v for k, v in styles[method].items() if k not in ("ls", "linestyle")}
        style["linestyle"] = "--" if label.endswith("(posterior)") else "-"  # the posterior dashed
        for ax, key in zip(axes, ("accuracy", "nll")):
            ax.plot([float(a) for a in angles], [statistics.mean(s[key] for s in curves[label][a]) for a in angles], marker="o", label=label, **style)
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel("test NLL")
    for ax in axes:
        ax.set_xlabel("rotation of the test images (degrees)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"{results['task']} ({results['preset']}): shift by rotation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


STEP_LOSS_WINDOW = 25  # steps per point of the per-step curve (its mean): the raw steps are noise


def plot_step_losses(results: Dict[str, Any], path: Path) -> bool:
    """Training loss against the training step (the mean over ``STEP_LOSS_WINDOW`` steps, and over
    seeds), with the task's memoryless baseline where it has one: the curve the copy task's papers
    show. Only for tasks that record ``step_loss``; returns whether it drew."""
    by_method: Dict[str, List[List[float]]] = {}
    for run in results["runs"]:
        steps = [x for row in run["epochs"] for x in row.get("step_loss", [])]
        if steps:
            by_method.setdefault(run["method"], []).append(steps)
    if not by_method:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = _styles(list(by_method))
    # an exploded run (loss 1e23) would squash every other curve: the axis stops at 1e3 baselines
    cap = 1e3 * results["baseline"] if "baseline" in results else math.inf
    for m in _order(by_method):
        n = min(len(s) for s in by_method[m])  # a diverged seed ends early: the common part
        w = max(1, min(STEP_LOSS_WINDOW, n // 10))  # short runs: at least 10 points
        means = [statistics.mean(statistics.mean(s[i : i + w]) for s in by_method[m]) for i in range(0, n - w + 1, w)]
        label = m if max(means) <= cap else f"{m} (above the axis: up to {max(means):.1e})"
        ax.plot([i + w for i in range(0, n - w + 1, w)], means, label=label, lw=1.2, **styles[m])
    if "baseline" in results:
        ax.axhline(results["baseline"], color="k", ls=":", lw=1, label="memoryless baseline")
    ax.set_yscale("log")
    if math.isfinite(cap) and ax.get_ylim()[1] > cap:
        ax.set_ylim(top=cap)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss (mean of up to {STEP_LOSS_WINDOW} steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    n_seeds = len({r["seed"] for r in results["runs"]})
    ax.set_title(f"{results['task']} ({results['preset']}, T = {results['settings'].get('T', '?')}, " + (f"mean over {n_seeds} seeds)" if n_seeds > 1 else "one seed)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_gradient_profiles(results: Dict[str, Any], path: Path) -> bool:
    """Gradient norms through time or depth (``gradient_profile`` of the runs), at the start and at
    the end of training: one line per method (geometric mean over seeds), log scale. Vanishing
    gradients fall off towards the early steps or layers; exploding ones rise. False if no run has one."""
    runs: Dict[str, List[Dict[str, Any]]] = {}
    for run in results["runs"]:
        if "gradient_profile" in run:
            runs.setdefault(run["method"], []).append(run["gradient_profile"])
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    styles = _styles(list(runs))
    for m in _order(runs):
        profiles = runs[m]
        for ax, when in zip(axes, ("start", "end")):
            logs = [[math.log10(max(v, 1e-300)) for v in p[when]] for p in profiles]
            mean = [10 ** statistics.mean(col) for col in zip(*logs)]
            ax.plot(profiles[0]["x"], mean, label=m, lw=1.3, **styles[m])
    first = next(iter(runs.values()))[0]
    for ax, when in zip(axes, ("at initialisation", "at the end of training")):
        ax.set_yscale("log")
        ax.set_xlabel(first["axis"])
        ax.set_title(when, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(first["quantity"])
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    n_seeds = len({r["seed"] for r in results["runs"]})
    fig.suptitle(f"{results['task']} ({results['preset']}): {first['quantity']} against {first['axis']}, " + (f"geometric mean over {n_seeds} seeds" if n_seeds > 1 else "one seed"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _styles(methods: List[str]) -> Dict[str, Dict[str, Any]]:
    """A distinct colour and line style per method (tab10's colours, then again dashed, dotted,
    dash-dotted, dash-dot-dotted, long-dash-dotted, then dash patterns of growing length), the same
    for a method in every plot however many methods the registry holds."""
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10").colors
    named = ["-", "--", ":", "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2, 1, 2))]

    def dash(k: int) -> Any:
        # past the named styles, a long dash of length 2 + k and two dots: distinct for every k
        return named[k] if k < len(named) else (0, (2 + k, 2, 1, 2, 1, 2))

    # by place in the global method list, so that a method looks the same in every plot
    everyone = list(METHODS) + sorted(m for m in methods if m not in METHODS)
    return {
        m: {"color": colors[i % len(colors)], "linestyle": dash(i // len(colors))}
        for i, m in enumerate(everyone)
        if m in methods
    }


def plot_boundaries(results: Dict[str, Any], path: Path) -> None:
    """Each method's decision boundary (first seed) over the two-spirals plane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .tasks.spirals import two_spirals

    runs = {}
    for run in sorted(results["runs"], key=lambda r: r["seed"]):
        if "snapshot" in run and run["method"] not in runs:
            runs[run["method"]] = run
    if not runs:
        return
    names = _order(runs)
    cols = min(5, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    g = torch.Generator().manual_seed(1234)  # the task's training data
    x, y = two_spirals(results["settings"]["train_per_class"], results["task_hparams"]["noise"], g)
    for ax, name in zip(axes.flat, names):
        snap = runs[name]["snapshot"]
        lim = snap["lim"]
        if "prob1_percent_rows" in snap:
            snap = dict(snap, prob1=[[int(v) / 100 for v in row.split()] for row in snap["prob1_percent_rows"]])
        ax.imshow(snap["prob1"], extent=(-lim, lim, -lim, lim), origin="lower", cmap="RdBu", vmin=0, vmax=1, alpha=0.6)
        ax.contour(snap["prob1"], levels=[0.5], extent=(-lim, lim, -lim, lim), origin="lower", colors="k", linewidths=0.8)
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu", s=5, edgecolors="k", linewidths=0.2)
        acc = _final(runs[name], "test_accuracy")
        ax.set_title(f"{name}\ntest acc {acc:.3f}" if acc is not None else name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cmap = plt.get_cmap("RdBu")
    key = [
        Patch(color=cmap(0.0), alpha=0.6, label="predicted class 0"),
        Patch(color=cmap(1.0), alpha=0.6, label="predicted class 1"),
        Line2D([], [], color="k", lw=0.8, label="decision boundary (p = 0.5)"),
        Line2D([], [], ls="", marker="o", mfc=cmap(0.0), mec="k", label="training point, class 0"),
        Line2D([], [], ls="", marker="o", mfc=cmap(1.0), mec="k", label="training point, class 1"),
    ]
    fig.legend(handles=key, loc="lower center", ncol=5, fontsize=8, frameon=False)
    n_seeds = len({r["seed"] for r in results["runs"]})
    fig.suptitle(f"{results['task']} ({results['preset']}): decision boundaries after training, first seed of {n_seeds}")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_task_report(results: Dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(task_markdown(results))
    plot_curves(results, folder / "curves.png")
    if results["task"] == "two-spirals":
        plot_boundaries(results, folder / "boundaries.png")
    plot_gradient_profiles(results, folder / "gradients.png")
    plot_step_losses(results, folder / "steps.png")
    plot_rotation(results, folder / "rotation.png")
    plot_against_time(results, folder / "time.png")
    plot_nll_against_cost(results, folder / "cost.png")


def rebuild(out: Path) -> List[Path]:
    """Rewrite every task's results.md and plots under ``out``, and ``out/report.md`` combining them."""
    found = sorted(out.glob("*/results.json"))
    sections = []
    for path in found:
        results = json.loads(path.read_text())
        write_task_report(results, path.parent)
        sections.append(task_markdown(results, heading="##") + f"\n![curves]({path.parent.name}/curves.png)\n")
    if found:
        (out / "report.md").write_text("# Benchmark results\n\n" + "\n".join(sections))
    return found


def compact_table(results: Dict[str, Any]) -> str:
    """The short table README shows: final test metric, loss and ECE; the posterior-averaged
    accuracy, NLL and ECE where tempered runs recorded them; time ratio; largest violation."""
    rows = summary_rows(results)
    accuracy = results["metric"] == "accuracy"
    ece = accuracy and any(r["ece"] != "–" for r in rows)  # copy's recall accuracy has no calibration
    name = "test accuracy" if accuracy else "test bits/char"
    posterior = _has_posterior(rows)
    validation = _has_validation(results)
    head = f"| method | {name} (final) |"
    if validation:
        head += f" {name} (best validation epoch) |"
    head += " test loss (final) |"
    if ece:
        head += " test ECE (final) |"
    if posterior:
        head += " posterior accuracy | posterior NLL | posterior ECE |"
    chains = _has_chains(rows)
    if chains:
        head += " ESS (test log-lik) | R-hat (test log-lik) | worst R-hat (projections) |"
    binary = _has_binary(rows)
    if binary:
        head += " sign-binarised test accuracy | sampled binary test accuracy (sd over draws) |"
    head += f" time/epoch vs {time_baseline(results)} | max violation |"
    walls = any(r["at_wall"] != "–" for r in rows)
    if walls:
        head += " on the wall at the end |"
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in rows:
        status = "" if r["status"] == "done" else f" ({r['status']})"
        line = f"| {r['method']}{status} | {r['final']} |" + (f" {r['best']} |" if validation else "") + f" {r['test_loss']} |"
        if ece:
            line += f" {r['ece']} |"
        if posterior:
            line += f" {r['post_acc']} | {r['post_nll']} | {r['post_ece']} |"
        if chains:
            line += f" {r['ess']} | {r['rhat']} | {r['proj_rhat']} |"
        if binary:
            line += f" {r['binarised']} | {r['sampled']} ({r['sampled_sd']}) |"
        lines.append(line + f" {r['ratio']} | {r['violation']} |" + (f" {r['at_wall']} |" if walls else ""))
    return "\n".join(lines)
