"""binary-fmnist: the surrogate is the expected sign network, the binary evaluations are the networks
they claim to be, and the clipping baselines stay in the box; generated data only."""

import math

import pytest
import torch

from benchmarks.methods import METHODS
from benchmarks.tasks import TASKS
from benchmarks.tasks.binary import BinarySurrogateMLP

CPU = torch.device("cpu")


def test_surrogate_with_exactly_binary_means_is_the_sign_network():
    """With every mean at +-1 the pre-activations have no variance: the surrogate's erf neurons are
    sign neurons, so the surrogate and the binarised network compute the same logits (odd width: no
    pre-activation is exactly 0, where sign and erf differ)."""
    torch.manual_seed(0)
    model = BinarySurrogateMLP(depth=4, width=15, inputs=12, classes=3)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.copy_(torch.where(torch.rand_like(layer.weight) < 0.5, 1.0, -1.0))
    x = torch.randn(50, 12)
    weights = [layer.weight.detach() for layer in model.layers]
    torch.testing.assert_close(model(x), model.binary_forward(x, weights), atol=1e-5, rtol=0)


def test_surrogate_neuron_is_the_mean_of_a_stochastic_sign():
    """One hidden unit: the surrogate's value is E[sign(sum_j w_j x_j)] over weights drawn with
    P(+1) = (1 + m) / 2, up to the Gaussian approximation (many inputs: within a few hundredths)."""
    torch.manual_seed(1)
    n = 400
    m = (torch.rand(1, n) * 2 - 1) * 0.9
    x = torch.randn(1, n)
    layer = BinarySurrogateMLP(depth=2, width=1, inputs=n, classes=1)
    with torch.no_grad():
        layer.layers[0].weight.copy_(m)
    mean = m @ x.T
    var = (1 - m * m) @ (x * x).T
    surrogate = torch.erf(mean / torch.sqrt(2 * var)).item()
    draws = torch.where(torch.rand(20000, n) < (1 + m) / 2, 1.0, -1.0)
    empirical = torch.sign(draws @ x.T).mean().item()
    assert abs(surrogate - empirical) < 0.05, (surrogate, empirical)
    hidden = torch.erf(torch.nn.functional.linear(x, m) / torch.sqrt(2 * torch.nn.functional.linear(x * x, 1 - m * m)))
    assert hidden.item() == pytest.approx(surrogate, rel=1e-5)


@pytest.mark.parametrize("init, low", [("near_binary", 0.9), ("centred", 0.0)])
def test_inits(init, low):
    task = TASKS["binary-fmnist"]("smoke", CPU, {"init": init})
    model = task.build_model()
    for layer in model.layers:
        a = layer.weight.detach().abs()
        assert a.max() <= 1.0
        if init == "near_binary":
            assert a.min() >= low
        else:
            assert a.max() <= 1 / math.sqrt(layer.weight.shape[1]) + 1e-6  # PyTorch's default init


def test_a_bad_init_is_named():
    task = TASKS["binary-fmnist"]("smoke", CPU, {"init": "gaussian"})
    with pytest.raises(ValueError, match="init"):
        task.prepare()


@pytest.mark.parametrize("method", ["sgd-momentum-clip", "adam-clip"])
def test_clipping_baselines_stay_in_the_box(method):
    task = TASKS["binary-fmnist"]("smoke", CPU, {})
    model = task.build_model()
    optim, hp, constraints = METHODS[method].build(model, task, 0)
    assert set(constraints) == {f"layers.{i}.weight" for i in range(len(model.layers))}
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    for _ in range(20):
        optim.zero_grad()
        (torch.nn.functional.cross_entropy(model(x), y) * 100).backward()  # large steps: they must be clipped
        optim.step()
    assert max(layer.weight.detach().abs().max().item() for layer in model.layers) <= 1.0
    assert any((layer.weight.detach().abs() == 1.0).any() for layer in model.layers)  # the clip was needed
