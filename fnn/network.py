"""Multi-layer perceptrons as pure functions over a parameter pytree.

A :class:`Network` is a NamedTuple: the static description of its layers plus two pure functions,
``init(key) -> params`` and ``apply(params, x) -> output``. Params are a plain list with one dict per layer,
``{"w": (n_in, n_out), "b": (n_out,)}`` (no ``"b"`` key when ``bias=False``). Layers are counted from 0:
layer ``l`` (``params[l]``) computes ``z_l = a_{l-1} @ w_l + b_l`` and ``a_l = f_l(z_l)`` with ``a_{-1} = x``;
the textbook's ``W`` of shape ``(n_out, n_in)`` acting on a column vector is ``w.T`` here, acting on a row vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import activations as _activations
from fnn import initializers as _initializers
from fnn._types import Array, ArrayLike, Params, PRNGKey

__all__ = ["Network", "mlp", "forward"]


class Network(NamedTuple):
    """A static MLP description and its pure ``init``/``apply`` functions.

    Attributes:
      sizes: layer widths ``(n_in, n_hidden..., n_out)``.
      activations: one :class:`~fnn.activations.Activation` per layer (``len(sizes) - 1``).
      bias: whether layers carry a bias ``"b"``.
      initializer: the weight :class:`~fnn.initializers.Initializer` (biases start at zero).
      dtype: the parameter dtype.
      init: ``init(key) -> params``.
      apply: ``apply(params, x) -> output`` for ``x`` of shape ``(n_in,)`` or ``(batch, n_in)``.
    """

    sizes: tuple[int, ...]
    activations: tuple[_activations.Activation, ...]
    bias: bool
    initializer: _initializers.Initializer
    dtype: Any
    init: Callable[[PRNGKey], Params]
    apply: Callable[[Params, ArrayLike], Array]

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def output(self) -> _activations.Activation:
        """The activation of the last layer."""
        return self.activations[-1]

    def describe(self) -> dict:
        """A JSON-able description; ``fnn.mlp(**net.describe())`` rebuilds the same network."""
        return {
            "sizes": list(self.sizes),
            "activations": [a.name for a in self.activations],
            "bias": self.bias,
            "init": self.initializer.name,
            "dtype": jnp.dtype(self.dtype).name,
        }

    def param_shapes(self) -> list[dict[str, tuple[int, ...]]]:
        """The shape of every leaf, in the layout of params."""
        shapes = []
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            layer = {"w": (n_in, n_out)}
            if self.bias:
                layer["b"] = (n_out,)
            shapes.append(layer)
        return shapes

    def check_params(self, params: Params) -> None:
        """Raise a ValueError naming the layer and the shapes when params do not fit this network."""
        check_params(self, params)

    def __repr__(self) -> str:
        acts = ", ".join(a.name for a in self.activations)
        dtype = jnp.dtype(self.dtype).name
        return f"Network(sizes={list(self.sizes)}, activations=[{acts}], bias={self.bias}, dtype={dtype})"


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
    acts = tuple(_activations.get(a) for a in activations)
    initializer = _initializers.get(init)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be True or False, got {bias!r}.")
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype (float16, bfloat16, float32, float64), got {dtype}.")

    def init_fn(key: PRNGKey) -> Params:
        keys = jax.random.split(key, n_layers)
        params = []
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
            layer = {"w": initializer(k, (n_in, n_out), dtype)}
            if bias:
                layer["b"] = jnp.zeros((n_out,), dtype)
            params.append(layer)
        return params

    net = Network(sizes, acts, bias, initializer, dtype, init_fn, None)  # type: ignore[arg-type]

    def apply_fn(params: Params, x: ArrayLike) -> Array:
        x2, single = check_input(net, params, x)
        _, outs = forward(net, params, x2)
        return outs[-1][0] if single else outs[-1]

    return net._replace(apply=apply_fn)


def check_params(net: Network, params: Params) -> None:
    """Raise ValueError naming the layer, expected and actual shapes when ``params`` do not fit ``net``."""
    if not isinstance(net, Network):
        raise TypeError(f"Expected a Network (from fnn.mlp) as net, got {type(net).__name__}: {net!r:.80}.")
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"params must be a list of {net.num_layers} layer dicts, got {type(params).__name__}.")
    if len(params) != net.num_layers:
        raise ValueError(
            f"params have {len(params)} layer(s) but the network {list(net.sizes)} has {net.num_layers}."
        )
    for l, (layer, expected) in enumerate(zip(params, net.param_shapes(), strict=True)):
        if not isinstance(layer, dict):
            raise TypeError(
                f"Layer {l}: params must be a dict with keys {sorted(expected)}, got {type(layer).__name__}."
            )
        if "b" in layer and layer["b"] is None:
            raise ValueError(
                f'Layer {l}: params have "b": None; a layer without bias has no "b" key (omit it, as '
                f"fnn.mlp(..., bias=False) does), and a layer with bias needs a bias array of shape "
                f"{expected.get('b', '(n_out,)')}."
            )
        got_keys = sorted(layer)
        if got_keys != sorted(expected):
            raise ValueError(f"Layer {l}: expected params with keys {sorted(expected)}, got keys {got_keys}.")
        for name, shape in expected.items():
            actual = tuple(jnp.shape(layer[name]))
            if actual != shape:
                raise ValueError(f"Layer {l}: expected {name} of shape {shape}, got {actual}.")
            dtype = getattr(layer[name], "dtype", None)
            dtype = np.asarray(layer[name]).dtype if dtype is None else dtype
            if not jnp.issubdtype(dtype, jnp.floating):  # complex is inexact, but not a real float
                raise TypeError(f"Layer {l}: expected {name} of a floating dtype (float16, bfloat16, float32 or "
                                f"float64), got params[{l}][{name!r}] of dtype {dtype}{_dtype_hint(dtype)}.")


def check_input(net: Network, params: Params, x: ArrayLike) -> tuple[Array, bool]:
    """Validate params and input; return ``x`` as ``(batch, n_in)`` in the params' dtype and whether it was 1-D."""
    check_params(net, params)
    x = numeric_array("x", x)
    if x.ndim not in (1, 2):
        raise ValueError(
            f"Input must have shape ({net.sizes[0]},) or (batch, {net.sizes[0]}), got shape {x.shape} (rank {x.ndim})."
        )
    if x.shape[-1] != net.sizes[0]:
        raise ValueError(
            f"Layer 0: expected {net.sizes[0]} input features, got {x.shape[-1]} (input shape {x.shape})."
        )
    single = x.ndim == 1
    x = x[None, :] if single else x
    dtype = params[0]["w"].dtype
    if isinstance(x, np.ndarray) and not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(dtype)  # integers on the host, at full width: jnp.asarray would wrap int64 to int32 first
    return jnp.asarray(x).astype(dtype), single


