"""Positions per symbol: quantity, average entry price, realised P&L, fees.

Pure arithmetic on rows of the POSITION record (shm/records.py), one per
symbol id: execution folds each fill into its row and publishes the row; a
backtest folds the same fills with the same code.
"""
from __future__ import annotations

import numpy as np

from shm.records import POSITION

from .orders import QTY_REL_TOL


class Portfolio:
    """The position rows of every symbol; ``apply`` folds one fill in."""

    def __init__(self, rows: np.ndarray):
        if rows.dtype != POSITION:
            raise TypeError(f"position rows must have the POSITION dtype, got {rows.dtype}")
        self.rows = rows

    @classmethod
    def empty(cls, n_symbols: int) -> "Portfolio":
        rows = np.zeros(n_symbols, POSITION)
        rows["symbol_id"] = np.arange(n_symbols)
        return cls(rows)

    def qty(self, symbol_id: int) -> float:
        return float(self.rows[symbol_id]["qty"])

    def apply(self, fill) -> int:
        """Fold one FILL record into its symbol's row (average price, realised P&L,
        fees, fill count); returns the symbol id. A fill that crosses zero closes the
        old position at the fill price and opens the rest at that price; one that leaves
        less than QTY_REL_TOL of its own quantity closes it (float rounding, not a position)."""
        sid = int(fill["symbol_id"])
        self.apply_values(sid, int(fill["side"]), float(fill["qty"]), float(fill["price"]), float(fill["fee"]),
                          int(fill["order_id"]), int(fill["ts_ns"]))
        return sid

    def apply_values(self, sid: int, side: int, qty: float, price: float, fee: float, order_id: int,
                     ts_ns: int) -> float:
        """`apply` from a fill's fields as plain values; returns the new quantity."""
        return self.apply_many([(sid, side, qty, price, fee, order_id, ts_ns)])[0]

    def apply_many(self, fills: list[tuple[int, int, float, float, float, int, int]]) -> list[float]:
        """Fold fills, (symbol id, side, qty, price, fee, order id, ts_ns) each, in order, as
        `apply` does one by one; returns the quantity after each. The rows they touch are
        read once and written once, as plain floats in between: a numpy row's fields cost
        far more to read and write one at a time (float64 arithmetic either way)."""
        if not fills:
            return []
        rows = self.rows
        sids = list(dict.fromkeys(f[0] for f in fills))
        idx = np.array(sids, np.int64)
        at = {sid: k for k, sid in enumerate(sids)}
        q_, avg_, pnl_, fees_ = (rows[name][idx].tolist() for name in ("qty", "avg_price", "realized_pnl", "fees"))
        n_, oid_, ts_ = (rows[name][idx].tolist() for name in ("n_fills", "last_order_id", "ts_ns"))
        out = []
        for sid, side, qty, price, fee, order_id, ts_ns in fills:
            k = at[sid]
            q, avg = q_[k], avg_[k]
            dq = side * qty
            if q == 0 or (q > 0) == (dq > 0):
                avg = (abs(q) * avg + abs(dq) * price) / (abs(q) + abs(dq))
            else:
                closed = min(abs(q), abs(dq))
                pnl_[k] += closed * (price - avg) * (1.0 if q > 0 else -1.0)
                if abs(dq) > abs(q):
                    avg = price
            new = q + dq
            if new != 0 and abs(new) <= QTY_REL_TOL * abs(dq):
                new = 0.0                       # a close that float rounding left as dust (0.3 - 0.1 - 0.2)
            q_[k], avg_[k] = new, (avg if new != 0 else 0.0)
            fees_[k] += fee
            n_[k] = min(n_[k] + 1, 65535)
            oid_[k], ts_[k] = order_id, ts_ns
            out.append(new)
        for name, values in (("qty", q_), ("avg_price", avg_), ("realized_pnl", pnl_), ("fees", fees_),
                             ("n_fills", n_), ("last_order_id", oid_), ("ts_ns", ts_)):
            rows[name][idx] = values
        return out

    def stats(self) -> dict:
        return {"open_positions": int((self.rows["qty"] != 0).sum()),
                "realized_pnl": float(self.rows["realized_pnl"].sum()),
                "fees": float(self.rows["fees"].sum())}


def balances(keys: list[str], rows: np.ndarray) -> dict[str, dict[str, float]]:
    """What the fills moved per venue and asset: the base asset by the position, the
    quote asset by realised P&L less fees less the open position's cost (qty x average
    price), so every figure is a change since the journal's first fill. ``keys`` are the
    symbol keys ("BTC/USDT@binance") of the POSITION ``rows``, by index."""
    out: dict[str, dict[str, float]] = {}
    for key, row in zip(keys, rows):
        pair, _, venue = key.partition("@")
        base, _, quote = pair.partition("/")
        v = out.setdefault(venue or "?", {})
        v[base] = v.get(base, 0.0) + float(row["qty"])
        cash = float(row["realized_pnl"]) - float(row["fees"]) - float(row["qty"]) * float(row["avg_price"])
        v[quote] = v.get(quote, 0.0) + cash
    return out
