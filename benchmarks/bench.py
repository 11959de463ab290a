"""The side-by-side training benchmark's entry point: fnn.fit against NumPy, JAX from scratch and PyTorch.

Every row trains the same network on the same 60,000 synthetic MNIST-shaped float32 samples (784 features,
10 classes, fixed seed) with softmax cross-entropy (a mean over the mini-batch) and plain SGD, from identical
initial weights, over the identical shuffled order of every epoch (the order ``fnn.fit`` visits, replayed by
the peers: :mod:`benchmarks.workload`), so all rows end at the same training loss up to float32 rounding;
the table prints it to show they trained the same thing.

Rows, per configuration:

* ``fnn fit, manual``: :func:`fnn.fit` itself with the hand-written backprop, one ``epochs=1`` call per round
  continuing from the previous round's params, timed by fit's ``history["epoch_time"]``
  (:mod:`benchmarks.fnn_rows`);
* ``fnn fit, autodiff``: the same with ``grads="autodiff"`` (``jax.grad``);
* ``fnn fit, optax sgd``: the same with ``optimizer=optax.sgd(lr)``;
* ``NumPy backprop``: vectorised backprop over the mini-batch (matrix form), float32, in this process, and
  again in a subprocess with the other ``OPENBLAS_CORETYPE`` (OpenBLAS reads it when NumPy loads);
* ``JAX from scratch``: the JAX "MNIST from scratch" example: ``jax.grad`` and a jitted per-batch update
  called from a Python loop over NumPy batches;
* ``PyTorch eager``: ``nn.Sequential`` + ``nn.CrossEntropyLoss`` + ``torch.optim.SGD`` (skipped with a note
  when torch is not installed).

Timing: epochs of all in-process rows are interleaved (round ``e`` runs epoch ``e`` of every row, in a
rotating order), so the machine's noise hits every row alike; epoch 1 is a warm-up, the throughput is the
median of the other epochs, and ratios between rows are medians of per-round ratios. Compile time: for the
peers ``jit(...).lower(...).compile()``; for the fnn rows, fit compiles its epoch during a row's first call,
and JAX's compile events (``jax.monitoring``) during that call give it (:mod:`benchmarks.fnn_rows`). The
float32 GEMM rate (2048³, XLA, NumPy and PyTorch; the fastest is the roofline) is measured in every round too;
a training step costs about ``6 · n_params`` FLOPs per sample (2 forward, 4 backward).

Run ``python benchmarks/bench.py`` from a checkout (or ``fnn bench``); ``--quick`` is a seconds-long smoke run;
``--openblas-coretype NAME`` runs this process's NumPy with that OpenBLAS kernel family.
"""

from __future__ import annotations

import os
import sys


def _coretype_from_argv(argv):
    for i, arg in enumerate(argv):
        if arg == "--openblas-coretype" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--openblas-coretype="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    # OpenBLAS reads OPENBLAS_CORETYPE once, when NumPy loads: put --openblas-coretype into the environment
    # before anything imports NumPy (AVX-512 kernels on a CPU without them: main() explains and falls back).
    _coretype = _coretype_from_argv(sys.argv[1:])
    if _coretype and not (_coretype.lower() in ("skylakex", "cooperlake", "sapphirerapids")
                          and os.path.exists("/proc/cpuinfo") and " avx512f" not in open("/proc/cpuinfo").read()):
        os.environ["OPENBLAS_CORETYPE"] = _coretype
    if not __package__:  # run as a file: import this checkout's `benchmarks`, and let its folder shadow nothing
        sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from benchmarks import machine, peers, report, workload  # noqa: E402
from benchmarks.fnn_rows import FnnRow  # noqa: E402
from benchmarks.workload import Config, full_loss  # noqa: E402

__all__ = ["main", "run_config"]

SKYLAKEX = "SkylakeX"


def _coretype_label(value: str | None) -> str:
    return f"OPENBLAS_CORETYPE={value}" if value else "OpenBLAS default"


