"""What a backtest did, in figures a trader reads: metrics, a fingerprint, JSON, HTML and PNG.

The backtest engine (pipeline/backtest.py) fills a `BacktestResult`; this module
only reads it. Everything here is a pure function of the result, so two runs
with the same fills give the same report, byte for byte apart from the plots.

Definitions (quote currency unless said; every figure is null in JSON where it is
undefined, never NaN):

* **Equity curve**: the starting capital, then the account's equity marked at
  each bar close after fees (``result.equity``). The starting capital stands one
  bar before the first close, so fees and fills of the first bar count.
* **Bar return**: ``r_t = E_t / E_(t-1) - 1`` along the equity curve (T bars give T
  returns). Bars per year: ``365 * 86400 / bar_seconds`` (crypto trades every day).
* **Total return**: ``E_end / E_start - 1``.
* **CAGR**: ``(E_end / E_start) ** (1 / years) - 1``, years being the calendar
  span of the curve (``365 * 86400`` s a year); -100 % if equity reached zero.
  Annualised on a short period (a month) it is large: read it with the span.
* **Volatility**: sample standard deviation of the bar returns (ddof 1) times
  sqrt(bars per year); null with fewer than two returns, 0 on flat equity.
* **Sharpe**: mean bar return / its standard deviation * sqrt(bars per year),
  risk-free rate 0. **Null** (never 0, never infinite) when it is undefined: fewer
  than two returns, or a standard deviation under 1e-12 (flat equity).
* **Sortino**: mean bar return / downside deviation * sqrt(bars per year); the
  downside deviation is ``sqrt(mean(min(r, 0) ** 2))`` over all bars (target 0).
  Null when there is no losing bar or fewer than two returns.
* **Maximum drawdown**: the largest fall from a running peak of the curve, as a
  positive fraction of that peak (0.25: a quarter of the peak was lost).
  **Its duration** (``max_drawdown_days``): from the peak before the deepest
  trough to the first time the curve is back at that peak, or to the end of the
  curve if it never is (``max_drawdown_recovered`` says which). 0 without a
  drawdown. ``longest_drawdown_days``: the longest such spell, deep or not.
* **Calmar**: CAGR / maximum drawdown; null without a drawdown.
* **Trades** (`round_trips`): a trade per symbol runs from a position leaving
  zero to its return to zero. Adding to a position or cutting part of it stays
  in the trade; a fill that flips the position closes the trade and opens the
  next (its quantity and fee split pro rata). Only closed trades count; the ones
  open at the end are listed apart (``open_trades``: the P&L of their closed part
  net of all their fees so far, and ``unrealised_pnl`` = position * (last mark -
  average entry price)). A trade's P&L is net of the
  fees of its fills; its return is P&L / entry notional.
* **Win rate**: closed trades with P&L > 0 / closed trades. **Expectancy**: mean
  P&L of a closed trade. **Profit factor**: sum of winning P&L / |sum of losing
  P&L|; null with no losing trade (it would be infinite) or no trade.
* **Exposure**: fraction of bars that end with a non-zero position (any symbol,
  overall; that symbol, per symbol).
* **Turnover**: traded notional (sum of qty * price of every fill) / mean
  equity of the curve; ``turnover_per_year`` divides by the span in years.
* **Fees / slippage paid**: sums over the fills; slippage is the fill's cost
  against its reference price (> 0 when it hurt).
* **Buy-and-hold** (the benchmark): the capital split equally across the symbols,
  each share bought at that symbol's first valid close and held to the end, no
  fees; a symbol's share stays cash until its first close. Per symbol, the whole
  capital held in that symbol alone.
* **Per symbol**: the symbol's P&L is attributed as realised + unrealised − fees
  from its fills: ``P&L_s(t) = -sum(side * qty * price + fee) + position_s(t) *
  mark_s(t)`` over its fills up to t, the mark being its last valid close (its last
  fill price before any close). Its curve is ``capital + P&L_s(t)``, so the
  per-symbol total returns add up to the account's; what the fills do not explain
  (funding, rounding) is ``unattributed_pnl``. Fills are placed at the first bar
  closing at or after them.
* **Per month** (UTC calendar months): the curve from the last equity before the
  month through its bars; trades by the month they closed in, fills by their time.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shm.records import (REASON_ENTRY, REASON_EXIT, REASON_FLATTEN, REASON_REBALANCE,
                         REASON_STOP_LOSS, REASON_TAKE_PROFIT)

from .errors import UserError
from .storage import output_file

FILL_ROW = np.dtype([("ts_ns", "<i8"), ("symbol_id", "<i4"), ("side", "i1"), ("qty", "<f8"),
                     ("price", "<f8"), ("fee", "<f8"), ("slippage", "<f8"), ("reason", "u1"),
                     ("client_order_id", "U64")])

# one closed (or open) trade; `fills`: how many fills (or parts of a flipping fill) it holds
TRIP_ROW = np.dtype([("symbol_id", "<i4"), ("entry_ns", "<i8"), ("exit_ns", "<i8"), ("side", "i1"),
                     ("qty", "<f8"), ("entry_price", "<f8"), ("exit_price", "<f8"), ("pnl", "<f8"),
                     ("fees", "<f8"), ("slippage", "<f8"), ("return", "<f8"), ("fills", "<i4")])

REASONS = {REASON_ENTRY: "entry", REASON_EXIT: "exit", REASON_STOP_LOSS: "stop loss",
           REASON_TAKE_PROFIT: "take profit", REASON_REBALANCE: "rebalance", REASON_FLATTEN: "flatten"}

YEAR_S = 365 * 86400
NS_PER_DAY = 86400 * 10**9
FLAT_STD = 1e-12         # a bar-return standard deviation under this is flat equity
ZERO_QTY = 1e-9          # relative: a position this small against its largest size is flat
PLOT_POINTS = 5000       # longer series are thinned to about this many points for the plots
REPORT_JSON, REPORT_HTML, TRADES_CSV = "report.json", "report.html", "trades.csv"


# every decision of a run, for the checks that compare runs (look-ahead, warm-up): each
# signal at its bar's close (action, flags, probabilities) and each intent the strategy made
SIGNAL_ROW = np.dtype([("ts_ns", "<i8"), ("symbol_id", "<i4"), ("action", "u1"), ("flags", "<u2"),
                       ("probs", "<f8", (3,))])
INTENT_ROW = np.dtype([("ts_ns", "<i8"), ("symbol_id", "<i4"), ("side", "i1"), ("qty", "<f8"),
                       ("reason", "u1"), ("seq", "<u8")])


# a funding payment of a perpetual: positive `payment` was received, negative paid
FUNDING_ROW = np.dtype([("ts_ns", "<i8"), ("symbol_id", "<i4"), ("rate", "<f8"), ("position", "<f8"),
                        ("mark", "<f8"), ("payment", "<f8")])


def VOTE_ROW(m: int) -> np.dtype:
    """One ensemble signal: the combined probabilities and each of the m members' (down, flat, up)."""
    return np.dtype([("ts_ns", "<i8"), ("symbol_id", "<i4"), ("probs", "<f8", (3,)),
                     ("member_probs", "<f8", (m, 3))])


