"""Norm sets: ``sphere`` (fixed norm, a manifold) and ``ball`` (bounded norm, an inequality set).

Both act on slices of the tensor: the norm runs over ``dim`` (default ``"rows"``: all dims but 0,
so each output unit of a layer has its own norm; ``dim=None``: the whole tensor; an int or a tuple
of ints: those dims).

Sphere of radius r, with ``u = x / r``:

- tangent projection:  ``v - u <u, v>``
- projection:          ``r x / |x|``
- exact geodesic over time t for a tangent velocity v (speed ``|v|``, angle ``theta = t |v| / r``):
  ``x' = x cos(theta) + v (r / |v|) sin(theta)``,  ``v' = v cos(theta) - x (|v| / r) sin(theta)``

Ball of radius r: the tangent space is everything; at the boundary the path reflects specularly
(an exact billiard: straight to the sphere, velocity mirrored in the normal there, on for the time
left) or clamps (``x -> r x / |x|``, outward radial velocity dropped).
"""

from __future__ import annotations

import functools

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .base import DEFAULT_CONTEXT, AmbientTangent, Constraint, StepContext, check_boundary, check_positive, reduction_dims, register_constraint


def _check_dim(dim: Any, owner: str) -> Any:
    ok = dim is None or dim == "rows" or (isinstance(dim, int) and not isinstance(dim, bool))
    ok = ok or (isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim) and len(dim) > 0)
    if not ok:
        raise ValueError(f"{owner}: dim must be 'rows', None, an int or a tuple of ints, got {dim!r}")
    return tuple(dim) if isinstance(dim, list) else dim



def _eager_under_cpu_inductor(method):
    """Run a sphere list operation eagerly when it is traced by torch.compile on CPU tensors:
    inductor's C++ code generator fails on the sphere's step (``InductorError: KeyError 'buf..'``,
    torch 2.13, in its outer-loop fusion with local buffers). The rest of the step still compiles;
    the sphere's part is a graph break that runs as the eager step does."""
    eager = torch.compiler.disable(method)

    @functools.wraps(method)
    def wrapper(self, params, *args, **kwargs):
        if torch.compiler.is_compiling() and params and params[0].device.type == "cpu":
            return eager(self, params, *args, **kwargs)
        return method(self, params, *args, **kwargs)

    return wrapper


