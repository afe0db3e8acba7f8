"""The journal's batch layout (pipeline/journal.py `Journal.append_batch`): a step's rows
stored as one row. Journals written before it (one stored row per row, every order event
with its order, a position after every fill) must stay readable: a trader's journal is
the memory of their positions. Recovery from such a file, readers over batch rows,
tampering with a batch row, and a tickpipe too old for the layout."""
from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest

from pipeline import journal as J
from pipeline.clock import SimClock
from pipeline.config import ExecutionConfig, FxSource, RiskConfig
from pipeline.journal import Journal, JournalError
from shm.records import INTENT, ORDER_MARKET, SIDE_BUY, SIDE_SELL, TICK, TICK_TRADE, TIF_IOC
from workers.execution.desk import PAPER_LOST, Desk

T0 = 1_700_000_000 * 1_000_000_000 + 3_600 * 1_000_000_000
KEYS = ["AAA/USDT@binance", "BBB/USDT@binance", "AAA/KRW@upbit"]
WIDE = {"max_gross_exposure": 1e9, "max_venue_exposure": 1e9, "max_position_notional": 1e9,
        "max_order_notional": 1e9}

# Frozen: the rows the desk of tickpipe a1b4f73 (before batch rows) journaled, one stored row
# each, for three steps on a simulated clock from T0: market buys of AAA/USDT (3.0) and
# AAA/KRW (0.01) that filled, a NaN quantity denied, a sell of 1.0 AAA/USDT that filled, a
# limit buy of BBB/USDT resting at 9.95, `pipeline halt --reducing --venue upbit`, and a buy
# on upbit denied by that halt. Then the process died: the limit order was left open.
OLD_ROWS = """
["risk_state",1700003600000000000,null,null,null,{"day":19675,"day_start_equity":10000.0,"equity_peak":10000.0,"snapshot":{"causes":[],"denials":{"BAD_INPUT":0,"DAILY_LOSS":0,"DRAWDOWN":0,"GROSS_EXPOSURE":0,"HALTED":0,"IN_FLIGHT":0,"KILL_SWITCH":0,"OPEN_LEGS":0,"OPEN_ORDERS":0,"ORDER_NOTIONAL":0,"ORDER_RATE":0,"POSITION_LIMIT":0,"PRICE_BAND":0,"REDUCING_ONLY":0,"ROUTE_IMBALANCE":0,"SPREAD":0,"STALE_INTENT":0,"STALE_QUOTE":0,"VENUE_EXPOSURE":0,"VENUE_RULES":0,"VENUE_UNHEALTHY":0},"n_symbols":3,"passed":0,"venues":["binance","upbit"],"version":1}}]
["intent",1700003600000000000,"AAA/USDT@binance",null,null,{"flags":0,"limit_price":null,"order_type":1,"qty":3.0,"reason":0,"ref_price":100.0,"seq":1,"side":1,"signal_seq":0,"strategy_id":1,"symbol_id":0,"tif":2,"ts_ns":1700003600000000000,"ts_origin_ns":1700003600000000000}]
["order",1700003600000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-1",{"cid":"tphgd626dl-xw5chdjq-1","detail":{"event":"created","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-1","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":1,"limit_price":null,"order_type":1,"qty":3.0,"reason":"","side":1,"state":"CREATED","strategy_id":1,"symbol_id":0,"tif":2,"timestamps":{"CREATED":1700003600000000000},"ts_origin_ns":1700003600000000000,"venue":"binance","venue_order_id":null}},"new":"CREATED","old":"CREATED","order_id":1,"run_id":"r1","ts_ns":1700003600000000000}]
["order",1700003600000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-1",{"cid":"tphgd626dl-xw5chdjq-1","detail":{"event":"submitted","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-1","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":1,"limit_price":null,"order_type":1,"qty":3.0,"reason":"","side":1,"state":"SUBMITTED","strategy_id":1,"symbol_id":0,"tif":2,"timestamps":{"CREATED":1700003600000000000,"SUBMITTED":1700003600000000000},"ts_origin_ns":1700003600000000000,"venue":"binance","venue_order_id":null}},"new":"SUBMITTED","old":"CREATED","order_id":1,"run_id":"r1","ts_ns":1700003600000000000}]
["intent",1700003600000000000,"AAA/KRW@upbit",null,null,{"flags":0,"limit_price":null,"order_type":1,"qty":0.01,"reason":0,"ref_price":50000.0,"seq":2,"side":1,"signal_seq":0,"strategy_id":1,"symbol_id":2,"tif":2,"ts_ns":1700003600000000000,"ts_origin_ns":1700003600000000000}]
["order",1700003600000000000,"AAA/KRW@upbit","upbit","tphgd626dl-xw5chdjq-2",{"cid":"tphgd626dl-xw5chdjq-2","detail":{"event":"created","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-2","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":2,"limit_price":null,"order_type":1,"qty":0.01,"reason":"","side":1,"state":"CREATED","strategy_id":1,"symbol_id":2,"tif":2,"timestamps":{"CREATED":1700003600000000000},"ts_origin_ns":1700003600000000000,"venue":"upbit","venue_order_id":null}},"new":"CREATED","old":"CREATED","order_id":2,"run_id":"r1","ts_ns":1700003600000000000}]
["order",1700003600000000000,"AAA/KRW@upbit","upbit","tphgd626dl-xw5chdjq-2",{"cid":"tphgd626dl-xw5chdjq-2","detail":{"event":"submitted","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-2","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":2,"limit_price":null,"order_type":1,"qty":0.01,"reason":"","side":1,"state":"SUBMITTED","strategy_id":1,"symbol_id":2,"tif":2,"timestamps":{"CREATED":1700003600000000000,"SUBMITTED":1700003600000000000},"ts_origin_ns":1700003600000000000,"venue":"upbit","venue_order_id":null}},"new":"SUBMITTED","old":"CREATED","order_id":2,"run_id":"r1","ts_ns":1700003600000000000}]
["intent",1700003600000000000,"BBB/USDT@binance",null,null,{"flags":0,"limit_price":null,"order_type":1,"qty":null,"reason":0,"ref_price":10.0,"seq":3,"side":1,"signal_seq":0,"strategy_id":1,"symbol_id":1,"tif":2,"ts_ns":1700003600000000000,"ts_origin_ns":1700003600000000000}]
["verdict",1700003600000000000,"BBB/USDT@binance",null,null,{"code":"BAD_INPUT","intent_seq":3,"reason":"BAD_INPUT: bad input: unknown symbol, side, type or time in force; NaN, zero or negative quantity or price; zero notional; or invalid account figures"}]
["fill",1700003600000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-1",{"fee":0.30021002999999996,"fill_id":"tphgd626dl-xw5chdjq-1:1","flags":0,"liquidity":1,"order_id":1,"position":3.0,"price":100.07001,"qty":3.0,"side":1,"symbol_id":0,"ts_ns":1700003600000000000,"ts_origin_ns":1700003600000000000}]
["position",1700003600000000000,"AAA/USDT@binance",null,null,{"avg_price":100.07000999999998,"fees":0.30021002999999996,"flags":0,"last_order_id":1,"n_fills":1,"qty":3.0,"realized_pnl":0.0,"symbol_id":0,"ts_ns":1700003600000000000}]
["fill",1700003600000000000,"AAA/KRW@upbit","upbit","tphgd626dl-xw5chdjq-2",{"fee":0.50035005,"fill_id":"tphgd626dl-xw5chdjq-2:1","flags":0,"liquidity":1,"order_id":2,"position":0.01,"price":50035.005,"qty":0.01,"side":1,"symbol_id":2,"ts_ns":1700003600000000000,"ts_origin_ns":1700003600000000000}]
["position",1700003600000000000,"AAA/KRW@upbit",null,null,{"avg_price":50035.005,"fees":0.50035005,"flags":0,"last_order_id":2,"n_fills":1,"qty":0.01,"realized_pnl":0.0,"symbol_id":2,"ts_ns":1700003600000000000}]
["order",1700003600000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-1",{"cid":"tphgd626dl-xw5chdjq-1","detail":{"event":"ack","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-1","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":1,"limit_price":null,"order_type":1,"qty":3.0,"reason":"","side":1,"state":"ACCEPTED","strategy_id":1,"symbol_id":0,"tif":2,"timestamps":{"ACCEPTED":1700003600000000000,"CREATED":1700003600000000000,"SUBMITTED":1700003600000000000},"ts_origin_ns":1700003600000000000,"venue":"binance","venue_order_id":"tphgd626dl-xw5chdjq-1"},"venue_order_id":"tphgd626dl-xw5chdjq-1"},"new":"ACCEPTED","old":"SUBMITTED","order_id":1,"run_id":"r1","ts_ns":1700003600000000000}]
["order",1700003600000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-1",{"cid":"tphgd626dl-xw5chdjq-1","detail":{"event":"fill","fee":0.30021002999999996,"fill_id":"tphgd626dl-xw5chdjq-1:1","liquidity":1,"order":{"avg_price":100.07000999999998,"client_id":"tphgd626dl-xw5chdjq-1","fees":0.30021002999999996,"fill_ids":["tphgd626dl-xw5chdjq-1:1"],"fill_notional":300.21002999999996,"filled_qty":3.0,"fills_qty":3.0,"intent_reason":0,"intent_seq":1,"limit_price":null,"order_type":1,"qty":3.0,"reason":"","side":1,"state":"FILLED","strategy_id":1,"symbol_id":0,"tif":2,"timestamps":{"ACCEPTED":1700003600000000000,"CREATED":1700003600000000000,"FILLED":1700003600000000000,"SUBMITTED":1700003600000000000},"ts_origin_ns":1700003600000000000,"venue":"binance","venue_order_id":"tphgd626dl-xw5chdjq-1"},"price":100.07001,"qty":3.0},"new":"FILLED","old":"ACCEPTED","order_id":1,"run_id":"r1","ts_ns":1700003600000000000}]
["order",1700003600000000000,"AAA/KRW@upbit","upbit","tphgd626dl-xw5chdjq-2",{"cid":"tphgd626dl-xw5chdjq-2","detail":{"event":"ack","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-2","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":2,"limit_price":null,"order_type":1,"qty":0.01,"reason":"","side":1,"state":"ACCEPTED","strategy_id":1,"symbol_id":2,"tif":2,"timestamps":{"ACCEPTED":1700003600000000000,"CREATED":1700003600000000000,"SUBMITTED":1700003600000000000},"ts_origin_ns":1700003600000000000,"venue":"upbit","venue_order_id":"tphgd626dl-xw5chdjq-2"},"venue_order_id":"tphgd626dl-xw5chdjq-2"},"new":"ACCEPTED","old":"SUBMITTED","order_id":2,"run_id":"r1","ts_ns":1700003600000000000}]
["order",1700003600000000000,"AAA/KRW@upbit","upbit","tphgd626dl-xw5chdjq-2",{"cid":"tphgd626dl-xw5chdjq-2","detail":{"event":"fill","fee":0.50035005,"fill_id":"tphgd626dl-xw5chdjq-2:1","liquidity":1,"order":{"avg_price":50035.005,"client_id":"tphgd626dl-xw5chdjq-2","fees":0.50035005,"fill_ids":["tphgd626dl-xw5chdjq-2:1"],"fill_notional":500.35005,"filled_qty":0.01,"fills_qty":0.01,"intent_reason":0,"intent_seq":2,"limit_price":null,"order_type":1,"qty":0.01,"reason":"","side":1,"state":"FILLED","strategy_id":1,"symbol_id":2,"tif":2,"timestamps":{"ACCEPTED":1700003600000000000,"CREATED":1700003600000000000,"FILLED":1700003600000000000,"SUBMITTED":1700003600000000000},"ts_origin_ns":1700003600000000000,"venue":"upbit","venue_order_id":"tphgd626dl-xw5chdjq-2"},"price":50035.005,"qty":0.01},"new":"FILLED","old":"ACCEPTED","order_id":2,"run_id":"r1","ts_ns":1700003600000000000}]
["intent",1700003601000000000,"AAA/USDT@binance",null,null,{"flags":0,"limit_price":null,"order_type":1,"qty":1.0,"reason":0,"ref_price":104.0,"seq":4,"side":-1,"signal_seq":0,"strategy_id":1,"symbol_id":0,"tif":2,"ts_ns":1700003601000000000,"ts_origin_ns":1700003601000000000}]
["order",1700003601000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-4",{"cid":"tphgd626dl-xw5chdjq-4","detail":{"event":"created","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-4","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":4,"limit_price":null,"order_type":1,"qty":1.0,"reason":"","side":-1,"state":"CREATED","strategy_id":1,"symbol_id":0,"tif":2,"timestamps":{"CREATED":1700003601000000000},"ts_origin_ns":1700003601000000000,"venue":"binance","venue_order_id":null}},"new":"CREATED","old":"CREATED","order_id":3,"run_id":"r1","ts_ns":1700003601000000000}]
["order",1700003601000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-4",{"cid":"tphgd626dl-xw5chdjq-4","detail":{"event":"submitted","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-4","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":4,"limit_price":null,"order_type":1,"qty":1.0,"reason":"","side":-1,"state":"SUBMITTED","strategy_id":1,"symbol_id":0,"tif":2,"timestamps":{"CREATED":1700003601000000000,"SUBMITTED":1700003601000000000},"ts_origin_ns":1700003601000000000,"venue":"binance","venue_order_id":null}},"new":"SUBMITTED","old":"CREATED","order_id":3,"run_id":"r1","ts_ns":1700003601000000000}]
["intent",1700003601000000000,"BBB/USDT@binance",null,null,{"flags":0,"limit_price":9.95,"order_type":2,"qty":2.0,"reason":0,"ref_price":10.0,"seq":5,"side":1,"signal_seq":0,"strategy_id":1,"symbol_id":1,"tif":1,"ts_ns":1700003601000000000,"ts_origin_ns":1700003601000000000}]
["order",1700003601000000000,"BBB/USDT@binance","binance","tphgd626dl-xw5chdjq-5",{"cid":"tphgd626dl-xw5chdjq-5","detail":{"event":"created","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-5","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":5,"limit_price":9.95,"order_type":2,"qty":2.0,"reason":"","side":1,"state":"CREATED","strategy_id":1,"symbol_id":1,"tif":1,"timestamps":{"CREATED":1700003601000000000},"ts_origin_ns":1700003601000000000,"venue":"binance","venue_order_id":null}},"new":"CREATED","old":"CREATED","order_id":4,"run_id":"r1","ts_ns":1700003601000000000}]
["order",1700003601000000000,"BBB/USDT@binance","binance","tphgd626dl-xw5chdjq-5",{"cid":"tphgd626dl-xw5chdjq-5","detail":{"event":"submitted","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-5","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":5,"limit_price":9.95,"order_type":2,"qty":2.0,"reason":"","side":1,"state":"SUBMITTED","strategy_id":1,"symbol_id":1,"tif":1,"timestamps":{"CREATED":1700003601000000000,"SUBMITTED":1700003601000000000},"ts_origin_ns":1700003601000000000,"venue":"binance","venue_order_id":null}},"new":"SUBMITTED","old":"CREATED","order_id":4,"run_id":"r1","ts_ns":1700003601000000000}]
["fill",1700003601000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-4",{"fee":0.10392721040000001,"fill_id":"tphgd626dl-xw5chdjq-4:1","flags":0,"liquidity":1,"order_id":3,"position":2.0,"price":103.9272104,"qty":1.0,"side":-1,"symbol_id":0,"ts_ns":1700003601000000000,"ts_origin_ns":1700003601000000000}]
["position",1700003601000000000,"AAA/USDT@binance",null,null,{"avg_price":100.07000999999998,"fees":0.4041372404,"flags":0,"last_order_id":3,"n_fills":2,"qty":2.0,"realized_pnl":3.857200400000025,"symbol_id":0,"ts_ns":1700003601000000000}]
["order",1700003601000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-4",{"cid":"tphgd626dl-xw5chdjq-4","detail":{"event":"ack","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-4","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":4,"limit_price":null,"order_type":1,"qty":1.0,"reason":"","side":-1,"state":"ACCEPTED","strategy_id":1,"symbol_id":0,"tif":2,"timestamps":{"ACCEPTED":1700003601000000000,"CREATED":1700003601000000000,"SUBMITTED":1700003601000000000},"ts_origin_ns":1700003601000000000,"venue":"binance","venue_order_id":"tphgd626dl-xw5chdjq-4"},"venue_order_id":"tphgd626dl-xw5chdjq-4"},"new":"ACCEPTED","old":"SUBMITTED","order_id":3,"run_id":"r1","ts_ns":1700003601000000000}]
["order",1700003601000000000,"AAA/USDT@binance","binance","tphgd626dl-xw5chdjq-4",{"cid":"tphgd626dl-xw5chdjq-4","detail":{"event":"fill","fee":0.10392721040000001,"fill_id":"tphgd626dl-xw5chdjq-4:1","liquidity":1,"order":{"avg_price":103.9272104,"client_id":"tphgd626dl-xw5chdjq-4","fees":0.10392721040000001,"fill_ids":["tphgd626dl-xw5chdjq-4:1"],"fill_notional":103.9272104,"filled_qty":1.0,"fills_qty":1.0,"intent_reason":0,"intent_seq":4,"limit_price":null,"order_type":1,"qty":1.0,"reason":"","side":-1,"state":"FILLED","strategy_id":1,"symbol_id":0,"tif":2,"timestamps":{"ACCEPTED":1700003601000000000,"CREATED":1700003601000000000,"FILLED":1700003601000000000,"SUBMITTED":1700003601000000000},"ts_origin_ns":1700003601000000000,"venue":"binance","venue_order_id":"tphgd626dl-xw5chdjq-4"},"price":103.9272104,"qty":1.0},"new":"FILLED","old":"ACCEPTED","order_id":3,"run_id":"r1","ts_ns":1700003601000000000}]
["order",1700003601000000000,"BBB/USDT@binance","binance","tphgd626dl-xw5chdjq-5",{"cid":"tphgd626dl-xw5chdjq-5","detail":{"event":"ack","order":{"avg_price":null,"client_id":"tphgd626dl-xw5chdjq-5","fees":0.0,"fill_ids":[],"fill_notional":0.0,"filled_qty":0.0,"fills_qty":0.0,"intent_reason":0,"intent_seq":5,"limit_price":9.95,"order_type":2,"qty":2.0,"reason":"","side":1,"state":"ACCEPTED","strategy_id":1,"symbol_id":1,"tif":1,"timestamps":{"ACCEPTED":1700003601000000000,"CREATED":1700003601000000000,"SUBMITTED":1700003601000000000},"ts_origin_ns":1700003601000000000,"venue":"binance","venue_order_id":"tphgd626dl-xw5chdjq-5"},"venue_order_id":"tphgd626dl-xw5chdjq-5"},"new":"ACCEPTED","old":"SUBMITTED","order_id":4,"run_id":"r1","ts_ns":1700003601000000000}]
["command",1700003601000000000,null,null,null,{"action":"halt","cmd":"risk","id":"x","key":"upbit","reason":"kimchi too hot","reducing":true,"tier":"venue"}]
["risk_state",1700003601000000000,null,null,null,{"code":"REDUCING_ONLY","key":"upbit","manual":true,"new":"REDUCING","old":"ACTIVE","reason":"kimchi too hot","tier":"venue","ts_ns":1700003601000000000}]
["risk_state",1700003601000000000,null,null,null,{"day":19675,"day_start_equity":10000.0,"equity_peak":10010.63935992,"snapshot":{"causes":[{"code":"REDUCING_ONLY","key":"upbit","manual":true,"reason":"kimchi too hot","since_ns":1700003601000000000,"state":"REDUCING","tier":"venue","until_ns":4611686018427387904}],"denials":{"BAD_INPUT":1,"DAILY_LOSS":0,"DRAWDOWN":0,"GROSS_EXPOSURE":0,"HALTED":0,"IN_FLIGHT":0,"KILL_SWITCH":0,"OPEN_LEGS":0,"OPEN_ORDERS":0,"ORDER_NOTIONAL":0,"ORDER_RATE":0,"POSITION_LIMIT":0,"PRICE_BAND":0,"REDUCING_ONLY":0,"ROUTE_IMBALANCE":0,"SPREAD":0,"STALE_INTENT":0,"STALE_QUOTE":0,"VENUE_EXPOSURE":0,"VENUE_RULES":0,"VENUE_UNHEALTHY":0},"n_symbols":3,"passed":4,"venues":["binance","upbit"],"version":1}}]
["intent",1700003602000000000,"AAA/KRW@upbit",null,null,{"flags":0,"limit_price":null,"order_type":1,"qty":0.01,"reason":0,"ref_price":50000.0,"seq":6,"side":1,"signal_seq":0,"strategy_id":1,"symbol_id":2,"tif":2,"ts_ns":1700003602000000000,"ts_origin_ns":1700003602000000000}]
["verdict",1700003602000000000,"AAA/KRW@upbit",null,null,{"code":"REDUCING_ONLY","intent_seq":6,"reason":"REDUCING_ONLY: reducing-only by hand: only intents that move a position toward zero (venue upbit REDUCING: kimchi too hot)"}]
"""
# what that desk held when it died (POSITION rows as tuples), and its counters
OLD_POSITIONS = [[1700003601000000000, 3, 0, 0, 2, 2.0, 100.07000999999998, 3.857200400000025, 0.4041372404], [0, 0, 1, 0, 0, 0.0, 0.0, 0.0, 0.0], [1700003600000000000, 2, 2, 0, 1, 0.01, 50035.005, 0.0, 0.50035005]]
OLD_OPEN = ["tphgd626dl-xw5chdjq-5"]
OLD_CAUSES = [{"tier": "venue", "key": "upbit", "code": "REDUCING_ONLY", "state": "REDUCING", "reason": "kimchi too hot", "manual": True, "since_ns": 1700003601000000000, "until_ns": 4611686018427387904}]
OLD_PEAK = 10010.63935992


