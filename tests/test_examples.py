"""Every script in examples/ runs to completion with a tiny budget and prints what it promises.

The Fashion-MNIST examples skip when Debian's dataset-fashion-mnist is not installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FASHION} (Debian package dataset-fashion-mnist)",
)


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=300, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def last_number(pattern: str, text: str) -> float:
    found = re.findall(pattern, text)
    assert found, f"no line matching {pattern!r} in:\n{text}"
    return float(found[-1])


def test_every_example_is_tested():
    tested = {"seed_iris.py", "nielsen_mnist.py", "fashion_mnist.py", "per_example_grads.py", "ensemble.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} <= tested


def test_seed_iris():
    out = run_example("seed_iris.py", "--epochs", "300")
    assert "α = 0.1 · 120 = 12" in out
    assert re.search(r"epoch\s+200\s+loss [\d.]+\s+train accuracy [\d.]+\s+test accuracy [\d.]+", out)
    assert last_number(r"final test accuracy: ([\d.]+)", out) >= 0.8


@needs_fashion
def test_nielsen_mnist():
    out = run_example("nielsen_mnist.py", "--epochs", "1", "--limit", "2000")
    assert "2000 training and 10000 test images" in out
    assert re.search(r"Epoch 1: \d+ / 10000", out)
    assert last_number(r"final test accuracy: ([\d.]+)", out) > 0.3  # well above chance (0.1)


@needs_fashion
def test_fashion_mnist():
    out = run_example("fashion_mnist.py", "--epochs", "1", "--limit", "2000")
    assert re.search(r"time: [\d.]+ s for 1 epochs", out)
    assert last_number(r"final test accuracy: ([\d.]+)", out) > 0.5


def test_per_example_grads():
    out = run_example("per_example_grads.py", "--epochs", "1", "--limit", "200", "--top", "3")
    assert last_number(r"max \|per_example_grads - vmap\(grad\)\| = (\S+)", out) < 1e-4
    assert last_number(r"max \|mean of per-example grads - batch gradient\| = (\S+)", out) < 1e-5
    assert "3 biggest gradient norms:" in out and "3 smallest gradient norms:" in out


def test_ensemble():
    out = run_example("ensemble.py", "--epochs", "2", "--members", "2", "--limit", "800")
    assert len(re.findall(r"member \d: learning rate [\d.]+\s+test accuracy [\d.]+", out)) == 2
    assert last_number(r"ensemble test accuracy: ([\d.]+)", out) > 0.7
