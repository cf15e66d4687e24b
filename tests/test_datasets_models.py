"""Tests for lrcore.demo.datasets (built-in digits, user CSV/NPZ tables, splits) and lrcore.demo.models.

Models are checked against central finite differences in float64 and by training the MLP on
digits with plain numpy gradient descent.
"""

from __future__ import annotations

import hashlib
import time
from importlib import resources

import numpy as np
import pytest

from lrcore.demo import datasets, models
from lrcore.demo.datasets import load_digits, load_table, standardize, train_val_split
from lrcore.demo.models import MLP, SoftmaxRegression, log_softmax

# ---------------------------------------------------------------- built-in digits


def test_digits_shape_dtype_and_range():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float64 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    assert np.bincount(y).min() >= 170  # roughly balanced: 174..183 per class


def test_digits_raw_file_holds_pixel_counts_0_to_16():
    data_file = resources.files("lrcore.demo") / "data" / "digits.npz"
    with data_file.open("rb") as stream, np.load(stream) as archive:
        assert sorted(archive.files) == ["X", "y"]
        pixels, labels = archive["X"], archive["y"]
    assert pixels.dtype == np.uint8 and labels.dtype == np.uint8
    assert pixels.min() == 0 and pixels.max() == 16
    assert labels.max() == 9
    X, y = load_digits()
    np.testing.assert_array_equal(X * 16, pixels)
    np.testing.assert_array_equal(y, labels)
    # Known content: first sample is a 0 (as in every copy of this data set).
    assert y[0] == 0
    assert list(pixels[0, :8]) == [0, 0, 5, 13, 9, 1, 0, 0]
    assert int(pixels.sum()) == 561718
    digest = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()
    assert digest == DIGITS_CONTENT_SHA256


# SHA-256 of X.tobytes() + y.tobytes() as extracted from scikit-learn 1.9.1's digits.csv.gz.
DIGITS_CONTENT_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def test_digits_licence_file_ships_beside_data():
    licence = (resources.files("lrcore.demo") / "data" / "LICENSE-digits.txt").read_text(encoding="utf-8")
    assert "CC BY 4.0" in licence and "Alpaydin" in licence and "BSD" in licence


# ---------------------------------------------------------------- load_table: CSV


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_target_by_name_index_and_default(tmp_path):
    path = write(tmp_path, "data.csv", "a,label,b\n1.5,0,2\n-3,2,4e1\n\n5,1,6\n")
    X, y = load_table(path, "label")
    np.testing.assert_array_equal(X, [[1.5, 2], [-3, 40], [5, 6]])
    np.testing.assert_array_equal(y, [0, 2, 1])
    assert X.dtype == np.float64 and y.dtype == np.int64
    X_by_index, y_by_index = load_table(path, 1)
    np.testing.assert_array_equal(X_by_index, X)
    np.testing.assert_array_equal(y_by_index, y)
    X_last, y_last = load_table(str(path), -1)
    np.testing.assert_array_equal(y_last, [2, 40, 6])
    np.testing.assert_array_equal(load_table(path)[1], y_last)  # None: last column


