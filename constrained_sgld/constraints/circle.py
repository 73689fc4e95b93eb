"""The circle constraint of Leimkuhler et al. (the paper's magnitude constraint, "c-CoLA").

Each entry ``w`` gets a partner ``z`` (kept in the optimiser state as ``"aux"``) with
``w^2 + z^2 = r^2``, so ``|w| <= r``. Write ``(w, z) = r (sin phi, cos phi)``. The tangent space
at each point is one-dimensional, spanned by the unit vector ``(z, -w) / r``, so a tangent vector
is stored as one arc length per entry:

- a force ``(f, 0)`` on ``(w, z)`` has tangent component ``f z / r``;
- isotropic noise in the plane has tangent component ``N(0, std^2)``;
- moving by arc length ``a`` is the rotation by the Cayley angle ``theta = 2 atan(alpha / 2)``,
  ``alpha = a / r``: ``w' = w cos(theta) + z sin(theta)``, ``z' = z cos(theta) - w sin(theta)``
  (from the *old* pair, unlike the research script, which drifted off the circle), made of three
  shears without ``sin`` or ``cos``; ``theta = alpha - alpha^3 / 12 + ...`` (see `Circle._rotate_()`);
- the geodesic flow keeps the arc-length speed, so the underdamped drift changes no velocity.

With ``U = 0`` the stationary law of ``phi`` is uniform, so ``w`` follows the arcsine law on
``[-r, r]`` (``E[w^2] = r^2 / 2``).

The public set operations act on ``w`` alone, i.e. on the set ``|w| <= r`` it implies.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from .base import DEFAULT_CONTEXT, Constraint, EntryBlocks, check_positive, register_constraint


@register_constraint("circle")
class Circle(EntryBlocks, Constraint):
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

    #: the largest half-angle tangent of one rotation (an angle of ``2 atan(1000)``, 0.1 degree
    #: short of half a turn): bounds the shears' cancellation for absurdly long steps
    max_half_tangent = 1e3

    def _rotate_(self, p: Tensor, arc: Tensor, state: Dict[str, Tensor], scale: float = 1.0, scratch: bool = False) -> None:
        """Rotate each pair ``(w, z)`` by the angle ``2 atan(u)``, ``u = scale * arc / (2 radius)``
        (the Cayley rotation: ``tan(angle / 2) = alpha / 2`` for the arc's angle ``alpha``), in place.

        No transcendental function: ``cos`` and ``sin`` cost ten arithmetic passes each on the
        CPU. The rotation is exact (orthogonal) and agrees with the rotation by ``alpha`` up to
        ``alpha^3 / 12``; the dynamics it makes are discussed in docs/constraints.md. It is applied
        as three shears, ``w += u z``, ``z -= sin(angle) w``, ``w += u z``, then one Newton step
        pulls ``|(w, z)|`` back to the radius against rounding. ``scratch``: ``arc`` may be
        overwritten (it is: with ``u``)."""
        k = scale / (2.0 * self.radius)
        if k == 0:
            return  # no move (a learning rate annealed to 0)
        z = state["aux"]
        ws = self.workspace
        # u = tan(angle / 2), capped (a scale folded into the bound could overflow half precision)
        u = arc.mul_(k) if scratch else torch.mul(arc, k, out=ws.like(arc, "u"))
        u.clamp_(-self.max_half_tangent, self.max_half_tangent)
        # sin(angle) / 2 = u / (1 + u^2) = 1 / (u + 1/u): no square to overflow, and 0 at u = 0
        s = torch.reciprocal(u, out=ws.like(u, "sin")).add_(u).reciprocal_()
        p.addcmul_(u, z)
        z.addcmul_(s, p, value=-2.0)
        p.addcmul_(u, z)
        # rounding only: one Newton step for radius / |(w, z)|, 1.5 - 0.5 |(w, z)|^2 / radius^2
        q = torch.mul(p, p, out=s)
        q.addcmul_(z, z)
        q.mul_(-0.5 / self.radius**2).add_(1.5)
        p.mul_(q)
        z.mul_(q)

    def retract_(self, p: Tensor, step: Tensor, state: Dict[str, Tensor]) -> None:
        self._rotate_(p, step, state)

    def drift_(self, p: Tensor, velocity: Tensor, t: float, state: Dict[str, Tensor]) -> Tensor:
        self._rotate_(p, velocity, state, scale=t)
        return velocity

    # -- list-level operations, without the allocations of the defaults
    def kick_(self, params, momenta, grads, scale, weight_decay, states):
        """``p += scale (g + wd w) z / r``: the force's tangent component, one pass per tensor."""
        for p, m, g, state in zip(params, momenta, grads, states):
            m.addcmul_(g, state["aux"], value=scale / self.radius)
            if weight_decay != 0:
                m.addcmul_(p, state["aux"], value=scale * weight_decay / self.radius)

    def ou_(self, params, momenta, c, noise, std, states):
        torch._foreach_mul_(momenta, c)
        if noise is not None:
            torch._foreach_add_(momenta, noise, alpha=std)

    def move_(self, params, grads, scale, weight_decay, noise, std, states, ctx=DEFAULT_CONTEXT):
        """The overdamped step: one rotation by ``scale (g + wd w) z / r + std xi`` per tensor."""
        for i, (p, g, state) in enumerate(zip(params, grads, states)):
            arc = torch.mul(g, state["aux"], out=self.workspace.like(p, "arc"))
            if weight_decay != 0:
                arc.addcmul_(p, state["aux"], value=weight_decay)
            if noise is not None:
                arc.mul_(scale / self.radius).add_(noise[i], alpha=std)
                self._rotate_(p, arc, state, scratch=True)
            else:
                self._rotate_(p, arc, state, scale=scale / self.radius, scratch=True)

    def drift_ou_drift_(self, params, momenta, t, c, noise, std, states, ctx=DEFAULT_CONTEXT):
        """Rotations of one plane compose and leave arc-length velocities unchanged, so ``A(t) O
        A(t)`` is one rotation: the two drifts' half-angle tangents ``u1 = k p`` and ``u2 = k p'``
        (``p' = c p + std xi``, ``k = t / 2r``) compose as ``(u1 + u2) / (1 - u1 u2)``, exactly
        the two Cayley rotations in turn, at half the drift cost."""
        k = t / (2.0 * self.radius)
        if t > 0:
            ws = self.workspace
            old = [ws.like(m, ("old", i)) for i, m in enumerate(momenta)]
            torch._foreach_copy_(old, momenta)
        self.ou_(params, momenta, c, noise, std, states)
        if t > 0:
            arcs = [ws.like(m, ("arc", i)) for i, m in enumerate(momenta)]
            for arc, o, m in zip(arcs, old, momenta):
                torch.add(o, m, out=arc)
            torch._foreach_mul_(old, momenta)
            torch._foreach_mul_(old, -k * k)
            torch._foreach_add_(old, 1.0)
            torch._foreach_div_(arcs, old)
            for p, arc, state in zip(params, arcs, states):
                self._rotate_(p, arc, state, scale=t, scratch=True)
