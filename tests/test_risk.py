"""The four-tier risk guard (workers/execution/risk.py): each rule's code and tier, the states'
meaning, manual commands, batch accumulation and the state round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.clock import SimClock
from shm.records import FLAG_STALE, INTENT, ORDER_LIMIT, ORDER_MARKET, SIDE_BUY, SIDE_SELL, TIF_GTC, TIF_IOC, TIF_POST_ONLY
from pipeline.config import RiskConfig
from workers.execution.risk import DAY_NS, Denial, MarketView, RiskGuard, Tier, TradingState, _Grouped

T0 = 1_700_000_000 * 1_000_000_000 + 3_600 * 1_000_000_000   # an hour into a UTC day
VENUES = ["binance", "upbit"]
VENUE_OF = np.array([0, 0, 1, 1])
ROUTE_OF = np.array([0, -1, 0, -1])      # symbols 0 and 2: one asset on two venues


# a desk of 100,000 equity: the limits these tests reason about, whatever the config's defaults
DESK = {"max_gross_exposure": 100_000.0, "max_venue_exposure": 50_000.0, "max_position_notional": 20_000.0,
        "max_order_notional": 5_000.0}


def limits(**over) -> RiskConfig:
    return RiskConfig(**{**DESK, **over})


def guard(clock=None, **over) -> RiskGuard:
    return RiskGuard(4, VENUE_OF, VENUES, limits(**over), clock or SimClock(T0), route_of=ROUTE_OF)


def market(clock_ns: int = T0, **over) -> MarketView:
    mv = MarketView(position=np.zeros(4), last=np.full(4, 100.0), bid=np.full(4, 99.99),
                    ask=np.full(4, 100.01), quote_ns=np.full(4, clock_ns, np.int64),
                    venue_connected=np.ones(2, bool), venue_last_ns=np.full(2, clock_ns, np.int64),
                    open_orders=np.zeros(2, np.int64), equity=100_000.0, equity_peak=100_000.0,
                    day_start_equity=100_000.0)
    for k, v in over.items():
        setattr(mv, k, v)
    return mv


def intents(*rows: dict, now_ns: int = T0) -> np.ndarray:
    """Intent rows caused by a tick at ``now_ns`` (``age`` seconds before it, and ``flags``, if given)."""
    out = np.zeros(len(rows), INTENT)
    for i, r in enumerate(rows):
        out[i]["symbol_id"] = r.get("sym", 0)
        out[i]["side"] = r.get("side", SIDE_BUY)
        out[i]["order_type"] = r.get("type", ORDER_MARKET)
        out[i]["tif"] = r.get("tif", TIF_IOC)
        out[i]["qty"] = r.get("qty", 1.0)
        out[i]["limit_price"] = r.get("limit", np.nan)
        out[i]["ref_price"] = r.get("ref", 100.0)
        out[i]["seq"] = i + 1
        out[i]["ts_origin_ns"] = now_ns - int(r.get("age", 0.0) * 1e9)
        out[i]["flags"] = r.get("flags", 0)
    return out


def buy(sym=0, qty=1.0, **kw) -> dict:
    return {"sym": sym, "side": SIDE_BUY, "qty": qty, **kw}


def sell(sym=0, qty=1.0, **kw) -> dict:
    return {"sym": sym, "side": SIDE_SELL, "qty": qty, **kw}


def codes(g: RiskGuard, mv: MarketView, *rows: dict) -> list[Denial]:
    return [Denial(int(c)) for c in g.check(intents(*rows, now_ns=g.clock.time_ns()), mv)]


# -- plain passing and bad input ------------------------------------------------------------------
def test_a_healthy_world_passes_buys_and_sells_and_counts_them():
    g = guard()
    assert codes(g, market(), buy(0), sell(1), buy(2, type=ORDER_LIMIT, tif=TIF_GTC, limit=100.5)) \
        == [Denial.PASSED] * 3
    assert g.passed() == 3 and sum(g.denials().values()) == 0
    assert g.tier_state("global") == TradingState.ACTIVE
    assert g.drain_events() == []


@pytest.mark.parametrize("row", [
    buy(qty=np.nan), buy(qty=-1.0), buy(qty=0.0), buy(sym=4), buy(sym=2**31),
    buy(ref=0.0), buy(ref=np.nan), buy(type=ORDER_LIMIT, tif=TIF_GTC, limit=0.0),
    buy(type=ORDER_LIMIT, tif=TIF_GTC, limit=np.nan), buy(qty=1e-200, ref=1e-200),  # notional underflows to 0
    {"sym": 0, "side": 0, "qty": 1.0}, buy(type=7), buy(tif=9),
    buy(limit=99.0), buy(tif=TIF_POST_ONLY)])                  # a market order: no limit, no post-only
def test_bad_input_is_a_coded_denial_not_a_crash(row):
    g = guard()
    assert codes(g, market(), row, buy(1)) == [Denial.BAD_INPUT, Denial.PASSED]
    assert codes(g, market(), row) == [Denial.BAD_INPUT]            # alone: the one-intent path
    assert g.denials()["BAD_INPUT"] == 2
    assert "bad input" in g.describe(intents(row)[0], Denial.BAD_INPUT)


def test_wrong_dtype_and_misshapen_market_are_errors_of_the_caller():
    g = guard()
    with pytest.raises(TypeError):
        g.check(np.zeros(2), market())
    with pytest.raises(ValueError):
        g.check(intents(buy()), market(last=np.full(3, 100.0)))


def test_invalid_account_figures_make_the_global_tier_reducing():
    g = guard()
    mv = market(position=np.array([1.0, 0, 0, 0]), equity=np.nan)
    assert codes(g, mv, buy(1), sell(0)) == [Denial.BAD_INPUT, Denial.PASSED]
    assert g.tier_state("global") == TradingState.REDUCING
    assert codes(g, market(), buy(1)) == [Denial.PASSED]         # automatic: recovers by itself
    assert g.tier_state("global") == TradingState.ACTIVE


# -- global tier ----------------------------------------------------------------------------------
def test_daily_loss_halts_everything_latched_to_the_next_utc_day():
    clock = SimClock(T0)
    g = guard(clock)
    mv = market(position=np.array([1.0, 0, 0, 0]), equity=96_000.0)
    assert codes(g, mv, buy(1), sell(0)) == [Denial.DAILY_LOSS, Denial.DAILY_LOSS]
    assert g.tier_state("global") == TradingState.HALTED
    [ev] = g.drain_events()
    assert (ev.tier, ev.key, ev.old, ev.new, ev.code, ev.manual) == \
        ("global", None, "ACTIVE", "HALTED", "DAILY_LOSS", False)
    assert "daily loss 4.00%" in ev.reason and ev.ts_ns == T0
    clock.advance(60 * 10**9)                                     # equity bounces back: still halted
    assert codes(g, market(clock.time_ns(), equity=99_000.0), buy(1)) == [Denial.DAILY_LOSS]
    clock.set((T0 // DAY_NS + 1) * DAY_NS)                        # the next UTC day, new day start
    assert codes(g, market(clock.time_ns(), equity=99_000.0, day_start_equity=99_000.0), buy(1)) \
        == [Denial.PASSED]
    assert g.drain_events()[-1].new == "ACTIVE"


def test_daily_loss_state_is_configurable():
    g = guard(daily_loss_state="reducing")
    mv = market(position=np.array([1.0, 0, 0, 0]), equity=96_000.0)
    assert codes(g, mv, buy(1), sell(0)) == [Denial.DAILY_LOSS, Denial.PASSED]
    assert g.tier_state("global") == TradingState.REDUCING


def test_drawdown_reduces_and_stays_until_resume():
    g = guard()
    mv = market(position=np.array([2.0, 0, 0, 0]), equity=99_000.0, equity_peak=111_000.0)
    assert codes(g, mv, buy(0), sell(0)) == [Denial.DRAWDOWN, Denial.PASSED]
    assert g.tier_state("global") == TradingState.REDUCING
    healthy = market(position=np.array([1.0, 0, 0, 0]))
    assert codes(g, healthy, buy(1)) == [Denial.DRAWDOWN]          # latched
    g.resume("global")
    assert codes(g, healthy, buy(1)) == [Denial.PASSED]
    assert [e.new for e in g.drain_events()] == ["REDUCING", "ACTIVE"]


def test_gross_exposure_over_its_limit_reduces_and_an_intent_past_it_is_denied():
    g = guard(max_gross_exposure=1_000.0)
    assert codes(g, market(), buy(0, 9), buy(1, 2)) == [Denial.PASSED, Denial.GROSS_EXPOSURE]
    over = market(position=np.array([6.0, 0, 6.0, 0]), last=np.full(4, 100.0))
    assert codes(g, over, buy(1), sell(0)) == [Denial.GROSS_EXPOSURE, Denial.PASSED]
    assert g.tier_state("global") == TradingState.REDUCING


def test_a_position_nothing_values_fails_closed():
    g = guard()
    mv = market(position=np.array([1.0, 0, 0, 0]), last=np.array([np.nan, 100, 100, 100]),
                bid=np.array([np.nan, 99.99, 99.99, 99.99]))
    assert codes(g, mv, buy(1))[0] == Denial.GROSS_EXPOSURE
    assert g.tier_state("global") == TradingState.REDUCING


def test_kill_switch_blocks_everything_and_resume_does_not_lift_it():
    g = guard()
    mv = market(position=np.array([1.0, 0, 0, 0]))
    g.kill_switch(True)
    assert codes(g, mv, buy(1), sell(0)) == [Denial.KILL_SWITCH] * 2
    assert g.allows_cancel()
    g.resume("global")
    assert codes(g, mv, sell(0)) == [Denial.KILL_SWITCH]
    g.kill_switch(False)
    assert codes(g, mv, sell(0)) == [Denial.PASSED]
    evs = g.drain_events()
    assert [(e.code, e.new, e.manual) for e in evs] == [("KILL_SWITCH", "HALTED", True),
                                                          ("KILL_SWITCH", "ACTIVE", True)]


# -- venue tier -----------------------------------------------------------------------------------
def test_an_unhealthy_venue_is_reducing_until_its_feed_is_back():
    clock = SimClock(T0)
    g = guard(clock)
    pos = np.array([0, 0, 1.0, 0])
    down = market(position=pos, venue_connected=np.array([True, False]))
    assert codes(g, down, buy(2), sell(2), buy(0)) == [Denial.VENUE_UNHEALTHY, Denial.PASSED, Denial.PASSED]
    assert g.tier_state("venue", "upbit") == TradingState.REDUCING
    assert g.tier_state(Tier.VENUE, 0) == TradingState.ACTIVE
    ev = g.drain_events()[0]
    assert (ev.tier, ev.key, ev.code) == ("venue", "upbit", "VENUE_UNHEALTHY")
    assert codes(g, market(position=pos), buy(3)) == [Denial.PASSED]     # reconnected
    assert g.tier_state("venue", "upbit") == TradingState.ACTIVE
    clock.advance(11 * 10**9)                                      # connected but silent past 10 s
    silent = market(clock.time_ns(), position=pos, venue_last_ns=np.array([clock.time_ns(), T0]))
    assert codes(g, silent, buy(3)) == [Denial.VENUE_UNHEALTHY]
    assert "silent 11.0s" in g.describe(intents(buy(3))[0], Denial.VENUE_UNHEALTHY)
    assert [(e.old, e.new) for e in g.drain_events()] == [("REDUCING", "ACTIVE"), ("ACTIVE", "REDUCING")]


def test_venue_exposure():
    g = guard(max_venue_exposure=1_500.0, max_position_notional=1_000.0)
    assert codes(g, market(), buy(0, 9), buy(1, 9), buy(2, 9)) == \
        [Denial.PASSED, Denial.VENUE_EXPOSURE, Denial.PASSED]
    over = market(position=np.array([9.0, 9.0, 0, 0]))
    assert codes(g, over, buy(2), sell(1)) == [Denial.PASSED, Denial.PASSED]
    assert g.tier_state("venue", "binance") == TradingState.REDUCING
    assert g.tier_code("venue", "binance") == Denial.VENUE_EXPOSURE


def test_open_orders_count_resting_orders_only():
    g = guard(max_open_orders=2)
    lim = {"type": ORDER_LIMIT, "tif": TIF_GTC, "limit": 100.0}
    mv = market(open_orders=np.array([1, 0]))
    assert codes(g, mv, buy(0, **lim), buy(1, **lim), buy(0), buy(2, **lim)) == \
        [Denial.PASSED, Denial.OPEN_ORDERS, Denial.PASSED, Denial.PASSED]


def test_order_rate_is_a_token_bucket_per_venue_on_the_clock():
    clock = SimClock(T0)
    g = guard(clock, max_orders_per_s=2.0, order_burst=3)
    got = codes(g, market(), *[buy(0, 0.1)] * 4, buy(2, 0.1))
    assert got == [Denial.PASSED] * 3 + [Denial.ORDER_RATE, Denial.PASSED]
    assert codes(g, market(), buy(1, 0.1)) == [Denial.ORDER_RATE]  # bucket empty, denials took none
    clock.advance(500_000_000)                                      # half a second: one token back
    assert codes(g, market(clock.time_ns()), buy(1, 0.1), buy(1, 0.1)) == [Denial.PASSED, Denial.ORDER_RATE]
    assert g.denials()["ORDER_RATE"] == 3


# -- route tier -----------------------------------------------------------------------------------
def test_route_imbalance_and_open_legs():
    g = guard(max_route_imbalance=500.0)
    # long 4 on binance, short 4 on upbit: balanced; another 2 on one leg goes past 500
    assert codes(g, market(), buy(0, 4), sell(2, 4), buy(0, 6), buy(2, 1)) == \
        [Denial.PASSED, Denial.PASSED, Denial.ROUTE_IMBALANCE, Denial.PASSED]
    over = market(position=np.array([8.0, 0, 0, 0]))
    # a REDUCING route takes what closes its net: closing the leg, or hedging on the other one
    # (a re-hedge of a leg that filled alone); a hedge past flat is new exposure the other way
    assert codes(g, over, buy(0), sell(2, 3), sell(0, 3)) == \
        [Denial.ROUTE_IMBALANCE, Denial.PASSED, Denial.PASSED]
    assert g.tier_state("route", 0) == TradingState.REDUCING
    assert codes(g, over, sell(2, 10)) == [Denial.ROUTE_IMBALANCE]
    g2 = guard(max_open_legs=1)
    assert codes(g2, market(), buy(0), sell(2), buy(1)) == [Denial.PASSED, Denial.OPEN_LEGS, Denial.PASSED]


# -- symbol tier ----------------------------------------------------------------------------------
def test_position_limit_trips_the_symbol_to_reducing():
    g = guard(max_position_notional=1_000.0)
    over = market(position=np.array([0, 0, 0, 11.0]))
    assert codes(g, over, buy(3), sell(3), buy(2)) == [Denial.POSITION_LIMIT, Denial.PASSED, Denial.PASSED]
    assert g.tier_state("symbol", 3) == TradingState.REDUCING
    assert g.tier_state("symbol", 2) == TradingState.ACTIVE


def test_batch_accumulation_later_intents_see_earlier_ones():
    """Ten buys that each fit the position limit but together exceed it: the later ones denied,
    and a denied intent does not count against the next."""
    g = guard(max_position_notional=1_000.0, max_gross_exposure=10_000.0)
    got = codes(g, market(), *[buy(1, 1.5)] * 10)
    assert got == [Denial.PASSED] * 6 + [Denial.POSITION_LIMIT] * 4
    got = codes(g, market(), *[buy(1, 1.5)] * 6, sell(1, 3.0), buy(1, 1.0), buy(1, 2.0))
    assert got == [Denial.PASSED] * 6 + [Denial.PASSED, Denial.PASSED, Denial.PASSED]
    got = codes(g, market(), buy(1, 9.5), buy(1, 0.4), buy(1, 0.2), buy(1, 0.1))
    assert got == [Denial.PASSED, Denial.PASSED, Denial.POSITION_LIMIT, Denial.PASSED]


def test_order_notional_spread_band_and_stale_quote():
    clock = SimClock(T0)
    g = guard(clock)
    assert codes(g, market(), buy(0, 60)) == [Denial.ORDER_NOTIONAL]
    wide = market(bid=np.full(4, 99.0), ask=np.full(4, 101.0))
    assert codes(g, wide, buy(0), buy(0, type=ORDER_LIMIT, tif=TIF_GTC, limit=100.0)) == \
        [Denial.SPREAD, Denial.PASSED]
    no_quote = market(bid=np.full(4, np.nan))
    assert codes(g, no_quote, buy(0)) == [Denial.SPREAD]
    assert codes(g, market(), buy(0, type=ORDER_LIMIT, tif=TIF_GTC, limit=103.0),
                 buy(0, type=ORDER_LIMIT, tif=TIF_GTC, limit=101.0)) == [Denial.PRICE_BAND, Denial.PASSED]
    assert codes(g, market(last=np.full(4, np.nan)), buy(0)) == [Denial.PRICE_BAND]
    clock.advance(6 * 10**9)
    now = clock.time_ns()
    stale = market(now, position=np.array([0, 0, 1.0, 0]),
                   quote_ns=np.array([now, now, T0, now]))
    assert codes(g, stale, buy(2), sell(2), buy(0)) == [Denial.STALE_QUOTE, Denial.PASSED, Denial.PASSED]
    assert g.tier_state("symbol", 2) == TradingState.REDUCING
    assert codes(g, market(now, position=np.array([0, 0, 1.0, 0])), buy(2)) == [Denial.PASSED]


# -- states ---------------------------------------------------------------------------------------
def test_reducing_passes_only_intents_toward_zero_and_denies_a_crossing_whole():
    g = guard()
    g.halt("symbol", 0, reducing=True, reason="desk says so")
    long2 = market(position=np.array([2.0, 0, 0, 0]))
    assert codes(g, long2, buy(0), sell(0, 3), sell(0, 2)) == \
        [Denial.REDUCING_ONLY, Denial.REDUCING_ONLY, Denial.PASSED]
    # within a batch: 1.5 then 1.5 of a long 2 -- the second would cross
    assert codes(g, long2, sell(0, 1.5), sell(0, 1.5), sell(0, 0.5)) == \
        [Denial.PASSED, Denial.REDUCING_ONLY, Denial.PASSED]
    short = market(position=np.array([-1.0, 0, 0, 0]))
    assert codes(g, short, buy(0, 0.5), sell(0, 0.1)) == [Denial.PASSED, Denial.REDUCING_ONLY]
    assert codes(g, market(), sell(0)) == [Denial.REDUCING_ONLY]    # flat: nothing reduces
    assert "desk says so" in g.describe(intents(buy(0))[0], Denial.REDUCING_ONLY)


def test_halt_and_resume_by_command_per_tier():
    g = guard()
    mv = market(position=np.array([1.0, 1.0, 1.0, 1.0]))
    g.halt("venue", "binance")
    assert codes(g, mv, sell(0), sell(1), sell(2)) == [Denial.HALTED, Denial.HALTED, Denial.PASSED]
    g.halt("global", reducing=True)
    assert codes(g, mv, buy(2), sell(2), sell(0)) == [Denial.REDUCING_ONLY, Denial.PASSED, Denial.HALTED]
    g.resume("venue", "binance")
    g.resume(Tier.GLOBAL)
    g.halt("route", 0)
    assert codes(g, mv, buy(0), buy(1), sell(2)) == [Denial.HALTED, Denial.PASSED, Denial.HALTED]
    g.halt("route", 0, reducing=True)                              # replaces the halt
    assert g.tier_state("route", 0) == TradingState.REDUCING
    g.resume("route", 0)
    assert codes(g, mv, buy(0)) == [Denial.PASSED]
    evs = g.drain_events()
    assert all(e.manual for e in evs) and evs[0].key == "binance" and evs[0].new == "HALTED"
    assert g.denials()["HALTED"] == 5 and g.denials()["REDUCING_ONLY"] == 1
    with pytest.raises(ValueError):
        g.halt("venue", "kraken")
    with pytest.raises(ValueError):
        g.halt("symbol", 4)


def test_a_manual_halt_outlives_an_automatic_cause_and_the_wider_tier_names_it():
    g = guard()
    g.halt("symbol", 2)
    down = market(venue_connected=np.array([True, False]), position=np.array([0, 0, 1.0, 0]))
    assert codes(g, down, sell(2)) == [Denial.HALTED]              # halted beats venue reducing
    assert codes(g, market(position=np.array([0, 0, 1.0, 0])), sell(2)) == [Denial.HALTED]
    g.resume("symbol", 2)
    assert codes(g, down, sell(2), buy(2)) == [Denial.PASSED, Denial.VENUE_UNHEALTHY]


def test_states_survive_a_restart_through_json():
    clock = SimClock(T0)
    g = guard(clock)
    g.halt("symbol", 3, reason="bad fills")
    g.halt("venue", "upbit", reducing=True)
    codes(g, market(equity=96_000.0), buy(0))                       # daily loss, latched
    saved = json.loads(json.dumps(g.state()))
    g2 = RiskGuard(4, VENUE_OF, VENUES, limits(), clock, route_of=ROUTE_OF, saved=saved)
    assert g2.drain_events() == []
    assert g2.tier_state("symbol", 3) == TradingState.HALTED
    assert g2.tier_state("venue", "upbit") == TradingState.REDUCING
    assert g2.denials()["DAILY_LOSS"] == 1
    pos = np.array([0, 0, 0, 1.0])
    # both halted: the wider tier names the cause
    assert codes(g2, market(position=pos), sell(3), buy(0)) == [Denial.DAILY_LOSS, Denial.DAILY_LOSS]
    g2.resume("global")
    assert codes(g2, market(position=pos), sell(3), buy(0), buy(2)) == \
        [Denial.HALTED, Denial.PASSED, Denial.REDUCING_ONLY]
    other = RiskGuard(4, VENUE_OF, ["binance", "okx"], limits(), clock, route_of=ROUTE_OF)
    with pytest.raises(ValueError):
        other.restore(saved)


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_order_notional"):
        guard(max_order_notional=0.0)
    with pytest.raises(ValueError, match="max_drawdown_frac"):
        guard(max_drawdown_frac=np.nan)
    with pytest.raises(ValueError, match="drawdown_state"):
        guard(drawdown_state="active")
    guard(max_spread_bps=0, max_quote_age_s=0)        # 0: those two checks off


def test_an_empty_batch_still_moves_the_tiers():
    g = guard()
    assert len(g.check(np.zeros(0, INTENT), market(venue_connected=np.array([False, True])))) == 0
    assert g.tier_state("venue", "binance") == TradingState.REDUCING


def test_the_fast_pass_and_the_one_by_one_finish_agree():
    """A batch is checked all at once until its first breach, then one intent at a time: a first
    intent that breaches (too big for the position limit) forces the whole rest down the slow
    path, and its codes must match the fast path's on the same batch without it."""
    rng = np.random.default_rng(7)
    limits = {"max_position_notional": 1_000.0, "max_order_notional": 5_000.0, "max_gross_exposure": 2_500.0,
              "max_venue_exposure": 1_800.0, "max_route_imbalance": 700.0, "max_open_legs": 1,
              "max_open_orders": 3, "order_burst": 12}
    lim = {"type": ORDER_LIMIT, "tif": TIF_GTC}
    for _ in range(40):
        rows = []
        for _ in range(int(rng.integers(1, 25))):
            row = (buy if rng.random() < 0.6 else sell)(int(rng.integers(4)), float(rng.choice([0.5, 1.0, 3.0])))
            if rng.random() < 0.3:
                row.update(lim, limit=100.0)
            rows.append(row)
        pos = rng.choice([-4.0, 0.0, 2.0], 4)
        fast, slow = guard(**limits), guard(**limits)
        if rng.random() < 0.5:
            fast.halt("venue", "upbit", reducing=True)
            slow.halt("venue", "upbit", reducing=True)
        got = codes(fast, market(position=pos), *rows)
        ref = codes(slow, market(position=pos), buy(1, 20.0), *rows)
        assert ref[0] == Denial.POSITION_LIMIT
        assert got == ref[1:]


