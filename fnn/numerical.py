"""Numerical derivatives: central finite differences of the loss, and the eps-free Taylor test of a gradient."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fnn import losses as _losses
from fnn._types import ArrayLike, Params, PRNGKey
from fnn.backprop import backprop, objective
from fnn.network import Network, check_params

__all__ = ["TaylorResult", "taylor_test", "finite_difference_grads", "central_differences", "central_and_one_sided",
           "fixed_objective"]


def fixed_objective(net: Network, loss, dropout_key: PRNGKey | None, train: bool | None, penalty, state=None):
    """``(params, x, y) -> loss``: :func:`fnn.objective` in a fixed mode (the same dropout masks every call, the
    same state)."""
    f = objective(net, loss, penalty=penalty)
    return lambda params, x, y: f(params, x, y, key=dropout_key, train=train, state=state)


class TaylorResult(NamedTuple):
    """Taylor remainders ``r(h) = |L(θ+hv) - L(θ) - h<g,v>|`` and the fitted order of ``r`` in ``h``."""

    h: tuple[float, ...]
    remainder: tuple[float, ...]
    order: float
    ok: bool


def central_differences(f, flat: jax.Array, idx: np.ndarray, eps: float) -> np.ndarray:
    """``(f(θ + eps e_i) - f(θ - eps e_i)) / (2 eps)`` for each flat coordinate ``i`` in ``idx`` (``lax.map``, 256
    coordinates a batch), as a NumPy array."""
    return central_and_one_sided(f, flat, idx, eps)[0]


def central_and_one_sided(f, flat: jax.Array, idx: np.ndarray, eps: float, *,
                          compiled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(central differences, kink mask)`` for the coordinates ``idx``; ``compiled`` evaluates ``f(θ)`` as one
    jitted program instead of eagerly.

    A coordinate is a *kink* when its forward and backward one-sided differences ``(f(θ+εe) − f(θ))/ε`` and
    ``(f(θ) − f(θ−εe))/ε`` disagree by more than a smooth function allows: for a twice-differentiable ``f`` they
    differ by ``ε·f''`` (tiny for ``ε = 1e-6``), but when ``θ ± εe`` moves a pre-activation across a kink (relu at
    0, a clip boundary) they differ by the jump in slope, and the central difference is the average of two
    slopes, the derivative of neither side. The threshold is ``1e-3`` of the slopes plus ``1e3`` times the
    difference's rounding noise ``eps64 · |f| / ε``.
    """
    f0 = (jax.jit(f) if compiled else f)(flat)

    def one(i):
        e = jnp.zeros_like(flat).at[i].set(eps)
        return f(flat + e), f(flat - e)

    plus, minus = (np.asarray(v, np.float64) for v in jax.lax.map(one, jnp.asarray(idx), batch_size=256))
    f0 = float(f0)
    forward, backward = (plus - f0) / eps, (f0 - minus) / eps
    noise = 1e3 * np.finfo(np.float64).eps * max(abs(f0), 1.0) / eps
    kink = np.abs(forward - backward) > 1e-3 * np.maximum(np.abs(forward), np.abs(backward)) + noise
    return (plus - minus) / (2 * eps), kink


