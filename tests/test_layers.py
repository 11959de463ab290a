"""Tests for fnn/layers.py and fnn/_layer.py: every layer's hand-written backward pass inside ``fnn.serial`` nets.

* The matrix (``CASES`` × every loss at batch 7, and at batch 1 with three losses: ``MATRIX_RUNS``): every layer
  kind (Dense with and without bias and several activations, an Activation layer and a bare activation name,
  Dropout 0 and 0.3 in training mode with a key, Residual with 1 and 2 inner layers and a nested one with dropout
  inside), alone where that makes sense and between Dense layers, with the output as a Dense activation or as a
  trailing Activation layer (softmax for mse/quadratic). Float64: ``fnn.backprop`` == ``fnn.autodiff`` to 1e-10;
  float32: each manual leaf within ``fnn.gradcheck.error_bound`` of the float64 autodiff leaf (scaled as gradcheck
  does); and the same under ``jax.vmap`` over 3 stacked members. One ``jax.jit`` per (loss, batch): compiles
  dominate on CPU.
* Finite differences (``fnn.gradcheck``, few coordinates) on a subset covering every layer kind and every loss;
  eager (no jit) on a few cases.
* The fused closed form with a trailing activation layer, hypothesis stacks, mlp ≡ serial, dropout's masks and
  statistics, fit/sgd_step/per_example_grads/penalties with the new layers, error messages, describe round trip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SPARSE_CE, assert_tree_equal, fit_batches, make_targets, without_time
from hypothesis import given, settings
from hypothesis import strategies as st

import fnn
from fnn import _layer
from fnn import layers as L
from fnn.backprop import autodiff_in
from fnn.gradcheck import error_bound, scaled_error

LOSSES = fnn.losses.names()
BATCHES = (1, 7)
N_IN, WIDTH, N_OUT = 3, 4, 4
EPS64 = float(np.finfo(np.float64).eps)


# --- builders -------------------------------------------------------------------------------------------------

def random_params(net, rng: np.random.Generator, dtype=jnp.float64):
    """Glorot-normal weights and nonzero biases for any serial net, from NumPy (no threefry compile per shape)."""
    def make(shapes):
        if isinstance(shapes, list):
            return [make(s) for s in shapes]
        return {k: jnp.asarray(rng.normal(size=s) * (np.sqrt(2 / sum(s)) if k == "w" else 0.3), dtype)
                for k, s in shapes.items()}

    return make(net.param_shapes())


def to_dtype(tree, dtype):
    return jax.tree_util.tree_map(lambda t: t.astype(dtype), tree)


def stack(trees):
    return jax.tree_util.tree_map(lambda *t: jnp.stack(t), *trees)


def dense_count(layers) -> int:
    return sum(dense_count(lay.children) if lay.children else lay.kind == "Dense" for lay in layers)


#: The hidden part of each case (the output part is added per loss by ``output_layers``).
HIDDEN = {
    "alone": (),  # the output layer alone
    "dense_mixed": (L.Dense(WIDTH, "relu", bias=False), L.Dense(WIDTH, "sigmoid"), L.Dense(WIDTH, "gelu", bias=False)),
    "activation_layer": (L.Dense(WIDTH), L.Activation("elu"), "softplus"),  # a layer, then a bare name
    "dropout03": (L.Dense(WIDTH, "tanh"), L.Dropout(0.3)),
    "dropout_input": (L.Dropout(0.3),),
    "dropout0_residual1": (L.Dense(WIDTH, "tanh"), L.Dropout(0.0), L.Residual(L.Dense(WIDTH, "tanh"))),
    "residual2": (L.Dense(WIDTH, "tanh"), L.Residual(L.Dense(WIDTH, "relu"), L.Dense(WIDTH))),
    "residual_nested": (L.Dense(WIDTH, "tanh"),
                        L.Residual(L.Dense(WIDTH, "sigmoid"), L.Residual(L.Dense(WIDTH, "tanh"), L.Dropout(0.3)))),
    "residual_alone": None,  # a Residual block on the input itself (n_in = n_out), then the output activation
}


def output_activation(loss: str, form: str) -> str:
    natural = fnn.losses.natural_output(loss)
    return natural if natural is not None else ("sigmoid" if form == "dense" else "softmax")


def build(hidden: str, loss: str, form: str):
    """The net of one matrix case: ``form`` "dense" ends in ``Dense(N_OUT, act)``, "layer" in ``Dense(N_OUT)``
    followed by ``Activation(act)`` (a trailing layer, e.g. softmax)."""
    act = output_activation(loss, form)
    if HIDDEN[hidden] is None:
        block = L.Residual(L.Dense(N_OUT, "tanh"))
        return fnn.serial(block, *([act] if act != "identity" else []), input_shape=(N_OUT,), dtype=jnp.float64)
    out = (L.Dense(N_OUT, act),) if form == "dense" else (L.Dense(N_OUT), L.Activation(act))
    return fnn.serial(*HIDDEN[hidden], *out, input_shape=(N_IN,), dtype=jnp.float64)


#: The trailing-Activation output form on a subset (every loss still meets it, fused and unfused).
LAYER_FORM = ("alone", "activation_layer", "dropout03", "residual_nested")
CASES = [(h, "dense") for h in HIDDEN] + [(h, "layer") for h in LAYER_FORM]
#: The cases also run under ``jax.vmap`` over 3 stacked members (batch 7): one of every layer kind.
VMAP_CASES = {("dense_mixed", "dense"), ("activation_layer", "layer"), ("dropout03", "layer"),
              ("residual2", "dense"), ("residual_nested", "layer"), ("residual_alone", "dense")}
#: XLA's CPU backend at optimisation level 0 and without the fusion emitters: the matrix is one program per
#: (loss, batch) of a dozen small nets, whose compile would take most of the test's time (about half of it is
#: saved); manual and autodiff are compiled alike.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
KEY = jax.random.key(42)  # the dropout key of the matrix (training mode for every case)
#: (loss, batch) of the matrix: every loss at batch 7; at batch 1 (a one-row batch meets the loss's mean and the
#: shapes, not a layer's rule) the fused softmax with labels, the fused sigmoid, and mse through the trailing
#: softmax layer. Every loss at batch 1 is in test_backprop.py's matrix.
MATRIX_RUNS = [(loss, 7) for loss in LOSSES] + [(loss, 1) for loss in ("sparse_categorical_cross_entropy",
                                                                       "binary_cross_entropy", "mse")]


def problem(net, loss, batch, seed):
    rng = np.random.default_rng(seed)
    members = [random_params(net, rng) for _ in range(3)]
    x = jnp.asarray(rng.normal(size=(batch, *net.input_shape)))
    y = make_targets(loss, batch, N_OUT, rng, jnp.float64)
    return members, x, y


def assert_close(got, want, depth: int, what: str, rtol: float = 1e-10):
    """Leafwise ``|got - want| <= rtol |want| + 64 eps64 (depth + 1) max|want|`` (the second term: float64
    rounding of coordinates that cancel to near zero), with the same tree structure and dtypes."""
    chex.assert_trees_all_equal_structs(got, want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape, what
        scale = float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=error_bound(jnp.float64, depth) * scale, err_msg=what)


# --- the matrix: manual == autodiff, float64 and float32, jitted and vmapped ------------------------------------

@pytest.mark.parametrize(("loss", "batch"), MATRIX_RUNS, ids=[f"{loss}-{batch}" for loss, batch in MATRIX_RUNS])
def test_every_layer_manual_equals_autodiff(float64, loss, batch):
    nets = [build(h, loss, f) for h, f in CASES]
    data = [problem(net, loss, batch, seed) for seed, net in enumerate(nets)]
    vmapped = [batch == 7 and case in VMAP_CASES for case in CASES]

    def run(all_members, xs, ys, key):
        out = []
        for net, members, x, y, vm in zip(nets, all_members, xs, ys, vmapped, strict=True):
            p = members[0]
            grads = fnn.backprop(net, p, x, y, loss, key=key), fnn.autodiff(net, p, x, y, loss, key=key)
            if vm:
                vm = tuple(jax.vmap(lambda q, f=f, net=net, x=x, y=y: f(net, q, x, y, loss, key=key)[1])(stack(members))
                           for f in (fnn.backprop, fnn.autodiff))
            out.append((*grads, vm))
        return out

    args = ([d[0] for d in data], [d[1] for d in data], [d[2] for d in data], KEY)
    results = jax.jit(run).lower(*args).compile(FAST_COMPILE)(*args)
    # float32 runs eagerly: its primitives are compiled once per worker and shared by every case and loss
    grads32 = [fnn.backprop(net, to_dtype(members[0], jnp.float32), x, y, loss, key=KEY)[1]
               for net, (members, x, y) in zip(nets, data, strict=True)]
    for (hidden, form), net, ((m_val, m), (a_val, a), vm), m32 in zip(CASES, nets, results, grads32, strict=True):
        what = f"{hidden}-{form}, {loss}, batch {batch}"
        depth = max(net.num_layers, dense_count(net.layers))
        assert np.isfinite(m_val) and abs(float(m_val) - float(a_val)) <= 1e-12 * max(1.0, abs(float(a_val))), what
        assert jax.tree_util.tree_leaves(m), f"{what}: no parameters to check"
        assert_close(m, a, depth, f"{what}: manual vs autodiff (float64)")
        for got, ref in zip(jax.tree_util.tree_leaves(m32), jax.tree_util.tree_leaves(a), strict=True):
            assert got.dtype == jnp.float32, what
            err = scaled_error(got, ref, jnp.float32)[1]
            assert err <= error_bound(jnp.float32, depth), f"{what}: float32 manual off by {err:.2e} (scaled)"
        if vm:
            assert_close(vm[0], vm[1], depth, f"{what}: vmapped manual vs vmapped autodiff")
            for k in range(3):
                member = jax.tree_util.tree_map(lambda t, k=k: t[k], vm[0])
                if k == 0:
                    assert_close(member, m, depth, f"{what}: vmapped member 0 vs unbatched manual")
                else:  # the members really differ: vmap did not broadcast member 0
                    assert not np.allclose(jax.tree_util.tree_leaves(member)[0], jax.tree_util.tree_leaves(m)[0])
    assert sum(vmapped) == (len(VMAP_CASES) if batch == 7 else 0)


#: Finite differences (each gradcheck costs seconds of compiles) on a subset covering every layer kind, both
#: output forms, both fused pairs and a logits loss; the matrix above ties every loss to autodiff.
FD_CASES = [
    ("dense_mixed", "dense", "mse"),
    ("activation_layer", "layer", "binary_cross_entropy"),
    ("residual_nested", "layer", "categorical_cross_entropy"),
    ("residual2", "dense", "sparse_softmax_cross_entropy"),
]


@pytest.mark.parametrize(("hidden", "form", "loss"), FD_CASES, ids=[f"{h}-{f}-{l}" for h, f, l in FD_CASES])
def test_finite_differences_on_a_covering_subset(float64, hidden, form, loss):
    net = build(hidden, loss, form)
    (params, *_), x, y = problem(net, loss, 7, seed=3)
    report = fnn.gradcheck(net, params, x, y, loss, num_checks=12, dropout_key=KEY, train=True,
                           taylor=False)
    assert report.ok, str(report)
    pairs = {r.pair for r in report.rows}
    assert {"manual~autodiff", "manual~fd", "autodiff~fd"} <= pairs
    assert sum(r.checked for r in report.rows if r.pair == "manual~fd") == 12
    # the check is in training mode: another dropout key moves the gradient of a net with dropout
    if net.stochastic:
        other = fnn.backprop(net, params, x, y, loss, key=jax.random.key(7))[1]
        assert not np.allclose(jax.tree_util.tree_leaves(other)[0],
                               jax.tree_util.tree_leaves(fnn.backprop(net, params, x, y, loss, key=KEY)[1])[0])


@pytest.mark.parametrize(("hidden", "form", "loss"), [("dropout03", "dense", "mse"),
                                                      ("residual_nested", "layer", SPARSE_CE),
                                                      ("activation_layer", "layer", "categorical_cross_entropy")])
def test_eager_equals_jit(float64, hidden, form, loss):
    net = build(hidden, loss, form)
    (params, *_), x, y = problem(net, loss, 7, seed=5)
    eager = fnn.backprop(net, params, x, y, loss, key=KEY)
    jitted = jax.jit(lambda p, x, y, k: fnn.backprop(net, p, x, y, loss, key=k))(params, x, y, KEY)
    auto = fnn.autodiff(net, params, x, y, loss, key=KEY)
    depth = dense_count(net.layers) + 1
    assert_close(eager[1], jitted[1], depth, "eager vs jit", rtol=1e-12)
    assert_close(eager[1], auto[1], depth, "eager manual vs eager autodiff")
    np.testing.assert_allclose(eager[0], auto[0], rtol=1e-13)


# --- the fused closed form with a trailing activation layer -----------------------------------------------------

@pytest.mark.parametrize("loss", ["sparse_categorical_cross_entropy", "categorical_cross_entropy"])
def test_fused_softmax_as_trailing_layer(float64, loss):
    net = fnn.serial(L.Dense(WIDTH, "tanh"), L.Dense(N_OUT), "softmax", input_shape=(N_IN,))
    params = random_params(net, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(5, N_IN)))
    labels = jnp.array([0, 3, 1, 2, 3], jnp.int32)
    onehot = jax.nn.one_hot(labels, N_OUT, dtype=jnp.float64)
    y = labels if loss == SPARSE_CE else onehot
    value, grads, trace = fnn.backprop(net, params, x, y, loss, return_trace=True)
    z = trace.z[-1]
    np.testing.assert_allclose(z, trace.a[1], rtol=0, atol=0)  # the softmax layer's input is the Dense output
    np.testing.assert_allclose(trace.delta[-1], (jax.nn.softmax(z) - onehot) / 5, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(value, -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(z), axis=-1)), rtol=1e-14)
    # Logits of ±1e4: the unfused chain would give log(0) = -inf and 0 · inf = NaN; the closed form stays finite.
    big = [params[0], {"w": params[1]["w"] * 0 + jnp.array([[1e4, -1e4, 0, 0]] * WIDTH) / WIDTH,
                       "b": jnp.array([0.0, 0.0, 1e4, -1e4])}, {}]
    xs = jnp.zeros((5, N_IN))  # tanh(b0) rows; logits = sum(tanh) * (±1e4 / WIDTH) + b
    value, grads, trace = fnn.backprop(net, big, xs, y, loss, return_trace=True)
    assert float(jnp.max(jnp.abs(trace.z[-1]))) >= 1e4
    assert np.isfinite(value) and value > 1e3  # labels 0/1/3 sit far below the largest logit
    assert all(np.isfinite(t).all() for t in jax.tree_util.tree_leaves(grads))
    np.testing.assert_allclose(trace.delta[-1], (jax.nn.softmax(trace.z[-1]) - onehot) / 5, atol=1e-15)
    auto_value, auto = fnn.autodiff(net, big, xs, y, loss)
    np.testing.assert_allclose(auto_value, value, rtol=1e-12)
    assert_close(grads, auto, 4, "±1e4 logits")


def test_fused_sigmoid_as_trailing_layer(float64):
    net = fnn.serial(L.Residual(L.Dense(N_OUT, "tanh")), L.Dense(N_OUT), L.Activation("sigmoid"),
                     input_shape=(N_OUT,))
    params = random_params(net, np.random.default_rng(2))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(6, N_OUT)))
    y = jnp.asarray(np.random.default_rng(4).uniform(size=(6, N_OUT)))
    _, _, trace = fnn.backprop(net, params, x, y, "binary_cross_entropy", return_trace=True)
    np.testing.assert_allclose(trace.delta[-1], (jax.nn.sigmoid(trace.z[-1]) - y) / 6, rtol=1e-13, atol=1e-16)
    big = [params[0], {"w": params[1]["w"] * 1e5, "b": params[1]["b"]}, {}]
    value, grads = fnn.backprop(net, big, x, y, "binary_cross_entropy")
    assert np.isfinite(value) and value > 1e3
    assert all(np.isfinite(t).all() for t in jax.tree_util.tree_leaves(grads))


# --- hypothesis: random serial stacks --------------------------------------------------------------------------

SMOOTH = ["tanh", "sigmoid", "softplus", "elu", "gelu", "swish", "identity", "relu", "leaky_relu"]


@st.composite
def stacks(draw):
    specs, width = [], N_IN  # width: the current feature width (a Residual block keeps it)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["dense", "dense_nobias", "residual", "activation"]))
        act = draw(st.sampled_from(SMOOTH))
        if kind == "residual":
            inner = [L.Dense(width, draw(st.sampled_from(SMOOTH))) for _ in range(draw(st.integers(1, 2)))]
            if draw(st.booleans()):
                inner.insert(1, L.Dropout(draw(st.sampled_from([0.0, 0.25, 0.5]))))
            specs.append(L.Residual(*inner))
        elif kind == "activation":
            width = draw(st.sampled_from([2, 3, 5]))
            specs += [L.Dense(width), act]
        else:
            width = draw(st.sampled_from([2, 3, 5]))
            specs.append(L.Dense(width, act, bias=kind == "dense"))
        if draw(st.booleans()):
            specs.append(L.Dropout(draw(st.sampled_from([0.0, 0.1, 0.5]))))
    loss = draw(st.sampled_from(LOSSES))
    out = fnn.losses.natural_output(loss) or draw(st.sampled_from(["identity", "tanh", "softmax"]))
    specs += [L.Dense(N_OUT, out)] if draw(st.booleans()) else [L.Dense(N_OUT), out]
    penalty = draw(st.sampled_from([None, "l1", "l2", "both"]))
    penalty = {None: None, "l1": fnn.penalties.l1(3e-2), "l2": fnn.penalties.l2(5e-2),
               "both": fnn.penalties.combine(fnn.penalties.l1(1e-2), fnn.penalties.l2(1e-2))}[penalty]
    return specs, loss, penalty, draw(st.integers(1, 6)), draw(st.integers(0, 2**16))


@settings(max_examples=10, derandomize=True, deadline=None)
@given(stacks())
def test_random_stacks_manual_equals_autodiff(case):
    specs, loss, penalty, batch, seed = case
    with jax.enable_x64(True):
        net = fnn.serial(*specs, input_shape=(N_IN,), dtype=jnp.float64)
        (params, *_), x, y = problem(net, loss, batch, seed)
        key = jax.random.key(seed)
        both = jax.jit(lambda p, x, y, k: (fnn.backprop(net, p, x, y, loss, key=k, penalty=penalty),
                                           fnn.autodiff(net, p, x, y, loss, key=k, penalty=penalty)))
        (m_val, m), (a_val, a) = both.lower(params, x, y, key).compile(FAST_COMPILE)(params, x, y, key)
        np.testing.assert_allclose(m_val, a_val, rtol=1e-12)
        assert_close(m, a, dense_count(net.layers) + 1, f"{net!r}, {loss}, penalty {penalty and penalty.name}")


# --- mlp is sugar for a serial of Dense -----------------------------------------------------------------------

def test_mlp_is_a_serial_of_dense(float64):
    a = fnn.mlp([784, 30, 10], hidden="sigmoid")
    b = fnn.serial(L.Dense(30, activation="sigmoid"), L.Dense(10), input_shape=(784,))
    assert a is not b and a.describe() == b.describe()
    assert a.describe()["sizes"] == [784, 30, 10] and a.describe()["activations"] == ["sigmoid", "identity"]
    assert repr(a) == repr(b)
    pa, pb = a.init(jax.random.key(3)), b.init(jax.random.key(3))
    assert_tree_equal(pa, pb)
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(48, 784)) * 0.1, rng.integers(0, 10, 48).astype(np.int32)
    np.testing.assert_array_equal(a.apply(pa, x), b.apply(pb, x))
    fits = [fnn.fit(net, p, (x, labels), loss=SPARSE_CE, epochs=2, batch_size=16,
                    learning_rate=0.5, key=jax.random.key(9), progress=False) for net, p in ((a, pa), (b, pb))]
    assert_tree_equal(fits[0][0], fits[1][0])
    assert without_time(fits[0][1]) == without_time(fits[1][1])
    assert not np.array_equal(fits[0][0][0]["w"], pa[0]["w"])  # it trained


# --- dropout ----------------------------------------------------------------------------------------------------

def dropout_net(rate=0.3, width=200):
    return fnn.serial(L.Dense(width, "tanh"), L.Dropout(rate), L.Dense(N_OUT), input_shape=(N_IN,),
                      dtype=jnp.float64)


def test_dropout_statistics(float64):
    rates = (0.1, 0.3, 0.75)
    layers = [L.Dropout(rate).bind((500,), "0") for rate in rates]
    x = jnp.ones((40, 500))
    outs = jax.jit(lambda x, k: [lay.forward({}, x, _layer.Context(True, k)) for lay in layers])(x, jax.random.key(1))
    n = x.size
    for rate, (y, aux) in zip(rates, outs, strict=True):
        kept = float(jnp.mean(aux["keep"]))
        assert abs(kept - (1 - rate)) <= 4 * np.sqrt(rate * (1 - rate) / n), (rate, kept)
        # inverted scaling: kept units are x / (1 - rate), dropped ones 0, so E[y] = x; y takes the values 0 and
        # 1/(1-rate), whose variance is rate/(1-rate): the mean of n of them is within 4 sigma of 1.
        np.testing.assert_allclose(y, jnp.where(aux["keep"], 1 / (1 - rate), 0.0), rtol=1e-15)
        assert abs(float(jnp.mean(y)) - 1) <= 4 * np.sqrt(rate / (1 - rate) / n), rate
        # the rows have masks of their own (per-row keys): no two rows of 500 units agree
        assert len({tuple(np.asarray(r)) for r in aux["keep"]}) == x.shape[0]


def test_dropout_rate_zero_and_inference_mode_are_the_identity(float64):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, N_IN)))
    zero = fnn.serial(L.Dropout(0.0), input_shape=(N_IN,))
    assert not zero.stochastic
    np.testing.assert_array_equal(zero.apply([{}], x, key=jax.random.key(0)), x)
    np.testing.assert_array_equal(zero.apply([{}], x, train=True), x)  # rate 0 needs no key
    half = fnn.serial(L.Dropout(0.5), input_shape=(N_IN,))
    assert half.stochastic
    np.testing.assert_array_equal(half.apply([{}], x), x)
    np.testing.assert_array_equal(half.apply([{}], x, key=jax.random.key(0), train=False), x)
    assert not np.array_equal(half.apply([{}], x, key=jax.random.key(0)), x)
    # inference mode through backprop: the same gradient as the net without the dropout layer
    net = dropout_net(0.5, WIDTH)
    plain = fnn.serial(L.Dense(WIDTH, "tanh"), L.Dense(N_OUT), input_shape=(N_IN,))
    params = random_params(net, np.random.default_rng(1))
    y = jnp.asarray(np.random.default_rng(2).normal(size=(7, N_OUT)))
    value, grads, trace = fnn.backprop(net, params, x, y, "mse", return_trace=True)
    assert trace.mask == [None, None, None]
    ref = fnn.backprop(plain, [params[0], params[2]], x, y, "mse")
    np.testing.assert_array_equal(value, ref[0])
    assert_tree_equal([grads[0], grads[2]], ref[1])
    assert grads[1] == {}


def test_dropout_rate_outside_unit_interval_is_an_error():
    for rate in (1.0, 1.5, -0.1, float("nan"), np.float32(1.0)):
        with pytest.raises(ValueError, match=r"Dropout: rate must be a number in \[0, 1\)"):
            L.Dropout(rate)
    for rate in (True, "0.5", None):  # not a number at all: a TypeError naming the type
        with pytest.raises(TypeError, match=r"Dropout: rate must be a number in \[0, 1\).*got (bool|str|NoneType)"):
            L.Dropout(rate)
    # NumPy scalars are numbers (a rate from a sweep array, a width from a shape), kept as plain Python values
    net = fnn.serial(L.Dense(np.int64(4)), L.Dropout(np.float32(0.5)), input_shape=(3,))
    assert net.describe()["layers"][0]["units"] == 4 and type(net.layers[0].config["units"]) is int
    assert net.layers[1].config == {"rate": 0.5} and net.stochastic
    json.dumps(net.describe())


def test_training_mode_without_a_key_names_key():
    net = dropout_net(0.3, WIDTH)
    params = random_params(net, np.random.default_rng(0), jnp.float32)
    x, y = jnp.ones((2, N_IN)), jnp.ones((2, N_OUT))
    for call in (lambda: fnn.backprop(net, params, x, y, "mse", train=True),
                 lambda: fnn.autodiff(net, params, x, y, "mse", train=True),
                 lambda: net.apply(params, x, train=True)):
        with pytest.raises(ValueError, match="key="):
            call()


def test_same_key_same_mask_everywhere(float64):
    net = fnn.serial(L.Dense(WIDTH, "tanh"), L.Dropout(0.5), L.Residual(L.Dense(WIDTH, "tanh"), L.Dropout(0.5)),
                     L.Dense(N_OUT), input_shape=(N_IN,))
    params = random_params(net, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.normal(size=(7, N_IN))), jnp.asarray(rng.normal(size=(7, N_OUT)))
    k, k2 = jax.random.key(10), jax.random.key(11)
    value, grads, trace = fnn.backprop(net, params, x, y, "mse", key=k, return_trace=True)
    _, grads_again, trace_again = fnn.backprop(net, params, x, y, "mse", key=k, return_trace=True)
    _, grads_other, trace_other = fnn.backprop(net, params, x, y, "mse", key=k2, return_trace=True)
    mask, inner = trace.mask[1], trace.at("2.1").values["mask"]
    assert mask.dtype == jnp.bool_ and mask.shape == (7, WIDTH) and inner.shape == (7, WIDTH)
    assert [m is None for m in trace.mask] == [True, False, True, True]
    np.testing.assert_array_equal(trace_again.mask[1], mask)
    assert_tree_equal(grads_again, grads)
    assert not np.array_equal(trace_other.mask[1], mask)
    assert not np.array_equal(mask, inner)  # the block's dropout has a stream of its own (fold_in(key, 2), 1)
    # the trace's mask is the one the forward pass applied: layer 1's output is a * mask / (1 - p)
    np.testing.assert_allclose(trace.a[1], trace.a[0] * mask / 0.5, rtol=1e-15)
    # autodiff with the same key = manual; another key differs
    assert_close(fnn.autodiff(net, params, x, y, "mse", key=k)[1], grads, 4, "autodiff, same key")
    assert not np.allclose(fnn.autodiff(net, params, x, y, "mse", key=k2)[1][0]["w"], grads[0]["w"])
    assert_close(grads_other, fnn.autodiff(net, params, x, y, "mse", key=k2)[1], 4, "autodiff, other key")
    # apply, manual_apply and manual_objective with the key see the same masks
    out = net.apply(params, x, key=k)
    np.testing.assert_array_equal(out, trace.a[-1])
    np.testing.assert_array_equal(fnn.manual_apply(net)(params, x, k), out)
    assert not np.array_equal(net.apply(params, x, key=k2), out)
    objective = fnn.manual_objective(net, "mse")
    np.testing.assert_allclose(objective(params, x, y, k), value, rtol=1e-15)
    assert_close(jax.grad(objective)(params, x, y, k), grads, 4, "manual_objective grad", rtol=1e-14)
    bridged = jax.grad(lambda p: jnp.mean((fnn.manual_apply(net)(p, x, k) - y) ** 2))(params)
    assert_close(bridged, grads, 4, "manual_apply grad")


def test_sharded_rows_get_the_masks_of_the_whole_batch(float64):
    layer = L.Dropout(0.4).bind((WIDTH * 3,), "0")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, WIDTH * 3)))
    key = jax.random.key(5)
    run = jax.jit(lambda x, rows: layer.forward({}, x, _layer.Context(True, key, None, rows)))
    full_y, full = run(x, jnp.arange(8))
    part_y, part = run(x[4:8], jnp.arange(4, 8))
    np.testing.assert_array_equal(part["keep"], full["keep"][4:8])
    np.testing.assert_array_equal(part_y, full_y[4:8])
    unshifted = run(x[4:8], jnp.arange(4))[1]["keep"]
    assert not np.array_equal(unshifted, full["keep"][4:8])  # without rows the shard would reuse rows 0..3's masks
    np.testing.assert_array_equal(unshifted, full["keep"][:4])


# --- fit and sgd_step with dropout --------------------------------------------------------------------------------

def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_OUT, n).astype(np.int32)
    return rng.normal(size=(n, N_IN)) + y[:, None] * 0.5, y


def _drop_net(rate):
    return fnn.serial(L.Dense(6, "tanh"), L.Dropout(rate), L.Residual(L.Dense(6, "tanh")), L.Dense(N_OUT, "softmax"),
                      input_shape=(N_IN,))


def test_fit_with_dropout_is_deterministic_and_replays_with_the_documented_keys(float64):
    net = _drop_net(0.3)
    params = random_params(net, np.random.default_rng(1))
    x, y = _data()
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=8, learning_rate=0.3, key=jax.random.key(2), progress=False)
    p1, h1 = fnn.fit(net, params, (x, y), **kw)
    p2, h2 = fnn.fit(net, params, (x, y), **kw)
    assert_tree_equal(p1, p2)
    assert without_time(h1) == without_time(h2)
    # replay: the shuffle of a net without dropout (fit_batches writes it out), and step s of epoch e takes the
    # key step_keys(fold_in(key, e), steps)[s]
    step = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.3)
    p, losses = params, []
    for e in range(2):
        epoch_key = jax.random.fold_in(kw["key"], e)
        batches = fit_batches(kw["key"], e, len(x), 8)
        keys = fnn._epoch.step_keys(epoch_key, len(batches))
        for s, idx in enumerate(batches):
            p, value = step(p, x[idx], y[idx], keys[s])
            losses.append(float(value))
    assert_close(p1, p, 8, "fit vs replay with sgd_step", rtol=1e-12)
    np.testing.assert_allclose(h1["train_loss"], np.mean(np.reshape(losses, (2, -1)), axis=1), rtol=1e-12)
    p3, _ = fnn.fit(net, params, (x, y), **{**kw, "key": jax.random.key(3)})
    assert not np.allclose(p3[0]["w"], p1[0]["w"])
    # jax.grad in the same steps sees the same masks
    auto, _ = fnn.fit(net, params, (x, y), grads="autodiff", **kw)
    assert_close(auto, p1, 8, "fit with autodiff grads vs manual", rtol=1e-12)


def test_fit_with_dropout_zero_is_the_net_without_dropout(float64):
    net, plain = _drop_net(0.0), fnn.serial(L.Dense(6, "tanh"), L.Residual(L.Dense(6, "tanh")),
                                            L.Dense(N_OUT, "softmax"), input_shape=(N_IN,))
    params = random_params(net, np.random.default_rng(1))
    x, y = _data()
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=8, learning_rate=0.3, key=jax.random.key(2), progress=False)
    p, h = fnn.fit(net, params, (x, y), (x, y), **kw)
    q, g = fnn.fit(plain, [params[0], params[2], params[3]], (x, y), (x, y), **kw)
    assert p[1] == {}
    assert_tree_equal([p[0], p[2], p[3]], q)
    assert without_time(h) == without_time(g)


def test_sgd_step_on_a_dropout_net_needs_the_key(float64):
    net = _drop_net(0.5)
    params = random_params(net, np.random.default_rng(1))
    x, y = _data(8)
    step = fnn.sgd_step(net, SPARSE_CE, learning_rate=0.1)
    with pytest.raises(TypeError, match="key"):
        step(params, x, y)
    k = jax.random.key(4)
    new, value = step(params, x, y, k)
    ref_value, grads = jax.jit(lambda p, k: fnn.backprop(net, p, x, y, SPARSE_CE, key=k))(params, k)
    np.testing.assert_allclose(value, ref_value, rtol=1e-14)
    assert_close(new, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), 6, "sgd_step", rtol=1e-14)
    other, _ = step(params, x, y, jax.random.key(5))
    assert not np.allclose(other[0]["w"], new[0]["w"])


_PARALLEL_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import fnn
    from fnn import layers as L
    assert jax.device_count() == 2 and jax.config.jax_enable_x64
    net = fnn.serial(L.Dense(6, "tanh"), L.Dropout(0.3), L.Residual(L.Dense(6, "tanh"), L.Dropout(0.2)),
                     L.Dense(4, "softmax"), input_shape=(3,))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 3)), rng.integers(0, 4, 48).astype(np.int32)
    params = net.init(jax.random.key(1))
    kw = dict(loss="sparse_categorical_cross_entropy", epochs=2, batch_size=8, learning_rate=0.3,
              key=jax.random.key(2), progress=False)
    one, h1 = fnn.fit(net, params, (x, y), **kw)
    two, h2 = fnn.fit(net, params, (x, y), devices=2, **kw)
    leaves = lambda t: [np.asarray(a) for a in jax.tree_util.tree_leaves(t)]
    rel = lambda u, v: max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(leaves(u), leaves(v)))
    err = rel(two, one)
    k = jax.random.key(7)
    s1, v1 = fnn.sgd_step(net, kw["loss"], learning_rate=0.3)(params, x[:8], y[:8], k)
    s2, v2 = fnn.sgd_step(net, kw["loss"], learning_rate=0.3, devices=2)(params, x[:8], y[:8], k)
    step_err = max(rel(s2, s1), abs(float(v2) - float(v1)) / abs(float(v1)))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(two), leaves(params)))
    out = {"err": err, "step_err": step_err, "loss1": h1["train_loss"], "loss2": h2["train_loss"], "moved": moved}
    json.dump(out, sys.stdout)
""")


