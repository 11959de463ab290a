"""ONNX export: :func:`export_onnx` writes a network and its params (and state) as an ONNX inference graph.

The graph is built with the maintained ``onnx`` package's own builders (``onnx.helper``, ``onnx.numpy_helper``)
and validated with ``onnx.checker.check_model`` before anything is written, rather than traced by jax2onnx:
jax2onnx 0.17 pulls flax, equinox, orbax, huggingface-hub and netron and needs Python >= 3.11, while fnn
supports 3.10, and a network described by its layer records maps onto ONNX operators one layer at a time
anyway. ``onnx`` and ``onnxruntime`` live in the ``export`` extra (``pip install 'fnn[export]'``); ``onnx`` is
imported only when :func:`export_onnx` runs.

Each layer becomes a few standard operators, in the params' dtype:

=============  ==========================================================================================
Dense          ``MatMul(x, w)`` (+ ``Add(b)``), ``w`` as it is, ``(n_in, n_out)``
Conv2D         ``Transpose`` NHWC→NCHW, ``Conv`` (kernel HWIO→OIHW, explicit ``pads``), ``Transpose`` back
MaxPool2D      the same ``Transpose`` pair around ``MaxPool`` (ONNX's padding never wins, as fnn's ``-inf``)
AvgPool2D      ... around ``AveragePool`` with ``count_include_pad=1`` (fnn divides by the full window)
Flatten        ``Flatten(axis=1)`` of the NHWC tensor: row-major over ``(h, w, c)``, as fnn
LayerNorm      ``ReduceMean``/``Sub``/``Mul``/``Sqrt``/``Reciprocal`` over the last axis (biased variance)
BatchNorm      inference form ``(x - running_mean) * (scale / sqrt(running_var + eps)) + offset``
Residual       its inner layers, then ``Add(x, f(x))``
Dropout        nothing: inference mode is the identity
=============  ==========================================================================================

``"SAME"`` padding is lax's (the odd row/column at the bottom/right): the ``pads`` come from the same
:func:`fnn._windows.geometry` the layers use, never from ONNX's ``auto_pad``. The activations are written as
fnn defines them (:mod:`fnn.activations`): elu, softplus, leaky_relu, gelu and gelu_tanh as small compositions
with constants in the export dtype (softplus as ``relu(z) + log(1 + exp(-|z|))``, which never overflows),
binary_step as ``z >= 0`` (1 at 0), softmax/log_softmax over the last axis.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import numpy as np

from fnn import _windows
from fnn import activations as _activations
from fnn import network as _network
from fnn._checkpoint_format import atomic_write

__all__ = ["export_onnx", "SUPPORTED_KINDS", "SUPPORTED_ACTIVATIONS", "DEFAULT_OPSET"]

#: The default ONNX opset: 17 (onnxruntime >= 1.13 and most other runtimes read it).
DEFAULT_OPSET = 17
#: The layer kinds :func:`export_onnx` translates.
SUPPORTED_KINDS = ("Dense", "Activation", "Dropout", "Residual", "Conv2D", "MaxPool2D", "AvgPool2D", "Flatten",
                   "LayerNorm", "BatchNorm")
#: The activations it translates: fnn's built-in records (a custom or re-registered record is refused).
SUPPORTED_ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "gelu_tanh",
                         "softplus", "swish", "binary_step", "softmax", "log_softmax")
_IMAGE_OPS = {"Conv2D": "Conv", "MaxPool2D": "MaxPool", "AvgPool2D": "AveragePool"}


class _Graph:
    """The nodes and constants of the graph being built; every name is unique and starts with its layer path."""

    def __init__(self, onnx, dtype: np.dtype, opset: int):
        self.onnx, self.dtype, self.opset = onnx, dtype, opset
        self.nodes, self.constants, self.count = [], [], 0

    def const(self, scope: str, name: str, value, dtype=None) -> str:
        full = f"{scope}/{name}_{len(self.constants)}"
        array = np.asarray(value, self.dtype if dtype is None else dtype)
        self.constants.append(self.onnx.numpy_helper.from_array(array, full))
        return full

    def op(self, op_type: str, inputs: list[str], scope: str, **attrs) -> str:
        self.count += 1
        out = f"{scope}/{op_type}_{self.count}"
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def mean_last(self, x: str, scope: str) -> str:
        """The mean over the last axis, keeping it (``axes`` is an attribute up to opset 17, an input from 18)."""
        if self.opset < 18:
            return self.op("ReduceMean", [x], scope, axes=[-1], keepdims=1)
        return self.op("ReduceMean", [x, self.const(scope, "axes", [-1], np.int64)], scope, keepdims=1)


# --- activations: fnn.activations' definitions as ONNX operators ------------------------------------------

def _gelu(g: _Graph, x: str, s: str) -> str:  # ½ z (1 + erf(z/√2)) = ½ z erfc(-z/√2)
    erf = g.op("Erf", [g.op("Mul", [x, g.const(s, "sqrt_half", math.sqrt(0.5))], s)], s)
    return g.op("Mul", [g.op("Mul", [x, g.const(s, "half", 0.5)], s), g.op("Add", [erf, g.const(s, "one", 1)], s)], s)


def _gelu_tanh(g: _Graph, x: str, s: str) -> str:  # ½ z (1 + tanh(√(2/π)(z + 0.044715 z³)))
    cube = g.op("Mul", [g.op("Mul", [x, x], s), x], s)
    inner = g.op("Add", [x, g.op("Mul", [cube, g.const(s, "c", 0.044715)], s)], s)
    t = g.op("Tanh", [g.op("Mul", [inner, g.const(s, "sqrt_2_over_pi", math.sqrt(2 / math.pi))], s)], s)
    return g.op("Mul", [g.op("Mul", [x, g.const(s, "half", 0.5)], s), g.op("Add", [t, g.const(s, "one", 1)], s)], s)


def _elu(g: _Graph, x: str, s: str) -> str:  # relu(z) + exp(min(z, 0)) - 1: z for z > 0, e^z - 1 otherwise
    e = g.op("Exp", [g.op("Min", [x, g.const(s, "zero", 0)], s)], s)
    return g.op("Add", [g.op("Relu", [x], s), g.op("Sub", [e, g.const(s, "one", 1)], s)], s)


def _leaky_relu(g: _Graph, x: str, s: str) -> str:  # z if z >= 0 else slope·z (the slope in the export dtype)
    keep = g.op("GreaterOrEqual", [x, g.const(s, "zero", 0)], s)
    return g.op("Where", [keep, x, g.op("Mul", [x, g.const(s, "slope", _activations.LEAKY_SLOPE)], s)], s)


def _softplus(g: _Graph, x: str, s: str) -> str:  # max(z, 0) + log(1 + e^-|z|): never overflows
    tail = g.op("Exp", [g.op("Neg", [g.op("Abs", [x], s)], s)], s)
    return g.op("Add", [g.op("Relu", [x], s), g.op("Log", [g.op("Add", [tail, g.const(s, "one", 1)], s)], s)], s)


def _binary_step(g: _Graph, x: str, s: str) -> str:  # 1 if z >= 0 else 0 (1 at 0)
    dtype = g.onnx.helper.np_dtype_to_tensor_dtype(g.dtype)
    return g.op("Cast", [g.op("GreaterOrEqual", [x, g.const(s, "zero", 0)], s)], s, to=dtype)


_ACTIVATIONS = {
    "identity": lambda g, x, s: x,
    "sigmoid": lambda g, x, s: g.op("Sigmoid", [x], s),
    "tanh": lambda g, x, s: g.op("Tanh", [x], s),
    "relu": lambda g, x, s: g.op("Relu", [x], s),
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "softplus": _softplus,
    "swish": lambda g, x, s: g.op("Mul", [x, g.op("Sigmoid", [x], s)], s),
    "binary_step": _binary_step,
    "softmax": lambda g, x, s: g.op("Softmax", [x], s, axis=-1),
    "log_softmax": lambda g, x, s: g.op("LogSoftmax", [x], s, axis=-1),
}


def _builtin(act) -> bool:
    """``act`` is fnn's own record of that name (not a custom record, nor one registered over a built-in name)."""
    return act.name in _ACTIVATIONS and getattr(_activations, act.name, None) is act


