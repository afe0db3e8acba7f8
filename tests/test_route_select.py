"""Dynamic route selection (workers/strategy/route_select.py): the configured routes are
the universe, the best by premium may open pairs, the rest only unwind. The pure core's
ranking, hysteresis, gates and window on a simulated clock; then through ArbStrategy on
synthetic books (two routes, one wider than the other), and the config's checks."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import toml
from pipeline.clock import SimClock
from pipeline.config import ConfigError, load_config
from pipeline.cli import main
from shm.records import BOOK, TICK, TICK_QUOTE, TICK_TRADE
from workers.strategy.arb_strategy import ArbStrategy
from workers.strategy.route_select import Change, RouteSelector, SelectParams, choose, side_depth

S = 1_000_000_000


def selector(n=3, **kw) -> RouteSelector:
    return RouteSelector(n, SelectParams(**{"every_ns": 10 * S, "periods": 2, **kw}), 0)


def period(sel: RouteSelector, t: int, edges: dict, spread=2.0, depth=1e6) -> list[Change]:
    """Each route's edge observed twice in the period, then the selection at ``t``."""
    for i, e in edges.items():
        for _ in range(2):
            sel.observe(i, e, spread if not isinstance(spread, dict) else spread[i],
                        depth if not isinstance(depth, dict) else depth[i])
    assert sel.due(t)
    return sel.select(t)


def test_the_best_routes_by_premium_stay_active_and_the_rest_are_parked():
    sel = selector(max_active=2)
    assert sel.active.tolist() == [True] * 3 and not sel.due(10 * S - 1)
    (c,) = period(sel, 10 * S, {0: -40.0, 1: -10.0, 2: -25.0})
    assert c.route == 0 and not c.active and "rank 3 past max_active_routes 2" in c.reason
    assert sel.active.tolist() == [False, True, True] and sel.score.tolist() == [-40.0, -10.0, -25.0]
    assert sel.changes == 1


def test_hysteresis_keeps_an_active_route_until_a_challenger_beats_it_by_the_margin():
    sel = selector(max_active=1, hysteresis_bps=5.0)
    period(sel, 10 * S, {0: -10.0, 1: -20.0})                  # route 1 parked
    assert sel.active.tolist() == [True, False, False]
    # route 1 now 3 bps better over the window (-10 and -7: -8.5 against -10): not enough
    assert period(sel, 20 * S, {0: -10.0, 1: -7.0}) == []
    # the old period leaves the window: -1 against -10, 9 bps better: they swap
    changes = period(sel, 30 * S, {0: -10.0, 1: 5.0})
    assert [(c.route, c.active) for c in changes] == [(0, False), (1, True)]


def test_gates_park_a_wide_or_thin_route_whatever_its_premium():
    sel = selector(max_spread_bps=10.0, min_depth_quote=5000.0)
    changes = period(sel, 10 * S, {0: 50.0, 1: 50.0, 2: -30.0}, spread={0: 25.0, 1: 2.0, 2: 2.0},
                     depth={0: 1e6, 1: 1000.0, 2: 1e6})
    why = {c.route: c.reason for c in changes}
    assert sel.active.tolist() == [False, False, True]
    assert why[0].startswith("spread 25.0 bps over max_spread_bps 10")
    assert why[1].startswith("depth 1000 under min_depth_quote 5000")


def test_the_volume_gate_counts_the_quieter_leg_over_the_window():
    sel = selector(min_volume_quote=1000.0)
    for route, (a, b) in enumerate(((5000.0, 400.0), (5000.0, 1500.0), (0.0, 0.0))):
        sel.observe_volume(route, 0, a)
        sel.observe_volume(route, 1, b)
    changes = period(sel, 10 * S, {0: 0.0, 1: 0.0, 2: 0.0})
    assert sel.volume.tolist() == [400.0, 1500.0, 0.0] and sel.active.tolist() == [False, True, False]
    assert {c.route: c.reason for c in changes}[0] == "volume 400 under min_volume_quote 1000"
    # the window holds two periods: 700 more on route 0's quiet leg brings it to 1,100
    sel.observe_volume(0, 1, 700.0)
    sel.observe_volume(0, 0, 700.0)
    (back,) = [c for c in period(sel, 20 * S, {0: 0.0, 1: 0.0, 2: 0.0}) if c.route == 0]
    assert back.active and sel.volume[0] == 1100.0


