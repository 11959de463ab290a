"""Tests for fnn/stats.py (the statistics, defined in fnn/_stats.py) against independent NumPy computations
(np.cov, explicit loops), plus fnn end-to-end identities. The plots are tested in tests/test_stats_plots.py."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import stats

SHAPES = [{"w": (4, 3), "b": (3,)}, {"w": (3, 2), "b": (2,)}]


def random_per_example(n=7, seed=0, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    return [{k: shift + scale * rng.standard_normal((n, *s)) for k, s in layer.items()} for layer in SHAPES]


def layer_matrix(per_example, l):
    """(N, d) by an explicit loop over examples: row n = concatenation of the layer's leaves (keys sorted)."""
    layer = per_example[l]
    n = next(iter(layer.values())).shape[0]
    return np.array([np.concatenate([np.ravel(layer[k][i]) for k in sorted(layer)]) for i in range(n)])


def all_matrix(per_example):
    return np.concatenate([layer_matrix(per_example, l) for l in range(len(per_example))], axis=1)


# --- statistics -----------------------------------------------------------------------------------------

def test_example_norms():
    g = random_per_example()
    norms = stats.example_norms(g)
    assert norms.shape == (7, 2)
    for l in range(2):
        m = layer_matrix(g, l)
        np.testing.assert_allclose(norms[:, l], [np.sqrt(sum(v * v for v in row)) for row in m], rtol=1e-13)
    total = stats.example_norms(g, per="total")
    assert total.shape == (7,)
    np.testing.assert_allclose(total, np.sqrt((norms**2).sum(axis=1)), rtol=1e-13)


def test_mean_and_variance_leafwise():
    g = random_per_example(shift=0.3)
    mean = stats.mean_gradient(g)
    chex.assert_trees_all_equal_shapes(mean, [{k: np.zeros(s) for k, s in layer.items()} for layer in SHAPES])
    chex.assert_trees_all_close(mean, jax.tree_util.tree_map(lambda x: x.sum(axis=0) / 7, g), rtol=1e-13)
    for ddof in (0, 1):
        want = jax.tree_util.tree_map(lambda x, d=ddof: ((x - x.mean(0)) ** 2).sum(0) / (7 - d), g)
        chex.assert_trees_all_close(stats.gradient_variance(g, ddof=ddof), want, rtol=1e-12)
    chex.assert_trees_all_close(stats.gradient_variance(g), stats.gradient_variance(g, ddof=1), rtol=0)


@pytest.mark.parametrize("ddof", [0, 1])
def test_snr_matches_trace_of_numpy_covariance(ddof):
    g = random_per_example(n=9, shift=0.5)
    snr = stats.gradient_snr(g, ddof=ddof)
    assert snr.shape == (2,)
    for l in range(2):
        m = layer_matrix(g, l)
        mu = m.mean(axis=0)
        want = (mu @ mu) / np.trace(np.cov(m, rowvar=False, ddof=ddof))
        np.testing.assert_allclose(snr[l], want, rtol=1e-12)
    m = all_matrix(g)
    mu = m.mean(axis=0)
    want = (mu @ mu) / np.trace(np.cov(m, rowvar=False, ddof=ddof))
    np.testing.assert_allclose(stats.gradient_snr(g, ddof=ddof, per="total"), want, rtol=1e-12)


def test_snr_debias():
    g = random_per_example(n=9, shift=0.5)
    for l, got in enumerate(stats.gradient_snr(g, debias=True)):
        m = layer_matrix(g, l)
        mu, tr = m.mean(axis=0), np.trace(np.cov(m, rowvar=False))
        np.testing.assert_allclose(got, (mu @ mu - tr / 9) / tr, rtol=1e-12)


def test_snr_of_means_of_b_examples_is_b_times_larger():
    """The statistical claim the notebooks rely on: averaging B i.i.d. gradients multiplies the SNR by B."""
    rng = np.random.default_rng(1)
    mu = rng.standard_normal(20) * 0.3
    draws = mu + rng.standard_normal((200_000, 20))
    snr1 = stats.gradient_snr([{"g": draws}], debias=True)[0]
    snr8 = stats.gradient_snr([{"g": draws.reshape(25_000, 8, 20).mean(axis=1)}], debias=True)[0]
    truth = (mu @ mu) / 20
    np.testing.assert_allclose(snr1, truth, rtol=0.05)
    np.testing.assert_allclose(snr8, 8 * truth, rtol=0.05)


def test_zero_variance_conventions():
    ones = [{"g": np.ones((4, 3))}, {"g": np.zeros((4, 2))}]
    snr = stats.gradient_snr(ones)
    assert snr[0] == np.inf and np.isnan(snr[1])


