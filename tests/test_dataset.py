"""Dataset builder: no look-ahead, labels, walk-forward splits, bad candles,
and one model-input transform for training and serving."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from models.dataset import DOWN, FLAT, UP, build_dataset, input_names, model_inputs, \
    round_trip_cost, walk_forward
from pipeline.config import Config
from models.features import compute
from shm.records import features_dtype

from conftest import data_file

ROOT = Path(__file__).resolve().parent.parent
CANDLES = data_file("candles/binance_BTC-USDT_1h.csv")
N = 2000
H = 6


@pytest.fixture(scope="module")
def candles() -> pa.Table:
    """A slice of real 1h BTC/USDT candles (2017-2018: trends, crashes, flat weeks)."""
    return pcsv.read_csv(CANDLES).slice(1000, N)


def scaled(table: pa.Table, after: int, price: float, volume: float) -> pa.Table:
    """The candles with rows after index ``after`` scaled: prices by ``price``, volume by ``volume``."""
    cols = {name: table.column(name).to_numpy() for name in table.column_names}
    for name, f in (("open", price), ("high", price), ("low", price), ("close", price), ("volume", volume)):
        x = cols[name].astype(np.float64)
        x[after + 1:] *= f
        cols[name] = x
    return pa.table(cols)


def compute_table(candles: pa.Table, cfg: Config) -> tuple[pa.Table, dict]:
    """`pipeline features` over a table (it reads files)."""
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(candles, Path(tmp) / "c.parquet")
        return compute(Path(tmp) / "c.parquet", cfg)


def test_no_look_ahead(candles):
    """Changing candles after time t changes no feature at or before t, and no
    label at or before t minus the horizon."""
    cfg = Config()
    k = 1200                                   # t = open time of candle k
    ts = candles.column("timestamp_ms").to_numpy()
    base = build_dataset(candles, cfg, H)
    moved = build_dataset(scaled(candles, k, 1.1, 1.3), cfg, H)
    assert np.array_equal(base.timestamps_ms, moved.timestamps_ms)
    upto_t = base.timestamps_ms <= ts[k]
    assert upto_t.sum() > 1000
    assert np.array_equal(base.X[upto_t], moved.X[upto_t])
    before = base.timestamps_ms <= ts[k - H]   # label at i uses close[i + H]: i + H <= k
    assert np.array_equal(base.y[before], moved.y[before])
    assert np.array_equal(base.future_return[before], moved.future_return[before])
    # the test can see a change: features after t and labels reaching past t did change
    after = base.timestamps_ms > ts[k]
    assert not np.array_equal(base.X[after], moved.X[after])
    spanning = ~before & upto_t
    assert spanning.sum() == H
    assert not np.allclose(base.future_return[spanning], moved.future_return[spanning])


def test_labels_equal_numpy(candles):
    close = candles.column("close").to_numpy().astype(np.float64)
    ts = candles.column("timestamp_ms").to_numpy()
    threshold = 0.004
    d = build_dataset(candles, Config(), H, threshold)
    r = close[H:] / close[:-H] - 1.0
    want = np.where(r > threshold, 2, np.where(r < -threshold, 0, 1))
    idx = np.searchsorted(ts, d.timestamps_ms)
    assert np.array_equal(ts[idx], d.timestamps_ms)
    assert idx[-1] == len(ts) - 1 - H          # the last H candles have no label
    assert np.array_equal(d.y, want[idx]) and d.y.dtype == np.int8
    np.testing.assert_array_equal(d.future_return, r[idx])
    np.testing.assert_array_equal(d.close, close[idx])
    assert set(np.unique(d.y)) == {DOWN, FLAT, UP}


def test_features_are_pipeline_features(candles, tmp_path):
    """X is `pipeline features` through model_inputs; warm-up rows are dropped;
    a file gives what the same table gives."""
    cfg = Config()
    path = tmp_path / "slice.parquet"
    pq.write_table(candles, path)
    d = build_dataset(path, cfg, H)
    table, summary = compute(path, cfg)
    assert d.feature_names == summary["columns"]
    assert d.input_names == input_names(d.feature_names) and "obv" not in d.input_names
    assert d.X.shape == (len(d), len(d.input_names)) and d.X.dtype == np.float64
    assert np.isfinite(d.X).all()
    full = model_inputs(table, d.feature_names)
    assert d.warmup_rows == summary["warmup_rows"] == int((~np.isfinite(full).all(1)).sum())
    assert len(d) == N - summary["warmup_rows"] - H
    np.testing.assert_array_equal(d.X, full[summary["warmup_rows"]:N - H])
    ema = table.column("ema_12").to_numpy()[summary["warmup_rows"]]
    close = table.column("close").to_numpy()[summary["warmup_rows"]]
    assert d.X[0, d.input_names.index("ema_12_rel")] == ema / close - 1.0
    same = build_dataset(candles, cfg, H)
    np.testing.assert_array_equal(same.X, d.X)
    np.testing.assert_array_equal(same.y, d.y)


def test_model_inputs_same_on_live_rows(candles):
    """The model worker's rows (shm feature records) give the training inputs."""
    cfg = Config()
    d = build_dataset(candles, cfg, H)
    table, _ = compute_table(candles, cfg)
    rows = np.zeros(table.num_rows, features_dtype(d.feature_names))
    for name in ["open", "high", "low", "close", "volume", *d.feature_names]:
        rows[name] = table.column(name).to_numpy()
    np.testing.assert_array_equal(model_inputs(rows, d.feature_names), model_inputs(table, d.feature_names))
    one = model_inputs(rows[-1], d.feature_names)      # a single row too
    assert one.shape == (1, len(d.input_names))
    with pytest.raises(ValueError, match="'ema_12'"):
        model_inputs({"close": np.ones(3)}, ["ema_12"])
    with pytest.raises(ValueError, match="no model-input transform"):
        model_inputs({"close": np.ones(3), "foo_3": np.ones(3)}, ["foo_3"])


