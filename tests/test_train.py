"""Tests for fnn/train.py: issue 3's training engine, checked against independent references.

* ``sgd_step`` against the hand update ``W - lr * dW`` and a pure-JAX loss written here;
* a scanned epoch against a Python loop over the same shuffle and steps;
* the optax path (manual grads == autodiff grads == optax driven by hand);
* ``fit_ensemble`` against each member trained alone;
* ``evaluate`` against numpy, chunked against unchunked;
* history, learning on digits, determinism, checkpoint/resume, divergence, interrupt, and the error messages.

Tight equalities run in float64 (``with jax.enable_x64(True)``); bit-identity claims (resume, determinism,
divergence returning the last epoch's params) are checked with ``np.array_equal`` in the default float32.
Compiling an epoch costs seconds on a small CPU, so every ``fit`` here is on a tiny network and data set.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.train import CHECKPOINT_NAME

SPARSE_CE = "sparse_categorical_cross_entropy"


@pytest.fixture
def float64():
    with jax.enable_x64(True):
        yield


# --- helpers --------------------------------------------------------------------------------------------

def _blobs(n, n_in=4, n_out=3, seed=0):
    """Gaussian blobs: float64 numpy ``x (n, n_in)`` and int32 labels ``y (n,)``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_out, n).astype(np.int32)
    centers = rng.normal(size=(n_out, n_in)) * 1.5
    return centers[y] + rng.normal(size=(n, n_in)), y


def _classifier():
    return fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")


def _params(net, seed=0):
    """Random params built with numpy (no PRNG program to compile), non-zero biases, in the net's dtype."""
    rng = np.random.default_rng(seed)
    return [{"w": jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), net.dtype),
             "b": jnp.asarray(rng.normal(size=(b,)) * 0.1, net.dtype)}
            for a, b in zip(net.sizes[:-1], net.sizes[1:])]


def _leaves(tree):
    return [np.asarray(t) for t in jax.tree_util.tree_leaves(tree)]


def _assert_tree_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(_leaves(a), _leaves(b)):
        assert u.dtype == v.dtype
        assert np.array_equal(u, v), np.max(np.abs(u - v))


def _assert_tree_close(a, b, rtol, atol):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(_leaves(a), _leaves(b)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def _all_finite(tree):
    return all(np.isfinite(t).all() for t in _leaves(tree))


def _without_time(history):
    return {k: v for k, v in history.items() if k != "epoch_time"}


def _member(stacked, k):
    return jax.tree_util.tree_map(lambda t: t[k], stacked)


def _batches(key, epoch, n, batch_size):
    """fit's shuffle, written out: sort the indices by two 32-bit words of jax.random.bits(fold_in(key, epoch)),
    keep n // b * b indices, cut into batches."""
    words = np.asarray(jax.random.bits(jax.random.fold_in(key, epoch), (2, n), jnp.uint32))
    perm = np.lexsort((np.arange(n), words[1], words[0]))  # last key is the primary one
    num = n // batch_size
    return perm[: num * batch_size].reshape(num, batch_size)


def _reference_softmax_ce(params, x, y):
    """An independent pure-JAX objective for tanh hidden layers + softmax + sparse CE (mean over the batch)."""
    a = jnp.asarray(x)
    for layer in params[:-1]:
        a = jnp.tanh(a @ layer["w"] + layer["b"][None, :])
    z = a @ params[-1]["w"] + params[-1]["b"][None, :]
    return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(z.shape[0]), jnp.asarray(y)])


# The references run jitted: op-by-op dispatch compiles every small op separately, which is slow on a small CPU.
_reference_value_and_grad = jax.jit(jax.value_and_grad(_reference_softmax_ce))
_reference_loss = jax.jit(_reference_softmax_ce)


