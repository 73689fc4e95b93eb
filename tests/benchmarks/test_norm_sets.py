"""The norm families (sphere: weight normalisation with a fixed norm; ball: max-norm) and their
baselines; the validation splits and the paper preset's temperature. Generated data only."""

import math

import numpy as np
import pytest
import torch

from benchmarks import data
from benchmarks.methods import METHODS
from benchmarks.tasks import TASKS
from benchmarks.tasks.fmnist import fashion_splits, pooled_splits

CPU = torch.device("cpu")


def _row_norms(w):
    return w.detach().flatten(1).norm(dim=1)


def _mlp_task():
    return TASKS["fmnist-mlp"]("smoke", CPU, {})


def _steps(model, optim, n=20, scale=100.0):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
    for _ in range(n):
        optim.zero_grad()
        (torch.nn.functional.cross_entropy(model(x), y) * scale).backward()  # large steps: the set must act
        optim.step()


@pytest.mark.parametrize("method", ["s-cola-od", "s-cola-ud"])
def test_sphere_methods_keep_every_row_at_the_radius(method):
    task = _mlp_task()
    model = task.build_model()
    optim, hp, constraints = METHODS[method].build(model, task, 0)
    assert set(constraints) == {"0.weight", "2.weight"}
    _steps(model, optim)
    for w in (model[0].weight, model[2].weight):
        torch.testing.assert_close(_row_norms(w), torch.full((w.shape[0],), task.hp["sphere_radius"]), rtol=1e-5, atol=0)


@pytest.mark.parametrize("method", ["m-cola-od", "m-cola-ud", "sgd-momentum-maxnorm"])
def test_max_norm_methods_keep_rows_in_the_ball_and_reach_its_wall(method):
    task = TASKS["fmnist-mlp"]("smoke", CPU, {"max_norm": 0.7})  # near the init's 0.58: the wall is hit
    model = task.build_model()
    optim, hp, constraints = METHODS[method].build(model, task, 0)
    _steps(model, optim)
    norms = torch.cat([_row_norms(model[0].weight), _row_norms(model[2].weight)])
    assert norms.max() <= 0.7 * (1 + 1e-5)
    assert (norms > 0.7 * (1 - 1e-4)).any()  # the constraint was active, so the test means something


def test_weight_norm_baseline_starts_at_the_same_function_and_learns_the_norms():
    task = _mlp_task()
    torch.manual_seed(0)
    plain = task.build_model()
    torch.manual_seed(0)
    model = task.build_model()
    optim, hp, constraints = METHODS["sgd-momentum-weightnorm"].build(model, task, 0)
    assert constraints == {} and hp["weight_norm"] == ["0.weight", "2.weight"]
    x = torch.randn(8, 784)
    torch.testing.assert_close(model(x), plain(x))
    g0 = model[0].parametrizations.weight.original0.detach().clone()
    _steps(model, optim, n=5, scale=1.0)
    assert not torch.equal(g0, model[0].parametrizations.weight.original0.detach())  # the norms move


def test_norm_families_on_the_resnet_name_every_conv_but_the_stem():
    task = TASKS["fmnist-resnet"]("smoke", CPU, {})
    model = task.build_model()
    sphere = task.constrained(model, "sphere")
    assert set(sphere) == set(task.constrained(model, "orthogonal"))
    assert all(spec == ("sphere", {"radius": 1 / math.sqrt(3)}) for spec in sphere.values())
    assert all(spec == ("ball", {"radius": 3.0}) for spec in task.constrained(model, "ball").values())


# ---- splits and presets
@pytest.fixture
def fake_fashion(monkeypatch):
    """70 + 30 fake images whose first pixel is their index (train: 0..69, test: 100..129)."""
    train = np.zeros((70, 28, 28), np.uint8)
    train[:, 0, 0] = np.arange(70)
    test = np.zeros((30, 28, 28), np.uint8)
    test[:, 0, 0] = 100 + np.arange(30)
    fake = {"train_x": train, "train_y": np.arange(70) % 10, "test_x": test, "test_y": np.arange(30) % 10}
    monkeypatch.setattr(data, "load_fashion_mnist", lambda root=None: fake)


def _ids(x):
    from benchmarks.tasks.fmnist import MEAN, STD

    first = x.reshape(len(x), -1)[:, 0]
    return set(torch.round((first * STD + MEAN) * 255).long().tolist())


def test_validation_is_disjoint_from_training_and_test_comes_from_the_test_images(fake_fashion):
    (xt, _), (xv, _), (xs, _) = fashion_splits(50, 20, 30, CPU)
    train, val, test = _ids(xt), _ids(xv), _ids(xs)
    assert len(train) == 50 and len(val) == 20 and not train & val
    assert test == set(range(100, 130))
    (xt2, _), _, _ = fashion_splits(50, 20, 30, CPU, flat=False)
    assert xt2.shape == (50, 1, 28, 28) and _ids(xt2) == train  # the same images, unflattened
    with pytest.raises(ValueError, match="train_size"):
        fashion_splits(60, 20, 30, CPU)


def test_pooled_splits_are_disjoint(fake_fashion):
    parts = [_ids(x) for x, _ in pooled_splits(40, 20, 40, CPU)]
    assert [len(p) for p in parts] == [40, 20, 40]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_the_paper_preset_runs_at_the_papers_temperature_and_set_overrides_it():
    assert TASKS["fmnist-mlp"]("paper", CPU).hp["temperature"] == 0.0
    assert TASKS["fmnist-mlp"]("quick", CPU).hp["temperature"] == 1e-5
    assert TASKS["fmnist-mlp"]("paper", CPU, {"temperature": 1e-5}).hp["temperature"] == 1e-5  # the tempered variant
    assert TASKS["fmnist-icnn"]("paper", CPU).hp["temperature"] == 1e-6  # not inherited


def test_two_spirals_validation_leaves_training_and_test_points_unchanged():
    task = TASKS["two-spirals"]("smoke", CPU, {})
    task.prepare()
    assert len(task.y_val) == 2 * task.settings["val_per_class"]
    from benchmarks.tasks.spirals import two_spirals

    g = torch.Generator().manual_seed(1234)
    x, _ = two_spirals(task.settings["train_per_class"], task.hp["noise"], g)
    torch.testing.assert_close(task.x_train, x)
    assert not any(torch.equal(v, t) for v in task.x_val[:5] for t in task.x_test)


def test_wall_fraction_counts_rows_and_entries_on_the_wall():
    from benchmarks.methods import wall_fraction

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.9999, 0]]))
        model[1].weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [0.0, 0.2, -0.9995]]))
    assert wall_fraction(model, {"0.weight": ("ball", {"radius": 3.0})}) == pytest.approx(2 / 3)
    assert wall_fraction(model, {"1.weight": "box"}) == pytest.approx(3 / 6)
    assert wall_fraction(model, {"0.weight": "nonnegative"}) == pytest.approx(9 / 12)
    assert wall_fraction(model, {"0.weight": "sphere"}) is None  # an equality set has no wall
