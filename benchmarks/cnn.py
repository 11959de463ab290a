"""The CNN row of the benchmark: examples/fashion_cnn.py's network, batch 128, plain SGD, side by side.

Rows, each training the same network from the same weights on the same data (synthetic 28x28x1 images, 10
classes; the speed does not depend on the pixel values) over the same batches in the same order:

* ``fnn fit, manual``: :func:`fnn.fit` with the hand-written backward passes (every epoch one ``lax.scan``);
* ``fnn fit, jax.grad``: the same with ``grads="autodiff"``;
* ``loop, manual`` / ``loop, jax.grad``: a Python loop of one jitted SGD step per batch (``fnn.backprop`` or
  ``jax.grad`` of the loss through ``net.apply``), the form the clarifications compare ``fit`` with;
* ``PyTorch eager``: ``nn.Sequential`` (Conv2d/MaxPool2d/Linear, NCHW, the same weights transposed) with
  ``nn.CrossEntropyLoss`` and ``torch.optim.SGD`` (skipped when torch is not installed).

Rounds are interleaved (round ``r`` runs one epoch of every row, in a rotating order) so machine noise hits every
row alike; round 0 is a warm-up (compilation); samples/s is the median of the other rounds and each ratio the
median of per-round ratios. The achieved FLOP rate counts the convolutions and Dense layers as GEMMs
(forward 2·M·K·N each, backward twice that, the first layer's input gradient excluded) against the float32
GEMM roofline measured in the same run (``benchmarks.machine.Gemm``, the fastest of XLA, NumPy and PyTorch).

Run:  python benchmarks/cnn.py [--rounds 5] [--steps 60] [--json FILE]
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
from fnn import layers as L  # noqa: E402

BATCH, LR, LOSS = 128, 0.01, "sparse_softmax_cross_entropy"
FILTERS, HIDDEN = (32, 64), 128


def make_net():
    """examples/fashion_cnn.py's network with logits out (softmax inside the loss) and no dropout (its mask
    draw is a cost of its own, measured in BENCHMARKS.md's dropout rows)."""
    stages = [layer for f in FILTERS for layer in (L.Conv2D(f, 3, activation="relu"), L.MaxPool2D(2))]
    return fnn.serial(*stages, L.Flatten(), L.Dense(HIDDEN, activation="relu"), L.Dense(10), input_shape=(28, 28, 1))


def step_flops() -> float:
    """FLOPs of one SGD step on a batch: forward GEMMs 2·M·K·N, backward 4·M·K·N (the first conv: 2, no dx)."""
    h = w = 28
    c, total = 1, 0.0
    for i, f in enumerate(FILTERS):
        gemm = 2.0 * BATCH * h * w * 9 * c * f
        total += gemm * (2 if i == 0 else 3)
        c, h, w = f, h // 2, w // 2
    for n_in, n_out in ((h * w * c, HIDDEN), (HIDDEN, 10)):
        total += 3 * 2.0 * BATCH * n_in * n_out
    return total


class FitRow:
    def __init__(self, name, net, params, x, y, grads):
        self.name, self.net, self.params, self.x, self.y, self.grads = name, net, params, x, y, grads

    def epoch(self, r):
        self.params, history = fnn.fit(self.net, self.params, (self.x, self.y), loss=LOSS, epochs=1,
                                       batch_size=BATCH, learning_rate=LR, grads=self.grads,
                                       key=jax.random.key(r), progress=False)
        jax.block_until_ready(self.params)
        return history["epoch_time"][-1]


class LoopRow:
    def __init__(self, name, net, params, x, y, grads):
        self.name, self.params = name, params
        self.batches = [(jnp.asarray(x[i:i + BATCH]), jnp.asarray(y[i:i + BATCH]))
                        for i in range(0, len(x) - BATCH + 1, BATCH)]
        if grads == "manual":
            def grad(p, xb, yb):
                return fnn.backprop(net, p, xb, yb, LOSS)[1]
        else:
            loss = fnn.losses.get(LOSS)

            def grad(p, xb, yb):
                return jax.grad(lambda q: loss.value(net.apply(q, xb), yb))(p)

        self.step = jax.jit(lambda p, xb, yb: jax.tree_util.tree_map(lambda a, g: a - LR * g, p, grad(p, xb, yb)))

    def epoch(self, r):
        t0 = time.perf_counter()
        p = self.params
        for xb, yb in self.batches:
            p = self.step(p, xb, yb)
        jax.block_until_ready(p)
        self.params = p
        return time.perf_counter() - t0


