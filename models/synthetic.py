"""The default ensemble: trained at first start on the synthetic feed's own market.

`pipeline start` on the default config serves the full ensemble with no network
and no data files. When ``[model] artifacts`` holds no ensemble and ``[model]
bootstrap = "synthetic"``, `bootstrap` generates ``bootstrap_bars`` bars of the
synthetic market (`SyntheticMarket`, the very generator the synthetic feed runs,
with its symbols, start price and tick rate, so the bars have the statistics the
live feed will produce, on a seed of their own so the live run is not the
training history),
trains every configured model on the first symbol's bars with
`models.train.train` (progress bar, walk-forward report) and keeps the result in
the registry; later starts load it.

Artifacts made this way record ``training.data = "synthetic:..."``. If the
indicators change, the next start trains a new version for them; artifacts the
user trained (`pipeline train`) are never replaced: a mismatch with those stays
the model worker's one-line configuration error.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import Config, FeedConfig, feature_names
from shm.records import SIDE_BUY, SIDE_SELL, TICK, TICK_QUOTE, TICK_TRADE

SOURCE = "synthetic"                   # prefix of training.data in bootstrapped artifacts
SEED_OFFSET = 1_000_003                # training history != the live feed's path (same feed seed)
START_MS = 1_767_225_600_000           # 2026-01-01 00:00 UTC: the generated history's first bar
BATCHES_PER_BAR = 10
REGIME_TICKS = 4000     # mean ticks of one symbol between drift regime switches


class SyntheticMarket:
    """Vectorised random market for a fixed set of symbols."""

    def __init__(self, n_symbols: int, start_price: float, seed: int):
        self.rng = np.random.default_rng(seed)
        n = n_symbols
        self.logp = np.log(start_price * self.rng.uniform(0.5, 2.0, n))
        self.var = np.full(n, 1e-8)          # per-tick variance of log returns
        self.omega, self.alpha, self.beta = 2e-10, 0.08, 0.90
        self.drift = np.zeros(n)
        self.trade_seq = 0

    def make(self, k: int, symbol_ids: np.ndarray) -> np.ndarray:
        """k ticks for symbols drawn uniformly from ``symbol_ids`` (registry ids)."""
        rng = self.rng
        n = len(symbol_ids)
        local = rng.integers(0, n, k)
        # regime switch: a symbol picks a new drift every REGIME_TICKS of its ticks on
        # average, whatever the batch size (so generated history matches the live feed)
        flip = rng.random(n) < -np.expm1(-(k / n) / REGIME_TICKS)
        self.drift[flip] = rng.normal(0.0, 5e-6, flip.sum())
        z = rng.standard_normal(k) * np.sqrt(self.var[local]) + self.drift[local]
        # per-symbol cumulative sum of returns within the batch
        order = np.argsort(local, kind="stable")
        ls, zs = local[order], z[order]
        cs = np.cumsum(zs)
        starts = np.r_[0, np.flatnonzero(np.diff(ls)) + 1]
        counts = np.diff(np.r_[starts, k])
        cs -= np.repeat(cs[starts] - zs[starts], counts)
        logp = self.logp[ls] + cs
        ends = starts + counts - 1
        touched = ls[starts]
        self.logp[touched] = logp[ends]
        last_ret = zs[ends]
        self.var[touched] = self.omega + self.alpha * last_ret ** 2 + self.beta * self.var[touched]
        self.var = np.clip(self.var, 1e-10, 1e-4)

        out = np.zeros(k, TICK)
        price = np.empty(k)
        price[order] = np.exp(logp)
        half_spread = price * (0.5e-4 + 5.0 * np.sqrt(self.var[local]))
        is_trade = rng.random(k) < 0.75
        out["symbol_id"] = np.asarray(symbol_ids)[local]
        out["kind"] = np.where(is_trade, TICK_TRADE, TICK_QUOTE)
        out["side"] = np.where(rng.random(k) < 0.5, SIDE_BUY, SIDE_SELL)
        out["bid"] = price - half_spread
        out["ask"] = price + half_spread
        out["price"] = np.where(out["side"] == SIDE_BUY, out["ask"], out["bid"])
        out["size"] = np.round(rng.lognormal(-1.0, 1.0, k), 6)
        out["seq"] = self.trade_seq + np.arange(1, k + 1)
        self.trade_seq += k
        return out


def synthetic_trades(feed: FeedConfig, bar_seconds: float, bars: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(symbol index, bar index, price, size) of every trade of ``feed``'s synthetic
    market over ``bars`` bars, in time order. Tick times are spread evenly at
    ``feed.ticks_per_s`` over all the feed's symbols; the market makes them in
    BATCHES_PER_BAR batches per bar."""
    n = len(feed.symbols)
    market = SyntheticMarket(n, feed.start_price, seed)
    ids = np.arange(n)
    ticks_per_bar = feed.ticks_per_s * bar_seconds
    total = int(round(ticks_per_bar * bars))
    batch = max(1, int(round(ticks_per_bar / BATCHES_PER_BAR)))
    parts: list[tuple[np.ndarray, ...]] = []
    emitted = 0
    while emitted < total:
        k = min(batch, total - emitted)
        t = market.make(k, ids)
        sel = np.flatnonzero(t["kind"] == TICK_TRADE)
        parts.append((t["symbol_id"][sel].astype(np.int64),
                      ((emitted + sel) / ticks_per_bar).astype(np.int64),
                      t["price"][sel], t["size"][sel]))
        emitted += k
    sym, bar, price, size = (np.concatenate(cols) for cols in zip(*parts))
    return sym, bar, price, size


