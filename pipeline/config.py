"""TOML configuration, validated against typed dataclasses.

The dataclasses below are the schema: their fields are the only keys allowed,
their annotations the types, their defaults the defaults. A typo or a wrong
type is a ConfigError that names the file and the key, never a traceback.
A relative path in a config file is relative to the file's folder (resolve_paths).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError


@dataclass
class PipelineConfig:
    name: str = "default"            # several pipelines may run side by side under different names
    workers: int = 4                 # CPU-bound processes: indicator shards + model workers
    model_workers: int = 0           # 0 = one per four workers, at least one
    run_dir: str = ""                # state file and ipc sockets; "" = $XDG_RUNTIME_DIR/tickpipe or /tmp/tickpipe-<uid>
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 10.0   # no heartbeat for this long: the worker is killed and restarted
    startup_timeout_s: float = 60.0     # time allowed for a worker's first heartbeat
    max_restarts: int = 5               # restarts of one worker within restart_window_s before giving up
    restart_window_s: float = 60.0
    restart_backoff_s: float = 0.5      # doubles with each restart in the window, capped at 10 s
    stop_timeout_s: float = 15.0        # per stage, on a clean stop


@dataclass
class RingsConfig:
    ticks_capacity: int = 65536
    features_capacity: int = 4096
    signals_capacity: int = 4096
    intents_capacity: int = 4096
    orders_capacity: int = 4096
    fills_capacity: int = 4096
    lossless_timeout_s: float = 5.0     # a lossless writer reports backpressure after this long
    execution_spin_us: float = 0.0      # bounded spin of the execution reader before it sleeps


@dataclass
class BusConfig:
    tap_bind: str = ""                  # extra tap endpoint, e.g. "tcp://127.0.0.1:5557"; ipc is always bound
    tap_max_rate: int = 2000            # records per second per stream sent to the tap
    allow_remote: bool = False          # allow binding tcp on interfaces other than loopback
    report_interval_s: float = 1.0
    metrics_bind: str = "127.0.0.1:9464"   # Prometheus /metrics; "" = off


FEED_KINDS = ("synthetic", "replay", "binance", "upbit", "bithumb", "ccxt")
# the channels each venue's feed module subscribes to (workers/venues/: one list, checked here
# at validation so a typo is a config error, not a feed that crashes or never quotes)
FEED_CHANNELS = {"binance": ("trades", "quotes", "depth"), "upbit": ("trades", "quotes"),
                 "bithumb": ("trades", "quotes")}


@dataclass
class FeedConfig:
    name: str = "synthetic"
    kind: str = "synthetic"             # synthetic, a venue (binance, upbit, bithumb), or ccxt (REST polling)
    venue: str = ""                     # name in symbol keys ("BTC/USDT@binance"); "" = the kind
    symbols: list[str] = field(default_factory=lambda: ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"])
    # venue feeds
    ws_url: str = ""                    # "" = the venue's public endpoint; a testnet or 127.0.0.1 in tests
    rest_url: str = ""
    channels: list[str] = field(default_factory=lambda: ["trades", "quotes"])
    ping_interval_s: float = 20.0
    no_message_timeout_s: float = 30.0  # watchdog: reconnect after this long without a message
    reconnect_backoff_s: float = 1.0    # doubles per failed attempt (with jitter) up to the max
    reconnect_backoff_max_s: float = 60.0
    rest_rate_per_s: float = 5.0        # token bucket for REST calls of this feed
    poll_interval_s: float = 1.0        # kind "ccxt": each symbol's trades and book polled this often
    # guards on every tick a venue feed passes on (rejected and counted otherwise)
    max_ahead_s: float = 30.0           # an event time at most this far after its receive time
    price_band: float = 0.5             # a price within x(1 + band) and /(1 + band) of the last one
    max_size: float = 1e12              # base units in one trade
    # synthetic feed
    ticks_per_s: float = 2000.0         # across all symbols of the feed
    max_ticks: int = 0                  # stop producing after this many (0 = unlimited)
    seed: int = 7
    start_price: float = 0.0            # 0 = a plausible price per symbol (BTC/USDT near 60,000)
    # replay feed: candles or trades from a CSV/Parquet file, for the one symbol in `symbols`
    path: str = ""                      # CSV or Parquet file, or a directory of Parquet files
    speed: float = 0.0                  # 0 = as fast as possible, else a multiple of real time
    # play a bar at a time and wait for the pipeline to settle (every ring read) before the
    # next: a live replay then makes exactly the fills `pipeline backtest` makes (speed ignored)
    lockstep: bool = False

    @property
    def venue_name(self) -> str:
        return self.venue or self.kind


@dataclass
class IndicatorsConfig:
    """Each indicator kind lists its parameter sets; several run side by side
    (ema = [12, 26] gives ema_12 and ema_26). An empty list turns a kind off."""
    bar_seconds: float = 1.0
    close_grace_s: float = 0.25         # a bar with no next tick closes this long after its end
    ema: list[int] = field(default_factory=lambda: [12, 26])
    sma: list[int] = field(default_factory=lambda: [20])
    rsi: list[int] = field(default_factory=lambda: [14])
    macd: list[list[int]] = field(default_factory=lambda: [[12, 26, 9]])   # fast, slow, signal
    bbands: list[list[float]] = field(default_factory=lambda: [[20, 2]])  # period, stddevs
    atr: list[int] = field(default_factory=lambda: [14])
    stoch: list[list[int]] = field(default_factory=lambda: [[14, 3, 3]])  # fastk, slowk, slowd
    obv: bool = True
    vwap: list[int] = field(default_factory=lambda: [20])        # rolling, over that many bars
    volatility: list[int] = field(default_factory=lambda: [20])  # std of log returns
    volume_z: list[int] = field(default_factory=lambda: [20])    # z-score of bar volume
    # the desk alert: rolling volatility above alert_volatility together with a
    # volume z-score above alert_volume_z (first volatility and volume_z sets)
    alert_volatility: float = 0.0       # 0 = no alerts
    alert_volume_z: float = 3.0


# indicator kind -> its parameters and the least whole value of each (TA-Lib's ranges;
# None: any positive number), in the order of their columns in a feature row
INDICATOR_PARAMS = {
    "ema": (("period", 1),), "sma": (("period", 1),), "rsi": (("period", 2),),
    "macd": (("fast", 2), ("slow", 2), ("signal", 1)), "bbands": (("period", 2), ("nbdev", None)),
    "atr": (("period", 1),), "stoch": (("fastk", 1), ("slowk", 1), ("slowd", 1)),
    "vwap": (("period", 1),), "volatility": (("period", 2),), "volume_z": (("period", 2),),
}
PARAM_COUNTS = {kind: len(params) for kind, params in INDICATOR_PARAMS.items()}


def check_indicator(kind: str, params: tuple) -> None:
    """A ValueError naming the parameter unless ``params`` are in the indicator's range:
    the one check behind both the config's validation and models/ta.py's constructors."""
    names = INDICATOR_PARAMS.get(kind, ())
    if len(params) != len(names):
        raise ValueError(f"{kind} needs {len(names)} parameters "
                         f"({', '.join(n for n, _ in names)}), got {list(params)}")
    for (key, minimum), value in zip(names, params):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{kind}: {key} must be a number, got {value!r}")
        if minimum is None:
            if not value > 0:
                raise ValueError(f"{kind}: {key} must be > 0, got {value!r}")
        elif int(value) != value or value < minimum:
            raise ValueError(f"{kind}: {key} must be an integer >= {minimum}, got {value!r}")


def indicator_specs(ind: IndicatorsConfig) -> list[tuple[str, tuple]]:
    """(kind, params) of every configured indicator, in a fixed order."""
    specs = []
    for kind in PARAM_COUNTS:
        for p in getattr(ind, kind):
            specs.append((kind, tuple(p) if isinstance(p, list) else (p,)))
    if ind.obv:
        specs.append(("obv", ()))
    return specs


def _param(x) -> str:
    """A parameter in a column name: 2.0 -> "2", 2.5 -> "2.5"."""
    return str(int(x)) if float(x).is_integer() else str(x)


# indicator kind -> the prefixes of its columns (macd, bbands and stoch have several)
_COLUMN_PREFIXES = {"ema": ["ema"], "sma": ["sma"], "rsi": ["rsi"], "atr": ["atr"], "vwap": ["vwap"],
                    "volatility": ["vol"], "volume_z": ["volz"], "obv": ["obv"],
                    "macd": ["macd", "macd_signal", "macd_hist"],
                    "bbands": ["bb_upper", "bb_middle", "bb_lower"]}


def indicator_columns(kind: str, params: tuple) -> list[str]:
    """The column names of one indicator, in the order its kernel (models/ta.py) writes
    them: ``ema_12``, ``macd_signal_12_26_9``, ``bb_upper_20_2``, ``stoch_d_14_3_3``."""
    p = [_param(x) for x in params]
    if kind == "stoch":              # %K names its own two periods only
        return [f"stoch_k_{p[0]}_{p[1]}", f"stoch_d_{'_'.join(p)}"]
    if kind not in _COLUMN_PREFIXES:
        raise ValueError(f"unknown indicator kind '{kind}'")
    suffix = "_".join(p)
    return [f"{prefix}_{suffix}" if suffix else prefix for prefix in _COLUMN_PREFIXES[kind]]


def feature_names(cfg: Config) -> list[str]:
    """The indicator columns of a feature row, in the engine's order: what every stage,
    artifact and model host agrees on (the topology carries them)."""
    return [c for kind, params in indicator_specs(cfg.indicators)
            for c in indicator_columns(kind, params)]


ENSEMBLE_METHODS = ("soft_vote", "stacking")


MODEL_KINDS = ("momentum", "ensemble")
BOOTSTRAP_KINDS = ("synthetic", "")


@dataclass
class ModelConfig:
    # the live model worker: "momentum" (EMA-spread rule) or "ensemble" (the trained
    # models in the registry at ``artifacts``, as `pipeline train --out` wrote it)
    kind: str = "ensemble"
    artifacts: str = "artifacts"        # registry directory for kind = "ensemble" (pipeline train --out)
    # "synthetic": with no ensemble in ``artifacts``, `pipeline start` first trains one on
    # ``bootstrap_bars`` bars of the synthetic market and keeps it; "" = a missing ensemble is an error
    bootstrap: str = "synthetic"
    bootstrap_bars: int = 3000
    # "tcp://HOST:PORT": the model stage runs on `pipeline serve-model` there and the local model
    # workers are bridges to it (CURVE keys from ``remote_keys``, made by `pipeline keys`); "" = local
    remote: str = ""
    remote_keys: str = "keys"
    remote_timeout_s: float = 2.0       # a batch unanswered this long: stage degraded, signals HOLD
    threshold: float = 0.0005           # relative EMA spread that counts as a trend
    # training (`pipeline train`); model names are checked against models/train.py's MODELS
    models: list[str] = field(default_factory=lambda: ["lstm", "forest", "xgboost", "rl"])
    horizon: int = 6                    # bars ahead of the label's future return (also the purge gap)
    label_threshold: float = 0.0        # |return| above this is up/down; 0 = round-trip cost from [execution]
    folds: int = 4                      # walk-forward validation folds
    seed: int = 0                       # every model's random seed
    ensemble: str = "soft_vote"         # soft_vote (weights >= 0 summing to 1) or stacking (logistic regression)
    long_only: bool = False             # report's strategy: up -> long, else flat (default: down -> short too)
    forest_trees: int = 100
    forest_depth: int = 8
    forest_min_leaf: int = 5            # min samples per leaf
    xgb_rounds: int = 300
    xgb_depth: int = 6
    xgb_learning_rate: float = 0.1
    lstm_window: int = 32               # rows of history per LSTM prediction
    lstm_units: int = 32
    lstm_epochs: int = 5


STRATEGY_KINDS = ("signals", "arbitrage")   # arbitrage: the route trader on [[routes]] (issue 14)


@dataclass
class StrategyConfig:
    """The strategy stage: model signals -> intents (workers/strategy/signals.py says
    what each rule is for). Defaults keep a default ensemble from changing position
    every few bars, which fees would eat."""
    kind: str = "signals"
    enter_margin: float = 0.10          # p(up) - p(down) that opens a long (its negative: a short)
    exit_margin: float = 0.02           # a long closes when the margin falls below this
    min_hold_bars: int = 6              # bars a position is held before a signal may close it
    allow_short: bool = False           # spot venues: long or flat only
    notional: float = 100.0             # quote currency per position at the target volatility
    max_notional: float = 1000.0        # never more than this per position
    target_vol: float = 0.002           # per-bar volatility at which the size is `notional`
    min_vol: float = 1e-5               # a volatility below this counts as this (no huge sizes)
    stop_loss: float = 0.0              # close at this fractional move against (0: off)
    take_profit: float = 0.0            # close at this fractional move in favour (0: off)
    entry_order: str = "market"         # "limit": entries rest as limit orders (exits stay market)
    entry_offset_bps: float = 5.0       # a limit entry's price: this much better than the signal's
    entry_ttl_s: float = 300.0          # execution cancels what of a limit entry has not filled by then
    entry_post_only: bool = False       # limit entries as post-only (maker or nothing)
    # arbitrage: a venue's coins this fraction of the asset's funded total off their funding
    # (or coins held net of it: a leg filled alone) raise an alert with a suggested transfer
    imbalance_band: float = 0.2
    # arbitrage, dynamic route selection (workers/strategy/route_select.py): the [[routes]]
    # are the universe; every select_every_s the best max_active_routes by premium over a
    # window of select_window_s may open pairs, the rest only unwind (0 and 0: off)
    max_active_routes: int = 0          # 0: every route the gates pass
    select_every_s: float = 60.0
    select_window_s: float = 300.0
    select_hysteresis_bps: float = 5.0  # an active route's score margin over a challenger
    max_spread_bps: float = 0.0         # gate: the wider book's spread at the touch (0: off)
    min_depth_quote: float = 0.0        # gate: thinnest side's USDT within depth_band_bps (0: off)
    depth_band_bps: float = 10.0
    min_volume_quote: float = 0.0       # gate: USDT traded on the quieter leg in the window (0: off)


def strategy_checks(sc: StrategyConfig) -> list[tuple[bool, str]]:
    """The [strategy] section's rules: (ok, message) pairs, as `validate` takes them."""
    finite = all(math.isfinite(getattr(sc, k)) for k in (
        "enter_margin", "exit_margin", "notional", "max_notional", "target_vol", "min_vol",
        "stop_loss", "take_profit", "entry_offset_bps", "entry_ttl_s", "select_every_s", "select_window_s",
        "select_hysteresis_bps", "max_spread_bps", "min_depth_quote", "depth_band_bps", "min_volume_quote"))
    return [
        (sc.kind in STRATEGY_KINDS,
         f"strategy.kind must be one of {', '.join(STRATEGY_KINDS)}, got '{sc.kind}'"),
        (finite, "strategy: every number must be finite"),
        (0 < sc.enter_margin <= 1, f"strategy.enter_margin must be in (0, 1], got {sc.enter_margin:g}"),
        (-1 <= sc.exit_margin < sc.enter_margin,
         f"strategy.exit_margin ({sc.exit_margin:g}) must be below enter_margin "
         f"({sc.enter_margin:g}): that gap is the hysteresis"),
        (sc.min_hold_bars >= 0, f"strategy.min_hold_bars must be >= 0, got {sc.min_hold_bars}"),
        (0 < sc.notional <= sc.max_notional,
         f"strategy.notional must be > 0 and at most max_notional, got {sc.notional:g} "
         f"and {sc.max_notional:g}"),
        (sc.target_vol > 0 and sc.min_vol > 0, "strategy.target_vol and min_vol must be > 0"),
        (0 <= sc.stop_loss < 1 and sc.take_profit >= 0,
         "strategy.stop_loss must be in [0, 1) and take_profit >= 0 (0: off)"),
        (sc.entry_order in ("market", "limit"),
         f"strategy.entry_order must be 'market' or 'limit', got '{sc.entry_order}'"),
        (-1000 <= sc.entry_offset_bps < 10000,
         f"strategy.entry_offset_bps must be in [-1000, 10000) (negative: through the signal's price), "
         f"got {sc.entry_offset_bps:g}"),
        (sc.entry_ttl_s > 0, f"strategy.entry_ttl_s must be > 0, got {sc.entry_ttl_s:g}"),
        (0 < sc.imbalance_band <= 1, f"strategy.imbalance_band must be in (0, 1], got {sc.imbalance_band:g}"),
        (sc.max_active_routes >= 0, f"strategy.max_active_routes must be >= 0 (0: all), got {sc.max_active_routes}"),
        (sc.select_every_s > 0 and sc.select_window_s >= sc.select_every_s,
         f"strategy.select_every_s must be > 0 and select_window_s at least that, got "
         f"{sc.select_every_s:g} and {sc.select_window_s:g}"),
        (sc.select_hysteresis_bps >= 0 and sc.max_spread_bps >= 0 and sc.min_depth_quote >= 0
         and sc.min_volume_quote >= 0,
         "strategy.select_hysteresis_bps, max_spread_bps, min_depth_quote and min_volume_quote must be "
         ">= 0 (0: off)"),
        (0 < sc.depth_band_bps < 1000, f"strategy.depth_band_bps must be in (0, 1000), got {sc.depth_band_bps:g}"),
    ]


