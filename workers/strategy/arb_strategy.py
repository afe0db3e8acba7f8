"""The route trader as the pipeline's strategy (``[strategy] kind = "arbitrage"``, issue 14).

A pure core around ``routes.ArbRoute``: book rows (``shm.records.BOOK``, as the ``books``
table holds them) and ticks in, INTENT rows out; the order and fill records execution
publishes come back to keep the inventory right. No rings, no tables, no zmq: the
process adapter (arb_worker.py) reads those and calls this.

* **Routes.** One ``ArbRoute`` per ``[[routes]]`` table: the leg quoted in KRW is the
  Korean leg, the one in USDT the other (the config's validation sees to both). Its
  ``RouteSpec`` takes each venue's taker fee (``fees_of``) and each leg's order rules;
  a route starts trading once both legs' rules are known (``set_rules``; with
  ``[execution] venue_rules = false`` permissive rules at once: no lot, no tick).
* **Inventory.** One ``Inventory`` shared by the routes, from ``[[inventory]]``: an
  asset that is a venue's quote currency in some route (KRW on Upbit, USDT on Binance)
  is that venue's cash, any other a coin.
* **FX.** ``FxRates`` from ``[execution]``: the KRW source market's ticks (its mid, seen at
  its receive time). A rate that FxRates does not call fresh (stale, or sources apart
  beyond ``fx_band_bps``) goes to the routes without a time: they refuse it (``stale_fx``).
* **Books.** ``on_books`` takes the route symbols' rows and their table sequences; a
  route whose leg's sequence moved is called with both current books. The update's
  sequence handed to the route is half the sum of its two rows' table sequences: it grows
  with every write of either row, so a pair's seqs are unique, and a restarted strategy
  that sees the same rows derives the same seqs (the order manager sends them once).
* **Legs back.** ORDER records map an order id to its intent seq; FILL records of our
  legs go to ``ArbRoute.on_fill`` (fees in quote, as the paper broker charges them). An
  IOC leg's unfilled rest, or a leg execution denied, leaves no record: a leg not done
  ``leg_timeout_ns`` after it was sent is declared done (``on_leg_done``, its
  reservation freed); a fill of it that still comes is applied to the inventory as it
  is. Fills of orders that are not ours on a route's symbol (execution's re-hedges of a
  one-legged pair) move the inventory too: the coins did move.
* **Selection.** With ``[strategy] max_active_routes`` or a gate set, a ``RouteSelector``
  (route_select.py) sees every route update that got as far as its edges (premium over
  the entry threshold, spread, depth within ``depth_band_bps`` in USDT), and with
  ``min_volume_quote`` the route symbols' trade ticks (in USDT), and, every
  ``select_every_s`` of the clock, parks the routes outside the best (``ArbRoute.may_open``
  False: they unwind, never open). Each change is said once (``selection_changes``: the
  worker logs it and puts it on the tap) and counted; the stats show each route's state.
* **Restart.** ``restore_positions`` takes execution's positions table: each route
  symbol's position and cash change since the journal's first fill (``portfolio.balances``)
  are added to the funding, and the Korean leg's position is the route's; a fill the
  fills ring hands over again (read, not committed, before the crash) that the positions
  already hold (no newer than the symbol's last fill in them) is skipped. The rolling
  premium window starts empty again (the routes warm up anew), and so does the
  selection's (every route active until its first period); legs in flight at the
  crash are execution's business (hedge obligations).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from pipeline.clock import Clock
from pipeline.config import Config, fees_of, symbol_parts
from shm.records import INTENT, SIDE_SELL, TICK_TRADE

from ..execution.fx import FxRates
from ..execution.portfolio import balances
from ..execution.venue_rules import SymbolRules
from .arbitrage import Book
from .route_select import Change, RouteSelector, SelectParams, book_spread_bps, side_depth
from .routes import ArbRoute, Inventory, RouteParams, RouteSpec

LEG_TIMEOUT_NS = 10_000_000_000     # an IOC leg with no fill for this long is over
KEEP = 8192                          # order ids and timed-out legs remembered (late fills)
STRATEGY_ID = 2


def _num(x: float) -> float | None:
    """A figure for the heartbeat's JSON: NaN (not known yet) as None."""
    return x if math.isfinite(x) else None


