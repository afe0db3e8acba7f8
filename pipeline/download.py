"""`pipeline download`: OHLCV history, or trades, from a venue through ccxt into Parquet.

Both share one loop (``_fill``): pages are asked for inside a token bucket,
bad rows dropped and counted, good rows merged into the dataset's period
files, and a run that is stopped (Ctrl-C, a network failure) keeps what it
fetched: the next run reads what the dataset holds and asks only for what is
missing, before its first row (if ``--since`` is earlier) and after its last.
Holes inside the stored range (venue outages) are not asked for again.

OHLCV bars are paged by time (``since``, ``limit`` bars each, the venue's
``until`` bound set) and every page is merged into the month files at once.
Only closed bars are stored: the bar still forming at "now" is left out, so a
stored bar never changes. Bad bars (NaN, a price <= 0, volume < 0, high/low
that do not bracket open/close, a time not after the previous bar) are dropped.

Trades are paged by trade id: Binance's aggregate trades (ccxt
``fetch_trades`` with ``fromId``, ``limit`` trades a page). Only where a
range starts is a trade looked up by time, in windows of at most an hour
(Binance's cap) that shrink while a page comes back full, so the first trade
at or after ``--since`` is found whichever end of a crowded window the venue
answers with; a resumed run goes on at the id after the last stored one. A
trade has a unique id, so pages never overlap and no time bucket needs
splitting. Trades are held in memory up to ``TRADE_FLUSH_ROWS`` and merged
into their day files then, at the end, or when the run is stopped. Bad trades
(NaN or missing values, price or amount <= 0, a time before the previous
trade, an id not after the previous one) are dropped.
"""
from __future__ import annotations

import difflib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from .storage import (OHLCV_COLUMNS, append_ohlcv, append_trades, check_candles,
                             check_trades, ohlcv_bounds, ohlcv_dir, trades_bounds, trades_dir)

from .errors import UserError

# options that keep a venue's market loading to the spot markets we download
# (binance would otherwise also ask its futures hosts)
MARKET_OPTIONS = {"binance": {"fetchMarkets": {"types": ["spot"]}}}
RETRIES = 4              # network errors are retried, with doubling waits from 1 s
FIRST_RETRIES = 1        # ... but only this often before the venue has answered at all
HOUR_MS = 3_600_000      # the widest startTime..endTime window Binance answers aggTrades for
TRADE_FLUSH_ROWS = 100_000   # trades held before a merge (each merge rewrites a day file)


@dataclass
class DownloadResult:
    path: Path
    unit: str = "bars"                # what a row is: "bars" or "trades"
    what: str = ""                    # the timeframe, or "trades"
    requests: int = 0
    received: int = 0                 # rows the venue sent inside the asked range
    stored: int = 0                   # new rows written
    expected: int = 0                 # bars the asked ranges span (OHLCV only)
    bad: Counter = field(default_factory=Counter)
    held: tuple[int, int] | None = None   # the dataset's first and last row time afterwards

    def summary(self, venue: str, symbol: str) -> str:
        lines = [f"{venue} {symbol} {self.what}: {self.stored} new {self.unit} from "
                 f"{self.requests} requests into {self.path}"]
        if self.bad:
            why = ", ".join(f"{k} {v}" for k, v in sorted(self.bad.items()))
            lines.append(f"dropped {sum(self.bad.values())} bad rows from the venue ({why})")
        missing = self.expected - self.stored - sum(self.bad.values())
        if self.expected and missing > 0:
            lines.append(f"{missing} bars of the range were not offered by the venue "
                         "(outages, or not listed yet)")
        if self.held:
            secs = self.unit == "trades"
            lines.append(f"the dataset holds {fmt_ms(self.held[0], secs)} .. "
                         f"{fmt_ms(self.held[1], secs)}")
        return "\n".join(lines)


