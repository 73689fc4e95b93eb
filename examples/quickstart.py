"""A short training run: two interleaved spirals, a small MLP, SGD-momentum against constrained SGLD.

    python examples/quickstart.py [--epochs 300] [--seed 0]

Prints the test accuracy of each method and the largest constraint violation seen. Runs in well
under a minute on 2 CPU cores. The data are generated, so nothing is downloaded.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for benchmarks/

from benchmarks.tasks.spirals import two_spirals  # noqa: E402  (the same data as the two-spirals task)
from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD, Orthogonal, Sphere


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)
    )


def orthogonal_hidden(m):
    Orthogonal(scale=2.0).init_(m[2].weight)  # start on the set (else: projected, with a warning)
    return ConstrainedUnderdampedSGLD(
        m.named_parameters(), constraints={"2.weight": ("orthogonal", {"scale": 2.0})}, lr=0.05, momentum=0.9, temperature=1e-4, seed=0
    )


def sphere_rows(m):
    Sphere(radius=3.0).init_(m[0].weight)
    return ConstrainedSGLD(m.named_parameters(), constraints={"0.weight": ("sphere", {"radius": 3.0})}, lr=0.2, temperature=1e-4, seed=0)


METHODS = {
    "sgd-momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    "o-cola-ud (orthogonal hidden layer)": orthogonal_hidden,
    "c-cola-ud (circle, radius 1)": lambda m: ConstrainedUnderdampedSGLD(
        m.named_parameters(), constraints={"*.weight": ("circle", {"radius": 1.0})}, lr=0.05, momentum=0.9, temperature=1e-4, seed=0
    ),
    "cola-od (sphere rows)": sphere_rows,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(args.seed)
    x_train, y_train = two_spirals(150, 0.03, g)
    x_test, y_test = two_spirals(1000, 0.03, g)
    print(f"two spirals: {len(x_train)} training points, {len(x_test)} test points, {args.epochs} epochs of batch 50")
    for name, make_optim in METHODS.items():
        model = make_model(args.seed)
        optim = make_optim(model)
        start = time.perf_counter()
        worst = None  # stays None for an optimiser with no constraint (printed as "–")
        for epoch in range(args.epochs):
            order = torch.randperm(len(x_train), generator=g)
            for i in range(0, len(order), 50):
                idx = order[i : i + 50]
                optim.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
                loss.backward()
                optim.step()
            if any(g.get("constraint") is not None for g in optim.param_groups):
                worst = max([worst or 0.0] + [v.item() for v in optim.violations()])
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        shown = "–" if worst is None else f"{worst:.1e}"
        print(f"{name:38s} test accuracy {acc:6.1%}   largest violation {shown:>7s}   {time.perf_counter() - start:5.1f} s")


if __name__ == "__main__":
    main()
