"""Tests for fnn/train.py (``sgd_step`` and ``fit``), checked against independent references.

* ``sgd_step`` against the hand update ``W - lr * dW`` and a pure-JAX loss written here;
* a scanned epoch against a Python loop over the same shuffle and steps;
* history, learning on digits, determinism, checkpoint/resume, interrupt, and the error messages.

Tight equalities run in float64; bit-identity claims (resume, determinism) are checked with ``np.array_equal``
in the default float32. Compiling an epoch costs seconds on a small CPU, so every ``fit`` here is tiny.
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
    leaves,
    reference_loss,
    reference_value_and_grad,
    scaled_params,
    tree_finite,
    without_time,
)

import fnn
from fnn.train import CHECKPOINT_NAME

# --- 1. sgd_step ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("grads", ["manual", "autodiff"])
def test_sgd_step_is_w_minus_lr_dw_for_every_leaf_at_once(float64, grads):
    net = fnn.mlp([4, 5, 4, 3], hidden="tanh", output="softmax")
    params = scaled_params(net, 0)
    x, y = blobs(8)
    lr = 0.3
    step = fnn.sgd_step(net, SPARSE_CE, learning_rate=lr, grads=grads)
    new, loss = step(params, x, y)

    grad_fn = fnn.backprop if grads == "manual" else fnn.autodiff
    value, g = jax.jit(lambda p: grad_fn(net, p, x, y, SPARSE_CE))(params)
    ref_value, ref_g = reference_value_and_grad(params, x, y)
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
    assert float(reference_loss(new, x, y)) < float(loss) - 1e-6


def test_sgd_step_float32_matches_reference_with_float32_tolerance():
    net = classifier()
    params = scaled_params(net, 0)
    x, y = blobs(8)
    x = x.astype(np.float32)
    new, loss = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.5)(params, x, y)
    ref_value, ref_g = reference_value_and_grad(params, x, y)
    expected = jax.tree_util.tree_map(lambda p, d: p - 0.5 * d, params, ref_g)
    assert all(t.dtype == jnp.float32 for t in jax.tree_util.tree_leaves(new))
    assert_tree_close(new, expected, rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(float(ref_value), rel=1e-5)


# --- 2. a scanned epoch is the Python loop --------------------------------------------------------------

@pytest.mark.parametrize("optimizer", [None, "adam"])
def test_scanned_epochs_equal_a_python_loop_over_the_same_steps(float64, optimizer):
    net = classifier()
    params0 = scaled_params(net, 0)
    x, y = blobs(20)  # 20 = 3 batches of 6 + 2 dropped examples per epoch
    key, lr, batch_size, epochs = jax.random.key(7), 0.1, 6, 3
    params, history = fnn.fit(net, params0, (x, y), loss=SPARSE_CE, epochs=epochs, batch_size=batch_size,
                              learning_rate=lr, optimizer=optimizer, key=key, progress=False)

    step = fnn.sgd_step(net, SPARSE_CE, learning_rate=lr, optimizer=optimizer)
    p = params0
    state = fnn.make_optimizer(optimizer, lr).init(p) if optimizer else None
    for e in range(epochs):
        batches = fit_batches(key, e, 20, batch_size)
        assert batches.shape == (3, 6)
        losses = []
        for idx in batches:
            if optimizer is None:
                p, value = step(p, x[idx], y[idx])
            else:
                p, state, value = step(p, state, x[idx], y[idx])
            losses.append(float(value))
        assert history["train_loss"][e] == pytest.approx(np.mean(losses), rel=1e-12, abs=1e-14)
    assert_tree_close(params, p, rtol=1e-12, atol=1e-12)
    assert history["epoch"] == [1, 2, 3]


# --- 6. history, learning, determinism ------------------------------------------------------------------

def test_fit_learns_digits_with_full_history_and_is_deterministic():
    (x, y), (x_test, y_test) = fnn.load_dataset("digits")
    net = fnn.mlp([64, 32, 10], hidden="relu", output="softmax")
    params0 = scaled_params(net, 0)
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
    assert_tree_equal(params, again)
    assert without_time(history) == without_time(history2)


def test_fit_history_without_test_set_and_key_changes_result():
    net = classifier()
    params0 = scaled_params(net, 0)
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=5, learning_rate=0.1, progress=False)
    p1, h1 = fnn.fit(net, params0, blobs(20), key=jax.random.key(1), **kw)
    assert set(h1) == {"epoch", "train_loss", "epoch_time"}
    assert h1["epoch"] == [1, 2] and len(h1["train_loss"]) == 2 and len(h1["epoch_time"]) == 2
    p2, _ = fnn.fit(net, params0, blobs(20), key=jax.random.key(2), **kw)
    assert not np.array_equal(leaves(p1)[0], leaves(p2)[0])  # the shuffle key matters


# --- 7. checkpoint and resume ---------------------------------------------------------------------------

def _resume_setup(optimizer):
    net = classifier()
    kw = dict(loss=SPARSE_CE, batch_size=8, learning_rate=0.05, optimizer=optimizer, key=jax.random.key(3),
              progress=False)
    return net, scaled_params(net, 0), blobs(30), blobs(9, seed=1), kw


@pytest.mark.parametrize("optimizer", [None, "adam"])
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, optimizer):
    net, params0, train, test, kw = _resume_setup(optimizer)
    straight, h_straight = fnn.fit(net, params0, train, test, epochs=4, **kw)
    half, h_half = fnn.fit(net, params0, train, test, epochs=2, checkpoint_dir=tmp_path, **kw)
    saved = fnn.load(tmp_path / CHECKPOINT_NAME, net)
    assert h_half["epoch"] == [1, 2] and saved.metadata["epoch"] == 2
    assert_tree_equal(saved.params, half)
    # Start the resumed run from other params: they must be ignored in favour of the checkpoint.
    other = scaled_params(net, 99)
    resumed, h_resumed = fnn.fit(net, other, train, test, epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    assert_tree_equal(resumed, straight)
    assert without_time(h_resumed) == without_time(h_straight)
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
    assert_tree_equal(ckpt.params, err.params)

    resumed, h_resumed = fnn.fit(net, params0, train, test, epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    straight, h_straight = fnn.fit(net, params0, train, test, epochs=4, **kw)
    assert_tree_equal(resumed, straight)
    assert without_time(h_resumed) == without_time(h_straight)
    assert without_time(err.history) == {k: v[:2] for k, v in without_time(h_straight).items()}


def test_interrupt_without_checkpoint_dir_says_how_to_keep_one():
    net = classifier()
    params0 = scaled_params(net, 0)
    with pytest.raises(fnn.TrainingInterrupted, match="checkpoint_dir") as info:
        fnn.fit(net, params0, blobs(20), loss=SPARSE_CE, epochs=3, batch_size=5, key=jax.random.key(1),
                progress=False, callback=_stop_after(1))
    assert info.value.checkpoint is None and info.value.history["epoch"] == [1]
    assert tree_finite(info.value.params)


# --- 10. errors -----------------------------------------------------------------------------------------

def _fit_call(**overrides):
    net = classifier()
    x, y = blobs(20)
    args = dict(net=net, params=scaled_params(net, 0), train=(x, y), loss=SPARSE_CE, epochs=1,
                batch_size=5, learning_rate=0.1, key=jax.random.key(1), progress=False)
    args.update(overrides)
    net, params, train = args.pop("net"), args.pop("params"), args.pop("train")
    return lambda: fnn.fit(net, params, train, **args)


_X, _Y = blobs(20)

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
    "other network": (dict(params=scaled_params(fnn.mlp([4, 7, 3]))), ValueError,
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
    net = classifier()
    with pytest.raises(ValueError, match=r"Unknown grads mode 'jax'.*autodiff.*manual"):
        fnn.sgd_step(net, SPARSE_CE, grads="jax")
    with pytest.raises(ValueError, match=r"learning_rate must be a positive number, got -1\.0"):
        fnn.sgd_step(net, SPARSE_CE, learning_rate=-1.0)
    with pytest.raises(ValueError, match=r"Unknown optimizer 'sgdd'\. Did you mean 'sgd'\?"):
        fnn.sgd_step(net, SPARSE_CE, optimizer="sgdd")
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        fnn.evaluate(net, scaled_params(net, 0), _X, _Y, SPARSE_CE, batch_size=0)


# --- label range in sgd_step ----------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", [None, "adam"])
@pytest.mark.parametrize("as_jax", [False, True])
def test_sgd_step_checks_concrete_label_range(optimizer, as_jax):
    net = classifier()
    params = scaled_params(net)
    x, y = blobs(6)
    y = np.concatenate([[3], y[1:]]).astype(np.int32)  # 3 outputs: label 3 is out of range
    y = jnp.asarray(y) if as_jax else y
    step = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.1, optimizer=optimizer)
    args = (params, x, y) if optimizer is None else (params, fnn.make_optimizer("adam", 0.1).init(params), x, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*to 3"):
        step(*args)
    # Under the caller's own jit the labels are tracers: no check, no error (documented in RELIABILITY.md).
    out = jax.jit(step)(*args)
    assert np.isfinite(float(out[-1]))


def test_interrupt_during_evaluation_keeps_history_and_checkpoint_aligned(tmp_path, monkeypatch):
    """Ctrl-C while epoch 2 is being evaluated: epoch 2 is not recorded at all, and the checkpoint holds the params
    and history of epoch 1 (an epoch used to be appended before its evaluation, leaving test_loss one short)."""
    from fnn import train

    net, params0, train_xy, test, kw = _resume_setup(None)
    real, calls = train.evaluate_checked, []

    def interrupted_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate_checked", interrupted_on_second_call)
    with pytest.raises(fnn.TrainingInterrupted) as info:
        fnn.fit(net, params0, train_xy, test, epochs=3, checkpoint_dir=tmp_path, **kw)
    history = info.value.history
    assert {name: len(v) for name, v in history.items()} == dict.fromkeys(history, 1)
    ckpt = fnn.load(tmp_path / CHECKPOINT_NAME, net)
    assert ckpt.metadata["epoch"] == 1 and len(ckpt.metadata["history"]["test_loss"]) == 1
    one_epoch, _ = fnn.fit(net, params0, train_xy, test, epochs=1, **kw)
    assert_tree_equal(ckpt.params, one_epoch)
    assert_tree_equal(info.value.params, one_epoch)
    monkeypatch.undo()
    resumed, h = fnn.fit(net, params0, train_xy, test, epochs=3, checkpoint_dir=tmp_path, resume=True, **kw)
    straight, h_straight = fnn.fit(net, params0, train_xy, test, epochs=3, **kw)
    assert_tree_equal(resumed, straight)
    assert without_time(h) == without_time(h_straight)


def test_fit_with_devices_builds_only_the_data_parallel_epoch(monkeypatch):
    """fit(devices=...) used to build and jit the single-device epoch as well, and throw it away."""
    from fnn import _program

    def no_single_device_program(*args):
        raise AssertionError("the single-device epoch was built for a data-parallel fit")

    monkeypatch.setattr(_program, "_cached_programs", no_single_device_program)
    net = classifier()
    params, history = fnn.fit(net, scaled_params(net, 0), blobs(12), loss=SPARSE_CE, epochs=1, batch_size=4,
                              key=jax.random.key(0), progress=False, devices=1)
    assert history["epoch"] == [1] and tree_finite(params)


def test_programs_are_reused_across_fit_calls_also_data_parallel():
    """The same configuration gives the same epoch object (so jax.jit's cache hits and a repeated fit does not
    recompile), for one device and for a mesh (fit(devices=N) used to rebuild its shard_map every call)."""
    from fnn import _program

    net = classifier()
    args = (net, SPARSE_CE, "manual", None, 0.1, 12, 4)
    assert _program.program(*args).epoch is _program.program(*args).epoch
    one, other = fnn.parallel.make_mesh(1), fnn.parallel.make_mesh(1)
    assert _program.program(*args, mesh=one).epoch is _program.program(*args, mesh=other).epoch
    assert _program.program(*args, mesh=one).epoch is not _program.program(*args).epoch
