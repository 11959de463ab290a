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
