"""Tests for fnn/parallel.py: data-parallel steps and epochs over a device mesh, one process and several.

Multi-device checks need ``XLA_FLAGS=--xla_force_host_platform_device_count`` set before JAX starts, so they
run in subprocesses (``tests/parallel_worker.py``) whose JSON the tests read:

* one process with 4 host devices: a sharded step equals the one-device step on the full batch (float64,
  relative 1e-12) for manual and autodiff grads and with optax adam, and so do fnn.curvature's quantities; a
  sharded ``fit`` equals an unsharded one (float32); an indivisible batch and too many devices are
  ``ValueError``s that say why.
* two processes on localhost (gloo CPU collectives), 2 host devices each, each feeding its half of every
  batch: the params equal one process training on the whole batch.

Both are started together, once per session, with a timeout so a hang fails instead of blocking CI. Under
pytest-xdist they are started once for all the workers: the first worker to take a lock in a directory they share
starts them and writes each one's exit status and log next to its JSON; the others wait (as long) and read the
same files, so a failed or hung run fails the tests in every worker. The one-process worker compiles as
tests/test_layers.py compiles its matrix (XLA's CPU backend at optimisation level 0, no fusion emitters: less
than half the time, nearly all of it compiling): each of its checks compares two runs in that process, compiled
alike. The two-process run keeps the default compiler: it is compared with this process.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import fnn
from fnn import parallel

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import parallel_worker as worker  # noqa: E402

TIMEOUT = 240  # seconds per subprocess (about 15 s each on an idle 2-core machine); a hang fails the test
NUM_PROCESSES = 2


#: test_layers' FAST_COMPILE compile options, as XLA flags for a whole worker process.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def _env(device_count: int, *, fast_compile: bool = False, **extra: str) -> dict:
    env = dict(os.environ)
    flags = f"--xla_force_host_platform_device_count={device_count}"
    if fast_compile:
        flags += f" {FAST_COMPILE_FLAGS}"
    env.update(XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(), JAX_PLATFORMS="cpu", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class _Run:
    """A worker subprocess this session owns: started now, waited for (with a timeout) by a thread, which then
    writes ``<out>.status.json`` (exit code or timeout, and the log's tail) next to the worker's JSON."""

    def __init__(self, mode: str, out: Path, env: dict):
        self.out = out
        self.proc = subprocess.Popen([sys.executable, str(HERE / "parallel_worker.py"), mode, str(out)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        status = {"returncode": None, "timed_out": False, "log": ""}
        try:
            try:
                log, _ = self.proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                log, _ = self.proc.communicate()
                status["timed_out"] = True
            status.update(returncode=self.proc.returncode, log=(log or "")[-4000:])
        except Exception as e:  # whatever happened, write a status: the readers must not wait for nothing
            status["log"] += f"\nwaiting on the worker raised {e!r}"
        _write_atomic(_status_path(self.out), json.dumps(status))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.thread.join()


def _status_path(out: Path) -> Path:
    return out.with_name(out.name + ".status.json")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Result:
    """A worker's JSON, read (by any xdist worker) once its owner has written the status: waits with the same
    timeout, and fails, with the log, if the worker failed or timed out, or if the owner ended without a status."""

    def __init__(self, out: Path, lock: Path):
        self.out, self.lock = out, lock
        self._result = None

    def _owner_gone(self) -> bool:
        """The owner holds ``lock`` until every status is written; a lock taken now means it has let go."""
        with open(self.lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
            return True

    def result(self) -> dict:
        if self._result is None:
            status_path = _status_path(self.out)
            deadline = time.monotonic() + TIMEOUT + 60  # the owner's own timeout, and time to write the status
            while not status_path.exists():
                if self._owner_gone() and not status_path.exists():
                    pytest.fail(f"the session that started the worker for {self.out.name} ended without its status")
                if time.monotonic() > deadline:
                    pytest.fail(f"no status for {self.out.name} after {TIMEOUT + 60} s")
                time.sleep(0.2)
            status = json.loads(status_path.read_text())
            if status["timed_out"]:
                pytest.fail(f"worker timed out after {TIMEOUT} s:\n{status['log']}")
            assert status["returncode"] == 0, f"worker failed (exit {status['returncode']}):\n{status['log']}"
            self._result = json.loads(self.out.read_text())
        return self._result


def _shared_dir(tmp_path_factory) -> Path:
    """A directory every process of this pytest session sees: under xdist the workers' base temporary
    directories are siblings in the controller's, made fresh for the session; without xdist, this one's."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "parallel-shared"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("parallel")


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Start every worker at once (they mostly wait on compilation), return ``{"single": result, "hosts":
    [results]}``. Under xdist every worker runs this fixture, and one owns the subprocesses: the first to take
    the shared lock, which it holds until its session ends, after every status is written (so a lock another
    process can take means the owner is gone). The others wait for the statuses and read the same files."""
    shared = _shared_dir(tmp_path_factory)
    lock, claim = shared / "lock", shared / "owner"
    outs = {"single": shared / "single.json", "hosts": [shared / f"host{i}.json" for i in range(NUM_PROCESSES)]}
    lock_file = open(lock, "a")  # the owner's lock lives as long as this stays open
    owned: list[_Run] = []
    try:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # the owner holds it (or one being decided, which will create the claim)
            pass
        else:
            if claim.exists():  # an owner came and went: read what it left
                fcntl.flock(lock_file, fcntl.LOCK_UN)
            else:
                claim.write_text(str(os.getpid()))
                port = _free_port()
                owned = [
                    _Run("multihost", out,
                         _env(2, FNN_COORDINATOR_ADDRESS=f"localhost:{port}", FNN_NUM_PROCESSES=str(NUM_PROCESSES),
                              FNN_PROCESS_ID=str(i)))
                    for i, out in enumerate(outs["hosts"])
                ]
                owned.append(_Run("single", outs["single"], _env(4, fast_compile=True)))
        yield {"single": _Result(outs["single"], lock), "hosts": [_Result(out, lock) for out in outs["hosts"]]}
    finally:
        # Another xdist worker may still be waiting on a run: let it finish (each has its timeout). Alone, stop.
        for run in owned:
            if os.environ.get("PYTEST_XDIST_WORKER"):
                run.thread.join()
            run.stop()
        lock_file.close()  # releases the lock


# --- one process, 4 forced host devices -----------------------------------------------------------------

@pytest.mark.parametrize("grads, devices", [("manual", "2"), ("manual", "4"), ("manual", "list"), ("autodiff", "4")])
def test_sharded_step_equals_full_batch_step_float64(runs, grads, devices):
    r = runs["single"].result()
    assert r["device_count"] == 4
    got = r[f"step_{grads}_{devices}"]
    assert got["params"] < 1e-12 and got["loss"] < 1e-12
    assert got["sharding"] == "P()"  # params come back replicated
    assert got["num_devices"] == (2 if devices == "2" else 4)


def test_sharded_optax_adam_steps_equal_full_batch_float64(runs):
    got = runs["single"].result()["step_adam_4"]
    assert got["params"] < 1e-12 and got["opt_state"] < 1e-12


@pytest.mark.parametrize("config", ["sgd", "adam_strict"])
def test_sharded_fit_equals_unsharded_fit_float32(runs, config):
    got = runs["single"].result()[f"fit_{config}"]
    assert got["dtype"] == got["dtype_in"] == "float32"
    assert got["moved"] > 1e-3  # training changed the params, so agreement means something
    assert got["params"] < 2e-6
    np.testing.assert_allclose(got["loss_4"], got["loss_1"], rtol=1e-6)
    assert got["acc_4"] == got["acc_1"]


def test_sharded_strict_fit_diverges_at_the_same_step(runs):
    one, four = runs["single"].result()["diverged"]
    assert one is not None and four is not None
    assert (four["epoch"], four["step"], four["layer"]) == (one["epoch"], one["step"], one["layer"])


@pytest.mark.parametrize("devices", [4])
def test_sharded_curvature_equals_one_device_float64(runs, devices):
    """fnn.curvature.first_order(devices=N): loss, grad, per-example norms (by row) and the psum-ed second
    moments and variance equal one device on the whole batch, with dropout and a penalty."""
    got = runs["single"].result()
    assert got["curvature_keys"] == ["batch_l2_grad", "grad", "loss", "sum_grad_squared", "variance"]
    errs = got[f"curvature_{devices}"]
    assert set(errs) == set(got["curvature_keys"]) and all(e <= 1e-12 for e in errs.values()), errs


def test_sharded_second_order_equals_one_device_float64(runs):
    """fnn.curvature's second-order quantities with devices=4 (each device's R-passes or backpropagated factors
    on its quarter, psum-ed) equal one device on the whole batch: Hessian- and GGN-vector products, the exact
    GGN diagonal, KFLR's factors and the top Hessian eigenvalue (with dropout by global row and an L2 penalty)."""
    errs = runs["single"].result()["second_order_4"]
    assert set(errs) == {"hvp", "ggnvp", "diag_ggn", "kflr", "top_eigenvalue"}
    assert all(e <= 1e-11 for e in errs.values()), errs


