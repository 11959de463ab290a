"""Weight initializers: ``init(key, shape, dtype) -> w``. Biases start at zero.

``n_in``/``n_out`` are the fans: for a Dense weight ``(n_in, n_out)`` its two sizes; for a convolution kernel
``(kh, kw, c_in, c_out)`` (HWIO) ``n_in = kh·kw·c_in`` and ``n_out = kh·kw·c_out``.

==============  ====================================================  =================================
name            distribution                                          use
==============  ====================================================  =================================
glorot_uniform  U(-r, r), r = √(6 / (n_in + n_out))                   sigmoid / tanh (Glorot & Bengio)
glorot_normal   N(0, 2 / (n_in + n_out))                              sigmoid / tanh
he_uniform      U(-r, r), r = √(6 / n_in)                             relu family (He et al.)
he_normal       N(0, 2 / n_in)                                        relu family
lecun_normal    N(0, 1 / n_in)                                        selu / linear
uniform         U(-1, 1)                                              the classic tutorial init
normal          N(0, 1)                                               Nielsen's book
zeros           0                                                     biases; tests
==============  ====================================================  =================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn._registry import lookup
from fnn._types import Array, PRNGKey

__all__ = ["Initializer", "get", "names", "fans", "REGISTRY"]


class Initializer(NamedTuple):
    """A named weight initializer ``sample(key, shape, dtype) -> array``."""

    name: str
    sample: Callable[[PRNGKey, tuple[int, ...], object], Array]

    def __call__(self, key: PRNGKey, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        return self.sample(key, shape, dtype)

    def __repr__(self) -> str:
        return f"Initializer({self.name!r})"


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(n_in, n_out)`` of a weight of ``shape``: the last two sizes, times the receptive field (the product of
    the others) for a convolution kernel."""
    if len(shape) < 2:
        raise ValueError(f"An initializer needs a weight shape of rank 2 or more, got {tuple(shape)}.")
    field = math.prod(shape[:-2])
    return field * shape[-2], field * shape[-1]


def _uniform(scale_fn):
    def sample(key, shape, dtype):
        r = scale_fn(*fans(shape))
        return jax.random.uniform(key, shape, dtype, minval=-r, maxval=r)

    return sample


def _normal(std_fn):
    def sample(key, shape, dtype):
        return std_fn(*fans(shape)) * jax.random.normal(key, shape, dtype)

    return sample


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


REGISTRY: dict[str, Initializer] = {
    init.name: init
    for init in [
        Initializer("glorot_uniform", _uniform(lambda n_in, n_out: math.sqrt(6 / (n_in + n_out)))),
        Initializer("glorot_normal", _normal(lambda n_in, n_out: math.sqrt(2 / (n_in + n_out)))),
        Initializer("he_uniform", _uniform(lambda n_in, n_out: math.sqrt(6 / n_in))),
        Initializer("he_normal", _normal(lambda n_in, n_out: math.sqrt(2 / n_in))),
        Initializer("lecun_normal", _normal(lambda n_in, n_out: math.sqrt(1 / n_in))),
        Initializer("uniform", _uniform(lambda n_in, n_out: 1.0)),
        Initializer("normal", _normal(lambda n_in, n_out: 1.0)),
        Initializer("zeros", _zeros),
    ]
}
REGISTRY["xavier_uniform"] = REGISTRY["glorot_uniform"]
REGISTRY["xavier_normal"] = REGISTRY["glorot_normal"]


def get(init: str | Initializer) -> Initializer:
    """Return the :class:`Initializer` for a name (or the record itself).

    Raises:
      ValueError: for an unknown name; the message lists the valid names and the closest match.
    """
    return lookup("initializer", init, REGISTRY, Initializer)


def names() -> list[str]:
    """The canonical initializer names (the ``xavier_*`` aliases excluded)."""
    return sorted({i.name for i in REGISTRY.values()})
