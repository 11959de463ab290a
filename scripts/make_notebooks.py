"""Write the research notebooks in ``examples/notebooks/`` from the cells below.

The notebooks are generated, so they are always clean: no stored outputs, no execution counts, stable cell
ids (a diff shows only real changes). Edit the cells here, then run::

    python scripts/make_notebooks.py           # (re)write examples/notebooks/*.ipynb
    python scripts/make_notebooks.py --check   # exit 1 if a committed notebook differs from this script

Every notebook asserts its key claims in cells (manual gradients equal autodiff within tolerance, ...), so
``tests/test_notebooks.py`` fails when a result is wrong instead of drawing a wrong picture. The cell tagged
``readme-figure`` displays the figure that ``scripts/make_figures.py`` writes to ``docs/figures/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "notebooks"
FIGURE_TAG = "readme-figure"


def md(text: str):
    return ("markdown", text.strip("\n"), ())


def code(text: str, *tags: str):
    return ("code", text.strip("\n"), tags)


def setup(x64: bool) -> tuple:
    flag = (
        'jax.config.update("jax_enable_x64", True)  # float64 available (and the default): set before any array exists\n'
        if x64
        else ""
    )
    return code(
        f'''
import time

T0, CPU0 = time.perf_counter(), time.process_time()
import jax

{flag}import matplotlib

matplotlib.use("Agg")  # headless; figures are shown as PNG below
import io

import jax.numpy as jnp
import numpy as np
from IPython.display import Image, display

import fnn
from fnn import stats

np.set_printoptions(precision=5, suppress=True, linewidth=110)


def show(fig, dpi=110):
    """Display a matplotlib Figure as a PNG (works headless, in Jupyter and in nbclient)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    display(Image(buf.getvalue()))
