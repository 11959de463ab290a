"""Tests for fnn/network.py: params layout, determinism, purity, the forward pass against a NumPy reference,
jit/vmap/grad, describe() round trip, and every validation error (with its message)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, random_params

import fnn

#: NumPy float64 versions of a few activations: the forward pass below is written without fnn or jax.
NP_ACT = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "softmax": lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1)[:, None],
}


def numpy_forward(params, acts, x):
    a = np.asarray(x, np.float64)
    for layer, act in zip(params, acts, strict=True):
        z = a @ np.asarray(layer["w"], np.float64)
        if "b" in layer:
            z = z + np.asarray(layer["b"], np.float64)
        a = NP_ACT[act](z)
    return a


def test_params_layout_and_shapes():
    net = fnn.mlp([4, 6, 5, 3], hidden="tanh", output="softmax")
    params = net.init(jax.random.key(0))
    assert isinstance(params, list) and len(params) == 3 == net.num_layers
    for layer, (n_in, n_out) in zip(params, [(4, 6), (6, 5), (5, 3)], strict=True):
        assert sorted(layer) == ["b", "w"]
        assert layer["w"].shape == (n_in, n_out) and layer["b"].shape == (n_out,)
        assert layer["w"].dtype == jnp.float32
        np.testing.assert_array_equal(layer["b"], 0)  # biases start at zero
    assert net.param_shapes() == [{"w": (4, 6), "b": (6,)}, {"w": (6, 5), "b": (5,)}, {"w": (5, 3), "b": (3,)}]
    assert [a.name for a in net.activations] == ["tanh", "tanh", "softmax"] and net.output.name == "softmax"


def test_no_bias():
    net = fnn.mlp([4, 10, 3, 1], activations=["sigmoid"] * 3, bias=False, init="uniform")
    params = net.init(jax.random.key(0))
    assert all(sorted(layer) == ["w"] for layer in params)
    for layer in params:
        assert np.all(np.abs(np.asarray(layer["w"])) < 1)
    x = np.random.default_rng(0).normal(size=(5, 4))
    np.testing.assert_allclose(net.apply(params, x), numpy_forward(params, ["sigmoid"] * 3, x), rtol=1e-5)


def test_determinism():
    net = fnn.mlp([3, 5, 2])
    a, b = net.init(jax.random.key(7)), net.init(jax.random.key(7))
    c = net.init(jax.random.key(8))
    for la, lb, lc in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(la["w"], lb["w"])
        assert not np.array_equal(np.asarray(la["w"]), np.asarray(lc["w"]))
    # Each layer gets its own key: two equal-shaped layers are not copies of one another.
    sq = fnn.mlp([4, 4, 4]).init(jax.random.key(0))
    assert not np.array_equal(np.asarray(sq[0]["w"]), np.asarray(sq[1]["w"]))


def test_purity():
    net = fnn.mlp([3, 5, 2], hidden="tanh")
    params = random_params(net, np.random.default_rng(0))
    params = [{k: v + 0.1 for k, v in layer.items()} for layer in params]  # nonzero biases
    copy = jax.tree_util.tree_map(np.array, params)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    out1, out2 = net.apply(params, x), net.apply(params, x)
    np.testing.assert_array_equal(out1, out2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, copy)  # params not mutated


@pytest.mark.parametrize("acts", [["tanh", "identity"], ["relu", "softmax"], ["sigmoid", "sigmoid"]])
@TRANSFORMS
def test_apply_matches_numpy_forward(acts, transform, x64):
    net = fnn.mlp([3, 5, 4], activations=acts)
    params = random_params(net, np.random.default_rng(0))
    params = [{"w": l["w"], "b": jnp.linspace(-1, 1, l["b"].shape[0])} for l in params]
    x = np.random.default_rng(1).normal(size=(6, 3))
    got = transform(net.apply)(params, x)
    assert got.shape == (6, 4) and got.dtype == jnp.float64
    np.testing.assert_allclose(got, numpy_forward(params, acts, x), rtol=1e-13)


def test_one_d_input_equals_batch_of_one():
    net = fnn.mlp([3, 5, 2], hidden="tanh", output="softmax")
    params = random_params(net, np.random.default_rng(0))
    x = jnp.array([0.5, -1.0, 2.0])
    single = net.apply(params, x)
    assert single.shape == (2,)
    np.testing.assert_array_equal(single, net.apply(params, x[None])[0])


def test_jit_equals_eager():
    net = fnn.mlp([3, 5, 2], hidden="gelu")
    params = net.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 3))
    np.testing.assert_allclose(jax.jit(net.apply)(params, x), net.apply(params, x), rtol=1e-6, atol=1e-7)
    # init under jit too
    jitted, eager = jax.jit(net.init)(jax.random.key(3)), net.init(jax.random.key(3))
    jax.tree_util.tree_map(np.testing.assert_array_equal, jitted, eager)


def test_integer_input_is_cast_to_params_dtype(x64):
    net = fnn.mlp([3, 2], dtype=jnp.float64)
    params = random_params(net, np.random.default_rng(0))
    out = net.apply(params, np.array([[1, 2, 3]]))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, numpy_forward(params, ["identity"], [[1.0, 2.0, 3.0]]), rtol=1e-14)


def test_vmap_ensembles_equal_loop():
    net = fnn.mlp([3, 6, 2], hidden="tanh")
    keys = jax.random.split(jax.random.key(0), 3)
    stacked = jax.vmap(net.init)(keys)
    assert stacked[0]["w"].shape == (3, 3, 6) and stacked[1]["b"].shape == (3, 2)
    x = jnp.asarray(np.random.default_rng(9).normal(size=(4, 3)), jnp.float32)
    outs = jax.vmap(net.apply, in_axes=(0, None))(stacked, x)
    assert outs.shape == (3, 4, 2)
    for i, key in enumerate(keys):
        member = net.init(key)
        chex.assert_trees_all_equal(member, jax.tree_util.tree_map(lambda t, i=i: t[i], stacked))
        np.testing.assert_allclose(outs[i], net.apply(member, x), rtol=1e-6, atol=1e-7)


def test_works_under_grad(x64):
    net = fnn.mlp([3, 4, 1], hidden="tanh")
    params = random_params(net, np.random.default_rng(0))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)))
    f = lambda p, x: jnp.sum(net.apply(p, x) ** 2)
    gp, gx = jax.grad(f, argnums=(0, 1))(params, x)
    assert jax.tree_util.tree_structure(gp) == jax.tree_util.tree_structure(params)
    assert gx.shape == x.shape
    # Check one coordinate of each by central differences.
    h = 1e-6
    bumped = lambda d: [{**params[0], "w": params[0]["w"].at[1, 2].add(d)}, params[1]]
    fd = (f(bumped(h), x) - f(bumped(-h), x)) / (2 * h)
    np.testing.assert_allclose(gp[0]["w"][1, 2], fd, rtol=1e-7)
    fdx = (f(params, x.at[0, 1].add(h)) - f(params, x.at[0, 1].add(-h))) / (2 * h)
    np.testing.assert_allclose(gx[0, 1], fdx, rtol=1e-7)


def test_describe_round_trip():
    net = fnn.mlp([4, 10, 3, 1], activations=["sigmoid", "silu", "sigmoid"], bias=False, init="uniform",
                  dtype=jnp.bfloat16)
    d = net.describe()
    assert d == {"sizes": [4, 10, 3, 1], "activations": ["sigmoid", "swish", "sigmoid"], "bias": False,
                 "init": "uniform", "dtype": "bfloat16"}
    again = fnn.mlp(**d)
    assert again.describe() == d
    assert (again.sizes, again.activations, again.bias, again.initializer, again.dtype) == (
        net.sizes, net.activations, net.bias, net.initializer, net.dtype)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.init(jax.random.key(0)), net.init(jax.random.key(0)))
    assert "sizes=[4, 10, 3, 1]" in repr(net) and "bfloat16" in repr(net)


def test_default_dtype_follows_x64(x64):
    assert fnn.mlp([2, 1]).dtype == jnp.float64
    assert fnn.mlp([2, 1]).init(jax.random.key(0))[0]["w"].dtype == jnp.float64


def test_records_accepted():
    net = fnn.mlp([2, 3, 1], hidden=fnn.activations.tanh, init=fnn.initializers.get("he_normal"))
    assert net.activations[0] is fnn.activations.tanh and net.initializer.name == "he_normal"


# --- errors: the message names what was expected and what was given -------------------------------------


@pytest.mark.parametrize("sizes, expected", [([], "got [] (0 entries)"), ([3], "got [3] (1 entry)")])
def test_error_too_few_sizes(sizes, expected):
    with pytest.raises(ValueError) as err:
        fnn.mlp(sizes)
    assert "at least an input and an output width" in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize("sizes, index, exc, shown", [
    ([3, 0, 2], 1, ValueError, "got 0"),
    ([3, -4], 1, ValueError, "got -4"),
    ([3, 2.0], 1, TypeError, "float 2.0"),
    ([True, 2], 0, TypeError, "bool True"),
    ([3, "4"], 1, TypeError, "str '4'"),
])
def test_error_bad_size(sizes, index, exc, shown):
    with pytest.raises(exc) as err:
        fnn.mlp(sizes)
    msg = str(err.value)
    assert f"sizes[{index}] must be a positive int" in msg and shown in msg


@pytest.mark.parametrize("sizes", ["34", 3, None])
def test_error_sizes_not_a_sequence(sizes):
    with pytest.raises(TypeError, match="sequence of layer widths"):
        fnn.mlp(sizes)


def test_numpy_int_sizes_accepted():
    assert fnn.mlp([np.int64(3), np.int32(2)]).sizes == (3, 2)


def test_error_wrong_number_of_activations():
    with pytest.raises(ValueError) as err:
        fnn.mlp([3, 4, 2], activations=["relu"])
    msg = str(err.value)
    assert "needs 2 entries" in msg and "got 1" in msg and "[3, 4, 2]" in msg
    with pytest.raises(TypeError, match=r"one activation per layer \(2\), got 'relu'"):
        fnn.mlp([3, 4, 2], activations="relu")


def test_error_unknown_names():
    with pytest.raises(ValueError, match="Unknown activation 'relux'. Did you mean 'relu'"):
        fnn.mlp([3, 4, 2], hidden="relux")
    with pytest.raises(ValueError, match="Unknown activation 'sofmax'. Did you mean 'softmax'"):
        fnn.mlp([3, 4, 2], output="sofmax")
    with pytest.raises(ValueError, match="Unknown initializer 'he_norml'. Did you mean 'he_normal'"):
        fnn.mlp([3, 4, 2], init="he_norml")


@pytest.mark.parametrize("dtype", [jnp.int32, "int8", bool])
def test_error_non_float_dtype(dtype):
    with pytest.raises(TypeError) as err:
        fnn.mlp([3, 2], dtype=dtype)
    assert "floating dtype" in str(err.value) and str(jnp.dtype(dtype)) in str(err.value)


def test_error_bias_not_bool():
    with pytest.raises(TypeError, match="bias must be True or False, got 1"):
        fnn.mlp([3, 2], bias=1)


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_error_wrong_feature_count(transform):
    net = fnn.mlp([3, 4, 2])
    params = random_params(net, np.random.default_rng(0))
    with pytest.raises(ValueError) as err:
        transform(net.apply)(params, jnp.ones((5, 4)))
    msg = str(err.value)
    assert "expected 3 input features, got 4" in msg and "(5, 4)" in msg
    with pytest.raises(ValueError, match="expected 3 input features, got 2"):
        transform(net.apply)(params, jnp.ones(2))


@pytest.mark.parametrize("shape", [(2, 5, 3), ()])
def test_error_bad_input_rank(shape):
    net = fnn.mlp([3, 4, 2])
    with pytest.raises(ValueError) as err:
        net.apply(random_params(net, np.random.default_rng(0)), jnp.ones(shape))
    msg = str(err.value)
    assert "(3,) or (batch, 3)" in msg and f"got shape {shape}" in msg and f"rank {len(shape)}" in msg


def test_error_params_from_another_network():
    net = fnn.mlp([3, 4, 2])
    x = jnp.ones((5, 3))
    with pytest.raises(ValueError) as err:  # differs in the last layer
        net.apply(random_params(fnn.mlp([3, 4, 5]), np.random.default_rng(0)), x)
    assert "Layer 1: expected w of shape (4, 2), got (4, 5)" in str(err.value)
    with pytest.raises(ValueError, match=r"Layer 0: expected w of shape \(3, 4\), got \(3, 6\)"):
        net.apply(random_params(fnn.mlp([3, 6, 2]), np.random.default_rng(0)), x)
    with pytest.raises(ValueError, match=r"params have 3 layer\(s\) but the network \[3, 4, 2\] has 2"):
        net.apply(random_params(fnn.mlp([3, 4, 4, 2]), np.random.default_rng(0)), x)
    with pytest.raises(ValueError, match=r"Layer 0: expected params with keys \['b', 'w'\], got keys \['w'\]"):
        net.apply(random_params(fnn.mlp([3, 4, 2], bias=False), np.random.default_rng(0)), x)
    with pytest.raises(TypeError, match="params must be a list of 2 layer dicts \\(one entry per layer\\), got dict"):
        net.apply({"w": jnp.ones((3, 2))}, x)
    with pytest.raises(TypeError, match="Layer 1: params must be a dict"):
        net.apply([random_params(net, np.random.default_rng(0))[0], jnp.ones((4, 2))], x)
    params = random_params(net, np.random.default_rng(0))
    bad_bias = [params[0], {"w": params[1]["w"], "b": jnp.zeros((3,))}]
    with pytest.raises(ValueError, match=r"Layer 1: expected b of shape \(2,\), got \(3,\)"):
        net.check_params(bad_bias)


B_NONE_CALLS = {
    "check_params": lambda net, p, x, y, loss: net.check_params(p),
    "apply": lambda net, p, x, y, loss: net.apply(p, x),
    "backprop": fnn.backprop,
    "autodiff": fnn.autodiff,
    "per_example_grads": fnn.per_example_grads,
}


@pytest.mark.parametrize("call", list(B_NONE_CALLS))
@pytest.mark.parametrize("bias", [False, True])
def test_b_none_is_rejected_everywhere(call, bias):
    """``"b": None`` used to pass check_params and apply and crash later in backprop and per_example_grads;
    the one rule now: a layer without bias has no "b" key (checkpoint.save: tests/test_checkpoint.py)."""
    net = fnn.mlp([3, 2], output="softmax", bias=bias)
    x, y, loss = jnp.ones((2, 3)), jnp.array([0, 1]), "sparse_categorical_cross_entropy"
    with pytest.raises(ValueError, match=r'Layer 0: params have "b": None; .*omit it.*bias=False'):
        B_NONE_CALLS[call](net, [{"w": jnp.ones((3, 2)), "b": None}], x, y, loss)
    if not bias:  # omitting the key is the way
        B_NONE_CALLS[call](net, [{"w": jnp.ones((3, 2))}], x, y, loss)


# --- inputs and params that must be refused, not mangled (issue 17, section 4) ------------------------------

def _identity_net():
    net = fnn.mlp([1, 1])  # z = x·1 + 0: apply returns the input as the network sees it
    return net, [{"w": jnp.ones((1, 1)), "b": jnp.zeros(1)}]


def test_int64_input_is_cast_at_full_width_not_wrapped():
    """JAX without x64 turns int64 into int32 on jnp.asarray (2**31 + 1 -> -2**31 + 1); integers are cast to the
    params' dtype on the host first, so the network sees the value itself (rounded to float32)."""
    net, params = _identity_net()
    big = np.array([[2**31 + 1], [2**40], [-(2**35)]], np.int64)
    np.testing.assert_array_equal(net.apply(params, big), big.astype(np.float32))


