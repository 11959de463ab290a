"""Tests for fnn/losses.py: values against NumPy float64 formulas written here (the docstring table), gradients
against ``jax.grad`` of the value, sparse == dense on one-hot, logits forms == probability forms, optax
equivalents, the fused closed forms, and ``check_targets``' errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TRANSFORMS

from fnn import activations as A
from fnn import losses as L

N, K = 6, 4


def _np_log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


#: Independent NumPy float64 formulas, one per loss (docstring table of fnn/losses.py); mean over the batch.
NUMPY = {
    "mse": lambda p, y: np.mean((p - y) ** 2),
    "quadratic": lambda p, y: np.sum(0.5 * np.sum((p - y) ** 2, axis=1)) / len(p),
    "binary_cross_entropy": lambda p, y: -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) / len(p),
    "categorical_cross_entropy": lambda p, y: -np.sum(y * np.log(p)) / len(p),
    "sparse_categorical_cross_entropy": lambda p, y: -np.mean(np.log(p[np.arange(len(p)), y])),
    "sigmoid_binary_cross_entropy": lambda z, y: -np.sum(
        y * np.log(_np_sigmoid(z)) + (1 - y) * np.log(1 - _np_sigmoid(z))
    ) / len(z),
    "softmax_cross_entropy": lambda z, y: -np.sum(y * _np_log_softmax(z)) / len(z),
    "sparse_softmax_cross_entropy": lambda z, y: -np.mean(_np_log_softmax(z)[np.arange(len(z)), y]),
}


def _case(name: str, seed: int = 0, n: int = N, k: int = K):
    """A prediction and targets of the kind the loss expects (probabilities, logits, one-hot or labels)."""
    rng = np.random.default_rng(seed)
    loss = L.get(name)
    z = rng.normal(size=(n, k)) * 2
    if loss.from_logits or name in ("mse", "quadratic"):
        pred = z
    elif name == "binary_cross_entropy":
        pred = _np_sigmoid(z)
    else:
        pred = np.exp(_np_log_softmax(z))
    labels = rng.integers(0, k, size=n)
    if loss.sparse:
        y = labels
    elif name in ("binary_cross_entropy", "sigmoid_binary_cross_entropy", "mse", "quadratic"):
        y = rng.uniform(size=(n, k))
    else:
        y = np.eye(k)[labels]
    return pred, y


def test_numpy_reference_covers_registry():
    assert sorted(NUMPY) == L.names()


@pytest.mark.parametrize("name", sorted(NUMPY))
@TRANSFORMS
def test_value_matches_numpy(name, transform, x64):
    pred, y = _case(name)
    got = transform(L.get(name).value)(jnp.asarray(pred), jnp.asarray(y))
    assert got.shape == () and got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), NUMPY[name](pred, y), rtol=1e-13)


@pytest.mark.parametrize("name", sorted(NUMPY))
@TRANSFORMS
def test_grad_matches_jax_grad(name, transform, x64):
    pred, y = _case(name, seed=1)
    loss = L.get(name)
    pred, y = jnp.asarray(pred), jnp.asarray(y)
    got = transform(loss.grad)(pred, y)
    want = jax.grad(loss.value)(pred, y)
    assert got.shape == pred.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_grad_matches_numpy_closed_form(name, x64):
    """dL/dpred from the docstring table, written in NumPy."""
    pred, y = _case(name, seed=2)
    n, k = pred.shape
    onehot = np.eye(k)[y] if L.get(name).sparse else y
    want = {
        "mse": lambda: 2 * (pred - y) / (n * k),
        "quadratic": lambda: (pred - y) / n,
        "binary_cross_entropy": lambda: (pred - y) / (pred * (1 - pred) * n),
        "categorical_cross_entropy": lambda: -y / (pred * n),
        "sparse_categorical_cross_entropy": lambda: -onehot / (pred * n),
        "sigmoid_binary_cross_entropy": lambda: (_np_sigmoid(pred) - y) / n,
        "softmax_cross_entropy": lambda: (np.exp(_np_log_softmax(pred)) * y.sum(-1, keepdims=True) - y) / n,
        "sparse_softmax_cross_entropy": lambda: (np.exp(_np_log_softmax(pred)) - onehot) / n,
    }[name]()
    np.testing.assert_allclose(L.get(name).grad(jnp.asarray(pred), jnp.asarray(y)), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "sparse, dense", [("sparse_categorical_cross_entropy", "categorical_cross_entropy"),
                      ("sparse_softmax_cross_entropy", "softmax_cross_entropy")]
)
def test_sparse_equals_dense_on_one_hot(sparse, dense, x64):
    pred, labels = _case(sparse, seed=3)
    pred = jnp.asarray(pred)
    onehot = jnp.asarray(np.eye(K)[labels])
    labels = jnp.asarray(labels)
    np.testing.assert_allclose(L.get(sparse).value(pred, labels), L.get(dense).value(pred, onehot), rtol=1e-15)
    np.testing.assert_allclose(L.get(sparse).grad(pred, labels), L.get(dense).grad(pred, onehot), rtol=1e-15)


@pytest.mark.parametrize(
    "logits_loss, prob_loss, act",
    [("softmax_cross_entropy", "categorical_cross_entropy", "softmax"),
     ("sparse_softmax_cross_entropy", "sparse_categorical_cross_entropy", "softmax"),
     ("sigmoid_binary_cross_entropy", "binary_cross_entropy", "sigmoid")],
)
def test_logits_losses_equal_probability_forms(logits_loss, prob_loss, act, x64):
    z, y = _case(logits_loss, seed=4)
    if logits_loss == "sigmoid_binary_cross_entropy":
        y = (y > 0.5).astype(np.float64)  # any y in [0, 1] works; hard labels too
    z, y = jnp.asarray(z), jnp.asarray(y)
    f = A.get(act).forward
    np.testing.assert_allclose(L.get(logits_loss).value(z, y), L.get(prob_loss).value(f(z), y), rtol=1e-13)
    # And the chain rule through the activation gives the logits gradient.
    chained = jax.grad(lambda z: L.get(prob_loss).value(f(z), y))(z)
    np.testing.assert_allclose(L.get(logits_loss).grad(z, y), chained, rtol=1e-11, atol=1e-16)


def test_optax_equivalents(x64):
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.normal(size=(N, K)) * 3)
    onehot = jnp.asarray(np.eye(K)[rng.integers(0, K, N)])
    soft = jnp.asarray(rng.dirichlet(np.ones(K), size=N))
    bern = jnp.asarray(rng.uniform(size=(N, K)))
    labels = jnp.asarray(rng.integers(0, K, N))
    p = jnp.asarray(rng.normal(size=(N, K)))
    for y in (onehot, soft):
        np.testing.assert_allclose(
            L.softmax_cross_entropy.value(z, y), optax.softmax_cross_entropy(z, y).mean(), rtol=1e-14
        )
    np.testing.assert_allclose(
        L.sigmoid_binary_cross_entropy.value(z, bern),
        optax.sigmoid_binary_cross_entropy(z, bern).sum(-1).mean(),
        rtol=1e-14,
    )
    np.testing.assert_allclose(
        L.sparse_softmax_cross_entropy.value(z, labels),
        optax.softmax_cross_entropy_with_integer_labels(z, labels).mean(),
        rtol=1e-14,
    )
    # optax.l2_loss = ½ (p - y)²: quadratic sums it over outputs, mse carries no ½ and averages outputs too.
    np.testing.assert_allclose(L.quadratic.value(p, bern), optax.l2_loss(p, bern).sum(-1).mean(), rtol=1e-14)
    np.testing.assert_allclose(L.mse.value(p, bern), 2 * optax.l2_loss(p, bern).mean(), rtol=1e-14)
    np.testing.assert_allclose(L.mse.value(p, bern), optax.squared_error(p, bern).mean(), rtol=1e-14)


@pytest.mark.parametrize("name", ["binary_cross_entropy", "categorical_cross_entropy",
                                  "sparse_categorical_cross_entropy"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_probability_losses_clip_to_finite(name, dtype, x64):
    """p of exactly 0 or 1 gives a large finite loss (clipped at the dtype's eps), and grad == jax.grad."""
    loss = L.get(name)
    pred = jnp.array([[0.0, 1.0, 0.0], [0.5, 0.25, 0.25]], dtype)
    y = jnp.array([0, 1]) if loss.sparse else jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype)
    value = loss.value(pred, y)
    eps = float(jnp.finfo(dtype).eps)
    assert np.isfinite(float(value))
    expected = {
        # Row 0: -log(eps) for the zero probability of the true class; BCE also pays -log(eps) for p = 1, y = 0
        # and -log(1 - eps) for p = 0, y = 0. Row 1 is unclipped.
        "binary_cross_entropy": (-2 * np.log(eps) - np.log1p(-eps) - np.log(0.5) - np.log(0.25) - np.log(0.75)) / 2,
        "categorical_cross_entropy": (-np.log(eps) - np.log(0.25)) / 2,
        "sparse_categorical_cross_entropy": (-np.log(eps) - np.log(0.25)) / 2,
    }[name]
    np.testing.assert_allclose(float(value), expected, rtol=1e-6 if dtype == jnp.float32 else 1e-13)
    grad = loss.grad(pred, y)
    assert grad.dtype == dtype and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, jax.grad(loss.value)(pred, y), rtol=1e-6, atol=0)
    assert np.all(np.asarray(grad)[0] == 0)  # the clip is active on row 0: zero gradient there


