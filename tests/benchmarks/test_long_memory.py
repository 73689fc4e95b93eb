"""The depth and long-memory tasks (copy, pixel-fmnist, deep-mlp, shakespeare-rnn) and what the
runner and report do with their validation splits and gradient profiles; generated data only."""

import json
import math

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.methods import METHODS, start_on_set
from benchmarks.report import _best
from benchmarks.tasks import TASKS
from benchmarks.tasks.deep import DeepTanhMLP
from benchmarks.tasks.recurrent import LSTMNet, ModReLURNN, count_parameters, henaff_, matched_lstm_hidden
from constrained_sgld import Orthogonal

CPU = torch.device("cpu")


def test_copy_sequences_follow_the_protocol():
    task = TASKS["copy"]("smoke", CPU, {"T": 30})
    x, y = task.sample(64, torch.Generator().manual_seed(0))
    ids = x.argmax(-1)
    assert x.shape == (64, 50, 10) and y.shape == (64, 50)
    assert ((ids[:, :10] >= 1) & (ids[:, :10] <= 8)).all()  # 10 symbols of 8
    assert (ids[:, 10:39] == 0).all() and (ids[:, 39] == 9).all() and (ids[:, 40:] == 0).all()  # blanks, marker, blanks
    assert (y[:, :40] == 0).all() and torch.equal(y[:, 40:], ids[:, :10])  # recall after the marker
    assert task.baseline == pytest.approx(10 * math.log(8) / 50)


def test_copy_baseline_is_the_memoryless_strategys_loss():
    """Predicting blank with certainty until the marker, then uniform over the 8 symbols, scores
    exactly the stored baseline: 10 ln 8 / (T + 20)."""
    task = TASKS["copy"]("smoke", CPU, {"T": 30})
    x, y = task.sample(16, torch.Generator().manual_seed(1))
    logits = torch.full((16, 50, 9), -1e9)
    logits[:, :40, 0] = 0.0
    logits[:, 40:, 1:] = 0.0
    assert task.criterion(logits, y).item() == pytest.approx(task.baseline, rel=1e-6)


def test_henaff_init_is_orthogonal_with_spread_eigenvalues():
    w = henaff_(torch.empty(64, 64), torch.Generator().manual_seed(0))
    torch.testing.assert_close(w.T @ w, torch.eye(64), atol=1e-6, rtol=0)
    angles = torch.linalg.eigvals(w).angle()
    assert angles.min() < -2.5 and angles.max() > 2.5  # not clustered at 1, as an identity init would be


def test_lstm_baseline_matches_the_rnns_parameter_count():
    for inputs, hidden, outputs in ((10, 128, 9), (1, 128, 10), (1, 170, 10)):
        rnn = count_parameters(ModReLURNN(inputs, hidden, outputs, True))
        h = matched_lstm_hidden(rnn, inputs, outputs)
        lstm = count_parameters(LSTMNet(inputs, h, outputs, True))
        assert abs(lstm - rnn) / rnn < 0.05, (rnn, lstm, h)


def test_start_on_set_keeps_a_start_already_on_the_set():
    model = ModReLURNN(10, 16, 9, True)
    before = model.recurrent.weight.detach().clone()
    start_on_set(model, {"recurrent.weight": "orthogonal"})
    assert torch.equal(model.recurrent.weight, before)  # the Henaff start is kept
    model.recurrent.weight.data.normal_()
    start_on_set(model, {"recurrent.weight": "orthogonal"})
    assert Orthogonal().violation(model.recurrent.weight) < 1e-5  # an infeasible start is replaced


def test_rnn_gradient_profile_shows_vanishing_without_isometry():
    """At an orthogonal start the signal reaches the first steps; with W scaled by 0.5 it vanishes
    geometrically: the profile measures what it claims."""
    task = TASKS["copy"]("smoke", CPU, {"T": 40, "hidden": 32})
    task.prepare()
    torch.manual_seed(0)
    model = task.build_model()
    iso = task.gradient_profile(model)
    with torch.no_grad():
        model.recurrent.weight.mul_(0.5)
    shrunk = task.gradient_profile(model)
    assert len(iso["norms"]) == 60 and iso["axis"] == "time step t"
    assert iso["norms"][0] / iso["norms"][-1] > 1e-3
    assert shrunk["norms"][0] / shrunk["norms"][-1] < 1e-10


def test_deep_mlp_weight_gradients_match_autograd():
    task = TASKS["deep-mlp"]("smoke", CPU)
    task.x_val, task.y_val = torch.randn(256, 784), torch.randint(0, 10, (256,))
    model = DeepTanhMLP(depth=6, width=32)
    profile = task.gradient_profile(model)
    torch.nn.functional.cross_entropy(model(task.x_val), task.y_val).backward()
    expected = [layer.weight.grad.norm().item() for layer in model.layers]
    assert profile["norms"] == pytest.approx(expected, rel=1e-4)


