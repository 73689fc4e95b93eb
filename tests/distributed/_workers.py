"""Code run inside the spawned processes of test_multiprocess.py (importable by the children)."""

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD, Orthogonal

CONSTRAINTS = {
    "conv1.weight": "orthogonal",
    "conv2.weight": ("sphere", {"radius": 2.0}),
    "fc.weight": ("circle", {"radius": 0.5}),
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def setup(rank, world, store_file):
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)


def finish():
    """Leave without any teardown once both ranks have saved their results: tearing down gloo's and
    FSDP's background threads sometimes aborts a process ("terminate called without an active
    exception"), which would fail the test after all its work was done."""
    dist.barrier()
    os._exit(0)


def make(cls, seed=None, **kwargs):
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        Orthogonal().init_(model.conv1.weight)
    ddp = nn.parallel.DistributedDataParallel(model)
    # seed=None on purpose: rank 0's seed must reach every rank
    kwargs = {"lr": 0.02, "temperature": 1e-3, **kwargs}
    params = list(ddp.module.named_parameters())
    if kwargs.pop("spectral", False):  # the spectral step on the orthogonal conv, Adam on the rest (T = 0)
        params = [{"params": params[:1], "preconditioner": {"kind": "spectral", "variant": "steepest"}},
                  {"params": params[1:], "preconditioner": "adam"}]
    opt = cls(params, constraints=CONSTRAINTS, seed=seed, **kwargs)
    return ddp, opt


def train(ddp, opt, steps, rank, start=0):
    for i in range(start, start + steps):
        g = torch.Generator().manual_seed(1000 * rank + i)  # every rank sees different data
        x, y = torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()


def flat_state(model, opt):
    tensors = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        for _, v in sorted(opt.state[p].items()):
            if torch.is_tensor(v):
                tensors.append(v.clone())
    return tensors


def ddp_worker(rank, world, store_file, out_dir):
    setup(rank, world, store_file)
    results = {}
    # the preconditioner's second moments must stay identical across replicas too
    variants = [(ConstrainedSGLD, {}), (ConstrainedUnderdampedSGLD, {}),
                (ConstrainedUnderdampedSGLD, {"lr": 2e-3, "preconditioner": {"eps": 1e-3, "adapt_steps": 20}}),
                (ConstrainedSGLD, {"lr": 2e-3, "temperature": 0.0, "spectral": True})]
    for cls, kwargs in variants:
        name = cls.__name__ + ("+spectral" if "spectral" in kwargs else "+preconditioner" if kwargs else "")
        # uninterrupted: 30 steps
        torch.manual_seed(rank)  # different global RNG per rank: seeds would differ without the broadcast
        ddp, opt = make(cls, **kwargs)
        start = ddp.module.conv1.weight.detach().clone()
        train(ddp, opt, 30, rank)
        results[name] = {
            "state": flat_state(ddp.module, opt),
            "violations": [v.item() for v in opt.violations()],
            "moved": not torch.equal(start, ddp.module.conv1.weight),
        }
        # checkpointed: 15 steps, rank 0 saves, every rank loads into fresh objects, 15 more
        torch.manual_seed(rank)
        ddp, opt = make(cls, **kwargs)
        train(ddp, opt, 15, rank)
        path = os.path.join(out_dir, f"{name}.pt")
        if rank == 0:
            torch.save({"model": ddp.module.state_dict(), "optim": opt.state_dict()}, path)
        dist.barrier()
        torch.manual_seed(1234 + rank)
        ddp2, opt2 = make(cls, seed=999, **kwargs)  # whatever seed: the checkpoint's wins
        ckpt = torch.load(path, weights_only=True)
        ddp2.module.load_state_dict(ckpt["model"])
        opt2.load_state_dict(ckpt["optim"])
        train(ddp2, opt2, 15, rank, start=15)
        results[name]["resumed"] = flat_state(ddp2.module, opt2)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finish()


def shard_worker(rank, world, store_file, out_dir):
    setup(rank, world, store_file)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    out = {}

    def sharded(t, dim=0):
        return nn.Parameter(distribute_tensor(t, mesh, [Shard(dim)]))

    # sets that need the whole matrix or norm are refused on shards, with the parameter named
    for spec, dim in [("orthogonal", 0), (("sphere", {"dim": None}), 0), (("ball", {"dim": "rows"}), 1)]:
        p = sharded(torch.rand(8, 4), dim)
        try:
            ConstrainedSGLD([("layer.weight", p)], constraints={"layer.weight": spec}, seed=0)
            out[str(spec)] = "accepted"
        except ValueError as e:
            out[str(spec)] = str(e)
    # element-wise sets and row norms with whole rows work on the pieces
    w = sharded(torch.full((8, 4), 0.5))
    s = sharded(torch.nn.functional.normalize(torch.ones(8, 4), dim=1))
    opt = ConstrainedUnderdampedSGLD([("w", w), ("s", s)], constraints={"w": "nonnegative", "s": "sphere"}, lr=0.1, temperature=1.0, seed=0)
    for _ in range(20):
        w.grad = distribute_tensor(torch.zeros(8, 4), mesh, [Shard(0)])
        s.grad = distribute_tensor(torch.zeros(8, 4), mesh, [Shard(0)])
        opt.step()
    out["w_local"] = w.to_local().clone()
    out["w_min"] = w.full_tensor().min().item()
    out["s_norms"] = s.full_tensor().norm(dim=1)
    out["violations"] = [v.item() for v in opt.violations()]

    # FSDP2: fully_shard a small MLP; element-wise sets train on the shards, orthogonal is refused
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        mlp[2].weight.abs_()
    fully_shard(mlp)
    fsdp_opt = ConstrainedUnderdampedSGLD(
        mlp.named_parameters(), constraints={"2.weight": "nonnegative", "4.weight": ("circle", {"radius": 0.3})}, lr=0.05, temperature=1e-2, seed=0
    )
    for i in range(10):
        g = torch.Generator().manual_seed(100 * rank + i)
        fsdp_opt.zero_grad()
        mlp(torch.randn(5, 4, generator=g)).square().mean().backward()
        fsdp_opt.step()
    out["fsdp_min"] = mlp[2].weight.full_tensor().min().item()
    out["fsdp_absmax"] = mlp[4].weight.full_tensor().abs().max().item()
    try:
        ConstrainedSGLD(mlp.named_parameters(), constraints={"0.weight": "orthogonal"})
        out["fsdp_orthogonal"] = "accepted"
    except ValueError as e:
        out["fsdp_orthogonal"] = str(e)
    try:  # the spectral step's matrix sign needs the whole matrix: an unconstrained shard is refused too
        ConstrainedSGLD([("0.weight", mlp[0].weight)], preconditioner="spectral")
        out["fsdp_spectral"] = "accepted"
    except ValueError as e:
        out["fsdp_spectral"] = str(e)
    torch.save(out, os.path.join(out_dir, f"shard{rank}.pt"))
    finish()
