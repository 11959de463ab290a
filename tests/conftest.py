"""Session-wide test settings for fnn.

* ``jax_numpy_rank_promotion = "raise"`` (equinox's habit): any silent broadcast of arrays of different rank
  fails loudly, so the core must use explicit reshapes / ``keepdims``.
* ``x64``: a fixture that runs the test body with 64-bit floats enabled (``jax.enable_x64``).
* ``TRANSFORMS``: run a function eagerly and under ``jax.jit``.
* A hypothesis profile with no deadline (JAX compiles on first call) and few examples so CI stays fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings

import fnn

jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("fnn", deadline=None, max_examples=25, derandomize=True, print_blob=True)
settings.load_profile("fnn")

#: ``@TRANSFORMS`` parametrizes a test over ``transform`` = identity (eager) and ``jax.jit``.
TRANSFORMS = pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["eager", "jit"])


@pytest.fixture
def x64():
    """Run the test with float64 enabled (the default float becomes float64)."""
    with jax.enable_x64(True):
        yield


# --- shared builders for the gradient tests (imported with ``from conftest import ...``) --------------------

#: The output activation each loss is naturally paired with (None: mse and quadratic take any activation).
NATURAL_OUTPUT = {name: fnn.losses.natural_output(name) for name in fnn.losses.names()}


def make_targets(loss, batch: int, n_out: int, rng: np.random.Generator, dtype):
    """Targets of the kind ``loss`` expects: labels, soft class distributions, or values in [0, 1]."""
    import fnn

    loss = fnn.losses.get(loss)
    if loss.sparse:
        return jnp.asarray(rng.integers(0, n_out, size=batch), jnp.int32)
    if loss.name in ("categorical_cross_entropy", "softmax_cross_entropy"):
        return jnp.asarray(rng.dirichlet(np.ones(n_out), size=batch), dtype)
    return jnp.asarray(rng.uniform(size=(batch, n_out)), dtype)


def random_params(net, rng: np.random.Generator):
    """Glorot-normal weights and nonzero biases from NumPy's RNG (tests that are not about ``net.init`` avoid
    compiling JAX's threefry sampler for every fresh shape: that compile costs more than the test itself)."""
    params = []
    for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:]):
        layer = {"w": jnp.asarray(rng.normal(size=(n_in, n_out)) * np.sqrt(2 / (n_in + n_out)), net.dtype)}
        if net.bias:
            layer["b"] = jnp.asarray(0.3 * rng.normal(size=n_out), net.dtype)
        params.append(layer)
    return params


def make_case(hidden, output, loss, depth: int, batch: int, *, dtype, seed: int = 0, n_in: int = 3, width: int = 4,
              n_out: int = 4, x_scale: float = 1.0):
    """A small MLP (``depth`` layers, hidden layers ``hidden``, last layer ``output``) with random weights and
    nonzero biases, an input batch and matching targets."""
    import fnn

    sizes = [n_in] + [width] * (depth - 1) + [n_out]
    net = fnn.mlp(sizes, activations=[hidden] * (depth - 1) + [output], dtype=dtype)
    rng = np.random.default_rng(seed)
    params = random_params(net, rng)
    x = jnp.asarray(x_scale * rng.normal(size=(batch, n_in)), dtype)
    y = make_targets(loss, batch, n_out, rng, dtype)
    return net, params, x, y