def test_fit_and_sgd_step_on_two_devices_with_dropout_equal_one_device():
    # One process with two host devices, compiled as the matrix is (FAST_COMPILE's options as XLA flags): both
    # sides of each comparison run in that process, compiled alike.
    flags = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 " \
            "--xla_cpu_use_fusion_emitters=false"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
    proc = subprocess.run([sys.executable, "-c", _PARALLEL_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=240, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["err"] <= 1e-12 and out["step_err"] <= 1e-12, out
    np.testing.assert_allclose(out["loss2"], out["loss1"], rtol=1e-12)
    assert out["moved"] > 1e-3  # it trained


# --- per-example gradients ----------------------------------------------------------------------------------------

def test_per_example_grads_with_residual_and_dropout(float64):
    net = fnn.serial(L.Dense(WIDTH, "tanh"), L.Dropout(0.4), L.Residual(L.Dense(WIDTH, "sigmoid"),
                                                                    L.Residual(L.Dense(WIDTH, "tanh"))),
                     L.Dense(N_OUT), "softmax", input_shape=(N_IN,))
    params = random_params(net, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.normal(size=(7, N_IN))), jnp.asarray(rng.integers(0, N_OUT, 7), jnp.int32)
    loss = fnn.losses.get(SPARSE_CE)
    k = jax.random.key(3)
    rows = (0, 4, 6)

    @jax.jit
    def run(params, x, y, k):
        # inference mode: jax.vmap of autodiff on each example as a batch of one
        ref = jax.vmap(lambda xi, yi: fnn.autodiff(net, params, xi[None], yi[None], loss)[1])(x, y)
        # training mode: example n alone, with row n's mask (the Context's rows)
        alone = [autodiff_in(net, params, x[n:n + 1], y[n:n + 1], loss,
                             _layer.Context(True, k, None, jnp.array([n], jnp.int32)))[1] for n in rows]
        return (fnn.per_example_grads(net, params, x, y, loss), ref,
                fnn.per_example_grads(net, params, x, y, loss, key=k), fnn.backprop(net, params, x, y, loss, key=k)[1],
                alone)

    inference, ref, per, batch, alone = run(params, x, y, k)
    assert_close(inference, ref, 6, "per-example, inference mode")
    # the mean over examples is the batch gradient
    assert_close(jax.tree_util.tree_map(lambda t: jnp.mean(t, axis=0), per), batch, 6, "mean of per-example")
    for n, grads in zip(rows, alone, strict=True):
        assert_close(jax.tree_util.tree_map(lambda t, n=n: t[n], per), grads, 6, f"example {n} with its mask row")
    assert not np.allclose(per[0]["w"], inference[0]["w"])  # the key switched dropout on


# --- penalties --------------------------------------------------------------------------------------------------

def test_penalty_in_backprop_equals_autodiff_and_adds_its_value(float64):
    net = fnn.serial(L.Dense(WIDTH, "tanh"), L.Dropout(0.3), L.Residual(L.Dense(WIDTH, "tanh"),
                                                                    L.Residual(L.Dense(WIDTH, "relu"))),
                     L.Dense(N_OUT, "softmax"), input_shape=(N_IN,))
    params = random_params(net, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.normal(size=(7, N_IN))), jnp.asarray(rng.integers(0, N_OUT, 7), jnp.int32)
    k = jax.random.key(0)
    pen = fnn.penalties.l2(1e-2)
    (value, grads), (auto_value, auto), (bare_value, bare) = jax.jit(lambda p, k: (
        fnn.backprop(net, p, x, y, SPARSE_CE, key=k, penalty=pen), fnn.autodiff(net, p, x, y, SPARSE_CE, key=k,
                                                                                penalty=pen),
        fnn.backprop(net, p, x, y, SPARSE_CE, key=k)))(params, k)
    w2 = sum(float(jnp.sum(w ** 2)) for path, w in jax.tree_util.tree_flatten_with_path(params)[0]
             if path[-1].key == "w")
    np.testing.assert_allclose(value, bare_value + 1e-2 / 2 * w2, rtol=1e-13)
    np.testing.assert_allclose(auto_value, value, rtol=1e-13)
    assert_close(grads, auto, 6, "penalised manual vs autodiff", rtol=1e-12)
    np.testing.assert_allclose(grads[2][1][0]["w"], bare[2][1][0]["w"] + 1e-2 * params[2][1][0]["w"], rtol=1e-13)
    np.testing.assert_array_equal(grads[2][1][0]["b"], bare[2][1][0]["b"])  # biases are not penalised


def test_coupled_l2_in_fit_equals_optax_decayed_weights(float64):
    net = fnn.serial(L.Dense(6, "tanh"), L.Residual(L.Dense(6, "tanh"), L.Dense(6)), L.Dense(N_OUT, "softmax"),
                     input_shape=(N_IN,))
    params = random_params(net, np.random.default_rng(2))
    x, y = _data()
    lam, lr = 0.05, 0.3
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=8, key=jax.random.key(5), progress=False)
    coupled, _ = fnn.fit(net, params, (x, y), learning_rate=lr, penalty=fnn.penalties.l2(lam), **kw)
    mask = jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "w", params)
    decayed, _ = fnn.fit(net, params, (x, y), optimizer=optax.chain(optax.add_decayed_weights(lam, mask=mask),
                                                                     optax.sgd(lr)), **kw)
    assert_close(coupled, decayed, 6, "coupled l2 vs add_decayed_weights", rtol=1e-10)


