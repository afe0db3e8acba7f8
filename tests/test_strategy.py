"""The model-signal strategy core: gate, hysteresis, holding period, sizing, stops,
and intents whose seq comes from what caused them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.clock import SimClock
from shm.records import (FLAG_GAP, FLAG_STALE, FLAG_WARMUP, INTENT, ORDER_CANCEL, ORDER_LIMIT, ORDER_MARKET,
                         REASON_ENTRY, REASON_EXIT, REASON_STOP_LOSS, REASON_TAKE_PROFIT, SIDE_BUY,
                         SIDE_SELL, SIGNAL, TIF_GTC, TIF_IOC, TIF_POST_ONLY)
from pipeline.config import Config, ConfigError, StrategyConfig, validate
from workers.strategy.signals import CANCEL_BIT, SOURCE_BITS, SignalStrategy

BAR = 60 * 10**9
NO_VOL = np.full(4, np.nan)


def signal(margin: float, bar: int, price: float = 100.0, sid: int = 0, seq: int | None = None,
           flags: int = 0) -> np.ndarray:
    """One SIGNAL row whose p(up) - p(down) is ``margin``, on bar number ``bar``."""
    s = np.zeros(1, SIGNAL)
    up, down = max(margin, 0.0), max(-margin, 0.0)
    s["probs"] = [[0.3 + down, 0.4 - abs(margin), 0.3 + up]]
    s["symbol_id"] = sid
    s["ts_bar_ns"] = bar * BAR
    s["ts_origin_ns"] = bar * BAR + 5
    s["seq"] = bar if seq is None else seq
    s["ref_price"] = price
    s["flags"] = flags
    return s


def run(strategy: SignalStrategy, margins, prices=None, vol=NO_VOL) -> list[tuple[int, int, int]]:
    """(bar, side, reason) of every intent over a run of one signal per bar."""
    out = []
    for bar, m in enumerate(margins):
        price = 100.0 if prices is None else prices[bar]
        for row in strategy.on_signals(signal(m, bar, price), vol):
            out.append((bar, int(row["side"]), int(row["reason"])))
    return out


def make(**params) -> SignalStrategy:
    return SignalStrategy(4, StrategyConfig(**params), SimClock(0))


def test_hysteresis_and_gate_keep_a_wandering_margin_from_churning():
    # a margin wandering around 0.1: an argmax would flip every bar
    margins = [0.11, 0.09, 0.12, 0.08, 0.11, 0.05, 0.03, 0.01, -0.02, 0.04, 0.12]
    got = run(make(enter_margin=0.10, exit_margin=0.02, min_hold_bars=0), margins)
    assert got == [(0, SIDE_BUY, REASON_ENTRY), (7, SIDE_SELL, REASON_EXIT),
                   (10, SIDE_BUY, REASON_ENTRY)]


def test_minimum_holding_period_in_bars():
    margins = [0.2, -0.1, -0.1, -0.1, -0.1, -0.1]
    assert run(make(min_hold_bars=3), margins) == [(0, SIDE_BUY, REASON_ENTRY),
                                                   (3, SIDE_SELL, REASON_EXIT)]
    s = make(min_hold_bars=3)
    run(s, margins[:3])
    assert s.counters["held"] == 2


def test_short_only_when_allowed_and_a_reversal_waits_a_signal():
    margins = [-0.3, 0.3, 0.3]
    assert run(make(min_hold_bars=0), margins) == [(1, SIDE_BUY, REASON_ENTRY)]
    assert run(make(min_hold_bars=0, allow_short=True), margins) == [
        (0, SIDE_SELL, REASON_ENTRY), (1, SIDE_BUY, REASON_EXIT), (2, SIDE_BUY, REASON_ENTRY)]


def test_a_reversal_under_a_wide_exit_gate_exits_first_and_keeps_the_hold():
    # exit_margin below -enter_margin: a long whose margin turns short passes the exit gate
    s = make(enter_margin=0.1, exit_margin=-0.5, min_hold_bars=3, allow_short=True)
    assert run(s, [0.3, -0.3, -0.3, -0.3]) == [(0, SIDE_BUY, REASON_ENTRY), (3, SIDE_SELL, REASON_EXIT)]
    assert s.counters["held"] == 2 and s.direction[0] == 0 and s.qty[0] == 0
    (short,) = s.on_signals(signal(-0.3, 4), NO_VOL)                  # the short waits a signal
    assert short["side"] == SIDE_SELL and short["reason"] == REASON_ENTRY and s.direction[0] == -1


def test_the_bulk_gate_reads_the_margin_as_on_signals_does():
    # a margin just under exit_margin in float64 that float32 rounds up to it: an exit either way
    p = StrategyConfig(enter_margin=0.05, exit_margin=0.02, min_hold_bars=0)
    sig = signal(0.0, 1)
    sig["probs"][0] = [1e-10, 1 - 0.02 - 1e-10, 0.02]
    pos, work = np.array([0.01, 0, 0, 0]), np.zeros(4)
    made = []
    for way in ("one by one", "pass_over", "next_act"):
        s = SignalStrategy(4, p, SimClock(0))
        s.direction[0], s.qty[0], s.entry[0], s.last_bar[0], s.held_bars[0] = 1, 0.01, 100.0, 0, 5
        if way == "one by one":
            made.append(len(s.on_signals(sig, NO_VOL, 0, pos, work)))
        elif way == "pass_over":
            made.append(1 - s.pass_over(sig, pos, work, np.array([1])))       # 1: it stopped before it
        else:
            made.append(1 - s.next_act(s.acts_ahead(sig), 0, pos, work))
    assert made == [1, 1, 1]


def test_volatility_targeted_size_capped_at_max_notional():
    s = make(notional=100.0, max_notional=400.0, target_vol=0.002)
    vol = np.array([0.004, 0.001, 1e-9, np.nan])
    sizes = {}
    for sid in range(4):
        rows = s.on_signals(signal(0.5, 0, price=50.0, sid=sid), vol)
        sizes[sid] = float(rows["qty"][0]) * 50.0
    assert sizes[0] == pytest.approx(50.0)       # twice the target volatility: half the size
    assert sizes[1] == pytest.approx(200.0)
    assert sizes[2] == pytest.approx(400.0)      # capped
    assert sizes[3] == pytest.approx(100.0)      # unknown volatility: the base notional


def test_exit_closes_exactly_what_the_entry_opened():
    s = make(min_hold_bars=0)
    entry = s.on_signals(signal(0.5, 0, price=100.0), np.array([0.001, 0, 0, 0]))
    exit_ = s.on_signals(signal(-0.5, 1, price=90.0), NO_VOL)
    assert exit_["qty"][0] == entry["qty"][0] and exit_["side"][0] == -entry["side"][0]
    assert exit_["ref_price"][0] == 90.0


def test_stop_loss_and_take_profit_on_prices_and_signals():
    s = make(stop_loss=0.02, take_profit=0.05, min_hold_bars=100)
    s.on_signals(signal(0.5, 0, price=100.0), NO_VOL)
    assert len(s.on_price(0, 98.5, seq=7, ts_origin_ns=1)) == 0
    stop = s.on_price(0, 97.9, seq=8, ts_origin_ns=1)
    assert stop["reason"].tolist() == [REASON_STOP_LOSS] and stop["side"][0] == SIDE_SELL
    assert stop["signal_seq"][0] == 0 and stop["seq"][0] >> SOURCE_BITS == 0xFFFF
    # a stop overrides the holding period; the next entry comes on a later signal
    s.on_signals(signal(0.5, 1, price=100.0), NO_VOL)
    tp = s.on_signals(signal(0.5, 2, price=105.5), NO_VOL)
    assert tp["reason"].tolist() == [REASON_TAKE_PROFIT]


@pytest.mark.parametrize("flags", [FLAG_GAP, FLAG_WARMUP, FLAG_STALE])
def test_bad_data_opens_nothing_but_may_close(flags):
    s = make(min_hold_bars=0)
    assert len(s.on_signals(signal(0.5, 0, flags=flags), NO_VOL)) == 0
    assert s.counters["no_new_risk"] == 1
    s.on_signals(signal(0.5, 1), NO_VOL)
    assert s.on_signals(signal(-0.5, 2, flags=flags), NO_VOL)["reason"].tolist() == [REASON_EXIT]


@pytest.mark.parametrize("price", [np.nan, 0.0, -1.0, np.inf])
def test_bad_prices_and_symbols_are_counted_never_traded(price):
    s = make()
    assert len(s.on_signals(signal(0.5, 0, price=price), NO_VOL)) == 0
    assert len(s.on_signals(signal(0.5, 0, sid=9), NO_VOL)) == 0
    assert len(s.on_price(0, price, 1, 1)) == 0
    assert s.counters["bad_input"] == 3


def test_intent_seq_comes_from_the_signal_so_a_restart_derives_the_same_intent():
    a, b = make(), make()
    first = a.on_signals(signal(0.5, 3, seq=41), NO_VOL, source=2)
    b.restore(json.loads(json.dumps(make().state())))
    again = b.on_signals(signal(0.5, 3, seq=41), NO_VOL, source=2)
    assert first.tobytes() == again.tobytes()
    assert first["seq"][0] == (2 << SOURCE_BITS) | 41 and first["signal_seq"][0] == 41
    assert first.dtype == INTENT


def test_state_survives_a_json_round_trip():
    s = make(min_hold_bars=2, stop_loss=0.1)
    run(s, [0.5, 0.5])
    restored = make(min_hold_bars=2, stop_loss=0.1)
    restored.restore(json.loads(json.dumps(s.state())))
    for name in ("direction", "qty", "held_bars", "last_bar"):
        assert np.array_equal(getattr(restored, name), getattr(s, name)), name
    assert restored.entry[0] == s.entry[0]
    # and it trades on as the original would
    stop = restored.on_price(0, 89.0, 1, 1)
    assert stop["reason"].tolist() == [REASON_STOP_LOSS]
    assert stop.tobytes() == s.on_price(0, 89.0, 1, 1).tobytes()


@pytest.mark.parametrize("bad, match", [
    (dict(exit_margin=0.2, enter_margin=0.1), r"exit_margin \(0.2\) must be below enter_margin"),
    (dict(enter_margin=0.0), "enter_margin must be in"),
    (dict(min_hold_bars=-1), "min_hold_bars"),
    (dict(notional=500.0, max_notional=100.0), "notional must be > 0 and at most max_notional"),
    (dict(stop_loss=float("nan")), "every number must be finite"),
    (dict(entry_order="limt"), "entry_order must be 'market' or 'limit', got 'limt'"),
    (dict(entry_ttl_s=0.0), "entry_ttl_s must be > 0"),
    (dict(entry_offset_bps=-5000.0), "entry_offset_bps must be in"),
])
def test_params_are_checked(bad, match):
    with pytest.raises(ConfigError, match=match):
        validate(Config(strategy=StrategyConfig(**bad)))


def test_the_strategy_goes_on_from_what_is_held():
    """An entry refused downstream (risk, a stale intent) leaves nothing held: the next
    signal enters again rather than believing it is long; a position held that the
    strategy did not ask for is closed by its exit rule with the quantity held."""
    s = make(min_hold_bars=0)
    flat = np.zeros(4)
    first = s.on_signals(signal(0.5, 0), NO_VOL, positions=flat)
    again = s.on_signals(signal(0.5, 1), NO_VOL, positions=flat)
    assert first["reason"].tolist() == again["reason"].tolist() == [REASON_ENTRY]
    assert again["seq"][0] != first["seq"][0]
    held = np.array([0.0, 0.0, 0.0, 0.0])
    held[0] = 3.5
    out = s.on_signals(signal(-0.5, 2), NO_VOL, positions=held)
    assert out["reason"].tolist() == [REASON_EXIT] and out["qty"][0] == 3.5
    assert s.counters["reconciled"] == 2


def limits(**params) -> tuple[SignalStrategy, SimClock]:
    clock = SimClock(10 * BAR)
    return SignalStrategy(4, StrategyConfig(entry_order="limit", entry_offset_bps=10.0, entry_ttl_s=120.0,
                                            min_hold_bars=0, allow_short=True, **params), clock), clock


def told(held: float = 0.0, working: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Execution's positions table for symbol 0: (positions, working) by symbol id."""
    return np.array([held, 0, 0, 0]), np.array([working, 0, 0, 0])


