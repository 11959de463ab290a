"""Tests for fnn/curvature.py and fnn/_factors.py: the first-order quantities (BackPACK's ``BatchL2Grad``,
``SumGradSquared``, ``Variance``) from the hand-written backward pass.

The independent reference is ``jax.vmap`` of ``jax.grad`` of each example's own loss (a batch of one, with the
example's dropout row), scaled by ``1/N`` as BackPACK scales individual gradients, then squared norms, sums of
squares and the centred variance computed from those materialised gradients. Float64, relative 1e-10:

* every activation × every loss (the matrix of tests/test_backprop.py at depth 3): one program per activation,
  compiled as the other matrices are (XLA's CPU backend at optimisation level 0, no fusion emitters) — both
  sides in the same program;
* Conv2D (both evaluation paths of its squared norms: the Gram matrices and the materialised ``g_n``), pooling,
  Flatten, Residual blocks, dropout in training mode, and L2/L1 penalties;
* BackPACK itself: stored values (``tests/fixtures/backpack_first_order.npz``, written by
  ``scripts/backpack_reference.py``), and live where ``backpack-for-pytorch`` is installed;
* under ``jax.jit``, inside a ``lax.scan`` training loop, ``jax.vmap``-ed over an ensemble. Several devices:
  tests/test_parallel.py (its worker runs ``devices=4`` against one device).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NATURAL_OUTPUT, first_order_reference, make_case, random_params

import fnn
from fnn import layers as L

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import backpack_reference  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
ACTS = fnn.activations.names()
LOSSES = fnn.losses.names()
SPARSE_CE = "sparse_categorical_cross_entropy"
Q = fnn.curvature.FIRST_ORDER
RTOL = 1e-10

tree_map = jax.tree_util.tree_map


def assert_quantities(got: dict, want: dict, what: str, rtol: float = RTOL):
    for q in (*Q, "grad"):
        leaves_got, leaves_want = jax.tree_util.tree_leaves(got[q]), jax.tree_util.tree_leaves(want[q])
        assert leaves_want and len(leaves_got) == len(leaves_want), f"{what} {q}: structure"
        jax.tree_util.tree_map(lambda a, b: None, got[q], want[q])  # same structure
        for i, (a, b) in enumerate(zip(leaves_got, leaves_want, strict=True)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape and a.dtype == b.dtype == np.float64, f"{what} {q} leaf {i}: {a.shape} {b.shape}"
            scale = float(np.max(np.abs(b)))
            err = float(np.max(np.abs(a - b))) / scale if scale else float(np.max(np.abs(a)))
            assert err <= rtol, f"{what} {q} leaf {i}: relative error {err:.2e} > {rtol:.0e}"


def assert_identities(q: dict, what: str):
    """Σ over a leaf's elements of Σ_n g_n² is Σ_n ‖g_n‖²; the variance is (1/N) Σ g_n² − mean²."""
    for s, l2 in zip(jax.tree_util.tree_leaves(q["sum_grad_squared"]), jax.tree_util.tree_leaves(q["batch_l2_grad"]),
                     strict=True):
        np.testing.assert_allclose(np.sum(s), np.sum(l2), rtol=1e-12, err_msg=what)


# --- every activation × every loss -------------------------------------------------------------------------------

UNFUSED = [("tanh", "softmax", "binary_cross_entropy"), ("tanh", "sigmoid", "categorical_cross_entropy"),
           ("tanh", "sigmoid", SPARSE_CE)]


@pytest.mark.parametrize("hidden", ACTS)
def test_matrix_equals_vmap_of_per_example_grad(hidden, x64):
    """Depth 3, batch 7, every loss (with its natural output; mse/quadratic with ``hidden`` as output too): the
    three quantities and the gradient (the windowed-net test checks the loss and grad against backprop's). Eager:
    the rows share their primitives' compiles with each other and with tests/test_backprop.py's eager matrix
    (the same shapes), which a program per activation would not."""
    rows = [(hidden, NATURAL_OUTPUT[loss] or hidden, loss) for loss in LOSSES] + (UNFUSED if hidden == "tanh" else [])
    for i, (h, o, loss) in enumerate(rows):
        net, p, x, y = make_case(h, o, loss, 3, 7, dtype=jnp.float64, seed=i)
        got = fnn.curvature.first_order(net, p, x, y, loss)
        what = f"{h}-{o}-{loss}"
        assert_quantities(got, first_order_reference(net, p, x, y, loss), what)  # grads = jax.grad's sum too
        assert_identities(got, what)


