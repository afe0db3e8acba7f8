"""The paper broker (workers/execution/broker.py): synthetic books for every rule,
then real Binance data (tests/data) replayed through it. Time is a SimClock."""
from __future__ import annotations

import csv
import math
from bisect import bisect_right

import numpy as np
import pytest

from pipeline.clock import SimClock
from shm.records import (ORDER_LIMIT, ORDER_MARKET, SIDE_BUY, SIDE_SELL, TIF_FOK, TIF_GTC,
                         TIF_IOC, TIF_POST_ONLY)
from workers.execution.broker import MAKER, TAKER, BrokerEvent, LatencyModel, PaperBroker

from conftest import data_file

DEPTH = data_file("orderbook/binance-usdm_BTCUSDT_depth-snap_2022-11-01.csv")
TRADES = data_file("trades/binance_BTC-USDT_trades_2021-01-08.csv")
QUOTES = data_file("quotes/binance_BTC-USDT_bookticker_2021-01-08.csv")
FEES = {"binance": (2.0, 5.0), "upbit": (-1.0, 10.0)}
MS = 1_000_000


def make(latency: LatencyModel | None = None, slippage_bps: float = 0.0):
    clock = SimClock(0)
    return clock, PaperBroker(clock, FEES, latency or LatencyModel(), slippage_bps)


def lv(*rows) -> np.ndarray:
    return np.array(rows, float).reshape(-1, 2)


def at(clock: SimClock, broker: PaperBroker, t: int) -> list[BrokerEvent]:
    clock.set(t)
    return broker.poll()


def kinds(events) -> list[str]:
    return [e.kind for e in events]


def fills(events) -> list[tuple[float, float]]:
    return [(e.price, e.qty) for e in events if e.kind == "fill"]


ASKS = lv([100, 1], [101, 2], [102, 3], [103, 5])
BIDS = lv([99, 1], [98, 2], [97, 3])


# -- taking liquidity ----------------------------------------------------------------------------
def test_market_buy_walks_three_levels_at_their_prices_and_pays_the_taker_fee():
    clock, b = make()
    b.on_book(7, BIDS, ASKS, 0)
    b.submit("m1", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 4.5)
    ev = at(clock, b, 0)
    assert kinds(ev) == ["ack", "fill", "fill", "fill"]
    assert fills(ev) == [(100.0, 1.0), (101.0, 2.0), (102.0, 1.5)]
    f = [e for e in ev if e.kind == "fill"]
    vwap = sum(e.price * e.qty for e in f) / sum(e.qty for e in f)
    assert vwap == pytest.approx((100 * 1 + 101 * 2 + 102 * 1.5) / 4.5, rel=1e-15)
    assert [e.liquidity for e in f] == [TAKER] * 3
    assert [e.fee for e in f] == pytest.approx([100 * 5e-4, 202 * 5e-4, 153 * 5e-4], rel=1e-12)
    assert [e.leaves_qty for e in f] == [3.5, 1.5, 0.0]
    assert [e.fill_id for e in f] == ["m1:1", "m1:2", "m1:3"]


def test_taken_levels_stay_taken_until_the_book_shows_less():
    """Our own trades are never in a paper book: the second order meets the depleted
    levels, and so does a later book that still shows what we already took."""
    clock, b = make()
    b.on_book(7, BIDS, ASKS, 0)
    b.submit("m1", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 4.5)
    b.submit("m2", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 2.0)
    ev = at(clock, b, 0)
    assert fills([e for e in ev if e.client_order_id == "m2"]) == [(102.0, 1.5), (103.0, 0.5)]
    b.on_book(7, BIDS, ASKS, 10)                     # the same book again: nothing new at 100..102
    b.submit("m3", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 1.0)
    assert fills(at(clock, b, 10)) == [(103.0, 1.0)]
    # 101 shows 0.5, less than the 2 we took: that may be what is left of our lot, so
    # nothing there; when it grows to 3, what is beyond the 0.5 is new
    b.on_book(7, BIDS, lv([101, 0.5], [102, 3], [103, 5]), 20)
    b.submit("m4", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 1.0)
    assert fills(at(clock, b, 20)) == [(103.0, 1.0)]
    b.on_book(7, BIDS, lv([101, 3], [102, 3], [103, 5]), 25)
    b.submit("m4b", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 3.0)
    assert fills(at(clock, b, 25)) == [(101.0, 2.5), (103.0, 0.5)]
    # 100 was gone and came back: a new lot; 102 shows 1 (< 3 taken): nothing left there
    b.on_book(7, BIDS, lv([100, 0.25], [102, 1], [103, 6]), 30)
    b.submit("m5", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 1.0)
    assert fills(at(clock, b, 30)) == [(100.0, 0.25), (103.0, 0.75)]     # 103: 6 shown, 3 ours


