"""torch.compile of a training step that calls ``optim.step()`` runs and matches eager execution."""

import shutil

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD, Orthogonal


def step_eager_and_compiled(eager_model, eager_opt, compiled_model, compiled_opt, steps):
    """``steps`` steps of a 12-9-3 model's MSE loss, eagerly and with ``torch.compile(opt.step)``
    (inductor), on the same batch; then the parameters agree."""
    x, y = torch.randn(16, 12), torch.randn(16, 3)
    compiled_step = torch.compile(compiled_opt.step)
    for _ in range(steps):
        for model, step in ((eager_model, eager_opt.step), (compiled_model, compiled_step)):
            model.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            step()
    for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a, b)


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


@pytest.mark.parametrize("cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD])
def test_sync_free_step_compiles_as_one_graph(cls):
    # fullgraph=True fails on any graph break, and a host read (.item(), bool(tensor)) is one: the
    # sync-free step at temperature 0 traces whole. (At T > 0 the draw from the optimiser's own
    # torch.Generator is a graph break: dynamo does not trace generator arguments.)
    torch._dynamo.reset()  # nothing cached from other tests' compilations
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    with torch.no_grad():
        Orthogonal().init_(model[0].weight)
    constraints = {"0.weight": "orthogonal", "2.weight": ("circle", {"radius": 1.0}), "0.bias": "nonnegative"}
    with torch.no_grad():
        model[0].bias.abs_()
    opt = cls(model.named_parameters(), constraints=constraints, lr=0.05, seed=0, sync_free=True)
    x, y = torch.randn(16, 6), torch.randn(16, 2)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()  # states created eagerly
    step = torch.compile(opt.step, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        step()
    assert max(v.item() for v in opt.violations()) < 1e-5
    torch._dynamo.reset()

    # the default step reads the host (finite check, SHAKE's convergence test): not one graph
    opt = cls(model.named_parameters(), constraints=constraints, lr=0.05, seed=0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    with pytest.raises(Exception):
        torch.compile(opt.step, backend="aot_eager", fullgraph=True)()
    torch._dynamo.reset()


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("check_finite", [False, True])
def test_inductor_compiled_sync_free_step_matches_eager(check_finite):
    # what the speed benchmark's row 9 times: the whole step compiled by the default backend
    torch._dynamo.reset()

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
        constraints = {"0.weight": ("circle", {"radius": 0.3}), "2.weight": "nonnegative", "0.bias": ("box", {"lower": -0.1, "upper": 0.1})}
        with torch.no_grad():
            model[2].weight.abs_()
            model[0].bias.clamp_(-0.1, 0.1)
        opt = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints=constraints, lr=0.05, sync_free=True, check_finite=check_finite)
        return model, opt

    (eager_model, eager_opt), (compiled_model, compiled_opt) = build(), build()
    step_eager_and_compiled(eager_model, eager_opt, compiled_model, compiled_opt, steps=4)
    for a, b in zip(eager_opt.state.values(), compiled_opt.state.values()):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    assert max(v.item() for v in compiled_opt.violations()) < 1e-5
    torch._dynamo.reset()


@pytest.mark.parametrize("cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD])
def test_many_orthogonal_matrices_compile_without_recompiling_per_parameter(cls):
    """Twelve square matrices, each run alone on the CPU: a graph break inside the step's loops
    (a data-pointer comparison, the noise draw) made dynamo compile each helper call apart,
    guarded on each parameter, and fall back to eager past the recompile limit. Now the step
    compiles twice at most (before and after its states exist)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(12)])
    for layer in model:
        with torch.no_grad():
            Orthogonal().init_(layer.weight)
    opt = cls(model.named_parameters(), constraints={"*.weight": "orthogonal"}, lr=0.01, temperature=1e-4, seed=0, sync_free=True)
    step = torch.compile(opt.step, backend="aot_eager")
    x = torch.randn(8, 128)
    with torch._dynamo.config.patch(recompile_limit=3, fail_on_recompile_limit_hit=True):
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            step()
    assert max(v.item() for v in opt.violations()) < 1e-5
    torch._dynamo.reset()


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="inductor's CPU backend needs a C++ compiler")
def test_inductor_compiles_the_spheres_underdamped_step():
    """The documented compiled step (``torch.compile(opt.step)``, sync-free) on the sphere under the
    underdamped scheme: inductor's C++ backend failed on it (KeyError 'buf..'); its list operations
    now run eagerly inside the compiled step on the CPU, and the result equals the eager step's."""
    torch._dynamo.reset()

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
        opt = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints={"*.weight": ("sphere", {"radius": 1.0})},
                                         lr=0.05, temperature=1e-3, seed=0, sync_free=True)
        return model, opt

    with pytest.warns(UserWarning, match="projected"):
        (eager_model, eager_opt), (compiled_model, compiled_opt) = build(), build()
    step_eager_and_compiled(eager_model, eager_opt, compiled_model, compiled_opt, steps=3)
    torch._dynamo.reset()
