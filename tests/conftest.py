"""Session-wide test settings for fnn.

* ``jax_numpy_rank_promotion = "raise"`` (equinox's habit): any silent broadcast of arrays of different rank
  fails loudly, so the core must use explicit reshapes / ``keepdims``.
* ``x64``: a fixture that runs the test body with 64-bit floats enabled (``jax.enable_x64``).
* ``TRANSFORMS``: run a function eagerly and under ``jax.jit``.
* A hypothesis profile with no deadline (JAX compiles on first call) and few examples so CI stays fast.
* Slow tests first (``SLOW_FIRST``), for the two xdist workers' balance.
* A persistent compilation cache for this test session only: a fresh temporary directory, shared by the xdist
  workers and removed when the session ends. On a 2-core CPU the suite's time is mostly XLA compiling, and many
  tests compile programs another test (or an earlier run in the same test: every ``fnn train``, every ``fit``
  with a fresh optimizer) already compiled; the cache is keyed on the program's HLO, the compile options, the
  XLA flags and the devices, so a hit returns the executable the same compile would produce. Subprocesses the
  tests start do not see it (a fresh process compiles on its own, as a user's does).
* XLA's CPU backend with its legacy loop emitters (``--xla_cpu_use_fusion_emitters=false`` in ``XLA_FLAGS``, set
  before JAX starts, so the subprocesses the tests start inherit it): the same HLO, the same numerics (the
  notebooks' printed errors and every test's equalities are unchanged by it), compiled about 20% faster
  (``tests/test_conv.py``: 195 -> 154 s of CPU). Users' runs keep XLA's defaults; the benchmarks are never run
  with it.
"""

# ruff: noqa: E402 - XLA_FLAGS must be set before JAX (imported below) can start its backend

from __future__ import annotations

import os

#: Appended to ``XLA_FLAGS`` for the session (see the module docstring); subprocess environments keep it.
TEST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import contextlib
import shutil
import signal
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings

import fnn

jax.config.update("jax_numpy_rank_promotion", "raise")


# --- the order tests run in ---------------------------------------------------------------------------------

#: The slowest tests (nodeid prefixes, longest first, measured with ``--durations``) run before everything else;
#: the rest keep their order. With ``pytest -n 2 --dist worksteal`` (README's test command) the first worker
#: starts on these while the second starts halfway down the list, and whichever runs dry steals the other's
#: remaining (short) tests, so neither is left alone with a minute-long test at the end.
SLOW_FIRST = (
    "tests/test_parallel.py",  # its first test waits for the 4-device and 2-process workers it starts
    "tests/test_notebooks.py::test_notebook_runs",
    "tests/test_gradcheck.py::test_sweep_subset",
    "tests/test_gradcheck.py::test_planted_bugs",
    "tests/test_second_order.py::test_jit_scan_and_vmap",
    "tests/test_conv.py::test_finite_differences_on_a_covering_subset",
    "tests/test_gradcheck.py::test_float32_gradcheck_of_correct_nets_from_the_issue",
    "tests/test_cli_train.py::test_train_then_resume",
    "tests/test_bench.py::test_quick_benchmark",
    "tests/test_examples.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the same order in every xdist worker


# --- the session's compilation cache --------------------------------------------------------------------------

_CACHE_ENV = "FNN_TESTS_COMPILATION_CACHE"  # the session's directory, made by its first process (xdist: the controller)


def _atomic_cache_writes() -> bool:
    """JAX writes a cache entry in place (``Path.write_bytes``): a worker reading it while another one is still
    writing would get a truncated executable (JAX then warns and compiles). Write to a temporary name and rename
    instead. False (and the cache is not shared) if this JAX's cache is not the one this was written for."""
    try:
        from jax._src import lru_cache
    except ImportError:
        return False
    cls, suffix = getattr(lru_cache, "LRUCache", None), getattr(lru_cache, "_CACHE_SUFFIX", None)
    if cls is None or not isinstance(suffix, str) or not callable(getattr(cls, "put", None)):
        return False

    def put(self, key: str, value: bytes) -> None:
        path = self.path / f"{key}{suffix}"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(value)
            os.replace(tmp, path)

    cls.put = put
    return True


_OWN_CACHE: str | None = None  # the directory this process made (and removes), if it made one


def pytest_configure(config):
    """Before anything is compiled (and, in the xdist controller, before the workers start, so that they inherit
    the directory): point JAX at the session's cache."""
    global _OWN_CACHE
    if _atomic_cache_writes():
        if _CACHE_ENV not in os.environ:
            _OWN_CACHE = os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="fnn-tests-xla-cache-")
        cache_dir = os.environ[_CACHE_ENV]
    else:
        cache_dir = _OWN_CACHE = tempfile.mkdtemp(prefix="fnn-tests-xla-cache-")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # most compiles here take well under 1 s
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
        if os.environ.get(_CACHE_ENV) == _OWN_CACHE:
            del os.environ[_CACHE_ENV]


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
    for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:], strict=True):
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


