"""Tests for fnn.second_order (fnn.curvature's second-order quantities) and the second-order rules in the
activation, loss and layer records.

References, all independent of the hand-written passes and in float64:

* activations and losses: ``jax.grad`` of each record's first derivative (at the kinks too), ``jax.jvp`` of
  the softmax VJPs, ``jax.hessian`` of each loss (per-example blocks);
* products: ``jax.jvp`` of ``jax.grad`` of :func:`fnn.objective` for ``H v``, and ``Jᵀ H J v`` built from
  ``jax.jvp``/``jax.vjp`` of the forward pass and ``jax.hessian`` of the loss for ``G v`` (relative 1e-10);
* diag_ggn / kflr: the diagonal and the bias blocks of the explicit GGN matrix (every ``G e_i``);
  top_eigenvalue: ``numpy.linalg.eigvalsh`` of ``jax.hessian``;
* the Monte-Carlo GGN and KFAC: the exact ones, within 5 standard errors of the sampled mean (and the error
  shrinking as the samples grow);
* sharded over 4 forced host devices: ``tests/test_parallel.py`` (``test_sharded_second_order_...``).
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import activations as A
from fnn import curvature as C
from fnn import losses as Ls

L = fnn.layers
tree_map = jax.tree_util.tree_map
SPARSE = "sparse_categorical_cross_entropy"


def rel(a, b) -> float:
    fa, fb = jax.flatten_util.ravel_pytree(a)[0], jax.flatten_util.ravel_pytree(b)[0]
    return float(jnp.max(jnp.abs(fa - fb)) / jnp.max(jnp.abs(fb)))


#: XLA's CPU backend at optimisation level 0, no fusion emitters (as tests/test_backprop.py): these tests are
#: compile-bound, and one program per case holding fnn's and the reference's computations compiles fastest.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def fast(f, *args):
    return jax.jit(f).lower(*args).compile(FAST_COMPILE)(*args)


def targets(loss: str, rng, n: int, k: int):
    if Ls.get(loss).sparse:
        return jnp.asarray(rng.integers(0, k, n))
    if loss in ("binary_cross_entropy", "sigmoid_binary_cross_entropy"):
        return jnp.asarray(rng.integers(0, 2, (n, k)), jnp.float64)
    if "categorical" in loss or "softmax" in loss:
        return jax.nn.one_hot(rng.integers(0, k, n), k, dtype=jnp.float64)
    return jnp.asarray(rng.normal(size=(n, k)))


def perturbed(net, seed: int):
    """Params away from init (biases non-zero, so no pre-activation sits at a kink by construction)."""
    rng = np.random.default_rng(seed)
    return tree_map(lambda p: p + 0.3 * jnp.asarray(rng.normal(size=p.shape)), net.init(jax.random.key(seed)))


def direction(params, seed: int):
    rng = np.random.default_rng(seed)
    return tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)


def logits_head(net, loss):
    loss = Ls.get(loss)
    fused = Ls.fused(net.output, loss) if net.layers[-1].activation is not None else None
    return fused if fused is not None else loss, fused is not None


def what_the_loss_sees(net, loss, key=None):
    """``params, x[, rows] -> f``: the logits of a fused pair, else the output (autodiff builds the GGN from this);
    ``rows``: the examples' rows in the batch (their dropout masks)."""
    _, fused = logits_head(net, loss)

    def f(params, x, rows=None):
        out, records = fnn._layer.forward(net.layers, params, x, fnn._layer.Context(key is not None, key, None, rows))
        return records[-1][2]["z"] if fused else out
    return f


def diag_ggn_reference(net, params, x, y, loss, key=None):
    """``Σ_n Σ_c (J_nᵀ S_n[:, c])²`` by ``jax.vjp`` of each example's own forward pass (its dropout row), with the
    loss record's factor ``S`` (itself checked against jax.hessian above)."""
    f = what_the_loss_sees(net, loss, key)
    head, _ = logits_head(net, loss)
    s = head.sqrt_hessian(f(params, x), y)  # (N, K, C)

    def example(xn, sn, row):
        _, pullback = jax.vjp(lambda p: f(p, xn[None], row[None]), params)
        return jax.vmap(lambda col: tree_map(jnp.square, pullback(col[None])[0]))(sn.T)

    per = jax.vmap(example)(x, s, jnp.arange(x.shape[0], dtype=jnp.int32))
    return tree_map(lambda t: jnp.sum(t, axis=(0, 1)), per)


