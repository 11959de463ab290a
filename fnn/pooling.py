"""Max and average pooling over NHWC images, each with its hand-written backward pass.

A window ``(kh, kw)`` slides with strides ``(sh, sw)`` (default: the window, non-overlapping) over the input,
padded as ``fnn._windows`` describes (default ``"VALID"``). With ``P[n,u,v,k,c]`` the window of output position
``(u, v)``, ``k = i·kw + j`` its positions in row-major order (``fnn._windows.patches``)::

    MaxPool2D:  y[n,u,v,c] = P[n,u,v,k*,c],  k* = argmax_k P[n,u,v,k,c]   (padding is -inf: it never wins)
                dP[n,u,v,k,c] = g[n,u,v,c] · [k = k*]                      (each δ routed to its window's max)
    AvgPool2D:  y[n,u,v,c] = Σ_k P[n,u,v,k,c] / (kh·kw)                   (padding counts as zeros)
                dP[n,u,v,k,c] = g[n,u,v,c] / (kh·kw)

and ``dx`` adds every window's ``dP`` back where it was read (``fnn._windows.unwindows``; overlapping windows
sum). Tiling windows (the default 2x2 pool of an even image) are cut out by a reshape instead of strided slices.

**Ties** in a max-pool window route the whole δ to one winner, the first maximum in row-major order (the
lowest ``k``: top row first, then leftmost), never split. The forward is written as that argmax followed by a
gather, so ``jax.grad`` of the forward routes ties exactly the same way (``jax.grad`` of ``jnp.max`` or
``lax.reduce_window`` would instead split a tie or pick by its own scan order); the tests pin it.

Average pooling divides by the full window size ``kh·kw`` also where the window covers padding (PyTorch's and
Flax's default, ``count_include_pad=True``).
"""

from __future__ import annotations

import jax.numpy as jnp

from fnn import _layer, _windows
from fnn._layer import Spec

__all__ = ["MaxPool2D", "AvgPool2D"]


def _pool(kind: str, window, stride, padding, make) -> Spec:
    kh, kw = _windows.pair(kind, "window", window)
    sh, sw = (kh, kw) if stride is None else _windows.pair(kind, "stride", stride)
    padding = _windows.padding_config(kind, padding)
    config = {"window": [kh, kw], "stride": [sh, sw], "padding": padding}

    def bind(shape, where):
        h, w, c = _windows.image_shape(kind, shape, where)
        geo = _windows.geometry(kind, where, (h, w), (kh, kw), (sh, sw), padding)
        forward, backward, rforward = make(geo)

        def rbackward(p, v, record, raux, rx, trace, rg, ctx, at_z):  # linear in g (max-pool: routing fixed)
            x, y, aux = record
            return backward(p, x, y, aux, rg, ctx, at_z)[:2]

        return _layer.Layer(kind, config, (h, w, c), (*geo.out, c), None, {}, _layer.no_params, forward, backward,
                            _layer.no_factors, rforward=rforward, rbackward=rbackward)

    return Spec(kind, config, bind)


def MaxPool2D(window, stride=None, padding="VALID") -> Spec:
    """Max pooling: each output is the largest input of its window; no params.

    Args:
      window: ``k`` or ``(kh, kw)``.
      stride: ``s`` or ``(sh, sw)``; None (default) means the window (non-overlapping windows).
      padding: ``"VALID"`` (default), ``"SAME"`` or an int smaller than the window; padding is ``-inf``.

    Backward: each δ goes to its window's maximum; a tie goes whole to the first maximum in row-major order
    (module docstring), as ``jax.grad`` of this forward does. Trace values: none (the routing is in the
    layer's input and output).
    """

    def make(geo):
        def forward(p, x, ctx):
            cols = jnp.moveaxis(_windows.windows(x, geo, -jnp.inf), 3, -1)  # (N,Ho,Wo,C,K)
            winner = jnp.argmax(cols, axis=-1)
            return jnp.take_along_axis(cols, winner[..., None], axis=-1)[..., 0], {"winner": winner}

        def backward(p, x, y, aux, g, ctx, at_z):
            k = geo.window[0] * geo.window[1]
            positions = jnp.arange(k).reshape(1, 1, 1, 1, k)
            routed = jnp.where(aux["winner"][..., None] == positions, g[..., None], jnp.zeros((), g.dtype))
            return {}, _windows.unwindows(jnp.moveaxis(routed, -1, 3), geo), {}

        def rforward(p, v, record, rx, ctx):  # R{y} = rx at each window's winner (piecewise linear)
            if rx is None:
                return None, {}
            cols = jnp.moveaxis(_windows.windows(rx, geo, 0), 3, -1)
            return jnp.take_along_axis(cols, record[2]["winner"][..., None], axis=-1)[..., 0], {}

        return forward, backward, rforward

    return _pool("MaxPool2D", window, stride, padding, make)


def AvgPool2D(window, stride=None, padding="VALID") -> Spec:
    """Average pooling: each output is the mean of its window (divided by ``kh·kw`` also where the window covers
    zero padding); no params.

    Args:
      window: ``k`` or ``(kh, kw)``.
      stride: ``s`` or ``(sh, sw)``; None (default) means the window (non-overlapping windows).
      padding: ``"VALID"`` (default), ``"SAME"`` or an int smaller than the window; padding is zeros.

    Backward: every input of a window receives ``g / (kh·kw)`` (summed over the windows it is in).
    """

    def make(geo):
        k = geo.window[0] * geo.window[1]

        def forward(p, x, ctx):
            return jnp.sum(_windows.windows(x, geo), axis=3) / jnp.asarray(k, x.dtype), {}

        def backward(p, x, y, aux, g, ctx, at_z):
            share = jnp.broadcast_to((g / jnp.asarray(k, g.dtype))[:, :, :, None, :], (*g.shape[:3], k, g.shape[3]))
            return {}, _windows.unwindows(share, geo), {}

        def rforward(p, v, record, rx, ctx):  # linear
            return (None if rx is None else forward(p, rx, ctx)[0]), {}

        return forward, backward, rforward

    return _pool("AvgPool2D", window, stride, padding, make)
