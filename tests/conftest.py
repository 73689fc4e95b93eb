from pathlib import Path

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD

OPTIMIZERS = {"od": ConstrainedSGLD, "ud": ConstrainedUnderdampedSGLD, "nht": ConstrainedSGNHT}

# (spec, a parameter shape it fits): every built-in set, on shapes a real model has
CONSTRAINT_CASES = {
    "orthogonal": ("orthogonal", (16, 8)),
    "orthogonal-wide-conv": ("orthogonal", (4, 3, 3, 3)),
    "sphere": (("sphere", {"radius": 2.0}), (6, 5)),
    "ball": (("ball", {"radius": 0.5}), (6, 5)),
    "circle": (("circle", {"radius": 0.1}), (6, 5)),
    "nonnegative": ("nonnegative", (6, 5)),
    "box": (("box", {"lower": -0.2, "upper": 0.3}), (6, 5)),
}


TESTS = Path(__file__).resolve().parent
#: the long tests, README's second test command (``python -m pytest -q -m long``, which CI runs too):
#: the statistical suite (stationary laws against closed forms, many chains) and the end-to-end runs
#: (examples and benchmark runs in subprocesses, multi-process DDP/FSDP, the real training libraries)
LONG = [TESTS / "statistical", TESTS / "integrations", TESTS / "distributed", TESTS / "test_examples.py"] + [
    TESTS / "benchmarks" / f"test_{name}.py" for name in ("resume", "long_memory", "posterior", "uncertainty", "cli")
]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the long tests ``long``: README's first test command leaves them to the second
    (pyproject's addopts)."""
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if any(path == long or long in path.parents for long in LONG):
            item.add_marker(pytest.mark.long)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global RNG state: the suite is deterministic."""
    torch.manual_seed(0)


@pytest.fixture(params=sorted(OPTIMIZERS))
def optimizer_cls(request):
    return OPTIMIZERS[request.param]


def small_mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    ).to(dtype)


def small_convnet(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).to(dtype)


def batch_for(model, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    first = next(model.parameters())
    if first.ndim == 4:
        x = torch.randn(n, first.shape[1], 6, 6, generator=g, dtype=first.dtype)
    else:
        x = torch.randn(n, first.shape[1], generator=g, dtype=first.dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def train_steps(model, optim, steps, seed=0):
    x, y = batch_for(model, seed=seed)
    loss = None
    for _ in range(steps):
        optim.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optim.step()
    return loss


def require_fashion_and_mnist():
    """Skip the calling test where Fashion-MNIST or the MNIST digits cannot be fetched."""
    from benchmarks import data

    try:
        data.load_mnist_digits()
        data.load_fashion_mnist()
    except data.DataUnavailable as e:
        pytest.skip(f"data unavailable here: {e}")


def mse_steps(model, opt, steps, seed=0, scheduler=None):
    """``steps`` full-batch steps of a mean-squared error on fixed data (8 inputs, 3 outputs, the
    model's dtype); ``scheduler`` stepped after each."""
    g = torch.Generator().manual_seed(seed)
    first = next(model.parameters())
    x = torch.randn(40, 8, generator=g, dtype=first.dtype)
    y = torch.randn(40, 3, generator=g, dtype=first.dtype)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
