"""Signal propagation at initialisation: how deep the input still shows, for the two init claims
of docs/benchmarks.md ("Initialisation at depth").

    python scripts/depth_signal.py docs/results/depth      # writes signal.json, signal.md, signal.png

- **Binary surrogates** (``binary-fmnist``'s network, width 256, 40 layers; Stamatescu et al. 2019):
  the cosine correlation between the hidden states of two test images, layer by layer, for the
  near-binary and the centred init. Correlations flow to a fixed point ``c*`` whatever the inputs
  were; the input is lost at the depth where the pairs' correlations no longer differ. Measured as
  the spread (standard deviation over pairs) of the correlations, relative to its value in the
  input; "lost at" is the first layer where it falls below ``LOST`` of that. The depth scale is
  ``-1 / slope`` of ``log spread`` against the layer over the layers before that.
- **Input-convex nets** (``fmnist-icnn``'s network without skips, width 256, 16 hidden layers;
  Hoedt & Klambauer 2023): the pre-activations' spread over images (each unit's standard deviation
  over the batch, averaged over units), relative to the first layer's, and the fraction of units
  dead for every image, for ``icnn_`` and the default init (projected onto the set, as the
  methods start from it). "Lost at" as above.
- **Gradients** at each depth of the sweeps: the first weight matrix's gradient norm over the
  last one's, for the cross-entropy of a training batch.

Every figure is the mean over ``SEEDS`` draws of the weights, on the same images.
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import start_on_set  # noqa: E402
from benchmarks.tasks import TASKS  # noqa: E402

LOST = 0.1  # the input counts as lost where a layer's fidelity to it falls below this
SEEDS = 3
IMAGES = 256  # images per measurement: 256 * 255 / 2 pairs
SWEEPS = {"binary-fmnist": ("near_binary", "centred"), "fmnist-icnn": ("icnn", "default")}
DEPTHS = {"binary-fmnist": (5, 10, 20, 40), "fmnist-icnn": (2, 4, 8, 16)}


def task_for(name: str, init: str, depth: int):
    overrides = {"init": init, "depth": depth, **({"skip": False} if name == "fmnist-icnn" else {})}
    return TASKS[name]("quick", torch.device("cpu"), overrides)


def start(task, seed: int):
    """The network as every method of the sweep starts it: built, then on the set."""
    torch.manual_seed(seed)
    model = task.build_model()
    start_on_set(model, task.constrained(model, task.families[0]))
    return model


def pair_correlations(h: torch.Tensor) -> torch.Tensor:
    """The cosine correlation of every pair of images' vectors (rows of ``h``)."""
    u = F.normalize(h, dim=1)
    return (u @ u.T)[torch.triu_indices(len(h), len(h), 1).unbind()]


def fidelity(pairs: torch.Tensor, reference: torch.Tensor) -> float:
    """How much of the input's pair structure a layer keeps: the correlation, over pairs of images,
    of the layer's pair correlations with the input's (0 once every pair looks alike)."""
    a, b = pairs - pairs.mean(), reference - reference.mean()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else 0.0


