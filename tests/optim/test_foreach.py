"""The multi-tensor (foreach) path and the single-tensor path compute the same update for every set."""

import copy
import warnings

import pytest
import torch

from tests.conftest import CONSTRAINT_CASES, train_steps


@pytest.mark.parametrize("name", sorted(CONSTRAINT_CASES))
def test_foreach_matches_single_tensor(optimizer_cls, name):
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
    for m, foreach in ((model, True), (twin, False)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            opts.append(optimizer_cls(m.named_parameters(), constraints={"[24].weight": spec, "*.bias": None},
                                      lr=0.05, temperature=1e-3, weight_decay=1e-4, seed=0, foreach=foreach))
    for step in range(20):
        train_steps(model, opts[0], 1, seed=step)
        train_steps(twin, opts[1], 1, seed=step)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
