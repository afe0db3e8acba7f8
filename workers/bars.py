"""Time bars from ticks, for the symbols one indicator shard owns.

A pure core (numpy in, numpy out, a clock passed in) that the indicator shard
(workers/indicators.py) drives live and a backtest drives on a simulated clock.

A bar closes when a trade of a later bar arrives for that symbol (the closed
bar's ``origin_ns`` is that trade's ``ts_origin_ns``) or, for a quiet symbol,
when the market clock passes the bar's end plus a grace period. The market
clock is the newest exchange time seen, advanced by the clock since: live it
is the wall clock, and a replay of old data never closes its bars early.
Trades with a NaN, zero or negative price, a bad size, an event time more than
``max_ahead_ns`` after their receipt (a broken clock would otherwise close a bar
a year ahead and reject everything after it), or a time in a bar already
closed are rejected and counted; a gap marker (or a lapped ring)
flags the open bars it touches with FLAG_GAP.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numba
import numpy as np

from pipeline.clock import Clock
from shm.records import FLAG_GAP, FLAG_TIMER_CLOSE, TICK, TICK_GAP, TICK_TRADE

NEVER = np.iinfo(np.int64).max


@dataclass
class ClosedBars:
    """Bars closed together, one per symbol (arrays in the order of ``ids``)."""
    ids: np.ndarray          # symbol ids
    open_ns: np.ndarray      # bar open times
    origin_ns: np.ndarray    # ts_origin_ns of what closed them (a tick, or the clock)
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray
    c: np.ndarray
    v: np.ndarray
    n_ticks: np.ndarray
    flags: np.ndarray        # FLAG_GAP, FLAG_TIMER_CLOSE

    def __len__(self) -> int:
        return len(self.ids)


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


@numba.njit(cache=True, nogil=True)
def _fold(sym, period, price, size, origin, end_ns, open_ns, closed_ns, o, h, l, c, v, n_ticks, flags,
          gap_bar, seen, out_group, out_sym, out_ns, out_f, out_flags):
    """Fold valid trades, in bar order (arrival order within a bar), into the open
    bars: a symbol's first trade of a later bar closes its open bar (a row of the
    out_ arrays, with that trade's origin) and opens the next; a trade of a bar
    already closed, or older than the open one, is rejected. Returns (rows written,
    trades rejected, earliest timer close of a bar opened here). A bar opened at the time
    ``gap_bar`` holds for its symbol is flagged FLAG_GAP (a hole ran into it)."""
    n = sym.shape[0]
    k = rejected = 0
    due = np.iinfo(np.int64).max
    g = i = 0
    while i < n:
        p = period[i]
        j = i
        while j < n and period[j] == p:
            j += 1
        g += 1
        for t in range(i, j):
            s = sym[t]
            if open_ns[s] > p or closed_ns[s] >= p:
                rejected += 1
                continue
            if seen[s] != g:                   # the symbol's first trade of this bar
                seen[s] = g
                if 0 <= open_ns[s] < p:
                    out_group[k], out_sym[k] = g, s
                    out_ns[k, 0], out_ns[k, 1] = origin[t], open_ns[s]
                    out_f[k, 0], out_f[k, 1], out_f[k, 2] = o[s], h[s], l[s]
                    out_f[k, 3], out_f[k, 4], out_f[k, 5] = c[s], v[s], n_ticks[s]
                    out_flags[k] = flags[s]
                    k += 1
                    closed_ns[s] = open_ns[s]
                    open_ns[s] = -1
                    flags[s] = 0
                if open_ns[s] < 0:
                    open_ns[s] = p
                    if gap_bar[s] == p:
                        flags[s] |= FLAG_GAP
                        gap_bar[s] = -1
                    o[s] = price[t]
                    h[s] = -np.inf
                    l[s] = np.inf
                    v[s] = 0.0
                    n_ticks[s] = 0
                    due = min(due, p + end_ns)
            x = price[t]
            if x > h[s]:
                h[s] = x
            if x < l[s]:
                l[s] = x
            v[s] += size[t]
            n_ticks[s] += 1
            c[s] = x
        i = j
    return k, rejected, due


class BarBuilder:
    """The open bar of every symbol (arrays indexed by symbol id); only the symbols
    in ``owned`` are built, the others' ticks are ignored."""

    def __init__(self, owned: np.ndarray, bar_ns: int, grace_ns: int, clock: Clock,
                 max_ahead_ns: int = 30 * 10**9):
        n = len(owned)
        self.max_ahead_ns = int(max_ahead_ns)
        self.owned = np.asarray(owned, bool)
        self.bar_ns, self.grace_ns = int(bar_ns), int(grace_ns)
        self.clock = clock
        self.open_ns = np.full(n, -1, np.int64)    # -1: no open bar
        self.closed_ns = np.full(n, -1, np.int64)  # open time of the last bar closed
        self.o = np.zeros(n)
        self.h = np.zeros(n)
        self.l = np.zeros(n)
        self.c = np.zeros(n)
        self.v = np.zeros(n)
        self.n_ticks = np.zeros(n, np.int64)
        self.flags = np.zeros(n, np.uint16)
        self.gap_bar = np.full(n, -1, np.int64)     # a later bar a gap marker's hole ran into
        self.market_ns = 0         # newest exchange time seen ...
        self.market_at_ns = 0      # ... and the clock's time when it was seen
        self.timer_due_ns = NEVER  # earliest clock close of an open bar
        self.counters = {"in": 0, "rejected": 0, "timer_closes": 0}
        empty = np.zeros(0, TICK)          # compiles the fold now, not at the first trade
        self._fold_trades(empty, empty["ts_exchange_ns"] // self.bar_ns)

    # -- input --------------------------------------------------------------------------
    def resume(self, ids: np.ndarray, bar_open_ns: np.ndarray) -> None:
        """A restarted shard's builder, from the bars its predecessor closed (symbol ids
        and open times): ticks of those bars, re-read from the ring, are late, not a
        second bar; and the next bar of every owned symbol is flagged FLAG_GAP, since the
        predecessor took whatever ticks of it it had already read."""
        ids = np.asarray(ids, np.intp)
        np.maximum.at(self.closed_ns, ids, np.asarray(bar_open_ns, np.int64))
        self.mark_gap()

    def mark_gap(self) -> None:
        """Data was lost upstream (a lapped ring): every open bar of ours missed some."""
        self.flags[self.owned] |= FLAG_GAP

    def on_ticks(self, ticks: np.ndarray) -> list[ClosedBars]:
        """Fold a batch of TICK records in arrival order; the bars it closed, in the
        order they closed (each list element one engine call's worth)."""
        every, close = self.fold(ticks)
        if every is None:
            return []
        cuts = (np.flatnonzero(close[1:] != close[:-1]) + 1).tolist()
        return [ClosedBars(*(getattr(every, f.name)[a:b] for f in fields(ClosedBars)))
                for a, b in zip([0] + cuts, cuts + [len(close)])]

    def fold(self, ticks: np.ndarray) -> tuple[ClosedBars | None, np.ndarray | None]:
        """`on_ticks` for a caller that takes many closes at once: every bar the batch
        closed, in one, and each one's close number (nondecreasing); None, None if none."""
        ticks = ticks[self.owned[ticks["symbol_id"]]]
        self.counters["in"] += len(ticks)
        gaps = np.flatnonzero(ticks["kind"] == TICK_GAP)
        if not len(gaps):
            return self._fold_batch(ticks)
        # a gap marker flags the bar open when it arrives: the trades before it fold first (a
        # bar they close is whole; the one they open is the one that lost trades)
        parts, start = [], 0
        for g in gaps.tolist() + [len(ticks)]:
            parts.append(self._fold_batch(ticks[start:g]))
            if g < len(ticks):
                s, at = int(ticks["symbol_id"][g]), int(ticks["ts_exchange_ns"][g]) // self.bar_ns * self.bar_ns
                self.flags[s] |= FLAG_GAP
                if 0 <= self.open_ns[s] < at:       # the hole runs on into the marker's own bar
                    self.gap_bar[s] = at
            start = g + 1
        parts = [p for p in parts if p[0] is not None]
        if not parts:
            return None, None
        groups, base = [], 0
        for _, close in parts:
            groups.append(close + base)
            base += int(close[-1]) + 1
        return (ClosedBars(*(np.concatenate([getattr(every, f.name) for every, _ in parts])
                             for f in fields(ClosedBars))), np.concatenate(groups))

    def _fold_batch(self, ticks: np.ndarray) -> tuple[ClosedBars | None, np.ndarray | None]:
        """`fold` of ticks with no gap marker among them."""
        trades = ticks[ticks["kind"] == TICK_TRADE]
        price, size = trades["price"], trades["size"]
        ok = np.isfinite(price) & (price > 0) & np.isfinite(size) & (size >= 0)
        ok &= trades["ts_exchange_ns"] - trades["ts_origin_ns"] <= self.max_ahead_ns
        if not ok.all():
            self.counters["rejected"] += int((~ok).sum())
            trades = trades[ok]
        if len(trades) == 0:
            return None, None
        newest = int(trades["ts_exchange_ns"].max())
        if newest > self.market_ns:
            self.market_ns, self.market_at_ns = newest, self.clock.time_ns()
        bars = trades["ts_exchange_ns"] // self.bar_ns * self.bar_ns
        late = _late_in_batch(trades["symbol_id"], bars)
        if late.any():
            self.counters["rejected"] += int(late.sum())
            trades, bars = trades[~late], bars[~late]
        if len(bars) > 1 and not (bars[1:] >= bars[:-1]).all():
            order = np.argsort(bars, kind="stable")        # by bar, arrival order within each
            trades, bars = trades[order], bars[order]
        k, out_group, out_sym, out_ns, out_f, out_flags = self._fold_trades(trades, bars)
        if not k:
            return None, None
        i = np.lexsort((out_sym[:k], out_group[:k]))       # by close, then symbol id
        return ClosedBars(ids=out_sym[i], open_ns=out_ns[i, 1], origin_ns=out_ns[i, 0],
                          o=out_f[i, 0], h=out_f[i, 1], l=out_f[i, 2], c=out_f[i, 3], v=out_f[i, 4],
                          n_ticks=out_f[i, 5].astype(np.int64), flags=out_flags[i]), out_group[i]

    def _fold_trades(self, trades: np.ndarray, bars: np.ndarray) -> tuple:
        """Run `_fold` on valid trades in bar order: (rows, out arrays...)."""
        n = len(bars)
        out_group = np.empty(n, np.int64)
        out_sym = np.empty(n, np.intp)
        out_ns = np.empty((n, 2), np.int64)                # origin, bar open
        out_f = np.empty((n, 6))                           # o, h, l, c, v, ticks
        out_flags = np.empty(n, np.uint16)
        k, rejected, due = _fold(trades["symbol_id"].astype(np.intp), bars, trades["price"], trades["size"],
                                 trades["ts_origin_ns"], self.bar_ns + self.grace_ns, self.open_ns,
                                 self.closed_ns, self.o, self.h, self.l, self.c, self.v, self.n_ticks,
                                 self.flags, self.gap_bar, np.zeros(len(self.owned), np.int64),
                                 out_group, out_sym, out_ns, out_f, out_flags)
        self.counters["rejected"] += int(rejected)
        self.timer_due_ns = min(self.timer_due_ns, int(due))
        return k, out_group, out_sym, out_ns, out_f, out_flags

    # -- the clock ----------------------------------------------------------------------
    def market_clock(self) -> int:
        """Newest exchange time seen, advanced by the clock since then."""
        now = self.clock.time_ns()
        if not self.market_ns:
            return now
        return self.market_ns + (now - self.market_at_ns)

    def close_due(self) -> ClosedBars | None:
        """Close the bars of quiet symbols whose end plus grace the market clock has
        passed (flagged FLAG_TIMER_CLOSE, origin = the clock's time)."""
        now = self.market_clock()
        if now < self.timer_due_ns:
            return None
        is_open = self.owned & (self.open_ns >= 0)
        due = np.flatnonzero(is_open & (self.open_ns + self.bar_ns + self.grace_ns <= now))
        out = None
        if len(due):
            self.counters["timer_closes"] += len(due)
            out = self._close(due, np.full(len(due), self.clock.time_ns(), np.int64),
                              FLAG_TIMER_CLOSE)
        still = self.open_ns[self.owned & (self.open_ns >= 0)]
        self.timer_due_ns = (int(still.min()) + self.bar_ns + self.grace_ns if len(still)
                             else NEVER)
        return out

    def seconds_to_due(self) -> float:
        """How long until the next timer close, on the market clock."""
        return (self.timer_due_ns - self.market_clock()) / 1e9

    def _close(self, ids: np.ndarray, origin_ns: np.ndarray, extra_flags: int) -> ClosedBars:
        bars = ClosedBars(ids=ids, open_ns=self.open_ns[ids].copy(), origin_ns=origin_ns,
                          o=self.o[ids], h=self.h[ids], l=self.l[ids], c=self.c[ids],
                          v=self.v[ids], n_ticks=self.n_ticks[ids],
                          flags=self.flags[ids] | np.uint16(extra_flags))
        self.closed_ns[ids] = self.open_ns[ids]
        self.open_ns[ids] = -1
        self.flags[ids] = 0
        return bars


def feature_rows(bars: ClosedBars, values: np.ndarray, names: list[str], dtype: np.dtype) -> np.ndarray:
    """Feature records of closed bars: the bar itself and its indicator ``values``
    (columns in the order of ``names``). The indicator shard and a backtest write them alike."""
    rows = np.zeros(len(bars), dtype)
    rows["ts_origin_ns"] = bars.origin_ns
    rows["ts_bar_ns"] = bars.open_ns
    rows["symbol_id"] = bars.ids
    rows["flags"] = bars.flags
    rows["n_ticks"] = np.minimum(bars.n_ticks, 65535)
    rows["open"] = bars.o
    rows["high"] = bars.h
    rows["low"] = bars.l
    rows["close"] = bars.c
    rows["volume"] = bars.v
    for k, name in enumerate(names):
        rows[name] = values[:, k]
    return rows


def bar_steps(ticks: np.ndarray, bar_ns: int) -> np.ndarray:
    """End indices (exclusive) of the steps a replay is played in, in lockstep with
    the pipeline (a backtest, or a live replay with ``lockstep``): each step ends
    after the last tick at a time when some symbol's trade opens a new bar (and so
    closes its last one), so that everything that bar close causes happens before
    the next tick: the desk has seen the closing tick when the bar's intents come."""
    trade = ticks["kind"] == TICK_TRADE
    sid = ticks["symbol_id"].astype(np.int64)
    ts = ticks["ts_exchange_ns"].astype(np.int64)
    bar = ts // bar_ns
    idx = np.flatnonzero(trade)
    order = idx[np.argsort(sid[idx], kind="stable")]          # per symbol, in time order
    s, b = sid[order], bar[order]
    later_bar = np.r_[False, (s[1:] == s[:-1]) & (b[1:] > b[:-1])]
    times = np.unique(ts[order[later_bar]])
    ends = np.searchsorted(ts, times, side="right")
    return np.unique(np.r_[ends, len(ticks)]).astype(np.int64)
