"""Last-layer Laplace (Daxberger, Kristiadi, Immer, Eschenhagen, Bauer & Hennig, "Laplace Redux",
NeurIPS 2021), through their library laplace-torch: the baseline of that paper's experiments.

At the end of training the weights are the MAP estimate (the ``laplace`` method trains SGD-momentum
with weight decay, the Gaussian prior the approximation assumes). The approximation is their
recommended default:

- a Gaussian over the last linear layer's weights and bias only, the rest fixed at the MAP;
- its precision the generalised Gauss-Newton of the training loss in Kronecker-factored form
  (KFAC), plus the prior precision;
- an isotropic prior (one precision, the prior that weight decay assumes), its precision chosen
  by maximising the marginal likelihood (``optimize_prior_precision`` with ``method="marglik"``,
  ``prior_structure="scalar"``);
- the prediction averages the softmax over 100 draws of the last layer from that Gaussian (a fixed
  generator). The network is linear in its last layer, so this is the GLM predictive of the paper,
  integrated by Monte Carlo instead of the probit approximation: laplace-torch's probit path forms
  every input's Jacobian and took 17 ms per input on one CPU thread, the draws 0.7 ms.

It is used like :class:`constrained_sgld.SampleCollector`: ``update()`` after every step,
``predict(x)`` and ``len()`` at the end. The fit runs at the first ``predict`` after the last step
(one pass over the training set), so nothing is stored while training; ``len()`` is 1 (one
Gaussian, not a set of samples).

laplace-torch is optional (``pip install laplace-torch``). Its package metadata requires
torchvision, which it does not import for this use; where torchvision cannot be installed beside
the pinned torch, ``pip install --no-deps laplace-torch`` with its other requirements works.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor, nn

from .modes import evaluating


class LaplaceCollector:
    def __init__(self, model: nn.Module, x_train: Tensor, y_train: Tensor, batch_size: int = 128, draws: int = 100, seed: int = 0):
        self.model, self.x_train, self.y_train, self.batch_size = model, x_train, y_train, batch_size
        self.draws, self.seed = draws, seed
        self.steps = 0
        self._la: Any = None

    def __len__(self) -> int:
        return 1 if self.steps > 0 else 0

    def update(self) -> bool:
        """Count one step; the weights moved, so a fit made before is stale."""
        self.steps += 1
        self._la = None
        return False  # nothing for a chain trace to record

    def fit(self) -> Any:
        """The last-layer KFAC Laplace approximation at the current weights, its prior precision
        by marginal likelihood. Returns laplace-torch's object (``prior_precision`` and the rest)."""
        from laplace import Laplace

        data = torch.utils.data.TensorDataset(self.x_train, self.y_train)
        loader = torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=False)
        with evaluating(self.model):
            la = Laplace(self.model, "classification", subset_of_weights="last_layer", hessian_structure="kron")
            la.fit(loader)
            la.optimize_prior_precision(method="marglik", pred_type="glm", prior_structure="scalar")
        self._la = la
        return la

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The Laplace predictive: the mean over ``draws`` last layers drawn from the Gaussian (the
        same draws for every call: torch's generator seeded with ``seed`` in a fork) of the softmax."""
        # laplace-torch draws from torch's global generator: seed it inside a fork, so that the
        # draws repeat and the run's random stream is left as it was
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            if self._la is None:
                with torch.enable_grad():
                    self.fit()
            torch.manual_seed(self.seed)
            with evaluating(self.model):
                return self._la(x, pred_type="nn", link_approx="mc", n_samples=self.draws)

    def state_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self._la = None
