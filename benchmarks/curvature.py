"""The curvature rows of the benchmark: each fnn.curvature quantity against one plain gradient and against the
autodiff route to the same numbers, side by side in one process.

Network ``[784, 256, 256, 10]`` (tanh hidden layers, softmax output with sparse categorical cross-entropy), batch
128, float32, random inputs (the speed does not depend on the values). Every row is one jitted function:

* ``gradient``: :func:`fnn.backprop` (the hand-written pass) — the unit every ratio is relative to;
  ``gradient, jax.grad``: :func:`fnn.autodiff`;
* ``batch_l2_grad`` / ``sum_grad_squared`` / ``variance``: :mod:`fnn.curvature` (loss and gradient included, as
  BackPACK computes them beside the gradient); ``first_order`` all three from one pass;
* ``... via vmap``: the autodiff route, ``jax.vmap`` of ``jax.grad`` of each example's loss (the per-example
  gradients materialised, ``N × params``), then the same reduction;
* second order (:mod:`fnn.second_order`, ``v = sin(params)``): ``hessian_vector_product`` against
  ``jax.jvp`` of ``jax.grad`` (forward-over-reverse), ``ggn_vector_product`` against ``jax.jvp``/``jax.vjp`` of
  the logits, ``diag_ggn`` exact and with one Monte-Carlo sample, ``kflr``/``kfac``, ``top_eigenvalue`` for 20
  power iterations (``method="power"``) against 20 of them on ``jvp(grad)``;
* on a net small enough for ``jax.hessian`` (``[64, 32, 32, 10]``): ``diag_ggn`` against the diagonal of the
  whole Hessian (not feasible at 270k params: the matrix alone would be 290 GB).

Rounds are interleaved (round ``r`` times every row, in a rotating order) so machine noise hits every row alike;
round 0 is a warm-up; a row's time is the median over rounds of the median of ``--calls`` calls, and each ratio
the median of per-round ratios. Memory: the compiled program's ``memory_analysis()`` temporary bytes (what
XLA allocates beyond arguments and outputs) at two hidden widths, for the gradient, ``batch_l2_grad`` and its
vmap route: the factored form's extra memory does not grow with the parameter count; the vmap route's does.

Run:  python benchmarks/curvature.py [--rounds 7] [--calls 20] [--json FILE] [--only ROW ...]
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
import jax.flatten_util  # noqa: E402
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
        # second order: the vector v = sin(params) is made inside every row alike
        "hessian_vector_product": lambda p, x, y: c.hessian_vector_product(net, p, x, y, LOSS, _v(p)),
        "hvp via jvp(grad)": lambda p, x, y: jax.jvp(lambda q: jax.grad(obj)(q, x, y), (p,), (_v(p),))[1],
        "ggn_vector_product": lambda p, x, y: c.ggn_vector_product(net, p, x, y, LOSS, _v(p)),
        "ggnvp via jvp/vjp": lambda p, x, y: _ggn_autodiff(net, p, x, y, _v(p)),
        "diag_ggn (exact)": lambda p, x, y: c.diag_ggn(net, p, x, y, LOSS),
        "diag_ggn (MC, 1 sample)": lambda p, x, y: c.diag_ggn(net, p, x, y, LOSS, mc_samples=1,
                                                              key=jax.random.key(0)),
        "kflr": lambda p, x, y: c.kflr(net, p, x, y, LOSS),
        "kfac (1 sample)": lambda p, x, y: c.kfac(net, p, x, y, LOSS, key=jax.random.key(0)),
        "top_eigenvalue (20 products)": lambda p, x, y: c.top_eigenvalue(
            net, p, x, y, LOSS, method="power", init=_v(p), tol=1e-30, max_iterations=20).value,
        "20 power steps via jvp(grad)": lambda p, x, y: _power_autodiff(obj, p, x, y, 20),
    }
    return {name: jax.jit(f) for name, f in fns.items()}


def _v(p):
    return tree_map(jnp.sin, p)


def _ggn_autodiff(net, p, x, y, v):
    """``Jᵀ H J v`` by autodiff: ``jax.jvp`` of the logits, the loss's Hessian by ``jax.jvp`` of its gradient,
    ``jax.vjp`` back (the route a JAX user takes without fnn's R-passes). The logits are the same net with an
    identity output (the same params)."""
    logits_net = fnn.mlp(SIZES[:1] + [t.shape[1] for t in (q["w"] for q in p)], hidden="tanh", output="identity")
    loss = fnn.losses.get("sparse_softmax_cross_entropy")
    z, jv = jax.jvp(lambda q: logits_net.apply(q, x), (p,), (v,))
    hjv = jax.jvp(jax.grad(lambda t: loss.value(t, y)), (z,), (jv,))[1]
    return jax.vjp(lambda q: logits_net.apply(q, x), p)[1](hjv)[0]


def _power_autodiff(obj, p, x, y, iterations):
    def body(_, carry):
        v, _ = carry
        hv = jax.jvp(lambda q: jax.grad(obj)(q, x, y), (p,), (v,))[1]
        dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(hv),
                                                strict=True))
        norm = jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree_util.tree_leaves(hv)))
        return tree_map(lambda t: t / norm, hv), dot
    return jax.lax.fori_loop(0, iterations, body, (_v(p), jnp.zeros((), jnp.float32)))[1]


def small_hessian_diagonal(rounds: int, calls: int) -> dict:
    """Where the Hessian fits in memory ([64, 32, 32, 10], 3,466 params, batch 128): the exact GGN diagonal
    against the diagonal of ``jax.hessian`` (the whole matrix built, its diagonal taken)."""
    net, params, x, y = problem([64, 32, 32, 10])
    obj = fnn.objective(net, LOSS)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    fns = {"gradient": jax.jit(lambda u: fnn.backprop(net, unravel(u), x, y, LOSS)),
           "diag_ggn (exact)": jax.jit(lambda u: fnn.curvature.diag_ggn(net, unravel(u), x, y, LOSS)),
           "hessian_vector_product": jax.jit(lambda u: fnn.curvature.hessian_vector_product(
               net, unravel(u), x, y, LOSS, unravel(jnp.sin(u)))),
           "diag of jax.hessian": jax.jit(lambda u: jnp.diag(jax.hessian(lambda w: obj(unravel(w), x, y))(u)))}
    per_round: dict = {name: [] for name in fns}
    for r in range(rounds + 1):
        for name, f in fns.items():
            t = _time(f, (flat,), calls if r else 1)
            if r:
                per_round[name].append(t)
    base = per_round["gradient"]
    return {"params": int(flat.size), **{name: {"ms": 1e3 * statistics.median(ts), "x_gradient": statistics.median(
        [t / b for t, b in zip(ts, base, strict=True)])} for name, ts in per_round.items()}}


def _time(f, args, calls: int) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timings(rounds: int, calls: int, only=None) -> dict:
    net, params, x, y = problem()
    fns = rows(net)
    names = list(fns) if not only else ["gradient", *[n for n in only if n != "gradient"]]
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
    pairs = {**{q: f"{q} via vmap" for q in ("batch_l2_grad", "sum_grad_squared", "variance")},
             "hessian_vector_product": "hvp via jvp(grad)", "ggn_vector_product": "ggnvp via jvp/vjp",
             "top_eigenvalue (20 products)": "20 power steps via jvp(grad)"}
    for q, other in pairs.items():
        if q not in per_round or other not in per_round:
            continue
        ratios = [v / f for v, f in zip(per_round[other], per_round[q], strict=True)]
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
    ap.add_argument("--only", nargs="+", metavar="ROW", help="time only these rows (and the gradient), e.g. "
                    "--only hessian_vector_product 'hvp via jvp(grad)'; skips the memory and small-net sections")
    args = ap.parse_args(argv)
    env = machine.environment()
    result = {"environment": env, "sizes": SIZES, "batch": BATCH,
              "timings": timings(args.rounds, args.calls, args.only)}
    if not args.only:
        result["memory"] = memory()
        result["small"] = small_hessian_diagonal(args.rounds, max(1, args.calls // 4))
    print(f"[{', '.join(map(str, SIZES))}], batch {BATCH}, float32, jax {jax.__version__}, "
          f"{args.rounds} rounds x {args.calls} calls; {env['cpu']}, {env['cores']} cores, "
          f"load average {env['load_average']}")
    print(f"{'row':30s} {'ms':>8s} {'x gradient':>11s} {'spread':>15s} {'autodiff / fnn':>15s}")
    for name, r in result["timings"].items():
        extra = f"{r['vmap_over_fnn']:15.2f}" if "vmap_over_fnn" in r else ""
        print(f"{name:30s} {r['ms']:8.3f} {r['x_gradient']:11.2f} {r['spread'][0]:7.2f}-{r['spread'][1]:<7.2f} {extra}")
    if args.only:
        return 0
    small = result["small"]
    print(f"[64, 32, 32, 10] ({small['params']:,} params), batch {BATCH}:")
    for name, r in small.items():
        if name != "params":
            print(f"  {name:28s} {r['ms']:9.3f} ms {r['x_gradient']:9.2f} x gradient")
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