def test_market_order_larger_than_the_book_fills_partially_and_the_rest_expires():
    clock, b = make()
    b.on_book(7, BIDS, lv([100, 1], [101, 2]), 0)
    b.submit("m1", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_GTC, 5.0)   # GTC taken as IOC
    ev = at(clock, b, 0)
    assert kinds(ev) == ["ack", "fill", "fill", "expired"]
    assert ev[-1].qty == 2.0 and "ran out" in ev[-1].reason
    b.submit("m2", 8, "binance", SIDE_SELL, ORDER_MARKET, TIF_IOC, 1.0)   # no book at all
    ev = at(clock, b, 0)
    assert kinds(ev) == ["ack", "expired"] and ev[-1].reason == "no book" and ev[-1].qty == 1.0


def test_top_of_book_only_fills_the_top_size_with_slippage_and_expires_the_rest():
    clock, b = make(slippage_bps=10.0)
    b.on_quote(7, 99.0, 1.0, 100.0, 0.5, 0)
    b.submit("b1", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 2.0)
    b.submit("s1", 7, "binance", SIDE_SELL, ORDER_MARKET, TIF_IOC, 0.4)
    ev = at(clock, b, 0)
    buy = [e for e in ev if e.client_order_id == "b1"]
    assert fills(buy) == [(pytest.approx(100.1, rel=1e-15), 0.5)]
    assert buy[-1].kind == "expired" and buy[-1].qty == 1.5 and "top of book" in buy[-1].reason
    assert fills([e for e in ev if e.client_order_id == "s1"]) == [(pytest.approx(98.901, rel=1e-15), 0.4)]
    # a crossing limit never fills past its own price, slippage or not
    b.on_quote(7, 99.0, 1.0, 100.0, 1.0, 1)          # 0.5 more than we took
    b.submit("b2", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_IOC, 0.2, 100.05)
    assert fills(at(clock, b, 1)) == [(100.05, 0.2)]


def _carry_reference(taken: dict, levels: list, side: int) -> dict:
    """The carry rule written plainly: a shown level keeps at most what it shows, a level
    inside the shown range that it no longer shows is forgotten, one beyond it is kept."""
    shown = dict(levels)
    last = levels[-1][0] if levels else None
    beyond = (lambda p: last is None or (p < last if side == SIDE_BUY else p > last))
    return {p: (min(q, shown[p]) if p in shown else q) for p, q in taken.items() if p in shown or beyond(p)}


def test_what_was_taken_carries_into_new_books_by_the_rule_however_many_levels_pile_up():
    """`_carry_taken` visits only the shown range of its ordered prices: on random books and
    takes (many levels piled up beyond the range, as a long trend leaves them) it keeps
    exactly what the plain rule keeps."""
    from workers.execution.broker import _carry_taken, _Taken
    rng = np.random.default_rng(3)
    for _ in range(2000):
        side = SIDE_BUY if rng.random() < 0.5 else SIDE_SELL
        grid = np.round(np.arange(90.0, 110.0, 0.5), 2).tolist()
        taken = {float(p): float(rng.uniform(0.1, 2)) for p in rng.choice(grid, int(rng.integers(0, 30)), replace=False)}
        n = int(rng.integers(0, 6))
        start = int(rng.integers(0, len(grid) - 6))
        prices = grid[start:start + n]
        levels = [(p, float(rng.choice([rng.uniform(0.1, 2), math.inf]))) for p in
                  (prices[::-1] if side == SIDE_BUY else prices)]        # best first
        t = _Taken(taken)
        out = _carry_taken(t, levels, side)
        assert dict(out) == _carry_reference(taken, levels, side)
        assert out.prices == sorted(out)
        out[100.25] = 1.0                                   # a new level keeps the order
        assert out.prices == sorted(out)


