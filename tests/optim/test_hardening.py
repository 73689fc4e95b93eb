"""What a user hits in the first week: copies, half precision, complex and empty tensors, huge
gradients, weights changed behind the optimiser's back, foreign state dicts, runtime edits."""

import copy
import pickle
import warnings

import pytest
import torch

import constrained_sgld as cs
from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD
from tests.conftest import small_mlp, train_steps


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


# ---------------------------------------------------------------- 1. copy and pickle
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_optimiser_continues_the_same_noise_stream(optimizer_cls, how):
    model = small_mlp()
    # the circle keeps its partner z in the state: a copy must not re-derive it (its sign)
    opt = optimizer_cls(model.named_parameters(), constraints={"2.weight": "orthogonal", "4.weight": ("circle", {"radius": 0.5})},
                        lr=0.05, temperature=1e-3, seed=3)
    train_steps(model, opt, 3)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    copied = [p for g in opt2.param_groups for p in g["params"]]
    assert len(copied) == len(list(model2.parameters()))
    assert all(any(p is q for q in model2.parameters()) for p in copied)  # the copy steps the copied model
    train_steps(model, opt, 3, seed=1)
    train_steps(model2, opt2, 3, seed=1)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)  # same noise, same momenta: the copy is a true continuation
    opt2.state_dict()
    opt2.add_param_group({"params": [("extra", torch.nn.Parameter(torch.zeros(3)))]})
    opt2.diagnostics()


def test_copy_keeps_sync_free_counters():
    model = small_mlp()
    opt = ConstrainedUnderdampedSGLD(model.named_parameters(), lr=0.05, seed=0, sync_free=True)
    train_steps(model, opt, 1)
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    opt.step()
    opt2 = copy.deepcopy(opt)
    assert all(d["skipped_steps"].item() == 1 for d in opt2.diagnostics())


# ---------------------------------------------------------------- 2. half precision and SVD
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_orthogonal_in_half_precision_projects_and_falls_back(optimizer_cls, dtype):
    w = torch.nn.Parameter(torch.randn(12, 6).to(dtype))  # infeasible start: the projection needs SVD
    b = torch.nn.Parameter(torch.randn(6).to(dtype))
    opt = _quiet(optimizer_cls, [{"params": [b]}, {"params": [w], "constraint": "orthogonal"}], lr=0.1)
    assert cs.Orthogonal().violation(w.float()) < 0.05
    before = b.detach().clone()
    w.grad = torch.randn_like(w) * 50  # far too large for SHAKE: the polar fallback (SVD) runs
    b.grad = torch.ones_like(b)
    opt.step()
    assert not torch.equal(b, before) and torch.isfinite(w.float()).all()
    assert cs.Orthogonal().violation(w.float()) < 0.05


# ---------------------------------------------------------------- 3. sync-free float16 screen
def test_sync_free_float16_does_not_skip_ordinary_gradients():
    p = torch.nn.Parameter(torch.zeros(200_000, dtype=torch.float16))
    opt = ConstrainedSGLD([p], lr=1e-3, sync_free=True)
    p.grad = torch.ones_like(p)  # finite everywhere; the float16 sum (200,000) overflows
    opt.step()
    assert opt.diagnostics()[0]["skipped_steps"].item() == 0
    assert torch.all(p == -1e-3 * torch.ones((), dtype=torch.float16))


# ---------------------------------------------------------------- 4. complex parameters
def test_complex_parameters_are_refused_by_name(optimizer_cls):
    z = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="'z' is complex"):
        optimizer_cls([("z", z)], lr=0.1)


# ---------------------------------------------------------------- 5. zero-size parameters
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (4, 0, 3, 3)])
def test_empty_orthogonal_parameter_is_refused_by_name(shape):
    with pytest.raises(ValueError, match="'w' is empty"):
        ConstrainedSGLD([("w", torch.nn.Parameter(torch.zeros(shape)))], constraints={"w": "orthogonal"}, lr=0.1)


def test_empty_circle_parameter_steps_and_reports(optimizer_cls):
    w = torch.nn.Parameter(torch.zeros(0, 3))
    opt = optimizer_cls([("w", w)], constraints={"w": ("circle", {"radius": 0.5})}, lr=0.1)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert opt.violations()[0].item() == 0
    assert opt.diagnostics()[0]["violation"].item() == 0


# ---------------------------------------------------------------- 6. huge but finite gradients
@pytest.mark.parametrize(
    "cls, spec",
    [
        (ConstrainedSGLD, ("sphere", {"radius": 1.0})),
        (ConstrainedUnderdampedSGLD, ("sphere", {"radius": 1.0})),
        (ConstrainedUnderdampedSGLD, ("ball", {"radius": 1.0, "boundary": "clamp"})),
        (ConstrainedSGLD, ("circle", {"radius": 0.5})),
        (ConstrainedUnderdampedSGLD, ("circle", {"radius": 0.5})),
        (ConstrainedUnderdampedSGLD, ("box", {})),
    ],
)
@pytest.mark.parametrize("sync_free", [False, True], ids=["host-read", "sync-free"])
def test_huge_finite_gradients_stay_finite_and_on_the_set(cls, spec, sync_free):
    # squares of 1e20-sized entries overflow float32: the norms of steps must not
    w = torch.nn.Parameter(cs.make_constraint(spec).project(torch.randn(6, 5)))
    opt = cls([("w", w)], constraints={"w": spec}, lr=0.1, sync_free=sync_free)
    c = cs.make_constraint(spec)
    for _ in range(3):
        w.grad = torch.randn(6, 5) * 1e20
        opt.step()
        assert torch.isfinite(w).all()
        assert c.violation(w) <= 10 * c.tolerance(torch.float32)
        for state in opt.state.values():
            assert all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor))


