"""The desk (workers/execution/desk.py) on a simulated clock and a journal on disk: the
risk guard, order manager, paper broker and portfolio wired as execution runs them.
Resting limit orders, latency, tiers tripped by the market, venue rules, bad input,
and the journal as the desk's memory."""
from __future__ import annotations

import dataclasses
import math
from decimal import Decimal

import numpy as np
import pytest

from pipeline import journal
from pipeline.clock import SimClock
from pipeline.config import ExecutionConfig, FxSource, RiskConfig
from pipeline.journal import Journal
from shm.records import (INTENT, LIQUIDITY_MAKER, ORDER_CANCEL, ORDER_LIMIT, ORDER_MARKET, SIDE_BUY, SIDE_SELL, TICK,
                         TICK_GAP, TICK_QUOTE, TICK_TRADE, TIF_GTC, TIF_IOC)
from workers.execution.desk import Desk
from workers.execution.venue_rules import SymbolRules

T0 = 1_700_000_000 * 1_000_000_000 + 3_600 * 1_000_000_000   # an hour into a UTC day
MS = 1_000_000
KEYS = ["AAA/USDT@binance", "BBB/USDT@binance", "AAA/KRW@upbit"]
VENUES = ["binance", "upbit"]
VENUE_OF = np.array([0, 0, 1])
WIDE = {"max_gross_exposure": 1e9, "max_venue_exposure": 1e9, "max_position_notional": 1e9,
        "max_order_notional": 1e9}


@pytest.fixture
def make(tmp_path):
    opened = []

    def desk(clock=None, ec=None, rules=None, run="r1", **risk) -> Desk:
        j = Journal(tmp_path / "desk.sqlite")
        ec = ec or ExecutionConfig()
        if not ec.currency:      # one account in USDT; KRW at 1:1 keeps these tests' numbers plain
            ec = dataclasses.replace(ec, currency="USDT", fx=[FxSource(quote="KRW", rate=1.0)])
        d = Desk(KEYS, VENUE_OF, VENUES, ec, RiskConfig(**{**WIDE, **risk}),
                 clock or SimClock(T0), j, "p", run, rules=rules)
        d.recover()
        opened.append(d)
        return d
    yield desk
    for d in opened:
        d.journal.close()


def market(d: Desk, sid: int, price: float, half_spread: float = 0.0005, kind: int = TICK_TRADE,
           side: int = SIDE_BUY, size: float = 1.0) -> None:
    t = np.zeros(1, TICK)
    t["symbol_id"], t["kind"], t["side"], t["size"], t["price"] = sid, kind, side, size, price
    t["bid"], t["ask"] = price * (1 - half_spread), price * (1 + half_spread)
    t["ts_origin_ns"] = d.clock.time_ns()
    d.on_ticks(t)


def intent(d: Desk, sid: int, side: int, qty: float, seq: int, price: float = 100.0, **kw) -> np.ndarray:
    it = np.zeros(1, INTENT)
    it["seq"], it["symbol_id"], it["side"], it["qty"], it["ref_price"] = seq, sid, side, qty, price
    it["order_type"], it["tif"] = kw.get("order_type", ORDER_MARKET), kw.get("tif", TIF_IOC)
    it["limit_price"] = kw.get("limit", math.nan)
    it["strategy_id"] = 1
    it["ts_origin_ns"] = it["ts_ns"] = d.clock.time_ns()
    return it


def batch(*rows: np.ndarray) -> np.ndarray:
    """Intent rows as one batch (np.concatenate would drop the record's padding)."""
    out = np.zeros(len(rows), INTENT)
    for i, r in enumerate(rows):
        out[i] = r[0]
    return out


def verdicts(d: Desk) -> list[str]:
    return [r["payload"]["code"] for r in journal.rows(d.journal.path, kinds=("verdict",))]


