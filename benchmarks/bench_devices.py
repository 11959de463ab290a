"""Data-parallel overhead benchmark: fnn on 1, 2 and 4 forced host devices, and shard_map vs jit-with-shardings.

    python benchmarks/bench_devices.py                       # [784, 256, 10], 4096 examples, batch 128
    python benchmarks/bench_devices.py --sizes 784 1024 1024 10 --n 2048

Forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, set here before JAX starts)
all share the same CPU cores, so the table measures the *overhead* of splitting a batch and all-reducing
the gradients, not a speed-up. Times are the best of ``--repeats`` runs of one compiled epoch (the epochs
are interleaved, so a busy machine slows every configuration alike), each timed as ``fnn.fit`` times its
epochs (``history["epoch_time"]``: the compiled epoch, the loss fetch and a finiteness check of the params).

Compared, per device count N (fnn's public API only):
  * ``plain``      — ``fnn.fit(..., epochs=1)``'s single-device epoch (no mesh), the baseline, timed by fit;
  * ``shard_map``  — ``fnn.parallel.make_epoch(fnn.parallel.make_update(...))``: fit's chunked epoch inside
                     shard_map, each device gathering its rows of every batch, grads ``lax.pmean``-ed: what
                     ``fit(devices=N)`` runs (checked equal to its params; fit builds its data-parallel program
                     anew in every call, so one-epoch fit calls would time a compile each);
  * ``jit+sharding`` — a single-device epoch under ``jit`` (one gather of the shuffled set, plain SGD on
                     ``fnn.backprop``) with the gathered batches constrained to ``NamedSharding(mesh, P(None,
                     "data"))``; XLA's SPMD partitioner inserts the all-reduce.
  * ``step``       — ``fnn.sgd_step(devices=N)`` called from Python, per step (includes placing the batch).
"""

from __future__ import annotations

import argparse
import os
import sys

FORCED = 4
if __name__ == "__main__":
    if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FORCED}"
        os.environ["XLA_FLAGS"] = flags.strip()
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])  # JAX starts with it

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import fnn  # noqa: E402
from fnn import parallel  # noqa: E402

LOSS = "sparse_categorical_cross_entropy"


def sgd_update(net, loss):
    """``update(params, opt_state, x, y, lr) -> (params, opt_state, loss, grads)``: plain SGD on ``fnn.backprop``,
    single-device (the update contract of :func:`fnn.parallel.make_epoch`, without its ``pmean``)."""

    def update(params, opt_state, x, y, lr):
        value, g = fnn.backprop(net, params, x, y, loss)
        new = jax.tree_util.tree_map(lambda p, d: p - (lr * d).astype(p.dtype), params, g)
        return new, opt_state, value, g

    return update


def jit_sharded_epoch(update, mesh, n: int, batch_size: int):
    """The alternative: a single-device epoch under jit, batches constrained to be split over "data"."""
    num_batches = n // batch_size
    split = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
    replicated = NamedSharding(mesh, P())

    def epoch(params, opt_state, x, y, key, lr):
        perm = fnn.train.epoch_order(key, n)[: num_batches * batch_size]  # fit's order, last batch dropped
        xb = jnp.take(x, perm, axis=0).reshape(num_batches, batch_size, *x.shape[1:])
        yb = jnp.take(y, perm, axis=0).reshape(num_batches, batch_size, *y.shape[1:])
        xb = jax.lax.with_sharding_constraint(xb, split)
        yb = jax.lax.with_sharding_constraint(yb, split)

        def body(carry, batch):
            p, s, value, _ = update(*carry, batch[0], batch[1], lr)
            return (p, s), value

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xb, yb))
        return params, opt_state, losses

    return jax.jit(epoch, out_shardings=(replicated, replicated, replicated))


def _timed(epoch_fn, params, x, y, key, lr) -> tuple[float, list]:
    """``(seconds, params)`` of one epoch, clocked as fit clocks its epochs (fold the key, run, fetch, check)."""
    t0 = time.perf_counter()
    new_params, _, losses = epoch_fn(params, (), x, y, jax.random.fold_in(key, 0), lr)[:3]
    ok = np.isfinite(np.asarray(losses)).all() and all(bool(jnp.all(jnp.isfinite(t)))
                                                       for t in jax.tree_util.tree_leaves(new_params))
    if not ok:
        raise FloatingPointError("the epoch diverged")
    return time.perf_counter() - t0, new_params


