"""Construction in half precision: a bfloat16 or float16 weight off its set is projected (and
reported) as a float32 one is, and a weight already on it (the set's initialiser in that dtype) is
left alone; a few steps keep it on the set."""

import warnings

import pytest
import torch

from constrained_sgld import ConstrainedUnderdampedSGLD
from constrained_sgld.constraints.base import make_constraint
from tests.conftest import CONSTRAINT_CASES


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(CONSTRAINT_CASES))
def test_a_half_precision_weight_off_its_set_is_projected_and_reported(case, dtype):
    spec, shape = CONSTRAINT_CASES[case]
    constraint = make_constraint(spec)
    torch.manual_seed(0)
    w = torch.nn.Parameter((torch.randn(shape) * 3).to(dtype))  # off every set at this scale
    assert float(constraint.violation(w.detach().float())) > 0.05
    with pytest.warns(UserWarning, match="projected onto their constraint sets.*: w"):
        opt = ConstrainedUnderdampedSGLD([("w", w)], constraints={"w": spec}, lr=1e-3, temperature=1e-4, seed=0)
    assert float(constraint.violation(w.detach())) <= constraint.tolerance(dtype)
    for _ in range(5):
        w.grad = torch.randn(shape).to(dtype)
        opt.step()
    assert float(constraint.violation(w.detach())) <= constraint.tolerance(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(CONSTRAINT_CASES))
def test_a_half_precision_weight_on_its_set_is_not_moved(case, dtype):
    spec, shape = CONSTRAINT_CASES[case]
    constraint = make_constraint(spec)
    torch.manual_seed(1)
    w = torch.nn.Parameter(constraint.init_(torch.empty(shape, dtype=dtype)))
    before = w.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ConstrainedUnderdampedSGLD([("w", w)], constraints={"w": spec}, lr=1e-3, seed=0)
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tolerances_are_a_few_eps(dtype):
    eps = torch.finfo(dtype).eps
    for spec, _ in CONSTRAINT_CASES.values():
        assert make_constraint(spec).tolerance(dtype) <= 0.3  # was 1e3 eps: 1 (float16), 8 (bfloat16)
    assert make_constraint("sphere").tolerance(dtype) == max(8 * eps, 2.0**-5)
    assert make_constraint("sphere").tolerance(torch.float32) == 1e3 * torch.finfo(torch.float32).eps
