"""Tests for fnn.checkpoint: exact round trips, refusal of bad files (never running their code), atomic saves."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
from safetensors import safe_open

from fnn import checkpoint
from fnn.network import mlp


def same_bits(a, b) -> bool:
    """True when two arrays have the same dtype, shape and bytes (so NaN payloads and -0.0 count too)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def trees_same_bits(a, b) -> bool:
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    return all(same_bits(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def random_params(net, seed=0):
    """Params of ``net``'s shapes and dtype filled with normal noise (numpy: no JAX compilation, fast tests).

    Every leaf, biases included, has non-trivial bits, so a round trip that loses any would be caught.
    """
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(net.dtype)
    return [{name: jnp.asarray(rng.standard_normal(shape).astype(dtype)) for name, shape in layer.items()}
            for layer in net.param_shapes()]


@pytest.fixture
def net():
    return mlp([6, 5, 3], hidden="tanh", output="softmax")


@pytest.fixture
def saved(tmp_path, net):
    """A valid checkpoint with params, an adam state, metadata and arrays; returns its path."""
    params = random_params(net)
    opt = optax.adam(1e-2)
    return checkpoint.save(tmp_path / "ok.safetensors", params, net=net, opt_state=opt.init(params),
                           metadata={"note": "hello", "epoch": 7}, arrays={"history": np.arange(4.0)})


# --- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bias", [True, False])
def test_params_round_trip_bit_exact(tmp_path, dtype, bias):
    net = mlp([4, 7, 3], activations=["sigmoid", "identity"], bias=bias, dtype=dtype)
    params = random_params(net)
    path = checkpoint.save(tmp_path / "c.safetensors", params, net=net)
    ckpt = checkpoint.load(path)
    assert ckpt.net.describe() == net.describe()
    assert [sorted(layer) for layer in ckpt.params] == [["b", "w"] if bias else ["w"]] * 2
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(ckpt.params))
    assert trees_same_bits(ckpt.params, params)
    assert ckpt.params[0]["w"].dtype == jnp.dtype(dtype)
    assert ckpt.opt_state is None and ckpt.metadata == {} and ckpt.arrays == {}
    x = jnp.ones((2, 4), dtype)
    assert same_bits(ckpt.net.apply(ckpt.params, x), net.apply(params, x))


def test_float64_round_trip(tmp_path):
    with jax.enable_x64(True):
        net = mlp([3, 4, 2], dtype="float64")
        params = random_params(net)
        assert params[0]["w"].dtype == jnp.float64
        ckpt = checkpoint.load(checkpoint.save(tmp_path / "f64.safetensors", params, net=net))
        assert ckpt.params[0]["w"].dtype == jnp.float64
        assert trees_same_bits(ckpt.params, params)


def test_on_disk_layout(saved):
    with safe_open(saved, framework="numpy") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert {"params/0/w", "params/0/b", "params/1/w", "params/1/b", "opt_state/0", "arrays/history"} <= keys
    info = json.loads(meta["fnn"])
    assert info["version"] == checkpoint.FORMAT_VERSION
    assert info["net"] == mlp([6, 5, 3], hidden="tanh", output="softmax").describe()
    assert info["metadata"] == {"note": "hello", "epoch": 7}
    assert info["params"][0]["w"] == {"dtype": "float32", "shape": [6, 5]}
    assert info["opt_state"]["num_leaves"] == sum(k.startswith("opt_state/") for k in keys)
    assert info["opt_state"]["leaves"][0] == {"dtype": "int32", "shape": []}  # adam's count: a 0-d leaf


def test_bfloat16_is_stored_as_uint16_view(tmp_path):
    net = mlp([2, 2], dtype="bfloat16")
    params = random_params(net)
    path = checkpoint.save(tmp_path / "bf16.safetensors", params, net=net)
    raw = safetensors.numpy.load_file(path)
    assert raw["params/0/w"].dtype == np.uint16
    assert same_bits(raw["params/0/w"], np.asarray(params[0]["w"]).view(np.uint16))


@pytest.mark.parametrize(
    "make_optimizer", [lambda: optax.adam(1e-2), lambda: optax.sgd(0.1, momentum=0.9)], ids=["adam", "sgd_momentum"]
)
def test_optimizer_state_round_trip(tmp_path, net, make_optimizer):
    opt = make_optimizer()
    params = random_params(net)
    state = opt.init(params)
    for i in range(3):  # a few real steps so the state holds non-zero moments and count
        grads = random_params(net, seed=10 + i)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    path = checkpoint.save(tmp_path / "opt.safetensors", params, net=net, opt_state=state)

    ckpt = checkpoint.load(path, opt_state_like=opt.init(params))
    assert jax.tree_util.tree_structure(ckpt.opt_state) == jax.tree_util.tree_structure(state)
    assert trees_same_bits(ckpt.opt_state, state)
    assert trees_same_bits(ckpt.params, params)
    # The restored state continues training exactly like the original.
    grads = random_params(net, seed=99)
    assert trees_same_bits(opt.update(grads, ckpt.opt_state, ckpt.params), opt.update(grads, state, params))

    # An abstract template (no allocation) works too; without one, the leaves come back flat.
    abstract = jax.eval_shape(opt.init, params)
    assert trees_same_bits(checkpoint.load(path, opt_state_like=abstract).opt_state, state)
    flat = checkpoint.load(path).opt_state
    assert isinstance(flat, list)
    assert all(same_bits(a, b) for a, b in zip(flat, jax.tree_util.tree_leaves(state), strict=True))


def test_optimizer_state_template_mismatch(tmp_path, net):
    params = random_params(net)
    path = checkpoint.save(tmp_path / "adam.safetensors", params, net=net, opt_state=optax.adam(1e-2).init(params))
    with pytest.raises(ValueError, match=r"has 9 leaves but opt_state_like has 4"):
        checkpoint.load(path, opt_state_like=optax.sgd(0.1, momentum=0.9).init(params))
    half = jax.tree_util.tree_map(lambda p: p.astype(jnp.float16), params)
    expected = r"leaf 1 \[0\]\.mu\[0\]\['b'\]: expected shape \(5,\) dtype float16 .*found shape \(5,\) dtype float32"
    with pytest.raises(ValueError, match=expected):
        checkpoint.load(path, opt_state_like=optax.adam(1e-2).init(half))
    other = random_params(mlp([6, 4, 3]))
    expected = r"leaf 2 \[0\]\.mu\[0\]\['w'\]: expected shape \(6, 4\) .*found shape \(6, 5\)"
    with pytest.raises(ValueError, match=expected):
        checkpoint.load(path, opt_state_like=optax.adam(1e-2).init(other))


def test_empty_optimizer_state_is_not_none(tmp_path, net):
    params = random_params(net)
    opt = optax.sgd(0.1)  # state with no leaves at all
    path = checkpoint.save(tmp_path / "sgd.safetensors", params, net=net, opt_state=opt.init(params))
    assert checkpoint.load(path).opt_state == []
    restored = checkpoint.load(path, opt_state_like=opt.init(params)).opt_state
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(opt.init(params))


def test_metadata_and_arrays_round_trip(tmp_path, net):
    key = jax.random.key(42)
    history = np.array([2.5, 1.25, 0.1 + 0.2], dtype=np.float64)
    metadata = {"epoch": 12, "lr": 0.1, "name": "run-α", "nested": {"a": [1, 2.5, None, True]}, "tuple": (1, 2)}
    arrays = {"key": jax.random.key_data(key), "typed_key": key, "train_loss": history, "step": np.int32(5)}
    path = checkpoint.save(tmp_path / "m.safetensors", random_params(net), net=net, metadata=metadata, arrays=arrays)
    ckpt = checkpoint.load(path)
    assert ckpt.metadata == {**metadata, "tuple": [1, 2]}  # JSON has no tuples
    assert same_bits(ckpt.arrays["train_loss"], history)  # numpy, exact float64 even without x64
    assert same_bits(ckpt.arrays["step"], np.int32(5)) and ckpt.arrays["step"].shape == ()
    restored = jax.random.wrap_key_data(ckpt.arrays["key"])
    assert same_bits(jax.random.normal(restored, (5,)), jax.random.normal(key, (5,)))
    assert same_bits(jax.random.normal(ckpt.arrays["typed_key"], (5,)), jax.random.normal(key, (5,)))


# --- validation on save and on load ----------------------------------------------------------------------


def test_load_into_different_architecture_names_the_differences(tmp_path):
    saved_net = mlp([64, 32, 10])
    path = checkpoint.save(tmp_path / "a.safetensors", random_params(saved_net), net=saved_net)
    with pytest.raises(ValueError) as info:
        checkpoint.load(path, mlp([64, 16, 10]))
    message = str(info.value)
    assert str(path) in message
    assert "sizes: checkpoint has [64, 32, 10], network has [64, 16, 10]" in message
    assert "layer 1 w: checkpoint (32, 10), network (16, 10)" in message
    with pytest.raises(ValueError, match=r"bias: checkpoint has True, network has False"):
        checkpoint.load(path, mlp([64, 32, 10], bias=False))
    same = mlp([64, 32, 10])
    assert checkpoint.load(path, same).net is same


def test_save_rejects_b_none(tmp_path):
    """``"b": None`` used to be saved (as a layer without bias) although backprop crashed on it."""
    for bias in (False, True):
        net = mlp([3, 2], bias=bias)
        with pytest.raises(ValueError, match=r'Layer 0: params have "b": None; .*bias=False'):
            checkpoint.save(tmp_path / "b.safetensors", [{"w": jnp.ones((3, 2)), "b": None}], net=net)
    assert not (tmp_path / "b.safetensors").exists()


def test_save_rejects_wrong_shaped_params(tmp_path, net):
    params = random_params(net)
    params[1]["w"] = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"Layer 1: expected w of shape \(5, 3\), got \(4, 3\)"):
        checkpoint.save(tmp_path / "bad.safetensors", params, net=net)
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.parametrize(
    "metadata, offender",
    [({"lr": np.float32(0.1)}, "metadata['lr']"), ({"a": {"b": [1, object()]}}, "metadata['a']['b'][1]"),
     ({"a": {1: "x"}}, "metadata['a'] has a key 1"), ({3: "x"}, "metadata has a key 3")],
)
def test_metadata_must_be_json_serialisable(tmp_path, net, metadata, offender):
    with pytest.raises(TypeError) as info:
        checkpoint.save(tmp_path / "m.safetensors", random_params(net), net=net, metadata=metadata)
    assert offender in str(info.value)
    assert not (tmp_path / "m.safetensors").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        checkpoint.load(tmp_path / "nope.safetensors")


