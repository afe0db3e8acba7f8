"""Hedge obligations of routes: one leg of a pair filled without its partner.

A route (one asset on two venues, issue 14) trades in pairs: sell where it is rich,
buy where it is cheap, the same quantity at once. When one IOC leg fills and the other
does not (or only partly), the account holds the asset's price risk it meant not to
hold. That exposure is read from the positions themselves: the net base quantity of
the route's legs, counting working orders (a pair still in flight is not unhedged).
Positions are rebuilt from the journal's fills at start, so an obligation a crash left
open is found again from them; its events are journaled, and ``restore_events`` reads
them back, so its time limit keeps counting across the restart.

While an obligation is open and no order of the route's legs is working, ``intents``
re-hedges it on the route's hedge leg (the deeper venue by default): an IOC limit for
the whole unhedged quantity, at most ``band_bps`` through the touch (a hedge that would
pay more waits for the book to come back). Past ``timeout_ns`` the obligation is
*escalated*: execution moves the route to REDUCING (``Denial.HEDGE_OPEN``: no new pairs,
the re-hedge still passes since it closes the route's net) and raises an alert; both
lift when it closes.

Seqs are (route, the obligation's serial, attempt): deterministic, never reused, so the
order manager refuses to send one re-hedge twice; ``used`` (asked before a seq is
handed out) skips the ones an earlier process already sent. Pure: numpy in, INTENT rows
out, a clock passed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.clock import Clock
from shm.records import INTENT, ORDER_LIMIT, REASON_ENTRY, SIDE_BUY, SIDE_SELL, TIF_IOC

HEDGE_STRATEGY = 0xFE           # the strategy id of re-hedge intents (their own client ids)
SEQ_ROUTE_SHIFT, SEQ_SERIAL_SHIFT = 40, 16


@dataclass(frozen=True)
class HedgeRoute:
    """A route as the hedger sees it: the guard's route ``index``, a ``name`` for people, its
    two legs' symbol ids and the one re-hedges go to."""
    index: int
    name: str
    legs: tuple[int, int]
    hedge_leg: int

    def __post_init__(self):
        if self.hedge_leg not in self.legs or self.legs[0] == self.legs[1]:
            raise ValueError(f"route {self.name}: hedge leg {self.hedge_leg} must be one of its two legs "
                             f"{self.legs}")


@dataclass
class Obligation:
    """``qty``: the signed base quantity the hedge leg must trade (+ buy); ``serial``: the
    route's obligation number; ``attempts``: re-hedges sent for it."""
    route: int
    qty: float
    since_ns: int
    serial: int
    attempts: int = 0
    escalated: bool = False


