"""Data at rest: the Parquet layout shared by `pipeline download`, the recorder
worker and the replay feed, and the row checks they all apply.

Layout under a root directory (hive-style partitions, so pyarrow.dataset,
pandas, polars or duckdb read a whole tree with the partition columns):

    ROOT/ohlcv/venue=<venue>/symbol=<BASE-QUOTE>/timeframe=<tf>/<YYYY-MM>.parquet
        one file per UTC month of bar open times, columns
        timestamp_ms (bar open, epoch ms), open, high, low, close, volume.
        Appending merges into the month's file (sorted, no duplicate
        timestamp) and replaces it atomically.
    ROOT/trades/venue=<venue>/symbol=<BASE-QUOTE>/<YYYY-MM-DD>.parquet
        one file per UTC day of trade times, columns timestamp_ms, trade_id
        (the venue's, e.g. Binance's aggregate trade id), price, amount, side
        (buy/sell: the taker's side). Merged like the OHLCV months, sorted by
        trade id, one row per id.
    ROOT/ticks/venue=<venue>/symbol=<BASE-QUOTE>/date=<YYYY-MM-DD>/part-<n>.parquet
        one file per recorder flush and partition; the columns of the TICK
        record except symbol_id (ids are per run; the path names the symbol).
        The date is the UTC day of ts_exchange_ns.
    ROOT/bars/venue=<venue>/symbol=<BASE-QUOTE>/date=<YYYY-MM-DD>/part-<n>.parquet
        the indicator shards' closed bars with every feature computed on them
        (the feature row less symbol_id): training data that is exactly what
        the live models saw. The date is the UTC day of ts_bar_ns.

Files are written under a hidden temporary name (".tmp-*", which readers of a
dataset skip) and then renamed or hard-linked into place, so a reader or a
crash never sees half a file.
"""
from __future__ import annotations

import os
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UserError

OHLCV_COLUMNS = ["timestamp_ms", "open", "high", "low", "close", "volume"]
OHLCV_SCHEMA = pa.schema([("timestamp_ms", pa.int64())] +
                         [(c, pa.float64()) for c in OHLCV_COLUMNS[1:]])
TRADES_COLUMNS = ["timestamp_ms", "trade_id", "price", "amount", "side"]
TRADES_SCHEMA = pa.schema([("timestamp_ms", pa.int64()), ("trade_id", pa.int64()),
                           ("price", pa.float64()), ("amount", pa.float64()),
                           ("side", pa.string())])
TRADE_SIZE_COLUMNS = ("quantity", "amount")
# other names of a column, read as ours when ours is absent (investing.com exports give an
# approximate ``volume_approx``)
COLUMN_ALIASES = {"volume_approx": "volume"}
QUOTE_COLUMNS = ("timestamp_ms", "bid", "ask")      # a top of book (book ticker); sizes optional
MS_PER_DAY = 86_400_000
NS_PER_DAY = 86_400 * 10**9


# -- paths ----------------------------------------------------------------------------
def symbol_part(symbol: str) -> str:
    """"BTC/USDT" -> "BTC-USDT" (and "BTC/USDT:USDT" -> "BTC-USDT-USDT"): a path segment."""
    return symbol.replace("/", "-").replace(":", "-")


def ohlcv_dir(root: str | Path, venue: str, symbol: str, timeframe: str) -> Path:
    return (Path(root) / "ohlcv" / f"venue={venue}" / f"symbol={symbol_part(symbol)}"
            / f"timeframe={timeframe}")


def day_dir(root: str | Path, dataset: str, venue: str, symbol: str, date: str) -> Path:
    """Where the recorder puts one day of one symbol: DIR/<dataset>/venue=../symbol=../date=.."""
    return Path(root) / dataset / f"venue={venue}" / f"symbol={symbol_part(symbol)}" / f"date={date}"


def trades_dir(root: str | Path, venue: str, symbol: str) -> Path:
    return Path(root) / "trades" / f"venue={venue}" / f"symbol={symbol_part(symbol)}"


