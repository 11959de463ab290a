"""The classic tutorial network: 4-10-3-1, sigmoid everywhere, no biases, trained on iris by full-batch
gradient descent with the hand-written backprop — the exercise usually written in a page of NumPy, redone with
fnn. The backward pass is the delta recursion of Michael Nielsen, Neural Networks and Deep Learning, chapter 2
("How the backpropagation algorithm works", equations BP1-BP4).

The algorithm, written out: forward pass, backprop (fnn.backprop: the textbook delta recursion), and the plain
update W := W - α dW for every weight matrix at once, repeated over the whole training set.

Targets and cost. The network regresses the species id with one sigmoid output. A sigmoid cannot reach 2, so
the target here is species / 2 in {0, 0.5, 1}; the prediction is turned back into a class by rounding
2·output. The NumPy version's cost, ``np.sum((a3 - Y) ** 2) / np.shape(Y)[1]``, divides by the number of
*columns* (1), so it is a sum over examples, and its backprop (``error * σ'(z)``) drops the 2: the step it takes
is the gradient of ½ Σ_n (a_n - y_n)². fnn's ``quadratic`` loss is (1/N) Σ_n ½ (a_n - y_n)², the same cost
divided by N, so the summed cost's α = 0.1 becomes α = 0.1 · N here, and every step is the same step exactly
(``mse`` would also drop the ½ and need α = 0.05 · N). As in the NumPy version, the raw measurements in cm are
fed in, unscaled.

Run:  python examples/seed_iris.py [--epochs 2000] [--seed 0]
"""

import argparse

import jax
import numpy as np

import fnn


def accuracy(net, params, x, species):
    """Round 2·output to the nearest class in {0, 1, 2} and compare with the species."""
    predicted = np.clip(np.rint(2 * np.asarray(net.apply(params, x))[:, 0]), 0, 2)
    return float(np.mean(predicted == species))


def main(epochs: int = 2000, seed: int = 0, alpha_summed: float = 0.1, report_every: int = 200) -> float:
    (x_train, s_train), (x_test, s_test) = fnn.load_dataset("iris")  # 120 / 30 flowers, 4 measurements in cm
    y_train = (s_train / 2).astype(np.float32)[:, None]  # species 0, 1, 2 -> target 0, 0.5, 1
    n = x_train.shape[0]

    net = fnn.mlp([4, 10, 3, 1], activations=["sigmoid"] * 3, bias=False, init="uniform")  # W ~ U(-1, 1)
    params = net.init(jax.random.key(seed))
    alpha = alpha_summed * n  # fnn's quadratic is the summed cost divided by N (see above)
    print(f"network {list(net.sizes)}, sigmoid, no bias; quadratic cost, α = {alpha_summed} · {n} = {alpha:g}")

    @jax.jit
    def step(params):
        # forward pass and hand-written backward pass: loss and dL/dW for every layer
        loss, grads = fnn.backprop(net, params, x_train, y_train, loss="quadratic")
        # update every weight matrix at once: W := W - α dW
        params = [{"w": layer["w"] - alpha * g["w"]} for layer, g in zip(params, grads, strict=True)]
        return params, loss

    for epoch in range(1, epochs + 1):
        params, loss = step(params)
        if epoch % report_every == 0 or epoch in (1, epochs):
            print(f"epoch {epoch:5d}  loss {float(loss):.5f}  "
                  f"train accuracy {accuracy(net, params, x_train, s_train):.4f}  "
                  f"test accuracy {accuracy(net, params, x_test, s_test):.4f}")
    final = accuracy(net, params, x_test, s_test)
    print(f"final test accuracy: {final:.4f}")
    return final


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2000, help="full-batch gradient steps (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.1,
                        help="learning rate of the summed cost ½ Σ (a - y)², as the NumPy code uses it (default 0.1)")
    args = parser.parse_args()
    main(args.epochs, args.seed, args.alpha)
