"""BackPACK's first- and second-order quantities on fixed small networks, the oracle fnn.curvature is checked
against.

BackPACK (``pip install backpack-for-pytorch``, PyTorch on CPU, float64) runs the same weights and data as
``tests/test_curvature.py`` builds with fnn; this script writes what BackPACK computes to
``tests/fixtures/backpack_first_order.npz`` (``BatchL2Grad``, ``SumGradSquared``, ``Variance``: checked by
tests/test_curvature.py) and ``tests/fixtures/backpack_second_order.npz`` (``DiagGGNExact``, ``KFLR``: checked
by tests/test_backpack_second_order.py), which CI compares against without needing PyTorch. Where BackPACK is
installed the tests also run :func:`reference` and :func:`second_order_reference` live.

    python scripts/backpack_reference.py                  # rewrite both fixtures
    python scripts/backpack_reference.py second_order     # only one (first_order | second_order)

Layouts are converted to fnn's: Linear ``(out, in)`` -> ``w (in, out)``; Conv2d ``(O, I, kh, kw)`` -> HWIO;
images NCHW -> NHWC, and the Linear after a flattened image has its input rows reordered from PyTorch's ``(c,
h, w)`` to fnn's NHWC ``(h, w, c)`` flattening. Losses are PyTorch's with ``reduction="mean"`` (BackPACK's
individual gradients then carry the ``1/N``, as fnn.curvature's do): ``CrossEntropyLoss`` on logits is fnn's
softmax output with sparse categorical cross-entropy, ``MSELoss`` is fnn's ``mse`` (mean over batch and outputs).

Second order (BackPACK's ``param.diag_ggn_exact`` and ``param.kflr``):

* ``diag_ggn``: weight-shaped, converted as the weights; both linearise at the logits for cross-entropy.
* ``kflr``: BackPACK's ``[G, A]`` for a weight (``kron(G, A)`` ≈ the GGN block of PyTorch's ``(out, in)``
  weight flattened row-major), ``[G]`` for a bias; fnn's ``{"A", "G"}`` with ``kron(A, G)`` for ``w (in, out)``:
  the same two matrices, stored as ``kflr/<layer>/w/A``, ``.../w/G``, ``.../b/G``. Both put the ``1/N`` in ``A``
  (``Σ_n a aᵀ / N``) and the loss's ``1/√N`` in the backpropagated columns of ``G``. Conversions:

  - Linear after a Flatten: ``A``'s rows and columns reordered by the flatten order (``A[perm][:, perm]``).
  - Conv2d ``A``: BackPACK's unfolded input ``(N, I·kh·kw, S)`` gives ``Σ_{n,s} a aᵀ / N`` (positions summed
    into ``A``, divided by ``N`` only, as fnn) indexed ``(I, kh, kw)`` row-major; reordered to fnn's im2col
    index ``(kh, kw, I)`` row-major (``reshape(I,kh,kw,I,kh,kw).transpose(1,2,0,4,5,3)``).
  - Conv2d ``G`` does NOT convert: BackPACK (1.7.1, ``HBPConvNd._factor_from_sqrt``) sums each column over the
    output positions before the outer product, ``G = Σ_{n,c} (Σ_s d)(Σ_s d)ᵀ`` (the exact GGN block of the bias;
    its docstring calls this ``|T|·Γ`` of KFC), for the weight and the bias alike; fnn gives that block for the
    bias but, for the weight, sums the outer products, ``G = Σ_{n,s,c} d dᵀ`` (KFC's ``|T|·Γ``, the
    cross-position terms dropped). BackPACK's is stored as is;
    beside it ``kflr_positions/<layer>/G`` holds fnn's convention computed here with PyTorch autograd alone
    (:func:`_position_sums`: the columns of ``S_n = (diag √p − p √pᵀ)/√N`` backpropagated to the convolution's
    output). The test checks BackPACK's conv ``G`` against fnn's exact bias block (``ggn_vector_product``) and
    fnn's ``kflr`` conv weight ``G`` against ``kflr_positions`` (and fnn's bias ``G`` against BackPACK's).

KFAC is Monte-Carlo (its own random targets), so it has no sample-by-sample reference here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "backpack_first_order.npz"
SECOND_ORDER_FIXTURE = ROOT / "tests" / "fixtures" / "backpack_second_order.npz"
QUANTITIES = ("batch_l2_grad", "sum_grad_squared", "variance")
SECOND_ORDER = ("diag_ggn", "kflr")
BATCH = 8
FIXTURES = {"first_order": FIXTURE, "second_order": SECOND_ORDER_FIXTURE}

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


def _model(name: str):
    """The case as an extended PyTorch model: ``(modules, model, lossfn, x, y, converters)``, converters one
    ``(kind, perm)`` per fnn layer (``perm``: the flatten order for the Linear after a Flatten, else None)."""
    import torch
    from backpack import extend

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
    return modules, model, lossfn, xt, torch.tensor(y), converters


def _param_modules(modules, converters):
    """``(kind, perm, module)`` per fnn layer, module None for a Flatten."""
    import torch

    it = iter(m for m in modules if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    return [(kind, perm, None if kind == "flatten" else next(it)) for kind, perm in converters]


def _weight_to_fnn(w, kind, perm):
    """A weight-shaped array from PyTorch's layout to fnn's (``w (in, out)``, HWIO; flatten rows reordered)."""
    w = w.T if kind == "dense" else w.transpose(2, 3, 1, 0)
    return w[perm] if perm is not None else w


def reference(name: str) -> dict:
    """BackPACK's quantities for the case, in fnn's layouts: ``{quantity: [per-layer dicts]}``."""
    from backpack import backpack
    from backpack.extensions import BatchL2Grad, SumGradSquared, Variance

    modules, model, lossfn, xt, yt, converters = _model(name)
    with backpack(BatchL2Grad(), SumGradSquared(), Variance()):
        lossfn(model(xt), yt).backward()
    out = {q: [] for q in QUANTITIES}
    for kind, perm, m in _param_modules(modules, converters):
        if m is None:
            for q in QUANTITIES:
                out[q].append({})
            continue
        for q, attr in zip(QUANTITIES, ("batch_l2", "sum_grad_squared", "variance"), strict=True):
            w, b = getattr(m.weight, attr).numpy(), getattr(m.bias, attr).numpy()
            if q != "batch_l2_grad":
                w = _weight_to_fnn(w, kind, perm)
            out[q].append({"w": w, "b": b})
    return out


def _kron_a_to_fnn(a, kind, perm, module):
    """BackPACK's input factor ``A`` (PyTorch's input index: ``in`` for Linear, ``(I, kh, kw)`` row-major for
    Conv2d) in fnn's index (``in`` with the flatten rows reordered; ``(kh, kw, I)`` row-major)."""
    if kind == "dense":
        return a[np.ix_(perm, perm)] if perm is not None else a
    c, (kh, kw) = module.in_channels, module.kernel_size
    return a.reshape(c, kh, kw, c, kh, kw).transpose(1, 2, 0, 4, 5, 3).reshape(kh * kw * c, kh * kw * c)


