"""The init claims at depth (docs/benchmarks.md, "Initialisation at depth"): the ICNN task's depth
and init settings build the network they name, and the sweep's scripts read results as documented;
generated data only."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from benchmarks.methods import METHODS
from benchmarks.tasks import TASKS
from benchmarks.tasks.binary import BinarySurrogateMLP
from constrained_sgld.init import icnn_moments

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_icnn_depth_names_every_non_negative_layer_and_computes_the_documented_net(depth):
    """``depth`` hidden layers; the non-negative set on every hidden-to-hidden and the output weight;
    without skips the logits are ``W_d relu(... relu(W_1 relu(A_0 x + b_0) + b_1) ...) + b_d``."""
    task = TASKS["fmnist-icnn"]("smoke", CPU, {"depth": depth, "skip": False})
    model = task.build_model()
    constrained = task.constrained(model, "nonnegative")
    assert set(constrained) == {f"hidden.{k}.weight" for k in range(depth - 1)} | {"output.weight"}
    assert not any(name.startswith("skip") for name, _ in model.named_parameters())
    x = torch.randn(7, 784)
    z = F.relu(model.input(x))
    for layer in model.hidden:
        z = F.relu(layer(z))
    torch.testing.assert_close(model(x), model.output(z))
    assert len(list(model.pre_activations(x))) == depth


def test_icnn_skips_reach_every_non_negative_layer():
    model = TASKS["fmnist-icnn"]("smoke", CPU, {"depth": 3}).build_model()
    assert len(model.skip_hidden) == 2 and model.skip_output is not None


def test_icnn_init_draws_the_authors_start():
    """``init=icnn``: LeCun-normal first layer with a zero bias; every non-negative layer positive,
    with icnn_'s bias and (over 256 x 256 draws) its mean weight."""
    torch.manual_seed(0)
    model = TASKS["fmnist-icnn"]("smoke", CPU, {"depth": 4, "init": "icnn"}).build_model()
    assert model.input.bias.abs().max() == 0
    assert model.input.weight.std().item() == pytest.approx(784**-0.5, rel=0.02)
    for layer in model.convex_layers():
        mean, _, bias = icnn_moments(layer.in_features)
        assert layer.weight.min() > 0
        assert layer.bias.detach().eq(bias).all()
    hidden = model.hidden[0].weight
    assert hidden.mean().item() == pytest.approx(icnn_moments(256)[0], rel=0.05)


def test_icnn_default_init_is_pytorchs_and_a_bad_init_is_named():
    torch.manual_seed(0)
    model = TASKS["fmnist-icnn"]("smoke", CPU, {}).build_model()
    assert model.hidden[0].weight.min() < 0  # projected by each method, not by the task
    with pytest.raises(ValueError, match="--set init"):
        TASKS["fmnist-icnn"]("smoke", CPU, {"init": "he"}).prepare()
    with pytest.raises(ValueError, match="--set depth"):
        TASKS["fmnist-icnn"]("smoke", CPU, {"depth": 0}).build_model()


@pytest.mark.parametrize("method", ["n-cola-od", "n-cola-ud", "sgd-clamp"])
def test_icnn_methods_keep_every_non_negative_layer_non_negative(method):
    # depth 3 from the icnn start: the default start's signal grows fourfold a layer (docs/results.md),
    # and the optimisers refuse the non-finite gradients of a deeper one
    task = TASKS["fmnist-icnn"]("smoke", CPU, {"depth": 3, "skip": False, "init": "icnn"})
    model = task.build_model()
    with torch.no_grad():
        model.output.weight[0].zero_()  # on the boundary: a step must not leave the set
    optim, _, constraints = METHODS[method].build(model, task, 0)
    assert set(constraints) == set(task.constrained(model, "nonnegative"))
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    for _ in range(10):
        optim.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optim.step()
    assert min(layer.weight.min().item() for layer in model.convex_layers()) >= 0


