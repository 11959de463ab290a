"""The layer protocol: a bound layer record, the mode context, and the generic forward and backward loops.

A layer spec (``fnn.layers.Dense(30)``, ...) is bound to its input shape by :func:`fnn.serial`, giving a
:class:`Layer`: one record holding ``init``, ``forward`` and a hand-written ``backward`` side by side, and its
output shape. Shapes are per example (no batch axis); arrays flowing through ``forward``/``backward`` carry a
leading batch axis. The backward pass of a network is :func:`backward`, the generic reverse loop over the
records; adding a layer never touches it.

Protocol (every function is pure and traceable)::

    init(key, dtype) -> params                       # a dict of arrays ({} without params), a list for blocks
    forward(params, x, ctx) -> (y, aux)              # aux: a dict of what backward needs ("z", "keep", ...)
    backward(params, x, y, aux, g, ctx, at_z) -> (grads, dx, values)
        # g = dL/dy (the upstream gradient); with at_z=True (only for the output layer of a fused
        # output/loss pair) g is already dL/dz of the layer's activation. grads has the structure of params,
        # dx = dL/dx, values = the layer's entries of the trace ("z", "delta" = dL/dz, "mask", "layers").
    factors(params, trace) -> {leaf: fnn._factors.Factor}   # each example's gradient, factored; None: no form
    init_state(dtype) -> state                       # only for layers with state (BatchNorm's running statistics)
    rforward(params, v, record, rx, ctx) -> (ry, raux)     # the R-operator of forward (Pearlmutter 1994)
    rbackward(params, v, record, raux, rx, trace, rg, ctx, at_z) -> (rgrads, rdx)   # ... and of backward

The R-operator ``R{·}`` is the directional derivative along ``v`` (a params-shaped vector) of everything the
passes compute: ``rforward`` gives ``ry = R{y}`` from ``rx = R{x}`` (None: the input does not depend on the
params) and the layer's ``v``; ``rbackward`` gives ``R{grads}`` and ``rdx = R{dL/dx}`` from ``rg = R{dL/dy}``,
``record = (x, y, aux)`` of the forward pass and the layer's first-order ``trace`` (:class:`LayerTrace`). With
``trace=None`` every term in the first-order error is dropped: that is the backward pass of the network
linearised at ``params``, which turns the Hessian-vector product into the generalised Gauss-Newton one
(:mod:`fnn.second_order`). Both are None for a layer without second-order rules (named in a ``ValueError``).

A layer with state reads its own entry as ``ctx.state`` in ``forward`` and returns the updated entry as
``aux["state"]`` (the same entry when nothing changes); :func:`new_state` collects them into the next state, one
entry per layer (``{}`` for a layer without state, a list for a block), like params.

Layers are counted from 0; a nested layer's key is ``fold_in(parent key, index)``, so every dropout layer at
path ``3.1`` has its own stream.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from fnn._types import Array, PRNGKey

__all__ = ["Context", "Spec", "Layer", "LayerTrace", "forward", "backward", "factors", "layer_context",
           "positive_int", "no_params", "no_factors", "init_state", "new_state", "check_factors", "rforward",
           "rbackward", "check_second_order"]


class Context(NamedTuple):
    """The mode a forward/backward pass runs in.

    Attributes:
      train: training mode (dropout active; batch statistics for normalisation layers).
      key: the PRNG key of this layer (None in inference mode, or when no layer needs one).
      axis_name: inside ``shard_map``, the mesh axis the batch is split over (None on one device).
      rows: the global index of each example of the batch within its mini-batch, ``(batch,)`` int32; dropout
        masks are drawn per row from ``fold_in(key, row)`` so a sharded batch gets the masks of the whole one.
        None means ``arange(batch)``.
      state: the network's state (one entry per layer) in a call; inside a layer's ``forward``, that layer's own
        entry (:func:`forward` hands each layer its entry). None for a network without state.
    """

    train: bool = False
    key: PRNGKey | None = None
    axis_name: str | None = None
    rows: Array | None = None
    state: Any = None


@dataclasses.dataclass(frozen=True)
class Spec:
    """An unbound layer: its kind, its JSON-able arguments and ``bind(input_shape, where) -> Layer``
    (``where`` is the layer's path, e.g. ``"3.1"``, for error messages)."""

    kind: str
    config: dict
    bind: Callable = dataclasses.field(repr=False, compare=False)

    def describe(self) -> dict:
        """``{"kind": ..., **config}``; ``fnn.layers.from_description`` rebuilds the spec."""
        config = dict(self.config)
        if "layers" in config:
            config["layers"] = [s.describe() for s in config["layers"]]
        return {"kind": self.kind, **config}


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a net is an lru_cache key of fit's programs
class Layer:
    """A layer bound to its input shape (what :func:`fnn.serial` holds, one per layer).

    Attributes:
      kind: the constructor's name ("Dense", "Dropout", "Residual", "Activation").
      config: the constructor's JSON-able arguments (``fnn.layers.from_description`` rebuilds the spec).
      input_shape / output_shape: per-example shapes.
      activation: the layer's activation record (Dense, Activation) or None; the output layer's activation is
        the one fused with a cross-entropy loss.
      param_shapes: the shape of every leaf, in the layout of the layer's params.
      init, forward, backward, factors: the protocol functions (module docstring); ``factors`` is None for a
        layer whose examples interact (no per-example gradient exists); a block's (``children``) come from its
        inner layers' (its trace's ``"layers"``).
      stochastic: needs a key in training mode (dropout).
      children: the bound inner layers of a block (Residual), else ().
      init_state: ``init_state(dtype) -> state`` for a layer with state (BatchNorm; a block with such inner
        layers), else None (its state entry is ``{}``).
      rforward, rbackward: the R-operator rules (module docstring), None where not written.
    """

    kind: str
    config: dict
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    activation: Any
    param_shapes: Any
    init: Callable
    forward: Callable
    backward: Callable
    factors: Callable | None = None
    stochastic: bool = False
    children: tuple = ()
    init_state: Callable | None = None
    rforward: Callable | None = None
    rbackward: Callable | None = None

    def __repr__(self) -> str:
        if self.children:
            return f"{self.kind}({', '.join(repr(child) for child in self.children)})"
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{self.kind}({args})"


class LayerTrace(NamedTuple):
    """What the backward pass saw at one layer: its input, its output, ``grad = dL/d(output)`` and ``values``,
    the layer's own entries (Dense/Activation: ``"z"`` and ``"delta" = dL/dz``; Dropout: ``"mask"``, the kept
    positions as booleans; Residual: ``"layers"``, the inner layers' traces)."""

    input: Array
    output: Array
    grad: Array
    values: dict


def positive_int(kind: str, name: str, value) -> int:
    """``value`` as a plain int (configs stay JSON-able); a ValueError naming the layer kind unless positive."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{kind}: {name} must be a positive int, got {value!r}.")
    return int(value)


def no_params(key, dtype):
    """``init`` of a layer without params."""
    return {}


def no_factors(p, trace):
    """``factors`` of a layer without params."""
    return {}


def layer_context(ctx: Context, index: int) -> Context:
    """The context of the layer at ``index`` within a parent whose context is ``ctx`` (its own key stream)."""
    if ctx.key is None:
        return ctx
    return ctx._replace(key=jax.random.fold_in(ctx.key, index))


def init_state(layers, dtype) -> list:
    """The initial state of ``layers``: one entry per layer, ``{}`` for a layer without state."""
    return [{} if layer.init_state is None else layer.init_state(dtype) for layer in layers]


def forward(layers, params, x: Array, ctx: Context):
    """Run ``layers`` in order; return ``(y, records)`` with ``records[l] = (input, output, aux)``. With
    ``ctx.state`` (one entry per layer) each layer sees its own entry as ``ctx.state``."""
    records = []
    for l, (layer, p) in enumerate(zip(layers, params, strict=True)):
        lctx = layer_context(ctx, l)
        if ctx.state is not None:
            lctx = lctx._replace(state=ctx.state[l])
        y, aux = layer.forward(p, x, lctx)
        records.append((x, y, aux))
        x = y
    return x, records


def new_state(records, state) -> list:
    """The state after a forward pass: each layer's ``aux["state"]``, or its entry of ``state`` unchanged."""
    return [aux.get("state", s) for (_, _, aux), s in zip(records, state, strict=True)]


def backward(layers, params, records, g: Array, ctx: Context, *, at_z: bool = False):
    """The generic reverse loop: ``g = dL/d(output)`` of the last layer (or its dL/dz with ``at_z``) down to the
    input. Returns ``(grads, dx, traces)``: grads in the structure of params, ``dx = dL/dx``, one
    :class:`LayerTrace` per layer."""
    n = len(layers)
    grads: list = [None] * n
    traces: list = [None] * n
    for l in reversed(range(n)):
        x, y, aux = records[l]
        grads[l], dx, values = layers[l].backward(params[l], x, y, aux, g, layer_context(ctx, l), at_z)
        traces[l] = LayerTrace(x, y, g, values)
        g, at_z = dx, False
    return grads, g, traces


def check_factors(layers, what: str, prefix: str = "") -> None:
    """Raise the ValueError of :func:`factors` before anything is computed, for a layer without factors."""
    for l, layer in enumerate(layers):
        if layer.children:
            check_factors(layer.children, what, f"{prefix}{l}.")
        elif layer.factors is None:
            raise ValueError(_no_factors(what, f"{prefix}{l}", layer.kind))


def _no_factors(what: str, path: str, kind: str) -> str:
    why = " through the batch statistics" if kind == "BatchNorm" else ""
    return (f"{what}: layer {path} ({kind}) has no per-example gradients (its examples interact{why}), so {what} "
            f"is not defined for this network.")


def factors(layers, params, traces, what: str, prefix: str = "") -> list:
    """Every layer's per-example gradient factors (:mod:`fnn._factors`) from its trace, in the structure of
    params; ``what`` names the quantity asked for in errors, ``prefix`` is the path of a parent block (``"3."``).

    Raises:
      ValueError: a layer without a per-example form, named by its path and kind.
    """
    out = []
    for l, (layer, p, t) in enumerate(zip(layers, params, traces, strict=True)):
        if layer.children:  # a block: its inner layers' factors, under its path
            out.append(factors(layer.children, p, t.values["layers"], what, f"{prefix}{l}."))
        elif layer.factors is None:
            raise ValueError(_no_factors(what, f"{prefix}{l}", layer.kind))
        else:
            out.append(layer.factors(p, t))
    return out


# --- the R-operator (second order) ---------------------------------------------------------------------

def check_second_order(layers, what: str, prefix: str = "") -> None:
    """Raise a ValueError naming the first layer (by path and kind) without R-operator rules, or whose
    activation record has no ``jvp``/``second``, before anything is computed."""
    for l, layer in enumerate(layers):
        path = f"{prefix}{l}"
        if layer.children:
            check_second_order(layer.children, what, f"{path}.")
        elif layer.rforward is None or layer.rbackward is None:
            raise ValueError(f"{what}: layer {path} ({layer.kind}) has no second-order (R-operator) rules written, "
                             f"so {what} is not available for this network; the layers with them are Dense, "
                             f"Activation, Dropout, Residual, Conv2D, MaxPool2D, AvgPool2D and Flatten.")
        elif layer.activation is not None and (layer.activation.jvp is None or layer.activation.second is None):
            raise ValueError(f"{what}: layer {path} ({layer.kind}) uses activation {layer.activation.name!r}, whose "
                             f"record has no jvp/second rule (fnn.activations.Activation's second-order fields).")


def rforward(layers, params, v, records, rx, ctx: Context):
    """The R-operator of :func:`forward` along ``v``: ``(R{output}, rrecords)`` with ``rrecords[l] = (rx, raux)``
    of layer ``l``; ``rx`` = R{input} (None: zero)."""
    rrecords = []
    for l, (layer, p, vl) in enumerate(zip(layers, params, v, strict=True)):
        lctx = layer_context(ctx, l)
        if ctx.state is not None:
            lctx = lctx._replace(state=ctx.state[l])
        ry, raux = layer.rforward(p, vl, records[l], rx, lctx)
        rrecords.append((rx, raux))
        rx = ry
    return rx, rrecords


def rbackward(layers, params, v, records, rrecords, traces, rg: Array, ctx: Context, *, at_z: bool = False):
    """The R-operator of :func:`backward`: ``(R{grads}, R{dL/dx})`` from ``rg`` = R{dL/d(output)} (R{dL/dz}
    with ``at_z``). ``traces`` is the first-order pass's list of :class:`LayerTrace`, or None for the
    linearised network (the Gauss-Newton product: first-order error terms dropped)."""
    n = len(layers)
    rgrads: list = [None] * n
    for l in reversed(range(n)):
        rx, raux = rrecords[l]
        trace = None if traces is None else traces[l]
        rgrads[l], rg = layers[l].rbackward(params[l], v[l], records[l], raux, rx, trace, rg, layer_context(ctx, l),
                                            at_z)
        at_z = False
    return rgrads, rg