@dataclass
class BacktestResult:
    """What a backtest did, bar by bar: pipeline/backtest.py fills it, this module reads it."""
    symbols: list[str]          # "BTC/USDT@binance", by symbol id
    bar_seconds: float
    capital: float              # starting equity, quote currency
    ts_ns: np.ndarray           # (T,) int64 bar close times, increasing
    close: np.ndarray           # (T, S) float64 close per symbol at each time (NaN: no bar yet / gap)
    position: np.ndarray        # (T, S) float64 base qty held after that time's fills
    equity: np.ndarray          # (T,) float64 account equity marked at close, after fees
    fills: np.ndarray           # structured array, dtype FILL_ROW, in time order
    members: list[str] = field(default_factory=list)   # ensemble member names ([] for other models)
    votes: np.ndarray | None = None  # structured, dtype VOTE_ROW(len(members)): one row per signal
    signals: np.ndarray | None = None  # SIGNAL_ROW: every bar close's signal (traded or not)
    intents: np.ndarray | None = None  # INTENT_ROW: every intent the strategy made
    funding: np.ndarray | None = None  # FUNDING_ROW: perpetuals' funding payments (in equity)
    counts: dict = field(default_factory=dict)          # data problems and pipeline counters, for the report
    meta: dict = field(default_factory=dict)            # config, data files, model versions per period


def traded_part(result: BacktestResult, from_ns: int) -> BacktestResult:
    """The result from ``from_ns`` (a bar close) on: what a walk-forward traded out of
    sample, without the first training window it played flat to warm up, so that the
    figures, buy-and-hold included, start where trading starts. A fill before it is a bug."""
    def cut(rows):
        return None if rows is None else rows[rows["ts_ns"] >= from_ns]
    if len(result.fills) and int(result.fills["ts_ns"][0]) < from_ns:
        raise AssertionError(f"a fill at {int(result.fills['ts_ns'][0])}, before {from_ns}")
    keep = result.ts_ns >= from_ns
    return dataclasses.replace(result, ts_ns=result.ts_ns[keep], close=result.close[keep],
                               position=result.position[keep], equity=result.equity[keep],
                               votes=cut(result.votes), signals=cut(result.signals),
                               intents=cut(result.intents), funding=cut(result.funding))


