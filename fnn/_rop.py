"""The shared machinery of :mod:`fnn.second_order` and :mod:`fnn.eigen`: the network linearised on one batch,
the R-operator product (``H v`` or ``G v``, data term), the checks before anything is traced, and the run on one
device or a mesh (each device's sums scaled by its share and ``lax.psum``-ed)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from fnn import _layer, parallel
from fnn import losses as _losses
from fnn._types import Array, Params
from fnn.backprop import fused_pair
from fnn.network import Network, check_params

__all__ = ["Point", "loss_head", "check", "linearise", "product", "vector", "run", "scaled", "with_penalty",
           "tree_map"]

tree_map = jax.tree_util.tree_map


class Point(NamedTuple):
    """The network at ``params`` on one batch: forward records, first-order traces (None for the GGN) and the
    loss's view: ``head`` (a loss or fused record with ``hvp``/``sqrt_hessian``), ``pred`` (logits of a fused
    pair, else the output), ``at_z`` (fused)."""

    records: list
    traces: list | None
    head: object
    pred: Array
    y: Array
    at_z: bool


def loss_head(net: Network, loss: _losses.Loss):
    """``(record, at_z)``: the fused pair's record (in ``z``) or the loss itself."""
    closed = fused_pair(net, loss)
    return (closed, True) if closed is not None else (loss, False)


def check(net: Network, loss: _losses.Loss, what: str, field: str, factored: bool = False) -> None:
    """Every refusal in plain Python before anything is traced: layers and activations without rules, a loss
    record without the field needed."""
    if factored:
        _layer.check_factors(net.layers, what)
    else:
        _layer.check_second_order(net.layers, what)
    rec, at_z = loss_head(net, loss)
    if getattr(rec, field) is None:
        pair = f"the pair {net.output.name} + {loss.name!r}" if at_z else f"loss {loss.name!r}"
        hint = (" (a likelihood on its input is needed: use the fused pair or the from-logits loss, or the exact "
                "form without mc_samples)") if field == "sample_sqrt_hessian" else ""
        raise ValueError(f"{what}: {pair} has no {field} in its record{hint}.")


def linearise(net: Network, params: Params, x2, y2, loss, ctx, hessian: bool) -> Point:
    out, records = _layer.forward(net.layers, params, x2, ctx)
    rec, at_z = loss_head(net, loss)
    pred = records[-1][2]["z"] if at_z else out
    traces = None
    if hessian:
        g = rec.delta(pred, out, y2) if at_z else loss.grad(out, y2)
        traces = _layer.backward(net.layers, params, records, g, ctx, at_z=at_z)[2]
    return Point(records, traces, rec, pred, y2, at_z)


def product(net: Network, params: Params, point: Point, v: Params, ctx) -> Params:
    """R-forward, the loss Hessian, R-backward: ``H v`` (``G v`` when ``point.traces`` is None), data term."""
    rout, rrecords = _layer.rforward(net.layers, params, v, point.records, None, ctx)
    rpred = rrecords[-1][1]["rz"] if point.at_z else rout
    rpred = jnp.zeros_like(point.pred) if rpred is None else rpred
    rg = point.head.hvp(point.pred, point.y, rpred)
    return _layer.rbackward(net.layers, params, v, point.records, rrecords, point.traces, rg, ctx,
                            at_z=point.at_z)[0]


def vector(net: Network, params: Params, vector) -> Params:
    try:
        check_params(net, vector)
    except (TypeError, ValueError) as e:
        raise type(e)(f"vector must be shaped like params (one entry per layer, the same leaves): {e}") from None
    return tree_map(lambda v, p: jnp.asarray(v, p.dtype), vector, params)


def run(net: Network, x2, y2, ctx, devices, local_fn, args, key=None):
    """``local_fn(x2, y2, ctx, key, scale, psum, *args)`` on this device (``scale`` 1, ``psum`` the identity) or
    on every device of ``devices`` (its share of the batch; ``psum`` over the mesh); ``args`` replicated."""
    n = x2.shape[0]
    if devices is None:
        return local_fn(x2, y2, ctx, key, 1.0, lambda t: t, *args)
    mesh = parallel.make_mesh(devices)
    local = parallel.check_batch_size(n, mesh)
    axis = parallel.DATA_AXIS

    def shard(x2, y2, dropout_key, key, *args):
        index = jax.lax.axis_index(axis)
        rows = index.astype(jnp.int32) * local + jnp.arange(local, dtype=jnp.int32)
        sctx = ctx._replace(key=dropout_key, axis_name=axis, rows=rows)
        skey = None if key is None else jax.random.fold_in(key, index)
        return local_fn(x2, y2, sctx, skey, local / n, lambda t: jax.lax.psum(t, axis), *args)

    split, same = PartitionSpec(axis), PartitionSpec()
    run = jax.shard_map(shard, mesh=mesh, in_specs=(split, split, same, same) + (same,) * len(args), out_specs=same)
    return run(x2, y2, ctx.key, key, *args)


def scaled(scale, tree):
    return tree if scale == 1 else tree_map(lambda t: t * scale, tree)


def with_penalty(penalty, params, tree, fn):
    return tree if penalty is None else tree_map(lambda t, r: t + r.astype(t.dtype), tree, fn(penalty, params))
