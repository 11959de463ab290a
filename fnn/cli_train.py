"""``fnn train``: train an MLP on a data set and write a run folder that ``fnn train --resume`` continues.

With no arguments it trains a 64-128-10 ReLU/softmax network on the shipped 8x8 digits with the hand-written
backprop and plain SGD, and writes a run folder (``runs/<dataset>-<timestamp>`` or ``--out``)::

    config.json               every setting of the run, the learning rate used and the training data's
                              fingerprint (``--resume DIR`` continues from it, on the same data)
    checkpoint.safetensors    params, optimizer state, epoch, history and PRNG key (see fnn.checkpoint)
    history.json              per-epoch train loss, test loss, test accuracy, epoch time
    curves.png                loss and accuracy per epoch (needs matplotlib: pip install 'fnn[plot]')
    train.lock                while a run uses the folder: its pid and host (see fnn._run_folder)

``--model cnn`` trains a convolutional net on images (:func:`make_cnn`: two 3x3 Conv2D + 2x2 max-pool stages,
then the ``--hidden`` Dense layers), on the digits as ``8x8x1`` images by default and on Fashion-MNIST as
``28x28x1`` with ``--dataset fashion-mnist``.

``--dropout RATE`` puts ``fnn.layers.Dropout(RATE)`` after every hidden layer (the net is then an
``fnn.serial``; without it, the same ``fnn.mlp`` as ever) and ``--l2 LAM`` / ``--l1 LAM`` add
``fnn.penalties.l2(LAM)`` ((LAM/2)·Σw² over the weights) / ``l1(LAM)``; all three are recorded in config.json and
kept by ``--resume``.

Its last line on stdout is ``test accuracy: 0.xxxx``. Every setting is checked before any data is loaded or
anything is written (bad ones exit with 2); the exit codes are listed in :mod:`fnn.cli`. ``--lr`` defaults to
the optimizer's own rate (``fnn.optim.DEFAULT_LEARNING_RATES``: sgd 0.1, momentum 0.01, adam 0.001).

A Ctrl-C at any point leaves a consistent run folder: the checkpoint holds the last finished epoch and its
history (``fit`` records an epoch all at once), history.json and curves.png are written atomically (or the
plot is skipped), and ``--resume`` continues bit-identically. Only one ``fnn train`` may use a folder at a
time (a second one exits with 2); the lock of a killed run is taken over with a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import functools
import os
import sys
import time
import warnings
from pathlib import Path

import jax
import optax

import fnn
from fnn._checkpointer import check_run_metadata, restored_key
from fnn._checks import check_memory
from fnn._cli import EXIT_FAILED, EXIT_OK, UsageError, error, user_input, write_json
from fnn._cli_models import CNN_FILTERS, make_cnn, make_net, make_penalty
from fnn._cli_train_args import add_train_arguments
from fnn._files import check_regular_file
from fnn._run_folder import (
    RESUME_MAY_CHANGE,
    TRAIN_DEFAULTS,
    check_config,
    check_fingerprint,
    check_no_run_yet,
    data_fingerprint,
    describe_fingerprint,
    locked,
    make_folder,
    read_config,
)
from fnn.cli_data import load_run_data, loss_targets
from fnn.early_stopping import BEST_NAME
from fnn.run import write_preprocessing
from fnn.train import CHECKPOINT_NAME

__all__ = ["CNN_FILTERS", "PLOT_SKIPPED", "RESUME_MAY_CHANGE", "TRAIN_DEFAULTS", "add_parser", "check_config",
           "make_cnn", "make_net", "make_penalty", "run", "train_config", "write_history"]

PLOT_SKIPPED = "plot skipped: matplotlib is not installed (pip install 'fnn[plot]')"

def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command to the ``fnn`` parser's sub-commands."""
    train = commands.add_parser(
        "train", help="train an MLP or a CNN and write a run folder",
        description="Train an MLP (default: 64-128-10 relu/softmax on the shipped digits, hand-written backprop, "
                    "plain SGD) on a shipped data set or your own CSV/NPZ file (--data) and write a run folder with "
                    "config.json, preprocessing.json, checkpoint.safetensors, history.json and curves.png. The "
                    "last line printed is 'test accuracy: 0.xxxx' ('test mse: ...' for a regression).",
    )
    add_train_arguments(train)
    train.set_defaults(func=run)