@dataclass
class VenueFees:
    """One venue's fees, in place of [execution] fee_bps and maker_fee_bps for its orders
    (Upbit KRW charges 5 bps either way, Binance spot 10/10 before discounts)."""
    venue: str = ""
    taker_bps: float = 10.0
    maker_bps: float = 2.0              # negative: a rebate


FX_MARKET_MAX_AGE_S = 60.0             # a market rate older than this is stale ...
FX_FILE_MAX_AGE_S = 4 * 86400.0        # ... and a dated file's (daily fixings skip weekends)


@dataclass
class FxSource:
    """How one quote currency converts into the account's ``[execution] currency``: a market
    the pipeline feeds (its mid), a fixed rate, a file of dated rates (backtests), or a URL
    answering JSON, polled every ``poll_s`` (a reference rate, e.g. Dunamu's KRW/USD). A rate is
    units of ``quote`` per one unit of the account currency (KRW per USDT, about 1,380), the way
    FRED's DEXKOUS gives KRW per USD. Several sources of one currency: the first fresh one is
    used, and they must agree within ``[execution] fx_band_bps``."""
    quote: str = ""                     # "KRW"
    symbol: str = ""                    # a symbol of the pipeline, either way round: "USDT/KRW@upbit"
    rate: float = 0.0                   # fixed: never stale
    file: str = ""                      # CSV: a date (or time) column, the rate in `column` or the last
    column: str = ""
    url: str = ""                       # http(s) URL answering JSON with the rate at `field`
    field: str = ""                     # its path: "rates.KRW", "0.basePrice" (a list's first item)
    poll_s: float = 60.0                # one request this often, within the source's rate limit
    max_age_s: float = 0.0              # older is stale (0: 60 s market, 4 days file, 3 polls URL)

    @property
    def kind(self) -> str:
        return ("symbol" if self.symbol else "file" if self.file else "url" if self.url else "rate")

    @property
    def stale_after_s(self) -> float:
        if self.max_age_s:
            return self.max_age_s
        return {"symbol": FX_MARKET_MAX_AGE_S, "file": FX_FILE_MAX_AGE_S,
                "url": 3 * self.poll_s}.get(self.kind, math.inf)


