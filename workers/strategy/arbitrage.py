"""Kimchi premium on executable prices: a Korean venue's KRW book against Binance's
USDT book for the same asset. A pure core: books as numpy arrays in, a priced
route (or the reason there is none) out; no rings, no zmq, no clock reads.

Why executable prices and not mids: a premium of +15 bps between two mids is not
there to take. Selling 0.1 BTC walks the bids down and buying walks the asks up,
both venues charge a taker fee, and an order must sit on the venue's tick and lot.
What this module returns is what the two legs would fill at if both books stay as
they are until the orders land.

* ``walk``: the volume-weighted price of buying ``qty`` from the asks or selling it
  into the bids, level by level. A side too thin for ``qty`` says so
  (``complete`` false, ``avg_price`` NaN) and how much it holds: a price for a
  quantity the book does not have would be made up.
* ``check_book``: a crossed or locked book, an empty side, a NaN, infinite or
  non-positive price or size, or levels out of order are refused with a code
  naming what is wrong. Bad data never yields a premium worth an order.
* ``route_premium``: both directions of a route (sell on the Korean venue and buy
  on Binance, or the reverse), each leg walked for the same base quantity, the
  quantity first floored to both venues' lot steps, each leg's limit (the deepest
  level walked) checked against its venue's tick and notional rules through
  ``workers.execution.venue_rules.round_order`` (Upbit's dated KRW tick table:
  ``upbit_rules(markets, at_ns)``; Binance filters: ``binance_rules``), both taker
  fees subtracted, KRW turned into USDT at the FX rate given (KRW per USDT). The
  direction with the better net premium is returned.

Fees are fractions of each leg's notional in its own quote currency (Upbit takes
KRW on both sides; Binance takes a buy's fee in the coin received, which is worth
the same fraction of the USDT notional at the fill price). Per-venue taker fees are
what ``pipeline.config.fees_of(execution, venue)[1]`` returns.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

import numpy as np

from shm.records import SIDE_BUY, SIDE_SELL
from workers.execution.venue_rules import Denial, RoundedOrder, SymbolRules, round_order, snap, to_decimal

# refusal codes (a Denial's code; round_order's own codes pass through unchanged)
BOOK_EMPTY = "BOOK_EMPTY"                  # a side with no level
BOOK_SHAPE = "BOOK_SHAPE"                  # prices and sizes not two 1-D arrays of one length
BOOK_BAD_PRICE = "BOOK_BAD_PRICE"          # NaN, infinite, zero or negative price
BOOK_BAD_SIZE = "BOOK_BAD_SIZE"            # NaN, infinite, zero or negative size
BOOK_UNSORTED = "BOOK_UNSORTED"            # bids not strictly falling or asks not strictly rising
BOOK_CROSSED = "BOOK_CROSSED"              # best bid >= best ask (crossed or locked)
BOOK_TOO_THIN = "BOOK_TOO_THIN"            # the side walked holds less than the quantity
BOOK_OFF_TICK = "BOOK_OFF_TICK"            # a level walked is not on the venue's tick
BOOKS_APART = "BOOKS_APART"                # the two books were taken too far apart in time
BAD_QTY = "BAD_QTY"                        # quantity NaN, infinite or not positive
BAD_FX = "BAD_FX"                          # FX rate NaN, infinite or not positive
BAD_FEE = "BAD_FEE"                        # taker fee outside [0, 100) bps

SELL_KRW = "sell_krw"      # the Korean venue is rich: sell there, buy on the USDT venue
SELL_USDT = "sell_usdt"    # the USDT venue is rich: sell there, buy on the Korean venue

BIDS = "bids"
ASKS = "asks"

# a quantity within this fraction of a side's cumulative size is filled by it (float noise
# of a cumulative sum, ~1e-16 a term; far below a lot step of 1e-8 on 1 BTC)
_FILL_TOL = 1e-12


class BadBook(ValueError):
    """A book side ``walk`` cannot price; ``code`` is one of the BOOK_* codes."""

    def __init__(self, denial: Denial):
        super().__init__(f"{denial.code}: {denial.reason}")
        self.code = denial.code
        self.reason = denial.reason


@dataclass(frozen=True)
class Book:
    """One venue's book for one symbol: bids best first (falling prices), asks best
    first (rising prices). ``ts_ns``: when it was taken (UTC ns), if known."""
    bid_px: np.ndarray
    bid_sz: np.ndarray
    ask_px: np.ndarray
    ask_sz: np.ndarray
    ts_ns: int | None = None

    @classmethod
    def from_levels(cls, bids, asks, ts_ns: int | None = None) -> "Book":
        """From [[price, size, ...], ...] lists (ccxt's and most venues' shape; a third
        column such as an order count is ignored). Raises ``BadBook`` (BOOK_SHAPE) on
        rows without a price and a size."""
        sides = []
        for levels, side in ((bids, BIDS), (asks, ASKS)):
            x = np.asarray(levels, dtype=np.float64) if len(levels) else np.empty((0, 2))
            if x.ndim != 2 or x.shape[1] < 2:
                raise BadBook(Denial(BOOK_SHAPE, f"{side}: levels of shape {x.shape}, "
                                                 f"not rows of price and size"))
            sides += [x[:, 0].copy(), x[:, 1].copy()]
        return cls(*sides, ts_ns)


@dataclass(frozen=True)
class VenueBook:
    """A route's leg: the venue's name, its book, its order rules for the symbol and
    its taker fee in bps."""
    venue: str
    book: Book
    rules: SymbolRules
    taker_bps: float


@dataclass(frozen=True)
class Walk:
    """``qty`` walked through one side. ``filled`` is how much of it the side holds
    (all of it when ``complete``); ``notional`` is the quote amount of the part
    filled; ``avg_price`` its volume-weighted price, NaN unless ``complete``;
    ``worst_price`` the deepest level reached (the limit that takes it all);
    ``levels`` how many levels were touched."""
    qty: float
    filled: float
    notional: float
    avg_price: float
    worst_price: float
    levels: int
    complete: bool


@dataclass(frozen=True)
class Premium:
    """One direction of a route priced for ``qty`` (already on both lot steps).

    Prices ``sell_vwap``/``buy_vwap`` are in each venue's own quote currency and
    ``*_usdt`` in USDT. ``gross_bps`` = sell/buy - 1 in USDT before fees (what
    the price gap pays); ``net_bps`` = sell x (1 - fee) / (buy x (1 + fee)) - 1;
    ``net_profit_usdt`` = qty x (sell x (1 - fee) - buy x (1 + fee)) in USDT.
    ``sell_limit``/``buy_limit`` are the legs' limits on tick: the deepest level
    walked (before any band a caller adds)."""
    direction: str
    sell_venue: str
    buy_venue: str
    qty: float
    sell_vwap: float
    buy_vwap: float
    sell_vwap_usdt: float
    buy_vwap_usdt: float
    gross_bps: float
    net_bps: float
    net_profit_usdt: float
    krw_per_usdt: float
    sell_order: RoundedOrder = field(repr=False)     # the sell leg's quantity and limit, on rules
    buy_order: RoundedOrder = field(repr=False)

    @property
    def sell_limit(self) -> Decimal:
        return self.sell_order.price

    @property
    def buy_limit(self) -> Decimal:
        return self.buy_order.price


# -- book checks -----------------------------------------------------------------------------
def check_side(prices: np.ndarray, sizes: np.ndarray, side: str) -> Denial | None:
    """Why one side cannot be walked, or None. ``side`` is BIDS or ASKS."""
    p = np.asarray(prices)
    s = np.asarray(sizes)
    if p.ndim != 1 or s.ndim != 1 or p.shape != s.shape:
        return Denial(BOOK_SHAPE, f"{side}: prices {p.shape} and sizes {s.shape} "
                                  f"are not two equal 1-D arrays")
    if p.size == 0:
        return Denial(BOOK_EMPTY, f"{side}: no level")
    p = p.astype(np.float64, copy=False)
    s = s.astype(np.float64, copy=False)
    ordered = p[1:] < p[:-1] if side == BIDS else p[1:] > p[:-1]
    if p.min() > 0 and p.max() < math.inf and s.min() > 0 and s.max() < math.inf and ordered.all():
        return None                             # the usual case, in a few array passes (NaN fails min)
    bad = ~(np.isfinite(p) & (p > 0))
    if bad.any():
        i = int(np.argmax(bad))
        return Denial(BOOK_BAD_PRICE, f"{side}[{i}]: price {p[i]!r} is not a finite positive number")
    bad = ~(np.isfinite(s) & (s > 0))
    if bad.any():
        i = int(np.argmax(bad))
        return Denial(BOOK_BAD_SIZE, f"{side}[{i}]: size {s[i]!r} is not a finite positive number")
    step = np.diff(p)
    wrong = step >= 0 if side == BIDS else step <= 0
    if wrong.any():
        i = int(np.argmax(wrong))
        order = "falling" if side == BIDS else "rising"
        return Denial(BOOK_UNSORTED, f"{side}[{i}..{i + 1}]: {p[i]!r} then {p[i + 1]!r}, "
                                     f"not strictly {order}")
    return None


def check_book(book: Book) -> Denial | None:
    """Why a book cannot be priced, or None: each side checked, then best bid below
    best ask (a crossed or locked book is a feed fault or a stale side)."""
    for px, sz, side in ((book.bid_px, book.bid_sz, BIDS), (book.ask_px, book.ask_sz, ASKS)):
        d = check_side(px, sz, side)
        if d is not None:
            return d
    if book.bid_px[0] >= book.ask_px[0]:
        return Denial(BOOK_CROSSED, f"best bid {book.bid_px[0]!r} >= best ask {book.ask_px[0]!r}")
    return None


# -- walking ---------------------------------------------------------------------------------
def walk(prices: np.ndarray, sizes: np.ndarray, qty: float, side: str = ASKS) -> Walk:
    """Buy ``qty`` from ``side`` ASKS (or sell it into BIDS): the volume-weighted
    price level by level. Raises ``BadBook`` on a side ``check_side`` refuses and
    ``ValueError`` on a quantity that is not finite and positive."""
    d = check_side(prices, sizes, side)
    if d is not None:
        raise BadBook(d)
    q = float(qty)
    if not (math.isfinite(q) and q > 0):
        raise ValueError(f"{BAD_QTY}: quantity {qty!r} is not a finite positive number")
    return _walk(np.asarray(prices, dtype=np.float64), np.asarray(sizes, dtype=np.float64), q)


def _walk(p: np.ndarray, s: np.ndarray, q: float) -> Walk:
    """``walk`` on a side already checked, for a quantity already checked."""
    cum = np.cumsum(s)
    need = q * (1.0 - _FILL_TOL)
    if cum[-1] < need:                          # the side does not hold qty
        return Walk(q, float(cum[-1]), float(p @ s), math.nan, float(p[-1]), int(p.size), False)
    k = int(np.searchsorted(cum, need, side="left"))   # first level where the sum reaches qty
    before = float(cum[k - 1]) if k else 0.0
    last = min(q - before, float(s[k]))
    notional = float(p[:k] @ s[:k]) + last * float(p[k])
    return Walk(q, q, notional, notional / q, float(p[k]), k + 1, True)


# -- the route -------------------------------------------------------------------------------
def _real(x) -> float:
    """A real number as a float; NaN for anything else (a string, None, a bool)."""
    return float(x) if isinstance(x, numbers.Real) and not isinstance(x, bool) else math.nan


def _fee_ok(bps: float) -> bool:
    b = _real(bps)
    return math.isfinite(b) and 0 <= b < 100


def _common_qty(qty: float, a: SymbolRules, b: SymbolRules) -> Decimal | Denial:
    """``qty`` floored onto both venues' lot steps (a whole number of each)."""
    q = to_decimal(qty)
    if q is None or q <= 0:
        return Denial(BAD_QTY, f"quantity {qty!r} is not a finite positive number")
    for _ in range(4):                          # steps that do not nest: floor until stable
        q2 = snap(snap(q, a.lot_step, ROUND_FLOOR), b.lot_step, ROUND_FLOOR)
        if q2 == q:
            break
        q = q2
    if q <= 0:
        return Denial(BAD_QTY, f"quantity {qty!r} floors to zero on lot steps {a.lot_step} and {b.lot_step}")
    return q


