"""Conversion of each symbol's quote currency into the account's currency.

Execution keeps one account: its capital, equity, P&L and the risk guard's money limits
are in ``[execution] currency``. A symbol quoted in another currency (BTC/KRW in a USDT
account) is valued at a rate from its ``[[execution.fx]]`` sources: a market the pipeline
feeds (Upbit's USDT/KRW mid), a fixed rate, or a file of dated rates for backtests (FRED's
daily USD/KRW), or a URL a poller fetches (``RatePoller``, a reference such as Dunamu's
KRW/USD). Per symbol the core gives ``factor`` (account currency per unit of the
quote; NaN until a rate is known, then the last one) and ``fresh`` (a rate younger than its
source's ``max_age_s``, and every fresh source of the currency within ``fx_band_bps`` of the
one in use). The risk guard values exposure with ``factor`` and lets a symbol whose rate is
not fresh only reduce its position, so a frozen feed never sizes new risk at an old price.

A dated file's row counts from the end of its day: a daily fixing is published after the
fact, and a backtest must not know it earlier.
"""
from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import ExecutionConfig, FxSource, account_currency, symbol_parts
from pipeline.errors import UserError
from shm.records import TICK_TRADE

DAY_NS = 86_400 * 10**9


@dataclass
class _Source:
    quote: str
    kind: str                       # "symbol", "rate", "file" or "url"
    max_age_ns: float
    sid: int = -1                   # the market's symbol id (kind "symbol")
    inverted: bool = False          # the market is QUOTE/ACCOUNT: its price is account per quote
    value: float = math.nan         # the newest rate, quote per account
    ts_ns: int = 0                  # when it was seen (a market) or valid from (a file row)
    times: np.ndarray | None = None  # a file's rows: valid-from times and rates
    rates: np.ndarray | None = None


class FxRates:
    """Per symbol id of ``symbols``: account currency per unit of its quote currency, and
    whether that rate is fresh. ``series`` holds each file source's (valid-from ns, rate)
    arrays by file path (``load_rate_file``); ``update(now)`` recomputes both arrays."""

    def __init__(self, symbols: list[str], currency: str, sources: list[FxSource], band_bps: float,
                 series: dict[str, tuple[np.ndarray, np.ndarray]] | None = None):
        self.currency = currency
        self.band = band_bps / 1e4
        quotes = [symbol_parts(k)[1] for k in symbols]
        native = np.array([q == currency or q == "" for q in quotes])
        self.factor = np.where(native, 1.0, np.nan)
        self.fresh = native.copy()
        self.members = {q: np.flatnonzero(np.array(quotes) == q) for q in sorted(set(quotes)) if q
                        and q != currency}
        self.sources: list[_Source] = []
        self._configs = list(sources)
        for f in sources:
            src = _Source(f.quote, f.kind, f.stale_after_s * 1e9)
            if f.kind == "symbol":
                src.sid = symbols.index(f.symbol)
                src.inverted = symbol_parts(f.symbol)[0] == f.quote
            elif f.kind == "rate":
                src.value = float(f.rate)
            elif f.kind == "file":
                src.times, src.rates = (series or {}).get(f.file) or load_rate_file(f.file, f.column)
            self.sources.append(src)
        self.market_sids = np.array([s.sid for s in self.sources if s.kind == "symbol"], np.int64)
        self.problems: dict[str, str] = {}      # quote -> why its rate is not fresh (now)
        # quote -> (units of it per account unit, when that rate was seen): what ``factor`` holds
        self.rates: dict[str, tuple[float, int]] = {}

    @classmethod
    def from_config(cls, symbols: list[str], ec: ExecutionConfig) -> "FxRates":
        """The rates ``[execution]`` asks for (checked by the config's validation)."""
        return cls(symbols, account_currency(ec, symbols), ec.fx, ec.fx_band_bps)

    def on_price(self, sid: int, price: float, ts_ns: int) -> None:
        """A market source's price (its symbol's mid, a trade, a bar's close) seen at ``ts_ns``."""
        if not (math.isfinite(price) and price > 0):
            return
        for src in self.sources:
            if src.sid == sid and ts_ns >= src.ts_ns:
                src.value = 1.0 / price if src.inverted else price
                src.ts_ns = ts_ns

    def url_sources(self) -> list[tuple[int, FxSource]]:
        """(index, source) of the sources a poller fetches (``on_value`` takes what it gets)."""
        return [(i, f) for i, f in enumerate(self._configs) if f.kind == "url"]

    def on_value(self, index: int, rate: float, ts_ns: int) -> None:
        """A polled source's rate (quote per account unit), fetched at ``ts_ns``."""
        src = self.sources[index]
        if math.isfinite(rate) and rate > 0 and ts_ns >= src.ts_ns:
            src.value, src.ts_ns = float(rate), int(ts_ns)

    def on_bars(self, rows: np.ndarray) -> None:
        """Closed bars (BAR or features rows): the FX markets' closes, as the strategy sees them."""
        if not len(self.market_sids):
            return
        mine = np.isin(rows["symbol_id"], self.market_sids)
        for sid, close, ts in zip(rows["symbol_id"][mine].tolist(), rows["close"][mine].tolist(),
                                  rows["ts_origin_ns"][mine].tolist()):
            self.on_price(sid, close, ts)

    def on_ticks(self, sid: np.ndarray, ticks: np.ndarray) -> None:
        """Take the markets' newest rates from a batch of TICK records (``sid``: their symbol ids):
        the mid of a two-sided quote, else a trade's price."""
        if not len(self.market_sids):
            return
        for i in np.flatnonzero(np.isin(sid, self.market_sids)):
            t = ticks[i]
            bid, ask, price = float(t["bid"]), float(t["ask"]), float(t["price"])
            if math.isfinite(bid) and math.isfinite(ask) and 0 < bid <= ask:
                px = (bid + ask) / 2
            elif int(t["kind"]) == TICK_TRADE and math.isfinite(price) and price > 0:
                px = price
            else:
                continue
            self.on_price(int(sid[i]), px, int(t["ts_origin_ns"]))

    def update(self, now: int) -> bool:
        """Recompute ``factor`` and ``fresh`` at ``now``; True when a currency's freshness
        changed (``problems`` says why each stale one is)."""
        before = set(self.problems)
        for quote, members in self.members.items():
            fresh, why, newest = [], [], (-1, math.nan)
            for src in self.sources:
                if src.quote != quote:
                    continue
                value, since = self._rate_at(src, now)
                if not math.isfinite(value):
                    why.append(f"its {src.kind} source has no rate yet")
                    continue
                if since > newest[0]:
                    newest = (since, value)
                if now - since > src.max_age_ns:
                    why.append(f"its {src.kind} source's rate is {(now - since) / 1e9:.0f}s old")
                else:
                    fresh.append((value, since))
            values = [v for v, _ in fresh]
            if fresh:
                spread = (max(values) - min(values)) / min(values)
                if spread > self.band:
                    why = [f"its sources are {spread * 1e4:.0f} bps apart (band {self.band * 1e4:.0f})"]
            rate, since = fresh[0] if fresh else (newest[1], newest[0])   # stale: the newest still values it
            if math.isfinite(rate):
                self.factor[members] = 1.0 / rate
                self.rates[quote] = (rate, since)
            ok = bool(fresh) and not (len(fresh) > 1 and spread > self.band)
            self.fresh[members] = ok
            if ok:
                self.problems.pop(quote, None)
            else:
                self.problems[quote] = f"{quote} -> {self.currency}: " + "; ".join(why or ["no source"])
        return before != set(self.problems)

    @staticmethod
    def _rate_at(src: _Source, now: int) -> tuple[float, int]:
        if src.kind == "rate":
            return src.value, now
        if src.kind in ("symbol", "url"):
            return src.value, src.ts_ns
        k = int(np.searchsorted(src.times, now, side="right")) - 1
        return (float(src.rates[k]), int(src.times[k])) if k >= 0 else (math.nan, 0)