# ---------------------------------------------------------------- 7. stale circle state
def test_circle_state_follows_weights_loaded_behind_its_back(optimizer_cls):
    model = small_mlp()
    spec = ("circle", {"radius": 0.3})
    opt = _quiet(optimizer_cls, model.named_parameters(), constraints={"*.weight": spec}, lr=0.05, seed=0)
    best = copy.deepcopy(model.state_dict())
    train_steps(model, opt, 20)
    model.load_state_dict(best)  # back to the saved weights mid-run
    loaded = model[0].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for g in opt.param_groups:
        g["temperature"] = 0.0
    for state in opt.state.values():  # the momentum schemes: start from rest
        if "momentum" in state:
            state["momentum"].zero_()
    opt.step()  # zero force, zero noise, zero momentum: nothing may move
    torch.testing.assert_close(model[0].weight.detach(), loaded, atol=1e-6, rtol=0)
    assert opt.violations()[0].item() < 1e-5


# ---------------------------------------------------------------- 8. foreign state dicts
def test_state_dict_from_the_other_scheme_is_refused_at_load():
    model = small_mlp()
    circle = {"*.weight": ("circle", {"radius": 0.5})}  # a set with state of its own ("aux")
    od = ConstrainedSGLD(model.named_parameters(), constraints=circle, lr=0.1, seed=0)
    train_steps(model, od, 1)
    ud = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints=circle, lr=0.1, seed=0)
    with pytest.raises(ValueError, match="saved by ConstrainedSGLD"):
        ud.load_state_dict(od.state_dict())
    legacy = od.state_dict()
    for group in legacy["param_groups"]:
        del group["scheme"]  # a file written before the scheme was recorded
    with pytest.raises(ValueError, match="momentum"):
        ud.load_state_dict(legacy)


# ---------------------------------------------------------------- 9. runtime constraint edits
def test_changing_a_groups_constraint_at_runtime_is_refused_before_anything_moves(optimizer_cls):
    model = small_mlp()
    opt = _quiet(optimizer_cls, model.named_parameters(), constraints={"2.weight": "orthogonal"}, lr=0.1, seed=0)
    train_steps(model, opt, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[-1]["constraint"] = "ball"
    with pytest.raises(ValueError, match=r"param_groups\[\d\]\['constraint'\] was set to 'ball'"):
        train_steps(model, opt, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---------------------------------------------------------------- 10. warnings that say what happened
def test_pattern_overridden_by_a_groups_constraint_says_so():
    model = small_mlp()
    with pytest.warns(UserWarning, match="matched only parameters whose group sets its own 'constraint'"):
        ConstrainedSGLD([{"params": [("0.weight", model[0].weight)], "constraint": None}], lr=0.1, constraints={"0.weight": "orthogonal"})


# ---------------------------------------------------------------- 12. the init module
def test_init_is_reachable_from_the_package():
    assert cs.init.orthogonal_ is not None and cs.init.near_binary_ is not None


def test_pattern_naming_a_tied_weights_alias_says_so():
    enc = torch.nn.Linear(4, 4)
    dec = torch.nn.Linear(4, 4)
    dec.weight = enc.weight  # tied
    model = torch.nn.ModuleDict({"enc": enc, "dec": dec})
    with pytest.warns(UserWarning, match="'dec.weight', an alias of 'enc.weight'"):
        opt = ConstrainedSGLD(model.named_parameters(remove_duplicate=False), lr=0.1, constraints={"dec.weight": "orthogonal"})
    assert sum(len(g["params"]) for g in opt.param_groups) == 3  # the tied weight once
    with pytest.warns(UserWarning, match="lists a tied or shared weight under its first name only"):
        ConstrainedSGLD(model.named_parameters(), lr=0.1, constraints={"dec.weight": "orthogonal"})


# ---------------------------------------------------------------- 8. half precision, every other set
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "spec",
    [("circle", {"radius": 0.05}), ("sphere", {"radius": 1.0}), ("ball", {"radius": 0.5}), "nonnegative", ("box", {"lower": -0.1, "upper": 0.1})],
    ids=["circle", "sphere", "ball", "nonnegative", "box"],
)
def test_half_precision_sets_step_and_stay_on_the_set(optimizer_cls, spec, dtype):
    """The sets' fast paths in half precision: scales folded into bounds, squares and reciprocals
    must not overflow (a circle step at lr 1e-6 once needed 1/k^2 = 1e12), and every step stays
    finite and on the set to the dtype's tolerance."""
    c = cs.make_constraint(spec)
    w = torch.nn.Parameter(c.project(torch.randn(64, 32) * 0.1).to(dtype))
    for lr, temperature in ((1e-6, 0.0), (0.05, 1e-3)):
        opt = optimizer_cls([("w", w)], constraints={"w": spec}, lr=lr, temperature=temperature, seed=0)
        for step in range(5):
            w.grad = (torch.randn(64, 32, generator=torch.Generator().manual_seed(step))).to(dtype)
            opt.step()
            assert torch.isfinite(w).all()
            assert max(v.item() for v in opt.violations()) <= c.tolerance(dtype), (lr, temperature, step)


@pytest.mark.parametrize("spec", ["orthogonal", ("sphere", {}), ("circle", {"radius": 0.5}), "nonnegative"])
def test_non_finite_parameter_to_project_is_refused_by_name(spec):
    # torch.empty can hold NaN: projecting it would fail deep inside an SVD, or spread the NaN
    w = torch.nn.Parameter(torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match="'w' has non-finite entries"):
        ConstrainedSGLD([("w", w)], constraints={"w": spec})
    assert torch.isnan(w).all()  # left as it was
