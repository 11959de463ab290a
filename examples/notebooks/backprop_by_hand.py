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
# # Backpropagation by hand: the 4-2-3 network, a deeper one, blocks and BatchNorm
#
# The textbook network: 4 inputs, a hidden layer of 2 ReLU units, an output layer of 3 sigmoid units, and the
# squared-error cost. In the textbook's notation a single example is a column vector and
#
# $$z_1 = W_1 x + b_1,\quad a_1 = R(z_1),\quad z_2 = W_2 a_1 + b_2,\quad a_2 = \sigma(z_2),\quad
# \mathcal{L} = \tfrac12 \lVert y - a_2 \rVert^2,$$
#
# with $W_1$ of shape $2\times4$ (one **row** per hidden neuron) and $W_2$ of shape $3\times2$. The error terms
# (deltas) and gradients are
#
# $$\delta_2 = -(y - a_2) \odot \sigma'(z_2),\quad \delta_1 = (W_2^\top \delta_2) \odot R'(z_1),\quad
# \frac{\partial\mathcal{L}}{\partial W_l} = \delta_l\, a_{l-1}^\top,\quad
# \frac{\partial\mathcal{L}}{\partial b_l} = \delta_l .$$
#
# **fnn's layout.** fnn works on row vectors with the batch first: layer $l$ computes `z = a @ w + b` with `w`
# of shape `(n_in, n_out)`. So `w1 = W1.T` has shape `(4, 2)`, `w2 = W2.T` has shape `(2, 3)`, a column $x$
# ($4\times1$) is a batch of one row `x.T` ($1\times4$), every `z`, `a`, `delta` is the transpose of the
# textbook's column, and `grads[l]["w"]` is $(\partial\mathcal{L}/\partial W_l)^\top$. The textbook's cost
# $\tfrac12\lVert y-a\rVert^2$ (averaged over a batch) is fnn's `"quadratic"` loss; fnn's `"mse"` averages over
# the outputs too and has no $\tfrac12$ (see below).

# %%
import time

T0, CPU0 = time.perf_counter(), time.process_time()  # the notebook's run time, imports included

import jax

jax.config.update("jax_enable_x64", True)  # float64 available (and the default): set before any array exists
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import stats
from fnn.plot import show

np.set_printoptions(precision=5, suppress=True, linewidth=110)



# %% [markdown]
# ## 1. The numbers, in the textbook's notation (NumPy, column vectors)
#
# The weights are chosen so that the second hidden unit is switched off ($z_1^{(2)} < 0$): its ReLU derivative is
# 0, so its row of $\partial\mathcal{L}/\partial W_1$ must be zero.

# %%
x = np.array([[0.5], [-1.0], [2.0], [1.5]])  # 4×1
W1 = np.array([[0.2, -0.4, 0.3, 0.1],
               [-0.5, 0.2, -0.1, 0.4]])  # 2×4: row i holds the weights into hidden neuron i
b1 = np.array([[0.1], [-0.2]])  # 2×1
W2 = np.array([[0.3, -0.6],
               [0.8, 0.2],
               [-0.4, 0.5]])  # 3×2
b2 = np.array([[0.05], [-0.1], [0.2]])  # 3×1
y = np.array([[1.0], [0.0], [0.0]])  # 3×1, one-hot target


def relu(z):
    return np.maximum(z, 0.0)


def relu_prime(z):
    return (z > 0).astype(float)  # R'(0) = 0, the convention of jax.grad(jax.nn.relu)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# forward
z1 = W1 @ x + b1
a1 = relu(z1)
z2 = W2 @ a1 + b2
a2 = sigmoid(z2)
L = 0.5 * np.sum((y - a2) ** 2)

# backward
delta2 = -(y - a2) * a2 * (1 - a2)  # dL/dz2, sigma'(z2) = a2 (1 - a2)
delta1 = (W2.T @ delta2) * relu_prime(z1)  # dL/dz1
dW2, db2 = delta2 @ a1.T, delta2
dW1, db1 = delta1 @ x.T, delta1

print(f"loss = {L:.6f}")
for name, v in [("z1", z1), ("a1", a1), ("z2", z2), ("a2", a2), ("delta2", delta2), ("delta1", delta1)]:
    print(f"{name:7s} {str(v.shape):7s} {v.ravel()}")
