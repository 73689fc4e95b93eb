"""Binary weights through a continuous surrogate: the ``box`` set on Fashion-MNIST.

A stochastic binary network has weights ``w = +-1`` with ``P(w = +1) = (1 + m) / 2`` (so the mean is
``m`` in [-1, 1]) and stochastic sign neurons. Its continuous surrogate (the Gaussian, or central
limit, approximation used by expectation backpropagation, Soudry et al. 2014; probabilistic binary
networks, Peters & Welling 2018; and analysed by Stamatescu, Gallagher & Rotter, "Critical
initialisation in continuous approximations of binary neural networks", ICLR 2020) propagates the
expected neuron:

    mu_i    = sum_j m_ij x_j                     (mean of the pre-activation)
    s2_i    = sum_j (1 - m_ij^2) x_j^2           (its variance, from the weights' randomness)
    x'_i    = E[sign(h_i)] = erf(mu_i / sqrt(2 s2_i))     for h_i ~ N(mu_i, s2_i)

and the output layer's mean pre-activation, divided by ``sqrt(fan_in)``, is the logit. The means
``m`` are the trained parameters, held in ``box(-1, 1)``. The source's claim: for deeper networks
the means must start near +-1 (``init.near_binary_``); the usual centred init trains poorly.

Three networks are evaluated (``evaluate``):

- the surrogate itself (``test_accuracy``);
- the sign-binarised network: weights ``sign(m)``, neurons ``sign`` (``test_binarised_accuracy``);
- binary networks with weights drawn from ``P(+1) = (1 + m) / 2`` and sign neurons, over
  ``binary_draws`` draws (``test_sampled_accuracy``, mean, and ``test_sampled_accuracy_sd``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from constrained_sgld import init

from .base import PRECONDITIONER_HPARAMS, ClassificationTask
from .fmnist import fashion_splits

VARIANCE_FLOOR = 1e-6  # keeps the surrogate finite where every weight is exactly +-1


class BinarySurrogateMLP(nn.Module):
    """``depth`` bias-free layers (784 -> width -> ... -> 10); the weights are the means ``m``."""

    def __init__(self, depth: int, width: int, inputs: int = 784, classes: int = 10):
        super().__init__()
        sizes = [inputs] + [width] * (depth - 1) + [classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))

    def hidden_states(self, x: Tensor):
        """The expected neurons of each hidden layer in turn, input to output (signal propagation
        at init, scripts/depth_signal.py, reads them)."""
        for layer in self.layers[:-1]:
            m = layer.weight
            var = F.linear(x * x, 1.0 - m * m).clamp_min(VARIANCE_FLOOR)
            x = torch.erf(F.linear(x, m) / torch.sqrt(2.0 * var))
            yield x

    def forward(self, x: Tensor) -> Tensor:
        for x in self.hidden_states(x):
            pass
        m = self.layers[-1].weight
        return F.linear(x, m) / math.sqrt(m.shape[1])

    @torch.no_grad()
    def binary_forward(self, x: Tensor, weights) -> Tensor:
        """The binary network with the given +-1 weights (one per layer) and sign neurons."""
        last = len(self.layers) - 1
        for i, w in enumerate(weights):
            pre = F.linear(x, w)
            if i == last:
                return pre / math.sqrt(w.shape[1])
            x = torch.where(pre >= 0, 1.0, -1.0).to(pre.dtype)
        return x


class BinaryFashion(ClassificationTask):
    name = "binary-fmnist"
    description = (
        "continuous surrogate of a stochastic binary network (Gaussian approximation, erf neurons), depth 10, "
        "width 256, on Fashion-MNIST; the weight means in box(-1, 1)"
    )
    data_source = "Fashion-MNIST, Debian package dataset-fashion-mnist"
    families = ("box",)
    default_methods = ("sgd-momentum-clip", "adam-clip", "b-cola-od", "b-cola-ud")
    presets = {
        "smoke": {"depth": 4, "width": 32, "train_size": 1000, "val_size": 500, "test_size": 500, "epochs": 1, "batch_size": 128, "eval_every": 1},
        "quick": {"depth": 10, "width": 256, "train_size": 10000, "val_size": 5000, "test_size": 10000, "epochs": 10, "batch_size": 128, "eval_every": 1},
        "paper": {"depth": 16, "width": 512, "train_size": 55000, "val_size": 5000, "test_size": 10000, "epochs": 50, "batch_size": 128, "eval_every": 1},
    }
    hparams = {
        "init": "near_binary",  # or "centred" (PyTorch's default uniform(+-1/sqrt(fan_in))): the comparison
        "spread": 0.1,  # init.near_binary_'s spread: |m| in [0.9, 1]
        "momentum_lr": 0.01,  # sgd-momentum-clip; ours, not tuned
        "momentum": 0.9,
        "adam_lr": 1e-3,  # adam-clip: torch's default
        "ud_lr": 0.01,  # b-cola-ud: the same lr and momentum as sgd-momentum-clip
        "ud_momentum": 0.9,
        "od_lr": 0.1,  # b-cola-od: ud_lr / (1 - momentum)
        "temperature": 0.0,
        "precond_lr": 5e-3,  # *-rms: chosen on the validation split (docs/results/adaptive/binary-fmnist-grid.md)
        **PRECONDITIONER_HPARAMS,
        "binary_draws": 10,  # sampled binary networks per evaluation
    }

    def prepare(self) -> None:
        if self.hp["init"] not in ("near_binary", "centred"):
            raise ValueError(f"--set init: 'near_binary' or 'centred', got {self.hp['init']!r}")
        sizes = (self.settings["train_size"], self.settings["val_size"], self.settings["test_size"])
        (self.x_train, self.y_train), (self.x_val, self.y_val), (self.x_test, self.y_test) = fashion_splits(*sizes, self.device)

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        model = BinarySurrogateMLP(self.settings["depth"], self.settings["width"]).to(self.device)
        if self.hp["init"] == "near_binary":
            for layer in model.layers:
                init.near_binary_(layer.weight, spread=float(self.hp["spread"]))
        return model

    def constrained(self, model, family) -> Dict[str, Any]:
        assert family == "box"
        return {f"layers.{i}.weight": ("box", {"lower": -1.0, "upper": 1.0}) for i in range(len(model.layers))}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        out = super().evaluate(model)
        means = [layer.weight.detach().clamp(-1.0, 1.0) for layer in model.layers]
        n = self.eval_chunk

        def accuracy(weights) -> float:
            right = sum(
                (model.binary_forward(self.x_test[i : i + n], weights).argmax(1) == self.y_test[i : i + n]).sum().item()
                for i in range(0, len(self.y_test), n)
            )
            return right / len(self.y_test)

        out["test_binarised_accuracy"] = accuracy([torch.where(m >= 0, 1.0, -1.0).to(m.dtype) for m in means])
        gen = torch.Generator(device=self.device).manual_seed(0)  # the same draws for every method and epoch
        sampled = []
        for _ in range(int(self.hp["binary_draws"])):
            draws = [torch.where(torch.rand(m.shape, generator=gen, device=m.device, dtype=m.dtype) < (1.0 + m) / 2, 1.0, -1.0).to(m.dtype) for m in means]
            sampled.append(accuracy(draws))
        out["test_sampled_accuracy"] = sum(sampled) / len(sampled)
        out["test_sampled_accuracy_sd"] = float(torch.tensor(sampled).std()) if len(sampled) > 1 else 0.0
        return out
