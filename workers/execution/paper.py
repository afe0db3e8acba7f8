"""The paper broker: a market order filled at once at its reference price plus
slippage, paying the taker fee. Pure: an ORDER record and a clock in, a FILL
record out."""
from __future__ import annotations

import numpy as np

from pipeline.clock import Clock
from shm.records import FILL, LIQUIDITY_TAKER


def paper_fill(order, position_before: float, slippage_bps: float, fee_bps: float,
               clock: Clock, flags: int = 0) -> np.ndarray:
    """One FILL record for ``order``: price moved against the side by ``slippage_bps``,
    fee ``fee_bps`` of the notional, ``position`` the symbol's quantity after it."""
    side = int(order["side"])
    price = float(order["price"]) * (1 + side * slippage_bps / 1e4)
    qty = float(order["qty"])
    fill = np.zeros(1, FILL)
    fill["ts_origin_ns"] = order["ts_origin_ns"]
    fill["ts_ns"] = clock.time_ns()
    fill["order_id"] = order["order_id"]
    fill["symbol_id"] = order["symbol_id"]
    fill["side"] = side
    fill["liquidity"] = LIQUIDITY_TAKER
    fill["flags"] = flags
    fill["price"] = price
    fill["qty"] = qty
    fill["fee"] = price * qty * fee_bps / 1e4
    fill["position"] = position_before + side * qty
    return fill
