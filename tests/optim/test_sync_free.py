"""``sync_free=True``: a step that never reads a tensor value on the host, and still protects the
user's parameters (a non-finite gradient skips the step on the device; an unfinished SHAKE rejects
the move of that matrix).

Host reads are detected on CPU with a dispatch mode that records every aten op: ``.item()``,
``bool(t)`` and data-dependent shapes all go through ``_local_scalar_dense``, ``is_nonzero`` or
``nonzero``, which on a GPU are the device syncs.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD
from constrained_sgld.constraints.orthogonal import shake_tolerance

pytestmark = pytest.mark.filterwarnings("ignore:projected onto their constraint sets")

HOST_READS = {"_local_scalar_dense", "is_nonzero", "nonzero", "item", "equal"}

SPECS = [
    ("orthogonal", (6, 4)),
    ("orthogonal", (3, 5)),
    ("sphere", (5, 3)),
    ("ball", (4, 3)),
    ("circle", (4, 4)),
    ("nonnegative", (3, 4)),
    (("box", {"lower": -1.0, "upper": 1.0}), (4, 2)),
    (None, (3,)),
]
OPTIMISERS = [
    pytest.param(lambda ps, **kw: ConstrainedSGLD(ps, lr=0.01, **kw), id="od"),
    pytest.param(lambda ps, **kw: ConstrainedUnderdampedSGLD(ps, lr=0.01, momentum=0.9, **kw), id="ud"),
    pytest.param(lambda ps, **kw: ConstrainedSGNHT(ps, lr=0.01, momentum=0.9, **kw), id="nht"),
    # the preconditioner: adapting (the first steps) and frozen after them, both without host reads
    pytest.param(lambda ps, **kw: ConstrainedSGLD(ps, lr=1e-3, preconditioner={"eps": 1e-3, "adapt_steps": 2}, **kw), id="od-rmsprop"),
    pytest.param(lambda ps, **kw: ConstrainedUnderdampedSGLD(ps, lr=1e-3, momentum=0.9, preconditioner={"eps": 1e-3}, **kw), id="ud-rmsprop"),
    pytest.param(lambda ps, **kw: ConstrainedSGNHT(ps, lr=1e-3, momentum=0.9, preconditioner={"eps": 1e-3, "adapt_steps": 2}, **kw), id="nht-rmsprop"),
]


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def _model(seed=0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.rand(shape) * 0.5) for _, shape in SPECS]
    constraints = {p: spec for p, (spec, _) in zip(params, SPECS)}
    return params, constraints


def _set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def _host_reads_in_steps(make, sync_free, temperature, steps=3):
    params, constraints = _model()
    opt = make(params, constraints=constraints, temperature=temperature, seed=1, sync_free=sync_free)
    _set_grads(params, 0)
    opt.step()  # the first step creates the states
    mode = RecordOps()
    with mode:
        for k in range(steps):
            _set_grads(params, k + 1)
            opt.step()
    return HOST_READS.intersection(mode.names)


@pytest.mark.parametrize("make", OPTIMISERS)
@pytest.mark.parametrize("temperature", [0.0, 1e-3])
def test_sync_free_step_reads_nothing_on_the_host(make, temperature):
    assert _host_reads_in_steps(make, sync_free=True, temperature=temperature) == set()


@pytest.mark.parametrize("make", OPTIMISERS)
def test_the_detector_sees_the_default_steps_host_reads(make):
    # the default step reads the finite check and SHAKE's convergence test: the detector must see them
    assert _host_reads_in_steps(make, sync_free=False, temperature=1e-3)


@pytest.mark.parametrize("make", OPTIMISERS)
def test_sync_free_follows_the_default_trajectory(make):
    runs = []
    for sync_free in (False, True):
        params, constraints = _model()
        opt = make(params, constraints=constraints, temperature=1e-3, seed=3, sync_free=sync_free)
        for k in range(20):
            _set_grads(params, k)
            opt.step()
        runs.append([p.detach().clone() for p in params])
        if sync_free:
            for d in opt.diagnostics():
                assert int(d["rejected_moves"]) == 0 and int(d["skipped_steps"]) == 0
    for a, b in zip(*runs):
        # the checked SHAKE stops at its tolerance, the sync-free one runs its fixed iterations
        torch.testing.assert_close(a, b, atol=10 * shake_tolerance(torch.float32), rtol=0)


@pytest.mark.parametrize("make", OPTIMISERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_gradient_skips_the_step_on_the_device(make, bad):
    params, constraints = _model()
    opt = make(params, constraints=constraints, temperature=1e-3, seed=3, sync_free=True)
    for k in range(3):
        _set_grads(params, k)
        opt.step()
    before = [p.detach().clone() for p in params]
    states = [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in params]
    _set_grads(params, 9)
    params[2].grad[0, 0] = bad  # one entry of one parameter
    opt.step()
    for p, b, s in zip(params, before, states):
        assert torch.equal(p.detach(), b)
        for k, v in s.items():
            assert torch.equal(opt.state[p][k], v), k
    assert all(int(d["skipped_steps"]) == 1 for d in opt.diagnostics())
    _set_grads(params, 10)
    opt.step()  # a finite gradient moves again
    assert not torch.equal(params[0].detach(), before[0])
    assert all(int(d["skipped_steps"]) == 1 for d in opt.diagnostics())


def test_an_unfinished_shake_rejects_the_move_and_stays_feasible():
    torch.manual_seed(0)
    small = torch.nn.Parameter(torch.randn(8, 4))  # projected onto the set by the optimiser
    big = torch.nn.Parameter(torch.randn(8, 4))
    opt = ConstrainedSGLD([small, big], lr=1.0, constraints={small: "orthogonal", big: "orthogonal"}, sync_free=True)
    before, small_before = big.detach().clone(), small.detach().clone()
    small.grad = 1e-3 * torch.randn(8, 4)
    big.grad = 50 * torch.randn(8, 4)  # a step far too large for SHAKE's fixed iterations
    opt.step()
    assert torch.equal(big.detach(), before)  # rejected: stays where it was
    assert not torch.equal(small.detach(), small_before)  # the same batch's other matrix moved
    (d,) = opt.diagnostics()
    assert int(d["rejected_moves"]) == 1
    assert float(d["violation"]) <= 10 * shake_tolerance(torch.float32)
    # the default mode takes the polar fallback instead: it moves, and lands on the set
    big2 = torch.nn.Parameter(before.clone())
    opt2 = ConstrainedSGLD([big2], lr=1.0, constraints={big2: "orthogonal"})
    big2.grad = big.grad.clone()
    opt2.step()
    assert not torch.equal(big2.detach(), before)
    assert float(opt2.violations()[0]) <= 10 * shake_tolerance(torch.float32)


def test_sync_free_option_is_validated():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="sync_free"):
        ConstrainedSGLD([p], sync_free="yes")
    with pytest.raises(ValueError, match="check_finite"):
        ConstrainedSGLD([p], check_finite="skip")


@pytest.mark.parametrize("check_finite", [True, False])
def test_sync_free_steps_do_not_look_like_outside_changes(monkeypatch, check_finite):
    # the sync-free guard writes every parameter back (keep or restore); the version counters that
    # detect a change made outside step() must be read after that write, or every step re-derives
    # every state (the circle's z from w: four passes, and z's rounding lost)
    from constrained_sgld.constraints.circle import Circle

    calls = []
    original = Circle.sync_state
    monkeypatch.setattr(Circle, "sync_state", lambda self, p, state: (calls.append(1), original(self, p, state)))
    p = torch.nn.Parameter(torch.rand(4, 3) * 0.5)
    opt = ConstrainedUnderdampedSGLD([p], constraints={p: ("circle", {"radius": 1.0})}, lr=0.01, sync_free=True, check_finite=check_finite)
    for seed in range(4):
        _set_grads([p], seed)
        opt.step()
    assert calls == []
    with torch.no_grad():
        p.mul_(0.5)  # a change the optimiser did not make
    _set_grads([p], 5)
    opt.step()
    assert calls == [1]
