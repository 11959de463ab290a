"""An ensemble of MLPs on the 8x8 digits, trained at once: one vmapped, compiled program for all members.

``fnn.fit_ensemble`` trains K networks side by side: member k starts from its own initial params, shuffles
with its own key and uses its own learning rate, and the result equals training each one alone with
``fnn.fit``. The ensemble predicts by averaging the members' softmax outputs, which is usually more accurate
than its typical member (not always than its best one).

Choosing a member is model selection, so it uses a validation split carved out of the training set
(``fnn.train_test_split``), never the test set: the members are compared on validation accuracy, and only
the chosen member (and the ensemble) is then scored once on the test set.

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
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    key_split, key_members = jax.random.split(jax.random.key(seed))
    (x_fit, y_fit), (x_val, y_val) = fnn.train_test_split(x_train, y_train, test_fraction=0.2, key=key_split)
    x_fit, x_val, x_test = fnn.standardize(x_fit, x_val, x_test)  # statistics of the fitting part only
    print(f"{x_fit.shape[0]} training, {x_val.shape[0]} validation and {x_test.shape[0]} test images")

    net = fnn.mlp([64, 64, 10], hidden="relu", output="softmax")
    init_keys, shuffle_keys = jnp.split(jax.random.split(key_members, 2 * members), 2)
    params = jax.jit(jax.vmap(net.init))(init_keys)  # every leaf gets a leading member axis: w0 (K, 64, 64)
    learning_rates = np.geomspace(0.02, 0.2, members)  # one per member (plain SGD)

    # The validation split is fit_ensemble's evaluation set: history["test_accuracy"] holds validation accuracy.
    params, history = fnn.fit_ensemble(
        net, params, (x_fit, y_fit), (x_val, y_val), loss=LOSS, epochs=epochs, batch_size=32,
        learning_rate=learning_rates, keys=shuffle_keys,
    )
    val_accuracy = history["test_accuracy"][-1]
    for k, (lr, acc) in enumerate(zip(learning_rates, val_accuracy, strict=True)):
        print(f"member {k}: learning rate {lr:.3f}  validation accuracy {acc:.4f}")

    best = int(np.argmax(val_accuracy))  # chosen on validation data only
    chosen = jax.tree_util.tree_map(lambda leaf: leaf[best], params)
    chosen_test = fnn.evaluate(net, chosen, x_test, y_test, LOSS)["accuracy"]
    print(f"chosen member (best validation accuracy): {best}, test accuracy {chosen_test:.4f}")

    # The ensemble: average the members' class probabilities, then take the most probable class.
    probs = jax.jit(jax.vmap(net.apply, in_axes=(0, None)))(params, x_test)  # (K, n_test, 10)
    ensemble = float(np.mean(np.asarray(probs.mean(axis=0).argmax(axis=1)) == y_test))
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