def test_deep_mlp_constrains_only_the_square_hidden_layers():
    task = TASKS["deep-mlp"]("smoke", CPU)
    model = task.build_model()
    names = task.constrained(model, "orthogonal")
    assert sorted(names) == [f"layers.{i}.weight" for i in range(1, 7)]


def test_best_epoch_is_chosen_on_validation():
    run = {"epochs": [{"val_accuracy": 0.5, "test_accuracy": 0.9}, {"val_accuracy": 0.7, "test_accuracy": 0.6}]}
    assert _best(run, "test_accuracy", higher=True) == 0.6  # not the test set's own best, 0.9
    run = {"epochs": [{"test_bpc": 3.0}, {"test_bpc": 2.5}]}
    assert _best(run, "test_bpc", higher=False) == 2.5  # no validation split: the best test epoch


def test_method_applicability_by_variant_and_hyperparameters():
    spirals = TASKS["two-spirals"]("smoke", CPU)
    copy = TASKS["copy"]("smoke", CPU)
    assert not METHODS["lstm-rmsprop"].applies_to(spirals) and METHODS["lstm-rmsprop"].applies_to(copy)
    assert not METHODS["rmsprop"].applies_to(spirals) and METHODS["rmsprop"].applies_to(copy)


def test_copy_run_records_baseline_validation_and_profiles(tmp_path):
    out = tmp_path / "res"
    args = ["run", "--task", "copy", "--preset", "smoke", "--methods", "rmsprop,o-cola-ud,lstm-rmsprop", "--out", str(out), "--no-progress"]
    assert main(args + ["--set", "T=10", "--set", "steps_per_epoch=3", "--set", "eval_size=32"]) == 0
    results = json.loads((out / "copy" / "results.json").read_text())
    assert results["baseline"] == pytest.approx(10 * math.log(8) / 30)
    by_method = {r["method"]: r for r in results["runs"]}
    assert {"val_accuracy", "test_accuracy", "val_loss"} <= set(by_method["o-cola-ud"]["epochs"][-1])
    profile = by_method["o-cola-ud"]["gradient_profile"]
    assert len(profile["start"]) == len(profile["end"]) == 30
    assert "gradient_profile" not in by_method["lstm-rmsprop"]
    assert (out / "copy" / "gradients.png").stat().st_size > 0
    table = (out / "copy" / "results.md").read_text()
    assert "Memoryless baseline" in table and "best validation value" in table


def test_default_methods_are_the_tasks_own():
    task = TASKS["deep-mlp"]
    assert "sgd-momentum-orth-init" in task.default_methods
    assert all(METHODS[m].applies_to(task("smoke", CPU)) for m in task.default_methods)


def test_every_method_gets_its_own_plot_style():
    from benchmarks.report import _styles

    styles = _styles(list(METHODS))
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == len(METHODS)


