"""The numbers of :mod:`fnn.stats`: per-example gradient norms, mean, variance, SNR, cosines, delta spread, tables.

Use them as ``fnn.stats.NAME``; the formulas and conventions are in :mod:`fnn.stats`'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "example_norms",
    "mean_gradient",
    "gradient_variance",
    "gradient_snr",
    "gradient_stats",
    "cosine_similarity",
    "delta_spread",
    "gradcheck_table",
]

_PER = ("layer", "total")


# --- validation and flattening -------------------------------------------------------------------------

def _check_per(per: str) -> str:
    if per not in _PER:
        raise ValueError(f"per must be one of {_PER}, got {per!r}.")
    return per


def _check_ddof(ddof) -> int:
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative int, got {ddof!r}.")
    return int(ddof)


def _layers(tree: Any, what: str) -> list:
    """The top-level groups of a gradient pytree (one per layer); a lone dict or array is one group."""
    if isinstance(tree, (list, tuple)):
        if len(tree) == 0:
            raise ValueError(f"{what} is empty: expected one entry per layer.")
        return list(tree)
    if isinstance(tree, Mapping) or hasattr(tree, "shape"):
        return [tree]
    raise TypeError(f"{what} must be a list of per-layer dicts (like params), got {type(tree).__name__}.")


def _leaves(group: Any, what: str, layer: int) -> list[np.ndarray]:
    """The arrays of one layer's group (none for a layer without params: dropout, an activation layer)."""
    leaves = [np.asarray(t) for t in jax.tree_util.tree_leaves(group)]
    for t in leaves:
        if not np.issubdtype(t.dtype, np.floating):
            raise TypeError(f"{what}: layer {layer} holds a {t.dtype} array; gradients must be floating point.")
    return leaves


def _stacked(per_example: Any, per: str = "layer", what: str = "per_example") -> list[np.ndarray]:
    """Per group, the ``(N, d)`` float64 matrix whose row ``n`` is example ``n``'s flattened gradient."""
    per = _check_per(per)
    groups = _layers(per_example, what)
    batch = None
    mats = []
    for l, group in enumerate(groups):
        cols = []
        for t in _leaves(group, what, l):
            if t.ndim == 0:
                raise ValueError(
                    f"{what}: layer {l} has a scalar leaf; per-example gradients need a leading batch axis "
                    "(use fnn.per_example_grads)."
                )
            if batch is None:
                batch = t.shape[0]
            elif t.shape[0] != batch:
                raise ValueError(
                    f"{what}: leaves disagree on the batch size: layer {l} has a leaf of shape {t.shape}, "
                    f"expected leading axis {batch}."
                )
            cols.append(t.reshape(t.shape[0], -1).astype(np.float64))
        mats.append(cols)
    if batch is None:
        raise ValueError(f"{what} holds no arrays.")
    if batch == 0:
        raise ValueError(f"{what} has a batch of 0 examples.")
    # A layer without params is a (N, 0) matrix: norm 0, SNR NaN, and the layers keep their indices.
    mats = [np.concatenate(cols, axis=1) if cols else np.zeros((batch, 0)) for cols in mats]
    return [np.concatenate(mats, axis=1)] if per == "total" else mats


def _flat(tree: Any, per: str, what: str) -> list[np.ndarray]:
    per = _check_per(per)
    vecs = [np.concatenate([t.astype(np.float64).ravel() for t in _leaves(g, what, l)] or [np.zeros(0)])
            for l, g in enumerate(_layers(tree, what))]
    return [np.concatenate(vecs)] if per == "total" else vecs


def _out(values: list[float], per: str):
    return float(values[0]) if per == "total" else np.asarray(values, dtype=np.float64)


# --- statistics ------------------------------------------------------------------------------------------

def example_norms(per_example: Any, *, per: str = "layer") -> np.ndarray:
    """Euclidean norm of each example's gradient, per layer: ``norm_n = ‖g_n‖₂``.

    Args:
      per_example: per-example gradients, every leaf with a leading batch axis ``N`` (from
        :func:`fnn.per_example_grads`).
      per: ``"layer"`` (one column per layer, over all its leaves) or ``"total"`` (all parameters).

    Returns:
      ``(N, L)`` array for ``per="layer"``, ``(N,)`` for ``per="total"``.

    Raises:
      ValueError: leaves without a batch axis or with different batch sizes; unknown ``per``.

    Example:
      >>> g = fnn.per_example_grads(net, params, x, y, loss)          # doctest: +SKIP
      >>> fnn.stats.example_norms(g).shape                             # doctest: +SKIP
      (32, 2)
    """
    mats = _stacked(per_example, per)
    norms = np.stack([np.linalg.norm(m, axis=1) for m in mats], axis=1)
    return norms[:, 0] if per == "total" else norms


def mean_gradient(per_example: Any) -> Any:
    """The mean over examples, ``ḡ = (1/N) Σ_n g_n``, leaf by leaf (a pytree like params, float64 NumPy).

    For :func:`fnn.per_example_grads` of a batch this equals the batch gradient of :func:`fnn.backprop`
    (every fnn loss is a mean over the batch).
    """
    _stacked(per_example)  # validation only
    return jax.tree_util.tree_map(lambda t: np.asarray(t, np.float64).mean(axis=0), per_example)


