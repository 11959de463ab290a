"""The research notebooks in ``examples/notebooks/``: clean, generated, and running top to bottom.

Each notebook runs headless in a fresh ipykernel kernel (nbclient). A cell that raises fails the test, and the
notebooks assert their key claims in cells (manual gradients = autodiff within tolerance, ...), so a wrong
result fails here instead of drawing a wrong picture.

The kernel is pinned to *this* interpreter through a kernelspec written to a temporary directory and handed to
the kernel manager directly: nothing is registered globally, and a ``python3`` kernelspec elsewhere on the
machine (another venv, a user-level install) cannot be picked up by mistake.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "examples" / "notebooks"
NOTEBOOKS = ["backprop_by_hand.ipynb", "gradient_comparison.ipynb", "per_example_gradients.ipynb"]
FIGURE_TAG = "readme-figure"
CELL_TIMEOUT_S = 600  # generous: a loaded CI machine is slow; the notebooks take well under a minute alone


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernelspec for an ipykernel kernel on this interpreter, in a temporary directory."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / "fnn-test-python"
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "fnn tests", "language": "python"}))
    return root


def test_the_notebooks_are_the_expected_ones():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean(name):
    """Committed without outputs or execution counts, with one README-figure cell."""
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {i} has stored outputs"
        assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"
    tagged = [c for c in code if FIGURE_TAG in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected one cell tagged {FIGURE_TAG!r}, found {len(tagged)}"


def test_notebooks_match_their_generator(capsys):
    """The committed notebooks are exactly what scripts/make_notebooks.py writes (edit the generator, not them)."""
    assert _load_generator().main(["--check"]) == 0, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, kernel_dir, tmp_path):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    km = AsyncKernelManager(kernel_name="fnn-test-python", kernel_spec_manager=specs)
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,  # the first failing cell raises CellExecutionError with its traceback
        resources={"metadata": {"path": str(tmp_path)}},  # run in a scratch directory
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # The README figure cell displayed exactly one PNG.
    (figure_cell,) = [c for c in nb.cells if FIGURE_TAG in c.metadata.get("tags", [])]
    pngs = [o["data"]["image/png"] for o in figure_cell.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG")
    # Every notebook ends by printing its run time; make sure the last cell ran.
    assert "notebook ran in" in "".join(o.get("text", "") for o in nb.cells[-1].outputs)