# --- 1. sgd_step ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("grads", ["manual", "autodiff"])
def test_sgd_step_is_w_minus_lr_dw_for_every_leaf_at_once(float64, grads):
    net = fnn.mlp([4, 5, 4, 3], hidden="tanh", output="softmax")
    params = _params(net, 0)
    x, y = _blobs(8)
    lr = 0.3
    step = fnn.sgd_step(net, SPARSE_CE, learning_rate=lr, grads=grads)
    new, loss = step(params, x, y)

    grad_fn = fnn.backprop if grads == "manual" else fnn.autodiff
    value, g = jax.jit(lambda p: grad_fn(net, p, x, y, SPARSE_CE))(params)
    ref_value, ref_g = _reference_value_and_grad(params, x, y)
    assert len(new) == net.num_layers
    for l in range(net.num_layers):
        assert sorted(new[l]) == ["b", "w"]
        for name in ("w", "b"):
            before = np.asarray(params[l][name])
            assert new[l][name].dtype == jnp.float64
            np.testing.assert_allclose(new[l][name], before - lr * np.asarray(g[l][name]), rtol=1e-14, atol=1e-15)
            np.testing.assert_allclose(new[l][name], before - lr * np.asarray(ref_g[l][name]), rtol=1e-10, atol=1e-13)
            assert not np.array_equal(new[l][name], before)  # every weight and bias moved in this one step
    # The returned loss is the loss *before* the update.
    assert float(loss) == pytest.approx(float(value), rel=1e-14)
    assert float(loss) == pytest.approx(float(ref_value), rel=1e-12)
    assert float(_reference_loss(new, x, y)) < float(loss) - 1e-6


def test_sgd_step_float32_matches_reference_with_float32_tolerance():
    net = _classifier()
    params = _params(net, 0)
    x, y = _blobs(8)
    x = x.astype(np.float32)
    new, loss = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.5)(params, x, y)
    ref_value, ref_g = _reference_value_and_grad(params, x, y)
    expected = jax.tree_util.tree_map(lambda p, d: p - 0.5 * d, params, ref_g)
    assert all(t.dtype == jnp.float32 for t in jax.tree_util.tree_leaves(new))
    _assert_tree_close(new, expected, rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(float(ref_value), rel=1e-5)


# --- 2. a scanned epoch is the Python loop --------------------------------------------------------------

@pytest.mark.parametrize("optimizer", [None, "adam"])
def test_scanned_epochs_equal_a_python_loop_over_the_same_steps(float64, optimizer):
    net = _classifier()
    params0 = _params(net, 0)
    x, y = _blobs(20)  # 20 = 3 batches of 6 + 2 dropped examples per epoch
    key, lr, batch_size, epochs = jax.random.key(7), 0.1, 6, 3
    params, history = fnn.fit(net, params0, (x, y), loss=SPARSE_CE, epochs=epochs, batch_size=batch_size,
                              learning_rate=lr, optimizer=optimizer, key=key, progress=False)

    step = fnn.sgd_step(net, SPARSE_CE, learning_rate=lr, optimizer=optimizer)
    p = params0
    state = fnn.make_optimizer(optimizer, lr).init(p) if optimizer else None
    for e in range(epochs):
        batches = _batches(key, e, 20, batch_size)
        assert batches.shape == (3, 6)
        losses = []
        for idx in batches:
            if optimizer is None:
                p, value = step(p, x[idx], y[idx])
            else:
                p, state, value = step(p, state, x[idx], y[idx])
            losses.append(float(value))
        assert history["train_loss"][e] == pytest.approx(np.mean(losses), rel=1e-12, abs=1e-14)
    _assert_tree_close(params, p, rtol=1e-12, atol=1e-12)
    assert history["epoch"] == [1, 2, 3]


# --- 3. the optax path ----------------------------------------------------------------------------------

#: what sgd_step is given (a name, or a factory of an optax object) -> the plain optax transformation it must equal
OPTIMIZERS = {
    "sgd": ("sgd", lambda: optax.sgd(0.05)),
    "momentum": ("momentum", lambda: optax.sgd(0.05, momentum=0.9)),
    "adam": ("adam", lambda: optax.adam(0.05)),
    "optax.sgd": (lambda: optax.sgd(0.05), lambda: optax.sgd(0.05)),
    "optax.sgd_momentum": (lambda: optax.sgd(0.05, momentum=0.9), lambda: optax.sgd(0.05, momentum=0.9)),
    "optax.adam": (lambda: optax.adam(0.02), lambda: optax.adam(0.02)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optax_steps_manual_equal_autodiff_equal_optax_by_hand(float64, name):
    given, reference = OPTIMIZERS[name]
    optimizer = given if isinstance(given, str) else given()
    tx = reference()  # built separately: a named optimizer must be exactly this optax transformation
    net = _classifier()
    params = _params(net, 3)
    x, y = _blobs(24, seed=2)
    manual = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.05, optimizer=optimizer)
    auto = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.05, optimizer=optimizer, grads="autodiff")

    @jax.jit
    def by_hand(p, s, xb, yb):  # optax driven by hand with the hand-written gradients
        value, g = fnn.backprop(net, p, xb, yb, SPARSE_CE)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, value

    state = (fnn.make_optimizer(optimizer, 0.05) if isinstance(optimizer, str) else optimizer).init(params)
    pm, sm, pa, sa, pr, sr = params, state, params, state, params, tx.init(params)
    for i in range(4):
        xb, yb = x[6 * i: 6 * i + 6], y[6 * i: 6 * i + 6]
        out = manual(pm, sm, xb, yb)
        assert len(out) == 3  # (params, opt_state, loss)
        pm, sm, loss_m = out
        pa, sa, loss_a = auto(pa, sa, xb, yb)
        pr, sr, value = by_hand(pr, sr, xb, yb)
        assert float(loss_m) == pytest.approx(float(value), rel=1e-14)
        assert float(loss_a) == pytest.approx(float(value), rel=1e-12)
    _assert_tree_close(pm, pa, rtol=1e-11, atol=1e-13)
    _assert_tree_close(sm, sa, rtol=1e-11, atol=1e-13)
    _assert_tree_close(pm, pr, rtol=1e-13, atol=1e-15)
    _assert_tree_close(sm, sr, rtol=1e-13, atol=1e-15)
    assert not np.array_equal(_leaves(pm)[0], _leaves(params)[0])


def test_named_sgd_optimizer_equals_plain_sgd(float64):
    net = _classifier()
    params = _params(net, 0)
    x, y = _blobs(10)
    plain, _ = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.2)(params, x, y)
    tx = fnn.make_optimizer("sgd", 0.2)
    named, _, _ = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.2, optimizer="sgd")(params, tx.init(params), x, y)
    _assert_tree_close(plain, named, rtol=1e-15, atol=1e-16)


