"""A regularised Fashion-MNIST classifier: a 784-256-128-10 ReLU MLP with dropout after each hidden layer and
a softmax output, trained with Adam and a cosine learning-rate decay on standardised pixels: 0.9001, 0.9000 and
0.9010 test accuracy with seeds 0, 1 and 2, in 47-50 s for 40 epochs on 2 CPU cores (compilation and
evaluation included). Without dropout (and on raw pixels, 15 epochs) this MLP reached 0.8969.

Fashion-MNIST (Zalando, MIT licence) has 60,000 training and 10,000 test 28x28 grey images of 10 kinds of
clothing; Debian's ``dataset-fashion-mnist`` installs it in the MNIST IDX format under
/usr/share/datasets/fashion-mnist/. Inputs are the pixels standardised with the training set's per-pixel mean
and standard deviation (``--raw-pixels`` keeps them in [0, 1]); gradients come from the hand-written
backprop (softmax + sparse categorical cross-entropy use the closed form delta = (a - y) / N).

Dropout is ``fnn.layers.Dropout`` (inverted: kept units scaled by 1/(1 - rate), active only while training;
evaluation runs without it); ``--l2 LAM`` adds ``fnn.penalties.l2(LAM)``, (LAM/2)·Σw² over the weights.

Run:  python examples/fashion_mnist.py [--epochs 40] [--dropout 0.3] [--l2 0] [--limit N] [--data-dir DIR]
"""

import argparse
import time

import jax
import optax

import fnn
from fnn import layers as L


def main(data_dir: str | None = None, epochs: int = 40, limit: int | None = None, seed: int = 0,
         batch_size: int = 128, learning_rate: float = 1e-3, dropout: float = 0.3, l2: float = 0.0,
         hidden: tuple[int, ...] = (256, 128), input_dropout: float = 0.0, standardize: bool = True) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.fashion_mnist(data_dir)  # pixels in [0, 1], labels 0..9
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    if standardize:  # every pixel to mean 0, std 1 with the training set's statistics
        x_train, x_test = fnn.standardize(x_train, x_test)
    print(f"data: {x_train.shape[0]} training and {x_test.shape[0]} test images")

    layers = [L.Dropout(input_dropout)] if input_dropout > 0 else []
    for width in hidden:
        layers += [L.Dense(width, activation="relu", init="he_uniform"), L.Dropout(dropout)]
    net = fnn.serial(*layers, L.Dense(10, activation="softmax", init="he_uniform"), input_shape=(784,))
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
        progress=False, callback=report, penalty=fnn.penalties.l2(l2) if l2 > 0 else None,
    )
    accuracy = history["test_accuracy"][-1]
    print(f"time: {time.perf_counter() - start:.1f} s for {epochs} epochs (including compilation and evaluation)")
    print(f"final test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="IDX folder (default /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs (default 40)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's initial learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=0.3, help="dropout rate after each hidden layer (default 0.3)")
    parser.add_argument("--l2", type=float, default=0.0, help="L2 penalty (λ/2)·Σw² on the weights (default 0)")
    parser.add_argument("--hidden", default="256,128", help="hidden widths (default 256,128)")
    parser.add_argument("--input-dropout", type=float, default=0.0, help="dropout rate on the pixels (default 0)")
    parser.add_argument("--raw-pixels", dest="standardize", action="store_false",
                        help="keep pixels in [0, 1] (default: standardise every pixel with the training statistics)")
    args = parser.parse_args()
    main(args.data_dir, args.epochs, args.limit, args.seed, args.batch_size, args.lr, args.dropout, args.l2,
         tuple(int(w) for w in args.hidden.split(",")), args.input_dropout, args.standardize)
