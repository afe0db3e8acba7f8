"""The default ensemble: trained at first start on the synthetic feed's own market.

`pipeline start` on the default config serves the full ensemble with no network
and no data files. When ``[model] artifacts`` holds no ensemble and ``[model]
bootstrap = "synthetic"``, `bootstrap` generates ``bootstrap_bars`` bars of the
synthetic market (workers/feed.SyntheticMarket with the synthetic feed's symbols,
start price and tick rate, so the bars have the statistics the live feed will
produce, on a seed of their own so the live run is not the training history),
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

from pipeline.config import Config, FeedConfig

SOURCE = "synthetic"                   # prefix of training.data in bootstrapped artifacts
SEED_OFFSET = 1_000_003                # training history != the live feed's path (same feed seed)
START_MS = 1_767_225_600_000           # 2026-01-01 00:00 UTC: the generated history's first bar
BATCHES_PER_BAR = 10


def synthetic_trades(feed: FeedConfig, bar_seconds: float, bars: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(symbol index, bar index, price, size) of every trade of ``feed``'s synthetic
    market over ``bars`` bars, in time order. Tick times are spread evenly at
    ``feed.ticks_per_s`` over all the feed's symbols; the market makes them in
    BATCHES_PER_BAR batches per bar."""
    from shm.records import TICK_TRADE
    from workers.feed import SyntheticMarket
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
    from models.registry import ArtifactError, Registry
    from models.train import ENSEMBLE
    from pipeline.topology import feature_names
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
