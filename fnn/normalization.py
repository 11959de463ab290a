"""Layer and batch normalisation, each with its hand-written backward pass; batch norm's running statistics are
explicit state.

Both normalise over the **last axis's groups**: features of a flat input ``(N, F)``, channels of an NHWC image
``(N, H, W, C)``; params ``{"scale": (F,), "offset": (F,)}`` (ones and zeros at init; ``scale=False`` /
``offset=False`` drop a key). With ``x̂ = (x − μ) / σ``, ``σ = sqrt(var + eps)`` (eps inside the square root, the
**biased** variance, as ``torch.nn.functional.layer_norm``/``batch_norm`` and Flax compute them)::

    y = γ ⊙ x̂ + β

* ``LayerNorm``: μ and var of each example (and image position) over its ``F`` features.
* ``BatchNorm``: μ and var of each feature over the batch (and the image positions): ``M`` values per feature.

Backward, from ``g = dL/dy`` (the compact form; means over the same values as the forward's statistics)::

    dγ = Σ g ⊙ x̂,   dβ = Σ g          (sums over the batch and positions)
    dx = (γ / σ) ⊙ (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂))
       = (γ/σ)/M · (M·g − Σ g − x̂ · Σ(g ⊙ x̂))           (BatchNorm; LayerNorm the same over features)

derived in ``examples/notebooks/batchnorm_backprop.ipynb`` step by step. In inference mode BatchNorm is the
affine map ``y = γ (x − running_mean) / sqrt(running_var + eps) + β`` and ``dx = g γ / sqrt(running_var + eps)``.

**BatchNorm's state** is ``{"mean": (F,), "var": (F,)}`` (zeros and ones at init), one entry of the network's
state (:meth:`fnn.Network.init_state`). In training mode it normalises with the batch statistics and returns
the updated running statistics::

    running_mean = momentum · running_mean + (1 − momentum) · μ_batch
    running_var  = momentum · running_var  + (1 − momentum) · var_batch · M / (M − 1)   (unbiased, as PyTorch keeps it)

(``momentum=0.9`` is PyTorch's ``momentum=0.1``: PyTorch weighs the new batch by its momentum, fnn, like Flax and
Keras, the old statistics). A training-mode batch with ``M = 1`` value per feature is a ValueError: its
unbiased variance does not exist. Inside ``shard_map`` (``ctx.axis_name``) the statistics are of the **global**
batch: μ and var (and the backward's ``mean(g)``, ``mean(g ⊙ x̂)``) are ``lax.pmean``-ed over the devices — a
synchronised BatchNorm, equal to one device on the whole batch. Statistics are computed in float32 for
float16/bfloat16 inputs. Per-example gradients do not exist for BatchNorm (its examples interact through the
batch statistics): its record has no ``factors``. Trace values: ``"x_hat"``, ``"mean"``, ``"var"`` (the
statistics used: the batch's in training mode, the running ones in inference mode).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _layer
from fnn._factors import Factor
from fnn._layer import Spec

__all__ = ["LayerNorm", "BatchNorm"]


def _check(kind: str, eps, scale, offset, momentum=None) -> dict:
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"{kind}: eps must be a positive number (added to the variance), got {eps!r}.")
    for name, value in (("scale", scale), ("offset", offset)):
        if not isinstance(value, bool):
            raise TypeError(f"{kind}: {name} must be True or False, got {value!r}.")
    config = {"eps": float(eps), "scale": scale, "offset": offset}
    if momentum is not None:
        if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real) or not 0 <= momentum < 1:
            raise ValueError(f"{kind}: momentum must be a number in [0, 1) (the weight of the old running "
                             f"statistics), got {momentum!r}.")
        config = {"momentum": float(momentum), **config}
    return config


def _stats_dtype(dtype):
    return jnp.float32 if jnp.dtype(dtype) in (jnp.float16, jnp.bfloat16) else dtype


def _affine_params(config, features: int):
    shapes = {**({"scale": (features,)} if config["scale"] else {}),
              **({"offset": (features,)} if config["offset"] else {})}

    def init(key, dtype):
        return {**({"scale": jnp.ones((features,), dtype)} if config["scale"] else {}),
                **({"offset": jnp.zeros((features,), dtype)} if config["offset"] else {})}

    return shapes, init


def _row(v, like):
    """A per-feature vector ``(F,)`` shaped to broadcast against ``like`` ``(N, ..., F)`` explicitly."""
    return v.astype(like.dtype).reshape((1,) * (like.ndim - 1) + (-1,))


def _apply_affine(p, x_hat, dtype):
    y = x_hat * _row(p["scale"], x_hat) if "scale" in p else x_hat
    if "offset" in p:
        y = y + _row(p["offset"], x_hat)
    return y.astype(dtype)


def _affine_grads(p, g, x_hat, axes):
    grads = {}
    if "scale" in p:
        grads["scale"] = jnp.sum(g * x_hat, axis=axes).astype(p["scale"].dtype)
    if "offset" in p:
        grads["offset"] = jnp.sum(g, axis=axes).astype(p["offset"].dtype)
    return grads


def _gamma(p, like):
    return _row(p["scale"], like) if "scale" in p else jnp.ones((1,) * like.ndim, like.dtype)


# --- LayerNorm -----------------------------------------------------------------------------------------------

def LayerNorm(eps: float = 1e-5, scale: bool = True, offset: bool = True) -> Spec:
    """Normalise each example over its features (the last axis): ``y = γ ⊙ (x − μ)/sqrt(var + eps) + β`` with the
    example's mean and biased variance; params ``{"scale": (F,), "offset": (F,)}``. Per-example, so it has
    per-example gradients and no state. Backward and conventions: the module docstring.

    Raises:
      ValueError / TypeError: eps not positive, scale/offset not booleans.
    """
    config = _check("LayerNorm", eps, scale, offset)

    def bind(shape, where):
        features = shape[-1]
        shapes, init = _affine_params(config, features)

        def forward(p, x, ctx):
            xs = x.astype(_stats_dtype(x.dtype))
            mean = jnp.mean(xs, axis=-1, keepdims=True)
            var = jnp.mean((xs - mean) ** 2, axis=-1, keepdims=True)
            inv = jax.lax.rsqrt(var + config["eps"])
            x_hat = (xs - mean) * inv
            return _apply_affine(p, x_hat, x.dtype), {"x_hat": x_hat, "inv": inv, "mean": mean[..., 0],
                                                      "var": var[..., 0]}

        def backward(p, x, y, aux, g, ctx, at_z):
            x_hat, inv = aux["x_hat"], aux["inv"]
            gs = g.astype(x_hat.dtype)
            axes = tuple(range(g.ndim - 1))
            dxh = gs * _gamma(p, gs)
            dx = inv * (dxh - jnp.mean(dxh, axis=-1, keepdims=True)
                        - x_hat * jnp.mean(dxh * x_hat, axis=-1, keepdims=True))
            return _affine_grads(p, gs, x_hat, axes), dx.astype(x.dtype), {
                "x_hat": x_hat, "mean": aux["mean"], "var": aux["var"]}

        def factors(p, trace):
            n = trace.grad.shape[0]
            g = trace.grad.astype(trace.values["x_hat"].dtype).reshape(n, -1, features)
            out = {}
            if "scale" in p:
                out["scale"] = Factor(None, g * trace.values["x_hat"].reshape(n, -1, features), (features,))
            if "offset" in p:
                out["offset"] = Factor(None, g, (features,))
            return out

        return _layer.Layer("LayerNorm", config, tuple(shape), tuple(shape), None, shapes, init, forward, backward,
                            factors)

    return Spec("LayerNorm", config, bind)


# --- BatchNorm -----------------------------------------------------------------------------------------------

def BatchNorm(momentum: float = 0.9, eps: float = 1e-5, scale: bool = True, offset: bool = True) -> Spec:
    """Normalise each feature (the last axis) over the batch and image positions: in training mode with the
    batch's mean and biased variance (updating the running statistics in the state), in inference mode with the
    running statistics; params ``{"scale": (F,), "offset": (F,)}``, state ``{"mean": (F,), "var": (F,)}``.
    Backward, state update and the synchronised form on a mesh: the module docstring.

    Raises:
      ValueError / TypeError: momentum outside [0, 1), eps not positive, scale/offset not booleans; at trace
        time, a training-mode batch with one value per feature.
    """
    config = _check("BatchNorm", eps, scale, offset, momentum)
    m = config["momentum"]

    def bind(shape, where):
        features = shape[-1]
        shapes, init = _affine_params(config, features)

        def init_state(dtype):
            sd = _stats_dtype(dtype)
            return {"mean": jnp.zeros((features,), sd), "var": jnp.ones((features,), sd)}

        def pmean(v, ctx):
            return v if ctx.axis_name is None else jax.lax.pmean(v, ctx.axis_name)

        def forward(p, x, ctx):
            if not isinstance(ctx.state, dict) or "mean" not in ctx.state:
                raise ValueError(f"Layer {where} (BatchNorm) needs the network's state: pass state= "
                                 f"(net.init_state() to start), got {ctx.state!r:.60}.")
            xs = x.astype(_stats_dtype(x.dtype))
            axes = tuple(range(x.ndim - 1))
            if not ctx.train:
                mean, var = _row(ctx.state["mean"], xs), _row(ctx.state["var"], xs)
                inv = jax.lax.rsqrt(var + config["eps"])
                x_hat = (xs - mean) * inv
                return _apply_affine(p, x_hat, x.dtype), {"x_hat": x_hat, "inv": inv, "mean": mean.reshape(-1),
                                                          "var": var.reshape(-1)}
            count = int(np.prod([x.shape[a] for a in axes]))
            if ctx.axis_name is not None:
                count *= jax.lax.axis_size(ctx.axis_name)
            if count == 1:
                raise ValueError(f"Layer {where} (BatchNorm): training mode needs more than one value per feature "
                                 f"to estimate the batch variance, got a batch of one (input shape "
                                 f"{x.shape}); use inference mode (train=False) or a larger batch.")
            mean = pmean(jnp.mean(xs, axis=axes, keepdims=True), ctx)
            var = pmean(jnp.mean((xs - mean) ** 2, axis=axes, keepdims=True), ctx)
            inv = jax.lax.rsqrt(var + config["eps"])
            x_hat = (xs - mean) * inv
            mean, var = mean.reshape(-1), var.reshape(-1)
            running = {"mean": m * ctx.state["mean"] + (1 - m) * mean.astype(ctx.state["mean"].dtype),
                       "var": m * ctx.state["var"] + (1 - m) * (var * (count / (count - 1))).astype(
                           ctx.state["var"].dtype)}
            running = jax.tree_util.tree_map(jax.lax.stop_gradient, running)
            return _apply_affine(p, x_hat, x.dtype), {"x_hat": x_hat, "inv": inv, "mean": mean, "var": var,
                                                      "state": running, "batch": True}

        def backward(p, x, y, aux, g, ctx, at_z):
            x_hat, inv = aux["x_hat"], aux["inv"]
            gs = g.astype(x_hat.dtype)
            axes = tuple(range(g.ndim - 1))
            dxh = gs * _gamma(p, gs)
            if aux.get("batch"):
                dx = inv * (dxh - pmean(jnp.mean(dxh, axis=axes, keepdims=True), ctx)
                            - x_hat * pmean(jnp.mean(dxh * x_hat, axis=axes, keepdims=True), ctx))
            else:
                dx = inv * dxh
            return _affine_grads(p, gs, x_hat, axes), dx.astype(x.dtype), {
                "x_hat": x_hat, "mean": aux["mean"], "var": aux["var"]}

        return _layer.Layer("BatchNorm", config, tuple(shape), tuple(shape), None, shapes, init, forward, backward,
                            None, init_state=init_state)

    return Spec("BatchNorm", config, bind)
