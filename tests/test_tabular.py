"""Tests for fnn/tabular.py: the user's CSV and .npz files read into Tables, and every bad input named.

Every CSV error must be one line naming the file, the line (the file's own line number, header = line 1) and,
where there is one, the column. The expected arrays are written out by hand or come from ``fnn.data.iris()``.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from fnn import data as fdata
from fnn import tabular
from fnn.tabular import Table, read_csv, read_npz, read_table

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "iris.csv"


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def csv_error(path: Path, *pieces: str, exc: type = ValueError, **kw) -> str:
    """Reads ``path``, expects ``exc`` with a one-line message that names the file and holds every piece."""
    with pytest.raises(exc) as info:
        read_csv(path, **kw)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for piece in pieces:
        assert piece in message, f"{piece!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------------------------- CSV round trips


def test_classification_with_string_labels_sorts_the_classes(tmp_path):
    path = write(tmp_path, "a,b,kind\n1,2,cat\n3,4,ant\n5,6,cat\n7.5,-8e-1,bee\n")
    t = read_csv(path)
    assert isinstance(t, Table)
    assert t.classes == ("ant", "bee", "cat")
    np.testing.assert_array_equal(t.y, [2, 0, 2, 1])
    np.testing.assert_array_equal(t.x, np.array([[1, 2], [3, 4], [5, 6], [7.5, -0.8]], np.float32))
    assert t.x.dtype == np.float32 and t.y.dtype == np.int32
    assert t.feature_names == ("a", "b") and t.target == "kind"


def test_numeric_labels_sort_by_value_and_keep_their_text(tmp_path):
    path = write(tmp_path, "a,label\n1,10\n2,2\n3,1.0\n4,1\n5,2\n")
    t = read_csv(path, target="label")
    assert t.classes == ("1.0", "2", "10")  # by value, not "1.0" < "10" < "2"; "1" and "1.0" are one class
    np.testing.assert_array_equal(t.y, [2, 1, 0, 0, 1])


def test_target_defaults_to_the_last_column_and_can_be_any_column(tmp_path):
    path = write(tmp_path, "y,a,b\n0,1,2\n1,3,4\n")
    t = read_csv(path, target="y")
    assert t.feature_names == ("a", "b") and t.classes == ("0", "1")
    np.testing.assert_array_equal(t.x, [[1, 2], [3, 4]])
    assert read_csv(path).target == "b"


def test_features_subset_in_the_given_order(tmp_path):
    path = write(tmp_path, "a,b,c,notes,y\n1,2,3,hello,u\n4,5,6,world,v\n")
    t = read_csv(path, features=["c", "a"])
    assert t.feature_names == ("c", "a")
    np.testing.assert_array_equal(t.x, [[3, 1], [6, 4]])  # the text column 'notes' is never parsed


def test_regression_target(tmp_path):
    path = write(tmp_path, "a,b,price\n1,2,3.5\n3,4,-1e3\n")
    t = read_csv(path, task="regression")
    assert t.classes is None and t.y.dtype == np.float32
    np.testing.assert_array_equal(t.y, np.array([3.5, -1000.0], np.float32))


def test_require_target_false_with_and_without_the_target_column(tmp_path):
    with_target = write(tmp_path, "b,a,y\n1,2,v\n3,4,u\n", "with.csv")
    t = read_csv(with_target, target="y", features=["a", "b"], require_target=False, classes=["u", "v"])
    np.testing.assert_array_equal(t.x, [[2, 1], [4, 3]])
    np.testing.assert_array_equal(t.y, [1, 0])
    without = write(tmp_path, "extra,b,a\nxyz,1,2\nabc,3,4\n", "without.csv")
    t = read_csv(without, target="y", features=["a", "b"], require_target=False)
    assert t.y is None and t.target is None and t.classes is None
    np.testing.assert_array_equal(t.x, [[2, 1], [4, 3]])
    t = read_csv(write(tmp_path, "a,b\n1,2\n", "plain.csv"), require_target=False)  # no target named
    assert t.y is None and t.feature_names == ("a", "b")
    one = read_csv(write(tmp_path, "a,y\n1,u\n", "one.csv"), target="y", require_target=False)
    assert one.classes == ("u",)  # one row to predict: a single class is no error here


def test_classes_argument_maps_to_the_saved_indices(tmp_path):
    path = write(tmp_path, "a,species\n1,virginica\n2,setosa\n3,virginica\n")
    t = read_csv(path, classes=("setosa", "versicolor", "virginica"))
    assert t.classes == ("setosa", "versicolor", "virginica")
    np.testing.assert_array_equal(t.y, [2, 0, 2])  # one class present is fine: evaluation on new data
    numeric = write(tmp_path, "a,y\n1,1.0\n2,0\n", "numeric.csv")
    np.testing.assert_array_equal(read_csv(numeric, classes=("0", "1", "2")).y, [1, 0])  # by value


def test_unknown_class_with_classes_argument_is_named(tmp_path):
    path = write(tmp_path, "a,species\n1,setosa\n2,daisy\n")
    csv_error(path, "line 3", "column 'species'", "'daisy'", "'setosa', 'virginica'",
              classes=("setosa", "virginica"))


def test_bom_whitespace_blank_lines_and_quotes(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff a , b ,y\n\n 1 , 2 , u \n   \n\"3\",4,\"v\nw\"\n\n5,,u\n".encode())
    message = csv_error(path, "line 8", "column 'b'", "missing value (empty cell)")  # blank lines keep numbers
    assert re.fullmatch(re.escape(f"{path}: line 8, column 'b': missing value (empty cell)."), message)
    path.write_bytes("\ufeff a , b ,y\n\n 1 , 2 , u \n   \n\"3\",4,\"v\nw\"\n\n".encode())
    t = read_csv(path)
    assert t.feature_names == ("a", "b") and t.classes == ("u", "v\nw")
    np.testing.assert_array_equal(t.x, [[1, 2], [3, 4]])


def test_gzipped_csv(tmp_path):
    path = tmp_path / "data.csv.gz"
    path.write_bytes(gzip.compress(b"a,y\n1,0\n2,1\n"))
    np.testing.assert_array_equal(read_csv(path).x, [[1], [2]])
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"a,y\n1,0\n")
    csv_error(bad, "not a readable gzip file")


def test_the_shipped_example_is_iris_with_species_names():
    t = read_csv(EXAMPLE, target="species")
    x, y = fdata.iris()
    np.testing.assert_array_equal(t.x, x)
    np.testing.assert_array_equal(t.y, y)
    assert t.classes == ("setosa", "versicolor", "virginica")
    assert t.feature_names == ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")


# --------------------------------------------------------------------------------------------- CSV bad input


@pytest.mark.parametrize("cell", ["", "NA", "n/a", "NaN", "null", "?", "nan"])
def test_missing_value(tmp_path, cell):
    path = write(tmp_path, f"a,petal_width,y\n1,2,u\n3,4,v\n5,6,u\n6,7,v\n1,2,u\n1,{cell},v\n")
    shown = "empty cell" if not cell else repr(cell)
    csv_error(path, "line 7, column 'petal_width': missing value", shown)


def test_non_numeric_feature_shows_the_value(tmp_path):
    path = write(tmp_path, "a,b,y\n1,2,u\n3,four,v\n")
    csv_error(path, "line 3, column 'b'", "expected a number, got 'four'")


@pytest.mark.parametrize("cell", ["inf", "-Infinity", "1e39", "-nan"])
def test_non_finite_feature(tmp_path, cell):
    path = write(tmp_path, f"a,b,y\n1,2,u\n{cell},4,v\n")
    csv_error(path, "line 3, column 'a'", "non-finite value", repr(cell))


@pytest.mark.parametrize("row, piece", [("1,2", "got 2: no cell for column 'y'"),
                                        ("1,2,u,9", "got 4: cell 4 ('9') has no column")])
def test_ragged_row(tmp_path, row, piece):
    path = write(tmp_path, f"a,b,y\n1,2,u\n{row}\n")
    csv_error(path, "line 3", "expected 3 columns", piece)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    csv_error(write(tmp_path, text), "line 1", "empty file", "header")


def test_header_without_data_rows(tmp_path):
    csv_error(write(tmp_path, "\na,b,y\n\n"), "line 2 (header)", "no data rows")


def test_unknown_target_lists_the_columns_and_the_closest_match(tmp_path):
    path = write(tmp_path, "sepal,petal,species\n1,2,u\n")
    csv_error(path, "line 1 (header)", "no column 'specie' for the target", "'sepal', 'petal', 'species'",
              "Did you mean 'species'?", target="specie")


def test_unknown_feature_lists_the_columns_and_the_closest_match(tmp_path):
    path = write(tmp_path, "sepal,petal,species\n1,2,u\n")
    csv_error(path, "line 1 (header)", "no column 'petals' for the features", "Did you mean 'petal'?",
              features=["sepal", "petals"])


def test_duplicate_and_empty_column_names(tmp_path):
    csv_error(write(tmp_path, "a,b,a\n1,2,3\n"), "line 1 (header), column 'a'", "duplicate column name",
              "columns 1 and 3")
    csv_error(write(tmp_path, "a,,y\n1,2,3\n", "empty.csv"), "line 1 (header), column 2", "no name")


def test_a_feature_that_is_also_the_target(tmp_path):
    path = write(tmp_path, "a,b,y\n1,2,u\n")
    csv_error(path, "line 1 (header), column 'y'", "both a feature and the target", features=["a", "y"])
    csv_error(path, "features name a column more than once", features=["a", "a"])


def test_fewer_than_two_classes(tmp_path):
    path = write(tmp_path, "a,species\n1,setosa\n2,setosa\n")
    csv_error(path, "column 'species'", "fewer than two classes", "'setosa'", "lines 2-3")


def test_missing_class_label(tmp_path):
    path = write(tmp_path, "a,species\n1,setosa\n2,NA\n")
    csv_error(path, "line 3, column 'species'", "missing value ('NA')")


def test_regression_target_must_be_numeric(tmp_path):
    path = write(tmp_path, "a,price\n1,2\n3,cheap\n")
    csv_error(path, "line 3, column 'price'", "expected a number, got 'cheap'", task="regression")


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,y\n1,u\n2,caf\u00e9\n".encode("latin-1"))
    csv_error(path, "line 3", "byte 0xe9 is not UTF-8")


def test_malformed_csv_names_the_line(tmp_path):
    path = write(tmp_path, "a,y\n1,u\n2,\"" + "z" * 200_000 + "\"\n")
    csv_error(path, "line 3", "not valid CSV")


def test_bad_arguments(tmp_path):
    path = write(tmp_path, "a,b,y\n1,2,u\n")
    with pytest.raises(TypeError, match="features must be a non-empty sequence of column names"):
        read_csv(path, features="a,b")
    with pytest.raises(TypeError, match="features must be"):
        read_csv(path, features=[])
    with pytest.raises(ValueError, match="Unknown task 'regresion'; expected one of classification, regression"):
        read_csv(path, task="regresion")
    with pytest.raises(ValueError, match="classes= applies to classification only"):
        read_csv(path, task="regression", classes=["u"])
    with pytest.raises(ValueError, match="distinct class names"):
        read_csv(path, classes=["u", "u"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        read_csv(fifo)


# --------------------------------------------------------------------------------------------- npz


def test_npz_with_and_without_test_arrays(tmp_path):
    x, y = np.arange(12, dtype=np.float64).reshape(4, 3), np.array([0, 2, 1, 2])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    train, test = read_npz(tmp_path / "d.npz")
    assert test is None
    np.testing.assert_array_equal(train.x, x.astype(np.float32))
    np.testing.assert_array_equal(train.y, y)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int32
    assert train.classes == ("0", "1", "2") and train.feature_names == ("x0", "x1", "x2") and train.target == "y"
    np.savez(tmp_path / "e.npz", x=x, y=y % 2, x_test=x[:2] + 1, y_test=np.array([3, 0]), notes=np.zeros(1))
    train, test = read_npz(tmp_path / "e.npz")
    assert train.classes == test.classes == ("0", "1", "2", "3")  # K from y and y_test
    np.testing.assert_array_equal(test.x, x[:2] + 1)
    np.testing.assert_array_equal(test.y, [3, 0])


def test_npz_images_keep_their_shape(tmp_path):
    x = np.random.default_rng(0).random((5, 6, 7, 1)).astype(np.float32)
    np.savez(tmp_path / "img.npz", x=x, y=np.arange(5) % 2, x_test=x[:2], y_test=np.array([1, 1]))
    train, test = read_npz(tmp_path / "img.npz")
    assert train.x.shape == (5, 6, 7, 1) and test.x.shape == (2, 6, 7, 1)
    np.testing.assert_array_equal(train.x, x)
    assert train.feature_names == ("x of shape (6, 7, 1)",)


def test_npz_regression_and_task_override(tmp_path):
    x = np.ones((3, 2))
    np.savez(tmp_path / "r.npz", x=x, y=np.array([[0.5, 1], [2, 3], [4, 5]]))
    train, _ = read_npz(tmp_path / "r.npz")
    assert train.classes is None and train.y.shape == (3, 2) and train.y.dtype == np.float32
    np.savez(tmp_path / "f.npz", x=x, y=np.array([1.0, 0.0, 1.0]))
    assert read_npz(tmp_path / "f.npz")[0].classes is None  # floats: regression
    t = read_npz(tmp_path / "f.npz", task="classification")[0]
    assert t.classes == ("0", "1") and t.y.dtype == np.int32
    np.testing.assert_array_equal(t.y, [1, 0, 1])
    np.savez(tmp_path / "i.npz", x=x, y=np.array([1, 0, 1]))
    t = read_npz(tmp_path / "i.npz", task="regression")[0]
    assert t.classes is None and t.y.dtype == np.float32
    t = read_npz(tmp_path / "i.npz", classes=("no", "yes", "maybe"))[0]
    assert t.classes == ("no", "yes", "maybe")


def test_npz_prediction_input_without_y(tmp_path):
    np.savez(tmp_path / "p.npz", x=np.ones((2, 3)), x_test=np.zeros((1, 3)))
    train, test = read_npz(tmp_path / "p.npz", require_target=False)
    assert train.y is None and train.target is None and test.y is None and test.x.shape == (1, 3)


def npz_error(path: Path, *pieces: str, **kw) -> str:
    with pytest.raises(ValueError) as info:
        read_npz(path, **kw)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for piece in pieces:
        assert piece in message, f"{piece!r} not in {message!r}"
    return message


def savez(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


X, Y = np.ones((4, 2)), np.array([0, 1, 0, 1])


def test_npz_not_a_zip(tmp_path):
    npz_error(write(tmp_path, "a,b\n1,2\n", "text.npz"), "not an .npz file")
    np.save(tmp_path / "arr.npy", X)
    os.replace(tmp_path / "arr.npy", tmp_path / "arr.npz")
    npz_error(tmp_path / "arr.npz", "not an .npz file", "\\x93NUM")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    npz_error(tmp_path / "broken.npz", "not a readable .npz file")


def test_npz_missing_arrays(tmp_path):
    npz_error(savez(tmp_path, X=X, labels=Y), "no array 'x'", "'X', 'labels'")
    npz_error(savez(tmp_path, x=X), "no array 'y'")
    npz_error(savez(tmp_path, x=X, y=Y, x_test=X), "array 'x_test' without 'y_test'")
    npz_error(savez(tmp_path, x=X, y=Y, y_test=Y), "array 'y_test' without 'x_test'")


def test_npz_shapes_that_do_not_match(tmp_path):
    npz_error(savez(tmp_path, x=X, y=Y[:3]), "array 'y' must have shape (4,)", "got (3,)")
    npz_error(savez(tmp_path, x=X, y=Y, x_test=np.ones((2, 3)), y_test=Y[:2]),
              "array 'x_test' must have shape (n, 2) like 'x', got (2, 3)")
    npz_error(savez(tmp_path, x=X, y=Y, x_test=X[:2], y_test=Y), "array 'y_test' must have shape (2,)")
    npz_error(savez(tmp_path, x=np.ones(4), y=Y), "array 'x' must have shape (n, features...)", "reshape(-1, 1)")
    npz_error(savez(tmp_path, x=X, y=np.ones((4, 2), int)), "array 'y' must have shape (4,)")


def test_npz_non_numeric_and_object_arrays(tmp_path):
    npz_error(savez(tmp_path, x=np.array([["a", "b"]] * 4), y=Y), "array 'x' must be numeric", "<U1")
    npz_error(savez(tmp_path, x=np.array([[1, None]] * 4, dtype=object), y=Y), "array 'x' holds Python objects")


def test_npz_non_finite_values_name_the_first_index(tmp_path):
    x = X.copy()
    x[2, 1] = np.nan
    x[3, 0] = np.inf
    npz_error(savez(tmp_path, x=x, y=Y), "array 'x'", "non-finite value at index (2, 1)")
    npz_error(savez(tmp_path, x=X, y=np.array([0, 1e39, 0, 1])), "array 'y'", "index (1,)")


def test_npz_bad_labels(tmp_path):
    npz_error(savez(tmp_path, x=X, y=np.array([0, -1, 1, 0])), "array 'y' holds class labels", "index (1,)")
    npz_error(savez(tmp_path, x=X, y=np.array([0, 0, 0, 0])), "array 'y': fewer than two classes", "every label is 0")
    assert read_npz(savez(tmp_path, x=X, y=np.zeros(4, int)), require_target=False)[0].classes == ("0",)
    npz_error(savez(tmp_path, x=X, y=np.array([0, 0.5, 1, 0])), "got 0.5 at index (1,)", "task=regression",
              task="classification")
    npz_error(savez(tmp_path, x=X, y=np.array([0, 1, 2, 0])), "class label 2 is beyond the 2 known classes",
              classes=("a", "b"))


# --------------------------------------------------------------------------------------------- read_table


def test_read_table_dispatches_on_the_suffix(tmp_path):
    csv_path = write(tmp_path, "a,b,y\n1,3,u\n2,4,v\n", "DATA.CSV")
    table, test = read_table(csv_path)
    assert test is None and table.classes == ("u", "v")
    table, _ = read_table(csv_path, task="regression", target="b", features=["a"])
    np.testing.assert_array_equal(table.y, [3, 4])
    assert table.feature_names == ("a",) and table.classes is None
    np.savez(tmp_path / "d.npz", x=X, y=Y)
    train, test = read_table(tmp_path / "d.npz")
    assert test is None and train.classes == ("0", "1")
    assert read_table(EXAMPLE, target="species")[0].classes == ("setosa", "versicolor", "virginica")


def test_read_table_refuses_folders_unknown_suffixes_and_columns_for_npz(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder.*fnn\.load_dataset\(name, data_dir\).*--data-dir"):
        read_table(tmp_path)
    write(tmp_path, "a\n", "data.tsv")
    with pytest.raises(ValueError, match=r"data\.tsv: unsupported file type; supported: \.csv, \.csv\.gz, \.npz"):
        read_table(tmp_path / "data.tsv")
    np.savez(tmp_path / "d.npz", x=X, y=Y)
    with pytest.raises(ValueError, match="target and features select CSV columns"):
        read_table(tmp_path / "d.npz", target="y")
    assert tabular.SUFFIXES == (".csv", ".csv.gz", ".npz")