def test_a_route_without_data_keeps_its_state_while_a_slot_is_left():
    sel = selector(max_active=2)
    # route 1 judged; 0 and 2 not (no valid update: not warm, stale FX, feed down): 0 keeps
    # the slot left, 2 has none
    (c,) = period(sel, 10 * S, {1: -5.0})
    assert (c.route, c.active, c.reason) == (2, False, "no valid update in the window, no slot left")
    assert sel.active.tolist() == [True, True, False] and sel.why[0] == "no valid update in the window"
    # not judged, a parked route is not made active on no evidence, even with a slot free
    sel = selector(max_active=3)
    sel.active[:] = [True, True, False]
    assert period(sel, 10 * S, {0: -5.0}) == [] and sel.active.tolist() == [True, True, False]


def test_missed_periods_are_skipped_and_the_same_inputs_choose_alike():
    def run():
        sel = selector(max_active=1)
        out = []
        for k, edges in enumerate(({0: -3.0, 1: -1.0, 2: -9.0}, {0: 8.0, 1: -1.0}, {2: 20.0})):
            out += period(sel, (k + 1) * 25 * S, edges)
        return out, sel.next_ns
    a, nxt = run()
    assert a == run()[0] and nxt == 80 * S                     # selected at 75 s: next at 80 s
    # 25 s: route 1 best; 50 s: route 0's window mean (-3, 8: 2.5) under route 1's -1 + 5;
    # 75 s: route 2's 20 over the window (its -9 has left it) takes the one slot
    assert [(c.route, c.active) for c in a] == [(0, False), (2, False), (1, False), (2, True)]


def test_choose_is_pure_and_every_route_has_a_reason():
    active = np.array([True, False])
    n, score = np.array([4, 4]), np.array([-1.0, 10.0])
    out, why = choose(active, n, score, np.array([1.0, 1.0]), np.array([1e6, 1e6]), SelectParams(max_active=1))
    assert out.tolist() == [False, True] and all(why) and active.tolist() == [True, False]


def test_depth_counts_the_levels_within_the_band():
    px, sz = np.array([100.0, 99.95, 99.0]), np.array([1.0, 2.0, 5.0])
    assert side_depth(px, sz, 10.0, bids=True) == pytest.approx(100.0 + 199.9)
    assert side_depth(np.array([100.0, 100.2]), np.array([1.0, 1.0]), 10.0, bids=False) == 100.0


@pytest.mark.parametrize("bad", [dict(max_active=-1), dict(every_ns=0), dict(periods=0),
                                 dict(max_spread_bps=-1.0), dict(hysteresis_bps=float("nan"))])
def test_bad_select_params_are_refused(bad):
    with pytest.raises(ValueError):
        SelectParams(**bad)


# -- through the route trader --------------------------------------------------------------------
SYMBOLS = ["BTC/KRW@upbit", "ETH/KRW@upbit", "USDT/KRW@upbit", "BTC/USDT@binance", "ETH/USDT@binance"]
FX = 1400.0


def config(tmp_path, **strategy) -> dict:
    return {
        "pipeline": {"name": "sel"},
        "strategy": {"kind": "arbitrage", **strategy},
        "feeds": [{"name": "upbit", "kind": "synthetic", "venue": "upbit",
                   "symbols": ["BTC/KRW", "ETH/KRW", "USDT/KRW"]},
                  {"name": "binance", "kind": "synthetic", "venue": "binance", "symbols": ["BTC/USDT", "ETH/USDT"]}],
        "execution": {"currency": "USDT", "venue_rules": False},
        "execution.fx": [{"quote": "KRW", "symbol": "USDT/KRW@upbit"}],
        "execution.venue_fees": [{"venue": "upbit", "taker_bps": 5.0, "maker_bps": 5.0},
                                 {"venue": "binance", "taker_bps": 10.0, "maker_bps": 10.0}],
        "routes": [{"legs": [f"{a}/KRW@upbit", f"{a}/USDT@binance"], "qty": q, "entry_bps": 30.0,
                    "exit_bps": -5.0, "window": 2} for a, q in (("BTC", 0.01), ("ETH", 0.1))],
        "inventory": [{"venue": v, "asset": a, "amount": x} for v, a, x in (
            ("upbit", "BTC", 1.0), ("binance", "BTC", 1.0), ("upbit", "ETH", 10.0), ("binance", "ETH", 10.0),
            ("upbit", "KRW", 1e9), ("binance", "USDT", 1e6))],
    }


