"""What the optimisers need from ``torch.distributed``: the shared seed, and sharded parameters.

- **Replicas (DDP).** DistributedDataParallel averages the gradients, so every rank holds the same
  parameters and gradients; every rank must then add the *same* noise. The optimisers' noise streams
  depend only on ``seed``, ``chain_id`` and the order in which devices are first used (never on a
  device's index, which differs between ranks), and with ``seed=None`` rank 0's seed is broadcast
  at construction (a collective: every rank constructs the optimiser).
- **Shards (FSDP2 ``fully_shard``, DTensor).** A sharded parameter is a ``DTensor`` whose ranks each
  hold a piece. The optimisers update the local piece, with noise from a stream of its own per rank
  (pieces are different coordinates, so their noise must be independent). This is only right for a
  set that acts piece by piece ([`Constraint.shard_local()`][constrained_sgld.Constraint.shard_local]): element-wise sets, and norms over
  rows when the rows stay whole. Any other sharded parameter is refused at construction.
- **Parallel chains.** ``chain_id`` gives each process a distinct, reproducible noise stream with
  everything else identical (see docs/distributed.md).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["dtensor_type", "is_dtensor", "local", "sharded_dims", "shard_rank", "broadcast_seed"]


_UNSET = object()
_DTENSOR: object = _UNSET  # torch's DTensor class once looked up (None: this torch has none)


def dtensor_type():
    """torch's DTensor class, or None where this torch has none (looked up once: step asks often)."""
    global _DTENSOR
    if _DTENSOR is _UNSET:
        try:
            from torch.distributed.tensor import DTensor  # torch >= 2.4
        except ImportError:
            try:
                from torch.distributed._tensor import DTensor  # older releases
            except ImportError:
                DTensor = None
        _DTENSOR = DTensor
    return _DTENSOR


def is_dtensor(t: Tensor) -> bool:
    cls = dtensor_type()
    return cls is not None and isinstance(t, cls)


def local(t: Tensor) -> Tensor:
    """The local piece of a DTensor (sharing its storage, so in-place updates land); else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def sharded_dims(t: Tensor) -> Tuple[int, ...]:
    """The tensor dims a DTensor is split along (empty for a plain or fully replicated tensor)."""
    if not is_dtensor(t):
        return ()
    dims = []
    for placement in t.placements:
        if placement.is_shard():
            dims.append(placement.dim % max(t.ndim, 1))
    return tuple(sorted(set(dims)))


def shard_rank(t: Tensor) -> Optional[int]:
    """This process's global rank when ``t`` is a sharded DTensor (its pieces need their own noise)."""
    if not sharded_dims(t):
        return None
    return torch.distributed.get_rank()


def broadcast_seed(seed: int) -> int:
    """Rank 0's ``seed`` on every rank of the default process group (unchanged without one)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return seed
    box = [seed]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])
