"""Tests for fnn/initializers.py: shapes, dtypes, determinism, and the variance each formula promises."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import initializers as I

#: (kind, variance as a function of (n_in, n_out)): U(-r, r) has variance r²/3.
EXPECTED = {
    "glorot_uniform": ("uniform", lambda i, o: (6 / (i + o)) / 3),
    "glorot_normal": ("normal", lambda i, o: 2 / (i + o)),
    "he_uniform": ("uniform", lambda i, o: (6 / i) / 3),
    "he_normal": ("normal", lambda i, o: 2 / i),
    "lecun_normal": ("normal", lambda i, o: 1 / i),
    "uniform": ("uniform", lambda i, o: 1 / 3),
    "normal": ("normal", lambda i, o: 1.0),
    "zeros": ("zeros", lambda i, o: 0.0),
}


def test_expected_covers_registry():
    assert sorted(EXPECTED) == I.names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_shape_dtype_and_determinism(name, dtype, x64):
    init = I.get(name)
    key = jax.random.key(3)
    w = init(key, (5, 7), dtype)
    assert w.shape == (5, 7) and w.dtype == dtype
    np.testing.assert_array_equal(w, init(key, (5, 7), dtype))  # same key, same values
    if name != "zeros":
        assert not np.array_equal(np.asarray(w), np.asarray(init(jax.random.key(4), (5, 7), dtype)))
    else:
        assert not np.any(np.asarray(w))


def test_default_dtype_is_float32():
    assert I.get("he_normal")(jax.random.key(0), (3, 2)).dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_empirical_variance_matches_formula(name, x64):
    shape = (300, 900)  # n_in != n_out: fan-in (he, lecun) and fan-average (glorot) formulas differ 2x
    kind, var_fn = EXPECTED[name]
    w = np.asarray(I.get(name)(jax.random.key(11), shape, jnp.float64))
    var = var_fn(*shape)
    if kind == "zeros":
        assert np.all(w == 0)
        return
    n = w.size
    # Sample mean ~ 0 within 5 standard errors; sample variance within 3% (its std error is ≤ √(2/n) ≈ 0.3%).
    assert abs(w.mean()) < 5 * math.sqrt(var / n)
    assert w.var() == pytest.approx(var, rel=0.03)
    if kind == "uniform":
        r = math.sqrt(3 * var)
        assert np.all(np.abs(w) <= r)
        assert np.abs(w).max() > 0.99 * r  # really spans the interval
        # Flat histogram: each of 10 bins holds ~10%.
        hist, _ = np.histogram(w, bins=10, range=(-r, r))
        np.testing.assert_allclose(hist / n, 0.1, atol=0.01)
    else:
        # Normal: ~68.3% within one standard deviation, excess kurtosis ~0 (a uniform would give 57.7%).
        within = np.mean(np.abs(w) < math.sqrt(var))
        assert within == pytest.approx(0.6827, abs=0.01)


def test_uniform_bounds_open_interval(x64):
    w = np.asarray(I.get("uniform")(jax.random.key(5), (300, 300), jnp.float64))
    assert np.all(w > -1) and np.all(w < 1)
    assert w.min() < -0.99 and w.max() > 0.99


def test_aliases_and_get():
    assert I.get("xavier_uniform") is I.get("glorot_uniform")
    assert I.get("xavier_normal") is I.get("glorot_normal")
    rec = I.get("he_normal")
    assert I.get(rec) is rec and repr(rec) == "Initializer('he_normal')"
    assert "xavier_uniform" not in I.names()


def test_unknown_name_error():
    with pytest.raises(ValueError) as err:
        I.get("glorot_unifrom")
    msg = str(err.value)
    assert "Unknown initializer 'glorot_unifrom'" in msg and "Did you mean 'glorot_uniform'?" in msg
    for name in I.names():
        assert name in msg
    with pytest.raises(TypeError, match="Initializer"):
        I.get(0.1)
