"""Execution process: the single writer of orders, fills and positions.

Reads signals from every model worker, applies the risk limits, places paper
market orders filled at the reference price plus slippage and fees, and keeps
positions in the positions table. Idempotent across restarts: an order
records the (model ring, signal seq) it acts on, so a restarted execution
skips signals it already acted on, fills an order left without a fill, and
replays into the positions table any fill it had not applied yet.

A stale signal (FLAG_STALE from a model stage that could not answer, or older
than ``[execution] max_signal_age_s`` from the tick that caused it) never
opens or grows a position; it may still reduce one.

The arithmetic lives in the cores beside this adapter: fills in paper.py,
positions in portfolio.py; time comes from the worker's clock.
"""
from __future__ import annotations

import numpy as np

from shm.records import ACTION_BUY, ACTION_SELL, FLAG_GAP, FLAG_RECOVERED, FLAG_STALE, ORDER

from ..base import Worker
from .paper import paper_fill
from .portfolio import Portfolio

SEQ_BITS = 48


class ExecutionWorker(Worker):
    role = "execution"

    def setup(self) -> None:
        self.spin_us = self.cfg.rings.execution_spin_us
        self.ec = self.cfg.execution
        self.positions = self.table("positions")
        n = len(self.topo.symbols)
        rows, seqs = self.positions.read()
        rows = rows.copy()
        unset = seqs == 0
        rows["symbol_id"][unset] = np.arange(n)[unset]
        self.portfolio = Portfolio(rows)
        self.counters.update(orders=0, fills=0, rejected_risk=0, rejected_stale=0, skipped_replay=0)
        self.max_age_ns = int(self.ec.max_signal_age_s * 1e9)
        self.ring_index = {r.ring.spec.name: i for i, r in enumerate(self.readers)}
        self.last_acted = np.full(len(self.readers), -1, np.int64)
        self.recover()

    # -- restart recovery -------------------------------------------------------
    def recover(self) -> None:
        orders = self.writers["orders"].tail()
        fills = self.writers["fills"].tail()
        if len(orders) == 0:
            return
        for o in orders:
            j = int(o["signal_seq"]) >> SEQ_BITS
            self.last_acted[j] = max(self.last_acted[j], int(o["signal_seq"]) & ((1 << SEQ_BITS) - 1))
        filled = set(fills["order_id"].tolist())
        for f in fills:  # fills the positions table has not seen yet
            row = self.portfolio.rows[f["symbol_id"]]
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
        pos = self.portfolio.qty(sid)
        qty = self.ec.order_notional / price
        stale = bool(sig["flags"] & FLAG_STALE) or self.clock.time_ns() - int(sig["ts_origin_ns"]) > self.max_age_ns
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
        order["ts_ns"] = self.clock.time_ns()
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
        sid = int(order["symbol_id"])
        fill = paper_fill(order, self.portfolio.qty(sid), self.ec.slippage_bps, self.ec.fee_bps,
                          self.clock, flags)
        self.publish("fills", fill)
        self.record_latency(fill["ts_origin_ns"])
        self.counters["fills"] += 1
        self._apply(fill[0])

    def _apply(self, fill) -> None:
        """Fold one fill into its position row and publish the row."""
        sid = self.portfolio.apply(fill)
        self.positions.write([sid], self.portfolio.rows[sid:sid + 1])

    def stats(self) -> dict:
        return {**self.counters, **self.portfolio.stats()}


WORKER = ExecutionWorker
