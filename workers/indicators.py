"""Indicator shard: ticks -> time bars -> feature rows, for its own symbols.

A shard owns the symbols with ``symbol_id % n_shards == index``. State lives
in numpy arrays indexed by symbol id, so one call updates every symbol of a
batch. A bar closes when a tick of a later bar arrives for that symbol (its
``ts_origin_ns`` is that tick's) or, for a quiet symbol, when the market clock
passes the bar's end plus a grace period. The market clock is the newest
exchange time seen, advanced by the wall clock since: live it is the wall
clock, and a replay of old data never closes its bars early.

On close, the indicator engine (workers/ta.py, the same code `pipeline
features` runs over a file) computes every configured indicator for all the
closing symbols in one call; the shard writes each symbol's row in the
latest-features table and appends it to its features ring. A row whose
rolling volatility and volume z-score both pass the configured thresholds is
flagged FLAG_ALERT and logged: the desk alert, also on `pipeline tap alerts`.
"""
from __future__ import annotations

import time

import numpy as np

from pipeline.config import indicator_specs
from pipeline.topology import shard_of
from shm.records import FLAG_ALERT, FLAG_GAP, FLAG_TIMER_CLOSE, TICK_GAP, TICK_TRADE

from .base import Worker
from .ta import Engine


def _late_in_batch(sym: np.ndarray, bars: np.ndarray) -> np.ndarray:
    """Ticks that arrive after a tick of the same symbol from a later bar (in
    arrival order, within one batch): that later tick closed their bar."""
    late = np.zeros(len(sym), bool)
    if len(bars) < 2 or (bars[1:] >= bars[:-1]).all():   # the usual case: nothing goes back
        return late
    order = np.argsort(sym, kind="stable")            # per symbol, still in arrival order
    b = bars[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sym[order])) + 1]
    for lo, hi in zip(starts, np.r_[starts[1:], len(b)]):
        seg = b[lo:hi]
        if hi - lo > 1 and (seg[1:] < seg[:-1]).any():
            late[order[lo:hi]] = seg < np.maximum.accumulate(seg)
    return late


class BarState:
    """The open bar of every symbol (arrays indexed by symbol id)."""

    def __init__(self, n: int):
        self.open_ns = np.full(n, -1, np.int64)   # -1: no open bar
        self.closed_ns = np.full(n, -1, np.int64) # open time of the last bar closed
        self.o = np.zeros(n)
        self.h = np.zeros(n)
        self.l = np.zeros(n)
        self.c = np.zeros(n)
        self.v = np.zeros(n)
        self.n_ticks = np.zeros(n, np.int64)
        self.flags = np.zeros(n, np.uint16)


