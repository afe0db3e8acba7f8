"""The desk: what execution does with market data and intents, as one pure core.

A step's intents go through the four-tier risk guard (risk.py) in one batch, then
one by one through the venue's order rules (venue_rules.py, where the desk knows
the venue's markets), into the order manager (orders.py: a client order id
derived from the pipeline, the strategy, the run and the intent seq) and out to
the paper broker (broker.py), which matches them on the book the feed shows, with
latency and maker/taker fees. What comes back (acks, fills, expiries, rejects)
moves the orders and, for fills, the portfolio (portfolio.py).

Money rules, as the desk keeps them:

* Every intent is journaled, with a verdict row when it is refused (a Denial code
  and the cause); every order event, fill, position change, risk state change
  and manual command is journaled too (pipeline/journal.py).
* Write-ahead: a step's orders are committed to the journal (created, then
  submitted) before the broker sees any of them; a fill is committed with the
  position it makes before the caller may publish either.
* ``recover`` rebuilds everything from the journal at start: positions, realised
  P&L and fees from every fill of every run; the orders still open and those of
  this run (so a restarted execution never sends an intent twice); the risk
  tiers and the account's equity peak and day start from the last snapshot, and
  the manual commands journaled after it (`pipeline halt` while stopped). An
  order a crash left open is resolved before any new order: the paper venue
  lived in the crashed process, so nothing more of it can fill, and it is
  expired with that reason. Positions journaled that the fills do not explain
  halt the global tier. The routes' hedge obligations come back from their
  journaled events, their time limits still running.

Money is in the account's currency (fx.py): the guard and the equity value each
symbol at its quote currency's rate. Routes (``[[routes]]``, one asset on two
venues) are held together: a leg that filled without its partner is a hedge
obligation (hedges.py), re-hedged between steps through the same guard and
journal as any intent, and escalated (route REDUCING, an alert) past its time limit.

Pure: numpy records in, records out, a clock and a journal passed in, so a
backtest drives the same desk as the execution process.
"""
from __future__ import annotations

import heapq
import math
import operator
from collections import deque
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from pipeline.clock import Clock
from pipeline.config import ExecutionConfig, RiskConfig, RouteConfig, currency_problem, fees_of, route_of
from pipeline.journal import Journal
from pipeline.metrics import LatencyHistogram
from shm.records import (FILL, INTENT, ORDER, ORDER_CANCEL, ORDER_LIMIT, TICK_GAP, TICK_TRADE, TIF_GTC,
                         TIF_POST_ONLY)

from .broker import LatencyModel, PaperBroker, clean_book
from .fx import FxRates
from .hedges import HEDGE_STRATEGY, HedgeRoute, Hedges
from .route_health import Health, HealthLimits, RouteHealth
from .impact import MarketImpact
from .orders import (BLOCKING, NAME, SNAPSHOT_FIELDS, TERMINAL, OrderManager, OrderState, VenueStatus,
                     client_order_id, orders_from_events)
from .portfolio import Portfolio
from .risk import DAY_NS, Denial, MarketView, RiskGuard, TradingState
from .venue_rules import Denial as RuleDenial, SymbolRules, round_order

PAPER_LOST = "the paper venue ran inside the process that stopped: nothing more of it can fill"
STAGES = ("tick_to_intent", "intent_to_submit", "submit_to_ack", "ack_to_fill", "tick_to_fill")
TICK_TO_INTENT, INTENT_TO_SUBMIT, SUBMIT_TO_ACK, ACK_TO_FILL, TICK_TO_FILL = range(len(STAGES))
SNAPSHOT_EVERY_NS = 60 * 1_000_000_000
ACCOUNT_STEP = 1e-3             # an equity peak this much above the last snapshot's is journaled before an order
EVENTS_KEPT = 200
POSITION_TOLERANCE = 1e-9


@dataclass
class StepOut:
    """What a step produced, for the caller to publish (everything in it is journaled)."""
    orders: list = field(default_factory=list)      # ORDER records
    fills: list = field(default_factory=list)       # FILL records
    symbols: set = field(default_factory=set)       # symbol ids whose position changed

    def extend(self, other: "StepOut") -> "StepOut":
        self.orders += other.orders
        self.fills += other.fills
        self.symbols |= other.symbols
        return self