@pytest.mark.parametrize("name", ["sigmoid_binary_cross_entropy", "softmax_cross_entropy",
                                  "sparse_softmax_cross_entropy"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_logits_losses_finite_at_extreme_logits(name, dtype, x64):
    loss = L.get(name)
    z = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], dtype)
    y = jnp.array([1, 0]) if loss.sparse else jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype)
    value = loss.value(z, y)
    grad = loss.grad(z, y)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    if name == "sigmoid_binary_cross_entropy":
        # Row 0: softplus(1e4) - 0 + softplus(-1e4) - (-1e4)·1 + log 2; row 1: 1e4 + 1e4 + softplus(3).
        expected = (1e4 + 1e4 + np.log(2) + 1e4 + 1e4 + np.logaddexp(0, 3.0)) / 2
    else:
        expected = (2e4 + 2e4) / 2  # each example puts -1e4 on its true class against a 1e4 logit
    np.testing.assert_allclose(float(value), expected, rtol=1e-6 if dtype == jnp.float32 else 1e-12)
    np.testing.assert_allclose(grad, jax.grad(loss.value)(z, y), rtol=1e-6, atol=1e-7)


def test_fused_pairs():
    assert L.fused(A.softmax, L.categorical_cross_entropy) is not None
    assert L.fused(A.softmax, L.sparse_categorical_cross_entropy) is not None
    assert L.fused(A.sigmoid, L.binary_cross_entropy) is not None
    assert L.fused(A.identity, L.categorical_cross_entropy) is None
    assert L.fused(A.sigmoid, L.mse) is None
    assert L.fused(A.tanh, L.binary_cross_entropy) is None


