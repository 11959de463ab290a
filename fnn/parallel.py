"""Data-parallel training over a device mesh, on JAX's own SPMD machinery (``Mesh``, ``shard_map``, ``pmean``).

One training step on ``N`` devices (a 1-D :class:`jax.sharding.Mesh` whose axis is named ``"data"``):

* params and optimizer state are **replicated**: every device holds the same copy;
* the batch of ``B`` examples is **split** into ``N`` shards of ``B / N`` rows (``B % N != 0`` is a
  ``ValueError`` naming both numbers);
* every device runs the unchanged gradient function — the hand-written :func:`fnn.backprop` or
  :func:`fnn.autodiff` — on its shard, giving the shard's mean loss ``L_i`` and gradients ``g_i``;
* ``lax.pmean`` over ``"data"`` (one all-reduce of parameter size) gives ``L = (1/N) Σ_i L_i`` and
  ``g = (1/N) Σ_i g_i``. **Every fnn loss is a mean over the batch**, so the mean of ``N`` equal-size shard
  means is the full-batch mean: ``(1/N) Σ_i (N/B) Σ_{n ∈ shard i} ℓ_n = (1/B) Σ_n ℓ_n`` — the same numbers
  as one device on the whole batch, up to the order of floating-point sums;
* every device applies the same (plain SGD or optax) update to its copy, so params stay replicated with no
  broadcast.

An epoch is one ``shard_map`` around the single-device epoch of :mod:`fnn._epoch` (the same step body and the
same chunked gather): every device holds the (replicated) training set, draws the same permutation from the
same key and gathers only its own ``B / N`` rows of each batch, a chunk of batches at a time, so a sharded
:func:`fnn.fit` sees exactly the batches of an unsharded one.

Several hosts: call :func:`initialize_distributed` before any JAX computation in every process; then
``jax.devices()`` lists the devices of all processes and a mesh over them spans the hosts. Each process
passes **its part** of every batch to a step (:func:`local_batch_slice` says which rows); params, the
training set given to ``fit`` and every other input are the same in every process.

Reached as ``fnn.fit(..., devices=N)``, ``fnn.sgd_step(..., devices=N)`` and ``fnn train --devices N``.
See ``docs/scaling.md`` for usage on GPU/TPU hosts and the cost model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from fnn import _epoch, losses, penalties
from fnn._types import Array, PyTree

__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "check_batch_size",
    "local_batch_slice",
    "shard_batch",
    "replicate",
    "make_update",
    "make_step",
    "make_epoch",
    "initialize_distributed",
    "ENV_COORDINATOR_ADDRESS",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
]

#: Name of the mesh axis the batch is split over.
DATA_AXIS = "data"

#: Environment variables read by :func:`initialize_distributed`, first match wins.
ENV_COORDINATOR_ADDRESS = ("FNN_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("FNN_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("FNN_PROCESS_ID", "JAX_PROCESS_ID")

_CPU_HINT = (
    "To test data parallelism on a CPU, start Python with XLA_FLAGS=--xla_force_host_platform_device_count={n} "
    "set in the environment (it must be set before JAX initialises)."
)


# --- the mesh -------------------------------------------------------------------------------------------

def make_mesh(devices: int | Sequence[jax.Device] | Mesh) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over which batches are split.

    Args:
      devices: a number ``N`` (the first ``N`` of ``jax.devices()``, which lists every process's devices
        once :func:`initialize_distributed` has run), a sequence of distinct ``jax.Device``, or a ready
        1-D ``Mesh`` whose axis is named ``"data"`` (returned unchanged).

    Returns:
      ``Mesh(devices, ("data",))``.

    Raises:
      ValueError: ``N < 1``; more devices than JAX sees (the message says how many exist and, on CPU, how to
        force several host devices with ``XLA_FLAGS``); an empty or repeated device sequence; a mesh with
        other axes; in a multi-process run, a mesh that holds none of this process's devices or whose devices
        of one process are not contiguous.
      TypeError: anything else.

    Example:
      >>> mesh = fnn.parallel.make_mesh(jax.device_count())      # doctest: +SKIP
    """
    if isinstance(devices, Mesh):
        if tuple(devices.axis_names) != (DATA_AXIS,):
            raise ValueError(f"A mesh for data parallelism must have the single axis {DATA_AXIS!r}, got axes "
                             f"{tuple(devices.axis_names)}.")
        mesh = devices
    else:
        if isinstance(devices, bool) or not isinstance(devices, (int, np.integer, Sequence, np.ndarray)):
            raise TypeError(f"devices must be a number, a sequence of jax.Device or a Mesh, got "
                            f"{type(devices).__name__} {devices!r}.")
        available = jax.devices()
        if isinstance(devices, (int, np.integer)):
            n = int(devices)
            if n < 1:
                raise ValueError(f"devices must be at least 1, got {n}.")
            if n > len(available):
                platform = available[0].platform
                hint = " " + _CPU_HINT.format(n=n) if platform == "cpu" else ""
                raise ValueError(f"devices={n} asks for more devices than exist: JAX sees {len(available)} "
                                 f"{platform} device(s) ({available}).{hint}")
            chosen = list(available[:n])
        else:
            chosen = list(devices)
            if not chosen:
                raise ValueError("devices is an empty sequence; pass a number or at least one jax.Device.")
            bad = [d for d in chosen if not isinstance(d, jax.Device)]
            if bad:
                raise TypeError(f"devices must hold jax.Device objects (e.g. from jax.devices()), got {bad[0]!r}.")
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"devices lists a device more than once: {chosen}.")
        mesh = Mesh(np.array(chosen, dtype=object), (DATA_AXIS,), axis_types=(AxisType.Auto,))
    if jax.process_count() > 1:
        _local_rows(mesh)  # validates the process layout
    return mesh