def test_a_resting_limit_order_fills_as_maker_when_a_trade_prints_through(make):
    clock = SimClock(T0)
    d = make(clock, ExecutionConfig(ack_latency_ms=5.0, maker_fee_bps=-1.0))
    market(d, 0, 100.0)
    out = d.on_intents(intent(d, 0, SIDE_BUY, 2.0, 1, order_type=ORDER_LIMIT, tif=TIF_GTC, limit=99.0))
    assert len(out.orders) == 1 and not out.fills
    order = d.orders.open_orders()[0]
    assert order.state.name == "SUBMITTED"              # on its way: 5 ms to the venue
    clock.set(T0 + 6 * MS)
    d.poll()
    assert order.state.name == "ACCEPTED"
    assert d.market.open_orders.tolist() == [0, 0]     # counted at the next check
    market(d, 0, 99.5, side=SIDE_SELL)                  # above the limit: nothing
    assert d.poll().fills == []
    market(d, 0, 98.5, side=SIDE_SELL, size=0.5)        # through it: 0.5 fills at 99
    out = d.poll()
    assert [(f["qty"], f["price"], f["liquidity"]) for f in out.fills] == [(0.5, 99.0, LIQUIDITY_MAKER)]
    assert out.fills[0]["fee"] == pytest.approx(-0.5 * 99.0 * 1e-4)      # a maker rebate
    assert order.state.name == "PARTIALLY_FILLED" and d.portfolio.qty(0) == 0.5
    d.on_intents(intent(d, 1, SIDE_BUY, 1.0, 2))         # another symbol is not blocked ...
    assert d.market.open_orders.tolist() == [1, 0]       # ... and the resting order counted
    assert d.latency_sparse()["binance"]["submit_to_ack"]


def test_a_loss_for_the_day_halts_everything_until_the_next_day(make):
    clock = SimClock(T0)
    d = make(clock, ExecutionConfig(capital=1_000.0), max_daily_loss_frac=0.05)
    market(d, 0, 100.0)
    d.on_intents(intent(d, 0, SIDE_BUY, 5.0, 1))
    assert d.portfolio.qty(0) == 5.0
    market(d, 0, 85.0)                                   # 5 x -15: 7.5 % of 1,000 gone
    d.on_intents(intent(d, 1, SIDE_BUY, 1.0, 2, price=10.0))
    assert d.guard.tier_state("global").name == "HALTED" and verdicts(d) == ["DAILY_LOSS"]
    states = [r["payload"] for r in journal.rows(d.journal.path, kinds=("risk_state",))
              if "snapshot" not in r["payload"]]
    assert states[-1]["code"] == "DAILY_LOSS" and states[-1]["new"] == "HALTED"
    market(d, 0, 100.0)                                  # the price comes back: still halted (latched)
    d.on_intents(intent(d, 0, SIDE_SELL, 5.0, 3))
    assert d.portfolio.qty(0) == 5.0 and verdicts(d)[-1] == "DAILY_LOSS"
    clock.set(T0 + 86_400 * 1_000_000_000)               # a new UTC day
    market(d, 0, 100.0)
    d.on_intents(intent(d, 0, SIDE_SELL, 5.0, 4))
    assert d.portfolio.qty(0) == 0.0


def test_a_feed_gap_lets_the_venue_only_reduce(make):
    d = make()
    market(d, 0, 100.0)
    d.on_intents(intent(d, 0, SIDE_BUY, 2.0, 1))
    gap = np.zeros(1, TICK)
    gap["kind"], gap["symbol_id"], gap["ts_origin_ns"] = TICK_GAP, 1, d.clock.time_ns()
    d.on_ticks(gap)
    d.on_intents(batch(*[intent(d, 0, SIDE_BUY, 1.0, 2), intent(d, 0, SIDE_SELL, 1.0, 3)]))
    assert verdicts(d) == ["VENUE_UNHEALTHY"] and d.portfolio.qty(0) == 1.0
    market(d, 1, 50.0)                                   # the feed is back
    d.on_intents(intent(d, 0, SIDE_BUY, 1.0, 4))
    assert d.portfolio.qty(0) == 2.0


