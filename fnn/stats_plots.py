"""Plots of gradient statistics and gradient checks (matplotlib, optional): the ``plot_*`` names of :mod:`fnn.stats`.

They need matplotlib (``pip install 'fnn[plot]'``), imported only when a function is called. They draw on
``matplotlib.figure.Figure`` objects without pyplot, so they never change the global backend; ``fig.savefig``
renders with Agg. Use them as ``fnn.stats.plot_gradient_stats`` etc. (or from this module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fnn._stats import gradcheck_table, gradient_stats

__all__ = ["plot_gradient_stats", "plot_gradcheck", "plot_error_heatmap", "plot_layer_curves"]


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
    keys = list(dict.fromkeys(zip(table["layer"], table["leaf"], strict=True)))
    pairs = list(dict.fromkeys(table["pair"]))
    err = np.full((len(keys), len(pairs)), np.nan)
    bad = np.zeros_like(err, dtype=bool)
    columns = (table["layer"], table["leaf"], table["pair"], table["max_rel"], table["ok"])
    for layer, leaf, pair, rel, ok in zip(*columns, strict=True):
        i, j = keys.index((layer, leaf)), pairs.index(pair)
        err[i, j], bad[i, j] = rel, not ok
    fig = plot_error_heatmap(
        err, [f"{l}.{k}" for l, k in keys], pairs, ax=ax,
        title=title or f"gradcheck ({getattr(report, 'dtype', '?')}): max relative error",
    )
    ax = fig.axes[0] if ax is None else ax
    from matplotlib.patches import Rectangle  # matplotlib is importable: plot_error_heatmap drew

    for i, j in zip(*np.nonzero(bad), strict=True):
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
