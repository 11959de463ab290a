"""fnn.curvature's second-order quantities against BackPACK's ``DiagGGNExact`` and ``KFLR`` on the cases of
``scripts/backpack_reference.py`` (the first-order oracle's nets, weights and data): the values stored in
``tests/fixtures/backpack_second_order.npz`` (CI, no PyTorch) and, where ``backpack-for-pytorch`` is installed,
BackPACK run live. Float64, relative 1e-10.

* ``diag_ggn`` (exact) equals ``DiagGGNExact`` on every leaf.
* ``kflr``: Linear weights' ``A`` and ``G`` and every bias's ``G`` equal BackPACK's; Conv2d's ``A`` equals
  BackPACK's (index ``(I, kh, kw)`` reordered to fnn's ``(kh, kw, I)`` by the script).
* A Conv2d weight's ``G`` follows two conventions: BackPACK sums the backpropagated columns over the output
  positions before the outer product (``Σ_{n,c} (Σ_s d)(Σ_s d)ᵀ``, the exact GGN block of the bias, which is
  also what both give for the bias), fnn sums the outer products (``Σ_{n,s,c} d dᵀ``, KFC's ``|T|·Γ``).
  BackPACK's is checked against the bias block from ``fnn.curvature.ggn_vector_product``; fnn's weight ``G``
  against the script's PyTorch-autograd position sums.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_curvature import FAST_COMPILE, _backpack_net

import fnn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import backpack_reference  # noqa: E402

RTOL = 1e-10
CASES = backpack_reference.CASES


def _conv_layers(name):
    return [l for l, layer in enumerate(CASES[name][0]) if layer[0] == "conv"]


def _bias_blocks(net, params, x, y, loss, layer):
    """The exact GGN block of layer ``layer``'s bias, one ``ggn_vector_product`` per unit vector."""
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    f = params[layer]["b"].shape[0]
    columns = []
    for j in range(f):
        v = [dict(p) for p in zero]
        v[layer]["b"] = v[layer]["b"].at[j].set(1.0)
        columns.append(fnn.curvature.ggn_vector_product(net, params, x, y, loss, v)[layer]["b"])
    return jnp.stack(columns, axis=1)


def _fnn(names):
    """fnn on every case in one compiled program: ``{name: (diag_ggn, kflr, {conv layer: bias GGN block})}``."""
    nets = {name: _backpack_net(name) for name in names}
    arrays = {name: case[1:4] for name, case in nets.items()}

    def run(a):
        out = {}
        for name, (params, x, y) in a.items():
            net, loss = nets[name][0], nets[name][4]
            out[name] = (fnn.curvature.diag_ggn(net, params, x, y, loss), fnn.curvature.kflr(net, params, x, y, loss),
                         {str(l): _bias_blocks(net, params, x, y, loss, l) for l in _conv_layers(name)})
        return out

    return jax.jit(run).lower(arrays).compile(FAST_COMPILE)(arrays)


def _close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == np.float64, f"{what}: {got.shape} {got.dtype} vs {want.shape}"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-14 * np.max(np.abs(want)), err_msg=what)


def _compare(refs: dict):
    results = _fnn(list(refs))
    for name, ref in refs.items():
        diag, kflr, blocks = results[name]
        for l, layer in enumerate(CASES[name][0]):
            if layer[0] == "flatten":
                assert diag[l] == {} and kflr[l] == {} and ref["diag_ggn"][l] == {}, f"{name} layer {l}"
                continue
            assert sorted(diag[l]) == sorted(ref["diag_ggn"][l]) == ["b", "w"], f"{name} layer {l}"
            for leaf in ("w", "b"):
                _close(diag[l][leaf], ref["diag_ggn"][l][leaf], f"{name} diag_ggn {l}.{leaf}")
            assert sorted(kflr[l]["w"]) == ["A", "G"] and sorted(kflr[l]["b"]) == ["G"], f"{name} kflr layer {l}"
            _close(kflr[l]["w"]["A"], ref["kflr"][l]["w"]["A"], f"{name} kflr {l}.w A")
            if layer[0] == "dense":
                _close(kflr[l]["w"]["G"], ref["kflr"][l]["w"]["G"], f"{name} kflr {l}.w G")
                _close(kflr[l]["b"]["G"], ref["kflr"][l]["b"]["G"], f"{name} kflr {l}.b G")
            else:  # the bias: BackPACK's and fnn's G are its exact GGN block; the weight: two conventions
                _close(kflr[l]["b"]["G"], ref["kflr"][l]["b"]["G"], f"{name} kflr {l}.b G")
                for leaf in ("w", "b"):
                    _close(blocks[str(l)], ref["kflr"][l][leaf]["G"], f"{name} BackPACK's kflr {l}.{leaf} G")
                _close(kflr[l]["w"]["G"], ref["kflr_positions"][l]["G"], f"{name} fnn's kflr {l}.w G")


def _stored():
    stored = np.load(backpack_reference.SECOND_ORDER_FIXTURE)
    refs = {}
    for name, (layers, _, _) in CASES.items():
        ref = {"diag_ggn": [], "kflr": [], "kflr_positions": []}
        for l, layer in enumerate(layers):
            if layer[0] == "flatten":
                for q in ref:
                    ref[q].append({})
                continue
            ref["diag_ggn"].append({leaf: stored[f"{name}/diag_ggn/{l}/{leaf}"] for leaf in ("w", "b")})
            ref["kflr"].append({"w": {f: stored[f"{name}/kflr/{l}/w/{f}"] for f in ("A", "G")},
                                "b": {"G": stored[f"{name}/kflr/{l}/b/G"]}})
            ref["kflr_positions"].append({"G": stored[f"{name}/kflr_positions/{l}/G"]} if layer[0] == "conv" else {})
        refs[name] = ref
    return refs


def test_equals_backpack_second_order_stored(x64):
    _compare(_stored())


def test_equals_backpack_second_order_live(x64):
    pytest.importorskip("backpack", reason="backpack-for-pytorch is not installed")
    live = {name: backpack_reference.second_order_reference(name) for name in CASES}
    stored = _stored()
    for name in CASES:  # the fixture is what this BackPACK computes
        for q in stored[name]:
            jax.tree_util.tree_map(lambda a, b, n=name, q=q: _close(a, b, f"{n} {q}: fixture vs live"), stored[name][q],
                                   live[name][q])
    _compare(live)
