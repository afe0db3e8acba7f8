"""The route trader (workers/strategy/routes.py) on the real simultaneous Upbit and
Binance books of 2025-08-23 (tests/data/orderbook, see test_arbitrage.py for how
they are read: naive Korean time, FRED's 1,381.71 KRW per USD of 2025-08-22 as
KRW per USDT), and the arbitrage benchmark's quick run.

The premium's level moves with the FX rate: the same two books priced at 1,390 KRW
per USDT show a mid premium of -45.35 bps, at 1,381.71 +14.38 bps. The tests warm
the rolling mean at one rate and then move the rate, so the edge over the mean is
known by hand:

  Upbit mid  (159,508,000 + 159,515,000) / 2 = 159,511,500 KRW
  Binance mid (115,279.25 + 115,279.26) / 2 = 115,279.255 USDT
  mid premium at 1,390:    159,511,500 / 1,390    / 115,279.255 - 1 = -45.3490 bps
  mid premium at 1,381.71: 159,511,500 / 1,381.71 / 115,279.255 - 1 = +14.3770 bps
  sell 0.01 on Upbit, buy on Binance at 1,381.71, fee-net: -0.8494 bps
    (test_arbitrage.test_real_premium_for_one_hundredth_of_a_bitcoin)
  edge after five samples at 1,390: -0.8494 - (-45.3490) = +44.4996 bps
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime
from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pytest

from conftest import data_file
from pipeline.clock import SimClock
from shm.records import INTENT, ORDER_LIMIT, REASON_ENTRY, REASON_EXIT, SIDE_BUY, SIDE_SELL, TIF_IOC
from workers.execution.venue_rules import KST, SymbolRules, binance_rules, upbit_rules
from workers.strategy import arbitrage as arb
from workers.strategy import routes
from workers.strategy.arbitrage import Book
from workers.strategy.routes import ArbRoute, Inventory, Rebalance, RouteParams, RouteSpec

ROOT = Path(__file__).resolve().parent.parent
FRED = 1381.71
LOW = 1390.0                 # the rate the mean is warmed at: premium -45.35 bps
UP_ID, BN_ID = 7, 3          # symbol ids of KRW-BTC@upbit and BTCUSDT@binance in these tests


def kst_naive_ns(text: str) -> int:
    t = datetime.fromisoformat(text)
    return int(round(t.replace(tzinfo=KST).timestamp() * 1e6)) * 1000


def snapshots(name: str) -> list[dict]:
    return [json.loads(x) for x in data_file(f"orderbook/{name}").read_text().splitlines() if x.strip()]


UPBIT = snapshots("upbit_BTC-KRW_top20_snapshots_2025-08-23T2103Z.jsonl")[6]      # 06:05:39.182 KST
BINANCE = snapshots("binance_BTC-USDT_top20_snapshots_2025-08-23T2105Z.jsonl")[2]  # 06:05:39.911 KST
TU, TB = kst_naive_ns(UPBIT["timestamp"]), kst_naive_ns(BINANCE["timestamp"])
EXINFO = json.loads(data_file("payloads/binance/rest/exchangeInfo_2021-10-12.capture.jsonl")
                    .read_text().splitlines()[0])["msg"]
SPEC = RouteSpec(index=4, asset="BTC", krw_venue="upbit", krw_symbol_id=UP_ID,
                 krw_rules=upbit_rules(["KRW-BTC"], TU)["KRW-BTC"], krw_taker_bps=5.0,
                 usdt_venue="binance", usdt_symbol_id=BN_ID,
                 usdt_rules=binance_rules(EXINFO)["BTCUSDT"], usdt_taker_bps=10.0)


def books(up=UPBIT, bn=BINANCE) -> tuple[Book, Book]:
    return Book.from_levels(up["bids"], up["asks"], TU), Book.from_levels(bn["bids"], bn["asks"], TB)


def funded(up_btc=1.0, bn_btc=1.0, krw=200_000_000.0, usdt=120_000.0) -> Inventory:
    return Inventory({("upbit", "BTC"): up_btc, ("binance", "BTC"): bn_btc},
                     {"upbit": krw, "binance": usdt})


class Route:
    """A route on a simulated clock 0.1 s after the Binance book, fed the real books."""

    def __init__(self, inventory: Inventory | None = None, spec: RouteSpec = SPEC, **params):
        params = {"qty": 0.01, "window": 5, **params}
        self.clock = SimClock(TB + 100_000_000)
        self.inv = inventory or funded()
        self.r = ArbRoute(spec, RouteParams(**params), self.inv, self.clock)
        self.seq = 0

    def feed(self, fx: float, up_book: Book | None = None, bn_book: Book | None = None,
             fx_age_ns: int = 0, seq: int | None = None) -> np.ndarray:
        ub, bb = books()
        self.seq = self.seq + 1 if seq is None else seq
        return self.r.on_books(up_book or ub, bn_book or bb, fx, self.clock.time_ns() - fx_age_ns, self.seq)

    def warm(self, fx: float = LOW) -> None:
        for _ in range(self.r.p.window):
            assert len(self.feed(fx)) == 0
        assert self.r.counters["warmup"] == self.r.p.window

    def fill_all(self, rows: np.ndarray, fraction: float = 1.0) -> None:
        for row in rows:
            self.r.on_fill(int(row["seq"]), float(row["qty"]) * fraction, float(row["ref_price"]),
                           done=True)


def on_tick(price: float, rules: SymbolRules) -> bool:
    p = D(repr(price))
    tick = rules.tick_at(p)
    return p % tick == 0


# -- entry ------------------------------------------------------------------------------------------
def test_entry_when_the_premium_over_its_mean_passes_the_threshold():
    t = Route(entry_bps=30.0, band_bps=5.0)
    t.warm()
    assert t.r.premium_mean == pytest.approx(-45.3490, abs=1e-4)
    rows = t.feed(FRED, seq=1000)
    assert rows.dtype == INTENT and len(rows) == 2
    edge_k, edge_u = t.r.last_edges
    assert edge_k == pytest.approx(44.4996, abs=1e-4)
    assert t.r.last_mid_bps == pytest.approx(14.3770, abs=1e-4)
    sell, buy = rows
    # the sell leg on the rich venue (Upbit), the buy leg on the cheap one (Binance)
    assert (sell["symbol_id"], sell["side"]) == (UP_ID, SIDE_SELL)
    assert (buy["symbol_id"], buy["side"]) == (BN_ID, SIDE_BUY)
    assert sell["qty"] == buy["qty"] == 0.01
    assert (rows["order_type"] == ORDER_LIMIT).all() and (rows["tif"] == TIF_IOC).all()
    assert (rows["reason"] == REASON_ENTRY).all() and (rows["signal_seq"] == 1000).all()
    # walked: 0.01 sells into Upbit's best bid 159,508,000 (it holds 0.01191387) and buys
    # from Binance's best ask 115,279.26 (8.48721)
    assert sell["ref_price"] == 159_508_000.0 and buy["ref_price"] == 115_279.26
    # band 5 bps against us, then onto the tick:
    #   sell: 159,508,000 x 0.9995 = 159,428,246 -> up to Upbit's 1,000 tick: 159,429,000
    #   buy:  115,279.26 x 1.0005 = 115,336.89963 -> down to Binance's 0.01: 115,336.89
    assert sell["limit_price"] == 159_429_000.0 and buy["limit_price"] == 115_336.89
    assert rows["ts_origin_ns"].tolist() == [TB, TB] and rows["ts_ns"].tolist() == [t.clock.time_ns()] * 2
    assert t.r.counters["pairs"] == 1


def test_no_entry_below_the_threshold():
    t = Route(entry_bps=45.0)            # the edge is 44.4996
    t.warm()
    assert len(t.feed(FRED)) == 0
    assert t.r.counters["below_threshold"] == 1 and t.r.counters["pairs"] == 0
    assert t.r.last_edges[0] == pytest.approx(44.4996, abs=1e-4)


def test_a_premium_at_its_usual_level_trades_nothing():
    # the structural level: +14 bps every time is the mean, the edge is the fees and spread
    t = Route(entry_bps=5.0, window=3)
    for _ in range(10):
        assert len(t.feed(FRED)) == 0
    edge_k, edge_u = t.r.last_edges
    assert edge_k == pytest.approx(-0.8494 - 14.3770, abs=1e-3)
    assert t.r.counters["warmup"] == 3 and t.r.counters["below_threshold"] == 7


def test_warmup_until_the_window_is_full():
    t = Route(entry_bps=30.0, window=5)
    for _ in range(4):
        t.feed(LOW)
    assert len(t.feed(FRED)) == 0 and t.r.counters["warmup"] == 5      # four samples before it


# -- exit / unwind ----------------------------------------------------------------------------------
def test_unwind_reverses_the_position_when_the_premium_comes_back():
    t = Route(entry_bps=30.0, exit_bps=-5.0)
    t.warm()
    entry = t.feed(FRED)
    # only part of the Upbit sell filled (0.004 of 0.01), and as much on Binance
    t.fill_all(entry, fraction=0.4)
    assert t.r.position == pytest.approx(0.004) and not t.r.legs
    # back at 1,390: mean of the window (four -45.3490, one +14.3770) = -33.4038 bps;
    # sell 0.004 on Binance at 115,279.25, buy on Upbit at 159,515,000 / 1,390 = 114,758.9928:
    #   net = 115,279.25 x 0.999 / (114,758.9928 x 1.0005) - 1 = +30.2743 bps
    #   edge = 30.2743 + (-33.4038) = -3.1295 bps: under the entry, over the exit (-5)
    rows = t.feed(LOW)
    assert len(rows) == 2
    assert t.r.last_edges[1] == pytest.approx(-3.1295, abs=1e-4)
    sell, buy = rows
    assert (sell["symbol_id"], sell["side"], buy["symbol_id"], buy["side"]) == (BN_ID, SIDE_SELL,
                                                                                UP_ID, SIDE_BUY)
    assert sell["qty"] == buy["qty"] == 0.004               # at most what is held
    assert (rows["reason"] == REASON_EXIT).all()
    # limits: 115,279.25 x 0.9995 = 115,221.610375 -> up to 115,221.62;
    #         159,515,000 x 1.0005 = 159,594,757.5 -> down to 159,594,000
    assert sell["limit_price"] == 115_221.62 and buy["limit_price"] == 159_594_000.0
    t.fill_all(rows)
    assert t.r.position == pytest.approx(0.0, abs=1e-12)


def test_a_parked_route_opens_nothing_and_still_unwinds_at_most_what_it_holds():
    # dynamic selection parked the route (route_select.py): +44.50 bps over the mean opens nothing
    t = Route(entry_bps=30.0, exit_bps=-5.0)
    t.warm()
    t.r.may_open = False
    assert len(t.feed(FRED)) == 0 and t.r.counters["parked"] == 1 and not t.r.legs
    # holding 0.004 sold in Korea, and the premium falls far enough to open the other way:
    # parked, it unwinds the 0.004 only; active, the same update would sell the whole 0.01
    both = []
    for may_open in (False, True):
        u = Route(entry_bps=30.0, exit_bps=-5.0)
        for _ in range(5):
            u.feed(FRED)
        u.r.position, u.r.may_open = 0.004, may_open
        rows = u.feed(LOW)
        assert len(rows) == 2 and (rows["reason"] == REASON_EXIT).all() and rows[0]["symbol_id"] == BN_ID
        assert u.r.last_edges[1] >= 30.0
        both.append(float(rows[0]["qty"]))
    assert both == [0.004, 0.01]


def test_no_unwind_without_a_position_or_below_the_exit():
    flat = Route(entry_bps=30.0, exit_bps=-5.0)
    flat.warm()
    flat.feed(FRED)
    flat.r.on_leg_done(next(iter(flat.r.legs)))     # both legs cancelled unfilled
    flat.r.on_leg_done(next(iter(flat.r.legs)))
    assert flat.r.position == 0 and len(flat.feed(LOW)) == 0      # -3.13 bps opens nothing
    strict = Route(entry_bps=30.0, exit_bps=-3.0)                  # -3.1295 < -3
    strict.warm()
    strict.fill_all(strict.feed(FRED))
    assert len(strict.feed(LOW)) == 0 and strict.r.counters["below_threshold"] == 1


def test_float_noise_left_by_fills_is_no_position():
    t = Route(entry_bps=30.0, exit_bps=-5.0)
    t.warm()
    t.fill_all(t.feed(FRED))
    t.r.position = 1e-18                     # what 0.01 - 0.004 - 0.006 may leave
    assert len(t.feed(LOW)) == 0             # -3.13 bps would unwind a real position
    assert t.r.counters["below_threshold"] == 1 and t.r.counters["priced_out"] == 0


# -- inventory -------------------------------------------------------------------------------------
def test_an_exhausted_side_stops_that_direction_only():
    t = Route(funded(up_btc=0.015), entry_bps=10.0)
    t.warm()
    t.fill_all(t.feed(FRED))                      # sells 0.01 of Upbit's 0.015
    assert t.inv.coins[("upbit", "BTC")] == pytest.approx(0.005)
    # the mean is now (4 x -45.3490 + 14.3770) / 5 = -33.4038, the edge -0.8494 + 33.4038
    # = +32.5544 >= 10: but only 0.005 BTC is left on Upbit
    assert len(t.feed(FRED)) == 0
    assert t.r.counters["no_coins"] == 1 and t.r.last_edges[0] == pytest.approx(32.5544, abs=1e-4)
    # the other direction still trades: at 1,400 Binance is rich (sell there, buy on Upbit)
    rows = t.feed(1400.0)
    assert len(rows) == 2 and rows["symbol_id"].tolist() == [BN_ID, UP_ID]


def test_no_cash_for_the_buy_leg_stops_it():
    # the buy leg may spend 0.01 x 115,336.89 x 1.001 = 1,154.52 USDT; 1,000 are funded
    t = Route(funded(usdt=1000.0), entry_bps=30.0)
    t.warm()
    assert len(t.feed(FRED)) == 0 and t.r.counters["no_cash"] == 1
    t2 = Route(funded(usdt=1154.6), entry_bps=30.0)
    t2.warm()
    assert len(t2.feed(FRED)) == 2


def test_legs_in_flight_reserve_inventory_and_block_the_route():
    t = Route(entry_bps=30.0, window=3)
    t.warm()
    rows = t.feed(FRED)
    assert t.inv.free_coins("upbit", "BTC") == pytest.approx(0.99)
    cash = 0.01 * 115_336.89 * 1.001
    assert t.inv.free_cash("binance") == pytest.approx(120_000 - cash)
    t.clock.advance(1_000_000)
    assert len(t.feed(1370.0)) == 0 and t.r.counters["legs_open"] == 1
    # the sell leg fills at 159,508,000 with a 5 bps fee in KRW; the buy leg is cancelled
    t.r.on_fill(int(rows["seq"][0]), 0.01, 159_508_000.0, fee_quote=797.54, done=True)
    t.r.on_leg_done(int(rows["seq"][1]))
    assert not t.r.legs
    assert t.inv.coins[("upbit", "BTC")] == pytest.approx(0.99)
    assert t.inv.cash["upbit"] == pytest.approx(200_000_000 + 1_595_080 - 797.54)
    assert t.inv.free_cash("binance") == pytest.approx(120_000) and t.inv.cash["binance"] == 120_000
    t.r.on_fill(12345, 1.0, 1.0)
    assert t.r.counters["unknown_fill"] == 1 and t.inv.coins[("upbit", "BTC")] == pytest.approx(0.99)


# -- bad inputs never trade ---------------------------------------------------------------------------
def _mutate(book: dict, side: str, i: int, col: int, value) -> dict:
    b = {"bids": [list(x) for x in book["bids"]], "asks": [list(x) for x in book["asks"]]}
    b[side][i][col] = value
    return b


def _crossed(book: dict) -> dict:
    return _mutate(book, "bids", 0, 0, book["asks"][0][0] + (1000 if book is UPBIT else 0.01))


def _swapped(book: dict) -> dict:
    b = {"bids": book["bids"], "asks": [list(x) for x in book["asks"]]}
    b["asks"][2], b["asks"][3] = b["asks"][3], b["asks"][2]
    return b


BAD = [("crossed", _crossed, arb.BOOK_CROSSED),
       ("locked", lambda b: _mutate(b, "bids", 0, 0, b["asks"][0][0]), arb.BOOK_CROSSED),
       ("zero size", lambda b: _mutate(b, "bids", 0, 1, 0.0), arb.BOOK_BAD_SIZE),
       ("NaN size", lambda b: _mutate(b, "asks", 5, 1, math.nan), arb.BOOK_BAD_SIZE),
       ("infinite size", lambda b: _mutate(b, "asks", 0, 1, math.inf), arb.BOOK_BAD_SIZE),
       ("NaN price", lambda b: _mutate(b, "asks", 3, 0, math.nan), arb.BOOK_BAD_PRICE),
       ("negative price", lambda b: _mutate(b, "bids", 19, 0, -1.0), arb.BOOK_BAD_PRICE),
       ("empty bids", lambda b: {"bids": [], "asks": b["asks"]}, arb.BOOK_EMPTY),
       ("asks out of order", _swapped, arb.BOOK_UNSORTED)]


@pytest.mark.parametrize("venue", ["upbit", "binance"])
@pytest.mark.parametrize("what,make,code", BAD, ids=[b[0] for b in BAD])
def test_a_bad_book_never_trades(venue, what, make, code):
    t = Route(entry_bps=30.0)
    t.warm()
    mean = t.r.premium_mean
    src = UPBIT if venue == "upbit" else BINANCE
    bad = make(src)
    book = Book.from_levels(bad["bids"], bad["asks"], TU if venue == "upbit" else TB)
    assert arb.check_book(book).code == code
    assert routes._lists(book) is None                 # the fast screen agrees with check_book
    rows = t.feed(FRED, **({"up_book": book} if venue == "upbit" else {"bn_book": book}))
    assert len(rows) == 0
    assert t.r.counters["bad_book"] == 1 and t.r.denials == {code: 1}
    assert t.r.last_denial.reason.startswith(venue)
    assert t.r.premium_mean == mean                     # a bad update is no sample
    assert len(t.feed(FRED)) == 2                        # the good book after it trades


def test_the_fast_screen_accepts_the_real_books():
    for b in books():
        assert arb.check_book(b) is None and routes._lists(b) is not None


@pytest.mark.parametrize("fx", [None, math.nan, math.inf, 0.0, -1381.71, "1381.71", True])
def test_a_missing_fx_rate_never_trades(fx):
    t = Route(entry_bps=30.0)
    t.warm()
    assert len(t.feed(fx)) == 0 and t.r.counters["no_fx"] == 1


def test_a_stale_fx_rate_never_trades():
    t = Route(entry_bps=30.0, max_fx_age_ns=60_000_000_000)
    t.warm()
    assert len(t.feed(FRED, fx_age_ns=60_000_000_001)) == 0 and t.r.counters["stale_fx"] == 1
    assert len(t.feed(FRED, fx_age_ns=60_000_000_000)) == 2       # exactly the limit is fresh
    no_time = Route(entry_bps=30.0)
    no_time.warm()
    ub, bb = books()
    assert len(no_time.r.on_books(ub, bb, FRED, None, 99)) == 0 and no_time.r.counters["stale_fx"] == 1


def test_books_apart_in_time_or_old_never_trade():
    # the real pair is 0.729 s apart
    t = Route(entry_bps=30.0, max_skew_ns=500_000_000)
    for fx in (LOW,) * 5 + (FRED,):
        assert len(t.feed(fx)) == 0
    assert t.r.counters["books_apart"] == 6 and t.r.counters["warmup"] == 0
    ub, bb = books()
    no_ts = Book(ub.bid_px, ub.bid_sz, ub.ask_px, ub.ask_sz, None)
    t2 = Route(entry_bps=30.0)
    assert len(t2.feed(FRED, up_book=no_ts)) == 0 and t2.r.counters["books_apart"] == 1
    t3 = Route(entry_bps=30.0, max_book_age_ns=1_000_000_000)        # Upbit's book is 0.83 s old
    t3.warm()
    t3.clock.advance(200_000_000)                                    # now 1.03 s old
    assert len(t3.feed(FRED)) == 0 and t3.r.counters["stale_book"] == 1


# -- limits: band and tick --------------------------------------------------------------------------
def test_band_zero_sends_the_walked_levels():
    t = Route(entry_bps=30.0, band_bps=0.0, qty=0.1)
    t.warm()
    rows = t.feed(FRED)
    # 0.1 walks four Upbit bid levels down to 159,498,000 (test_arbitrage); Binance's first ask
    assert rows["limit_price"].tolist() == [159_498_000.0, 115_279.26]
    assert rows["ref_price"][0] == pytest.approx(159_502_543.462, abs=1e-3)


def test_a_banded_limit_lands_on_the_tick_of_the_band_it_falls_into():
    # an asset at 1,000,500 KRW on Upbit's table of 2025-07-30: tick 500 from 1,000,000,
    # 100 below it. Sell limit 1,000,500 x (1 - 10 bps) = 999,499.5, under 1,000,000:
    # up to the 100 tick, 999,500. Buy on Binance 990.1 x 1.001 = 991.0901 -> 991.0
    at = int(datetime(2025, 7, 30, 12, tzinfo=KST).timestamp()) * 1_000_000_000
    spec = RouteSpec(0, "ABC", "upbit", 1, upbit_rules(["KRW-ABC"], at)["KRW-ABC"], 5.0,
                     "binance", 2, SymbolRules("ABCUSDT", lot_step=D("0.001"), tick_size=D("0.1")), 10.0)
    inv = Inventory({("upbit", "ABC"): 10.0, ("binance", "ABC"): 10.0}, {"upbit": 1e8, "binance": 1e5})
    clock = SimClock(at)
    r = ArbRoute(spec, RouteParams(qty=1.0, window=1, entry_bps=20.0, band_bps=10.0), inv, clock)
    up = Book.from_levels([[1_000_500.0, 5.0]], [[1_001_000.0, 5.0]], at)
    bn = Book.from_levels([[990.0, 5.0]], [[990.1, 5.0]], at)
    assert len(r.on_books(up, bn, 1030.0, at, 1)) == 0            # warm: 1,000,750 / 1,030 / 990.05
    rows = r.on_books(up, bn, 1000.0, at, 2)
    assert rows["limit_price"].tolist() == [999_500.0, 991.0]
    assert on_tick(999_500.0, spec.krw_rules) and not on_tick(999_499.5, spec.krw_rules)


def test_every_limit_stays_within_the_band_and_on_tick():
    t = Route(entry_bps=10.0, band_bps=7.0, window=2)
    fxs = [1390.0, 1388.0, 1381.71, 1382.0, 1370.0, 1400.0, 1395.0, 1381.71, 1360.0, 1410.0]
    seen = 0
    for fx in fxs:
        rows = t.feed(fx)
        t.fill_all(rows)
        for row in rows:
            rules = SPEC.krw_rules if row["symbol_id"] == UP_ID else SPEC.usdt_rules
            lim, walked = float(row["limit_price"]), None
            ub, bb = books()
            book = ub if row["symbol_id"] == UP_ID else bb
            px, sz = (book.bid_px, book.bid_sz) if row["side"] == SIDE_SELL else (book.ask_px, book.ask_sz)
            walked = arb.walk(px, sz, float(row["qty"]), arb.BIDS if row["side"] == SIDE_SELL else arb.ASKS)
            assert on_tick(lim, rules)
            if row["side"] == SIDE_SELL:
                assert walked.worst_price * (1 - 7e-4) <= lim <= walked.worst_price
            else:
                assert walked.worst_price <= lim <= walked.worst_price * (1 + 7e-4)
            seen += 1
    assert seen >= 4


# -- seqs ---------------------------------------------------------------------------------------------
def test_seqs_are_derived_from_the_route_and_the_update():
    def run() -> np.ndarray:
        t = Route(entry_bps=10.0, window=2)
        out = []
        for i, fx in enumerate([1390.0, 1390.0, 1381.71, 1400.0, 1381.71, 1420.0]):
            rows = t.feed(fx, seq=5000 + 3 * i)
            t.fill_all(rows)
            out.append(rows)
        return np.concatenate(out)
    a, b = run(), run()
    assert len(a) >= 4 and a.tobytes() == b.tobytes()             # two fresh cores, the same rows
    for row in a:
        s = int(row["seq"])
        assert s >> routes.SEQ_BITS == SPEC.index + 1
        assert (s & ((1 << routes.SEQ_BITS) - 1)) >> 1 == row["signal_seq"]
        assert s & 1 == (0 if row["side"] == SIDE_SELL else 1)
    assert len(set(a["seq"].tolist())) == len(a)


def test_a_restart_from_state_derives_the_same_pair():
    """The core stops after the warm-up (its state journaled), a restarted core sees the
    same update again: the same two rows, the same seqs."""
    t = Route(entry_bps=30.0, window=5)
    t.warm()
    t.feed(LOW)                                                  # six samples: the ring has turned
    saved = json.loads(json.dumps(t.r.state()))
    inv_saved = json.loads(json.dumps(t.inv.state()))
    first = t.feed(FRED, seq=777)
    again = Route(Inventory.from_state(inv_saved), entry_bps=30.0, window=5)
    again.r.restore(saved)
    assert again.r.premium_mean == pytest.approx(-45.3490, abs=1e-4)
    second = again.feed(FRED, seq=777)
    assert len(first) == 2 and first.tobytes() == second.tobytes()
    # legs in flight and their reservations survive a restart too
    mid = Route(Inventory.from_state(t.inv.state()), entry_bps=30.0, window=5)
    mid.r.restore(json.loads(json.dumps(t.r.state())))
    assert set(mid.r.legs) == set(t.r.legs) and mid.inv.free_coins("upbit", "BTC") == pytest.approx(0.99)
    mid.fill_all(first)
    assert mid.r.position == pytest.approx(0.01) and not mid.r.legs
    assert mid.inv.free_coins("upbit", "BTC") == pytest.approx(0.99) == mid.inv.coins[("upbit", "BTC")]


def test_a_shorter_history_refills_the_window():
    t = Route(entry_bps=30.0, window=5)
    t.feed(LOW), t.feed(LOW)
    r = Route(entry_bps=30.0, window=5)
    r.r.restore(t.r.state())
    assert r.r.premium_mean == pytest.approx(-45.3490, abs=1e-4)
    for _ in range(3):
        assert len(r.feed(LOW)) == 0
    assert len(r.feed(FRED)) == 2                                 # warm after 2 + 3 samples


def test_the_fast_screen_agrees_with_check_book_on_random_damage():
    rng = np.random.default_rng(5)
    for _ in range(400):
        src = UPBIT if rng.random() < 0.5 else BINANCE
        arrays = [np.array([x[c] for x in src[side]], float) for side in ("bids", "asks") for c in (0, 1)]
        for _ in range(rng.integers(0, 3)):
            a = arrays[rng.integers(0, 4)]
            k = rng.integers(0, len(a))
            kind = rng.integers(0, 6)
            if kind == 0:
                a[k] = math.nan
            elif kind == 1:
                a[k] = 0.0
            elif kind == 2:
                a[k] = -a[k]
            elif kind == 3:
                a[k] = math.inf
            elif kind == 4 and k + 1 < len(a):
                a[k], a[k + 1] = a[k + 1], a[k]
            else:
                a[k] = arrays[2][0] if a is arrays[0] else a[k]      # lock the book
        book = Book(*arrays)
        assert (routes._lists(book) is None) == (arb.check_book(book) is not None)


# -- imbalance ------------------------------------------------------------------------------------------
def test_imbalance_after_trading_one_way_suggests_a_transfer_back():
    t = Route(entry_bps=30.0)
    t.warm()
    t.fill_all(t.feed(FRED))
    im = t.inv.imbalance("BTC", band=0.004)                 # 0.4 % of 2 BTC: 0.008
    assert im.drift == pytest.approx({"upbit": -0.01, "binance": 0.01})
    assert im.net == pytest.approx(0.0, abs=1e-12) and im.alert
    assert im.rebalance == Rebalance("BTC", pytest.approx(0.01), "binance", "upbit")
    assert im.rebalance.direction == "binance -> upbit"
    quiet = t.inv.imbalance("BTC", band=0.01)               # 0.02 BTC: within it
    assert not quiet.alert and quiet.rebalance is None


def test_unhedged_exposure_alerts_without_a_transfer():
    inv = funded()
    inv.coins[("binance", "BTC")] += 0.5                    # a buy leg filled, its sell did not
    im = inv.imbalance("BTC", band=0.2)                     # 0.4 BTC
    assert im.net == pytest.approx(0.5) and im.alert and im.rebalance is None
    inv.coins[("upbit", "BTC")] -= 0.6
    im = inv.imbalance("BTC", band=0.2)
    assert im.rebalance == Rebalance("BTC", pytest.approx(0.5), "binance", "upbit")
    assert [i.asset for i in inv.imbalances(0.2)] == ["BTC"]


# -- parameters -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [dict(qty=0.0), dict(qty=math.nan), dict(entry_bps=5.0, exit_bps=10.0),
                                 dict(band_bps=-1.0), dict(window=0)])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        RouteParams(**{"qty": 0.01, **bad})


def test_a_quantity_under_a_lot_is_refused():
    with pytest.raises(ValueError, match="floors to zero"):
        Route(qty=0.000001)


# -- the benchmark --------------------------------------------------------------------------------------
def test_arbitrage_bench_quick(tmp_path):
    out = tmp_path / "arb.json"
    p = subprocess.run([sys.executable, "bench/arbitrage.py", "--quick", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["routes"] == 10
    ours = report["ours"]
    for key in ("avg_ms", "p50_ms", "p95_ms", "p99_ms"):
        assert ours["latency_ms"][key] > 0 and report["naive_peer"]["latency_ms"][key] > 0
    assert ours["updates"] == report["naive_peer"]["updates"] >= 200
    assert ours["pairs"] > 0 and ours["evaluations_per_s"] > 0
    assert 0 <= ours["cpu_percent"] and ours["rss_mb"] > 0
    assert report["seed_target"]["avg_ms"] == 25.0
    assert "our figures" in p.stdout and "naive peer" in p.stdout
