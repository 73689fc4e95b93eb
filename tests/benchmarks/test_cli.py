"""The benchmark CLI end to end on the generated two-spirals task (no download), in-process."""

import contextlib
import json
import math

import pytest
import torch

from benchmarks import runner
from benchmarks.__main__ import main
from benchmarks.methods import METHODS
from benchmarks.speed import ResearchScriptStep
from benchmarks.tasks import TASKS
from constrained_sgld import ConstrainedUnderdampedSGLD, Orthogonal

TINY = ["--set", "epochs=2", "--set", "eval_every=1", "--set", "train_per_class=20", "--set", "test_per_class=50", "--no-progress"]


def test_list_names_every_task_method_and_preset(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list(TASKS) + list(METHODS) + ["smoke", "quick", "paper"]:
        assert name in out


def test_list_shows_per_task_only_the_methods_run_accepts(capsys):
    """`list`'s methods for a task are those `run` takes (its sets, model variants and
    hyper-parameters): no LSTM or nGPT method under fmnist-mlp; the transformer's under
    shakespeare-gpt."""
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    methods_of = {}
    for i, line in enumerate(lines):
        name = line.strip().split(" ")[0]
        if name in TASKS:
            methods_of[name] = next(l for l in lines[i + 1 : i + 4] if "methods:" in l)
    assert "lstm-rmsprop" not in methods_of["fmnist-mlp"] and "ngpt-adam" not in methods_of["fmnist-mlp"]
    assert "ngpt-adam" in methods_of["shakespeare-gpt"] and "o-spectral" in methods_of["shakespeare-gpt"]


def test_requires_checks_attributes_as_well_as_modules():
    from benchmarks.methods import Method, _importable

    assert _importable("torch.optim.SGD") and _importable("json")
    assert not _importable("torch.optim.NoSuchOptimizer") and not _importable("no_such_package.x")
    method = Method("m", "", None, lambda *a: None, requires=("torch.optim.NoSuchOptimizer:torch>=99",))
    assert method.missing() == ("torch>=99",)
    assert "torch.optim.Muon:torch>=2.9" in METHODS["muon"].requires


def test_run_writes_results_and_merges_seeds(tmp_path):
    out = tmp_path / "res"
    args = ["run", "--task", "two-spirals", "--preset", "smoke", "--methods", "sgd-momentum,o-cola-ud,c-cola-od", "--out", str(out)]
    assert main(args + TINY) == 0
    assert main(args + ["--first-seed", "1"] + TINY) == 0
    folder = out / "two-spirals"
    results = json.loads((folder / "results.json").read_text())
    assert {(r["method"], r["seed"]) for r in results["runs"]} == {(m, s) for m in ("sgd-momentum", "o-cola-ud", "c-cola-od") for s in (0, 1)}
    run = next(r for r in results["runs"] if r["method"] == "o-cola-ud")
    assert len(run["epochs"]) == 2 and {"train_loss", "test_accuracy", "seconds", "violation"} <= set(run["epochs"][-1])
    assert run["max_violation"] < 1e-4 and run["hyperparameters"]["constraints"] == {"2.weight": "orthogonal(scale=1)"}
    assert results["versions"]["torch"] == torch.__version__
    table = (folder / "results.md").read_text()
    assert "| o-cola-ud | 2 |" in table and "time vs sgd-momentum" in table
    assert (folder / "curves.png").stat().st_size > 0 and (folder / "boundaries.png").stat().st_size > 0
    (folder / "results.md").unlink()
    assert main(["report", "--out", str(out)]) == 0
    assert (folder / "results.md").is_file() and (out / "report.md").is_file()


def test_progress_bars_show_only_scalar_metrics():
    row = {"epoch": 3, "seconds": 1.5, "train_loss": 0.25, "test_accuracy": 0.9, "test_reliability": [0.1, 0.2],
           "test_rotated": {"30": 0.5}, "test_converged": True, "val_accuracy": 0.8}
    assert runner.progress_postfix(row) == {"train_loss": "0.25", "test_accuracy": "0.9"}


def test_run_with_progress_bars(tmp_path, capsys):
    out = tmp_path / "res"
    args = ["run", "--task", "two-spirals", "--preset", "smoke", "--methods", "sgd,c-cola-od", "--out", str(out)]
    assert main(args + [a for a in TINY if a != "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "two-spirals c-cola-od seed 0" in err and "step" in err


def test_interrupt_keeps_finished_runs(tmp_path, monkeypatch):
    real = runner.train_one
    calls = []

    def train_then_interrupt(task, method, seed, *args, **kwargs):
        calls.append(method.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task, method, seed, *args, **kwargs)

    monkeypatch.setattr(runner, "train_one", train_then_interrupt)
    out = tmp_path / "res"
    code = main(["run", "--task", "two-spirals", "--preset", "smoke", "--methods", "sgd,adam", "--out", str(out)] + TINY)
    assert code == 130
    results = json.loads((out / "two-spirals" / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["sgd"]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="--set nonsense"):
        main(["run", "--task", "two-spirals", "--preset", "smoke", "--set", "nonsense=1", "--no-progress"])
    with pytest.raises(SystemExit, match="--methods 'nope'"):
        main(["run", "--task", "two-spirals", "--methods", "nope"])
    with pytest.raises(SystemExit, match="--task 'nope'"):
        main(["run", "--task", "nope"])


class _GeneratedBinaryFashion(TASKS["binary-fmnist"]):
    """binary-fmnist's model and methods on random images (no data download)."""

    def prepare(self):
        g = torch.Generator().manual_seed(0)
        self.x_train, self.y_train = torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
        self.x_val, self.y_val = self.x_train[:16], self.y_train[:16]
        self.x_test, self.y_test = self.x_train[:16], self.y_train[:16]


class _GeneratedFashionMLP(TASKS["fmnist-mlp"]):
    """fmnist-mlp's model and methods on random images (no data download)."""

    prepare = _GeneratedBinaryFashion.prepare


class _GeneratedFashionCNN(TASKS["fmnist-cnn"]):
    """fmnist-cnn's model and methods (IVON, MC dropout, the cyclical chains) on random images."""

    def prepare(self):
        g = torch.Generator().manual_seed(0)
        self.x_train, self.y_train = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
        self.x_val, self.y_val = self.x_train[:16], self.y_train[:16]
        self.x_test, self.y_test = self.x_train[16:32], self.y_train[16:32]


class _GeneratedGPT(TASKS["shakespeare-gpt"]):
    """shakespeare-gpt's smoke preset on random characters (no download)."""

    def prepare(self):
        g = torch.Generator().manual_seed(0)
        self.chars = [chr(97 + i) for i in range(12)]
        self.train_ids, self.val_ids, self.test_ids = (torch.randint(0, 12, (n,), generator=g) for n in (2000, 300, 300))


def _generated_task(method):
    """A small generated-data task the method applies to: two-spirals, copy for the RNN-only methods,
    binary-fmnist on random images for the box methods, fmnist-mlp on random images for the norm sets."""
    task = TASKS["two-spirals"]("smoke", torch.device("cpu"), {"train_per_class": 10, "test_per_class": 10})
    if not method.applies_to(task):
        task = TASKS["copy"]("smoke", torch.device("cpu"), {"steps_per_epoch": 2, "eval_size": 8})
    if not method.applies_to(task):
        task = _GeneratedBinaryFashion("smoke", torch.device("cpu"), {})
    if not method.applies_to(task):
        task = _GeneratedFashionMLP("smoke", torch.device("cpu"), {})
    if not method.applies_to(task):
        task = _GeneratedFashionCNN("smoke", torch.device("cpu"), {"chains": 2})
    if not method.applies_to(task):
        task = _GeneratedGPT("smoke", torch.device("cpu"), {"epochs": 2})  # chains from a MAP: an epoch of each
    return task


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_builds_and_steps(name):
    method = METHODS[name]
    if method.missing():  # an optional package's method (laplace): it fits no task without it
        pytest.skip(f"{name} needs {', '.join(method.missing())}")
    task = _generated_task(method)
    assert method.applies_to(task)
    task.prepare()
    model = task.build_model(method.variant) if method.variant else task.build_model()
    if method.models(task) > 1:  # the cyclical methods' chains (the runner builds them so)
        from benchmarks.ensemble import DeepEnsemble

        model = DeepEnsemble([task.build_model() for _ in range(method.models(task))])
    optimizer, hparams, constraints = method.build(model, task, 0)
    sampled = getattr(optimizer, "sampled_params", None)  # IVON: a weight draw around each gradient
    for inputs, targets in task.batches(torch.Generator().manual_seed(0)):
        if method.models(task) > 1:  # each chain its batch, concatenated
            inputs, targets = torch.cat([inputs] * model.size), torch.cat([targets] * model.size)
        optimizer.zero_grad()
        with sampled(train=True) if sampled is not None else contextlib.nullcontext():
            task.loss(model, inputs, targets)[0].backward()
        optimizer.step()
    # a family's methods enforce its constraints, except those that only start on the set or
    # reparametrise it with a learned norm, or (muon) take the family's matrices for another optimiser
    assert bool(constraints) == (method.family is not None and method.name not in ("sgd-momentum-orth-init", "sgd-momentum-weightnorm", "muon"))
    violation = runner.largest_violation(model, optimizer, constraints)
    assert violation is None or violation < 1e-4


def test_research_script_step_matches_ours_at_zero_temperature():
    """The speed benchmark's baseline is a faithful o-CoLA-ud step: at T = 0 it follows our
    trajectory up to its fixed 10 SHAKE iterations (tall and wide matrices, conv-shaped)."""
    torch.manual_seed(0)
    shapes = {"tall": (12, 4), "wide": (3, 10), "conv": (8, 2, 3, 3), "bias": (5,)}
    ours = {n: torch.nn.Parameter(torch.empty(s, dtype=torch.float64)) for n, s in shapes.items()}
    constraints = {n: "orthogonal" for n in ("tall", "wide", "conv")}
    with torch.no_grad():
        for n, p in ours.items():
            Orthogonal().init_(p) if n in constraints else p.normal_()
    theirs = {n: torch.nn.Parameter(p.detach().clone()) for n, p in ours.items()}
    opt = ConstrainedUnderdampedSGLD(list(ours.items()), constraints=constraints, lr=0.01, momentum=0.8)
    research = ResearchScriptStep(list(theirs.items()), constraints, lr=0.01, momentum=0.8, temperature=0.0)
    for _ in range(20):
        grads = {n: torch.randn(s, dtype=torch.float64) for n, s in shapes.items()}
        for n in shapes:
            ours[n].grad, theirs[n].grad = grads[n], grads[n].clone()
        opt.step()
        research.step()
    for n in shapes:
        torch.testing.assert_close(theirs[n], ours[n], rtol=0, atol=1e-6)


def test_classification_scores():
    from benchmarks.tasks.base import classification_scores

    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    s = classification_scores(probs, y, bins=10)
    assert s["accuracy"] == 0.75
    assert s["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.7) + math.log(0.6)) / 4)
    # bins: 0.9 -> right (|1 - 0.9|), 0.8 -> wrong (|0 - 0.8|), 0.7 -> right (0.3), 0.6 -> right (0.4)
    assert s["ece"] == pytest.approx((0.1 + 0.8 + 0.3 + 0.4) / 4)


def test_tempered_runs_record_posterior_and_diagnostics(tmp_path):
    out = tmp_path / "res"
    assert main(["run", "--task", "two-spirals", "--preset", "smoke", "--methods", "c-cola-ud", "--out", str(out)] + TINY) == 0
    last = json.loads((out / "two-spirals" / "results.json").read_text())["runs"][0]["epochs"][-1]
    assert {"posterior_accuracy", "posterior_nll", "posterior_ece", "test_ece"} <= set(last)
    assert {"kinetic_temperature", "noise_norm", "grad_norm"} <= set(last["diagnostics"][0])
    assert "posterior accuracy" in (out / "two-spirals" / "results.md").read_text()


def test_tensorboard_writer_logs_metrics_and_diagnostics(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out, logs = tmp_path / "res", tmp_path / "tb"
    args = ["run", "--task", "two-spirals", "--preset", "smoke", "--methods", "sgd-momentum,c-cola-ud", "--out", str(out)]
    assert main(args + ["--tensorboard", str(logs)] + TINY) == 0
    runs = {p.parent.relative_to(logs).as_posix() for p in logs.rglob("events.out.tfevents.*")}
    assert runs == {"two-spirals/sgd-momentum/seed0", "two-spirals/c-cola-ud/seed0"}
    acc = event_accumulator.EventAccumulator(str(logs / "two-spirals" / "c-cola-ud" / "seed0"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"metrics/train_loss", "metrics/test_accuracy", "diagnostics/group0/violation", "diagnostics/group0/kinetic_temperature"} <= tags
    assert [e.step for e in acc.Scalars("metrics/train_loss")] == [1, 2]
    saved = json.loads((out / "two-spirals" / "results.json").read_text())
    run = next(r for r in saved["runs"] if r["method"] == "c-cola-ud")
    assert acc.Scalars("metrics/train_loss")[-1].value == pytest.approx(run["epochs"][-1]["train_loss"], rel=1e-6)


def test_tensorboard_missing_is_named(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(SystemExit, match="pip install tensorboard"):
        main(["run", "--task", "two-spirals", "--preset", "smoke", "--out", str(tmp_path), "--tensorboard", str(tmp_path / "tb")] + TINY)


# ---------------------------------------------------------------- a CLI that never reports success for nothing
def test_another_configuration_never_replaces_finished_results(tmp_path, capsys):
    out = tmp_path / "res"
    args = ["run", "--task", "two-spirals", "--methods", "sgd", "--out", str(out)] + TINY
    assert main(args + ["--preset", "smoke"]) == 0
    before = (out / "two-spirals" / "results.json").read_text()
    with pytest.raises(SystemExit, match=r"another configuration \(preset 'smoke'; differing in: preset.*--out"):
        main(args + ["--preset", "quick"])
    with pytest.raises(SystemExit, match="differing in: lr"):
        main(args + ["--preset", "smoke", "--set", "lr=0.5"])
    assert (out / "two-spirals" / "results.json").read_text() == before


@pytest.mark.parametrize("seeds", ["0", "-1"])
def test_no_seeds_is_an_error(tmp_path, seeds):
    with pytest.raises(SystemExit, match=f"--seeds {seeds}"):
        main(["run", "--task", "two-spirals", "--seeds", seeds, "--out", str(tmp_path)] + TINY)


def test_inapplicable_methods_are_an_error_naming_those_that_fit(tmp_path):
    with pytest.raises(SystemExit, match=r"none fits task 'fmnist-mlp'; methods that fit it: .*c-cola-ud"):
        main(["run", "--task", "fmnist-mlp", "--methods", "o-cola-ud", "--out", str(tmp_path), "--no-progress"])


def test_unwritable_out_fails_before_any_work(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    trained = []
    monkeypatch.setattr(runner, "train_one", lambda *a, **k: trained.append(1))
    with pytest.raises(SystemExit, match=r"^--out .*file/res: cannot write results there"):
        main(["run", "--task", "two-spirals", "--methods", "sgd", "--out", str(blocker / "res")] + TINY)
    assert not trained


def test_data_errors_print_the_message_alone(tmp_path, monkeypatch, capsys):
    from benchmarks import data

    def unavailable(self):
        raise data.DataUnavailable("Fashion-MNIST could not be fetched.\nTo fix: run apt-get update")

    monkeypatch.setattr(TASKS["two-spirals"], "prepare", unavailable)
    assert main(["run", "--task", "two-spirals", "--methods", "sgd", "--out", str(tmp_path)] + TINY) == 1
    err = capsys.readouterr().err
    assert "To fix: run apt-get update" in err and "Traceback" not in err


def test_run_help_shows_defaults_and_task_names(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: fmnist-mlp)" in text and "(default: quick)" in text and "(default: results)" in text
    assert all(name in text.replace("- ", "-") for name in TASKS)


def test_merge_refuses_other_hparams_unless_mixed(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    base = ["run", "--task", "two-spirals", "--preset", "smoke"] + TINY
    assert main(base + ["--methods", "sgd-momentum", "--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--methods", "o-cola-ud", "--set", "ud_lr=0.001", "--out", str(tmp_path / "b")]) == 0
    merge = [sys.executable, "scripts/merge_results.py", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b")]
    refused = subprocess.run(merge, cwd=root, capture_output=True, text=True)
    assert refused.returncode != 0 and "--mixed-hparams" in refused.stderr
    subprocess.run(merge + ["--mixed-hparams"], cwd=root, check=True, capture_output=True)
    merged = json.loads((tmp_path / "m" / "two-spirals" / "results.json").read_text())
    by_method = {r["method"]: r for r in merged["runs"]}
    assert by_method["o-cola-ud"]["task_hparams"]["ud_lr"] == 0.001 and by_method["sgd-momentum"]["task_hparams"]["ud_lr"] != 0.001
    assert "ud_lr" not in merged["task_hparams"] and "momentum_lr" in merged["task_hparams"]


def test_main_job_runs_the_headline_set_and_all_runs_every_fitting_method():
    """`python -m benchmarks run` (README's main job) trains fmnist-mlp's six headline methods;
    `--methods all` every method that fits the task and whose packages are installed."""
    _, chosen = runner.plan_task("fmnist-mlp", "quick", None, torch.device("cpu"))
    assert [m.name for m in chosen] == ["sgd-momentum", "adam", "sgld", "swag", "ensemble-sgd-momentum", "c-cola-ud"]
    task, every = runner.plan_task("fmnist-mlp", "quick", ["all"], torch.device("cpu"))
    assert {m.name for m in chosen} < {m.name for m in every}
    assert {m.name for m in every} == {name for name, m in METHODS.items() if m.applies_to(task)}
