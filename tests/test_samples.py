"""SampleCollector, CyclicalLR and OptimiseThenSample."""

import copy
import io
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


def _quadratic_steps(opt, w, steps, sched=None):
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (w - 1.0).square().sum()).backward()
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD])
def test_optimise_then_sample_switches_temperature_and_lr_once(cls):
    """The optimisation stage is the same optimiser at temperature 0 (bit for bit: no noise is
    drawn), the sampling stage runs at the group's temperature with sample_lr."""
    from constrained_sgld import OptimiseThenSample

    w, ref = (torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)) for _ in range(2))
    opt = cls([w], lr=0.1, temperature=0.5, seed=0)
    sched = OptimiseThenSample(opt, optimise_steps=4, sample_lr=0.01)
    cold = cls([ref], lr=0.1, temperature=0.0, seed=0)
    seen = []
    for _ in range(7):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["temperature"], sched.sampling()))
        _quadratic_steps(opt, w, 1, sched)
        if len(seen) <= 4:
            _quadratic_steps(cold, ref, 1)
            assert torch.equal(w, ref)
    assert seen == [(0.1, 0.0, False)] * 4 + [(0.01, 0.5, True)] * 3
    assert not torch.equal(w, ref)  # the noise is on


def test_optimise_then_sample_resumes_across_the_switch_and_takes_a_lr_per_group():
    from constrained_sgld import OptimiseThenSample

    def build():
        a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
        opt = ConstrainedUnderdampedSGLD([{"params": [a]}, {"params": [b], "temperature": 0.2}], lr=0.1, momentum=0.5, temperature=0.1, seed=3)
        return (a, b), opt, OptimiseThenSample(opt, optimise_steps=3, sample_lr=[0.05, None])

    def run(params, opt, sched, steps):
        for _ in range(steps):
            opt.zero_grad()
            sum(p.square().sum() for p in params).backward()
            opt.step()
            sched.step()

    params, opt, sched = build()
    run(params, opt, sched, 2)
    saved = copy.deepcopy((opt.state_dict(), sched.state_dict(), [p.detach().clone() for p in params]))
    run(params, opt, sched, 4)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.1] and [g["temperature"] for g in opt.param_groups] == [0.1, 0.2]
    params2, opt2, sched2 = build()
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    with torch.no_grad():
        for p, v in zip(params2, saved[2]):
            p.copy_(v)
    run(params2, opt2, sched2, 4)
    assert all(torch.equal(p, q) for p, q in zip(params, params2))


def test_optimise_then_sample_shapes_the_optimisation_stage_as_lambda_lr():
    """With ``lr_lambda`` the optimisation stage takes LambdaLR's lrs step for step (warm-up and
    cosine to a MAP), the sampling stage sample_lr; the state_dict pickles without the function
    and resumes with the one given again."""
    from constrained_sgld import OptimiseThenSample

    def shape(total):
        return lambda k: min(1.0, (k + 1) / 2) * 0.5 * (1 + math.cos(math.pi * k / total))  # a closure

    w, ref = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = ConstrainedSGLD([w], lr=0.1, temperature=0.3, seed=0)
    sched = OptimiseThenSample(opt, optimise_steps=5, sample_lr=0.002, lr_lambda=shape(5))
    plain = torch.optim.SGD([ref], lr=0.1)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(plain, shape(5))
    lrs, expected = [], []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        expected.append(plain.param_groups[0]["lr"])
        _quadratic_steps(opt, w, 1, sched)
        plain.step()
        lambda_lr.step()
    assert lrs[:5] == expected[:5] and lrs[5:] == [0.002] * 3
    state = sched.state_dict()
    assert "lr_lambda" not in state
    buffer = io.BytesIO()
    torch.save(state, buffer)  # a closure in the state would not pickle
    again = OptimiseThenSample(ConstrainedSGLD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, temperature=0.3), 5, 0.002, lr_lambda=shape(5))
    buffer.seek(0)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert again.last_epoch == 8 and again.lr_lambda is not None
    with pytest.raises(ValueError, match="lr_lambda"):
        OptimiseThenSample(ConstrainedSGLD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, temperature=0.3), 5, lr_lambda=0.5)


def test_optimise_then_sample_bad_options_are_named():
    from constrained_sgld import OptimiseThenSample

    w = torch.nn.Parameter(torch.zeros(2))
    opt = ConstrainedSGLD([w], lr=0.1, temperature=0.1)
    with pytest.raises(ValueError, match="optimise_steps"):
        OptimiseThenSample(opt, optimise_steps=-1)
    with pytest.raises(ValueError, match="one per group"):
        OptimiseThenSample(opt, 2, sample_lr=[0.1, 0.2])
    with pytest.raises(ValueError, match="positive"):
        OptimiseThenSample(opt, 2, sample_lr=0.0)
    with pytest.raises(ValueError, match="no temperature"):
        OptimiseThenSample(torch.optim.SGD([w], lr=0.1), 2)