def test_one_intent_alone_gets_the_code_it_gets_first_in_a_batch():
    """A batch of one takes plain floats and the one-by-one rules (a backtest's path); first in a
    batch of two it takes the vectorised rules and the fast pass: the codes must agree for every
    rule, bad input, halts, prices and quotes with NaN, stale intents, limits and the rate."""
    rng = np.random.default_rng(11)
    limits = {"max_position_notional": 1_000.0, "max_gross_exposure": 2_500.0, "max_venue_exposure": 1_800.0,
              "max_open_orders": 1, "order_burst": 2, "max_spread_bps": 30.0, "price_band_bps": 200.0,
              "max_intent_age_s": 5.0}
    pick = rng.choice
    seen = set()
    for _ in range(400):
        row = (buy if rng.random() < 0.6 else sell)(int(pick([0, 1, 2, 3, 3, 7])),
                                                     float(pick([0.5, 1.0, 3.0, 20.0, 60.0, 0.0, np.nan, 1e-12])))
        if rng.random() < 0.3:
            row.update(type=ORDER_LIMIT, tif=int(pick([TIF_GTC, TIF_IOC, 9])), limit=float(pick([100.0, 90.0, np.nan])))
        row.update(ref=float(pick([100.0, 100.0, 0.0, np.inf])), age=float(pick([0.0, 0.0, 6.0])),
                   flags=int(pick([0, 0, FLAG_STALE])))
        if rng.random() < 0.1:
            row["side"] = 0
        bid, ask, last = (pick([99.99, 99.99, 99.99, 99.0, np.nan], 4), pick([100.01, 100.01, 100.01, 101.0, np.nan], 4),
                          pick([100.0, 100.0, 100.0, 90.0, np.nan], 4))
        mv = {"position": pick([-4.0, 0.0, 2.0], 4), "bid": bid, "ask": ask, "last": last}
        if rng.random() < 0.2:
            mv["fx"] = pick([1.0, 1.0, 0.5, np.nan], 4)
        alone, first = guard(**limits), guard(**limits)
        reducing, halted = rng.random() < 0.3, rng.random() < 0.2
        for g in (alone, first):
            if reducing:
                g.halt("venue", "upbit", reducing=True)
            if halted:
                g.halt("symbol", 3)
        got = codes(alone, market(**mv), row)
        assert got == codes(first, market(**mv), row, sell(0, 0.5))[:1]
        seen.add(got[0])
    assert {Denial.PASSED, Denial.BAD_INPUT, Denial.HALTED, Denial.REDUCING_ONLY, Denial.ORDER_NOTIONAL, Denial.FX_RATE, Denial.SPREAD,
            Denial.PRICE_BAND, Denial.STALE_INTENT, Denial.POSITION_LIMIT} <= seen


