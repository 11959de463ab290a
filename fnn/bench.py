"""Side-by-side training benchmark: fnn's compiled epochs against the from-scratch alternatives.

Every row trains the same network on the same 60,000 synthetic MNIST-shaped float32 samples (784 features,
10 classes, fixed seed) with softmax cross-entropy (a mean over the mini-batch) and plain SGD, from identical
initial weights, over the identical shuffled order of every epoch (:func:`fnn.train.epoch_order` of
``fold_in(key, epoch)``, exactly the order :func:`fnn.fit` uses), so all rows end at the same training loss
up to float32 rounding; the table prints it to show they trained the same thing.

Rows, per configuration:

* ``fnn fit, manual``: fit's compiled epoch (one ``lax.scan``) with the hand-written backprop, driven as
  :func:`fnn.fit` drives it (the same jitted function, key folding, loss fetch and finiteness check);
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
median of the other epochs, and ratios between rows are medians of per-round ratios. Compilation is timed
separately. The float32 GEMM rate (2048³, XLA, NumPy and PyTorch; the fastest is the roofline) is measured
in every round too; a training step costs about ``6 · n_params`` FLOPs per sample (2 forward, 4 backward).

Run ``python scripts/bench.py`` (or ``fnn bench``); ``--quick`` is a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Config", "CONFIGS", "QUICK_CONFIGS", "synthetic_mnist", "main"]

LOSS = "sparse_categorical_cross_entropy"
N_FEATURES, N_CLASSES = 784, 10
SKYLAKEX = "SkylakeX"
#: Agreement of the rows' full training losses (relative to fnn's manual row). After one epoch they agree to
#: float32 rounding; over hundreds of thousands of SGD steps the trajectories drift apart by rounding alone
#: (different summation orders in different GEMM libraries), so the final check is looser.
LOSS_RTOL_EPOCH1, LOSS_RTOL_FINAL = 1e-3, 3e-2
AVX512_CORETYPES = ("skylakex", "cooperlake", "sapphirerapids")


class Config(NamedTuple):
    """One benchmark configuration: ``[784, ..., 10]`` with ``hidden`` activations and a softmax output."""

    name: str
    sizes: tuple[int, ...]
    hidden: str
    batch_size: int
    learning_rate: float
    n: int = 60_000
    epochs: int = 10

    @property
    def n_params(self) -> int:
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def steps(self) -> int:
        return self.n // self.batch_size

    @property
    def samples(self) -> int:
        """Samples trained per epoch (the last partial batch is dropped, as in fit)."""
        return self.steps * self.batch_size


CONFIGS = (
    Config("small/10", (784, 30, 10), "sigmoid", 10, 0.1),
    Config("small/128", (784, 30, 10), "sigmoid", 128, 0.1),
    # lr 0.03, not 0.1: at 0.1 this ReLU net trains chaotically (rows that differ only in float32 summation
    # order are 0.2% apart after 100 steps), so the rows' losses could not show they train the same thing.
    Config("wide/256", (784, 1024, 1024, 10), "relu", 256, 0.03, epochs=6),
)
QUICK_CONFIGS = (  # a smoke run: every row of every configuration, on little data (wide/256 narrowed)
    Config("small/10", (784, 30, 10), "sigmoid", 10, 0.1, n=500, epochs=2),
    Config("small/128", (784, 30, 10), "sigmoid", 128, 0.1, n=1_024, epochs=2),
    Config("wide/256", (784, 64, 64, 10), "relu", 256, 0.1, n=1_024, epochs=2),
)

ROWS = (
    "fnn fit, manual",
    "fnn fit, autodiff",
    "fnn fit, optax sgd",
    "NumPy backprop",  # + the coretype, filled in at run time
    "NumPy backprop",
    "JAX from scratch",
    "PyTorch eager",
)


# --- data, initial weights, epoch orders ----------------------------------------------------------------

def synthetic_mnist(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MNIST-shaped samples: ``x`` float32 ``(n, 784)`` uniform in ``[0, 1)``, ``y`` int32 ``(n,)``.

    The labels come from a fixed random linear teacher, ``y = argmax((x - 0.5) @ T)``, so the task is learnable
    and the training loss falls epoch by epoch. Deterministic for a seed (NumPy's PCG64).
    """
    rng = np.random.default_rng(seed)
    x = rng.random((n, N_FEATURES), dtype=np.float32)
    teacher = rng.standard_normal((N_FEATURES, N_CLASSES)).astype(np.float32)
    y = np.argmax((x - np.float32(0.5)) @ teacher, axis=1).astype(np.int32)
    return x, y