# --- windowed layers, blocks, dropout, penalties -------------------------------------------------------------------

def _cnn(padding="VALID"):
    return fnn.serial(L.Conv2D(3, 3, padding=padding, activation="tanh"),  # S = 16 > K·F / S: materialised g_n
                      L.MaxPool2D(2, stride=1),
                      L.Conv2D(4, 2, stride=2, activation="relu"),         # S = 1: Gram path, trivially
                      L.AvgPool2D(1), L.Flatten(), L.Dense(3), "softmax", input_shape=(6, 6, 2), dtype="float64")


def _resnet():
    return fnn.serial(L.Dense(5, "tanh"), L.Dropout(0.3), L.Residual(L.Dense(5, "sigmoid"), L.Residual(L.Dense(5))),
                      L.Dense(3, bias=False), "softmax", input_shape=(4,), dtype="float64")


def _gram_cnn():
    return fnn.serial(L.Conv2D(8, 3, padding=1, activation="elu"), L.Flatten(), L.Dense(3), "softmax",
                      input_shape=(3, 3, 2), dtype="float64")


NETS = {
    "cnn": (_cnn, None, None),
    "cnn-gram": (_gram_cnn, None, "l2"),      # S = 9, S² = 81 ≤ K·F = 144: the Gram matrices
    "resnet-dropout": (_resnet, jax.random.key(5), None),
    "resnet-l2": (_resnet, None, "l2"),
    "resnet-dropout-l1": (_resnet, jax.random.key(6), "l1"),
}
PENALTIES = {"l2": fnn.penalties.l2(0.3), "l1": fnn.penalties.l1(0.2)}


def _data(net, rng, n=6):
    params = tree_map(lambda t: jnp.asarray(rng.normal(size=t.shape) * 0.5 + 0.05, jnp.float64),
                      jax.eval_shape(net.init, jax.random.key(0)))
    x = jnp.asarray(rng.normal(size=(n, *net.input_shape)))
    return params, x, jnp.asarray(rng.integers(0, net.output_shape[-1], n), jnp.int32)


def test_windowed_layers_blocks_dropout_and_penalties(x64):
    builds = {name: (build(), key, PENALTIES.get(pen)) for name, (build, key, pen) in NETS.items()}
    rng = np.random.default_rng(0)
    data = {name: _data(net, rng) for name, (net, _, _) in builds.items()}

    def run(data):
        return {name: (fnn.curvature.first_order(net, *data[name], SPARSE_CE, key=key, penalty=pen),
                       first_order_reference(net, *data[name], SPARSE_CE, key=key, penalty=pen),
                       fnn.backprop(net, *data[name], SPARSE_CE, key=key, penalty=pen))
                for name, (net, key, pen) in builds.items()}

    results = jax.jit(run).lower(data).compile(FAST_COMPILE)(data)
    for name, (got, want, (value, grads)) in results.items():
        assert_quantities(got, want, name)
        np.testing.assert_allclose(got["loss"], value, rtol=1e-13, err_msg=name)
        assert_quantities({**got, "grad": grads}, got, name + " (grad = backprop's)")
        # layers without params are empty groups, so layer indices are kept
        assert [bool(g) for g in got["variance"]] == [bool(p) for p in data[name][0]], name
    # the penalty changes the per-example norms and second moments, never the variance
    plain = fnn.curvature.first_order(builds["resnet-l2"][0], *data["resnet-l2"], SPARSE_CE)
    assert not np.allclose(plain["batch_l2_grad"][0]["w"], results["resnet-l2"][0]["batch_l2_grad"][0]["w"])
    assert_quantities({**plain, "grad": plain["grad"]}, {**plain, "variance": results["resnet-l2"][0]["variance"]},
                      "variance with and without a penalty")


