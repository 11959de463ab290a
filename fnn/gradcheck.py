"""Three-way gradient check: hand-written backprop vs ``jax.grad`` vs central finite differences.

The manual and autodiff gradients are compared with each other in the params' own dtype (at a dtype-aware
tolerance). Finite differences run on float64 copies of params and data (inside ``jax.enable_x64``), on every
coordinate or on a random sample of them, and are compared with the manual and autodiff gradients recomputed
in float64, so that the finite-difference legs check the formulas, not float32 rounding. The relative error of
two gradients ``a`` and ``b`` is the CS231n measure, elementwise ``|a - b| / (|a| + |b|)``, with the denominator
floored at ``1e-8 · max(|a|_∞, |b|_∞)`` so that coordinates that are zero in both (dead units, exact zeros) do
not turn rounding noise into a large ratio (for the finite-difference legs, also at the central difference's own
rounding noise ``~eps64 · |L| / eps``); a leaf reports the maximum over its coordinates. :func:`taylor_test` is
the eps-free check: for a correct gradient ``g`` the remainder ``|L(θ + h v) - L(θ) - h <g, v>|`` shrinks like
``h²``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fnn import losses as _losses
from fnn._types import ArrayLike, Params, PRNGKey
from fnn.backprop import autodiff, backprop, objective
from fnn.network import Network, check_params

__all__ = ["LeafCheck", "GradcheckReport", "TaylorResult", "gradcheck", "taylor_test", "finite_difference_grads",
           "relative_error", "tolerance"]

class LeafCheck(NamedTuple):
    """One comparison of one leaf by one pair of methods (a tidy row)."""

    layer: int
    leaf: str
    shape: tuple[int, ...]
    pair: str
    max_abs: float
    max_rel: float
    cosine: float
    tol: float
    checked: int

    @property
    def ok(self) -> bool:
        return bool(self.max_rel <= self.tol)


class TaylorResult(NamedTuple):
    """Taylor remainders ``r(h) = |L(θ+hv) - L(θ) - h<g,v>|`` and the fitted order of ``r`` in ``h``."""

    h: tuple[float, ...]
    remainder: tuple[float, ...]
    order: float
    ok: bool


class GradcheckReport(NamedTuple):
    """Result of :func:`gradcheck`; ``print(report)`` renders a table.

    Attributes:
      ok: every comparison within tolerance and the Taylor test of order 2.
      rows: one :class:`LeafCheck` per (layer, leaf, method pair).
      loss: the loss value (manual).
      dtype: dtype of the manual/autodiff comparison.
      first_divergent_layer: the first layer, in the order the backward pass visits them (output first),
        with a failing comparison; None when all pass.
      taylor: the :class:`TaylorResult` for the manual gradient.
    """

    ok: bool
    rows: list[LeafCheck]
    loss: float
    dtype: str
    first_divergent_layer: int | None
    taylor: TaylorResult | None

    def errors(self, pair: str = "manual~autodiff") -> dict[tuple[int, str], float]:
        """Max relative error per ``(layer, leaf)`` for one method pair."""
        return {(r.layer, r.leaf): r.max_rel for r in self.rows if r.pair == pair}

    def __str__(self) -> str:
        head = (f"{'layer':>5} {'leaf':>4} {'shape':>12} {'pair':>16} {'max abs':>10} {'max rel':>10} "
                f"{'cosine':>12} {'tol':>8}  ok")
        lines = [f"gradcheck ({self.dtype}): loss = {self.loss:.6g}", head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.layer:>5} {r.leaf:>4} {str(r.shape):>12} {r.pair:>16} {r.max_abs:>10.2e} {r.max_rel:>10.2e} "
                f"{r.cosine:>12.9f} {r.tol:>8.0e}  {'ok' if r.ok else 'FAIL'}"
            )
        if self.taylor is not None:
            t = self.taylor
            lines.append(f"Taylor remainder order: {t.order:.2f} (expect 2) {'ok' if t.ok else 'FAIL'}")
        verdict = "OK" if self.ok else f"FAILED (first divergent layer: {self.first_divergent_layer})"
        lines.append(f"result: {verdict}")
        return "\n".join(lines)


def tolerance(dtype) -> float:
    """Default max relative error for manual vs autodiff in a dtype (both are exact up to rounding)."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return 1e-10
    if dtype == jnp.float32:
        return 1e-4
    return 5e-2  # float16 / bfloat16


FD_TOLERANCE = 1e-6  # finite differences are always taken in float64