# --- 4. fit_ensemble ------------------------------------------------------------------------------------

def test_fit_ensemble_equals_each_member_trained_alone(float64):
    net = _classifier()
    init_keys = jax.random.split(jax.random.key(1), 3)
    shuffle_keys = jax.random.split(jax.random.key(2), 3)
    lrs = [0.05, 0.2, 0.5]
    stacked = jax.vmap(net.init)(init_keys)
    train, test = _blobs(30), _blobs(11, seed=1)
    kw = dict(loss=SPARSE_CE, epochs=3, batch_size=7)
    params, history = fnn.fit_ensemble(net, stacked, train, test, learning_rate=lrs, keys=shuffle_keys, **kw)

    assert all(t.shape[0] == 3 for t in jax.tree_util.tree_leaves(params))
    assert history["epoch"] == [1, 2, 3]
    for name in ("train_loss", "test_loss", "test_accuracy"):
        assert np.asarray(history[name]).shape == (3, 3), name  # (epochs, members)
    for k in range(3):
        alone, h = fnn.fit(net, _member(stacked, k), train, test, learning_rate=lrs[k], key=shuffle_keys[k],
                           progress=False, **kw)
        _assert_tree_close(_member(params, k), alone, rtol=1e-12, atol=1e-13)
        for name in ("train_loss", "test_loss"):
            np.testing.assert_allclose([row[k] for row in history[name]], h[name], rtol=1e-12)
        assert [row[k] for row in history["test_accuracy"]] == h["test_accuracy"]
    # The members really differ (different inits, shuffles and learning rates).
    assert not np.allclose(_leaves(_member(params, 0))[0], _leaves(_member(params, 1))[0])


def test_fit_ensemble_freezes_a_diverging_member_and_trains_the_others():
    net = _classifier()
    stacked = jax.tree_util.tree_map(lambda *t: jnp.stack(t), *[_params(net, k) for k in range(3)])
    keys = jax.random.split(jax.random.key(2), 3)
    lrs = [0.1, 1e38, 0.2]  # member 1 overflows float32 in its first step
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=4)
    with pytest.warns(fnn.DivergenceWarning, match=r"member 1 \(learning rate 1e\+38\) diverged in epoch 1"):
        params, history = fnn.fit_ensemble(net, stacked, _blobs(12), learning_rate=lrs, keys=keys, **kw)
    assert set(history["diverged"]) == {1} and history["diverged"][1]["epoch"] == 1
    assert all(np.isnan(row[1]) for row in history["train_loss"])
    _assert_tree_close(_member(params, 1), _member(stacked, 1), rtol=0, atol=0)  # frozen at its start
    for k in (0, 2):
        assert all(np.isfinite(row[k]) for row in history["train_loss"])
        alone, _ = fnn.fit(net, _member(stacked, k), _blobs(12), learning_rate=lrs[k], key=keys[k],
                           progress=False, **kw)
        _assert_tree_close(_member(params, k), alone, rtol=1e-5, atol=1e-6)


