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
# # Convolution backprop by hand
#
# A 6×6 grey image goes through a 3×3 convolution with two filters, a ReLU, a 2×2 max-pool, a Flatten and a
# Dense layer of 3 logits (softmax cross-entropy). fnn's images are NHWC: an example is `(H, W, C)`, a kernel
# `(kh, kw, c_in, c_out)`. With $\bar x$ the padded input, the forward pass of the convolution is a
# cross-correlation,
#
# $$z[u,v,f] = \sum_{i,j,c} \bar x[u s + i,\, v s + j,\, c]\; w[i,j,c,f] + b[f],\qquad y = \mathrm{relu}(z),$$
#
# and with $\delta = \partial\mathcal L/\partial z$ its backward pass is
#
# $$\frac{\partial\mathcal L}{\partial w[i,j,c,f]} = \sum_{u,v} \bar x[u s+i,\, v s+j,\, c]\;\delta[u,v,f],\qquad
# \frac{\partial\mathcal L}{\partial b[f]} = \sum_{u,v}\delta[u,v,f],\qquad
# \frac{\partial\mathcal L}{\partial \bar x[p,q,c]} = \sum_{\substack{u,v,f\\ p = us+i,\ q = vs+j}}
# \delta[u,v,f]\; w[i,j,c,f]:$$
#
# the kernel gradient correlates the input with δ, the input gradient is a *full* convolution of δ (dilated by
# the stride) with the flipped kernel. Max-pooling routes each δ to the maximum of its window. Below every one
# of these is computed with explicit loops in NumPy, then compared with fnn's hand-written backward pass
# (`fnn.backprop`, which evaluates the same formulas as GEMMs) and with `jax.grad`.

# %%
import time

T0, CPU0 = time.perf_counter(), time.process_time()  # the notebook's run time, imports included

import jax

jax.config.update("jax_enable_x64", True)  # float64: the comparisons below are to 1e-12
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import fnn
from fnn import layers as L
from fnn.plot import show

np.set_printoptions(precision=4, suppress=True, linewidth=110)

# %% [markdown]
# ## 1. The network, the image and fnn's trace

# %%
net = fnn.serial(L.Conv2D(2, 3, padding="VALID", activation="relu"), L.MaxPool2D(2), L.Flatten(), L.Dense(3),
                 input_shape=(6, 6, 1))
rng = np.random.default_rng(4)
image = rng.normal(size=(6, 6, 1))
w = rng.normal(size=(3, 3, 1, 2)) * 0.6
b = np.array([0.1, -0.2])
wd, bd = rng.normal(size=(8, 3)) * 0.2, np.array([0.05, 0.0, -0.05])
params = [{"w": jnp.asarray(w), "b": jnp.asarray(b)}, {}, {}, {"w": jnp.asarray(wd), "b": jnp.asarray(bd)}]
label = np.array([2])
LOSS = "sparse_softmax_cross_entropy"

value, grads, trace = fnn.backprop(net, params, image[None], label, LOSS, return_trace=True)
for l, (layer, t) in enumerate(zip(net.layers, trace.layers, strict=True)):
    print(f"layer {l} {layer.kind:9s} input {t.input.shape[1:]} -> output {t.output.shape[1:]}, "
          f"dL/d(output) {t.grad.shape[1:]}")
print(f"loss {float(value):.6f}")

# %% [markdown]
# ## 2. The forward pass with loops

# %%
def conv_forward(x, w, b, s=1):
    kh, kw, _, nf = w.shape
    ho, wo = (x.shape[0] - kh) // s + 1, (x.shape[1] - kw) // s + 1
    z = np.zeros((ho, wo, nf))
    for u in range(ho):
        for v in range(wo):
            for f in range(nf):
                z[u, v, f] = np.sum(x[u * s:u * s + kh, v * s:v * s + kw, :] * w[:, :, :, f]) + b[f]
    return z