def common_qty(qty: float, a: SymbolRules, b: SymbolRules) -> Decimal | Denial:
    """``qty`` floored onto both venues' lot steps, or BAD_QTY: what ``route_premium``
    walks. Public for a caller that prices the same quantity on every update (a route
    trader) and floors it once."""
    return _common_qty(qty, a, b)


def _leg(vb: VenueBook, side: int, q: Decimal) -> tuple[Walk, RoundedOrder] | Denial:
    """Walk one leg for ``q`` and check its IOC limit (the deepest level walked)
    against the venue's rules: tick, quantity and notional."""
    sell = side == SIDE_SELL
    px, sz = (vb.book.bid_px, vb.book.bid_sz) if sell else (vb.book.ask_px, vb.book.ask_sz)
    w = _walk(px, sz, float(q))                 # the books were checked by the caller
    what = f"{vb.venue} {'bids' if sell else 'asks'}"
    if not w.complete:
        return Denial(BOOK_TOO_THIN, f"{what} hold {w.filled:.10g} of the {w.qty:.10g} asked")
    r = round_order(vb.rules, side, q, w.worst_price, w.worst_price)
    if isinstance(r, Denial):
        return r
    if r.qty != q:
        return Denial(BAD_QTY, f"{vb.venue}: quantity {q} rounds to {r.qty}")
    if r.price != to_decimal(w.worst_price):
        return Denial(BOOK_OFF_TICK, f"{what}: level {w.worst_price!r} is not on {vb.rules.symbol}'s tick "
                                     f"(an order there would go at {r.price})")
    return w, r


