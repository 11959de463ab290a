"""Tests for fnn/normalization.py: LayerNorm and BatchNorm, their hand-written backward passes and BatchNorm's
explicit state.

* Gradients: LayerNorm and BatchNorm alone, inside Dense stacks and inside residual blocks, on flat inputs and
  on images after a convolution, × three losses × batch sizes 2 and 7, BatchNorm in training and in inference
  mode: manual == ``jax.grad`` (float64, relative 1e-10 with each layer's largest gradient as the scale of its
  rounding: a bias before a BatchNorm has an exactly zero gradient), one compiled program per net; central
  finite differences on a covering subset through ``fnn.gradcheck`` (LayerNorm and BatchNorm in training mode on
  flat inputs and images, float64 and the float32 error model; inference mode is an affine map, checked against
  jax.grad in the matrix); eager on one net.
* State: running statistics after k steps equal a NumPy computation of the recurrence; inference uses them;
  the state round-trips through a checkpoint; errors for a missing or foreign state and a training batch of one;
  constant features stay finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import first_order_reference, make_targets
from hypothesis import given, settings
from hypothesis import strategies as st

import fnn
from fnn import layers as L

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
SPARSE_CE = "sparse_categorical_cross_entropy"
LOSSES = {SPARSE_CE: "softmax", "mse": "identity", "binary_cross_entropy": "sigmoid"}
N_IN, WIDTH, N_OUT = 3, 5, 3
tree_map = jax.tree_util.tree_map


def _nets() -> dict:
    def flat(*middle, output):
        return fnn.serial(L.Dense(WIDTH, "tanh"), *middle, L.Dense(N_OUT, output), input_shape=(N_IN,))

    def image(norm, output):
        return fnn.serial(L.Conv2D(3, 2, padding="VALID"), norm, "relu", L.Flatten(), L.Dense(N_OUT, output),
                          input_shape=(3, 3, 2))

    return {
        "layernorm": lambda out: fnn.serial(L.LayerNorm(), L.Dense(N_OUT, out), input_shape=(N_IN,)),
        "batchnorm": lambda out: fnn.serial(L.BatchNorm(), L.Dense(N_OUT, out), input_shape=(N_IN,)),
        "dense-ln-bn": lambda out: flat(L.LayerNorm(), L.Dense(WIDTH), L.BatchNorm(momentum=0.5), "sigmoid",
                                        output=out),
        "residual": lambda out: flat(L.Residual(L.Dense(WIDTH), L.BatchNorm(), "tanh"),
                                     L.Residual(L.LayerNorm(scale=False), L.Dense(WIDTH, "tanh")), output=out),
        "conv-bn": lambda out: image(L.BatchNorm(offset=False), out),
        "conv-ln": lambda out: image(L.LayerNorm(), out),
    }


NETS = _nets()


def _params(net, rng):
    shapes = jax.eval_shape(net.init, jax.random.key(0))
    return tree_map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.6 + 0.2, s.dtype), shapes)


def _state(net, rng):
    """A non-trivial state: running statistics away from their init."""
    return tree_map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, size=s.shape) if s.shape else s, s.dtype),
                    jax.eval_shape(net.init_state))


def _case(net, loss, batch, rng):
    x = jnp.asarray(rng.normal(size=(batch, *net.input_shape)))
    return _params(net, rng), x, make_targets(loss, batch, N_OUT, rng, x.dtype)


def assert_grads_close(got, want, what, rtol=1e-10):
    """Per leaf: |got - want| ≤ rtol · max(|want| of the leaf's top-level layer)."""
    for l, (g_layer, w_layer) in enumerate(zip(got, want, strict=True)):
        scale = max([float(np.max(np.abs(t))) for t in jax.tree_util.tree_leaves(w_layer)] or [0.0])
        for g, w in zip(jax.tree_util.tree_leaves(g_layer), jax.tree_util.tree_leaves(w_layer), strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype, what
            err = float(np.max(np.abs(np.asarray(g) - np.asarray(w))))
            assert err <= rtol * scale, f"{what} layer {l}: max error {err:.2e} > {rtol:.0e} × {scale:.2e}"


@pytest.mark.parametrize("name", list(NETS))
def test_manual_equals_autodiff_every_loss_batch_and_mode(name, x64):
    rng = np.random.default_rng(sum(map(ord, name)))
    cases = []
    for loss, output in LOSSES.items():
        net = NETS[name](output)
        for batch in (2, 7):
            for train in ((True, False) if net.stateful else (True,)):
                cases.append((net, loss, batch, train, _case(net, loss, batch, rng), _state(net, rng)))

    def run(args):
        out = []
        for (net, loss, _, train, _, _), (data, state) in zip(cases, args, strict=True):
            s = state if net.stateful else None
            out.append((fnn.backprop(net, *data, loss, train=train, state=s),
                        fnn.autodiff(net, *data, loss, train=train, state=s)))
        return out

    args = [(case[4], case[5]) for case in cases]
    results = jax.jit(run).lower(args).compile(FAST_COMPILE)(args)
    for (net, loss, batch, train, _, state), (manual, auto) in zip(cases, results, strict=True):
        what = f"{name}, {loss}, batch {batch}, {'training' if train else 'inference'} mode"
        np.testing.assert_allclose(manual[0], auto[0], rtol=1e-13, err_msg=what)
        assert_grads_close(manual[1], auto[1], what)
        if net.stateful:
            tree_map(lambda a, b, w=what: np.testing.assert_allclose(a, b, rtol=1e-14, err_msg=w), manual[2], auto[2])
            moved = any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(manual[2]),
                                                              jax.tree_util.tree_leaves(state), strict=True))
            assert moved == train, what  # training mode updates the running statistics, inference does not


