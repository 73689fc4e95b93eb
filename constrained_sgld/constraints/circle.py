"""The circle constraint of Leimkuhler et al. (the paper's magnitude constraint, "c-CoLA").

Each entry ``w`` gets a partner ``z`` (kept in the optimiser state as ``"aux"``) with
``w^2 + z^2 = r^2``, so ``|w| <= r``. Write ``(w, z) = r (sin phi, cos phi)``. The tangent space
at each point is one-dimensional, spanned by the unit vector ``(z, -w) / r``, so a tangent vector
is stored as one arc length per entry:

- a force ``(f, 0)`` on ``(w, z)`` has tangent component ``f z / r``;
- isotropic noise in the plane has tangent component ``N(0, std^2)``;
- moving by arc length ``a`` is the exact rotation by ``alpha = a / r``:
  ``w' = w cos(alpha) + z sin(alpha)``, ``z' = z cos(alpha) - w sin(alpha)``
  (both computed from the *old* pair, unlike the research script, which drifted off the circle);
- the geodesic flow keeps the arc-length speed, so the underdamped drift changes no velocity.

With ``U = 0`` the stationary law of ``phi`` is uniform, so ``w`` follows the arcsine law on
``[-r, r]`` (``E[w^2] = r^2 / 2``).

The public set operations act on ``w`` alone, i.e. on the set ``|w| <= r`` it implies.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from .base import DEFAULT_CONTEXT, Constraint, check_positive, register_constraint


@register_constraint("circle")
class Circle(Constraint):
    """``w^2 + z^2 = radius^2`` per entry, with the auxiliary ``z`` held by the optimiser."""

    is_inequality = True  # as a set of w alone: the interval [-r, r]

    def shard_local(self, p, sharded_dims):
        return True  # one (w, z) pair per entry

    def __init__(self, *, radius: float = 1.0):
        self.radius = check_positive(radius, "radius", "circle")

    # -- set operations on w
    def project(self, p: Tensor) -> Tensor:
        return p.clamp(-self.radius, self.radius)

    def tangent_project(self, p: Tensor, v: Tensor) -> Tensor:
        return v

    def violation(self, p: Tensor) -> Tensor:
        return ((p.abs() - self.radius).clamp_min(0) / self.radius).amax() if p.numel() else p.new_zeros(())

    def aux_violation(self, p: Tensor, aux: Tensor) -> Tensor:
        """How far ``(w, z)`` is from the circle, relative to the radius."""
        if not p.numel():
            return p.new_zeros(())
        return ((torch.hypot(p, aux) - self.radius).abs() / self.radius).amax()

    def state_violation(self, p: Tensor, state: Dict[str, Tensor]) -> Tensor:
        aux = state.get("aux")
        return self.violation(p) if aux is None else torch.maximum(self.violation(p), self.aux_violation(p, aux))

    @torch.no_grad()
    def init_(self, p: Tensor) -> Tensor:
        """Uniform angle, so ``w`` starts from the arcsine law (the U = 0 stationary law)."""
        phi = torch.rand_like(p) * (2 * torch.pi)
        p.copy_(self.radius * torch.sin(phi))
        return p

    # -- dynamics on (w, z), tangent vectors as arc lengths
    def init_state(self, p: Tensor) -> Dict[str, Tensor]:
        w = p.clamp(-self.radius, self.radius)
        return {"aux": torch.sqrt((self.radius**2 - w * w).clamp_min(0))}

    def tangent_zeros(self, p: Tensor, state: Dict[str, Tensor]) -> Tensor:
        return torch.zeros_like(p, memory_format=torch.preserve_format)

    @torch.no_grad()
    def sync_state(self, p: Tensor, state: Dict[str, Tensor]) -> None:
        """``w`` was changed outside the optimiser (a loaded checkpoint, say): put it back in
        ``[-r, r]`` and re-derive ``z`` on the circle from it, keeping each ``z``'s sign."""
        p.clamp_(-self.radius, self.radius)
        z = state["aux"]
        z.copy_(torch.copysign(torch.sqrt((self.radius**2 - p * p).clamp_min(0)), z))

    def tangent_force(self, p: Tensor, force: Tensor, state: Dict[str, Tensor]) -> Tensor:
        return force * state["aux"] / self.radius

    def tangent_noise(self, p: Tensor, xi: Tensor, std: float, state) -> Tensor:
        # the projection of isotropic plane noise onto the 1-D tangent is N(0, std^2)
        return xi * std

    def _rotate_(self, p: Tensor, arc: Tensor, state: Dict[str, Tensor], scale: float = 1.0) -> None:
        """Rotate each pair ``(w, z)`` by the angle ``scale * arc / radius`` (in place, from the old pair)."""
        z = state["aux"]
        alpha = arc * (scale / self.radius)
        cos, sin = torch.cos(alpha), torch.sin(alpha)
        w_new = torch.addcmul(p * cos, z, sin)
        z_new = torch.addcmul(z * cos, p, sin, value=-1.0)
        # rounding only: rescale the pair onto the circle so nothing accumulates
        rescale = torch.hypot(w_new, z_new).reciprocal_().mul_(self.radius)
        torch.mul(w_new, rescale, out=p)
        torch.mul(z_new, rescale, out=z)

    def retract_(self, p: Tensor, step: Tensor, state: Dict[str, Tensor]) -> None:
        self._rotate_(p, step, state)

    def drift_(self, p: Tensor, velocity: Tensor, t: float, state: Dict[str, Tensor]) -> Tensor:
        self._rotate_(p, velocity, state, scale=t)
        return velocity

    def drift_ou_drift_(self, params, momenta, t, c, noise, std, states, ctx=DEFAULT_CONTEXT):
        """Rotations of one plane compose and leave arc-length velocities unchanged, so ``A(t) O
        A(t)`` is one rotation by ``t (p + p')`` with ``p' = c p + std xi``: half the drift cost."""
        arcs = torch._foreach_mul(momenta, 1.0 + c)
        torch._foreach_mul_(momenta, c)
        if noise is not None:
            torch._foreach_add_(arcs, noise, alpha=std)
            torch._foreach_add_(momenta, noise, alpha=std)
        if t > 0:
            for p, arc, state in zip(params, arcs, states):
                self._rotate_(p, arc, state, scale=t)
