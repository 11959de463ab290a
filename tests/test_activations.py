"""Tests for fnn/activations.py against the ``jax.nn`` functions of the same name.

Forward values are compared with ``jax.nn``; elementwise derivatives with ``jax.vmap(jax.grad(f))`` of the
``jax.nn`` function (in float64, on a grid that hits the kinks exactly); every backward rule (VJP form,
softmax and log-softmax included) with ``jax.vjp`` of the ``jax.nn`` function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS

import fnn
from fnn import activations as A

#: The independent reference for every registered activation (canonical names).
REFERENCE = {
    "identity": lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.01),
    "elu": jax.nn.elu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "softplus": jax.nn.softplus,
    "swish": jax.nn.silu,
    "binary_step": lambda x: jnp.where(x >= 0, 1, 0).astype(x.dtype),
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
}
ELEMENTWISE = sorted(n for n in REFERENCE if n not in ("softmax", "log_softmax"))
TINY = float(np.finfo(np.float64).tiny)
DENORM = 5e-324
#: Kinks hit exactly: 0 and -0, the smallest normal and subnormal numbers either side, and ±1e-8.
KINKS = [0.0, -0.0, TINY, -TINY, DENORM, -DENORM, 1e-300, -1e-300, 1e-8, -1e-8]
#: Absolute error floor of f' that no float64 formula avoids. gelu_tanh' = ½(1 + t) + ..., t = tanh(u): for
#: z < -2, 1 + t cancels and both fnn and jax.grad(jax.nn.gelu) are ~2e-14 off the exact value (measured
#: against an 80-bit reference); every other derivative matches jax.grad to rounding.
CONDITIONING_ATOL = {"gelu_tanh": 3e-14}


def test_reference_covers_registry():
    assert sorted(REFERENCE) == A.names()


@pytest.mark.parametrize("name", sorted(REFERENCE))
@TRANSFORMS
def test_forward_matches_jax_nn(name, transform, x64):
    z = jnp.asarray(np.random.default_rng(0).normal(size=(7, 5)) * 4)
    z = z.at[0, :].set(jnp.array([0.0, -0.0, 1e-12, -1e-12, 3.0]))
    got = transform(A.get(name).forward)(z)
    want = REFERENCE[name](z)
    assert got.shape == z.shape and got.dtype == z.dtype
    # gelu_tanh's ½z(1 + t) cancels for z < -2 as its derivative does: a few ulps of O(1) under jit's fusion.
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15 if name == "gelu_tanh" else 0)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_forward_float32_dtype_preserved(name):
    z = jnp.linspace(-3, 3, 12, dtype=jnp.float32).reshape(3, 4)
    got = A.get(name).forward(z)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, REFERENCE[name](z), rtol=2e-6, atol=1e-7)


def test_binary_step_values():
    z = jnp.array([-2.0, -1e-30, -0.0, 0.0, 1e-30, 5.0])
    np.testing.assert_array_equal(A.binary_step.forward(z), [0, 0, 1, 1, 1, 1])  # step(0) = 1 (z >= 0)


def test_aliases():
    assert A.get("silu") is A.swish
    assert A.get("linear") is A.identity
    assert A.get("Leaky-ReLU") is A.leaky_relu  # case and dash are normalised
    assert A.get(A.tanh) is A.tanh


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_derivative_matches_jax_grad(name, x64):
    """f' == jax.grad of the jax.nn function, to 1e-12 relative, on a grid containing the kinks exactly.

    The tight part of the grid stops at |z| = 3: beyond, sigmoid/tanh/gelu_tanh derivatives are computed from a
    saturated output (1 - a, 1 + t) whose own rounding makes the derivative ill-conditioned for any formula. On
    the tails (up to ±40, and ±1e4) the derivative must stay finite and agree to 1e-7 relative or at rounding
    level absolutely.
    """
    core = np.concatenate([np.linspace(-3, 3, 121), KINKS])
    tails = np.concatenate([np.linspace(-40, -3.05, 40), np.linspace(3.05, 40, 40), [-1e4, 1e4]])
    z = jnp.asarray(np.concatenate([core, tails]))
    got = np.asarray(A.get(name).derivative(z))
    want = np.asarray(jax.vmap(jax.grad(REFERENCE[name]))(z))
    assert got.dtype == np.float64 and np.all(np.isfinite(got))
    n = len(core)
    np.testing.assert_allclose(got[:n], want[:n], rtol=1e-12, atol=0)
    np.testing.assert_allclose(got[n:], want[n:], rtol=1e-7, atol=1e-14)


def test_derivative_conventions_at_zero(x64):
    """The documented kink conventions, spelled out (each equals jax.grad of the jax.nn function)."""
    d = {n: np.asarray(A.get(n).derivative(jnp.array([0.0, -TINY]))) for n in ELEMENTWISE}
    at0 = {n: float(v[0]) for n, v in d.items()}
    assert at0["relu"] == 0.0
    assert at0["leaky_relu"] == 1.0
    assert at0["elu"] == 1.0
    assert at0["binary_step"] == 0.0
    assert at0["identity"] == 1.0
    assert at0["sigmoid"] == 0.25
    assert at0["tanh"] == 1.0
    assert at0["gelu"] == 0.5 and at0["gelu_tanh"] == 0.5 and at0["swish"] == 0.5 and at0["softplus"] == 0.5
    # Just left of the kinks:
    neg = {n: float(d[n][1]) for n in ("relu", "leaky_relu", "elu")}
    assert neg == {"relu": 0.0, "leaky_relu": 0.01, "elu": 1.0}


@pytest.mark.parametrize("name", sorted(REFERENCE))
@TRANSFORMS
def test_backward_matches_jax_vjp(name, transform, x64):
    """backward(z, a, g) == jax.vjp of the jax.nn function, for random upstream g (softmax rows included)."""
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(6, 5)) * 2)
    z = z.at[0, :].set(jnp.array([0.0, -0.0, TINY, -TINY, 1.0]))
    g = jnp.asarray(rng.normal(size=z.shape))
    act = A.get(name)
    got = transform(lambda z, g: act.backward(z, act.forward(z), g))(z, g)
    _, vjp = jax.vjp(REFERENCE[name], z)
    (want,) = vjp(g)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=CONDITIONING_ATOL.get(name, 1e-15))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_vector_activations_are_not_elementwise(name, x64):
    act = A.get(name)
    assert not act.elementwise and act.derivative is None
    # The Jacobian really is full: a one-hot upstream gradient changes every input's gradient.
    z = jnp.array([[0.3, -1.0, 2.0]])
    g = jnp.array([[1.0, 0.0, 0.0]])
    dz = act.backward(z, act.forward(z), g)
    assert np.all(np.asarray(dz) != 0)


def test_elementwise_records():
    for name in ELEMENTWISE:
        assert A.get(name).elementwise


def test_softmax_rows_normalised_and_shift_invariant(x64):
    z = jnp.array([[1000.0, 1001.0, 999.0], [-1000.0, -1001.0, -999.0], [0.0, 0.0, 0.0]])
    s = np.asarray(A.softmax.forward(z))
    np.testing.assert_allclose(np.sum(s, axis=-1), 1.0, rtol=1e-15)
    e = np.exp([0.0, 1.0, -1.0])
    np.testing.assert_allclose(s[0], e / e.sum(), rtol=1e-15)  # no overflow at 1000: shifted by the max
    np.testing.assert_allclose(s[1], e[[0, 2, 1]] / e.sum(), rtol=1e-15)
    np.testing.assert_allclose(s[2], np.full(3, 1 / 3), rtol=1e-15)
    ls = A.log_softmax.forward(z)
    np.testing.assert_allclose(ls, np.log(s), rtol=1e-14)


@pytest.mark.parametrize("name", ["sigmoid", "softplus", "swish", "tanh", "elu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_no_overflow_at_extremes(name, dtype, x64):
    """Inputs of ±1e4 and ±1e30 give finite values and the exact limits, and finite derivatives."""
    z = jnp.array([-1e30, -1e4, 1e4, 1e30], dtype)
    act = A.get(name)
    out = act.forward(z)
    assert out.dtype == dtype
    assert np.all(np.isfinite(out)), out
    limits = {
        "sigmoid": [0.0, 0.0, 1.0, 1.0],
        "softplus": [0.0, 0.0, 1e4, 1e30],
        "swish": [-0.0, -0.0, 1e4, 1e30],
        "tanh": [-1.0, -1.0, 1.0, 1.0],
        "elu": [-1.0, -1.0, 1e4, 1e30],
    }[name]
    np.testing.assert_array_equal(out, np.asarray(limits, dtype))
    d = act.derivative(z)
    assert np.all(np.isfinite(d)), d
    np.testing.assert_array_equal(d, jax.vmap(jax.grad(REFERENCE[name]))(z))


def test_get_errors():
    with pytest.raises(ValueError) as err:
        A.get("relux")
    msg = str(err.value)
    assert "'relux'" in msg and "Did you mean 'relu'?" in msg
    for name in A.names():
        assert name in msg  # every valid name listed
    with pytest.raises(ValueError, match="Unknown activation 'nonsense'"):
        A.get("nonsense")
    for bad in (3, None, jnp.tanh, ["relu"]):
        with pytest.raises(TypeError, match="activation name"):
            A.get(bad)


def test_register_custom_record_and_type_check():
    custom = A.Activation("cube_test_only", lambda z: z**3, lambda z, a, g: 3 * g * z * z, lambda z: 3 * z * z)
    try:
        assert A.register(custom, "cube_alias_test_only") is custom
        assert A.get("cube_test_only") is custom and A.get("cube_alias_test_only") is custom
        assert repr(custom) == "Activation('cube_test_only')"
    finally:
        A.REGISTRY.pop("cube_test_only", None)
        A.REGISTRY.pop("cube_alias_test_only", None)
    with pytest.raises(TypeError, match="Activation record"):
        A.register("relu")


def test_names_are_canonical():
    names = A.names()
    assert "silu" not in names and "linear" not in names
    assert names == sorted(names)
    assert len(names) == 13
    assert fnn.activations is A