def _flip_in(needle: bytes):
    """Corrupt one byte inside the first occurrence of ``needle``."""
    def corrupt(data: bytes) -> bytes:
        i = data.index(needle) + len(needle) - 1
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
    return corrupt


def _torch_style_zip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": np.zeros(3)}))
        z.writestr("archive/version", "3\n")
    return buffer.getvalue()


CORRUPTIONS = {
    "truncated_half": lambda d: d[: len(d) // 2],
    "truncated_last_byte": lambda d: d[:-1],
    "flipped_json_brace": lambda d: d[:8] + b"[" + d[9:],
    "flipped_dtype": _flip_in(b'"dtype":"F3'),
    "flipped_user_metadata": _flip_in(b"hello"),  # still valid JSON: only the checksum can tell
    "flipped_tensor_byte": lambda d: d[:-1] + bytes([d[-1] ^ 0x80]),
    "empty": lambda d: b"",
    "seven_bytes": lambda d: d[:7],
    "random_junk": lambda d: np.random.default_rng(0).bytes(4096),
    "header_claims_2**60": lambda d: (2**60).to_bytes(8, "little") + d[8:],
    "header_claims_zero": lambda d: (0).to_bytes(8, "little") + d[8:],
    "pickle": lambda d: pickle.dumps({"w": np.zeros(3)}),
    "pickle_appended": lambda d: d + pickle.dumps({"w": np.zeros(3)}),
    "torch_zip": _torch_style_zip,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_invalid_files_are_refused(saved, corruption):
    bad = saved.with_name("x.safetensors")
    bad.write_bytes(CORRUPTIONS[corruption](saved.read_bytes()))
    with pytest.raises(ValueError, match="not a valid fnn checkpoint") as info:
        checkpoint.load(bad)
    assert str(bad) in str(info.value)


def test_plain_safetensors_without_fnn_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"params/0/w": np.zeros((2, 2), np.float32)}, path)
    with pytest.raises(ValueError, match=r"plain.safetensors is a safetensors file but not a valid fnn checkpoint"):
        checkpoint.load(path)


