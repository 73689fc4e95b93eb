"""Print one of README.md's "Two commands", exactly as written there: CI runs them through this
script, so what a user copies from the front page is what CI runs.

    python3 scripts/readme_commands.py main    # the main job (the benchmarks on real data)
    python3 scripts/readme_commands.py tests   # the test suite
    python3 scripts/readme_commands.py long    # the long tests (in the tests' venv)
    python3 scripts/readme_commands.py timm    # the timm tests (a venv of their own)

Uses the standard library only: CI calls it before any virtual environment exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
#: the paragraph that introduces each command starts with these words
INTRODUCED_BY = {"main": "Main job", "tests": "Tests", "long": "The long tests", "timm": "The timm tests"}


def readme_command(which: str, text: str | None = None) -> str:
    """The one-line bash command of the first ```bash block after the paragraph that starts with
    ``INTRODUCED_BY[which]`` in the "Two commands" section."""
    text = README.read_text() if text is None else text
    section = text.split("## Two commands", 1)
    if len(section) != 2:
        raise SystemExit("README.md has no '## Two commands' section")
    body = section[1].split("\n## ", 1)[0]
    start = re.search(rf"^{re.escape(INTRODUCED_BY[which])}\b", body, re.M)
    if start is None:
        raise SystemExit(f"README.md's 'Two commands' has no paragraph starting with {INTRODUCED_BY[which]!r}")
    block = re.search(r"```bash\n(.*?)\n```", body[start.start():], re.S)
    if block is None:
        raise SystemExit(f"no ```bash block after {INTRODUCED_BY[which]!r} in README.md")
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    if len(lines) != 1:
        raise SystemExit(f"the {which} command in README.md must be one line, got {len(lines)}")
    return lines[0]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in INTRODUCED_BY:
        raise SystemExit(f"usage: readme_commands.py {{{','.join(INTRODUCED_BY)}}}")
    print(readme_command(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
