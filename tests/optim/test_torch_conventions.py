"""torch.optim's conventions, as PyTorch's own optimizer tests check them: Tensor ``lr``, torch's
default flags, a state_dict of ``state`` and ``param_groups`` only (so that DCP resumes a tempered
run bit-for-bit), hooks that see what the caller gets, loading that tolerates what torch tolerates,
no empty state entries, ``maximize``, and the flags this package refuses."""

import copy
import warnings

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD, Orthogonal

from ..conftest import small_mlp
from .test_api import train_steps

CONSTRAINTS = {"2.weight": "orthogonal", "4.weight": ("circle", {"radius": 0.5})}


def build(cls, model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "projected onto their sets"
        return cls(model.named_parameters(), constraints=CONSTRAINTS, seed=0, **kwargs)


def run(cls, steps, lr=0.05, model_seed=0, **kwargs):
    model = small_mlp(model_seed)
    opt = build(cls, model, lr=lr, temperature=1e-3, **kwargs)
    train_steps(model, opt, steps)
    return model, opt


def twin_of(cls, model):
    """A copy of ``model`` and a fresh optimiser for it, built the same way but seeded otherwise:
    only a loaded checkpoint can make its noise stream agree with the original's."""
    twin = small_mlp(5)
    twin.load_state_dict(model.state_dict())
    resumed = build(cls, twin, lr=0.05, temperature=1e-3)
    resumed._base_seed += 1
    return twin, resumed


def assert_same_continuation(model, opt, twin, resumed, steps, seed):
    train_steps(model, opt, steps, seed=seed)
    train_steps(twin, resumed, steps, seed=seed)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- hyper-parameters and flags
def test_tensor_lr_gives_the_float_lr_trajectory_and_follows_a_scheduler(optimizer_cls):
    a, _ = run(optimizer_cls, 4, lr=0.05)
    b, opt = run(optimizer_cls, 4, lr=torch.tensor(0.05))
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-7)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    scheduler.step()
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) and float(opt.param_groups[0]["lr"]) == pytest.approx(0.025)
    train_steps(b, opt, 1)


@pytest.mark.parametrize("bad", [torch.tensor([0.1, 0.2]), torch.tensor(-0.1), torch.tensor(float("nan"))])
def test_bad_tensor_lr_is_refused_naming_lr(bad):
    with pytest.raises(ValueError, match="invalid lr=.*one-element Tensor"):
        ConstrainedSGLD(small_mlp().parameters(), lr=bad)


def test_torch_default_flags_are_accepted(optimizer_cls):
    model = small_mlp()
    opt = optimizer_cls(model.parameters(), lr=0.01, foreach=None, maximize=False, differentiable=False, capturable=False, fused=None)
    assert opt.param_groups[0]["foreach"] is None and opt.param_groups[0]["maximize"] is False
    optimizer_cls(model.parameters(), lr=0.01, fused=False)


@pytest.mark.parametrize("flag, says", [("differentiable", "autograd"), ("capturable", "sync_free=True"), ("fused", "no fused kernel")])
def test_unsupported_torch_flags_are_refused_saying_why(optimizer_cls, flag, says):
    with pytest.raises(ValueError, match=f"{flag}=True is not supported: .*{says}"):
        optimizer_cls(small_mlp().parameters(), lr=0.01, **{flag: True})


def test_maximize_ascends_like_torch_sgd():
    for ours, theirs in (
        (dict(cls=ConstrainedSGLD, lr=0.05), dict(lr=0.05)),
        (dict(cls=ConstrainedUnderdampedSGLD, lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9)),
    ):
        cls = ours.pop("cls")
        a, b = small_mlp(), small_mlp()
        train_steps(a, cls(a.parameters(), maximize=True, **ours), 3)
        train_steps(b, torch.optim.SGD(b.parameters(), maximize=True, **theirs), 3)
        for x, y in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- state_dict: torch's two keys
def test_state_dict_has_torchs_two_keys_only(optimizer_cls):
    _, opt = run(optimizer_cls, 2)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    first = sd["param_groups"][0]
    assert {"rng", "scheme", "constraint", "tangent_version"} <= set(first)
    assert first["scheme"] == optimizer_cls.__name__


def test_sgld_keeps_no_empty_state_entries():
    model = small_mlp()
    opt = ConstrainedSGLD(model.named_parameters(), constraints={"2.weight": ("sphere", {"radius": 1.0})}, lr=0.05, temperature=1e-3)
    train_steps(model, opt, 2)
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}  # as torch.optim.SGD without momentum
    circle = ConstrainedSGLD(model.named_parameters(), constraints={"2.weight": ("circle", {"radius": 1.0})}, lr=0.05)
    train_steps(model, circle, 1)
    assert [list(s) for s in circle.state.values()] == [["aux"]]  # the set's own state only


def test_a_resumed_state_dict_continues_bit_for_bit_through_a_plain_copy_of_its_two_keys(optimizer_cls):
    """What a tool that keeps only ``state`` and ``param_groups`` does: the noise stream goes on."""
    model, opt = run(optimizer_cls, 3)
    sd = copy.deepcopy(opt.state_dict())
    kept = {"state": sd["state"], "param_groups": sd["param_groups"]}
    twin, resumed = twin_of(optimizer_cls, model)
    resumed.load_state_dict(kept)
    assert_same_continuation(model, opt, twin, resumed, 3, seed=7)


