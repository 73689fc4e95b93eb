"""The benchmarks' deep ensembles and multi-chain methods: the package's
:class:`constrained_sgld.DeepEnsemble` (every task's evaluation reads its averaged prediction
unchanged), and each member's batches drawn from a task with its own batch order."""

from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import torch
from torch import Tensor

from constrained_sgld.ensemble import DeepEnsemble
from constrained_sgld.ensemble import member_batches as _concatenated

__all__ = ["DeepEnsemble", "member_batches"]


def member_batches(task, generators: Sequence[torch.Generator]) -> Iterator[Tuple[Tensor, Tensor]]:
    """Each step's batches of the members, one per generator (each member's own batch order),
    concatenated: the training input of a :class:`DeepEnsemble` and its targets."""
    return _concatenated([task.batches(g) for g in generators])