def test_csv_accepts_float_labels_spaces_and_bom(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffx , y\n 1 , 3.0\n2,0\n".encode("utf-8"))
    X, y = load_table(path, "y")
    np.testing.assert_array_equal(X, [[1], [2]])
    np.testing.assert_array_equal(y, [3, 0])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv.*does not exist"):
        load_table(tmp_path / "nope.csv", 0)
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        load_table(tmp_path, 0)


def test_unknown_suffix(tmp_path):
    path = write(tmp_path, "data.json", "{}")
    with pytest.raises(ValueError, match=r"data.json.*suffix '.json'.*expected '.csv' or '.npz'"):
        load_table(path, 0)


@pytest.mark.parametrize(
    "text, target, message",
    [
        ("", 0, r"empty.csv.*is empty"),
        ("\n  \n", 0, r"empty.csv.*is empty"),
        ("a,b\n", 0, r"empty.csv.*header row but no data rows"),
    ],
)
def test_csv_empty(tmp_path, text, target, message):
    path = write(tmp_path, "empty.csv", text)
    with pytest.raises(ValueError, match=message):
        load_table(path, target)


@pytest.mark.parametrize(
    "text, target, message",
    [
        ("a,b\n1,2\n3\n", "b", r"bad.csv.*line 3 has 1 cells; expected 2"),
        ("a,b\n1,2\n3,4,5\n", "b", r"bad.csv.*line 3 has 3 cells; expected 2"),
        ("a,b\n1,two\n", "b", r"bad.csv.*line 2 column 'b' holds non-numeric value 'two'; expected a number"),
        ("a,b\n1,\n", "b", r"bad.csv.*line 2 column 'b' holds an empty cell"),
        ("a,b\nnan,1\n", "b", r"bad.csv.*line 2 column 'a' holds 'nan'; expected a finite number"),
        ("a,b\n1,2\n", "label", r"bad.csv.*no column named 'label'; columns are \['a', 'b'\]"),
        ("a,b\n1,2\n", 2, r"bad.csv.*target column index 2 is out of range"),
        ("a,b\n1,2\n", -3, r"bad.csv.*target column index -3 is out of range"),
        ("a,a,b\n1,2,3\n", "a", r"bad.csv.*2 columns named 'a'"),
        ("a,b\n1,2.5\n", "b", r"bad.csv.*target 'b' holds 2.5 in sample 0; expected integer class labels"),
        ("a,b\n1,-1\n", "b", r"bad.csv.*target 'b' holds -1 in sample 0; expected non-negative"),
        ("b\n1\n", "b", r"bad.csv.*no feature columns besides target 'b'"),
        ("a,b\n1,2\n", 1.0, r"target=1.0 is a float; expected"),
    ],
)
def test_csv_errors_name_file_and_column(tmp_path, text, target, message):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError, match=message):
        load_table(path, target)


# ---------------------------------------------------------------- load_table: NPZ