def taylor_test(
    net: Network,
    params: Params,
    x: ArrayLike,
    y: ArrayLike,
    loss,
    *,
    grads: Params | None = None,
    key: PRNGKey | None = None,
    hs: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3),
    dropout_key: PRNGKey | None = None,
    train: bool | None = None,
    penalty=None,
    state=None,
) -> TaylorResult:
    """The eps-free gradient test: ``r(h) = |L(θ+hv) - L(θ) - h<g,v>|`` must shrink like ``h²``.

    Runs in the dtype of ``params`` (use float64). ``v`` is a random unit direction (NumPy normal draws seeded
    by ``key``'s bits); ``g`` defaults to the
    hand-written gradient. A wrong gradient leaves an ``O(h)`` term, so the fitted order drops to about 1.

    Returns:
      :class:`TaylorResult` with the log-log slope ``order`` fitted on the three smallest steps whose remainder is
      above rounding noise; ``ok`` when it is at least 1.8, or when
      every remainder is at rounding level (the loss is linear along ``v``).

    ``dropout_key``, ``train`` and ``penalty`` choose the loss exactly as ``key``, ``train`` and ``penalty`` do
    for :func:`fnn.backprop` (the same dropout masks at every step).
    """
    key = jax.random.key(1) if key is None else key
    loss = _losses.get(loss)
    check_params(net, params)
    hs = tuple(hs)
    if len(hs) < 2 or not all(isinstance(h, (int, float, np.floating)) and 0 < h < math.inf for h in hs):
        raise ValueError(f"hs must hold at least two positive step sizes (to fit an order), got {hs!r}.")
    f = fixed_objective(net, loss, dropout_key, train, penalty, state)
    if grads is None:
        grads = backprop(net, params, x, y, loss, key=dropout_key, train=train, penalty=penalty, state=state)[1]
    else:
        try:
            check_params(net, grads)
        except (TypeError, ValueError) as e:
            raise type(e)(f"grads must have the structure and shapes of params: {e}") from None
    flat, unravel = ravel_pytree(params)
    g = ravel_pytree(grads)[0]
    # The direction is drawn by NumPy from the key's bits: reproducible from ``key`` like a jax.random draw, but
    # without compiling a threefry + normal program for every new parameter count (≈ 1-5 s on a 2-core CPU).
    v = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist()).standard_normal(flat.shape[0])
    v = jnp.asarray(v / np.linalg.norm(v), flat.dtype)
    base = float(f(params, x, y))
    slope = float(g @ v)
    r = [abs(float(f(unravel(flat + h * v), x, y)) - base - h * slope) for h in hs]
    noise = 1e3 * jnp.finfo(flat.dtype).eps * max(abs(base), 1.0)
    if max(r) <= noise:
        return TaylorResult(tuple(hs), tuple(r), math.inf, True)
    # Fit the order on the three smallest steps above rounding noise: the asymptotic regime. At large steps the
    # third-order term can mask h² (a correct gradient then fits an order well below 2 along some directions).
    usable = sorted((h, ri) for h, ri in zip(hs, r, strict=True) if ri > noise)[:3]
    if len(usable) < 2:
        return TaylorResult(tuple(hs), tuple(r), math.inf, True)
    lh, lr = np.log([u[0] for u in usable]), np.log([u[1] for u in usable])
    order = float(np.polyfit(lh, lr, 1)[0])
    return TaylorResult(tuple(hs), tuple(r), order, order >= 1.8)


def finite_difference_grads(
    net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, eps: float | None = None,
    dropout_key: PRNGKey | None = None, train: bool | None = None, penalty=None, state=None,
) -> Params:
    """Central finite differences of the loss for every parameter, in the params' own dtype.

    ``g_i = (L(θ + eps e_i) - L(θ - eps e_i)) / (2 eps)`` for every coordinate ``i`` of the flattened params,
    where ``L`` is :func:`fnn.objective` (the loss :func:`fnn.backprop` differentiates, a mean over the batch).
    Unlike :func:`gradcheck`, which always takes its differences on float64 copies, this runs in the dtype of
    ``params``: in float32 the result shows how much rounding a central difference carries (about
    ``eps32 · |L| / eps`` plus the ``eps²`` truncation term). It costs ``2 · num_params`` loss evaluations.

    Args:
      net, params, x, y, loss: as for :func:`fnn.backprop`.
      dropout_key, train, penalty, state: :func:`fnn.backprop`'s ``key``, ``train``, ``penalty`` and ``state``
        (fixed masks; the loss is computed with ``state``, whose update is dropped).
      eps: the step; default ``finfo(dtype).eps ** (1/3)`` of the params' dtype (about 6e-6 in float64,
        5e-3 in float32), the step that balances rounding (``~eps_dtype / eps``) against truncation (``~eps²``).

    Returns:
      The finite-difference gradient, a pytree with the structure, shapes and dtype of ``params``.

    Raises:
      ValueError: ``eps`` is not a positive finite number; ``params`` do not fit ``net``.

    Example:
      >>> import jax, fnn
      >>> net = fnn.mlp([3, 4, 2], hidden="tanh", output="identity")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jax.numpy.ones((5, 3)), jax.numpy.zeros((5, 2))
      >>> fd = finite_difference_grads(net, params, x, y, "mse")
      >>> [layer["w"].shape for layer in fd]
      [(3, 4), (4, 2)]
    """
    loss = _losses.get(loss)
    check_params(net, params)
    flat, unravel = ravel_pytree(params)
    if eps is None:
        eps = float(jnp.finfo(flat.dtype).eps) ** (1 / 3)
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not (0 < eps < math.inf):
        raise ValueError(f"eps must be a positive finite finite-difference step, got {eps!r}.")
    f = fixed_objective(net, loss, dropout_key, train, penalty, state)
    fd = central_differences(lambda t: f(unravel(t), x, y), flat, np.arange(flat.shape[0]), eps)
    return unravel(jnp.asarray(fd, flat.dtype))