# -- fingerprint --------------------------------------------------------------------------------
def fingerprint(fills: np.ndarray) -> str:
    """sha256 hex of every fill in a fixed text form (floats as ``repr``, -0.0 as 0.0), so two
    runs compare at a glance: the same fills give the same hash, any changed field another."""
    h = hashlib.sha256(b"tickpipe fills v1\n")
    fills = np.asarray(fills)
    columns = (fills[name].tolist() for name in FILL_ROW.names)
    for ts, sid, side, qty, price, fee, slip, reason, cid in zip(*columns):
        floats = "|".join(repr(float(x) + 0.0) for x in (qty, price, fee, slip))
        h.update(f"{int(ts)}|{int(sid)}|{int(side)}|{floats}|{int(reason)}|{cid}\n".encode())
    return h.hexdigest()


# -- round trips --------------------------------------------------------------------------------
class _Trip:
    """A trade being built: entry and exit sums, in absolute quantities."""
    __slots__ = ("sid", "side", "entry_ns", "pos", "top", "eq", "en", "xq", "xn", "fees", "slip", "n")

    def __init__(self, sid: int, side: int, ts: int):
        self.sid, self.side, self.entry_ns = sid, side, ts
        self.pos = self.top = self.eq = self.en = self.xq = self.xn = self.fees = self.slip = 0.0
        self.n = 0

    def row(self, exit_ns: int) -> tuple:
        entry = self.en / self.eq if self.eq > 0 else math.nan
        exit_ = self.xn / self.xq if self.xq > 0 else math.nan
        pnl = self.side * (self.xn - entry * self.xq) - self.fees if self.xq > 0 else -self.fees
        ret = pnl / self.en if exit_ns >= 0 and self.en > 0 else math.nan
        return (self.sid, self.entry_ns, exit_ns, self.side, self.top, entry, exit_, pnl, self.fees,
                self.slip, ret, self.n)


def _trips(fills: np.ndarray, n_symbols: int) -> tuple[np.ndarray, np.ndarray]:
    """(closed, open) trades of `round_trips`, built in one pass over the fills."""
    fills = np.asarray(fills)
    state: list[_Trip | None] = [None] * n_symbols
    closed: list[tuple] = []
    cols = [fills[c].tolist() for c in ("ts_ns", "symbol_id", "side", "qty", "price", "fee", "slippage")]
    for ts, sid, side, qty, price, fee, slip in zip(*cols):
        if qty <= 0 or side == 0 or not 0 <= sid < n_symbols:
            continue
        side = 1 if side > 0 else -1
        left = qty
        while left > ZERO_QTY * qty:
            t = state[sid]
            if t is None:
                t = state[sid] = _Trip(sid, side, ts)
            part = left if side == t.side else min(left, t.pos)
            share = part / qty
            t.fees += fee * share
            t.slip += slip * share
            t.n += 1
            if side == t.side:                          # opening or adding
                t.pos += part
                t.eq += part
                t.en += part * price
                t.top = max(t.top, t.pos)
            else:                                       # reducing, closing, or the closing half of a flip
                t.pos -= part
                t.xq += part
                t.xn += part * price
                if t.pos <= ZERO_QTY * t.top:
                    closed.append(t.row(ts))
                    state[sid] = None
            left -= part
    still = [t.row(-1) for t in state if t is not None]
    done = np.array(closed, dtype=TRIP_ROW)
    if len(done):
        done = done[np.lexsort((done["symbol_id"], done["exit_ns"]))]
    return done, np.array(still, dtype=TRIP_ROW)


def round_trips(fills: np.ndarray, n_symbols: int) -> np.ndarray:
    """Closed trades (dtype TRIP_ROW) in order of exit: a position leaving zero to its return
    to zero, per symbol; a flip closes one and opens the next (see the module's definitions)."""
    return _trips(fills, n_symbols)[0]


def open_trades(fills: np.ndarray, n_symbols: int) -> np.ndarray:
    """The trades still open after the last fill (dtype TRIP_ROW): exit_ns -1, return NaN,
    exit_price and pnl those of the part already closed (pnl net of all its fees so far)."""
    return _trips(fills, n_symbols)[1]


# -- figures ------------------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    """A JSON-safe number: None for None, NaN and infinities."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _drawdown(curve: np.ndarray) -> np.ndarray:
    """Fall from the running peak, as a positive fraction of the peak (0 at a peak)."""
    peak = np.maximum.accumulate(curve)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, 1.0 - curve / peak, 0.0)


def _bar_returns(curve: np.ndarray) -> np.ndarray:
    prev, cur = curve[:-1], curve[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prev > 0, cur / prev - 1.0, 0.0)


