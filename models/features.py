"""Every configured indicator over a candle file: `pipeline features` and the training data.

The indicators are computed by models/ta.Engine, the code the indicator
shards run live, fed the file's bars as the events of one symbol: a model
trained on this output saw exactly what it will see live. The file's rows are
read as every reader of market files reads them
(pipeline/storage.tidy_market_rows): sorted by time, bad rows (NaN, prices
<= 0, high/low not bracketing open/close) and repeated times dropped and
counted, and the rows that were out of order counted.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import Config, indicator_specs
from pipeline.storage import OHLCV_COLUMNS, MarketRows, detect_kind, market_columns, numeric, \
    read_market_table, tidy_market_rows

from .ta import Engine


class FeaturesError(ValueError):
    """A problem with the input file; printed as one line."""


def load_candles(source: str | Path | pa.Table) -> MarketRows:
    """The good candles of a file (or table), sorted, with what reading dropped and
    reordered; a user mistake (no file, trades, a non-numeric column) is a FeaturesError.
    Shared by `compute` and training, so both report the same counts."""
    if isinstance(source, pa.Table):
        where, columns = "<table>", source.column_names
    else:
        where = source = Path(source).expanduser()
        if not source.exists():
            raise FeaturesError(f"{source}: no such file")
        try:
            columns = market_columns(source)
        except ValueError as e:                  # a folder without Parquet files, say
            raise FeaturesError(str(e)) from None
        except (OSError, pa.ArrowException) as e:  # unreadable, or not CSV nor Parquet
            raise FeaturesError(f"{source}: cannot read it as CSV or Parquet ({str(e)[:200]})") from None
    try:
        kind = detect_kind(columns)
    except ValueError as e:
        raise FeaturesError(f"{where}: {e}") from None
    if kind != "candles":
        raise FeaturesError(f"{where}: holds {kind}; features are computed over candles "
                            f"({','.join(OHLCV_COLUMNS)})")
    try:
        table = source if isinstance(source, pa.Table) else read_market_table(source)
    except (OSError, pa.ArrowException) as e:
        raise FeaturesError(f"{where}: cannot read it ({str(e)[:200]})") from None
    try:
        return tidy_market_rows(table, kind)
    except ValueError as e:
        raise FeaturesError(f"{where}: {e}") from None


def compute(path: str | Path, cfg: Config) -> tuple[pa.Table, dict]:
    """The file's good candles with one column per indicator, and a summary."""
    rows = load_candles(path)
    ts, o, h, l, c, v = (numeric(rows.table, name) for name in OHLCV_COLUMNS)
    engine = Engine(1, indicator_specs(cfg.indicators))
    t0 = time.perf_counter()
    values = engine.update(np.zeros(len(ts), np.int64), o, h, l, c, v)
    elapsed = time.perf_counter() - t0
    cols = {"timestamp_ms": ts.astype(np.int64), "open": o, "high": h, "low": l, "close": c,
            "volume": v}
    cols.update({name: np.ascontiguousarray(values[:, k]) for k, name in enumerate(engine.columns)})
    summary = {"rows": int(len(ts)), "dropped": dict(rows.dropped), "reordered": rows.reordered,
               "columns": engine.columns, "warmup_rows": engine.lookback, "seconds": elapsed}
    return pa.table(cols), summary
