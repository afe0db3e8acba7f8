"""The four-tier risk guard (issue 11): every intent passes it before it becomes an order.

Tiers: one global, one per venue, one per route (a strategy trading one asset on several
venues), one per symbol id. Each tier instance has a ``TradingState``: ACTIVE, REDUCING (only
intents that move their symbol's position toward zero pass) or HALTED (nothing but cancels).
An intent is held to the most restrictive of its global, venue, route and symbol tiers.

Two kinds of rule, each with its own ``Denial`` code:

* condition rules look at the world (``MarketView``) at the start of each ``check`` and move a
  tier: kill switch, daily loss, drawdown, gross exposure over its limit (global); feed
  unhealthy, exposure over its limit (venue); inventory imbalance over its limit (route);
  position over its limit, stale quote, no fresh FX rate for its quote currency (symbol). An automatic state comes back by itself when
  its condition clears, except the latched ones (daily loss until the next UTC day, drawdown
  until ``resume``), because a loss that bounces back within the day is no reason to trust the
  strategy again. Manual states (``halt``) go only by ``resume``; the kill switch only by
  ``kill_switch(False)``. A tier blocks with the code of the cause that set it (HALTED /
  REDUCING_ONLY for a manual halt), so the counters say *why* trading stopped.
* order rules deny one intent and move nothing: bad input, order notional, spread, price band,
  a stale intent that does not reduce (its model stage stale, or older than ``max_intent_age_s``
  from its tick), and the limits an intent would push past (position, gross and venue exposure, route
  imbalance, open legs, open orders, order rate). An intent that reduces exposure never breaches
  an exposure limit; open orders and order rate bind every intent, since a venue ban is worse.

Money figures (exposures, notionals, the limits) are in the account's currency: a symbol
quoted in another is valued at ``MarketView.fx`` (workers/execution/fx.py); one with no rate
at all is denied ``FX_RATE`` outright, since nothing can size it.

Every state change is kept as a ``RiskEvent`` for the caller to journal (``drain_events``);
``state()`` / ``restore()`` carry the tiers and counters across restarts. Pure: numpy in, numpy
out, a clock passed in.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import IntEnum

import numpy as np

from pipeline.clock import Clock
from pipeline.config import RiskConfig, check_risk
from shm.records import FLAG_STALE, INTENT, ORDER_LIMIT, ORDER_MARKET, SIDE_BUY, SIDE_SELL, TIF_GTC, TIF_POST_ONLY

DAY_NS = 86_400 * 1_000_000_000
FOREVER_NS = 2**62          # a latch that only ``resume`` lifts
NO_LATCH = -1               # the cause goes as soon as its condition clears
STATE_VERSION = 1
DUST_NOTIONAL = 1e-8        # a notional below this (quote currency) is zero: below any venue's minimum
_REDUCING, _HALTED = 1, 2   # TradingState as plain ints: numpy compares an IntEnum slowly


class TradingState(IntEnum):
    """Ordered by restriction, so the effective state of several tiers is their max."""
    ACTIVE = 0
    REDUCING = 1
    HALTED = 2


class Tier(IntEnum):
    """Ordered by precedence: when two tiers are equally restrictive the first one names the cause."""
    GLOBAL = 0
    VENUE = 1
    ROUTE = 2
    SYMBOL = 3


class Denial(IntEnum):
    """One code per reason an intent is refused; 0 passed. Stable: counters and journals use them."""
    PASSED = 0
    BAD_INPUT = 1
    HALTED = 2
    REDUCING_ONLY = 3
    KILL_SWITCH = 4
    DAILY_LOSS = 5
    DRAWDOWN = 6
    GROSS_EXPOSURE = 7
    VENUE_EXPOSURE = 8
    OPEN_ORDERS = 9
    ORDER_RATE = 10
    VENUE_UNHEALTHY = 11
    ROUTE_IMBALANCE = 12
    OPEN_LEGS = 13
    POSITION_LIMIT = 14
    ORDER_NOTIONAL = 15
    SPREAD = 16
    PRICE_BAND = 17
    STALE_QUOTE = 18
    STALE_INTENT = 19
    IN_FLIGHT = 20          # the desk's own rules, after the guard: counted here, one table of codes
    VENUE_RULES = 21
    FX_RATE = 22            # the symbol's quote currency has no fresh rate into the account's
    HEDGE_OPEN = 23         # a route's hedge obligation open past its time limit (execution sets it)
    PAIR_LEG = 24           # the other leg of its route pair was refused (execution's rule)
    ROUTE_HEALTH = 25       # the route's health score under its minimum (execution sets it)


DENIAL_TEXT = {
    Denial.PASSED: "passed",
    Denial.BAD_INPUT: "bad input: unknown symbol, side, type or time in force; NaN, zero or "
                      "negative quantity or price; zero notional; a market order with a limit price or "
                      "post-only; or invalid account figures",
    Denial.HALTED: "halted by hand: nothing but cancels",
    Denial.REDUCING_ONLY: "reducing-only by hand: only intents that move a position toward zero",
    Denial.KILL_SWITCH: "kill switch on: nothing but cancels",
    Denial.DAILY_LOSS: "daily loss limit reached",
    Denial.DRAWDOWN: "drawdown from the equity peak past its limit",
    Denial.GROSS_EXPOSURE: "gross exposure limit",
    Denial.VENUE_EXPOSURE: "exposure limit of the venue",
    Denial.OPEN_ORDERS: "too many resting orders on the venue",
    Denial.ORDER_RATE: "order rate limit of the venue",
    Denial.VENUE_UNHEALTHY: "venue feed disconnected or stale",
    Denial.ROUTE_IMBALANCE: "inventory imbalance limit of the route",
    Denial.OPEN_LEGS: "too many open legs on the route",
    Denial.POSITION_LIMIT: "position limit of the symbol",
    Denial.ORDER_NOTIONAL: "order notional limit",
    Denial.SPREAD: "spread too wide (or no two-sided quote) for a market order",
    Denial.PRICE_BAND: "price outside the band around the last trade (or no last trade)",
    Denial.STALE_QUOTE: "quote of the symbol is stale",
    Denial.STALE_INTENT: "stale intent (from a stale model stage, or older than risk.max_intent_age_s "
                         "from its tick): it may only reduce a position",
    Denial.IN_FLIGHT: "an order for the symbol is still unanswered (or a crash left it unresolved)",
    Denial.VENUE_RULES: "no valid order after the venue's tick, lot and notional rules",
    Denial.FX_RATE: "no fresh rate from the symbol's quote currency into the account currency",
    Denial.HEDGE_OPEN: "a hedge obligation of the route open past its time limit",
    Denial.PAIR_LEG: "the other leg of its route pair was refused: a pair goes whole or not at all",
    Denial.ROUTE_HEALTH: "the route's health (feeds, book age, ack latency, fill ratio, slippage) too low",
}


def _state(x) -> TradingState:
    """A configured state: "reducing" / "halted" (or a TradingState)."""
    return x if isinstance(x, TradingState) else TradingState[str(x).upper()]


@dataclass
class MarketView:
    """What the guard needs to know of the world, arrays indexed by symbol id or venue index.
    ``position`` should include the caller's working orders (what may still fill)."""
    position: np.ndarray        # float64[n_symbols], signed base quantity
    last: np.ndarray            # float64[n_symbols], last trade price (NaN: none yet)
    bid: np.ndarray             # float64[n_symbols]
    ask: np.ndarray             # float64[n_symbols]
    quote_ns: np.ndarray        # int64[n_symbols], when the quote was received (0: never)
    venue_connected: np.ndarray  # bool[n_venues], feed connected (not reconnecting)
    venue_last_ns: np.ndarray   # int64[n_venues], last feed message
    open_orders: np.ndarray     # int64[n_venues], resting orders now
    equity: float
    equity_peak: float
    day_start_equity: float
    # account currency per unit of each symbol's quote currency (workers/execution/fx.py;
    # NaN: no rate known) and whether that rate is fresh; None: every symbol is in it
    fx: np.ndarray | None = None
    fx_fresh: np.ndarray | None = None

    @classmethod
    def empty(cls, n_symbols: int, n_venues: int) -> "MarketView":
        """No prices, no positions, every feed down: a guard fed this lets nothing new open."""
        nan = np.full(n_symbols, np.nan)
        return cls(np.zeros(n_symbols), nan.copy(), nan.copy(), nan.copy(), np.zeros(n_symbols, np.int64),
                   np.zeros(n_venues, bool), np.zeros(n_venues, np.int64), np.zeros(n_venues, np.int64),
                   0.0, 0.0, 0.0)