# -- resting orders -----------------------------------------------------------------------------
def test_resting_limit_fills_only_from_trades_printing_through_partially_then_fully():
    clock, b = make()
    b.on_book(7, lv([99, 5]), lv([101, 5]), 0)
    b.submit("l1", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 2.0, 100.0)
    assert kinds(at(clock, b, 0)) == ["ack"]
    b.on_trade(7, 100.5, 3.0, SIDE_SELL, 1)         # above the price
    b.on_trade(7, 99.5, 3.0, SIDE_BUY, 2)           # own-side aggressor: the book's business
    assert at(clock, b, 2) == []
    b.on_trade(7, 99.5, 0.5, SIDE_SELL, 3)
    ev = at(clock, b, 3)
    assert fills(ev) == [(100.0, 0.5)] and ev[0].liquidity == MAKER and ev[0].leaves_qty == 1.5
    assert ev[0].fee == pytest.approx(100 * 0.5 * 2e-4, rel=1e-12)
    b.on_trade(7, 99.0, 3.0, SIDE_SELL, 4)
    ev = at(clock, b, 4)
    assert fills(ev) == [(100.0, 1.5)] and ev[0].leaves_qty == 0.0 and ev[0].fill_id == "l1:2"
    b.on_trade(7, 98.0, 3.0, SIDE_SELL, 5)          # filled: nothing more
    assert at(clock, b, 5) == []


def test_at_its_price_a_resting_order_waits_for_the_queue_ahead():
    clock, b = make()
    b.on_book(7, lv([100, 3], [99, 1]), lv([101, 5]), 0)
    b.submit("q1", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 1.0, 100.0)
    at(clock, b, 0)
    b.on_trade(7, 100.0, 2.0, SIDE_SELL, 1)         # 3 ahead: 1 left
    assert at(clock, b, 1) == []
    b.on_trade(7, 100.0, 1.5, SIDE_SELL, 2)
    assert fills(at(clock, b, 2)) == [(100.0, 0.5)]
    # a later book showing less at the price means fewer ahead
    b.on_book(7, lv([99, 3], [98, 1]), lv([101, 5]), 3)
    b.submit("q2", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 1.0, 99.0)
    at(clock, b, 3)
    b.on_book(7, lv([99, 0.5], [98, 1]), lv([101, 5]), 4)
    b.on_trade(7, 99.0, 0.7, SIDE_SELL, 5)          # q1 at 100 takes 0.5 first (better price),
    ev = at(clock, b, 5)                            # the other 0.2 go to q2's queue (0.3 left)
    assert [(e.client_order_id, e.qty) for e in ev] == [("q1", 0.5)]
    b.on_trade(7, 99.0, 0.7, SIDE_SELL, 6)          # 0.3 to the queue, 0.4 for q2
    assert fills(at(clock, b, 6)) == [(99.0, pytest.approx(0.4, rel=1e-12))]


def test_behind_a_top_of_book_the_queue_is_unknown_so_only_trades_through_fill():
    clock, b = make()
    b.on_quote(7, 100.0, 1.0, 101.0, 1.0, 0)
    b.submit("q", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 1.0, 99.5)
    at(clock, b, 0)
    b.on_trade(7, 99.5, 50.0, SIDE_SELL, 1)
    assert at(clock, b, 1) == []
    b.on_trade(7, 99.4, 0.3, SIDE_SELL, 2)
    assert fills(at(clock, b, 2)) == [(99.5, 0.3)]


