"""Dynamic route selection (issue 14): which configured routes may open new pairs.

The configured ``[[routes]]`` are the *universe*; at run time each route is *active*
(it may open pairs) or *parked* (it only unwinds what it holds: exits are never
blocked, and hedge obligations are execution's, untouched by this). A pure core: the
route trader hands in what it already sees on each valid update, the clock's time
is passed in, no wall time, so a backtest and a live run choose alike.

Per route, over a rolling window of ``periods`` selection periods of ``every_ns``:

* **premium**: the better direction's executable edge over the premium's rolling
  mean, less the route's entry threshold (bps; 0 means it would trade now), clipped
  to +-``EDGE_CLIP_BPS`` so one book too thin to walk does not swamp the mean. The
  window's mean is the route's **score**: how close it runs to trading.
* **spread**: the wider of its two books' spreads at the touch (bps of the mid).
* **depth**: the thinnest of the four book sides it trades, as quote (USDT)
  within ``depth_band_bps`` of the touch.
* **volume**: quote (USDT) traded on each leg's market over the window (trade ticks,
  ``observe_volume``); the quieter leg's counts.

Every ``every_ns`` (``select``): a route whose window mean spread is over
``max_spread_bps``, whose mean depth is under ``min_depth_quote`` or whose volume is
under ``min_volume_quote`` is parked (gates; 0 = off). The others rank by score, an active route's score raised by
``hysteresis_bps`` (a parked route must beat it by that much to take its place, so
two routes near each other do not swap every period), and the best ``max_active``
are active (0 = all that pass the gates). A route with no valid update in the window
(not warm yet, stale FX, feed down) cannot be judged: it ranks after every judged
route and keeps its state while a slot is left for it. Gates and ranks use window
means, which move slowly: a route changes state at most once a period.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EDGE_CLIP_BPS = 1000.0
_N, _EDGE, _SPREAD, _DEPTH, _VOL_A, _VOL_B = range(6)


@dataclass(frozen=True)
class SelectParams:
    """``max_active``: routes active at once (0: every route the gates pass);
    ``every_ns``: how often the selection runs; ``periods``: the window, in those;
    ``min_depth_quote``/``max_spread_bps``: the gates (0: off); ``hysteresis_bps``:
    the score margin an active route keeps over a challenger."""
    max_active: int = 0
    every_ns: int = 60_000_000_000
    periods: int = 5
    min_depth_quote: float = 0.0
    max_spread_bps: float = 0.0
    hysteresis_bps: float = 5.0
    min_volume_quote: float = 0.0

    def __post_init__(self):
        if self.max_active < 0 or self.every_ns <= 0 or self.periods < 1:
            raise ValueError(f"max_active >= 0, every_ns > 0 and periods >= 1, got {self}")
        for v in (self.min_depth_quote, self.max_spread_bps, self.hysteresis_bps, self.min_volume_quote):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"gates and hysteresis must be finite and >= 0, got {self}")

    @property
    def enabled(self) -> bool:
        """Anything to select: a cap on active routes or a gate."""
        return (self.max_active > 0 or self.min_depth_quote > 0 or self.max_spread_bps > 0
                or self.min_volume_quote > 0)


@dataclass(frozen=True)
class Change:
    """A route that went active (``active``) or parked, and why, in words."""
    route: int
    active: bool
    reason: str


def choose(active: np.ndarray, n: np.ndarray, score: np.ndarray, spread: np.ndarray,
           depth: np.ndarray, p: SelectParams, volume: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """The routes active next and why each is as it is: ``active`` now, and per route its
    window's valid updates ``n``, means ``score``/``spread``/``depth`` and the quieter
    leg's traded ``volume`` (None: not counted)."""
    k = len(active)
    why = [""] * k
    judged = n > 0
    passed = judged.copy()
    for i in np.flatnonzero(judged).tolist():
        if p.max_spread_bps > 0 and spread[i] > p.max_spread_bps:
            passed[i] = False
            why[i] = f"spread {spread[i]:.1f} bps over max_spread_bps {p.max_spread_bps:g}"
        elif p.min_depth_quote > 0 and depth[i] < p.min_depth_quote:
            passed[i] = False
            why[i] = f"depth {depth[i]:.0f} under min_depth_quote {p.min_depth_quote:g}"
        elif p.min_volume_quote > 0 and volume is not None and volume[i] < p.min_volume_quote:
            passed[i] = False
            why[i] = f"volume {volume[i]:.0f} under min_volume_quote {p.min_volume_quote:g}"
    ranked_score = score + np.where(active, p.hysteresis_bps, 0.0)
    ranked = sorted(np.flatnonzero(passed).tolist(), key=lambda i: (-ranked_score[i], i))
    # routes not judged keep their state where a slot is left: the active ones first
    ranked += sorted(np.flatnonzero(~judged).tolist(), key=lambda i: (not active[i], i))
    slots = p.max_active or k
    out = np.zeros(k, bool)
    for rank, i in enumerate(ranked):
        keep = rank < slots and (judged[i] or active[i])
        out[i] = keep
        if not judged[i]:
            why[i] = "no valid update in the window" + ("" if keep else ", no slot left")
        else:
            why[i] = (f"score {score[i]:+.1f} bps, rank {rank + 1}"
                      + ("" if keep else f" past max_active_routes {p.max_active}"))
    return out, why