def test_npz_with_X_and_y(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, X=np.arange(6, dtype=np.int32).reshape(3, 2), y=np.array([1, 0, 1], dtype=np.uint8))
    X, y = load_table(path)
    np.testing.assert_array_equal(X, [[0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(y, [1, 0, 1])
    assert X.dtype == np.float64 and y.dtype == np.int64 and X.flags.c_contiguous


def test_npz_target_by_array_name_and_column(tmp_path):
    path = tmp_path / "data.npz"
    features = np.array([[0.5, 2.0, 1.0], [1.5, 0.0, 3.0]])
    np.savez_compressed(path, X=features, labels=np.array([3.0, 1.0]))
    X, y = load_table(path, "labels")
    np.testing.assert_array_equal(X, features)
    np.testing.assert_array_equal(y, [3, 1])
    X, y = load_table(path, 1)
    np.testing.assert_array_equal(X, [[0.5, 1.0], [1.5, 3.0]])
    np.testing.assert_array_equal(y, [2, 0])


@pytest.mark.parametrize(
    "arrays, target, message",
    [
        ({"features": np.ones((2, 2)), "y": np.zeros(2)}, None, r"bad.npz.*no array named 'X'; arrays are"),
        ({"X": np.ones((2, 2))}, None, r"bad.npz.*no array named 'y'"),
        ({"X": np.ones((2, 2)), "y": np.zeros(2)}, "label", r"bad.npz.*no array named 'label'"),
        ({"X": np.ones((2, 2)), "y": np.zeros(2)}, "X", r"bad.npz.*target 'X' is the feature array"),
        ({"X": np.ones(4), "y": np.zeros(4)}, None, r"bad.npz.*'X' has shape \(4,\); expected 2-D"),
        ({"X": np.ones((2, 2)), "y": np.zeros((2, 1))}, None, r"bad.npz.*'y' has shape \(2, 1\); expected 1-D"),
        ({"X": np.ones((3, 2)), "y": np.zeros(2)}, None, r"bad.npz.*X has 3 rows but target 'y' has 2"),
        ({"X": np.array([["a", "b"]]), "y": np.zeros(1)}, None, r"bad.npz.*'X' has dtype <U1; expected a numeric"),
        ({"X": np.full((1, 2), np.nan), "y": np.zeros(1)}, None, r"bad.npz.*NaN or infinite"),
        ({"X": np.ones((2, 2)), "y": np.array([0.0, 0.5])}, None, r"bad.npz.*target 'y' holds 0.5 in sample 1"),
        ({"X": np.ones((2, 2)), "y": np.zeros(2)}, 5, r"bad.npz.*index 5 is out of range for 'X' with 2 columns"),
        ({"X": np.ones((0, 2)), "y": np.zeros(0)}, None, r"bad.npz.*holds no samples"),
    ],
)
def test_npz_errors_name_file_and_array(tmp_path, arrays, target, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_table(path, target)


def test_npz_corrupt_or_empty_file(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.npz' is empty; expected a numpy .npz archive"):
        load_table(empty)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    # a text file is called what it is (np.load alone would call it "pickled data")
    with pytest.raises(ValueError, match=r"garbage.npz' is not a numpy .npz archive \(a zip "
                                         r"file written by numpy.savez\); it starts with "
                                         r"b'this i'"):
        load_table(garbage)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 but then nothing of a zip archive")
    with pytest.raises(ValueError, match=r"broken.npz.*could not be read"):
        load_table(broken)


def test_npz_object_array_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, X=np.array([[1, None]], dtype=object), y=np.zeros(1))
    with pytest.raises(ValueError, match=r"objects.npz.*'X' could not be loaded without pickle"):
        load_table(path)


# ---------------------------------------------------------------- split and standardize


def test_train_val_split_is_a_deterministic_permutation():
    X = np.arange(50, dtype=np.float64).reshape(25, 2)
    y = np.arange(25)
    X_train, y_train, X_val, y_val = train_val_split(X, y, val_fraction=0.2, seed=3)
    assert X_train.shape == (20, 2) and X_val.shape == (5, 2)
    np.testing.assert_array_equal(X_train[:, 0], 2 * y_train)  # rows stay paired with labels
    np.testing.assert_array_equal(np.sort(np.concatenate([y_train, y_val])), y)
    again = train_val_split(X, y, val_fraction=0.2, seed=3)
    for first, second in zip((X_train, y_train, X_val, y_val), again):
        np.testing.assert_array_equal(first, second)
    other_seed = train_val_split(X, y, val_fraction=0.2, seed=4)
    assert not np.array_equal(y_val, other_seed[3])
    assert not np.array_equal(y_train, y[:20])  # actually shuffled


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 0.01, 0.99])
def test_train_val_split_rejects_bad_fractions(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(np.zeros((10, 2)), np.zeros(10, dtype=np.int64), val_fraction=val_fraction)


def test_train_val_split_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"y has shape \(9,\); expected \(10,\)"):
        train_val_split(np.zeros((10, 2)), np.zeros(9))


def test_standardize_uses_training_statistics():
    X_train = np.array([[1.0, 5.0], [3.0, 5.0]])
    X_val = np.array([[2.0, 6.0]])
    train_scaled, val_scaled = standardize(X_train, X_val)
    np.testing.assert_allclose(train_scaled, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(val_scaled, [[0.0, 1.0]])  # constant column: centred, not scaled
    with pytest.raises(ValueError, match=r"X_others\[0\] has shape \(1, 3\); expected 2-D with 2 columns"):
        standardize(X_train, np.zeros((1, 3)))


# ---------------------------------------------------------------- models: layout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_params_are_views_into_one_flat_buffer(dtype):
    model = MLP(5, 7, 3, dtype=dtype, seed=1)
    assert model.param_names == ("hidden_weight", "hidden_bias", "output_weight", "output_bias")
    assert [p.shape for p in model.params] == [(5, 7), (7,), (7, 3), (3,)]
    assert model.flat_params.dtype == dtype and model.flat_params.flags.c_contiguous
    assert model.n_params == 5 * 7 + 7 + 7 * 3 + 3 == model.flat_params.size
    for param in model.params:
        assert param.dtype == dtype and param.flags.c_contiguous
        assert np.shares_memory(param, model.flat_params)
    model.params[1][...] = 42.0  # in-place update through a view reaches the flat buffer
    assert np.all(model.flat_params[35:42] == 42.0)
    assert model.hidden_bias is model.params[1]
    grads = model.new_grads()
    assert [g.shape for g in grads] == [p.shape for p in model.params]
    assert all(g.dtype == dtype and not np.shares_memory(g, model.flat_params) for g in grads)


def test_seeded_initialisation_is_reproducible():
    first, second, other = (SoftmaxRegression(4, 3, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(first.flat_params, second.flat_params)
    assert not np.array_equal(first.flat_params, other.flat_params)
    np.testing.assert_array_equal(MLP(4, 5, 3, seed=2).flat_params, MLP(4, 5, 3, seed=2).flat_params)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MLP(4, 5, 3, dtype=np.int32), r"dtype=.*expected float32 or float64"),
        (lambda: MLP(4, 5, 3, dtype=np.complex64), r"dtype=.*expected float32 or float64"),
        (lambda: MLP(0, 5, 3), r"n_features=0; expected an int >= 1"),
        (lambda: MLP(4, 0, 3), r"n_hidden=0; expected an int >= 1"),
        (lambda: SoftmaxRegression(4, 1), r"n_classes=1; expected an int >= 2"),
        (lambda: MLP(4, 5, 3, activation="sigmoid"), r"activation='sigmoid'; expected one of"),
    ],
)
def test_model_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_loss_and_grad_input_errors():
    model = SoftmaxRegression(3, 4)
    X = np.zeros((2, 3))
    y = np.array([0, 3])
    grads = model.new_grads()
    with pytest.raises(ValueError, match=r"X has shape \(2, 5\); expected \(n_samples, 3\)"):
        model.loss_and_grad(np.zeros((2, 5)), y, grads)
    with pytest.raises(ValueError, match=r"y has shape \(3,\); expected \(2,\)"):
        model.loss_and_grad(X, np.array([0, 1, 2]), grads)
    with pytest.raises(ValueError, match=r"y holds label 4; expected labels in 0..3"):
        model.loss_and_grad(X, np.array([0, 4]), grads)
    with pytest.raises(ValueError, match=r"y has dtype float64; expected integer"):
        model.loss_and_grad(X, np.array([0.0, 1.0]), grads)
    with pytest.raises(ValueError, match=r"grads has 1 arrays; expected 2"):
        model.loss_and_grad(X, y, grads[:1])
    with pytest.raises(ValueError, match=r"grads entry for 'bias' is shape \(4,\) dtype float32"):
        model.loss_and_grad(X, y, [grads[0], np.zeros(4, dtype=np.float32)])


# ---------------------------------------------------------------- models: numerics


def test_log_softmax_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])
    result = log_softmax(logits)
    assert np.all(np.isfinite(result))
    np.testing.assert_allclose(result[0], [0.0, -1000.0, -2000.0])
    np.testing.assert_allclose(result[1], np.log([1 / 3] * 3))