# --- errors -----------------------------------------------------------------------------------------------------

def test_residual_that_changes_the_shape_names_the_layer_and_both_shapes():
    with pytest.raises(ValueError, match=r"Layer 1 \(Residual\).*\(4,\).*\(3,\)"):
        fnn.serial(L.Dense(4), L.Residual(L.Dense(3)), input_shape=(3,))
    with pytest.raises(ValueError, match=r"Layer 1\.1 \(Residual\).*\(4,\).*\(5,\)"):
        fnn.serial(L.Dense(4), L.Residual(L.Dense(4), L.Residual(L.Dense(5))), input_shape=(3,))
    with pytest.raises(ValueError, match="at least one inner layer"):
        L.Residual()


def test_shapes_that_do_not_chain_name_the_layer_and_the_shape():
    with pytest.raises(ValueError, match=r"Layer 0 \(Dense\).*\(2, 3\)"):
        fnn.serial(L.Dense(4), input_shape=(2, 3))
    with pytest.raises(ValueError, match=r"Layer 2\.0 \(Dense\).*\(2, 3\)"):
        fnn.serial(L.Dropout(0.1), "relu", L.Residual(L.Dense(3)), input_shape=(2, 3))


def test_unknown_names_are_named():
    with pytest.raises(ValueError, match=r"Layer 0.*'relux'"):
        fnn.serial("relux", input_shape=(3,))
    with pytest.raises(ValueError, match="relux"):
        L.Dense(4, activation="relux")
    with pytest.raises(ValueError, match=r"inner layer 1.*'tanhh'"):
        L.Residual(L.Dense(3), "tanhh")
    with pytest.raises(TypeError, match=r"Layer 1.*int"):
        fnn.serial(L.Dense(3), 7, input_shape=(3,))
    with pytest.raises(ValueError, match="'Conv'"):
        fnn.network.from_description({"input_shape": [3], "layers": [{"kind": "Conv"}], "dtype": "float32"})


