"""DeepEnsemble and member_batches: members that train as if alone, the averaged prediction, and
ensemble-started chains (DeepEnsemble + OptimiseThenSample + SampleCollector): independent chains,
each at the documented law, and the pooled prediction."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import constrained_sgld as cs
from constrained_sgld import DeepEnsemble, OptimiseThenSample, SampleCollector, member_batches


def test_members_train_as_if_alone_and_predict_the_average():
    torch.manual_seed(0)
    members = [nn.Linear(4, 3) for _ in range(3)]
    ensemble = DeepEnsemble(members)
    xs, ys = torch.randn(3, 8, 4), torch.randint(0, 3, (3, 8))  # each member's own batch
    loss = F.cross_entropy(ensemble(xs.flatten(0, 1)), ys.flatten())
    loss.backward()
    for m, x, y in zip(members, xs, ys):  # the gradient of its own mean loss, not a third of it
        own = torch.autograd.grad(F.cross_entropy(m(x), y), [m.weight, m.bias])
        torch.testing.assert_close(m.weight.grad, own[0])
        torch.testing.assert_close(m.bias.grad, own[1])
    assert loss.item() == pytest.approx(sum(F.cross_entropy(m(x), y).item() for m, x, y in zip(members, xs, ys)) / 3)
    ensemble.eval()
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(xs[0]), -1) for m in members]).mean(0)
        torch.testing.assert_close(torch.softmax(ensemble(xs[0]), -1), mean)
        regression = DeepEnsemble(members, average="mean").eval()
        torch.testing.assert_close(regression(xs[0]), torch.stack([m(xs[0]) for m in members]).mean(0))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 2"):
        DeepEnsemble([nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="average must be one of"):
        DeepEnsemble([nn.Linear(2, 2)] * 2, average="median")
    with pytest.raises(ValueError, match="member_batches"):
        DeepEnsemble([nn.Linear(2, 2)] * 2)(torch.randn(3, 2))
    with pytest.raises(ValueError, match="drop_last"):
        next(member_batches([[(torch.zeros(4, 2), torch.zeros(4))], [(torch.zeros(3, 2), torch.zeros(3))]]))


def test_member_batches_concatenate_each_members_own_order():
    data = torch.utils.data.TensorDataset(torch.arange(12.0)[:, None], torch.arange(12))
    loaders = [torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    batches = list(member_batches(loaders))
    assert len(batches) == 3 and all(x.shape == (8, 1) for x, _ in batches)
    first, second = (list(loader) for loader in loaders)  # the same generators' next epoch: a new order each
    assert not torch.equal(batches[0][1][:4], batches[0][1][4:])  # two orders, not one
    assert sorted(torch.cat([y[:4] for _, y in batches]).tolist()) == list(range(12))  # member 0 sees every example


class _Point(nn.Module):
    """A model whose output is its parameter, one row per input: with the loss 0.5 |out|^2 (mean
    over rows) its potential is U(theta) = 0.5 |theta|^2, whose law at temperature T is N(0, T I)."""

    def __init__(self, dim):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(dim, dtype=torch.float64))

    def forward(self, x):
        return self.theta.expand(len(x), -1)


def test_ensemble_started_chains_are_independent_and_each_samples_the_law():
    """Two members start at the same point and see the same gradients; only their noise tells them
    apart. After the optimisation stage (T = 0: both go to the mode 0 together, no noise drawn) and
    a long sampling stage, each member's coordinates are N(0, T) draws (variance T within 4
    standard errors) and the two members are uncorrelated (|corr| within 4 standard errors of 0):
    shared noise would give correlation 1."""
    dim, temperature = 4000, 0.01
    ensemble = DeepEnsemble([_Point(dim), _Point(dim)])
    optim = cs.ConstrainedUnderdampedSGLD(ensemble.named_parameters(), lr=0.05, momentum=0.9, temperature=temperature, seed=0)
    sched = OptimiseThenSample(optim, optimise_steps=200, sample_lr=0.02)
    x = torch.zeros(2, 1)  # one row per member
    for step in range(600):
        optim.zero_grad()
        (0.5 * ensemble(x).square().sum(1).mean()).backward()
        optim.step()
        sched.step()
        if step == 199:  # the optimisation stage: identical trajectories, at the mode
            a, b = (m.theta.detach() for m in ensemble.members)
            assert torch.equal(a, b) and a.abs().max() < 1e-3
    a, b = (m.theta.detach() for m in ensemble.members)
    n = 2 * dim
    variance = torch.cat([a, b]).square().mean().item()
    assert abs(variance - temperature) < 4 * temperature * (2 / n) ** 0.5
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 4 / dim**0.5


def test_collector_on_an_ensemble_pools_chains_and_snapshots():
    torch.manual_seed(0)
    members = [nn.Linear(3, 4) for _ in range(3)]
    ensemble = DeepEnsemble(members)
    optim = cs.ConstrainedUnderdampedSGLD(ensemble.named_parameters(), constraints={"members.*.weight": ("sphere", {"radius": 1.0})},
                                          lr=0.05, momentum=0.5, temperature=0.1, seed=1)
    sched = OptimiseThenSample(optim, optimise_steps=3)
    collector = SampleCollector(ensemble, burn_in=3, thin=2)
    snapshots = []
    for _ in range(9):
        optim.zero_grad()
        F.cross_entropy(ensemble(torch.randn(6, 3)), torch.randint(0, 4, (6,))).backward()
        optim.step()
        sched.step()
        if collector.update():
            snapshots.append([(m.weight.detach().clone(), m.bias.detach().clone()) for m in members])
    assert len(collector) == 3
    x = torch.randn(5, 3)
    expected = torch.stack([torch.softmax(x @ w.T + b, -1) for snap in snapshots for w, b in snap]).mean(0)
    torch.testing.assert_close(collector.predict(x), expected)
    assert ensemble.training  # predict leaves the mode as it was
