"""The noise streams: one ``torch.Generator`` per device (and per shard rank), seeded from the
optimiser's seed and chain id, and the standard normal draws of a step."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor


class NoiseStreamsMixin:
    """Reproducible, device-bound noise for `ConstrainedLangevinOptimizer`."""

    def _generator(self, device: torch.device, shard: Optional[int] = None) -> torch.Generator:
        """The noise stream for ``device`` (and for the pieces of sharded parameters on rank ``shard``).

        Streams are named by device type and the order in which this optimiser first used devices
        of that type ("cpu", "cuda:0", "cuda:1", ... with "cuda:0" the first GPU used, whatever its
        index): DDP ranks, each on its own GPU, therefore share one stream, and a checkpoint saved
        on one rank resumes on any other. Seeds depend on ``seed``, ``chain_id``, that order and the
        shard rank only.
        """
        device = torch.device(device)
        key = self._stream_key(device, shard)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._stream_seed(key))
            pending = self._pending_rng.pop(key, None)
            if pending is not None:
                gen.set_state(pending.cpu() if isinstance(pending, Tensor) else pending)
            self._generators[key] = gen
        return gen

    def _stream_key(self, device: torch.device, shard: Optional[int]) -> str:
        binding = (str(device), shard)
        key = self._stream_keys.get(binding)
        if key is None:
            if shard is not None:
                key = f"{self._stream_key(device, None)}/shard{shard}"
            elif device.type == "cpu":
                key = "cpu"
            else:
                used = sum(1 for d, s in self._stream_keys if s is None and torch.device(d).type == device.type)
                key = f"{device.type}:{used}"
            self._stream_keys[binding] = key
        return key

    def _stream_seed(self, key: str) -> int:
        device_key, _, shard = key.partition("/shard")
        ordinal = -1 if device_key == "cpu" else int(device_key.rpartition(":")[2])
        # distinct, reproducible streams: odd multipliers keep the low 32 bits (all that the CPU's
        # Mersenne Twister uses) distinct across chains, devices and shards
        seed = self._base_seed + 0x9E3779B97F4A7C15 * self._chain_id + 1_000_003 * (ordinal + 1)
        if shard:
            seed += 7_777_777 * (int(shard) + 1)
        return seed % (2**63)

    def _standard_normal_like(self, params: List[Tensor], shards: Optional[List[Optional[int]]] = None) -> List[Tensor]:
        """N(0, 1) tensors shaped like ``params``: one draw per (device, dtype, shard rank), split
        into views. ``shards[i]`` is this rank for a sharded parameter's piece (its own stream)."""
        shards = shards or [None] * len(params)
        buckets: Dict[Tuple[torch.device, torch.dtype, Optional[int]], List[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.device, p.dtype, shards[i]), []).append(i)
        out: List[Optional[Tensor]] = [None] * len(params)
        for (device, dtype, shard), idx in buckets.items():
            sizes = [params[i].numel() for i in idx]
            flat = torch.randn(sum(sizes), generator=self._generator(device, shard), device=device, dtype=dtype)
            for i, chunk in zip(idx, flat.split(sizes)):
                out[i] = chunk.view(params[i].shape)
        return out  # type: ignore[return-value]

    # subclasses
