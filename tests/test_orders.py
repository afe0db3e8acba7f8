"""The order lifecycle: deterministic client ids, allowed transitions only, venue
duplicates and late messages counted never applied twice, unknown orders blocking
their symbol until resolved, and the journal's events rebuilding every order."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from pipeline.clock import SimClock
from shm.records import (INTENT, ORDER_LIMIT, ORDER_MARKET, REASON_ENTRY, SIDE_BUY, SIDE_SELL,
                         TIF_GTC, TIF_IOC)
from workers.execution.orders import (TERMINAL, TRANSITIONS, IllegalTransition, Order, OrderManager,
                                      OrderState, SymbolBlocked, UnknownOrder, VenueStatus,
                                      client_order_id, orders_from_events)

S = OrderState
BINANCE_RE = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
PIPE = "desk-a"


def intent(seq: int, symbol_id: int = 1, side: int = SIDE_BUY, qty: float = 2.0,
           limit_price: float = 100.0, order_type: int = ORDER_LIMIT, tif: int = TIF_GTC):
    row = np.zeros(1, INTENT)
    row["ts_origin_ns"] = 111
    row["ts_ns"] = 222
    row["seq"] = seq
    row["symbol_id"] = symbol_id
    row["strategy_id"] = 7
    row["side"] = side
    row["order_type"] = order_type
    row["tif"] = tif
    row["reason"] = REASON_ENTRY
    row["qty"] = qty
    row["limit_price"] = limit_price
    row["ref_price"] = 100.0
    return row


def manager() -> tuple[OrderManager, SimClock]:
    clock = SimClock(1_000)
    return OrderManager(clock), clock


def sent(om: OrderManager, clock: SimClock, seq: int, **kw) -> str:
    """A created and submitted order's client id."""
    order = om.create(intent(seq, **kw), "binance", PIPE, 7)
    clock.advance(10)
    om.submitted(order.client_id)
    clock.advance(10)
    return order.client_id


# -- client order ids ----------------------------------------------------------------------------
def test_client_id_is_valid_everywhere_and_deterministic():
    for pipeline, strategy, seq in [(PIPE, 7, 0), (PIPE, "momentum v2/ü", 2**64 - 1),
                                    ("x" * 300, 65535, 12345678901234), ("", 0, 1)]:
        cid = client_order_id(pipeline, strategy, seq)
        assert BINANCE_RE.match(cid) and len(cid) <= 36, cid
        assert cid == client_order_id(pipeline, strategy, seq)       # a restart derives the same
    assert client_order_id(PIPE, 7, 5) == client_order_id(PIPE, np.uint16(7), np.uint64(5))


def test_client_ids_are_distinct_over_seqs_pipelines_and_strategies():
    ids = {client_order_id(PIPE, 7, seq) for seq in range(100_000)}
    assert len(ids) == 100_000
    other = {client_order_id("desk-b", 7, seq) for seq in range(100_000)}
    assert not ids & other
    assert client_order_id(PIPE, 7, 1) != client_order_id(PIPE, 8, 1)
    assert client_order_id(PIPE, "mom", 1) != client_order_id(PIPE, "rev", 1)
    assert client_order_id(PIPE, 12, 1) != client_order_id(PIPE, 1, 21)   # separators keep them apart


def test_client_id_refuses_a_negative_seq_or_an_odd_strategy():
    with pytest.raises(ValueError):
        client_order_id(PIPE, 7, -1)
    with pytest.raises(TypeError):
        client_order_id(PIPE, 7.5, 1)


