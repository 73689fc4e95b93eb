"""docs/constraints.md's worked example: a user's set with only the three set operations runs under
both schemes, and its fast path (an override in the set alone) computes the reference's update."""

import torch

from constrained_sgld import Constraint, register_constraint
from tests.optim.reference import REFERENCE


@register_constraint("simplex_rows_doc_example")
class SimplexRows(Constraint):
    is_inequality = True

    def project(self, p):
        u, _ = torch.sort(p, dim=-1, descending=True)
        css = u.cumsum(-1) - 1
        k = torch.arange(1, p.shape[-1] + 1, device=p.device, dtype=p.dtype)
        rho = ((u - css / k) > 0).sum(-1, keepdim=True)
        theta = css.gather(-1, rho - 1) / rho
        return (p - theta).clamp_min(0)

    def tangent_project(self, p, v):
        return v - v.mean(-1, keepdim=True)

    def violation(self, p):
        return torch.maximum((p.sum(-1) - 1).abs().amax(), (-p).clamp_min(0).amax())


class FastSimplexRows(SimplexRows):
    def tangent_force_many(self, params, forces, states):
        means = [f.mean(-1, keepdim=True) for f in forces]
        return torch._foreach_sub(forces, means)


def test_user_set_and_its_fast_path_match_the_reference(optimizer_cls):
    start = SimplexRows().project(torch.rand(5, 7, dtype=torch.float64))
    results = []
    for cls, spec in ((optimizer_cls, FastSimplexRows()), (REFERENCE[optimizer_cls], SimplexRows())):
        w = torch.nn.Parameter(start.clone())
        opt = cls([w], constraints={w: spec}, lr=0.01, temperature=1e-4, seed=0)
        for step in range(10):
            w.grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(step), dtype=w.dtype)
            opt.step()
        assert SimplexRows().violation(w) < 1e-10
        results.append(w.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)
