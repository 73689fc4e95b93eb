"""ConstrainedSGNHT: the thermostat holds the temperature under gradient noise where fixed friction
does not; its units are the underdamped optimiser's; at temperature 0 it is a deterministic
optimiser with adaptive friction. (Its stationary laws on every set: tests/statistical.)

The noisy-gradient checks use the method of tests/statistical: many chains, per-chain time
averages, ``|mean - expected| <= Z SE + lr``, the ``lr`` allowing the scheme's O(lr) bias. The
chains share the group's thermostat, whose fluctuation is O(1/sqrt(d)) with d = 1000 or 2000 here, so the
independent-chains standard error holds to that order.
"""

import math
import warnings

import pytest
import torch

from constrained_sgld import ConstrainedSGNHT, ConstrainedUnderdampedSGLD

Z = 4.5
LR, MOMENTUM, GRAD_NOISE_VAR = 0.01, 0.9, 10.0


def noisy_chains(cls, spec, grad_fn, stat, x0, *, steps=1500, burn=500):
    """Per-chain time averages of ``stat`` with N(0, GRAD_NOISE_VAR) added to every gradient entry."""
    x = torch.nn.Parameter(x0.clone().double())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = cls([{"params": [x], "constraint": spec}], lr=LR, momentum=MOMENTUM, temperature=1.0, seed=1)
    g = torch.Generator().manual_seed(5)
    total = 0.0
    for i in range(steps):
        x.grad = grad_fn(x.detach()) + math.sqrt(GRAD_NOISE_VAR) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        opt.step()
        if i >= burn:
            total = total + stat(x.detach())
    return total / (steps - burn), opt


def deviation(per_chain, expected):
    """``(|mean - expected|, tolerance)``."""
    se = per_chain.std().item() / math.sqrt(per_chain.numel())
    return abs(per_chain.mean().item() - expected), Z * se + LR


def _vmf_case():
    kappa = 4.0
    mu = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    x0 = torch.zeros(1000, 3)
    x0[:, 0] = 1.0
    return "sphere", lambda x: (-kappa * mu).expand_as(x).clone(), lambda x: x @ mu, x0, 1.0 / math.tanh(kappa) - 1.0 / kappa


def _gaussian_case():
    return None, lambda x: x.clone(), lambda x: x[:, 0] ** 2, torch.zeros(1000, 1), 1.0


@pytest.mark.parametrize("case", [_gaussian_case, _vmf_case], ids=["gaussian-E[x^2]", "sphere-vmf-E[mu.x]"])
def test_thermostat_holds_the_temperature_under_gradient_noise_and_fixed_friction_does_not(case):
    spec, grad_fn, stat, x0, expected = case()
    held, opt = noisy_chains(ConstrainedSGNHT, spec, grad_fn, stat, x0)
    diff, tol = deviation(held, expected)
    assert diff <= tol, f"thermostat: mean {held.mean().item():.4f}, expected {expected:.4f} (tolerance {tol:.4f})"
    # the friction rose above the noise's own A to remove the gradient noise's heat: the
    # isotropic prediction is A + h var / (2 T) (module doc), about 1.54 here
    h = math.sqrt(2 * LR / (1 + MOMENTUM))
    a = -math.log(MOMENTUM) / h
    xi = opt.diagnostics()[0]["thermostat"].item()
    assert abs(xi - (a + h * GRAD_NOISE_VAR / 2)) < 0.1 * a, (xi, a)
    hot, _ = noisy_chains(ConstrainedUnderdampedSGLD, spec, grad_fn, stat, x0)
    diff, tol = deviation(hot, expected)
    assert diff > tol, f"fixed friction should run hot here: mean {hot.mean().item():.4f}, expected {expected:.4f}"


def test_with_a_frozen_thermostat_a_step_is_the_underdamped_step():
    """``thermostat_mass`` huge: xi stays at A, and BADODAB is the underdamped optimiser's BAOAB
    (same units, same noise stream)."""
    torch.manual_seed(0)
    shapes = {"w": (6, 4), "s": (5, 3), "c": (4, 4), "b": (7,)}
    specs = {"w": "orthogonal", "s": "sphere", "c": ("circle", {"radius": 0.5}), "b": None}
    runs = []
    for cls, extra in ((ConstrainedSGNHT, {"thermostat_mass": 1e300}), (ConstrainedUnderdampedSGLD, {})):
        torch.manual_seed(0)
        params = {n: torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for n, s in shapes.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            opt = cls(list(params.items()), constraints=specs, lr=0.02, momentum=0.8, temperature=0.3, seed=4, **extra)
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in params.values():
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            opt.step()
        runs.append(params)
    for n in shapes:
        torch.testing.assert_close(runs[0][n], runs[1][n], rtol=1e-9, atol=1e-9)


def test_at_temperature_zero_a_deterministic_optimiser_with_adaptive_friction():
    torch.manual_seed(0)
    a = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))
    trajectories, frictions = [], []
    for seed in (0, 1):  # the seed cannot matter: nothing is drawn
        x = torch.nn.Parameter(torch.tensor([[1.0, -1.0, 0.5]], dtype=torch.float64))
        opt = ConstrainedSGNHT([x], lr=0.01, momentum=0.9, temperature=0.0, seed=seed)
        xis, losses = [], []
        for _ in range(400):
            x.grad = x.detach() @ a
            opt.step()
            xis.append(opt.param_groups[0]["thermostat"].item())
            losses.append(0.5 * (x.detach() @ a * x.detach()).sum().item())
        trajectories.append(x.detach().clone())
        frictions.append(xis)
    assert torch.equal(trajectories[0], trajectories[1])
    xis = frictions[0]
    assert all(later >= earlier for earlier, later in zip(xis, xis[1:]))  # |p|^2 >= 0: friction only grows
    assert xis[-1] > xis[0]  # and it did grow while the parameters moved
    assert losses[-1] < 1e-6 * losses[0]  # it still minimises


def test_thermostat_survives_state_dict_and_keeps_its_own_copy():
    x = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=1))
    opt = ConstrainedSGNHT([x], constraints={x: "sphere"}, lr=0.05, temperature=0.5, seed=0)
    for _ in range(5):
        x.grad = torch.randn_like(x)
        opt.step()
    sd = opt.state_dict()
    xi = sd["param_groups"][0]["thermostat"].item()
    other = ConstrainedSGNHT([x], constraints={x: "sphere"}, lr=0.05, temperature=0.5, seed=0)
    other.load_state_dict(sd)
    assert other.param_groups[0]["thermostat"].item() == xi
    x.grad = torch.randn_like(x)
    other.step()
    assert sd["param_groups"][0]["thermostat"].item() == xi  # the loaded dict was not advanced


@pytest.mark.parametrize(
    "kwargs, option",
    [({"momentum": 0.0}, "momentum"), ({"momentum": 1.0}, "momentum"), ({"thermostat_mass": -1.0}, "thermostat_mass"), ({"thermostat_mass": float("nan")}, "thermostat_mass")],
)
def test_bad_options_are_named(kwargs, option):
    x = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=option):
        ConstrainedSGNHT([x], **kwargs)