def ggn_reference(net, params, x, y, loss, v, key=None, penalty=None):
    """``Jᵀ H J v`` by autodiff: J v by jax.jvp, H by jax.grad's jvp of the loss in f, Jᵀ by jax.vjp."""
    f = what_the_loss_sees(net, loss, key)
    head, _ = logits_head(net, loss)
    pred, jv = jax.jvp(lambda p: f(p, x), (params,), (v,))
    hjv = jax.jvp(jax.grad(lambda q: head.value(q, y)), (pred,), (jv,))[1]
    out = jax.vjp(lambda p: f(p, x), params)[1](hjv)[0]
    if penalty is not None:
        out = tree_map(jnp.add, out, jax.jvp(jax.grad(penalty.value), (params,), (v,))[1])
    return out


def hvp_reference(net, params, x, y, loss, v, key=None, penalty=None):
    obj = fnn.objective(net, loss, penalty=penalty)
    return jax.jvp(jax.grad(lambda p: obj(p, x, y, key=key)), (params,), (v,))[1]


def ggn_matrix(net, params, x, y, loss, penalty=None):
    """The explicit GGN, column by column (``G e_i`` by the autodiff reference)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    column = lambda e: jax.flatten_util.ravel_pytree(ggn_reference(net, params, x, y, loss, unravel(e),
                                                                   penalty=penalty))[0]
    return jax.vmap(column)(jnp.eye(flat.size)), unravel


# --- activation and loss records --------------------------------------------------------------------------

KINKS = np.array([-3.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 2.0, 4.0])


@pytest.mark.parametrize("name", [n for n in A.names() if A.get(n).elementwise])
def test_second_derivative_equals_grad_of_first(name, x64):
    """f'' as written equals jax.grad of f' as written, at the kinks' conventions too (relu''(0) = 0,
    elu''(0) = 1); jvp and second are f'·v and g·f''·v."""
    act = A.get(name)
    z = jnp.asarray(KINKS)
    np.testing.assert_allclose(act.second_derivative(z), jax.vmap(jax.grad(act.derivative))(z), rtol=1e-12,
                               atol=1e-15)
    v, g = jnp.cos(z), jnp.sin(3 * z) + 2
    a = act.forward(z)
    np.testing.assert_allclose(act.jvp(z, a, v), jax.jvp(act.forward, (z,), (v,))[1], rtol=1e-12, atol=1e-15)
    second = jax.jvp(lambda q: act.backward(q, act.forward(q), g), (z,), (v,))[1]
    np.testing.assert_allclose(act.second(z, a, g, v), second, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_vector_activation_jvp_and_second(name, x64):
    act = A.get(name)
    rng = np.random.default_rng(0)
    z, v, g = (jnp.asarray(rng.normal(size=(4, 5))) for _ in range(3))
    a = act.forward(z)
    np.testing.assert_allclose(act.jvp(z, a, v), jax.jvp(act.forward, (z,), (v,))[1], rtol=1e-12, atol=1e-15)
    second = jax.jvp(lambda q: act.backward(q, act.forward(q), g), (z,), (v,))[1]
    np.testing.assert_allclose(act.second(z, a, g, v), second, rtol=1e-12, atol=1e-15)


def loss_inputs(name, rng, n=5, k=3):
    loss = Ls.get(name)
    p = rng.normal(size=(n, k)) if loss.from_logits or name in ("mse", "quadratic") else rng.uniform(.05, .9, (n, k))
    y = targets(name, rng, n, k)
    if name in ("binary_cross_entropy", "categorical_cross_entropy"):
        y = jnp.asarray(rng.uniform(0, 1, (n, k)))  # soft targets: H = diag(y/p² + ...) in full generality
    return jnp.asarray(p), y


@pytest.mark.parametrize("name", Ls.names())
def test_loss_hessian_and_its_factor(name, x64):
    """hvp = jax.hessian's per-example blocks applied to v (the loss is a sum over examples: no cross blocks),
    and sqrt_hessian S has S Sᵀ = each block, the 1/N included."""
    loss = Ls.get(name)
    rng = np.random.default_rng(1)
    p, y = loss_inputs(name, rng)
    v = jnp.asarray(rng.normal(size=p.shape))
    h = jax.hessian(loss.value)(p, y)  # (N, K, N, K)
    n = p.shape[0]
    blocks = jnp.stack([h[i, :, i, :] for i in range(n)])
    off = h.at[jnp.arange(n), :, jnp.arange(n), :].set(0)
    assert float(jnp.max(jnp.abs(off))) == 0.0
    np.testing.assert_allclose(loss.hvp(p, y, v), jnp.einsum("nkj,nj->nk", blocks, v), rtol=1e-12, atol=1e-15)
    s = loss.sqrt_hessian(p, y)
    np.testing.assert_allclose(jnp.einsum("nkc,njc->nkj", s, s), blocks, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", [n for n in Ls.names() if Ls.get(n).sample_sqrt_hessian is not None])
def test_sampled_factor_is_unbiased(name, x64):
    """E[S Sᵀ] = the Hessian block: the mean over 4000 draws lies within 5 standard errors, every entry."""
    loss = Ls.get(name)
    p, y = loss_inputs(name, np.random.default_rng(2))
    m = 4000
    s = loss.sample_sqrt_hessian(jax.random.key(0), p, y, m)  # (N, K, m): each column one draw (scaled 1/√m)
    outer = jnp.einsum("nkc,njc->cnkj", s, s) * m  # one draw's S Sᵀ each
    blocks = jnp.einsum("nkc,njc->nkj", loss.sqrt_hessian(p, y), loss.sqrt_hessian(p, y))
    mean, se = jnp.mean(outer, axis=0), jnp.std(outer, axis=0) / np.sqrt(m)
    assert bool(jnp.all(jnp.abs(mean - blocks) <= 5 * se + 1e-12))


# --- the products against autodiff: every activation x every loss -----------------------------------------

NATURAL = {name: Ls.natural_output(name) or "identity" for name in Ls.names()}
HIDDEN = [n for n in A.names() if n != "binary_step"]  # binary_step: zero derivatives, covered in the chain


def chain(output: str):
    """One hidden layer per activation (13 of them, softmax and log-softmax included), then the output."""
    acts = [*HIDDEN, "binary_step"]
    return fnn.serial(*[L.Dense(4, a) for a in acts], L.Dense(3, output), input_shape=(3,))


@pytest.mark.parametrize("loss", Ls.names())
def test_products_every_activation_in_one_chain(loss, x64):
    """A 14-layer chain with every activation once: H v and G v equal autodiff's (relative 1e-10)."""
    net = chain(NATURAL[loss])
    rng = np.random.default_rng(3)
    params, x = perturbed(net, 3), jnp.asarray(rng.normal(size=(6, 3)))
    y, v = targets(loss, rng, 6, 3), direction(params, 4)
    assert_products(net, params, x, y, loss, v)


def assert_products(net, params, x, y, loss, v, key=None, penalty=None):
    """fnn's H v and G v against autodiff's, computed in one compiled program (relative 1e-10)."""
    def both(p, v):
        return (C.hessian_vector_product(net, p, x, y, loss, v, key=key, penalty=penalty),
                hvp_reference(net, p, x, y, loss, v, key, penalty),
                C.ggn_vector_product(net, p, x, y, loss, v, key=key, penalty=penalty),
                ggn_reference(net, p, x, y, loss, v, key, penalty))
    hv, hv_ref, gv, gv_ref = fast(both, params, v)
    assert rel(hv, hv_ref) < 1e-10 and rel(gv, gv_ref) < 1e-10, (rel(hv, hv_ref), rel(gv, gv_ref))


@pytest.mark.parametrize("depth", [1, 2])
def test_products_each_activation_at_two_depths(depth, x64):
    """Every activation alone in 1 and 2 hidden layers (MSE on an identity output, so the hidden layers' second
    derivatives are all the curvature there is besides the loss's): H v and G v equal autodiff's; one program."""
    rng = np.random.default_rng(5 + depth)
    nets = {h: fnn.mlp([3, *[4] * depth, 2], hidden=h, output="identity") for h in HIDDEN}
    params = {h: perturbed(net, 6) for h, net in nets.items()}
    x, y = jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(5, 2)))
    v = {h: direction(p, 7) for h, p in params.items()}

    def everything(params, v):
        return {h: (C.hessian_vector_product(net, params[h], x, y, "mse", v[h]),
                    hvp_reference(net, params[h], x, y, "mse", v[h]),
                    C.ggn_vector_product(net, params[h], x, y, "mse", v[h]),
                    ggn_reference(net, params[h], x, y, "mse", v[h])) for h, net in nets.items()}
    for h, (hv, hv_ref, gv, gv_ref) in fast(everything, params, v).items():
        assert rel(hv, hv_ref) < 1e-10 and rel(gv, gv_ref) < 1e-10, h


