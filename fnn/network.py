"""Networks as pure functions over a parameter pytree: :func:`serial` of layers, and :func:`mlp` as its sugar.

A :class:`Network` is a NamedTuple: the bound layer records (:mod:`fnn.layers`), the per-example input shape,
the dtype, and two pure functions, ``init(key) -> params`` and ``apply(params, x) -> output``. Params are a
plain list with one entry per layer: ``{"w": (n_in, n_out), "b": (n_out,)}`` for Dense (no ``"b"`` key when
``bias=False``), ``{}`` for a layer without params, a list for a Residual block. Layers are counted from 0:
Dense layer ``l`` (``params[l]``) computes ``z_l = a_{l-1} @ w_l + b_l`` and ``a_l = f_l(z_l)`` with
``a_{-1} = x``; the textbook's ``W`` of shape ``(n_out, n_in)`` acting on a column vector is ``w.T`` here,
acting on a row vector. Nested layers are named by path: ``3.1.w`` is layer 3, inner layer 1, leaf ``w``.

``fnn.mlp([784, 30, 10], hidden="sigmoid")`` and
``fnn.serial(L.Dense(30, activation="sigmoid"), L.Dense(10), input_shape=(784,))`` are the same network: the
same layer records, params from the same key, outputs, gradients and :meth:`Network.describe`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _layer
from fnn import activations as _activations
from fnn import initializers as _initializers
from fnn import layers as _layers
from fnn._arrays import check_layer_params, check_state, numeric_array
from fnn._types import Array, ArrayLike, Params, PRNGKey

__all__ = ["Network", "mlp", "serial", "forward", "from_description", "context", "check_state"]


class Network(NamedTuple):
    """A network: its bound layers and its pure ``init``/``apply`` functions.

    Attributes:
      layers: one bound :class:`~fnn._layer.Layer` record per layer.
      input_shape: the per-example input shape, e.g. ``(784,)``.
      dtype: the parameter dtype.
      init: ``init(key) -> params``: a list, one entry per layer; the same key gives the same params.
      apply: ``apply(params, x, *, key=None, train=None, state=None) -> output`` for ``x`` of shape
        ``input_shape`` or ``(batch, *input_shape)``; inference mode (dropout off, running statistics) unless
        ``key`` is given or ``train=True``. With ``state=`` it returns ``(output, new_state)``; a net with state
        (:attr:`stateful`) requires it.

    State (BatchNorm's running statistics) is an explicit value, never kept on the net: ``state =
    net.init_state()``, passed in and returned out of every call (``docs/design.md``, "State").
    """

    layers: tuple[_layer.Layer, ...]
    input_shape: tuple[int, ...]
    dtype: Any
    init: Callable[[PRNGKey], Params]
    apply: Callable[..., Array]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The per-example output shape."""
        return self.layers[-1].output_shape

    @property
    def sizes(self) -> tuple[int, ...]:
        """The feature width entering layer 0 and leaving every layer: ``fnn.mlp``'s ``sizes`` for a Dense
        chain, e.g. ``(784, 30, 10)``."""
        return (self.input_shape[-1], *(layer.output_shape[-1] for layer in self.layers))

    @property
    def activations(self) -> tuple[_activations.Activation, ...]:
        """Every layer's activation (identity for a layer without one)."""
        return tuple(layer.activation or _activations.identity for layer in self.layers)

    @property
    def output(self) -> _activations.Activation:
        """The activation of the last layer (identity when it has none); the one a cross-entropy fuses with."""
        return self.layers[-1].activation or _activations.identity

    @property
    def bias(self) -> bool:
        """Whether every Dense layer carries a bias ``"b"``."""
        return all(layer.config["bias"] for layer in self.layers if layer.kind == "Dense")

    @property
    def initializer(self) -> _initializers.Initializer | None:
        """The weight initializer of the first Dense layer (all of them, for ``fnn.mlp`` networks); None for a
        net without Dense layers."""
        name = next((lay.config["init"] for lay in self.layers if lay.kind == "Dense"), None)
        return None if name is None else _initializers.get(name)

    @property
    def stateful(self) -> bool:
        """Whether the net has state (BatchNorm's running statistics): every call then takes ``state=``."""
        return any(layer.init_state is not None for layer in self.layers)

    def init_state(self) -> list:
        """The initial state: one entry per layer (``{}`` for a layer without state; BatchNorm
        ``{"mean": zeros, "var": ones}``; a list for a block), like params. Pure: works under ``jax.eval_shape``."""
        return _layer.init_state(self.layers, self.dtype)

    @property
    def stochastic(self) -> bool:
        """Whether training mode needs a key (the net has dropout with a rate above 0)."""
        return any(layer.stochastic for layer in self.layers)

    def describe(self) -> dict:
        """A JSON-able description; :func:`from_description` rebuilds the same network.

        A chain of Dense layers with one bias setting and one initializer is described as ``fnn.mlp``'s
        arguments (``{"sizes", "activations", "bias", "init", "dtype"}``, the form checkpoints have always
        held); any other net as ``{"input_shape", "layers", "dtype"}`` with one ``{"kind": ..., ...}`` per layer.
        """
        dtype = jnp.dtype(self.dtype).name
        dense = [layer.config for layer in self.layers if layer.kind == "Dense"]
        if len(dense) == len(self.layers) and len(self.input_shape) == 1 and \
                len({(c["bias"], c["init"]) for c in dense}) == 1:
            return {"sizes": list(self.sizes), "activations": [c["activation"] for c in dense],
                    "bias": dense[0]["bias"], "init": dense[0]["init"], "dtype": dtype}
        return {"input_shape": list(self.input_shape), "layers": [_describe(layer) for layer in self.layers],
                "dtype": dtype}

    def param_shapes(self) -> list:
        """The shape of every leaf, in the layout of params."""
        return [layer.param_shapes for layer in self.layers]

    def check_params(self, params: Params) -> None:
        """Raise a ValueError naming the layer and the shapes when params do not fit this network."""
        check_params(self, params)

    def __repr__(self) -> str:
        dtype = jnp.dtype(self.dtype).name
        if "sizes" in self.describe():
            acts = ", ".join(a.name for a in self.activations)
            return f"Network(sizes={list(self.sizes)}, activations=[{acts}], bias={self.bias}, dtype={dtype})"
        layers = ", ".join(repr(layer) for layer in self.layers)
        return f"Network(input_shape={self.input_shape}, layers=[{layers}], dtype={dtype})"


def _describe(layer: _layer.Layer) -> dict:
    if layer.children:
        return {"kind": layer.kind, "layers": [_describe(child) for child in layer.children]}
    return {"kind": layer.kind, **layer.config}


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"sizes must be a sequence of layer widths such as [784, 128, 10], got {sizes!r}.")
    if len(sizes) < 2:
        raise ValueError(
            f"sizes must list at least an input and an output width, e.g. [4, 3]; got {list(sizes)} "
            f"({len(sizes)} entr{'y' if len(sizes) == 1 else 'ies'})."
        )
    for i, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
            raise TypeError(f"sizes[{i}] must be a positive int, got {type(n).__name__} {n!r} in {list(sizes)}.")
        if int(n) <= 0:
            raise ValueError(f"sizes[{i}] must be a positive int, got {n} in {list(sizes)}.")
    return tuple(int(n) for n in sizes)


