"""The ``notebooks`` extra is enough to open and run the notebooks from the command line, as the README says."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _extra(name: str) -> set[str]:
    """The package names in pyproject.toml's ``name = [...]`` extra (read without tomllib: Python 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(rf"^{name} = \[(.*?)\]", text, re.S | re.M)
    assert block, f"no {name} extra in pyproject.toml"
    return {re.split(r"[<>=!~\[ ]", req)[0].lower() for req in re.findall(r'"([^"]+)"', block[1])}


def test_notebooks_extra_has_a_front_end_and_nbconvert():
    """It used to hold only nbclient/nbformat/ipykernel: no `jupyter lab` to open a notebook, no
    `jupyter nbconvert` to run one from the command line."""
    assert {"jupyterlab", "nbconvert", "ipykernel", "matplotlib", "jupytext"} <= _extra("notebooks")


def test_readme_notebook_commands_use_what_the_extra_installs():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[notebooks]'" in readme
    assert "jupyter lab examples/notebooks/" in readme
    run = re.search(r"jupyter nbconvert --execute --to notebook --output-dir \S+ (examples/notebooks/\S+\.ipynb)",
                    readme)
    assert run and (ROOT / run[1]).is_file()


@pytest.mark.skipif(shutil.which("jupyter-nbconvert") is None, reason="the notebooks extra is not installed")
def test_readme_nbconvert_command_runs_a_notebook(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to", "notebook",
                           "--output-dir", str(tmp_path), "examples/notebooks/backprop_by_hand.ipynb"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "backprop_by_hand.ipynb").is_file()
