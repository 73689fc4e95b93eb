"""torch.optim conventions: grouping, state_dict, schedulers, closures, errors that name the culprit."""

import copy
import io
import warnings

import pytest
import torch

import constrained_sgld as cs
from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD
from tests.conftest import batch_for, small_convnet, small_mlp, train_steps


def named(model):
    return list(model.named_parameters())


# ---------------------------------------------------------------- grouping
def test_patterns_first_match_wins_and_groups_split(optimizer_cls):
    model = small_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = optimizer_cls(
            model.named_parameters(),
            constraints={"0.weight": ("sphere", {"radius": 2.0}), "*.weight": "orthogonal", "*.bias": None},
            lr=0.05,
            temperature=1e-4,
            seed=0,
        )
    by_name = {n: g["constraint"] for g in opt.param_groups for n in g["param_names"]}
    assert by_name["0.weight"] == cs.Sphere(radius=2.0)
    assert by_name["2.weight"] == cs.Orthogonal() and by_name["4.weight"] == cs.Orthogonal()
    assert by_name["0.bias"] is None
    # one group per constraint, every parameter exactly once
    assert len(opt.param_groups) == 3
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_group_constraint_key_wins_over_mapping():
    model = small_mlp()
    w = model[2].weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = ConstrainedUnderdampedSGLD(
            [{"params": [w], "constraint": "nonnegative", "lr": 0.01}, {"params": [model[0].weight]}],
            constraints={w: "orthogonal", model[0].weight: ("ball", {"radius": 3.0})},
            lr=0.1,
        )
    assert opt.param_groups[0]["constraint"] == cs.NonNegative() and opt.param_groups[0]["lr"] == 0.01
    assert opt.param_groups[1]["constraint"] == cs.Ball(radius=3.0) and opt.param_groups[1]["lr"] == 0.1


def test_unmatched_pattern_warns():
    with pytest.warns(UserWarning, match="matches no parameter"):
        ConstrainedSGLD(small_mlp().named_parameters(), constraints={"features.*.weight": "orthogonal"})


def test_patterns_need_names():
    with pytest.raises(ValueError, match="named_parameters"):
        ConstrainedSGLD(small_mlp().parameters(), constraints={"*.weight": "orthogonal"})


def test_infeasible_parameters_projected_with_one_warning():
    model = small_mlp()
    with pytest.warns(UserWarning) as record:
        opt = ConstrainedSGLD(model.named_parameters(), constraints={"*.weight": "orthogonal"})
    msgs = [str(r.message) for r in record if "projected" in str(r.message)]
    assert len(msgs) == 1 and "0.weight" in msgs[0] and "4.weight" in msgs[0]
    for g in opt.param_groups:
        if g["constraint"] is not None:
            for p in g["params"]:
                assert g["constraint"].violation(p) < 1e-5


def test_add_param_group_and_grad_none_untouched(optimizer_cls):
    a = torch.nn.Parameter(cs.Sphere().init_(torch.empty(4, 3)))
    b = torch.nn.Parameter(torch.randn(5))
    opt = optimizer_cls([{"params": [a], "constraint": "sphere"}], lr=0.1, temperature=1.0, seed=0)
    opt.add_param_group({"params": [b], "lr": 0.01})
    assert opt.param_groups[-1]["constraint"] is None and opt.param_groups[-1]["lr"] == 0.01
    a.grad = torch.randn_like(a)
    before = b.detach().clone()
    opt.step()  # b has no grad: untouched, even at temperature > 0
    assert torch.equal(b, before)


def test_step_returns_closure_loss_and_zero_grad(optimizer_cls):
    model = small_mlp()
    x, y = batch_for(model)
    opt = optimizer_cls(model.parameters(), lr=0.05)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "make_sched",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=0.0),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=12, cycle_momentum="momentum" in o.defaults),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0 / (1 + e)),
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),
        lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.001, 0.1, step_size_up=3, cycle_momentum="momentum" in o.defaults),
    ],
)
def test_schedulers(optimizer_cls, make_sched):
    model = small_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = optimizer_cls(model.named_parameters(), constraints={"2.weight": "orthogonal"}, lr=0.05, temperature=1e-4, seed=0)
    sched = make_sched(opt)
    for _ in range(10):
        loss = train_steps(model, opt, 1)
        sched.step(loss.item()) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else sched.step()
    assert torch.isfinite(loss)
    assert cs.Orthogonal().violation(model[2].weight) < 1e-5


