"""Tests for fnn/evaluation.py: ``evaluate`` against NumPy, chunked against unchunked.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import SPARSE_CE, blobs, classifier, scaled_params

import fnn

# --- 5. evaluate ----------------------------------------------------------------------------------------

def test_evaluate_chunked_equals_unchunked_and_numpy(float64):
    net = classifier()
    params = scaled_params(net, 4)
    x, y = blobs(23, seed=3)
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
    x, labels = blobs(19, n_out=2, seed=5)
    y = labels.astype(np.float64)
    sig = fnn.mlp([4, 5, 1], hidden="tanh", output="sigmoid")
    logit = fnn.mlp([4, 5, 1], hidden="tanh", output="identity")
    params = scaled_params(sig, 6)
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
