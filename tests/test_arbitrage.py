"""Kimchi premium on executable prices (workers/strategy/arbitrage.py): book walks,
both directions of a route with fees, FX, Upbit's dated tick table and Binance's
filters, and refusals of bad books. Arithmetic is checked against cases computed
by hand (written out in the comments): small literal books that run on a fresh
clone, and the simultaneous real Upbit and Binance books of 2025-08-23 (cut into
tests/data from ../shared/data/orderbook, with FRED's August 2025 fixings).

The real books' ``timestamp`` is naive Korean time (README of the data set): it is
read as KST (UTC+9) and turned into UTC ns; 2025-08-24T06:05:39 KST is
2025-08-23 21:05:39 UTC, a Saturday. FX: the data set has no USDT/KRW series, only
USD/KRW (FRED DEXKOUS, the noon New York buying rate). The test takes the last
fixing published before the snapshot (a fixing dated D counted as known from
17:00 UTC of D, after noon in New York): 2025-08-22, 1,381.71 KRW per USD, used
as KRW per USDT (USDT taken at par with USD).
"""
from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ExecutionConfig, VenueFees, fees_of
from workers.execution.venue_rules import (KST, NOTIONAL_BELOW_MIN, Denial, SymbolRules,
                                           binance_rules, upbit_rules)
from workers.strategy import arbitrage as arb
from workers.strategy.arbitrage import Book, Premium, VenueBook, route_premium, walk

from conftest import data_file

D = Decimal
NAN = float("nan")
INF = float("inf")

# taker fees: Upbit KRW 5 bps (facts/venue_rules.md, real payloads), Binance spot 10 bps
# (before discounts), read the way the pipeline reads them: [[execution.venue_fees]]
EXEC = ExecutionConfig(venue_fees=[VenueFees(venue="upbit", taker_bps=5.0, maker_bps=5.0),
                                   VenueFees(venue="binance", taker_bps=10.0, maker_bps=2.0)])
UPBIT_FEE = fees_of(EXEC, "upbit")[1]
BINANCE_FEE = fees_of(EXEC, "binance")[1]

# the real books and the FRED fixings of August 2025, cut from ../shared/data (tests/data/SOURCES.md)
UPBIT_FILE = data_file("orderbook/upbit_BTC-KRW_top20_snapshots_2025-08-23T2103Z.jsonl")
BINANCE_FILE = data_file("orderbook/binance_BTC-USDT_top20_snapshots_2025-08-23T2105Z.jsonl")
FRED_FILE = data_file("fx/usdkrw_1d_fred_DEXKOUS.csv")


def ns(y, m, d, h=12, tz=KST) -> int:
    return int(datetime(y, m, d, h, tzinfo=tz).timestamp()) * 1_000_000_000


# rules as on the books' date: Upbit from its dated table, Binance BTCUSDT's filters
# (tick 0.01, step 0.00001; minimum notional 5 USDT on the NOTIONAL filter)
AT = ns(2025, 8, 24)
UPBIT_BTC = upbit_rules(["KRW-BTC"], AT)["KRW-BTC"]
BINANCE_BTC = SymbolRules(symbol="BTCUSDT", lot_step=D("0.00001"), tick_size=D("0.01"),
                          min_qty=D("0.00001"), min_notional=D("5"))


def upbit(bids, asks, rules=UPBIT_BTC, ts_ns=None, fee=UPBIT_FEE) -> VenueBook:
    return VenueBook("upbit", Book.from_levels(bids, asks, ts_ns), rules, fee)


def binance(bids, asks, rules=BINANCE_BTC, ts_ns=None, fee=BINANCE_FEE) -> VenueBook:
    return VenueBook("binance", Book.from_levels(bids, asks, ts_ns), rules, fee)


def denied(result, code: str) -> bool:
    return isinstance(result, Denial) and result.code == code and bool(result.reason)