def test_copy_sweep_table_says_where_each_method_falls_to_the_baseline(tmp_path):
    """scripts/copy_sweep.py on hand-made results: a method whose loss reaches the baseline at T = 500
    (and stays there) falls at 500, one that never does is said not to, a diverged run counts as
    fallen, and lengths run with different budgets are refused."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]

    def write(t, runs, steps=100):
        baseline = 10 * math.log(8) / (t + 20)
        folder = tmp_path / f"T{t}" / "copy"
        folder.mkdir(parents=True)
        results = {"task": "copy", "baseline": baseline, "settings": {"T": t, "hidden": 8, "batch_size": 4, "steps_per_epoch": steps, "epochs": 1},
                   "runs": [{"method": m, "seed": 0, "status": status, "epochs": [{"epoch": 1, "test_accuracy": acc, "test_loss": ratio * baseline}]}
                            for m, acc, ratio, status in runs]}
        (folder / "results.json").write_text(json.dumps(results))

    write(100, [("rmsprop", 0.9, 0.1, "done"), ("o-cola-ud", 1.0, 0.01, "done"), ("adam", 0.9, 0.1, "done")])
    write(500, [("rmsprop", 0.12, 0.99, "done"), ("o-cola-ud", 1.0, 0.02, "done"), ("adam", 0.1, 5.0, "diverged at epoch 1: x")])
    write(1000, [("rmsprop", 0.12, 1.0, "done"), ("o-cola-ud", 0.99, 0.05, "done"), ("adam", 0.1, 1.0, "done")])
    script = [sys.executable, str(root / "scripts" / "copy_sweep.py"), str(tmp_path)]
    done = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    rows = {line.split(" | ")[0].strip("| "): line for line in (tmp_path / "sweep.md").read_text().splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["rmsprop"].endswith("| T = 500 |") and "90.0%, 0.100" in rows["rmsprop"]
    assert rows["o-cola-ud"].endswith("| not at T <= 1000 |")
    assert rows["adam"].endswith("| T = 500 |") and "| diverged |" in rows["adam"]  # no better than memoryless
    assert (tmp_path / "sweep.png").stat().st_size > 0
    write(200, [("rmsprop", 0.9, 0.1, "done")], steps=50)
    refused = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert refused.returncode != 0 and "different budgets" in refused.stderr


def test_copy_sweep_reads_a_longer_run_at_the_sweeps_step_count(tmp_path):
    """scripts/copy_sweep.py --paper: a method without a sweep run at T = 1000 is read from the longer
    run's evaluation at the sweep's last epoch (marked), a method with both is compared (agreeing or
    not, said in sweep.md), and a longer run with an lr schedule or another width is refused."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    baseline = 10 * math.log(8) / (1000 + 20)

    def results(folder, epochs, runs, hidden=8, t=1000):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps({
            "task": "copy", "baseline": baseline, "settings": {"T": t, "hidden": hidden, "batch_size": 4, "steps_per_epoch": 10, "epochs": epochs},
            "runs": [{"method": m, "seed": 0, "status": "done", "hyperparameters": hp,
                      "epochs": [{"epoch": e + 1, "test_accuracy": acc[e], "test_loss": ratio[e] * baseline} for e in range(epochs)]}
                     for m, hp, acc, ratio in runs]}))

    results(tmp_path / "sweep" / "T1000" / "copy", 2, [("o-cola-ud", {"lr": 1e-3}, [0.3, 0.4], [1.0, 0.5])])
    longer = tmp_path / "paper"
    results(longer / "copy", 4, [("o-cola-ud", {"lr": 1e-3}, [0.3, 0.4, 0.6, 0.9], [1.0, 0.5, 0.4, 0.1]),
                                 ("rmsprop", {"lr": 2e-4}, [0.2, 0.25, 0.9, 1.0], [1.0, 0.97, 0.2, 0.01])])
    script = [sys.executable, str(root / "scripts" / "copy_sweep.py"), str(tmp_path / "sweep"), "--paper", str(longer)]
    done = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert "| 25.0%, 0.970 \\* | T = 1000 |" in rows["rmsprop"]  # epoch 2 of 4, not the end (100%)
    assert "40.0%, 0.500 |" in rows["o-cola-ud"] and "\\*" not in rows["o-cola-ud"]  # its own sweep run
    assert "o-cola-ud (the sweep run and the longer run at step 20 agree exactly)" in text

    results(longer / "copy", 4, [("o-cola-ud", {"lr": 1e-3}, [0.3, 0.5, 0.6, 0.9], [1.0, 0.45, 0.4, 0.1])])
    done = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0 and "o-cola-ud (the sweep run and the longer run at step 20 differ" in (tmp_path / "sweep" / "sweep.md").read_text()

    results(longer / "copy", 4, [("rmsprop", {"lr": 2e-4, "schedule": "warm-up"}, [0.2] * 4, [1.0] * 4)])
    refused = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert refused.returncode != 0 and "lr schedule" in refused.stderr
    results(longer / "copy", 4, [("rmsprop", {"lr": 2e-4}, [0.2] * 4, [1.0] * 4)], hidden=16)
    refused = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert refused.returncode != 0 and "not the sweep's run" in refused.stderr
    # a longer run with other hyper-parameters than the method's sweep runs at the other lengths
    results(tmp_path / "sweep" / "T100" / "copy", 2, [("rmsprop", {"lr": 2e-4}, [0.9, 1.0], [0.2, 0.1])], t=100)
    results(longer / "copy", 4, [("rmsprop", {"lr": 1e-3}, [0.2] * 4, [1.0] * 4)])
    refused = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert refused.returncode != 0 and "differ from its sweep runs" in refused.stderr


def test_report_writes_an_exploded_loss_in_e_notation_and_caps_the_step_axis(tmp_path, monkeypatch):
    """An RNN whose loss explodes to 1e23 gets a readable cell (not 24 digits), and the step-loss
    plot stops its axis at 1e3 baselines, naming the run that goes above it."""
    from benchmarks import report

    assert report._mean_std([2.84e23]) == "2.84e+23" and report._mean_std([0.0056]) == "0.0056"
    import matplotlib.axes

    seen = {}
    original = matplotlib.axes.Axes.set_ylim

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylim", spy)
    labels = []
    original_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: labels.append(k.get("label")) or original_plot(self, *a, **k))
    results = {"task": "copy", "preset": "paper", "settings": {"T": 1000}, "baseline": 0.02,
               "runs": [{"method": "rmsprop", "seed": 0, "epochs": [{"step_loss": [1.0] * 50 + [3e23] * 50}]},
                        {"method": "o-cola-ud", "seed": 0, "epochs": [{"step_loss": [0.03] * 100}]}]}
    assert report.plot_step_losses(results, tmp_path / "steps.png")
    assert seen["top"] == 1e3 * 0.02
    assert any(label and label.startswith("rmsprop (above the axis") for label in labels) and "o-cola-ud" in labels