def test_dcp_round_trip_of_a_tempered_run_resumes_bit_for_bit(optimizer_cls, tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

    # ConstrainedSGLD keeps state only for the circle's weights (as torch.optim.SGD without momentum
    # keeps none): DCP's strict load wants an entry for every parameter once any has one, as with
    # torch's Adam and a parameter that never had a gradient, so that case loads with strict=False
    options = StateDictOptions(strict=optimizer_cls is not ConstrainedSGLD)
    model, opt = run(optimizer_cls, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group": DCP runs in one process
        dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(tmp_path / "ckpt"))
        twin, resumed = twin_of(optimizer_cls, model)
        target = {"optim": get_optimizer_state_dict(twin, resumed)}
        dcp.load(target, checkpoint_id=str(tmp_path / "ckpt"))
        set_optimizer_state_dict(twin, resumed, target["optim"], options=options)
    assert_same_continuation(model, opt, twin, resumed, 4, seed=11)


def test_checkpoint_of_the_earlier_layout_still_loads_bit_for_bit(optimizer_cls):
    """Before 2026-12, ``rng``, ``scheme`` and ``tangent_versions`` were top-level keys."""
    model, opt = run(optimizer_cls, 3)
    sd = copy.deepcopy(opt.state_dict())
    groups = sd["param_groups"]
    old = {
        "state": sd["state"],
        "param_groups": groups,
        "rng": groups[0].pop("rng"),
        "scheme": [g.pop("scheme") for g in groups][0],
        "tangent_versions": [g.pop("tangent_version") for g in groups],
    }
    twin, resumed = twin_of(optimizer_cls, model)
    resumed.load_state_dict(old)
    assert_same_continuation(model, opt, twin, resumed, 3, seed=3)


# ---------------------------------------------------------------- hooks
def test_state_dict_post_hook_sees_the_dict_the_caller_gets(optimizer_cls):
    _, opt = run(optimizer_cls, 1)
    seen = []

    def hook(optimizer, sd):
        seen.append(sd)
        assert "rng" in sd["param_groups"][0] and isinstance(sd["param_groups"][-1]["constraint"], (list, type(None)))
        sd["param_groups"][0]["note"] = "added by a hook"

    opt.register_state_dict_post_hook(hook)
    sd = opt.state_dict()
    assert seen[0] is sd and sd["param_groups"][0]["note"] == "added by a hook"


def test_load_pre_hook_can_upgrade_a_checkpoint_before_it_is_validated(optimizer_cls):
    """A pre-hook runs before the checks, so it can repair what they would refuse."""
    model, opt = run(optimizer_cls, 2)
    sd = copy.deepcopy(opt.state_dict())
    for group in sd["param_groups"]:
        group["constraint_spec"] = group.pop("constraint")  # an older tool's name for the key
    fresh = build(optimizer_cls, small_mlp(), lr=0.05, temperature=1e-3)
    with pytest.raises(ValueError, match="constraint"):
        fresh.load_state_dict(copy.deepcopy(sd))
    calls = []

    def upgrade(optimizer, state_dict):
        calls.append("pre")
        for group in state_dict["param_groups"]:
            group["constraint"] = group.pop("constraint_spec")

    fresh.register_load_state_dict_pre_hook(upgrade)
    fresh.register_load_state_dict_post_hook(lambda optimizer: calls.append("post"))
    fresh.load_state_dict(sd)
    assert calls == ["pre", "post"]


def test_non_parameter_state_entries_are_tolerated(optimizer_cls):
    """torch keeps whatever else is in ``state`` (its hook tests put ``state["test"] = 1``)."""
    model, opt = run(optimizer_cls, 1)
    opt.state["test"] = 1
    sd = opt.state_dict()
    twin = small_mlp()
    fresh = build(optimizer_cls, twin, lr=0.05, temperature=1e-3)
    fresh.load_state_dict(sd)
    assert fresh.state["test"] == 1
    train_steps(twin, fresh, 1)


# ---------------------------------------------------------------- torch.compile'd models
def test_compiled_models_names_match_the_patterns(optimizer_cls):
    model = small_mlp()
    with torch.no_grad():
        Orthogonal().init_(model[2].weight)
    compiled = torch.compile(model)  # nothing is compiled until it is called
    names = [n for n, _ in compiled.named_parameters()]
    assert names[0].startswith("_orig_mod.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "pattern matches no parameter"
        opt = optimizer_cls(compiled.named_parameters(), constraints=CONSTRAINTS, lr=0.05)
    constrained = {p for g in opt.param_groups if g["constraint"] is not None for p in g["params"]}
    assert constrained == {model[2].weight, model[4].weight}
    assert "_orig_mod.2.weight" in [n for g in opt.param_groups for n in g.get("param_names", [])]


def test_a_repeated_group_packs_identically(optimizer_cls):
    """torch's test_state_dict_deterministic (#36831): a group that appears twice in
    ``param_groups`` packs to the same dict both times (the noise streams ride on the first group
    and on every repeat of it)."""
    model = small_mlp()
    opt = optimizer_cls(model.parameters(), lr=1e-2, temperature=1e-3, seed=0)
    train_steps(model, opt, 2)
    twin_model = small_mlp()
    twin = optimizer_cls(twin_model.parameters(), lr=1e-2, temperature=1e-3, seed=0)
    train_steps(twin_model, twin, 2)
    twin.param_groups.extend(twin.param_groups)
    packed, repeated = opt.state_dict()["param_groups"], twin.state_dict()["param_groups"]
    assert len(repeated) == 2 * len(packed)
    assert repeated[-1].keys() == packed[-1].keys()
    for key in packed[-1]:
        if key != "rng":
            assert repeated[-1][key] == packed[-1][key], key
    assert repeated[0]["rng"]["base_seed"] == repeated[len(packed)]["rng"]["base_seed"]
    for key, state in packed[0]["rng"]["generators"].items():
        assert torch.equal(repeated[len(packed)]["rng"]["generators"][key], state)
