"""The `Constraint` base class, the registry of constraint sets by name, and spec resolution.

A constraint set has two layers of operations.

*Set operations* (public; a user-defined set must provide the first three):

- ``project(p)``          nearest point of the set (or a retraction onto it), out of place;
- ``tangent_project(p, v)`` ``v`` projected onto the tangent space at ``p`` (identity in the
  interior of an inequality set), out of place;
- ``violation(p)``        scalar tensor, 0 on the set, positive off it;
- ``init_(p)``            in place, a feasible random starting point.

*Dynamics operations* (used by both optimisers; the defaults below are written with the set
operations, so a user's set with only ``project``/``tangent_project``/``violation`` works with
both schemes; built-in sets override them with exact geodesics, reflections or batched kernels):

- ``init_state(p)``                 extra per-parameter optimiser state (the circle's partner ``z``);
- ``tangent_zeros(p, state)``       a zero tangent vector in the set's tangent representation;
- ``tangent_force(p, f, state)``    an ambient force ``f`` (shape of ``p``) as a tangent vector;
- ``tangent_noise(p, xi, std, state)``  isotropic Gaussian noise of standard deviation ``std`` on
  the tangent space, made from ``xi``, a standard normal tensor of ``p``'s shape drawn by the
  optimiser (so that every code path sees the same random numbers);
- ``retract_(p, step, state)``      move ``p`` in place by the tangent vector ``step`` and land on
  the set (the overdamped position update);
- ``drift_(p, velocity, t, state)`` move ``p`` in place along ``velocity`` for time ``t`` and return
  the velocity at the new point, tangent there (the underdamped "A" step, RATTLE-style).

Tangent vectors are opaque to the optimisers: they are only added, scaled and passed back to the
constraint, so a set may represent them however suits it (the circle uses one arc length per entry;
the orthogonal set holds a square matrix's as the skew ``X^T V``, its body frame). A set that
changes its representation raises ``tangent_version`` and converts older ones in
``upgrade_tangent`` (an optimiser's ``load_state_dict`` calls it on the saved momenta).

*List-level operations* (what the schemes call; each takes a group's lists and works in place).
Their defaults compose the per-tensor operations above, so they are correct for any set; a set
that can do better overrides them, in its own file, and no scheme needs to know:

- ``kick_(params, momenta, grads, scale, weight_decay, states)``: B, ``p += T_x(scale (g + wd x))``;
- ``ou_(params, momenta, c, noise, std, states)``: O, ``p = c p + T_x(std xi)``;
- ``drift_many_(params, velocities, t, states, ctx)``: A, returns the new velocities;
- ``retract_many_(params, steps, states, ctx)``: the overdamped position update;
- ``tangent_force_many`` / ``tangent_noise_many``: the projections, as lists;
- ``tangent_sq_norm(params, momenta, states)`` and ``tangent_dim(p)``: kinetic energy and degrees
  of freedom (a kinetic temperature is their ratio).
- ``block_mean(p, values)`` and ``second_moment_(params, moments, forces, alpha)``: the blocks on
  which a preconditioner's mass is one scalar (default: the whole tensor; entries, rows or matrices
  for the built-in sets), and the running second moment over them.
- ``spectral_check(p, name)`` and ``spectral_direction_many(params, updates, step)``: the spectral
  step's unit direction for a group's momenta (``preconditioner="spectral"``; see
  ``constraints/spectral.py``). Default: refused; unconstrained matrices (Muon's), the orthogonal
  set (the matrix sign, projected, or the spectral-norm steepest direction) and the norm sets (one
  normalised step per norm) define it.

Fused sequences are set-provided operations too, with defaults that compose the plain ones (so a
scheme may call either and stay correct):

- ``move_(params, grads, scale, weight_decay, noise, std, states, ctx)``: the whole overdamped step,
  ``x = retract(x, T_x(scale (g + wd x)) + T_x(std xi))``;
- ``drift_ou_drift_(params, momenta, t, c, noise, std, states, ctx)``: ``A(t) O A(t)``. Flat space and
  the circle merge it into one drift (their drifts compose additively); the orthogonal set skips
  the tangent projections that SHAKE makes redundant.

``ctx`` is the `StepContext` of the step: whether host reads are allowed (``sync_free``) and
where a set reports the moves it had to reject instead.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union

import torch
from torch import Tensor

__all__ = [
    "Constraint",
    "Unconstrained",
    "register_constraint",
    "available_constraints",
    "get_constraint_class",
    "make_constraint",
    "ConstraintSpec",
    "Packing",
    "StepContext",
    "Workspace",
    "EntryBlocks",
]

_REGISTRY: Dict[str, Type["Constraint"]] = {}

class StepContext:
    """What one optimiser step tells the sets it calls (passed explicitly, never global).

    ``sync_free``: no set operation may read a tensor value on the host (no device sync). Where a
    set would branch on a value (the orthogonal set's SHAKE convergence test and polar fallback),
    it decides on the device instead; moves it cannot finish are left undone and counted with
    `reject()` as 0-dim tensors, which the optimiser adds to ``diagnostics()``.
    """

    def __init__(self, sync_free: bool = False):
        self.sync_free = sync_free
        self.rejected: List[Tensor] = []

    def reject(self, count: Tensor) -> None:
        self.rejected.append(count)


DEFAULT_CONTEXT = StepContext()  # host reads allowed; nothing is ever rejected under it


def scaled_forces(grads: List[Tensor], params: List[Tensor], weight_decay: float, scale: float) -> List[Tensor]:
    """``scale * (g + weight_decay * x)`` per tensor, as new tensors (the force of ``U + wd/2 |x|^2``)."""
    if weight_decay == 0:
        return torch._foreach_mul(grads, scale)
    forces = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(forces, scale)
    return forces


C = TypeVar("C", bound=Type["Constraint"])


class Constraint:
    """Base class of every constraint set.

    Subclasses are constructed with keyword arguments only; the arguments are remembered so that
    ``spec()`` can describe the set as plain data (for ``state_dict`` and ``repr``).
    """

    #: registered name, set by [`register_constraint()`][constrained_sgld.register_constraint]
    name: str = ""
    #: True for sets with an interior (ball, box, ...): their tangent space is everything inside.
    #: Descriptive only (the tests read it); no scheme consults it.
    is_inequality: bool = False
    #: what must stay whole on one rank for the set's operations (for the sharding error message)
    couples: str = "tensor"

    def tangent_dim(self, p: Tensor) -> int:
        """Dimension of the tangent space at ``p`` (degrees of freedom; default: every entry)."""
        return p.numel()

    def shard_local(self, p: Tensor, sharded_dims: Tuple[int, ...]) -> bool:
        """True when this set's operations on a shard (``p`` split along ``sharded_dims``) equal
        the operations on the whole tensor restricted to the shard. Default: only when nothing is
        split. Element-wise sets say True; sets over rows say True when the rows stay whole."""
        return not sharded_dims

    def __new__(cls, *args: Any, **kwargs: Any):
        if args:
            raise TypeError(
                f"{cls.__name__} takes keyword arguments only, e.g. {cls.__name__}(radius=2.0); "
                f"got positional arguments {args!r}"
            )
        obj = super().__new__(cls)
        obj._spec_kwargs = dict(kwargs)
        return obj

    @property
    def workspace(self) -> "Workspace":
        """Scratch buffers for this set's fast paths (see `Workspace`)."""
        ws = self.__dict__.get("_workspace")
        if ws is None:
            ws = self.__dict__["_workspace"] = Workspace()
        return ws

    # ---------------------------------------------------------------- set operations
    def project(self, p: Tensor) -> Tensor:
        """The point of the set nearest to ``p`` (a new tensor, ``p`` unchanged). Required of a
        user's set; the default position update is ``project(x + step)``."""
        raise NotImplementedError(f"{type(self).__name__} must define project(p)")

    def tangent_project(self, p: Tensor, v: Tensor) -> Tensor:
        """The orthogonal projection of ``v`` onto the tangent space of the set at ``p`` (for a
        set with an interior: ``v`` itself inside). Required of a user's set."""
        raise NotImplementedError(f"{type(self).__name__} must define tangent_project(p, v)")

    def violation(self, p: Tensor) -> Tensor:
        """How far ``p`` is from the set, as a 0-d tensor (0 on the set; the largest entry-wise or
        row-wise residual of the set's equations). Required of a user's set."""
        raise NotImplementedError(f"{type(self).__name__} must define violation(p)")

    @torch.no_grad()
    def init_(self, p: Tensor) -> Tensor:
        """Default: standard normal entries, then projected onto the set."""
        p.copy_(self.project(torch.randn_like(p)))
        return p

    def check(self, p: Tensor, name: str) -> None:
        """Raise ``ValueError`` naming the parameter if this set cannot hold a tensor like ``p``."""

    def tolerance(self, dtype: torch.dtype) -> float:
        """Largest ``violation`` still counted as on the set (for the construction-time check):
        ``1e3 eps`` of the dtype in single and double precision; in half precision, where ``1e3 eps``
        is 1 (float16) or 8 (bfloat16) and would pass weights far off the set, ``8 eps`` and at
        least ``2^-5`` (bfloat16 0.0625, float16 0.031): a point rounded onto the set, and the sets'
        steps in float16 (a circle's pairs drift to about 12 eps), stay within it."""
        eps = torch.finfo(dtype).eps
        return 1e3 * eps if eps < 1e-4 else max(8 * eps, 2.0**-5)

    # ---------------------------------------------------------------- dynamics operations
    def init_state(self, p: Tensor) -> Dict[str, Tensor]:
        return {}

    #: the version of this set's tangent representation: what an optimiser's ``state["momentum"]``
    #: holds. Saved with the optimiser's state; a state of another version is converted on loading
    #: by `upgrade_tangent()`
    tangent_version: int = 1

    def upgrade_tangent(self, p: Tensor, v: Tensor, version: int, state: Dict[str, Tensor]) -> Tensor:
        """``v``, a tangent vector at ``p`` saved in representation ``version``, in this set's
        (``tangent_version``). Default: unchanged (the representation never changed)."""
        return v

    def sync_state(self, p: Tensor, state: Dict[str, Tensor]) -> None:
        """``p`` was changed outside the optimiser since its last step: bring the set's own state
        (``init_state``'s) back in line with it. Default: nothing (no such state)."""

    def packing(self, params: List[Tensor]) -> Optional["Packing"]:
        """A batched stand-in for a whole group, or ``None`` (the default: no packing).

        The multi-tensor paths then pack the group's parameters, momenta, gradients and noise
        once per step, run the whole update on the packed tensors with ``packing.constraint``,
        and unpack once, instead of stacking and unstacking in every operation. Only for sets
        without per-parameter state (``init_state`` empty)."""
        return None

    def tangent_zeros(self, p: Tensor, state: Dict[str, Tensor]) -> Tensor:
        return torch.zeros_like(p, memory_format=torch.preserve_format)

    def tangent_force(self, p: Tensor, force: Tensor, state: Dict[str, Tensor]) -> Tensor:
        return self.tangent_project(p, force)

    def tangent_noise(self, p: Tensor, xi: Tensor, std: float, state: Dict[str, Tensor]) -> Tensor:
        return self.tangent_project(p, xi * std)

    def retract_(self, p: Tensor, step: Tensor, state: Dict[str, Tensor]) -> None:
        p.copy_(self.project(p + step))

    def drift_(self, p: Tensor, velocity: Tensor, t: float, state: Dict[str, Tensor]) -> Tensor:
        """RATTLE: ``q = project(p + t v)``; the new velocity is ``(q - p) / t`` made tangent at ``q``."""
        start = p.clone()
        self.retract_(p, velocity * t, state)
        return self.tangent_project(p, (p - start).div_(t))

    def state_violation(self, p: Tensor, state: Dict[str, Tensor]) -> Tensor:
        """``violation(p)``, also counting the set's own state (the circle's partner ``z``)."""
        return self.violation(p)

    # ---------------------------------------------------------------- list-level operations
    def tangent_force_many(self, params: List[Tensor], forces: List[Tensor], states: List[Dict]) -> List[Tensor]:
        return [self.tangent_force(p, f, s) for p, f, s in zip(params, forces, states)]

    def tangent_noise_many(self, params: List[Tensor], xis: List[Tensor], std: float, states: List[Dict]) -> List[Tensor]:
        return [self.tangent_noise(p, xi, std, s) for p, xi, s in zip(params, xis, states)]

    def retract_many_(self, params: List[Tensor], steps: List[Tensor], states: List[Dict], ctx: StepContext = DEFAULT_CONTEXT) -> None:
        for p, step, s in zip(params, steps, states):
            self.retract_(p, step, s)

    def drift_many_(self, params: List[Tensor], velocities: List[Tensor], t: float, states: List[Dict], ctx: StepContext = DEFAULT_CONTEXT) -> List[Tensor]:
        return [self.drift_(p, v, t, s) for p, v, s in zip(params, velocities, states)]

    def kick_(self, params: List[Tensor], momenta: List[Tensor], grads: List[Tensor], scale: float, weight_decay: float, states: List[Dict]) -> None:
        """B: ``p += T_x(scale * (g + weight_decay * x))``, in place on ``momenta``."""
        torch._foreach_add_(momenta, self.tangent_force_many(params, scaled_forces(grads, params, weight_decay, scale), states))

    def ou_(self, params: List[Tensor], momenta: List[Tensor], c: float, noise: Optional[List[Tensor]], std: float, states: List[Dict]) -> None:
        """O: ``p = c p + T_x(std * xi)`` in place (no noise when ``noise`` is None)."""
        torch._foreach_mul_(momenta, c)
        if noise is not None:
            torch._foreach_add_(momenta, self.tangent_noise_many(params, noise, std, states))

    def move_(
        self, params: List[Tensor], grads: List[Tensor], scale: float, weight_decay: float,
        noise: Optional[List[Tensor]], std: float, states: List[Dict], ctx: StepContext = DEFAULT_CONTEXT,
    ) -> None:
        """``x = retract(x, T_x(scale * (g + weight_decay * x)) + T_x(std * xi))``, in place."""
        steps = self.tangent_force_many(params, scaled_forces(grads, params, weight_decay, scale), states)
        if noise is not None:
            steps = torch._foreach_add(steps, self.tangent_noise_many(params, noise, std, states))
        self.retract_many_(params, steps, states, ctx)

    def drift_ou_drift_(
        self, params: List[Tensor], momenta: List[Tensor], t: float, c: float,
        noise: Optional[List[Tensor]], std: float, states: List[Dict], ctx: StepContext = DEFAULT_CONTEXT,
    ) -> None:
        """``A(t) O A(t)``: drift for ``t``, Ornstein-Uhlenbeck, drift for ``t``; positions and
        ``momenta`` in place. A drift by ``t = 0`` (a learning rate annealed to 0) is no move."""
        if t > 0:
            torch._foreach_copy_(momenta, self.drift_many_(params, momenta, t, states, ctx))
        self.ou_(params, momenta, c, noise, std, states)
        if t > 0:
            torch._foreach_copy_(momenta, self.drift_many_(params, momenta, t, states, ctx))

    def tangent_sq_norm(self, params: List[Tensor], momenta: List[Tensor], states: List[Dict]) -> Tensor:
        """``sum |p|^2`` over the group's tangent vectors, in float64 (the kinetic energy times 2)."""
        if not momenta:
            return torch.zeros((), dtype=torch.float64)
        # one fused norm pass (no float64 copies); the squares are summed in float64
        return torch.stack(torch._foreach_norm(momenta)).double().square().sum()

    # ---------------------------------------------------------------- the preconditioner's blocks
    def block_mean(self, p: Tensor, values: Tensor) -> Tensor:
        """The mean of ``values`` (shaped like ``p``) over each block of ``p`` on which a
        preconditioner's mass must be one scalar for the stationary law to stay exact (see
        ``constrained_sgld/optim/preconditioner.py``), with the reduced dims kept (broadcastable to
        ``p``). Default: the whole tensor is one block, which is exact for every set (a constraint
        couples nothing across tensors); built-in sets use their finer blocks (entries, rows,
        matrices)."""
        if values.ndim == 0:
            return values.clone()
        return values.mean(dim=tuple(range(values.ndim)), keepdim=True)

    def second_moment_(self, params: List[Tensor], moments: List[Tensor], forces: List[Tensor], alpha: float) -> None:
        """The preconditioner's running second moment, in place: ``V = alpha V + (1 - alpha)
        block_mean(f * f)`` per tensor (``V`` shaped like ``block_mean``'s result)."""
        squares = [self.block_mean(p, f * f) for p, f in zip(params, forces)]
        torch._foreach_mul_(moments, alpha)
        torch._foreach_add_(moments, squares, alpha=1.0 - alpha)

    # ---------------------------------------------------------------- the spectral step
    def spectral_check(self, p: Tensor, name: str) -> None:
        """Raise ``ValueError`` naming the parameter unless the spectral step is defined for ``p``
        on this set. Default: not defined (it needs a norm the set's geometry singles out)."""
        raise ValueError(
            f"parameter {name!r}: the spectral step (preconditioner='spectral') is defined on unconstrained "
            f"matrices, the 'orthogonal' set and the norm sets ('sphere', 'ball'), not on '{self.name or type(self).__name__}': "
            "give this parameter a group of its own with preconditioner='adam' (or 'rmsprop')"
        )

    def spectral_direction(self, p: Tensor, update: Tensor, step: Any) -> Tensor:
        """The spectral step's direction for the momentum ``update`` at ``p`` (shaped like ``p``;
        the scheme moves along ``-lr`` times it, then the set projects and retracts). ``step``: a
        `SpectralStep` (its variant, matrix sign and shape factor)."""
        raise NotImplementedError(f"{type(self).__name__} has no spectral step")

    def spectral_direction_many(self, params: List[Tensor], updates: List[Tensor], step: Any) -> List[Tensor]:
        return [self.spectral_direction(p, u, step) for p, u in zip(params, updates)]

    # ---------------------------------------------------------------- description
    def spec(self) -> Tuple[str, Dict[str, Any]]:
        """``(name, kwargs)``: enough to rebuild this set with [`make_constraint()`][constrained_sgld.make_constraint]."""
        return (self.name or type(self).__name__, dict(self._spec_kwargs))

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.spec() == other.spec()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((type(self), repr(sorted(self._spec_kwargs.items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._spec_kwargs.items())
        return f"{type(self).__name__}({args})"


class Workspace:
    """Scratch tensors that a set's fast paths reuse from step to step.

    On the CPU a fresh multi-megabyte tensor costs page faults on every allocation (the allocator
    hands large blocks back to the system when they are freed): on the 795k-entry MLP of the speed
    benchmark an out-of-place pass costs 3-6 times an in-place one. ``like(t, slot)`` therefore
    returns, for large CPU tensors, the same uninitialised buffer each time it is asked for the
    same ``slot`` and shape and dtype; elsewhere (CUDA, whose caching allocator already reuses
    memory; small tensors; code being traced by ``torch.compile``) a fresh ``empty_like``.

    A caller must not ask for one slot twice while the first buffer is still in use (index slots
    by the tensor's position in a list). The buffers live as long as the set: at most one per
    slot and shape. A set shared by optimisers that step in parallel threads would share them.
    """

    #: below this many bytes a fresh tensor is cheap (the allocator's heap serves it)
    min_bytes = 1 << 17

    def __init__(self):
        self._buffers: Dict[Tuple[Any, ...], Tensor] = {}

    def like(self, t: Tensor, slot: Any) -> Tensor:
        if t.device.type != "cpu" or t.numel() * t.element_size() < self.min_bytes or torch.compiler.is_compiling():
            return torch.empty_like(t, memory_format=torch.contiguous_format)
        key = (slot, tuple(t.shape), t.dtype)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty_like(t, memory_format=torch.contiguous_format)
        return buffer

    def __deepcopy__(self, memo):
        return Workspace()  # scratch is never state worth copying

    def __reduce__(self):
        return (Workspace, ())


class Packing:
    """How a group's tensors are packed into batches (see [`Constraint.packing()`][constrained_sgld.Constraint.packing]).

    ``pack(tensors)`` gives the packed list (new tensors), ``unpack_(packed, targets)`` copies
    packed values back into ``targets`` in place, and ``constraint`` acts on packed tensors."""

    def __init__(self, constraint: "Constraint", pack: Callable[[List[Tensor]], List[Tensor]], unpack_: Callable[[List[Tensor], List[Tensor]], None]):
        self.constraint = constraint
        self.pack = pack
        self.unpack_ = unpack_


class EntryBlocks:
    """For sets whose constraint acts entry by entry (flat space, intervals, the circle's pairs):
    every entry is its own block, so a per-entry preconditioner is exact, and the second moment
    is RMSprop's own in-place update (no squares tensor)."""

    def block_mean(self, p: Tensor, values: Tensor) -> Tensor:
        return values

    def second_moment_(self, params, moments, forces, alpha):
        torch._foreach_mul_(moments, alpha)
        torch._foreach_addcmul_(moments, forces, forces, value=1.0 - alpha)


class AmbientTangent(Constraint):
    """For sets whose tangent space is everything (flat space, the interior of an inequality set):
    tangent vectors are ambient vectors, so kicks and noise go into the momenta in place, with no
    projection and no new tensors."""

    def tangent_force(self, p, force, state):
        return force

    def tangent_noise(self, p, xi, std, state):
        return xi * std

    def tangent_force_many(self, params, forces, states):
        return forces

    def tangent_noise_many(self, params, xis, std, states):
        return torch._foreach_mul(xis, std)

    def kick_(self, params, momenta, grads, scale, weight_decay, states):
        if weight_decay != 0:
            torch._foreach_add_(momenta, params, alpha=scale * weight_decay)
        torch._foreach_add_(momenta, grads, alpha=scale)

    def ou_(self, params, momenta, c, noise, std, states):
        torch._foreach_mul_(momenta, c)
        if noise is not None:
            torch._foreach_add_(momenta, noise, alpha=std)


class Unconstrained(EntryBlocks, AmbientTangent):
    """No constraint: what a parameter with spec ``None`` uses internally. Its drifts are
    additive, so the fused operations are plain multi-tensor passes."""

    name = "unconstrained"

    def shard_local(self, p, sharded_dims):
        return True

    def project(self, p: Tensor) -> Tensor:
        return p.clone()

    def tangent_project(self, p: Tensor, v: Tensor) -> Tensor:
        return v

    def violation(self, p: Tensor) -> Tensor:
        return p.new_zeros(())

    def retract_(self, p, step, state):
        p.add_(step)

    def drift_(self, p, velocity, t, state):
        p.add_(velocity, alpha=t)
        return velocity

    def retract_many_(self, params, steps, states, ctx=DEFAULT_CONTEXT):
        torch._foreach_add_(params, steps)

    def drift_many_(self, params, velocities, t, states, ctx=DEFAULT_CONTEXT):
        torch._foreach_add_(params, velocities, alpha=t)
        return velocities

    def move_(self, params, grads, scale, weight_decay, noise, std, states, ctx=DEFAULT_CONTEXT):
        # plain SGLD: in-place passes, nothing allocated
        if weight_decay != 0:
            torch._foreach_mul_(params, 1.0 + scale * weight_decay)
        torch._foreach_add_(params, grads, alpha=scale)
        if noise is not None:
            torch._foreach_add_(params, noise, alpha=std)

    def spectral_check(self, p, name):
        if p.ndim != 2:
            raise ValueError(
                f"parameter {name!r} of shape {tuple(p.shape)}: the spectral step on an unconstrained parameter is "
                "Muon's and needs a matrix (2 dims); give vectors, embeddings' companions and conv weights a group "
                "with preconditioner='adam', or an 'orthogonal' constraint (which views a conv weight as a matrix)"
            )

    def spectral_direction(self, p, update, step):
        """Muon's: ``msign(update)`` times its shape factor (both variants: flat space has no
        tangent space to project on)."""
        return step.msign(update).mul_(step.scale(*p.shape))

    def drift_ou_drift_(self, params, momenta, t, c, noise, std, states, ctx=DEFAULT_CONTEXT):
        # x += t p + t (c p + std xi); p = c p + std xi: drifts compose additively in flat space
        torch._foreach_add_(params, momenta, alpha=t * (1.0 + c))
        torch._foreach_mul_(momenta, c)
        if noise is not None:
            torch._foreach_add_(momenta, noise, alpha=std)
            torch._foreach_add_(params, noise, alpha=t * std)


UNCONSTRAINED = Unconstrained()


def register_constraint(name: str) -> Callable[[C], C]:
    """Class decorator: make a [`Constraint`][constrained_sgld.Constraint] subclass available by ``name``.

    >>> @register_constraint("unit_simplex")
    ... class Simplex(Constraint): ...
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_constraint needs a non-empty name, got {name!r}")

    def decorate(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, Constraint)):
            raise TypeError(f"@register_constraint({name!r}) must decorate a Constraint subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"a constraint named {name!r} is already registered ({existing.__qualname__}); pick another name"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_constraints() -> list:
    """Names of every registered constraint set, sorted."""
    return sorted(_REGISTRY)


def get_constraint_class(name: str) -> Type[Constraint]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown constraint {name!r}; available constraints: {', '.join(available_constraints())}"
        ) from None


ConstraintSpec = Union[None, str, Tuple[str, Mapping[str, Any]], Constraint]


def make_constraint(spec: ConstraintSpec, *, where: str = "") -> Optional[Constraint]:
    """Turn a spec (``None``, a name, ``(name, kwargs)`` or an instance) into a Constraint or None."""
    where = f" for {where}" if where else ""
    if spec is None or isinstance(spec, Constraint):
        return spec
    if isinstance(spec, str):
        return get_constraint_class(spec)()
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        cls = get_constraint_class(spec[0])
        try:
            return cls(**dict(spec[1]))
        except TypeError as err:
            raise ValueError(f"bad options for constraint {spec[0]!r}{where}: {err}") from None
    if isinstance(spec, type) and issubclass(spec, Constraint):
        return spec()
    raise ValueError(
        f"constraint spec{where} must be None, a registered name, a (name, kwargs) tuple or a "
        f"Constraint instance; got {spec!r}"
    )


# ------------------------------------------------------------------ helpers shared by the sets
def check_positive(value: Any, option: str, owner: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {option} must be a finite number > 0, got {value!r}")
    return float(value)


def check_boundary(boundary: str, owner: str) -> str:
    if boundary not in ("reflect", "clamp"):
        raise ValueError(f"{owner}: boundary must be 'reflect' or 'clamp', got {boundary!r}")
    return boundary


def reduction_dims(p: Tensor, dim: Any) -> Optional[Tuple[int, ...]]:
    """The dims a norm runs over: ``"rows"`` (all but 0; the whole tensor if 1-D), None = all."""
    if dim is None:
        return None
    if dim == "rows":
        return tuple(range(1, p.ndim)) if p.ndim > 1 else None
    if isinstance(dim, int):
        return (dim,)
    return tuple(dim)