def test_loss_matches_direct_cross_entropy():
    rng = np.random.default_rng(0)
    model = MLP(6, 8, 4, seed=3, activation="tanh")
    X = rng.normal(size=(9, 6))
    y = rng.integers(0, 4, size=9)
    logits = model.logits(X)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(probabilities[np.arange(9), y]))
    assert model.loss(X, y) == pytest.approx(expected, rel=1e-12)
    assert model.loss_and_grad(X, y, model.new_grads()) == pytest.approx(expected, rel=1e-12)


def finite_difference_gradient(model, X, y, step=1e-6):
    """Central differences of the loss with respect to every element of flat_params."""
    gradient = np.empty_like(model.flat_params)
    for index in range(model.flat_params.size):
        saved = model.flat_params[index]
        model.flat_params[index] = saved + step
        loss_plus = model.loss(X, y)
        model.flat_params[index] = saved - step
        loss_minus = model.loss(X, y)
        model.flat_params[index] = saved
        gradient[index] = (loss_plus - loss_minus) / (2 * step)
    return gradient


def analytic_gradient(model, X, y):
    grads = [np.full_like(p, np.nan) for p in model.params]  # NaN: catches elements never written
    model.loss_and_grad(X, y, grads)
    return np.concatenate([g.ravel() for g in grads])


