"""The front page and the documentation agree with the data and with CI."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_tables_match_their_results_files():
    out = subprocess.run([sys.executable, "scripts/readme_tables.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_is_a_front_page_and_names_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    assert 150 <= len(readme.splitlines()) <= 250
    assert len(re.findall(r"^\|---", readme, re.M)) <= 4  # three headline tables and the optimisers' table
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in readme and "\npython -m pytest -q\n" in ci
    assert "mkdocs build --strict" in readme and "mkdocs build --strict" in ci


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
