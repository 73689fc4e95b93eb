"""Posterior predictives of the posterior round (``fmnist-cnn``) besides SWAG and Laplace: the
snapshots of a cyclical multi-chain sampler, IVON's variational posterior and MC dropout.

Each is used as :class:`constrained_sgld.SampleCollector` is by the runner: ``update()`` after every
optimiser step (True when it kept something), ``predict(x)`` (class probabilities averaged over the
posterior's members), ``len()`` (how many were averaged) and ``state_dict`` for checkpoints.

- :class:`CyclicalCollector`: under :class:`constrained_sgld.CyclicalLR`, the snapshots at the end of
  every cycle's sampling stage (``samples_per_cycle`` of them, evenly spaced back from the cycle's
  last step; Zhang et al. 2020 took 3 per cycle). With a :class:`benchmarks.ensemble.DeepEnsemble`
  of chains, a snapshot holds every chain, and its prediction is already their average: the chains
  are pooled with equal weights.
- :class:`IVONCollector`: IVON's Gaussian posterior (Shen et al. 2024, ``ivon-opt``), ``draws``
  weight samples drawn once with a fixed generator after the last step (the authors' "Bayesian model
  averaging" prediction, against the prediction at the mean that the model columns report).
- :class:`MCDropoutCollector`: ``passes`` forward passes with dropout on (Gal & Ghahramani 2016),
  each prediction with the same fixed generator.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from constrained_sgld import CyclicalLR, SampleCollector


class CyclicalCollector:
    def __init__(self, model: nn.Module, scheduler: CyclicalLR, samples_per_cycle: int = 3):
        if not isinstance(samples_per_cycle, int) or samples_per_cycle < 1:
            raise ValueError(f"samples_per_cycle must be an int >= 1, got {samples_per_cycle!r}")
        self.scheduler, self.samples_per_cycle = scheduler, samples_per_cycle
        self.inner = SampleCollector(model)  # every step it is told about is kept
        length = scheduler.cycle_length
        first = math.ceil(scheduler.exploration * length)  # the cycle's first sampling step
        gap = max(1.0, (length - first) / samples_per_cycle)  # the sampling stage split evenly
        # positions within a cycle: the last step (always: a cycle too short for a sampling stage
        # still gives its end point), and gap, 2 gap, ... steps before it within the sampling stage
        back = [length - 1 - round(i * gap) for i in range(samples_per_cycle)]
        self.positions = {p for i, p in enumerate(back) if i == 0 or p >= first}

    def __len__(self) -> int:
        return len(self.inner)

    def update(self) -> bool:
        """After ``optimizer.step()`` and ``scheduler.step()``: keep the step just taken where it
        is one of the cycle's sampling positions."""
        k = self.scheduler.last_epoch - 1  # the step just taken (the scheduler has counted it)
        if k % self.scheduler.cycle_length not in self.positions:
            return False
        return self.inner.update()

    def predict(self, x: Tensor) -> Tensor:
        return self.inner.predict(x)

    def state_dict(self) -> Dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class IVONCollector:
    def __init__(self, model: nn.Module, optimizer, draws: int = 20, seed: int = 0):
        self.model, self.optimizer, self.draws, self.seed = model, optimizer, draws, seed
        self._samples: Optional[SampleCollector] = None

    def __len__(self) -> int:
        return self.draws

    def update(self) -> bool:
        self._samples = None  # the posterior moved: draw again at the next predict
        return False

    @torch.no_grad()
    def _draw(self) -> SampleCollector:
        collector = SampleCollector(self.model)
        with torch.random.fork_rng(devices=[p.device for p in self.model.parameters() if p.device.type == "cuda"][:1]):
            torch.manual_seed(self.seed)
            for _ in range(self.draws):
                with self.optimizer.sampled_params():  # the weights are a draw inside the block
                    collector.update()
        return collector

    def predict(self, x: Tensor) -> Tensor:
        if self._samples is None:
            self._samples = self._draw()
        return self._samples.predict(x)

    def state_dict(self) -> Dict[str, Any]:
        return {}  # the posterior is the optimiser's state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._samples = None


class MCDropoutCollector:
    def __init__(self, model: nn.Module, passes: int = 20, seed: int = 0):
        self.model, self.passes, self.seed = model, passes, seed

    def __len__(self) -> int:
        return self.passes

    def update(self) -> bool:
        return False

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        was_training = self.model.training
        self.model.train()  # dropout on (the CNN has no batch norm whose statistics this would move)
        try:
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(self.seed)
                probs: List[Tensor] = [torch.softmax(self.model(x), -1) for _ in range(self.passes)]
        finally:
            self.model.train(was_training)
        return torch.stack(probs).mean(0)

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
