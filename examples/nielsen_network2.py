"""Nielsen's chapter-3 setup (network2.py) on Fashion-MNIST, with and without its L2 penalty.

The setup of "Neural Networks and Deep Learning", chapter 3: a [784, 100, 10] network with sigmoid units, the
cross-entropy cost on sigmoid outputs (``binary_cross_entropy``: summed over the 10 outputs, a mean over the
mini-batch, fused with the sigmoid so that ``delta_L = (a - y) / N``), weights drawn from N(0, 1/n_in)
(``lecun_normal``), plain SGD with η = 0.5 on mini-batches of 10, and L2 regularisation with λ = 5.0 over the
training-set size n: the cost gains ``(λ / 2n) Σ w²`` over the weights (not the biases), which is
``fnn.penalties.l2(λ / n)``, and the update becomes Nielsen's ``w → (1 − ηλ/n) w − η ∂C₀/∂w``.

One difference from the book: biases start at zero (Nielsen draws them from N(0, 1)); and the data is
Fashion-MNIST (Debian's ``dataset-fashion-mnist``), not MNIST.

Run:  python examples/nielsen_network2.py [--epochs 30] [--limit N] [--data-dir DIR]
"""

import argparse
import time

import jax

import fnn

LAMBDA, ETA, BATCH = 5.0, 0.5, 10


def train(x, y, x_test, y_test, *, epochs: int, lam: float, seed: int = 0) -> float:
    """Train Nielsen's network with penalty ``λ = lam`` (0: none); return the final test accuracy."""
    net = fnn.mlp([784, 100, 10], hidden="sigmoid", output="sigmoid", init="lecun_normal")
    n = x.shape[0]
    penalty = fnn.penalties.l2(lam / n) if lam > 0 else None  # (λ/2n) Σ w², weights only
    key_init, key_shuffle = jax.random.split(jax.random.key(seed))
    start = time.perf_counter()
    _, history = fnn.fit(net, net.init(key_init), (x, fnn.one_hot(y, 10)), (x_test, fnn.one_hot(y_test, 10)),
                         loss="binary_cross_entropy", epochs=epochs, batch_size=BATCH, learning_rate=ETA,
                         key=key_shuffle, penalty=penalty, progress=False)
    accuracy = history["test_accuracy"][-1]
    label = f"L2 λ = {lam}" if lam > 0 else "no penalty"
    print(f"{label:>12}: test accuracy {accuracy:.4f} after {epochs} epochs "
          f"({time.perf_counter() - start:.1f} s; train loss {history['train_loss'][-1]:.4f})", flush=True)
    return accuracy


def main(data_dir: str | None = None, epochs: int = 30, limit: int | None = None, seed: int = 0) -> dict:
    (x, y), (x_test, y_test) = fnn.fashion_mnist(data_dir)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    print(f"data: {x.shape[0]} training and {x_test.shape[0]} test images; η = {ETA}, batch {BATCH}")
    return {lam: train(x, y, x_test, y_test, epochs=epochs, lam=lam, seed=seed) for lam in (0.0, LAMBDA)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="IDX folder (default /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs (default 30, as in the book)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.data_dir, args.epochs, args.limit, args.seed)
