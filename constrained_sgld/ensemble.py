"""A deep ensemble (Lakshminarayanan, Pritzel & Blundell 2017) as one module, so that one optimiser
trains every member in one loop, and so that the members, once trained, become independent Markov
chains under one of this package's samplers: ensemble-started chains (MILE, Sommer et al. ICLR 2025;
SMILE, ICML 2026)::

    ensemble = DeepEnsemble([Net() for _ in range(5)])
    optim = ConstrainedUnderdampedSGLD(ensemble.named_parameters(), lr=0.03, momentum=0.9, temperature=1 / N)
    sched = OptimiseThenSample(optim, optimise_steps=5 * len(loaders[0]), sample_lr=0.01)
    collector = SampleCollector(ensemble, burn_in=..., thin=...)
    for epoch in range(6):
        for x, y in member_batches(loaders):          # each member its own batch, concatenated
            optim.zero_grad(); F.cross_entropy(ensemble(x), y).backward(); optim.step(); sched.step()
            collector.update()
    probs = collector.predict(x_test)                  # pooled over the chains and their snapshots

Training (``ensemble.train()``): the input is every member's own batch, concatenated along the
batch dimension, ``(members * batch, ...)``; member ``m`` sees chunk ``m``, and the output is their
outputs in the same order. A mean loss over the rows is then the mean of the members' own mean
losses, and a gradient hook scales the gradient by the number of members, so that each member gets
exactly the gradient of its own mean loss, as if trained alone: the members never interact, and a
temperature means what it means for one model (``1 / N``: each member's chain targets the Bayesian
posterior of the mean loss). They differ by their inits, their batch orders and their noise (each
parameter's noise is its own draw), so each member's trajectory is an independent chain.

Evaluation (``ensemble.eval()``): ``log(mean_m softmax(out_m))``, log-probabilities whose softmax is
the ensemble's predictive distribution (a classifier's; ``average="mean"`` averages raw outputs
instead, for regression). A [`SampleCollector`][constrained_sgld.SampleCollector] on the ensemble
keeps every member's weights per snapshot, so its ``predict`` is the pooled posterior predictive:
the mean over chains and snapshots. [`ChainTrace`][constrained_sgld.ChainTrace] on
``ensemble.members[m]`` records member ``m``'s chain for R-hat across members.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["DeepEnsemble", "member_batches"]

_AVERAGES = ("probabilities", "mean")


class DeepEnsemble(nn.Module):
    """``members`` (at least 2 modules of the same interface) trained side by side as one module.

    Args:
        members: the models; their current weights are the members' starts (independent inits).
        average: what evaluation averages: ``"probabilities"`` (classifiers: the log of the mean
            softmax over the last dim) or ``"mean"`` (the mean output).
    """

    def __init__(self, members: Sequence[nn.Module], average: str = "probabilities"):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"DeepEnsemble: members must hold at least 2 models, got {len(members)}")
        if average not in _AVERAGES:
            raise ValueError(f"DeepEnsemble: average must be one of {_AVERAGES}, got {average!r}")
        self.members = nn.ModuleList(members)
        self.average = average

    @property
    def size(self) -> int:
        return len(self.members)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            if len(x) % self.size:
                raise ValueError(
                    f"DeepEnsemble in training takes its {self.size} members' batches concatenated "
                    f"(member_batches); got {len(x)} rows, not a multiple of {self.size}"
                )
            stacked = torch.cat([m(chunk) for m, chunk in zip(self.members, x.chunk(self.size))])
            if stacked.requires_grad:
                size = self.size
                stacked.register_hook(lambda g: g * size)  # the mean over members -> each member's own gradient
            return stacked
        outputs = [m(x) for m in self.members]
        if self.average == "mean":
            return torch.stack(outputs).mean(0)
        probs = torch.stack([torch.softmax(z.double(), -1) for z in outputs]).mean(0)
        return probs.clamp_min(1e-300).log().to(outputs[0].dtype)


def member_batches(loaders: Sequence[Iterable[Tuple[Tensor, Tensor]]]) -> Iterator[Tuple[Tensor, Tensor]]:
    """Each step's batches of the members, one ``(inputs, targets)`` from each of ``loaders`` (one
    per member, each with its own shuffling, as a deep ensemble's members see the data in their own
    orders), concatenated: the training input of a :class:`DeepEnsemble` and its targets. Stops
    with the shortest loader; every member's batch must have the same size (``drop_last=True``
    where the data does not divide)."""
    for parts in zip(*loaders):
        sizes = {len(x) for x, _ in parts}
        if len(sizes) > 1:
            raise ValueError(f"member_batches: the members' batches differ in size {sorted(sizes)}; use drop_last=True")
        yield torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
