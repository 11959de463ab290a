"""An ensemble of MLPs on the 8x8 digits, trained at once: one vmapped, compiled program for all members.

``fnn.fit_ensemble`` trains K networks side by side: member k starts from its own initial params, shuffles
with its own key and uses its own learning rate, and the result equals training each one alone with
``fnn.fit``. The ensemble predicts by averaging the members' softmax outputs, which is usually more accurate
than its typical member (not always than its best one).

Run:  python examples/ensemble.py [--epochs 20] [--members 4] [--limit N]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import fnn

LOSS = "sparse_categorical_cross_entropy"


def main(epochs: int = 20, members: int = 4, limit: int | None = None, seed: int = 0) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.load_dataset("digits")
    x_train, x_test = fnn.standardize(x_train, x_test)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]

    net = fnn.mlp([64, 64, 10], hidden="relu", output="softmax")
    init_keys, shuffle_keys = jnp.split(jax.random.split(jax.random.key(seed), 2 * members), 2)
    params = jax.jit(jax.vmap(net.init))(init_keys)  # every leaf gets a leading member axis: w0 (K, 64, 64)
    learning_rates = np.geomspace(0.02, 0.2, members)  # one per member (plain SGD)

    params, history = fnn.fit_ensemble(
        net, params, (x_train, y_train), (x_test, y_test), loss=LOSS, epochs=epochs, batch_size=32,
        learning_rate=learning_rates, keys=shuffle_keys,
    )
    for k, (lr, acc) in enumerate(zip(learning_rates, history["test_accuracy"][-1])):
        print(f"member {k}: learning rate {lr:.3f}  test accuracy {acc:.4f}")

    # The ensemble: average the members' class probabilities, then take the most probable class.
    probs = jax.jit(jax.vmap(net.apply, in_axes=(0, None)))(params, x_test)  # (K, n_test, 10)
    ensemble = float(np.mean(np.asarray(probs.mean(axis=0).argmax(axis=1)) == y_test))
    print(f"best member test accuracy: {max(history['test_accuracy'][-1]):.4f}")
    print(f"ensemble test accuracy: {ensemble:.4f}")
    return ensemble


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    parser.add_argument("--members", type=int, default=4, help="ensemble size (default 4)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training examples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.members, args.limit, args.seed)