def _curve_figures(curve: np.ndarray, ts_ns: np.ndarray, bar_seconds: float) -> dict:
    """Return, CAGR, volatility, Sharpe, Sortino, Calmar and drawdown of one curve whose first
    point is its starting value (see the module's definitions)."""
    curve = np.asarray(curve, dtype=np.float64)
    start, end = float(curve[0]), float(curve[-1])
    years = (int(ts_ns[-1]) - int(ts_ns[0])) / (YEAR_S * 1e9)
    r = _bar_returns(curve)
    per_year = YEAR_S / bar_seconds
    total = end / start - 1.0 if start > 0 else None
    if total is None or years <= 0:
        cagr = None
    elif end <= 0:
        cagr = -1.0
    else:
        try:
            cagr = (end / start) ** (1.0 / years) - 1.0
        except OverflowError:               # a gain over minutes, compounded to a year: no figure
            cagr = None
    vol = sharpe = sortino = None
    if len(r) >= 2:
        sd = float(np.std(r, ddof=1))
        vol = sd * math.sqrt(per_year)
        if sd >= FLAT_STD:
            sharpe = float(np.mean(r)) / sd * math.sqrt(per_year)
        down = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
        if down >= FLAT_STD:
            sortino = float(np.mean(r)) / down * math.sqrt(per_year)
    dd = _drawdown(curve)
    mdd = float(dd.max()) if len(dd) else 0.0
    days, recovered, longest = 0.0, True, 0.0
    if mdd > 0:
        trough = int(np.argmax(dd))
        peak_at = trough - int(np.argmax(dd[trough::-1] == 0))          # the last peak before it
        back = np.flatnonzero(curve[trough:] >= curve[peak_at])
        recovered = len(back) > 0
        end_at = trough + int(back[0]) if recovered else len(curve) - 1
        days = (int(ts_ns[end_at]) - int(ts_ns[peak_at])) / NS_PER_DAY
        at_peak = np.flatnonzero(dd == 0)                                 # spells run peak to peak
        stops = np.append(at_peak[1:], len(curve) - 1)
        real = np.r_[np.diff(at_peak) > 1, at_peak[-1] < len(curve) - 1]  # a fall between them
        longest = float(np.max((ts_ns[stops] - ts_ns[at_peak]) * real)) / NS_PER_DAY
    return {"start_value": _num(start), "end_value": _num(end), "total_return": _num(total),
            "cagr": _num(cagr), "volatility": _num(vol), "sharpe": _num(sharpe),
            "sortino": _num(sortino), "calmar": _num(cagr / mdd) if mdd > 0 and cagr is not None else None,
            "max_drawdown": _num(mdd), "max_drawdown_days": _num(days),
            "max_drawdown_recovered": recovered, "longest_drawdown_days": _num(longest),
            "bars": int(len(curve) - 1), "years": _num(years)}


def _trade_figures(trips: np.ndarray) -> dict:
    """Trades, win rate, expectancy, profit factor of closed trades."""
    pnl = trips["pnl"]
    n = int(len(pnl))
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    return {"trades": n, "winning_trades": int(len(wins)),
            "win_rate": _num(len(wins) / n) if n else None,
            "expectancy": _num(pnl.mean()) if n else None,
            "profit_factor": _num(wins.sum() / -losses.sum()) if len(losses) else None,
            "gross_profit": _num(wins.sum()), "gross_loss": _num(losses.sum()),
            "mean_trade_return": _num(trips["return"].mean()) if n else None}


def _fill_figures(fills: np.ndarray, curve: np.ndarray, years: float | None) -> dict:
    """Fees, slippage, traded notional and turnover of some fills against an equity curve."""
    notional = float(np.sum(fills["qty"] * fills["price"]))
    mean_equity = float(np.mean(curve))
    turnover = notional / mean_equity if mean_equity > 0 else None
    return {"fills": int(len(fills)), "fees": _num(fills["fee"].sum()),
            "slippage": _num(fills["slippage"].sum()), "traded_notional": _num(notional),
            "turnover": _num(turnover),
            "turnover_per_year": _num(turnover / years) if turnover is not None and years else None}


def _marks(result: BacktestResult) -> np.ndarray:
    """(T, S) price each position is marked at: the last valid close, or before any close the
    symbol's last fill price (NaN where neither exists yet)."""
    close = np.asarray(result.close, dtype=np.float64)
    mark = np.where(np.isfinite(close) & (close > 0), close, np.nan)
    T, S = mark.shape
    fills = np.asarray(result.fills)
    bar = np.searchsorted(result.ts_ns, fills["ts_ns"], side="left")
    fill_price = np.full((T, S), np.nan)
    keep = (bar < T) & (fills["symbol_id"] >= 0) & (fills["symbol_id"] < S)
    fill_price[bar[keep], fills["symbol_id"][keep]] = fills["price"][keep]   # the last one of a bar wins
    for m in (mark, fill_price):
        _ffill(m)
    return np.where(np.isnan(mark), fill_price, mark)


def _ffill(a: np.ndarray) -> None:
    """Carry the last non-NaN value of each column down, in place."""
    idx = np.where(np.isnan(a), 0, np.arange(len(a))[:, None])
    np.maximum.accumulate(idx, axis=0, out=idx)
    a[:] = a[idx, np.arange(a.shape[1])]


