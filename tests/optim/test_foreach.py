"""The optimisers' list-level path (fused set operations, packed batches) computes the same update
as the per-tensor reference in tests/optim/reference.py, for every set."""

import copy
import warnings

import pytest
import torch

from tests.conftest import CONSTRAINT_CASES, train_steps
from tests.optim.reference import REFERENCE


# RMSprop moves every entry by about lr whatever the gradient's scale, so its cases take lr / 100
# (lr itself moves the orthogonal matrices so far per step that the two paths' SHAKE iterations
# part at rounding level and the difference grows from there)
PRECONDITIONERS = pytest.mark.parametrize("preconditioner", [None, {"alpha": 0.9, "eps": 1e-3}], ids=["unit-mass", "rmsprop"])


@PRECONDITIONERS
@pytest.mark.parametrize("temperature, lr", [(1e-3, 0.05), (0.0, 0.5)], ids=["noisy", "T0-long-steps"])
@pytest.mark.parametrize("name", sorted(CONSTRAINT_CASES))
def test_list_level_path_matches_reference(optimizer_cls, name, temperature, lr, preconditioner):
    # at T = 0 several sets fuse A O A into one move (a straight flight, one geodesic, one
    # rotation); the long steps make the walls and the ball's sphere be hit
    spec, _ = CONSTRAINT_CASES[name]
    spec = spec if name != "orthogonal-wide-conv" else "orthogonal"
    # two convs of the same shape, so the orthogonal path really stacks matrices into one batch
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).double()
    twin = copy.deepcopy(model)
    opts = []
    for m, cls in ((model, optimizer_cls), (twin, REFERENCE[optimizer_cls])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            opts.append(cls(m.named_parameters(), constraints={"[24].weight": spec, "*.bias": None},
                            lr=lr if preconditioner is None else lr / 100, temperature=temperature, weight_decay=1e-4, seed=0,
                            preconditioner=preconditioner))
    for step in range(20):
        train_steps(model, opts[0], 1, seed=step)
        train_steps(twin, opts[1], 1, seed=step)
        # one step from the same state gives the same parameters and the same optimiser state
        # (momenta, masses, thermostat); then the twin restarts from the model's state, so that a
        # chaotic case (the ball's billiard under RMSprop's large noise bounces rows off the wall
        # many times a step, and rounding differences grow tenfold a step) compares updates, not
        # two trajectories that rounding has parted
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        ours, theirs = opts[0].state_dict(), opts[1].state_dict()
        for i, state in ours["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    torch.testing.assert_close(value, theirs["state"][i][key], rtol=1e-9, atol=1e-11, msg=lambda m: f"state {key!r}: {m}")
        with torch.no_grad():
            for a, b in zip(model.parameters(), twin.parameters()):
                b.copy_(a)
        for group in ours["param_groups"]:
            group.pop("scheme")  # the reference is another class
        opts[1].load_state_dict(copy.deepcopy(ours))


@PRECONDITIONERS
def test_padded_orthogonal_batches_match_reference(optimizer_cls, preconditioner):
    """Small tall matrices with the same column count run as one zero-padded batch (tall, wide and
    conv shapes mixed), square ones apart; the result equals the per-tensor path and stays on the set."""
    from constrained_sgld import Orthogonal

    shapes = [(20, 4), (9, 4), (4, 30), (4, 2, 3, 3), (6, 6), (4, 4)]
    torch.manual_seed(1)
    start = []
    for s in shapes:
        t = torch.empty(s, dtype=torch.float64)
        Orthogonal().init_(t)
        start.append(t)
    results = []
    for cls in (optimizer_cls, REFERENCE[optimizer_cls]):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = cls(params, constraints={p: "orthogonal" for p in params}, lr=0.05 if preconditioner is None else 5e-4, temperature=1e-3, seed=3, preconditioner=preconditioner)
        # k = 4 (four tall shapes padded together), and the square 6 x 6 and 4 x 4 on their own
        # (square matrices keep their momenta in the body frame: never in a tall batch)
        assert len(Orthogonal()._buckets(params)) == 3
        for step in range(10):
            g = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            opt.step()
        assert max(v.item() for v in opt.violations()) < 1e-10
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_large_square_matrices_run_one_by_one_on_the_cpu():
    """On the CPU a square matrix of at least ``Orthogonal.ALONE`` entries is its own batch (no
    packing copies: one such product keeps the BLAS busy); smaller ones still share batches."""
    from constrained_sgld import Orthogonal

    c = Orthogonal()
    big = [torch.empty(128, 128) for _ in range(3)]
    small = [torch.empty(8, 8) for _ in range(3)]
    assert sorted(len(idx) for idx, _ in c._buckets(big + small)) == [1, 1, 1, 3]
    assert c.packing(big) is None
