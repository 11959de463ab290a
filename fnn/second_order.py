"""Second-order quantities from the hand-written passes (BackPACK's names): curvature products, the GGN diagonal,
Kronecker factors and the top eigenvalue. Reached as ``fnn.curvature.<name>``.

**The matrices.** With ``L(θ) = (1/N) Σ_n ℓ_n(f(x_n; θ)) + R(θ)`` (every fnn loss is a batch mean; ``R`` a
``penalty=``), ``H = ∇²L`` is the Hessian and the generalised Gauss-Newton matrix is

    G = Σ_n J_nᵀ H_n J_n + ∇²R,    J_n = ∂f_n/∂θ,   H_n = ∂²L/∂f_n²  (the 1/N included)

where ``f`` is what the loss sees: the logits ``z`` for a fused output/loss pair (softmax + cross-entropy,
sigmoid + binary cross-entropy) and for the from-logits losses, the network output otherwise (BackPACK's
convention with a loss on logits). ``G`` drops from ``H`` every term in the first-order error, so it is
positive semi-definite for convex losses (``H_n`` per loss: :mod:`fnn.losses`). Penalties: ``∇²R`` is diagonal
(λ on an ``l2`` term's leaves, 0 for ``l1``) and is added to every quantity below except the Kronecker factors.

**Products, by hand** (Pearlmutter 1994). ``hessian_vector_product`` runs the forward pass, the hand-written
backward pass, then the R-operator of both along ``v`` (each layer's ``rforward``/``rbackward`` beside its
``forward``/``backward``, :mod:`fnn._layer`): ``R{z} = R{x} w + x v_w + v_b``, ``R{a} = f'(z) R{z}``, at the
loss ``R{dL/df} = H_n R{f}``, and back down ``R{δ} = f'(z) ⊙ R{g} + g ⊙ f''(z) ⊙ R{z}`` (the activation
records' ``jvp``/``second``; softmax's written as VJPs), ``R{dw} = xᵀ R{δ} + R{x}ᵀ δ``, ``R{dx} = R{δ} wᵀ +
δ v_wᵀ``. ``ggn_vector_product`` is the same passes without the first-order error terms (``δ``, ``g`` = 0
outside the loss): the backward pass of the network linearised at ``θ``. Cost: about one forward and two
backward passes; no ``jax.jvp``/``jax.grad`` anywhere. Layers without R-operator rules (LayerNorm, BatchNorm)
are named in a ``ValueError``.

**diag_ggn.** ``diag(G) = Σ_n Σ_c (J_nᵀ S_n[:, c])²`` with ``S_n S_nᵀ = H_n`` (the loss record's
``sqrt_hessian``, e.g. ``(diag √p − p √pᵀ)/√N`` for softmax cross-entropy): the ``C`` columns are
backpropagated in one vmapped backward pass and squared per example from the layer factors (``Σ_n (a_n²)ᵀ
(δ_{n,c}²)`` for a Dense ``w``, :mod:`fnn._factors`). With ``mc_samples=m`` the columns are ``m`` sampled
gradients (targets drawn from the model's predictive distribution, ``key=``), an unbiased estimate.

**kfac / kflr** (Martens & Grosse 2015; Botev et al. 2017), per weight leaf with a factored gradient:
``A = (1/N) Σ_{n,s} a_{n,s} a_{n,s}ᵀ`` (the input's second moment; a Conv2D's im2col patches, ``s`` the
output positions) and ``G = Σ_{n,s,c} d_{n,s,c} d_{n,s,c}ᵀ`` (the backpropagated ``S`` columns, exact for
``kflr``, ``mc_samples`` sampled ones for ``kfac``), so the GGN block of ``w.reshape(K, F)`` flattened
row-major is approximated by ``kron(A, G)`` (for Conv2D this is KFC's ``|T|·Γ``, Grosse & Martens 2016). Biases
get ``G`` alone, their exact GGN block ``Σ_{n,c} (Σ_s d)(Σ_s d)ᵀ`` (for Dense the same sum, ``s`` one position).
BackPACK stores ``[G, A]`` for PyTorch's ``(out, in)`` weights: for Dense the same two matrices, and for biases
the same block; for a Conv2d weight BackPACK 1.7.1 sums the positions before the outer product (the bias's block
again) where fnn, like its docstring's KFC, sums the outer products.

**top_eigenvalue**: power iteration on the products, the network linearised once and only the R-passes
repeated; it returns the eigenvalue of largest magnitude (the sharpness along gradient-descent trajectories),
the unit vector, the iterations used and whether ``|λ_k − λ_{k−1}| ≤ tol·|λ_k|`` was reached.

**Keys and modes.** In ``hessian_vector_product`` and ``ggn_vector_product`` ``key=`` is the dropout key, as
in :func:`fnn.backprop`. In ``diag_ggn``, ``kfac``, ``kflr`` and ``top_eigenvalue`` ``key=`` is the sampling
key (Monte-Carlo targets, the start vector) and a training-mode pass takes ``dropout_key=``. **Several
devices** (``devices=``): the batch is split over a 1-D mesh in ``shard_map``, every device's sums are scaled
by its share and ``lax.psum``-ed (Monte-Carlo draws then differ from one device's: each device folds its index
into the key).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from fnn import _factors, _layer, parallel
from fnn import losses as _losses
from fnn import penalties as _penalties
from fnn._types import Array, ArrayLike, Params, PRNGKey
from fnn.backprop import prepare
from fnn.network import Network, check_params, context

__all__ = ["hessian_vector_product", "ggn_vector_product", "diag_ggn", "kfac", "kflr", "top_eigenvalue", "Eigen",
           "MATRICES"]

#: The matrices :func:`top_eigenvalue` takes.
MATRICES = ("hessian", "ggn")

_tree_map = jax.tree_util.tree_map


class _Point(NamedTuple):
    """The network at ``params`` on one batch: forward records, first-order traces (None for the GGN) and the
    loss's view: ``head`` (a loss or fused record with ``hvp``/``sqrt_hessian``), ``pred`` (logits of a fused
    pair, else the output), ``at_z`` (fused)."""

    records: list
    traces: list | None
    head: object
    pred: Array
    y: Array
    at_z: bool


def _head(net: Network, loss: _losses.Loss):
    """``(record, at_z)``: the fused pair's record (in ``z``) or the loss itself."""
    closed = _losses.fused(net.output, loss) if net.layers[-1].activation is not None else None
    return (closed, True) if closed is not None else (loss, False)