def test_a_limit_entry_rests_better_than_the_signal_until_its_expiry():
    s, clock = limits()
    buy = s.on_signals(signal(0.3, 1, 100.0), NO_VOL, 0, *told())
    assert buy["order_type"].tolist() == [ORDER_LIMIT] and buy["tif"].tolist() == [TIF_GTC]
    assert buy["limit_price"][0] == pytest.approx(99.9) and buy["expire_ns"][0] == clock.time_ns() + 120 * 10**9
    sell = s.on_signals(signal(-0.3, 1, 200.0, sid=1), NO_VOL, 0, *told())
    assert sell["side"].tolist() == [SIDE_SELL] and sell["limit_price"][0] == pytest.approx(200.2)
    post, _ = limits(entry_post_only=True)
    assert post.on_signals(signal(0.3, 1), NO_VOL, 0, *told())["tif"].tolist() == [TIF_POST_ONLY]
    # exits stay market orders; market entries carry no expiry
    market = make(min_hold_bars=0)
    entry = market.on_signals(signal(0.3, 1), NO_VOL, 0, *told())
    assert entry["order_type"].tolist() == [ORDER_MARKET] and entry["tif"].tolist() == [TIF_IOC]
    assert entry["expire_ns"].tolist() == [0]


def test_what_rests_counts_as_asked_so_an_entry_is_never_sent_twice():
    s, _ = limits()
    qty = float(s.on_signals(signal(0.3, 1), NO_VOL, 0, *told())["qty"][0])
    # the next bars, the limit still resting (positions 0, working qty): no second entry, no reconcile
    assert len(s.on_signals(signal(0.3, 2), NO_VOL, 0, *told(0.0, qty))) == 0
    assert len(s.on_signals(signal(0.3, 3), NO_VOL, 0, *told(0.4 * qty, 0.6 * qty))) == 0
    assert s.counters["reconciled"] == 0 and s.direction[0] == 1
    # it expired with 0.4 filled: that is the position now, and a signal to exit sells just that
    assert len(s.on_signals(signal(0.3, 4), NO_VOL, 0, *told(0.4 * qty, 0.0))) == 0
    assert s.counters["reconciled"] == 1 and s.qty[0] == pytest.approx(0.4 * qty)
    out = s.on_signals(signal(-0.05, 5), NO_VOL, 0, *told(0.4 * qty, 0.0))
    assert out["order_type"].tolist() == [ORDER_MARKET] and out["qty"][0] == pytest.approx(0.4 * qty)
    # an entry that expired unfilled: flat again, and the next signal may enter anew
    s2, _ = limits()
    s2.on_signals(signal(0.3, 1), NO_VOL, 0, *told())
    again = s2.on_signals(signal(0.3, 2), NO_VOL, 0, *told(0.0, 0.0))
    assert again["reason"].tolist() == [REASON_ENTRY] and s2.counters["reconciled"] == 1