# -- the lifecycle --------------------------------------------------------------------------------
def test_full_lifecycle_with_partial_fills():
    om, clock = manager()
    order = om.create(intent(1), "binance", PIPE, 7)
    assert order.state is S.CREATED and order.qty == 2.0 and order.limit_price == 100.0
    assert order.symbol_id == 1 and order.side == SIDE_BUY and order.strategy_id == 7
    clock.advance(5)
    om.submitted(order.client_id)
    clock.advance(5)
    assert om.on_ack(order.client_id, "v-9")
    clock.advance(5)
    assert om.on_fill(order.client_id, "t1", 0.5, 100.0, 0.05, 2)
    assert order.state is S.PARTIALLY_FILLED
    assert om.on_fill(order.client_id, "t2", 1.5, 99.0, 0.15, 1)
    assert order.state is S.FILLED and order.filled_qty == 2.0 and order.remaining_qty == 0
    assert order.avg_price == pytest.approx((0.5 * 100 + 1.5 * 99) / 2)
    assert order.fees == pytest.approx(0.2) and order.venue_order_id == "v-9"
    assert order.timestamps == {"CREATED": 1000, "SUBMITTED": 1005, "ACCEPTED": 1010,
                                "PARTIALLY_FILLED": 1015, "FILLED": 1015}
    events = om.drain_events()
    assert [(e.old, e.new) for e in events] == [
        (S.CREATED, S.CREATED), (S.CREATED, S.SUBMITTED), (S.SUBMITTED, S.ACCEPTED),
        (S.ACCEPTED, S.PARTIALLY_FILLED), (S.PARTIALLY_FILLED, S.FILLED)]
    assert events[3].detail["fill_id"] == "t1" and events[3].ts_ns == 1015
    assert om.drain_events() == [] and om.open_orders() == []


def test_transition_table_has_no_way_out_of_a_terminal_state():
    assert set(TRANSITIONS) == set(OrderState)
    for state in TERMINAL:
        assert not TRANSITIONS[state]
    assert S.REJECTED not in TRANSITIONS[S.ACCEPTED]         # a venue does not reject a live order
    assert S.UNKNOWN in TRANSITIONS[S.SUBMITTED] and S.UNKNOWN not in TRANSITIONS[S.ACCEPTED]


def test_our_own_illegal_steps_raise():
    om, clock = manager()
    cid = sent(om, clock, 1)
    with pytest.raises(IllegalTransition):
        om.submitted(cid)                                   # a second send
    other = om.create(intent(2, symbol_id=2), "binance", PIPE, 7).client_id
    with pytest.raises(IllegalTransition):
        om.on_fill(other, "t1", 1.0, 100.0, 0.0, 1)         # a fill for an order never sent
    with pytest.raises(IllegalTransition):
        om.no_answer(other)
    with pytest.raises(IllegalTransition):
        om.on_ack(other, "v")
    om.on_ack(cid, "v1")
    with pytest.raises(IllegalTransition):
        om.resolve_unknown(cid, VenueStatus(S.FILLED, 2.0))   # answered: nothing to resolve
    with pytest.raises(UnknownOrder):
        om.on_fill("tpnobody-1-1", "t", 1.0, 1.0, 0.0, 1)
    with pytest.raises(ValueError):
        om.on_fill(cid, "t9", math.nan, 100.0, 0.0, 1)


def test_a_second_create_for_one_intent_returns_the_first_flagged():
    om, clock = manager()
    first = om.create(intent(1), "binance", PIPE, 7)
    om.submitted(first.client_id)
    again = om.create(intent(1, qty=5.0), "binance", PIPE, 7)
    assert again is first and again.duplicate and again.qty == 2.0
    assert om.stats["duplicate_creates"] == 1 and len(om.orders) == 1
    assert not om.create(intent(2), "binance", PIPE, 7).duplicate


def test_create_takes_the_rounded_quantity_and_price():
    om, _ = manager()
    order = om.create(intent(1, qty=2.123456), "binance", PIPE, 7, qty=2.12, limit_price=99.9)
    assert order.qty == 2.12 and order.limit_price == 99.9
    market = om.create(intent(2, order_type=ORDER_MARKET, limit_price=math.nan), "binance", PIPE, 7)
    assert math.isnan(market.limit_price) and market.order_type == ORDER_MARKET
    with pytest.raises(ValueError):
        om.create(intent(3, qty=0.0), "binance", PIPE, 7)


