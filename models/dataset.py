"""Training data from historical candles: features, labels, walk-forward splits.

Features are `pipeline features` (models.features.compute), the indicator
engine the live shards run, so a model sees in training exactly the columns a
live feature row holds. Those columns go through ONE function, `model_inputs`,
both here and in the model worker, so the transforms cannot drift apart.

Transforms (why: a model trained on BTC at 60k must work at 120k, and on ETH):

* price levels (ema_*, sma_*, bb_upper/middle/lower_*, vwap_*) become
  ``x / close - 1``: the distance of the level from the price (name ``<col>_rel``);
* price differences (macd_*, macd_signal_*, macd_hist_*, atr_*) become
  ``x / close`` (name ``<col>_rel``);
* rsi_*, stoch_*, vol_* and volz_* are scale-free already and pass as they are;
* obv is left out: its level is the volume summed since the series began, which
  is the start of the training file in training and the start of the process
  live, so the same market gives different values. It is still a configured
  feature (the registry checks it), only not a model input.

A column of an indicator kind not listed here is an error, so a new indicator
needs a decision before a model uses it.

Labels: the future return over ``horizon`` bars, ``r = close[t+h] / close[t] - 1``,
in three classes: 0 down (r < -threshold), 1 flat, 2 up (r > threshold). The
threshold defaults to the round-trip cost of a trade, ``2 * (fee + slippage)``
from [execution] (24 bps with the defaults): a move smaller than what entering
and leaving costs is not worth trading, so it is "flat". ``horizon`` counts bars,
not time: across a gap in the data a label spans more time.

Rows dropped: bad candles (as every reader of market files drops them; counted in
``Dataset.dropped``), rows in indicator warm-up (any NaN input) and the last
``horizon`` rows, whose label would need bars past the end of the data.
"""
from __future__ import annotations

import functools
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Config, ExecutionConfig
from models.features import compute

DOWN, FLAT, UP = 0, 1, 2
CLASSES = ("down", "flat", "up")

# indicator kind (the column name up to its parameters) -> transform
_LEVEL = ("ema", "sma", "bb_upper", "bb_middle", "bb_lower", "vwap")      # x / close - 1
_DIFF = ("macd", "macd_signal", "macd_hist", "atr")                       # x / close
_AS_IS = ("rsi", "stoch_k", "stoch_d", "vol", "volz")
_DROP = ("obv",)


@functools.lru_cache(maxsize=4096)
def _kind(column: str) -> str:
    """``macd_signal_12_26_9`` -> ``macd_signal``: the name without its parameters."""
    return re.sub(r"(_[0-9.]+)+$", "", column)


@functools.lru_cache(maxsize=4096)      # served at every bar close, for the same few names
def _transform(column: str) -> str:
    kind = _kind(column)
    for name, kinds in (("level", _LEVEL), ("diff", _DIFF), ("as_is", _AS_IS), ("drop", _DROP)):
        if kind in kinds:
            return name
    raise ValueError(f"feature {column!r}: no model-input transform for indicator kind {kind!r} "
                     "(add it to models/dataset.py)")


def input_names(feature_names: list[str]) -> list[str]:
    """Names of the columns `model_inputs` returns for these feature columns, in order."""
    names = []
    for col in feature_names:
        how = _transform(col)
        if how in ("level", "diff"):
            names.append(f"{col}_rel")
        elif how == "as_is":
            names.append(col)
    return names


def _column(source: Any, name: str) -> np.ndarray:
    try:
        if isinstance(source, pa.Table):
            col = source.column(name).to_numpy(zero_copy_only=False)
        else:                              # structured rows of the latest-features table, a dict
            col = source[name]
    except (KeyError, ValueError) as e:
        raise ValueError(f"model inputs need column {name!r}, which the feature rows lack") from e
    return np.atleast_1d(np.asarray(col, dtype=np.float64))


def model_inputs(source: Any, feature_names: list[str]) -> np.ndarray:
    """Feature rows -> the model's input matrix X (rows x `input_names(feature_names)`).

    ``source`` is anything indexed by column name holding ``close`` and the
    feature columns: a pyarrow table from `pipeline features`, structured numpy
    rows of the live latest-features table (shm.records.features_dtype), or a
    dict of arrays. Training and the model worker both call this, so their
    inputs are computed by the same code. Warm-up rows give NaNs (left to the caller).
    """
    close = _column(source, "close")
    cols = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in feature_names:
            how = _transform(name)
            if how == "drop":
                continue
            x = _column(source, name)
            cols.append(x / close - 1.0 if how == "level" else x / close if how == "diff" else x)
    if not cols:
        return np.empty((len(close), 0))
    return np.ascontiguousarray(np.column_stack(cols), dtype=np.float64)