class Hedges:
    """Open obligations per route; ``update`` finds them from the working positions,
    ``intents`` re-hedges them. ``min_qty`` per symbol id: below it a remainder is dust
    (the hedge leg's lot step once its rules are known)."""

    def __init__(self, routes: list[HedgeRoute], n_symbols: int, band_bps: float, timeout_ns: int,
                 clock: Clock, min_qty: float = 1e-12):
        self.routes = {r.index: r for r in routes}
        self.band = band_bps / 1e4
        self.timeout_ns = int(timeout_ns)
        self.clock = clock
        self.min_qty = np.full(n_symbols, float(min_qty))
        self.open: dict[int, Obligation] = {}
        self.serials = {r.index: 0 for r in routes}      # the last serial used, per route
        self.counters = {"opened": 0, "closed": 0, "escalated": 0, "sent": 0, "no_quote": 0}

    def update(self, working: np.ndarray, busy: set[int] | frozenset[int] = frozenset()) -> list[dict]:
        """Open, resize, escalate or close obligations from ``working`` (per symbol id: position
        plus working orders); returns the events (opened, changed, escalated, closed). An open
        obligation whose net is flat only by a working order (``busy``: symbol ids with one, a
        re-hedge in flight) stays open, its clock running, until that order is done: an IOC
        that then expires unfilled must not start the obligation (and its time limit) over."""
        now = self.clock.time_ns()
        events = []
        for idx, r in self.routes.items():
            net = float(working[r.legs[0]] + working[r.legs[1]])
            ob = self.open.get(idx)
            flat = abs(net) < self.min_qty[r.hedge_leg]
            if flat and ob is not None and (r.legs[0] in busy or r.legs[1] in busy):
                pass                        # not flat until the working order fills: the clock runs
            elif flat:
                if ob is not None:
                    del self.open[idx]
                    self.counters["closed"] += 1
                    events.append(self._event("closed", r, ob, now, "the legs' net is flat again"))
                continue
            elif ob is None:
                self.serials[idx] += 1
                ob = self.open[idx] = Obligation(idx, -net, now, self.serials[idx])
                self.counters["opened"] += 1
                events.append(self._event("opened", r, ob, now, f"legs net {net:+.10g} {r.name}"))
            elif ob.qty != -net:
                ob.qty = -net
                events.append(self._event("changed", r, ob, now, f"legs net {net:+.10g}"))
            if not ob.escalated and now - ob.since_ns > self.timeout_ns:
                ob.escalated = True
                self.counters["escalated"] += 1
                events.append(self._event("escalated", r, ob, now,
                                          f"unhedged {ob.qty:+.10g} on {r.name} for "
                                          f"{(now - ob.since_ns) / 1e9:.0f}s > {self.timeout_ns / 1e9:.0f}s"))
        return events

    def intents(self, bid: np.ndarray, ask: np.ndarray, busy: set[int],
                used: Callable[[int], bool] = lambda seq: False) -> np.ndarray:
        """One IOC re-hedge per open obligation whose legs have no working order (``busy``:
        symbol ids with one), priced at most ``band_bps`` through the hedge leg's touch."""
        now = self.clock.time_ns()
        rows = []
        for idx, ob in self.open.items():
            r = self.routes[idx]
            if r.legs[0] in busy or r.legs[1] in busy:
                continue
            s = r.hedge_leg
            touch = float(ask[s] if ob.qty > 0 else bid[s])
            if not (math.isfinite(touch) and touch > 0):
                self.counters["no_quote"] += 1
                continue
            seq = self._seq(ob)
            while used(seq):            # sent by an earlier process: that attempt is spent
                ob.attempts += 1
                seq = self._seq(ob)
            ob.attempts += 1
            row = np.zeros(1, INTENT)
            row["seq"], row["symbol_id"], row["strategy_id"] = seq, s, HEDGE_STRATEGY
            row["side"] = SIDE_BUY if ob.qty > 0 else SIDE_SELL
            row["qty"], row["order_type"], row["tif"] = abs(ob.qty), ORDER_LIMIT, TIF_IOC
            row["limit_price"] = touch * (1 + self.band) if ob.qty > 0 else touch * (1 - self.band)
            row["ref_price"], row["reason"] = touch, REASON_ENTRY
            row["ts_origin_ns"] = row["ts_ns"] = now
            rows.append(row)
            self.counters["sent"] += 1
        out = np.zeros(len(rows), INTENT)
        for i, row in enumerate(rows):
            out[i] = row[0]
        return out

    @staticmethod
    def _seq(ob: Obligation) -> int:
        return (ob.route << SEQ_ROUTE_SHIFT) | (ob.serial << SEQ_SERIAL_SHIFT) | ob.attempts

    @staticmethod
    def _event(kind: str, r: HedgeRoute, ob: Obligation, now: int, reason: str) -> dict:
        return {"kind": "hedge", "event": kind, "route": r.index, "name": r.name, "qty": ob.qty,
                "since_ns": ob.since_ns, "serial": ob.serial, "ts_ns": now, "reason": reason}

    def restore_events(self, events: list[dict]) -> None:
        """Rebuild from the events ``update`` returned, as journaled, in order: each route's
        serials, and the obligation its last event left open (its opening time, escalated or not).
        Attempts start at 0; ``used`` skips the seqs already sent."""
        open_: dict[int, Obligation] = {}
        by_name = {r.name: i for i, r in self.routes.items()}
        for ev in events:
            # by name: the routes' order in the config may have changed since (an index alone:
            # an event journaled before names were read back)
            idx = by_name.get(ev["name"]) if "name" in ev else int(ev["route"])
            if idx is None:
                raise ValueError(f"the journal holds a hedge obligation of route {ev['name']!r}, which "
                                 f"this config does not trade; put the route back or close its legs by hand")
            if idx not in self.routes:
                continue
            self.serials[idx] = max(self.serials[idx], int(ev["serial"]))
            if ev["event"] == "closed":
                open_.pop(idx, None)
                continue
            ob = open_.get(idx)
            if ob is None or ob.serial != int(ev["serial"]):
                ob = open_[idx] = Obligation(idx, float(ev["qty"]), int(ev["since_ns"]), int(ev["serial"]))
            ob.qty = float(ev["qty"])
            ob.escalated = ob.escalated or ev["event"] == "escalated"
        self.open.update(open_)
