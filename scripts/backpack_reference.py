"""BackPACK's first-order quantities on fixed small networks, the oracle fnn.curvature is checked against.

BackPACK (``pip install backpack-for-pytorch``, PyTorch on CPU, float64) runs the same weights and data as
``tests/test_curvature.py`` builds with fnn; this script writes what BackPACK computes to
``tests/fixtures/backpack_first_order.npz``, which CI compares against without needing PyTorch. Where BackPACK is
installed the test also runs :func:`reference` live.

    python scripts/backpack_reference.py          # rewrite the fixture

Layouts are converted to fnn's: Linear ``(out, in)`` -> ``w (in, out)``; Conv2d ``(O, I, kh, kw)`` -> HWIO;
images NCHW -> NHWC, and the Linear after a flattened image has its input rows reordered from PyTorch's ``(c,
h, w)`` to fnn's NHWC ``(h, w, c)`` flattening. Losses are PyTorch's with ``reduction="mean"`` (BackPACK's
individual gradients then carry the ``1/N``, as fnn.curvature's do): ``CrossEntropyLoss`` on logits is fnn's
softmax output with sparse categorical cross-entropy, ``MSELoss`` is fnn's ``mse`` (mean over batch and outputs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "backpack_first_order.npz"
QUANTITIES = ("batch_l2_grad", "sum_grad_squared", "variance")
BATCH = 8

#: name -> (layers, input shape (per example, fnn's layout), loss, output activation in fnn)
#: layers: ("dense", n_out, activation) or ("conv", filters, kernel, stride, activation) or ("flatten",)
CASES = {
    "mlp_tanh_ce": ([("dense", 5, "tanh"), ("dense", 4, "identity")], (3,), "ce"),
    "mlp_sigmoid_relu_mse": ([("dense", 6, "sigmoid"), ("dense", 5, "relu"), ("dense", 3, "identity")], (4,), "mse"),
    "cnn_ce": ([("conv", 3, 3, 1, "relu"), ("conv", 2, 2, 2, "tanh"), ("flatten",), ("dense", 4, "identity")],
               (6, 6, 2), "ce"),
}


def data(name: str):
    """The case's params (fnn layout: a list with one dict per layer, ``{}`` for Flatten), ``x`` and ``y``."""
    layers, shape, loss = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    params, s = [], shape
    for layer in layers:
        if layer[0] == "dense":
            n_in = int(np.prod(s))
            w = rng.normal(size=(n_in, layer[1])) / np.sqrt(n_in)
            params.append({"w": w, "b": 0.3 * rng.normal(size=layer[1])})
            s = (layer[1],)
        elif layer[0] == "conv":
            _, f, k, stride, _ = layer
            w = rng.normal(size=(k, k, s[2], f)) / np.sqrt(k * k * s[2])
            params.append({"w": w, "b": 0.3 * rng.normal(size=f)})
            s = ((s[0] - k) // stride + 1, (s[1] - k) // stride + 1, f)  # VALID padding
        else:
            params.append({})
            s = (int(np.prod(s)),)
    x = rng.normal(size=(BATCH, *shape))
    n_out = s[0]
    y = rng.integers(0, n_out, size=BATCH) if loss == "ce" else rng.uniform(size=(BATCH, n_out))
    return params, x, y


def _flatten_order(s):
    """Rows of fnn's NHWC-flattened vector, in PyTorch's (c, h, w) order: torch_row = perm[fnn_row]."""
    h, w, c = s
    return np.arange(h * w * c).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def reference(name: str) -> dict:
    """BackPACK's quantities for the case, in fnn's layouts: ``{quantity: [per-layer dicts]}``."""
    import torch
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad, SumGradSquared, Variance

    layers, shape, loss = CASES[name]
    params, x, y = data(name)
    modules, s, converters = [], shape, []
    acts = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU}
    for layer, p in zip(layers, params, strict=True):
        if layer[0] == "dense":
            lin = torch.nn.Linear(p["w"].shape[0], layer[1]).double()
            w = p["w"]
            perm = converters[-1][1] if converters and converters[-1][0] == "flatten" else None
            if perm is not None:  # torch's input row perm[i] is fnn's row i
                wt = np.empty_like(w)
                wt[perm] = w
                w = wt
            lin.weight.data = torch.tensor(w.T.copy())
            lin.bias.data = torch.tensor(p["b"])
            modules.append(lin)
            converters.append(("dense", perm))
            if layer[2] != "identity":
                modules.append(acts[layer[2]]())
            s = (layer[1],)
        elif layer[0] == "conv":
            _, f, k, stride, act = layer
            conv = torch.nn.Conv2d(s[2], f, k, stride=stride).double()
            conv.weight.data = torch.tensor(p["w"].transpose(3, 2, 0, 1).copy())
            conv.bias.data = torch.tensor(p["b"])
            modules += [conv, acts[act]()]
            converters.append(("conv", None))
            s = ((s[0] - k) // stride + 1, (s[1] - k) // stride + 1, f)
        else:
            modules.append(torch.nn.Flatten())
            converters.append(("flatten", _flatten_order(s)))
            s = (int(np.prod(s)),)
    model = extend(torch.nn.Sequential(*modules))
    lossfn = extend(torch.nn.CrossEntropyLoss() if loss == "ce" else torch.nn.MSELoss())
    xt = torch.tensor(x if len(shape) == 1 else x.transpose(0, 3, 1, 2).copy()).requires_grad_()  # (no warning)
    yt = torch.tensor(y)
    with backpack(BatchL2Grad(), SumGradSquared(), Variance()):
        lossfn(model(xt), yt).backward()
    out = {q: [] for q in QUANTITIES}
    it = iter(m for m in modules if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    for kind, perm in converters:
        if kind == "flatten":
            for q in QUANTITIES:
                out[q].append({})
            continue
        m = next(it)
        for q, attr in zip(QUANTITIES, ("batch_l2", "sum_grad_squared", "variance"), strict=True):
            w, b = getattr(m.weight, attr).numpy(), getattr(m.bias, attr).numpy()
            if q != "batch_l2_grad":
                w = w.T if kind == "dense" else w.transpose(2, 3, 1, 0)
                w = w[perm] if perm is not None else w
            out[q].append({"w": w, "b": b})
    return out


def main() -> int:
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name in CASES:
        ref = reference(name)
        for q, layers in ref.items():
            for l, leaves in enumerate(layers):
                for leaf, value in leaves.items():
                    arrays[f"{name}/{q}/{l}/{leaf}"] = value
    np.savez_compressed(FIXTURE, **arrays)
    from importlib.metadata import version

    print(f"wrote {len(arrays)} arrays to {FIXTURE.relative_to(ROOT)} (backpack-for-pytorch "
          f"{version('backpack-for-pytorch')}, torch {version('torch')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
