"""The lr grid of an adaptive round, read from its results.json files: per method and lr, the best
epoch's validation metric (what the lr is chosen on: the highest accuracy, or the lowest bits per
character). The test metric is not read. Usage: python scripts/grid_table.py runs/adaptive/TASK-grid-*"""

import json
import re
import sys
from pathlib import Path


def main(folders):
    rows = {}
    for folder in folders:
        raw = re.search(r"-([0-9.]+(?:e-?[0-9]+)?)$", folder.rstrip("/")).group(1)  # TASK-grid-LR, grid-METHOD-LR
        lr = f"{float(raw):g}"  # one label per value (1e-2 and 0.01 alike)
        for path in Path(folder).glob("*/results.json"):
            data = json.loads(path.read_text())
            key, sign = f"val_{data['metric']}", (1 if data["metric"] == "accuracy" else -1)
            for run in data["runs"]:
                epochs = [e for e in run["epochs"] if e.get(key) is not None]
                # sign * metric: higher is better for both (a failed run: nan, never chosen)
                best = max((sign * e[key] for e in epochs), default=float("nan"))
                seconds = sum(e["seconds"] for e in epochs) / max(len(epochs), 1)
                rows.setdefault(run["method"], {})[lr] = (best, seconds, run["status"], sign)
    lrs = sorted({lr for r in rows.values() for lr in r}, key=float)
    print("| method | " + " | ".join(f"lr {lr}" for lr in lrs) + " | chosen |")
    print("|---|" + "---|" * (len(lrs) + 1))
    for method, by_lr in rows.items():
        cells = [f"{by_lr[lr][3] * by_lr[lr][0]:.4f}" if lr in by_lr else "-" for lr in lrs]
        chosen = max(by_lr, key=lambda lr: by_lr[lr][0] if by_lr[lr][0] == by_lr[lr][0] else -1)
        print(f"| {method} | " + " | ".join(cells) + f" | {chosen} |")


if __name__ == "__main__":
    main(sys.argv[1:])
