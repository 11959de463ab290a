"""Gradient statistics: per-example gradient norms, mean, variance, signal-to-noise ratio, cosines, deltas.

Inputs are the pytrees fnn already produces, outputs are plain NumPy arrays and dicts (float64):

* ``per_example``: :func:`fnn.per_example_grads` output, a list with one dict per layer whose every leaf has a
  leading batch axis (``w``: ``(N, n_in, n_out)``, ``b``: ``(N, n_out)``). Any stack of gradients works the same
  way, e.g. the gradients of ``M`` mini-batches stacked along a leading axis.
* ``grads``: a gradient pytree shaped like params (no batch axis), e.g. from :func:`fnn.backprop`.

For layer ``l`` the leaves of example ``n`` are flattened and concatenated into one vector
``g_n ∈ R^{d_l}`` (``d_l = n_in·n_out + n_out``); with ``N`` examples::

    norm_n   = ‖g_n‖₂                                                      (N,) per layer
    mean     ḡ = (1/N) Σ_n g_n                                             like params
    variance v_j = 1/(N - ddof) Σ_n (g_nj - ḡ_j)²                          like params (elementwise)
    trace    tr Σ = Σ_j v_j          (trace of the covariance of g_n)
    snr      ‖ḡ‖² / tr Σ             (debias: (‖ḡ‖² - tr Σ / N) / tr Σ)
    cosine   <a, b> / (‖a‖ ‖b‖)      (1 when both are zero, 0 when one is)

The SNR of one example's gradient is ``‖μ‖² / tr Σ``; the mean of ``B`` examples drawn independently has
``B`` times that SNR (its covariance is ``Σ / B``). ``‖ḡ‖²`` overestimates ``‖μ‖²`` by ``tr Σ / N`` on
average; ``debias=True`` removes that (the estimate can then be negative when the signal is below the noise).

``per="layer"`` (the default) groups by layer (the top-level list index); ``per="total"`` pools every leaf.

Plotting helpers (:func:`plot_gradient_stats`, :func:`plot_gradcheck`, :func:`plot_error_heatmap`,
:func:`plot_layer_curves`) need matplotlib (``pip install 'fnn[plot]'``), imported only when they are called.
They draw on ``matplotlib.figure.Figure`` objects without pyplot, so they never change the global backend;
``fig.savefig`` renders with Agg.
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
    "plot_gradient_stats",
    "plot_gradcheck",
    "plot_error_heatmap",
    "plot_layer_curves",
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
    leaves = [np.asarray(t) for t in jax.tree_util.tree_leaves(group)]
    if not leaves:
        raise ValueError(f"{what}: layer {layer} has no arrays.")
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
        mats.append(np.concatenate(cols, axis=1))
    if batch == 0:
        raise ValueError(f"{what} has a batch of 0 examples.")
    return [np.concatenate(mats, axis=1)] if per == "total" else mats


def _flat(tree: Any, per: str, what: str) -> list[np.ndarray]:
    per = _check_per(per)
    vecs = [np.concatenate([t.astype(np.float64).ravel() for t in _leaves(g, what, l)])
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
    for l, (ta, tb) in enumerate(zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))):
        if np.shape(ta) != np.shape(tb):
            raise ValueError(f"Shape mismatch in leaf {l}: got {np.shape(ta)} and {np.shape(tb)}.")
    return _out([_cosine(x, y) for x, y in zip(_flat(a, per, "a"), _flat(b, per, "b"))], per)


def delta_spread(
    deltas: Any,
    *,
    quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    per_example: bool = True,
) -> dict:
    """How the error terms ``delta_l = dL/dz_l`` of each layer are spread over examples and units.

    Args:
      deltas: a :class:`fnn.Trace` (its ``delta``) or a list of ``(N, n_l)`` arrays.
      quantiles: quantiles of the entries to report, each in ``[0, 1]``.
      per_example: multiply by ``N``, so each row is ``dℓ_n/dz_l`` of its own example's loss (the trace holds
        the error terms of the batch-mean loss, ``dℓ_n/dz_l / N``).

    Returns:
      A dict of ``(L,)`` arrays: ``mean_abs`` (mean ``|delta|``), ``rms``, ``std`` (over all entries),
      ``zero_fraction`` (exactly zero entries, e.g. inactive ReLU units), ``row_norm_median`` (median over
      examples of ``‖delta_n‖``); ``quantiles`` ``(L, Q)`` of the entries and ``q`` the levels ``(Q,)``.

    Raises:
      ValueError: arrays that are not 2-D, batch sizes that differ, quantiles outside ``[0, 1]``.
    """
    arrays = deltas.delta if hasattr(deltas, "delta") else deltas
    arrays = [np.asarray(d, np.float64) for d in _layers(arrays, "deltas")]
    q = np.asarray(quantiles, np.float64).ravel()
    if q.size == 0 or np.any((q < 0) | (q > 1)):
        raise ValueError(f"quantiles must be numbers in [0, 1], got {list(quantiles)}.")
    n = arrays[0].shape[0] if arrays[0].ndim == 2 else None
    for l, d in enumerate(arrays):
        if d.ndim != 2:
            raise ValueError(f"deltas: layer {l} has shape {d.shape}; expected (batch, n_{l}).")
        if d.shape[0] != n:
            raise ValueError(f"deltas: layer {l} has batch {d.shape[0]}, layer 0 has {n}.")
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


# --- plotting (matplotlib, optional) ----------------------------------------------------------------------

def _matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fnn.stats plotting needs matplotlib; install it with: pip install 'fnn[plot]'"
        ) from err
    return matplotlib, Figure


def _new_axes(ax, figsize):
    _, Figure = _matplotlib()
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _layer_labels(n: int, labels) -> list[str]:
    if labels is None:
        return [f"layer {l}" for l in range(n)]
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"Got {len(labels)} labels for {n} layers.")
    return [str(s) for s in labels]


def plot_gradient_stats(per_example_or_stats: Any, *, axes=None, labels=None, title: str | None = None):
    """Per-example gradient norms (box plot per layer) and gradient SNR per layer, in one call.

    Args:
      per_example_or_stats: per-example gradients, or the dict of :func:`gradient_stats`.
      axes: two matplotlib Axes to draw on; a new figure when None.
      labels: one name per layer (default ``layer 0``, ``layer 1``, ...).
      title: figure title.

    Returns:
      The matplotlib ``Figure``.
    """
    s = per_example_or_stats if isinstance(per_example_or_stats, Mapping) and "norms" in per_example_or_stats \
        else gradient_stats(per_example_or_stats)
    _, Figure = _matplotlib()
    if axes is None:
        fig = Figure(figsize=(9, 3.6), layout="constrained")
        axes = fig.subplots(1, 2)
    else:
        if len(axes) != 2:
            raise ValueError(f"axes must be two Axes, got {len(axes)}.")
        fig = axes[0].figure
    norms = np.asarray(s["norms"])
    names = _layer_labels(norms.shape[1], labels)
    ax0, ax1 = axes
    ax0.boxplot([np.maximum(norms[:, l], 1e-300) for l in range(norms.shape[1])], showfliers=False)
    ax0.set_xticks(range(1, len(names) + 1), names)
    ax0.set_yscale("log")
    ax0.set_ylabel("per-example ‖g_n‖")
    ax0.set_title(f"gradient norms over {s['batch']} examples")
    snr = np.asarray(s["snr"])
    shown = np.where(np.isfinite(snr) & (snr > 0), snr, np.nan)
    ax1.plot(range(len(names)), shown, "o", color="tab:orange", markersize=8)
    for l, v in enumerate(shown):
        if np.isfinite(v):
            ax1.annotate(f"{v:.3g}", (l, v), textcoords="offset points", xytext=(8, 0), va="center", fontsize=8)
    ax1.set_xticks(range(len(names)), names)
    ax1.set_xlim(-0.5, len(names) - 0.5)
    ax1.set_yscale("log")
    ax1.grid(True, which="both", axis="y", alpha=0.3)
    ax1.set_ylabel("‖ḡ‖² / tr Σ")
    ax1.set_title(f"gradient SNR (all params: {s['snr_total']:.3g})")
    if title:
        fig.suptitle(title)
    return fig


def plot_error_heatmap(
    errors: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    ax=None,
    title: str | None = None,
    vmin: float = -17.0,
    vmax: float = 0.0,
    annotate: bool = True,
    colorbar: bool = True,
):
    """A heat map of errors on a log10 colour scale (exact zeros drawn at ``vmin``), annotated with exponents.

    Args:
      errors: ``(R, C)`` array of non-negative errors (NaN cells are drawn hatched grey and marked "nan").
      row_labels, col_labels: ``R`` and ``C`` labels.
      ax: matplotlib Axes to draw on; a new figure when None.
      vmin, vmax: colour range in log10 units.
      annotate: write ``log10`` of each cell into it.
      colorbar: add a colour bar.

    Returns:
      The matplotlib ``Figure``.
    """
    e = np.asarray(errors, np.float64)
    if e.ndim != 2:
        raise ValueError(f"errors must be 2-D (rows, columns), got shape {e.shape}.")
    if len(row_labels) != e.shape[0] or len(col_labels) != e.shape[1]:
        raise ValueError(
            f"Shape mismatch: errors {e.shape} vs {len(row_labels)} row and {len(col_labels)} column labels."
        )
    fig, ax = _new_axes(ax, (2.8 + 0.8 * e.shape[1], 1.6 + 0.38 * e.shape[0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(e > 0, np.log10(np.where(e > 0, e, 1.0)), vmin)
    logs = np.where(np.isnan(e), np.nan, np.clip(logs, vmin, vmax))
    matplotlib, _ = _matplotlib()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(logs), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(e.shape[1]), [str(c) for c in col_labels], rotation=35, ha="right")
    ax.set_yticks(range(e.shape[0]), [str(r) for r in row_labels])
    if annotate:
        for i in range(e.shape[0]):
            for j in range(e.shape[1]):
                v = e[i, j]
                text = "nan" if np.isnan(v) else ("exact" if v == 0 else f"{np.log10(v):.0f}")
                dark = np.isnan(logs[i, j]) or logs[i, j] > vmin + 0.6 * (vmax - vmin)
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black" if dark else "white")
    if colorbar:
        fig.colorbar(image, ax=ax, label="log10 error")
    if title:
        ax.set_title(title)
    return fig


def plot_gradcheck(report: Any, *, ax=None, title: str | None = None):
    """A :class:`fnn.GradcheckReport` as a heat map: rows ``layer.leaf``, columns the method pairs.

    Cells show ``log10`` of the max relative error; a cell above its tolerance is outlined in red.

    Returns:
      The matplotlib ``Figure``.
    """
    table = gradcheck_table(report)
    keys = list(dict.fromkeys(zip(table["layer"], table["leaf"])))
    pairs = list(dict.fromkeys(table["pair"]))
    err = np.full((len(keys), len(pairs)), np.nan)
    bad = np.zeros_like(err, dtype=bool)
    for layer, leaf, pair, rel, ok in zip(table["layer"], table["leaf"], table["pair"], table["max_rel"], table["ok"]):
        i, j = keys.index((layer, leaf)), pairs.index(pair)
        err[i, j], bad[i, j] = rel, not ok
    fig = plot_error_heatmap(
        err, [f"{l}.{k}" for l, k in keys], pairs, ax=ax,
        title=title or f"gradcheck ({getattr(report, 'dtype', '?')}): max relative error",
    )
    ax = fig.axes[0] if ax is None else ax
    from matplotlib.patches import Rectangle  # matplotlib is importable: plot_error_heatmap drew

    for i, j in zip(*np.nonzero(bad)):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    return fig


def plot_layer_curves(
    steps: Any,
    values: Any,
    *,
    ax=None,
    labels=None,
    band: Any = None,
    ylabel: str = "",
    title: str | None = None,
    log: bool = True,
):
    """One line per layer over training steps (or any x axis), with an optional shaded band per layer.

    Args:
      steps: ``(T,)`` x values.
      values: ``(T, L)`` values, one column per layer.
      band: optional ``(low, high)``, each ``(T, L)``, drawn as a shaded band around each line.
      labels: one name per layer.
      ylabel, title: axis label and title.
      log: logarithmic y axis.

    Returns:
      The matplotlib ``Figure``.
    """
    x = np.asarray(steps, np.float64)
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or x.shape != (v.shape[0],):
        raise ValueError(f"Shape mismatch: steps {x.shape} and values {v.shape}; expected (T,) and (T, L).")
    names = _layer_labels(v.shape[1], labels)
    if band is not None:
        lo, hi = (np.asarray(b, np.float64).reshape(v.shape) for b in band)
    fig, ax = _new_axes(ax, (5, 3.5))
    for l, name in enumerate(names):
        (line,) = ax.plot(x, v[:, l], label=name)
        if band is not None:
            ax.fill_between(x, lo[:, l], hi[:, l], color=line.get_color(), alpha=0.2, linewidth=0)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig
