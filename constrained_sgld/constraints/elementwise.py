"""Element-wise inequality sets: ``nonnegative`` (``w >= 0``) and ``box`` (``lower <= w <= upper``).

The tangent space is everything. At the boundary an entry either reflects (default: the position is
folded back into the interval, ``w -> lower + (width - |((w - lower) mod 2 width) - width|)``, and its
velocity changes sign once per reflection, as for a particle bouncing off a wall) or clamps (the
position is clamped and the velocity's outward part is dropped). Reflection keeps the restricted
density ``exp(-U/T)`` on the set stationary; clamping piles mass on the boundary.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor

from .base import DEFAULT_CONTEXT, AmbientTangent, EntryBlocks, StepContext, check_boundary, register_constraint


class _Interval(EntryBlocks, AmbientTangent):
    is_inequality = True

    def shard_local(self, p, sharded_dims):
        return True  # entry by entry
    lower: float = 0.0
    upper: float = math.inf
    boundary: str = "reflect"

    def project(self, p: Tensor) -> Tensor:
        return p.clamp(self.lower, self.upper)

    def tangent_project(self, p: Tensor, v: Tensor) -> Tensor:
        return v

    def violation(self, p: Tensor) -> Tensor:
        if p.numel() == 0:
            return p.new_zeros(())
        below = (self.lower - p).clamp_min(0)
        above = (p - self.upper).clamp_min(0) if math.isfinite(self.upper) else torch.zeros_like(p)
        return torch.maximum(below, above).amax()

    def _fold(self, p: Tensor, velocity: Optional[Tensor], crossed: str = "many") -> Optional[Tensor]:
        """Bring ``p`` (moved already) back into the interval; the velocity's sign flips once per
        reflection. ``crossed`` is what the caller knows about the move (see `_crossings()`):
        ``"none"``, every entry is inside and nothing is done; ``"one"``, no entry crossed both
        walls, so one reflection, ``2 clamp(p) - p``, is exact (three passes instead of the general
        fold's ten); ``"many"``, anything (the general fold)."""
        lo, hi = self.lower, self.upper
        if self.boundary == "clamp":
            if velocity is not None:
                # drop the outward component of the velocity where the wall was hit
                hit_low = (p < lo) & (velocity < 0)
                hit_high = (p > hi) & (velocity > 0)
                velocity = torch.where(hit_low | hit_high, torch.zeros_like(velocity), velocity)
            p.clamp_(lo, hi)
            return velocity
        if crossed == "none":
            return velocity
        # the velocity flips in place, by arithmetic (a 0/1 factor from ``sign``) rather than
        # boolean masks: on the CPU a comparison or ``torch.where`` costs 5-30x an arithmetic pass
        if math.isinf(hi):
            # a half-line has one wall: |p - lo| + lo is exact for any distance
            if lo != 0:
                p.sub_(lo)
            if velocity is not None:
                flips = torch.clamp(p, max=0.0, out=self.workspace.like(p, "flips")).sign_()  # -1 below the wall
                velocity.addcmul_(velocity, flips, value=2.0)
            p.abs_()
            if lo != 0:
                p.add_(lo)
        elif crossed == "one":
            inside = torch.clamp(p, lo, hi, out=self.workspace.like(p, "inside"))
            overshoot = p.sub_(inside)
            if velocity is not None:
                flips = torch.abs(overshoot, out=self.workspace.like(p, "flips")).sign_()  # 1 where reflected
                velocity.addcmul_(velocity, flips, value=-2.0)
            torch.sub(inside, overshoot, out=p)  # 2 clamp(p) - p
        else:
            # in periods of the unfolded path (2 widths): u = (p - lo) / (2 width). The point is at
            # the fraction u - floor(u) of its period, and the walls crossed are floor(2u), so the
            # direction of travel is reversed where floor(2u) - 2 floor(u) (0 or 1) is 1. Written
            # with floor only: inductor's CPU code vectorises floor but not remainder (10x slower)
            width = hi - lo
            u = p.sub(lo).mul_(0.5 / width)
            periods = torch.floor(u)
            if velocity is not None:
                reversed_ = torch.floor(u * 2).sub_(periods * 2)
                velocity.addcmul_(velocity, reversed_, value=-2.0)
            # fraction f in [0, 1] -> lo + width (1 - |2 f - 1|)
            p.copy_(u.sub_(periods).mul_(2).sub_(1).abs_().mul_(-width).add_(hi))
        return velocity

    def _crossings(self, params, ctx: StepContext, velocities: bool = False):
        """For each moved tensor, which walls its entries crossed: ``"none"`` (all inside: the
        common case, where the move needs no further pass), ``"one"`` (every entry within one width
        of the interval, so none crossed both walls) or ``"many"``. One min/max pass per tensor and
        one host read for the whole group; a sync-free step reads nothing and folds everything."""
        if ctx.sync_free or self.boundary == "clamp" or (math.isinf(self.upper) and not velocities):
            # (a half-line's fold without velocities is one pass, as cheap as the check)
            return ["many"] * len(params)
        lo, hi = self.lower, self.upper
        live = [p for p in params if p.numel()]
        if not live:
            return ["none"] * len(params)
        if math.isinf(hi):
            lows = torch.stack([p.amin() for p in live]).tolist()
            highs = [-math.inf] * len(live)
        else:
            lows, highs = torch.stack([torch.stack(torch.aminmax(p)) for p in live]).T.tolist()
        width = hi - lo
        found = iter(
            "none" if mn >= lo and mx <= hi else "one" if mn >= lo - width and mx <= hi + width else "many"
            for mn, mx in zip(lows, highs)
        )
        # NaN compares False everywhere, so a non-finite tensor takes the general fold
        return [next(found) if p.numel() else "none" for p in params]

    def retract_(self, p: Tensor, step: Tensor, state: Dict[str, Tensor]) -> None:
        self.retract_many_([p], [step], [state])

    def drift_(self, p: Tensor, velocity: Tensor, t: float, state: Dict[str, Tensor]) -> Tensor:
        """Straight flight for time ``t`` and reflection; ``velocity`` flips in place (and is returned)."""
        return self.drift_many_([p], [velocity], t, [state])[0]

    def retract_many_(self, params, steps, states, ctx=DEFAULT_CONTEXT):
        torch._foreach_add_(params, steps)
        for p, crossed in zip(params, self._crossings(params, ctx)):
            self._fold(p, None, crossed)

    def drift_many_(self, params, velocities, t, states, ctx=DEFAULT_CONTEXT):
        """Straight flight and reflection; the velocities flip in place (with ``boundary="clamp"``
        new ones are returned)."""
        torch._foreach_add_(params, velocities, alpha=t)
        return [self._fold(p, v, crossed) for p, v, crossed in zip(params, velocities, self._crossings(params, ctx, velocities=True))]

    def drift_ou_drift_(self, params, momenta, t, c, noise, std, states, ctx=DEFAULT_CONTEXT):
        """Without noise, ``A(t) O A(t)`` is one straight flight by ``t (1 + c) p``, folded once,
        and the momentum times ``c``: each coordinate's reflections are mirror maps, so unfolding
        the path (wherever it hit a wall) gives the same point and the same number of flips. With
        noise the O step's kick is not mirrored with the path: the two drifts, in turn."""
        if noise is not None or t <= 0 or self.boundary == "clamp":
            return super().drift_ou_drift_(params, momenta, t, c, noise, std, states, ctx)
        self.drift_many_(params, momenta, t * (1.0 + c), states, ctx)  # flips the momenta in place
        torch._foreach_mul_(momenta, c)

    def move_(self, params, grads, scale, weight_decay, noise, std, states, ctx=DEFAULT_CONTEXT):
        # the interior is flat: the plain SGLD move in place (nothing allocated), then the fold
        if weight_decay != 0:
            torch._foreach_mul_(params, 1.0 + scale * weight_decay)
        torch._foreach_add_(params, grads, alpha=scale)
        if noise is not None:
            torch._foreach_add_(params, noise, alpha=std)
        for p, crossed in zip(params, self._crossings(params, ctx)):
            self._fold(p, None, crossed)


@register_constraint("nonnegative")
class NonNegative(_Interval):
    """``w >= 0`` element-wise; ``boundary="reflect"`` (default) or ``"clamp"``."""

    def __init__(self, *, boundary: str = "reflect"):
        self.boundary = check_boundary(boundary, "nonnegative")

    @torch.no_grad()
    def init_(self, p: Tensor) -> Tensor:
        """Absolute values of Kaiming-uniform-scale normal draws (``|N(0, 1/fan_in)|``)."""
        fan_in = p[0].numel() if p.ndim > 1 else max(p.numel(), 1)
        p.copy_(torch.randn_like(p).abs_().mul_(1.0 / math.sqrt(fan_in)))
        return p


@register_constraint("box")
class Box(_Interval):
    """``lower <= w <= upper`` element-wise (defaults -1 and 1)."""

    def __init__(self, *, lower: float = -1.0, upper: float = 1.0, boundary: str = "reflect"):
        for option, value in (("lower", lower), ("upper", upper)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"box: {option} must be a finite number, got {value!r}")
        if lower >= upper:
            raise ValueError(f"box: lower must be < upper, got lower={lower!r}, upper={upper!r}")
        self.lower, self.upper = float(lower), float(upper)
        self.boundary = check_boundary(boundary, "box")

    @torch.no_grad()
    def init_(self, p: Tensor) -> Tensor:
        """Uniform on ``[lower, upper]``."""
        p.uniform_(self.lower, self.upper)
        return p
