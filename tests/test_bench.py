"""Tests for fnn.bench: the rows train the same thing, and ``scripts/bench.py --quick`` runs end to end.

Nothing here asserts a time: the machine is shared and timings are the benchmark's business, not the tests'.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import bench
from fnn.train import _epoch_permutation, epoch_order

ROOT = Path(__file__).resolve().parents[1]
SMALL = bench.Config("tiny/8", (784, 6, 10), "sigmoid", 8, 0.5, n=64, epochs=2)


def test_synthetic_mnist_is_deterministic_and_mnist_shaped():
    x, y = bench.synthetic_mnist(100, seed=3)
    x2, y2 = bench.synthetic_mnist(100, seed=3)
    assert x.shape == (100, 784) and x.dtype == np.float32 and y.shape == (100,) and y.dtype == np.int32
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert 0 <= x.min() and x.max() < 1 and set(np.unique(y)) <= set(range(10))
    assert len(np.unique(y)) > 5  # the teacher uses most classes
    assert not np.array_equal(bench.synthetic_mnist(100, seed=4)[1], y)


def test_epoch_orders_are_fits_permutations():
    orders = bench._epoch_orders(SMALL, 2, seed=5)
    key = jax.random.key(5)
    for e in range(2):
        expected = np.asarray(epoch_order(jax.random.fold_in(key, e), SMALL.n))
        assert np.array_equal(orders[e], expected[: SMALL.samples])
    assert np.array_equal(np.asarray(_epoch_permutation(key, 10, 3)), np.asarray(epoch_order(key, 10))[:9])


@pytest.mark.parametrize("hidden", ["sigmoid", "relu"])
def test_numpy_peer_epoch_equals_fit(hidden):
    """The NumPy peer (an independent implementation) and fnn.fit take the same SGD steps."""
    config = SMALL._replace(hidden=hidden, sizes=(784, 6, 5, 10))
    x, y = bench.synthetic_mnist(config.n, seed=1)
    init = bench._initial_params(config, seed=2)
    order = bench._epoch_orders(config, 1, seed=7)[0]
    ws, bs = [w.copy() for w, _ in init], [b.copy() for _, b in init]
    bench._numpy_sgd_epoch(ws, bs, x, y, order, config.batch_size, config.learning_rate, hidden)

    net = fnn.mlp(list(config.sizes), hidden=hidden, output="softmax")
    params = [{"w": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in init]
    fitted, _ = fnn.fit(net, params, (x, y), loss=bench.LOSS, epochs=1, batch_size=config.batch_size,
                        learning_rate=config.learning_rate, key=jax.random.key(7), progress=False)
    for layer, w, b in zip(fitted, ws, bs):
        np.testing.assert_allclose(np.asarray(layer["w"]), w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(layer["b"]), b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(ws[0], init[0][0])  # it did train


def test_full_loss_matches_fnn_evaluate():
    x, y = bench.synthetic_mnist(200, seed=0)
    init = bench._initial_params(SMALL, seed=0)
    net = fnn.mlp(list(SMALL.sizes), hidden="sigmoid", output="softmax")
    params = [{"w": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in init]
    expected = fnn.evaluate(net, params, x, y, bench.LOSS)["loss"]
    assert bench.full_loss(init, "sigmoid", x, y) == pytest.approx(expected, rel=1e-5)


def test_cli_rejects_bad_arguments(capsys):
    assert bench.main(["--configs", "nope"]) == 2
    assert "unknown configuration" in capsys.readouterr().err
    assert bench.main(["--epochs", "1"]) == 2


@pytest.mark.slow
def test_quick_benchmark_runs_every_row_and_the_rows_agree(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["config"]["name"] for r in report["results"]] == ["small/10", "small/128", "wide/256"]
    for res in report["results"]:
        rows = res["rows"]
        names = list(rows)
        for expected in ("fnn fit, manual", "fnn fit, autodiff", "fnn fit, optax sgd", "JAX from scratch",
                         "PyTorch eager"):
            assert expected in names
        assert sum(n.startswith("NumPy backprop (") for n in names) == 2  # in process, and the subprocess
        ran = {n: r for n, r in rows.items() if "error" not in r}
        assert {"fnn fit, manual", "fnn fit, autodiff", "fnn fit, optax sgd", "JAX from scratch"} <= set(ran)
        assert any(n.startswith("NumPy backprop (") and rows[n]["in_process"] for n in ran)
        losses = np.array([r["final_loss"] for r in ran.values()])
        assert np.all(np.isfinite(losses))
        np.testing.assert_allclose(losses, losses[0], rtol=1e-4)  # every row trained the same thing
        for r in ran.values():
            assert r["samples_per_s"] > 0 and r["peak"] > 0
        for n, r in rows.items():
            if "error" in r:
                assert r["error"]  # a skipped row says why
    for name in ("samples/s", "fnn fit, manual", "JAX from scratch", "PyTorch eager", "GEMM"):
        assert name in proc.stdout


# --- the speed levers of fnn.train keep the training identical ------------------------------------------

def _single_scan_epoch(update, n, batch_size, strict):
    """The reference layout: the whole permuted set gathered at once and scanned step by step."""
    from fnn import train

    def epoch(params, opt_state, x, y, key, lr):
        num_batches = n // batch_size
        perm = _epoch_permutation(key, n, batch_size)
        xb = jnp.take(x, perm, axis=0).reshape(num_batches, batch_size, -1)
        yb = jnp.take(y, perm, axis=0).reshape(num_batches, batch_size)

        def body(carry, batch):
            p, s = carry[:2]
            p, s, value, g = update(p, s, batch[0], batch[1], lr)
            if strict:
                return (p, s, carry[2]), (value, train._layer_finite(g))
            return (p, s), value

        carry = (params, opt_state, jnp.array(True)) if strict else (params, opt_state)
        carry, out = jax.lax.scan(body, carry, (xb, yb))
        return (*carry[:2], *(out if strict else (out, None)))

    return epoch


@pytest.mark.parametrize(("chunk_bytes", "strict"), [(1, False), (5 * 3 * 784 * 4, True),
                                                     (7 * 3 * 784 * 4, False), (7 * 3 * 784 * 4, True)])
def test_chunked_epoch_equals_one_scan_over_the_permuted_set(monkeypatch, chunk_bytes, strict):
    """Chunks of 1 batch, of 5 (a divisor of the 20 steps) and of 7 (no divisor in [4, 7]: a tail loop)."""
    from fnn import train

    monkeypatch.setattr(train, "_CHUNK_BYTES", chunk_bytes)
    n, batch_size = 61, 3  # 20 steps, the last example dropped
    net = fnn.mlp([784, 5, 10], hidden="tanh", output="softmax")
    params = net.init(jax.random.key(0))
    x, y = (jnp.asarray(a) for a in bench.synthetic_mnist(n, seed=2))
    update = train._make_update(net, fnn.losses.get(bench.LOSS), "manual", None)
    got = jax.jit(train._make_epoch(update, n, batch_size, strict=strict, unroll=1))(
        params, (), x, y, jax.random.key(3), 0.1)
    want = jax.jit(_single_scan_epoch(update, n, batch_size, strict))(params, (), x, y, jax.random.key(3), 0.1)
    assert got[2].shape == (20,)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