def utc_month(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).strftime("%Y-%m")


def utc_day(day_index: int) -> str:
    """Day index (days since the epoch) -> "YYYY-MM-DD"."""
    return datetime.fromtimestamp(day_index * 86_400, timezone.utc).strftime("%Y-%m-%d")


# -- writing --------------------------------------------------------------------------
def _write_tmp(directory: Path, table: pa.Table) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{os.getpid()}-{uuid.uuid4().hex}.parquet"
    pq.write_table(table, tmp)
    return tmp


def _publish_part(directory: Path, tmp: Path) -> Path:
    """Give ``tmp`` the next free ``part-<n>.parquet`` name. A hard link fails if
    the name exists, so two writers never overwrite each other's part."""
    taken = [int(p.stem[5:]) for p in directory.glob("part-*.parquet") if p.stem[5:].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        final = directory / f"part-{n:05d}.parquet"
        try:
            os.link(tmp, final)
            break
        except FileExistsError:
            n += 1
    tmp.unlink()
    return final


def write_parts(parts: list[tuple[Path, pa.Table]]) -> list[Path]:
    """Write each table as a new part file of its directory. All temporary files
    are written before any is published, so a failure (disk full) publishes
    nothing and the caller can keep its records."""
    staged: list[tuple[Path, Path]] = []
    try:
        for directory, table in parts:
            staged.append((directory, _write_tmp(directory, table)))
    except BaseException:
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)
        raise
    return [_publish_part(directory, tmp) for directory, tmp in staged]


def records_table(recs: np.ndarray) -> pa.Table:
    """Records (ticks, feature rows) -> an Arrow table of their fields but the
    symbol id: ids differ from run to run, the directory names the symbol."""
    return pa.table({c: np.ascontiguousarray(recs[c]) for c in recs.dtype.names if c != "symbol_id"})


# -- downloaded datasets: OHLCV months, trade days -----------------------------------------
def month_files(directory: Path) -> list[Path]:
    """The period files of one downloaded dataset (OHLCV months, trade days),
    oldest first (names sort by date)."""
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


def _read(directory: Path, schema: pa.Schema) -> pa.Table:
    files = month_files(directory)
    if not files:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files])


def read_ohlcv(directory: Path) -> pa.Table:
    return _read(directory, OHLCV_SCHEMA)


def read_trades(directory: Path) -> pa.Table:
    return _read(directory, TRADES_SCHEMA)


def dataset_ends(directory: Path, columns: list[str]) -> tuple[tuple, tuple] | None:
    """``columns`` of the first and of the last row a downloaded dataset holds
    (files are sorted inside), reading those columns of two files only."""
    files = month_files(directory)
    if not files:
        return None
    first = pq.read_table(files[0], columns=columns)
    last = pq.read_table(files[-1], columns=columns)
    return (tuple(first.column(c)[0].as_py() for c in columns),
            tuple(last.column(c)[-1].as_py() for c in columns))


def ohlcv_bounds(directory: Path) -> tuple[int, int] | None:
    """(first, last) bar open time held by the dataset, reading two columns only."""
    ends = dataset_ends(directory, ["timestamp_ms"])
    return None if ends is None else (ends[0][0], ends[1][0])


