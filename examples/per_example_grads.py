"""Per-example gradient norms on the 8x8 digits: which training examples pull hardest on the weights?

``fnn.per_example_grads`` gets every example's own gradient from ONE batched hand-written backward pass: the
loss is a mean over the batch, so example n's error terms are N · delta_l[n], and its weight gradient is the
outer product a_{l-1}[n] ⊗ N · delta_l[n]. The reference is ``jax.vmap`` over examples of ``jax.grad`` with
each example as a batch of one. After a few epochs of training, the examples with the biggest gradient norm
are the ones the network still gets wrong (or barely right); the smallest are the easy, confident ones.

Run:  python examples/per_example_grads.py [--epochs 10] [--limit N] [--top 5]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import fnn

LOSS = "sparse_categorical_cross_entropy"


def main(epochs: int = 10, limit: int | None = None, top: int = 5, seed: int = 0) -> float:
    (x_train, y_train), (x_test, y_test) = fnn.load_dataset("digits")
    x_train, x_test = fnn.standardize(x_train, x_test)
    net = fnn.mlp([64, 32, 10], hidden="tanh", output="softmax")
    key_init, key_fit = jax.random.split(jax.random.key(seed))
    params, _ = fnn.fit(net, net.init(key_init), (x_train, y_train), loss=LOSS, epochs=epochs, batch_size=32,
                        learning_rate=0.1, key=key_fit, progress=False)

    x, y = (x_train, y_train) if limit is None else (x_train[:limit], y_train[:limit])
    # One batched backward pass: every leaf gets a leading example axis, e.g. w0: (n, 64, 32).
    per_example = jax.jit(lambda p, x, y: fnn.per_example_grads(net, p, x, y, loss=LOSS))(params, x, y)

    # The reference: jax.grad of each example's own loss, vmapped over the examples.
    def one_example(xi, yi):
        return fnn.autodiff(net, params, xi[None], yi[None], loss=LOSS)[1]

    reference = jax.jit(jax.vmap(one_example))(jnp.asarray(x), jnp.asarray(y))
    diffs = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), per_example, reference)
    max_diff = max(jax.tree_util.tree_leaves(diffs))
    print(f"{x.shape[0]} examples, {len(jax.tree_util.tree_leaves(per_example))} gradient leaves; "
          f"max |per_example_grads - vmap(grad)| = {max_diff:.2e}")

    # Their mean is the ordinary mini-batch gradient.
    _, batch_grads = fnn.backprop(net, params, x, y, loss=LOSS)
    mean_diff = max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda g, b: float(jnp.max(jnp.abs(g.mean(axis=0) - b))), per_example, batch_grads)))
    print(f"max |mean of per-example grads - batch gradient| = {mean_diff:.2e}")

    # Norm of each example's whole gradient (all layers, weights and biases).
    squares = [jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1) for leaf in jax.tree_util.tree_leaves(per_example)]
    norms = np.sqrt(np.asarray(sum(squares)))
    probs = np.asarray(net.apply(params, x))
    predicted = probs.argmax(axis=1)
    order = np.argsort(norms)
    print(f"gradient norm: median {np.median(norms):.3g}, min {norms.min():.3g}, max {norms.max():.3g}")
    for title, idx in (("biggest", order[::-1][:top]), ("smallest", order[:top])):
        print(f"{top} {title} gradient norms:")
        for i in idx:
            print(f"  example {i:4d}: norm {norms[i]:.3g}  label {y[i]}  predicted {predicted[i]}  "
                  f"p(label) {probs[i, y[i]]:.3f}")
    wrong = predicted != np.asarray(y)
    print(f"{wrong.sum()} misclassified training examples; {np.sum(wrong[order[::-1][:top]])} of them among the "
          f"{top} biggest norms")
    return max_diff


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs before measuring (default 10)")
    parser.add_argument("--limit", type=int, default=None, help="measure only the first N training examples")
    parser.add_argument("--top", type=int, default=5, help="how many biggest/smallest to list (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.limit, args.top, args.seed)