# -- venue duplicates and out-of-order messages --------------------------------------------------
def test_the_same_fill_twice_is_applied_once_and_counted():
    om, clock = manager()
    cid = sent(om, clock, 1)
    om.on_ack(cid, "v1")
    assert om.on_fill(cid, "t1", 1.0, 100.0, 0.1, 1)
    assert not om.on_fill(cid, "t1", 1.0, 100.0, 0.1, 1)
    assert om.get(cid).filled_qty == 1.0 and om.get(cid).fees == pytest.approx(0.1)
    assert om.on_fill(cid, "t2", 1.0, 100.0, 0.1, 1)
    assert not om.on_fill(cid, "t2", 1.0, 100.0, 0.1, 1)     # after FILLED too
    assert om.stats["duplicate_messages"] == 2 and om.get(cid).fill_ids == ["t1", "t2"]
    assert not om.on_ack(cid, "v1") and om.get(cid).state is S.FILLED   # a late ack: kept FILLED


def test_a_fill_before_the_ack_and_an_ack_after_it():
    om, clock = manager()
    cid = sent(om, clock, 1)
    assert om.on_fill(cid, "t1", 2.0, 100.0, 0.0, 1)          # SUBMITTED -> FILLED
    assert om.get(cid).state is S.FILLED
    assert not om.on_ack(cid, "v7")
    assert om.get(cid).state is S.FILLED and om.get(cid).venue_order_id == "v7"
    assert om.stats["late_messages"] == 1


def test_a_fill_beyond_the_order_quantity_is_refused_and_counted():
    om, clock = manager()
    cid = sent(om, clock, 1)
    assert om.on_fill(cid, "t1", 2.0, 100.0, 0.0, 1)
    assert not om.on_fill(cid, "t-other-id", 0.5, 100.0, 0.0, 1)
    order = om.get(cid)
    assert order.filled_qty == 2.0 and order.fill_ids == ["t1"] and om.stats["overfills"] == 1
    assert om.drain_events()[-1].detail["event"] == "overfill"


def test_fills_after_a_venue_status_said_filled_are_applied_up_to_the_quantity():
    """FILLED by the venue's word (resolve) carries no trades: the trades that come
    after it are the position's only source, applied once each, never past the qty."""
    om, clock = manager()
    cid = sent(om, clock, 1)
    om.no_answer(cid)
    om.resolve_unknown(cid, VenueStatus(S.FILLED, 2.0, "v1", 100.5))
    order = om.get(cid)
    assert order.state is S.FILLED and order.filled_qty == 2.0 and order.fills_qty == 0
    assert order.unattributed_qty == 2.0 and order.avg_price == 100.5
    assert om.on_fill(cid, "t1", 1.2, 100.0, 0.0, 1) and om.on_fill(cid, "t2", 0.8, 101.0, 0.0, 1)
    assert order.state is S.FILLED and order.unattributed_qty == 0 and order.filled_qty == 2.0
    assert order.avg_price == pytest.approx((1.2 * 100 + 0.8 * 101) / 2)
    assert not om.on_fill(cid, "t1", 1.2, 100.0, 0.0, 1)
    assert not om.on_fill(cid, "t3", 0.1, 100.0, 0.0, 1)
    assert om.stats["late_fills"] == 2 and om.stats["overfills"] == 1


def test_a_late_fill_on_a_cancelled_order_is_applied_state_kept():
    om, clock = manager()
    cid = sent(om, clock, 1)
    om.on_ack(cid, "v1")
    assert om.on_cancel(cid, "user")
    assert om.on_fill(cid, "t1", 0.5, 100.0, 0.0, 1)         # the trade won the race
    order = om.get(cid)
    assert order.state is S.CANCELLED and order.filled_qty == 0.5 and order.reason == "user"
    assert not om.on_cancel(cid) and om.stats["duplicate_messages"] == 1
    assert not om.on_expire(cid) and om.stats["late_messages"] == 1