def load_rate_file(path: str | Path, column: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(valid-from ns, rate) of a CSV of dated rates, in time order: its first column a date
    (YYYY-MM-DD, valid from the end of that UTC day) or an ISO time (valid from then), the
    rate in ``column`` or the last column. Rows without a number (FRED writes "." on a
    holiday) are skipped; a zero, negative or out-of-order row is a UserError naming its line."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except IsADirectoryError:
        raise UserError(f"FX rate file {path} is a directory; give a CSV file") from None
    except OSError as e:
        raise UserError(f"FX rate file {path}: cannot read it ({e.strerror})") from None
    if len(rows) < 2:
        raise UserError(f"FX rate file {path}: needs a header and at least one row")
    header = [h.strip() for h in rows[0]]
    if column and column not in header:
        raise UserError(f"FX rate file {path}: no column {column!r} (has {', '.join(header)})")
    col = header.index(column) if column else len(header) - 1
    times, rates = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row or len(row) <= col:
            continue
        try:
            rate = float(row[col])
        except ValueError:
            continue                                    # "." or blank: no fixing that day
        when = row[0].strip()
        try:
            if len(when) == 10:
                t = dt.datetime.strptime(when, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
                ns = int(t.timestamp()) * 10**9 + DAY_NS
            else:
                t = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
                if t.tzinfo is None:
                    raise ValueError("a time without a zone")
                ns = int(t.timestamp() * 1e9)
        except ValueError as e:
            raise UserError(f"FX rate file {path}, line {line}: {when!r} is not a date or a zoned "
                            f"ISO time ({e})") from None
        if not (math.isfinite(rate) and rate > 0):
            raise UserError(f"FX rate file {path}, line {line}: rate {row[col]!r} must be a number > 0")
        if times and ns <= times[-1]:
            raise UserError(f"FX rate file {path}, line {line}: {when} is not after the row before")
        times.append(ns)
        rates.append(rate)
    if not times:
        raise UserError(f"FX rate file {path}: no row with a rate in column {header[col]!r}")
    return np.array(times, np.int64), np.array(rates)
