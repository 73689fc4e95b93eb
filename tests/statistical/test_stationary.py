"""The stationary distributions are the documented ones: moments against closed forms.

Method. Many independent chains run at once as rows of one float64 parameter (or a batch of
matrices via ``batch_dims``), all started from one fixed point (so a test checks convergence, not
just invariance). After a burn-in, each chain's statistic is averaged over time; the chains are
independent, so the standard error of the across-chain mean is exactly std / sqrt(N). A check
passes when

    |mean - expected| <= Z * SE + allowance,     Z = 4.5 (false alarm < 1e-5 per check)

``allowance`` is the discretisation bias and is zero wherever the discrete chain's stationary law
is known exactly:
- U = 0 on the sphere, Stiefel manifold, circle: every step is equivariant under rotations, so the
  uniform law is invariant at any step size;
- U = 0 on the ball and the box: the reflecting step is an exact billiard (volume-preserving and
  reversible), so the uniform law is invariant at any step size;
- quadratic U (unconstrained, and reflected at 0 for ``nonnegative``): the overdamped step is an
  AR(1) chain whose stationary covariance is ``tau A^-1 (I - h A / 2)^-1`` exactly; the underdamped
  (BAOAB) chain samples the configurational law ``N(0, tau A^-1)`` exactly; reflection at 0
  commutes with these odd dynamics, so the folded law is exact too.
Only the von Mises-Fisher cases have an unknown O(lr) bias; their allowance is ``lr`` (one step
size, in the units of a statistic of order 1). The thermostat scheme (``nht``) keeps the
equivariance and billiard arguments (its friction is rotation- and reflection-invariant) but not
BAOAB's exactness on quadratic U: there it gets the same ``lr`` allowance, in the statistic's units.

``CSGLD_STAT_SEED`` picks the seed (``scripts/statistical_seeds.py`` reruns the suite on 20).
"""

import math
import os
import warnings

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD

Z = 4.5
SEED = int(os.environ.get("CSGLD_STAT_SEED", "0"))

SCHEMES = {
    "od": (ConstrainedSGLD, {}),
    "ud-m0.0": (ConstrainedUnderdampedSGLD, {"momentum": 0.0}),
    "ud-m0.5": (ConstrainedUnderdampedSGLD, {"momentum": 0.5}),
    "ud-m0.9": (ConstrainedUnderdampedSGLD, {"momentum": 0.9}),
    "nht-m0.5": (ConstrainedSGNHT, {"momentum": 0.5}),
    "nht-m0.9": (ConstrainedSGNHT, {"momentum": 0.9}),
}


def quadratic_allowance(scheme, lr, scale):
    """The thermostat's friction varies from step to step, so BAOAB's exactness on quadratic U does
    not carry over to it: an O(lr) bias, allowed as ``lr`` times the statistic's scale (as for the
    von Mises-Fisher cases). Zero for the other schemes (exact, see the module doc)."""
    return lr * scale if scheme.startswith("nht") else 0.0