def test_opposite_side_crossing_fills_the_resting_order_once_per_lot():
    clock, b = make()
    b.on_book(7, lv([99, 1]), lv([101, 1]), 0)
    b.submit("c", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 2.0, 100.0)
    at(clock, b, 0)
    crossed = lv([99.5, 0.5], [100, 1], [100.5, 3])
    b.on_book(7, lv([99, 1]), crossed, 1)
    ev = at(clock, b, 1)
    assert fills(ev) == [(100.0, 0.5), (100.0, 1.0)] and {e.liquidity for e in ev} == {MAKER}
    b.on_book(7, lv([99, 1]), crossed, 2)           # the same lots again: already ours
    assert at(clock, b, 2) == []
    b.on_book(7, lv([99, 1]), lv([99.8, 2]), 3)     # a new lot
    ev = at(clock, b, 3)
    assert fills(ev) == [(100.0, 0.5)] and ev[0].leaves_qty == 0.0


# -- cancel -------------------------------------------------------------------------------------
def test_cancel_before_a_fill_takes_the_order_off_the_book():
    clock, b = make(LatencyModel(submit_to_ack_ns=MS))
    b.on_book(7, lv([99, 1]), lv([101, 1]), 0)
    b.submit("x", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 1.0, 100.0)
    clock.set(5 * MS)
    b.cancel("x")
    b.on_trade(7, 99.0, 5.0, SIDE_SELL, 6 * MS + 1)  # after the cancel reached the venue
    ev = at(clock, b, 7 * MS)
    assert kinds(ev) == ["ack", "cancelled"]
    assert ev[1].ts_ns == 6 * MS and ev[1].qty == 1.0


