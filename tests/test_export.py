"""ONNX export: every layer kind and activation, run by onnxruntime, equals ``net.apply`` (inference mode)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import jax
import numpy as np
import pytest

import fnn
from fnn import activations as A
from fnn import layers as L
from fnn.export import SUPPORTED_ACTIVATIONS, SUPPORTED_KINDS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ATOL = 1e-5  # float32; float64 nets are held to 1e-10


def _params(net, seed: int):
    """Random params in the net's layout and dtype, built in NumPy (faster than ``net.init`` op by op): weights
    ``N(0, 1/fan_in)``, biases and offsets ``N(0, 0.3²)``, scales ``1 + N(0, 0.3²)``, so nothing is trivial."""
    rng, dtype = np.random.default_rng(seed), np.dtype(net.dtype)

    def leaf(name, shape):
        noise = rng.normal(size=shape)
        if name == "w":
            return (noise / np.sqrt(np.prod(shape[:-1]))).astype(dtype)
        return ((name == "scale") + 0.3 * noise).astype(dtype)

    def tree(shapes):
        return [tree(s) for s in shapes] if isinstance(shapes, list) else {k: leaf(k, v) for k, v in shapes.items()}

    return tree(net.param_shapes())


def _state(net, seed: int):
    """``net.init_state()``'s layout with random running statistics: mean ``N(0, 1)``, var in [0.5, 2]."""
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        value = rng.normal(size=a.shape) if path[-1].key == "mean" else rng.uniform(0.5, 2, a.shape)
        return value.astype(a.dtype)

    return jax.tree_util.tree_map_with_path(leaf, net.init_state())


def _apply(net, params, x, state=None):
    """The reference, ``net.apply`` in inference mode (jitted: one compile instead of one per operation)."""
    if state is None:
        return jax.jit(net.apply)(params, x)
    return jax.jit(lambda p, x, s: net.apply(p, x, state=s)[0])(params, x, state)


def _onnx(net, params, tmp_path, x, **kw):
    """Export, run onnxruntime once on ``x``, return ``(output, model)``."""
    path = fnn.export_onnx(net, params, tmp_path / "net.onnx", **kw)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0], onnx.load(str(path))


def _x(shape, seed=0, n=64, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(dtype)


def _ops(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


def test_mlp_on_random_and_digits_rows(tmp_path):
    (_, _), (x_test, _) = fnn.load_dataset("digits")
    net = fnn.mlp([64, 16, 10], hidden="tanh", output="softmax")
    params = _params(net, 1)
    x = np.concatenate([_x((64,)), x_test[:64]])
    y, model = _onnx(net, params, tmp_path, x)
    np.testing.assert_allclose(y, _apply(net, params, x), atol=ATOL, rtol=0)
    assert "sizes" in net.describe()
    inp, out = model.graph.input[0], model.graph.output[0]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 64]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 10]
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["fnn.description"]) == net.describe() and props["fnn.standardized"] == "false"


def test_every_registered_activation_is_supported():
    assert set(A.names()) == set(SUPPORTED_ACTIVATIONS) and len(SUPPORTED_ACTIVATIONS) == 13


@pytest.mark.parametrize("name", SUPPORTED_ACTIVATIONS)
def test_every_activation(name, tmp_path):
    # As a layer on values that hit every convention (0 for binary_step/relu, ±100 for softplus/elu/softmax),
    # and as Dense's activation= on random rows.
    special = np.array([0, -0.0, 1e-3, -1e-3, 0.5, -0.5, 3, -3, 30, -30, 100, -100, 7, -7, 0, 2], np.float32)
    x = np.concatenate([special.reshape(2, 8), 3 * _x((8,), seed=2, n=30)])
    layer = fnn.serial(L.Activation(name), input_shape=(8,))
    y, model = _onnx(layer, [{}], tmp_path, x)
    np.testing.assert_allclose(y, _apply(layer, [{}], x), atol=ATOL, rtol=0)
    dense = fnn.serial(L.Dense(6, activation=name), input_shape=(8,))
    params = _params(dense, 3)
    y, _ = _onnx(dense, params, tmp_path, x[2:])
    np.testing.assert_allclose(y, _apply(dense, params, x[2:]), atol=ATOL, rtol=0)


def _flat_layers():
    """Every flat layer kind: Dropout (twice), nested Residuals, LayerNorm/BatchNorm with and without scale/offset."""
    return [L.Dense(16, activation="relu"), L.Dropout(0.3),
            L.Residual(L.Dense(16, activation="tanh"), L.Residual(L.LayerNorm(), L.Dense(16, bias=False)),
                       L.Dropout(0.1), L.BatchNorm(scale=False)),
            L.BatchNorm(), "gelu_tanh", L.LayerNorm(offset=False), L.Dense(4, bias=False)]


