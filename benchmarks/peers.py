"""The peer rows of the benchmark: NumPy backprop (in process and in a subprocess), JAX from scratch, PyTorch.

Each peer is written independently of fnn and replays fnn.fit's epoch order (:func:`workload.epoch_orders`),
so every row takes the same SGD steps from the same weights. A row is an object with ``compile() -> seconds
or None``, ``epoch(e)`` (round ``e``; blocks until done; returns None, or the row's own clock of the epoch)
and ``params()`` (NumPy ``(w, b)`` pairs).

NumPy only at import time: :func:`worker`, the NumPy row run in a child process with another
``OPENBLAS_CORETYPE`` (OpenBLAS reads it when NumPy loads), must not load JAX or fnn.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import (
    AVX512_CORETYPES,
    cpu_has_avx512,
    memory_mb,
    openblas_coretype_detected,
    reset_peak_memory,
)
from benchmarks.workload import Config, synthetic_mnist

__all__ = ["JaxScratchRow", "NumpyRow", "Row", "TorchRow", "numpy_sgd_epoch", "numpy_subprocess", "pick_threads",
           "worker"]

ROOT = Path(__file__).resolve().parents[1]


class Row:
    """One trainer: ``compile() -> seconds or None``, ``epoch(e) -> None or seconds`` (blocks until done),
    ``params()``. ``epoch`` returns None when the caller's clock around it is the row's time."""

    name: str
    note: str = ""

    def compile(self) -> float | None:
        return None

    def epoch(self, e: int) -> float | None:
        raise NotImplementedError

    def params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError


# --- NumPy ----------------------------------------------------------------------------------------------

def numpy_sgd_epoch(ws, bs, x, y, order, batch_size, lr, hidden):
    """One epoch of textbook backprop in matrix form over each mini-batch, updating ``ws``/``bs`` in place."""
    lr = np.float32(lr)
    inv_batch = np.float32(1.0 / batch_size)
    rows = np.arange(batch_size)
    last = len(ws) - 1
    for start in range(0, order.shape[0], batch_size):
        idx = order[start:start + batch_size]
        a = x[idx]
        acts = [a]
        for l in range(last):
            z = a @ ws[l]
            z += bs[l]
            if hidden == "sigmoid":  # 1 / (1 + e^-z), in place
                np.negative(z, out=z)
                np.exp(z, out=z)
                z += 1
                np.reciprocal(z, out=z)
            else:
                np.maximum(z, 0, out=z)
            a = z
            acts.append(a)
        z = a @ ws[last]
        z += bs[last]
        z -= z.max(axis=1, keepdims=True)  # softmax, then the closed form delta = (p - onehot) / N
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[rows, y[idx]] -= 1
        z *= inv_batch
        delta = z
        for l in range(last, -1, -1):
            dw = acts[l].T @ delta
            db = delta.sum(axis=0)
            if l > 0:  # propagate with the weights before this step's update
                up = delta @ ws[l].T
                a = acts[l]
                if hidden == "sigmoid":
                    up *= a
                    up *= 1 - a
                else:
                    up *= a > 0  # relu'(0) = 0
                delta = up
            dw *= lr
            ws[l] -= dw
            db *= lr
            bs[l] -= db


class NumpyRow(Row):
    def __init__(self, name, config, init, x, y, orders):
        self.name, self._c, self._x, self._y, self._orders = name, config, x, y, orders
        self._w = [w.copy() for w, _ in init]
        self._b = [b.copy() for _, b in init]
        self.threads: int | None = None  # BLAS threads (None: OpenBLAS's default); needs threadpoolctl

    def epoch(self, e: int, steps: int | None = None) -> None:
        c = self._c
        order = self._orders[e] if steps is None else self._orders[e][: steps * c.batch_size]
        with blas_threads(self.threads):
            numpy_sgd_epoch(self._w, self._b, self._x, self._y, order, c.batch_size, c.learning_rate, c.hidden)

    def params(self):
        return list(zip(self._w, self._b, strict=True))


# --- JAX from scratch -----------------------------------------------------------------------------------

class JaxScratchRow(Row):
    """JAX's "MNIST from scratch" example: ``jax.grad`` + a jitted update called from a Python loop."""

    def __init__(self, name, config, init, x, y, orders):
        import jax
        import jax.numpy as jnp

        self.name, self._c, self._x, self._y, self._orders, self._jax = name, config, x, y, orders, jax
        act = jax.nn.sigmoid if config.hidden == "sigmoid" else jax.nn.relu
        lr = config.learning_rate

        def predict(params, inputs):
            activations = inputs
            for w, b in params[:-1]:
                activations = act(jnp.dot(activations, w) + b)
            w, b = params[-1]
            logits = jnp.dot(activations, w) + b
            return logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)

        def loss(params, batch):
            inputs, labels = batch
            return -jnp.mean(jnp.take_along_axis(predict(params, inputs), labels[:, None], axis=1))

        @jax.jit
        def update(params, batch):
            grads = jax.grad(loss)(params, batch)
            return [(w - lr * dw, b - lr * db) for (w, b), (dw, db) in zip(params, grads, strict=True)]

        self._update = update
        self._p = [(jnp.asarray(w), jnp.asarray(b)) for w, b in init]

    def compile(self) -> float:
        bs = self._c.batch_size
        t0 = time.perf_counter()
        self._update.lower(self._p, (self._x[:bs], self._y[:bs])).compile()
        return time.perf_counter() - t0

    def epoch(self, e: int) -> None:
        order, bs, params = self._orders[e], self._c.batch_size, self._p
        for start in range(0, order.shape[0], bs):
            idx = order[start:start + bs]
            params = self._update(params, (self._x[idx], self._y[idx]))
        self._p = self._jax.block_until_ready(params)

    def params(self):
        return [(np.asarray(w), np.asarray(b)) for w, b in self._p]