def test_unknown_format_version(tmp_path):
    path = tmp_path / "future.safetensors"
    blob = json.dumps({"format": "fnn.checkpoint", "version": 99})
    safetensors.numpy.save_file({"params/0/w": np.zeros((2, 2), np.float32)}, path, metadata={"fnn": blob})
    with pytest.raises(ValueError, match=r"future.safetensors: unsupported fnn checkpoint format version 99"):
        checkpoint.load(path)


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("packaging", ["bare", "appended_to_valid_checkpoint", "torch_zip"])
def test_malicious_pickle_is_never_executed(tmp_path, saved, packaging):
    # The payload really does run code when unpickled, so this test could catch a loader that unpickles.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_RunsCode(probe))).close()
    assert probe.exists()

    marker = tmp_path / "marker"
    payload = pickle.dumps(_RunsCode(marker))
    if packaging == "bare":
        data = payload
    elif packaging == "appended_to_valid_checkpoint":
        data = saved.read_bytes() + payload
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            z.writestr("archive/data.pkl", payload)
        data = buffer.getvalue()
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(data)
    with pytest.raises(ValueError, match="x.safetensors is not a valid fnn checkpoint"):
        checkpoint.load(bad)
    assert not marker.exists()


# --- atomicity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, net, monkeypatch, failing):
    path = tmp_path / "ckpt.safetensors"
    old = random_params(net, seed=0)
    checkpoint.save(path, old, net=net, metadata={"version": "old"})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(f"simulated crash in os.{failing}")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(path, random_params(net, seed=1), net=net, metadata={"version": "new"})
    monkeypatch.undo()

    assert os.listdir(tmp_path) == ["ckpt.safetensors"]  # no temp file left behind
    assert path.read_bytes() == before
    ckpt = checkpoint.load(path)
    assert ckpt.metadata == {"version": "old"}
    assert trees_same_bits(ckpt.params, old)


