"""Execution process: the single writer of orders, fills, positions and the journal.

A thin adapter around the desk (desk.py: risk guard, order manager, paper broker,
portfolio, journal). Each step it drains the feeds' tick rings (lossy: it keeps
the last trade, quote and feed health per symbol and venue, and shows the paper
broker the market of symbols with open orders), then the strategy's intents,
which the desk checks, journals and sends; it publishes the orders and fills the
desk returns and the positions they make, after the desk has committed them to
the journal. Between steps it collects the broker's late reports (latency) and
applies `pipeline halt` / `resume` commands from the supervisor.

At start the desk rebuilds positions, P&L, open orders and risk states from the
journal (a stop and start, a kill -9 of execution or of the whole group lose
nothing), and the positions table shows them before any intent is read.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from pipeline.journal import Journal
from shm.records import FILL, ORDER

from ..base import Worker
from .desk import Desk, StepOut, in_account
from .fx_feed import RatePoller
from .markets import RulesLoader, needs_rules
from .portfolio import balances

COMMANDS_KEPT = 32


class ExecutionWorker(Worker):
    role = "execution"
    collect_between_steps = True

    def setup(self) -> None:
        self.spin_us = self.cfg.rings.execution_spin_us
        self.positions = self.table("positions")
        syms = self.topo.symbols
        keys = [syms.name(i) for i in range(len(syms))]
        venues = list(dict.fromkeys(k.partition("@")[2] for k in keys))
        venue_of = np.array([venues.index(k.partition("@")[2]) for k in keys], np.int64)
        self.intents = next(r for r in self.readers if r.ring.spec.name == "intents")
        self.journal = Journal(self.cfg.journal_path())
        self.desk = Desk(keys, venue_of, venues, self.cfg.execution, self.cfg.risk, self.clock, self.journal,
                         self.cfg.pipeline.name, self.topo.run_id, log=self.log, routes=self.cfg.routes)
        self.desk.recover()        # (what it rebuilt is frozen when the loop starts: collect_between_steps)
        self.rules = self._load_rules(keys) if self.cfg.execution.venue_rules else None
        self.fx_poller = RatePoller(self.desk.fx.url_sources(), self.log).start()
        # the feeds' L2 books, where the run keeps them: the paper broker walks them
        self.books = self.table("books") if "books" in self.topo.tables else None
        self.book_seqs = np.zeros(len(keys), np.uint64)
        held = np.flatnonzero(self.desk.portfolio.rows["n_fills"] > 0)
        if len(held):
            self.positions.write(held, self.desk.portfolio.rows[held])
        self.applied: deque[str] = deque(maxlen=COMMANDS_KEPT)
        self.command_errors: dict[str, str] = {}
        self.counters.update(denied=0)
        self.log.info("journal %s: %d positions rebuilt, %d open orders resolved, next order id %d",
                      self.journal.path, len(held), self.desk.counters["resolved_at_start"],
                      self.desk.next_order_id)

    def _load_rules(self, keys: list[str]) -> RulesLoader:
        """Each venue feed's order rules, fetched in a thread; its orders wait for them."""
        feeds = []
        for feed in self.cfg.feeds:
            ids = {k.partition("@")[0]: i for i, k in enumerate(keys) if k.endswith("@" + feed.venue_name)}
            if needs_rules(feed) and ids:
                self.desk.hold_venue(feed.venue_name, f"the order rules of {feed.venue_name} (tick, lot, "
                                                      f"notional) are not loaded yet")
                feeds.append((feed, ids))
        return RulesLoader(feeds, self.desk.set_rules, self.log).start()

    def step(self) -> bool:
        did = self._read_ticks()              # the ticks first: intents meet the market as it is
        batch = self.intents.read()
        if batch is not None:
            did = True
            # and again: the ticks that caused these intents may have come since the read above
            self._read_ticks()
            self.counters["in"] += len(batch)
            passed = self.desk.guard.passed()
            self._publish(self.desk.on_intents(batch.records))
            self.counters["denied"] += len(batch) - (self.desk.guard.passed() - passed)
            self.intents.commit()
        else:
            self._publish(self.desk.poll())
        return did

    def _read_ticks(self) -> bool:
        did = self._read_books()
        for reader in self.readers:
            if reader is self.intents:
                continue
            batch = reader.read()
            if batch is not None:
                did = True
                self.desk.on_ticks(batch.records)
                reader.commit()
        return did

    def _read_books(self) -> bool:
        """The books that changed since the last read, to the desk."""
        if self.books is None:
            return False
        rows, seqs = self.books.read()
        changed = np.flatnonzero(seqs != self.book_seqs)
        if not len(changed):
            return False
        self.book_seqs[changed] = seqs[changed]
        self.desk.on_books(rows[changed])
        return True

    def _publish(self, out: StepOut) -> None:
        """Orders and fills (already committed to the journal), then the positions they made."""
        if out.orders:
            self.publish("orders", np.array(out.orders, ORDER))
        if out.fills:
            fills = np.array(out.fills, FILL)
            self.publish("fills", fills)
            self.record_latency(fills["ts_origin_ns"])
        if out.symbols:
            ids = np.array(sorted(out.symbols), np.intp)
            self.positions.write(ids, self.desk.portfolio.rows[ids])

    def idle_wait(self, timeout: float) -> None:
        due = self.desk.next_due_ns()       # a paper report on its way, an expiry: wake for it
        if due is not None:
            timeout = min(timeout, max(due - self.clock.time_ns(), 0) / 1e9)
        super().idle_wait(timeout)

    def on_idle(self) -> None:
        for index, rate, ts in self.fx_poller.drain():
            self.desk.fx.on_value(index, rate, ts)
        self._publish(self.desk.housekeeping())

    def on_command(self, msg: dict) -> None:
        if msg.get("cmd") != "risk":
            return
        why = self.desk.command(msg)
        cid = str(msg.get("id", ""))
        if why:
            self.log.error("risk command %s refused: %s", msg, why)
            self.command_errors[cid] = why
        else:
            self.log.warning("risk command applied: %s %s %s", msg.get("action"), msg.get("tier"),
                             msg.get("key") or "")
        self.applied.append(cid)
        self._publish(self.desk.poll())

    def finish(self) -> None:
        self._publish(self.desk.poll())
        self.desk.close()
        self.journal.close()

    def close(self) -> None:
        if getattr(self, "rules", None) is not None:
            self.rules.close()
        if getattr(self, "fx_poller", None) is not None:
            self.fx_poller.close()
        if getattr(self, "journal", None) is not None:
            self.journal.close()
        super().close()

    def stats(self) -> dict:
        if not hasattr(self, "desk"):
            return super().stats()
        d = self.desk
        events, dropped = d.drain_feed()
        rows = d.portfolio.rows
        return {**self.counters, **self.collector_stats(), **d.counters, **d.portfolio.stats(), "restored": d.restored,
                # in the account currency (the portfolio's own sums add KRW and USDT up as is)
                "realized_pnl": in_account(rows["realized_pnl"], d.fx.factor),
                "fees": in_account(rows["fees"], d.fx.factor), "currency": d.fx.currency,
                "equity": d.equity(), "equity_peak": d.equity_peak,
                "denials": d.guard.denials(), "passed": d.guard.passed(),
                "risk_states": d.risk_states(), "risk_commands": list(self.applied),
                "risk_command_errors": {k: v for k, v in self.command_errors.items() if k in self.applied},
                "risk_events": events, "risk_events_dropped": dropped,
                "trade_latency": d.latency_sparse(), "orders_open": len(d.orders.open_orders()),
                "order_stats": dict(d.orders.stats),
                "venue_rules_missing": sorted(self.rules.failures) if self.rules else [],
                "balances": balances(d.symbols, d.portfolio.rows),
                "routes": {h.route: {"score": round(h.score, 4), **{k: round(v, 4) for k, v in h.factors.items()}}
                           for h in d.health.values()},
                "hedges_open": {i: ob.qty for i, ob in d.hedges.open.items()} if d.hedges else {}}


WORKER = ExecutionWorker
