"""The examples run as a new user would run them."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_shows_no_violation_for_the_unconstrained_optimiser():
    out = subprocess.run(
        [sys.executable, "examples/quickstart.py", "--epochs", "1"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    ).stdout
    rows = {line.split("  ")[0]: line for line in out.splitlines() if "test accuracy" in line}
    assert rows["sgd-momentum"].split("largest violation")[1].split()[0] == "–"
    assert all("e-0" in line.split("largest violation")[1] for name, line in rows.items() if name != "sgd-momentum")


def test_parallel_chains_pools_samples_that_stay_on_the_sphere():
    out = subprocess.run(
        [sys.executable, "examples/parallel_chains.py", "--chains", "2", "--steps", "500"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    assert "2 chains x" in out
    violation = float(out.rsplit("|w| = 1:", 1)[1].split()[0])
    assert violation < 1e-5


def test_ddp_example_keeps_replicas_identical_and_resumes_to_the_same_end(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    # --standalone: a free port per launch (back-to-back launches on the default port can find it
    # still taken by the previous one)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "examples/ddp_train.py", "--steps", "20"]

    def run(extra):
        proc = subprocess.run(launch + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return proc.stdout

    straight = run([])
    first = run(["--checkpoint", str(checkpoint)])
    resumed = run(["--checkpoint", str(checkpoint)])
    assert "saved" in first and "saved" not in resumed
    for out in (straight, first, resumed):
        assert "ranks identical: True" in out
    final = [next(line for line in out.splitlines() if line.startswith("step 20:")) for out in (straight, first, resumed)]
    assert final[0] == final[1] == final[2]


def test_transformer_example_keeps_its_blocks_orthogonal_and_scores_the_posterior_average():
    out = subprocess.run(
        [sys.executable, "examples/transformer.py", "--steps", "30", "--batch", "4", "--context", "32", "--temperature", "2e-7", "--text", "README.md"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    assert "step 30: train loss" in out
    last = float(out.split("validation bpc ", 1)[1].split()[0])
    average = float(out.split("validation bpc ")[2].split()[0])
    assert 0 < last < 8 and 0 < average < 8  # finite, below a uniform guess over README's ~90 characters (6.5 bits) plus slack
    assert "posterior average of" in out
    assert float(out.rsplit("orthogonal blocks:", 1)[1].split()[0]) < 1e-4


def test_huggingface_example_keeps_q_k_v_orthogonal():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = subprocess.run(
        [sys.executable, "examples/huggingface.py", "--steps", "6"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    ).stdout
    assert float(out.split("from orthogonal")[1].split()[0]) < 1e-4


def test_lightning_example_keeps_its_sets():
    pytest.importorskip("lightning.pytorch")
    out = subprocess.run(
        [sys.executable, "examples/lightning_train.py", "--epochs", "1"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    ).stdout
    assert float(out.split("|W^T W - I| = ")[1].split(";")[0]) < 1e-4


def test_ensemble_chains_example_pools_every_members_chain_at_the_ensembles_cost():
    out = subprocess.run(
        [sys.executable, "examples/ensemble_chains.py", "--members", "2", "--epochs", "3", "--sample-epochs", "1"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    ensemble, chains = (line for line in out.splitlines() if "test accuracy" in line)
    assert ensemble.startswith("deep ensemble (2 members x 3 epochs)") and "10 snapshots x 2 chains" in chains
    for line in (ensemble, chains):
        assert 0.3 < float(line.split("test accuracy ")[1].split()[0]) <= 1 and 0 < float(line.split("NLL ")[1].split()[0]) < 1.2
