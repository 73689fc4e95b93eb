"""The examples run as a new user would run them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_shows_no_violation_for_the_unconstrained_optimiser():
    out = subprocess.run(
        [sys.executable, "examples/quickstart.py", "--epochs", "1"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    ).stdout
    rows = {line.split("  ")[0]: line for line in out.splitlines() if "test accuracy" in line}
    assert rows["sgd-momentum"].split("largest violation")[1].split()[0] == "–"
    assert all("e-0" in line.split("largest violation")[1] for name, line in rows.items() if name != "sgd-momentum")
