"""Random forest and XGBoost on a slice of real candles: 3-class probabilities,
the random forest's fast path equal to scikit-learn's, save/load identical,
a class absent from training, NaN refused. XGBoost's numba path equal to
``inplace_predict``, on the candles and on random data of several depths and
rounds (these need no candles)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.ta import Engine

from conftest import data_file

ROOT = Path(__file__).resolve().parent.parent
CANDLES = data_file("candles/binance_BTC-USDT_5m.csv")

ROWS = 3000
HORIZON = 5
THRESHOLD = 0.001          # |5-bar return| under 0.1 % is "flat"
SPECS = [("ema", (12,)), ("rsi", (14,)), ("macd", (12, 26, 9)), ("bbands", (20, 2.0)),
         ("atr", (14,)), ("volatility", (20,)), ("volume_z", (20,))]
RF = dict(n_estimators=30, max_depth=8, min_samples_leaf=5)
XGB = dict(n_estimators=50, max_depth=4, learning_rate=0.2)


@pytest.fixture(scope="module")
def data():
    """Features (price levels made relative to the close) and labels 0/1/2 =
    down/flat/up by the next-5-bar return; warm-up and the last 5 rows dropped."""
    raw = np.loadtxt(CANDLES, delimiter=",", skiprows=1, max_rows=ROWS)
    o, h, l, c, v = raw[:, 1:6].T
    engine = Engine(1, SPECS)
    f = engine.update(np.zeros(len(c), dtype=np.int64), o, h, l, c, v).copy()
    for j, name in enumerate(engine.columns):
        if name.startswith(("ema", "bb_", "atr", "macd")):
            f[:, j] /= c
    ret1 = np.r_[np.nan, c[1:] / c[:-1] - 1]
    X = np.column_stack([f, ret1])
    future = np.r_[c[HORIZON:] / c[:-HORIZON] - 1, np.full(HORIZON, np.nan)]
    y = np.where(future > THRESHOLD, 2, np.where(future < -THRESHOLD, 0, 1))
    keep = np.isfinite(X).all(axis=1) & np.isfinite(future)
    X, y = X[keep], y[keep]
    assert len(X) > 2500 and set(np.unique(y)) == {0, 1, 2}
    return X, y


@pytest.fixture(scope="module")
def models(data):
    from models.boost import XGBoostModel
    from models.forest import RandomForestModel
    X, y = data
    return {"rf": RandomForestModel(**RF).fit(X[:2000], y[:2000], seed=1),
            "xgb": XGBoostModel(**XGB).fit(X[:2000], y[:2000], seed=1)}


@pytest.mark.parametrize("name", ["rf", "xgb"])
def test_probabilities(models, data, name):
    X, _ = data
    p = models[name].predict_proba(X[2000:])
    assert p.shape == (len(X) - 2000, 3) and p.dtype == np.float64
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)     # XGBoost computes in float32
    assert models[name].predict_proba(X[:1]).shape == (1, 3)


def test_fast_forest_equals_sklearn(models, data):
    X, _ = data
    rf = models["rf"]
    assert list(rf.estimator.classes_) == [0, 1, 2]
    for batch in (X[:1], X[2000:2064], X[2000:]):
        np.testing.assert_allclose(rf.predict_proba(batch), rf.estimator.predict_proba(batch),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["rf", "xgb"])
def test_save_load_identical(models, data, name, tmp_path):
    X, _ = data
    model = models[name]
    model.save(tmp_path)
    loaded = type(model).load(tmp_path)
    assert loaded.params == model.params
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    if name == "rf":
        assert loaded.estimator is None                 # served without sklearn objects
        assert {p.name for p in tmp_path.iterdir()} == {"forest.npz", "params.json"}
    else:                                               # the flat arrays are rebuilt, not saved
        assert {p.name for p in tmp_path.iterdir()} == {"model.ubj", "params.json"}


@pytest.mark.parametrize("name", ["rf", "xgb"])
def test_class_absent_from_training(data, name):
    from models.boost import XGBoostModel
    from models.forest import RandomForestModel
    X, y = data
    sel = y[:2000] != 1                                  # no "flat" in training
    cls = RandomForestModel if name == "rf" else XGBoostModel
    model = cls(**(RF if name == "rf" else XGB)).fit(X[:2000][sel], y[:2000][sel])
    p = model.predict_proba(X[2000:])
    assert p.shape == (len(X) - 2000, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    if name == "rf":
        assert (p[:, 1] == 0).all()
        np.testing.assert_allclose(p[:, [0, 2]], model.estimator.predict_proba(X[2000:]),
                                   rtol=0, atol=1e-12)
    else:
        assert p[:, 1].max() < 0.05


@pytest.mark.parametrize("name", ["rf", "xgb"])
def test_nan_refused(models, data, name):
    X, y = data
    bad = X[:4].copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity \(feature columns \[3\]\)"):
        models[name].predict_proba(bad)
    with pytest.raises(ValueError, match="NaN"):
        type(models[name])().fit(bad, y[:4])
    with pytest.raises(ValueError, match="trained on"):
        models[name].predict_proba(X[:4, :-1])


# -- XGBoost's numba path against inplace_predict --------------------------------------
BATCHES = (1, 64, 256)


def assert_equals_booster(model, X):
    """The numba path against XGBoost's ``inplace_predict`` at each batch size, within
    1e-6 (both compute in float32; in practice they are equal bit for bit)."""
    for b in BATCHES:
        for start in range(0, len(X) - b + 1, max(b, len(X) // 3)):
            batch = X[start:start + b]
            np.testing.assert_allclose(model.predict_proba(batch),
                                       model.booster.inplace_predict(batch).reshape(b, 3),
                                       rtol=0, atol=1e-6)


def test_fast_boost_equals_xgboost(models, data):
    X, _ = data
    assert_equals_booster(models["xgb"], X)
    assert_equals_booster(models["xgb"], X[2000:])


def random_data(seed: int, n: int = 1500, n_features: int = 7):
    """Features on scales from 1e-3 to 1e3, one of them integer-valued (many rows
    exactly on a split condition), and labels that depend on them with noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)) * np.logspace(-3, 3, n_features)
    X[:, 0] = np.round(X[:, 0] * 1000)
    score = X[:, 1] * 300 + np.sin(X[:, 4] / 100) + 0.01 * X[:, 0] + rng.normal(size=n)
    y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    return X, y


