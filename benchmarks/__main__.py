"""python -m benchmarks {run,list,report,speed}: constrained SGLD against the usual optimisers on real data."""

from __future__ import annotations

import argparse
import dataclasses
import ast
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

PRESETS = ("smoke", "quick", "paper")


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string setting (e.g. dataset=cifar10)


def _overrides(pairs: List[str]) -> Dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = _value(value.strip())
    return out


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch")
    return device


def cmd_list(args) -> int:
    from .methods import METHODS
    from .tasks import TASKS

    print("tasks:")
    for name, task in TASKS.items():
        # what `run` accepts for the task (its sets, model variants and hyper-parameters); a
        # method short of an optional package is listed with what to install
        instance = task("quick", torch.device("cpu"))
        methods = []
        for m in METHODS.values():
            missing = m.missing()
            if missing:
                m = dataclasses.replace(m, requires=())
            if m.applies_to(instance):
                methods.append(m.name + (f" (needs {', '.join(missing)})" if missing else ""))
        print(f"  {name:20s} {task.description}")
        print(f"  {'':20s} data: {task.data_source}; metric: {task.metric}")
        print(f"  {'':20s} methods: {', '.join(methods)}")
    print("methods:")
    for m in METHODS.values():
        print(f"  {m.name:20s} {m.description}")
    print("presets:")
    print("  smoke   every task in under a minute (CI runs it)")
    print("  quick   under 10 minutes per task and seed on 2 CPU cores (the default)")
    print("  paper   the papers' settings where they exist (hours)")
    for name, task in TASKS.items():
        print(f"  {name}: " + "; ".join(f"{p}: {', '.join(f'{k}={v}' for k, v in s.items())}" for p, s in task.presets.items()))
    return 0


def cmd_run(args) -> int:
    from .data import DataCorrupted, DataUnavailable
    from .methods import METHODS
    from .runner import check_no_results_lost, check_writable, plan_task, run_task
    from .tasks import TASKS

    tasks = list(TASKS) if args.task == "all" else args.task.split(",")
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"--task {t!r}: unknown; choose from {', '.join(TASKS)} or all")
    methods = args.methods.split(",") if args.methods else None
    for m in methods or []:
        if m not in METHODS and methods != ["all"]:
            raise SystemExit(f"--methods {m!r}: unknown; choose from {', '.join(METHODS)}")
    if args.seeds < 1:
        raise SystemExit(f"--seeds {args.seeds}: the number of seeds must be at least 1")
    if args.first_seed < 0:
        raise SystemExit(f"--first-seed {args.first_seed}: seeds are integers >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = _overrides(args.set)
    device = _device(args.device)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    out = Path(args.out)
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    tensorboard = Path(args.tensorboard) if args.tensorboard else None
    if tensorboard is not None:
        from .runner import require_tensorboard

        require_tensorboard()  # fails now, saying what to install, rather than after the first run
    # everything that can be checked is checked before the first run
    plans = []
    for t in tasks:
        try:
            plans.append(plan_task(t, args.preset, methods, device, overrides))
        except SystemExit:
            if args.task != "all":
                raise
            print(f"[{t}] skipped: none of --methods fits it", file=sys.stderr)
    if not plans:
        raise SystemExit(f"--methods {args.methods}: none fits any task")
    check_writable(out)
    for task, _ in plans:
        check_no_results_lost(task, out)
    try:
        for task, chosen in plans:
            run_task(task, chosen, seeds, out, progress=not args.no_progress, command=command, tensorboard=tensorboard, resume=args.resume)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are saved in {out}/<task>/results.json, the interrupted one's last "
              f"checkpoint in {out}/<task>/checkpoints/; the same command with --resume continues it; "
              f"`python -m benchmarks report --out {out}` rebuilds the tables", file=sys.stderr)
        return 130
    except (DataUnavailable, DataCorrupted) as e:
        print(f"error: {e}", file=sys.stderr)  # the message says what to do; a traceback would bury it
        return 1
    from .report import rebuild

    rebuild(out)
    print(f"results in {out}/: " + ", ".join(f"{task.name}/results.md" for task, _ in plans) + ", report.md")
    return 0


def cmd_report(args) -> int:
    from .report import rebuild

    found = rebuild(Path(args.out))
    if not found:
        print(f"no results.json under {args.out}/", file=sys.stderr)
        return 1
    print(f"rebuilt {len(found)} task report(s) and {args.out}/report.md")
    return 0


def cmd_speed(args) -> int:
    from .speed import main as speed_main

    return speed_main(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from .methods import METHODS
    from .tasks import TASKS

    run = sub.add_parser(
        "run",
        help="train methods on a task and write results.json, results.md, curves.png",
        description="Train methods on a task and write DIR/<task>/results.json, results.md and curves.png. "
        f"Tasks: {', '.join(TASKS)}. Methods: {', '.join(METHODS)} (`list` shows which fit which task).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--task", default="fmnist-mlp", help="a task name, several separated by commas, or all")
    run.add_argument("--preset", default="quick", choices=PRESETS, help="sizes and lengths (`list` shows each task's)")
    run.add_argument("--seeds", type=int, default=1, help="number of seeds, at least 1")
    run.add_argument("--first-seed", type=int, default=0, help="the first seed")
    run.add_argument("--methods", default=None, help="comma-separated method names, or all: every method that fits the task (default: the task's headline list, else every method that fits)")
    run.add_argument("--out", default="results", help="results folder; runs of the same configuration merge there, another configuration is refused")
    run.add_argument("--device", default="cpu", help="cpu or cuda")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset setting or hyper-parameter (repeatable)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--resume", action="store_true",
        help="continue interrupted runs from their checkpoints (written at every evaluation) and skip runs already in results.json; "
        "the resumed results equal an uninterrupted run's",
    )
    run.add_argument(
        "--tensorboard", metavar="DIR", default=None,
        help="also write each epoch's metrics and optimiser diagnostics for TensorBoard to DIR/<task>/<method>/seed<n> (needs tensorboard)",
    )
    run.set_defaults(fn=cmd_run)

    lst = sub.add_parser("list", help="list tasks, methods and presets")
    lst.set_defaults(fn=cmd_list)

    rep = sub.add_parser("report", help="rebuild tables and plots from saved results")
    rep.add_argument("--out", default="results")
    rep.set_defaults(fn=cmd_report)

    speed = sub.add_parser("speed", help="step and iteration timings against SGD, geotorch and a research-script-style step")
    speed.add_argument("--preset", default="quick", choices=("smoke", "quick"))
    speed.add_argument("--device", default="cpu")
    speed.add_argument("--out", default="results")
    speed.add_argument("--threads", type=int, default=None)
    speed.add_argument("--rows", default=None, help="comma-separated row numbers to run (default: every row; 2 runs rows 2 and 3)")
    speed.set_defaults(fn=cmd_speed)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
