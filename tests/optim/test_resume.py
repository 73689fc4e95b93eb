"""An interrupted run (checkpoint, crash with SIGKILL, resume from the last checkpoint) continues
bit-for-bit like the uninterrupted one, in fresh processes."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    r"""
    import os, signal, sys, warnings
    import torch
    from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD

    mode, kind, ckpt, out = sys.argv[1:5]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    cls = {"od": ConstrainedSGLD, "ud": ConstrainedUnderdampedSGLD, "nht": ConstrainedSGNHT}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        opt = cls(model.named_parameters(), lr=0.05, temperature=1e-3, seed=None,
                  constraints={"2.weight": "orthogonal", "0.weight": ("sphere", {"radius": 2.0}),
                               "6.weight": ("circle", {"radius": 0.3}), "*.bias": ("box", {})})
    sched = torch.optim.lr_scheduler.StepLR(opt, 7, gamma=0.7)
    start = 0
    if mode == "resume":
        state = torch.load(ckpt)
        model.load_state_dict(state["model"]); opt.load_state_dict(state["optim"]); sched.load_state_dict(state["sched"])
        start = state["step"]
    for step in range(start, 40):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 2, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
        if (step + 1) % 10 == 0:
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step + 1}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
        if mode == "crash" and step == 25:
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save([p.detach() for p in model.parameters()], out)
    """
)


@pytest.mark.parametrize("kind", ["od", "ud", "nht"])
def test_crash_and_resume_is_bit_for_bit(tmp_path: Path, kind):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)

    def run(mode, ckpt, out):
        return subprocess.run([sys.executable, str(script), mode, kind, str(ckpt), str(out)], capture_output=True, text=True)

    full = run("full", tmp_path / "full.pt", tmp_path / "full_out.pt")
    assert full.returncode == 0, full.stderr
    crash = run("crash", tmp_path / "ckpt.pt", tmp_path / "never.pt")
    assert crash.returncode == -signal.SIGKILL and not (tmp_path / "never.pt").exists()
    resumed = run("resume", tmp_path / "ckpt.pt", tmp_path / "resumed_out.pt")
    assert resumed.returncode == 0, resumed.stderr
    expected = torch.load(tmp_path / "full_out.pt")
    got = torch.load(tmp_path / "resumed_out.pt")
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