def test_save_creates_parents_and_replaces(tmp_path, net):
    path = tmp_path / "a" / "b" / "ckpt.safetensors"
    assert checkpoint.save(str(path), random_params(net, seed=0), net=net) == path
    new = random_params(net, seed=1)
    checkpoint.save(path, new, net=net)
    assert trees_same_bits(checkpoint.load(path).params, new)
    assert os.listdir(path.parent) == ["ckpt.safetensors"]


def test_lying_header_length_is_refused_before_reading(saved):
    bad = saved.with_name("liar.safetensors")
    bad.write_bytes((2**60).to_bytes(8, "little") + saved.read_bytes()[8:])
    message = rf"liar.safetensors is not a valid fnn checkpoint: its header claims {2**60} bytes"
    with pytest.raises(ValueError, match=message):
        checkpoint.load(bad)


# --- only regular files: FIFOs, dangling links and link loops ----------------------------------------------

def test_a_fifo_checkpoint_is_refused_without_blocking(tmp_path):
    """It used to block forever in ``open`` (a FIFO has no writer)."""
    import signal

    fifo = tmp_path / "ckpt.safetensors"
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("checkpoint.load blocked on a FIFO"))
    signal.alarm(10)
    try:
        with pytest.raises(ValueError, match=rf"{fifo} is a FIFO \(named pipe\), not a regular file"):
            checkpoint.load(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_broken_links_are_errors_naming_the_path_and_a_link_to_a_file_loads(tmp_path, saved):
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="dangling symbolic link to .*gone.safetensors") as info:
        checkpoint.load(dangling)
    assert info.value.filename == str(dangling)
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    with pytest.raises(OSError, match="Too many levels of symbolic links") as info:
        checkpoint.load(loop)
    assert info.value.filename == str(loop)
    link = tmp_path / "link.safetensors"
    link.symlink_to(saved)
    assert checkpoint.load(link).metadata == checkpoint.load(saved).metadata