@pytest.mark.parametrize("opset", [17, 18])
def test_flat_layers_dropout_residual_norms(opset, tmp_path):
    net = fnn.serial(*_flat_layers(), input_shape=(10,))
    params = _params(net, 4)
    x = _x((10,), seed=4)
    state = _state(net, 1)
    y, model = _onnx(net, params, tmp_path, x, state=state, opset=opset)
    np.testing.assert_allclose(y, _apply(net, params, x, state), atol=ATOL, rtol=0)
    assert not any("Dropout" in op or "Random" in op for op in _ops(model))
    assert model.opset_import[0].version == opset


# Conv2D: stride 1 and 2, SAME (odd padding bottom/right), VALID and int padding, with and without bias,
# non-square kernels; pools SAME/VALID/int with overlapping strides; LayerNorm/BatchNorm/softmax over channels.
IMAGE_NETS = {
    "same": lambda: [L.Conv2D(4, (3, 2), padding="SAME", activation="relu"), L.MaxPool2D(3, 2, "SAME"),
                     L.AvgPool2D(2, 1, "VALID"), L.Flatten(), L.Dense(5)],
    "valid": lambda: [L.Conv2D(3, (2, 3), stride=2, padding="VALID", bias=False), L.AvgPool2D(3, 2, "SAME"),
                      L.MaxPool2D(2, 1, "VALID"), L.Flatten(), L.Dense(3, activation="log_softmax")],
    "stride2_same": lambda: [L.Conv2D(4, 3, stride=2, padding="SAME", activation="swish"), L.BatchNorm(),
                             L.Conv2D(2, (2, 3), stride=(1, 2), padding=1), L.LayerNorm(), "softmax", L.Flatten()],
    "pools": lambda: [L.MaxPool2D((3, 2), (2, 1), padding=1), L.AvgPool2D((2, 3), (1, 2), padding=1), L.MaxPool2D(2),
                      L.Residual(L.Conv2D(2, 3, activation="elu")), L.Flatten()],
}


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_image_layers(name, tmp_path):
    net = fnn.serial(*IMAGE_NETS[name](), input_shape=(8, 8, 2))
    params = _params(net, 5)
    x = _x((8, 8, 2), seed=6)
    state = _state(net, 1) if net.stateful else None
    y, model = _onnx(net, params, tmp_path, x, state=state)
    want = _apply(net, params, x, state)
    np.testing.assert_allclose(y, want, atol=ATOL, rtol=0)
    assert {"Transpose"} <= set(_ops(model))


def test_cnn_on_digits_images(tmp_path):
    (_, _), (x_test, _) = fnn.load_dataset("digits", flatten=False)
    net = fnn.serial(L.Conv2D(4, 3, activation="gelu"), L.MaxPool2D(2), L.Conv2D(8, (2, 3), stride=2, bias=False),
                     L.Flatten(), L.Dense(10, activation="softmax"), input_shape=(8, 8, 1))
    params = _params(net, 7)
    y, _ = _onnx(net, params, tmp_path, x_test[:64])
    np.testing.assert_allclose(y, _apply(net, params, x_test[:64]), atol=ATOL, rtol=0)


def test_standardizer_is_baked_in(tmp_path):
    (x_train, _), (x_test, _) = fnn.load_dataset("digits")
    s = fnn.data.fit_standardizer(x_train)
    net = fnn.mlp([64, 16, 10], hidden="relu")
    params = _params(net, 8)
    y, model = _onnx(net, params, tmp_path, x_test[:64], standardizer=s)  # raw features in
    np.testing.assert_allclose(y, _apply(net, params, (x_test[:64] - s.mean) / s.std), atol=ATOL, rtol=0)
    assert _ops(model)[:2] == ["Sub", "Div"]
    assert {p.key: p.value for p in model.metadata_props}["fnn.standardized"] == "true"


def test_float64(x64, tmp_path):
    # Every layer of the flat net, then a Dense per activation onnxruntime runs in float64 (no float64 Erf: gelu).
    acts = [L.Dense(8, activation=name) for name in SUPPORTED_ACTIVATIONS if name != "gelu"]
    net = fnn.serial(*_flat_layers(), *acts, input_shape=(10,))
    assert net.dtype == np.float64
    params = _params(net, 9)
    x = _x((10,), seed=9, dtype=np.float64)
    state = _state(net, 1)
    y, model = _onnx(net, params, tmp_path, x, state=state)
    assert y.dtype == np.float64 and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    np.testing.assert_allclose(y, _apply(net, params, x, state), atol=1e-10, rtol=0)