for name, v in [("dL/dW1", dW1), ("dL/db1", db1), ("dL/dW2", dW2), ("dL/db2", db2)]:
    print(f"{name} {v.shape}:\n{v}")

# %% [markdown]
# ## 2. The same network in fnn: `backprop(..., return_trace=True)`
#
# `trace.z[l]`, `trace.a[l]`, `trace.delta[l]` are layer `l`'s pre-activation, activation and error term (fnn
# counts layers from 0, the textbook from 1), each of shape `(batch, n_out)`.

# %%
net = fnn.mlp([4, 2, 3], activations=["relu", "sigmoid"])
params = [
    {"w": jnp.asarray(W1.T), "b": jnp.asarray(b1[:, 0])},  # w1 = W1ᵀ: (4, 2)
    {"w": jnp.asarray(W2.T), "b": jnp.asarray(b2[:, 0])},  # w2 = W2ᵀ: (2, 3)
]
xb, yb = jnp.asarray(x.T), jnp.asarray(y.T)  # a batch of one example: (1, 4) and (1, 3)
loss, grads, trace = fnn.backprop(net, params, xb, yb, loss="quadratic", return_trace=True)

print(f"loss = {float(loss):.6f}   (dtype {params[0]['w'].dtype})")
for l in range(net.num_layers):
    print(f"layer {l}: w {params[l]['w'].shape}  (textbook W{l + 1}: {params[l]['w'].T.shape})")
    for name, v in [("z", trace.z[l]), ("a", trace.a[l]), ("delta", trace.delta[l])]:
        print(f"   {name:6s} {str(v.shape):7s} {np.asarray(v).ravel()}")
    print(f"   dw     {grads[l]['w'].shape}  = (dL/dW{l + 1})ᵀ\n{np.asarray(grads[l]['w'])}")

# The key claim: fnn's trace and gradients are the textbook's numbers, transposed.
np.testing.assert_allclose(float(loss), L, rtol=1e-14)
for got, want in [(trace.z[0], z1), (trace.a[0], a1), (trace.delta[0], delta1),
                  (trace.z[1], z2), (trace.a[1], a2), (trace.delta[1], delta2),
                  (grads[0]["w"], dW1), (grads[1]["w"], dW2)]:
    np.testing.assert_allclose(np.asarray(got), want.T, rtol=1e-13, atol=1e-16)
for got, want in [(grads[0]["b"], db1), (grads[1]["b"], db2)]:
    np.testing.assert_allclose(np.asarray(got), want[:, 0], rtol=1e-13, atol=1e-16)
assert np.all(np.asarray(grads[0]["w"])[:, 1] == 0), "the switched-off ReLU unit must get a zero gradient"
print("fnn trace and gradients == textbook (transposed)")


# %% [markdown]
# ## 3. Every gradient checked against `jax.grad`
#
# `jax.grad` differentiates the forward pass written directly with `jax.numpy` and `jax.nn`, independently of
# fnn's activation records. In float64 the two agree to rounding (relative error around 1e-16).

# %%
def textbook_cost(params, x, y):
    a1 = jax.nn.relu(x @ params[0]["w"] + params[0]["b"])
    a2 = jax.nn.sigmoid(a1 @ params[1]["w"] + params[1]["b"])
    return 0.5 * jnp.sum((y - a2) ** 2) / x.shape[0]


auto = jax.grad(textbook_cost)(params, xb, yb)
for l in range(2):
    for leaf in ("w", "b"):
        m, a = np.asarray(grads[l][leaf]), np.asarray(auto[l][leaf])
        err = np.max(np.abs(m - a))
        print(f"layer {l} {leaf}: max |manual - jax.grad| = {err:.1e}")
        np.testing.assert_allclose(m, a, rtol=1e-12, atol=1e-15)
print("cosine(manual, jax.grad) per layer:", stats.cosine_similarity(grads, auto))

report = fnn.gradcheck(net, params, xb, yb, loss="quadratic")
print(report)
assert report.ok