class Desk:
    """Risk guard, order manager, paper broker and portfolio of one execution process.
    ``symbols`` are the symbol keys by id ("BTC/USDT@binance"), ``venue_of`` each one's
    index into ``venues``; ``rules`` the venue order rules by symbol id, where known."""

    def __init__(self, symbols: list[str], venue_of: np.ndarray, venues: list[str],
                 ec: ExecutionConfig, rc: RiskConfig, clock: Clock, journal: Journal,
                 pipeline: str, run_id: str, rules: dict[int, SymbolRules] | None = None, log=None,
                 snapshot_every_ns: int = SNAPSHOT_EVERY_NS, routes: list[RouteConfig] | None = None):
        n = len(symbols)
        self.snapshot_every_ns = int(snapshot_every_ns)
        self.symbols = list(symbols)
        self.index = {key: i for i, key in enumerate(self.symbols)}
        self.venues = list(venues)
        self.venue_of = np.asarray(venue_of, np.int64)
        self.clock, self.journal, self.log = clock, journal, log
        self.pipeline, self.run_id = pipeline, run_id
        self.rules = rules or {}
        self.held: dict[int, str] = {}          # venue index -> why its orders wait (no rules yet)
        self.capital = float(ec.capital)
        self.portfolio = Portfolio.empty(n)
        self.market = MarketView.empty(n, len(self.venues))
        # money in the account's currency: the guard and the equity read the rates in place
        problem = currency_problem(ec, self.symbols)
        if problem:
            raise ValueError(problem)
        self.fx = FxRates.from_config(self.symbols, ec)
        self.market.fx, self.market.fx_fresh = self.fx.factor, self.fx.fresh
        self.quoted = np.zeros(n, bool)          # symbols whose feed has sent a quote
        routes = list(routes or [])
        self.guard = RiskGuard(n, self.venue_of, self.venues, rc, clock,
                               route_of=np.array(route_of(routes, self.symbols), np.int64),
                               symbols=self.symbols, routes=[r.name for r in routes])
        # a route's leg filled without its partner: re-hedged here, where the fills are
        self.hedges = Hedges([HedgeRoute(i, r.name, (self.index[r.legs[0]], self.index[r.legs[1]]),
                                         self.index[r.hedge]) for i, r in enumerate(routes)],
                             n, ec.hedge_band_bps, int(ec.hedge_timeout_s * 1e9), clock) if routes else None
        self.route_health = RouteHealth(len(routes), HealthLimits(max_quote_age_s=rc.max_quote_age_s or 5.0))
        self.max_feed_silence_ns = int(rc.max_feed_silence_s * 1e9)
        self._route_legs: dict[str, tuple[int, float]] = {}   # a route leg's client id -> (route, ref price)
        self.health: dict[int, Health] = {}                    # route -> its last health score
        self.orders = OrderManager(clock, snapshot_last_only=True)
        ms = 1_000_000
        self.impact = MarketImpact(n, ec.impact_coef, ec.impact_window_s) if ec.impact_coef > 0 else None
        self.broker = PaperBroker(clock, {v: fees_of(ec, v) for v in self.venues},
                                  LatencyModel(int(ec.ack_latency_ms * ms), int(ec.fill_latency_ms * ms),
                                               int(ec.latency_jitter_ms * ms)), ec.slippage_bps,
                                  self.impact.bps if self.impact is not None else None)
        self.order_ids: dict[str, int] = {}
        self.next_order_id = 1
        self.equity_peak = self.day_start_equity = self.capital
        self.day = clock.time_ns() // DAY_NS
        self._snapped = (self.equity_peak, self.day)     # the account figures of the last snapshot
        self.latency = {(v, s): LatencyHistogram() for v in self.venues for s in STAGES}
        self._samples: dict[tuple[str, str], list[int]] = {k: [] for k in self.latency}
        # the same lists by venue, in STAGES order: a sample is one append (see `_fold_samples`)
        self._by_venue = {v: tuple(self._samples[(v, s)] for s in STAGES) for v in self.venues}
        self.feed: deque[dict] = deque(maxlen=EVENTS_KEPT)     # risk events for the tap
        self.feed_dropped = 0
        self.restored: dict[str, float] = {}
        self._shown: dict[int, int] = {}        # symbol -> time of the quote the broker last saw
        # symbol -> (time, bids, asks): the feed's L2 book (the books table), which the paper
        # broker walks instead of the top of book when it is the newer of the two
        self.books: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        self.counters = {"intents": 0, "orders": 0, "fills": 0, "skipped_replay": 0,
                         "resolved_at_start": 0, "books_refused": 0}
        self._next_snapshot = 0
        self._batch = _Batch()
        self._expiries: list[tuple[int, str]] = []   # (expire_ns, client id) of resting orders: a heap
        self._orders_moved = False               # since the positions' working quantities were marked

    # -- market data ------------------------------------------------------------------------
    def on_ticks(self, ticks: np.ndarray) -> None:
        """The last trade, quote and feed health per symbol and venue; the paper broker
        sees the ticks of symbols with open orders (the rest it is shown before a submit)."""
        if len(ticks) == 0:
            return
        sid = ticks["symbol_id"].astype(np.int64)
        ok = sid < len(self.symbols)
        if not ok.all():                        # a copy only when some tick is not ours
            ticks, sid = ticks[ok], sid[ok]
        ts = ticks["ts_origin_ns"].astype(np.int64)
        m = self.market
        price, bid, ask = ticks["price"], ticks["bid"], ticks["ask"]
        with np.errstate(invalid="ignore"):
            trade = (ticks["kind"] == TICK_TRADE) & np.isfinite(price) & (price > 0)
            quote = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask >= bid)
        self.quoted[sid[quote]] = True
        # a symbol whose feed never quotes (a replay of trades or candles): its last trade
        # stands for the quote, so market orders fill there, moved by slippage_bps
        stand_in = trade & ~quote & ~self.quoted[sid]
        quote = quote | stand_in
        bid, ask = np.where(stand_in, price, bid), np.where(stand_in, price, ask)
        m.last[sid[trade]] = price[trade]             # numpy assigns in order: the last one stays
        if self.impact is not None:
            sized = trade & np.isfinite(ticks["size"]) & (ticks["size"] > 0)
            self.impact.on_trades(sid[sized], ticks["ts_exchange_ns"][sized], price[sized], ticks["size"][sized])
        quoted = sid[quote]
        m.bid[quoted], m.ask[quoted], m.quote_ns[quoted] = bid[quote], ask[quote], ts[quote]
        self.fx.on_ticks(sid, ticks)
        latest = int(ts.max()) if len(ts) else None
        self._rates(self.clock.time_ns() if latest is None else latest)
        if len(self.venues) == 1:
            if latest is not None:              # one venue: every tick is its (no grouping)
                m.venue_last_ns[0] = max(int(m.venue_last_ns[0]), latest)
                m.venue_connected[0] = ticks["kind"][-1] != TICK_GAP
        else:
            v = self.venue_of[sid]
            for vi in np.unique(v):
                mine = np.flatnonzero(v == vi)
                m.venue_last_ns[vi] = max(int(m.venue_last_ns[vi]), int(ts[mine].max()))
                m.venue_connected[vi] = ticks["kind"][mine[-1]] != TICK_GAP
        active = {o.symbol_id for o in self.orders._live.values()}
        if active:
            for i in np.flatnonzero(np.isin(sid, list(active))):
                s = int(sid[i])
                if quote[i]:
                    self.broker.on_quote(s, float(bid[i]), math.inf, float(ask[i]), math.inf, int(ts[i]))
                    self._shown[s] = ts[i]
                if trade[i]:
                    self.broker.on_trade(s, float(price[i]), float(ticks["size"][i]), int(ticks["side"][i]),
                                         int(ts[i]))

    def on_books(self, rows: np.ndarray) -> None:
        """BOOK rows (the feeds' L2 books): kept per symbol, and shown to the paper broker at
        once for a symbol with open orders, so market orders walk the depth and resting ones
        see what trades ahead of them; a book at least as new as the quote sets it (the risk
        guard's spread and notional read the book's top). An empty book (a feed that lost its
        depth) is forgotten, and so is a book the broker would refuse (a price or size not a
        positive number, a side out of order, bids above asks; counted in ``books_refused``):
        kept, it would hide the quotes that come after it from the broker."""
        active = {o.symbol_id for o in self.orders._live.values()} if self.orders._live else set()
        m = self.market
        for row in rows:
            s = int(row["symbol_id"])
            if s >= len(self.symbols):
                continue
            nb, na = int(row["n_bids"]), int(row["n_asks"])
            clean = None
            if nb and na:
                clean = clean_book(np.column_stack([row["bid_px"][:nb], row["bid_sz"][:nb]]),
                                   np.column_stack([row["ask_px"][:na], row["ask_sz"][:na]]))
                self.counters["books_refused"] += clean is None
            if clean is None or not (len(clean[0]) and len(clean[1])):
                self.books.pop(s, None)
                continue
            ts = int(row["ts_origin_ns"])
            bids, asks = clean
            self.books[s] = (ts, bids, asks)
            bid, ask = float(bids[0, 0]), float(asks[0, 0])
            if ts >= m.quote_ns[s] and 0 < bid < ask:   # its top is the quote (a trade no longer stands in)
                m.bid[s], m.ask[s], m.quote_ns[s] = bid, ask, ts
                self.quoted[s] = True
            if s in active and self._shown.get(s) != ts and self.broker.on_book(s, bids, asks, ts):
                self._shown[s] = ts

    # -- intents ----------------------------------------------------------------------------
    def on_intents(self, intents: np.ndarray) -> StepOut:
        """Check, journal and send a step's intents; what the broker answered by now comes back."""
        if intents.dtype != INTENT:
            raise TypeError(f"intents must have the INTENT dtype, got {intents.dtype}")
        now = self.clock.time_ns()
        cancel = intents["order_type"] == ORDER_CANCEL
        if cancel.any():                        # before the rest: an exit after its entry's cancel
            self._cancel_intents(intents[cancel], now)
            intents = intents[~cancel]
        m = self.market
        m.position[:] = self.portfolio.rows["qty"] + self._working()
        m.open_orders[:] = self._resting_per_venue()
        self._account(now)
        codes = self.guard.check(intents, m)
        whys, rounded = self._venue_rules(intents, codes)
        pairs = self._whole_pairs(intents, codes) if self.hedges is not None else {}
        blocked = self.orders.blocked_symbols()
        out, sent = StepOut(), []
        n_sym, symbols, venues, venue_of = len(self.symbols), self.symbols, self.venues, self.venue_of.tolist()
        sids = intents["symbol_id"].tolist()
        keys = [symbols[sid] if sid < n_sym else f"#{sid}" for sid in sids]
        self._batch.intents(now, keys, intents)
        self.counters["intents"] += len(intents)
        if not len(intents):
            return out.extend(self._send(sent))
        cols = [intents[name].tolist() for name in ("seq", "side", "order_type", "tif", "qty", "limit_price",
                                                     "ref_price", "strategy_id", "reason", "ts_origin_ns",
                                                     "ts_ns", "expire_ns")]
        codes = codes.tolist()
        rows = zip(range(len(sids)), sids, keys, *cols)
        if pairs:                               # a pair's second leg right after its first
            rows, seconds = list(rows), set(pairs.values())
            rows = [r for i in range(len(rows)) if i not in seconds
                    for r in ((rows[i], rows[pairs[i]]) if i in pairs else (rows[i],))]

        def answer_due(s: int) -> bool:         # an order of this step for the symbol blocks it
            return s in blocked and any(o.symbol_id == s for o in sent)
        made = []                               # (order, order id, ref price) of the orders sent
        for (i, sid, key, seq, side, otype, tif, qty, limit, ref, strat, reason, ts_origin, ts_intent,
             expire) in rows:
            code, why = codes[i], whys.get(i, "")       # why: a reason beyond the code's, for the verdict
            if code == 0:
                j = pairs.get(i)                # a pair's second leg: checked, and sent, with its first
                if answer_due(sid) or (j is not None and answer_due(sids[j])):
                    out.extend(self._send(sent))   # a second intent for a symbol in one step:
                    sent = []                       # the first one's answer comes first
                    blocked = self.orders.blocked_symbols()
                if sid in blocked or (j is not None and sids[j] in blocked):   # a pair: both or neither
                    code = self._deny_after(Denial.IN_FLIGHT if sid in blocked else Denial.PAIR_LEG)
                    if j is not None:
                        codes[j] = self._deny_after(Denial.IN_FLIGHT if sids[j] in blocked else Denial.PAIR_LEG)
            if code:
                self._verdict(intents[i], key, code, why, now)
                continue
            if i in rounded:
                qty, limit = rounded[i]
            rests = expire > 0 and otype == ORDER_LIMIT and tif in (TIF_GTC, TIF_POST_ONLY)
            order = self.orders.create_values(seq, sid, venues[venue_of[sid]], side, otype, tif, qty, limit,
                                              strat, reason, ts_origin, self.pipeline, f"{strat}.{self.run_id}",
                                              expire if rests else 0)
            if order.duplicate:
                self.counters["skipped_replay"] += 1
                continue
            if rests:
                heapq.heappush(self._expiries, (expire, order.client_id))
            self.orders.submitted(order.client_id)
            self.order_ids[order.client_id] = oid = self.next_order_id
            self.next_order_id += 1
            blocked.add(sid)
            made.append((order, oid, ref))
            if self.hedges is not None and strat != HEDGE_STRATEGY and self.guard.route_of[sid] >= 0:
                self._route_legs[order.client_id] = (int(self.guard.route_of[sid]), ref)
            sent.append(order)
            self._by_venue[order.venue][TICK_TO_INTENT].append(ts_intent - ts_origin)
        out.orders += _order_records(made, now)
        return out.extend(self._send(sent))

    def _cancel_intents(self, cancels: np.ndarray, now: int) -> None:
        """ORDER_CANCEL intents: journaled, then each cancels its strategy's open orders of its
        symbol made before the strategy sent it (a cancel read again after a restart never
        takes a newer order), passing every tier, HALTED included: it only takes risk away."""
        n_sym = len(self.symbols)
        sids = cancels["symbol_id"].tolist()
        self._batch.intents(now, [self.symbols[s] if s < n_sym else f"#{s}" for s in sids], cancels)
        self.counters["intents"] += len(cancels)
        cids = []
        for i, (sid, strat, sent_ns) in enumerate(zip(sids, cancels["strategy_id"].tolist(),
                                                       cancels["ts_ns"].tolist())):
            if sid >= n_sym:
                self._verdict(cancels[i], f"#{sid}", self._deny_after(Denial.BAD_INPUT), "cancel of an unknown symbol",
                              now)
                continue
            cids += [o.client_id for o in self.orders.open_orders(sid)
                     if o.strategy_id == strat and o.timestamps.get("CREATED", 0) <= sent_ns]
        self._request_cancels(cids, "cancelled by its strategy")

    def _request_cancels(self, cids: list[str], reason: str) -> None:
        """Write-ahead cancels: each request journaled and committed before the venue hears it."""
        asked = [cid for cid in cids if self.orders.cancel_requested(cid, reason)]
        if not asked:
            return
        self._commit()
        for cid in asked:
            self.broker.cancel(cid)
        self.counters["cancels"] = self.counters.get("cancels", 0) + len(asked)

    def _expire_due(self, now: int) -> None:
        """Resting orders past their intent's ``expire_ns``: cancelled (what filled stays)."""
        due = []
        while self._expiries and self._expiries[0][0] <= now:
            due.append(heapq.heappop(self._expiries)[1])
        live = self.orders._live
        self._request_cancels([cid for cid in due if cid in live], "time in force: rested until its expiry")

    def next_due_ns(self) -> int | None:
        """When the desk next has something to do by itself: a broker report due, or a resting
        order's expiry (None: nothing)."""
        due = self.broker.next_due_ns()
        if self._expiries:
            due = self._expiries[0][0] if due is None else min(due, self._expiries[0][0])
        return due

    def snapshot_due_ns(self) -> int:
        """When housekeeping next writes a recovery snapshot (0: at the next call)."""
        return self._next_snapshot

    def _send(self, sent: list) -> StepOut:
        """Write-ahead: the orders are committed to the journal (created, submitted) before
        the venue hears of any; then what it answered by now."""
        self._commit(sending=bool(sent))
        if not sent:
            return self.poll()
        m = self.market
        bids, asks, quote_ns = m.bid.tolist(), m.ask.tolist(), m.quote_ns.tolist()   # plain values: read per order
        shown, broker, by_venue = self._shown, self.broker, self._by_venue
        books = self.books
        for order in sent:
            s = order.symbol_id
            book = books.get(s)
            if book is not None and book[0] >= quote_ns[s]:
                if shown.get(s) != book[0]:
                    broker.on_book(s, book[1], book[2], book[0])
                    shown[s] = book[0]
            elif shown.get(s) != quote_ns[s] and math.isfinite(bids[s]) and math.isfinite(asks[s]):
                broker.on_quote(s, bids[s], math.inf, asks[s], math.inf, quote_ns[s])
                shown[s] = quote_ns[s]
            broker.submit(order.client_id, s, order.venue, order.side, order.order_type, order.tif,
                          order.qty, order.limit_price)
            by_venue[order.venue][INTENT_TO_SUBMIT].append(self.clock.time_ns() - order.timestamps["CREATED"])
        self.counters["orders"] += len(sent)
        return self.poll()

    def hold_venue(self, venue: str, reason: str) -> None:
        """Deny the venue's orders (VENUE_RULES, ``reason``) until ``set_rules``."""
        self.held[self.venues.index(venue)] = reason

    def set_rules(self, venue: str, rules: dict) -> None:
        """The venue's order rules by symbol id (venue_rules.SymbolRules); its orders go
        through them from now on. A route's hedge leg among them: a remainder under its lot
        step (or minimum quantity) is dust, not a hedge obligation, as no order could close it.
        Safe from another thread: plain rebinds and one float per hedge leg."""
        if self.hedges is not None:
            for r in self.hedges.routes.values():
                rule = rules.get(r.hedge_leg)
                if rule is not None:
                    self.hedges.min_qty[r.hedge_leg] = max(float(rule.lot_step or 0), float(rule.min_qty), 1e-12)
        self.rules = {**self.rules, **rules}
        self.held.pop(self.venues.index(venue), None)

    def _score_routes(self) -> None:
        """Each route's health (route_health.py) from its legs' feeds, books, acks and recent
        fills: under its minimum the route is REDUCING (``ROUTE_HEALTH``) until it recovers."""
        rh, m, now = self.route_health, self.market, self.clock.time_ns()
        for cid, (route, ref) in list(self._route_legs.items()):
            order = self.orders.orders.get(cid)
            if order is None or order.state in TERMINAL:
                self._route_legs.pop(cid)
                if order is not None:
                    filled = order.filled_qty
                    avg = order.avg_price if filled else math.nan
                    rh.on_leg(route, order.qty, filled, order.side * (avg - ref) / ref * 1e4 if ref else math.nan,
                              now)
        for idx, r in self.hedges.routes.items():
            venues = {int(self.venue_of[s]) for s in r.legs}
            feeds_ok = all(m.venue_connected[v] and now - m.venue_last_ns[v] <= self.max_feed_silence_ns
                           for v in venues)
            age = max((now - m.quote_ns[s]) / 1e9 if m.quote_ns[s] else math.inf for s in r.legs)
            ack = max(self._recent_ack_ms(self.venues[v]) for v in venues)
            h = rh.score(idx, feeds_ok, age, ack, now)
            self.health[idx] = h
            self.guard.flag("route", idx, Denial.ROUTE_HEALTH, h.score < rh.limits.min_score, rh.describe(h))

    def _recent_ack_ms(self, venue: str) -> float:
        """The venue's median submit-to-ack over its last 20 orders (0 before any)."""
        recent = self._samples[(venue, STAGES[SUBMIT_TO_ACK])][-20:]
        if recent:
            return float(np.median(recent)) / 1e6
        p50 = self.latency[(venue, STAGES[SUBMIT_TO_ACK])].percentile(50)
        return float(p50) / 1e6 if p50 is not None else 0.0

    def _venue_rules(self, intents: np.ndarray, codes: np.ndarray) -> tuple[dict, dict]:
        """The venue's refusals of the intents the guard passed, before any is sent: a venue held
        until its rules load, and an intent its tick, lot and notional rules cannot round into an
        order (``VENUE_RULES``, set in ``codes``). Returns (why per refused index, (qty, limit)
        per rounded index)."""
        whys, rounded = {}, {}
        if not (self.held or self.rules):
            return whys, rounded
        held, rules, venue_of = self.held, self.rules, self.venue_of.tolist()
        n = len(self.symbols)
        cols = zip(intents["symbol_id"].tolist(), codes.tolist(), intents["side"].tolist(), intents["qty"].tolist(),
                   intents["limit_price"].tolist(), intents["ref_price"].tolist(), intents["order_type"].tolist())
        for i, (sid, code, side, qty, limit, ref, otype) in enumerate(cols):
            if code or sid >= n:
                continue
            if venue_of[sid] in held:
                codes[i], whys[i] = self._deny_after(Denial.VENUE_RULES), held[venue_of[sid]]
            elif sid in rules:
                r = round_order(rules[sid], side, qty, limit, ref, otype)
                if isinstance(r, RuleDenial):
                    codes[i], whys[i] = self._deny_after(Denial.VENUE_RULES), f"{r.code}: {r.reason}"
                else:
                    rounded[i] = float(r.qty), (math.nan if r.price is None else float(r.price))
        return whys, rounded

    def _whole_pairs(self, intents: np.ndarray, codes: np.ndarray) -> dict[int, int]:
        """A route pair goes whole or not at all: a leg passed so far whose partner was refused is
        refused too (``PAIR_LEG``), or it would fill alone and open a hedge obligation the
        strategy never meant. A pair is two intents of one strategy on one route whose seqs
        differ only in the lowest bit (workers/strategy/routes.py); re-hedges stand alone.
        Returns the pairs still passed, first leg -> second: `on_intents` checks them for orders
        in flight together and sends both or neither."""
        sid = intents["symbol_id"].astype(np.int64)
        n = len(self.symbols)
        on = (sid < n) & (intents["strategy_id"] != HEDGE_STRATEGY)
        on[on] = self.guard.route_of[sid[on]] >= 0
        if on.sum() < 2:
            return {}
        groups: dict[tuple[int, int], list[int]] = {}
        for i in np.flatnonzero(on).tolist():
            groups.setdefault((int(intents["strategy_id"][i]), int(intents["seq"][i]) >> 1), []).append(i)
        pairs = {}
        for rows in groups.values():
            if len(rows) > 1 and any(codes[i] for i in rows):
                for i in rows:
                    if not codes[i]:
                        codes[i] = self._deny_after(Denial.PAIR_LEG)
            elif len(rows) == 2:
                pairs[rows[0]] = rows[1]
        return pairs

    def _deny_after(self, code: Denial) -> int:
        """A refusal after the guard passed the intent: counted with the guard's."""
        self.guard.count(code)
        return int(code)

    def _verdict(self, intent, key: str, code: int, why: str, now: int) -> None:
        reason = why or self.guard.describe(intent, code)
        payload = {"intent_seq": int(intent["seq"]), "code": Denial(code).name, "reason": reason}
        self._batch.add("verdict", now, key, None, None, payload)
        self._tap({"kind": "denial", "symbol": key, "code": Denial(code).name, "reason": reason,
                   "intent_seq": int(intent["seq"]), "ts_ns": now})

    # -- what the venue says ------------------------------------------------------------------
    def poll(self) -> StepOut:
        """The broker's reports due by now: orders moved, fills journaled with their position
        (committed) and returned for publishing."""
        out = StepOut()
        fills = []
        orders, by_venue = self.orders, self._by_venue
        if self._expiries and self._expiries[0][0] <= self.clock.time_ns():
            self._expire_due(self.clock.time_ns())
        for ev in self.broker.poll():
            cid = ev.client_order_id
            order = orders.get(cid)
            kind = ev.kind
            if kind == "ack":
                if orders.on_ack(cid, cid):
                    by_venue[order.venue][SUBMIT_TO_ACK].append(ev.ts_ns - order.timestamps["SUBMITTED"])
            elif kind == "fill":
                first = order.fills_qty == 0
                if orders.on_fill(cid, ev.fill_id, ev.qty, ev.price, ev.fee, ev.liquidity):
                    fills.append((order, ev))
                    out.symbols.add(order.symbol_id)
                    samples = by_venue[order.venue]
                    if first:
                        since = order.timestamps.get("ACCEPTED", order.timestamps["SUBMITTED"])
                        samples[ACK_TO_FILL].append(ev.ts_ns - since)
                    samples[TICK_TO_FILL].append(ev.ts_ns - order.ts_origin_ns)
            elif kind == "expired":
                orders.on_expire(cid, ev.reason)
            elif kind == "cancelled":
                orders.on_cancel(cid, ev.reason)
            elif kind == "reject":
                if order.state in BLOCKING:
                    orders.on_reject(cid, ev.reason)
                elif self.log:                  # a cancel refused: the order stays as it is
                    self.log.info("order %s: venue refused a request: %s", cid, ev.reason)
        if fills:
            out.fills += self._journal_fills(self._apply_fills(fills))
        self._commit()
        if self._orders_moved:
            self._mark_working(out)
        return out

    def _mark_working(self, out: StepOut) -> None:
        """The positions' working quantities (open orders not yet filled, signed), where they
        changed: published with the positions, so a strategy counts what still rests."""
        self._orders_moved = False
        w, rows = self._working(), self.portfolio.rows
        changed = np.flatnonzero(w != rows["working"])
        if len(changed):
            rows["working"][changed] = w[changed]
            out.symbols.update(changed.tolist())

    def _apply_fills(self, fills: list) -> list:
        """Fold a poll's applied fills, (order, fill event) each, into the portfolio in
        order; returns their FILL fields (and id, venue, client order id) for `_journal_fills`."""
        ids = self.order_ids
        oids = [ids.get(order.client_id, 0) for order, _ in fills]
        positions = self.portfolio.apply_many([(order.symbol_id, order.side, ev.qty, ev.price, ev.fee, oid, ev.ts_ns)
                                               for (order, ev), oid in zip(fills, oids)])
        self.counters["fills"] += len(fills)
        return [((order.ts_origin_ns, ev.ts_ns, oid, order.symbol_id, order.side, ev.liquidity, 0, ev.price,
                  ev.qty, ev.fee, position), ev.fill_id, order.venue, order.client_id)
                for (order, ev), oid, position in zip(fills, oids, positions)]

    def _journal_fills(self, fills: list) -> list:
        """A poll's fills (from `_apply_fills`) as FILL records; journaled, each, with the
        position it made (the last of each symbol: what the fills add up to)."""
        recs = np.array([f[0] for f in fills], dtype=_FILL_PLAIN).astype(FILL)
        syms = self.symbols
        keys = [syms[s] for s in recs["symbol_id"].tolist()]
        cols = _columns(recs)
        cols["fill_id"] = [f[1] for f in fills]
        self._batch.section("fill", cols, recs["ts_ns"].tolist(), keys, [f[2] for f in fills],
                            [f[3] for f in fills])
        last = {}
        for i, s in enumerate(recs["symbol_id"].tolist()):
            last[s] = i
        sids = list(last)
        rows = self.portfolio.rows[sids]
        cols = _columns(rows)
        del cols["working"]                     # the orders' business, journaled with them
        self._batch.section("position", cols, rows["ts_ns"].tolist(), [syms[s] for s in sids])
        return list(recs)

    # -- commands and state ----------------------------------------------------------------------
    def command(self, cmd: dict) -> str:
        """`pipeline halt` / `resume`: applied, journaled with the state it makes, committed.
        Returns '' or why the command cannot apply (nothing changes then)."""
        try:
            tier, key = _tier_key(cmd, self.index)
            action = cmd.get("action")
            if action == "halt":
                self.guard.halt(tier, key, reducing=bool(cmd.get("reducing")),
                                reason=str(cmd.get("reason") or "halted by hand"))
            elif action == "resume":
                self.guard.resume(tier, key)
            else:
                raise ValueError(f"unknown action {action!r}")
        except (ValueError, KeyError) as e:
            return str(e)
        self._flush()
        self.journal.append("command", self.clock.time_ns(), {k: cmd[k] for k in cmd if k != "target"})
        self._journal_risk_events()
        self.snapshot()
        return ""

    def snapshot(self) -> None:
        """The risk tiers and the account's reference figures, journaled and committed:
        what ``recover`` starts from."""
        self._flush()
        self._append_snapshot()
        self.journal.commit()

    def _append_snapshot(self) -> None:
        """The snapshot row, after the rows flushed (it counts their verdicts)."""
        now = self.clock.time_ns()
        self._snapped = (self.equity_peak, self.day)
        self.journal.append("risk_state", now, {"snapshot": self.guard.state(),
                                                "equity_peak": self.equity_peak,
                                                "day_start_equity": self.day_start_equity, "day": self.day})
        self._next_snapshot = now + self.snapshot_every_ns

    def housekeeping(self) -> StepOut:
        """Between steps: reports due, the equity and its peak marked, and a snapshot now
        and then."""
        out = self.poll()
        now = self.clock.time_ns()
        self._rates(now)
        self._account(now)
        if self.hedges is not None:
            out.extend(self._hedge())
        if now >= self._next_snapshot:
            self.snapshot()
        self.journal.idle()
        return out

    def _hedge(self) -> StepOut:
        """Routes' hedge obligations from the working positions: each change journaled (and
        tapped), an overdue one moves its route to REDUCING with an alert, and an open one with
        no working order on its legs gets a re-hedge, through the guard like any intent."""
        h = self.hedges
        busy = {o.symbol_id for o in self.orders._live.values()}       # symbols with a working order
        events = h.update(self.portfolio.rows["qty"] + self._working(), busy)
        for ev in events:
            self._batch.add("risk_state", ev["ts_ns"], self.symbols[h.routes[ev["route"]].hedge_leg], None,
                            None, {"hedge": ev})
            self._tap(ev)
            if ev["event"] in ("escalated", "closed"):
                self.guard.flag("route", ev["route"], Denial.HEDGE_OPEN, ev["event"] == "escalated",
                                f"hedge obligation: {ev['reason']}")
            if self.log is not None:
                (self.log.error if ev["event"] == "escalated" else self.log.info)(
                    "route %s hedge obligation %s: %s", ev["name"], ev["event"], ev["reason"])
        if events:
            self._commit()
        self._score_routes()
        if not h.open:
            return StepOut()
        strategy = f"{HEDGE_STRATEGY}.{self.run_id}"
        known = self.orders.orders
        rows = h.intents(self.market.bid, self.market.ask, busy | self.orders.blocked_symbols(),
                         used=lambda seq: client_order_id(self.pipeline, strategy, seq) in known)
        return self.on_intents(rows) if len(rows) else StepOut()

    def risk_states(self) -> list[dict]:
        return self.guard.state()["causes"]

    def drain_feed(self) -> tuple[list[dict], int]:
        out, dropped = list(self.feed), self.feed_dropped
        self.feed.clear()
        self.feed_dropped = 0
        return out, dropped

    def latency_sparse(self) -> dict:
        """Per venue and stage, the histogram of every sample so far (LatencyHistogram.to_sparse)."""
        out: dict = {}
        self._fold_samples(at_least=1)
        for (venue, stage), h in self.latency.items():
            if h.total:
                out.setdefault(venue, {})[stage] = h.to_sparse()
        return out

    # -- recovery ---------------------------------------------------------------------------
    def recover(self) -> None:
        """Rebuild from the journal (see the module's docstring); commits what it resolves."""
        events, snapshot, commands, journaled, missing, hedge_events = [], None, [], {}, {}, []
        denied: dict[str, int] = {}          # verdicts and orders since the snapshot: counted
        passed = 0
        for row in self.journal.replay():
            kind, p = row["kind"], row["payload"]
            if kind == "fill":
                sid = self.index.get(row["symbol"])
                if sid is None:
                    missing[row["symbol"]] = missing.get(row["symbol"], 0.0) + p["side"] * p["qty"]
                    continue
                self.portfolio.apply(_record(FILL, p, symbol_id=sid)[0])
                self.market.last[sid] = p["price"]   # the mark until the feed trades (as `pipeline pnl`)
            elif kind == "position":
                journaled[row["symbol"]] = p
            elif kind == "order":
                if "cid" in p:
                    events.append(p)
                    passed += p["new"] == "CREATED" and p["old"] == "CREATED"
                if "order_id" in p:                  # both formats (the first had no events)
                    self.next_order_id = max(self.next_order_id, int(p["order_id"]) + 1)
            elif kind == "verdict":
                denied[p["code"]] = denied.get(p["code"], 0) + 1
            elif kind == "risk_state" and "snapshot" in p:
                snapshot, commands, denied, passed = p, [], {}, 0
            elif kind == "risk_state" and "hedge" in p:
                hedge_events.append(p["hedge"])
            elif kind == "command":
                commands.append(p)
        keep = []
        for d in events:
            if d["cid"] not in self.order_ids and "order_id" in d:
                self.order_ids[d["cid"]] = int(d["order_id"])
        runs = {d["cid"]: d.get("run_id") for d in events}
        for o in orders_from_events(events):
            if runs.get(o["client_id"]) == self.run_id or OrderState[o["state"]] not in TERMINAL:
                keep.append(o)
        self.orders.restore(keep)
        for o in self.orders.open_orders():
            if o.expire_ns and not o.cancel_ns:
                heapq.heappush(self._expiries, (o.expire_ns, o.client_id))
        if snapshot is not None:
            self.guard.restore(snapshot["snapshot"])
            self.equity_peak = float(snapshot["equity_peak"])
            self.day_start_equity = float(snapshot["day_start_equity"])
            self.day = int(snapshot["day"])
        if self.hedges is not None:             # open obligations resume, their clocks running
            self.hedges.restore_events(hedge_events)
            for idx in self.hedges.routes:
                ob = self.hedges.open.get(idx)
                self.guard.flag("route", idx, Denial.HEDGE_OPEN, ob is not None and ob.escalated,
                                "hedge obligation open past its time limit (before the restart)")
        self.guard.add_counts(denied, passed)
        for cmd in commands:                     # journaled while execution was not running
            why = self.command(cmd)
            if why and self.log:
                self.log.error("journaled command %s cannot apply: %s", cmd, why)
        for sym, qty in missing.items():
            if abs(qty) > 1e-12 and self.log:
                self.log.error("the journal holds a position of %g in %s, which this config does "
                               "not trade: it is kept in the journal, not traded here", qty, sym)
        self._check_positions(journaled)
        self._resolve_open_orders()
        held = np.flatnonzero(self.portfolio.rows["n_fills"] > 0)
        self.restored = {self.symbols[int(i)]: float(self.portfolio.rows["qty"][i]) for i in held}
        self._journal_risk_events()
        self.snapshot()

    def _check_positions(self, journaled: dict[str, dict]) -> None:
        """The positions journaled after each fill must be what the fills add up to: if not,
        something lost or invented a fill, and nothing new trades until a person looks."""
        bad = []
        for key, p in journaled.items():
            sid = self.index.get(key)
            if sid is None:
                continue
            row = self.portfolio.rows[sid]
            for name in ("qty", "realized_pnl", "fees"):
                want, got = float(p[name]), float(row[name])
                if abs(want - got) > POSITION_TOLERANCE * max(1.0, abs(want), abs(got)):
                    bad.append(f"{key} {name}: journaled {want:.10g}, from fills {got:.10g}")
        if bad:
            why = "pnl check failed: " + "; ".join(bad[:5])
            if self.log:
                self.log.error("ALERT %s: the global tier is HALTED until `pipeline resume`", why)
            self.guard.halt("global", None, reason=why)

    def close(self) -> None:
        """A clean stop: the paper venue stops with the process, so its open orders end
        now (expired, journaled) rather than at the next start; then a snapshot."""
        self.poll()
        self._resolve_open_orders("the pipeline stopped: the paper venue stopped with it")
        self.snapshot()

    def _resolve_open_orders(self, reason: str = PAPER_LOST) -> None:
        """Orders a stop or crash left open: the paper venue is gone with the process, so
        each is settled as the venue would now answer: nothing more filled."""
        for order in list(self.orders.open_orders()):
            cid, was = order.client_id, order.state.name
            if order.state is OrderState.CREATED:
                self.orders.on_reject(cid, "never sent: " + reason)
            elif order.state in BLOCKING:
                self.orders.resolve_unknown(cid, VenueStatus(OrderState.EXPIRED, order.fills_qty, reason=reason))
            else:
                self.orders.on_expire(cid, reason)
            self.counters["resolved_at_start"] += reason == PAPER_LOST
            if self.log:
                self.log.warning("order %s was left %s: resolved (%s)", cid, was, reason)
        self._journal_order_events()

    # -- inside ---------------------------------------------------------------------------------
    def _working(self) -> np.ndarray:
        """Signed quantity still open per symbol: what may yet fill counts toward the limits."""
        w = np.zeros(len(self.symbols))
        for o in self.orders._live.values():
            w[o.symbol_id] += o.side * o.remaining_qty
        return w

    def _resting_per_venue(self) -> np.ndarray:
        n = np.zeros(len(self.venues), np.int64)
        for o in self.orders._live.values():
            if o.order_type == ORDER_LIMIT and o.tif in (TIF_GTC, TIF_POST_ONLY):
                n[self.venues.index(o.venue)] += 1
        return n

    def _rates(self, now: int) -> None:
        """The FX rates at ``now``; a currency whose rate goes stale or comes back is said once."""
        if self.fx.update(now):
            for quote in self.fx.members:
                why = self.fx.problems.get(quote)
                if self.log is not None:
                    (self.log.warning if why else self.log.info)(
                        "FX %s: %s", quote, why or f"rate into {self.fx.currency} fresh again")
                self._tap({"kind": "fx", "quote": quote, "fresh": why is None, "reason": why or "",
                           "ts_ns": now})

    def _account(self, now: int) -> None:
        """Equity in the account currency, marked to the last price: capital + (realised - fees
        + unrealised) x each symbol's FX rate; its peak, and its value at the start of the UTC
        day. Money of a symbol with no rate yet makes the equity NaN (the guard then lets
        nothing open): a figure that leaves it out would be wrong without saying so."""
        m = self.market
        mid = (m.bid + m.ask) / 2
        mark = np.where(np.isfinite(m.last), m.last,
                        np.where(np.isfinite(mid), mid, self.portfolio.rows["avg_price"]))
        equity = self._equity_at(mark)
        if now // DAY_NS != self.day and math.isfinite(equity):    # (no rate yet: the next call rolls it)
            self.day, self.day_start_equity = now // DAY_NS, equity
        self.equity_peak = max(self.equity_peak, equity)
        m.equity, m.equity_peak, m.day_start_equity = equity, self.equity_peak, self.day_start_equity

    def _equity_at(self, mark: np.ndarray):
        """The equity with each symbol marked at ``mark``: one price per symbol (a float), or
        a row of them per time (one equity per row)."""
        rows = self.portfolio.rows
        unreal = np.where(rows["qty"] != 0, rows["qty"] * (mark - rows["avg_price"]), 0.0)
        return self.capital + in_account(rows["realized_pnl"] - rows["fees"] + unreal, self.fx.factor)

    def mark_quiet(self, times: np.ndarray, last: np.ndarray) -> None:
        """The equity marks housekeeping makes at ``times`` (in order), each symbol's last
        trade then in ``last`` (a row per time), while nothing else moves: no order, fill,
        quote or rate that the marks read (a backtest shows the desk such a stretch at once;
        every held symbol has traded). Its peak and the day's start end as those calls
        would have left them."""
        if not len(times):
            return
        equity = self._equity_at(last)
        days = np.asarray(times, np.int64) // DAY_NS
        finite = np.flatnonzero(np.isfinite(equity))
        if len(finite) and days[finite[-1]] != self.day:    # as `_account`: a day rolls at its first finite equity
            day = days[finite[-1]]
            self.day, self.day_start_equity = int(day), float(equity[finite[days[finite] == day][0]])
        top = float(equity.max())
        if top == top:                          # else a NaN mark: each one, as the calls took them
            self.equity_peak = max(self.equity_peak, top)
        else:
            for e in equity.tolist():
                self.equity_peak = max(self.equity_peak, e)
        m = self.market
        m.equity, m.equity_peak, m.day_start_equity = float(equity[-1]), self.equity_peak, self.day_start_equity

    def equity(self) -> float:
        return float(self.market.equity)

    def _fold_samples(self, at_least: int = 4096) -> None:
        """Latency samples (appended by venue and stage as they happen, see ``_by_venue``)
        folded into their histograms, a negative one as 0, once ``at_least`` are waiting."""
        for key, samples in self._samples.items():
            if samples and len(samples) >= at_least:
                self.latency[key].add(np.maximum(np.array(samples, np.int64), 0))
                samples.clear()

    def _tap(self, event: dict) -> None:
        if len(self.feed) == self.feed.maxlen:
            self.feed_dropped += 1
        self.feed.append(event)

    def _journal_order_events(self) -> None:
        events, last = self.orders.drain_with_last()
        if events:
            self._orders_moved = True
            self._batch.order_events(events, last, self.order_ids, self.symbols)

    def _commit(self, sending: bool = False) -> None:
        """Everything the step produced, journaled and committed: its order events, fills,
        positions and risk state changes, in one batch row; after a tier moved, the states it
        made too (a snapshot row, in the same commit): recovery starts from snapshots, so a
        latch tripped here survives a kill -9 before the next housekeeping. ``sending``
        (orders go out after this commit): also when the equity peak rose by ACCOUNT_STEP or
        the day rolled since the last snapshot, so no order leaves with reference figures a
        restart would not find (a drawdown measured from an older, lower peak)."""
        self._journal_order_events()
        moved = self._journal_risk_events()
        self._flush()
        if moved or (sending and (self.day != self._snapped[1]
                                  or self.equity_peak > self._snapped[0] * (1 + ACCOUNT_STEP))):
            self._append_snapshot()
        if self.journal.pending:
            self.journal.commit()
        self._fold_samples()

    def _flush(self) -> None:
        """The rows gathered since the last flush, appended as one batch row."""
        self._journal_order_events()
        sections = self._batch.take(self.run_id)
        if sections:
            self.journal.append_batch(self.clock.time_ns(), sections)

    def _journal_risk_events(self) -> bool:
        """The guard's state changes into the batch (and the tap and log); whether there were any."""
        events = self.guard.drain_events()
        for ev in events:
            d = ev.as_dict()
            self._batch.add("risk_state", ev.ts_ns, None, None, None, d)
            self._tap({"kind": "state", **d})
            if self.log:
                (self.log.warning if ev.new != TradingState.ACTIVE.name else self.log.info)(
                    "risk: %s%s %s -> %s (%s: %s)", ev.tier, "" if ev.key is None else f" {ev.key}",
                    ev.old, ev.new, ev.code, ev.reason)
        return bool(events)


