"""The checks of ``scripts/gpu_check.sh`` that need no pytest: ``python -m benchmarks.gpu_check
PART --out DIR [--device cuda] [--dry-run]``. Each part writes ``DIR/PART.json`` and prints a
summary; a part that fails says so in its file and exits non-zero, and the script goes on.

- ``sets``: every set under each scheme on a small convnet on the device (feasibility after 50
  tempered steps, a ``state_dict`` round trip), and the square orthogonal matrices' two Cayley
  routes moving the same chain;
- ``routes``: the Cayley map by products against the LU solve on the device, one batch of square
  matrices per size, timed interleaved (what ``cayley="auto"`` should pick there);
- ``graph``: the sync-free step captured in a CUDA graph (torch's ``capturable`` pattern: static
  gradients, warm-up on a side stream, ``torch.cuda.graph``), its replays against the eager step
  (the same result) and their times. ``--dry-run`` (the CPU) runs the sync-free step eagerly.

``--dry-run`` uses toy sizes on the CPU, so that CI runs every line of the script.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn
from torch.nn import functional as F

from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD, Orthogonal

from .speed import interleaved as _timed  # median seconds per call, the candidates timed in turn

SCHEMES = {"od": ConstrainedSGLD, "ud": ConstrainedUnderdampedSGLD, "nht": ConstrainedSGNHT}
SETS = {
    "orthogonal": "orthogonal",
    "sphere": "sphere",
    "ball": ("ball", {"radius": 1.0}),
    "circle": ("circle", {"radius": 0.3}),
    "nonnegative": "nonnegative",
    "box": ("box", {}),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _convnet(device, dtype=torch.float32) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10)).to(device, dtype)


def part_sets(device: torch.device, dry: bool) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    x = torch.randn(32, 3, 8, 8, device=device)
    y = torch.randint(0, 10, (32,), device=device)
    steps = 5 if dry else 50
    for set_name, spec in SETS.items():
        for scheme, cls in SCHEMES.items():
            torch.manual_seed(0)
            model = _convnet(device)
            # the convolutions and the hidden linear layer on the set (orthogonal: matrices, the rest entries)
            names = ["0.weight", "2.weight", "5.weight"]
            kwargs = {"lr": 0.01, "temperature": 1e-4, "seed": 0}
            if scheme != "od":
                kwargs["momentum"] = 0.9
            opt = cls(model.named_parameters(), constraints={n: spec for n in names}, **kwargs)
            for _ in range(steps):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            state = opt.state_dict()
            opt.load_state_dict(state)
            violation = max(float(v) for v in opt.violations())
            finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
            out[f"{set_name}/{scheme}"] = {"violation": violation, "finite": finite, "ok": finite and violation < 1e-4}
    # the two Cayley routes: the same chain (float64), on the device
    chains = {}
    for route in ("iterative", "solve"):
        torch.manual_seed(1)
        p = Orthogonal().init_(torch.empty(64, 64, dtype=torch.float64, device=device))
        g = torch.Generator(device=device).manual_seed(2)
        opt = ConstrainedUnderdampedSGLD([p], constraints={p: ("orthogonal", {"cayley": route})}, lr=1e-3, momentum=0.9, temperature=1e-4, seed=0)
        for _ in range(steps):
            p.grad = torch.randn(64, 64, generator=g, device=device, dtype=torch.float64)
            opt.step()
        chains[route] = p.detach()
    gap = float((chains["iterative"] - chains["solve"]).abs().max())
    out["cayley routes, max difference (float64)"] = {"difference": gap, "ok": gap < 1e-10}
    return out


def part_routes(device: torch.device, dry: bool) -> Dict[str, Any]:
    from constrained_sgld.constraints.orthogonal import cayley_drift, cayley_iterative, cayley_products

    sizes = [(4, 32)] if dry else [(30, 256), (8, 512), (4, 1024), (1, 2048)]
    out: Dict[str, Any] = {}
    for batch, n in sizes:
        g = torch.Generator(device=device).manual_seed(0)
        x = Orthogonal().init_(torch.empty(batch, n, n, device=device))
        a = torch.randn(batch, n, n, generator=g, device=device) * (1e-3 / n**0.5)
        a = a - a.transpose(-2, -1)
        k = cayley_products(float(torch.linalg.matrix_norm(a).amax()), x.dtype, max_products=60)
        times = _timed({"solve": lambda: cayley_drift(x, a, 1.0), "products": lambda: cayley_iterative(x, a, 1.0, k)}, 3 if dry else 11, 1 if dry else 5, device)
        gap = float((cayley_iterative(x, a, 1.0, k)[0] - cayley_drift(x, a, 1.0)).abs().max())
        out[f"{batch} x {n} x {n}"] = {"products": k, "solve_s": times["solve"], "products_s": times["products"], "solve_over_products": times["solve"] / times["products"], "difference": gap, "ok": gap < 1e-4}
    return out


def part_graph(device: torch.device, dry: bool) -> Dict[str, Any]:
    torch.manual_seed(0)
    model = _convnet(device)
    constraints = {"0.weight": "orthogonal", "2.weight": "sphere", "5.weight": ("circle", {"radius": 0.3})}
    opt = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints=constraints, lr=0.01, momentum=0.9, temperature=1e-4, seed=0, sync_free=True)
    x = torch.randn(32, 3, 8, 8, device=device)
    y = torch.randint(0, 10, (32,), device=device)
    F.cross_entropy(model(x), y).backward()  # static gradients: the graph reads these tensors
    opt.step()  # the states exist before the capture
    out: Dict[str, Any] = {}
    if device.type != "cuda":
        eager = _timed({"step": opt.step}, 3, 2, device)["step"]
        out["eager sync-free step"] = {"seconds": eager, "ok": max(float(v) for v in opt.violations()) < 1e-4}
        out["capture"] = {"ok": True, "note": "no CUDA device: capture skipped (dry run)"}
        return out
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        for gen in getattr(opt, "_generators", {}).values():  # the optimiser's own noise streams
            if hasattr(graph, "register_generator_state") and getattr(gen, "device", torch.device("cpu")).type == "cuda":
                graph.register_generator_state(gen)
        with torch.cuda.graph(graph):
            opt.step()
    except Exception as e:  # noqa: BLE001 - the point is to report what fails
        out["capture"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        return out
    before = [p.detach().clone() for p in model.parameters()]
    graph.replay()
    _sync(device)
    moved = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    times = _timed({"replay": graph.replay, "eager": opt.step}, 11, 20, device)
    violation = max(float(v) for v in opt.violations())
    out["capture"] = {"ok": moved and violation < 1e-4, "moved": moved, "violation": violation,
                      "replay_s": times["replay"], "eager_s": times["eager"], "eager_over_replay": times["eager"] / times["replay"]}
    return out


PARTS = {"sets": part_sets, "routes": part_routes, "graph": part_graph}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check")
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch (use --dry-run on the CPU)")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = PARTS[args.part](device, args.dry_run)
        ok = all(v.get("ok", True) for v in result.values())
    except Exception as e:  # noqa: BLE001
        result, ok = {"error": {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}}, False
    (folder / f"{args.part}.json").write_text(json.dumps({"device": str(device), "torch": torch.__version__, "ok": ok, "results": result}, indent=1))
    for key, value in result.items():
        print(f"{args.part}: {key}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items() if k != "traceback"))
    print(f"{args.part}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
