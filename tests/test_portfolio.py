"""Execution's position arithmetic (workers/execution/portfolio.py)."""
from __future__ import annotations

import numpy as np
import pytest

from shm.records import FILL, ORDER, POSITION, SIDE_BUY, SIDE_SELL
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


def test_a_close_in_parts_leaves_no_dust_position():
    p = Portfolio.empty(1)
    for side, qty, price in ((SIDE_BUY, 0.3, 100.0), (SIDE_SELL, 0.1, 101.0), (SIDE_SELL, 0.2, 102.0)):
        p.apply_values(0, side, qty, price, 0.0, 1, 1)
    row = p.rows[0]
    assert row["qty"] == 0.0 and row["avg_price"] == 0.0 and p.stats()["open_positions"] == 0
    assert row["realized_pnl"] == pytest.approx(0.1 * 1.0 + 0.2 * 2.0)
    p.apply_values(0, SIDE_BUY, 1e-12, 100.0, 0.0, 2, 2)     # a tiny position of its own stays
    assert p.rows[0]["qty"] == 1e-12
