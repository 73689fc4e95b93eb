"""Constraints that travel with the parameter (constrained_sgld.constrain): bare ``parameters()``,
as frameworks pass them, keep the sets; the model's state_dict is unchanged; resume is bit for bit."""

import copy
import io

import pytest
import torch

import constrained_sgld as cs
from constrained_sgld.tags import constraint_tag

from .conftest import small_mlp, train_steps

pytestmark = pytest.mark.filterwarnings("ignore:projected onto their constraint sets")


@pytest.mark.parametrize("cls", [cs.ConstrainedSGLD, cs.ConstrainedUnderdampedSGLD, cs.ConstrainedSGNHT])
def test_bare_parameters_keep_the_tagged_sets(cls):
    model = small_mlp()
    cs.constrain(model, {"0.weight": "orthogonal", "2.weight": ("sphere", {"radius": 2.0})})
    opt = cls(model.parameters(), lr=1e-2, temperature=1e-4, seed=0)
    named = {id(p): n for n, p in model.named_parameters()}
    constraints = {named[id(p)]: g["constraint"] for g in opt.param_groups for p in g["params"]}
    assert constraints["0.weight"] == cs.Orthogonal() and constraints["2.weight"] == cs.Sphere(radius=2.0)
    assert constraints["0.bias"] is None
    train_steps(model, opt, 5)
    assert max(float(v) for v in opt.violations()) < 1e-5
    torch.testing.assert_close(model[2].weight.detach().norm(dim=1), torch.full((model[2].weight.shape[0],), 2.0))


def test_framework_style_groups_of_bare_tensors_keep_the_sets_and_name_them_in_errors():
    """Hugging Face's Trainer passes [{"params": [...], "weight_decay": ...}, ...] to optimizer_cls."""
    model = small_mlp()
    cs.constrain(model, {"*.weight": "orthogonal"})
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = cs.ConstrainedUnderdampedSGLD([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-2)
    assert all(g["constraint"] == cs.Orthogonal() for g in opt.param_groups if g["weight_decay"] == 0.01)
    model[0].weight.grad = torch.full_like(model[0].weight, float("nan"))
    with pytest.raises(FloatingPointError, match="'0.weight'"):  # the tag's name, not params[0]
        opt.step()


def test_mapping_and_group_key_win_over_tags_and_patterns_match_tag_names():
    model = small_mlp()
    cs.constrain(model, {"0.weight": "orthogonal", "2.weight": "sphere"})
    opt = cs.ConstrainedSGLD(model.parameters(), lr=1e-2, constraints={"2.weight": ("ball", {"radius": 3.0}), "0.weight": None})
    by_name = {g["constraint"].name if g["constraint"] is not None else None for g in opt.param_groups}
    assert by_name == {"ball", None}
    keyed = cs.ConstrainedSGLD([{"params": [model[0].weight], "constraint": "nonnegative"}], lr=1e-2)
    assert keyed.param_groups[0]["constraint"] == cs.NonNegative()


def test_tags_leave_the_models_state_dict_alone_and_a_copy_is_tagged_again():
    model = small_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cs.constrain(model, {"0.weight": "orthogonal"})
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    twin = copy.deepcopy(model)  # torch copies a Parameter's data, not its attributes (documented)
    assert constraint_tag(twin[0].weight) is None
    cs.constrain(twin, {"0.weight": "orthogonal"})
    cs.unconstrain(model)
    assert constraint_tag(model[0].weight) is None and constraint_tag(twin[0].weight).constraint == cs.Orthogonal()


def test_resume_from_bare_parameters_is_bit_for_bit():
    def build(seed_model):
        model = small_mlp(seed=seed_model)
        cs.constrain(model, {"0.weight": "orthogonal", "2.weight": "sphere"})
        return model, cs.ConstrainedUnderdampedSGLD(model.parameters(), lr=1e-2, temperature=1e-4, seed=3)

    model, opt = build(0)
    train_steps(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    train_steps(model, opt, 4, seed=1)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin, twin_opt = build(1)
    twin.load_state_dict(saved["model"])
    twin_opt.load_state_dict(saved["optim"])
    train_steps(twin, twin_opt, 4, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_constrain_checks_before_tagging_anything():
    model = small_mlp()
    with pytest.raises(ValueError, match=r"\['3.weight'\] match no parameter"):
        cs.constrain(model, {"0.weight": "orthogonal", "3.weight": "sphere"})
    with pytest.raises(ValueError, match="'0.bias'.*cannot be 'orthogonal'"):
        cs.constrain(model, {"0.weight": "orthogonal", "0.bias": "orthogonal"})
    assert constraint_tag(model[0].weight) is None


def test_untagged_bare_tensors_with_patterns_say_how_to_tag():
    model = small_mlp()
    with pytest.raises(ValueError, match=r"constrained_sgld.constrain\(model"):
        cs.ConstrainedSGLD(model.parameters(), lr=1e-2, constraints={"0.weight": "orthogonal"})


def test_in_out_layers_are_known_by_name_and_a_wrong_axis_is_refused():
    """A module whose class is ``transformers``' ``Conv1D`` (matched by name: no import) stores
    ``(in, out)``; `constrain` refuses a row split or per-row norms there, naming the spec to pass,
    and tags nothing. Where the layout does not matter (one square block) it is accepted."""

    class Conv1D(torch.nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(n_in, n_out))

    Conv1D.__module__ = "transformers.pytorch_utils"
    model = torch.nn.Sequential(Conv1D(6, 18), torch.nn.Linear(6, 18), Conv1D(6, 6))
    with pytest.raises(ValueError, match=r"'0.weight'.*transformers.pytorch_utils.Conv1D, stored as \(in, out\).*'blocks': 3, 'transposed': True"):
        cs.constrain(model, {"1.weight": "sphere", "0.weight": ("orthogonal", {"blocks": 3})})
    for spec in ("sphere", ("ball", {"radius": 2.0})):
        with pytest.raises(ValueError, match=r"'0.weight'.*each input's weights.*'dim': 0"):
            cs.constrain(model, {"0.weight": spec})
    assert not any(constraint_tag(p) for p in model.parameters())
    cs.constrain(model, {"0.weight": ("orthogonal", {"blocks": 3, "transposed": True}), "1.weight": ("orthogonal", {"blocks": 3}), "2.weight": "orthogonal"})
    cs.constrain(model, {"0.weight": ("sphere", {"dim": 0}), "1.weight": "sphere"})  # Linear: rows are outputs
    # (name, parameter) pairs carry no modules: nothing to know, the set's own checks only
    cs.constrain(model.named_parameters(), {"0.weight": "sphere"})
