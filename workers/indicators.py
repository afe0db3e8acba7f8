"""Indicator shard: ticks -> time bars -> feature rows, for its own symbols.

A shard owns the symbols with ``symbol_id % n_shards == index``. Bars are
built by the pure core in workers/bars.py (`BarBuilder`: state in numpy arrays
indexed by symbol id, so one call updates every symbol of a batch; a bar
closes on a tick of a later bar or, for a quiet symbol, on the market clock).

On close, the indicator engine (models/ta.py, the same code `pipeline
features` runs over a file) computes every configured indicator for all the
closing symbols in one call; the shard writes each symbol's row in the
latest-features table and appends it to its features ring. A row whose
rolling volatility and volume z-score both pass the configured thresholds is
flagged FLAG_ALERT and logged: the desk alert, also on `pipeline tap alerts`.

A restarted shard rebuilds its indicators from the bars still in its features
ring (`resume`), so its symbols do not warm up again; the first bar of each
symbol after the restart is flagged FLAG_GAP (the predecessor took the ticks
it had read), and execution never trades on it.
"""
from __future__ import annotations

import os
import time

import numpy as np

from models.ta import Engine
from pipeline.config import indicator_specs
from pipeline.topology import shard_of
from shm.records import FLAG_ALERT

from .bars import BarBuilder, ClosedBars, feature_rows
from .base import Worker


# Wake-ups for closes only: a tick that does not close a bar only updates it, so a shard
# need not wake for it (6 shards woken by every tick batch, 2 ms apart, kept 2 cores busy,
# and at a bar's end made the owner of the closing tick wait for a core behind the
# others). A shard asks the tick rings (RingReader.set_interest) for the symbols whose
# open bar the next tick may close (from their bar's end less a margin for exchange
# clocks ahead of the market clock), or for a wake-up once 1/WAKE_FRACTION of the ring is
# unread (never lapped for want of one), and reads what it slept through in one batch.
DUE_MARGIN_S = 0.02       # a bar may close this long before its end (at most 1/10 of a bar)
WAKE_FRACTION = 16        # woken at the latest with 1/16 of the tick ring unread