def old_layout_journal(path) -> None:
    """The frozen rows written as that tickpipe wrote them (one stored row each), into a
    file whose schema is version 2 (what that tickpipe made)."""
    with Journal(path) as j:
        for kind, ts, symbol, venue, coid, payload in map(json.loads, OLD_ROWS.strip().splitlines()):
            j.append(kind, ts, payload, symbol=symbol, venue=venue, client_order_id=coid)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM schema_version WHERE version > 2")
    db.commit()
    db.close()


def desk(path, clock, run="r1") -> Desk:
    # one account in USDT, KRW at 1:1: this journal's numbers were written before FX existed
    ec = ExecutionConfig(currency="USDT", fx=[FxSource(quote="KRW", rate=1.0)])
    d = Desk(KEYS, np.array([0, 0, 1]), ["binance", "upbit"], ec, RiskConfig(**WIDE), clock,
             Journal(path), "p", run)
    d.recover()
    return d


def market(d: Desk, sid: int, price: float) -> None:
    t = np.zeros(1, TICK)
    t["symbol_id"], t["kind"], t["side"], t["size"], t["price"] = sid, TICK_TRADE, SIDE_BUY, 1.0, price
    t["bid"], t["ask"] = price * (1 - 0.0005), price * (1 + 0.0005)
    t["ts_origin_ns"] = d.clock.time_ns()
    d.on_ticks(t)