@pytest.mark.parametrize("depth, rounds", [(1, 5), (3, 40), (6, 60), (9, 15)])
@pytest.mark.parametrize("absent", [None, 1, 2])
def test_fast_boost_random(depth, rounds, absent, tmp_path):
    """Several shapes of trees, with and without a class absent from training; after
    fit and after a save/load round trip; on fresh rows and on rows lying exactly on
    the split conditions."""
    from models.boost import XGBoostModel, probe_rows
    X, y = random_data(depth * 100 + rounds)
    keep = y != absent
    model = XGBoostModel(max_depth=depth, n_estimators=rounds, learning_rate=0.3)
    model.fit(X[keep], y[keep], seed=3)
    assert model._arrays["depth"].max() <= depth
    X_new, _ = random_data(7)
    on_splits = probe_rows(model._arrays, X.shape[1], rows=256)
    for rows in (X_new, on_splits):
        assert_equals_booster(model, rows)
    if absent is not None:
        assert model.predict_proba(X_new)[:, absent].max() < 0.05
    model.save(tmp_path)
    loaded = XGBoostModel.load(tmp_path)
    for rows in (X_new, on_splits):
        assert_equals_booster(loaded, rows)
        np.testing.assert_array_equal(loaded.predict_proba(rows), model.predict_proba(rows))


def test_fast_boost_refuses_non_finite():
    from models.boost import XGBoostModel
    X, y = random_data(0, n=300)
    model = XGBoostModel(max_depth=3, n_estimators=5).fit(X, y)
    for bad_value, match in ((np.nan, "NaN"), (np.inf, "infinity"), (1e39, "float32")):
        bad = X[:64].copy()
        bad[5, 2] = bad_value
        with pytest.raises(ValueError, match=match):
            model.predict_proba(bad)
    with pytest.raises(RuntimeError, match="fit or load"):
        XGBoostModel().predict_proba(X[:1])


def test_base_margin_formats():
    """``base_score`` as XGBoost >= 3.0 writes it (one margin per class), as a list,
    and as older versions did (one value for all classes)."""
    from models.boost import base_margin
    np.testing.assert_array_equal(base_margin("[2.1997565E-1,-7.041931E-2,-1.4955628E-1]"),
                                  np.float32([0.21997565, -0.07041931, -0.14955628]))
    np.testing.assert_array_equal(base_margin(["5E-1", "5E-1", "5E-1"]), np.float32([0.5] * 3))
    np.testing.assert_array_equal(base_margin("5E-1"), np.float32([0.5] * 3))
    np.testing.assert_array_equal(base_margin("[5E-1]"), np.float32([0.5] * 3))
    with pytest.raises(ValueError, match="expected 1 or 3"):
        base_margin("[1,2]")
