"""Weight penalties (L2, L1, elastic net): each a record holding its value and its hand-written gradient.

Conventions (λ = ``lam``; sums run over the selected leaves only):

* ``l2(lam)`` is (λ/2)·Σ w², gradient λ·w: with plain SGD at rate η the coupled update is ``w ← w − η(g + λw)``,
  i.e. ``optax.chain(optax.add_decayed_weights(lam, mask=...), optax.sgd(η))``. Nielsen's chapter-3 term
  (λ/2n)·Σ w² (n = training-set size) is ``l2(lam / n)``.
* ``l1(lam)`` is λ·Σ|w|, gradient λ·sign(w), 0 at w = 0 (the least-norm subgradient: a zero weight stays zero).
  ``jax.grad(jnp.abs)(0.)`` is 1, so the value is written λ·Σ w·sign(w) (= λ·Σ|w| exactly): ``jax.grad(value)``
  then agrees with ``grad`` at 0 too. ``combine(l1(a), l2(b))`` (elastic net) sums values and gradients.
* The penalty is added once per mini-batch to the batch-mean loss (not per example, not scaled by the batch).
* Selection: by default every leaf named ``"w"`` (Dense/Conv weights at any depth); ``"b"``, ``"scale"``,
  ``"offset"`` are not penalised (as in Nielsen's network2) unless named: ``leaves=("w", "b")``. Or ``mask=``: a
  pytree of bools shaped like params (as optax's ``mask=``) or a callable ``params -> mask``. Unselected leaves get
  a zero gradient. Paths count from 0 (``"3.1.w"``: layer 3, inner layer 1, leaf ``w``; see :func:`selected`).
  A selection matching no leaf raises: a typo'd name must not silently give 0.
* ``value`` is a scalar in params' dtype, from ``jnp`` only (works under ``jax.jit``/``jax.vmap``). ``Penalty``
  is hashable and equal by value (a mask by identity): it can key ``functools.lru_cache``, be static in ``jit``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn._arrays import path_parts
from fnn._types import Array, Grads, PyTree

# name: (value of one leaf, gradient of that value) side by side, so one derivative is checked on one line.
_RULES = {
    "l2": (lambda lam, w: lam / 2 * jnp.sum(jnp.square(w)), lambda lam, w: lam * w),
    "l1": (lambda lam, w: lam * jnp.sum(w * jnp.sign(w)), lambda lam, w: lam * jnp.sign(w)),  # sign(0) = 0
}
_short = lambda treedef: str(treedef) if len(str(treedef)) <= 160 else str(treedef)[:157] + "..."


@dataclasses.dataclass(frozen=True)
class _Term:
    """One λ-weighted l1 or l2 term and its selection (``leaves`` names, or a ``mask``)."""
    name: str
    lam: float
    leaves: tuple[str, ...] | None
    mask: Callable[[PyTree], PyTree] | None  # params -> pytree of bools: a closure, hashed and compared by identity

    def label(self) -> str:
        return f"{self.name}(lam={self.lam!r}, " + (f"leaves={self.leaves!r})" if self.mask is None else "mask=...)")

    def flags(self, params: PyTree) -> tuple[list, Any, list[bool], list[str]]:
        """The leaves of params, their treedef, whether each is selected, and their paths (plain Python)."""
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        paths = [".".join(path_parts(p)) for p, _ in flat]
        if self.mask is None:
            flags = [p.rsplit(".", 1)[-1] in self.leaves for p in paths]
        else:
            flags, m_def = jax.tree_util.tree_flatten(self.mask(params))
            if m_def != treedef:
                raise ValueError(f"{self.label()}: the mask's tree structure {_short(m_def)} does not match the "
                                 f"params' {_short(treedef)}.")
            if not all(isinstance(m, (bool, np.bool_)) for m in flags):
                raise TypeError(f"{self.label()}: mask leaves must be bools, got {[type(m).__name__ for m in flags]}.")
        if not any(flags):
            raise ValueError(f"{self.label()} selects no leaf of params; its leaves are: {', '.join(paths) or 'none'}.")
        return [w for _, w in flat], treedef, [bool(f) for f in flags], paths

    def __call__(self, params: PyTree, grad: bool) -> Array | Grads:
        """The value (a scalar summed over the selected leaves) or, with ``grad``, the gradient (0 if unselected)."""
        ws, treedef, flags, _ = self.flags(params)
        f = _RULES[self.name][grad]
        if grad:
            return jax.tree_util.tree_unflatten(treedef, [f(self.lam, w) if s else jnp.zeros_like(w)
                                                          for w, s in zip(ws, flags, strict=True)])
        return functools.reduce(operator.add, [f(self.lam, w) for w, s in zip(ws, flags, strict=True) if s])


@dataclasses.dataclass(frozen=True)
class _Sum:
    """The ``value`` (or, with ``grad=True``, the ``grad``) of a penalty: the sum over its terms; compares by value."""
    terms: tuple[_Term, ...]
    grad: bool

    def __call__(self, params: PyTree) -> Array | Grads:
        parts = [t(params, self.grad) for t in self.terms]
        add = lambda *xs: functools.reduce(operator.add, xs)
        return jax.tree.map(add, *parts) if self.grad else add(*parts)


class Penalty(NamedTuple):
    """``value(params)`` (a scalar) and its hand-written ``grad(params)``; ``leaves`` is None with a mask; for
    :func:`combine`, ``lam``/``leaves`` are the sum of the terms' λ and the union of their names (informational)."""
    name: str
    lam: float
    value: Callable[[PyTree], Array]
    grad: Callable[[PyTree], Grads]
    leaves: tuple[str, ...] | None

    def describe(self) -> dict:
        """JSON-able ``{"name", "lam", "leaves"}`` (``{"name": "combine", "terms": [...]}``); ValueError if masked."""
        terms = _terms("describe", self)
        if any(t.mask is not None for t in terms):
            raise ValueError(f"describe: {self.name} was built with mask=, which cannot be described; use leaves=.")
        d = [{"name": t.name, "lam": t.lam, "leaves": list(t.leaves)} for t in terms]
        return d[0] if len(d) == 1 else {"name": "combine", "terms": d}