# -- walking a side --------------------------------------------------------------------------
def test_walk_buys_level_by_level_at_the_volume_weighted_price():
    px, sz = np.array([100.0, 101.0, 103.0]), np.array([1.0, 2.0, 5.0])
    # 2.5 = 1 @ 100 + 1.5 @ 101 = 100 + 151.5 = 251.5 -> 251.5 / 2.5 = 100.6
    w = walk(px, sz, 2.5, arb.ASKS)
    assert w.complete and w.filled == 2.5 and w.levels == 2 and w.worst_price == 101.0
    assert w.notional == pytest.approx(251.5, rel=1e-15)
    assert w.avg_price == pytest.approx(100.6, rel=1e-15)
    # within the first level: its price exactly
    assert walk(px, sz, 0.4, arb.ASKS).avg_price == 100.0
    # exactly the whole side: 100 + 202 + 515 = 817 over 8 = 102.125
    w = walk(px, sz, 8.0, arb.ASKS)
    assert w.complete and w.levels == 3 and w.avg_price == pytest.approx(102.125, rel=1e-15)


def test_walk_sells_into_bids_best_first():
    px, sz = np.array([99.0, 98.5, 97.0]), np.array([0.5, 0.5, 10.0])
    # 1.2 = 0.5 @ 99 + 0.5 @ 98.5 + 0.2 @ 97 = 49.5 + 49.25 + 19.4 = 118.15 -> 98.458333...
    w = walk(px, sz, 1.2, arb.BIDS)
    assert w.complete and w.worst_price == 97.0 and w.levels == 3
    assert w.avg_price == pytest.approx(118.15 / 1.2, rel=1e-14)


def test_walk_float_noise_of_a_cumulative_sum_still_fills():
    # 0.1 + 0.2 = 0.30000000000000004 > 0.3: the side holds 0.3, it fills 0.3
    w = walk(np.array([10.0, 11.0]), np.array([0.1, 0.2]), 0.3, arb.ASKS)
    assert w.complete and w.levels == 2 and w.avg_price == pytest.approx((1.0 + 2.2) / 0.3)


def test_thin_side_is_not_filled_and_gives_no_price():
    # the asks hold 1 + 2 = 3 of the 5 asked
    w = walk(np.array([100.0, 101.0]), np.array([1.0, 2.0]), 5.0, arb.ASKS)
    assert not w.complete
    assert w.filled == 3.0 and w.qty == 5.0
    assert w.notional == 302.0                  # what the 3 that exist cost: 100 + 202
    assert math.isnan(w.avg_price)              # no price for a quantity the book lacks


def test_walk_refuses_a_bad_side_and_a_bad_quantity():
    with pytest.raises(arb.BadBook) as e:
        walk(np.array([100.0, NAN]), np.array([1.0, 1.0]), 1.0, arb.ASKS)
    assert e.value.code == arb.BOOK_BAD_PRICE and "asks[1]" in str(e.value)
    with pytest.raises(arb.BadBook) as e:
        walk(np.array([]), np.array([]), 1.0, arb.BIDS)
    assert e.value.code == arb.BOOK_EMPTY
    for q in (0.0, -1.0, NAN, INF):
        with pytest.raises(ValueError, match=arb.BAD_QTY):
            walk(np.array([100.0]), np.array([1.0]), q, arb.ASKS)


# -- a route on literal books ------------------------------------------------------------------
# FX 1,000 KRW per USDT, Upbit taker 5 bps, Binance taker 10 bps
UP_BIDS = [[101_000_000.0, 0.5], [100_800_000.0, 1.5]]
UP_ASKS = [[101_100_000.0, 2.0]]
BN_BIDS = [[99_990.0, 3.0]]
BN_ASKS = [[100_000.0, 0.4], [100_050.0, 2.0]]


