"""Data for `lrcore train` and the tests: the built-in 8x8 digits set and users' CSV/NPZ tables.

Every loader returns ``(X, y)``: X 2-D float64 (samples x features), y 1-D int64 class labels,
ready for :mod:`lrcore.demo.models`. Pure numpy (no pandas, no scikit-learn).
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from importlib import resources

import numpy as np

__all__ = ["load_digits", "load_table", "train_val_split", "standardize"]

DIGITS_PIXEL_MAX = 16  # pixel counts in digits.npz run from 0 to 16


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return the built-in 8x8 handwritten digits: X (1797, 64) float64 in [0, 1], y (1797,) int64 0..9.

    Pixels are stored as counts 0..16 and divided by 16 here. Source and licence:
    ``lrcore/demo/data/LICENSE-digits.txt``.
    """
    with (resources.files("lrcore.demo") / "data" / "digits.npz").open("rb") as stream:
        with np.load(stream, allow_pickle=False) as archive:
            pixel_counts = archive["X"]
            labels = archive["y"]
    X = pixel_counts.astype(np.float64) / DIGITS_PIXEL_MAX
    y = labels.astype(np.int64)
    return X, y


def load_table(path: str | os.PathLike, target: str | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a user's data set from a ``.csv`` or ``.npz`` file and return (X float64, y int64).

    CSV: a header row of column names, then one row per sample, every cell a finite number.
    ``target`` names the label column (by header name, or by index; negative counts from the
    end); ``None`` means the last column. All other columns form X.

    NPZ: an array ``X`` (2-D). With ``target`` ``None`` the labels are the array ``y``; with a
    string, the array of that name; with an int, that column of ``X`` (removed from X).

    Labels must be non-negative integers (``3`` or ``3.0``), as the models index classes by them.
    Raises FileNotFoundError for a missing file and ValueError, naming the file and the column
    or array, for anything malformed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        if os.path.exists(path):
            raise FileNotFoundError(f"data file {path!r} is not a regular file (a directory?)")
        raise FileNotFoundError(f"data file {path!r} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".csv":
        X, labels, target_name = _read_csv_table(path, target)
    elif suffix == ".npz":
        X, labels, target_name = _read_npz_table(path, target)
    else:
        raise ValueError(f"data file {path!r} has suffix {suffix!r}; expected '.csv' or '.npz'")
    if X.shape[0] != labels.shape[0]:
        raise ValueError(
            f"data file {path!r}: X has {X.shape[0]} rows but target {target_name!r} has "
            f"{labels.shape[0]} entries; expected the same number"
        )
    if X.shape[0] == 0:
        raise ValueError(f"data file {path!r} holds no samples; expected at least one row")
    if X.shape[1] == 0:
        raise ValueError(f"data file {path!r} has no feature columns besides target {target_name!r}")
    y = _labels_to_int64(labels, path, target_name)
    return X, y


def _read_csv_table(path: str, target: str | int | None) -> tuple[np.ndarray, np.ndarray, str]:
    with open(path, newline="", encoding="utf-8-sig") as stream:
        rows = [(line_number, row) for line_number, row in enumerate(csv.reader(stream), start=1)
                if any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"CSV file {path!r} is empty; expected a header row and data rows")
    header_line, header = rows[0]
    header = [name.strip() for name in header]
    data_rows = rows[1:]
    if not data_rows:
        raise ValueError(f"CSV file {path!r} has a header row but no data rows")
    target_index = _column_index(header, target, path)

    values = np.empty((len(data_rows), len(header)), dtype=np.float64)
    for row_index, (line_number, row) in enumerate(data_rows):
        if len(row) != len(header):
            raise ValueError(
                f"CSV file {path!r} line {line_number} has {len(row)} cells; expected "
                f"{len(header)} as in the header on line {header_line}"
            )
        for column_index, cell in enumerate(row):
            values[row_index, column_index] = _parse_number(cell, path, line_number, header[column_index])
    labels = values[:, target_index]
    X = np.ascontiguousarray(np.delete(values, target_index, axis=1))
    return X, labels, header[target_index]


def _column_index(header: list[str], target: str | int | None, path: str) -> int:
    if target is None:
        return len(header) - 1
    if isinstance(target, str):
        matches = [index for index, name in enumerate(header) if name == target]
        if not matches:
            raise ValueError(f"CSV file {path!r} has no column named {target!r}; columns are {header}")
        if len(matches) > 1:
            raise ValueError(
                f"CSV file {path!r} has {len(matches)} columns named {target!r}; "
                "expected a unique target column name (or pass its index)"
            )
        return matches[0]
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not -len(header) <= target < len(header):
            raise ValueError(
                f"CSV file {path!r}: target column index {target} is out of range; "
                f"expected -{len(header)} <= index < {len(header)}"
            )
        return int(target) % len(header)
    raise ValueError(f"target={target!r} is a {type(target).__name__}; expected a column name, an int index or None")


def _parse_number(cell: str, path: str, line_number: int, column_name: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        shown = "an empty cell" if not text else f"non-numeric value {text!r}"
        raise ValueError(
            f"CSV file {path!r} line {line_number} column {column_name!r} holds {shown}; expected a number"
        ) from None
    if not math.isfinite(value):
        raise ValueError(
            f"CSV file {path!r} line {line_number} column {column_name!r} holds {text!r}; expected a finite number"
        )
    return value


def _read_npz_table(path: str, target: str | int | None) -> tuple[np.ndarray, np.ndarray, str]:
    with open(path, "rb") as stream:
        head = stream.read(6)
    if not head:
        raise ValueError(f"NPZ file {path!r} is empty; expected a numpy .npz archive")
    if head[:4] != b"PK\x03\x04" and head != b"\x93NUMPY":
        # np.load would guess from the first bytes and call a text file "pickled data"
        raise ValueError(f"NPZ file {path!r} is not a numpy .npz archive (a zip file written "
                         f"by numpy.savez); it starts with {head!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ValueError(f"NPZ file {path!r} could not be read as a numpy .npz archive: {error}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"NPZ file {path!r} holds a single array, not a .npz archive of named arrays")
    with archive:
        names = list(archive.files)
        if "X" not in names:
            raise ValueError(f"NPZ file {path!r} has no array named 'X'; arrays are {names}")
        features = _numeric_array(archive, "X", path)
        if features.ndim != 2:
            raise ValueError(f"NPZ file {path!r}: array 'X' has shape {features.shape}; expected 2-D (samples, features)")
        if target is None or isinstance(target, str):
            target_name = "y" if target is None else target
            if target_name == "X":
                raise ValueError(f"NPZ file {path!r}: target 'X' is the feature array; expected a separate label array")
            if target_name not in names:
                raise ValueError(f"NPZ file {path!r} has no array named {target_name!r}; arrays are {names}")
            labels = _numeric_array(archive, target_name, path)
            if labels.ndim != 1:
                raise ValueError(
                    f"NPZ file {path!r}: array {target_name!r} has shape {labels.shape}; expected 1-D labels"
                )
            X = features
        elif isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            n_columns = features.shape[1]
            if not -n_columns <= target < n_columns:
                raise ValueError(
                    f"NPZ file {path!r}: target column index {target} is out of range for 'X' with "
                    f"{n_columns} columns; expected -{n_columns} <= index < {n_columns}"
                )
            target_index = int(target) % n_columns
            target_name = f"X[:, {target_index}]"
            labels = features[:, target_index]
            X = np.delete(features, target_index, axis=1)
        else:
            raise ValueError(
                f"target={target!r} is a {type(target).__name__}; expected an array name, an int column index or None"
            )
    X = np.ascontiguousarray(X, dtype=np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"NPZ file {path!r}: the features hold NaN or infinite values; expected finite numbers")
    return X, labels, target_name


def _numeric_array(archive, name: str, path: str) -> np.ndarray:
    try:
        array = archive[name]
    except ValueError as error:  # object arrays need pickle, which is refused
        raise ValueError(f"NPZ file {path!r}: array {name!r} could not be loaded without pickle: {error}") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"NPZ file {path!r}: array {name!r} has dtype {array.dtype}; expected a numeric dtype")
    if np.iscomplexobj(array):
        raise ValueError(f"NPZ file {path!r}: array {name!r} has complex dtype {array.dtype}; expected real numbers")
    return array


def _labels_to_int64(labels: np.ndarray, path: str, target_name: str) -> np.ndarray:
    if np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
        y = labels.astype(np.int64)
    else:
        as_float = labels.astype(np.float64)
        bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
        if np.any(bad):
            first = int(np.argmax(bad))
            raise ValueError(
                f"data file {path!r}: target {target_name!r} holds {float(as_float[first])!r} in sample {first}; "
                "expected integer class labels"
            )
        y = as_float.astype(np.int64)
    if y.size and y.min() < 0:
        first = int(np.argmax(y < 0))
        raise ValueError(
            f"data file {path!r}: target {target_name!r} holds {int(y[first])} in sample {first}; "
            "expected non-negative class labels (0, 1, 2, ...)"
        )
    return y


def train_val_split(
    X: np.ndarray, y: np.ndarray, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle with a seeded permutation and split; return (X_train, y_train, X_val, y_val).

    The same (n_samples, val_fraction, seed) always gives the same split. The validation part
    has ``round(n_samples * val_fraction)`` samples and both parts have at least one. Not
    stratified.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"X has shape {X.shape}; expected 2-D (samples, features)")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y has shape {y.shape}; expected ({X.shape[0]},) to match X's rows")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r}; expected a number strictly between 0 and 1")
    n_samples = X.shape[0]
    n_val = int(round(n_samples * val_fraction))
    if not 1 <= n_val <= n_samples - 1:
        raise ValueError(
            f"val_fraction={val_fraction!r} of {n_samples} samples gives {n_val} validation samples; "
            "expected at least one sample in each part"
        )
    order = np.random.default_rng(seed).permutation(n_samples)
    val_rows, train_rows = order[:n_val], order[n_val:]
    return X[train_rows], y[train_rows], X[val_rows], y[val_rows]


def standardize(X_train: np.ndarray, *X_others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centre and scale every column by X_train's mean and standard deviation.

    Returns the transformed X_train followed by each of ``X_others`` transformed with the same
    statistics (so validation data never leaks into them). Constant columns are only centred.
    """
    X_train = np.asarray(X_train, dtype=np.float64)
    if X_train.ndim != 2 or X_train.shape[0] == 0:
        raise ValueError(f"X_train has shape {X_train.shape}; expected 2-D with at least one row")
    mean = X_train.mean(axis=0)
    scale = X_train.std(axis=0)
    scale[scale == 0.0] = 1.0
    results = [(X_train - mean) / scale]
    for position, X_other in enumerate(X_others):
        X_other = np.asarray(X_other, dtype=np.float64)
        if X_other.ndim != 2 or X_other.shape[1] != X_train.shape[1]:
            raise ValueError(
                f"X_others[{position}] has shape {X_other.shape}; expected 2-D with "
                f"{X_train.shape[1]} columns like X_train"
            )
        results.append((X_other - mean) / scale)
    return tuple(results)
