"""Parity: a candle file replayed through the live pipeline (`kind = "replay"`,
``lockstep``: a bar at a time, each played once the pipeline has settled on the
last) makes exactly the fills `pipeline backtest` makes on that file: the same
symbol, side, quantity, price and fee, in the same order. Real processes, rings
and a journal on disk on one side; the same cores on a simulated clock on the other.

What can differ, by design: the rules that read a clock (order rate, stale data, the
daily loss's day) read the wall clock live and market time in a backtest; a replay
plays days in seconds, so the test keeps the order rate from binding."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.backtest import run_backtest
from pipeline.config import load_config
from pipeline.journal import rows

from conftest import toml
from test_pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
BTC = ROOT / "samples" / "binance_BTC-USDT_5m.csv"
BARS = 700


def test_live_replay_makes_the_backtests_fills(tmp_path, journal_dir):
    data = tmp_path / "binance_BTC-USDT_5m.csv"
    with open(BTC) as f:
        lines = list(csv.reader(f))[:BARS + 1]
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows(lines)
    conf = tmp_path / "parity.toml"
    conf.write_text(toml({
        "pipeline": {"name": "parity", "workers": 2, "startup_timeout_s": 120},
        "bus": {"tap_bind": "", "metrics_bind": ""},
        "feeds": [{"name": "replay", "kind": "replay", "venue": "binance", "symbols": ["BTC/USDT"],
                   "path": str(data), "lockstep": True}],
        "indicators": {"bar_seconds": 300.0, "ema": [3, 8], "rsi": [14]},
        "model": {"kind": "momentum", "threshold": 0.0005},
        "strategy": {"enter_margin": 0.05, "exit_margin": 0.02, "min_hold_bars": 1},
        # the rules on the clock read the wall clock live and market time in a backtest: a
        # replay plays days in seconds, so the order rate must not bind here
        "risk": {"max_position_notional": 1e9, "max_order_notional": 1e9, "max_gross_exposure": 1e9,
                 "max_venue_exposure": 1e9, "max_drawdown_frac": 0.9, "max_daily_loss_frac": 0.9,
                 "max_orders_per_s": 1e6, "order_burst": 1000000},
        "execution": {"venue_rules": False, "slippage_bps": 2.0},
    }))
    cfg = load_config(conf)
    want = run_backtest(cfg, [str(data)]).fills
    assert len(want) >= 20, "the test strategy should trade"

    p = Pipeline(tmp_path, config=conf).start()
    try:
        p.wait_status(lambda st: any(w["id"].startswith("feed.") and w["stats"].get("replay_settled")
                                     for w in st["workers"]), "the replay played and settled")
        assert p.cli("stop").returncode == 0
        assert p.proc.wait(90) == 0
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
    got = [r["payload"] for r in rows(journal_dir / "parity.sqlite", kinds=["fill"])]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g["symbol_id"], g["side"]) == (int(w["symbol_id"]), int(w["side"]))
        assert np.isclose(g["qty"], w["qty"], rtol=1e-12) and np.isclose(g["price"], w["price"], rtol=1e-12)
        assert np.isclose(g["fee"], w["fee"], rtol=1e-12)
