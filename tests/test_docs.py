"""The front page and the documentation agree with the data and with CI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_tables_match_their_results_files():
    out = subprocess.run([sys.executable, "scripts/readme_tables.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_is_a_front_page_and_names_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    assert 150 <= len(readme.splitlines()) <= 250
    assert len(re.findall(r"^\|---", readme, re.M)) <= 4  # three headline tables and the optimisers' table
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in readme and "mkdocs build --strict" in ci


def test_ci_runs_readmes_two_commands_as_written():
    """CI reads both commands from README.md (scripts/readme_commands.py) and runs them: the main
    job in a pseudo-terminal (progress bars drawn, a traceback fails), then the tests."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from readme_commands import readme_command
    finally:
        sys.path.pop(0)
    readme = (ROOT / "README.md").read_text()
    main, tests = readme_command("main"), readme_command("tests")
    assert main.endswith("python -m benchmarks run") and "--no-progress" not in main
    assert tests.endswith("python -m pytest -q")
    assert f"\n{main}\n" in readme and f"\n{tests}\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'main_command="$(python3 scripts/readme_commands.py main)"' in ci
    assert 'test_command="$(python3 scripts/readme_commands.py tests)"' in ci
    assert 'script -qec "stty cols 120 rows 40; $main_command"' in ci and 'grep -q "Traceback"' in ci
    assert "drew no progress bar" in ci and 'bash -c "$test_command"' in ci
    # the long tests: README's second test command, left out of the first, run by CI too
    long = readme_command("long")
    assert long.endswith("python -m pytest -q -m long") and f"\n{long}\n" in readme
    assert 'long_command="$(python3 scripts/readme_commands.py long)"' in ci and 'bash -c "$long_command"' in ci
    # the timm tests: their own venv (torchvision's build fixes the torch), run by CI too
    timm = readme_command("timm")
    assert timm.endswith("tests/integrations/test_timm.py") and "torchvision==" in timm and ".venv-timm" in timm
    assert 'timm_command="$(python3 scripts/readme_commands.py timm)"' in ci and 'bash -c "$timm_command"' in ci
    with pytest.raises(SystemExit, match="one line"):
        readme_command("main", "## Two commands\n\nMain job: x\n\n```bash\na\nb\n```\n")


def test_docs_requirements_are_the_docs_extra_without_torch():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["docs"]
    listed = [line.strip() for line in (ROOT / "docs" / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert listed == extra and not any("torch" in r for r in listed)
    assert "pip install -r docs/requirements.txt" in (ROOT / "README.md").read_text()


def test_every_page_of_the_site_is_in_its_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")} | {
        p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs" / "api").glob("*.md")
    }
    missing = sorted(p for p in pages - {"pypi.md"} if p not in nav)
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"


def test_docs_speak_of_versions_and_dates_not_of_sessions():
    hits = [
        str(p.relative_to(ROOT))
        for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
        if re.search(r"\bsessions?\b", p.read_text(), re.I) or "session" in p.name.lower()
    ]
    assert not hits, hits
