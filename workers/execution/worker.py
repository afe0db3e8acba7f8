"""Execution process: the single writer of orders, fills, positions and the journal.

Reads the strategy's intents, applies the risk limits, places paper market
orders filled at the reference price plus slippage and fees, and keeps
positions in the positions table.

Everything it decides is journaled first (pipeline/journal.py: SQLite, hash
chained, one file per pipeline): an order is committed to the journal before
it is published, and a fill (with the position it makes) before the positions
table shows it. At start, execution rebuilds its positions, realised P&L and
fees from every fill in the journal, so `pipeline stop` and `start`, a kill -9
of execution or of the whole group lose nothing; an order journaled without a
fill (a crash in between) is filled (flagged FLAG_RECOVERED) before any new
intent is read. Within a run, an order records the seq of the intent it acts
on (derived by the strategy from what caused it), and a restarted execution
never acts on one intent seq twice.

A stale intent (from a signal flagged FLAG_STALE, or older than ``[execution]
max_signal_age_s`` from the tick that caused it) never opens or grows a
position; it may still reduce one.

The arithmetic lives in the cores beside this adapter: fills in paper.py,
positions in portfolio.py; time comes from the worker's clock.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from pipeline.journal import Journal
from shm.records import FILL, FLAG_RECOVERED, FLAG_STALE, ORDER, ORDER_MARKET, SIDE_BUY, SIDE_SELL

from ..base import Worker
from .orders import client_order_id
from .paper import paper_fill
from .portfolio import Portfolio

ACTED_KEPT = 1 << 16   # intent seqs remembered: far more than a restart can see again


class ExecutionWorker(Worker):
    role = "execution"

    def setup(self) -> None:
        self.spin_us = self.cfg.rings.execution_spin_us
        self.ec = self.cfg.execution
        self.positions = self.table("positions")
        self.portfolio = Portfolio.empty(len(self.topo.symbols))
        self.counters.update(orders=0, fills=0, rejected_risk=0, rejected_stale=0, skipped_replay=0)
        self.max_age_ns = int(self.ec.max_signal_age_s * 1e9)
        self.acted: set[int] = set()
        self.acted_order: deque[int] = deque()
        self.next_order_id = 1
        self.restored: dict[str, float] = {}
        self.journal = Journal(self.cfg.journal_path())
        self.recover()

    def _remember(self, intent_seq: int) -> None:
        self.acted.add(intent_seq)
        self.acted_order.append(intent_seq)
        if len(self.acted_order) > ACTED_KEPT:
            self.acted.discard(self.acted_order.popleft())

    # -- recovery from the journal --------------------------------------------------
    def recover(self) -> None:
        """Positions from every fill journaled (any run), the intents this run acted
        on, and a fill for an order journaled without one."""
        run = self.topo.run_id
        unfilled: dict[int, np.ndarray] = {}
        missing: dict[str, float] = {}
        for row in self.journal.replay(kinds=("order", "fill")):
            p = row["payload"]
            self.next_order_id = max(self.next_order_id, int(p["order_id"]) + 1)
            sid = self._symbol_id(row["symbol"])
            if row["kind"] == "order":
                if p["run_id"] == run:
                    self._remember(int(p["intent_seq"]))
                if sid is not None:
                    unfilled[int(p["order_id"])] = _record(ORDER, p, symbol_id=sid)
                continue
            unfilled.pop(int(p["order_id"]), None)
            if sid is None:
                missing[row["symbol"]] = missing.get(row["symbol"], 0.0) + p["side"] * p["qty"]
                continue
            self.portfolio.apply(_record(FILL, p, symbol_id=sid)[0])
        for sym, qty in missing.items():
            if abs(qty) > 1e-12:
                self.log.error("the journal holds a position of %g in %s, which this config does "
                               "not trade: it is kept in the journal, not traded here", qty, sym)
        held = np.flatnonzero(self.portfolio.rows["n_fills"] > 0)
        if len(held):
            self.positions.write(held, self.portfolio.rows[held])
        self.restored = {self.topo.symbols.name(int(i)): float(self.portfolio.rows["qty"][i])
                         for i in held}
        for order in unfilled.values():
            self.log.warning("order %d was journaled but never filled (a crash in between): "
                             "filling it now", int(order["order_id"][0]))
            self._fill(order[0], FLAG_RECOVERED)
        self.log.info("journal %s: %d positions rebuilt, next order id %d, %d intents of this run "
                      "acted on", self.journal.path, len(held), self.next_order_id, len(self.acted))

    def _symbol_id(self, key: str | None) -> int | None:
        try:
            return self.topo.symbols.id(key) if key and "@" in key else None
        except KeyError:
            return None

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
        now = self.clock.time_ns()
        order = np.zeros(1, ORDER)
        order["ts_origin_ns"] = intent["ts_origin_ns"]
        order["ts_ns"] = now
        order["order_id"] = self.next_order_id
        order["intent_seq"] = intent["seq"]
        order["symbol_id"] = sid
        order["side"] = side
        order["order_type"] = ORDER_MARKET
        order["price"] = price
        order["qty"] = qty
        self.next_order_id += 1
        coid = client_order_id(self.cfg.pipeline.name, f"{int(intent['strategy_id'])}.{self.topo.run_id}",
                               int(intent["seq"]))
        # write-ahead: the order is in the journal before anyone can act on it (a
        # process crash cannot take back a commit; a live venue will want durable())
        self.journal.append("order", now, {**_fields(order[0]), "run_id": self.topo.run_id,
                                           "reason": int(intent["reason"])},
                            symbol=self.topo.symbols.name(sid), client_order_id=coid)
        self.journal.commit()
        self.publish("orders", order)
        self._remember(int(intent["seq"]))
        self.counters["orders"] += 1
        self._fill(order[0], 0)

    def _fill(self, order, flags: int) -> None:
        """Fill an order: journaled with the position it makes, then published."""
        sid = int(order["symbol_id"])
        fill = paper_fill(order, self.portfolio.qty(sid), self.ec.slippage_bps, self.ec.fee_bps,
                          self.clock, flags)
        self.portfolio.apply(fill[0])
        name = self.topo.symbols.name(sid)
        self.journal.append("fill", int(fill["ts_ns"][0]), _fields(fill[0]), symbol=name)
        self.journal.append("position", int(fill["ts_ns"][0]),
                            _fields(self.portfolio.rows[sid]), symbol=name)
        self.journal.commit()
        self.publish("fills", fill)
        self.positions.write([sid], self.portfolio.rows[sid:sid + 1])
        self.record_latency(fill["ts_origin_ns"])
        self.counters["fills"] += 1

    def finish(self) -> None:
        self.journal.close()

    def close(self) -> None:
        if getattr(self, "journal", None) is not None:
            self.journal.close()
        super().close()

    def stats(self) -> dict:
        return {**self.counters, **self.portfolio.stats(), "restored": self.restored}


WORKER = ExecutionWorker


def _fields(rec) -> dict:
    """A record's fields as plain values, for the journal."""
    return {name: rec[name].item() for name in rec.dtype.names}


def _record(dtype: np.dtype, fields: dict, **override) -> np.ndarray:
    """A one-row record of ``dtype`` from journaled fields."""
    out = np.zeros(1, dtype)
    for name in dtype.names:
        if name in fields:
            out[name] = fields[name]
    for name, value in override.items():
        out[name] = value
    return out