def one_way(sell: VenueBook, buy: VenueBook, q: Decimal, usdt_per_sell_quote: float,
            usdt_per_buy_quote: float, direction: str, krw_per_usdt: float) -> Premium | Denial:
    """One direction: sell ``q`` (already on both lot steps) on ``sell`` and buy it on
    ``buy``; ``usdt_per_*_quote`` turns each quote into USDT. ``route_premium`` checks
    the rest of its inputs and prices both directions."""
    for vb in (sell, buy):
        d = check_book(vb.book)
        if d is not None:
            return Denial(d.code, f"{vb.venue}: {d.reason}")
    return _one_way(sell, buy, q, usdt_per_sell_quote, usdt_per_buy_quote, direction, krw_per_usdt)


def one_way_checked(sell: VenueBook, buy: VenueBook, q: Decimal, usdt_per_sell_quote: float,
                    usdt_per_buy_quote: float, direction: str, krw_per_usdt: float) -> Premium | Denial:
    """``one_way`` without the book checks, for a caller that has already checked both
    books as ``check_book`` does (and ``q``, the fees and the FX rate as
    ``route_premium`` does). Why: a route trader screens every book update with its
    own checks and prices only the few that may trade; checking twice would double the
    cost of those few."""
    return _one_way(sell, buy, q, usdt_per_sell_quote, usdt_per_buy_quote, direction, krw_per_usdt)


