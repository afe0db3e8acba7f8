"""Route trader for kimchi-premium arbitrage (issue 14): book updates in, pairs of
IOC intents out. A pure core: books (``arbitrage.Book``) and numbers in, INTENT rows
out, the clock passed in; no rings, no zmq. The pricing is ``arbitrage.py``'s; this
module decides when a route trades, how much, at what limits, and what inventory
allows.

A route is one asset on a Korean venue (quote KRW) against Binance (quote USDT):
``RouteSpec``. Its ``ArbRoute`` is called on every book update of either venue.

* **Premium level.** The Korean price sits above the dollar price most of the
  time (median +1.2 % over 2024-25), so a fixed threshold would sell Korea
  forever. Each valid update adds the *mid premium* (Korean mid in USDT over
  Binance's mid, in bps) to a rolling window of ``window`` samples; a direction's
  **edge** is its executable, walked, fee-net premium (``Premium.net_bps``) measured
  from the window's mean (the mean of the samples *before* this one, so a spike
  does not dilute itself): ``net_bps - mean`` to sell in Korea, ``net_bps + mean`` to
  sell on Binance (buying Korea below its usual level).
* **Entry and exit.** A direction trades ``qty`` when its edge reaches
  ``entry_bps``. It also trades when it reduces a position held the other way (an
  unwind) and its edge reaches ``exit_bps`` (lower), then for at most what is held.
  With the mean standing still a round trip earns at least ``entry_bps +
  exit_bps`` bps after four taker fees; ``exit_bps`` is usually negative. (The
  screen walks the route's ``qty``; an unwind of less is priced for what it is.)
  A route parked by dynamic selection (``may_open`` False, route_select.py) opens
  nothing: it still unwinds, for at most what it holds (counter ``parked``).
* **Legs.** Two INTENT rows: the sell leg on the rich venue, the buy leg on the
  cheap one, same quantity (floored to both lot steps), ORDER_LIMIT, TIF_IOC. Each
  limit is the deepest level walked moved ``band_bps`` against us (a sell lower, a
  buy higher: room for the book to move before the IOC lands) and rounded onto the
  venue's tick by ``venue_rules.round_order``, which rounds a sell up and a buy
  down, so a limit never passes the band nor falls short of the walked level.
* **Inventory.** Pre-funded on both venues (``Inventory``: coins and quote cash per
  venue, shared by the routes on it). A pair is sent only if the sell venue holds
  the coins and the buy venue the cash for the buy limit plus fee, net of what legs
  in flight have reserved; an exhausted side stops that direction only. One pair
  in flight per route: the next decision needs to know how the last one filled.
* **No order from bad inputs.** A missing or stale FX rate, a bad book (crossed,
  empty, zero size, NaN, out of order: ``arbitrage.check_book``'s codes), books
  too far apart in time or too old for the clock: nothing, and a counter says why.
  Only valid updates feed the rolling mean.
* **Deterministic seqs.** A pair's seqs come from (route index, the update's
  sequence, leg), never from a counter: a restarted core that sees the same update
  derives the same ids and the order manager refuses to send them twice.
  ``ArbRoute.state``/``restore`` and ``Inventory.state``/``from_state`` carry the
  rolling window, position, legs in flight and holdings across a restart.
* **Imbalance.** ``Inventory.imbalance``: per asset, the net exposure across venues
  (a leg filled without its partner) and each venue's drift from its funding
  (trading one way moves coins from one venue to the other), an alert beyond a
  band and the transfer that would bring it back (asset, amount, direction).

Fast path: every update is screened with plain float walks over the books' first
levels (the same arithmetic as ``arbitrage.walk``); only an update whose edge
reaches a threshold is priced through ``arbitrage`` in full (lots, ticks,
notional, in Decimal). Screening every update in full would cost about ten times
as much, and nearly every update trades nothing. A book already checked is not
checked again when the next update changes only the other venue's book (the same
``Book`` object): a Book must not be changed once handed over.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from pipeline.clock import Clock
from shm.records import (INTENT, ORDER_LIMIT, REASON_ENTRY, REASON_EXIT, SIDE_BUY, SIDE_SELL,
                         TIF_IOC)
from workers.strategy import arbitrage as arb
from workers.strategy.arbitrage import SELL_KRW, SELL_USDT, Book, Premium, VenueBook

SEQ_BITS = 48                     # seq = (route index + 1) << 48 | (update seq << 1 | leg)
UPDATE_MASK = (1 << (SEQ_BITS - 1)) - 1
LEG_SELL, LEG_BUY = 0, 1
_SCREEN_TOL_BPS = 1e-6            # float walk vs the full pricing: sums in another order
_FILL_TOL = 1e-12                 # as arbitrage._FILL_TOL
_INF = math.inf

_NO_INTENTS = np.zeros(0, INTENT)
_NO_INTENTS.flags.writeable = False
_NO_EDGES = (math.nan, math.nan)

# reason counters (ArbRoute.counters)
COUNTERS = ("updates", "no_fx", "stale_fx", "bad_book", "books_apart", "stale_book", "warmup",
            "below_threshold", "legs_open", "no_coins", "no_cash", "priced_out", "band_rounding",
            "pairs", "fills", "unknown_fill", "parked")


@dataclass(frozen=True)
class RouteSpec:
    """One route: ``asset`` on ``krw_venue`` (symbol ``krw_symbol_id``, quote KRW)
    against ``usdt_venue`` (quote USDT). ``index``: the route's number, the high bits
    of its intents' seqs (unique per strategy, below 0xFFFF). Taker fees in bps, as
    ``pipeline.config.fees_of(execution, venue)[1]`` gives them."""
    index: int
    asset: str
    krw_venue: str
    krw_symbol_id: int
    krw_rules: arb.SymbolRules
    krw_taker_bps: float
    usdt_venue: str
    usdt_symbol_id: int
    usdt_rules: arb.SymbolRules
    usdt_taker_bps: float

    def __post_init__(self):
        if not 0 <= self.index < 0xFFFF:
            raise ValueError(f"route index {self.index} is not in [0, 65535)")
        for fee in (self.krw_taker_bps, self.usdt_taker_bps):
            if not (math.isfinite(fee) and 0 <= fee < 100):
                raise ValueError(f"route {self.index}: taker fee {fee!r} bps is not in [0, 100)")


@dataclass(frozen=True)
class RouteParams:
    """How a route trades. ``qty``: base quantity a pair (floored to both lot steps);
    ``entry_bps``/``exit_bps``: edges over the premium's rolling mean that open and
    unwind; ``band_bps``: how far past the walked level an IOC limit goes;
    ``window``: samples in the rolling mean (no trade before it is full);
    ``max_fx_age_ns``: an FX rate older is stale; ``max_skew_ns``: the two books'
    times may differ by at most this; ``max_book_age_ns``: the older book may be
    at most this old by the clock (None: not checked)."""
    qty: float
    entry_bps: float = 30.0
    exit_bps: float = -5.0
    band_bps: float = 5.0
    window: int = 600
    max_fx_age_ns: int = 60_000_000_000
    max_skew_ns: int = 1_000_000_000
    max_book_age_ns: int | None = 5_000_000_000

    def __post_init__(self):
        if not (math.isfinite(self.qty) and self.qty > 0):
            raise ValueError(f"qty {self.qty!r} is not a finite positive number")
        if not (math.isfinite(self.entry_bps) and math.isfinite(self.exit_bps)
                and self.exit_bps <= self.entry_bps):
            raise ValueError(f"exit_bps {self.exit_bps!r} must be finite and at most entry_bps "
                             f"{self.entry_bps!r} (an unwind is the easier trade)")
        if not (math.isfinite(self.band_bps) and 0 <= self.band_bps < 1000):
            raise ValueError(f"band_bps {self.band_bps!r} is not in [0, 1000)")
        if self.window < 1:
            raise ValueError(f"window {self.window} is not positive")


# -- inventory -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rebalance:
    """A suggested transfer: ``amount`` of ``asset`` from ``from_venue`` to ``to_venue``."""
    asset: str
    amount: float
    from_venue: str
    to_venue: str

    @property
    def direction(self) -> str:
        return f"{self.from_venue} -> {self.to_venue}"


@dataclass(frozen=True)
class Imbalance:
    """One asset across venues. ``net``: coins held over the funded total (not zero
    when a leg filled without its partner: unhedged exposure); ``drift``: per venue,
    coins over (+) or under (-) its funding (trading one way moves coins from one
    venue to the other); ``alert`` when either is beyond the band; ``rebalance``: the
    transfer that brings the largest drift back, when a drift is beyond the band."""
    asset: str
    net: float
    drift: dict[str, float]
    band: float
    alert: bool
    rebalance: Rebalance | None


class Inventory:
    """Pre-funded holdings: coins per (venue, asset) and quote cash per venue (KRW on a
    Korean venue, USDT on Binance), shared by every route on those venues. The
    funding is the target split that ``imbalance`` measures drift from. Legs in flight
    reserve what they may use, so two routes never spend the same cash."""

    def __init__(self, coins: dict[tuple[str, str], float], cash: dict[str, float]):
        self.coins = {k: float(v) for k, v in coins.items()}
        self.cash = {k: float(v) for k, v in cash.items()}
        self.target = dict(self.coins)
        self.reserved_coins = {k: 0.0 for k in self.coins}
        self.reserved_cash = {k: 0.0 for k in self.cash}

    def free_coins(self, venue: str, asset: str) -> float:
        key = (venue, asset)
        return self.coins.get(key, 0.0) - self.reserved_coins.get(key, 0.0)

    def free_cash(self, venue: str) -> float:
        return self.cash.get(venue, 0.0) - self.reserved_cash.get(venue, 0.0)

    def state(self) -> dict:
        """What a restart needs, JSON-able (tuple keys as "venue/asset")."""
        pair = lambda d: {f"{v}/{a}": x for (v, a), x in d.items()}      # noqa: E731
        return {"coins": pair(self.coins), "target": pair(self.target), "cash": dict(self.cash),
                "reserved_coins": pair(self.reserved_coins), "reserved_cash": dict(self.reserved_cash)}

    @classmethod
    def from_state(cls, state: dict) -> "Inventory":
        unpair = lambda d: {tuple(k.split("/", 1)): float(x) for k, x in d.items()}   # noqa: E731
        inv = cls(unpair(state["target"]), state["cash"])
        inv.coins = unpair(state["coins"])
        inv.reserved_coins = unpair(state["reserved_coins"])
        inv.reserved_cash = {k: float(x) for k, x in state["reserved_cash"].items()}
        return inv

    def imbalance(self, asset: str, band: float) -> Imbalance:
        """``asset`` across its venues; ``band`` a fraction of its funded total (0.2:
        an alert once a venue holds 20 % of the total more or less than funded)."""
        venues = [v for v, a in self.target if a == asset]
        total = sum(self.target[(v, asset)] for v in venues)
        limit = band * total
        drift = {v: self.coins.get((v, asset), 0.0) - self.target[(v, asset)] for v in venues}
        net = sum(drift.values())
        rebalance = None
        if venues:
            over = max(venues, key=lambda v: drift[v])
            under = min(venues, key=lambda v: drift[v])
            amount = min(drift[over], -drift[under])
            if max(abs(d) for d in drift.values()) > limit and amount > 0:
                rebalance = Rebalance(asset, amount, over, under)
        alert = abs(net) > limit or any(abs(d) > limit for d in drift.values())
        return Imbalance(asset, net, drift, limit, alert, rebalance)

    def imbalances(self, band: float) -> list[Imbalance]:
        """``imbalance`` of every funded asset, sorted by name."""
        return [self.imbalance(a, band) for a in sorted({a for _, a in self.target})]


@dataclass
class _Leg:
    """A leg in flight: what it reserved and has left to fill."""
    venue: str
    side: int
    qty_left: float
    cash_left: float          # quote reserved for a buy (limit x qty x (1 + fee)); 0 for a sell
    korean: bool


# -- the fast screen -------------------------------------------------------------------------------
def _side_ok(p: list, s: list, falling: bool) -> bool:
    """``arbitrage.check_side`` passes (for a side as lists): non-empty, finite positive
    prices and sizes, prices strictly ordered. Prices: a NaN fails a comparison of the
    order, so ordered prices lie between the two ends, which must be in (0, inf).
    Sizes: a finite sum rules out NaN and infinity, and then min() is reliable."""
    if not p or len(p) != len(s):
        return False
    lo, hi = (p[-1], p[0]) if falling else (p[0], p[-1])
    if not (0.0 < lo and hi < _INF and 0.0 < hi and lo < _INF):
        return False
    ts = sum(s)
    if ts - ts != 0.0 or min(s) <= 0.0:
        return False
    return all(map(operator.gt if falling else operator.lt, p, p[1:]))


def _lists(book: Book) -> tuple[list, list, list, list] | None:
    """A book's four arrays as float lists if it passes ``check_book``, else None."""
    arrays = (book.bid_px, book.bid_sz, book.ask_px, book.ask_sz)
    for a in arrays:
        if getattr(a, "ndim", 0) != 1:
            return None
    bp, bs, ap, as_ = [a.tolist() for a in arrays]
    if not (_side_ok(bp, bs, True) and _side_ok(ap, as_, False)) or bp[0] >= ap[0]:
        return None
    return bp, bs, ap, as_