# %% [markdown]
# ### `"quadratic"` vs `"mse"`
#
# fnn's `"mse"` is $\frac{1}{NK}\sum (a - y)^2$: a mean over the batch **and** the $K = 3$ outputs, without the
# $\tfrac12$. Its gradient is the textbook's scaled by $2/K$; every delta, and so every gradient, scales the same way.

# %%
_, grads_mse, trace_mse = fnn.backprop(net, params, xb, yb, loss="mse", return_trace=True)
for l in range(2):
    np.testing.assert_allclose(np.asarray(trace_mse.delta[l]), 2 / 3 * np.asarray(trace.delta[l]), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(grads_mse[l]["w"]), 2 / 3 * np.asarray(grads[l]["w"]), rtol=1e-13)
print("mse deltas = 2/3 × quadratic deltas:", np.asarray(trace_mse.delta[1]).ravel(), "vs",
      np.asarray(trace.delta[1]).ravel())

# %% [markdown]
# ## 4. A deeper network
#
# Four layers of mixed activations, a batch of 16. The delta recursion is the same at every layer,
# $\delta_l = (\delta_{l+1} W_{l+1}^\top) \odot f_l'(z_l)$ in fnn's row layout; we recompute it here from the
# trace with each activation's hand-written derivative and compare with `jax.grad` layer by layer.

# %%
deep = fnn.mlp([4, 8, 8, 8, 3], activations=["relu", "tanh", "gelu", "sigmoid"])
dparams = deep.init(jax.random.key(0))
X = jax.random.normal(jax.random.key(1), (16, 4))
Y = jax.random.uniform(jax.random.key(2), (16, 3))
dloss, dgrads, dtrace = fnn.backprop(deep, dparams, X, Y, loss="quadratic", return_trace=True)

print(f"{'layer':>5} {'activation':>10} {'fnn w':>8} {'textbook W':>10} {'z, a, delta':>12} {'‖delta‖':>10}")
for l, act in enumerate(deep.activations):
    w = dparams[l]["w"]
    print(f"{l:>5} {act.name:>10} {str(w.shape):>8} {str(w.T.shape):>10} {str(dtrace.z[l].shape):>12} "
          f"{float(jnp.linalg.norm(dtrace.delta[l])):>10.3e}")

# The recursion, by hand from the trace: delta_l = (delta_{l+1} @ w_{l+1}.T) * f_l'(z_l).
for l in range(deep.num_layers - 1):
    by_hand = (dtrace.delta[l + 1] @ dparams[l + 1]["w"].T) * deep.activations[l].derivative(dtrace.z[l])
    np.testing.assert_allclose(np.asarray(dtrace.delta[l]), np.asarray(by_hand), rtol=1e-13, atol=1e-18)


def deep_cost(params, x, y):
    a = x
    fs = [jax.nn.relu, jnp.tanh, lambda z: jax.nn.gelu(z, approximate=False), jax.nn.sigmoid]
    for layer, f in zip(params, fs, strict=True):
        a = f(a @ layer["w"] + layer["b"])
    return 0.5 * jnp.sum((y - a) ** 2) / x.shape[0]


dauto = jax.grad(deep_cost)(dparams, X, Y)
for l in range(deep.num_layers):
    for leaf in ("w", "b"):
        np.testing.assert_allclose(np.asarray(dgrads[l][leaf]), np.asarray(dauto[l][leaf]), rtol=1e-10, atol=1e-15)
print("cosine(manual, jax.grad) per layer:", stats.cosine_similarity(dgrads, dauto))

deep_report = fnn.gradcheck(deep, dparams, X, Y, loss="quadratic")
assert deep_report.ok, deep_report
table = stats.gradcheck_table(deep_report)
worst = max(r for r, p in zip(table["max_rel"], table["pair"], strict=True) if p == "manual~autodiff")
print(f"{len(table['layer'])} tidy rows; worst manual~autodiff relative error {worst:.1e}")

