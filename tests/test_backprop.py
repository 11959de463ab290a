"""Tests for fnn/backprop.py, the hand-written backward pass: it must equal ``jax.grad`` (``fnn.autodiff``) and
central finite differences for every activation and every loss, expose the right error terms, keep the closed
forms of the dangerous output/loss pairs finite, and compose with JAX through its custom_vjp bridges.

The matrix (``MATRIX``) covers, for every registered activation ``act``:
  * mse and quadratic with ``act`` on every layer, the output included;
  * every other loss with ``act`` on the hidden layers and the loss's natural output: identity for the
    from-logits losses, sigmoid for binary_cross_entropy (fused), softmax for (sparse) categorical
    cross-entropy (fused). With ``act = sigmoid`` this is also "the activation under test as output with
    binary_cross_entropy" — the only registered activation mapping into (0, 1) elementwise.
  * Plus three unfused probability pairs (their generic loss gradient chained through the output's backward):
    softmax output + binary_cross_entropy, sigmoid output + (sparse) categorical_cross_entropy.
Depths 1, 2 and 4 (depth 1 only where the single layer uses ``act``: otherwise the case is the same network as
another row's) at batch 7, and at batch 1 on a covering subset (``BATCH1_ROWS``: every activation and every loss,
and the unfused pairs): a batch of one meets the loss's mean over the batch and the shapes of a one-row batch,
which do not depend on the hidden activation's rule. Float64: manual == autodiff to 1e-10 relative and both ==
central differences on a coordinate sample. Float32 under ``jax.jit``: every row at depth 2, batch 7, one compile per
hidden activation (compiles, not arithmetic, dominate the run time on CPU; the eager float64 matrix shares its
compiled primitives across rows).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import NATURAL_OUTPUT, TRANSFORMS, make_case, random_params

import fnn
from fnn import activations as A
from fnn import losses as L
from fnn.gradcheck import relative_error, tolerance

ACTS = A.names()
LOSSES = L.names()
MATRIX = [(act, NATURAL_OUTPUT[loss] or act, loss) for act in ACTS for loss in LOSSES] + [
    ("tanh", "softmax", "binary_cross_entropy"),
    ("tanh", "sigmoid", "categorical_cross_entropy"),
    ("tanh", "sigmoid", "sparse_categorical_cross_entropy"),
]
MATRIX_IDS = [f"{h}-{o}-{l}" for h, o, l in MATRIX]
DEPTHS = (1, 2, 4)
BATCHES = (1, 7)
#: The rows also run at batch 1: activation i with loss i mod 8 (every activation and every loss), and the
#: three unfused probability pairs.
BATCH1_ROWS = {(act, NATURAL_OUTPUT[LOSSES[i % len(LOSSES)]] or act, LOSSES[i % len(LOSSES)])
               for i, act in enumerate(ACTS)} | set(MATRIX[-3:])


def _depths(hidden, output):
    return DEPTHS if hidden == output else DEPTHS[1:]


def assert_tree_close(got, want, rtol, atol_scale=0.0):
    """Leafwise ``|got - want| <= rtol |want| + atol_scale · max|want|`` with matching structure and dtypes."""
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        scale = float(np.max(np.abs(np.asarray(w)))) if w.size else 0.0
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol_scale * scale)


def central_differences(f, params, coords, h=1e-6):
    """Central differences of ``f(params)`` (float64) at ``coords`` = [(layer, leaf, flat index)]."""
    out = []
    for layer, leaf, i in coords:
        def bumped(d, layer=layer, leaf=leaf, i=i):
            p = [dict(l) for l in params]
            p[layer][leaf] = p[layer][leaf].reshape(-1).at[i].add(d).reshape(p[layer][leaf].shape)
            return p
        out.append((float(f(bumped(h))) - float(f(bumped(-h)))) / (2 * h))
    return np.array(out)


def sample_coords(params, seed, n_first=1, n_last=1):
    """A few flat coordinates: ``n_first`` in the first layer's w, ``n_last`` anywhere in the last layer."""
    rng = np.random.default_rng(seed)
    first = [(0, "w", int(i)) for i in rng.choice(params[0]["w"].size, n_first, replace=False)]
    last_leaves = sorted(params[-1])
    last = [(len(params) - 1, leaf, int(rng.integers(params[-1][leaf].size)))
            for leaf in rng.choice(last_leaves, n_last)]
    return first + last


