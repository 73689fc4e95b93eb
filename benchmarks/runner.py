"""Train every (method, seed) of a task, record per-epoch metrics, save after every finished run."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from .checkpoint import checkpoint_path, load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from .methods import METHODS, Method, largest_violation, wall_fraction
from .tasks import TASKS, Task


def versions() -> Dict[str, str]:
    import numpy

    import constrained_sgld

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__, "constrained_sgld": constrained_sgld.__version__}
    try:
        import geotorch

        out["geotorch"] = getattr(geotorch, "__version__", "?")
    except ImportError:
        pass
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one(
    task: Task,
    method: Method,
    seed: int,
    progress: bool = True,
    tensorboard: Optional[Path] = None,
    checkpoint: Optional[Path] = None,
    resume: bool = False,
) -> Dict[str, Any]:
    """One training run; returns its record (per-epoch metrics, hyper-parameters, status).
    With ``tensorboard``, every epoch's metrics and optimiser diagnostics are also written there,
    one run per ``<task>/<method>/seed<seed>`` folder. With ``checkpoint``, the run's state is saved
    there at every evaluation (:mod:`benchmarks.checkpoint`); with ``resume`` as well, a run that
    has a checkpoint there continues from it (the record counts the resumptions in ``resumed``)."""
    device = task.device
    torch.manual_seed(seed)
    members = method.models(task)
    if members > 1:
        from .ensemble import DeepEnsemble

        model = DeepEnsemble([task.build_model() for _ in range(members)]).to(device)  # independent inits
    else:
        model = (task.build_model(method.variant) if method.variant else task.build_model()).to(device)
    optimizer, hparams, constraints = method.build(model, task, seed)
    # after build: through any parametrisation it added; an ensemble has no one profile
    profile_start = task.gradient_profile(model) if members == 1 else None
    steps = task.steps_per_epoch()
    if method.cyclical:  # cSG-MCMC's schedule in place of the task's
        from constrained_sgld import CyclicalLR

        scheduler = CyclicalLR(optimizer, task.epochs * steps, cycles=int(task.hp["cycles"]), exploration=float(task.hp["exploration"]))
        hparams.update(cycles=scheduler.cycles, exploration=scheduler.exploration, samples_per_cycle=task.hp["samples_per_cycle"])
    elif method.sample_lr_key is not None:  # ensemble-started chains: optimise, then sample
        from constrained_sgld import OptimiseThenSample

        sample_epochs = int(task.hp["sample_epochs"])
        optimise_steps = (task.epochs - sample_epochs) * steps
        # the optimisation stage takes the task's schedule over its own length (a warm-up and cosine
        # decay to a converged MAP on the transformer); a task without one keeps the lr constant
        scheduler = OptimiseThenSample(
            optimizer, optimise_steps, sample_lr=float(task.hp[method.sample_lr_key]), lr_lambda=task.lr_factor(optimise_steps)
        )
        hparams.update(sample_epochs=sample_epochs, sample_lr=scheduler.sample_lrs[0], optimise_lr=scheduler.base_lrs[0])
    else:
        scheduler = task.scheduler(optimizer, steps)
    if members > 1:
        hparams["chains" if method.cyclical else "members"] = members
    clip = task.hp.get("clip")
    order = torch.Generator().manual_seed(seed)  # batch order: the same for every method at a given seed
    # a deep ensemble's members 1.. each have their own batch order (member 0 has the seed's)
    member_orders = [torch.Generator().manual_seed(10_000 * (seed + 1) + m) for m in range(1, members)]
    record: Dict[str, Any] = {"method": method.name, "seed": seed, "hyperparameters": hparams, "epochs": [], "status": "done"}
    if method.cyclical:
        record["hyperparameters"]["schedule"] = "cyclical cosine (CyclicalLR), T = 0 in each cycle's exploration stage"
    elif method.sample_lr_key is not None:
        shape = type(task).lr_factor.__doc__ if scheduler.lr_lambda is not None else "the optimiser's lr"
        record["hyperparameters"]["schedule"] = f"OptimiseThenSample: T = 0 with {shape}, then the temperature at sample_lr"
    elif scheduler is not None:
        own = type(task).lr_factor if type(task).lr_factor is not Task.lr_factor else type(task).scheduler
        record["hyperparameters"]["schedule"] = own.__doc__ or "task schedule"
    if clip:
        record["hyperparameters"]["grad_clip_norm"] = clip
    worst = 0.0 if constraints else None
    diagnostics = getattr(optimizer, "diagnostics", None)
    if diagnostics is not None:
        diagnostics()  # switch on the noise-norm record from the first step
    collector = _posterior_collector(task, model, optimizer, steps, method, seed, scheduler)
    # IVON draws the weights for each gradient from its posterior: forward and backward inside its block
    sampled = getattr(optimizer, "sampled_params", None)
    trace = _chain_trace(task, model, collector)
    first_epoch = 1
    saved = load_checkpoint(checkpoint, _configuration(task), method.name, seed) if checkpoint is not None and resume else None
    if saved is not None:
        # after building everything as a fresh run does: the same objects, then their saved states
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        order.set_state(saved["order"])
        for g, state in zip(member_orders, saved.get("member_orders", [])):
            g.set_state(state)
        if collector is not None:
            collector.load_state_dict(saved["collector"])
        if trace is not None:
            trace.load_state_dict(saved["trace"])
        record, worst, profile_start = saved["record"], saved["worst"], saved["profile_start"]
        record["resumed"] = record.get("resumed", 0) + 1
        restore_rng_states(saved["rng"], device)
        first_epoch = saved["epoch"] + 1
    bar = _progress(task, method, seed, progress, steps, done=(first_epoch - 1) * steps)
    writer = tensorboard_writer(tensorboard / task.name / method.name / f"seed{seed}") if tensorboard else None
    try:
        for epoch in range(first_epoch, task.epochs + 1):
            _sync(device)
            start = time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct, seen = torch.zeros((), dtype=torch.float64, device=device), 0
            tracing = 0.0  # seconds spent evaluating the chain trace: not training, so not in "seconds"
            step_losses = [] if task.record_step_loss else None
            if member_orders:
                from .ensemble import member_batches

                batches = member_batches(task, [order, *member_orders])
            else:
                batches = task.batches(order)
            for inputs, targets in batches:
                optimizer.zero_grad(set_to_none=True)
                with sampled(train=True) if sampled is not None else contextlib.nullcontext():
                    loss, right = task.loss(model, inputs, targets)
                    loss.backward()
                if clip:
                    clip_gradients(model, clip)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if collector is not None and collector.update() and trace is not None:
                    traced = time.perf_counter()
                    trace.record(test_loglik=task.test_log_likelihood(model))  # a host read: synchronised
                    tracing += time.perf_counter() - traced
                loss_sum += loss.detach().double() * len(targets)
                if step_losses is not None:
                    step_losses.append(loss.detach())
                correct += right
                seen += len(targets)
                if bar is not None:
                    bar.update(1)  # per step: a slow epoch still shows progress from the first second
            _sync(device)
            seconds = time.perf_counter() - start - tracing
            row = {"epoch": epoch, "seconds": seconds, "train_loss": loss_sum.item() / seen}
            if tracing:
                row["trace_seconds"] = tracing
            if step_losses:
                row["step_loss"] = torch.stack(step_losses).double().tolist()  # one host read per epoch
            if task.metric == "accuracy":
                row["train_accuracy"] = correct.item() / seen
            if not math.isfinite(row["train_loss"]):
                raise FloatingPointError(f"training loss is {row['train_loss']}")
            if worst is not None:
                violation = largest_violation(model, optimizer, constraints)
                worst = max(worst, violation)
                row["violation"] = violation
            if diagnostics is not None:
                row["diagnostics"] = [{k: v.item() for k, v in d.items()} for d in diagnostics()]
            if epoch % task.eval_every == 0 or epoch == task.epochs:
                row.update(task.evaluate(model))
            if epoch == task.epochs and hasattr(task, "evaluate_uncertainty"):
                row.update(task.evaluate_uncertainty(model, "test"))
            if epoch == task.epochs and collector is not None and len(collector):
                predicting = time.perf_counter()
                row.update(task.evaluate_posterior(collector))
                if hasattr(task, "evaluate_uncertainty"):  # a language model reports no OOD or rotations
                    row.update(task.evaluate_uncertainty(collector, "posterior"))
                row["posterior_seconds"] = time.perf_counter() - predicting  # the posterior's evaluation, every set
            record["epochs"].append(row)
            if writer is not None:
                log_epoch(writer, row)
            if checkpoint is not None and (epoch % task.eval_every == 0 or epoch == task.epochs):
                save_checkpoint(checkpoint, {
                    "configuration": _configuration(task), "method": method.name, "seed": seed, "epoch": epoch,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "order": order.get_state(), "member_orders": [g.get_state() for g in member_orders], "rng": rng_states(device),
                    "collector": None if collector is None else collector.state_dict(),
                    "trace": None if trace is None else trace.state_dict(),
                    "record": record, "worst": worst, "profile_start": profile_start,
                })
            if bar is not None:
                bar.set_postfix(progress_postfix(row))
    except FloatingPointError as e:  # our optimisers raise it on a non-finite gradient
        record["status"] = f"diverged at epoch {len(record['epochs']) + 1}: {str(e).splitlines()[0]}"
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    record["max_violation"] = worst
    # the training cost: one gradient per model (ensemble member, chain) per step of the finished epochs
    record["gradient_evaluations"] = len(record["epochs"]) * steps * members
    if constraints and (at_wall := wall_fraction(model, constraints)) is not None:
        record["at_wall"] = at_wall  # the inequality sets: did the walls matter?
    if trace is not None and len(trace):
        record["chain_trace"] = trace.draws  # per draw; the report gives ESS and R-hat over seeds
    if profile_start is not None and record["status"] == "done":
        profile = dict(profile_start, end=task.gradient_profile(model)["norms"])
        profile["start"] = profile.pop("norms")
        record["gradient_profile"] = profile
    if hasattr(task, "snapshot"):
        record["snapshot"] = task.snapshot(model)
    return record


def require_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``, or exit saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise SystemExit(
            f"--tensorboard needs the tensorboard package ({e}); install it with "
            "pip install tensorboard (or pip install -e \".[tensorboard]\")"
        ) from None
    return SummaryWriter


def tensorboard_writer(log_dir: Path):
    """A TensorBoard ``SummaryWriter`` writing to ``log_dir``."""
    return require_tensorboard()(log_dir=str(log_dir))


def log_epoch(writer, row: Dict[str, Any]) -> None:
    """Scalars of one epoch row: ``metrics/<name>`` for the metrics, ``diagnostics/group<i>/<key>``
    for the optimiser's per-group diagnostics (violation, grad_norm, noise_norm, ...)."""
    epoch = row["epoch"]
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"metrics/{key}", value, epoch)
    for i, group in enumerate(row.get("diagnostics", [])):
        for key, value in group.items():
            writer.add_scalar(f"diagnostics/group{i}/{key}", value, epoch)
    writer.flush()


