"""Per-example and curvature quantities from the hand-written backward pass (BackPACK's quantities, for JAX).

One backward pass (:func:`fnn.backprop`) sees every layer's input ``a`` and error term ``δ = dL/dz``. For
Dense and Conv2D each example's gradient is a sum of outer products of the two (:mod:`fnn._factors`), and the
quantities below are computed from those factors **without materialising the per-example gradients** where the
layer allows it. Names and scaling follow BackPACK (``backpack-for-pytorch``) so its users can map one onto the
other; every function takes ``(net, params, x, y, loss, ...)`` like :func:`fnn.backprop` and works under
``jax.jit`` and ``jax.vmap`` (over an ensemble's params) and inside ``lax.scan``.

**Scaling (BackPACK's convention).** Every fnn loss is the batch mean ``L = (1/N) Σ_n ℓ_n`` (plus a penalty
``R(θ)`` when ``penalty=`` is given). The individual gradients are the summands of the batch gradient::

    g_n = ∇(ℓ_n + R) / N          so that  Σ_n g_n = ∇L           (BackPACK's ``grad_batch``)

which is :func:`fnn.per_example_grads` divided by ``N`` (that function returns ``∇ℓ_n`` itself), plus ``∇R / N``
with a penalty. Then, per parameter leaf:

=====================  ===========================================  ======================================
quantity               definition                                   Dense layer ``w`` (one GEMM or less)
=====================  ===========================================  ======================================
``batch_l2_grad``      ``‖g_n‖²``, shape ``(N,)``                   ``‖a_n‖² · ‖δ_n‖²``  (Goodfellow)
``sum_grad_squared``   ``Σ_n g_n²`` (elementwise), leaf-shaped       ``(a²)ᵀ (δ²)``
``variance``           ``(1/N) Σ_n g_n² − ((1/N) Σ_n g_n)²``         from the two above
=====================  ===========================================  ======================================

(``δ`` carries the batch mean's ``1/N``, so ``a_n ⊗ δ_n`` is ``g_n`` of ``w``.) ``variance`` is BackPACK's: the
biased (``ddof=0``) variance of the ``1/N``-scaled ``g_n``, i.e. ``Var_n(∇ℓ_n) / N²``; a penalty shifts every
``g_n`` by the same ``∇R/N`` and leaves it unchanged. ``fnn.stats.gradient_variance(per_example_grads(...),
ddof=0)`` is ``N²`` times it. It is computed as BackPACK does, from the two moments, so its rounding error is
relative to ``(1/N) Σ_n g_n²`` (not to the variance itself); where rounding would make it negative it is 0.

Conv2D shares each kernel across the ``S = Ho·Wo`` output positions: ``g_n = Σ_s P_{n,s} ⊗ δ_{n,s}`` (``P``
the im2col patches). ``batch_l2_grad`` is then ``Σ_{s,t} (P_s·P_t)(δ_s·δ_t)``, from two ``(N, S, S)`` Gram
matrices when ``S² ≤ kh·kw·C·F`` (else from ``g_n`` itself, one layer at a time, as BackPACK does);
``sum_grad_squared`` has no factored form there and builds ``g_n`` one layer at a time. Biases: ``g_n = Σ_s
δ_{n,s}``. Layers without params give ``{}``; Residual blocks recurse; a layer whose examples interact has no
``g_n`` and is named in a ``ValueError``.

**Several devices** (``devices=``, as in :func:`fnn.fit`): the batch is split over a 1-D mesh inside
``shard_map``; every device scales its factors by its share of the global batch, per-example quantities stay
with their rows (returned in the order of ``x``), and ``Σ_n`` terms are ``lax.psum``-ed over the devices — the
numbers of one device on the whole batch, up to the order of floating-point sums. Dropout masks are drawn by
global row, as in a sharded ``fit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from fnn import _factors, _layer, parallel
from fnn import penalties as _penalties
from fnn._types import Array, ArrayLike, Params, PRNGKey
from fnn.backprop import backprop_in, prepare
from fnn.eigen import MATRICES, METHODS, Eigen, top_eigenvalue
from fnn.network import Network, context
from fnn.second_order import diag_ggn, ggn_vector_product, hessian_vector_product, kfac, kflr

__all__ = ["FIRST_ORDER", "first_order", "batch_l2_grad", "sum_grad_squared", "variance",
           # second order (fnn.second_order, fnn.eigen; re-exported here: one namespace for BackPACK's quantities)
           "hessian_vector_product", "ggn_vector_product", "diag_ggn", "kfac", "kflr", "top_eigenvalue", "Eigen",
           "MATRICES", "METHODS"]

#: The first-order quantities :func:`first_order` computes, in BackPACK's names.
FIRST_ORDER = ("batch_l2_grad", "sum_grad_squared", "variance")

_tree_map = jax.tree_util.tree_map


def _scaled(tree, scale: float):
    if scale == 1:
        return tree
    return _tree_map(lambda f: _factors.Factor(f.a, f.d * scale, f.shape), tree)


def _quantities(net: Network, params: Params, x2: Array, y2: Array, loss, ctx: _layer.Context, pen,
                wanted: tuple[str, ...], n_total: int) -> dict:
    """Everything on one (shard of the) batch: the loss, the grads and the ``wanted`` quantities, with sums
    over this shard's examples only (:func:`first_order` reduces them over devices)."""
    value, grads, _, trace = backprop_in(net, params, x2, y2, loss, ctx, None)
    scale = x2.shape[0] / n_total  # 1 on one device; a shard's δ carries 1/(its rows), the batch's 1/N
    tree = _scaled(_layer.factors(net.layers, params, trace.layers, wanted[0] if wanted else "first_order"), scale)
    if scale != 1:
        grads = _tree_map(lambda g: g * scale, grads)  # this shard's Σ_n g_n
    out = {"loss": value, "grad": grads}
    if "batch_l2_grad" in wanted:
        l2 = _tree_map(_factors.squared_norms, tree)
        if pen is not None:
            l2 = _tree_map(lambda q, f, r: q + 2 * _factors.inner(f, r) / n_total + jnp.sum(r * r) / n_total**2,
                           l2, tree, pen)
        out["batch_l2_grad"] = l2
    if "sum_grad_squared" in wanted or "variance" in wanted:
        out["sgs_data"] = _tree_map(_factors.sum_of_squares, tree)
    return out