def maxpool_forward(a, k=2):
    ho, wo, nc = a.shape[0] // k, a.shape[1] // k, a.shape[2]
    out, winner = np.zeros((ho, wo, nc)), np.zeros((ho, wo, nc, 2), int)
    for u in range(ho):
        for v in range(wo):
            for c in range(nc):
                window = a[u * k:(u + 1) * k, v * k:(v + 1) * k, c]
                i, j = np.unravel_index(np.argmax(window), window.shape)  # the first maximum, row-major
                out[u, v, c], winner[u, v, c] = window[i, j], (u * k + i, v * k + j)
    return out, winner


z = conv_forward(image, w, b)
a = np.maximum(z, 0)
pooled, winner = maxpool_forward(a)
logits = pooled.reshape(-1) @ wd + bd  # Flatten is NHWC row-major: (h, w, c)
p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
print("z[:, :, 0] =\n", z[:, :, 0])
assert np.allclose(trace.layers[0].values["z"][0], z, rtol=0, atol=1e-12)
assert np.allclose(trace.layers[1].output[0], pooled, atol=1e-12)
assert np.isclose(float(value), -np.log(p[label[0]]), atol=1e-12)

# %% [markdown]
# ## 3. The backward pass with loops
#
# Softmax + cross-entropy gives $\partial\mathcal L/\partial\,\mathrm{logits} = p - \mathrm{onehot}(y)$; the Dense
# layer sends $g = (p - y)\, w_d^\top$ back to the pooled map; the max-pool puts each entry of $g$ on its
# window's winner (zero elsewhere); the ReLU keeps it where $z > 0$; that is $\delta$ of the convolution.

# %%
d_logits = p - np.eye(3)[label[0]]
g_pooled = (wd @ d_logits).reshape(pooled.shape)
g_a = np.zeros_like(a)
for u, v, c in np.ndindex(*pooled.shape):
    g_a[(*winner[u, v, c], c)] += g_pooled[u, v, c]
delta = g_a * (z > 0)

dw = np.zeros_like(w)
for i, j, c, f in np.ndindex(*w.shape):
    dw[i, j, c, f] = sum(image[u + i, v + j, c] * delta[u, v, f] for u in range(4) for v in range(4))
db = delta.sum(axis=(0, 1))
dx = np.zeros_like(image)  # the full convolution: every output position sends δ·w back to its window
for u, v, f in np.ndindex(*delta.shape):
    dx[u:u + 3, v:v + 3, :] += delta[u, v, f] * w[:, :, :, f]

print("delta[:, :, 0] =\n", delta[:, :, 0])
print("dw[:, :, 0, 0] =\n", dw[:, :, 0, 0])
np.testing.assert_allclose(trace.layers[0].values["delta"][0], delta, atol=1e-12)
np.testing.assert_allclose(grads[0]["w"], dw, atol=1e-12)
np.testing.assert_allclose(grads[0]["b"], db, atol=1e-12)
np.testing.assert_allclose(grads[3]["w"], np.outer(pooled.reshape(-1), d_logits), atol=1e-12)

# %% [markdown]
# ## 4. Against `jax.grad`, for the params and for the input
#
# `jax.grad` differentiates the forward pass; `fnn.manual_apply(net)` is the same forward whose VJP is the
# hand-written backward pass, so `jax.grad` through it gives the hand-written input gradient `dx`.

# %%
loss = fnn.losses.get(LOSS)
auto = jax.grad(lambda q: loss.value(net.apply(q, image[None]), label))(params)
dx_manual = jax.grad(lambda x: loss.value(fnn.manual_apply(net)(params, x), label))(image[None])[0]
dx_auto = jax.grad(lambda x: loss.value(net.apply(params, x), label))(image[None])[0]
for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(auto), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
np.testing.assert_allclose(dx_manual, dx, atol=1e-12)
np.testing.assert_allclose(dx_auto, dx, atol=1e-12)
print("manual = loops = jax.grad for w, b, the Dense layer and the input")