def in_account(money: np.ndarray, factor: np.ndarray) -> float | np.ndarray:
    """The sum of per-symbol ``money`` (each in its quote currency) in the account currency;
    a symbol with no money counts 0 even without a rate, one with money and no rate is NaN.
    ``money`` a row per time: a sum per row."""
    total = np.where(money == 0, 0.0, money * factor).sum(axis=-1)
    return float(total) if total.ndim == 0 else total       # (the attribute: np.ndim is a call more)


def _tier_key(cmd: dict, index: dict[str, int]) -> tuple[str, object]:
    """(tier, key) of a command; a symbol key by its id."""
    tier = str(cmd.get("tier", "global"))
    key = cmd.get("key")
    if tier == "symbol":
        if key not in index:
            raise ValueError(f"unknown symbol {key!r}")
        key = index[key]
    return tier, key


def _order_records(made: list, now: int) -> list:
    """ORDER records of the orders sent, (order, order id, ref price) each."""
    if not made:
        return []
    rows = [(o.ts_origin_ns, now, oid, o.intent_seq, o.symbol_id, o.side, o.order_type, 0,
             o.limit_price if o.order_type == ORDER_LIMIT else ref, o.qty) for o, oid, ref in made]
    return list(np.array(rows, dtype=_ORDER_PLAIN).astype(ORDER))