def symbol_pnl(result: BacktestResult) -> np.ndarray:
    """(T, S) P&L attributed to each symbol at each bar close: realised + unrealised − fees from
    its own fills and closes (the module's definitions say how)."""
    T, S = np.shape(result.close)
    fills = np.asarray(result.fills)
    bar = np.searchsorted(result.ts_ns, fills["ts_ns"], side="left")
    keep = (bar < T) & (fills["symbol_id"] >= 0) & (fills["symbol_id"] < S)
    flow = np.zeros((T, S))
    cash = -(fills["side"] * fills["qty"] * fills["price"] + fills["fee"])
    np.add.at(flow, (bar[keep], fills["symbol_id"][keep]), cash[keep])
    held = np.asarray(result.position, dtype=np.float64)
    value = np.where(held != 0, held * _marks(result), 0.0)
    return np.cumsum(flow, axis=0) + np.nan_to_num(value)


def buy_and_hold(result: BacktestResult) -> tuple[np.ndarray, np.ndarray]:
    """(account curve (T+1,), per-symbol curves (T+1, S)) of the benchmark: see the module's
    definitions. Index 0 is the starting capital, as in the equity curve."""
    close = np.asarray(result.close, dtype=np.float64)
    T, S = close.shape
    px = np.where(np.isfinite(close) & (close > 0), close, np.nan)
    _ffill(px)
    growth = np.ones((T, S))
    for s in range(S):
        valid = np.flatnonzero(np.isfinite(px[:, s]))
        if len(valid):
            growth[valid, s] = px[valid, s] / px[valid[0], s]
    cap = float(result.capital)
    own = np.vstack([np.full((1, S), cap), cap * growth])
    return own.mean(axis=1) if S else np.full(T + 1, cap), own


def _slices(ts_ns: np.ndarray) -> list[tuple[str, int, int]]:
    """(YYYY-MM, first bar, end bar) of each UTC calendar month the bars touch."""
    months = np.asarray(ts_ns, dtype="datetime64[ns]").astype("datetime64[M]")
    cuts = np.flatnonzero(months[1:] != months[:-1]) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(months)]
    return [(str(months[a]), int(a), int(b)) for a, b in zip(starts, ends)]


def _block(curve, curve_ts, bar_seconds, trips, fills, held, bench) -> dict:
    """All figures of one curve (overall, a symbol or a month) next to its benchmark's."""
    out = _curve_figures(curve, curve_ts, bar_seconds)
    out.update(_trade_figures(trips))
    out.update(_fill_figures(fills, curve, out["years"]))
    out["exposure"] = _num(np.mean(held)) if len(held) else None
    b = _curve_figures(bench, curve_ts, bar_seconds)
    out["buy_and_hold"] = {k: b[k] for k in ("total_return", "cagr", "volatility", "sharpe", "sortino",
                                             "max_drawdown", "max_drawdown_days", "end_value")}
    return out


