"""The top eigenvalue of the Hessian or the GGN from the hand-written curvature products (reached as
``fnn.curvature.top_eigenvalue``).

The network is linearised once on the batch (forward pass, and the first-order backward pass for the Hessian);
every iteration then runs only the R-passes of :mod:`fnn.second_order` (one ``H v`` or ``G v``), inside a
``lax.while_loop``, so the whole search works under ``jax.jit`` and inside ``lax.scan``. Two methods:

* ``"lanczos"`` (default): the Lanczos process with full reorthogonalisation (every new vector is made
  orthogonal to all earlier ones, twice) on the flattened params; after ``k`` products the tridiagonal
  ``T_k`` gives Ritz values, and the search stops when the top Ritz pair's residual bound
  ``β_k |u_k| ≤ tol · |θ|`` (``‖M y − θ y‖`` for the Ritz vector ``y``, in exact arithmetic). It keeps
  ``max_iterations + 1`` vectors the size of params. Converges in far fewer products than power iteration
  when the top eigenvalues are close (as along gradient descent at the edge of stability).
* ``"power"``: power iteration, stopping when two successive Rayleigh quotients agree,
  ``|λ_k − λ_{k−1}| ≤ tol · |λ_k|``; one extra vector of memory.

Both return the eigenvalue of largest magnitude (for the Hessian along training: the sharpness, when the top
is positive), its unit eigenvector, the products used and whether the tolerance was met. Keys and modes as
:mod:`fnn.second_order`: ``key=`` draws the start vector, ``dropout_key=``/``train=`` set the mode.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp

from fnn import _rop
from fnn import penalties as _penalties
from fnn._types import Array, ArrayLike, Params, PRNGKey
from fnn.backprop import prepare
from fnn.network import Network, context

__all__ = ["Eigen", "top_eigenvalue", "MATRICES", "METHODS"]

#: The matrices :func:`top_eigenvalue` takes, and its methods.
MATRICES = ("hessian", "ggn")
METHODS = ("lanczos", "power")


class Eigen(NamedTuple):
    """:func:`top_eigenvalue`'s result: ``value`` (the eigenvalue of largest magnitude), ``vector`` (its unit
    eigenvector, params-shaped), ``iterations`` (matrix products used), ``converged`` (the tolerance was met)
    and ``tol``. Every field is a JAX value, so an ``Eigen`` can leave a jitted function."""

    value: Array
    vector: Params
    iterations: Array
    converged: Array
    tol: float


def _power(matvec, v0, tol, max_iterations):
    def normalised(v):
        return v / jnp.sqrt(jnp.vdot(v, v))

    def body(s):
        i, v, lam, _ = s
        w = matvec(v)
        return i + 1, normalised(w), jnp.vdot(v, w), lam

    def cond(s):
        i, _, lam, prev = s
        return (i < max_iterations) & ((i < 2) | (jnp.abs(lam - prev) > tol * jnp.abs(lam)))

    zero = jnp.zeros((), v0.dtype)
    i, v, lam, prev = jax.lax.while_loop(cond, body, (jnp.asarray(0), normalised(v0), zero, zero))
    return lam, v, i, jnp.abs(lam - prev) <= tol * jnp.abs(lam)


def _ritz(alpha, beta, j, k):
    """The Ritz pair of largest magnitude of ``T_j`` (size ``j + 1``, held padded in ``k × k``) and its residual
    bound ``β_j |u_j|``. Padding rows are zero, so their eigenvalues are 0 and never the largest magnitude of a
    non-zero ``T_j``."""
    idx = jnp.arange(k)
    a = jnp.where(idx <= j, alpha, 0)
    b = jnp.where(idx < j, beta, 0)[:-1]
    t = jnp.diag(a) + jnp.diag(b, 1) + jnp.diag(b, -1)
    w, u = jnp.linalg.eigh(t)
    top = jnp.argmax(jnp.abs(w))
    return w[top], u[:, top], beta[j] * jnp.abs(u[j, top])


def _lanczos(matvec, v0, tol, k):
    n = v0.shape[0]
    q = jnp.zeros((k + 1, n), v0.dtype).at[0].set(v0 / jnp.sqrt(jnp.vdot(v0, v0)))
    zeros = jnp.zeros((k,), v0.dtype)

    def orthogonalised(q, w):  # against every earlier vector (rows not yet filled are zero), twice
        w = w - q.T @ (q @ w)
        return w - q.T @ (q @ w)

    def body(s):
        j, q, alpha, beta, _, _, _ = s
        w = matvec(q[j])
        a = jnp.vdot(q[j], w)
        w = orthogonalised(q, w)
        b = jnp.sqrt(jnp.vdot(w, w))
        q = q.at[j + 1].set(w / jnp.where(b > 0, b, 1))
        alpha, beta = alpha.at[j].set(a), beta.at[j].set(b)
        theta, u, resid = _ritz(alpha, beta, j, k)
        return j + 1, q, alpha, beta, theta, u, resid

    def cond(s):
        j, _, _, _, theta, _, resid = s
        return (j < k) & (resid > tol * jnp.abs(theta))

    inf = jnp.asarray(jnp.inf, v0.dtype)
    init = (jnp.asarray(0), q, zeros, zeros, jnp.zeros((), v0.dtype), zeros, inf)
    j, q, _, _, theta, u, resid = jax.lax.while_loop(cond, body, init)
    y = q[:k].T @ u
    return theta, y / jnp.sqrt(jnp.vdot(y, y)), j, resid <= tol * jnp.abs(theta)


def top_eigenvalue(net: Network, params: Params, x: ArrayLike, y: ArrayLike, loss, *, matrix: str = "hessian",
                   method: str = "lanczos", key: PRNGKey | None = None, init: Params | None = None,
                   tol: float = 1e-4, max_iterations: int = 100, dropout_key: PRNGKey | None = None,
                   train: bool | None = None, penalty=None, devices=None) -> Eigen:
    """The eigenvalue of largest magnitude of the Hessian (``matrix="hessian"``) or the GGN (``"ggn"``) of the
    batch-mean loss (plus ``penalty``'s Hessian), by Lanczos or power iteration on the hand-written products
    (module docstring).

    Args:
      method: ``"lanczos"`` (default) or ``"power"``.
      key: draws the start vector (standard normal); or ``init``: a params-shaped start vector (e.g. the
        previous call's ``vector``, to warm-start along a training run).
      tol: the stopping rule's tolerance (module docstring: a residual bound for Lanczos, the change of the
        Rayleigh quotient for power iteration).
      max_iterations: at most this many products (for Lanczos also the number of vectors kept).
      dropout_key, train, penalty, devices: as :func:`fnn.curvature.diag_ggn`.

    Returns:
      :class:`Eigen`; works under ``jax.jit``.

    Raises:
      ValueError / TypeError: what :func:`fnn.curvature.hessian_vector_product` refuses; an unknown matrix or
        method; neither or both of ``key`` and ``init``; ``max_iterations`` < 2; ``tol`` not positive.
    """
    if matrix not in MATRICES:
        raise ValueError(f"top_eigenvalue: matrix must be one of {MATRICES}, got {matrix!r}.")
    if method not in METHODS:
        raise ValueError(f"top_eigenvalue: method must be one of {METHODS}, got {method!r}.")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 2:
        raise ValueError(f"top_eigenvalue: max_iterations must be an int >= 2, got {max_iterations!r}.")
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0):
        raise ValueError(f"top_eigenvalue: tol must be a positive number, got {tol!r}.")
    if (key is None) == (init is None):
        raise ValueError("top_eigenvalue: pass exactly one of key= (a random start vector) and init= (a params-shaped "
                         "start vector), got " + ("neither." if key is None else "both."))
    loss, x2, y2 = prepare(net, params, x, y, loss)
    _rop.check(net, loss, "top_eigenvalue", "hvp")
    penalty = _penalties.get(penalty)
    ctx = context(net, dropout_key, train)
    if init is None:
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(key, len(leaves))
        init = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype)
                                                      for k, p in zip(keys, leaves, strict=True)])
    v0 = _rop.vector(net, params, init)

    def local(x2, y2, ctx, _key, scale, psum, params, v0):
        point = _rop.linearise(net, params, x2, y2, loss, ctx, matrix == "hessian")
        flat, unravel = jax.flatten_util.ravel_pytree(v0)

        def matvec(u):
            v = unravel(u)
            out = psum(_rop.scaled(scale, _rop.product(net, params, point, v, ctx)))
            out = _rop.with_penalty(penalty, params, out, lambda pen, p: _penalties.hessian_vector(pen, p, v))
            return jax.flatten_util.ravel_pytree(out)[0]

        if method == "power":
            lam, u, i, converged = _power(matvec, flat, tol, max_iterations)
        else:
            lam, u, i, converged = _lanczos(matvec, flat, tol, max_iterations)
        return lam, unravel(u), i, converged

    lam, v, i, converged = _rop.run(net, x2, y2, ctx, devices, local, (params, v0))
    return Eigen(lam, v, i, converged, float(tol))