def mlp(
    sizes: Sequence[int],
    hidden: str | _activations.Activation = "relu",
    output: str | _activations.Activation = "identity",
    *,
    activations: Sequence[str | _activations.Activation] | None = None,
    bias: bool = True,
    init: str | _initializers.Initializer = "glorot_uniform",
    dtype: Any = None,
) -> Network:
    """Build a fully connected network.

    Args:
      sizes: layer widths ``[n_in, n_hidden..., n_out]``, each a positive int.
      hidden: activation of every hidden layer (ignored when ``activations`` is given).
      output: activation of the last layer (ignored when ``activations`` is given).
      activations: one activation per layer, overriding ``hidden``/``output``.
      bias: give each layer a bias ``"b"`` (zeros at init).
      init: weight initializer name or record (see :mod:`fnn.initializers`).
      dtype: parameter dtype; ``None`` means JAX's default float (float32, or float64 with x64 enabled).

    Returns:
      A :class:`Network`.

    Raises:
      ValueError / TypeError: bad sizes, wrong number of activations, unknown names.

    Example:
      >>> import jax, fnn
      >>> net = fnn.mlp([4, 10, 3], hidden="tanh", output="softmax")
      >>> params = net.init(jax.random.key(0))
      >>> net.apply(params, jax.numpy.ones((5, 4))).shape
      (5, 3)
    """
    sizes = _check_sizes(sizes)
    n_layers = len(sizes) - 1
    if activations is None:
        activations = [hidden] * (n_layers - 1) + [output]
    elif isinstance(activations, (str, _activations.Activation)):
        raise TypeError(f"activations must be a list with one activation per layer ({n_layers}), got {activations!r}.")
    if len(activations) != n_layers:
        raise ValueError(
            f"sizes {list(sizes)} describe {n_layers} layer(s), so activations needs {n_layers} entries; "
            f"got {len(activations)}: {list(activations)}."
        )
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be True or False, got {bias!r}.")
    acts = [_activations.get(a) for a in activations]
    initializer = _initializers.get(init)
    dense = [_layers.Dense(n, act, bias=bias, init=initializer) for n, act in zip(sizes[1:], acts, strict=True)]
    return serial(*dense, input_shape=(sizes[0],), dtype=dtype)