def _terms(fn: str, penalty: Any) -> tuple[_Term, ...]:
    if not isinstance(penalty, Penalty) or not isinstance(penalty.value, _Sum):
        raise TypeError(f"{fn}: expected a Penalty from fnn.penalties.l1/l2/combine, got {penalty!r}.")
    return penalty.value.terms


def _record(terms: tuple[_Term, ...]) -> Penalty:
    names = None if any(t.leaves is None for t in terms) else tuple(dict.fromkeys(n for t in terms for n in t.leaves))
    return Penalty("+".join(t.name for t in terms), sum(t.lam for t in terms), _Sum(terms, False), _Sum(terms, True),
                   names)


def _make(name: str, lam: Any, leaves: Any, mask: Any) -> Penalty:
    expected = f"{name}: lam must be a finite real number >= 0, got {lam!r}"
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"{expected} ({type(lam).__name__}).")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"{expected}.")
    if not isinstance(leaves, (tuple, list)) or not leaves or not all(isinstance(n, str) and n for n in leaves):
        raise (ValueError if isinstance(leaves, (tuple, list)) else TypeError)(
            f"{name}: leaves must be a non-empty tuple of leaf names (str) such as ('w', 'b'), got {leaves!r}.")
    lam = float(lam) + 0.0  # + 0.0 turns -0.0 into 0.0
    if mask is None:
        return _record((_Term(name, lam, tuple(leaves), None),))
    if tuple(leaves) != ("w",):
        raise ValueError(f"{name}: pass leaves= or mask=, not both (got leaves={tuple(leaves)!r} and a mask).")
    if not callable(mask) and not all(isinstance(m, (bool, np.bool_)) for m in jax.tree_util.tree_leaves(mask)):
        raise TypeError(f"{name}: mask must be a pytree of bools or a callable params -> mask, got {mask!r}.")
    return _record((_Term(name, lam, None, (lambda p: mask(p)) if callable(mask) else (lambda p: mask)),))


