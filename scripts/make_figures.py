"""Execute the research notebooks and write their README figures to ``docs/figures/<notebook>.png``.

Each notebook in ``examples/notebooks/`` has one cell tagged ``readme-figure`` (``# %% tags=["readme-figure"]``
in its jupytext source ``NAME.py``); this script runs the notebook top to bottom headless (nbclient, an ipykernel
kernel on this interpreter), so the figure is exactly what the notebook draws, and its assertions hold for it.
Nothing is written back to the notebooks: they stay without stored outputs.

    python scripts/make_figures.py                      # all notebooks
    python scripts/make_figures.py backprop_by_hand     # one
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "examples" / "notebooks"
FIGURES = ROOT / "docs" / "figures"
FIGURE_TAG = "readme-figure"


def kernel_manager(kernel_dir: Path) -> AsyncKernelManager:
    """A kernel manager for an ipykernel kernel on *this* interpreter, registered nowhere but ``kernel_dir``."""
    spec = kernel_dir / "kernels" / "fnn-python"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "fnn", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir / "kernels")], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="fnn-python", kernel_spec_manager=specs)


def run(path: Path, kernel_dir: Path, timeout: int = 600) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    resources = {"metadata": {"path": str(path.parent)}}
    client = NotebookClient(nb, km=kernel_manager(kernel_dir), timeout=timeout, resources=resources)
    client.execute()
    return nb


def figure_png(nb: nbformat.NotebookNode, name: str) -> bytes:
    cells = [c for c in nb.cells if FIGURE_TAG in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{name}: expected exactly one cell tagged {FIGURE_TAG!r}, found {len(cells)}.")
    pngs = [o["data"]["image/png"] for o in cells[0].outputs if "image/png" in o.get("data", {})]
    if len(pngs) != 1:
        raise ValueError(f"{name}: the {FIGURE_TAG!r} cell displayed {len(pngs)} PNG images, expected 1.")
    return base64.b64decode(pngs[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    args = parser.parse_args(argv)
    paths = [NOTEBOOKS / f"{n}.ipynb" for n in args.names] if args.names else sorted(NOTEBOOKS.glob("*.ipynb"))
    FIGURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as kernel_dir:
        for path in paths:
            start = time.perf_counter()
            nb = run(path, Path(kernel_dir))
            out = FIGURES / f"{path.stem}.png"
            out.write_bytes(figure_png(nb, path.name))
            print(f"{out.relative_to(ROOT)}  ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
