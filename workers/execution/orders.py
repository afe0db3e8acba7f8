"""Order lifecycle: one record per intent, moved only along allowed transitions,
every change an event for the journal. Pure: intent rows and venue answers in,
orders and events out; the clock is passed in.

Money rules this module enforces, because an order sent twice or a fill applied
twice is the worst defect:

* The client order id is derived from (pipeline, strategy, intent seq), so a
  restarted execution derives the same id; ``create`` refuses a second order for it
  and ``submitted`` (called *before* the request leaves: write-ahead) moves CREATED
  to SUBMITTED exactly once, so a second send raises.
* A submit with no answer is UNKNOWN, not REJECTED, until the venue is asked
  (``resolve_unknown``). While a symbol has an order SUBMITTED or UNKNOWN (after a
  crash too: ``restore`` keeps them so) no other order for it may be submitted.
* A fill is identified by the venue's trade id: the same id twice is counted and
  ignored, never applied twice.

Venue messages that arrive out of order are handled, never raised: they are not
bugs. The decisions, deterministic and tested:

* An ack after a fill, cancel or expiry keeps the later state (it only fills in the
  venue order id). A message contradicting a terminal state (an ack or a cancel for
  an order recorded REJECTED, a reject after an ack) is counted as a conflict and
  journaled, the state kept.
* A new fill on a terminal order (FILLED from a venue status, CANCELLED or EXPIRED
  after a partial fill, a late trade after a cancel race) is *applied*, state kept:
  the venue's trade happened and the position must know it. Only a fill that would
  take the applied fills past the order's quantity is refused (counted as an
  overfill): past that line a "new" fill is far likelier a duplicate under another
  id than a trade the venue never allowed.
* A venue status (``resolve_unknown``) sets the known filled quantity but applies no
  fill: position changes come only from fills with ids. ``Order.unattributed_qty``
  says how much the caller must still fetch as trades.

Calls that only our own code makes (``submitted``, ``no_answer``, ``resolve_unknown``
on an answered order, a fill for an order never submitted) raise
``IllegalTransition`` when out of place: that is a bug, not a venue message.
"""
from __future__ import annotations

import base64
import hashlib
import math
import operator
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from enum import IntEnum
from typing import Iterable, NamedTuple

import numpy as np

from pipeline.clock import Clock


class OrderState(IntEnum):
    CREATED = 1
    SUBMITTED = 2           # write-ahead: about to leave, or left with no answer yet
    ACCEPTED = 3
    PARTIALLY_FILLED = 4
    FILLED = 5
    CANCELLED = 6
    REJECTED = 7
    EXPIRED = 8
    UNKNOWN = 9             # submitted, the answer lost (timeout, crash): ask the venue


S = OrderState
NAME = {state: state.name for state in OrderState}     # Enum.name is a slow property
TERMINAL = frozenset({S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED})
BLOCKING = frozenset({S.SUBMITTED, S.UNKNOWN})

TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    S.CREATED: frozenset({S.SUBMITTED, S.REJECTED}),     # REJECTED: refused before it left
    # a fill or an expiry (IOC) may come before the ack: answers travel different streams
    S.SUBMITTED: frozenset({S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.REJECTED,
                            S.EXPIRED, S.UNKNOWN}),
    S.UNKNOWN: frozenset({S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.REJECTED,
                          S.EXPIRED}),
    S.ACCEPTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}

# a quantity within this fraction of the order's is all of it (float sums of fills)
QTY_REL_TOL = 1e-9


class IllegalTransition(RuntimeError):
    """Our own code moved an order where it cannot go: a bug, never a venue message."""


class UnknownOrder(KeyError):
    """A client order id this manager never created (a manual trade, another process)."""


class SymbolBlocked(RuntimeError):
    """A submit for a symbol that has an unanswered order: resolve that one first."""


# -- client order ids ---------------------------------------------------------------------------
CLIENT_ID_RE = re.compile(r"^[a-z0-9-]{1,36}$")   # within Binance ^[\.A-Z\:/a-z0-9_-]{1,36}$
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


_B36_PAIRS = [a + b for a in _B36 for b in _B36]     # two digits at a time: half the steps


def _base36(n: int) -> str:
    if n < 0:
        raise ValueError(f"intent sequence {n} is negative")
    if n < 36:
        return _B36[n]
    out = ""
    while n >= 36:
        n, r = divmod(n, 1296)
        out = _B36_PAIRS[r] + out
    if n:
        return _B36[n] + out
    return out.removeprefix("0")    # an even count of digits: the pair's leading zero is not one