# ---------------------------------------------------------------- state_dict
@pytest.mark.parametrize("spec", ["orthogonal", ("circle", {"radius": 0.3}), ("ball", {"radius": 0.5}), "nonnegative"])
def test_state_dict_round_trip_continues_bit_for_bit(optimizer_cls, spec):
    def build():
        model = small_convnet()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            opt = optimizer_cls(model.named_parameters(), constraints={"2.weight": spec, "*.bias": ("box", {})}, lr=0.05, temperature=1e-3, seed=3)
        return model, opt

    model, opt = build()
    train_steps(model, opt, 5)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    train_steps(model, opt, 5, seed=1)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2 = build()
    buf.seek(0)
    ckpt = torch.load(buf)  # weights_only=True: the state dict is plain data
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optim"])
    train_steps(model2, opt2, 5, seed=1)
    for a, b in zip(expected, model2.parameters()):
        assert torch.equal(a, b)


def test_state_dict_of_the_ambient_momentum_version_is_converted(optimizer_cls):
    """A state saved before square matrices kept their momenta in the body frame (no
    ``tangent_version``: version 1, the ambient tangent vector ``V``) loads as ``skew(X^T V)``, so the
    momentum means the same velocity, and the run goes on on the set; tall matrices are unchanged."""
    if optimizer_cls is ConstrainedSGLD:
        pytest.skip("no momentum")
    torch.manual_seed(0)
    square, tall = torch.nn.Parameter(torch.empty(6, 6)), torch.nn.Parameter(torch.empty(9, 4))
    for p in (square, tall):
        cs.Orthogonal().init_(p.data)
    opt = optimizer_cls([square, tall], constraints={square: "orthogonal", tall: "orthogonal"}, lr=0.05, temperature=1e-3, seed=0)
    for p in (square, tall):
        p.grad = torch.randn(p.shape)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["tangent_version"] == 2
    body = opt.state[square]["momentum"].clone()
    torch.testing.assert_close(body, -body.T)  # skew: the body frame
    old = copy.deepcopy(sd)
    del old["param_groups"][0]["tangent_version"]
    ids = {id(p): i for i, p in enumerate(opt.param_groups[0]["params"])}
    ambient = square.detach() @ body  # what version 1 held: V = X A
    old["state"][ids[id(square)]]["momentum"] = ambient.clone()
    tall_momentum = old["state"][ids[id(tall)]]["momentum"].clone()
    twin = optimizer_cls([square, tall], constraints={square: "orthogonal", tall: "orthogonal"}, lr=0.05, temperature=1e-3, seed=0)
    twin.load_state_dict(old)
    torch.testing.assert_close(twin.state[square]["momentum"], body, rtol=0, atol=1e-6)
    assert torch.equal(twin.state[tall]["momentum"], tall_momentum)
    twin.load_state_dict(sd)  # the current version: loaded as saved
    assert torch.equal(twin.state[square]["momentum"], body)
    for _ in range(5):
        for p in (square, tall):
            p.grad = torch.randn(p.shape)
        twin.step()
    assert max(float(v) for v in twin.violations()) < 1e-5


def test_load_state_dict_rejects_other_constraints():
    model = small_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = ConstrainedSGLD(model.named_parameters(), constraints={"2.weight": "orthogonal"})
        b = ConstrainedSGLD(model.named_parameters(), constraints={"2.weight": "sphere"})
    with pytest.raises(ValueError, match="constraint"):
        b.load_state_dict(a.state_dict())


def test_same_seed_same_trajectory_and_global_rng_when_none(optimizer_cls):
    def run(seed):
        model = small_mlp()
        opt = optimizer_cls(model.parameters(), lr=0.05, temperature=1.0, seed=seed)
        train_steps(model, opt, 3)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))
    torch.manual_seed(11)
    r1 = run(None)
    torch.manual_seed(11)
    assert torch.equal(r1, run(None))


def test_temperature_zero_draws_no_random_numbers(optimizer_cls):
    model = small_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = optimizer_cls(model.named_parameters(), constraints={"2.weight": "orthogonal", "0.weight": "sphere"}, lr=0.05, seed=0)
    train_steps(model, opt, 2)
    gen = opt._generators.get("cpu")
    fresh = torch.Generator().manual_seed(opt._base_seed + 0)
    assert gen is None or torch.equal(gen.get_state(), fresh.get_state())


