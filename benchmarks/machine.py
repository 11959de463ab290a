"""The machine under the benchmark: GEMM roofline, CPU flags, OpenBLAS kernels, memory, load and versions.

NumPy only at import time (JAX, torch and threadpoolctl are imported where they are used), so the NumPy
subprocess of :mod:`benchmarks.peers` can use the memory and OpenBLAS helpers without loading JAX.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time

import numpy as np

__all__ = [
    "AVX512_CORETYPES",
    "Gemm",
    "cpu_has_avx512",
    "environment",
    "load_average",
    "memory_mb",
    "openblas_coretype_detected",
    "reset_peak_memory",
    "torch_available",
]

#: OpenBLAS kernel families that need AVX-512 (NumPy dies of SIGILL with them on a CPU without it).
AVX512_CORETYPES = ("skylakex", "cooperlake", "sapphirerapids")


# --- memory ---------------------------------------------------------------------------------------------

def memory_mb() -> tuple[float, float]:
    """``(current RSS, peak RSS)`` of this process in MiB (Linux ``/proc``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return float("nan"), peak


def reset_peak_memory() -> None:
    """Reset the peak-RSS mark (Linux ≥ 4.0: writing 5 to clear_refs), so a row's peak is its own epoch's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# --- GEMM roofline --------------------------------------------------------------------------------------

class Gemm:
    """Float32 ``(s, s) @ (s, s)`` in every available library; :meth:`measure` returns the fastest, in FLOP/s."""

    def __init__(self, size: int, torch_ok: bool):
        import jax
        import jax.numpy as jnp

        rng = np.random.default_rng(1)
        a = rng.random((size, size), dtype=np.float32)
        b = rng.random((size, size), dtype=np.float32)
        self.flops = 2.0 * size**3
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        dot = jax.jit(jnp.dot)
        self.fns = {"XLA": lambda: dot(ja, jb).block_until_ready(), "NumPy": lambda: a @ b}
        if torch_ok:
            import torch

            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            self.fns["PyTorch"] = lambda: torch.mm(ta, tb)
        self.samples: dict[str, list[float]] = {k: [] for k in self.fns}
        for fn in self.fns.values():
            fn()

    def measure(self) -> float:
        """Time each library once, on every core; return this round's best rate."""
        best = 0.0
        for name, fn in self.fns.items():
            if name == "PyTorch":
                import torch

                torch.set_num_threads(os.cpu_count() or 1)
                fn()  # the pool may have been resized by the PyTorch row
            t0 = time.perf_counter()
            fn()
            rate = self.flops / (time.perf_counter() - t0)
            self.samples[name].append(rate)
            best = max(best, rate)
        return best

    def medians(self) -> dict[str, float]:
        return {k: float(np.median(v)) for k, v in self.samples.items() if v}


# --- CPU, OpenBLAS, optional libraries ------------------------------------------------------------------

def cpu_has_avx512() -> bool | None:
    """Whether ``/proc/cpuinfo`` lists ``avx512f`` (None where there is no ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return None


def openblas_coretype_detected() -> str:
    """The OpenBLAS kernel family NumPy uses here (needs threadpoolctl; ``"unknown"`` without it)."""
    try:
        import threadpoolctl

        for info in threadpoolctl.threadpool_info():
            if info.get("internal_api") == "openblas":
                return str(info.get("architecture", "unknown"))
    except Exception:  # noqa: BLE001 - optional diagnostics only
        pass
    return "unknown"


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def environment() -> dict:
    """Versions and machine, for the report."""
    import jax
    import optax

    import fnn

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"python": platform.python_version(), "fnn": fnn.__version__, "jax": jax.__version__,
           "jaxlib": importlib.metadata.version("jaxlib"),
           "numpy": np.__version__, "optax": optax.__version__, "cpu": cpu, "cores": os.cpu_count(),
           "avx512": cpu_has_avx512(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
           "openblas_kernels": openblas_coretype_detected(), "platform": platform.platform(),
           "load_average": load_average()}
    if torch_available():
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env