def _vwap(p: list, s: list, q: float) -> float:
    """The volume-weighted price of ``q`` through one side, NaN if it holds less
    (``arbitrage._walk`` in plain floats)."""
    need = q * (1.0 - _FILL_TOL)
    cum = notional = 0.0
    for px, sz in zip(p, s):
        if cum + sz >= need:
            return (notional + min(q - cum, sz) * px) / q
        cum += sz
        notional += px * sz
    return math.nan


# -- the route ------------------------------------------------------------------------------------
class ArbRoute:
    """One route's trader: rolling premium level, position, legs in flight, counters.
    ``on_books`` per book update, ``on_fill``/``on_leg_done`` as the legs report back."""

    def __init__(self, spec: RouteSpec, params: RouteParams, inventory: Inventory, clock: Clock,
                 strategy_id: int = 2):
        self.spec = spec
        self.p = params
        self.inventory = inventory
        self.clock = clock
        self.strategy_id = strategy_id
        q = arb.common_qty(params.qty, spec.krw_rules, spec.usdt_rules)
        if isinstance(q, arb.Denial):
            raise ValueError(f"route {spec.index}: {q.reason}")
        self.qty = q                                # Decimal, on both lot steps
        self._qty_f = float(q)
        self._ring = [0.0] * params.window          # mid premiums (bps), a ring
        self._n = 0                                 # samples seen
        self._sum = 0.0
        self.position = 0.0     # coins this route sold net on the Korean venue (filled legs)
        self.legs: dict[int, _Leg] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._template = {}                         # a pair's fixed fields, by "the Korean venue sells"
        for korean_sells in (True, False):
            t = np.zeros(2, INTENT)
            t["symbol_id"] = (spec.krw_symbol_id, spec.usdt_symbol_id) if korean_sells \
                else (spec.usdt_symbol_id, spec.krw_symbol_id)
            t["side"] = (SIDE_SELL, SIDE_BUY)
            t["strategy_id"] = strategy_id
            t["order_type"] = ORDER_LIMIT
            t["tif"] = TIF_IOC
            self._template[korean_sells] = t
        self._seen: list[tuple[Book | None, tuple | None]] = [(None, None), (None, None)]
        self.denials: dict[str, int] = {}           # the code of each bad book / refused pricing
        self.last_denial: arb.Denial | None = None
        self.last_mid_bps = math.nan
        self.last_edges = _NO_EDGES                 # (sell Korea, sell Binance), bps over the mean
        self.may_open = True    # False: parked by route selection (route_select.py): unwinds only

    # -- rolling level ------------------------------------------------------------------------
    @property
    def premium_mean(self) -> float:
        """Mean mid premium (bps) of the last ``window`` samples; NaN before any."""
        k = min(self._n, self.p.window)
        return self._sum / k if k else math.nan

    def _push(self, x: float) -> None:
        w = self.p.window
        i = self._n % w
        if self._n >= w:
            self._sum -= self._ring[i]
        self._ring[i] = x
        self._n += 1
        if i == w - 1:                              # once a lap: no float drift in the sum
            self._sum = math.fsum(self._ring[:min(self._n, w)])
        else:
            self._sum += x

    # -- a book update ------------------------------------------------------------------------
    def _checked(self, book: Book, venue: int) -> tuple[list, list, list, list] | None:
        """``_lists`` of ``book``, from the last call when it is the same Book object: an
        update changes one venue's book, the other was checked when it came (a Book is
        not changed once handed over)."""
        cached = self._seen[venue]
        if cached[0] is book:
            return cached[1]
        lists = _lists(book)
        self._seen[venue] = (book, lists)
        return lists

    def _refuse(self, counter: str, denial: arb.Denial | None = None) -> np.ndarray:
        self.counters[counter] += 1
        if denial is not None:
            self.denials[denial.code] = self.denials.get(denial.code, 0) + 1
            self.last_denial = denial
        return _NO_INTENTS

    def on_books(self, krw_book: Book, usdt_book: Book, krw_per_usdt: float | None,
                 fx_ts_ns: int | None, update_seq: int, ts_origin_ns: int | None = None) -> np.ndarray:
        """A book update of either venue: the route's two current books, KRW per USDT and
        when that rate was observed (UTC ns), ``update_seq`` the update's own sequence
        (the feed's), ``ts_origin_ns`` when it left the venue (default: the newer
        book's time). Returns no INTENT row (a counter says why) or two: the sell leg,
        then the buy leg."""
        self.counters["updates"] += 1
        self.last_edges = _NO_EDGES                 # this update's, once it gets that far
        p = self.p
        now = self.clock.time_ns()
        fx = krw_per_usdt
        if not isinstance(fx, (int, float)) or isinstance(fx, bool) or not (0 < fx < _INF):
            return self._refuse("no_fx", arb.Denial(arb.BAD_FX, f"KRW per USDT {fx!r}"))
        if fx_ts_ns is None or now - fx_ts_ns > p.max_fx_age_ns:
            return self._refuse("stale_fx", arb.Denial("FX_STALE", f"rate of {fx_ts_ns}, now {now}"))
        kl = self._checked(krw_book, 0)
        ul = self._checked(usdt_book, 1) if kl is not None else None
        if ul is None:
            for venue, book in ((self.spec.krw_venue, krw_book), (self.spec.usdt_venue, usdt_book)):
                d = arb.check_book(book)
                if d is not None:
                    return self._refuse("bad_book", arb.Denial(d.code, f"{venue}: {d.reason}"))
            return self._refuse("bad_book", arb.Denial(arb.BOOK_SHAPE, "not 1-D float arrays"))
        ta, tb = krw_book.ts_ns, usdt_book.ts_ns
        if ta is None or tb is None or abs(ta - tb) > p.max_skew_ns:
            return self._refuse("books_apart", arb.Denial(arb.BOOKS_APART, f"books at {ta} and {tb}"))
        if p.max_book_age_ns is not None and now - min(ta, tb) > p.max_book_age_ns:
            return self._refuse("stale_book", arb.Denial("BOOK_STALE", f"book of {min(ta, tb)}, now {now}"))

        kbp, kbs, kap, kas = kl
        ubp, ubs, uap, uas = ul
        mid = ((kbp[0] + kap[0]) * 0.5 / fx / ((ubp[0] + uap[0]) * 0.5) - 1.0) * 1e4
        self.last_mid_bps = mid
        warm = self._n >= p.window
        mean = self.premium_mean
        self._push(mid)
        if not warm:
            return self._refuse("warmup")

        # screen both directions with float walks
        q = self._qty_f
        fk, fu = self.spec.krw_taker_bps * 1e-4, self.spec.usdt_taker_bps * 1e-4
        edge_k = edge_u = -_INF
        sk, bu = _vwap(kbp, kbs, q), _vwap(uap, uas, q)        # sell Korea, buy Binance
        if sk == sk and bu == bu:
            edge_k = ((sk / fx * (1 - fk)) / (bu * (1 + fu)) - 1.0) * 1e4 - mean
        su, bk = _vwap(ubp, ubs, q), _vwap(kap, kas, q)        # sell Binance, buy Korea
        if su == su and bk == bk:
            edge_u = ((su * (1 - fu)) / (bk / fx * (1 + fk)) - 1.0) * 1e4 + mean
        self.last_edges = (edge_k, edge_u)
        wanted = []
        flat = q * 1e-9                 # a position of float noise left by fills is none
        for direction, edge, reduces in ((SELL_KRW, edge_k, self.position < -flat),
                                         (SELL_USDT, edge_u, self.position > flat)):
            need = p.exit_bps if reduces else p.entry_bps
            if edge >= need - _SCREEN_TOL_BPS:
                wanted.append((edge - need, direction, reduces))
        if not self.may_open and wanted:
            wanted = [w for w in wanted if w[2]]    # parked: an unwind only
            if not wanted:
                return self._refuse("parked")
        if not wanted:
            return self._refuse("below_threshold")
        if self.legs:
            return self._refuse("legs_open")
        wanted.sort(reverse=True)
        refused = "below_threshold"
        for _, direction, reduces in wanted:
            out = self._pair(direction, reduces, krw_book, usdt_book, fx, mean, update_seq,
                             max(ta, tb) if ts_origin_ns is None else ts_origin_ns, now)
            if isinstance(out, np.ndarray):
                self.counters["pairs"] += 1
                return out
            refused = out
        return self._refuse(refused)

    def _pair(self, direction: str, reduces: bool, krw_book: Book, usdt_book: Book, fx: float,
              mean: float, update_seq: int, ts_origin_ns: int, now: int) -> np.ndarray | str:
        """Both legs of ``direction`` priced in full, checked and funded; the counter's
        name when they are not."""
        s, p = self.spec, self.p
        kvb = VenueBook(s.krw_venue, krw_book, s.krw_rules, s.krw_taker_bps)
        uvb = VenueBook(s.usdt_venue, usdt_book, s.usdt_rules, s.usdt_taker_bps)
        sell_korea = direction == SELL_KRW
        sell_vb, buy_vb = (kvb, uvb) if sell_korea else (uvb, kvb)
        qty = self.qty

        def price(q: Decimal) -> tuple[Premium | arb.Denial, float]:
            r = arb.one_way_checked(sell_vb, buy_vb, q, 1 / fx if sell_korea else 1.0,
                                    1.0 if sell_korea else 1 / fx, direction, fx)
            e = math.nan if isinstance(r, arb.Denial) else (r.net_bps - mean if sell_korea
                                                              else r.net_bps + mean)
            return r, e

        prem, edge = price(qty)
        if not isinstance(prem, arb.Denial) and (edge < p.entry_bps or (reduces and not self.may_open)):
            if not reduces or edge < p.exit_bps:
                return "below_threshold"
            held = arb.common_qty(abs(self.position), s.krw_rules, s.usdt_rules)
            if isinstance(held, arb.Denial):        # less than a lot left to unwind
                self._count_denial(held)
                return "priced_out"
            if held < qty:                          # an unwind: at most what is held
                qty = held
                prem, edge = price(qty)
                if not isinstance(prem, arb.Denial) and edge < p.exit_bps:
                    return "below_threshold"
        if isinstance(prem, arb.Denial):
            self._count_denial(prem)
            return "priced_out"
        reason = REASON_EXIT if reduces else REASON_ENTRY
        return self._legs(prem, sell_vb, buy_vb, qty, reason, update_seq, ts_origin_ns, now)

    def _count_denial(self, d: arb.Denial) -> None:
        self.denials[d.code] = self.denials.get(d.code, 0) + 1
        self.last_denial = d

    def _legs(self, prem: Premium, sell_vb: VenueBook, buy_vb: VenueBook, qty: Decimal, reason: int,
              update_seq: int, ts_origin_ns: int, now: int) -> np.ndarray | str:
        s, band = self.spec, self.p.band_bps * 1e-4
        asset = s.asset
        sell = arb.round_order(sell_vb.rules, SIDE_SELL, qty, float(prem.sell_limit) * (1 - band),
                               math.nan)
        buy = arb.round_order(buy_vb.rules, SIDE_BUY, qty, float(prem.buy_limit) * (1 + band), math.nan)
        for r in (sell, buy):
            if isinstance(r, arb.Denial):
                self._count_denial(r)
                return "band_rounding"
        q = float(qty)
        if self.inventory.free_coins(sell_vb.venue, asset) < q:
            return "no_coins"
        cash = q * float(buy.price) * (1 + buy_vb.taker_bps * 1e-4)
        if self.inventory.free_cash(buy_vb.venue) < cash:
            return "no_cash"
        korean_sells = sell_vb.venue == s.krw_venue
        rows = self._template[korean_sells].copy()
        base = ((s.index + 1) << SEQ_BITS) | ((int(update_seq) & UPDATE_MASK) << 1)
        rows["seq"] = (base | LEG_SELL, base | LEG_BUY)
        rows["limit_price"] = (float(sell.price), float(buy.price))
        rows["ref_price"] = (prem.sell_vwap, prem.buy_vwap)
        rows["ts_origin_ns"] = ts_origin_ns
        rows["ts_ns"] = now
        rows["signal_seq"] = int(update_seq) & ((1 << 64) - 1)
        rows["reason"] = reason
        rows["qty"] = q
        inv = self.inventory
        inv.reserved_coins[(sell_vb.venue, asset)] = inv.reserved_coins.get((sell_vb.venue, asset), 0.0) + q
        inv.reserved_cash[buy_vb.venue] = inv.reserved_cash.get(buy_vb.venue, 0.0) + cash
        self.legs[int(rows["seq"][0])] = _Leg(sell_vb.venue, SIDE_SELL, q, 0.0, korean_sells)
        self.legs[int(rows["seq"][1])] = _Leg(buy_vb.venue, SIDE_BUY, q, cash, not korean_sells)
        return rows

    # -- restart --------------------------------------------------------------------------------------
    def state(self) -> dict:
        """What a restart needs to go on where this core stopped, JSON-able: the rolling
        window (oldest first), the position and the legs in flight. With it, a restarted
        core fed the same update derives the same pair, seqs included."""
        w, n = self.p.window, self._n
        ring = self._ring[n % w:] + self._ring[:n % w] if n >= w else self._ring[:n]
        return {"window": ring, "samples": n, "position": self.position,
                "legs": {str(k): [g.venue, g.side, g.qty_left, g.cash_left, g.korean]
                         for k, g in self.legs.items()}}

    def restore(self, state: dict) -> None:
        """Go on from ``state()`` (the inventory is restored on its own: it is shared)."""
        w = self.p.window
        samples = [float(x) for x in state["window"]][-w:]
        m = len(samples)
        n = max(int(state["samples"]), m) if m == w else m      # a window of another length: refill
        self._ring = [0.0] * w
        for k, x in enumerate(samples):             # the oldest where the next sample goes
            self._ring[(n - m + k) % w] = x
        self._n, self._sum = n, math.fsum(samples)
        self.position = float(state["position"])
        self.legs = {int(k): _Leg(v[0], int(v[1]), float(v[2]), float(v[3]), bool(v[4]))
                     for k, v in state["legs"].items()}

    # -- fills ------------------------------------------------------------------------------------
    def on_fill(self, seq: int, qty: float, price: float, fee_quote: float = 0.0,
                fee_coin: float = 0.0, done: bool = False) -> None:
        """A fill of the leg ``seq``: ``qty`` at ``price`` (the venue's quote), fees in
        quote and in coin (Binance takes a buy's fee in the coin). Moves inventory from
        reserved to spent and the route's position; ``done``: the leg is over (an IOC
        has no remainder after its fills)."""
        leg = self.legs.get(int(seq))
        if leg is None:
            self.counters["unknown_fill"] += 1
            return
        self.counters["fills"] += 1
        inv, asset = self.inventory, self.spec.asset
        key = (leg.venue, asset)
        q = min(float(qty), leg.qty_left)
        notional = q * float(price)
        if leg.side == SIDE_SELL:
            inv.coins[key] = inv.coins.get(key, 0.0) - q - fee_coin
            inv.cash[leg.venue] = inv.cash.get(leg.venue, 0.0) + notional - fee_quote
            inv.reserved_coins[key] -= q
        else:
            inv.coins[key] = inv.coins.get(key, 0.0) + q - fee_coin
            inv.cash[leg.venue] = inv.cash.get(leg.venue, 0.0) - notional - fee_quote
            release = min(leg.cash_left, leg.cash_left * q / leg.qty_left)
            inv.reserved_cash[leg.venue] -= release
            leg.cash_left -= release
        if leg.korean:
            self.position += q if leg.side == SIDE_SELL else -q
        leg.qty_left -= q
        if done or leg.qty_left <= 0:
            self.on_leg_done(seq)

    def on_leg_done(self, seq: int) -> None:
        """The leg ``seq`` is over (filled, cancelled, rejected): what it still reserved
        is free again."""
        leg = self.legs.pop(int(seq), None)
        if leg is None:
            return
        inv = self.inventory
        if leg.side == SIDE_SELL:
            inv.reserved_coins[(leg.venue, self.spec.asset)] -= leg.qty_left
        else:
            inv.reserved_cash[leg.venue] -= leg.cash_left