@pytest.mark.parametrize(
    "act, loss", [("softmax", "categorical_cross_entropy"), ("softmax", "sparse_categorical_cross_entropy"),
                  ("sigmoid", "binary_cross_entropy")]
)
@TRANSFORMS
def test_fused_value_and_delta(act, loss, transform, x64):
    """The fused value equals loss(f(z)) on moderate logits; delta is (a - y)/N and equals jax.grad through f."""
    z, y = _case("sparse_softmax_cross_entropy" if "sparse" in loss else "softmax_cross_entropy", seed=6)
    if loss == "binary_cross_entropy":
        y = np.random.default_rng(7).uniform(size=z.shape)
    z, y = jnp.asarray(z), jnp.asarray(y)
    f, rec = A.get(act), L.get(loss)
    fused = L.fused(f, rec)
    a = f.forward(z)
    np.testing.assert_allclose(transform(fused.value)(z, y), rec.value(a, y), rtol=1e-13)
    delta = transform(fused.delta)(z, a, y)
    onehot = jax.nn.one_hot(y, K, dtype=z.dtype) if rec.sparse else y
    np.testing.assert_array_equal(delta, (a - onehot) / z.shape[0])
    np.testing.assert_allclose(delta, jax.grad(lambda z: rec.value(f.forward(z), y))(z), rtol=1e-11, atol=1e-16)