# --- the matrix ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden, output, loss", MATRIX, ids=MATRIX_IDS)
def test_matrix_float64_manual_equals_autodiff_and_fd(hidden, output, loss, x64):
    for depth in _depths(hidden, output):
        for batch in BATCHES if (hidden, output, loss) in BATCH1_ROWS else BATCHES[1:]:
            seed = 10 * depth + batch
            net, params, x, y = make_case(hidden, output, loss, depth, batch, dtype=jnp.float64, seed=seed)
            value, manual = fnn.backprop(net, params, x, y, loss)
            ref_value, auto = fnn.autodiff(net, params, x, y, loss)
            where = f"depth {depth}, batch {batch}"
            assert np.isfinite(float(value)), where
            np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-14, err_msg=where)
            assert_tree_close(manual, auto, rtol=1e-10, atol_scale=1e-13)
            coords = sample_coords(params, seed=depth + batch)
            fd = central_differences(lambda p, net=net, x=x, y=y: fnn.objective(net, loss)(p, x, y), params, coords)
            got = np.array([manual[l][leaf].reshape(-1)[i] for l, leaf, i in coords])
            np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8, err_msg=where)
            if hidden == "binary_step" and depth > 1:  # flat almost everywhere: below the top layer, zeros
                assert all(not np.any(np.asarray(g)) for layer in manual[:-1] for g in layer.values())


#: As in tests/test_layers.py: XLA's CPU backend at optimisation level 0, no fusion emitters (for the one
#: program per activation below, where manual and autodiff are compiled alike).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


@pytest.mark.parametrize("hidden", ACTS)
def test_matrix_jit_float32(hidden, x64):
    """Under jax.jit, float32, depth 2, batch 7, every row with this hidden activation in ONE compile (compile
    time, not arithmetic, dominates on CPU; FAST_COMPILE): manual == autodiff at the float32 tolerance, and both ==
    the eager float64 manual gradient of the same (upcast) params to float32 accuracy."""
    rows = [row for row in MATRIX if row[0] == hidden]
    cases = [make_case(h, o, l, 2, 7, dtype=jnp.float32, seed=3) for h, o, l in rows]

    def all_rows(args):
        return [(fnn.backprop(net, p, x, y, loss), fnn.autodiff(net, p, x, y, loss))
                for (_, _, loss), (net, *_), (p, x, y) in zip(rows, cases, args, strict=True)]

    args = [case[1:] for case in cases]
    results = jax.jit(all_rows).lower(args).compile(FAST_COMPILE)(args)
    tol = tolerance(jnp.float32)
    up = lambda t: t.astype(jnp.float64) if jnp.issubdtype(t.dtype, jnp.floating) else t
    for (h, o, loss), (net, p32, x32, y32), ((v32, manual), (v_auto, auto)) in zip(rows, cases, results, strict=True):
        row = f"{h}-{o}-{loss}"
        assert np.isfinite(float(v32)), row
        np.testing.assert_allclose(float(v32), float(v_auto), rtol=1e-6, err_msg=row)
        v64, manual64 = fnn.backprop(net, jax.tree_util.tree_map(up, p32), up(x32), up(y32), loss)
        np.testing.assert_allclose(float(v32), float(v64), rtol=1e-5, err_msg=row)
        names = [(l, k) for l in range(len(p32)) for k in sorted(p32[l])]
        for (l, leaf), g, w, ref in zip(names, *map(jax.tree_util.tree_leaves, (manual, auto, manual64)), strict=True):
            where = f"{row} layer {l} {leaf}"
            assert g.dtype == jnp.float32 and w.dtype == jnp.float32, where
            _, max_rel, _ = relative_error(g, w)
            assert max_rel <= tol, f"{where}: manual vs autodiff max relative error {max_rel:.2e} > {tol:.0e}"
            scale = float(np.max(np.abs(np.asarray(ref))))
            np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{where} vs float64")


# --- the trace: z, a and delta of every layer ----------------------------------------------------------

#: jax.nn forwards, so the test's own forward pass below shares no code with fnn.
JAX_NN = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "softmax": jax.nn.softmax,
          "identity": lambda z: z, "gelu": lambda z: jax.nn.gelu(z, approximate=False), "elu": jax.nn.elu}