def trades_bounds(directory: Path) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((time, trade id) of the first trade, (time, trade id) of the last) held."""
    return dataset_ends(directory, ["timestamp_ms", "trade_id"])


def _period_labels(ts_ms: np.ndarray, fmt: str) -> np.ndarray:
    """The UTC period name (strftime ``fmt`` of the day) of every time."""
    days, inverse = np.unique(np.asarray(ts_ms, np.int64) // MS_PER_DAY, return_inverse=True)
    names = np.array([datetime.fromtimestamp(int(d) * 86_400, timezone.utc).strftime(fmt)
                      for d in days])
    return names[inverse.reshape(-1)]


def merge_periods(directory: Path, table: pa.Table, schema: pa.Schema, key: str,
                  fmt: str) -> int:
    """Merge rows into their period files (``fmt`` names the period of a row's
    timestamp_ms: "%Y-%m" months, "%Y-%m-%d" days), sorted by ``key`` with one
    row per key (a row already stored wins); each file is replaced atomically.
    Returns the number of new rows stored."""
    table = table.select(schema.names).cast(schema)
    if table.num_rows == 0:
        return 0
    periods = _period_labels(table.column("timestamp_ms").to_numpy(), fmt)
    added = 0
    for period in np.unique(periods):
        new = table.filter(pa.array(periods == period))
        path = directory / f"{period}.parquet"
        old = pq.read_table(path, schema=schema) if path.exists() else schema.empty_table()
        merged = pa.concat_tables([old, new])
        # np.unique keeps the first occurrence: stored rows come first, so they win
        _, first = np.unique(merged.column(key).to_numpy(), return_index=True)
        merged = merged.take(pa.array(first))           # unique returns them sorted by key
        added += merged.num_rows - old.num_rows
        tmp = _write_tmp(directory, merged)
        os.replace(tmp, path)
    return added


def append_ohlcv(directory: Path, table: pa.Table) -> int:
    """Merge bars into their month files: sorted by time, one row per timestamp
    (a bar already stored wins). Returns the number of new bars stored."""
    return merge_periods(directory, table, OHLCV_SCHEMA, "timestamp_ms", "%Y-%m")


def append_trades(directory: Path, table: pa.Table) -> int:
    """Merge trades into their UTC day files: sorted by trade id, one row per id
    (a trade already stored wins). Returns the number of new trades stored."""
    return merge_periods(directory, table, TRADES_SCHEMA, "trade_id", "%Y-%m-%d")


# -- reading market files (replay) --------------------------------------------------------
def detect_kind(columns: list[str]) -> str:
    """"candles" or "trades" from the column names, else a ValueError that says
    what is expected."""
    cols = set(columns)
    if set(OHLCV_COLUMNS) <= cols:
        return "candles"
    if {"timestamp_ms", "price"} <= cols and cols & set(TRADE_SIZE_COLUMNS):
        return "trades"
    if set(QUOTE_COLUMNS) <= cols:
        return "quotes"
    raise ValueError(f"columns {', '.join(columns)} are neither candles "
                     f"({','.join(OHLCV_COLUMNS)}), trades (timestamp_ms, price, quantity or amount) "
                     f"nor quotes ({', '.join(QUOTE_COLUMNS)})")


def output_file(out: str | Path) -> Path:
    """A file a command is asked to write: not a directory, and in a folder that exists
    or whose own parent does (that one folder is made); anything else is a UserError,
    so a typo never builds a tree of folders."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file path, e.g. {path / 'out.parquet'}")
    if not path.parent.exists():
        if not path.parent.parent.exists():
            raise UserError(f"cannot write {path}: its folder {path.parent} does not exist, nor "
                            f"does {path.parent.parent}")
        path.parent.mkdir()
    return path


def write_parquet_whole(table: pa.Table, out: str | Path) -> Path:
    """``table`` to the Parquet file ``out`` (checked by `output_file`), written aside and
    renamed: a reader never sees half a file, and a failure leaves nothing behind."""
    path = output_file(out)
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}-{path.name}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


NUMERIC_COLUMNS = (*OHLCV_COLUMNS, "price", *TRADE_SIZE_COLUMNS, "trade_id")
BAD_LINES_SHOWN = 5
MALFORMED = "malformed line"          # a CSV line of the wrong width: skipped, counted


