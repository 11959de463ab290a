"""``fnn train``: train an MLP on a data set and write a run folder that ``fnn train --resume`` continues.

With no arguments it trains a 64-128-10 ReLU/softmax network on the shipped 8x8 digits with the hand-written
backprop and plain SGD, and writes a run folder (``runs/<dataset>-<timestamp>`` or ``--out``)::

    config.json               every setting of the run (``--resume DIR`` continues from it)
    checkpoint.safetensors    params, optimizer state, epoch, history and PRNG key (see fnn.checkpoint)
    history.json              per-epoch train loss, test loss, test accuracy, epoch time
    curves.png                loss and accuracy per epoch (needs matplotlib: pip install 'fnn[plot]')

Its last line on stdout is ``test accuracy: 0.xxxx``. Every setting is checked before any data is loaded or
anything is written (bad ones exit with 2); the exit codes are listed in :mod:`fnn.cli`.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import fnn
from fnn._cli import EXIT_FAILED, EXIT_OK, UsageError, error, one_line, positive, user_input, widths, write_json
from fnn.train import CHECKPOINT_NAME

__all__ = ["PLOT_SKIPPED", "RESUME_MAY_CHANGE", "TRAIN_DEFAULTS", "add_parser", "check_config", "run",
           "train_config", "write_history"]

PLOT_SKIPPED = "plot skipped: matplotlib is not installed (pip install 'fnn[plot]')"

#: ``fnn train`` defaults: 64-128-10 relu/softmax, SGD α = 0.1, batch 32, 30 epochs, standardized inputs.
TRAIN_DEFAULTS = {
    "dataset": "digits",
    "data_dir": None,
    "hidden": [128],
    "activation": "relu",
    "output": None,  # None: the loss's natural output (fnn.losses.natural_output)
    "loss": "sparse_categorical_cross_entropy",
    "epochs": 30,
    "batch_size": 32,
    "lr": 0.1,
    "optimizer": "sgd",
    "grads": "manual",
    "seed": 0,
    "standardize": True,
    "strict": False,
}
#: Options that ``--resume`` may change; every other setting comes from the run's config.json.
RESUME_MAY_CHANGE = ("epochs", "data_dir")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command to the ``fnn`` parser's sub-commands."""
    d = TRAIN_DEFAULTS
    train = commands.add_parser(
        "train", help="train an MLP and write a run folder",
        description="Train an MLP (default: 64-128-10 relu/softmax on the shipped digits, hand-written backprop, "
                    "plain SGD) and write a run folder with config.json, checkpoint.safetensors, history.json "
                    "and curves.png. The last line printed is 'test accuracy: 0.xxxx'.",
    )
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
    train.add_argument("--lr", type=positive(float), help=f"learning rate α (default {d['lr']})")
    train.add_argument("--optimizer", help="sgd (plain W := W - α dW), momentum or adam (default sgd)")
    train.add_argument("--grads", choices=("manual", "autodiff"),
                       help="hand-written backprop or jax.grad (default manual)")
    train.add_argument("--seed", type=int, help=f"PRNG seed for init and shuffling (default {d['seed']})")
    train.add_argument("--no-standardize", dest="standardize", action="store_false", default=None,
                       help="feed the raw [0, 1] features instead of standardizing them with training statistics")
    train.add_argument("--strict", action="store_true", default=None,
                       help="check every step for non-finite values (stops at the exact step that diverged)")
    train.add_argument("--devices", type=positive(int), default=None, metavar="N",
                       help="data-parallel over the first N devices of jax.devices(); --batch-size must be divisible "
                            "by N (on CPU, test with XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    train.add_argument("--out", help="run folder to create (default runs/<dataset>-<timestamp>)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR (its config.json) up to --epochs")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=run)


def check_config(config: dict, where: str | None = None) -> dict:
    """``config`` when every setting has the right type and range, else a UsageError naming the entry (and
    ``where`` it comes from, e.g. a config.json; None: the command-line options).

    argparse checks most options already; this catches the rest (a 64-bit seed) and an edited config.json.
    """
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    expected = {
        "dataset": ("a string", isinstance(config["dataset"], str)),
        "data_dir": ("a folder name or null", config["data_dir"] is None or isinstance(config["data_dir"], str)),
        "hidden": ("a list of positive integers",
                   isinstance(config["hidden"], list) and all(is_int(w) and w > 0 for w in config["hidden"])),
        "activation": ("a string", isinstance(config["activation"], str)),
        "output": ("a string or null", config["output"] is None or isinstance(config["output"], str)),
        "loss": ("a string", isinstance(config["loss"], str)),
        "epochs": ("a positive integer", is_int(config["epochs"]) and config["epochs"] > 0),
        "batch_size": ("a positive integer", is_int(config["batch_size"]) and config["batch_size"] > 0),
        "lr": ("a positive number", isinstance(config["lr"], (int, float)) and not isinstance(config["lr"], bool)
               and config["lr"] > 0 and math.isfinite(config["lr"])),
        "optimizer": ("a string", isinstance(config["optimizer"], str)),
        "grads": ("'manual' or 'autodiff'", config["grads"] in ("manual", "autodiff")),
        "seed": ("an integer of at most 63 bits", is_int(config["seed"]) and abs(config["seed"]) < 2**63),
        "standardize": ("true or false", isinstance(config["standardize"], bool)),
        "strict": ("true or false", isinstance(config["strict"], bool)),
    }
    for key, (kind, ok) in expected.items():
        if not ok:
            name = f"--{key.replace('_', '-')}" if where is None else f"{where}: {key}"
            raise UsageError(f"{name} must be {kind}, got {config[key]!r}.")
    return config


def train_config(args: argparse.Namespace) -> tuple[dict, Path]:
    """The run's settings and folder: the defaults with the given options, or a resumed run's config.json."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if args.resume is None:
        config = check_config({**TRAIN_DEFAULTS, **given})
        config["dataset"] = config["dataset"].strip().lower().replace("_", "-")
        if args.out is not None:
            out = Path(args.out)
            if out.exists() and not out.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"--out must be a folder, found a file "
                                                        f"({os.strerror(errno.ENOTDIR)})", str(out))
            if (out / CHECKPOINT_NAME).is_file():
                raise UsageError(f"{out} already holds a run ({CHECKPOINT_NAME}); continue it with "
                                 f"--resume {out} or choose another --out.")
        else:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{config['dataset']}-{stamp}"
            suffix = 2
            while out.exists():
                out = Path("runs") / f"{config['dataset']}-{stamp}-{suffix}"
                suffix += 1
        if config["data_dir"] is not None:
            config["data_dir"] = str(Path(config["data_dir"]).resolve())
    else:
        out = Path(args.resume)
        if args.out is not None:
            raise UsageError("--resume DIR continues the run in DIR; do not combine it with --out.")
        path = out / "config.json"
        if not path.is_file():
            raise UsageError(f"--resume {out}: {path} not found; expected a run folder written by 'fnn train'.")
        try:
            saved = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"--resume {out}: {path} is not valid JSON ({one_line(e)}).") from e
        if not isinstance(saved, dict):
            raise UsageError(f"--resume {out}: {path} must hold a JSON object of settings, "
                             f"got {type(saved).__name__}.")
        config = check_config({k: saved.get(k, v) for k, v in TRAIN_DEFAULTS.items()}, str(path))
        for k, v in given.items():
            if k in RESUME_MAY_CHANGE:
                config[k] = v
            elif v != config[k]:
                flag = "--no-standardize" if k == "standardize" else "--" + k.replace("_", "-")
                raise UsageError(f"{flag} {v!r} differs from the resumed run's {config[k]!r} ({path}); a resumed "
                                 f"run keeps its settings, only --epochs and --data-dir may change.")
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.exists() and not checkpoint.is_file():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(checkpoint))
    return config, out


def check_resumable(out: Path, net: fnn.Network, config: dict, loss: fnn.losses.Loss, optimizer) -> None:
    """The checkpoint in ``out`` (if any) is a valid fnn checkpoint of ``net``, saved with this run's
    training settings: else a UsageError (a bad run folder), before anything is compiled or written."""
    path = out / CHECKPOINT_NAME
    if not path.exists():  # the run was stopped before its first checkpoint: it starts from epoch 1
        return
    ckpt = user_input(f"--resume {out}", fnn.checkpoint.load, path, net)
    saved = ckpt.metadata.get("config")
    now = {"loss": loss.name, "batch_size": config["batch_size"], "grads": config["grads"],
           "strict": config["strict"], "optimizer": optimizer, "lr": float(config["lr"])}
    if isinstance(saved, dict):
        differ = [f"{k}: checkpoint {saved[k]!r}, config.json {v!r}" for k, v in now.items()
                  if k in saved and saved[k] != v]
        if differ:
            raise UsageError(f"--resume {out}: {path} was saved with other training settings than "
                             f"{out / 'config.json'} ({'; '.join(differ)}).")


def write_history(out: Path, history: dict, title: str) -> None:
    """Write ``history.json`` and ``curves.png`` into ``out`` (the plot is skipped without matplotlib)."""
    from fnn.plot import plot_history

    write_json(out / "history.json", history)
    try:
        plot_history(history, out / "curves.png", title=title)
    except ImportError:
        print(PLOT_SKIPPED)


def _load_data(config: dict):
    """The data set's splits; a bad name, a missing folder or a malformed file is the user's (exit 2)."""
    if config["dataset"] == "mnist" and config["data_dir"] is None:
        raise UsageError("--dataset mnist needs --data-dir DIR, the folder holding MNIST's four IDX files "
                         "(train-images-idx3-ubyte[.gz] and its three siblings).")
    try:
        return fnn.load_dataset(config["dataset"], config["data_dir"])
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--dataset {config['dataset']}: {one_line(e)}") from e


def run(args: argparse.Namespace) -> int:
    """``fnn train``: returns 0, or 1 when training diverged; raises for the errors :mod:`fnn.cli` maps."""
    config, out = train_config(args)
    # Validate every name before loading data or compiling anything; the errors name the closest match.
    loss = user_input("--loss", fnn.losses.get, config["loss"])
    user_input("--activation", fnn.activations.get, config["activation"])
    output = config["output"] or fnn.losses.natural_output(loss) or "sigmoid"
    user_input("--output", fnn.activations.get, output)
    config["output"] = output
    optimizer = None if config["optimizer"] == "sgd" else config["optimizer"]  # None: the plain W := W - α dW
    user_input("--optimizer", fnn.make_optimizer, config["optimizer"], config["lr"])
    if args.devices is not None:
        user_input("--devices", fnn.parallel.make_mesh, args.devices)
        if config["batch_size"] % args.devices:
            raise UsageError(f"--batch-size {config['batch_size']} must be divisible by --devices {args.devices} "
                             f"(each device takes an equal part of every batch).")

    (x_train, y_train), (x_test, y_test) = _load_data(config)
    if config["batch_size"] > x_train.shape[0]:
        raise UsageError(f"--batch-size {config['batch_size']} is larger than the training set "
                         f"({x_train.shape[0]} examples).")
    if config["standardize"]:
        x_train, x_test = fnn.standardize(x_train, x_test)
    classes = int(max(y_train.max(), y_test.max())) + 1
    if not loss.sparse:
        y_train, y_test = fnn.one_hot(y_train, classes), fnn.one_hot(y_test, classes)
    net = fnn.mlp([x_train.shape[1], *config["hidden"], classes], hidden=config["activation"], output=output)
    if args.resume is not None:
        check_resumable(out, net, config, loss, optimizer)
    key_init, key_fit = jax.random.split(jax.random.key(config["seed"]))
    params = jax.jit(net.init)(key_init)  # one compiled program instead of one compile per eager op

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**config, "network": net.describe(), "fnn_version": fnn.__version__})
    print(f"data: {config['dataset']}, {x_train.shape[0]} train / {x_test.shape[0]} test examples, "
          f"{x_train.shape[1]} features, {classes} classes{' (standardized)' if config['standardize'] else ''}")
    print(f"network: {list(net.sizes)} {config['activation']} -> {output}, loss {loss.name}, "
          f"{config['optimizer']} lr {config['lr']:g}, batch {config['batch_size']}, {config['grads']} gradients")
    print(f"run folder: {out}{' (resumed)' if args.resume else ''}")
    title = (f"{config['dataset']}: {list(net.sizes)} {config['activation']} -> {output}, {loss.name}, "
             f"{config['optimizer']} lr {config['lr']:g}, batch {config['batch_size']}")
    sys.stdout.flush()

    t0 = time.perf_counter()
    trained: list[int] = []  # the epochs this call ran (a resumed run starts after its checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fnn.DivergenceWarning)
        try:
            params, history = fnn.fit(
                net, params, (x_train, y_train), (x_test, y_test), loss=loss, epochs=config["epochs"],
                batch_size=config["batch_size"], learning_rate=config["lr"], optimizer=optimizer,
                grads=config["grads"], key=key_fit, progress=not args.no_progress, checkpoint_dir=out,
                resume=args.resume is not None, strict=config["strict"], callback=lambda e, h: trained.append(e),
                devices=args.devices,
            )
        except fnn.TrainingInterrupted as stop:  # a checkpoint is saved; fnn.cli reports it (exit 130)
            write_history(out, stop.history, title)
            raise
    seconds = time.perf_counter() - t0
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
        write_json(out / "config.json", {**config, "network": net.describe(), "fnn_version": fnn.__version__})
    accuracy = fnn.evaluate(net, params, x_test, y_test, loss)["accuracy"]
    print(f"test accuracy: {float(np.nan if accuracy is None else accuracy):.4f}")
    return EXIT_OK