def run_config(config: Config, *, seed: int = 0, gemm_size: int = 2048, log=print) -> dict:
    """Train every row on ``config`` side by side; return the per-row results (see :func:`main`)."""
    import jax.numpy as jnp

    x, y = workload.synthetic_mnist(config.n, seed=seed)
    xd, yd = jnp.asarray(x), jnp.asarray(y)  # one device copy, shared by the fnn rows
    init = workload.initial_params(config, seed)
    orders = workload.epoch_orders(config, config.epochs, seed)
    here = os.environ.get("OPENBLAS_CORETYPE") or None
    other = None if here else SKYLAKEX
    torch_ok = machine.torch_available()

    numpy_name = f"NumPy backprop ({_coretype_label(here)})"
    numpy_row = peers.NumpyRow(numpy_name, config, init, x, y, orders)
    rows: list[peers.Row] = [
        FnnRow("fnn fit, manual", config, init, xd, yd, seed=seed, grads="manual"),
        FnnRow("fnn fit, autodiff", config, init, xd, yd, seed=seed, grads="autodiff"),
        FnnRow("fnn fit, optax sgd", config, init, xd, yd, seed=seed, optax_sgd=True),
        FnnRow("fnn fit, serial", config, init, xd, yd, seed=seed, net="serial"),
        FnnRow("fnn fit, serial + dropout", config, init, xd, yd, seed=seed, net="dropout"),
        numpy_row,
        peers.JaxScratchRow("JAX from scratch", config, init, x, y, orders),
    ]
    numpy_note = f"OpenBLAS kernels: {machine.openblas_coretype_detected()}"
    if peers.can_set_blas_threads():
        numpy_row.threads, threads_note = peers.pick_threads(
            lambda: peers.NumpyRow("", config, init, x, y, orders), config)
        numpy_note += f"; {threads_note}"
    else:
        numpy_note += "; OpenBLAS's default threads (install threadpoolctl to try 1 thread too)"
    numpy_row.note = numpy_note
    if torch_ok:
        import torch

        torch_row = peers.TorchRow("PyTorch eager", config, init, x, y, orders)
        torch_row.threads, threads_note = peers.pick_threads(
            lambda: peers.TorchRow("", config, init, x, y, orders), config)
        torch_row.note = f"torch {torch.__version__}, {threads_note}"
        rows.append(torch_row)
    results: dict[str, dict] = {}
    for row in rows:
        results[row.name] = {"compile_s": row.compile(), "times": [], "rss": [], "peak": 0.0, "note": row.note,
                             "in_process": True}
    gemm = machine.Gemm(gemm_size, torch_ok)
    roofline: list[float] = []
    for e in range(config.epochs):
        shift = e % len(rows)
        for row in rows[shift:] + rows[:shift]:  # rotate the order: no row always runs first or after another
            gc.collect()
            time.sleep(0.05)  # let other libraries' spinning worker threads go to sleep
            machine.reset_peak_memory()
            t0 = time.perf_counter()
            own = row.epoch(e)  # the fnn rows return fit's own epoch_time
            dt = time.perf_counter() - t0 if own is None else own
            rss, peak = machine.memory_mb()
            r = results[row.name]
            if e == 0:  # the loss after one epoch: rows agree closely here, before float32 drift adds up
                r["loss_epoch1"] = full_loss(row.params(), config.hidden, x, y)
            r["times"].append(dt)
            r["rss"].append(rss)
            r["peak"] = max(r["peak"], peak)
        roofline.append(gemm.measure())
        log(f"  {config.name}: round {e + 1}/{config.epochs} done", flush=True)
    for row in rows:
        r = results[row.name]
        r["final_loss"] = full_loss(row.params(), config.hidden, x, y)
        if isinstance(row, FnnRow):
            r["compile_s"], r["first_call_compile_s"] = row.compile_s, row.first_call_compile_s
            r["last_epoch_mean_step_loss"] = row.train_loss

    name = f"NumPy backprop ({_coretype_label(other)})"
    sub = peers.numpy_subprocess(config, init, x, y, orders, seed, other)
    if "error" in sub:
        results[name] = {"error": sub["error"], "in_process": False, "note": "subprocess"}
    else:
        results[name] = {"compile_s": None, "times": sub["times"], "rss": sub["rss"], "peak": sub["peak"],
                         "final_loss": full_loss(sub["params"], config.hidden, x, y), "in_process": False,
                         "loss_epoch1": full_loss(sub["params_epoch1"], config.hidden, x, y),
                         "note": f"subprocess; OpenBLAS kernels: {sub['coretype']}; {sub['threads']}"}
    if not torch_ok:
        results["PyTorch eager"] = {"error": "torch is not installed (pip install torch)", "in_process": False}
    return {"config": config._asdict(), "n_params": config.n_params, "rows": results,
            "gemm": {"per_round_best": roofline, "median_by_library": gemm.medians(), "size": gemm_size}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fnn bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (small data, 2 epochs)")
    p.add_argument("--configs", nargs="+", metavar="NAME", help="subset of: small/10 small/128 wide/256")
    p.add_argument("--epochs", type=int, help="epochs per configuration (≥ 2; the first is a warm-up); "
                   "default 10, 6 for wide/256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    p.add_argument("--openblas-coretype", metavar="NAME",
                   help="OPENBLAS_CORETYPE for this process's NumPy (re-executes if NumPy is already loaded); "
                        "the subprocess NumPy row then runs with OpenBLAS's default")
    return p


def _print_report(results: list[dict], env: dict, started: float) -> None:
    print()
    print(report.format_table(results))
    print()
    for res in results:
        g = res["gemm"]["median_by_library"]
        print(f"GEMM float32 {res['gemm']['size']}³ during {res['config']['name']}: "
              + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in g.items()) + " GFLOP/s (roofline: the fastest, per round)")
    print("◆ = fastest peer; ratios are medians of per-epoch ratios measured in the same rounds "
          "(rows run in a subprocess: ratio of medians).")
    print()
    print(report.format_targets(results))
    load_end = machine.load_average()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at the start {env['load_average']}, "
          f"at the end {load_end}")
    if max(env["load_average"] + load_end, default=0) > 1.5 * (os.cpu_count() or 1):
        print("note: the machine was busy (load average above its cores): every row was slowed, the rows whose "
              "thread pools spin while waiting (PyTorch's OpenMP, OpenBLAS) most; the thread trial picks their "
              "better setting, and the ratios are paired, but rerun on a quiet machine for absolute numbers.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit status (2 for bad arguments)."""
    args = _parser().parse_args(argv)
    if args.openblas_coretype and os.environ.get("OPENBLAS_CORETYPE") != args.openblas_coretype:
        if args.openblas_coretype.lower() in machine.AVX512_CORETYPES and machine.cpu_has_avx512() is False:
            print(f"fnn bench: OPENBLAS_CORETYPE={args.openblas_coretype} needs AVX-512, which this CPU lacks "
                  "(NumPy would die of SIGILL); running with OpenBLAS's default instead.", file=sys.stderr)
        else:  # NumPy is loaded already (main called from another program): start again with the variable set
            env = dict(os.environ, OPENBLAS_CORETYPE=args.openblas_coretype)
            argv = list(sys.argv[1:] if argv is None else argv)
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], env)
    configs = workload.QUICK_CONFIGS if args.quick else workload.CONFIGS
    if args.configs:
        unknown = set(args.configs) - {c.name for c in configs}
        if unknown:
            print(f"fnn bench: unknown configuration(s) {sorted(unknown)}; choose from "
                  f"{[c.name for c in configs]}.", file=sys.stderr)
            return 2
        configs = tuple(c for c in configs if c.name in args.configs)
    if args.epochs is not None:
        if args.epochs < 2:
            print("fnn bench: --epochs must be at least 2 (the first epoch is a warm-up).", file=sys.stderr)
            return 2
        configs = tuple(c._replace(epochs=args.epochs) for c in configs)

    env = machine.environment()
    print("fnn bench: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    results = []
    started = time.perf_counter()
    for config in configs:
        print(f"{config.name}: {config.sizes} {config.hidden}, batch {config.batch_size}, lr {config.learning_rate}, "
              f"{config.n:,} samples, {config.epochs} epochs ({config.n_params:,} params)", flush=True)
        res = run_config(config, seed=args.seed, gemm_size=256 if args.quick else 2048)
        report.summarise(res)
        results.append(res)
    _print_report(results, env, started)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "argv": list(sys.argv if argv is None else argv), "results": results},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
