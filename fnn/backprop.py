"""The hand-written backpropagation, and the autodiff reference it is checked against.

The manual path uses no ``jax.grad``, ``jax.vjp``, ``jax.jvp``, ``jax.linearize`` or ``custom_vjp``: every
derivative comes from the layer records (:mod:`fnn.layers`), the :class:`~fnn.activations.Activation` and
:class:`~fnn.losses.Loss` records, and the :mod:`fnn.penalties`; the backward pass is the generic reverse loop of
:mod:`fnn._layer` over the layers, each layer's ``backward`` beside its ``forward``. For a chain of Dense layers
(``fnn.mlp``), layers
are counted from 0, as everywhere in fnn (layer ``l`` is ``params[l]`` and ``trace.z[l]``; ``L`` =
``net.num_layers - 1`` is the output layer). With ``a_{-1} = x``, ``z_l = a_{l-1} w_l + b_l`` and
``a_l = f_l(z_l)`` for layers ``l = 0..L``::

    delta_L = f_L.backward(z_L, a_L, dL/da_L)          (= dL/da_L ⊙ f_L'(z_L) when f_L is elementwise)
    delta_L = (a_L - y) / N                            (softmax + cross-entropy, sigmoid + binary CE)
    delta_l = f_l.backward(z_l, a_l, delta_{l+1} w_{l+1}ᵀ)
    dL/dw_l = a_{l-1}ᵀ delta_l        dL/db_l = Σ_batch delta_l

Softmax and log-softmax backward are vector-Jacobian products ``Jᵀg`` (log-softmax's Jacobian is not
symmetric). The loss value of a fused pair is computed from ``z_L`` (log-softmax, softplus) so logits of ±1e4
give finite losses and gradients. The fused forms apply whether the output activation comes from the last
Dense layer's ``activation=`` or from a trailing activation layer.

Modes: ``train=None`` means training mode (dropout active) iff a ``key`` is given; ``train=True`` without a key
is a ValueError for a net with dropout. A ``penalty=`` (:mod:`fnn.penalties`) adds its value to the loss and its
hand-written gradient to the grads.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _factors, _layer
from fnn import losses as _losses
from fnn import penalties as _penalties
from fnn._types import Array, ArrayLike, Grads, Params, PRNGKey
from fnn.network import Network, check_input, check_params, check_state, context, numeric_array

__all__ = [
    "Trace", "backprop", "autodiff", "objective", "per_example_grads", "manual_apply", "manual_objective",
    "loss_value", "backprop_in", "autodiff_in", "prepare", "fused_pair",
]


class Trace(NamedTuple):
    """Everything the backward pass computed, one :class:`~fnn._layer.LayerTrace` per layer (counted from 0).

    Attributes:
      x: the input batch ``(batch, *input_shape)`` (the input of layer 0).
      layers: per layer: ``input``, ``output``, ``grad`` (= dL/d(output); dL/dz at a fused output layer) and
        ``values`` (Dense/Activation: ``"z"``, ``"delta"``; Dropout: ``"mask"``; Residual: ``"layers"``;
        LayerNorm/BatchNorm: ``"x_hat"``, ``"mean"``, ``"var"``).
      state: the network's state after the pass (BatchNorm's updated running statistics in training mode) when
        the call was given ``state=``, else None.

    ``z``, ``a`` and ``delta`` are lists over layers: for ``fnn.mlp`` networks the pre-activations ``z[l]``,
    activations ``a[l] = f_l(z[l])`` and error terms ``delta[l] = dL/dz[l]``; layer ``l``'s input is ``x`` for
    ``l = 0`` and ``a[l-1]`` after. For a layer without a pre-activation ``z[l]`` is None and ``delta[l]`` is
    dL/d(output).
    """

    x: Array
    layers: list
    state: list | None = None

    @property
    def z(self) -> list:
        return [t.values.get("z") for t in self.layers]

    @property
    def a(self) -> list:
        return [t.output for t in self.layers]

    @property
    def delta(self) -> list:
        return [t.values.get("delta", t.grad) for t in self.layers]

    @property
    def mask(self) -> list:
        """Each dropout layer's kept units (booleans), None for other layers and in inference mode."""
        return [t.values.get("mask") for t in self.layers]

    def at(self, path: str) -> _layer.LayerTrace:
        """The trace of the layer at ``path``: ``"3"``, or ``"3.1"`` for inner layer 1 of block 3."""
        parts = [int(p) for p in str(path).split(".")]
        t = self.layers[parts[0]]
        for p in parts[1:]:
            t = t.values["layers"][p]
        return t


def prepare(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss):
    """Validate everything in plain Python (shapes are static under jit) and return batched arrays."""
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
    y2 = _losses.check_targets(loss, y, net.output_shape[-1], x2.shape[0], None if loss.sparse else x2.dtype)
    return loss, x2, y2


