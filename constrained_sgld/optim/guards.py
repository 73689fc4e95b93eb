"""Guards of a step: the finiteness screen (raise before anything changes, or, sync-free, skip on
the device) and the snapshot that a skipped sync-free step restores."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from .. import distributed


class GuardsMixin:
    """Finiteness checks and snapshots for `ConstrainedLangevinOptimizer`."""

    @staticmethod
    def _gradient_sum(grads: List[Tensor]) -> Tensor:
        """The sums of every gradient, as float32 on the first one's device: all finite unless some
        entry is inf or NaN, or (rarely) finite entries sum beyond the float range. One reduction
        per tensor, the cheapest full pass there is (a max-abs norm costs ~30x more on CPU)."""
        device = grads[0].device
        # summed in float32 at least: a float16 sum passes 65504 on ordinary gradients
        return torch.stack([g.sum(dtype=torch.promote_types(g.dtype, torch.float32)).to(device, torch.float32, non_blocking=True) for g in grads])

    def _raise_on_nonfinite(self, plan) -> None:
        grads = [distributed.local(g) for _, _, gs in plan for g in gs]
        if not grads:
            return
        # one host read per step (turn off with check_finite=False, or use sync_free=True); a
        # tripped screen is confirmed entry by entry before anything is reported (sums can overflow)
        if bool(self._gradient_sum(grads).isfinite().all()):
            return
        params = [p for _, ps, _ in plan for p in ps]
        bad = [self._label(p) for p, g in zip(params, grads) if not bool(g.isfinite().all())]
        if not bad:
            return
        raise FloatingPointError(
            f"non-finite gradient (inf or nan) in parameter(s) {', '.join(map(repr, bad))}; no parameter was changed"
        )

    @staticmethod
    def _on(flag: Tensor, like: Tensor) -> Tensor:
        return flag if flag.device == like.device else flag.to(like.device, non_blocking=True)

    def _all_finite(self, plan) -> Tensor:
        """One 0-dim boolean tensor (no host read): every gradient of the step is finite."""
        grads = [distributed.local(g) for _, _, gs in plan for g in gs]
        if not grads:
            return torch.ones((), dtype=torch.bool)
        # no exact confirmation without a host read: a step whose finite gradients sum beyond the
        # float range is skipped too (it would have been a wild step anyway)
        return self._gradient_sum(grads).isfinite().all()

    def _snapshot(self, plan) -> Dict[Tuple[torch.device, bool], Tuple[List[Tensor], List[Tensor]]]:
        """Per (device, floating point?): every tensor a step may change (parameters and their
        states, created first) and a copy of each."""
        current: Dict[Tuple[torch.device, bool], List[Tensor]] = {}
        for group, params, _ in plan:
            constraint = self._group_constraint(group)
            for p in params:
                state = self._param_state(p, constraint, group)
                for t in [distributed.local(p)] + [v for v in state.values() if isinstance(v, Tensor)]:
                    current.setdefault((t.device, t.is_floating_point()), []).append(t)
        return {key: (ts, [t.clone() for t in ts] if not key[1] else torch._foreach_mul(ts, 1.0)) for key, ts in current.items()}
