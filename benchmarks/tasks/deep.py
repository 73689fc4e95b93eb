"""Depth: Fashion-MNIST through a deep plain tanh MLP (no normalisation, no skip connections).

The hidden-to-hidden matrices (square, width x width) are the constrained ones. With tanh and no
bias variance to speak of, an orthogonal matrix of scale 1 is the isometric choice: tanh'(0) = 1, so
the input-output Jacobian's singular values stay near 1 through depth (dynamical isometry: Saxe et al.
2014; Pennington, Schoenholz & Ganguli 2017, who show it for orthogonal weights with sigma_w = 1 and
small sigma_b at the edge of chaos). PyTorch's default init (variance 1 / (3 fan_in)) is far below
that scale, so through 32 tanh layers the signal and the gradient vanish.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import ClassificationTask
from .fmnist import fashion_splits


class DeepTanhMLP(nn.Module):
    """``depth`` linear layers (784 -> width, ``depth - 2`` x width -> width, width -> 10), tanh between."""

    def __init__(self, depth: int, width: int, inputs: int = 784, classes: int = 10):
        super().__init__()
        sizes = [inputs] + [width] * (depth - 1) + [classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor, keep=None) -> Tensor:
        for i, layer in enumerate(self.layers):
            pre = layer(x)
            if keep is not None:
                keep.append((x, pre))
            x = pre if i == len(self.layers) - 1 else torch.tanh(pre)
        return x


class DeepMLP(ClassificationTask):
    name = "deep-mlp"
    description = "deep plain tanh MLP (width 256, depth 32; --set depth=64) on Fashion-MNIST; orthogonal hidden-to-hidden matrices"
    data_source = "Fashion-MNIST, Debian package dataset-fashion-mnist"
    families = ("orthogonal",)
    default_methods = ("sgd-momentum", "adam", "sgd-momentum-orth-init", "geotorch-orthogonal", "o-cola-od", "o-cola-ud")
    presets = {
        "smoke": {"depth": 8, "width": 64, "train_size": 1000, "val_size": 500, "test_size": 500, "epochs": 1, "batch_size": 128, "eval_every": 1},
        "quick": {"depth": 32, "width": 256, "train_size": 10000, "val_size": 5000, "test_size": 10000, "epochs": 10, "batch_size": 128, "eval_every": 1},
        "paper": {"depth": 64, "width": 256, "train_size": 55000, "val_size": 5000, "test_size": 10000, "epochs": 50, "batch_size": 128, "eval_every": 1},
    }
    hparams = {
        "lr": 0.1,
        "momentum_lr": 0.01,  # sgd-momentum (both inits), sgd-wd, geotorch-orthogonal: ours, not tuned
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "adam_lr": 1e-3,  # torch's default
        "ud_lr": 0.01,  # the same lr and momentum as sgd-momentum (at T = 0 the same update off the set)
        "ud_momentum": 0.9,
        "od_lr": 0.1,  # ud_lr / (1 - momentum)
        "temperature": 0.0,  # the tempered variant: --set temperature=1e-5 (posterior columns)
        "scale": 1.0,  # orthogonal scale of the hidden matrices (isometry for tanh, see the module doc)
    }

    def prepare(self) -> None:
        sizes = (self.settings["train_size"], self.settings["val_size"], self.settings["test_size"])
        (self.x_train, self.y_train), (self.x_val, self.y_val), (self.x_test, self.y_test) = fashion_splits(*sizes, self.device)

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        return DeepTanhMLP(self.settings["depth"], self.settings["width"])

    def constrained(self, model, family) -> Dict[str, Any]:
        assert family == "orthogonal"
        last = len(model.layers) - 1
        return {f"layers.{i}.weight": ("orthogonal", {"scale": float(self.hp["scale"])}) for i in range(1, last)}

    def gradient_profile(self, model) -> Optional[Dict[str, Any]]:
        """``||dL/dW_l||`` for layers l = 1..depth on a fixed validation batch: the gradient with
        respect to each layer's effective weight (through any parametrisation), from the layer's
        input ``h`` and the loss's gradient ``delta`` at its pre-activation: ``dL/dW = delta^T h``."""
        keep = []
        logits = model(self.x_val[:256], keep=keep)
        loss = F.cross_entropy(logits, self.y_val[:256])
        deltas = torch.autograd.grad(loss, [pre for _, pre in keep])
        norms = [(d.T @ h).norm().item() for (h, _), d in zip(keep, deltas)]
        return {"axis": "layer l", "quantity": "||dL/dW_l||", "x": list(range(1, len(norms) + 1)), "norms": norms}