def _check(net: Network, loss: _losses.Loss, what: str, field: str, factored: bool = False) -> None:
    """Every refusal in plain Python before anything is traced: layers and activations without rules, a loss
    record without the field needed."""
    if factored:
        _layer.check_factors(net.layers, what)
    else:
        _layer.check_second_order(net.layers, what)
    head, at_z = _head(net, loss)
    if getattr(head, field) is None:
        pair = f"the pair {net.output.name} + {loss.name!r}" if at_z else f"loss {loss.name!r}"
        hint = (" (a likelihood on its input is needed: use the fused pair or the from-logits loss, or the exact "
                "form without mc_samples)") if field == "sample_sqrt_hessian" else ""
        raise ValueError(f"{what}: {pair} has no {field} in its record{hint}.")


def _linearise(net: Network, params: Params, x2, y2, loss, ctx, hessian: bool) -> _Point:
    out, records = _layer.forward(net.layers, params, x2, ctx)
    head, at_z = _head(net, loss)
    pred = records[-1][2]["z"] if at_z else out
    traces = None
    if hessian:
        g = head.delta(pred, out, y2) if at_z else loss.grad(out, y2)
        traces = _layer.backward(net.layers, params, records, g, ctx, at_z=at_z)[2]
    return _Point(records, traces, head, pred, y2, at_z)


def _product(net: Network, params: Params, point: _Point, v: Params, ctx) -> Params:
    """R-forward, the loss Hessian, R-backward: ``H v`` (``G v`` when ``point.traces`` is None), data term."""
    rout, rrecords = _layer.rforward(net.layers, params, v, point.records, None, ctx)
    rpred = rrecords[-1][1]["rz"] if point.at_z else rout
    rpred = jnp.zeros_like(point.pred) if rpred is None else rpred
    rg = point.head.hvp(point.pred, point.y, rpred)
    return _layer.rbackward(net.layers, params, v, point.records, rrecords, point.traces, rg, ctx,
                            at_z=point.at_z)[0]


def _vector(net: Network, params: Params, vector) -> Params:
    try:
        check_params(net, vector)
    except (TypeError, ValueError) as e:
        raise type(e)(f"vector must be shaped like params (one entry per layer, the same leaves): {e}") from None
    return _tree_map(lambda v, p: jnp.asarray(v, p.dtype), vector, params)


