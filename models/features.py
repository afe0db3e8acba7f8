"""Every configured indicator over a candle file: `pipeline features` and the training data.

The indicators are computed by models/ta.Engine, the code the indicator
shards run live, fed the file's bars as the events of one symbol: a model
trained on this output saw exactly what it will see live. Bad rows (NaN,
prices <= 0, high/low not bracketing open/close, out-of-order or repeated
times) are dropped and counted, as every reader of market files does
(pipeline/storage.check_candles).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import Config, indicator_specs
from pipeline.storage import OHLCV_COLUMNS, check_candles, detect_kind, market_columns, numeric, \
    read_market_table

from .ta import Engine


class FeaturesError(ValueError):
    """A problem with the input file; printed as one line."""


def compute(path: str | Path, cfg: Config) -> tuple[pa.Table, dict]:
    """The file's good candles with one column per indicator, and a summary."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FeaturesError(f"{path}: no such file")
    try:
        kind = detect_kind(market_columns(path))
    except ValueError as e:
        raise FeaturesError(f"{path}: {e}") from None
    if kind != "candles":
        raise FeaturesError(f"{path}: holds trades; features are computed over candles "
                            f"({','.join(OHLCV_COLUMNS)})")
    table = read_market_table(path)
    try:
        ts, o, h, l, c, v = (numeric(table, name) for name in OHLCV_COLUMNS)
    except ValueError as e:
        raise FeaturesError(f"{path}: {e}") from None
    good, bad = check_candles(ts, o, h, l, c, v)
    ts, o, h, l, c, v = (a[good] for a in (ts, o, h, l, c, v))
    engine = Engine(1, indicator_specs(cfg.indicators))
    t0 = time.perf_counter()
    values = engine.update(np.zeros(len(ts), np.int64), o, h, l, c, v)
    elapsed = time.perf_counter() - t0
    cols = {"timestamp_ms": ts.astype(np.int64), "open": o, "high": h, "low": l, "close": c,
            "volume": v}
    cols.update({name: np.ascontiguousarray(values[:, k]) for k, name in enumerate(engine.columns)})
    summary = {"rows": int(len(ts)), "dropped": dict(bad), "columns": engine.columns,
               "warmup_rows": engine.lookback, "seconds": elapsed}
    return pa.table(cols), summary
