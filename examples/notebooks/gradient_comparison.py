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
# # Manual backprop vs `jax.grad` vs finite differences
#
# Three ways to get the same gradient: fnn's hand-written backward pass (`fnn.backprop`), reverse-mode autodiff
# (`fnn.autodiff`, i.e. `jax.grad` of the same loss) and central finite differences
# $(\mathcal{L}(\theta + h e_i) - \mathcal{L}(\theta - h e_i)) / 2h$. This notebook measures how far apart they
# are for every activation × loss pair in float32 and float64, how the error grows with depth, what happens
# exactly at a kink, exact vs tanh-approximate GELU, and why the closed-form softmax-cross-entropy delta matters.
#
# Throughout, the error of a gradient $g$ against a reference $r$ is the norm-wise relative error
# $\lVert g - r\rVert_2 / \max(\lVert g\rVert_2, \lVert r\rVert_2)$ over all parameters (0 when both are zero).

# %%
import os
import time

T0, CPU0 = time.perf_counter(), time.process_time()  # the notebook's run time, imports included

# Every array here is tiny (3×3 up to 32×16), so compiling, not computing, is most of the run time: XLA compiles
# each distinct op on its first eager use (and each jitted function once). At optimisation level 0 and without the
# fusion emitters it compiles them about three times faster; results can differ from the default build in the
# last bit, far below every tolerance here. (Read when JAX starts its backend: a kernel that has already run JAX
# keeps the flags it started with.)
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"]
).strip()

import jax

jax.config.update("jax_enable_x64", True)  # float64 available (and the default): set before any array exists
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import stats
from fnn.plot import show

np.set_printoptions(precision=5, suppress=True, linewidth=110)



# %%
from jax.flatten_util import ravel_pytree
from matplotlib.figure import Figure

from fnn.gradcheck import finite_difference_grads

ACTIVATIONS = fnn.activations.names()  # 13
LOSSES = fnn.losses.names()  # 8
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
# Central differences: the step that balances rounding (eps/h) against truncation (h²) is about eps^(1/3)
# (finite_difference_grads' default step; written out here because the notebook is about it).
STEP = {name: float(jnp.finfo(d).eps) ** (1 / 3) for name, d in DTYPES.items()}


def flat(tree):
    """A pytree's leaves as one float64 NumPy vector, in ravel_pytree's order (in NumPy: no JAX op to compile)."""
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree_util.tree_leaves(tree)])