def _initial_params(config: Config, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """fnn's own init (``glorot_uniform``, zero biases) as NumPy ``(w, b)`` pairs, shared by every row."""
    import jax

    import fnn

    net = fnn.mlp(list(config.sizes), hidden=config.hidden, output="softmax")
    return [(np.array(p["w"]), np.array(p["b"])) for p in net.init(jax.random.key(seed))]


def _epoch_orders(config: Config, epochs: int, seed: int) -> np.ndarray:
    """``(epochs, samples)`` int32: the example order of every epoch, exactly as fit computes it."""
    import jax

    from fnn.train import _epoch_permutation

    key = jax.random.key(seed)
    return np.stack([
        np.asarray(_epoch_permutation(jax.random.fold_in(key, e), config.n, config.batch_size)).reshape(-1)
        for e in range(epochs)
    ]).astype(np.int32)


def full_loss(params: Sequence[tuple[np.ndarray, np.ndarray]], hidden: str, x: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy over the whole set, in float64: the one evaluator used for every row."""
    total = 0.0
    for s in range(0, x.shape[0], 8192):
        a = x[s:s + 8192].astype(np.float64)
        for l, (w, b) in enumerate(params):
            z = a @ w.astype(np.float64) + b.astype(np.float64)
            a = z if l == len(params) - 1 else (1 / (1 + np.exp(-z)) if hidden == "sigmoid" else np.maximum(z, 0))
        z = a - a.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        total += float(np.sum(lse - z[np.arange(z.shape[0]), y[s:s + 8192]]))
    return total / x.shape[0]


# --- memory ---------------------------------------------------------------------------------------------

def _memory_mb() -> tuple[float, float]:
    """``(current RSS, peak RSS)`` of this process in MiB (Linux ``/proc``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return float("nan"), peak


def _reset_peak_memory() -> None:
    """Reset the peak-RSS mark (Linux ≥ 4.0: writing 5 to clear_refs), so a row's peak is its own epoch's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# --- the rows -------------------------------------------------------------------------------------------

class _Row:
    """One trainer: ``compile() -> seconds or None``, ``epoch(e)`` (blocks until done), ``params()``."""

    name: str
    note: str = ""

    def compile(self) -> float | None:
        return None

    def epoch(self, e: int) -> None:
        raise NotImplementedError

    def params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError


class _FnnRow(_Row):
    """fit's compiled epoch, driven as fit drives it."""

    def __init__(self, name, config, init, x, y, *, seed, grads="manual", optax_sgd=False):
        import jax
        import jax.numpy as jnp
        import optax

        import fnn
        from fnn import train

        self.name, self._train, self._jax = name, train, jax
        self._net = fnn.mlp(list(config.sizes), hidden=config.hidden, output="softmax")
        self._p = [{"w": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in init]
        loss = fnn.losses.get(LOSS)
        self._x, self._y = train._prepare_data(self._net, self._p, loss, x, y, "train:")
        optimizer = optax.sgd(config.learning_rate) if optax_sgd else None
        self._setup = train._setup(self._net, loss, grads, optimizer, config.learning_rate, config.n,
                                   config.batch_size, False, 1)
        self._epoch_fn = jax.jit(self._setup.epoch)  # as fit: jax.jit(setup.epoch)
        self._s = self._setup.optimizer.init(self._p) if optimizer is not None else ()
        self._key = jax.random.key(seed)
        self.train_loss = float("nan")

    def compile(self) -> float:
        t0 = time.perf_counter()
        self._epoch_fn.lower(self._p, self._s, self._x, self._y, self._key, self._setup.lr).compile()
        return time.perf_counter() - t0

    def epoch(self, e: int) -> None:
        # The body of fit's epoch loop, less the history bookkeeping.
        epoch_key = self._jax.random.fold_in(self._key, e)
        p, s, step_losses, _ = self._epoch_fn(self._p, self._s, self._x, self._y, epoch_key, self._setup.lr)
        step_losses = np.asarray(step_losses)
        if not (np.isfinite(step_losses).all() and bool(self._train._all_finite(p))):
            raise FloatingPointError(f"{self.name}: training diverged in epoch {e + 1}.")
        self._p, self._s = p, s
        self.train_loss = float(step_losses.mean())

    def params(self):
        return [(np.asarray(layer["w"]), np.asarray(layer["b"])) for layer in self._p]


def _numpy_sgd_epoch(ws, bs, x, y, order, batch_size, lr, hidden):
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


class _NumpyRow(_Row):
    def __init__(self, name, config, init, x, y, orders):
        self.name, self._c, self._x, self._y, self._orders = name, config, x, y, orders
        self._w = [w.copy() for w, _ in init]
        self._b = [b.copy() for _, b in init]
        self.threads: int | None = None  # BLAS threads (None: OpenBLAS's default); needs threadpoolctl

    def epoch(self, e: int, steps: int | None = None) -> None:
        c = self._c
        order = self._orders[e] if steps is None else self._orders[e][: steps * c.batch_size]
        with _blas_threads(self.threads):
            _numpy_sgd_epoch(self._w, self._b, self._x, self._y, order, c.batch_size, c.learning_rate, c.hidden)

    def params(self):
        return list(zip(self._w, self._b))


class _JaxScratchRow(_Row):
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
            return [(w - lr * dw, b - lr * db) for (w, b), (dw, db) in zip(params, grads)]

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


class _TorchRow(_Row):
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


# --- peer thread counts --------------------------------------------------------------------------------

class _blas_threads:
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


def _can_set_blas_threads() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def _pick_threads(make_row, config: Config, *, trials: int = 3) -> tuple[int | None, str]:
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
    return pick, f"{pick} thread{'s' if pick > 1 else ''} (trial: 1 → {best[1] / steps * 1e6:.0f} µs/step, " \
                 f"{cores} → {best[cores] / steps * 1e6:.0f} µs/step)"


# --- GEMM roofline --------------------------------------------------------------------------------------

class _Gemm:
    """Float32 ``(s, s) @ (s, s)`` in every available library; ``rate()`` = the fastest, in FLOP/s."""

    def __init__(self, size: int, torch_ok: bool):
        import jax
        import jax.numpy as jnp

        rng = np.random.default_rng(1)
        a = rng.random((size, size), dtype=np.float32)
        b = rng.random((size, size), dtype=np.float32)
        self.flops = 2.0 * size**3
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        dot = jax.jit(jnp.dot)
        self.fns = {"XLA": lambda: dot(ja, jb).block_until_ready(), "NumPy": lambda: a @ b}
        if torch_ok:
            import torch

            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            self.fns["PyTorch"] = lambda: torch.mm(ta, tb)
        self.samples: dict[str, list[float]] = {k: [] for k in self.fns}
        for fn in self.fns.values():
            fn()

    def measure(self) -> float:
        """Time each library once, on every core; return this round's best rate."""
        best = 0.0
        for name, fn in self.fns.items():
            if name == "PyTorch":
                import torch

                torch.set_num_threads(os.cpu_count() or 1)
                fn()  # the pool may have been resized by the PyTorch row
            t0 = time.perf_counter()
            fn()
            rate = self.flops / (time.perf_counter() - t0)
            self.samples[name].append(rate)
            best = max(best, rate)
        return best

    def medians(self) -> dict[str, float]:
        return {k: float(np.median(v)) for k, v in self.samples.items() if v}


# --- the NumPy peer in a subprocess (another OPENBLAS_CORETYPE) -----------------------------------------

def _cpu_has_avx512() -> bool | None:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return None


def _openblas_coretype_detected() -> str:
    """The OpenBLAS kernel family NumPy uses here (needs threadpoolctl; ``"unknown"`` without it)."""
    try:
        import threadpoolctl

        for info in threadpoolctl.threadpool_info():
            if info.get("internal_api") == "openblas":
                return str(info.get("architecture", "unknown"))
    except Exception:  # noqa: BLE001 - optional diagnostics only
        pass
    return "unknown"


def _worker(job_path: str, out_path: str) -> int:
    """Subprocess entry: the NumPy peer for one configuration (loads no JAX)."""
    job = np.load(job_path)
    config = Config(str(job["name"]), tuple(int(s) for s in job["sizes"]), str(job["hidden"]),
                    int(job["batch_size"]), float(job["learning_rate"]), int(job["n"]), int(job["epochs"]))
    x, y = synthetic_mnist(config.n, seed=int(job["seed"]))
    if not np.array_equal(y, job["y"]) or float(x[:64].sum(dtype=np.float64)) != float(job["x_check"]):
        raise RuntimeError("the worker's synthetic data differ from the parent's")
    init = [(job[f"w{l}"], job[f"b{l}"]) for l in range(len(config.sizes) - 1)]
    orders = job["orders"]
    row = _NumpyRow("numpy", config, init, x, y, orders)
    threads_note = "OpenBLAS's default threads"
    if _can_set_blas_threads():
        row.threads, threads_note = _pick_threads(lambda: _NumpyRow("", config, init, x, y, orders), config)
    times, rss = [], []
    _reset_peak_memory()
    after_first: dict = {}
    for e in range(config.epochs):
        t0 = time.perf_counter()
        row.epoch(e)
        times.append(time.perf_counter() - t0)
        rss.append(_memory_mb()[0])
        if e == 0:
            for l, (w, b) in enumerate(row.params()):
                after_first[f"e1_w{l}"], after_first[f"e1_b{l}"] = w.copy(), b.copy()
    out = {"times": np.array(times), "rss": np.array(rss), "peak": np.array(_memory_mb()[1]),
           "coretype": np.array(_openblas_coretype_detected()), "threads": np.array(threads_note), **after_first}
    for l, (w, b) in enumerate(row.params()):
        out[f"w{l}"], out[f"b{l}"] = w, b
    np.savez(out_path, **out)
    return 0


def _numpy_subprocess(config, init, x, y, orders, seed, coretype: str | None) -> dict:
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
        # run_path, not ``python fnn/bench.py``: the worker must not import fnn (and JAX), and the script's
        # folder must not shadow standard modules on sys.path.
        code = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
        proc = subprocess.run([sys.executable, "-c", code, os.path.abspath(__file__), "--_worker", job, out],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            if proc.returncode in (-4, 132):  # SIGILL
                why = "illegal instruction (SIGILL)"
                if coretype and coretype.lower() in AVX512_CORETYPES and _cpu_has_avx512() is False:
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


# --- running one configuration --------------------------------------------------------------------------

def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _coretype_label(value: str | None) -> str:
    return f"OPENBLAS_CORETYPE={value}" if value else "OpenBLAS default"


def run_config(config: Config, *, seed: int = 0, gemm_size: int = 2048, log=print) -> dict:
    """Train every row on ``config`` side by side; return the per-row results (see :func:`main`)."""
    import jax.numpy as jnp

    x, y = synthetic_mnist(config.n, seed=seed)
    xd, yd = jnp.asarray(x), jnp.asarray(y)  # one device copy, shared by the fnn rows
    init = _initial_params(config, seed)
    orders = _epoch_orders(config, config.epochs, seed)
    here = os.environ.get("OPENBLAS_CORETYPE") or None
    other = None if here else SKYLAKEX
    torch_ok = _torch_available()

    numpy_name = f"NumPy backprop ({_coretype_label(here)})"
    rows: list[_Row] = [
        _FnnRow("fnn fit, manual", config, init, xd, yd, seed=seed, grads="manual"),
        _FnnRow("fnn fit, autodiff", config, init, xd, yd, seed=seed, grads="autodiff"),
        _FnnRow("fnn fit, optax sgd", config, init, xd, yd, seed=seed, optax_sgd=True),
        _NumpyRow(numpy_name, config, init, x, y, orders),
        _JaxScratchRow("JAX from scratch", config, init, x, y, orders),
    ]
    numpy_note = f"OpenBLAS kernels: {_openblas_coretype_detected()}"
    if _can_set_blas_threads():
        rows[3].threads, threads_note = _pick_threads(lambda: _NumpyRow("", config, init, x, y, orders), config)
        numpy_note += f"; {threads_note}"
    else:
        numpy_note += "; OpenBLAS's default threads (install threadpoolctl to try 1 thread too)"
    rows[3].note = numpy_note
    if torch_ok:
        torch_row = _TorchRow("PyTorch eager", config, init, x, y, orders)
        torch_row.threads, threads_note = _pick_threads(lambda: _TorchRow("", config, init, x, y, orders), config)
        import torch

        torch_row.note = f"torch {torch.__version__}, {threads_note}"
        rows.append(torch_row)
    results: dict[str, dict] = {}
    for row in rows:
        results[row.name] = {"compile_s": row.compile(), "times": [], "rss": [], "peak": 0.0, "note": row.note,
                             "in_process": True}
    gemm = _Gemm(gemm_size, torch_ok)
    roofline: list[float] = []
    for e in range(config.epochs):
        shift = e % len(rows)
        for row in rows[shift:] + rows[:shift]:  # rotate the order: no row always runs first or after another
            gc.collect()
            time.sleep(0.05)  # let other libraries' spinning worker threads go to sleep
            _reset_peak_memory()
            t0 = time.perf_counter()
            row.epoch(e)
            dt = time.perf_counter() - t0
            rss, peak = _memory_mb()
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
        if isinstance(row, _FnnRow):
            r["last_epoch_mean_step_loss"] = row.train_loss

    name = f"NumPy backprop ({_coretype_label(other)})"
    sub = _numpy_subprocess(config, init, x, y, orders, seed, other)
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


# --- summary --------------------------------------------------------------------------------------------

def _summarise(res: dict) -> None:
    """Add throughput, paired ratios and roofline fractions to each row of one configuration's result."""
    cfg = Config(**res["config"])
    samples = cfg.samples
    roof = np.asarray(res["gemm"]["per_round_best"])
    rows = res["rows"]
    for r in rows.values():
        if "error" in r:
            continue
        timed = np.asarray(r["times"][1:] or r["times"])  # epoch 1 is the warm-up
        r["epoch_s"] = float(np.median(timed))
        r["samples_per_s"] = samples / r["epoch_s"]
        r["flops"] = 6.0 * cfg.n_params * r["samples_per_s"]
        if r["in_process"]:
            t = np.asarray(r["times"][1:] or r["times"])
            r["roofline"] = float(np.median(6.0 * cfg.n_params * samples / t / roof[-len(t):]))
        else:
            r["roofline"] = r["flops"] / float(np.median(roof))
        r["rss_epoch2"] = r["rss"][1] if len(r["rss"]) > 1 else r["rss"][0]
        r["rss_last"] = r["rss"][-1]
    peers = [k for k, r in rows.items() if not k.startswith("fnn") and "error" not in r]
    fastest = max(peers, key=lambda k: rows[k]["samples_per_s"]) if peers else None
    res["fastest_peer"] = fastest
    ref_loss = rows["fnn fit, manual"]["final_loss"]
    res["loss_spread"] = max(abs(r["final_loss"] - ref_loss) / abs(ref_loss) for r in rows.values() if "error" not in r)
    ref1 = rows["fnn fit, manual"]["loss_epoch1"]
    res["loss_spread_epoch1"] = max(abs(r["loss_epoch1"] - ref1) / abs(ref1) for r in rows.values() if "error" not in r)
    for name, r in rows.items():
        if "error" in r or fastest is None:
            continue
        r["vs_fastest_peer"] = r["samples_per_s"] / rows[fastest]["samples_per_s"]
        for peer_name, key in ((fastest, "paired_vs_fastest_peer"), ("PyTorch eager", "paired_vs_torch"),
                               ("fnn fit, autodiff", "paired_vs_autodiff")):
            peer = rows.get(peer_name)
            if peer is None or "error" in peer:
                continue
            if r["in_process"] and peer["in_process"]:
                r[key] = float(np.median(np.asarray(peer["times"][1:]) / np.asarray(r["times"][1:])))
            else:
                r[key] = r["samples_per_s"] / peer["samples_per_s"]


def _fmt(v, spec):
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def format_table(results: Sequence[dict]) -> str:
    """The results as a Markdown table (one line per row and configuration)."""
    head = ("| config | row | samples/s | × fastest peer (paired) | epoch ms | compile s | % GEMM roofline | "
            "train loss after epoch 1 → last | peak RSS MiB | RSS MiB epoch 2 → last |")
    lines = [head, "|" + "|".join(["---"] * 10) + "|"]
    for res in results:
        cfg = res["config"]
        for name, r in res["rows"].items():
            if "error" in r:
                lines.append(f"| {cfg['name']} | {name} | skipped: {r['error']} | | | | | | | |")
                continue
            marker = " ◆" if name == res["fastest_peer"] else ""
            ratio = r.get("paired_vs_fastest_peer", r.get("vs_fastest_peer"))
            lines.append(
                f"| {cfg['name']} | {name}{marker} | {r['samples_per_s']:,.0f} | {_fmt(ratio, '.2f')} | "
                f"{r['epoch_s'] * 1e3:,.0f} | {_fmt(r['compile_s'], '.2f')} | {100 * r['roofline']:.1f} | "
                f"{r['loss_epoch1']:.5f} → {r['final_loss']:.5f} | {r['peak']:,.0f} | {r['rss_epoch2']:,.0f} → {r['rss_last']:,.0f} |"
            )
    return "\n".join(lines)


TARGETS = (
    ("small/10", "fnn fit, manual", "paired_vs_fastest_peer", 1.5, "≥ 1.5× the fastest peer"),
    ("small/128", "fnn fit, manual", "paired_vs_fastest_peer", 1.2, "≥ 1.2× the fastest peer"),
    ("wide/256", "fnn fit, manual", "paired_vs_torch", 2.0, "≥ 2× PyTorch eager"),
    ("wide/256", "fnn fit, manual", "roofline", 0.85, "≥ 85% of the GEMM roofline"),
)


def format_targets(results: Sequence[dict]) -> str:
    """One line per target of the issue: the measured value and whether it is met."""
    by_name = {res["config"]["name"]: res for res in results}
    out = []
    for cfg_name, row, key, goal, text in TARGETS:
        r = by_name.get(cfg_name, {}).get("rows", {}).get(row, {})
        if key not in r:
            out.append(f"- {cfg_name}: {text}: not measured")
            continue
        v = r[key]
        shown = f"{100 * v:.1f}%" if key == "roofline" else f"{v:.2f}×"
        out.append(f"- {cfg_name}: {text}: {shown} — {'met' if v >= goal else 'MISSED'}")
    for res in results:
        rows = res["rows"]
        m = rows.get("fnn fit, manual", {})
        if "paired_vs_autodiff" in m:
            v = m["paired_vs_autodiff"]
            out.append(f"- {res['config']['name']}: manual ≥ 0.97 × autodiff: {v:.3f} — {'met' if v >= 0.97 else 'MISSED'}")
        if m.get("compile_s") is not None:
            c = m["compile_s"]
            out.append(f"- {res['config']['name']}: compiling an epoch < 1 s: {c:.2f} s — {'met' if c < 1 else 'MISSED'}")
        ok = res["loss_spread_epoch1"] < LOSS_RTOL_EPOCH1 and res["loss_spread"] < LOSS_RTOL_FINAL
        out.append(f"- {res['config']['name']}: all rows train the same thing: training loss spread "
                   f"{res['loss_spread_epoch1']:.1e} after epoch 1 (< {LOSS_RTOL_EPOCH1:.0e}), "
                   f"{res['loss_spread']:.1e} at the end (< {LOSS_RTOL_FINAL:.0e}) — {'yes' if ok else 'NO'}")
    return "\n".join(out)


def _load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def environment() -> dict:
    """Versions and machine, for the report."""
    import jax
    import optax

    import fnn

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"python": platform.python_version(), "fnn": fnn.__version__, "jax": jax.__version__,
           "jaxlib": importlib.metadata.version("jaxlib"),
           "numpy": np.__version__, "optax": optax.__version__, "cpu": cpu, "cores": os.cpu_count(),
           "avx512": _cpu_has_avx512(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
           "openblas_kernels": _openblas_coretype_detected(), "platform": platform.platform(),
           "load_average": _load_average()}
    if _torch_available():
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


# --- entry point ----------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fnn bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (small data, 3 epochs)")
    p.add_argument("--configs", nargs="+", metavar="NAME", help="subset of: small/10 small/128 wide/256")
    p.add_argument("--epochs", type=int, help="epochs per configuration (≥ 2; the first is a warm-up); "
                   "default 10, 6 for wide/256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    p.add_argument("--openblas-coretype", metavar="NAME",
                   help="OPENBLAS_CORETYPE for this process's NumPy (re-executes if NumPy is already loaded); "
                        "the subprocess NumPy row then runs with OpenBLAS's default")
    p.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit status."""
    args = _parser().parse_args(argv)
    if args._worker:
        return _worker(*args._worker)
    if args.openblas_coretype and os.environ.get("OPENBLAS_CORETYPE") != args.openblas_coretype:
        if args.openblas_coretype.lower() in AVX512_CORETYPES and _cpu_has_avx512() is False:
            print(f"fnn bench: OPENBLAS_CORETYPE={args.openblas_coretype} needs AVX-512, which this CPU lacks "
                  "(NumPy would die of SIGILL); running with OpenBLAS's default instead.", file=sys.stderr)
        else:  # OpenBLAS reads the variable when NumPy loads: start again with it set
            env = dict(os.environ, OPENBLAS_CORETYPE=args.openblas_coretype)
            argv = list(sys.argv[1:] if argv is None else argv)
            os.execve(sys.executable, [sys.executable, "-m", "fnn.bench", *argv], env)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
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

    env = environment()
    print("fnn bench: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    results = []
    started = time.perf_counter()
    for config in configs:
        print(f"{config.name}: {config.sizes} {config.hidden}, batch {config.batch_size}, lr {config.learning_rate}, "
              f"{config.n:,} samples, {config.epochs} epochs ({config.n_params:,} params)", flush=True)
        res = run_config(config, seed=args.seed, gemm_size=256 if args.quick else 2048)
        _summarise(res)
        results.append(res)
    print()
    print(format_table(results))
    print()
    for res in results:
        g = res["gemm"]["median_by_library"]
        print(f"GEMM float32 {res['gemm']['size']}³ during {res['config']['name']}: "
              + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in g.items()) + " GFLOP/s (roofline: the fastest, per round)")
    print("◆ = fastest peer; ratios are medians of per-epoch ratios measured in the same rounds "
          "(rows run in a subprocess: ratio of medians).")
    print()
    print(format_targets(results))
    load_end = _load_average()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at the start {env['load_average']}, "
          f"at the end {load_end}")
    if max(env["load_average"] + load_end, default=0) > 1.5 * (os.cpu_count() or 1):
        print("note: the machine was busy (load average above its cores): every row was slowed, the rows whose "
              "thread pools spin while waiting (PyTorch's OpenMP, OpenBLAS) most; the thread trial picks their "
              "better setting, and the ratios are paired, but rerun on a quiet machine for absolute numbers.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "argv": list(sys.argv if argv is None else argv), "results": results},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":  # the NumPy subprocess: no fnn, no JAX
        sys.exit(_worker(sys.argv[2], sys.argv[3]))
    sys.exit(main())
