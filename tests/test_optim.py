"""Tests for fnn/optim.py: named optimizers are exactly their optax transformations, manual = autodiff = optax
driven by hand.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from conftest import SPARSE_CE, assert_tree_close, blobs, classifier, leaves, scaled_params

import fnn

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
    net = classifier()
    params = scaled_params(net, 3)
    x, y = blobs(24, seed=2)
    rate = 0.05 if isinstance(optimizer, str) else None  # an optax object carries its own
    manual = fnn.sgd_step(net, SPARSE_CE, learning_rate=rate, optimizer=optimizer)
    auto = fnn.sgd_step(net, SPARSE_CE, learning_rate=rate, optimizer=optimizer, grads="autodiff")

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
    assert_tree_close(pm, pa, rtol=1e-11, atol=1e-13)
    assert_tree_close(sm, sa, rtol=1e-11, atol=1e-13)
    assert_tree_close(pm, pr, rtol=1e-13, atol=1e-15)
    assert_tree_close(sm, sr, rtol=1e-13, atol=1e-15)
    assert not np.array_equal(leaves(pm)[0], leaves(params)[0])


def test_named_sgd_optimizer_equals_plain_sgd(float64):
    net = classifier()
    params = scaled_params(net, 0)
    x, y = blobs(10)
    plain, _ = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.2)(params, x, y)
    tx = fnn.make_optimizer("sgd", 0.2)
    named, _, _ = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.2, optimizer="sgd")(params, tx.init(params), x, y)
    assert_tree_close(plain, named, rtol=1e-15, atol=1e-16)


# --- default learning rates, and the ambiguous pair -------------------------------------------------------

@pytest.mark.parametrize(("name", "rate"), [(None, 0.1), ("sgd", 0.1), ("momentum", 0.01), ("adam", 1e-3)])
def test_each_optimizer_has_its_own_default_learning_rate(name, rate):
    """fit/sgd_step without learning_rate use the optimizer's own default; adam used to inherit SGD's 0.1."""
    from fnn import optim

    assert optim.default_learning_rate(name) == rate
    net = classifier()
    params = scaled_params(net, 0)
    x, y = blobs(12)
    step = fnn.sgd_step(net, SPARSE_CE, optimizer=name)
    explicit = fnn.sgd_step(net, SPARSE_CE, optimizer=name, learning_rate=rate)
    if name is None:
        assert_tree_close(step(params, x, y)[0], explicit(params, x, y)[0], rtol=0, atol=0)
    else:
        state = fnn.make_optimizer(name, rate).init(params)
        assert_tree_close(step(params, state, x, y)[0], explicit(params, state, x, y)[0], rtol=0, atol=0)
    kw = dict(loss=SPARSE_CE, epochs=1, batch_size=4, key=jax.random.key(0), progress=False, optimizer=name)
    assert_tree_close(fnn.fit(net, params, (x, y), **kw)[0], fnn.fit(net, params, (x, y), learning_rate=rate, **kw)[0],
                      rtol=0, atol=0)


def test_a_learning_rate_beside_an_optax_object_is_refused():
    """fit(learning_rate=50, optimizer=optax.adam(1e-3)) used to ignore the 50 silently."""
    net = classifier()
    params = scaled_params(net, 0)
    for call in (lambda: fnn.sgd_step(net, SPARSE_CE, learning_rate=50, optimizer=optax.adam(1e-3)),
                 lambda: fnn.fit(net, params, blobs(12), loss=SPARSE_CE, epochs=1, batch_size=4, learning_rate=50,
                                 optimizer=optax.adam(1e-3), key=jax.random.key(0), progress=False),
                 lambda: fnn.fit_ensemble(net, jax.vmap(net.init)(jax.random.split(jax.random.key(0), 2)), blobs(12),
                                          loss=SPARSE_CE, epochs=1, batch_size=4, learning_rate=50,
                                          optimizer=optax.adam(1e-3), keys=jax.random.split(jax.random.key(1), 2))):
        with pytest.raises(ValueError, match=r"learning_rate=50 was given beside an optax transformation.*ambiguous"):
            call()
    fnn.sgd_step(net, SPARSE_CE, optimizer=optax.adam(1e-3))  # without a rate it is fine


def test_unknown_optimizer_name_without_a_rate_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adamw'.*adam, momentum, sgd"):
        fnn.sgd_step(classifier(), SPARSE_CE, optimizer="adamw")
