"""Benchmark: `pipeline backtest` (pipeline/backtest.py) against other backtest
engines on the same candles and the same strategy, every engine measured in the
same run (issue 13, "Speed").

The strategy
    An EMA crossover, long or flat: long while EMA fast > EMA slow (12 and 26 by
    default, on the closes), flat otherwise; decided on a bar's close, filled at
    the next bar's open; 10 bps taker fee and 2 bps slippage a side; each entry
    buys ``notional`` (1,000 USDT) worth at the deciding bar's close, out of a
    10,000 USDT account. One symbol: BTC/USDT 5m, the 119,784-bar file in
    ../shared/data/candles (samples/binance_BTC-USDT_5m.csv, 4,032 bars, when it
    is absent, and the report says so).

The engines
    ours        the live chain of `pipeline backtest` (replay ticks, bar builder,
                indicator engine, model serving, strategy, desk with its risk
                guard, paper broker, portfolio and SQLite journal) on a simulated
                clock, event by event (every bar decided by the strategy; the desk
                shown a quiet stretch at once when it must act, which changes
                nothing: pipeline/backtest.py says why), with a config that makes it an EMA
                crossover: ``[model] kind = "momentum"`` with ``threshold = 1e-9``
                (p(up) - p(down) is +-1 as soon as the EMAs differ),
                ``[strategy] enter_margin = 0.5, exit_margin = 0, min_hold_bars =
                0, notional = max_notional``, only the two EMAs in [indicators]
                (no volatility column: every position is ``notional``), risk
                limits that never bind, ``[execution] venue_rules = false``.
                Timed: the event loop (``result.meta["seconds"]``); reading the
                file into ticks and opening the journal are "setup".
    vectorbt    ``Portfolio.from_signals`` on its own ``MA.run(ewm=True)``:
                vectorised (whole arrays at once), not a bar-by-bar simulation.
                The signals are shifted a bar and filled at ``price=open``.
    backtesting backtesting.py's event loop (``FractionalBacktest``, so that a
                position can be 0.01 BTC), EMAs by TA-Lib (as its docs do; the
                pandas EWM where TA-Lib is absent), ``commission=0.001``,
                fills at the next open; ``commission=0.0012``: its ``spread=`` moves
                the price of entries only, so the 2 bps slippage a side is charged
                as commission (the same cost to first order, not the same price).
    nautilus    NautilusTrader's ``BacktestEngine``, bar data, a long-or-flat EMA
                cross strategy written like its ``examples.strategies.ema_cross``
                (which reverses long/short), with its own EMA indicators. What it
                cannot do the same way: its market orders fill at the price the
                matching engine holds when the strategy acts, the deciding bar's
                close (not the next open: on this file they differ on about half
                the bars, by 0.13 % at most); and its fill model slips by whole
                ticks only, so the 2 bps slippage is charged as 2 bps more taker
                fee (12 bps): the same cost, not the same fill price.
    jesse       its published 513k candles/s, quoted as a reference: not measured
                here, not the same machine, not the same strategy.

    Every engine first runs once on a few hundred bars (imports, numba and other
    JIT compilation), untimed; then the timed run. A peer that is not installed or
    fails is reported with the reason and no figure.

Agreement
    Each engine's decisions (the bar whose close decided an entry or exit) are
    compared with ours: the number of trades, and the first bar where they
    differ, if any. Ours and backtesting.py both seed the EMAs as TA-Lib does
    (the SMA of the first ``period`` closes); vectorbt's and NautilusTrader's EMA
    start from the first close, so the EMAs differ at the start and the
    decisions can differ in the first few hundred bars, until that start has
    decayed away (``differences_after_warmup`` counts those after bar 500).

The ensemble
    The default ensemble strategy (default [model], [strategy] and [risk]; only
    bar_seconds = 300, ``venue_rules = false``, and the spread and quote-age
    checks off, as candles carry no quotes) over the same file, inference
    included. The registry is ``--artifacts DIR`` or, when none is given, trained
    now (``models.train.train``) on the first ``--train-bars`` bars of the file
    into a temporary folder: untimed. ``--ensemble-bars N`` runs it on the first
    N bars only and extrapolates the whole file's time from that, said as such.

Usage::

    python bench/backtest.py [--quick] [--bars N] [--json OUT.json] [--out OUT.json]
                             [--skip-ensemble] [--peers vectorbt,backtesting,nautilus]
                             [--artifacts DIR] [--train-bars N] [--ensemble-bars N]
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import common

SAMPLE = common.ROOT / "samples" / "binance_BTC-USDT_5m.csv"
PEERS = ("vectorbt", "backtesting", "nautilus")
PACKAGES = {"vectorbt": "vectorbt", "backtesting": "backtesting", "nautilus": "nautilus_trader"}
FAST, SLOW = 12, 26
CAPITAL = 10_000.0
NOTIONAL = 1_000.0
FEE = 0.001           # 10 bps taker
SLIPPAGE = 0.0002     # 2 bps a side
BAR_S = 300
WARMUP_BARS = 300     # the untimed first run of each engine
SETTLED_BAR = 500     # EMA seeding differences have decayed by here (factor ~ 1e-16 at period 26)
JESSE = {"engine": "jesse (published figure, not measured here)", "bars_per_s": 513_000.0,
         "measured": False,
         "note": "jesse's published 513k candles/s for its bar-by-bar simulation, quoted as issue 13 "
                 "gives it: another machine and another strategy"}


# -- data ------------------------------------------------------------------------
@dataclass
class Bars:
    path: Path                     # a CSV of exactly these bars (ours reads the file)
    ts_ms: np.ndarray              # bar open times
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.close)


def load_bars(source: Path, n: int | None, folder: Path, name: str = "binance_BTC-USDT_5m.csv") -> Bars:
    """The first ``n`` bars of ``source`` (all: None), written to ``folder/name`` (the
    name says venue and symbol, as `pipeline backtest` reads them)."""
    with open(source) as f:
        header = f.readline()
        lines = f.readlines() if n is None else [line for _, line in zip(range(n), f)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(header + "".join(lines))
    a = np.loadtxt(lines, delimiter=",", ndmin=2)
    return Bars(path, a[:, 0].astype(np.int64), *(np.ascontiguousarray(a[:, i]) for i in range(1, 6)))


def decisions(entries, exits) -> list[tuple[int, int]]:
    """(bar, +1 entry / -1 exit), in bar order."""
    return sorted([(int(b), 1) for b in entries] + [(int(b), -1) for b in exits])


# -- ours ------------------------------------------------------------------------
def ours_config():
    from pipeline.config import load_config, validate
    cfg = load_config(None)
    cfg.source = "<bench/backtest.py>"
    ic = cfg.indicators
    ic.bar_seconds = float(BAR_S)
    ic.ema = [FAST, SLOW]
    for kind in ("sma", "rsi", "macd", "bbands", "atr", "stoch", "vwap", "volatility", "volume_z"):
        setattr(ic, kind, [])
    ic.obv = False
    cfg.model.kind = "momentum"
    cfg.model.threshold = 1e-9
    st = cfg.strategy
    st.enter_margin, st.exit_margin, st.min_hold_bars = 0.5, 0.0, 0
    st.notional = st.max_notional = NOTIONAL
    st.allow_short = False
    st.stop_loss = st.take_profit = 0.0
    ex = cfg.execution
    ex.venue_rules = False
    ex.capital = CAPITAL
    ex.fee_bps, ex.slippage_bps = FEE * 1e4, SLIPPAGE * 1e4
    ex.ack_latency_ms = ex.fill_latency_ms = ex.latency_jitter_ms = 0.0
    wide_risk(cfg.risk)
    validate(cfg)
    return cfg


def wide_risk(rc) -> None:
    """Limits that never bind on this run."""
    for key in ("max_gross_exposure", "max_venue_exposure", "max_route_imbalance",
                "max_position_notional", "max_order_notional"):
        setattr(rc, key, 1e12)
    rc.max_daily_loss_frac = rc.max_drawdown_frac = 1e12
    rc.max_orders_per_s, rc.order_burst = 1e9, 10**9
    rc.max_spread_bps = rc.max_quote_age_s = 0.0       # candles carry no quotes
    rc.price_band_bps = 1e9
    rc.max_intent_age_s = 1e9


def result_summary(result, bars: Bars) -> dict:
    """Trades, return and decisions of a BacktestResult: a fill at bar i's open was
    decided on bar i - 1's close."""
    f = result.fills
    idx = (f["ts_ns"] // 1_000_000 - bars.ts_ms[0]) // (BAR_S * 1000) - 1
    buy = f["side"] > 0
    return {"trades": int(buy.sum()), "fills": int(len(f)),
            "final_return": float(result.equity[-1] / result.capital - 1) if len(result.equity) else 0.0,
            "decisions": decisions(idx[buy], idx[~buy]),
            "denials": result.counts.get("denials", {})}


def run_ours(bars: Bars, cfg=None) -> dict:
    from pipeline.backtest import load_data, run_backtest
    cfg = cfg or ours_config()
    t0 = time.perf_counter()
    data = load_data([str(bars.path)])
    t1 = time.perf_counter()
    result = run_backtest(cfg, data)
    wall = time.perf_counter() - t1
    seconds = float(result.meta["seconds"])
    return {"seconds": seconds, "setup_seconds": (t1 - t0) + (wall - seconds),
            "ticks": int(result.meta["ticks"]), **result_summary(result, bars)}


# -- vectorbt --------------------------------------------------------------------
def run_vectorbt(bars: Bars) -> dict:
    import pandas as pd
    import vectorbt as vbt
    t0 = time.perf_counter()
    index = pd.to_datetime(bars.ts_ms, unit="ms", utc=True)
    close, open_ = pd.Series(bars.close, index), pd.Series(bars.open, index)
    t1 = time.perf_counter()
    fast = vbt.MA.run(close, FAST, ewm=True).ma
    slow = vbt.MA.run(close, SLOW, ewm=True).ma
    long = (fast > slow).to_numpy()
    entries = np.r_[False, long[:-1]]          # decided on bar i's close, filled at bar i + 1's open
    exits = np.r_[False, ~long[:-1]]
    size = np.r_[np.nan, NOTIONAL / bars.close[:-1]]
    pf = vbt.Portfolio.from_signals(close, entries, exits, price=open_, size=size, size_type="amount",
                                    fees=FEE, slippage=SLIPPAGE, init_cash=CAPITAL, freq=f"{BAR_S}s")
    ret = float(pf.total_return())
    seconds = time.perf_counter() - t1
    orders = pf.orders.values
    side = orders["side"]                      # 0 buy, 1 sell
    dec = orders["idx"] - 1
    return {"seconds": seconds, "setup_seconds": t1 - t0, "trades": int((side == 0).sum()),
            "final_return": ret, "decisions": decisions(dec[side == 0], dec[side == 1])}


# -- backtesting.py ----------------------------------------------------------------
def run_backtesting(bars: Bars) -> dict:
    import pandas as pd
    from backtesting import Strategy
    from backtesting.lib import FractionalBacktest
    try:
        import talib
        ema, ema_by = talib.EMA, "TA-Lib"
    except ImportError:
        def ema(x, n):
            return pd.Series(x).ewm(span=n, adjust=False, min_periods=n).mean().to_numpy()
        ema_by = "pandas ewm (TA-Lib absent)"
    unit = 1e-8

    class EmaCross(Strategy):
        def init(self):
            self.fast = self.I(ema, self.data.Close, FAST)
            self.slow = self.I(ema, self.data.Close, SLOW)
            self.log = []

        def next(self):
            i = len(self.data) - 1
            if self.fast[-1] > self.slow[-1]:
                if not self.position:
                    # the data is in satoshi (FractionalBacktest): whole units of 1e-8 BTC
                    self.buy(size=max(1, round(NOTIONAL / self.data.Close[-1])))
                    self.log.append((i, 1))
            elif self.position:
                self.position.close()
                self.log.append((i, -1))

    t0 = time.perf_counter()
    df = pd.DataFrame({"Open": bars.open, "High": bars.high, "Low": bars.low, "Close": bars.close,
                       "Volume": bars.volume}, index=pd.to_datetime(bars.ts_ms, unit="ms", utc=True))
    t1 = time.perf_counter()
    import backtesting.backtesting as engine
    progress = engine._tqdm
    # no progress bar on stderr: what backtesting.py runs where tqdm is not installed
    engine._tqdm = lambda seq, **_: seq
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # its spread= moves the price of entries only (a trade.close() fills unmoved): the
        # 2 bps slippage a side is charged as commission instead, on both sides
        bt = FractionalBacktest(df, EmaCross, cash=CAPITAL, commission=FEE + SLIPPAGE, spread=0.0,
                                fractional_unit=unit, finalize_trades=False)
        try:
            stats = bt.run()
        finally:
            engine._tqdm = progress
    seconds = time.perf_counter() - t1
    log = stats["_strategy"].log
    dec = sorted(log)
    return {"seconds": seconds, "setup_seconds": t1 - t0, "trades": sum(1 for _, s in dec if s > 0),
            "final_return": float(stats["Return [%]"]) / 100.0, "decisions": dec,
            "note": f"EMAs by {ema_by}; fills at the next open, 2 bps slippage charged as commission "
                    "(12 bps a side: its spread= moves entries only)"}


# -- NautilusTrader ------------------------------------------------------------------
def _nautilus_strategy():
    """A long-or-flat EMA cross, written as nautilus_trader.examples.strategies.ema_cross
    is (its EMACross reverses between long and short)."""
    from decimal import Decimal

    from nautilus_trader.config import StrategyConfig
    from nautilus_trader.indicators import ExponentialMovingAverage
    from nautilus_trader.model.data import Bar, BarType
    from nautilus_trader.model.enums import OrderSide
    from nautilus_trader.model.identifiers import InstrumentId
    from nautilus_trader.trading.strategy import Strategy

    class LongFlatEMACrossConfig(StrategyConfig, frozen=True):
        instrument_id: InstrumentId
        bar_type: BarType
        notional: Decimal
        first_bar_ns: int
        fast_ema_period: int = FAST
        slow_ema_period: int = SLOW

    class LongFlatEMACross(Strategy):
        def __init__(self, config: LongFlatEMACrossConfig) -> None:
            super().__init__(config)
            self.fast_ema = ExponentialMovingAverage(config.fast_ema_period)
            self.slow_ema = ExponentialMovingAverage(config.slow_ema_period)
            self.log_decisions: list[tuple[int, int]] = []
            self.instrument = None

        def on_start(self) -> None:
            self.instrument = self.cache.instrument(self.config.instrument_id)
            self.register_indicator_for_bars(self.config.bar_type, self.fast_ema)
            self.register_indicator_for_bars(self.config.bar_type, self.slow_ema)
            self.subscribe_bars(self.config.bar_type)

        def on_bar(self, bar: Bar) -> None:
            if not self.indicators_initialized():
                return
            i = (bar.ts_event - self.config.first_bar_ns) // (BAR_S * 1_000_000_000)
            iid = self.config.instrument_id
            if self.fast_ema.value > self.slow_ema.value:
                if self.portfolio.is_flat(iid):
                    qty = self.instrument.make_qty(float(self.config.notional) / bar.close.as_double())
                    self.submit_order(self.order_factory.market(iid, OrderSide.BUY, qty))
                    self.log_decisions.append((i, 1))
            elif self.portfolio.is_net_long(iid):
                self.close_all_positions(iid)
                self.log_decisions.append((i, -1))

        def on_stop(self) -> None:
            pass

    return LongFlatEMACross, LongFlatEMACrossConfig


def run_nautilus(bars: Bars) -> dict:
    from decimal import Decimal

    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.config import LoggingConfig
    from nautilus_trader.model.currencies import BTC, USDT
    from nautilus_trader.model.data import Bar, BarType
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.identifiers import Venue
    from nautilus_trader.model.instruments import CurrencyPair
    from nautilus_trader.model.objects import Money
    from nautilus_trader.test_kit.providers import TestInstrumentProvider

    t0 = time.perf_counter()
    spec = CurrencyPair.to_dict(TestInstrumentProvider.btcusdt_binance())
    # its fill model slips by whole ticks only: the 2 bps slippage is charged as fee
    spec["taker_fee"] = spec["maker_fee"] = str(Decimal(str(FEE)) + Decimal(str(SLIPPAGE)))
    spec["min_notional"] = None
    instrument = CurrencyPair.from_dict(spec)
    bar_type = BarType.from_str(f"{instrument.id}-5-MINUTE-LAST-EXTERNAL")
    # nautilus stamps a bar at its close. Bars built from the raw arrays, as its
    # BarDataWrangler does (which fails on pandas 3's read-only DataFrame buffers)
    close_ns = ((bars.ts_ms + BAR_S * 1000) * 1_000_000).astype(np.uint64)
    data = Bar.from_raw_arrays_to_list(bar_type, instrument.price_precision, instrument.size_precision,
                                       *(np.array(x, np.float64) for x in (bars.open, bars.high, bars.low,
                                                                           bars.close, bars.volume)),
                                       close_ns, close_ns.copy())
    engine = BacktestEngine(BacktestEngineConfig(
        trader_id="BENCH-001", logging=LoggingConfig(log_level="ERROR", bypass_logging=True)))
    venue = Venue("BINANCE")
    engine.add_venue(venue=venue, oms_type=OmsType.NETTING, account_type=AccountType.CASH,
                     starting_balances=[Money(CAPITAL, USDT), Money(0, BTC)])
    engine.add_instrument(instrument)
    engine.add_data(data)
    Strat, Config = _nautilus_strategy()
    strategy = Strat(Config(instrument_id=instrument.id, bar_type=bar_type, notional=Decimal(str(NOTIONAL)),
                            first_bar_ns=int(close_ns[0])))
    engine.add_strategy(strategy)
    t1 = time.perf_counter()
    try:
        engine.run()
        seconds = time.perf_counter() - t1
        account = engine.cache.account_for_venue(venue)
        usdt = account.balance_total(USDT).as_double()
        btc = account.balance_total(BTC)
        held = btc.as_double() if btc is not None else 0.0
        equity = usdt + held * float(bars.close[-1])
        dec = sorted(strategy.log_decisions)
    finally:
        engine.dispose()
    return {"seconds": seconds, "setup_seconds": t1 - t0, "trades": sum(1 for _, s in dec if s > 0),
            "final_return": equity / CAPITAL - 1, "decisions": dec,
            "note": "fills at the deciding bar's close; 2 bps slippage charged as fee (12 bps taker)"}


RUNNERS = {"ours": run_ours, "vectorbt": run_vectorbt, "backtesting": run_backtesting,
           "nautilus": run_nautilus}
KINDS = {"ours": "event-driven: replay ticks through the live chain",
         "vectorbt": "vectorised (whole arrays, not bar by bar)",
         "backtesting": "event-driven (bar by bar)", "nautilus": "event-driven (bar by bar)"}


def measure(name: str, bars: Bars, warm: Bars) -> dict:
    """One engine: a warm-up run on ``warm`` (untimed), then the timed run on ``bars``.
    A missing package or a failure is a row with the reason and no figure."""
    out = {"engine": name, "kind": KINDS[name], "measured": True}
    if name != "ours":
        from importlib.metadata import PackageNotFoundError, version
        try:
            out["version"] = version(PACKAGES[name])
        except PackageNotFoundError:
            return {**out, "measured": False, "skipped": f"{PACKAGES[name]} is not installed "
                    "(pip install -e '.[bench]')"}
    print(f"  {name}: warm-up on {len(warm)} bars, then {len(bars)} bars ...", file=sys.stderr, flush=True)
    try:
        RUNNERS[name](warm)
        r = RUNNERS[name](bars)
    except Exception as e:              # a peer that fails is reported, never given a figure
        if name == "ours":
            raise
        return {**out, "measured": False, "skipped": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=4)}
    r["bars"] = len(bars)
    r["bars_per_s"] = len(bars) / r["seconds"] if r["seconds"] > 0 else None
    return {**out, **r}


