"""LSTM on a slice of real candles' model inputs: 3-class probabilities, the compiled
serving path equal to the Keras model called directly, save/load identical, seeds
fixed, predict_sequence aligned with the rows, NaN refused, TensorFlow not imported
with models/."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import data_file

ROOT = Path(__file__).resolve().parent.parent
CANDLES = data_file("candles/binance_BTC-USDT_5m.csv")
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                       reason="tensorflow is not installed: the LSTM needs it "
                              "(pip install tensorflow-cpu)"),
]

ROWS = 3000
HORIZON = 5
THRESHOLD = 0.001          # |5-bar return| under 0.1 % is "flat"
TRAIN = 2000
PARAMS = dict(window=16, units=16, epochs=1, batch_size=64)
W = PARAMS["window"]


@pytest.fixture(scope="module")
def data():
    """Model inputs and labels of the first 3000 5-minute BTC/USDT candles, warm-up
    rows and the last HORIZON rows dropped (models.dataset)."""
    import pyarrow.csv as pcsv

    from models.dataset import build_dataset
    from pipeline.config import Config
    candles = pcsv.read_csv(CANDLES).slice(0, ROWS)
    ds = build_dataset(candles, Config(), HORIZON, THRESHOLD)
    assert len(ds) > 2500 and set(np.unique(ds.y)) == {0, 1, 2}
    return ds.X, ds.y.astype(np.int64)


@pytest.fixture(scope="module")
def model(data):
    from models.lstm import LSTMModel
    X, y = data
    return LSTMModel(**PARAMS).fit(X[:TRAIN], y[:TRAIN], seed=1)


@pytest.fixture(scope="module")
def test_windows(data):
    from models.lstm import windows
    X, _ = data
    return np.ascontiguousarray(windows(X[TRAIN:], W))        # (m, W, f)


def test_probabilities(model, test_windows):
    assert model.window == W
    for batch in (test_windows[:1], test_windows[:64], test_windows[:300]):
        p = model.predict_proba(batch)
        assert p.shape == (len(batch), 3) and p.dtype == np.float64
        assert (p >= 0).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # a trained model does not answer the same thing for every window
    p = model.predict_proba(test_windows)
    assert p.std(axis=0).max() > 1e-4


def test_compiled_equals_keras_direct(model, test_windows):
    """The XLA-compiled function (scaling fused in) gives the Keras model's own answer."""
    for batch in (test_windows[:1], test_windows[:64], test_windows[:256], test_windows[:300]):
        np.testing.assert_allclose(model.predict_proba(batch), model.predict_direct(batch),
                                   rtol=0, atol=1e-5)
    x = model._scale(test_windows[:64])
    raw = model.model(x, training=False).numpy()                 # Keras, no wrapper of ours
    np.testing.assert_allclose(model.predict_proba(test_windows[:64]), raw, rtol=0, atol=1e-5)


def test_predict_sequence_alignment(model, data, test_windows):
    X, _ = data
    rows = X[TRAIN:]
    seq = model.predict_sequence(rows)
    assert seq.shape == (len(rows), 3)
    assert np.isnan(seq[:W - 1]).all()                           # no full window yet
    assert np.isfinite(seq[W - 1:]).all()
    # row i is the window of rows i-W+1..i
    assert np.array_equal(seq[W - 1:], model.predict_proba(test_windows))
    for i in (W - 1, W, 100, len(rows) - 1):
        one = model.predict_proba(rows[i - W + 1:i + 1][None])
        np.testing.assert_allclose(seq[i], one[0], rtol=0, atol=1e-6)
    short = model.predict_sequence(rows[:W - 1])
    assert short.shape == (W - 1, 3) and np.isnan(short).all()


def test_save_load_identical(model, data, test_windows, tmp_path):
    from models.lstm import LSTMModel
    X, _ = data
    model.save(tmp_path)
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "params.json").is_file()
    loaded = LSTMModel.load(tmp_path)              # compiled for batch 1 at load
    assert loaded.params == model.params and loaded.window == W
    assert loaded.n_features == model.n_features
    assert np.array_equal(loaded.mean, model.mean) and np.array_equal(loaded.std, model.std)
    assert set(loaded._compiled) == {1}
    for batch in (test_windows[:1], test_windows):
        assert np.array_equal(loaded.predict_proba(batch), model.predict_proba(batch))
    assert np.array_equal(loaded.predict_sequence(X[TRAIN:]), model.predict_sequence(X[TRAIN:]),
                          equal_nan=True)


def test_same_seed_same_model(model, data, test_windows):
    from models.lstm import LSTMModel
    X, y = data
    again = LSTMModel(**PARAMS).fit(X[:TRAIN], y[:TRAIN], seed=1)
    assert np.array_equal(again.predict_proba(test_windows[:64]),
                          model.predict_proba(test_windows[:64]))


def test_nan_refused(model, data, test_windows):
    from models.lstm import LSTMModel
    X, y = data
    bad_rows = X[:TRAIN].copy()
    bad_rows[50, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity \(feature columns \[3\]\)"):
        LSTMModel(**PARAMS).fit(bad_rows, y[:TRAIN])
    bad = test_windows[:4].copy()
    bad[2, 5, 1] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinity \(feature columns \[1\]\)"):
        model.predict_proba(bad)
    with pytest.raises(ValueError, match="NaN or infinity"):
        model.predict_sequence(bad_rows)


def test_bad_shapes_and_params(model, test_windows):
    from models.lstm import LSTMModel
    with pytest.raises(ValueError, match="windows of shape"):
        model.predict_proba(test_windows[:4, 1:])               # a window too short
    with pytest.raises(ValueError, match="windows of shape"):
        model.predict_proba(test_windows[0])                    # rows, not windows
    with pytest.raises(ValueError, match="features"):
        model.predict_sequence(test_windows[0][:, 1:])
    with pytest.raises(ValueError, match="unknown LSTM parameters"):
        LSTMModel(layers=2)
    with pytest.raises(ValueError, match="window"):
        LSTMModel(window=0)
    with pytest.raises(RuntimeError, match="fit or load"):
        LSTMModel().predict_proba(test_windows[:1])


def test_tensorflow_not_imported_with_models():
    """Importing models/ (the LSTM module included) must not import TensorFlow: 4-8 s
    that processes not running the LSTM should not pay."""
    code = ("import sys, models, models.lstm, models.forest, models.dataset; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