def _one_way(sell: VenueBook, buy: VenueBook, q: Decimal, usdt_per_sell_quote: float,
             usdt_per_buy_quote: float, direction: str, krw_per_usdt: float) -> Premium | Denial:
    s = _leg(sell, SIDE_SELL, q)
    if isinstance(s, Denial):
        return s
    b = _leg(buy, SIDE_BUY, q)
    if isinstance(b, Denial):
        return b
    (ws, rs), (wb, rb) = s, b
    qty = float(q)
    sell_usdt = ws.avg_price * usdt_per_sell_quote
    buy_usdt = wb.avg_price * usdt_per_buy_quote
    sell_net = sell_usdt * (1.0 - sell.taker_bps * 1e-4)
    buy_net = buy_usdt * (1.0 + buy.taker_bps * 1e-4)
    return Premium(direction=direction, sell_venue=sell.venue, buy_venue=buy.venue, qty=qty,
                   sell_vwap=ws.avg_price, buy_vwap=wb.avg_price,
                   sell_vwap_usdt=sell_usdt, buy_vwap_usdt=buy_usdt,
                   gross_bps=(sell_usdt / buy_usdt - 1.0) * 1e4,
                   net_bps=(sell_net / buy_net - 1.0) * 1e4,
                   net_profit_usdt=qty * (sell_net - buy_net),
                   krw_per_usdt=krw_per_usdt, sell_order=rs, buy_order=rb)


def route_premium(krw: VenueBook, usdt: VenueBook, qty: float, krw_per_usdt: float,
                  max_skew_ns: int | None = None) -> Premium | Denial:
    """The route's premium for ``qty`` of the asset: both directions priced, the one
    with the higher net premium returned (net may be negative: the route's level,
    for a caller's threshold to judge). A Denial when the inputs are bad, or when
    neither direction can be priced (each direction's reason in it).

    ``krw``: the Korean venue (quote KRW); ``usdt``: Binance (quote USDT);
    ``krw_per_usdt``: the FX rate; ``max_skew_ns``: refuse books whose ``ts_ns``
    differ by more (both must carry one then)."""
    fx = _real(krw_per_usdt)
    if not (math.isfinite(fx) and fx > 0):
        return Denial(BAD_FX, f"KRW per USDT {krw_per_usdt!r} is not a finite positive number")
    for vb in (krw, usdt):
        if not _fee_ok(vb.taker_bps):
            return Denial(BAD_FEE, f"{vb.venue}: taker fee {vb.taker_bps!r} bps is not in [0, 100)")
        d = check_book(vb.book)
        if d is not None:
            return Denial(d.code, f"{vb.venue}: {d.reason}")
    if max_skew_ns is not None:
        ta, tb = krw.book.ts_ns, usdt.book.ts_ns
        if ta is None or tb is None or abs(ta - tb) > max_skew_ns:
            return Denial(BOOKS_APART, f"{krw.venue} book at {ta}, {usdt.venue} book at {tb}: "
                                       f"more than {max_skew_ns} ns apart (or a time missing)")
    q = _common_qty(qty, krw.rules, usdt.rules)
    if isinstance(q, Denial):
        return q
    a = _one_way(krw, usdt, q, 1.0 / fx, 1.0, SELL_KRW, fx)
    b = _one_way(usdt, krw, q, 1.0, 1.0 / fx, SELL_USDT, fx)
    ok = [p for p in (a, b) if isinstance(p, Premium)]
    if ok:
        return max(ok, key=lambda p: p.net_bps)
    return Denial(a.code, f"{SELL_KRW}: {a.reason}; {SELL_USDT}: {b.reason}")