def test_a_fill_before_the_cancel_arrives_wins_the_race():
    clock, b = make(LatencyModel(submit_to_ack_ns=MS, ack_to_fill_ns=MS // 2))
    b.on_book(7, lv([99, 1]), lv([101, 1]), 0)
    b.submit("x", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 1.0, 100.0)
    b.submit("y", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 3.0, 100.0)
    clock.set(5 * MS)
    b.cancel("x")
    b.cancel("y")
    b.on_trade(7, 99.0, 2.0, SIDE_SELL, 5 * MS + 10)   # in flight: the cancels lose
    ev = at(clock, b, 7 * MS)
    x = [e for e in ev if e.client_order_id == "x"]
    y = [e for e in ev if e.client_order_id == "y"]
    assert kinds(x) == ["ack", "fill", "reject"] and x[2].reason == "order not open (filled)"
    assert x[1].ts_ns == 5 * MS + 10 + MS // 2
    assert kinds(y) == ["ack", "fill", "cancelled"] and y[1].qty == 1.0 and y[2].qty == 2.0
    assert x[2].ts_ns == y[2].ts_ns == 6 * MS
    clock.set(8 * MS)
    b.cancel("y")                                    # twice: the venue says it is not open
    assert kinds(at(clock, b, 9 * MS)) == ["reject"]


def test_a_cancel_never_overtakes_its_order():
    clock, b = make(LatencyModel(submit_to_ack_ns=MS, jitter_ns=MS, seed=3))
    b.on_book(7, lv([99, 1]), lv([101, 1]), 0)
    for i in range(20):
        b.submit(i, 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 1.0, 100.0)
        b.cancel(i)
    ev = at(clock, b, 10 * MS)
    assert kinds(ev).count("cancelled") == 20 and kinds(ev).count("ack") == 20


# -- times in force -----------------------------------------------------------------------------
def test_ioc_takes_what_crosses_and_expires_the_rest():
    clock, b = make()
    b.on_book(7, BIDS, lv([100, 1], [101, 1]), 0)
    b.submit("i1", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_IOC, 3.0, 100.5)
    ev = at(clock, b, 0)
    assert kinds(ev) == ["ack", "fill", "expired"] and fills(ev) == [(100.0, 1.0)] and ev[2].qty == 2.0
    b.submit("i2", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_IOC, 1.0, 99.5)
    ev = at(clock, b, 0)
    assert kinds(ev) == ["ack", "expired"] and ev[1].qty == 1.0


def test_fok_fills_all_at_once_or_is_killed_untouched():
    clock, b = make()
    b.on_book(7, BIDS, lv([100, 1], [101, 1], [102, 5]), 0)
    b.submit("f1", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_FOK, 3.0, 101.0)
    ev = at(clock, b, 0)
    assert kinds(ev) == ["ack", "expired"] and ev[1].qty == 3.0 and "fill or kill" in ev[1].reason
    b.submit("f2", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_FOK, 2.0, 101.0)   # the kill took nothing
    assert fills(at(clock, b, 0)) == [(100.0, 1.0), (101.0, 1.0)]
    b.submit("f3", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_FOK, 6.0)
    assert kinds(at(clock, b, 0)) == ["ack", "expired"]
    b.submit("f4", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_FOK, 5.0)
    assert fills(at(clock, b, 0)) == [(102.0, 5.0)]


def test_post_only_is_rejected_when_it_would_take_and_rests_otherwise():
    clock, b = make()
    b.on_book(7, BIDS, ASKS, 0)
    b.submit("p1", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_POST_ONLY, 1.0, 100.0)   # touches
    ev = at(clock, b, 0)
    assert kinds(ev) == ["reject"] and "post-only" in ev[0].reason
    b.submit("p2", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_POST_ONLY, 1.0, 99.5)
    assert kinds(at(clock, b, 0)) == ["ack"]
    b.on_trade(7, 99.0, 1.0, SIDE_SELL, 1)
    ev = at(clock, b, 1)
    assert fills(ev) == [(99.5, 1.0)] and ev[0].liquidity == MAKER


# -- latency ------------------------------------------------------------------------------------
def test_nothing_happens_before_the_ack_and_the_order_meets_the_book_of_then():
    lat = LatencyModel(submit_to_ack_ns=10 * MS, ack_to_fill_ns=2 * MS)
    clock, b = make(lat)
    b.on_book(7, BIDS, ASKS, 0)
    b.submit("m", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 1.0)
    b.on_book(7, BIDS, lv([104, 0.4], [105, 2]), 4 * MS)        # moved while the order flew
    assert at(clock, b, 10 * MS - 1) == []
    b.on_book(7, BIDS, lv([106, 9]), 10 * MS)                    # at the ack time: met too
    ev = at(clock, b, 10 * MS)
    assert kinds(ev) == ["ack"] and ev[0].ts_ns == 10 * MS
    assert at(clock, b, 12 * MS - 1) == []
    ev = at(clock, b, 12 * MS)
    assert fills(ev) == [(106.0, 1.0)] and ev[0].ts_ns == 12 * MS
    # a resting order does not see trades printed before it was live
    b.submit("l", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 1.0, 103.0)   # live at 22 ms
    b.on_trade(7, 102.0, 5.0, SIDE_SELL, 21 * MS)
    b.on_trade(7, 102.0, 5.0, SIDE_SELL, 22 * MS)                 # at the ack time: before it
    assert kinds(at(clock, b, 30 * MS)) == ["ack"]
    b.on_trade(7, 102.0, 0.25, SIDE_SELL, 31 * MS)
    assert at(clock, b, 33 * MS - 1) == []
    assert fills(at(clock, b, 33 * MS)) == [(103.0, 0.25)]


def test_jitter_is_deterministic_and_only_adds_delay():
    def run(seed: int) -> list[BrokerEvent]:
        lat = LatencyModel(submit_to_ack_ns=MS, ack_to_fill_ns=MS, jitter_ns=MS, seed=seed)
        clock, b = make(lat)
        b.on_book(7, BIDS, ASKS, 0)
        for i in range(10):
            b.submit(f"o{i}", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 0.5)
        return at(clock, b, 10 * MS)

    a = run(1)
    assert a == run(1) and a != run(2)
    assert all(MS <= e.ts_ns <= 2 * MS for e in a if e.kind == "ack")
    assert all(e.ts_ns >= 2 * MS for e in a if e.kind == "fill")
    ids = [e.fill_id for e in a if e.kind == "fill"]
    assert len(ids) == len(set(ids)) == 10
    with pytest.raises(ValueError):
        LatencyModel(submit_to_ack_ns=-1)


# -- fees ---------------------------------------------------------------------------------------
def test_fees_are_maker_or_taker_bps_of_the_notional_per_venue():
    clock, b = make()
    b.on_book(7, lv([99, 10]), lv([100, 10]), 0)
    b.submit("t_bin", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 2.0)
    b.submit("t_up", 7, "upbit", SIDE_BUY, ORDER_MARKET, TIF_IOC, 2.0)
    b.submit("m_bin", 7, "binance", SIDE_SELL, ORDER_LIMIT, TIF_GTC, 1.0, 105.0)
    b.submit("m_up", 7, "upbit", SIDE_SELL, ORDER_LIMIT, TIF_GTC, 1.0, 105.0)
    ev = at(clock, b, 0)
    b.on_trade(7, 106.0, 5.0, SIDE_BUY, 1)
    ev += at(clock, b, 1)
    fee = {e.client_order_id: (e.liquidity, e.fee) for e in ev if e.kind == "fill"}
    assert fee == {"t_bin": (TAKER, pytest.approx(200 * 5e-4, rel=1e-12)),
                   "t_up": (TAKER, pytest.approx(200 * 10e-4, rel=1e-12)),
                   "m_bin": (MAKER, pytest.approx(105 * 2e-4, rel=1e-12)),
                   "m_up": (MAKER, pytest.approx(-105 * 1e-4, rel=1e-12))}   # a rebate


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, why", [
    (dict(qty=math.nan), "quantity"), (dict(qty=-1.0), "quantity"), (dict(qty=0.0), "quantity"),
    (dict(qty=math.inf), "quantity"), (dict(qty="lots"), "quantity"),
    (dict(limit_price=math.nan), "limit price"), (dict(limit_price=-5.0), "limit price"),
    (dict(limit_price=0.0), "limit price"), (dict(limit_price=math.inf), "limit price"),
    (dict(venue="nowhere"), "venue"), (dict(side=0), "side"), (dict(order_type=9), "order type"),
    (dict(tif=0), "time in force"), (dict(symbol_id=-1), "symbol"),
    (dict(order_type=ORDER_MARKET, limit_price=100.0), "no limit price"),
    (dict(order_type=ORDER_MARKET, limit_price=math.nan, tif=TIF_POST_ONLY), "post-only"),
    (dict(client_order_id=""), "client order id"), (dict(client_order_id=["x"]), "client order id"),
])
def test_bad_orders_are_rejected_at_once_with_a_reason(kw, why):
    clock, b = make(LatencyModel(submit_to_ack_ns=MS))
    b.on_book(7, BIDS, ASKS, 0)
    args = dict(client_order_id="bad", symbol_id=7, venue="binance", side=SIDE_BUY,
                order_type=ORDER_LIMIT, tif=TIF_GTC, qty=1.0, limit_price=100.0) | kw
    b.submit(**args)
    ev = at(clock, b, 0)
    assert kinds(ev) == ["reject"] and why in ev[0].reason and ev[0].ts_ns == 0
    assert at(clock, b, 5 * MS) == []                 # nothing reached the venue