@pytest.mark.parametrize("grads", ["manual", "autodiff"])
def test_synchronised_batchnorm_step_equals_one_device_float64(runs, grads):
    """4 devices, each a quarter of the batch, with BatchNorm's statistics (and the backward's sums) averaged
    over the devices: the params, the running statistics and the loss of one device on the whole batch."""
    got = runs["single"].result()[f"bn_step_{grads}"]
    assert got["moved"] > 1e-3  # training mode updated the running statistics
    assert got["params"] <= 1e-12 and got["state"] <= 1e-12 and got["loss"] <= 1e-12, got


def test_synchronised_batchnorm_fit_equals_one_device_float64(runs):
    got = runs["single"].result()["bn_fit"]
    assert got["params"] <= 1e-12 and got["state"] <= 1e-12, got
    assert got["acc_1"] == got["acc_4"]  # evaluated in inference mode with the same running statistics


def test_multihost_batchnorm_equals_one_process(hosts, reference):
    assert worker.rel_err(reference["bn_params"], reference["bn_initial"]) > 1e-3
    for r in hosts:
        assert worker.rel_err(r["bn_params"], reference["bn_params"]) <= 1e-12
        assert worker.rel_err(r["bn_state"], reference["bn_state"]) <= 1e-12


@pytest.mark.parametrize("where", ["step", "fit", "curvature"])
def test_indivisible_batch_is_a_value_error_naming_both_numbers(runs, where):
    msg = runs["single"].result()[f"error_{where}_indivisible"]
    assert msg is not None and "batch size 10" in msg and "number of devices 4" in msg


