"""``fnn evaluate``, ``fnn predict`` and ``fnn export``: use the run folder of an ``fnn train`` run.

Each loads the run with :func:`fnn.run.load_run` (the params of ``best.safetensors`` when the run stopped early,
else ``checkpoint.safetensors``'s) and transforms raw inputs with the run's ``preprocessing.json`` exactly as
training did (the standardization fitted on the training split), so every file given to them holds *raw* values.

``fnn evaluate RUN [--data PATH] [--batch-size N] [--plot PNG]``
    The loss (``loss <name>: X``) and, for a classification, ``accuracy: 0.xxxx`` and the confusion matrix (rows:
    the true class, columns: the predicted one), printed as a text table and drawn into ``RUN/confusion.png``
    (``--plot PNG`` elsewhere; skipped with :data:`fnn.cli_train.PLOT_SKIPPED` without matplotlib); for a regression
    ``mse`` and ``mae`` of the outputs in the target's units (per output when there are several). Without
    ``--data``: on the run's own test set, re-created by :func:`fnn.cli_data.load_run_data` from config.json (the
    same file, split and seed; a warning when the file's data differ from the fingerprint the run recorded).
    ``--data FILE.csv``: the run's feature and target columns, the labels mapped onto the run's classes (an
    unknown class is an error naming the line). ``--data FILE.npz``: ``x_test``/``y_test`` when the archive has
    them (the part a training file holds out), else ``x``/``y``.
``fnn predict RUN INPUT [--out PREDS.csv] [--batch-size N]``
    One CSV row per input row, in input order, to ``--out`` (written atomically) or to stdout. INPUT is a CSV
    (read by the run's feature names; other columns, the target among them, are ignored) or an ``.npz`` (its
    array ``x``; other arrays are ignored). A classification writes ``prediction`` (the class name: the output's
    argmax) and ``p_<class>`` for every class: the net's own output when it ends in softmax or sigmoid (sigmoid
    outputs are one probability per class and need not sum to 1), else the softmax of the output (logits,
    ``identity``; ``log_softmax`` gives the same probabilities back). A regression writes ``y`` (one output) or
    ``y0, y1, ...``. Floats are written with ``repr`` of the float32 value's Python float: they read back exactly.
``fnn export RUN --onnx MODEL.onnx``
    :func:`fnn.export_onnx` with the run's state and standardizer: the standardization is the graph's first
    nodes, so the ONNX model takes raw features and returns what :meth:`fnn.run.Run.predict` returns. Needs the
    ``onnx`` package (``pip install 'fnn[export]'``; without it: exit 2).

A folder that is no run folder, or one whose files are not what ``fnn train`` writes, and input files that do
not fit the run exit with 2; files that cannot be read exit with 74 (the table is in :mod:`fnn.cli`).
"""

from __future__ import annotations

import argparse
import csv
import errno
import io
import os
import sys
from pathlib import Path

import numpy as np

import fnn
from fnn import tabular
from fnn._checkpoint_format import atomic_write
from fnn._cli import EXIT_OK, UsageError, one_line, positive, user_input
from fnn._run_folder import TRAIN_DEFAULTS, check_config, data_fingerprint, describe_fingerprint
from fnn.cli_data import load_run_data, loss_targets
from fnn.cli_train import PLOT_SKIPPED
from fnn.early_stopping import BEST_NAME
from fnn.plot import png_bytes
from fnn.run import Run, load_run

__all__ = ["CONFUSION_NAME", "EXPORT_HINT", "add_parsers", "confusion_matrix", "evaluate_run", "export_run",
           "format_confusion", "predict_run", "probabilities"]