# ---------------------------------------------------------------- dynamics
@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_underdamped_at_zero_temperature_is_sgd_momentum(momentum):
    torch.manual_seed(0)
    m1 = small_mlp().double()
    m2 = copy.deepcopy(m1)
    ours = ConstrainedUnderdampedSGLD(m1.parameters(), lr=0.05, momentum=momentum, temperature=0.0)
    sgd = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=momentum)
    for step in range(50):
        train_steps(m1, ours, 1, seed=step)
        train_steps(m2, sgd, 1, seed=step)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_overdamped_at_zero_temperature_is_sgd():
    m1 = small_mlp().double()
    m2 = copy.deepcopy(m1)
    ours = ConstrainedSGLD(m1.parameters(), lr=0.05, weight_decay=1e-3)
    sgd = torch.optim.SGD(m2.parameters(), lr=0.05, weight_decay=1e-3)
    for step in range(20):
        train_steps(m1, ours, 1, seed=step)
        train_steps(m2, sgd, 1, seed=step)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_float64_and_dtype_preserved(optimizer_cls):
    model = small_convnet(dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = optimizer_cls(model.named_parameters(), constraints={"*.weight": "orthogonal", "*.bias": "circle"}, lr=0.05, temperature=1e-3, seed=0)
    train_steps(model, opt, 20)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert max(v.item() for v in opt.violations()) < 1e-11  # SHAKE tolerance eps^0.75 = 1.8e-12
    for state in opt.state.values():
        assert all(t.dtype == torch.float64 for t in state.values() if torch.is_tensor(t))


# ---------------------------------------------------------------- user-defined sets
@cs.register_constraint("test_simplex")
class Simplex(cs.Constraint):
    """Probability simplex over the last dim; only the three required methods."""

    def project(self, p):
        # sort-based Euclidean projection onto the simplex
        u, _ = torch.sort(p, dim=-1, descending=True)
        css = u.cumsum(-1) - 1
        k = torch.arange(1, p.shape[-1] + 1, dtype=p.dtype)
        cond = u - css / k > 0
        rho = cond.to(p.dtype).cumsum(-1).argmax(-1, keepdim=True)
        theta = css.gather(-1, rho) / (rho + 1).to(p.dtype)
        return (p - theta).clamp_min(0)

    def tangent_project(self, p, v):
        return v - v.mean(-1, keepdim=True)

    def violation(self, p):
        return torch.maximum((p.sum(-1) - 1).abs().amax(), (-p).clamp_min(0).amax())


def test_user_registered_constraint_works_with_both(optimizer_cls):
    assert "test_simplex" in cs.available_constraints()
    model = small_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = optimizer_cls(model.named_parameters(), constraints={"4.weight": "test_simplex"}, lr=0.05, temperature=1e-3, seed=0)
    train_steps(model, opt, 50)
    assert Simplex().violation(model[4].weight) < 1e-5


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=-1.0), "lr"),
        (dict(temperature=-1e-3), "temperature"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(seed="abc"), "seed"),
    ],
)
def test_bad_options(optimizer_cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        optimizer_cls(small_mlp().parameters(), **kwargs)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5])
def test_bad_momentum(momentum):
    with pytest.raises(ValueError, match="momentum"):
        ConstrainedUnderdampedSGLD(small_mlp().parameters(), momentum=momentum)


def test_bad_group_option_names_the_parameter():
    model = small_mlp()
    with pytest.raises(ValueError, match="lr.*0.weight|0.weight.*lr"):
        ConstrainedSGLD([{"params": [("0.weight", model[0].weight)], "lr": -1}], lr=0.1)


def test_unknown_constraint_lists_available():
    with pytest.raises(ValueError, match="available constraints: .*orthogonal"):
        ConstrainedSGLD(small_mlp().named_parameters(), constraints={"*.weight": "orthgonal"})


def test_constraint_that_does_not_fit_names_the_parameter():
    with pytest.raises(ValueError, match="0.bias"):
        ConstrainedSGLD(small_mlp().named_parameters(), constraints={"0.bias": "orthogonal"})


def test_parameter_given_twice_is_named():
    model = small_mlp()
    w = model[0].weight
    with pytest.raises(ValueError, match="0.weight.*twice"):
        ConstrainedSGLD([{"params": [("0.weight", w)]}, {"params": [("0.weight again", w)]}])
    with pytest.raises(ValueError, match="twice"):
        ConstrainedSGLD([w, w])


def test_sparse_gradient_rejected(optimizer_cls):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = optimizer_cls(emb.named_parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="weight.*sparse"):
        opt.step()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_leaves_everything_untouched(optimizer_cls, bad):
    model = small_convnet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = optimizer_cls(model.named_parameters(), constraints={"2.weight": "orthogonal", "*.bias": "circle"}, lr=0.05, temperature=1e-3, seed=0)
    train_steps(model, opt, 3)
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    x, y = batch_for(model)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    model[6].bias.grad[1] = bad  # the last parameter: every other one comes first
    with pytest.raises(FloatingPointError, match="6.bias"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    after = opt.state_dict()
    for k, s in state["state"].items():
        for name, t in s.items():
            assert torch.equal(t, after["state"][k][name])
    for key, gen_state in state["param_groups"][0]["rng"]["generators"].items():
        assert torch.equal(gen_state, after["param_groups"][0]["rng"]["generators"][key])


def test_bad_lr_set_by_hand_is_caught_before_any_change():
    model = small_mlp()
    opt = ConstrainedSGLD(model.named_parameters(), lr=0.1)
    opt.param_groups[0]["lr"] = -0.5
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch_for(model)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
