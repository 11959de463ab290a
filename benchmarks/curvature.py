"""The curvature rows of the benchmark: each fnn.curvature quantity against one plain gradient and against the
autodiff route to the same numbers, side by side in one process.

Network ``[784, 256, 256, 10]`` (tanh hidden layers, softmax output with sparse categorical cross-entropy), batch
128, float32, random inputs (the speed does not depend on the values). Every row is one jitted function:

* ``gradient``: :func:`fnn.backprop` (the hand-written pass) — the unit every ratio is relative to;
  ``gradient, jax.grad``: :func:`fnn.autodiff`;
* ``batch_l2_grad`` / ``sum_grad_squared`` / ``variance``: :mod:`fnn.curvature` (loss and gradient included, as
  BackPACK computes them beside the gradient); ``first_order`` all three from one pass;
* ``... via vmap``: the autodiff route, ``jax.vmap`` of ``jax.grad`` of each example's loss (the per-example
  gradients materialised, ``N × params``), then the same reduction.

Rounds are interleaved (round ``r`` times every row, in a rotating order) so machine noise hits every row alike;
round 0 is a warm-up; a row's time is the median over rounds of the median of ``--calls`` calls, and each ratio
the median of per-round ratios. Memory: the compiled program's ``memory_analysis()`` temporary bytes (what
XLA allocates beyond arguments and outputs) at two hidden widths, for the gradient, ``batch_l2_grad`` and its
vmap route: the factored form's extra memory does not grow with the parameter count; the vmap route's does.

Run:  python benchmarks/curvature.py [--rounds 7] [--calls 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

if not __package__:  # run as a file: import this checkout's `benchmarks`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402
from benchmarks import machine  # noqa: E402

SIZES, BATCH, LOSS = [784, 256, 256, 10], 128, "sparse_categorical_cross_entropy"
tree_map = jax.tree_util.tree_map


def problem(sizes=SIZES, batch=BATCH, seed=0):
    net = fnn.mlp(sizes, hidden="tanh", output="softmax")
    params = net.init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, sizes[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, sizes[-1], batch), jnp.int32)
    return net, params, x, y


def rows(net) -> dict:
    """name -> function (params, x, y) -> result; every one jitted."""
    obj = fnn.objective(net, LOSS)

    def per_example(p, x, y):  # the autodiff route: N materialised gradients, BackPACK's 1/N scaling
        g = jax.vmap(lambda xi, yi: jax.grad(obj)(p, xi[None], yi[None]))(x, y)
        return tree_map(lambda t: t / x.shape[0], g)

    def vmap_l2(p, x, y):
        return tree_map(lambda t: jnp.sum(t.reshape(t.shape[0], -1) ** 2, axis=1), per_example(p, x, y))

    def vmap_sgs(p, x, y):
        return tree_map(lambda t: jnp.sum(t**2, axis=0), per_example(p, x, y))

    def vmap_var(p, x, y):
        return tree_map(lambda t: jnp.var(t, axis=0), per_example(p, x, y))

    c = fnn.curvature
    fns = {
        "gradient": lambda p, x, y: fnn.backprop(net, p, x, y, LOSS),
        "gradient, jax.grad": lambda p, x, y: fnn.autodiff(net, p, x, y, LOSS),
        "batch_l2_grad": lambda p, x, y: c.first_order(net, p, x, y, LOSS, quantities=["batch_l2_grad"]),
        "batch_l2_grad via vmap": vmap_l2,
        "sum_grad_squared": lambda p, x, y: c.first_order(net, p, x, y, LOSS, quantities=["sum_grad_squared"]),
        "sum_grad_squared via vmap": vmap_sgs,
        "variance": lambda p, x, y: c.first_order(net, p, x, y, LOSS, quantities=["variance"]),
        "variance via vmap": vmap_var,
        "first_order (all three)": lambda p, x, y: c.first_order(net, p, x, y, LOSS),
    }
    return {name: jax.jit(f) for name, f in fns.items()}


def _time(f, args, calls: int) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timings(rounds: int, calls: int) -> dict:
    net, params, x, y = problem()
    fns = rows(net)
    names = list(fns)
    per_round: dict = {name: [] for name in names}
    for r in range(rounds + 1):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t = _time(fns[name], (params, x, y), calls if r else 2)
            if r:
                per_round[name].append(t)
    base = per_round["gradient"]
    out = {}
    for name in names:
        ratios = [t / b for t, b in zip(per_round[name], base, strict=True)]
        out[name] = {"ms": 1e3 * statistics.median(per_round[name]), "x_gradient": statistics.median(ratios),
                     "spread": [min(ratios), max(ratios)]}
    for q in ("batch_l2_grad", "sum_grad_squared", "variance"):
        ratios = [v / f for v, f in zip(per_round[f"{q} via vmap"], per_round[q], strict=True)]
        out[q]["vmap_over_fnn"] = statistics.median(ratios)
    return out


def memory() -> dict:
    """Temporary bytes of the compiled programs at hidden widths 256 and 1024."""
    out = {}
    for width in (256, 1024):
        sizes = [SIZES[0], width, width, SIZES[-1]]
        net, params, x, y = problem(sizes)
        fns = rows(net)
        n_params = sum(t.size for t in jax.tree_util.tree_leaves(params))
        entry = {"params": n_params}
        for name in ("gradient", "batch_l2_grad", "batch_l2_grad via vmap"):
            stats = fns[name].lower(params, x, y).compile().memory_analysis()
            entry[name] = None if stats is None else int(stats.temp_size_in_bytes)
        out[width] = entry
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    env = machine.environment()
    result = {"environment": env, "sizes": SIZES, "batch": BATCH, "timings": timings(args.rounds, args.calls),
              "memory": memory()}
    print(f"[{', '.join(map(str, SIZES))}], batch {BATCH}, float32, jax {jax.__version__}, "
          f"{args.rounds} rounds x {args.calls} calls; {env['cpu']}, {env['cores']} cores, "
          f"load average {env['load_average']}")
    print(f"{'row':28s} {'ms':>8s} {'x gradient':>11s} {'spread':>15s} {'vmap / fnn':>11s}")
    for name, r in result["timings"].items():
        extra = f"{r['vmap_over_fnn']:11.2f}" if "vmap_over_fnn" in r else ""
        print(f"{name:28s} {r['ms']:8.3f} {r['x_gradient']:11.2f} {r['spread'][0]:7.2f}-{r['spread'][1]:<7.2f} {extra}")
    print("temporary memory of the compiled program (memory_analysis().temp_size_in_bytes), and beyond the "
          "gradient's:")
    for width, m in result["memory"].items():
        base = m["gradient"]
        cols = ", ".join(f"{k} {v / 2**20:.2f} MiB (+{(v - base) / 2**20:.2f})" for k, v in m.items()
                         if k not in ("params", "gradient") and v is not None)
        print(f"  hidden width {width:5d} ({m['params']:,} params): gradient {base / 2**20:.2f} MiB, {cols}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
