"""Checkpoints of one training run, so that a killed run can be resumed (``run --resume``).

A checkpoint holds everything the rest of the run depends on: the model's and the optimiser's state
dicts (the optimiser's noise generators included), the lr scheduler's, the batch-order generator's
and torch's global generators' states, the record so far (curves, elapsed training time), and the
posterior collector's and chain trace's states where the run has them. Resuming from it continues
the run exactly: the resumed run's results equal an uninterrupted run's bit for bit (timings aside).

It is written at every evaluation, atomically (written to a temporary file, then renamed over the
old one), so a run killed at any moment loses at most one evaluation interval and never leaves a
half-written checkpoint. It is removed once the run's record is in ``results.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

FORMAT = 1  # bumped when the layout changes; an older checkpoint is refused, not misread


def checkpoint_path(folder: Path, method: str, seed: int) -> Path:
    """Where the run of ``method`` at ``seed`` keeps its checkpoint under a task's results folder."""
    return folder / "checkpoints" / f"{method}-seed{seed}.pt"


def save_checkpoint(path: Path, payload: Dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a reader sees the old checkpoint or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(dict(payload, format=FORMAT), f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
    os.replace(tmp, path)


def load_checkpoint(path: Path, configuration: Dict[str, Any], method: str, seed: int) -> Optional[Dict[str, Any]]:
    """The checkpoint at ``path``, or None where there is none. Raises SystemExit when it belongs to
    another configuration, method or seed, or to another checkpoint format (resuming it would mix
    two runs), saying which and what to do."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)  # our own file: generator states, records
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise SystemExit(f"{path}: cannot read the checkpoint ({e}); remove it to start that run again") from None
    if payload.get("format") != FORMAT:
        raise SystemExit(f"{path}: checkpoint format {payload.get('format')!r}, this version reads {FORMAT}; remove it to start that run again")
    theirs = {"configuration": payload.get("configuration"), "method": payload.get("method"), "seed": payload.get("seed")}
    mine = {"configuration": configuration, "method": method, "seed": seed}
    if theirs != mine:
        differ = [k for k in mine if theirs[k] != mine[k]]
        raise SystemExit(f"{path}: the checkpoint is of another run (differing in: {', '.join(differ)}); remove it, or resume with the settings it was made with")
    return payload


def rng_states(device: torch.device) -> Dict[str, Any]:
    """torch's global generators: the CPU one, and the device's where it is CUDA."""
    states: Dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