#: The confusion-matrix plot ``fnn evaluate`` writes into the run folder (``--plot`` elsewhere).
CONFUSION_NAME = "confusion.png"
EXPORT_HINT = "pip install 'fnn[export]'"
_PROBABILITY_OUTPUTS = ("softmax", "sigmoid")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the ``evaluate``, ``predict`` and ``export`` sub-commands to the ``fnn`` parser's sub-commands."""
    batch = dict(type=positive(int), default=4096, metavar="N",
                 help="examples per forward pass (memory only; the results do not depend on it; default 4096)")
    ev = commands.add_parser(
        "evaluate", help="loss, accuracy and confusion matrix of a run on its test set or new data",
        description="Evaluate a trained run folder: the loss, and the accuracy and confusion matrix (classification) "
                    "or the mse and mae (regression), on the run's own test set or on --data PATH (raw values, "
                    "transformed as in training). Writes the confusion matrix to RUN/confusion.png.")
    ev.add_argument("run", metavar="RUN", help="a run folder written by 'fnn train'")
    ev.add_argument("--data", metavar="PATH", help="a CSV with the run's feature and target columns, or an .npz "
                                                   "(x_test/y_test when present, else x/y); default: the run's own "
                                                   "test set")
    ev.add_argument("--batch-size", **batch)
    ev.add_argument("--plot", metavar="PNG", help=f"where to draw the confusion matrix (default RUN/{CONFUSION_NAME})")
    ev.set_defaults(func=evaluate_run)
    pr = commands.add_parser(
        "predict", help="predictions of a run for the rows of a CSV or an .npz",
        description="Predict with a trained run folder: one CSV row per input row, in order, with the predicted class "
                    "and the class probabilities (p_<class>), or the regression outputs (y or y0, y1, ...).")
    pr.add_argument("run", metavar="RUN", help="a run folder written by 'fnn train'")
    pr.add_argument("input", metavar="INPUT", help="a CSV with the run's feature columns (others are ignored) or an "
                                                   ".npz with array x, raw values")
    pr.add_argument("--out", metavar="PREDS.csv", help="the CSV to write (atomically; default: stdout)")
    pr.add_argument("--batch-size", **batch)
    pr.set_defaults(func=predict_run)
    ex = commands.add_parser(
        "export", help="write a run's network as an ONNX model taking raw features",
        description="Export a trained run folder as an ONNX model (the standardization built in as its first nodes, "
                    f"so it takes raw features). Needs the onnx package: {EXPORT_HINT}.")
    ex.add_argument("run", metavar="RUN", help="a run folder written by 'fnn train'")
    ex.add_argument("--onnx", metavar="MODEL.onnx", required=True, help="the ONNX file to write")
    ex.set_defaults(func=export_run)


# --- shared -----------------------------------------------------------------------------------------------

def _load(folder: str) -> Run:
    run = user_input("", load_run, folder)
    prep = run.preprocessing
    if prep.task == "classification" and run.net.output_shape != (len(prep.classes),):
        raise UsageError(f"{run.weights}: the network has outputs of shape {run.net.output_shape}, but "
                         f"{run.folder / 'preprocessing.json'} names {len(prep.classes)} classes.")
    return run


def _params_line(run: Run) -> str:
    epoch = "" if run.epoch is None else f" of epoch {run.epoch}"
    best = ", the best epoch (early stopping)" if run.weights.name == BEST_NAME else ""
    return f"params{epoch} from {run.weights}{best}"


def _transform(run: Run, x: np.ndarray, path: str) -> np.ndarray:
    """The run's transform of raw ``x``; a shape that does not fit is a user error naming both shapes."""
    return user_input(path, run.preprocessing.transform, x)