@lru_cache(maxsize=4096)
def _hash(text: str, chars: int) -> str:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=10).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:chars]


def client_order_id(pipeline: str, strategy: str | int, intent_seq: int) -> str:
    """'tp' + 8 base32 chars of the pipeline name's hash + '-' + strategy + '-' + the
    intent seq in base 36: at most 33 lowercase [a-z0-9-] chars, valid for Binance
    newClientOrderId, Upbit identifier and Bithumb client_order_id. A strategy of up to
    8 digits (an int id) is written as is; any other name as 'x' + 7 hash chars, which
    no digit string can equal. A pipeline name's 40-bit hash keeps two pipelines on
    one account apart; base 36 is one-to-one, so seqs never collide."""
    if type(strategy) is str:
        s = strategy
    elif isinstance(strategy, bool) or not isinstance(strategy, (int, str, np.integer)):
        raise TypeError(f"strategy must be an int id or a name, not {strategy!r}")
    else:
        s = str(int(strategy)) if isinstance(strategy, (int, np.integer)) else strategy
    return _client_id_prefix(pipeline, s) + _base36(int(intent_seq))


@lru_cache(maxsize=1024)
def _client_id_prefix(pipeline: str, strategy: str) -> str:
    """'tp' + the pipeline's hash + '-' + the strategy as written + '-': the same for
    every order of a run, so made once."""
    if not (strategy.isascii() and strategy.isdigit() and len(strategy) <= 8):
        strategy = "x" + _hash(strategy, 7)
    return f"tp{_hash(pipeline, 8)}-{strategy}-"


# -- orders and events ------------------------------------------------------------------------
@dataclass
class Order:
    """One order, as this process knows it. ``filled_qty`` is the most the venue is
    known to have filled (fills applied, or a venue status); ``fills_qty`` what the
    applied fills add up to; average price and fees come from the fills (or the
    venue's status when there are none yet)."""
    client_id: str
    symbol_id: int
    venue: str
    side: int
    order_type: int
    tif: int
    qty: float
    limit_price: float              # NaN for a market order
    strategy_id: int = 0
    intent_seq: int = 0
    intent_reason: int = 0          # REASON_* of the intent
    ts_origin_ns: int = 0
    expire_ns: int = 0              # a resting order's end, when the desk cancels it (0: none)
    cancel_ns: int = 0              # when we asked the venue to cancel it (0: never)
    state: OrderState = S.CREATED
    filled_qty: float = 0.0
    fills_qty: float = 0.0
    fill_notional: float = 0.0
    avg_price: float = math.nan
    fees: float = 0.0
    venue_order_id: str | None = None
    reason: str = ""                # why rejected, cancelled or expired
    timestamps: dict[str, int] = field(default_factory=dict)   # state name -> first ts_ns
    fill_ids: list[str] = field(default_factory=list)
    duplicate: bool = field(default=False, compare=False)     # a create for it was refused

    @property
    def remaining_qty(self) -> float:
        return max(self.qty - self.filled_qty, 0.0)

    @property
    def unattributed_qty(self) -> float:
        """Filled by the venue's word but not yet by fills with ids: trades to fetch."""
        return max(self.filled_qty - self.fills_qty, 0.0)

    def to_dict(self) -> dict:
        """Plain JSON-able values (the journal's form); ``from_dict`` reads it back."""
        d = self.__dict__.copy()                        # asdict deep-copies: slow
        del d["duplicate"]
        d["state"] = NAME[self.state]
        d["fill_ids"] = list(self.fill_ids)
        d["timestamps"] = dict(self.timestamps)
        if d["limit_price"] != d["limit_price"]:        # NaN is not JSON: None
            d["limit_price"] = None
        if d["avg_price"] != d["avg_price"]:
            d["avg_price"] = None
        return d

    def snapshot(self) -> list:
        """``to_dict``'s values, in the order of ``SNAPSHOT_FIELDS`` (the batch layout
        writes the names once per batch)."""
        row = list(_SNAPSHOT_VALUES(self))
        row[_STATE_AT] = NAME[self.state]
        row[_FILL_IDS_AT] = list(self.fill_ids)
        row[_TIMESTAMPS_AT] = dict(self.timestamps)
        if self.limit_price != self.limit_price:
            row[_LIMIT_AT] = None
        if self.avg_price != self.avg_price:
            row[_AVG_AT] = None
        return row

    @classmethod
    def from_dict(cls, d: dict) -> "Order":
        d = dict(d)
        d.pop("duplicate", None)
        st = d["state"]
        d["state"] = S[st] if isinstance(st, str) else S(int(st))
        d["fill_ids"] = [str(x) for x in d.get("fill_ids", [])]
        d["timestamps"] = {str(k): int(v) for k, v in d.get("timestamps", {}).items()}
        for k in ("limit_price", "avg_price"):
            d[k] = math.nan if d.get(k) is None else float(d[k])
        return cls(**d)


