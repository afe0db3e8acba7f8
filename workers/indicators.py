"""Indicator shard: ticks -> time bars -> feature rows, for its own symbols.

A shard owns the symbols with ``symbol_id % n_shards == index``. State lives
in numpy arrays indexed by symbol id, so one call updates every symbol of a
batch. A bar closes when a tick of a later bar arrives for that symbol (its
``ts_origin_ns`` is that tick's) or, for a quiet symbol, when the wall clock
passes the bar's end plus a grace period. On close the shard writes the
symbol's row in the latest-features table and appends it to its features ring.

The indicators here (EMA, Wilder RSI, 1-bar return) are seeded like TA-Lib
(SMA of the first ``period`` values); the full indicator engine replaces them.
"""
from __future__ import annotations

import time

import numpy as np

from pipeline.topology import feature_names, shard_of
from shm.records import FLAG_GAP, FLAG_TIMER_CLOSE, TICK_GAP, TICK_TRADE

from .base import Worker


class BarState:
    """Open bars and indicator state for all symbols (arrays indexed by id)."""

    def __init__(self, n: int, ema_periods: list[int], rsi_period: int):
        self.open_ns = np.full(n, -1, np.int64)   # -1: no open bar
        self.o = np.zeros(n); self.h = np.zeros(n); self.l = np.zeros(n); self.c = np.zeros(n)
        self.v = np.zeros(n)
        self.n_ticks = np.zeros(n, np.int64)
        self.flags = np.zeros(n, np.uint16)
        self.ema_periods = ema_periods
        self.ema = np.full((len(ema_periods), n), np.nan)
        self.ema_sum = np.zeros((len(ema_periods), n))
        self.n_bars = np.zeros(n, np.int64)
        self.prev_close = np.full(n, np.nan)
        self.rsi_period = rsi_period
        self.gain_sum = np.zeros(n); self.loss_sum = np.zeros(n)
        self.avg_gain = np.full(n, np.nan); self.avg_loss = np.full(n, np.nan)

    def update_indicators(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Fold the just-closed bars of ``ids`` into the indicators; return values."""
        close = self.c[ids]
        self.n_bars[ids] += 1
        nb = self.n_bars[ids]
        out = {}
        for k, p in enumerate(self.ema_periods):
            ema, s = self.ema[k], self.ema_sum[k]
            seeding = nb <= p
            s[ids[seeding]] += close[seeding]
            at_seed = nb == p
            ema[ids[at_seed]] = s[ids[at_seed]] / p
            later = nb > p
            a = 2.0 / (p + 1)
            li = ids[later]
            ema[li] = ema[li] + a * (close[later] - ema[li])
            out[f"ema_{p}"] = ema[ids].copy()
        prev = self.prev_close[ids]
        change = close - prev                         # NaN for the first bar
        gain = np.where(change > 0, change, 0.0)
        loss = np.where(change < 0, -change, 0.0)
        p = self.rsi_period
        nchg = nb - 1                                 # number of changes seen
        seeding = (nchg >= 1) & (nchg <= p)
        self.gain_sum[ids[seeding]] += gain[seeding]
        self.loss_sum[ids[seeding]] += loss[seeding]
        at_seed = nchg == p
        self.avg_gain[ids[at_seed]] = self.gain_sum[ids[at_seed]] / p
        self.avg_loss[ids[at_seed]] = self.loss_sum[ids[at_seed]] / p
        later = nchg > p
        li = ids[later]
        self.avg_gain[li] = (self.avg_gain[li] * (p - 1) + gain[later]) / p
        self.avg_loss[li] = (self.avg_loss[li] * (p - 1) + loss[later]) / p
        ag, al = self.avg_gain[ids], self.avg_loss[ids]
        with np.errstate(divide="ignore", invalid="ignore"):
            rsi = np.where(al == 0, np.where(ag == 0, 50.0, 100.0), 100.0 - 100.0 / (1.0 + ag / al))
        rsi[np.isnan(ag)] = np.nan
        out[f"rsi_{p}"] = rsi
        with np.errstate(invalid="ignore"):
            out["ret_1"] = close / prev - 1.0
        self.prev_close[ids] = close
        return out


class IndicatorWorker(Worker):
    role = "indicators"

    def setup(self) -> None:
        ic = self.cfg.indicators
        n = len(self.topo.symbols)
        self.owned = np.array([shard_of(i, self.cfg.n_shards) == self.spec.index
                               for i in range(n)], bool)
        self.bar_ns = int(ic.bar_seconds * 1e9)
        self.grace_ns = int(ic.close_grace_s * 1e9)
        self.bars = BarState(n, ic.ema_periods, ic.rsi_period)
        self.names = feature_names(self.cfg)
        self.out = self.spec.outputs[0]
        self.features = self.table("features")
        self.fdtype = self.topo.rings[self.out].dtype
        self.counters.update(bars=0, timer_closes=0, gaps=0)
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
        if time.time_ns() >= self._timer_due_ns:
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
        bars = trades["ts_exchange_ns"] // self.bar_ns * self.bar_ns
        for period in np.unique(bars):
            t = trades[bars == period]
            sym = t["symbol_id"].astype(np.intp)
            late = (st.open_ns[sym] > period)        # out of order: belongs to a closed bar
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
        values = st.update_indicators(ids)
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
        for name in self.names:
            rows[name] = values[name] if name in values else st.v[ids]
        st.open_ns[ids] = -1
        st.flags[ids] = 0
        self.features.write(ids, rows)
        self.publish(self.out, rows)
        self.record_latency(rows["ts_origin_ns"])
        self.counters["bars"] += len(ids)

    def close_due(self) -> bool:
        """Close bars of quiet symbols once their end plus grace has passed."""
        st = self.bars
        now = time.time_ns()
        is_open = self.owned & (st.open_ns >= 0)
        due = np.flatnonzero(is_open & (st.open_ns + self.bar_ns + self.grace_ns <= now))
        if len(due):
            self.counters["timer_closes"] += len(due)
            self.close_bars(due, np.full(len(due), now, np.int64), FLAG_TIMER_CLOSE)
        still = st.open_ns[self.owned & (st.open_ns >= 0)]
        self._timer_due_ns = (int(still.min()) + self.bar_ns + self.grace_ns if len(still)
                              else np.iinfo(np.int64).max)
        return bool(len(due))

    def idle_wait(self, timeout: float) -> None:
        # wake in time to close the next bar on the clock
        left = (self._timer_due_ns - time.time_ns()) / 1e9
        super().idle_wait(max(0.0, min(timeout, left)))

    def stats(self) -> dict:
        return dict(self.counters)


WORKER = IndicatorWorker
