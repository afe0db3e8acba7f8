"""The honesty checks of `pipeline backtest` (pipeline/backtest_checks.py) on the shipped
5-minute candles: walk-forward never trains on a row it trades, the look-ahead check
passes the real chain and catches a model that peeks one bar ahead, the warm-up check
says after how many bars a later start decides as the full run does."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from models.registry import Registry
from models.serving import MomentumModel
from pipeline.backtest import load_data
from pipeline.backtest_checks import WalkForwardModel, Window, check_lookahead, check_warmup, walk_forward
from pipeline.backtest_report import _iso, metrics
from pipeline.cli import main
from pipeline.config import load_config
from shm.records import TICK_TRADE

from conftest import TINY_TREES, toml
from test_backtest import BTC, ETH, config

BAR_NS = 300 * 10**9
TWO_DAYS = "2026-02-07"        # the samples start on 2026-02-05: 576 bars a symbol
FIVE_DAYS = "2026-02-10"


def ensemble_config(tmp_path: Path) -> Path:
    """The momentum test config of test_backtest with a tiny forest + XGBoost ensemble."""
    sections = tomllib.loads(config(tmp_path).read_text())
    sections["model"] = {"kind": "ensemble", "models": ["forest", "xgboost"], "folds": 2, "horizon": 6,
                         **TINY_TREES}
    path = tmp_path / "ensemble.toml"
    path.write_text(toml(sections))
    return path


# -- walk-forward ------------------------------------------------------------------------------
def test_walk_forward_never_trains_on_a_row_it_trades(tmp_path):
    cfg = load_config(ensemble_config(tmp_path))
    r = walk_forward(cfg, [str(BTC)], train_bars=500, test_bars=250, out_dir=tmp_path / "wf", end=FIVE_DAYS)
    periods = r.meta["periods"]
    assert len(periods) == 4
    for a, b in zip(periods, periods[1:]):                 # consecutive, one bar apart
        assert b["from_ns"] == a["to_ns"] + BAR_NS and b["train_to_ns"] == b["from_ns"] - BAR_NS
    assert r.counts["not_traded_before_start"] > 0         # the first training window only warms up
    assert len(r.intents) >= 20 and len(r.fills) >= 20
    froms = np.array([p["from_ns"] for p in periods])
    traded = set()
    horizon = cfg.model.horizon
    for what, rows in (("intent", r.intents), ("fill", r.fills)):
        for ts in rows["ts_ns"].tolist():
            k = int(np.searchsorted(froms, ts, side="right")) - 1
            assert k >= 0, f"a {what} at {ts} before the first test window"
            p = periods[k]
            traded.add(k)
            # after the candles the model was given, and after the last close a label read
            assert ts > p["train_to_ns"], (what, ts, p)
            _, meta = Registry(p["registry"]).load("ensemble")
            assert meta["model"] == "ensemble" and meta["version"] == p["model_versions"]["ensemble"]
            last_label_close = meta["data_range"]["last_ms"] * 10**6 + (horizon + 1) * BAR_NS
            assert ts > last_label_close, (what, ts, meta["data_range"])
            assert meta["data_range"]["first_ms"] * 10**6 >= p["train_from_ns"]
    assert len(traded) >= 3, "the windows should each trade"
    # one run: the equity curve is continuous and positions carry over a boundary
    assert len(r.equity) == len(r.ts_ns) and np.all(np.diff(r.ts_ns) > 0)
    # the figures start at the first decision traded: the first training window, played
    # flat to warm up, is left out (buy-and-hold starts there too)
    assert r.ts_ns[0] == periods[0]["from_ns"] and r.signals["ts_ns"].min() >= periods[0]["from_ns"]
    figures = metrics(r)
    assert figures["period"]["start"] == _iso(periods[0]["from_ns"])


class _Tagged:
    """A stand-in ensemble that answers with its window's number and remembers its rows."""

    members = ["forest"]

    def __init__(self, k: int):
        self.k, self.seen = k, []

    def predict(self, ids, rows):
        self.seen += rows["ts_bar_ns"].tolist()
        n = len(ids)
        return (np.full((n, 3), float(self.k)), np.zeros((n, 4, 3)), np.zeros((n, 4), np.uint16),
                np.zeros(n, np.uint16), np.zeros(n, bool))