def _check_supported(layers, prefix: str = "") -> None:
    """A ValueError naming the first layer (by path) or activation the export cannot translate."""
    for i, layer in enumerate(layers):
        path = f"{prefix}{i}"
        if layer.kind not in SUPPORTED_KINDS:
            raise ValueError(f"Layer {path} ({layer.kind}) cannot be exported to ONNX: unknown layer kind "
                             f"{layer.kind!r}; supported kinds: {', '.join(SUPPORTED_KINDS)}.")
        if layer.activation is not None and not _builtin(layer.activation):
            raise ValueError(f"Layer {path} ({layer.kind}) cannot be exported to ONNX: its activation "
                             f"{layer.activation.name!r} is not one of fnn's built-in activation records (a custom "
                             f"or re-registered activation has no ONNX form); supported activations: "
                             f"{', '.join(SUPPORTED_ACTIVATIONS)}.")
        if layer.kind == "Residual":
            _check_supported(layer.children, f"{path}.")


# --- layers -------------------------------------------------------------------------------------------------

def _image_op(g: _Graph, layer, p, x: str, s: str) -> str:
    """Conv/MaxPool/AveragePool on the NHWC tensor ``x``: transposed to NCHW and back, lax's padding as pads."""
    cfg, (h, w, _) = layer.config, layer.input_shape
    window = tuple(cfg["kernel_size"] if layer.kind == "Conv2D" else cfg["window"])
    geo = _windows.geometry(layer.kind, s, (h, w), window, tuple(cfg["stride"]), cfg["padding"])
    (top, bottom), (left, right) = geo.pads
    attrs = {"kernel_shape": list(window), "strides": list(cfg["stride"]), "pads": [top, left, bottom, right]}
    inputs = [g.op("Transpose", [x], s, perm=[0, 3, 1, 2])]
    if layer.kind == "Conv2D":
        inputs.append(g.const(s, "w", np.transpose(np.asarray(p["w"]), (3, 2, 0, 1))))  # HWIO -> OIHW
        inputs += [g.const(s, "b", p["b"])] if "b" in p else []
    elif layer.kind == "AvgPool2D":
        attrs["count_include_pad"] = 1
    y = g.op(_IMAGE_OPS[layer.kind], inputs, s, **attrs)
    return g.op("Transpose", [y], s, perm=[0, 2, 3, 1])