# --- PyTorch --------------------------------------------------------------------------------------------

class TorchRow(Row):
    def __init__(self, name, config, init, x, y, orders):
        import torch
        from torch import nn

        self.name, self._c, self._torch, self._orders = name, config, torch, orders
        layers: list = []
        for l, (w, b) in enumerate(init):
            linear = nn.Linear(*w.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                linear.bias.copy_(torch.from_numpy(b))
            layers.append(linear)
            if l < len(init) - 1:
                layers.append(nn.Sigmoid() if config.hidden == "sigmoid" else nn.ReLU())
        self._model = nn.Sequential(*layers)
        self._opt = torch.optim.SGD(self._model.parameters(), lr=config.learning_rate)
        self._criterion = nn.CrossEntropyLoss()
        self._x = torch.from_numpy(x)
        self._y = torch.from_numpy(y.astype(np.int64))
        self.threads: int | None = None  # torch.set_num_threads before each epoch (None: torch's default)

    def epoch(self, e: int, steps: int | None = None) -> None:
        order = self._torch.from_numpy(self._orders[e].astype(np.int64))
        bs, model, opt, criterion = self._c.batch_size, self._model, self._opt, self._criterion
        if steps is not None:
            order = order[: steps * bs]
        if self.threads is not None:
            self._torch.set_num_threads(self.threads)
        for start in range(0, order.shape[0], bs):
            idx = order[start:start + bs]
            opt.zero_grad()
            criterion(model(self._x[idx]), self._y[idx]).backward()
            opt.step()

    def params(self):
        linears = [m for m in self._model if hasattr(m, "weight")]
        return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears]


# --- peer thread counts ---------------------------------------------------------------------------------

class blas_threads:
    """Limit OpenBLAS's threads inside the block (threadpoolctl; a no-op without it or for ``None``)."""

    def __init__(self, threads: int | None):
        self._threads, self._ctx = threads, None

    def __enter__(self):
        if self._threads is not None:
            try:
                import threadpoolctl
            except ImportError:
                return self
            self._ctx = threadpoolctl.threadpool_limits(limits=self._threads, user_api="blas")
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def can_set_blas_threads() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def pick_threads(make_row, config: Config, *, trials: int = 3) -> tuple[int | None, str]:
    """Be fair to a peer: time a short run with 1 thread and with every core, keep the faster.

    PyTorch's OpenMP pool and OpenBLAS's pthreads spin while they wait for work; on a busy machine, or for the
    small matrices of a small network, one thread can be many times faster than all cores, and on a quiet
    machine with wide layers it is the other way round. The trial trains a throwaway copy of the row.
    """
    cores = os.cpu_count() or 1
    if cores == 1:
        return None, "1 thread"
    steps = max(2, min(config.steps, int(2e8 / (6 * config.n_params * config.batch_size)) + 2))
    best: dict[int, float] = {}
    for _ in range(trials):
        for threads in (1, cores):
            row = make_row()
            row.threads = threads
            row.epoch(0, steps=1)  # warm-up
            t0 = time.perf_counter()
            row.epoch(0, steps=steps)
            best[threads] = min(best.get(threads, float("inf")), time.perf_counter() - t0)
    pick = min(best, key=best.get)
    return pick, (f"{pick} thread{'s' if pick > 1 else ''} (trial: 1 → {best[1] / steps * 1e6:.0f} µs/step, "
                  f"{cores} → {best[cores] / steps * 1e6:.0f} µs/step)")