def run_chains(scheme, x0, spec, grad_fn, stats, *, lr, temperature=1.0, steps, burn, schemes=None, options=None, prepare=None):
    """Per-chain time averages (after ``burn``) of each statistic in ``stats``. ``schemes``: the
    table ``scheme`` is looked up in (default ``SCHEMES``); ``options``: more optimiser keywords;
    ``prepare(opt, x)``: called once before the first step."""
    cls, extra = (schemes or SCHEMES)[scheme]
    x = torch.nn.Parameter(x0.clone().to(torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = cls([{"params": [x], "constraint": spec}], lr=lr, temperature=temperature, seed=SEED, **extra, **(options or {}))
    if prepare is not None:
        prepare(opt, x)
    sums = [0.0] * len(stats)
    for i in range(steps):
        x.grad = grad_fn(x.detach())
        opt.step()
        if i >= burn:
            for j, f in enumerate(stats):
                sums[j] = sums[j] + f(x.detach())
    return [s / (steps - burn) for s in sums], opt


def check(per_chain, expected, allowance=0.0, label=""):
    n = per_chain.numel()
    mean = per_chain.mean().item()
    se = per_chain.std().item() / math.sqrt(n)
    tol = Z * se + allowance
    assert abs(mean - expected) <= tol, (
        f"{label}: mean {mean:.5f}, expected {expected:.5f} (|diff| {abs(mean - expected):.5f} > "
        f"{Z} SE {se:.5f} + allowance {allowance:.5f}; seed {SEED})"
    )


def zero_grad(x):
    return torch.zeros_like(x)


schemes = pytest.mark.parametrize("scheme", sorted(SCHEMES))
# square orthogonal matrices: the Cayley map by the LU solve and by products only (forced: at these
# steps "auto" would take the solve)
cayley_routes = pytest.mark.parametrize("cayley", ["solve", "iterative"])


# ------------------------------------------------------------------ unconstrained
@schemes
def test_unconstrained_anisotropic_gaussian(scheme):
    tau, lr = 0.5, 0.02
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    cov = tau * torch.linalg.inv(a)
    if scheme == "od":  # exact stationary covariance of the Euler-Maruyama AR(1) chain
        cov = tau * torch.linalg.inv(a) @ torch.linalg.inv(torch.eye(2, dtype=torch.float64) - lr * a / 2)
    x0 = torch.zeros(2000, 2)
    stats = [lambda x: x[:, 0] ** 2, lambda x: x[:, 0] * x[:, 1], lambda x: x[:, 1] ** 2]
    (s00, s01, s11), _ = run_chains(scheme, x0, None, lambda x: x @ a, stats, lr=lr, temperature=tau, steps=1500, burn=300)
    allowance = quadratic_allowance(scheme, lr, cov.abs().max().item())
    check(s00, cov[0, 0].item(), allowance, label="cov00")
    check(s01, cov[0, 1].item(), allowance, label="cov01")
    check(s11, cov[1, 1].item(), allowance, label="cov11")


# ------------------------------------------------------------------ sphere
@schemes
@pytest.mark.parametrize("d", [3, 10])
def test_sphere_uniform_second_moments(scheme, d):
    r = 2.0
    x0 = torch.zeros(2000, d)
    x0[:, 0] = r
    stats = [lambda x: x[:, 0] ** 2, lambda x: x[:, 0] * x[:, 1]]
    (s00, s01), opt = run_chains(scheme, x0, ("sphere", {"radius": r}), zero_grad, stats, lr=0.1, steps=500, burn=150)
    check(s00, r**2 / d, label="E[x0^2]")
    check(s01, 0.0, label="E[x0 x1]")


def _vmf_grad(mu, kappa):
    return lambda x: (-kappa * mu).expand_as(x).clone()


def _vmf_mean(kappa):
    return 1.0 / math.tanh(kappa) - 1.0 / kappa


@schemes
def test_sphere_von_mises_fisher(scheme):
    kappa, lr = 1.0, 0.01
    mu = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    x0 = torch.zeros(2000, 3)
    x0[:, 0] = 1.0  # start orthogonal to mu
    (s,), _ = run_chains(scheme, x0, "sphere", _vmf_grad(mu, kappa), [lambda x: x @ mu], lr=lr, steps=1500, burn=300)
    check(s, _vmf_mean(kappa), allowance=lr, label="E[mu.x]")


# ------------------------------------------------------------------ orthogonal
@schemes
@cayley_routes
def test_special_orthogonal_3_haar(scheme, cayley):
    x0 = torch.eye(3).expand(1000, 3, 3)
    trace = lambda q: q.diagonal(dim1=1, dim2=2).sum(-1)
    stats = [trace, lambda q: trace(q) ** 2]
    (t1, t2), opt = run_chains(scheme, x0, ("orthogonal", {"batch_dims": 1, "cayley": cayley}), zero_grad, stats, lr=0.05, steps=500, burn=150)
    check(t1, 0.0, label="E[tr Q]")
    check(t2, 1.0, label="E[(tr Q)^2]")


@schemes
@cayley_routes
def test_special_orthogonal_2_von_mises(scheme, cayley):
    # U(Q) = -kappa tr Q on SO(2): with Q the rotation by theta, tr Q = 2 cos theta and the Haar
    # measure is uniform in theta, so theta ~ von Mises(2 kappa / T): E[tr Q] / 2 = I1(2k) / I0(2k).
    # Square matrices take the Cayley route (orthogonal.py), and this case gives it a force.
    kappa, lr = 1.0, 0.01
    x0 = torch.eye(2).expand(2000, 2, 2)
    grad = lambda q: (-kappa * torch.eye(2, dtype=q.dtype)).expand_as(q).clone()  # noqa: E731
    stat = lambda q: q.diagonal(dim1=1, dim2=2).sum(-1) / 2  # noqa: E731
    (s,), _ = run_chains(scheme, x0, ("orthogonal", {"batch_dims": 1, "cayley": cayley}), grad, [stat], lr=lr, steps=1500, burn=300)
    k2 = torch.tensor(2 * kappa, dtype=torch.float64)
    check(s, (torch.special.i1(k2) / torch.special.i0(k2)).item(), allowance=lr, label="E[cos theta]")


@schemes
@cayley_routes
def test_fused_blocks_von_mises(scheme, cayley):
    # a fused (3 x 2, 2) weight with blocks=3: three SO(2) blocks under U = -sum_b kappa_b tr Q_b,
    # kappa = (0.5, 1, 2). The blocks are independent, each theta_b ~ von Mises(2 kappa_b / T):
    # E[tr Q_b] / 2 = I1(2 kappa_b) / I0(2 kappa_b). Checks that each block is its own matrix (its
    # own Cayley move, its own force) and that none leaks into another. The chains start at fixed
    # random angles (a free block would mix too slowly at this lr to be tested from one point).
    kappas, lr = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), 0.01
    theta = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0)) * 2 * math.pi
    cos, sin = theta.cos(), theta.sin()
    x0 = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2).reshape(2000, 6, 2)
    weights = kappas.repeat_interleave(2)[:, None]  # the force -kappa_b I of each block, row by row

    def grad(q):
        return (-weights * torch.eye(2, dtype=q.dtype).repeat(3, 1)).expand_as(q).clone()

    def block_cos(b):
        return lambda q: q[:, 2 * b : 2 * b + 2].diagonal(dim1=1, dim2=2).sum(-1) / 2

    stats = [block_cos(b) for b in range(3)]
    means, _ = run_chains(scheme, x0, ("orthogonal", {"batch_dims": 1, "blocks": 3, "cayley": cayley}), grad, stats, lr=lr, steps=1500, burn=300)
    for b, (s, kappa) in enumerate(zip(means, kappas)):
        k2 = 2 * kappa
        check(s, (torch.special.i1(k2) / torch.special.i0(k2)).item(), allowance=lr, label=f"E[cos theta] of block {b}")


