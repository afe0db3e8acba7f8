"""Benchmark: the trading half's cores in one process, and the journal against the
ways others keep their trade records, measured in the same run.

Steps
    One step is what the strategy and execution processes do per batch: a trade
    and quote per symbol into execution's desk (workers/execution/desk.py), then
    64 model signals (one per symbol, their margin flipping every step, so every
    signal is an entry or an exit) through the strategy core
    (workers/strategy/signals.py) and the desk: the four-tier risk guard, the
    order manager, the paper broker (zero latency: the market orders fill on the
    quote at once) and the portfolio, with every intent, order event, fill and
    position journaled (pipeline/journal.py) and committed before it is sent or
    published, as the execution process runs it. Timed per step with ``time.perf_counter_ns``: p50,
    p99, and intents per second over all steps. The aim (issue 11): a 64-intent
    step under 1 ms at p99 and 50,000 intents/s or more. The garbage collector runs
    between steps, as in the execution process (pipeline/collector.py); its passes are
    reported apart (each delays the step after it) and counted in intents per second.
    The same steps with CPython's collector inside them are measured in the same run.

One intent
    What a backtest pays per call, sending its intents one at a time: `Desk.on_intents`
    of one intent (guard, order, broker, fill, both write-ahead commits), p50 and p99;
    and the median of an idle `Desk.on_ticks` (the 64 ticks, nothing open) and of
    `Desk.housekeeping`.

Journal
    Events per second appending rows of the same size (an order's fields): ours
    (hash chained, WAL, ``synchronous=NORMAL``, one commit per 64 rows); the same
    commits made durable (``Journal.durable``: fsync per batch); SQLite with one
    autocommitted INSERT per row (default settings: rollback journal,
    ``synchronous=FULL``), what a bot writing each trade as it happens does; and
    SQLAlchemy ORM objects committed one per row (freqtrade's way), where
    SQLAlchemy is installed (``pip install -e '.[bench]'``). Every writer works on
    its own file in a temporary directory, on the same disk.

Usage::

    python3 bench/execution.py [--quick] [--json OUT.json] [--steps N] [--events N]
"""
from __future__ import annotations

import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time

import numpy as np

import common
from pipeline.clock import SimClock
from pipeline.collector import StepCollector
from pipeline.config import ExecutionConfig, RiskConfig, StrategyConfig
from pipeline.journal import Journal
from shm.records import SIGNAL, TICK, TICK_TRADE
from workers.execution.desk import Desk
from workers.strategy.signals import SignalStrategy

N_SYMBOLS = 64
VENUE = "paper"
ORDER_ROW = {"order_id": 123456, "intent_seq": 987654321, "symbol_id": 17, "side": 1,
             "order_type": 1, "price": 43567.12, "qty": 0.00229, "ts_ns": 1_700_000_000_000_000_000,
             "ts_origin_ns": 1_699_999_999_999_000_000, "run_id": "r1a2b3c4"}


# -- the cores, one step at a time ------------------------------------------------------
class Bench:
    """The strategy core and execution's desk (risk guard, order manager, paper broker,
    portfolio, journal), wired as the processes wire them, on a simulated clock."""

    def __init__(self, folder: str):
        self.clock = SimClock(1_700_000_000_000_000_000)
        self.strategy = SignalStrategy(N_SYMBOLS, StrategyConfig(min_hold_bars=0, allow_short=True,
                                                                 enter_margin=0.1, exit_margin=0.0),
                                       self.clock)
        limits = RiskConfig(max_gross_exposure=1e12, max_venue_exposure=1e12,
                            max_position_notional=1e12, max_order_notional=1e9,
                            max_orders_per_s=1e9, order_burst=10**9)
        self.journal = Journal(os.path.join(folder, "desk.sqlite"))
        self.desk = Desk([f"S{i}/USDT@{VENUE}" for i in range(N_SYMBOLS)], np.zeros(N_SYMBOLS, np.int64),
                         [VENUE], ExecutionConfig(capital=1e9), limits, self.clock, self.journal,
                         "bench", "r0")
        self.price = 100.0 * np.exp(np.linspace(0, 1, N_SYMBOLS))
        self.ticks = np.zeros(N_SYMBOLS, TICK)
        self.ticks["symbol_id"] = np.arange(N_SYMBOLS)
        self.ticks["kind"], self.ticks["side"], self.ticks["size"] = TICK_TRADE, 1, 1.0
        self.signals = np.zeros(N_SYMBOLS, SIGNAL)
        self.signals["symbol_id"] = np.arange(N_SYMBOLS)
        self.vol = np.full(N_SYMBOLS, 0.002)
        self.step_no = 0

    def step(self) -> int:
        """One batch: the market moves (a trade and quote per symbol), 64 signals, their
        intents through the desk; returns the intents handled."""
        k = self.step_no = self.step_no + 1
        self.clock.set(self.clock.time_ns() + 1_000_000)
        now = self.clock.time_ns()
        self.price *= 1.0 + 0.001 * np.sin(k + np.arange(N_SYMBOLS))
        t = self.ticks
        t["price"], t["bid"], t["ask"] = self.price, self.price * (1 - 1e-4), self.price * (1 + 1e-4)
        t["ts_origin_ns"] = now
        self.desk.on_ticks(t)
        sig = self.signals
        margin = 0.5 if k % 2 else -0.5
        sig["probs"] = [0.25 - margin / 2, 0.5, 0.25 + margin / 2]
        sig["ref_price"] = self.price
        sig["seq"] = np.arange(N_SYMBOLS) + k * N_SYMBOLS
        sig["ts_bar_ns"] = k
        sig["ts_origin_ns"] = now
        intents = self.strategy.on_signals(sig, self.vol, 0, self.desk.portfolio.rows["qty"].copy())
        self.desk.on_intents(intents)
        return len(intents)


