#!/usr/bin/env python3
"""Throughput sweep: where is fnn's training overhead-bound and where GEMM-bound, against batch size and width.

    python benchmarks/bench_sweep.py                  # writes docs/bench_sweep.png and docs/bench_sweep.json
    python benchmarks/bench_sweep.py --quick          # a few points, for a smoke run

Each point is ``fnn.fit`` (hand-written backprop, plain SGD, softmax cross-entropy; one ``epochs=1`` call per
epoch, as the benchmark's fnn rows: :mod:`benchmarks.fnn_rows`) on synthetic MNIST-shaped data, the median of
fit's ``epoch_time`` over the epochs after a warm-up. Two sweeps:

* batch size 1 … 1024 for the small net [784, 30, 10] (sigmoid) and the wide net [784, 1024, 1024, 10] (ReLU);
* width W = 256 … 4096 of [784, W, W, 10] (ReLU) at batch 256 and at batch 16.

Two bounds are drawn for each curve: the GEMM roofline ``R / (6 · n_params)`` samples/s (R: the float32 GEMM
rate measured in the same process) and the overhead bound ``B / t0`` (t0: the time of one step of the small
net at batch 1, which is almost all fixed per-step cost). A point near the first is GEMM-bound; near the
second, overhead-bound. The number of steps per point is chosen so that an epoch takes about a second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __name__ == "__main__" and not __package__:  # run as a file: import this checkout's `benchmarks`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import workload  # noqa: E402
from benchmarks.fnn_rows import FnnRow  # noqa: E402
from benchmarks.machine import Gemm  # noqa: E402

SMALL = ((784, 30, 10), "sigmoid")
WIDE = ((784, 1024, 1024, 10), "relu")


def _n_params(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def measure(sizes, hidden, batch_size, *, gemm_rate, t0=20e-6, seconds=1.0, epochs=3, max_n=60_000, seed=0):
    """Samples/s of fit's epoch (median of ``epochs - 1`` timed epochs), with about ``seconds`` per epoch."""
    est_step = t0 + 6 * _n_params(sizes) * batch_size / gemm_rate
    steps = int(np.clip(seconds / est_step, 4, max_n // batch_size))
    config = workload.Config(f"{list(sizes)}/{batch_size}", tuple(sizes), hidden, batch_size, 0.01,
                             n=steps * batch_size, epochs=epochs)
    x, y = (jnp.asarray(a) for a in workload.synthetic_mnist(config.n, seed=seed))
    row = FnnRow("fnn", config, workload.initial_params(config, seed), x, y, seed=seed)
    times = [row.epoch(e) for e in range(epochs)]  # fit's epoch_time; the first call compiles
    epoch_s = float(np.median(times[1:]))
    return {"sizes": list(sizes), "hidden": hidden, "batch_size": batch_size, "steps": steps,
            "n_params": _n_params(sizes), "samples_per_s": config.samples / epoch_s,
            "step_us": epoch_s / steps * 1e6, "compile_s": row.compile_s}


def gemm_rate(size=2048, reps=5):
    g = Gemm(size, torch_ok=False)
    return float(np.median([g.measure() for _ in range(reps)]))


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate, t0 = result["gemm_rate"], result["t0"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    curves = (("batch_small", "small [784, 30, 10]", "C0"), ("batch_wide", "wide [784, 1024, 1024, 10]", "C1"))
    for key, label, color in curves:
        pts = result[key]
        b = np.array([p["batch_size"] for p in pts])
        s = np.array([p["samples_per_s"] for p in pts])
        ax1.loglog(b, s, "o-", color=color, label=f"fnn, {label}")
        roof = rate / (6 * pts[0]["n_params"])
        ax1.axhline(roof, color=color, ls="--", lw=1, label=f"GEMM roofline, {label.split()[0]}")
    b = np.array([p["batch_size"] for p in result["batch_small"]])
    ax1.loglog(b, b / t0, "k:", lw=1, label=f"overhead bound B / t0 (t0 = {t0 * 1e6:.0f} µs)")
    for key, color in (("batch_small", "C0"), ("batch_wide", "C1")):
        params = result[key][0]["n_params"]
        bb = np.geomspace(1, b.max(), 50)
        ax1.loglog(bb, bb / (t0 + 6 * params * bb / rate), "-", color=color, lw=3, alpha=0.2,
                   label="model B / (t0 + 6·n_params·B / R)" if key == "batch_small" else None)
    ax1.set_xlabel("mini-batch size B")
    ax1.set_ylabel("training samples / s")
    ax1.set_title("Throughput against batch size")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    for key, color in (("width_256", "C2"), ("width_16", "C3")):
        pts = result[key]
        w = np.array([p["sizes"][1] for p in pts])
        s = np.array([p["samples_per_s"] for p in pts])
        bsz = pts[0]["batch_size"]
        ax2.loglog(w, s, "o-", color=color, label=f"fnn, batch {bsz}")
        roof = np.array([rate / (6 * p["n_params"]) for p in pts])
        roof_label = "GEMM roofline R / (6·n_params)" if key == "width_256" else None
        ax2.loglog(w, roof, "--", color="gray", lw=1, label=roof_label)
        ax2.loglog(w, np.full(w.shape, bsz / t0), ":", color=color, lw=1, label=f"overhead bound, batch {bsz}")
        model = np.array([bsz / (t0 + 6 * p["n_params"] * bsz / rate) for p in pts])
        ax2.loglog(w, model, "-", color=color, lw=3, alpha=0.2, label=f"model, batch {bsz}")
    ax2.set_xlabel("hidden width W of [784, W, W, 10]")
    ax2.set_ylabel("training samples / s")
    ax2.set_title("Throughput against width")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"fnn fit epochs, hand-written backprop, float32, {result['cores']} CPU cores; "
                 f"GEMM {rate / 1e9:.0f} GFLOP/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rate = gemm_rate(512 if args.quick else 2048)
    print(f"GEMM float32: {rate / 1e9:.1f} GFLOP/s", flush=True)
    seconds = 0.2 if args.quick else 0.5
    batches = [1, 16, 256] if args.quick else [1, 4, 16, 64, 256, 1024]
    widths = [256, 512] if args.quick else [256, 512, 1024, 2048, 4096]
    result = {"gemm_rate": rate, "cores": os.cpu_count(), "jax": jax.__version__}
    base = measure(*SMALL, 1, gemm_rate=rate, seconds=seconds)
    result["t0"] = base["step_us"] * 1e-6
    print(f"t0 (small net, batch 1): {base['step_us']:.1f} µs/step", flush=True)
    for key, (sizes, hidden) in (("batch_small", SMALL), ("batch_wide", WIDE)):
        result[key] = []
        for b in batches:
            pt = base if (key == "batch_small" and b == 1) else measure(sizes, hidden, b, gemm_rate=rate,
                                                                      t0=result["t0"], seconds=seconds)
            result[key].append(pt)
            print(f"{key:12s} B={b:5d}: {pt['samples_per_s']:12,.0f} samples/s  {pt['step_us']:10.1f} µs/step  "
                  f"{100 * 6 * pt['n_params'] * pt['samples_per_s'] / rate:5.1f}% of GEMM", flush=True)
    for b in (256, 16):
        key = f"width_{b}"
        result[key] = []
        for w in widths:
            pt = measure((784, w, w, 10), "relu", b, gemm_rate=rate, t0=result["t0"], seconds=seconds)
            result[key].append(pt)
            print(f"{key:12s} W={w:5d}: {pt['samples_per_s']:12,.0f} samples/s  {pt['step_us']:10.1f} µs/step  "
                  f"{100 * 6 * pt['n_params'] * pt['samples_per_s'] / rate:5.1f}% of GEMM", flush=True)
    with open(os.path.join(args.out, "bench_sweep.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.join(args.out, "bench_sweep.png"))
    print(f"wrote {os.path.join(args.out, 'bench_sweep.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