def _loss_from_last_z(loss, output, z, y):
    """The loss as a function of the last pre-activation, written with jax.nn / optax (closed forms where the
    pair has one, exactly as fnn's contract says)."""
    n = z.shape[0]
    if loss == "categorical_cross_entropy" and output == "softmax":
        return optax.softmax_cross_entropy(z, y).sum() / n
    if loss == "sparse_categorical_cross_entropy" and output == "softmax":
        return optax.softmax_cross_entropy_with_integer_labels(z, y).sum() / n
    if loss == "binary_cross_entropy" and output == "sigmoid":
        return optax.sigmoid_binary_cross_entropy(z, y).sum() / n
    if loss == "softmax_cross_entropy":
        return optax.softmax_cross_entropy(z, y).sum() / n
    if loss == "quadratic":  # a generic loss through the output's own backward (softmax: a full Jacobian)
        return optax.l2_loss(JAX_NN[output](z), y).sum() / n
    raise AssertionError(loss)


@pytest.mark.parametrize("hidden, output, loss", [
    ("tanh", "softmax", "quadratic"), ("relu", "softmax", "categorical_cross_entropy"),
    ("gelu", "sigmoid", "binary_cross_entropy"), ("elu", "softmax", "sparse_categorical_cross_entropy"),
    ("sigmoid", "identity", "softmax_cross_entropy"),
])
@TRANSFORMS
def test_trace_delta_is_grad_wrt_pre_activation(hidden, output, loss, transform, x64):
    """trace.delta[l] == jax.grad of the loss w.r.t. z_l, via zero perturbations added to every z_l in a
    forward pass written here with jax.nn."""
    net, params, x, y = make_case(hidden, output, loss, 3, 5, dtype=jnp.float64, seed=1)
    value, grads, trace = transform(lambda p, x, y: fnn.backprop(net, p, x, y, loss, return_trace=True))(params, x, y)
    assert isinstance(trace, fnn.Trace)
    assert trace.x.shape == (5, 3)
    assert [t.shape for t in trace.z] == [t.shape for t in trace.a] == [t.shape for t in trace.delta] == [(5, 4)] * 3

    def f(perturbations):
        a = x
        acts = [hidden, hidden, output]
        for l, (layer, act, e) in enumerate(zip(params, acts, perturbations, strict=True)):
            z = a @ layer["w"] + layer["b"][None, :] + e
            if l == 2:
                return _loss_from_last_z(loss, output, z, y)
            a = JAX_NN[act](z)

    zeros = [jnp.zeros((5, 4))] * 3
    np.testing.assert_allclose(float(value), float(f(zeros)), rtol=1e-13)
    want = jax.grad(f)(zeros)
    for l in range(3):
        np.testing.assert_allclose(trace.delta[l], want[l], rtol=1e-10, atol=1e-15, err_msg=f"delta[{l}]")
        # and the forward quantities are the textbook ones
        a_prev = x if l == 0 else trace.a[l - 1]
        np.testing.assert_allclose(trace.z[l], a_prev @ params[l]["w"] + params[l]["b"][None, :], rtol=1e-13)
        np.testing.assert_allclose(trace.a[l], JAX_NN[[hidden, hidden, output][l]](trace.z[l]), rtol=1e-13)
        # dw = a_{l-1}ᵀ delta, db = Σ delta
        np.testing.assert_allclose(grads[l]["w"], a_prev.T @ trace.delta[l], rtol=1e-13)
        np.testing.assert_allclose(grads[l]["b"], trace.delta[l].sum(0), rtol=1e-13)


# --- closed forms of the dangerous pairs -------------------------------------------------------------


@pytest.mark.parametrize("output, loss", [("softmax", "categorical_cross_entropy"),
                                          ("softmax", "sparse_categorical_cross_entropy"),
                                          ("sigmoid", "binary_cross_entropy")])
def test_fused_delta_is_exactly_a_minus_y_over_n(output, loss, x64):
    net, params, x, y = make_case("tanh", output, loss, 2, 7, dtype=jnp.float64, seed=2)
    if loss == "categorical_cross_entropy":  # one-hot targets (Σ_k y = 1 exactly)
        y = jax.nn.one_hot(np.arange(7) % 4, 4, dtype=jnp.float64)
    _, _, trace = fnn.backprop(net, params, x, y, loss, return_trace=True)
    onehot = jax.nn.one_hot(y, 4, dtype=jnp.float64) if L.get(loss).sparse else y
    # Equal to rounding: under pytest-xdist the same expression can compile with a different operation order.
    np.testing.assert_allclose(trace.delta[-1], (trace.a[-1] - onehot) / 7, rtol=1e-12, atol=1e-15)


