"""With a frozen, deliberately non-uniform preconditioner, every set's stationary law is unchanged
under all three schemes; with the wrong (per-entry) reduction on a sphere it is not.

Method as in ``test_stationary.py`` (many chains as rows of one float64 parameter, per-chain time
averages, ``|mean - expected| <= Z SE + allowance``). Each block (an entry, a row, a matrix: the
set's ``block_mean``) gets its own mass, drawn log-uniformly on [1/8, 1], frozen
(``adapt_steps=0``) before the first step. The range is one-sided on purpose: a mistake in how the
mass scales the noise or the force then moves every chain's law the same way, where masses spread
around 1 would let hotter and colder chains cancel in the average. The targets have a potential (U != 0) wherever a
closed form exists, so that a wrong noise scale (a wrong temperature in the metric) shows: on a
compact set at U = 0 every temperature gives the uniform law.

Exactness with a mass ``M``: a scalar mass on a block is a change of time on it, so the arguments
of ``test_stationary.py`` carry over block by block (BAOAB's exactness on quadratic U holds for any
constant mass: substitute ``y = M^(1/2) x``). The overdamped chain on a quadratic U is the AR(1)
chain ``x' = (I - h M^-1 A) x + sqrt(2 h T) M^(-1/2) xi``; its stationary covariance solves the
discrete Lyapunov equation, solved here exactly. The O(lr) allowances of the von Mises-Fisher cases
become ``lr * max(M^-1)``: the largest effective step.
"""

import math

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD, Sphere
from constrained_sgld.constraints.base import UNCONSTRAINED
from constrained_sgld.optim.preconditioner import preconditioner_state

from .test_stationary import SEED, Z, _vmf_grad, _vmf_mean, check, quadratic_allowance
from .test_stationary import run_chains as stationary_chains

Z_VAR = Z

SCHEMES = {
    "od": (ConstrainedSGLD, {}),
    "ud-m0.5": (ConstrainedUnderdampedSGLD, {"momentum": 0.5}),
    "nht-m0.9": (ConstrainedSGNHT, {"momentum": 0.9}),
}
schemes = pytest.mark.parametrize("scheme", sorted(SCHEMES))
SPREAD = 8.0  # masses lie in [1/SPREAD, 1]: inverse masses (speed-ups) in [1, SPREAD]


def random_masses(shape, seed=SEED):
    """Masses log-uniform on [1/SPREAD, 1], one per entry of ``shape``."""
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.exp(-torch.rand(shape, generator=g, dtype=torch.float64) * math.log(SPREAD))


def run_chains(scheme, x0, spec, grad_fn, stats, *, lr, temperature=1.0, steps, burn, masses=None):
    """``test_stationary.run_chains`` with a frozen preconditioner whose mass is ``masses`` (one per
    block of the set; default: random, see :func:`random_masses`). Returns the per-chain averages,
    the optimiser and the masses."""
    chosen = {}

    def freeze(opt, x):
        constraint = opt.param_groups[0]["constraint"] or UNCONSTRAINED
        state = opt.state[x]
        preconditioner_state(constraint, x.detach(), state)
        chosen["masses"] = random_masses(state["mass"].shape) if masses is None else masses
        state["mass"].copy_(chosen["masses"])
        chosen["state"] = state

    averages, opt = stationary_chains(scheme, x0, spec, grad_fn, stats, lr=lr, temperature=temperature, steps=steps, burn=burn,
                                      schemes=SCHEMES, options={"preconditioner": {"adapt_steps": 0}}, prepare=freeze)
    state = chosen["state"]
    assert state["preconditioner_step"] == 0 and torch.equal(state["mass"], chosen["masses"])  # frozen
    return averages, opt, chosen["masses"]


def largest_step(lr):
    return lr * SPREAD  # lr * max(M^-1)


