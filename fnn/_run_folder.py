"""The run folder of ``fnn train``: config.json's settings and rules, the lock, the training data's fingerprint.

**config.json** holds every setting (:data:`TRAIN_DEFAULTS`'s keys) and the records :data:`CONFIG_RECORDS`;
:func:`read_config` checks a resumed run's file with the command line's rules (:func:`check_config`) and
names the file and the key of anything wrong: invalid JSON, not an object, an unknown key, a bad value.

**The lock** is ``DIR/train.lock``, created atomically (``os.open(O_CREAT | O_EXCL)``), holding the pid, the host
and the start time of the run, and ``flock``-ed for as long as the run lasts. A second ``fnn train`` on the same
folder finds the file, cannot take the ``flock`` and refuses (exit 2) naming the folder and the holder's pid
and host. The kernel drops a ``flock`` when its process dies, so a lock file left by a killed run (``kill -9``,
a power cut: its pid is not alive any more) is *stale*: the next run takes it over with a warning naming the
dead pid, so a killed run resumes without manual clean-up. (Without ``flock``, on Windows or a file system that
lacks it, a lock is stale when its pid is not alive on this host.) The lock is released (the file removed) on
every way out: success, divergence, an error, Ctrl-C.

**The data fingerprint** is the shapes and dtypes of the training arrays and a SHA-256 over their dtypes,
shapes and bytes, recorded in ``config.json`` under ``"data"``; ``fnn train --resume`` refuses to continue on
data with another fingerprint unless ``--allow-other-data`` is given.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import hashlib
import json
import math
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from fnn._checkpointer import CHECKPOINT_NAME
from fnn._cli import UsageError, one_line, user_input
from fnn._files import check_regular_file, open_regular

try:
    import fcntl
except ImportError:  # Windows: staleness from the pid alone
    fcntl = None

__all__ = ["CONFIG_RECORDS", "LOCK_NAME", "RESUME_MAY_CHANGE", "SCHEDULES", "TRAIN_DEFAULTS", "check_config",
           "check_fingerprint", "check_no_run_yet", "data_fingerprint", "describe_fingerprint", "is_fingerprint",
           "locked", "make_folder", "read_config"]

LOCK_NAME = "train.lock"

# --- config.json ------------------------------------------------------------------------------------------

#: ``fnn train`` defaults: 64-128-10 relu/softmax, plain SGD at its default rate, batch 32, 30 epochs,
#: standardized inputs, no dropout, no penalty. ``lr`` None: the optimizer's default
#: (``fnn.optim.DEFAULT_LEARNING_RATES``). A config.json from before ``dropout``/``l2``/``l1`` existed reads them
#: as 0, which is how it trained.
TRAIN_DEFAULTS = {
    "model": "mlp",  # "cnn": fnn.cli_train.make_cnn's convolutional net (images, NHWC)
    "dataset": "digits",
    "data_dir": None,
    "hidden": [128],
    "activation": "relu",
    "output": None,  # None: the loss's natural output (fnn.losses.natural_output)
    "loss": "sparse_categorical_cross_entropy",
    "epochs": 30,
    "batch_size": 32,
    "lr": None,
    "optimizer": "sgd",
    "grads": "manual",
    "seed": 0,
    "standardize": True,
    "strict": False,
    "dropout": 0.0,  # 0: fnn.mlp; > 0: an fnn.serial with Dropout(rate) after every hidden Dense layer
    "l2": 0.0,  # 0: no penalty; else fnn.penalties.l2(lam), (lam/2)·Σw² over the weights
    "l1": 0.0,  # 0: no penalty; else fnn.penalties.l1(lam), lam·Σ|w| over the weights
    "norm": None,  # "layer"/"batch": a LayerNorm/BatchNorm before every hidden activation (fnn._cli_models)
    "data_file": None,  # --data: a CSV/NPZ file or an IDX folder (fnn.cli_data), instead of --dataset
    "target": None,  # --target: the CSV's target column (None: the last one)
    "features": None,  # --features: the CSV's feature columns (None: every other one)
    "task": None,  # --task classification|regression (None: from the target, fnn.cli_data)
    "test_fraction": 0.2,  # the test split of a file without a test set
    "val_fraction": 0.0,  # 0: no validation split; else the part of the training data held out
    "patience": None,  # early stopping on val_loss after that many epochs without improvement (None: off)
    "schedule": "constant",  # constant|cosine|step (fnn.cli_train.make_schedule)
    "schedule_epochs": None,  # the epochs the schedule spans: the first run's --epochs (recorded)
}
#: Options that ``--resume`` may change; every other setting comes from the run's config.json.
RESUME_MAY_CHANGE = ("epochs", "data_dir")
#: ``--schedule``'s choices.
SCHEDULES = ("constant", "cosine", "step")
#: What config.json holds besides the settings: the network's description, the fingerprint of the training
#: data (and of earlier data, after ``--allow-other-data``) and the fnn version that wrote it.
CONFIG_RECORDS = ("network", "data", "earlier_data", "fnn_version")


def check_config(config: dict, where: str | None = None) -> dict:
    """``config`` when every setting has the right type and range, else a UsageError naming the entry (and
    ``where`` it comes from, e.g. a config.json; None: the command-line options).

    argparse checks most options already; this catches the rest (a 64-bit seed) and an edited config.json.
    """
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_real(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    expected = {
        "model": ("'mlp' or 'cnn'", config["model"] in ("mlp", "cnn")),
        "dataset": ("a string", isinstance(config["dataset"], str)),
        "data_dir": ("a folder name or null", config["data_dir"] is None or isinstance(config["data_dir"], str)),
        "hidden": ("a list of positive integers",
                   isinstance(config["hidden"], list) and all(is_int(w) and w > 0 for w in config["hidden"])),
        "activation": ("a string", isinstance(config["activation"], str)),
        "output": ("a string or null", config["output"] is None or isinstance(config["output"], str)),
        "loss": ("a string", isinstance(config["loss"], str)),
        "epochs": ("a positive integer", is_int(config["epochs"]) and config["epochs"] > 0),
        "batch_size": ("a positive integer", is_int(config["batch_size"]) and config["batch_size"] > 0),
        "lr": ("a positive number (or null: the optimizer's default)", config["lr"] is None or (
               isinstance(config["lr"], (int, float)) and not isinstance(config["lr"], bool)
               and config["lr"] > 0 and math.isfinite(config["lr"]))),
        "optimizer": ("a string", isinstance(config["optimizer"], str)),
        "grads": ("'manual' or 'autodiff'", config["grads"] in ("manual", "autodiff")),
        "seed": ("an integer of at most 63 bits", is_int(config["seed"]) and abs(config["seed"]) < 2**63),
        "standardize": ("true or false", isinstance(config["standardize"], bool)),
        "strict": ("true or false", isinstance(config["strict"], bool)),
        "dropout": ("a rate in [0, 1) (the fraction of hidden units dropped; 0: no dropout)",
                    is_real(config["dropout"]) and 0 <= config["dropout"] < 1),
        "l2": ("a finite number >= 0 (0: no L2 penalty)", is_real(config["l2"]) and config["l2"] >= 0),
        "l1": ("a finite number >= 0 (0: no L1 penalty)", is_real(config["l1"]) and config["l1"] >= 0),
        "norm": ("'layer', 'batch' or null", config["norm"] in (None, "layer", "batch")),
        "data_file": ("a file or folder name or null", config["data_file"] is None or isinstance(config["data_file"],
                                                                                                  str)),
        "target": ("a column name or null", config["target"] is None or isinstance(config["target"], str)),
        "features": ("a list of column names or null", config["features"] is None or (
                     isinstance(config["features"], list) and config["features"]
                     and all(isinstance(f, str) and f for f in config["features"]))),
        "task": ("'classification', 'regression' or null", config["task"] in (None, "classification", "regression")),
        "test_fraction": ("a fraction in (0, 1)", is_real(config["test_fraction"]) and 0 < config["test_fraction"] < 1),
        "val_fraction": ("a fraction in [0, 1) (0: no validation set)",
                         is_real(config["val_fraction"]) and 0 <= config["val_fraction"] < 1),
        "patience": ("a positive integer or null", config["patience"] is None or (
                     is_int(config["patience"]) and config["patience"] > 0)),
        "schedule": (f"one of {', '.join(SCHEDULES)}", config["schedule"] in SCHEDULES),
        "schedule_epochs": ("a positive integer or null", config["schedule_epochs"] is None or (
                            is_int(config["schedule_epochs"]) and config["schedule_epochs"] > 0)),
    }
    for key, (kind, ok) in expected.items():
        if not ok:
            name = f"--{key.replace('_', '-')}" if where is None else f"{where}: {key}"
            raise UsageError(f"{name} must be {kind}, got {config[key]!r}.")
    return config


def read_config(out: Path) -> tuple[dict, dict]:
    """A resumed run's settings and records (network, data fingerprint, ...) from ``out/config.json``, every
    entry checked with the command line's rules; a UsageError naming the file and the key otherwise."""
    path = out / "config.json"
    try:
        with open_regular(path, "a run's config.json") as f:
            text = f.read()
    except FileNotFoundError:
        if os.path.islink(path):  # dangling: an OS error naming the link's target
            raise
        raise UsageError(f"--resume {out}: {path} not found; expected a run folder written by 'fnn train'.") from None
    except ValueError as e:  # a FIFO or device
        raise UsageError(f"--resume {out}: {one_line(e)}") from e
    try:
        saved = json.loads(text)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise UsageError(f"--resume {out}: {path} is not valid JSON ({one_line(e)}).") from e
    if not isinstance(saved, dict):
        raise UsageError(f"--resume {out}: {path} must hold a JSON object of settings, got "
                         f"{'null' if saved is None else type(saved).__name__}.")
    known = [*TRAIN_DEFAULTS, *CONFIG_RECORDS]
    for key in saved:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise UsageError(f"{path}: unknown setting {key!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                             f"'fnn train' writes only {', '.join(known)}.")
    if "data" in saved and not is_fingerprint(saved["data"]):
        raise UsageError(f"{path}: data must be the training data's fingerprint that 'fnn train' writes (x and y "
                         f"shapes and dtypes, sha256), got {one_line(repr(saved['data']))[:80]}.")
    earlier = saved.get("earlier_data", [])
    if not (isinstance(earlier, list) and all(is_fingerprint(fp) for fp in earlier)):
        raise UsageError(f"{path}: earlier_data must be a list of data fingerprints, "
                         f"got {one_line(repr(earlier))[:80]}.")
    if not isinstance(saved.get("network", {}), dict):
        raise UsageError(f"{path}: network must be the network's description (a JSON object), "
                         f"got {saved['network']!r}.")
    config = check_config({k: saved.get(k, v) for k, v in TRAIN_DEFAULTS.items()}, str(path))
    return config, {k: saved[k] for k in CONFIG_RECORDS if k in saved}


def check_no_run_yet(out: Path) -> None:
    """A new run's folder must not hold a checkpoint already (checked again once the folder is locked)."""
    checkpoint = out / CHECKPOINT_NAME
    if os.path.lexists(checkpoint):
        user_input("--out", check_regular_file, checkpoint, "a checkpoint")  # a directory: 74; a FIFO: 2
        raise UsageError(f"{out} already holds a run ({CHECKPOINT_NAME}); continue it with --resume {out} or "
                         f"choose another --out.")


def make_folder(out: Path, *, unique: bool) -> Path:
    """Create the run folder; the default ``runs/<dataset>-<time>`` gets a suffix if another run took it."""
    if not unique:
        out.mkdir(parents=True, exist_ok=True)
        return out
    for suffix in range(1, 1000):
        candidate = out if suffix == 1 else out.with_name(f"{out.name}-{suffix}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise UsageError(f"could not create a new run folder beside {out}; pass --out DIR.")


# --- the lock ------------------------------------------------------------------------------------------------

def _holder(fd: int) -> dict:
    """The lock file's ``{"pid", "host", "started"}`` ({} when it cannot be parsed: a run that is still writing it)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096) or b"{}")
    except (ValueError, OSError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _who(holder: dict) -> str:
    if not holder:
        return "an unknown process (the lock file is empty or unreadable)"
    return f"pid {holder.get('pid')!r} on {holder.get('host')!r}, started {holder.get('started', '?')}"


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True


def _try_lock(fd: int, holder: dict) -> bool:
    """Take the ``flock`` (non-blocking); without one (Windows, a file system without ``flock``), "held" means
    the recorded pid lives on this host."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # ENOLCK, EOPNOTSUPP: judge by the pid
            pass
    return not (holder.get("host") == socket.gethostname() and _pid_alive(holder.get("pid")))


def _open_existing(path: Path) -> int | None:
    """A descriptor of the lock file already at ``path`` (None: it vanished meanwhile); refuses anything but a
    regular file (a FIFO there would block a plain ``open``)."""
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path} is not fnn's lock file (not a regular file); remove it to train in this folder.")
    return fd


def _same_file(fd: int, path: Path) -> bool:
    with contextlib.suppress(OSError):
        a, b = os.fstat(fd), os.stat(path)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    return False


def _acquire(folder: Path, warn: Callable[[str], None]) -> int:
    path = folder / LOCK_NAME
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "started": datetime.datetime.now().isoformat(timespec="seconds")}).encode()
    for _ in range(10):  # a retry happens only when the file changes under us (a run releasing or taking it)
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644), True
        except FileExistsError:
            fd, created = _open_existing(path), False
            if fd is None:
                continue
        holder = {} if created else _holder(fd)
        if not _try_lock(fd, holder):
            here = _same_file(fd, path)
            os.close(fd)
            if here and not created:
                raise UsageError(f"run folder {folder} is in use by another fnn train ({_who(holder)}; lock file "
                                 f"{path}). Wait for that run to finish, or choose another --out.")
            continue  # released meanwhile, or another run took our new file first: look again
        if not _same_file(fd, path):  # locked a file that was removed or replaced meanwhile
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, me)
        if not created:
            gone = "is not running any more" if holder else "left it unreadable"
            warn(f"took over the stale lock {path} of {_who(holder)}: that run {gone}.")
        return fd
    raise UsageError(f"could not lock run folder {folder}: {path} keeps changing; is another fnn train starting?")