# %% [markdown]
# ## 5. Stride 2 and "SAME" padding: the dilated δ
#
# With stride $s$ the input gradient is the full convolution of δ **dilated** by $s$ (zeros between its
# entries) with the flipped kernel; "SAME" pads as lax does (the odd row/column at the bottom/right), and the
# gradient of the padding is dropped. fnn evaluates that with `lax.conv_general_dilated(..., lhs_dilation=s)`.

# %%
net2 = fnn.serial(L.Conv2D(2, 3, stride=2, padding="SAME"), L.Flatten(), L.Dense(3), input_shape=(7, 6, 1))
p2 = [{"w": jnp.asarray(w), "b": jnp.asarray(b)}, {}, {"w": jnp.asarray(rng.normal(size=(4 * 3 * 2, 3))),
                                                         "b": jnp.zeros(3)}]
x2 = rng.normal(size=(7, 6, 1))
_, g2, t2 = fnn.backprop(net2, p2, x2[None], label, LOSS, return_trace=True)
d2 = np.asarray(t2.layers[0].values["delta"][0])  # (4, 3, 2): 7x6 at stride 2, "SAME"
pads = ((1, 1), (0, 1))  # "SAME" for 7x6, kernel 3, stride 2: out 4x3, pad (1, 1) rows and (0, 1) columns
xp = np.pad(x2, (*pads, (0, 0)))
dilated = np.zeros((2 * d2.shape[0] - 1, 2 * d2.shape[1] - 1, 2))
dilated[::2, ::2] = d2
dxp = np.zeros_like(xp)
for u, v, f in np.ndindex(*dilated.shape):
    dxp[u:u + 3, v:v + 3, :] += dilated[u, v, f] * w[:, :, :, f]
dx2 = dxp[1:8, 0:6]
dx2_manual = jax.grad(lambda x: loss.value(fnn.manual_apply(net2)(p2, x), label))(x2[None])[0]
np.testing.assert_allclose(dx2_manual, dx2, atol=1e-12)
print("stride 2, SAME: dx from the dilated delta equals fnn's backward pass")

# %% [markdown]
# ## 6. Ties in a max-pool window
#
# When a window holds its maximum twice, the whole δ goes to the **first** maximum in row-major order (top row
# first, then leftmost), never split; `jax.grad` of fnn's forward (an argmax and a gather) does the same.

# %%
flat_net = fnn.serial(L.MaxPool2D(2), L.Flatten(), input_shape=(2, 2, 1))
tie = jnp.array([[1.0, 3.0], [3.0, 3.0]]).reshape(1, 2, 2, 1)
routed = jax.grad(lambda x: jnp.sum(fnn.manual_apply(flat_net)([{}, {}], x)))(tie)[0, :, :, 0]
print(routed)
assert np.array_equal(routed, [[0.0, 1.0], [0.0, 0.0]])
assert np.array_equal(jax.grad(lambda x: jnp.sum(flat_net.apply([{}, {}], x)))(tie)[0, :, :, 0], routed)

# %% tags=["readme-figure"]
fig = Figure(figsize=(13, 3.2), layout="constrained")
axes = fig.subplots(1, 6)
panels = [(image[:, :, 0], "input x"), (delta[:, :, 0], "δ of filter 0 (4×4)"), (delta[:, :, 1], "δ of filter 1"),
          (dw[:, :, 0, 0], "dw, filter 0 (3×3)"), (dw[:, :, 0, 1], "dw, filter 1"), (dx[:, :, 0], "dx (6×6)")]
for ax, (img, title) in zip(axes, panels, strict=True):
    lim = float(np.max(np.abs(img))) or 1.0
    ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Convolution backprop by hand: every map equals fnn.backprop and jax.grad (float64, 1e-12)",
             fontsize=10)
show(fig, dpi=80)

# %%
wall, cpu = time.perf_counter() - T0, time.process_time() - CPU0
print(f"notebook ran in {wall:.1f} s wall, {cpu:.1f} s CPU (kernel process)")
