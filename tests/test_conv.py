"""Tests for fnn/conv.py, fnn/pooling.py and fnn/_windows.py: Conv2D, MaxPool2D, AvgPool2D and Flatten.

* The geometry matrix: every Conv2D kernel (1, 3, 5) × stride (1, 2) × padding ("SAME", "VALID", an int) ×
  input channels (1, 3) on odd image sizes, both pools with every padding and overlapping strides, in stacks
  with Dense, Dropout, Residual and a trailing activation layer: float64 manual == ``jax.grad`` to 1e-10 for
  the params and for the input (through the ``manual_apply`` custom_vjp bridge), jitted; several geometries
  share one network (one compile each), because compiles dominate on CPU.
* The forwards against independent references: ``lax.conv_general_dilated`` with lax's own padding strings,
  ``lax.reduce_window`` for both pools, ``reshape`` for Flatten.
* Finite differences (``fnn.gradcheck``) on a covering subset, float32 through gradcheck's error model, eager on
  a few cases, hypothesis over random shapes.
* Max-pool ties pinned: the whole delta goes to the first maximum in row-major order, as ``jax.grad`` of the
  forward; per-example grads, trace images, fit/ensemble/two devices/checkpoints, loaders, shape errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SPARSE_CE, make_targets
from hypothesis import given, settings
from hypothesis import strategies as st

import fnn
import fnn.cli
from fnn import layers as L

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
ROOT = Path(__file__).resolve().parents[1]


def random_params(net, rng, dtype=jnp.float64):
    def make(shapes):
        if isinstance(shapes, list):
            return [make(s) for s in shapes]
        return {k: jnp.asarray(rng.normal(size=s) * (np.sqrt(2 / (np.prod(s[:-1]) + s[-1])) if k == "w" else 0.3),
                               dtype) for k, s in shapes.items()}

    return make(net.param_shapes())


def problem(net, loss, batch, seed, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    params = random_params(net, rng, dtype)
    x = jnp.asarray(rng.normal(size=(batch, *net.input_shape)), dtype)
    return params, x, make_targets(loss, batch, net.output_shape[-1], rng, dtype)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_tree_rel(got, want, rtol, what):
    for path, (g, w) in zip(jax.tree_util.tree_leaves_with_path(got),
                            zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True),
                            strict=True):
        assert g.shape == w.shape, (what, path[0], g.shape, w.shape)
        assert rel_err(g, w) <= rtol, f"{what}: leaf {jax.tree_util.keystr(path[0])}: {rel_err(g, w):.3g} > {rtol}"


# --- the geometry matrix -------------------------------------------------------------------------------------

def conv_stack(kernels, stride, padding, act="tanh"):
    return [L.Conv2D(3, k, stride=stride if i == 0 else 1, padding=padding, activation=act)
            for i, k in enumerate(kernels)]


#: name -> (layers, per-example input shape). Every (kernel, stride, padding, channels) of the issue appears.
GEOMETRIES = {}
for _pad in ("SAME", "VALID", 1):
    for _stride in (1, 2):
        for _c in (1, 3):
            _kernels = (5, 3, 1) if _pad != 1 else (5, 3)  # an int padding must be smaller than the kernel
            _size = (13, 11) if _pad == "VALID" else (9, 7)
            GEOMETRIES[f"conv-{_pad}-s{_stride}-c{_c}"] = (
                [*conv_stack(_kernels, _stride, _pad), L.Flatten(), L.Dense(4)], (*_size, _c))
GEOMETRIES.update({
    "pools": ([L.Conv2D(4, 3, activation="relu"), L.MaxPool2D(2), L.Conv2D(3, (3, 2), stride=(2, 1)),
               L.AvgPool2D(2, padding="SAME"), L.Flatten(), L.Dense(4)], (11, 9, 3)),
    "overlapping-pools": ([L.Conv2D(3, 3, activation="elu"), L.MaxPool2D(3, stride=2, padding="SAME"),
                           L.AvgPool2D((2, 3), stride=1, padding=1), L.Flatten(), L.Dense(4)], (10, 9, 2)),
    "conv-tiling": ([L.Conv2D(3, 2, stride=2, padding="VALID", activation="tanh"), L.Conv2D(2, (2, 3), stride=(2, 3)),
                     L.Flatten(), L.Dense(4)], (8, 12, 2)),  # kernels that tile the image: the reshape path
    "tiling-pools": ([L.Conv2D(3, 3, activation="softplus"), L.MaxPool2D(2), L.AvgPool2D((2, 3)), L.Flatten(),
                      L.Dense(4)], (8, 12, 2)),  # windows that tile the image: the reshape path
    "odd-valid-pools": ([L.MaxPool2D(2, stride=1), L.Conv2D(2, 3, padding="VALID", bias=False),
                         L.MaxPool2D(3, padding="VALID"), L.Flatten(), L.Dense(4)], (9, 9, 1)),
    "with-dense-dropout-residual": ([L.Conv2D(3, 3, activation="relu"), L.Dropout(0.25),
                                     L.Residual(L.Conv2D(3, 3, activation="tanh"), L.Conv2D(3, 1)),
                                     L.MaxPool2D(2), L.Flatten(), L.Dense(5, "gelu"), L.Dropout(0.2), L.Dense(4)],
                                    (7, 7, 2)),
})
LOSS_OF = {name: SPARSE_CE for name in GEOMETRIES}
LOSS_OF.update({"pools": "mse", "overlapping-pools": "categorical_cross_entropy",
                "odd-valid-pools": "binary_cross_entropy",
                "with-dense-dropout-residual": "sigmoid_binary_cross_entropy"})
KEY = jax.random.key(3)


def build(name, dtype=jnp.float64):
    layers, shape = GEOMETRIES[name]
    loss = LOSS_OF[name]
    out = fnn.losses.natural_output(loss)
    return fnn.serial(*layers, *([out] if out else []), input_shape=shape, dtype=dtype), loss


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_manual_equals_autodiff_for_params_and_input(float64, name):
    net, loss = build(name)
    params, x, y = problem(net, loss, 3, seed=len(name))
    bridge = fnn.manual_apply(net)

    def both(p, x, y, k):
        manual = fnn.backprop(net, p, x, y, loss, key=k)
        auto = fnn.autodiff(net, p, x, y, loss, key=k)
        dx_manual = jax.grad(lambda x: jnp.sum(jnp.sin(bridge(p, x, k))))(x)
        dx_auto = jax.grad(lambda x: jnp.sum(jnp.sin(net.apply(p, x, key=k))))(x)
        return manual, auto, dx_manual, dx_auto

    (mv, m), (av, a), dxm, dxa = jax.jit(both).lower(params, x, y, KEY).compile(FAST_COMPILE)(params, x, y, KEY)
    np.testing.assert_allclose(mv, av, rtol=1e-12)
    assert_tree_rel(m, a, 1e-10, name)
    assert rel_err(dxm, dxa) <= 1e-10


# --- forwards against independent references ---------------------------------------------------------------

@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 1, "SAME"), (3, 2, "SAME"), (4, 2, "SAME"),
                                                           (5, 2, "VALID"), ((2, 3), (2, 1), "SAME"), (3, 2, 1)])
def test_conv_forward_equals_lax_conv(float64, kernel, stride, padding):
    net = fnn.serial(L.Conv2D(4, kernel, stride=stride, padding=padding), input_shape=(9, 8, 3))
    params, x, _ = problem(net, "mse", 2, seed=1)
    lax_pad = padding if isinstance(padding, str) else [(padding, padding)] * 2
    s = (stride, stride) if isinstance(stride, int) else stride
    want = jax.lax.conv_general_dilated(x, params[0]["w"], s, lax_pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(net.apply(params, x), want + params[0]["b"][None, None, None, :], rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize(("window", "stride", "padding"), [(2, None, "VALID"), ((3, 2), None, "VALID"),
                                                           (3, 2, "SAME"), (3, 1, "VALID"),
                                                           ((2, 3), (1, 2), "SAME"), (3, 2, 1)])
def test_pool_forwards_equal_reduce_window(float64, window, stride, padding):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 8, 3)))
    w = (window, window) if isinstance(window, int) else window
    s = w if stride is None else (stride, stride) if isinstance(stride, int) else stride
    pad = padding if isinstance(padding, str) else [(padding, padding)] * 2
    pad = jax.lax.padtype_to_pads((9, 8), w, s, pad) if isinstance(pad, str) else pad
    pads = [(0, 0), *pad, (0, 0)]
    dims, strides = (1, *w, 1), (1, *s, 1)
    for spec, reducer, init in [(L.MaxPool2D, jax.lax.max, -jnp.inf), (L.AvgPool2D, jax.lax.add, 0.0)]:
        net = fnn.serial(spec(window, stride, padding), input_shape=(9, 8, 3))
        want = jax.lax.reduce_window(x, init, reducer, dims, strides, pads)
        if spec is L.AvgPool2D:
            want = want / (w[0] * w[1])  # count_include_pad: the full window size
        got = net.apply([{}], x)
        assert got.shape == want.shape == (2, *net.output_shape)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_flatten_is_nhwc_row_major(float64):
    x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float64).reshape(2, 3, 4, 5)
    net = fnn.serial(L.Flatten(), input_shape=(3, 4, 5))
    assert net.output_shape == (60,)
    np.testing.assert_array_equal(net.apply([{}], x), x.reshape(2, -1))
    assert float(net.apply([{}], x)[0, (1 * 4 + 2) * 5 + 3]) == float(x[0, 1, 2, 3])


def test_same_padding_puts_the_odd_row_at_the_bottom_right():
    from fnn import _windows
    geo = _windows.geometry("Conv2D", "0", (8, 7), (4, 2), (1, 2), "SAME")
    assert geo.pads == ((1, 2), (0, 1)) and geo.out == (8, 4)


# --- max-pool ties ------------------------------------------------------------------------------------------

def test_max_pool_tie_goes_whole_to_the_first_maximum_in_row_major_order(float64):
    x = jnp.array([[1.0, 5.0, 5.0, 0.0],
                   [5.0, 5.0, 2.0, 2.0],
                   [3.0, 3.0, 7.0, 7.0],
                   [3.0, 3.0, 7.0, 7.0]]).reshape(1, 4, 4, 1)
    net = fnn.serial(L.MaxPool2D(2), L.Flatten(), input_shape=(4, 4, 1))
    g = jnp.array([[10.0, 20.0, 30.0, 40.0]])
    manual = jax.grad(lambda x: jnp.sum(fnn.manual_apply(net)([{}, {}], x) * g))(x)[0, :, :, 0]
    auto = jax.grad(lambda x: jnp.sum(net.apply([{}, {}], x) * g))(x)[0, :, :, 0]
    want = np.array([[0, 10, 20, 0],
                     [0, 0, 0, 0],
                     [30, 0, 40, 0],
                     [0, 0, 0, 0]], np.float64)
    np.testing.assert_array_equal(manual, want)
    np.testing.assert_array_equal(auto, want)
    # Overlapping windows (stride 1): an input that wins several windows collects all their deltas.
    net1 = fnn.serial(L.MaxPool2D(2, stride=1), input_shape=(4, 4, 1))
    ones = jnp.ones((1, 3, 3, 1))
    m1 = jax.grad(lambda x: jnp.sum(fnn.manual_apply(net1)([{}], x) * ones))(x)
    a1 = jax.grad(lambda x: jnp.sum(net1.apply([{}], x) * ones))(x)
    np.testing.assert_array_equal(m1, a1)
    assert float(jnp.sum(m1)) == 9 and float(m1[0, 2, 2, 0]) == 4  # the 7 at (2, 2) is first in four windows


# --- finite differences, float32, eager, hypothesis --------------------------------------------------------

@pytest.mark.parametrize("name", ["conv-1-s1-c1", "pools", "overlapping-pools", "with-dense-dropout-residual"])
def test_finite_differences_on_a_covering_subset(float64, name):
    net, loss = build(name)
    params, x, y = problem(net, loss, 3, seed=2)
    report = fnn.gradcheck(net, params, x, y, loss, num_checks=10, dropout_key=KEY, taylor=False)
    assert report.ok, str(report)
    assert sum(r.checked for r in report.rows if r.pair == "manual~fd") == 10


@pytest.mark.parametrize("name", ["pools"])  # Conv2D with strides (1, 1) and (2, 1), max- and average pooling
def test_float32_gradients_within_the_error_model(name):
    net, loss = build(name, jnp.float32)
    params, x, y = problem(net, loss, 4, seed=4, dtype=jnp.float32)
    report = fnn.gradcheck(net, params, x, y, loss, num_checks=6, dropout_key=KEY, taylor=False)
    assert report.ok, str(report)
    assert {"manual~float64", "autodiff~float64"} <= {r.pair for r in report.rows}


@pytest.mark.parametrize("name", ["pools"])  # eager dispatch compiles every op on its own: one covering case
def test_eager_equals_jit(float64, name):
    net, loss = build(name)
    params, x, y = problem(net, loss, 2, seed=5)
    eager = fnn.backprop(net, params, x, y, loss)
    jitted = jax.jit(lambda p: fnn.backprop(net, p, x, y, loss))(params)
    assert_tree_rel(eager[1], jitted[1], 1e-12, "eager vs jit")
    assert_tree_rel(eager[1], fnn.autodiff(net, params, x, y, loss)[1], 1e-10, "eager manual vs autodiff")


@st.composite
def conv_nets(draw):
    h, w, c = draw(st.integers(3, 9)), draw(st.integers(3, 9)), draw(st.integers(1, 3))
    specs, shape = [], (h, w)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "conv", "max", "avg"]))
        k = (draw(st.integers(1, min(3, shape[0]))), draw(st.integers(1, min(3, shape[1]))))
        s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        pad = draw(st.sampled_from(["SAME", "VALID"]))
        if kind == "conv":
            spec = L.Conv2D(draw(st.integers(1, 3)), k, stride=s, padding=pad,
                            activation=draw(st.sampled_from(["tanh", "identity", "softplus", "relu"])),
                            bias=draw(st.booleans()))
        else:
            spec = (L.MaxPool2D if kind == "max" else L.AvgPool2D)(k, s, pad)
        specs.append(spec)
        probe = fnn.serial(*specs, input_shape=(h, w, c))
        shape = probe.output_shape[:2]
    loss = draw(st.sampled_from(["mse", SPARSE_CE, "sigmoid_binary_cross_entropy"]))
    return specs, (h, w, c), loss, draw(st.integers(1, 3)), draw(st.integers(0, 2**16))


@settings(max_examples=12, derandomize=True, deadline=None)
@given(conv_nets())
def test_random_conv_nets_manual_equals_autodiff(case):
    specs, shape, loss, batch, seed = case
    with jax.enable_x64(True):
        out = fnn.losses.natural_output(loss)
        net = fnn.serial(*specs, L.Flatten(), L.Dense(3), *([out] if out else []), input_shape=shape,
                         dtype=jnp.float64)
        params, x, y = problem(net, loss, batch, seed)
        both = jax.jit(lambda p, x, y: (fnn.backprop(net, p, x, y, loss), fnn.autodiff(net, p, x, y, loss)))
        (mv, m), (av, a) = both.lower(params, x, y).compile(FAST_COMPILE)(params, x, y)
        np.testing.assert_allclose(mv, av, rtol=1e-12)
        assert_tree_rel(m, a, 1e-10, repr(net))


# --- traces, per-example grads, init ------------------------------------------------------------------------

def test_trace_holds_images_and_per_example_grads_equal_vmap_of_grad(float64):
    net, loss = build("pools")
    params, x, y = problem(net, loss, 4, seed=6)
    _, grads, trace = fnn.backprop(net, params, x, y, loss, return_trace=True)
    conv = trace.layers[0]
    assert conv.input.shape == (4, 11, 9, 3) and conv.output.shape == (4, 11, 9, 4)
    assert conv.values["z"].shape == conv.values["delta"].shape == conv.grad.shape == (4, 11, 9, 4)
    assert trace.layers[1].output.shape == (4, 5, 4, 4)  # the max-pool, its delta image beside it
    assert trace.layers[1].grad.shape == (4, 5, 4, 4)
    def one(xi, yi):
        return fnn.autodiff(net, params, xi[None], yi[None], loss)[1]

    per, want = jax.jit(lambda x, y: (fnn.per_example_grads(net, params, x, y, loss), jax.vmap(one)(x, y)))(x, y)
    assert_tree_rel(per, want, 1e-10, "per-example")
    norms = fnn.stats.example_norms(per)  # the research statistics take conv layers as they are
    np.testing.assert_allclose(norms[:, 0], np.sqrt(np.sum(np.asarray(per[0]["w"]) ** 2, axis=(1, 2, 3, 4))
                                                    + np.sum(np.asarray(per[0]["b"]) ** 2, axis=1)), rtol=1e-12)
    spread = fnn.stats.delta_spread(trace)  # a delta image is one row of H·W·C entries per example
    d0 = np.asarray(conv.values["delta"]).reshape(4, -1) * 4
    np.testing.assert_allclose(spread["row_norm_median"][0], np.median(np.linalg.norm(d0, axis=1)), rtol=1e-12)
    assert_tree_rel(jax.tree_util.tree_map(lambda t: t.mean(0), per), grads, 1e-12, "mean of per-example")


def test_conv_initializer_fans_and_param_shapes():
    net = fnn.serial(L.Conv2D(8, 5, init="he_uniform"), input_shape=(12, 12, 3))
    w = net.init(jax.random.key(0))[0]["w"]
    assert w.shape == (5, 5, 3, 8) and net.init(jax.random.key(0))[0]["b"].shape == (8,)
    bound = np.sqrt(6 / (5 * 5 * 3))  # fan_in = kh·kw·c_in
    assert float(jnp.max(jnp.abs(w))) <= bound and float(jnp.max(jnp.abs(w))) > 0.9 * bound
    assert fnn.initializers.fans((5, 5, 3, 8)) == (75, 200)


# --- training: fit, ensemble, two devices, checkpoints ------------------------------------------------------

LOGITS_CE = "sparse_softmax_cross_entropy"  # the nets below end in a linear Dense layer: logits


def small_cnn(dropout=0.0):
    return fnn.serial(L.Conv2D(4, 3, activation="relu"), L.MaxPool2D(2), *([L.Dropout(dropout)] if dropout else []),
                      L.Flatten(), L.Dense(10), input_shape=(8, 8, 1))


@pytest.fixture(scope="module")
def digit_images():
    (x, y), (xt, yt) = fnn.load_dataset("digits", flatten=False)
    return (x[:320], y[:320]), (xt[:160], yt[:160])


def test_fit_learns_digit_images_with_manual_equal_to_autodiff(digit_images):
    net = small_cnn()
    params = net.init(jax.random.key(0))
    kw = dict(loss=LOGITS_CE, epochs=4, batch_size=32, optimizer="adam", learning_rate=0.01, key=jax.random.key(1),
              progress=False)
    manual, h = fnn.fit(net, params, *digit_images, **kw)
    auto, _ = fnn.fit(net, params, *digit_images, grads="autodiff", **kw)
    assert h["test_accuracy"][-1] > 0.8, h["test_accuracy"]
    assert_tree_rel(manual, auto, 2e-3, "fit manual vs autodiff")


def test_fit_ensemble_of_cnns_equals_members_fitted_alone(digit_images):
    net = small_cnn()
    keys = jax.random.split(jax.random.key(2), 2)
    stacked = jax.vmap(net.init)(keys)
    kw = dict(loss=LOGITS_CE, epochs=2, batch_size=40, learning_rate=0.05, progress=False)
    fit_keys = jax.random.split(jax.random.key(4), 2)
    ens, _ = fnn.fit_ensemble(net, stacked, digit_images[0], keys=fit_keys, **kw)
    alone, _ = fnn.fit(net, jax.tree_util.tree_map(lambda t: t[1], stacked), digit_images[0], key=fit_keys[1], **kw)
    assert_tree_rel(jax.tree_util.tree_map(lambda t: t[1], ens), alone, 1e-5, "ensemble member 1")


def test_checkpoint_round_trip_and_resume_of_a_cnn(tmp_path, digit_images):
    net = small_cnn(dropout=0.2)
    params = net.init(jax.random.key(0))
    kw = dict(loss=LOGITS_CE, batch_size=32, learning_rate=0.05, key=jax.random.key(5), progress=False,
              checkpoint_dir=tmp_path)
    straight, _ = fnn.fit(net, params, digit_images[0], epochs=2, **{**kw, "checkpoint_dir": None})
    fnn.fit(net, params, digit_images[0], epochs=1, **kw)
    resumed, h = fnn.fit(net, params, digit_images[0], epochs=2, resume=True, **kw)
    assert h["epoch"] == [1, 2]
    assert_tree_rel(resumed, straight, 0, "resumed vs straight")
    loaded = fnn.checkpoint.load(tmp_path / "checkpoint.safetensors")
    assert loaded.net.describe() == net.describe()  # rebuilt from the description the file holds
    assert_tree_rel(loaded.params, resumed, 0, "loaded vs resumed")


def test_two_forced_host_devices_equal_one():
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, fnn
        from fnn import layers as L
        assert jax.device_count() == 2
        net = fnn.serial(L.Conv2D(3, 3, stride=2, activation="tanh"), L.AvgPool2D(2, padding="SAME"),
                         L.Dropout(0.3), L.Flatten(), L.Dense(4), input_shape=(9, 9, 2))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(48, 9, 9, 2)).astype(np.float32); y = rng.integers(0, 4, 48)
        p = net.init(jax.random.key(0))
        kw = dict(loss="sparse_softmax_cross_entropy", epochs=2, batch_size=16, learning_rate=0.1,
                  key=jax.random.key(1), progress=False)
        one, _ = fnn.fit(net, p, (x, y), **kw)
        two, _ = fnn.fit(net, p, (x, y), devices=2, **kw)
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(one),
                                                                   jax.tree_util.tree_leaves(two)))
        print(err)
        assert err < 1e-5, err
    """)
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]