def test_contradicting_messages_are_counted_and_journaled():
    om, clock = manager()
    cid = sent(om, clock, 1)
    assert om.on_reject(cid, "-2010 insufficient balance")
    assert not om.on_reject(cid, "again") and om.stats["duplicate_messages"] == 1
    assert not om.on_ack(cid, "v1") and not om.on_cancel(cid)
    assert om.get(cid).state is S.REJECTED and om.stats["conflicts"] == 2
    acked = sent(om, clock, 2, symbol_id=2)
    om.on_ack(acked, "v2")
    assert not om.on_reject(acked, "late") and om.get(acked).state is S.ACCEPTED
    assert [e.detail["event"] for e in om.drain_events()].count("conflict") == 3


def test_ioc_expiry_after_a_partial_fill():
    om, clock = manager()
    cid = sent(om, clock, 1, tif=TIF_IOC)
    om.on_fill(cid, "t1", 0.5, 100.0, 0.0, 1)
    assert om.on_expire(cid, "IOC remainder")
    assert om.get(cid).state is S.EXPIRED and om.get(cid).remaining_qty == 1.5


# -- unknown orders and blocked symbols ----------------------------------------------------------
def test_no_answer_is_unknown_and_blocks_the_symbol_until_resolved():
    om, clock = manager()
    cid = sent(om, clock, 1, symbol_id=3)
    assert om.blocked_symbols() == {3}                          # in flight: blocked
    assert om.no_answer(cid) and om.get(cid).state is S.UNKNOWN
    nxt = om.create(intent(2, symbol_id=3), "binance", PIPE, 7)
    with pytest.raises(SymbolBlocked):
        om.submitted(nxt.client_id)
    elsewhere = om.create(intent(3, symbol_id=4), "binance", PIPE, 7)
    om.submitted(elsewhere.client_id)                          # other symbols go on
    om.resolve_unknown(cid, VenueStatus(S.ACCEPTED, 0.5, "v1"))
    assert om.get(cid).state is S.PARTIALLY_FILLED and om.get(cid).venue_order_id == "v1"
    assert om.blocked_symbols() == {4}
    om.submitted(nxt.client_id)
    assert {o.client_id for o in om.open_orders(3)} == {cid, nxt.client_id}


def test_no_answer_after_an_answer_is_a_no_op():
    om, clock = manager()
    cid = sent(om, clock, 1)
    om.on_ack(cid, "v1")
    assert not om.no_answer(cid) and om.get(cid).state is S.ACCEPTED


@pytest.mark.parametrize("says, state", [
    (VenueStatus(S.REJECTED, 0.0, reason="not found"), S.REJECTED),
    (VenueStatus(S.ACCEPTED, 0.0), S.ACCEPTED),
    (VenueStatus(S.ACCEPTED, 2.0), S.FILLED),
    (VenueStatus(S.CANCELLED, 1.0), S.CANCELLED),
    (VenueStatus(S.EXPIRED, 0.0), S.EXPIRED),
])
def test_resolve_takes_the_venues_word(says, state):
    om, clock = manager()
    cid = sent(om, clock, 1)
    om.no_answer(cid)
    om.resolve_unknown(cid, says)
    assert om.get(cid).state is state and om.get(cid).filled_qty == says.filled_qty
    assert om.blocked_symbols() == set()


def test_resolve_refuses_impossible_answers():
    om, clock = manager()
    cid = sent(om, clock, 1)
    with pytest.raises(IllegalTransition):
        om.resolve_unknown(cid, VenueStatus(S.UNKNOWN, 0.0))
    with pytest.raises(ValueError):
        om.resolve_unknown(cid, VenueStatus(S.FILLED, 3.0))     # more than the order
    assert om.get(cid).state is S.SUBMITTED