def test_products_at_relu_kinks(x64):
    """Pre-activations exactly 0 (zero input, zero biases): relu''s conventions give autodiff's products."""
    net = fnn.mlp([3, 4, 4, 2], hidden="relu", output="identity")
    params = tree_map(jnp.zeros_like, net.init(jax.random.key(0)))
    params[1]["w"] = jnp.ones((4, 4))
    x, y = jnp.zeros((4, 3)), jnp.ones((4, 2))
    v = direction(params, 1)
    assert_products(net, params, x, y, "mse", v)


LAYER_NETS = {
    "residual_dropout_penalty": lambda: fnn.serial(L.Dense(5, "tanh"), L.Dropout(0.3),
                                                   L.Residual(L.Dense(5, "elu"), "swish"), L.Dense(3), "softmax",
                                                   input_shape=(4,)),
    "cnn_pools": lambda: fnn.serial(L.Conv2D(3, 3, stride=2, activation="tanh"), L.MaxPool2D(2, stride=1),
                                    L.Conv2D(2, 2, padding="VALID", activation="softplus"), L.AvgPool2D(1),
                                    L.Flatten(), L.Dense(3, "softmax"), input_shape=(6, 6, 2)),
    "cnn_same_padding": lambda: fnn.serial(L.Conv2D(2, 3, padding="SAME", activation="gelu"),
                                           L.AvgPool2D(2, padding="SAME"), L.Flatten(), L.Dense(3),
                                           input_shape=(5, 5, 1)),
}


