"""Type aliases shared by every fnn module (one place, as STYLE.md asks)."""

from __future__ import annotations

from typing import Any, Union

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PRNGKey = jax.Array
#: Parameters of an MLP: one ``{"w": (n_in, n_out), "b": (n_out,)}`` dict per layer (no ``"b"`` without bias).
Params = list[dict[str, jax.Array]]
#: Gradients have exactly the structure of :data:`Params`.
Grads = Params
PyTree = Any
DTypeLike = Union[str, Any, None]