def test_conv_squared_norms_take_both_paths(x64):
    """The Gram route and the materialised route of a Conv2D's ‖g_n‖² give the same numbers (the module's
    choice by S² ≤ K·F, forced both ways here)."""
    from fnn import _factors

    rng = np.random.default_rng(1)
    a, d = jnp.asarray(rng.normal(size=(3, 5, 4))), jnp.asarray(rng.normal(size=(3, 5, 2)))
    small = _factors.Factor(a, d, (4, 2))   # S² = 25 > K·F = 8: materialised
    g = jnp.einsum("nsk,nsf->nkf", a, d)
    want = jnp.sum(g.reshape(3, -1) ** 2, axis=1)
    np.testing.assert_allclose(_factors.squared_norms(small), want, rtol=1e-13)
    assert not _factors._gram_is_smaller(small)
    wide = _factors.Factor(jnp.tile(a, (1, 1, 2)), jnp.tile(d, (1, 1, 2)), (8, 4))  # S² = 25 ≤ 32: Gram
    assert _factors._gram_is_smaller(wide)
    g = jnp.einsum("nsk,nsf->nkf", wide.a, wide.d)
    np.testing.assert_allclose(_factors.squared_norms(wide), jnp.sum(g.reshape(3, -1) ** 2, axis=1), rtol=1e-13)
    np.testing.assert_allclose(_factors.sum_of_squares(wide), jnp.sum(g**2, axis=0), rtol=1e-13)
    v = jnp.asarray(rng.normal(size=(8, 4)))
    np.testing.assert_allclose(_factors.inner(wide, v), jnp.einsum("nkf,kf->n", g, v), rtol=1e-13)


# --- BackPACK -----------------------------------------------------------------------------------------------------

def _backpack_net(name):
    layers, shape, loss = backpack_reference.CASES[name]
    specs = []
    for i, layer in enumerate(layers):
        if layer[0] == "dense":
            last = i == len(layers) - 1
            output = "softmax" if loss == "ce" else "identity"
            specs.append(L.Dense(layer[1], activation=output if last else layer[2]))
        elif layer[0] == "conv":
            specs.append(L.Conv2D(layer[1], layer[2], stride=layer[3], padding="VALID", activation=layer[4]))
        else:
            specs.append(L.Flatten())
    net = fnn.serial(*specs, input_shape=shape, dtype="float64")
    params, x, y = backpack_reference.data(name)
    return net, tree_map(jnp.asarray, params), jnp.asarray(x), jnp.asarray(y), SPARSE_CE if loss == "ce" else "mse"


def _compare_with_backpack(refs: dict):
    """fnn on every case in one compiled program (the stored and the live test compile the same one: the
    session's cache gives the second its executable) against BackPACK's ``refs``."""
    nets = {name: _backpack_net(name) for name in refs}
    arrays = {name: case[1:4] for name, case in nets.items()}

    def run(a):
        return {name: fnn.curvature.first_order(nets[name][0], *a[name], nets[name][4]) for name in a}

    results = jax.jit(run).lower(arrays).compile(FAST_COMPILE)(arrays)
    for name, ref in refs.items():
        got = results[name]
        for q in Q:
            for l, leaves in enumerate(ref[q]):
                assert sorted(leaves) == sorted(got[q][l]), f"{name} {q} layer {l}"
                for leaf, want in leaves.items():
                    np.testing.assert_allclose(got[q][l][leaf], want, rtol=1e-10, atol=1e-14 * np.max(np.abs(want)),
                                               err_msg=f"{name} {q} {l}.{leaf}")


def test_equals_backpack_stored(x64):
    stored = np.load(backpack_reference.FIXTURE)
    refs = {name: {q: [{leaf: stored[f"{name}/{q}/{l}/{leaf}"] for leaf in ("w", "b")} if layer[0] != "flatten"
                       else {} for l, layer in enumerate(layers)] for q in Q}
            for name, (layers, _, _) in backpack_reference.CASES.items()}
    _compare_with_backpack(refs)


def test_equals_backpack_live(x64):
    pytest.importorskip("backpack", reason="backpack-for-pytorch is not installed")
    _compare_with_backpack({name: backpack_reference.reference(name) for name in backpack_reference.CASES})


# --- under jit, in a scan, vmapped over an ensemble -------------------------------------------------------------

def test_eager_equals_jit_and_functions_equal_first_order(x64):
    net, params, x, y = make_case("tanh", "softmax", SPARSE_CE, 2, 5, dtype=jnp.float64)
    pen = fnn.penalties.l2(0.1)
    eager = fnn.curvature.first_order(net, params, x, y, SPARSE_CE, penalty=pen)
    jitted = jax.jit(lambda p, x, y: fnn.curvature.first_order(net, p, x, y, SPARSE_CE, penalty=pen))(params, x, y)
    assert_quantities(eager, jitted, "eager vs jit", rtol=1e-14)
    for q, f in [("batch_l2_grad", fnn.curvature.batch_l2_grad), ("sum_grad_squared", fnn.curvature.sum_grad_squared),
                 ("variance", fnn.curvature.variance)]:
        alone = f(net, params, x, y, SPARSE_CE, penalty=pen)
        tree_map(lambda a, b, q=q: np.testing.assert_allclose(a, b, rtol=1e-14, err_msg=q), alone, eager[q])
    only = fnn.curvature.first_order(net, params, x, y, SPARSE_CE, quantities=["variance"])
    assert set(only) == {"loss", "grad", "variance"}


