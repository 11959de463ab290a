"""Training history and progress: the per-epoch record ``fit`` and ``fit_ensemble`` return, and their progress bar."""

from __future__ import annotations

__all__ = ["new_history", "record_epoch", "continued_history", "EpochBar", "progress_bar", "show_epoch"]


def new_history(*, with_test: bool, with_val: bool = False) -> dict:
    """An empty history: per-epoch lists ``epoch``, ``train_loss``, ``epoch_time`` (and the test and validation
    metrics: ``test_loss``, ``test_accuracy``, ``val_loss``, ``val_accuracy``)."""
    history: dict = {"epoch": [], "train_loss": [], "epoch_time": []}
    for prefix, wanted in (("test", with_test), ("val", with_val)):
        if wanted:
            history.update({f"{prefix}_loss": [], f"{prefix}_accuracy": []})
    return history


def record_epoch(history: dict, epoch: int, train_loss, epoch_time: float, test: dict | None,
                 val: dict | None = None) -> None:
    """Append one finished epoch to every list of ``history`` at once, so the lists never disagree in length
    (an interrupt between two appends cannot leave a shorter ``test_loss``). ``test`` and ``val`` are
    evaluation's ``{"loss", "accuracy"}`` or None; a history that has test (validation) lists but no test set
    this run (a resumed run without its test data) records ``None`` for them."""
    row = {"epoch": epoch, "train_loss": train_loss, "epoch_time": epoch_time}
    for prefix, metrics in (("test", test), ("val", val)):
        lists = f"{prefix}_loss" in history
        if metrics is not None and not lists:
            raise ValueError(f"record_epoch: {prefix} metrics given, but the history was made without them.")
        if lists:
            row.update({f"{prefix}_loss": None if metrics is None else metrics["loss"],
                        f"{prefix}_accuracy": None if metrics is None else metrics["accuracy"]})
    for name, value in row.items():
        history[name].append(value)


def continued_history(history: dict, *, with_test: bool, with_val: bool = False) -> dict:
    """A restored history, ready to be continued: every per-epoch list as long as ``history["epoch"]``.

    A ``diverged`` record of the run that saved the checkpoint moves to ``earlier_divergences`` (the resumed
    run has not diverged); test (validation) metrics of epochs run without a test (validation) set are ``None``.
    """
    history = dict(history)
    earlier = history.pop("diverged", None)
    if earlier is not None:
        history["earlier_divergences"] = [*history.get("earlier_divergences", []), earlier]
    done = len(history["epoch"])
    history.setdefault("epoch_time", [None] * done)
    for prefix, wanted in (("test", with_test), ("val", with_val)):
        if wanted:
            for name in (f"{prefix}_loss", f"{prefix}_accuracy"):
                history[name] = list(history.get(name, [None] * done))
    return history


class EpochBar:
    """A tqdm bar over epochs whose clock starts once the run's first epoch is done: that epoch compiles the
    program (seconds to minutes), so counting it would make the rate and the ETA wrong for the whole run.
    The rate is the plain average over the compiled epochs (``smoothing=0``); the ETA shows ``?`` until the
    second epoch of the run is done. ``tqdm`` is the underlying bar."""

    def __init__(self, *, total: int, initial: int, desc: str):
        from tqdm.auto import tqdm

        self.tqdm = tqdm(total=total, initial=initial, desc=desc, unit="epoch", leave=True, smoothing=0)
        self.compiled = False

    def advance(self, postfix: dict) -> None:
        bar = self.tqdm
        bar.set_postfix(postfix, refresh=False)
        if self.compiled:
            bar.update(1)
            return
        # The first epoch of the run: count it without timing it, and start the clock now (tqdm's own clock),
        # so no rate or ETA that includes the compilation is ever shown.
        self.compiled = True
        bar.n += 1
        bar.initial = bar.last_print_n = bar.n
        bar.start_t = bar.last_print_t = bar._time()
        bar.refresh()

    def close(self) -> None:
        self.tqdm.close()


def progress_bar(enabled: bool, *, total: int, initial: int = 0, desc: str = "fit") -> EpochBar | None:
    """An :class:`EpochBar` over epochs (to stderr), or None when disabled."""
    return EpochBar(total=total, initial=initial, desc=desc) if enabled else None


def show_epoch(bar: EpochBar | None, history: dict) -> None:
    """Advance ``bar`` by one epoch, showing the last ``train_loss`` and ``test_acc`` (member 0's for an ensemble;
    no ``test_acc`` without a test set or for regression)."""
    if bar is None:
        return
    first = lambda v: v[0] if isinstance(v, list) else v
    postfix = {"train_loss": f"{first(history['train_loss'][-1]):.4f}"}
    accuracy = history.get("test_accuracy", [None])[-1]
    if accuracy is not None and first(accuracy) is not None:
        postfix["test_acc"] = f"{first(accuracy):.4f}"
    bar.advance(postfix)