def test_running_sums_per_key_round_as_adding_one_by_one():
    """The batch's running sums per symbol, venue and route (every key once, one key, a mix):
    each row's start plus the earlier rows of its key, bit for bit as adding them in order."""
    rng = np.random.default_rng(5)
    for keys in ([3, 1, 2, 0], [1, 1, 1, 1, 1], [2, 0, 2, 1, 0, 2], list(rng.integers(0, 4, 30))):
        keys = np.array(keys, np.int64)
        start, x = rng.normal(size=4) * 1e3, rng.normal(size=len(keys)) * 1e-3
        acc, want = list(start), []
        for k, v in zip(keys.tolist(), x.tolist()):
            want.append(acc[k])
            acc[k] += v
        assert _Grouped(keys).before(start, x).tolist() == want

def test_a_stale_intent_only_reduces():
    """From a stale model stage (FLAG_STALE) or older than max_intent_age_s: it may close or
    shrink a position, never open, grow or flip one."""
    g = guard(max_intent_age_s=5.0)
    pos = np.array([2.0, 0.0, 0.0, 0.0])
    assert codes(g, market(position=pos), buy(1, age=6.0), buy(0, flags=FLAG_STALE), sell(0, 3.0, age=6.0),
                 sell(0, 1.0, age=6.0), sell(0, 1.0, flags=FLAG_STALE), buy(1, age=4.0)) == \
        [Denial.STALE_INTENT, Denial.STALE_INTENT, Denial.STALE_INTENT, Denial.PASSED, Denial.PASSED,
         Denial.PASSED]
