"""What an optimiser reports about itself: constraint violations and ``diagnostics()``."""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import Tensor

from .. import distributed


class DiagnosticsMixin:
    """``violations()`` and ``diagnostics()`` for `ConstrainedLangevinOptimizer`."""

    @torch.no_grad()
    def violations(self) -> List[Tensor]:
        """Largest constraint violation per group, as tensors (0 for unconstrained groups)."""
        out = []
        for group in self.param_groups:
            c = group["constraint"]
            vals = [torch.zeros((), dtype=torch.float64)]
            if c is not None:
                for p in group["params"]:
                    piece = distributed.local(p.detach())  # a sharded parameter: this rank's piece
                    v = c.state_violation(piece, self.state.get(p, {}))
                    vals.append(v.detach().to("cpu", torch.float64))
            out.append(torch.stack(vals).amax())
        return out

    def _noise_scale(self, group: Dict[str, Any]) -> float:
        """Standard deviation per entry of the Gaussian noise this scheme adds (before projection)."""
        raise NotImplementedError

    def diagnostics(self) -> List[Dict[str, Tensor]]:
        """One dict of 0-dim tensors per parameter group (nothing is read to the host here):

        - ``violation``: the largest constraint violation (as `violations()`);
        - ``grad_norm``: the norm of the group's current gradients;
        - ``noise_norm``: the norm of the Gaussian noise the last step added for the group, times its
          scale per entry (with a ``preconditioner``: after its ``M^-1/2`` scaling; 0 at temperature 0). Recording it costs one pass over the noise, so it is
          recorded only once ``diagnostics()`` has been called: call it once before training to have
          it from the first step; until then it is NaN;
        - ``kinetic_temperature`` (underdamped only): the temperature the momenta show,
          ``sum |p|^2 / d`` with ``d`` the tangent dimension; at equilibrium it equals ``temperature``.

        With ``sync_free=True`` two counters since construction are added: ``rejected_moves``, the
        matrices whose move the set rejected (SHAKE not converged in its fixed iterations), and
        ``skipped_steps``, the steps skipped for a non-finite gradient (the same for every group).
        """
        self._track_noise = True
        out = []
        violations = self.violations()
        for group, violation in zip(self.param_groups, violations):
            pieces = [distributed.local(p.grad) for p in group["params"] if p.grad is not None]
            device = group["params"][0].device if group["params"] else torch.device("cpu")
            grad_norm = (
                torch.linalg.vector_norm(torch.stack(torch._foreach_norm(pieces)).float()) if pieces else torch.zeros((), device=device)
            )
            entry = {
                "violation": violation,
                "grad_norm": grad_norm,
                "noise_norm": (
                    torch.zeros((), device=device)
                    if group["temperature"] == 0
                    else self._noise_norms.get(id(group), torch.full((), float("nan"), device=device))
                ),
            }
            entry.update(self._extra_diagnostics(group))
            if self.sync_free:
                zero = torch.zeros((), dtype=torch.long, device=device)
                entry["rejected_moves"] = self._rejected_moves.get(id(group), zero)
                entry["skipped_steps"] = self._skipped_steps if self._skipped_steps is not None else zero
            out.append(entry)
        return out

    def _extra_diagnostics(self, group: Dict[str, Any]) -> Dict[str, Tensor]:
        return {}