@TRANSFORMS
def test_complex_params_are_refused(transform):
    net, params = _identity_net()
    complex_params = [{"w": params[0]["w"].astype(jnp.complex64), "b": params[0]["b"]}]
    with pytest.raises(TypeError, match=r"Layer 0: expected w of a floating dtype.*params\[0\]\['w'\] of dtype "
                                        r"complex64.*imaginary part"):
        transform(net.apply)(complex_params, jnp.ones((2, 1)))


@TRANSFORMS
def test_complex_input_is_refused(transform):
    net, params = _identity_net()
    with pytest.raises(TypeError, match=r"x must be an array of real numbers, got dtype complex64.*imaginary"):
        transform(net.apply)(params, jnp.ones((2, 1), jnp.complex64))


@pytest.mark.parametrize("x, dtype", [(np.array([[1.0], ["a"]], object), "object"),
                                      (np.array([["1.5"], ["2"]]), "<U3"),
                                      (np.array([[b"1"], [b"2"]]), "|S1")],
                         ids=["object", "str", "bytes"])
def test_object_or_string_input_is_refused_by_fnn(x, dtype):
    """A stray pandas column (object or strings) used to fail inside JAX with "Error interpreting argument"."""
    net, params = _identity_net()
    with pytest.raises(TypeError) as err:
        net.apply(params, x)
    msg = str(err.value)
    assert msg.startswith("x must be an array of real numbers") and f"dtype {dtype}" in msg and "pandas" in msg


def test_object_params_are_refused_by_fnn():
    net, params = _identity_net()
    with pytest.raises(TypeError, match=r"params\[0\]\['b'\] of dtype object"):
        net.apply([{"w": params[0]["w"], "b": np.array([0.0], object)}], jnp.ones((2, 1)))


def test_numeric_array_keeps_jax_arrays_and_host_width():
    from fnn.network import numeric_array

    x = jnp.ones(3)
    assert numeric_array("x", x) is x  # JAX arrays (and tracers) are not converted
    host = numeric_array("y", [2**33, 1])
    assert isinstance(host, np.ndarray) and host.dtype == np.int64 and host[0] == 2**33
    with pytest.raises(TypeError, match=r"x must be an array of numbers, got a list"):
        numeric_array("x", [[1, 2], [3]])


def test_initializer_of_a_net_without_dense_layers_is_none():
    net = fnn.serial("tanh", fnn.layers.Dropout(0.5), input_shape=(3,))
    assert net.initializer is None and net.bias  # no Dense layer: no initializer, and no layer without bias
    assert fnn.mlp([3, 2], init="he_normal").initializer.name == "he_normal"