def lost_at(fidelities):
    """The first layer (1 = the first hidden) whose fidelity is below LOST, and the depth scale:
    ``-1 / slope`` of ``log fidelity`` against the layer (the input: layer 0, fidelity 1) over the
    layers before it."""
    lost = next((layer for layer, f in enumerate(fidelities, 1) if f < LOST), None)
    points = [(0, 0.0)] + [(layer, math.log(f)) for layer, f in enumerate(fidelities[: (lost or len(fidelities) + 1) - 1], 1) if f > 0]
    if len(points) < 3:
        return lost, None
    mx = statistics.mean(x for x, _ in points)
    my = statistics.mean(y for _, y in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return lost, (-1.0 / slope if slope < 0 else math.inf)


@torch.no_grad()
def layer_profile(name: str, init: str, x: torch.Tensor):
    """Per hidden layer, input to output, averaged over seeds: the fidelity to the images' pair
    correlations, the mean pair correlation; and for ICNN the fraction of dead units."""
    depth = max(DEPTHS[name])
    reference = pair_correlations(x)
    rows = []
    for seed in range(SEEDS):
        model = start(task_for(name, init, depth), seed)
        states = model.hidden_states(x) if name == "binary-fmnist" else model.pre_activations(x)
        row = []
        for h in states:
            pairs = pair_correlations(h)
            entry = {"fidelity": fidelity(pairs, reference), "corr": float(pairs.mean())}
            if name == "fmnist-icnn":
                entry["dead"] = float((h <= 0).all(0).float().mean())
            row.append(entry)
        rows.append(row)
    return [{k: statistics.mean(r[layer][k] for r in rows) for k in rows[0][layer]} for layer in range(len(rows[0]))]


def gradient_ratio(name: str, init: str, depth: int, x, y):
    """||grad W_first|| / ||grad W_last|| at init, averaged over seeds (log-mean)."""
    logs = []
    for seed in range(SEEDS):
        model = start(task_for(name, init, depth), seed)
        weights = [p for n, p in model.named_parameters() if n.endswith("weight") and not n.startswith("skip")]
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [weights[0], weights[-1]])
        first, last = (float(g.norm()) for g in grads)
        logs.append(math.log(first / last) if first > 0 and last > 0 else -math.inf)
    return math.exp(statistics.mean(logs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"lost_fraction": LOST, "seeds": SEEDS, "images": IMAGES}
    for name, inits in SWEEPS.items():
        task = task_for(name, inits[0], max(DEPTHS[name]))
        task.prepare()
        x, y = task.x_test[:IMAGES], task.y_test[:IMAGES]
        xt, yt = task.x_train[:512], task.y_train[:512]
        out[name] = {}
        for init in inits:
            profile = layer_profile(name, init, x)
            lost, scale = lost_at([row["fidelity"] for row in profile])
            grads = {d: gradient_ratio(name, init, d, xt, yt) for d in DEPTHS[name]}
            out[name][init] = {"layers": profile, "lost_at": lost, "depth_scale": scale, "grad_first_over_last": grads}
            print(f"[{name}] {init:12s} lost at layer {lost}, depth scale {scale}, grad ratios {grads}")
    (args.out / "signal.json").write_text(json.dumps(out, indent=1))
    (args.out / "signal.md").write_text(markdown(out))
    plot(out, args.out / "signal.png")


def fmt(v, spec="{:.3g}"):
    if v is None:
        return "not within the depth"
    return "inf" if v == math.inf else spec.format(v)


def markdown(out) -> str:
    lines = [
        f"Signal propagation at init (scripts/depth_signal.py): {out['seeds']} weight draws, {out['images']} test images. "
        "Fidelity: the correlation, over pairs of images, of a layer's pair correlations with the images' own; "
        f"the input counts as lost at the first layer whose fidelity is below {out['lost_fraction']:g}. "
        "Depth scale: -1 / slope of log fidelity against the layer.",
        "",
        "| task | init | fidelity at layers 1, 2, 4, 8, 16, ... | mean pair correlation, last layer | lost at layer | depth scale (layers) | grad norm, first / last layer, at each depth |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SWEEPS:
        for init, r in out[name].items():
            layers = r["layers"]
            fid = ", ".join(f"{layers[k - 1]['fidelity']:.2f}" for k in (1, 2, 4, 8, 16, 32) if k <= len(layers))
            grads = ", ".join(f"{d}: {fmt(g, '{:.2g}')}" for d, g in r["grad_first_over_last"].items())
            last = f"{layers[-1]['corr']:.2f}" + (f" ({layers[-1]['dead']:.0%} of units dead)" if "dead" in layers[-1] else "")
            lines.append(f"| {name} ({len(layers)} hidden layers) | {init} | {fid} | {last} | {fmt(r['lost_at'], '{}')} | {fmt(r['depth_scale'])} | {grads} |")
    return "\n".join(lines) + "\n"


def plot(out, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, name in zip(axes, SWEEPS):
        for init, r in out[name].items():
            fid = [1.0] + [row["fidelity"] for row in r["layers"]]
            ax.plot(range(len(fid)), fid, marker=".", label=init)
        ax.axhline(out["lost_fraction"], color="grey", lw=0.8, ls=":")
        ax.set_title(f"{name}: the input's pair structure at init")
        ax.set_xlabel("layer (0: the input)")
        ax.set_ylabel("fidelity")
        ax.set_ylim(-0.05, 1.05)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
