"""``fnn gradcheck``: the three-way gradient check (manual vs ``jax.grad`` vs finite differences) from the shell.

One architecture (``--sizes 4,8,3 --activation tanh ...``) prints fnn's :class:`~fnn.gradcheck.GradcheckReport`
table; ``--all`` checks every activation x loss pair and prints one line per pair. ``--dropout RATE`` checks
the net with ``Dropout(RATE)`` after every hidden layer, in training mode with fixed masks. Exit code 0 when every
gradient agrees, 1 when one does not (the exit codes are listed in :mod:`fnn.cli`).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp

import fnn
from fnn._cli import EXIT_FAILED, EXIT_OK, UsageError, error, positive, user_input, widths

__all__ = ["GRADCHECK_EPS", "add_parser", "dropout_mode", "make_net", "make_problem", "run"]

#: Finite-difference step of ``fnn gradcheck``. Central differences in float64 have truncation error
#: O(eps²) and rounding error ≈ ε_mach·|L|/eps; 1e-5 (near ε_mach^(1/3)) keeps the rounding error ~1e-11, so
#: gradient coordinates 1e4 times smaller than the largest still meet the 1e-6 relative tolerance.
GRADCHECK_EPS = 1e-5


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``gradcheck`` sub-command to the ``fnn`` parser's sub-commands."""
    check = commands.add_parser(
        "gradcheck", help="compare the hand-written gradient with jax.grad and finite differences",
        description="Three-way gradient check (manual backprop vs jax.grad vs central finite differences) of one "
                    "architecture, or with --all of every activation x loss pair. Exit code 0 when all agree.",
    )
    check.add_argument("--sizes", type=widths, default=[4, 8, 3], metavar="N0,N1,...",
                       help="layer widths including input and output (default 4,8,3)")
    check.add_argument("--activation", help="hidden activation (default tanh; with --all: only this one)")
    check.add_argument("--output", help="output activation (default: the loss's natural one, "
                                        "or the hidden activation for mse/quadratic)")
    check.add_argument("--loss", help="loss (default categorical_cross_entropy; with --all: only this one)")
    check.add_argument("--batch", type=positive(int), default=5, help="batch size (default 5)")
    check.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                       help="dtype of params and data (default float64)")
    check.add_argument("--seed", type=int, default=0, help="PRNG seed for params and data (default 0)")
    check.add_argument("--eps", type=positive(float), default=GRADCHECK_EPS,
                       help=f"finite-difference step, taken in float64 (default {GRADCHECK_EPS:g})")
    check.add_argument("--dropout", type=float, default=0.0, metavar="RATE",
                       help="put Dropout(RATE) after every hidden layer (RATE in [0, 1)) and check the net in training "
                            "mode with fixed dropout masks (a dropout key from --seed, the same in every leg); "
                            "default 0, none")
    check.add_argument("--all", action="store_true",
                       help="check every activation x loss pair (hidden = the activation; output = the activation "
                            "for mse/quadratic, else the loss's natural output) and print one line per pair; "
                            "skips the Taylor test")
    check.set_defaults(func=run)


def make_problem(net: fnn.Network, loss: fnn.losses.Loss, batch: int, key: jax.Array, dtype):
    """Random params, inputs ~ N(0, 1) and targets that fit the loss: labels, one-hot rows or values in (0, 1)."""
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


def make_net(sizes: list[int], hidden: str, output: str, dropout: float, dtype) -> fnn.Network:
    """``fnn.mlp(sizes, ...)``, or with ``dropout > 0`` an ``fnn.serial`` of the same Dense layers with
    ``Dropout(dropout)`` after every hidden one."""
    if not dropout:
        return fnn.mlp(sizes, hidden=hidden, output=output, dtype=dtype)
    L = fnn.layers
    layers = [layer for n in sizes[1:-1] for layer in (L.Dense(n, activation=hidden), L.Dropout(dropout))]
    return fnn.serial(*layers, L.Dense(sizes[-1], activation=output), input_shape=(sizes[0],), dtype=dtype)


def dropout_mode(args: argparse.Namespace, key: jax.Array) -> dict:
    """gradcheck's mode arguments: with ``--dropout``, training mode with a fixed dropout key (every leg, the
    finite differences included, sees the same masks); else inference mode, as without dropout."""
    if not args.dropout:
        return {}
    return {"dropout_key": jax.random.fold_in(key, 1), "train": True}


