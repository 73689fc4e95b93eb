"""What a user installing the package gets: typed, described, importable, a clean sdist."""

import importlib.metadata
import importlib.resources
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_is_typed():
    assert importlib.resources.files("constrained_sgld").joinpath("py.typed").is_file()


def test_metadata_has_classifiers_and_a_self_contained_description():
    meta = importlib.metadata.metadata("constrained-sgld")
    assert any(c.startswith("Typing :: Typed") for c in meta.get_all("Classifier") or [])
    description = (ROOT / "docs" / "pypi.md").read_text()
    assert "](" not in description.replace("](http", "")  # no relative links or images


def test_sdist_carries_no_partial_test_suite(tmp_path):
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=True)
    name = out.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        names = sdist.getnames()
    assert any(n.endswith("constrained_sgld/optim/base.py") for n in names)
    assert any(n.endswith("constrained_sgld/py.typed") for n in names)
    assert not any("/tests/" in n for n in names)