@contextlib.contextmanager
def locked(folder: Path, warn: Callable[[str], None]) -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block; it is released (the file removed) on every way out.

    Raises:
      UsageError: another live run holds it (the message names the folder, the pid and the host).
      OSError: the lock file cannot be created (a read-only folder), naming its path.
    """
    fd = _acquire(folder, warn)
    path = folder / LOCK_NAME
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if _same_file(fd, path):  # remove it while still holding the flock, then let go
                os.unlink(path)
        os.close(fd)


# --- the data fingerprint ----------------------------------------------------------------------------------

def data_fingerprint(x: np.ndarray, y: np.ndarray) -> dict:
    """``{"x": {"shape", "dtype"}, "y": {...}, "sha256"}``: SHA-256 over both arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    info = {}
    for name, array in (("x", x), ("y", y)):
        array = np.ascontiguousarray(array)
        info[name] = {"shape": list(array.shape), "dtype": array.dtype.name}
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.data)
    return {**info, "sha256": digest.hexdigest()}


def describe_fingerprint(fp: dict) -> str:
    return (f"x {tuple(fp['x']['shape'])} {fp['x']['dtype']}, y {tuple(fp['y']['shape'])} {fp['y']['dtype']}, "
            f"sha256 {fp['sha256'][:12]}")


def is_fingerprint(value) -> bool:
    def array_info(v) -> bool:
        return (isinstance(v, dict) and isinstance(v.get("dtype"), str) and isinstance(v.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v["shape"]))

    return (isinstance(value, dict) and array_info(value.get("x")) and array_info(value.get("y"))
            and isinstance(value.get("sha256"), str) and len(value["sha256"]) == 64)


def check_fingerprint(saved, now: dict, config_path: Path, *, allow: bool) -> bool:
    """Whether the run's data changed (``saved`` is config.json's ``"data"``, None for a run from before fnn
    recorded it); a change is a UsageError naming both fingerprints unless ``allow``."""
    if saved is None or saved == now:
        return False
    if not allow:
        raise UsageError(
            f"the training data differ from the data this run was trained on ({config_path} records "
            f"{describe_fingerprint(saved)}; the data now are {describe_fingerprint(now)}). Resume on the same "
            f"--dataset and --data-dir, or pass --allow-other-data to continue on other data.")
    return True