@dataclass
class RiskEvent:
    """A tier's cause set or lifted; the caller journals it."""
    tier: str
    key: str | int | None
    old: str
    new: str
    code: str
    reason: str
    ts_ns: int
    manual: bool

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Cause:
    state: TradingState
    reason: str
    manual: bool
    since_ns: int
    until_ns: int = NO_LATCH


@dataclass
class _Grouped:
    """The rows of a batch grouped by a key, laid out so that a running sum per key is one
    sequential cumsum along axis 1 starting from the key's value (no subtraction, so the sums
    round exactly as adding the intents one by one would)."""
    keys: np.ndarray
    order: np.ndarray = field(init=False)
    uniq: np.ndarray = field(init=False)
    row: np.ndarray = field(init=False)
    col: np.ndarray = field(init=False)
    shape: tuple = field(init=False)

    def __post_init__(self):
        self.order = np.argsort(self.keys, kind="stable")
        self.uniq, start, counts = np.unique(self.keys[self.order], return_index=True, return_counts=True)
        self.row = np.repeat(np.arange(len(self.uniq)), counts)
        self.col = np.arange(len(self.keys)) - start[self.row]
        self.shape = (len(self.uniq), int(counts.max(initial=0)) + 1)

    def before(self, start: np.ndarray, x: np.ndarray) -> np.ndarray:
        """start[key] plus x of the earlier rows of the same key, per row (x in batch order)."""
        groups, width = self.shape
        if width == 2:                          # every key once (a symbol per intent): its start
            return start[self.keys].astype(np.float64)
        if groups == 1:                         # one key (one venue, no route): one running sum
            c = np.empty(len(self.keys) + 1)
            c[0] = start[self.uniq[0]]
            c[1:] = x
            return np.cumsum(c)[:-1]
        m = np.zeros(self.shape)
        m[:, 0] = start[self.uniq]
        m[self.row, self.col + 1] = x[self.order]
        c = np.cumsum(m, axis=1)
        out = np.empty(len(self.keys))
        out[self.order] = c[self.row, self.col]
        return out


def _valid(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x) & (x > 0)


def _ok(x: float) -> bool:
    """`_valid` of one plain float."""
    return x > 0 and x != math.inf


def _plain(x) -> list:
    """An array's values as plain Python numbers (a list as it is)."""
    return x.tolist() if x.__class__ is np.ndarray else x


def _float64(*arrays) -> bool:
    """Whether the arrays are float64 ndarrays: plain floats then compute as numpy does."""
    return all(type(a) is np.ndarray and a.dtype == np.float64 for a in arrays)


