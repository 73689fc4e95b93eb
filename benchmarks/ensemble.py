"""A deep ensemble (Lakshminarayanan, Pritzel & Blundell 2017) as one module, so that any optimiser
trains it and every task's evaluation reads its averaged prediction unchanged.

Training (``model.train()``): the input is every member's own batch, concatenated along the batch
dimension, ``(members * batch, ...)`` (:func:`member_batches` draws them, each member from its own
batch order, as the usual recipe shuffles the data per member); member ``m`` sees chunk ``m``, and
the output is their logits in the same order, so the task's mean loss is the mean of the members'
own mean losses. A gradient hook scales the gradient by the number of members, so each member gets
exactly the gradient of its own loss, as if trained alone: the members never interact. They differ
by their independent inits and their batch orders.

Evaluation (``model.eval()``): ``log(mean_m softmax(logits_m))``, whose softmax is the ensemble's
predictive distribution; accuracy, NLL, ECE and the uncertainty columns are then the ensemble's.
"""

from __future__ import annotations

from typing import Iterator, Sequence, Tuple

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
        if self.training:
            if len(x) % self.size:
                raise ValueError(f"DeepEnsemble in training takes its {self.size} members' batches concatenated; got {len(x)} rows")
            stacked = torch.cat([m(chunk) for m, chunk in zip(self.members, x.chunk(self.size))])
            if stacked.requires_grad:
                size = self.size
                stacked.register_hook(lambda g: g * size)  # the mean over members -> each member's own gradient
            return stacked
        logits = [m(x) for m in self.members]
        probs = torch.stack([torch.softmax(z.double(), -1) for z in logits]).mean(0)
        return probs.clamp_min(1e-300).log().to(logits[0].dtype)


def member_batches(task, generators: Sequence[torch.Generator]) -> Iterator[Tuple[Tensor, Tensor]]:
    """Each step's batches of the members, one per generator (each member's own batch order),
    concatenated: the training input of a :class:`DeepEnsemble` and its targets."""
    for parts in zip(*(task.batches(g) for g in generators)):
        yield torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
