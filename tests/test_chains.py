"""ChainTrace and chain_diagnostics: the summaries reach ArviZ as (chain, draw) and come back as
the ESS and R-hat those chains have (checked on chains whose answer is known in closed form)."""

import math
import sys

import pytest
import torch

from constrained_sgld import ChainTrace, ConstrainedSGNHT, chain_diagnostics
from constrained_sgld.chains import to_arviz

pytest.importorskip("arviz")


def ar1(chains, draws, rho, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(chains, draws, dtype=torch.float64)
    x[:, 0] = torch.randn(chains, generator=g, dtype=torch.float64)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * torch.randn(chains, generator=g, dtype=torch.float64)
    return x + shift


def test_ess_and_rhat_of_chains_with_known_answers():
    chains, draws, rho = 4, 2000, 0.8
    x = ar1(chains, draws, rho)
    out = chain_diagnostics([{"x": row.tolist()} for row in x])["x"]
    expected = chains * draws * (1 - rho) / (1 + rho)  # the AR(1) chain's ESS
    assert 0.8 * expected < out["ess"] < 1.25 * expected, (out, expected)
    assert out["rhat"] < 1.01
    assert (out["chains"], out["draws"]) == (chains, draws)
    shifted = ar1(chains, draws, rho, seed=1)
    shifted[0] += 2.0  # one chain stuck elsewhere: R-hat must say so
    assert chain_diagnostics([{"x": row.tolist()} for row in shifted])["x"]["rhat"] > 1.1


def test_one_chain_has_an_ess_and_no_rhat():
    out = chain_diagnostics([{"x": ar1(1, 500, 0.0)[0].tolist()}])["x"]
    assert math.isnan(out["rhat"]) and out["ess"] > 250


def test_projections_are_shared_unit_directions():
    model = torch.nn.Linear(5, 3)
    a, b = ChainTrace(model, projections=3), ChainTrace(model, projections=3)
    a.record(loglik=torch.tensor(-1.5))
    b.record(loglik=-1.5)
    assert a.draws == b.draws  # the same directions in every chain (same projection_seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    a.record(loglik=-1.0)
    for i in range(3):
        first, second = a.draws[f"projection_{i}"]
        assert second == pytest.approx(2 * first)  # linear in the weights
    # unit directions: |projection| <= |weights|, and their mean square over many directions is |w|^2 / n
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    many = ChainTrace(model, projections=4000, projection_seed=3)
    many.record()
    values = torch.tensor([many.draws[f"projection_{i}"][0] for i in range(4000)])
    assert values.abs().max() <= weights.norm() + 1e-9
    assert values.square().mean().item() == pytest.approx(weights.square().sum().item() / weights.numel(), rel=0.1)


def test_state_dict_round_trip_and_chains_cut_to_the_shortest():
    t = ChainTrace(torch.nn.Linear(2, 2), projections=1)
    for v in range(6):
        t.record(loglik=float(v))
    u = ChainTrace(torch.nn.Linear(2, 2), projections=0)
    u.load_state_dict(t.state_dict())
    assert u.draws == t.draws and len(u) == 6
    short = {"loglik": [0.0, 1.0, 2.0, 3.0, 5.0]}
    out = chain_diagnostics([t, short])
    assert set(out) == {"loglik"} and out["loglik"]["draws"] == 5  # projection_0 is not in both


def test_sgnht_chains_on_a_gaussian_mix():
    """Four chains of the thermostat on N(0, 1): the draws are well mixed (R-hat near 1)."""
    traces = []
    for seed in range(4):
        x = torch.nn.Parameter(torch.full((50,), 3.0, dtype=torch.float64))
        opt = ConstrainedSGNHT([x], lr=0.05, temperature=1.0, seed=seed)
        trace = ChainTrace([x], projections=2)
        for step in range(1500):
            x.grad = x.detach().clone()
            opt.step()
            if step >= 500 and step % 5 == 0:
                trace.record(second_moment=x.detach().square().mean())
        traces.append(trace)
    out = chain_diagnostics(traces)
    assert set(out) == {"projection_0", "projection_1", "second_moment"}
    for name, d in out.items():
        assert d["rhat"] < 1.05, (name, d)
        assert d["ess"] > 100, (name, d)


def test_to_arviz_has_chain_and_draw_dims():
    data = to_arviz([{"a": [1.0, 2.0, 3.0]}, {"a": [2.0, 3.0, 1.0]}])
    posterior = data["posterior"] if not hasattr(data, "posterior") else data.posterior
    assert posterior["a"].shape == (2, 3)


def test_missing_arviz_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match="pip install arviz"):
        chain_diagnostics([{"a": [1.0, 2.0, 3.0, 4.0]}])
