"""Property-based tests (hypothesis): random architectures, activations, losses, batches and inputs.

Each example is jitted once (backprop and autodiff in one compile): on CPU, compiling a fresh program is
cheaper than running a fresh shape eagerly, and every example has fresh shapes. The program is compiled as
tests/test_layers.py compiles its matrix (XLA's CPU backend at optimisation level 0, no fusion emitters: about
half the compile time), manual and autodiff alike. Inputs include exact zeros, so zero biases put
pre-activations exactly on the kinks, where the two gradients must still agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import NATURAL_OUTPUT, first_order_reference, random_params
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fnn

#: As in tests/test_layers.py: the compile options of the one program of backprop and autodiff per example.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
ACTS = fnn.activations.names()
LOSSES = fnn.losses.names()


@st.composite
def problems(draw):
    depth = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    loss = draw(st.sampled_from(LOSSES))
    hidden = draw(st.lists(st.sampled_from(ACTS), min_size=depth - 1, max_size=depth - 1))
    output = NATURAL_OUTPUT[loss] or draw(st.sampled_from(ACTS))
    batch = draw(st.integers(1, 5))
    bias = draw(st.booleans())
    x = draw(hnp.arrays(np.float64, (batch, sizes[0]), elements=st.floats(-3, 3, allow_subnormal=False)))
    n_out = sizes[-1]
    if fnn.losses.get(loss).sparse:
        y = draw(hnp.arrays(np.int32, (batch,), elements=st.integers(0, n_out - 1)))
    else:
        y = draw(hnp.arrays(np.float64, (batch, n_out), elements=st.floats(0, 1, allow_subnormal=False)))
    seed = draw(st.integers(0, 2**16))
    return sizes, hidden + [output], loss, bias, x, y, seed


@given(problems())
def test_manual_equals_autodiff_on_random_problems(problem):
    sizes, acts, loss, bias, x, y, seed = problem
    with jax.enable_x64(True):
        net = fnn.mlp(sizes, activations=acts, bias=bias)
        params = random_params(net, np.random.default_rng(seed))
        if seed % 4 == 0:  # zero biases: with the exact zeros in x, pre-activations sit on the kinks
            params = [{k: (jnp.zeros_like(v) if k == "b" else v) for k, v in layer.items()} for layer in params]
        both = jax.jit(lambda p, x, y: (fnn.backprop(net, p, x, y, loss), fnn.autodiff(net, p, x, y, loss)))
        args = params, jnp.asarray(x), jnp.asarray(y)
        (value, manual), (ref_value, auto) = both.lower(*args).compile(FAST_COMPILE)(*args)
        assert np.isfinite(float(value)), problem
        np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-12, atol=1e-15)
        for g, w in zip(jax.tree_util.tree_leaves(manual), jax.tree_util.tree_leaves(auto), strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype == jnp.float64
            assert np.all(np.isfinite(g))
            scale = float(np.max(np.abs(np.asarray(w)), initial=0.0))
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12 * scale + 1e-15)


@settings(max_examples=4)  # each example compiles threefry for fresh shapes: seconds apiece
@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    members=st.integers(1, 4),
    bias=st.booleans(),
    init=st.sampled_from(fnn.initializers.names()),
    seed=st.integers(0, 2**16),
)
def test_vmap_init_equals_loop(sizes, members, bias, init, seed):
    net = fnn.mlp(sizes, bias=bias, init=init)
    keys = jax.random.split(jax.random.key(seed), members)
    stacked = jax.jit(jax.vmap(net.init))(keys)  # jitted: a compile is cheaper than eager fresh shapes
    init = jax.jit(net.init)
    for i, key in enumerate(keys):
        member = init(key)
        for got, want in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(member), strict=True):
            assert got.shape == (members, *want.shape)
            np.testing.assert_array_equal(got[i], want)


@settings(max_examples=6)
@given(problems())
def test_first_order_curvature_on_random_problems(problem):
    """fnn.curvature's per-example squared norms, second moments and variance equal those of materialised
    per-example gradients (``jax.vmap`` of ``jax.grad``), and Σ_n ‖g_n‖² is the element sum of Σ_n g_n²."""
    sizes, acts, loss, bias, x, y, seed = problem
    with jax.enable_x64(True):
        net = fnn.mlp(sizes, activations=acts, bias=bias)
        params = random_params(net, np.random.default_rng(seed))
        both = jax.jit(lambda p, x, y: (fnn.curvature.first_order(net, p, x, y, loss),
                                        first_order_reference(net, p, x, y, loss)))
        args = params, jnp.asarray(x), jnp.asarray(y)
        got, want = both.lower(*args).compile(FAST_COMPILE)(*args)
        for q in fnn.curvature.FIRST_ORDER:
            # the variance is a difference of two moments: its rounding is relative to the second moment
            scales = jax.tree_util.tree_leaves(want["sum_grad_squared" if q == "variance" else q])
            for g, w, ref in zip(jax.tree_util.tree_leaves(got[q]), jax.tree_util.tree_leaves(want[q]), scales,
                                 strict=True):
                assert g.shape == w.shape and np.all(np.isfinite(g)), (q, problem)
                scale = float(np.max(np.abs(np.asarray(ref)), initial=0.0))
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12 * scale + 1e-30, err_msg=q)
        for s, l2 in zip(jax.tree_util.tree_leaves(got["sum_grad_squared"]),
                         jax.tree_util.tree_leaves(got["batch_l2_grad"]), strict=True):
            np.testing.assert_allclose(np.sum(s), np.sum(l2), rtol=1e-12, atol=1e-30)