def first_order_reference(net, params, x, y, loss, *, key=None, penalty=None) -> dict:
    """fnn.curvature's first-order quantities from materialised per-example gradients: ``jax.vmap`` of
    ``jax.grad`` on each example alone (with its dropout row), scaled by ``1/N`` as BackPACK scales them."""
    from fnn import _layer
    from fnn.backprop import autodiff_in

    tree_map = jax.tree_util.tree_map
    n = x.shape[0]
    loss, pen = fnn.losses.get(loss), fnn.penalties.get(penalty)

    def one(xi, yi, row):
        ctx = _layer.Context(key is not None, key, None, row[None])
        return autodiff_in(net, params, xi[None], yi[None], loss, ctx, pen)[1]

    g = tree_map(lambda t: t / n, jax.vmap(one)(x, y, jnp.arange(n, dtype=jnp.int32)))
    return {"batch_l2_grad": tree_map(lambda t: jnp.sum(t.reshape(n, -1) ** 2, axis=1), g),
            "sum_grad_squared": tree_map(lambda t: jnp.sum(t**2, axis=0), g),
            "variance": tree_map(lambda t: jnp.var(t, axis=0), g),
            "grad": tree_map(lambda t: jnp.sum(t, axis=0), g)}


# --- shared builders for the training tests ---------------------------------------------------------------

SPARSE_CE = "sparse_categorical_cross_entropy"


@pytest.fixture
def float64():
    """Run the test with float64 enabled (the same as ``x64``, named as the training tests use it)."""
    with jax.enable_x64(True):
        yield


def blobs(n, n_in=4, n_out=3, seed=0):
    """Gaussian blobs: float64 numpy ``x (n, n_in)`` and int32 labels ``y (n,)``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_out, n).astype(np.int32)
    centers = rng.normal(size=(n_out, n_in)) * 1.5
    return centers[y] + rng.normal(size=(n, n_in)), y


def classifier():
    return fnn.mlp([4, 6, 3], hidden="tanh", output="softmax")


def scaled_params(net, seed=0):
    """Random params built with numpy (no PRNG program to compile), non-zero biases, in the net's dtype."""
    rng = np.random.default_rng(seed)
    return [{"w": jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), net.dtype),
             "b": jnp.asarray(rng.normal(size=(b,)) * 0.1, net.dtype)}
            for a, b in zip(net.sizes[:-1], net.sizes[1:], strict=True)]


def leaves(tree):
    return [np.asarray(t) for t in jax.tree_util.tree_leaves(tree)]


def assert_tree_equal(a, b):
    """Bit-identical pytrees: the same structure, shapes and dtypes, and equal values (NaN equal to NaN)."""
    chex.assert_trees_all_equal_structs(a, b)
    chex.assert_trees_all_equal_dtypes(a, b)
    chex.assert_trees_all_equal(a, b, strict=True)


def assert_tree_close(a, b, rtol, atol):
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def tree_finite(tree):
    return all(np.isfinite(t).all() for t in leaves(tree))


def without_time(history):
    return {k: v for k, v in history.items() if k != "epoch_time"}


def member(stacked, k):
    return jax.tree_util.tree_map(lambda t: t[k], stacked)


def fit_batches(key, epoch, n, batch_size):
    """fit's shuffle, written out: sort the indices by two 32-bit words of jax.random.bits(fold_in(key, epoch)),
    keep n // b * b indices, cut into batches."""
    words = np.asarray(jax.random.bits(jax.random.fold_in(key, epoch), (2, n), jnp.uint32))
    perm = np.lexsort((np.arange(n), words[1], words[0]))  # last key is the primary one
    num = n // batch_size
    return perm[: num * batch_size].reshape(num, batch_size)


def reference_softmax_ce(params, x, y):
    """An independent pure-JAX objective for tanh hidden layers + softmax + sparse CE (mean over the batch)."""
    a = jnp.asarray(x)
    for layer in params[:-1]:
        a = jnp.tanh(a @ layer["w"] + layer["b"][None, :])
    z = a @ params[-1]["w"] + params[-1]["b"][None, :]
    return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(z.shape[0]), jnp.asarray(y)])


# The references run jitted: op-by-op dispatch compiles every small op separately, which is slow on a small CPU.
reference_value_and_grad = jax.jit(jax.value_and_grad(reference_softmax_ce))
reference_loss = jax.jit(reference_softmax_ce)


@contextlib.contextmanager
def no_hang(seconds: int = 10):
    """Fail instead of hanging: SIGALRM interrupts a blocked ``open`` of a FIFO (the bug the FIFO tests guard)."""
    def expired(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s (a FIFO was opened)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