def _finish(out: dict, params: Params, penalty, pen, wanted: tuple[str, ...], n_total: int) -> dict:
    """The batch-wide quantities from the (reduced) sums: penalty terms, ``variance``. ``pen`` is the penalty's
    gradient (None without a penalty), computed once by :func:`first_order`."""
    data = out.pop("grad")
    sgs = out.pop("sgs_data", None)
    if pen is None:
        out["grad"] = data
    else:
        out["grad"] = _tree_map(lambda g, r: g + r.astype(g.dtype), data, pen)
        out["loss"] = out["loss"] + penalty.value(params).astype(out["loss"].dtype)
    if "sum_grad_squared" in wanted:
        out["sum_grad_squared"] = sgs if pen is None else _tree_map(
            lambda s, g, r: s + 2 * r * g / n_total + r * r / n_total, sgs, data, pen)
    if "variance" in wanted:  # from the data terms: a penalty shifts every g_n alike; never below 0 by rounding
        out["variance"] = _tree_map(lambda s, g: jnp.maximum(s / n_total - (g / n_total) ** 2, 0), sgs, data)
    return out


def _check_wanted(quantities) -> tuple[str, ...]:
    if isinstance(quantities, str) or not isinstance(quantities, Sequence):
        raise TypeError(f"quantities must be a sequence of names from {FIRST_ORDER}, got {quantities!r}.")
    unknown = [q for q in quantities if q not in FIRST_ORDER]
    if unknown:
        raise ValueError(f"Unknown first-order quantities {unknown}; known: {', '.join(FIRST_ORDER)}.")
    return tuple(dict.fromkeys(quantities))


