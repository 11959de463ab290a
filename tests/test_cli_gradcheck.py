"""Tests for fnn/cli_gradcheck.py (``fnn gradcheck``): the table, ``--all``, a failing check (exit 1) and bad
arguments (exit 2), all through ``fnn.cli.main`` in-process."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest

import fnn
from fnn import cli, cli_gradcheck


def test_gradcheck_prints_the_table(capsys):
    assert cli.main(["gradcheck", "--sizes", "4,8,3", "--activation", "tanh", "--output", "softmax",
                     "--loss", "categorical_cross_entropy", "--batch", "5", "--dtype", "float64", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert "manual~autodiff" in captured.out and "manual~fd" in captured.out and "autodiff~fd" in captured.out
    assert captured.out.strip().splitlines()[-1] == "result: OK"
    assert captured.err == ""


def test_gradcheck_all_restricted_to_one_activation(capsys):
    assert cli.main(["gradcheck", "--all", "--activation", "sigmoid", "--loss", "binary_cross_entropy"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"sigmoid\s+binary_cross_entropy\s+sigmoid\s+\S+\s+\S+\s+ok", lines[-2])
    assert lines[-1].startswith("1/1 pairs ok")


def _broken_tanh():
    """tanh whose hand-written backward is twice the truth: a real gradient bug for the check to find."""
    tanh = fnn.activations.get("tanh")
    return tanh._replace(backward=lambda z, a, g: 2 * tanh.backward(z, a, g))


@pytest.mark.parametrize("argv", [["--loss", "mse"], ["--all", "--loss", "mse"]], ids=["one", "all"])
def test_a_failing_gradient_check_exits_1(argv, capsys, monkeypatch):
    monkeypatch.setitem(fnn.activations.REGISTRY, "tanh", _broken_tanh())
    assert cli.main(["gradcheck", "--activation", "tanh", "--sizes", "3,4,2", *argv]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("fnn gradcheck: error: ") and "disagree" in line


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--sizes", "4"], "--sizes needs at least an input and an output width"),
        (["--sizes", "4,0"], "--sizes"),
        (["--loss", "msee"], "--loss: Unknown loss 'msee'. Did you mean 'mse'?"),
        (["--activation", "tnah"], "Did you mean 'tanh'?"),
        (["--all", "--activation", "tnah"], "Did you mean 'tanh'?"),
        (["--all", "--output", "softmax"], "--output cannot be combined with --all"),
        (["--eps", "0"], "--eps"),
        (["--dtype", "float16"], "--dtype"),
        (["--seed", str(2**64)], "--seed must be an integer of at most 63 bits"),
        (["--dropout", "1.0"], "--dropout must be a rate in [0, 1)"),
        (["--dropout", "-0.5"], "--dropout must be a rate in [0, 1)"),
        (["--dropout", "0.5", "--sizes", "4,3"], "--dropout needs a hidden layer"),
    ],
)
def test_gradcheck_bad_arguments_exit_2(argv, expected, capsys):
    assert cli.main(["gradcheck", *argv]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("fnn gradcheck: error: ") and expected in line and "Traceback" not in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("loss", fnn.losses.names())
def test_make_problem_fits_every_loss(loss):
    record = fnn.losses.get(loss)
    net = fnn.mlp([3, 4, 2], output=fnn.losses.natural_output(record) or "sigmoid")
    params, x, y = cli_gradcheck.make_problem(net, record, 5, jax.random.key(0), jnp.float32)
    fnn.losses.check_targets(record, y, 2, 5, None if record.sparse else x.dtype)  # raises if they do not fit
    net.check_params(params)
    assert x.shape == (5, 3)


def _maskless_dropout(real):
    """Dropout whose hand-written backward forgets the mask (passes g through): wrong in training mode only."""
    def Dropout(rate):
        spec = real(rate)

        def bind(shape, where):
            layer = spec.bind(shape, where)

            def backward(p, x, y, aux, g, ctx, at_z):
                grads, _, values = layer.backward(p, x, y, aux, g, ctx, at_z)
                return grads, g, values

            return dataclasses.replace(layer, backward=backward)

        return dataclasses.replace(spec, bind=bind)

    return Dropout


@pytest.mark.parametrize("argv", [[], ["--all", "--activation", "tanh", "--loss", "mse"]], ids=["one", "all"])
def test_gradcheck_with_dropout_checks_training_mode(argv, capsys, monkeypatch):
    args = ["gradcheck", "--sizes", "3,5,2", "--dropout", "0.5", *argv]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "dropout 0.5 (training mode, fixed masks)" in captured.out and captured.err == ""
    monkeypatch.setattr(fnn.layers, "Dropout", _maskless_dropout(fnn.layers.Dropout))
    assert cli.main(args) == 1  # the masks are in play: a backward that ignores them is caught
    assert "disagree" in capsys.readouterr().err


def test_gradcheck_dropout_net_and_mode():
    net = cli_gradcheck.make_net([4, 6, 3], "tanh", "softmax", 0.25, jnp.float32)
    assert [layer.kind for layer in net.layers] == ["Dense", "Dropout", "Dense"] and net.stochastic
    assert cli_gradcheck.make_net([4, 6, 3], "tanh", "softmax", 0.0, jnp.float32).describe()["sizes"] == [4, 6, 3]