@pytest.mark.parametrize("name", list(LAYER_NETS))
def test_products_every_layer_kind(name, x64):
    """Dropout (training mode: the masks of the key), Residual, Conv2D, both pools, Flatten; an L2+L1 penalty."""
    net = LAYER_NETS[name]()
    rng = np.random.default_rng(8)
    params = perturbed(net, 9)
    x = jnp.asarray(rng.normal(size=(3, *net.input_shape)))
    loss = SPARSE if net.output.name == "softmax" else "mse"
    y = targets(loss, rng, 3, 3)
    key = jax.random.key(4) if net.stochastic else None
    pen = fnn.penalties.combine(fnn.penalties.l2(0.1), fnn.penalties.l1(0.01)) if key is not None else None
    assert_products(net, params, x, y, loss, direction(params, 10), key, pen)


# --- diag_ggn, kflr, kfac, top_eigenvalue ------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["mse", SPARSE, "binary_cross_entropy", "softmax_cross_entropy", "quadratic"])
def test_diag_ggn_is_the_ggn_diagonal(loss, x64):
    """The diagonal of the explicit GGN matrix (every G e_i by autodiff), a penalty's Hessian included."""
    net = fnn.mlp([3, 4, 3], hidden="tanh", output=NATURAL[loss])
    rng = np.random.default_rng(11)
    params, x = perturbed(net, 12), jnp.asarray(rng.normal(size=(5, 3)))
    y = targets(loss, rng, 5, 3)
    pen = fnn.penalties.l2(0.2)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    got, diag = fast(lambda p: (C.diag_ggn(net, p, x, y, loss, penalty=pen),
                                jnp.diag(ggn_matrix(net, p, x, y, loss, penalty=pen)[0])), params)
    assert rel(got, unravel(diag)) < 1e-10