def _imbalance_dict(im) -> dict:
    return {"asset": im.asset, "net": im.net, "drift": dict(im.drift), "band": im.band, "alert": im.alert,
            "rebalance": None if im.rebalance is None else
            {"amount": im.rebalance.amount, "from": im.rebalance.from_venue, "to": im.rebalance.to_venue}}


def _imbalance_text(im) -> str:
    drift = ", ".join(f"{v} {d:+.8g}" for v, d in sorted(im.drift.items()))
    if not im.alert:
        return f"{im.asset} inventory back within its band ({drift})"
    move = (f"; suggested transfer: {im.rebalance.amount:.8g} {im.asset} {im.rebalance.direction}"
            if im.rebalance is not None else "")
    return (f"{im.asset} inventory off its funding beyond {im.band:.8g}: net {im.net:+.8g}, "
            f"drift {drift}{move}")


def permissive_rules(symbol: str) -> SymbolRules:
    """Rules that refuse nothing: no lot, no tick, no minimum (``venue_rules = false``)."""
    return SymbolRules(symbol=symbol, lot_step=None)


def book_of(row) -> Book:
    """A BOOK record as the route trader's Book (its own arrays: a Book is never changed
    once handed over); ``ts_ns`` is the receive time of the message that made it."""
    nb, na = int(row["n_bids"]), int(row["n_asks"])
    return Book(row["bid_px"][:nb].copy(), row["bid_sz"][:nb].copy(), row["ask_px"][:na].copy(),
                row["ask_sz"][:na].copy(), int(row["ts_origin_ns"]))


@dataclass
class _Route:
    """A configured route: its legs' symbol ids, and its trader once the rules are in."""
    krw: int
    usdt: int
    trader: ArbRoute | None = None
    problem: str = ""


