"""`pipeline backtest`: the live chain in one process, on a simulated clock.

What runs is what `pipeline start` runs, core for core:

* each data file is played as the replay feed plays it (workers/feed.replay_ticks:
  a candle becomes four trades, open, low/high, high/low and close, at quarters of
  the bar; a gap marker where candles are missing; trades keep their times);
* the bar builder of the indicator shards (workers/bars.py) and the indicator
  engine (models/ta.py) turn them into feature rows;
* model serving (models/serving.make_signals: the ensemble from ``[model]
  artifacts``, or the momentum rule) scores each bar close;
* the strategy (workers/strategy/signals.py) turns signals into intents;
* the execution desk (workers/execution/desk.py) runs them through the four-tier
  risk guard, the order manager, the paper broker (latency, slippage, maker and
  taker fees), the portfolio and the journal (SQLite; a temporary file unless
  ``--journal`` names one to keep; written JOURNAL_GROUP_ROWS rows at a time).

With a stop-loss or take-profit, every trade of a symbol the strategy holds goes to its
stop check as it happens (the strategy process reads the tick rings live for the same),
so an exit is sent at the trade that crossed the stop, inside the bar.

A file of recorded L2 order books beside a symbol's trades or candles (JSON Lines:
ccxt snapshots or a Bybit archive, pipeline/book_files.py) is shown to the desk as
time reaches each book, as a depth feed's books reach it live: the book's top is the
quote, and market orders walk its levels (partly filled, the rest expired, when the
book is thinner than the order).

Time is a `SimClock` moved to each tick's time (the tick's receipt time is its
event time), so every rule that reads a clock (stale intents, daily loss, order
rates, bar timers) reads market time. The order of events is that of a live
pipeline that keeps up: the tick that closes a bar reaches the desk before the
intents that bar causes, so a market order decided on a bar's close meets the
next bar's opening trade, moved by ``slippage_bps`` (the paper broker's rule for
a quote of unknown size), after ``ack_latency_ms``. Reports the broker has due
before the next tick are taken before it. Bars still open when the data ends are
not traded (there is no next price to trade at).

A perpetual's funding-rate file (``timestamp_ms,funding_rate``, named like its
candles: binance-usdm_BTC-USDT-PERP_funding_rate.csv) among the data makes the
position held at each funding time pay position x mark x rate (receive, at a
negative rate), marked at the last trade; the payments are in the equity and
the result's ``funding``.

Two shortcuts give exactly what playing every step gives, and are tested against it:
the bar builder folds all the ticks in one call where no step's timer would close a bar
(else it is fed segment by segment, as live), and the desk is shown a quiet stretch
(no order open or due, no stop to watch, no funding or recovery snapshot due) at once,
only when the strategy's next intent or the end of the stretch reaches it: its tick
handling adds up, and it marks its equity, peak and day start for each step it was not
shown (`Desk.mark_quiet`). Most bars of a strategy that trades now and then cost the
strategy's decision and little else.

Equity is sampled after each time bars close: capital plus realised P&L, less
fees, plus funding, plus open positions marked at the last trade (at a bar's close time that is
the next bar's opening trade, the price the account could trade at then).

Deterministic: the same data and config give the same fills; the client order
ids carry the run id "backtest", and the broker's latency jitter is a hash.
"""
from __future__ import annotations

import fcntl
import itertools
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from models.serving import EnsembleModel, MomentumModel, bulk_outputs, make_signals
from models.ta import Engine
from models.train import market_of
from pipeline.clock import SimClock
from pipeline.config import Config, currency_problem, feature_names, fees_of, indicator_specs, route_checks
from pipeline.errors import ConfigurationError, UserError
from pipeline.journal import WAL_LIMIT_BYTES, Journal
from pipeline.storage import detect_kind, market_columns, numeric, read_market_table
from shm.records import FLAG_GAP, TICK_GAP, TICK_TRADE, features_dtype
from workers.bars import BarBuilder, ClosedBars, bar_steps, feature_rows
from workers.execution.desk import Desk, in_account
from workers.execution.fx import FxRates
from workers.feed import replay_ticks
from workers.strategy.signals import ActsAhead, SignalStrategy, bar_volatility, volatility_columns

from .backtest_report import FILL_ROW, FUNDING_ROW, INTENT_ROW, SIGNAL_ROW, VOTE_ROW, BacktestResult
from .book_files import is_book_file, read_books

RUN_ID = "backtest"
PIPELINE = "backtest"
# the desk's recovery snapshot, in market time: live takes one a minute of wall time; a
# backtest plays a minute in microseconds and never recovers from its journal, and a
# snapshot (a journal commit) an hour would cost a tenth of a run on 5-minute bars (the
# equity, its peak and the day's start are marked every step either way)
SNAPSHOT_EVERY_NS = 86400 * 10**9
# a backtest's journal rows are written a group at a time (`Journal` ``group_rows``): it is
# never recovered mid-run, and two commits per trade (order, then fill) were nearly half
# of an EMA crossover's run on 5-minute bars (17k -> 32k bars/s without them)
JOURNAL_GROUP_ROWS = 512
SCRATCH_PREFIX = "tickpipe-backtest-"
SCRATCH_BYTES_PER_EVENT = 8192   # the most journal a market event can cost (a fill with its order: ~4.4 KB)
ACTS_AHEAD_SYMBOLS = 32      # up to this many symbols a pass looks up where the strategy next acts (else it widens)
PASS_WINDOW = 4096           # most bar closes looked at per pass over a quiet stretch (`Backtest._pass_over`)


@dataclass
class MarketData:
    """The ticks of every data file, merged in time order, and what reading them found."""
    symbols: list[str]                  # "BTC/USDT@binance", by symbol id
    venues: list[str]
    venue_of: np.ndarray                # venue index by symbol id
    ticks: np.ndarray                   # TICK records, ts_origin_ns = ts_exchange_ns
    files: list[dict] = field(default_factory=list)   # per file: path, symbol, kind, rows dropped...
    funding: dict[int, np.ndarray] = field(default_factory=dict)   # symbol id -> (ts_ns, rate) rows
    books: np.ndarray | None = None     # BOOK records of recorded L2 books, in time order