def test_each_bar_is_served_by_its_windows_model_which_warms_up_before_it():
    windows = [Window(0, (10 + 10 * k) * BAR_NS, (20 + 10 * k) * BAR_NS, Path(f"w{k}")) for k in range(3)]
    made = {}

    def load(registry):
        made[registry] = _Tagged(int(str(registry)[1:]))
        return made[registry]

    model = WalkForwardModel(windows, load, warm_ns=3 * BAR_NS)
    rows = np.zeros(1, [("ts_bar_ns", "<i8")])
    served = []
    for bar in range(40):
        rows["ts_bar_ns"] = bar * BAR_NS
        served.append(int(model.predict(np.zeros(1, np.intp), rows)[0][0, 0]))
    assert served == [0] * 20 + [1] * 10 + [2] * 10
    assert made[Path("w1")].seen == [b * BAR_NS for b in range(17, 30)]   # 3 bars of warm-up first
    assert made[Path("w2")].seen == [b * BAR_NS for b in range(27, 40)]
    assert len(model.live) == 1, "a past window's ensemble is let go"


# -- look-ahead --------------------------------------------------------------------------------
class PeekingModel(MomentumModel):
    """Cheats: reads the close of the bar AFTER each row from the data it was built with
    and says up by how much it is higher."""

    def __init__(self, data):
        super().__init__("ema_3", "ema_8", 0.0005)
        trades = data.ticks[data.ticks["kind"] == TICK_TRADE]
        self.close = {}                  # ticks are in time order: a bar's last trade is its close
        for sid, ts, price in zip(trades["symbol_id"].tolist(), trades["ts_exchange_ns"].tolist(),
                                  trades["price"].tolist()):
            self.close[(sid, ts // BAR_NS)] = price

    def predict(self, rows):
        p = np.zeros((len(rows), 3))
        for i, row in enumerate(rows):
            nxt = self.close.get((int(row["symbol_id"]), int(row["ts_bar_ns"]) // BAR_NS + 1), row["close"])
            up = 1.0 / (1.0 + np.exp(-(nxt / row["close"] - 1.0) * 1e3))
            p[i] = (1.0 - up, 0.0, up)
        return p


def test_lookahead_check_passes_the_live_chain(tmp_path):
    cfg = load_config(config(tmp_path))
    report = check_lookahead(cfg, [str(BTC), str(ETH)], n_times=3, seed=1, end=TWO_DAYS)
    assert report["clean"] and report["lookaheads"] == []
    assert len(report["times"]) == 3
    # every decision before each time was compared: signals of both symbols, and intents
    assert all(t["decisions"] > 2 * ((t["t_ns"] - 1770249600 * 10**9) // BAR_NS - 2) for t in report["times"])


def test_lookahead_check_catches_a_model_that_peeks_one_bar_ahead(tmp_path):
    cfg = load_config(config(tmp_path))
    data = load_data([str(BTC), str(ETH)], end=TWO_DAYS)
    report = check_lookahead(cfg, data, n_times=3, seed=1, model=PeekingModel)
    assert not report["clean"]
    times = [t["t_ns"] for t in report["times"]]
    assert all(t["changed"] >= 1 for t in report["times"])
    for found in report["lookaheads"]:
        assert found["ts_ns"] <= found["at_ns"] and found["at_ns"] in times
        assert found["symbol"] in ("BTC/USDT@binance", "ETH/USDT@binance")
    # the peek is at each sampled bar close: the bar after it is what was perturbed
    hits = {(f["at_ns"], f["ts_ns"]) for f in report["lookaheads"] if f["what"] == "signal"}
    assert {t for t, ts in hits if t == ts} == set(times)


# -- warm-up -----------------------------------------------------------------------------------
def test_warmup_check_counts_the_bars_until_a_later_start_decides_the_same(tmp_path):
    cfg = load_config(config(tmp_path))
    report = check_warmup(cfg, [str(BTC)], offsets=(40, 150), end=TWO_DAYS)
    assert report["indicator_lookback"] == 33 and report["model_window"] == 0   # macd 12/26/9
    assert report["warmup_bars"] == 33
    for run in report["runs"]:
        cols = run["indicator_columns"]
        # windowed indicators are exact once their window is full (sma 20: the 20th bar) ...
        assert cols["sma_20"] == cols["bb_middle_20_2"] == 19
        # ... an EMA only converges: later than its own lookback, yet it does
        assert 7 < cols["ema_8"] < 100
        assert cols["obv"] is None, "on-balance volume is a running sum: it never forgets the start"
        assert "obv" not in run["input_columns"]                  # and the models never see it
        assert run["decisions_agree_after_bars"] is not None
        assert run["decisions_agree_after_bars"] <= run["inputs_agree_after_bars"] < run["bars"]
    needed = report["needed_bars"]
    assert needed == max(max(r["decisions_agree_after_bars"], r["inputs_agree_after_bars"])
                         for r in report["runs"])
    assert report["converged"] == (needed <= 33)


# -- command line ------------------------------------------------------------------------------
def test_cli_lookahead_and_warmup_verdicts(tmp_path, capsys):
    cfg = str(config(tmp_path))
    base = ["backtest", "--config", cfg, "--data", str(BTC), "--to", TWO_DAYS, "--no-progress",
            "--out", str(tmp_path / "out"), "--samples", "2"]
    assert main(base + ["--check", "lookahead"]) == 0
    assert "look-ahead    none:" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "lookahead.json").read_text())["clean"] is True

    code = main(base + ["--check", "warmup"])
    report = json.loads((tmp_path / "out" / "warmup.json").read_text())
    assert code == (0 if report["converged"] else 1)
    out = capsys.readouterr().out
    assert f"agree with the full run's after {report['needed_bars']} bars" in out
    assert "configured warm-up 33 bars" in out


def test_cli_walk_forward_says_which_model_traded_when(tmp_path, capsys):
    out = tmp_path / "wf"
    assert main(["backtest", "--config", str(ensemble_config(tmp_path)), "--data", str(BTC), "--to", "2026-02-08",
                 "--no-progress", "--out", str(out), "--walk-forward", "--train-bars", "400",
                 "--test-bars", "200"]) == 0
    text = capsys.readouterr().out
    traded = [line for line in text.splitlines() if line.startswith("traded")]
    # 864 bars to 2026-02-08: 400 to train, then 200, 200 and the last 64 traded
    assert len(traded) == 3 and "window_1 (forest v1, xgboost v1, ensemble v1)" in traded[0]
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert [Path(p["registry"]).name for p in meta["periods"]] == ["window_1", "window_2", "window_3"]
    assert (out / "models" / "window_2" / "ensemble").is_dir() and (out / "report.html").is_file()


@pytest.mark.parametrize("extra, words", [
    (["--train-bars", "10"], "go with --walk-forward"),
    (["--walk-forward", "--train-bars", "10"], "needs --train-bars N and --test-bars N"),
    (["--walk-forward", "--train-bars", "10", "--test-bars", "5"], "retrains the ensemble"),
    (["--check", "lookahead", "--journal", "j.sqlite"], "without --walk-forward and --journal"),
    (["--check", "warmup", "--samples", "0"], "--samples 0"),
])
def test_cli_mistakes_are_one_line(tmp_path, capsys, extra, words):
    assert main(["backtest", "--config", str(config(tmp_path)), "--data", str(BTC), "--no-progress",
                 "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err
