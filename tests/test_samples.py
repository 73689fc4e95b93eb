"""SampleCollector and CyclicalLR."""

import math

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD, CyclicalLR, SampleCollector


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def test_burn_in_thin_and_memory_bound():
    model = net()
    collector = SampleCollector(model, burn_in=5, thin=3, max_samples=4)
    kept = []
    for step in range(1, 31):
        with torch.no_grad():
            model[0].weight.fill_(step)  # mark the snapshot with the step number
        if collector.update():
            kept.append(step)
    assert kept == list(range(8, 31, 3))  # steps 8, 11, ..., 29
    assert len(collector) == 4  # only the last four stay
    assert [s["0.weight"][0, 0].item() for s in collector.samples] == [20.0, 23.0, 26.0, 29.0]
    assert "1.running_mean" in collector.samples[0]  # buffers too (BatchNorm statistics)


def test_predict_averages_and_leaves_model_alone():
    model = net()
    model.eval()
    collector = SampleCollector(model)
    x = torch.randn(6, 3)
    outputs, logits = [], []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
            collector.update()
            logits.append(model(x))
        outputs.append(torch.softmax(logits[-1], -1))
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    torch.testing.assert_close(collector.predict(x), torch.stack(outputs).mean(0))
    torch.testing.assert_close(collector.predict(x, fn=lambda o: o), torch.stack(logits).mean(0))
    assert model.training  # mode restored
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_state_dict_round_trip(tmp_path):
    model = net()
    c = SampleCollector(model, burn_in=1, thin=2, max_samples=3)
    for _ in range(9):
        c.update()
    torch.save(c.state_dict(), tmp_path / "c.pt")
    d = SampleCollector(model)
    d.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    assert (d.steps, d.burn_in, d.thin, d.max_samples, len(d)) == (9, 1, 2, 3, 3)
    assert d.update() is False and d.update() is True  # step 10 skipped, 11 kept: the count went on


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="thin"):
        SampleCollector(net(), thin=0)
    with pytest.raises(ValueError, match="max_samples"):
        SampleCollector(net(), max_samples=0)
    with pytest.raises(RuntimeError, match="no samples"):
        SampleCollector(net()).predict(torch.randn(2, 3))


@pytest.mark.parametrize("cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD])
def test_cyclical_schedule(cls):
    w = torch.nn.Parameter(torch.zeros(3))
    opt = cls([w], lr=0.2, temperature=0.5, seed=0)
    sched = CyclicalLR(opt, total_steps=20, cycles=4, exploration=0.4)
    lrs, temps, sampling = [], [], []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        temps.append(opt.param_groups[0]["temperature"])
        sampling.append(sched.sampling())
        w.grad = torch.zeros_like(w)
        opt.step()
        sched.step()
    expected = [0.2 / 2 * (math.cos(math.pi * (k % 5) / 5) + 1) for k in range(20)]
    assert lrs == pytest.approx(expected)
    # first 40% of each 5-step cycle explores at temperature 0, the rest samples at 0.5
    assert temps == [0.0, 0.0, 0.5, 0.5, 0.5] * 4
    assert sampling == [t > 0 for t in temps]
    assert sched.get_last_lr()[0] == pytest.approx(opt.param_groups[0]["lr"])
    state = sched.state_dict()
    assert state["cycle_length"] == 5
