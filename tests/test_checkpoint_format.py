"""Tests for fnn/_checkpoint_format.py: every storable dtype round-trips bit for bit, the digest covers every
tensor's name, dtype, shape and bytes, and atomic writes keep the old file's permission bits.

The file-level behaviour (corrupt files refused, pickles never run, interrupted saves) is tested through the
public API in tests/test_checkpoint.py.
"""

from __future__ import annotations

import os
import time
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


# --- bounded headers: size and tensor count, checked before safetensors parses anything --------------------

def _header_file(path: Path, n_tensors: int) -> Path:
    """A safetensors file whose header declares ``n_tensors`` empty float32 tensors (valid for safetensors)."""
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(n_tensors))
    header = ("{" + entries + "}").encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


@pytest.fixture
def no_safetensors_parse(monkeypatch):
    """Fail if safetensors (or the JSON parser, for the raw count) gets to parse the header."""
    import safetensors.numpy

    def parsed(*args, **kwargs):
        raise AssertionError("the header was parsed before its tensor count was checked")

    monkeypatch.setattr(safetensors.numpy, "load", parsed)
    monkeypatch.setattr("json.loads", parsed)


def test_a_header_declaring_too_many_tensors_is_refused_before_parsing(tmp_path, no_safetensors_parse):
    """A header of 1.3M tensors used to cost 23 s and 2.7 GB (safetensors builds every array) before refusal."""
    from fnn import checkpoint

    path = _header_file(tmp_path / "many.safetensors", fmt.MAX_TENSORS + 1)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"many.safetensors is not a valid fnn checkpoint: its header declares "
                                         rf"{fmt.MAX_TENSORS + 1} tensors, more than the {fmt.MAX_TENSORS}"):
        checkpoint.load(path)
    assert time.perf_counter() - t0 < 1.0


def test_a_header_over_the_size_limit_is_refused_before_reading_it(tmp_path, no_safetensors_parse):
    path = tmp_path / "huge.safetensors"
    claimed = fmt.MAX_HEADER_BYTES + 8
    with open(path, "wb") as f:  # sparse: the claimed header is really there, as zeros
        f.write(claimed.to_bytes(8, "little"))
        f.truncate(8 + claimed)
    with pytest.raises(ValueError, match=rf"its header claims {claimed} bytes, more than the "
                                         rf"{fmt.MAX_HEADER_BYTES} an fnn checkpoint's header may have"):
        fmt.read_checked(path)


def test_the_limits_leave_room_for_real_checkpoints(tmp_path):
    """A 200-layer adam checkpoint with a 20,000-epoch history stays far inside both limits."""
    import optax

    from fnn import checkpoint
    from fnn.network import mlp

    net = mlp([2] * 201)
    params = net.init(jax.random.key(0))
    history = {"epoch": list(range(1, 20_001)), "train_loss": [0.123456789] * 20_000}
    path = checkpoint.save(tmp_path / "big.safetensors", params, net=net, opt_state=optax.adam(1e-3).init(params),
                           metadata={"epoch": 20_000, "history": history})
    _, header_len, header = fmt.read_checked(path)
    assert len(header) - 1 < fmt.MAX_TENSORS / 50 and header_len < fmt.MAX_HEADER_BYTES / 50
