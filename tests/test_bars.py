"""The bar builder core (workers/bars.py) on a simulated clock: no rings, no
processes, the same code the indicator shard runs live."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.clock import LiveClock, SimClock
from shm.records import FLAG_GAP, FLAG_TIMER_CLOSE, TICK, TICK_GAP, TICK_TRADE
from workers.bars import BarBuilder

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def ticks(rows) -> np.ndarray:
    """rows: (symbol_id, second, price, size[, kind]); origin = exchange time + 1 ms."""
    out = np.zeros(len(rows), TICK)
    for i, r in enumerate(rows):
        sid, sec, price, size = r[:4]
        out[i]["symbol_id"] = sid
        out[i]["ts_exchange_ns"] = T0 + int(sec * SEC)
        out[i]["ts_origin_ns"] = T0 + int(sec * SEC) + 1_000_000
        out[i]["price"], out[i]["size"] = price, size
        out[i]["kind"] = r[4] if len(r) > 4 else TICK_TRADE
    return out


def builder(clock, n=3, owned=None, grace_s=0.5) -> BarBuilder:
    owned = np.ones(n, bool) if owned is None else np.asarray(owned)
    return BarBuilder(owned, SEC, int(grace_s * SEC), clock)


def test_sim_clock_moves_only_forward():
    c = SimClock(10)
    c.advance(5)
    assert c.time_ns() == 15
    c.set(15)
    with pytest.raises(ValueError):
        c.set(14)
    with pytest.raises(ValueError):
        c.advance(-1)
    assert abs(LiveClock().time_ns() - SimClock(LiveClock().time_ns()).time_ns()) < 60 * SEC


def test_a_later_tick_closes_the_bar_with_its_ohlcv():
    clock = SimClock(T0)
    b = builder(clock)
    assert b.on_ticks(ticks([(0, 0.1, 100.0, 1.0), (0, 0.4, 105.0, 2.0), (0, 0.7, 99.0, 0.5),
                             (1, 0.2, 10.0, 3.0)])) == []
    closed = b.on_ticks(ticks([(0, 1.3, 101.0, 1.0)]))
    assert len(closed) == 1
    bar = closed[0]
    assert bar.ids.tolist() == [0]
    assert (bar.o[0], bar.h[0], bar.l[0], bar.c[0], bar.v[0]) == (100.0, 105.0, 99.0, 99.0, 3.5)
    assert bar.n_ticks[0] == 3 and bar.open_ns[0] == T0 and bar.flags[0] == 0
    assert bar.origin_ns[0] == T0 + int(1.3 * SEC) + 1_000_000     # the tick that closed it
    assert b.open_ns[0] == T0 + SEC and b.open_ns[1] == T0           # symbol 1 still open


def test_quiet_symbol_closes_on_the_simulated_clock_not_before():
    clock = SimClock(T0)
    b = builder(clock, grace_s=0.5)
    b.on_ticks(ticks([(2, 0.1, 50.0, 1.0)]))       # market clock: 0.1 s at the clock's T0
    clock.set(T0 + int(1.39 * SEC))
    assert b.close_due() is None                   # market clock 1.49 s: end + grace not passed
    clock.set(T0 + int(1.4 * SEC))
    bar = b.close_due()
    assert bar is not None and bar.ids.tolist() == [2]
    assert bar.flags[0] == FLAG_TIMER_CLOSE and bar.origin_ns[0] == clock.time_ns()
    assert b.counters["timer_closes"] == 1 and b.close_due() is None


def test_replayed_old_data_runs_on_its_own_market_clock():
    """Exchange times a year before the clock: bars close by the data's time plus the
    clock's progress since, not by the clock's absolute time."""
    clock = SimClock(T0 + 365 * 86400 * SEC)
    b = builder(clock, grace_s=0.5)
    b.on_ticks(ticks([(0, 0.1, 10.0, 1.0)]))
    assert b.close_due() is None                                     # not closed at once
    clock.advance(int(1.4 * SEC))                                    # market clock at 1.5 s
    assert b.close_due() is not None


def test_bad_and_late_ticks_are_counted_and_touch_no_other_symbol():
    b = builder(SimClock(T0))
    b.on_ticks(ticks([(1, 0.1, 10.0, 1.0), (0, 0.2, float("nan"), 1.0), (0, 0.3, -1.0, 1.0),
                      (0, 0.4, 5.0, float("inf")), (0, 0.5, 100.0, 1.0)]))
    closed = b.on_ticks(ticks([(0, 1.1, 101.0, 1.0), (0, 0.9, 1.0, 1.0)]))   # then a late one
    assert b.counters["rejected"] == 4
    assert closed[0].o[0] == closed[0].c[0] == 100.0
    assert b.open_ns[1] == T0 and b.c[1] == 10.0


def test_gap_marker_and_lapped_ring_flag_the_open_bar():
    b = builder(SimClock(T0))
    b.on_ticks(ticks([(0, 0.1, 100.0, 1.0), (0, 0.2, np.nan, np.nan, TICK_GAP), (1, 0.1, 5.0, 1.0)]))
    closed = b.on_ticks(ticks([(0, 1.1, 101.0, 1.0), (1, 1.1, 5.0, 1.0)]))
    flags = dict(zip(closed[0].ids.tolist(), closed[0].flags.tolist()))
    assert flags == {0: FLAG_GAP, 1: 0}
    b.mark_gap()
    closed = b.on_ticks(ticks([(0, 2.1, 102.0, 1.0)]))
    assert closed[0].flags[0] == FLAG_GAP


def test_a_gap_marker_flags_the_bar_open_when_it_arrives_and_the_bar_its_hole_runs_into():
    def flags_of(batches):
        b, out = builder(SimClock(T0), n=1), []
        for batch in batches:
            for cb in b.on_ticks(ticks(batch)):
                out += [(int((o - T0) // SEC), int(f)) for o, f in zip(cb.open_ns, cb.flags)]
        return out
    gap = (np.nan, np.nan, TICK_GAP)
    # one drain: a trade of bar 0, one of bar 1, the marker, one more of bar 1: bar 1 lost trades
    assert flags_of([[(0, 0.9, 100.0, 1.0), (0, 1.2, 101.0, 1.0), (0, 1.3) + gap, (0, 1.4, 102.0, 1.0)],
                     [(0, 2.1, 103.0, 1.0)]]) == [(0, 0), (1, FLAG_GAP)]
    # the hole from 0.9 s to the marker at 1.1 s runs across the bar boundary: both bars lost trades
    assert flags_of([[(0, 0.9, 100.0, 1.0)], [(0, 1.1) + gap, (0, 1.15, 101.0, 1.0)],
                     [(0, 2.1, 103.0, 1.0)]]) == [(0, FLAG_GAP), (1, FLAG_GAP)]


def test_only_owned_symbols_are_built():
    b = builder(SimClock(T0), owned=[True, False, True])
    b.on_ticks(ticks([(0, 0.1, 1.0, 1.0), (1, 0.1, 2.0, 1.0), (2, 0.1, 3.0, 1.0)]))
    assert b.open_ns.tolist() == [T0, -1, T0] and b.counters["in"] == 2


def test_same_ticks_same_bars_in_any_batching():
    """Deterministic: one batch or many give the same bars, equal to a plain group-by."""
    rng = np.random.default_rng(7)
    n = 2000
    sec = np.sort(rng.uniform(0, 60, n))
    rows = [(int(s), float(t), float(p), float(q)) for s, t, p, q in
            zip(rng.integers(0, 3, n), sec, 100 + rng.standard_normal(n).cumsum(), rng.uniform(0.1, 2, n))]
    tk = ticks(rows)

    def run(splits):
        b = builder(SimClock(T0))
        out = []
        for part in np.array_split(tk, splits):
            for c in b.on_ticks(part):
                out += [(int(i), int(t), o, h, l, cl, v) for i, t, o, h, l, cl, v in
                        zip(c.ids, c.open_ns, c.o, c.h, c.l, c.c, c.v)]
        return sorted(out)

    whole, pieces = run(1), run(37)
    assert whole == pieces
    expected = []
    for sid in range(3):
        mine = [r for r in rows if r[0] == sid]
        secs = sorted({int(r[1]) for r in mine})[:-1]                # the last bar stays open
        for s in secs:
            prices = [r[2] for r in mine if int(r[1]) == s]
            expected.append((sid, T0 + s * SEC, prices[0], max(prices), min(prices), prices[-1],
                             pytest.approx(sum(r[3] for r in mine if int(r[1]) == s))))
    assert whole == sorted(expected, key=lambda r: (r[0], r[1]))


def test_a_trade_dated_far_ahead_of_its_receipt_closes_nothing():
    """A broken venue clock a year ahead must not close a bar a year ahead (which would
    reject every later tick as late and move the market clock a year on)."""
    b = builder(SimClock(T0))
    year = 365 * 86400
    far = ticks([(0, year, 100.0, 1.0)])
    far["ts_origin_ns"] = T0                                   # received now
    b.on_ticks(ticks([(0, 0.1, 100.0, 1.0)]))
    assert b.on_ticks(far) == [] and b.counters["rejected"] == 1
    assert b.market_ns == T0 + int(0.1 * SEC)                  # the market clock did not jump
    closed = b.on_ticks(ticks([(0, 1.2, 101.0, 1.0)]))
    assert len(closed) == 1 and closed[0].open_ns[0] == T0     # later ticks still make bars