class ArbStrategy:
    """Every configured route's trader, their shared inventory and FX, and the bookkeeping
    that turns execution's order and fill records back into leg reports."""

    def __init__(self, symbols: list[str], cfg: Config, clock: Clock,
                 rules: dict[int, SymbolRules] | None = None, leg_timeout_ns: int = LEG_TIMEOUT_NS,
                 route_params: dict | None = None):
        """``route_params``: RouteParams fields set alike for every route (a backtest's
        staleness limits), beside each ``[[routes]]`` table's own."""
        self.symbols = list(symbols)
        self.route_params = dict(route_params or {})
        self.cfg, self.clock = cfg, clock
        self.leg_timeout_ns = int(leg_timeout_ns)
        index = {k: i for i, k in enumerate(self.symbols)}
        self.fx = FxRates.from_config(self.symbols, cfg.execution)
        self.routes: list[_Route] = []
        self.quote_of: dict[str, str] = {}          # venue -> its quote currency in the routes
        for r in cfg.routes:
            krw, usdt = sorted(r.legs, key=lambda k: symbol_parts(k)[1] != "KRW")
            self.routes.append(_Route(index[krw], index[usdt]))
            for k in (krw, usdt):
                _, quote, venue = symbol_parts(k)
                self.quote_of[venue] = quote
        coins, cash = {}, {}
        for inv in cfg.inventory:
            if self.quote_of.get(inv.venue) == inv.asset:
                cash[inv.venue] = cash.get(inv.venue, 0.0) + float(inv.amount)
            else:
                coins[(inv.venue, inv.asset)] = coins.get((inv.venue, inv.asset), 0.0) + float(inv.amount)
        self.inventory = Inventory(coins, cash)
        self.funding = (dict(coins), dict(cash))    # [[inventory]]: the holdings before any fill
        self.synced_seqs: tuple | None = None       # the positions rows the inventory was last set from
        self.route_of = {}                          # symbol id -> route index
        for i, r in enumerate(self.routes):
            self.route_of[r.krw] = self.route_of[r.usdt] = i
        self.sids = np.array(sorted(self.route_of), np.intp)     # the books this strategy reads
        self.rules: dict[int, SymbolRules] = dict(rules or {})
        if not cfg.execution.venue_rules:
            for sid in self.sids.tolist():
                self.rules.setdefault(sid, permissive_rules(symbol_parts(self.symbols[sid])[0]))
        self._positions: dict[int, float] = {}      # route -> position restored before it was built
        self.book_seq: dict[int, int] = {}          # symbol id -> table sequence of its book in use
        self.books: dict[int, Book] = {}
        self.sent: dict[int, tuple[int, int]] = {}  # intent seq -> (route, sent at ns): in flight
        self.timed_out: dict[int, tuple] = {}       # intent seq -> (route, venue, side, korean)
        self.order_seq: dict[int, int] = {}         # order id -> intent seq (ours)
        self.counters = dict.fromkeys(("book_updates", "route_calls", "intents", "pairs", "fills",
                                       "late_fills", "other_fills", "legs_timed_out", "fills_restored"), 0)
        self.restored_upto: dict[int, int] = {}     # symbol id -> time of the last fill restored
        self._alerting: dict[str, bool] = {}        # asset -> its imbalance alert, as last said
        sc = cfg.strategy
        sp = SelectParams(sc.max_active_routes, int(sc.select_every_s * 1e9),
                          max(1, math.ceil(sc.select_window_s / sc.select_every_s - 1e-9)),
                          sc.min_depth_quote, sc.max_spread_bps, sc.select_hysteresis_bps, sc.min_volume_quote)
        self.selector = RouteSelector(len(self.routes), sp, clock.time_ns()) if sp.enabled else None
        self._selected: list[tuple[int, Change]] = []   # (when, change) not yet said
        self._figures: dict[int, tuple] = {}        # id(Book) -> (Book, its depth and spread)
        # trade ticks -> (route, leg) of each route symbol, for the volume gate (-1: none)
        self._volume_of = None
        if self.selector is not None and sc.min_volume_quote > 0:
            self._volume_of = np.full((len(self.symbols), 2), -1, np.int64)
            for i, r in enumerate(self.routes):
                self._volume_of[r.krw], self._volume_of[r.usdt] = (i, 0), (i, 1)
        self.counters.update(routes_activated=0, routes_parked=0)
        self._build()

    # -- routes ---------------------------------------------------------------------------------
    def set_rules(self, venue: str, rules: dict[int, SymbolRules]) -> None:
        """A venue's order rules by symbol id (markets.RulesLoader's ``deliver``); a route
        already trading takes them for its next orders (a dated tick table that changed), its
        pair size as it was."""
        self.rules.update(rules)
        for r in self.routes:
            if r.trader is not None and (r.krw in rules or r.usdt in rules):
                r.trader.spec = replace(r.trader.spec, krw_rules=self.rules[r.krw], usdt_rules=self.rules[r.usdt])
        self._build()

    def _build(self) -> None:
        ec = self.cfg.execution
        for i, (r, rc) in enumerate(zip(self.routes, self.cfg.routes)):
            if r.trader is not None or r.problem or r.krw not in self.rules or r.usdt not in self.rules:
                continue
            asset, _, kv = symbol_parts(self.symbols[r.krw])
            uv = symbol_parts(self.symbols[r.usdt])[2]
            spec = RouteSpec(i, asset, kv, r.krw, self.rules[r.krw], fees_of(ec, kv)[1],
                             uv, r.usdt, self.rules[r.usdt], fees_of(ec, uv)[1])
            try:
                r.trader = ArbRoute(spec, RouteParams(rc.qty, rc.entry_bps, rc.exit_bps, rc.band_bps,
                                                      rc.window, **self.route_params),
                                    self.inventory, self.clock, STRATEGY_ID)
            except ValueError as e:          # a pair size below a venue's lot: never trades
                r.problem = str(e)
                continue
            r.trader.position = self._positions.pop(i, 0.0)
            if self.selector is not None:
                r.trader.may_open = bool(self.selector.active[i])

    @property
    def ready(self) -> list[bool]:
        return [r.trader is not None for r in self.routes]

    # -- market data ----------------------------------------------------------------------------
    def on_ticks(self, ticks: np.ndarray) -> None:
        """Ticks of any feed: the FX markets' newest prices; with a volume gate, the route
        symbols' trades (their quote, the Korean in USDT at the current rate)."""
        self.fx.on_ticks(ticks["symbol_id"], ticks)
        if self._volume_of is not None and len(ticks):
            self._count_volume(ticks)

    def _count_volume(self, ticks: np.ndarray) -> None:
        """The route symbols' trades to the selector, per route and leg, in USDT (a Korean
        trade at the current rate; none counted while the rate is not fresh)."""
        sids = ticks["symbol_id"].astype(np.int64)
        ok = (ticks["kind"] == TICK_TRADE) & (sids < len(self._volume_of))
        where = self._volume_of[np.where(ok, sids, 0)]
        ok &= where[:, 0] >= 0
        if not ok.any():
            return
        quote = ticks["price"][ok] * ticks["size"][ok]
        route, leg = where[ok, 0], where[ok, 1]
        korean = leg == 0
        if korean.any():
            fx, ts = self.krw_per_usdt(self.clock.time_ns())
            if ts is None:                              # no fresh rate: the Korean trades are not counted
                quote, route, leg = quote[~korean], route[~korean], leg[~korean]
            else:
                quote = np.where(korean, quote / fx, quote)
        for r, g, q in zip(route.tolist(), leg.tolist(), quote.tolist()):
            if q == q:
                self.selector.observe_volume(r, g, q)

    def krw_per_usdt(self, now: int) -> tuple[float | None, int | None]:
        """KRW per USDT and when it was seen; no time when FxRates does not call it fresh."""
        self.fx.update(now)
        cur = self.fx.currency
        quote = "KRW" if cur == "USDT" else "USDT"
        rate, ts = self.fx.rates.get(quote, (None, None))
        if rate is None or not (rate > 0 and math.isfinite(rate)):
            return None, None
        if cur == "KRW":
            rate = 1.0 / rate                           # USDT per KRW -> KRW per USDT
        if quote in self.fx.problems:
            return rate, None
        return rate, ts

    def on_books(self, rows: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        """BOOK rows and their table sequences (0: never written), of any symbols: every
        route with a leg whose sequence moved is called; returns the INTENT rows."""
        if self.selector is not None and self.selector.due(self.clock.time_ns()):
            self._select(self.clock.time_ns())
        moved = set()
        for row, seq in zip(rows, seqs.tolist()):
            sid = int(row["symbol_id"])
            if seq == 0 or seq <= self.book_seq.get(sid, 0) or sid not in self.route_of:
                continue
            self.book_seq[sid] = seq
            self.books[sid] = book_of(row)
            moved.add(self.route_of[sid])
            self.counters["book_updates"] += 1
        if not moved:
            return np.zeros(0, INTENT)
        now = self.clock.time_ns()
        fx, fx_ts = self.krw_per_usdt(now)
        out = []
        for i in sorted(moved):
            r = self.routes[i]
            kb, ub = self.books.get(r.krw), self.books.get(r.usdt)
            if r.trader is None or kb is None or ub is None:
                continue
            self.counters["route_calls"] += 1
            rows_out = r.trader.on_books(kb, ub, fx, fx_ts, (self.book_seq[r.krw] + self.book_seq[r.usdt]) >> 1)
            if self.selector is not None:
                self._observe(i, r.trader, kb, ub, fx)
            if len(rows_out):
                for s in rows_out["seq"].tolist():
                    self.sent[int(s)] = (i, now)
                out.append(rows_out)
                self.counters["pairs"] += 1
        if not out:
            return np.zeros(0, INTENT)
        intents = np.empty(sum(len(x) for x in out), INTENT)   # (concatenate drops the padding)
        k = 0
        for x in out:
            intents[k:k + len(x)] = x
            k += len(x)
        self.counters["intents"] += len(intents)
        return intents

    # -- selection --------------------------------------------------------------------------------
    def _observe(self, i: int, trader: ArbRoute, kb: Book, ub: Book, fx: float) -> None:
        """The update the route just judged, to the selector: only one that got as far as
        its edges (valid books and FX, window warm)."""
        ek, eu = trader.last_edges
        if not (ek == ek and eu == eu):
            return
        kd, ks = self._book_figures(kb)
        ud, us = self._book_figures(ub)
        self.selector.observe(i, max(ek, eu) - trader.p.entry_bps, max(ks, us), min(kd / fx, ud))

    def _book_figures(self, book: Book) -> tuple[float, float]:
        """(thinner side's quote within depth_band_bps, spread in bps) of a book, worked out
        once per Book (an update changes one leg's; a Book is never changed once made)."""
        hit = self._figures.get(id(book))
        if hit is not None and hit[0] is book:
            return hit[1]
        band = self.cfg.strategy.depth_band_bps
        figures = (min(side_depth(book.bid_px, book.bid_sz, band, True),
                       side_depth(book.ask_px, book.ask_sz, band, False)),
                   book_spread_bps(float(book.bid_px[0]), float(book.ask_px[0])))
        if len(self._figures) > 4 * len(self.routes) + 8:
            self._figures.clear()
        self._figures[id(book)] = (book, figures)
        return figures

    def _select(self, now: int) -> None:
        """A selection period is over: the routes' new states, each change kept to be said."""
        sel = self.selector
        for c in sel.select(now):
            self._selected.append((now, c))
            self.counters["routes_activated" if c.active else "routes_parked"] += 1
        for i, r in enumerate(self.routes):
            if r.trader is not None:
                r.trader.may_open = bool(sel.active[i])

    def selection_changes(self) -> list[tuple[bool, str, dict]]:
        """(active, what to say, tap event) for each route that changed state since the last call."""
        out = []
        for ts, c in self._selected:
            name = self.cfg.routes[c.route].name
            word = "active" if c.active else "parked"
            out.append((c.active, f"route {name} {word}: {c.reason}",
                        {"kind": "route_selection", "tier": "route", "key": name, "route": c.route,
                         "state": word.upper(), "reason": c.reason, "ts_ns": ts}))
        self._selected = []
        return out

    # -- legs back --------------------------------------------------------------------------------
    def on_orders(self, orders: np.ndarray) -> None:
        """ORDER records execution sent: which order id acts on which of our intents."""
        for oid, seq in zip(orders["order_id"].tolist(), orders["intent_seq"].tolist()):
            if seq in self.sent or seq in self.timed_out:
                self.order_seq[oid] = seq
                if len(self.order_seq) > KEEP:
                    del self.order_seq[next(iter(self.order_seq))]

    def on_fills(self, fills: np.ndarray) -> None:
        """FILL records: our legs' to their route, late ones and others' on a route symbol
        (re-hedges) to the inventory as they are."""
        for f in fills:
            oid, sid = int(f["order_id"]), int(f["symbol_id"])
            if int(f["ts_ns"]) <= self.restored_upto.get(sid, -1):
                self.counters["fills_restored"] += 1     # in the positions this core started from
                continue
            qty, price, fee = float(f["qty"]), float(f["price"]), float(f["fee"])
            seq = self.order_seq.get(oid)
            if seq is not None and seq in self.sent:
                ri = self.sent[seq][0]
                trader = self.routes[ri].trader
                trader.on_fill(seq, qty, price, fee_quote=fee)
                self.counters["fills"] += 1
                if seq not in trader.legs:
                    del self.sent[seq]
            elif seq is not None and seq in self.timed_out:
                ri, venue, side, korean = self.timed_out[seq]
                self._external(sid, side, qty, price, fee)
                if korean:
                    self.routes[ri].trader.position += qty if side == SIDE_SELL else -qty
                self.counters["late_fills"] += 1
            elif sid in self.route_of:
                self._external(sid, int(f["side"]), qty, price, fee)
                self.counters["other_fills"] += 1

    def _external(self, sid: int, side: int, qty: float, price: float, fee: float) -> None:
        """A fill the routes did not expect, straight into the inventory."""
        asset, _, venue = symbol_parts(self.symbols[sid])
        inv, key = self.inventory, (venue, asset)
        sign = 1.0 if side == SIDE_SELL else -1.0
        inv.coins[key] = inv.coins.get(key, 0.0) - sign * qty
        inv.cash[venue] = inv.cash.get(venue, 0.0) + sign * qty * price - fee

    def expire(self, now: int | None = None) -> int:
        """Legs sent more than ``leg_timeout_ns`` ago and not done: over (their IOC rest
        expired, or execution refused them). Returns how many."""
        now = self.clock.time_ns() if now is None else now
        n = 0
        for seq, (ri, ts) in list(self.sent.items()):
            if now - ts <= self.leg_timeout_ns:
                continue
            trader = self.routes[ri].trader
            leg = trader.legs.get(seq)
            if leg is not None:
                self.timed_out[seq] = (ri, leg.venue, leg.side, leg.korean)
                if len(self.timed_out) > KEEP:
                    del self.timed_out[next(iter(self.timed_out))]
                trader.on_leg_done(seq)
                n += 1
            del self.sent[seq]
        self.counters["legs_timed_out"] += n
        return n

    # -- restart ----------------------------------------------------------------------------------
    def in_flight(self) -> bool:
        return bool(self.sent) or any(r.trader is not None and r.trader.legs for r in self.routes)

    def sync_positions(self, rows: np.ndarray, seqs: np.ndarray) -> bool:
        """The inventory set anew from the funding and execution's positions table, when the
        route symbols' rows changed and no leg is in flight (nothing reserved): at a fresh
        start over an old journal (execution writes what it rebuilt, maybe after this process
        started), after a restart, and after every fill, so the inventory never drifts from
        what the journal says was filled. True when it was set."""
        key = tuple(seqs[self.sids].tolist())
        if key == self.synced_seqs or self.in_flight():
            return False
        self.synced_seqs = key
        self.restore_positions(rows, seqs)
        return True

    def restore_positions(self, rows: np.ndarray, seqs: np.ndarray) -> None:
        """Execution's positions table (POSITION rows by symbol id and their sequences):
        what the journaled fills moved on the route symbols, added to the funding (the
        inventory is set from scratch)."""
        inv = self.inventory
        inv.coins, inv.cash = dict(self.funding[0]), dict(self.funding[1])
        rows = rows.copy()
        rows[seqs == 0] = np.zeros(1, rows.dtype)
        mine = np.zeros(len(rows), bool)
        mine[self.sids] = True
        rows[~mine] = np.zeros(1, rows.dtype)
        for venue, assets in balances(self.symbols[:len(rows)], rows).items():
            for asset, change in assets.items():
                if self.quote_of.get(venue) == asset:
                    inv.cash[venue] = inv.cash.get(venue, 0.0) + change
                else:
                    inv.coins[(venue, asset)] = inv.coins.get((venue, asset), 0.0) + change
        # fills a predecessor read but did not commit come again from the ring: those the
        # positions hold already (as old as the symbol's last fill in them) are skipped
        self.restored_upto = {int(sid): int(rows["ts_ns"][sid]) for sid in self.sids.tolist()
                              if rows["n_fills"][sid] > 0}
        for i, r in enumerate(self.routes):
            position = -float(rows["qty"][r.krw])         # coins sold net on the Korean venue
            if r.trader is not None:
                r.trader.position = position
            else:
                self._positions[i] = position

    def stats(self) -> dict:
        routes = {}
        for rc, r in zip(self.cfg.routes, self.routes):
            t = r.trader
            routes[rc.name] = ({"problem": r.problem or "waiting for venue rules"} if t is None else
                               {"position": t.position, "premium_mean_bps": _num(t.premium_mean),
                                "last_mid_bps": _num(t.last_mid_bps), "legs_in_flight": len(t.legs),
                                "denials": dict(t.denials),
                                **{k: v for k, v in t.counters.items() if v}})
        sel = self.selector
        if sel is not None:
            for i, rc in enumerate(self.cfg.routes):
                routes[rc.name].update(active=bool(sel.active[i]), selection=sel.why[i],
                                       score_bps=_num(float(sel.score[i])), spread_bps=_num(float(sel.spread[i])),
                                       depth_quote=_num(float(sel.depth[i])), volume_quote=float(sel.volume[i]))
        return {**self.counters, "routes": routes, "fx_problems": dict(self.fx.problems),
                "inventory": self.inventory.state(),
                "imbalances": [_imbalance_dict(i) for i in self.imbalances()]}

    def imbalances(self) -> list:
        """Each funded asset across its venues (routes.Inventory.imbalance) at the configured band."""
        return self.inventory.imbalances(self.cfg.strategy.imbalance_band)

    def imbalance_changes(self) -> list[tuple[bool, str]]:
        """(alert, what to say) for each asset whose alert came or went since the last call."""
        out = []
        for im in self.imbalances():
            if im.alert != self._alerting.get(im.asset, False):
                self._alerting[im.asset] = im.alert
                out.append((im.alert, _imbalance_text(im)))
        return out