# --- check_targets ------------------------------------------------------------------------------------


def test_check_targets_dense_shapes_and_dtypes(x64):
    y = L.check_targets(L.mse, np.ones((3, 2)), n_out=2, batch=3, dtype=jnp.float32)
    assert y.shape == (3, 2) and y.dtype == jnp.float32
    y = L.check_targets(L.mse, np.arange(3), n_out=1, batch=3)  # (batch,) with one output -> (batch, 1)
    assert y.shape == (3, 1) and jnp.issubdtype(y.dtype, jnp.floating)
    np.testing.assert_array_equal(y[:, 0], [0.0, 1.0, 2.0])
    y = L.check_targets(L.categorical_cross_entropy, np.eye(3, dtype=np.int32), n_out=3, batch=3)
    assert jnp.issubdtype(y.dtype, jnp.floating)


def test_check_targets_sparse_ok():
    y = L.check_targets(L.sparse_categorical_cross_entropy, np.array([0, 2, 1]), n_out=3, batch=3)
    assert y.shape == (3,) and jnp.issubdtype(y.dtype, jnp.integer)


def test_check_targets_wrong_width():
    with pytest.raises(ValueError) as err:
        L.check_targets(L.categorical_cross_entropy, np.ones((4, 3)), n_out=5, batch=4)
    msg = str(err.value)
    assert "(4, 5)" in msg and "(4, 3)" in msg and "categorical_cross_entropy" in msg


def test_check_targets_wrong_batch():
    with pytest.raises(ValueError) as err:
        L.check_targets(L.mse, np.ones((2, 3)), n_out=3, batch=4)
    assert "(4, 3)" in str(err.value) and "(2, 3)" in str(err.value)
    with pytest.raises(ValueError) as err:
        L.check_targets(L.sparse_softmax_cross_entropy, np.array([0, 1]), n_out=3, batch=4)
    assert "(4,)" in str(err.value) and "(2,)" in str(err.value)


def test_check_targets_float_labels_for_sparse():
    with pytest.raises(TypeError) as err:
        L.check_targets(L.sparse_categorical_cross_entropy, np.array([0.0, 1.0]), n_out=3, batch=2)
    msg = str(err.value)
    assert "integer" in msg and "float" in msg and "sparse_categorical_cross_entropy" in msg


@pytest.mark.parametrize("labels, shown", [([0, 3, 1], "to 3"), ([-1, 0, 1], "from -1")])
def test_check_targets_labels_out_of_range(labels, shown):
    with pytest.raises(ValueError) as err:
        L.check_targets(L.sparse_softmax_cross_entropy, np.array(labels), n_out=3, batch=3)
    msg = str(err.value)
    assert "[0, 3)" in msg and shown in msg


def test_check_targets_under_jit_skips_range_check_but_keeps_shape_checks():
    f = jax.jit(lambda y: L.check_targets(L.sparse_softmax_cross_entropy, y, n_out=3, batch=2))
    assert f(jnp.array([0, 5])).shape == (2,)  # labels are tracers: the range cannot be checked
    with pytest.raises(ValueError, match=r"\(2,\)"):
        f(jnp.array([0, 1, 2]))