def test_gradient_stats_is_consistent_with_the_single_functions():
    g = random_per_example(shift=0.2)
    s = stats.gradient_stats(g)
    assert s["batch"] == 7
    np.testing.assert_allclose(s["norms"], stats.example_norms(g), rtol=1e-14)
    np.testing.assert_allclose(s["snr"], stats.gradient_snr(g), rtol=1e-14)
    np.testing.assert_allclose(s["snr_total"], stats.gradient_snr(g, per="total"), rtol=1e-14)
    for l in range(2):
        m = layer_matrix(g, l)
        np.testing.assert_allclose(s["mean_norm"][l], np.linalg.norm(m.mean(0)), rtol=1e-13)
        np.testing.assert_allclose(s["mean_sq_norm"][l], np.linalg.norm(m.mean(0)) ** 2, rtol=1e-13)
        np.testing.assert_allclose(s["trace_cov"][l], np.trace(np.cov(m, rowvar=False)), rtol=1e-12)
        np.testing.assert_allclose(s["trace_cov"][l], sum(v.sum() for v in s["variance"][l].values()), rtol=1e-12)


def test_cosine_similarity():
    a, b = random_per_example(n=1, seed=1), random_per_example(n=1, seed=2)
    a = [{k: v[0] for k, v in layer.items()} for layer in a]
    b = [{k: v[0] for k, v in layer.items()} for layer in b]
    got = stats.cosine_similarity(a, b)
    for l in range(2):
        u = np.concatenate([a[l]["b"].ravel(), a[l]["w"].ravel()])
        v = np.concatenate([b[l]["b"].ravel(), b[l]["w"].ravel()])
        np.testing.assert_allclose(got[l], u @ v / np.sqrt((u @ u) * (v @ v)), rtol=1e-12)
    np.testing.assert_allclose(stats.cosine_similarity(a, a), [1.0, 1.0], rtol=1e-14)
    neg = jax.tree_util.tree_map(lambda t: -2.5 * t, a)
    np.testing.assert_allclose(stats.cosine_similarity(a, neg, per="total"), -1.0, rtol=1e-14)
    zero = jax.tree_util.tree_map(np.zeros_like, a)
    np.testing.assert_array_equal(stats.cosine_similarity(zero, zero), [1.0, 1.0])
    np.testing.assert_array_equal(stats.cosine_similarity(a, zero), [0.0, 0.0])


LOSS = "sparse_categorical_cross_entropy"


def small_problem():
    """One network and batch shared by the fnn tests below (so they share compiled kernels)."""
    net = fnn.mlp([4, 6, 3], hidden="relu", output="softmax")
    params = net.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 4))
    y = jnp.array([0, 1, 2, 2, 1, 0, 1, 2])
    return net, params, x, y


