"""Each built-in set: its operations land on the set, respect the tangent space, and reject bad options."""

import math

import pytest
import torch

import constrained_sgld as cs
from constrained_sgld.constraints import make_constraint
from tests.conftest import CONSTRAINT_CASES


@pytest.fixture(params=sorted(CONSTRAINT_CASES))
def case(request):
    spec, shape = CONSTRAINT_CASES[request.param]
    return make_constraint(spec), shape


def test_registry_lists_all_six_sets():
    assert {"orthogonal", "sphere", "ball", "circle", "nonnegative", "box"} <= set(cs.available_constraints())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_lands_on_set_and_is_idempotent(case, dtype):
    c, shape = case
    x = torch.randn(shape, dtype=dtype) * 3
    y = c.project(x)
    tol = c.tolerance(dtype)
    assert c.violation(y) <= tol
    assert torch.allclose(c.project(y), y, atol=10 * tol)
    assert x.shape == y.shape and y.dtype == dtype


def test_init_is_feasible(case):
    c, shape = case
    p = torch.empty(shape)
    c.init_(p)
    assert torch.isfinite(p).all()
    assert c.violation(p) <= c.tolerance(p.dtype)


def test_violation_positive_off_the_set(case):
    c, shape = case
    p = c.init_(torch.empty(shape, dtype=torch.float64))
    off = p * 3 - 5  # leaves every set: norms grow, entries go below 0 and -1
    assert c.violation(off) > 1e-3


def test_tangent_projection_is_idempotent_and_normal_free(case):
    c, shape = case
    p = c.init_(torch.empty(shape, dtype=torch.float64))
    v = torch.randn(shape, dtype=torch.float64)
    t = c.tangent_project(p, v)
    assert torch.allclose(c.tangent_project(p, t), t, atol=1e-12)
    if not c.is_inequality:  # on a manifold, a tangent move leaves the set only to second order
        eps = 1e-4
        assert c.violation(p + eps * t) <= 50 * eps**2 + 1e-12


def test_orthogonal_shapes():
    tall = cs.Orthogonal().init_(torch.empty(7, 3))
    assert torch.allclose(tall.T @ tall, torch.eye(3), atol=1e-5)
    wide = cs.Orthogonal(scale=2.0).init_(torch.empty(3, 7))
    assert torch.allclose(wide @ wide.T, 4 * torch.eye(3), atol=1e-4)
    conv = cs.Orthogonal().init_(torch.empty(4, 3, 3, 3))  # (4, 27): wide
    m = conv.reshape(4, -1)
    assert torch.allclose(m @ m.T, torch.eye(4), atol=1e-5)
    batch = cs.Orthogonal(batch_dims=1).init_(torch.empty(5, 3, 3))
    assert torch.allclose(batch @ batch.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5)


def test_shake_falls_back_to_polar_for_huge_steps():
    c = cs.Orthogonal()
    p = c.init_(torch.empty(6, 4, dtype=torch.float64))
    step = c.tangent_project(p, torch.randn(6, 4, dtype=torch.float64) * 1e6)
    c.retract_(p, step, {})
    assert torch.isfinite(p).all() and c.violation(p) < 1e-10


def test_sphere_dim_options():
    whole = cs.Sphere(radius=3.0, dim=None).project(torch.randn(4, 5))
    assert math.isclose(whole.norm().item(), 3.0, rel_tol=1e-6)
    cols = cs.Sphere(dim=0).project(torch.randn(4, 5))
    assert torch.allclose(cols.norm(dim=0), torch.ones(5), atol=1e-6)


def test_box_and_nonnegative_reflect_exactly():
    box = cs.Box(lower=-1.0, upper=1.0)
    p = torch.tensor([0.5, 0.5, -0.9, 0.0])
    v = box.drift_(p, torch.tensor([1.0, 3.0, -0.3, 0.0]), 1.0, {})
    assert torch.allclose(p, torch.tensor([0.5, -0.5, -0.8, 0.0]))  # 1.5 -> 0.5 ; 3.5 -> -0.5 (two walls)
    assert torch.equal(v, torch.tensor([-1.0, 3.0, 0.3, 0.0]))
    nn = cs.NonNegative()
    q = torch.tensor([0.2, 0.2])
    v = nn.drift_(q, torch.tensor([-0.5, 0.1]), 1.0, {})
    assert torch.allclose(q, torch.tensor([0.3, 0.3])) and torch.equal(v, torch.tensor([0.5, 0.1]))


