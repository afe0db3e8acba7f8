"""Feed process: puts ticks into its venue's tick ring.

This module holds the synthetic feed, the no-network default: several symbols
with volatility clustering (a GARCH(1,1)-like variance per symbol), drift
regimes that switch at random, trades and quotes around a spread that widens
with volatility. Ticks are emitted on a wall-clock schedule at ``ticks_per_s``
and stamped with ``ts_origin_ns`` when made, as a venue feed stamps receipt.
"""
from __future__ import annotations

import time

import numpy as np

from shm.records import SIDE_BUY, SIDE_SELL, TICK, TICK_QUOTE, TICK_TRADE

from .base import Worker

MAX_BATCH = 4096


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
        # regime switch: occasionally a symbol picks a new drift
        flip = rng.random(n) < 0.002
        self.drift[flip] = rng.normal(0.0, 2e-5, flip.sum())
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


class FeedWorker(Worker):
    role = "feed"

    def setup(self) -> None:
        self.feed = self.cfg.feeds[self.spec.feed]
        keys = [f"{s}@{self.feed.venue}" for s in self.feed.symbols]
        self.symbol_ids = np.array([self.topo.symbols.id(k) for k in keys], np.uint32)
        self.market = SyntheticMarket(len(keys), self.feed.start_price,
                                      self.feed.seed + 1000 * self.args.restart_count)
        self.out = self.spec.outputs[0]
        # resume the tick count where an earlier incarnation stopped (restart)
        self.emitted = int(self.writers[self.out].seq)
        self.t0 = time.monotonic()
        self.base = self.emitted

    def due(self) -> int:
        target = self.base + int((time.monotonic() - self.t0) * self.feed.ticks_per_s)
        if self.feed.max_ticks:
            target = min(target, self.feed.max_ticks)
        return target - self.emitted

    def step(self) -> bool:
        k = min(self.due(), MAX_BATCH)
        if k <= 0:
            return False
        ticks = self.market.make(k, self.symbol_ids)
        now = time.time_ns()
        ticks["ts_origin_ns"] = now
        ticks["ts_exchange_ns"] = now
        self.writers[self.out].write(ticks)   # lossy ring: never waits
        self.emitted += k
        self.counters["out"] += k
        return True

    def idle_wait(self, timeout: float) -> None:
        """Sleep until the next tick is due (or housekeeping), on our doorbell so a
        stop command never waits out a long sleep."""
        if self.feed.max_ticks and self.emitted >= self.feed.max_ticks:
            wait = timeout
        else:
            wait = min(timeout, max(1.0 / self.feed.ticks_per_s, 0.002))
        if self.bell is not None:
            self.bell.wait(wait)
        else:
            time.sleep(wait)

    def stats(self) -> dict:
        return {**self.counters, "emitted": self.emitted}


WORKER = FeedWorker
