"""Michael Nielsen's network (Neural Networks and Deep Learning, chapter 1, "Using neural nets to recognize
handwritten digits", and its network.py) with fnn: 784-30-10, sigmoid neurons, quadratic cost on one-hot
targets, stochastic gradient descent on shuffled mini-batches of 10, η = 3.0.

Nielsen's update is w -> w - (η/m) Σ_x ∇C_x with C_x = ½ ‖a(x) - y(x)‖² over a mini-batch of m examples.
fnn's ``quadratic`` loss is exactly that mean, (1/m) Σ_x ½ ‖a - y‖², so the learning rate is η itself. Weights
start N(0, 1) as in the book (``init="normal"``); fnn starts biases at 0 where the book draws them N(0, 1) too.

Data: MNIST, from a folder of its four IDX files given with ``--data-dir`` (train-images-idx3-ubyte,
train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, raw or .gz, as the MNIST database
distributes them). Nielsen reports about 95% on MNIST after 30 epochs. Without ``--data-dir`` the script falls
back to Fashion-MNIST (the same file format, from Debian's dataset-fashion-mnist package) and says so in its
first line. Fashion-MNIST is harder: with seed 0 this network sits near 0.77 for 24 epochs (N(0, 1) weights
saturate sigmoid units, whose σ' ≈ 0 then learn slowly), jumps when one recovers at epoch 25 and ends at 0.8566
after 30 epochs (about 30 s of CPU time on 2 cores).

Run:  python examples/nielsen_mnist.py [--data-dir MNIST_DIR] [--epochs 30] [--limit N]
"""

import argparse
import time

import jax

import fnn


def load(data_dir: str | None):
    """``(name, splits)``, after printing which data set runs and why (the first line of output)."""
    if data_dir is not None:
        print(f"data set: MNIST, the IDX files in {data_dir} (given by --data-dir)", flush=True)
        return "MNIST", fnn.mnist(data_dir)
    print(f"data set: Fashion-MNIST from {fnn.data.FASHION_MNIST_DIR}, NOT MNIST: no --data-dir was given "
          f"(pass --data-dir with MNIST's four IDX files to train on MNIST as the book does)", flush=True)
    return "Fashion-MNIST", fnn.fashion_mnist()


def main(data_dir: str | None = None, epochs: int = 30, limit: int | None = None, seed: int = 0) -> float:
    name, ((x_train, y_train), (x_test, y_test)) = load(data_dir)  # (n, 784) pixels in [0, 1], labels 0..9
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    y_train, y_test = fnn.one_hot(y_train, 10), fnn.one_hot(y_test, 10)  # quadratic cost needs vectors y
    print(f"{name}: {x_train.shape[0]} training and {x_test.shape[0]} test images")

    net = fnn.mlp([784, 30, 10], hidden="sigmoid", output="sigmoid", init="normal")
    key_init, key_shuffle = jax.random.split(jax.random.key(seed))

    def report(epoch, history):  # called by fit after every epoch
        correct = round(history["test_accuracy"][-1] * x_test.shape[0])
        print(f"Epoch {epoch}: {correct} / {x_test.shape[0]}  (test accuracy {history['test_accuracy'][-1]:.4f}, "
              f"train cost {history['train_loss'][-1]:.4f}, {history['epoch_time'][-1]:.1f} s)", flush=True)

    start = time.perf_counter()
    _, history = fnn.fit(
        net, net.init(key_init), (x_train, y_train), (x_test, y_test), loss="quadratic",
        epochs=epochs, batch_size=10, learning_rate=3.0, key=key_shuffle, progress=False, callback=report,
    )
    accuracy = history["test_accuracy"][-1]
    print(f"final test accuracy on {name}: {accuracy:.4f} after {epochs} epochs in "
          f"{time.perf_counter() - start:.1f} s")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None,
                        help="folder of MNIST's four IDX files (default: fall back to Debian's Fashion-MNIST, "
                             "and say so)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs (default 30, as in the book)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        main(args.data_dir, args.epochs, args.limit, args.seed)
    except FileNotFoundError as e:  # no data set there: say how to get one, without a traceback
        raise SystemExit(f"error: {e}") from None