@pytest.mark.parametrize("name, loss, batch, train, dtype", [
    # float32 params: gradcheck checks every float64 leg (manual~autodiff, both ~fd) and the float32 legs
    ("dense-ln-bn", SPARSE_CE, 7, True, "float32"),        # LayerNorm, BatchNorm (training), batch 7
    ("conv-bn", "binary_cross_entropy", 2, True, "float32"),  # per-channel statistics of images, batch 2
])
def test_gradcheck_finite_differences(name, loss, batch, train, dtype):
    """manual == autodiff == central differences through fnn.gradcheck, and the float32 legs within its error
    model."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(dtype == "float64"):
        net = NETS[name](LOSSES[loss])
        params, x, y = _case(net, loss, batch, rng)
        params = tree_map(lambda t: t.astype(dtype), params)
        state = tree_map(lambda t: t.astype(jnp.float32), _state(net, rng)) if net.stateful else None
        report = fnn.gradcheck(net, params, x.astype(dtype), y if loss == SPARSE_CE else y.astype(dtype), loss,
                               train=train, state=state, num_checks=40)
        assert report.ok, str(report)
        assert {r.pair for r in report.rows} >= {"manual~autodiff", "manual~fd", "autodiff~fd", "manual~float64"}


def test_eager_equals_jit(x64):
    net = NETS["dense-ln-bn"]("softmax")
    rng = np.random.default_rng(4)
    params, x, y = _case(net, SPARSE_CE, 7, rng)
    state = net.init_state()
    eager = fnn.backprop(net, params, x, y, SPARSE_CE, train=True, state=state)
    jitted = jax.jit(lambda p, x, y, s: fnn.backprop(net, p, x, y, SPARSE_CE, train=True, state=s))(params, x, y,
                                                                                                      state)
    tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15), eager, jitted)


# --- the state ------------------------------------------------------------------------------------------------

def test_running_statistics_follow_the_recurrence_and_inference_uses_them(x64):
    momentum, eps, k = 0.8, 1e-3, 3
    net = fnn.serial(L.Dense(4), L.BatchNorm(momentum=momentum, eps=eps), input_shape=(N_IN,))
    rng = np.random.default_rng(5)
    params = _params(net, rng)
    state = net.init_state()
    mean, var = np.zeros(4), np.ones(4)
    batches = [rng.normal(size=(6, N_IN)) * 2 + 1 for _ in range(k)]
    w, b = np.asarray(params[0]["w"]), np.asarray(params[0]["b"])
    for xb in batches:
        out, state = net.apply(params, xb, train=True, state=state)
        z = xb @ w + b
        mu, v = z.mean(0), z.var(0)  # biased, as the forward normalises
        np.testing.assert_allclose(out, (z - mu) / np.sqrt(v + eps) * np.asarray(params[1]["scale"])
                                   + np.asarray(params[1]["offset"]), rtol=1e-12)
        mean = momentum * mean + (1 - momentum) * mu
        var = momentum * var + (1 - momentum) * z.var(0, ddof=1)  # unbiased running variance
    np.testing.assert_allclose(state[1]["mean"], mean, rtol=1e-13)
    np.testing.assert_allclose(state[1]["var"], var, rtol=1e-13)
    assert state[0] == {}
    xt = rng.normal(size=(5, N_IN))
    out, same = net.apply(params, xt, state=state)  # inference mode: the running statistics, state unchanged
    z = xt @ w + b
    want = (z - mean) / np.sqrt(var + eps) * np.asarray(params[1]["scale"]) + np.asarray(params[1]["offset"])
    np.testing.assert_allclose(out, want, rtol=1e-12)
    tree_map(lambda a, b: np.testing.assert_array_equal(a, b), same, state)
    # backprop returns the same new state as apply
    _, _, new = fnn.backprop(net, params, batches[0], np.zeros((6, 4)), "mse", train=True, state=net.init_state())
    _, want_state = net.apply(params, batches[0], train=True, state=net.init_state())
    tree_map(lambda a, b: np.testing.assert_array_equal(a, b), new, want_state)


def test_state_round_trips_through_a_checkpoint(tmp_path):
    net = NETS["residual"]("softmax")
    rng = np.random.default_rng(6)
    params = _params(net, rng)
    state = tree_map(lambda t: jnp.asarray(rng.normal(size=t.shape), t.dtype), net.init_state())
    path = fnn.save(tmp_path / "bn.safetensors", params, net=net, state=state)
    ckpt = fnn.load(path, net)
    tree_map(lambda a, b: np.testing.assert_array_equal(a, b), ckpt.state, state)
    assert jax.tree_util.tree_structure(ckpt.state) == jax.tree_util.tree_structure(state)


def test_constant_features_stay_finite(x64):
    net = fnn.serial(L.BatchNorm(), L.LayerNorm(), L.Dense(N_OUT, "softmax"), input_shape=(N_IN,))
    params = _params(net, np.random.default_rng(7))
    x = jnp.ones((5, N_IN)) * 3.0  # zero variance in every feature (BatchNorm) and every example (LayerNorm)
    y = jnp.arange(5) % N_OUT
    value, grads, state = fnn.backprop(net, params, x, y, SPARSE_CE, train=True, state=net.init_state())
    assert np.isfinite(float(value)) and all(np.isfinite(t).all() for t in jax.tree_util.tree_leaves(grads))
    assert all(np.isfinite(t).all() for t in jax.tree_util.tree_leaves(state))


def test_errors_say_what_is_wrong():
    net = NETS["dense-ln-bn"]("softmax")
    params = net.init(jax.random.key(0))
    x, y = jnp.ones((4, N_IN)), jnp.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"layer 3: BatchNorm's running statistics.*state = net.init_state\(\)"):
        fnn.backprop(net, params, x, y, SPARSE_CE, train=True)
    with pytest.raises(ValueError, match=r"layer 3: BatchNorm"):
        net.apply(params, x)  # inference mode needs the running statistics
    with pytest.raises(ValueError, match=r"Layer 3 \(BatchNorm\): training mode needs more than one value"):
        fnn.backprop(net, params, x[:1], y[:1], SPARSE_CE, train=True, state=net.init_state())
    net.apply(params, x[:1], state=net.init_state())  # one example in inference mode is fine
    with pytest.raises(TypeError, match="one entry per layer"):
        fnn.backprop(net, params, x, y, SPARSE_CE, train=True, state=net.init_state()[:2])
    bad = net.init_state()
    bad[3] = {"mean": jnp.zeros(2), "var": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"state entry 3.mean has shape \(2,\), expected \(5,\)"):
        fnn.backprop(net, params, x, y, SPARSE_CE, train=True, state=bad)
    with pytest.raises(ValueError, match=r"layer 3 \(BatchNorm\) has no per-example gradients .*batch statistics"):
        fnn.per_example_grads(net, params, x, y, SPARSE_CE)
    with pytest.raises(ValueError, match=r"batch_l2_grad: layer 3 \(BatchNorm\) has no per-example gradients"):
        fnn.curvature.batch_l2_grad(net, params, x, y, SPARSE_CE)
    for kw, exc in [({"momentum": 1.0}, ValueError), ({"eps": 0}, ValueError), ({"scale": 1}, TypeError)]:
        with pytest.raises(exc, match="BatchNorm"):
            L.BatchNorm(**kw)
    with pytest.raises(ValueError, match="LayerNorm: eps must be a positive number"):
        L.LayerNorm(eps=-1.0)


def test_layernorm_has_per_example_gradients_and_curvature(x64):
    net = fnn.serial(L.Dense(WIDTH, "tanh"), L.LayerNorm(), L.Residual(L.LayerNorm(offset=False), L.Dense(WIDTH)),
                     L.Dense(N_OUT, "softmax"), input_shape=(N_IN,))
    rng = np.random.default_rng(8)
    params, x, y = _case(net, SPARSE_CE, 6, rng)

    def run(p, x, y):
        alone = jax.vmap(lambda xi, yi: fnn.autodiff(net, p, xi[None], yi[None], SPARSE_CE)[1])(x, y)
        return (fnn.curvature.first_order(net, p, x, y, SPARSE_CE), first_order_reference(net, p, x, y, SPARSE_CE),
                fnn.per_example_grads(net, p, x, y, SPARSE_CE), alone)

    q, ref, per, alone = jax.jit(run).lower(params, x, y).compile(FAST_COMPILE)(params, x, y)
    for name in fnn.curvature.FIRST_ORDER:
        assert_grads_close(q[name], ref[name], name)
    assert_grads_close(per, alone, "per-example gradients")


def test_describe_round_trip_and_stateless_nets_keep_their_signatures():
    net = NETS["residual"]("softmax")
    again = fnn.network.from_description(net.describe())
    assert again.describe() == net.describe() and again.stateful
    plain = fnn.mlp([3, 4, 2])
    assert not plain.stateful and plain.init_state() == [{}, {}]
    p = plain.init(jax.random.key(0))
    x, y = jnp.ones((3, 3)), jnp.zeros((3, 2))
    assert len(fnn.backprop(plain, p, x, y, "mse")) == 2
    value, grads, state = fnn.backprop(plain, p, x, y, "mse", state=plain.init_state())  # state= adds the state
    assert state == [{}, {}]


@settings(max_examples=8)
@given(layers=st.lists(st.sampled_from(["ln", "bn", "dense", "tanh", "res"]), min_size=1, max_size=4),
       batch=st.integers(2, 5), train=st.booleans(), seed=st.integers(0, 2**16))
def test_random_stacks_with_normalisation(layers, batch, train, seed):
    make = {"ln": lambda: L.LayerNorm(), "bn": lambda: L.BatchNorm(), "dense": lambda: L.Dense(4),
            "tanh": lambda: "tanh", "res": lambda: L.Residual(L.BatchNorm(), L.Dense(4, "tanh"))}
    with jax.enable_x64(True):
        net = fnn.serial(L.Dense(4), *[make[k]() for k in layers], L.Dense(N_OUT, "softmax"), input_shape=(N_IN,))
        rng = np.random.default_rng(seed)
        params, x, y = _case(net, SPARSE_CE, batch, rng)
        state = _state(net, rng) if net.stateful else None
        both = jax.jit(lambda p, x, y, s: (fnn.backprop(net, p, x, y, SPARSE_CE, train=train, state=s),
                                           fnn.autodiff(net, p, x, y, SPARSE_CE, train=train, state=s)))
        manual, auto = both.lower(params, x, y, state).compile(FAST_COMPILE)(params, x, y, state)
        np.testing.assert_allclose(manual[0], auto[0], rtol=1e-12)
        assert_grads_close(manual[1], auto[1], f"{layers}", rtol=1e-9)


# --- training with state: sgd_step, fit, checkpoints, fit_ensemble -------------------------------------------

def _classification(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)).astype(np.int32)


def _bn_net():
    return fnn.serial(L.Dense(8, bias=False), L.BatchNorm(momentum=0.7), "tanh", L.Dense(3, "softmax"),
                      input_shape=(4,))


def _same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b),
                                                    strict=True))


@pytest.mark.parametrize("optimizer", [None, "adam"])
def test_fit_carries_the_state_and_equals_its_steps(optimizer):
    """fit's compiled epochs (the state carried beside the optimizer state) equal a Python loop of sgd_step over
    the same batches, bit for bit; the test metrics use the running statistics."""
    net, (x, y) = _bn_net(), _classification()
    params, state = net.init(jax.random.key(0)), net.init_state()
    kw = dict(loss=SPARSE_CE, batch_size=32, key=jax.random.key(1), progress=False, optimizer=optimizer)
    p, s, h = fnn.fit(net, params, (x, y), (x, y), epochs=2, state=state, **kw)
    step = fnn.sgd_step(net, SPARSE_CE, optimizer=optimizer, learning_rate=None)
    q, r = params, state
    o = fnn.make_optimizer(optimizer, fnn.optim.DEFAULT_LEARNING_RATES[optimizer]).init(params) if optimizer else None
    for e in range(2):
        order = np.asarray(fnn.epoch_order(jax.random.fold_in(jax.random.key(1), e), x.shape[0]))
        for b in range(x.shape[0] // 32):
            idx = order[b * 32:(b + 1) * 32]
            if optimizer:
                q, o, r, _ = step(q, o, r, x[idx], y[idx])
            else:
                q, r, _ = step(q, r, x[idx], y[idx])
    assert _same((p, s), (q, r))
    assert not np.allclose(s[1]["var"], 1.0)  # the running statistics moved
    assert h["test_accuracy"][-1] == fnn.evaluate(net, p, x, y, SPARSE_CE, state=s)["accuracy"]
    with pytest.raises(ValueError, match="BatchNorm's running statistics"):
        fnn.fit(net, params, (x, y), epochs=1, **kw)
    with pytest.raises(ValueError, match="BatchNorm's running statistics"):
        fnn.evaluate(net, p, x, y, SPARSE_CE)


def test_resume_restores_the_state_bit_identically(tmp_path):
    net, (x, y) = _bn_net(), _classification()
    params, state = net.init(jax.random.key(0)), net.init_state()
    kw = dict(loss=SPARSE_CE, batch_size=32, key=jax.random.key(1), progress=False, optimizer="adam", state=state)
    fnn.fit(net, params, (x, y), epochs=2, checkpoint_dir=tmp_path, **kw)
    ckpt = fnn.load(tmp_path / "checkpoint.safetensors", net)
    assert ckpt.state is not None and not np.allclose(ckpt.state[1]["mean"], 0.0)
    resumed = fnn.fit(net, params, (x, y), epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    straight = fnn.fit(net, params, (x, y), epochs=4, **kw)
    assert _same(resumed[:2], straight[:2]) and resumed[2]["train_loss"] == straight[2]["train_loss"]


def test_fit_ensemble_gives_each_member_its_own_state():
    net, (x, y) = _bn_net(), _classification()
    keys, rates = jax.random.split(jax.random.key(1), 2), [0.1, 0.3]
    params = jax.vmap(net.init)(jax.random.split(jax.random.key(0), 2))
    state = jax.vmap(lambda _: net.init_state())(jnp.arange(2))
    kw = dict(loss=SPARSE_CE, epochs=2, batch_size=32)
    p, s, h = fnn.fit_ensemble(net, params, (x, y), (x, y), keys=keys, state=state, learning_rate=rates, **kw)
    for m in range(2):
        alone = fnn.fit(net, tree_map(lambda t, m=m: t[m], params), (x, y), (x, y), key=keys[m],
                        state=net.init_state(), learning_rate=rates[m], progress=False, **kw)
        assert _same(tree_map(lambda t, m=m: t[m], (p, s)), alone[:2]), m
        assert h["test_accuracy"][-1][m] == alone[2]["test_accuracy"][-1]
    with pytest.raises(ValueError, match="stacked, one per member"):
        fnn.fit_ensemble(net, params, (x, y), keys=keys, state=net.init_state(), **kw)


def test_custom_vjp_bridges_take_the_state(x64):
    """manual_apply(net)(..., state=) returns (output, new state) and its jax.grad runs the hand-written rules;
    manual_objective(net, loss)(..., state=) is the loss whose jax.grad is backprop's gradient."""
    net = NETS["residual"]("softmax")
    rng = np.random.default_rng(9)
    params, x, y = _case(net, SPARSE_CE, 5, rng)
    state = _state(net, rng)
    f = fnn.manual_apply(net)
    out, new = f(params, x, train=True, state=state)
    ref_out, ref_new = net.apply(params, x, train=True, state=state)
    np.testing.assert_allclose(out, ref_out, rtol=1e-13)
    tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-14), new, ref_new)
    cost = lambda apply: lambda p: jnp.sum(jnp.sin(apply(p, x, train=True, state=state)[0]))  # noqa: E731
    assert_grads_close(jax.grad(cost(f))(params), jax.grad(cost(net.apply))(params), "manual_apply")
    obj = fnn.manual_objective(net, SPARSE_CE)
    grads = jax.grad(lambda p: obj(p, x, y, train=True, state=state))(params)
    assert_grads_close(grads, fnn.backprop(net, params, x, y, SPARSE_CE, train=True, state=state)[1],
                       "manual_objective")
    with pytest.raises(ValueError, match="BatchNorm's running statistics"):
        f(params, x)


def test_low_precision_params_keep_float32_statistics():
    net = fnn.serial(L.Dense(4, bias=False), L.BatchNorm(), L.LayerNorm(), L.Dense(N_OUT), input_shape=(N_IN,),
                     dtype="bfloat16")
    params, state = net.init(jax.random.key(0)), net.init_state()
    assert state[1]["mean"].dtype == jnp.float32  # running statistics in float32 for bfloat16 params
    x = jnp.asarray(np.random.default_rng(10).normal(size=(6, N_IN)) * 100, jnp.bfloat16)
    out, new = net.apply(params, x, train=True, state=state)
    assert out.dtype == jnp.bfloat16 and new[1]["var"].dtype == jnp.float32
    assert np.isfinite(np.asarray(out, np.float32)).all() and float(new[1]["var"].max()) > 10
    _, grads, _ = fnn.backprop(net, params, x, jnp.zeros((6, N_OUT), jnp.bfloat16), "mse", train=True, state=state)
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree_util.tree_leaves(grads))