def _block(tree):
    return jax.tree_util.tree_map(lambda t: t.block_until_ready(), tree)


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree_util.tree_leaves(a),
                                                               jax.tree_util.tree_leaves(b), strict=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[784, 256, 10])
    ap.add_argument("--n", type=int, default=4096, help="training examples")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--step-calls", type=int, default=20, help="sgd_step calls per repeat")
    args = ap.parse_args(argv)
    counts = [d for d in (1, 2, 4) if d <= jax.device_count()]

    net = fnn.mlp(args.sizes, hidden="relu", output="softmax")
    params = net.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.n, args.sizes[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, args.sizes[-1], size=args.n))
    key, lr = jax.random.key(1), 0.05
    fit_kwargs = {"loss": LOSS, "epochs": 1, "batch_size": args.batch_size, "learning_rate": lr, "key": key,
                  "progress": False}
    par_update = parallel.make_update(net, LOSS)  # what fit(devices=N) uses: grads pmean-ed over "data"
    plain_update = sgd_update(net, fnn.losses.get(LOSS))
    steps = args.n // args.batch_size
    param_bytes = sum(t.size * t.dtype.itemsize for t in jax.tree_util.tree_leaves(params))

    def plain() -> float:
        return fnn.fit(net, params, (x, y), **fit_kwargs)[1]["epoch_time"][0]

    runs = {"plain (no mesh)": (plain, None)}  # name -> (one timed epoch, all-reduces in the compiled program)
    checks = {}
    for n_dev in counts:
        mesh = parallel.make_mesh(n_dev)
        xr, yr, pr = parallel.replicate(mesh, (x, y, params))
        ep = parallel.make_epoch(par_update, mesh, args.n, args.batch_size, strict=False, unroll=1)
        hlo = ep.jitted.lower(pr, (), xr, yr, parallel.replicate(mesh, key), lr).compile().as_text()
        runs[f"shard_map, {n_dev} dev"] = (lambda ep=ep, xr=xr, yr=yr, pr=pr: _timed(ep, pr, xr, yr, key, lr)[0],
                                         hlo.count("all-reduce("))
        jp = jit_sharded_epoch(plain_update, mesh, args.n, args.batch_size)
        hlo = jp.lower(pr, (), xr, yr, key, lr).compile().as_text()
        runs[f"jit+sharding, {n_dev} dev"] = (lambda jp=jp, xr=xr, yr=yr, pr=pr: _timed(jp, pr, xr, yr, key, lr)[0],
                                            hlo.count("all-reduce("))
        # correctness before timing: this shard_map epoch is fit(devices=N)'s, and the alternative trains the same
        fitted = fnn.fit(net, params, (x, y), devices=n_dev, **fit_kwargs)[0]
        checks[n_dev] = (_max_diff(_timed(ep, pr, xr, yr, key, lr)[1], fitted),
                         _max_diff(_timed(jp, pr, xr, yr, key, lr)[1], fitted))

    best = {name: float("inf") for name in runs}
    for fn, _ in runs.values():  # compile + warm up
        fn()
    for _ in range(args.repeats):
        for name, (fn, _) in runs.items():
            best[name] = min(best[name], fn())

    step_best = {}
    xs, ys = x[: args.batch_size], y[: args.batch_size]
    for n_dev in (None, *counts):
        step = fnn.sgd_step(net, LOSS, learning_rate=lr, devices=n_dev)
        p = params
        _block(step(p, xs, ys))
        t = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(args.step_calls):
                p, _l = step(p, xs, ys)
            _block(p)
            t = min(t, (time.perf_counter() - t0) / args.step_calls)
        step_best["no mesh" if n_dev is None else f"{n_dev} dev"] = t

    base = best["plain (no mesh)"]
    print(f"jax {jax.__version__}, {jax.device_count()} forced host devices on {os.cpu_count()} CPU cores; "
          f"net {args.sizes} ({param_bytes / 1e6:.2f} MB of float32 params = all-reduce bytes per step), "
          f"{args.n} examples, batch {args.batch_size}, {steps} steps/epoch; best of {args.repeats}.")
    for n_dev, (d_shard, d_jit) in checks.items():
        print(f"{n_dev} dev: max |Δparam| against fit(devices={n_dev}) after one epoch: shard_map {d_shard:.1e}, "
              f"jit+sharding {d_jit:.1e}.")
    print("\n| epoch program | devices | ms / epoch | ms / step | vs plain | all-reduces in HLO |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (_, n_ar) in runs.items():
        kind, _, dev = name.partition(", ")
        t = best[name]
        print(f"| {kind} | {dev.split()[0] if dev else '-'} | {1e3 * t:.1f} | {1e3 * t / steps:.2f} | "
              f"{t / base:.2f}x | {'-' if n_ar is None else n_ar} |")
    print("\n| `sgd_step` called from Python | ms / step |")
    print("|---|---:|")
    for name, t in step_best.items():
        print(f"| {name} | {1e3 * t:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