def rel_err(g, ref):
    g, ref = np.asarray(g, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    scale = max(np.linalg.norm(g), np.linalg.norm(ref))
    return 0.0 if scale == 0 else float(np.linalg.norm(g - ref) / scale)


print(f"{len(ACTIVATIONS)} activations × {len(LOSSES)} losses; finite-difference steps {STEP}")


# %% [markdown]
# ## 1. Every activation × loss pair, float32 and float64
#
# A network `[3, 3, 3]` whose hidden layer uses the row's activation. The output layer is what the column's loss
# expects (`fnn.losses.natural_output`): the same activation for `mse` and `quadratic` (any output fits them),
# `sigmoid` for `binary_cross_entropy`, `softmax` for the (sparse) categorical cross-entropy (fnn fuses these
# pairs) and `identity` (logits) for the losses that take logits. The float32 and float64 runs use *the same
# numbers* (float32 params, inputs and targets, also held in float64), so the float64 manual gradient is the exact
# answer for the float32 run.
#
# Finite differences (`fnn.gradcheck.finite_difference_grads`, in the params' dtype; written out below as two
# vmapped batches of loss evaluations: the same numbers, faster) run in float64 only, as
# `fnn.gradcheck` runs them: they check the *formulas*, and in float32 they measure mostly their own rounding
# (shown for one row after the maps).

# %%
kx, ky, kb, kp = jax.random.split(jax.random.key(0), 4)
X = jax.random.normal(kx, (3, 3)).astype(jnp.float32)
LABELS = jnp.array([0, 2, 1])


def targets(loss, dtype):
    rec = fnn.losses.get(loss)
    if rec.sparse:
        return LABELS
    if "categorical" in loss or loss == "softmax_cross_entropy":
        return jax.nn.one_hot(LABELS, 3, dtype=dtype)
    if "binary" in loss:
        return jax.random.bernoulli(kb, 0.5, (3, 3)).astype(dtype)
    return jax.random.uniform(ky, (3, 3), jnp.float32, -1, 1).astype(dtype)


def central_differences(net, params, x, y, loss, h):
    """(L(θ + h e_i) - L(θ - h e_i)) / 2h for every coordinate i of the flat params, L = fnn.objective: what
    finite_difference_grads returns, from the same loss evaluations (without its extra L(θ))."""
    theta, unravel = ravel_pytree(params)
    loss_at = jax.vmap(lambda t: fnn.objective(net, loss)(unravel(t), x, y))  # one batched pass per side
    steps = h * jnp.eye(theta.size, dtype=theta.dtype)
    plus, minus = np.asarray(loss_at(theta + steps), np.float64), np.asarray(loss_at(theta - steps), np.float64)
    return (plus - minus) / (2 * h)


MAPS = ["float64: manual~jax.grad", "float32: manual~jax.grad", "float64: manual~finite diff.",
        "float32: manual vs exact"]
errors = {name: np.zeros((len(ACTIVATIONS), len(LOSSES))) for name in MAPS}
autodiff_f32_vs_exact = np.zeros((len(ACTIVATIONS), len(LOSSES)))
manual32 = {}  # (activation, loss) -> float32 manual gradient, reused below
P32 = fnn.mlp([3, 3, 3], dtype=jnp.float32).init(kp)  # every pair's network has these shapes: one draw for all
PARAMS = {dt: [{k: v.astype(dtype) for k, v in layer.items()} for layer in P32] for dt, dtype in DTYPES.items()}
XS = {dt: X.astype(dtype) for dt, dtype in DTYPES.items()}
YS = {(loss, dt): targets(loss, dtype) for loss in LOSSES for dt, dtype in DTYPES.items()}
t = time.perf_counter()
for i, act in enumerate(ACTIVATIONS):
    for j, loss in enumerate(LOSSES):
        grads = {}
        for dt, dtype in DTYPES.items():
            net = fnn.mlp([3, 3, 3], hidden=act, output=fnn.losses.natural_output(loss) or act, dtype=dtype)
            params, x, y = PARAMS[dt], XS[dt], YS[loss, dt]
            manual, auto = fnn.backprop(net, params, x, y, loss)[1], fnn.autodiff(net, params, x, y, loss)[1]
            grads[dt] = flat(manual), flat(auto)
            errors[f"{dt}: manual~jax.grad"][i, j] = rel_err(*grads[dt])
            if dt == "float64":
                fd = central_differences(net, params, x, y, loss, STEP[dt])
                errors["float64: manual~finite diff."][i, j] = rel_err(grads[dt][0], fd)
        exact = grads["float64"][0]  # the float64 manual gradient on the float32 run's numbers
        manual32[act, loss] = grads["float32"][0]
        errors["float32: manual vs exact"][i, j] = rel_err(grads["float32"][0], exact)
        autodiff_f32_vs_exact[i, j] = rel_err(grads["float32"][1], exact)
print(f"{len(ACTIVATIONS) * len(LOSSES)} pairs × 2 dtypes in {time.perf_counter() - t:.1f} s")
# The written-out differences are finite_difference_grads' numbers, bit for bit (checked on the loop's last pair):
assert np.array_equal(fd, flat(finite_difference_grads(net, params, x, y, loss, eps=STEP["float64"])))

# %%
fig = Figure(figsize=(15, 10), layout="constrained")
for ax, (name, e) in zip(fig.subplots(2, 2).ravel(), errors.items(), strict=True):
    stats.plot_error_heatmap(e, ACTIVATIONS, LOSSES, ax=ax, title=name, colorbar=False, vmin=-17, vmax=0)
fig.colorbar(fig.axes[0].images[0], ax=fig.axes, label="log10 relative error", shrink=0.6)
show(fig, dpi=80)

for name, e in errors.items():
    i, j = np.unravel_index(np.argmax(e), e.shape)
    print(f"{name:29s} worst {e[i, j]:.1e} at {ACTIVATIONS[i]} × {LOSSES[j]}; median {np.median(e):.1e}")
print(f"{'float32: jax.grad vs exact':29s} worst {autodiff_f32_vs_exact.max():.1e}; "
      f"median {np.median(autodiff_f32_vs_exact):.1e}")

# The claims, asserted: manual = autodiff to rounding in both dtypes; finite differences agree in float64;
# in float32 the manual pass is as close to the exact answer as autodiff.
assert errors["float64: manual~jax.grad"].max() < 1e-13
assert errors["float32: manual~jax.grad"].max() < 1e-5
assert errors["float64: manual~finite diff."].max() < 1e-7
assert errors["float32: manual vs exact"].max() < 1e-5 and autodiff_f32_vs_exact.max() < 1e-5

# Finite differences in float32, for one row: even the best step h ≈ eps^(1/3) leaves errors of 1e-5 to 1e-4.
fd32 = {}
for loss in LOSSES:
    net = fnn.mlp([3, 3, 3], hidden="tanh", output=fnn.losses.natural_output(loss) or "tanh", dtype=jnp.float32)
    fd = finite_difference_grads(net, P32, X, YS[loss, "float32"], loss, eps=STEP["float32"])
    fd32[loss] = rel_err(manual32["tanh", loss], flat(fd))
print("float32 finite differences vs manual, tanh row:", ", ".join(f"{k} {v:.0e}" for k, v in fd32.items()))
# The noisy leg is finite differences: far worse than the float32 manual pass against the exact answer.
assert min(fd32.values()) > 30 * errors["float32: manual vs exact"].max()

# %% [markdown]
# **Reading the maps.** Manual and `jax.grad` agree to the last few bits in both dtypes (often bit for bit:
# "exact"), and both float32 gradients are within about 1e-7 of the exact answer — the hand-written pass is as
# accurate as autodiff. Finite differences are the noisy leg: in float64 they agree to about 1e-10, but in
# float32 (the tanh row above) the best step $h \approx \epsilon^{1/3} \approx 5\cdot10^{-3}$ leaves errors
# around 1e-4 — and an activation with a kink or a jump (`relu`, `leaky_relu`, `binary_step`) makes it far worse
# whenever a step of $h$ crosses the kink (section 3). This is why `fnn.gradcheck` runs its finite differences in
# float64 and compares manual with autodiff in the native dtype.

# %% [markdown]
# ## 2. How the error grows with depth
#
# tanh networks of width 16 and 1 to 16 hidden layers, MSE loss, float32 params; the exact answer is the float64
# manual gradient on the same numbers (in float64 manual and `jax.grad` agree to ~1e-16 at every depth, as
# above). Each layer of the backward pass adds a few roundings, so the float32 error grows slowly with depth — for
# the manual pass and for autodiff alike.

# %%
DEPTHS = [1, 2, 4, 8, 16]
xd = jax.random.normal(jax.random.key(1), (32, 8)).astype(jnp.float32)
yd = jax.random.normal(jax.random.key(2), (32, 4)).astype(jnp.float32)
depth_err = {"manual f32 vs exact": [], "jax.grad f32 vs exact": [], "manual vs jax.grad (f32)": []}
# One draw for the deepest net; the net with d hidden layers takes its first d layers and its output layer.
deepest = fnn.mlp([8] + [16] * max(DEPTHS) + [4], hidden="tanh", output="identity", dtype=jnp.float32)
deep_params = deepest.init(jax.random.key(1))


@jax.jit  # the whole sweep as one compiled program (eagerly, each of the deep nets' many small ops runs on its own)
def depth_sweep(deep_params, xd, yd):
    """For each depth in DEPTHS: (manual float32, manual float64, jax.grad float32) gradients, on the same numbers."""
    out = []
    for depth in DEPTHS:
        net32 = fnn.mlp([8] + [16] * depth + [4], hidden="tanh", output="identity", dtype=jnp.float32)
        net64 = fnn.mlp([8] + [16] * depth + [4], hidden="tanh", output="identity", dtype=jnp.float64)
        p32 = deep_params[:depth] + deep_params[-1:]
        p64 = jax.tree_util.tree_map(lambda w: w.astype(jnp.float64), p32)
        x64, y64 = xd.astype(jnp.float64), yd.astype(jnp.float64)
        out.append((fnn.backprop(net32, p32, xd, yd, "mse")[1], fnn.backprop(net64, p64, x64, y64, "mse")[1],
                    fnn.autodiff(net32, p32, xd, yd, "mse")[1]))
    return out


for g32, g64, a32 in depth_sweep(deep_params, xd, yd):
    m32, m64, a32 = flat(g32), flat(g64), flat(a32)
    for key, e in zip(depth_err, [rel_err(m32, m64), rel_err(a32, m64), rel_err(m32, a32)], strict=True):
        depth_err[key].append(e)
    layer_err = [rel_err(flat(a), flat(b)) for a, b in zip(g32, g64, strict=True)]  # per layer, for the deepest

for key, values in depth_err.items():
    print(f"{key:26s}", " ".join(f"{v:8.1e}" for v in values))
print("deepest net, float32 error per layer (input layer first):", " ".join(f"{v:.1e}" for v in layer_err))
assert max(depth_err["manual f32 vs exact"]) < 1e-4 and max(depth_err["jax.grad f32 vs exact"]) < 1e-4
assert depth_err["manual f32 vs exact"][-1] > depth_err["manual f32 vs exact"][0]  # it does grow


def plot_depth(ax):
    for key, values in depth_err.items():
        ax.plot(DEPTHS, np.maximum(values, 1e-17), "o-", label=key)
    ax.set_yscale("log")
    ax.set_xlabel("hidden layers (tanh, width 16)")
    ax.set_ylabel("relative error of the gradient")
    ax.set_title("error vs depth")
    ax.legend(fontsize=8)


fig = Figure(figsize=(6, 4), layout="constrained")
plot_depth(fig.add_subplot())
show(fig)

# %% [markdown]
# ## 3. Exactly at a kink
#
# At $z = 0$ ReLU has no derivative; fnn uses $\mathrm{relu}'(0) = 0$, the value `jax.grad(jax.nn.relu)(0.)`
# gives, so the manual and autodiff gradients agree exactly. A central difference at 0 sees neither one-sided
# slope but their average, $(\mathrm{relu}(h) - \mathrm{relu}(-h))/2h = 1/2$. For every elementwise activation:

# %%
from functools import partial

JAX_NN = {
    "identity": lambda z: z, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu, "elu": jax.nn.elu, "gelu": partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": partial(jax.nn.gelu, approximate=True), "softplus": jax.nn.softplus, "swish": jax.nn.swish,
}
h = 1e-6
zero = jnp.zeros((3, 3))  # (the grid's shape: its compiled kernels are reused)


def slope_at_zero(f):
    """jax.grad of an elementwise f at 0."""
    return float(jax.grad(lambda z: f(z).sum())(zero)[0, 0])


print("f'(0) by hand (fnn), by jax.grad of fnn's forward, by jax.grad of the jax.nn function, by central differences")
print(f"{'activation':>12} {'manual':>9} {'jax.grad':>9} {'jax.nn':>9} {'central FD':>11}")
for name in ACTIVATIONS:
    act = fnn.activations.get(name)
    if not act.elementwise:
        continue
    manual = float(act.derivative(zero)[0, 0])
    auto = slope_at_zero(act.forward)
    ref = slope_at_zero(JAX_NN[name]) if name in JAX_NN else float("nan")
    fd = float((act.forward(zero + h) - act.forward(zero - h))[0, 0] / (2 * h))
    print(f"{name:>12} {manual:9.4f} {auto:9.4f} {ref:9.4f} {fd:11.4g}")
    assert manual == auto, name
    assert name not in JAX_NN or manual == ref, name

# %% [markdown]
# In a network, an exact zero pre-activation happens more often than one might think: a zero input row with zero
# biases (fnn initialises biases to 0), or a hidden layer whose units are all off for an example. Here the first
# example is all zeros, so every first-layer ReLU of that example sits exactly at its kink. The central
# differences of the first layer's bias then disagree with manual = autodiff, and only there. `fnn.gradcheck`
# recognises such coordinates — their forward and backward one-sided slopes disagree, which a smooth loss does
# not do — and leaves them out of the finite-difference legs (counted in `report.kinks`) instead of raising a
# false alarm; `manual~autodiff` still covers every coordinate. On a kink the Taylor test cannot pass for any
# gradient (the remainder is first order along most directions), so it is shown but not judged:

# %%

from fnn.numerical import central_and_one_sided

knet = fnn.mlp([3, 4, 2], hidden="relu", output="identity")
kparams = knet.init(jax.random.key(3))
xk = jnp.array([[0.0, 0.0, 0.0], [0.4, -1.2, 0.7]])
yk = jnp.array([[1.0, -1.0], [0.5, 0.2]])
kflat, kunravel = ravel_pytree(kparams)
kobjective = fnn.objective(knet, "mse")
kfd, kinked = central_and_one_sided(lambda t: kobjective(kunravel(t), xk, yk), kflat, np.arange(kflat.size), 1e-6)
kauto = ravel_pytree(fnn.autodiff(knet, kparams, xk, yk, "mse")[1])[0]
bias0 = slice(0, 4)  # layer 0's b in ravel order (layers in turn, keys sorted: b, then w)
print("layer 0 b, autodiff:           ", np.asarray(kauto[bias0]))
print("layer 0 b, central differences:", kfd[bias0])
print("one-sided slopes disagree at:  ", np.flatnonzero(kinked))
assert np.abs(kfd[bias0] - np.asarray(kauto[bias0])).max() > 1e-3  # the differences miss at the kink
kink_report = fnn.gradcheck(knet, kparams, xk, yk, "mse")
print(kink_report)
assert kink_report.ok and kink_report.kinks >= 1
assert all(r.ok for r in kink_report.rows if r.pair == "manual~autodiff")

# %% [markdown]
# ## 4. Exact vs tanh-approximate GELU
#
# fnn's `gelu` is the exact $z\,\Phi(z)$; `gelu_tanh` is the tanh approximation. Note that `jax.nn.gelu`
# *defaults to the approximation* (`approximate=True`). Each record matches its `jax.nn` counterpart to rounding,
# but the two differ by up to about 5e-4 in value — far above float64 rounding, so checking a manual `gelu_tanh`
# against autodiff through an exact `gelu` (or vice versa) fails `gradcheck`'s float64 tolerance of 1e-10.

# %%
z = jnp.linspace(-6, 6, 1201)
gelu, gelu_tanh = fnn.activations.get("gelu"), fnn.activations.get("gelu_tanh")
np.testing.assert_allclose(gelu.forward(z), jax.nn.gelu(z, approximate=False), rtol=1e-15, atol=1e-16)
np.testing.assert_allclose(gelu_tanh.forward(z), jax.nn.gelu(z, approximate=True), rtol=1e-15, atol=1e-16)
# (absolute floor: in the far left tail both derivatives are ~1e-9 and limited by the cancellation in 1 + tanh)
for record, approximate in [(gelu, False), (gelu_tanh, True)]:
    slope = jax.vmap(jax.grad(partial(jax.nn.gelu, approximate=approximate)))(z)
    np.testing.assert_allclose(record.derivative(z), slope, rtol=1e-13, atol=1e-14)
dvalue = np.abs(gelu.forward(z) - gelu_tanh.forward(z))
dslope = np.abs(gelu.derivative(z) - gelu_tanh.derivative(z))
print(f"max |gelu - gelu_tanh| = {dvalue.max():.2e} at z = {float(z[dvalue.argmax()]):+.2f}")
print(f"max |gelu' - gelu_tanh'| = {dslope.max():.2e} at z = {float(z[dslope.argmax()]):+.2f}")

gnet, tnet = (fnn.mlp([3, 3, 3], hidden=a, output="identity") for a in ("gelu", "gelu_tanh"))
gparams = gnet.init(jax.random.key(4))
xg, yg = jax.random.normal(jax.random.key(5), (3, 3)), jax.random.normal(jax.random.key(6), (3, 3))
auto_gelu = flat(fnn.autodiff(gnet, gparams, xg, yg, "mse")[1])
same = rel_err(flat(fnn.backprop(gnet, gparams, xg, yg, "mse")[1]), auto_gelu)
mixed = rel_err(flat(fnn.backprop(tnet, gparams, xg, yg, "mse")[1]), auto_gelu)
print(f"manual gelu vs jax.grad gelu: {same:.1e};   manual gelu_tanh vs jax.grad gelu: {mixed:.1e}")
assert same < 1e-14 and mixed > 1e3 * 1e-10

fig = Figure(figsize=(9, 3.2), layout="constrained")
a0, a1 = fig.subplots(1, 2)
a0.plot(z, gelu.forward(z) - gelu_tanh.forward(z))
a0.set_title("gelu(z) - gelu_tanh(z)")
a1.plot(z, gelu.derivative(z) - gelu_tanh.derivative(z), color="tab:orange")
a1.set_title("gelu'(z) - gelu_tanh'(z)")
for a in (a0, a1):
    a.set_xlabel("z")
    a.axhline(0, color="grey", lw=0.5)
show(fig)

# %% [markdown]
# ## 5. Why the closed-form softmax-cross-entropy delta matters
#
# With $a = \mathrm{softmax}(z)$ and $\mathcal{L} = -\frac1N\sum y \log a$, the output error term is
# $\delta = (a - y)/N$. Three ways to compute it, for logits $z = s\,u$ of growing scale $s$ (rows of $u$ random,
# targets chosen *not* to be the largest logit, so the target's probability underflows):
#
# * **closed form** — fnn's fused delta $(a - y)/N$ (and the loss from log-sum-exp);
# * **chain through fnn's records** — $\partial\mathcal{L}/\partial a = -y/(aN)$, then the softmax Jacobian. Once
#   the target probability underflows below machine epsilon, the cross-entropy clips it (its gradient is 0 there,
#   exactly as `jax.grad` of the clipped loss), so the delta loses its $-y$ term: a wrong, silent zero;
# * **naive autodiff** — `jax.grad` of `-sum(y * log(softmax(z)))`: $\log 0 = -\infty$, and the gradient is NaN.
#
# The reference is `jax.grad` of `-sum(y * jax.nn.log_softmax(z))` in float64.

# %%
SCALES = np.logspace(0, 4, 9)
N, K = 3, 3
u = jax.random.normal(jax.random.key(7), (N, K))
labels = jnp.argmin(u, axis=1)  # the target is the smallest logit
Y = jax.nn.one_hot(labels, K)
softmax, cce = fnn.activations.get("softmax"), fnn.losses.get("categorical_cross_entropy")
fused = fnn.losses.fused(softmax, cce)


def naive_ce(v, y):
    return -jnp.sum(y * jnp.log(jax.nn.softmax(v))) / N


ce_err = {}
for dt, dtype in DTYPES.items():
    rows = {"closed form": [], "chain through records": [], "naive jax.grad": []}
    for s in SCALES:
        z = (s * u).astype(dtype)
        y = Y.astype(dtype)
        reference = jax.grad(lambda v: -jnp.sum(Y * jax.nn.log_softmax(v)) / N)(z.astype(jnp.float64))
        a = softmax.forward(z)
        closed = fused.delta(z, a, y)
        chain = softmax.backward(z, a, cce.grad(a, y))
        naive = jax.grad(naive_ce)(z, y)
        for key, d in zip(rows, [closed, chain, naive], strict=True):
            rows[key].append(rel_err(d, reference) if np.all(np.isfinite(d)) else np.nan)
        loss_closed = float(fused.value(z, y))
        assert np.isfinite(loss_closed)
    ce_err[dt] = rows
    print(dt)
    print(f"{'scale':>22}", " ".join(f"{s:8.0e}" for s in SCALES))
    for key, values in rows.items():
        print(f"{key:>22}", " ".join("     NaN" if np.isnan(v) else f"{v:8.1e}" for v in values))

for dt in DTYPES:
    assert np.nanmax(ce_err[dt]["closed form"]) < (1e-6 if dt == "float32" else 1e-14)
    assert not np.any(np.isnan(ce_err[dt]["closed form"]))
    assert np.isnan(ce_err[dt]["naive jax.grad"][-1])  # NaN at logits of 1e4
    assert ce_err[dt]["chain through records"][-1] > 0.5  # silently wrong

# End to end: fnn.backprop with a softmax output at logits of ±1e4 stays finite and equals autodiff.
big = fnn.mlp([K, K], activations=["softmax"])
bparams = [{"w": 1e4 * jnp.eye(K), "b": jnp.zeros(K)}]
bl, bg = fnn.backprop(big, bparams, u, labels, "sparse_categorical_cross_entropy")
al, ag = fnn.autodiff(big, bparams, u, labels, "sparse_categorical_cross_entropy")
print(f"logits up to {float(jnp.abs(u @ bparams[0]['w']).max()):.0f}: loss {float(bl):.1f}, finite gradients, "
      f"manual vs autodiff {rel_err(flat(bg), flat(ag)):.1e}")
assert np.isfinite(float(bl)) and np.all(np.isfinite(flat(bg))) and rel_err(flat(bg), flat(ag)) < 1e-14


def plot_ce(ax):
    styles = {"float32": "--", "float64": "-"}
    colors = {"closed form": "tab:green", "chain through records": "tab:orange", "naive jax.grad": "tab:red"}
    for dt, rows in ce_err.items():
        for key, values in rows.items():
            v = np.array(values)
            ax.plot(SCALES, np.where(np.isnan(v), np.nan, np.maximum(v, 1e-17)), styles[dt], color=colors[key],
                    marker="o", ms=3, label=f"{key} ({dt})")
            nan = np.isnan(v)
            ax.plot(SCALES[nan], np.full(nan.sum(), 300.0 if dt == "float32" else 30.0),
                    "x" if dt == "float32" else "+", color=colors[key], ms=8)
    ax.axhspan(10, 2000, color="grey", alpha=0.15)
    ax.text(1.1, 300, "NaN (x float32, + float64)", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-17, 2000)
    ax.set_xlabel("logit scale s")
    ax.set_ylabel("relative error of delta")
    ax.set_title("softmax + cross-entropy: output delta")
    ax.legend(fontsize=7)


fig = Figure(figsize=(6.5, 4.2), layout="constrained")
plot_ce(fig.add_subplot())
show(fig)

# %% [markdown]
# ## The picture
#
# Top: manual vs `jax.grad` in float32 and manual vs finite differences in float64, every activation × loss pair.
# Bottom: the error's growth with depth, and the softmax-cross-entropy delta at large logits.

# %% tags=["readme-figure"]
fig = Figure(figsize=(13, 9.5), layout="constrained")
top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1])
axes = top.subplots(1, 2)
for ax, name in zip(axes, ["float32: manual~jax.grad", "float64: manual~finite diff."], strict=True):
    stats.plot_error_heatmap(errors[name], ACTIVATIONS, LOSSES, ax=ax, title=name, colorbar=False, vmin=-17, vmax=0)
top.colorbar(axes[0].images[0], ax=axes, label="log10 relative error", shrink=0.8)
b0, b1 = bottom.subplots(1, 2)
plot_depth(b0)
plot_ce(b1)
show(fig, dpi=80)

# %%
wall, cpu = time.perf_counter() - T0, time.process_time() - CPU0
print(f"notebook ran in {wall:.1f} s wall, {cpu:.1f} s CPU (kernel process)")
