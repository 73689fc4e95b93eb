"""Data-parallel constrained Langevin training with DistributedDataParallel, on CPU or GPUs.

    torchrun --nproc_per_node=2 examples/ddp_train.py [--steps 60] [--checkpoint ckpt.pt]

Each rank trains the same small conv net on its own slice of generated data; DDP averages the
gradients and the optimiser adds the *same* noise on every rank (its seed is broadcast from rank 0),
so the replicas stay bit-identical. Rank 0 saves a checkpoint halfway; a second launch with the same
``--checkpoint`` resumes from it on every rank and continues exactly. Uses gloo on CPU, NCCL on GPUs.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from constrained_sgld import ConstrainedUnderdampedSGLD, Orthogonal, Sphere


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--checkpoint", default=None, help="save here halfway (rank 0); resume from it if it exists")
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)
    model = Net().to(device)
    with torch.no_grad():
        Orthogonal().init_(model.conv2.weight)  # start on the sets (else: projected, with a warning)
        Sphere(radius=2.0).init_(model.head.weight)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device] if use_cuda else None)
    optim = ConstrainedUnderdampedSGLD(
        model.named_parameters(),
        constraints={"conv2.weight": "orthogonal", "head.weight": ("sphere", {"radius": 2.0}), "conv1.weight": ("circle", {"radius": 0.5})},
        lr=0.05, momentum=0.9, temperature=1e-4,  # seed=None: rank 0 draws it, every rank uses it
    )
    start = 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        ckpt = torch.load(args.checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optim"])
        start = ckpt["step"]
        if rank == 0:
            print(f"resumed from {args.checkpoint} at step {start}")

    for step in range(start, args.steps):
        g = torch.Generator().manual_seed(world * step + rank)  # each rank: its own data
        x = torch.randn(32, 1, 12, 12, generator=g).to(device)
        y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :6].mean((1, 2, 3)) > 0).long()
        optim.zero_grad()
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        optim.step()
        if args.checkpoint and step + 1 == args.steps // 2 and start == 0:
            if rank == 0:
                torch.save({"model": model.state_dict(), "optim": optim.state_dict(), "step": step + 1}, args.checkpoint)
                print(f"step {step + 1}: saved {args.checkpoint}")
            dist.barrier()
        if rank == 0 and (step + 1) % 20 == 0:
            print(f"step {step + 1}: loss {loss.item():.4f}")

    # the replicas must be identical: compare a checksum of every parameter across ranks
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)
    sums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(sums, checksum)
    identical = all(torch.equal(sums[0], s) for s in sums)
    worst = max(v.item() for v in optim.violations())
    if rank == 0:
        print(f"ranks identical: {identical}; largest constraint violation: {worst:.1e}")
    # tear down in order: DDP's reducer holds the process group, and a rank that destroys the group
    # while another still uses it can abort at exit ("terminate called without an active exception")
    del ddp
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
