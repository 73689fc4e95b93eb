"""Cost of the shakespeare-gpt methods: time per training iteration and of the optimiser step alone,
against AdamW's, measured in one process with the methods interleaved (every round times each
method once, so a slow spell of a shared machine falls on all of them), and where the orthogonal
step's time goes (torch.profiler's top operators).

    python scripts/transformer_cost.py [--preset quick] [--threads 1] [--rounds 5] [--device cpu] [--out FILE.json]
    python scripts/transformer_cost.py --plot RESULTS_DIR --timings FILE.json   # the plot only

The model and batch are the preset's; the characters are random (the cost does not depend on the
text), so nothing is downloaded. Prints a Markdown table (medians over the rounds) and writes the
raw timings to ``--out``. ``--plot`` draws a round's validation bits per character against the
training time each method would take alone (its steps times its measured iteration time): the
times recorded during a round depend on how many runs shared the cores.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.methods import METHODS  # noqa: E402
from benchmarks.tasks import TASKS  # noqa: E402

DEFAULT_METHODS = "adamw,muon,geotorch-orthogonal-adamw,ngpt-adam,ngpt-s-cola-ud,ngpt-s-cola-ud-rms,o-cola-ud-rms,o-cola-ud-rms-tempered,o-spectral,o-spectral-project,ngpt-s-adam,ngpt-s-spectral"


class RandomText(TASKS["shakespeare-gpt"]):
    def prepare(self):
        g = torch.Generator().manual_seed(0)
        self.chars = [chr(32 + i) for i in range(84)]  # the plays' alphabet size
        self.train_ids = torch.randint(0, 84, (200_000,), generator=g).to(self.device)
        self.val_ids = self.test_ids = self.train_ids[:1000]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(task, name, seed=0):
    method = METHODS[name]
    torch.manual_seed(seed)
    model = (task.build_model(method.variant) if method.variant else task.build_model()).to(task.device)
    optimizer, _, _ = method.build(model, task, seed)
    return model, optimizer


def iteration(task, model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    task.loss(model, x, y)[0].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), task.hp["clip"])
    optimizer.step()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=5, help="iterations timed per method and round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--plot", default=None, help="a round's results folder (with results.json): draw time-alone.png there")
    parser.add_argument("--timings", default=None, help="with --plot: the timings file an earlier run wrote (--out)")
    args = parser.parse_args(argv)
    if args.plot:
        from benchmarks.report import plot_against_time

        medians = json.loads(Path(args.timings).read_text())["medians"]
        folder = Path(args.plot)
        results = json.loads((folder / "results.json").read_text())
        plot_against_time(results, folder / "time-alone.png", {m: v["iteration"] for m, v in medians.items()})
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    task = RandomText(args.preset, device)
    task.prepare()
    names = args.methods.split(",")
    built = {n: build(task, n) for n in names}
    x, y = next(iter(task.batches(torch.Generator().manual_seed(0))))
    for model, optimizer in built.values():  # warm-up: states created, kernels chosen
        for _ in range(2):
            iteration(task, model, optimizer, x, y)
    times = {n: {"iteration": [], "step": []} for n in names}
    for _ in range(args.rounds):
        for n in names:
            model, optimizer = built[n]
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.iterations):
                iteration(task, model, optimizer, x, y)
            _sync(device)
            times[n]["iteration"].append((time.perf_counter() - start) / args.iterations)
            start = time.perf_counter()
            for _ in range(args.iterations):
                optimizer.step()  # the last gradients again: the step's cost alone
            _sync(device)
            times[n]["step"].append((time.perf_counter() - start) / args.iterations)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    base = med[names[0]]
    s = task.settings
    print(f"shakespeare-gpt {args.preset}: d {s['d']}, {s['layers']} layers, context {s['block']}, batch {s['batch_size']}; "
          f"{device.type}, {torch.get_num_threads()} threads; medians of {args.rounds} interleaved rounds of {args.iterations}")
    print(f"| method | iteration (ms) | x {names[0]} | step alone (ms) | x {names[0]}'s step | step's share of the iteration |")
    print("|---|---|---|---|---|---|")
    for n in names:
        m = med[n]
        print(f"| {n} | {1e3 * m['iteration']:.1f} | {m['iteration'] / base['iteration']:.2f} | {1e3 * m['step']:.2f} | "
              f"{m['step'] / base['step']:.2f} | {m['step'] / m['iteration']:.0%} |")
    profile = next((n for n in names if n.startswith("o-cola")), None)
    if profile is not None:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        model, optimizer = built[profile]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(args.iterations):
                optimizer.step()
            _sync(device)
        print(f"\n{profile}: where the step's time goes (self time, top operators)")
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=8))
    if args.out:
        Path(args.out).write_text(json.dumps({"preset": args.preset, "settings": s, "device": str(device), "threads": torch.get_num_threads(),
                                              "torch": torch.__version__, "times": times, "medians": med}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
