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
:func:`plot_layer_curves`, defined in :mod:`fnn.stats_plots`) need matplotlib (``pip install 'fnn[plot]'``),
imported only when they are called. They draw on ``matplotlib.figure.Figure`` objects without pyplot, so they
never change the global backend; ``fig.savefig`` renders with Agg. The statistics are defined in
``fnn/_stats.py``; use every name as ``fnn.stats.NAME``.
"""

from fnn._stats import (
    cosine_similarity,
    delta_spread,
    example_norms,
    gradcheck_table,
    gradient_snr,
    gradient_stats,
    gradient_variance,
    mean_gradient,
)
from fnn.stats_plots import plot_error_heatmap, plot_gradcheck, plot_gradient_stats, plot_layer_curves

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