@pytest.mark.parametrize("name", ["cnn_pools", "residual_dropout_penalty"])
def test_diag_ggn_conv_and_dropout(name, x64):
    """Conv2D (per-example factors over positions) and dropout in training mode (dropout_key=): the per-example
    autodiff reference."""
    net = LAYER_NETS[name]()
    key = jax.random.key(1) if net.stochastic else None
    rng = np.random.default_rng(13)
    params = perturbed(net, 14)
    x, y = jnp.asarray(rng.normal(size=(3, *net.input_shape))), jnp.asarray([0, 2, 1])
    got, ref = fast(lambda p: (C.diag_ggn(net, p, x, y, SPARSE, dropout_key=key),
                               diag_ggn_reference(net, p, x, y, SPARSE, key)), params)
    assert rel(got, ref) < 1e-10


def test_diag_ggn_monte_carlo_converges(x64):
    """The MC estimate is unbiased: 400 one-sample estimates (keys 0..399) average to the exact diagonal within
    5 standard errors per entry, and 4096 samples are closer than 64 (the error falls like 1/√m)."""
    net = fnn.mlp([3, 4, 3], hidden="tanh", output="softmax")
    rng = np.random.default_rng(15)
    params, x, y = perturbed(net, 16), jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.integers(0, 3, 6))
    flat = lambda t: jax.flatten_util.ravel_pytree(t)[0]

    def estimates(p, keys):
        exact = flat(C.diag_ggn(net, p, x, y, SPARSE))
        one = jax.vmap(lambda k: flat(C.diag_ggn(net, p, x, y, SPARSE, mc_samples=1, key=k)))(keys)
        many = [flat(C.diag_ggn(net, p, x, y, SPARSE, mc_samples=m, key=jax.random.key(7))) for m in (64, 4096)]
        return exact, one, many

    exact, one, many = fast(estimates, params, jax.random.split(jax.random.key(0), 400))
    mean, se = jnp.mean(one, axis=0), jnp.std(one, axis=0) / np.sqrt(400)
    assert bool(jnp.all(jnp.abs(mean - exact) <= 5 * se + 1e-14))
    errs = [float(jnp.max(jnp.abs(m - exact))) for m in many]
    assert errs[1] < errs[0] / 3, errs


