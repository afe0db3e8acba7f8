"""LSTM over a window of model-input rows (Keras 3 on TensorFlow), served by one
XLA-compiled function.

One prediction reads ``window`` consecutive rows of `models.dataset.model_inputs`
(oldest first) and gives the probabilities of down / flat / up for the last row.
``fit`` takes time-ordered rows ``X (n, f)`` and labels ``y (n,)`` and builds the
sliding windows itself: sample i is rows ``i-window+1 .. i`` labelled ``y[i]``, so
the first ``window - 1`` rows give no sample. ``predict_proba`` takes windows
``(m, window, f)``, as the model worker holds them; ``predict_sequence`` takes rows
``(n, f)`` and returns ``(n, 3)`` aligned with them (NaN for the first ``window - 1``
rows), for training reports and evaluation. Rows are consecutive bars as the
caller gives them: a window across a gap in the data spans more time.

Inputs are standardised with the mean and standard deviation of the training rows
(a constant column is divided by 1), stored in ``params.json`` next to ``model.keras``.

Serving: Keras ``model.predict`` costs 50-130 ms per call whatever the batch (it
builds a data pipeline every call), eager ``model(x)`` about as much. Here the Keras
model, with the standardisation in front of it, is wrapped in
``tf.function(jit_compile=True)``, traced once per batch size into an XLA-compiled
concrete function, and that concrete function is called directly (tf.function's
own dispatch adds about 0.2 ms a call): measured on this 2-core machine, window 32 x
16 features, LSTM(32), p50 0.16 ms at batch 1, 0.8 ms at 64, 2.4 ms at 256, checks
included. Compiling costs about 0.5 s per batch size, so `warmup` compiles the sizes
the caller will use (`load` takes them), and inputs longer than ``CHUNK`` windows go
through in chunks of ``CHUNK``, the last one padded, so evaluation compiles one
shape only. LiteRT measured 0.12 ms at batch 1 and 0.66 at 64 (shared/MEASUREMENTS.md),
the compiled function alone 0.12 and 0.60 here: no gain for a dependency and a converter.

TensorFlow is imported lazily, on the first fit/predict/load, never when
``models`` is imported: importing it costs 4-8 s, which processes that don't run
the LSTM should not pay. Its intra- and inter-op thread pools are set to 1 before
its runtime starts (as fast or faster on this 2-core machine, and it keeps a busy
neighbour from wrecking the p99); if another part of the process started the
runtime first, its settings stay.

Missing values are refused (ValueError), in ``fit`` and in every predict, like the
tree models (see models/forest.py): a NaN input means warm-up or a broken feed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.tfruntime import tensorflow

from models.forest import N_CLASSES, check_y

DEFAULTS = dict(window=32, units=32, epochs=5, batch_size=64, learning_rate=1e-3, dropout=0.1)
KERAS_FILE = "model.keras"
PARAMS = "params.json"
CHUNK = 256                 # longest batch sent to the compiled function at once
XLA_FIT_STEPS = 1000        # training steps from which fit compiles its step with XLA

def devices() -> list[str]:
    """TensorFlow's GPUs by name, empty when it runs on the CPU only (for reports)."""
    return [d.name for d in tensorflow().config.list_physical_devices("GPU")]


def _finite(X: np.ndarray, what: str) -> None:
    if not np.isfinite(X).all():
        bad = sorted({int(j) for j in np.nonzero(~np.isfinite(X))[-1]})
        raise ValueError(f"{what} contains NaN or infinity (feature columns {bad}): the LSTM "
                         "refuses missing values; drop warm-up rows before training or predicting")


def check_rows(X, n_features: int | None = None) -> np.ndarray:
    """2-D float64 rows (time x features), all finite."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows x features), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, the model was trained on {n_features}")
    _finite(X, "X")
    return X


def check_windows(X, window: int, n_features: int) -> np.ndarray:
    """3-D float64 windows (batch x window x features), all finite."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3 or X.shape[1:] != (window, n_features):
        raise ValueError(f"X must be windows of shape (batch, {window}, {n_features}), "
                         f"got shape {X.shape}")
    _finite(X, "X")
    return X


