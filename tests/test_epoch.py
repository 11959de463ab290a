"""Tests for fnn/_epoch.py: the epoch order, and the chunked epoch against one scan over the permuted set."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SPARSE_CE, assert_tree_equal, random_params

import fnn
from fnn import _epoch

# --- the epoch order ----------------------------------------------------------------------------------------

def test_epoch_order_is_a_permutation_replayed_by_lexsort():
    key = jax.random.key(11)
    order = fnn.epoch_order(key, 1000)
    assert order.dtype == jnp.int32 and order.shape == (1000,)
    assert np.array_equal(np.sort(np.asarray(order)), np.arange(1000))
    words = np.asarray(jax.random.bits(key, (2, 1000), jnp.uint32))
    assert np.array_equal(np.asarray(order), np.lexsort((np.arange(1000), words[1], words[0])))
    assert np.array_equal(np.asarray(jax.jit(fnn.epoch_order, static_argnums=1)(key, 1000)), np.asarray(order))
    assert not np.array_equal(np.asarray(fnn.epoch_order(jax.random.key(12), 1000)), np.asarray(order))


def test_epoch_order_positions_are_uniform():
    """Over 4,000 keys, where index 0 lands is uniform over 8 slots (chi-square, 7 dof, p = 0.001 cut-off 24.3)."""
    keys = jax.random.split(jax.random.key(0), 4000)
    orders = np.asarray(jax.vmap(lambda k: fnn.epoch_order(k, 8))(keys))
    counts = np.bincount(np.argmax(orders == 0, axis=1), minlength=8)
    chi2 = ((counts - 500.0) ** 2 / 500.0).sum()
    assert chi2 < 24.3, counts


@pytest.mark.parametrize("n", [0, -3, 2.5, True, 2**31])
def test_epoch_order_refuses_bad_n(n):
    with pytest.raises(ValueError, match="positive integer"):
        fnn.epoch_order(jax.random.key(0), n)


# --- the chunked epoch is one scan over the permuted set ---------------------------------------------------

#: As in tests/test_layers.py (XLA's CPU backend at optimisation level 0, no fusion emitters): both layouts are
#: compiled alike, and compiling, not running, is what these tests spend their time on.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _single_scan_epoch(update, n, batch_size, strict):
    """The reference layout: the whole permuted set gathered at once and scanned step by step."""

    def epoch(params, opt_state, x, y, key, lr):
        num_batches = n // batch_size
        perm = _epoch.epoch_indices(key, n, batch_size)
        xb = jnp.take(x, perm, axis=0).reshape(num_batches, batch_size, -1)
        yb = jnp.take(y, perm, axis=0).reshape(num_batches, batch_size)
        carry, out = jax.lax.scan(_epoch.step_body(update, lr, strict=strict),
                                  _epoch.initial_carry(params, opt_state, strict), (xb, yb))
        return _epoch.unpack(carry, out, strict)

    return epoch


@pytest.mark.parametrize(("chunk_bytes", "strict"), [(1, False), (5 * 3 * 12 * 4, True),
                                                     (7 * 3 * 12 * 4, False), (7 * 3 * 12 * 4, True)])
def test_chunked_epoch_equals_one_scan_over_the_permuted_set(chunk_bytes, strict):
    """Chunks of 1 batch, of 5 and of 7 batches: 23 steps (a prime) have no divisor in [3, 5] or [4, 7], so the
    last two leave a tail loop."""
    n, batch_size = 70, 3  # 23 steps, the last example dropped
    net = fnn.mlp([12, 5, 10], hidden="tanh", output="softmax")
    rng = np.random.default_rng(2)
    params = random_params(net, rng)
    x = jnp.asarray(rng.normal(size=(n, 12)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
    update = _epoch.make_update(net, fnn.losses.get(SPARSE_CE), "manual", None)
    args = params, (), x, y, jax.random.key(3), 0.1
    chunked = _epoch.make_epoch(update, n, batch_size, strict=strict, unroll=1, chunk_bytes=chunk_bytes)
    got = jax.jit(chunked).lower(*args).compile(FAST_COMPILE)(*args)
    want = jax.jit(_single_scan_epoch(update, n, batch_size, strict)).lower(*args).compile(FAST_COMPILE)(*args)
    assert got[2].shape == (23,)
    assert_tree_equal(got, want)


def test_batches_per_chunk_prefers_a_divisor_and_stays_within_the_budget():
    assert _epoch.batches_per_chunk(20, 3, 4, chunk_bytes=5 * 3 * 4) == 5
    assert _epoch.batches_per_chunk(20, 3, 4, chunk_bytes=7 * 3 * 4) == 5  # 5 divides 20: no tail loop
    assert _epoch.batches_per_chunk(23, 3, 4, chunk_bytes=7 * 3 * 4) == 7  # no divisor in [4, 7]: a tail loop
    assert _epoch.batches_per_chunk(20, 3, 4, chunk_bytes=1) == 1
    assert _epoch.batches_per_chunk(20, 3, 4, chunk_bytes=10**9) == 20


def test_rows_hook_gathers_only_the_rows_a_device_owns():
    """The data-parallel hook: each of 2 'devices' (simulated by a fixed index) sees its half of every batch."""
    n, batch_size = 16, 4
    seen = {}
    for device in (0, 1):
        def mine(idx, device=device):
            return idx.reshape(idx.shape[0], 2, batch_size // 2)[:, device]

        def update(p, s, xb, yb, lr):
            return p, s, jnp.sum(xb[:, 0]), p

        epoch = _epoch.make_epoch(update, n, batch_size, strict=False, unroll=1, rows=mine, local_batch=2)
        x = jnp.arange(n, dtype=jnp.float32)[:, None]
        _, _, step_sums, _ = epoch([{"w": jnp.zeros(1)}], (), x, jnp.zeros(n, jnp.int32), jax.random.key(0), 0.1)
        seen[device] = np.asarray(step_sums)
    order = np.asarray(_epoch.epoch_indices(jax.random.key(0), n, batch_size)).reshape(-1, 2, 2)
    np.testing.assert_array_equal(seen[0], order[:, 0].sum(axis=1))
    np.testing.assert_array_equal(seen[1], order[:, 1].sum(axis=1))