# --- loaders -----------------------------------------------------------------------------------------------

def test_loaders_give_nhwc_images_with_flatten_false():
    (x, y), (xt, _) = fnn.load_dataset("digits", flatten=False)
    (xf, yf), _ = fnn.load_dataset("digits")
    assert x.shape == (1438, 8, 8, 1) and xt.shape == (359, 8, 8, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x.reshape(len(x), -1), xf)
    np.testing.assert_array_equal(y, yf)
    assert fnn.data.digits(flatten=False)[0].shape == (1797, 8, 8, 1)
    with pytest.raises(TypeError, match="flatten must be True"):
        fnn.data.digits(flatten="no")
    with pytest.raises(ValueError, match="iris is a table"):
        fnn.load_dataset("iris", flatten=False)


@pytest.mark.skipif(not Path(fnn.data.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_as_images():
    (x, y), (xt, yt) = fnn.data.fashion_mnist(flatten=False)
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0


# --- errors name the layer and both shapes ---------------------------------------------------------------------

def test_shape_errors_name_the_layer_and_both_shapes():
    with pytest.raises(ValueError, match=r"Layer 2 \(MaxPool2D\): the window \(3, 3\) is larger than the image "
                                         r"\(2, 2\)"):
        fnn.serial(L.Conv2D(2, 3), L.MaxPool2D(4), L.MaxPool2D(3), input_shape=(9, 9, 1))
    with pytest.raises(ValueError, match=r"Layer 0 \(Conv2D\): per-example shape \(1, 28, 28\) looks like "
                                         r"channels-first"):
        fnn.serial(L.Conv2D(2, 3), input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"Layer 0 \(Conv2D\): expects images .* got per-example shape \(784,\)"):
        fnn.serial(L.Conv2D(2, 3), input_shape=(784,))
    with pytest.raises(ValueError, match=r"Layer 1 \(Dense\): expects a flat input .* \(9, 9, 2\); put a Flatten"):
        fnn.serial(L.Conv2D(2, 3), L.Dense(3), input_shape=(9, 9, 1))
    net = fnn.serial(L.Conv2D(2, 3), L.Flatten(), L.Dense(3), input_shape=(9, 9, 1))
    other = fnn.serial(L.Conv2D(2, 3), L.Flatten(), L.Dense(3), input_shape=(9, 9, 3))
    with pytest.raises(ValueError, match=r"Layer 0: expected w of shape \(3, 3, 1, 2\), got \(3, 3, 3, 2\)"):
        net.apply(other.init(jax.random.key(0)), np.zeros((1, 9, 9, 1)))  # a kernel for 3 channels, not 1
    params = net.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected examples of shape \(9, 9, 1\) \(NHWC.*got input shape "
                                         r"\(2, 1, 9, 9\)"):
        net.apply(params, np.zeros((2, 1, 9, 9)))
    with pytest.raises(ValueError, match="Conv2D: kernel_size must be a positive int"):
        L.Conv2D(2, 0)
    with pytest.raises(ValueError, match="padding must be"):
        L.MaxPool2D(2, padding="FULL")
    with pytest.raises(ValueError, match=r"padding 3 must be smaller than the window \(3, 3\)"):
        fnn.serial(L.Conv2D(2, 3, padding=3), input_shape=(9, 9, 1))


def test_describe_round_trip_and_repr():
    net, _ = build("with-dense-dropout-residual")
    desc = net.describe()
    again = fnn.network.from_description(json.loads(json.dumps(desc)))
    assert again.describe() == desc
    assert desc["layers"][0] == {"kind": "Conv2D", "filters": 3, "kernel_size": [3, 3], "stride": [1, 1],
                                 "padding": "SAME", "activation": "relu", "bias": True, "init": "glorot_uniform"}
    assert "Conv2D(filters=3" in repr(net)


# --- the CLI -------------------------------------------------------------------------------------------------

def test_cli_trains_a_cnn_on_digit_images_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert fnn.cli.main(["train", "--model", "cnn", "--epochs", "2", "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "8x8x1" in text and "cnn" in text
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "cnn" and config["network"]["layers"][0]["kind"] == "Conv2D"
    accuracy = float(text.strip().splitlines()[-1].split()[-1])
    assert accuracy > 0.8, text
    assert fnn.cli.main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0
    assert "epoch 3" in capsys.readouterr().out
    assert fnn.cli.main(["train", "--model", "cnn", "--dataset", "iris", "--out", str(tmp_path / "x")]) == 2
    assert "--model cnn trains on images" in capsys.readouterr().err