def test_fit_ensemble_rejects_per_member_learning_rates_with_an_optax_optimizer():
    net = _classifier()
    stacked = jax.tree_util.tree_map(lambda *t: jnp.stack(t), *[_params(net, k) for k in range(3)])
    keys = jax.random.split(jax.random.key(2), 3)
    for optimizer in ("adam", optax.adam(0.1)):
        with pytest.raises(ValueError, match="Per-member learning rates"):
            fnn.fit_ensemble(net, stacked, _blobs(12), loss=SPARSE_CE, epochs=1, batch_size=4,
                             learning_rate=[0.1, 0.2, 0.3], optimizer=optimizer, keys=keys)


# --- 5. evaluate ----------------------------------------------------------------------------------------

def test_evaluate_chunked_equals_unchunked_and_numpy(float64):
    net = _classifier()
    params = _params(net, 4)
    x, y = _blobs(23, seed=3)
    out = np.asarray(jax.jit(net.apply)(params, x))
    ref_loss = -np.mean(np.log(out[np.arange(23), y]))
    ref_acc = np.mean(out.argmax(axis=1) == y)
    assert 0 < ref_acc < 1  # so that a wrong accuracy cannot pass by luck
    onehot = fnn.one_hot(y, 3, dtype=np.float64)
    for batch_size in (5, 4096):  # 23 = 4 chunks of 5 + a remainder of 3; one chunk of 23
        sparse = fnn.evaluate(net, params, x, y, SPARSE_CE, batch_size=batch_size)
        dense = fnn.evaluate(net, params, x, onehot, "categorical_cross_entropy", batch_size=batch_size)
        for metrics in (sparse, dense):
            assert metrics["loss"] == pytest.approx(ref_loss, rel=1e-12)
            assert metrics["accuracy"] == ref_acc


def test_evaluate_single_output_sigmoid_thresholds_and_regression_has_no_accuracy(float64):
    x, labels = _blobs(19, n_out=2, seed=5)
    y = labels.astype(np.float64)
    sig = fnn.mlp([4, 5, 1], hidden="tanh", output="sigmoid")
    logit = fnn.mlp([4, 5, 1], hidden="tanh", output="identity")
    params = _params(sig, 6)
    p = np.asarray(jax.jit(sig.apply)(params, x))[:, 0]
    ref_acc = np.mean((p > 0.5) == (y > 0.5))
    ref_bce = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
    assert 0 < ref_acc < 1
    for batch_size in (4, 19):
        by_prob = fnn.evaluate(sig, params, x, y, "binary_cross_entropy", batch_size=batch_size)
        by_logit = fnn.evaluate(logit, params, x, y, "sigmoid_binary_cross_entropy", batch_size=batch_size)
        for metrics in (by_prob, by_logit):  # same params: threshold 0.5 on p == threshold 0 on the logit
            assert metrics["accuracy"] == ref_acc
            assert metrics["loss"] == pytest.approx(ref_bce, rel=1e-10)

    reg = fnn.mlp([4, 5, 1], hidden="tanh", output="identity")
    target = x @ np.array([1.0, -1.0, 0.5, 2.0])
    ref_mse = np.mean((np.asarray(jax.jit(reg.apply)(params, x))[:, 0] - target) ** 2)
    for batch_size in (4, 19):
        metrics = fnn.evaluate(reg, params, x, target, "mse", batch_size=batch_size)
        assert metrics["accuracy"] is None
        assert metrics["loss"] == pytest.approx(ref_mse, rel=1e-12)


# --- 6. history, learning, determinism ------------------------------------------------------------------

