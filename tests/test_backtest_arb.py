"""The arbitrage backtest (pipeline/backtest_arb.py): the route trader and the desk on
the real Upbit BTC/KRW and Binance BTC/USDT 5-minute closes of 2025-08-20 with FRED's
fixing; pairs traded within the inventory, money in USDT, bad prints counted and never
traded, the command line's files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import toml
from pipeline.backtest_arb import run_arb_backtest
from pipeline.cli import main
from pipeline.config import load_config

DATA = Path(__file__).parent / "data"
UPBIT = DATA / "candles" / "upbit_BTC-KRW_5m_2025-08-20.csv"
BINANCE = DATA / "candles" / "binance_BTC-USDT_5m_2025-08-20.csv"
FRED = DATA / "fx" / "usdkrw_1d_fred_DEXKOUS.csv"
KRW_AUG_19 = 1392.04


def arb_config(tmp_path: Path, **route) -> Path:
    path = tmp_path / "arb.toml"
    path.write_text(toml({
        "pipeline": {"name": "arb"},
        "feeds": [{"name": "upbit", "kind": "synthetic", "venue": "upbit", "symbols": ["BTC/KRW"]},
                  {"name": "binance", "kind": "synthetic", "venue": "binance", "symbols": ["BTC/USDT"]}],
        "execution": {"currency": "USDT"},
        "execution.fx": [{"quote": "KRW", "file": str(FRED)}],
        "execution.venue_fees": [{"venue": "upbit", "taker_bps": 5.0, "maker_bps": 5.0},
                                 {"venue": "binance", "taker_bps": 10.0, "maker_bps": 10.0}],
        "risk": {"max_position_notional": 1e6, "max_order_notional": 1e6, "max_gross_exposure": 1e7,
                 "max_venue_exposure": 1e7, "max_route_imbalance": 1e6, "max_quote_age_s": 0},
        "routes": [{"legs": ["BTC/KRW@upbit", "BTC/USDT@binance"], "qty": 0.01, "entry_bps": 5.0,
                    "exit_bps": -5.0, "window": 12, **route}],
        "inventory": [{"venue": "upbit", "asset": "BTC", "amount": 0.05},
                      {"venue": "upbit", "asset": "KRW", "amount": 10e6},
                      {"venue": "binance", "asset": "BTC", "amount": 0.05},
                      {"venue": "binance", "asset": "USDT", "amount": 7000.0}],
    }))
    return path


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arb")
    return run_arb_backtest(load_config(arb_config(tmp)), [str(UPBIT), str(BINANCE)], tmp / "j.sqlite")


def test_pairs_trade_on_the_premium_over_its_mean_within_the_inventory(result):
    s = result.summary()
    assert s["currency"] == "USDT" and s["bars"] == 200
    assert s["pairs_sent"] >= 4 and s["pairs_filled"] == s["pairs_sent"] and s["one_leg_only"] == 0
    first = result.pairs[0]
    assert first["direction"] == "sell BTC/KRW@upbit" and first["edges_bps"][0] >= 5.0
    # Upbit's coins go to Binance and back; together they stay 0.1 BTC, and never below zero
    up, bn = result.coins["upbit/BTC"], result.coins["binance/BTC"]
    assert np.allclose(up + bn, 0.1) and up.min() >= -1e-12 and bn.min() >= -1e-12
    assert result.counts["routes"]["BTC upbit/binance"]["no_coins"] >= 1     # Upbit ran out: that side stopped
    assert result.counts["hedges"]["opened"] == 0 and not result.counts["denials"]


def test_money_is_in_usdt_and_the_holding_is_valued_the_same_way(result):
    closes = {p: [float(r["close"]) for r in csv.DictReader(open(p))] for p in (UPBIT, BINANCE)}
    hold0 = 0.05 * closes[UPBIT][0] / KRW_AUG_19 + 10e6 / KRW_AUG_19 + 0.05 * closes[BINANCE][0] + 7000.0
    assert result.hold[0] == pytest.approx(hold0, rel=1e-9)
    s = result.summary()
    assert s["pnl_after_fees"] == pytest.approx(result.equity[-1] - 10_000.0)
    # fees: 5 bps of each Upbit leg and 10 bps of each Binance leg, in USDT: about 15 bps of 0.01 BTC a pair
    assert s["fees"] == pytest.approx(s["pairs_filled"] * 0.01 * 113_000 * 15e-4, rel=0.05)


def test_the_same_data_gives_the_same_pairs(result, tmp_path):
    again = run_arb_backtest(load_config(arb_config(tmp_path)), [str(UPBIT), str(BINANCE)])
    assert again.pairs == result.pairs and np.array_equal(again.equity, result.equity)


def test_a_bad_print_is_counted_and_never_traded(tmp_path):
    rows = list(csv.reader(open(UPBIT)))
    rows[50][3] = "0"                                 # a low of 0, as Bithumb's daily file has four times
    bad = tmp_path / "upbit_BTC-KRW_5m_2025-08-20.csv"
    csv.writer(open(bad, "w", newline="")).writerows(rows)
    res = run_arb_backtest(load_config(arb_config(tmp_path)), [str(bad), str(BINANCE)])
    assert sum(res.counts["bad_rows"]["BTC/KRW@upbit"].values()) == 1
    bad_close = int(rows[50][0]) * 1_000_000 + 300 * 10**9
    assert bad_close not in {p["ts_ns"] for p in res.pairs}
    assert res.summary()["bars"] == 200                # Binance's bar is still there; Upbit's is not


def test_the_command_writes_the_summary_and_the_path(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["backtest", "--config", str(arb_config(tmp_path)), "--data", str(UPBIT), str(BINANCE),
                 "--out", str(out), "--half-spread-bps", "2"]) == 0
    text = capsys.readouterr().out
    assert "pairs sent" in text and "USDT after fees" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["half_spread_bps"] == 2.0 and summary["pairs"]
    header = (out / "path.csv").read_text().splitlines()[0]
    assert header.startswith("ts_ns,equity,hold,premium_bps_route0") and "coins_upbit/BTC" in header


def test_mixed_currencies_without_a_rate_are_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "norate.toml"
    text = arb_config(tmp_path).read_text().replace('currency = "USDT"', "")
    path.write_text(text.split("[[execution.fx]]")[0] + "\n[[routes]]" + text.split("[[routes]]")[1])
    assert main(["backtest", "--config", str(path), "--data", str(UPBIT), str(BINANCE),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "set [execution] currency" in err and "\n" not in err and "Traceback" not in err


def test_route_selection_runs_in_the_backtest_as_live(tmp_path, result):
    # the backtest's books are 2 bps wide (1 bp either side of the close): a 1 bp spread
    # gate parks the route at the first selection that can judge it (the window of 12 bars
    # is warm after the first hour: at the second), before its first pair of the free run;
    # parked, it opens nothing all day and, holding nothing, has nothing to unwind
    path = arb_config(tmp_path)
    path.write_text(path.read_text().replace("[[routes]]", "[strategy]\nmax_spread_bps = 1.0\n"
                                             "select_every_s = 3600.0\nselect_window_s = 3600.0\n\n[[routes]]", 1))
    res = run_arb_backtest(load_config(path), [str(UPBIT), str(BINANCE)])
    (parked,) = res.counts["selection"]
    assert parked == {"ts_ns": int(res.ts_ns[0]) + 2 * 3600 * 10**9, "route": 0, "state": "PARKED",
                      "reason": "spread 2.0 bps over max_spread_bps 1"}
    assert result.pairs[0]["ts_ns"] > parked["ts_ns"] and res.pairs == []
    assert res.counts["routes"]["BTC upbit/binance"]["parked"] >= result.summary()["pairs_sent"] // 2
    assert "selection" not in result.counts                     # no settings: no selector