class _NormSet(Constraint):
    couples = "norm"

    def __init__(self, *, radius: float = 1.0, dim: Any = "rows"):
        self.radius = check_positive(radius, "radius", self._owner())
        self.dim = _check_dim(dim, self._owner())

    def shard_local(self, p, sharded_dims):
        """Whole norms only: no reduced dim may be split (``dim="rows"`` with rows split is fine)."""
        dims = reduction_dims(p, self.dim)
        reduced = set(range(p.ndim)) if dims is None else {d % max(p.ndim, 1) for d in dims}
        return not (reduced & {d % max(p.ndim, 1) for d in sharded_dims})

    @classmethod
    def _owner(cls) -> str:
        return cls.name or cls.__name__.lower()

    def check(self, p: Tensor, name: str) -> None:
        dims = reduction_dims(p, self.dim)
        if dims is not None:
            for d in dims:
                if not -p.ndim <= d < max(p.ndim, 1):
                    raise ValueError(
                        f"parameter {name!r} of shape {tuple(p.shape)} has no dim {d} for '{self.name}' (dim={self.dim!r})"
                    )
        if p.numel() == 0:
            raise ValueError(f"parameter {name!r} is empty; '{self.name}' needs at least one entry")

    def _norm(self, x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x, dim=reduction_dims(x, self.dim), keepdim=True)

    def block_mean(self, p: Tensor, values: Tensor) -> Tensor:
        """One block per norm (per row by default): a scalar mass on each keeps the law exact."""
        dims = reduction_dims(p, self.dim)
        return super().block_mean(p, values) if dims is None else values.mean(dim=dims, keepdim=True)

    def _step_norm(self, x: Tensor) -> Tensor:
        """The norm of a step or velocity, which (unlike a point's) can be huge. Half and single
        precision: summed in double, where no square of theirs can overflow (one pass, cheaper than
        the fallback; it also compiles, where a second reduction of ``x`` trips inductor's CPU code
        generator in torch 2.13). Double (or MPS, which has none): where the sum of squares
        overflows, measured again on ``x`` scaled down by 2^-64."""
        if x.dtype in (torch.float16, torch.bfloat16, torch.float32) and x.device.type != "mps":
            return torch.linalg.vector_norm(x, dim=reduction_dims(x, self.dim), keepdim=True, dtype=torch.float64).to(x.dtype)
        n = self._norm(x)
        big = 2.0**64
        return torch.where(n.isfinite(), n, self._norm(x * (1 / big)) * big)

    def spectral_check(self, p, name):
        pass

    def spectral_direction(self, p, update, step):
        """``"steepest"``: the steepest direction per norm slice in its own (l2) norm, the tangent
        part of ``update`` normalised to the radius per slice, so that a step of ``lr`` turns a
        sphere's row by ``lr`` radians. ``"project"``: Muon's direction, ``msign`` of ``update``
        as an ``(out, in)`` matrix times its shape factor and the radius (a row of it has norm
        about 1), the tangent projection and the retraction left to the scheme (Muon on unit
        vectors, as nGPT renormalises Adam's step); a vector's is its normalised ``update``."""
        if step.variant == "project" and p.ndim >= 2:
            matrix = update.reshape(update.shape[0], -1)
            return step.msign(matrix).mul_(self.radius * step.scale(*matrix.shape)).reshape(update.shape)
        if step.variant == "steepest":
            update = self.tangent_project(p, update)
        norm = self._step_norm(update).clamp_min(torch.finfo(update.dtype).tiny)
        return update * (self.radius / norm)

    def _inner(self, a: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """``<a, b>`` per norm slice, shaped for broadcasting; the product goes to ``out`` if given."""
        dims = reduction_dims(a, self.dim)
        prod = a * b if out is None else torch.mul(a, b, out=out)
        return prod.sum(dim=dims, keepdim=True) if dims is not None else prod.sum().reshape([1] * a.ndim)


@register_constraint("sphere")
class Sphere(_NormSet):
    def tangent_dim(self, p: Tensor) -> int:
        dims = reduction_dims(p, self.dim)
        norms = 1 if dims is None else p.numel() // max(1, math.prod(p.shape[d] for d in dims))
        return p.numel() - norms  # one constraint per norm

    """``|x| = radius`` over ``dim`` (default: each row / output unit)."""

    def project(self, p: Tensor) -> Tensor:
        n = self._norm(p)
        # a zero slice has no direction: send it to the first basis vector's direction
        safe = torch.where(n > 0, p, torch.ones_like(p))
        return safe * (self.radius / self._norm(safe))

    def tangent_project(self, p: Tensor, v: Tensor) -> Tensor:
        return v - p * (self._inner(p, v) / self.radius**2)

    def violation(self, p: Tensor) -> Tensor:
        return ((self._norm(p) - self.radius).abs() / self.radius).amax()

    @torch.no_grad()
    def init_(self, p: Tensor) -> Tensor:
        """Uniform on the sphere (normalised Gaussian)."""
        p.copy_(self.project(torch.randn_like(p)))
        return p

    # -- dynamics: in place, with the set's scratch buffers (each pass over a parameter costs as
    # much as a pass of SGD; a fresh multi-megabyte tensor costs several on the CPU)
    def _dot(self, a: Tensor, b: Tensor) -> Tensor:
        """``<a, b>`` per norm slice, shaped for broadcasting. The product goes to a reused scratch
        buffer: ``linalg.vecdot`` makes a fresh one (a product tensor, then a sum), and on the CPU
        a fresh multi-megabyte tensor costs page faults that can double the whole step."""
        if reduction_dims(a, self.dim) is None and a.is_contiguous() and b.is_contiguous():
            return torch.dot(a.reshape(-1), b.reshape(-1)).reshape([1] * a.ndim)
        return self._inner(a, b, out=self.workspace.like(a, "dot"))

    def _untangle_(self, p: Tensor, v: Tensor) -> Tensor:
        """``v <- v - p <p, v> / r^2`` in place: ``v`` made tangent at ``p`` (two passes)."""
        return v.addcmul_(p, self._dot(p, v), value=-1.0 / self.radius**2)

    def _speed(self, v: Tensor, ctx: StepContext) -> Tensor:
        """``|v|`` per slice. A sum of squares can overflow for a huge velocity: then it is measured
        again on ``v`` scaled by 2^-64 (decided by one host read, or, sync-free, on the device)."""
        n = self._norm(v)
        if not ctx.sync_free:
            return n if bool(n.isfinite().all()) else self._step_norm(v)
        return self._step_norm(v)

    def _rotation(self, p: Tensor, v: Tensor, t: float, ctx: StepContext, velocity: bool = True):
        """Per-slice coefficients of the geodesic as a linear map of ``(p, v)``, or ``None``.

        From three reductions of the inputs (``|p|^2``, ``<p, v>``, ``|v|^2``; no pass that
        writes), with ``k = <p, v> / |p|^2``, the tangent part ``w = v - k p`` of speed ``s`` and
        ``theta = t s / r``, the geodesic from ``r p / |p|`` with velocity ``w`` is::

            p' = A p + B v,      A = (r / |p|) cos(theta) - B k,   B = t sin(theta) / theta
            v' = C p + D v,      C = -cos(theta) k - s sin(theta) / |p|,   D = cos(theta)

        and ``A D - B C = r / |p|``, so the new velocity follows from the new point in place:
        ``v' = (r / |p|) / A v + C / A p'``. The whole drift is then two in-place passes instead
        of the explicit untangle, move, renormalisation and re-tangent (about twice the passes).
        The point is put back on the sphere and the velocity made tangent from the measured
        ``|p|`` and ``<p, v>``, so rounding does not accumulate from step to step (as with the
        explicit renormalisation).

        ``None`` (take the explicit route) sync-free (the check below is a host read), and
        where any slice is not finite, turns by more than ``max_fast_angle`` (with a velocity
        to update: ``A`` must stay away from 0), or would lose more than a factor
        ``max_fast_cancellation`` in ``s^2 = |v|^2 - k <p, v>`` (a velocity almost normal to the
        sphere: there ``s`` is measured on the projected velocity instead)."""
        if ctx.sync_free:
            return None
        r = self.radius
        wide = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
        dims = reduction_dims(p, self.dim)
        pp = torch.linalg.vector_norm(p, dim=dims, keepdim=True, dtype=wide).square_()
        vv = torch.linalg.vector_norm(v, dim=dims, keepdim=True, dtype=wide).square_()
        pv = self._dot(p, v).to(wide)
        k = pv / pp
        s2 = torch.addcmul(vv, k, pv, value=-1.0)
        speed = s2.clamp_min(0).sqrt_()
        theta = speed * (t / r)
        # written so that NaN and inf count as bad (one host read for both conditions)
        limit = self.max_fast_angle if velocity else torch.finfo(wide).max
        bad = (vv <= s2 * self.max_fast_cancellation).logical_and_(theta.abs() <= limit).logical_not_()
        if bool(bad.any()):
            return None
        cos = theta.cos()
        # r sin(theta) / s = t sin(theta) / theta, and t at s = 0. Its sine must be of the very
        # theta the cosine had: sinc(theta / pi) rounds theta / pi and multiplies by pi again, an
        # angle up to ulp(theta) away, which left |p'| off by ~1e-4 on the big turns the
        # overdamped move takes at large steps (the move has no angle limit)
        along = torch.where(theta != 0, theta.sin() / theta, 1.0).mul_(t)
        inv_n = pp.rsqrt_()
        a = torch.mul(cos, inv_n).mul_(r).addcmul_(along, k, value=-1.0)
        if not velocity:
            return a, along
        c = torch.mul(speed, theta.sin_()).mul_(inv_n).addcmul_(cos, k).neg_()
        return a, along, c.div_(a), inv_n.mul_(r).div_(a)

    #: the one-pass geodesic's limits (see `_rotation()`)
    max_fast_angle = 1.0
    max_fast_cancellation = 16.0

    def _rotated_(self, p: Tensor, v: Tensor, t: float, ctx: StepContext, velocity: bool = True, c: float = 1.0) -> bool:
        """The geodesic by `_rotation()`'s map, in place, if it may be taken (then True; else
        nothing is touched). ``v`` is only written with ``velocity``."""
        fast = self._rotation(p, v, t, ctx, velocity)
        if fast is None:
            return False
        p.mul_(fast[0].to(p.dtype)).addcmul_(v, fast[1].to(p.dtype))
        if velocity:
            c_over_a, det_over_a = fast[2], fast[3]
            if c != 1.0:
                c_over_a, det_over_a = c_over_a * c, det_over_a * c
            v.mul_(det_over_a.to(p.dtype)).addcmul_(p, c_over_a.to(p.dtype))
        return True

    def _geodesic_(self, p: Tensor, v: Tensor, t: float, ctx: StepContext = DEFAULT_CONTEXT, velocity: bool = True, c: float = 1.0) -> Tensor:
        """Move ``p`` along the great circle of ``v``'s tangent part for time ``t``, in place; with
        ``velocity``, ``v`` becomes (in place) ``c`` times the velocity at the new point."""
        if self._rotated_(p, v, t, ctx, velocity, c):
            return v
        # the explicit route: any turn, any size
        self._untangle_(p, v)
        r = self.radius
        speed = self._speed(v, ctx)
        theta = speed * (t / r)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # r sin(theta) / |v| -> t as |v| -> 0; the branch stays on the device
        along = torch.where(speed > 0, r * sin / speed.clamp_min(torch.finfo(p.dtype).tiny), t)
        if velocity:
            back = torch.mul(p, speed * sin / r, out=self.workspace.like(p, "back"))
        p.mul_(cos).addcmul_(v, along)
        # rounding only: renormalise (and re-tangent the velocity) so nothing accumulates
        p.mul_(r / self._norm(p))
        if velocity:
            self._untangle_(p, v.mul_(cos).sub_(back))
            if c != 1.0:
                v.mul_(c)
        return v

    def retract_(self, p: Tensor, step: Tensor, state: Dict[str, Tensor]) -> None:
        self._geodesic_(p, step.clone(), 1.0, velocity=False)

    def drift_(self, p: Tensor, velocity: Tensor, t: float, state: Dict[str, Tensor]) -> Tensor:
        """The geodesic flow for time ``t``; ``velocity`` becomes the new velocity in place (and is returned)."""
        return self._geodesic_(p, velocity, t)

    @_eager_under_cpu_inductor
    def retract_many_(self, params, steps, states, ctx=DEFAULT_CONTEXT):
        for p, step in zip(params, steps):
            self._geodesic_(p, step.clone(), 1.0, ctx, velocity=False)

    @_eager_under_cpu_inductor
    def drift_many_(self, params, velocities, t, states, ctx=DEFAULT_CONTEXT):
        return [self._geodesic_(p, v, t, ctx) for p, v in zip(params, velocities)]

    @_eager_under_cpu_inductor
    def kick_(self, params, momenta, grads, scale, weight_decay, states):
        """``p += scale T_x(g)``. Weight decay's force ``wd x`` is normal to the sphere: no kick."""
        for p, m, g in zip(params, momenta, grads):
            m.add_(g, alpha=scale).addcmul_(p, self._dot(p, g), value=-scale / self.radius**2)

    @_eager_under_cpu_inductor
    def ou_(self, params, momenta, c, noise, std, states):
        torch._foreach_mul_(momenta, c)
        if noise is not None:
            for p, m, xi in zip(params, momenta, noise):
                # m is tangent already: T_x(c m + std xi) = c m + std T_x(xi)
                self._untangle_(p, m.add_(xi, alpha=std))

    @_eager_under_cpu_inductor
    def move_(self, params, grads, scale, weight_decay, noise, std, states, ctx=DEFAULT_CONTEXT):
        """``x <- exp_x(T_x(scale g + std xi))`` (weight decay's force is normal: no move). The
        geodesic moves along the step's tangent part, so the step is not projected first; without
        noise it is the geodesic of ``g`` for time ``scale``, and the step is never formed."""
        for i, (p, g) in enumerate(zip(params, grads)):
            if noise is None and self._rotated_(p, g, scale, ctx, velocity=False):  # g is only read
                continue
            step = torch.mul(g, scale, out=self.workspace.like(p, "step"))
            if noise is not None:
                step.add_(noise[i], alpha=std)
            self._geodesic_(p, step, 1.0, ctx, velocity=False)

    @_eager_under_cpu_inductor
    def drift_ou_drift_(self, params, momenta, t, c, noise, std, states, ctx=DEFAULT_CONTEXT):
        """Without noise the O step only slows the momentum down, along the same great circle: ``A(t)
        O A(t)`` is then one geodesic for time ``t (1 + c)`` and the momentum times ``c``."""
        if noise is not None or t <= 0:
            return super().drift_ou_drift_(params, momenta, t, c, noise, std, states, ctx)
        for p, m in zip(params, momenta):
            self._geodesic_(p, m, t * (1.0 + c), ctx, c=c)


@register_constraint("ball")
class Ball(AmbientTangent, _NormSet):
    """``|x| <= radius`` over ``dim``; ``boundary="reflect"`` (default) or ``"clamp"``."""

    is_inequality = True

    def __init__(self, *, radius: float = 1.0, dim: Any = "rows", boundary: str = "reflect"):
        super().__init__(radius=radius, dim=dim)
        self.boundary = check_boundary(boundary, "ball")

    def project(self, p: Tensor) -> Tensor:
        n = self._norm(p)
        return p * (self.radius / n.clamp_min(self.radius))

    def tangent_project(self, p: Tensor, v: Tensor) -> Tensor:
        return v

    def violation(self, p: Tensor) -> Tensor:
        return ((self._norm(p) - self.radius).clamp_min(0) / self.radius).amax()

    @torch.no_grad()
    def init_(self, p: Tensor) -> Tensor:
        """Uniform in the ball: a uniform direction times ``radius * U^(1/d)``."""
        direction = torch.randn_like(p)
        direction = direction / self._norm(direction)
        d = direction.numel() // self._norm(direction).numel()
        u = torch.rand(self._norm(direction).shape, dtype=p.dtype, device=p.device)
        p.copy_(direction * (self.radius * u ** (1.0 / d)))
        return p

    #: reflections followed exactly per step; a slice still moving after that is clamped
    max_reflections = 4

    def drift_ou_drift_(self, params, momenta, t, c, noise, std, states, ctx=DEFAULT_CONTEXT):
        """Without noise the O step only shortens the momentum, so ``A(t) O A(t)`` is a straight
        flight by ``t (1 + c) p`` when it ends inside the ball (the ball is convex, so the midpoint
        is inside too; one check per tensor); else, and with noise, the two drifts in turn."""
        if noise is not None or t <= 0 or ctx.sync_free:
            return super().drift_ou_drift_(params, momenta, t, c, noise, std, states, ctx)
        for p, m, state in zip(params, momenta, states):
            moved = torch.add(p, m, alpha=t * (1.0 + c), out=self.workspace.like(p, "moved"))
            if bool((self._norm(moved) <= self.radius).all()):
                p.copy_(moved)
                m.mul_(c)
            else:
                super().drift_ou_drift_([p], [m], t, c, None, std, [state], ctx)

    def _billiard_(self, p: Tensor, velocity: Tensor, t: float) -> Tensor:
        """Free flight for time ``t`` inside the ball with specular reflection at the sphere.

        The flight is followed exactly: straight to the hit point ``x + s v`` (``s`` the positive
        root of ``|x + s v| = r``), the velocity mirrored in the normal there, on for the time left.
        This map preserves phase-space volume and is reversible, so it keeps the uniform law in the
        ball exactly (a radial mirror of the overshoot does not, and biases |x| inwards).
        """
        r = self.radius
        tiny = torch.finfo(p.dtype).tiny
        left = torch.full_like(self._norm(p), float(t))
        v = velocity
        for _ in range(self.max_reflections):
            a = self._inner(v, v)
            b = self._inner(p, v)
            c = self._inner(p, p) - r * r
            # positive root of a s^2 + 2 b s + c = 0 (c <= 0 inside); the stable form avoids cancellation
            disc = (b * b - a * c).clamp_min(0).sqrt()
            s_hit = torch.where(b > 0, -c / (b + disc).clamp_min(tiny), (disc - b) / a.clamp_min(tiny))
            hits = (a > 0) & (s_hit < left)
            move = torch.where(hits, s_hit.clamp_min(0), left)
            p.add_(v * move)
            left = left - move
            normal_speed = self._inner(p, v) / (r * r)
            v = v - torch.where(hits, 2 * normal_speed, torch.zeros_like(normal_speed)) * p
        p.add_(v * left)  # only after max_reflections bounces in one step: then clamp
        p.mul_(r / self._norm(p).clamp_min(r))
        return v

    def _clamp_(self, p: Tensor, velocity: Tensor, t: float) -> Tensor:
        """Move straight, clamp onto the sphere and drop the outward radial velocity (inelastic)."""
        r = self.radius
        p.add_(velocity, alpha=t)
        n = self._step_norm(p).clamp_min(torch.finfo(p.dtype).tiny)  # p may be far outside after a huge step
        outside = n > r
        radial = self._inner(p / n, velocity) / n  # <p, v> / |p|^2, without squaring a huge |p|
        velocity = velocity - torch.where(outside & (radial > 0), radial, torch.zeros_like(radial)) * p
        p.mul_(r / n.clamp_min(r))
        return velocity

    def retract_(self, p: Tensor, step: Tensor, state: Dict[str, Tensor]) -> None:
        self.drift_(p, step, 1.0, state)

    def drift_(self, p: Tensor, velocity: Tensor, t: float, state: Dict[str, Tensor]) -> Tensor:
        return self.drift_many_([p], [velocity], t, [state])[0]

    def retract_many_(self, params, steps, states, ctx=DEFAULT_CONTEXT):
        self.drift_many_(params, steps, 1.0, states, ctx)

    def drift_many_(self, params, velocities, t, states, ctx=DEFAULT_CONTEXT):
        out = []
        for p, v in zip(params, velocities):
            if not ctx.sync_free:
                # most moves stay inside: then the flight is a straight line (one host read tells)
                moved = torch.add(p, v, alpha=t, out=self.workspace.like(p, "moved"))
                if bool((self._norm(moved) <= self.radius).all()):
                    p.copy_(moved)
                    out.append(v)
                    continue
            out.append(self._billiard_(p, v, t) if self.boundary == "reflect" else self._clamp_(p, v, t))
        return out