def _max_error(report: fnn.GradcheckReport, pair: str) -> float:
    return max(report.errors(pair).values(), default=0.0)


def run(args: argparse.Namespace) -> int:
    """``fnn gradcheck``: returns 0 when the gradients agree, 1 when they do not."""
    if len(args.sizes) < 2:
        raise UsageError(f"--sizes needs at least an input and an output width, e.g. 4,8,3; got {args.sizes}.")
    if args.seed is not None and abs(args.seed) >= 2**63:
        raise UsageError(f"--seed must be an integer of at most 63 bits, got {args.seed}.")
    if args.all and args.output:
        raise UsageError("--output cannot be combined with --all (each pair uses its loss's natural output).")
    if not (math.isfinite(args.dropout) and 0 <= args.dropout < 1):
        raise UsageError(f"--dropout must be a rate in [0, 1) (the fraction of hidden units dropped), "
                         f"got {args.dropout!r}.")
    if args.dropout and len(args.sizes) < 3:
        raise UsageError(f"--dropout needs a hidden layer to follow (--sizes with at least 3 widths, e.g. 4,8,3); "
                         f"got {args.sizes}.")
    with jax.enable_x64(args.dtype == "float64"):
        dtype = jnp.dtype(args.dtype)
        key = jax.random.key(args.seed)
        if not args.all:
            loss = user_input("--loss", fnn.losses.get, args.loss or "categorical_cross_entropy")
            hidden = user_input("--activation", fnn.activations.get, args.activation or "tanh").name
            output = user_input("--output", fnn.activations.get,
                                args.output or fnn.losses.natural_output(loss) or hidden).name
            net = make_net(args.sizes, hidden, output, args.dropout, dtype)
            params, x, y = make_problem(net, loss, args.batch, key, dtype)
            mode = f", dropout {args.dropout:g} (training mode, fixed masks)" if args.dropout else ""
            print(f"network: {args.sizes} {hidden} -> {output}{mode}, loss {loss.name}, batch {args.batch}, "
                  f"finite-difference step {args.eps:g}")
            report = fnn.gradcheck(net, params, x, y, loss, eps=args.eps, key=key, **dropout_mode(args, key))
            print(report, flush=True)
            if not report.ok:
                error("gradcheck", "the gradients disagree (the table above marks the failing leaves).")
                return EXIT_FAILED
            return EXIT_OK

        activations = ([user_input("--activation", fnn.activations.get, args.activation).name] if args.activation
                       else fnn.activations.names())
        losses = [user_input("--loss", fnn.losses.get, args.loss).name] if args.loss else fnn.losses.names()
        mode = f", dropout {args.dropout:g} (training mode, fixed masks)" if args.dropout else ""
        print(f"gradcheck --all: sizes {args.sizes}{mode}, {args.dtype}, batch {args.batch}, finite-difference step "
              f"{args.eps:g}; max relative error over all leaves")
        head = f"{'activation':<12} {'loss':<34} {'output':<12} {'manual~autodiff':>15} {'manual~fd':>10}  ok"
        print(head)
        print("-" * len(head))
        failed = 0
        t0 = time.perf_counter()
        for name in activations:
            for loss_name in losses:
                loss = fnn.losses.get(loss_name)
                output = fnn.losses.natural_output(loss) or name
                net = make_net(args.sizes, name, output, args.dropout, dtype)
                params, x, y = make_problem(net, loss, args.batch, key, dtype)
                report = fnn.gradcheck(net, params, x, y, loss, eps=args.eps, key=key, taylor=False,
                                       **dropout_mode(args, key))
                failed += not report.ok
                print(f"{name:<12} {loss_name:<34} {output:<12} {_max_error(report, 'manual~autodiff'):>15.2e} "
                      f"{_max_error(report, 'manual~fd'):>10.2e}  {'ok' if report.ok else 'FAIL'}", flush=True)
        total = len(activations) * len(losses)
        print(f"{total - failed}/{total} pairs ok in {time.perf_counter() - t0:.1f} s", flush=True)
        if failed:
            error("gradcheck", f"{failed} of {total} activation x loss pairs have gradients that disagree.")
            return EXIT_FAILED
        return EXIT_OK
