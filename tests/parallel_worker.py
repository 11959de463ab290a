"""Subprocess side of tests/test_parallel.py: data-parallel runs that need JAX started with several devices.

XLA_FLAGS=--xla_force_host_platform_device_count must be set before JAX initialises, and the pytest process
has already imported JAX, so the test starts this script with the flag set and reads the JSON it writes.

    python tests/parallel_worker.py single OUT.json      # one process, 4 forced host devices
    python tests/parallel_worker.py multihost OUT.json   # one of 2 processes (FNN_* env vars), 2 devices each

Shared with the test: :func:`problem` (the data, network and schedule both sides train on).
"""

from __future__ import annotations

import json
import sys

import numpy as np

LOSS = "sparse_categorical_cross_entropy"
SIZES = [6, 16, 8, 3]
STEPS = 3  # steps of the multi-host run, each on its own batch of STEP_BATCH
STEP_BATCH = 8


def problem(n: int = 64, seed: int = 0):
    """``(x, y)``: float64 inputs and integer labels, identical in every process."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0]))
    y = rng.integers(0, SIZES[-1], size=n)
    return x, y


def net_and_params():
    import jax

    import fnn

    net = fnn.mlp(SIZES, hidden="tanh", output="softmax")
    return net, net.init(jax.random.key(0))


def bn_net_and_params():
    """A net with synchronised BatchNorm (no bias before a BatchNorm: its gradient is exactly zero, and its
    rounding noise would be all a relative comparison of that leaf saw)."""
    import jax

    import fnn

    L = fnn.layers
    net = fnn.serial(L.Dense(8, bias=False), L.BatchNorm(), "tanh", L.Residual(L.Dense(8, bias=False),
                     L.BatchNorm(momentum=0.5)), L.Dense(SIZES[-1], "softmax"), input_shape=(SIZES[0],))
    return net, net.init(jax.random.key(5))


def as_lists(tree) -> list:
    import jax

    return [np.asarray(leaf).tolist() for leaf in jax.tree_util.tree_leaves(tree)]


def rel_err(a, b) -> float:
    """max over leaves of ``max |a - b| / max |b|``."""
    import jax

    errs = []
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        errs.append(float(np.max(np.abs(u - v))) / float(np.max(np.abs(v))) if np.any(v) else float(np.max(np.abs(u))))
    return max(errs)


def _error(fn) -> str | None:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def single(out: str) -> None:
    import jax
    import jax.numpy as jnp
    import optax

    import fnn

    jax.config.update("jax_enable_x64", True)
    result: dict = {"device_count": jax.device_count()}
    net, params = net_and_params()
    x, y = problem()
    xb, yb = x[:16], y[:16]

    # one step, float64: sharded over 2 and 4 devices (and an explicit device list) vs one device, full batch
    for grads in ("manual", "autodiff"):
        ref_p, ref_l = fnn.sgd_step(net, LOSS, learning_rate=0.3, grads=grads)(params, xb, yb)
        for devices in ((2, 4, "list") if grads == "manual" else (4,)):
            devs = jax.devices() if devices == "list" else devices
            p, l = fnn.sgd_step(net, LOSS, learning_rate=0.3, grads=grads, devices=devs)(params, xb, yb)
            result[f"step_{grads}_{devices}"] = {"params": rel_err(p, ref_p),
                                                 "loss": abs(float(l) - float(ref_l)) / float(ref_l),
                                                 "sharding": str(p[0]["w"].sharding.spec),
                                                 "num_devices": len(p[0]["w"].sharding.device_set)}
    opt = optax.adam(1e-2)
    ref = fnn.sgd_step(net, LOSS, optimizer=opt, learning_rate=None, grads="autodiff")
    par = fnn.sgd_step(net, LOSS, optimizer=opt, learning_rate=None, grads="autodiff", devices=4)
    rp, rs, pp, ps = params, opt.init(params), params, opt.init(params)
    for k in range(3):
        rp, rs, _ = ref(rp, rs, x[16 * k:16 * (k + 1)], y[16 * k:16 * (k + 1)])
        pp, ps, _ = par(pp, ps, x[16 * k:16 * (k + 1)], y[16 * k:16 * (k + 1)])
    result["step_adam_4"] = {"params": rel_err(pp, rp), "opt_state": rel_err(ps, rs)}

    # fnn.curvature, float64: per-device partial sums psum-ed (and per-example norms kept by row) vs one device,
    # on a net with dropout in training mode (masks by global row) and an L2 penalty
    L = fnn.layers
    net_d = fnn.serial(L.Dense(8, "tanh"), L.Dropout(0.3), L.Residual(L.Dense(8, "sigmoid")), L.Dense(SIZES[-1]),
                       "softmax", input_shape=(SIZES[0],))
    params_d = net_d.init(jax.random.key(3))
    kw = dict(key=jax.random.key(4), penalty=fnn.penalties.l2(0.05))
    one = fnn.curvature.first_order(net_d, params_d, xb, yb, LOSS, **kw)
    sharded = fnn.curvature.first_order(net_d, params_d, xb, yb, LOSS, devices=4, **kw)
    result["curvature_4"] = {q: rel_err(sharded[q], one[q]) for q in one}
    result["curvature_keys"] = sorted(one)
    # second order on the same net: the R-passes' and backpropagated factors' sums psum-ed over the devices
    # (each side one jitted program: eager, every shard_map call compiles on its own, 74 s against 4 s)
    C = fnn.curvature
    v = jax.tree_util.tree_map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params_d)
    mode = dict(dropout_key=kw["key"])

    def second(devices):
        return {
            "hvp": C.hessian_vector_product(net_d, params_d, xb, yb, LOSS, v, **kw, devices=devices),
            "ggnvp": C.ggn_vector_product(net_d, params_d, xb, yb, LOSS, v, **kw, devices=devices),
            "diag_ggn": C.diag_ggn(net_d, params_d, xb, yb, LOSS, penalty=kw["penalty"], **mode, devices=devices),
            "kflr": C.kflr(net_d, params_d, xb, yb, LOSS, **mode, devices=devices),
            "top_eigenvalue": C.top_eigenvalue(net_d, params_d, xb, yb, LOSS, key=jax.random.key(2), tol=1e-9,
                                               max_iterations=50, penalty=kw["penalty"], **mode,
                                               devices=devices).value,
        }

    one, four = jax.jit(lambda: second(None))(), jax.jit(lambda: second(4))()
    result["second_order_4"] = {q: rel_err(four[q], one[q]) for q in one}

    # synchronised BatchNorm: N devices on a global batch equal one device on it (params and running statistics)
    net_b, params_b = bn_net_and_params()
    for grads in ("manual", "autodiff"):
        ref_p, ref_s, ref_l = fnn.sgd_step(net_b, LOSS, learning_rate=0.3, grads=grads)(params_b, net_b.init_state(),
                                                                                       xb, yb)
        p, s, l = fnn.sgd_step(net_b, LOSS, learning_rate=0.3, grads=grads, devices=4)(params_b, net_b.init_state(),
                                                                                      xb, yb)
        result[f"bn_step_{grads}"] = {"params": rel_err(p, ref_p), "state": rel_err(s, ref_s),
                                      "loss": abs(float(l) - float(ref_l)) / float(ref_l),
                                      "moved": rel_err(s, net_b.init_state())}
    common = dict(loss=LOSS, epochs=1, batch_size=16, key=jax.random.key(1), progress=False, learning_rate=0.3,
                  state=net_b.init_state(), test=(x, y))
    p1, s1, h1 = fnn.fit(net_b, params_b, (x, y), **common)
    p4, s4, h4 = fnn.fit(net_b, params_b, (x, y), devices=4, **common)
    result["bn_fit"] = {"params": rel_err(p4, p1), "state": rel_err(s4, s1), "acc_1": h1["test_accuracy"],
                        "acc_4": h4["test_accuracy"]}
    result["error_curvature_indivisible"] = _error(
        lambda: fnn.curvature.batch_l2_grad(net_d, params_d, xb[:10], yb[:10], LOSS, devices=4))

    # whole fit, float32: sharded vs unsharded, plain SGD and adam with strict mode
    jax.config.update("jax_enable_x64", False)
    net32, params32 = net_and_params()
    x32 = x.astype(np.float32)
    configs = {"sgd": {"test": (x32, y)}, "adam_strict": {"optimizer": "adam", "learning_rate": 1e-2, "strict": True}}
    for name, kw in configs.items():
        common = dict(loss=LOSS, epochs=3, batch_size=8, key=jax.random.key(1), progress=False, **kw)
        p1, h1 = fnn.fit(net32, params32, (x32, y), **common)
        p4, h4 = fnn.fit(net32, params32, (x32, y), devices=4, **common)
        result[f"fit_{name}"] = {"params": rel_err(p4, p1), "dtype": str(p4[0]["w"].dtype),
                                 "loss_1": h1["train_loss"], "loss_4": h4["train_loss"],
                                 "acc_1": h1.get("test_accuracy"), "acc_4": h4.get("test_accuracy"),
                                 "moved": rel_err(p1, params32), "dtype_in": str(params32[0]["w"].dtype)}

    # divergence in strict mode: the sharded epoch freezes at the same step and blames the same layer
    import warnings

    net_r = fnn.mlp([SIZES[0], 16, 1], hidden="tanh", output="identity")
    params_r, target = net_r.init(jax.random.key(2)), x32[:, :1] * 3
    diverged = []
    for devices in (None, 4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fnn.DivergenceWarning)
            _, h = fnn.fit(net_r, params_r, (x32, target), loss="mse", epochs=3, batch_size=8, learning_rate=50.0,
                           strict=True, key=jax.random.key(1), progress=False, devices=devices)
        diverged.append(h.get("diverged"))
    result["diverged"] = diverged

    # errors
    result["error_step_indivisible"] = _error(lambda: fnn.sgd_step(net32, LOSS, devices=4)(params32, x32[:10], y[:10]))
    result["error_fit_indivisible"] = _error(lambda: fnn.fit(net32, params32, (x32, y), loss=LOSS, epochs=1,
                                                             batch_size=10, key=jax.random.key(1), progress=False,
                                                             devices=4))
    result["error_too_many"] = _error(lambda: fnn.sgd_step(net32, LOSS, devices=5))
    with open(out, "w") as f:
        json.dump(result, f)


def multihost(out: str) -> None:
    import jax

    import fnn

    # coordinator, process count and id come from FNN_COORDINATOR_ADDRESS / FNN_NUM_PROCESSES / FNN_PROCESS_ID
    fnn.parallel.initialize_distributed()
    jax.config.update("jax_enable_x64", True)
    net, params = net_and_params()
    x, y = problem()
    mesh = fnn.parallel.make_mesh(jax.device_count())
    part = fnn.parallel.local_batch_slice(mesh, STEP_BATCH)
    result: dict = {"process_index": jax.process_index(), "process_count": jax.process_count(),
                    "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
                    "part": [part.start, part.stop]}

    step = fnn.sgd_step(net, LOSS, learning_rate=0.3, devices=mesh)
    p, losses = params, []
    for k in range(STEPS):
        xb, yb = x[STEP_BATCH * k:STEP_BATCH * (k + 1)], y[STEP_BATCH * k:STEP_BATCH * (k + 1)]
        p, loss = step(p, xb[part], yb[part])  # this process feeds only its part of the batch
        losses.append(float(loss))
    result["sgd_params"], result["sgd_losses"] = as_lists(p), losses

    adam = fnn.sgd_step(net, LOSS, optimizer="adam", learning_rate=1e-2, grads="autodiff", devices=mesh)
    p, s = params, fnn.make_optimizer("adam", 1e-2).init(params)
    for k in range(STEPS):
        xb, yb = x[STEP_BATCH * k:STEP_BATCH * (k + 1)], y[STEP_BATCH * k:STEP_BATCH * (k + 1)]
        p, s, _ = adam(p, s, xb[part], yb[part])
    result["adam_params"] = as_lists(p)

    net_b, params_b = bn_net_and_params()
    step = fnn.sgd_step(net_b, LOSS, learning_rate=0.3, devices=mesh)
    p, s = params_b, net_b.init_state()
    for k in range(STEPS):
        xb, yb = x[STEP_BATCH * k:STEP_BATCH * (k + 1)], y[STEP_BATCH * k:STEP_BATCH * (k + 1)]
        p, s, _ = step(p, s, xb[part], yb[part])
    result["bn_params"], result["bn_state"] = as_lists(p), as_lists(s)

    # fit: every process holds the whole training set; each device gathers its rows of every batch
    p, h = fnn.fit(net, params, (x, y), loss=LOSS, epochs=2, batch_size=STEP_BATCH, key=jax.random.key(1),
                   progress=False, devices=mesh)
    result["fit_params"], result["fit_losses"] = as_lists(p), h["train_loss"]
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    {"single": single, "multihost": multihost}[sys.argv[1]](sys.argv[2])
