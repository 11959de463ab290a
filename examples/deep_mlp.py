"""A 12-layer sigmoid MLP on Fashion-MNIST, three ways on the same budget: plain, with LayerNorm and with BatchNorm
after every hidden activation.

The plain net is the textbook deep sigmoid network: 11 hidden layers of 100 sigmoid units (Glorot-uniform
weights, zero biases) and a softmax output, trained with plain SGD. Backpropagated through 11 sigmoids, whose
derivative is at most 1/4, the error terms of the first layers are orders of magnitude smaller than those of the
last ones, and the net stalls near chance. The normalised nets have the same Dense layers with a ``LayerNorm()``
or ``BatchNorm()`` after each hidden sigmoid, the same optimiser, learning rate, batches and epochs. (After the
sigmoid, not before it: a sigmoid's outputs all sit near 0.5, so the next layer's pre-activations carry a large
offset per feature that is the same for every example. BatchNorm removes it (a mean over the batch), LayerNorm
cannot (a mean over the features of one example): with LayerNorm between each Dense layer and its sigmoid the
net stalls at 0.100 exactly as the plain one does, measured with this script's settings on 15,000 images;
normalising the sigmoid's outputs centres every layer's input instead.) Every gradient is the hand-written
backward pass (the compact LayerNorm/BatchNorm forms, ``fnn/normalization.py``); BatchNorm's running statistics
are the explicit state ``fit`` carries and evaluates with.

Prints each net's test accuracy per epoch and the final table; ``--figure PATH`` draws the three training-loss
and test-accuracy curves (matplotlib, the ``plot`` extra).

Run:  python examples/deep_mlp.py [--epochs 5] [--limit N] [--figure docs/figures/deep_mlp.png] [--data-dir DIR]
"""

import argparse
import time

import jax

import fnn
from fnn import layers as L

VARIANTS = ("plain", "layernorm", "batchnorm")


def make_net(variant: str, depth: int = 12, width: int = 100, activation: str = "sigmoid") -> fnn.Network:
    """``depth`` Dense layers: ``depth - 1`` hidden ones of ``width`` ``activation`` units, then a softmax."""
    norm = {"plain": None, "layernorm": L.LayerNorm, "batchnorm": L.BatchNorm}[variant]
    hidden = []
    for _ in range(depth - 1):
        hidden += [L.Dense(width, activation=activation)] + ([norm()] if norm is not None else [])
    return fnn.serial(*hidden, L.Dense(10, activation="softmax"), input_shape=(784,))


def main(data_dir: str | None = None, epochs: int = 5, limit: int | None = None, seed: int = 0,
         batch_size: int = 64, learning_rate: float = 0.1, depth: int = 12, figure: str | None = None,
         test_limit: int | None = None) -> dict:
    (x_train, y_train), (x_test, y_test) = fnn.fashion_mnist(data_dir)
    x_train, y_train = x_train[:limit], y_train[:limit]
    x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    x_train, x_test = fnn.standardize(x_train, x_test)
    print(f"data: {x_train.shape[0]} training and {x_test.shape[0]} test images; {depth} layers, sigmoid, "
          f"plain SGD lr {learning_rate}, batch {batch_size}, {epochs} epochs")
    key_init, key_shuffle = jax.random.split(jax.random.key(seed))
    histories, accuracy = {}, {}
    for variant in VARIANTS:
        net = make_net(variant, depth)
        start = time.perf_counter()
        state = net.init_state() if net.stateful else None
        *_, history = fnn.fit(net, net.init(key_init), (x_train, y_train), (x_test, y_test),
                              loss="sparse_categorical_cross_entropy", epochs=epochs, batch_size=batch_size,
                              learning_rate=learning_rate, key=key_shuffle, progress=False, state=state)
        histories[variant], accuracy[variant] = history, history["test_accuracy"][-1]
        curve = " ".join(f"{a:.3f}" for a in history["test_accuracy"])
        print(f"{variant:10s} test accuracy by epoch: {curve}  ({time.perf_counter() - start:.1f} s)", flush=True)
    print("final test accuracy: " + ", ".join(f"{v} {accuracy[v]:.4f}" for v in VARIANTS))
    if figure:
        draw(histories, figure, depth)
        print(f"figure: {figure}")
    return accuracy


def draw(histories: dict, path: str, depth: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for variant, history in histories.items():
        loss_ax.plot(history["epoch"], history["train_loss"], marker="o", label=variant)
        acc_ax.plot(history["epoch"], history["test_accuracy"], marker="o", label=variant)
    loss_ax.set(xlabel="epoch", ylabel="training loss", title=f"{depth}-layer sigmoid MLP, Fashion-MNIST")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), title="same SGD budget")
    acc_ax.axhline(0.1, color="grey", lw=0.8, ls=":")
    acc_ax.legend()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="folder of the IDX files (default: /usr/share/datasets/fashion-mnist)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--limit", type=int, help="use only the first N training images")
    ap.add_argument("--test-limit", type=int, help="evaluate on the first N test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--depth", type=int, default=12, help="Dense layers, the output layer included")
    ap.add_argument("--figure", help="write the training curves to this PNG")
    a = ap.parse_args()
    main(a.data_dir, a.epochs, a.limit, a.seed, a.batch_size, a.lr, a.depth, a.figure, a.test_limit)
