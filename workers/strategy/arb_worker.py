"""Strategy process for ``[strategy] kind = "arbitrage"``: the route trader (issue 14).

A thin adapter around ``arb_strategy.ArbStrategy``. Its inputs (pipeline/topology.py):

* every feed's ticks ring, as a lossy reader: a tick is the wake-up (a feed writes the
  ``books`` table before the ticks of the same message), and the FX market's ticks
  (``[[execution.fx]]`` symbol, e.g. USDT/KRW@upbit) are its KRW per USDT;
* the ``books`` table (latest book per symbol, seqlocked rows): read for the route
  symbols after every batch of ticks and at every housekeeping (a Binance depth update
  below the top of the book brings no tick: it is seen by the next tick or within a
  heartbeat interval);
* the ``fills`` and ``orders`` rings, as a lossless reader: which of its legs filled
  (fills read before orders, so every fill's order is known when it is applied);
* the model stage's signals rings, which it drains and ignores (they are lossless: the
  model workers must not wait on a strategy that has no use for them).

It publishes the intents to ``intents``. Execution waits for it on ``fills`` and it waits
for execution on ``intents``, so while its intents wait for room it keeps reading the
fills and orders (no deadlock between the two).

Venue rules (tick, lot, notional) are fetched as execution fetches them
(markets.RulesLoader, a thread); a route trades once both its legs' rules are in. With
``[execution] venue_rules = false``, and for a venue with no rules to fetch (Bithumb), the
routes take permissive rules at once (execution does not hold those venues either).

Route selection changes (ArbStrategy.selection_changes) are logged once and go out in the
next heartbeat as ``risk_events`` (the supervisor puts those on the tap's ``risk`` stream,
as it does execution's), with the imbalance alerts as they come and go.

A restarted strategy (the intents ring holds its predecessor's intents) takes the
inventory and route positions from the positions table (ArbStrategy.restore_positions).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from shm.ring import RingFullError

from ..base import Worker
from ..execution.markets import RulesLoader, needs_rules
from .arb_strategy import ArbStrategy, permissive_rules

EVENTS_KEPT = 200


class ArbWorker(Worker):
    role = "strategy"

    def setup(self) -> None:
        keys = list(self.topo.symbols.keys)
        self.core = ArbStrategy(keys, self.cfg, self.clock)
        self.books = self.table("books")
        self.positions = self.table("positions")
        by = {r.ring.spec.name: r for r in self.readers}
        self.signal_readers = [r for n, r in by.items() if n.startswith("signals.")]
        self.tick_readers = [r for n, r in by.items() if n.startswith("ticks.")]
        self.fills, self.orders = by["fills"], by["orders"]
        self.counters.update(signals_ignored=0, ticks=0, intents=0)
        self._rules: list[tuple[str, dict]] = []
        self._rules_lock = threading.Lock()
        self._publishing = False
        self._events: list[dict] = []           # for the next heartbeat's risk_events (the tap)
        self.rules = None
        if self.cfg.execution.venue_rules:
            feeds = []
            for feed in self.cfg.feeds:
                ids = {k.partition("@")[0]: i for i, k in enumerate(keys)
                       if k.endswith("@" + feed.venue_name) and i in self.core.route_of}
                if needs_rules(feed) and ids:
                    feeds.append((feed, ids))
                elif ids:       # a venue with no rules to fetch (bithumb): execution holds none
                    self.core.set_rules(feed.venue_name, {i: permissive_rules(s) for s, i in ids.items()})
            self.rules = RulesLoader(feeds, self._deliver, self.log).start()
        self._sync_positions()

    def _sync_positions(self) -> None:
        """The inventory from the funding and execution's positions table whenever those rows
        change with no leg in flight (ArbStrategy.sync_positions)."""
        if self.core.sync_positions(*self.positions.read()) and self.core.counters["fills"] == 0:
            self.log.info("inventory from the funding and the journal's fills: %s", self.core.inventory.state())

    def _deliver(self, venue: str, rules: dict) -> None:
        with self._rules_lock:                  # the loader's thread: applied in the loop
            self._rules.append((venue, rules))

    def _apply_rules(self) -> None:
        if not self._rules:
            return
        with self._rules_lock:
            pending, self._rules = self._rules, []
        for venue, rules in pending:
            self.core.set_rules(venue, rules)
            self.log.info("venue rules of %s in: routes ready %s", venue, self.core.ready)

    def _legs_back(self) -> bool:
        """Fills, then orders (a fill's order was published before it), to the core."""
        fills = self.fills.read()
        orders = self.orders.read()
        if orders is not None:
            self.core.on_orders(orders.records)
        if fills is not None:
            self.core.on_fills(fills.records)
            self.fills.commit()
        if orders is not None:
            self.orders.commit()
        return fills is not None or orders is not None

    def _check_books(self) -> bool:
        rows, seqs = self.books.read(self.core.sids)
        intents = self.core.on_books(rows, seqs)
        if not len(intents):
            return False
        self._publish_intents(intents)
        self.record_latency(intents["ts_origin_ns"])
        self.counters["intents"] += len(intents)
        return True

    def _publish_intents(self, intents: np.ndarray) -> None:
        """As Worker.publish, but reading the legs back while the ring is full: execution
        may be waiting for us on the fills ring."""
        writer = self.writers["intents"]
        total, since = len(intents), None
        self._publishing = True
        while True:
            try:
                writer.write(intents, timeout=0.05)
                break
            except RingFullError as e:
                intents = intents[e.written:]
                since = since or time.monotonic()
                self._legs_back()
                if time.monotonic() - since > self.cfg.pipeline.heartbeat_interval_s:
                    self._housekeeping()            # heartbeats; on_idle skips the books meanwhile
                    since = time.monotonic()
        self._publishing = False
        self.counters["out"] += total

    def step(self) -> bool:
        self._apply_rules()
        did = False
        for r in self.signal_readers:
            batch = r.read()
            if batch is not None:
                self.counters["signals_ignored"] += len(batch)
                r.commit()
                did = True
        ticked = False
        for r in self.tick_readers:
            batch = r.read()
            if batch is None:
                continue
            if batch.dropped:
                self.counters["dropped"] += batch.dropped
            self.core.on_ticks(batch.records)
            self.counters["ticks"] += len(batch)
            r.commit()
            ticked = True
        did |= self._legs_back()
        self._sync_positions()
        if ticked:
            did |= self._check_books()
        return did or ticked

    def on_idle(self) -> None:
        self._apply_rules()
        self.core.expire()
        for alert, text in self.core.imbalance_changes():   # said once when it comes and goes
            (self.log.warning if alert else self.log.info)("imbalance: %s", text)
            self._event({"kind": "imbalance", "tier": "route", "alert": alert, "reason": text,
                         "ts_ns": self.clock.time_ns()})
        for _active, text, event in self.core.selection_changes():
            self.log.info("selection: %s", text)
            self._event(event)
        if not self._publishing:
            self._check_books()

    def _event(self, event: dict) -> None:
        self._events.append(event)
        del self._events[:-EVENTS_KEPT]         # a heartbeat that never comes keeps the newest

    def close(self) -> None:
        if getattr(self, "rules", None) is not None:
            self.rules.close()
        super().close()

    def stats(self) -> dict:
        if not hasattr(self, "core"):
            return dict(self.counters)
        n = len(self._events)                   # taken, not swapped: a pulse thread may beat meanwhile
        events = self._events[:n]
        del self._events[:n]
        return {**self.counters, **self.core.stats(), "rules_missing": sorted(self.rules.failures)
                if self.rules else [], "risk_events": events}
