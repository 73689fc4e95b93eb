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

from .base import DEFAULT_CONTEXT, AmbientTangent, StepContext, check_boundary, register_constraint


class _Interval(AmbientTangent):
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

    def _fold(self, p: Tensor, velocity: Optional[Tensor], one_wall: bool = False) -> Optional[Tensor]:
        """Bring ``p`` (moved already) back into the interval; the velocity's sign flips once per
        reflection. ``one_wall``: the caller knows that no entry moved further than the interval's
        width, so no entry crossed both walls: one reflection, ``2 clamp(p) - p``, is then exact
        (three passes instead of the general fold's ten)."""
        lo, hi = self.lower, self.upper
        if self.boundary == "clamp":
            if velocity is not None:
                # drop the outward component of the velocity where the wall was hit
                hit_low = (p < lo) & (velocity < 0)
                hit_high = (p > hi) & (velocity > 0)
                velocity = torch.where(hit_low | hit_high, torch.zeros_like(velocity), velocity)
            p.clamp_(lo, hi)
            return velocity
        if math.isinf(hi):
            flipped = p < lo
            p.sub_(lo).abs_().add_(lo)  # exact for any distance: a half-line has one wall
        elif one_wall:
            inside = p.clamp(lo, hi)
            flipped = inside != p
            p.neg_().add_(inside, alpha=2.0)
        else:
            width = hi - lo
            offset = p - lo
            # number of walls crossed; odd means the direction of travel is reversed
            crossings = torch.floor(offset / width)
            flipped = torch.remainder(crossings, 2) == 1
            folded = torch.remainder(offset, 2 * width)
            p.copy_(lo + (width - (folded - width).abs()))
        if velocity is not None:
            velocity = torch.where(flipped, -velocity, velocity)
        return velocity

    def _within_width(self, step: Tensor, scale: float, ctx: StepContext) -> bool:
        """Whether every entry of ``scale * step`` is shorter than the interval's width (one pass and
        one host read; never in a sync-free step, which takes the general fold)."""
        if ctx.sync_free or math.isinf(self.upper) or self.boundary == "clamp" or step.numel() == 0:
            return False
        return bool(torch.linalg.vector_norm(step, ord=math.inf) * abs(scale) < self.upper - self.lower)

    def retract_(self, p: Tensor, step: Tensor, state: Dict[str, Tensor]) -> None:
        self.retract_many_([p], [step], [state])

    def drift_(self, p: Tensor, velocity: Tensor, t: float, state: Dict[str, Tensor]) -> Tensor:
        return self.drift_many_([p], [velocity], t, [state])[0]

    def retract_many_(self, params, steps, states, ctx=DEFAULT_CONTEXT):
        for p, step in zip(params, steps):
            one_wall = self._within_width(step, 1.0, ctx)
            p.add_(step)
            self._fold(p, None, one_wall)

    def drift_many_(self, params, velocities, t, states, ctx=DEFAULT_CONTEXT):
        out = []
        for p, v in zip(params, velocities):
            one_wall = self._within_width(v, t, ctx)
            p.add_(v, alpha=t)
            out.append(self._fold(p, v, one_wall))
        return out


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