def intent(d: Desk, seq: int, sid: int, side: int, qty: float, price: float) -> np.ndarray:
    it = np.zeros(1, INTENT)
    it["seq"], it["symbol_id"], it["side"], it["qty"], it["ref_price"] = seq, sid, side, qty, price
    it["order_type"], it["tif"], it["limit_price"], it["strategy_id"] = ORDER_MARKET, TIF_IOC, math.nan, 1
    it["ts_origin_ns"] = it["ts_ns"] = d.clock.time_ns()
    return it


def test_a_journal_of_the_old_layout_recovers_exactly_and_trading_goes_on(tmp_path):
    path = tmp_path / "old.sqlite"
    old_layout_journal(path)
    clock = SimClock(T0 + 3_000_000_000)
    d = desk(path, clock)                                  # the same run, restarted after the crash
    assert d.journal.schema_version == J.SCHEMA_VERSION    # migrated; the old rows as they were
    assert d.portfolio.rows.tolist() == [(*r, 0.0) for r in OLD_POSITIONS]      # working: 0 (none open)
    assert d.next_order_id == 5 and d.guard.state()["causes"] == OLD_CAUSES and d.equity_peak == OLD_PEAK
    assert d.guard.denials()["BAD_INPUT"] == 1 and d.guard.denials()["REDUCING_ONLY"] == 1
    assert d.guard.passed() == 4
    # the order the crash left open is settled before anything else, with the reason
    assert d.orders.open_orders() == [] and d.counters["resolved_at_start"] == 1
    left = d.orders.get(OLD_OPEN[0])
    assert left.state.name == "EXPIRED" and left.reason == PAPER_LOST
    # an intent the old run sent is not sent again: its client order id is known
    market(d, 0, 104.0)
    out = d.on_intents(intent(d, 1, 0, SIDE_BUY, 3.0, 104.0))
    assert out.orders == [] and d.counters["skipped_replay"] == 1
    # a new one trades, journaled in the batch layout after the old rows
    out = d.on_intents(intent(d, 7, 0, SIDE_SELL, 2.0, 104.0))
    assert len(out.fills) == 1 and d.portfolio.qty(0) == 0.0
    kinds = {r["kind"] for r in J.rows(path) if r["part"]}
    assert {"intent", "order", "fill", "position"} <= kinds
    held, stats = d.portfolio.rows.copy(), d.portfolio.stats()
    d.journal.close()
    assert J.verify(path).ok
    # old rows and batch rows in one file: a restart rebuilds the same book
    again = desk(path, clock, run="r2")
    np.testing.assert_array_equal(again.portfolio.rows, held)
    assert again.portfolio.stats() == stats and again.next_order_id == 6
    again.journal.close()
    from pipeline.pnl import pnl_report                    # `pipeline pnl` reads both layouts
    rep = pnl_report(path)
    assert rep["mismatches"] == [] and rep["fills"] == 4