def round_trip_cost(execution: ExecutionConfig) -> float:
    """Relative cost of entering and leaving a position: fee and slippage, twice."""
    return 2.0 * (execution.fee_bps + execution.slippage_bps) / 1e4


def labels(close: np.ndarray, horizon: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(future return, class) for every bar; the last ``horizon`` bars get NaN and FLAT."""
    close = np.asarray(close, dtype=np.float64)
    r = np.full(len(close), np.nan)
    if len(close) > horizon:
        r[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
    y = np.full(len(close), FLAT, np.int8)
    y[r > threshold] = UP
    y[r < -threshold] = DOWN
    return r, y


@dataclass
class Dataset:
    """Rows in time order, one per bar kept.

    ``feature_names`` are the configured indicator columns in the engine's order
    (what a feature row holds and what the registry checks against the running
    config); ``input_names`` are the columns of X (see `model_inputs`)."""
    X: np.ndarray                    # float64 (n, len(input_names))
    y: np.ndarray                    # int8 in {0 down, 1 flat, 2 up}
    timestamps_ms: np.ndarray        # int64 bar open times
    feature_names: list[str]
    input_names: list[str]
    close: np.ndarray
    future_return: np.ndarray        # close[t+h] / close[t] - 1
    horizon: int
    threshold: float
    dropped: dict[str, int] = field(default_factory=dict)   # bad candles per reason
    warmup_rows: int = 0             # rows dropped for NaN inputs (indicator warm-up)

    def __len__(self) -> int:
        return len(self.y)

    def data_range(self) -> dict:
        """First and last bar open time, for an artifact's metadata."""
        if not len(self.timestamps_ms):
            return {"first_ms": None, "last_ms": None, "rows": 0}
        return {"first_ms": int(self.timestamps_ms[0]), "last_ms": int(self.timestamps_ms[-1]),
                "rows": len(self)}


def build_dataset(candles: str | Path | pa.Table, cfg: Config, horizon: int,
                  threshold: float | None = None) -> Dataset:
    """Features and labels from a candle file (CSV, Parquet, directory) or table.

    ``threshold`` None means `round_trip_cost(cfg.execution)`. A table goes
    through a temporary Parquet file so both inputs take the one code path of
    `pipeline features` (bad-row checks included)."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    if threshold is None:
        threshold = round_trip_cost(cfg.execution)
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if isinstance(candles, pa.Table):
        with tempfile.TemporaryDirectory(prefix="tickpipe-dataset-") as tmp:
            path = Path(tmp) / "candles.parquet"
            pq.write_table(candles, path)
            table, summary = compute(path, cfg)
    else:
        table, summary = compute(candles, cfg)
    names = list(summary["columns"])
    X = model_inputs(table, names)
    close = _column(table, "close")
    ts = np.asarray(table.column("timestamp_ms").to_numpy(), dtype=np.int64)
    r, y = labels(close, horizon, threshold)
    finite = np.isfinite(X).all(axis=1)
    has_label = np.isfinite(r)
    keep = finite & has_label
    return Dataset(X=X[keep], y=y[keep], timestamps_ms=ts[keep], feature_names=names,
                   input_names=input_names(names), close=close[keep], future_return=r[keep],
                   horizon=int(horizon), threshold=float(threshold),
                   dropped={k: int(v) for k, v in summary["dropped"].items()},
                   warmup_rows=int((~finite & has_label).sum()))


def walk_forward(n: int, folds: int, purge: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window splits in time order: (train indices, validation indices).

    The rows are cut into ``folds + 1`` equal blocks; fold k validates on block
    k + 1 and trains on everything before it except the last ``purge`` rows. A
    training label at row t looks ``horizon`` rows ahead, so with ``purge >=
    horizon`` no training label overlaps the validation period. Expanding, not
    rolling: with little history, the later folds gain from all of it, and a
    model is never trained on rows after its validation block. Rows removed
    inside the series (NaN inputs) only widen the gap measured in bars."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    if purge < 0:
        raise ValueError(f"purge must be >= 0, got {purge}")
    bounds = np.linspace(0, n, folds + 2).astype(np.int64)
    splits = []
    for k in range(folds):
        val_start, val_end = bounds[k + 1], bounds[k + 2]
        train_end = val_start - purge
        if train_end <= 0 or val_end <= val_start:
            raise ValueError(f"{n} rows are too few for {folds} folds with a purge of {purge}: "
                             f"fold {k} would have no training or no validation rows")
        splits.append((np.arange(train_end), np.arange(val_start, val_end)))
    return splits
