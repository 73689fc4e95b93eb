"""The spectral geometry (constraints/spectral.py): the matrix sign against torch's Muon and the SVD,
and the steepest direction on the Stiefel manifold against its optimality certificate (the dual
bound) and against the dual iteration."""

import pytest
import torch

from constrained_sgld.constraints.spectral import SpectralStep, dual_gap, msign_newton_schulz, msign_svd, stiefel_steepest


def _orthonormal(n, k, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=dtype))[0]


def _randn(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_newton_schulz_in_bfloat16_is_torch_muons_bit_for_bit(shape):
    muon = pytest.importorskip("torch.optim._muon")
    if not hasattr(muon, "_zeropower_via_newtonschulz"):
        pytest.skip("this torch has no Muon Newton-Schulz to compare with")
    x = _randn(*shape, seed=1, dtype=torch.float32)
    ours = msign_newton_schulz(x, 5, (muon.DEFAULT_A, muon.DEFAULT_B, muon.DEFAULT_C), muon.EPS, torch.bfloat16)
    theirs = muon._zeropower_via_newtonschulz(x, (muon.DEFAULT_A, muon.DEFAULT_B, muon.DEFAULT_C), 5, muon.EPS)
    assert torch.equal(ours, theirs)


def test_newton_schulz_batched_matches_one_by_one_and_approximates_the_polar_factor():
    x = _randn(3, 8, 5, seed=2)
    batched = msign_newton_schulz(x)
    single = torch.stack([msign_newton_schulz(m) for m in x])
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12)
    # Muon's quintic leaves singular values in about [0.7, 1.2] with the polar factor's vectors
    s = torch.linalg.svdvals(batched)
    assert 0.6 < float(s.min()) and float(s.max()) < 1.25
    cos = (batched * msign_svd(x)).sum(dim=(-2, -1)) / (torch.linalg.matrix_norm(batched) * torch.linalg.matrix_norm(msign_svd(x)))
    assert float(cos.min()) > 0.97


def test_svd_sign_is_semi_orthogonal_and_zero_on_a_null_space():
    x = _randn(7, 4, seed=3)
    q = msign_svd(x)
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=x.dtype))
    assert torch.equal(msign_svd(torch.zeros(3, 3, dtype=torch.float64)), torch.zeros(3, 3, dtype=torch.float64))
    rank2 = _randn(5, 2, seed=4) @ _randn(2, 5, seed=5)
    assert int((torch.linalg.svdvals(msign_svd(rank2)) > 0.5).sum()) == 2


@pytest.mark.parametrize("n", [6, 7])  # 7: the skew matrix is singular (odd dimension)
def test_square_closed_form_attains_the_dual_bound(n):
    """For square W the direction is the optimum: it is tangent, of spectral norm 1, and its value
    <M, A> equals the nuclear norm of the tangent part of M (the dual's value there), the largest
    that any tangent direction of unit spectral norm can reach."""
    w, m = _orthonormal(n, n, seed=n), _randn(n, n, seed=10 + n)
    a = stiefel_steepest(w, m, msign_svd)
    torch.testing.assert_close(w.T @ a + a.T @ w, torch.zeros(n, n, dtype=w.dtype), atol=1e-12, rtol=0)
    assert abs(float(torch.linalg.matrix_norm(a, ord=2)) - 1.0) < 1e-12
    primal, bound = dual_gap(w, m, a)
    assert abs(float(primal / bound) - 1.0) < 1e-12


def test_the_dual_iteration_from_zero_converges_to_the_closed_form():
    w, m = _orthonormal(6, 6, seed=0), _randn(6, 6, seed=1)
    closed = stiefel_steepest(w, m, msign_svd)
    iterated = stiefel_steepest(w, m, msign_svd, dual_steps=300, dual_lr=0.3, lam=torch.zeros(6, 6, dtype=w.dtype))
    torch.testing.assert_close(iterated, closed, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n, k", [(64, 32), (96, 32), (48, 40)])
def test_tall_steepest_beats_the_projected_sign_against_the_bound(n, k):
    """On tall W the dual descent (its default 2 steps) improves on msign(T_W M), whose value is
    the starting point; neither exceeds the bound."""
    w, m = _orthonormal(n, k, seed=n + k), _randn(n, k, seed=n * k)
    tangent = m - w @ (0.5 * (w.T @ m + m.T @ w))
    start = dual_gap(w, m, msign_svd(tangent))
    steepest = dual_gap(w, m, stiefel_steepest(w, m, msign_svd))
    assert float(start[0]) <= float(steepest[0]) <= float(steepest[1]) * (1 + 1e-12)


def test_shape_factors_are_muons():
    assert SpectralStep(adjust_lr="original").scale(8, 2) == 2.0
    assert SpectralStep(adjust_lr="original").scale(2, 8) == 1.0
    assert SpectralStep(adjust_lr="match_rms_adamw").scale(4, 100) == pytest.approx(2.0)
    assert SpectralStep(adjust_lr=None).scale(8, 2) == 1.0