def test_the_old_layout_and_the_batch_layout_rebuild_the_same_book(tmp_path):
    """The frozen old rows, each stored as a batch row instead, recover to the same state
    as the old file: the readers hand recovery the same rows either way."""
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    old_layout_journal(old)
    with Journal(new) as j:
        rows = [json.loads(x) for x in OLD_ROWS.strip().splitlines()]
        for kind, ts, symbol, venue, coid, payload in rows:
            j.append_batch(ts, [{"kind": kind, "n": 1, "ts_ns": ts, "symbol": symbol, "venue": venue,
                                 "client_order_id": coid, "payloads": [payload]}])
    clock = SimClock(T0 + 3_000_000_000)
    a, b = desk(old, clock), desk(new, clock)
    np.testing.assert_array_equal(a.portfolio.rows, b.portfolio.rows)
    assert a.guard.state() == b.guard.state() and a.next_order_id == b.next_order_id
    assert sorted(a.order_ids) == sorted(b.order_ids)
    a.journal.close()
    b.journal.close()


# -- batch rows in the journal itself ---------------------------------------------------------
def section(kind: str, n: int, ts: int, **cols) -> dict:
    return {"kind": kind, "n": n, "ts_ns": [ts + i for i in range(n)], "symbol": [f"S{i}" for i in range(n)],
            "cols": cols or {"i": list(range(n))}}