def test_korean_rich_route_sells_on_upbit_buys_on_binance():
    p = route_premium(upbit(UP_BIDS, UP_ASKS), binance(BN_BIDS, BN_ASKS), 1.0, 1000.0)
    assert isinstance(p, Premium)
    # sell 1 BTC on Upbit: 0.5 @ 101,000,000 + 0.5 @ 100,800,000 = 50,500,000 + 50,400,000
    #   = 100,900,000 KRW -> VWAP 100,900,000 KRW = 100,900 USDT at 1,000
    # buy 1 BTC on Binance: 0.4 @ 100,000 + 0.6 @ 100,050 = 40,000 + 60,030 = 100,030 USDT
    # gross = 100,900 / 100,030 - 1 = 870 / 100,030 = 86.9739 bps
    # after fees: sell 100,900 x 0.9995 = 100,849.55; buy 100,030 x 1.001 = 100,130.03
    # net = 100,849.55 / 100,130.03 - 1 = 719.52 / 100,130.03 = 71.8586 bps
    # profit = 1 x (100,849.55 - 100,130.03) = 719.52 USDT
    assert p.direction == arb.SELL_KRW and p.sell_venue == "upbit" and p.buy_venue == "binance"
    assert p.qty == 1.0
    assert p.sell_vwap == pytest.approx(100_900_000.0, rel=1e-14)
    assert p.sell_vwap_usdt == pytest.approx(100_900.0, rel=1e-14)
    assert p.buy_vwap == p.buy_vwap_usdt == pytest.approx(100_030.0, rel=1e-14)
    assert p.gross_bps == pytest.approx(870 / 100_030 * 1e4, rel=1e-10)
    assert p.gross_bps == pytest.approx(86.9739, abs=1e-4)
    assert p.net_bps == pytest.approx(719.52 / 100_130.03 * 1e4, rel=1e-10)
    assert p.net_bps == pytest.approx(71.8586, abs=1e-4)
    assert p.net_profit_usdt == pytest.approx(719.52, rel=1e-10)
    # the legs' limits: the deepest level walked, on tick
    assert p.sell_limit == D("100800000") and p.buy_limit == D("100050.00")
    assert p.sell_order.qty == p.buy_order.qty == D("1.00000")


def test_the_other_direction_is_priced_too():
    # sell 1 BTC on Binance at 99,990, buy it on Upbit at 101,100,000 KRW = 101,100 USDT
    # gross = 99,990 / 101,100 - 1 = -1,110 / 101,100 = -109.7923 bps
    # net = 99,990 x 0.999 / (101,100 x 1.0005) - 1 = 99,890.01 / 101,150.55 - 1
    #     = -1,260.54 / 101,150.55 = -124.6202 bps; profit -1,260.54 USDT
    q = D("1")
    p = arb.one_way(binance(BN_BIDS, BN_ASKS), upbit(UP_BIDS, UP_ASKS), q, 1.0, 1 / 1000.0,
                    arb.SELL_USDT, 1000.0)
    assert p.direction == arb.SELL_USDT and p.sell_venue == "binance"
    assert p.gross_bps == pytest.approx(-1110 / 101_100 * 1e4, rel=1e-10)
    assert p.net_bps == pytest.approx(-1260.54 / 101_150.55 * 1e4, rel=1e-9)
    assert p.net_bps == pytest.approx(-124.6202, abs=1e-4)
    assert p.net_profit_usdt == pytest.approx(-1260.54, rel=1e-9)


def test_binance_rich_route_sells_on_binance_buys_on_upbit():
    # sell 0.5 on Binance at 100,000; buy 0.5 on Upbit at 99,100,000 KRW = 99,100 USDT
    # gross = 100,000 / 99,100 - 1 = 900 / 99,100 = 90.8174 bps
    # after fees: 100,000 x 0.999 = 99,900; 99,100 x 1.0005 = 99,149.55; 750.45 a BTC
    # net = 750.45 / 99,149.55 = 75.6887 bps; profit 0.5 x 750.45 = 375.225 USDT
    p = route_premium(upbit([[99_000_000.0, 2]], [[99_100_000.0, 2]]),
                      binance([[100_000.0, 2]], [[100_010.0, 2]]), 0.5, 1000.0)
    assert p.direction == arb.SELL_USDT and p.sell_venue == "binance" and p.buy_venue == "upbit"
    assert p.gross_bps == pytest.approx(900 / 99_100 * 1e4, rel=1e-10)
    assert p.net_bps == pytest.approx(75.6887, abs=1e-4)
    assert p.net_profit_usdt == pytest.approx(375.225, rel=1e-10)
    assert p.buy_limit == D("99100000") and p.sell_limit == D("100000.00")