@schemes
@pytest.mark.parametrize("shape", [(5, 2), (2, 5)], ids=["tall", "wide"])
def test_stiefel_uniform(scheme, shape):
    x0 = torch.zeros(1000, *shape)
    x0[:, 0, 0] = x0[:, 1, 1] = 1.0
    (s,), _ = run_chains(scheme, x0, ("orthogonal", {"batch_dims": 1}), zero_grad, [lambda x: x[:, 0, 0] ** 2], lr=0.05, steps=500, burn=150)
    check(s, 1.0 / 5.0, label="E[X00^2]")


@schemes
@pytest.mark.parametrize("shape", [(3, 1), (1, 3)], ids=["tall", "wide"])
def test_orthogonal_column_von_mises_fisher(scheme, shape):
    # a 3x1 (or 1x3) orthonormal matrix is a unit vector: the sphere, reached through the orthogonal code
    kappa, lr = 1.0, 0.01
    mu = torch.zeros(shape, dtype=torch.float64)
    mu.view(-1)[2] = 1.0
    x0 = torch.zeros(2000, *shape)
    x0.view(2000, -1)[:, 0] = 1.0
    spec = ("orthogonal", {"batch_dims": 1})
    stat = lambda x: (x * mu).sum(dim=(1, 2))
    (s,), _ = run_chains(scheme, x0, spec, _vmf_grad(mu, kappa), [stat], lr=lr, steps=1500, burn=300)
    check(s, _vmf_mean(kappa), allowance=lr, label="E[mu.x]")


# ------------------------------------------------------------------ inequality sets
@schemes
def test_ball_uniform(scheme):
    r = 1.5
    x0 = torch.zeros(2000, 3)
    (s,), _ = run_chains(scheme, x0, ("ball", {"radius": r}), zero_grad, [lambda x: (x**2).sum(1)], lr=0.1, steps=600, burn=200)
    check(s, 3 * r**2 / 5, label="E|x|^2")


@schemes
def test_nonnegative_half_normal(scheme):
    lr = 0.02
    var = 2.0 / (2.0 - lr) if scheme == "od" else 1.0  # exact discrete-time variance (see module doc)
    x0 = torch.full((4000, 1), 2.0)
    stats = [lambda x: x[:, 0], lambda x: x[:, 0] ** 2]
    (m1, m2), _ = run_chains(scheme, x0, "nonnegative", lambda x: x.clone(), stats, lr=lr, steps=1200, burn=300)
    check(m1, math.sqrt(2 * var / math.pi), quadratic_allowance(scheme, lr, 1.0), label="E[x]")
    check(m2, var, quadratic_allowance(scheme, lr, var), label="E[x^2]")


@schemes
def test_box_uniform(scheme):
    x0 = torch.full((4000, 1), 0.9)
    (s,), _ = run_chains(scheme, x0, ("box", {"lower": -1.0, "upper": 1.0}), zero_grad, [lambda x: x[:, 0] ** 2], lr=0.05, steps=600, burn=200)
    check(s, 1.0 / 3.0, label="E[x^2]")


@schemes
def test_circle_tilted_von_mises(scheme):
    """``U(w) = a w`` on the circle ``w = r sin(phi)``: ``phi`` follows a von Mises law of
    concentration ``kappa = a r / T``, so ``E[w] = -r I1(kappa) / I0(kappa)``. The drift is the
    Cayley rotation, not the exact one: it leaves the U = 0 law exact (the arcsine test) and
    changes the dynamics at third order in the step, inside the O(lr) allowance of the vMF cases."""
    r, a, lr = 1.0, 1.0, 0.01
    kappa = torch.tensor(a * r, dtype=torch.float64)
    expected = (-r * torch.special.i1(kappa) / torch.special.i0(kappa)).item()
    x0 = torch.zeros(2000, 1)
    (s,), _ = run_chains(scheme, x0, ("circle", {"radius": r}), lambda w: torch.full_like(w, a), [lambda w: w[:, 0]], lr=lr, steps=1500, burn=300)
    check(s, expected, allowance=lr, label="E[w]")


@schemes
def test_circle_arcsine(scheme):
    r = 0.7
    x0 = torch.zeros(4000, 1)
    (s,), opt = run_chains(scheme, x0, ("circle", {"radius": r}), zero_grad, [lambda w: w[:, 0] ** 2], lr=0.05, steps=600, burn=200)
    check(s, r**2 / 2, label="E[w^2]")
    assert max(v.item() for v in opt.violations()) < 1e-12
