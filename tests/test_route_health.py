"""Route health (workers/execution/route_health.py): each factor's meaning, the score as
their product, and execution moving a route to REDUCING while its score is too low."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.clock import SimClock
from test_hedges import ASK, BID, S, T0, _desk, _tick
from workers.execution.risk import Denial, TradingState
from workers.execution.route_health import HealthLimits, RouteHealth


def test_a_healthy_route_scores_one_and_each_factor_pulls_it_down():
    rh = RouteHealth(1, HealthLimits(max_quote_age_s=5.0, max_ack_ms=500.0, max_slippage_bps=50.0))
    assert rh.score(0, True, 0.0, 0.0, T0).score == 1.0
    assert rh.score(0, False, 0.0, 0.0, T0).score == 0.0                     # a feed down: nothing
    assert rh.score(0, True, 2.5, 0.0, T0).factors["book_age"] == pytest.approx(0.5)
    assert rh.score(0, True, math.inf, 0.0, T0).score == 0.0                  # never quoted
    assert rh.score(0, True, 0.0, 250.0, T0).score == pytest.approx(0.5)
    rh.on_leg(0, 0.01, 0.01, 5.0, T0)
    rh.on_leg(0, 0.01, 0.0, math.nan, T0)                                     # an IOC that found nothing
    h = rh.score(0, True, 0.0, 0.0, T0)
    assert h.factors["fill_ratio"] == pytest.approx(0.5) and h.factors["slippage"] == pytest.approx(0.9)
    assert h.score == pytest.approx(0.45) and h.weakest == "fill_ratio"
    assert "weakest fill_ratio 0.50" in rh.describe(h)


def test_the_window_forgets_old_legs():
    rh = RouteHealth(1, HealthLimits(window=3))
    for _ in range(3):
        rh.on_leg(0, 1.0, 0.0, math.nan, T0)
    assert rh.score(0, True, 0, 0, T0).factors["fill_ratio"] == 0.0
    for _ in range(3):
        rh.on_leg(0, 1.0, 1.0, 0.0, T0)
    assert rh.score(0, True, 0, 0, T0).factors["fill_ratio"] == 1.0


def test_execution_stops_a_route_whose_feed_went_silent_and_lets_it_go_again(tmp_path):
    clock = SimClock(T0)
    d = _desk(tmp_path, clock)
    _tick(d, 0, BID[0], ASK[0], BID[0])
    _tick(d, 1, BID[1], ASK[1], BID[1])
    d.housekeeping()
    assert d.health[0].score == pytest.approx(1.0) and d.guard.tier_state("route", 0) == TradingState.ACTIVE
    clock.advance(11 * S)                                                 # Binance silent past 10 s
    _tick(d, 0, BID[0], ASK[0], BID[0])
    d.housekeeping()
    assert d.health[0].factors["feeds"] == 0.0
    assert d.guard.tier_state("route", 0) == TradingState.REDUCING
    assert d.guard.tier_code("route", 0) == Denial.ROUTE_HEALTH
    _tick(d, 1, BID[1], ASK[1], BID[1])
    d.housekeeping()
    assert d.guard.tier_state("route", 0) == TradingState.ACTIVE


def test_legs_that_fill_short_bring_the_route_down(tmp_path):
    from shm.records import INTENT, SIDE_BUY, SIDE_SELL
    from test_hedges import _leg
    clock = SimClock(T0)
    d = _desk(tmp_path, clock)
    for k in range(4):                              # pairs whose limits lie off the book: nothing fills
        _tick(d, 0, BID[0], ASK[0], BID[0])
        _tick(d, 1, BID[1], ASK[1], BID[1])
        pair = np.zeros(2, INTENT)          # (np.concatenate would drop the record's padding)
        pair[0], pair[1] = _leg(d, 0, SIDE_SELL, ASK[0], 20 + 2 * k)[0], _leg(d, 1, SIDE_BUY, BID[1], 21 + 2 * k)[0]
        d.on_intents(pair)
        d.poll()
        d.housekeeping()
        clock.advance(S)
    assert d.health[0].factors["fill_ratio"] == 0.0
    assert d.guard.tier_code("route", 0) == Denial.ROUTE_HEALTH and not d.hedges.open
    clock.advance(601 * S)                          # ten minutes on, the short fills are forgotten
    _tick(d, 0, BID[0], ASK[0], BID[0])
    _tick(d, 1, BID[1], ASK[1], BID[1])
    d.housekeeping()
    assert d.guard.tier_state("route", 0) == TradingState.ACTIVE