def read_market_table(path: str | Path) -> pa.Table:
    """A CSV file, a Parquet file, or a directory of Parquet files (e.g. a
    downloaded OHLCV dataset), in file order. In a CSV, a line of the wrong width is
    skipped and a cell that is not a number where one belongs is read as NaN (its row
    is then dropped as bad by `tidy_market_rows`); both are counted, and the first few
    line numbers said in a warning. The skipped lines' count travels in the table's
    schema metadata (``tickpipe.malformed``), where `tidy_market_rows` counts it."""
    path = Path(path).expanduser()
    if path.suffix == ".csv" or path.name.endswith(".csv.gz"):
        table = _read_csv(path)
    elif path.is_dir():
        import pyarrow.dataset as ds
        table = ds.dataset(_parquet_in(path), format="parquet").to_table()
    else:
        table = pq.read_table(path)
    names = _aliased(table.column_names)
    return table.rename_columns(names) if names != table.column_names else table


def _aliased(names: list[str]) -> list[str]:
    """Column names with `COLUMN_ALIASES` read as ours where ours is absent."""
    return [COLUMN_ALIASES[n] if n in COLUMN_ALIASES and COLUMN_ALIASES[n] not in names else n
            for n in names]


def _read_csv(path: Path) -> pa.Table:
    import logging

    import pyarrow.csv as pcsv
    log = logging.getLogger("tickpipe.storage")
    skipped: list = []

    def skip(row) -> str:                      # pyarrow's InvalidRow: number is the line (1 = header)
        skipped.append(row.number)
        return "skip"
    parse = pcsv.ParseOptions(invalid_row_handler=skip)
    one_thread = pcsv.ReadOptions(use_threads=False)      # so that a bad line's number is known
    try:
        table = pcsv.read_csv(path, read_options=one_thread, parse_options=parse)
    except pa.ArrowInvalid:                    # a numeric column met text past its first block
        skipped.clear()
        names = set(market_columns(path))
        as_text = {n: pa.string() for n in NUMERIC_COLUMNS if n in names}
        table = pcsv.read_csv(path, read_options=one_thread, parse_options=parse,
                              convert_options=pcsv.ConvertOptions(column_types=as_text))
    textual = [n for n in NUMERIC_COLUMNS if n in table.column_names
               and pa.types.is_string(table.schema.field(n).type)]
    table, text = _numbers_from_text(table, textual, skipped)
    if skipped:
        lines = ", ".join(str(n) for n in skipped[:BAD_LINES_SHOWN] if n is not None)
        log.warning("%s: %d line%s of the wrong width skipped (line %s%s)", path, len(skipped),
                    "s" * (len(skipped) != 1), lines,
                    ", ..." if len(skipped) > BAD_LINES_SHOWN else "")
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"tickpipe.malformed": str(len(skipped)).encode()})
    for name, lines in text.items():
        log.warning("%s: %d cell%s of %s not a number (line %s%s): the row is dropped", path,
                    len(lines), "s" * (len(lines) != 1), name, ", ".join(map(str, lines[:BAD_LINES_SHOWN])),
                    ", ..." if len(lines) > BAD_LINES_SHOWN else "")
    return table


def _numbers_from_text(table: pa.Table, names: list[str], skipped: list) -> tuple[pa.Table, dict]:
    """The columns ``names`` (read as text) as float64, a cell that is no number as NaN;
    and the file lines of those cells per column (line 1 is the header; lines skipped
    before a row shift its number)."""
    import pyarrow.compute as pc
    bad: dict[str, list[int]] = {}
    gaps = np.array(sorted(n for n in skipped if n is not None), np.int64)
    for name in names:
        col = pc.utf8_trim_whitespace(table.column(name))
        try:
            values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            values = np.array([_number(x) for x in col.to_pylist()], np.float64)
            rows = np.flatnonzero(np.isnan(values) & pc.is_valid(col).to_numpy(zero_copy_only=False)
                                  & ~np.isin(np.array(col.to_pylist(), object), ["nan", "NaN", "NAN"]))
            lines = rows + 2                      # the header is line 1
            for g in gaps:                        # a skipped line before a row pushes it down
                lines = lines + (lines >= g)
            bad[name] = lines.tolist()
        table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.float64()))
    return table, bad


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _parquet_in(directory: Path) -> list[str]:
    """The Parquet files under a directory given as market data (a downloaded dataset),
    hidden ones (being written) left out; a ValueError that says what is there instead."""
    files = sorted(str(p) for p in directory.rglob("*.parquet")
                   if not any(part.startswith(".") for part in p.relative_to(directory).parts))
    if files:
        return files
    csvs = sorted(directory.glob("*.csv")) + sorted(directory.glob("*.csv.gz"))
    hint = (f"; it has {len(csvs)} CSV file{'s' * (len(csvs) != 1)}: give one with --data, e.g. "
            f"--data {csvs[0]}") if csvs else " (a candle or trade file, CSV or Parquet, or a folder "\
        "`pipeline download` wrote)"
    raise ValueError(f"{directory} holds no Parquet market files{hint}")


