"""The networks ``fnn train`` builds from its options: ``--model mlp|cnn``, ``--dropout``, ``--norm``, and the
penalty of ``--l1``/``--l2``."""

from __future__ import annotations

import fnn

__all__ = ["CNN_FILTERS", "NORMS", "make_net", "make_cnn", "make_penalty"]

#: The filters of ``--model cnn``'s convolution stages.
CNN_FILTERS = (32, 64)
#: ``--norm``: the normalisation layer after every hidden layer's linear part.
NORMS = {"layer": lambda: fnn.layers.LayerNorm(), "batch": lambda: fnn.layers.BatchNorm()}


def _hidden(linear, activation: str, dropout: float, norm: str | None) -> list:
    """One hidden layer: ``linear(activation)``; with ``norm`` the linear part without bias (a BatchNorm or
    LayerNorm offset replaces it), the normalisation, then the activation; ``Dropout`` last when > 0."""
    L = fnn.layers
    layers = [linear(activation, True)] if norm is None else [linear("identity", False), NORMS[norm](),
                                                              L.Activation(activation)]
    return layers + ([L.Dropout(dropout)] if dropout else [])


def make_net(sizes: list[int], activation: str, output: str, dropout: float, norm: str | None = None) -> fnn.Network:
    """``fnn.mlp(sizes, ...)``; with ``dropout > 0`` or a ``norm`` the same Dense layers as an ``fnn.serial`` with
    ``Dropout(dropout)`` after every hidden one and ``norm`` (``"layer"``, ``"batch"``) between each hidden
    Dense layer and its activation (without either, the run is exactly the mlp one, bit for bit)."""
    if not dropout and norm is None:
        return fnn.mlp(sizes, hidden=activation, output=output)
    L = fnn.layers
    hidden = [layer for n in sizes[1:-1] for layer in _hidden(
        lambda act, bias, n=n: L.Dense(n, activation=act, bias=bias), activation, dropout, norm)]
    return fnn.serial(*hidden, L.Dense(sizes[-1], activation=output), input_shape=(sizes[0],))


def make_cnn(input_shape: tuple[int, ...], hidden: list[int], classes: int, activation: str, output: str,
             dropout: float, norm: str | None = None) -> fnn.Network:
    """``--model cnn``: per filter count in :data:`CNN_FILTERS` a 3x3 ``"SAME"`` Conv2D with ``activation`` (and
    ``norm`` before the activation) and a 2x2 max-pool, then Flatten, the ``hidden`` Dense layers (each followed
    by ``Dropout(dropout)`` when > 0, normalised as :func:`make_net`'s) and the output layer. Images are NHWC
    ``input_shape = (H, W, C)``."""
    L = fnn.layers
    convs = [layer for f in CNN_FILTERS for layer in (*_hidden(
        lambda act, bias, f=f: L.Conv2D(f, 3, activation=act, bias=bias), activation, 0.0, norm), L.MaxPool2D(2))]
    dense = [layer for n in hidden for layer in _hidden(
        lambda act, bias, n=n: L.Dense(n, activation=act, bias=bias), activation, dropout, norm)]
    return fnn.serial(*convs, L.Flatten(), *dense, L.Dense(classes, activation=output), input_shape=input_shape)


def make_penalty(config: dict):
    """The penalty of ``--l1``/``--l2`` (None when both are 0; their sum, l1 first, when both are given)."""
    terms = [make(config[name]) for name, make in (("l1", fnn.penalties.l1), ("l2", fnn.penalties.l2))
             if config[name]]
    return None if not terms else terms[0] if len(terms) == 1 else fnn.penalties.combine(*terms)