def _layer_norm(g: _Graph, layer, p, x: str, s: str) -> str:
    centred = g.op("Sub", [x, g.mean_last(x, s)], s)
    var = g.mean_last(g.op("Mul", [centred, centred], s), s)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.const(s, "eps", layer.config["eps"])], s)], s)], s)
    y = g.op("Mul", [centred, inv], s)
    if "scale" in p:
        y = g.op("Mul", [y, g.const(s, "scale", p["scale"])], s)
    return g.op("Add", [y, g.const(s, "offset", p["offset"])], s) if "offset" in p else y


def _batch_norm(g: _Graph, layer, p, state, x: str, s: str) -> str:
    mean, var = np.asarray(state["mean"], np.float64), np.asarray(state["var"], np.float64)
    factor = np.asarray(p.get("scale", 1.0), np.float64) / np.sqrt(var + layer.config["eps"])
    y = g.op("Mul", [g.op("Sub", [x, g.const(s, "running_mean", mean)], s), g.const(s, "factor", factor)], s)
    return g.op("Add", [y, g.const(s, "offset", p["offset"])], s) if "offset" in p else y


def _layers(g: _Graph, layers, params, state, x: str, prefix: str = "") -> str:
    """Append every layer's nodes; return the name of the last tensor."""
    state = state if isinstance(state, (list, tuple)) else [{}] * len(layers)
    for i, (layer, p, st) in enumerate(zip(layers, params, state, strict=True)):
        s = f"{prefix}{i}"
        if layer.kind == "Dense":
            x = g.op("MatMul", [x, g.const(s, "w", p["w"])], s)
            x = g.op("Add", [x, g.const(s, "b", p["b"])], s) if "b" in p else x
        elif layer.kind in _IMAGE_OPS:
            x = _image_op(g, layer, p, x, s)
        elif layer.kind == "Flatten":
            x = g.op("Flatten", [x], s, axis=1)
        elif layer.kind == "LayerNorm":
            x = _layer_norm(g, layer, p, x, s)
        elif layer.kind == "BatchNorm":
            x = _batch_norm(g, layer, p, st, x, s)
        elif layer.kind == "Residual":
            x = g.op("Add", [x, _layers(g, layer.children, p, st, x, f"{s}.")], s)
        if layer.activation is not None:  # Dense, Conv2D, Activation; Dropout adds nothing (inference)
            x = _ACTIVATIONS[layer.activation.name](g, x, s)
    return x