def test_too_many_devices_says_how_many_exist_and_how_to_force_them(runs):
    msg = runs["single"].result()["error_too_many"]
    assert msg is not None and "devices=5" in msg and "JAX sees 4" in msg
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=5" in msg


# --- two processes on localhost, 2 host devices each ----------------------------------------------------

@pytest.fixture(scope="module")
def hosts(runs):
    return [run.result() for run in runs["hosts"]]


@pytest.fixture(scope="module")
def reference():
    """One process, one device, the whole batch: what the multi-host run must reproduce (float64)."""
    with jax.enable_x64(True):
        net, params = worker.net_and_params()
        x, y = worker.problem()
        rows = [slice(worker.STEP_BATCH * k, worker.STEP_BATCH * (k + 1)) for k in range(worker.STEPS)]
        batches = [(x[r], y[r]) for r in rows]
        step = fnn.sgd_step(net, worker.LOSS, learning_rate=0.3)
        p, losses = params, []
        for xb, yb in batches:
            p, loss = step(p, xb, yb)
            losses.append(float(loss))
        out = {"sgd_params": worker.as_lists(p), "sgd_losses": losses}
        adam = fnn.sgd_step(net, worker.LOSS, optimizer="adam", learning_rate=1e-2, grads="autodiff")
        p, s = params, fnn.make_optimizer("adam", 1e-2).init(params)
        for xb, yb in batches:
            p, s, _ = adam(p, s, xb, yb)
        out["adam_params"] = worker.as_lists(p)
        p, h = fnn.fit(net, params, (x, y), loss=worker.LOSS, epochs=2, batch_size=worker.STEP_BATCH,
                       key=jax.random.key(1), progress=False)
        out["fit_params"], out["fit_losses"] = worker.as_lists(p), h["train_loss"]
        out["initial"] = worker.as_lists(params)
        net_b, params_b = worker.bn_net_and_params()
        step = fnn.sgd_step(net_b, worker.LOSS, learning_rate=0.3)
        p, s = params_b, net_b.init_state()
        for xb, yb in batches:
            p, s, _ = step(p, s, xb, yb)
        out["bn_params"], out["bn_state"], out["bn_initial"] = (worker.as_lists(p), worker.as_lists(s),
                                                                worker.as_lists(params_b))
    return out


