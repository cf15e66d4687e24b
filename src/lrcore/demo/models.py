"""Small numpy classifiers whose parameters live in one flat buffer an optimizer updates in place.

``SoftmaxRegression`` and a one-hidden-layer ``MLP``, both trained on mean cross-entropy with a
numerically stable log-softmax. Used by ``lrcore train`` and the tests.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SoftmaxRegression", "MLP", "log_softmax"]

try:
    import ml_dtypes as _ml
    _BFLOAT16 = np.dtype(_ml.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a dependency of lrcore
    _BFLOAT16 = None

#: Storage types computed in float32 (see the module docstring).
HALF_DTYPES = tuple(d for d in (_BFLOAT16, np.dtype(np.float16)) if d is not None)
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64)) + HALF_DTYPES
ACTIVATIONS = ("relu", "tanh")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, stable for large logits (subtracts each row's maximum first)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class FlatParameterModel:
    """Base class: named parameter arrays carved out of one contiguous 1-D buffer.

    ``flat_params`` is that buffer; ``params`` is a list of C-contiguous views into it, one per
    name in ``param_names``, in order and with no gaps. Updating ``params[i]`` in place therefore
    updates ``flat_params`` and vice versa; never rebind them (``model.params[0] = ...``) or the
    model stops seeing the optimizer's work. ``new_grads()`` returns a list with the same layout.

    Element types: float64 and float32 parameters are computed in their own type. bfloat16
    (``ml_dtypes.bfloat16``) and float16 parameters are *stored* in that type and computed in
    float32: every forward and backward pass widens the parameters to float32 (exact), runs
    the float32 arithmetic, and rounds each gradient element once, to nearest (ties to even),
    into the caller's gradient buffer of the parameters' type (a float16 gradient beyond
    65504 becomes Inf). Initial weights are the same draws, rounded to the storage type. The
    optimizer then updates the half-precision buffers in place.
    """

    param_names: tuple[str, ...] = ()

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype, n_features: int, n_classes: int):
        self.dtype = _check_dtype(dtype)
        #: the type the forward and backward passes compute in (float32 for half storage)
        self.compute_dtype = np.dtype(np.float32) if self.dtype in HALF_DTYPES else self.dtype
        self.n_features = _check_positive_int("n_features", n_features)
        self.n_classes = _check_positive_int("n_classes", n_classes, minimum=2)
        self.param_names = tuple(shapes)
        self.param_shapes = dict(shapes)
        self.flat_params = np.zeros(_total_size(shapes), dtype=self.dtype)
        self.params = _views_into(self.flat_params, shapes)
        for name, view in zip(self.param_names, self.params):
            setattr(self, name, view)

    @property
    def n_params(self) -> int:
        """Total number of scalar parameters (the length of ``flat_params``)."""
        return self.flat_params.size

    def new_grads(self) -> list[np.ndarray]:
        """A zeroed gradient list laid out like ``params`` (views into one fresh flat buffer)."""
        return _views_into(np.zeros_like(self.flat_params), self.param_shapes)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Class scores, shape (n_samples, n_classes)."""
        return self._forward(self._check_features(X), self._compute_params())[0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most likely class of every row of X, int64."""
        return self.logits(X).argmax(axis=1).astype(np.int64)

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        """Fraction of rows of X whose predicted class equals y."""
        X = self._check_features(X)
        y = self._check_labels(y, X.shape[0])
        return float(np.mean(self._forward(X, self._compute_params())[0].argmax(axis=1) == y))

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy of the model on (X, y), without gradients."""
        X = self._check_features(X)
        y = self._check_labels(y, X.shape[0])
        logits = self._forward(X, self._compute_params())[0]
        return float(-log_softmax(logits)[np.arange(y.size), y].mean())

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray, grads: list[np.ndarray]) -> float:
        """Return the mean cross-entropy on (X, y) and write its gradient into ``grads`` in place.

        ``grads`` must match ``params`` in length, shapes and dtype (``new_grads()`` makes one);
        every element is overwritten. With bfloat16 or float16 parameters the gradient is
        computed in float32 and each element rounded to nearest into ``grads``.
        """
        X = self._check_features(X)
        y = self._check_labels(y, X.shape[0])
        self._check_grads(grads)
        params = self._compute_params()
        out = grads if self.compute_dtype == self.dtype else \
            [np.empty(g.shape, self.compute_dtype) for g in grads]
        logits, cache = self._forward(X, params)
        log_probs = log_softmax(logits)
        rows = np.arange(y.size)
        loss = -log_probs[rows, y].mean()
        # d(mean CE)/d(logits) = (softmax - onehot) / n_samples
        grad_logits = np.exp(log_probs)
        grad_logits[rows, y] -= 1.0
        grad_logits /= y.size
        self._backward(grad_logits, cache, out, params)
        if out is not grads:
            for g, g32 in zip(grads, out):
                g[...] = g32          # numpy's cast: round to nearest, ties to even
        return float(loss)

    def _compute_params(self) -> list[np.ndarray]:
        """The parameters in the compute type: the views themselves, or float32 copies
        widened from half-precision storage."""
        if self.compute_dtype == self.dtype:
            return self.params
        return [p.astype(self.compute_dtype) for p in self.params]

    def _forward(self, X: np.ndarray, params: list[np.ndarray]):
        raise NotImplementedError

    def _backward(self, grad_logits: np.ndarray, cache, grads: list[np.ndarray],
                  params: list[np.ndarray]) -> None:
        raise NotImplementedError

    def _check_features(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X has shape {X.shape}; expected (n_samples, {self.n_features})")
        if X.shape[0] == 0:
            raise ValueError("X has 0 rows; expected at least one sample")
        return X.astype(self.compute_dtype, copy=False)

    def _check_labels(self, y, n_samples: int) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n_samples:
            raise ValueError(f"y has shape {y.shape}; expected ({n_samples},) to match the rows of X")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y has dtype {y.dtype}; expected integer class labels")
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            bad = y[(y < 0) | (y >= self.n_classes)][0]
            raise ValueError(f"y holds label {int(bad)}; expected labels in 0..{self.n_classes - 1}")
        return y.astype(np.intp, copy=False)

    def _check_grads(self, grads) -> None:
        if len(grads) != len(self.params):
            raise ValueError(f"grads has {len(grads)} arrays; expected {len(self.params)} matching params {self.param_names}")
        for name, grad, param in zip(self.param_names, grads, self.params):
            if not isinstance(grad, np.ndarray) or grad.shape != param.shape or grad.dtype != param.dtype:
                shown = f"shape {grad.shape} dtype {grad.dtype}" if isinstance(grad, np.ndarray) else type(grad).__name__
                raise ValueError(
                    f"grads entry for {name!r} is {shown}; expected an ndarray of shape {param.shape} dtype {param.dtype}"
                )
            if not grad.flags.writeable:
                raise ValueError(f"grads entry for {name!r} is read-only; expected a writeable array")


class SoftmaxRegression(FlatParameterModel):
    """Multinomial logistic regression: logits = X @ weight + bias.

    Parameters, in ``params`` order: ``weight`` (n_features, n_classes), ``bias`` (n_classes,).
    Weights start as N(0, 0.01^2) draws from ``seed``; the bias starts at zero.
    """

    def __init__(self, n_features: int, n_classes: int, dtype=np.float64, seed: int = 0):
        super().__init__(
            {"weight": (n_features, n_classes), "bias": (n_classes,)}, dtype, n_features, n_classes
        )
        rng = np.random.default_rng(seed)
        self.weight[...] = rng.normal(0.0, 0.01, size=self.weight.shape)

    def _forward(self, X, params):
        weight, bias = params
        return X @ weight + bias, X

    def _backward(self, grad_logits, X, grads, params):
        grad_weight, grad_bias = grads
        np.matmul(X.T, grad_logits, out=grad_weight)
        grad_bias[...] = grad_logits.sum(axis=0)


class MLP(FlatParameterModel):
    """One hidden layer: logits = act(X @ hidden_weight + hidden_bias) @ output_weight + output_bias.

    ``activation`` is ``"relu"`` (default) or ``"tanh"``. Parameters, in ``params`` order:
    ``hidden_weight`` (n_features, n_hidden), ``hidden_bias`` (n_hidden,), ``output_weight``
    (n_hidden, n_classes), ``output_bias`` (n_classes,). Weights start as scaled normal draws
    from ``seed`` (He scaling for ReLU, LeCun for tanh); biases start at zero.
    """

    def __init__(self, n_features: int, n_hidden: int, n_classes: int, dtype=np.float64, seed: int = 0,
                 activation: str = "relu"):
        n_hidden = _check_positive_int("n_hidden", n_hidden)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; expected one of {ACTIVATIONS}")
        super().__init__(
            {
                "hidden_weight": (n_features, n_hidden),
                "hidden_bias": (n_hidden,),
                "output_weight": (n_hidden, n_classes),
                "output_bias": (n_classes,),
            },
            dtype, n_features, n_classes,
        )
        self.n_hidden = n_hidden
        self.activation = activation
        rng = np.random.default_rng(seed)
        gain = 2.0 if activation == "relu" else 1.0
        self.hidden_weight[...] = rng.normal(0.0, np.sqrt(gain / self.n_features), size=self.hidden_weight.shape)
        self.output_weight[...] = rng.normal(0.0, np.sqrt(1.0 / n_hidden), size=self.output_weight.shape)

    def _forward(self, X, params):
        hidden_weight, hidden_bias, output_weight, output_bias = params
        pre_activation = X @ hidden_weight + hidden_bias
        if self.activation == "relu":
            hidden = np.maximum(pre_activation, 0)
        else:
            hidden = np.tanh(pre_activation)
        return hidden @ output_weight + output_bias, (X, pre_activation, hidden)

    def _backward(self, grad_logits, cache, grads, params):
        X, pre_activation, hidden = cache
        grad_hidden_weight, grad_hidden_bias, grad_output_weight, grad_output_bias = grads
        np.matmul(hidden.T, grad_logits, out=grad_output_weight)
        grad_output_bias[...] = grad_logits.sum(axis=0)
        grad_hidden = grad_logits @ params[2].T
        if self.activation == "relu":
            grad_hidden *= pre_activation > 0
        else:
            grad_hidden *= 1 - hidden * hidden
        np.matmul(X.T, grad_hidden, out=grad_hidden_weight)
        grad_hidden_bias[...] = grad_hidden.sum(axis=0)


def _check_dtype(dtype) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected float32 or float64, or bfloat16 or float16 "
                         f"(stored in that type, computed in float32)")
    return resolved


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an int >= {minimum}")
    return int(value)


def _total_size(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(shape)) for shape in shapes.values())


def _views_into(flat: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> list[np.ndarray]:
    views, offset = [], 0
    for shape in shapes.values():
        size = int(np.prod(shape))
        views.append(flat[offset:offset + size].reshape(shape))
        offset += size
    return views
