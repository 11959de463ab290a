"""fnn's benchmarks (a folder of the repository, not installed with the package): ``python benchmarks/bench.py``.

Modules: :mod:`benchmarks.bench` (the side-by-side training benchmark's entry point), :mod:`benchmarks.workload`
(configurations, data, weights, epoch orders), :mod:`benchmarks.fnn_rows` (the rows driven by ``fnn.fit``),
:mod:`benchmarks.peers` (NumPy, JAX from scratch, PyTorch), :mod:`benchmarks.machine` (GEMM roofline, CPU,
memory, versions), :mod:`benchmarks.report` (table and targets); ``bench_sweep.py`` (throughput against batch
size and width) and ``bench_devices.py`` (data-parallel overhead on forced host devices). Importing this
package loads nothing but the standard library: the NumPy subprocess of the benchmark must not load JAX.
"""
