"""Tests for fnn/_checks.py: the data checks fit, fit_ensemble and evaluate share (labels range-checked before
any narrowing cast, dtypes refused by fnn), and the memory check that refuses a network too large to train."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SPARSE_CE, blobs, classifier, scaled_params

import fnn
from fnn import _checks

HUGE = [64, 10**6, 10**6, 10]  # 4.0 TB of float32 params
HUGE_BYTES = 4 * (64 * 10**6 + 10**6 + 10**12 + 10**6 + 10**7 + 10)


def _fake_memory(monkeypatch, available: int) -> None:
    monkeypatch.setattr(_checks, "available_memory", lambda device=None: (available, "host memory (test)"))


# --- labels and dtypes ---------------------------------------------------------------------------------------

DATA_PATHS = {
    "fit": lambda net, p, x, y: fnn.fit(net, p, (x, y), loss=SPARSE_CE, epochs=1, batch_size=4,
                                        key=jax.random.key(0), progress=False),
    "fit test set": lambda net, p, x, y: fnn.fit(net, p, blobs(8), (x, y), loss=SPARSE_CE, epochs=1,
                                                 batch_size=4, key=jax.random.key(0), progress=False),
    "evaluate": lambda net, p, x, y: fnn.evaluate(net, p, x, y, SPARSE_CE),
    "fit_ensemble": lambda net, p, x, y: fnn.fit_ensemble(
        net, jax.tree_util.tree_map(lambda t: jnp.stack([t, t]), p), (x, y), loss=SPARSE_CE, epochs=1,
        batch_size=4, keys=jax.random.split(jax.random.key(0), 2)),
}


@pytest.mark.parametrize("path", list(DATA_PATHS))
def test_int64_labels_beyond_int32_are_refused_before_any_cast(path):
    """4294967297 used to become label 1 (jnp.asarray narrows int64 to int32 without x64) and train silently."""
    net = classifier()
    x, y = blobs(8)
    y = y.astype(np.int64)
    y[5] = 2**32 + 1
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*got label 4294967297 at index 5"):
        DATA_PATHS[path](net, scaled_params(net), x, y)


@pytest.mark.parametrize("path", list(DATA_PATHS))
@pytest.mark.parametrize("which, value, shown", [
    ("x", lambda x, y: (x.astype(object), y), "object"),
    ("x", lambda x, y: (x + 0j, y), "complex128"),
    ("y", lambda x, y: (x, np.array(["a", "b", "c"])[y]), "<U1"),
], ids=["object x", "complex x", "string y"])
def test_data_of_objects_strings_or_complex_numbers_is_refused_by_fnn(path, which, value, shown):
    net = classifier()
    x, y = value(*blobs(8))
    with pytest.raises(TypeError, match=rf"{which} must be an array of real numbers, got dtype {shown}"):
        DATA_PATHS[path](net, scaled_params(net), x, y)


# --- memory ----------------------------------------------------------------------------------------------------

def test_a_huge_network_is_sized_without_allocating():
    """fnn.mlp allocates nothing and init stays pure: jax.eval_shape sizes 4 TB of params in no time."""
    net = fnn.mlp(HUGE)
    shapes = jax.eval_shape(net.init, jax.random.key(0))
    assert _checks.tree_bytes(shapes) == HUGE_BYTES
    assert _checks.tree_bytes(net.param_shapes()) == 0  # plain tuples of ints are not arrays
    assert sum(4 * int(np.prod(s)) for layer in net.param_shapes() for s in layer.values()) == HUGE_BYTES


@pytest.mark.parametrize("fake", [True, False], ids=["64 GB machine", "this machine"])
def test_fit_refuses_a_network_too_large_for_memory(monkeypatch, fake):
    """It used to hang; now a ValueError with the sizes in GB, before anything is allocated or compiled."""
    if fake:
        _fake_memory(monkeypatch, 64 * 10**9)
    net = fnn.mlp(HUGE)
    params = jax.eval_shape(net.init, jax.random.key(0))  # what fit sees is only shapes and dtypes
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int32)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        fnn.fit(net, params, (x, y), loss="sparse_softmax_cross_entropy", epochs=1, batch_size=2,
                key=jax.random.key(0), progress=False)
    assert time.perf_counter() - start < 30
    msg = str(err.value)
    assert msg.startswith("fit: the network is too large") and "its params take 4,000.3 GB" in msg
    assert "needs about 8,000.6 GB more (2 × the params: updated params and gradients)" in msg
    assert ("only 64.0 GB of host memory (test)" in msg) if fake else " GB of " in msg


@pytest.mark.parametrize("optimizer, strict, copies, states", [
    (None, False, 2, 0), (None, True, 3, 0), ("momentum", False, 2, 1), ("adam", True, 3, 2),
    (optax.adam(1e-3), False, 2, 2),
])
def test_memory_check_counts_the_copies_fit_keeps(monkeypatch, optimizer, strict, copies, states):
    net = classifier()
    params = scaled_params(net)
    p = _checks.tree_bytes(params)
    opt, _ = fnn.optim.resolve_optimizer(optimizer, None)
    state = _checks.tree_bytes(opt.init(params)) if opt is not None else 0
    assert state == states * p + (4 if states == 2 else 0)  # adam: mu, nu and an int32 step count
    need = copies * p + 2 * state
    _fake_memory(monkeypatch, need)
    _checks.check_memory(params, opt, strict=strict)  # fits exactly
    _fake_memory(monkeypatch, need - 1)
    with pytest.raises(ValueError, match=rf"needs about .* more \({copies} × the params"):
        _checks.check_memory(params, opt, strict=strict)


def test_fit_and_fit_ensemble_check_memory_before_compiling(monkeypatch):
    _fake_memory(monkeypatch, 100)
    net = classifier()
    params = scaled_params(net)
    x, y = blobs(8)
    compiled = []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(a) or pytest.fail("compiled before the check"))
    with pytest.raises(ValueError, match=r"^fit: the network is too large.*only 1e-07 GB of host memory \(test\)"):
        fnn.fit(net, params, (x, y), loss=SPARSE_CE, epochs=1, batch_size=4, key=jax.random.key(0),
                progress=False, optimizer="adam")
    stacked = jax.tree_util.tree_map(lambda t: jnp.stack([t, t]), params)
    with pytest.raises(ValueError, match=r"^fit_ensemble: the network is too large"):
        fnn.fit_ensemble(net, stacked, (x, y), loss=SPARSE_CE, epochs=1, batch_size=4,
                         keys=jax.random.split(jax.random.key(0), 2))
    assert not compiled


def test_available_memory_asks_the_device_then_the_host():
    available, where = _checks.available_memory()
    assert available > 0 and isinstance(where, str)

    class Accelerator:
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 80 * 10**9, "bytes_in_use": 30 * 10**9}

        def __str__(self):
            return "cuda:0"

    assert _checks.available_memory(Accelerator()) == (50 * 10**9, "gpu memory of cuda:0")