def windows(X: np.ndarray, window: int) -> np.ndarray:
    """Rows (n, f) -> the (n - window + 1, window, f) read-only view of every window."""
    return np.lib.stride_tricks.sliding_window_view(X, window, axis=0).transpose(0, 2, 1)


class LSTMModel:
    """LSTM(units) -> dropout -> Dense(3, softmax) over ``window`` rows of model inputs."""

    def __init__(self, **params):
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown LSTM parameters: {sorted(unknown)}")
        self.params = {**DEFAULTS, **params}
        for name in ("window", "units", "epochs", "batch_size"):
            if int(self.params[name]) != self.params[name] or self.params[name] < 1:
                raise ValueError(f"LSTM parameter {name} must be a positive integer, "
                                 f"got {self.params[name]!r}")
        if not 0.0 <= self.params["dropout"] < 1.0:
            raise ValueError(f"LSTM dropout must be in [0, 1), got {self.params['dropout']!r}")
        self.window = int(self.params["window"])    # rows of history one prediction needs
        self.model = None               # the keras.Model after fit or load
        self.n_features: int | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self._fn = None                 # the forward pass as tf.function(jit_compile=True)
        self._compiled: dict = {}       # batch size -> its traced, XLA-compiled function

    # ---- training -------------------------------------------------------------------

    def _build(self, n_features: int):
        import keras
        p = self.params
        return keras.Sequential([
            keras.Input((self.window, n_features), dtype="float32"),
            keras.layers.LSTM(int(p["units"])),
            keras.layers.Dropout(float(p["dropout"])),
            keras.layers.Dense(N_CLASSES, activation="softmax"),
        ], name="lstm")

    def fit(self, X, y, seed: int = 0, verbose: int = 0) -> "LSTMModel":
        """Train on time-ordered rows ``X (n, f)`` and their labels ``y (n,)``;
        sample i is rows i-window+1..i labelled y[i]."""
        tensorflow()
        import keras
        X = check_rows(X)
        y = check_y(y, len(X))
        if len(X) < self.window:
            raise ValueError(f"{len(X)} rows are fewer than one window of {self.window}")
        self.n_features = X.shape[1]
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.std = np.where(std > 0.0, std, 1.0)
        Z = windows(self._scale(X), self.window)
        keras.utils.set_random_seed(seed)
        model = self._build(self.n_features)
        # Keras' "auto" leaves XLA off for an LSTM. On: a training step about 1.4x
        # faster (4.3 against 6.2 ms at batch 64, window 32), but about 3 s more to
        # compile it: worth it from about a thousand steps on, not for a small fit
        steps = -(-len(Z) // int(self.params["batch_size"])) * int(self.params["epochs"])
        model.compile(optimizer=keras.optimizers.Adam(float(self.params["learning_rate"])),
                      loss="sparse_categorical_crossentropy", jit_compile=steps >= XLA_FIT_STEPS)
        model.fit(np.ascontiguousarray(Z), y[self.window - 1:],
                  epochs=int(self.params["epochs"]), batch_size=int(self.params["batch_size"]),
                  shuffle=True, verbose=verbose)
        self._set_model(model)
        return self

    # ---- inference ------------------------------------------------------------------

    def _scale(self, X: np.ndarray) -> np.ndarray:
        """Standardised float32 inputs, for training and the direct (eager) call; the
        compiled function does the same arithmetic inside XLA."""
        return ((X - self.mean) / self.std).astype(np.float32)

    def _set_model(self, model) -> None:
        """Keep the Keras model and wrap its forward pass, standardisation included, in
        one XLA-compiled function of float64 windows: XLA fuses the scaling into the
        network (in numpy it cost 0.14 ms at batch 64, a quarter of the forward pass)."""
        tf = tensorflow()
        self.model = model
        mean = tf.constant(self.mean, tf.float64)
        std = tf.constant(self.std, tf.float64)
        self._fn = tf.function(
            lambda x: model(tf.cast((x - mean) / std, tf.float32), training=False),
            jit_compile=True)
        self._compiled = {}

    def _forward(self, W: np.ndarray) -> np.ndarray:
        """Raw float64 windows -> the network's float32 output. The concrete
        function of this batch size is traced once and then called directly:
        about 0.1 ms at batch 1 against 0.35 through tf.function's dispatch, which
        checks its trace cache on every call."""
        tf = tensorflow()
        fn = self._compiled.get(len(W))
        if fn is None:
            fn = self._fn.get_concrete_function(
                tf.TensorSpec((len(W), self.window, self.n_features), tf.float64))
            self._compiled[len(W)] = fn
        return fn(tf.constant(W)).numpy()

    def _ready(self) -> None:
        if self.model is None:
            raise RuntimeError("LSTMModel: fit or load it first")

    def _run(self, W: np.ndarray) -> np.ndarray:
        """Finite float64 windows (a view is fine) -> (m, 3) float64 probabilities,
        through the compiled function; more than CHUNK windows go in chunks of
        CHUNK, the last one padded, so that only one more shape is ever compiled."""
        m = len(W)
        if m <= CHUNK:
            p = self._forward(np.ascontiguousarray(W))
        else:
            parts = []
            for start in range(0, m, CHUNK):
                part = np.ascontiguousarray(W[start:start + CHUNK])
                k = len(part)
                if k < CHUNK:
                    part = np.concatenate([part, np.repeat(part[-1:], CHUNK - k, axis=0)])
                parts.append(self._forward(part)[:k])
            p = np.concatenate(parts)
        p = p.astype(np.float64)
        return p / p.sum(axis=1, keepdims=True)     # rows sum to 1 in float64 too

    def predict_proba(self, X) -> np.ndarray:
        """Windows ``(m, window, f)``, oldest row first -> (m, 3) float64
        probabilities of down / flat / up for each window's last row."""
        self._ready()
        X = check_windows(X, self.window, self.n_features)
        return self._run(X)

    def predict_sequence(self, X) -> np.ndarray:
        """Time-ordered rows ``(n, f)`` -> (n, 3), row i predicted from rows
        i-window+1..i; NaN for the first window-1 rows (no full window)."""
        self._ready()
        X = check_rows(X, self.n_features)
        out = np.full((len(X), N_CLASSES), np.nan)
        if len(X) >= self.window:
            out[self.window - 1:] = self._run(windows(X, self.window))
        return out

    def predict_direct(self, X) -> np.ndarray:
        """The Keras model called directly (eager), for checks and benchmarks: slower
        than `predict_proba` but the same model; not a serving path."""
        self._ready()
        X = check_windows(X, self.window, self.n_features)
        p = self.model(self._scale(X), training=False).numpy().astype(np.float64)
        return p / p.sum(axis=1, keepdims=True)

    def warmup(self, batch_sizes=(1,)) -> None:
        """Compile the forward pass for these batch sizes now (about 0.5 s each) rather
        than on the first live call."""
        self._ready()
        for b in batch_sizes:
            z = np.zeros((min(int(b), CHUNK), self.window, self.n_features))
            self._forward(z)

    # ---- artifacts ------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """``model.keras`` (Keras' own format: architecture and weights, no pickle) and
        ``params.json`` (parameters, feature count, scaler) into an existing directory."""
        self._ready()
        directory = Path(directory)
        self.model.save(directory / KERAS_FILE)
        meta = {"model": "lstm", "params": self.params, "n_features": self.n_features,
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}
        (directory / PARAMS).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, warmup=(1,)) -> "LSTMModel":
        """Load a saved model and compile it for the batch sizes in ``warmup``."""
        directory = Path(directory)
        meta = json.loads((directory / PARAMS).read_text())
        model = cls(**meta["params"])
        model.n_features = int(meta["n_features"])
        model.mean = np.asarray(meta["mean"], dtype=np.float64)
        model.std = np.asarray(meta["std"], dtype=np.float64)
        if model.mean.shape != (model.n_features,) or model.std.shape != (model.n_features,):
            raise ValueError(f"{directory / PARAMS}: scaler does not have {model.n_features} "
                             "features")
        tensorflow()
        import keras
        net = keras.models.load_model(directory / KERAS_FILE, compile=False)
        if tuple(net.input_shape[1:]) != (model.window, model.n_features):
            raise ValueError(f"{directory / KERAS_FILE}: input shape {net.input_shape} does not "
                             f"match window {model.window} x {model.n_features} features")
        model._set_model(net)
        model.warmup(warmup)
        return model

