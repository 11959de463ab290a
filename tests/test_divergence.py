"""Tests for fnn/divergence.py through ``fit``: the last finite params, the step and the layer that went
non-finite, strict mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    SPARSE_CE,
    assert_tree_close,
    assert_tree_equal,
    blobs,
    classifier,
    fit_batches,
    scaled_params,
    tree_finite,
)

import fnn
from fnn.train import CHECKPOINT_NAME

# --- 8. divergence --------------------------------------------------------------------------------------

def _regression(n=20):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, x @ np.array([[1.0], [-2.0], [0.5]], np.float32)


# A linear model with mse: the Hessian is about 2 I, so lr = 2 multiplies the error by about 3 per step and the
# loss overflows float32 after a few epochs, not at once.
DIVERGING = dict(loss="mse", batch_size=5, learning_rate=2.0, key=jax.random.key(2), progress=False)


def test_divergence_returns_the_last_finished_epoch_and_checkpoints_it(tmp_path):
    net = fnn.mlp([3, 1], output="identity")
    params0 = scaled_params(net, 1)
    train = _regression()
    with pytest.warns(fnn.DivergenceWarning) as record:
        params, history = fnn.fit(net, params0, train, epochs=50, checkpoint_dir=tmp_path, **DIVERGING)
    diverged = history["diverged"]
    assert {"epoch", "step", "layer", "message"} <= set(diverged)
    epoch = diverged["epoch"]
    assert 2 <= epoch < 50
    assert f"epoch {epoch}" in str(record[0].message)
    assert record[0].filename == __file__  # the warning points at the caller of fit
    assert history["epoch"] == list(range(1, epoch))
    assert tree_finite(params)

    finished, _ = fnn.fit(net, params0, train, epochs=epoch - 1, **DIVERGING)
    assert_tree_equal(params, finished)
    ckpt = fnn.load(tmp_path / CHECKPOINT_NAME, net)
    assert_tree_equal(ckpt.params, params)
    assert ckpt.metadata["epoch"] == epoch - 1

    # The reported step is the first step of that epoch whose loss or update is non-finite.
    step = fnn.sgd_step(net, "mse", learning_rate=2.0)
    p, x, y = finished, *train
    first_bad = None
    for s, idx in enumerate(fit_batches(DIVERGING["key"], epoch - 1, 20, 5)):
        new, value = step(p, x[idx], y[idx])
        if not (np.isfinite(float(value)) and tree_finite(new)):
            first_bad = s
            break
        p = new
    assert diverged["step"] == first_bad


def test_strict_freezes_at_the_last_finite_step():
    net = fnn.mlp([3, 1], output="identity")
    params0 = scaled_params(net, 1)
    train = _regression()
    with pytest.warns(fnn.DivergenceWarning):
        params, history = fnn.fit(net, params0, train, epochs=50, strict=True, **DIVERGING)
    assert tree_finite(params)
    epoch, bad = history["diverged"]["epoch"], history["diverged"]["step"]
    assert history["epoch"] == list(range(1, epoch))
    # Reference: the finished epochs, then the steps of the diverging epoch up to the first bad one.
    p, _ = fnn.fit(net, params0, train, epochs=epoch - 1, **DIVERGING)
    step = fnn.sgd_step(net, "mse", learning_rate=2.0)
    x, y = train
    batches = fit_batches(DIVERGING["key"], epoch - 1, 20, 5)
    for idx in batches[:bad]:
        p, _ = step(p, x[idx], y[idx])
    assert_tree_close(params, p, rtol=1e-5, atol=0)
    new, value = step(p, x[batches[bad]], y[batches[bad]])
    assert not (np.isfinite(float(value)) and tree_finite(new))


def _exploding_layer_1():
    """Inputs of 1e22 and a tiny output layer: the hidden activations z0 ~ 1e22 and the output z1 ~ 1e17, so the
    loss (~z1²) is finite but layer 1's gradient (~z0·z1) overflows float32; layer 0's (~x·z1·w1) does not."""
    net = fnn.mlp([2, 3, 1], hidden="identity", output="identity")
    params = [{"w": jnp.array([[1.0, 0.5, -1.0], [0.3, -0.7, 1.0]]), "b": jnp.zeros(3)},
              {"w": jnp.array([[1.0], [-1.0], [0.5]]) * 1e-5, "b": jnp.zeros(1)}]
    x = (np.random.default_rng(0).normal(size=(8, 2)) * 1e22).astype(np.float32)
    return net, params, (x, np.zeros((8, 1), np.float32))


@pytest.mark.parametrize("strict", [False, True])
def test_divergence_names_the_layer_whose_gradient_went_non_finite(strict):
    net, params0, (x, y) = _exploding_layer_1()
    loss, grads = jax.jit(lambda p: fnn.backprop(net, p, x[:4], y[:4], "mse"))(params0)
    assert np.isfinite(float(loss)) and tree_finite(grads[0]) and not tree_finite(grads[1])
    with pytest.warns(fnn.DivergenceWarning, match="layer 1's gradient"):
        params, history = fnn.fit(net, params0, (x, y), loss="mse", epochs=2, batch_size=4, learning_rate=1e-3,
                                  key=jax.random.key(2), progress=False, strict=strict)
    assert history["diverged"]["epoch"] == 1 and history["diverged"]["step"] == 0
    assert history["diverged"]["layer"] == 1
    assert_tree_equal(params, params0)


def test_strict_detects_an_update_that_overflows_while_loss_and_grads_are_finite():
    # lr * dW exceeds float32's max although the loss and every gradient are finite: strict mode used to
    # freeze the params silently and report a finite training loss, with no warning.
    net = fnn.mlp([3, 4, 1], hidden="tanh", output="identity")
    params0 = scaled_params(net, 1)
    with pytest.warns(fnn.DivergenceWarning, match="epoch 1 at step 0"):
        params, history = fnn.fit(net, params0, _regression(), loss="mse", epochs=2, batch_size=5,
                                  learning_rate=3e38, key=jax.random.key(2), progress=False, strict=True)
    assert history["epoch"] == [] and history["diverged"]["layer"] is None
    assert_tree_equal(params, params0)


@pytest.mark.parametrize("strict", [False, True])
def test_a_loss_non_finite_before_any_update_blames_the_params_not_the_learning_rate(strict):
    """Params of 1e20 overflow float32 in the first forward pass: no learning rate is to blame (the message
    used to say "Try a smaller learning rate" all the same)."""
    net = fnn.mlp([4, 6, 3], hidden="relu", output="softmax")  # 1e20 · 1e20 overflows in the output layer
    huge = jax.tree_util.tree_map(lambda t: jnp.full_like(t, 1e20), scaled_params(net, 0))
    with pytest.warns(fnn.DivergenceWarning) as caught:
        fnn.fit(net, huge, blobs(12), loss=SPARSE_CE, epochs=2, batch_size=4, key=jax.random.key(0),
                progress=False, strict=strict)
    text = str(caught[0].message)
    assert "epoch 1 at step 0" in text
    assert "before any update" in text and "params or the data" in text
    assert "smaller learning rate" not in text


def test_a_learning_rate_that_blows_up_later_still_says_so():
    net = classifier()
    with pytest.warns(fnn.DivergenceWarning, match="Try a smaller learning rate"):
        fnn.fit(net, scaled_params(net, 0), blobs(12), loss=SPARSE_CE, epochs=2, batch_size=4, learning_rate=1e38,
                key=jax.random.key(0), progress=False)