def synthetic_candles(feed: FeedConfig, bar_seconds: float, bars: int, seed: int,
                      symbol: int = 0) -> pa.Table:
    """OHLCV bars of one symbol of ``feed``'s synthetic market, built from its trades
    as the indicator shards build live bars (trades only; a bar without trades is absent)."""
    n = len(feed.symbols)
    if not 0 <= symbol < n:
        raise ValueError(f"symbol index {symbol} outside the feed's {n} symbols")
    sym, bar, price, size = synthetic_trades(feed, bar_seconds, bars, seed)
    mine = sym == symbol
    bar, price, size = bar[mine], price[mine], size[mine]
    first = np.r_[0, np.flatnonzero(np.diff(bar)) + 1]
    last = np.r_[first[1:] - 1, len(bar) - 1]
    return pa.table({
        "timestamp_ms": START_MS + np.round(bar[first] * bar_seconds * 1e3).astype(np.int64),
        "open": price[first], "high": np.maximum.reduceat(price, first),
        "low": np.minimum.reduceat(price, first), "close": price[last],
        "volume": np.add.reduceat(size, first)})


def _synthetic_feed(cfg: Config) -> FeedConfig:
    """The config's first synthetic feed, or the default synthetic feed when it has none."""
    return next((f for f in cfg.feeds if f.kind == "synthetic"), FeedConfig())


def needs_bootstrap(cfg: Config) -> str | None:
    """Why `bootstrap` would train now (a sentence), or None when it would not."""
    from models.registry import ENSEMBLE, ArtifactError, Registry
    m = cfg.model
    if m.kind != "ensemble" or m.bootstrap != SOURCE:
        return None
    registry = Registry(m.artifacts)
    if not registry.versions(ENSEMBLE):
        return f"no trained ensemble in {registry.root}"
    try:
        _, meta = registry.load(ENSEMBLE, verify=False)
    except ArtifactError:
        return None                            # the model worker reports it
    ours = str(meta.get("training", {}).get("data", "")).startswith(SOURCE)
    if ours and list(meta.get("feature_names", [])) != feature_names(cfg):
        return (f"the synthetic ensemble in {registry.root} was trained for other indicators "
                f"({', '.join(meta.get('feature_names', []))})")
    return None


def bootstrap(cfg: Config, progress: bool = True, out=sys.stdout) -> dict | None:
    """Train the ensemble on synthetic history when `needs_bootstrap` says so; the
    training report, or None when nothing was trained."""
    from models.train import format_report, train
    why = needs_bootstrap(cfg)
    if why is None:
        return None
    m = cfg.model
    feed = _synthetic_feed(cfg)
    bar_s = cfg.indicators.bar_seconds
    print(f"{why}: training {', '.join(m.models)} on {m.bootstrap_bars} bars of {bar_s:g} s of the "
          f"synthetic market ({feed.symbols[0]}); done once, kept in {Path(m.artifacts)}", file=out,
          flush=True)
    seed = feed.seed + SEED_OFFSET + m.seed
    table = synthetic_candles(feed, bar_s, m.bootstrap_bars, seed)
    source = f"{SOURCE}:{feed.symbols[0]},seed={seed},bars={m.bootstrap_bars},bar_s={bar_s:g}"
    report = train(table, cfg, m.artifacts, progress=progress, source=source)
    print(format_report(report), file=out, flush=True)
    return report