def test_float64_images_export_as_double(x64, tmp_path):
    # Valid ONNX in float64 (onnxruntime's CPU provider has no float64 Conv/AveragePool kernels to run it).
    net = fnn.serial(L.Conv2D(2, 3), L.AvgPool2D(2), L.MaxPool2D(2), L.Flatten(), input_shape=(8, 8, 2))
    path = fnn.export_onnx(net, _params(net, 0), tmp_path / "net.onnx")
    model = onnx.load(str(path))
    assert {t.data_type for t in model.graph.initializer} == {onnx.TensorProto.DOUBLE}


# --- errors: nothing is written ------------------------------------------------------------------------------

def _cube_layer() -> L.Spec:
    return L.Spec("Cube", {}, lambda shape, where: dataclasses.replace(L.Flatten().bind(shape, where), kind="Cube"))


def test_unknown_layer_kind_names_the_nested_layer_and_writes_nothing(tmp_path):
    net = fnn.serial(L.Dense(4), L.Residual(L.Dense(4), _cube_layer()), input_shape=(3,))
    path = tmp_path / "net.onnx"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match=r"Layer 1\.1 \(Cube\).*'Cube'.*supported kinds: Dense, Activation"):
        fnn.export_onnx(net, _params(net, 0), path)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]
    assert set(SUPPORTED_KINDS) == set(L.KINDS)


def test_custom_activations_are_refused(tmp_path):
    cube = A.Activation("cube_export_test", lambda z: z**3, lambda z, a, g: 3 * g * z * z, lambda z: 3 * z * z)
    fake_relu = A.Activation("relu", lambda z: z, lambda z, a, g: g, lambda z: z * 0 + 1)  # a built-in's name
    try:
        A.register(cube)
        for net, where in ((fnn.serial(L.Dense(3), "cube_export_test", input_shape=(2,)), "Layer 1 (Activation)"),
                           (fnn.mlp([2, 3, 1], hidden=fake_relu), "Layer 0 (Dense)")):
            pattern = rf"{re.escape(where)}.*activation '(cube_export_test|relu)'.*gelu_tanh"
            with pytest.raises(ValueError, match=pattern):
                fnn.export_onnx(net, _params(net, 0), tmp_path / "net.onnx")
    finally:
        A.REGISTRY.pop("cube_export_test", None)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(tmp_path, monkeypatch):
    path = tmp_path / "net.onnx"
    net = fnn.serial(L.Dense(4), L.BatchNorm(), input_shape=(3,))
    params = _params(net, 0)
    with pytest.raises(ValueError, match=r"layer 1: BatchNorm.*state="):
        fnn.export_onnx(net, params, path)
    with pytest.raises(TypeError, match="Expected a Network.*got dict"):
        fnn.export_onnx({"sizes": [3, 4]}, params, path)
    with pytest.raises(ValueError, match="params have 1 layer"):
        fnn.export_onnx(net, params[:1], path, state=_state(net, 0))
    half = jax.tree_util.tree_map(lambda a: a.astype("float16"), params)
    with pytest.raises(ValueError, match="float32 or float64 params, got float16"):
        fnn.export_onnx(net, half, path, state=_state(net, 0))
    with pytest.raises(ValueError, match=r"standardizer's mean has shape \(4,\), expected .* \(3,\)"):
        fnn.export_onnx(net, params, path, state=_state(net, 0), standardizer=(np.zeros(4), np.ones(4)))
    with pytest.raises(ValueError, match="opset must be an int from 17"):
        fnn.export_onnx(net, params, path, state=_state(net, 0), opset=13)
    with pytest.raises(ValueError, match="must differ"):
        fnn.export_onnx(net, params, path, state=_state(net, 0), input_name="y")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'fnn\[export\]'"):
        fnn.export_onnx(net, params, path, state=_state(net, 0))
    assert list(tmp_path.iterdir()) == []


def test_a_net_that_computes_nothing_is_an_identity(tmp_path):
    net = fnn.serial(L.Dropout(0.5), "identity", input_shape=(3,))
    x = _x((3,))
    y, model = _onnx(net, [{}, {}], tmp_path, x)
    np.testing.assert_array_equal(y, x)
    assert _ops(model) == ["Identity"]
