"""The research notebooks in ``examples/notebooks/``: in sync with their sources, clean, and running top to bottom.

Each notebook's source is a jupytext percent-format script ``NAME.py`` (linted like any other Python file); the
committed ``NAME.ipynb`` is what ``jupytext --to ipynb --update examples/notebooks/*.py`` makes of it (``--update``
keeps the cell ids), and the sync tests fail when the two drift apart.

Each notebook runs headless in a fresh ipykernel kernel (nbclient). A cell that raises fails the test, and the
notebooks assert their key claims in cells (manual gradients = autodiff within tolerance, ...), so a wrong
result fails here instead of drawing a wrong picture.

The kernel is pinned to *this* interpreter through a kernelspec written to a temporary directory and handed to
the kernel manager directly: nothing is registered globally, and a ``python3`` kernelspec elsewhere on the
machine (another venv, a user-level install) cannot be picked up by mistake.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupytext.cli import jupytext as jupytext_cli
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "examples" / "notebooks"
NOTEBOOKS = ["backprop_by_hand.ipynb", "convolution_backprop.ipynb", "edge_of_stability.ipynb",
             "gradient_comparison.ipynb", "per_example_gradients.ipynb"]
FIGURE_TAG = "readme-figure"
CELL_TIMEOUT_S = 600  # generous: a loaded CI machine is slow; the notebooks take well under a minute alone


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple[str, ...]]]:
    """What a notebook's source decides about each cell: its type, its source and its tags."""
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def sync_problems(source: Path, notebook: Path) -> list[str]:
    """How ``notebook`` differs from what jupytext makes of ``source`` (cell types, sources, tags); [] if in sync."""
    want, got = _cells(jupytext.read(source)), _cells(nbformat.read(notebook, as_version=4))
    problems = []
    if len(want) != len(got):
        problems.append(f"{notebook.name} has {len(got)} cells, {source.name} makes {len(want)}")
    for i, (w, g) in enumerate(zip(want, got, strict=False)):  # (to the shorter: the counts are reported above)
        for field, a, b in zip(("cell type", "source", "tags"), w, g, strict=True):
            if a != b:
                problems.append(f"cell {i}: {field} differs: {notebook.name} has {b!r:.80}, {source.name} {a!r:.80}")
    return problems


def regenerated(source: Path, notebook: Path, tmp_path: Path) -> str:
    """The bytes ``jupytext --to ipynb --update`` writes for ``source``, run on copies (with the folder's config)."""
    for path in (source, notebook, NOTEBOOK_DIR / "jupytext.toml"):
        shutil.copy(path, tmp_path / path.name)
    assert jupytext_cli(["--quiet", "--to", "ipynb", "--update", str(tmp_path / source.name)]) == 0
    return (tmp_path / notebook.name).read_text(encoding="utf-8")


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


def test_every_notebook_has_its_source_and_every_source_its_notebook():
    sources = {p.stem for p in NOTEBOOK_DIR.glob("*.py")}
    notebooks = {p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")}
    assert not notebooks - sources, f"notebooks without a .py source: {sorted(notebooks - sources)}"
    assert not sources - notebooks, f".py sources without a notebook (run jupytext): {sorted(sources - notebooks)}"


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


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_matches_its_source(name):
    """The .ipynb has exactly the cells of its .py (edit the .py, then regenerate; see the module docstring)."""
    source, notebook = NOTEBOOK_DIR / f"{Path(name).stem}.py", NOTEBOOK_DIR / name
    problems = sync_problems(source, notebook)
    fix = "edit the .py, then run: jupytext --to ipynb --update examples/notebooks/*.py"
    assert not problems, f"{name} is out of sync with its source ({fix}):\n" + "\n".join(problems)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_byte_for_byte_what_jupytext_writes(name, tmp_path):
    """Regenerating changes nothing at all: cell ids, metadata and formatting included."""
    source, notebook = NOTEBOOK_DIR / f"{Path(name).stem}.py", NOTEBOOK_DIR / name
    assert regenerated(source, notebook, tmp_path) == notebook.read_text(encoding="utf-8")


EDITS = {
    "source": lambda text: text.replace("assert report.ok", "assert report.ok or True", 1),
    "tags": lambda text: text.replace('# %% tags=["readme-figure"]', "# %%", 1),
    "cell type": lambda text: text.replace("# %% [markdown]\n# ## 2.", "# %%\n# ## 2.", 1),
    "a new cell": lambda text: text + '\n# %%\nprint("one more cell")\n',
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_the_sync_checks_catch_an_edited_source(edit, tmp_path):
    """The sync tests can fail: an edited copy of a source no longer matches the committed notebook."""
    source, notebook = NOTEBOOK_DIR / "backprop_by_hand.py", NOTEBOOK_DIR / "backprop_by_hand.ipynb"
    assert not sync_problems(source, notebook)
    edited = tmp_path / "edited" / source.name
    edited.parent.mkdir()
    text = source.read_text(encoding="utf-8")
    edited.write_text(EDITS[edit](text), encoding="utf-8")
    assert edited.read_text(encoding="utf-8") != text, f"the {edit!r} edit did not apply"
    problems = sync_problems(edited, notebook)
    expected = "cells" if edit == "a new cell" else edit
    assert any(expected in p for p in problems), problems
    assert regenerated(edited, notebook, tmp_path) != notebook.read_text(encoding="utf-8")


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
