"""Independent Langevin chains in separate processes, pooled: the cheap way to many samples.

    python examples/parallel_chains.py [--chains 4] [--steps 3000]
    torchrun --nproc_per_node=4 examples/parallel_chains.py --torchrun

Every chain runs the same model, data, seed and hyper-parameters; only ``chain_id`` differs, which
gives it a distinct, reproducible noise stream. The target is a Bayesian logistic regression whose
weight vector lies on the unit sphere (a von Mises-Fisher-like posterior); each chain keeps every
10th sample after burn-in, and the pooled samples give the posterior mean and its Monte Carlo error.
"""

import argparse
import os
import tempfile

import torch
import torch.multiprocessing as mp
from torch.nn import functional as F

from constrained_sgld import ConstrainedUnderdampedSGLD


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    y = (x @ torch.tensor([1.0, -1.0, 0.5]) + 0.5 * torch.randn(200, generator=g) > 0).float()
    return x, y


def chain(chain_id: int, steps: int, out_dir: str) -> None:
    torch.manual_seed(0)  # everything but the noise is identical across chains
    x, y = data()
    w = torch.nn.Parameter(torch.tensor([0.0, 0.0, 1.0]))
    # temperature 1/N: the Bayesian posterior of the mean log-loss over N = 200 points
    opt = ConstrainedUnderdampedSGLD([("w", w)], constraints={"w": ("sphere", {"dim": None})}, lr=0.01, momentum=0.9,
                                     temperature=1.0 / len(y), seed=0, chain_id=chain_id)
    samples = []
    for step in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(x @ w * 4.0, y).backward()
        opt.step()
        if step >= steps // 3 and step % 10 == 0:
            samples.append(w.detach().clone())
    torch.save(torch.stack(samples), os.path.join(out_dir, f"chain{chain_id}.pt"))


def pool(out_dir: str, chains: int) -> None:
    per_chain = [torch.load(os.path.join(out_dir, f"chain{c}.pt")) for c in range(chains)]
    means = torch.stack([s.mean(0) for s in per_chain])
    pooled = torch.cat(per_chain)
    se = means.std(0) / chains**0.5  # between-chain spread: an honest Monte Carlo error
    print(f"{chains} chains x {len(per_chain[0])} samples")
    for c, m in enumerate(means):
        print(f"  chain {c}: mean {m.numpy().round(3)}")
    print(f"pooled posterior mean {pooled.mean(0).numpy().round(3)} +- {se.numpy().round(3)}; |w| = 1: {pooled.norm(dim=1).sub(1).abs().max():.1e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--torchrun", action="store_true", help="launched by torchrun: this process is chain RANK")
    args = parser.parse_args()
    if args.torchrun:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        out = [tempfile.mkdtemp() if rank == 0 else None]
        dist.broadcast_object_list(out, src=0)
        chain(rank, args.steps, out[0])
        dist.barrier()
        if rank == 0:
            pool(out[0], world)
        dist.destroy_process_group()
        return
    out = tempfile.mkdtemp()
    mp.spawn(chain, args=(args.steps, out), nprocs=args.chains, join=True)
    pool(out, args.chains)


if __name__ == "__main__":
    main()
