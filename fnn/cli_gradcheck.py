"""``fnn gradcheck``: the three-way gradient check (manual vs ``jax.grad`` vs finite differences) from the shell.

One architecture (``--sizes 4,8,3 --activation tanh ...``) prints fnn's :class:`~fnn.gradcheck.GradcheckReport`
table; ``--all`` checks every activation x loss pair and prints one line per pair. Exit code 0 when every
gradient agrees, 1 when one does not (the exit codes are listed in :mod:`fnn.cli`).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import fnn
from fnn._cli import EXIT_FAILED, EXIT_OK, UsageError, error, positive, user_input, widths

__all__ = ["GRADCHECK_EPS", "add_parser", "make_problem", "run"]

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
    with jax.enable_x64(args.dtype == "float64"):
        dtype = jnp.dtype(args.dtype)
        key = jax.random.key(args.seed)
        if not args.all:
            loss = user_input("--loss", fnn.losses.get, args.loss or "categorical_cross_entropy")
            hidden = user_input("--activation", fnn.activations.get, args.activation or "tanh").name
            output = user_input("--output", fnn.activations.get,
                                args.output or fnn.losses.natural_output(loss) or hidden).name
            net = fnn.mlp(args.sizes, hidden=hidden, output=output, dtype=dtype)
            params, x, y = make_problem(net, loss, args.batch, key, dtype)
            print(f"network: {list(net.sizes)} {hidden} -> {output}, loss {loss.name}, batch {args.batch}, "
                  f"finite-difference step {args.eps:g}")
            report = fnn.gradcheck(net, params, x, y, loss, eps=args.eps, key=key)
            print(report, flush=True)
            if not report.ok:
                error("gradcheck", "the gradients disagree (the table above marks the failing leaves).")
                return EXIT_FAILED
            return EXIT_OK

        activations = ([user_input("--activation", fnn.activations.get, args.activation).name] if args.activation
                       else fnn.activations.names())
        losses = [user_input("--loss", fnn.losses.get, args.loss).name] if args.loss else fnn.losses.names()
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
                output = fnn.losses.natural_output(loss) or name
                net = fnn.mlp(args.sizes, hidden=name, output=output, dtype=dtype)
                params, x, y = make_problem(net, loss, args.batch, key, dtype)
                report = fnn.gradcheck(net, params, x, y, loss, eps=args.eps, key=key, taylor=False)
                failed += not report.ok
                print(f"{name:<12} {loss_name:<34} {output:<12} {_max_error(report, 'manual~autodiff'):>15.2e} "
                      f"{_max_error(report, 'manual~fd'):>10.2e}  {'ok' if report.ok else 'FAIL'}", flush=True)
        total = len(activations) * len(losses)
        print(f"{total - failed}/{total} pairs ok in {time.perf_counter() - t0:.1f} s", flush=True)
        if failed:
            error("gradcheck", f"{failed} of {total} activation x loss pairs have gradients that disagree.")
            return EXIT_FAILED
        return EXIT_OK