# --- the entry point ----------------------------------------------------------------------------------------

def _export_dtype(net, params) -> np.dtype:
    dtypes = {np.dtype(leaf.dtype) for leaf in jax.tree_util.tree_leaves(params)} or {np.dtype(net.dtype)}
    if len(dtypes) > 1:
        raise ValueError(f"export_onnx: every param must have one dtype (the graph's), got {sorted(map(str, dtypes))}.")
    dtype = dtypes.pop()
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"export_onnx: exports float32 or float64 params, got {dtype}; cast them first, e.g. "
                         f"jax.tree_util.tree_map(lambda a: a.astype('float32'), params).")
    return dtype


def _check_standardizer(net, standardizer, dtype):
    if standardizer is None:
        return None
    if not isinstance(standardizer, tuple) or len(standardizer) != 2:
        raise TypeError(f"export_onnx: standardizer must be an fnn.data.Standardizer (mean, std), got "
                        f"{type(standardizer).__name__}: {standardizer!r:.80}.")
    mean, std = (np.asarray(a, dtype) for a in standardizer)
    for name, a in (("mean", mean), ("std", std)):
        if a.shape != net.input_shape:
            raise ValueError(f"export_onnx: the standardizer's {name} has shape {a.shape}, expected the network's "
                             f"per-example input shape {net.input_shape}.")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError("export_onnx: the standardizer's mean must be finite and its std finite and positive.")
    return mean, std


