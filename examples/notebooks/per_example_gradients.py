# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Per-example gradients while training on the digits
#
# `fnn.per_example_grads` gives every example's own gradient from one batched backward pass (the outer product
# $N\, a_{l-1}[n] \otimes \delta_l[n]$ per layer). From a batch of them `fnn.stats` computes, per layer, the
# per-example gradient norms $\lVert g_n\rVert$, the mean gradient $\bar g$, the trace of the gradient covariance
# $\operatorname{tr}\Sigma$ and the signal-to-noise ratio $\mathrm{SNR} = \lVert\bar g\rVert^2/\operatorname{tr}\Sigma$.
#
# We train a `[64, 32, 32, 10]` ReLU network on the 8×8 digits shipped with fnn, and after every epoch measure these
# on a fixed probe batch of 512 training examples, together with the spread of each layer's error terms (deltas).
# Then: how the SNR of a mini-batch gradient grows with the batch size.

# %%
import time

T0, CPU0 = time.perf_counter(), time.process_time()  # the notebook's run time, imports included

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import stats
from fnn.plot import show

np.set_printoptions(precision=5, suppress=True, linewidth=110)



# %%
x, y = fnn.digits()
(x_train, y_train), (x_test, y_test) = fnn.train_test_split(x, y, test_fraction=0.2, key=jax.random.key(0))
LOSS = "sparse_categorical_cross_entropy"
net = fnn.mlp([64, 32, 32, 10], hidden="relu", output="softmax")
params = net.init(jax.random.key(1))
LAYERS = ["layer 0 (64→32)", "layer 1 (32→32)", "layer 2 (32→10)"]
xt, yt = jnp.asarray(x_train), jnp.asarray(y_train)
x_probe, y_probe = xt[:512], yt[:512]
n_params = sum(p.size for layer in params for p in layer.values())
print(f"train {x_train.shape}, test {x_test.shape}; {n_params} parameters")


@jax.jit
def probe(params):
    """Per-example gradients, the batch gradient and the deltas of the probe batch."""
    per_example = fnn.per_example_grads(net, params, x_probe, y_probe, LOSS)
    _, grads, trace = fnn.backprop(net, params, x_probe, y_probe, LOSS, return_trace=True)
    return per_example, grads, trace.delta


per_example, grads, deltas = probe(params)
s0 = stats.gradient_stats(per_example)
# Every fnn loss is a mean over the batch, so the mean of the per-example gradients is the batch gradient,
# and each example's gradient is what backprop gives for that example alone.
for mean_leaf, batch_leaf in zip(jax.tree_util.tree_leaves(s0["mean"]), jax.tree_util.tree_leaves(grads),
                                 strict=True):
    np.testing.assert_allclose(mean_leaf, np.asarray(batch_leaf), rtol=2e-5, atol=1e-7)
_, g7 = fnn.backprop(net, params, x_probe[7], y_probe[7], LOSS)
for one, row in zip(jax.tree_util.tree_leaves(g7), jax.tree_util.tree_leaves(per_example), strict=True):
    np.testing.assert_allclose(np.asarray(row[7]), np.asarray(one), rtol=2e-5, atol=1e-7)
print("mean of per-example gradients == batch gradient; row 7 == backprop of example 7 alone")
print("at init: SNR per layer", s0["snr"].round(4), " median ‖g_n‖ per layer", np.median(s0["norms"], axis=0).round(3))
show(stats.plot_gradient_stats(s0, labels=LAYERS, title="at initialisation"))

# %% [markdown]
# ## Training, with the statistics recorded after every epoch
#
# Plain mini-batch SGD (`fnn.sgd_step`, learning rate 0.1, batch 32). The deltas are reported per example
# (`delta_spread(..., per_example=True)` multiplies the batch-mean deltas by $N$).

# %%
EPOCHS, BATCH = 20, 32
step = fnn.sgd_step(net, LOSS, learning_rate=0.1)
hist = {"step": [], "norm_q": [], "total_q": [], "snr": [], "snr_total": [], "delta_rms": [], "delta_zero": [],
        "test_accuracy": []}