def write(path, steps: int = 6) -> None:
    with Journal(path) as j:
        for k in range(steps):
            j.append("note", 100 * k, {"step": k})
            j.append_batch(100 * k, [section("intent", 3, 100 * k, qty=[1.0, 2.5, 3.0]),
                                     section("verdict", 1, 100 * k + 50)])
            j.commit()


def test_readers_expand_batch_rows(tmp_path):
    path = tmp_path / "j.sqlite"
    write(path)
    got = list(J.rows(path))
    assert len(got) == 6 * 5 and [r["part"] for r in got[:5]] == [0, 1, 2, 3, 4]
    assert got[1]["kind"] == "intent" and got[1]["payload"] == {"qty": 1.0} and got[2]["symbol"] == "S1"
    assert got[4]["kind"] == "verdict" and got[4]["ts_ns"] == 50
    assert [r["ts_ns"] for r in J.rows(path, kinds=["verdict"])] == [100 * k + 50 for k in range(6)]
    assert [r["payload"]["qty"] for r in J.rows(path, symbol="S1", kinds="intent")] == [2.5] * 6
    assert [r["ts_ns"] for r in J.rows(path, since_ns=501)] == [501, 502, 550]
    assert J.verify(path).ok and J.verify(path).rows == 12


@pytest.mark.parametrize("how,problem", [("edit", "edited"), ("delete", "deleted"), ("swap", "edited")])
def test_verify_finds_a_tampered_batch_row_at_that_row(tmp_path, how, problem):
    path = tmp_path / "j.sqlite"
    write(path)
    db = sqlite3.connect(path)
    if how == "edit":                                      # one quantity inside a batch
        (payload,), = db.execute("SELECT payload FROM entries WHERE id = 6")
        db.execute("UPDATE entries SET payload = ? WHERE id = 6", (payload.replace("2.5", "2.6"),))
    elif how == "delete":
        db.execute("DELETE FROM entries WHERE id = 6")
    else:                                                  # two batch rows' contents swapped
        (a,), = db.execute("SELECT payload FROM entries WHERE id = 6")
        (b,), = db.execute("SELECT payload FROM entries WHERE id = 8")
        db.execute("UPDATE entries SET payload = ? WHERE id = 6", (b,))
        db.execute("UPDATE entries SET payload = ? WHERE id = 8", (a,))
    db.commit()
    db.close()
    result = J.verify(path)
    assert (result.ok, result.first_bad_id, result.problem) == (False, 6, problem)