def export_onnx(net, params, path: str | os.PathLike, *, state=None, standardizer=None, opset: int = DEFAULT_OPSET,
                input_name: str = "x", output_name: str = "y") -> Path:
    """Write ``net`` with ``params`` as an ONNX model computing ``net.apply(params, x)`` in inference mode.

    Conventions of the graph:

    * **Input** ``input_name``: ``(batch, *net.input_shape)`` with a dynamic ``"batch"`` axis, images NHWC
      ``(batch, H, W, C)`` exactly as fnn takes them; **output** ``output_name``: ``(batch, *net.output_shape)``,
      what ``net.apply`` returns (activations included: softmax probabilities for a softmax output layer).
    * **dtype**: the params' (float32 or float64), for input, weights and output; feed arrays of that dtype.
      onnxruntime's CPU provider (1.32) has no float64 kernel for ``Conv``, ``AveragePool`` or ``Erf``: a
      float64 model with Conv2D, AvgPool2D or gelu is valid ONNX that it refuses to load; export those in float32.
    * **Layouts**: Dense ``w (n_in, n_out)`` acts on row vectors (``MatMul(x, w)``); Conv2D kernels HWIO become
      ONNX's OIHW and every Conv/pool runs between two ``Transpose`` nodes (NHWC outside); lax's ``"SAME"``
      padding (extra row/column at the bottom/right) is written as explicit ``pads``; AvgPool2D counts padding
      as zeros (``count_include_pad=1``); MaxPool2D's padding never wins; Flatten is NHWC row-major.
    * **Inference mode**: Dropout is removed (no node); BatchNorm uses the running statistics of ``state``,
      ``(x - mean) * scale / sqrt(var + eps) + offset``; LayerNorm normalises each example over its last axis
      with the biased variance, ``eps`` inside the square root.
    * **Standardisation**: baked in when ``standardizer`` is given (the first nodes compute ``(x - mean) / std``,
      so the model takes raw features); otherwise the caller standardises.
    * **Opset** ``opset`` (default 17), the IR version the lowest that opset allows; the net's description
      (``net.describe()``) is stored in the model's metadata as ``fnn.description``.

    Everything is checked, translated and validated by ``onnx.checker.check_model`` before the file is written,
    atomically (a temp file beside ``path``, then ``os.replace``): an error leaves no file, an old one untouched.

    Args:
      net: an :class:`fnn.Network` (``fnn.mlp`` or ``fnn.serial``).
      params: its params (``net.init(key)``, trained or loaded).
      path: the ``.onnx`` file to write; its folder is created if missing.
      state: the net's state (``net.init_state()`` layout, trained); required for a net with BatchNorm.
      standardizer: an :class:`fnn.data.Standardizer` ``(mean, std)`` of shape ``net.input_shape``, or None.
      opset: the ONNX opset, 17 up to the installed ``onnx``'s newest.
      input_name, output_name: the graph's input and output names.

    Returns:
      The path written, as a :class:`pathlib.Path`.

    Raises:
      ImportError: ``onnx`` is not installed (``pip install 'fnn[export]'``).
      TypeError / ValueError: not a Network, params or state that do not fit it, a missing state for BatchNorm,
        params neither float32 nor float64, a bad standardizer, opset or names; a layer kind or activation with
        no ONNX form (naming the layer by path, e.g. ``3.1``, and listing the supported ones).

    Example:
      >>> import jax, numpy as np, onnxruntime as ort, fnn
      >>> net = fnn.mlp([4, 8, 3], output="softmax")
      >>> params = net.init(jax.random.key(0))
      >>> path = fnn.export_onnx(net, params, "net.onnx")
      >>> x = np.ones((5, 4), np.float32)
      >>> y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
      >>> bool(np.allclose(y, net.apply(params, x), atol=1e-5))
      True
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError("export_onnx needs the onnx package: pip install 'fnn[export]' (onnx and onnxruntime)."
                          ) from e
    _network.check_params(net, params)
    dtype = _export_dtype(net, params)
    state = _network.check_state(net, state)
    standardizer = _check_standardizer(net, standardizer, dtype)
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not DEFAULT_OPSET <= opset <= newest:
        raise ValueError(f"export_onnx: opset must be an int from {DEFAULT_OPSET} to {newest} (the installed onnx's "
                         f"newest), got {opset!r}.")
    for what, name in (("input_name", input_name), ("output_name", output_name)):
        if not isinstance(name, str) or not name:
            raise ValueError(f"export_onnx: {what} must be a non-empty string, got {name!r}.")
    if input_name == output_name:
        raise ValueError(f"export_onnx: input_name and output_name must differ, both are {input_name!r}.")
    _check_supported(net.layers)

    g = _Graph(onnx, dtype, opset)
    params = jax.tree_util.tree_map(np.asarray, params)
    x = input_name
    if standardizer is not None:
        x = g.op("Div", [g.op("Sub", [x, g.const("input", "mean", standardizer[0])], "input"),
                         g.const("input", "std", standardizer[1])], "input")
    y = _layers(g, net.layers, params, state, x)
    if g.nodes and g.nodes[-1].output[0] == y:  # name the last node's output after the graph's output
        g.nodes[-1].output[0] = output_name
    else:  # nothing computed (a net of Dropout/identity layers)
        g.nodes.append(onnx.helper.make_node("Identity", [y], [output_name], name="output/Identity"))

    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    graph = onnx.helper.make_graph(
        g.nodes, "fnn", [onnx.helper.make_tensor_value_info(input_name, elem, ["batch", *net.input_shape])],
        [onnx.helper.make_tensor_value_info(output_name, elem, ["batch", *net.output_shape])], g.constants)
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="fnn",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets),
                                   doc_string="An fnn network in inference mode, written by fnn.export_onnx.")
    onnx.helper.set_model_props(model, {"fnn.description": json.dumps(net.describe()),
                                        "fnn.standardized": str(standardizer is not None).lower()})
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    atomic_write(path, model.SerializeToString())
    return path
