#!/usr/bin/env python3
"""Side-by-side training benchmark (the same as ``fnn bench``): see fnn/bench.py and BENCHMARKS.md.

    python scripts/bench.py                       # the full table (15–20 minutes on 2 busy cores)
    python scripts/bench.py --quick               # a smoke run in seconds
    python scripts/bench.py --openblas-coretype Haswell   # this process's NumPy with that OpenBLAS kernel

OpenBLAS reads OPENBLAS_CORETYPE once, when NumPy loads, so ``--openblas-coretype`` is put into the
environment here, before anything imports NumPy.
"""

import os
import sys


def _coretype_from_argv(argv):
    for i, arg in enumerate(argv):
        if arg == "--openblas-coretype" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--openblas-coretype="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    coretype = _coretype_from_argv(sys.argv[1:])
    if coretype:
        cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
        if coretype.lower() in ("skylakex", "cooperlake", "sapphirerapids") and cpuinfo and " avx512f" not in cpuinfo:
            pass  # fnn.bench explains and falls back: NumPy would die of SIGILL with AVX-512 kernels
        else:
            os.environ["OPENBLAS_CORETYPE"] = coretype  # before NumPy loads
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from fnn.bench import main

    sys.exit(main())
