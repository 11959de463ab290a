"""Optimizers by name: ``"sgd"``, ``"momentum"`` and ``"adam"`` as optax transformations, and how fit resolves them.

**Learning-rate schedules.** Wherever a learning rate is taken (``fit``, ``fit_ensemble``, ``sgd_step``,
:func:`make_optimizer`) an optax schedule is accepted too: a callable ``count -> rate`` such as
``optax.cosine_decay_schedule(0.1, decay_steps=1000)``, evaluated inside the compiled epoch at every step. Step
``t`` (counted from 0 over the whole run, not per epoch) uses ``schedule(t)``. Plain SGD with a schedule runs
``W := W - schedule(t) · dW`` as ``optax.sgd(schedule)`` (same arithmetic: the rate, cast to the gradient's
dtype, times the gradient), so the step count lives in the optimizer state: it is saved with every checkpoint
and a resumed run continues the schedule where it stopped (bit-identical to an uninterrupted run on CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from fnn._checks import positive_number
from fnn._registry import unknown_name

__all__ = ["OPTIMIZERS", "DEFAULT_LEARNING_RATES", "default_learning_rate", "is_schedule", "named_learning_rate",
           "make_optimizer", "resolve_optimizer"]

OPTIMIZERS = ("sgd", "momentum", "adam")

#: The learning rate each named optimizer (and plain SGD, ``None``) uses when ``learning_rate`` is not given:
#: SGD's 0.1 (the seeds' and Nielsen's scale for sigmoid/relu MLPs), momentum 0.9's effective step is 10x its
#: rate so 0.01, and adam's customary 1e-3 (Kingma & Ba). A rate meant for SGD is far too large for adam.
DEFAULT_LEARNING_RATES = {None: 0.1, "sgd": 0.1, "momentum": 0.01, "adam": 1e-3}


def is_schedule(learning_rate) -> bool:
    """Whether ``learning_rate`` is a schedule (a callable ``count -> rate``, e.g. an optax schedule)."""
    return callable(learning_rate)


def _rate(learning_rate):
    """A positive number, or a schedule as it is (its values are the caller's: they are traced in the epoch)."""
    return learning_rate if is_schedule(learning_rate) else positive_number("learning_rate", learning_rate)


def make_optimizer(name: str, learning_rate, *, momentum: float = 0.9) -> optax.GradientTransformation:
    """An optax optimizer by name: ``"sgd"``, ``"momentum"`` (SGD with momentum 0.9) or ``"adam"``.

    ``learning_rate`` is a positive number or a schedule (``count -> rate``, e.g.
    ``optax.cosine_decay_schedule(1e-3, 1000)``): optax keeps the step count in the optimizer state.

    ``"adam"`` keeps its state and arithmetic in float32 for float16/bfloat16 params (a no-op for float32/64):
    adam's ``g²`` underflows float16 below ``|g| ≈ 2e-4`` and its ``eps = 1e-8`` rounds to 0 there, so a zero
    gradient would give ``0 / 0 = NaN`` at the first step.

    Raises:
      ValueError: unknown name (lists the valid ones) or a non-positive learning rate.
    """
    learning_rate = _rate(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    if name == "adam":
        return _state_in_float32(optax.adam(learning_rate))
    raise unknown_name("optimizer", name, list(OPTIMIZERS))


def _state_in_float32(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run ``inner`` on float16/bfloat16 params with float32 state and arithmetic (a no-op for float32/64)."""
    up = lambda t: t.astype(jnp.promote_types(t.dtype, jnp.float32))

    def update(grads, state, params=None):
        params = None if params is None else jax.tree_util.tree_map(up, params)
        updates, state = inner.update(jax.tree_util.tree_map(up, grads), state, params)
        return jax.tree_util.tree_map(lambda u, g: u.astype(g.dtype), updates, grads), state

    return optax.GradientTransformation(lambda params: inner.init(jax.tree_util.tree_map(up, params)), update)


def named_learning_rate(optimizer: str | None, learning_rate):
    """The learning rate plain SGD (``optimizer=None``) or a named optimizer runs with: ``learning_rate``,
    checked positive (a schedule as it is), or the optimizer's default when it is None."""
    if learning_rate is None:
        return default_learning_rate(optimizer)
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, list(OPTIMIZERS))
    return _rate(learning_rate)


@functools.lru_cache(maxsize=64)
def _named_optimizer(name: str, learning_rate) -> optax.GradientTransformation:
    """:func:`make_optimizer`, one object per ``(name, learning_rate)`` so compiled programs can be reused."""
    return make_optimizer(name, learning_rate)


def _cached(name, rate) -> optax.GradientTransformation:
    try:
        return _named_optimizer(name, rate)
    except TypeError:  # an unhashable schedule (a callable object): built uncached
        return _named_optimizer.__wrapped__(name, rate)


def default_learning_rate(optimizer: str | None) -> float:
    """The learning rate ``optimizer`` (None: plain SGD, or a name in ``OPTIMIZERS``) uses by default.

    Raises:
      ValueError: an unknown name (lists the valid ones).
    """
    if optimizer not in DEFAULT_LEARNING_RATES:
        raise unknown_name("optimizer", optimizer, list(OPTIMIZERS))
    return DEFAULT_LEARNING_RATES[optimizer]


def resolve_optimizer(optimizer, learning_rate) -> tuple[optax.GradientTransformation | None, float | None]:
    """``(optax transformation or None, learning rate for plain SGD or None)`` from fit's two arguments.

    ``optimizer=None`` is plain SGD with ``learning_rate``; a name builds that optimizer with ``learning_rate``
    baked in (the same object for the same pair, so compiled epochs are reused); with ``learning_rate=None``
    either uses its :data:`DEFAULT_LEARNING_RATES` entry. Plain SGD with a schedule is ``optax.sgd(schedule)``
    (the module docstring): ``(that transformation, None)``. An optax transformation carries its own learning rate
    and is used as it is: passing a ``learning_rate`` beside it is ambiguous and refused.

    Raises:
      ValueError: a non-positive learning rate, an unknown name, or a learning rate beside an optax object.
      TypeError: an optimizer of another type.
    """
    if optimizer is None or isinstance(optimizer, str):
        rate = named_learning_rate(optimizer, learning_rate)
        if optimizer is None and not is_schedule(rate):
            return None, rate
        return _cached(optimizer or "sgd", rate), None  # plain SGD with a schedule: optax.sgd(schedule)
    if isinstance(optimizer, optax.GradientTransformation):
        if learning_rate is not None:
            raise ValueError(
                f"learning_rate={learning_rate!r} was given beside an optax transformation, which carries its own "
                "learning rate: the pair is ambiguous. Pass learning_rate=None (or omit it), or build the optax "
                "transformation with the rate you want."
            )
        return optimizer, None
    raise TypeError(
        f"optimizer must be None (plain SGD), one of {list(OPTIMIZERS)} or an optax.GradientTransformation, "
        f"got {type(optimizer).__name__}."
    )