def feed_symbols(cfg: "Config") -> list[str]:
    """Every "SYMBOL@venue" the feeds carry, in feed order, once each: the symbol ids
    (pipeline/symbols.py) are their positions in this list."""
    keys: list[str] = []
    for feed in cfg.feeds:
        for sym in feed.symbols:
            key = f"{sym}@{feed.venue_name}"
            if key not in keys:
                keys.append(key)
    return keys


def symbol_parts(key: str) -> tuple[str, str, str]:
    """("BTC", "KRW", "upbit") of "BTC/KRW@upbit"; missing parts are ""."""
    pair, _, venue = key.partition("@")
    base, _, quote = pair.partition("/")
    return base, quote, venue


def account_currency(ec: "ExecutionConfig", symbols: list[str]) -> str:
    """The account's currency: ``[execution] currency``, else the one quote currency of
    ``symbols`` ("" when they have none or several: `currency_problem` says which)."""
    if ec.currency:
        return ec.currency
    quotes = {symbol_parts(k)[1] for k in symbols} - {""}
    return quotes.pop() if len(quotes) == 1 else ""


def currency_problem(ec: "ExecutionConfig", symbols: list[str]) -> str | None:
    """Why the account cannot value ``symbols`` in one currency, or None: money in KRW and
    USDT added up as one figure is the worst kind of wrong number, so a quote currency other
    than the account's needs an [[execution.fx]] source, and each source must be usable."""
    quotes = sorted({symbol_parts(k)[1] for k in symbols} - {""})
    acct = account_currency(ec, symbols)
    if not acct:
        return (f"the symbols are quoted in {', '.join(quotes)}: set [execution] currency (the "
                "account's, e.g. \"USDT\") and an [[execution.fx]] source for each other currency")
    given = {f.quote for f in ec.fx}
    missing = [q for q in quotes if q != acct and q not in given]
    if missing:
        return (f"symbols quoted in {', '.join(missing)} need an [[execution.fx]] source converting "
                f"them into the account currency {acct} (a market such as \"USDT/KRW@upbit\", "
                "a fixed rate or a file of dated rates)")
    for i, f in enumerate(ec.fx):
        where = f"execution.fx[{i}]"
        if not f.quote or f.quote == acct:
            return f"{where}.quote must name a currency other than the account's {acct}, got {f.quote!r}"
        if sum((bool(f.symbol), f.rate != 0, bool(f.file), bool(f.url))) != 1:
            return f"{where} needs exactly one of symbol, rate, file or url"
        if f.url and not (f.url.startswith(("http://", "https://")) and f.field):
            return f"{where}: url must be http(s)://... and field the rate's path in its JSON, got {f.url!r}"
        if f.url and not (math.isfinite(f.poll_s) and f.poll_s >= 1):
            return f"{where}.poll_s must be at least 1 (a rate limit is a rate limit), got {f.poll_s!r}"
        if f.rate and not (math.isfinite(f.rate) and f.rate > 0):
            return f"{where}.rate must be a finite number > 0 ({f.quote} per {acct}), got {f.rate!r}"
        if not (f.max_age_s >= 0 and math.isfinite(f.max_age_s)):
            return f"{where}.max_age_s must be a finite number >= 0, got {f.max_age_s!r}"
        if f.symbol:
            base, quote, venue = symbol_parts(f.symbol)
            if not venue or f.symbol not in symbols:
                return (f"{where}.symbol '{f.symbol}' must be one of the pipeline's symbols, "
                        f"SYMBOL@venue (known: {', '.join(symbols)})")
            if {base, quote} != {acct, f.quote}:
                return f"{where}.symbol '{f.symbol}' does not trade {f.quote} against {acct}"
        if f.file and not Path(f.file).expanduser().is_file():
            return f"{where}.file '{f.file}' is not a file"
    return None


