"""Execution process: the single writer of orders, fills and positions.

Reads the strategy's intents, applies the risk limits, places paper market
orders filled at the reference price plus slippage and fees, and keeps
positions in the positions table. Idempotent across restarts: an order
records the seq of the intent it acts on (derived by the strategy from what
caused it), so a restarted execution never acts on an intent twice, fills an
order left without a fill, and replays into the positions table any fill it
had not applied yet.

A stale intent (from a signal flagged FLAG_STALE, or older than ``[execution]
max_signal_age_s`` from the tick that caused it) never opens or grows a
position; it may still reduce one.

The arithmetic lives in the cores beside this adapter: fills in paper.py,
positions in portfolio.py; time comes from the worker's clock.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from shm.records import FLAG_RECOVERED, FLAG_STALE, ORDER, ORDER_MARKET, SIDE_BUY, SIDE_SELL

from ..base import Worker
from .paper import paper_fill
from .portfolio import Portfolio

ACTED_KEPT = 1 << 16   # intent seqs remembered: far more than a restart can see again


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
        self.acted: set[int] = set()
        self.acted_order: deque[int] = deque()
        self.recover()

    def _remember(self, intent_seq: int) -> None:
        self.acted.add(intent_seq)
        self.acted_order.append(intent_seq)
        if len(self.acted_order) > ACTED_KEPT:
            self.acted.discard(self.acted_order.popleft())

    # -- restart recovery -------------------------------------------------------
    def recover(self) -> None:
        orders = self.writers["orders"].tail()
        fills = self.writers["fills"].tail()
        if len(orders) == 0:
            return
        for o in orders:
            self._remember(int(o["intent_seq"]))
        filled = set(fills["order_id"].tolist())
        for f in fills:  # fills the positions table has not seen yet
            row = self.portfolio.rows[f["symbol_id"]]
            if f["order_id"] > row["last_order_id"]:
                self._apply(f)
        last = orders[-1]
        if int(last["order_id"]) not in filled:
            self.log.warning("recovering order %d left without a fill", int(last["order_id"]))
            self._fill(last, FLAG_RECOVERED)
        self.log.info("recovered: last order %d, %d intents acted on in the ring",
                      int(last["order_id"]), len(self.acted))

    # -- trading ----------------------------------------------------------------
    def step(self) -> bool:
        did = False
        for reader in self.readers:
            batch = reader.read()
            if batch is None:
                continue
            did = True
            self.counters["in"] += len(batch)
            for intent in batch.records:
                if int(intent["seq"]) in self.acted:
                    self.counters["skipped_replay"] += 1
                    continue
                self.on_intent(intent)
            reader.commit()
        return did

    def on_intent(self, intent) -> None:
        side = int(intent["side"])
        price = float(intent["ref_price"])
        qty = float(intent["qty"])
        sid = int(intent["symbol_id"])
        if (side not in (SIDE_BUY, SIDE_SELL) or not np.isfinite(price) or price <= 0
                or not np.isfinite(qty) or qty <= 0 or sid >= len(self.portfolio.rows)):
            self.counters["rejected_risk"] += 1
            return
        pos = self.portfolio.qty(sid)
        grows = abs(pos + side * qty) > abs(pos)
        stale = (bool(intent["flags"] & FLAG_STALE)
                 or self.clock.time_ns() - int(intent["ts_origin_ns"]) > self.max_age_ns)
        if stale and grows:
            self.counters["rejected_stale"] += 1     # a stale intent may reduce a position, never open one
            return
        if grows and abs(pos + side * qty) * price > self.ec.max_position_notional + 1e-9:
            self.counters["rejected_risk"] += 1
            return
        writer = self.writers["orders"]
        order = np.zeros(1, ORDER)
        order["ts_origin_ns"] = intent["ts_origin_ns"]
        order["ts_ns"] = self.clock.time_ns()
        order["order_id"] = writer.seq + 1
        order["intent_seq"] = intent["seq"]
        order["symbol_id"] = sid
        order["side"] = side
        order["order_type"] = ORDER_MARKET
        order["price"] = price
        order["qty"] = qty
        self.publish("orders", order)
        self._remember(int(intent["seq"]))
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