def test_kflr_factors(x64):
    """A = the mean of aaᵀ over the batch; G = the GGN block of the layer's bias (∂z/∂b = I, so Σ_n J_nᵀH_nJ_n
    restricted to b is exactly Σ_{n,c} δδᵀ); the bias gets G alone; layers without params {}."""
    net = fnn.serial(L.Dense(4, "tanh"), L.Dropout(0.0), L.Dense(3, "softmax"), input_shape=(3,))
    rng = np.random.default_rng(17)
    params, x, y = perturbed(net, 18), jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.integers(0, 3, 5))
    k, g = fast(lambda p: (C.kflr(net, p, x, y, SPARSE), ggn_matrix(net, p, x, y, SPARSE)[0]), params)
    assert k[1] == {} and set(k[0]) == {"w", "b"} and set(k[0]["b"]) == {"G"}
    sizes = [4, 3 * 4, 3, 4 * 3]  # flattened order: 0.b, 0.w, 2.b, 2.w (ravel_pytree sorts dict keys)
    offsets = np.cumsum([0, *sizes])
    a0 = jnp.tanh(x @ params[0]["w"] + params[0]["b"][None])
    for layer, b_at, inputs in ((0, 0, x), (2, 2, a0)):
        sl = slice(offsets[b_at], offsets[b_at + 1])
        np.testing.assert_allclose(k[layer]["b"]["G"], g[sl, sl], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(k[layer]["w"]["G"], g[sl, sl], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(k[layer]["w"]["A"], inputs.T @ inputs / 5, rtol=1e-12)


def test_kfac_is_unbiased_for_kflr(x64):
    net = fnn.mlp([3, 4, 3], hidden="sigmoid", output="softmax")
    rng = np.random.default_rng(19)
    params, x, y = perturbed(net, 20), jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.integers(0, 3, 6))
    exact, draws = fast(lambda p, keys: (C.kflr(net, p, x, y, SPARSE),
                                         jax.vmap(lambda k: C.kfac(net, p, x, y, SPARSE, key=k))(keys)),
                        params, jax.random.split(jax.random.key(1), 400))
    for layer in (0, 1):
        np.testing.assert_array_equal(draws[layer]["w"]["A"][0], exact[layer]["w"]["A"])
        g = draws[layer]["w"]["G"]
        mean, se = jnp.mean(g, axis=0), jnp.std(g, axis=0) / np.sqrt(400)
        assert bool(jnp.all(jnp.abs(mean - exact[layer]["w"]["G"]) <= 5 * se + 1e-14))


@pytest.mark.parametrize("matrix, method", [("hessian", "lanczos"), ("ggn", "lanczos"), ("hessian", "power")])
def test_top_eigenvalue(matrix, method, x64):
    """Power iteration on the products: the eigenvalue of largest magnitude of jax.hessian (or the explicit
    GGN), to the tolerance; the vector is a unit eigenvector; iterations and convergence reported; a warm
    start from the answer converges at once."""
    net = fnn.mlp([3, 5, 3], hidden="tanh", output="softmax")
    rng = np.random.default_rng(21)
    params, x, y = perturbed(net, 22), jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.integers(0, 3, 8))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    obj = fnn.objective(net, SPARSE)

    def run(p):
        m = jax.hessian(lambda u: obj(unravel(u), x, y))(flat) if matrix == "hessian" else ggn_matrix(net, p, x, y,
                                                                                                         SPARSE)[0]
        kw = dict(matrix=matrix, method=method)
        e = C.top_eigenvalue(net, p, x, y, SPARSE, key=jax.random.key(0), tol=1e-10,
                             max_iterations=3000 if method == "power" else 38, **kw)
        return m, e, C.top_eigenvalue(net, p, x, y, SPARSE, init=e.vector, tol=1e-6, **kw)

    m, e, warm = fast(run, params)
    w = np.linalg.eigvalsh(np.asarray(m))
    top = w[np.argmax(np.abs(w))]
    assert bool(e.converged) and 2 <= int(e.iterations) < 3000 and float(e.tol) == 1e-10
    if method == "lanczos":  # 38 params: exact after at most 38 products, in practice far fewer
        assert int(e.iterations) < 38
    assert abs(float(e.value) - top) <= 1e-6 * abs(top)
    u = jax.flatten_util.ravel_pytree(e.vector)[0]
    assert abs(float(jnp.linalg.norm(u)) - 1) < 1e-12
    assert float(jnp.linalg.norm(m @ u - top * u)) < 1e-3 * abs(top)
    assert int(warm.iterations) <= 3 and abs(float(warm.value) - top) <= 1e-5 * abs(top)


# --- under jit, lax.scan and vmap ---------------------------------------------------------------------------

def test_jit_scan_and_vmap(x64):
    """Every function under jax.jit equals its eager call; the top eigenvalue tracked inside a lax.scan of
    gradient-descent steps equals a Python loop of the same steps; vmapped over an ensemble's params equals a
    loop over the members."""
    net = fnn.mlp([3, 4, 2], hidden="tanh", output="softmax")
    rng = np.random.default_rng(23)
    params, x, y = perturbed(net, 24), jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.integers(0, 2, 6))
    v = direction(params, 25)
    calls = {
        "hvp": lambda p: C.hessian_vector_product(net, p, x, y, SPARSE, v),
        "ggnvp": lambda p: C.ggn_vector_product(net, p, x, y, SPARSE, v),
        "diag_ggn": lambda p: C.diag_ggn(net, p, x, y, SPARSE),
        "kflr": lambda p: C.kflr(net, p, x, y, SPARSE),
        "kfac": lambda p: C.kfac(net, p, x, y, SPARSE, key=jax.random.key(0)),
        "top": lambda p: C.top_eigenvalue(net, p, x, y, SPARSE, key=jax.random.key(1), tol=1e-8).value,
    }
    jitted = fast(lambda p: {name: f(p) for name, f in calls.items()}, params)
    for name in ("hvp", "kflr"):  # eager (op by op) against the jitted program
        assert rel(jitted[name], calls[name](params)) < 1e-12, name

    def step(p, _):
        _, g = fnn.backprop(net, p, x, y, SPARSE)
        top = C.top_eigenvalue(net, p, x, y, SPARSE, key=jax.random.key(1), tol=1e-8).value
        return tree_map(lambda a, b: a - 0.5 * b, p, g), top

    _, scanned = fast(lambda p: jax.lax.scan(step, p, None, length=2), params)
    one_step = jax.jit(step).lower(params, None).compile(FAST_COMPILE)
    p, looped = params, []
    for _ in range(2):
        p, top = one_step(p, None)
        looped.append(top)
    np.testing.assert_allclose(scanned, jnp.stack(looped), rtol=1e-10)
    assert float(looped[0]) == pytest.approx(float(jitted["top"]), rel=1e-10)

    members = [perturbed(net, s) for s in (30, 31)]
    stacked = tree_map(lambda *t: jnp.stack(t), *members)
    names = ("hvp", "kfac", "top")
    batched, single = fast(lambda s, ms: ({n: jax.vmap(calls[n])(s) for n in names},
                                          [{n: calls[n](m) for n in names} for m in ms]), stacked, members)
    for i in range(len(members)):
        for name in names:
            assert rel(tree_map(lambda t, i=i: t[i], batched[name]), single[i][name]) < 1e-10, name


