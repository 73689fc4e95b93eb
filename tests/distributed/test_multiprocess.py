"""Two real processes (gloo on CPU): DDP replicas stay bit-identical, checkpoints resume on every
rank, sharded (DTensor) parameters are handled or refused. About 20 s."""

import pytest
import torch
import torch.multiprocessing as mp

from . import _workers

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo")


def spawn(fn, tmp_path, world=2):
    mp.spawn(fn, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    return [torch.load(tmp_path / f"{name}{r}.pt", weights_only=False) for r in range(world) for name in ["rank", "shard"] if (tmp_path / f"{name}{r}.pt").exists()]


def test_ddp_replicas_identical_feasible_and_resumable(tmp_path):
    r0, r1 = spawn(_workers.ddp_worker, tmp_path)
    for name in ("ConstrainedSGLD", "ConstrainedUnderdampedSGLD", "ConstrainedUnderdampedSGLD+preconditioner", "ConstrainedSGLD+spectral"):
        a, b = r0[name], r1[name]
        assert len(a["state"]) == len(b["state"])
        for x, y in zip(a["state"], b["state"]):
            assert torch.equal(x, y), f"{name}: ranks differ"
        # rank 0's checkpoint, resumed on both ranks, continues bit-for-bit
        for x, y, z in zip(a["state"], a["resumed"], b["resumed"]):
            assert torch.equal(x, y) and torch.equal(x, z), f"{name}: resumed run differs"
        assert max(a["violations"]) < 1e-5
        assert a["moved"]  # the run did something


def test_sharded_parameters(tmp_path):
    s0, s1 = spawn(_workers.shard_worker, tmp_path)
    for key, message in s0.items():
        if key.startswith("orthogonal") or key.startswith("('sphere'") or key.startswith("('ball'"):
            assert "layer.weight" in message and "sharded along dim" in message, message
    assert s0["w_min"] >= 0 and max(s0["violations"]) < 1e-6
    torch.testing.assert_close(s0["s_norms"], torch.ones(8), rtol=0, atol=1e-5)
    # FSDP2 (fully_shard): element-wise sets stay feasible on the shards; orthogonal is refused
    assert s0["fsdp_min"] >= 0 and s0["fsdp_absmax"] <= 0.3 * (1 + 1e-6)
    assert "'0.weight' is sharded" in s0["fsdp_orthogonal"]
    assert "'0.weight' is sharded" in s0["fsdp_spectral"] and "matrix sign needs the whole matrix" in s0["fsdp_spectral"]
    # the pieces are different coordinates: their noise must differ (same start, zero gradient)
    assert not torch.equal(s0["w_local"], s1["w_local"])