# ------------------------------------------------------------------ unconstrained: a per-entry mass
def ar1_covariance(a, h, tau, inv_mass):
    """Stationary covariance of ``x' = B x + sqrt(2 h tau) D xi``, ``B = I - h diag(m^-1) A``,
    ``D = diag(m^-1/2)``: ``S = B S B^T + 2 h tau D^2``, solved as a linear system."""
    n = a.shape[0]
    b = torch.eye(n, dtype=torch.float64) - h * inv_mass[:, None] * a
    q = 2 * h * tau * torch.diag(inv_mass)
    lhs = torch.eye(n * n, dtype=torch.float64) - torch.kron(b, b)
    return torch.linalg.solve(lhs, q.reshape(-1)).reshape(n, n)


@schemes
def test_unconstrained_anisotropic_gaussian_with_per_entry_mass(scheme):
    """Each chain has its own two masses (different per coordinate, not just per chain); the
    statistic is standardised per chain by its own exact covariance, so chains can be pooled."""
    tau, lr, n = 0.5, 0.005, 2000
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    masses = random_masses((n, 2))
    target = tau * torch.linalg.inv(a)
    if scheme == "od":
        covs = torch.stack([ar1_covariance(a, lr, tau, 1 / m) for m in masses])
    else:
        covs = target.expand(n, 2, 2)
    stats = [lambda x: x[:, 0] ** 2, lambda x: x[:, 0] * x[:, 1], lambda x: x[:, 1] ** 2]
    (s00, s01, s11), _, _ = run_chains(scheme, torch.zeros(n, 2), None, lambda x: x @ a, stats, lr=lr, temperature=tau,
                                       steps=1500, burn=400, masses=masses)
    allowance = quadratic_allowance(scheme, largest_step(lr), target.abs().max().item())
    for stat, (i, j) in [(s00, (0, 0)), (s01, (0, 1)), (s11, (1, 1))]:
        check(stat - covs[:, i, j], 0.0, allowance, label=f"cov{i}{j} - exact")


# ------------------------------------------------------------------ sphere and orthogonal: a mass per row / matrix
@schemes
def test_sphere_von_mises_fisher_with_a_mass_per_row(scheme):
    kappa, lr = 1.0, 0.002
    mu = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    x0 = torch.zeros(2000, 3)
    x0[:, 0] = 1.0
    (s,), _, masses = run_chains(scheme, x0, "sphere", _vmf_grad(mu, kappa), [lambda x: x @ mu], lr=lr, steps=3000, burn=1000)
    assert masses.shape == (2000, 1)
    check(s, _vmf_mean(kappa), allowance=largest_step(lr), label="E[mu.x]")


@schemes
def test_stiefel_von_mises_fisher_with_a_mass_per_matrix(scheme):
    """A 3x1 orthonormal matrix is a unit vector, reached through the orthogonal code (batched)."""
    kappa, lr = 1.0, 0.002
    mu = torch.zeros(3, 1, dtype=torch.float64)
    mu[2, 0] = 1.0
    x0 = torch.zeros(2000, 3, 1)
    x0[:, 0, 0] = 1.0
    stat = lambda x: (x * mu).sum(dim=(1, 2))
    (s,), _, masses = run_chains(scheme, x0, ("orthogonal", {"batch_dims": 1}), _vmf_grad(mu, kappa), [stat], lr=lr, steps=3000, burn=1000)
    assert masses.shape == (2000, 1, 1)
    check(s, _vmf_mean(kappa), allowance=largest_step(lr), label="E[mu.x]")


@schemes
@pytest.mark.parametrize("cayley", ["solve", "iterative"])
def test_special_orthogonal_3_haar_with_a_mass_per_matrix(scheme, cayley):
    x0 = torch.eye(3).expand(1000, 3, 3)
    trace = lambda q: q.diagonal(dim1=1, dim2=2).sum(-1)
    (t1, t2), _, _ = run_chains(scheme, x0, ("orthogonal", {"batch_dims": 1, "cayley": cayley}), lambda x: torch.zeros_like(x), [trace, lambda q: trace(q) ** 2],
                                lr=0.02, steps=600, burn=200)
    check(t1, 0.0, label="E[tr Q]")
    check(t2, 1.0, label="E[(tr Q)^2]")


# ------------------------------------------------------------------ inequality sets and the circle
def _quadrature(density, f, lo, hi, n=200001):
    t = torch.linspace(lo, hi, n, dtype=torch.float64)
    w = density(t)
    return (torch.trapezoid(w * f(t), t) / torch.trapezoid(w, t)).item()


