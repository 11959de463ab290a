"""Training curves as a PNG: loss and accuracy per epoch from a :func:`fnn.fit` history.

matplotlib is an optional extra (``pip install 'fnn[plot]'``); it is imported only when a plot is drawn. The
figure is a :class:`matplotlib.figure.Figure` built without pyplot and written straight to a PNG, so nothing here
needs a display, and fnn never changes matplotlib's global backend (a notebook's inline plots keep working).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["plot_history", "png_bytes", "show", "MATPLOTLIB_HINT"]

MATPLOTLIB_HINT = "matplotlib is not installed (pip install 'fnn[plot]')"


def _figure_class():
    try:
        import matplotlib  # noqa: F401  (first: a missing matplotlib fails here even if a submodule was loaded)
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(MATPLOTLIB_HINT) from e
    return Figure


def plot_history(history: dict, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draws the loss (left) and the test accuracy (right) of a training history per epoch and saves a PNG.

    Args:
      history: a :func:`fnn.fit` history: ``epoch`` and ``train_loss`` lists, optionally ``test_loss`` and
        ``test_accuracy`` (entries may be None), and ``diverged`` (marked on both panels).
      path: the PNG to write; its folder must exist.
      title: an optional figure title.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      ImportError: matplotlib is missing; the message says how to install it.
      ValueError: the history has no ``epoch``/``train_loss`` lists of equal length.
    """
    epochs = list(history.get("epoch", []))
    train_loss = list(history.get("train_loss", []))
    if len(epochs) != len(train_loss):
        raise ValueError(
            f"plot_history: history['epoch'] has {len(epochs)} entries but history['train_loss'] has {len(train_loss)}."
        )
    figure = _figure_class()
    test_loss = history.get("test_loss") or []
    accuracy = [(e, a) for e, a in zip(epochs, history.get("test_accuracy") or [], strict=False) if a is not None]
    fig = figure(figsize=(10, 4), layout="constrained")  # no pyplot: no backend, nothing to close
    ax_loss, ax_acc = fig.subplots(1, 2)
    marker = "o" if len(epochs) <= 30 else None

    ax_loss.plot(epochs, train_loss, marker=marker, markersize=3, label="train (mean over the epoch's steps)")
    if test_loss:
        ax_loss.plot(epochs, test_loss, marker=marker, markersize=3, label="test (after the epoch)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    if train_loss and min(train_loss + list(test_loss)) > 0 and max(train_loss) / min(train_loss) > 20:
        ax_loss.set_yscale("log")
    ax_loss.legend()

    if accuracy:
        xs, ys = zip(*accuracy, strict=True)
        best = max(range(len(ys)), key=ys.__getitem__)
        label = f"test (last {ys[-1]:.4f}, best {ys[best]:.4f} at epoch {xs[best]})"
        ax_acc.plot(xs, ys, marker=marker, markersize=3, color="tab:green", label=label)
        ax_acc.legend(loc="lower right")
    else:
        ax_acc.text(0.5, 0.5, "no test accuracy recorded", ha="center", va="center", transform=ax_acc.transAxes)
    ax_acc.set_title("accuracy")
    ax_acc.set(xlabel="epoch", ylabel="accuracy")

    diverged = history.get("diverged")
    last = max(epochs + ([diverged["epoch"]] if diverged else []), default=None)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if last is not None:
            ax.set_xlim(0.5, last + 0.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if diverged:
            ax.axvline(diverged["epoch"], color="tab:red", linestyle="--")
            ax.text(diverged["epoch"], 0.5, f" diverged in epoch {diverged['epoch']}", color="tab:red",
                    rotation=90, ha="right", va="center", transform=ax.get_xaxis_transform())
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def png_bytes(fig, *, dpi: int = 110) -> bytes:
    """A matplotlib ``Figure`` rendered to PNG bytes at ``dpi`` (no pyplot, no backend involved)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def show(fig, *, dpi: int = 110) -> None:
    """Display a ``Figure`` in a notebook as a PNG at ``dpi``: the same image in Jupyter, in a headless run
    (nbclient) and in the README figures the notebooks make. The kernel's own (inline) backend stays in place
    for any pyplot figure a reader adds.

    Raises:
      ImportError: IPython is not installed (it comes with the ``notebooks`` extra).
    """
    try:
        from IPython.display import Image, display
    except ImportError as e:
        raise ImportError("fnn.plot.show displays in a notebook and needs IPython "
                          "(pip install 'fnn[notebooks]')") from e
    display(Image(png_bytes(fig, dpi=dpi)))