def fused_pair(net: Network, loss: _losses.Loss):
    """The closed form (:class:`~fnn.losses.Fused`) of the net's output activation with ``loss``, or None."""
    return _losses.fused(net.output, loss) if net.layers[-1].activation is not None else None


def loss_value(net: Network, loss: _losses.Loss, z: Array, a: Array, y: Array) -> Array:
    """The loss :func:`backprop` reports, from the output layer's pre-activation ``z`` and output ``a``.

    A fused output/loss pair (softmax + cross-entropy, sigmoid + binary cross-entropy) is computed from ``z``
    (log-sum-exp, log-sigmoid), so logits of ±1e4 give a finite value; any other pair from ``a``.
    """
    closed = fused_pair(net, loss)
    return closed.value(z, y) if closed is not None else loss.value(a, y)


def _penalised(penalty, params, value):
    """The loss ``value`` plus ``penalty``'s value (``value`` itself without a penalty)."""
    return value if penalty is None else value + penalty.value(params).astype(value.dtype)


def backprop_in(net: Network, params: Params, x2: Array, y2: Array, loss: _losses.Loss, ctx: _layer.Context,
                penalty=None):
    """The hand-written pass on validated batches in a given context: ``(value, grads, dL/dx, trace)``.
    (:func:`backprop` validates first; the training core calls this with each device's context.)"""
    out, records = _layer.forward(net.layers, params, x2, ctx)
    closed = fused_pair(net, loss)
    if closed is not None:
        z = records[-1][2]["z"]
        value, g, at_z = closed.value(z, y2), closed.delta(z, out, y2), True
    else:
        value, g, at_z = loss.value(out, y2), loss.grad(out, y2), False
    grads, dx, traces = _layer.backward(net.layers, params, records, g, ctx, at_z=at_z)
    if penalty is not None:
        grads = jax.tree_util.tree_map(lambda g, d: g + d.astype(g.dtype), grads, penalty.grad(params))
    value = _penalised(penalty, params, value)
    state = None if ctx.state is None else _layer.new_state(records, ctx.state)
    return value, grads, dx, Trace(x2, traces, state)


def backprop(
    net: Network,
    params: Params,
    x: ArrayLike,
    y: ArrayLike,
    loss,
    *,
    key: PRNGKey | None = None,
    train: bool | None = None,
    penalty=None,
    state=None,
    return_trace: bool = False,
):
    """Loss and gradients by the hand-written backward pass.

    Args:
      net: the network (``fnn.mlp`` or ``fnn.serial``).
      params: its parameters.
      x: inputs ``(batch, *input_shape)`` or one example ``input_shape``.
      y: targets ``(batch, n_out)`` (``(batch,)`` integer labels for sparse losses; one example without the
        batch axis when ``x`` is one example).
      loss: a loss name or :class:`~fnn.losses.Loss` record.
      key: a PRNG key: training mode (dropout masks drawn from it; the same key gives the same masks).
      train: force the mode; None means training mode iff ``key`` is given.
      penalty: an :mod:`fnn.penalties` record whose value and hand-written gradient are added.
      state: the network's state (``net.init_state()`` to start); required for a net with BatchNorm.
      return_trace: also return the :class:`Trace` (every layer's input, output, delta, mask).

    Returns:
      ``(loss_value, grads)``, with ``state=`` ``(loss_value, grads, new_state)``, and the :class:`Trace` last
      with ``return_trace``; ``grads`` has the structure of ``params``. ``new_state`` holds BatchNorm's updated
      running statistics in training mode (the given state in inference mode).

    Raises:
      ValueError / TypeError: input or targets that do not fit the network, unknown loss names, training mode
        without a key on a net with dropout.

    Example:
      >>> import jax, jax.numpy as jnp, fnn
      >>> net = fnn.mlp([3, 4, 2], hidden="tanh", output="softmax")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
      >>> loss, grads = fnn.backprop(net, params, x, y, "sparse_categorical_cross_entropy")
      >>> grads[0]["w"].shape
      (3, 4)
    """
    loss, x2, y2 = prepare(net, params, x, y, loss)
    ctx = context(net, key, train, state=check_state(net, state))
    value, grads, _, trace = backprop_in(net, params, x2, y2, loss, ctx, _penalties.get(penalty))
    out = (value, grads) if state is None else (value, grads, trace.state)
    return (*out, trace) if return_trace else out


def _objective_aux(net: Network, params: Params, x2, y2, loss: _losses.Loss, ctx: _layer.Context, penalty):
    """``(loss, new_state)``: the new state is None without ``ctx.state``."""
    out, records = _layer.forward(net.layers, params, x2, ctx)
    value = loss_value(net, loss, records[-1][2].get("z"), out, y2)
    return _penalised(penalty, params, value), (None if ctx.state is None else _layer.new_state(records, ctx.state))