def test_venue_rules_round_or_deny(make):
    rules = {0: SymbolRules("AAAUSDT", lot_step=Decimal("0.01"), tick_size=Decimal("0.1"),
                            min_notional=Decimal("5"))}
    d = make(rules=rules)
    market(d, 0, 100.0)
    d.on_intents(intent(d, 0, SIDE_BUY, 0.257, 1))       # to the lot: 0.25
    assert d.portfolio.qty(0) == pytest.approx(0.25)
    d.on_intents(intent(d, 0, SIDE_BUY, 0.04, 2))        # 4 USDT: under the minimum notional
    assert verdicts(d) == ["VENUE_RULES"]
    row = list(journal.rows(d.journal.path, kinds=("verdict",)))[0]
    assert "NOTIONAL_BELOW_MIN" in row["payload"]["reason"]


def test_bad_input_is_denied_with_a_code_and_nothing_breaks(make):
    d = make()
    market(d, 0, 100.0)
    bad = batch(*[intent(d, 0, SIDE_BUY, math.nan, 1), intent(d, 0, SIDE_BUY, -1.0, 2),
                          intent(d, 0, SIDE_BUY, 1.0, 3, price=math.nan), intent(d, 7, SIDE_BUY, 1.0, 4),
                          intent(d, 0, 0, 1.0, 5), intent(d, 0, SIDE_BUY, 1e-320, 6),
                          intent(d, 0, SIDE_BUY, 1.0, 7, price=-5.0)])
    out = d.on_intents(bad)
    assert out.orders == [] and verdicts(d) == ["BAD_INPUT"] * 7
    assert d.guard.denials()["BAD_INPUT"] == 7
    assert journal.verify(d.journal.path).ok


def test_a_quote_only_feed_and_market_orders_walk_no_invented_depth(make):
    d = make()
    market(d, 0, 100.0, kind=TICK_QUOTE)
    t = np.zeros(1, TICK)                                 # a trade to band against
    t["symbol_id"], t["kind"], t["price"], t["size"], t["side"] = 0, TICK_TRADE, 100.0, 1.0, SIDE_SELL
    t["bid"] = t["ask"] = math.nan                        # venue trades carry no quote
    t["ts_origin_ns"] = d.clock.time_ns()
    d.on_ticks(t)
    out = d.on_intents(intent(d, 0, SIDE_SELL, 3.0, 1))
    assert [f["price"] for f in out.fills] == [pytest.approx(100.0 * (1 - 0.0005) * (1 - 2e-4))]


def test_the_journal_is_the_desks_memory(make):
    clock = SimClock(T0)
    d = make(clock)
    market(d, 0, 100.0)
    market(d, 2, 50_000.0)
    d.on_intents(batch(*[intent(d, 0, SIDE_BUY, 3.0, 1), intent(d, 2, SIDE_BUY, 0.01, 2, price=50_000.0)]))
    d.on_intents(intent(d, 0, SIDE_SELL, 1.0, 3))
    d.command({"cmd": "risk", "action": "halt", "tier": "venue", "key": "upbit", "reducing": True,
               "reason": "kimchi too hot", "id": "x"})
    d.on_intents(intent(d, 2, SIDE_BUY, 0.01, 4, price=50_000.0))
    rows, stats, peak = d.portfolio.rows.copy(), d.guard.state(), d.equity_peak
    d.journal.close()
    again = make(clock)                                   # the same run, restarted
    np.testing.assert_array_equal(again.portfolio.rows, rows)
    assert again.guard.state()["causes"] == stats["causes"]
    assert again.guard.denials() == d.guard.denials() and again.equity_peak == peak
    market(again, 0, 100.0)
    out = again.on_intents(intent(again, 0, SIDE_SELL, 1.0, 3))    # seen before: not sent again
    assert out.orders == [] and again.counters["skipped_replay"] == 1
    again.journal.close()
    other = make(clock, run="r2")                         # a new run: new ids, same book
    np.testing.assert_array_equal(other.portfolio.rows["qty"], rows["qty"])
    assert journal.verify(other.journal.path).ok


