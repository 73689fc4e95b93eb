"""The bias of continual adaptation: the preconditioner's mass adapting at every step (pSGLD's
practice, without its divergence term) against the same mass frozen after a burn-in (exact).

Targets with closed forms, many chains as rows of one float64 parameter, per-chain time averages,
the bias with its standard error (as tests/statistical/):

- non-negative set, ``U = x^2 / 2``: the half-normal, ``E[x^2] = 1`` (per-entry mass);
- sphere S^2, ``U = kappa (mu.x)^2 / 2`` (a Watson law, kappa = 4), ``E[(mu.x)^2]`` by quadrature
  (one mass per row);
- box [-1, 1], ``U = a x^2 / 2`` (a = 4, a truncated normal), ``E[x^2]`` by quadrature (per entry).

Forces that vary with the position: with a constant force the mass is constant and adapting it
cannot bias anything. Both schemes (the underdamped at momentum 0.5), lr 2e-3, bias-corrected
second moments; the frozen rows carry the discretisation bias alone. Prints a markdown table
(docs/verification.md).

    python scripts/continual_bias.py [--chains 2000] [--steps 4000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import warnings

import torch

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD


def _quadrature(density, f, lo, hi, n=200001):
    t = torch.linspace(lo, hi, n, dtype=torch.float64)
    w = density(t)
    return (torch.trapezoid(w * f(t), t) / torch.trapezoid(w, t)).item()


def targets():
    """Forces that depend on the position (a constant force gives a constant mass, which adapting
    cannot bias): quadratic potentials on each set."""
    kappa, a = 4.0, 4.0
    mu = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)

    def sphere_start(n):
        x = torch.zeros(n, 3, dtype=torch.float64)
        x[:, 0] = 1.0
        return x

    # on S^2, t = mu.x is uniform on [-1, 1] under the surface measure (Archimedes)
    watson = _quadrature(lambda t: torch.exp(-kappa * t**2 / 2), lambda t: t**2, -1.0, 1.0)
    truncated = _quadrature(lambda t: torch.exp(-a * t**2 / 2), lambda t: t**2, -1.0, 1.0)
    return {
        "nonnegative, U = x^2/2 (half-normal), E[x^2]": (
            "nonnegative", lambda n: torch.ones(n, 1, dtype=torch.float64), lambda x: x.clone(), lambda x: x[:, 0] ** 2, 1.0,
        ),
        "sphere S^2, U = 4 (mu.x)^2 / 2 (Watson), E[(mu.x)^2]": (
            "sphere", sphere_start, lambda x: kappa * (x @ mu)[:, None] * mu, lambda x: (x @ mu) ** 2, watson,
        ),
        "box [-1, 1], U = 4 x^2 / 2 (truncated normal), E[x^2]": (
            ("box", {"lower": -1.0, "upper": 1.0}), lambda n: torch.full((n, 1), 0.5, dtype=torch.float64), lambda x: a * x,
            lambda x: x[:, 0] ** 2, truncated,
        ),
    }


def run(spec, start, grad, stat, *, scheme, alpha, adapt_steps, chains, steps, burn, seed, lr):
    x = torch.nn.Parameter(start(chains))
    pre = {"alpha": alpha, "eps": 1e-8, "adapt_steps": adapt_steps, "bias_correction": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if scheme == "od":
            opt = ConstrainedSGLD([{"params": [x], "constraint": spec}], lr=lr, temperature=1.0, seed=seed, preconditioner=pre)
        else:
            opt = ConstrainedUnderdampedSGLD([{"params": [x], "constraint": spec}], lr=lr, momentum=0.5, temperature=1.0, seed=seed, preconditioner=pre)
    total = 0.0
    for i in range(steps):
        x.grad = grad(x.detach())
        opt.step()
        if i >= burn:
            total = total + stat(x.detach())
    per_chain = total / (steps - burn)
    return per_chain.mean().item(), per_chain.std().item() / math.sqrt(chains)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    burn = args.steps // 4
    print(f"chains {args.chains}, steps {args.steps} (burn-in {burn}), lr {args.lr}, temperature 1, seed {args.seed}\n")
    print("| target | scheme | alpha | mass | mean | expected | bias | SE | bias / SE |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, (spec, start, grad, stat, expected) in targets().items():
        for scheme in ("od", "ud"):
            for alpha in (0.9, 0.99):
                for mode, adapt in (("continual", None), ("frozen after burn-in", burn)):
                    mean, se = run(spec, start, grad, stat, scheme=scheme, alpha=alpha, adapt_steps=adapt, chains=args.chains,
                                   steps=args.steps, burn=burn, seed=args.seed, lr=args.lr)
                    bias = mean - expected
                    print(f"| {label} | {scheme} | {alpha} | {mode} | {mean:.4f} | {expected:.4f} | {bias:+.4f} | {se:.4f} | {bias / se:+.1f} |", flush=True)


if __name__ == "__main__":
    main()
