"""Every constraint x both optimisers stays feasible (1e-5, float32) over 1,000 steps on real small models."""

import warnings

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD
from tests.conftest import batch_for, small_convnet, small_mlp

SPECS = {
    "orthogonal": "orthogonal",
    "sphere": ("sphere", {"radius": 2.0}),
    "ball": ("ball", {"radius": 0.5}),
    "circle": ("circle", {"radius": 0.1}),
    "nonnegative": "nonnegative",
    "box": ("box", {"lower": -0.2, "upper": 0.3}),
}


@pytest.mark.parametrize("model_fn", [small_mlp, small_convnet], ids=["mlp", "convnet"])
@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("optimizer_cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD, ConstrainedSGNHT], ids=["od", "ud", "nht"])
def test_feasible_over_1000_steps(optimizer_cls, name, model_fn):
    spec = SPECS[name]
    model = model_fn()
    bias_spec = "sphere" if name == "orthogonal" else spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = optimizer_cls(
            model.named_parameters(), constraints={"*.weight": spec, "*.bias": bias_spec}, lr=0.05, temperature=1e-3, seed=0
        )
    x, y = batch_for(model, n=64)
    worst = 0.0
    for step in range(1000):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if step % 50 == 49:
            worst = max(worst, max(v.item() for v in opt.violations()))
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert worst <= 1e-5, f"{name}: largest violation {worst:.3g}"
    assert torch.isfinite(loss)
