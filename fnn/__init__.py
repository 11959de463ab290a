"""fnn: functional, stateless neural networks on JAX with a hand-written backpropagation.

Networks are pure functions over parameter pytrees (``net.init(key) -> params``,
``net.apply(params, x)``); :func:`backprop` computes gradients by the textbook delta recursion and
:func:`gradcheck` proves them equal to ``jax.grad`` and to finite differences; :func:`fit` trains with
whole epochs compiled as one ``lax.scan``.
"""

from fnn import (
    activations,
    checkpoint,
    curvature,
    data,
    initializers,
    layers,
    losses,
    parallel,
    penalties,
    stats,
    tabular,
)
from fnn.backprop import Trace, autodiff, backprop, manual_apply, manual_objective, objective, per_example_grads
from fnn.checkpoint import Checkpoint, load, save
from fnn.data import (
    digits,
    fashion_mnist,
    iris,
    load_dataset,
    load_idx,
    mnist,
    one_hot,
    standardize,
    train_test_split,
)
from fnn.early_stopping import EarlyStopping
from fnn.export import export_onnx
from fnn.gradcheck import GradcheckReport, finite_difference_grads, gradcheck, taylor_test
from fnn.network import Network, mlp, serial
from fnn.run import load_run
from fnn.train import (
    DivergenceWarning,
    TrainingInterrupted,
    epoch_order,
    evaluate,
    fit,
    fit_ensemble,
    make_optimizer,
    sgd_step,
)

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "DivergenceWarning",
    "EarlyStopping",
    "GradcheckReport",
    "Network",
    "Trace",
    "TrainingInterrupted",
    "activations",
    "autodiff",
    "backprop",
    "checkpoint",
    "curvature",
    "data",
    "digits",
    "epoch_order",
    "evaluate",
    "export_onnx",
    "fashion_mnist",
    "finite_difference_grads",
    "fit",
    "fit_ensemble",
    "gradcheck",
    "initializers",
    "iris",
    "layers",
    "load",
    "load_dataset",
    "load_idx",
    "load_run",
    "losses",
    "make_optimizer",
    "manual_apply",
    "manual_objective",
    "mlp",
    "mnist",
    "objective",
    "one_hot",
    "parallel",
    "penalties",
    "per_example_grads",
    "save",
    "serial",
    "sgd_step",
    "standardize",
    "stats",
    "tabular",
    "taylor_test",
    "train_test_split",
]
