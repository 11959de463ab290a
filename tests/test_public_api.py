"""The public API: every name in ``fnn.__all__`` exists and imports, and the core contract names are there."""

from __future__ import annotations

import importlib

import pytest

import fnn

CORE = ["GradcheckReport", "Network", "Trace", "activations", "autodiff", "backprop", "gradcheck", "initializers",
        "losses", "manual_apply", "manual_objective", "mlp", "objective", "per_example_grads", "taylor_test"]


@pytest.mark.parametrize("name", sorted(fnn.__all__))
def test_every_public_name_exists_and_imports(name):
    assert hasattr(fnn, name), f"fnn.__all__ lists {name!r} but fnn has no such attribute"
    module = importlib.import_module("fnn")
    namespace: dict = {}
    exec(f"from fnn import {name}", namespace)  # noqa: S102 - the import statement users write
    assert namespace[name] is getattr(module, name)


def test_all_has_no_duplicates_and_core_names():
    assert len(fnn.__all__) == len(set(fnn.__all__))
    assert set(CORE) <= set(fnn.__all__)
    assert isinstance(fnn.__version__, str)


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from fnn import *", namespace)  # noqa: S102
    assert set(namespace) - {"__builtins__"} == set(fnn.__all__)


@pytest.mark.parametrize("module", ["activations", "losses", "initializers", "network", "backprop", "gradcheck",
                                    "train", "optim", "evaluation", "ensemble", "divergence", "parallel", "_epoch"])
def test_core_module_all_names_exist(module):
    mod = importlib.import_module(f"fnn.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), f"fnn.{module}.__all__ lists {name!r}, which does not exist"


def test_train_keeps_every_name_it_had_before_the_split():
    """fnn.train was split into optim, evaluation, ensemble, divergence and the epoch core; what users imported
    from fnn.train still imports from there, and is the same object as the new home's."""
    from fnn import divergence, ensemble, evaluation, optim, train

    assert train.fit_ensemble is ensemble.fit_ensemble is fnn.fit_ensemble
    assert train.evaluate is evaluation.evaluate is fnn.evaluate
    assert train.make_optimizer is optim.make_optimizer and train.OPTIMIZERS == optim.OPTIMIZERS
    assert train.DivergenceWarning is divergence.DivergenceWarning is fnn.DivergenceWarning
    assert train.epoch_order is fnn.epoch_order
    assert train.CHECKPOINT_NAME == "checkpoint.safetensors"
    for name in ("sgd_step", "fit", "TrainingInterrupted"):
        assert getattr(train, name) is getattr(fnn, name)