def test_circle_rotation_stays_on_circle():
    c = cs.Circle(radius=0.5)
    w = torch.tensor([0.0, 0.3, -0.49])
    state = c.init_state(w)
    for _ in range(1000):
        c.retract_(w, torch.full_like(w, 0.37), state)
    assert torch.allclose(torch.hypot(w, state["aux"]), torch.full_like(w, 0.5), atol=1e-6)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("no-such-set", "available constraints"),
        (("sphere", {"radius": 0.0}), "radius"),
        (("ball", {"radius": -1.0}), "radius"),
        (("circle", {"radius": float("nan")}), "radius"),
        (("box", {"lower": 1.0, "upper": 1.0}), "lower must be < upper"),
        (("box", {"boundary": "bounce"}), "boundary"),
        (("sphere", {"radus": 2.0}), "radus"),
        (("orthogonal", {"scale": 0}), "scale"),
    ],
)
def test_bad_constraint_options(spec, match):
    with pytest.raises(ValueError, match=match):
        make_constraint(spec)


def test_keyword_only():
    with pytest.raises(TypeError, match="keyword"):
        cs.Sphere(2.0)


def test_box_one_wall_reflection_equals_the_general_fold():
    """The box's fast reflection (taken when no entry moves further than the width) gives the
    general fold's positions and velocities, and long steps still take the general fold."""
    from constrained_sgld import Box
    from constrained_sgld.constraints.base import StepContext

    box = Box(lower=-0.2, upper=0.3)
    g = torch.Generator().manual_seed(0)
    start = torch.rand(10_000, generator=g, dtype=torch.float64) * 0.5 - 0.2
    for scale in (1e-9, 0.05, 0.49, 3.0):  # nothing crossed, within the width, just within, far beyond
        v = torch.randn(10_000, generator=g, dtype=torch.float64)
        v = v / v.abs().max() * scale
        fast, general = start.clone(), start.clone()
        v_fast = box.drift_many_([fast], [v.clone()], 1.0, [{}])[0]
        v_general = box.drift_many_([general], [v.clone()], 1.0, [{}], StepContext(sync_free=True))[0]
        torch.testing.assert_close(fast, general, rtol=0, atol=1e-12)
        assert torch.equal(v_fast, v_general)
        assert box.violation(fast) == 0


def test_box_general_fold_equals_bouncing_off_the_walls_one_by_one():
    """The general fold (closed form, any number of walls crossed) against the reflections done
    one at a time: the same final point, and the velocity reversed exactly when an odd number of
    walls was hit. Moves of up to 40 widths, and entries left exactly on a wall or inside."""
    from constrained_sgld import Box
    from constrained_sgld.constraints.base import StepContext

    box = Box(lower=-0.2, upper=0.3)
    g = torch.Generator().manual_seed(2)
    start = torch.rand(20_000, generator=g, dtype=torch.float64) * 0.5 - 0.2
    v = torch.randn(20_000, generator=g, dtype=torch.float64) * torch.logspace(-6, 1.3, 20_000, dtype=torch.float64)
    v[:10] = 0.0
    start[:5] = 0.3
    x, flips = start + v, torch.zeros_like(v)
    while bool(((x > 0.3) | (x < -0.2)).any()):
        high, low = x > 0.3, x < -0.2
        x = torch.where(high, 0.6 - x, torch.where(low, -0.4 - x, x))
        flips += (high | low).double()
    folded = start.clone()
    v_new = box.drift_many_([folded], [v.clone()], 1.0, [{}], StepContext(sync_free=True))[0]
    torch.testing.assert_close(folded, x, rtol=0, atol=1e-12)
    assert torch.equal(v_new, torch.where(flips % 2 == 1, -v, v))
    assert (flips > 10).any() and (flips == 0).any()