# %% [markdown]
# ## 5. Dropout and a residual block, by hand
#
# `fnn.serial` composes layers, each with its forward and hand-written backward side by side. Take
# `x → Dense(3, tanh) → Dropout(0.5) → Residual(Dense(3, tanh)) → Dense(2)` with the quadratic cost. With the
# dropout mask $m$ (kept units, scaled by $1/(1-p)$) and the block $r = u + \tanh(u\,w_r + b_r)$:
#
# $$h = \tanh(x w_0 + b_0),\quad u = h \odot m/(1-p),\quad r = u + \tanh(u w_r + b_r),\quad
# \hat y = r w_3 + b_3 .$$
#
# Backward, with $g$ the upstream gradient of each layer's output: the output layer gives $g_r = \delta_3 w_3^\top$;
# the residual block passes $g_r$ **straight through the skip** and adds the inner layer's input gradient,
# $g_u = g_r + (g_r \odot \tanh'(\cdot))\, w_r^\top$; dropout multiplies by the same mask,
# $g_h = g_u \odot m/(1-p)$; and the first layer is a Dense layer as before. The mask is drawn from the key
# (training mode) and is in the trace, so the NumPy pass below uses exactly fnn's mask.

# %%
from fnn import layers as L

block_net = fnn.serial(L.Dense(3, activation="tanh"), L.Dropout(0.5), L.Residual(L.Dense(3, activation="tanh")),
                       L.Dense(2), input_shape=(4,))
bparams = block_net.init(jax.random.key(3))
xb = np.array([[0.5, -1.0, 2.0, 0.1], [1.5, 0.3, -0.7, 0.9]])
yb = np.array([[0.2, -0.4], [1.0, 0.5]])
dkey = jax.random.key(11)
_, bgrads, btrace = fnn.backprop(block_net, bparams, xb, yb, "quadratic", key=dkey, return_trace=True)
mask = np.asarray(btrace.mask[1])  # kept units of layer 1 (the dropout layer), True = kept
print("dropout mask (kept units):\n", mask.astype(int))

# The same pass in NumPy, row vectors, batch N = 2 (the quadratic cost is a batch mean: delta_3 carries 1/N).
P = jax.tree_util.tree_map(np.asarray, bparams)
keep = mask / (1 - 0.5)
h = np.tanh(xb @ P[0]["w"] + P[0]["b"])
u = h * keep
inner = np.tanh(u @ P[2][0]["w"] + P[2][0]["b"])
r = u + inner
out = r @ P[3]["w"] + P[3]["b"]
delta3 = (out - yb) / len(xb)
g_r = delta3 @ P[3]["w"].T
delta_inner = g_r * (1 - inner**2)
g_u = g_r + delta_inner @ P[2][0]["w"].T          # the skip passes g_r through unchanged
g_h = g_u * keep                                  # dropout: the same mask, the same scale
delta0 = g_h * (1 - h**2)
by_hand = [{"w": xb.T @ delta0, "b": delta0.sum(0)}, {}, [{"w": u.T @ delta_inner, "b": delta_inner.sum(0)}],
           {"w": r.T @ delta3, "b": delta3.sum(0)}]
_, auto_grads = fnn.autodiff(block_net, bparams, xb, yb, "quadratic", key=dkey)  # jax.grad, same key, same mask
for name, mine, ref in zip(["0.w", "0.b", "2.0.w", "2.0.b", "3.w", "3.b"], jax.tree_util.tree_leaves(by_hand),
                           jax.tree_util.tree_leaves(bgrads), strict=True):
    np.testing.assert_allclose(mine, ref, rtol=1e-12, atol=1e-15, err_msg=name)
for mine, ref in zip(jax.tree_util.tree_leaves(bgrads), jax.tree_util.tree_leaves(auto_grads), strict=True):
    np.testing.assert_allclose(mine, ref, rtol=1e-10, atol=1e-15)
np.testing.assert_allclose(btrace.at("2.0").values["delta"], delta_inner, rtol=1e-12)
print("NumPy by hand = fnn.backprop = jax.grad (same dropout key) for every leaf, incl. the residual block's 2.0.w")
print("inference mode (no key) is dropout-free:",
      np.allclose(block_net.apply(bparams, xb), (np.tanh(h @ P[2][0]["w"] + P[2][0]["b"]) + h) @ P[3]["w"] + P[3]["b"]))