def test_an_exit_while_the_entry_rests_cancels_it_and_sells_what_filled():
    s, _ = limits()
    qty = float(s.on_signals(signal(0.3, 1, seq=7), NO_VOL, 0, *told())["qty"][0])
    out = s.on_signals(signal(-0.05, 2, seq=8), NO_VOL, 0, *told(0.25 * qty, 0.75 * qty))
    assert out["order_type"].tolist() == [ORDER_CANCEL, ORDER_MARKET]
    assert out["seq"].tolist() == [8 | CANCEL_BIT, 8]             # derived from the signal, distinct
    assert out["side"].tolist() == [SIDE_BUY, SIDE_SELL] and out["qty"][1] == pytest.approx(0.25 * qty)
    assert out["reason"].tolist() == [REASON_EXIT, REASON_EXIT] and s.counters["cancels"] == 1
    assert s.direction[0] == 0
    # nothing filled yet: the cancel alone
    s2, _ = limits()
    s2.on_signals(signal(0.3, 1), NO_VOL, 0, *told())
    only = s2.on_signals(signal(-0.05, 2), NO_VOL, 0, *told(0.0, 1.0))
    assert only["order_type"].tolist() == [ORDER_CANCEL]
    # a stop between two words of execution cancels rather than sell what may not be held
    s3, _ = limits(stop_loss=0.05)
    s3.on_signals(signal(0.3, 1), NO_VOL, 0, *told())
    assert s3.on_price(0, 90.0, 1, 1)["order_type"].tolist() == [ORDER_CANCEL]


