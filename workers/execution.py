"""Execution: the single writer of orders, fills and positions.

Reads signals from every model worker, applies the risk limits, places paper
market orders filled at the reference price plus slippage and fees, and keeps
positions in the positions table. Idempotent across restarts: an order
records the (model ring, signal seq) it acts on, so a restarted execution
skips signals it already acted on, fills an order left without a fill, and
replays into the positions table any fill it had not applied yet.

A stale signal (FLAG_STALE from a model stage that could not answer, or older
than ``[execution] max_signal_age_s`` from the tick that caused it) never
opens or grows a position; it may still reduce one.
"""
from __future__ import annotations

import time

import numpy as np

from shm.records import (ACTION_BUY, ACTION_SELL, FILL, FLAG_GAP, FLAG_RECOVERED, ORDER,
                         POSITION)
from shm.ring import W_WRITE

from .base import Worker
from .model import FLAG_STALE

SEQ_BITS = 48


class ExecutionWorker(Worker):
    role = "execution"

    def setup(self) -> None:
        self.spin_us = self.cfg.rings.execution_spin_us
        self.ec = self.cfg.execution
        self.positions = self.table("positions")
        n = len(self.topo.symbols)
        rows, seqs = self.positions.read()
        self.pos = rows.copy()
        unset = seqs == 0
        self.pos["symbol_id"][unset] = np.arange(n)[unset]
        self.counters.update(orders=0, fills=0, rejected_risk=0, rejected_stale=0, skipped_replay=0)
        self.max_age_ns = int(self.ec.max_signal_age_s * 1e9)
        self.ring_index = {r.ring.spec.name: i for i, r in enumerate(self.readers)}
        self.last_acted = np.full(len(self.readers), -1, np.int64)
        self.recover()

    # -- restart recovery -------------------------------------------------------
    def _tail(self, ring_name: str, dtype) -> np.ndarray:
        ring = self.writers[ring_name].ring
        w = ring._q[W_WRITE]
        start = max(0, w - ring.capacity)
        return ring._copy_out(start, w - start) if w > start else np.zeros(0, dtype)

    def recover(self) -> None:
        orders = self._tail("orders", ORDER)
        fills = self._tail("fills", FILL)
        if len(orders) == 0:
            return
        for o in orders:
            j = int(o["signal_seq"]) >> SEQ_BITS
            self.last_acted[j] = max(self.last_acted[j], int(o["signal_seq"]) & ((1 << SEQ_BITS) - 1))
        filled = set(fills["order_id"].tolist())
        for f in fills:  # fills the positions table has not seen yet
            row = self.pos[f["symbol_id"]]
            if f["order_id"] > row["last_order_id"]:
                self._apply(f)
        last = orders[-1]
        if int(last["order_id"]) not in filled:
            self.log.warning("recovering order %d left without a fill", int(last["order_id"]))
            self._fill(last, FLAG_RECOVERED)
        self.log.info("recovered: last order %d, signals acted on up to %s",
                      int(last["order_id"]), self.last_acted.tolist())

    # -- trading ----------------------------------------------------------------
    def step(self) -> bool:
        did = False
        for j, reader in enumerate(self.readers):
            batch = reader.read()
            if batch is None:
                continue
            did = True
            self.counters["in"] += len(batch)
            for sig in batch.records:
                if int(sig["seq"]) <= self.last_acted[j]:
                    self.counters["skipped_replay"] += 1
                    continue
                self.on_signal(j, sig)
            reader.commit()
        return did

    def on_signal(self, j: int, sig) -> None:
        action = int(sig["action"])
        price = float(sig["ref_price"])
        if action not in (ACTION_BUY, ACTION_SELL) or not np.isfinite(price) or price <= 0:
            return
        if sig["flags"] & FLAG_GAP:
            self.counters["rejected_risk"] += 1    # never trade on data with a hole in it
            return
        sid = int(sig["symbol_id"])
        pos = float(self.pos[sid]["qty"])
        qty = self.ec.order_notional / price
        stale = bool(sig["flags"] & FLAG_STALE) or time.time_ns() - int(sig["ts_origin_ns"]) > self.max_age_ns
        if stale and abs(pos + action * qty) > abs(pos):
            self.counters["rejected_stale"] += 1     # a stale signal may reduce a position, never open one
            return
        new_notional = abs(pos + action * qty) * price
        if new_notional > self.ec.max_position_notional + 1e-9:
            self.counters["rejected_risk"] += 1
            return
        writer = self.writers["orders"]
        order = np.zeros(1, ORDER)
        order["ts_origin_ns"] = sig["ts_origin_ns"]
        order["ts_ns"] = time.time_ns()
        order["order_id"] = writer.seq + 1
        order["signal_seq"] = (j << SEQ_BITS) | int(sig["seq"])
        order["symbol_id"] = sid
        order["side"] = action
        order["order_type"] = 1
        order["price"] = price
        order["qty"] = qty
        self.publish("orders", order)
        self.last_acted[j] = int(sig["seq"])
        self.counters["orders"] += 1
        self._fill(order[0], 0)

    def _fill(self, order, flags: int) -> None:
        side = int(order["side"])
        price = float(order["price"]) * (1 + side * self.ec.slippage_bps / 1e4)
        qty = float(order["qty"])
        fill = np.zeros(1, FILL)
        fill["ts_origin_ns"] = order["ts_origin_ns"]
        fill["ts_ns"] = time.time_ns()
        fill["order_id"] = order["order_id"]
        fill["symbol_id"] = order["symbol_id"]
        fill["side"] = side
        fill["liquidity"] = 1
        fill["flags"] = flags
        fill["price"] = price
        fill["qty"] = qty
        fill["fee"] = price * qty * self.ec.fee_bps / 1e4
        fill["position"] = float(self.pos[int(order["symbol_id"])]["qty"]) + side * qty
        self.publish("fills", fill)
        self.record_latency(fill["ts_origin_ns"])
        self.counters["fills"] += 1
        self._apply(fill[0])

    def _apply(self, fill) -> None:
        """Fold one fill into the position row (average price, realised PnL)."""
        sid = int(fill["symbol_id"])
        row = self.pos[sid]
        q, avg = float(row["qty"]), float(row["avg_price"])
        dq = int(fill["side"]) * float(fill["qty"])
        px = float(fill["price"])
        if q == 0 or np.sign(q) == np.sign(dq):
            avg = (abs(q) * avg + abs(dq) * px) / (abs(q) + abs(dq))
        else:
            closed = min(abs(q), abs(dq))
            row["realized_pnl"] += closed * (px - avg) * np.sign(q)
            if abs(dq) > abs(q):
                avg = px
        row["qty"] = q + dq
        row["avg_price"] = avg if row["qty"] != 0 else 0.0
        row["fees"] += float(fill["fee"])
        row["n_fills"] = min(int(row["n_fills"]) + 1, 65535)
        row["last_order_id"] = fill["order_id"]
        row["ts_ns"] = fill["ts_ns"]
        self.positions.write([sid], self.pos[sid:sid + 1])

    def stats(self) -> dict:
        return {**self.counters,
                "open_positions": int((self.pos["qty"] != 0).sum()),
                "realized_pnl": float(self.pos["realized_pnl"].sum()),
                "fees": float(self.pos["fees"].sum())}


WORKER = ExecutionWorker