def _run(net: Network, x2, y2, ctx, devices, local_fn, args, key=None):
    """``local_fn(x2, y2, ctx, key, scale, psum, *args)`` on this device (``scale`` 1, ``psum`` the identity) or
    on every device of ``devices`` (its share of the batch; ``psum`` over the mesh); ``args`` replicated."""
    n = x2.shape[0]
    if devices is None:
        return local_fn(x2, y2, ctx, key, 1.0, lambda t: t, *args)
    mesh = parallel.make_mesh(devices)
    local = parallel.check_batch_size(n, mesh)
    axis = parallel.DATA_AXIS

    def shard(x2, y2, dropout_key, key, *args):
        index = jax.lax.axis_index(axis)
        rows = index.astype(jnp.int32) * local + jnp.arange(local, dtype=jnp.int32)
        sctx = ctx._replace(key=dropout_key, axis_name=axis, rows=rows)
        skey = None if key is None else jax.random.fold_in(key, index)
        return local_fn(x2, y2, sctx, skey, local / n, lambda t: jax.lax.psum(t, axis), *args)

    split, same = PartitionSpec(axis), PartitionSpec()
    run = jax.shard_map(shard, mesh=mesh, in_specs=(split, split, same, same) + (same,) * len(args), out_specs=same)
    return run(x2, y2, ctx.key, key, *args)


def _scaled(scale, tree):
    return tree if scale == 1 else _tree_map(lambda t: t * scale, tree)


def _with_penalty(penalty, params, tree, fn):
    return tree if penalty is None else _tree_map(lambda t, r: t + r.astype(t.dtype), tree, fn(penalty, params))


def _vector_product(what: str, hessian: bool, net, params, x, y, loss, vector, key, train, penalty, devices):
    loss, x2, y2 = prepare(net, params, x, y, loss)
    _check(net, loss, what, "hvp")
    v = _vector(net, params, vector)
    penalty = _penalties.get(penalty)
    ctx = context(net, key, train)

    def local(x2, y2, ctx, _key, scale, psum, params, v):
        point = _linearise(net, params, x2, y2, loss, ctx, hessian)
        return psum(_scaled(scale, _product(net, params, point, v, ctx)))

    out = _run(net, x2, y2, ctx, devices, local, (params, v))
    return out if penalty is None else _tree_map(lambda t, r: t + r.astype(t.dtype), out,
                                                 _penalties.hessian_vector(penalty, params, v))


def hessian_vector_product(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, vector: Params, *,
                           key: PRNGKey | None = None, train: bool | None = None, penalty=None,
                           devices=None) -> Params:
    """``H v``: the Hessian of the batch-mean loss (plus ``penalty``) with respect to params, applied to the
    params-shaped ``vector``, by the R-operator of the hand-written passes (module docstring). Arguments as
    :func:`fnn.backprop` (``key``: dropout); ``devices`` as :func:`fnn.curvature.first_order`.

    Raises:
      ValueError / TypeError: what :func:`fnn.backprop` refuses; a vector unlike params; a layer without
        R-operator rules or an activation without ``jvp``/``second`` (named).
    """
    return _vector_product("hessian_vector_product", True, net, params, x, y, loss, vector, key, train, penalty,
                           devices)


def ggn_vector_product(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, vector: Params, *,
                       key: PRNGKey | None = None, train: bool | None = None, penalty=None,
                       devices=None) -> Params:
    """``G v``: the generalised Gauss-Newton matrix ``Σ_n J_nᵀ H_n J_n`` (plus the penalty's Hessian) applied to
    the params-shaped ``vector``; the linearisation point is the logits for fused pairs (module docstring).
    Arguments and errors as :func:`hessian_vector_product`."""
    return _vector_product("ggn_vector_product", False, net, params, x, y, loss, vector, key, train, penalty,
                           devices)


def _columns(point: _Point, key, mc_samples):
    if mc_samples is None:
        return point.head.sqrt_hessian(point.pred, point.y)
    return point.head.sample_sqrt_hessian(key, point.pred, point.y, mc_samples)


def _check_sampling(what: str, mc_samples, key, exact_ok: bool):
    if mc_samples is None:
        if not exact_ok:
            raise ValueError(f"{what}: mc_samples must be a positive int, got None.")
        return
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples <= 0:
        raise ValueError(f"{what}: mc_samples must be a positive int (the sampled targets per example), got "
                         f"{mc_samples!r}.")
    if key is None:
        raise ValueError(f"{what}: Monte-Carlo sampling (mc_samples={mc_samples}) needs a PRNG key: pass key=, e.g. "
                         f"key=jax.random.key(0).")