MODEL_FACTORIES = {
    "softmax": lambda seed: SoftmaxRegression(5, 4, dtype=np.float64, seed=seed),
    "mlp_relu": lambda seed: MLP(5, 6, 4, dtype=np.float64, seed=seed, activation="relu"),
    "mlp_tanh": lambda seed: MLP(5, 6, 4, dtype=np.float64, seed=seed, activation="tanh"),
}


@pytest.mark.parametrize("model_name", sorted(MODEL_FACTORIES))
@pytest.mark.parametrize("point", range(4))
def test_gradient_matches_finite_differences(model_name, point):
    rng = np.random.default_rng(100 + point)
    model = MODEL_FACTORIES[model_name](point)
    # Move away from the initialisation (non-zero biases, larger weights) so every term matters.
    model.flat_params[...] = rng.normal(0.0, 0.7, size=model.n_params)
    X = rng.normal(size=(11, 5))
    y = rng.integers(0, 4, size=11)
    expected = finite_difference_gradient(model, X, y)
    actual = analytic_gradient(model, X, y)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("model_name", sorted(MODEL_FACTORIES))
def test_float32_gradient_matches_float64(model_name):
    rng = np.random.default_rng(5)
    model64 = MODEL_FACTORIES[model_name](0)
    model32 = _float32_twin(model64)
    model32.flat_params[...] = model64.flat_params
    X = rng.normal(size=(8, 5))
    y = rng.integers(0, 4, size=8)
    grads32 = model32.new_grads()
    loss32 = model32.loss_and_grad(X, y, grads32)
    assert all(g.dtype == np.float32 for g in grads32)
    assert loss32 == pytest.approx(model64.loss(X, y), rel=1e-5)
    np.testing.assert_allclose(np.concatenate([g.ravel() for g in grads32]),
                               analytic_gradient(model64, X, y), rtol=1e-4, atol=1e-6)


def _float32_twin(model):
    if isinstance(model, MLP):
        return MLP(model.n_features, model.n_hidden, model.n_classes, dtype=np.float32,
                   activation=model.activation)
    return SoftmaxRegression(model.n_features, model.n_classes, dtype=np.float32)


def test_predict_and_accuracy():
    model = SoftmaxRegression(2, 3)
    model.weight[...] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    model.bias[...] = [0.0, 0.0, 0.5]
    X = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0], [3.0, 1.0]])
    np.testing.assert_array_equal(model.predict(X), [0, 1, 2, 0])
    assert model.predict(X).dtype == np.int64
    assert model.accuracy(X, np.array([0, 1, 2, 1])) == 0.75


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mlp_learns_digits_with_plain_gradient_descent(dtype):
    X, y = load_digits()
    X_train, y_train, X_val, y_val = train_val_split(X, y, val_fraction=0.2, seed=0)
    model = MLP(64, 32, 10, dtype=dtype, seed=0)
    grads = model.new_grads()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    initial_loss = model.loss(X_train, y_train)
    for _epoch in range(10):
        order = rng.permutation(y_train.size)
        for start in range(0, y_train.size, 32):
            batch = order[start:start + 32]
            model.loss_and_grad(X_train[batch], y_train[batch], grads)
            for param, grad in zip(model.params, grads):
                param -= 0.1 * grad  # in place: the flat buffer sees it
    elapsed = time.perf_counter() - started
    assert model.loss(X_train, y_train) < 0.5 * initial_loss
    assert model.accuracy(X_val, y_val) > 0.90
    assert elapsed < 10.0, f"10 epochs took {elapsed:.1f}s; expected a few seconds"


def test_modules_have_docstrings():
    for module in (datasets, models):
        assert module.__doc__ and 2 <= len(module.__doc__.strip().splitlines()) <= 4