def gradient_variance(per_example: Any, *, ddof: int = 1) -> Any:
    """Elementwise variance over examples, ``v_j = Σ_n (g_nj - ḡ_j)² / (N - ddof)`` (a pytree like params).

    The sum of all its entries in a layer is the trace of that layer's gradient covariance.

    Raises:
      ValueError: ``N <= ddof`` (at least ``ddof + 1`` examples are needed).
    """
    ddof = _check_ddof(ddof)
    n = _stacked(per_example)[0].shape[0]
    if n <= ddof:
        raise ValueError(f"Variance with ddof={ddof} needs at least {ddof + 1} examples, got {n}.")
    return jax.tree_util.tree_map(lambda t: np.asarray(t, np.float64).var(axis=0, ddof=ddof), per_example)


def _moments(mats: list[np.ndarray], ddof: int, debias: bool):
    n = mats[0].shape[0]
    if n <= ddof:
        raise ValueError(f"Variance with ddof={ddof} needs at least {ddof + 1} examples, got {n}.")
    mean_sq, trace, snr = [], [], []
    for m in mats:
        mu = m.mean(axis=0)
        sq = float(mu @ mu)
        tr = float(((m - mu) ** 2).sum() / (n - ddof))
        if debias:
            sq -= tr / n
        mean_sq.append(sq)
        trace.append(tr)
        snr.append(sq / tr if tr > 0 else (math.inf if sq > 0 else math.nan))
    return mean_sq, trace, snr


def gradient_snr(per_example: Any, *, ddof: int = 1, per: str = "layer", debias: bool = False):
    """Gradient signal-to-noise ratio ``‖ḡ‖² / tr Σ`` per layer.

    ``tr Σ = Σ_j Var_n(g_nj)`` with ``N - ddof`` in the denominator. The SNR of a mean over ``B`` independent
    examples is ``B`` times the per-example SNR. A layer with zero variance gets ``inf`` (nonzero mean) or
    ``nan`` (all-zero gradients).

    Args:
      per_example: per-example gradients (leading batch axis ``N``) or any stack of gradients.
      ddof: delta degrees of freedom of the variance (1: unbiased).
      per: ``"layer"`` or ``"total"``.
      debias: estimate ``‖μ‖²`` by ``‖ḡ‖² - tr Σ / N`` (unbiased; can be negative).

    Returns:
      ``(L,)`` array for ``per="layer"``, a float for ``per="total"``.
    """
    _, _, snr = _moments(_stacked(per_example, per), _check_ddof(ddof), debias)
    return _out(snr, per)


def gradient_stats(per_example: Any, *, ddof: int = 1, debias: bool = False) -> dict:
    """Every per-layer statistic of a batch of per-example gradients, in one dict.

    Returns:
      A dict with ``batch`` (``N``); per layer (arrays of shape ``(L,)`` unless stated): ``norms`` ``(N, L)``
      per-example norms, ``mean_norm`` ``‖ḡ‖``, ``mean_sq_norm`` ``‖ḡ‖²`` (debiased when asked),
      ``trace_cov`` ``tr Σ``, ``snr``; over all parameters: ``snr_total`` (float); and the pytrees ``mean``
      and ``variance``.
    """
    ddof = _check_ddof(ddof)
    mats = _stacked(per_example)
    mean_sq, trace, snr = _moments(mats, ddof, debias)
    _, _, snr_total = _moments([np.concatenate(mats, axis=1)], ddof, debias)
    mean = jax.tree_util.tree_map(lambda t: np.asarray(t, np.float64).mean(axis=0), per_example)
    return {
        "batch": mats[0].shape[0],
        "norms": np.stack([np.linalg.norm(m, axis=1) for m in mats], axis=1),
        "mean_norm": np.asarray([np.linalg.norm(m.mean(axis=0)) for m in mats]),
        "mean_sq_norm": np.asarray(mean_sq),
        "trace_cov": np.asarray(trace),
        "snr": np.asarray(snr),
        "snr_total": float(snr_total[0]),
        "mean": mean,
        "variance": jax.tree_util.tree_map(lambda t: np.asarray(t, np.float64).var(axis=0, ddof=ddof), per_example),
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


def cosine_similarity(a: Any, b: Any, *, per: str = "layer"):
    """Cosine similarity ``<a, b> / (‖a‖ ‖b‖)`` of two gradient pytrees, per layer.

    Both zero gives 1 (they agree), one zero gives 0. Same convention as :func:`fnn.gradcheck`.

    Args:
      a, b: gradient pytrees of the same structure and leaf shapes (e.g. manual and autodiff gradients).
      per: ``"layer"`` or ``"total"``.

    Returns:
      ``(L,)`` array for ``per="layer"``, a float for ``per="total"``.

    Raises:
      ValueError: different structures or leaf shapes.
    """
    sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if sa != sb:
        raise ValueError(f"Structure mismatch: got {sa} and {sb}.")
    for l, (ta, tb) in enumerate(zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)):
        if np.shape(ta) != np.shape(tb):
            raise ValueError(f"Shape mismatch in leaf {l}: got {np.shape(ta)} and {np.shape(tb)}.")
    return _out([_cosine(x, y) for x, y in zip(_flat(a, per, "a"), _flat(b, per, "b"), strict=True)], per)


