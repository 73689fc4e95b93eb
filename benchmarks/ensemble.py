"""A deep ensemble (Lakshminarayanan, Pritzel & Blundell 2017) as one module, so that any optimiser
trains it and every task's evaluation reads its averaged prediction unchanged.

Training (``model.train()``): the members' logits for the batch, stacked along the batch dimension,
``(members * batch, classes)``; :meth:`benchmarks.tasks.base.ClassificationTask.loss` repeats the
targets to match, so the loss is the mean of the members' own mean losses. A gradient hook scales
the gradient by the number of members, so each member gets exactly the gradient of its own loss, as
if trained alone: the members never interact. They start from independent inits and see the same
batches (the ensemble's diversity here comes from the init alone).

Evaluation (``model.eval()``): ``log(mean_m softmax(logits_m))``, whose softmax is the ensemble's
predictive distribution; accuracy, NLL, ECE and the uncertainty columns are then the ensemble's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class DeepEnsemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"DeepEnsemble: members must hold at least 2 models, got {len(members)}")
        self.members = nn.ModuleList(members)

    @property
    def size(self) -> int:
        return len(self.members)

    def forward(self, x: Tensor) -> Tensor:
        logits = [m(x) for m in self.members]
        if self.training:
            stacked = torch.cat(logits)
            if stacked.requires_grad:
                size = self.size
                stacked.register_hook(lambda g: g * size)  # the mean over members -> each member's own gradient
            return stacked
        probs = torch.stack([torch.softmax(z.double(), -1) for z in logits]).mean(0)
        return probs.clamp_min(1e-300).log().to(logits[0].dtype)