def _check_dtype(dtype) -> Any:
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype (float16, bfloat16, float32, float64), got {dtype}.")
    return dtype


def _check_shape(input_shape) -> tuple[int, ...]:
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str) or not input_shape or any(
            isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0 for n in input_shape):
        raise ValueError(f"serial: input_shape must be the per-example shape as a tuple of positive ints, e.g. "
                         f"(784,) or (28, 28, 1); got {input_shape!r}.")
    return tuple(int(n) for n in input_shape)


def serial(*layers, input_shape, dtype: Any = None) -> Network:
    """Compose layers in order: ``serial(L.Dense(30, activation="relu"), L.Dropout(0.2), L.Dense(10),
    input_shape=(784,))``.

    Args:
      layers: layer specs from :mod:`fnn.layers`; an activation name or record stands for
        ``L.Activation(name)``.
      input_shape: the per-example input shape (an int means ``(n,)``).
      dtype: parameter dtype; ``None`` means JAX's default float (float32, or float64 with x64 enabled).

    Returns:
      A :class:`Network`; ``init(key)`` splits ``key`` into one key per layer.

    Raises:
      ValueError / TypeError: no layers, unknown names, shapes that do not chain (naming the layer and both
        shapes), a non-float dtype.

    Example:
      >>> import jax, fnn
      >>> from fnn import layers as L
      >>> net = fnn.serial(L.Dense(8, activation="tanh"), L.Residual(L.Dense(8, activation="tanh")), L.Dense(3),
      ...                  input_shape=(4,))
      >>> [sorted(p) if isinstance(p, dict) else len(p) for p in net.init(jax.random.key(0))]
      [['b', 'w'], 1, ['b', 'w']]
    """
    if not layers:
        raise ValueError("serial needs at least one layer, e.g. serial(fnn.layers.Dense(10), input_shape=(784,)).")
    shape = _check_shape(input_shape)
    dtype = _check_dtype(dtype)
    bound, s = [], shape
    for l, spec in enumerate(layers):
        layer = _layers.as_spec(spec, f"Layer {l}").bind(s, str(l))
        bound.append(layer)
        s = layer.output_shape
    bound = tuple(bound)

    def init_fn(key: PRNGKey) -> Params:
        keys = jax.random.split(key, len(bound))
        return [layer.init(k, dtype) for layer, k in zip(bound, keys, strict=True)]

    net = Network(bound, shape, dtype, init_fn, None)  # type: ignore[arg-type]

    def apply_fn(params: Params, x: ArrayLike, *, key: PRNGKey | None = None, train: bool | None = None,
                 state=None):
        x2, single = check_input(net, params, x)
        ctx = context(net, key, train, state=check_state(net, state))
        y, records = _layer.forward(net.layers, params, x2, ctx)
        y = y[0] if single else y
        return y if state is None else (y, _layer.new_state(records, ctx.state))

    return net._replace(apply=apply_fn)