SNAPSHOT_FIELDS = tuple(f.name for f in fields(Order) if f.name != "duplicate")
# by attribute, not through __dict__: reading that makes every order keep one more object
# for the garbage collector's full passes to walk
_SNAPSHOT_VALUES = operator.attrgetter(*SNAPSHOT_FIELDS)
_STATE_AT, _FILL_IDS_AT, _TIMESTAMPS_AT, _LIMIT_AT, _AVG_AT = map(
    SNAPSHOT_FIELDS.index, ("state", "fill_ids", "timestamps", "limit_price", "avg_price"))


@dataclass
class OrderEvent:
    """One change to an order, for the journal. ``old == new`` for a change that is
    not a transition (a fill on a partially filled or terminal order, a counted
    conflict); ``detail["order"]`` is the order after it, so replaying the events
    rebuilds the orders (``orders_from_events``)."""
    cid: str
    old: OrderState
    new: OrderState
    ts_ns: int
    detail: dict

    def to_dict(self) -> dict:
        return {"cid": self.cid, "old": NAME[self.old], "new": NAME[self.new], "ts_ns": self.ts_ns,
                "detail": self.detail}


class VenueStatus(NamedTuple):
    """What the venue says about an order when asked (order status query)."""
    state: OrderState
    filled_qty: float = 0.0
    venue_order_id: str | None = None
    avg_price: float = math.nan
    reason: str = ""


def orders_from_events(events: Iterable[OrderEvent | dict]) -> list[dict]:
    """The last state of every order the events touch, in first-seen order: what
    ``OrderManager.restore`` takes after a restart."""
    last: dict[str, dict] = {}
    for ev in events:
        d = ev.to_dict() if isinstance(ev, OrderEvent) else ev
        order = d["detail"].get("order")
        if order is not None:       # the batch layout snapshots only an order's last event of a step
            last[d["cid"]] = order
    return list(last.values())