def test_inside_a_scan_training_loop_and_vmapped_over_an_ensemble(x64):
    """SGD for 4 steps in a lax.scan that records every step's per-example norms equals a Python loop of the
    same steps; jax.vmap over 3 members' params equals each member alone."""
    net = fnn.mlp([4, 6, 3], hidden="tanh", output="softmax", dtype="float64")
    rng = np.random.default_rng(2)
    params = random_params(net, rng)
    x, y = jnp.asarray(rng.normal(size=(8, 4))), jnp.asarray(rng.integers(0, 3, 8), jnp.int32)

    def step(p, _):
        q = fnn.curvature.first_order(net, p, x, y, SPARSE_CE, quantities=("batch_l2_grad", "variance"))
        return tree_map(lambda w, g: w - 0.5 * g, p, q["grad"]), (q["batch_l2_grad"], q["variance"])

    compiled = jax.jit(lambda p: jax.lax.scan(step, p, None, length=4)).lower(params).compile(FAST_COMPILE)
    final, (norms, variances) = compiled(params)
    p = params
    for s in range(4):
        q = fnn.curvature.first_order(net, p, x, y, SPARSE_CE)
        for got, want in [(norms, q["batch_l2_grad"]), (variances, q["variance"])]:
            tree_map(lambda a, b, s=s: np.testing.assert_allclose(a[s], b, rtol=1e-12), got, want)
        p = tree_map(lambda w, g: w - 0.5 * g, p, q["grad"])
    tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), final, p)
    assert not np.allclose(norms[0]["w"][0], norms[0]["w"][-1])  # training moved them

    members = [random_params(net, np.random.default_rng(10 + m)) for m in range(3)]
    stacked = tree_map(lambda *t: jnp.stack(t), *members)
    both = jax.jit(jax.vmap(lambda p: fnn.curvature.first_order(net, p, x, y, SPARSE_CE)))
    together = both.lower(stacked).compile(FAST_COMPILE)(stacked)
    for m, p in enumerate(members):
        alone = fnn.curvature.first_order(net, p, x, y, SPARSE_CE)
        assert_quantities(tree_map(lambda t, m=m: t[m], together), alone, f"member {m}", rtol=1e-12)


# --- errors -------------------------------------------------------------------------------------------------------

def test_errors_name_what_was_wrong():
    net = fnn.mlp([3, 4, 2], hidden="tanh", output="softmax")
    params = net.init(jax.random.key(0))
    x, y = jnp.ones((4, 3)), jnp.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"Unknown first-order quantities \['diag_ggn'\]; known: batch_l2_grad"):
        fnn.curvature.first_order(net, params, x, y, SPARSE_CE, quantities=["diag_ggn"])
    with pytest.raises(TypeError, match="quantities must be a sequence of names"):
        fnn.curvature.first_order(net, params, x, y, SPARSE_CE, quantities="variance")
    with pytest.raises(ValueError, match="x and y have different batch sizes"):
        fnn.curvature.batch_l2_grad(net, params, x, y[:3], SPARSE_CE)
    with pytest.raises(ValueError, match="devices=2 asks for more devices than exist"):
        fnn.curvature.variance(net, params, x, y, SPARSE_CE, devices=2)


@pytest.mark.parametrize("nested", [False, True])
def test_a_layer_without_per_example_gradients_is_named(nested):
    import dataclasses

    dense = L.Dense(3, activation="tanh")
    mixing = L.Spec("Dense", dense.config, lambda s, w: dataclasses.replace(dense.bind(s, w), factors=None))
    net = fnn.serial(L.Dense(3), L.Residual(mixing) if nested else mixing, L.Dense(2), input_shape=(3,))
    params = net.init(jax.random.key(0))
    where = r"layer 1\.0 \(Dense\)" if nested else r"layer 1 \(Dense\)"
    with pytest.raises(ValueError, match=rf"batch_l2_grad: {where} has no per-example gradients .*not defined"):
        fnn.curvature.batch_l2_grad(net, params, jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]), SPARSE_CE)