def test_duplicate_ids_and_unknown_cancels_are_rejected():
    clock, b = make()
    b.on_book(7, BIDS, ASKS, 0)
    b.submit("a", 7, "binance", SIDE_BUY, ORDER_LIMIT, TIF_GTC, 1.0, 90.0)
    b.submit("a", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 1.0)
    b.cancel("nope")
    b.cancel(["unhashable"])
    ev = at(clock, b, 0)
    assert [(e.kind, e.reason) for e in ev] == [
        ("reject", "duplicate client order id"), ("reject", "unknown client order id"),
        ("reject", "unknown client order id"), ("ack", "")]


def test_malformed_market_data_is_ignored_and_counted():
    clock, b = make()
    assert b.on_book(7, BIDS, ASKS, 0)
    assert not b.on_book(7, lv([99, math.nan]), ASKS, 1)
    assert not b.on_book(7, lv([98, 1], [99, 1]), ASKS, 2)       # bids not best first
    assert not b.on_book(7, lv([100.5, 1]), ASKS, 3)             # crossed
    assert not b.on_book(7, lv([-1, 1]), ASKS, 4)
    assert not b.on_book(7, np.zeros((2, 3)), ASKS, 5)
    assert not b.on_trade(7, math.nan, 1.0, SIDE_SELL, 6)
    assert not b.on_trade(7, 100.0, -1.0, SIDE_SELL, 6)
    assert not b.on_trade(7, 100.0, 1.0, 0, 6)
    assert b.ignored == {"books": 5, "trades": 3}
    b.submit("m", 7, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 1.0)   # the last good book
    assert fills(at(clock, b, 7)) == [(100.0, 1.0)]