def _extreme_net(output):
    """A one-layer net whose logits are exactly ±1e4 (and 0) for the 2 examples below."""
    net = fnn.mlp([2, 3], activations=[output], dtype=jnp.float64)
    params = [{"w": jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]]), "b": jnp.zeros(3)}]
    x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    return net, params, x


@pytest.mark.parametrize("output, loss", [
    ("softmax", "categorical_cross_entropy"), ("softmax", "sparse_categorical_cross_entropy"),
    ("sigmoid", "binary_cross_entropy"), ("identity", "softmax_cross_entropy"),
    ("identity", "sparse_softmax_cross_entropy"), ("identity", "sigmoid_binary_cross_entropy"),
])
def test_extreme_logits_give_finite_loss_and_grads(output, loss, x64):
    net, params, x = _extreme_net(output)
    # Each example's true class gets the -1e4 logit: the worst case, loss ≈ 2e4 per example.
    y = jnp.array([1, 0]) if L.get(loss).sparse else jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    value, grads = fnn.backprop(net, params, x, y, loss)
    ref_value, auto = fnn.autodiff(net, params, x, y, loss)
    assert np.isfinite(float(value)) and all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    if "binary" in loss:  # per example: softplus(1e4) + softplus(-1e4) - (-1e4) + softplus(0)
        expected = 2e4 + np.log(2)
    else:  # -log_softmax of the -1e4 logit against 1e4 and 0
        expected = 2e4
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)
    np.testing.assert_allclose(float(ref_value), expected, rtol=1e-12)
    assert_tree_close(grads, auto, rtol=1e-10, atol_scale=1e-15)
    # The closed-form delta: (a - y)/N, here exactly representable.
    _, _, trace = fnn.backprop(net, params, x, y, loss, return_trace=True)
    onehot = jax.nn.one_hot(y, 3, dtype=jnp.float64) if L.get(loss).sparse else y
    a = trace.a[-1] if output != "identity" else (jax.nn.sigmoid if "binary" in loss else jax.nn.softmax)(trace.z[-1])
    np.testing.assert_allclose(trace.delta[-1], (a - onehot) / 2, rtol=1e-15)


def test_naive_unfused_chain_fails_at_extreme_logits(x64):
    """Why the closed form matters: jax.grad of -Σ y log softmax(z) (probabilities first, then the log) is not
    finite at logits ±1e4, while fnn's fused pair gives the exact, finite answer."""
    net, params, x = _extreme_net("softmax")
    y = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

    def naive(params):
        z = x @ params[0]["w"] + params[0]["b"][None, :]
        return -jnp.sum(y * jnp.log(jax.nn.softmax(z))) / 2

    naive_value, naive_grads = jax.value_and_grad(naive)(params)
    naive_ok = np.isfinite(float(naive_value)) and all(
        np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(naive_grads))
    value, grads = fnn.backprop(net, params, x, y, "categorical_cross_entropy")
    assert not naive_ok  # softmax underflows to 0: log(0) = -inf, and 0 · -inf = nan for the other classes
    assert np.isfinite(float(value)) and float(value) == pytest.approx(2e4)
    # Clipping the probability (the generic cross-entropy on probabilities) is finite but far off: log(eps) ≈ -36.
    clipped = float(L.categorical_cross_entropy.value(jax.nn.softmax(x @ params[0]["w"]), y))
    assert clipped == pytest.approx(-np.log(np.finfo(np.float64).eps)) and abs(clipped - 2e4) > 1e4


# --- per-example gradients --------------------------------------------------------------------------


