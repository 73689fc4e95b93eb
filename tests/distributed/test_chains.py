"""chain_id: distinct, reproducible noise streams with everything else identical; streams do not
depend on a device's index (so DDP ranks on different GPUs share one)."""

import pytest
import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD


def run(chain_id, seed=7, steps=5, cls=ConstrainedUnderdampedSGLD):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.full((50,), 0.5))
    opt = cls([w], constraints={w: ("box", {"lower": 0.0, "upper": 1.0})}, lr=0.01, temperature=1.0, seed=seed, chain_id=chain_id)
    for _ in range(steps):
        w.grad = torch.zeros_like(w)
        opt.step()
    return w.detach().clone(), opt


@pytest.mark.parametrize("cls", [ConstrainedSGLD, ConstrainedUnderdampedSGLD])
def test_chains_differ_and_each_is_reproducible(cls):
    a0, _ = run(0, cls=cls)
    a1, _ = run(1, cls=cls)
    b1, _ = run(1, cls=cls)
    assert torch.equal(a1, b1)
    assert not torch.equal(a0, a1)
    # chain 0 is the plain seeded stream
    assert torch.equal(a0, run(0, cls=cls)[0])


def test_chain_id_is_checkpointed():
    _, opt = run(3, steps=2)
    state = opt.state_dict()
    assert state["param_groups"][0]["rng"]["chain_id"] == 3
    # a fresh optimiser built for another chain, loaded from chain 3's checkpoint, continues chain 3
    full, _ = run(3, steps=5)
    torch.manual_seed(0)
    w = torch.nn.Parameter(opt.param_groups[0]["params"][0].detach().clone())
    resumed = ConstrainedUnderdampedSGLD([w], constraints={w: ("box", {"lower": 0.0, "upper": 1.0})}, lr=0.01, temperature=1.0, seed=0, chain_id=0)
    resumed.load_state_dict(state)
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        resumed.step()
    assert torch.equal(w.detach(), full)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_bad_chain_id_is_named(bad):
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="chain_id"):
        ConstrainedSGLD([w], chain_id=bad)


def test_stream_names_follow_first_use_not_device_index():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = ConstrainedSGLD([w], seed=1)
    # two GPUs used in the order cuda:1 then cuda:0 are named by that order (no device needed to name)
    assert opt._stream_key(torch.device("cuda:1"), None) == "cuda:0"
    assert opt._stream_key(torch.device("cuda:0"), None) == "cuda:1"
    assert opt._stream_key(torch.device("cpu"), None) == "cpu"
    assert opt._stream_key(torch.device("cuda:1"), 3) == "cuda:0/shard3"
    seeds = {opt._stream_seed(k) for k in ("cpu", "cuda:0", "cuda:1", "cuda:0/shard0", "cuda:0/shard1")}
    assert len({s % 2**32 for s in seeds}) == 5  # distinct in the 32 bits the CPU generator uses
