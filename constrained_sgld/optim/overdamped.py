"""Overdamped constrained Langevin dynamics (the paper's CoLA-od).

Per step, for a parameter ``x`` on its set, with ``g`` the gradient in ``.grad``::

    f    = -lr * (g + weight_decay * x)                   # drift
    step = T_x(f) + T_x(sqrt(2 * lr * temperature) * xi)  # T_x: tangent space at x, xi ~ N(0, I)
    x    = retract(x, step)                               # back onto the set

``retract`` is the set's own position update: the exact geodesic (sphere, circle), a SHAKE
correction along the normal space at the old point with a polar-decomposition fallback
(orthogonal), a reflection or clamp at the boundary (ball, nonnegative, box), or
``project(x + step)`` for a user-defined set. This is the Euler-Maruyama step of
``dx = -Pi grad U dt + sqrt(2 T) Pi o dW``, whose stationary density is ``exp(-U/T)`` with respect
to the set's surface (or volume) measure; at ``temperature=0`` it is projected gradient descent and
no random numbers are drawn.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from torch import Tensor

from ..constraints.base import DEFAULT_CONTEXT, Constraint, StepContext
from .base import ConstrainedLangevinOptimizer
from .groups import refuse_torch_flags

__all__ = ["ConstrainedSGLD", "overdamped_update"]


def overdamped_update(
    params: List[Tensor],
    grads: List[Tensor],
    states: List[Dict[str, Any]],
    constraint: Constraint,
    *,
    lr: float,
    temperature: float,
    weight_decay: float,
    noise: Optional[List[Tensor]],
    ctx: StepContext = DEFAULT_CONTEXT,
) -> None:
    """Update ``params`` in place by one overdamped constrained Langevin step (the module's
    equations): one Euler-Maruyama move on the set.

    ``noise``: standard normal tensors shaped like ``params`` (``None`` at temperature 0).
    """
    noise_std = math.sqrt(2.0 * lr * temperature)
    constraint.move_(params, grads, -lr, weight_decay, noise if temperature > 0 else None, noise_std, states, ctx)


class ConstrainedSGLD(ConstrainedLangevinOptimizer):
    """Stochastic-gradient Langevin dynamics that keeps chosen parameters on constraint sets.

    Samples (at ``temperature > 0``) or minimises (at ``temperature = 0``) the potential ``U`` whose
    gradient is in ``.grad``, with target density ``exp(-U / temperature)`` on the constraint set.

    Args:
        params: tensors, ``(name, tensor)`` pairs (``model.named_parameters()``) or parameter groups
            (dicts, each may carry ``"constraint"`` and its own ``lr``/``temperature``/``weight_decay``).
        constraints: maps parameters (tensors) or ``fnmatch`` patterns on names to a constraint spec:
            a registered name, ``(name, kwargs)``, a [`Constraint`][constrained_sgld.Constraint] or ``None``.
            The first matching pattern wins; a group's ``"constraint"`` key wins over the mapping.
        lr: step size ``h`` of the Euler-Maruyama step (the drift is ``-lr * grad``).
        temperature: ``T`` in ``exp(-U/T)``; noise variance per step is ``2 * lr * T``.
        weight_decay: adds ``weight_decay / 2 * |x|^2`` to ``U``.
        seed: seeds the optimiser's own noise generator(s), one per device (``None``: drawn from
            torch's global RNG at construction; under ``torch.distributed``, rank 0's draw is
            broadcast so that DDP replicas add the same noise).
        chain_id: an independent chain: a distinct, reproducible noise stream for the same ``seed``
            (give each process of a parallel-chains run its own, e.g. its rank). Default 0.
        check_finite: raise ``FloatingPointError`` on a non-finite gradient before changing anything
            (costs one device-to-host read per step; with ``sync_free=True`` the step is skipped on
            the device instead, see below).
        sync_free: a ``step`` that never reads a tensor value on the host (no device sync; like
            ``capturable=True`` in ``torch.optim``): a non-finite gradient (with ``check_finite``)
            leaves every parameter and state as it was and counts in ``diagnostics()``'s
            ``skipped_steps``, at the cost of a snapshot of the parameters and states per step; the
            orthogonal set runs a fixed number of SHAKE iterations and rejects the move of a matrix
            that has not converged (``rejected_moves``) instead of falling back to the polar
            projection. Default False.
        preconditioner: ``None`` (default: unit mass), ``"rmsprop"`` or a dict of its options
            ``{"alpha": 0.99, "eps": 1e-8, "adapt_steps": None, "bias_correction": False}``: an adaptive diagonal mass
            ``M = sqrt(V) + eps`` from a running second moment ``V`` of the force, one scalar per
            block of the set (entry, row, matrix), so that the stationary law stays exact on every
            set. The drift becomes ``-lr M^-1 (g + weight_decay x)`` and the noise
            ``N(0, 2 lr T M^-1)``; at ``temperature=0`` without a constraint this is
            ``torch.optim.RMSprop``. ``adapt_steps=N`` adapts for the first ``N`` steps and then
            freezes the mass (exact from then on); ``None`` adapts continually (pSGLD; a small bias).
            Per group, like ``lr``; see ``constrained_sgld/optim/preconditioner.py``.
            Two kinds only optimise (refused at ``temperature > 0``): ``"adam"`` (Adam's moments;
            without a constraint ``torch.optim.Adam``, or ``AdamW`` with
            ``decoupled_weight_decay=True``) and ``"spectral"`` (Muon's momentum and matrix sign;
            on the orthogonal set the projected sign or the spectral-norm steepest direction, on
            spheres and balls one normalised step per row; without a constraint
            ``torch.optim.Muon``). The set projects and retracts their steps (docs/dynamics.md).
        foreach: ``None`` (default), ``True`` or ``False``, accepted for ``torch.optim``
            compatibility; the step always runs the sets' multi-tensor operations
            (``torch._foreach_*`` calls, same-shaped orthogonal matrices batched). The per-tensor
            reference the tests compare against is in ``tests/``.
        maximize: ascend the loss instead (the potential is ``-loss``), as in ``torch.optim.SGD``.
        differentiable: ``torch.optim``'s flag, accepted off only: the step projects and retracts
            in place under ``torch.no_grad()`` (``True`` raises a ``ValueError`` saying so).
        capturable: accepted off only; ``sync_free=True`` is this package's step that never reads
            the host (``True`` raises a ``ValueError`` saying so).
        fused: ``None`` or ``False`` only: there is no fused kernel.

    ``lr`` may be a float or a one-element tensor (as in ``torch.optim``). The state dict holds
    ``state`` and ``param_groups`` only; the noise streams, sets and scheme are inside the groups
    (docs/usage.md, "Checkpoints").
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, Tensor] = 1e-2,
        *,
        constraints: Optional[Mapping[Any, Any]] = None,
        temperature: float = 0.0,
        weight_decay: float = 0.0,
        preconditioner: Any = None,
        seed: Optional[int] = None,
        check_finite: bool = True,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        chain_id: int = 0,
        sync_free: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: Optional[bool] = None,
    ) -> None:
        refuse_torch_flags(differentiable=differentiable, capturable=capturable, fused=fused)
        defaults = dict(lr=lr, temperature=temperature, weight_decay=weight_decay, preconditioner=preconditioner, foreach=foreach, maximize=maximize)
        super().__init__(params, defaults, constraints=constraints, seed=seed, check_finite=check_finite, chain_id=chain_id, sync_free=sync_free)

    def _noise_scale(self, group) -> float:
        return math.sqrt(2.0 * self._lr_of(group) * group["temperature"])

    def _update_group(self, group, constraint, params, grads, states, noise, ctx, *, weight_decay, mass=None) -> None:
        overdamped_update(
            params, grads, states, constraint,
            lr=self._lr_of(group), temperature=group["temperature"], weight_decay=weight_decay, noise=noise, ctx=ctx,
        )
