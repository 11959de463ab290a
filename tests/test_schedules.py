"""Learning-rate schedules in ``fit``, ``sgd_step`` and ``fit_ensemble``: the rates used step by step equal a
hand-computed sequence, the step count runs on across epochs, and a resumed run is bit-identical on CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SPARSE_CE, assert_tree_close, assert_tree_equal, blobs, classifier, fit_batches, scaled_params

import fnn

N, BATCH, EPOCHS = 24, 6, 3  # 4 steps an epoch, 12 in all


def _schedule():
    # Not monotone and not constant within an epoch: any off-by-one in the step count changes the result.
    return optax.piecewise_constant_schedule(0.5, {3: 0.2, 5: 3.0, 9: 0.1})


def _hand_rates() -> list[float]:
    rates, lr = [], 0.5
    for t in range(EPOCHS * N // BATCH):
        lr = {3: 0.1, 5: 0.3, 9: 0.03}.get(t, lr)  # the products of the boundaries' scales, by hand
        rates.append(lr)
    return rates


def test_the_schedule_values_are_the_hand_sequence():
    np.testing.assert_allclose([float(_schedule()(t)) for t in range(12)], _hand_rates(), rtol=1e-6)


def test_plain_sgd_with_a_schedule_equals_the_hand_loop(float64):
    net, (x, y), key = classifier(), blobs(N), jax.random.key(3)
    params = scaled_params(net)
    got, history = fnn.fit(net, params, (x, y), loss=SPARSE_CE, epochs=EPOCHS, batch_size=BATCH,
                           learning_rate=_schedule(), key=key, progress=False)
    grad = jax.jit(lambda p, xb, yb: fnn.backprop(net, p, xb, yb, SPARSE_CE)[1])
    p, rates = params, iter(_hand_rates())
    for e in range(EPOCHS):
        for idx in fit_batches(key, e, N, BATCH):
            lr, g = next(rates), grad(p, x[idx], y[idx])
            p = jax.tree_util.tree_map(lambda w, d, lr=lr: w - lr * d, p, g)
    assert_tree_close(got, p, rtol=1e-12, atol=1e-14)
    assert len(history["train_loss"]) == EPOCHS


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_every_named_optimizer_takes_the_schedule_inside_the_compiled_epoch(float64, name):
    net, (x, y), key = classifier(), blobs(N), jax.random.key(4)
    params = scaled_params(net)
    got, _ = fnn.fit(net, params, (x, y), loss=SPARSE_CE, epochs=EPOCHS, batch_size=BATCH, optimizer=name,
                     learning_rate=_schedule(), key=key, progress=False)
    opt = {"sgd": lambda s: optax.sgd(s), "momentum": lambda s: optax.sgd(s, momentum=0.9),
           "adam": lambda s: optax.adam(s)}[name](_schedule())
    grad = jax.jit(lambda p, xb, yb: fnn.backprop(net, p, xb, yb, SPARSE_CE)[1])
    p, state = params, opt.init(params)
    for e in range(EPOCHS):
        for idx in fit_batches(key, e, N, BATCH):
            updates, state = opt.update(grad(p, x[idx], y[idx]), state, p)
            p = optax.apply_updates(p, updates)
    assert_tree_close(got, p, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("optimizer", [None, "adam"])
def test_resume_with_a_schedule_is_bit_identical(tmp_path, optimizer):
    net, (x, y), key = classifier(), blobs(N), jax.random.key(5)
    params = scaled_params(net)
    kw = dict(loss=SPARSE_CE, batch_size=BATCH, optimizer=optimizer, key=key, progress=False)
    straight, h1 = fnn.fit(net, params, (x, y), epochs=4, learning_rate=_schedule(), **kw)
    fnn.fit(net, params, (x, y), epochs=2, learning_rate=_schedule(), checkpoint_dir=tmp_path, **kw)
    resumed, h2 = fnn.fit(net, params, (x, y), epochs=4, learning_rate=_schedule(), checkpoint_dir=tmp_path,
                          resume=True, **kw)
    assert_tree_equal(resumed, straight)
    assert h2["train_loss"] == h1["train_loss"]
    # The step count is in the checkpoint: 2 epochs of 4 steps.
    saved = fnn.checkpoint.load(tmp_path / "checkpoint.safetensors")
    counts = [int(v) for v in saved.opt_state if np.asarray(v).dtype == np.int32 and np.asarray(v).ndim == 0]
    assert counts and set(counts) == {16}  # after the resumed run's 4 epochs


def test_sgd_step_with_a_schedule_threads_the_step_count(float64):
    net, (x, y) = classifier(), blobs(8)
    params = scaled_params(net)
    schedule = optax.piecewise_constant_schedule(0.5, {1: 0.1})
    step = fnn.sgd_step(net, SPARSE_CE, learning_rate=schedule)
    opt_state = optax.sgd(schedule).init(params)  # the step count, from 0
    g = jax.jit(lambda p: fnn.backprop(net, p, x, y, SPARSE_CE)[1])
    p1, opt_state, _ = step(params, opt_state, x, y)
    p2, opt_state, _ = step(p1, opt_state, x, y)
    want1 = jax.tree_util.tree_map(lambda w, d: w - 0.5 * d, params, g(params))
    want2 = jax.tree_util.tree_map(lambda w, d: w - 0.05 * d, want1, g(want1))
    assert_tree_close(p2, want2, rtol=1e-12, atol=1e-14)


def test_fit_ensemble_shares_the_schedule_and_equals_each_member_alone(float64):
    net, (x, y) = classifier(), blobs(N)
    stacked = jax.tree_util.tree_map(lambda *t: jnp.stack(t), scaled_params(net, 0), scaled_params(net, 1))
    keys = jax.random.split(jax.random.key(6), 2)
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=BATCH, learning_rate=_schedule(), progress=False)
    together, _ = fnn.fit_ensemble(net, stacked, (x, y), keys=keys, **kw)
    for k in range(2):
        alone, _ = fnn.fit(net, scaled_params(net, k), (x, y), key=keys[k], **kw)
        assert_tree_close(jax.tree_util.tree_map(lambda t, k=k: t[k], together), alone, rtol=1e-12, atol=1e-14)


def test_a_schedule_beside_an_optax_object_is_refused():
    with pytest.raises(ValueError, match="ambiguous"):
        fnn.fit(classifier(), scaled_params(classifier()), blobs(N), loss=SPARSE_CE, epochs=1, batch_size=BATCH,
                learning_rate=_schedule(), optimizer=optax.sgd(0.1), key=jax.random.key(0), progress=False)