def test_quantity_floors_to_both_lot_steps_before_walking():
    # Upbit's step 0.00000001 then Binance's 0.00001: 0.123456789 -> 0.12345678 -> 0.12345
    p = route_premium(upbit(UP_BIDS, UP_ASKS), binance(BN_BIDS, BN_ASKS), 0.123456789, 1000.0)
    assert p.qty == 0.12345 and p.sell_order.qty == D("0.12345")
    # 0.12345 lies in both first levels: 101,000,000 KRW = 101,000 USDT against 100,000
    assert p.gross_bps == pytest.approx(100.0, rel=1e-10)
    # less than one Binance lot floors to nothing
    assert denied(route_premium(upbit(UP_BIDS, UP_ASKS), binance(BN_BIDS, BN_ASKS), 0.000009, 1000.0),
                  arb.BAD_QTY)


def test_upbit_tick_table_by_date_refuses_a_level_off_the_tick():
    # an asset at 1,234,500 KRW: tick 500 until 2025-07-30, 1,000 from 2025-07-31
    abc = SymbolRules(symbol="ABCUSDT", lot_step=D("0.001"), tick_size=D("0.1"))
    bids, asks = [[1_234_500.0, 10.0]], [[1_236_000.0, 10.0]]
    bn = binance([[1230.0, 10.0]], [[1230.5, 10.0]], rules=abc)
    before = upbit(bids, asks, rules=upbit_rules(["KRW-ABC"], ns(2025, 7, 30))["KRW-ABC"])
    after = upbit(bids, asks, rules=upbit_rules(["KRW-ABC"], ns(2025, 7, 31))["KRW-ABC"])
    # on 2025-07-30: sell 1 at 1,234,500 KRW = 1,234.5 USDT, buy at 1,230.5:
    # gross = 4 / 1,230.5 = 32.5071 bps
    p = route_premium(before, bn, 1.0, 1000.0)
    assert p.direction == arb.SELL_KRW and p.gross_bps == pytest.approx(4 / 1230.5 * 1e4, rel=1e-10)
    # from 2025-07-31 the bid is off Upbit's tick: that direction is refused ...
    r = arb.one_way(after, bn, D(1), 1 / 1000.0, 1.0, arb.SELL_KRW, 1000.0)
    assert denied(r, arb.BOOK_OFF_TICK) and "1235000" in r.reason
    # ... and the route is left with the other (1,236,000 on the 1,000 tick):
    # sell at 1,230.0, buy at 1,236.0: gross = -6 / 1,236 = -48.5437 bps
    p = route_premium(after, bn, 1.0, 1000.0)
    assert p.direction == arb.SELL_USDT and p.gross_bps == pytest.approx(-6 / 1236 * 1e4, rel=1e-10)


def test_thin_books_are_not_filled():
    # Upbit bids hold 2 BTC, Binance bids 3: 2.5 BTC can only be sold on Binance,
    # and Upbit's asks hold 2, so neither direction fills
    r = route_premium(upbit(UP_BIDS, UP_ASKS), binance(BN_BIDS, BN_ASKS), 2.5, 1000.0)
    assert denied(r, arb.BOOK_TOO_THIN)
    assert "upbit bids hold 2 of the 2.5" in r.reason and "upbit asks hold 2 of the 2.5" in r.reason
    # 1.9 BTC: Binance's one ask level (0.4) cannot be bought from, so only selling on
    # Binance and buying on Upbit is priced
    r = route_premium(upbit(UP_BIDS, [[101_100_000.0, 5.0]]), binance([[99_990.0, 5.0]], BN_ASKS[:1]),
                      1.9, 1000.0)
    assert isinstance(r, Premium) and r.direction == arb.SELL_USDT


