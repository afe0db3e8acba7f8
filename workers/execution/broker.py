"""The paper broker: orders matched against the market data the feed sees, the way
a venue would match them, with latency and per-venue maker/taker fees, so that a
paper result is no better than the same orders could have done live.

Pure: market data and orders in, `BrokerEvent`s out, a clock passed in; no rings,
tables, zmq or worker loop. Events are keyed by client order id; the order manager
keeps the lifecycle.

The rules, each chosen so that paper is never better than live:

Time. ``submit`` at clock time t sends the order; it reaches the venue at its ack
time, t + submit_to_ack (+ jitter), and only then meets the book: the last book
given before the ack time (one stamped exactly at the ack time counts as before).
The ack is reported at the ack time; every match is reported ack_to_fill (+ jitter)
after it happened, and an order's reports never overtake each other. ``cancel``
travels like an order, submit_to_ack (+ jitter), and never arrives before the
order itself; a match before it arrives stands (the fill wins the race) and a
cancel that finds nothing open is rejected. Jitter only ever adds delay.

Taking liquidity (market orders; limit orders that cross when they arrive): levels
are walked best first, one fill per level at that level's price (VWAP over the
fills). What we took is remembered per price level: the next order sees the level
depleted, and so do later book updates until the level shows less than we took
(then that smaller amount) or is gone from the shown range. A paper book never
contains our own trades; forgetting them would let two orders take the same lot.
A market order never rests (GTC is taken as IOC): what the book cannot fill is
expired, as a venue expires a market order that runs out of liquidity. With only a
top of book (``on_quote``) the top size fills at the top price moved against the
order by slippage_bps (never past a limit price; for a quote of unknown size, plus
the ``impact_bps`` of the order's size when given: workers/execution/impact.py) and
the rest is expired: depth that cannot be seen is not invented. FOK fills only if the book can fill all of it
at once, else it expires untouched; post-only is rejected if it would take.

Resting orders fill as maker at their own price, from
  * a trade whose aggressor is on the other side, printing strictly through the
    price: that trade's quantity (less what our better-priced orders took);
  * a trade at exactly the price: only the volume beyond what stood ahead in the
    queue (the shown quantity at the price when the order arrived, lowered when a
    later book shows less; unknown, a price beyond the shown depth or behind a
    top-of-book feed, counts as an endless queue, so then only trades through fill);
  * a book whose other side crosses the price: the crossing quantity (levels
    exactly at the price only when nothing stands ahead); a top of book of unknown
    size (``on_quote`` with ``math.inf``) fills nothing this way: how much crossed
    is not known, so only the trades count.
A trade by an aggressor on the order's own side never fills it: such a print means
the other side crossed the price, and that volume is counted from the book.
"""
from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from pipeline.clock import Clock
from shm.records import (LIQUIDITY_MAKER, LIQUIDITY_TAKER, ORDER_LIMIT, ORDER_MARKET, SIDE_BUY,
                         SIDE_SELL, TIF_FOK, TIF_GTC, TIF_IOC, TIF_POST_ONLY)

ACK, REJECT, FILL, CANCELLED, EXPIRED = "ack", "reject", "fill", "cancelled", "expired"
MAKER, TAKER = LIQUIDITY_MAKER, LIQUIDITY_TAKER
_TIFS = (TIF_GTC, TIF_IOC, TIF_FOK, TIF_POST_ONLY)
_DUST = 1e-12   # relative: a remainder this small of a quantity is nothing (float residue)
_CLOSED_AS = {FILL: "filled", REJECT: "rejected"}     # else the kind's own name


class BrokerEvent(NamedTuple):
    """What the venue reports about one order; ``ts_ns`` is when we learn it. A named
    tuple: immutable, and made at a third of a frozen dataclass's cost (two per order)."""
    kind: str                   # ack / reject / fill / cancelled / expired
    client_order_id: str | int
    ts_ns: int
    qty: float = 0.0            # fill: filled; cancelled / expired: what was still open
    price: float = math.nan     # fill price
    fee: float = 0.0            # quote currency, negative for a rebate
    liquidity: int = 0          # fill: LIQUIDITY_MAKER / LIQUIDITY_TAKER (shm/records.py)
    fill_id: str = ""           # fill: "<client order id>:<n>", unique and deterministic
    reason: str = ""            # reject / cancelled / expired: why
    leaves_qty: float = 0.0     # still open after this event