class RiskGuard:
    """Checks a step's intents in one batch; keeps the tiers' states, the counters and the
    per-venue order-rate buckets. ``venue_of`` maps symbol id -> venue index into ``venues``;
    ``route_of`` maps symbol id -> route index (-1: the symbol is on no route). ``symbols``
    and ``routes``, their names by index where known: a symbol's or route's causes are then
    journaled, restored and told by name, so a config that lists them in another order
    after a restart does not move a halt or a latch onto another one."""

    def __init__(self, n_symbols: int, venue_of: np.ndarray, venues: list[str], limits: RiskConfig,
                 clock: Clock, route_of: np.ndarray | None = None, saved: dict | None = None,
                 symbols: list[str] | None = None, routes: list[str] | None = None):
        self.n_symbols = int(n_symbols)
        self.venues = list(venues)
        self.venue_of = np.asarray(venue_of, np.int64)
        if self.venue_of.shape != (self.n_symbols,) or (self.n_symbols and not (
                0 <= self.venue_of.min() and self.venue_of.max() < len(self.venues))):
            raise ValueError("venue_of must map every symbol id to an index into venues")
        self.route_of = (np.full(self.n_symbols, -1, np.int64) if route_of is None
                         else np.asarray(route_of, np.int64))
        if self.route_of.shape != (self.n_symbols,) or (self.n_symbols and self.route_of.min() < -1):
            raise ValueError("route_of must map every symbol id to a route index or -1")
        self.n_routes = int(self.route_of.max(initial=-1)) + 1
        self._names = {Tier.SYMBOL: list(symbols) if symbols is not None else None,
                       Tier.ROUTE: list(routes) if routes is not None else None}
        for tier, size in ((Tier.SYMBOL, self.n_symbols), (Tier.ROUTE, self.n_routes)):
            names = self._names[tier]
            if names is not None and (len(names) != size or len(set(names)) != size):
                raise ValueError(f"{tier.name.lower()} names must be {size} distinct names, one per index")
        check_risk(limits)
        self.limits = limits
        self._loss_state, self._drawdown_state = _state(limits.daily_loss_state), _state(limits.drawdown_state)
        if TradingState.ACTIVE in (self._loss_state, self._drawdown_state):
            raise ValueError("daily_loss_state and drawdown_state must be REDUCING or HALTED")
        self.clock = clock
        self._sizes = {Tier.GLOBAL: 1, Tier.VENUE: len(self.venues), Tier.ROUTE: self.n_routes,
                       Tier.SYMBOL: self.n_symbols}
        self._causes: dict[tuple[Tier, int], dict[Denial, _Cause]] = {}
        self._has: dict[tuple[Tier, Denial], np.ndarray] = {}     # which keys hold a cause, per code
        self._eff: tuple[np.ndarray, np.ndarray] | None = None      # per symbol, redone on a change
        self._state = {t: np.zeros(n, np.int8) for t, n in self._sizes.items()}
        self._code = {t: np.zeros(n, np.uint8) for t, n in self._sizes.items()}
        self._counts = np.zeros(len(Denial), np.int64)
        self._events: list[RiskEvent] = []
        self._tokens = np.full(len(self.venues), float(limits.order_burst))
        self._tokens_ns = clock.time_ns()
        if saved is not None:
            self.restore(saved)

    # -- tiers ----------------------------------------------------------------------------------
    def _key_name(self, tier: Tier, idx: int) -> str | int | None:
        if tier == Tier.GLOBAL:
            return None
        if tier == Tier.VENUE:
            return self.venues[idx]
        names = self._names[tier]
        return idx if names is None else names[idx]

    def _index(self, tier: Tier | str, key) -> tuple[Tier, int]:
        """A tier's index of ``key``: a name (venue, symbol, route) or an index (as journals
        before names were kept have them)."""
        tier = Tier[tier.upper()] if isinstance(tier, str) else Tier(tier)
        if tier == Tier.GLOBAL:
            return tier, 0
        if tier == Tier.VENUE and isinstance(key, str):
            if key not in self.venues:
                raise ValueError(f"unknown venue {key!r}; venues are {self.venues}")
            return tier, self.venues.index(key)
        if isinstance(key, str) and self._names.get(tier) is not None:
            names = self._names[tier]
            if key not in names:
                raise ValueError(f"unknown {tier.name.lower()} {key!r}: not in this config")
            return tier, names.index(key)
        if key is None or isinstance(key, bool) or not 0 <= int(key) < self._sizes[tier]:
            raise ValueError(f"{tier.name.lower()} key {key!r} out of range 0..{self._sizes[tier] - 1}")
        return tier, int(key)

    def _set(self, tier: Tier, idx: int, code: Denial, cause: _Cause | None) -> None:
        """Set (or with None lift) one cause of one tier instance; record the event."""
        causes = self._causes.setdefault((tier, idx), {})
        old = TradingState(int(self._state[tier][idx]))
        gone = causes.pop(code, None)
        if cause is not None:
            causes[code] = cause
        elif gone is None:
            return
        if causes:
            top_code, top = max(causes.items(), key=lambda kv: kv[1].state)
            self._state[tier][idx], self._code[tier][idx] = top.state, top_code
        else:
            del self._causes[(tier, idx)]
            self._state[tier][idx], self._code[tier][idx] = TradingState.ACTIVE, Denial.PASSED
        has = self._has.setdefault((tier, code), np.zeros(self._sizes[tier], bool))
        has[idx] = cause is not None
        self._eff = None
        new = TradingState(int(self._state[tier][idx]))
        what = cause if cause is not None else gone
        reason = what.reason if cause is not None else f"cleared: {gone.reason}"
        self._events.append(RiskEvent(tier.name.lower(), self._key_name(tier, idx), old.name, new.name,
                                      code.name, reason, self.clock.time_ns(), what.manual))

    def tier_state(self, tier: Tier | str, key=None) -> TradingState:
        tier, idx = self._index(tier, key)
        return TradingState(int(self._state[tier][idx]))

    def tier_code(self, tier: Tier | str, key=None) -> Denial:
        """The code a tier denies with: its most restrictive cause."""
        tier, idx = self._index(tier, key)
        return Denial(int(self._code[tier][idx]))

    def halt(self, tier: Tier | str, key=None, reducing: bool = False, reason: str = "manual") -> None:
        """`pipeline halt`: HALTED (or REDUCING) by hand, until ``resume``."""
        tier, idx = self._index(tier, key)
        code, state = ((Denial.REDUCING_ONLY, TradingState.REDUCING) if reducing
                       else (Denial.HALTED, TradingState.HALTED))
        other = Denial.HALTED if reducing else Denial.REDUCING_ONLY
        if other in self._causes.get((tier, idx), {}):
            self._set(tier, idx, other, None)
        self._set(tier, idx, code, _Cause(state, reason, True, self.clock.time_ns(), FOREVER_NS))

    def resume(self, tier: Tier | str, key=None) -> None:
        """`pipeline resume`: lift the manual halt and the latches (daily loss, drawdown) of one
        tier instance; a condition that still holds trips it again on the next check. The kill
        switch stays: only ``kill_switch(False)`` lifts it."""
        tier, idx = self._index(tier, key)
        for code, cause in list(self._causes.get((tier, idx), {}).items()):
            if code != Denial.KILL_SWITCH and (cause.manual or cause.until_ns != NO_LATCH):
                self._set(tier, idx, code, None)

    def kill_switch(self, on: bool, reason: str = "kill switch") -> None:
        """Global HALTED that nothing but ``kill_switch(False)`` lifts."""
        if on:
            self._set(Tier.GLOBAL, 0, Denial.KILL_SWITCH,
                      _Cause(TradingState.HALTED, reason, True, self.clock.time_ns(), FOREVER_NS))
        else:
            self._set(Tier.GLOBAL, 0, Denial.KILL_SWITCH, None)

    def flag(self, tier: Tier | str, key, code: Denial, on: bool, reason: str = "") -> None:
        """A condition the caller watches (a hedge obligation overdue): REDUCING with ``code``
        while ``on``, lifted when it is not; set and lifted only by the caller."""
        tier, idx = self._index(tier, key)
        held = code in self._causes.get((tier, idx), {})
        if on and not held:
            self._set(tier, idx, code, _Cause(TradingState.REDUCING, reason, False, self.clock.time_ns(),
                                              FOREVER_NS))
        elif not on and held:
            self._set(tier, idx, code, None)

    @staticmethod
    def allows_cancel() -> bool:
        """Cancels always pass, in every state: taking an order off the book only lowers risk,
        and a HALTED tier must still be able to clean up its resting orders."""
        return True

    def _sync(self, tier: Tier, code: Denial, holds: np.ndarray | bool, state: TradingState, why, now: int,
              latch_ns: int = NO_LATCH) -> None:
        """Make the automatic causes ``code`` of a tier match ``holds`` (one bool per key, or one
        plain bool for a tier of one key); only the keys that changed cost a Python step."""
        has = self._has.get((tier, code))
        if has is None:
            has = self._has[(tier, code)] = np.zeros(self._sizes[tier], bool)
        if holds.__class__ is bool:             # one key (the global tier): no numpy at all
            if holds == has[0]:
                return
            changed, holds = (0,), (holds,)
        else:
            changed = holds != has
            if not changed.any():               # the common case: nothing moved (one numpy call)
                return
            changed = np.flatnonzero(changed)
        for idx in changed:
            idx = int(idx)
            if holds[idx]:
                self._set(tier, idx, code, _Cause(state, why(idx), False, now, latch_ns))
            else:
                until = self._causes[(tier, idx)][code].until_ns
                if until == NO_LATCH or now >= until:
                    self._set(tier, idx, code, None)

    def _evaluate(self, mv: MarketView, now: int) -> dict:
        """The condition rules: move the tiers to match the world; returns the figures the order
        rules start from."""
        lim = self.limits
        n = self.n_symbols
        per_symbol, per_venue = (n,), (len(self.venues),)
        for name in ("position", "last", "bid", "ask", "quote_ns"):
            a = getattr(mv, name)
            if (a.shape if a.__class__ is np.ndarray else np.shape(a)) != per_symbol:
                raise ValueError(f"MarketView.{name} must have one entry per symbol ({n})")
        for name in ("venue_connected", "venue_last_ns", "open_orders"):
            a = getattr(mv, name)
            if (a.shape if a.__class__ is np.ndarray else np.shape(a)) != per_venue:
                raise ValueError(f"MarketView.{name} must have one entry per venue ({len(self.venues)})")
        pos = np.asarray(mv.position, np.float64)
        mid = (mv.bid + mv.ask) / 2
        fx = np.ones(n) if mv.fx is None else np.asarray(mv.fx, np.float64)
        # money in the account currency: a KRW symbol's mark times KRW -> USDT
        mark = np.where(_valid(mv.last), mv.last, np.where(_valid(mid), mid, np.nan)) * fx
        expo = np.where(pos != 0, np.abs(pos) * mark, 0.0)       # NaN: a position nothing values
        signed = np.where(pos != 0, pos * mark, 0.0)
        gross = float(expo.sum())
        venue_expo = np.bincount(self.venue_of, expo, minlength=len(self.venues))
        if self.n_routes:
            on_route = self.route_of >= 0
            route_net = np.bincount(self.route_of[on_route], signed[on_route], minlength=self.n_routes)
            route_qty = np.bincount(self.route_of[on_route], pos[on_route], minlength=self.n_routes)
            route_legs = np.bincount(self.route_of[on_route], (pos[on_route] != 0).astype(float),
                                     minlength=self.n_routes)
        else:                                   # no routes: nothing to sum (a fresh empty each, as above)
            route_net, route_qty, route_legs = np.zeros(0), np.zeros(0), np.zeros(0)

        eq, peak, day = float(mv.equity), float(mv.equity_peak), float(mv.day_start_equity)
        acct_ok = math.isfinite(eq) and math.isfinite(peak) and math.isfinite(day) and peak > 0 and day > 0
        self._sync(Tier.GLOBAL, Denial.BAD_INPUT, not acct_ok, TradingState.REDUCING,
                   lambda _: f"invalid account figures: equity {eq}, peak {peak}, day start {day}", now)
        loss = (day - eq) / day if acct_ok else 0.0
        dd = (peak - eq) / peak if acct_ok else 0.0
        self._sync(Tier.GLOBAL, Denial.DAILY_LOSS, loss >= lim.max_daily_loss_frac,
                   self._loss_state, lambda _: f"daily loss {loss:.2%} >= {lim.max_daily_loss_frac:.2%}",
                   now, (now // DAY_NS + 1) * DAY_NS)
        self._sync(Tier.GLOBAL, Denial.DRAWDOWN, dd >= lim.max_drawdown_frac, self._drawdown_state,
                   lambda _: f"drawdown {dd:.2%} from peak {peak} >= {lim.max_drawdown_frac:.2%}",
                   now, FOREVER_NS)
        self._sync(Tier.GLOBAL, Denial.GROSS_EXPOSURE, not gross <= lim.max_gross_exposure,
                   TradingState.REDUCING, lambda _: f"gross exposure {gross:.2f} > {lim.max_gross_exposure}", now)

        silence_ns = now - np.asarray(mv.venue_last_ns, np.int64)
        unhealthy = ~np.asarray(mv.venue_connected, bool) | (silence_ns > lim.max_feed_silence_s * 1e9)
        self._sync(Tier.VENUE, Denial.VENUE_UNHEALTHY, unhealthy, TradingState.REDUCING,
                   lambda v: (f"feed of {self.venues[v]} " + ("disconnected" if not mv.venue_connected[v]
                              else f"silent {silence_ns[v] / 1e9:.1f}s")), now)
        self._sync(Tier.VENUE, Denial.VENUE_EXPOSURE, ~(venue_expo <= lim.max_venue_exposure),
                   TradingState.REDUCING,
                   lambda v: f"exposure on {self.venues[v]} {venue_expo[v]:.2f} > {lim.max_venue_exposure}", now)
        if self.n_routes:
            self._sync(Tier.ROUTE, Denial.ROUTE_IMBALANCE, ~(np.abs(route_net) <= lim.max_route_imbalance),
                       TradingState.REDUCING,
                       lambda r: f"route {r} imbalance {route_net[r]:.2f} beyond {lim.max_route_imbalance}", now)
        self._sync(Tier.SYMBOL, Denial.POSITION_LIMIT, ~(expo <= lim.max_position_notional),
                   TradingState.REDUCING,
                   lambda s: f"symbol {s} position notional {expo[s]:.2f} > {lim.max_position_notional}", now)
        if mv.fx_fresh is not None:
            self._sync(Tier.SYMBOL, Denial.FX_RATE, ~np.asarray(mv.fx_fresh, bool), TradingState.REDUCING,
                       lambda s: f"symbol {s}: no fresh rate of its quote currency into the account's",
                       now)
        if lim.max_quote_age_s:
            age_ns = now - np.asarray(mv.quote_ns, np.int64)
            self._sync(Tier.SYMBOL, Denial.STALE_QUOTE, age_ns > lim.max_quote_age_s * 1e9,
                       TradingState.REDUCING,
                       lambda s: f"symbol {s} quote {age_ns[s] / 1e9:.1f}s old > {lim.max_quote_age_s}s", now)
        return {"pos": pos, "mark": mark, "fx": fx, "gross": gross, "venue_expo": venue_expo,
                "route_net": route_net, "route_qty": route_qty, "route_legs": route_legs,
                "open_orders": np.asarray(mv.open_orders, np.float64)}

    def _refill(self, now: int) -> None:
        dt = max(now - self._tokens_ns, 0) / 1e9
        self._tokens = np.minimum(self._tokens + dt * self.limits.max_orders_per_s,
                                  float(self.limits.order_burst))
        self._tokens_ns = max(now, self._tokens_ns)

    def _effective(self) -> tuple[np.ndarray, np.ndarray]:
        """Per symbol: the most restrictive state of its four tiers and the code it denies with
        (ties go to the wider tier)."""
        if self._eff is not None:
            return self._eff
        on_route = self.route_of >= 0
        ridx = np.where(on_route, self.route_of, 0)
        route_state = (np.where(on_route, self._state[Tier.ROUTE][ridx], 0) if self.n_routes
                       else np.zeros(self.n_symbols, np.int8))
        route_code = (np.where(on_route, self._code[Tier.ROUTE][ridx], 0) if self.n_routes
                      else np.zeros(self.n_symbols, np.uint8))
        states = np.stack([np.broadcast_to(self._state[Tier.GLOBAL], (self.n_symbols,)),
                           self._state[Tier.VENUE][self.venue_of], route_state, self._state[Tier.SYMBOL]])
        codes = np.stack([np.broadcast_to(self._code[Tier.GLOBAL], (self.n_symbols,)),
                          self._code[Tier.VENUE][self.venue_of], route_code, self._code[Tier.SYMBOL]])
        top = np.argmax(states, axis=0)
        cols = np.arange(self.n_symbols)
        self._eff = states[top, cols], codes[top, cols]
        return self._eff

    # -- the check ------------------------------------------------------------------------------
    def check(self, intents: np.ndarray, market: MarketView) -> np.ndarray:
        """One Denial code (uint8) per intent, 0 = passed.

        First the condition rules move the tiers. Then the rules that need nothing but the intent
        and the market run vectorised over the batch (bad input, HALTED tiers, order notional,
        spread, price band). The rest depend on the intents before: an intent that passes counts
        toward the limits of the next ones (its position, exposure, resting order and rate token),
        one that is denied does not. They are computed for the whole batch at once as running
        sums per symbol, venue and route, assuming every candidate passes (the common case: done).
        Everything before the first breach did pass; from that intent on the same rules run one
        intent at a time on plain floats, so a batch full of denials costs one short Python loop,
        not one numpy pass per denial.

        An intent is *reducing* when it moves its symbol's position toward zero without crossing
        it. One that would cross (sell 3 of a long 2) is not reducing, and a REDUCING tier denies
        it whole rather than clipping it: a clipped order is a size the strategy never asked for,
        and a strategy that wants flat sends the exact quantity. On a route, an intent that brings
        the net of the route's legs toward zero without crossing it reduces too: re-hedging a leg
        that filled without its partner grows one symbol's position but closes the exposure."""
        if intents.dtype != INTENT:
            raise TypeError(f"intents must have the INTENT dtype, got {intents.dtype}")
        lim = self.limits
        now = self.clock.time_ns()
        self._refill(now)
        world = self._evaluate(market, now)
        n = len(intents)
        codes = np.zeros(n, np.uint8)
        if n == 0:
            return codes
        eff_state, eff_code = self._effective()
        if n == 1 and _float64(market.bid, market.ask, market.last):
            return self._check_one(intents, market, world, now, eff_state, eff_code)

        sym_raw = intents["symbol_id"].astype(np.int64)
        known = sym_raw < self.n_symbols
        s = np.where(known, sym_raw, 0)
        side = intents["side"].astype(np.int64)
        qty = intents["qty"]
        otype, tif = intents["order_type"], intents["tif"]
        is_limit = otype == ORDER_LIMIT
        limit_px, ref_px = intents["limit_price"], intents["ref_price"]
        own_px = np.where(is_limit, limit_px, ref_px)
        with np.errstate(all="ignore"):
            notional_in = qty * own_px
        bad = (~known | ((side != SIDE_BUY) & (side != SIDE_SELL))
               | ((otype != ORDER_MARKET) & ~is_limit) | ~((tif >= TIF_GTC) & (tif <= TIF_POST_ONLY))
               | (~is_limit & (~np.isnan(limit_px) | (tif == TIF_POST_ONLY)))   # a market order: no limit, no post-only
               | ~_valid(qty) | ~_valid(own_px) | ~_valid(ref_px) | ~(notional_in >= DUST_NOTIONAL))
        codes[bad] = int(Denial.BAD_INPUT)

        st, stc = eff_state[s], eff_code[s]
        codes[(codes == 0) & (st == _HALTED)] = stc[(codes == 0) & (st == _HALTED)]

        bid, ask, last = market.bid[s], market.ask[s], market.last[s]
        touch = np.where(side > 0, ask, bid)
        is_mkt = ~is_limit
        px = np.where(is_limit, limit_px, np.where(_valid(touch), touch, np.where(_valid(last), last, ref_px)))
        fx = world["fx"][s]
        with np.errstate(all="ignore"):
            order_notional = qty * px * fx
            mid = (bid + ask) / 2
            spread_bps = (ask - bid) / mid * 1e4
            band_bps = np.abs(px - last) / last * 1e4
        rules = [(~np.isfinite(fx), Denial.FX_RATE),
                 (~(order_notional <= lim.max_order_notional), Denial.ORDER_NOTIONAL)]
        if lim.max_spread_bps:
            quoted = _valid(bid) & _valid(ask) & (ask >= bid)
            rules.append((is_mkt & ~(quoted & (spread_bps <= lim.max_spread_bps)), Denial.SPREAD))
        rules.append((~(_valid(last) & (band_bps <= lim.price_band_bps)), Denial.PRICE_BAND))
        for hit, code in rules:
            codes[(codes == 0) & hit] = int(code)

        cand = np.flatnonzero(codes == 0)
        if len(cand):
            with np.errstate(all="ignore"):
                age_ns = now - intents["ts_origin_ns"][cand].astype(np.int64)
            stale = (((intents["flags"][cand] & FLAG_STALE) != 0)
                     | (age_ns > lim.max_intent_age_s * 1e9))
            codes[cand] = self._sequential(intents[cand], s[cand], px[cand] * fx[cand], st[cand], stc[cand], stale,
                                           world)
        self._counts += np.bincount(codes, minlength=len(Denial))
        return codes

    def _check_one(self, intents: np.ndarray, market: MarketView, world: dict, now: int, eff_state: np.ndarray,
                   eff_code: np.ndarray) -> np.ndarray:
        """`check`'s rules for a batch of one intent (a backtest sends them one at a time) on
        plain floats, in the same order and with numpy's NaN and overflow semantics: the
        vectorised rules cost a numpy call each, many times what they compute for one intent."""
        lim = self.limits
        it = intents[0]
        sym, side, otype, tif = int(it["symbol_id"]), int(it["side"]), int(it["order_type"]), int(it["tif"])
        qty, limit_px, ref_px = float(it["qty"]), float(it["limit_price"]), float(it["ref_price"])
        known = sym < self.n_symbols
        s = sym if known else 0
        is_limit = otype == ORDER_LIMIT
        own_px = limit_px if is_limit else ref_px
        code = 0
        if (not known or (side != SIDE_BUY and side != SIDE_SELL) or (otype != ORDER_MARKET and not is_limit)
                or not TIF_GTC <= tif <= TIF_POST_ONLY or not _ok(qty) or not _ok(own_px) or not _ok(ref_px)
                or (not is_limit and (limit_px == limit_px or tif == TIF_POST_ONLY))
                or not qty * own_px >= DUST_NOTIONAL):
            code = int(Denial.BAD_INPUT)
        st, stc = int(eff_state[s]), int(eff_code[s])
        if code == 0 and st == _HALTED:
            code = stc
        bid, ask, last = float(market.bid[s]), float(market.ask[s]), float(market.last[s])
        touch = ask if side > 0 else bid
        px = limit_px if is_limit else (touch if _ok(touch) else (last if _ok(last) else ref_px))
        fx = float(world["fx"][s])
        if code == 0 and not math.isfinite(fx):
            code = int(Denial.FX_RATE)
        if code == 0 and not qty * px * fx <= lim.max_order_notional:
            code = int(Denial.ORDER_NOTIONAL)
        if code == 0 and lim.max_spread_bps and not is_limit and not (
                _ok(bid) and _ok(ask) and ask >= bid and (ask - bid) / ((bid + ask) / 2) * 1e4 <= lim.max_spread_bps):
            code = int(Denial.SPREAD)
        if code == 0 and not (_ok(last) and abs(px - last) / last * 1e4 <= lim.price_band_bps):
            code = int(Denial.PRICE_BAND)
        codes = np.zeros(1, np.uint8)
        if code == 0:
            # int64 as numpy takes it (wrapping), compared as a float
            age_ns = (now - int(it["ts_origin_ns"]) + 2**63) % 2**64 - 2**63
            stale = (int(it["flags"]) & FLAG_STALE) != 0 or float(age_ns) > lim.max_intent_age_s * 1e9
            # `_sequential`'s one-intent rules, their inputs made here on plain floats as it makes them
            r = int(self.route_of[s])
            m = float(world["mark"][s])
            acc = {"pos": world["pos"], "gross": world["gross"], "venue": world["venue_expo"],
                   "net": world["route_net"].tolist() + [0.0], "legs": world["route_legs"].tolist() + [0.0],
                   "qnet": world["route_qty"].tolist() + [0.0], "open": world["open_orders"],
                   "used": [0.0] * len(self.venues)}
            code = int(self._one_by_one([s], [int(self.venue_of[s])], [r if r >= 0 else self.n_routes], [r >= 0],
                                        [float(side) * qty], [m if _ok(m) else px * fx],
                                        [is_limit and (tif == TIF_GTC or tif == TIF_POST_ONLY)], [st], [stc], [stale],
                                        acc)[0])
            self._tokens -= acc["used"]
        codes[0] = code
        self._counts[code] += 1
        return codes

    def _sequential(self, it: np.ndarray, s: np.ndarray, px: np.ndarray, st: np.ndarray, stc: np.ndarray,
                    stale: np.ndarray, world: dict) -> np.ndarray:
        """The rules that depend on the intents before in the batch (see ``check``)."""
        lim = self.limits
        n = len(it)
        v = self.venue_of[s]
        r = self.route_of[s]
        on_route = r >= 0
        rkey = np.where(on_route, r, self.n_routes)               # one spare group: no route
        dq = it["side"].astype(np.float64) * it["qty"]
        mark = np.where(_valid(world["mark"][s]), world["mark"][s], px)
        resting = (it["order_type"] == ORDER_LIMIT) & ((it["tif"] == TIF_GTC) | (it["tif"] == TIF_POST_ONLY))
        route_net0 = np.append(world["route_net"], 0.0)
        route_legs0 = np.append(world["route_legs"], 0.0)
        open0 = world["open_orders"]
        by_sym, by_venue, by_route = _Grouped(s), _Grouped(v), _Grouped(rkey)

        # the fast pass: every candidate assumed to pass, all rules at once
        pb = by_sym.before(world["pos"], dq)
        pa = pb + dq
        reducing = (pb != 0) & (pa * pb >= 0) & (np.abs(pa) < np.abs(pb))
        grows = np.abs(pa) > np.abs(pb)
        d_exp = (np.abs(pa) - np.abs(pb)) * mark
        gross_after = np.cumsum(np.concatenate(([world["gross"]], d_exp)))[:-1] + d_exp
        venue_after = by_venue.before(world["venue_expo"], d_exp) + d_exp
        net_b = by_route.before(route_net0, dq * mark)
        net_a = net_b + dq * mark
        # on a route, an intent that brings the legs' net (base quantity: one asset) toward zero
        # reduces too: a re-hedge
        qnet_b = by_route.before(np.append(world["route_qty"], 0.0), dq)
        qnet_a = qnet_b + dq
        reducing |= on_route & (np.abs(qnet_a) < np.abs(qnet_b)) & (qnet_a * qnet_b >= 0)
        opened = (pb == 0) & (pa != 0)
        legs_b = by_route.before(route_legs0, opened.astype(float) - ((pb != 0) & (pa == 0)))
        open_b = by_venue.before(open0, resting.astype(float))
        used_b = by_venue.before(np.zeros(len(self.venues)), np.ones(n))
        breach = (((st == _REDUCING) & ~reducing)
                  | (stale & ~reducing)
                  | (grows & ~(np.abs(pa) * mark <= lim.max_position_notional))
                  | ((d_exp > 0) & ~(gross_after <= lim.max_gross_exposure))
                  | ((d_exp > 0) & ~(venue_after <= lim.max_venue_exposure))
                  | (on_route & (np.abs(net_a) > np.abs(net_b)) & ~(np.abs(net_a) <= lim.max_route_imbalance))
                  | (on_route & opened & (legs_b >= lim.max_open_legs))
                  | (resting & (open_b >= lim.max_open_orders))
                  | (self._tokens[v] - used_b < 1))
        out = np.zeros(n, np.uint8)
        if not breach.any():
            self._tokens -= np.bincount(v, minlength=len(self.venues))
            return out
        # everything before the first breach passed; from there on one intent at a time, on the
        # figures the passed prefix left
        k = int(np.argmax(breach))
        acc = {"pos": world["pos"].copy(), "gross": float(gross_after[k - 1]) if k else world["gross"],
               "venue": world["venue_expo"].copy(), "net": route_net0.copy(), "legs": route_legs0.copy(),
               "qnet": np.append(world["route_qty"], 0.0),
               "open": open0.copy(), "used": np.zeros(len(self.venues))}
        if k:
            first = slice(0, k)
            np.add.at(acc["venue"], v[first], d_exp[first])
            np.add.at(acc["net"], rkey[first], (dq * mark)[first])
            np.add.at(acc["qnet"], rkey[first], dq[first])
            np.add.at(acc["legs"], rkey[first], (opened.astype(float) - ((pb != 0) & (pa == 0)))[first])
            np.add.at(acc["open"], v[first], resting[first].astype(float))
            np.add.at(acc["used"], v[first], 1.0)
            for i in range(k):        # positions in batch order, rounding as the fast pass did
                acc["pos"][s[i]] = pa[i]
        out[k:] = self._one_by_one(s[k:], v[k:], rkey[k:], on_route[k:], dq[k:], mark[k:], resting[k:],
                                   st[k:], stc[k:], stale[k:], acc)
        self._tokens -= acc["used"]
        return out

    def _one_by_one(self, s, v, rkey, on_route, dq, mark, resting, st, stc, stale, acc: dict) -> np.ndarray:
        """The same rules as the fast pass of ``_sequential``, one intent at a time on plain floats
        (the rest of a batch after its first breach); ``acc`` is updated by each intent that passes.
        Arrays or lists alike (`_check_one` gives lists)."""
        lim = self.limits
        pos, venue, net, legs, opn, used = map(_plain, (acc["pos"], acc["venue"], acc["net"], acc["legs"],
                                                        acc["open"], acc["used"]))
        gross = acc["gross"]
        qnet = _plain(acc["qnet"])
        tokens = self._tokens.tolist()
        out = np.zeros(len(s), np.uint8)
        for i, (si, vi, ri, routed, q, m, rest, state, scode, old) in enumerate(zip(
                *map(_plain, (s, v, rkey, on_route, dq, mark, resting, st, stc, stale)))):
            b = pos[si]
            a = b + q
            red = b != 0 and a * b >= 0 and abs(a) < abs(b)
            d = (abs(a) - abs(b)) * m
            nb, na = net[ri], net[ri] + q * m
            qb, qa = qnet[ri], qnet[ri] + q
            red = red or (routed and abs(qa) < abs(qb) and qa * qb >= 0)
            opened = b == 0 and a != 0
            if state == TradingState.REDUCING and not red:
                code = scode
            elif old and not red:
                code = Denial.STALE_INTENT
            elif abs(a) > abs(b) and not abs(a) * m <= lim.max_position_notional:
                code = Denial.POSITION_LIMIT
            elif d > 0 and not gross + d <= lim.max_gross_exposure:
                code = Denial.GROSS_EXPOSURE
            elif d > 0 and not venue[vi] + d <= lim.max_venue_exposure:
                code = Denial.VENUE_EXPOSURE
            elif routed and abs(na) > abs(nb) and not abs(na) <= lim.max_route_imbalance:
                code = Denial.ROUTE_IMBALANCE
            elif routed and opened and legs[ri] >= lim.max_open_legs:
                code = Denial.OPEN_LEGS
            elif rest and opn[vi] >= lim.max_open_orders:
                code = Denial.OPEN_ORDERS
            elif tokens[vi] - used[vi] < 1:
                code = Denial.ORDER_RATE
            else:
                code = Denial.PASSED
                pos[si], gross, net[ri], qnet[ri] = a, gross + d, na, qa
                venue[vi] += d
                legs[ri] += float(opened) - float(b != 0 and a == 0)
                opn[vi] += float(rest)
                used[vi] += 1.0
            out[i] = code
        acc["used"] = np.array(used)
        return out

    # -- counters, events, persistence ------------------------------------------------------------
    def denials(self) -> dict[str, int]:
        """Denial name -> count since start (or since the restored state), every code listed so
        a metrics series exists before its first denial."""
        return {d.name: int(self._counts[d]) for d in Denial if d != Denial.PASSED}

    def count(self, code: Denial, passed_before: bool = True) -> None:
        """Count a denial made after the guard passed an intent (the desk's own rules), so one
        table of codes counts every refusal."""
        self._counts[int(code)] += 1
        if passed_before:
            self._counts[Denial.PASSED] -= 1

    def add_counts(self, denials: dict[str, int], passed: int) -> None:
        """Add counts made after the last saved state (the journal's verdicts since it)."""
        for name, n in denials.items():
            self._counts[Denial[name]] += int(n)
        self._counts[Denial.PASSED] += int(passed)

    def passed(self) -> int:
        return int(self._counts[Denial.PASSED])

    def drain_events(self) -> list[RiskEvent]:
        """The state changes since the last call, oldest first, for the journal."""
        out, self._events = self._events, []
        return out

    def describe(self, intent, code: int) -> str:
        """One line for the journal: the code's name, its text and, for a tier's state, the
        cause that set it."""
        code = Denial(int(code))
        text = f"{code.name}: {DENIAL_TEXT[code]}"
        sid = int(intent["symbol_id"])
        if code == Denial.PASSED or not 0 <= sid < self.n_symbols:
            return text
        tiers = [(Tier.GLOBAL, 0), (Tier.VENUE, int(self.venue_of[sid])), (Tier.SYMBOL, sid)]
        if self.route_of[sid] >= 0:
            tiers.insert(2, (Tier.ROUTE, int(self.route_of[sid])))
        for tier, idx in tiers:
            cause = self._causes.get((tier, idx), {}).get(code)
            if cause is not None:
                key = self._key_name(tier, idx)
                where = tier.name.lower() + ("" if key is None else f" {key}")
                return f"{text} ({where} {cause.state.name}: {cause.reason})"
        return text

    def state(self) -> dict:
        """Every tier cause (manual or not, with its reason and latch) and the counters, JSON-able,
        for the journal: ``restore`` (or the ``saved`` argument) brings them back after a restart."""
        causes = []
        for (tier, idx), by_code in sorted(self._causes.items()):
            for code, c in by_code.items():
                causes.append({"tier": tier.name.lower(), "key": self._key_name(tier, idx),
                               "code": code.name, "state": c.state.name, "reason": c.reason,
                               "manual": c.manual, "since_ns": c.since_ns, "until_ns": c.until_ns})
        return {"version": STATE_VERSION, "venues": list(self.venues), "n_symbols": self.n_symbols,
                "causes": causes, "denials": self.denials(), "passed": self.passed()}

    def restore(self, saved: dict) -> None:
        """Bring back what ``state`` saved. A cause whose tier no longer exists (a venue or symbol
        gone from the config) is an error, not a silent drop: a halt must not vanish unseen.
        Automatic causes come back too and clear on the next check if their condition is gone."""
        if saved.get("version") != STATE_VERSION:
            raise ValueError(f"risk state version {saved.get('version')!r}, expected {STATE_VERSION}")
        pending = len(self._events)
        for c in saved.get("causes", []):
            tier, idx = self._index(c["tier"], c["key"])
            cause = _Cause(TradingState[c["state"]], str(c["reason"]), bool(c["manual"]),
                           int(c["since_ns"]), int(c["until_ns"]))
            self._set(tier, idx, Denial[c["code"]], cause)
        del self._events[pending:]       # journaled when they happened
        for name, count in saved.get("denials", {}).items():
            self._counts[Denial[name]] = int(count)
        self._counts[Denial.PASSED] = int(saved.get("passed", 0))