def test_minimum_notional_is_the_venue_rules():
    # 0.00003 BTC at 159,508,000 KRW = 4,785.24 KRW: under Upbit's 5,000 KRW minimum
    up = upbit([[159_508_000.0, 1.0]], [[159_515_000.0, 1.0]])
    bn = binance([[115_279.25, 1.0]], [[115_279.26, 1.0]])
    assert denied(route_premium(up, bn, 0.00003, 1381.71), NOTIONAL_BELOW_MIN)
    assert isinstance(route_premium(up, bn, 0.0001, 1381.71), Premium)


# -- bad data: refused, each kind, on either venue ---------------------------------------------
GOOD_UP = (UP_BIDS, UP_ASKS)
BAD_BOOKS = [
    ("crossed", [[101_200_000.0, 1.0]], [[101_100_000.0, 1.0]], arb.BOOK_CROSSED),
    ("locked", [[101_100_000.0, 1.0]], [[101_100_000.0, 1.0]], arb.BOOK_CROSSED),
    ("zero size", [[101_000_000.0, 0.0]], UP_ASKS, arb.BOOK_BAD_SIZE),
    ("negative size", UP_BIDS, [[101_100_000.0, -1.0]], arb.BOOK_BAD_SIZE),
    ("NaN size", UP_BIDS, [[101_100_000.0, NAN]], arb.BOOK_BAD_SIZE),
    ("infinite size", [[101_000_000.0, INF]], UP_ASKS, arb.BOOK_BAD_SIZE),
    ("NaN price", [[NAN, 1.0]], UP_ASKS, arb.BOOK_BAD_PRICE),
    ("zero price", UP_BIDS + [[0.0, 1.0]], UP_ASKS, arb.BOOK_BAD_PRICE),
    ("negative price", UP_BIDS, [[-101_100_000.0, 1.0]], arb.BOOK_BAD_PRICE),
    ("infinite price", UP_BIDS, [[INF, 1.0]], arb.BOOK_BAD_PRICE),
    ("empty bids", [], UP_ASKS, arb.BOOK_EMPTY),
    ("empty asks", UP_BIDS, [], arb.BOOK_EMPTY),
    ("bids rising", list(reversed(UP_BIDS)), UP_ASKS, arb.BOOK_UNSORTED),
    ("asks repeated", UP_BIDS, UP_ASKS + UP_ASKS, arb.BOOK_UNSORTED),
]


@pytest.mark.parametrize("what,bids,asks,code", BAD_BOOKS, ids=[b[0] for b in BAD_BOOKS])
def test_bad_korean_book_is_refused(what, bids, asks, code):
    r = route_premium(upbit(bids, asks), binance(BN_BIDS, BN_ASKS), 0.1, 1000.0)
    assert denied(r, code) and r.reason.startswith("upbit:")


@pytest.mark.parametrize("what,bids,asks,code", BAD_BOOKS, ids=[b[0] for b in BAD_BOOKS])
def test_bad_binance_book_is_refused(what, bids, asks, code):
    scale = lambda levels: [[p / 1000.0, s] for p, s in levels]   # noqa: E731 (the same book in USDT)
    r = route_premium(upbit(*GOOD_UP), binance(scale(bids), scale(asks)), 0.1, 1000.0)
    assert denied(r, code) and r.reason.startswith("binance:")


def test_book_rows_need_a_price_and_a_size():
    b = Book.from_levels([[10.0, 1.0, 3]], [[11.0, 2.0, 1]])       # a count column is ignored
    assert b.bid_px.tolist() == [10.0] and b.ask_sz.tolist() == [2.0]
    with pytest.raises(arb.BadBook) as e:
        Book.from_levels([10.0, 1.0], [[11.0, 2.0]])
    assert e.value.code == arb.BOOK_SHAPE and "bids" in str(e.value)