def test_get_and_names():
    assert L.get("bce") is L.binary_cross_entropy and L.get("cce") is L.categorical_cross_entropy
    assert L.get(L.mse) is L.mse
    assert "bce" not in L.names() and len(L.names()) == 8
    with pytest.raises(ValueError) as err:
        L.get("quadratc")
    assert "Did you mean 'quadratic'?" in str(err.value) and "softmax_cross_entropy" in str(err.value)
    with pytest.raises(TypeError):
        L.get(3)
    with pytest.raises(TypeError, match="Loss record"):
        L.register("mse")


def test_loss_records_flags():
    sparse = {n for n in L.names() if L.get(n).sparse}
    logits = {n for n in L.names() if L.get(n).from_logits}
    assert sparse == {"sparse_categorical_cross_entropy", "sparse_softmax_cross_entropy"}
    assert logits == {"sigmoid_binary_cross_entropy", "softmax_cross_entropy", "sparse_softmax_cross_entropy"}


def test_natural_output_table():
    """The documented pairing, written out here independently; aliases and records give the same answer."""
    expected = {
        "sigmoid_binary_cross_entropy": "identity",
        "softmax_cross_entropy": "identity",
        "sparse_softmax_cross_entropy": "identity",
        "binary_cross_entropy": "sigmoid",
        "categorical_cross_entropy": "softmax",
        "sparse_categorical_cross_entropy": "softmax",
        "mse": None,
        "quadratic": None,
    }
    assert {name: L.natural_output(name) for name in L.names()} == expected
    assert L.natural_output("bce") == "sigmoid" and L.natural_output("cce") == "softmax"
    assert L.natural_output(L.sparse_softmax_cross_entropy) == "identity"
    with pytest.raises(ValueError, match="quadratic"):
        L.natural_output("quadratc")


@pytest.mark.parametrize(
    "name", ["binary_cross_entropy", "categorical_cross_entropy", "sparse_categorical_cross_entropy"]
)
def test_natural_output_of_a_probability_loss_is_its_fused_pair(name):
    """A network with the natural output gets the closed-form loss and delta."""
    loss = L.get(name)
    assert L.fused(A.get(L.natural_output(name)), loss) is not None


# --- targets that must be refused, not mangled (issue 17, section 4) -----------------------------------------

@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_check_targets_labels_beyond_int32_are_refused_not_wrapped(dtype):
    """4294967297 = 2**32 + 1 becomes 1 (in range!) under jnp.asarray without x64: the range is checked first."""
    labels = np.array([0, 4294967297, 1, 2], dtype)
    with pytest.raises(ValueError) as err:
        L.check_targets(L.sparse_softmax_cross_entropy, labels, n_out=3, batch=4)
    msg = str(err.value)
    assert "[0, 3)" in msg and "got label 4294967297 at index 1" in msg and "1 outside" in msg


def test_check_label_range_names_the_first_bad_label():
    with pytest.raises(ValueError, match=r"got label -2 at index 3 \(2 outside; labels from -2 to 7\)"):
        L.check_label_range(L.sparse_softmax_cross_entropy, np.array([0, 1, 2, -2, 7]), 3)


def test_check_targets_dense_integers_are_cast_at_full_width():
    y = L.check_targets(L.mse, np.array([[2**31 + 1], [-(2**40)]], np.int64), n_out=1, batch=2, dtype=jnp.float32)
    np.testing.assert_array_equal(y, np.array([[2.0**31], [-(2.0**40)]], np.float32))


@pytest.mark.parametrize("loss", [L.mse, L.softmax_cross_entropy, L.sparse_softmax_cross_entropy])
@pytest.mark.parametrize("y, shown", [(np.ones((2, 3), np.complex64), "complex64"),
                                      (np.array([["a", "b", "c"], ["a", "b", "c"]]), "<U1"),
                                      (np.ones((2, 3)).astype(object), "object")],
                         ids=["complex", "str", "object"])
def test_check_targets_refuses_complex_string_and_object_targets(loss, y, shown):
    y = y[:, 0] if loss.sparse else y
    with pytest.raises(TypeError, match=rf"y must be an array of real numbers, got dtype {shown}"):
        L.check_targets(loss, y, n_out=3, batch=2)