def agreement(ours: list, theirs: list) -> dict:
    """Decision lists compared: equal trade counts, the first bar where they differ, and
    how many decisions differ after the EMA seeding has decayed."""
    a, b = set(ours), set(theirs)
    diff = sorted(a ^ b)
    first = None
    for x, y in zip(ours, theirs):
        if x != y:
            first = min(x[0], y[0])
            break
    if first is None and len(ours) != len(theirs):
        first = (ours if len(ours) > len(theirs) else theirs)[min(len(ours), len(theirs))][0]
    return {"trades_ours": sum(1 for _, s in ours if s > 0), "trades_theirs": sum(1 for _, s in theirs if s > 0),
            "decisions_ours": len(ours), "decisions_theirs": len(theirs),
            "identical": ours == theirs, "first_differing_bar": first,
            "differences": len(diff), "differences_after_warmup": sum(1 for d in diff if d[0] >= SETTLED_BAR),
            "first_differences": [list(d) for d in diff[:6]]}


# -- the ensemble ------------------------------------------------------------------
def ensemble_config(artifacts: Path):
    from pipeline.config import load_config, validate
    cfg = load_config(None)
    cfg.source = "<bench/backtest.py ensemble>"
    cfg.indicators.bar_seconds = float(BAR_S)
    cfg.model.kind = "ensemble"
    cfg.model.artifacts = str(artifacts)
    cfg.model.bootstrap = ""
    cfg.execution.venue_rules = False
    cfg.risk.max_spread_bps = cfg.risk.max_quote_age_s = 0.0      # candles carry no quotes
    validate(cfg)
    return cfg