def test_one_way_refuses_a_bad_book_too():
    r = arb.one_way(upbit([[NAN, 1.0]], UP_ASKS), binance(BN_BIDS, BN_ASKS), D("0.1"), 1 / 1000.0, 1.0,
                    arb.SELL_KRW, 1000.0)
    assert denied(r, arb.BOOK_BAD_PRICE) and r.reason.startswith("upbit: bids[0]")


def test_check_book_names_the_level():
    d = arb.check_book(Book.from_levels([[10.0, 1.0], [9.0, 0.0]], [[11.0, 1.0]]))
    assert d.code == arb.BOOK_BAD_SIZE and "bids[1]" in d.reason
    d = arb.check_side(np.array([1.0, 2.0]), np.array([1.0]), arb.ASKS)
    assert d.code == arb.BOOK_SHAPE
    assert arb.check_book(Book.from_levels(UP_BIDS, UP_ASKS)) is None


@pytest.mark.parametrize("fx", [0.0, -1380.0, NAN, INF, None, "1380", True])
def test_bad_fx_is_refused(fx):
    assert denied(route_premium(upbit(*GOOD_UP), binance(BN_BIDS, BN_ASKS), 0.1, fx), arb.BAD_FX)


@pytest.mark.parametrize("fee", [-1.0, 100.0, NAN])
def test_bad_fee_is_refused(fee):
    r = route_premium(upbit(*GOOD_UP, fee=fee), binance(BN_BIDS, BN_ASKS), 0.1, 1000.0)
    assert denied(r, arb.BAD_FEE)


@pytest.mark.parametrize("qty", [0.0, -0.1, NAN, INF])
def test_bad_quantity_is_refused(qty):
    assert denied(route_premium(upbit(*GOOD_UP), binance(BN_BIDS, BN_ASKS), qty, 1000.0), arb.BAD_QTY)


def test_books_taken_apart_in_time_are_refused():
    t = ns(2025, 8, 24)
    up, bn = upbit(*GOOD_UP, ts_ns=t), binance(BN_BIDS, BN_ASKS, ts_ns=t + 1_500_000_000)
    assert isinstance(route_premium(up, bn, 0.1, 1000.0, max_skew_ns=2_000_000_000), Premium)
    assert denied(route_premium(up, bn, 0.1, 1000.0, max_skew_ns=1_000_000_000), arb.BOOKS_APART)
    assert denied(route_premium(upbit(*GOOD_UP), bn, 0.1, 1000.0, max_skew_ns=1_000_000_000),
                  arb.BOOKS_APART)


# -- the real books of 2025-08-23 --------------------------------------------------------------
def kst_naive_ns(text: str) -> int:
    """A naive ISO time in Korean time (the snapshots' ``timestamp``) as UTC ns."""
    t = datetime.fromisoformat(text)
    assert t.tzinfo is None
    return int(round(t.replace(tzinfo=KST).timestamp() * 1e6)) * 1000