def load(tmp_path, **strategy):
    path = tmp_path / "sel.toml"
    path.write_text(toml(config(tmp_path, **strategy)))
    return load_config(path)


class Books:
    """BOOK rows of the route symbols, one level a side, their table seqs growing per write."""

    def __init__(self):
        self.rows = np.zeros(len(SYMBOLS), BOOK)
        self.rows["symbol_id"] = np.arange(len(SYMBOLS))
        self.seqs = np.zeros(len(SYMBOLS), np.uint64)

    def set(self, key: str, mid: float, spread_bps: float, ts: int, size: float = 100.0) -> None:
        i = SYMBOLS.index(key)
        r = self.rows[i]
        r["n_bids"] = r["n_asks"] = 1
        r["bid_px"][0], r["ask_px"][0] = mid * (1 - spread_bps * 5e-5), mid * (1 + spread_bps * 5e-5)
        r["bid_sz"][0] = r["ask_sz"][0] = size
        r["ts_origin_ns"] = ts
        self.seqs[i] += 2

    def round(self, ts: int, premium_bps: float = 0.0, btc_spread: float = 20.0, eth_spread: float = 2.0):
        """Both routes' books at ``ts``: BTC's 20 bps wide, ETH's 2 bps."""
        for asset, usd, spread in (("BTC", 100_000.0, btc_spread), ("ETH", 4_000.0, eth_spread)):
            self.set(f"{asset}/USDT@binance", usd, spread, ts)
            self.set(f"{asset}/KRW@upbit", usd * FX * (1 + premium_bps * 1e-4), spread, ts)
        return self.rows, self.seqs


def fx_tick(ts: int) -> np.ndarray:
    t = np.zeros(1, TICK)
    t["symbol_id"], t["kind"], t["ts_origin_ns"], t["ts_exchange_ns"] = SYMBOLS.index("USDT/KRW@upbit"), TICK_QUOTE, ts, ts
    t["bid"], t["ask"], t["price"] = FX - 0.5, FX + 0.5, FX
    return t


