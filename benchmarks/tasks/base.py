"""What every benchmark task provides, and the shared classification task on in-memory tensors."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F


#: what a task adds to ``HPARAMS`` to run the preconditioned methods (their defaults: RMSprop's)
PRECONDITIONER_HPARAMS = {
    "precond_alpha": 0.99,  # torch.optim.RMSprop's default
    "precond_eps": 1e-8,  # torch.optim.RMSprop's default
    "precond_adapt_steps": None,  # continual adaptation (pSGLD); exact once frozen (N steps)
    "precond_constrained_lr_factor": 1.0,
}


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
    # model variants this task can build besides its own model (``"lstm"``); decides which methods apply
    variants: Tuple[str, ...] = ()
    # the methods run when --methods is not given (None: every method that applies)
    default_methods: Optional[Tuple[str, ...]] = None
    presets: Dict[str, Dict[str, Any]] = {}
    hparams: Dict[str, Any] = {}
    # hyper-parameters that a preset sets differently from ``hparams`` (the paper's temperature 0)
    preset_hparams: Dict[str, Dict[str, Any]] = {}
    # record every step's training loss (``step_loss`` in each epoch row), not only the epoch's mean
    record_step_loss: bool = False
    # its loss, batches and evaluation take a DeepEnsemble as they take one model (members' batches
    # concatenated, the averaged prediction read as the model's), besides ClassificationTask's own
    ensembles: bool = False

    def __init__(self, preset: str, device: torch.device, overrides: Optional[Dict[str, Any]] = None):
        if preset not in self.presets:
            raise ValueError(f"task {self.name!r} has no preset {preset!r}; choose from {sorted(self.presets)}")
        self.preset_name = preset
        self.settings = dict(self.presets[preset])
        self.hp = dict(self.hparams, **self.preset_hparams.get(preset, {}))
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

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        """The task's model, or one of its ``variants`` (a baseline model such as an LSTM)."""
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

    def gradient_profile(self, model: nn.Module) -> Optional[Dict[str, Any]]:
        """Gradient norms through time or depth on a fixed batch (``{"axis", "quantity", "x",
        "norms"}``), recorded at the start and the end of training; None where the task has none."""
        return None

    def lr_factor(self, total_steps: int) -> Optional[Callable[[int], float]]:
        """The lr's factor at each step of a run of ``total_steps`` (LambdaLR's function), or None
        (constant lr). Ensemble-started chains shape their optimisation stage with it."""
        return None

    def scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Optional[Any]:
        """An lr scheduler stepped once per batch (LambdaLR over ``lr_factor``), or None (constant lr)."""
        factor = self.lr_factor(self.epochs * steps_per_epoch)
        return None if factor is None else torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

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

    eval_chunk = 1000  # examples per forward pass when evaluating

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        """Loss, accuracy and ECE on the test set, and on the validation set where the task has one
        (``x_val``, ``y_val``: carved from the training data; the report picks "best epoch" by it)."""
        sets = [("test", self.x_test, self.y_test)]
        if getattr(self, "x_val", None) is not None:
            sets.insert(0, ("val", self.x_val, self.y_val))
        out = {}
        model.eval()
        for prefix, x, y in sets:
            n = self.eval_chunk
            probs = torch.cat([torch.softmax(model(x[i : i + n]).double(), -1) for i in range(0, len(y), n)])
            scores = classification_scores(probs, y)
            out.update({f"{prefix}_loss": scores["nll"], f"{prefix}_accuracy": scores["accuracy"], f"{prefix}_ece": scores["ece"], f"{prefix}_brier": scores["brier"]})
            if prefix == "test":
                out["test_selective_accuracy"] = scores["selective_accuracy"]
        model.train()
        return out

    # where a task sets them (the Fashion-MNIST tasks): out-of-distribution inputs (``x_ood``,
    # normalised as the task's own), and the image shape and blank-pixel value for the rotations
    x_ood: Optional[Tensor] = None
    image_shape: Optional[Tuple[int, ...]] = None
    blank_pixel: float = 0.0
    # where a task sets it: the (mean, std) its images were normalised with, so that the synthetic
    # corruptions (uncertainty.corrupt) act on pixels in [0, 1]; None: no corruption columns
    pixel_stats: Optional[Tuple[float, float]] = None

    def _shift_images(self) -> Tensor:
        """The test images the shifted sets (rotations, corruptions) are made from: the first
        ``shift_size`` (a task setting; all of them where the task has none)."""
        return self.x_test[: self.settings.get("shift_size", len(self.x_test))]

    @torch.no_grad()
    def _log_probs(self, predict, x: Tensor) -> Tensor:
        n = self.eval_chunk
        return torch.cat([predict(x[i : i + n]) for i in range(0, len(x), n)])

    @torch.no_grad()
    def evaluate_uncertainty(self, model_or_collector, prefix: str) -> Dict[str, Any]:
        """At the end of training, for the trained model (``prefix`` "test") or a SampleCollector's
        posterior average ("posterior"): the temperature-scaled NLL (the temperature fitted on the
        validation split), and where the task has them, out-of-distribution detection against
        ``x_ood`` (AUROC and FPR95 of the max probability and of the predictive entropy) and the
        accuracy, NLL and ECE on the test set rotated by each of ``uncertainty.ROTATIONS``."""
        from .. import uncertainty as u

        if hasattr(model_or_collector, "predict") and not isinstance(model_or_collector, nn.Module):
            def predict(x):
                return model_or_collector.predict(x).double().clamp_min(1e-12).log()
        else:
            model_or_collector.eval()

            def predict(x):
                return torch.log_softmax(model_or_collector(x).double(), -1)
        try:
            out: Dict[str, Any] = {}
            test = self._log_probs(predict, self.x_test)
            out[f"{prefix}_reliability"] = u.reliability(test.exp(), self.y_test)
            if getattr(self, "x_val", None) is not None:
                t = u.fit_temperature(self._log_probs(predict, self.x_val), self.y_val)
                out.update({f"{prefix}_temperature": t, f"{prefix}_nll_calibrated": u.calibrated_nll(test, self.y_test, t)})
            if self.x_ood is not None:
                probs_in, probs_out = test.exp(), self._log_probs(predict, self.x_ood).exp()
                for name, score in (("", u.max_probability), ("_entropy", u.negative_entropy)):
                    d = u.ood_detection(score(probs_in), score(probs_out))
                    out.update({f"{prefix}_ood_auroc{name}": d["auroc"], f"{prefix}_ood_fpr95{name}": d["fpr95"]})
            if self.image_shape is not None:
                rotated = {}
                shift = self._shift_images()
                y_shift = self.y_test[: len(shift)]
                images = shift.reshape(len(shift), *self.image_shape)
                for angle in u.ROTATIONS:
                    x = u.rotate(images, angle, self.blank_pixel).reshape(shift.shape)
                    scores = classification_scores(self._log_probs(predict, x).exp(), y_shift)
                    rotated[str(angle)] = {k: scores[k] for k in ("accuracy", "nll", "ece", "brier")}
                out[f"{prefix}_rotated"] = rotated
                if self.pixel_stats is not None:
                    mean, std = self.pixel_stats
                    pixels = images * std + mean
                    corrupted: Dict[str, Any] = {}
                    for kind, levels in u.CORRUPTIONS.items():
                        corrupted[kind] = {}
                        for severity in range(1, len(levels) + 1):
                            x = ((u.corrupt(pixels, kind, severity) - mean) / std).reshape(shift.shape)
                            scores = classification_scores(self._log_probs(predict, x).exp(), y_shift)
                            corrupted[kind][str(severity)] = {k: scores[k] for k in ("accuracy", "nll", "ece", "brier")}
                    out[f"{prefix}_corrupted"] = corrupted
            return out
        finally:
            if isinstance(model_or_collector, nn.Module):
                model_or_collector.train()

    @torch.no_grad()
    def test_log_likelihood(self, model: nn.Module) -> float:
        """Mean log-likelihood of the test labels under ``model``: the chain summary that the
        tempered runs record per posterior draw (for ESS and R-hat; nothing is chosen by it)."""
        model.eval()
        n = self.eval_chunk
        total = sum(
            torch.log_softmax(model(self.x_test[i : i + n]).double(), -1).gather(1, self.y_test[i : i + n, None]).sum().item()
            for i in range(0, len(self.y_test), n)
        )
        model.train()
        return total / len(self.y_test)

    @torch.no_grad()
    def evaluate_posterior(self, collector) -> Dict[str, float]:
        """Accuracy, NLL and ECE of the prediction averaged over a SampleCollector's samples."""
        n = self.eval_chunk
        probs = torch.cat([collector.predict(self.x_test[i : i + n]).double() for i in range(0, len(self.y_test), n)])
        scores = classification_scores(probs, self.y_test)
        out = {
            "posterior_accuracy": scores["accuracy"], "posterior_nll": scores["nll"], "posterior_ece": scores["ece"],
            "posterior_brier": scores["brier"], "posterior_selective_accuracy": scores["selective_accuracy"], "posterior_samples": len(collector),
        }
        if getattr(self, "x_val", None) is not None:  # what a posterior's hyper-parameters are tuned on
            val = torch.cat([collector.predict(self.x_val[i : i + n]).double() for i in range(0, len(self.y_val), n)])
            out["posterior_val_nll"] = classification_scores(val, self.y_val)["nll"]
        return out


def classification_scores(probs: Tensor, y: Tensor, bins: int = 15) -> Dict[str, float]:
    """Accuracy, negative log-likelihood, expected calibration error (``bins`` equal-width bins
    of the top probability: ``sum_b n_b / N |accuracy_b - confidence_b|``, Guo et al. 2017), the
    Brier score and the selective accuracy (:mod:`benchmarks.uncertainty`)."""
    from ..uncertainty import brier, selective_accuracy

    confidence, predicted = probs.max(1)
    right = (predicted == y).double()
    nll = -torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).mean()
    which = (confidence * bins).long().clamp(max=bins - 1)
    count = torch.zeros(bins, dtype=torch.float64, device=probs.device).index_add_(0, which, torch.ones_like(right))
    acc = torch.zeros_like(count).index_add_(0, which, right)
    conf = torch.zeros_like(count).index_add_(0, which, confidence.double())
    ece = (acc - conf).abs().sum() / len(y)
    return {"accuracy": right.mean().item(), "nll": nll.item(), "ece": ece.item(), "brier": brier(probs, y), "selective_accuracy": selective_accuracy(probs, y)}
