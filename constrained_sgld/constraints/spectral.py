"""Spectral geometry for the spectral step (``preconditioner="spectral"``): the matrix sign and the
steepest-descent direction in the spectral norm on the Stiefel manifold.

- ``msign(X) = U V^T`` for ``X = U S V^T``: the nearest semi-orthogonal matrix (the polar factor),
  the unit-spectral-norm direction that maximises ``<X, A>``. Computed either exactly from the SVD
  (singular values below ``eps * max`` count as zero, so ``msign(0) = 0`` as for the iteration), or
  by Muon's quintic Newton-Schulz iteration (Jordan et al. 2024): ``X <- a X + (b A + c A^2) X``
  with ``A = X X^T`` on the wide orientation, after ``X / |X|_F``. With Muon's coefficients
  ``(3.4445, -4.7750, 2.0315)`` and 5 steps the singular values land in about ``[0.7, 1.2]``, not
  at 1: a direction, not a projection (positions are kept on the set by the set's retraction).

- Steepest descent on the Stiefel manifold in the spectral norm (Thinking Machines, "Modular
  Manifolds", 2025): for a unit-scale tall ``W`` (``W^T W = I``) and a force ``M``, the direction
  ``A`` maximising ``<M, A>`` subject to ``|A|_op <= 1`` and ``W^T A + A^T W = 0`` (tangent).
  Lagrange multipliers ``Lambda`` (symmetric) give ``A(Lambda) = msign(M + 2 W Lambda)`` and the
  dual ``min_Lambda |M + 2 W Lambda|_*`` (nuclear norm), whose gradient is ``W^T A + A^T W``.

  * Square ``W`` (the orthogonal group, Modula's closed form): the optimum is
    ``Lambda = -sym(W^T M) / 2``, so ``A = W msign(skew(W^T M))``, one matrix sign. In odd
    dimension ``skew(W^T M)`` is singular and ``A`` has one zero singular value (still the
    optimum: the objective does not see that direction).
  * Tall ``W``: subgradient descent on the dual from that same ``Lambda`` (where ``M + 2 W Lambda``
    is the tangent projection of ``M``), ``dual_steps`` steps of size ``dual_lr / sqrt(k j)`` (step
    ``j``) on ``M / |M|_F``; one matrix sign per step. With ``dual_steps=0`` it is ``msign(T_W M)``.
    The dual is non-smooth and this method converges slowly: it is an approximation of the
    steepest direction, better than ``msign(T_W M)`` (tests/constraints/test_spectral.py
    measures both against the dual bound), not the optimum.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["SpectralStep", "msign_newton_schulz", "msign_svd", "stiefel_steepest", "MUON_COEFFICIENTS"]

#: Muon's quintic Newton-Schulz coefficients (Jordan et al. 2024; ``torch.optim.Muon``'s defaults)
MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def msign_newton_schulz(x: Tensor, steps: int = 5, coefficients: Tuple[float, float, float] = MUON_COEFFICIENTS,
                        eps: float = 1e-7, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Muon's approximate ``msign`` of (a batch of) matrices ``(..., n, k)``, computed in ``dtype``
    (default: ``x``'s) and returned in that dtype. Each matrix is scaled by its own Frobenius norm
    (at least ``eps``). The iteration runs on the wide orientation, where ``X X^T`` is the smaller
    Gram matrix. On a single matrix the operations are those of ``torch.optim.Muon`` in the same
    order (so that in bfloat16 the two agree bit for bit)."""
    a, b, c = coefficients
    y = x.to(dtype) if dtype is not None else x.clone()
    tall = y.shape[-2] > y.shape[-1]
    if tall:
        y = y.transpose(-2, -1)
    if y.ndim == 2:
        y.div_(y.norm().clamp(min=eps))
        for _ in range(steps):
            gram = y @ y.T
            poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            y = torch.addmm(y, poly, y, beta=a)
    else:
        shape = y.shape
        y = y.reshape(-1, *shape[-2:])
        y = y / torch.linalg.matrix_norm(y).clamp(min=eps)[:, None, None]
        for _ in range(steps):
            gram = y @ y.transpose(-2, -1)
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            y = torch.baddbmm(y, poly, y, beta=a)
        y = y.reshape(shape)
    return y.transpose(-2, -1) if tall else y


