"""Underdamped constrained Langevin dynamics (the paper's CoLA-ud), g-BAOAB splitting.

Target: ``exp(-U/T - |p|^2 / (2T))`` on the set and its tangent bundle (unit mass), with friction
``gamma`` and Langevin step ``h``. The optimiser is configured in SGD units: ``momentum = c =
exp(-gamma h)`` and ``lr`` such that ``h^2 = 2 lr / (1 + c)``. Per step, with one gradient
``g`` at the current point (the two half kicks of B/2 A/2 O A/2 B/2 merged)::

    B    p <- p - h T_x(g + weight_decay * x)              # kick, tangent at x
    A/2  (x, p) <- drift(x, p, h/2)                        # along the set; p stays tangent (RATTLE)
    O    p <- c p + sqrt(T (1 - c^2)) T_x(xi)              # Ornstein-Uhlenbeck, exact for any c
    A/2  (x, p) <- drift(x, p, h/2)

``p`` is the Langevin momentum (state ``"momentum"``); it starts at zero. The O step is exact for
every ``c`` in [0, 1), so the stationary distribution is right at every friction (Leimkuhler &
Matthews 2016). At ``temperature=0`` on an unconstrained parameter, the position increments are
``d_{n+1} = c d_n - lr g_n``: exactly ``torch.optim.SGD(lr=lr, momentum=c)`` (no rescaling).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import torch
from torch import Tensor

from .. import distributed
from ..constraints.base import DEFAULT_CONTEXT, Constraint, StepContext
from .base import ConstrainedLangevinOptimizer
from .groups import refuse_torch_flags

__all__ = ["ConstrainedUnderdampedSGLD", "MomentumState", "underdamped_update", "langevin_step_size"]


def langevin_step_size(lr: float, momentum: float) -> float:
    """The Langevin time step ``h`` for SGD-units ``lr`` and ``momentum``: ``h^2 = 2 lr / (1 + c)``."""
    return math.sqrt(2.0 * lr / (1.0 + momentum))


def underdamped_update(
    params: List[Tensor],
    grads: List[Tensor],
    states: List[Dict[str, Any]],
    constraint: Constraint,
    *,
    lr: float,
    momentum: float,
    temperature: float,
    weight_decay: float,
    noise: Optional[List[Tensor]],
    ctx: StepContext = DEFAULT_CONTEXT,
) -> None:
    """Update ``params`` and their ``state["momentum"]`` in place by one g-BAOAB step with the two
    half-kicks merged (one gradient per step): ``B(h) A(h/2) O A(h/2)``.

    ``noise``: standard normal tensors shaped like ``params`` (``None`` at temperature 0).
    """
    c = momentum
    h = langevin_step_size(lr, c)
    noise_std = math.sqrt(temperature * (1.0 - c * c))
    momenta = [state["momentum"] for state in states]
    constraint.kick_(params, momenta, grads, -h, weight_decay, states)  # B
    constraint.drift_ou_drift_(params, momenta, 0.5 * h, c, noise if temperature > 0 else None, noise_std, states, ctx)  # A O A


class MomentumState:
    """What the momentum schemes share: ``state["momentum"]`` per parameter, a tangent vector that
    starts at zero and is refreshed by ``c p + sqrt(T (1 - c^2)) xi``, and its kinetic temperature."""

    _tangent_state_keys = ("momentum",)

    def _init_param_state(self, p: Tensor, constraint: Constraint, state: Dict[str, Any]) -> None:
        state["momentum"] = constraint.tangent_zeros(p.detach(), state)

    def _state_keys_missing(self, state) -> List[str]:
        # only parameters' entries (dicts): torch keeps whatever else a user or hook put in ``state``
        return ["momentum"] if any(isinstance(s, dict) and s and "momentum" not in s for s in state.values()) else []

    def _noise_scale(self, group) -> float:
        """Per-entry std of the O step's noise (at the friction ``-ln(momentum) / h``)."""
        return math.sqrt(group["temperature"] * (1.0 - group["momentum"] ** 2))

    def _kinetic_temperature(self, group) -> Tensor:
        """``sum v^T M v / d`` over this process's pieces of the group's parameters (``M``: the
        preconditioner's mass, 1 without one): the velocities are N(0, T M^-1) on the tangent
        space at equilibrium, so this estimates ``temperature`` (circle: arc-length momenta)."""
        constraint = self._group_constraint(group)
        weighted = group.get("preconditioner") is not None
        params, momenta, states, dims = [], [], [], 0
        for p in group["params"]:
            state = self.state.get(p)
            if state and "momentum" in state:
                local = distributed.local(p.detach())
                params.append(local)
                momentum = state["momentum"]
                if weighted and "mass" in state:
                    momentum = momentum * state["mass"].sqrt()
                momenta.append(momentum)
                states.append(state)
                dims += constraint.tangent_dim(local)
        if not momenta:
            return torch.zeros((), device=group["params"][0].device if group["params"] else None)
        return constraint.tangent_sq_norm(params, momenta, states) / max(dims, 1)


class ConstrainedUnderdampedSGLD(MomentumState, ConstrainedLangevinOptimizer):
    """Underdamped (momentum) Langevin dynamics that keeps chosen parameters on constraint sets.

    ``params``, ``constraints``, ``temperature``, ``weight_decay``, ``seed``, ``check_finite``,
    ``foreach``, ``maximize``, ``chain_id``, ``sync_free`` and ``torch.optim``'s other flags are as for [`ConstrainedSGLD`][constrained_sgld.ConstrainedSGLD].

    Args:
        lr: learning rate in SGD units; the Langevin step is ``h = sqrt(2 lr / (1 + momentum))``.
            At ``temperature=0`` without constraints the trajectory is that of
            ``torch.optim.SGD(lr=lr, momentum=momentum)``.
        momentum: ``c = exp(-friction * h)`` in [0, 1): the fraction of momentum kept by the
            Ornstein-Uhlenbeck step. 0 redraws the momentum each step.
        preconditioner: as for [`ConstrainedSGLD`][constrained_sgld.ConstrainedSGLD]: an adaptive diagonal
            mass ``M`` (one scalar per block of the set). The kick becomes ``-h M^-1 (g + wd x)``,
            the O step's noise ``N(0, T (1 - c^2) M^-1)``, and ``state["momentum"]`` holds the
            velocity ``M^-1 p`` (its law ``N(0, T M^-1)``). At ``temperature=0`` without a
            constraint the trajectory is ``torch.optim.RMSprop(lr, alpha, eps, momentum=momentum)``'s.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, Tensor] = 1e-2,
        momentum: float = 0.9,
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
        defaults = dict(lr=lr, momentum=momentum, temperature=temperature, weight_decay=weight_decay, preconditioner=preconditioner, foreach=foreach, maximize=maximize)
        super().__init__(params, defaults, constraints=constraints, seed=seed, check_finite=check_finite, chain_id=chain_id, sync_free=sync_free)

    def _extra_diagnostics(self, group) -> Dict[str, Tensor]:
        return {"kinetic_temperature": self._kinetic_temperature(group)}

    def _update_group(self, group, constraint, params, grads, states, noise, ctx, *, weight_decay, mass=None) -> None:
        underdamped_update(
            params, grads, states, constraint,
            lr=self._lr_of(group), momentum=group["momentum"], temperature=group["temperature"],
            weight_decay=weight_decay, noise=noise, ctx=ctx,
        )