def relative_error(a: ArrayLike, b: ArrayLike, floor: float = 0.0) -> tuple[float, float, float]:
    """``(max abs error, max relative error, cosine similarity)`` of two arrays, in float64 NumPy.

    ``floor`` is an absolute lower bound on the denominator ``|a| + |b|`` (the noise level of ``b``, scaled by the
    tolerance), on top of the default ``1e-8 · max(|a|_∞, |b|_∞)``.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0, 0.0, 1.0
    diff = np.abs(a - b)
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)))
    denom = np.maximum(np.abs(a) + np.abs(b), max(1e-8 * scale if scale > 0 else 1.0, floor))
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cosine = 1.0 if na == 0 and nb == 0 else float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0
    return float(diff.max()), float((diff / denom).max()), cosine


def _to_f64(tree):
    return jax.tree_util.tree_map(
        lambda t: jnp.asarray(t, jnp.float64) if jnp.issubdtype(jnp.asarray(t).dtype, jnp.floating) else jnp.asarray(t),
        tree,
    )


def _leaf_names(params: Params):
    return [(l, k) for l, layer in enumerate(params) for k in sorted(layer)]


def _finite_differences(f, flat: jax.Array, idx: np.ndarray, eps: float) -> np.ndarray:
    def one(i):
        e = jnp.zeros_like(flat).at[i].set(eps)
        return (f(flat + e) - f(flat - e)) / (2 * eps)

    return np.asarray(jax.lax.map(one, jnp.asarray(idx), batch_size=256))


def gradcheck(
    net: Network,
    params: Params,
    x: ArrayLike,
    y: ArrayLike,
    loss,
    *,
    eps: float = 1e-6,
    num_checks: int | None = None,
    key: PRNGKey | None = None,
    rtol: float | None = None,
    fd_rtol: float = FD_TOLERANCE,
    taylor: bool = True,
) -> GradcheckReport:
    """Compare the hand-written gradient with ``jax.grad`` and with central finite differences.

    Args:
      net, params, x, y, loss: as for :func:`fnn.backprop`.
      eps: finite-difference step (in float64).
      num_checks: number of coordinates to check by finite differences, sampled uniformly without
        replacement with ``key``; ``None`` checks all of them when there are at most 5,000, else 5,000.
      key: PRNG key for the sample and the Taylor direction (default ``jax.random.key(0)``).
      rtol: max relative error, manual vs autodiff (default :func:`tolerance` of the params' dtype).
      fd_rtol: max relative error against finite differences (float64).
      taylor: also run :func:`taylor_test` on the manual gradient.

    Returns:
      A :class:`GradcheckReport`.
    """
    key = jax.random.key(0) if key is None else key
    loss = _losses.get(loss)
    check_params(net, params)  # before params[0] is indexed
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not (0 < eps < math.inf):
        raise ValueError(f"eps must be a positive finite finite-difference step, got {eps!r}.")
    if num_checks is not None and (isinstance(num_checks, bool) or not isinstance(num_checks, (int, np.integer))
                                   or num_checks < 1):
        raise ValueError(f"num_checks must be a positive int (or None for all coordinates), got {num_checks!r}.")
    dtype = jnp.asarray(params[0]["w"]).dtype
    rtol = tolerance(dtype) if rtol is None else rtol
    value, manual = backprop(net, params, x, y, loss)
    _, auto = autodiff(net, params, x, y, loss)

    with jax.enable_x64(True):
        p64, x64 = _to_f64(params), _to_f64(x)
        y64 = jnp.asarray(y) if loss.sparse else _to_f64(y)
        f = objective(net, loss)
        flat, unravel = ravel_pytree(p64)
        # The finite-difference legs check the formulas, so both sides run in float64; the native-dtype
        # gradients are compared with each other at the dtype's tolerance.
        manual64 = np.asarray(ravel_pytree(backprop(net, p64, x64, y64, loss)[1])[0])
        auto64 = np.asarray(ravel_pytree(autodiff(net, p64, x64, y64, loss)[1])[0])
        manual_native = np.asarray(ravel_pytree(_to_f64(manual))[0])
        auto_native = np.asarray(ravel_pytree(_to_f64(auto))[0])
        n = flat.shape[0]
        k_sample, k_taylor = jax.random.split(key)
        budget = min(n, 5000) if num_checks is None else min(n, int(num_checks))
        idx = (np.arange(n) if budget == n
               else np.sort(np.asarray(jax.random.choice(k_sample, n, (budget,), replace=False))))
        fd = _finite_differences(lambda t: f(unravel(t), x64, y64), flat, idx, eps)
        taylor_result = (taylor_test(net, p64, x64, y64, loss, grads=unravel(jnp.asarray(manual64)), key=k_taylor)
                         if taylor else None)

    # Map flat coordinates back to leaves (ravel_pytree order = tree_leaves order = layers, keys sorted).
    sizes = [int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params)]
    bounds = np.cumsum([0] + sizes)
    # A central difference carries rounding noise of about eps64 · |L| / eps (the loss itself is exact to a few
    # ulps): on coordinates whose gradient is small next to the loss, a difference at that level is noise, not a
    # gradient error, so it is scaled to count as fd_rtol at most.
    fd_floor = 10 * np.finfo(np.float64).eps * max(abs(float(value)), 1.0) / eps / fd_rtol
    rows: list[LeafCheck] = []
    for (layer, leaf), lo, hi in zip(_leaf_names(params), bounds[:-1], bounds[1:], strict=True):
        shape = tuple(np.shape(params[layer][leaf]))
        sel = (idx >= lo) & (idx < hi)
        fd_leaf, pos = fd[sel], idx[sel]
        comparisons = [
            ("manual~autodiff", manual_native[lo:hi], auto_native[lo:hi], rtol, hi - lo, 0.0),
            ("manual~fd", manual64[pos], fd_leaf, fd_rtol, int(sel.sum()), fd_floor),
            ("autodiff~fd", auto64[pos], fd_leaf, fd_rtol, int(sel.sum()), fd_floor),
        ]
        for pair, a, b, tol, count, floor in comparisons:
            max_abs, max_rel, cos = relative_error(a, b, floor)
            rows.append(LeafCheck(layer, leaf, shape, pair, max_abs, max_rel, cos, tol, count))
    failing = sorted({r.layer for r in rows if not r.ok}, reverse=True)
    ok = not failing and (taylor_result is None or taylor_result.ok)
    return GradcheckReport(
        ok=ok,
        rows=rows,
        loss=float(value),
        dtype=str(dtype),
        first_divergent_layer=failing[0] if failing else None,
        taylor=taylor_result,
    )


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
) -> TaylorResult:
    """The eps-free gradient test: ``r(h) = |L(θ+hv) - L(θ) - h<g,v>|`` must shrink like ``h²``.

    Runs in the dtype of ``params`` (use float64). ``v`` is a random unit direction (NumPy normal draws seeded
    by ``key``'s bits); ``g`` defaults to the
    hand-written gradient. A wrong gradient leaves an ``O(h)`` term, so the fitted order drops to about 1.

    Returns:
      :class:`TaylorResult` with the log-log slope ``order`` fitted on the three smallest steps whose remainder is
      above rounding noise; ``ok`` when it is at least 1.8, or when
      every remainder is at rounding level (the loss is linear along ``v``).
    """
    key = jax.random.key(1) if key is None else key
    loss = _losses.get(loss)
    check_params(net, params)
    hs = tuple(hs)
    if len(hs) < 2 or not all(isinstance(h, (int, float, np.floating)) and 0 < h < math.inf for h in hs):
        raise ValueError(f"hs must hold at least two positive step sizes (to fit an order), got {hs!r}.")
    f = objective(net, loss)
    if grads is None:
        _, grads = backprop(net, params, x, y, loss)
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
    net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, eps: float | None = None
) -> Params:
    """Central finite differences of the loss for every parameter, in the params' own dtype.

    ``g_i = (L(θ + eps e_i) - L(θ - eps e_i)) / (2 eps)`` for every coordinate ``i`` of the flattened params,
    where ``L`` is :func:`fnn.objective` (the loss :func:`fnn.backprop` differentiates, a mean over the batch).
    Unlike :func:`gradcheck`, which always takes its differences on float64 copies, this runs in the dtype of
    ``params``: in float32 the result shows how much rounding a central difference carries (about
    ``eps32 · |L| / eps`` plus the ``eps²`` truncation term). It costs ``2 · num_params`` loss evaluations.

    Args:
      net, params, x, y, loss: as for :func:`fnn.backprop`.
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
    f = objective(net, loss)
    fd = _finite_differences(lambda t: f(unravel(t), x, y), flat, np.arange(flat.shape[0]), eps)
    return unravel(jnp.asarray(fd, flat.dtype))
