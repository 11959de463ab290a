"""Tests for fnn/ensemble.py: ``fit_ensemble`` is ``fit`` vmapped over members, checked against each member
trained alone.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SPARSE_CE, assert_tree_close, blobs, classifier, leaves, member, scaled_params, tree_finite

import fnn

# --- 4. fit_ensemble ------------------------------------------------------------------------------------

def test_fit_ensemble_equals_each_member_trained_alone(float64):
    net = classifier()
    init_keys = jax.random.split(jax.random.key(1), 3)
    shuffle_keys = jax.random.split(jax.random.key(2), 3)
    lrs = [0.05, 0.2, 0.5]
    stacked = jax.vmap(net.init)(init_keys)
    train, test = blobs(30), blobs(11, seed=1)
    kw = dict(loss=SPARSE_CE, epochs=3, batch_size=7)
    params, history = fnn.fit_ensemble(net, stacked, train, test, learning_rate=lrs, keys=shuffle_keys, **kw)

    assert all(t.shape[0] == 3 for t in jax.tree_util.tree_leaves(params))
    assert history["epoch"] == [1, 2, 3]
    for name in ("train_loss", "test_loss", "test_accuracy"):
        assert np.asarray(history[name]).shape == (3, 3), name  # (epochs, members)
    for k in range(3):
        alone, h = fnn.fit(net, member(stacked, k), train, test, learning_rate=lrs[k], key=shuffle_keys[k],
                           progress=False, **kw)
        assert_tree_close(member(params, k), alone, rtol=1e-12, atol=1e-13)
        for name in ("train_loss", "test_loss"):
            np.testing.assert_allclose([row[k] for row in history[name]], h[name], rtol=1e-12)
        assert [row[k] for row in history["test_accuracy"]] == h["test_accuracy"]
    # The members really differ (different inits, shuffles and learning rates).
    assert not np.allclose(leaves(member(params, 0))[0], leaves(member(params, 1))[0])


def test_fit_ensemble_freezes_a_diverging_member_and_trains_the_others():
    net = classifier()
    stacked = jax.tree_util.tree_map(lambda *t: jnp.stack(t), *[scaled_params(net, k) for k in range(3)])
    keys = jax.random.split(jax.random.key(2), 3)
    lrs = [0.1, 1e38, 0.2]  # member 1 overflows float32 in its first step
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=4)
    with pytest.warns(fnn.DivergenceWarning, match=r"member 1 \(learning rate 1e\+38\) diverged in epoch 1"):
        params, history = fnn.fit_ensemble(net, stacked, blobs(12), learning_rate=lrs, keys=keys, **kw)
    assert set(history["diverged"]) == {1} and history["diverged"][1]["epoch"] == 1
    assert all(np.isnan(row[1]) for row in history["train_loss"])
    assert_tree_close(member(params, 1), member(stacked, 1), rtol=0, atol=0)  # frozen at its start
    for k in (0, 2):
        assert all(np.isfinite(row[k]) for row in history["train_loss"])
        alone, _ = fnn.fit(net, member(stacked, k), blobs(12), learning_rate=lrs[k], key=keys[k],
                           progress=False, **kw)
        assert_tree_close(member(params, k), alone, rtol=1e-5, atol=1e-6)


def test_fit_ensemble_rejects_per_member_learning_rates_with_an_optax_optimizer():
    net = classifier()
    stacked = jax.tree_util.tree_map(lambda *t: jnp.stack(t), *[scaled_params(net, k) for k in range(3)])
    keys = jax.random.split(jax.random.key(2), 3)
    for optimizer, message in (("adam", "Per-member learning rates"), (optax.adam(0.1), "beside an optax")):
        with pytest.raises(ValueError, match=message):
            fnn.fit_ensemble(net, stacked, blobs(12), loss=SPARSE_CE, epochs=1, batch_size=4,
                             learning_rate=[0.1, 0.2, 0.3], optimizer=optimizer, keys=keys)


def test_fit_ensemble_rejects_unstacked_params():
    net = classifier()
    with pytest.raises(ValueError, match=r"stacked params.*\(K, 4, 6\), got \(4, 6\)"):
        fnn.fit_ensemble(net, scaled_params(net, 0), blobs(20), loss=SPARSE_CE, epochs=1, batch_size=5,
                         keys=jax.random.split(jax.random.key(1), 3))


# --- fit's pieces, vmapped: evaluation, regression metrics, strict mode, progress ----------------------------

def test_fit_ensemble_has_no_accuracy_for_regression():
    """A regression ensemble reports test MSE per member and no accuracy, as fit does (it used to report a
    'test_accuracy' computed by thresholding regression outputs)."""
    net = fnn.mlp([4, 5, 1], hidden="tanh")
    x, labels = blobs(20)
    y = (labels[:, None] / 2.0).astype(np.float32)
    stacked = jax.vmap(net.init)(jax.random.split(jax.random.key(0), 2))
    params, history = fnn.fit_ensemble(net, stacked, (x, y), (x[:9], y[:9]), loss="mse", epochs=2, batch_size=5,
                                       keys=jax.random.split(jax.random.key(1), 2))
    assert history["test_accuracy"] == [None, None]
    _, alone = fnn.fit(net, member(stacked, 0), (x, y), (x[:9], y[:9]), loss="mse", epochs=2, batch_size=5,
                       key=jax.random.split(jax.random.key(1), 2)[0], progress=False)
    assert alone["test_accuracy"] == [None, None]
    np.testing.assert_allclose([row[0] for row in history["test_loss"]], alone["test_loss"], rtol=1e-6)


def test_fit_ensemble_evaluates_in_chunks_like_fit():
    """eval_batch_size chunks the vmapped evaluation (4 + 4 + a tail of 3 test examples here); each member's
    test metrics equal fnn.evaluate of its params."""
    net = classifier()
    stacked = jax.vmap(net.init)(jax.random.split(jax.random.key(3), 3))
    test = blobs(11, seed=1)
    params, history = fnn.fit_ensemble(net, stacked, blobs(24), test, loss=SPARSE_CE, epochs=1, batch_size=6,
                                       keys=jax.random.split(jax.random.key(4), 3), eval_batch_size=4)
    for k in range(3):
        want = fnn.evaluate(net, member(params, k), *test, SPARSE_CE, batch_size=4)
        assert history["test_loss"][0][k] == pytest.approx(want["loss"], rel=1e-6)
        assert history["test_accuracy"][0][k] == want["accuracy"]


def test_fit_ensemble_strict_freezes_a_member_at_its_last_finite_step():
    net = classifier()
    stacked = jax.tree_util.tree_map(lambda *t: jnp.stack(t), *[scaled_params(net, k) for k in range(2)])
    keys = jax.random.split(jax.random.key(2), 2)
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=4, keys=keys)
    with pytest.warns(fnn.DivergenceWarning, match=r"member 1 .*last finite params \(step \d of epoch 1\)"):
        params, history = fnn.fit_ensemble(net, stacked, blobs(12), learning_rate=[0.1, 1e38], strict=True, **kw)
    assert set(history["diverged"]) == {1}
    assert tree_finite(params)
    for k, lr in enumerate([0.1, 1e38]):  # each member as fit's strict mode leaves it, alone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fnn.DivergenceWarning)
            alone, h = fnn.fit(net, member(stacked, k), blobs(12), learning_rate=lr, key=keys[k], progress=False,
                               strict=True, loss=SPARSE_CE, epochs=2, batch_size=4)
        assert ("diverged" in h) == (k == 1)
        assert_tree_close(member(params, k), alone, rtol=1e-5, atol=1e-6)


def test_fit_ensemble_progress_is_a_tqdm_bar_not_prints(capsys):
    net = classifier()
    stacked = jax.vmap(net.init)(jax.random.split(jax.random.key(3), 2))
    calls = []
    fnn.fit_ensemble(net, stacked, blobs(12), loss=SPARSE_CE, epochs=2, batch_size=4, progress=True,
                     keys=jax.random.split(jax.random.key(4), 2), callback=lambda e, h: calls.append(e))
    out, err = capsys.readouterr()
    assert out == ""  # it used to print one line per epoch to stdout
    assert "fit_ensemble" in err and "2/2" in err
    assert calls == [1, 2]


# --- serial nets: dropout, residual blocks, penalties -----------------------------------------------------------

_L = fnn.layers
#: One net object for these tests (float64; they run under the float64 fixture): fit's compiled programs are
#: cached per net, so the runs share them.
DROPOUT_RESIDUAL = fnn.serial(_L.Dense(6, activation="tanh"), _L.Dropout(0.3),
                              _L.Residual(_L.Dense(6, activation="tanh"), _L.Dropout(0.2), _L.Dense(6)),
                              _L.Dense(3, activation="softmax"), input_shape=(4,), dtype="float64")


@pytest.mark.parametrize("penalty", [None, fnn.penalties.l2(0.05)], ids=["plain", "l2"])
def test_fit_ensemble_of_a_dropout_residual_net_equals_each_member_alone(float64, penalty):
    net = DROPOUT_RESIDUAL
    stacked = jax.vmap(net.init)(jax.random.split(jax.random.key(1), 3))
    keys = jax.random.split(jax.random.key(2), 3)
    lrs = [0.05, 0.2, 0.4]
    train = blobs(24)
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=6, penalty=penalty)
    params, history = fnn.fit_ensemble(net, stacked, train, learning_rate=lrs, keys=keys, **kw)
    assert isinstance(params[2], list) and all(t.shape[0] == 3 for t in jax.tree_util.tree_leaves(params))
    for k in range(3):
        alone, h = fnn.fit(net, member(stacked, k), train, learning_rate=lrs[k], key=keys[k], progress=False, **kw)
        assert_tree_close(member(params, k), alone, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose([row[k] for row in history["train_loss"]], h["train_loss"], rtol=1e-12)
    # the masks and the penalty are in play: without dropout keys (inference mode) or without the penalty, the
    # members would train differently
    other, _ = fnn.fit(net, member(stacked, 0), train, learning_rate=lrs[0], key=keys[0], progress=False,
                       **{**kw, "penalty": None if penalty else fnn.penalties.l2(0.05)})
    assert not np.allclose(leaves(other)[0], leaves(member(params, 0))[0], rtol=1e-9, atol=0)


def test_fit_ensemble_names_the_nested_leaf_without_the_member_axis():
    net = DROPOUT_RESIDUAL
    stacked = [jax.tree_util.tree_map(lambda s: jnp.zeros((3, *s)), p, is_leaf=lambda s: isinstance(s, tuple))
               for p in net.param_shapes()]
    stacked[2][0]["w"] = stacked[2][0]["w"][0]
    with pytest.raises(ValueError, match=r"stacked params.*layer 2\.0's w of shape \(3, 6, 6\), got \(6, 6\)"):
        fnn.fit_ensemble(net, stacked, blobs(20), loss=SPARSE_CE, epochs=1, batch_size=5,
                         keys=jax.random.split(jax.random.key(1), 3))
    stacked[2][0]["w"] = jnp.stack([stacked[2][0]["w"]] * 2)
    with pytest.raises(ValueError, match=r"layer 2\.0's w of shape \(3, 6, 6\), got \(2, 6, 6\)"):
        fnn.fit_ensemble(net, stacked, blobs(20), loss=SPARSE_CE, epochs=1, batch_size=5,
                         keys=jax.random.split(jax.random.key(1), 3))
