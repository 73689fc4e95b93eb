"""``run --resume``: a run interrupted after an evaluation continues from its checkpoint, and its
results equal an uninterrupted run's bit for bit (timings aside)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from benchmarks.tasks.recurrent import CopyMemory
from benchmarks.tasks.spirals import TwoSpirals

ROOT = Path(__file__).resolve().parents[2]
COPY = ["--task", "copy", "--preset", "smoke", "--set", "epochs=4", "--no-progress"]
# the copy task's methods cover every kind of state: torch's optimisers, geotorch's parametrisation,
# the LSTM, both Langevin schemes (noise generators) and the adaptive mass
COPY_METHODS = "rmsprop,lstm-rmsprop,geotorch-orthogonal,o-cola-ud,o-cola-nht,o-cola-od-rms"
# a tempered run keeps posterior samples and a chain trace: their states are in the checkpoint too
SPIRALS = ["--task", "two-spirals", "--preset", "smoke", "--set", "epochs=4", "--set", "train_per_class=20", "--set", "test_per_class=50", "--set", "eval_every=1", "--no-progress"]

TIMINGS = {"seconds", "trace_seconds", "posterior_seconds"}


def without_timings(results):
    """The runs of a results.json, keyed by (method, seed), without what only the clock decides."""
    runs = {}
    for r in results["runs"]:
        r = dict(r, epochs=[{k: v for k, v in e.items() if k not in TIMINGS} for e in r["epochs"]])
        r.pop("resumed", None)
        runs[(r["method"], r["seed"])] = r
    return runs


def interrupt_at_evaluation(monkeypatch, task_cls, n):
    """Make the n-th evaluation (counted over the whole command) raise KeyboardInterrupt, as Ctrl-C
    would: after the (n-1)-th evaluation's checkpoint, in the middle of a run."""
    real = task_cls.evaluate
    calls = []

    def evaluate(self, model):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(self, model)

    monkeypatch.setattr(task_cls, "evaluate", evaluate)


@pytest.mark.parametrize(
    "args,methods,task_cls,stop_at",
    [(COPY, COPY_METHODS, CopyMemory, 4 + 4 + 3), (SPIRALS, "c-cola-ud,o-cola-od", TwoSpirals, 4)],
    ids=["copy", "two-spirals-tempered"],
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, args, methods, task_cls, stop_at):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(["run", *args, "--methods", methods, "--out", str(straight)]) == 0
    with monkeypatch.context() as m:
        interrupt_at_evaluation(m, task_cls, stop_at)  # copy: the third method's third epoch; spirals: the first method's fourth, past burn-in
        assert main(["run", *args, "--methods", methods, "--out", str(broken)]) == 130
    task = args[1]
    folder = broken / task
    interrupted = [p.name for p in (folder / "checkpoints").iterdir()]
    assert len(interrupted) == 1, interrupted
    assert main(["run", *args, "--methods", methods, "--out", str(broken), "--resume"]) == 0
    want = without_timings(json.loads((straight / task / "results.json").read_text()))
    results = json.loads((folder / "results.json").read_text())
    got = without_timings(results)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key  # every loss, accuracy, violation, diagnostic: equal, not close
    resumed = {(r["method"], r["seed"]): r.get("resumed", 0) for r in results["runs"]}
    assert sorted(resumed.values()) == [0] * (len(resumed) - 1) + [1]
    assert not (folder / "checkpoints").exists()  # finished runs leave no checkpoint behind
    if task == "copy":  # the per-step curve, and its plot
        assert len(results["runs"][0]["epochs"][0]["step_loss"]) == 10 and (folder / "steps.png").stat().st_size > 0
    if task == "two-spirals":
        assert "posterior_accuracy" in results["runs"][0]["epochs"][-1] and results["runs"][0]["chain_trace"]


def test_resume_skips_finished_runs_and_refuses_another_runs_checkpoint(tmp_path, capsys):
    out = tmp_path / "res"
    args = ["run", *SPIRALS, "--methods", "sgd", "--out", str(out)]
    assert main(args) == 0
    before = (out / "two-spirals" / "results.json").read_text()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "already in results.json, not run again" in capsys.readouterr().out
    assert json.loads((out / "two-spirals" / "results.json").read_text())["runs"] == json.loads(before)["runs"]
    # a checkpoint saved by another configuration is refused, naming what differs
    path = checkpoint_path(out / "two-spirals", "sgd", 0)
    save_checkpoint(path, {"configuration": {"preset": "quick"}, "method": "sgd", "seed": 0})
    with pytest.raises(SystemExit, match="another run .*configuration"):
        main(args + ["--resume"])
    with pytest.raises(SystemExit, match="another run .*seed"):
        load_checkpoint(path, {"preset": "quick"}, "sgd", 1)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot read the checkpoint"):
        main(args + ["--resume"])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"configuration": {}, "method": "m", "seed": 0, "x": 1})

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        save_checkpoint(path, {"configuration": {}, "method": "m", "seed": 0, "x": 2})
    assert load_checkpoint(path, {}, "m", 0)["x"] == 1  # the old checkpoint is intact


def test_killed_process_resumes(tmp_path):
    """The real thing: SIGKILL the benchmark process once a checkpoint exists, then --resume."""
    out = tmp_path / "res"
    args = [sys.executable, "-m", "benchmarks", "run", "--task", "copy", "--preset", "smoke", "--set", "epochs=30",
            "--methods", "o-cola-ud", "--no-progress", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    straight = subprocess.run(args + ["--out", str(tmp_path / "straight")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen(args + ["--out", str(out)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = checkpoint_path(out / "copy", "o-cola-ud", 0)
    deadline = time.monotonic() + 120
    while not path.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not path.is_file():
        pytest.fail("the run ended before its first checkpoint: nothing was interrupted")
    resumed = subprocess.run(args + ["--out", str(out), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((out / "copy" / "results.json").read_text())
    assert got["runs"][0]["resumed"] == 1
    assert without_timings(got) == without_timings(json.loads((tmp_path / "straight" / "copy" / "results.json").read_text()))


def test_a_run_that_ends_before_its_first_checkpoint_is_saved(tmp_path, monkeypatch):
    """A run that diverges in its first epoch writes no checkpoint: its record is still saved."""
    from benchmarks import runner

    def diverge(task, method, seed, *args, **kwargs):
        return {"method": method.name, "seed": seed, "hyperparameters": {}, "epochs": [], "status": "diverged at epoch 1: x", "max_violation": None}

    monkeypatch.setattr(runner, "train_one", diverge)
    out = tmp_path / "res"
    assert main(["run", *SPIRALS, "--methods", "sgd", "--out", str(out)]) == 0
    assert json.loads((out / "two-spirals" / "results.json").read_text())["runs"][0]["status"].startswith("diverged")