# -- real Binance data --------------------------------------------------------------------------
def depth_snapshot() -> tuple[np.ndarray, np.ndarray, int]:
    """The L2 book of the snapshot rows: (bids best first, asks best first, ts ns)."""
    rows = [r for r in csv.DictReader(DEPTH.open()) if r["update_type"] == "snap"]
    bids = sorted(((float(r["price"]), float(r["qty"])) for r in rows if r["side"] == "b"), reverse=True)
    asks = sorted((float(r["price"]), float(r["qty"])) for r in rows if r["side"] == "a")
    return lv(*bids), lv(*asks), int(rows[0]["timestamp"]) * MS


def test_real_l2_book_market_sell_walks_three_levels_then_a_huge_one_runs_it_out():
    bids, asks, ts = depth_snapshot()
    assert len(bids) == 100 and len(asks) == 0                  # this snapshot holds bids only
    clock = SimClock(ts)
    b = PaperBroker(clock, FEES, LatencyModel(), 0.0)
    b.on_book(1, bids, asks, ts)
    qty = float(bids[0, 1] + bids[1, 1]) + 0.004                # into the third level
    b.submit("s", 1, "binance", SIDE_SELL, ORDER_MARKET, TIF_IOC, qty)
    got = fills(at(clock, b, ts))
    want = [(bids[0, 0], bids[0, 1]), (bids[1, 0], bids[1, 1])]
    assert got[:2] == want and got[2][0] == bids[2, 0] and got[2][1] == pytest.approx(0.004, rel=1e-9)
    vwap = sum(p * q for p, q in got) / sum(q for _, q in got)
    assert vwap == pytest.approx(sum(p * q for p, q in want + [(bids[2, 0], 0.004)]) / qty, rel=1e-14)
    total = float(bids[:, 1].sum())
    b.submit("big", 1, "binance", SIDE_SELL, ORDER_MARKET, TIF_IOC, total + 10)
    ev = at(clock, b, ts)
    got = fills(ev)
    assert len(got) == 98 and got[0] == (bids[2, 0], pytest.approx(bids[2, 1] - 0.004, rel=1e-9))
    assert sum(q for _, q in got) == pytest.approx(total - qty, rel=1e-12)
    assert ev[-1].kind == "expired" and ev[-1].qty == pytest.approx(qty + 10, rel=1e-12)


def replay_events() -> list[tuple[int, str, tuple]]:
    """Trades and book-ticker quotes of the same 46 s, in time order (a quote before a
    trade of the same millisecond)."""
    out = []
    for r in csv.DictReader(QUOTES.open()):
        out.append((int(r["timestamp_ms"]) * MS, "q", (float(r["bid"]), float(r["bid_size"]),
                                                       float(r["ask"]), float(r["ask_size"]))))
    for r in csv.DictReader(TRADES.open()):
        side = SIDE_SELL if r["buyer_maker"] == "True" else SIDE_BUY     # the taker's side
        out.append((int(r["timestamp_ms"]) * MS, "t", (float(r["price"]), float(r["quantity"]), side)))
    return sorted(out, key=lambda e: (e[0], e[1]))


