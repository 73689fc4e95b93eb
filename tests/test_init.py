"""The initialisers give the moments they promise (tolerances from standard errors of replicates)."""

import math

import pytest
import torch

from constrained_sgld import Box, NonNegative, Orthogonal, Sphere
from constrained_sgld.init import icnn_, icnn_moments, near_binary_, orthogonal_, sphere_

Z = 4.5


def within(estimates, expected, label):
    """The mean of independent replicate estimates is ``expected`` within Z standard errors."""
    x = torch.tensor(estimates, dtype=torch.float64)
    se = x.std() / math.sqrt(len(x))
    assert abs(x.mean().item() - expected) < Z * se.item() + 1e-12, f"{label}: {x.mean().item():.5f} vs {expected:.5f} (se {se.item():.5f})"


def test_icnn_preactivations_have_unit_variance_zero_mean_and_correlation_rho():
    """Inputs relu(z), z unit-variance Gaussians with pairwise correlation rho: the promise is
    pre-activations with mean 0, second moment 1 and pairwise second moment rho over the random
    weights and inputs together (docs/initialisers.md)."""
    g = torch.Generator().manual_seed(0)
    n, out, samples, rho = 64, 256, 1000, 0.5
    means, variances, correlations = [], [], []
    for _ in range(150):  # independent replicates: fresh weights and inputs
        common = torch.randn(samples, 1, generator=g, dtype=torch.float64)
        z = math.sqrt(rho) * common + math.sqrt(1 - rho) * torch.randn(samples, n, generator=g, dtype=torch.float64)
        w = torch.empty(out, n, dtype=torch.float64)
        b = torch.empty(out, dtype=torch.float64)
        icnn_(w, b, rho=rho, generator=g)
        s = torch.relu(z) @ w.T + b
        # moments over the random weights and inputs together (the promise is about both)
        means.append(s.mean().item())
        variances.append(s.square().mean().item())
        total = s.sum(1)
        correlations.append(((total.square() - s.square().sum(1)) / (out * (out - 1))).mean().item())
    within(means, 0.0, "mean")
    within(variances, 1.0, "variance")
    within(correlations, rho, "correlation")
    assert NonNegative().violation(w) == 0


def test_icnn_moments_closed_form():
    mean, var, bias = icnn_moments(100, rho=0.5)
    m = math.sqrt(0.75) + 0.5 * math.acos(-0.5)
    f = 100 * (math.pi - 100 + 99 * m) / (2 * math.pi)
    assert mean**2 * f == pytest.approx(0.5) and 100 * var / 2 == pytest.approx(0.5)
    assert bias == pytest.approx(-100 * mean / math.sqrt(2 * math.pi))
    with pytest.raises(ValueError, match="rho"):
        icnn_moments(10, rho=1.0)


def test_near_binary_moments():
    g = torch.Generator().manual_seed(1)
    spread = 0.2
    stats = [[], [], []]
    for _ in range(30):
        w = near_binary_(torch.empty(5000, dtype=torch.float64), spread=spread, generator=g)
        assert Box(lower=-1.0, upper=1.0).violation(w) == 0 and w.abs().min() >= 1 - spread
        for s, v in zip(stats, (w.mean(), w.abs().mean(), w.square().mean())):
            s.append(v.item())
    within(stats[0], 0.0, "E[w]")
    within(stats[1], 1 - spread / 2, "E|w|")
    within(stats[2], 1 - spread + spread**2 / 3, "E[w^2]")


def test_orthogonal_and_sphere_initialisers():
    torch.manual_seed(0)
    w = orthogonal_(torch.empty(8, 3, 3, 3), scale=2.0)  # wide as a matrix: 8 x 27
    assert Orthogonal(scale=2.0).violation(w) < 1e-5
    # Haar: each entry of an n x k orthonormal matrix has E[x^2] = 1/n
    entries = [orthogonal_(torch.empty(6, 2, dtype=torch.float64))[0, 0].item() ** 2 for _ in range(3000)]
    within(entries, 1 / 6, "E[X00^2]")
    s = sphere_(torch.empty(50, 4, dtype=torch.float64), radius=3.0)
    assert Sphere(radius=3.0).violation(s) < 1e-12
    first = [sphere_(torch.empty(200, 4, dtype=torch.float64))[:, 0].square().mean().item() for _ in range(50)]
    within(first, 1 / 4, "E[x0^2] on S^3")