def record(params, n_steps):
    per_example, _, deltas = probe(params)
    s = stats.gradient_stats(per_example, debias=True)  # debias: ‖ḡ‖² - tr Σ / N estimates ‖μ‖² without bias
    d = stats.delta_spread(deltas)
    hist["step"].append(n_steps)
    hist["norm_q"].append(np.percentile(s["norms"], [10, 50, 90], axis=0))
    hist["total_q"].append(np.percentile(stats.example_norms(per_example, per="total"), [10, 50, 90]))
    hist["snr"].append(s["snr"])
    hist["snr_total"].append(s["snr_total"])
    hist["delta_rms"].append(d["rms"])
    hist["delta_zero"].append(d["zero_fraction"])
    hist["test_accuracy"].append(fnn.evaluate(net, params, x_test, y_test, LOSS)["accuracy"])


record(params, 0)
key, n_steps = jax.random.key(2), 0
for epoch in range(EPOCHS):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), len(xt)))
    for b in range(len(xt) // BATCH):
        idx = order[b * BATCH : (b + 1) * BATCH]
        params, _ = step(params, xt[idx], yt[idx])
        n_steps += 1
    record(params, n_steps)
hist = {k: np.asarray(v) for k, v in hist.items()}

print(f"test accuracy: {hist['test_accuracy'][0]:.3f} at init -> {hist['test_accuracy'][-1]:.3f} after {EPOCHS} epochs")
print(f"{'epoch':>5} {'median ‖g_n‖ per layer':>26} {'SNR per layer':>24} {'delta rms':>22} {'zero deltas':>18}")
for e in [0, 1, 2, 5, 10, EPOCHS]:
    print(f"{e:>5} {str(hist['norm_q'][e][1].round(3)):>26} {str(hist['snr'][e].round(4)):>24} "
          f"{str(hist['delta_rms'][e].round(3)):>22} {str(hist['delta_zero'][e].round(2)):>18}")
assert hist["test_accuracy"][-1] > 0.9
t = hist["total_q"]
print(f"‖g_n‖ over all parameters, 10/50/90th percentile: {t[0].round(3)} at init, {t[-1].round(3)} at the end")
assert np.all(hist["norm_q"][-1][1] < hist["norm_q"][0][1] / 10)  # typical per-example gradients shrink > 10x
assert t[-1][2] > t[0][2] / 5  # ... but the worst-fitted examples keep large gradients
assert np.all(hist["delta_zero"][:, 2] == 0)  # softmax output deltas are never exactly zero
assert np.all(hist["delta_zero"][:, :2] > 0.1)  # a good share of ReLU units is off for each example

# %%
from matplotlib.figure import Figure


def plot_training(axes):
    stats.plot_layer_curves(hist["step"], hist["norm_q"][:, 1], ax=axes[0], labels=LAYERS,
                            ylabel="per-example ‖g_n‖", title="per-example gradient norms (median per layer)")
    t = hist["total_q"]
    axes[0].fill_between(hist["step"], t[:, 0], t[:, 2], color="grey", alpha=0.25, lw=0, label="all params, 10-90%")
    axes[0].plot(hist["step"], t[:, 2], color="grey", lw=0.8)
    axes[0].legend(fontsize=8)
    stats.plot_layer_curves(hist["step"], hist["snr"], ax=axes[1], labels=LAYERS, ylabel="‖ḡ‖² / tr Σ",
                            title="per-example gradient SNR (probe of 512, debiased)")
    for ax in axes:
        ax.set_xlabel("SGD step (batch 32)")


fig = Figure(figsize=(14, 3.8), layout="constrained")
axes = fig.subplots(1, 3)
plot_training(axes[:2])
stats.plot_layer_curves(hist["step"], hist["delta_rms"], ax=axes[2], labels=LAYERS, ylabel="rms of dℓ_n/dz",
                        title="spread of the deltas")
axes[2].set_xlabel("SGD step (batch 32)")
twin = axes[2].twinx()
twin.plot(hist["step"], hist["delta_zero"][:, :2], ":", color="grey")
twin.set_ylabel("fraction of exactly-zero deltas (ReLU layers, dotted)")
twin.set_ylim(0, 1)
show(fig)

# %% [markdown]
# **What the curves say.** Per-example gradient norms first grow (the network leaves its near-uniform initial
# output) and then the median shrinks by more than an order of magnitude as examples get fitted — while the 90th
# percentile stays near its starting value: the few examples the network still gets wrong keep large gradients.
# The per-example SNR stays around $10^{-2}$: a single example's gradient is mostly noise, and $1/\mathrm{SNR}$ —
# about a hundred — is the batch size at which signal and noise are equal (the "simple noise scale" of McCandlish
# et al., 2018). About a quarter of each ReLU layer's deltas are exactly zero: the unit is off for that example and
# passes no error back.
#
# ## SNR vs batch size
#
# For the trained network, take every training example's gradient: their mean $\mu$ and covariance $\Sigma$ are
# exact for the training set. A mini-batch of $B$ examples drawn with replacement has mean $\mu$ and covariance
# $\Sigma/B$, so its SNR is exactly $B$ times the per-example SNR. We check this by drawing 400 mini-batches for
# each $B$ and measuring the SNR of their gradients with `stats.gradient_snr(..., debias=True)` (an unbiased
# estimate of $\lVert\mu\rVert^2$: $\lVert\bar g\rVert^2$ alone would add $\operatorname{tr}\Sigma/M$).

# %%
per_example_all = jax.jit(lambda p: fnn.per_example_grads(net, p, xt, yt, LOSS))(params)
full = stats.gradient_stats(per_example_all, ddof=0)
snr1 = full["snr"]
print("per-example SNR on the whole training set, per layer:", snr1.round(4),
      f"(all parameters {full['snr_total']:.4f})")

n, M = len(xt), 400
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
rng = np.random.default_rng(0)
layer_matrices = [  # per layer: (n, d_l), every example's gradient of that layer's w and b flattened
    np.concatenate([np.asarray(leaf).reshape(n, -1) for leaf in jax.tree_util.tree_leaves(layer)], axis=1)
    for layer in per_example_all
]
measured = []
for B in BATCHES:
    counts = np.zeros((M, n))  # row m: how often each example is in mini-batch m, divided by B
    np.add.at(counts, (np.repeat(np.arange(M), B), rng.integers(0, n, size=M * B)), 1.0 / B)
    minibatch_grads = [counts @ g for g in layer_matrices]  # per layer: (M, d_l) mini-batch gradients
    measured.append(stats.gradient_snr(minibatch_grads, debias=True))
measured = np.asarray(measured)
ratio = measured / (np.asarray(BATCHES)[:, None] * snr1[None, :])
print("measured SNR_B / (B · SNR_1), rows B =", BATCHES)
print(ratio.round(2))
assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio


def plot_batch(ax):
    for l, name in enumerate(LAYERS):
        (line,) = ax.plot(BATCHES, np.asarray(BATCHES) * snr1[l], "-", label=f"{name}: B · SNR₁")
        ax.plot(BATCHES, measured[:, l], "o", color=line.get_color(), ms=4)
    ax.axhline(1, color="grey", lw=0.7, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("SNR of the mini-batch gradient")
    ax.set_title("SNR grows like B (dots: 400 sampled batches)")
    ax.legend(fontsize=8)


fig = Figure(figsize=(6, 4), layout="constrained")
plot_batch(fig.add_subplot())
show(fig)

# %% [markdown]
# ## The picture
#
# Per-example gradient norms and per-layer SNR over training, and the SNR of a mini-batch gradient against the
# batch size.

# %% tags=["readme-figure"]
fig = Figure(figsize=(15, 4), layout="constrained")
axes = fig.subplots(1, 3)
plot_training(axes[:2])
plot_batch(axes[2])
show(fig, dpi=80)

# %%
wall, cpu = time.perf_counter() - T0, time.process_time() - CPU0
print(f"notebook ran in {wall:.1f} s wall, {cpu:.1f} s CPU (kernel process)")
