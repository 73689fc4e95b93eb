"""Two interleaved spirals (generated): the papers' overview experiment."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import nn

from .base import ClassificationTask


def two_spirals(n_per_class: int, noise: float, generator: torch.Generator):
    """Points on two interleaved spiral arms (angle 0.5 to 3 pi + 0.5) with Gaussian noise; labels 0/1."""
    t = torch.rand(n_per_class, generator=generator) * 3 * math.pi + 0.5
    arm = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / (3 * math.pi)
    x = torch.cat([arm, -arm]) + noise * torch.randn(2 * n_per_class, 2, generator=generator)
    y = torch.cat([torch.zeros(n_per_class, dtype=torch.long), torch.ones(n_per_class, dtype=torch.long)])
    return x, y


class TwoSpirals(ClassificationTask):
    name = "two-spirals"
    description = "two noisy interleaved spirals, few training points, 2-100-100-2 MLP; orthogonal, circle and non-negative constraints"
    data_source = "generated (fixed seed)"
    families = ("orthogonal", "circle", "nonnegative")
    presets = {
        "smoke": {"train_per_class": 100, "val_per_class": 250, "test_per_class": 500, "epochs": 20, "batch_size": 25, "eval_every": 5},
        "quick": {"train_per_class": 100, "val_per_class": 1000, "test_per_class": 2000, "epochs": 600, "batch_size": 25, "eval_every": 25},
        # the paper's figure: 10,000 epochs (its other settings are ours)
        "paper": {"train_per_class": 100, "val_per_class": 1000, "test_per_class": 5000, "epochs": 10000, "batch_size": 25, "eval_every": 100},
    }
    hparams = {
        "noise": 0.08,
        "lr": 0.2,
        "momentum_lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 1e-3,
        "adam_lr": 3e-3,
        "ud_lr": 0.05,
        "ud_momentum": 0.9,
        "od_lr": 0.2,
        "temperature": 1e-3,
        "radius": 1.0,
        "orthogonal_scale": 1.0,
    }

    def prepare(self) -> None:
        g = torch.Generator().manual_seed(1234)  # the same data for every seed and method
        x, y = two_spirals(self.settings["train_per_class"], self.hp["noise"], g)
        xt, yt = two_spirals(self.settings["test_per_class"], self.hp["noise"], g)
        self.x_train, self.y_train = x.to(self.device), y.to(self.device)
        self.x_test, self.y_test = xt.to(self.device), yt.to(self.device)
        # validation: a fresh draw from the same distribution (its own generator, so that the
        # training and test points are those of the runs before validation existed)
        xv, yv = two_spirals(self.settings["val_per_class"], self.hp["noise"], torch.Generator().manual_seed(4321))
        self.x_val, self.y_val = xv.to(self.device), yv.to(self.device)

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        return nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 2))

    def constrained(self, model, family) -> Dict[str, Any]:
        if family == "orthogonal":
            return {"2.weight": ("orthogonal", {"scale": self.hp["orthogonal_scale"]})}
        if family == "nonnegative":  # the hidden-to-hidden and output weights: an input-convex net
            return {"2.weight": "nonnegative", "4.weight": "nonnegative"}
        return {name: ("circle", {"radius": self.hp["radius"]}) for name in ("0.weight", "2.weight", "4.weight")}

    GRID = 80  # decision boundary drawn on a GRID x GRID lattice over [-LIM, LIM]^2
    LIM = 1.3

    @torch.no_grad()
    def snapshot(self, model: nn.Module) -> Dict[str, Any]:
        """The trained model's probability of class 1 on a grid, for ``boundaries.png``."""
        model.eval()
        axis = torch.linspace(-self.LIM, self.LIM, self.GRID)
        xx, yy = torch.meshgrid(axis, axis, indexing="xy")
        grid = torch.stack([xx.flatten(), yy.flatten()], 1).to(self.device)
        prob = torch.softmax(model(grid), 1)[:, 1].view(self.GRID, self.GRID)
        model.train()
        # compact: each grid row as a string of percentages (a JSON list of floats is 50x larger)
        rows = [" ".join(str(int(round(100 * v))) for v in row) for row in prob.cpu().tolist()]
        return {"lim": self.LIM, "prob1_percent_rows": rows}