def test_a_feed_without_quotes_trades_at_its_last_trade(make):
    """A replay of trades or candles has no quotes: the last trade stands for the quote
    (spread 0), so a market order fills there moved by slippage_bps; once the symbol
    is quoted, only quotes count."""
    d = make()
    t = np.zeros(1, TICK)
    t["symbol_id"], t["kind"], t["price"], t["size"], t["side"] = 0, TICK_TRADE, 100.0, 1.0, SIDE_BUY
    t["bid"] = t["ask"] = math.nan
    t["ts_origin_ns"] = d.clock.time_ns()
    d.on_ticks(t)
    out = d.on_intents(intent(d, 0, SIDE_BUY, 1.0, 1))
    assert [f["price"] for f in out.fills] == [pytest.approx(100.0 * (1 + 2e-4))]
    market(d, 0, 101.0, kind=TICK_QUOTE)                  # quoted from now on
    t["price"] = 90.0
    d.on_ticks(t)                                          # a trade no longer moves the quote
    assert d.market.bid[0] == pytest.approx(101.0 * (1 - 0.0005))


def order_events(d: Desk) -> list[tuple[str, str]]:
    """(client order id, event) of every journaled order event, in order."""
    return [(r["payload"]["cid"], r["payload"]["detail"]["event"])
            for r in journal.rows(d.journal.path, kinds=("order",)) if "cid" in r["payload"]]


def test_a_resting_limit_is_cancelled_at_its_expiry_and_what_filled_stays(make):
    clock = SimClock(T0)
    d = make(clock, ExecutionConfig(ack_latency_ms=5.0))
    market(d, 0, 100.0)
    it = intent(d, 0, SIDE_BUY, 2.0, 1, order_type=ORDER_LIMIT, tif=TIF_GTC, limit=99.0)
    it["expire_ns"] = T0 + 1_000 * MS
    out = d.on_intents(it)
    assert 0 in out.symbols and d.portfolio.rows["working"][0] == 2.0     # published: it rests
    clock.set(T0 + 6 * MS)
    d.poll()
    market(d, 0, 98.5, side=SIDE_SELL, size=0.5)                          # 0.5 fills at 99
    out = d.poll()
    assert d.portfolio.qty(0) == 0.5 and d.portfolio.rows["working"][0] == 1.5 and 0 in out.symbols
    assert d.next_due_ns() == T0 + 1_000 * MS                            # the worker wakes for it
    clock.set(T0 + 1_000 * MS)
    d.poll()                                                             # the cancel asked, journaled first
    order = d.orders.open_orders()[0]
    assert order.cancel_ns == T0 + 1_000 * MS and order.state.name == "PARTIALLY_FILLED"
    assert order_events(d)[-1] == (order.client_id, "cancel_requested")
    clock.set(T0 + 1_010 * MS)                                           # the venue hears it 5 ms on
    out = d.poll()
    assert order.state.name == "CANCELLED" and order.reason == "cancelled by request"
    assert d.portfolio.qty(0) == 0.5 and d.portfolio.rows["working"][0] == 0.0 and 0 in out.symbols
    assert d.next_due_ns() is None
    # journaled positions leave the working quantity to the orders
    pos = journal.rows(d.journal.path, kinds=("position",))
    assert pos and all("working" not in r["payload"] for r in pos)


def test_a_market_order_ignores_an_expiry(make):
    d = make()
    market(d, 0, 100.0)
    it = intent(d, 0, SIDE_BUY, 1.0, 1)
    it["expire_ns"] = T0 + 1
    d.on_intents(it)
    assert d.portfolio.qty(0) == 1.0 and d.next_due_ns() is None


