"""Initialisers matched to the constraint sets (in place, like ``torch.nn.init``).

- [`orthogonal_()`][constrained_sgld.init.orthogonal_]: Haar-distributed orthonormal rows or columns (``orthogonal``).
- [`sphere_()`][constrained_sgld.init.sphere_]: uniform on the sphere of each row, or of the whole tensor (``sphere``).
- [`icnn_()`][constrained_sgld.init.icnn_]: log-normal non-negative weights and a shifted bias for input-convex networks
  (``nonnegative``), Hoedt & Klambauer, NeurIPS 2023.
- [`near_binary_()`][constrained_sgld.init.near_binary_]: entries close to +-1 for ``box(-1, 1)`` surrogates of binary weights
  (after Stamatescu et al. 2019).

Sources and derivations: docs/initialisers.md.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .constraints import Orthogonal, Sphere

__all__ = ["orthogonal_", "sphere_", "icnn_", "icnn_moments", "near_binary_"]


@torch.no_grad()
def orthogonal_(tensor: Tensor, scale: float = 1.0) -> Tensor:
    """Haar-distributed point of ``orthogonal(scale=scale)``: ``W^T W = scale^2 I`` (tall) or
    ``W W^T = scale^2 I`` (wide); conv weights as ``(out, in * prod(kernel))`` matrices."""
    return Orthogonal(scale=scale).init_(tensor)


@torch.no_grad()
def sphere_(tensor: Tensor, radius: float = 1.0, dim: Any = "rows") -> Tensor:
    """Uniform on the sphere of radius ``radius``: a standard normal, normalised over ``dim``
    (``"rows"``: each output unit; ``None``: the whole tensor); rotation invariance of the normal
    makes the direction uniform."""
    return Sphere(radius=radius, dim=dim).init_(tensor)


def icnn_moments(fan_in: int, rho: float = 0.5, alpha: float = 0.0, target_variance: float = 1.0) -> Tuple[float, float, float]:
    """The ICNN initialisation's weight mean, weight variance and bias for ``fan_in`` inputs.

    Inputs are taken to be ``relu(z)`` (leaky slope ``alpha``) of unit-variance Gaussians with pairwise
    correlation ``rho``. With ``M = sqrt(1 - rho^2) + rho * acos(-rho)`` and
    ``f(n) = n (pi - n + (n - 1) M) / (2 pi)``, weights with squared mean ``m2 = rho / f(n)`` and
    variance ``v = 2 (1 - rho) / ((1 + alpha^2) n)`` give pre-activations of variance
    ``n v (1 + alpha^2) / 2 + m2 f(n) = 1`` and pairwise correlation ``rho``; the bias
    ``-n sqrt(m2 * target_variance / (2 pi))`` removes their mean.
    """
    n = fan_in
    if n < 1:
        raise ValueError(f"icnn_: fan_in must be >= 1, got {n}")
    if not 0.0 < rho < 1.0:
        raise ValueError(f"icnn_: rho must be in (0, 1), got {rho!r}")
    m = math.sqrt(1.0 - rho**2) + rho * math.acos(-rho)
    f = n * (math.pi - n + (n - 1) * m) / (2.0 * math.pi)
    m2 = rho / f
    v = 2.0 / (1.0 + alpha**2) * (1.0 - rho) / n
    bias = -n * math.sqrt(m2 * target_variance / (2.0 * math.pi))
    return math.sqrt(m2), v, bias


@torch.no_grad()
def icnn_(weight: Tensor, bias: Optional[Tensor] = None, rho: float = 0.5, alpha: float = 0.0, generator: Optional[torch.Generator] = None) -> Tensor:
    """Non-negative weights for input-convex networks (Hoedt & Klambauer, NeurIPS 2023).

    ``weight`` (``(out, in, *kernel)``, fan-in ``in * prod(kernel)``) is drawn from the log-normal
    whose mean and variance are those of [`icnn_moments()`][constrained_sgld.init.icnn_moments]: the underlying normal has mean
    ``log(m2) - log(m2 + v) / 2`` and variance ``log(1 + v / m2)``. ``bias`` (if given) is set to the
    constant that centres the pre-activations. Centred initialisations fail for non-negative
    weights: every pre-activation would start with a large positive mean.
    """
    fan_in = weight[0].numel() if weight.dim() > 1 else weight.numel()
    mean, var, b = icnn_moments(fan_in, rho, alpha)
    m2 = mean * mean
    mu = math.log(m2) - 0.5 * math.log(m2 + var)
    sigma = math.sqrt(math.log1p(var / m2))
    noise = torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device="cpu" if generator is not None else weight.device)
    weight.copy_(torch.exp(mu + sigma * noise.to(weight.device)))
    if bias is not None:
        bias.fill_(b)
    return weight


@torch.no_grad()
def near_binary_(tensor: Tensor, spread: float = 0.1, generator: Optional[torch.Generator] = None) -> Tensor:
    """Entries ``s (1 - spread * u)`` with a fair random sign ``s`` and ``u ~ U(0, 1)``: inside
    ``box(-1, 1)`` and close to its corners, as binary-weight surrogates need (deep networks with
    continuous surrogates of binary weights train when the means start near +-1; Stamatescu et al.
    2019). Moments: ``E[w] = 0``, ``E|w| = 1 - spread / 2``, ``E[w^2] = 1 - spread + spread^2 / 3``."""
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"near_binary_: spread must be in [0, 1], got {spread!r}")
    device = "cpu" if generator is not None else tensor.device
    sign = torch.randint(0, 2, tensor.shape, generator=generator, device=device).mul_(2).sub_(1)
    u = torch.rand(tensor.shape, generator=generator, device=device, dtype=tensor.dtype)
    tensor.copy_((sign.to(tensor.dtype) * (1.0 - spread * u)).to(tensor.device))
    return tensor