def test_fit_learns_digits_with_full_history_and_is_deterministic():
    (x, y), (x_test, y_test) = fnn.load_dataset("digits")
    net = fnn.mlp([64, 32, 10], hidden="relu", output="softmax")
    params0 = _params(net, 0)
    kw = dict(loss=SPARSE_CE, epochs=4, batch_size=32, learning_rate=0.01, optimizer="adam",
              key=jax.random.key(1), progress=False)
    params, history = fnn.fit(net, params0, (x, y), (x_test, y_test), **kw)

    assert set(history) == {"epoch", "train_loss", "epoch_time", "test_loss", "test_accuracy"}
    assert history["epoch"] == [1, 2, 3, 4]
    assert all(len(v) == 4 for v in history.values())
    assert history["test_accuracy"][-1] > 0.9
    assert history["train_loss"][-1] < history["train_loss"][0]
    final = fnn.evaluate(net, params, x_test, y_test, SPARSE_CE)
    assert history["test_loss"][-1] == final["loss"]
    assert history["test_accuracy"][-1] == final["accuracy"]

    again, history2 = fnn.fit(net, params0, (x, y), (x_test, y_test), **kw)
    _assert_tree_equal(params, again)
    assert _without_time(history) == _without_time(history2)


def test_fit_history_without_test_set_and_key_changes_result():
    net = _classifier()
    params0 = _params(net, 0)
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=5, learning_rate=0.1, progress=False)
    p1, h1 = fnn.fit(net, params0, _blobs(20), key=jax.random.key(1), **kw)
    assert set(h1) == {"epoch", "train_loss", "epoch_time"}
    assert h1["epoch"] == [1, 2] and len(h1["train_loss"]) == 2 and len(h1["epoch_time"]) == 2
    p2, _ = fnn.fit(net, params0, _blobs(20), key=jax.random.key(2), **kw)
    assert not np.array_equal(_leaves(p1)[0], _leaves(p2)[0])  # the shuffle key matters


# --- 7. checkpoint and resume ---------------------------------------------------------------------------

def _resume_setup(optimizer):
    net = _classifier()
    kw = dict(loss=SPARSE_CE, batch_size=8, learning_rate=0.05, optimizer=optimizer, key=jax.random.key(3),
              progress=False)
    return net, _params(net, 0), _blobs(30), _blobs(9, seed=1), kw