def clip_gradients(model: torch.nn.Module, clip: float) -> None:
    """Gradient-norm clipping at ``clip``; a DeepEnsemble's members each clip their own gradient, as
    if trained alone (one norm over all of them would couple the members)."""
    from .ensemble import DeepEnsemble

    for part in model.members if isinstance(model, DeepEnsemble) else [model]:
        torch.nn.utils.clip_grad_norm_(part.parameters(), clip)


POSTERIOR_SAMPLES = 20  # snapshots averaged for the posterior prediction


def _posterior_collector(task: Task, model, optimizer, steps_per_epoch: int, method: Optional[Method] = None, seed: int = 0, scheduler=None):
    """For tempered Langevin methods on classification tasks: keep POSTERIOR_SAMPLES snapshots
    spread over the second half of the run (the first half is burn-in); ensemble-started chains
    (``sample_lr_key``) over their sampling stage's second half, at any temperature. For ``swag`` methods: the
    SWAG moments over the same POSTERIOR_SAMPLES steps (benchmarks.swag). For ``laplace`` methods:
    the last-layer Laplace approximation, fitted at the final weights (benchmarks.laplace). For
    cyclical methods: the snapshots at the end of each cycle; for ``ivon`` and ``mc-dropout``:
    POSTERIOR_SAMPLES draws of the weights or of the dropout masks (benchmarks.predictive)."""
    from constrained_sgld import SampleCollector

    if not hasattr(task, "evaluate_posterior"):
        return None
    if method is not None and method.cyclical:
        from .predictive import CyclicalCollector

        return CyclicalCollector(model, scheduler, samples_per_cycle=int(task.hp["samples_per_cycle"]))
    if method is not None and method.posterior == "ivon":
        from .predictive import IVONCollector

        return IVONCollector(model, optimizer, draws=POSTERIOR_SAMPLES, seed=seed)
    if method is not None and method.posterior == "mc-dropout":
        from .predictive import MCDropoutCollector

        return MCDropoutCollector(model, passes=POSTERIOR_SAMPLES, seed=seed)
    total = task.epochs * steps_per_epoch
    # the chains' start: after an OptimiseThenSample's optimisation stage (ensemble-started chains)
    start = getattr(scheduler, "optimise_steps", 0)
    burn_in = start + (total - start) // 2
    thin = max(1, (total - burn_in) // POSTERIOR_SAMPLES)
    if method is not None and method.posterior == "swag":
        from .swag import SWAGCollector

        return SWAGCollector(model, burn_in=burn_in, thin=thin, rank=POSTERIOR_SAMPLES, seed=seed)
    if method is not None and method.posterior == "laplace":
        from .laplace import LaplaceCollector

        return LaplaceCollector(model, task.x_train, task.y_train, batch_size=task.settings["batch_size"], seed=seed)
    # a scheduler that switches the temperature on later keeps the group's own as initial_temperature
    tempered = any(g.get("initial_temperature", g.get("temperature", 0)) > 0 for g in optimizer.param_groups)
    # ensemble-started chains keep their snapshots at T = 0 too: that control (the same schedule
    # without the noise, its iterates' predictions averaged) tells the noise's share of the chains'
    # gain from the averaging's
    if not tempered and (method is None or method.sample_lr_key is None):
        return None
    # ensemble-started chains: each snapshot holds every chain, so POSTERIOR_SAMPLES networks in all
    # (4 snapshots of 5 chains): the prediction's cost stays that of the other posteriors
    samples = max(1, POSTERIOR_SAMPLES // method.models(task)) if method is not None and method.sample_lr_key is not None else POSTERIOR_SAMPLES
    return SampleCollector(model, burn_in=burn_in, thin=max(1, (total - burn_in) // samples), max_samples=samples)


def _chain_trace(task: Task, model, collector):
    """Where posterior samples are kept: a ChainTrace of the test log-likelihood and four fixed random
    projections of the weights at each kept sample (the seeds are the chains)."""
    from constrained_sgld import ChainTrace, SampleCollector

    if not isinstance(collector, SampleCollector) or not hasattr(task, "test_log_likelihood"):
        return None

    return ChainTrace(model, projections=4)


def progress_postfix(row: Dict[str, Any]) -> Dict[str, str]:
    """What the progress bar shows of an epoch's row: the training loss and the test metrics that
    are single numbers (a row also holds lists and dicts, e.g. reliability bins and per-angle
    accuracies, which a bar cannot format)."""
    return {
        k: f"{v:.4g}" for k, v in row.items()
        if (k.startswith("test_") or k == "train_loss") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _progress(task: Task, method: Method, seed: int, enabled: bool, steps_per_epoch: int, done: int = 0):
    """A bar over the run's optimiser steps (updated every step), or None."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(
        total=task.epochs * steps_per_epoch, initial=done, desc=f"{task.name} {method.name} seed {seed}",
        unit="step", leave=False, file=sys.stderr, dynamic_ncols=True,
    )


def load_results(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def save_results(results: Dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "results.json.tmp"
    tmp.write_text(json.dumps(results, separators=(",", ":")))  # compact: long runs have many epochs
    tmp.replace(folder / "results.json")  # atomic: an interrupted write never leaves half a file


def plan_task(task_name: str, preset: str, methods: Optional[Sequence[str]], device: torch.device, overrides: Optional[Dict[str, Any]] = None):
    """The task and the methods to run on it (``methods``, else the task's defaults, else every
    method that fits; ``["all"]``: every method that fits and whose packages are installed),
    checked before any work. Raises SystemExit when ``methods`` names none that
    fits the task, naming those that do."""
    task = TASKS[task_name](preset, device, overrides)
    if methods is not None and list(methods) == ["all"]:
        methods = [name for name, m in METHODS.items() if not m.missing() and m.applies_to(task)]
    absent = {m: METHODS[m].missing() for m in (methods or []) if m in METHODS and METHODS[m].missing()}
    if absent:
        need = sorted({pkg for pkgs in absent.values() for pkg in pkgs})
        raise SystemExit(f"--methods {','.join(absent)}: needs {', '.join(need)}, which is not installed (pip install {' '.join(need)})")
    fitting = [name for name, m in METHODS.items() if m.applies_to(task)]
    chosen = [METHODS[m] for m in (methods or task.default_methods or fitting) if METHODS[m].applies_to(task)]
    skipped = [m for m in (methods or []) if m not in fitting]
    if not chosen:
        raise SystemExit(f"--methods {','.join(methods or [])}: none fits task {task_name!r}; methods that fit it: {', '.join(fitting)}")
    if skipped:
        print(f"[{task_name}] skipping {', '.join(skipped)}: they do not fit this task (methods that fit: {', '.join(fitting)})", file=sys.stderr)
    return task, chosen


def _configuration(task: Task) -> Dict[str, Any]:
    return json.loads(json.dumps({"preset": task.preset_name, "settings": task.settings, "task_hparams": task.hp}))


def check_no_results_lost(task: Task, out: Path) -> None:
    """Runs merge into ``out/<task>/results.json`` only when the configuration (preset, settings,
    hyper-parameters) is the same; a different one would replace finished results, so refuse,
    before any work, saying where to write instead."""
    path = out / task.name / "results.json"
    results = load_results(path)
    if results is None:
        return
    mine = _configuration(task)
    theirs = {k: results.get(k) for k in mine}
    if theirs == mine:
        return
    differ = sorted(
        [k for k in ("preset",) if theirs["preset"] != mine["preset"]]
        + [k for k in set(mine["settings"]) | set(theirs["settings"] or {}) if (theirs["settings"] or {}).get(k) != mine["settings"].get(k)]
        + [k for k in set(mine["task_hparams"]) | set(theirs["task_hparams"] or {}) if (theirs["task_hparams"] or {}).get(k) != mine["task_hparams"].get(k)]
    )
    raise SystemExit(
        f"{path} holds finished runs of another configuration (preset {theirs['preset']!r}; differing in: "
        f"{', '.join(differ)}), which this run would replace. Write it elsewhere, e.g. --out {out / task.preset_name}, "
        "or move that file away"
    )


def check_writable(out: Path) -> None:
    """Fail now, in one line, if results cannot be written under ``out`` (not after training)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"--out {out}: cannot write results there ({e.strerror or e})") from None


def run_task(
    task: Task,
    chosen: Sequence[Method],
    seeds: Sequence[int],
    out: Path,
    progress: bool = True,
    command: str = "",
    tensorboard: Optional[Path] = None,
    resume: bool = False,
) -> Dict[str, Any]:
    """Run ``chosen`` methods for every seed (see :func:`plan_task`); results merge into
    ``out/<task>/results.json`` (the same configuration: :func:`check_no_results_lost`), so seeds
    and methods can be added. Every run keeps a checkpoint in ``out/<task>/checkpoints/`` until its
    record is saved; with ``resume``, an interrupted run continues from its checkpoint and a run
    already in ``results.json`` is not run again."""
    from .report import write_task_report

    task_name = task.name
    task.prepare()
    folder = out / task_name
    results = load_results(folder / "results.json")
    settings = _configuration(task)
    if results is None or {k: results.get(k) for k in settings} != settings:
        results = {"task": task_name, "description": task.description, "data": task.data_source, "metric": task.metric, **settings, "runs": []}
    results.update({"versions": versions(), "device": device_name(task.device), "command": command})
    if hasattr(task, "baseline"):  # a reference loss the task defines (copy: the memoryless strategy)
        results["baseline"] = task.baseline
        print(f"[{task_name}] memoryless baseline: cross-entropy {task.baseline:.4f} per step", flush=True)
    print(f"[{task_name}] {task.preset_name} preset: {', '.join(m.name for m in chosen)}; "
          f"{len(seeds)} seed(s); results into {folder}/", flush=True)
    for seed in seeds:
        for method in chosen:
            checkpoint = checkpoint_path(folder, method.name, seed)
            finished = any((r["method"], r["seed"]) == (method.name, seed) for r in results["runs"])
            if resume and finished and not checkpoint.is_file():
                print(f"[{task_name}] {method.name:20s} seed {seed}: already in results.json, not run again (--resume)", flush=True)
                continue
            if not resume and checkpoint.is_file():
                print(f"[{task_name}] {method.name:20s} seed {seed}: starting afresh; the checkpoint of an interrupted run is replaced (--resume continues it)", file=sys.stderr, flush=True)
            record = train_one(task, method, seed, progress, tensorboard, checkpoint=checkpoint, resume=resume)
            results["runs"] = [r for r in results["runs"] if (r["method"], r["seed"]) != (method.name, seed)] + [record]
            save_results(results, folder)  # after every run: Ctrl-C keeps what finished
            checkpoint.unlink(missing_ok=True)  # the record is saved: nothing left to resume
            if checkpoint.parent.is_dir() and not any(checkpoint.parent.iterdir()):
                checkpoint.parent.rmdir()  # a run that diverged before its first evaluation made none
            last = next((r for r in reversed(record["epochs"]) if f"test_{task.metric}" in r), {})
            metric = last.get(f"test_{task.metric}", float("nan"))
            secs = sum(r["seconds"] for r in record["epochs"]) / max(1, len(record["epochs"]))
            print(f"[{task_name}] {method.name:20s} seed {seed}: test {task.metric} {metric:.4f}  {secs:.2f} s/epoch  {record['status']}", flush=True)
    write_task_report(results, folder)
    return results