def run_ensemble(args, source: Path, folder: Path, full_bars: int) -> dict:
    from pipeline.backtest import load_data, run_backtest
    out: dict = {"measured": True}
    artifacts = args.artifacts
    if artifacts is None:
        artifacts = folder / "artifacts"
        from models.train import train
        tb = load_bars(source, args.train_bars, folder / "train")
        cfg = ensemble_config(artifacts)
        print(f"  ensemble: training the default models ({', '.join(cfg.model.models)}) on the first "
              f"{len(tb)} bars (untimed) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        train(str(tb.path), cfg, artifacts, progress=False)
        out["train_seconds"] = round(time.perf_counter() - t0, 1)
        out["trained_on_bars"] = len(tb)
    out["artifacts"] = str(artifacts)
    out["artifacts_given"] = args.artifacts is not None
    cfg = ensemble_config(Path(artifacts))
    n = args.ensemble_bars
    eb = load_bars(source, n, folder / "ensemble")
    print(f"  ensemble: backtest over {len(eb)} bars ...", file=sys.stderr, flush=True)
    data = load_data([str(eb.path)])
    result = run_backtest(cfg, data)
    seconds = float(result.meta["seconds"])
    s = result_summary(result, eb)
    out.update({"bars": len(eb), "seconds": round(seconds, 2),
                "bars_per_s": len(eb) / seconds if seconds > 0 else None,
                "trades": s["trades"], "final_return": s["final_return"], "denials": s["denials"],
                "model_versions": result.meta.get("model_versions"),
                "strategy": {k: getattr(cfg.strategy, k) for k in ("enter_margin", "exit_margin",
                                                                   "min_hold_bars", "allow_short")},
                "aim_seconds": 60.0})
    if len(eb) < full_bars:
        out["extrapolated_seconds_for_full_file"] = round(seconds * full_bars / len(eb), 1)
        out["extrapolated_from"] = f"{len(eb)} of {full_bars} bars, linearly"
    whole = out.get("extrapolated_seconds_for_full_file", seconds)
    out["aim_met"] = whole < 60.0
    return out


# -- main ------------------------------------------------------------------------
def fmt_ret(x) -> str:
    return "-" if x is None else f"{100 * x:+.2f} %"


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__, "a few seconds: 2,000 bars, no ensemble", candles=True)
    ap.add_argument("--out", dest="json_out", metavar="PATH", help="same as --json")
    ap.add_argument("--bars", type=int, help="the first N bars of the file (default: all; --quick 2000)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated, from {','.join(PEERS)} ('' for none)")
    ap.add_argument("--skip-ensemble", action="store_true", help="no ensemble run (and no training)")
    ap.add_argument("--artifacts", type=Path, help="an ensemble registry trained on 5m bars "
                                                   "(default: train one now, untimed)")
    ap.add_argument("--train-bars", type=int, default=10_000,
                    help="bars the ensemble is trained on when no --artifacts (default 10000)")
    ap.add_argument("--ensemble-bars", type=int,
                    help="the ensemble runs over the first N bars and extrapolates (default: --bars)")
    args = ap.parse_args(argv)
    args.json = args.json or args.json_out
    if args.bars is None and args.quick:
        args.bars = 2000
    if args.quick:
        args.skip_ensemble = True
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"--peers: unknown {', '.join(unknown)} (from {', '.join(PEERS)})")
    source, data_note = args.data, None
    if not source.exists():
        data_note = f"{source} is absent: using {SAMPLE} instead"
        print(f"  note: {data_note}", file=sys.stderr)
        source = SAMPLE
    with open(source) as f:
        full_bars = sum(1 for _ in f) - 1
    if args.ensemble_bars is None:
        args.ensemble_bars = args.bars
    info = common.machine(*PACKAGES.values())

    with tempfile.TemporaryDirectory(prefix="tickpipe-bench-backtest-") as tmp:
        folder = Path(tmp)
        bars = load_bars(source, args.bars, folder / "run")
        warm = load_bars(source, min(WARMUP_BARS, len(bars)), folder / "warm")
        rows = [measure("ours", bars, warm)]
        for p in peers:
            rows.append(measure(p, bars, warm))
        ensemble = None
        if not args.skip_ensemble:
            try:
                ensemble = run_ensemble(args, source, folder, full_bars)
            except Exception as e:
                ensemble = {"measured": False, "skipped": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc(limit=6)}
    load = common.finish(info)

    ours = rows[0]
    for r in rows[1:]:
        if r.get("measured"):
            r["ours_over_it"] = ours["bars_per_s"] / r["bars_per_s"]
            r["agreement"] = agreement(ours["decisions"], r["decisions"])
    jesse = {**JESSE, "ours_over_it": ours["bars_per_s"] / JESSE["bars_per_s"]}

    print(f"EMA {FAST}/{SLOW} crossover, long or flat, on {len(bars)} bars of {source.name}"
          + (f" ({data_note})" if data_note else "")
          + f"; {FEE * 1e4:g} bps fee + {SLIPPAGE * 1e4:g} bps slippage a side, {NOTIONAL:g} per entry")
    table = [["engine", "kind", "bars/s", "ours / it", "seconds", "trades", "return", "same decisions as ours"]]
    for r in rows:
        if not r.get("measured"):
            table.append([r["engine"], r["kind"], "-", "-", "-", "-", "-", f"not run: {r['skipped']}"])
            continue
        ag = r.get("agreement")
        same = "-" if ag is None else ("identical" if ag["identical"] else
                                       f"{ag['differences']} differ, first at bar {ag['first_differing_bar']}, "
                                       f"{ag['differences_after_warmup']} after bar {SETTLED_BAR}")
        table.append([r["engine"], r["kind"], f"{r['bars_per_s']:,.0f}",
                      "-" if r is ours else f"{r['ours_over_it']:.3g}x", f"{r['seconds']:.2f}",
                      str(r["trades"]), fmt_ret(r["final_return"]), same])
    table.append([JESSE["engine"], "event-driven (bar by bar)", f"{JESSE['bars_per_s']:,.0f}",
                  f"{jesse['ours_over_it']:.3g}x", "-", "-", "-", "not measured: a quoted figure"])
    print(common.table(table, "llrrrrrl"))
    print(f"ours: event loop only; setup (reading the file into ticks, the journal) "
          f"{ours['setup_seconds']:.2f} s more, {ours['ticks']} ticks")
    for r in rows[1:]:
        if r.get("note"):
            print(f"{r['engine']}: {r['note']}")
    if ensemble is not None:
        if ensemble.get("measured"):
            extra = ""
            if "extrapolated_seconds_for_full_file" in ensemble:
                extra = (f"; extrapolated to the whole file ({full_bars} bars): "
                         f"{ensemble['extrapolated_seconds_for_full_file']:.0f} s (an extrapolation)")
            trained = (f"trained now on {ensemble['trained_on_bars']} bars in {ensemble['train_seconds']:.0f} s, "
                       "untimed" if not ensemble["artifacts_given"] else f"registry {ensemble['artifacts']}")
            print(f"ensemble (default strategy, inference included): {ensemble['bars']} bars in "
                  f"{ensemble['seconds']:.1f} s, {ensemble['bars_per_s']:,.0f} bars/s{extra} (aim: < 60 s, "
                  f"{'met' if ensemble['aim_met'] else 'not met'}); {ensemble['trades']} trades, "
                  f"return {fmt_ret(ensemble['final_return'])}; {trained}")
        else:
            print(f"ensemble: not run: {ensemble['skipped']}")
    print(load)
    for r in rows:
        r.pop("decisions", None)
    common.save(args, info, {"data": str(source), "data_note": data_note, "bars": len(bars),
                             "full_file_bars": full_bars,
                             "strategy": {"fast": FAST, "slow": SLOW, "fee": FEE, "slippage": SLIPPAGE,
                                          "notional": NOTIONAL, "capital": CAPITAL},
                             "results": rows, "reference": jesse, "ensemble": ensemble},
                default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
    return 0


if __name__ == "__main__":
    common.run(main)
