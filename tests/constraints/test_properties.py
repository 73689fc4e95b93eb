"""Property-based checks of every built-in set over random shapes and dtypes (hypothesis)."""


import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constrained_sgld as cs
from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD

DTYPES = st.sampled_from([torch.float32, torch.float64])
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def orthogonal_case(draw):
    """(constraint, shape): tall, wide, square, conv-shaped, batched, 1x1."""
    kind = draw(st.sampled_from(["tall", "wide", "square", "conv", "batch", "one"]))
    n = draw(st.integers(1, 7))
    k = draw(st.integers(1, 7))
    if kind == "tall":
        return cs.Orthogonal(), (max(n, k), min(n, k))
    if kind == "wide":
        return cs.Orthogonal(scale=draw(st.floats(0.5, 2.0))), (min(n, k), max(n, k) + 1)
    if kind == "square":
        return cs.Orthogonal(), (n, n)
    if kind == "conv":
        return cs.Orthogonal(), (n, k, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if kind == "batch":
        return cs.Orthogonal(batch_dims=1), (draw(st.integers(1, 4)), n, k)
    return cs.Orthogonal(), (1, 1)


@st.composite
def any_case(draw):
    which = draw(st.sampled_from(["orthogonal", "sphere", "ball", "circle", "nonnegative", "box"]))
    if which == "orthogonal":
        return draw(orthogonal_case())
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    if which == "sphere":
        return cs.Sphere(radius=draw(st.floats(0.1, 5.0)), dim=draw(st.sampled_from(["rows", None]))), shape
    if which == "ball":
        return cs.Ball(radius=draw(st.floats(0.1, 5.0)), boundary=draw(st.sampled_from(["reflect", "clamp"]))), shape
    if which == "circle":
        return cs.Circle(radius=draw(st.floats(0.05, 3.0))), shape
    if which == "nonnegative":
        return cs.NonNegative(boundary=draw(st.sampled_from(["reflect", "clamp"]))), shape
    lo = draw(st.floats(-3.0, 2.0))
    return cs.Box(lower=lo, upper=lo + draw(st.floats(0.1, 3.0))), shape


def _normal_component(c, p, t):
    """Size of the part of ``t`` along the normal space at ``p`` (manifolds only)."""
    if isinstance(c, cs.Orthogonal):
        x = c._matrix(p) / c.scale
        tm = c._matrix(t)
        s = x.transpose(-2, -1) @ tm
        return (s + s.transpose(-2, -1)).abs().amax()  # normal space: X * symmetric
    if isinstance(c, cs.Sphere):
        return c._inner(p, t).abs().amax()
    return torch.zeros(())


@SETTINGS
@given(case=any_case(), dtype=DTYPES, scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_project_idempotent_and_feasible(case, dtype, scale):
    c, shape = case
    x = torch.randn(shape, dtype=dtype) * scale
    y = c.project(x)
    tol = c.tolerance(dtype)
    assert torch.isfinite(y).all() and c.violation(y) <= tol
    assert torch.allclose(c.project(y), y, atol=tol * max(1.0, y.abs().max().item()))


@SETTINGS
@given(case=any_case(), dtype=DTYPES)
def test_tangent_projection_idempotent_and_normal_free(case, dtype):
    c, shape = case
    p = c.init_(torch.empty(shape, dtype=dtype))
    v = torch.randn(shape, dtype=dtype)
    t = c.tangent_project(p, v)
    tol = 100 * torch.finfo(dtype).eps
    assert torch.allclose(c.tangent_project(p, t), t, atol=tol * 10)
    assert _normal_component(c, p, t) <= tol * 10 * max(1.0, v.abs().max().item())


@SETTINGS
@given(case=any_case(), dtype=DTYPES)
def test_init_feasible_and_violation_sign(case, dtype):
    c, shape = case
    p = c.init_(torch.empty(shape, dtype=dtype))
    assert c.violation(p) <= c.tolerance(dtype)
    # every entry <= -10: below every lower bound, every norm > every radius drawn, Gram far from I
    off = p * 3 - (10 + 3 * p.abs().max())
    assert c.violation(off) > c.tolerance(dtype)


@SETTINGS
@given(
    case=any_case(),
    dtype=DTYPES,
    grad_scale=st.sampled_from([0.0, 1e-8, 1.0, 1e6]),
    ud=st.booleans(),
    temperature=st.sampled_from([0.0, 1e-2]),
)
def test_optimisers_keep_every_set_feasible(case, dtype, grad_scale, ud, temperature):
    c, shape = case
    p = torch.nn.Parameter(c.init_(torch.empty(shape, dtype=dtype)))
    cls = ConstrainedUnderdampedSGLD if ud else ConstrainedSGLD
    opt = cls([{"params": [p], "constraint": c}], lr=0.1, temperature=temperature, seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        p.grad = torch.randn(shape, generator=gen, dtype=dtype) * grad_scale
        opt.step()
    assert torch.isfinite(p).all()
    assert opt.violations()[0] <= c.tolerance(dtype), f"{c} violation {opt.violations()[0]}"
    for t in opt.state[p].values():
        assert torch.isfinite(t).all()