def l2(lam: float, *, leaves: tuple[str, ...] = ("w",), mask: Any = None) -> Penalty:
    """L2 penalty (λ/2)·Σ w² over the selected leaves; gradient λ·w (Nielsen's (λ/2n)·Σ w² is ``l2(lam / n)``).

    Args:
        lam: λ, a finite real >= 0.
        leaves: names of the leaves to penalise (last path component); default the weights ``("w",)``.
        mask: instead of ``leaves``, a pytree of bools shaped like params or a callable ``params -> mask``.

    Returns:
        A :class:`Penalty`: ``value(params)`` a scalar, ``grad(params)`` with params' structure.

    Raises:
        TypeError, ValueError: bad ``lam``/``leaves``/``mask``; when called: a mask unlike params, no leaf selected.

    Example:
        >>> params = [{"w": jnp.array([3.0]), "b": jnp.array([1.0])}]
        >>> float(l2(2.0).value(params)), float(l1(2.0).value(params)), l2(2.0).grad(params)[0]["b"].tolist()
        (9.0, 6.0, [0.0])
    """
    return _make("l2", lam, leaves, mask)


def l1(lam: float, *, leaves: tuple[str, ...] = ("w",), mask: Any = None) -> Penalty:
    """L1 penalty λ·Σ|w| over the selected leaves; gradient λ·sign(w), 0 at w = 0. Arguments as :func:`l2`."""
    return _make("l1", lam, leaves, mask)


def combine(*penalties: Penalty) -> Penalty:
    """The sum of penalties, e.g. the elastic net ``combine(l1(a), l2(b))`` (name ``"l1+l2"``, in the order given)."""
    if not penalties:
        raise TypeError("combine: expected at least one Penalty, got none.")
    return _record(tuple(t for p in penalties for t in _terms("combine", p)))


def get(value: Any) -> Penalty | None:
    """``None`` -> ``None``; a :class:`Penalty` -> itself; anything else is a ``TypeError``."""
    if value is None or isinstance(value, Penalty):
        return value
    raise TypeError(f"penalties.get: expected None or a Penalty, got {value!r} ({type(value).__name__}).")


def selected(penalty: Penalty, params: PyTree) -> list[str]:
    """The dotted paths (e.g. ``["0.w", "2.1.w"]``) of the leaves of params that ``penalty`` applies to, in order."""
    per_term = [t.flags(params) for t in _terms("selected", penalty)]  # (leaves, treedef, flags, paths) each
    return [p for i, p in enumerate(per_term[0][3]) if any(f[2][i] for f in per_term)]


def from_description(d: dict) -> Penalty:
    """The inverse of :meth:`Penalty.describe`: ``from_description(p.describe()) == p``."""
    name = d.get("name") if isinstance(d, dict) else None
    if name == "combine" and set(d) == {"name", "terms"} and isinstance(d["terms"], list) and d["terms"]:
        return combine(*(from_description(t) for t in d["terms"]))
    if name in _RULES and {"name", "lam"} <= set(d) <= {"name", "lam", "leaves"}:
        return _make(name, d["lam"], d.get("leaves", ("w",)), None)
    raise ValueError(f"from_description: expected {{'name': 'l1' or 'l2', 'lam': ..., 'leaves': [...]}} or "
                     f"{{'name': 'combine', 'terms': [...]}} as Penalty.describe() gives, got {d!r}.")


def hessian_diagonal(penalty: Penalty, params: PyTree) -> Grads:
    """The diagonal of the penalty's Hessian, params-shaped: λ on the leaves an ``l2`` term selects, 0 for ``l1``
    (its Hessian is 0 wherever it is differentiable, as ``jax.hessian`` of its value gives) and elsewhere."""
    diag = jax.tree.map(jnp.zeros_like, params)
    for t in _terms("hessian_diagonal", penalty):
        if t.name == "l2":
            ws, treedef, flags, _ = t.flags(params)
            term = [jnp.full_like(w, t.lam) if s else jnp.zeros_like(w) for w, s in zip(ws, flags, strict=True)]
            diag = jax.tree.map(operator.add, diag, jax.tree_util.tree_unflatten(treedef, term))
    return diag


def hessian_vector(penalty: Penalty, params: PyTree, v: PyTree) -> Grads:
    """The penalty's Hessian applied to a params-shaped ``v``: :func:`hessian_diagonal` ⊙ ``v`` (the Hessian of
    every term is diagonal)."""
    return jax.tree.map(lambda d, x: d * x.astype(d.dtype), hessian_diagonal(penalty, params), v)