def test_a_reject_before_sending():
    om, _ = manager()
    order = om.create(intent(1), "binance", PIPE, 7)
    assert om.on_reject(order.client_id, "denied: NOTIONAL_BELOW_MIN")
    with pytest.raises(IllegalTransition):
        om.submitted(order.client_id)


# -- the journal ---------------------------------------------------------------------------------
def scenario(om: OrderManager, clock: SimClock) -> None:
    a = sent(om, clock, 1, symbol_id=1)
    om.on_ack(a, "v1")
    om.on_fill(a, "t1", 0.5, 100.0, 0.01, 2)
    b = sent(om, clock, 2, symbol_id=2, side=SIDE_SELL, order_type=ORDER_MARKET,
             limit_price=math.nan)
    om.no_answer(b)
    c = sent(om, clock, 3, symbol_id=3)
    om.on_fill(c, "t9", 2.0, 101.0, 0.02, 1)
    om.on_fill(c, "t9", 2.0, 101.0, 0.02, 1)
    sent(om, clock, 4, symbol_id=4)                     # crash: submitted, no answer
    om.create(intent(5, symbol_id=5), "binance", PIPE, 7)


def test_events_replayed_rebuild_the_same_orders():
    om, clock = manager()
    scenario(om, clock)
    journal = [json.loads(json.dumps(e.to_dict())) for e in om.drain_events()]   # through JSON
    restarted = OrderManager(SimClock(clock.time_ns()))
    restarted.restore(orders_from_events(journal))
    assert list(restarted.orders) == list(om.orders)
    for cid, order in om.orders.items():
        assert restarted.orders[cid].to_dict() == order.to_dict()
    assert restarted.blocked_symbols() == om.blocked_symbols() == {2, 4}
    assert [o.client_id for o in restarted.open_orders()] == [o.client_id for o in om.open_orders()]


def test_a_restarted_manager_neither_resends_nor_reapplies():
    om, clock = manager()
    scenario(om, clock)
    restarted = OrderManager(SimClock(clock.time_ns()))
    restarted.restore(orders_from_events(om.drain_events()))
    a = client_order_id(PIPE, 7, 1)
    assert not restarted.on_fill(a, "t1", 0.5, 100.0, 0.01, 2)      # the replayed fill
    again = restarted.create(intent(1), "binance", PIPE, 7)
    assert again.duplicate and again.state is S.PARTIALLY_FILLED
    with pytest.raises(IllegalTransition):
        restarted.submitted(again.client_id)
    # the order left submitted by the crash blocks symbol 4 until the venue is asked
    d = client_order_id(PIPE, 7, 4)
    nxt = restarted.create(intent(6, symbol_id=4), "binance", PIPE, 7)
    with pytest.raises(SymbolBlocked):
        restarted.submitted(nxt.client_id)
    restarted.resolve_unknown(d, VenueStatus(S.REJECTED, 0.0, reason="not found"))
    restarted.submitted(nxt.client_id)
    # the order created but never submitted can still be sent, once
    e = restarted.get(client_order_id(PIPE, 7, 5))
    assert e.state is S.CREATED
    restarted.submitted(e.client_id)


def test_order_dict_round_trip_keeps_nan_and_states():
    order = Order(client_id="c", symbol_id=1, venue="upbit", side=SIDE_SELL, order_type=ORDER_MARKET,
                  tif=TIF_IOC, qty=1.0, limit_price=math.nan, state=S.UNKNOWN,
                  timestamps={"CREATED": 5}, fill_ids=["a"])
    d = order.to_dict()
    assert d["limit_price"] is None and d["state"] == "UNKNOWN" and json.loads(json.dumps(d)) == d
    back = Order.from_dict(d)
    assert back.to_dict() == d and back.state is S.UNKNOWN and math.isnan(back.limit_price)
