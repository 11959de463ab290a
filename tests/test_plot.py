"""Tests for fnn/plot.py beyond the PNG itself (tests/test_cli.py draws one): fnn never changes matplotlib's
global backend, so a notebook's inline figures keep working after fnn has drawn something."""

from __future__ import annotations

import pytest

matplotlib = pytest.importorskip("matplotlib")

HISTORY = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3], "test_loss": [0.9, 0.6, 0.5],
           "test_accuracy": [0.7, 0.8, 0.85]}


@pytest.fixture
def svg_backend():
    """A backend other than Agg, so that forcing Agg (what fnn.plot used to do) shows up as a change."""
    before = matplotlib.rcParams["backend"]  # (the raw setting: reading it does not resolve "auto")
    matplotlib.use("svg", force=True)
    yield "svg"
    matplotlib.rcParams["backend"] = before


def test_plot_history_leaves_the_backend_alone(svg_backend, tmp_path):
    import fnn.plot

    assert matplotlib.get_backend() == svg_backend
    path = fnn.plot.plot_history(HISTORY, tmp_path / "curves.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG, drawn without switching to Agg
    assert matplotlib.get_backend() == svg_backend


def test_stats_plots_leave_the_backend_alone(svg_backend, tmp_path):
    import numpy as np

    from fnn import stats

    fig = stats.plot_error_heatmap(np.full((2, 3), 1e-8), ["a", "b"], ["x", "y", "z"], title="t")
    fig.savefig(tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == svg_backend


def test_png_bytes_and_show_render_a_figure_without_a_backend(monkeypatch):
    """The notebooks display their figures through fnn.plot.show (they used to carry three copies of it)."""
    from matplotlib.figure import Figure

    from fnn import plot

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    png = plot.png_bytes(fig, dpi=50)
    assert png.startswith(b"\x89PNG")
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    plot.show(fig, dpi=50)
    assert len(shown) == 1 and shown[0].data == png
