"""Hedge obligations (workers/execution/hedges.py): a route leg filled without its
partner is found from the positions, re-hedged within a band on the hedge leg with
seqs that are never reused, escalated past its time limit, and carried across a
restart; the risk guard lets the re-hedge through a REDUCING route."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.clock import SimClock
from pipeline.config import RiskConfig
from shm.records import INTENT, ORDER_LIMIT, SIDE_BUY, SIDE_SELL, TIF_IOC
from workers.execution.hedges import HEDGE_STRATEGY, HedgeRoute, Hedges
from workers.execution.risk import Denial, MarketView, RiskGuard, Tier, TradingState

T0 = 1_755_983_000 * 10**9
S = 10**9
# symbols: 0 BTC/KRW@upbit, 1 BTC/USDT@binance (route 0, hedged on Binance), 2 ETH/USDT@binance
ROUTE = HedgeRoute(0, "BTC upbit/binance", (0, 1), hedge_leg=1)
BID = np.array([159_000_000.0, 115_000.0, 4_300.0])
ASK = np.array([159_100_000.0, 115_010.0, 4_301.0])


def hedges(clock=None, **kw) -> Hedges:
    return Hedges([ROUTE], 3, kw.pop("band_bps", 10.0), kw.pop("timeout_ns", 30 * S), clock or SimClock(T0),
                  **kw)


def test_a_pair_in_flight_or_filled_whole_is_no_obligation():
    h = hedges()
    assert h.update(np.array([-0.01, 0.01, 0.0])) == [] and not h.open      # both legs working or filled
    assert h.update(np.array([0.0, 0.0, 5.0])) == []                         # another symbol's position


def test_a_leg_filled_alone_is_re_hedged_on_the_hedge_leg_within_the_band():
    h = hedges()
    (ev,) = h.update(np.array([-0.01, 0.0, 0.0]))        # sold 0.01 on Upbit, the Binance buy expired
    assert ev["event"] == "opened" and ev["qty"] == pytest.approx(0.01) and ev["since_ns"] == T0
    (row,) = h.intents(BID, ASK, busy=set())
    assert row["symbol_id"] == 1 and row["side"] == SIDE_BUY and row["qty"] == pytest.approx(0.01)
    assert row["order_type"] == ORDER_LIMIT and row["tif"] == TIF_IOC and row["strategy_id"] == HEDGE_STRATEGY
    assert row["limit_price"] == pytest.approx(115_010.0 * 1.001)             # 10 bps through the ask
    assert len(h.intents(BID, ASK, busy={1})) == 0                            # one working re-hedge at a time
    # it filled 0.006: the rest is re-hedged with the next attempt's seq
    (ev,) = h.update(np.array([-0.01, 0.006, 0.0]))
    assert ev["event"] == "changed" and h.open[0].qty == pytest.approx(0.004)
    (row2,) = h.intents(BID, ASK, busy=set())
    assert row2["qty"] == pytest.approx(0.004) and row2["seq"] == row["seq"] + 1
    (ev,) = h.update(np.array([-0.01, 0.01, 0.0]))
    assert ev["event"] == "closed" and not h.open and len(h.intents(BID, ASK, busy=set())) == 0


def test_a_long_excess_sells_at_most_the_band_under_the_bid_and_needs_a_quote():
    h = hedges(band_bps=5.0)
    h.update(np.array([0.02, 0.0, 0.0]))                  # bought on Upbit, the Binance sell did not fill
    (row,) = h.intents(BID, ASK, busy=set())
    assert row["side"] == SIDE_SELL and row["limit_price"] == pytest.approx(115_000.0 * (1 - 5e-4))
    assert len(h.intents(np.full(3, np.nan), ASK, busy=set())) == 0 and h.counters["no_quote"] == 1


def test_dust_below_the_lot_step_is_no_obligation():
    h = hedges(min_qty=1e-5)
    assert h.update(np.array([-0.01, 0.009995, 0.0])) == []


def test_an_obligation_past_its_time_limit_is_escalated_once():
    clock = SimClock(T0)
    h = hedges(clock)
    h.update(np.array([-0.01, 0.0, 0.0]))
    clock.advance(30 * S)
    assert h.update(np.array([-0.01, 0.0, 0.0])) == []
    clock.advance(1 * S)
    (ev,) = h.update(np.array([-0.01, 0.0, 0.0]))
    assert ev["event"] == "escalated" and "31s > 30s" in ev["reason"]
    assert h.update(np.array([-0.01, 0.0, 0.0])) == []


def test_a_re_hedge_in_flight_keeps_the_obligation_and_its_clock():
    clock = SimClock(T0)
    h = hedges(clock)
    h.update(np.array([-0.01, 0.0, 0.0]))
    clock.advance(20 * S)
    # the re-hedge works on Binance: the net counting it is flat, but nothing is hedged yet
    assert h.update(np.array([-0.01, 0.01, 0.0]), busy={1}) == [] and h.open[0].since_ns == T0
    clock.advance(11 * S)
    (ev,) = h.update(np.array([-0.01, 0.01, 0.0]), busy={1})     # still working, past the limit
    assert ev["event"] == "escalated"
    assert h.update(np.array([-0.01, 0.0, 0.0])) == []           # the IOC expired: the same obligation
    assert h.open[0].serial == 1 and h.open[0].escalated
    (ev,) = h.update(np.array([-0.01, 0.01, 0.0]))               # filled: closed
    assert ev["event"] == "closed" and not h.open


def test_a_restart_resumes_the_obligation_and_never_reuses_a_seq():
    clock = SimClock(T0)
    h = hedges(clock)
    journaled = h.update(np.array([-0.01, 0.0, 0.0]))
    (sent,) = h.intents(BID, ASK, busy=set())
    clock.advance(40 * S)
    again = hedges(clock)
    again.restore_events(journaled)
    # the re-hedge sent before the crash is in the order manager: its seq is skipped
    (ev,) = again.update(np.array([-0.01, 0.0, 0.0]))
    assert ev["event"] == "escalated" and again.open[0].since_ns == T0       # the clock kept counting
    (row,) = again.intents(BID, ASK, busy=set(), used=lambda seq: seq == int(sent["seq"]))
    assert row["seq"] == sent["seq"] + 1
    # a later obligation of the route takes a new serial: no seq of the first one again
    again.update(np.array([0.0, 0.0, 0.0]))
    again.update(np.array([0.0, 0.01, 0.0]))
    (row3,) = again.intents(BID, ASK, busy=set())
    assert row3["seq"] not in (sent["seq"], row["seq"]) and row3["side"] == SIDE_SELL


def test_a_route_reducing_for_an_open_hedge_lets_only_the_re_hedge_through():
    clock = SimClock(T0)
    limits = RiskConfig(max_gross_exposure=1e9, max_venue_exposure=1e9, max_position_notional=1e9,
                        max_order_notional=1e9, max_spread_bps=0)
    guard = RiskGuard(3, np.array([0, 1, 1]), ["upbit", "binance"], limits, clock, route_of=np.array([0, 0, -1]))
    guard.flag(Tier.ROUTE, 0, Denial.HEDGE_OPEN, True, "unhedged -0.01 on BTC upbit/binance for 31s")
    assert guard.tier_state(Tier.ROUTE, 0) == TradingState.REDUCING
    last = (BID + ASK) / 2
    fx = np.array([1 / 1383.0, 1.0, 1.0])
    mv = MarketView(np.array([-0.01, 0.0, 0.0]), last, BID, ASK, np.full(3, T0, np.int64), np.ones(2, bool),
                    np.full(2, T0, np.int64), np.zeros(2, np.int64), 1e5, 1e5, 1e5, fx=fx,
                    fx_fresh=np.ones(3, bool))
    h = hedges(clock)
    h.update(mv.position)
    rehedge = h.intents(BID, ASK, busy=set())
    pair = np.zeros(2, INTENT)                      # a new pair on the route: not while it is REDUCING
    pair["symbol_id"], pair["side"], pair["qty"] = [0, 1], [SIDE_SELL, SIDE_BUY], 0.01
    pair["order_type"], pair["tif"], pair["limit_price"] = ORDER_LIMIT, TIF_IOC, [BID[0], ASK[1]]
    pair["ref_price"], pair["seq"], pair["ts_origin_ns"] = [BID[0], ASK[1]], [1, 2], T0
    assert guard.check(rehedge, mv).tolist() == [Denial.PASSED]
    # a new pair: its Upbit leg is new exposure, its Binance leg alone closes the net (a re-hedge)
    assert guard.check(pair, mv).tolist() == [Denial.HEDGE_OPEN, Denial.PASSED]
    flat = MarketView(np.zeros(3), last, BID, ASK, np.full(3, T0, np.int64), np.ones(2, bool),
                      np.full(2, T0, np.int64), np.zeros(2, np.int64), 1e5, 1e5, 1e5, fx=fx,
                      fx_fresh=np.ones(3, bool))
    assert guard.check(pair, flat).tolist() == [Denial.HEDGE_OPEN, Denial.HEDGE_OPEN]
    guard.flag(Tier.ROUTE, 0, Denial.HEDGE_OPEN, False)
    assert guard.tier_state(Tier.ROUTE, 0) == TradingState.ACTIVE


# -- in execution: the desk, the paper broker and the journal ---------------------------------
def _desk(tmp_path, clock, ec_kw=None, **risk):
    from pipeline.config import ExecutionConfig, FxSource, RouteConfig
    from pipeline.journal import Journal
    from workers.execution.desk import Desk
    ec = ExecutionConfig(currency="USDT", fx=[FxSource(quote="KRW", rate=1383.0)], hedge_band_bps=10.0,
                         hedge_timeout_s=30.0, **(ec_kw or {}))
    rc = RiskConfig(**{"max_gross_exposure": 1e9, "max_venue_exposure": 1e9, "max_position_notional": 1e9,
                       "max_order_notional": 1e9, "max_quote_age_s": 0, **risk})
    d = Desk(["BTC/KRW@upbit", "BTC/USDT@binance"], np.array([0, 1]), ["upbit", "binance"], ec, rc, clock,
             Journal(tmp_path / "arb.sqlite"), "arb", "r1",
             routes=[RouteConfig(legs=["BTC/KRW@upbit", "BTC/USDT@binance"], qty=0.01)])
    d.recover()
    return d


def _tick(d, sid: int, bid: float, ask: float, last: float) -> None:
    from shm.records import TICK, TICK_TRADE
    t = np.zeros(1, TICK)
    t["symbol_id"], t["kind"], t["side"], t["size"], t["price"] = sid, TICK_TRADE, 1, 1.0, last
    t["bid"], t["ask"], t["ts_origin_ns"] = bid, ask, d.clock.time_ns()
    d.on_ticks(t)


def _leg(d, sid: int, side: int, limit: float, seq: int) -> np.ndarray:
    it = np.zeros(1, INTENT)
    it["seq"], it["symbol_id"], it["side"], it["qty"], it["ref_price"], it["limit_price"] = \
        seq, sid, side, 0.01, limit, limit
    it["order_type"], it["tif"], it["strategy_id"] = ORDER_LIMIT, TIF_IOC, 2
    it["ts_origin_ns"] = it["ts_ns"] = d.clock.time_ns()
    return it


def _hedge_rows(d) -> list[dict]:
    from pipeline import journal
    return [r["payload"]["hedge"] for r in journal.rows(d.journal.path, kinds=("risk_state",))
            if "hedge" in r["payload"]]


def test_a_leg_that_filled_alone_is_re_hedged_by_execution_and_journaled(tmp_path):
    clock = SimClock(T0)
    d = _desk(tmp_path, clock)
    _tick(d, 0, BID[0], ASK[0], BID[0])
    _tick(d, 1, BID[1], ASK[1], BID[1])
    d.on_intents(_leg(d, 0, SIDE_SELL, BID[0], 1))            # sells on Upbit at the bid: fills
    d.on_intents(_leg(d, 1, SIDE_BUY, BID[1], 2))             # bids on Binance under the ask: IOC expires
    d.poll()
    assert d.portfolio.rows["qty"].tolist() == pytest.approx([-0.01, 0.0])
    out = d.housekeeping()                                    # obligation -> re-hedge -> filled
    d.housekeeping()
    assert d.portfolio.rows["qty"].tolist() == pytest.approx([-0.01, 0.01])
    assert any(f["symbol_id"] == 1 for f in out.fills) or d.portfolio.rows["n_fills"][1] == 1
    assert [e["event"] for e in _hedge_rows(d)] == ["opened", "closed"]
    assert not d.hedges.open and d.guard.tier_state("route", 0) == TradingState.ACTIVE


def test_an_obligation_that_cannot_close_escalates_and_survives_a_restart(tmp_path):
    clock = SimClock(T0)
    d = _desk(tmp_path, clock)
    _tick(d, 0, BID[0], ASK[0], BID[0])
    _tick(d, 1, BID[1], ASK[1], 100_000.0)        # Binance's last trade far off: a hedge there is out of band
    d.on_intents(_leg(d, 0, SIDE_SELL, BID[0], 1))
    d.poll()
    d.housekeeping()
    assert 0 in d.hedges.open and "PRICE_BAND" in [r["payload"]["code"] for r in
                                                   __import__("pipeline.journal").journal.rows(
                                                       d.journal.path, kinds=("verdict",))]
    clock.advance(31 * S)
    d.housekeeping()
    assert d.hedges.open[0].escalated
    assert d.guard.tier_state("route", 0) == TradingState.REDUCING
    assert d.guard.tier_code("route", 0) == Denial.HEDGE_OPEN
    d.snapshot()
    d.journal.close()
    # a restart: the obligation is back with its opening time and its route still REDUCING
    clock.advance(5 * S)
    again = _desk(tmp_path, clock)
    assert again.hedges.open[0].since_ns == T0 and again.hedges.open[0].escalated
    assert again.guard.tier_state("route", 0) == TradingState.REDUCING
    _tick(again, 0, BID[0], ASK[0], BID[0])
    _tick(again, 1, BID[1], ASK[1], BID[1])          # Binance trades at its quote again: the hedge goes
    again.housekeeping()
    again.housekeeping()
    assert again.portfolio.rows["qty"].tolist() == pytest.approx([-0.01, 0.01])
    assert not again.hedges.open and again.guard.tier_state("route", 0) == TradingState.ACTIVE
    assert [e["event"] for e in _hedge_rows(again)] == ["opened", "escalated", "closed"]
    again.journal.close()


def test_re_hedges_slower_than_housekeeping_still_escalate(tmp_path):
    clock = SimClock(T0)
    d = _desk(tmp_path, clock, {"ack_latency_ms": 300.0, "fill_latency_ms": 300.0})   # answers in 0.6 s
    _tick(d, 0, BID[0], ASK[0], BID[0])
    _tick(d, 1, BID[1], ASK[1], BID[1])
    d.on_intents(_leg(d, 0, SIDE_SELL, BID[0], 1))       # the Upbit sell fills; no Binance partner
    clock.advance(S)
    d.poll()
    for step in range(40 * 20):                          # 40 s, a step every 50 ms, housekeeping every 0.5 s
        working = any(o.symbol_id == 1 for o in d.orders._live.values())
        _tick(d, 0, BID[0], ASK[0], BID[0])
        _tick(d, 1, BID[1], ASK[1] * (1.01 if working else 1.0), BID[1])    # the book runs from the re-hedge
        d.poll()
        if step % 10 == 0:
            d.housekeeping()
        clock.advance(S // 20)
    events = [e["event"] for e in _hedge_rows(d)]
    assert events[0] == "opened" and "escalated" in events and "closed" not in events
    assert d.guard.tier_code("route", 0) == Denial.HEDGE_OPEN
    assert d.portfolio.rows["qty"].tolist() == pytest.approx([-0.01, 0.0])    # never hedged twice over


def test_a_pair_goes_whole_or_not_at_all(tmp_path):
    from pipeline import journal
    clock = SimClock(T0)
    d = _desk(tmp_path, clock)
    _tick(d, 0, BID[0], ASK[0], BID[0])
    _tick(d, 1, BID[1], ASK[1], BID[1])
    d.guard.halt("venue", "binance", reason="maintenance")        # the Binance leg is refused...
    pair = np.zeros(2, INTENT)
    for i, row in enumerate((_leg(d, 0, SIDE_SELL, BID[0], 10), _leg(d, 1, SIDE_BUY, ASK[1], 11))):
        pair[i] = row[0]
    d.on_intents(pair)
    d.poll()
    codes = [r["payload"]["code"] for r in journal.rows(d.journal.path, kinds=("verdict",))]
    assert codes == ["PAIR_LEG", "HALTED"]                          # ...so the Upbit leg is too
    assert d.portfolio.rows["qty"].tolist() == [0.0, 0.0] and not d.hedges.open
    d.guard.resume("venue", "binance")
    pair["seq"] = [12, 13]
    d.on_intents(pair)
    d.poll()
    assert d.portfolio.rows["qty"].tolist() == pytest.approx([-0.01, 0.01])


def test_a_pair_refused_after_the_guard_goes_neither(tmp_path):
    from pipeline import journal
    clock = SimClock(T0)
    d = _desk(tmp_path, clock, {"ack_latency_ms": 200.0})

    def pair(*legs):
        out = np.zeros(len(legs), INTENT)
        for i, row in enumerate(legs):
            out[i] = row[0]
        return out

    def codes():
        return [(r["symbol"], r["payload"]["code"]) for r in journal.rows(d.journal.path, kinds=("verdict",))]
    _tick(d, 0, BID[0], ASK[0], BID[0])
    _tick(d, 1, BID[1], ASK[1], BID[1])
    d.hold_venue("upbit", "the order rules of upbit are not loaded yet")   # refused after the guard
    d.on_intents(pair(_leg(d, 0, SIDE_SELL, BID[0], 10), _leg(d, 1, SIDE_BUY, ASK[1], 11)))
    assert codes() == [("BTC/KRW@upbit", "VENUE_RULES"), ("BTC/USDT@binance", "PAIR_LEG")]
    assert not d.orders.orders
    d.set_rules("upbit", {})
    # a leg that fills alone (the Binance bid under the ask): its re-hedge is then in flight
    d.on_intents(pair(_leg(d, 0, SIDE_SELL, BID[0], 20), _leg(d, 1, SIDE_BUY, BID[1], 21)))
    clock.advance(S // 2)
    d.poll()
    d.housekeeping()
    assert [o.strategy_id for o in d.orders._live.values()] == [HEDGE_STRATEGY]
    clock.advance(S // 20)
    d.on_intents(pair(_leg(d, 0, SIDE_SELL, BID[0], 30), _leg(d, 1, SIDE_BUY, ASK[1] * 1.001, 31)))
    assert codes()[-2:] == [("BTC/KRW@upbit", "PAIR_LEG"), ("BTC/USDT@binance", "IN_FLIGHT")]
    clock.advance(S)
    d.poll()
    d.housekeeping()
    assert d.portfolio.rows["qty"].tolist() == pytest.approx([-0.01, 0.01])    # hedged, not doubled


def test_a_remainder_under_the_hedge_legs_lot_step_is_dust_once_its_rules_load(tmp_path):
    from decimal import Decimal
    from pipeline import journal
    from workers.execution.venue_rules import SymbolRules
    clock = SimClock(T0)
    d = _desk(tmp_path, clock)
    d.set_rules("binance", {1: SymbolRules("BTC/USDT", lot_step=Decimal("0.00001"), tick_size=Decimal("0.01"),
                                           min_qty=Decimal("0.00001"), min_notional=Decimal("5"))})
    _tick(d, 0, BID[0], ASK[0], BID[0])
    _tick(d, 1, BID[1], ASK[1], BID[1])
    pair = np.zeros(2, INTENT)
    pair[0], pair[1] = _leg(d, 0, SIDE_SELL, BID[0], 10)[0], _leg(d, 1, SIDE_BUY, ASK[1], 11)[0]
    pair[0]["qty"] = 0.00999995                           # an Upbit fill of 8 decimals: 5e-8 BTC over
    d.on_intents(pair)
    d.poll()
    for _ in range(40):
        d.housekeeping()
        clock.advance(S)
    assert not d.hedges.open and not _hedge_rows(d)
    assert not list(journal.rows(d.journal.path, kinds=("verdict",)))


# -- the feeds' L2 books in the paper broker ------------------------------------------------------
def test_a_market_order_walks_the_feeds_l2_book(tmp_path):
    """A real Binance book (tests/data/orderbook, 2025-08-23 21:05 UTC) given to execution as a
    BOOK row: a market sell of 3.1 BTC takes the 3.06231 BTC of the best bid, then the next
    levels, at their prices, not one price plus slippage."""
    import json
    from shm.records import BOOK, BOOK_LEVELS, ORDER_MARKET
    snap = json.loads((Path(__file__).parent / "data" / "orderbook"
                       / "binance_BTC-USDT_top20_snapshots_2025-08-23T2105Z.jsonl").read_text().splitlines()[0])
    clock = SimClock(T0)
    d = _desk(tmp_path, clock, max_route_imbalance=1e9)
    bids, asks = np.array(snap["bids"][:BOOK_LEVELS]), np.array(snap["asks"][:BOOK_LEVELS])
    _tick(d, 1, bids[0, 0], asks[0, 0], bids[0, 0])
    row = np.zeros(1, BOOK)
    row["symbol_id"], row["ts_origin_ns"], row["n_bids"], row["n_asks"] = 1, clock.time_ns(), BOOK_LEVELS, BOOK_LEVELS
    row["bid_px"], row["bid_sz"], row["ask_px"], row["ask_sz"] = bids[:, 0], bids[:, 1], asks[:, 0], asks[:, 1]
    d.on_books(row)
    it = _leg(d, 1, SIDE_SELL, bids[0, 0], 1)
    it["order_type"], it["qty"], it["limit_price"], it["strategy_id"] = ORDER_MARKET, 3.1, np.nan, 3
    out = d.on_intents(it)
    out.extend(d.poll())
    got = sorted(((float(f["price"]), float(f["qty"])) for f in out.fills), reverse=True)
    want, left = [], 3.1
    for px, sz in bids:
        take = min(sz, left)
        if take > 1e-12:
            want.append((px, take))
        left -= take
    assert [p for p, _ in got] == [p for p, _ in want] and len(want) == 5
    assert [q for _, q in got] == pytest.approx([q for _, q in want])


def test_obligations_and_route_causes_follow_their_route_when_the_config_reorders_them(tmp_path):
    from pipeline.config import ExecutionConfig, FxSource, RouteConfig
    from pipeline.journal import Journal
    from workers.execution.desk import Desk
    syms = ["BTC/KRW@upbit", "ETH/KRW@upbit", "BTC/USDT@binance", "ETH/USDT@binance"]
    btc = RouteConfig(legs=["BTC/KRW@upbit", "BTC/USDT@binance"], qty=0.01)
    eth = RouteConfig(legs=["ETH/KRW@upbit", "ETH/USDT@binance"], qty=0.1)

    def desk(routes, symbols=syms):
        ec = ExecutionConfig(currency="USDT", fx=[FxSource(quote="KRW", rate=1383.0)], hedge_timeout_s=30.0)
        rc = RiskConfig(max_gross_exposure=1e9, max_venue_exposure=1e9, max_position_notional=1e9,
                        max_order_notional=1e9, max_quote_age_s=0)
        venue_of = np.array([0 if s.endswith("@upbit") else 1 for s in symbols])
        d = Desk(symbols, venue_of, ["upbit", "binance"], ec, rc, clock, Journal(tmp_path / "arb.sqlite"),
                 "arb", "r1", routes=routes)
        d.recover()
        return d
    clock = SimClock(T0)
    d = desk([btc, eth])
    _tick(d, 0, BID[0], ASK[0], BID[0])
    _tick(d, 2, BID[1], ASK[1], 100_000.0)                 # Binance far off: the re-hedge is out of band
    d.on_intents(_leg(d, 0, SIDE_SELL, BID[0], 1))
    d.poll()
    d.housekeeping()
    clock.advance(31 * S)
    d.housekeeping()
    d.command({"action": "halt", "tier": "symbol", "key": "ETH/USDT@binance", "reason": "by hand"})
    assert d.hedges.open[0].escalated and d.guard.tier_code("route", 0) == Denial.HEDGE_OPEN
    d.journal.close()
    clock.advance(5 * S)
    again = desk([eth, btc], syms[::-1])                    # restarted with routes and symbols listed anew
    (ob,) = again.hedges.open.values()
    assert again.hedges.routes[ob.route].name == btc.name and ob.escalated and ob.since_ns == T0
    assert again.guard.tier_code("route", 1) == Denial.HEDGE_OPEN           # BTC's route, now index 1
    assert again.guard.tier_code("route", 0) != Denial.HEDGE_OPEN
    assert again.guard.tier_state("symbol", 0) == TradingState.HALTED       # ETH/USDT@binance, now first
    assert again.guard.tier_state("symbol", 3) != TradingState.HALTED
    again.journal.close()
