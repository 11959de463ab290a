"""Convolution and Flatten, each with its hand-written backward pass (NHWC images, HWIO kernels).

Notation, per layer: input ``x (N, H, W, C)``, padded input ``x̄`` (zeros; ``fnn._windows`` gives the
``"SAME"``/``"VALID"``/int arithmetic), kernel ``w (kh, kw, C, F)``, bias ``b (F,)``, strides ``(sh, sw)``, output
``Ho × Wo``, upstream gradient ``g = dL/dy``. Indices: ``n`` example, ``u, v`` output position, ``i, j`` window
position, ``c`` input channel, ``f`` filter.

Forward (a cross-correlation, as ``lax.conv_general_dilated`` and every deep-learning library compute)::

    z[n,u,v,f] = Σ_{i,j,c} x̄[n, u·sh + i, v·sw + j, c] · w[i,j,c,f] + b[f],    y = act(z)

Backward, written out from that sum (δ = dL/dz = ``act.backward(z, y, g)``)::

    db[f]      = Σ_{n,u,v} δ[n,u,v,f]
    dw[i,j,c,f] = Σ_{n,u,v} x̄[n, u·sh + i, v·sw + j, c] · δ[n,u,v,f]          (a correlation of input and δ)
    dx̄[n,p,q,c] = Σ_{u,v,f : p = u·sh + i, q = v·sw + j} δ[n,u,v,f] · w[i,j,c,f]  (a full convolution of the
                                                                                 stride-dilated δ with the
                                                                                 flipped kernel)

and ``dx`` is ``dx̄`` without its padding.

How each formula is evaluated, and why (jax 0.10.2 on CPU; ``docs/conv_scan.md`` and ``benchmarks/cnn.py``):

* ``z``: im2col + one GEMM: the ``kh·kw`` strided views of ``x̄`` stacked into patches ``P (N·Ho·Wo, kh·kw·C)``,
  ``z = P · w.reshape(kh·kw·C, F)``; ``P`` is kept for the backward pass. The forward is the same sum as
  ``lax.conv_general_dilated`` (the tests compare them), but ``jax.grad`` of that primitive inside
  ``lax.scan`` (where ``fnn.fit`` runs every step) leaves its backward convolutions in a non-canonical layout,
  off XLA's CPU fast path: ``fit(grads="autodiff")`` of the example CNN ran ~10x slower than with this
  forward, whose autodiff is GEMMs.
* ``dw = Pᵀ δ``: one GEMM on the forward's patches. The same sum as a convolution with swapped batch and
  feature axes is what falls off the fast path inside ``lax.scan`` (4x slower steps in that note's CNN).
* ``dx``: ``lax.conv_general_dilated`` of δ dilated by the strides (``lhs_dilation``) with the spatially flipped
  kernel, input and output channels swapped, padded by ``kh - 1 - lo`` above and ``kh - 1 - hi + r`` below
  (``r`` = the rows of ``x̄`` no window reads) — a canonical NHWC/HWIO convolution, fast in and out of scans.
  (The alternative, ``δ wᵀ`` scattered back by col2im, measured ~20% slower per training step.)
* per-example ``dw_n = P_nᵀ δ_n``: factored as the patches rebuilt from the trace's input and δ
  (:mod:`fnn._factors`; per-example gradients are one batched GEMM of the two).

``Flatten`` is NHWC row-major: ``y[n, (h·W + w)·C + c] = x[n, h, w, c]``; its backward is the inverse reshape.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from fnn import _layer, _windows
from fnn import activations as _activations
from fnn import initializers as _initializers
from fnn._factors import Factor
from fnn._layer import Spec

__all__ = ["Conv2D", "Flatten"]

_DIMS = ("NHWC", "HWIO", "NHWC")


def Conv2D(filters: int, kernel_size, *, stride=1, padding="SAME", activation="identity", bias: bool = True,
           init="glorot_uniform") -> Spec:
    """A 2-D convolution ``y = act(conv(x, w) + b)`` over NHWC images; params ``{"w": (kh, kw, c_in, filters),
    "b": (filters,)}`` (HWIO).

    Args:
      filters: output channels.
      kernel_size: ``k`` or ``(kh, kw)``.
      stride: ``s`` or ``(sh, sw)`` (default 1).
      padding: ``"SAME"`` (lax's: output ``ceil(H / s)``, the odd padding row/column at the bottom/right),
        ``"VALID"`` (none) or an int ``p`` (``p`` zeros on every side, ``p`` < the kernel size).
      activation: a name or :class:`~fnn.activations.Activation` record (default ``"identity"``).
      bias: give the layer a bias ``"b"`` (zeros at init); ``False`` drops the key.
      init: the kernel initializer (fans ``kh·kw·c_in`` and ``kh·kw·filters``, :mod:`fnn.initializers`).

    Backward: the module docstring's formulas, by hand. Trace values: ``"z"`` and ``"delta"`` (= dL/dz), images
    ``(N, Ho, Wo, filters)``.

    Raises:
      ValueError: bad sizes, a non-image input shape, a kernel larger than the padded image (naming the layer
        and both shapes).
    """
    filters = _layer.positive_int("Conv2D", "filters", filters)
    kh, kw = _windows.pair("Conv2D", "kernel_size", kernel_size)
    sh, sw = _windows.pair("Conv2D", "stride", stride)
    padding = _windows.padding_config("Conv2D", padding)
    act = _activations.get(activation)
    initializer = _initializers.get(init)
    if not isinstance(bias, bool):
        raise TypeError(f"Conv2D: bias must be True or False, got {bias!r}.")
    config = {"filters": filters, "kernel_size": [kh, kw], "stride": [sh, sw], "padding": padding,
              "activation": act.name, "bias": bias, "init": initializer.name}

    def bind(shape, where):
        h, w, c = _windows.image_shape("Conv2D", shape, where)
        geo = _windows.geometry("Conv2D", where, (h, w), (kh, kw), (sh, sw), padding)
        (ho, wo), pads = geo.out, geo.pads
        rest = tuple((p - k) % s for p, k, s in zip(geo.padded, (kh, kw), (sh, sw), strict=True))
        dx_pads = tuple((k - 1 - lo, k - 1 - hi + r) for k, (lo, hi), r in zip((kh, kw), pads, rest, strict=True))
        shapes = {"w": (kh, kw, c, filters), **({"b": (filters,)} if bias else {})}

        def init_fn(key, dtype):
            p = {"w": initializer(key, (kh, kw, c, filters), dtype)}
            if bias:
                p["b"] = jnp.zeros((filters,), dtype)
            return p

        def columns(x):
            return _windows.windows(x, geo).reshape(x.shape[0] * ho * wo, kh * kw * c)

        def forward(p, x, ctx):
            cols = columns(x)
            z = (cols @ p["w"].reshape(kh * kw * c, filters)).reshape(x.shape[0], ho, wo, filters)
            if "b" in p:
                z = z + p["b"][None, None, None, :]
            return act.forward(z), {"z": z, "columns": cols}

        def input_grad(delta, w):  # dx = conv(dilate(δ), flip(w)ᵀ): linear in δ and in w
            flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))  # (kh, kw, F, C)
            return lax.conv_general_dilated(delta, flipped, (1, 1), dx_pads, lhs_dilation=(sh, sw),
                                            dimension_numbers=_DIMS)

        def backward(p, x, y, aux, g, ctx, at_z):
            z = aux["z"]
            delta = g if at_z else act.backward(z, y, g)
            n = x.shape[0]
            d2 = delta.reshape(n * ho * wo, filters)
            grads = {"w": (aux["columns"].T @ d2).reshape(kh, kw, c, filters)}
            if "b" in p:
                grads["b"] = jnp.sum(d2, axis=0)
            return grads, input_grad(delta, p["w"]), {"z": z, "delta": delta}

        def rforward(p, v, record, rx, ctx):  # z is bilinear in (x, w): R{z} = conv(x, v_w) + conv(rx, w) + v_b
            x, y, aux = record
            rz = aux["columns"] @ v["w"].reshape(kh * kw * c, filters)
            rcols = None if rx is None else columns(rx)
            if rcols is not None:
                rz = rz + rcols @ p["w"].reshape(kh * kw * c, filters)
            rz = rz.reshape(x.shape[0], ho, wo, filters)
            if "b" in p:
                rz = rz + v["b"][None, None, None, :]
            return act.jvp(aux["z"], y, rz), {"rz": rz, "columns": rcols}

        def rbackward(p, v, record, raux, rx, trace, rg, ctx, at_z):
            x, y, aux = record
            n = x.shape[0]
            rdelta = rg if at_z else act.backward(aux["z"], y, rg)
            if trace is not None and not at_z:
                rdelta = rdelta + act.second(aux["z"], y, trace.grad, raux["rz"])
            rd2 = rdelta.reshape(n * ho * wo, filters)
            rw, rdx = aux["columns"].T @ rd2, input_grad(rdelta, p["w"])
            if trace is not None:  # the terms in δ: R{Pᵀδ} ∋ R{P}ᵀ δ,  R{dx(δ, w)} ∋ dx(δ, v_w)
                delta = trace.values["delta"]
                rdx = rdx + input_grad(delta, v["w"])
                if raux["columns"] is not None:
                    rw = rw + raux["columns"].T @ delta.reshape(n * ho * wo, filters)
            rgrads = {"w": rw.reshape(kh, kw, c, filters)}
            if "b" in p:
                rgrads["b"] = jnp.sum(rd2, axis=0)
            return rgrads, rdx

        def factors(p, trace):
            n = trace.input.shape[0]
            delta = trace.values["delta"].reshape(n, ho * wo, filters)
            out = {"w": Factor(columns(trace.input).reshape(n, ho * wo, kh * kw * c), delta, (kh, kw, c, filters))}
            if "b" in p:
                out["b"] = Factor(None, delta, (filters,))
            return out

        return _layer.Layer("Conv2D", config, (h, w, c), (ho, wo, filters), act, shapes, init_fn, forward, backward,
                            factors, rforward=rforward, rbackward=rbackward)

    return Spec("Conv2D", config, bind)


def Flatten() -> Spec:
    """Flatten each example to a vector, NHWC row-major (``y[n, (h·W + w)·C + c] = x[n, h, w, c]``, what
    ``x.reshape(n, -1)`` does); no params. Backward: ``dx = g.reshape(x.shape)``."""

    def bind(shape, where):
        size = math.prod(shape)

        def forward(p, x, ctx):
            return x.reshape(x.shape[0], size), {}

        def backward(p, x, y, aux, g, ctx, at_z):
            return {}, g.reshape(x.shape), {}

        def rforward(p, v, record, rx, ctx):
            return (None if rx is None else rx.reshape(rx.shape[0], size)), {}

        def rbackward(p, v, record, raux, rx, trace, rg, ctx, at_z):
            return {}, rg.reshape(record[0].shape)

        return _layer.Layer("Flatten", {}, tuple(shape), (size,), None, {}, _layer.no_params, forward, backward,
                            _layer.no_factors, rforward=rforward, rbackward=rbackward)

    return Spec("Flatten", {}, bind)

