"""Tests for fnn/stats_plots.py (reached as fnn.stats.plot_*): figures drawn without pyplot, their validation,
and the install hint without matplotlib."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from fnn import stats, stats_plots
from fnn.gradcheck import LeafCheck

SHAPES = [{"w": (4, 3), "b": (3,)}, {"w": (3, 2), "b": (2,)}]


def random_per_example(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal((n, *s)) for k, s in layer.items()} for layer in SHAPES]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def test_plots_draw_without_pyplot():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    g = random_per_example()
    for fig in [
        stats.plot_gradient_stats(g, labels=["a", "b"], title="t"),
        stats.plot_gradient_stats(stats.gradient_stats(g)),
        stats.plot_error_heatmap(np.array([[1e-7, 0.0], [np.nan, 0.5]]), ["r0", "r1"], ["c0", "c1"], title="e"),
        stats.plot_layer_curves(np.arange(4), np.random.default_rng(0).random((4, 2)) + 0.1,
                                band=(np.full((4, 2), 0.05), np.full((4, 2), 2.0))),
    ]:
        assert isinstance(fig, Figure)
        assert _png(fig).startswith(b"\x89PNG")
    # a report's rows, one of them failing (outlined in red)
    rows = [LeafCheck(0, leaf, shape, pair, 1e-9, rel, 1.0, 1e-6, 4)
            for leaf, shape in [("b", (2,)), ("w", (3, 2))]
            for pair, rel in [("manual~autodiff", 0.0), ("manual~fd", 1e-9 if leaf == "w" else 0.5),
                              ("autodiff~fd", 1e-9)]]
    fig = stats.plot_gradcheck(rows, title="rows")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (2, 3)  # (layer.leaf) × (method pair)
    red = [p for p in ax.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert [(p.get_x(), p.get_y()) for p in red] == [(0.5, -0.5)]  # row 0.b, column manual~fd
    assert _png(fig).startswith(b"\x89PNG")
    # drawing onto caller-provided axes returns the caller's figure
    own = Figure()
    assert stats.plot_error_heatmap(np.ones((2, 2)), "ab", "cd", ax=own.add_subplot(), colorbar=False) is own


def test_plot_validation():
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="Shape mismatch"):
        stats.plot_error_heatmap(np.ones((2, 3)), ["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="2-D"):
        stats.plot_error_heatmap(np.ones(3), ["a"], ["b"])
    with pytest.raises(ValueError, match="labels for 2 layers"):
        stats.plot_gradient_stats(random_per_example(), labels=["only one"])
    with pytest.raises(ValueError, match="Shape mismatch"):
        stats.plot_layer_curves(np.arange(3), np.ones((4, 2)))


def test_plots_without_matplotlib_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'fnn\[plot\]'"):
        stats.plot_error_heatmap(np.ones((1, 1)), ["a"], ["b"])
    # the statistics themselves never need matplotlib
    assert stats.gradient_snr(random_per_example()).shape == (2,)


def test_fnn_stats_reexports_the_plots():
    for name in stats_plots.__all__:
        assert getattr(stats, name) is getattr(stats_plots, name), name
        assert name in stats.__all__