@pytest.mark.parametrize("hidden, output, loss", [
    ("tanh", "identity", "mse"), ("relu", "softmax", "sparse_categorical_cross_entropy"),
    ("gelu", "sigmoid", "binary_cross_entropy"),
])
def test_per_example_grads(hidden, output, loss, x64):
    net, params, x, y = make_case(hidden, output, loss, 3, 5, dtype=jnp.float64, seed=4)
    per = fnn.per_example_grads(net, params, x, y, loss)
    # each example as a batch of one, differentiated by autodiff, vmapped over the batch
    ref = jax.vmap(lambda xi, yi: fnn.autodiff(net, params, xi[None], yi[None], loss)[1])(x, y)
    for got, want in zip(jax.tree_util.tree_leaves(per), jax.tree_util.tree_leaves(ref), strict=True):
        assert got.shape[0] == 5 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-15)
    _, batch_grads = fnn.backprop(net, params, x, y, loss)
    mean = jax.tree_util.tree_map(lambda t: t.mean(0), per)
    assert_tree_close(mean, batch_grads, rtol=1e-12, atol_scale=1e-15)


# --- the custom_vjp bridges ---------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["identity", "softmax"])
@TRANSFORMS
def test_manual_apply_under_arbitrary_loss(output, transform, x64):
    """jax.grad through fnn.manual_apply (hand-written backward) == plain autodiff through net.apply, for an
    optax loss plus an L2 regulariser on params, for params and for the input."""
    net, params, x, y = make_case("elu", output, "mse", 3, 6, dtype=jnp.float64, seed=5)
    f = fnn.manual_apply(net)

    def objective(apply):
        def loss(params, x):
            reg = sum(jnp.sum(layer["w"] ** 2) for layer in params)
            return optax.l2_loss(apply(params, x), y).mean() + 1e-2 * reg
        return loss

    np.testing.assert_allclose(f(params, x), net.apply(params, x), rtol=0)
    gm = transform(jax.grad(objective(f), argnums=(0, 1)))(params, x)
    ga = transform(jax.grad(objective(net.apply), argnums=(0, 1)))(params, x)
    assert_tree_close(gm[0], ga[0], rtol=1e-10, atol_scale=1e-14)
    np.testing.assert_allclose(gm[1], ga[1], rtol=1e-10, atol=1e-15)
    # a single example (1-D input) too
    g1 = jax.grad(lambda x: jnp.sum(jnp.sin(f(params, x))))(x[0])
    g2 = jax.grad(lambda x: jnp.sum(jnp.sin(net.apply(params, x))))(x[0])
    assert g1.shape == (3,)
    np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-15)


def test_manual_apply_integer_input(x64):
    """An integer input has no gradient (float0 cotangent); the params' gradient still flows."""
    net, params, _, y = make_case("tanh", "identity", "mse", 2, 2, dtype=jnp.float64, seed=8)
    x = jnp.array([[1, 2, 3], [0, -1, 4]])
    f = fnn.manual_apply(net)
    gm = jax.grad(lambda p: jnp.sum((f(p, x) - y) ** 2))(params)
    ga = jax.grad(lambda p: jnp.sum((net.apply(p, x) - y) ** 2))(params)
    assert_tree_close(gm, ga, rtol=1e-10, atol_scale=1e-15)


@pytest.mark.parametrize("hidden, output, loss", [
    ("tanh", "softmax", "sparse_categorical_cross_entropy"), ("relu", "identity", "sparse_softmax_cross_entropy"),
    ("swish", "sigmoid", "binary_cross_entropy"),
])
@TRANSFORMS
def test_manual_objective(hidden, output, loss, transform, x64):
    net, params, x, y = make_case(hidden, output, loss, 3, 6, dtype=jnp.float64, seed=6)
    f = fnn.manual_objective(net, loss)
    value, (gp, gx) = transform(jax.value_and_grad(f, argnums=(0, 1)))(params, x, y)
    ref_value, manual = fnn.backprop(net, params, x, y, loss)
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-13)
    assert_tree_close(gp, manual, rtol=1e-12, atol_scale=1e-15)
    gx_ref = jax.grad(fnn.objective(net, loss), argnums=1)(params, x, y)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-10, atol=1e-15)
    # scaled by an outer function, the chain rule applies
    g2 = jax.grad(lambda p: 3.0 * f(p, x, y))(params)
    assert_tree_close(g2, jax.tree_util.tree_map(lambda t: 3.0 * t, manual), rtol=1e-12, atol_scale=1e-15)


# --- purity, single examples, the tutorial network ------------------------------------------------------