def market_columns(path: str | Path) -> list[str]:
    """Column names of a market file, reading as little as the format allows."""
    path = Path(path).expanduser()
    if path.suffix == ".csv" or path.name.endswith(".csv.gz"):
        import gzip
        opener = gzip.open if path.name.endswith(".gz") else open
        # utf-8-sig: a BOM (Excel, many exporters) is not part of the first name; pyarrow's
        # reader skips it too
        with opener(path, "rt", encoding="utf-8-sig") as f:
            return _aliased([c.strip().strip('"') for c in f.readline().strip().split(",")])
    if path.is_dir():
        import pyarrow.dataset as ds
        return _aliased(ds.dataset(_parquet_in(path), format="parquet").schema.names)
    return _aliased(pq.read_schema(path).names)


def numeric(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64 with NaN for missing values."""
    col = table.column(name)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
            or pa.types.is_null(col.type)):
        raise ValueError(f"column {name!r} is not numeric ({col.type})")
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


# -- row checks -------------------------------------------------------------------------
def _in_order(ts: np.ndarray, valid: np.ndarray, strict: bool, after: float) -> np.ndarray:
    """Rows whose time is after every earlier valid row's (and ``after``). An
    out-of-order row never raises the running maximum, so the maximum over
    valid rows is the maximum over kept rows."""
    masked = np.where(valid, ts, -np.inf)
    prev = np.maximum.accumulate(np.r_[after, masked[:-1]]) if len(ts) else masked
    return ts > prev if strict else ts >= prev


def _verdict(checks: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, Counter]:
    """Combine ordered (reason, ok) checks; each bad row counts under its first reason."""
    ok = np.ones(len(checks[0][1]), bool)
    reasons: Counter = Counter()
    for why, passed in checks:
        bad = ok & ~passed
        if bad.any():
            reasons[why] += int(bad.sum())
        ok &= passed
    return ok, reasons


# no market trades outside these: a value beyond them is a broken row (1e300, 1e-300), and
# would overflow the float32 a model takes
MIN_PRICE, MAX_PRICE = 1e-12, 1e12
MAX_VOLUME = 1e18


def _candle_values(ts, o, h, l, c, v) -> list[tuple[str, np.ndarray]]:
    """The checks of a candle on its own values (no order), shared by every reader."""
    prices = np.vstack([o, h, l, c])
    finite = np.isfinite(prices).all(0) & np.isfinite(v) & np.isfinite(ts)
    with np.errstate(invalid="ignore"):
        positive = (prices > 0).all(0) & (v >= 0)
        in_range = ((prices >= MIN_PRICE) & (prices <= MAX_PRICE)).all(0) & (v <= MAX_VOLUME)
        consistent = (h >= np.maximum(o, c)) & (l <= np.minimum(o, c))
    return [("nan", finite), ("non-positive", positive), ("out of range", in_range),
            ("inconsistent ohlc", consistent)]


def _trade_values(ts, price, size, ids=None) -> list[tuple[str, np.ndarray]]:
    """The checks of a trade on its own values (no order), shared by every reader."""
    finite = np.isfinite(ts) & np.isfinite(price) & np.isfinite(size)
    if ids is not None:
        finite &= np.isfinite(ids)
    with np.errstate(invalid="ignore"):
        positive = (price > 0) & (size > 0)
        in_range = (price >= MIN_PRICE) & (price <= MAX_PRICE) & (size <= MAX_VOLUME)
    return [("nan", finite), ("non-positive", positive), ("out of range", in_range)]


def _quote_values(ts, bid, ask) -> list[tuple[str, np.ndarray]]:
    """The checks of a top of book on its own values: a crossed book (bid above ask) is
    broken; a locked one (bid = ask) is taken, as the paper broker takes it."""
    finite = np.isfinite(ts) & np.isfinite(bid) & np.isfinite(ask)
    with np.errstate(invalid="ignore"):
        positive = (bid > 0) & (ask > 0)
        in_range = (bid >= MIN_PRICE) & (ask <= MAX_PRICE)
        uncrossed = bid <= ask
    return [("nan", finite), ("non-positive", positive), ("out of range", in_range),
            ("crossed", uncrossed)]


def _all_pass(checks: list[tuple[str, np.ndarray]]) -> np.ndarray:
    return np.logical_and.reduce([ok for _, ok in checks])


def check_candles(ts, o, h, l, c, v, after: float = -np.inf) -> tuple[np.ndarray, Counter]:
    """Mask of good candles and the count of bad ones per reason: a NaN, a
    price <= 0 or volume < 0, a price or volume outside what any market trades
    (MIN_PRICE..MAX_PRICE, MAX_VOLUME), high/low that do not bracket open and
    close, or a time not after the previous good candle (out of order or
    duplicate). For rows as a venue sent them; a file is read with
    `tidy_market_rows`, which sorts it first."""
    checks = _candle_values(ts, o, h, l, c, v)
    return _verdict(checks + [("out of order", _in_order(ts, _all_pass(checks), True, after))])


def check_trades(ts, price, size, after: float = -np.inf, ids=None,
                 after_id: float = -np.inf) -> tuple[np.ndarray, Counter]:
    """Mask of good trades and bad counts per reason: a NaN, price or size <= 0,
    a price or size outside MIN_PRICE..MAX_PRICE, MAX_VOLUME, or a time before the previous good trade (equal times are fine). With
    ``ids`` (trade ids in the venue's order), a missing id is a NaN and an id
    not after the previous good trade's (and ``after_id``) is out of order."""
    checks = _trade_values(ts, price, size, ids)
    valid = _all_pass(checks)
    order = _in_order(ts, valid, False, after)
    if ids is not None:
        order &= _in_order(ids, valid, True, after_id)
    return _verdict(checks + [("out of order", order)])


# -- reading a market file: sorted, duplicates dropped ----------------------------------------
@dataclass
class MarketRows:
    """A market file's good rows in time order, and what reading it changed."""
    table: pa.Table        # the good rows, every column of the file, sorted
    kind: str              # "candles" or "trades"
    dropped: Counter       # bad rows per reason
    reordered: int         # kept rows that came after a row that sorts later


def _first_rows(table: pa.Table, rows: np.ndarray, key: list[str]) -> np.ndarray:
    """Mask: the row is the first in file order among ``rows`` with its ``key`` values."""
    t = table.select(key).take(pa.array(rows)).append_column("__row", pa.array(rows))
    firsts = t.group_by(key).aggregate([("__row", "min")]).column("__row_min").to_numpy()
    first = np.zeros(table.num_rows, bool)
    first[firsts] = True
    return first


# epoch times of 1973 to 5138 in seconds and in microseconds (or finer): not milliseconds
SECONDS_RANGE, MICROS_FROM = (1e8, 1e11), 1e14


def _check_time_unit(ts: np.ndarray) -> None:
    """A file's timestamps in another unit than milliseconds is a ValueError naming it, not
    rows played in 1970 or overflowing into another century."""
    good = ts[np.isfinite(ts)]
    if not len(good):
        return
    mid = float(np.median(good))
    if not (SECONDS_RANGE[0] <= mid < SECONDS_RANGE[1] or mid >= MICROS_FROM):
        return
    unit = ("seconds" if mid < SECONDS_RANGE[1] else "microseconds" if mid < 1e17
            else "nanoseconds" if mid < 1e20 else "no time unit")
    raise ValueError(f"timestamp_ms must be milliseconds since 1970; these look like {unit} "
                     f"(median {mid:.6g})")


def tidy_market_rows(table: pa.Table, kind: str | None = None) -> MarketRows:
    """The rows of a market file a reader keeps, in time order: a file may be
    concatenated or exported unsorted, and a model or a replay needs each bar
    once, in order. Steps: rows failing a value check (`check_candles`,
    `check_trades`) are dropped; of the good rows sharing a key (candles: the
    time; trades: the trade id, or without ids the whole row, since many trades
    share a millisecond) the first in file order is kept and the others are
    dropped as "duplicate" when every column equals an earlier row's, else as
    "conflicting duplicate"; the rest are sorted by time (stable; trades by
    time, then trade id). Quotes (a top of book: bid, ask) are checked like
    trades, and a crossed one is dropped. ``kind`` defaults to `detect_kind`; a non-numeric
    column is a ValueError."""
    kind = kind or detect_kind(table.column_names)
    names = table.column_names
    ts = numeric(table, "timestamp_ms")
    _check_time_unit(ts)
    ids = None
    if kind == "candles":
        checks = _candle_values(ts, *(numeric(table, n) for n in OHLCV_COLUMNS[1:]))
        key = ["timestamp_ms"]
    elif kind == "quotes":
        checks = _quote_values(ts, numeric(table, "bid"), numeric(table, "ask"))
        key = names                   # many quotes share a millisecond: only a whole row repeats
    else:
        size = next(n for n in TRADE_SIZE_COLUMNS if n in names)
        checks = _trade_values(ts, numeric(table, "price"), numeric(table, size))
        if "trade_id" in names:
            ids = numeric(table, "trade_id")
            if not np.isfinite(ids[_all_pass(checks)]).all():
                ids = None            # a partial id column orders nothing (as before: ids optional)
        key = ["trade_id"] if ids is not None else names
    valid = _all_pass(checks)
    malformed = int((table.schema.metadata or {}).get(b"tickpipe.malformed", b"0"))
    rows = np.flatnonzero(valid)
    keys = ts[rows] if kind == "candles" else ids[rows] if ids is not None else None
    if keys is not None and len(np.unique(keys)) == len(rows):
        first = valid                 # the usual file: nothing repeats, skip the grouping
    else:
        first = _first_rows(table, rows, key)
    repeat = valid & ~first
    copy = repeat & ~_first_rows(table, rows, names) if repeat.any() else repeat
    ok, dropped = _verdict(checks + [("duplicate", ~copy), ("conflicting duplicate", ~(repeat & ~copy))])
    if malformed:
        dropped[MALFORMED] = malformed
    order = np.lexsort((ids, ts) if ids is not None else (ts,))       # stable
    keep = order[ok[order]]
    rank = np.argsort(keep, kind="stable")        # sorted position of each kept row, in file order
    behind = rank < np.maximum.accumulate(np.r_[-1, rank[:-1]]) if len(rank) else rank
    return MarketRows(table.take(pa.array(keep, pa.int64())), kind, dropped, int(np.sum(behind)))


def read_market_rows(path: str | Path) -> MarketRows:
    """`read_market_table` then `tidy_market_rows`: how every reader of a market file
    (features, training, replay) gets its rows."""
    return tidy_market_rows(read_market_table(path))


def rows_note(dropped: dict[str, int], reordered: int = 0) -> str:
    """What reading a file changed, for a command's summary line ("" when nothing)."""
    parts = []
    if dropped:
        parts.append(f"dropped {sum(dropped.values())} bad rows "
                     f"({', '.join(f'{k} {n}' for k, n in dropped.items())})")
    if reordered:
        parts.append(f"sorted {reordered} rows that were out of order")
    return "; ".join(parts)
