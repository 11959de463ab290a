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

**top_eigenvalue** (:mod:`fnn.eigen`): Lanczos or power iteration on these products, the network linearised
once and only the R-passes repeated.

**Keys and modes.** In ``hessian_vector_product`` and ``ggn_vector_product`` ``key=`` is the dropout key, as
in :func:`fnn.backprop`. In ``diag_ggn``, ``kfac``, ``kflr`` and ``top_eigenvalue`` ``key=`` is the sampling
key (Monte-Carlo targets, the start vector) and a training-mode pass takes ``dropout_key=``. **Several
devices** (``devices=``): the batch is split over a 1-D mesh in ``shard_map``, every device's sums are scaled
by its share and ``lax.psum``-ed (Monte-Carlo draws then differ from one device's: each device folds its index
into the key).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn import _factors, _layer, _rop
from fnn import penalties as _penalties
from fnn._types import ArrayLike, Params, PRNGKey
from fnn.backprop import prepare
from fnn.network import Network, context

__all__ = ["hessian_vector_product", "ggn_vector_product", "diag_ggn", "kfac", "kflr"]

def _vector_product(what: str, hessian: bool, net, params, x, y, loss, vector, key, train, penalty, devices):
    loss, x2, y2 = prepare(net, params, x, y, loss)
    _rop.check(net, loss, what, "hvp")
    v = _rop.vector(net, params, vector)
    penalty = _penalties.get(penalty)
    ctx = context(net, key, train)

    def local(x2, y2, ctx, _key, scale, psum, params, v):
        point = _rop.linearise(net, params, x2, y2, loss, ctx, hessian)
        return psum(_rop.scaled(scale, _rop.product(net, params, point, v, ctx)))

    out = _rop.run(net, x2, y2, ctx, devices, local, (params, v))
    return out if penalty is None else _rop.tree_map(lambda t, r: t + r.astype(t.dtype), out,
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


def _columns(point: _rop.Point, key, mc_samples):
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


def _column_traces(net, params, point: _rop.Point, columns, ctx):
    """Every column of ``columns (N, K, C)`` backpropagated in one vmapped pass: traces with a leading ``C``."""
    return jax.vmap(lambda s: _layer.backward(net.layers, params, point.records, s, ctx, at_z=point.at_z)[2],
                    in_axes=-1)(columns)


def _over_columns(net, params, traces, what: str, fn):
    """``fn(factor, ds)`` per leaf: ``factor`` of the first column (its ``a``, the layer input's, is every
    column's) and ``ds (C, N, S, F)`` every column's error terms (:mod:`fnn._factors`)."""
    first = _layer.factors(net.layers, params, _rop.tree_map(lambda t: t[0], traces), what)
    ds = jax.vmap(lambda t: _rop.tree_map(lambda f: f.d, _layer.factors(net.layers, params, t, what)))(traces)
    return _rop.tree_map(fn, first, ds)


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
    _rop.check(net, loss, "diag_ggn", "sqrt_hessian" if mc_samples is None else "sample_sqrt_hessian", factored=True)
    penalty = _penalties.get(penalty)
    ctx = context(net, dropout_key, train)

    def local(x2, y2, ctx, key, scale, psum, params):
        point = _rop.linearise(net, params, x2, y2, loss, ctx, False)
        traces = _column_traces(net, params, point, _columns(point, key, mc_samples), ctx)
        return psum(_rop.scaled(scale, _over_columns(net, params, traces, "diag_ggn", _factors.columns_sum_of_squares)))

    out = _rop.run(net, x2, y2, ctx, devices, local, (params,), key)
    return _rop.with_penalty(penalty, params, out, _penalties.hessian_diagonal)


def _kronecker(what: str, net, params, x, y, loss, mc_samples, key, dropout_key, train, devices):
    loss, x2, y2 = prepare(net, params, x, y, loss)
    _rop.check(net, loss, what, "sqrt_hessian" if mc_samples is None else "sample_sqrt_hessian", factored=True)
    ctx = context(net, dropout_key, train)
    n = x2.shape[0]

    def local(x2, y2, ctx, key, scale, psum, params):
        point = _rop.linearise(net, params, x2, y2, loss, ctx, False)
        traces = _column_traces(net, params, point, _columns(point, key, mc_samples), ctx)

        def factors(f: _factors.Factor, ds):  # G from every column (this shard's share), A from the layer input
            g = {"G": _factors.columns_gram(f, ds) * scale}
            return g if f.a is None else {"A": jnp.einsum("nsk,nsj->kj", f.a, f.a) / n, **g}
        return psum(_over_columns(net, params, traces, what, factors))

    return _rop.run(net, x2, y2, ctx, devices, local, (params,), key)


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


