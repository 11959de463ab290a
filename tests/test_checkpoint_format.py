"""Tests for fnn/_checkpoint_format.py: every storable dtype round-trips bit for bit, the digest covers every
tensor's name, dtype, shape and bytes, and atomic writes keep the old file's permission bits.

The file-level behaviour (corrupt files refused, pickles never run, interrupted saves) is tested through the
public API in tests/test_checkpoint.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest

from fnn import _checkpoint_format as fmt


@pytest.mark.parametrize("name", sorted(fmt.NATIVE) + sorted(fmt.VIEWED))
def test_every_supported_dtype_round_trips_bit_for_bit(name):
    dtype = fmt.NATIVE.get(name, fmt.VIEWED.get(name))
    raw = np.random.default_rng(0).integers(0, 256, size=3 * 2 * dtype.itemsize, dtype=np.uint8)
    leaf = raw.view(dtype).reshape(3, 2)
    stored, info = fmt.encode(leaf, "leaf")
    assert info == {"dtype": name, "shape": [3, 2]}
    assert stored.dtype in fmt.NATIVE.values()  # what safetensors' numpy backend can hold
    back = fmt.decode(Path("x"), "leaf", stored, info)
    assert back.dtype == dtype and back.shape == (3, 2) and back.tobytes() == leaf.tobytes()


def test_typed_prng_key_round_trips():
    key = jax.random.key(3)
    stored, info = fmt.encode(key, "key")
    assert info["prng_impl"] and stored.dtype == np.uint32
    back = fmt.decode(Path("x"), "key", stored, info)
    np.testing.assert_array_equal(jax.random.key_data(back), jax.random.key_data(key))


def test_unsupported_dtype_names_the_leaf():
    with pytest.raises(TypeError, match="arrays\\['s'\\] has dtype .*cannot hold"):
        fmt.encode(np.array(["a"]), "arrays['s']")
    with pytest.raises(ValueError, match="not a valid fnn checkpoint: tensor 'k' is recorded with unsupported"):
        fmt.decode(Path("x"), "k", np.zeros(2, np.uint8), {"dtype": "object", "shape": [2]})


def test_digest_covers_name_dtype_shape_and_bytes():
    base = {"a": np.arange(4, dtype=np.float32)}
    variants = [
        {"b": base["a"]},
        {"a": base["a"].view(np.int32)},
        {"a": base["a"].reshape(2, 2)},
        {"a": base["a"] + 1},
    ]
    digest = fmt.digest("{}", base)
    assert digest == fmt.digest("{}", {"a": base["a"].copy()})
    assert fmt.digest("{ }", base) != digest
    for other in variants:
        assert fmt.digest("{}", other) != digest, other


def test_atomic_write_keeps_the_old_permission_bits(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    fmt.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["f.bin"]