@schemes
def test_ball_radial_gaussian_with_a_mass_per_row(scheme):
    """``U = k |x|^2 / 2`` in the 3-ball of radius r: the radius has density ``s^2 exp(-k s^2 / 2T)``
    on [0, r] (by quadrature). Quadratic U with reflection: the overdamped and thermostat chains
    get the O(step) allowance, BAOAB none inside (the wall adds a bias we bound by the same)."""
    r, k, lr = 1.5, 2.0, 0.002
    expected = _quadrature(lambda s: s**2 * torch.exp(-k * s**2 / 2), lambda s: s**2, 0.0, r)
    (s,), _, masses = run_chains(scheme, torch.zeros(2000, 3), ("ball", {"radius": r}), lambda x: k * x, [lambda x: (x**2).sum(1)],
                                 lr=lr, steps=3000, burn=1000)
    assert masses.shape == (2000, 1)
    check(s, expected, allowance=largest_step(lr) * r**2, label="E|x|^2")


@schemes
def test_nonnegative_half_normal_with_a_mass_per_entry(scheme):
    lr, n = 0.005, 4000
    masses = random_masses((n, 1))
    # the reflected AR(1) chain's exact variance per entry (od), 1 otherwise
    var = 2.0 / (2.0 - lr / masses[:, 0]) if scheme == "od" else torch.ones(n, dtype=torch.float64)
    stats = [lambda x: x[:, 0] / var.sqrt(), lambda x: x[:, 0] ** 2 / var]
    (m1, m2), _, _ = run_chains(scheme, torch.full((n, 1), 2.0), "nonnegative", lambda x: x.clone(), stats, lr=lr, steps=1500, burn=400, masses=masses)
    check(m1, math.sqrt(2 / math.pi), quadratic_allowance(scheme, largest_step(lr), 1.0), label="E[x] / sd")
    check(m2, 1.0, quadratic_allowance(scheme, largest_step(lr), 1.0), label="E[x^2] / var")


@schemes
def test_box_truncated_exponential_with_a_mass_per_entry(scheme):
    """``U = a x`` on [-1, 1]: ``E[x] = 1/a - coth(a)``. Linear U, reflecting walls."""
    a, lr = 1.5, 0.002
    expected = 1 / a - 1 / math.tanh(a)
    (s,), _, _ = run_chains(scheme, torch.full((4000, 1), 0.9), ("box", {"lower": -1.0, "upper": 1.0}), lambda x: torch.full_like(x, a),
                            [lambda x: x[:, 0]], lr=lr, steps=3000, burn=1000)
    check(s, expected, allowance=largest_step(lr), label="E[x]")


@schemes
def test_circle_tilted_von_mises_with_a_mass_per_pair(scheme):
    r, a, lr = 1.0, 1.0, 0.002
    kappa = torch.tensor(a * r, dtype=torch.float64)
    expected = (-r * torch.special.i1(kappa) / torch.special.i0(kappa)).item()
    (s,), opt, _ = run_chains(scheme, torch.zeros(2000, 1), ("circle", {"radius": r}), lambda w: torch.full_like(w, a), [lambda w: w[:, 0]],
                              lr=lr, steps=3000, burn=1000)
    check(s, expected, allowance=largest_step(lr), label="E[w]")
    assert max(v.item() for v in opt.violations()) < 1e-12


# ------------------------------------------------------------------ the reduction matters
class PerEntrySphere(Sphere):
    """The wrong reduction: one mass per entry of a sphere row (the set's code is otherwise the sphere's)."""

    name = "per-entry-sphere (test only)"

    def block_mean(self, p, values):
        return values

    def second_moment_(self, params, moments, forces, alpha):
        torch._foreach_mul_(moments, alpha)
        torch._foreach_addcmul_(moments, forces, forces, value=1.0 - alpha)


