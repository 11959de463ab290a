"""Training history and progress: the per-epoch record ``fit`` and ``fit_ensemble`` return, and their progress bar."""

from __future__ import annotations

__all__ = ["new_history", "record_epoch", "continued_history", "progress_bar", "show_epoch"]


def new_history(*, with_test: bool) -> dict:
    """An empty history: per-epoch lists ``epoch``, ``train_loss``, ``epoch_time`` (and the test metrics)."""
    history: dict = {"epoch": [], "train_loss": [], "epoch_time": []}
    if with_test:
        history.update(test_loss=[], test_accuracy=[])
    return history


def record_epoch(history: dict, epoch: int, train_loss, epoch_time: float, test: dict | None) -> None:
    """Append one finished epoch to every list of ``history`` at once, so the lists never disagree in length
    (an interrupt between two appends cannot leave a shorter ``test_loss``). ``test`` is evaluation's
    ``{"loss", "accuracy"}`` or None; a history that has test lists but no test set this run (a resumed run
    without its test data) records ``None`` for them."""
    test_lists = "test_loss" in history
    if test is not None and not test_lists:
        raise ValueError("record_epoch: test metrics given, but the history was made without a test set.")
    row = {"epoch": epoch, "train_loss": train_loss, "epoch_time": epoch_time}
    if test_lists:
        row.update(test_loss=None if test is None else test["loss"],
                   test_accuracy=None if test is None else test["accuracy"])
    for name, value in row.items():
        history[name].append(value)


def continued_history(history: dict, *, with_test: bool) -> dict:
    """A restored history, ready to be continued: every per-epoch list as long as ``history["epoch"]``.

    A ``diverged`` record of the run that saved the checkpoint moves to ``earlier_divergences`` (the resumed
    run has not diverged); test metrics of epochs run without a test set are ``None``.
    """
    history = dict(history)
    earlier = history.pop("diverged", None)
    if earlier is not None:
        history["earlier_divergences"] = [*history.get("earlier_divergences", []), earlier]
    done = len(history["epoch"])
    history.setdefault("epoch_time", [None] * done)
    if with_test:
        for name in ("test_loss", "test_accuracy"):
            history[name] = list(history.get(name, [None] * done))
    return history


def progress_bar(enabled: bool, *, total: int, initial: int = 0, desc: str = "fit"):
    """A tqdm bar over epochs, or None when disabled."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", leave=True)


def show_epoch(bar, history: dict) -> None:
    """Advance ``bar`` by one epoch, showing the last train loss and test accuracy (first member's for a stack)."""
    if bar is None:
        return
    first = lambda v: v[0] if isinstance(v, list) else v
    postfix = {"loss": f"{first(history['train_loss'][-1]):.4f}"}
    accuracy = history.get("test_accuracy", [None])[-1]
    if accuracy is not None and first(accuracy) is not None:
        postfix["acc"] = f"{first(accuracy):.4f}"
    bar.set_postfix(postfix)
    bar.update(1)
