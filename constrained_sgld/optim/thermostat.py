"""Constrained adaptive Langevin (a stochastic-gradient Nose-Hoover thermostat), BADODAB splitting.

Target: ``exp(-U/T - |p|^2 / (2T) - mu (xi - A)^2 / (2T))`` on the set, its tangent bundle (unit
mass) and the thermostat variable ``xi``, for the equations of adaptive Langevin dynamics (Jones &
Leimkuhler 2011; SGNHT, Ding et al. 2014)::

    dx  = p dt                                            (on the set: the drift A)
    dp  = -T_x grad U dt - xi p dt + sqrt(2 A T) T_x dW   (kick B, friction and noise O)
    dxi = (|p|^2 - d T) / mu dt                           (the thermostat D)

``d`` is the group's tangent dimension (the degrees of freedom of its momenta: arc lengths on the
circle, ``nk - k(k+1)/2`` per Stiefel matrix). When the gradient carries unknown noise of
covariance ``h Sigma`` per unit time, ``xi`` settles where friction removes the extra heat
(``A + h sigma^2 / (2T)`` for isotropic ``Sigma``) and the momenta stay at temperature ``T``;
fixed-friction Langevin instead runs hot. One thermostat per parameter group: with anisotropic
gradient noise it holds the group's *average* kinetic temperature (covariance-controlled adaptive
Langevin, Shang et al. 2015, would be the per-direction fix).

Units, as [`ConstrainedUnderdampedSGLD`][constrained_sgld.ConstrainedUnderdampedSGLD]'s: ``lr`` and ``momentum`` in SGD
units, ``h = sqrt(2 lr / (1 + momentum))`` and the noise's friction ``A = -ln(momentum) / h``, so
that at ``xi = A`` (its starting value) a step is that optimiser's step. The thermostat's mass is
``mu = d Q`` with ``Q = thermostat_mass`` (default: ``T``, so that the thermostat's period,
``2 pi sqrt(Q / (2T))``, is about 4.4 time units at every temperature; at ``T = 0``, ``Q = 1``).

Integrator: BADODAB (Leimkuhler & Shang 2016, "Adaptive thermostats for noisy gradient systems"),
with the two half kicks merged (one gradient per step)::

    B    p  <- p - h T_x(g + weight_decay * x)
    A/2  (x, p) <- drift(x, p, h/2)
    D/2  xi <- xi + (h/2) (|p|^2 / d - T) / Q
    O    p  <- exp(-xi h) p + sqrt(2 A T h phi(2 xi h)) T_x(R),   phi(z) = (1 - e^-z) / z
    D/2  xi <- xi + (h/2) (|p|^2 / d - T) / Q
    A/2  (x, p) <- drift(x, p, h/2)

The O step is the exact Ornstein-Uhlenbeck flow for the current ``xi`` (any sign). Every sub-step
is one of the set's plain list operations, so the scheme is correct on any set that implements
them; it uses no fused ones (the thermostat's D sits between the drifts). At ``T = 0`` there is no
noise and ``xi`` only grows while the parameters move: a deterministic optimiser with adaptive
friction.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import torch
from torch import Tensor

from .. import distributed
from ..constraints.base import DEFAULT_CONTEXT, Constraint, StepContext
from .base import ConstrainedLangevinOptimizer
from .groups import GroupsMixin, _is_number, lr_number, refuse_torch_flags
from .underdamped import MomentumState, langevin_step_size

__all__ = ["ConstrainedSGNHT", "thermostat_update"]


def _phi(z: Tensor) -> Tensor:
    """``(1 - exp(-z)) / z``, with its limit 1 at ``z = 0`` (no division there)."""
    small = z.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1.0 - 0.5 * z, -torch.expm1(-safe) / safe)


def thermostat_update(
    params: List[Tensor],
    grads: List[Tensor],
    states: List[Dict[str, Any]],
    constraint: Constraint,
    *,
    xi: Tensor,
    dims: int,
    lr: float,
    momentum: float,
    temperature: float,
    thermostat_mass: float,
    weight_decay: float,
    noise: Optional[List[Tensor]],
    kinetic: Optional[Tensor] = None,
    mass: Optional[List[Tensor]] = None,
    ctx: StepContext = DEFAULT_CONTEXT,
) -> None:
    """One BADODAB step: ``params``, their ``state["momentum"]`` and the thermostat ``xi`` (a 0-dim
    float64 tensor) in place. ``dims``: the tangent dimension of the whole group. ``kinetic``: a
    function applied to the local ``|p|^2`` before the thermostat reads it (the sum over ranks for
    a sharded group). ``noise``: standard normal tensors shaped like ``params`` (``None`` at
    temperature 0). ``mass``: a diagonal mass per tensor (broadcastable to it; ``None``: unit mass):
    the momenta are then velocities ``M^-1 p`` and the kinetic energy the thermostat reads is
    ``v^T M v`` (``grads`` and ``noise`` come preconditioned). A step with ``lr = 0`` (annealed)
    changes nothing."""
    h = langevin_step_size(lr, momentum)
    if h == 0:
        return
    friction = -math.log(momentum) / h  # A: the friction the injected noise balances at T
    momenta = [state["momentum"] for state in states]
    rate = 0.5 * h / thermostat_mass
    root_mass = None if mass is None else torch._foreach_sqrt(mass)

    def thermostat_half_step() -> None:  # D(h/2), on the device (no host read)
        weighted = momenta if root_mass is None else torch._foreach_mul(momenta, root_mass)
        sq = constraint.tangent_sq_norm(params, weighted, states)
        if kinetic is not None:
            sq = kinetic(sq)
        xi.add_(rate * (sq.to(xi.device, xi.dtype) / dims - temperature))

    constraint.kick_(params, momenta, grads, -h, weight_decay, states)  # B
    torch._foreach_copy_(momenta, constraint.drift_many_(params, momenta, 0.5 * h, states, ctx))  # A/2
    thermostat_half_step()  # D/2
    # O: scaling a tangent vector keeps it tangent on every set, so the friction is applied here
    decay = torch.exp(-xi * h)
    if momenta:
        torch._foreach_mul_(momenta, decay.to(momenta[0].device, momenta[0].dtype))
    if noise is not None and temperature > 0:
        std = torch.sqrt(2.0 * friction * temperature * h * _phi(2.0 * xi * h))
        scaled = torch._foreach_mul(noise, std.to(noise[0].device, noise[0].dtype))
        constraint.ou_(params, momenta, 1.0, scaled, 1.0, states)
    thermostat_half_step()  # D/2
    torch._foreach_copy_(momenta, constraint.drift_many_(params, momenta, 0.5 * h, states, ctx))  # A/2


class ConstrainedSGNHT(MomentumState, ConstrainedLangevinOptimizer):
    """Adaptive Langevin dynamics (a stochastic-gradient Nose-Hoover thermostat) on constraint sets.

    Like [`ConstrainedUnderdampedSGLD`][constrained_sgld.ConstrainedUnderdampedSGLD], with a friction ``xi`` per parameter
    group that adapts so that the momenta's kinetic temperature is ``temperature``: extra heat from
    noisy (minibatch) gradients is removed instead of raising the sampled temperature. See the
    module docstring for the equations and docs/dynamics.md for the units.

    ``params``, ``constraints``, ``temperature``, ``weight_decay``, ``seed``, ``check_finite``,
    ``foreach``, ``maximize``, ``chain_id``, ``sync_free`` and ``torch.optim``'s other flags are as for [`ConstrainedSGLD`][constrained_sgld.ConstrainedSGLD].

    Args:
        lr: learning rate in SGD units; the Langevin step is ``h = sqrt(2 lr / (1 + momentum))``.
        momentum: in (0, 1): ``exp(-A h)`` for the friction ``A`` that the injected noise balances.
            The thermostat starts at ``xi = A``, where a step equals the underdamped optimiser's.
        thermostat_mass: ``Q`` in ``dxi/dt = (|p|^2 / d - T) / Q``; ``None`` (default): ``T``, or 1
            at ``T = 0``. Smaller reacts faster and fluctuates more.
        preconditioner: as for [`ConstrainedUnderdampedSGLD`][constrained_sgld.ConstrainedUnderdampedSGLD] (the momenta are
            velocities ``M^-1 p``); the thermostat then holds ``v^T M v / d`` at ``temperature``.

    ``diagnostics()`` adds ``kinetic_temperature`` (``|p|^2 / d``) and ``thermostat`` (``xi``, in
    units of 1/time; ``A`` when nothing needs removing). Each group's ``xi`` is
    ``param_groups[i]["thermostat"]`` (created by the first step; saved and loaded with the groups).
    """

    _option_rules = {
        **GroupsMixin._option_rules,
        "momentum": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1) (the injected noise's friction is -ln(momentum) / h)"),
        "thermostat_mass": (lambda v: v is None or (_is_number(v) and v > 0), "None or a finite number > 0"),
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: Union[float, Tensor] = 1e-2,
        momentum: float = 0.9,
        *,
        constraints: Optional[Mapping[Any, Any]] = None,
        temperature: float = 0.0,
        thermostat_mass: Optional[float] = None,
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
        defaults = dict(lr=lr, momentum=momentum, temperature=temperature, thermostat_mass=thermostat_mass, weight_decay=weight_decay, preconditioner=preconditioner, foreach=foreach, maximize=maximize)
        super().__init__(params, defaults, constraints=constraints, seed=seed, check_finite=check_finite, chain_id=chain_id, sync_free=sync_free)

    # -- state (the momenta: MomentumState)
    @staticmethod
    def _initial_xi(group: Dict[str, Any]) -> float:
        """``A = -ln(momentum) / h``: where the thermostat starts."""
        h = langevin_step_size(lr_number(group["lr"]), group["momentum"])
        return -math.log(group["momentum"]) / h if h > 0 else 0.0

    def _thermostat(self, group: Dict[str, Any], device: torch.device) -> Tensor:
        """The group's ``xi``: ``group["thermostat"]``, a 0-dim float64 tensor on ``device``,
        created at ``A`` on first use. It lives in the group (one per group, saved and loaded with
        ``param_groups``), not in the per-parameter ``state``, which holds parameters' states only."""
        xi = group.get("thermostat")
        if xi is None:
            xi = group["thermostat"] = torch.full((), self._initial_xi(group), dtype=torch.float64, device=device)
        elif not isinstance(xi, Tensor) or xi.device != device:  # loaded from a checkpoint saved elsewhere
            xi = group["thermostat"] = torch.as_tensor(xi, dtype=torch.float64).to(device)
        return xi

    def _pack_extras(self, sd: Dict[str, Any]) -> None:
        """Every group's ``xi``, also before its first step (at ``A``): a loader that fills the keys
        it is given (DCP) then restores it."""
        super()._pack_extras(sd)
        for packed, group in zip(sd["param_groups"], self.param_groups):
            if packed.get("thermostat") is None:
                packed["thermostat"] = torch.full((), self._initial_xi(group), dtype=torch.float64)

    def _after_load(self) -> None:
        super()._after_load()
        for group in self.param_groups:
            if isinstance(group.get("thermostat"), Tensor):
                # torch keeps a loaded group's values by reference: two optimisers loading one dict
                # would otherwise share (and both advance) one thermostat
                group["thermostat"] = group["thermostat"].detach().clone()

    def _snapshot(self, plan):
        """Also the thermostats: a skipped sync-free step leaves them as they were."""
        snapshot = super()._snapshot(plan)
        for group, params, _ in plan:
            if params:
                xi = self._thermostat(group, distributed.local(params[0]).device)
                current, saved = snapshot.get((xi.device, True), ([], []))
                snapshot[(xi.device, True)] = ([*current, xi], [*saved, xi.clone()])
        return snapshot

    # -- the step
    def _step_group(self, group, params, grads, ctx, noise=None) -> None:
        # the tangent dimension of the whole group, from the parameters as given (packing pads)
        constraint = self._group_constraint(group)
        self._step_dims = sum(constraint.tangent_dim(p.detach()) for p in params)
        self._step_sharded = any(distributed.sharded_dims(p) for p in params)
        super()._step_group(group, params, grads, ctx, noise)

    @staticmethod
    def _all_reduce(sq: Tensor) -> Tensor:
        """A sharded group's kinetic energy is the sum over ranks of the local pieces'."""
        sq = sq.clone()
        torch.distributed.all_reduce(sq)
        return sq

    _uses_mass = True  # the kinetic energy the thermostat reads is v^T M v

    def _update_group(self, group, constraint, params, grads, states, noise, ctx, *, weight_decay, mass=None) -> None:
        thermostat_mass = group["thermostat_mass"]
        if thermostat_mass is None:
            thermostat_mass = group["temperature"] if group["temperature"] > 0 else 1.0
        thermostat_update(
            params, grads, states, constraint,
            xi=self._thermostat(group, params[0].device), dims=max(self._step_dims, 1),
            lr=self._lr_of(group), momentum=group["momentum"], temperature=group["temperature"],
            thermostat_mass=thermostat_mass, weight_decay=weight_decay, noise=noise,
            kinetic=self._all_reduce if self._step_sharded else None, mass=mass, ctx=ctx,
        )

    # -- diagnostics
    def _extra_diagnostics(self, group) -> Dict[str, Tensor]:
        """``kinetic_temperature`` (``temperature`` at equilibrium) and ``thermostat``: ``xi``."""
        xi = group.get("thermostat")
        if xi is None:
            xi = torch.full((), self._initial_xi(group), dtype=torch.float64)
        return {"kinetic_temperature": self._kinetic_temperature(group), "thermostat": xi}
