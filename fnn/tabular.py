"""The user's own data: a CSV file with a header row, or an ``.npz`` archive of arrays, read into a :class:`Table`.

NumPy out, as in :mod:`fnn.data`: ``x`` float32, ``y`` int32 class indices (classification) or float32 values
(regression). Files are opened with :func:`fnn._files.open_regular` (a FIFO, socket or device is refused before
anything blocks) and read whole into memory. Every error is one line, a ``ValueError`` naming the file and, for a
CSV, the line (the file's own line number: the header is line 1 when it is the first line) and the column, e.g.
``data.csv: line 7, column 'petal_width': missing value (empty cell).``

CSV rules (:func:`read_csv`):

* UTF-8 text (a byte-order mark at the start is dropped); ``.csv.gz`` is gunzipped first. Whitespace around every
  cell is stripped; lines that are empty or hold only whitespace are skipped (the others keep their numbers).
* The first non-blank line is the header: distinct, non-empty column names. Every other line has as many cells.
* A feature cell is a number as Python's ``float`` reads it. A missing value (an empty cell or ``NA``, ``N/A``,
  ``NaN``, ``null``, ``?`` in any case), ``inf``/``-inf`` and numbers beyond float32's range are errors: fnn
  does not impute, so fill or drop such rows first.
* Classification: the target's distinct texts are the classes (a missing label is an error). When every label
  is a finite number they sort by value (``"2" < "10"``; ``"1"`` and ``"1.0"`` are one class, named as first
  written), otherwise as strings. ``y`` holds indices into :attr:`Table.classes`, not the label values.

An ``.npz`` (:func:`read_npz`) holds ``x``, ``y`` and optionally ``x_test``, ``y_test`` (other arrays are ignored);
``x`` keeps its stored shape ``(n, ...)``, so images stay ``(n, H, W, C)`` for a CNN.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from typing import NamedTuple, Optional

import numpy as np

from fnn._files import open_regular
from fnn.idx import PathLike

__all__ = ["MISSING", "SUFFIXES", "TASKS", "Table", "read_csv", "read_npz", "read_table"]

#: Cell texts read as a missing value (compared lower-case, after stripping whitespace).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "?"})
#: The tasks a target is read for (regression: float32 values, classification: int32 class indices).
TASKS = ("classification", "regression")
#: The file name endings :func:`read_table` reads.
SUFFIXES = (".csv", ".csv.gz", ".npz")
_F32_MAX = float(np.finfo(np.float32).max)


class Table(NamedTuple):
    """A data set read from the user's file.

    Attributes:
      x: float32 inputs, ``(n, f)`` from a CSV, ``(n, ...)`` as stored in an ``.npz``.
      y: int32 ``(n,)`` class indices (classification), float32 ``(n,)`` or (``.npz`` only) ``(n, k)``
        (regression), or None when the file has no target (read with ``require_target=False``).
      feature_names: the CSV feature columns in ``x``'s column order; for an ``.npz`` ``("x0", "x1", ...)`` when
        ``x`` is ``(n, f)``, else one name giving the shape, e.g. ``("x of shape (28, 28, 1)",)``.
      target: the target column (``"y"`` for an ``.npz``), or None without ``y``.
      classes: class names in index order (``y == i`` means ``classes[i]``); None for regression or without ``y``.
    """

    x: np.ndarray
    y: Optional[np.ndarray]
    feature_names: tuple[str, ...]
    target: Optional[str]
    classes: Optional[tuple[str, ...]]


def _check_task(task: str, classes: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {', '.join(TASKS)}.")
    known = None if classes is None else () if isinstance(classes, str) else tuple(classes)
    if known is not None and task != "classification":
        raise ValueError(f"classes= applies to classification only, got task {task!r}.")
    if known is not None and (not known or not all(isinstance(c, str) for c in known) or len(set(known)) < len(known)):
        raise ValueError(f"classes must be a non-empty sequence of distinct class names (str), got {classes!r}.")
    return known


# ------------------------------------------------------------------------------------------------- CSV


def _rows(path: PathLike, name: str) -> list[tuple[int, list[str]]]:
    """``(line number, stripped cells)`` for every non-blank CSV record, header included."""
    with open_regular(path, "a CSV file") as f:
        raw = f.read()
    if name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{name}: not a readable gzip file ({err}).") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{name}: line {line}: byte 0x{raw[err.start]:02x} is not UTF-8 text; save the file as "
                         f"UTF-8.") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, start = [], 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if len(cells) > 1 or (cells and cells[0].strip()):
                rows.append((line, [c.strip() for c in cells]))
    except csv.Error as err:
        raise ValueError(f"{name}: line {reader.line_num}: not valid CSV ({err}).") from None
    return rows


def _number(cell: str, where: str) -> float:
    if cell.lower() in MISSING:
        raise ValueError(f"{where}: missing value ({repr(cell) if cell else 'empty cell'}).")
    try:
        v = float(cell)
    except ValueError:
        raise ValueError(f"{where}: expected a number, got {cell!r}.") from None
    if not abs(v) <= _F32_MAX:
        raise ValueError(f"{where}: non-finite value {cell!r} (inf, NaN, or beyond float32's range); fnn needs "
                         f"finite numbers.")
    return v


def _numbers(rows, cols: list[int], header: list[str], name: str) -> np.ndarray:
    """The cells of columns ``cols`` as float32 ``(n, len(cols))``; the first bad cell raises, named."""
    out = []
    for _, cells in rows:
        try:
            out.append([float(cells[j]) for j in cols])
        except ValueError:
            break
    values = np.array(out, dtype=np.float64).reshape(len(out), len(cols))
    ok = (np.abs(values) <= _F32_MAX).all(axis=1)  # False for NaN and inf
    if len(out) == len(rows) and ok.all():
        return values.astype(np.float32)
    line, cells = rows[len(out) if ok.all() else int(np.argmin(ok))]
    for j in cols:  # the slow path names the first bad cell of the first bad row
        _number(cells[j], f"{name}: line {line}, column {header[j]!r}")
    raise AssertionError("unreachable: _number raises for a row that float() or the range check refused")


def _value(text: str) -> Optional[float]:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _class_indices(rows, j: int, column: str, name: str, known: Optional[tuple[str, ...]],
                   need_two: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    for line, cells in rows:
        if cells[j].lower() in MISSING:  # a missing label is no class
            _number(cells[j], f"{name}: line {line}, column {column!r}")
    distinct = list(dict.fromkeys(cells[j] for _, cells in rows))
    numeric = all(_value(t) is not None for t in distinct)
    if known is None:
        first = {_value(t): t for t in reversed(distinct)}  # each value named by its first text
        known = tuple(first[v] for v in sorted(first)) if numeric else tuple(sorted(distinct))
        if len(known) < 2 and need_two:
            raise ValueError(f"{name}: column {column!r}: fewer than two classes; every row (lines {rows[0][0]}-"
                             f"{rows[-1][0]}) holds {known[0]!r}.")
    by_value = numeric and all(_value(c) is not None for c in known)
    key = _value if by_value else str
    index = {key(c): i for i, c in enumerate(known)}
    y = np.array([index.get(key(cells[j]), -1) for _, cells in rows], dtype=np.int32)
    if (y < 0).any():
        line, cells = rows[int(np.argmax(y < 0))]
        raise ValueError(f"{name}: line {line}, column {column!r}: class {cells[j]!r} is not among the known "
                         f"classes ({', '.join(map(repr, known))}).")
    return y, known


def _column(col: str, header: list[str], role: str, where: str) -> int:
    if col in header:
        return header.index(col)
    close = difflib.get_close_matches(col, header, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{where}: no column {col!r} for the {role}; the columns are {', '.join(map(repr, header))}."
                     f"{hint}")


def read_csv(path: PathLike, *, target: Optional[str] = None, features: Optional[Sequence[str]] = None,
             task: str = "classification", classes: Optional[Sequence[str]] = None,
             require_target: bool = True) -> Table:
    """Reads a CSV file with a header row into a :class:`Table` (the rules are in the module docstring).

    Args:
      path: the CSV file (``.csv``, or gzipped ``.csv.gz``).
      target: the target column; default the last column (with ``require_target=False``: none).
      features: the feature columns, in ``x``'s order (others are ignored); default every column but the target.
      task: ``"classification"`` (the target's values become class indices) or ``"regression"`` (numbers).
      classes: for classification, the class names to map onto (a trained run's :attr:`Table.classes`): ``y == i``
        means ``classes[i]``; a label that is none of them is an error. Numeric labels match by value.
      require_target: when False (prediction input) the target column may be absent (``y`` is None, ``features``
        every column), and a target with only one class is no error.

    Returns:
      A :class:`Table` with ``x`` float32 ``(n, len(features))``.

    Raises:
      ValueError: one line naming the file, the line and the column; see the module docstring.
      TypeError: ``features`` is not a non-empty sequence of names (one string is not), or ``target`` not a str.

    Example:
      >>> t = read_csv("examples/data/iris.csv", target="species")
      >>> t.x.shape, t.classes
      ((150, 4), ('setosa', 'versicolor', 'virginica'))
    """
    name = os.fspath(path)
    known = _check_task(task, classes)
    feats = None if features is None or isinstance(features, str) else list(features)
    if features is not None and (not feats or not all(isinstance(f, str) for f in feats)):
        raise TypeError(f"features must be a non-empty sequence of column names (str), got {features!r}.")
    if target is not None and not isinstance(target, str):
        raise TypeError(f"target must be one column name (str), got {target!r}.")
    rows = _rows(path, name)
    if not rows:
        raise ValueError(f"{name}: line 1: empty file; expected a header row naming the columns.")
    (hline, header), rows = rows[0], rows[1:]
    at = f"{name}: line {hline} (header)"
    for j, col in enumerate(header):
        if not col:
            raise ValueError(f"{at}, column {j + 1}: the column has no name.")
        if header.index(col) != j:
            raise ValueError(f"{at}, column {col!r}: duplicate column name (columns {header.index(col) + 1} and "
                             f"{j + 1}).")
    target = header[-1] if target is None and require_target else target
    target = None if target not in header and not require_target else target  # prediction input without it
    t = None if target is None else _column(target, header, "target", at)
    if feats is None:
        fcols = [j for j in range(len(header)) if j != t]
        if not fcols:
            raise ValueError(f"{at}: no feature columns; the only column is the target {target!r}.")
    else:
        fcols = [_column(f, header, "features", at) for f in feats]
        if t in fcols:
            raise ValueError(f"{at}, column {target!r}: the column is both a feature and the target.")
        if len(set(fcols)) != len(fcols):
            raise ValueError(f"{at}: features name a column more than once: {feats!r}.")
    if not rows:
        raise ValueError(f"{at}: no data rows after the header.")
    for line, cells in rows:
        if len(cells) != len(header):
            extra = (f"no cell for column {header[len(cells)]!r}" if len(cells) < len(header)
                     else f"cell {len(header) + 1} ({cells[len(header)]!r}) has no column")
            raise ValueError(f"{name}: line {line}: expected {len(header)} columns as in the header (line {hline}), "
                             f"got {len(cells)}: {extra}.")
    x = _numbers(rows, fcols, header, name)
    y, names = None, None
    if t is not None and task == "classification":
        y, names = _class_indices(rows, t, target, name, known, require_target)
    elif t is not None:
        y = _numbers(rows, [t], header, name)[:, 0]
    return Table(x, y, tuple(header[j] for j in fcols), target, names)


# ------------------------------------------------------------------------------------------------- npz


def _arrays(path: PathLike, name: str) -> dict[str, np.ndarray]:
    with open_regular(path, "an .npz file") as f:
        head = f.read(4)
        if head[:2] != b"PK":
            raise ValueError(f"{name}: not an .npz file (a zip archive of .npy arrays, as np.savez writes); it "
                             f"starts with {head!r}.")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as npz:
                if "x" not in npz.files:
                    held = ", ".join(map(repr, npz.files)) or "no arrays"
                    raise ValueError(f"{name}: no array 'x'; the file holds {held} (expected x and y, optionally "
                                     f"x_test and y_test).")
                out = {}
                for k in ("x", "y", "x_test", "y_test"):
                    try:
                        out[k] = npz[k] if k in npz.files else None
                    except ValueError as err:
                        what = "holds Python objects (dtype object)" if "allow_pickle" in str(err) else f"({err})"
                        raise ValueError(f"{name}: array {k!r} {what}; fnn reads numeric arrays only.") from None
                return out
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{name}: not a readable .npz file ({err}).") from None


def _float32(a: np.ndarray, key: str, name: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: array {key!r} must be numeric (bool, integer or float), got dtype {a.dtype}.")
    with np.errstate(over="ignore"):
        out = a.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: array {key!r} has a non-finite value at index {where} (NaN, inf, or beyond "
                         f"float32's range); fnn needs finite numbers.")
    return out


def _targets(a: np.ndarray, key: str, n: int, task: str, name: str) -> np.ndarray:
    """``y`` or ``y_test`` checked against ``n`` input rows: int32 class labels or float32 values."""
    y = _float32(a, key, name)
    if y.shape[:1] != (n,) or y.ndim > (1 if task == "classification" else 2):
        want = f"({n},)" if task == "classification" else f"({n},) or ({n}, k)"
        raise ValueError(f"{name}: array {key!r} must have shape {want} for {task} to match its inputs, got "
                         f"{a.shape}.")
    if task == "regression":
        return y
    a = a.astype(np.int64) if a.dtype.kind == "b" else a
    bad = (a < 0) | (a != np.round(a)) | (a > np.iinfo(np.int32).max)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: array {key!r} holds class labels 0, 1, ..., got {a[i].item()!r} at index ({i},)"
                         f"{'; pass task=regression for real-valued targets' if a.dtype.kind == 'f' else ''}.")
    return a.astype(np.int32)


def read_npz(path: PathLike, *, task: Optional[str] = None, classes: Optional[Sequence[str]] = None,
             require_target: bool = True) -> tuple[Table, Optional[Table]]:
    """Reads an ``.npz`` archive (``np.savez``) of ``x`` and ``y``, optionally ``x_test`` and ``y_test``.

    Args:
      path: the ``.npz`` file, loaded with ``allow_pickle=False``.
      task: None: from ``y``'s dtype: integer or bool labels are classification, classes ``"0", ..., "K-1"``
        (``K - 1`` the largest label in ``y`` and ``y_test``); floats regression. ``"classification"`` also takes
        floats holding whole numbers, ``"regression"`` also integers.
      classes: for classification, the class names a trained run saved (labels must lie in ``[0, len(classes))``).
      require_target: when False, ``y`` and ``y_test`` may be absent (``y`` is None), and one class is no error.

    Returns:
      ``(train, test)``: :class:`Table` s of ``x``/``y`` and of ``x_test``/``y_test`` (None without ``x_test``);
      ``x`` float32 ``(n, ...)`` as stored, ``y`` int32 ``(n,)`` or float32 ``(n,)``/``(n, k)``.

    Raises:
      ValueError: not an ``.npz``; no ``x`` (the arrays present listed) or ``y``; one test array only; row counts
        or shapes that differ; a non-numeric or object array; a non-finite value (the array and its first bad
        index); a negative or fractional label; fewer than two classes; a label beyond ``classes``.
    """
    name = os.fspath(path)
    known = _check_task(task or "classification", classes)
    a = _arrays(path, name)
    if require_target and a["y"] is None:
        raise ValueError(f"{name}: no array 'y' (the targets); the file holds 'x' of shape {a['x'].shape}.")
    for have, lack in (("x_test", "y_test"), ("y_test", "x_test")):
        if a[have] is not None and a[lack] is None and (require_target or have == "y_test"):
            raise ValueError(f"{name}: array {have!r} without {lack!r}; give both test arrays or neither.")
    if task is None:
        kinds = {a[k].dtype.kind for k in ("y", "y_test") if a[k] is not None}
        task = "classification" if known or (kinds and kinds <= set("biu")) else "regression"
    x, tables = _float32(a["x"], "x", name), []
    for kx, ky in (("x", "y"), ("x_test", "y_test")):
        xi = x if kx == "x" else None if a[kx] is None else _float32(a[kx], kx, name)
        if xi is not None and (xi.ndim < 2 or xi.shape[0] == 0 or xi.shape[1:] != x.shape[1:]):
            want = "(n, features...), n >= 1 (one feature: reshape(-1, 1))" if kx == "x" else \
                f"(n, {', '.join(map(str, x.shape[1:]))}) like 'x'"
            raise ValueError(f"{name}: array {kx!r} must have shape {want}, got {xi.shape}.")
        yi = None if a[ky] is None else _targets(a[ky], ky, len(xi), task, name)
        tables.append((xi, yi, ky))
    names, labelled = None, [(yi, ky) for _, yi, ky in tables if yi is not None]
    if task == "classification" and labelled:
        top = max(int(yi.max()) for yi, _ in labelled)
        if known is not None and top >= len(known):
            raise ValueError(f"{name}: class label {top} is beyond the {len(known)} known classes "
                             f"({', '.join(map(repr, known))}).")
        own, key = labelled[0]
        if known is None and require_target and len(np.unique(own)) < 2:
            raise ValueError(f"{name}: array {key!r}: fewer than two classes; every label is {int(own[0])}.")
        names = known or tuple(str(i) for i in range(top + 1))
    features = tuple(f"x{i}" for i in range(x.shape[1])) if x.ndim == 2 else (f"x of shape {x.shape[1:]}",)
    return tuple(None if xi is None else Table(xi, yi, features, None if yi is None else "y",  # (train, test)
                                               None if yi is None else names) for xi, yi, _ in tables)


def read_table(path: PathLike, *, target: Optional[str] = None, features: Optional[Sequence[str]] = None,
               task: Optional[str] = None, classes: Optional[Sequence[str]] = None,
               require_target: bool = True) -> tuple[Table, Optional[Table]]:
    """Reads the user's data file by its suffix (:data:`SUFFIXES`): :func:`read_csv` or :func:`read_npz`.

    The keywords are the readers'; ``target`` and ``features`` are for a CSV only; ``task=None`` means
    ``"classification"`` for a CSV and ``y``'s dtype for an ``.npz``. Returns ``(train, test)``: ``(table, None)``
    for a CSV, :func:`read_npz`'s pair for an ``.npz``. Raises ``ValueError`` for a folder (IDX folders load
    through ``fnn.load_dataset(name, data_dir)``, ``--data-dir``), an unknown suffix (the supported ones listed),
    ``target``/``features`` for an ``.npz``, or what the reader raises.
    """
    name = os.fspath(path)
    if os.path.isdir(name):
        raise ValueError(f"{name} is a folder, not a data file ({', '.join(SUFFIXES)}); IDX (MNIST-format) folders "
                         f"load through fnn.load_dataset(name, data_dir), --data-dir on the command line.")
    if name.lower().endswith((".csv", ".csv.gz")):
        return read_csv(path, target=target, features=features, task=task or "classification", classes=classes,
                        require_target=require_target), None
    if name.lower().endswith(".npz"):
        if target is not None or features is not None:
            raise ValueError(f"{name}: target and features select CSV columns; an .npz file names its arrays x and "
                             f"y (got target={target!r}, features={features!r}).")
        return read_npz(path, task=task, classes=classes, require_target=require_target)
    raise ValueError(f"{name}: unsupported file type; supported: {', '.join(SUFFIXES)}.")
