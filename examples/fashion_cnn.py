"""A small CNN on Fashion-MNIST with the hand-written convolution backprop: two 3x3 convolution + 2x2 max-pool
stages (32 and 64 filters, ReLU), a 128-unit ReLU layer with dropout and a softmax output, trained with Adam
and a cosine learning-rate decay; see README.md ("Convolutional networks") for the accuracy and time it reaches.

Fashion-MNIST (Zalando, MIT licence) has 60,000 training and 10,000 test 28x28 grey images of 10 kinds of
clothing; Debian's ``dataset-fashion-mnist`` installs it under /usr/share/datasets/fashion-mnist/. The images
are loaded as NHWC ``(n, 28, 28, 1)`` (``flatten=False``) and standardised with one mean and one standard
deviation of the training pixels (a per-pixel standardisation, as the MLP example uses, would give every
position its own scale, which a convolution's shared kernel does not expect).

Every gradient comes from the layers' hand-written backward passes (``fnn.conv``, ``fnn.pooling``): the kernel
gradient as im2col(x)ᵀ δ, the input gradient as a convolution of the dilated δ with the flipped kernel, each
max-pool delta routed to its window's maximum.

Run:  python examples/fashion_cnn.py [--epochs 6] [--limit N] [--test-limit N] [--data-dir DIR] [--grads autodiff]
"""

import argparse
import time

import jax
import numpy as np
import optax

import fnn
from fnn import layers as L


def make_net(filters=(32, 64), hidden: int = 128, dropout: float = 0.3) -> fnn.Network:
    stages = [layer for f in filters
              for layer in (L.Conv2D(f, 3, activation="relu", init="he_uniform"), L.MaxPool2D(2))]
    return fnn.serial(*stages, L.Flatten(), L.Dense(hidden, activation="relu", init="he_uniform"),
                      L.Dropout(dropout), L.Dense(10, activation="softmax"), input_shape=(28, 28, 1))


def main(data_dir: str | None = None, epochs: int = 6, limit: int | None = None, seed: int = 0,
         batch_size: int = 128, learning_rate: float = 2e-3, grads: str = "manual",
         test_limit: int | None = None) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.fashion_mnist(data_dir, flatten=False)  # (n, 28, 28, 1) in [0, 1]
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    if test_limit is not None:
        x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    mean, std = float(x_train.mean()), float(x_train.std())
    x_train, x_test = (x_train - mean) / np.float32(std), (x_test - mean) / np.float32(std)
    print(f"data: {x_train.shape[0]} training and {x_test.shape[0]} test images of shape {x_train.shape[1:]}")

    net = make_net()
    key_init, key_fit = jax.random.split(jax.random.key(seed))
    steps = epochs * (x_train.shape[0] // batch_size)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, decay_steps=steps))

    def report(epoch, history):
        print(f"epoch {epoch:2d}  train loss {history['train_loss'][-1]:.4f}  "
              f"test accuracy {history['test_accuracy'][-1]:.4f}  ({history['epoch_time'][-1]:.1f} s)", flush=True)

    start = time.perf_counter()
    _, history = fnn.fit(
        net, net.init(key_init), (x_train, y_train), (x_test, y_test), loss="sparse_categorical_cross_entropy",
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, learning_rate=None, grads=grads, key=key_fit,
        progress=False, callback=report,
    )
    accuracy = history["test_accuracy"][-1]
    print(f"time: {time.perf_counter() - start:.1f} s for {epochs} epochs (including compilation and evaluation)")
    print(f"final test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="IDX folder (default /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs (default 6)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam's initial learning rate (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grads", choices=("manual", "autodiff"), default="manual")
    args = parser.parse_args()
    main(args.data_dir, args.epochs, args.limit, args.seed, args.batch_size, args.lr, args.grads, args.test_limit)