def _column_traces(net, params, point: _Point, columns, ctx):
    """Every column of ``columns (N, K, C)`` backpropagated in one vmapped pass: traces with a leading ``C``."""
    return jax.vmap(lambda s: _layer.backward(net.layers, params, point.records, s, ctx, at_z=point.at_z)[2],
                    in_axes=-1)(columns)


def _over_columns(net, params, traces, what: str, fn):
    """``fn(factor, ds)`` per leaf: ``factor`` of the first column (its ``a``, the layer input's, is every
    column's) and ``ds (C, N, S, F)`` every column's error terms (:mod:`fnn._factors`)."""
    first = _layer.factors(net.layers, params, _tree_map(lambda t: t[0], traces), what)
    ds = jax.vmap(lambda t: _tree_map(lambda f: f.d, _layer.factors(net.layers, params, t, what)))(traces)
    return _tree_map(fn, first, ds)


def diag_ggn(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, mc_samples: int | None = None,
             key: PRNGKey | None = None, dropout_key: PRNGKey | None = None, train: bool | None = None,
             penalty=None, devices=None) -> Params:
    """The diagonal of the GGN (module docstring), params-shaped: exact (backpropagating the loss Hessian's
    symmetric factor, BackPACK's ``DiagGGNExact``) or, with ``mc_samples=m`` and ``key=``, the Monte-Carlo
    estimate from ``m`` sampled targets per example (``DiagGGNMC``), unbiased. Penalty: its Hessian diagonal is
    added. ``dropout_key``/``train``: the mode, as ``key``/``train`` of :func:`fnn.backprop`.

    Raises:
      ValueError: a layer without per-example factors (BatchNorm), a loss without the factor (Monte-Carlo for a
        cross-entropy on probabilities), bad ``mc_samples``, sampling without a key.
    """
    _check_sampling("diag_ggn", mc_samples, key, True)
    loss, x2, y2 = prepare(net, params, x, y, loss)
    _check(net, loss, "diag_ggn", "sqrt_hessian" if mc_samples is None else "sample_sqrt_hessian", factored=True)
    penalty = _penalties.get(penalty)
    ctx = context(net, dropout_key, train)

    def local(x2, y2, ctx, key, scale, psum, params):
        point = _linearise(net, params, x2, y2, loss, ctx, False)
        traces = _column_traces(net, params, point, _columns(point, key, mc_samples), ctx)
        return psum(_scaled(scale, _over_columns(net, params, traces, "diag_ggn", _factors.columns_sum_of_squares)))

    out = _run(net, x2, y2, ctx, devices, local, (params,), key)
    return _with_penalty(penalty, params, out, _penalties.hessian_diagonal)


def _kronecker(what: str, net, params, x, y, loss, mc_samples, key, dropout_key, train, devices):
    loss, x2, y2 = prepare(net, params, x, y, loss)
    _check(net, loss, what, "sqrt_hessian" if mc_samples is None else "sample_sqrt_hessian", factored=True)
    ctx = context(net, dropout_key, train)
    n = x2.shape[0]

    def local(x2, y2, ctx, key, scale, psum, params):
        point = _linearise(net, params, x2, y2, loss, ctx, False)
        traces = _column_traces(net, params, point, _columns(point, key, mc_samples), ctx)
        gs = _over_columns(net, params, traces, what, _factors.columns_gram)
        first = _layer.factors(net.layers, params, _tree_map(lambda t: t[0], traces), what)  # a: any column's
        a_s = _tree_map(lambda f: None if f.a is None else jnp.einsum("nsk,nsj->kj", f.a, f.a) / n, first)
        return psum(_scaled(scale, gs)), psum(a_s)

    gs, a_s = _run(net, x2, y2, ctx, devices, local, (params,), key)
    return _tree_map(lambda g, a: {"G": g} if a is None else {"A": a, "G": g}, gs, a_s,
                     is_leaf=lambda t: t is None)


def kflr(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, dropout_key: PRNGKey | None = None,
         train: bool | None = None, devices=None) -> Params:
    """The exact Kronecker factors (BackPACK's ``KFLR``) of every leaf with a factored gradient: params-shaped,
    each weight leaf ``{"A": (K, K), "G": (F, F)}`` with ``kron(A, G)`` ≈ the GGN block of ``w.reshape(K, F)``
    flattened row-major, each bias ``{"G": (F, F)}``, ``{}`` for layers without params (module docstring). No
    penalty term. Raises as :func:`diag_ggn`."""
    return _kronecker("kflr", net, params, x, y, loss, None, None, dropout_key, train, devices)


