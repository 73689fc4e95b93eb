"""The adaptive preconditioner: a diagonal mass matrix from a running second moment of the force,
one scalar per constraint block, so that the stationary law on every set stays ``exp(-U/T)``.

It sits between the gradients and the scheme: the schemes never see it. Per step, for a parameter
``x`` with force ``f = g + weight_decay * x`` (``g`` in ``.grad``)::

    V <- alpha V + (1 - alpha) B(f * f)     while adapting (B: the set's ``block_mean``)
    M  = sqrt(V) + eps                       the mass: one scalar per block of the set
                                             (sqrt(V / (1 - alpha^t)) + eps with bias_correction)
    f  -> f / M                              the force every scheme then uses (weight decay folded in)
    xi -> xi / sqrt(M)                       the injected noise, N(0, M^-1) before the set projects it

This is RMSprop's second moment (pSGLD, Li et al. 2016; the mass adaptation of Springenberg et al.
2016), with ``M^-1`` as the preconditioner. In the momentum schemes the momentum state is the
velocity ``M^-1 p``: its stationary law is ``N(0, T M^-1)`` on the tangent space, and the
thermostat's kinetic energy is ``v^T M v``.

Why blocks. With a constant mass ``M``, constrained Langevin dynamics has position density
``exp(-U/T) det(G^T M^-1 G)^(1/2)`` (up to a constant) on the set, ``G`` the constraint's gradient
(Lelievre, Rousset & Stoltz 2012). The factor is constant, so the law is exact, when ``M`` is a
scalar on each block the constraint couples: every entry of an element-wise set (box,
non-negative, free), each ``(w, z)`` pair of the circle, each row of a sphere or ball (each norm),
each matrix of the orthogonal set. The sets' projections are Euclidean; on such a block a scalar
mass makes them the M-orthogonal projections that RATTLE needs, and a reflecting wall mirrors the
velocity per coordinate (element-wise sets) or in the normal of one block (the ball). A per-entry
mass on a sphere row would bias the law (``tests/statistical/test_preconditioned.py`` measures it).

Exactness in time. With the mass frozen, each scheme is the same scheme in a fixed metric, and its
stationary law is the documented one. While ``V`` adapts, the mass depends on the path and the
divergence term of pSGLD (``Gamma``, ``O(1 - alpha)``) is dropped, as in pSGLD's own code: a small
bias (measured in docs/verification.md). ``adapt_steps=N`` adapts for a parameter's first ``N``
steps and then freezes (Springenberg's burn-in recipe: exact after it); ``None`` adapts
continually (pSGLD practice). Setting ``adapt_steps`` to 0 in a group freezes it from then on.

The noise's scale per entry is ``M^-1/2``, so where a force is tiny (a dead unit, a parameter at
an optimum, the first step from ``V = 0``) it grows to ``sqrt(2 lr T / eps)`` per step. RMSprop's
``eps = 1e-8`` is meant for optimisation; to sample, choose ``eps`` near the smallest force scale
that matters, and ``bias_correction=True`` (Adam's ``V / (1 - alpha^t)``, so that the first steps'
mass is the force's scale rather than ``sqrt(1 - alpha)`` of it) or a start near the target.

At ``temperature=0`` on an unconstrained parameter, [`ConstrainedSGLD`][constrained_sgld.ConstrainedSGLD]
with the preconditioner is ``torch.optim.RMSprop(lr, alpha, eps)`` and the momentum optimiser is
``RMSprop(lr, alpha, eps, momentum=c)`` (the same updates, ``V`` starting at zero as RMSprop's;
without ``bias_correction``, the default).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..constraints.base import Constraint

__all__ = ["make_preconditioner", "precondition", "preconditioner_state", "DEFAULTS", "PRECONDITIONER_KEYS"]

#: the per-parameter state keys the preconditioner owns (one value per block, not per entry)
PRECONDITIONER_KEYS = ("second_moment", "mass", "preconditioner_step")

#: the options of the RMSprop form and their defaults (those of ``torch.optim.RMSprop``)
DEFAULTS: Dict[str, Any] = {"kind": "rmsprop", "alpha": 0.99, "eps": 1e-8, "adapt_steps": None, "bias_correction": False}


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def make_preconditioner(spec: Any, where: Any = "") -> Optional[Dict[str, Any]]:
    """A group's ``preconditioner`` option as plain data (what ``state_dict`` saves): ``None``, or a
    dict with every key of `DEFAULTS`. Accepts ``None``, ``"rmsprop"`` or a dict of options.
    ``where`` (a string, or a callable giving one, formatted only for an error) says where."""

    def at() -> str:
        w = where() if callable(where) else where
        return f" {w}" if w else ""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "rmsprop":
            raise ValueError(f"invalid preconditioner={spec!r}{at()}: the preconditioners are None and 'rmsprop'")
        return dict(DEFAULTS)
    if not isinstance(spec, dict):
        raise ValueError(
            f"invalid preconditioner={spec!r}{at()}: preconditioner must be None, 'rmsprop' or a dict of its options "
            f"({', '.join(k for k in DEFAULTS if k != 'kind')})"
        )
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"invalid preconditioner option(s) {unknown}{at()}: the options are {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **spec}
    if out["kind"] != "rmsprop":
        raise ValueError(f"invalid preconditioner kind={out['kind']!r}{at()}: the only kind is 'rmsprop'")
    if not (_finite_number(out["alpha"]) and 0 <= out["alpha"] < 1):
        raise ValueError(f"invalid preconditioner alpha={out['alpha']!r}{at()}: alpha must be a number in [0, 1)")
    if not (_finite_number(out["eps"]) and out["eps"] > 0):
        raise ValueError(f"invalid preconditioner eps={out['eps']!r}{at()}: eps must be a finite number > 0")
    if not isinstance(out["bias_correction"], bool):
        raise ValueError(f"invalid preconditioner bias_correction={out['bias_correction']!r}{at()}: bias_correction must be True or False")
    steps = out["adapt_steps"]
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        raise ValueError(f"invalid preconditioner adapt_steps={steps!r}{at()}: adapt_steps must be None (adapt continually) or an int >= 0")
    out["alpha"], out["eps"] = float(out["alpha"]), float(out["eps"])
    return out


def preconditioner_state(constraint: Constraint, p: Tensor, state: Dict[str, Any]) -> None:
    """Create ``state``'s preconditioner entries for ``p`` if missing: ``second_moment`` (``V``, one
    value per block of the set, zero as RMSprop's), ``mass`` (``sqrt(V) + eps``, set by the first
    adapting step) and ``preconditioner_step`` (the steps ``V`` has adapted so far)."""
    if "second_moment" not in state:
        block = constraint.block_mean(p, p)
        state["second_moment"] = torch.zeros_like(block, memory_format=torch.contiguous_format)
        state["mass"] = torch.ones_like(block, memory_format=torch.contiguous_format)
        state["preconditioner_step"] = 0


def precondition(
    spec: Dict[str, Any],
    constraint: Constraint,
    params: List[Tensor],
    grads: List[Tensor],
    noise: Optional[List[Tensor]],
    states: List[Dict[str, Any]],
    weight_decay: float,
) -> Tuple[List[Tensor], Optional[List[Tensor]]]:
    """One step of the preconditioner for a group's lists (the module's equations).

    Adapts ``V`` and ``M`` in ``states`` (in place), and returns the preconditioned forces
    ``(g + weight_decay * x) / M`` (new tensors: ``.grad`` is never written) and the noise scaled
    by ``M^-1/2`` (in place on ``noise``; ``None`` stays ``None``). The caller runs the scheme
    with these forces and no weight decay. ``states`` hold the preconditioner's entries already
    (`preconditioner_state()`; the optimiser creates them with the rest of a parameter's state)."""
    if weight_decay != 0:
        forces = torch._foreach_add(grads, params, alpha=weight_decay)
    else:
        forces = list(grads)
    limit = spec["adapt_steps"]
    adapting = [i for i, s in enumerate(states) if limit is None or s["preconditioner_step"] < limit]
    if adapting:
        pick = lambda xs: [xs[i] for i in adapting]  # noqa: E731
        moments, masses = pick([s["second_moment"] for s in states]), pick([s["mass"] for s in states])
        constraint.second_moment_(pick(params), moments, pick(forces), spec["alpha"])
        # in place: a skipped sync-free step restores the state tensors it snapshotted
        torch._foreach_copy_(masses, moments)
        torch._foreach_sqrt_(masses)
        for i in adapting:
            states[i]["preconditioner_step"] += 1
        if spec["bias_correction"]:  # Adam's: V / (1 - alpha^t), t the steps adapted (host ints, no sync)
            alpha = spec["alpha"]
            torch._foreach_mul_(masses, [(1.0 - alpha ** states[i]["preconditioner_step"]) ** -0.5 for i in adapting])
        torch._foreach_add_(masses, spec["eps"])
    masses = [s["mass"] for s in states]
    if weight_decay != 0:
        torch._foreach_div_(forces, masses)
    else:
        forces = torch._foreach_div(forces, masses)
    if noise is not None:
        torch._foreach_div_(noise, torch._foreach_sqrt(masses))
    return forces, noise
