"""The fnn rows of the benchmark: ``fnn.fit`` itself, one epoch per round, continuing from the last round.

Round ``e`` of a row is one public call::

    params, history = fnn.fit(net, params, (x, y), loss=LOSS, epochs=1, batch_size=B,
                              learning_rate=lr, key=round_key(seed, e), progress=False, ...)

from the params the previous round returned, and the row's time for the round is ``history["epoch_time"][0]``
(fit's own clock around its compiled epoch, the loss fetch and the finiteness check; the data checks fit
does before its loop are outside it). fit caches its programs, so the later calls of a row reuse the epoch
the first call compiled (one net object per row, one optax object for the optax row).

Compile time (``compile_s``): the first call of a row compiles its epoch. JAX reports the duration of every
jaxpr trace, MLIR lowering and XLA compile to listeners of the public ``jax.monitoring`` API, tagged with the
function's name; the row's compile time is the total of the program that took longest to build during its
first call (the epoch: trace + lowering + XLA compile, what ``jit(epoch).lower(...).compile()`` costs).
``first_call_compile_s`` adds everything else the first call compiled (fold_in, the eager finiteness
checks, ~10 small programs that only the first fnn row of a configuration pays, at its shapes).
"""

from __future__ import annotations

import collections

import numpy as np

from benchmarks.peers import Row
from benchmarks.workload import LOSS, make_net, round_key

__all__ = ["FnnRow", "compile_times"]

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


class compile_times:
    """Collect JAX's compile durations inside the block: ``by_function`` maps a function's name to seconds.

    Uses ``jax.monitoring`` (public): each trace, lowering and backend compile reports its duration with a
    ``fun_name`` (``"epoch"`` for the trace, ``"jit(epoch)"`` for the others; both are counted as ``epoch``).
    """

    def __init__(self):
        self.by_function: dict[str, float] = collections.defaultdict(float)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event in _COMPILE_EVENTS:
            name = str(kwargs.get("fun_name", "?"))
            if name.startswith("jit(") and name.endswith(")"):
                name = name[4:-1]
            self.by_function[name] += duration

    def __enter__(self):
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        import jax

        jax.monitoring.unregister_event_duration_listener(self._listen)

    @property
    def longest(self) -> float:
        """Seconds spent building the program that took longest (0 if nothing was compiled)."""
        return max(self.by_function.values(), default=0.0)

    @property
    def total(self) -> float:
        return sum(self.by_function.values())


class FnnRow(Row):
    """``fnn.fit`` with ``grads`` (``"manual"`` or ``"autodiff"``) or ``optimizer=optax.sgd(lr)``, one epoch a round,
    on the net :func:`~benchmarks.workload.make_net` builds for ``net`` (``"mlp"``, ``"serial"``, ``"dropout"``)."""

    def __init__(self, name, config, init, x, y, *, seed, grads="manual", optax_sgd=False, net="mlp"):
        import jax.numpy as jnp
        import optax

        import fnn

        self.name, self._fnn, self._c, self._seed = name, fnn, config, seed
        self._net = make_net(config, net)  # one object for every round: fit's program cache is keyed on it
        self._dense = [l for l, layer in enumerate(self._net.layers) if layer.kind == "Dense"]
        dense = iter([{"w": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in init])
        self._p = [next(dense) if l in self._dense else {} for l in range(self._net.num_layers)]
        self._x, self._y = x, y
        self._kwargs = {"grads": grads, "optimizer": None, "learning_rate": config.learning_rate}
        if optax_sgd:
            self._kwargs.update(optimizer=optax.sgd(config.learning_rate), learning_rate=None)
        self.compile_s: float | None = None
        self.first_call_compile_s: float | None = None
        self.epoch_times: list[float] = []
        self.train_loss = float("nan")

    def compile(self) -> None:
        """None here: the first :meth:`epoch` compiles, and measures it (``compile_s``)."""
        return None

    def epoch(self, e: int) -> float:
        """Round ``e``: one ``fnn.fit`` epoch; returns fit's ``history["epoch_time"][0]``."""
        with compile_times() as compiled:
            p, history = self._fnn.fit(self._net, self._p, (self._x, self._y), loss=LOSS, epochs=1,
                                       batch_size=self._c.batch_size, key=round_key(self._seed, e),
                                       progress=False, **self._kwargs)
        if "diverged" in history:
            raise FloatingPointError(f"{self.name}: training diverged in round {e + 1}: "
                                     f"{history['diverged'].get('message', '')}")
        if self.compile_s is None:
            self.compile_s, self.first_call_compile_s = compiled.longest, compiled.total
        self._p = p
        self.epoch_times.append(float(history["epoch_time"][0]))
        self.train_loss = float(history["train_loss"][0])
        return self.epoch_times[-1]

    def params(self):
        return [(np.asarray(self._p[l]["w"]), np.asarray(self._p[l]["b"])) for l in self._dense]
