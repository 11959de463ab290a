"""Tests for fnn.penalties: values against NumPy, hand-written gradients against jax.grad (float64), the optax
coupled-L2 equivalence, selection by leaf name and by mask, jit/vmap, errors, description round trip, hashing."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TRANSFORMS
from hypothesis import given, settings
from hypothesis import strategies as st

from fnn import penalties
from fnn._arrays import path_parts

W_PATHS = ["0.w", "2.0.w", "2.1.w", "4.w"]


def make_params(dtype=jnp.float64, seed: int = 0, zeros: bool = True):
    """Dense, a layer without params, a residual block, a normalisation layer, Dense; exact zeros in some w."""
    rng = np.random.default_rng(seed)
    a = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
    params = [{"w": a(3, 4), "b": a(4)}, {}, [{"w": a(4, 4), "b": a(4)}, {"w": a(4, 4)}],
              {"scale": a(4), "offset": a(4)}, {"w": a(4, 2), "b": a(2)}]
    if zeros:
        params[0]["w"] = params[0]["w"].at[1].set(0.0)
        params[2][1]["w"] = params[2][1]["w"].at[:, 2].set(0.0)
    return params


def leaf_by_path(params):
    return {".".join(path_parts(p)): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def numpy_value(name: str, lam: float, params, paths) -> float:
    """Independent reference: (λ/2)·Σw² or λ·Σ|w| over the given leaf paths, in NumPy."""
    leaves = leaf_by_path(params)
    f = (lambda w: lam / 2 * np.sum(w**2)) if name == "l2" else (lambda w: lam * np.sum(np.abs(w)))
    return sum(f(leaves[p]) for p in paths)


def assert_trees_close(a, b, rtol=1e-12, atol=0.0):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


WB_PATHS = ["0.b", "0.w", "2.0.b", "2.0.w", "2.1.w", "4.b", "4.w"]
#: name: (a penalty, its NumPy reference as [(kind, λ, paths)]).
FACTORIES = {
    "l2": (lambda: penalties.l2(0.3), [("l2", 0.3, W_PATHS)]),
    "l1": (lambda: penalties.l1(0.7), [("l1", 0.7, W_PATHS)]),
    "l2_wb": (lambda: penalties.l2(0.3, leaves=("w", "b")), [("l2", 0.3, WB_PATHS)]),
    "l1_mask": (lambda: penalties.l1(0.7, mask=lambda p: jax.tree.map(lambda x: x.ndim == 1, p)),
                [("l1", 0.7, ["0.b", "2.0.b", "3.offset", "3.scale", "4.b"])]),
    "elastic": (lambda: penalties.combine(penalties.l1(0.7), penalties.l2(0.3, leaves=("w", "b"))),
                [("l1", 0.7, W_PATHS), ("l2", 0.3, WB_PATHS)]),
}


@pytest.mark.parametrize("make, _", FACTORIES.values(), ids=FACTORIES.keys())
@TRANSFORMS
def test_grad_matches_jax_grad(make, _, transform, x64):
    pen, params = make(), make_params()
    assert_trees_close(transform(pen.grad)(params), jax.grad(pen.value)(params))


@pytest.mark.parametrize("make, reference", FACTORIES.values(), ids=FACTORIES.keys())
@TRANSFORMS
def test_value_matches_numpy(make, reference, transform, x64):
    pen, params = make(), make_params()
    expected = sum(numpy_value(kind, lam, params, paths) for kind, lam, paths in reference)
    got = transform(pen.value)(params)
    assert got.shape == () and got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)


def test_value_conventions():
    assert float(penalties.l2(2.0).value([{"w": jnp.array([3.0])}])) == 9.0  # (λ/2)·Σw², not λ·Σw²
    assert float(penalties.l1(2.0).value([{"w": jnp.array([-3.0])}])) == 6.0  # λ·Σ|w|
    # Nielsen's chapter-3 term (λ/2n)·Σw² is l2(lam / n); its gradient (λ/n)·w.
    lam, n, w = 5.0, 50_000, jnp.array([[1.0, -2.0]])
    np.testing.assert_allclose(float(penalties.l2(lam / n).value([{"w": w}])), lam / (2 * n) * 5.0, rtol=1e-6)
    np.testing.assert_allclose(penalties.l2(lam / n).grad([{"w": w}])[0]["w"], lam / n * w, rtol=1e-6)


def test_l1_subgradient_is_zero_at_zero(x64):
    params = [{"w": jnp.array([-2.0, 0.0, 3.0])}]
    g = penalties.l1(0.5).grad(params)[0]["w"]
    np.testing.assert_array_equal(g, [-0.5, 0.0, 0.5])
    np.testing.assert_array_equal(jax.grad(penalties.l1(0.5).value)(params)[0]["w"], g)  # autodiff agrees at 0
    # Why the value is written w·sign(w): jax.grad(jnp.abs)(0.) is 1, not the subgradient 0 used here.
    assert float(jax.grad(jnp.abs)(0.0)) == 1.0 and float(jax.grad(lambda w: w * jnp.sign(w))(0.0)) == 0.0


def test_default_selects_weights_only(x64):
    params = make_params()
    for pen in (penalties.l2(0.3), penalties.l1(0.3)):
        assert penalties.selected(pen, params) == W_PATHS and pen.leaves == ("w",)
        grads = leaf_by_path(pen.grad(params))
        for path in ("0.b", "2.0.b", "3.scale", "3.offset", "4.b"):
            np.testing.assert_array_equal(grads[path], 0.0)
        assert pen.grad(params)[1] == {}
        # The whole last path component must match: "w_ema" or "bw" is not "w".
        assert penalties.selected(pen, [{"w_ema": jnp.ones(2), "bw": jnp.ones(2), "w": jnp.ones(2)}]) == ["0.w"]
    np.testing.assert_allclose(leaf_by_path(penalties.l2(0.3).grad(params))["2.1.w"], 0.3 * params[2][1]["w"],
                               rtol=1e-15)


def test_leaves_w_and_b_include_biases(x64):
    params = make_params()
    pen = penalties.l2(0.3, leaves=["w", "b"])
    assert pen.leaves == ("w", "b")
    assert penalties.selected(pen, params) == WB_PATHS
    np.testing.assert_allclose(pen.grad(params)[4]["b"], 0.3 * params[4]["b"], rtol=1e-15)
    np.testing.assert_array_equal(pen.grad(params)[3]["scale"], 0.0)


@TRANSFORMS
def test_bool_mask_and_callable_mask(transform, x64):
    params = make_params()
    mask = [{"w": False, "b": True}, {}, [{"w": True, "b": False}, {"w": False}],
            {"scale": True, "offset": False}, {"w": False, "b": False}]
    pen = penalties.l2(0.4, mask=mask)
    assert pen.leaves is None and penalties.selected(pen, params) == ["0.b", "2.0.w", "3.scale"]
    np.testing.assert_allclose(float(transform(pen.value)(params)),
                               numpy_value("l2", 0.4, params, ["0.b", "2.0.w", "3.scale"]), rtol=1e-12)
    assert_trees_close(transform(pen.grad)(params), jax.grad(pen.value)(params))
    by_ndim = penalties.l2(0.4, mask=lambda p: jax.tree.map(lambda x: x.ndim == 2, p))
    assert penalties.selected(by_ndim, params) == W_PATHS
    np.testing.assert_allclose(float(transform(by_ndim.value)(params)), float(penalties.l2(0.4).value(params)),
                               rtol=1e-15)


def test_combine_is_the_sum(x64):
    params = make_params()
    a, b = penalties.l1(0.7), penalties.l2(0.3, leaves=("w", "b"))
    net = penalties.combine(a, b)
    assert net.name == "l1+l2" and net.leaves == ("w", "b") and net.lam == pytest.approx(1.0)
    np.testing.assert_allclose(float(net.value(params)), float(a.value(params) + b.value(params)), rtol=1e-15)
    assert_trees_close(net.grad(params), jax.tree.map(jnp.add, a.grad(params), b.grad(params)), rtol=1e-15)
    assert penalties.selected(net, params) == penalties.selected(b, params)
    assert penalties.combine(net, a).name == "l1+l2+l1"


@settings(max_examples=20, derandomize=True, deadline=None)
@given(lam=st.floats(0.0, 1e3, allow_subnormal=False), n_in=st.integers(1, 4), n_out=st.integers(1, 4),
       name=st.sampled_from(["l1", "l2"]), seed=st.integers(0, 2**16))
def test_random_lam_and_shapes(lam, n_in, n_out, name, seed):
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        params = [{"w": jnp.asarray(rng.normal(size=(n_in, n_out))), "b": jnp.asarray(rng.normal(size=n_out))},
                  [{"w": jnp.asarray(rng.normal(size=(n_out, n_out)))}]]
        pen = getattr(penalties, name)(lam)
        np.testing.assert_allclose(float(pen.value(params)), numpy_value(name, lam, params, ["0.w", "1.0.w"]),
                                   rtol=1e-12)
        d = (lambda w: lam * w) if name == "l2" else (lambda w: lam * np.sign(w))  # closed form, in NumPy
        expected = [{"w": d(np.asarray(params[0]["w"])), "b": np.zeros(n_out)},
                    [{"w": d(np.asarray(params[1][0]["w"]))}]]
        assert_trees_close(pen.grad(params), expected, rtol=1e-15)


@pytest.mark.parametrize("lam, lr", [(0.1, 0.5), (3e-4, 0.01)])
def test_coupled_l2_with_sgd_equals_optax_add_decayed_weights(lam, lr, x64):
    params, g = make_params(seed=1), make_params(seed=2, zeros=False)  # g: the loss gradient
    pen = penalties.l2(lam)
    ours = jax.tree.map(lambda w, gi, pi: w - lr * (gi + pi), params, g, pen.grad(params))
    only_w = lambda p: jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "w", p)
    tx = optax.chain(optax.add_decayed_weights(lam, mask=only_w), optax.sgd(lr))
    updates, _ = tx.update(g, tx.init(params), params)
    assert_trees_close(ours, optax.apply_updates(params, updates), rtol=1e-12, atol=1e-15)


def test_jit_and_vmap_over_stacked_params(x64):
    members = [make_params(seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *members)
    for pen in (penalties.l2(0.3), penalties.combine(penalties.l1(0.7), penalties.l2(0.3, leaves=("w", "b")))):
        values = jax.jit(jax.vmap(pen.value))(stacked)
        assert values.shape == (3,)
        np.testing.assert_allclose(values, [float(pen.value(m)) for m in members], rtol=1e-12)
        assert_trees_close(jax.vmap(pen.grad)(stacked), jax.tree.map(lambda *xs: jnp.stack(xs),
                                                                     *[pen.grad(m) for m in members]))
        static = jax.jit(lambda p, params: p.value(params), static_argnums=0)  # the Penalty as a static argument
        np.testing.assert_allclose(float(static(pen, members[0])), float(pen.value(members[0])), rtol=1e-12)


def test_float32_keeps_dtype():
    params = make_params(dtype=jnp.float32)
    pen = penalties.combine(penalties.l1(0.7), penalties.l2(0.3))
    assert pen.value(params).dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(pen.grad(params)))
    np.testing.assert_allclose(float(pen.value(params)), numpy_value("l1", 0.7, params, W_PATHS)
                               + numpy_value("l2", 0.3, params, W_PATHS), rtol=1e-5)


PARAMS = make_params(dtype=jnp.float32, zeros=False)
ERRORS = {
    "negative lam": (lambda: penalties.l2(-1.0), ValueError, ["l2", "-1.0", ">= 0"]),
    "nan lam": (lambda: penalties.l1(float("nan")), ValueError, ["l1", "nan"]),
    "inf lam": (lambda: penalties.l2(float("inf")), ValueError, ["l2", "inf"]),
    "bool lam": (lambda: penalties.l2(True), TypeError, ["l2", "True", "bool"]),
    "str lam": (lambda: penalties.l1("0.1"), TypeError, ["l1", "'0.1'", "str"]),
    "empty leaves": (lambda: penalties.l2(0.1, leaves=()), ValueError, ["l2", "leaves", "()"]),
    "str leaves": (lambda: penalties.l2(0.1, leaves="w"), TypeError, ["l2", "leaves", "'w'"]),
    "int leaf name": (lambda: penalties.l1(0.1, leaves=("w", 3)), ValueError, ["l1", "('w', 3)"]),
    "leaves and mask": (lambda: penalties.l2(0.1, leaves=("b",), mask=lambda p: p), ValueError,
                        ["l2", "not both", "('b',)"]),
    "non-bool mask": (lambda: penalties.l2(0.1, mask=[{"w": 1}]), TypeError, ["l2", "mask", "[{'w': 1}]"]),
    "typo'd leaf": (lambda: penalties.l2(0.1, leaves=("W",)).value(PARAMS), ValueError,
                    ["l2", "('W',)", "selects no leaf", "0.w", "3.scale", "4.b"]),
    "typo in grad": (lambda: penalties.l1(0.1, leaves=("weight",)).grad(PARAMS), ValueError, ["l1", "'weight'"]),
    "typo in selected": (lambda: penalties.selected(penalties.l2(0.1, leaves=("W",)), PARAMS), ValueError,
                         ["('W',)", "2.1.w"]),
    "mask structure": (lambda: penalties.l2(0.1, mask=[True]).value(PARAMS), ValueError,
                       ["l2", "mask", "PyTreeDef([*])", "{'offset': *, 'scale': *}"]),
    "all-False mask": (lambda: penalties.l1(0.1, mask=jax.tree.map(lambda _: False, PARAMS)).grad(PARAMS),
                       ValueError, ["l1", "selects no leaf"]),
    "callable mask of arrays": (lambda: penalties.l2(0.1, mask=lambda p: jax.tree.map(jnp.isfinite, p)).value(PARAMS),
                                TypeError, ["l2", "bools", "ArrayImpl"]),
    "get a string": (lambda: penalties.get("l2"), TypeError, ["get", "'l2'", "str"]),
    "combine nothing": (lambda: penalties.combine(), TypeError, ["combine", "none"]),
    "combine a string": (lambda: penalties.combine(penalties.l2(0.1), "l1"), TypeError, ["combine", "'l1'"]),
    "describe a mask": (lambda: penalties.l2(0.1, mask=lambda p: p).describe(), ValueError, ["describe", "mask"]),
    "unknown name": (lambda: penalties.from_description({"name": "l3", "lam": 0.1}), ValueError,
                     ["from_description", "'l3'"]),
    "extra key": (lambda: penalties.from_description({"name": "l2", "lam": 0.1, "lamda": 1}), ValueError,
                  ["from_description", "'lamda'"]),
    "bad lam in description": (lambda: penalties.from_description({"name": "l2", "lam": -2}), ValueError,
                               ["l2", "-2"]),
}


@pytest.mark.parametrize("call, error, words", ERRORS.values(), ids=ERRORS.keys())
def test_errors_name_the_function_and_the_value(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


ELASTIC = penalties.combine(penalties.l1(1e-5), penalties.l2(3e-4))


@pytest.mark.parametrize("pen", [penalties.l2(0.1), penalties.l1(0.25, leaves=("w", "b")), ELASTIC],
                         ids=["l2", "l1", "elastic"])
def test_describe_round_trip(pen):
    d = json.loads(json.dumps(pen.describe()))
    again = penalties.from_description(d)
    assert again == pen and hash(again) == hash(pen) and again.describe() == d
    assert penalties.from_description({"name": "l2", "lam": 0.1}) == penalties.l2(0.1)  # leaves default ("w",)


def test_describe_format():
    assert penalties.l2(0.1).describe() == {"name": "l2", "lam": 0.1, "leaves": ["w"]}
    assert penalties.combine(penalties.l1(0.2), penalties.l2(0.1)).describe() == {
        "name": "combine", "terms": [{"name": "l1", "lam": 0.2, "leaves": ["w"]},
                                     {"name": "l2", "lam": 0.1, "leaves": ["w"]}]}


def test_hashable_lru_cache_key():
    calls = []

    @functools.lru_cache(maxsize=None)
    def compiled(pen):
        calls.append(pen)
        return jax.jit(pen.value)

    assert isinstance(hash(penalties.l2(0.1)), int)
    assert penalties.l2(0.1) == penalties.l2(0.1) and penalties.l2(0.1) != penalties.l2(0.2)
    assert penalties.l2(0.1) != penalties.l1(0.1) and penalties.l2(0.1) != penalties.l2(0.1, leaves=("w", "b"))
    compiled(penalties.l2(0.1)), compiled(penalties.l2(0.1)), compiled(penalties.l1(0.1))
    assert len(calls) == 2
    mask = [{"w": True}]
    masked = penalties.l2(0.1, mask=mask)
    assert hash(masked) == hash(masked) and compiled(masked) is compiled(masked) and len(calls) == 3
    assert masked != penalties.l2(0.1, mask=mask)  # masks compare by identity


def test_get():
    pen = penalties.l1(0.1)
    assert penalties.get(None) is None and penalties.get(pen) is pen