# --- serial networks (format version 2), layer state, version-1 files --------------------------------------


def serial_net(dtype=None):
    from fnn import layers as L
    from fnn.network import serial

    return serial(L.Dense(8, activation="relu"), L.Dropout(0.2),
                  L.Residual(L.Dense(8, activation="tanh"), L.Dense(8)), L.Activation("elu"), L.Dense(3),
                  input_shape=(5,), dtype=dtype)


def random_tree(shapes, rng, dtype):
    """Normal noise in the layout of ``net.param_shapes()`` (nested lists for blocks)."""
    if isinstance(shapes, list):
        return [random_tree(s, rng, dtype) for s in shapes]
    return {name: jnp.asarray(rng.standard_normal(shape).astype(dtype)) for name, shape in shapes.items()}


@pytest.mark.parametrize("pass_net", [False, True])
def test_serial_net_round_trips_nested_params(tmp_path, pass_net):
    net = serial_net()
    params = random_tree(net.param_shapes(), np.random.default_rng(1), np.float32)
    path = checkpoint.save(tmp_path / "s.safetensors", params, net=net)
    with safe_open(path, framework="numpy") as f:
        keys, info = set(f.keys()), json.loads(f.metadata()["fnn"])
    assert keys == {"params/0/w", "params/0/b", "params/2/0/w", "params/2/0/b", "params/2/1/w", "params/2/1/b",
                    "params/4/w", "params/4/b"}
    assert info["version"] == 2 and info["net"] == net.describe() and "layers" in info["net"]
    assert info["params"][1] == {} and isinstance(info["params"][2], list)
    ckpt = checkpoint.load(path, net if pass_net else None)
    assert (ckpt.net is net) == pass_net
    assert ckpt.net.describe() == net.describe()
    assert trees_same_bits(ckpt.params, params)
    assert ckpt.params[1] == {} and isinstance(ckpt.params[2], list)
    assert ckpt.state is None
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 5)), jnp.float32)
    key = jax.random.key(0)
    assert same_bits(ckpt.net.apply(ckpt.params, x, key=key), net.apply(params, x, key=key))


def test_serial_mismatch_names_the_nested_path(tmp_path):
    from fnn import layers as L
    from fnn.network import serial

    net = serial_net()
    path = checkpoint.save(tmp_path / "s.safetensors", random_tree(net.param_shapes(), np.random.default_rng(0),
                                                                    np.float32), net=net)
    other = serial(L.Dense(8, activation="relu"), L.Dropout(0.3),
                   L.Residual(L.Dense(8, activation="relu"), L.Dense(8, bias=False)), L.Activation("elu"), L.Dense(3),
                   input_shape=(5,))
    with pytest.raises(ValueError) as info:
        checkpoint.load(path, other)
    message = str(info.value)
    assert "layer 1 rate: checkpoint has 0.2, network has 0.3" in message
    assert "layer 2.0 activation: checkpoint has 'tanh', network has 'relu'" in message
    assert "layer 2.1 bias: checkpoint has True, network has False" in message
    assert "layer 2.1 b: checkpoint (8,), network none" in message
    assert "layers" not in message.replace("layer(s)", "")  # no dump of the whole layer list
    with pytest.raises(ValueError) as info:
        checkpoint.load(path, mlp([5, 8, 3]))
    message = str(info.value)
    assert "network: checkpoint has 5 layer(s), network has 2" in message
    assert "layer 1: checkpoint Dropout(rate=0.2), network Dense(units=3" in message
    assert "layer 2.0 w: checkpoint (8, 8), network none" in message


