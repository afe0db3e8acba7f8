"""Execution's pure cores: position arithmetic (workers/execution/portfolio.py) and
the paper broker's fill (workers/execution/paper.py), on a simulated clock."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.clock import SimClock
from shm.records import FILL, ORDER, POSITION, SIDE_BUY, SIDE_SELL
from workers.execution.paper import paper_fill
from workers.execution.portfolio import Portfolio


def fill(order_id, sid, side, qty, price, fee=0.0, ts=0):
    f = np.zeros(1, FILL)[0]
    f["order_id"], f["symbol_id"], f["side"], f["qty"], f["price"], f["fee"], f["ts_ns"] = \
        order_id, sid, side, qty, price, fee, ts
    return f


def test_average_price_realised_pnl_and_a_flip():
    p = Portfolio.empty(2)
    p.apply(fill(1, 0, SIDE_BUY, 2.0, 100.0, fee=0.2))
    p.apply(fill(2, 0, SIDE_BUY, 2.0, 110.0, fee=0.22))
    row = p.rows[0]
    assert row["qty"] == 4.0 and row["avg_price"] == pytest.approx(105.0)
    p.apply(fill(3, 0, SIDE_SELL, 1.0, 120.0))                  # close 1 at +15
    assert p.rows[0]["realized_pnl"] == pytest.approx(15.0) and p.rows[0]["avg_price"] == pytest.approx(105.0)
    p.apply(fill(4, 0, SIDE_SELL, 5.0, 90.0, ts=77))            # close 3 at -15 each, then short 2 at 90
    row = p.rows[0]
    assert row["qty"] == pytest.approx(-2.0) and row["avg_price"] == pytest.approx(90.0)
    assert row["realized_pnl"] == pytest.approx(15.0 - 45.0)
    assert row["fees"] == pytest.approx(0.42) and row["n_fills"] == 4
    assert row["last_order_id"] == 4 and row["ts_ns"] == 77
    p.apply(fill(5, 0, SIDE_BUY, 2.0, 80.0))                    # short covered at +10 each
    assert p.rows[0]["qty"] == 0 and p.rows[0]["avg_price"] == 0.0
    assert p.rows[0]["realized_pnl"] == pytest.approx(-30.0 + 20.0)
    assert p.rows[1]["qty"] == 0 and p.qty(1) == 0.0            # the other symbol untouched
    assert p.stats() == {"open_positions": 0, "realized_pnl": pytest.approx(-10.0),
                         "fees": pytest.approx(0.42)}


def test_rows_must_be_position_records():
    with pytest.raises(TypeError):
        Portfolio(np.zeros(2, ORDER))
    rows = np.zeros(3, POSITION)
    assert Portfolio(rows).rows is rows                         # the caller's rows, not a copy


def test_paper_fill_slippage_fee_and_the_clock():
    order = np.zeros(1, ORDER)[0]
    order["order_id"], order["symbol_id"], order["side"], order["qty"], order["price"] = 9, 1, SIDE_SELL, 2.0, 50.0
    order["ts_origin_ns"] = 123
    f = paper_fill(order, position_before=3.0, slippage_bps=10.0, fee_bps=5.0,
                   clock=SimClock(1_000), flags=4)[0]
    assert f["price"] == pytest.approx(50.0 * (1 - 10 / 1e4))  # a sell fills lower
    assert f["fee"] == pytest.approx(f["price"] * 2.0 * 5 / 1e4)
    assert f["position"] == pytest.approx(1.0) and f["ts_ns"] == 1_000 and f["ts_origin_ns"] == 123
    assert (f["order_id"], f["symbol_id"], f["side"], f["flags"]) == (9, 1, SIDE_SELL, 4)