def _ns(date: str | None, flag: str) -> int | None:
    """A --from / --to date (YYYY-MM-DD or ISO 8601, UTC unless it says) in ns."""
    if not date:
        return None
    from datetime import datetime, timezone
    try:
        t = datetime.fromisoformat(date)
    except ValueError:
        raise UserError(f"{flag} {date!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1e9)


def symbol_of(path: str) -> str:
    """``BASE/QUOTE@venue`` of a data file, from its path as `pipeline train` reads it
    (``venue=``/``symbol=`` folders, or ``<venue>_<BASE>-<QUOTE>_...``); else its name."""
    market = market_of(path)
    symbol = market["symbol"] or Path(path).stem.split("_")[0].upper()
    return f"{symbol}@{market['venue'] or 'replay'}"


def load_data(paths: list[str], start: str | None = None, end: str | None = None) -> MarketData:
    """Every file's ticks as the replay feed plays them, one symbol per file (and a file
    of its quotes beside it, if any: market orders then fill at the quotes; and a file of
    its recorded order books, pipeline/book_files.py: market orders then walk them), merged
    by time; ``start``/``end`` (dates) keep the ticks and books in [start, end)."""
    lo, hi = _ns(start, "--from"), _ns(end, "--to")
    if lo is not None and hi is not None and hi <= lo:
        raise UserError(f"--to {end} is not after --from {start}")
    symbols, venues, venue_of, parts, files = [], [], [], [], []
    rates: dict[str, tuple[str, np.ndarray]] = {}
    book_files: dict[str, str] = {}
    kinds: set[tuple[str, bool]] = set()     # (symbol, trades or candles / quotes) already read
    for path in paths:
        p = Path(path).expanduser()
        if not p.exists():
            raise UserError(f"--data {path}: no such file or directory")
        key = symbol_of(str(p))
        if is_book_file(p) and not p.is_dir():
            if key in book_files:
                raise UserError(f"--data {path}: a second book file for {key} (one per symbol)")
            book_files[key] = str(p)
            continue
        try:
            columns = market_columns(str(p))
        except (OSError, ValueError) as e:
            raise UserError(f"--data {path}: {e}") from None
        if "funding_rate" in columns:
            rates[key] = (str(p), funding_rates(p))
            continue
        try:
            kind = detect_kind(columns)
        except ValueError as e:
            raise UserError(f"--data {path}: {e}") from None
        i = symbols.index(key) if key in symbols else len(symbols)
        if (key, kind in ("candles", "trades")) in kinds:
            raise UserError(f"--data {path}: a second file of {'quotes' if kind == 'quotes' else 'trades'} "
                            f"for {key} (one file or folder per symbol, and one of quotes beside it)")
        kinds.add((key, kind in ("candles", "trades")))
        try:
            ticks, dropped, reordered = replay_ticks(str(p), i)
        except (OSError, ValueError) as e:
            raise UserError(f"--data {path}: {e}") from None
        ticks["ts_origin_ns"] = ticks["ts_exchange_ns"]
        ts = ticks["ts_exchange_ns"]
        trade_ts = ts[ticks["kind"] == TICK_TRADE]
        # candles play as four trades a bar, a quarter of the step apart
        step_s = (4 * float(np.median(np.diff(trade_ts))) / 1e9
                  if kind == "candles" and len(trade_ts) > 1 else None)
        keep = np.ones(len(ticks), bool)
        if lo is not None:
            keep &= ts >= lo
        if hi is not None:
            keep &= ts < hi
        ticks = ticks[keep]
        venue = key.partition("@")[2]
        if venue not in venues:
            venues.append(venue)
        if key not in symbols:
            symbols.append(key)
            venue_of.append(venues.index(venue))
        parts.append(ticks)
        files.append({"path": str(p), "symbol": key, "kind": kind, "step_s": step_s, "trades": int((ticks["kind"] == TICK_TRADE).sum()),
                      "gaps": int((ticks["kind"] == TICK_GAP).sum()), "bad_rows": dropped,
                      "reordered_rows": int(reordered)})
    if not parts:
        raise UserError("--data names no candle or trade file")
    funding = {}
    for key, (path, rows) in rates.items():
        if key not in symbols:
            raise UserError(f"--data {path}: funding rates of {key}, and no --data file trades it "
                            f"(the symbols: {', '.join(symbols)})")
        sid = symbols.index(key)
        keep = np.ones(len(rows), bool)
        if lo is not None:
            keep &= rows["ts_ns"] >= lo
        if hi is not None:
            keep &= rows["ts_ns"] < hi
        funding[sid] = rows[keep]
        files.append({"path": path, "symbol": key, "kind": "funding", "step_s": None,
                      "funding_times": int(keep.sum())})
    books = []
    for key, path in book_files.items():
        if key not in symbols:
            raise UserError(f"--data {path}: order books of {key}, and no --data file trades it "
                            f"(a book file goes beside the symbol's trades or candles; the symbols: "
                            f"{', '.join(symbols)})")
        try:
            rows, stats = read_books(path, symbols.index(key))
        except (OSError, ValueError) as e:
            raise UserError(f"--data {path}: {e}") from None
        ts = rows["ts_exchange_ns"]
        rows = rows[((ts >= lo) if lo is not None else True) & ((ts < hi) if hi is not None else True)]
        books.append(rows)
        files.append({"path": path, "symbol": key, "kind": "books", "step_s": None, **stats,
                      "books_in_period": len(rows)})
    ticks = np.concatenate(parts)
    ticks = ticks[np.argsort(ticks["ts_exchange_ns"], kind="stable")]
    if not (ticks["kind"] == TICK_TRADE).any():
        raise UserError("the data holds no trade or candle with volume in the period asked")
    book_rows = None
    if books:
        book_rows = np.concatenate(books)
        book_rows = book_rows[np.argsort(book_rows["ts_exchange_ns"], kind="stable")]
    return MarketData(symbols, venues, np.array(venue_of, np.int64), ticks, files, funding, book_rows)


def funding_rates(path: Path) -> np.ndarray:
    """A perpetual's funding rates (timestamp_ms, funding_rate), sorted; a bad row is a
    one-line error, since a wrong rate is money paid that was not."""
    table = read_market_table(path)
    ts, rate = numeric(table, "timestamp_ms"), numeric(table, "funding_rate")
    bad = ~(np.isfinite(ts) & np.isfinite(rate) & (np.abs(rate) < 1.0))
    if bad.any():
        raise UserError(f"--data {path}: funding rate row {int(np.flatnonzero(bad)[0]) + 1} is not a "
                        f"time and a rate (|rate| < 1)")
    rows = np.zeros(len(ts), [("ts_ns", "<i8"), ("rate", "<f8")])
    rows["ts_ns"], rows["rate"] = ts.astype(np.int64) * 1_000_000, rate
    return rows[np.argsort(rows["ts_ns"], kind="stable")]


def check_bars(data: MarketData, bar_seconds: float) -> None:
    """Candles must be played into bars of their own length: 5-minute candles cut into
    1-second bars would be four ticks a bar apart and mean nothing to the models."""
    for f in data.files:
        step = f["step_s"]
        if step is not None and not math.isclose(step, bar_seconds, rel_tol=0.01):
            raise UserError(f"the candles in {f['path']} are {step:g} s apart but [indicators] "
                            f"bar_seconds = {bar_seconds:g}: give a config whose bar_seconds = {step:g} "
                            f"(conf/backtest.toml is one for 5-minute candles)")


def check_currencies(cfg: Config, symbols: list[str]) -> None:
    """One account in one currency: the data's symbols in others need a rate into it
    (``[execution] currency`` and ``[[execution.fx]]``), or KRW and USDT would be summed;
    and every ``[[routes]]`` leg must be among the data's symbols."""
    problem = currency_problem(cfg.execution, symbols)
    if problem:
        raise UserError(f"the data's symbols: {problem}")
    for ok, msg in route_checks(cfg.routes, symbols):
        if not ok:
            raise UserError(f"the data's symbols: {msg}")


@dataclass
class Close:
    """Bars closed together (one engine call's worth, as live) and what follows from the
    data alone: their feature rows (the bars in them), per-bar volatility, how many are
    flagged FLAG_GAP, and the model's outputs and signals where the model serves in bulk
    (else None: `_decide` calls it)."""
    rows: np.ndarray
    vol: np.ndarray
    gaps: int
    outputs: object = None
    signals: np.ndarray | None = None


@dataclass
class Closes:
    """Every bar close of the data, in order, made ahead (`Backtest._closes`): each close's
    segment and bounds in the rows; the rows, their volatility, the running count of rows
    flagged FLAG_GAP (``gaps[k]``: among the first k); the model's outputs and the signals
    where the model serves in bulk (else None)."""
    segment: np.ndarray
    bounds: np.ndarray
    rows: np.ndarray
    vol: np.ndarray
    gaps: np.ndarray
    outputs: object = None
    signals: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.segment)

    def at(self, k: int) -> Close:
        """The k-th close."""
        a, b = int(self.bounds[k]), int(self.bounds[k + 1])
        out = self.outputs
        return Close(self.rows[a:b], self.vol[a:b], int(self.gaps[b] - self.gaps[a]),
                     None if out is None else (out[a:b] if isinstance(out, np.ndarray)
                                               else tuple(x[a:b] for x in out)),
                     None if self.signals is None else self.signals[a:b])