# the records' fields without padding: rows of Python tuples go in at once, then a cast
_ORDER_PLAIN = np.dtype([(n, ORDER.fields[n][0]) for n in ORDER.names])
_FILL_PLAIN = np.dtype([(n, FILL.fields[n][0]) for n in FILL.names])


def _columns(recs: np.ndarray) -> dict:
    """Records' fields as lists of plain values, for the journal (NaN, which JSON cannot
    hold: None)."""
    out = {}
    for name in recs.dtype.names:
        col = recs[name]
        values = col.tolist()
        # the sum of the plain floats is finite only if every one is: no numpy call per field
        if col.dtype.kind == "f" and not math.isfinite(sum(values)):
            values = [v if math.isfinite(v) else None for v in values]
        out[name] = values
    return out


_SYMBOL_ID, _VENUE = operator.attrgetter("symbol_id"), operator.attrgetter("venue")


class _Batch:
    """The journal rows of a step, gathered by kind, for one `Journal.append_batch`."""

    def __init__(self):
        self._rows: dict[str, list] = {}        # kind -> [ts, symbol, venue, coid, payload] lists
        self._sections: list[dict] = []
        self._orders: dict | None = None        # order events, as columns

    def add(self, kind: str, ts_ns: int, symbol, venue, coid, payload: dict) -> None:
        cols = self._rows.get(kind)
        if cols is None:
            cols = self._rows[kind] = [[], [], [], [], []]
        cols[0].append(ts_ns)
        cols[1].append(symbol)
        cols[2].append(venue)
        cols[3].append(coid)
        cols[4].append(payload)

    def intents(self, now: int, keys: list, intents: np.ndarray) -> None:
        if len(intents):
            self.section("intent", _columns(intents), now, keys)

    def section(self, kind: str, cols: dict, ts_ns, symbol, venue=None, coid=None) -> None:
        self._sections.append({"kind": kind, "n": len(next(iter(cols.values()))), "ts_ns": ts_ns,
                               "symbol": symbol, "venue": venue, "client_order_id": coid, "cols": cols})

    def order_events(self, events: list, last: list, ids: dict, symbols: list) -> None:
        """Order events (`OrderManager.drain_with_last`'s tuples) as columns; each order's
        snapshot (``detail["order"]``) only at its last event here, as a row of values under
        names written once."""
        o = self._orders
        if o is None:
            o = self._orders = {"ts": [], "sym": [], "venue": [], "cid": [], "old": [], "new": [], "oid": [],
                                "detail": [], "at": [], "rows": []}
        base = len(o["ts"])
        cids, olds, news, ts, details, orders = zip(*events)
        o["ts"] += ts
        o["sym"] += map(symbols.__getitem__, map(_SYMBOL_ID, orders))
        o["venue"] += map(_VENUE, orders)
        o["cid"] += cids
        o["old"] += map(NAME.__getitem__, olds)
        o["new"] += map(NAME.__getitem__, news)
        o["oid"] += map(ids.get, cids, repeat(0))
        o["detail"] += details
        for k, order in last:
            o["at"].append(base + k)
            o["rows"].append(order.snapshot())

    def take(self, run_id: str) -> list[dict]:
        out, self._sections = self._sections, []
        for kind, (ts, sym, venue, coid, payloads) in self._rows.items():
            out.append({"kind": kind, "n": len(ts), "ts_ns": ts, "symbol": sym, "venue": venue,
                        "client_order_id": coid, "payloads": payloads})
        self._rows = {}
        o, self._orders = self._orders, None
        if o is not None:
            out.append({"kind": "order", "n": len(o["ts"]), "ts_ns": o["ts"], "symbol": o["sym"],
                        "venue": o["venue"], "client_order_id": o["cid"],
                        "cols": {"old": o["old"], "new": o["new"], "order_id": o["oid"], "detail": o["detail"]},
                        "copy": {"cid": "client_order_id", "ts_ns": "ts_ns"}, "const": {"run_id": run_id},
                        "attach": {"into": "detail", "key": "order", "at": o["at"], "fields": list(SNAPSHOT_FIELDS),
                                   "rows": o["rows"]}})
        return out


def _record(dtype: np.dtype, fields: dict, **override) -> np.ndarray:
    """A one-row record of ``dtype`` from journaled fields."""
    out = np.zeros(1, dtype)
    for name in dtype.names:
        if fields.get(name) is not None:
            out[name] = fields[name]
    for name, value in override.items():
        out[name] = value
    return out
