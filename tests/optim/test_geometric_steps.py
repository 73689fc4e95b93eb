"""The optimiser-only preconditioner kinds: ``"adam"`` (Adam's moments) and ``"spectral"`` (Muon's
momentum and a unit direction in the set's norm). What they must equal (torch's Adam, AdamW and
Muon), what they must keep (the sets, after every step), what they must refuse (noise, sets without
the geometry, sharded matrices), and torch.optim's conventions (groups, resume, sync-free, compile)."""

import io
import warnings

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD, Orthogonal
from constrained_sgld.constraints.base import make_constraint
from tests.conftest import mse_steps, small_mlp

pytestmark = pytest.mark.filterwarnings("ignore:projected onto their constraint sets")


# ------------------------------------------------------------------ what they must equal
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD])
def test_adam_without_a_constraint_at_zero_temperature_is_torch_adam(cls, decoupled):
    """torch.optim.Adam (weight decay in the force) or AdamW (decoupled), through a scheduler; the
    momentum scheme at momentum 0 is the same step. float64: only rounding separates them."""
    ours_model, torch_model = small_mlp(dtype=torch.float64), small_mlp(dtype=torch.float64)
    spec = {"kind": "adam", "betas": (0.8, 0.99), "eps": 1e-6, "decoupled_weight_decay": decoupled}
    extra = {"momentum": 0.0} if cls is ConstrainedUnderdampedSGLD else {}
    ours = cls(ours_model.parameters(), lr=3e-3, weight_decay=1e-2, preconditioner=spec, **extra)
    theirs = (torch.optim.AdamW if decoupled else torch.optim.Adam)(torch_model.parameters(), lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)
    scheds = [torch.optim.lr_scheduler.StepLR(o, 10, gamma=0.5) for o in (ours, theirs)]
    for step in range(40):
        for model, opt, sched in zip((ours_model, torch_model), (ours, theirs), scheds):
            mse_steps(model, opt, 1, seed=step, scheduler=sched)
    for a, b in zip(ours_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    p, q = next(ours_model.parameters()), next(torch_model.parameters())
    torch.testing.assert_close(ours.state[p]["first_moment"], theirs.state[q]["exp_avg"], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ours.state[p]["second_moment"], theirs.state[q]["exp_avg_sq"], rtol=1e-12, atol=1e-15)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is torch 2.9+")
@pytest.mark.parametrize("nesterov, adjust", [(True, "original"), (False, "match_rms_adamw")])
def test_spectral_without_a_constraint_is_torch_muon(nesterov, adjust):
    """With Muon's bfloat16 Newton-Schulz, the same matrices as torch.optim.Muon's (decoupled weight
    decay, Nesterov or not, its shape factors); the products are Muon's own, so what remains is the
    order of the last multiplication by lr (float32 rounding)."""
    torch.manual_seed(0)
    ws = [torch.randn(6, 4), torch.randn(3, 7)]
    ours_ws = [w.clone().requires_grad_() for w in ws]
    torch_ws = [w.clone().requires_grad_() for w in ws]
    spec = {"kind": "spectral", "ns_dtype": "bfloat16", "nesterov": nesterov, "momentum": 0.9, "adjust_lr": adjust}
    ours = ConstrainedSGLD(ours_ws, lr=0.02, weight_decay=0.1, preconditioner=spec)
    theirs = torch.optim.Muon(torch_ws, lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust)
    for step in range(15):
        for params, opt in ((ours_ws, ours), (torch_ws, theirs)):
            opt.zero_grad()
            sum((w.sin() ** 2).sum() * (i + 1) for i, w in enumerate(params)).backward()
            opt.step()
    for a, b in zip(ours_ws, torch_ws):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the sets, after every step
ORTHOGONAL_SHAPES = {
    "square": ((8, 8), {}),
    "odd square": ((7, 7), {}),
    "tall": ((12, 5), {}),
    "wide": ((4, 10), {}),
    "fused qkv": ((3 * 6, 6), {"blocks": 3}),
    "conv": ((6, 2, 3, 3), {}),
    "scaled": ((6, 6), {"scale": 2.0}),
}


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("variant", ["project", "steepest"])
@pytest.mark.parametrize("case", list(ORTHOGONAL_SHAPES))
def test_spectral_step_keeps_orthogonal_matrices_orthogonal_after_every_step(case, variant, sync_free):
    shape, options = ORTHOGONAL_SHAPES[case]
    torch.manual_seed(0)
    w = torch.randn(shape, requires_grad=True)
    target = torch.randn(shape)
    constraint = Orthogonal(**options)
    opt = ConstrainedSGLD([w], constraints={w: constraint}, lr=0.1, sync_free=sync_free,
                          preconditioner={"kind": "spectral", "variant": variant})
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = ((w - target) ** 2).sum()
        loss.backward()
        losses.append(loss.item())
        opt.step()
        assert float(constraint.violation(w.detach())) <= constraint.tolerance(w.dtype)
    assert losses[-1] < losses[0]  # a descent method
    if sync_free:
        assert float(opt.diagnostics()[0].get("rejected_moves", 0)) == 0


@pytest.mark.parametrize("variant", ["project", "steepest"])
def test_square_steepest_moves_along_the_closed_form(variant):
    """One step from W at momentum 0 on a square matrix: ``steepest`` rotates along
    ``W msign(skew(W^T G))``, the closed form: the Cayley retraction of ``-lr`` times it."""
    torch.manual_seed(1)
    w0 = Orthogonal().init_(torch.empty(6, 6, dtype=torch.float64))
    w = w0.clone().requires_grad_()
    g = torch.randn(6, 6, dtype=torch.float64)
    opt = ConstrainedSGLD([w], constraints={w: "orthogonal"}, lr=0.05,
                          preconditioner={"kind": "spectral", "variant": variant, "msign": "svd", "momentum": 0.0, "nesterov": False})
    w.grad = g.clone()
    opt.step()
    skew = 0.5 * (w0.T @ g - g.T @ w0)
    u, _, vh = torch.linalg.svd(skew if variant == "steepest" else g)
    x = u @ vh if variant == "steepest" else 0.5 * (w0.T @ (u @ vh) - (u @ vh).T @ w0)  # body frame
    eye = torch.eye(6, dtype=torch.float64)
    expected = w0 @ torch.linalg.solve(eye + 0.5 * 0.05 * x, eye - 0.5 * 0.05 * x)  # W cay(-lr X)
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("spec", [("sphere", {}), ("sphere", {"radius": 2.0}), ("ball", {"radius": 0.5})])
@pytest.mark.parametrize("variant", ["project", "steepest"])
def test_spectral_step_on_norm_sets_moves_each_row_by_lr(spec, variant):
    """``steepest``: per row a unit step in the row's own norm, a geodesic of angle lr on a
    sphere; ``project``: Muon's matrix sign (rows of norm about 1), so no row turns by much more
    than lr. Every row stays on its set."""
    torch.manual_seed(2)
    w = torch.randn(5, 9, requires_grad=True)
    constraint = make_constraint(spec)
    opt = ConstrainedSGLD([w], constraints={w: constraint}, lr=0.05,
                          preconditioner={"kind": "spectral", "variant": variant, "momentum": 0.0, "nesterov": False})
    before = w.detach().clone()
    w.grad = torch.randn(5, 9)
    opt.step()
    assert float(constraint.violation(w.detach())) <= constraint.tolerance(w.dtype)
    if spec[0] == "sphere":
        cos = (before * w.detach()).sum(1) / (before.norm(dim=1) * w.detach().norm(dim=1))
        angle = torch.arccos(cos.clamp(-1, 1))
        if variant == "steepest":
            torch.testing.assert_close(angle, torch.full_like(angle, 0.05), rtol=0, atol=1e-5)
        else:
            assert float(angle.max()) <= 0.05 * 1.3 and float(angle.min()) > 0


def test_adam_on_a_set_is_projected_and_retracted():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = ConstrainedSGLD(model.named_parameters(), lr=1e-2, preconditioner="adam",
                          constraints={"0.weight": "orthogonal", "2.weight": "sphere"})
    for step in range(20):
        mse_steps(model, opt, 1, seed=step)
        assert max(float(v) for v in opt.violations()) < 1e-5


# ------------------------------------------------------------------ what they must refuse
@pytest.mark.parametrize("kind", ["adam", "spectral"])
def test_optimiser_only_kinds_refuse_noise_at_construction_and_at_step_time(kind):
    w = torch.randn(4, 4, requires_grad=True)
    with pytest.raises(ValueError, match=f"preconditioner kind '{kind}' with temperature=0.1.*no stationary law"):
        ConstrainedSGLD([w], lr=1e-2, temperature=0.1, preconditioner=kind)
    opt = ConstrainedUnderdampedSGLD([w], lr=1e-2, preconditioner=kind)
    w.grad = torch.randn(4, 4)
    opt.step()
    before = w.detach().clone()
    state = {k: v.clone() for k, v in opt.state[w].items() if torch.is_tensor(v)}
    opt.param_groups[0]["temperature"] = 0.1  # an annealing schedule that heats a group up
    with pytest.raises(ValueError, match="no stationary law"):
        opt.step()
    assert torch.equal(w, before)
    assert all(torch.equal(opt.state[w][k], v) for k, v in state.items())


def test_a_per_entry_mass_on_a_coupled_set_is_refused_with_noise_and_allowed_without():
    w = torch.nn.functional.normalize(torch.randn(4, 6), dim=1).requires_grad_()
    with pytest.raises(ValueError, match=r"per_entry=True with temperature=0.01 on parameter .*'sphere' set couples"):
        ConstrainedSGLD([w], constraints={w: "sphere"}, lr=1e-2, temperature=0.01, preconditioner={"per_entry": True})
    ConstrainedSGLD([w], constraints={w: "sphere"}, lr=1e-2, preconditioner={"per_entry": True})  # T = 0: fine
    b = torch.rand(4, 6).requires_grad_()  # an element-wise set: every block is an entry, exact at any T
    ConstrainedSGLD([b], constraints={b: "box"}, lr=1e-2, temperature=0.01, preconditioner={"per_entry": True})


@pytest.mark.parametrize("spec, shape, match", [
    ("box", (4, 4), "defined on unconstrained matrices.*not on 'box'"),
    ("nonnegative", (4, 4), "not on 'nonnegative'"),
    (None, (4,), r"shape \(4,\).*needs a matrix"),
])
def test_spectral_step_is_refused_where_it_has_no_meaning(spec, shape, match):
    w = torch.rand(shape).requires_grad_()
    with pytest.raises(ValueError, match=match):
        ConstrainedSGLD([("w", w)], constraints={"w": spec}, lr=1e-2, preconditioner="spectral")


def test_spectral_and_adam_groups_side_by_side_each_step_their_own_way():
    """Muon's recipe in one optimiser: the matrices spectral, everything else Adam."""
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    matrices = [(n, p) for n, p in model.named_parameters() if p.ndim == 2]
    rest = [(n, p) for n, p in model.named_parameters() if p.ndim != 2]
    opt = ConstrainedSGLD([{"params": matrices, "preconditioner": "spectral"}, {"params": rest, "preconditioner": "adam"}],
                          lr=1e-2, constraints={"0.weight": "orthogonal"})
    mse_steps(model, opt, 3)
    kinds = {g["preconditioner"]["kind"] for g in opt.param_groups}
    assert kinds == {"spectral", "adam"}
    assert "second_moment" not in opt.state[model[0].weight] and "second_moment" in opt.state[model[0].bias]


# ------------------------------------------------------------------ torch.optim's conventions
def _model_and_optimiser(cls, kind):
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    matrices = [(n, p) for n, p in model.named_parameters() if p.ndim == 2]
    rest = [(n, p) for n, p in model.named_parameters() if p.ndim != 2]
    first = {"kind": "spectral", "variant": "steepest"} if kind == "spectral" else "adam"
    # the momentum schemes at momentum 0 are the plain step (the thermostat needs some friction)
    extra = {ConstrainedSGLD: {}, ConstrainedUnderdampedSGLD: {"momentum": 0.0}, ConstrainedSGNHT: {"momentum": 0.5}}[cls]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = cls([{"params": matrices, "preconditioner": first}, {"params": rest, "preconditioner": "adam"}], lr=1e-2,
                  constraints={"0.weight": "orthogonal", "2.weight": "orthogonal", "4.weight": "sphere"}, seed=0, **extra)
    return model, opt


@pytest.mark.parametrize("kind", ["adam", "spectral"])
@pytest.mark.parametrize("cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD, ConstrainedSGNHT])
def test_resume_from_a_state_dict_is_bit_for_bit(cls, kind):
    model, opt = _model_and_optimiser(cls, kind)
    mse_steps(model, opt, 4)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    mse_steps(model, opt, 5, seed=1)
    expected = [p.detach().clone() for p in model.parameters()]
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin, twin_opt = _model_and_optimiser(cls, kind)
    twin.load_state_dict(saved["model"])
    twin_opt.load_state_dict(saved["optim"])
    mse_steps(twin, twin_opt, 5, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(expected, twin.parameters()))


@pytest.mark.parametrize("kind", ["adam", "spectral"])
def test_compiled_step_matches_eager(kind):
    eager_model, eager_opt = _model_and_optimiser(ConstrainedSGLD, kind)
    compiled_model, compiled_opt = _model_and_optimiser(ConstrainedSGLD, kind)
    x, y = torch.randn(16, 8), torch.randn(16, 3)

    def make_step(model, opt):
        def step():
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        return step

    eager, compiled = make_step(eager_model, eager_opt), torch.compile(make_step(compiled_model, compiled_opt), backend="aot_eager")
    for _ in range(3):
        eager()
        compiled()
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b)
    assert max(float(v) for v in compiled_opt.violations()) < 1e-5
