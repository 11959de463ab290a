"""The options of ``fnn train`` (:mod:`fnn.cli_train`), with their help texts and defaults."""

from __future__ import annotations

import argparse

from fnn._cli import positive, widths
from fnn._cli_models import NORMS
from fnn._run_folder import SCHEDULES, TRAIN_DEFAULTS

__all__ = ["add_train_arguments", "fraction", "names"]


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def names(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``: comma-separated column names. An argparse type."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names such as a,b,c, got {text!r}")
    return parts


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    """Add every option of ``fnn train`` to its parser."""
    d = TRAIN_DEFAULTS
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
    train.add_argument("--data", dest="data_file", metavar="PATH",
                       help="your own data instead of --dataset: a CSV file with a header row (numeric feature "
                            "columns; see --target, --features), an .npz with arrays x and y (optionally x_test, "
                            "y_test), or a folder of MNIST-format IDX files")
    train.add_argument("--target", metavar="NAME", help="the CSV's target column (default: the last column); a "
                                                        "non-numeric target becomes classes")
    train.add_argument("--features", type=names, metavar="A,B,...",
                       help="the CSV's feature columns, comma-separated (default: every column but the target)")
    train.add_argument("--task", choices=("classification", "regression"),
                       help="what the target is (default: classification, or regression for a numeric target "
                            "with fractional values); a regression defaults to --loss mse and --output identity")
    train.add_argument("--test-fraction", type=fraction,
                       help=f"the part of a file without a test set held out for testing, keyed by --seed "
                            f"(default {d['test_fraction']})")
    train.add_argument("--val-fraction", type=fraction,
                       help="the part of the training data held out for validation, keyed by --seed (default 0: "
                            "none); needed by --patience")
    train.add_argument("--patience", type=positive(int), metavar="N",
                       help="early stopping: stop after N epochs without a lower validation loss and keep the best "
                            "epoch's params (best.safetensors); needs --val-fraction")
    train.add_argument("--schedule", choices=SCHEDULES,
                       help="learning-rate schedule over the run's steps: constant (default), cosine (decay to 0 "
                            "over --epochs) or step (x0.1 at 1/2 and again at 3/4 of the steps)")
    train.add_argument("--out", help="run folder to create (default runs/<dataset>-<timestamp>)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR (its config.json) up to --epochs")
    train.add_argument("--allow-other-data", action="store_true",
                       help="with --resume: continue even though the training data differ from the run's")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