def feed(b: PaperBroker, events) -> None:
    for ts, kind, x in events:
        if kind == "q":
            b.on_quote(1, *x, ts)
        else:
            b.on_trade(1, *x, ts)


def test_real_trades_and_quotes_resting_orders_fill_only_where_the_market_went_through():
    """Resting orders half a cent off the price grid (no queue question): each fill
    must be explained by a trade through the price or a quote crossing it, strictly
    after the order was live, and the first fill is exactly the first such event."""
    events = replay_events()
    lat = LatencyModel(submit_to_ack_ns=50 * MS, ack_to_fill_ns=5 * MS)
    t0 = next(ts for ts, kind, _ in events if kind == "q")
    first = next(x for ts, kind, x in events if kind == "q")
    clock = SimClock(t0)
    b = PaperBroker(clock, FEES, lat, 1.0)
    feed(b, [e for e in events if e[0] <= t0])
    orders = {"sell": (SIDE_SELL, round(first[2] + 30, 2) + 0.005, 0.7),
              "buy": (SIDE_BUY, round(first[0] - 1, 2) - 0.005, 0.3)}
    for coid, (side, price, qty) in orders.items():
        b.submit(coid, 1, "binance", side, ORDER_LIMIT, TIF_GTC, qty, price)
    live = t0 + 50 * MS
    later = [e for e in events if e[0] > t0]
    feed(b, later)
    clock.set(later[-1][0] + 10 * MS)
    out = b.poll()
    for coid, (side, price, qty) in orders.items():
        mine = [e for e in out if e.client_order_id == coid]
        assert mine[0].kind == "ack" and mine[0].ts_ns == live
        got = [e for e in mine if e.kind == "fill"]
        assert got, f"{coid} never filled: pick another price"
        assert {e.price for e in got} == {price} and {e.liquidity for e in got} == {MAKER}
        assert sum(e.qty for e in got) <= qty * (1 + 1e-12)

        def through(ts, kind, x):
            if ts <= live:
                return 0.0
            if kind == "t":
                p, q, aggressor = x
                return q if aggressor == -side and (p > price if side == SIDE_SELL else p < price) else 0.0
            bid, bid_q, ask, ask_q = x
            return (bid_q if bid > price else 0.0) if side == SIDE_SELL else (ask_q if ask < price else 0.0)

        for e in got:                       # every fill has a cause at its match time
            assert any(ts == e.ts_ns - 5 * MS and through(ts, kind, x) > 0 for ts, kind, x in events)
        ts1, q1 = next((ts, through(ts, k, x)) for ts, k, x in events if through(ts, k, x) > 0)
        assert got[0].ts_ns == ts1 + 5 * MS and got[0].qty == pytest.approx(min(qty, q1), rel=1e-12)


def test_real_book_ticker_market_order_meets_the_quote_in_force_at_its_ack():
    events = replay_events()
    quotes = [(ts, x) for ts, kind, x in events if kind == "q"]
    times = [ts for ts, _ in quotes]
    lat = LatencyModel(submit_to_ack_ns=30 * MS, ack_to_fill_ns=MS)
    checked = 0
    for i in range(0, len(quotes) - 1, 37):          # a spread of moments over the 46 s
        t = quotes[i][0]
        clock = SimClock(t)
        b = PaperBroker(clock, FEES, lat, 2.0)
        feed(b, [e for e in events if e[0] <= t])
        b.submit("m", 1, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 0.05)
        feed(b, [e for e in events if t < e[0] <= t + 30 * MS])
        clock.set(t + 31 * MS)
        ev = b.poll()
        bid, bid_q, ask, ask_q = quotes[bisect_right(times, t + 30 * MS) - 1][1]
        got = fills(ev)
        assert got == [(pytest.approx(ask * (1 + 2e-4), rel=1e-15), pytest.approx(min(0.05, ask_q), rel=1e-12))]
        assert got[0][0] > ask                      # never better than the quote it met
        if ask_q < 0.05:
            assert ev[-1].kind == "expired"
        checked += 1
    assert checked >= 10