@dataclass
class ExecutionConfig:
    mode: str = "paper"
    # the account's currency: capital, equity, P&L totals and the risk limits' money figures
    # are in it. "" = the symbols' one quote currency; symbols in others need [[execution.fx]]
    currency: str = ""
    fx: list[FxSource] = field(default_factory=list)
    fx_band_bps: float = 150.0          # two fresh sources of one currency further apart: stale
    # a route's leg filled without its partner ([[routes]]): re-hedged at most this far
    # through the touch; past the time limit the route goes REDUCING with an alert
    hedge_band_bps: float = 20.0
    hedge_timeout_s: float = 30.0
    # the journal (SQLite): every intent, verdict, order event, fill, position and risk
    # state; everything rebuilt from it at start. "" = <journal_dir>/<pipeline name>.sqlite
    journal: str = ""
    journal_dir: str = "journal"        # $TICKPIPE_JOURNAL_DIR, when set, replaces it
    capital: float = 10_000.0           # the paper account's equity (account currency) at its first start
    fee_bps: float = 10.0               # taker fee, every venue
    maker_fee_bps: float = 2.0          # maker fee (a resting limit order filled); negative: a rebate
    # [[execution.venue_fees]] venue = "upbit", taker_bps = 5.0, maker_bps = 5.0: per venue,
    # in place of the two above for that venue's orders
    venue_fees: list[VenueFees] = field(default_factory=list)
    slippage_bps: float = 2.0           # a market order beyond a top of book with no size known
    # and beyond that, by the order's size: impact_coef x volatility x sqrt(qty / volume traded),
    # both per second over impact_window_s (workers/execution/impact.py); 0: off
    impact_coef: float = 0.0
    impact_window_s: float = 3600.0
    ack_latency_ms: float = 0.0         # paper venue: submit -> ack (the order meets the book then)
    fill_latency_ms: float = 0.0        # paper venue: a match -> its report reaching us
    latency_jitter_ms: float = 0.0      # added to both, uniform in [0, this], deterministic per order
    # fetch each venue feed's tick, lot and notional rules (binance, upbit) at start and
    # hold its orders until they are in; false: paper orders skip the venues' rules
    venue_rules: bool = True


RISK_STATES = ("reducing", "halted")


