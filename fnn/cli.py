"""The ``fnn`` command line: ``fnn train``, ``fnn gradcheck`` and ``fnn bench``.

``fnn train`` with no arguments trains a 64-128-10 ReLU/softmax network on the shipped 8x8 digits with the
hand-written backprop and plain SGD, and writes a run folder (``runs/<dataset>-<timestamp>`` or ``--out``)::

    config.json               every setting of the run (``--resume DIR`` continues from it)
    checkpoint.safetensors    params, optimizer state, epoch, history and PRNG key (see fnn.checkpoint)
    history.json              per-epoch train loss, test loss, test accuracy, epoch time
    curves.png                loss and accuracy per epoch (needs matplotlib: pip install 'fnn[plot]')

Its last line on stdout is ``test accuracy: 0.xxxx``. Exit codes: 0 success, 1 training diverged (or a
gradient check failed), 2 bad arguments (one line on stderr, no traceback), 130 interrupted (Ctrl-C; the
message says how to resume). Set ``FNN_TRACEBACK=1`` to see the traceback behind an error message.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "natural_output"]

PLOT_SKIPPED = "plot skipped: matplotlib is not installed (pip install 'fnn[plot]')"

#: ``fnn train`` defaults: 64-128-10 relu/softmax, SGD α = 0.1, batch 32, 30 epochs, standardized inputs
#: (measured: 0.97-0.98 test accuracy on digits over seeds 0-2, about 3 s of training on 2 CPU cores).
TRAIN_DEFAULTS = {
    "dataset": "digits",
    "data_dir": None,
    "hidden": [128],
    "activation": "relu",
    "output": None,  # None: the loss's natural output (see natural_output)
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

#: Finite-difference step of ``fnn gradcheck``. Central differences in float64 have truncation error
#: O(eps²) and rounding error ≈ ε_mach·|L|/eps; 1e-5 (near ε_mach^(1/3)) keeps the rounding error ~1e-11, so
#: gradient coordinates 1e4 times smaller than the largest still meet the 1e-6 relative tolerance.
GRADCHECK_EPS = 1e-5


# --- argument types ---------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2), not the whole usage block."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _widths(text: str) -> list[int]:
    """``"128,64"`` -> ``[128, 64]``; ``""`` -> ``[]`` (no hidden layer)."""
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    try:
        widths = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths such as 128,64, got {text!r}") from None
    if any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be positive integers, got {text!r}")
    return widths


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def natural_output(loss) -> str | None:
    """The output activation a loss expects: identity for the from-logits losses, sigmoid for binary
    cross-entropy, softmax for (sparse) categorical cross-entropy; None for mse/quadratic (any output)."""
    from fnn import losses

    loss = losses.get(loss)
    if loss.from_logits:
        return "identity"
    if loss.name == "binary_cross_entropy":
        return "sigmoid"
    if loss.name in ("categorical_cross_entropy", "sparse_categorical_cross_entropy"):
        return "softmax"
    return None


# --- the parser -------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    from fnn import __version__

    parser = _Parser(prog="fnn", description="fnn: functional neural networks on JAX with a hand-written backprop.")
    parser.add_argument("--version", action="version", version=f"fnn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{train,gradcheck,bench}", required=True)

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
    train.add_argument("--hidden", type=_widths, metavar="W1,W2,...",
                       help="hidden layer widths, comma-separated; '' for none (default 128)")
    train.add_argument("--activation", help=f"hidden activation (default {d['activation']})")
    train.add_argument("--output", help="output activation (default: the loss's natural one, softmax for "
                                        "(sparse) categorical cross-entropy, sigmoid for mse/quadratic)")
    train.add_argument("--loss", help=f"loss (default {d['loss']})")
    train.add_argument("--epochs", type=_positive(int), help=f"total epochs, counting resumed ones (default {d['epochs']})")
    train.add_argument("--batch-size", type=_positive(int), help=f"mini-batch size (default {d['batch_size']})")
    train.add_argument("--lr", type=_positive(float), help=f"learning rate α (default {d['lr']})")
    train.add_argument("--optimizer", help="sgd (plain W := W - α dW), momentum or adam (default sgd)")
    train.add_argument("--grads", choices=("manual", "autodiff"),
                       help="hand-written backprop or jax.grad (default manual)")
    train.add_argument("--seed", type=int, help=f"PRNG seed for init and shuffling (default {d['seed']})")
    train.add_argument("--no-standardize", dest="standardize", action="store_false", default=None,
                       help="feed the raw [0, 1] features instead of standardizing them with training statistics")
    train.add_argument("--strict", action="store_true", default=None,
                       help="check every step for non-finite values (stops at the exact step that diverged)")
    train.add_argument("--devices", type=_positive(int), default=None, metavar="N",
                       help="data-parallel over the first N devices of jax.devices(); --batch-size must be divisible "
                            "by N (on CPU, test with XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    train.add_argument("--out", help="run folder to create (default runs/<dataset>-<timestamp>)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR (its config.json) up to --epochs")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    check = commands.add_parser(
        "gradcheck", help="compare the hand-written gradient with jax.grad and finite differences",
        description="Three-way gradient check (manual backprop vs jax.grad vs central finite differences) of one "
                    "architecture, or with --all of every activation x loss pair. Exit code 0 when all agree.",
    )
    check.add_argument("--sizes", type=_widths, default=[4, 8, 3], metavar="N0,N1,...",
                       help="layer widths including input and output (default 4,8,3)")
    check.add_argument("--activation", help="hidden activation (default tanh; with --all: only this one)")
    check.add_argument("--output", help="output activation (default: the loss's natural one, "
                                        "or the hidden activation for mse/quadratic)")
    check.add_argument("--loss", help="loss (default categorical_cross_entropy; with --all: only this one)")
    check.add_argument("--batch", type=_positive(int), default=5, help="batch size (default 5)")
    check.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                       help="dtype of params and data (default float64)")
    check.add_argument("--seed", type=int, default=0, help="PRNG seed for params and data (default 0)")
    check.add_argument("--eps", type=_positive(float), default=GRADCHECK_EPS,
                       help=f"finite-difference step, taken in float64 (default {GRADCHECK_EPS:g})")
    check.add_argument("--all", action="store_true",
                       help="check every activation x loss pair (hidden = the activation; output = the activation "
                            "for mse/quadratic, else the loss's natural output) and print one line per pair; "
                            "skips the Taylor test")
    check.set_defaults(func=_gradcheck)

    commands.add_parser("bench", help="benchmarks (fnn bench --help)", add_help=False)
    return parser


# --- fnn train --------------------------------------------------------------------------------------------

class _UsageError(ValueError):
    """A bad combination of options (exit code 2)."""


def _train_config(args) -> tuple[dict, Path]:
    """The run's settings and folder: the defaults with the given options, or a resumed run's config.json."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if args.resume is None:
        config = {**TRAIN_DEFAULTS, **given}
        config["dataset"] = str(config["dataset"]).strip().lower().replace("_", "-")
        if args.out is not None:
            out = Path(args.out)
            if (out / _checkpoint_name()).exists():
                raise _UsageError(f"{out} already holds a run ({_checkpoint_name()}); continue it with "
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
        return config, out

    out = Path(args.resume)
    if args.out is not None:
        raise _UsageError("--resume DIR continues the run in DIR; do not combine it with --out.")
    path = out / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {out}: {path} not found; expected a run folder written by 'fnn train'.")
    saved = json.loads(path.read_text())
    config = {k: saved.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
    for k, v in given.items():
        if k in RESUME_MAY_CHANGE:
            config[k] = v
        elif v != config[k]:
            flag = "--no-standardize" if k == "standardize" else "--" + k.replace("_", "-")
            raise _UsageError(f"{flag} {v!r} differs from the resumed run's {config[k]!r} ({path}); a resumed run "
                              f"keeps its settings, only --epochs and --data-dir may change.")
    return config, out


def _checkpoint_name() -> str:
    from fnn.train import CHECKPOINT_NAME

    return CHECKPOINT_NAME


def _write_json(path: Path, obj: dict) -> None:
    """One top-level key per line (per-epoch lists stay on one line), written atomically."""
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items())
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("{\n" + body + "\n}\n")
    os.replace(tmp, path)


def _write_history(out: Path, history: dict, title: str) -> None:
    from fnn.plot import plot_history

    _write_json(out / "history.json", history)
    try:
        plot_history(history, out / "curves.png", title=title)
    except ImportError:
        print(PLOT_SKIPPED)


def _train(args) -> int:
    import jax
    import numpy as np

    import fnn

    config, out = _train_config(args)
    # Validate every name before loading data or compiling anything; the errors name the closest match.
    loss = fnn.losses.get(config["loss"])
    fnn.activations.get(config["activation"])
    output = config["output"] or natural_output(loss) or "sigmoid"
    fnn.activations.get(output)
    config["output"] = output
    optimizer = None if config["optimizer"] == "sgd" else config["optimizer"]  # None: the plain W := W - α dW
    fnn.make_optimizer(config["optimizer"], config["lr"])

    if config["dataset"] == "mnist" and config["data_dir"] is None:
        raise _UsageError("--dataset mnist needs --data-dir DIR, the folder holding MNIST's four IDX files "
                          "(train-images-idx3-ubyte[.gz] and its three siblings).")
    (x_train, y_train), (x_test, y_test) = fnn.load_dataset(config["dataset"], config["data_dir"])
    if config["batch_size"] > x_train.shape[0]:
        raise _UsageError(f"--batch-size {config['batch_size']} is larger than the training set "
                          f"({x_train.shape[0]} examples).")
    if config["standardize"]:
        x_train, x_test = fnn.standardize(x_train, x_test)
    classes = int(max(y_train.max(), y_test.max())) + 1
    if not loss.sparse:
        y_train, y_test = fnn.one_hot(y_train, classes), fnn.one_hot(y_test, classes)
    net = fnn.mlp([x_train.shape[1], *config["hidden"], classes], hidden=config["activation"], output=output)
    key_init, key_fit = jax.random.split(jax.random.key(config["seed"]))
    params = jax.jit(net.init)(key_init)  # one compiled program instead of one compile per eager op

    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", {**config, "network": net.describe(), "fnn_version": fnn.__version__})
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
        except fnn.TrainingInterrupted as stop:
            _write_history(out, stop.history, title)
            print(stop, file=sys.stderr)
            return 130
    seconds = time.perf_counter() - t0
    diverged = [w for w in caught if issubclass(w.category, fnn.DivergenceWarning)]
    for w in caught:
        if w not in diverged:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    _write_history(out, history, title)
    if diverged:
        print(f"fnn: {diverged[-1].message}", file=sys.stderr)
        return 1
    if trained:
        span = (f"{len(trained)} epoch{'s' * (len(trained) > 1)}" if trained[0] == 1
                else f"epochs {trained[0]}-{trained[-1]}" if len(trained) > 1 else f"epoch {trained[0]}")
        print(f"trained {span} in {seconds:.1f} s (including compilation); train loss {history['train_loss'][-1]:.4f}")
    else:
        print(f"nothing to train: the run already has {len(history['epoch'])} epochs (raise --epochs)")
        config["epochs"] = max(config["epochs"], len(history["epoch"]))
        _write_json(out / "config.json", {**config, "network": net.describe(), "fnn_version": fnn.__version__})
    accuracy = fnn.evaluate(net, params, x_test, y_test, loss)["accuracy"]
    print(f"test accuracy: {float(np.nan if accuracy is None else accuracy):.4f}")
    return 0


# --- fnn gradcheck ----------------------------------------------------------------------------------------

def _gradcheck_data(net, loss, batch: int, key, dtype):
    """Random params, inputs ~ N(0, 1) and targets that fit the loss: labels, one-hot rows or values in (0, 1)."""
    import jax

    k_params, k_x, k_y = jax.random.split(key, 3)
    n_out = net.sizes[-1]
    x = jax.random.normal(k_x, (batch, net.sizes[0]), dtype)
    labels = jax.random.randint(k_y, (batch,), 0, n_out)
    if loss.sparse:
        y = labels
    elif "categorical" in loss.name or loss.name == "softmax_cross_entropy":
        y = jax.nn.one_hot(labels, n_out, dtype=dtype)
    else:
        y = jax.random.uniform(k_y, (batch, n_out), dtype)
    return net.init(k_params), x, y


def _max_errors(report, pair: str) -> float:
    return max(report.errors(pair).values(), default=0.0)


def _gradcheck(args) -> int:
    import jax
    import jax.numpy as jnp

    import fnn

    if len(args.sizes) < 2:
        raise _UsageError(f"--sizes needs at least an input and an output width, e.g. 4,8,3; got {args.sizes}.")
    with jax.enable_x64(args.dtype == "float64"):
        dtype = jnp.dtype(args.dtype)
        key = jax.random.key(args.seed)
        if not args.all:
            loss = fnn.losses.get(args.loss or "categorical_cross_entropy")
            hidden = args.activation or "tanh"
            output = args.output or natural_output(loss) or hidden
            net = fnn.mlp(args.sizes, hidden=hidden, output=output, dtype=dtype)
            params, x, y = _gradcheck_data(net, loss, args.batch, key, dtype)
            print(f"network: {list(net.sizes)} {hidden} -> {output}, loss {loss.name}, batch {args.batch}, "
                  f"finite-difference step {args.eps:g}")
            report = fnn.gradcheck(net, params, x, y, loss, eps=args.eps, key=key)
            print(report)
            return 0 if report.ok else 1

        activations = [fnn.activations.get(args.activation).name] if args.activation else fnn.activations.names()
        losses = [fnn.losses.get(args.loss).name] if args.loss else fnn.losses.names()
        if args.output:
            raise _UsageError("--output cannot be combined with --all (each pair uses its loss's natural output).")
        print(f"gradcheck --all: sizes {args.sizes}, {args.dtype}, batch {args.batch}, finite-difference step "
              f"{args.eps:g}; max relative error over all leaves")
        head = f"{'activation':<12} {'loss':<34} {'output':<12} {'manual~autodiff':>15} {'manual~fd':>10}  ok"
        print(head)
        print("-" * len(head))
        failed = 0
        t0 = time.perf_counter()
        for name in activations:
            for loss_name in losses:
                loss = fnn.losses.get(loss_name)
                output = natural_output(loss) or name
                net = fnn.mlp(args.sizes, hidden=name, output=output, dtype=dtype)
                params, x, y = _gradcheck_data(net, loss, args.batch, key, dtype)
                report = fnn.gradcheck(net, params, x, y, loss, eps=args.eps, key=key, taylor=False)
                failed += not report.ok
                print(f"{name:<12} {loss_name:<34} {output:<12} {_max_errors(report, 'manual~autodiff'):>15.2e} "
                      f"{_max_errors(report, 'manual~fd'):>10.2e}  {'ok' if report.ok else 'FAIL'}", flush=True)
        total = len(activations) * len(losses)
        print(f"{total - failed}/{total} pairs ok in {time.perf_counter() - t0:.1f} s")
        return 0 if failed == 0 else 1


# --- fnn bench --------------------------------------------------------------------------------------------

def _bench(argv: list[str]) -> int:
    try:
        from fnn import bench
    except ModuleNotFoundError as e:
        if e.name != "fnn.bench":
            raise
        print("fnn: error: 'fnn bench' is not available: this installation has no fnn/bench.py.", file=sys.stderr)
        return 2
    try:
        return bench.main(argv)
    except SystemExit as e:  # its argparse (--help, usage errors)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


# --- entry point ------------------------------------------------------------------------------------------

def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fnn`` command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Example:
      >>> main(["train", "--epochs", "3", "--out", "/tmp/run", "--no-progress"])  # doctest: +SKIP
      0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # fit raises TrainingInterrupted (handled above) once training has started
        print(f"fnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError) as e:
        if os.environ.get("FNN_TRACEBACK"):
            raise
        print(f"fnn: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