def msign_svd(x: Tensor, eps: float = 1e-7) -> Tensor:
    """The exact ``msign`` of (a batch of) matrices: ``U V^T`` over the singular values above
    ``eps`` times the largest (the rest, a rank deficiency, map to 0). Half precision is
    decomposed in float32 (no half SVD kernel on the CPU) and cast back."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return msign_svd(x.float(), eps).to(x.dtype)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    keep = (s > eps * s.amax(dim=-1, keepdim=True)).to(x.dtype)
    return (u * keep.unsqueeze(-2)) @ vh


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.transpose(-2, -1))


def _skew(a: Tensor) -> Tensor:
    return 0.5 * (a - a.transpose(-2, -1))


def stiefel_steepest(w: Tensor, m: Tensor, msign, dual_steps: int = 2, dual_lr: float = 0.1,
                     lam: Optional[Tensor] = None) -> Tensor:
    """The spectral-norm steepest direction ``A`` (maximising ``<m, A>``; descend along ``-A``) at
    unit-scale tall ``w`` ``(..., n, k)``, ``n >= k`` (the module's equations). ``msign``: a callable
    on batches of matrices. Square: the closed form. Tall: ``dual_steps`` of dual descent from
    ``lam`` (default: ``-sym(w^T m) / 2``, the tangent projection's multiplier)."""
    n, k = w.shape[-2:]
    wt_m = w.transpose(-2, -1) @ m
    if n == k and lam is None:
        return w @ msign(_skew(wt_m))
    # one scale per matrix, so that dual_lr means the same for every force (A does not depend on it)
    norm = torch.linalg.matrix_norm(m).clamp(min=torch.finfo(m.dtype).tiny)[..., None, None]
    m = m / norm
    lam = -0.5 * _sym(wt_m) / norm if lam is None else lam / norm
    for j in range(dual_steps):
        a = msign(m + 2 * w @ lam)
        gram = w.transpose(-2, -1) @ a
        lam = lam - dual_lr / math.sqrt(k * (j + 1)) * (gram + gram.transpose(-2, -1))
    return msign(m + 2 * w @ lam)


def dual_gap(w: Tensor, m: Tensor, a: Tensor) -> Tuple[Tensor, Tensor]:
    """For a direction ``a`` at tall ``w``: ``(primal, bound)``, where ``primal = <m, T_w a>`` over
    ``|T_w a|_op`` (a feasible value) and ``bound = |T_w m|_*`` (the dual value at the tangent
    projection's multiplier, an upper bound on the optimum). Used by the tests."""
    def tangent(v):
        return v - w @ _sym(w.transpose(-2, -1) @ v)
    t = tangent(a)
    op = torch.linalg.matrix_norm(t, ord=2)
    primal = (m * t).sum(dim=(-2, -1)) / op
    bound = torch.linalg.matrix_norm(tangent(m), ord="nuc")
    return primal, bound


class SpectralStep:
    """The spectral step's options as the sets see them: ``variant`` (``"project"`` or
    ``"steepest"``), ``msign(x)`` (batched), ``scale(rows, cols)`` (Muon's ``adjust_lr_fn``:
    the factor on the step of a ``rows x cols`` matrix), ``dual_steps`` and ``dual_lr``."""

    def __init__(self, variant: str = "project", msign: str = "newton_schulz", ns_steps: int = 5,
                 ns_coefficients: Tuple[float, float, float] = MUON_COEFFICIENTS, ns_dtype: Optional[str] = None,
                 eps: float = 1e-7, adjust_lr: Optional[str] = "original", dual_steps: int = 2, dual_lr: float = 0.1):
        self.variant = variant
        self.method = msign
        self.ns_steps = ns_steps
        self.ns_coefficients = tuple(ns_coefficients)
        self.ns_dtype = ns_dtype
        self.eps = eps
        self.adjust_lr = adjust_lr
        self.dual_steps = dual_steps
        self.dual_lr = dual_lr

    def msign(self, x: Tensor) -> Tensor:
        """``msign(x)`` in ``x``'s dtype (computed in ``ns_dtype``: default bfloat16 on CUDA, as
        Muon, and ``x``'s own dtype elsewhere, where bfloat16 products are often emulated)."""
        if self.method == "svd":
            return msign_svd(x, self.eps)
        if self.ns_dtype is None:
            dtype = torch.bfloat16 if x.device.type == "cuda" else None
        else:
            dtype = _DTYPES[self.ns_dtype]
        return msign_newton_schulz(x, self.ns_steps, self.ns_coefficients, self.eps, dtype).to(x.dtype)

    def scale(self, rows: int, cols: int) -> float:
        """Muon's shape factor (``torch.optim.Muon``'s ``adjust_lr_fn``)."""
        if self.adjust_lr == "original":
            return math.sqrt(max(1.0, rows / cols))
        if self.adjust_lr == "match_rms_adamw":
            return 0.2 * math.sqrt(max(rows, cols))
        return 1.0