# --- errors -------------------------------------------------------------------------------------------------

def test_errors_name_what_is_wrong(x64):
    net = fnn.mlp([3, 4, 2], hidden="tanh", output="softmax")
    params, x, y = net.init(jax.random.key(0)), jnp.ones((4, 3)), jnp.asarray([0, 1, 0, 1])
    v = direction(params, 0)
    ln = fnn.serial(L.Dense(4), L.LayerNorm(), L.Dense(2, "softmax"), input_shape=(3,))
    with pytest.raises(ValueError, match=r"layer 1 \(LayerNorm\) has no second-order \(R-operator\) rules"):
        C.hessian_vector_product(ln, ln.init(jax.random.key(0)), x, y, SPARSE, direction(ln.init(jax.random.key(0)), 0))
    bn = fnn.serial(L.Dense(4), L.BatchNorm(), L.Dense(2, "softmax"), input_shape=(3,))
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm\) has no per-example gradients"):
        C.diag_ggn(bn, bn.init(jax.random.key(0)), x, y, SPARSE)
    custom = A.Activation("my_tanh", jnp.tanh, A.tanh.backward, A.tanh.derivative)
    cnet = fnn.serial(L.Dense(4, custom), L.Dense(2, "softmax"), input_shape=(3,))
    with pytest.raises(ValueError, match=r"activation 'my_tanh', whose record has no jvp/second"):
        C.top_eigenvalue(cnet, cnet.init(jax.random.key(0)), x, y, SPARSE, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"categorical_cross_entropy' has no sample_sqrt_hessian"):
        C.diag_ggn(fnn.mlp([3, 2], output="identity"), fnn.mlp([3, 2], output="identity").init(jax.random.key(0)),
                   x, jax.nn.one_hot(y, 2), "categorical_cross_entropy", mc_samples=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="mc_samples must be a positive int"):
        C.diag_ggn(net, params, x, y, SPARSE, mc_samples=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        C.diag_ggn(net, params, x, y, SPARSE, mc_samples=3)
    with pytest.raises(TypeError):
        C.kfac(net, params, x, y, SPARSE)  # key is required
    with pytest.raises(ValueError, match="vector must be shaped like params"):
        C.hessian_vector_product(net, params, x, y, SPARSE, v[:1])
    with pytest.raises(ValueError, match="method must be one of"):
        C.top_eigenvalue(net, params, x, y, SPARSE, method="arnoldi", key=jax.random.key(0))
    with pytest.raises(ValueError, match="matrix must be one of"):
        C.top_eigenvalue(net, params, x, y, SPARSE, matrix="fisher", key=jax.random.key(0))
    with pytest.raises(ValueError, match="exactly one of key= .* and init="):
        C.top_eigenvalue(net, params, x, y, SPARSE)
    with pytest.raises(ValueError, match="max_iterations must be an int >= 2"):
        C.top_eigenvalue(net, params, x, y, SPARSE, key=jax.random.key(0), max_iterations=1)
    with pytest.raises(ValueError, match="different batch sizes"):
        C.ggn_vector_product(net, params, x, y[:2], SPARSE, v)