'''
    )


def footer() -> tuple:
    return code(
        f"""
print(f"notebook ran in {{time.perf_counter() - T0:.1f}} s wall, {{time.process_time() - CPU0:.1f}} s CPU (kernel process)")
"""
    )


# ------------------------------------------------------------------------------------------------------
# backprop_by_hand.ipynb
# ------------------------------------------------------------------------------------------------------

BACKPROP_BY_HAND = [
    md(
        r"""
# Backpropagation by hand: the 4-2-3 network, then a deeper one

The textbook network: 4 inputs, a hidden layer of 2 ReLU units, an output layer of 3 sigmoid units, and the
squared-error cost. In the textbook's notation a single example is a column vector and

$$z_1 = W_1 x + b_1,\quad a_1 = R(z_1),\quad z_2 = W_2 a_1 + b_2,\quad a_2 = \sigma(z_2),\quad
\mathcal{L} = \tfrac12 \lVert y - a_2 \rVert^2,$$

with $W_1$ of shape $2\times4$ (one **row** per hidden neuron) and $W_2$ of shape $3\times2$. The error terms
(deltas) and gradients are

$$\delta_2 = -(y - a_2) \odot \sigma'(z_2),\quad \delta_1 = (W_2^\top \delta_2) \odot R'(z_1),\quad
\frac{\partial\mathcal{L}}{\partial W_l} = \delta_l\, a_{l-1}^\top,\quad \frac{\partial\mathcal{L}}{\partial b_l} = \delta_l .$$

**fnn's layout.** fnn works on row vectors with the batch first: layer $l$ computes `z = a @ w + b` with `w`
of shape `(n_in, n_out)`. So `w1 = W1.T` has shape `(4, 2)`, `w2 = W2.T` has shape `(2, 3)`, a column $x$
($4\times1$) is a batch of one row `x.T` ($1\times4$), every `z`, `a`, `delta` is the transpose of the
textbook's column, and `grads[l]["w"]` is $(\partial\mathcal{L}/\partial W_l)^\top$. The textbook's cost
$\tfrac12\lVert y-a\rVert^2$ (averaged over a batch) is fnn's `"quadratic"` loss; fnn's `"mse"` averages over
the outputs too and has no $\tfrac12$ (see below).
"""
    ),
    setup(x64=True),
    md(
        """
## 1. The numbers, in the textbook's notation (NumPy, column vectors)

The weights are chosen so that the second hidden unit is switched off ($z_1^{(2)} < 0$): its ReLU derivative is
0, so its row of $\\partial\\mathcal{L}/\\partial W_1$ must be zero.
"""
    ),
    code(
        """
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
    print(f"{name} {v.shape}:\\n{v}")
"""
    ),
    md(
        """
## 2. The same network in fnn: `backprop(..., return_trace=True)`

`trace.z[l]`, `trace.a[l]`, `trace.delta[l]` are layer `l`'s pre-activation, activation and error term (fnn
counts layers from 0, the textbook from 1), each of shape `(batch, n_out)`.
"""
    ),
    code(
        """
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
    print(f"   dw     {grads[l]['w'].shape}  = (dL/dW{l + 1})ᵀ\\n{np.asarray(grads[l]['w'])}")

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
"""
    ),
    md(
        """
## 3. Every gradient checked against `jax.grad`

`jax.grad` differentiates the forward pass written directly with `jax.numpy` and `jax.nn`, independently of
fnn's activation records. In float64 the two agree to rounding (relative error around 1e-16).
"""
    ),
    code(
        """
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
"""
    ),
    md(
        """
### `"quadratic"` vs `"mse"`

fnn's `"mse"` is $\\frac{1}{NK}\\sum (a - y)^2$: a mean over the batch **and** the $K = 3$ outputs, without the
$\\tfrac12$. Its gradient is the textbook's scaled by $2/K$; every delta, and so every gradient, scales the same way.
"""
    ),
    code(
        """
_, grads_mse, trace_mse = fnn.backprop(net, params, xb, yb, loss="mse", return_trace=True)
for l in range(2):
    np.testing.assert_allclose(np.asarray(trace_mse.delta[l]), 2 / 3 * np.asarray(trace.delta[l]), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(grads_mse[l]["w"]), 2 / 3 * np.asarray(grads[l]["w"]), rtol=1e-13)
print("mse deltas = 2/3 × quadratic deltas:", np.asarray(trace_mse.delta[1]).ravel(), "vs", np.asarray(trace.delta[1]).ravel())
"""
    ),
    md(
        """
## 4. A deeper network

Four layers of mixed activations, a batch of 16. The delta recursion is the same at every layer,
$\\delta_l = (\\delta_{l+1} W_{l+1}^\\top) \\odot f_l'(z_l)$ in fnn's row layout; we recompute it here from the
trace with each activation's hand-written derivative and compare with `jax.grad` layer by layer.
"""
    ),
    code(
        """
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
    for layer, f in zip(params, [jax.nn.relu, jnp.tanh, lambda z: jax.nn.gelu(z, approximate=False), jax.nn.sigmoid]):
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
worst = max(r for r, p in zip(table["max_rel"], table["pair"]) if p == "manual~autodiff")
print(f"{len(table['layer'])} tidy rows; worst manual~autodiff relative error {worst:.1e}")
"""
    ),
    md(
        """
## 5. The picture

Left: the textbook-shaped gradients of the 4-2-3 network (values written in; the switched-off hidden unit's row
is zero). Right: the three-way gradient check of the deeper network — log10 of the largest relative error per
leaf for each pair of methods (manual backprop, `jax.grad`, central finite differences in float64).
"""
    ),
    code(
        """
from matplotlib.figure import Figure

fig = Figure(figsize=(11, 3.6), layout="constrained")
left, right = fig.subfigures(1, 2, width_ratios=[1.25, 1])
axes = left.subplots(1, 2, width_ratios=[4, 2])
for ax, (name, g) in zip(axes, [("∂L/∂W1  (2×4)", dW1), ("∂L/∂W2  (3×2)", dW2)]):
    lim = np.abs(g).max()
    ax.imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for (i, j), v in np.ndenumerate(g):
        ax.text(j, i, f"{v:+.4f}", ha="center", va="center", fontsize=8, color="white" if abs(v) > 0.6 * lim else "black")
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
""",
        FIGURE_TAG,
    ),
    footer(),
]


# ------------------------------------------------------------------------------------------------------
# gradient_comparison.ipynb
# ------------------------------------------------------------------------------------------------------

GRADIENT_COMPARISON = [
    md(
        r"""
# Manual backprop vs `jax.grad` vs finite differences

Three ways to get the same gradient: fnn's hand-written backward pass (`fnn.backprop`), reverse-mode autodiff
(`fnn.autodiff`, i.e. `jax.grad` of the same loss) and central finite differences
$(\mathcal{L}(\theta + h e_i) - \mathcal{L}(\theta - h e_i)) / 2h$. This notebook measures how far apart they
are for every activation × loss pair in float32 and float64, how the error grows with depth, what happens
exactly at a kink, exact vs tanh-approximate GELU, and why the closed-form softmax-cross-entropy delta matters.

Throughout, the error of a gradient $g$ against a reference $r$ is the norm-wise relative error
$\lVert g - r\rVert_2 / \max(\lVert g\rVert_2, \lVert r\rVert_2)$ over all parameters (0 when both are zero).
"""
    ),
    setup(x64=True),
    code(
        """
from jax.flatten_util import ravel_pytree
from matplotlib.figure import Figure

ACTIVATIONS = fnn.activations.names()  # 13
LOSSES = fnn.losses.names()  # 8
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
# Central differences: the step that balances rounding (eps/h) against truncation (h²) is about eps^(1/3).
STEP = {name: float(jnp.finfo(d).eps) ** (1 / 3) for name, d in DTYPES.items()}


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def rel_err(g, ref):
    g, ref = np.asarray(g, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    scale = max(np.linalg.norm(g), np.linalg.norm(ref))
    return 0.0 if scale == 0 else float(np.linalg.norm(g - ref) / scale)


def finite_differences(net, params, x, y, loss, h):
    \"\"\"Central differences of fnn.objective for every coordinate of params (in the params' dtype).\"\"\"
    f = fnn.objective(net, loss)
    theta, unravel = ravel_pytree(params)
    steps = h * jnp.eye(theta.size, dtype=theta.dtype)
    values = jax.vmap(lambda t: f(unravel(t), x, y))(jnp.concatenate([theta + steps, theta - steps]))
    return np.asarray((values[: theta.size] - values[theta.size :]) / (2 * h), np.float64)


print(f"{len(ACTIVATIONS)} activations × {len(LOSSES)} losses; finite-difference steps {STEP}")
"""
    ),
    md(
        """
## 1. Every activation × loss pair, float32 and float64

A network `[3, 3, 3]` whose hidden layer uses the row's activation. The output layer is what the column's loss
expects: the same activation for `mse` and `quadratic`, `sigmoid` for `binary_cross_entropy`, `softmax` for the
(sparse) categorical cross-entropy (fnn fuses these pairs) and `identity` (logits) for the losses that take
logits. The float32 and float64 runs use *the same numbers* (float32 params, inputs and targets, also held in
float64), so the float64 manual gradient is the exact answer for the float32 run.

Finite differences run in float64 only, as `fnn.gradcheck` runs them: they check the *formulas*, and in float32
they measure mostly their own rounding (shown for one row after the maps).
"""
    ),
    code(
        """
def output_for(activation, loss):
    rec = fnn.losses.get(loss)
    if rec.from_logits:
        return "identity"
    if loss == "binary_cross_entropy":
        return "sigmoid"
    if loss in ("categorical_cross_entropy", "sparse_categorical_cross_entropy"):
        return "softmax"
    return activation


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


MAPS = ["float64: manual~jax.grad", "float32: manual~jax.grad", "float64: manual~finite diff.",
        "float32: manual vs exact"]
errors = {name: np.zeros((len(ACTIVATIONS), len(LOSSES))) for name in MAPS}
autodiff_f32_vs_exact = np.zeros((len(ACTIVATIONS), len(LOSSES)))
manual32 = {}  # (activation, loss) -> float32 manual gradient, reused below
P32 = fnn.mlp([3, 3, 3], dtype=jnp.float32).init(kp)  # every pair's network has these shapes: one draw for all
t = time.perf_counter()
for i, act in enumerate(ACTIVATIONS):
    for j, loss in enumerate(LOSSES):
        grads = {}
        for dt, dtype in DTYPES.items():
            net = fnn.mlp([3, 3, 3], hidden=act, output=output_for(act, loss), dtype=dtype)
            params = jax.tree_util.tree_map(lambda w: w.astype(dtype), P32)
            x, y = X.astype(dtype), targets(loss, dtype)
            grads[dt] = flat(fnn.backprop(net, params, x, y, loss)[1]), flat(fnn.autodiff(net, params, x, y, loss)[1])
            errors[f"{dt}: manual~jax.grad"][i, j] = rel_err(*grads[dt])
            if dt == "float64":
                errors["float64: manual~finite diff."][i, j] = rel_err(grads[dt][0], finite_differences(net, params, x, y, loss, STEP[dt]))
        exact = grads["float64"][0]  # the float64 manual gradient on the float32 run's numbers
        manual32[act, loss] = grads["float32"][0]
        errors["float32: manual vs exact"][i, j] = rel_err(grads["float32"][0], exact)
        autodiff_f32_vs_exact[i, j] = rel_err(grads["float32"][1], exact)
print(f"{len(ACTIVATIONS) * len(LOSSES)} pairs × 2 dtypes in {time.perf_counter() - t:.1f} s")
"""
    ),
    code(
        """
fig = Figure(figsize=(15, 10), layout="constrained")
for ax, (name, e) in zip(fig.subplots(2, 2).ravel(), errors.items()):
    stats.plot_error_heatmap(e, ACTIVATIONS, LOSSES, ax=ax, title=name, colorbar=False, vmin=-17, vmax=0)
fig.colorbar(fig.axes[0].images[0], ax=fig.axes, label="log10 relative error", shrink=0.6)
show(fig, dpi=80)

for name, e in errors.items():
    i, j = np.unravel_index(np.argmax(e), e.shape)
    print(f"{name:29s} worst {e[i, j]:.1e} at {ACTIVATIONS[i]} × {LOSSES[j]}; median {np.median(e):.1e}")
print(f"{'float32: jax.grad vs exact':29s} worst {autodiff_f32_vs_exact.max():.1e}; median {np.median(autodiff_f32_vs_exact):.1e}")

# The claims, asserted: manual = autodiff to rounding in both dtypes; finite differences agree in float64;
# in float32 the manual pass is as close to the exact answer as autodiff.
assert errors["float64: manual~jax.grad"].max() < 1e-13
assert errors["float32: manual~jax.grad"].max() < 1e-5
assert errors["float64: manual~finite diff."].max() < 1e-7
assert errors["float32: manual vs exact"].max() < 1e-5 and autodiff_f32_vs_exact.max() < 1e-5

# Finite differences in float32, for one row: even the best step h ≈ eps^(1/3) leaves errors of 1e-5 to 1e-4.
fd32 = {}
for loss in LOSSES:
    net = fnn.mlp([3, 3, 3], hidden="tanh", output=output_for("tanh", loss), dtype=jnp.float32)
    x, y = X, targets(loss, jnp.float32)
    fd32[loss] = rel_err(manual32["tanh", loss], finite_differences(net, P32, x, y, loss, STEP["float32"]))
print("float32 finite differences vs manual, tanh row:", ", ".join(f"{k} {v:.0e}" for k, v in fd32.items()))
# The noisy leg is finite differences: far worse than the float32 manual pass against the exact answer.
assert min(fd32.values()) > 30 * errors["float32: manual vs exact"].max()
"""
    ),
    md(
        """
**Reading the maps.** Manual and `jax.grad` agree to the last few bits in both dtypes (often bit for bit:
"exact"), and both float32 gradients are within about 1e-7 of the exact answer — the hand-written pass is as
accurate as autodiff. Finite differences are the noisy leg: in float64 they agree to about 1e-10, but in
float32 (the tanh row above) the best step $h \\approx \\epsilon^{1/3} \\approx 5\\cdot10^{-3}$ leaves errors around 1e-4 — and an
activation with a kink or a jump (`relu`, `leaky_relu`, `binary_step`) makes it far worse whenever a step of $h$
crosses the kink (section 3). This is why
`fnn.gradcheck` runs its finite differences in float64 and compares manual with autodiff in the native dtype.
"""
    ),
    md(
        """
## 2. How the error grows with depth

tanh networks of width 16 and 1 to 16 hidden layers, MSE loss, float32 params; the exact answer is the float64
manual gradient on the same numbers (in float64 manual and `jax.grad` agree to ~1e-16 at every depth, as above). Each layer of the backward pass adds a few roundings, so the float32 error grows
slowly with depth — for the manual pass and for autodiff alike.
"""
    ),
    code(
        """
DEPTHS = [1, 2, 4, 8, 16]
xd = jax.random.normal(jax.random.key(1), (32, 8)).astype(jnp.float32)
yd = jax.random.normal(jax.random.key(2), (32, 4)).astype(jnp.float32)
depth_err = {"manual f32 vs exact": [], "jax.grad f32 vs exact": [], "manual vs jax.grad (f32)": []}
# One draw for the deepest net; the net with d hidden layers takes its first d layers and its output layer.
deepest = fnn.mlp([8] + [16] * max(DEPTHS) + [4], hidden="tanh", output="identity", dtype=jnp.float32)
deep_params = deepest.init(jax.random.key(1))
for depth in DEPTHS:
    net32 = fnn.mlp([8] + [16] * depth + [4], hidden="tanh", output="identity", dtype=jnp.float32)
    net64 = fnn.mlp([8] + [16] * depth + [4], hidden="tanh", output="identity", dtype=jnp.float64)
    p32 = deep_params[:depth] + deep_params[-1:]
    p64 = jax.tree_util.tree_map(lambda w: w.astype(jnp.float64), p32)
    x64, y64 = xd.astype(jnp.float64), yd.astype(jnp.float64)
    g32, g64 = fnn.backprop(net32, p32, xd, yd, "mse")[1], fnn.backprop(net64, p64, x64, y64, "mse")[1]
    m32, m64 = flat(g32), flat(g64)
    a32 = flat(fnn.autodiff(net32, p32, xd, yd, "mse")[1])
    for key, e in zip(depth_err, [rel_err(m32, m64), rel_err(a32, m64), rel_err(m32, a32)]):
        depth_err[key].append(e)
    layer_err = [rel_err(flat(a), flat(b)) for a, b in zip(g32, g64)]  # per layer; kept for the deepest net

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
"""
    ),
    md(
        """
## 3. Exactly at a kink

At $z = 0$ ReLU has no derivative; fnn uses $\\mathrm{relu}'(0) = 0$, the value `jax.grad(jax.nn.relu)(0.)`
gives, so the manual and autodiff gradients agree exactly. A central difference at 0 sees neither one-sided
slope but their average, $(\\mathrm{relu}(h) - \\mathrm{relu}(-h))/2h = 1/2$. For every elementwise activation:
"""
    ),
    code(
        """
from functools import partial

JAX_NN = {
    "identity": lambda z: z, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu, "elu": jax.nn.elu, "gelu": partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": partial(jax.nn.gelu, approximate=True), "softplus": jax.nn.softplus, "swish": jax.nn.swish,
}
h = 1e-6
print("f'(0) by hand (fnn), by jax.grad of fnn's forward, by jax.grad of the jax.nn function, by central differences")
print(f"{'activation':>12} {'manual':>9} {'jax.grad':>9} {'jax.nn':>9} {'central FD':>11}")
for name in ACTIVATIONS:
    act = fnn.activations.get(name)
    if not act.elementwise:
        continue
    zero = jnp.zeros((3, 3))  # (the grid's shape: its compiled kernels are reused)
    manual = float(act.derivative(zero)[0, 0])
    auto = float(jax.grad(lambda z: act.forward(z).sum())(zero)[0, 0])
    ref = float(jax.grad(lambda z: JAX_NN[name](z).sum())(zero)[0, 0]) if name in JAX_NN else float("nan")
    fd = float((act.forward(zero + h) - act.forward(zero - h))[0, 0] / (2 * h))
    print(f"{name:>12} {manual:9.4f} {auto:9.4f} {ref:9.4f} {fd:11.4g}")
    assert manual == auto, name
    assert name not in JAX_NN or manual == ref, name
"""
    ),
    md(
        """
In a network, an exact zero pre-activation happens more often than one might think: a zero input row with zero
biases (fnn initialises biases to 0), or a hidden layer whose units are all off for an example. Here the first
example is all zeros, so every first-layer ReLU of that example sits exactly at its kink. `fnn.gradcheck` sees
manual = autodiff, and finite differences disagreeing on the first layer's bias, and only there:
"""
    ),
    code(
        """
knet = fnn.mlp([3, 4, 2], hidden="relu", output="identity")
kparams = knet.init(jax.random.key(3))
xk = jnp.array([[0.0, 0.0, 0.0], [0.4, -1.2, 0.7]])
yk = jnp.array([[1.0, -1.0], [0.5, 0.2]])
kink_report = fnn.gradcheck(knet, kparams, xk, yk, "mse")
print(kink_report)
failing = {(r.layer, r.leaf, r.pair) for r in kink_report.rows if not r.ok}
assert not kink_report.ok
assert failing == {(0, "b", "manual~fd"), (0, "b", "autodiff~fd")}, failing
assert all(r.ok for r in kink_report.rows if r.pair == "manual~autodiff")
"""
    ),
    md(
        """
## 4. Exact vs tanh-approximate GELU

fnn's `gelu` is the exact $z\\,\\Phi(z)$; `gelu_tanh` is the tanh approximation. Note that `jax.nn.gelu`
*defaults to the approximation* (`approximate=True`). Each record matches its `jax.nn` counterpart to rounding,
but the two differ by up to about 5e-4 in value — far above float64 rounding, so checking a manual `gelu_tanh`
against autodiff through an exact `gelu` (or vice versa) fails `gradcheck`'s float64 tolerance of 1e-10.
"""
    ),
    code(
        """
z = jnp.linspace(-6, 6, 1201)
gelu, gelu_tanh = fnn.activations.get("gelu"), fnn.activations.get("gelu_tanh")
np.testing.assert_allclose(gelu.forward(z), jax.nn.gelu(z, approximate=False), rtol=1e-15, atol=1e-16)
np.testing.assert_allclose(gelu_tanh.forward(z), jax.nn.gelu(z, approximate=True), rtol=1e-15, atol=1e-16)
# (absolute floor: in the far left tail both derivatives are ~1e-9 and limited by the cancellation in 1 + tanh)
np.testing.assert_allclose(gelu.derivative(z), jax.vmap(jax.grad(partial(jax.nn.gelu, approximate=False)))(z), rtol=1e-13, atol=1e-14)
np.testing.assert_allclose(gelu_tanh.derivative(z), jax.vmap(jax.grad(partial(jax.nn.gelu, approximate=True)))(z), rtol=1e-13, atol=1e-14)
dvalue = np.abs(gelu.forward(z) - gelu_tanh.forward(z))
dslope = np.abs(gelu.derivative(z) - gelu_tanh.derivative(z))
print(f"max |gelu - gelu_tanh| = {dvalue.max():.2e} at z = {float(z[dvalue.argmax()]):+.2f}")
print(f"max |gelu' - gelu_tanh'| = {dslope.max():.2e} at z = {float(z[dslope.argmax()]):+.2f}")

gnet, tnet = (fnn.mlp([3, 3, 3], hidden=a, output="identity") for a in ("gelu", "gelu_tanh"))
gparams = gnet.init(jax.random.key(4))
xg, yg = jax.random.normal(jax.random.key(5), (3, 3)), jax.random.normal(jax.random.key(6), (3, 3))
same = rel_err(flat(fnn.backprop(gnet, gparams, xg, yg, "mse")[1]), flat(fnn.autodiff(gnet, gparams, xg, yg, "mse")[1]))
mixed = rel_err(flat(fnn.backprop(tnet, gparams, xg, yg, "mse")[1]), flat(fnn.autodiff(gnet, gparams, xg, yg, "mse")[1]))
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
"""
    ),
    md(
        r"""
## 5. Why the closed-form softmax-cross-entropy delta matters

With $a = \mathrm{softmax}(z)$ and $\mathcal{L} = -\frac1N\sum y \log a$, the output error term is
$\delta = (a - y)/N$. Three ways to compute it, for logits $z = s\,u$ of growing scale $s$ (rows of $u$ random,
targets chosen *not* to be the largest logit, so the target's probability underflows):

* **closed form** — fnn's fused delta $(a - y)/N$ (and the loss from log-sum-exp);
* **chain through fnn's records** — $\partial\mathcal{L}/\partial a = -y/(aN)$, then the softmax Jacobian. Once
  the target probability underflows below machine epsilon, the cross-entropy clips it (its gradient is 0 there,
  exactly as `jax.grad` of the clipped loss), so the delta loses its $-y$ term: a wrong, silent zero;
* **naive autodiff** — `jax.grad` of `-sum(y * log(softmax(z)))`: $\log 0 = -\infty$, and the gradient is NaN.

The reference is `jax.grad` of `-sum(y * jax.nn.log_softmax(z))` in float64.
"""
    ),
    code(
        """
SCALES = np.logspace(0, 4, 9)
N, K = 3, 3
u = jax.random.normal(jax.random.key(7), (N, K))
labels = jnp.argmin(u, axis=1)  # the target is the smallest logit
Y = jax.nn.one_hot(labels, K)
softmax, cce = fnn.activations.get("softmax"), fnn.losses.get("categorical_cross_entropy")
fused = fnn.losses.fused(softmax, cce)
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
        naive = jax.grad(lambda v: -jnp.sum(y * jnp.log(jax.nn.softmax(v))) / N)(z)
        for key, d in zip(rows, [closed, chain, naive]):
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
print(f"logits up to {float(jnp.abs(u @ bparams[0]['w']).max()):.0f}: loss {float(bl):.1f}, finite gradients, manual vs autodiff {rel_err(flat(bg), flat(ag)):.1e}")
assert np.isfinite(float(bl)) and np.all(np.isfinite(flat(bg))) and rel_err(flat(bg), flat(ag)) < 1e-14


def plot_ce(ax):
    styles = {"float32": "--", "float64": "-"}
    colors = {"closed form": "tab:green", "chain through records": "tab:orange", "naive jax.grad": "tab:red"}
    for dt, rows in ce_err.items():
        for key, values in rows.items():
            v = np.array(values)
            ax.plot(SCALES, np.where(np.isnan(v), np.nan, np.maximum(v, 1e-17)), styles[dt], color=colors[key], marker="o", ms=3, label=f"{key} ({dt})")
            nan = np.isnan(v)
            ax.plot(SCALES[nan], np.full(nan.sum(), 300.0 if dt == "float32" else 30.0), "x" if dt == "float32" else "+",
                    color=colors[key], ms=8)
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
"""
    ),
    md(
        """
## The picture

Top: manual vs `jax.grad` and manual vs finite differences, float32, every activation × loss pair. Bottom: the
error's growth with depth, and the softmax-cross-entropy delta at large logits.
"""
    ),
    code(
        """
fig = Figure(figsize=(13, 9.5), layout="constrained")
top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1])
axes = top.subplots(1, 2)
for ax, name in zip(axes, ["float32: manual~jax.grad", "float64: manual~finite diff."]):
    stats.plot_error_heatmap(errors[name], ACTIVATIONS, LOSSES, ax=ax, title=name, colorbar=False, vmin=-17, vmax=0)
top.colorbar(axes[0].images[0], ax=axes, label="log10 relative error", shrink=0.8)
b0, b1 = bottom.subplots(1, 2)
plot_depth(b0)
plot_ce(b1)
show(fig, dpi=80)
""",
        FIGURE_TAG,
    ),
    footer(),
]

# ------------------------------------------------------------------------------------------------------
# per_example_gradients.ipynb
# ------------------------------------------------------------------------------------------------------

PER_EXAMPLE_GRADIENTS = [
    md(
        r"""
# Per-example gradients while training on the digits

`fnn.per_example_grads` gives every example's own gradient from one batched backward pass (the outer product
$N\, a_{l-1}[n] \otimes \delta_l[n]$ per layer). From a batch of them `fnn.stats` computes, per layer, the
per-example gradient norms $\lVert g_n\rVert$, the mean gradient $\bar g$, the trace of the gradient covariance
$\operatorname{tr}\Sigma$ and the signal-to-noise ratio $\mathrm{SNR} = \lVert\bar g\rVert^2/\operatorname{tr}\Sigma$.

We train a `[64, 32, 32, 10]` ReLU network on the 8×8 digits shipped with fnn, and after every epoch measure these
on a fixed probe batch of 512 training examples, together with the spread of each layer's error terms (deltas).
Then: how the SNR of a mini-batch gradient grows with the batch size.
"""
    ),
    setup(x64=False),
    code(
        """
x, y = fnn.digits()
(x_train, y_train), (x_test, y_test) = fnn.train_test_split(x, y, test_fraction=0.2, key=jax.random.key(0))
LOSS = "sparse_categorical_cross_entropy"
net = fnn.mlp([64, 32, 32, 10], hidden="relu", output="softmax")
params = net.init(jax.random.key(1))
LAYERS = ["layer 0 (64→32)", "layer 1 (32→32)", "layer 2 (32→10)"]
xt, yt = jnp.asarray(x_train), jnp.asarray(y_train)
x_probe, y_probe = xt[:512], yt[:512]
print(f"train {x_train.shape}, test {x_test.shape}; {sum(p.size for layer in params for p in layer.values())} parameters")


@jax.jit
def probe(params):
    \"\"\"Per-example gradients, the batch gradient and the deltas of the probe batch.\"\"\"
    per_example = fnn.per_example_grads(net, params, x_probe, y_probe, LOSS)
    _, grads, trace = fnn.backprop(net, params, x_probe, y_probe, LOSS, return_trace=True)
    return per_example, grads, trace.delta


per_example, grads, deltas = probe(params)
s0 = stats.gradient_stats(per_example)
# Every fnn loss is a mean over the batch, so the mean of the per-example gradients is the batch gradient,
# and each example's gradient is what backprop gives for that example alone.
for mean_leaf, batch_leaf in zip(jax.tree_util.tree_leaves(s0["mean"]), jax.tree_util.tree_leaves(grads)):
    np.testing.assert_allclose(mean_leaf, np.asarray(batch_leaf), rtol=2e-5, atol=1e-7)
_, g7 = fnn.backprop(net, params, x_probe[7], y_probe[7], LOSS)
for one, row in zip(jax.tree_util.tree_leaves(g7), jax.tree_util.tree_leaves(per_example)):
    np.testing.assert_allclose(np.asarray(row[7]), np.asarray(one), rtol=2e-5, atol=1e-7)
print("mean of per-example gradients == batch gradient; row 7 == backprop of example 7 alone")
print("at init: SNR per layer", s0["snr"].round(4), " median ‖g_n‖ per layer", np.median(s0["norms"], axis=0).round(3))
show(stats.plot_gradient_stats(s0, labels=LAYERS, title="at initialisation"))
"""
    ),
    md(
        """
## Training, with the statistics recorded after every epoch

Plain mini-batch SGD (`fnn.sgd_step`, learning rate 0.1, batch 32). The deltas are reported per example
(`delta_spread(..., per_example=True)` multiplies the batch-mean deltas by $N$).
"""
    ),
    code(
        """
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
"""
    ),
    code(
        """
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
"""
    ),
    md(
        r"""
**What the curves say.** Per-example gradient norms first grow (the network leaves its near-uniform initial
output) and then the median shrinks by more than an order of magnitude as examples get fitted — while the 90th
percentile stays near its starting value: the few examples the network still gets wrong keep large gradients. The per-example SNR stays
around $10^{-2}$: a single example's gradient is mostly noise, and $1/\mathrm{SNR}$ — about a hundred — is the
batch size at which signal and noise are equal (the "simple noise scale" of McCandlish et al., 2018). About a
quarter of each ReLU layer's deltas are exactly zero: the unit is off for that example and passes no error back.

## SNR vs batch size

For the trained network, take every training example's gradient: their mean $\mu$ and covariance $\Sigma$ are
exact for the training set. A mini-batch of $B$ examples drawn with replacement has mean $\mu$ and covariance
$\Sigma/B$, so its SNR is exactly $B$ times the per-example SNR. We check this by drawing 400 mini-batches for
each $B$ and measuring the SNR of their gradients with `stats.gradient_snr(..., debias=True)` (an unbiased
estimate of $\lVert\mu\rVert^2$: $\lVert\bar g\rVert^2$ alone would add $\operatorname{tr}\Sigma/M$).
"""
    ),
    code(
        """
per_example_all = jax.jit(lambda p: fnn.per_example_grads(net, p, xt, yt, LOSS))(params)
full = stats.gradient_stats(per_example_all, ddof=0)
snr1 = full["snr"]
print("per-example SNR on the whole training set, per layer:", snr1.round(4), f"(all parameters {full['snr_total']:.4f})")

n, M = len(xt), 400
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
rng = np.random.default_rng(0)
layer_matrices = [np.concatenate([np.asarray(leaf).reshape(n, -1) for leaf in jax.tree_util.tree_leaves(layer)], axis=1)
                  for layer in per_example_all]
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
"""
    ),
    md(
        """
## The picture

Per-example gradient norms and per-layer SNR over training, and the SNR of a mini-batch gradient against the
batch size.
"""
    ),
    code(
        """
fig = Figure(figsize=(15, 4), layout="constrained")
axes = fig.subplots(1, 3)
plot_training(axes[:2])
plot_batch(axes[2])
show(fig, dpi=80)
""",
        FIGURE_TAG,
    ),
    footer(),
]

NOTEBOOKS = {
    "backprop_by_hand.ipynb": BACKPROP_BY_HAND,
    "gradient_comparison.ipynb": GRADIENT_COMPARISON,
    "per_example_gradients.ipynb": PER_EXAMPLE_GRADIENTS,
}


def build(cells, stem: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source, tags) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell.id = f"{stem.replace('_', '-')}-{i:02d}"
        if tags:
            cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(NOTEBOOKS[name], Path(name).stem)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed notebook is out of date")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    stale = []
    for name in NOTEBOOKS:
        path = OUT / name
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date (run python scripts/make_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