def _joined(parts: list[ClosedBars]) -> ClosedBars:
    """Closed bars of many closes as one, in order."""
    return ClosedBars(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(ClosedBars)))


def _no_bars() -> ClosedBars:
    i8, f8 = np.zeros(0, np.int64), np.zeros(0)
    return ClosedBars(np.zeros(0, np.intp), i8, i8, f8, f8, f8, f8, f8, i8, np.zeros(0, np.uint16))


def _part(bars: ClosedBars, index: np.ndarray) -> ClosedBars:
    """The closed bars at ``index``."""
    return ClosedBars(*(getattr(bars, f.name)[index] for f in fields(ClosedBars)))


def trades_by_symbol(ticks: np.ndarray, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Each symbol's valid trades (a positive finite price: those the desk takes for its last
    price, Desk.on_ticks) as indices into ``ticks``; and the prices."""
    sid = ticks["symbol_id"].astype(np.int64)
    price = ticks["price"]
    with np.errstate(invalid="ignore"):
        valid = (ticks["kind"] == TICK_TRADE) & np.isfinite(price) & (price > 0)
    return [np.flatnonzero(valid & (sid == s)) for s in range(n)], price


def last_trades(trades: tuple[list[np.ndarray], np.ndarray], ends: np.ndarray) -> np.ndarray:
    """Each symbol's last valid trade price among ``ticks[:end]`` for each of ``ends`` (NaN
    before its first), ``trades`` from `trades_by_symbol`: the desk's last price then."""
    at, price = trades
    out = np.full((len(ends), len(at)), np.nan)
    for s, idx in enumerate(at):
        if len(idx):
            k = np.searchsorted(idx, ends, side="left") - 1
            out[:, s] = np.where(k >= 0, price[idx[np.maximum(k, 0)]], np.nan)
    return out


