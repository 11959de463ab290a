"""fnn: functional, stateless neural networks on JAX with a hand-written backpropagation.

Networks are pure functions over parameter pytrees (``net.init(key) -> params``,
``net.apply(params, x)``); :func:`backprop` computes gradients by the textbook delta recursion and
:func:`gradcheck` proves them equal to ``jax.grad`` and to finite differences.
"""

from fnn import activations, initializers, losses
from fnn.backprop import Trace, autodiff, backprop, manual_apply, manual_objective, objective, per_example_grads
from fnn.gradcheck import GradcheckReport, gradcheck, taylor_test
from fnn.network import Network, mlp

__version__ = "0.1.0"

__all__ = [
    "GradcheckReport",
    "Network",
    "Trace",
    "activations",
    "autodiff",
    "backprop",
    "initializers",
    "losses",
    "manual_apply",
    "manual_objective",
    "mlp",
    "objective",
    "per_example_grads",
    "gradcheck",
    "taylor_test",
]