@pytest.mark.parametrize("optimizer", [None, "adam"])
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, optimizer):
    net, params0, train, test, kw = _resume_setup(optimizer)
    straight, h_straight = fnn.fit(net, params0, train, test, epochs=4, **kw)
    half, h_half = fnn.fit(net, params0, train, test, epochs=2, checkpoint_dir=tmp_path, **kw)
    saved = fnn.load(tmp_path / CHECKPOINT_NAME, net)
    assert h_half["epoch"] == [1, 2] and saved.metadata["epoch"] == 2
    _assert_tree_equal(saved.params, half)
    # Start the resumed run from other params: they must be ignored in favour of the checkpoint.
    other = _params(net, 99)
    resumed, h_resumed = fnn.fit(net, other, train, test, epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    _assert_tree_equal(resumed, straight)
    assert _without_time(h_resumed) == _without_time(h_straight)
    assert len(h_resumed["epoch_time"]) == 4
    assert fnn.load(tmp_path / CHECKPOINT_NAME, net).metadata["epoch"] == 4


def test_resume_rejects_a_different_configuration(tmp_path):
    net, params0, train, _, kw = _resume_setup("adam")
    fnn.fit(net, params0, train, epochs=1, checkpoint_dir=tmp_path, **kw)
    resume = dict(kw, epochs=3, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"batch_size: checkpoint 8, now 10"):
        fnn.fit(net, params0, train, **dict(resume, batch_size=10))
    with pytest.raises(ValueError) as err:
        fnn.fit(net, params0, train, **dict(resume, loss="sparse_softmax_cross_entropy"))
    assert SPARSE_CE in str(err.value) and "sparse_softmax_cross_entropy" in str(err.value)
    # A named optimizer carries its learning rate: a different one cannot silently continue.
    with pytest.raises(ValueError, match=r"lr: checkpoint 0\.05, now 0\.1"):
        fnn.fit(net, params0, train, **dict(resume, learning_rate=0.1))
    with pytest.raises(ValueError, match=r"optimizer: checkpoint 'adam', now None"):
        fnn.fit(net, params0, train, **dict(resume, optimizer=None))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fnn.fit(net, params0, train, **dict(kw, epochs=3, resume=True))


def test_resume_with_and_without_a_test_set_keeps_history_aligned(tmp_path):
    net, params0, train, test, kw = _resume_setup(None)
    fnn.fit(net, params0, train, epochs=1, checkpoint_dir=tmp_path, **kw)  # no test set
    _, h = fnn.fit(net, params0, train, test, epochs=2, checkpoint_dir=tmp_path, resume=True, **kw)
    assert h["epoch"] == [1, 2] and h["test_loss"][0] is None and np.isfinite(h["test_loss"][1])
    assert h["test_accuracy"][0] is None and 0 <= h["test_accuracy"][1] <= 1
    _, h = fnn.fit(net, params0, train, epochs=3, checkpoint_dir=tmp_path, resume=True, **kw)  # test set gone
    assert h["epoch"] == [1, 2, 3] and h["test_loss"][2] is None
    assert all(len(h[k]) == 3 for k in ("train_loss", "epoch_time", "test_loss", "test_accuracy"))


def test_resume_after_divergence_moves_the_record_to_earlier_divergences(tmp_path):
    net, params0, train, _, kw = _resume_setup(None)
    fnn.fit(net, params0, train, epochs=1, checkpoint_dir=tmp_path, **kw)
    ckpt = fnn.load(tmp_path / CHECKPOINT_NAME, net)
    record = {"epoch": 2, "step": 0, "layer": 1, "message": "diverged (a record written by hand)"}
    history = dict(ckpt.metadata["history"], diverged=record)
    fnn.save(tmp_path / CHECKPOINT_NAME, ckpt.params, net=net, arrays=ckpt.arrays,
             metadata=dict(ckpt.metadata, history=history))
    _, h = fnn.fit(net, params0, train, epochs=2, checkpoint_dir=tmp_path, resume=True, **kw)
    assert "diverged" not in h and h["earlier_divergences"] == [record] and h["epoch"] == [1, 2]


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
    params0 = _params(net, 1)
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
    assert _all_finite(params)

    finished, _ = fnn.fit(net, params0, train, epochs=epoch - 1, **DIVERGING)
    _assert_tree_equal(params, finished)
    ckpt = fnn.load(tmp_path / CHECKPOINT_NAME, net)
    _assert_tree_equal(ckpt.params, params)
    assert ckpt.metadata["epoch"] == epoch - 1

    # The reported step is the first step of that epoch whose loss or update is non-finite.
    step = fnn.sgd_step(net, "mse", learning_rate=2.0)
    p, x, y = finished, *train
    for s, idx in enumerate(_batches(DIVERGING["key"], epoch - 1, 20, 5)):
        new, value = step(p, x[idx], y[idx])
        if not (np.isfinite(float(value)) and _all_finite(new)):
            break
        p = new
    assert diverged["step"] == s


def test_strict_freezes_at_the_last_finite_step():
    net = fnn.mlp([3, 1], output="identity")
    params0 = _params(net, 1)
    train = _regression()
    with pytest.warns(fnn.DivergenceWarning):
        params, history = fnn.fit(net, params0, train, epochs=50, strict=True, **DIVERGING)
    assert _all_finite(params)
    epoch, bad = history["diverged"]["epoch"], history["diverged"]["step"]
    assert history["epoch"] == list(range(1, epoch))
    # Reference: the finished epochs, then the steps of the diverging epoch up to the first bad one.
    p, _ = fnn.fit(net, params0, train, epochs=epoch - 1, **DIVERGING)
    step = fnn.sgd_step(net, "mse", learning_rate=2.0)
    x, y = train
    batches = _batches(DIVERGING["key"], epoch - 1, 20, 5)
    for idx in batches[:bad]:
        p, _ = step(p, x[idx], y[idx])
    _assert_tree_close(params, p, rtol=1e-5, atol=0)
    new, value = step(p, x[batches[bad]], y[batches[bad]])
    assert not (np.isfinite(float(value)) and _all_finite(new))


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
    assert np.isfinite(float(loss)) and _all_finite(grads[0]) and not _all_finite(grads[1])
    with pytest.warns(fnn.DivergenceWarning, match="layer 1's gradient"):
        params, history = fnn.fit(net, params0, (x, y), loss="mse", epochs=2, batch_size=4, learning_rate=1e-3,
                                  key=jax.random.key(2), progress=False, strict=strict)
    assert history["diverged"]["epoch"] == 1 and history["diverged"]["step"] == 0
    assert history["diverged"]["layer"] == 1
    _assert_tree_equal(params, params0)


def test_strict_detects_an_update_that_overflows_while_loss_and_grads_are_finite():
    # lr * dW exceeds float32's max although the loss and every gradient are finite: strict mode used to
    # freeze the params silently and report a finite training loss, with no warning.
    net = fnn.mlp([3, 4, 1], hidden="tanh", output="identity")
    params0 = _params(net, 1)
    with pytest.warns(fnn.DivergenceWarning, match="epoch 1 at step 0"):
        params, history = fnn.fit(net, params0, _regression(), loss="mse", epochs=2, batch_size=5,
                                  learning_rate=3e38, key=jax.random.key(2), progress=False, strict=True)
    assert history["epoch"] == [] and history["diverged"]["layer"] is None
    _assert_tree_equal(params, params0)


# --- 9. interrupt ---------------------------------------------------------------------------------------

def _stop_after(epochs_done):
    def callback(epoch, history):
        assert history["epoch"][-1] == epoch
        if epoch == epochs_done:
            raise KeyboardInterrupt

    return callback


def test_interrupt_saves_a_checkpoint_and_resuming_finishes_bit_identically(tmp_path):
    net, params0, train, test, kw = _resume_setup("adam")
    with pytest.raises(fnn.TrainingInterrupted) as info:
        # checkpoint_every=3: the only checkpoint after epoch 2 is the one written on interrupt.
        fnn.fit(net, params0, train, test, epochs=4, checkpoint_dir=tmp_path, checkpoint_every=3,
                callback=_stop_after(2), **kw)
    err = info.value
    assert isinstance(err, KeyboardInterrupt)
    assert err.history["epoch"] == [1, 2]
    assert err.checkpoint == tmp_path / CHECKPOINT_NAME and err.checkpoint.exists()
    assert "resume=True" in str(err) and str(tmp_path) in str(err) and "2 epoch" in str(err)
    ckpt = fnn.load(err.checkpoint, net)
    assert ckpt.metadata["epoch"] == 2
    _assert_tree_equal(ckpt.params, err.params)

    resumed, h_resumed = fnn.fit(net, params0, train, test, epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    straight, h_straight = fnn.fit(net, params0, train, test, epochs=4, **kw)
    _assert_tree_equal(resumed, straight)
    assert _without_time(h_resumed) == _without_time(h_straight)
    assert _without_time(err.history) == {k: v[:2] for k, v in _without_time(h_straight).items()}


def test_interrupt_without_checkpoint_dir_says_how_to_keep_one():
    net = _classifier()
    params0 = _params(net, 0)
    with pytest.raises(fnn.TrainingInterrupted, match="checkpoint_dir") as info:
        fnn.fit(net, params0, _blobs(20), loss=SPARSE_CE, epochs=3, batch_size=5, key=jax.random.key(1),
                progress=False, callback=_stop_after(1))
    assert info.value.checkpoint is None and info.value.history["epoch"] == [1]
    assert _all_finite(info.value.params)


# --- 10. errors -----------------------------------------------------------------------------------------

def _fit_call(**overrides):
    net = _classifier()
    x, y = _blobs(20)
    args = dict(net=net, params=_params(net, 0), train=(x, y), loss=SPARSE_CE, epochs=1,
                batch_size=5, learning_rate=0.1, key=jax.random.key(1), progress=False)
    args.update(overrides)
    net, params, train = args.pop("net"), args.pop("params"), args.pop("train")
    return lambda: fnn.fit(net, params, train, **args)


_X, _Y = _blobs(20)

ERRORS = {
    "epochs 0": (dict(epochs=0), ValueError, ["epochs", "positive int", "got 0"]),
    "batch_size 0": (dict(batch_size=0), ValueError, ["batch_size", "positive int", "got 0"]),
    "batch_size > n": (dict(batch_size=21), ValueError, ["batch_size (21)", "(20 examples)"]),
    "negative lr": (dict(learning_rate=-0.1), ValueError, ["learning_rate", "positive", "-0.1"]),
    "zero lr": (dict(learning_rate=0.0), ValueError, ["learning_rate", "positive", "got 0.0"]),
    "unknown optimizer": (dict(optimizer="adamm"), ValueError, ["'adamm'", "Did you mean 'adam'?", "momentum"]),
    "unknown grads": (dict(grads="manul"), ValueError, ["'manul'", "Did you mean 'manual'?", "autodiff"]),
    "x/y length": (dict(train=(_X, _Y[:19])), ValueError, ["x has 20", "(19,)"]),
    "feature count": (dict(train=(_X[:, :3], _Y)), ValueError, ["expected 4 input features", "got 3"]),
    "other network": (dict(params=_params(fnn.mlp([4, 7, 3]))), ValueError,
                      ["Layer 0", "(4, 6)", "(4, 7)"]),
    "label out of range": (dict(train=(_X, np.where(_Y == 2, 3, _Y).astype(np.int32))), ValueError,
                           ["[0, 3)", "3 outputs", "to 3"]),
    "float sparse labels": (dict(train=(_X, _Y.astype(np.float32))), TypeError, ["integer", "float32"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_fit_errors_name_the_expected_and_the_given_value(case):
    overrides, exc, pieces = ERRORS[case]
    with pytest.raises(exc) as err:
        _fit_call(**overrides)()
    for piece in pieces:
        assert piece in str(err.value), (piece, str(err.value))


def test_sgd_step_and_evaluate_errors():
    net = _classifier()
    with pytest.raises(ValueError, match=r"Unknown grads mode 'jax'.*autodiff.*manual"):
        fnn.sgd_step(net, SPARSE_CE, grads="jax")
    with pytest.raises(ValueError, match=r"learning_rate must be a positive number, got -1\.0"):
        fnn.sgd_step(net, SPARSE_CE, learning_rate=-1.0)
    with pytest.raises(ValueError, match=r"Unknown optimizer 'sgdd'\. Did you mean 'sgd'\?"):
        fnn.sgd_step(net, SPARSE_CE, optimizer="sgdd")
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        fnn.evaluate(net, _params(net, 0), _X, _Y, SPARSE_CE, batch_size=0)


def test_fit_ensemble_rejects_unstacked_params():
    net = _classifier()
    with pytest.raises(ValueError, match=r"stacked params.*\(K, 4, 6\), got \(4, 6\)"):
        fnn.fit_ensemble(net, _params(net, 0), (_X, _Y), loss=SPARSE_CE, epochs=1, batch_size=5,
                         keys=jax.random.split(jax.random.key(1), 3))


# --- the epoch order ----------------------------------------------------------------------------------------

def test_epoch_order_is_a_permutation_replayed_by_lexsort():
    key = jax.random.key(11)
    order = fnn.train.epoch_order(key, 1000)
    assert order.dtype == jnp.int32 and order.shape == (1000,)
    assert np.array_equal(np.sort(np.asarray(order)), np.arange(1000))
    words = np.asarray(jax.random.bits(key, (2, 1000), jnp.uint32))
    assert np.array_equal(np.asarray(order), np.lexsort((np.arange(1000), words[1], words[0])))
    assert np.array_equal(np.asarray(jax.jit(fnn.train.epoch_order, static_argnums=1)(key, 1000)), np.asarray(order))
    assert not np.array_equal(np.asarray(fnn.train.epoch_order(jax.random.key(12), 1000)), np.asarray(order))


def test_epoch_order_positions_are_uniform():
    """Over 4,000 keys, where index 0 lands is uniform over 8 slots (chi-square, 7 dof, p = 0.001 cut-off 24.3)."""
    keys = jax.random.split(jax.random.key(0), 4000)
    orders = np.asarray(jax.vmap(lambda k: fnn.train.epoch_order(k, 8))(keys))
    counts = np.bincount(np.argmax(orders == 0, axis=1), minlength=8)
    chi2 = ((counts - 500.0) ** 2 / 500.0).sum()
    assert chi2 < 24.3, counts


@pytest.mark.parametrize("n", [0, -3, 2.5, True, 2**31])
def test_epoch_order_refuses_bad_n(n):
    with pytest.raises(ValueError, match="positive integer"):
        fnn.train.epoch_order(jax.random.key(0), n)


# --- label range in sgd_step ----------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", [None, "adam"])
@pytest.mark.parametrize("as_jax", [False, True])
def test_sgd_step_checks_concrete_label_range(optimizer, as_jax):
    net = _classifier()
    params = _params(net)
    x, y = _blobs(6)
    y = np.concatenate([[3], y[1:]]).astype(np.int32)  # 3 outputs: label 3 is out of range
    y = jnp.asarray(y) if as_jax else y
    step = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.1, optimizer=optimizer)
    args = (params, x, y) if optimizer is None else (params, fnn.make_optimizer("adam", 0.1).init(params), x, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*to 3"):
        step(*args)
    # Under the caller's own jit the labels are tracers: no check, no error (documented in RELIABILITY.md).
    out = jax.jit(step)(*args)
    assert np.isfinite(float(out[-1]))
