"""Using the samples: keep parameter snapshots along a Langevin run, average predictions over them,
and a cyclical step-size schedule (cyclical SG-MCMC, Zhang et al. 2020).

A run at temperature > 0 produces a chain of parameter values; averaging the model's predictive
distribution over the chain (after burn-in, thinned) is the Monte Carlo estimate of the posterior
predictive ``p(y | x, data) = E_theta[p(y | x, theta)]``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["SampleCollector", "CyclicalLR", "OptimiseThenSample"]


class SampleCollector:
    """Keeps snapshots of ``model``'s parameters (and buffers) along a run.

    Call `update()` after each optimiser step. Step ``k`` (counted from 1) is kept when
    ``k > burn_in`` and ``(k - burn_in) % thin == 0``; with ``max_samples`` set, the oldest snapshot
    is dropped when a new one would exceed it (memory stays bounded; the kept samples are the most
    recent ones). Snapshots live on ``device`` (default CPU, so GPU memory is not spent on them).

    Args:
        model: the module being trained or sampled.
        burn_in: steps ignored at the start.
        thin: keep every ``thin``-th step after burn-in.
        max_samples: the most snapshots kept (None: unbounded).
        device: where snapshots are stored.
        buffers: also snapshot buffers (BatchNorm statistics); default True.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        burn_in: int = 0,
        thin: int = 1,
        max_samples: Optional[int] = None,
        device: Any = "cpu",
        buffers: bool = True,
    ) -> None:
        for name, value, low in (("burn_in", burn_in, 0), ("thin", thin, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"SampleCollector: {name} must be an int >= {low}, got {value!r}")
        if max_samples is not None and (not isinstance(max_samples, int) or isinstance(max_samples, bool) or max_samples < 1):
            raise ValueError(f"SampleCollector: max_samples must be an int >= 1 or None, got {max_samples!r}")
        self.model = model
        self.burn_in, self.thin, self.max_samples = burn_in, thin, max_samples
        self.device = torch.device(device)
        self.buffers = buffers
        self.steps = 0
        self.samples: Deque[Dict[str, Tensor]] = deque()

    def __len__(self) -> int:
        return len(self.samples)

    def _snapshot(self) -> Dict[str, Tensor]:
        named = dict(self.model.named_parameters())
        if self.buffers:
            named.update(dict(self.model.named_buffers()))
        return {k: v.detach().to(self.device, copy=True) for k, v in named.items()}

    @torch.no_grad()
    def update(self) -> bool:
        """Count one step; snapshot the model if this step is kept. Returns whether it was kept."""
        self.steps += 1
        k = self.steps - self.burn_in
        if k <= 0 or k % self.thin != 0:
            return False
        self.samples.append(self._snapshot())
        if self.max_samples is not None and len(self.samples) > self.max_samples:
            self.samples.popleft()
        return True

    @torch.no_grad()
    def predict(self, inputs: Any, fn: Optional[Callable[[Tensor], Tensor]] = None, batch: bool = False) -> Tensor:
        """The average of ``fn(model(inputs))`` over the kept samples (default ``fn``: softmax over
        the last dim, i.e. the posterior predictive class probabilities).

        The model is evaluated with each sample through ``torch.func.functional_call`` (the model's
        own parameters are left untouched); it is put in eval mode for the duration.
        """
        if not self.samples:
            raise RuntimeError("SampleCollector.predict: no samples kept yet (check burn_in / thin and call update())")
        fn = fn if fn is not None else (lambda out: torch.softmax(out, dim=-1))
        device = next(self.model.parameters()).device
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        was_training = self.model.training
        self.model.eval()
        try:
            total = None
            for sample in self.samples:
                moved = {k: v.to(device, non_blocking=True) for k, v in sample.items()}
                out = fn(torch.func.functional_call(self.model, moved, args))
                total = out if total is None else total + out
        finally:
            self.model.train(was_training)
        return total / len(self.samples)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "steps": self.steps,
            "burn_in": self.burn_in,
            "thin": self.thin,
            "max_samples": self.max_samples,
            "samples": list(self.samples),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.burn_in, self.thin, self.max_samples = int(state["burn_in"]), int(state["thin"]), state["max_samples"]
        self.samples = deque({k: v.to(self.device) for k, v in s.items()} for s in state["samples"])


class CyclicalLR(LRScheduler):
    """Cyclical cosine step size with an exploration and a sampling stage per cycle (cSG-MCMC).

    Over ``total_steps`` split into ``cycles`` equal cycles, step ``k`` (from 0) uses
    ``lr = base_lr / 2 * (cos(pi * r) + 1)`` with ``r = (k mod L) / L`` and ``L = ceil(total_steps /
    cycles)`` (Zhang et al., ICLR 2020). In the first ``exploration`` fraction of each cycle the
    groups' ``temperature`` is set to 0 (optimisation: move to a new mode fast); in the rest it is
    the group's own temperature (sampling). `sampling()` says which stage the *next* step is in,
    so a [`SampleCollector`][constrained_sgld.SampleCollector] can be updated only then.

    Call ``scheduler.step()`` after each ``optimizer.step()``, as every torch scheduler.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, cycles: int = 4, exploration: float = 0.5, last_epoch: int = -1):
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"CyclicalLR: total_steps must be an int >= 1, got {total_steps!r}")
        if not isinstance(cycles, int) or not 1 <= cycles <= total_steps:
            raise ValueError(f"CyclicalLR: cycles must be an int in [1, total_steps], got {cycles!r}")
        if not 0.0 <= exploration < 1.0:
            raise ValueError(f"CyclicalLR: exploration must be in [0, 1), got {exploration!r}")
        self.total_steps, self.cycles, self.exploration = total_steps, cycles, float(exploration)
        self.cycle_length = math.ceil(total_steps / cycles)
        _remember_temperatures(optimizer)
        super().__init__(optimizer, last_epoch)

    def _position(self, k: int) -> float:
        return (k % self.cycle_length) / self.cycle_length

    def sampling(self) -> bool:
        """True when the next optimiser step is in a sampling stage."""
        return self._position(max(self.last_epoch, 0)) >= self.exploration

    def get_lr(self) -> List[float]:
        k = max(self.last_epoch, 0)
        factor = 0.5 * (math.cos(math.pi * self._position(k)) + 1.0)
        _set_temperatures(self.optimizer, sampling=self._position(k) >= self.exploration)
        return [base * factor for base in self.base_lrs]


def _remember_temperatures(optimizer: torch.optim.Optimizer) -> None:
    """Each group's own temperature, kept as ``initial_temperature`` (as torch keeps ``initial_lr``)."""
    for group in optimizer.param_groups:
        group.setdefault("initial_temperature", group.get("temperature", 0.0))


def _set_temperatures(optimizer: torch.optim.Optimizer, sampling: bool) -> None:
    """Each group at its own temperature when ``sampling``, else at 0 (pure optimisation)."""
    for group in optimizer.param_groups:
        if "temperature" in group:
            group["temperature"] = group["initial_temperature"] if sampling else 0.0


class OptimiseThenSample(LRScheduler):
    """Optimise first, then sample from where the optimisation ended: the warm start of
    ensemble-started chains (MILE, Sommer et al. ICLR 2025) and of chains started from a MAP run.

    The first ``optimise_steps`` steps run at temperature 0 with the groups' lr (the optimiser is then
    an optimiser: at T = 0 the underdamped scheme is SGD with momentum, on the set where the group has
    one); every later step runs at the group's own temperature with ``sample_lr`` (a number for every
    group, a list with one per group, or None: the groups' lr). The momentum and the preconditioner's
    state carry over the switch. `sampling()` says which stage the *next* step is in, so that a
    [`SampleCollector`][constrained_sgld.SampleCollector] keeps only samples.

    ``lr_lambda`` shapes the optimisation stage as :class:`~torch.optim.lr_scheduler.LambdaLR` does:
    step ``k`` (from 0) of that stage uses ``lr * lr_lambda(k)`` (a warm-up and cosine decay to a
    converged MAP, say); None keeps the groups' lr constant. Like LambdaLR's, the function is not
    part of ``state_dict``: pass the same one to the scheduler that loads it.

    Call ``scheduler.step()`` after each ``optimizer.step()``, as every torch scheduler; ``state_dict``
    resumes it. With a :class:`~constrained_sgld.DeepEnsemble` each member is its own chain.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, optimise_steps: int, sample_lr: Any = None,
        lr_lambda: Optional[Callable[[int], float]] = None, last_epoch: int = -1,
    ):
        if not isinstance(optimise_steps, int) or isinstance(optimise_steps, bool) or optimise_steps < 0:
            raise ValueError(f"OptimiseThenSample: optimise_steps must be an int >= 0, got {optimise_steps!r}")
        if lr_lambda is not None and not callable(lr_lambda):
            raise ValueError(f"OptimiseThenSample: lr_lambda must be a function of the step or None, got {lr_lambda!r}")
        groups = len(optimizer.param_groups)
        if sample_lr is None or isinstance(sample_lr, (int, float)) and not isinstance(sample_lr, bool):
            sample_lrs = [sample_lr] * groups
        elif isinstance(sample_lr, (list, tuple)) and len(sample_lr) == groups:
            sample_lrs = list(sample_lr)
        else:
            raise ValueError(f"OptimiseThenSample: sample_lr must be a number, None or a list of {groups} (one per group), got {sample_lr!r}")
        for lr in sample_lrs:
            if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr)):
                raise ValueError(f"OptimiseThenSample: sample_lr must be positive and finite, got {lr!r}")
        if not any("temperature" in g for g in optimizer.param_groups):
            raise ValueError(f"OptimiseThenSample: {type(optimizer).__name__} has no temperature to switch on (use one of this package's optimisers)")
        self.optimise_steps = optimise_steps
        self.sample_lrs = sample_lrs
        self.lr_lambda = lr_lambda
        _remember_temperatures(optimizer)
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> Dict[str, Any]:
        # a function (often a closure) does not pickle, and it is code, not state (LambdaLR's rule)
        return {k: v for k, v in super().state_dict().items() if k != "lr_lambda"}

    def sampling(self) -> bool:
        """True when the next optimiser step samples."""
        return max(self.last_epoch, 0) >= self.optimise_steps

    def get_lr(self) -> List[float]:
        sampling = self.sampling()
        _set_temperatures(self.optimizer, sampling)
        if not sampling:
            if self.lr_lambda is None:
                return list(self.base_lrs)
            factor = float(self.lr_lambda(max(self.last_epoch, 0)))
            return [base * factor for base in self.base_lrs]
        return [base if lr is None else float(lr) for base, lr in zip(self.base_lrs, self.sample_lrs)]