def test_arb_strategy_parks_the_worse_route_says_it_once_and_the_parked_one_still_unwinds(tmp_path):
    cfg = load(tmp_path, max_active_routes=1, select_every_s=1.0, select_window_s=2.0)
    clock = SimClock(0)
    s = ArbStrategy(SYMBOLS, cfg, clock)
    b = Books()
    for k in range(8):                                      # 0.1 s apart, the premium flat
        clock.set(k * S // 10)
        s.on_ticks(fx_tick(clock.time_ns()))
        assert len(s.on_books(*b.round(clock.time_ns()))) == 0
    assert s.selection_changes() == []                      # not a second yet: all active
    clock.set(S)
    s.on_books(*b.round(S))
    (change,) = s.selection_changes()
    active, text, event = change
    assert not active and text.startswith("route BTC/KRW@upbit / BTC/USDT@binance parked: score")
    assert event["kind"] == "route_selection" and event["state"] == "PARKED" and event["key"] == "BTC/KRW@upbit / BTC/USDT@binance"
    assert s.selection_changes() == []                      # said once
    st = s.stats()
    assert st["routes_parked"] == 1 and st["routes_activated"] == 0
    btc, eth = st["routes"]["BTC/KRW@upbit / BTC/USDT@binance"], st["routes"]["ETH/KRW@upbit / ETH/USDT@binance"]
    assert not btc["active"] and eth["active"] and btc["score_bps"] < eth["score_bps"]
    assert btc["spread_bps"] == pytest.approx(20.0) and eth["depth_quote"] > 0
    # a jump of the premium: the parked BTC route opens nothing, ETH trades
    clock.set(S + S // 10)
    out = s.on_books(*b.round(clock.time_ns(), premium_bps=150.0))
    assert set(out["symbol_id"].tolist()) == {SYMBOLS.index("ETH/KRW@upbit"), SYMBOLS.index("ETH/USDT@binance")}
    assert s.routes[0].trader.counters["parked"] == 1
    # BTC holding coins sold in Korea: the premium falls back, the parked route unwinds them
    s.routes[0].trader.position = 0.004
    s.routes[1].trader.legs.clear()
    clock.set(S + 2 * S // 10)
    out = s.on_books(*b.round(clock.time_ns(), premium_bps=-150.0))
    btc_legs = out[np.isin(out["symbol_id"], [SYMBOLS.index("BTC/KRW@upbit"), SYMBOLS.index("BTC/USDT@binance")])]
    assert len(btc_legs) == 2 and (btc_legs["qty"] == 0.004).all()


def test_arb_strategy_counts_the_route_symbols_trades_for_the_volume_gate(tmp_path):
    cfg = load(tmp_path, min_volume_quote=50_000.0, select_every_s=1.0, select_window_s=1.0)
    clock = SimClock(0)
    s = ArbStrategy(SYMBOLS, cfg, clock)
    b = Books()
    trades = np.zeros(4, TICK)
    trades["kind"] = TICK_TRADE
    # BTC: 1 BTC on Binance (100,000 USDT), 0.1 on Upbit at 140M KRW (10,000 USDT at 1,400):
    # its quieter leg under the gate; ETH: 20 and 20 at 4,000 USDT (80,000 on each)
    for k, (key, px, qty) in enumerate((("BTC/USDT@binance", 100_000.0, 1.0), ("BTC/KRW@upbit", 1.4e8, 0.1),
                                        ("ETH/USDT@binance", 4_000.0, 20.0), ("ETH/KRW@upbit", 5.6e6, 20.0))):
        trades[k]["symbol_id"], trades[k]["price"], trades[k]["size"] = SYMBOLS.index(key), px, qty
    for k in range(6):
        clock.set(k * S // 5)
        s.on_ticks(fx_tick(clock.time_ns()))
        if k == 3:
            s.on_ticks(trades)
        s.on_books(*b.round(clock.time_ns()))
    (change,) = s.selection_changes()
    assert change[1].endswith("volume 10000 under min_volume_quote 50000")
    st = s.stats()["routes"]
    assert st["ETH/KRW@upbit / ETH/USDT@binance"]["volume_quote"] == pytest.approx(80_000.0)


def test_arb_strategy_without_selection_settings_has_no_selector(tmp_path):
    s = ArbStrategy(SYMBOLS, load(tmp_path), SimClock(0))
    assert s.selector is None and s.selection_changes() == []
    assert "active" not in s.stats()["routes"]["BTC/KRW@upbit / BTC/USDT@binance"]


@pytest.mark.parametrize("bad, words", [
    (dict(max_active_routes=-1), "strategy.max_active_routes must be >= 0"),
    (dict(select_every_s=0.0), "strategy.select_every_s must be > 0"),
    (dict(select_every_s=60.0, select_window_s=30.0), "select_window_s at least that"),
    (dict(max_spread_bps=-1.0), "min_volume_quote must be >= 0 (0: off)"),
    (dict(min_volume_quote=-1.0), "min_volume_quote must be >= 0 (0: off)"),
    (dict(min_depth_quote=-5.0), "min_volume_quote must be >= 0 (0: off)"),
    (dict(depth_band_bps=0.0), "strategy.depth_band_bps must be in (0, 1000)"),
])
def test_bad_selection_settings_are_one_line_config_errors(tmp_path, capsys, bad, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load(tmp_path, **bad)
    assert main(["backtest", "--config", str(tmp_path / "sel.toml"), "--data", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err
