"""Activation functions, each with its hand-written derivative beside it.

Every activation is one :class:`Activation` record: ``forward(z) -> a`` and ``backward(z, a, g) -> dL/dz``,
where ``g = dL/da`` is the upstream gradient. ``backward`` is written in vector-Jacobian-product form for
every activation, so the elementwise ones (``g * f'(z)``) and the vector ones (softmax, log-softmax, whose
Jacobian is not diagonal) are used the same way by :func:`fnn.backprop`. ``backward`` receives the saved
forward output ``a`` so that, as in the textbook, derivatives reuse what the forward pass computed
(sigmoid' = a(1-a), tanh' = 1-a²).

Conventions at kinks are those of ``jax.grad`` applied to the ``jax.nn`` function of the same name, so that the
hand-written and autodiff gradients agree exactly:

========================  ==========================================  =============================================
name                      f(z)                                        f'(z) (at kinks);  f''(z)
========================  ==========================================  =============================================
identity                  z                                           1;  0
sigmoid                   1 / (1 + e^-z)                              a (1 - a);  a (1 - a)(1 - 2a)
tanh                      tanh z                                      1 - a²;  -2a (1 - a²)
relu                      max(z, 0)                                   1 if z > 0 else 0 (relu'(0) = 0);  0
leaky_relu                z if z >= 0 else 0.01 z                     1 if z >= 0 else 0.01 (at 0: 1);  0
elu                       z if z > 0 else e^z - 1                     1 if z > 0 else e^z (at 0: 1);  0 | e^z (ditto)
gelu                      z Φ(z)  (exact, erfc)                       Φ(z) + z φ(z);  φ(z)(2 - z²)
gelu_tanh                 ½z(1 + tanh u)                              ½(1+t) + ½z(1-t²)u';  (1-t²)(u' - zt u'² + ½z u'')
softplus                  log(1 + e^z)  (never overflows)             sigmoid(z);  s (1 - s)
swish / silu              z sigmoid(z)                                s + z s (1 - s);  s (1 - s)(2 + z (1 - 2s))
binary_step               1 if z >= 0 else 0                          0 everywhere (as jax.grad; at 0 too);  0
softmax                   e^z_i / Σ_j e^z_j   (row-wise)              VJP: a ⊙ (g - <g, a>);  JVP: a ⊙ (v - <v, a>)
log_softmax               z_i - logΣ_j e^z_j  (row-wise)              VJP: g - s Σ_j g_j;  JVP: v - <s, v>  (s = e^a)
========================  ==========================================  =============================================

(gelu_tanh: u = √(2/π)(z + c z³), c = 0.044715, t = tanh u, u' = √(2/π)(1 + 3c z²), u'' = √(2/π) 6c z.)
The second derivatives follow the same kink conventions: each is ``jax.grad`` of the first derivative as
written (relu''(0) = 0, elu''(0) = 1). They feed the R-operator of the backward pass
(:func:`fnn.curvature.hessian_vector_product`): a record's ``second(z, a, g, v)`` is ``g f''(z) v`` for an
elementwise activation; for softmax and log-softmax it is the directional derivative of the VJP along ``v``,
written out beside their ``backward``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn._registry import lookup
from fnn._types import Array

__all__ = ["Activation", "get", "names", "register", "REGISTRY"]


class Activation(NamedTuple):
    """An activation function, its hand-written backward rule and its second-order rules.

    Attributes:
      name: registry name.
      forward: ``z -> a``, applied to pre-activations of shape ``(..., n)``.
      backward: ``(z, a, g) -> dL/dz`` with ``a = forward(z)`` and ``g = dL/da``, all of shape ``(..., n)``.
        A vector-Jacobian product: ``g * f'(z)`` for elementwise activations.
      derivative: ``z -> f'(z)`` for elementwise activations, ``None`` for vector ones (softmax, log_softmax).
      jvp: ``(z, a, v) -> J v``, the Jacobian-vector product (the R-operator of the forward pass, Pearlmutter
        1994): ``f'(z) v`` for elementwise activations.
      second: ``(z, a, g, v) -> Σ_j g_j (∂²a_j/∂z∂z) v``, the second-order term of the R-operator of
        ``backward`` (how ``Jᵀg`` changes along ``v`` with ``g`` fixed): ``g f''(z) v`` for elementwise ones.
      second_derivative: ``z -> f''(z)`` for elementwise activations, ``None`` for vector ones.

    ``jvp``/``second`` are None for a record registered without them; the Hessian- and GGN-vector products of
    :mod:`fnn.curvature` then name the activation in a ``ValueError``.
    """

    name: str
    forward: Callable[[Array], Array]
    backward: Callable[[Array, Array, Array], Array]
    derivative: Callable[[Array], Array] | None
    jvp: Callable[[Array, Array, Array], Array] | None = None
    second: Callable[[Array, Array, Array, Array], Array] | None = None
    second_derivative: Callable[[Array], Array] | None = None

    @property
    def elementwise(self) -> bool:
        """True when the Jacobian is diagonal (every activation except softmax and log_softmax)."""
        return self.derivative is not None

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


def _elementwise(name: str, forward: Callable, derivative_from: Callable, second_from: Callable) -> Activation:
    """Build a record from ``f``, ``f'`` and ``f''``, each derivative written as ``(z, a) -> ...`` (so it may reuse
    ``a``)."""

    def backward(z: Array, a: Array, g: Array) -> Array:
        return g * derivative_from(z, a)

    def derivative(z: Array) -> Array:
        return derivative_from(z, forward(z))

    def jvp(z: Array, a: Array, v: Array) -> Array:
        return derivative_from(z, a) * v

    def second(z: Array, a: Array, g: Array, v: Array) -> Array:
        return g * second_from(z, a) * v

    def second_derivative(z: Array) -> Array:
        return second_from(z, forward(z))

    return Activation(name, forward, backward, derivative, jvp, second, second_derivative)


# --- elementwise: forward and derivative side by side ---------------------------------------------------

def _identity(z):
    return z


def _d_identity(z, a):
    return jnp.ones_like(z)


def _d2_identity(z, a):
    return jnp.zeros_like(z)


def _sigmoid(z):
    # lax.logistic is the overflow-free sigmoid jax.nn.sigmoid uses.
    return jax.lax.logistic(z)


def _d_sigmoid(z, a):
    return a * (1 - a)


def _d2_sigmoid(z, a):
    return a * (1 - a) * (1 - 2 * a)


def _tanh(z):
    return jnp.tanh(z)


def _d_tanh(z, a):
    return 1 - a * a


def _d2_tanh(z, a):
    return -2 * a * (1 - a * a)


def _relu(z):
    # jax.nn.relu, not jnp.maximum(z, 0): jax.grad of maximum splits the tie at 0 (gives 1/2), so fnn.autodiff
    # would disagree with relu'(0) = 0 below wherever a pre-activation is exactly 0.
    return jax.nn.relu(z)


def _d_relu(z, a):
    # relu'(0) = 0, as jax.grad(jax.nn.relu)(0.).
    return jnp.where(z > 0, 1, 0).astype(z.dtype)


def _d2_relu(z, a):
    # 0 everywhere, at the kink too (jax.grad of relu' = 0: the where's branches are constants).
    return jnp.zeros_like(z)


LEAKY_SLOPE = 0.01


def _leaky_relu(z):
    return jnp.where(z >= 0, z, LEAKY_SLOPE * z)


def _d_leaky_relu(z, a):
    # leaky_relu'(0) = 1, as jax.grad(jax.nn.leaky_relu)(0.).
    return jnp.where(z >= 0, 1, LEAKY_SLOPE).astype(z.dtype)


def _d2_leaky_relu(z, a):
    return jnp.zeros_like(z)


def _elu(z):
    return jnp.where(z > 0, z, jnp.expm1(jnp.where(z > 0, 0, z)))


def _d_elu(z, a):
    # elu'(0) = e^0 = 1 (alpha = 1): the left branch is taken at 0, as in jax.nn.elu.
    return jnp.where(z > 0, 1, a + 1).astype(z.dtype)


def _d2_elu(z, a):
    # 0 for z > 0, e^z = a + 1 for z <= 0 (at 0: 1, the left branch, as jax.grad of elu').
    return jnp.where(z > 0, 0, a + 1).astype(z.dtype)


_SQRT_HALF = math.sqrt(0.5)  # correctly rounded; 1 / math.sqrt(2) is one ulp low
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _gelu(z):
    # Φ(z) = ½ erfc(-z/√2), not ½(1 + erf(z/√2)): no cancellation for z << 0 (as jax.nn.gelu).
    return 0.5 * z * jax.lax.erfc(-z * _SQRT_HALF)


def _d_gelu(z, a):
    cdf = 0.5 * jax.lax.erfc(-z * _SQRT_HALF)
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    return cdf + z * pdf


def _d2_gelu(z, a):
    # d/dz [Φ + z φ] = φ + φ + z φ' = φ (2 - z²), with φ' = -z φ.
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
    return pdf * (2 - z * z)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_C = 0.044715


def _gelu_tanh(z):
    return 0.5 * z * (1 + jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3)))


def _d_gelu_tanh(z, a):
    t = jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * z * z)


def _d2_gelu_tanh(z, a):
    # With u = √(2/π)(z + c z³), t = tanh u: f' = ½(1 + t) + ½ z (1 - t²) u', so
    # f'' = (1 - t²) (u' - z t u'² + ½ z u''),  u' = √(2/π)(1 + 3c z²),  u'' = √(2/π) 6c z.
    t = jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3))
    du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * z * z)
    ddu = _SQRT_2_OVER_PI * 6 * _GELU_C * z
    return (1 - t * t) * (du - z * t * du * du + 0.5 * z * ddu)


def _softplus(z):
    # log(1 + e^z) = max(z, 0) + log1p(e^-|z|): never overflows.
    return jnp.logaddexp(z, 0)


def _d_softplus(z, a):
    return jax.lax.logistic(z)


def _d2_softplus(z, a):
    s = jax.lax.logistic(z)
    return s * (1 - s)


def _swish(z):
    return z * jax.lax.logistic(z)


def _d_swish(z, a):
    s = jax.lax.logistic(z)
    return s + z * s * (1 - s)


def _d2_swish(z, a):
    # d/dz [s + z s (1 - s)] = 2 s (1 - s) + z s (1 - s)(1 - 2s).
    s = jax.lax.logistic(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def _binary_step(z):
    return jnp.where(z >= 0, 1, 0).astype(z.dtype)


def _d_binary_step(z, a):
    # Zero everywhere, at 0 too: the step is flat almost everywhere and jax.grad of jnp.where gives 0.
    return jnp.zeros_like(z)


def _d2_binary_step(z, a):
    return jnp.zeros_like(z)


# --- vector activations: backward is a vector-Jacobian product (Jᵀg) ---------------------------------

def _softmax(z):
    e = jnp.exp(z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True)))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _softmax_backward(z, a, g):
    # J = diag(a) - a aᵀ (symmetric), so Jᵀg = a ⊙ (g - <g, a>).
    return a * (g - jnp.sum(g * a, axis=-1, keepdims=True))


def _softmax_jvp(z, a, v):
    # J v with J = diag(a) - a aᵀ.
    return a * (v - jnp.sum(v * a, axis=-1, keepdims=True))


def _softmax_second(z, a, g, v):
    # Jᵀg = a ⊙ (g - <g, a>) changes along v (g fixed) by Ra ⊙ (g - <g, a>) - a <g, Ra>, with Ra = J v.
    ra = _softmax_jvp(z, a, v)
    return ra * (g - jnp.sum(g * a, axis=-1, keepdims=True)) - a * jnp.sum(g * ra, axis=-1, keepdims=True)


def _log_softmax(z):
    shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _log_softmax_backward(z, a, g):
    # J = I - 1 softmax(z)ᵀ, so Jᵀg = g - softmax(z) Σ_j g_j, with softmax(z) = exp(a).
    return g - jnp.exp(a) * jnp.sum(g, axis=-1, keepdims=True)


def _log_softmax_jvp(z, a, v):
    # J v = v - 1 <softmax(z), v>.
    return v - jnp.sum(jnp.exp(a) * v, axis=-1, keepdims=True)


def _log_softmax_second(z, a, g, v):
    # Jᵀg = g - s Σ_j g_j changes along v by -Rs Σ_j g_j, with s = softmax(z) = exp(a) and Rs = s ⊙ (v - <s, v>).
    s = jnp.exp(a)
    return -s * (v - jnp.sum(s * v, axis=-1, keepdims=True)) * jnp.sum(g, axis=-1, keepdims=True)


REGISTRY: dict[str, Activation] = {}


def register(activation: Activation, *aliases: str) -> Activation:
    """Add an activation record to the registry under its name and any aliases."""
    if not isinstance(activation, Activation):
        raise TypeError(f"register expects an Activation record, got {type(activation).__name__}.")
    for key in (activation.name, *aliases):
        REGISTRY[key] = activation
    return activation


identity = register(_elementwise("identity", _identity, _d_identity, _d2_identity), "linear")
sigmoid = register(_elementwise("sigmoid", _sigmoid, _d_sigmoid, _d2_sigmoid))
tanh = register(_elementwise("tanh", _tanh, _d_tanh, _d2_tanh))
relu = register(_elementwise("relu", _relu, _d_relu, _d2_relu))
leaky_relu = register(_elementwise("leaky_relu", _leaky_relu, _d_leaky_relu, _d2_leaky_relu))
elu = register(_elementwise("elu", _elu, _d_elu, _d2_elu))
gelu = register(_elementwise("gelu", _gelu, _d_gelu, _d2_gelu))
gelu_tanh = register(_elementwise("gelu_tanh", _gelu_tanh, _d_gelu_tanh, _d2_gelu_tanh))
softplus = register(_elementwise("softplus", _softplus, _d_softplus, _d2_softplus))
swish = register(_elementwise("swish", _swish, _d_swish, _d2_swish), "silu")
binary_step = register(_elementwise("binary_step", _binary_step, _d_binary_step, _d2_binary_step))
softmax = register(Activation("softmax", _softmax, _softmax_backward, None, _softmax_jvp,
                                     _softmax_second))
log_softmax = register(Activation("log_softmax", _log_softmax, _log_softmax_backward, None,
                                         _log_softmax_jvp, _log_softmax_second))


def get(activation: str | Activation) -> Activation:
    """Return the :class:`Activation` record for a name (or the record itself).

    Raises:
      ValueError: for an unknown name; the message lists the valid names and the closest match.
      TypeError: for anything that is neither a string nor a record.

    Example:
      >>> import jax.numpy as jnp, fnn
      >>> fnn.activations.get("relu").forward(jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    return lookup("activation", activation, REGISTRY, Activation)


def names() -> list[str]:
    """The canonical names (aliases such as ``silu`` and ``linear`` excluded)."""
    return sorted({a.name for a in REGISTRY.values()})
