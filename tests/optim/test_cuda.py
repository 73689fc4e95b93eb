"""CUDA: both optimisers on the GPU, and parameters on two devices in one optimiser (skipped without CUDA)."""

import io
import warnings

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD
from tests.conftest import batch_for, small_convnet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_training_feasible_and_resumable(cls, dtype):
    model = small_convnet(dtype=dtype).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = cls(model.named_parameters(), constraints={"2.weight": "orthogonal", "0.weight": "sphere", "6.weight": ("circle", {"radius": 0.3}), "*.bias": ("box", {})},
                  lr=0.05, temperature=1e-3, seed=0)
    x, y = (t.cuda() for t in batch_for(model.cpu()))
    model.cuda()
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert max(v.item() for v in opt.violations()) < 1e-5
    assert all(p.is_cuda and p.dtype == dtype for p in model.parameters())
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt.load_state_dict(torch.load(buf))
    assert "cuda:0" in opt._generators


@cuda
def test_parameters_on_two_devices():
    a = torch.nn.Parameter(torch.randn(8, 4))
    b = torch.nn.Parameter(torch.randn(8, 4, device="cuda"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = ConstrainedUnderdampedSGLD([{"params": [a, b], "constraint": "orthogonal"}], lr=0.05, temperature=1e-3, seed=0)
    for _ in range(10):
        a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
        opt.step()
    assert a.device.type == "cpu" and b.is_cuda
    assert max(v.item() for v in opt.violations()) < 1e-5
    assert {"cpu", "cuda:0"} <= set(opt._generators)
