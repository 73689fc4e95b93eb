"""Branch an ensemble-started chain's benchmark checkpoint into its temperature control.

Before the switch, an `OptimiseThenSample` run is at temperature 0 whatever its sampling
temperature: the sampling temperature is read only at the switch (the groups'
``initial_temperature``). So a run at T = 1/N and its T = 0 control are the same computation up
to there, and a checkpoint taken before the switch, given the other temperature, continues exactly
as a fresh control run would (`--resume`). This saves the optimisation stage's gradients a second
time (15 of the 18 epochs in the posterior round's longer budget).

    python scripts/branch_checkpoint.py SRC.pt DST.pt --set ens_temperature=0.0

SRC is refused from the switch on (the run's last checkpoint before it is the one to branch). The branched record says where it branched from
(``branched_from``); `--resume` counts it as resumed once.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.checkpoint import save_checkpoint  # noqa: E402


def branch(payload, key, value):
    """``payload`` (a benchmark checkpoint) with the sampling temperature hyper-parameter ``key``
    set to ``value``: in the configuration the resumed run is checked against, in the groups'
    ``initial_temperature`` the switch reads, and in the run's record."""
    scheduler = payload.get("scheduler") or {}
    if "optimise_steps" not in scheduler:
        raise SystemExit("branch_checkpoint: the checkpoint's run has no OptimiseThenSample stage to branch before")
    # at the switch itself the groups are already at the sampling temperature, and the record's
    # last diagnostics read it (a noise norm of nan where the control's is 0): branch before it
    if scheduler["last_epoch"] >= scheduler["optimise_steps"]:
        raise SystemExit(f"branch_checkpoint: the checkpoint is at step {scheduler['last_epoch']}, at or past the switch at "
                         f"{scheduler['optimise_steps']}: it has sampled already, so it is not the control's state")
    hparams = payload["configuration"]["task_hparams"]
    if key not in hparams:
        raise SystemExit(f"branch_checkpoint: no task hyper-parameter {key!r} in the checkpoint's configuration")
    hparams[key] = value
    for group in payload["optimizer"]["param_groups"]:
        if "initial_temperature" in group:
            group["initial_temperature"] = value
    record = payload["record"]
    record["hyperparameters"]["temperature"] = value
    record["branched_from"] = (f"{payload['method']} seed {payload['seed']} at epoch {payload['epoch']} "
                               f"(step {scheduler['last_epoch']} of {scheduler['optimise_steps']} at T = 0)")
    return payload


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--set", required=True, metavar="KEY=VALUE", help="the sampling temperature's task hyper-parameter and its new value")
    args = parser.parse_args(argv)
    key, _, value = args.set.partition("=")
    payload = torch.load(args.src, map_location="cpu", weights_only=False)  # our own file
    save_checkpoint(args.dst, {k: v for k, v in branch(payload, key, float(value)).items() if k != "format"})
    print(f"{args.dst}: {payload['record']['branched_from']}, {key} = {value}")


if __name__ == "__main__":
    main()
