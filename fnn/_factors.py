"""Per-example gradients in factored form, and the first-order quantities computed from the factors.

A hand-written backward pass sees, at every layer with params, the layer's input and its error term. For Dense
and Conv2D each example's gradient of a weight leaf is a sum of outer products of the two::

    G_n = Σ_s a[n, s, :] ⊗ d[n, s, :]        reshaped to the leaf's shape
    G_n = Σ_s d[n, s, :]                      for a bias (a is None)

with ``s`` the positions sharing the weight (one for Dense; the ``Ho·Wo`` output positions of a convolution,
``a`` then being the im2col patches), ``a (N, S, K)`` and ``d (N, S, F)`` = the trace's δ. Every fnn loss is a
batch mean, so δ carries the ``1/N``: ``G_n = ∇(ℓ_n / N)``, the summands of the batch gradient
(``Σ_n G_n = ∇L``), which is BackPACK's ``grad_batch`` convention. A layer record's ``factors(params, trace)``
gives one :class:`Factor` per leaf (see :mod:`fnn._layer`).

From the factors, without materialising ``G`` where the shapes allow:

* ``squared_norms``: ``‖G_n‖²``. One position: ``‖a_n‖²·‖d_n‖²`` (Goodfellow's trick, memory ``O(N)``).
  Several: ``Σ_{s,t} (a_s·a_t)(d_s·d_t)`` from the two ``(N, S, S)`` Gram matrices when ``S² ≤ K·F``, else
  ``G_n`` itself, one leaf at a time.
* ``sum_of_squares``: ``Σ_n G_n²`` (elementwise). One position: ``(a²)ᵀ(d²)``, one GEMM. Several: ``G_n``
  one leaf at a time (no factored form exists).
* ``inner``: ``⟨G_n, V⟩`` for a fixed leaf-shaped ``V``: ``Σ_s a_sᵀ V d_s``, memory ``O(N·S·F)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from fnn._types import Array

__all__ = ["Factor", "per_example", "squared_norms", "sum_of_squares", "inner"]


@dataclasses.dataclass(frozen=True)
class Factor:
    """One leaf's per-example gradients ``G_n = Σ_s a[n,s] ⊗ d[n,s]`` (module docstring): ``a (N, S, K)`` or
    None (a bias: ``G_n = Σ_s d[n,s]``), ``d (N, S, F)``, ``shape`` the leaf's shape (``K·F`` elements, or
    ``F`` for a bias). Not a pytree: a leaf of the factor trees."""

    a: Array | None
    d: Array
    shape: tuple[int, ...]

    @classmethod
    def dense(cls, a: Array | None, d: Array, shape) -> Factor:
        """The factor of a leaf read at one position per example: ``a (N, K)``, ``d (N, F)``."""
        return cls(None if a is None else a[:, None, :], d[:, None, :], tuple(shape))


def per_example(f: Factor) -> Array:
    """``G_n`` for every example, ``(N, *shape)``."""
    n = f.d.shape[0]
    if f.a is None:
        return jnp.sum(f.d, axis=1).reshape(n, *f.shape)
    if f.d.shape[1] == 1:
        g = f.a[:, 0, :, None] * f.d[:, 0, None, :]
    else:
        g = jnp.einsum("nsk,nsf->nkf", f.a, f.d)
    return g.reshape(n, *f.shape)


def _gram_is_smaller(f: Factor) -> bool:
    s = f.d.shape[1]
    return s * s <= f.a.shape[2] * f.d.shape[2]


def squared_norms(f: Factor) -> Array:
    """``‖G_n‖²`` for every example, ``(N,)``."""
    if f.a is None:
        return jnp.sum(jnp.sum(f.d, axis=1) ** 2, axis=1)
    if f.d.shape[1] == 1:
        return jnp.sum(f.a[:, 0] ** 2, axis=1) * jnp.sum(f.d[:, 0] ** 2, axis=1)
    if _gram_is_smaller(f):
        aa = jnp.einsum("nsk,ntk->nst", f.a, f.a)
        dd = jnp.einsum("nsf,ntf->nst", f.d, f.d)
        return jnp.sum(aa * dd, axis=(1, 2))
    g = per_example(f)
    return jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1)


def sum_of_squares(f: Factor) -> Array:
    """``Σ_n G_n²`` elementwise, in the leaf's shape."""
    if f.a is not None and f.d.shape[1] == 1:
        return (f.a[:, 0].T ** 2 @ f.d[:, 0] ** 2).reshape(f.shape)
    return jnp.sum(per_example(f) ** 2, axis=0)


def inner(f: Factor, v: Array) -> Array:
    """``⟨G_n, v⟩`` for every example, ``(N,)``, with ``v`` in the leaf's shape."""
    if f.a is None:
        return jnp.sum(f.d, axis=1) @ v.reshape(math.prod(f.shape))
    av = f.a @ v.reshape(f.a.shape[2], f.d.shape[2])  # (N, S, F)
    return jnp.sum(av * f.d, axis=(1, 2))


# --- several error vectors per example (the columns of a loss-Hessian factor, :mod:`fnn.second_order`) ----

def columns_sum_of_squares(f: Factor, ds: Array) -> Array:
    """``Σ_c Σ_n G_{n,c}²`` elementwise, in the leaf's shape, for ``G_{n,c} = Σ_s a[n,s] ⊗ ds[c,n,s]``
    (``ds (C, N, S, F)``; ``f`` gives ``a`` and the shape). One position (Dense): ``(a²)ᵀ (Σ_c d_c²)``, one
    GEMM for all columns; a bias: ``Σ_{c,n} (Σ_s d)²``; else ``G_{n,c}`` one column at a time."""
    if f.a is None:
        return jnp.sum(jnp.sum(ds, axis=2) ** 2, axis=(0, 1)).reshape(f.shape)
    if ds.shape[2] == 1:
        return (f.a[:, 0].T ** 2 @ jnp.sum(ds[:, :, 0] ** 2, axis=0)).reshape(f.shape)
    return sum(sum_of_squares(Factor(f.a, d, f.shape)) for d in ds)


def columns_gram(f: Factor, ds: Array) -> Array:
    """``Σ_c Σ_n Σ_s d dᵀ`` over the columns ``ds (C, N, S, F)``, ``(F, F)``; for a bias the positions are summed
    first (``Σ_{c,n} (Σ_s d)(Σ_s d)ᵀ``: its exact Gauss-Newton block)."""
    d = jnp.sum(ds, axis=2) if f.a is None else ds
    d = d.reshape(-1, d.shape[-1])
    return d.T @ d