def test_binary_hidden_states_are_the_forward_passes_layers():
    torch.manual_seed(0)
    model = BinarySurrogateMLP(depth=5, width=16, inputs=12, classes=3)
    x = torch.randn(4, 12)
    states = list(model.hidden_states(x))
    assert len(states) == 4 and all(s.abs().max() <= 1 for s in states)
    m = model.layers[-1].weight
    torch.testing.assert_close(model(x), F.linear(states[-1], m) / math.sqrt(16))


def test_signal_fidelity_and_depth_scale():
    """Fidelity 1 for a layer that keeps the images' pair structure (a rotation), 0 once every pair
    looks alike; an exponential decay exp(-l / 5) gives the depth scale 5 and is lost (< 0.1) at
    layer 12, the first with exp(-l / 5) < 0.1."""
    signal = script("depth_signal")
    torch.manual_seed(0)
    x = torch.randn(40, 30)
    q, _ = torch.linalg.qr(torch.randn(30, 30))
    reference = signal.pair_correlations(x)
    assert signal.fidelity(signal.pair_correlations(x @ q), reference) == pytest.approx(1.0, abs=1e-5)
    assert signal.fidelity(signal.pair_correlations(torch.ones(40, 30)), reference) == 0.0
    lost, scale = signal.lost_at([math.exp(-layer / 5) for layer in range(1, 30)])
    assert lost == 12 and scale == pytest.approx(5.0)
    assert signal.lost_at([1.0] * 10) == (None, math.inf)


def test_depth_report_compares_depths_at_the_same_budget(tmp_path):
    """scripts/depth_report.py on hand-made results: depths read at the fewest epochs any depth ran
    (a longer depth also at its end), the test accuracy at the best validation epoch, a diverged run
    as untrained, an unfinished one left out, and the epochs to the loss target for the ICNN."""

    def write(depth, init, runs, epochs):
        folder = tmp_path / f"fmnist-icnn-d{depth}-{init}" / "fmnist-icnn"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"task": "fmnist-icnn", "settings": {"epochs": epochs}, "runs": runs}))

    def run(method, seed, losses, vals, tests, status="done"):
        rows = [{"epoch": e + 1, "train_loss": lo, "val_accuracy": v, "test_accuracy": t} for e, (lo, v, t) in enumerate(zip(losses, vals, tests))]
        return {"method": method, "seed": seed, "status": status, "epochs": rows}

    write(2, "icnn", [run("sgd-clamp", s, [1.0, 0.4], [0.7, 0.6], [0.70, 0.65]) for s in range(3)], 2)
    write(2, "default", [run("sgd-clamp", s, [5.0], [0.1], [0.1], status="diverged at epoch 1: loss nan") for s in range(3)], 2)
    write(4, "icnn", [run("sgd-clamp", 0, [1.0, 0.9, 0.3], [0.5, 0.6, 0.9], [0.5, 0.6, 0.9]),
                      run("sgd-clamp", 1, [2.0, float("nan")], [0.1, 0.1], [0.1, 0.1], status="diverged at epoch 2: loss nan"),
                      run("sgd-clamp", 2, [1.0], [0.5], [0.5], status="running")], 3)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "depth_report.py"), str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "depth.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| sgd-clamp | icnn |"))
    depth2, depth4 = [c.strip() for c in row.strip("|").split("|")][2:4]
    assert depth2 == "0.40 ± 0.00 / 0.700 ± 0.000 / 2"  # the best validation epoch is the first
    assert depth4 == "0.90 ± 0.00 / 0.600 ± 0.000 / 3 (1/2 seeds) (1/2 seeds diverged: the others) (n=2)"  # at epoch 2
    default = next(line for line in text.splitlines() if line.startswith("| sgd-clamp | default |"))
    assert [c.strip() for c in default.strip("|").split("|")][2] == "diverged (3/3 seeds)"
    assert "After all 3 epochs at depth 4" in text and "| sgd-clamp | icnn | 0.30 ± 0.00 / 0.900 ± 0.000 |" in text
    assert (tmp_path / "depth.png").stat().st_size > 0