def test_state_round_trips_beside_params(tmp_path):
    net = serial_net()
    params = random_tree(net.param_shapes(), np.random.default_rng(0), np.float32)
    rng = np.random.default_rng(3)
    state = [{"mean": rng.standard_normal(8).astype(np.float32), "var": rng.random(8).astype(np.float32)}, {},
             [{"count": np.array(7, np.int32)}, {}], {}, {}]
    path = checkpoint.save(tmp_path / "st.safetensors", params, net=net, state=state)
    with safe_open(path, framework="numpy") as f:
        keys = set(f.keys())
    assert {"state/0/mean", "state/0/var", "state/2/0/count"} <= keys
    ckpt = checkpoint.load(path)
    assert trees_same_bits(ckpt.state, state) and trees_same_bits(ckpt.params, params)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(ckpt.state))
    with pytest.raises(ValueError, match=r"state must be a list with one entry per layer \(5; .*got 2 entries"):
        checkpoint.save(tmp_path / "bad.safetensors", params, net=net, state=[{}, {}])
    with pytest.raises(TypeError, match=r"state\[0\] has a key 'a/b'"):
        checkpoint.save(tmp_path / "bad.safetensors", params, net=net, state=[{"a/b": np.zeros(2)}, {}, [{}, {}], {},
                                                                               {}])
    assert not (tmp_path / "bad.safetensors").exists()


def write_version_1(path, net, params, *, opt_state=None, metadata=None, arrays=None):
    """A checkpoint in the layout fnn wrote before format version 2 (by hand, not with ``save``): ``fnn.mlp``'s
    description, ``params`` as a list of ``{name: {"dtype", "shape"}}``, no ``"state"`` entry."""
    from fnn import _checkpoint_format as fmt

    tensors, params_info = {}, []
    for l, layer in enumerate(params):
        params_info.append({})
        for name, leaf in layer.items():
            tensors[f"params/{l}/{name}"] = np.asarray(leaf)
            params_info[l][name] = {"dtype": np.asarray(leaf).dtype.name, "shape": list(np.shape(leaf))}
    opt_info = None
    if opt_state is not None:
        leaves, treedef = jax.tree_util.tree_flatten(opt_state)
        for i, leaf in enumerate(leaves):
            tensors[f"opt_state/{i}"] = np.asarray(leaf)
        opt_info = {"num_leaves": len(leaves), "treedef": str(treedef),
                    "leaves": [{"dtype": np.asarray(v).dtype.name, "shape": list(np.shape(v))} for v in leaves]}
    arrays_info = {}
    for name, value in (arrays or {}).items():
        tensors[f"arrays/{name}"] = np.asarray(value)
        arrays_info[name] = {"dtype": np.asarray(value).dtype.name, "shape": list(np.shape(value))}
    desc = net.describe()
    assert "sizes" in desc
    blob = json.dumps({"format": "fnn.checkpoint", "version": 1, "net": desc, "params": params_info,
                       "opt_state": opt_info, "arrays": arrays_info, "metadata": metadata or {}})
    path.write_bytes(safetensors.numpy.save(tensors, metadata={"fnn": blob, "fnn_sha256": fmt.digest(blob, tensors)}))
    return path


@pytest.mark.parametrize("pass_net", [False, True])
def test_version_1_files_still_load(tmp_path, net, pass_net):
    params = random_params(net)
    opt = optax.adam(1e-2)
    state = opt.init(params)
    path = write_version_1(tmp_path / "v1.safetensors", net, params, opt_state=state, metadata={"epoch": 2},
                           arrays={"history": np.arange(3.0)})
    ckpt = checkpoint.load(path, net if pass_net else None, opt_state_like=state)
    assert ckpt.net.describe() == net.describe()
    assert trees_same_bits(ckpt.params, params) and trees_same_bits(ckpt.opt_state, state)
    assert ckpt.metadata == {"epoch": 2} and same_bits(ckpt.arrays["history"], np.arange(3.0))
    assert ckpt.state is None
    with pytest.raises(ValueError, match="layer 1 w: checkpoint"):
        checkpoint.load(path, mlp([6, 4, 3]))