class TorchRow:
    def __init__(self, name, params, x, y):
        import torch
        from torch import nn

        self.name, self.torch = name, torch
        torch.set_num_threads(os.cpu_count() or 1)
        convs = [nn.Conv2d(1, FILTERS[0], 3, padding=1), nn.Conv2d(FILTERS[0], FILTERS[1], 3, padding=1)]
        dense = [nn.Linear(7 * 7 * FILTERS[1], HIDDEN), nn.Linear(HIDDEN, 10)]
        with torch.no_grad():
            for conv, p in zip(convs, (params[0], params[2]), strict=True):  # HWIO -> OIHW
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(np.transpose(np.array(p["w"]), (3, 2, 0, 1)))))
                conv.bias.copy_(torch.from_numpy(np.array(p["b"])))
            # fnn flattens NHWC (h, w, c); torch's NCHW flatten is (c, h, w): permute the rows of the first Dense
            w0 = np.asarray(params[5]["w"]).reshape(7, 7, FILTERS[1], HIDDEN).transpose(2, 0, 1, 3).reshape(-1, HIDDEN)
            dense[0].weight.copy_(torch.from_numpy(np.ascontiguousarray(w0.T)))
            dense[0].bias.copy_(torch.from_numpy(np.array(params[5]["b"])))
            dense[1].weight.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(params[6]["w"]).T)))
            dense[1].bias.copy_(torch.from_numpy(np.array(params[6]["b"])))
        self.model = nn.Sequential(convs[0], nn.ReLU(), nn.MaxPool2d(2), convs[1], nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Flatten(), dense[0], nn.ReLU(), dense[1])
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.loss = nn.CrossEntropyLoss()
        xt = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
        yt = torch.from_numpy(y.astype(np.int64))
        self.batches = [(xt[i:i + BATCH], yt[i:i + BATCH]) for i in range(0, len(x) - BATCH + 1, BATCH)]

    def epoch(self, r):
        t0 = time.perf_counter()
        for xb, yb in self.batches:
            self.opt.zero_grad(set_to_none=True)
            self.loss(self.model(xb), yb).backward()
            self.opt.step()
        return time.perf_counter() - t0


def first_step_agreement(net, params, x, y) -> float:
    """Max |fnn manual − PyTorch| over the gradients of one batch (same weights, same data): the rows compute
    the same thing."""
    import torch

    row = TorchRow("check", params, x[:BATCH], y[:BATCH])
    xb, yb = row.batches[0]
    row.loss(row.model(xb), yb).backward()
    grads = fnn.backprop(net, params, x[:BATCH], y[:BATCH], LOSS)[1]
    want = np.transpose(np.asarray(grads[0]["w"]), (3, 2, 0, 1))
    got = row.model[0].weight.grad.numpy()
    del torch
    return float(np.max(np.abs(got - want)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up (default 5)")
    parser.add_argument("--steps", type=int, default=60, help="SGD steps per epoch (default 60)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    net = make_net()
    params = net.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    n = args.steps * BATCH
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    torch_ok = machine.torch_available()
    rows = [FitRow("fnn fit, manual", net, params, x, y, "manual"),
            FitRow("fnn fit, jax.grad", net, params, x, y, "autodiff"),
            LoopRow("loop, manual", net, params, x, y, "manual"),
            LoopRow("loop, jax.grad", net, params, x, y, "autodiff")]
    if torch_ok:
        rows.append(TorchRow("PyTorch eager", params, x, y))
    gemm = machine.Gemm(2048, torch_ok)
    times = {row.name: [] for row in rows}
    for r in range(args.rounds + 1):
        order = rows[r % len(rows):] + rows[:r % len(rows)]
        for row in order:
            t = row.epoch(r)
            if r:
                times[row.name].append(t)
        if r:
            gemm.measure()
    roofline = max(gemm.medians().values())
    flops = step_flops() * args.steps
    base = times["fnn fit, manual"]
    results = {"machine": machine.environment(),
               "steps_per_epoch": args.steps, "batch": BATCH, "gemm_roofline_gflops": roofline / 1e9,
               "gemm_by_library_gflops": {k: v / 1e9 for k, v in gemm.medians().items()}, "rows": {}}
    if torch_ok:
        results["max_abs_diff_conv1_grad_vs_torch"] = first_step_agreement(net, params, x, y)
    print(f"CNN {FILTERS} + Dense {HIDDEN}, batch {BATCH}, {args.steps} steps/epoch, {args.rounds} rounds; "
          f"GEMM roofline {roofline / 1e9:.1f} GFLOP/s")
    print(f"{'row':22s} {'samples/s':>10s} {'vs fit manual':>14s} {'GFLOP/s':>8s} {'% roofline':>10s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = statistics.median(b / t for b, t in zip(base, ts, strict=True))  # > 1: this row is faster
        rate = flops / med
        results["rows"][name] = {"samples_per_s": n / med, "epoch_s": ts, "speed_vs_fit_manual": ratio,
                                 "gflops": rate / 1e9, "fraction_of_roofline": rate / roofline}
        print(f"{name:22s} {n / med:10.0f} {ratio:14.3f} {rate / 1e9:8.1f} {100 * rate / roofline:9.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