class IndicatorWorker(Worker):
    role = "indicators"

    def setup(self) -> None:
        ic = self.cfg.indicators
        n = len(self.topo.symbols)
        owned = np.array([shard_of(i, self.cfg.n_shards) == self.spec.index for i in range(n)], bool)
        ahead_s = max(f.max_ahead_s for f in self.cfg.feeds)     # each feed checked its own first
        self.bars = BarBuilder(owned, int(ic.bar_seconds * 1e9), int(ic.close_grace_s * 1e9),
                               self.clock, int(ahead_s * 1e9))
        # compile the kernels now, inside the start-up allowance and before the feeds
        # start: a first compile (no numba cache yet) takes seconds, longer than a
        # heartbeat timeout, and would lap the tick ring if it came with the first bar
        warm = np.ones(1)
        Engine(1, indicator_specs(ic)).update(np.zeros(1, np.int64), warm, warm, warm, warm, warm)
        self.engine = Engine(n, indicator_specs(ic))
        self.names = self.topo.feature_names
        self.alert = None
        if ic.alert_volatility > 0:
            self.alert = (self.names.index(f"vol_{ic.volatility[0]}"), ic.alert_volatility,
                          self.names.index(f"volz_{ic.volume_z[0]}"), ic.alert_volume_z)
        self.out = self.spec.outputs[0]
        self.features = self.table("features")
        self.fdtype = self.topo.rings[self.out].dtype
        self.counters.update(bars=0, timer_closes=0, gaps=0, alerts=0)
        # TICKPIPE_SHARD_NAP=0 turns the filter off (woken by every tick batch, as before); a
        # lockstep replay plays its next step once every reader has read the last one, so a
        # shard asleep through ticks that close nothing would hold each step up
        self.filtered = (os.environ.get("TICKPIPE_SHARD_NAP", "1") != "0"
                         and not any(f.lockstep for f in self.cfg.feeds))
        self.due_margin_ns = min(int(DUE_MARGIN_S * 1e9), self.bars.bar_ns // 10)
        self._slept_ns = 0                   # the last filtered wait, until a step reads
        writer = self.writers[self.out]
        if writer.seq > 0:                   # a restart: the ring holds what we closed before
            self.resume(writer.tail())

    def resume(self, rows: np.ndarray) -> None:
        """Rebuild the indicators' state from the bars a predecessor closed, the newest
        ones still in this shard's features ring, so its symbols do not start a new
        warm-up (hours at 5-minute bars); the bar builder learns which bars are closed
        and flags each symbol's next bar, which may have lost ticks, FLAG_GAP."""
        ids = rows["symbol_id"].astype(np.int64)
        self.engine.update(ids, rows["open"], rows["high"], rows["low"], rows["close"],
                           rows["volume"])
        self.bars.resume(ids, rows["ts_bar_ns"])
        owned = np.flatnonzero(self.bars.owned)
        bars = np.bincount(ids, minlength=len(self.bars.owned))[owned]
        full = int((bars > self.engine.lookback).sum())
        self.log.info("restarted: indicator state rebuilt from the %d bars in the features ring; "
                      "%d of %d symbols have their full lookback of %d bars, the others warm up "
                      "from what there was", len(rows), full, len(owned), self.engine.lookback + 1)

    def step(self) -> bool:
        did = False
        for reader, batch in self.drain():
            did = True
            if batch.dropped:
                self.bars.mark_gap()
            seen = self.bars.market_ns
            for closed in self.bars.on_ticks(batch.records):
                self.close_bars(closed)
            if self.bars.market_ns != seen and self._slept_ns:
                self._anchor(batch.records)
            reader.commit()
        self._slept_ns = 0
        closed = self.bars.close_due()
        if closed is not None:
            self.close_bars(closed)
            did = True
        self._count()
        return did

    def _count(self) -> None:
        """The builder's counters (ticks in, rejected, timer closes) in ours."""
        for key, value in self.bars.counters.items():
            self.counters[key] = value

    def close_bars(self, bars: ClosedBars) -> None:
        """The indicators of the closed bars, written to the features table and ring."""
        ids = bars.ids
        values = self.engine.update(ids, bars.o, bars.h, bars.l, bars.c, bars.v)
        rows = feature_rows(bars, values, self.names, self.fdtype)
        if self.alert is not None:
            self._alerts(rows, values)
        self.features.write(ids, rows)
        self.publish(self.out, rows)
        self.record_latency(rows["ts_origin_ns"])
        self.counters["bars"] += len(ids)

    def _alerts(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Volatility above its threshold together with a volume surge."""
        vol_col, vol_max, z_col, z_max = self.alert
        with np.errstate(invalid="ignore"):
            hit = (values[:, vol_col] > vol_max) & (values[:, z_col] > z_max)
        if not hit.any():
            return
        rows["flags"][hit] |= FLAG_ALERT
        self.counters["alerts"] += int(hit.sum())
        for r, v in zip(rows[hit], values[hit]):
            self.log.warning("alert: %s volatility %.4g > %g with volume z-score %.2f > %g "
                             "(bar %d)", self.topo.symbols.name(int(r["symbol_id"])),
                             v[vol_col], vol_max, v[z_col], z_max, int(r["ts_bar_ns"]))

    def _anchor(self, ticks: np.ndarray) -> None:
        """After a filtered wait, the market clock runs from when its newest exchange time
        was received (the tick's ts_origin_ns), not from when the shard woke to read it, so
        that timer closes come as soon as for a shard woken by every tick; moved back by
        the wait at most (a tick's origin on another clock, as in a test, changes nothing)."""
        b = self.bars
        hit = (ticks["ts_exchange_ns"] == b.market_ns) & b.owned[ticks["symbol_id"]]
        if hit.any():
            at = int(ticks["ts_origin_ns"][hit].min())
            if b.market_at_ns - self._slept_ns <= at < b.market_at_ns:
                b.market_at_ns = at

    def due(self) -> tuple[int, float]:
        """The symbols (bits of symbol_id % 64) whose open bar the next tick may close,
        and the seconds until another open bar joins them (inf if none will)."""
        b = self.bars
        is_open = b.owned & (b.open_ns >= 0)
        if not is_open.any():
            return 0, float("inf")
        ready_ns = b.open_ns + (b.bar_ns - self.due_margin_ns)
        now = b.market_clock()
        due = is_open & (ready_ns <= now)
        bits = 0
        for sid in np.flatnonzero(due).tolist():
            bits |= 1 << (sid & 63)
        later = ready_ns[is_open & ~due]
        return bits, (int(later.min()) - now) / 1e9 if len(later) else float("inf")

    def idle_wait(self, timeout: float) -> None:
        # wake in time to close the next bar on the clock
        timeout = max(0.0, min(timeout, self.bars.seconds_to_due()))
        if not self.filtered:
            super().idle_wait(timeout)
            return
        bits, soon = self.due()
        for r in self.readers:
            r.set_interest(bits, max(1, r.ring.capacity // WAKE_FRACTION))
        t0 = time.monotonic_ns()
        super().idle_wait(max(0.0, min(timeout, soon)))
        self._slept_ns = time.monotonic_ns() - t0 + 1_000_000

    def stats(self) -> dict:
        return dict(self.counters)


WORKER = IndicatorWorker