def test_backprop_is_pure(x64):
    net, params, x, y = make_case("tanh", "softmax", "categorical_cross_entropy", 3, 5, dtype=jnp.float64)
    copy = jax.tree_util.tree_map(np.array, params)
    x_copy, y_copy = np.array(x), np.array(y)
    first = fnn.backprop(net, params, x, y, "categorical_cross_entropy")
    second = fnn.backprop(net, params, x, y, "categorical_cross_entropy")
    jax.tree_util.tree_map(np.testing.assert_array_equal, first, second)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, copy)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(y, y_copy)


@pytest.mark.parametrize("output, loss", [("identity", "mse"), ("softmax", "sparse_categorical_cross_entropy"),
                                          ("sigmoid", "binary_cross_entropy")])
def test_single_example_equals_batch_of_one(output, loss, x64):
    net, params, x, y = make_case("tanh", output, loss, 2, 1, dtype=jnp.float64, seed=7)
    v1, g1 = fnn.backprop(net, params, x[0], y[0], loss)
    vb, gb = fnn.backprop(net, params, x, y, loss)
    assert float(v1) == float(vb)
    jax.tree_util.tree_map(np.testing.assert_array_equal, g1, gb)
    v_auto, g_auto = fnn.autodiff(net, params, x[0], y[0], loss)
    assert_tree_close(g1, g_auto, rtol=1e-10, atol_scale=1e-15)


def test_tutorial_network_training_manual_equals_autodiff(x64):
    """The seed tutorial's network, 5 full-batch gradient steps (lr 0.5, quadratic cost) on iris-shaped data:
    manual and autodiff stay equal at every step, and the loss goes down."""
    net = fnn.mlp([4, 10, 3, 1], activations=["sigmoid"] * 3, bias=False, init="uniform")
    assert net.dtype == jnp.float64
    rng = np.random.default_rng(42)
    x = jnp.asarray(rng.uniform(size=(150, 4)) * np.array([[8.0, 4.5, 7.0, 2.5]]))  # iris-like feature ranges
    y = jnp.asarray(rng.uniform(size=(150, 1)))
    p_manual = p_auto = net.init(jax.random.key(42))
    manual_step = jax.jit(lambda p: fnn.backprop(net, p, x, y, "quadratic"))
    auto_step = jax.jit(lambda p: fnn.autodiff(net, p, x, y, "quadratic"))
    losses = []
    for step in range(5):
        v_m, g_m = manual_step(p_manual)
        v_a, g_a = auto_step(p_auto)
        np.testing.assert_allclose(float(v_m), float(v_a), rtol=1e-13, err_msg=f"step {step}")
        assert_tree_close(g_m, g_a, rtol=1e-10, atol_scale=1e-14)
        p_manual = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, p_manual, g_m)
        p_auto = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, p_auto, g_a)
        assert_tree_close(p_manual, p_auto, rtol=1e-12, atol_scale=1e-15)
        losses.append(float(v_m))
    assert losses[-1] < losses[0]


# --- errors -------------------------------------------------------------------------------------------


def _net():
    net = fnn.mlp([3, 4, 2], hidden="tanh", output="softmax")
    return net, random_params(net, np.random.default_rng(0))


def test_error_batch_mismatch():
    net, params = _net()
    with pytest.raises(ValueError) as err:
        fnn.backprop(net, params, jnp.ones((5, 3)), jnp.ones((4, 2)), "categorical_cross_entropy")
    assert "x has 5 examples, y has 4" in str(err.value)
    with pytest.raises(ValueError, match="x has 5 examples, y has 3"):
        fnn.backprop(net, params, jnp.ones((5, 3)), jnp.array([0, 1, 0]), "sparse_categorical_cross_entropy")


def test_error_one_hot_width():
    net, params = _net()
    with pytest.raises(ValueError) as err:
        fnn.backprop(net, params, jnp.ones((5, 3)), jnp.ones((5, 3)), "categorical_cross_entropy")
    msg = str(err.value)
    assert "(5, 2)" in msg and "(5, 3)" in msg and "2 outputs" in msg


def test_error_labels_out_of_range():
    net, params = _net()
    with pytest.raises(ValueError) as err:
        fnn.backprop(net, params, jnp.ones((3, 3)), jnp.array([0, 2, 1]), "sparse_categorical_cross_entropy")
    msg = str(err.value)
    assert "[0, 2)" in msg and "2 outputs" in msg and "from 0 to 2" in msg


