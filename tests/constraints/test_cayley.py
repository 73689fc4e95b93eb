"""The square orthogonal matrices' Cayley map by matrix products only (the iterative route) against
the LU solve: the same map to rounding, the product count from the step's norm, the fallback to the
solve for large steps, the sync-free rejection, and the option's checks."""

import pytest
import torch

import constrained_sgld as cs
from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD
from constrained_sgld.constraints.base import StepContext
from constrained_sgld.constraints.orthogonal import (
    cayley_drift,
    cayley_iterative,
    cayley_map_tolerance,
    cayley_products,
    cayley_sync_free_products,
)


def _skew(n, scale, gen, dtype=torch.float64, batch=()):
    a = torch.randn(*batch, n, n, generator=gen, dtype=dtype) * scale
    return a - a.transpose(-2, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iterative_map_is_the_cayley_map_to_rounding(dtype):
    gen = torch.Generator().manual_seed(0)
    c = cs.Orthogonal()
    x = c.init_(torch.empty(3, 32, 32, dtype=dtype))
    for scale in (1e-4, 1e-3, 3e-3):
        a = _skew(32, scale, gen, dtype, (3,))
        bound = float(torch.linalg.matrix_norm(a).amax())
        products = cayley_products(bound, dtype, max_products=60)
        y, change = cayley_iterative(x, a, 1.0, products)
        exact = cayley_drift(x.double(), a.double(), 1.0)
        err = (y.double() - exact).abs().max().item()
        assert err <= 64 * cayley_map_tolerance(dtype), (scale, products, err)  # rounding of a few dozen ops
        assert (change <= bound).all()
        # the iteration is what gets there: the first product alone is only first order
        if dtype == torch.float64:
            first = (cayley_iterative(x, a, 1.0, 1)[0] - exact).abs().max().item()
            assert products > 1 and first > 1e3 * err


def test_product_count_follows_the_bound():
    assert cayley_products(0.0, torch.float32) == 1
    counts = [cayley_products(b, torch.float64, max_products=60) for b in (1e-4, 1e-3, 1e-2, 0.1)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    for b in (1e-4, 1e-3, 1e-2, 0.1, 0.4, 1.0):
        k = cayley_products(b, torch.float32, max_products=100)
        q = b / 2
        assert q**k * b / (1 - q) <= cayley_map_tolerance(torch.float32) and q ** (k - 1) * b / (1 - q) > cayley_map_tolerance(torch.float32)
    # "auto" stops where the solve is cheaper; nothing converges from |S| / 2 >= 1
    assert cayley_products(0.5, torch.float32) is None and cayley_products(0.5, torch.float32, max_products=100) is not None
    assert cayley_products(2.0, torch.float64, max_products=10**6) is None and cayley_products(float("nan"), torch.float32) is None
    assert cayley_sync_free_products(torch.float32) < cayley_sync_free_products(torch.float64)


def _run(cayley, cls, kwargs, steps=5, dtype=torch.float64, grad_scale=1.0, sync_free=False):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)  # the Haar start
    p = cs.Orthogonal().init_(torch.empty(16, 16, dtype=dtype))
    opt = cls([p], constraints={p: ("orthogonal", {"cayley": cayley})}, seed=0, sync_free=sync_free, **kwargs)
    for _ in range(steps):
        p.grad = torch.randn(16, 16, generator=gen, dtype=dtype) * grad_scale
        opt.step()
    return p.detach(), opt


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (ConstrainedSGLD, {"lr": 1e-3, "temperature": 1e-4}),
        (ConstrainedUnderdampedSGLD, {"lr": 1e-3, "momentum": 0.9, "temperature": 1e-4}),
        (ConstrainedUnderdampedSGLD, {"lr": 1e-3, "momentum": 0.9}),  # T = 0: the fused pair on the solve route
    ],
)
def test_routes_move_the_same_chain(cls, kwargs):
    """The same noise and forces: the two routes' chains agree to rounding (the map is the same)."""
    a, _ = _run("iterative", cls, kwargs)
    b, _ = _run("solve", cls, kwargs)
    assert (a - b).abs().max().item() < 1e-12
    assert float(cs.Orthogonal().violation(a)) < 1e-12


def test_a_large_step_takes_the_solve():
    """Under "auto" a step whose norm would need more products than the solve costs takes the
    solve: bit for bit the solve route. "iterative" iterates on: the same chain to rounding."""
    kwargs = {"lr": 0.02}
    a, _ = _run("auto", ConstrainedSGLD, kwargs, steps=2)
    b, _ = _run("solve", ConstrainedSGLD, kwargs, steps=2)
    c, _ = _run("iterative", ConstrainedSGLD, kwargs, steps=2)
    assert torch.equal(a, b) and not torch.equal(c, b) and (c - b).abs().max().item() < 1e-12


def test_sync_free_auto_takes_the_solve():
    a, _ = _run("auto", ConstrainedUnderdampedSGLD, {"lr": 1e-3, "momentum": 0.9, "temperature": 1e-4}, sync_free=True)
    b, _ = _run("solve", ConstrainedUnderdampedSGLD, {"lr": 1e-3, "momentum": 0.9, "temperature": 1e-4}, sync_free=True)
    assert torch.equal(a, b)


def test_sync_free_rejects_a_step_too_large_for_its_products():
    c = cs.Orthogonal(cayley="iterative")
    gen = torch.Generator().manual_seed(2)
    x = c.init_(torch.empty(2, 8, 8, dtype=torch.float32))
    a = torch.stack([_skew(8, 1e-4, gen, torch.float32), _skew(8, 1.0, gen, torch.float32)])
    ctx = StepContext(sync_free=True)
    y = c._cay(x, a, 1.0, ctx)
    assert int(sum(ctx.rejected)) == 1
    assert torch.equal(y[1], x[1]) and not torch.equal(y[0], x[0])
    torch.testing.assert_close(y[0], cayley_drift(x[0].double(), a[0].double(), 1.0).float(), rtol=0, atol=1e-6)
    # the optimiser reports it: a sync-free step with a huge force moves nothing and says so
    p, opt = _run("iterative", ConstrainedSGLD, {"lr": 10.0}, steps=1, dtype=torch.float32, sync_free=True)
    assert int(opt.diagnostics()[0]["rejected_moves"]) >= 1


def test_the_option_is_checked_and_kept():
    with pytest.raises(ValueError, match="orthogonal: cayley must be one of 'auto', 'iterative', 'solve'"):
        cs.Orthogonal(cayley="qr")
    c = cs.make_constraint(("orthogonal", {"cayley": "solve", "blocks": 2}))
    assert c.spec() == ("orthogonal", {"cayley": "solve", "blocks": 2})
    packing = c.packing([torch.empty(4, 2), torch.empty(4, 2)])
    assert packing is None or getattr(packing.constraint, "cayley", "solve") == "solve"
    assert cs.Orthogonal()._route(torch.empty(2, 2)) == "iterative"
    assert cs.Orthogonal(cayley="solve")._route(torch.empty(2, 2)) == "solve"