def test_fnn_per_example_grads_end_to_end(x64):
    """With fnn: the mean of per-example gradients is the batch gradient; row n is backprop of example n."""
    net, params, x, y = small_problem()
    loss = LOSS
    per_example = fnn.per_example_grads(net, params, x, y, loss)
    _, grads = fnn.backprop(net, params, x, y, loss)
    mean = stats.mean_gradient(per_example)
    chex.assert_trees_all_close(mean, grads, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(stats.cosine_similarity(mean, grads), [1.0, 1.0], rtol=1e-12)
    norms = stats.example_norms(per_example)
    for n in (0, 7):
        _, g_n = fnn.backprop(net, params, x[n], y[n], loss)
        want = [np.sqrt(sum(float(jnp.sum(t**2)) for t in jax.tree_util.tree_leaves(layer))) for layer in g_n]
        np.testing.assert_allclose(norms[n], want, rtol=1e-12)


def linear_quantile(values, p):
    """The 'linear' quantile by hand: interpolate the sorted values at position p (n - 1)."""
    v = np.sort(values)
    pos = p * (len(v) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def test_delta_spread_against_numpy(x64):
    net, params, x, y = small_problem()
    _, _, trace = fnn.backprop(net, params, x, y, LOSS, return_trace=True)
    q = (0.1, 0.5, 0.9)
    spread = stats.delta_spread(trace, quantiles=q)
    raw = stats.delta_spread(list(trace.delta), quantiles=q, per_example=False)
    for l, d in enumerate(trace.delta):
        d = np.asarray(d) * 8  # per-example deltas
        np.testing.assert_allclose(spread["mean_abs"][l], np.abs(d).mean(), rtol=1e-12)
        np.testing.assert_allclose(spread["rms"][l], np.sqrt((d**2).mean()), rtol=1e-12)
        np.testing.assert_allclose(spread["std"][l], d.std(), rtol=1e-12)
        np.testing.assert_allclose(spread["zero_fraction"][l], np.count_nonzero(d == 0) / d.size)
        np.testing.assert_allclose(spread["row_norm_median"][l], np.median(np.sqrt((d**2).sum(1))), rtol=1e-12)
        np.testing.assert_allclose(spread["quantiles"][l], [linear_quantile(d.ravel(), p) for p in q], rtol=1e-12)
        np.testing.assert_allclose(raw["rms"][l], spread["rms"][l] / 8, rtol=1e-12)
    np.testing.assert_array_equal(spread["q"], q)
    assert spread["zero_fraction"][0] > 0  # some ReLU units are off
    assert spread["zero_fraction"][1] == 0


def test_gradcheck_table(x64):
    net, params, x, y = small_problem()
    report = fnn.gradcheck(net, params, x, y, LOSS, taylor=False)
    table = stats.gradcheck_table(report)
    assert list(table) == ["layer", "leaf", "pair", "shape", "max_abs", "max_rel", "cosine", "tol", "checked", "ok"]
    assert all(len(col) == len(report.rows) == 4 * 3 for col in table.values())
    for i, r in enumerate(report.rows):
        assert (table["layer"][i], table["leaf"][i], table["pair"][i]) == (r.layer, r.leaf, r.pair)
        assert table["shape"][i] == tuple(np.shape(params[r.layer][r.leaf]))
        assert table["max_abs"][i] == r.max_abs and table["max_rel"][i] == r.max_rel and table["cosine"][i] == r.cosine
        assert table["ok"][i] is (r.max_rel <= r.tol)
        assert type(table["checked"][i]) is int and type(table["max_rel"][i]) is float
    assert set(table["pair"]) == {"manual~autodiff", "manual~fd", "autodiff~fd"}
    assert all(table["ok"])
    assert stats.gradcheck_table(report.rows) == table


def test_accepts_jax_arrays_and_jit_outputs():
    g = jax.tree_util.tree_map(jnp.asarray, random_per_example())
    np.testing.assert_allclose(stats.gradient_snr(g), stats.gradient_snr(random_per_example()), rtol=1e-6)


# --- validation --------------------------------------------------------------------------------------------

def test_validation_errors():
    g = random_per_example()
    with pytest.raises(ValueError, match="per must be one of"):
        stats.example_norms(g, per="leaf")
    with pytest.raises(ValueError, match="ddof"):
        stats.gradient_snr(g, ddof=-1)
    with pytest.raises(ValueError, match="at least 8 examples"):
        stats.gradient_snr(g, ddof=7)
    with pytest.raises(ValueError, match="at least 2 examples"):
        stats.gradient_variance(random_per_example(n=1))
    with pytest.raises(ValueError, match="empty"):
        stats.gradient_stats([])
    with pytest.raises(TypeError, match="list of per-layer dicts"):
        stats.example_norms("grads")
    bad = random_per_example()
    bad[1]["b"] = bad[1]["b"][:5]
    with pytest.raises(ValueError, match="batch size"):
        stats.example_norms(bad)
    with pytest.raises(ValueError, match="leading batch axis"):
        stats.example_norms([{"w": np.ones((2, 2)), "b": np.float64(1.0)}])
    with pytest.raises(TypeError, match="floating point"):
        stats.example_norms([{"w": np.ones((2, 2), dtype=np.int32)}])
    a = [{"w": np.ones((2, 2))}]
    with pytest.raises(ValueError, match="Structure mismatch"):
        stats.cosine_similarity(a, [{"v": np.ones((2, 2))}])
    with pytest.raises(ValueError, match="Shape mismatch"):
        stats.cosine_similarity(a, [{"w": np.ones((2, 3))}])
    with pytest.raises(ValueError, match="quantiles"):
        stats.delta_spread([np.ones((2, 3))], quantiles=(0.5, 1.5))
    with pytest.raises(ValueError, match="expected \\(batch"):
        stats.delta_spread([np.ones(3)])
    with pytest.raises(ValueError, match="batch 3"):
        stats.delta_spread([np.ones((2, 3)), np.ones((3, 3))])
    with pytest.raises(TypeError, match="GradcheckReport"):
        stats.gradcheck_table("report")


def test_statistics_of_a_serial_net_keep_layers_without_params_in_place():
    """Dropout and activation layers have no params: their per-example gradients are {} and the per-layer
    statistics keep one entry for them (norm 0, SNR NaN), so entry l is still layer l."""
    from fnn import layers as L

    net = fnn.serial(L.Dense(5, activation="tanh"), L.Dropout(0.3), L.Residual(L.Dense(5, activation="tanh")),
                     L.Dense(3), input_shape=(4,))
    params = net.init(jax.random.key(0))
    x, y = jax.random.normal(jax.random.key(1), (9, 4)), jnp.arange(9) % 3
    per_example = fnn.per_example_grads(net, params, x, y, "sparse_softmax_cross_entropy", key=jax.random.key(2))
    st = stats.gradient_stats(per_example)
    assert st["norms"].shape == (9, 4) and np.all(st["norms"][:, 1] == 0) and np.all(st["norms"][:, [0, 2, 3]] > 0)
    assert np.isnan(st["snr"][1]) and np.all(np.isfinite(st["snr"][[0, 2, 3]]))
    total = stats.example_norms(per_example, per="total")
    np.testing.assert_allclose(total, np.sqrt((st["norms"] ** 2).sum(axis=1)), rtol=1e-6)
    with pytest.raises(ValueError, match="holds no arrays"):
        stats.example_norms([{}, {}])