def test_params_of_another_net_name_the_nested_layer():
    net = fnn.serial(L.Dense(4), L.Dropout(0.1), L.Residual(L.Dense(4), L.Residual(L.Dense(4))), L.Dense(2),
                     input_shape=(3,))
    other = fnn.serial(L.Dense(4), L.Dropout(0.1), L.Residual(L.Dense(4), L.Residual(L.Dense(4, bias=False))),
                       L.Dense(2), input_shape=(3,))
    params = random_params(net, np.random.default_rng(0), jnp.float32)
    x, y = jnp.ones((2, 3)), jnp.ones((2, 2))
    with pytest.raises(ValueError, match=r"Layer 2\.1\.0: expected params with keys \['w'\], got keys \['b', 'w'\]"):
        fnn.backprop(other, params, x, y, "mse")
    wrong = [params[0], params[1], [params[2][0], [{"w": jnp.ones((4, 5)), "b": jnp.ones(5)}]], params[3]]
    with pytest.raises(ValueError, match=r"Layer 2\.1\.0: expected w of shape \(4, 4\), got \(4, 5\)"):
        fnn.backprop(net, wrong, x, y, "mse")
    with pytest.raises(ValueError, match=r"Layer 2: expected params as a list of 2 inner-layer entries, got 1"):
        net.apply([params[0], params[1], params[2][:1], params[3]], x)
    with pytest.raises(ValueError, match="params have 3 layer"):
        net.apply(params[:3], x)


