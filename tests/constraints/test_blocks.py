"""The orthogonal set's ``blocks`` option: a fused projection (rows stacked from several matrices,
as attention's ``(3d, d)`` query-key-value weight) constrained block by block."""

import pytest
import torch

import constrained_sgld as cs
from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD

SCHEMES = [(ConstrainedSGLD, {}), (ConstrainedUnderdampedSGLD, {"momentum": 0.9}), (ConstrainedSGNHT, {"momentum": 0.9})]


def _block_gram_errors(w, blocks):
    out = []
    for b in w.reshape(blocks, w.shape[0] // blocks, -1):
        gram = b @ b.T if b.shape[0] <= b.shape[1] else b.T @ b
        out.append((gram - torch.eye(gram.shape[0], dtype=w.dtype)).abs().max().item())
    return out


@pytest.mark.parametrize("shape", [(12, 4), (6, 8), (12, 4, 2, 2)], ids=["square-blocks", "wide-blocks", "conv"])
def test_each_block_is_orthogonal(shape):
    c = cs.Orthogonal(blocks=3)
    w = c.project(torch.randn(*shape, dtype=torch.float64))
    assert max(_block_gram_errors(w, 3)) < 1e-12
    assert c.violation(w) < 1e-12
    started = c.init_(torch.empty(*shape, dtype=torch.float64))
    assert max(_block_gram_errors(started, 3)) < 1e-12


def test_blocks_differ_from_one_tall_matrix():
    # three orthogonal d x d blocks stacked: the (3d, d) matrix has W^T W = 3 I, not I
    w = cs.Orthogonal(blocks=3).init_(torch.empty(12, 4, dtype=torch.float64))
    assert torch.allclose(w.T @ w, 3 * torch.eye(4, dtype=torch.float64))
    assert cs.Orthogonal().violation(w) > 1.0
    assert cs.Orthogonal(blocks=3).violation(cs.Orthogonal().project(w)) > 0.1


def test_tangent_dim_and_preconditioner_blocks():
    c = cs.Orthogonal(blocks=3)
    w = c.init_(torch.empty(12, 4))
    assert c.tangent_dim(w) == 3 * (4 * 3 // 2)  # three copies of so(4)
    values = torch.arange(48.0).reshape(12, 4)
    mean = c.block_mean(w, values)
    assert mean.shape == (12, 1)  # broadcastable to the parameter, one value per block
    expected = values.reshape(3, 16).mean(1).repeat_interleave(4)
    assert torch.equal(mean.flatten(), expected)


def test_bad_blocks_name_the_parameter_and_the_option():
    with pytest.raises(ValueError, match="blocks must be an int >= 1"):
        cs.Orthogonal(blocks=0)
    with pytest.raises(ValueError, match="blocks"):
        cs.Orthogonal(blocks=True)
    w = torch.nn.Parameter(torch.randn(10, 4))
    with pytest.raises(ValueError, match="'attn.weight'.*blocks=3"):
        ConstrainedSGLD([("attn.weight", w)], constraints={"attn.weight": ("orthogonal", {"blocks": 3})}, lr=0.1)
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("scheme,options", SCHEMES, ids=["od", "ud", "nht"])
@pytest.mark.parametrize("preconditioner", [None, "rmsprop"])
def test_fused_steps_equal_the_batched_matrices(scheme, options, preconditioner):
    """A (3d, d) weight with blocks=3 moves exactly as the (3, d, d) batch of its blocks does
    (the same noise, drawn in the same memory order): the option is a view, not new dynamics. Two
    fused weights and a plain square one share the group, so packing is exercised too."""
    torch.manual_seed(0)
    shapes = [(12, 4), (12, 4), (4, 4)]
    fused = [torch.nn.Parameter(cs.Orthogonal(blocks=3 if s[0] == 12 else 1).init_(torch.empty(*s, dtype=torch.float64))) for s in shapes]
    batched = [torch.nn.Parameter(p.detach().reshape(3, 4, 4).clone() if p.shape[0] == 12 else p.detach().clone()) for p in fused]
    specs_fused = {f"w{i}": ("orthogonal", {"blocks": 3}) if s[0] == 12 else "orthogonal" for i, s in enumerate(shapes)}
    specs_batched = {f"w{i}": ("orthogonal", {"batch_dims": 1}) if s[0] == 12 else "orthogonal" for i, s in enumerate(shapes)}
    kw = dict(lr=0.05, temperature=0.01, seed=1, preconditioner=preconditioner, **options)
    opt_f = scheme([(f"w{i}", p) for i, p in enumerate(fused)], constraints=specs_fused, **kw)
    opt_b = scheme([(f"w{i}", p) for i, p in enumerate(batched)], constraints=specs_batched, **kw)
    for _ in range(15):
        for f, b in zip(fused, batched):
            g = torch.randn(f.shape, dtype=torch.float64)
            f.grad, b.grad = g.clone(), g.reshape(b.shape).clone()
        opt_f.step()
        opt_b.step()
    for f, b in zip(fused, batched):
        assert torch.equal(f.detach().reshape(b.shape), b.detach())
        assert max(_block_gram_errors(f.detach().reshape(-1, 4), f.shape[0] // 4)) < 1e-10


def test_state_dict_keeps_the_blocks():
    w = torch.nn.Parameter(cs.Orthogonal(blocks=3).init_(torch.empty(12, 4)))
    opt = ConstrainedUnderdampedSGLD([("qkv", w)], constraints={"qkv": ("orthogonal", {"blocks": 3})}, lr=0.1, momentum=0.9)
    group = opt.state_dict()["param_groups"][0]
    assert group["constraint"] == ["orthogonal", {"blocks": 3}]
    fresh = ConstrainedUnderdampedSGLD([("qkv", torch.nn.Parameter(w.detach().clone()))], constraints={"qkv": ("orthogonal", {"blocks": 3})}, lr=0.1, momentum=0.9)
    fresh.load_state_dict(opt.state_dict())
