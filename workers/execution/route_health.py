"""Route health: whether a route's two venues are fit to trade a pair right now.

A pair is only as good as its worse leg: a venue whose feed is down or whose books are
old prices the premium on a past market; one slow to acknowledge fills the IOC late, on
a moved book; legs that fill short leave hedge obligations; fills far from the price
asked eat the premium. Each of these is a factor in [0, 1], and the route's score is
their product (one factor at 0 is enough to stop it):

* feeds: both venues' feeds connected and not silent (0 or 1);
* book age: 1 - the older leg's quote age / ``max_quote_age_s``;
* ack latency: 1 - the slower venue's recent submit-to-ack median / ``max_ack_ms``;
* fill ratio: filled over asked, over the route's last ``window`` legs of the last
  ``memory_s`` (a route stopped for short fills is let go again once they are old:
  stopped, it trades no new legs that could show it better);
* slippage: 1 - the legs' mean adverse slippage (fill against the price the strategy
  saw, bps) / ``max_slippage_bps``, over the same legs.

A score under ``min_score`` moves the route to REDUCING (``Denial.ROUTE_HEALTH``) with
the weakest factor as the reason, and it comes back when the score does. Pure: numbers
in, numbers out; execution feeds it and the guard acts on it.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class HealthLimits:
    max_quote_age_s: float = 5.0
    max_ack_ms: float = 500.0
    max_slippage_bps: float = 50.0
    window: int = 20
    memory_s: float = 600.0
    min_score: float = 0.2


@dataclass
class Health:
    """One route's score and its factors, as ``pipeline report`` shows them."""
    route: int
    score: float
    factors: dict[str, float]

    @property
    def weakest(self) -> str:
        return min(self.factors, key=self.factors.get)


class RouteHealth:
    """The legs each route traded lately (fill ratio, slippage) and its score on demand."""

    def __init__(self, n_routes: int, limits: HealthLimits):
        self.limits = limits
        self.legs = [deque(maxlen=limits.window) for _ in range(n_routes)]

    def on_leg(self, route: int, asked: float, filled: float, slippage_bps: float, ts_ns: int) -> None:
        """A leg of ``route`` is over at ``ts_ns``: ``filled`` of ``asked``, ``slippage_bps``
        against us (NaN: nothing filled)."""
        if asked > 0:
            self.legs[route].append((ts_ns, min(filled / asked, 1.0), slippage_bps))

    def score(self, route: int, feeds_ok: bool, quote_age_s: float, ack_ms: float, now_ns: int) -> Health:
        """The route's health now; ``ack_ms``: 0 before any order was acknowledged."""
        lim = self.limits
        kept = self.legs[route]
        while kept and now_ns - kept[0][0] > lim.memory_s * 1e9:
            kept.popleft()
        legs = [(f, s) for _, f, s in kept]
        fill = sum(f for f, _ in legs) / len(legs) if legs else 1.0
        slips = [s for _, s in legs if math.isfinite(s)]
        slip = max(sum(slips) / len(slips), 0.0) if slips else 0.0
        factors = {"feeds": 1.0 if feeds_ok else 0.0,
                   "book_age": _falling(quote_age_s, lim.max_quote_age_s),
                   "ack_latency": _falling(ack_ms, lim.max_ack_ms),
                   "fill_ratio": fill,
                   "slippage": _falling(slip, lim.max_slippage_bps)}
        score = 1.0
        for f in factors.values():
            score *= f
        return Health(route, score, factors)

    def describe(self, h: Health) -> str:
        return (f"route {h.route} health {h.score:.2f} < {self.limits.min_score:g}: weakest "
                f"{h.weakest} {h.factors[h.weakest]:.2f}")


def _falling(x: float, limit: float) -> float:
    """1 at 0, 0 at ``limit`` and beyond; an unknown figure (NaN) counts as 0 if it is a
    quote age (nothing seen) and is the caller's to pass as such."""
    if not math.isfinite(x):
        return 0.0
    return min(max(1.0 - x / limit, 0.0), 1.0)