@pytest.mark.parametrize("params", [
    {},
    {"allow_short": True, "min_hold_bars": 3, "exit_margin": -0.05},
    {"stop_loss": 0.01, "take_profit": 0.02},
])
def test_passing_quiet_signals_over_in_bulk_is_taking_them_one_by_one(params):
    """`pass_over` takes only signals that make no intent, stops where one might, and leaves
    the state and counters as `on_signals` one batch at a time does (a backtest's quiet bars);
    `next_act` finds that stop ahead, from signals made ahead."""
    rng = np.random.default_rng(7)
    n_bars, n_sym = 400, 3
    margin = np.zeros((n_bars, n_sym))             # wanders across the gates and back
    for b in range(1, n_bars):
        margin[b] = 0.9 * margin[b - 1] + rng.normal(0, 0.12, n_sym)
    margin = margin.clip(-0.9, 0.9)
    price = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, (n_bars, n_sym)), axis=0))
    batches = [np.concatenate([signal(float(margin[b, s]), b, float(price[b, s]), sid=s) for s in range(n_sym)])
               for b in range(n_bars)]
    one, bulk = make(**params), make(**params)
    intents = {id(one): [], id(bulk): []}
    passed = 0
    b = 0
    every = np.concatenate(batches)
    every["symbol_id"][5 * n_sym + 1] = 9              # a signal of an unknown symbol: bad input
    batches[5] = every[5 * n_sym:6 * n_sym]
    acts = bulk.acts_ahead(every)
    while b < n_bars:                                  # `bulk` passes over what it can, many batches at once
        held = bulk.qty.copy()
        ahead = np.concatenate(batches[b:b + 50])
        act = bulk.next_act(acts, b * n_sym, held, np.zeros(4)) - b * n_sym
        k = bulk.pass_over(ahead, held, np.zeros(4), np.arange(1, min(50, n_bars - b) + 1) * n_sym,
                           act if b % 2 else None)          # told, or finding it out itself
        # where the strategy next might act, looked up: in the batch the pass stopped before
        assert (k <= act < k + n_sym) if k < len(ahead) else act >= k
        passed += k
        for _ in range(k // n_sym):
            intents[id(one)] += one.on_signals(batches[b], NO_VOL, 0, one.qty.copy(), np.zeros(4)).tolist()
            b += 1
        if b < n_bars:
            intents[id(one)] += one.on_signals(batches[b], NO_VOL, 0, one.qty.copy(), np.zeros(4)).tolist()
            intents[id(bulk)] += bulk.on_signals(batches[b], NO_VOL, 0, bulk.qty.copy(), np.zeros(4)).tolist()
            b += 1
    assert passed > n_bars * n_sym // 6 and len(intents[id(one)]) >= 10     # stops: only flat bars pass
    assert repr(intents[id(one)]) == repr(intents[id(bulk)])        # NaN limit prices alike
    assert one.counters == bulk.counters
    for field in ("direction", "qty", "entry", "held_bars", "last_bar", "held", "working"):
        assert np.array_equal(getattr(one, field), getattr(bulk, field), equal_nan=True), field


def test_a_volatility_of_zero_counts_as_min_vol_like_any_below_it():
    s = make(notional=100.0, max_notional=1e9, target_vol=0.002, min_vol=1e-4)
    sizes = [s.size(50.0, v) * 50.0 for v in (0.0, 1e-12, 1e-4)]
    assert sizes == pytest.approx([2000.0, 2000.0, 2000.0])
    assert s.size(50.0, -0.01) * 50.0 == pytest.approx(100.0)      # nonsense: unknown, the base notional
