"""Fingerprints of the compiled training epoch, to show that a refactor compiles the same program.

Prints, for a few ``fnn.mlp`` configurations and both gradient modes, a hash of the optimised HLO of ``fit``'s
epoch with source metadata (file names, line numbers, stack frames) removed. Run it from two checkouts; equal
hashes mean XLA runs exactly the same instructions, so timing differences between them are noise.

Run:  python scripts/epoch_hlo_fingerprint.py [REPO_DIR]     (default: the repository this script is in)
"""

import hashlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1]).resolve()))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import fnn  # noqa: E402
from fnn import _program  # noqa: E402

CONFIGS = [((784, 30, 10), "sigmoid", 10), ((784, 1024, 1024, 10), "relu", 256)]


def fingerprint(sizes, hidden: str, batch_size: int, grads: str) -> str:
    net = fnn.mlp(list(sizes), hidden=hidden, output="identity")
    params = net.init(jax.random.key(0))
    x, y = jnp.zeros((6000, sizes[0]), jnp.float32), jnp.zeros((6000,), jnp.int32)
    prog = _program.program(net, "sparse_softmax_cross_entropy", grads, None, 0.1, 6000, batch_size)
    text = jax.jit(prog.epoch).lower(params, (), x, y, jax.random.key(1), prog.lr).compile().as_text()
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    lines = [re.sub(r",? ?stack_frame_id=[0-9]+", "", line) for line in text.splitlines() if " = " in line]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


if __name__ == "__main__":
    print(f"fnn from {Path(fnn.__file__).parent}")
    for sizes, hidden, batch_size in CONFIGS:
        for grads in ("manual", "autodiff"):
            print(f"{list(sizes)} {hidden} batch {batch_size} {grads}: {fingerprint(sizes, hidden, batch_size, grads)}")
