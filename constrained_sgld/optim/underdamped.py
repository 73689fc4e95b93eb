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
from typing import Any, Dict, Iterable, List, Mapping, Optional

import torch
from torch import Tensor

from ..constraints.base import UNCONSTRAINED, Constraint, Unconstrained
from .base import ConstrainedLangevinOptimizer, scaled_force, scaled_forces

__all__ = ["ConstrainedUnderdampedSGLD", "underdamped_update", "langevin_step_size"]


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
    foreach: bool = True,
) -> None:
    """Update ``params`` and their ``state["momentum"]`` in place by one g-BAOAB step.

    ``noise``: standard normal tensors shaped like ``params`` (``None`` at temperature 0).
    ``foreach`` picks the multi-tensor path; both paths compute the same update.
    """
    fn = _multi_tensor_underdamped if foreach else _single_tensor_underdamped
    fn(params, grads, states, constraint, lr=lr, momentum=momentum, temperature=temperature, weight_decay=weight_decay, noise=noise)


def _single_tensor_underdamped(params, grads, states, constraint, *, lr, momentum, temperature, weight_decay, noise):
    c = momentum
    h = langevin_step_size(lr, c)
    noise_std = math.sqrt(temperature * (1.0 - c * c))
    for i, (x, g, state) in enumerate(zip(params, grads, states)):
        p = state["momentum"] + constraint.tangent_force(x, scaled_force(g, x, weight_decay, -h), state)  # B
        if constraint.additive_drift and h > 0:  # A/2 O A/2 as one drift by h/2 (p + p')
            p_new = p * c
            if temperature > 0:
                p_new.add_(constraint.tangent_noise(x, noise[i], noise_std, state))
            constraint.drift_(x, p.add_(p_new), 0.5 * h, state)
            state["momentum"].copy_(p_new)
            continue
        if h > 0:
            p = constraint.drift_(x, p, 0.5 * h, state)  # A/2
        p = p.mul_(c)  # O (p is a fresh tensor since B)
        if temperature > 0:
            p = p.add_(constraint.tangent_noise(x, noise[i], noise_std, state))
        if h > 0:
            p = constraint.drift_(x, p, 0.5 * h, state)  # A/2
        state["momentum"].copy_(p)


def _multi_tensor_underdamped(params, grads, states, constraint, *, lr, momentum, temperature, weight_decay, noise):
    buffers = [state["momentum"] for state in states]
    packing = constraint.packing(params)
    if packing is not None:  # batched sets: pack once, update the packs, unpack once
        packed_params, packed_buffers = packing.pack(params), packing.pack(buffers)
        _multi_tensor_underdamped(
            packed_params,
            packing.pack(grads),
            [{"momentum": b} for b in packed_buffers],
            packing.constraint,
            lr=lr,
            momentum=momentum,
            temperature=temperature,
            weight_decay=weight_decay,
            noise=None if noise is None else packing.pack(noise),
        )
        packing.unpack_(packed_params, params)
        packing.unpack_(packed_buffers, buffers)
        return
    c = momentum
    h = langevin_step_size(lr, c)
    noise_std = math.sqrt(temperature * (1.0 - c * c))
    if isinstance(constraint, Unconstrained):  # flat: B A/2 O A/2 in three in-place passes (+2 for noise)
        if weight_decay != 0:
            torch._foreach_add_(buffers, params, alpha=-h * weight_decay)
        torch._foreach_add_(buffers, grads, alpha=-h)  # B: p
        torch._foreach_add_(params, buffers, alpha=0.5 * h * (1.0 + c))  # A/2 with p, A/2 with c p
        torch._foreach_mul_(buffers, c)  # O
        if temperature > 0:
            torch._foreach_add_(buffers, noise, alpha=noise_std)
            torch._foreach_add_(params, noise, alpha=0.5 * h * noise_std)  # A/2 with the noise part
        return
    if constraint.tangent_is_identity:  # ambient momenta: kick the buffers in place (no allocation)
        p = buffers
        if weight_decay != 0:
            torch._foreach_add_(p, params, alpha=-h * weight_decay)
        torch._foreach_add_(p, grads, alpha=-h)  # B
    else:
        forces = scaled_forces(grads, params, weight_decay, -h)
        p = torch._foreach_add(buffers, constraint.tangent_force_many(params, forces, states))  # B
        if constraint.additive_drift and h > 0:  # A/2 O A/2 as one drift by h/2 (p + p')
            torch._foreach_mul_(buffers, 0.0)
            torch._foreach_add_(buffers, p, alpha=c)  # O: p' = c p (+ noise)
            if temperature > 0:
                torch._foreach_add_(buffers, constraint.tangent_noise_many(params, noise, noise_std, states))
            torch._foreach_add_(p, buffers)
            constraint.drift_many_(params, p, 0.5 * h, states)
            return
    # sets whose drift corrects along the normal space at its start (SHAKE) ignore a velocity's
    # normal part there: the momentum between the two drifts needs no tangent projection, neither
    # of the first drift's velocity nor of the O step's noise (the second drift's RATTLE projects)
    raw = constraint.drift_absorbs_normal and h > 0
    if raw:
        p = constraint.drift_many_(params, p, 0.5 * h, states, project_velocity=False)  # A/2
    elif h > 0:
        p = constraint.drift_many_(params, p, 0.5 * h, states)  # A/2
    torch._foreach_mul_(p, c)  # O
    if temperature > 0:
        if constraint.tangent_is_identity or raw:
            torch._foreach_add_(p, noise, alpha=noise_std)
        else:
            torch._foreach_add_(p, constraint.tangent_noise_many(params, noise, noise_std, states))
    if h > 0:
        p = constraint.drift_many_(params, p, 0.5 * h, states)  # A/2
    if p is not buffers:
        torch._foreach_copy_(buffers, p)