def first_order(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *,
                quantities: Sequence[str] = FIRST_ORDER, key: PRNGKey | None = None, train: bool | None = None,
                penalty=None, devices=None) -> dict:
    """Loss, gradient and the first-order ``quantities`` of one batch, from one hand-written backward pass.

    Args:
      net, params, x, y, loss, key, train, penalty: as :func:`fnn.backprop`. With a penalty the loss and the
        gradient include it, and ``g_n`` includes ``∇R / N`` (module docstring).
      quantities: names from :data:`FIRST_ORDER` (default: all three).
      devices: None (this device), a number of devices, a device list or a mesh
        (:func:`fnn.parallel.make_mesh`): split the batch over them (module docstring). The batch size must
        be divisible by their number.

    Returns:
      ``{"loss": scalar, "grad": params-shaped, name: ... for each quantity}``: ``batch_l2_grad`` leaves ``(N,)``,
      ``sum_grad_squared`` and ``variance`` leaves in the shape of their param (``{}`` for layers without
      params).

    Raises:
      ValueError / TypeError: what :func:`fnn.backprop` refuses; unknown quantities; a layer without
        per-example gradients (named); a batch not divisible by the number of devices.

    Example:
      >>> import jax, jax.numpy as jnp, fnn
      >>> net = fnn.mlp([3, 4, 2], hidden="tanh", output="softmax")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
      >>> q = fnn.curvature.first_order(net, params, x, y, "sparse_categorical_cross_entropy")
      >>> q["batch_l2_grad"][0]["w"].shape, q["variance"][0]["w"].shape
      ((5,), (3, 4))
    """
    wanted = _check_wanted(quantities)
    _layer.check_factors(net.layers, wanted[0] if wanted else "first_order")
    loss, x2, y2 = prepare(net, params, x, y, loss)
    penalty = _penalties.get(penalty)
    pen = None if penalty is None else penalty.grad(params)  # ∇R, shared by every g_n
    ctx = context(net, key, train)
    n = x2.shape[0]
    if devices is None:
        return _finish(_quantities(net, params, x2, y2, loss, ctx, pen, wanted, n), params, penalty, pen, wanted,
                       n)
    mesh = parallel.make_mesh(devices)
    local = parallel.check_batch_size(n, mesh)
    axis = parallel.DATA_AXIS

    def shard(params, x2, y2, key, pen):
        rows = jax.lax.axis_index(axis).astype(jnp.int32) * local + jnp.arange(local, dtype=jnp.int32)
        out = _quantities(net, params, x2, y2, loss, ctx._replace(key=key, axis_name=axis, rows=rows), pen,
                          wanted, n)
        out["loss"] = jax.lax.pmean(out["loss"], axis)
        out["grad"] = jax.lax.psum(out["grad"], axis)
        if "sgs_data" in out:
            out["sgs_data"] = jax.lax.psum(out["sgs_data"], axis)
        return out

    split, same = PartitionSpec(axis), PartitionSpec()
    out_specs = {"loss": same, "grad": same, **({"batch_l2_grad": split} if "batch_l2_grad" in wanted else {}),
                 **({"sgs_data": same} if {"sum_grad_squared", "variance"} & set(wanted) else {})}
    run = jax.shard_map(shard, mesh=mesh, in_specs=(same, split, split, same, same), out_specs=out_specs)
    out = run(params, x2, y2, ctx.key, pen)
    return _finish(out, params, penalty, pen, wanted, n)


def batch_l2_grad(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, **kwargs) -> Params:
    """Each example's squared gradient norm per leaf, ``‖g_n‖²`` with ``g_n = ∇(ℓ_n + R)/N`` (BackPACK's
    ``BatchL2Grad``): a pytree like ``params`` whose leaves are ``(N,)``. Without materialising the ``g_n``:
    memory ``O(N × layers)`` for Dense (``‖a_n‖²·‖δ_n‖²``). Keywords as :func:`first_order`; the module
    docstring has the formulas and conventions. Per-example gradient norms of the unscaled ``∇ℓ_n`` (for
    clipping) are ``N · sqrt(Σ_leaves batch_l2_grad)`` without a penalty."""
    return first_order(net, params, x, y, loss, quantities=("batch_l2_grad",), **kwargs)["batch_l2_grad"]


def sum_grad_squared(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, **kwargs) -> Params:
    """The second moment ``Σ_n g_n²`` (elementwise) per leaf, ``g_n = ∇(ℓ_n + R)/N`` (BackPACK's
    ``SumGradSquared``), params-shaped: ``(a²)ᵀ(δ²)`` for Dense, one GEMM. Keywords as :func:`first_order`."""
    return first_order(net, params, x, y, loss, quantities=("sum_grad_squared",), **kwargs)["sum_grad_squared"]


def variance(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, **kwargs) -> Params:
    """The gradient variance ``(1/N) Σ_n g_n² − ((1/N) Σ_n g_n)²`` per element (BackPACK's ``Variance``: the
    biased variance of the ``1/N``-scaled ``g_n``, ``Var_n(∇ℓ_n) / N²``; unchanged by a penalty),
    params-shaped. Keywords as :func:`first_order`."""
    return first_order(net, params, x, y, loss, quantities=("variance",), **kwargs)["variance"]