def _trip_dicts(trips: np.ndarray, symbols: list[str]) -> list[dict]:
    return [{"symbol": symbols[int(t["symbol_id"])], "side": "long" if t["side"] > 0 else "short",
             "entry": _iso(t["entry_ns"]), "exit": _iso(t["exit_ns"]) if t["exit_ns"] >= 0 else None,
             **{k: _num(t[k]) for k in ("qty", "entry_price", "exit_price", "pnl", "fees", "return")}}
            for t in trips]


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(int(ns) / 1e9, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def metrics(result: BacktestResult) -> dict:
    """Every figure of the report, overall, per symbol and per UTC month, each next to
    buy-and-hold; JSON-safe (None where undefined). Definitions: the module's docstring."""
    ts = np.asarray(result.ts_ns, dtype=np.int64)
    T, S = len(ts), len(result.symbols)
    if T == 0:
        raise UserError("the backtest has no bars in its period: nothing to report")
    bar_ns = int(round(result.bar_seconds * 1e9))
    curve_ts = np.r_[ts[0] - bar_ns, ts]
    equity = np.r_[float(result.capital), np.asarray(result.equity, dtype=np.float64)]
    fills = np.asarray(result.fills)
    closed, still = _trips(fills, S)
    held = np.asarray(result.position) != 0
    bench, bench_own = buy_and_hold(result)
    pnl = symbol_pnl(result)
    bs = result.bar_seconds

    overall = _block(equity, curve_ts, bs, closed, fills, held.any(axis=1), bench)
    per_symbol = {}
    for s, name in enumerate(result.symbols):
        own = np.r_[float(result.capital), result.capital + pnl[:, s]]
        per_symbol[name] = _block(own, curve_ts, bs, closed[closed["symbol_id"] == s],
                                  fills[fills["symbol_id"] == s], held[:, s], bench_own[:, s])
        per_symbol[name]["pnl"] = _num(pnl[-1, s])
    months = {}
    exit_month = closed["exit_ns"].astype("datetime64[ns]").astype("datetime64[M]").astype(str)
    fill_month = fills["ts_ns"].astype("datetime64[ns]").astype("datetime64[M]").astype(str)
    for key, a, b in _slices(ts):
        months[key] = _block(equity[a:b + 1], curve_ts[a:b + 1], bs, closed[exit_month == key],
                             fills[fill_month == key], held[a:b].any(axis=1), bench[a:b + 1])
    still_open = _trip_dicts(still, result.symbols)
    last_mark = _marks(result)[-1]
    for d, t in zip(still_open, still):
        s = int(t["symbol_id"])
        q = float(np.asarray(result.position)[-1, s])
        d.update(position=_num(q), mark=_num(last_mark[s]),
                 unrealised_pnl=_num(q * (last_mark[s] - t["entry_price"])))
    return {"period": {"start": _iso(ts[0]), "end": _iso(ts[-1]), "bars": T,
                       "bar_seconds": float(bs), "capital": _num(result.capital),
                       "final_equity": _num(equity[-1]), "symbols": list(result.symbols)},
            "overall": overall, "symbols": per_symbol, "months": months,
            "open_trades": still_open,
            "unattributed_pnl": _num(equity[-1] - result.capital - pnl[-1].sum()) if S else None}


# -- the CLI's lines ----------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2%}"


def _fix(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def summary_lines(metrics: dict, fingerprint: str) -> list[str]:
    """The few lines `pipeline backtest` prints: the account against buy-and-hold, and the
    fingerprint, so a run is judged and compared with another without opening the report."""
    o, b = metrics["overall"], metrics["overall"]["buy_and_hold"]
    p = metrics["period"]
    open_n = len(metrics.get("open_trades", []))
    return [
        f"period        {p['start']} .. {p['end']} ({p['bars']} bars of {p['bar_seconds']:g} s)",
        f"return        {_pct(o['total_return'])} (CAGR {_pct(o['cagr'])}); "
        f"buy-and-hold {_pct(b['total_return'])} (CAGR {_pct(b['cagr'])})",
        f"Sharpe        {_fix(o['sharpe'])} (Sortino {_fix(o['sortino'])}); buy-and-hold {_fix(b['sharpe'])}",
        f"max drawdown  {_pct(-o['max_drawdown'] if o['max_drawdown'] else 0.0)} over "
        f"{_fix(o['max_drawdown_days'], '.1f')} days; buy-and-hold {_pct(-(b['max_drawdown'] or 0.0))}",
        f"trades        {o['trades']} closed, {open_n} open; win rate "
        f"{'n/a' if o['win_rate'] is None else format(o['win_rate'], '.1%')}; "
        f"profit factor {_fix(o['profit_factor'])}; exposure "
        f"{'n/a' if o['exposure'] is None else format(o['exposure'], '.1%')}",
        f"costs         fees {_fix(o['fees'])}, slippage {_fix(o['slippage'])} (quote); "
        f"turnover {_fix(o['turnover'])}x",
        f"fingerprint   sha256:{fingerprint}",
    ]


# -- JSON ---------------------------------------------------------------------------------------
def json_safe(value: Any) -> Any:
    """Plain JSON values at any depth: numpy as Python, NaN and infinities as None, paths and
    times as text, anything else unknown as its str; so report.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, np.ndarray)):
        return [json_safe(v) for v in (sorted(value, key=str) if isinstance(value, set) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


# -- plots --------------------------------------------------------------------------------------
def plot_index(values: np.ndarray, limit: int = PLOT_POINTS) -> np.ndarray:
    """Indexes of at most about ``limit`` points of a long series, for plotting only: per bucket
    its first, lowest and highest point (and the last point), so peaks and troughs survive."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n <= limit:
        return np.arange(n)
    buckets = max(1, limit // 3)
    size = -(-n // buckets)
    pad = buckets * size - n
    lo = np.r_[np.where(np.isnan(values), np.inf, values), np.full(pad, np.inf)].reshape(buckets, size)
    hi = np.r_[np.where(np.isnan(values), -np.inf, values), np.full(pad, -np.inf)].reshape(buckets, size)
    base = np.arange(buckets) * size
    idx = np.r_[base, base + lo.argmin(axis=1), base + hi.argmax(axis=1), n - 1]
    return np.unique(idx[idx < n])


def _times(ts_ns: np.ndarray) -> np.ndarray:
    return np.asarray(ts_ns, dtype="datetime64[ns]").astype("datetime64[ms]")


@dataclass
class _Line:
    name: str
    x: np.ndarray
    y: np.ndarray
    width: float = 1.5
    markers: str | None = None      # "buy" / "sell": points, not a line
    opacity: float = 1.0
    color: str | None = None        # None: the next of the plotting library's colours


@dataclass
class _Plot:
    """One chart, drawn the same way by plotly (HTML) and matplotlib (PNG)."""
    key: str                         # file stem
    title: str
    ylabel: str
    lines: list[_Line] = field(default_factory=list)
    heat: tuple[list[str], list[str], np.ndarray] | None = None    # rows, columns, values (%)


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i = plot_index(y)
    return x[i], y[i]


def bucket_means(n: int, limit: int = PLOT_POINTS) -> tuple[np.ndarray, int]:
    """(index of each bucket's last row, bucket size) for averaging a long noisy series (the
    votes) into at most ``limit`` points: their extremes would only draw a solid band."""
    size = max(1, -(-n // limit))
    return np.minimum(np.arange(size - 1, n + size - 1, size), n - 1), size


def _mean_by(y: np.ndarray, size: int) -> np.ndarray:
    pad = -len(y) % size
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.r_[y, np.full(pad, np.nan)].reshape(-1, size), axis=1)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def _plots(result: BacktestResult, metrics: dict) -> list[_Plot]:
    """Every chart of the report: equity against buy-and-hold, drawdown, the trades on each
    symbol's price, the monthly returns, and each ensemble member's vote per symbol."""
    ts = np.asarray(result.ts_ns, dtype=np.int64)
    x = _times(np.r_[ts[0] - int(round(result.bar_seconds * 1e9)), ts])
    equity = np.r_[float(result.capital), np.asarray(result.equity, dtype=np.float64)]
    bench, _ = buy_and_hold(result)
    plots = [_Plot("equity", "Equity against buy-and-hold", "equity (quote)",
                   [_Line("strategy", *_thin(x, equity)), _Line("buy-and-hold", *_thin(x, bench))]),
             _Plot("drawdown", "Drawdown", "drawdown (%)",
                   [_Line("strategy", *_thin(x, -100 * _drawdown(equity))),
                    _Line("buy-and-hold", *_thin(x, -100 * _drawdown(bench)))])]
    fills = np.asarray(result.fills)
    close = np.asarray(result.close, dtype=np.float64)
    for s, name in enumerate(result.symbols):
        p = _Plot(f"trades_{s}_{_safe(name)}", f"Trades on {name}", "price",
                  [_Line("close", *_thin(x[1:], close[:, s]), width=1.0)])
        mine = fills[fills["symbol_id"] == s]
        for side, label in ((1, "buy"), (-1, "sell")):
            f = mine[mine["side"] == side]
            step = max(1, -(-len(f) // PLOT_POINTS))
            p.lines.append(_Line(label, _times(f["ts_ns"][::step]), f["price"][::step], markers=label))
        plots.append(p)
    months = metrics.get("months", {})
    years = sorted({k[:4] for k in months})
    grid = np.full((len(years), 12), np.nan)
    for k, m in months.items():
        if m["total_return"] is not None:
            grid[years.index(k[:4]), int(k[5:7]) - 1] = 100 * m["total_return"]
    plots.append(_Plot("monthly_returns", "Monthly returns", "year",
                       heat=(years, ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
                                     "Oct", "Nov", "Dec"], grid)))
    if result.members and result.votes is not None and len(result.votes):
        votes = np.asarray(result.votes)
        for s, name in enumerate(result.symbols):
            v = votes[votes["symbol_id"] == s]
            if not len(v):
                continue
            last, size = bucket_means(len(v))
            vx = _times(v["ts_ns"][last])
            label = "p(up) - p(down)" + (f", mean of {size} signals" if size > 1 else "")
            p = _Plot(f"votes_{s}_{_safe(name)}", f"Votes on {name}", label)
            for j, member in enumerate(result.members):
                vote = v["member_probs"][:, j, 2] - v["member_probs"][:, j, 0]
                p.lines.append(_Line(member, vx, _mean_by(vote, size), width=1.0, opacity=0.7))
            combined = v["probs"][:, 2] - v["probs"][:, 0]
            p.lines.append(_Line("combined", vx, _mean_by(combined, size), width=2.5, color="black"))
            plots.append(p)
    return plots


def _plotly_div(p: _Plot) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    if p.heat is not None:
        rows, cols, z = p.heat
        text = [["" if np.isnan(v) else f"{v:+.1f}%" for v in row] for row in z]
        fig.add_trace(go.Heatmap(z=np.where(np.isnan(z), None, z).tolist(), x=cols, y=rows, text=text,
                                 texttemplate="%{text}", colorscale="RdYlGn", zmid=0,
                                 colorbar={"title": "%"}))
        fig.update_yaxes(type="category", autorange="reversed")
    for line in p.lines:
        if line.markers:
            up = line.markers == "buy"
            fig.add_trace(go.Scatter(x=line.x, y=line.y, name=line.name, mode="markers",
                                     marker={"symbol": "triangle-up" if up else "triangle-down",
                                             "color": "green" if up else "red", "size": 9}))
        else:
            fig.add_trace(go.Scatter(x=line.x, y=line.y, name=line.name, mode="lines",
                                     line={"width": line.width, "color": line.color}, opacity=line.opacity))
    fig.update_layout(title=p.title, yaxis_title=p.ylabel, height=420, margin={"t": 50, "b": 40},
                      template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{p.key}")


def _png(p: _Plot, path: Path) -> None:
    from matplotlib.figure import Figure        # no pyplot: no global backend, Agg by savefig

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if p.heat is not None:
        rows, cols, z = p.heat
        lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
        im = ax.imshow(np.ma.masked_invalid(z), cmap="RdYlGn", vmin=-lim or -1, vmax=lim or 1,
                       aspect="auto")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        for (r, c), v in np.ndenumerate(z):
            if np.isfinite(v):
                ax.text(c, r, f"{v:+.1f}%", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=ax, label="%")
    for line in p.lines:
        if line.markers:
            up = line.markers == "buy"
            ax.scatter(line.x, line.y, marker="^" if up else "v", color="green" if up else "red",
                       s=30 if len(line.x) <= 300 else 8, label=line.name, zorder=3)
        else:
            ax.plot(line.x, line.y, label=line.name, linewidth=line.width, alpha=line.opacity,
                    color=line.color, zorder=4 if line.name == "close" else 2)
    if p.lines:
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    ax.set_title(p.title)
    ax.set_ylabel(p.ylabel)
    fig.savefig(path, format="png")


def _html(metrics: dict, fp: str, plots: list[_Plot]) -> str:
    from plotly.offline import get_plotlyjs

    o = metrics["overall"]
    rows = [("overall", o)] + list(metrics["symbols"].items())
    head = ("<tr><th></th><th>return</th><th>B&amp;H return</th><th>Sharpe</th><th>B&amp;H Sharpe</th>"
            "<th>max DD</th><th>trades</th><th>win rate</th><th>fees</th></tr>")
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_pct(m['total_return'])}</td>"
        f"<td>{_pct(m['buy_and_hold']['total_return'])}</td><td>{_fix(m['sharpe'])}</td>"
        f"<td>{_fix(m['buy_and_hold']['sharpe'])}</td><td>{_pct(-(m['max_drawdown'] or 0.0))}</td>"
        f"<td>{m['trades']}</td><td>{_fix(m['win_rate'], '.1%')}</td><td>{_fix(m['fees'])}</td></tr>"
        for k, m in rows)
    summary = html.escape("\n".join(summary_lines(metrics, fp)))
    divs = "\n".join(f"<section>{_plotly_div(p)}</section>" for p in plots)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Backtest report</title>\n"
            f"<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}"
            f"td,th{{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}}</style>\n"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>\n"
            f"<h1>Backtest report</h1>\n<pre>{summary}</pre>\n<table>{head}{body}</table>\n"
            f"<p>Long series are thinned to about {PLOT_POINTS} points per line for plotting "
            f"(each bucket's first, lowest and highest point; votes: each bucket's mean); "
            f"the figures use every bar.</p>\n"
            f"{divs}\n</body></html>\n")


def _out_dir(out_dir: str | Path) -> Path:
    """The report's folder: made if its parent exists (as `output_file` makes a file's folder);
    a file of that name, or a missing parent, is a UserError in one line."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the report, "
                        f"e.g. {out.with_name(out.name + '-report')}")
    return output_file(out / REPORT_JSON).parent


def _write_trades(path: Path, result: BacktestResult) -> None:
    closed, still = _trips(result.fills, len(result.symbols))
    names = ["symbol", "side", "entry", "exit", "qty", "entry_price", "exit_price", "pnl", "fees", "return"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, names)
        w.writeheader()
        w.writerows(_trip_dicts(np.concatenate([closed, still]), result.symbols))


def write_report(result: BacktestResult, metrics: dict, out_dir: str | Path) -> dict[str, Path]:
    """report.json (figures, fingerprint, counts, meta; strict JSON), trades.csv, report.html
    (self-contained: plotly.js inline, opens offline) and one PNG per plot (matplotlib).
    Returns file name -> path."""
    out = _out_dir(out_dir)
    fp = fingerprint(result.fills)
    written: dict[str, Path] = {}
    plots = _plots(result, metrics)
    for p in plots:
        written[f"{p.key}.png"] = out / f"{p.key}.png"
        _png(p, written[f"{p.key}.png"])
    written[REPORT_HTML] = out / REPORT_HTML
    written[REPORT_HTML].write_text(_html(metrics, fp, plots), encoding="utf-8")
    written[TRADES_CSV] = out / TRADES_CSV
    _write_trades(written[TRADES_CSV], result)
    report = {"fingerprint": fp, "metrics": metrics, "counts": result.counts, "meta": result.meta,
              "members": list(result.members), "files": sorted(written)}
    written[REPORT_JSON] = out / REPORT_JSON
    written[REPORT_JSON].write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    return written
