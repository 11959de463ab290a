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
import numpy as np

import fnn
from fnn._checkpointer import check_run_metadata, restored_key
from fnn._checks import check_memory
from fnn._cli import EXIT_FAILED, EXIT_OK, UsageError, error, one_line, positive, user_input, widths, write_json
from fnn._cli_models import CNN_FILTERS, NORMS, make_cnn, make_net, make_penalty
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
from fnn.idx import MNIST_FILES
from fnn.train import CHECKPOINT_NAME

__all__ = ["CNN_FILTERS", "PLOT_SKIPPED", "RESUME_MAY_CHANGE", "TRAIN_DEFAULTS", "add_parser", "check_config",
           "make_cnn", "make_net", "make_penalty", "run", "train_config", "write_history"]

PLOT_SKIPPED = "plot skipped: matplotlib is not installed (pip install 'fnn[plot]')"

def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command to the ``fnn`` parser's sub-commands."""
    d = TRAIN_DEFAULTS
    train = commands.add_parser(
        "train", help="train an MLP and write a run folder",
        description="Train an MLP (default: 64-128-10 relu/softmax on the shipped digits, hand-written backprop, "
                    "plain SGD) and write a run folder with config.json, checkpoint.safetensors, history.json "
                    "and curves.png. The last line printed is 'test accuracy: 0.xxxx'.",
    )
    train.add_argument("--model", choices=("mlp", "cnn"),
                       help="mlp (Dense layers, --hidden) or cnn (two 3x3 convolution + 2x2 max-pool stages, 32 and "
                            "64 filters, then the --hidden Dense layers; images, digits or fashion-mnist) "
                            f"(default {d['model']})")
    train.add_argument("--dataset", help=f"digits, iris, mnist or fashion-mnist (default {d['dataset']})")
    train.add_argument("--data-dir", help="folder of the IDX files (required for mnist; fashion-mnist defaults "
                                          "to /usr/share/datasets/fashion-mnist)")
    train.add_argument("--hidden", type=widths, metavar="W1,W2,...",
                       help="hidden layer widths, comma-separated; '' for none (default 128)")
    train.add_argument("--activation", help=f"hidden activation (default {d['activation']})")
    train.add_argument("--output", help="output activation (default: the loss's natural one, softmax for "
                                        "(sparse) categorical cross-entropy, sigmoid for mse/quadratic)")
    train.add_argument("--loss", help=f"loss (default {d['loss']})")
    train.add_argument("--epochs", type=positive(int),
                       help=f"total epochs, counting resumed ones (default {d['epochs']})")
    train.add_argument("--batch-size", type=positive(int), help=f"mini-batch size (default {d['batch_size']})")
    train.add_argument("--lr", type=positive(float),
                       help="learning rate α (default: the optimizer's own, sgd 0.1, momentum 0.01, adam 0.001)")
    train.add_argument("--optimizer", help="sgd (plain W := W - α dW), momentum or adam (default sgd)")
    train.add_argument("--grads", choices=("manual", "autodiff"),
                       help="hand-written backprop or jax.grad (default manual)")
    train.add_argument("--seed", type=int, help=f"PRNG seed for init and shuffling (default {d['seed']})")
    train.add_argument("--no-standardize", dest="standardize", action="store_false", default=None,
                       help="feed the raw [0, 1] features instead of standardizing them with training statistics")
    train.add_argument("--strict", action="store_true", default=None,
                       help="check every step for non-finite values (stops at the exact step that diverged)")
    train.add_argument("--dropout", type=float, metavar="RATE",
                       help="dropout after every hidden layer: each hidden unit is dropped with probability RATE "
                            "in [0, 1) during training (inverted dropout; off in evaluation); default 0, none")
    train.add_argument("--norm", choices=tuple(NORMS),
                       help="a LayerNorm or BatchNorm between every hidden layer's linear part (then without "
                            "bias) and its activation; BatchNorm's running statistics are saved with the params "
                            "(default: none)")
    train.add_argument("--l2", type=float, metavar="LAM",
                       help="L2 weight penalty (LAM/2)·Σw² over the weights only (not the biases), added once per "
                            "mini-batch to the batch-mean loss (gradient LAM·w); Nielsen's (λ/2n)·Σw² is --l2 λ/n; "
                            "default 0, none")
    train.add_argument("--l1", type=float, metavar="LAM",
                       help="L1 weight penalty LAM·Σ|w| over the weights only, added like --l2 (both: their sum); "
                            "default 0, none")
    train.add_argument("--devices", type=positive(int), default=None, metavar="N",
                       help="data-parallel over the first N devices of jax.devices(); --batch-size must be divisible "
                            "by N (on CPU, test with XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    train.add_argument("--out", help="run folder to create (default runs/<dataset>-<timestamp>)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR (its config.json) up to --epochs")
    train.add_argument("--allow-other-data", action="store_true",
                       help="with --resume: continue even though the training data differ from the run's")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=run)


