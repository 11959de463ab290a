"""Tests for the benchmark in ``benchmarks/`` (not installed): its rows train the same thing, fit's programs are
reused across its rounds, the report has its columns, and ``python benchmarks/bench.py --quick`` runs.

Nothing here asserts a time: the machine is shared and timings are the benchmark's business, not the tests'.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks folder of this checkout (it is not installed)
    sys.path.insert(0, str(ROOT))

from benchmarks import bench, fnn_rows, peers, report, workload  # noqa: E402

SMALL = workload.Config("tiny/8", (784, 6, 10), "sigmoid", 8, 0.5, n=64, epochs=2)


def test_synthetic_mnist_is_deterministic_and_mnist_shaped():
    x, y = workload.synthetic_mnist(100, seed=3)
    x2, y2 = workload.synthetic_mnist(100, seed=3)
    assert x.shape == (100, 784) and x.dtype == np.float32 and y.shape == (100,) and y.dtype == np.int32
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert 0 <= x.min() and x.max() < 1 and set(np.unique(y)) <= set(range(10))
    assert len(np.unique(y)) > 5  # the teacher uses most classes
    assert not np.array_equal(workload.synthetic_mnist(100, seed=4)[1], y)


def test_epoch_orders_are_fits_public_order():
    config = SMALL._replace(n=61)  # 7 batches of 8, the last 5 examples dropped
    orders = workload.epoch_orders(config, 3, seed=5)
    assert orders.shape == (3, 56) and orders.dtype == np.int32
    for e in range(3):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(5), e), 0)
        assert np.array_equal(orders[e], np.asarray(fnn.train.epoch_order(key, 61))[:56])
        assert len(set(orders[e].tolist())) == 56  # a permutation's prefix
    assert not np.array_equal(orders[0], orders[1])


@pytest.mark.parametrize(("n", "batch_size"), [(225, 32), (31, 3)])
def test_fit_epochs_are_sgd_steps_over_the_public_order(n, batch_size):
    """What the peers rely on, bit for bit: ``fit``'s compiled epochs take the steps of ``fnn.sgd_step`` over
    ``epoch_order(fold_in(key, e), n)``, last partial batch dropped. n = 225 at batch 32 is 7 steps of 100 KB
    batches: more than one of fit's ~512 KiB chunks, with a tail; n = 31 at batch 3 drops the last example."""
    x, y = (jnp.asarray(a) for a in workload.synthetic_mnist(n, seed=2))
    net = fnn.mlp([784, 5, 10], hidden="tanh", output="softmax")
    params, key = net.init(jax.random.key(0)), jax.random.key(3)
    fitted, _ = fnn.fit(net, params, (x, y), loss=workload.LOSS, epochs=2, batch_size=batch_size,
                        learning_rate=0.1, key=key, progress=False)
    step = fnn.sgd_step(net, workload.LOSS, learning_rate=0.1)
    for e in range(2):
        order = np.asarray(fnn.train.epoch_order(jax.random.fold_in(key, e), n))
        for idx in order[: (n // batch_size) * batch_size].reshape(-1, batch_size):
            params, _ = step(params, x[idx], y[idx])
    for a, b in zip(jax.tree_util.tree_leaves(fitted), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _numpy_rounds(config, init, x, y, orders, rounds):
    row = peers.NumpyRow("numpy", config, init, x, y, orders)
    for e in range(rounds):
        row.epoch(e)
    return row.params()


@pytest.mark.parametrize(("kind", "hidden"), [("manual", "sigmoid"), ("manual", "relu"), ("autodiff", "relu"),
                                            ("optax", "sigmoid"), ("serial", "relu")])
def test_fnn_rows_and_the_numpy_peer_take_the_same_steps(hidden, kind):
    """Two rounds of a fnn row (two fnn.fit calls, the second continuing the first) equal two NumPy epochs
    over the replayed order: the peer is an independent implementation, so both are right."""
    config = SMALL._replace(hidden=hidden, sizes=(784, 6, 5, 10))
    x, y = workload.synthetic_mnist(config.n, seed=1)
    init = workload.initial_params(config, seed=2)
    orders = workload.epoch_orders(config, 2, seed=7)
    row = fnn_rows.FnnRow("fnn", config, init, jnp.asarray(x), jnp.asarray(y), seed=7,
                          grads="autodiff" if kind == "autodiff" else "manual", optax_sgd=kind == "optax",
                          net="serial" if kind == "serial" else "mlp")
    times = [row.epoch(0), row.epoch(1)]
    assert all(t > 0 for t in times) and np.isfinite(row.train_loss)
    want = _numpy_rounds(config, init, x, y, orders, 2)
    for (w, b), (w_ref, b_ref) in zip(row.params(), want, strict=True):
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b, b_ref, rtol=1e-4, atol=1e-6)
    assert not np.allclose(want[0][0], init[0][0])  # it did train


def test_fnn_row_compiles_once_and_measures_it():
    """The benchmark relies on fit reusing its compiled epoch across calls: only the first round compiles."""
    x, y = (jnp.asarray(a) for a in workload.synthetic_mnist(SMALL.n, seed=0))
    row = fnn_rows.FnnRow("fnn", SMALL, workload.initial_params(SMALL, seed=0), x, y, seed=0)
    row.epoch(0)
    assert row.compile_s > 0 and row.first_call_compile_s >= row.compile_s
    with fnn_rows.compile_times() as later:
        row.epoch(1)
    assert later.total == 0, dict(later.by_function)
    assert row.compile_s < row.epoch_times[0]  # fit compiled its epoch inside the first epoch_time


def test_full_loss_matches_fnn_evaluate():
    x, y = workload.synthetic_mnist(200, seed=0)
    init = workload.initial_params(SMALL, seed=0)
    net = fnn.mlp(list(SMALL.sizes), hidden="sigmoid", output="softmax")
    params = [{"w": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in init]
    expected = fnn.evaluate(net, params, x, y, workload.LOSS)["loss"]
    assert workload.full_loss(init, "sigmoid", x, y) == pytest.approx(expected, rel=1e-5)


def _fake_result():
    cfg = workload.Config("small/10", (784, 30, 10), "sigmoid", 10, 0.1, n=100, epochs=3)
    row = {"compile_s": None, "times": [2.0, 1.0, 1.0], "rss": [10.0, 11.0, 11.0], "peak": 12.0, "note": "",
           "in_process": True, "loss_epoch1": 2.0, "final_loss": 1.5}
    rows = {"fnn fit, manual": dict(row, compile_s=0.5, times=[2.0, 0.5, 0.5]),
            "fnn fit, autodiff": dict(row, compile_s=0.5, times=[2.0, 0.6, 0.6]),
            "NumPy backprop (OpenBLAS default)": dict(row),
            "NumPy backprop (OPENBLAS_CORETYPE=SkylakeX)": {"error": "SIGILL", "in_process": False}}
    return {"config": cfg._asdict(), "n_params": cfg.n_params, "rows": rows,
            "gemm": {"per_round_best": [1e10, 1e10, 1e10], "median_by_library": {"XLA": 1e10}, "size": 256}}


def test_report_columns_ratios_and_targets():
    res = _fake_result()
    report.summarise(res)
    manual = res["rows"]["fnn fit, manual"]
    assert res["fastest_peer"] == "NumPy backprop (OpenBLAS default)"
    assert manual["samples_per_s"] == pytest.approx(100 / 0.5)
    assert manual["paired_vs_fastest_peer"] == pytest.approx(2.0)
    assert manual["paired_vs_autodiff"] == pytest.approx(1.2)
    assert manual["roofline"] == pytest.approx(6 * res["n_params"] * 200 / 1e10)
    assert res["loss_spread"] == 0 and res["loss_spread_epoch1"] == 0
    table = report.format_table([res])
    assert table.splitlines()[0] == (
        "| config | row | samples/s | × fastest peer (paired) | epoch ms | compile s | % GEMM roofline | "
        "train loss after epoch 1 → last | peak RSS MiB | RSS MiB epoch 2 → last |")
    assert "skipped: SIGILL" in table and "◆" in table
    targets = report.format_targets([res])
    assert "small/10: ≥ 1.5× the fastest peer: 2.00× — met" in targets
    assert "compiling an epoch < 1 s: 0.50 s — met" in targets and "train the same thing" in targets


def test_cli_rejects_bad_arguments(capsys):
    assert bench.main(["--configs", "nope"]) == 2
    assert "unknown configuration" in capsys.readouterr().err
    assert bench.main(["--epochs", "1"]) == 2


def test_benchmark_uses_fnns_public_api_only():
    private = re.compile(r"\b(fnn|train|parallel)(\.[a-z]\w*)*\._[a-z]|from fnn[\w.]* import .*\b_[a-z]")
    for path in (ROOT / "benchmarks").glob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not private.search(line), f"benchmarks/{path.name}:{number} uses a private name of fnn: {line}"
    assert private.search("from fnn.train import _setup") and private.search("fnn.train._all_finite(p)")
    assert not private.search('"fnn": fnn.__version__')


@pytest.mark.slow
def test_quick_benchmark_runs_every_row_and_the_rows_agree(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--configs", "small/128",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report_ = json.loads(out.read_text())
    assert [r["config"]["name"] for r in report_["results"]] == ["small/128"]
    for res in report_["results"]:
        rows = res["rows"]
        names = list(rows)
        for expected in ("fnn fit, manual", "fnn fit, autodiff", "fnn fit, optax sgd", "fnn fit, serial",
                         "fnn fit, serial + dropout", "JAX from scratch", "PyTorch eager"):
            assert expected in names
        assert sum(n.startswith("NumPy backprop (") for n in names) == 2  # in process, and the subprocess
        ran = {n: r for n, r in rows.items() if "error" not in r}
        assert {"fnn fit, manual", "fnn fit, autodiff", "fnn fit, optax sgd", "JAX from scratch"} <= set(ran)
        assert any(n.startswith("NumPy backprop (") and rows[n]["in_process"] for n in ran)
        losses = np.array([r["final_loss"] for n, r in ran.items() if "dropout" not in n])
        assert np.all(np.isfinite(losses))
        np.testing.assert_allclose(losses, losses[0], rtol=1e-4)  # every row trained the same thing
        # mlp and the same net written with fnn.serial are one program: bit-identical training
        assert rows["fnn fit, serial"]["final_loss"] == rows["fnn fit, manual"]["final_loss"]
        dropout = rows["fnn fit, serial + dropout"]
        assert np.isfinite(dropout["final_loss"]) and dropout["final_loss"] != rows["fnn fit, manual"]["final_loss"]
        assert "paired_vs_mlp" not in rows["fnn fit, manual"] or rows["fnn fit, manual"]["paired_vs_mlp"] == 1.0
        for r in ran.values():
            assert r["samples_per_s"] > 0 and r["peak"] > 0
            for key in ("epoch_s", "roofline", "rss_epoch2", "rss_last", "loss_epoch1", "times", "note"):
                assert key in r
        for n in ("fnn fit, manual", "fnn fit, autodiff", "fnn fit, optax sgd", "fnn fit, serial + dropout"):
            assert 0 < rows[n]["compile_s"] <= rows[n]["first_call_compile_s"]
        for r in rows.values():
            if "error" in r:
                assert r["error"]  # a skipped row says why
    for name in ("samples/s", "fnn fit, manual", "JAX from scratch", "PyTorch eager", "GEMM"):
        assert name in proc.stdout
