"""CI runs what the README promises: the linter first, then exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_after_ruff():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    assert test_command in ci, f"README's test command {test_command!r} is not a line of .ci/run"
    ruff = next(i for i, line in enumerate(ci) if line.startswith(".venv/bin/ruff check"))
    assert ruff < ci.index(test_command), "ruff must run before the tests"


def test_ruff_is_in_the_test_extra_and_configured():
    pyproject = (ROOT / "pyproject.toml").read_text()
    test_extra = pyproject.split("test = [", 1)[1].split("]", 1)[0]
    assert '"ruff' in test_extra
    rules = re.search(r'select = \[(.*?)\]', pyproject).group(1)
    for family in ("F", "E", "W", "I", "B"):  # pyflakes, pycodestyle, isort, bugbear
        assert f'"{family}"' in rules
    assert "line-length = 120" in pyproject