def second_order_reference(name: str) -> dict:
    """BackPACK's ``DiagGGNExact`` and ``KFLR`` for the case, in fnn's layouts: ``{"diag_ggn": [per-layer
    {"w", "b"}], "kflr": [per-layer {"w": {"A", "G"}, "b": {"G"}}]}`` (``{}`` for a Flatten). Conv2d's ``G``
    is BackPACK's as computed (the conv bias's GGN block, module docstring), not fnn's convention."""
    from backpack import backpack
    from backpack.extensions import KFLR, DiagGGNExact

    out = {q: [] for q in SECOND_ORDER}
    out["kflr_positions"] = _position_sums(name)
    for ext, attr in ((DiagGGNExact, "diag_ggn_exact"), (KFLR, "kflr")):
        modules, model, lossfn, xt, yt, converters = _model(name)
        with backpack(ext()):
            lossfn(model(xt), yt).backward()
        q = attr.removesuffix("_exact")
        for kind, perm, m in _param_modules(modules, converters):
            if m is None:
                out[q].append({})
            elif q == "diag_ggn":
                out[q].append({"w": _weight_to_fnn(m.weight.diag_ggn_exact.numpy(), kind, perm),
                               "b": m.bias.diag_ggn_exact.numpy()})
            else:
                (g, a), (gb,) = m.weight.kflr, m.bias.kflr
                out[q].append({"w": {"A": _kron_a_to_fnn(a.numpy(), kind, perm, m), "G": g.numpy()},
                               "b": {"G": gb.numpy()}})
    return out


def _position_sums(name: str) -> list:
    """fnn's (KFC's) output factor of every Conv2d, ``G = Σ_{n,s,c} d dᵀ`` with ``d`` the columns of the loss
    Hessian's symmetric factor ``S_n = (diag √p − p √pᵀ)/√N`` (cross-entropy on logits, mean) backpropagated
    to the convolution's output by PyTorch's autograd (no BackPACK extension): ``[{"G": (F, F)}]`` for a
    Conv2d, ``{}`` for every other layer."""
    import torch

    modules, model, _, xt, _, converters = _model(name)
    layers = _param_modules(modules, converters)
    if not any(isinstance(m, torch.nn.Conv2d) for _, _, m in layers):
        return [{} for _ in layers]
    assert CASES[name][2] == "ce", "the position sums are written for cross-entropy"
    outputs = {}
    for _, _, m in layers:
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, o: outputs.__setitem__(mod, o))
    logits = model(xt)
    p = torch.softmax(logits, dim=1).detach()
    sq = p.sqrt()
    factor = (torch.diag_embed(sq) - p[:, :, None] * sq[:, None, :]) / np.sqrt(p.shape[0])  # (N, C, columns)
    convs = [m for _, _, m in layers if isinstance(m, torch.nn.Conv2d)]
    g = {m: 0 for m in convs}
    for c in range(p.shape[1]):
        ds = torch.autograd.grad(logits, [outputs[m] for m in convs], factor[:, :, c], retain_graph=True)
        for m, d in zip(convs, ds, strict=True):
            g[m] = g[m] + torch.einsum("nfhw,nghw->fg", d, d)
    return [{"G": g[m].numpy()} if isinstance(m, torch.nn.Conv2d) else {} for _, _, m in layers]


def _flat(tree, prefix: str, arrays: dict) -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            _flat(v, f"{prefix}/{k}", arrays)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            _flat(v, f"{prefix}/{i}", arrays)
    else:
        arrays[prefix] = tree


def main(argv: list[str]) -> int:
    from importlib.metadata import version

    which = argv or ["first_order", "second_order"]
    for kind in which:
        if kind not in FIXTURES:
            print(f"usage: backpack_reference.py [{' | '.join(FIXTURES)}] ... (got {kind!r})", file=sys.stderr)
            return 2
    for kind in which:
        path, fn = FIXTURES[kind], reference if kind == "first_order" else second_order_reference
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name in CASES:
            _flat(fn(name), name, arrays)
        np.savez_compressed(path, **arrays)
        print(f"wrote {len(arrays)} arrays to {path.relative_to(ROOT)} (backpack-for-pytorch "
              f"{version('backpack-for-pytorch')}, torch {version('torch')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