def test_error_float_labels_for_sparse():
    net, params = _net()
    with pytest.raises(TypeError) as err:
        fnn.backprop(net, params, jnp.ones((3, 3)), jnp.array([0.0, 1.0, 1.0]), "sparse_softmax_cross_entropy")
    msg = str(err.value)
    assert "integer class labels" in msg and "float" in msg


def test_error_wrong_features():
    net, params = _net()
    with pytest.raises(ValueError, match=r"Layer 0: expected 3 input features, got 5 \(input shape \(4, 5\)\)"):
        fnn.backprop(net, params, jnp.ones((4, 5)), jnp.ones((4, 2)), "mse")
    with pytest.raises(ValueError, match=r"Layer 0: expected 3 input features, got 5"):
        fnn.autodiff(net, params, jnp.ones((4, 5)), jnp.ones((4, 2)), "mse")


def test_error_unknown_loss():
    net, params = _net()
    with pytest.raises(ValueError, match="Unknown loss 'cross_entropy'"):
        fnn.backprop(net, params, jnp.ones((4, 3)), jnp.ones((4, 2)), "cross_entropy")


FIRST_WRAPPING_LABEL = 2**32 + 1  # wraps to 1 under jnp.asarray without x64: in range, silently wrong


@pytest.mark.parametrize("call", [
    lambda net, p, x, y: fnn.backprop(net, p, x, y, "sparse_categorical_cross_entropy"),
    lambda net, p, x, y: fnn.autodiff(net, p, x, y, "sparse_categorical_cross_entropy"),
    lambda net, p, x, y: fnn.per_example_grads(net, p, x, y, "sparse_categorical_cross_entropy"),
    lambda net, p, x, y: fnn.gradcheck(net, p, x, y, "sparse_categorical_cross_entropy", num_checks=2, taylor=False),
], ids=["backprop", "autodiff", "per_example_grads", "gradcheck"])
def test_error_int64_labels_beyond_int32_are_refused(call):
    net, params = _net()
    y = np.array([0, FIRST_WRAPPING_LABEL, 1], np.int64)
    with pytest.raises(ValueError, match=rf"\[0, 2\).*got label {FIRST_WRAPPING_LABEL} at index 1"):
        call(net, params, np.ones((3, 3), np.float32), y)


def test_error_complex_object_and_string_data():
    net, params = _net()
    x, y = np.ones((3, 3), np.float32), np.array([0, 1, 1])
    with pytest.raises(TypeError, match=r"^x must be an array of real numbers, got dtype complex64"):
        fnn.backprop(net, params, x + 1j, y, "sparse_categorical_cross_entropy")
    with pytest.raises(TypeError, match=r"^y must be an array of real numbers, got dtype <U3"):
        fnn.backprop(net, params, x, np.array(["cat", "dog", "cat"]), "sparse_categorical_cross_entropy")
    with pytest.raises(TypeError, match=r"^y must be an array of real numbers, got dtype complex64"):
        fnn.autodiff(net, params, x, np.ones((3, 2), np.complex64), "mse")
    with pytest.raises(TypeError, match=r"^x must be an array of real numbers, got dtype object"):
        fnn.per_example_grads(net, params, x.astype(object), y, "sparse_categorical_cross_entropy")


def test_formulas_count_layers_from_0_like_the_trace():
    """README's formulas counted layers from 1 while the trace, gradcheck and the divergence message count from 0;
    one convention now, stated beside the formulas (a_{-1} = x, layer l is params[l] and trace.z[l])."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## The hand-written backward pass"):readme.index("### Activations")]
    modules = [importlib.import_module(f"fnn.{name}") for name in ("backprop", "network")]  # not fnn.backprop()
    for text in (section, *(module.__doc__ for module in modules)):
        assert "counted from 0" in text and "a_{-1} = x" in text
        assert not re.search(r"counted from 1|l = 1\.\.L|a_0 = x", text)
    net = fnn.mlp([3, 4, 2])
    _, _, trace = fnn.backprop(net, net.init(jax.random.key(0)), jnp.ones((1, 3)), jnp.ones((1, 2)), "mse",
                               return_trace=True)
    assert trace.z[0].shape == (1, 4)  # layer 0 is the first layer, as the formulas now say