def kfac(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, key: PRNGKey, mc_samples: int = 1,
         dropout_key: PRNGKey | None = None, train: bool | None = None, devices=None) -> Params:
    """The Monte-Carlo Kronecker factors (BackPACK's ``KFAC``, ``mc_samples`` sampled targets per example, 1 by
    default as BackPACK): :func:`kflr`'s layout, ``G`` from sampled gradients (an unbiased estimate of
    :func:`kflr`'s ``G``), ``A`` the same. Raises as :func:`diag_ggn`."""
    _check_sampling("kfac", mc_samples, key, False)
    return _kronecker("kfac", net, params, x, y, loss, mc_samples, key, dropout_key, train, devices)


class Eigen(NamedTuple):
    """:func:`top_eigenvalue`'s result: ``value`` (the eigenvalue of largest magnitude), ``vector`` (its unit
    eigenvector, params-shaped), ``iterations`` (matrix products used), ``converged`` (the tolerance was met)
    and ``tol``."""

    value: Array
    vector: Params
    iterations: Array
    converged: Array
    tol: float


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b),
                                                strict=True))


def top_eigenvalue(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, matrix: str = "hessian",
                   key: PRNGKey | None = None, init: Params | None = None, tol: float = 1e-4,
                   max_iterations: int = 200, dropout_key: PRNGKey | None = None, train: bool | None = None,
                   penalty=None, devices=None) -> Eigen:
    """The eigenvalue of largest magnitude of the Hessian (``matrix="hessian"``) or the GGN (``"ggn"``) by power
    iteration on the hand-written products (module docstring).

    Args:
      key: draws the start vector (standard normal, normalised); or ``init``: a params-shaped start vector
        (e.g. the previous call's ``vector``, to warm-start along a training run).
      tol: stop when ``|λ_k − λ_{k−1}| ≤ tol·|λ_k|`` (the Rayleigh quotients of two successive iterates).
      max_iterations: at most this many products.
      dropout_key, train, penalty, devices: as :func:`diag_ggn`.

    Returns:
      :class:`Eigen`; works under ``jax.jit`` (a ``lax.while_loop``).
    """
    if matrix not in MATRICES:
        raise ValueError(f"top_eigenvalue: matrix must be one of {MATRICES}, got {matrix!r}.")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 2:
        raise ValueError(f"top_eigenvalue: max_iterations must be an int >= 2, got {max_iterations!r}.")
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0):
        raise ValueError(f"top_eigenvalue: tol must be a positive number, got {tol!r}.")
    if (key is None) == (init is None):
        raise ValueError("top_eigenvalue: pass exactly one of key= (a random start vector) and init= (a params-shaped "
                         "start vector), got " + ("neither." if key is None else "both."))
    loss, x2, y2 = prepare(net, params, x, y, loss)
    _check(net, loss, "top_eigenvalue", "hvp")
    penalty = _penalties.get(penalty)
    ctx = context(net, dropout_key, train)
    if init is None:
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(key, len(leaves))
        init = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype)
                                                      for k, p in zip(keys, leaves, strict=True)])
    v0 = _vector(net, params, init)

    def local(x2, y2, ctx, _key, scale, psum, params, v0):
        point = _linearise(net, params, x2, y2, loss, ctx, matrix == "hessian")

        def product(v):
            out = psum(_scaled(scale, _product(net, params, point, v, ctx)))
            return _with_penalty(penalty, params, out, lambda pen, p: _penalties.hessian_vector(pen, p, v))

        def normalised(v):
            return _tree_map(lambda t: t / jnp.sqrt(_dot(v, v)), v)

        def body(s):
            i, v, lam, _ = s
            w = product(v)
            return i + 1, normalised(w), _dot(v, w), lam

        def cond(s):
            i, _, lam, prev = s
            return (i < max_iterations) & ((i < 2) | (jnp.abs(lam - prev) > tol * jnp.abs(lam)))

        zero = jnp.zeros((), jax.tree_util.tree_leaves(params)[0].dtype)
        i, v, lam, prev = jax.lax.while_loop(cond, body, (jnp.asarray(0), normalised(v0), zero, zero))
        return lam, v, i, jnp.abs(lam - prev) <= tol * jnp.abs(lam)

    lam, v, i, converged = _run(net, x2, y2, ctx, devices, local, (params, v0))
    return Eigen(lam, v, i, converged, float(tol))