@dataclass
class RiskConfig:
    """The four-tier risk guard's limits (workers/execution/risk.py says what each tier
    does). Money figures are notionals in the account currency ([execution] currency); 0 turns off the two checks
    that say so."""
    max_daily_loss_frac: float = 0.03      # loss since the UTC day's start, of day-start equity
    daily_loss_state: str = "halted"       # a blown day stops everything until the next UTC day
    max_drawdown_frac: float = 0.10        # fall from the equity peak, of the peak
    drawdown_state: str = "reducing"       # unwinding stays possible, until `pipeline resume`
    max_gross_exposure: float = 10_000.0   # sum over symbols of |position| x mark
    max_venue_exposure: float = 10_000.0   # the same over one venue's symbols
    max_open_orders: int = 50              # resting orders per venue
    max_orders_per_s: float = 10.0         # order rate per venue (token bucket refill)
    order_burst: int = 20                  # token bucket size per venue
    max_feed_silence_s: float = 10.0       # a venue feed silent longer: venue REDUCING
    max_route_imbalance: float = 5_000.0   # |net notional| over a route's legs
    max_open_legs: int = 4                 # legs of a route holding a position
    max_position_notional: float = 2_000.0   # |position| x mark per symbol
    max_order_notional: float = 2_000.0    # qty x price per order (fat-finger guard)
    max_spread_bps: float = 50.0           # market orders need a two-sided quote this tight (0: off)
    price_band_bps: float = 200.0          # order price vs the last trade
    max_quote_age_s: float = 5.0           # an older quote: symbol REDUCING (0: off)
    max_intent_age_s: float = 10.0         # an older intent (from its tick), or one from a stale
    #                                        model stage, may only reduce a position


def risk_checks(rc: RiskConfig) -> list[tuple[bool, str]]:
    """The [risk] section's rules: (ok, message) pairs, as `validate` takes them."""
    out = []
    for f in dataclasses.fields(rc):
        v = getattr(rc, f.name)
        if f.name.endswith("_state"):
            out.append((isinstance(v, str) and v.lower() in RISK_STATES,
                        f"risk.{f.name} must be one of {', '.join(RISK_STATES)}, got {v!r}"))
            continue
        off_ok = f.name in ("max_spread_bps", "max_quote_age_s")
        ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
              and (v > 0 or (off_ok and v == 0)))
        out.append((ok, f"risk.{f.name} must be a finite number > 0{' (0: off)' if off_ok else ''}, "
                        f"got {v!r}"))
    return out


def check_risk(rc: RiskConfig) -> None:
    """A ValueError for the first broken rule: for a RiskConfig built in code."""
    for ok, msg in risk_checks(rc):
        if not ok:
            raise ValueError(msg)


@dataclass
class RouteConfig:
    """One arbitrage route: one asset on two venues (issue 14), e.g. BTC on Upbit in KRW
    against Binance in USDT. The risk guard's route tier holds its legs together; a leg
    that fills without its partner is a hedge obligation, re-hedged on ``hedge_leg``."""
    legs: list[str] = field(default_factory=list)   # ["BTC/KRW@upbit", "BTC/USDT@binance"]
    hedge_leg: str = ""                  # where re-hedges go ("": the second leg, the deeper venue)
    qty: float = 0.0                     # base quantity per pair
    entry_bps: float = 30.0              # edge over the premium's rolling mean that opens
    exit_bps: float = -5.0               # edge that unwinds what a route holds
    band_bps: float = 5.0                # how far past the walked level an IOC leg's limit goes
    window: int = 600                    # book updates in the premium's rolling mean

    @property
    def name(self) -> str:
        return " / ".join(self.legs)

    @property
    def hedge(self) -> str:
        return self.hedge_leg or (self.legs[-1] if self.legs else "")


def route_checks(routes: list[RouteConfig], symbols: list[str]) -> list[tuple[bool, str]]:
    """The [[routes]] tables' rules: legs the pipeline feeds, of one asset on two venues,
    each symbol on one route at most."""
    out, seen = [], set()
    for i, r in enumerate(routes):
        where = f"routes[{i}]"
        if len(r.legs) != 2:
            out.append((False, f"{where}.legs must name two symbols, e.g. [\"BTC/KRW@upbit\", "
                               f"\"BTC/USDT@binance\"], got {r.legs}"))
            continue
        parts = [symbol_parts(k) for k in r.legs]
        out += [(all(k in symbols for k in r.legs),
                 f"{where}.legs {r.legs} must be symbols the feeds carry, SYMBOL@venue (known: "
                 f"{', '.join(symbols)})"),
                (parts[0][0] == parts[1][0] and parts[0][2] != parts[1][2],
                 f"{where}.legs {r.legs} must be one asset on two venues"),
                (not (set(r.legs) & seen), f"{where}: a symbol of {r.legs} is on another route already"),
                (r.hedge in r.legs, f"{where}.hedge_leg '{r.hedge_leg}' must be one of its legs"),
                (math.isfinite(r.qty) and r.qty > 0, f"{where}.qty must be a number > 0, got {r.qty!r}"),
                (math.isfinite(r.entry_bps) and math.isfinite(r.exit_bps) and r.exit_bps <= r.entry_bps,
                 f"{where}.exit_bps ({r.exit_bps:g}) must be at most entry_bps ({r.entry_bps:g})"),
                (0 <= r.band_bps < 1000, f"{where}.band_bps must be in [0, 1000), got {r.band_bps:g}"),
                (r.window >= 1, f"{where}.window must be >= 1, got {r.window}")]
        seen |= set(r.legs)
    return out


def arbitrage_checks(cfg: "Config") -> list[tuple[bool, str]]:
    """``[strategy] kind = "arbitrage"``: the route trader needs routes, each of one leg in
    KRW and one in USDT, and the account's money in one of those two."""
    out = [(bool(cfg.routes), 'strategy.kind = "arbitrage" needs at least one [[routes]] table')]
    for i, r in enumerate(cfg.routes):
        quotes = sorted(symbol_parts(k)[1] for k in r.legs)
        out.append((quotes == ["KRW", "USDT"], f"routes[{i}]: the route trader needs one leg in KRW "
                                               f"and one in USDT, got {r.legs}"))
    cur = account_currency(cfg.execution, feed_symbols(cfg))
    out.append((cur in ("KRW", "USDT"), f'strategy.kind = "arbitrage" needs [execution] currency '
                                        f'"USDT" or "KRW" (with an [[execution.fx]] rate), got {cur!r}'))
    return out


