"""torch.compile of a training step that calls ``optim.step()`` runs and matches eager execution."""

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD, Orthogonal


@pytest.mark.parametrize("cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD])
def test_compiled_training_step_runs_and_matches_eager(cls):
    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        with torch.no_grad():
            Orthogonal().init_(model[0].weight)
        opt = cls(model.named_parameters(), constraints={"0.weight": "orthogonal", "2.weight": ("circle", {"radius": 1.0})},
                  lr=0.05, temperature=1e-3, seed=0)
        return model, opt

    x, y = torch.randn(16, 6), torch.randn(16, 2)

    def make_step(model, opt):
        def step():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return step

    eager_model, eager_opt = build()
    compiled_model, compiled_opt = build()
    eager_step = make_step(eager_model, eager_opt)
    # aot_eager: traces through dynamo and AOTAutograd without needing a C++ compiler
    compiled_step = torch.compile(make_step(compiled_model, compiled_opt), backend="aot_eager")
    for _ in range(3):
        eager_step()
        compiled_step()
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b)
    assert max(v.item() for v in compiled_opt.violations()) < 1e-5
