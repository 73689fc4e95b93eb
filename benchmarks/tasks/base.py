"""What every benchmark task provides, and the shared classification task on in-memory tensors."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Task:
    """One data set, one model, and the methods that fit them.

    A task is configured by a *preset* (``smoke``, ``quick``, ``paper``: sizes, epochs, batch) and by
    hyper-parameters (``HPARAMS``, overridable from the command line). The runner calls, in order:
    ``prepare`` once, then per method and seed ``build_model``, and per epoch ``batches`` and
    ``evaluate``. Metrics are ``accuracy`` (higher is better) or ``bpc`` (bits per character, lower).
    """

    name: str = ""
    description: str = ""
    data_source: str = ""
    metric: str = "accuracy"
    # constraint families this task defines ("circle", "orthogonal"); decides which methods apply
    families: Tuple[str, ...] = ()
    presets: Dict[str, Dict[str, Any]] = {}
    hparams: Dict[str, Any] = {}

    def __init__(self, preset: str, device: torch.device, overrides: Optional[Dict[str, Any]] = None):
        if preset not in self.presets:
            raise ValueError(f"task {self.name!r} has no preset {preset!r}; choose from {sorted(self.presets)}")
        self.preset_name = preset
        self.settings = dict(self.presets[preset])
        self.hp = dict(self.hparams)
        for key, value in (overrides or {}).items():
            if key in self.settings:
                self.settings[key] = value
            elif key in self.hp:
                self.hp[key] = value
            else:
                raise ValueError(
                    f"--set {key}: task {self.name!r} has no such setting; settings: {sorted(self.settings)}, "
                    f"hyper-parameters: {sorted(self.hp)}"
                )
        self.device = device

    # ---- to implement
    def prepare(self) -> None:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def constrained(self, model: nn.Module, family: str) -> Dict[str, Any]:
        """Exact parameter name -> constraint spec for ``family``."""
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batches(self, generator: torch.Generator) -> Iterator[Tuple[Any, Tensor]]:
        raise NotImplementedError

    def loss(self, model: nn.Module, inputs: Any, targets: Tensor) -> Tuple[Tensor, Tensor]:
        """Mean training loss and the number of correct predictions (0 where that means nothing)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        raise NotImplementedError

    def scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Optional[Any]:
        """An lr scheduler stepped once per batch, or None (constant lr)."""
        return None

    # ---- helpers
    @property
    def epochs(self) -> int:
        return int(self.settings["epochs"])

    @property
    def eval_every(self) -> int:
        return int(self.settings.get("eval_every", 1))


class ClassificationTask(Task):
    """Inputs and labels held as tensors on the device; cross-entropy loss, accuracy metric."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.y_train) / self.settings["batch_size"])

    def batches(self, generator: torch.Generator) -> Iterator[Tuple[Tensor, Tensor]]:
        batch = self.settings["batch_size"]
        order = torch.randperm(len(self.y_train), generator=generator).to(self.device)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            yield self.x_train[idx], self.y_train[idx]

    def loss(self, model, inputs, targets):
        logits = model(inputs)
        return F.cross_entropy(logits, targets), (logits.argmax(1) == targets).sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        model.eval()
        probs = torch.cat([torch.softmax(model(self.x_test[i : i + 1000]).double(), -1) for i in range(0, len(self.y_test), 1000)])
        model.train()
        scores = classification_scores(probs, self.y_test)
        return {"test_loss": scores["nll"], "test_accuracy": scores["accuracy"], "test_ece": scores["ece"]}

    @torch.no_grad()
    def evaluate_posterior(self, collector) -> Dict[str, float]:
        """Accuracy, NLL and ECE of the prediction averaged over a SampleCollector's samples."""
        probs = torch.cat([collector.predict(self.x_test[i : i + 1000]).double() for i in range(0, len(self.y_test), 1000)])
        scores = classification_scores(probs, self.y_test)
        return {"posterior_accuracy": scores["accuracy"], "posterior_nll": scores["nll"], "posterior_ece": scores["ece"], "posterior_samples": len(collector)}


def classification_scores(probs: Tensor, y: Tensor, bins: int = 15) -> Dict[str, float]:
    """Accuracy, negative log-likelihood and expected calibration error (``bins`` equal-width bins
    of the top probability: ``sum_b n_b / N |accuracy_b - confidence_b|``, Guo et al. 2017)."""
    confidence, predicted = probs.max(1)
    right = (predicted == y).double()
    nll = -torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).mean()
    which = (confidence * bins).long().clamp(max=bins - 1)
    count = torch.zeros(bins, dtype=torch.float64, device=probs.device).index_add_(0, which, torch.ones_like(right))
    acc = torch.zeros_like(count).index_add_(0, which, right)
    conf = torch.zeros_like(count).index_add_(0, which, confidence.double())
    ece = (acc - conf).abs().sum() / len(y)
    return {"accuracy": right.mean().item(), "nll": nll.item(), "ece": ece.item()}