@pytest.mark.parametrize("lower", [0.0, -0.3])
def test_half_line_reflection_flips_exactly_the_crossing_velocities(lower):
    """``nonnegative`` (and a half-line at another wall): an entry that crossed the wall lands at
    its mirror image with its velocity reversed; every other entry moves straight on. The
    checked path (one min pass) and the sync-free path give the same result."""
    from constrained_sgld import NonNegative
    from constrained_sgld.constraints.base import StepContext

    wall = NonNegative()
    wall.lower = lower  # the half-line [lower, inf): the same code with a shifted wall
    g = torch.Generator().manual_seed(1)
    start = torch.rand(5_000, generator=g, dtype=torch.float64) * 0.1 + lower
    for scale in (1e-9, 0.3):  # nothing crosses; many cross
        v = torch.randn(5_000, generator=g, dtype=torch.float64) * scale
        moved = start + 0.5 * v
        expected = (moved - lower).abs() + lower
        expected_v = torch.where(moved < lower, -v, v)
        for ctx in (StepContext(), StepContext(sync_free=True)):
            x = start.clone()
            v_new = wall.drift_many_([x], [v.clone()], 0.5, [{}], ctx)[0]
            torch.testing.assert_close(x, expected, rtol=0, atol=1e-15)
            assert torch.equal(v_new, expected_v)
        assert (scale > 1e-6) == bool((moved < lower).any())


@pytest.mark.parametrize("noisy", [False, True], ids=["T0", "noisy"])
@pytest.mark.parametrize(
    "spec",
    [("box", {"lower": -0.2, "upper": 0.3}), "nonnegative", ("ball", {"radius": 0.5}), ("sphere", {"radius": 0.5}), ("circle", {"radius": 0.3})],
    ids=["box", "nonnegative", "ball", "sphere", "circle"],
)
def test_fused_drift_ou_drift_equals_the_drifts_in_turn(spec, noisy):
    """Each set's ``drift_ou_drift_`` (one straight flight, one geodesic or one rotation where it
    can) moves exactly as the base class's composition of its plain operations, A(t), O, A(t),
    including moves long enough to hit walls (several, for the box) and the ball's sphere."""
    from constrained_sgld.constraints.base import Constraint

    c, name = make_constraint(spec), spec if isinstance(spec, str) else spec[0]
    g = torch.Generator().manual_seed(0)
    x0 = c.project(torch.randn(40, 6, generator=g, dtype=torch.float64) * 0.25)
    m0 = torch.randn(40, 6, generator=g, dtype=torch.float64)
    m0 = c.tangent_project(x0, m0) if name == "sphere" else m0
    xi = torch.randn(40, 6, generator=g, dtype=torch.float64) if noisy else None
    t, friction, std = 0.4, 0.8, 0.3
    results = []
    for fused in (True, False):
        x, m = x0.clone(), m0.clone()
        state = c.init_state(x)
        op = c.drift_ou_drift_ if fused else (lambda *a: Constraint.drift_ou_drift_(c, *a))
        op([x], [m], t, friction, None if xi is None else [xi], std, [state])
        results.append((x, m))
    (x1, m1), (x2, m2) = results
    torch.testing.assert_close(x1, x2, rtol=0, atol=1e-12)
    torch.testing.assert_close(m1, m2, rtol=0, atol=1e-12)
    assert c.violation(x1) <= 1e-12
    if name in ("box", "nonnegative", "ball"):  # the straight flight left the set: walls were hit
        assert c.violation(x0 + t * (1 + friction) * m0) > 0.1