def context(net: Network, key: PRNGKey | None, train: bool | None, **kw) -> _layer.Context:
    """The :class:`~fnn._layer.Context` of a call: ``train=None`` means training mode iff ``key`` is given.

    Raises:
      ValueError: training mode without a key for a net with dropout.
    """
    if train is not None and not isinstance(train, bool):
        raise TypeError(f"train must be True, False or None (training mode iff a key is given), got {train!r}.")
    train = key is not None if train is None else train
    if train and key is None and net.stochastic:
        raise ValueError("Training mode (train=True) on a net with dropout needs a PRNG key: pass key=, e.g. "
                         "key=jax.random.key(0); the same key gives the same dropout masks.")
    return _layer.Context(train, key, **kw)


def from_description(desc: dict) -> Network:
    """The network :meth:`Network.describe` described (either form)."""
    if not isinstance(desc, dict):
        raise TypeError(f"A network description must be a dict, got {type(desc).__name__}.")
    if "layers" in desc:
        specs = [_layers.from_description(d) for d in desc["layers"]]
        return serial(*specs, input_shape=tuple(desc["input_shape"]), dtype=desc.get("dtype"))
    return mlp(**desc)


def check_params_type(net) -> None:
    """Raise TypeError unless ``net`` is a :class:`Network`."""
    if not isinstance(net, Network):
        raise TypeError(f"Expected a Network (from fnn.mlp or fnn.serial) as net, got {type(net).__name__}: "
                        f"{net!r:.80}.")


def check_params(net: Network, params: Params) -> None:
    """Raise ValueError naming the layer, expected and actual shapes when ``params`` do not fit ``net``."""
    check_params_type(net)
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"params must be a list of {net.num_layers} layer dicts (one entry per layer), "
                        f"got {type(params).__name__}.")
    if len(params) != net.num_layers:
        what = list(net.sizes) if "sizes" in net.describe() else f"with input shape {net.input_shape}"
        raise ValueError(f"params have {len(params)} layer(s) but the network {what} has {net.num_layers}.")
    for l, (layer, expected) in enumerate(zip(params, net.param_shapes(), strict=True)):
        check_layer_params(str(l), layer, expected)


def param_dtype(net: Network, params: Params):
    """The dtype inputs are cast to: that of the first parameter leaf (the net's dtype for a net without any)."""
    leaves = jax.tree_util.tree_leaves(params)
    return leaves[0].dtype if leaves else jnp.dtype(net.dtype)


def check_input(net: Network, params: Params, x: ArrayLike) -> tuple[Array, bool]:
    """Validate params and input; return ``x`` as ``(batch, *input_shape)`` in the params' dtype and whether it
    was one example without the batch axis."""
    check_params(net, params)
    x = numeric_array("x", x)
    shape = net.input_shape
    if x.ndim not in (len(shape), len(shape) + 1):
        raise ValueError(f"Input must have shape {shape} or (batch, {', '.join(map(str, shape))}), got shape "
                         f"{x.shape} (rank {x.ndim}).")
    if tuple(x.shape[x.ndim - len(shape):]) != shape:
        if len(shape) == 1:
            raise ValueError(f"Layer 0: expected {shape[0]} input features, got {x.shape[-1]} (input shape {x.shape}).")
        raise ValueError(f"Layer 0: expected examples of shape {shape} (NHWC for images), got input shape {x.shape}.")
    single = x.ndim == len(shape)
    x = x[None] if single else x
    dtype = param_dtype(net, params)
    if isinstance(x, np.ndarray) and not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(dtype)  # integers on the host, at full width: jnp.asarray would wrap int64 to int32 first
    return jnp.asarray(x).astype(dtype), single


def forward(net: Network, params: Params, x: Array, ctx: _layer.Context | None = None):
    """The forward pass on a batch ``(batch, *input_shape)`` keeping every layer: returns ``(zs, outputs)``.

    ``outputs[l]`` is layer ``l``'s output and ``zs[l]`` its pre-activation (Dense, Activation; None for other
    layers). Inference mode unless ``ctx`` says otherwise. No validation: callers check with :func:`check_input`.
    """
    _, records = _layer.forward(net.layers, params, x, _layer.Context() if ctx is None else ctx)
    return [aux.get("z") for _, _, aux in records], [y for _, y, _ in records]
