"""A Fashion-MNIST classifier: 784-256-128-10 ReLU MLP with a softmax output, trained with Adam and a cosine
learning-rate decay: about 0.90 test accuracy in 15 epochs (measured 0.8969 with seed 0, using about 45 s of
CPU time on 2 cores).

Fashion-MNIST (Zalando, MIT licence) has 60,000 training and 10,000 test 28x28 grey images of 10 kinds of
clothing; Debian's ``dataset-fashion-mnist`` installs it in the MNIST IDX format under
/usr/share/datasets/fashion-mnist/. Inputs are the pixels in [0, 1]; gradients come from the hand-written
backprop (softmax + sparse categorical cross-entropy use the closed form delta = (a - y) / N).

Run:  python examples/fashion_mnist.py [--epochs 15] [--limit N] [--data-dir DIR]
"""

import argparse
import time

import jax
import optax

import fnn


def main(data_dir: str | None = None, epochs: int = 15, limit: int | None = None, seed: int = 0,
         batch_size: int = 128, learning_rate: float = 1e-3) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.fashion_mnist(data_dir)  # pixels in [0, 1], labels 0..9
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    print(f"data: {x_train.shape[0]} training and {x_test.shape[0]} test images")

    net = fnn.mlp([784, 256, 128, 10], hidden="relu", output="softmax", init="he_uniform")
    key_init, key_shuffle = jax.random.split(jax.random.key(seed))
    # Adam whose step size decays from learning_rate to 0 along a half cosine over the whole run.
    steps = epochs * (x_train.shape[0] // batch_size)
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, decay_steps=steps))

    def report(epoch, history):
        print(f"epoch {epoch:2d}  train loss {history['train_loss'][-1]:.4f}  "
              f"test accuracy {history['test_accuracy'][-1]:.4f}  ({history['epoch_time'][-1]:.1f} s)", flush=True)

    start = time.perf_counter()
    _, history = fnn.fit(
        net, net.init(key_init), (x_train, y_train), (x_test, y_test), loss="sparse_categorical_cross_entropy",
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, learning_rate=None, key=key_shuffle,
        progress=False, callback=report,
    )
    accuracy = history["test_accuracy"][-1]
    print(f"time: {time.perf_counter() - start:.1f} s for {epochs} epochs (including compilation and evaluation)")
    print(f"final test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="IDX folder (default /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs (default 15)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's initial learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.data_dir, args.epochs, args.limit, args.seed, args.batch_size, args.lr)