def test_a_cancel_intent_cancels_its_strategys_open_orders_even_when_halted(make):
    clock = SimClock(T0)
    d = make(clock)
    market(d, 0, 100.0)
    mine = [intent(d, 0, SIDE_BUY, 1.0, seq, order_type=ORDER_LIMIT, tif=TIF_GTC, limit=98.0 + seq / 10)
            for seq in (1, 2)]
    other = intent(d, 0, SIDE_BUY, 1.0, 3, order_type=ORDER_LIMIT, tif=TIF_GTC, limit=99.5)
    other["strategy_id"] = 2
    d.on_intents(batch(*mine, other))
    assert len(d.orders.open_orders(0)) == 3 and d.portfolio.rows["working"][0] == 3.0
    d.command({"action": "halt", "tier": "global"})
    cancel = intent(d, 0, SIDE_BUY, 0.0, 4, order_type=ORDER_CANCEL, tif=0)
    unknown = intent(d, 9, SIDE_BUY, 0.0, 5, order_type=ORDER_CANCEL, tif=0)
    out = d.on_intents(batch(cancel, unknown))
    left = d.orders.open_orders(0)
    assert [o.strategy_id for o in left] == [2] and d.portfolio.rows["working"][0] == 1.0 and 0 in out.symbols
    assert verdicts(d) == ["BAD_INPUT"]
    assert [e for _, e in order_events(d)].count("cancel_requested") == 2
    assert d.counters["cancels"] == 2
    # the same cancel read again later (a restart re-reading its batch) takes no newer order
    clock.set(T0 + 1_000 * MS)
    d.command({"action": "resume", "tier": "global"})
    market(d, 0, 100.0)
    d.on_intents(intent(d, 0, SIDE_BUY, 1.0, 6, order_type=ORDER_LIMIT, tif=TIF_GTC, limit=99.5))
    d.on_intents(batch(cancel))
    assert sorted(o.strategy_id for o in d.orders.open_orders(0)) == [1, 2] and d.counters["cancels"] == 2


def crash(d: Desk) -> None:
    """A kill -9 of execution: what was appended but not committed is lost."""
    d.journal._rows.clear()
    d.journal.close()


DRAWDOWN_5 = {"max_drawdown_frac": 0.05, "max_daily_loss_frac": 0.5}


def half_long(make) -> tuple[SimClock, Desk]:
    """A desk of 10,000 holding 50 at 100, a 5 % drawdown limit, its timed snapshot just taken."""
    clock = SimClock(T0)
    d = make(clock, ExecutionConfig(capital=10_000.0), **DRAWDOWN_5)
    market(d, 0, 100.0)
    d.on_intents(intent(d, 0, SIDE_BUY, 50.0, 1))
    d.housekeeping()                                      # the last timed snapshot: all ACTIVE, peak 10,000
    return clock, d


def test_a_latch_tripped_by_a_step_survives_a_kill_before_the_next_snapshot(make):
    clock, d = half_long(make)
    limits = DRAWDOWN_5
    clock.advance(MS)
    market(d, 0, 80.0)                                    # -1,000 of 10,000: past the 5 % drawdown
    d.on_intents(intent(d, 0, SIDE_BUY, 1.0, 2))
    assert d.guard.tier_state("global").name == "REDUCING"
    crash(d)
    again = make(clock, ExecutionConfig(capital=10_000.0), **limits)
    assert again.guard.tier_state("global").name == "REDUCING"
    assert "DRAWDOWN" in [c["code"] for c in again.risk_states() if c["tier"] == "global"]
    clock.advance(MS)
    market(again, 0, 99.0)                                # back inside the band: the latch holds
    assert again.on_intents(intent(again, 0, SIDE_BUY, 1.0, 3)).orders == []