def _objective_in(net: Network, params: Params, x2, y2, loss: _losses.Loss, ctx: _layer.Context, penalty):
    return _objective_aux(net, params, x2, y2, loss, ctx, penalty)[0]


def objective(net: Network, loss, *, penalty=None):
    """The scalar ``(params, x, y, *, key=None, train=None) -> loss`` that :func:`backprop` differentiates, for
    autodiff and checks. Fused pairs are computed from the output pre-activations exactly as in :func:`backprop`;
    the same key gives the same dropout masks. A net with state takes ``state=`` (the state the loss is
    computed with; its update is dropped: use :func:`backprop` or :func:`autodiff` to get it)."""
    loss_rec = _losses.get(loss)
    pen = _penalties.get(penalty)
    if not isinstance(net, Network):
        raise TypeError(f"Expected a Network (from fnn.mlp or fnn.serial) as net, got {type(net).__name__}.")

    def f(params: Params, x: ArrayLike, y: ArrayLike, *, key: PRNGKey | None = None, train: bool | None = None,
          state=None):
        _, x2, y2 = prepare(net, params, x, y, loss_rec)
        return _objective_in(net, params, x2, y2, loss_rec, context(net, key, train, state=check_state(net, state)),
                             pen)

    return f


def autodiff_in(net: Network, params: Params, x2: Array, y2: Array, loss: _losses.Loss, ctx: _layer.Context,
                penalty=None):
    """``jax.value_and_grad`` of the loss on validated batches in a given context: ``(value, grads, new_state)``
    (``new_state`` None without ``ctx.state``)."""
    (value, state), grads = jax.value_and_grad(_objective_aux, argnums=1, has_aux=True)(net, params, x2, y2, loss,
                                                                                         ctx, penalty)
    return value, grads, state


def autodiff(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, key: PRNGKey | None = None,
             train: bool | None = None, penalty=None, state=None):
    """The reference: ``jax.value_and_grad`` of the same loss :func:`backprop` computes (same key, same masks,
    the same state).

    Returns:
      ``(loss_value, grads)`` with grads in the structure of ``params``; with ``state=`` ``(loss_value, grads,
      new_state)`` as :func:`backprop`.
    """
    loss_rec = _losses.get(loss)
    check_params(net, params)  # before jax.grad sees them: integer params would fail inside JAX
    _, x2, y2 = prepare(net, params, x, y, loss_rec)
    ctx = context(net, key, train, state=check_state(net, state))
    value, grads, new_state = autodiff_in(net, params, x2, y2, loss_rec, ctx, _penalties.get(penalty))
    return (value, grads) if state is None else (value, grads, new_state)


def per_example_grads(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *,
                      key: PRNGKey | None = None, train: bool | None = None) -> Grads:
    """Gradients of each example's own loss, from one batched backward pass.

    Every loss is a mean over the batch, so ``delta_l[n] = dℓ_n/dz_l[n] / N``; each Dense layer's per-example
    gradient is the outer product ``N · a_{l-1}[n] ⊗ delta_l[n]`` (and ``N · delta_l[n]`` for the bias), a
    Conv2D's the same summed over output positions (:mod:`fnn._factors`); Residual blocks recurse into their
    inner layers; layers without params give ``{}``. (:mod:`fnn.curvature` uses BackPACK's scaling instead:
    ``∇ℓ_n / N``, so that the examples' gradients sum to the batch gradient.) Equal to ``jax.vmap``
    of per-example autodiff with each example as a batch of one (with dropout: the same masks, by row).

    Returns:
      A pytree like ``params`` whose every leaf has a leading batch axis: ``w`` ``(batch, n_in, n_out)``.

    Raises:
      ValueError: a layer without a per-example form (named by its path and kind): BatchNorm, whose examples
        interact through the batch statistics.
    """
    _layer.check_factors(net.layers, "per_example_grads")
    _, _, trace = backprop(net, params, x, y, loss, key=key, train=train, return_trace=True)
    n = trace.x.shape[0]
    tree = _layer.factors(net.layers, params, trace.layers, "per_example_grads")
    return jax.tree_util.tree_map(lambda f: _factors.per_example(f) * n, tree)


def _key_cotangent(key):
    return None if key is None else np.zeros(jnp.shape(key), dtype=jax.dtypes.float0)


