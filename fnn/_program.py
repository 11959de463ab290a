"""The program a training run compiles: the resolved loss and optimizer, the update and the epoch, built once per
configuration (cached), for one device or a data-parallel mesh; ``fit`` jits it and ``fit_ensemble`` vmaps it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import optax

from fnn import _epoch, parallel, penalties
from fnn import losses as _losses
from fnn._checks import check_grads_mode
from fnn.optim import resolve_optimizer

__all__ = ["Program", "program"]


class Program(NamedTuple):
    """What ``fit`` runs: the resolved loss and optimizer, plain SGD's learning rate (None with an optimizer),
    the update and the epoch ``epoch(params, opt_state, x, y, key, lr) -> (params, opt_state, losses, layer_ok)``
    (jitted, or a data-parallel ``shard_map``)."""

    loss: _losses.Loss
    optimizer: optax.GradientTransformation | None
    lr: float | None
    update: Callable
    epoch: Callable

    def init_state(self, params):
        return self.optimizer.init(params) if self.optimizer is not None else ()


def program(net, loss, grads, optimizer, learning_rate, n, batch_size, *, strict=False, unroll=1, mesh=None,
            penalty=None):
    """The :class:`Program` of ``fit`` (and, unjitted, of ``fit_ensemble``): the same function objects for the
    same configuration, so ``jax.jit``'s caches hit and a repeated ``fit`` (a sweep over learning rates or
    seeds, a resumed run) does not recompile. With ``mesh`` the epoch is :func:`fnn.parallel.make_epoch`'s. A net
    with dropout gets an epoch that hands every step its own dropout key (:func:`fnn._epoch.step_keys`)."""
    loss = _losses.get(loss)
    optimizer, lr = resolve_optimizer(optimizer, learning_rate)
    grads = check_grads_mode(grads)
    build = _cached_programs if mesh is None else _cached_parallel_programs
    args = (net, loss, grads, optimizer, n, batch_size, strict, unroll, penalties.get(penalty)) + \
        (() if mesh is None else (mesh,))
    try:
        update, epoch = build(*args)
    except TypeError:  # an unhashable optax transformation: build the programs uncached
        update, epoch = build.__wrapped__(*args)
    return Program(loss, optimizer, lr, update, epoch)


@functools.lru_cache(maxsize=32)
def _cached_programs(net, loss, grads, optimizer, n, batch_size, strict, unroll, penalty):
    update = _epoch.make_update(net, loss, grads, optimizer, penalty=penalty)
    return update, _epoch.make_epoch(update, n, batch_size, strict=strict, unroll=unroll, keyed=net.stochastic)


@functools.lru_cache(maxsize=8)
def _cached_parallel_programs(net, loss, grads, optimizer, n, batch_size, strict, unroll, penalty, mesh):
    update = parallel.make_update(net, loss, grads, optimizer, penalty=penalty)
    return update, parallel.make_epoch(update, mesh, n, batch_size, strict=strict, unroll=unroll,
                                       keyed=net.stochastic)