# %% [markdown]
# ## 6. The BatchNorm backward pass, step by step
#
# BatchNorm's backward is the derivation most often got wrong by hand (CS231n's second assignment). In training
# mode, for each feature over a batch of $N$ values, with $g = \partial\mathcal{L}/\partial y$:
#
# $$\mu = \tfrac1N\textstyle\sum_n x_n,\quad c = x - \mu,\quad v = \tfrac1N\sum_n c_n^2,\quad
# s = (v + \epsilon)^{-1/2},\quad \hat x = c\,s,\quad y = \gamma \hat x + \beta .$$
#
# Backward, node by node (each line uses only the ones above it):
#
# $$\bar{\hat x} = g\gamma,\quad \bar s = \textstyle\sum_n \bar{\hat x}_n c_n,\quad
# \bar v = -\tfrac12 (v+\epsilon)^{-3/2}\,\bar s,\quad
# \bar c = \bar{\hat x}\, s + \tfrac{2}{N} c\, \bar v,\quad \bar\mu = -\textstyle\sum_n \bar c_n,\quad
# \bar x = \bar c + \tfrac1N \bar\mu ,$$
#
# and the three sums collapse into the compact form fnn computes,
# $\bar x = \tfrac{\gamma s}{N}\big(N g - \sum_n g_n - \hat x \sum_n g_n \hat x_n\big)$, with
# $\bar\gamma = \sum_n g_n \hat x_n$ and $\bar\beta = \sum_n g_n$. Below, every intermediate adjoint is
# checked against `jax.grad` of the loss written as a function of that intermediate (everything downstream of
# it recomputed from it), then the compact form against `fnn.backprop` and `fnn.autodiff`.

# %%
bn_net = fnn.serial(L.Dense(3, bias=False), L.BatchNorm(momentum=0.8), "tanh", L.Dense(2), input_shape=(4,))
bn_params = bn_net.init(jax.random.key(5))
bn_params[1] = {"scale": jnp.array([1.5, -0.7, 0.9]), "offset": jnp.array([0.1, 0.2, -0.3])}
xn = np.array([[0.5, -1.0, 2.0, 0.1], [1.5, 0.3, -0.7, 0.9], [-0.2, 0.8, 0.4, -1.1], [0.9, -0.5, -1.3, 0.6]])
yn = np.array([[0.2, -0.4], [1.0, 0.5], [-0.3, 0.1], [0.4, 0.9]])
state0 = bn_net.init_state()
_, bn_grads, state1, bn_trace = fnn.backprop(bn_net, bn_params, xn, yn, "quadratic", train=True, state=state0,
                                            return_trace=True)
Q = jax.tree_util.tree_map(np.asarray, bn_params)
gamma, beta, eps, N = Q[1]["scale"], Q[1]["offset"], 1e-5, len(xn)
xz = xn @ Q[0]["w"]                               # the BatchNorm layer's input
g = np.asarray(bn_trace.layers[1].grad)           # dL/dy of the BatchNorm layer, from fnn's trace


def after(y_bn):  # the loss as a function of BatchNorm's output (tanh, the last Dense, the quadratic cost)
    out = jnp.tanh(y_bn) @ Q[3]["w"] + Q[3]["b"]
    return 0.5 * jnp.sum((out - yn) ** 2) / N


# the forward, node by node
mu = xz.mean(0)
c = xz - mu
v = (c**2).mean(0)
s = 1 / np.sqrt(v + eps)
xhat = c * s
ybn = gamma * xhat + beta
np.testing.assert_allclose(g, jax.grad(after)(ybn), rtol=1e-12)
# the backward, node by node; each checked against jax.grad of the loss as a function of that node
d_xhat = g * gamma
d_s = (d_xhat * c).sum(0)
d_v = -0.5 * (v + eps) ** -1.5 * d_s
d_c = d_xhat * s + 2 / N * c * d_v
d_mu = -d_c.sum(0)
d_x = d_c + d_mu / N
@jax.jit  # one compiled program for the six references (eagerly, every small op would compile on its own)
def references():
    return {
        "x̂": jax.grad(lambda xh: after(gamma * xh + beta))(xhat),
        "s": jax.grad(lambda s_: after(gamma * c * s_ + beta))(s),
        "v": jax.grad(lambda v_: after(gamma * c / jnp.sqrt(v_ + eps) + beta))(v),
        "c": jax.grad(lambda c_: after(gamma * c_ / jnp.sqrt((c_**2).mean(0) + eps) + beta))(c),
        "μ": jax.grad(lambda m: after(gamma * (xz - m) / jnp.sqrt(((xz - m) ** 2).mean(0) + eps) + beta))(mu),
        "x": jax.grad(lambda x_: after(gamma * (x_ - x_.mean(0)) / jnp.sqrt(x_.var(0) + eps) + beta))(xz),
    }