def delta_spread(
    deltas: Any,
    *,
    quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    per_example: bool = True,
) -> dict:
    """How the error terms ``delta_l = dL/dz_l`` of each layer are spread over examples and units.

    Args:
      deltas: a :class:`fnn.Trace` (its ``delta``) or a list of ``(N, n_l)`` arrays (a Conv2D layer's
        ``(N, H, W, C)`` delta counts as one row of ``H·W·C`` entries per example).
      quantiles: quantiles of the entries to report, each in ``[0, 1]``.
      per_example: multiply by ``N``, so each row is ``dℓ_n/dz_l`` of its own example's loss (the trace holds
        the error terms of the batch-mean loss, ``dℓ_n/dz_l / N``).

    Returns:
      A dict of ``(L,)`` arrays: ``mean_abs`` (mean ``|delta|``), ``rms``, ``std`` (over all entries),
      ``zero_fraction`` (exactly zero entries, e.g. inactive ReLU units), ``row_norm_median`` (median over
      examples of ``‖delta_n‖``); ``quantiles`` ``(L, Q)`` of the entries and ``q`` the levels ``(Q,)``.

    Raises:
      ValueError: arrays without a batch axis and entries, batch sizes that differ, quantiles outside ``[0, 1]``.
    """
    arrays = deltas.delta if hasattr(deltas, "delta") else deltas
    arrays = [np.asarray(d, np.float64) for d in _layers(arrays, "deltas")]
    q = np.asarray(quantiles, np.float64).ravel()
    if q.size == 0 or np.any((q < 0) | (q > 1)):
        raise ValueError(f"quantiles must be numbers in [0, 1], got {list(quantiles)}.")
    n = arrays[0].shape[0] if arrays[0].ndim >= 2 else None
    for l, d in enumerate(arrays):
        if d.ndim < 2:
            raise ValueError(f"deltas: layer {l} has shape {d.shape}; expected (batch, n_{l}) or images "
                             f"(batch, H, W, C).")
        if d.shape[0] != n:
            raise ValueError(f"deltas: layer {l} has batch {d.shape[0]}, layer 0 has {n}.")
    arrays = [d.reshape(n, -1) for d in arrays]  # a conv layer's delta image: one row per example
    scale = float(n) if per_example else 1.0
    arrays = [d * scale for d in arrays]
    return {
        "mean_abs": np.asarray([np.abs(d).mean() for d in arrays]),
        "rms": np.asarray([np.sqrt((d * d).mean()) for d in arrays]),
        "std": np.asarray([d.std() for d in arrays]),
        "zero_fraction": np.asarray([(d == 0).mean() for d in arrays]),
        "row_norm_median": np.asarray([np.median(np.linalg.norm(d, axis=1)) for d in arrays]),
        "quantiles": np.stack([np.quantile(d, q) for d in arrays]),
        "q": q,
    }


_TABLE_COLUMNS = ("layer", "leaf", "pair", "shape", "max_abs", "max_rel", "cosine", "tol", "checked", "ok")


def gradcheck_table(report: Any) -> dict[str, list]:
    """A :class:`fnn.GradcheckReport` as a tidy table: one row per (layer, leaf, method pair).

    Args:
      report: a :class:`~fnn.gradcheck.GradcheckReport` or a sequence of its
        :class:`~fnn.gradcheck.LeafCheck` rows.

    Returns:
      A dict of equal-length lists (columns): ``layer``, ``leaf``, ``pair`` (``"manual~autodiff"``,
      ``"manual~fd"``, ``"autodiff~fd"``), ``shape``, ``max_abs`` (max absolute error), ``max_rel`` (max
      relative error ``|a-b| / (|a|+|b|)``), ``cosine``, ``tol``, ``checked`` (coordinates compared), ``ok``.
      ``pandas.DataFrame(table)`` makes a data frame of it.
    """
    rows = getattr(report, "rows", report)
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise TypeError(f"Expected a GradcheckReport or a list of LeafCheck rows, got {type(report).__name__}.")
    table: dict[str, list] = {c: [] for c in _TABLE_COLUMNS}
    for i, r in enumerate(rows):
        missing = [c for c in _TABLE_COLUMNS if c != "ok" and not hasattr(r, c)]
        if missing:
            raise TypeError(f"Row {i} is not a LeafCheck (missing {missing}): {r!r}.")
        table["layer"].append(int(r.layer))
        table["leaf"].append(str(r.leaf))
        table["pair"].append(str(r.pair))
        table["shape"].append(tuple(int(d) for d in r.shape))
        for c in ("max_abs", "max_rel", "cosine", "tol"):
            table[c].append(float(getattr(r, c)))
        table["checked"].append(int(r.checked))
        table["ok"].append(bool(r.max_rel <= r.tol))
    return table