def test_empty_serial_and_bad_input_shapes():
    with pytest.raises(ValueError, match="at least one layer"):
        fnn.serial(input_shape=(3,))
    for bad in ((), (0,), (-2,), (3.0,), "3", None, (True,), [2, 0]):
        with pytest.raises(ValueError, match="input_shape"):
            fnn.serial(L.Dense(2), input_shape=bad)
    assert fnn.serial(L.Dense(2), input_shape=3).input_shape == (3,)


# --- describe round trip ----------------------------------------------------------------------------------------

def test_describe_round_trips_through_from_description():
    net = fnn.serial(L.Dense(5, "tanh", bias=False), L.Dropout(0.2),
                     L.Residual(L.Dense(5, "relu", init="he_normal"), L.Residual(L.Dense(5), "sigmoid")),
                     "elu", L.Dense(3, "softmax"), input_shape=(4,), dtype=jnp.float32)
    desc = net.describe()
    assert set(desc) == {"input_shape", "layers", "dtype"}
    copy = fnn.network.from_description(json.loads(json.dumps(desc)))
    assert copy.describe() == desc and repr(copy) == repr(net)
    assert [lay.kind for lay in copy.layers] == ["Dense", "Dropout", "Residual", "Activation", "Dense"]
    assert copy.layers[2].children[0].config["init"] == "he_normal" and not copy.layers[0].config["bias"]
    p, q = jax.jit(net.init)(jax.random.key(0)), jax.jit(copy.init)(jax.random.key(0))
    assert_tree_equal(p, q)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    apply = jax.jit(lambda net, p: net.apply(p, x, key=jax.random.key(1)), static_argnums=0)
    np.testing.assert_array_equal(apply(net, p), apply(copy, q))
    mlp = fnn.mlp([4, 3, 2], hidden="tanh", bias=False)
    assert fnn.network.from_description(mlp.describe()).describe() == mlp.describe()


def _without_per_example(spec: L.Spec) -> L.Spec:
    """``spec`` whose bound layer has no per-example form (as a future layer that mixes examples would)."""
    import dataclasses

    return L.Spec(spec.kind, spec.config, lambda shape, where: dataclasses.replace(spec.bind(shape, where),
                                                                                  factors=None))


@pytest.mark.parametrize("nested", [False, True])
def test_per_example_grads_names_a_layer_without_a_per_example_form(nested):
    mixing = _without_per_example(L.Dense(3, activation="tanh"))
    layers = [L.Dense(3), L.Residual(mixing)] if nested else [L.Dense(3), mixing]
    net = fnn.serial(*layers, L.Dense(2), input_shape=(3,))
    params = net.init(jax.random.key(0))
    x, y = jnp.ones((4, 3)), jnp.array([0, 1, 0, 1])
    where = r"layer 1\.0 \(Dense\)" if nested else r"layer 1 \(Dense\)"
    with pytest.raises(ValueError, match=rf"per_example_grads: {where} has no per-example gradients"):
        fnn.per_example_grads(net, params, x, y, SPARSE_CE)
    fnn.backprop(net, params, x, y, SPARSE_CE)  # the batch gradient does not need it
