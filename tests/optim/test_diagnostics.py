"""optim.diagnostics(): cheap tensors per group; kinetic_temperature estimates the temperature."""

import math

import pytest
import torch

from constrained_sgld import ConstrainedSGNHT, ConstrainedUnderdampedSGLD

WITH_MOMENTUM = (ConstrainedUnderdampedSGLD, ConstrainedSGNHT)
EXTRA_KEYS = {ConstrainedUnderdampedSGLD: {"kinetic_temperature"}, ConstrainedSGNHT: {"kinetic_temperature", "thermostat"}}

Z = 4.5  # as in tests/statistical: standard errors allowed


@pytest.mark.filterwarnings("ignore:projected onto")
def test_keys_values_and_no_host_reads(optimizer_cls):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(30, 5))
    b = torch.nn.Parameter(torch.randn(7))
    opt = optimizer_cls([("w", w), ("b", b)], constraints={"w": "orthogonal"}, lr=0.01, temperature=0.0, seed=0)
    w.grad, b.grad = torch.randn_like(w), torch.randn_like(b)
    opt.step()
    diag = opt.diagnostics()
    assert len(diag) == len(opt.param_groups) == 2
    expected = {"violation", "grad_norm", "noise_norm"} | EXTRA_KEYS.get(optimizer_cls, set())
    for d, group in zip(diag, opt.param_groups):
        assert set(d) == expected
        assert all(torch.is_tensor(v) and v.dim() == 0 for v in d.values())
        grads = torch.cat([p.grad.flatten() for p in group["params"]])
        torch.testing.assert_close(d["grad_norm"], grads.norm().float())
        assert d["noise_norm"].item() == 0.0  # temperature 0: no noise
    assert diag[0]["violation"].item() < 1e-5


def test_noise_norm_matches_its_scale(optimizer_cls):
    torch.manual_seed(0)
    n, lr, temperature, momentum = 20000, 0.01, 0.3, 0.9
    x = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    kwargs = {"momentum": momentum} if optimizer_cls in WITH_MOMENTUM else {}
    opt = optimizer_cls([x], lr=lr, temperature=temperature, seed=1, **kwargs)
    x.grad = torch.zeros_like(x)
    opt.step()
    assert math.isnan(opt.diagnostics()[0]["noise_norm"].item())  # not recorded before the first call
    opt.step()
    scale = math.sqrt(temperature * (1 - momentum**2)) if kwargs else math.sqrt(2 * lr * temperature)
    # |xi|^2 ~ chi^2_n: mean n, sd sqrt(2n); so |xi| = sqrt(n) within Z / sqrt(2) standard errors
    assert abs(opt.diagnostics()[0]["noise_norm"].item() / scale - math.sqrt(n)) < Z / math.sqrt(2)


@pytest.mark.parametrize(
    "spec, shape",
    [(None, (4000, 3)), ("orthogonal", (2000, 4, 2)), ("sphere", (3000, 3)), (("circle", {"radius": 0.7}), (4000, 3))],
    ids=["flat", "orthogonal", "sphere", "circle"],
)
@pytest.mark.filterwarnings("ignore:projected onto")
def test_kinetic_temperature_equals_temperature_at_equilibrium(spec, shape):
    """U = 0: the momenta are N(0, T) on the tangent space, whatever the set. The estimate averages
    d independent squares, so its standard error is T sqrt(2 / d)."""
    torch.manual_seed(0)
    temperature = 0.3
    x0 = torch.randn(shape, dtype=torch.float64)
    if spec == "orthogonal":
        x0 = torch.linalg.qr(x0).Q
        spec = ("orthogonal", {"batch_dims": 1})
    x = torch.nn.Parameter(x0)
    opt = ConstrainedUnderdampedSGLD([x], constraints={x: spec}, lr=0.01, momentum=0.5, temperature=temperature, seed=2)
    for _ in range(100):  # from zero momentum: c^100 of the start is left
        x.grad = torch.zeros_like(x)
        opt.step()
    group = opt.param_groups[0]
    c = group["constraint"]
    d = c.tangent_dim(x.detach()) if c is not None else x.numel()
    estimate = opt.diagnostics()[0]["kinetic_temperature"].item()
    assert abs(estimate - temperature) < Z * temperature * math.sqrt(2 / d), (estimate, d)


def test_tangent_dims():
    from constrained_sgld import Circle, Orthogonal, Sphere

    assert Orthogonal().tangent_dim(torch.zeros(5, 3)) == 15 - 6
    assert Orthogonal().tangent_dim(torch.zeros(3, 5)) == 15 - 6  # wide: its transpose
    assert Orthogonal().tangent_dim(torch.zeros(8, 2, 3, 3)) == 8 * 18 - 36
    assert Sphere().tangent_dim(torch.zeros(4, 6)) == 24 - 4
    assert Sphere(dim=None).tangent_dim(torch.zeros(4, 6)) == 23
    assert Circle().tangent_dim(torch.zeros(4, 6)) == 24


def test_noise_norm_is_the_noise_added_after_the_preconditioner(optimizer_cls):
    """With a frozen mass M (here 4 on every entry) the step adds noise / sqrt(M): the diagnostic
    reports that, half the unit-mass norm, not the draw before the scaling."""
    torch.manual_seed(0)
    n, lr, temperature, momentum = 20000, 0.01, 0.3, 0.9
    x = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    kwargs = {"momentum": momentum} if optimizer_cls in WITH_MOMENTUM else {}
    opt = optimizer_cls([x], lr=lr, temperature=temperature, seed=1, preconditioner={"adapt_steps": 0}, **kwargs)
    x.grad = torch.zeros_like(x)
    opt.step()
    opt.state[x]["mass"].fill_(4.0)
    opt.diagnostics()
    opt.step()
    scale = math.sqrt(temperature * (1 - momentum**2)) if kwargs else math.sqrt(2 * lr * temperature)
    assert abs(opt.diagnostics()[0]["noise_norm"].item() / scale - math.sqrt(n) / 2) < Z / math.sqrt(2) / 2
