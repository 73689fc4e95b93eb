"""The preconditioner's API: torch.optim's conventions (per group, state_dict, schedulers, copies),
its reductions per set, its freezing, its errors, and RMSprop where it must be RMSprop."""

import copy
import io
import warnings

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD
from tests.conftest import CONSTRAINT_CASES, mse_steps, small_convnet, small_mlp, train_steps

pytestmark = pytest.mark.filterwarnings("ignore:projected onto their constraint sets")


# ------------------------------------------------------------------ what it must equal
@pytest.mark.parametrize("momentum", [None, 0.0, 0.9])
def test_at_zero_temperature_without_constraints_it_is_rmsprop(momentum):
    """Same updates as torch.optim.RMSprop (V from zero, eps outside the root, weight decay in the
    force), through a scheduler that changes lr; float64, so only rounding separates them."""
    ours_model, torch_model = small_mlp(dtype=torch.float64), small_mlp(dtype=torch.float64)
    kwargs = dict(lr=3e-3, weight_decay=1e-2)
    spec = {"alpha": 0.95, "eps": 1e-6}
    if momentum is None:
        ours = ConstrainedSGLD(ours_model.parameters(), preconditioner=spec, **kwargs)
        theirs = torch.optim.RMSprop(torch_model.parameters(), alpha=0.95, eps=1e-6, **kwargs)
    else:
        ours = ConstrainedUnderdampedSGLD(ours_model.parameters(), momentum=momentum, preconditioner=spec, **kwargs)
        theirs = torch.optim.RMSprop(torch_model.parameters(), alpha=0.95, eps=1e-6, momentum=momentum, **kwargs)
    # a scheduler too, without momentum: with momentum, RMSprop scales its whole buffer by the new lr
    # (as torch's SGD does), while the Langevin velocity keeps its past (the same at a fixed lr)
    gamma = 0.5 if not momentum else 1.0
    scheds = [torch.optim.lr_scheduler.StepLR(o, 10, gamma=gamma) for o in (ours, theirs)]
    for step in range(40):
        for model, opt, sched in zip((ours_model, torch_model), (ours, theirs), scheds):
            mse_steps(model, opt, 1, seed=step)
            sched.step()
    for a, b in zip(ours_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    p = next(ours_model.parameters())
    torch.testing.assert_close(ours.state[p]["second_moment"], theirs.state[next(torch_model.parameters())]["square_avg"])


def test_without_a_preconditioner_nothing_changes(optimizer_cls):
    a, b = small_mlp(), small_mlp()
    oa = optimizer_cls(a.parameters(), lr=0.01, temperature=1e-3, seed=0)
    ob = optimizer_cls(b.parameters(), lr=0.01, temperature=1e-3, seed=0, preconditioner=None)
    train_steps(a, oa, 5)
    train_steps(b, ob, 5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all("second_moment" not in s for s in ob.state.values())


# ------------------------------------------------------------------ blocks per set
BLOCKS = {
    "orthogonal": (1, 1),
    "orthogonal-wide-conv": (1, 1, 1, 1),
    "sphere": (6, 1),
    "ball": (6, 1),
    "circle": (6, 5),
    "nonnegative": (6, 5),
    "box": (6, 5),
}


@pytest.mark.parametrize("name", sorted(CONSTRAINT_CASES))
def test_every_set_under_every_scheme_takes_it_with_its_own_blocks(optimizer_cls, name):
    spec, shape = CONSTRAINT_CASES[name]
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(shape) * 0.1)
    opt = optimizer_cls([w], constraints={w: spec}, lr=1e-3, temperature=1e-4, seed=0, preconditioner="rmsprop")
    for k in range(10):
        g = torch.Generator().manual_seed(k)
        w.grad = torch.randn(shape, generator=g) * torch.linspace(0.1, 10, shape[-1])
        opt.step()
    state = opt.state[w]
    assert state["second_moment"].shape == BLOCKS[name]
    assert state["preconditioner_step"] == 10
    torch.testing.assert_close(state["mass"], state["second_moment"].sqrt() + 1e-8)
    assert max(float(v) for v in opt.violations()) < 1e-4
    assert torch.isfinite(w).all()


def test_orthogonal_blocks_follow_batch_dims():
    from constrained_sgld import Orthogonal, Sphere

    assert Orthogonal(batch_dims=1).block_mean(torch.zeros(7, 4, 3), torch.ones(7, 4, 3)).shape == (7, 1, 1)
    assert Sphere(dim=None).block_mean(torch.zeros(4, 3), torch.ones(4, 3)).shape == (1, 1)
    assert Sphere(dim=0).block_mean(torch.zeros(4, 3), torch.ones(4, 3)).shape == (1, 3)


def test_a_user_set_gets_one_block_per_tensor():
    from constrained_sgld import Constraint

    class Halfplane(Constraint):  # only the three set operations
        def project(self, p):
            return p.clamp_min(0)

        def tangent_project(self, p, v):
            return v

        def violation(self, p):
            return (-p).clamp_min(0).amax()

    w = torch.nn.Parameter(torch.rand(5, 4))
    opt = ConstrainedSGLD([w], constraints={w: Halfplane()}, lr=1e-3, preconditioner="rmsprop")
    w.grad = torch.randn(5, 4)
    opt.step()
    assert opt.state[w]["second_moment"].shape == (1, 1)
    torch.testing.assert_close(opt.state[w]["second_moment"], 0.01 * (w.grad**2).mean().reshape(1, 1))


# ------------------------------------------------------------------ adaptation and freezing
def test_adapt_steps_freezes_the_mass_and_zero_freezes_it_now():
    model = small_mlp()
    opt = ConstrainedUnderdampedSGLD(model.parameters(), lr=1e-3, temperature=1e-4, seed=0, preconditioner={"adapt_steps": 5})
    p = next(model.parameters())
    train_steps(model, opt, 5)
    frozen = opt.state[p]["mass"].clone()
    train_steps(model, opt, 5, seed=1)
    assert torch.equal(opt.state[p]["mass"], frozen) and opt.state[p]["preconditioner_step"] == 5
    # continual adaptation, then frozen by editing the group (as one would edit lr)
    model = small_mlp()
    opt = ConstrainedSGLD(model.parameters(), lr=1e-3, preconditioner="rmsprop")
    train_steps(model, opt, 3)
    before = opt.state[p := next(model.parameters())]["mass"].clone()
    train_steps(model, opt, 1, seed=1)
    assert not torch.equal(opt.state[p]["mass"], before)
    opt.param_groups[0]["preconditioner"]["adapt_steps"] = 0
    now = opt.state[p]["mass"].clone()
    train_steps(model, opt, 3, seed=2)
    assert torch.equal(opt.state[p]["mass"], now)


def test_groups_choose_their_own_and_the_others_are_untouched():
    a, b = small_mlp(), small_mlp()
    oa = ConstrainedSGLD([{"params": a[0].parameters(), "preconditioner": {"alpha": 0.9}}, {"params": a[2].parameters()},
                          {"params": a[4].parameters()}], lr=1e-2)
    ob = ConstrainedSGLD(b.parameters(), lr=1e-2)
    assert oa.param_groups[0]["preconditioner"]["alpha"] == 0.9 and oa.param_groups[1]["preconditioner"] is None
    train_steps(a, oa, 5)
    train_steps(b, ob, 5)
    assert not torch.equal(a[0].weight, b[0].weight)
    for i in (2, 4):
        assert "second_moment" not in oa.state[a[i].weight]
    # one step from identical models: the plain groups move exactly as without a preconditioner
    a, b = small_mlp(), small_mlp()
    oa = ConstrainedSGLD([{"params": a[0].parameters(), "preconditioner": "rmsprop"}, {"params": list(a[2].parameters()) + list(a[4].parameters())}], lr=1e-2)
    ob = ConstrainedSGLD(b.parameters(), lr=1e-2)
    train_steps(a, oa, 1)
    train_steps(b, ob, 1)
    assert torch.equal(a[2].weight, b[2].weight) and torch.equal(a[4].bias, b[4].bias)
    assert not torch.equal(a[0].weight, b[0].weight)


def test_the_gradients_are_not_written():
    model = small_mlp()
    opt = ConstrainedSGNHT(model.parameters(), lr=1e-3, weight_decay=0.1, temperature=1e-3, preconditioner="rmsprop")
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


# ------------------------------------------------------------------ state_dict, copies, resume
def _constrained(cls, model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return cls(model.named_parameters(), lr=1e-3, temperature=1e-4, seed=5,
                   constraints={"0.weight": "orthogonal", "2.weight": ("sphere", {"radius": 2.0}), "2.bias": ("box", {}),
                                "6.weight": ("circle", {"radius": 0.5})},
                   preconditioner={"alpha": 0.9, "adapt_steps": 7}, **kw)


def test_state_dict_round_trip_continues_bit_for_bit_and_loads_weights_only(optimizer_cls):
    model = small_convnet()
    opt = _constrained(optimizer_cls, model)
    train_steps(model, opt, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    train_steps(model, opt, 6, seed=1)  # past adapt_steps: the resumed run must freeze at the same step
    expected = [p.detach().clone() for p in model.parameters()]

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain data only: no class is unpickled
    twin = small_convnet(seed=1)
    twin.load_state_dict(saved["model"])
    twin_opt = _constrained(optimizer_cls, twin)
    twin_opt.load_state_dict(saved["optim"])
    assert twin_opt.param_groups[0]["preconditioner"] == {"kind": "rmsprop", "alpha": 0.9, "eps": 1e-8, "adapt_steps": 7, "bias_correction": False, "per_entry": False, "decoupled_weight_decay": False}
    train_steps(twin, twin_opt, 6, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(expected, twin.parameters()))


def test_deepcopy_continues_identically(optimizer_cls):
    model = small_convnet()
    opt = _constrained(optimizer_cls, model)
    train_steps(model, opt, 3)
    twin, twin_opt = copy.deepcopy((model, opt))  # one memo: the copy's state follows the copy's parameters
    train_steps(model, opt, 4, seed=2)
    train_steps(twin, twin_opt, 4, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert opt.param_groups[0]["preconditioner"] is not twin_opt.param_groups[0]["preconditioner"]


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "spec, match",
    [
        ("adamw", "preconditioners are None, 'rmsprop', 'adam', 'spectral'"),
        (0.99, "must be None, one of 'rmsprop', 'adam', 'spectral' or a dict"),
        ({"beta": 0.9}, r"option\(s\) \['beta'\]"),
        ({"kind": "adam", "alpha": 0.9}, r"option\(s\) \['alpha'\] for kind 'adam'"),
        ({"kind": "adam", "betas": (0.9, 1.0)}, "betas must be two numbers in"),
        ({"kind": "spectral", "variant": "exact"}, "variant must be 'project' or 'steepest'"),
        ({"kind": "spectral", "ns_steps": 0}, r"ns_steps must be an int in \[1, 99\]"),
        ({"kind": "spectral", "adjust_lr": "x"}, "adjust_lr must be None, 'original'"),
        ({"per_entry": 1}, "per_entry must be True or False"),
        ({"alpha": 1.0}, "alpha must be a number in"),
        ({"eps": 0.0}, "eps must be a finite number > 0"),
        ({"adapt_steps": -1}, "adapt_steps must be None"),
        ({"adapt_steps": 2.5}, "adapt_steps must be None"),
        ({"kind": "muon"}, "the kinds are 'rmsprop', 'adam', 'spectral'"),
        ({"bias_correction": 1}, "bias_correction must be True or False"),
    ],
)
def test_bad_preconditioners_are_named(optimizer_cls, spec, match):
    with pytest.raises(ValueError, match=match):
        optimizer_cls(small_mlp().parameters(), lr=1e-3, preconditioner=spec)


def test_a_bad_group_preconditioner_names_the_parameter_and_a_bad_edit_changes_nothing():
    model = small_mlp()
    with pytest.raises(ValueError, match=r"invalid preconditioner alpha=2.*'0.weight'"):
        ConstrainedSGLD([{"params": [("0.weight", model[0].weight)], "preconditioner": {"alpha": 2}}], lr=1e-3)
    opt = ConstrainedSGLD(model.named_parameters(), lr=1e-3, preconditioner="rmsprop")
    train_steps(model, opt, 2)
    before = [p.detach().clone() for p in model.parameters()]
    states = {k: v.clone() for k, v in opt.state[model[0].weight].items() if torch.is_tensor(v)}
    opt.param_groups[0]["preconditioner"]["eps"] = -1.0
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match=r"eps=-1.0 in parameter group of '0.weight' at step time: eps must be a finite number > 0"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(torch.equal(opt.state[model[0].weight][k], v) for k, v in states.items())


# ------------------------------------------------------------------ the kinetic temperature reads the mass
def test_kinetic_temperature_is_v_M_v_over_d():
    model = small_mlp(dtype=torch.float64)
    opt = ConstrainedUnderdampedSGLD(model.parameters(), lr=1e-3, momentum=0.5, temperature=0.1, seed=0, preconditioner={"eps": 1e-2})
    train_steps(model, opt, 5)
    states = [opt.state[p] for p in model.parameters()]
    expected = sum((s["momentum"] ** 2 * s["mass"]).sum() for s in states) / sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(opt.diagnostics()[0]["kinetic_temperature"], expected)
