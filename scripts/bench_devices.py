"""Overhead of data-parallel training on 1, 2 and 4 forced host devices, and shard_map vs jit-with-shardings.

    python scripts/bench_devices.py                       # [784, 256, 10], 4096 examples, batch 128
    python scripts/bench_devices.py --sizes 784 1024 1024 10 --n 2048

Forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, set here before JAX starts)
all share the same CPU cores, so the table measures the *overhead* of splitting a batch and all-reducing
the gradients, not a speed-up. Times are the best of ``--repeats`` runs of one compiled epoch (the epochs
are interleaved, so a busy machine slows every configuration alike).

Compared, per device count N:
  * ``plain``      — ``fit``'s single-device epoch (no mesh), the baseline;
  * ``shard_map``  — ``fnn.parallel.make_epoch``: shard_map around the whole ``lax.scan``, each device
                     gathers its rows of every batch, grads ``lax.pmean``-ed (what ``fit(devices=N)`` runs);
  * ``jit+sharding`` — the plain epoch under ``jit`` with the gathered batches constrained to
                     ``NamedSharding(mesh, P(None, "data"))``; XLA's SPMD partitioner inserts the all-reduce.
  * ``step``       — ``sgd_step(devices=N)`` called from Python, per step (includes placing the batch).
"""

from __future__ import annotations

import argparse
import os
import sys

FORCED = 4
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FORCED}").strip()
    os.execv(sys.executable, [sys.executable, *sys.argv])  # restart so JAX starts with the flag

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import fnn  # noqa: E402
from fnn import parallel, train  # noqa: E402

LOSS = "sparse_categorical_cross_entropy"


def jit_sharded_epoch(update, mesh, n: int, batch_size: int):
    """The alternative: the single-device epoch under jit, batches constrained to be split over "data"."""
    num_batches = n // batch_size
    split = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
    replicated = NamedSharding(mesh, P())

    def epoch(params, opt_state, x, y, key, lr):
        perm = fnn.train._epoch_permutation(key, n, batch_size)
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


def _block(tree):
    return jax.tree_util.tree_map(lambda t: t.block_until_ready(), tree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[784, 256, 10])
    ap.add_argument("--n", type=int, default=4096, help="training examples")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--step-calls", type=int, default=20, help="sgd_step calls per repeat")
    args = ap.parse_args()

    net = fnn.mlp(args.sizes, hidden="relu", output="softmax")
    params = net.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.n, args.sizes[0])), jnp.float32)
    y = jnp.asarray(rng.integers(0, args.sizes[-1], size=args.n))
    key, lr = jax.random.key(1), 0.05
    loss = fnn.losses.get(LOSS)
    plain_update = train._make_update(net, loss, "manual", None)
    par_update = train._make_update(net, loss, "manual", None, axis_name=parallel.DATA_AXIS)
    steps = args.n // args.batch_size
    param_bytes = sum(t.size * t.dtype.itemsize for t in jax.tree_util.tree_leaves(params))

    runs = {}  # name -> (callable that runs one epoch, number of all-reduces in the compiled program)
    plain = jax.jit(train._make_epoch(plain_update, args.n, args.batch_size, strict=False, unroll=1))
    runs["plain (no mesh)"] = (lambda: plain(params, (), x, y, key, lr)[:3], None)
    for n_dev in (1, 2, 4):
        mesh = parallel.make_mesh(n_dev)
        xr, yr, pr = parallel.replicate(mesh, (x, y, params))
        ep = parallel.make_epoch(par_update, mesh, args.n, args.batch_size, strict=False, unroll=1)
        hlo = ep.jitted.lower(pr, (), xr, yr, parallel.replicate(mesh, key), lr).compile().as_text()
        runs[f"shard_map, {n_dev} dev"] = (lambda ep=ep, xr=xr, yr=yr, pr=pr: ep(pr, (), xr, yr, key, lr)[:3],
                                         hlo.count("all-reduce("))
        jp = jit_sharded_epoch(plain_update, mesh, args.n, args.batch_size)
        hlo = jp.lower(pr, (), xr, yr, key, lr).compile().as_text()
        runs[f"jit+sharding, {n_dev} dev"] = (lambda jp=jp, xr=xr, yr=yr, pr=pr: jp(pr, (), xr, yr, key, lr),
                                            hlo.count("all-reduce("))
    # correctness of the alternative before timing it
    ref = runs["shard_map, 4 dev"][0]()
    alt = runs["jit+sharding, 4 dev"][0]()
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(ref[0]), jax.tree_util.tree_leaves(alt[0])))

    best = {name: float("inf") for name in runs}
    for name, (fn, _) in runs.items():  # compile + warm up
        _block(fn())
    for _ in range(args.repeats):
        for name, (fn, _) in runs.items():
            t0 = time.perf_counter()
            _block(fn())
            best[name] = min(best[name], time.perf_counter() - t0)

    step_best = {}
    xs, ys = x[: args.batch_size], y[: args.batch_size]
    for n_dev in (None, 1, 2, 4):
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
    print(f"shard_map and jit+sharding epochs agree to {diff:.1e} (max |Δparam|).\n")
    print("| epoch program | devices | ms / epoch | ms / step | vs plain | all-reduces in HLO |")
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


if __name__ == "__main__":
    main()