class OrderManager:
    """Every order of one execution process, by client id."""

    def __init__(self, clock: Clock, snapshot_last_only: bool = False):
        self.clock = clock
        self.orders: dict[str, Order] = {}
        self._live: dict[str, Order] = {}      # not terminal: what the scans look through
        self._blocking: dict[int, int] = {}    # symbol id -> its orders SUBMITTED or UNKNOWN
        self._events: list[tuple] = []         # (cid, old, new, ts_ns, detail, order): see drain_with_last
        # False: every event carries the order after it (``detail["order"]``). True: only the
        # last event of each order in a drain does (the journal's batch layout: what recovery
        # reads is the last snapshot), taken at the drain, when the order is still as it left it
        self.snapshot_last_only = snapshot_last_only
        # (client id, fill id) of every fill applied: one set of untracked tuples, not a set per
        # order, which the garbage collector's full passes would walk for every order kept
        self._fill_ids: set[tuple[str, str]] = set()
        self.stats = {"duplicate_creates": 0, "duplicate_messages": 0, "late_messages": 0,
                      "conflicts": 0, "overfills": 0, "late_fills": 0}

    # -- our own steps --------------------------------------------------------------------------
    def create(self, intent_row, venue: str, pipeline: str, strategy: str | int,
               qty: float | None = None, limit_price: float | None = None) -> Order:
        """A CREATED order for an INTENT row (``qty``/``limit_price``: the values after
        venue rounding, else the intent's). If this intent already has an order (a
        replay, a restart) that one is returned with ``duplicate`` set: do not send it."""
        if isinstance(intent_row, np.ndarray) and intent_row.shape == (1,):
            intent_row = intent_row[0]
        return self.create_values(
            int(intent_row["seq"]), int(intent_row["symbol_id"]), venue, int(intent_row["side"]),
            int(intent_row["order_type"]), int(intent_row["tif"]),
            float(intent_row["qty"] if qty is None else qty),
            float(intent_row["limit_price"] if limit_price is None else limit_price),
            int(intent_row["strategy_id"]), int(intent_row["reason"]), int(intent_row["ts_origin_ns"]),
            pipeline, strategy, int(intent_row["expire_ns"]))

    def create_values(self, seq: int, symbol_id: int, venue: str, side: int, order_type: int, tif: int,
                      qty: float, limit_price: float, strategy_id: int, reason: int, ts_origin_ns: int,
                      pipeline: str, strategy: str | int, expire_ns: int = 0) -> Order:
        """``create`` from an intent's fields as plain Python values (the desk's hot path)."""
        cid = client_order_id(pipeline, strategy, seq)
        if cid in self.orders:
            order = self.orders[cid]
            order.duplicate = True
            self.stats["duplicate_creates"] += 1
            return order
        order = Order(cid, symbol_id, venue, side, order_type, tif, qty, limit_price, strategy_id, seq,
                      reason, ts_origin_ns, expire_ns)
        if not (order.qty > 0 and math.isfinite(order.qty)):
            raise ValueError(f"order {cid}: quantity {order.qty} is not a positive number")
        ts = self.clock.time_ns()
        order.timestamps[NAME[S.CREATED]] = ts     # (Enum.name is a slow property)
        self.orders[cid] = order
        self._live[cid] = order
        self._emit(order, S.CREATED, S.CREATED, ts, {"event": "created"})
        return order

    def submitted(self, cid: str) -> None:
        """CREATED -> SUBMITTED, recorded *before* the request leaves. A second call
        raises: that would be a second send. A symbol with another unanswered order
        raises SymbolBlocked (check ``blocked_symbols`` first)."""
        order = self._get(cid)
        if order.state is S.CREATED and self._blocking.get(order.symbol_id):
            others = [o.client_id for o in self._live.values()
                      if o.symbol_id == order.symbol_id and o.state in BLOCKING]
            if others:
                raise SymbolBlocked(f"symbol {order.symbol_id} has unanswered orders {others}: "
                                    f"resolve them before sending {cid}")
        self._move(order, S.SUBMITTED, {"event": "submitted"})

    def cancel_requested(self, cid: str, reason: str) -> bool:
        """We ask the venue to cancel the order: recorded (an event, no state change: the
        venue's answer, or a fill that gets there first, moves it) *before* the request
        leaves. False, and nothing recorded, for an order already ended or already asked."""
        order = self._get(cid)
        if order.state in TERMINAL or order.state is S.CREATED or order.cancel_ns:
            return False
        order.cancel_ns = ts = self.clock.time_ns()
        self._emit(order, order.state, order.state, ts, {"event": "cancel_requested", "reason": reason})
        return True

    def no_answer(self, cid: str) -> bool:
        """SUBMITTED -> UNKNOWN: the submit timed out or failed in transit. Returns False
        (a no-op) when an answer got there first."""
        order = self._get(cid)
        if order.state is S.SUBMITTED:
            self._move(order, S.UNKNOWN, {"event": "no_answer"})
            return True
        if order.state is S.CREATED:
            raise IllegalTransition(f"order {cid}: no answer for an order never submitted")
        return False

    def resolve_unknown(self, cid: str, venue_says: VenueStatus) -> None:
        """Settle a SUBMITTED or UNKNOWN order with the venue's own status. The filled
        quantity is recorded, no fill is applied (see ``Order.unattributed_qty``)."""
        order = self._get(cid)
        if order.state not in BLOCKING:
            raise IllegalTransition(f"order {cid} is {order.state.name}: nothing to resolve")
        new = OrderState(venue_says.state)
        if new not in TRANSITIONS[S.UNKNOWN]:
            raise IllegalTransition(f"order {cid}: the venue cannot say {new.name}")
        filled = float(venue_says.filled_qty)
        if not (math.isfinite(filled) and filled >= 0):
            raise ValueError(f"order {cid}: venue filled quantity {filled!r}")
        if filled > order.qty * (1 + QTY_REL_TOL):
            raise ValueError(f"order {cid}: venue says {filled} filled of {order.qty}")
        if new is S.ACCEPTED and filled > 0:
            new = S.PARTIALLY_FILLED
        if new in (S.ACCEPTED, S.PARTIALLY_FILLED) and self._complete(filled, order):
            new = S.FILLED
        order.filled_qty = max(order.filled_qty, filled)
        if venue_says.venue_order_id and not order.venue_order_id:
            order.venue_order_id = str(venue_says.venue_order_id)
        if order.fills_qty == 0 and math.isfinite(venue_says.avg_price) and filled > 0:
            order.avg_price = float(venue_says.avg_price)
        if venue_says.reason:
            order.reason = venue_says.reason
        self._move(order, new, {"event": "resolved", "venue_state": OrderState(venue_says.state).name,
                                "filled_qty": filled, "unattributed_qty": order.unattributed_qty})

    # -- venue messages -------------------------------------------------------------------------
    def on_ack(self, cid: str, venue_order_id: str) -> bool:
        """The venue took the order. True when it moved the order."""
        order = self._get(cid)
        self._no_venue_message_before_submit(order, "an ack")
        if venue_order_id and not order.venue_order_id:
            order.venue_order_id = str(venue_order_id)
        if order.state in BLOCKING:
            self._move(order, S.ACCEPTED, {"event": "ack", "venue_order_id": order.venue_order_id})
            return True
        if order.state is S.ACCEPTED:
            self.stats["duplicate_messages"] += 1
        elif order.state is S.REJECTED:
            self._conflict(order, "ack for an order recorded rejected")
        else:
            self.stats["late_messages"] += 1       # filled, cancelled or expired got here first
        return False

    def on_reject(self, cid: str, reason: str) -> bool:
        """The venue refused the order (or it was refused before it left)."""
        order = self._get(cid)
        if order.state in BLOCKING or order.state is S.CREATED:
            order.reason = reason
            self._move(order, S.REJECTED, {"event": "reject", "reason": reason})
            return True
        if order.state is S.REJECTED:
            self.stats["duplicate_messages"] += 1
        else:
            self._conflict(order, f"reject ({reason}) for an order recorded {order.state.name}")
        return False

    def on_cancel(self, cid: str, reason: str = "") -> bool:
        """The order's remainder was cancelled (by us or by the venue)."""
        return self._end(cid, S.CANCELLED, reason, "cancel")

    def on_expire(self, cid: str, reason: str = "") -> bool:
        """The order's remainder expired (IOC/FOK leftovers, time in force)."""
        return self._end(cid, S.EXPIRED, reason, "expire")

    def on_fill(self, cid: str, fill_id: str, qty: float, price: float, fee: float,
                liquidity: int) -> bool:
        """A trade. True when it is applied (the caller then moves the position); False
        for a fill id seen before or an overfill, both counted."""
        order = self._get(cid)
        self._no_venue_message_before_submit(order, "a fill")
        fid = str(fill_id)
        key = (cid, fid)
        if key in self._fill_ids:
            self.stats["duplicate_messages"] += 1
            return False
        qty, price, fee = float(qty), float(price), float(fee)
        if not (qty > 0 and math.isfinite(qty) and price > 0 and math.isfinite(price)
                and math.isfinite(fee)):
            raise ValueError(f"order {cid}: fill {fid} has qty {qty}, price {price}, fee {fee}")
        if order.fills_qty + qty > order.qty * (1 + QTY_REL_TOL):
            self.stats["overfills"] += 1
            self._emit(order, order.state, order.state, self.clock.time_ns(),
                       {"event": "overfill", "fill_id": fid, "qty": qty, "price": price,
                        "fills_qty": order.fills_qty})
            return False
        self._fill_ids.add(key)
        order.fill_ids.append(fid)
        order.fills_qty += qty
        order.fill_notional += qty * price
        order.avg_price = order.fill_notional / order.fills_qty
        order.fees += fee
        order.filled_qty = max(order.filled_qty, order.fills_qty)
        detail = {"event": "fill", "fill_id": fid, "qty": qty, "price": price, "fee": fee,
                  "liquidity": int(liquidity)}
        if order.state in TERMINAL:
            self.stats["late_fills"] += 1
            self._emit(order, order.state, order.state, self.clock.time_ns(), detail)
        else:
            new = S.FILLED if self._complete(order.filled_qty, order) else S.PARTIALLY_FILLED
            self._move(order, new, detail)
        return True

    # -- views ----------------------------------------------------------------------------------
    def get(self, cid: str) -> Order:
        return self._get(cid)

    def open_orders(self, symbol_id: int | None = None) -> list[Order]:
        """Orders not yet in a terminal state (CREATED included), optionally for one symbol."""
        return [o for o in self._live.values() if symbol_id is None or o.symbol_id == symbol_id]

    def blocked_symbols(self) -> set[int]:
        """Symbols with an order SUBMITTED or UNKNOWN: no new order for them until it is
        answered or resolved with the venue."""
        return {s for s, n in self._blocking.items() if n}

    def drain_events(self) -> list[OrderEvent]:
        """The events since the last drain, oldest first, for the journal."""
        out, last = self.drain_with_last()
        if self.snapshot_last_only:
            for k, order in last:
                out[k][4]["order"] = order.to_dict()
        return [OrderEvent(*ev[:5]) for ev in out]

    def drain_with_last(self) -> tuple[list[tuple], list[tuple[int, Order]]]:
        """The events since the last drain as tuples (cid, old, new, ts_ns, detail, order:
        an `OrderEvent`'s fields and the order, for a caller that takes them column-wise),
        and (index, order) of each order's last event among them, oldest first: the orders
        as they are now are as that event left them (every change is an event), so the
        caller may snapshot them there."""
        out, self._events = self._events, []
        if not out:
            return out, []
        cids = list(map(_CID, out))
        last_at = sorted(dict(zip(cids, range(len(out)))).values())     # the last index per cid
        return out, [(k, out[k][5]) for k in last_at]

    def restore(self, orders: Iterable[dict]) -> None:
        """Load orders from the journal (``orders_from_events`` or ``Order.to_dict``s)
        after a restart. SUBMITTED and UNKNOWN orders stay so, blocking their symbols
        until resolved; fill ids stay known, so a replayed fill is not applied again."""
        for d in orders:
            order = Order.from_dict(d)
            if order.client_id in self.orders:
                raise ValueError(f"order {order.client_id} restored twice")
            self.orders[order.client_id] = order
            self._fill_ids.update((order.client_id, fid) for fid in order.fill_ids)
            if order.state not in TERMINAL:
                self._live[order.client_id] = order
            if order.state in BLOCKING:
                self._blocking[order.symbol_id] = self._blocking.get(order.symbol_id, 0) + 1

    # -- inside ---------------------------------------------------------------------------------
    def _get(self, cid: str) -> Order:
        try:
            return self.orders[cid]
        except KeyError:
            raise UnknownOrder(cid) from None

    @staticmethod
    def _complete(filled: float, order: Order) -> bool:
        return filled >= order.qty * (1 - QTY_REL_TOL)

    def _no_venue_message_before_submit(self, order: Order, what: str) -> None:
        if order.state is S.CREATED:
            raise IllegalTransition(f"order {order.client_id}: {what} for an order never submitted "
                                    f"(submitted() is write-ahead: call it before sending)")

    def _end(self, cid: str, new: OrderState, reason: str, what: str) -> bool:
        order = self._get(cid)
        self._no_venue_message_before_submit(order, f"a {what}")
        if order.state not in TERMINAL:
            order.reason = reason
            self._move(order, new, {"event": what, "reason": reason})
            return True
        if order.state is new:
            self.stats["duplicate_messages"] += 1
        elif order.state is S.FILLED or (order.state is S.CANCELLED and new is S.EXPIRED) \
                or (order.state is S.EXPIRED and new is S.CANCELLED):
            self.stats["late_messages"] += 1       # the order ended first another way
        else:
            self._conflict(order, f"{what} for an order recorded {order.state.name}")
        return False

    def _conflict(self, order: Order, what: str) -> None:
        self.stats["conflicts"] += 1
        self._emit(order, order.state, order.state, self.clock.time_ns(),
                   {"event": "conflict", "what": what})

    def _move(self, order: Order, new: OrderState, detail: dict) -> None:
        old = order.state
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"order {order.client_id}: {old.name} -> {new.name} is not allowed")
        ts = self.clock.time_ns()
        order.state = new
        if new in TERMINAL:
            self._live.pop(order.client_id, None)
        blocking = new in BLOCKING
        if (old in BLOCKING) is not blocking:
            sid = order.symbol_id
            self._blocking[sid] = self._blocking.get(sid, 0) + (1 if blocking else -1)
        order.timestamps.setdefault(NAME[new], ts)
        if self.snapshot_last_only:             # `_emit`, inline: four moves per order
            self._events.append((order.client_id, old, new, ts, detail, order))
        else:
            self._emit(order, old, new, ts, detail)

    def _emit(self, order: Order, old: OrderState, new: OrderState, ts: int, detail: dict) -> None:
        if not self.snapshot_last_only:
            detail = dict(detail, order=order.to_dict())
        self._events.append((order.client_id, old, new, ts, detail, order))


_CID = operator.itemgetter(0)
