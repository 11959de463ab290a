"""Every script in examples/ runs to completion with a tiny budget and prints what it promises.

The Fashion-MNIST examples skip when Debian's dataset-fashion-mnist is not installed.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FASHION} (Debian package dataset-fashion-mnist)",
)


def run(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=300, cwd=EXAMPLES.parent)


def run_example(name: str, *args: str) -> str:
    proc = run(name, *args)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of uint8 data, written with struct (independently of fnn)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def last_number(pattern: str, text: str) -> float:
    found = re.findall(pattern, text)
    assert found, f"no line matching {pattern!r} in:\n{text}"
    return float(found[-1])


def test_every_example_is_tested():
    tested = {"seed_iris.py", "nielsen_mnist.py", "nielsen_network2.py", "fashion_mnist.py", "per_example_grads.py",
              "ensemble.py", "fashion_cnn.py", "deep_mlp.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} <= tested


def test_seed_iris():
    out = run_example("seed_iris.py", "--epochs", "300")
    assert "α = 0.1 · 120 = 12" in out
    assert re.search(r"epoch\s+200\s+loss [\d.]+\s+train accuracy [\d.]+\s+test accuracy [\d.]+", out)
    assert last_number(r"final test accuracy: ([\d.]+)", out) >= 0.8


def test_nielsen_mnist_trains_on_the_mnist_files_given(tmp_path):
    """The example is named for MNIST: --data-dir takes MNIST's four IDX files (here small random ones) and the
    first line says that MNIST ran, from where."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 100)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    out = run_example("nielsen_mnist.py", "--data-dir", str(tmp_path), "--epochs", "1")
    assert out.splitlines()[0] == f"data set: MNIST, the IDX files in {tmp_path} (given by --data-dir)"
    assert "MNIST: 300 training and 100 test images" in out
    assert re.search(r"Epoch 1: \d+ / 100 ", out)
    assert 0 <= last_number(r"final test accuracy on MNIST: ([\d.]+)", out) <= 1


def test_nielsen_mnist_without_data_dir_says_it_falls_back_to_fashion_mnist():
    """Without --data-dir the first line says the run is Fashion-MNIST, NOT MNIST; then it trains on Fashion-MNIST
    if Debian's package is installed, else it says in one line how to get it. (One run for both: each run of the
    example costs a fresh process's imports and compiles.)"""
    proc = run("nielsen_mnist.py", "--epochs", "1", "--limit", "2000")
    first = proc.stdout.splitlines()[0]
    assert first.startswith("data set: Fashion-MNIST") and "NOT MNIST: no --data-dir was given" in first
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():  # one line saying how to get it, no traceback
        assert proc.returncode == 1 and proc.stderr.startswith("error: fashion_mnist: folder") \
            and "Traceback" not in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "2000 training and 10000 test images" in out
    assert re.search(r"Epoch 1: \d+ / 10000", out)
    assert last_number(r"final test accuracy on Fashion-MNIST: ([\d.]+)", out) > 0.3  # well above chance (0.1)


def test_examples_cite_public_sources_not_seed_documents():
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"seed note|seed notebook|\bnotebook 00\d|\bnotes 00\d|the notebook's", text), path.name
    nielsen = (EXAMPLES / "nielsen_mnist.py").read_text()
    assert "Michael Nielsen's network (Neural Networks and Deep Learning, chapter 1" in nielsen


@needs_fashion
def test_nielsen_network2_trains_with_and_without_the_penalty():
    out = run_example("nielsen_network2.py", "--epochs", "1", "--limit", "2000")
    assert "2000 training and 10000 test images; η = 0.5, batch 10" in out
    plain = last_number(r"no penalty: test accuracy ([\d.]+)", out)
    l2 = last_number(r"L2 λ = 5.0: test accuracy ([\d.]+)", out)
    assert plain > 0.3 and l2 > 0.3 and plain != l2  # both learn; the penalty changes the result


@needs_fashion
def test_fashion_mnist():
    out = run_example("fashion_mnist.py", "--epochs", "1", "--limit", "2000")
    assert re.search(r"time: [\d.]+ s for 1 epochs", out)
    assert last_number(r"final test accuracy: ([\d.]+)", out) > 0.5


@needs_fashion
def test_fashion_cnn():
    out = run_example("fashion_cnn.py", "--epochs", "1", "--limit", "1024", "--test-limit", "500")
    assert "images of shape (28, 28, 1)" in out and re.search(r"time: [\d.]+ s for 1 epochs", out)
    assert last_number(r"final test accuracy: ([\d.]+)", out) > 0.5


@needs_fashion
def test_deep_mlp_normalised_nets_train_where_the_plain_one_stalls(tmp_path):
    figure = tmp_path / "deep.png"
    out = run_example("deep_mlp.py", "--epochs", "1", "--limit", "2500", "--test-limit", "1000",
                      "--figure", str(figure))
    acc = {v: last_number(rf"final test accuracy: .*{v} ([\d.]+)", out) for v in ("plain", "layernorm", "batchnorm")}
    assert acc["plain"] < 0.2 and acc["layernorm"] > 0.6 and acc["batchnorm"] > 0.6, acc
    assert figure.stat().st_size > 10_000


def test_per_example_grads():
    out = run_example("per_example_grads.py", "--epochs", "1", "--limit", "200", "--top", "3")
    assert last_number(r"max \|per_example_grads - vmap\(grad\)\| = (\S+)", out) < 1e-4
    assert last_number(r"max \|mean of per-example grads - batch gradient\| = (\S+)", out) < 1e-5
    assert "3 biggest gradient norms:" in out and "3 smallest gradient norms:" in out


def test_ensemble():
    out = run_example("ensemble.py", "--epochs", "2", "--members", "2", "--limit", "800")
    assert "640 training, 160 validation and 359 test images" in out
    assert len(re.findall(r"member \d: learning rate [\d.]+\s+validation accuracy [\d.]+", out)) == 2
    assert not re.search(r"member \d: .*test accuracy", out)  # members are compared on validation data only
    chosen = re.search(r"chosen member \(best validation accuracy\): (\d), test accuracy ([\d.]+)", out)
    assert chosen and float(chosen[2]) > 0.5
    assert last_number(r"ensemble test accuracy: ([\d.]+)", out) > 0.7