def _local_rows(mesh: Mesh) -> tuple[int, int]:
    """``(first, stop)``: positions along the data axis of this process's devices (contiguous)."""
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    if not mine:
        raise ValueError(f"The mesh holds none of this process's devices (process {jax.process_index()}, "
                         f"local devices {jax.local_devices()}); every process must own part of the mesh.")
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError(f"This process's devices sit at positions {mine} of the mesh; they must be contiguous "
                         "(order the devices by process, as jax.devices() does).")
    return mine[0], mine[-1] + 1


def check_batch_size(batch_size: int, mesh: Mesh) -> int:
    """The per-device batch size ``batch_size // N``.

    Raises:
      ValueError: ``batch_size`` is not divisible by the number of devices ``N`` (the message names both).
    """
    n = mesh.size
    if batch_size % n:
        lower = max(n, batch_size // n * n)
        raise ValueError(f"batch size {batch_size} is not divisible by the number of devices {n}: every device "
                         f"takes an equal share of each batch. Use a multiple of {n} (e.g. {lower}).")
    return batch_size // n


def local_batch_slice(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` that this process feeds (all rows in a one-process run).

    Example (two processes, each holding the whole batch, each passing its half)::

        part = fnn.parallel.local_batch_slice(mesh, len(x))
        params, loss = step(params, x[part], y[part])
    """
    per_device = check_batch_size(batch_size, mesh)
    first, stop = _local_rows(mesh)
    return slice(first * per_device, stop * per_device)


# --- placement ------------------------------------------------------------------------------------------

def _place(leaf, sharding: NamedSharding, multi_process: bool):
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = _place(jax.random.key_data(leaf), sharding, multi_process)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
        return leaf
    if multi_process:
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))
    return jax.device_put(leaf, sharding)


def replicate(mesh: Mesh, tree: PyTree) -> PyTree:
    """Every leaf copied to every device of the mesh (already replicated leaves are returned as they are).

    In a multi-process run every process must pass the same values (e.g. params from the same key).
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    multi = mesh.is_multi_process
    return jax.tree_util.tree_map(lambda leaf: _place(leaf, sharding, multi), tree)


def shard_batch(mesh: Mesh, x) -> Array:
    """A batch laid out over the mesh, split along its first axis over ``"data"``.

    With one process ``x`` is the whole batch. With several, ``x`` is **this process's part** (the rows
    :func:`local_batch_slice` names) and the result is the global batch, made with
    ``jax.make_array_from_process_local_data``.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return _place(x if isinstance(x, jax.Array) else np.asarray(x), sharding, mesh.is_multi_process)


def _check_batch(mesh: Mesh, x, y) -> None:
    rows = np.shape(x)[0] if np.ndim(x) else None
    if rows is None or np.ndim(y) == 0 or np.shape(y)[0] != rows:
        raise ValueError(f"x and y must have the same number of examples: x has shape {np.shape(x)}, "
                         f"y has shape {np.shape(y)}.")
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        check_batch_size(x.shape[0], mesh)  # already a global batch
    elif mesh.is_multi_process:
        first, stop = _local_rows(mesh)
        if rows % (stop - first):
            raise ValueError(f"This process's part of the batch has {rows} examples, which is not divisible by the "
                             f"number of its devices in the mesh {stop - first}.")
    else:
        check_batch_size(rows, mesh)


# --- data-parallel step and epoch -----------------------------------------------------------------------

_REPLICATED = PartitionSpec()
_SPLIT = PartitionSpec(DATA_AXIS)


def make_update(net, loss, grads: str = "manual", optimizer=None, *, penalty=None) -> Callable:
    """The update a data-parallel step or epoch runs: the single-device update with its loss and grads
    ``lax.pmean``-ed over ``"data"``.

    Args:
      net: the network.
      loss: a loss name or record.
      grads: ``"manual"`` or ``"autodiff"``.
      optimizer: None (plain SGD, the learning rate passed at each call) or an optax transformation.
      penalty: an :mod:`fnn.penalties` record added to the loss and grads.

    Returns:
      ``update(params, opt_state, x, y, lr, key=None) -> (params, opt_state, loss, grads)``, to run inside ``shard_map``
      over a mesh from :func:`make_mesh` (as :func:`make_step` and :func:`make_epoch` do).
    """
    return _epoch.make_update(net, losses.get(loss), grads, optimizer, axis_name=DATA_AXIS,
                              penalty=penalties.get(penalty))


def make_step(update: Callable, mesh: Mesh, *, lr, stateful: bool, keyed: bool = False) -> Callable:
    """A data-parallel training step from an update that ``pmean``-s its grads over ``"data"``.

    Args:
      update: from :func:`make_update` (it averages the shard losses and grads).
      mesh: from :func:`make_mesh`.
      lr: the learning rate passed to ``update`` (None with an optax optimizer).
      stateful: True with an optimizer state.
      keyed: the step takes a last argument ``key`` (training mode: dropout; every device draws the masks of
        its own rows of the global batch, so the step equals the one-device step with that key).

    Returns:
      ``step(params, x, y[, key]) -> (params, loss)`` or, when ``stateful``, ``step(params, opt_state, x, y[,
      key]) -> (params, opt_state, loss)``. Inputs are placed on the mesh (batch split, the rest replicated);
      outputs are replicated. With several processes ``x`` and ``y`` are this process's part of the batch.
    """

    def local(params, opt_state, x, y, *key):
        new_params, new_state, value, _ = update(params, opt_state, x, y, lr, *key)
        return new_params, new_state, value

    specs = (_REPLICATED, _REPLICATED, _SPLIT, _SPLIT) + ((_REPLICATED,) if keyed else ())
    compiled = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=_REPLICATED))

    def run(params, opt_state, x, y, *key):
        _check_batch(mesh, x, y)
        return compiled(replicate(mesh, params), replicate(mesh, opt_state), shard_batch(mesh, x),
                        shard_batch(mesh, y), *replicate(mesh, key))

    if stateful:
        return run

    def step(params, x, y, *key):
        new_params, _, value = run(params, (), x, y, *key)
        return new_params, value

    return step


def make_epoch(update: Callable, mesh: Mesh, n: int, batch_size: int, *, strict: bool, unroll: int,
               keyed: bool = False) -> Callable:
    """``epoch(params, opt_state, x, y, key, lr) -> (params, opt_state, step_losses, layer_ok)``, data parallel.

    The single-device epoch of :mod:`fnn._epoch` (same permutation from ``key``, last partial batch dropped,
    the same chunked gather and step body, ``layer_ok`` per step in strict mode else None), run as one
    ``shard_map``: its ``rows`` hook makes device ``i`` gather only rows ``i·B/N … (i+1)·B/N`` of every permuted
    batch from its copy of the training set, and ``update`` (from :func:`make_update`) averages the grads.

    Raises:
      ValueError: ``batch_size`` not divisible by the number of devices.
    """
    num_devices = mesh.size
    per_device = check_batch_size(batch_size, mesh)

    def mine(idx):  # (k, B) indices of k batches -> (k, B / N): this device's share of each
        idx = idx.reshape(idx.shape[0], num_devices, per_device)
        return jax.lax.dynamic_index_in_dim(idx, jax.lax.axis_index(DATA_AXIS), axis=1, keepdims=False)

    local_epoch = _epoch.make_epoch(update, n, batch_size, strict=strict, unroll=unroll, rows=mine,
                                    local_batch=per_device, keyed=keyed)
    compiled = jax.jit(jax.shard_map(local_epoch, mesh=mesh, in_specs=_REPLICATED, out_specs=_REPLICATED))

    def epoch(params, opt_state, x, y, key, lr):
        return compiled(*replicate(mesh, (params, opt_state, x, y, key)), lr)

    epoch.jitted = compiled  # the jitted shard_map, for inspection: epoch.jitted.lower(...).compile().as_text()
    return epoch


# --- several hosts --------------------------------------------------------------------------------------

def _from_env(names: tuple[str, ...], as_int: bool):
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            if not as_int:
                return value
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"Environment variable {name} must be an integer, got {value!r}.") from None
    return None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    initialization_timeout: int = 300,
) -> None:
    """Join a multi-process (multi-host) run: ``jax.distributed.initialize`` with fnn's defaults.

    Call it first thing in every process, before any JAX computation. Each argument left as None is read
    from the environment — ``FNN_COORDINATOR_ADDRESS`` or ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of
    process 0), ``FNN_NUM_PROCESSES`` or ``JAX_NUM_PROCESSES``, ``FNN_PROCESS_ID`` or ``JAX_PROCESS_ID`` — and
    whatever is still missing is left to JAX's cluster auto-detection (Slurm, Open MPI, Cloud TPU, Kubernetes).
    On CPU the cross-process collectives are gloo's (JAX's default; set before initialising if it was unset).

    After it, ``jax.devices()`` lists the devices of every process, so ``fit(..., devices=jax.device_count())``
    and ``sgd_step(..., devices=jax.device_count())`` train across all hosts.

    Raises:
      ValueError: a non-integer process count or id in the environment, or what JAX raises for missing or
        inconsistent arguments.
      RuntimeError: from JAX, when called after a JAX computation or twice.
    """
    coordinator_address = coordinator_address or _from_env(ENV_COORDINATOR_ADDRESS, as_int=False)
    num_processes = num_processes if num_processes is not None else _from_env(ENV_NUM_PROCESSES, as_int=True)
    process_id = process_id if process_id is not None else _from_env(ENV_PROCESS_ID, as_int=True)
    if jax.config.values.get("jax_cpu_collectives_implementation") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_device_ids, initialization_timeout=initialization_timeout)
