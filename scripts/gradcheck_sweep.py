#!/usr/bin/env python3
"""Sweep fnn.gradcheck's low-precision error model: false alarms on correct networks, and planted bugs caught.

For every activation × depth × seed (and two losses) it builds a correct float32 network and runs
``fnn.gradcheck``: a failing report is a false alarm. It records the largest error of the native-dtype legs in
units of ``eps · (depth + 1)`` (the margin against ``ERROR_MODEL_K``). Then it plants bugs — a
derivative off by 1 %, the backward of another activation, a loss gradient missing its ``1/N`` — at every layer,
in float32, float16 and bfloat16, and counts how many reports still say OK (a missed bug).

    python scripts/gradcheck_sweep.py                  # the full sweep (minutes; its table is in RELIABILITY.md)
    python scripts/gradcheck_sweep.py --quick          # a few cases (what tests/test_gradcheck.py runs)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import activations as A
from fnn import losses as L
from fnn.gradcheck import ERROR_MODEL_K

DEPTHS = (1, 2, 3, 5, 10, 20, 50)
LOSSES = ("sparse_softmax_cross_entropy", "mse")


def case(act, depth: int, loss: str, seed: int, dtype, width: int = 16, batch: int = 8, n_in: int = 6, n_out: int = 4):
    """A correct network: ``depth`` layers, hidden activation ``act`` (also the output for depth 1 with mse)."""
    out = "identity" if loss != "mse" or depth > 1 else act
    acts = [act] * (depth - 1) + [out]
    net = fnn.mlp([n_in] + [width] * (depth - 1) + [n_out], activations=acts, dtype=dtype)
    params = net.init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, n_in)), dtype)
    y = (jnp.asarray(rng.integers(0, n_out, batch), jnp.int32) if loss != "mse"
         else jnp.asarray(rng.normal(size=(batch, n_out)), dtype))
    return net, params, x, y


def low_precision_margin(report) -> float:
    """The largest native-leg error in units of ``eps · (depth + 1)``."""
    rows = [r for r in report.rows if r.pair.endswith("~float64")]
    return max((r.max_rel * ERROR_MODEL_K / r.tol for r in rows), default=0.0)


def false_alarms(acts, depths, seeds, losses, dtype=jnp.float32, log=print) -> dict:
    """Run gradcheck on correct networks; return the false alarms and the margin per depth."""
    alarms, margin = [], {d: 0.0 for d in depths}
    for depth in depths:
        for act in acts:
            for loss in losses:
                for seed in seeds:
                    net, params, x, y = case(act, depth, loss, seed, dtype)
                    report = fnn.gradcheck(net, params, x, y, loss, num_checks=24, taylor=False)
                    margin[depth] = max(margin[depth], low_precision_margin(report))
                    if not report.ok:
                        alarms.append({"act": act, "depth": depth, "loss": loss, "seed": seed, "off": report.off})
                        log(f"false alarm: {act} depth {depth} {loss} seed {seed}: {report.off}")
    return {"alarms": alarms, "margin": margin, "cases": len(depths) * len(acts) * len(losses) * len(seeds)}


def _scaled(record: A.Activation, factor: float) -> A.Activation:
    return A.Activation(f"{record.name}*{factor}", record.forward,
                        lambda z, a, g: factor * record.backward(z, a, g), None)


def _borrowed(record: A.Activation, other: A.Activation) -> A.Activation:
    """``record``'s forward with ``other``'s backward: the derivative of the wrong layer kind."""
    return A.Activation(f"{record.name}<-{other.name}", record.forward,
                        lambda z, a, g: other.backward(z, other.forward(z), g), None)


def _no_mean_mse() -> L.Loss:
    mse = L.get("mse")
    return mse._replace(name="mse_without_1/N", grad=lambda a, y: a.shape[0] * mse.grad(a, y))


def planted_bugs(dtypes, depth: int = 3, seed: int = 0, log=print) -> dict:
    """Plant each bug at each layer in each dtype; return the ones gradcheck missed."""
    missed, total = [], 0
    tanh, sigmoid = A.get("tanh"), A.get("sigmoid")
    bugs = {"derivative off by 1%": lambda rec: _scaled(rec, 1.01),
            "another activation's backward": lambda rec: _borrowed(rec, sigmoid)}
    for dtype in dtypes:
        for name, plant in bugs.items():
            for layer in range(depth):
                acts = [tanh] * (depth - 1) + [A.get("identity")]
                acts[layer] = plant(acts[layer] if layer < depth - 1 else tanh)
                net = fnn.mlp([6] + [16] * (depth - 1) + [4], activations=acts, dtype=dtype)
                _, params, x, y = case("tanh", depth, "mse", seed, dtype)
                report = fnn.gradcheck(net, params, x, y, "mse", num_checks=24, taylor=False)
                total += 1
                if report.ok:
                    missed.append({"bug": name, "layer": layer, "dtype": str(jnp.dtype(dtype))})
                    log(f"missed: {name} at layer {layer} in {jnp.dtype(dtype)}")
        net, params, x, y = case("tanh", depth, "mse", seed, dtype)
        total += 1
        if fnn.gradcheck(net, params, x, y, _no_mean_mse(), num_checks=24, taylor=False).ok:
            missed.append({"bug": "loss gradient without 1/N", "layer": depth - 1, "dtype": str(jnp.dtype(dtype))})
    return {"missed": missed, "planted": total}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few cases only")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    acts = ["tanh", "sigmoid", "gelu"] if args.quick else A.names()
    depths = (1, 3, 10) if args.quick else DEPTHS
    seeds = range(1 if args.quick else args.seeds)
    fa = false_alarms(acts, depths, seeds, LOSSES)
    bugs = planted_bugs([jnp.float32] if args.quick else [jnp.float32, jnp.float16, jnp.bfloat16])
    print(f"false alarms: {len(fa['alarms'])} of {fa['cases']} correct float32 networks "
          f"({len(acts)} activations x depths {list(depths)} x {len(LOSSES)} losses x {len(seeds)} seeds)")
    print("| depth | largest native-leg error / (eps · (depth + 1)) | K |")
    print("|---|---|---|")
    for d, m in fa["margin"].items():
        print(f"| {d} | {m:.3g} | {ERROR_MODEL_K:g} |")
    print(f"planted bugs missed: {len(bugs['missed'])} of {bugs['planted']}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"false_alarms": fa, "planted": bugs}, f, indent=1, default=str)
    return 1 if fa["alarms"] or bugs["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