def test_sphere_one_pass_geodesic_equals_the_explicit_route():
    """The sphere's drift as one linear map of (point, velocity) per row (taken when a host read
    allows) lands where the explicit route (untangle, exact geodesic, renormalise, re-tangent;
    what a sync-free step takes) does, for velocities with a normal part, with and without the
    friction factor, and for the overdamped move along a gradient (negative time). Turns too
    wide for it and velocities almost normal to the sphere are left to the explicit route."""
    from constrained_sgld import Sphere
    from constrained_sgld.constraints.base import DEFAULT_CONTEXT, StepContext

    sphere = Sphere(radius=1.5)
    g = torch.Generator().manual_seed(3)
    start = sphere.project(torch.randn(40, 9, generator=g, dtype=torch.float64))
    for t, c, scale in ((1e-3, 1.0, 1.0), (0.15, 0.8, 1.0), (0.2, 0.5, 1.2), (0.05, 1.0, 1e-6)):
        v = torch.randn(40, 9, generator=g, dtype=torch.float64) * scale  # normal part and all
        assert sphere._rotation(start, v, t, DEFAULT_CONTEXT) is not None
        p1, v1, p2, v2 = start.clone(), v.clone(), start.clone(), v.clone()
        sphere._geodesic_(p1, v1, t, DEFAULT_CONTEXT, c=c)
        sphere._geodesic_(p2, v2, t, StepContext(sync_free=True), c=c)
        torch.testing.assert_close(p1, p2, rtol=0, atol=1e-13)
        torch.testing.assert_close(v1, v2, rtol=0, atol=1e-13)
        assert sphere.violation(p1) < 1e-14
        assert (p1 * v1).sum(1).abs().max() < 1e-13
    # the overdamped move: the geodesic of the gradient's tangent part for time -lr
    grad = torch.randn(40, 9, generator=g, dtype=torch.float64)
    p1, p2 = start.clone(), start.clone()
    sphere.move_([p1], [grad], -0.4, 0.0, None, 0.0, [{}])
    sphere.move_([p2], [grad], -0.4, 0.0, None, 0.0, [{}], StepContext(sync_free=True))
    torch.testing.assert_close(p1, p2, rtol=0, atol=1e-13)
    # beyond its limits
    wide = torch.randn(40, 9, generator=g, dtype=torch.float64) * 10
    assert sphere._rotation(start, wide, 1.0, DEFAULT_CONTEXT) is None
    assert sphere._rotation(start, wide, 1.0, DEFAULT_CONTEXT, velocity=False) is not None
    normal = start * 3 + 1e-3 * torch.randn(40, 9, generator=g, dtype=torch.float64)
    assert sphere._rotation(start, normal, 0.1, DEFAULT_CONTEXT) is None
    assert sphere._rotation(start, torch.full_like(start, float("nan")), 0.1, DEFAULT_CONTEXT) is None


@pytest.mark.parametrize("scheme", ["od", "ud"])
@pytest.mark.parametrize(
    "spec",
    ["orthogonal", ("sphere", {"radius": 2.0}), ("ball", {"radius": 2.0}), ("circle", {"radius": 2.0}), "nonnegative", "box"],
    ids=lambda s: s if isinstance(s, str) else s[0],
)
def test_huge_steps_stay_on_the_set_to_float32_rounding(spec, scheme):
    """lr = 1e3 turns the sphere's geodesic by thousands of radians per step: every set must still
    land within a few float32 ulps of itself (the sphere's one-pass map once took its sine and
    cosine of angles an ulp apart, and left 6e-5)."""
    cls = cs.ConstrainedSGLD if scheme == "od" else cs.ConstrainedUnderdampedSGLD
    worst = 0.0
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        p = torch.nn.Parameter(torch.randn(6, 4, generator=gen))
        c = cs.make_constraint(spec)
        with torch.no_grad():
            p.copy_(c.project(p))
        opt = cls([p], constraints={p: spec}, lr=1e3, temperature=1e-2, seed=seed)
        for _ in range(3):
            p.grad = torch.randn(6, 4, generator=gen)
            opt.step()
        worst = max(worst, float(opt.violations()[0]))
    assert worst <= 16 * torch.finfo(torch.float32).eps, worst


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_square_orthogonal_drift_ou_drift_equals_its_composition(scale):
    """Square matrices take the Cayley route; its fused A O A (one solve without noise, the
    body-frame O step with noise) is the composition drift, O, drift of the same set."""
    c = cs.Orthogonal(scale=scale)
    gen = torch.Generator().manual_seed(0)
    x0 = [c.init_(torch.empty(5, 5, dtype=torch.float64)), c.init_(torch.empty(5, 5, dtype=torch.float64))]
    p0 = [c.tangent_force(x, torch.randn(5, 5, generator=gen, dtype=torch.float64), {}) for x in x0]  # as stored: body frame
    for noise in (None, [torch.randn(5, 5, generator=gen, dtype=torch.float64) for _ in x0]):
        fused_x, fused_p = [x.clone() for x in x0], [p.clone() for p in p0]
        c.drift_ou_drift_(fused_x, fused_p, 0.3, 0.7, noise, 0.2, [{}, {}])
        xs, ps = [x.clone() for x in x0], [p.clone() for p in p0]
        ps = c.drift_many_(xs, ps, 0.3, [{}, {}])
        c.ou_(xs, ps, 0.7, noise, 0.2, [{}, {}])
        ps = c.drift_many_(xs, ps, 0.3, [{}, {}])
        for a, b in zip(fused_x + fused_p, xs + ps):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        assert max(float(c.violation(x)) for x in fused_x) < 1e-12
