"""SWAG (Maddox, Garipov, Izmailov, Vetrov & Wilson, NeurIPS 2019): a Gaussian over the weights
from the moments of the SGD iterates, and the prediction averaged over draws from it.

The maintained implementations do not install beside this project's pinned torch without their
frameworks (torch-uncertainty's imports Lightning; laplace-torch's torchvision), so this is the
paper's recipe, written from its equations:

- over the collection phase, every ``thin``-th step after ``burn_in``, the running mean of the
  weights ``theta_bar`` and of their squares, and the last ``rank`` deviations ``theta_i - theta_bar_i``
  (the columns of ``D``);
- a draw is ``theta = theta_bar + Sigma_diag^{1/2} z_1 / sqrt(2) + D z_2 / sqrt(2 (K - 1))``, with
  ``Sigma_diag = max(mean(theta^2) - theta_bar^2, var_clamp)``, ``z_1 ~ N(0, I_d)``, ``z_2 ~ N(0, I_K)``
  and ``K`` the deviations kept (the paper's eq. for SWAG with the low-rank plus diagonal covariance);
- the prediction is the average of ``softmax(model(x; theta_s))`` over ``draws`` draws, made once
  (a fixed generator) after the last update.

Differences from the paper's runs: the moments are collected at the method's constant lr, not under
an SWA schedule, and batch-norm statistics are not recomputed for the draws (the MLP tasks have none).
It is used like :class:`constrained_sgld.SampleCollector`: ``update()`` after every step,
``predict(x)`` and ``len()`` (the draws) at the end.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, List, Optional

import torch
from torch import Tensor, nn

from .modes import evaluating


class SWAGCollector:
    def __init__(self, model: nn.Module, burn_in: int, thin: int, rank: int = 20, draws: int = 30, var_clamp: float = 1e-30, seed: int = 0):
        self.model, self.burn_in, self.thin = model, burn_in, max(1, thin)
        self.rank, self.draws, self.var_clamp, self.seed = rank, draws, var_clamp, seed
        self.steps, self.n = 0, 0
        self.mean: Optional[Tensor] = None
        self.sq_mean: Optional[Tensor] = None
        self.deviations: Deque[Tensor] = deque(maxlen=rank)
        self._drawn: Optional[List[Dict[str, Tensor]]] = None

    def _flat(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1).double() for p in self.model.parameters()])

    def __len__(self) -> int:
        return self.draws if self.n >= 2 else 0

    @torch.no_grad()
    def update(self) -> bool:
        """Count one step; fold the weights into the moments if this step is collected."""
        self.steps += 1
        k = self.steps - self.burn_in
        if k <= 0 or k % self.thin != 0:
            return False
        theta = self._flat()
        if self.mean is None:
            self.mean, self.sq_mean = torch.zeros_like(theta), torch.zeros_like(theta)
        self.n += 1
        self.mean += (theta - self.mean) / self.n
        self.sq_mean += (theta * theta - self.sq_mean) / self.n
        self.deviations.append((theta - self.mean).float())
        self._drawn = None
        return False  # nothing for a chain trace to record: SWAG's draws come at the end

    @torch.no_grad()
    def _draw(self) -> List[Dict[str, Tensor]]:
        if self.n < 2:
            raise RuntimeError("SWAGCollector.predict: fewer than 2 collected iterates (check burn_in / thin)")
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        sd = (self.sq_mean - self.mean**2).clamp_min(self.var_clamp).sqrt()
        d = torch.stack(list(self.deviations), 1).double()  # (params, K)
        k = d.shape[1]
        names = [name for name, _ in self.model.named_parameters()]
        shapes = [p.shape for _, p in self.model.named_parameters()]
        dtype = next(self.model.parameters()).dtype
        out = []
        for _ in range(self.draws):
            theta = self.mean + sd * torch.randn(sd.shape, generator=g, dtype=torch.float64) / 2**0.5
            if k > 1:
                theta = theta + d @ torch.randn(k, generator=g, dtype=torch.float64) / (2 * (k - 1)) ** 0.5
            pieces = torch.split(theta, [s.numel() for s in shapes])
            out.append({n: piece.reshape(s).to(dtype) for n, piece, s in zip(names, pieces, shapes)})
        return out

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The SWAG predictive: the mean over the draws of ``softmax(model(x; theta_s))``."""
        if self._drawn is None:
            self._drawn = self._draw()
        device = x.device
        total = None
        with evaluating(self.model):
            for params in self._drawn:
                out = torch.softmax(torch.func.functional_call(self.model, {k: v.to(device) for k, v in params.items()}, (x,)), -1)
                total = out if total is None else total + out
        return total / len(self._drawn)

    def state_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps, "n": self.n, "mean": self.mean, "sq_mean": self.sq_mean, "deviations": list(self.deviations)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.steps, self.n, self.mean, self.sq_mean = int(state["steps"]), int(state["n"]), state["mean"], state["sq_mean"]
        self.deviations = deque(state["deviations"], maxlen=self.rank)
        self._drawn = None