def fmt_ms(ts_ms: int, seconds: bool = False) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def parse_time(text: str, flag: str) -> int:
    """An ISO date or date-time (UTC unless it says otherwise) -> epoch ms."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"{flag}: not a date: {text!r} (use YYYY-MM-DD or "
                        "YYYY-MM-DDTHH:MM, UTC)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def open_exchange(venue: str, rest_url: str = "", need: str = "fetchOHLCV"):
    """A ccxt exchange for ``venue`` (its REST origin moved to ``rest_url`` if given)
    that has the ccxt method ``need``."""
    import ccxt

    from workers.venues.rest import make_exchange
    if venue not in ccxt.exchanges:
        near = difflib.get_close_matches(venue, ccxt.exchanges, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise UserError(f"unknown venue {venue!r}: ccxt has no exchange of that name{hint}")
    ex = make_exchange(venue, rest_url)
    for key, value in MARKET_OPTIONS.get(venue, {}).items():
        ex.options[key] = value
    if not ex.has.get(need):
        what = "OHLCV history" if need == "fetchOHLCV" else "trades"
        raise UserError(f"{venue} offers no {what} through ccxt")
    return ex


class Unreachable(UserError):
    """The venue cannot be reached (offline, refused, timed out, unavailable)."""


class _Client:
    """ccxt calls inside the token bucket; network errors are retried (a venue that
    has not answered yet only ``FIRST_RETRIES`` times: offline is said in seconds),
    then one line: the venue cannot be reached (`Unreachable`), or it keeps refusing
    for its rate limit; venue errors become one-line UserErrors."""

    def __init__(self, ex, rate_per_s: float):
        from workers.venues.base import Health
        from workers.venues.rest import RateLimiter, RestClient
        self.rest = RestClient(ex, RateLimiter(rate_per_s), Health())
        self.venue = ex.id
        self.answered = False          # a call has succeeded

    @property
    def calls(self) -> int:
        return self.rest.health.rest_calls

    def call(self, method: str, *args, **kwargs):
        import ccxt

        from workers.venues.base import short_reason
        retries = RETRIES if self.answered else FIRST_RETRIES
        for attempt in range(retries + 1):
            try:
                out = self.rest.call(method, *args, **kwargs)
                self.answered = True
                return out
            except ccxt.NetworkError as e:
                if attempt == retries:
                    if isinstance(e, ccxt.DDoSProtection):      # 429, 418: it answered
                        raise UserError(f"{self.venue}: {method} refused {retries + 1} times for "
                                        f"the rate limit, last: {_short(e)}; try a lower --rate"
                                        ) from None
                    raise Unreachable(f"cannot reach {self.venue} ({short_reason(e, 150)}): "
                                      "check the network") from None
                time.sleep(2 ** attempt)       # a backoff timer before the next try
            except ccxt.BaseError as e:
                raise UserError(f"{self.venue}: {method}: {_short(e)}") from None


def _short(e: Exception) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= 200 else text[:200] + "..."


def _rows(page: list) -> np.ndarray:
    """ccxt OHLCV rows -> float array (n, 6); None or missing values become NaN."""
    out = np.full((len(page), 6), np.nan)
    for i, row in enumerate(page):
        for j, x in enumerate(row[:6]):
            try:
                out[i, j] = float(x)
            except (TypeError, ValueError):
                pass
    return out


def _number(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return np.nan


SIDES = {"buy": 1.0, "sell": 0.0}


def _trade_rows(trades: list) -> np.ndarray:
    """ccxt trades (None for one ccxt could not read) -> float array (n, 5) of
    time, trade id, price, amount, side (1 buy, 0 sell), in trade id order;
    missing values become NaN (and sort last)."""
    out = np.full((len(trades), 5), np.nan)
    for i, t in enumerate(trades):
        if isinstance(t, dict):
            out[i, :4] = [_number(t.get(k)) for k in ("timestamp", "id", "price", "amount")]
            out[i, 4] = SIDES.get(t.get("side"), np.nan)
    return out[np.argsort(out[:, 1], kind="stable")]     # ccxt sorts a page by time


@dataclass
class _Range:
    start: int                        # the first time asked for (epoch ms)
    stop: int                         # the end, exclusive
    from_id: int | None = None        # trades: go on at this id (the one after the last stored)
    stop_id: int | None = None        # trades: end before this id (the first stored)


class _Bars:
    """OHLCV bars for ``_fill``: paged by time; every page is merged into the
    month files at once (they are small), so nothing is held in memory."""
    unit, flush_rows, expect_all = "bars", 0, True

    def __init__(self, ex, venue: str, symbol: str, timeframe: str, out):
        if timeframe not in (ex.timeframes or {}):
            raise UserError(f"unknown timeframe {timeframe!r} for {venue} "
                            f"(known: {', '.join(ex.timeframes or {})})")
        self.symbol, self.what = symbol, timeframe
        self.step_ms = ex.parse_timeframe(timeframe) * 1000     # progress steps: bars
        self.path = ohlcv_dir(out, venue, symbol, timeframe)

    def progress(self, bar_kw: dict) -> dict:
        return {**bar_kw, "unit": "bar"}

    def end(self, now_ms: int) -> int:
        return now_ms // self.step_ms * self.step_ms       # the open time of the bar still forming

    def held(self) -> tuple[int, int] | None:
        return ohlcv_bounds(self.path)

    def ranges(self, since: int, end: int) -> list[_Range]:
        held = self.held()
        if held is None:
            return [_Range(since, end)]
        first, last = held
        ranges = [_Range(since, min(first, end))] if since < first else []
        if last + self.step_ms < end:
            ranges.append(_Range(max(since, last + self.step_ms), end))
        return ranges

    def begin(self, client, rng: _Range, limit: int):
        return rng.start                                    # the cursor: the next bar's time

    def floor(self, rng: _Range):
        return -np.inf                                      # the last good bar: none yet

    def page(self, client, cursor, rng: _Range, limit: int) -> np.ndarray:
        page = client.call("fetch_ohlcv", self.symbol, self.what, since=cursor, limit=limit,
                           params={"until": rng.stop - 1})
        return _rows(page or [])

    def past(self, rows: np.ndarray, rng: _Range) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return rows[:, 0] >= rng.stop                   # NaN stays, to be counted

    def check(self, rows, last, cursor):
        ts, o, h, l, c, v = rows.T
        return check_candles(ts, o, h, l, c, v, after=max(last, cursor - 1))

    def last_of(self, good: np.ndarray):
        return float(good[-1, 0])

    def advance(self, rows: np.ndarray, cursor):
        ts = rows[:, 0]
        newest = np.nanmax(ts) if np.isfinite(ts).any() else np.nan
        if not np.isfinite(newest) or newest + self.step_ms <= cursor:
            return None, cursor                             # the venue makes no progress
        nxt = int(newest) + self.step_ms
        return nxt, nxt

    def table(self, good: np.ndarray) -> pa.Table:
        table = pa.table({name: good[:, j] for j, name in enumerate(OHLCV_COLUMNS)})
        return table.set_column(0, "timestamp_ms", pa.array(good[:, 0].astype(np.int64)))

    def append(self, table: pa.Table) -> int:
        return append_ohlcv(self.path, table)


class _Trades:
    """Trades for ``_fill``: paged by trade id (Binance's aggregate trades through
    ccxt fetch_trades with fromId), located by time where a range starts."""
    unit, what, flush_rows, expect_all = "trades", "trades", TRADE_FLUSH_ROWS, False
    step_ms = 1000                                          # progress steps: seconds of trading

    def __init__(self, ex, venue: str, symbol: str, out):
        import ccxt
        if not isinstance(ex, ccxt.binance):
            raise UserError(f"trades download pages by trade id, which tickpipe does for Binance's "
                            f"aggregate trades only: {venue} is not supported yet (its OHLCV is: "
                            "use --timeframe)")
        ex.enableLastJsonResponse = True                    # to read a page ccxt cannot
        self.ex, self.symbol = ex, symbol
        self.path = trades_dir(out, venue, symbol)

    def progress(self, bar_kw: dict) -> dict:
        return {**bar_kw, "unit": "s", "bar_format": "{l_bar}{bar}| {n_fmt}/{total_fmt} s of "
                "trading [{elapsed}<{remaining}{postfix}]"}

    def end(self, now_ms: int) -> int:
        return now_ms                                       # a trade, once made, never changes

    def held(self) -> tuple[int, int] | None:
        ends = trades_bounds(self.path)
        return None if ends is None else (ends[0][0], ends[1][0])

    def ranges(self, since: int, end: int) -> list[_Range]:
        ends = trades_bounds(self.path)
        if ends is None:
            return [_Range(since, end)]
        (first_ts, first_id), (last_ts, last_id) = ends
        ranges = [_Range(since, min(first_ts, end), stop_id=first_id)] if since < first_ts else []
        if since > last_ts:
            ranges.append(_Range(since, end))              # leaves a hole after the stored trades
        elif last_ts < end:
            ranges.append(_Range(last_ts, end, from_id=last_id + 1))
        return ranges

    def fetch(self, client, since=None, limit=None, params=None) -> np.ndarray:
        """One fetch_trades page as ``_trade_rows``. A row ccxt cannot read (a
        "NaN" price fails its cost arithmetic, and with it the whole page) is
        read on its own from the page's JSON: only its id and time are kept
        (so that the next page starts after it), its values become NaN."""
        self.ex.last_json_response = None
        # the limit goes to the venue as a parameter: ccxt's own would cut a page that
        # is longer (a duplicate row) after sorting it by time, losing a row unseen
        params = {**(params or {}), **({"limit": limit} if limit else {})}
        try:
            trades = client.call("fetch_trades", self.symbol, since=since, params=params)
        except (ArithmeticError, ValueError, TypeError) as e:
            raw = self.ex.last_json_response
            if not isinstance(raw, list):
                raise UserError(f"{self.ex.id}: fetch_trades: an answer ccxt cannot read: "
                                f"{_short(e)}") from None
            market = self.ex.market(self.symbol)
            trades = []
            for item in raw:
                try:
                    trades.append(self.ex.parse_trade(item, market))
                except Exception:   # noqa: BLE001 (any failure: the row is unreadable)
                    ok = isinstance(item, dict)         # aggTrades' keys, else /trades'
                    trades.append({"id": self.ex.safe_string_2(item, "a", "id"),
                                   "timestamp": self.ex.safe_integer_2(item, "T", "time")}
                                  if ok else None)
        return _trade_rows(trades or [])

    def begin(self, client, rng: _Range, limit: int) -> int | None:
        """The cursor: the id of the first trade to ask for, or None if the range has none."""
        if rng.from_id is not None:
            return rng.from_id
        t, probed = rng.start, False
        while t < rng.stop:
            w = min(HOUR_MS, rng.stop - t)
            while True:
                rows = self.fetch(client, since=t, limit=limit, params={"until": t + w - 1})
                if len(rows) < limit or w == 1:
                    break
                # a full page: the window may hold more than it, and Binance does not say
                # which end it answered with. Shrink the window to its first trade.
                ts = rows[:, 0]
                first = int(np.nanmin(ts)) if np.isfinite(ts).any() else t + w - 1
                w = max(1, min(w // 2, first - t + 1))
            with np.errstate(invalid="ignore"):
                found = rows[np.isfinite(rows[:, 1]) & (rows[:, 0] >= t)]
            if len(found):
                return int(found[:, 1].min())
            if not probed:             # nothing in the first window: before the listing?
                probed = True
                oldest = self.fetch(client, limit=1, params={"fromId": 0})
                if len(oldest) and np.isfinite(oldest[0, :2]).all() and oldest[0, 0] >= t:
                    return int(oldest[0, 1]) if oldest[0, 0] < rng.stop else None
            t += w
        return None

    def floor(self, rng: _Range):
        # (time, id) of the last good trade: the stored one a resumed range follows
        return (rng.start, rng.from_id - 1) if rng.from_id is not None else (rng.start, -np.inf)

    def page(self, client, cursor, rng: _Range, limit: int) -> np.ndarray:
        return self.fetch(client, limit=limit, params={"fromId": cursor})

    def past(self, rows: np.ndarray, rng: _Range) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            past = rows[:, 0] >= rng.stop
            if rng.stop_id is not None:
                past |= rows[:, 1] >= rng.stop_id
        return past

    def check(self, rows, last, cursor):
        ts, ids, price, amount, side = rows.T
        price = np.where(np.isnan(side), np.nan, price)       # no side: a missing value
        return check_trades(ts, price, amount, after=last[0], ids=ids,
                            after_id=max(last[1], cursor - 1))

    def last_of(self, good: np.ndarray):
        return float(good[-1, 0]), float(good[-1, 1])

    def advance(self, rows: np.ndarray, cursor):
        ok = np.isfinite(rows[:, :2]).all(1)
        if not ok.any() or rows[ok, 1].max() < cursor:
            return None, None                               # the venue makes no progress
        return int(rows[ok, 1].max()) + 1, int(rows[ok, 0].max())

    def table(self, good: np.ndarray) -> pa.Table:
        return pa.table({"timestamp_ms": good[:, 0].astype(np.int64),
                         "trade_id": good[:, 1].astype(np.int64),
                         "price": good[:, 2], "amount": good[:, 3],
                         "side": np.where(good[:, 4] == 1.0, "buy", "sell")})

    def append(self, table: pa.Table) -> int:
        return append_trades(self.path, table)


class _Pending:
    """Good rows not merged into the dataset yet; merged once ``series.flush_rows``
    are held, and by ``flush`` (the end of a run, an interrupt, an error)."""

    def __init__(self, series, res: DownloadResult):
        self.series, self.res = series, res
        self.tables: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.rows += table.num_rows
        if self.rows >= self.series.flush_rows:
            self.flush()

    def flush(self) -> None:
        if self.tables:
            tables, self.tables, self.rows = self.tables, [], 0
            self.res.stored += self.series.append(pa.concat_tables(tables))


def download(venue: str, symbol: str, timeframe: str | None, since_ms: int,
             until_ms: int | None = None, out: str | Path = "data", rest_url: str = "",
             rate_per_s: float | None = None, limit: int = 1000, progress: bool = True,
             trades: bool = False) -> DownloadResult:
    """Download [since, until) (until: now) of closed ``timeframe`` bars, or with
    ``trades`` of trades, into the Parquet dataset under ``out``, resuming from
    what it already holds."""
    from tqdm import tqdm
    if trades and timeframe:
        raise UserError("--trades and --timeframe exclude each other: --timeframe TF downloads "
                        "OHLCV bars, --trades the trades themselves")
    if not trades and not timeframe:
        raise UserError("say what to download: --timeframe TF (OHLCV bars, e.g. 5m) or --trades")
    if limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if rate_per_s is not None and rate_per_s <= 0:
        raise UserError(f"--rate must be > 0 requests per second, got {rate_per_s:g}")
    ex = open_exchange(venue, rest_url, "fetchTrades" if trades else "fetchOHLCV")
    series = _Trades(ex, venue, symbol, out) if trades else _Bars(ex, venue, symbol, timeframe, out)
    now_ms = int(time.time() * 1000)
    end = series.end(now_ms)
    if until_ms is not None:
        end = min(end, until_ms)
    if since_ms >= now_ms:
        raise UserError(f"--since {fmt_ms(since_ms)} is in the future")
    if since_ms >= end:
        raise UserError(f"--since {fmt_ms(since_ms)} is not before --until {fmt_ms(end)}")

    client = _Client(ex, rate_per_s or 1000.0 / max(ex.rateLimit, 1))
    client.call("load_markets")
    if symbol not in ex.markets:
        near = difflib.get_close_matches(symbol, list(ex.markets), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise UserError(f"unknown symbol {symbol!r} on {venue}{hint}")

    ranges = [r for r in series.ranges(since_ms, end) if r.stop > r.start]
    steps = [-(-(r.stop - r.start) // series.step_ms) for r in ranges]
    res = DownloadResult(series.path, unit=series.unit, what=series.what,
                         expected=sum(steps) if series.expect_all else 0)
    bar = tqdm(**series.progress(dict(total=sum(steps), desc=f"{venue} {symbol} {series.what}",
                                      file=sys.stderr, disable=not progress, mininterval=0.5,
                                      dynamic_ncols=True)))
    pending = _Pending(series, res)
    try:
        try:
            for rng, n in zip(ranges, steps):
                _fill(series, client, rng, n, limit, res, pending, bar)
        finally:
            try:
                pending.flush()                 # what was fetched is kept, also on an interrupt
            finally:
                bar.close()
                res.requests = client.calls
                res.held = series.held()
    except Unreachable as e:
        if res.stored:                      # lost halfway: what came is kept, say so
            raise Unreachable(f"{e}; the {res.stored} new {res.unit} fetched before are stored, "
                              "and the same command goes on after them") from None
        raise
    return res


def _fill(series, client: _Client, rng: _Range, steps: int, limit: int, res: DownloadResult,
          pending: _Pending, bar) -> None:
    """Page through one range: fetch, drop what is past it, check, keep the good rows."""
    shown = 0

    def show(reached: int) -> None:
        nonlocal shown
        n = steps if reached >= rng.stop else max(0, (reached - rng.start) // series.step_ms)
        if n > shown:
            bar.update(n - shown)
            shown = n

    cursor = series.begin(client, rng, limit)
    last = series.floor(rng)
    reached = rng.start
    while cursor is not None and reached < rng.stop:
        rows = series.page(client, cursor, rng, limit)
        past = series.past(rows, rng)
        rows = rows[~past]                               # past the range: not ours
        if len(rows) == 0:
            break                                        # nothing more in the range
        res.received += len(rows)
        ok, bad = series.check(rows, last, cursor)
        res.bad.update(bad)
        good = rows[ok]
        if len(good):
            pending.add(series.table(good))
            last = series.last_of(good)
        if past.any():
            break                                        # the venue went past the range's end
        cursor, reached_now = series.advance(rows, cursor)
        reached = reached_now if reached_now is not None else reached
        show(reached)
        if series.unit == "trades":
            bar.set_postfix_str(f"{res.received} trades", refresh=False)
    show(rng.stop)                                       # the range is done