class Backtest:
    """One run: the cores of a live pipeline wired in one process (the module
    docstring says how). ``run`` plays the data and returns a BacktestResult."""

    def __init__(self, cfg: Config, data: MarketData, journal_path: str | Path,
                 progress: bool = False, model=None, trade_from_ns: int | None = None,
                 on_features=None, defer: bool = True):
        self.cfg, self.data, self.progress = cfg, data, progress
        self.trade_from_ns = trade_from_ns
        self.on_features = on_features
        n = len(data.symbols)
        check_bars(data, cfg.indicators.bar_seconds)
        check_currencies(cfg, data.symbols)
        first = int(data.ticks["ts_exchange_ns"][0])
        self.clock = SimClock(first)
        ic = cfg.indicators
        self.bar_ns = int(round(ic.bar_seconds * 1e9))
        self.bars = self._bar_builder()                 # built ahead of the trading (`_closes`)
        self.engine = Engine(n, indicator_specs(ic))
        self.names = feature_names(cfg)
        self.fdtype = features_dtype(self.names)
        self.model = model if model is not None else self._model()
        self.vol_column, self.atr_column = volatility_columns(self.names)
        # the strategy's own clock: the desk's may lag behind the market through a quiet stretch
        # (`_quiet`), and catches up before the strategy's intents reach it
        self.strategy_clock = SimClock(first)
        self.strategy = SignalStrategy(n, cfg.strategy, self.strategy_clock,
                                       fx=FxRates.from_config(data.symbols, cfg.execution))
        self.journal = Journal(journal_path, group_rows=JOURNAL_GROUP_ROWS)
        self.desk = Desk(data.symbols, data.venue_of, data.venues, cfg.execution, cfg.risk, self.clock,
                         self.journal, PIPELINE, RUN_ID, snapshot_every_ns=SNAPSHOT_EVERY_NS,
                         routes=cfg.routes)
        self.desk.recover()
        if self.desk.portfolio.rows["qty"].any() or self.desk.orders.open_orders():
            raise UserError(f"the journal {journal_path} holds positions or orders of an earlier run; "
                            "give a new file with --journal")
        self.vol = np.full(n, np.nan)
        self.stops = cfg.strategy.stop_loss > 0 or cfg.strategy.take_profit > 0
        events = [(int(t), sid, float(r)) for sid, rows in data.funding.items()
                  for t, r in zip(rows["ts_ns"].tolist(), rows["rate"].tolist())]
        self.funding_due = sorted(events)            # (ts_ns, symbol id, rate), in time order
        self.funding_next = 0
        self.funding_paid = np.zeros(n)              # per symbol: + received, - paid
        self.funding_log: list[tuple] = []
        self.book_times = (data.books["ts_exchange_ns"].astype(np.int64) if data.books is not None
                           else np.zeros(0, np.int64))
        self.book_next = 0                           # the next recorded book to show the desk
        self.signal_seq = 0
        # the desk is shown a quiet stretch at once (`_quiet`), unless something moves its figures
        # by itself; ``defer`` False plays every step (the tests compare the two)
        self.may_defer = (defer and data.books is None and self.desk.hedges is None and not self.desk.fx.sources
                          and self.desk.impact is None)
        # and the strategy is shown such a stretch's bar closes many at once where it certainly
        # passes them over (`_pass_over`): not where something watches each close
        self.may_pass = (self.may_defer and on_features is None and not len(self.strategy.fx.market_sids)
                         and not self.strategy.fx.members)
        self.passed_over = 0                         # bars the strategy passed over in bulk
        self.pass_width = 32                         # bar closes to look ahead at (`_pass_over`) ...
        self.pass_stopped = -1                       # ... and the close it last stopped before
        self.acts: ActsAhead | None = None           # where the signals made ahead might act, if looked up
        self.behind: int | None = None               # the first segment the desk has not seen (a quiet stretch)
        self.quiet_until = 0                         # ... which lasts while its segments end before this
        self.seg = (0, 0, 0)                         # the segment being played: index, its ticks' bounds
        self.fills: list[tuple] = []
        self.client_ids: dict[int, str] = {}         # the desk's order ids -> client order ids
        self.samples: tuple[list, list, list] = ([], [], [])   # ts_ns, segment, state index: `_sample`
        self.states: list[tuple] = []                # (qty, avg price, realised - fees, funding, fx factor)
        self.state_key: tuple | None = None
        self.counts = {"bars": 0, "signals": 0, "intents": 0, "gap_bars": 0, "not_traded_before_start": 0}
        self.signal_log: list[np.ndarray] = []
        self.vote_log: list[np.ndarray] = []
        self.intent_log: list[np.ndarray] = []

    def _model(self):
        m = self.cfg.model
        if m.kind == "ensemble":
            try:
                model = EnsembleModel(m.artifacts, self.names, len(self.data.symbols),
                                      bar_seconds=self.cfg.indicators.bar_seconds, symbols=self.data.symbols)
            except ConfigurationError as e:
                raise UserError(f"the ensemble cannot serve this backtest: {e}") from None
            return model
        ema = [f"ema_{p}" for p in self.cfg.indicators.ema]
        if not ema:
            raise UserError("[model] kind = 'momentum' needs [indicators] ema periods")
        return MomentumModel(ema[0], ema[-1], m.threshold)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> BacktestResult:
        ticks = self.data.ticks
        ends = self.ends = bar_steps(ticks, self.bar_ns)
        self.seg_last = ticks["ts_exchange_ns"].astype(np.int64)[ends - 1]
        self.trades = trades_by_symbol(ticks, len(self.data.symbols))
        fills = self.fills
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(ticks), unit="tick", unit_scale=True, desc="backtest", leave=False)
        t0 = time.perf_counter()
        try:
            closes = self.closes = self._closes(ends)
            if self.may_pass and closes.signals is not None and len(self.data.symbols) <= ACTS_AHEAD_SYMBOLS:
                self.acts = self.strategy.acts_ahead(closes.signals)
            i = start = 0
            self.next_close = 0                        # the first close not yet decided
            while i < len(ends):
                end = int(ends[i])
                self.seg = (i, start, end)
                last = int(self.seg_last[i])
                if self.behind is None:
                    if self.may_defer and self._quiet(last):
                        self.behind = i
                    else:
                        self._watch(start, end)
                elif last >= self.quiet_until or (self.stops and self.strategy.direction.any()):
                    self._catch_up(i)                  # the rest of `_quiet` holds while the desk waits
                    self._watch(start, end)
                if self.behind is not None and self.may_pass:
                    after = self._pass_over(i)
                    if after > i:
                        if bar is not None:
                            bar.update(int(ends[after - 1]) - start)
                        i, start = after, int(ends[after - 1])
                        continue
                k = self.next_close
                if k < len(closes) and closes.segment[k] == i:
                    self.strategy_clock.set(last)
                    while k < len(closes) and closes.segment[k] == i:
                        self._decide(closes.at(k), fills)
                        k += 1
                    self.next_close = k
                    self._sample(i)
                if self.behind is None:
                    self._collect(self.desk.housekeeping(), fills)
                if bar is not None:
                    bar.update(end - start)
                i, start = i + 1, end
            if self.behind is not None:
                self._catch_up(len(ends))
            self._reports(None, fills)
            self._fund(int(ticks["ts_exchange_ns"][-1]))
            self._sample(len(ends) - 1, self.clock.time_ns())
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        members = list(getattr(self.model, "members", []))
        fill_rows = np.array(fills, FILL_ROW) if fills else np.zeros(0, FILL_ROW)
        vote_rows = None
        if members:
            vote_rows = np.concatenate(self.vote_log) if self.vote_log else np.zeros(0, VOTE_ROW(len(members)))
        signals = np.concatenate(self.signal_log) if self.signal_log else np.zeros(0, SIGNAL_ROW)
        intents = np.concatenate(self.intent_log) if self.intent_log else np.zeros(0, INTENT_ROW)
        T, close, position, equity = self._equity(ends)
        return BacktestResult(
            symbols=list(self.data.symbols), bar_seconds=float(self.cfg.indicators.bar_seconds),
            capital=float(self.cfg.execution.capital), ts_ns=T, close=close,
            position=position, equity=equity,
            fills=fill_rows, members=members, votes=vote_rows, signals=signals, intents=intents,
            funding=np.array(self.funding_log, FUNDING_ROW) if self.funding_log else None,
            counts=self._counts(), meta=self._meta(seconds))

    def _watch(self, start: int, end: int) -> None:
        """A segment of the market up to the desk, as a live desk polling between ticks sees
        it: the reports and funding due before it, its ticks (each trade to the strategy's
        stops too), the books recorded by its end."""
        first = int(self.data.ticks["ts_exchange_ns"][start])
        self._reports(first, self.fills)
        self._fund(first)
        self._ticks(self.data.ticks[start:end], start, self.fills)
        self._books(self._ts_before(end))

    def _ts_before(self, end: int) -> int:
        """The time of the tick before ``end``."""
        return int(self.data.ticks["ts_exchange_ns"][end - 1])

    def _quiet(self, until_ns: int) -> bool:
        """Whether the desk would only watch the market through a segment ending at
        ``until_ns``: no order open or report due, no funding or recovery snapshot due, no
        stop of the strategy's to watch, and every symbol held has a last price. Then its
        tick handling adds up (the last trade and quote, feed health and order rates are the
        same seen in one batch or many) and its equity moves with the last prices only, so
        the desk is shown such a stretch at once when it must act (`_catch_up`). Not at all
        with recorded books, hedged routes, FX markets or the impact model (each moves the
        desk's figures by itself, `may_defer`)."""
        d = self.desk
        self.quiet_until = d.snapshot_due_ns()          # quiet until then, while nothing else moves
        if self.funding_next < len(self.funding_due):
            self.quiet_until = min(self.quiet_until, self.funding_due[self.funding_next][0])
        if until_ns >= self.quiet_until or d.orders.open_orders() or d.next_due_ns() is not None:
            return False
        if self.stops and self.strategy.direction.any():
            return False
        held = d.portfolio.rows["qty"] != 0
        return not held.any() or bool(np.isfinite(d.market.last[held]).all())

    def _pass_over(self, i: int) -> int:
        """In a quiet stretch from segment ``i``: the bar closes of the segments ahead (within the
        stretch, up to the close where the strategy next might act, `SignalStrategy.next_act`,
        or with many symbols ``pass_width`` of them) that the strategy certainly passes over
        (SignalStrategy.pass_over), taken at once, with the bookkeeping `_decide` does per
        close (counts, signal seqs, volatility, equity samples); signals before the traded
        period (walk-forward) never reach the strategy, as in `_decide`. Returns the first
        segment not taken (``i``: none)."""
        b = self.closes
        c0 = self.next_close
        if b.signals is None or c0 == len(b) or b.segment[c0] != i or c0 == self.pass_stopped:
            return i                    # no close here, no signals made ahead, or one found to act
        end_seg = int(np.searchsorted(self.seg_last, self.quiet_until, side="left"))   # the stretch's end
        c1 = int(np.searchsorted(b.segment, end_seg, side="left"))
        lo = int(b.bounds[c0])
        quiet_for = None                # signals known to make nothing, when looked up
        if self.acts is not None and (self.trade_from_ns is None
                                      or int(b.signals["ts_bar_ns"][lo]) + self.bar_ns >= self.trade_from_ns):
            # up to the close of the first signal that might act: the pass stops before it
            rows = self.desk.portfolio.rows
            act = self.strategy.next_act(self.acts, lo, rows["qty"], rows["working"])
            c1 = min(c1, int(np.searchsorted(b.bounds, act, side="right")), c0 + PASS_WINDOW)
            quiet_for = act - lo
        else:
            c1 = min(c1, c0 + self.pass_width)
        if c1 <= c0:
            return i
        sig = b.signals[lo:int(b.bounds[c1])]
        seg = b.segment[c0:c1]
        close_end = b.bounds[c0 + 1:c1 + 1] - lo             # each close's end among ``sig``
        whole = np.empty(len(seg), bool)
        np.not_equal(seg[1:], seg[:-1], out=whole[:-1])
        whole[-1] = c1 == len(b) or b.segment[c1] != seg[-1]
        cuts = close_end[whole]                              # whole segments only
        if not len(cuts):
            return i
        early = 0
        if self.trade_from_ns is not None:
            before = sig["ts_bar_ns"].astype(np.int64) + self.bar_ns < self.trade_from_ns
            early = len(before) if before.all() else int(np.argmin(before))
            if early < len(before) and before[early:].any():
                return i                               # out of order around the start: step by step
        if early:
            k = int(cuts[np.searchsorted(cuts, early, side="right") - 1]) if early >= cuts[0] else 0
        else:
            rows = self.desk.portfolio.rows
            k = self.strategy.pass_over(sig, rows["qty"], rows["working"], cuts, quiet_for)
        # the next look ahead: wider after a window taken whole, else about twice this stretch
        whole_window = k == int(cuts[-1])
        n_closes = int(np.searchsorted(close_end, k, side="left")) + 1 if k else 0   # closes taken
        self.pass_width = min(self.pass_width * 2, PASS_WINDOW) if whole_window else max(2 * n_closes, 16)
        if not whole_window:
            self.pass_stopped = c0 + n_closes   # the first close of the segment that might act
        if not k:
            return i
        self.passed_over += k
        taken = sig[:k]
        self.counts["bars"] += k
        self.counts["signals"] += k
        self.counts["gap_bars"] += int(b.gaps[lo + k] - b.gaps[lo])
        if early:
            self.counts["not_traded_before_start"] += k
        self.signal_seq += k
        ids = taken["symbol_id"].astype(np.intp)
        newest = len(ids) - 1 - np.unique(ids[::-1], return_index=True)[1]     # each symbol's last
        self.vol[ids[newest]] = b.vol[lo + newest]
        last = n_closes - 1                                  # the last close taken
        self.next_close = c0 + last + 1
        sampled = seg[:last + 1]
        sampled = sampled[whole[:last + 1]]              # each segment once (they ascend)
        self._sample(int(sampled[0]))
        times, segments, states = self.samples        # nothing moved since: the same account
        times += self.seg_last[sampled[1:]].tolist()
        segments += sampled[1:].tolist()
        states += [states[-1]] * (len(sampled) - 1)
        return int(seg[last]) + 1

    def _catch_up(self, segment: int, through: bool = False) -> None:
        """The end of a quiet stretch: the desk is shown the ticks it has not seen, those
        before ``segment`` (``through``: and those of ``segment``, in the same call: the
        stretch ends where the strategy acts, and nothing was due in between), and marks
        its equity as each step's housekeeping did: all that housekeeping does on a quiet
        desk (no report due, no snapshot due, no FX rate), so it is left as each step of
        the stretch would have left it (`_quiet` says why)."""
        first, ends = self.behind, self.ends
        last = segment if through else segment - 1          # the last segment shown
        start, upto = (int(ends[first - 1]) if first else 0), (int(ends[last]) if last >= first else 0)
        if upto > start:
            self.clock.set(self._ts_before(upto))
            self.desk.on_ticks(self.data.ticks[start:upto])
        if segment > first:
            self.desk.mark_quiet(self.seg_last[first:segment], last_trades(self.trades, ends[first:segment]))
        self.behind = None

    def _closes(self, ends: np.ndarray) -> Closes:
        """Every bar close of the data, before any trading, in order. The bars, indicators
        and model depend on the market data only, never on what was traded, so they are the
        live stages' values computed ahead: the bar builder as live (`_bar_closes`), the
        indicator engine in one call over every close (its kernels run event after event, so
        one call gives what one call per close gives), and the model and its signals on
        every close at once where it can (models/serving.bulk_outputs: the same outputs as
        one call per close, far fewer calls), else one close at a time in `_decide`."""
        every, step_seg, bounds = self._bar_closes(ends)
        values = self.engine.update(every.ids, every.o, every.h, every.l, every.c, every.v)
        rows = feature_rows(every, values, self.names, self.fdtype)
        ids = every.ids.astype(np.intp)
        out = (bulk_outputs(self.model, ids, rows, np.repeat(np.arange(len(step_seg)), np.diff(bounds)))
               if len(step_seg) else None)
        sig = (make_signals(self.model, ids, rows, every.origin_ns, every.flags, 0, out)
               if out is not None else None)
        if sig is not None:
            self.signal_log.append(self._signal_rows(sig))
            self.vote_log.append(self._vote_rows(sig))
        return Closes(step_seg, bounds, rows, bar_volatility(rows, self.vol_column, self.atr_column),
                      np.r_[0, np.cumsum((rows["flags"] & FLAG_GAP) != 0)], out, sig)

    def _vote_rows(self, sig: np.ndarray) -> np.ndarray:
        """The result's record of an ensemble's votes (VOTE_ROW), at their bars' close times;
        none for a model without members."""
        members = list(getattr(self.model, "members", None) or [])
        if not members or "member_probs" not in sig.dtype.names:
            return np.zeros(0, VOTE_ROW(max(len(members), 1)))
        votes = np.zeros(len(sig), VOTE_ROW(len(members)))
        votes["ts_ns"] = sig["ts_bar_ns"].astype(np.int64) + self.bar_ns
        votes["symbol_id"], votes["probs"] = sig["symbol_id"], sig["probs"]
        votes["member_probs"] = sig["member_probs"][:, :len(members)]
        return votes

    def _signal_rows(self, sig: np.ndarray) -> np.ndarray:
        """The result's record of signals (SIGNAL_ROW), at their bars' close times."""
        log = np.zeros(len(sig), SIGNAL_ROW)
        log["ts_ns"] = sig["ts_bar_ns"].astype(np.int64) + self.bar_ns
        log["symbol_id"], log["action"] = sig["symbol_id"], sig["action"]
        log["flags"], log["probs"] = sig["flags"], sig["probs"]
        return log

    def _bar_closes(self, ends: np.ndarray) -> tuple[ClosedBars, np.ndarray, np.ndarray]:
        """Every bar close of the data, in the order a live bar builder closes them when the
        replay is played segment by segment (`run`): by the trades that open the next bars,
        and by the timer where a symbol's next trade is late. As (every closed bar in that
        order; per close, one engine call's worth: its segment index; the closes' bounds in
        the first). One builder call over all the ticks where that gives the same closes
        (`_bar_closes_at_once`), else the segments one by one, as live."""
        at_once = self._bar_closes_at_once(ends)
        return at_once if at_once is not None else self._bar_closes_by_segment(ends)

    def _bar_closes_by_segment(self, ends: np.ndarray) -> tuple[ClosedBars, np.ndarray, np.ndarray]:
        """`_bar_closes` the way live plays them: the segments one by one, the timer after each."""
        ticks, steps, segs = self.data.ticks, [], []
        self.bars = self._bar_builder()
        clock = self.bars.clock
        start = 0
        for i, end in enumerate(ends.tolist()):
            seg = ticks[start:end]
            clock.set(int(seg["ts_exchange_ns"][-1]))
            closed = self.bars.on_ticks(seg)
            due = self.bars.close_due()
            if due is not None:
                closed.append(due)
            steps += closed
            segs += [i] * len(closed)
            start = end
        bounds = np.cumsum([0] + [len(bars) for bars in steps])
        every = _joined(steps) if steps else _no_bars()
        return every, np.array(segs, np.int64), bounds

    def _bar_closes_at_once(self, ends: np.ndarray) -> tuple[ClosedBars, np.ndarray, np.ndarray] | None:
        """`_bar_closes` from one bar builder call over all the ticks (one per stretch between
        gap markers), each close put in the segment of the trade that made it; None where playing segment by segment could close
        some bar by the timer (its symbol's next trade comes after the bar's end plus the
        close grace, and another symbol's step ends in between), which only the segments
        one by one reproduce. The test is safe: it may say None where no timer would fire,
        never the reverse (the market clock of a step is at most its last tick's time)."""
        ticks = self.data.ticks
        builder = self._bar_builder()
        builder.clock.set(int(ticks["ts_exchange_ns"][-1]))
        limit = builder.bar_ns + builder.grace_ns
        last = ticks["ts_exchange_ns"].astype(np.int64)[ends - 1]     # each segment's last tick time
        # a gap marker flags the bar open when its batch starts: the segments with one start
        # batches of their own, as played segment by segment
        gap_seg = np.unique(np.searchsorted(ends, np.flatnonzero(ticks["kind"] == TICK_GAP), side="right"))
        cuts = np.r_[0, ends][np.r_[0, gap_seg]].tolist() + [len(ticks)]
        folded = [builder.fold(ticks[a:b]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        folded = [(bars, close) for bars, close in folded if bars is not None]
        still = builder.open_ns[builder.owned & (builder.open_ns >= 0)]
        if len(still) and int(last[-1]) >= int(still.min()) + limit:
            return None                                      # the last segment's timer closes some
        if not folded:
            self.bars = builder
            return _no_bars(), np.zeros(0, np.int64), np.zeros(1, np.int64)
        every = _joined([bars for bars, _ in folded])
        close = np.concatenate([close for _, close in folded])          # numbered per batch
        batch = np.repeat(np.arange(len(folded)), [len(c) for _, c in folded])
        group = np.cumsum(np.r_[True, (batch[1:] != batch[:-1]) | (close[1:] != close[:-1])])
        seg = np.searchsorted(last, every.origin_ns, side="left")
        if ((seg > 0) & (last[np.maximum(seg - 1, 0)] >= every.open_ns + limit)).any():
            return None
        order = np.lexsort((group, seg))       # by segment, then bar group; symbol order kept within
        every, seg, group = _part(every, order), seg[order], group[order]
        starts = np.flatnonzero(np.r_[True, (seg[1:] != seg[:-1]) | (group[1:] != group[:-1])])
        self.bars = builder
        return every, seg[starts].astype(np.int64), np.r_[starts, len(seg)]

    def _bar_builder(self) -> BarBuilder:
        """A bar builder of every symbol, on a clock of its own (bars are built ahead of the
        trading)."""
        ic = self.cfg.indicators
        first = int(self.data.ticks["ts_exchange_ns"][0])
        return BarBuilder(np.ones(len(self.data.symbols), bool), self.bar_ns, int(ic.close_grace_s * 1e9),
                          SimClock(first), int(max(f.max_ahead_s for f in self.cfg.feeds) * 1e9))

    def _decide(self, close: Close, fills: list) -> None:
        """A close's feature rows -> signals -> intents -> the desk: what a live bar close
        does, stage after stage (the model's outputs and signals computed ahead where
        ``close`` has them, else the model is called now)."""
        rows = close.rows
        self.strategy.fx.on_bars(rows)
        if self.on_features is not None:
            self.on_features(rows)
        self.counts["bars"] += len(rows)
        self.counts["gap_bars"] += close.gaps
        ids = rows["symbol_id"].astype(np.intp)
        sig = close.signals
        if sig is None:
            sig = make_signals(self.model, ids, rows, rows["ts_origin_ns"], rows["flags"], self.signal_seq,
                               close.outputs)
            self.signal_log.append(self._signal_rows(sig))
            self.vote_log.append(self._vote_rows(sig))
        self.signal_seq += len(sig)
        self.counts["signals"] += len(sig)
        self.vol[ids] = close.vol
        if self.trade_from_ns is not None:
            early = sig["ts_bar_ns"].astype(np.int64) + self.bar_ns < self.trade_from_ns
            if early.any():                       # warm-up before the period traded
                self.counts["not_traded_before_start"] += int(early.sum())
                sig = sig[~early]
        if not len(sig):
            return
        rows = self.desk.portfolio.rows
        self._send(self.strategy.on_signals(sig, self.vol, 0, rows["qty"], rows["working"]), fills)

    def _send(self, intents: np.ndarray, fills: list) -> None:
        """The strategy's intents, logged, to the desk."""
        if len(intents):
            if self.behind is not None:             # a quiet stretch ends: the desk catches up first,
                self._catch_up(self.seg[0], through=True)   # this step's ticks too (the strategy held nothing)
            self.counts["intents"] += len(intents)
            log = np.zeros(len(intents), INTENT_ROW)
            log["ts_ns"], log["symbol_id"] = intents["ts_ns"], intents["symbol_id"]
            log["side"], log["qty"] = intents["side"].astype(np.int8), intents["qty"]
            log["reason"], log["seq"] = intents["reason"], intents["seq"]
            self.intent_log.append(log)
            self._collect(self.desk.on_intents(intents), fills)

    def _ticks(self, seg: np.ndarray, offset: int, fills: list) -> None:
        """A segment's ticks to the desk. With a stop-loss or take-profit, every trade of a
        symbol the strategy holds goes to its stop check as it happens, as the strategy
        process reads the ticks live: the desk has seen the market up to that trade when
        the exit reaches it. ``offset``: the segment's first tick's place in the data (the
        stop intent's seq, as a tick's place in its ring is live)."""
        last = int(seg["ts_exchange_ns"][-1])
        if not self.stops:
            self.clock.set(last)
            self.desk.on_ticks(seg)
            return
        s, start = self.strategy, 0
        trades = np.flatnonzero(seg["kind"] == TICK_TRADE)
        held = s.direction[seg["symbol_id"][trades].astype(np.intp)] != 0
        for i in trades[held].tolist():
            sid = int(seg["symbol_id"][i])
            if not s.direction[sid]:               # an earlier trade of this segment closed it
                continue
            ts = int(seg["ts_exchange_ns"][i])
            self.clock.set(ts)
            self.strategy_clock.set(ts)
            self.desk.on_ticks(seg[start:i + 1])
            start = i + 1
            self._send(s.on_price(sid, float(seg["price"][i]), offset + i, ts), fills)
        self.clock.set(last)
        if start < len(seg):
            self.desk.on_ticks(seg[start:])

    def _reports(self, before_ns: int | None, fills: list) -> None:
        """The broker's reports and the resting orders' expiries due before ``before_ns``
        (None: the reports still in flight), each taken at its own time, as a live desk
        polling between ticks takes them."""
        while True:
            due = self.desk.next_due_ns() if before_ns is not None else self.desk.broker.next_due_ns()
            if due is None or (before_ns is not None and due >= before_ns):
                return
            self.clock.set(max(due, self.clock.time_ns()))
            self._collect(self.desk.poll(), fills)

    def _books(self, until_ns: int) -> None:
        """The recorded books up to ``until_ns`` (the segment's last tick: what a live desk
        would have had by then), to the desk: orders decided at that time walk the newest."""
        end = int(np.searchsorted(self.book_times, until_ns, side="right"))
        if end > self.book_next:
            rows = self.data.books[self.book_next:end]
            if not self.desk.orders.open_orders():       # nothing resting: each symbol's newest is all
                sid = rows["symbol_id"][::-1]
                rows = rows[len(rows) - 1 - np.unique(sid, return_index=True)[1]]
            self.desk.on_books(rows)
            self.book_next = end

    def _fund(self, until_ns: int) -> None:
        """Perpetuals' funding due by ``until_ns``: the position held then pays (or, at a
        negative rate, receives) position x mark x rate, marked at the last trade."""
        due, m = self.funding_due, self.desk.market
        while self.funding_next < len(due) and due[self.funding_next][0] <= until_ns:
            ts, sid, rate = due[self.funding_next]
            self.funding_next += 1
            qty, mark = float(self.desk.portfolio.rows["qty"][sid]), float(m.last[sid])
            pay = -qty * mark * rate if qty and math.isfinite(mark) else 0.0
            self.funding_paid[sid] += pay
            self.funding_log.append((ts, sid, rate, qty, mark, pay))

    def _collect(self, out, fills: list) -> None:
        """The fills of a desk step, as report rows (slippage against the top the desk saw)."""
        m = self.desk.market
        ids = self.client_ids
        new = len(self.desk.order_ids) - len(ids)      # the desk's ids only grow: its newest, from the end
        if out.fills and new > 0:                       # (not skipping the older ones: that grew as orders did)
            ids.update((v, k) for k, v in itertools.islice(reversed(self.desk.order_ids.items()), new))
        for rec in out.fills:
            sid, side = int(rec["symbol_id"]), int(rec["side"])
            top = float(m.ask[sid] if side > 0 else m.bid[sid])
            price, qty = float(rec["price"]), float(rec["qty"])
            slip = side * (price - top) * qty if math.isfinite(top) else 0.0
            coid = ids.get(int(rec["order_id"]), "")
            order = self.desk.orders.get(coid) if coid else None
            fills.append((int(rec["ts_ns"]), sid, side, qty, price, float(rec["fee"]), slip,
                          int(order.intent_reason) if order is not None else 0, coid))

    def _sample(self, segment: int, now: int | None = None) -> None:
        """The account after ``segment`` (at its last tick, or ``now``), for the equity series
        (`_equity`): what it holds, its money and its FX rates, kept again only when a fill,
        a funding payment or a rate has moved them since."""
        now = int(self.seg_last[segment]) if now is None else now
        rows, fx = self.desk.portfolio.rows, self.desk.fx
        key = (self.desk.counters["fills"], self.funding_next, fx.factor.tobytes() if fx.sources else None)
        if key != self.state_key:
            self.state_key = key
            self.states.append((rows["qty"].copy(), rows["avg_price"].copy(),
                                rows["realized_pnl"] - rows["fees"], self.funding_paid.copy(), fx.factor.copy()))
        times, segments, states = self.samples
        if times and times[-1] == now:
            del times[-1], segments[-1], states[-1]
        times.append(now)
        segments.append(segment)
        states.append(len(self.states) - 1)

    def _equity(self, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The equity series in the account currency, from the samples: (times, each
        symbol's mark, position, equity), open positions marked at the last trade by then."""
        n = len(self.data.symbols)
        if not self.samples[0]:
            return np.zeros(0, np.int64), np.zeros((0, n)), np.zeros((0, n)), np.zeros(0)
        T, segment, state = (np.array(x, np.int64) for x in self.samples)
        mark = last_trades(self.trades, ends[segment])
        qty, avg, money, funding, factor = (np.stack(x)[state] for x in zip(*self.states))
        unreal = np.where(qty != 0, qty * (np.nan_to_num(mark) - avg), 0.0)
        return T, mark, qty, self.cfg.execution.capital + in_account(money + unreal + funding, factor)

    def _counts(self) -> dict:
        guard = self.desk.guard
        return {**self.counts, "funding_paid": {self.data.symbols[s]: round(float(v), 8)
                                                for s, v in enumerate(self.funding_paid) if v},
                "bar_builder": dict(self.bars.counters),
                "strategy": dict(self.strategy.counters), "desk": dict(self.desk.counters),
                "denials": {k: v for k, v in guard.denials().items() if v},
                "broker_ignored": dict(self.desk.broker.ignored),
                "files": self.data.files}

    def _meta(self, seconds: float) -> dict:
        cfg = self.cfg
        versions = dict(getattr(self.model, "versions", {}) or {})
        ts = self.data.ticks["ts_exchange_ns"]
        return {"run_id": RUN_ID, "symbols": list(self.data.symbols), "bar_seconds": cfg.indicators.bar_seconds,
                "model": cfg.model.kind, "model_versions": versions,
                "periods": [{"from_ns": int(ts[0]), "to_ns": int(ts[-1]), "model_versions": versions}],
                "strategy": vars(cfg.strategy).copy(), "execution": {
                    **{k: getattr(cfg.execution, k) for k in ("capital", "fee_bps", "maker_fee_bps",
                                                              "slippage_bps", "impact_coef",
                                                              "impact_window_s", "ack_latency_ms",
                                                              "fill_latency_ms", "latency_jitter_ms")},
                    "venue_fees": {v: dict(zip(("maker_bps", "taker_bps"), fees_of(cfg.execution, v)))
                                   for v in self.data.venues}},
                "journal": str(self.journal.path), "ticks": int(len(ts)), "seconds": round(seconds, 3),
                "bars_per_s": round(self.counts["bars"] / seconds, 1) if seconds > 0 else None,
                "bars_passed_over": self.passed_over}

    def close(self) -> None:
        self.desk.close()
        self.journal.close()


def scratch_dir(events: int) -> str | None:
    """Where a journal that is thrown away after the run goes: memory (/dev/shm), the
    "journal in memory" a backtest may keep, where it has room for the largest journal
    ``events`` market events could make (SCRATCH_BYTES_PER_EVENT each: a fill on every one,
    plus a full WAL); else the system's temporary folder (None). Its writes then cost no
    disk: a third of an EMA crossover's run on 5-minute bars was the journal's writes."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    _sweep_scratch(shm)
    room = st.f_bavail * st.f_frsize
    need = events * SCRATCH_BYTES_PER_EVENT + WAL_LIMIT_BYTES
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) and room >= need else None


def _sweep_scratch(folder: Path) -> None:
    """Remove the scratch journals of backtests that died without cleaning up (kill -9):
    memory, not disk, until removed. One is stale when nobody holds its journal's lock (the
    writer holds it while it runs; the kernel drops it when the process dies), or, with no
    lock file yet, after an hour."""
    for d in folder.glob(f"{SCRATCH_PREFIX}*"):
        lock = d / "journal.sqlite.lock"
        try:
            if not lock.exists():
                if time.time() - d.stat().st_mtime > 3600:
                    shutil.rmtree(d, ignore_errors=True)
                continue
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue                                 # held: a backtest running now
        finally:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


def run_backtest(cfg: Config, paths: list[str] | MarketData, start: str | None = None,
                 end: str | None = None, journal: str | None = None, progress: bool = False,
                 model=None, trade_from_ns: int | None = None, on_features=None) -> BacktestResult:
    """Play ``paths`` (or data already loaded) through the live chain (the module
    docstring) and return the result. ``journal``: a SQLite file to keep (it must not
    hold another run's positions); None: a temporary one, removed after. ``model``:
    serve this object instead of the one ``[model]`` names (anything with the
    ensemble's or the momentum rule's ``predict``). ``trade_from_ns``: bars closing
    before it warm the indicators and models up but trade nothing (walk-forward).
    ``on_features``: called with each bar close's feature rows (the warm-up check
    compares indicator values across runs)."""
    data = paths if isinstance(paths, MarketData) else load_data(paths, start, end)
    tmp = None
    if journal is None:
        tmp = tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=scratch_dir(len(data.ticks)))
        journal = str(Path(tmp.name) / "journal.sqlite")
    try:
        bt = Backtest(cfg, data, journal, progress, model, trade_from_ns, on_features)
        try:
            return bt.run()
        finally:
            bt.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