def train_config(args: argparse.Namespace) -> tuple[dict, Path, dict]:
    """The run's settings, folder and records: the defaults with the given options, or a resumed run's
    config.json (its settings, and its records: the network, the data fingerprint)."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if given.get("data_dir") is not None:
        given["data_dir"] = str(Path(given["data_dir"]).resolve())
    if args.resume is None:
        if args.allow_other_data:
            raise UsageError("--allow-other-data applies only with --resume DIR.")
        config, records = check_config({**TRAIN_DEFAULTS, **given}), {}
        config["dataset"] = config["dataset"].strip().lower().replace("_", "-")
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
                flag = "--no-standardize" if k == "standardize" else "--" + k.replace("_", "-")
                raise UsageError(f"{flag} {v!r} differs from the resumed run's {config[k]!r} ({path}); a resumed "
                                 f"run keeps its settings, only --epochs and --data-dir may change.")
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
    template = None
    if optimizer is not None:  # the optimizer state's structure, as fit builds it (shapes only, nothing computed)
        opt = fnn.make_optimizer(optimizer, config["lr"])
        template = jax.eval_shape(lambda: opt.init(net.init(jax.random.key(0))))
    ckpt = user_input(f"--resume {out}", fnn.checkpoint.load, path, net, opt_state_like=template)
    _, _, saved = user_input("", check_run_metadata, path, ckpt.metadata)
    user_input("", restored_key, path, ckpt.arrays)
    if optimizer is not None and ckpt.opt_state is None:
        raise UsageError(f"--resume {out}: {path} holds no optimizer state, but the run uses {optimizer}.")
    now = {"loss": loss.name, "batch_size": config["batch_size"], "grads": config["grads"],
           "strict": config["strict"], "optimizer": optimizer, "lr": float(config["lr"])}
    differ = [f"{k}: checkpoint {saved[k]!r}, config.json {v!r}" for k, v in now.items()
              if k in saved and saved[k] != v]
    pen = None if penalty is None else penalty.describe()  # recorded by fit only when there is one
    if saved.get("penalty") != pen:
        differ.append(f"penalty: checkpoint {saved.get('penalty')!r}, config.json {pen!r}")
    if differ:
        raise UsageError(f"--resume {out}: {path} was saved with other training settings than "
                         f"{out / 'config.json'} ({'; '.join(differ)}).")


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


def _load_data(config: dict, where: str):
    """The data set's splits; a bad name, a missing folder or a malformed file is the user's (exit 2)."""
    if config["dataset"] == "mnist" and config["data_dir"] is None:
        raise UsageError(f"--dataset mnist needs --data-dir DIR, the folder holding MNIST's four IDX files "
                         f"{', '.join(f'{name}[.gz]' for name in MNIST_FILES)} (download them from "
                         f"yann.lecun.com/exdb/mnist or one of its mirrors).")
    if config["model"] == "cnn" and config["dataset"] == "iris":
        raise UsageError("--model cnn trains on images: use --dataset digits, mnist or fashion-mnist (iris is a "
                         "table of 4 measurements).")
    try:
        return fnn.load_dataset(config["dataset"], config["data_dir"], flatten=config["model"] == "mlp")
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"{where} {config['dataset']}: {one_line(e)}") from e


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

    (x_train, y_train), (x_test, y_test) = _load_data(config, where("dataset") if args.data_dir is None
                                                      else "--dataset")
    fingerprint = data_fingerprint(x_train, y_train)  # of the data as loaded, before standardizing
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
    if config["standardize"]:
        x_train, x_test = fnn.standardize(x_train, x_test)
    classes = int(max(y_train.max(), y_test.max())) + 1
    if not loss.sparse:
        y_train, y_test = fnn.one_hot(y_train, classes), fnn.one_hot(y_test, classes)
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
    opt = fnn.make_optimizer(optimizer, config["lr"]) if optimizer is not None else None
    user_input("", functools.partial(check_memory, what="--hidden"), jax.eval_shape(net.init, key_init), opt,
               strict=config["strict"])
    params = jax.jit(net.init)(key_init)  # one compiled program instead of one compile per eager op

    out = make_folder(out, unique=args.out is None and args.resume is None)
    with locked(out, _warn):  # one run per folder; released on every way out (Ctrl-C included)
        if args.resume is None:
            check_no_run_yet(out)  # another run may have used the folder before we locked it
        records["network"] = net.describe()
        write_json(out / "config.json", {**config, **records})
        lr_note = f" ({config['optimizer']}'s default)" if lr_default else ""
        print(f"data: {config['dataset']}, {x_train.shape[0]} train / {x_test.shape[0]} test examples, "
              f"{features} features, {classes} classes{' (standardized)' if config['standardize'] else ''}")
        extras = "".join(f", {name} {config[name]:g}" for name in ("dropout", "l1", "l2") if config[name]) + (
            f", {config['norm']} norm" if config["norm"] else "")
        print(f"network: {sizes} {config['activation']} -> {output}{extras}, loss {loss.name}, "
              f"{config['optimizer']} lr {config['lr']:g}{lr_note}, batch {config['batch_size']}, "
              f"{config['grads']} gradients")
        print(f"run folder: {out}{' (resumed)' if args.resume else ''}")
        sys.stdout.flush()
        return _train(args, config, records, out, net, params, key_fit, loss, optimizer, penalty,
                      (x_train, y_train), (x_test, y_test), title=f"{config['dataset']}: {sizes} "
                      f"{config['activation']} -> {config['output']}{extras}, {loss.name}, {config['optimizer']} lr "
                      f"{config['lr']:g}, batch {config['batch_size']}")


def _train(args, config, records, out, net, params, key_fit, loss, optimizer, penalty, train, test, *,
           title: str) -> int:
    """Train (in the locked folder), write the history and curves, print the test accuracy."""
    t0 = time.perf_counter()
    trained: list[int] = []  # the epochs this call ran (a resumed run starts after its checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fnn.DivergenceWarning)
        try:
            *params, history = fnn.fit(
                net, params, train, test, loss=loss, epochs=config["epochs"],
                batch_size=config["batch_size"], learning_rate=config["lr"], optimizer=optimizer,
                grads=config["grads"], key=key_fit, progress=not args.no_progress, checkpoint_dir=out,
                resume=args.resume is not None, strict=config["strict"], callback=lambda e, h: trained.append(e),
                devices=args.devices, penalty=penalty, state=net.init_state() if net.stateful else None,
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
    else:
        print(f"nothing to train: the run already has {len(history['epoch'])} epochs (raise --epochs)")
        config["epochs"] = max(config["epochs"], len(history["epoch"]))
        write_json(out / "config.json", {**config, **records})
    accuracy = fnn.evaluate(net, params[0], *test, loss, state=params[1] if net.stateful else None)["accuracy"]
    print(f"test accuracy: {float(np.nan if accuracy is None else accuracy):.4f}")
    return EXIT_OK