def bench_one(folder: str, calls: int) -> dict:
    """One intent per `Desk.on_intents` call (a backtest's way), each symbol in turn, its
    signal flipping every round so every call trades; and the idle calls between them."""
    b = Bench(folder)
    try:
        for _ in range(10):
            b.step()
        desk, times = b.desk, []
        for k in range(calls + 64):
            sym = k % N_SYMBOLS
            b.clock.set(b.clock.time_ns() + 1_000_000)
            margin = 0.5 if (k // N_SYMBOLS) % 2 else -0.5
            sig = b.signals[sym:sym + 1].copy()
            sig["probs"] = [0.25 - margin / 2, 0.5, 0.25 + margin / 2]
            sig["ref_price"], sig["seq"], sig["ts_origin_ns"] = b.price[sym], 10**9 + k, b.clock.time_ns()
            intents = b.strategy.on_signals(sig, b.vol[:1], 0, desk.portfolio.rows["qty"].copy())
            t0 = time.perf_counter_ns()
            desk.on_intents(intents)
            if k >= 64 and len(intents):            # the first round only warms up
                times.append(time.perf_counter_ns() - t0)
        t = np.array(times) / 1e3
        return {"calls": len(times), "on_intents_p50_us": float(np.percentile(t, 50)),
                "on_intents_p99_us": float(np.percentile(t, 99)),
                "on_ticks_idle_us": _median_us(lambda: desk.on_ticks(b.ticks), 500),
                "housekeeping_us": _median_us(desk.housekeeping, 500)}
    finally:
        b.journal.close()


def _median_us(call, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1e3


def bench_steps(folder: str, steps: int, warmup: int, between: bool = True) -> dict:
    """``between``: the garbage collector run between steps, as the execution process runs
    it (pipeline/collector.py, steps back to back); else CPython's own, inside the steps.
    Intents per second count the passes between steps too."""
    desk = Bench(folder)
    collector = StepCollector()
    try:
        for _ in range(warmup):
            desk.step()
        if between:
            collector.start()
        times, handled = [], 0
        for _ in range(steps):
            t0 = time.perf_counter_ns()
            handled += desk.step()
            times.append(time.perf_counter_ns() - t0)
            if between:
                collector.between_steps(idle=False)
        t = np.array(times) / 1e6
        passes = collector.passes
        return {"steps": steps, "intents": handled, "intents_per_step": handled / steps,
                "fills": desk.desk.counters["fills"], "p50_ms": float(np.percentile(t, 50)),
                "p99_ms": float(np.percentile(t, 99)), "p99_9_ms": float(np.percentile(t, 99.9)),
                "max_ms": float(t.max()), "mean_ms": float(t.mean()),
                "intents_per_s": handled / ((t.sum() + collector.pause_ns_total / 1e6) / 1e3),
                "gc": "between steps" if between else "CPython default, inside steps",
                "gc_passes_between": passes, "gc_pause_max_ms": collector.pause_ns_max / 1e6,
                "gc_pause_mean_ms": collector.pause_ns_total / 1e6 / passes if passes else 0.0,
                "denials": {k: v for k, v in desk.desk.guard.denials().items() if v}}
    finally:
        if between:
            collector.stop()
        desk.journal.close()


# -- the journal against others --------------------------------------------------------
def journal_ours(folder: str, n: int, durable: bool) -> float:
    j = Journal(os.path.join(folder, f"ours{int(durable)}.sqlite"))
    try:
        t0 = time.perf_counter()
        for i in range(n):
            j.append("order", i, ORDER_ROW, symbol="BTC/USDT@paper", client_order_id=f"c{i}")
            if i % 64 == 63:
                j.durable() if durable else j.commit()
        j.commit()
        return n / (time.perf_counter() - t0)
    finally:
        j.close()


def journal_sqlite_autocommit(folder: str, n: int) -> float:
    import json
    db = sqlite3.connect(os.path.join(folder, "autocommit.sqlite"), isolation_level=None)
    db.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, ts_ns INTEGER, kind TEXT, symbol TEXT,"
               " client_order_id TEXT, payload TEXT)")
    try:
        t0 = time.perf_counter()
        for i in range(n):
            db.execute("INSERT INTO trades (ts_ns, kind, symbol, client_order_id, payload) "
                       "VALUES (?, ?, ?, ?, ?)", (i, "order", "BTC/USDT@paper", f"c{i}",
                                                   json.dumps(ORDER_ROW)))
        return n / (time.perf_counter() - t0)
    finally:
        db.close()


def journal_sqlalchemy(folder: str, n: int) -> float | None:
    try:
        from sqlalchemy import BigInteger, Column, Float, Integer, String, create_engine
        from sqlalchemy.orm import DeclarativeBase, Session
    except ImportError:
        return None

    class Base(DeclarativeBase):
        pass

    class Order(Base):            # the columns freqtrade's Order keeps, roughly
        __tablename__ = "orders"  # plain Columns: this module's annotations are strings
        id = Column(Integer, primary_key=True)
        ts_ns = Column(BigInteger)
        symbol = Column(String(32))
        client_order_id = Column(String(40))
        side = Column(Integer)
        price = Column(Float)
        qty = Column(Float)

    engine = create_engine("sqlite:///" + os.path.join(folder, "orm.sqlite"))
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            t0 = time.perf_counter()
            for i in range(n):
                session.add(Order(ts_ns=i, symbol="BTC/USDT@paper", client_order_id=f"c{i}",
                                  side=ORDER_ROW["side"], price=ORDER_ROW["price"], qty=ORDER_ROW["qty"]))
                session.commit()
            return n / (time.perf_counter() - t0)
    finally:
        engine.dispose()


def _rate(x: float | None) -> str:
    return common.rate(x, "not installed")


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__, "a few seconds: fewer steps and events")
    ap.add_argument("--steps", type=int, help="timed steps, and one-intent calls (default 2000; --quick 200)")
    ap.add_argument("--events", type=int, help="journal rows per writer (default 20000; --quick 2000)")
    args = common.defaults(ap.parse_args(argv), [("steps", 2000, 200), ("events", 20000, 2000)])
    info = common.machine("sqlalchemy")
    folder = tempfile.mkdtemp(prefix="tickpipe-bench-exec-")
    try:
        print(f"  steps of {N_SYMBOLS} signals ...", file=sys.stderr, flush=True)
        steps = bench_steps(os.path.join(folder, "steps"), args.steps, max(10, args.steps // 10))
        print("  the same, the garbage collector inside the steps ...", file=sys.stderr, flush=True)
        inside = bench_steps(os.path.join(folder, "inside"), args.steps, max(10, args.steps // 10), between=False)
        print("  one intent at a time ...", file=sys.stderr, flush=True)
        one = bench_one(os.path.join(folder, "one"), args.steps)
        print(f"  journal, {args.events} rows per writer ...", file=sys.stderr, flush=True)
        writers = {"ours (commit per 64)": journal_ours(folder, args.events, False),
                   "ours (durable per 64)": journal_ours(folder, args.events, True),
                   "sqlite autocommit per row": journal_sqlite_autocommit(folder, args.events),
                   "sqlalchemy orm commit per row": journal_sqlalchemy(folder, args.events)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load = common.finish(info)
    ours = writers["ours (commit per 64)"]
    print(f"steps: {steps['steps']} of {N_SYMBOLS} signals, {steps['intents_per_step']:.0f} intents "
          f"each: p50 {common.ms(steps['p50_ms'])} ms, p99 {common.ms(steps['p99_ms'])} ms; "
          f"{common.rate(steps['intents_per_s'])} intents/s (aim: p99 < 1 ms, >= 50 k/s); "
          f"{steps['fills']} fills")
    print(f"  the garbage collector between steps: {steps['gc_passes_between']} passes, mean "
          f"{steps['gc_pause_mean_ms']:.2f} ms, max {steps['gc_pause_max_ms']:.2f} ms (each delays the next "
          f"step); slowest step {common.ms(steps['max_ms'])} ms; inside the steps instead (CPython's "
          f"default): p50 {common.ms(inside['p50_ms'])} ms, p99 {common.ms(inside['p99_ms'])} ms, slowest "
          f"{common.ms(inside['max_ms'])} ms, {common.rate(inside['intents_per_s'])} intents/s")
    print(f"one intent at a time ({one['calls']} calls): Desk.on_intents p50 {one['on_intents_p50_us']:.0f} us, "
          f"p99 {one['on_intents_p99_us']:.0f} us; idle Desk.on_ticks {one['on_ticks_idle_us']:.1f} us, "
          f"Desk.housekeeping {one['housekeeping_us']:.1f} us")
    rows = [["journal writer", "rows/s", "ours / it"]]
    for name, r in writers.items():
        ratio = "-" if r is None or name == "ours (commit per 64)" else f"{ours / r:.1f}x"
        rows.append([name, _rate(r), ratio])
    print(common.table(rows, "lrr"))
    print(load)
    common.save(args, info, {"steps": steps, "steps_gc_inside": inside, "one_intent": one, "journal_rows_per_s": writers,
                             "journal_ratios": {k: (ours / v if v else None) for k, v in writers.items()
                                                if k != "ours (commit per 64)"}},
                default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
    return 0


if __name__ == "__main__":
    common.run(main)