def _read(run: Run, path: str, *, labelled: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``(raw x, y or None, which part)`` of a CSV or .npz, read by the run's columns and classes."""
    prep = run.preprocessing
    classes = prep.classes if labelled else None
    if path.lower().endswith(".npz"):
        # Unlabelled: y is ignored, so read it as regression values (no class-label rules to fail on).
        task = prep.task if labelled else "regression"
        train, test = user_input("", tabular.read_table, path, task=task, classes=classes, require_target=labelled)
        if labelled and test is not None:
            return test.x, test.y, "x_test/y_test"
        return train.x, train.y, "x/y"
    if len(prep.input_shape) > 1 and path.lower().endswith((".csv", ".csv.gz")):
        raise UsageError(f"{path}: the run takes images of shape {prep.input_shape}, which a CSV cannot hold; give "
                         f"an .npz with array x of shape (n, {', '.join(map(str, prep.input_shape))}).")
    table, _ = user_input("", tabular.read_table, path, features=list(prep.features),
                          target=prep.target if labelled else None, task=prep.task, classes=classes,
                          require_target=labelled)
    return table.x, table.y, f"columns {', '.join(table.feature_names)}"


def _own_test_set(run: Run) -> tuple[np.ndarray, np.ndarray, str]:
    """The run's test split, raw, re-created from its config.json (see :mod:`fnn.cli_data`)."""
    path = run.folder / "config.json"
    config = check_config({k: run.config.get(k, v) for k, v in TRAIN_DEFAULTS.items()}, str(path))
    source = config["data_file"] or config["dataset"]
    if config["data_file"] is not None and not os.path.lexists(config["data_file"]):
        raise FileNotFoundError(errno.ENOENT, f"the run's training data are gone ({path}: data_file); restore the "
                                f"file to re-create its test set, or evaluate a file with --data PATH", source)
    key = "data_file" if config["data_file"] else "dataset"
    data = load_run_data({**config, "standardize": False}, f"{path}: {key}")  # raw: the run's transform follows
    saved = run.config.get("data")
    now = data_fingerprint(*data.loaded)
    if isinstance(saved, dict) and saved.get("sha256") != now["sha256"]:
        print(f"fnn evaluate: warning: {source} now holds other data ({describe_fingerprint(now)}) than the run "
              f"trained on ({describe_fingerprint(saved)}); its test split is not the run's.", file=sys.stderr)
    if data.preprocessing.classes != run.preprocessing.classes:
        raise UsageError(f"{source} now holds the classes {data.preprocessing.classes}, but the run was trained on "
                         f"{run.preprocessing.classes} ({run.folder / 'preprocessing.json'}).")
    x, y = data.test
    return x, y, f"the run's test set ({source})"


def _targets(run: Run, y: np.ndarray, path: str) -> np.ndarray:
    """``y`` in the loss's form: class indices or one-hot rows, or ``(n, k)`` regression values."""
    prep = run.preprocessing
    y = loss_targets(y, prep.task, run.loss, None if prep.classes is None else len(prep.classes))
    if prep.task == "regression" and y.shape[1:] != run.net.output_shape:
        raise UsageError(f"{path}: the targets have shape {y.shape}, but the run's network has "
                         f"{run.net.output_shape[-1]} output(s): expected ({y.shape[0]}, {run.net.output_shape[-1]}).")
    return y


# --- fnn evaluate -----------------------------------------------------------------------------------------

def confusion_matrix(true: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """``m[i, j]``: the number of examples of true class ``i`` predicted as class ``j``, int64 ``(k, k)``."""
    m = np.zeros((k, k), np.int64)
    np.add.at(m, (np.asarray(true, np.int64), np.asarray(predicted, np.int64)), 1)
    return m


def format_confusion(matrix: np.ndarray, classes) -> str:
    """The matrix as an aligned text table: the true classes down the side, the predicted ones across the top."""
    corner = "true \\ predicted"
    first = max(len(corner), *(len(c) for c in classes))
    cols = [max(len(c), len(str(matrix[:, j].max()))) for j, c in enumerate(classes)]
    lines = [corner.ljust(first) + "".join(f"  {c:>{w}}" for c, w in zip(classes, cols, strict=True))]
    for name, row in zip(classes, matrix, strict=True):
        lines.append(name.ljust(first) + "".join(f"  {v:>{w}}" for v, w in zip(row, cols, strict=True)))
    return "\n".join(lines)


def plot_confusion(matrix: np.ndarray, classes, path: Path, title: str) -> Path | None:
    """Draw the matrix into the PNG ``path`` (atomically); None (and :data:`PLOT_SKIPPED` printed) without
    matplotlib."""
    try:
        import matplotlib  # noqa: F401  (first: a missing matplotlib fails here even if a submodule was loaded)
        from matplotlib.figure import Figure
    except ImportError:
        print(PLOT_SKIPPED)
        return None
    k = len(classes)
    size = min(12.0, 3.0 + 0.6 * k)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")  # no pyplot: no backend, nothing to close
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, label="examples")
    ax.set_xticks(range(k), classes, rotation=45 if max(map(len, classes)) > 3 else 0, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(title, fontsize="medium")
    if k <= 30:
        top = matrix.max() or 1
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    atomic_write(path, png_bytes(fig, dpi=100))
    return path


def evaluate_run(args: argparse.Namespace) -> int:
    """``fnn evaluate``: prints the metrics, writes the confusion plot; raises for the errors :mod:`fnn.cli` maps."""
    run = _load(args.run)
    prep = run.preprocessing
    if args.data is None:
        x, y, what = _own_test_set(run)
        where = "the run's test set"
    else:
        x, y, part = _read(run, args.data, labelled=True)
        what, where = f"{args.data} ({part})", args.data
    xt = _transform(run, x, where)
    targets = _targets(run, y, where)
    print(f"run: {run.folder}, {_params_line(run)}")
    print(f"data: {what}, {x.shape[0]} examples")
    metrics = user_input(where, fnn.evaluate, run.net, run.params, xt, targets, run.loss,
                         batch_size=args.batch_size, state=run.state)
    out = run.predict(x, batch_size=args.batch_size)
    print(f"loss {run.loss.name}: {metrics['loss']:.6g}")
    if prep.task == "regression":
        err = out.reshape(targets.shape).astype(np.float64) - targets
        names = _output_names(targets.shape[1])
        for metric, per in (("mse", np.mean(err ** 2, axis=0)), ("mae", np.mean(np.abs(err), axis=0))):
            each = "" if len(per) == 1 else f" ({', '.join(f'{n} {v:.6g}' for n, v in zip(names, per, strict=True))})"
            print(f"{metric}: {per.mean():.6g}{each}")
        return EXIT_OK
    matrix = confusion_matrix(y, out.argmax(axis=-1), len(prep.classes))
    accuracy = metrics["accuracy"] if metrics["accuracy"] is not None else np.trace(matrix) / max(1, x.shape[0])
    print(f"accuracy: {accuracy:.4f}")
    print("confusion matrix (rows: true class, columns: predicted class):")
    print(format_confusion(matrix, prep.classes))
    plot = Path(args.plot) if args.plot is not None else run.folder / CONFUSION_NAME
    source = Path(run.config.get("data_file") or run.config.get("dataset") or "?").name
    title = (f"{run.folder.name}: {'test set of ' + source if args.data is None else Path(args.data).name}\n"
             f"accuracy {accuracy:.4f} ({x.shape[0]} examples)")
    if plot_confusion(matrix, prep.classes, plot, title) is not None:
        print(f"confusion matrix plot: {plot}")
    return EXIT_OK


# --- fnn predict ------------------------------------------------------------------------------------------

def probabilities(run: Run, out: np.ndarray) -> np.ndarray:
    """Class probabilities from the net's outputs: as they are after softmax or sigmoid, else their softmax."""
    if run.net.output.name in _PROBABILITY_OUTPUTS:
        return out
    z = out.astype(np.float64) - out.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(out.dtype)


def _output_names(k: int) -> list[str]:
    return ["y"] if k == 1 else [f"y{i}" for i in range(k)]


def predict_run(args: argparse.Namespace) -> int:
    """``fnn predict``: writes the predictions' CSV; raises for the errors :mod:`fnn.cli` maps."""
    run = _load(args.run)
    prep = run.preprocessing
    x, _, _ = _read(run, args.input, labelled=False)
    _transform(run, x, args.input)  # the shape check, before anything is compiled
    out = run.predict(x, batch_size=args.batch_size)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if prep.task == "classification":
        probs = probabilities(run, out)
        writer.writerow(["prediction", *(f"p_{c}" for c in prep.classes)])
        for label, row in zip(out.argmax(axis=-1), probs, strict=True):
            writer.writerow([prep.classes[label], *(repr(float(v)) for v in row)])
    else:
        out = out.reshape(out.shape[0], -1)
        writer.writerow(_output_names(out.shape[1]))
        writer.writerows([repr(float(v)) for v in row] for row in out)
    if args.out is None:
        sys.stdout.write(text.getvalue())
        sys.stdout.flush()
    else:
        atomic_write(Path(args.out), text.getvalue().encode())
        print(f"wrote {x.shape[0]} predictions to {args.out}: {_params_line(run)}")
    return EXIT_OK


# --- fnn export -------------------------------------------------------------------------------------------

def _describe_value(info) -> str:
    """``name: float32 (batch, 4)`` of an ONNX graph input or output."""
    import onnx

    tensor = info.type.tensor_type
    dims = ", ".join(d.dim_param or str(d.dim_value) for d in tensor.shape.dim)
    return f"{info.name}: {onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)} ({dims})"


def export_run(args: argparse.Namespace) -> int:
    """``fnn export``: writes the ONNX file; raises for the errors :mod:`fnn.cli` maps."""
    run = _load(args.run)
    prep = run.preprocessing
    try:
        path = user_input(f"--onnx {args.onnx}", fnn.export_onnx, run.net, run.params, args.onnx, state=run.state,
                          standardizer=prep.standardizer)
        import onnx
    except ImportError as e:
        raise UsageError(f"fnn export needs the onnx package, which cannot be imported ({one_line(e.__cause__ or e)});"
                         f" install it with: {EXPORT_HINT}") from e
    graph = onnx.load(str(path)).graph
    feats = ", ".join(prep.features[:8]) + (", ..." if len(prep.features) > 8 else "")
    if prep.task == "classification":
        act = run.net.output.name
        kind = (f"{act} probabilities" if act in _PROBABILITY_OUTPUTS
                else f"{act} outputs (softmax them for probabilities)")
        meaning = f"{kind} of {', '.join(prep.classes)}"
    else:
        meaning = f"regression outputs ({prep.target or 'y'})"
    std = "standardization built in" if prep.standardizer is not None else "the run trained on unstandardized inputs"
    print(f"wrote {path}: {_params_line(run)}")
    for info in graph.input:
        print(f"input  {_describe_value(info)}: raw {feats} ({std})")
    for info in graph.output:
        print(f"output {_describe_value(info)}: {meaning}")
    return EXIT_OK