mine_by_node = {"x̂": d_xhat, "s": d_s, "v": d_v, "c": d_c, "μ": d_mu, "x": d_x}
checks = {node: (mine_by_node[node], ref) for node, ref in references().items()}
for node, (mine, ref) in checks.items():
    np.testing.assert_allclose(mine, ref, rtol=1e-10, atol=1e-14, err_msg=node)
    print(f"adjoint of {node}: by hand = jax.grad, max |difference| {np.abs(mine - ref).max():.1e}")
compact = gamma * s / N * (N * g - g.sum(0) - xhat * (g * xhat).sum(0))
np.testing.assert_allclose(compact, d_x, rtol=1e-12)                     # the compact form
np.testing.assert_allclose(bn_trace.layers[0].grad, compact, rtol=1e-12)  # = what fnn passed to layer 0
np.testing.assert_allclose(bn_grads[1]["scale"], (g * xhat).sum(0), rtol=1e-12)
np.testing.assert_allclose(bn_grads[1]["offset"], g.sum(0), rtol=1e-12)
np.testing.assert_allclose(bn_trace.layers[1].values["x_hat"], xhat, rtol=1e-12)   # the trace exposes x̂, μ, v
np.testing.assert_allclose(bn_trace.layers[1].values["var"], v, rtol=1e-12)
_, bn_auto, _ = fnn.autodiff(bn_net, bn_params, xn, yn, "quadratic", train=True, state=state0)
np.testing.assert_allclose(bn_grads[0]["w"], bn_auto[0]["w"], rtol=1e-10)
np.testing.assert_allclose(bn_grads[0]["w"], xn.T @ compact, rtol=1e-12)
# the running statistics: momentum 0.8, the unbiased variance
np.testing.assert_allclose(state1[1]["mean"], 0.8 * 0 + 0.2 * mu, rtol=1e-12)
np.testing.assert_allclose(state1[1]["var"], 0.8 * 1 + 0.2 * v * N / (N - 1), rtol=1e-12)
print("compact form = the node-by-node adjoint = fnn.backprop's dL/dx = jax.grad; running statistics updated")

# %% [markdown]
# ## 7. The picture
#
# Left: the textbook-shaped gradients of the 4-2-3 network (values written in; the switched-off hidden unit's row
# is zero). Right: the three-way gradient check of the deeper network — log10 of the largest relative error per
# leaf for each pair of methods (manual backprop, `jax.grad`, central finite differences in float64).

# %% tags=["readme-figure"]
from matplotlib.figure import Figure

fig = Figure(figsize=(11, 3.6), layout="constrained")
left, right = fig.subfigures(1, 2, width_ratios=[1.25, 1])
axes = left.subplots(1, 2, width_ratios=[4, 2])
for ax, (name, g) in zip(axes, [("∂L/∂W1  (2×4)", dW1), ("∂L/∂W2  (3×2)", dW2)], strict=True):
    lim = np.abs(g).max()
    ax.imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for (i, j), v in np.ndenumerate(g):
        color = "white" if abs(v) > 0.6 * lim else "black"
        ax.text(j, i, f"{v:+.4f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(g.shape[1]))
    ax.set_yticks(range(g.shape[0]))
    ax.set_title(name)
axes[0].set_ylabel("hidden unit (row of W1)")
axes[0].set_xlabel("input")
axes[1].set_ylabel("output unit")
axes[1].set_xlabel("hidden unit")
left.suptitle("4-2-3 network: manual = jax.grad (transposed fnn grads)")
stats.plot_gradcheck(deep_report, ax=right.subplots(), title="deeper net [4, 8, 8, 8, 3]: log10 max rel. error")
show(fig)

# %%
wall, cpu = time.perf_counter() - T0, time.process_time() - CPU0
print(f"notebook ran in {wall:.1f} s wall, {cpu:.1f} s CPU (kernel process)")