class ConstrainedUnderdampedSGLD(ConstrainedLangevinOptimizer):
    """Underdamped (momentum) Langevin dynamics that keeps chosen parameters on constraint sets.

    Args:
        params, constraints, temperature, weight_decay, seed, check_finite, foreach, chain_id, sync_free: as for
            :class:`~constrained_sgld.ConstrainedSGLD`.
        lr: learning rate in SGD units; the Langevin step is ``h = sqrt(2 lr / (1 + momentum))``.
            At ``temperature=0`` without constraints the trajectory is that of
            ``torch.optim.SGD(lr=lr, momentum=momentum)``.
        momentum: ``c = exp(-friction * h)`` in [0, 1): the fraction of momentum kept by the
            Ornstein-Uhlenbeck step. 0 redraws the momentum each step.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        momentum: float = 0.9,
        *,
        constraints: Optional[Mapping[Any, Any]] = None,
        temperature: float = 0.0,
        weight_decay: float = 0.0,
        seed: Optional[int] = None,
        check_finite: bool = True,
        foreach: bool = True,
        chain_id: int = 0,
        sync_free: bool = False,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, temperature=temperature, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults, constraints=constraints, seed=seed, check_finite=check_finite, chain_id=chain_id, sync_free=sync_free)

    def _init_param_state(self, p: Tensor, constraint: Constraint, state: Dict[str, Any]) -> None:
        state["momentum"] = constraint.tangent_zeros(p.detach(), state)

    def _state_keys_missing(self, state) -> List[str]:
        return ["momentum"] if any(s and "momentum" not in s for s in state.values()) else []

    def _extra_diagnostics(self, group) -> Dict[str, Tensor]:
        """``kinetic_temperature = sum |p|^2 / d``: the momenta are N(0, T) on the tangent space at
        equilibrium (unit mass), so this estimates ``temperature`` (circle: arc-length momenta)."""
        constraint = self._group_constraint(group)
        momenta, dims = [], 0
        for p in group["params"]:
            state = self.state.get(p)
            if state and "momentum" in state:
                momenta.append(state["momentum"])
                dims += constraint.tangent_dim(state["momentum"] if constraint is UNCONSTRAINED else p.detach())
        if not momenta:
            return {"kinetic_temperature": torch.zeros(())}
        energy = torch.stack([m.double().square().sum() for m in momenta]).sum()
        return {"kinetic_temperature": energy / max(dims, 1)}

    def _noise_scale(self, group) -> float:
        return math.sqrt(group["temperature"] * (1.0 - group["momentum"] ** 2))

    def _update_group(self, group, constraint, params, grads, states, noise) -> None:
        underdamped_update(
            params,
            grads,
            states,
            constraint,
            lr=group["lr"],
            momentum=group["momentum"],
            temperature=group["temperature"],
            weight_decay=group["weight_decay"],
            noise=noise,
            foreach=group["foreach"],
        )