def test_a_new_day_before_its_fx_rate_keeps_the_old_day_until_the_rate_comes(tmp_path):
    keys = ["AAA/USDT@binance", "AAA/KRW@upbit", "USDT/KRW@upbit"]
    clock = SimClock(T0)
    ec = ExecutionConfig(currency="USDT", fx=[FxSource(quote="KRW", symbol="USDT/KRW@upbit")])

    def desk() -> Desk:
        d = Desk(keys, np.array([0, 1, 1]), VENUES, ec, RiskConfig(**WIDE, max_quote_age_s=0), clock,
                 Journal(tmp_path / "desk.sqlite"), "p", "r1")
        d.recover()
        return d
    d = desk()
    market(d, 2, 1380.0)                                  # the rate, from its own market
    market(d, 1, 138_000.0)
    d.on_intents(intent(d, 1, SIDE_BUY, 0.01, 1, price=138_000.0))
    start = d.day_start_equity
    d.close()
    d.journal.close()
    clock.set((T0 // 86_400_000_000_000 + 1) * 86_400_000_000_000 + 3_600_000_000_000)  # 01:00 the next day
    d = desk()
    market(d, 0, 100.0)                                   # no rate yet: the equity is not known
    d.on_intents(intent(d, 0, SIDE_BUY, 0.1, 2))
    assert math.isnan(d.equity()) and d.day_start_equity == start   # the day did not roll on NaN
    market(d, 2, 1380.0)
    market(d, 1, 138_000.0)
    market(d, 0, 100.0)
    clock.advance(1_000 * MS)
    out = d.on_intents(intent(d, 0, SIDE_BUY, 0.1, 3))
    assert len(out.orders) == 1 and d.guard.tier_state("global").name == "ACTIVE"
    assert math.isfinite(d.day_start_equity) and d.day_start_equity == pytest.approx(d.equity(), abs=1.0)
    d.housekeeping()                                      # the snapshot journals finite figures
    d.journal.close()


def test_a_malformed_book_is_forgotten_and_the_quote_after_it_prices_the_order(make):
    from shm.records import BOOK
    clock = SimClock(T0)
    d = make(clock, price_band_bps=5000.0)

    def book(bids, asks) -> np.ndarray:
        r = np.zeros(1, BOOK)
        r["symbol_id"], r["ts_origin_ns"], r["n_bids"], r["n_asks"] = 0, clock.time_ns(), len(bids), len(asks)
        r["bid_px"][0, :len(bids)], r["bid_sz"][0, :len(bids)] = [p for p, _ in bids], [q for _, q in bids]
        r["ask_px"][0, :len(asks)], r["ask_sz"][0, :len(asks)] = [p for p, _ in asks], [q for _, q in asks]
        return r
    d.on_books(book([(89.9, 10.0)], [(90.0, 10.0)]))
    market(d, 0, 90.0)
    d.on_intents(intent(d, 0, SIDE_BUY, 1.0, 1, price=90.0))
    clock.advance(1_000 * MS)
    market(d, 0, 100.0)                                   # the market moved to 100
    for bad in (([(100.2, 1.0)], [(100.1, 1.0)]),         # crossed
                ([(math.nan, 1.0)], [(100.1, 1.0)]),      # a NaN price
                ([(99.9, 1.0), (99.95, 1.0)], [(100.1, -1.0)])):   # bids out of order, a negative size
        clock.advance(MS)
        d.on_books(book(*bad))
        assert 0 not in d.books
    assert d.counters["books_refused"] == 3
    clock.advance(MS)
    out = d.on_intents(intent(d, 0, SIDE_BUY, 1.0, 2, price=100.0))
    assert [round(float(f["price"]), 2) for f in out.fills] == [100.07]   # the quote's ask plus slippage


def test_an_order_leaves_with_the_equity_peak_on_disk(make):
    clock, d = half_long(make)
    limits = DRAWDOWN_5
    clock.advance(MS)
    market(d, 0, 120.0)                                   # +1,000: a new peak
    assert len(d.on_intents(intent(d, 0, SIDE_BUY, 1.0, 2, price=120.0)).orders) == 1
    peak = d.equity_peak
    assert peak > 10_900
    crash(d)                                              # before any housekeeping
    again = make(clock, ExecutionConfig(capital=10_000.0), **limits)
    assert again.equity_peak == peak
    clock.advance(MS)
    market(again, 0, 104.0)                               # 7 % below that peak, above the old one
    assert again.on_intents(intent(again, 0, SIDE_BUY, 1.0, 3, price=104.0)).orders == []
    assert "DRAWDOWN" in [c["code"] for c in again.risk_states() if c["tier"] == "global"]