def route_of(routes: list[RouteConfig], symbols: list[str]) -> list[int]:
    """Per symbol id: the index of its route, -1 for none (the risk guard's ``route_of``)."""
    out = [-1] * len(symbols)
    for i, r in enumerate(routes):
        for k in r.legs:
            if k in symbols:
                out[symbols.index(k)] = i
    return out


@dataclass
class InventoryConfig:
    """Pre-funded holdings of the arbitrage routes on one venue: ``amount`` of ``asset`` (a
    coin, or the venue's quote cash: KRW on Upbit, USDT on Binance). The route trader never
    sells coins or spends cash a venue does not hold; no transfers in the hot path."""
    venue: str = ""
    asset: str = ""
    amount: float = 0.0


@dataclass
class RecorderConfig:
    enabled: bool = False               # a recorder process writes every tick to Parquet
    dir: str = "data"                   # root of DIR/ticks/venue=../symbol=../date=YYYY-MM-DD/
    flush_records: int = 50000          # write a batch when this many ticks are held
    flush_seconds: float = 5.0          # ... or when the last write is this long ago


@dataclass
class Config:
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    rings: RingsConfig = field(default_factory=RingsConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    feeds: list[FeedConfig] = field(default_factory=lambda: [FeedConfig()])
    indicators: IndicatorsConfig = field(default_factory=IndicatorsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    routes: list[RouteConfig] = field(default_factory=list)
    inventory: list[InventoryConfig] = field(default_factory=list)
    source: str = "<defaults>"

    # -- derived --------------------------------------------------------------
    @property
    def n_model_workers(self) -> int:
        return self.pipeline.model_workers or max(1, self.pipeline.workers // 4)

    @property
    def n_shards(self) -> int:
        return self.pipeline.workers - self.n_model_workers

    def journal_path(self) -> Path:
        """The pipeline's journal file: ``[execution] journal``, else
        ``<$TICKPIPE_JOURNAL_DIR or [execution] journal_dir>/<pipeline name>.sqlite``."""
        if self.execution.journal:
            return Path(self.execution.journal).expanduser()
        folder = os.environ.get("TICKPIPE_JOURNAL_DIR") or self.execution.journal_dir
        return Path(folder).expanduser() / f"{self.pipeline.name}.sqlite"

    def run_dir(self) -> Path:
        if self.pipeline.run_dir:
            return Path(self.pipeline.run_dir).expanduser()
        env = os.environ.get("TICKPIPE_RUN_DIR")
        if env:
            return Path(env)
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        return Path(xdg) / "tickpipe" if xdg else Path(f"/tmp/tickpipe-{os.getuid()}")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _check_value(value, tp, where: str):
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, dict) and dataclasses.is_dataclass(item):
            raise ConfigError(f"{where} is a list of tables: write [[{where}]], not [{where}]")
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        return [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__} {value!r}")
        return _build(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{where} must be {_TYPE_NAMES.get(tp, tp.__name__)}, "
                          f"got {type(value).__name__} {value!r}")
    return value


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown key '{where}'{hint}")
        kwargs[key] = _check_value(value, hints[key], where)
    return cls(**kwargs)


def _venue_fee_checks(fees: list[VenueFees]) -> list[tuple[bool, str]]:
    names = [f.venue for f in fees]
    checks = [(len(set(names)) == len(names), f"execution.venue_fees names a venue twice: {names}")]
    for i, f in enumerate(fees):
        where = f"execution.venue_fees[{i}]"
        checks += [(bool(f.venue.strip()), f"{where}.venue must name a venue (binance, upbit, ...)"),
                   (0 <= f.taker_bps < 100, f"{where}.taker_bps must be in [0, 100), got {f.taker_bps:g}"),
                   (abs(f.maker_bps) < 100, f"{where}.maker_bps must be within +-100, got {f.maker_bps:g}")]
    return checks


def fees_of(ec: ExecutionConfig, venue: str) -> tuple[float, float]:
    """(maker, taker) bps of a venue: its [[execution.venue_fees]] entry, else the defaults."""
    for f in ec.venue_fees:
        if f.venue == venue:
            return f.maker_bps, f.taker_bps
    return ec.maker_fee_bps, ec.fee_bps


def validate(cfg: Config) -> None:
    p = cfg.pipeline
    checks = [
        (p.workers >= 2, "pipeline.workers must be at least 2 (one indicator shard and one model worker)"),
        (p.model_workers >= 0, "pipeline.model_workers must be >= 0"),
        (cfg.n_shards >= 1, f"pipeline.model_workers ({cfg.n_model_workers}) leaves no indicator shard "
                            f"among {p.workers} workers"),
        (p.heartbeat_interval_s > 0, "pipeline.heartbeat_interval_s must be > 0"),
        (p.heartbeat_timeout_s > 2 * p.heartbeat_interval_s,
         "pipeline.heartbeat_timeout_s must be more than twice heartbeat_interval_s"),
        (p.max_restarts >= 0, "pipeline.max_restarts must be >= 0"),
        (p.name.replace("-", "").replace("_", "").isalnum(),
         "pipeline.name may only contain letters, digits, '-' and '_'"),
        (len(cfg.feeds) >= 1, "at least one [[feeds]] table is needed"),
        (cfg.execution.mode in ("paper",),
         "execution.mode must be 'paper' (live trading needs an explicit flag and arrives later)"),
        (cfg.model.kind in MODEL_KINDS,
         f"model.kind must be one of {', '.join(MODEL_KINDS)}, got '{cfg.model.kind}'"),
        (cfg.model.kind != "ensemble" or bool(cfg.model.artifacts.strip()),
         "model.artifacts must name the registry directory (pipeline train --out) when kind = 'ensemble'"),
        (cfg.model.bootstrap in BOOTSTRAP_KINDS,
         f"model.bootstrap must be \"synthetic\" or \"\" (off), got '{cfg.model.bootstrap}'"),
        (cfg.model.bootstrap_bars >= 500, f"model.bootstrap_bars must be >= 500, got {cfg.model.bootstrap_bars}"),
        (not cfg.model.remote or cfg.model.kind == "ensemble",
         "model.remote serves the trained ensemble: it needs model.kind = 'ensemble'"),
        (not cfg.model.remote or cfg.model.remote.startswith("tcp://"),
         f"model.remote must be a tcp://HOST:PORT address, got '{cfg.model.remote}'"),
        (cfg.model.remote_timeout_s > 0, "model.remote_timeout_s must be > 0"),
        # a bridge waits up to twice that (connection, then answer) between heartbeats
        (not cfg.model.remote or 2 * cfg.model.remote_timeout_s < p.heartbeat_timeout_s,
         f"model.remote_timeout_s ({cfg.model.remote_timeout_s:g}) must be under half of "
         f"pipeline.heartbeat_timeout_s ({p.heartbeat_timeout_s:g}), or a waiting bridge looks hung"),
        *_model_checks(cfg.model),
        (cfg.indicators.bar_seconds > 0, "indicators.bar_seconds must be > 0"),
        (len(cfg.indicators.ema) >= 2,
         "indicators.ema needs at least two periods (the momentum model compares the first and last)"),
        *strategy_checks(cfg.strategy),
        *risk_checks(cfg.risk),
        (bool(cfg.execution.journal or cfg.execution.journal_dir),
         "execution.journal_dir must name a folder (or execution.journal a file)"),
        (cfg.execution.capital > 0 and math.isfinite(cfg.execution.capital),
         f"execution.capital must be a finite number > 0, got {cfg.execution.capital:g}"),
        (cfg.execution.fee_bps >= 0 and cfg.execution.slippage_bps >= 0,
         "execution.fee_bps and slippage_bps must be >= 0"),
        (0 <= cfg.execution.impact_coef < 100 and cfg.execution.impact_window_s > 0,
         f"execution.impact_coef must be in [0, 100) and impact_window_s > 0, got "
         f"{cfg.execution.impact_coef:g} and {cfg.execution.impact_window_s:g}"),
        (abs(cfg.execution.maker_fee_bps) < 100, "execution.maker_fee_bps must be within +-100"),
        *_venue_fee_checks(cfg.execution.venue_fees),
        (cfg.execution.fx_band_bps > 0, f"execution.fx_band_bps must be > 0, got {cfg.execution.fx_band_bps:g}"),
        (0 < cfg.execution.hedge_band_bps < 1000 and cfg.execution.hedge_timeout_s > 0,
         "execution.hedge_band_bps must be in (0, 1000) and hedge_timeout_s > 0"),
        (min(cfg.execution.ack_latency_ms, cfg.execution.fill_latency_ms,
             cfg.execution.latency_jitter_ms) >= 0,
         "execution.ack_latency_ms, fill_latency_ms and latency_jitter_ms must be >= 0"),
        (cfg.bus.tap_max_rate > 0, "bus.tap_max_rate must be > 0"),
        (cfg.recorder.flush_records >= 1, "recorder.flush_records must be >= 1"),
        (cfg.recorder.flush_seconds > 0, "recorder.flush_seconds must be > 0"),
        (not cfg.recorder.enabled or cfg.recorder.dir != "", "recorder.dir must not be empty"),
    ]
    for key in ("ticks_capacity", "features_capacity", "signals_capacity", "intents_capacity",
                "orders_capacity", "fills_capacity"):
        v = getattr(cfg.rings, key)
        checks.append((v >= 16 and v & (v - 1) == 0, f"rings.{key} must be a power of two >= 16, got {v}"))
    names = set()
    for i, f in enumerate(cfg.feeds):
        checks += [
            (f.kind in FEED_KINDS, f"feeds[{i}].kind must be one of {', '.join(FEED_KINDS)}, got '{f.kind}'"),
            (f.ping_interval_s > 0 and f.no_message_timeout_s > 0,
             f"feeds[{i}].ping_interval_s and no_message_timeout_s must be > 0"),
            (0 < f.reconnect_backoff_s <= f.reconnect_backoff_max_s,
             f"feeds[{i}].reconnect_backoff_s must be > 0 and <= reconnect_backoff_max_s"),
            (f.rest_rate_per_s > 0, f"feeds[{i}].rest_rate_per_s must be > 0"),
            (f.poll_interval_s > 0, f"feeds[{i}].poll_interval_s must be > 0"),
            (f.max_ahead_s > 0, f"feeds[{i}].max_ahead_s must be > 0"),
            (f.price_band > 0, f"feeds[{i}].price_band must be > 0"),
            (f.max_size > 0, f"feeds[{i}].max_size must be > 0"),
            (f.kind != "ccxt" or bool(f.venue),
             f"feeds[{i}].venue must name a ccxt exchange (e.g. 'kraken') when kind = 'ccxt'"),
            (len(f.symbols) >= 1, f"feeds[{i}].symbols must not be empty"),
            (f.ticks_per_s > 0, f"feeds[{i}].ticks_per_s must be > 0"),
            (f.max_ticks >= 0, f"feeds[{i}].max_ticks must be >= 0"),
            (f.start_price >= 0, f"feeds[{i}].start_price must be >= 0 (0: a plausible price per symbol)"),
            (f.name not in names, f"feeds[{i}].name '{f.name}' is used twice"),
            (f.kind == "replay" or not f.lockstep, f"feeds[{i}].lockstep is for replay feeds only"),
        ]
        if f.kind == "replay":
            problem = _replay_problem(f)
            checks.append((problem is None, f"feeds[{i}]: {problem}"))
        if f.kind in FEED_CHANNELS:
            supported = FEED_CHANNELS[f.kind]
            checks.append((bool(f.channels) and set(f.channels) <= set(supported),
                           f"feeds[{i}].channels must be some of {', '.join(supported)}, got {f.channels!r}"))
        if f.kind == "ccxt" and f.venue:
            import ccxt                         # (only for a ccxt feed: a heavy import)
            checks.append((f.venue in ccxt.exchanges,
                           f"feeds[{i}].venue '{f.venue}' is not an exchange ccxt knows (e.g. 'kraken', "
                           f"'okx', 'bybit')"))
        names.add(f.name)
    if cfg.bus.metrics_bind:
        host, _, port = cfg.bus.metrics_bind.rpartition(":")
        checks.append((port.isdigit() and 0 < int(port) < 65536 and host != "",
                       f"bus.metrics_bind must be HOST:PORT, got '{cfg.bus.metrics_bind}'"))
        checks.append((host in ("127.0.0.1", "localhost", "::1") or cfg.bus.allow_remote,
                       f"bus.metrics_bind '{cfg.bus.metrics_bind}' listens beyond this host; "
                       "set bus.allow_remote = true to allow it"))
    if cfg.bus.tap_bind:
        ok = cfg.bus.tap_bind.startswith(("tcp://127.", "tcp://localhost:", "ipc://"))
        checks.append((ok or cfg.bus.allow_remote,
                       f"bus.tap_bind '{cfg.bus.tap_bind}' listens beyond this host; "
                       "set bus.allow_remote = true to allow it"))
    problem = currency_problem(cfg.execution, feed_symbols(cfg))
    checks.append((problem is None, problem or ""))
    checks += route_checks(cfg.routes, feed_symbols(cfg))
    if cfg.strategy.kind == "arbitrage":
        checks += arbitrage_checks(cfg)
    for i, inv in enumerate(cfg.inventory):
        checks.append((bool(inv.venue) and bool(inv.asset) and math.isfinite(inv.amount) and inv.amount >= 0,
                       f"inventory[{i}] needs a venue, an asset and an amount >= 0, got {inv}"))
    ind = cfg.indicators
    for kind in PARAM_COUNTS:
        for k, p in enumerate(getattr(ind, kind)):
            try:
                check_indicator(kind, tuple(p) if isinstance(p, list) else (p,))
                problem = None
            except ValueError as e:
                problem = str(e)
            checks.append((problem is None, f"indicators.{kind}[{k}]: {problem}"))
    for k, p in enumerate(ind.macd):
        if len(p) == 3:
            checks.append((p[0] < p[1], f"indicators.macd[{k}]: fast ({p[0]}) must be below slow ({p[1]})"))
    columns = [c for kind, params in indicator_specs(ind) for c in indicator_columns(kind, params)]
    dup = sorted({c for c in columns if columns.count(c) > 1})
    checks.append((not dup, f"indicators: columns configured twice: {', '.join(dup)}"))
    checks.append((ind.alert_volatility >= 0, "indicators.alert_volatility must be >= 0 (0 = off)"))
    checks.append((not ind.alert_volatility or (ind.volatility and ind.volume_z),
                   "indicators.alert_volatility needs a volatility and a volume_z set"))
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def _model_checks(m: ModelConfig) -> list[tuple[bool, str]]:
    """The training fields; model names are checked by `pipeline train`, which knows the models."""
    dup = sorted({n for n in m.models if m.models.count(n) > 1})
    return [
        (len(m.models) >= 1, "model.models must name at least one model, e.g. [\"forest\", \"xgboost\"]"),
        (not dup, f"model.models lists {', '.join(dup)} twice"),
        (m.horizon >= 1, f"model.horizon must be >= 1 bar, got {m.horizon}"),
        (m.label_threshold >= 0,
         f"model.label_threshold must be >= 0 (0 = the round-trip cost), got {m.label_threshold:g}"),
        (m.folds >= 1, f"model.folds must be >= 1, got {m.folds}"),
        (0 <= m.seed < 2**32, f"model.seed must be in 0 .. 2**32 - 1, got {m.seed}"),
        (m.ensemble in ENSEMBLE_METHODS,
         f"model.ensemble must be one of {', '.join(ENSEMBLE_METHODS)}, got '{m.ensemble}'"),
        (m.forest_trees >= 1, f"model.forest_trees must be >= 1, got {m.forest_trees}"),
        (m.forest_depth >= 1, f"model.forest_depth must be >= 1, got {m.forest_depth}"),
        (m.forest_min_leaf >= 1, f"model.forest_min_leaf must be >= 1, got {m.forest_min_leaf}"),
        (m.xgb_rounds >= 1, f"model.xgb_rounds must be >= 1, got {m.xgb_rounds}"),
        (m.xgb_depth >= 1, f"model.xgb_depth must be >= 1, got {m.xgb_depth}"),
        (m.lstm_window >= 2, f"model.lstm_window must be >= 2, got {m.lstm_window}"),
        (m.lstm_units >= 1 and m.lstm_epochs >= 1,
         "model.lstm_units and model.lstm_epochs must be >= 1"),
        (0 < m.xgb_learning_rate <= 1,
         f"model.xgb_learning_rate must be in (0, 1], got {m.xgb_learning_rate:g}"),
    ]


def _replay_problem(f: FeedConfig) -> str | None:
    """What is wrong with a replay feed's settings or file, or None."""
    if f.speed < 0:
        return f"speed must be >= 0 (0 = as fast as possible), got {f.speed:g}"
    if f.lockstep and f.speed:
        return "lockstep plays as fast as the pipeline settles: leave speed at 0"
    if len(f.symbols) != 1:
        return "a replay feed plays one symbol: set symbols to the file's, e.g. [\"BTC/USDT\"]"
    if not f.path:
        return "path is needed for a replay feed (a CSV or Parquet file of candles or trades)"
    if not Path(f.path).expanduser().exists():
        return f"path '{f.path}' does not exist"
    from .storage import detect_kind, market_columns
    try:
        detect_kind(market_columns(f.path))
    except Exception as e:  # unreadable, or columns of neither kind: say which, in one line
        return f"path '{f.path}': {e}"
    return None


# The fields that name a file or folder, (section, key); and feeds[].path. A relative one
# in a config file is relative to that file's folder (resolve_paths), whoever runs it from
# where; the ones a file leaves out take their built-in default, resolved the same way.
PATH_FIELDS = (("pipeline", "run_dir"), ("model", "artifacts"), ("model", "remote_keys"),
               ("execution", "journal"), ("execution", "journal_dir"), ("recorder", "dir"))


def resolve_paths(cfg: Config, folder: str | Path) -> None:
    """Make every relative path field of ``cfg`` (PATH_FIELDS, feeds[].path) relative to
    ``folder`` instead: absolute from there when ``folder`` is. Absolute paths, ``~`` paths
    and "" (unset) are left as they are. The one place config paths are resolved."""
    def resolve(value: str) -> str:
        if not value or value.startswith("~") or Path(value).is_absolute():
            return value
        return os.path.normpath(os.path.join(folder, value))
    for section, key in PATH_FIELDS:
        part = getattr(cfg, section)
        setattr(part, key, resolve(getattr(part, key)))
    for feed in cfg.feeds:
        feed.path = resolve(feed.path)
    for fx in cfg.execution.fx:
        fx.file = resolve(fx.file)


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a TOML file; None gives the built-in defaults (their relative
    paths relative to the working directory). A file's relative paths, and the built-in
    defaults of those it leaves out, are made absolute against the file's folder."""
    if path is None:
        cfg = Config()
        validate(cfg)
        return cfg
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; give the config file (a .toml)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        cfg = _build(Config, data, "")
        resolve_paths(cfg, os.path.abspath(path.parent))
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    cfg.source = str(path.absolute())   # commands run from elsewhere reload it from here
    return cfg
