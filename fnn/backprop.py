"""The hand-written backpropagation, and the autodiff reference it is checked against.

The manual path uses no ``jax.grad``, ``jax.vjp``, ``jax.jvp``, ``jax.linearize`` or ``custom_vjp``: every
derivative comes from the :class:`~fnn.activations.Activation` and :class:`~fnn.losses.Loss` records. Layers
are counted from 0, as everywhere in fnn (layer ``l`` is ``params[l]`` and ``trace.z[l]``; ``L`` =
``net.num_layers - 1`` is the output layer). With ``a_{-1} = x``, ``z_l = a_{l-1} w_l + b_l`` and
``a_l = f_l(z_l)`` for layers ``l = 0..L``::

    delta_L = f_L.backward(z_L, a_L, dL/da_L)          (= dL/da_L ⊙ f_L'(z_L) when f_L is elementwise)
    delta_L = (a_L - y) / N                            (softmax + cross-entropy, sigmoid + binary CE)
    delta_l = f_l.backward(z_l, a_l, delta_{l+1} w_{l+1}ᵀ)
    dL/dw_l = a_{l-1}ᵀ delta_l        dL/db_l = Σ_batch delta_l

Softmax and log-softmax backward are vector-Jacobian products ``Jᵀg`` (log-softmax's Jacobian is not
symmetric). The loss value of a fused pair is computed from ``z_L`` (log-softmax, softplus) so logits of ±1e4
give finite losses and gradients.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import losses as _losses
from fnn._types import Array, ArrayLike, Grads, Params
from fnn.network import Network, check_input, check_params, forward, numeric_array

__all__ = [
    "Trace", "backprop", "autodiff", "objective", "per_example_grads", "manual_apply", "manual_objective",
    "loss_value",
]


class Trace(NamedTuple):
    """Everything the backward pass computed, one entry per layer (layer 0 is the first hidden layer).

    Attributes:
      x: the input batch ``(batch, n_in)`` (the input of layer 0).
      z: pre-activations ``z[l]`` of shape ``(batch, n_{l+1})``.
      a: activations ``a[l] = f_l(z[l])``; layer ``l``'s input is ``x`` for ``l = 0`` and ``a[l-1]`` after.
      delta: error terms ``delta[l] = dL/dz[l]``, same shapes as ``z``.
    """

    x: Array
    z: list[Array]
    a: list[Array]
    delta: list[Array]


def _prepare(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss):
    """Validate everything in plain Python (shapes are static under jit) and return 2-D arrays."""
    loss = _losses.get(loss)
    x2, single = check_input(net, params, x)
    if x2.shape[0] == 0:  # every loss is a batch mean: 0/0 would be a silent NaN
        raise ValueError(f"x must hold at least one example to compute a loss, got an empty batch of shape {x2.shape}.")
    y = numeric_array("y", y)  # not jnp.asarray: int64 labels must be range-checked before a cast to int32
    if single:
        y = y[None]
    elif y.ndim >= 1 and y.shape[0] != x2.shape[0]:
        raise ValueError(
            f"x and y have different batch sizes: x has {x2.shape[0]} examples, y has {y.shape[0]} (y shape {y.shape})."
        )
    y2 = _losses.check_targets(loss, y, net.sizes[-1], x2.shape[0], None if loss.sparse else x2.dtype)
    return loss, x2, y2


def _loss_and_output_delta(net: Network, loss: _losses.Loss, z: Array, a: Array, y: Array):
    """The loss value and ``delta_L = dL/dz_L``, by the closed form where the pair has one."""
    closed = _losses.fused(net.output, loss)
    if closed is not None:
        return closed.value(z, y), closed.delta(z, a, y)
    return loss.value(a, y), net.output.backward(z, a, loss.grad(a, y))


def loss_value(net: Network, loss: _losses.Loss, z: Array, a: Array, y: Array) -> Array:
    """The loss :func:`backprop` reports, from the output layer's pre-activation ``z`` and activation ``a``.

    A fused output/loss pair (softmax + cross-entropy, sigmoid + binary cross-entropy) is computed from ``z``
    (log-sum-exp, log-sigmoid), so logits of ±1e4 give a finite value; any other pair from ``a``.
    """
    closed = _losses.fused(net.output, loss)
    return closed.value(z, y) if closed is not None else loss.value(a, y)


def _backward(net: Network, params: Params, x: Array, zs, outs, delta: Array):
    """Propagate ``delta_L`` down the layers; return ``(grads, deltas, dL/dx)``."""
    n = net.num_layers
    grads: list = [None] * n
    deltas: list = [None] * n
    for l in reversed(range(n)):
        a_prev = x if l == 0 else outs[l - 1]
        deltas[l] = delta
        layer_grad = {"w": a_prev.T @ delta}
        if "b" in params[l]:
            layer_grad["b"] = jnp.sum(delta, axis=0)
        grads[l] = layer_grad
        upstream = delta @ params[l]["w"].T
        if l > 0:
            delta = net.activations[l - 1].backward(zs[l - 1], outs[l - 1], upstream)
    return grads, deltas, upstream


def backprop(
    net: Network,
    params: Params,
    x: ArrayLike,
    y: ArrayLike,
    loss,
    *,
    return_trace: bool = False,
) -> tuple[Array, Grads] | tuple[Array, Grads, Trace]:
    """Loss and gradients by the hand-written backward pass.

    Args:
      net: the network.
      params: its parameters.
      x: inputs ``(batch, n_in)`` or one example ``(n_in,)``.
      y: targets ``(batch, n_out)`` (``(batch,)`` integer labels for sparse losses; one example without the
        batch axis when ``x`` is 1-D).
      loss: a loss name or :class:`~fnn.losses.Loss` record.
      return_trace: also return the :class:`Trace` (``z``, ``a``, ``delta`` of every layer).

    Returns:
      ``(loss_value, grads)`` or ``(loss_value, grads, trace)``; ``grads`` has the structure of ``params``.

    Raises:
      ValueError / TypeError: input or targets that do not fit the network, unknown loss names.

    Example:
      >>> import jax, jax.numpy as jnp, fnn
      >>> net = fnn.mlp([3, 4, 2], hidden="tanh", output="softmax")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
      >>> loss, grads = fnn.backprop(net, params, x, y, "sparse_categorical_cross_entropy")
      >>> grads[0]["w"].shape
      (3, 4)
    """
    loss, x2, y2 = _prepare(net, params, x, y, loss)
    zs, outs = forward(net, params, x2)
    value, delta = _loss_and_output_delta(net, loss, zs[-1], outs[-1], y2)
    grads, deltas, _ = _backward(net, params, x2, zs, outs, delta)
    if return_trace:
        return value, grads, Trace(x2, zs, outs, deltas)
    return value, grads


def objective(net: Network, loss):
    """The scalar ``(params, x, y) -> loss`` that :func:`backprop` differentiates, for autodiff and checks.

    Fused pairs are computed from the output pre-activations exactly as in :func:`backprop`.
    """
    loss_rec = _losses.get(loss)
    if not isinstance(net, Network):
        raise TypeError(f"Expected a Network (from fnn.mlp) as net, got {type(net).__name__}.")

    def f(params: Params, x: ArrayLike, y: ArrayLike) -> Array:
        _, x2, y2 = _prepare(net, params, x, y, loss_rec)
        zs, outs = forward(net, params, x2)
        return loss_value(net, loss_rec, zs[-1], outs[-1], y2)

    return f


def autodiff(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss) -> tuple[Array, Grads]:
    """The reference: ``jax.value_and_grad`` of the same loss :func:`backprop` computes.

    Returns:
      ``(loss_value, grads)`` with grads in the structure of ``params``.
    """
    f = objective(net, loss)
    check_params(net, params)  # before jax.grad sees them: integer params would fail inside JAX
    return jax.value_and_grad(f)(params, x, y)


def per_example_grads(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss) -> Grads:
    """Gradients of each example's own loss, from one batched backward pass.

    Every loss is a mean over the batch, so ``delta_l[n] = dℓ_n/dz_l[n] / N``; each example's gradient is the
    outer product ``N · a_{l-1}[n] ⊗ delta_l[n]`` (and ``N · delta_l[n]`` for the bias). Equal to
    ``jax.vmap`` of per-example autodiff with each example as a batch of one.

    Returns:
      A pytree like ``params`` whose every leaf has a leading batch axis: ``w`` ``(batch, n_in, n_out)``.
    """
    _, _, trace = backprop(net, params, x, y, loss, return_trace=True)
    n = trace.x.shape[0]
    out = []
    for l, layer in enumerate(params):
        a_prev = trace.x if l == 0 else trace.a[l - 1]
        delta = trace.delta[l] * n
        g = {"w": a_prev[:, :, None] * delta[:, None, :]}
        if "b" in layer:
            g["b"] = delta
        out.append(g)
    return out


def manual_apply(net: Network):
    """``apply(params, x)`` whose ``jax.grad`` runs through the hand-written backward rules.

    A ``jax.custom_vjp`` bridge: the forward pass saves ``z`` and ``a`` of every layer, and the backward rule
    turns the upstream cotangent ``dL/da_L`` into ``delta_L = f_L.backward(z_L, a_L, ·)`` and runs the same
    recursion as :func:`backprop`. Compose it with any JAX loss, regulariser or optax code.

    Example:
      >>> f = fnn.manual_apply(net)
      >>> grads = jax.grad(lambda p: optax.l2_loss(f(p, x), y).mean())(params)  # doctest: +SKIP
    """

    if not isinstance(net, Network):
        raise TypeError(f"Expected a Network (from fnn.mlp) as net, got {type(net).__name__}.")

    @jax.custom_vjp
    def apply(params: Params, x: ArrayLike) -> Array:
        return net.apply(params, x)

    def fwd(params, x):
        x2, single = check_input(net, params, x)
        zs, outs = forward(net, params, x2)
        out = outs[-1][0] if single else outs[-1]
        # Residuals must be JAX values: keep x itself (its rank and dtype say how to shape dL/dx), not a bool
        # and a dtype object.
        return out, (params, x2, zs, outs, jnp.asarray(x))

    def bwd(res, g):
        params, x2, zs, outs, x = res
        single = x.ndim == 1
        g = g[None] if single else g
        delta = net.output.backward(zs[-1], outs[-1], g)
        grads, _, dx = _backward(net, params, x2, zs, outs, delta)
        dx = dx[0] if single else dx
        return grads, dx.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else _zero_cotangent(x)

    apply.defvjp(fwd, bwd)
    return apply


def _zero_cotangent(y):
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.inexact):
        return jnp.zeros_like(y)
    return np.zeros(y.shape, dtype=jax.dtypes.float0)


def manual_objective(net: Network, loss):
    """``(params, x, y) -> loss`` whose ``jax.grad`` with respect to params is the hand-written backprop.

    Unlike :func:`manual_apply` it keeps the closed forms of the fused output/loss pairs. The cotangent for
    ``x`` is the manual ``dL/dx``; for ``y`` it is zero (targets are data).
    """
    loss_rec = _losses.get(loss)
    if not isinstance(net, Network):
        raise TypeError(f"Expected a Network (from fnn.mlp) as net, got {type(net).__name__}.")

    @jax.custom_vjp
    def f(params: Params, x: ArrayLike, y: ArrayLike) -> Array:
        return backprop(net, params, x, y, loss_rec)[0]

    def fwd(params, x, y):
        _, x2, y2 = _prepare(net, params, x, y, loss_rec)
        zs, outs = forward(net, params, x2)
        value, delta = _loss_and_output_delta(net, loss_rec, zs[-1], outs[-1], y2)
        grads, _, dx = _backward(net, params, x2, zs, outs, delta)
        x_arr = jnp.asarray(x)
        dx = dx.reshape(x_arr.shape).astype(x_arr.dtype) if jnp.issubdtype(x_arr.dtype, jnp.inexact) else None
        return value, (grads, dx, _zero_cotangent(x) if dx is None else None, _zero_cotangent(y))

    def bwd(res, g):
        grads, dx, x_zero, y_zero = res
        scaled = jax.tree_util.tree_map(lambda t: g * t, grads)
        return scaled, (g * dx if dx is not None else x_zero), y_zero

    f.defvjp(fwd, bwd)

    @functools.wraps(f)
    def checked(params: Params, x: ArrayLike, y: ArrayLike) -> Array:
        # jax.custom_vjp turns x and y into JAX arrays before fwd runs (int64 -> int32 without x64, objects ->
        # JAX's "Error interpreting argument"): validate the caller's values on the host first.
        _prepare(net, params, x, y, loss_rec)
        return f(params, x, y)

    return checked