class RouteSelector:
    """The rolling window per route and the selection it drives. ``observe`` on every
    valid update (O(1), plain floats), ``select`` when ``due``; ``active`` says which
    routes may open pairs (all, until the first selection)."""

    def __init__(self, n_routes: int, params: SelectParams, start_ns: int):
        self.p = params
        self.active = np.ones(n_routes, bool)
        self.why = ["not selected yet"] * n_routes
        self._cur = [[0, 0.0, 0.0, 0.0, 0.0, 0.0] for _ in range(n_routes)]   # this period's sums
        self._past = np.zeros((params.periods, n_routes, 6))                  # the last periods' sums
        self._k = 0
        self.next_ns = int(start_ns) + params.every_ns
        self.n = np.zeros(n_routes, np.int64)
        self.score = np.full(n_routes, math.nan)
        self.spread = np.full(n_routes, math.nan)
        self.depth = np.full(n_routes, math.nan)
        self.volume = np.zeros(n_routes)
        self.changes = 0

    def observe(self, route: int, edge_bps: float, spread_bps: float, depth_quote: float) -> None:
        """One valid update of ``route``: its edge over the entry threshold, spread, depth."""
        c = self._cur[route]
        c[_N] += 1
        c[_EDGE] += min(max(edge_bps, -EDGE_CLIP_BPS), EDGE_CLIP_BPS)
        c[_SPREAD] += spread_bps
        c[_DEPTH] += depth_quote

    def observe_volume(self, route: int, leg: int, quote: float) -> None:
        """Quote traded on ``route``'s leg 0 (Korean) or 1 (the other) since the last call."""
        self._cur[route][_VOL_A + leg] += quote

    def due(self, now_ns: int) -> bool:
        return now_ns >= self.next_ns

    def select(self, now_ns: int) -> list[Change]:
        """Close the period, rank the window, and return the routes that changed state."""
        self._past[self._k % self.p.periods] = self._cur
        self._k += 1
        self._cur = [[0, 0.0, 0.0, 0.0, 0.0, 0.0] for _ in self._cur]
        every = self.p.every_ns
        self.next_ns += max(1, (now_ns - self.next_ns) // every + 1) * every   # skip missed periods
        tot = self._past.sum(axis=0)
        self.n = tot[:, _N].astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.score, self.spread, self.depth = (tot[:, j] / tot[:, _N] for j in (_EDGE, _SPREAD, _DEPTH))
        self.volume = np.minimum(tot[:, _VOL_A], tot[:, _VOL_B])
        new, self.why = choose(self.active, self.n, self.score, self.spread, self.depth, self.p, self.volume)
        out = [Change(i, bool(new[i]), self.why[i]) for i in np.flatnonzero(new != self.active).tolist()]
        self.active = new
        self.changes += len(out)
        return out


def book_spread_bps(bid: float, ask: float) -> float:
    """The touch's spread in bps of its mid."""
    return (ask - bid) / (ask + bid) * 2e4


def side_depth(px: np.ndarray, sz: np.ndarray, band_bps: float, bids: bool) -> float:
    """Quote notional of one book side within ``band_bps`` of its touch: the levels from
    the best until the first past the band (the side is ordered: the route checked it).
    Plain floats: a book has a few levels, and numpy would cost more than the sum."""
    p, s = px.tolist(), sz.tolist()
    if not p:
        return 0.0
    lim = p[0] * (1 - band_bps * 1e-4) if bids else p[0] * (1 + band_bps * 1e-4)
    total = 0.0
    for a, b in zip(p, s):
        if (a < lim) if bids else (a > lim):
            break
        total += a * b
    return total