def test_a_per_entry_mass_on_the_sphere_is_biased_and_the_row_mass_is_not():
    """U = 0 on S^2 with masses (1/100, 1, 1) on the three coordinates: per entry, the law is no
    longer uniform (the mass-metric factor of Lelievre, Rousset & Stoltz; here E[x0^2] moves far
    from 1/3); one mass per row, chosen as any of those values, keeps it uniform. The two runs
    differ only in the reduction."""
    n, lr = 2000, 0.002
    x0 = torch.zeros(n, 3)
    x0[:, 1] = 1.0
    per_entry = torch.tensor([0.01, 1.0, 1.0], dtype=torch.float64).expand(n, 3).clone()
    stats = [lambda x: x[:, 0] ** 2]
    (wrong,), _, _ = run_chains("od", x0, PerEntrySphere(), lambda x: torch.zeros_like(x), stats, lr=lr, steps=1500, burn=500, masses=per_entry)
    per_row = per_entry[:, :1].clone()  # the smallest mass for the whole row: the same fastest direction
    (right,), _, _ = run_chains("od", x0, "sphere", lambda x: torch.zeros_like(x), stats, lr=lr, steps=1500, burn=500, masses=per_row)
    check(right, 1.0 / 3.0, label="per-row mass: E[x0^2]")
    se = wrong.std().item() / math.sqrt(n)
    bias = wrong.mean().item() - 1.0 / 3.0
    assert abs(bias) > 20 * se and abs(bias) > 0.05, (
        f"the per-entry mass should bias E[x0^2] (got {wrong.mean().item():.4f} against 1/3, SE {se:.4f})"
    )


# ------------------------------------------------------------------ the point of it: mixing
def test_mixing_gain_on_an_ill_conditioned_gaussian():
    """Scales 1 and 0.01 (condition number 10^4): the plain sampler's step is bound by the stiff
    coordinate and crawls along the wide one; the mass M ~ 1/s (RMSprop's form: the root of the
    second moment) cuts the condition number to 100. Each sampler runs at half its own stability
    limit (the preconditioned one adapts for a burn-in at a small step, freezes, then takes its
    limit from the frozen mass), the same number of gradients, from a start drawn at the target's
    scale; ArviZ's ESS of the wide coordinate,
    per gradient, must be more than 10x larger (theory: about 100x). Its variance must be right."""
    pytest.importorskip("arviz")
    from constrained_sgld import chain_diagnostics

    scales = torch.tensor([1.0, 0.01], dtype=torch.float64)
    chains, steps, burn, thin = 8, 20000, 4000, 10
    grad = lambda x: x / scales**2  # noqa: E731

    def sample(preconditioned):
        start = torch.randn(chains, 2, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64) * scales
        x = torch.nn.Parameter(start)  # a start at the target's scale: the first forces are typical
        kwargs = {"preconditioner": {"alpha": 0.999, "adapt_steps": burn, "bias_correction": True}} if preconditioned else {}
        limit = 2 * scales.min().item() ** 2  # the plain chain's: lr s^-2 < 2
        opt = ConstrainedSGLD([x], lr=0.05 * limit if preconditioned else 0.5 * limit, temperature=1.0, seed=SEED, **kwargs)
        draws = []
        for i in range(steps):
            if preconditioned and i == burn:  # frozen now: half the limit lr / (M s^2) < 2
                opt.param_groups[0]["lr"] = (opt.state[x]["mass"] * scales**2).min().item()
            x.grad = grad(x.detach())
            opt.step()
            if i >= burn and i % thin == 0:
                draws.append(x.detach()[:, 0].clone())
        draws = torch.stack(draws, 1)  # (chain, draw)
        ess = chain_diagnostics([{"x0": row.tolist()} for row in draws])["x0"]["ess"]
        return ess / (chains * (steps - burn)), draws

    plain, _ = sample(False)
    fast, draws = sample(True)
    assert fast > 10 * plain, f"ESS per gradient: preconditioned {fast:.2e}, plain {plain:.2e}"
    # the variance of the wide coordinate, with the ESS as the sample size for its standard error
    n_eff = fast * chains * (steps - burn)
    check_var = draws.square().mean().item()
    assert abs(check_var - 1.0) <= Z_VAR * math.sqrt(2.0 / n_eff) + 0.05, (check_var, n_eff)