def test_inputs_are_scale_free(candles):
    """Prices ten times higher give the same inputs: a model carries across price levels."""
    cfg = Config()
    a = build_dataset(candles, cfg, H)
    b = build_dataset(scaled(candles, -1, 10.0, 1.0), cfg, H)
    np.testing.assert_allclose(b.X, a.X, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(a.y, b.y)


def test_bad_candles_dropped_and_counted(candles):
    cols = {name: candles.column(name).to_numpy().astype(np.float64) for name in candles.column_names}
    cols["close"][100] = np.nan
    cols["volume"][700] = np.nan
    cols["timestamp_ms"][900] = cols["timestamp_ms"][899]     # a repeated time
    cols["timestamp_ms"] = cols["timestamp_ms"].astype(np.int64)
    d = build_dataset(pa.table(cols), Config(), H)
    assert d.dropped == {"nan": 2, "conflicting duplicate": 1}   # same time, other values: first kept
    assert len(d) == N - 3 - d.warmup_rows - H
    assert np.isfinite(d.X).all() and np.all(np.diff(d.timestamps_ms) > 0)


def test_round_trip_threshold_default():
    cfg = Config()
    assert round_trip_cost(cfg.execution) == pytest.approx(2 * (10 + 2) / 1e4)


@pytest.mark.parametrize("n,folds,purge", [(1000, 4, 6), (997, 3, 24), (50, 1, 0)])
def test_walk_forward_folds(n, folds, purge):
    splits = walk_forward(n, folds, purge)
    assert len(splits) == folds
    prev_val_end = -1
    for train, val in splits:
        assert len(train) and len(val)
        assert np.all(np.diff(train) == 1) and np.all(np.diff(val) == 1)   # ordered, contiguous
        assert train[0] == 0                                               # expanding
        assert not np.intersect1d(train, val).size
        assert val[0] - train[-1] - 1 >= purge                             # the purge gap
        assert val[0] > prev_val_end                                       # folds move forward
        prev_val_end = val[-1]
    assert splits[-1][1][-1] == n - 1
    assert len(splits[-1][0]) > len(splits[0][0]) or folds == 1


def test_walk_forward_refuses_too_few_rows():
    with pytest.raises(ValueError, match="too few"):
        walk_forward(10, 4, 5)
    with pytest.raises(ValueError):
        walk_forward(100, 0, 5)


def test_walk_forward_purge_covers_labels(candles):
    """No training label's future window reaches the validation block."""
    d = build_dataset(candles, Config(), H)
    for train, val in walk_forward(len(d), 3, H):
        label_end = d.timestamps_ms[train[-1]] + H * 3_600_000       # 1h bars
        assert label_end < d.timestamps_ms[val[0]]