def manual_apply(net: Network):
    """``apply(params, x, key=None, *, train=None, state=None)`` whose ``jax.grad`` runs through the hand-written
    backward rules (with ``state=``: ``(output, new_state)``, as ``net.apply``).

    A ``jax.custom_vjp`` bridge: the forward pass saves every layer's input, output and aux values, and the
    backward rule runs the generic reverse loop from the upstream cotangent ``dL/d(output)``, exactly as
    :func:`backprop` does below the loss. With ``key`` the pass runs in training mode (the same dropout masks as
    :func:`backprop` with that key). Compose it with any JAX loss, regulariser or optax code.

    Example:
      >>> f = fnn.manual_apply(net)
      >>> grads = jax.grad(lambda p: optax.l2_loss(f(p, x), y).mean())(params)  # doctest: +SKIP
    """

    if not isinstance(net, Network):
        raise TypeError(f"Expected a Network (from fnn.mlp or fnn.serial) as net, got {type(net).__name__}.")

    def run(params, x, key, train, state):
        x2, single = check_input(net, params, x)
        ctx = context(net, key, train, state=state)
        out, records = _layer.forward(net.layers, params, x2, ctx)
        y = out[0] if single else out
        return (y if state is None else (y, _layer.new_state(records, state))), records

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def bridge(params: Params, x: ArrayLike, key, train, state):
        return run(params, x, key, train, state)[0]

    def fwd(params, x, key, train, state):
        out, records = run(params, x, key, train, state)
        # Residuals must be JAX values: keep x itself (its rank and dtype say how to shape dL/dx), not a bool
        # and a dtype object.
        return out, (params, records, jnp.asarray(x), key, state)

    def bwd(train, res, g):
        params, records, x, key, state = res
        g = g if state is None else g[0]  # the new state is not differentiated (a running statistic)
        ctx = context(net, key, train, state=state)
        single = x.ndim == len(net.input_shape)
        grads, dx, _ = _layer.backward(net.layers, params, records, g[None] if single else g, ctx)
        dx = dx[0] if single else dx
        dx = dx.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else _zero_cotangent(x)
        return grads, dx, _key_cotangent(key), jax.tree_util.tree_map(jnp.zeros_like, state)

    bridge.defvjp(fwd, bwd)

    @functools.wraps(bridge)
    def apply(params: Params, x: ArrayLike, key: PRNGKey | None = None, *, train: bool | None = None, state=None):
        return bridge(params, x, key, train, check_state(net, state))

    return apply


def _zero_cotangent(y):
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.inexact):
        return jnp.zeros_like(y)
    return np.zeros(y.shape, dtype=jax.dtypes.float0)


def manual_objective(net: Network, loss, *, penalty=None):
    """``(params, x, y, key=None, *, train=None, state=None) -> loss`` whose ``jax.grad`` with respect to params is
    the hand-written backprop (a net with state takes ``state=``; its update is dropped here).

    Unlike :func:`manual_apply` it keeps the closed forms of the fused output/loss pairs, and adds ``penalty``'s
    value and hand-written gradient. The cotangent for ``x`` is the manual ``dL/dx``; for ``y`` it is zero
    (targets are data). With ``key``: training mode, the masks of :func:`backprop` with that key.
    """
    loss_rec = _losses.get(loss)
    pen = _penalties.get(penalty)
    if not isinstance(net, Network):
        raise TypeError(f"Expected a Network (from fnn.mlp or fnn.serial) as net, got {type(net).__name__}.")

    def run(params, x, y, key, train, state):
        _, x2, y2 = prepare(net, params, x, y, loss_rec)
        return backprop_in(net, params, x2, y2, loss_rec, context(net, key, train, state=state), pen)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
    def f(params: Params, x: ArrayLike, y: ArrayLike, key, train, state) -> Array:
        return run(params, x, y, key, train, state)[0]

    def fwd(params, x, y, key, train, state):
        value, grads, dx, _ = run(params, x, y, key, train, state)
        x_arr = jnp.asarray(x)
        dx = dx.reshape(x_arr.shape).astype(x_arr.dtype) if jnp.issubdtype(x_arr.dtype, jnp.inexact) else None
        return value, (grads, dx, _zero_cotangent(x) if dx is None else None, _zero_cotangent(y), key,
                       jax.tree_util.tree_map(jnp.zeros_like, state))

    def bwd(train, res, g):
        grads, dx, x_zero, y_zero, key, state_zero = res
        scaled = jax.tree_util.tree_map(lambda t: g * t, grads)
        return scaled, (g * dx if dx is not None else x_zero), y_zero, _key_cotangent(key), state_zero

    f.defvjp(fwd, bwd)

    @functools.wraps(f)
    def checked(params: Params, x: ArrayLike, y: ArrayLike, key: PRNGKey | None = None, *,
                train: bool | None = None, state=None) -> Array:
        # jax.custom_vjp turns x and y into JAX arrays before fwd runs (int64 -> int32 without x64, objects ->
        # JAX's "Error interpreting argument"): validate the caller's values on the host first.
        prepare(net, params, x, y, loss_rec)
        state = check_state(net, state)
        context(net, key, train)
        return f(params, x, y, key, train, state)

    return checked