class IndicatorWorker(Worker):
    role = "indicators"

    def setup(self) -> None:
        ic = self.cfg.indicators
        n = len(self.topo.symbols)
        self.owned = np.array([shard_of(i, self.cfg.n_shards) == self.spec.index
                               for i in range(n)], bool)
        self.bar_ns = int(ic.bar_seconds * 1e9)
        self.grace_ns = int(ic.close_grace_s * 1e9)
        self.bars = BarState(n)
        # compile the kernels now, inside the start-up allowance and before the feeds
        # start: a first compile (no numba cache yet) takes seconds, longer than a
        # heartbeat timeout, and would lap the tick ring if it came with the first bar
        warm = np.ones(1)
        Engine(1, indicator_specs(ic)).update(np.zeros(1, np.int64), warm, warm, warm, warm, warm)
        self.engine = Engine(n, indicator_specs(ic))
        self.names = self.engine.columns
        self.alert = None
        if ic.alert_volatility > 0:
            self.alert = (self.names.index(f"vol_{ic.volatility[0]}"), ic.alert_volatility,
                          self.names.index(f"volz_{ic.volume_z[0]}"), ic.alert_volume_z)
        self.market_ns = 0        # newest exchange time seen ...
        self.market_wall_ns = 0   # ... and the wall time when it was seen
        self.out = self.spec.outputs[0]
        self.features = self.table("features")
        self.fdtype = self.topo.rings[self.out].dtype
        self.counters.update(bars=0, timer_closes=0, gaps=0, alerts=0)
        self._timer_due_ns = np.iinfo(np.int64).max   # earliest clock close of an open bar

    def step(self) -> bool:
        did = False
        for reader, batch in self.drain():
            did = True
            if batch.dropped:
                # lapped on the lossy tick ring: every open bar of ours missed data
                self.bars.flags[self.owned] |= FLAG_GAP
            self.on_ticks(batch.records)
            reader.commit()
        if self.market_clock() >= self._timer_due_ns:
            did = self.close_due() or did
        return did

    def on_ticks(self, ticks: np.ndarray) -> None:
        ticks = ticks[self.owned[ticks["symbol_id"]]]
        self.counters["in"] += len(ticks)
        gaps = ticks["kind"] == TICK_GAP
        if gaps.any():
            self.bars.flags[ticks["symbol_id"][gaps]] |= FLAG_GAP
        trades = ticks[ticks["kind"] == TICK_TRADE]
        price, size = trades["price"], trades["size"]
        ok = np.isfinite(price) & (price > 0) & np.isfinite(size) & (size >= 0)
        if not ok.all():
            self.counters["rejected"] += int((~ok).sum())
            trades = trades[ok]
        if len(trades) == 0:
            return
        st = self.bars
        newest = int(trades["ts_exchange_ns"].max())
        if newest > self.market_ns:
            self.market_ns, self.market_wall_ns = newest, time.time_ns()
        bars = trades["ts_exchange_ns"] // self.bar_ns * self.bar_ns
        late = _late_in_batch(trades["symbol_id"], bars)
        if late.any():
            self.counters["rejected"] += int(late.sum())
            trades, bars = trades[~late], bars[~late]
        for period in np.unique(bars):
            t = trades[bars == period]
            sym = t["symbol_id"].astype(np.intp)
            # out of order: the tick belongs to a bar already closed or older than the open one
            late = (st.open_ns[sym] > period) | (st.closed_ns[sym] >= period)
            if late.any():
                self.counters["rejected"] += int(late.sum())
                t, sym = t[~late], sym[~late]
                if len(t) == 0:
                    continue
            uniq, first = np.unique(sym, return_index=True)
            last = len(sym) - 1 - np.unique(sym[::-1], return_index=True)[1]
            closing = (st.open_ns[uniq] >= 0) & (st.open_ns[uniq] < period)
            if closing.any():
                self.close_bars(uniq[closing], t["ts_origin_ns"][first[closing]], 0)
            new = uniq[st.open_ns[uniq] < 0]
            if len(new):
                fi = first[np.isin(uniq, new)]
                st.open_ns[new] = period
                st.o[new] = t["price"][fi]
                st.h[new] = -np.inf
                st.l[new] = np.inf
                st.v[new] = 0.0
                st.n_ticks[new] = 0
                self._timer_due_ns = min(self._timer_due_ns, int(period) + self.bar_ns + self.grace_ns)
            np.maximum.at(st.h, sym, t["price"])
            np.minimum.at(st.l, sym, t["price"])
            np.add.at(st.v, sym, t["size"])
            np.add.at(st.n_ticks, sym, 1)
            st.c[uniq] = t["price"][last]

    def close_bars(self, ids: np.ndarray, origin_ns: np.ndarray, extra_flags: int) -> None:
        st = self.bars
        values = self.engine.update(ids, st.o[ids], st.h[ids], st.l[ids], st.c[ids], st.v[ids])
        rows = np.zeros(len(ids), self.fdtype)
        rows["ts_origin_ns"] = origin_ns
        rows["ts_bar_ns"] = st.open_ns[ids]
        rows["symbol_id"] = ids
        rows["flags"] = st.flags[ids] | extra_flags
        rows["n_ticks"] = np.minimum(st.n_ticks[ids], 65535)
        rows["open"] = st.o[ids]
        rows["high"] = st.h[ids]
        rows["low"] = st.l[ids]
        rows["close"] = st.c[ids]
        rows["volume"] = st.v[ids]
        for k, name in enumerate(self.names):
            rows[name] = values[:, k]
        if self.alert is not None:
            self._alerts(rows, values)
        st.closed_ns[ids] = st.open_ns[ids]
        st.open_ns[ids] = -1
        st.flags[ids] = 0
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

    def market_clock(self) -> int:
        """Newest exchange time seen, advanced by the wall clock since then."""
        if not self.market_ns:
            return time.time_ns()
        return self.market_ns + (time.time_ns() - self.market_wall_ns)

    def close_due(self) -> bool:
        """Close bars of quiet symbols once their end plus grace has passed."""
        st = self.bars
        now = self.market_clock()
        is_open = self.owned & (st.open_ns >= 0)
        due = np.flatnonzero(is_open & (st.open_ns + self.bar_ns + self.grace_ns <= now))
        if len(due):
            self.counters["timer_closes"] += len(due)
            self.close_bars(due, np.full(len(due), time.time_ns(), np.int64), FLAG_TIMER_CLOSE)
        still = st.open_ns[self.owned & (st.open_ns >= 0)]
        self._timer_due_ns = (int(still.min()) + self.bar_ns + self.grace_ns if len(still)
                              else np.iinfo(np.int64).max)
        return bool(len(due))

    def idle_wait(self, timeout: float) -> None:
        # wake in time to close the next bar on the clock
        left = (self._timer_due_ns - self.market_clock()) / 1e9
        super().idle_wait(max(0.0, min(timeout, left)))

    def stats(self) -> dict:
        return dict(self.counters)


WORKER = IndicatorWorker