def snapshots(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fred_krw_per_usd(at_ns: int) -> tuple[str, float]:
    """The last FRED DEXKOUS fixing known at ``at_ns``: a fixing dated D is the noon
    New York rate, counted as known from 17:00 UTC of D."""
    last = None
    with open(FRED_FILE) as f:
        for row in csv.DictReader(f):
            day = datetime.fromisoformat(row["date"]).replace(hour=17, tzinfo=timezone.utc)
            if int(day.timestamp()) * 1_000_000_000 > at_ns:
                break
            if row["usdkrw_noon_ny"] not in ("", "."):
                last = (row["date"], float(row["usdkrw_noon_ny"]))
    return last


@pytest.fixture(scope="module")
def real():
    """Upbit snapshot 6 (06:05:39.182 KST) and Binance snapshot 2 (06:05:39.911 KST):
    0.73 s apart, the closest pair."""
    u, b = snapshots(UPBIT_FILE)[6], snapshots(BINANCE_FILE)[2]
    tu, tb = kst_naive_ns(u["timestamp"]), kst_naive_ns(b["timestamp"])
    exinfo = json.loads(data_file("payloads/binance/rest/exchangeInfo_2021-10-12.capture.jsonl")
                        .read_text().splitlines()[0])["msg"]
    return dict(
        up=upbit(u["bids"], u["asks"], rules=upbit_rules(["KRW-BTC"], tu)["KRW-BTC"], ts_ns=tu),
        # Binance's BTCUSDT filters from a real 2021 exchangeInfo (tick 0.01, step 0.00001,
        # MIN_NOTIONAL 10): the newest real one in the data set; tick and step are unchanged
        bn=binance(b["bids"], b["asks"], rules=binance_rules(exinfo)["BTCUSDT"], ts_ns=tb),
        fx=fred_krw_per_usd(tu), tu=tu, tb=tb)


def test_real_snapshot_times_are_korean_time(real):
    # 2025-08-24T06:05:39.182 KST = 2025-08-23 21:05:39.182 UTC
    assert real["tu"] == int(datetime(2025, 8, 23, 21, 5, 39, 182000, tzinfo=timezone.utc)
                             .timestamp() * 1e6) * 1000
    assert 0 < real["tb"] - real["tu"] < 1_000_000_000
    # the last fixing known on a Saturday evening UTC is Friday's
    assert real["fx"] == ("2025-08-22", 1381.71)
    # the Upbit rules of that date (table from 2025-07-31): BTC at >= 2,000,000 KRW on 1,000
    assert real["up"].rules.tick_at(D("159508000")) == D("1000")
    assert real["up"].rules.tick_table[1] == (D("1000000"), D("1000"))    # was 500 before
    assert arb.check_book(real["up"].book) is None and arb.check_book(real["bn"].book) is None


def test_real_premium_for_one_hundredth_of_a_bitcoin(real):
    fx = real["fx"][1]
    p = route_premium(real["up"], real["bn"], 0.01, fx, max_skew_ns=2_000_000_000)
    # sell 0.01 BTC into Upbit's best bid: 159,508,000 KRW holds 0.01191387 >= 0.01
    #   159,508,000 / 1,381.71 = 115,442.4590 USDT
    # buy 0.01 BTC from Binance's best ask: 115,279.26 holds 8.48721
    # gross = 115,442.4590 / 115,279.26 - 1 = 14.1568 bps
    # after fees: 115,442.4590 x 0.9995 = 115,384.7378; 115,279.26 x 1.001 = 115,394.5393
    # net = 115,384.7378 / 115,394.5393 - 1 = -0.8494 bps
    # profit = 0.01 x (115,384.7378 - 115,394.5393) = -0.0980 USDT
    assert p.direction == arb.SELL_KRW
    assert p.sell_vwap == 159_508_000.0 and p.buy_vwap == 115_279.26
    assert p.sell_vwap_usdt == pytest.approx(115_442.4590, abs=1e-4)
    assert p.gross_bps == pytest.approx(14.1568, abs=1e-4)
    assert p.net_bps == pytest.approx(-0.8494, abs=1e-4)
    assert p.net_profit_usdt == pytest.approx(-0.0980, abs=1e-4)
    assert p.sell_limit == D("159508000") and p.buy_limit == D("115279.26")
    # the premium is there (+14 bps) but the two taker fees (15 bps) eat it


def test_real_premium_for_a_tenth_walks_four_upbit_levels(real):
    fx = real["fx"][1]
    p = route_premium(real["up"], real["bn"], 0.1, fx)
    # sell 0.1 into Upbit's bids:
    #   0.01191387 @ 159,508,000 =  1,900,357.57596
    #   0.03706596 @ 159,507,000 =  5,912,280.08172
    #   0.00080693 @ 159,500,000 =    128,705.33500
    #   0.05021324 @ 159,498,000 =  8,008,911.35352  (the rest: 0.1 - 0.04978676)
    #   total 15,950,254.3462 KRW -> VWAP 159,502,543.462 KRW = 115,438.5099 USDT
    # buy 0.1 from Binance at 115,279.26 (one level)
    # gross = 115,438.5099 / 115,279.26 - 1 = 13.8143 bps
    # net = 115,438.5099 x 0.9995 / (115,279.26 x 1.001) - 1 = -1.1914 bps
    # profit = 0.1 x (115,380.7906 - 115,394.5393) = -1.3749 USDT
    assert p.direction == arb.SELL_KRW
    assert p.sell_vwap == pytest.approx(159_502_543.462, abs=1e-3)
    assert p.sell_limit == D("159498000")
    assert p.gross_bps == pytest.approx(13.8143, abs=1e-4)
    assert p.net_bps == pytest.approx(-1.1914, abs=1e-4)
    assert p.net_profit_usdt == pytest.approx(-1.3749, abs=1e-4)


def test_real_reverse_direction(real):
    fx = real["fx"][1]
    # buy 0.01 on Upbit at 159,515,000 KRW = 115,447.5252 USDT; sell on Binance at 115,279.25
    # gross = 115,279.25 / 115,447.5252 - 1 = -14.5759 bps
    # net = 115,279.25 x 0.999 / (115,447.5252 x 1.0005) - 1 = -29.5466 bps
    p = arb.one_way(real["bn"], real["up"], D("0.01"), 1.0, 1 / fx, arb.SELL_USDT, fx)
    assert p.gross_bps == pytest.approx(-14.5759, abs=1e-4)
    assert p.net_bps == pytest.approx(-29.5466, abs=1e-4)


def test_real_books_too_thin_and_too_small(real):
    fx = real["fx"][1]
    # Upbit's 20 bid levels hold 1.26267060 BTC, its asks 1.86244168: 1.5 can only be bought
    # on Upbit (and sold on Binance), 2 BTC in neither direction
    p = route_premium(real["up"], real["bn"], 1.5, fx)
    assert isinstance(p, Premium) and p.direction == arb.SELL_USDT
    r = route_premium(real["up"], real["bn"], 2.0, fx)
    assert denied(r, arb.BOOK_TOO_THIN) and "upbit bids hold 1.2626706 of the 2" in r.reason
    # 0.00003 BTC = 4,785 KRW: under Upbit's 5,000 KRW minimum (and Binance's 10 USDT)
    assert denied(route_premium(real["up"], real["bn"], 0.00003, fx), NOTIONAL_BELOW_MIN)


def test_real_pairs_all_show_the_same_premium_level():
    """Every Upbit/Binance pair within 2 s: the best-level premium against FRED is
    +14 bps, the mid-implied rate about 1,383.7 KRW per USDT (the data set's README)."""
    ups, bns = snapshots(UPBIT_FILE), snapshots(BINANCE_FILE)
    pairs = [(u, b) for u in ups for b in bns
             if abs(kst_naive_ns(u["timestamp"]) - kst_naive_ns(b["timestamp"])) <= 2_000_000_000]
    assert len(pairs) == 3
    for u, b in pairs:
        t = kst_naive_ns(u["timestamp"])
        up = upbit(u["bids"], u["asks"], rules=upbit_rules(["KRW-BTC"], t)["KRW-BTC"])
        p = route_premium(up, binance(b["bids"], b["asks"]), 0.01, 1381.71)
        assert p.direction == arb.SELL_KRW and 13.5 < p.gross_bps < 15.0 and -2 < p.net_bps < 0
        implied = (u["bids"][0][0] + u["asks"][0][0]) / (b["bids"][0][0] + b["asks"][0][0])
        assert implied == pytest.approx(1383.7, abs=0.1)
