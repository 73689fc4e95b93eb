"""The posterior round (fmnist-cnn): the synthetic corruptions, the cyclical collector's snapshot
positions, IVON's and MC dropout's predictives, the multi-chain methods, and a smoke run's columns
and cost."""

import json
import math

import pytest
import torch
from torch import nn

from benchmarks import uncertainty as u
from tests.conftest import require_fashion_and_mnist
from benchmarks.methods import METHODS
from benchmarks.predictive import CyclicalCollector, IVONCollector, MCDropoutCollector
from benchmarks.report import cost_ratios, posterior_table
from constrained_sgld import ConstrainedUnderdampedSGLD, CyclicalLR


def _pixels(n=64, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_noise_grows_with_severity_and_is_the_same_for_every_method():
    x = torch.full((200, 1, 28, 28), 0.5)
    spread = [(u.corrupt(x, "noise", s) - x).std().item() for s in (1, 2, 3)]
    # clipping to [0, 1] trims the largest noise a little: the standard deviations of the levels
    assert spread[0] == pytest.approx(u.CORRUPTIONS["noise"][0], rel=0.02)
    assert spread[0] < spread[1] < spread[2] <= u.CORRUPTIONS["noise"][2]
    assert torch.equal(u.corrupt(x, "noise", 2), u.corrupt(x, "noise", 2))  # a fixed generator


def test_blur_keeps_flat_images_and_smooths_edges():
    flat = torch.full((2, 1, 28, 28), 0.3)
    assert torch.allclose(u.corrupt(flat, "blur", 3), flat, atol=1e-6)  # a normalised kernel, reflected edges
    edge = torch.zeros(1, 1, 28, 28)
    edge[..., 14:] = 1.0
    rows = [u.corrupt(edge, "blur", s)[0, 0, 5] for s in (1, 2, 3)]
    assert all(0 < r[13] < 0.5 < r[14] < 1 for r in rows)
    assert rows[0][12] < rows[1][12] < rows[2][12]  # wider with severity


def test_contrast_pulls_each_image_to_its_mean():
    x = _pixels()
    for s, factor in zip((1, 2, 3), u.CORRUPTIONS["contrast"]):
        out = u.corrupt(x, "contrast", s)
        assert torch.allclose(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
        assert torch.allclose(out.std((1, 2, 3)), factor * x.std((1, 2, 3)), rtol=1e-4)
    assert 0 <= u.corrupt(x, "noise", 3).min() and u.corrupt(x, "noise", 3).max() <= 1


def test_corruption_errors_name_the_option():
    with pytest.raises(ValueError, match="kind must be one of"):
        u.corrupt(_pixels(), "fog", 1)
    with pytest.raises(ValueError, match="severity must be in 1..3"):
        u.corrupt(_pixels(), "blur", 4)


def _cyclical(total=100, cycles=4, exploration=0.8, temperature=1e-3):
    model = nn.Linear(3, 2)
    optim = ConstrainedUnderdampedSGLD(model.parameters(), lr=0.1, momentum=0.9, temperature=temperature)
    return model, optim, CyclicalLR(optim, total, cycles=cycles, exploration=exploration)


def test_cyclical_collector_keeps_each_cycles_last_sampling_steps():
    model, optim, sched = _cyclical()
    collector = CyclicalCollector(model, sched, samples_per_cycle=3)
    kept, temperatures = [], []
    for k in range(100):
        model(torch.randn(4, 3)).sum().backward()
        temperatures.append(optim.param_groups[0]["temperature"])  # the step's own temperature
        optim.step()
        sched.step()
        if collector.update():
            kept.append(k)
    # cycles of 25 steps, sampling from step 20 of each (5 steps): the last, and 5/3 and 10/3 steps back
    assert kept == [c * 25 + r for c in range(4) for r in (21, 22, 24)]
    assert len(collector) == 12 and all(temperatures[k] == 1e-3 for k in kept)  # every snapshot sampled at T > 0
    assert collector.predict(torch.randn(5, 3)).shape == (5, 2)
    with pytest.raises(ValueError, match="samples_per_cycle"):
        CyclicalCollector(model, sched, samples_per_cycle=0)


def test_cyclical_collector_keeps_the_cycle_end_when_a_cycle_has_no_sampling_stage():
    model, optim, sched = _cyclical(total=8, cycles=2, exploration=0.9)  # cycles of 4 steps: none sample
    collector = CyclicalCollector(model, sched, samples_per_cycle=3)
    kept = []
    for k in range(8):
        optim.step()
        sched.step()
        if collector.update():
            kept.append(k)
    assert kept == [3, 7]


def test_mc_dropout_averages_fixed_masks_and_restores_the_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).eval()
    collector = MCDropoutCollector(model, passes=50, seed=3)
    x = torch.randn(8, 6)
    p = collector.predict(x)
    assert not model.training and torch.equal(p, collector.predict(x))
    with torch.no_grad():
        deterministic = torch.softmax(model(x), -1)
    assert torch.allclose(p.sum(-1), torch.ones(8)) and not torch.allclose(p, deterministic, atol=1e-3)
    assert len(collector) == 50


def test_ivon_collector_draws_around_the_mean_and_leaves_it():
    ivon = pytest.importorskip("ivon")
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optim = ivon.IVON(model.parameters(), lr=0.1, ess=100, hess_init=0.5)
    for _ in range(3):
        with optim.sampled_params(train=True):
            optim.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
        optim.step()
    mean = [p.detach().clone() for p in model.parameters()]
    collector = IVONCollector(model, optim, draws=30, seed=1)
    x = torch.randn(10, 4)
    p = collector.predict(x)
    assert all(torch.equal(a, b) for a, b in zip(mean, model.parameters()))  # the mean back in place
    assert torch.equal(p, collector.predict(x)) and len(collector) == 30
    with torch.no_grad():
        assert not torch.allclose(p, torch.softmax(model(x), -1), atol=1e-3)  # draws, not the mean
    collector.update()  # the posterior moved: the next predict draws again
    assert collector._samples is None


def test_cyclical_methods_train_the_tasks_chains_and_need_a_plain_task():
    class Task:
        hp = {"chains": 3}

    assert METHODS["sgld-cyclical"].models(Task) == 3 and METHODS["ensemble-sgd-momentum"].models(Task) == 5
    assert METHODS["sgd-momentum"].models(Task) == 1


def test_cost_ratios_and_posterior_table():
    def run(method, grads, secs, posterior=None, **hp):
        last = {"epoch": 1, "seconds": secs, "test_accuracy": 0.9, "test_loss": 0.3, "test_brier": 0.15,
                "test_corrupted": {"noise": {"1": {"nll": 0.5}}, "blur": {"1": {"nll": 0.7}}}}
        if posterior:
            last.update(posterior_nll=posterior, posterior_accuracy=0.91, posterior_samples=12, posterior_brier=0.14,
                        posterior_corrupted={"noise": {"1": {"nll": 0.4}}, "blur": {"1": {"nll": 0.6}}})
        return {"method": method, "seed": 0, "status": "done", "gradient_evaluations": grads, "hyperparameters": hp, "epochs": [last]}

    results = {"metric": "accuracy", "runs": [run("sgd-momentum", 100, 10.0), run("sgld-cyclical", 400, 50.0, posterior=0.25, chains=4)]}
    costs = cost_ratios(results)
    assert costs["sgld-cyclical"] == {"gradients": 4.0, "time": 5.0}
    table = posterior_table(results)
    assert "| sgd-momentum | final model | 0.9000 | 0.3000 | 0.1500 | – | – | – | 0.6000 | 1.0x | 1.0x | 1 |" in table
    assert "| sgld-cyclical | posterior | 0.9100 | 0.2500 | 0.1400 | – | – | – | 0.5000 | 4.0x | 5.0x | 48 |" in table
    # chosen rows, in the order given (the README's table); an unknown method is named
    chosen = posterior_table(results, ["sgld-cyclical", "sgd-momentum"]).splitlines()
    assert [line.split(" | ")[0] for line in chosen[2:]] == ["| sgld-cyclical", "| sgd-momentum"]
    with pytest.raises(ValueError, match="'swag'"):
        posterior_table(results, ["swag"])


def test_cnn_smoke_run_records_corruptions_chains_and_cost(tmp_path):
    """fmnist-cnn's smoke preset: a cyclical multi-chain sampler, MC dropout and SGD-momentum; the
    corrupted sets for model and posterior, the validation NLL the grids tune on, the cost."""
    from benchmarks.__main__ import main

    require_fashion_and_mnist()
    out = tmp_path / "res"
    args = ["run", "--task", "fmnist-cnn", "--preset", "smoke", "--methods", "sgd-momentum,mc-dropout,o-cola-ud-cyclical",
            "--set", "chains=2", "--out", str(out), "--no-progress"]
    for kv in ("train_size=500", "val_size=200", "test_size=300", "ood_size=200", "shift_size=100"):  # smaller still
        args += ["--set", kv]
    assert main(args) == 0
    results = json.loads((out / "fmnist-cnn" / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"]}
    steps = math.ceil(500 / 128) * 2
    assert runs["sgd-momentum"]["gradient_evaluations"] == steps and runs["o-cola-ud-cyclical"]["gradient_evaluations"] == 2 * steps
    chains = runs["o-cola-ud-cyclical"]
    assert chains["hyperparameters"]["chains"] == 2 and chains["max_violation"] < 1e-4
    assert len(chains["hyperparameters"]["constraints"]) == 6  # three hidden layers per chain
    for run in (chains, runs["mc-dropout"]):
        last = run["epochs"][-1]
        assert 0 < last["posterior_val_nll"] < 3 and last["posterior_seconds"] > 0
        for prefix in ("test", "posterior"):
            corrupted = last[f"{prefix}_corrupted"]
            assert set(corrupted) == set(u.CORRUPTIONS) and all(set(v) == {"1", "2", "3"} for v in corrupted.values())
    assert runs["o-cola-ud-cyclical"]["epochs"][-1]["posterior_samples"] >= 2  # each cycle's end at least
    md = (out / "fmnist-cnn" / "results.md").read_text()
    assert "NLL corrupted, severity 3" in md and (out / "fmnist-cnn" / "cost.png").is_file()


def test_ensemble_started_chains_cost_the_ensembles_gradients(tmp_path):
    """ens-sgld: the ensemble's 5 members, optimised (T = 0) for all but the last epoch, then each
    sampled on its own chain: the same gradient evaluations as the ensemble, the posterior pooled
    over 5 chains' snapshots from the sampling stage only."""
    from benchmarks.__main__ import main

    require_fashion_and_mnist()
    out = tmp_path / "res"
    args = ["run", "--task", "fmnist-cnn", "--preset", "smoke", "--methods", "ensemble-sgd-momentum,ens-sgld", "--out", str(out), "--no-progress"]
    for kv in ("train_size=500", "val_size=200", "test_size=300", "ood_size=200", "shift_size=100", "epochs=3"):
        args += ["--set", kv]
    assert main(args) == 0
    results = json.loads((out / "fmnist-cnn" / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"]}
    steps = math.ceil(500 / 128)
    assert runs["ens-sgld"]["gradient_evaluations"] == runs["ensemble-sgd-momentum"]["gradient_evaluations"] == 5 * 3 * steps
    hp = runs["ens-sgld"]["hyperparameters"]
    assert hp["members"] == 5 and hp["sample_epochs"] == 1 and hp["temperature"] > 0 and "OptimiseThenSample" in hp["schedule"]
    last = runs["ens-sgld"]["epochs"][-1]
    assert last["posterior_samples"] == min(4, steps - steps // 2)  # in the sampling epoch's second half; at most 4 snapshots of the 5 chains (20 networks)
    assert "| ens-sgld | posterior |" in posterior_table(results)
    assert f"| {5 * last['posterior_samples']} |" in posterior_table(results, ["ens-sgld"])  # forward passes: chains x snapshots


def test_ensemble_started_chains_at_zero_temperature_average_their_iterates(tmp_path):
    """The T = 0 control of ens-sgld (the same schedule without noise) keeps the same snapshots, so
    that its averaged prediction separates the noise's effect from the averaging's; a T = 0 method
    that is not a chain (o-cola-ud) keeps none."""
    from benchmarks.__main__ import main

    require_fashion_and_mnist()
    out = tmp_path / "res"
    args = ["run", "--task", "fmnist-cnn", "--preset", "smoke", "--methods", "ens-sgld,o-cola-ud", "--out", str(out), "--no-progress"]
    for kv in ("train_size=500", "val_size=200", "test_size=300", "ood_size=200", "shift_size=100", "epochs=2", "ens_temperature=0", "temperature=0"):
        args += ["--set", kv]
    assert main(args) == 0
    runs = {r["method"]: r for r in json.loads((out / "fmnist-cnn" / "results.json").read_text())["runs"]}
    steps = math.ceil(500 / 128)
    assert runs["ens-sgld"]["hyperparameters"]["temperature"] == 0
    last = runs["ens-sgld"]["epochs"][-1]
    assert last["posterior_samples"] == min(4, steps - steps // 2) and math.isfinite(last["posterior_nll"])
    assert "posterior_samples" not in runs["o-cola-ud"]["epochs"][-1]


def test_budget_plot_measures_both_rounds_against_the_first_rounds_baseline(tmp_path):
    """scripts/budget_plot.py: each method's cost in units of one baseline run of the first round
    (so a longer round's points sit further right), its posterior NLL where it has one, and a clear
    error where the first round has no baseline run."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "scripts"))
    import budget_plot

    def write(name, epochs, runs):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"task": "fmnist-cnn", "settings": {"epochs": epochs}, "runs": runs}))
        return folder

    def run(method, grads, nll, posterior=False):
        row = {"epoch": 1, "test_loss": nll + 0.1, "test_brier": 0.2}
        if posterior:
            row.update(posterior_nll=nll, posterior_brier=0.1)
        return {"method": method, "seed": 0, "status": "done", "gradient_evaluations": grads, "epochs": [row]}

    short = write("short", 6, [run("sgd-momentum", 100, 0.31), run("ens-sgld", 500, 0.24, posterior=True)])
    long = write("long", 18, [run("sgd-momentum", 300, 0.29), run("ens-sgld", 1500, 0.22, posterior=True)])
    pts = budget_plot.points(json.loads((long / "results.json").read_text()), ["ens-sgld", "swag"])
    assert pts == {"ens-sgld": (1500, [0.22], [0.1])}  # the posterior's scores; a method without runs left out
    out = tmp_path / "budgets.png"
    done = subprocess.run([sys.executable, str(root / "scripts" / "budget_plot.py"), str(short), str(long), "--methods", "sgd-momentum,ens-sgld", "--out", str(out)],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0
    missing = subprocess.run([sys.executable, str(root / "scripts" / "budget_plot.py"), str(long), "--methods", "ens-sgld", "--baseline", "swag", "--out", str(out)],
                             capture_output=True, text=True, cwd=root)
    assert missing.returncode != 0 and "no swag run" in missing.stderr


def test_branched_checkpoint_continues_as_the_fresh_temperature_control(tmp_path, monkeypatch):
    """scripts/branch_checkpoint.py: ens-sgld's checkpoint in its optimisation stage (T = 0 whatever
    its sampling temperature), given ens_temperature = 0 and resumed, gives the fresh T = 0
    control's results exactly; a checkpoint at the switch or later is refused."""
    import sys
    from pathlib import Path

    from benchmarks.__main__ import main
    from benchmarks.checkpoint import checkpoint_path
    from benchmarks.tasks.base import ClassificationTask
    from tests.benchmarks.test_resume import interrupt_at_evaluation, without_timings

    require_fashion_and_mnist()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import branch_checkpoint

    args = ["run", "--task", "fmnist-cnn", "--preset", "smoke", "--methods", "ens-sgld", "--no-progress"]
    for kv in ("train_size=500", "val_size=200", "test_size=300", "ood_size=200", "shift_size=100", "epochs=4", "eval_every=1"):
        args += ["--set", kv]
    control = tmp_path / "control"
    assert main([*args, "--set", "ens_temperature=0.0", "--out", str(control)]) == 0
    with monkeypatch.context() as m:
        # on the base class: an ensemble needs the task's evaluation to be ClassificationTask's own
        interrupt_at_evaluation(m, ClassificationTask, 3)  # after epoch 2's checkpoint, before the switch after epoch 3
        assert main([*args, "--out", str(tmp_path / "chain")]) == 130
    src = checkpoint_path(tmp_path / "chain" / "fmnist-cnn", "ens-sgld", 0)
    dst = checkpoint_path(tmp_path / "branched" / "fmnist-cnn", "ens-sgld", 0)
    branch_checkpoint.main([str(src), str(dst), "--set", "ens_temperature=0.0"])
    assert main([*args, "--set", "ens_temperature=0.0", "--out", str(tmp_path / "branched"), "--resume"]) == 0
    branched = json.loads((tmp_path / "branched" / "fmnist-cnn" / "results.json").read_text())
    assert "epoch 2" in branched["runs"][0].pop("branched_from")
    want = without_timings(json.loads((control / "fmnist-cnn" / "results.json").read_text()))
    assert without_timings(branched) == want  # every loss, snapshot average and score: equal, not close
    payload = torch.load(src, map_location="cpu", weights_only=False)
    payload["scheduler"]["last_epoch"] = payload["scheduler"]["optimise_steps"]
    with pytest.raises(SystemExit, match="at or past the switch"):
        branch_checkpoint.branch(payload, "ens_temperature", 0.0)