def test_a_batch_with_nan_a_credential_or_a_bad_name_is_refused_whole(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        bad = [
            ([section("fill", 2, 1, price=[1.0, float("nan")])], "payload['price'][1] is nan"),
            ([section("fill", 1, 1, price=[float("inf")])], "finite"),
            ([{**section("order", 1, 1), "cols": {"d": [{"x": {"apiKey": 1}}]}}], "looks like a credential"),
            ([{"kind": "order", "n": 1, "ts_ns": 1, "payloads": [{"detail": {"p": -math.inf}}]}], "finite"),
            ([section("trade", 1, 1)], "'trade' is not one of"),
            ([section("intent", 1, -5)], "ts_ns"),
            ([{**section("intent", 1, 1), "symbol": [""]}], "non-empty printable strings"),
            ([{**section("intent", 2, 1), "cols": {"i": [1]}}], "lists of 2 values"),
            ([{"kind": "intent", "n": 1, "ts_ns": 1, "payloads": [[1]]}], "list of 1 dicts"),
        ] + [([{**section("order", 1, 1), "cols": {"d": [{}]},          # an attached row's field name,
                "attach": {"into": "d", "key": "order", "at": [0], "fields": ["secret"], "rows": [[1]]}}],
              "looks like a credential")] * 2                            # refused every time
        for sections, match in bad:
            with pytest.raises(JournalError, match=match.replace("[", r"\[").replace("]", r"\]")):
                j.append_batch(1, [section("note", 1, 1)] + sections)
        assert j.pending == 0 and j.last_id == 0
        assert j.append_batch(1, [section("note", 0, 1)]) == 0          # no rows: nothing stored
        assert j.append_batch(7, [section("note", 2, 1, p=[np.float64(0.5), 2])]) == 1
    (row,) = [r for r in J.rows(tmp_path / "j.sqlite") if r["part"] == 2]
    assert row["payload"] == {"p": 2} and row["ts_ns"] == 2


def test_a_tickpipe_too_old_for_batch_rows_refuses_the_file(tmp_path, monkeypatch):
    path = tmp_path / "j.sqlite"
    write(path, 1)
    monkeypatch.setattr(J, "SCHEMA_VERSION", 2)            # what a version-2 tickpipe reads
    with pytest.raises(JournalError, match="schema version 3; this tickpipe reads up to version 2"):
        Journal(path)