def _dtype_hint(dtype) -> str:
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return "; fnn's networks are real-valued and JAX would drop the imaginary part (pass .real explicitly)"
    if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        return ("; it holds no numbers (an object or string column, e.g. from pandas, must be encoded as numbers "
                "first: df.to_numpy(dtype='float32'))")
    return ""


def numeric_array(name: str, value):
    """``value`` as an array of real numbers, without narrowing it: a JAX array (or tracer) as it is, anything
    else as a NumPy array at full width (``jnp.asarray`` turns int64 into int32 when JAX runs without x64,
    wrapping 2**31 to -2**31, so integers are checked and cast on the host first).

    Raises:
      TypeError: naming ``name`` and the dtype, for arrays of objects or strings (a stray pandas column, which
        JAX would refuse with "Error interpreting argument") and for complex numbers (whose imaginary part a
        cast to the params' dtype would drop with only a warning).
    """
    if not isinstance(value, jax.Array):  # tracers are jax.Arrays too: their dtype is checked, never converted
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as e:  # ragged nested lists
            raise TypeError(f"{name} must be an array of numbers, got a {type(value).__name__} NumPy cannot turn "
                            f"into one ({e}).") from None
    dtype = value.dtype
    real = jnp.issubdtype(dtype, jnp.bool_) or jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    if not real:
        raise TypeError(f"{name} must be an array of real numbers, got dtype {dtype}{_dtype_hint(dtype)}.")
    return value


def forward(net: Network, params: Params, x: Array) -> tuple[list[Array], list[Array]]:
    """The forward pass on a batch ``(batch, n_in)`` keeping every layer: returns ``(zs, activations)``.

    ``zs[l]`` and ``activations[l]`` are the pre-activation and activation of layer ``l`` (``(batch, n_l)``).
    No validation: callers check with :func:`check_input`.
    """
    zs, outs = [], []
    a = x
    for layer, act in zip(params, net.activations, strict=True):
        z = a @ layer["w"]
        if "b" in layer:
            z = z + layer["b"][None, :]  # explicit: (batch, n) + (1, n), no implicit rank promotion
        a = act.forward(z)
        zs.append(z)
        outs.append(a)
    return zs, outs