def train_config(args: argparse.Namespace) -> tuple[dict, Path, dict]:
    """The run's settings, folder and records: the defaults with the given options, or a resumed run's
    config.json (its settings, and its records: the network, the data fingerprint)."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k, None) is not None}
    for k in ("data_dir", "data_file"):
        if given.get(k) is not None:
            given[k] = str(Path(given[k]).resolve())
    if args.resume is None:
        if args.allow_other_data:
            raise UsageError("--allow-other-data applies only with --resume DIR.")
        if "data_file" in given and ("dataset" in given or "data_dir" in given):
            raise UsageError("--data PATH trains on your own file or IDX folder; do not combine it with --dataset or "
                             "--data-dir.")
        if "data_file" not in given and any(k in given for k in ("target", "features", "task")):
            raise UsageError("--target, --features and --task describe a file given with --data PATH.")
        if "patience" in given and not given.get("val_fraction"):
            raise UsageError(f"--patience {given['patience']} stops on the validation loss and needs a validation "
                             f"set: add --val-fraction F (e.g. 0.1), the part of the training data held out.")
        config, records = check_config({**TRAIN_DEFAULTS, **given}), {}
        config["dataset"] = config["dataset"].strip().lower().replace("_", "-")
        if config["data_file"] is not None:  # the folder's name
            config["dataset"] = Path(config["data_file"]).name.split(".")[0] or "data"
        config["schedule_epochs"] = config["epochs"]
        if args.out is not None:
            out = Path(args.out)
            if out.exists() and not out.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"--out must be a folder, found a file "
                                                        f"({os.strerror(errno.ENOTDIR)})", str(out))
            check_no_run_yet(out)
        else:  # made unique when it is created (see make_folder)
            out = Path("runs") / f"{config['dataset']}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    else:
        out = Path(args.resume)
        if args.out is not None:
            raise UsageError("--resume DIR continues the run in DIR; do not combine it with --out.")
        config, records = read_config(out)
        path = out / "config.json"
        for k, v in given.items():
            if k in RESUME_MAY_CHANGE:
                config[k] = v
            elif v != config[k]:
                flag = {"standardize": "--no-standardize", "data_file": "--data"}.get(k, "--" + k.replace("_", "-"))
                raise UsageError(f"{flag} {v!r} differs from the resumed run's {config[k]!r} ({path}); a resumed "
                                 f"run keeps its settings, only --epochs and --data-dir may change.")
        if config["schedule_epochs"] is None:  # a run from before schedules: constant
            config["schedule_epochs"] = config["epochs"]
        if os.path.lexists(out / CHECKPOINT_NAME):
            user_input(f"--resume {out}", check_regular_file, out / CHECKPOINT_NAME, "a checkpoint")
    return config, out, records


def check_resumable(out: Path, net: fnn.Network, config: dict, loss: fnn.losses.Loss, optimizer,
                    penalty=None) -> None:
    """The checkpoint in ``out`` (if any) is a valid fnn checkpoint of ``net``, saved with this run's
    training settings, with metadata ``fit`` can resume from: else a UsageError (a bad run folder) or an OSError
    (a dangling symbolic link, a link loop), before anything is compiled or written."""
    path = out / CHECKPOINT_NAME
    if not os.path.lexists(path):  # the run was stopped before its first checkpoint: it starts from epoch 1
        return
    template, rate = None, make_schedule(config, 1)  # the structure only: any step count will do
    opt = fnn.optim.resolve_optimizer(optimizer, rate)[0]  # the transformation fit builds (None: plain SGD)
    if opt is not None:  # the optimizer state's structure, as fit builds it (shapes only, nothing computed)
        template = jax.eval_shape(lambda: opt.init(net.init(jax.random.key(0))))
    ckpt = user_input(f"--resume {out}", fnn.checkpoint.load, path, net, opt_state_like=template)
    _, _, saved = user_input("", check_run_metadata, path, ckpt.metadata)
    user_input("", restored_key, path, ckpt.arrays)
    if template is not None and ckpt.opt_state is None:
        raise UsageError(f"--resume {out}: {path} holds no optimizer state, but the run uses "
                         f"{optimizer or config['schedule'] + ' schedule'}.")
    now = {"loss": loss.name, "batch_size": config["batch_size"], "grads": config["grads"],
           "strict": config["strict"], "optimizer": optimizer,
           "lr": "schedule" if callable(rate) else float(config["lr"])}
    differ = [f"{k}: checkpoint {saved[k]!r}, config.json {v!r}" for k, v in now.items()
              if k in saved and saved[k] != v]
    pen = None if penalty is None else penalty.describe()  # recorded by fit only when there is one
    if saved.get("penalty") != pen:
        differ.append(f"penalty: checkpoint {saved.get('penalty')!r}, config.json {pen!r}")
    if differ:
        raise UsageError(f"--resume {out}: {path} was saved with other training settings than "
                         f"{out / 'config.json'} ({'; '.join(differ)}).")


def make_schedule(config: dict, steps_per_epoch: int):
    """``--schedule``'s learning rate over the ``schedule_epochs * steps_per_epoch`` steps: ``config["lr"]``
    itself (constant), ``optax.cosine_decay_schedule`` to 0, or ``x0.1`` at half and again at three quarters
    of the steps. The span is the first run's ``--epochs`` (recorded in config.json), so a resumed run with more
    epochs continues the same schedule (at its final rate)."""
    lr, total = config["lr"], max(1, config["schedule_epochs"] * steps_per_epoch)
    if config["schedule"] == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total)
    if config["schedule"] == "step":
        return optax.piecewise_constant_schedule(lr, {total // 2: 0.1, (3 * total) // 4: 0.1})
    return lr


def write_history(out: Path, history: dict, title: str) -> None:
    """Write ``history.json`` and ``curves.png`` into ``out``, each atomically (a Ctrl-C leaves the old file or the
    new one, never half of one); the plot is skipped without matplotlib."""
    from fnn.plot import plot_history

    write_json(out / "history.json", history)
    tmp = out / ".curves.png.tmp.png"  # the suffix tells matplotlib the format
    try:
        plot_history(history, tmp, title=title)
        os.replace(tmp, out / "curves.png")
    except ImportError:
        print(PLOT_SKIPPED)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _warn(message: str) -> None:
    print(f"fnn train: warning: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """``fnn train``: returns 0, or 1 when training diverged; raises for the errors :mod:`fnn.cli` maps."""
    config, out, records = train_config(args)
    # Validate every name before loading data or compiling anything; the errors name the closest match, and
    # the option (or, for a resumed run, config.json's key) the name came from.
    def where(key: str) -> str:
        return f"--{key.replace('_', '-')}" if args.resume is None else f"{out / 'config.json'}: {key}"

    loss = user_input(where("loss"), fnn.losses.get, config["loss"])
    user_input(where("activation"), fnn.activations.get, config["activation"])
    output = config["output"] or fnn.losses.natural_output(loss) or "sigmoid"
    user_input(where("output"), fnn.activations.get, output)
    config["output"] = output
    optimizer = None if config["optimizer"] == "sgd" else config["optimizer"]  # None: the plain W := W - α dW
    lr_default = config["lr"] is None  # the optimizer's own rate, recorded in config.json from now on
    if lr_default:
        config["lr"] = user_input(where("optimizer"), fnn.optim.default_learning_rate, config["optimizer"])
    user_input(where("optimizer"), fnn.make_optimizer, config["optimizer"], config["lr"])
    if args.devices is not None:
        user_input("--devices", fnn.parallel.make_mesh, args.devices)
        if config["batch_size"] % args.devices:
            raise UsageError(f"--batch-size {config['batch_size']} must be divisible by --devices {args.devices} "
                             f"(each device takes an equal part of every batch).")

    data = load_run_data(config, where("data_file" if config["data_file"] else "dataset")
                         if args.data_dir is None else "--dataset")
    prep = data.preprocessing
    if config["data_file"] is not None:
        config["task"] = prep.task  # as detected (fnn.cli_data), recorded for evaluate and resume
    if prep.task == "regression":
        if args.resume is None and args.loss is None:  # a regression's natural loss and output
            config["loss"] = "mse"
            loss = fnn.losses.get("mse")
            config["output"] = output = args.output or "identity"
        if "cross_entropy" in loss.name:
            raise UsageError(f"--loss {loss.name} is a classification loss, but the target of {config['data_file']} "
                             f"is a regression (numbers); use --loss mse, or --task classification.")
    (x_train, y_train), (x_test, y_test) = data.train, data.test
    fingerprint = data_fingerprint(*data.loaded)  # of the data as loaded, before splitting or standardizing
    earlier = records.get("earlier_data", [])
    if args.resume is not None and check_fingerprint(records.get("data"), fingerprint, out / "config.json",
                                                     allow=args.allow_other_data):
        earlier = [*earlier, records["data"]]
        _warn(f"continuing on other data (--allow-other-data): {describe_fingerprint(fingerprint)}; the run "
              f"trained on {describe_fingerprint(records['data'])} so far.")
    records = {"network": None, "data": fingerprint, **({"earlier_data": earlier} if earlier else {}),
               "fnn_version": fnn.__version__}
    if config["batch_size"] > x_train.shape[0]:
        raise UsageError(f"--batch-size {config['batch_size']} is larger than the training set "
                         f"({x_train.shape[0]} examples).")
    # classes, or regression outputs ((n,) values are one output); the targets in the loss's form
    classes = len(prep.classes) if prep.task == "classification" else 1 if y_train.ndim == 1 else y_train.shape[1]
    y_train, y_test = (loss_targets(y, prep.task, loss, classes) for y in (y_train, y_test))
    val = None if data.val is None else (data.val[0], loss_targets(data.val[1], prep.task, loss, classes))
    features = "x".join(map(str, x_train.shape[1:]))  # 64, or 8x8x1 for images
    if config["model"] == "cnn":
        net = make_cnn(x_train.shape[1:], config["hidden"], classes, config["activation"], output, config["dropout"],
                       config["norm"])
        sizes = f"cnn {features} -> conv {'/'.join(map(str, CNN_FILTERS))} -> {config['hidden'] + [classes]}"
    else:
        sizes = [x_train.shape[1], *config["hidden"], classes]
        net = make_net(sizes, config["activation"], output, config["dropout"], config["norm"])
    penalty = make_penalty(config)
    if args.resume is not None:
        check_resumable(out, net, config, loss, optimizer, penalty)
    key_init, key_fit = jax.random.split(jax.random.key(config["seed"]))
    # Sized without allocating (fit checks again, but init would already have allocated a huge net).
    rate = make_schedule(config, x_train.shape[0] // config["batch_size"])
    opt = fnn.optim.resolve_optimizer(optimizer, rate)[0]  # what fit will build (None: plain SGD)
    user_input("", functools.partial(check_memory, what="--hidden"), jax.eval_shape(net.init, key_init), opt,
               strict=config["strict"])
    params = jax.jit(net.init)(key_init)  # one compiled program instead of one compile per eager op

    out = make_folder(out, unique=args.out is None and args.resume is None)
    with locked(out, _warn):  # one run per folder; released on every way out (Ctrl-C included)
        if args.resume is None:
            check_no_run_yet(out)  # another run may have used the folder before we locked it
        records["network"] = net.describe()
        write_json(out / "config.json", {**config, **records})
        write_preprocessing(out, prep)
        lr_note = f" ({config['optimizer']}'s default)" if lr_default else ""
        what = f"{classes} classes" if prep.task == "classification" else f"{classes} regression target(s)"
        split = "" if val is None else f" / {val[0].shape[0]} validation"
        print(f"data: {config['dataset']}, {x_train.shape[0]} train{split} / {x_test.shape[0]} test examples, "
              f"{features} features, {what}{' (standardized)' if config['standardize'] else ''}")
        extras = "".join(f", {name} {config[name]:g}" for name in ("dropout", "l1", "l2") if config[name]) + (
            f", {config['norm']} norm" if config["norm"] else "")
        sched = "" if config["schedule"] == "constant" else f" ({config['schedule']} schedule)"
        stop = "" if config["patience"] is None else f", early stopping (patience {config['patience']})"
        print(f"network: {sizes} {config['activation']} -> {output}{extras}, loss {loss.name}, "
              f"{config['optimizer']} lr {config['lr']:g}{lr_note}{sched}, batch {config['batch_size']}, "
              f"{config['grads']} gradients{stop}")
        print(f"run folder: {out}{' (resumed)' if args.resume else ''}")
        sys.stdout.flush()
        return _train(args, config, records, out, net, params, key_fit, loss, optimizer, penalty,
                      (x_train, y_train), (x_test, y_test), val, rate, title=f"{config['dataset']}: {sizes} "
                      f"{config['activation']} -> {config['output']}{extras}, {loss.name}, {config['optimizer']} lr "
                      f"{config['lr']:g}, batch {config['batch_size']}")


def _train(args, config, records, out, net, params, key_fit, loss, optimizer, penalty, train, test, val, rate, *,
           title: str) -> int:
    """Train (in the locked folder), write the history and curves, print the test accuracy."""
    t0 = time.perf_counter()
    trained: list[int] = []  # the epochs this call ran (a resumed run starts after its checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fnn.DivergenceWarning)
        try:
            *params, history = fnn.fit(
                net, params, train, test, loss=loss, epochs=config["epochs"],
                batch_size=config["batch_size"], learning_rate=rate, optimizer=optimizer,
                grads=config["grads"], key=key_fit, progress=not args.no_progress, checkpoint_dir=out,
                resume=args.resume is not None, strict=config["strict"], callback=lambda e, h: trained.append(e),
                devices=args.devices, penalty=penalty, state=net.init_state() if net.stateful else None,
                validation=val, early_stopping=None if config["patience"] is None else fnn.EarlyStopping(
                    monitor="val_loss", patience=config["patience"]),
            )  # params, or params and the state of a net with BatchNorm
        except fnn.TrainingInterrupted as stop:  # a checkpoint is saved; fnn.cli reports it (exit 130)
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C skips the curves, not the message
                write_history(out, stop.history, title)
            raise
    seconds = time.perf_counter() - t0
    try:
        return _report(config, records, out, net, params, history, trained, seconds, title, caught, loss, test)
    except KeyboardInterrupt:  # training is over and saved: say so, not just "interrupted"
        raise KeyboardInterrupt(
            f"interrupted after training: the checkpoint of epoch {len(history['epoch'])} is saved in {out}; "
            f"run 'fnn train --resume {out}' to write the history and curves again.") from None


def _report(config, records, out, net, params, history, trained, seconds, title, caught, loss, test) -> int:
    diverged = [w for w in caught if issubclass(w.category, fnn.DivergenceWarning)]
    for w in caught:
        if w not in diverged:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    write_history(out, history, title)
    if diverged:
        error("train", diverged[-1].message)
        return EXIT_FAILED
    if trained:
        span = (f"{len(trained)} epoch{'s' * (len(trained) > 1)}" if trained[0] == 1
                else f"epochs {trained[0]}-{trained[-1]}" if len(trained) > 1 else f"epoch {trained[0]}")
        print(f"trained {span} in {seconds:.1f} s (including compilation); "
              f"train loss {history['train_loss'][-1]:.4f}")
    elif (history.get("early_stopping") or {}).get("stopped_epoch") is None:
        print(f"nothing to train: the run already has {len(history['epoch'])} epochs (raise --epochs)")
        config["epochs"] = max(config["epochs"], len(history["epoch"]))
        write_json(out / "config.json", {**config, **records})
    stopping = history.get("early_stopping")
    if stopping is not None:
        print(f"early stopping: {stopping['reason']}; the best epoch's params are in {out / BEST_NAME}")
    metrics = fnn.evaluate(net, params[0], *test, loss, state=params[1] if net.stateful else None)
    if metrics["accuracy"] is None or config["task"] == "regression":
        print(f"test {loss.name}: {metrics['loss']:.6g}")
    else:
        print(f"test accuracy: {metrics['accuracy']:.4f}")
    return EXIT_OK
