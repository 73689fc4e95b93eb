"""Weight layouts: ``nn.Linear`` stores ``(out, in)``, Hugging Face's ``Conv1D`` (GPT-2) ``(in, out)``.
With ``transposed=True`` the orthogonal set's ``blocks`` split the outputs of an ``(in, out)``
weight, so that GPT-2's query, key and value are the blocks; a split along the wrong axis is
refused (shapes that do not divide) or warned about (wide blocks), never silent."""

import warnings

import pytest
import torch

import constrained_sgld as cs
from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD

pytestmark = pytest.mark.filterwarnings("ignore:projected onto their constraint sets")


class Conv1D(torch.nn.Module):
    """Hugging Face's GPT-2 ``Conv1D`` (``y = x W + b``, ``W`` of shape ``(in, out)``), as a stand-in."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = torch.nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


def _q_k_v_errors(w, d):
    """How far each of GPT-2's Q, K, V column blocks of an ``(d, 3d)`` weight is from orthogonal."""
    return [(b.T @ b - torch.eye(d, dtype=w.dtype)).abs().max().item() for b in w.detach().split(d, dim=1)]


SCHEMES = [(ConstrainedSGLD, {}), (ConstrainedUnderdampedSGLD, {"momentum": 0.9}), (ConstrainedSGNHT, {"momentum": 0.9})]


@pytest.mark.parametrize("d", [8, 12])  # 12: where a row split of (12, 36) into 3 would also divide
@pytest.mark.parametrize("cls, kwargs", SCHEMES, ids=["od", "ud", "nht"])
def test_gpt2_c_attn_keeps_query_key_and_value_orthogonal(cls, kwargs, d):
    torch.manual_seed(0)
    layer = Conv1D(3 * d, d)
    opt = cls(layer.named_parameters(), lr=1e-3, temperature=1e-4, seed=0, preconditioner="rmsprop",
              constraints={"weight": ("orthogonal", {"blocks": 3, "transposed": True})}, **kwargs)
    assert max(_q_k_v_errors(layer.weight, d)) < 1e-5  # projected at construction, per block
    for _ in range(10):
        opt.zero_grad()
        layer(torch.randn(16, d)).pow(2).mean().backward()
        opt.step()
    assert max(_q_k_v_errors(layer.weight, d)) < 1e-5
    assert max(float(v) for v in opt.violations()) < 1e-5
    # the preconditioner's blocks are Q, K and V: one mass per column block
    mass = opt.state[layer.weight]["mass"]
    assert mass.shape == (1, 3 * d) and all(len(set(m.tolist())) == 1 for m in mass.reshape(3, d))


@pytest.mark.parametrize("variant", ["project", "steepest"])
def test_the_spectral_step_on_a_transposed_layout(variant):
    torch.manual_seed(1)
    layer = Conv1D(24, 8)
    opt = ConstrainedSGLD(
        [{"params": [("weight", layer.weight)], "preconditioner": {"kind": "spectral", "variant": variant}},
         {"params": [("bias", layer.bias)], "preconditioner": "adam"}],
        lr=0.05, constraints={"weight": ("orthogonal", {"blocks": 3, "transposed": True})})
    for _ in range(10):
        opt.zero_grad()
        layer(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()
    assert max(_q_k_v_errors(layer.weight, 8)) < 1e-5


def test_transposed_is_the_transpose_of_the_linear_layout():
    """Every set operation on an (in, out) weight with transposed=True is the (out, in) one on its transpose."""
    torch.manual_seed(2)
    linear, conv1d = cs.Orthogonal(blocks=3), cs.Orthogonal(blocks=3, transposed=True)
    w = torch.randn(18, 6, dtype=torch.float64)
    v = torch.randn(18, 6, dtype=torch.float64)
    torch.testing.assert_close(conv1d.project(w.T), linear.project(w).T)
    x = linear.project(w)
    torch.testing.assert_close(conv1d.tangent_project(x.T, v.T), linear.tangent_project(x, v).T)
    torch.testing.assert_close(conv1d.violation(x.T), linear.violation(x))
    torch.testing.assert_close(conv1d.block_mean(x.T, v.T * v.T), linear.block_mean(x, v * v).T)
    assert conv1d.tangent_dim(x.T) == linear.tangent_dim(x)


def test_a_split_that_does_not_divide_names_the_layout():
    w = torch.nn.Parameter(torch.randn(64, 192))  # GPT-2's c_attn at n_embd 64: (d, 3d)
    with pytest.raises(ValueError, match=r"along its rows.*needs transposed=True"):
        ConstrainedSGLD([("c_attn.weight", w)], constraints={"c_attn.weight": ("orthogonal", {"blocks": 3})})


def test_a_split_into_wide_blocks_is_warned_about_not_silent():
    """At n_embd 96 a row split of (96, 288) divides; its blocks are wide, which a fused
    projection's never are: warned, naming the option."""
    w = torch.nn.Parameter(torch.randn(96, 288))
    with pytest.warns(UserWarning, match=r"wide 32 x 288 blocks.*pass transposed=True"):
        ConstrainedSGLD([("c_attn.weight", w)], constraints={"c_attn.weight": ("orthogonal", {"blocks": 3})})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        square = torch.nn.Parameter(cs.Orthogonal(blocks=3, transposed=True).init_(torch.empty(96, 288)))
        ConstrainedSGLD([("c_attn.weight", square)], constraints={"c_attn.weight": ("orthogonal", {"blocks": 3, "transposed": True})})


def test_transposed_needs_a_matrix():
    with pytest.raises(ValueError, match="transposed=True takes a matrix"):
        ConstrainedSGLD([("conv.weight", torch.nn.Parameter(torch.randn(4, 2, 3, 3)))], constraints={"conv.weight": ("orthogonal", {"transposed": True})})
    with pytest.raises(ValueError, match="transposed must be True or False"):
        cs.Orthogonal(transposed="yes")


def test_the_sphere_on_output_units_of_an_in_out_weight_is_dim_0():
    """Each output unit of a Conv1D is a column: ``("sphere", {"dim": 0})`` normalises it."""
    layer = Conv1D(12, 8)
    ConstrainedSGLD(layer.named_parameters(), lr=1e-2, constraints={"weight": ("sphere", {"dim": 0})})
    torch.testing.assert_close(layer.weight.detach().norm(dim=0), torch.ones(12))
