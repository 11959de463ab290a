"""The benchmark's workload: configurations, synthetic MNIST-shaped data, shared initial weights, epoch orders.

Every row of the benchmark trains the same thing: the same network from the same weights
(:func:`initial_params`, fnn's own init), on the same data (:func:`synthetic_mnist`), over the same shuffled
order of every epoch (:func:`epoch_orders`, exactly the order :func:`fnn.fit` visits), and is scored by one
float64 evaluator (:func:`full_loss`).

Epoch orders: round ``e`` of the benchmark trains one epoch with the key :func:`round_key` ``(seed, e) =
fold_in(key(seed), e)``; the fnn rows pass it to ``fnn.fit(..., epochs=1, key=round_key(seed, e))``, whose
single epoch visits ``fnn.train.epoch_order(fold_in(round_key, 0), n)[: (n // B) * B]`` in mini-batches of
``B`` (the last partial batch dropped, fit's documented order), and the peers replay exactly that order.

NumPy only at import time: the NumPy subprocess of :mod:`benchmarks.peers` imports this module without
loading JAX or fnn (they are imported inside the functions that need them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "CONFIGS",
    "LOSS",
    "QUICK_CONFIGS",
    "Config",
    "epoch_orders",
    "full_loss",
    "initial_params",
    "make_net",
    "round_key",
    "synthetic_mnist",
]

LOSS = "sparse_categorical_cross_entropy"
N_FEATURES, N_CLASSES = 784, 10


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
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))

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


#: The dropout rate of the benchmark's dropout rows (after every hidden layer).
DROPOUT = 0.1


def make_net(config: Config, kind: str = "mlp"):
    """The configuration's network (sigmoid or ReLU hidden layers, softmax output): ``"mlp"`` is ``fnn.mlp``;
    ``"serial"`` the same network written as ``fnn.serial`` of ``Dense`` layers (the same params layout);
    ``"dropout"`` that serial with ``Dropout(DROPOUT)`` after every hidden layer (the same params too)."""
    import fnn
    from fnn import layers as L

    if kind == "mlp":
        return fnn.mlp(list(config.sizes), hidden=config.hidden, output="softmax")
    layers = []
    for width in config.sizes[1:-1]:
        layers.append(L.Dense(width, activation=config.hidden))
        if kind == "dropout":
            layers.append(L.Dropout(DROPOUT))
    layers.append(L.Dense(config.sizes[-1], activation="softmax"))
    return fnn.serial(*layers, input_shape=(config.sizes[0],))


def initial_params(config: Config, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """fnn's own init (``glorot_uniform``, zero biases) as NumPy ``(w, b)`` pairs, shared by every row."""
    import jax

    return [(np.array(p["w"]), np.array(p["b"])) for p in make_net(config).init(jax.random.key(seed))]


def round_key(seed: int, e: int):
    """The key of round ``e`` (0-based): ``fold_in(key(seed), e)``, the ``key`` of that round's ``fnn.fit`` call."""
    import jax

    return jax.random.fold_in(jax.random.key(seed), e)


def epoch_orders(config: Config, epochs: int, seed: int) -> np.ndarray:
    """``(epochs, samples)`` int32: the examples visited in round ``e``, in order, by ``fit(..., key=round_key)``.

    fit's public contract: epoch 0 of a call with key ``k`` visits ``epoch_order(fold_in(k, 0), n)`` with the
    last partial batch dropped.
    """
    import jax

    from fnn.train import epoch_order

    return np.stack([
        np.asarray(epoch_order(jax.random.fold_in(round_key(seed, e), 0), config.n))[: config.samples]
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
