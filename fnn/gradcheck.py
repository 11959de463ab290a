"""Three-way gradient check: hand-written backprop vs ``jax.grad`` vs central finite differences.

The formulas are checked in float64: the hand-written and autodiff gradients are recomputed on float64 copies
of params and data and compared with each other on every coordinate (``manual~autodiff``, relative 1e-10, or
within the float64 error model of :func:`error_bound` times the leaf's magnitude for small coordinates) and
with central finite differences on every coordinate or a sample (``manual~fd``, ``autodiff~fd``). The relative
error of two gradients ``a`` and ``b`` is the CS231n measure, elementwise ``|a - b| / (|a| + |b|)``, with the
denominator floored at ``1e-8 · max(|a|_∞, |b|_∞)`` so that coordinates that are zero in both do not turn
rounding noise into a large ratio (for the finite-difference legs, also at the central difference's own rounding
noise ``~eps64 · |L| / eps``); a leaf reports the maximum over its coordinates.

In a low-precision dtype (float32, float16, bfloat16) the native gradients are judged **each on its own**, by its
distance from the float64 reference (the float64 ``jax.grad``, itself checked against finite differences), with
an error model (:func:`error_bound`): the error of a leaf, relative to the reference leaf's largest entry (or to
``tiny / eps`` of the dtype when the leaf is smaller than that: subnormal gradients carry no relative precision),
may be at most ``K · eps_dtype · (depth + 1)``. Two correct float32 passes may differ from each other by twice what
either differs from the truth, and coordinate-wise relative errors of small entries are rounding noise; so
manual and autodiff are no longer compared with each other in the low-precision dtype (that raised false alarms
on correct networks), while a wrong derivative, factor or layer is still caught by the float64 legs and by the
leg of its own dtype. :func:`taylor_test` is the eps-free check: for a correct gradient ``g`` the remainder
``|L(θ + h v) - L(θ) - h <g, v>|`` shrinks like ``h²``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fnn import losses as _losses
from fnn import penalties as _penalties
from fnn._arrays import path_parts
from fnn._types import ArrayLike, Params, PRNGKey
from fnn.backprop import autodiff, backprop
from fnn.network import Network, check_params, check_state, param_dtype
from fnn.numerical import TaylorResult, central_and_one_sided, finite_difference_grads, fixed_objective, taylor_test

__all__ = ["LeafCheck", "GradcheckReport", "TaylorResult", "gradcheck", "taylor_test", "finite_difference_grads",
           "relative_error", "tolerance", "error_bound", "scaled_error", "ERROR_MODEL_K"]

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


class GradcheckReport(NamedTuple):
    """Result of :func:`gradcheck`; ``print(report)`` renders a table.

    Attributes:
      ok: every comparison within tolerance and the Taylor test of order 2 (not judged when the finite
        differences found θ on a kink, where the loss has no derivative and no gradient passes it).
      rows: one :class:`LeafCheck` per (layer, leaf, comparison). Always ``manual~autodiff``, ``manual~fd`` and
        ``autodiff~fd`` (all in float64); for float32/float16/bfloat16 params also ``manual~float64`` and
        ``autodiff~float64`` (the native-dtype gradient against the float64 reference, error model of
        :func:`error_bound`; ``max_rel`` is then the error relative to the leaf's largest reference entry).
      loss: the loss value (manual, in the params' dtype).
      dtype: the params' dtype.
      first_divergent_layer: the first layer, in the order the backward pass visits them (output first),
        with a failing comparison; None when all pass.
      taylor: the :class:`TaylorResult` for the manual gradient.
      off: which legs are wrong, judged from the failing rows: ``"manual"``, ``"autodiff"``, ``"manual (float32)"``
        (right in float64, wrong in the params' dtype), ``"finite differences"`` (manual and autodiff agree
        but both disagree with the differences: a step too large), or empty when all pass.
      kinks: sampled coordinates left out of the finite-difference legs because ``θ ± eps`` crosses a kink there
        (their one-sided differences disagree: see :func:`fnn.numerical.central_and_one_sided`); ``manual~autodiff``
        still covers them.
    """

    ok: bool
    rows: list[LeafCheck]
    loss: float
    dtype: str
    first_divergent_layer: int | None
    taylor: TaylorResult | None
    off: tuple[str, ...] = ()
    kinks: int = 0

    def errors(self, pair: str = "manual~autodiff") -> dict[tuple[int, str], float]:
        """Max relative error per ``(layer, leaf)`` for one comparison."""
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
            verdict = "ok" if t.ok else "not judged: θ sits on a kink" if self.kinks else "FAIL"
            lines.append(f"Taylor remainder order: {t.order:.2f} (expect 2) {verdict}")
        if self.kinks:
            lines.append(f"finite differences: {self.kinks} coordinate(s) at a kink left out (one-sided slopes differ)")
        off = f"; off: {', '.join(self.off)}" if self.off else ""
        verdict = "OK" if self.ok else f"FAILED (first divergent layer: {self.first_divergent_layer}{off})"
        lines.append(f"result: {verdict}")
        return "\n".join(lines)


def tolerance(dtype) -> float:
    """Max coordinate-wise relative error between two computations of the same gradient in ``dtype``.

    :func:`gradcheck` uses the float64 value (1e-10) for its ``manual~autodiff`` comparison, which always runs in
    float64; low-precision gradients are judged by :func:`error_bound` instead. The float32 (1e-4) and
    float16/bfloat16 (5e-2) values remain for callers comparing two low-precision results coordinate by
    coordinate, where they are a rule of thumb, not a bound (small entries can exceed them by rounding alone).
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return 1e-10
    if dtype == jnp.float32:
        return 1e-4
    return 5e-2  # float16 / bfloat16


FD_TOLERANCE = 1e-6  # finite differences are always taken in float64

#: The constant of the low-precision error model (:func:`error_bound`), set from the false-alarm sweep in
#: RELIABILITY.md (``scripts/gradcheck_sweep.py``): the largest error seen on correct networks, in units of
#: ``eps · (depth + 1)``, times a safety margin.
ERROR_MODEL_K = 64.0


def error_bound(dtype, depth: int) -> float:
    """Allowed error of a ``dtype`` gradient leaf against the float64 truth, relative to the leaf's magnitude.

    ``K · eps_dtype · (depth + 1)`` with :data:`ERROR_MODEL_K`: every layer a delta crosses adds a few roundings
    (a matrix product, an activation derivative), and the leaf's error is measured against its largest entry
    (:func:`scaled_error`), as rounding in a sum scales with the sum's terms, not with its (possibly cancelling)
    result. float32: ``7.6e-6 · (depth + 1)``; float16 ``6.3e-2 · (depth + 1)``; bfloat16 ``0.5 · (depth + 1)``.
    """
    return float(ERROR_MODEL_K * jnp.finfo(dtype).eps * (depth + 1))


def scaled_error(got: ArrayLike, reference: ArrayLike, dtype, floor: float = 0.0) -> tuple[float, float, float]:
    """``(max abs error, max abs error / scale, cosine)`` of a ``dtype`` gradient leaf against its float64
    reference, where ``scale = max(|reference|_∞, tiny_dtype / eps_dtype, floor)``: below ``tiny / eps`` a dtype's
    gradients are subnormal or close to it and carry no relative precision, so they are judged absolutely.
    ``floor`` is the magnitude of the terms the leaf's gradient sums (gradcheck passes its layer's scale)."""
    got = np.asarray(got, np.float64).ravel()
    ref = np.asarray(reference, np.float64).ravel()
    if got.size == 0:
        return 0.0, 0.0, 1.0
    info = jnp.finfo(dtype)
    scale = max(float(np.max(np.abs(ref))), float(info.tiny) / float(info.eps), floor)
    max_abs = float(np.max(np.abs(got - ref)))
    cosine = relative_error(got, ref)[2]
    return max_abs, max_abs / scale, cosine


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
    """``(layer, leaf)`` of every leaf in ravel order; a nested leaf ``3.1.w`` is ``(3, "1.w")``."""
    parts = [path_parts(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return [(int(p[0]), ".".join(p[1:])) for p in parts]


#: Layer kinds whose forward and backward are many small ops (patches, pads): gradcheck compiles such nets whole.
#: Layer kinds with many distinct ops (eagerly, each one is compiled on its own): a net holding one is checked
#: with every leg compiled as one program.
COMPILED_KINDS = frozenset({"Conv2D", "MaxPool2D", "AvgPool2D", "LayerNorm", "BatchNorm"})


def _windowed(layers) -> bool:
    return any(layer.kind in COMPILED_KINDS or _windowed(layer.children) for layer in layers)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _choice(key, n, shape):
    return jax.random.choice(key, n, shape, replace=False)


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
    bound: float | None = None,
    dropout_key: PRNGKey | None = None,
    train: bool | None = None,
    penalty=None,
    state=None,
) -> GradcheckReport:
    """Compare the hand-written gradient with ``jax.grad`` and with central finite differences.

    The formulas are checked in float64 (``manual~autodiff`` on every coordinate, ``manual~fd`` and
    ``autodiff~fd`` on every coordinate or a sample); for float32/float16/bfloat16 params each native gradient is
    also judged against the float64 reference with the error model of :func:`error_bound` (``manual~float64``,
    ``autodiff~float64``). See the module docstring.

    Args:
      net, params, x, y, loss: as for :func:`fnn.backprop`.
      eps: finite-difference step (in float64).
      num_checks: number of coordinates to check by finite differences, sampled uniformly without
        replacement with ``key``; ``None`` checks all of them when there are at most 5,000, else 5,000.
      key: PRNG key for the sample and the Taylor direction (default ``jax.random.key(0)``).
      rtol: max relative error of ``manual~autodiff`` in float64 (default 1e-10).
      fd_rtol: max relative error against finite differences (float64).
      taylor: also run :func:`taylor_test` on the manual gradient.
      bound: max scaled error of the low-precision legs (default :func:`error_bound` of the params' dtype and
        the network's depth).
      dropout_key: the key of training mode (fixed dropout masks, the same in every leg). Default: for a net
        with dropout a key derived from ``key``, so the dropout backward pass is checked; else inference mode.
      train: force the mode (``False`` checks a net with dropout in inference mode). Default: training mode
        for a net with dropout or BatchNorm (the batch-statistics backward pass), else inference mode.
      penalty: an :mod:`fnn.penalties` record, checked with the loss.
      state: the network's state, required for a net with BatchNorm (the running statistics of inference
        mode; every leg uses the same state).

    Returns:
      A :class:`GradcheckReport`; its ``off`` names the wrong legs when it fails.

    Raises:
      ValueError: bad ``eps``, ``num_checks``; params, inputs or targets that do not fit the network.
    """
    key = jax.random.key(0) if key is None else key
    loss = _losses.get(loss)
    check_params(net, params)  # before params[0] is indexed
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not (0 < eps < math.inf):
        raise ValueError(f"eps must be a positive finite finite-difference step, got {eps!r}.")
    if num_checks is not None and (isinstance(num_checks, bool) or not isinstance(num_checks, (int, np.integer))
                                   or num_checks < 1):
        raise ValueError(f"num_checks must be a positive int (or None for all coordinates), got {num_checks!r}.")
    dtype = param_dtype(net, params)
    low_precision = dtype != jnp.float64
    rtol = tolerance(jnp.float64) if rtol is None else rtol
    bound = error_bound(dtype, net.num_layers) if bound is None else bound
    train = (net.stochastic or net.stateful) if train is None else train
    if train and dropout_key is None:
        dropout_key = jax.random.fold_in(key, 7)
    mode = {"key": dropout_key if train else None, "train": train, "penalty": _penalties.get(penalty)}
    # Eager dispatch compiles each distinct op once and reuses it across calls (cheap for Dense nets checked
    # over and over); a net of windowed layers has dozens of distinct ops, so it is compiled as one program.
    compiled = _windowed(net.layers)
    check_state(net, state)
    manual_fn, auto_fn = (functools.partial(fn, net, loss=loss, train=train, penalty=mode["penalty"], state=state)
                          for fn in (backprop, autodiff))
    if compiled:
        manual_fn, auto_fn = jax.jit(manual_fn), jax.jit(auto_fn)
    value, manual = manual_fn(params, x, y, key=mode["key"])[:2]
    auto = auto_fn(params, x, y, key=mode["key"])[1] if low_precision else None

    with jax.enable_x64(True):
        p64, x64 = _to_f64(params), _to_f64(x)
        y64 = jnp.asarray(y) if loss.sparse else _to_f64(y)
        s64 = _to_f64(state)
        f = fixed_objective(net, loss, mode["key"], train, mode["penalty"], s64)
        flat, unravel = ravel_pytree(p64)
        manual64 = np.asarray(ravel_pytree(manual_fn(p64, x64, y64, key=mode["key"], state=s64)[1])[0])
        auto64 = np.asarray(ravel_pytree(auto_fn(p64, x64, y64, key=mode["key"], state=s64)[1])[0])
        n = flat.shape[0]
        k_sample, k_taylor = jax.random.split(key)
        budget = min(n, 5000) if num_checks is None else min(n, int(num_checks))
        idx = (np.arange(n) if budget == n
               else np.sort(np.asarray(_choice(k_sample, n, (budget,)))))
        fd, kink = central_and_one_sided(lambda t: f(unravel(t), x64, y64), flat, idx, eps, compiled=compiled)
        taylor_result = (taylor_test(net, p64, x64, y64, loss, grads=unravel(jnp.asarray(manual64)), key=k_taylor,
                                     dropout_key=mode["key"], train=train, penalty=mode["penalty"], state=s64)
                         if taylor else None)
        native = {"manual": np.asarray(ravel_pytree(_to_f64(manual))[0]),
                  "autodiff": np.asarray(ravel_pytree(_to_f64(auto))[0])} if low_precision else {}

    # Map flat coordinates back to leaves (ravel_pytree order = tree_leaves order = layers, keys sorted).
    leaf_shapes = [tuple(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)]
    bounds = np.cumsum([0] + [math.prod(shape) for shape in leaf_shapes])
    # A central difference carries rounding noise of about eps64 · |L| / eps (the loss itself is exact to a few
    # ulps): on coordinates whose gradient is small next to the loss, a difference at that level is noise, not a
    # gradient error, so it is scaled to count as fd_rtol at most.
    fd_floor = 10 * np.finfo(np.float64).eps * max(abs(float(value)), 1.0) / eps / fd_rtol
    # A difference across a kink is the derivative of neither side: a coordinate whose one-sided slopes disagree
    # AND whose central difference misses the float64 autodiff gradient is left out (and counted); one that
    # kinked but still agrees (a smooth function's curvature can also split the slopes a little) stays in.
    crossed = kink & (np.abs(auto64[idx] - fd) > fd_rtol * np.maximum(np.abs(auto64[idx]) + np.abs(fd), fd_floor))
    idx, fd = idx[~crossed], fd[~crossed]
    rows: list[LeafCheck] = []
    names = _leaf_names(params)
    # A leaf's gradient can cancel to (nearly) zero while the terms it sums do not: a bias before a BatchNorm,
    # whose gradient is exactly 0, carries rounding of the size of its layer's other gradients. Each leaf's
    # absolute error model is scaled by the largest gradient of its (top-level) layer.
    layer_scale: dict = {}
    for (layer, _), lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True):
        layer_scale[layer] = max(layer_scale.get(layer, 0.0), float(np.max(np.abs(auto64[lo:hi]), initial=0.0)))
    for (layer, leaf), shape, lo, hi in zip(names, leaf_shapes, bounds[:-1], bounds[1:], strict=True):
        sel = (idx >= lo) & (idx < hi)
        fd_leaf, pos = fd[sel], idx[sel]
        # float64 rounding in a deep net leaves a few eps of the layer's magnitude on every coordinate: small
        # coordinates (cancelling sums) are judged by that absolute error model, large ones at rtol.
        leaf_scale = layer_scale[layer]
        exact_floor = error_bound(jnp.float64, net.num_layers) * leaf_scale / rtol
        comparisons = [
            ("manual~autodiff", manual64[lo:hi], auto64[lo:hi], rtol, hi - lo, exact_floor),
            ("manual~fd", manual64[pos], fd_leaf, fd_rtol, int(sel.sum()), fd_floor),
            ("autodiff~fd", auto64[pos], fd_leaf, fd_rtol, int(sel.sum()), fd_floor),
        ]
        for pair, a, b, tol, count, floor in comparisons:
            max_abs, max_rel, cos = relative_error(a, b, floor)
            rows.append(LeafCheck(layer, leaf, shape, pair, max_abs, max_rel, cos, tol, count))
        for leg, grads in native.items():
            max_abs, max_rel, cos = scaled_error(grads[lo:hi], auto64[lo:hi], dtype, layer_scale[layer])
            rows.append(LeafCheck(layer, leaf, shape, f"{leg}~float64", max_abs, max_rel, cos, bound, hi - lo))
    failing = sorted({r.layer for r in rows if not r.ok}, reverse=True)
    # θ on a kink: the loss has no derivative there, the remainder is O(h) along most directions for any g, so
    # the Taylor test says nothing about the gradient (manual~autodiff still checks every coordinate).
    ok = not failing and (taylor_result is None or taylor_result.ok or bool(crossed.any()))
    return GradcheckReport(
        ok=ok,
        rows=rows,
        loss=float(value),
        dtype=str(dtype),
        first_divergent_layer=failing[0] if failing else None,
        taylor=taylor_result,
        off=_off_legs(rows, str(dtype)),
        kinks=int(crossed.sum()),
    )


def _off_legs(rows: list[LeafCheck], dtype: str) -> tuple[str, ...]:
    """Which legs the failing rows point at (see :class:`GradcheckReport`): the leg that disagrees with two
    others that agree with each other."""
    bad = {r.pair for r in rows if not r.ok}
    ma, mf, af = ("manual~autodiff" in bad), ("manual~fd" in bad), ("autodiff~fd" in bad)
    off = []
    if ma and not af:
        off.append("manual")  # autodiff agrees with the differences, manual does not
    elif ma and not mf:
        off.append("autodiff")
    elif ma:
        off.append("manual, autodiff and finite differences all disagree")
    elif mf or af:
        off.append("finite differences")  # manual = autodiff, but the differences see something else
    for leg in ("manual", "autodiff"):
        if f"{leg}~float64" in bad:
            off.append(f"{leg} ({dtype})")
    return tuple(off)