@dataclass(frozen=True)
class LatencyModel:
    """Delays of the venue round trip. Jitter is uniform in [0, jitter_ns], drawn from
    a hash of (seed, order id, what), so a run replays exactly whatever the order of
    calls; it only adds delay, never removes it."""
    submit_to_ack_ns: int = 0
    ack_to_fill_ns: int = 0
    jitter_ns: int = 0
    seed: int = 0

    def __post_init__(self):
        for name in ("submit_to_ack_ns", "ack_to_fill_ns", "jitter_ns"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"LatencyModel.{name} must be an int >= 0, got {v!r}")

    def jitter(self, *key) -> int:
        if self.jitter_ns == 0:
            return 0
        digest = hashlib.blake2b(repr((self.seed,) + key).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % (self.jitter_ns + 1)

    def to_venue(self, client_order_id, what: str, n: int = 0) -> int:
        """Our request (an order, a cancel) on its way to the venue."""
        return self.submit_to_ack_ns + self.jitter(client_order_id, what, n)

    def report(self, client_order_id, n: int) -> int:
        """A match's report on its way back to us."""
        return self.ack_to_fill_ns + self.jitter(client_order_id, "fill", n)


@dataclass(eq=False)
class _Order:
    coid: str | int
    symbol_id: int
    venue: str
    side: int
    order_type: int
    tif: int
    qty: float
    limit: float                # +inf / -inf for a market buy / sell
    seq: int                    # time priority
    arrive_ns: int = 0          # when it reaches the venue
    remaining: float = 0.0
    state: str = "sent"         # sent / open / closed
    closed_as: str = ""
    ahead: float = math.inf     # queue standing before a resting order at its price
    n_fills: int = 0
    n_cancels: int = 0
    last_report_ns: int = 0


_ORDER_VALUES = operator.attrgetter(*(f.name for f in fields(_Order)))


@dataclass
class _Book:
    """The last book of one symbol, and what our orders took from each level. The levels
    are (price, qty) tuples, best first: plain floats, since a book is walked one level
    at a time and is short."""
    bids: list
    asks: list
    top_only: bool
    taken: dict = field(default_factory=lambda: {SIDE_BUY: _Taken(), SIDE_SELL: _Taken()})   # side of the levels

    def levels(self, side: int) -> list:
        return self.bids if side == SIDE_BUY else self.asks

    def available(self, side: int, price: float, qty: float) -> float:
        if qty == math.inf:                         # a top of book of unknown size
            return math.inf
        left = qty - self.taken[side].get(price, 0.0)
        return left if left > _DUST * qty else 0.0

    def shown(self, side: int, price: float) -> float:
        """The quantity at ``price`` on ``side`` (less what we took), or inf when the book
        does not show that far."""
        lv = self.levels(side)
        if not lv:
            return math.inf
        for level_price, level_qty in lv:
            if level_price == price:
                return self.available(side, price, level_qty)
        return 0.0 if _within(side, price, lv[-1][0]) else math.inf


def _within(side: int, price: float, last_shown: float) -> bool:
    """Whether ``price`` is at or better than the deepest shown level of that side."""
    return price >= last_shown if side == SIDE_BUY else price <= last_shown


def _crosses(side: int, limit: float, level_price: float) -> bool:
    """Whether an order of ``side`` at ``limit`` takes a level of the other side."""
    return level_price <= limit if side == SIDE_BUY else level_price >= limit


def _number(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


class PaperBroker:
    """A venue in miniature: feed it the market data (on_book / on_quote / on_trade) and
    the orders (submit / cancel) in time order, and read what happened from poll() or
    advance(now). The module docstring has the matching rules."""

    def __init__(self, clock: Clock, fees: dict[str, tuple[float, float]],
                 latency: LatencyModel, slippage_bps: float = 0.0,
                 impact_bps: Callable[[int, float], float] | None = None):
        for venue, pair in fees.items():
            if len(pair) != 2 or not all(math.isfinite(_number(b)) for b in pair):
                raise ValueError(f"fees[{venue!r}] must be (maker_bps, taker_bps), finite, got {pair!r}")
        if not (math.isfinite(_number(slippage_bps)) and slippage_bps >= 0):
            raise ValueError(f"slippage_bps must be finite and >= 0, got {slippage_bps!r}")
        self.clock = clock
        self.fees = {v: (float(m), float(t)) for v, (m, t) in fees.items()}
        self.latency = latency
        self.slippage_bps = float(slippage_bps)
        self.impact_bps = impact_bps     # (symbol, qty) -> more bps against a quote of unknown size
        self.ignored = {"books": 0, "trades": 0}    # market data refused as malformed
        self._books: dict[int, _Book] = {}
        self._orders: dict[str | int, _Order] = {}
        # closed orders, their fields as tuples: kept (a late cancel is answered, an id stays
        # used) but as nothing the garbage collector's full passes walk, for every order sent
        self._closed: dict[str | int, tuple] = {}
        self._resting: dict[int, list[_Order]] = {}
        self._actions: list = []    # (due_ns, seq, what, coid): requests on their way to the venue
        self._events: list = []     # (ts_ns, seq, BrokerEvent): reports on their way to us
        self._seq = 0
        self._now = 0               # venue time: how far the matching has run

    # -- market data ------------------------------------------------------------------------
    def on_book(self, symbol_id: int, bids: np.ndarray, asks: np.ndarray, ts_ns: int,
                top_only: bool = False) -> bool:
        """A book (price, qty rows, best first); the full shown depth unless ``top_only``.
        A malformed book (NaN, price <= 0, qty < 0, unsorted, crossed; locked, bid = ask,
        is taken: a trade standing in for a quote is one) is ignored and
        counted, keeping the last good one; returns whether it was taken."""
        ts = self._enter(ts_ns)
        clean = clean_book(bids, asks, top_only)
        if clean is None:
            self.ignored["books"] += 1
            return False
        bids, asks = clean
        old = self._books.get(symbol_id)
        book = _Book(list(map(tuple, bids.tolist())), list(map(tuple, asks.tolist())), top_only)
        if old is not None:
            for side in (SIDE_BUY, SIDE_SELL):
                book.taken[side] = _carry_taken(old.taken[side], book.levels(side), side)
        self._books[symbol_id] = book
        for order in self._resting.get(symbol_id, []):
            order.ahead = min(order.ahead, book.shown(order.side, order.limit))
        self._match_book(symbol_id, ts)
        return True

    def on_quote(self, symbol_id: int, bid: float, bid_qty: float, ask: float, ask_qty: float,
                 ts_ns: int) -> bool:
        """A top of book (book ticker): no depth is known behind it. A size of ``math.inf``
        is a quote whose size the feed does not carry (the pipeline's tick records): the
        top is taken to hold any order, at the top price moved by slippage_bps."""
        if type(bid) is float and type(ask) is float and type(bid_qty) is float and type(ask_qty) is float:
            b, bq, a, aq = bid, bid_qty, ask, ask_qty       # the pipeline's own (no conversion)
        else:
            b, bq, a, aq = _number(bid), _number(bid_qty), _number(ask), _number(ask_qty)
        if not (0 < b <= a < math.inf and 0 < bq <= math.inf and 0 < aq <= math.inf):
            return self.on_book(symbol_id, np.array([[bid, bid_qty]], float),   # what on_book refuses or
                                np.array([[ask, ask_qty]], float), ts_ns, top_only=True)   # empties
        # the common case, as on_book does it, without the checks just made
        ts = self._enter(ts_ns)
        book = self._books.get(symbol_id)
        if book is None:
            book = self._books[symbol_id] = _Book([(b, bq)], [(a, aq)], True)
        else:                       # the new top in place of the old book (no one else holds it)
            book.bids, book.asks, book.top_only = [(b, bq)], [(a, aq)], True
            taken = book.taken
            for side in (SIDE_BUY, SIDE_SELL):
                if taken[side]:
                    taken[side] = _carry_taken(taken[side], book.levels(side), side)
        resting = self._resting.get(symbol_id)
        if resting:
            for order in resting:
                order.ahead = min(order.ahead, book.shown(order.side, order.limit))
            self._match_book(symbol_id, ts)
        return True

    def on_trade(self, symbol_id: int, price: float, qty: float, side_of_aggressor: int,
                 ts_ns: int) -> bool:
        """A public trade; fills resting orders it prints through (or reaches in the
        queue). A malformed trade is ignored and counted; returns whether it was taken."""
        ts = self._enter(ts_ns)
        price, qty = _number(price), _number(qty)
        if not (math.isfinite(price) and price > 0 and math.isfinite(qty) and qty > 0
                and side_of_aggressor in (SIDE_BUY, SIDE_SELL)):
            self.ignored["trades"] += 1
            return False
        volume = qty
        for order in self._priority(symbol_id, -int(side_of_aggressor)):
            if volume <= _DUST * qty or not _crosses(order.side, order.limit, price):
                continue
            if price == order.limit:
                passed = min(order.ahead, volume)
                order.ahead -= passed
                volume -= passed
            else:
                order.ahead = 0.0
            take = min(order.remaining, volume)
            if take > _DUST * qty:
                volume -= take
                self._fill(order, order.limit, take, MAKER, ts)
        return True

    # -- orders -----------------------------------------------------------------------------
    def submit(self, client_order_id: str | int, symbol_id: int, venue: str, side: int,
               order_type: int, tif: int, qty: float, limit_price: float = math.nan) -> None:
        """Send an order. It reaches the venue submit_to_ack later; malformed input is
        rejected at once with the reason, and nothing else happens."""
        now = self.clock.time_ns()
        reason = self._invalid(client_order_id, symbol_id, venue, side, order_type, tif, qty,
                               limit_price)
        if reason:
            self._push(now, BrokerEvent(REJECT, client_order_id, now, reason=reason))
            return
        market = order_type == ORDER_MARKET
        limit = (math.inf if side == SIDE_BUY else -math.inf) if market else float(limit_price)
        order = _Order(client_order_id, int(symbol_id), venue, int(side), int(order_type),
                       TIF_IOC if market and tif == TIF_GTC else int(tif), float(qty), limit,
                       self._next(), remaining=float(qty), last_report_ns=now)
        self._orders[client_order_id] = order
        order.arrive_ns = now + self.latency.to_venue(client_order_id, "submit")
        heapq.heappush(self._actions, (order.arrive_ns, order.seq, "arrive", client_order_id))

    def cancel(self, client_order_id: str | int) -> None:
        """Ask to cancel; an unknown id is rejected at once. It takes effect when it
        reaches the venue, after anything that filled before."""
        now = self.clock.time_ns()
        order = self._order(client_order_id) if _hashable(client_order_id) else None
        if order is None:
            self._push(now, BrokerEvent(REJECT, client_order_id, now, reason="unknown client order id"))
            return
        order.n_cancels += 1
        due = max(now + self.latency.to_venue(client_order_id, "cancel", order.n_cancels),
                  order.arrive_ns)      # one connection: requests arrive in the order sent
        heapq.heappush(self._actions, (due, self._next(), "cancel", client_order_id))

    def poll(self) -> list[BrokerEvent]:
        """The reports whose time has come on the clock."""
        return self.advance(self.clock.time_ns())

    def advance(self, now_ns: int) -> list[BrokerEvent]:
        """Run the venue up to ``now_ns`` (requests that arrived by then meet the current
        book; give it the market data up to now first) and return the reports due by
        then, oldest first."""
        self._run(int(now_ns), inclusive=True)
        self._now = max(self._now, int(now_ns))
        out = []
        while self._events and self._events[0][0] <= now_ns:
            out.append(heapq.heappop(self._events)[2])
        return out

    # -- the venue ----------------------------------------------------------------------------
    def _enter(self, ts_ns: int) -> int:
        """Market data at ``ts_ns``: requests that arrived before it go first. Venue time
        never goes back; older data is taken as happening now."""
        ts = max(int(ts_ns), self._now)
        actions = self._actions
        if actions and actions[0][0] < ts:      # else `_run` has nothing to do
            self._run(ts, inclusive=False)
        self._now = ts
        return ts

    def next_due_ns(self) -> int | None:
        """When the next request arrives at the venue or the next report reaches us (None:
        nothing in flight): a live caller sleeps no longer than this."""
        due = [q[0][0] for q in (self._actions, self._events) if q]
        return min(due) if due else None

    def _run(self, until: int, inclusive: bool) -> None:
        while self._actions and (self._actions[0][0] < until
                                 or (inclusive and self._actions[0][0] == until)):
            due, _, what, coid = heapq.heappop(self._actions)
            if due > self._now:
                self._now = due
            order = self._order(coid)
            if what == "arrive":
                self._arrive(order, self._now)
            else:
                self._cancel(order, self._now)

    def _arrive(self, order: _Order, now: int) -> None:
        book = self._books.get(order.symbol_id)
        plan = self._plan(order, book)
        if order.tif == TIF_POST_ONLY and plan:
            self._close(order, REJECT, now, "post-only order would take liquidity", report=False)
            return
        self._report(order, BrokerEvent(ACK, order.coid, now, leaves_qty=order.remaining), now)
        if order.tif == TIF_FOK and sum(q for _, q, _ in plan) < order.remaining * (1 - _DUST):
            self._close(order, EXPIRED, now, "fill or kill: the book cannot fill it all")
            return
        for level_price, qty, price in plan:
            book.taken[-order.side][level_price] = book.taken[-order.side].get(level_price, 0.0) + qty
            self._fill(order, price, qty, TAKER, now)
        if order.state == "closed":
            return
        if order.order_type == ORDER_MARKET or order.tif in (TIF_IOC, TIF_FOK):
            why = ("no book" if book is None else
                   "beyond the top of book (no depth known)" if book.top_only else
                   "the book ran out" if order.order_type == ORDER_MARKET else
                   "immediate or cancel: the rest did not fill at once")
            self._close(order, EXPIRED, now, why)
            return
        order.state = "open"
        order.ahead = book.shown(order.side, order.limit) if book is not None else math.inf
        self._resting.setdefault(order.symbol_id, []).append(order)

    def _plan(self, order: _Order, book: _Book | None) -> list[tuple[float, float, float]]:
        """(level price, qty, fill price) the order would take from the book now."""
        if book is None:
            return []
        plan, left = [], order.remaining
        for level_price, level_qty in book.levels(-order.side):
            level_price = float(level_price)
            if left <= _DUST * order.qty or not _crosses(order.side, order.limit, level_price):
                break
            take = min(book.available(-order.side, level_price, float(level_qty)), left)
            if take <= 0:
                continue
            price = level_price
            if book.top_only:
                bps = self.slippage_bps
                if self.impact_bps is not None and level_qty == math.inf:
                    bps += self.impact_bps(order.symbol_id, take)
                price = level_price * (1 + order.side * bps / 1e4)
                price = min(price, order.limit) if order.side == SIDE_BUY else max(price, order.limit)
            plan.append((level_price, take, price))
            left -= take
        return plan

    def _match_book(self, symbol_id: int, ts: int) -> None:
        book = self._books[symbol_id]
        for side in (SIDE_BUY, SIDE_SELL):
            for order in self._priority(symbol_id, side):
                for level_price, level_qty in book.levels(-side):
                    level_price = float(level_price)
                    if order.state == "closed" or not _crosses(side, order.limit, level_price):
                        break
                    if level_qty == math.inf:   # a quote of unknown size: only trades fill a resting order
                        break
                    if level_price == order.limit and order.ahead > 0:
                        break
                    take = min(book.available(-side, level_price, float(level_qty)), order.remaining)
                    if take > 0:
                        taken = book.taken[-side]
                        taken[level_price] = taken.get(level_price, 0.0) + take
                        self._fill(order, order.limit, take, MAKER, ts)

    def _cancel(self, order: _Order, now: int) -> None:
        if order.state != "open":
            reason = f"order not open ({order.closed_as or 'not yet at the venue'})"
            self._report(order, BrokerEvent(REJECT, order.coid, now, reason=reason,
                                            leaves_qty=order.remaining), now)
            return
        self._close(order, CANCELLED, now, "cancelled by request", report=False)

    def _fill(self, order: _Order, price: float, qty: float, liquidity: int, ts: int) -> None:
        if qty >= order.remaining * (1 - _DUST):
            qty = order.remaining
        order.remaining -= qty
        order.n_fills += 1
        maker_bps, taker_bps = self.fees[order.venue]
        bps = maker_bps if liquidity == MAKER else taker_bps
        event = BrokerEvent(FILL, order.coid, ts, qty=qty, price=price, fee=price * qty * bps / 1e4,
                            liquidity=liquidity, fill_id=f"{order.coid}:{order.n_fills}",
                            leaves_qty=order.remaining)
        self._report(order, event, ts + self.latency.report(order.coid, order.n_fills))
        if order.remaining <= 0:
            self._close(order, FILL, ts, "", report=False)

    def _close(self, order: _Order, kind: str, now: int, reason: str, report: bool = True) -> None:
        """End the order; ``report`` sends the news back with a match's delay, else it
        is known at ``now`` (a cancel's or a reject's own arrival)."""
        if kind != FILL:
            at = now + self.latency.report(order.coid, order.n_fills + 1) if report else now
            self._report(order, BrokerEvent(kind, order.coid, at, qty=order.remaining,
                                            reason=reason), at)
        order.state, order.closed_as = "closed", _CLOSED_AS.get(kind, kind)
        rest = self._resting.get(order.symbol_id)
        if rest and order in rest:
            rest.remove(order)
        if self._orders.pop(order.coid, None) is not None:
            self._closed[order.coid] = _ORDER_VALUES(order)

    def _order(self, coid) -> _Order | None:
        """The order of a client id, a closed one made an object again (and kept so)."""
        order = self._orders.get(coid)
        if order is None:
            values = self._closed.pop(coid, None)
            if values is not None:
                order = self._orders[coid] = _Order(*values)
        return order

    def _report(self, order: _Order, event: BrokerEvent, at: int) -> None:
        """Queue a report; an order's reports keep their order."""
        if at < order.last_report_ns:           # (not max(): a call per report)
            at = order.last_report_ns
        order.last_report_ns = at
        if at != event.ts_ns:
            event = event._replace(ts_ns=at)
        self._push(at, event)

    def _push(self, at: int, event: BrokerEvent) -> None:
        heapq.heappush(self._events, (at, self._next(), event))

    def _priority(self, symbol_id: int, side: int) -> list[_Order]:
        """Our resting orders of ``side``: best price first, then oldest."""
        orders = [o for o in self._resting.get(symbol_id, []) if o.side == side]
        return sorted(orders, key=lambda o: (-side * o.limit, o.seq))

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _invalid(self, coid, symbol_id, venue, side, order_type, tif, qty, limit_price) -> str:
        """Why the order cannot be sent, or ''."""
        if (type(coid) is str and coid and type(symbol_id) is int and symbol_id >= 0 and type(venue) is str
                and venue in self.fees and side in (SIDE_BUY, SIDE_SELL) and tif in _TIFS
                and type(qty) is float and 0 < qty < math.inf and coid not in self._orders
                and coid not in self._closed):
            # the common case in plain types, as the checks below take it: '' without them
            if order_type == ORDER_MARKET:
                if tif != TIF_POST_ONLY and (limit_price is None or (type(limit_price) is float
                                                                      and limit_price != limit_price)):
                    return ""
            elif order_type == ORDER_LIMIT and type(limit_price) is float and 0 < limit_price < math.inf:
                return ""
        if not _hashable(coid) or coid == "" or isinstance(coid, float):
            return "client order id must be a non-empty str or an int"
        if coid in self._orders or coid in self._closed:
            return "duplicate client order id"
        if not isinstance(symbol_id, (int, np.integer)) or isinstance(symbol_id, bool) or symbol_id < 0:
            return f"bad symbol id {symbol_id!r}"
        if not isinstance(venue, str) or venue not in self.fees:
            return f"no fees configured for venue {venue!r}"
        if side not in (SIDE_BUY, SIDE_SELL):
            return f"side must be {SIDE_BUY} (buy) or {SIDE_SELL} (sell), got {side!r}"
        if order_type not in (ORDER_MARKET, ORDER_LIMIT):
            return f"order type must be market ({ORDER_MARKET}) or limit ({ORDER_LIMIT}), got {order_type!r}"
        if tif not in (TIF_GTC, TIF_IOC, TIF_FOK, TIF_POST_ONLY):
            return f"unknown time in force {tif!r}"
        q = _number(qty)
        if not (math.isfinite(q) and q > 0):
            return f"quantity must be finite and > 0, got {qty!r}"
        p = _number(limit_price) if limit_price is not None else math.nan
        if order_type == ORDER_MARKET:
            if not math.isnan(p):
                return "a market order takes no limit price (NaN)"
            if tif == TIF_POST_ONLY:
                return "post-only needs a limit order"
        elif not (math.isfinite(p) and p > 0):
            return f"limit price must be finite and > 0, got {limit_price!r}"
        return ""


def _hashable(x) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def clean_book(bids, asks, top_only: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """A book's two sides as `PaperBroker.on_book` takes them (empty levels dropped), or
    None where it refuses the book: a price or size not a positive number, a side out of
    order, or bids above asks."""
    bids, asks = _clean(bids, SIDE_BUY, top_only), _clean(asks, SIDE_SELL, top_only)
    if bids is None or asks is None or (len(bids) and len(asks) and bids[0, 0] > asks[0, 0]):
        return None
    return bids, asks


def _clean(levels, side: int, top_only: bool = False) -> np.ndarray | None:
    """The levels as an (n, 2) float array without empty rows, or None if malformed
    (a size of +inf is allowed in a top of book: size unknown)."""
    try:
        lv = np.asarray(levels, dtype=float).reshape(-1, 2)
    except (TypeError, ValueError):
        return None
    sizes_ok = (np.isfinite(lv[:, 1]) | (top_only & (lv[:, 1] == np.inf))).all()
    if not np.isfinite(lv[:, 0]).all() or not sizes_ok or (lv[:, 0] <= 0).any() or (lv[:, 1] < 0).any():
        return None
    lv = lv[lv[:, 1] > 0]
    step = np.diff(lv[:, 0])
    if len(step) and not ((step < 0).all() if side == SIDE_BUY else (step > 0).all()):
        return None
    return lv


class _Taken(dict):
    """What we took per price level of one side (price -> qty), its prices also kept in
    order: `_carry_taken` then visits only the levels inside a new book's shown range, not
    every level ever taken beyond it (which a long run in one direction piles up). A level
    is set with ``taken[price] = qty`` only (other dict methods would skip ``prices``), and
    dropped only by `_carry_taken`."""

    def __init__(self, items=()):
        super().__init__(items)
        self.prices = sorted(self)

    def __setitem__(self, price: float, qty: float) -> None:
        if price not in self:
            bisect.insort(self.prices, price)
        super().__setitem__(price, qty)


def _carry_taken(taken: _Taken, levels: list, side: int) -> _Taken:
    """What we took, seen through a new book: a level now showing less keeps only that
    much taken; a level gone from the shown range is forgotten; beyond it, kept. Updates
    and returns ``taken`` itself: the caller replaces the old book's with it."""
    if not levels or not taken:
        return taken
    last, prices = levels[-1][0], taken.prices
    # the levels inside the shown range (`_within` it, at or better than its deepest level):
    # one run of the ordered prices, the highest for bids, the lowest for asks
    a, b = (bisect.bisect_left(prices, last), len(prices)) if side == SIDE_BUY else \
        (0, bisect.bisect_right(prices, last))
    if a == b:
        return taken
    shown = dict(levels)
    kept = []
    for p in prices[a:b]:
        if p in shown:
            dict.__setitem__(taken, p, min(taken[p], shown[p]))
            kept.append(p)
        else:
            del taken[p]
    prices[a:b] = kept
    return taken
