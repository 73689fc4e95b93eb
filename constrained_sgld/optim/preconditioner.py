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
without ``bias_correction``, the default). ``per_entry=True`` keeps one mass per entry even on a
coupled set (RMSprop's own, to compare with); it is refused at ``temperature > 0`` on a set whose
blocks are larger than an entry, where it would bias the law.

Two further kinds are *optimisers only*: they are refused at ``temperature > 0`` (no stationary law
is claimed or tested for them; see docs/dynamics.md, "Steps that only optimise").

``"adam"``: Adam's two moments with bias correction (Kingma & Ba 2015). Per step, ``t`` counting::

    f  = g + weight_decay * x      (or f = g with decoupled_weight_decay: the scheme decays x, AdamW)
    m <- beta1 m + (1 - beta1) f                   first moment of the raw force
    V <- beta2 V + (1 - beta2) f * f               per entry (per_entry=True, default) or per block
    M  = sqrt(V) / sqrt(1 - beta2^t) + eps
    f -> (m / (1 - beta1^t)) / M

The scheme then projects this force on the set's tangent space and retracts. Without a constraint,
`ConstrainedSGLD` at ``temperature=0`` is ``torch.optim.Adam`` (``AdamW`` with
``decoupled_weight_decay=True``).

``"spectral"``: Muon's momentum and a unit direction in the norm the set singles out
(`Constraint.spectral_direction_many`; ``constraints/spectral.py``)::

    B <- mu B + (1 - mu) g                         (torch.optim.Muon's buffer)
    U  = (1 - mu) g + mu B   with nesterov, else B
    f  = direction(x, U)                           unconstrained matrix: msign(U) (Muon);
                                                   orthogonal: msign(U) ("project") or the
                                                   spectral-norm steepest direction ("steepest");
                                                   sphere, ball: U normalised per norm slice

Weight decay is decoupled (as Muon's). Without a constraint, `ConstrainedSGLD` at
``temperature=0`` with ``ns_dtype="bfloat16"`` is ``torch.optim.Muon``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..constraints.base import Constraint
from ..constraints.spectral import MUON_COEFFICIENTS, SpectralStep

__all__ = ["make_preconditioner", "precondition", "preconditioner_state", "check_preconditioner", "DEFAULTS", "KINDS", "PRECONDITIONER_KEYS"]

#: the per-parameter state keys the preconditioners own
PRECONDITIONER_KEYS = ("second_moment", "mass", "preconditioner_step", "first_moment")

#: the options of the RMSprop form and their defaults (those of ``torch.optim.RMSprop``)
DEFAULTS: Dict[str, Any] = {"kind": "rmsprop", "alpha": 0.99, "eps": 1e-8, "adapt_steps": None, "bias_correction": False,
                            "per_entry": False, "decoupled_weight_decay": False}

#: every kind's options and defaults (``torch.optim.Adam``'s and ``torch.optim.Muon``'s where they have one)
KINDS: Dict[str, Dict[str, Any]] = {
    "rmsprop": DEFAULTS,
    "adam": {"kind": "adam", "betas": (0.9, 0.999), "eps": 1e-8, "per_entry": True, "decoupled_weight_decay": False},
    "spectral": {"kind": "spectral", "momentum": 0.95, "nesterov": True, "variant": "project", "msign": "newton_schulz",
                 "ns_steps": 5, "ns_coefficients": MUON_COEFFICIENTS, "ns_dtype": None, "eps": 1e-7,
                 "adjust_lr": "original", "dual_steps": 2, "dual_lr": 0.1},
}

#: the kinds whose stationary law the statistical suite tests (the others refuse temperature > 0)
SAMPLING_KINDS = ("rmsprop",)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _int_in(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def make_preconditioner(spec: Any, where: Any = "") -> Optional[Dict[str, Any]]:
    """A group's ``preconditioner`` option as plain data (what ``state_dict`` saves): ``None``, or a
    dict with every option of its kind (`KINDS`). Accepts ``None``, a kind's name (``"rmsprop"``,
    ``"adam"``, ``"spectral"``) or a dict of options (``"kind"`` defaults to ``"rmsprop"``).
    ``where`` (a string, or a callable giving one, formatted only for an error) says where."""

    def at() -> str:
        w = where() if callable(where) else where
        return f" {w}" if w else ""

    def bad(option: str, must: str):
        raise ValueError(f"invalid preconditioner {option}={out[option]!r}{at()}: {option} must be {must}")

    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in KINDS:
            raise ValueError(f"invalid preconditioner={spec!r}{at()}: the preconditioners are None, {', '.join(map(repr, KINDS))}")
        spec = {"kind": spec}
    if not isinstance(spec, dict):
        raise ValueError(
            f"invalid preconditioner={spec!r}{at()}: preconditioner must be None, one of {', '.join(map(repr, KINDS))} "
            "or a dict of its options"
        )
    kind = spec.get("kind", "rmsprop")
    if kind not in KINDS:
        raise ValueError(f"invalid preconditioner kind={kind!r}{at()}: the kinds are {', '.join(map(repr, KINDS))}")
    defaults = KINDS[kind]
    unknown = sorted(set(spec) - set(defaults))
    if unknown:
        raise ValueError(f"invalid preconditioner option(s) {unknown} for kind {kind!r}{at()}: its options are {sorted(defaults)}")
    out = {**defaults, **spec}
    if not (_finite_number(out["eps"]) and out["eps"] > 0):
        bad("eps", "a finite number > 0")
    out["eps"] = float(out["eps"])
    for flag in ("bias_correction", "per_entry", "decoupled_weight_decay", "nesterov"):
        if flag in out and not isinstance(out[flag], bool):
            bad(flag, "True or False")
    if kind == "rmsprop":
        if not (_finite_number(out["alpha"]) and 0 <= out["alpha"] < 1):
            bad("alpha", "a number in [0, 1)")
        steps = out["adapt_steps"]
        if steps is not None and not _int_in(steps, 0, 2**62):
            bad("adapt_steps", "None (adapt continually) or an int >= 0")
        out["alpha"] = float(out["alpha"])
    elif kind == "adam":
        betas = out["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(_finite_number(b) and 0 <= b < 1 for b in betas)):
            bad("betas", "two numbers in [0, 1)")
        out["betas"] = (float(betas[0]), float(betas[1]))
    else:
        if not (_finite_number(out["momentum"]) and 0 <= out["momentum"] < 1):
            bad("momentum", "a number in [0, 1)")
        if out["variant"] not in ("project", "steepest"):
            bad("variant", "'project' or 'steepest'")
        if out["msign"] not in ("newton_schulz", "svd"):
            bad("msign", "'newton_schulz' or 'svd'")
        if not _int_in(out["ns_steps"], 1, 99):
            bad("ns_steps", "an int in [1, 99]")
        coefficients = out["ns_coefficients"]
        if not (isinstance(coefficients, (tuple, list)) and len(coefficients) == 3 and all(map(_finite_number, coefficients))):
            bad("ns_coefficients", "three finite numbers")
        out["ns_coefficients"] = tuple(float(c) for c in coefficients)
        if out["ns_dtype"] not in (None, "bfloat16", "float16", "float32", "float64"):
            bad("ns_dtype", "None (bfloat16 on CUDA, the parameter's dtype elsewhere) or a dtype's name ('bfloat16', 'float32', ...)")
        if out["adjust_lr"] not in (None, "original", "match_rms_adamw"):
            bad("adjust_lr", "None, 'original' or 'match_rms_adamw' (torch.optim.Muon's adjust_lr_fn)")
        if not _int_in(out["dual_steps"], 0, 10_000):
            bad("dual_steps", "an int >= 0")
        if not (_finite_number(out["dual_lr"]) and out["dual_lr"] > 0):
            bad("dual_lr", "a finite number > 0")
        out["momentum"], out["dual_lr"] = float(out["momentum"]), float(out["dual_lr"])
    return out


def _coupled(constraint: Constraint, p: Tensor) -> bool:
    """Whether the set's preconditioner blocks at ``p`` are larger than an entry (shapes only)."""
    meta = torch.empty(p.shape, device="meta")
    return constraint.block_mean(meta, meta).shape != meta.shape


def check_preconditioner(spec: Optional[Dict[str, Any]], constraint: Constraint, params: List[Tensor], labels: List[str],
                         temperature: float, sharded: List[bool], where: Any = "") -> None:
    """Refuse, before anything moves, a preconditioner the group cannot take: an optimiser-only kind
    (``"adam"``, ``"spectral"``) at ``temperature > 0``; a per-entry mass on a coupled set at
    ``temperature > 0``; the spectral step on a set or shape that does not define it, or on a
    sharded parameter (its matrix sign needs the whole matrix)."""
    if spec is None:
        return

    def at() -> str:
        w = where() if callable(where) else where
        return f" {w}" if w else ""
    kind = spec["kind"]
    if temperature > 0 and kind not in SAMPLING_KINDS:
        raise ValueError(
            f"preconditioner kind {kind!r} with temperature={temperature!r}{at()}: the {kind} step is an optimiser "
            "(a first moment, or a matrix sign, in the drift), and no stationary law is claimed or tested for it "
            "with noise; use it at temperature=0, or sample with preconditioner='rmsprop' (bias_correction=True "
            "gives Adam's second moment)"
        )
    if temperature > 0 and spec.get("per_entry"):
        for p, label in zip(params, labels):
            if _coupled(constraint, p):
                raise ValueError(
                    f"preconditioner per_entry=True with temperature={temperature!r} on parameter {label!r}{at()}: "
                    f"the '{constraint.name}' set couples its entries, and a mass per entry biases the law there "
                    "(docs/dynamics.md); use per_entry=False (one mass per block) to sample"
                )
    if kind == "spectral":
        for p, label, split in zip(params, labels, sharded):
            constraint.spectral_check(p, label)
            if split:
                raise ValueError(
                    f"parameter {label!r} is sharded (a DTensor, e.g. from FSDP's fully_shard), and the spectral step's "
                    "matrix sign needs the whole matrix on one rank; keep this parameter unsharded (apply fully_shard "
                    "to the other modules only), or give it preconditioner='adam'"
                )


def preconditioner_state(constraint: Constraint, p: Tensor, state: Dict[str, Any], spec: Optional[Dict[str, Any]] = None) -> None:
    """Create ``state``'s entries for ``spec``'s kind (default: RMSprop) where missing:
    ``second_moment`` (``V``, one value per block of the set, or per entry with ``per_entry``; zero
    as RMSprop's) and ``mass`` (``sqrt(V) + eps``, set by the first adapting step), ``first_moment``
    (Adam's ``m``, Muon's buffer ``B``: zeros shaped like ``p``), and ``preconditioner_step`` (the
    steps the moments have adapted so far). A second moment of the wrong shape (``per_entry``
    changed) starts again from zero."""
    kind = "rmsprop" if spec is None else spec["kind"]
    if kind in ("rmsprop", "adam"):
        shape = p.shape if (spec is not None and spec["per_entry"]) else constraint.block_mean(p, p).shape
        if "second_moment" not in state or state["second_moment"].shape != shape:
            state["second_moment"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            state["mass"] = torch.ones(shape, dtype=p.dtype, device=p.device)
            state["preconditioner_step"] = 0
    if kind in ("adam", "spectral") and "first_moment" not in state:
        state["first_moment"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
    state.setdefault("preconditioner_step", 0)


def needs_state(spec: Dict[str, Any], state: Dict[str, Any], p: Tensor) -> bool:
    """Whether `preconditioner_state()` has something to create for ``spec`` in ``state``."""
    kind = spec["kind"]
    if kind in ("adam", "spectral") and "first_moment" not in state:
        return True
    if kind in ("rmsprop", "adam"):
        return "second_moment" not in state or (spec["per_entry"] and state["second_moment"].shape != p.shape)
    return "preconditioner_step" not in state


def _second_moment_(spec, constraint, params, moments, forces, alpha) -> None:
    if spec["per_entry"]:
        torch._foreach_mul_(moments, alpha)
        torch._foreach_addcmul_(moments, forces, forces, value=1.0 - alpha)
    else:
        constraint.second_moment_(params, moments, forces, alpha)


def precondition(
    spec: Dict[str, Any],
    constraint: Constraint,
    params: List[Tensor],
    grads: List[Tensor],
    noise: Optional[List[Tensor]],
    states: List[Dict[str, Any]],
    weight_decay: float,
) -> Tuple[List[Tensor], Optional[List[Tensor]], float, Optional[List[Tensor]]]:
    """One step of the preconditioner for a group's lists (the module's equations).

    Adapts the moments in ``states`` (in place), and returns ``(forces, noise, weight_decay, mass)``:
    the forces the scheme uses (new tensors: ``.grad`` is never written), the noise scaled by
    ``M^-1/2`` (in place on ``noise``; ``None`` stays ``None``), the weight decay left for the scheme
    (0 where it was folded into the forces; the group's own where it is decoupled) and the masses
    (``None`` for the spectral step, which has none). ``states`` hold the kind's entries already
    (`preconditioner_state()`)."""
    kind = spec["kind"]
    if kind == "spectral":
        return _spectral(spec, constraint, params, grads, states), noise, weight_decay, None
    decoupled = spec["decoupled_weight_decay"]
    if weight_decay != 0 and not decoupled:
        forces = torch._foreach_add(grads, params, alpha=weight_decay)
    else:
        forces = list(grads)
    left = weight_decay if decoupled else 0.0
    if kind == "adam":
        return _adam(spec, constraint, params, forces, states), noise, left, [s["mass"] for s in states]
    limit = spec["adapt_steps"]
    adapting = [i for i, s in enumerate(states) if limit is None or s["preconditioner_step"] < limit]
    if adapting:
        pick = lambda xs: [xs[i] for i in adapting]  # noqa: E731
        moments, masses = pick([s["second_moment"] for s in states]), pick([s["mass"] for s in states])
        _second_moment_(spec, constraint, pick(params), moments, pick(forces), spec["alpha"])
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
    if weight_decay != 0 and not decoupled:
        torch._foreach_div_(forces, masses)
    else:
        forces = torch._foreach_div(forces, masses)
    if noise is not None:
        torch._foreach_div_(noise, torch._foreach_sqrt(masses))
    return forces, noise, left, masses


def _adam(spec, constraint, params, forces, states) -> List[Tensor]:
    """Adam's moments (in place in ``states``) and its force ``m_hat / (sqrt(v_hat) + eps)``."""
    beta1, beta2 = spec["betas"]
    firsts = [s["first_moment"] for s in states]
    moments, masses = [s["second_moment"] for s in states], [s["mass"] for s in states]
    torch._foreach_lerp_(firsts, forces, 1.0 - beta1)
    _second_moment_(spec, constraint, params, moments, forces, beta2)
    for s in states:
        s["preconditioner_step"] += 1
    steps = [s["preconditioner_step"] for s in states]  # host ints: no sync
    # torch.optim.Adam's order: (sqrt(V) / sqrt(1 - beta2^t)) + eps, and m / (1 - beta1^t) on top
    torch._foreach_copy_(masses, moments)
    torch._foreach_sqrt_(masses)
    torch._foreach_div_(masses, [(1.0 - beta2**t) ** 0.5 for t in steps])
    torch._foreach_add_(masses, spec["eps"])
    out = torch._foreach_div(firsts, [1.0 - beta1**t for t in steps])
    torch._foreach_div_(out, masses)
    return out


def spectral_step(spec: Dict[str, Any]) -> SpectralStep:
    """The spectral kind's options as the sets take them."""
    return SpectralStep(
        variant=spec["variant"], msign=spec["msign"], ns_steps=spec["ns_steps"], ns_coefficients=spec["ns_coefficients"],
        ns_dtype=spec["ns_dtype"], eps=spec["eps"], adjust_lr=spec["adjust_lr"], dual_steps=spec["dual_steps"], dual_lr=spec["dual_lr"],
    )


def _spectral(spec, constraint, params, grads, states) -> List[Tensor]:
    """Muon's buffer (in place in ``states``) and the set's unit direction of the update."""
    mu = spec["momentum"]
    buffers = [s["first_moment"] for s in states]
    torch._foreach_lerp_(buffers, grads, 1.0 - mu)
    updates = torch._foreach_lerp(grads, buffers, mu) if spec["nesterov"] else buffers
    for s in states:
        s["preconditioner_step"] += 1
    return constraint.spectral_direction_many(params, updates, spectral_step(spec))