# --- the NumPy peer in a subprocess (another OPENBLAS_CORETYPE) -----------------------------------------

def worker(job_path: str, out_path: str) -> int:
    """Subprocess entry: the NumPy peer for one configuration (loads no JAX)."""
    job = np.load(job_path)
    config = Config(str(job["name"]), tuple(int(s) for s in job["sizes"]), str(job["hidden"]),
                    int(job["batch_size"]), float(job["learning_rate"]), int(job["n"]), int(job["epochs"]))
    x, y = synthetic_mnist(config.n, seed=int(job["seed"]))
    if not np.array_equal(y, job["y"]) or float(x[:64].sum(dtype=np.float64)) != float(job["x_check"]):
        raise RuntimeError("the worker's synthetic data differ from the parent's")
    init = [(job[f"w{l}"], job[f"b{l}"]) for l in range(len(config.sizes) - 1)]
    orders = job["orders"]
    row = NumpyRow("numpy", config, init, x, y, orders)
    threads_note = "OpenBLAS's default threads"
    if can_set_blas_threads():
        row.threads, threads_note = pick_threads(lambda: NumpyRow("", config, init, x, y, orders), config)
    times, rss = [], []
    reset_peak_memory()
    after_first: dict = {}
    for e in range(config.epochs):
        t0 = time.perf_counter()
        row.epoch(e)
        times.append(time.perf_counter() - t0)
        rss.append(memory_mb()[0])
        if e == 0:
            for l, (w, b) in enumerate(row.params()):
                after_first[f"e1_w{l}"], after_first[f"e1_b{l}"] = w.copy(), b.copy()
    out = {"times": np.array(times), "rss": np.array(rss), "peak": np.array(memory_mb()[1]),
           "coretype": np.array(openblas_coretype_detected()), "threads": np.array(threads_note), **after_first}
    for l, (w, b) in enumerate(row.params()):
        out[f"w{l}"], out[f"b{l}"] = w, b
    np.savez(out_path, **out)
    return 0


def numpy_subprocess(config, init, x, y, orders, seed, coretype: str | None) -> dict:
    """Run the NumPy peer in a child process whose environment sets (or unsets) OPENBLAS_CORETYPE."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    with tempfile.TemporaryDirectory() as tmp:
        job, out = os.path.join(tmp, "job.npz"), os.path.join(tmp, "out.npz")
        arrays = {f"w{l}": w for l, (w, _) in enumerate(init)} | {f"b{l}": b for l, (_, b) in enumerate(init)}
        np.savez(job, name=config.name, sizes=np.array(config.sizes), hidden=config.hidden,
                 batch_size=config.batch_size, learning_rate=config.learning_rate, n=config.n,
                 epochs=config.epochs, seed=seed, y=y, x_check=float(x[:64].sum(dtype=np.float64)),
                 orders=orders, **arrays)
        # The repository root first on sys.path, so `benchmarks` is this checkout's; the worker imports only
        # NumPy and the NumPy-only modules of the benchmark (no fnn, no JAX).
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.peers import worker; "
                "sys.exit(worker(sys.argv[1], sys.argv[2]))")
        proc = subprocess.run([sys.executable, "-c", code, job, out], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            if proc.returncode in (-4, 132):  # SIGILL
                why = "illegal instruction (SIGILL)"
                if coretype and coretype.lower() in AVX512_CORETYPES and cpu_has_avx512() is False:
                    why += f": {coretype} kernels need AVX-512, which this CPU does not have"
            else:
                why = f"exit status {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"
            return {"error": why}
        res = np.load(out)
        params = [(res[f"w{l}"], res[f"b{l}"]) for l in range(len(init))]
        params_epoch1 = [(res[f"e1_w{l}"], res[f"e1_b{l}"]) for l in range(len(init))]
        return {"times": res["times"].tolist(), "rss": res["rss"].tolist(), "peak": float(res["peak"]),
                "coretype": str(res["coretype"]), "threads": str(res["threads"]), "params": params,
                "params_epoch1": params_epoch1}
