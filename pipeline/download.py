"""`pipeline download`: OHLCV history from a venue through ccxt into Parquet.

Pages are fetched by ``since`` (``limit`` bars each, the venue's ``until``
bound set) inside a token bucket, and every page is merged into the
dataset's month files before the next is asked for. A run that is stopped
(Ctrl-C, a network failure) therefore loses nothing, and the next run reads
what the dataset holds and asks only for what is missing: before its first
bar (if ``--since`` is earlier) and after its last. Holes inside the stored
range (venue outages) are not asked for again.

Only closed bars are stored: the bar still forming at "now" is left out, so
a stored bar never changes. Bad rows from the venue (NaN, a price <= 0,
volume < 0, high/low that do not bracket open/close, a time not after the
previous bar) are dropped, counted by reason and reported.
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

from workers.storage import OHLCV_COLUMNS, append_ohlcv, check_candles, ohlcv_bounds, ohlcv_dir

from .cli import UserError

# options that keep a venue's market loading to the spot markets we download
# (binance would otherwise also ask its futures hosts)
MARKET_OPTIONS = {"binance": {"fetchMarkets": {"types": ["spot"]}}}
RETRIES = 4              # network errors are retried, with doubling waits from 1 s


@dataclass
class DownloadResult:
    path: Path
    requests: int = 0
    received: int = 0                 # rows the venue sent inside the asked range
    stored: int = 0                   # new bars written
    expected: int = 0                 # bars the asked ranges span
    bad: Counter = field(default_factory=Counter)
    held: tuple[int, int] | None = None   # the dataset's first and last bar afterwards

    def summary(self, venue: str, symbol: str, timeframe: str) -> str:
        lines = [f"{venue} {symbol} {timeframe}: {self.stored} new bars from {self.requests} "
                 f"requests into {self.path}"]
        if self.bad:
            why = ", ".join(f"{k} {v}" for k, v in sorted(self.bad.items()))
            lines.append(f"dropped {sum(self.bad.values())} bad rows from the venue ({why})")
        missing = self.expected - self.stored - sum(self.bad.values())
        if self.expected and missing > 0:
            lines.append(f"{missing} bars of the range were not offered by the venue "
                         "(outages, or not listed yet)")
        if self.held:
            lines.append(f"the dataset holds {fmt_ms(self.held[0])} .. {fmt_ms(self.held[1])}")
        return "\n".join(lines)


def fmt_ms(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


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


def open_exchange(venue: str, rest_url: str = ""):
    """A ccxt exchange for ``venue`` (its REST origin moved to ``rest_url`` if given)."""
    import ccxt

    from workers.venues.rest import make_exchange
    if venue not in ccxt.exchanges:
        near = difflib.get_close_matches(venue, ccxt.exchanges, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise UserError(f"unknown venue {venue!r}: ccxt has no exchange of that name{hint}")
    ex = make_exchange(venue, rest_url)
    for key, value in MARKET_OPTIONS.get(venue, {}).items():
        ex.options[key] = value
    if not ex.has.get("fetchOHLCV"):
        raise UserError(f"{venue} offers no OHLCV history through ccxt")
    return ex


class _Client:
    """ccxt calls inside the token bucket; network errors are retried, venue
    errors become one-line UserErrors."""

    def __init__(self, ex, rate_per_s: float):
        from workers.venues.base import Health
        from workers.venues.rest import RateLimiter, RestClient
        self.rest = RestClient(ex, RateLimiter(rate_per_s), Health())
        self.venue = ex.id

    @property
    def calls(self) -> int:
        return self.rest.health.rest_calls

    def call(self, method: str, *args, **kwargs):
        import ccxt
        for attempt in range(RETRIES + 1):
            try:
                return self.rest.call(method, *args, **kwargs)
            except ccxt.NetworkError as e:
                if attempt == RETRIES:
                    raise UserError(f"{self.venue}: {method} failed {RETRIES + 1} times, last: "
                                    f"{_short(e)}; run the same command again to resume") from None
                time.sleep(2 ** attempt)
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


def download(venue: str, symbol: str, timeframe: str, since_ms: int, until_ms: int | None = None,
             out: str | Path = "data", rest_url: str = "", rate_per_s: float | None = None,
             limit: int = 1000, progress: bool = True) -> DownloadResult:
    """Download [since, until) (until: now) of closed bars into the Parquet dataset
    under ``out``, resuming from what it already holds."""
    from tqdm import tqdm
    if limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if rate_per_s is not None and rate_per_s <= 0:
        raise UserError(f"--rate must be > 0 requests per second, got {rate_per_s:g}")
    ex = open_exchange(venue, rest_url)
    if timeframe not in (ex.timeframes or {}):
        raise UserError(f"unknown timeframe {timeframe!r} for {venue} "
                        f"(known: {', '.join(ex.timeframes or {})})")
    tf_ms = ex.parse_timeframe(timeframe) * 1000
    now_ms = int(time.time() * 1000)
    end = now_ms // tf_ms * tf_ms            # the open time of the bar still forming
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

    path = ohlcv_dir(out, venue, symbol, timeframe)
    held = ohlcv_bounds(path)
    if held is None:
        ranges = [(since_ms, end)]
    else:
        first, last = held
        ranges = [(since_ms, min(first, end))] if since_ms < first else []
        if last + tf_ms < end:
            ranges.append((max(since_ms, last + tf_ms), end))
    res = DownloadResult(path, expected=sum(-(-(e - s) // tf_ms) for s, e in ranges if e > s))
    bar = tqdm(total=res.expected, unit="bar", desc=f"{venue} {symbol} {timeframe}",
               file=sys.stderr, disable=not progress, mininterval=0.5, dynamic_ncols=True)
    try:
        for start, stop in ranges:
            _download_range(client, symbol, timeframe, tf_ms, start, stop, limit, path, res, bar)
    finally:
        bar.close()
        res.requests = client.calls
        res.held = ohlcv_bounds(path)
    return res


def _download_range(client: _Client, symbol: str, timeframe: str, tf_ms: int, start: int,
                    stop: int, limit: int, path: Path, res: DownloadResult, bar) -> None:
    since = start
    after = -np.inf                   # the last good bar of this range
    while since < stop:
        page = client.call("fetch_ohlcv", symbol, timeframe, since=since, limit=limit,
                           params={"until": stop - 1})
        rows = _rows(page or [])
        ts = rows[:, 0]
        with np.errstate(invalid="ignore"):
            rows = rows[~(ts >= stop)]                   # past the range: not ours (NaN stays)
        if len(rows) == 0:
            break                                        # nothing more in [since, stop)
        res.received += len(rows)
        ts, o, h, l, c, v = rows.T
        ok, bad = check_candles(ts, o, h, l, c, v, after=max(after, since - 1))
        res.bad.update(bad)
        good = rows[ok]
        if len(good):
            table = pa.table({name: good[:, j] for j, name in enumerate(OHLCV_COLUMNS)})
            table = table.set_column(0, "timestamp_ms", pa.array(good[:, 0].astype(np.int64)))
            res.stored += append_ohlcv(path, table)
            after = float(good[-1, 0])
        newest = np.nanmax(ts) if np.isfinite(ts).any() else np.nan
        if not np.isfinite(newest) or newest + tf_ms <= since:
            break                                        # the venue makes no progress
        nxt = int(newest) + tf_ms
        bar.update((min(nxt, stop) - since) // tf_ms)
        since = nxt
