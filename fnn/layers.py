"""Layers, each with its forward pass and hand-written backward pass side by side.

A constructor (``Dense(30)``) returns a :class:`Spec`; :func:`fnn.serial` binds every spec to the shape it
receives, giving the :class:`~fnn._layer.Layer` records the generic loops of :mod:`fnn._layer` run. Shapes are
per example; arrays carry a leading batch axis ``N``. ``g`` is the upstream gradient ``dL/dy``.

=============  ===========================  ==============================================  ======================
layer          forward                      backward (hand-written)                         params
=============  ===========================  ==============================================  ======================
Dense          z = x w + b,  y = f(z)       δ = f.backward(z, y, g) (= g ⊙ f'(z)),           {"w": (n_in, n_out),
                                            dw = xᵀ δ,  db = Σ_N δ,  dx = δ wᵀ               "b": (n_out,)}
Activation     y = f(x)                     δ = dx = f.backward(x, y, g)                     {}
Dropout(p)     y = x ⊙ m / (1 - p)          dx = g ⊙ m / (1 - p)  (training mode;            {}
               m ~ Bernoulli(1 - p)         identity in inference mode)
Residual(f…)   y = x + f(x)                 dx = g + (df)ᵀ g  (the inner layers' loop)       [inner params, …]
Conv2D         z = conv(x, w) + b, y = f(z)  dw = im2col(x)ᵀ δ, db = Σ δ,                     {"w": (kh, kw, c_in, F),
                                            dx = conv(dilate(δ), flip(w)ᵀ)  (:mod:`fnn.conv`)  "b": (F,)}
MaxPool2D      y = max of each window       δ routed to the window's first maximum           {}
AvgPool2D      y = mean of each window      g / (kh·kw) to every input of the window         {}
Flatten        y = x.reshape(N, -1)         dx = g.reshape(x.shape)  (NHWC row-major)        {}
LayerNorm      y = γ x̂ + β, x̂ over features  dx = (γ/σ)(g − mean g − x̂ mean(g x̂))  (per example) {"scale", "offset"}
BatchNorm      y = γ x̂ + β, x̂ over batch     the same over the batch (:mod:`fnn.normalization`);  {"scale", "offset"}
                                            state {"mean", "var"}: running statistics
=============  ===========================  ==============================================  ======================

Images are NHWC (per-example ``(H, W, C)``); :mod:`fnn.conv` and :mod:`fnn.pooling` write out the formulas.

Conventions: Dense's ``w`` acts on row vectors (the textbook's ``W`` is ``w.T``); biases start at zero; a
Dense without bias has no ``"b"`` key. Dropout is inverted dropout (kept units scaled by ``1/(1 - p)``, so the
expected output equals the input) and active only in training mode; its mask is drawn from raw 32-bit random
words, per example from ``fold_in(key, row)`` where ``row`` is the example's index in its mini-batch, so the
mask is independent of the dtype and a sharded batch sees the masks of the whole batch; a unit is kept when its
word is ``>= round(p · 2³²)``. ``rate=0`` is the identity. A Residual's inner layers must map its input shape
to itself.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _layer
from fnn import activations as _activations
from fnn import initializers as _initializers
from fnn._factors import Factor
from fnn._layer import Spec
from fnn.conv import Conv2D, Flatten
from fnn.normalization import BatchNorm, LayerNorm
from fnn.pooling import AvgPool2D, MaxPool2D

__all__ = ["Spec", "Dense", "Dropout", "Residual", "Activation", "Conv2D", "MaxPool2D", "AvgPool2D", "Flatten",
           "LayerNorm", "BatchNorm", "as_spec", "from_description", "KINDS"]


def _flat(kind: str, shape: tuple[int, ...], where: str) -> int:
    if len(shape) != 1:
        raise ValueError(f"Layer {where} ({kind}): expects a flat input of shape (n,), got per-example shape {shape}"
                         f"; put a Flatten() before it.")
    return shape[0]


# --- Dense --------------------------------------------------------------------------------------------

def Dense(units: int, activation="identity", *, bias: bool = True, init="glorot_uniform") -> Spec:
    """A fully connected layer ``y = f(x w + b)``; params ``{"w": (n_in, units), "b": (units,)}``.

    Args:
      units: output width.
      activation: a name or :class:`~fnn.activations.Activation` record (default ``"identity"``).
      bias: give the layer a bias ``"b"`` (zeros at init); ``False`` drops the key.
      init: the weight initializer's name or record (:mod:`fnn.initializers`).

    Backward: ``δ = f.backward(z, y, g)``, ``dw = xᵀ δ``, ``db = Σ_batch δ``, ``dx = δ wᵀ``. Trace values:
    ``"z"`` and ``"delta"`` (= dL/dz).
    """
    units = _layer.positive_int("Dense", "units", units)
    act = _activations.get(activation)
    initializer = _initializers.get(init)
    if not isinstance(bias, bool):
        raise TypeError(f"Dense: bias must be True or False, got {bias!r}.")
    config = {"units": units, "activation": act.name, "bias": bias, "init": initializer.name}

    def bind(shape, where):
        n_in = _flat("Dense", shape, where)
        shapes = {"w": (n_in, units), **({"b": (units,)} if bias else {})}

        def init_fn(key, dtype):
            p = {"w": initializer(key, (n_in, units), dtype)}
            if bias:
                p["b"] = jnp.zeros((units,), dtype)
            return p

        def forward(p, x, ctx):
            z = x @ p["w"]
            if "b" in p:
                z = z + p["b"][None, :]  # explicit: (batch, n) + (1, n), no implicit rank promotion
            return act.forward(z), {"z": z}

        def backward(p, x, y, aux, g, ctx, at_z):
            z = aux["z"]
            delta = g if at_z else act.backward(z, y, g)
            grads = {"w": x.T @ delta}
            if "b" in p:
                grads["b"] = jnp.sum(delta, axis=0)
            return grads, delta @ p["w"].T, {"z": z, "delta": delta}

        def factors(p, trace):
            delta = trace.values["delta"]
            out = {"w": Factor.dense(trace.input, delta, (n_in, units))}
            if "b" in p:
                out["b"] = Factor.dense(None, delta, (units,))
            return out

        def rforward(p, v, record, rx, ctx):
            x, y, aux = record
            rz = x @ v["w"] if rx is None else x @ v["w"] + rx @ p["w"]
            if "b" in p:
                rz = rz + v["b"][None, :]
            return act.jvp(aux["z"], y, rz), {"rz": rz}

        def rbackward(p, v, record, raux, rx, trace, rg, ctx, at_z):
            x, y, aux = record
            rdelta = rg if at_z else act.backward(aux["z"], y, rg)
            if trace is not None and not at_z:
                rdelta = rdelta + act.second(aux["z"], y, trace.grad, raux["rz"])
            rgrads, rdx = {"w": x.T @ rdelta}, rdelta @ p["w"].T
            if trace is not None:  # R{δ wᵀ} = Rδ wᵀ + δ vᵀ,  R{xᵀδ} = xᵀ Rδ + Rxᵀ δ
                delta = trace.values["delta"]
                rdx = rdx + delta @ v["w"].T
                if rx is not None:
                    rgrads["w"] = rgrads["w"] + rx.T @ delta
            if "b" in p:
                rgrads["b"] = jnp.sum(rdelta, axis=0)
            return rgrads, rdx

        return _layer.Layer("Dense", config, shape, (units,), act, shapes, init_fn, forward, backward, factors,
                            rforward=rforward, rbackward=rbackward)

    return Spec("Dense", config, bind)


# --- Activation ---------------------------------------------------------------------------------------

def Activation(activation) -> Spec:
    """An activation as a layer of its own, ``y = f(x)``; no params. A bare name or record in
    :func:`fnn.serial` means the same. Trace values: ``"z"`` (its input) and ``"delta"`` (= dL/dz)."""
    act = _activations.get(activation)

    def bind(shape, where):
        def forward(p, x, ctx):
            return act.forward(x), {"z": x}

        def backward(p, x, y, aux, g, ctx, at_z):
            delta = g if at_z else act.backward(x, y, g)
            return {}, delta, {"z": x, "delta": delta}

        def rforward(p, v, record, rx, ctx):
            x, y, _ = record
            rz = jnp.zeros_like(x) if rx is None else rx
            return (None if rx is None else act.jvp(x, y, rx)), {"rz": rz}

        def rbackward(p, v, record, raux, rx, trace, rg, ctx, at_z):
            x, y, _ = record
            if at_z:
                return {}, rg
            rdx = act.backward(x, y, rg)
            if trace is not None and rx is not None:
                rdx = rdx + act.second(x, y, trace.grad, rx)
            return {}, rdx

        return _layer.Layer("Activation", {"activation": act.name}, shape, shape, act, {}, _layer.no_params, forward,
                            backward, _layer.no_factors, rforward=rforward, rbackward=rbackward)

    return Spec("Activation", {"activation": act.name}, bind)


# --- Dropout ------------------------------------------------------------------------------------------

def Dropout(rate: float) -> Spec:
    """Inverted dropout: in training mode each unit is kept with probability ``1 - rate`` and scaled by
    ``1 / (1 - rate)``; in inference mode the identity. No params.

    The mask is drawn from raw 32-bit words (module docstring); the same key gives the same mask in
    ``backprop``, ``autodiff``, the custom_vjp bridges and ``fit``. Trace values: ``"mask"``, the kept units as
    booleans ``(batch, *shape)`` (training mode with ``rate > 0`` only).

    Raises:
      ValueError: ``rate`` outside [0, 1). TypeError: ``rate`` is not a real number.
    """
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real):
        raise TypeError(f"Dropout: rate must be a number in [0, 1) (the fraction of units dropped), got "
                        f"{type(rate).__name__} {rate!r}.")
    if not 0 <= rate < 1:
        raise ValueError(f"Dropout: rate must be a number in [0, 1) (the fraction of units dropped), got {rate!r}.")
    rate = float(rate)
    threshold = min(round(rate * 2**32), 2**32 - 1)

    def bind(shape, where):
        def forward(p, x, ctx):
            if not ctx.train or rate == 0:
                return x, {}
            rows = jnp.arange(x.shape[0], dtype=jnp.int32) if ctx.rows is None else ctx.rows
            words = jax.vmap(lambda r: jax.random.bits(jax.random.fold_in(ctx.key, r), shape, jnp.uint32))(rows)
            keep = words >= jnp.uint32(threshold)
            scale = keep.astype(x.dtype) * jnp.asarray(1 / (1 - rate), x.dtype)
            return x * scale, {"keep": keep, "scale": scale}

        def backward(p, x, y, aux, g, ctx, at_z):
            if "keep" not in aux:
                return {}, g, {}
            return {}, g * aux["scale"], {"mask": aux["keep"]}

        def rforward(p, v, record, rx, ctx):  # linear in x (the mask fixed)
            aux = record[2]
            return (rx if rx is None or "scale" not in aux else rx * aux["scale"]), {}

        def rbackward(p, v, record, raux, rx, trace, rg, ctx, at_z):
            aux = record[2]
            return {}, (rg * aux["scale"] if "scale" in aux else rg)

        return _layer.Layer("Dropout", {"rate": rate}, shape, shape, None, {}, _layer.no_params, forward, backward,
                            _layer.no_factors, stochastic=rate > 0, rforward=rforward, rbackward=rbackward)

    return Spec("Dropout", {"rate": rate}, bind)


# --- Residual -----------------------------------------------------------------------------------------

def Residual(*layers) -> Spec:
    """A skip connection ``y = x + f(x)``, ``f`` the inner layers in order; params: a list, one entry per inner
    layer. Backward: the inner layers' generic loop gives ``(df)ᵀ g``, and ``dx = g + (df)ᵀ g``.

    Trace values: ``"layers"``, the inner layers' :class:`~fnn._layer.LayerTrace` (paths ``l.0``, ``l.1``, ...).

    Raises:
      ValueError: no inner layer, or inner layers whose output shape differs from the block's input shape.
    """
    if not layers:
        raise ValueError("Residual needs at least one inner layer, e.g. Residual(Dense(64, activation='tanh')).")
    specs = tuple(as_spec(s, f"Residual's inner layer {i}") for i, s in enumerate(layers))

    def bind(shape, where):
        inner, s = [], shape
        for i, spec in enumerate(specs):
            layer = spec.bind(s, f"{where}.{i}")
            inner.append(layer)
            s = layer.output_shape
        if s != tuple(shape):
            raise ValueError(f"Layer {where} (Residual): its inner layers map the input shape {tuple(shape)} to {s}; "
                             f"x + f(x) needs f to keep the shape (the last inner layer must output {tuple(shape)}).")
        inner = tuple(inner)
        stateful = any(layer.init_state is not None for layer in inner)

        def init_fn(key, dtype):
            keys = jax.random.split(key, len(inner))
            return [layer.init(k, dtype) for layer, k in zip(inner, keys, strict=True)]

        def forward(p, x, ctx):
            if stateful:  # ctx.state is this block's entry: one per inner layer
                fx, records = _layer.forward(inner, p, x, ctx)
                return x + fx, {"records": records, "state": _layer.new_state(records, ctx.state)}
            fx, records = _layer.forward(inner, p, x, ctx._replace(state=None))
            return x + fx, {"records": records}

        def backward(p, x, y, aux, g, ctx, at_z):
            grads, dx, traces = _layer.backward(inner, p, aux["records"], g, ctx)
            return grads, g + dx, {"layers": traces}

        def rforward(p, v, record, rx, ctx):
            rfx, rrecords = _layer.rforward(inner, p, v, record[2]["records"], rx, ctx)
            return (rfx if rx is None else rx + rfx), {"records": rrecords}

        def rbackward(p, v, record, raux, rx, trace, rg, ctx, at_z):
            traces = None if trace is None else trace.values["layers"]
            rgrads, rdx = _layer.rbackward(inner, p, v, record[2]["records"], raux["records"], traces, rg, ctx)
            return rgrads, rg + rdx

        return _layer.Layer("Residual", {"layers": specs}, shape, shape, None, [lay.param_shapes for lay in inner],
                            init_fn, forward, backward, None, any(lay.stochastic for lay in inner), inner,
                            (lambda dtype: _layer.init_state(inner, dtype)) if stateful else None, rforward,
                            rbackward)

    return Spec("Residual", {"layers": specs}, bind)


# --- specs from names and descriptions -----------------------------------------------------------------

def as_spec(value, where: str) -> Spec:
    """``value`` as a :class:`Spec`: a spec as it is; an activation name or record as :func:`Activation`."""
    if isinstance(value, Spec):
        return value
    if isinstance(value, (str, _activations.Activation)):
        try:
            return Activation(value)
        except ValueError as e:
            raise ValueError(f"{where}: {value!r} is neither a layer nor an activation name. {e}") from None
    raise TypeError(f"{where}: expected a layer (fnn.layers.Dense(...), ...) or an activation name, "
                    f"got {type(value).__name__}: {value!r:.80}.")


#: Layer constructors by kind, for :func:`from_description`.
KINDS: dict[str, Callable[..., Spec]] = {"Dense": Dense, "Activation": Activation, "Dropout": Dropout,
                                         "Residual": Residual, "Conv2D": Conv2D, "MaxPool2D": MaxPool2D,
                                         "AvgPool2D": AvgPool2D, "Flatten": Flatten, "LayerNorm": LayerNorm,
                                         "BatchNorm": BatchNorm}


def from_description(desc: dict) -> Spec:
    """The spec :meth:`Spec.describe` described (as written in checkpoints and run folders)."""
    if not isinstance(desc, dict) or desc.get("kind") not in KINDS:
        kind = desc.get("kind") if isinstance(desc, dict) else desc
        raise ValueError(f"Unknown layer kind {kind!r} in a network description; known kinds: {', '.join(KINDS)}.")
    config = {k: v for k, v in desc.items() if k != "kind"}
    if desc["kind"] == "Residual":  # its inner layers are descriptions too
        return Residual(*[from_description(d) for d in config["layers"]])
    return KINDS[desc["kind"]](**config)