def test_multihost_runs_two_processes_with_two_devices_each(hosts):
    for i, r in enumerate(hosts):
        assert (r["process_index"], r["process_count"], r["device_count"], r["local_device_count"]) == (i, 2, 4, 2)
    assert [r["part"] for r in hosts] == [[0, 4], [4, 8]]  # each process fed its half of every batch


@pytest.mark.parametrize("what", ["sgd", "adam", "fit"])
def test_multihost_training_equals_one_process_on_the_whole_batch(hosts, reference, what):
    want = reference[f"{what}_params"]
    assert worker.rel_err(want, reference["initial"]) > 1e-3  # training moved the params
    for r in hosts:
        assert worker.rel_err(r[f"{what}_params"], want) < 1e-12
    if what != "adam":
        for r in hosts:
            np.testing.assert_allclose(r[f"{what}_losses"], reference[f"{what}_losses"], rtol=1e-12)


# --- in this process (one device): mesh construction and argument errors --------------------------------

def test_make_mesh_from_count_and_devices():
    mesh = parallel.make_mesh(1)
    assert mesh.axis_names == (parallel.DATA_AXIS,) and mesh.size == 1
    assert parallel.make_mesh(jax.devices()[:1]).devices.tolist() == jax.devices()[:1]
    assert parallel.make_mesh(mesh) is mesh


def test_make_mesh_errors():
    n = jax.device_count()
    with pytest.raises(ValueError, match=rf"JAX sees {n} .*xla_force_host_platform_device_count={n + 1}"):
        parallel.make_mesh(n + 1)
    with pytest.raises(ValueError, match="at least 1"):
        parallel.make_mesh(0)
    with pytest.raises(ValueError, match="empty"):
        parallel.make_mesh([])
    with pytest.raises(ValueError, match="more than once"):
        parallel.make_mesh([jax.devices()[0]] * 2)
    with pytest.raises(TypeError):
        parallel.make_mesh("4")
    with pytest.raises(TypeError):
        parallel.make_mesh(True)
    with pytest.raises(TypeError, match="jax.Device"):
        parallel.make_mesh([0])
    with pytest.raises(ValueError, match="single axis"):
        parallel.make_mesh(jax.make_mesh((1,), ("batch",)))
    with pytest.raises(ValueError, match=rf"more devices than exist: JAX sees {n}"):
        fnn.sgd_step(fnn.mlp([2, 1]), "mse", devices=n + 1)


def test_check_batch_size_and_local_slice():
    mesh = parallel.make_mesh(1)
    assert parallel.check_batch_size(7, mesh) == 7
    assert parallel.local_batch_slice(mesh, 12) == slice(0, 12)


def test_one_device_mesh_matches_the_plain_step():
    with jax.enable_x64(True):
        net, params = worker.net_and_params()
        x, y = worker.problem(16)
        ref_p, ref_l = fnn.sgd_step(net, worker.LOSS, learning_rate=0.3)(params, x, y)
        p, l = fnn.sgd_step(net, worker.LOSS, learning_rate=0.3, devices=1)(params, x, y)
        assert params[0]["w"].dtype == np.float64
        assert worker.rel_err(p, ref_p) < 1e-14 and abs(float(l) - float(ref_l)) < 1e-14
        with pytest.raises(ValueError, match="same number of examples"):
            fnn.sgd_step(net, worker.LOSS, devices=1)(params, x, y[:5])


def test_initialize_distributed_rejects_a_non_integer_env(monkeypatch):
    monkeypatch.setenv("FNN_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="FNN_NUM_PROCESSES must be an integer, got 'two'"):
        parallel.initialize_distributed("localhost:1234")
