"""`pipeline backtest`: the live chain on a simulated clock, over the shipped 5-minute
candles (samples/). Real parts throughout: the replay feed's ticks, the bar builder,
the indicator engine, the momentum model, the strategy, the desk with its paper
broker and a SQLite journal on disk."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.backtest import load_data, run_backtest
from pipeline.backtest_report import fingerprint
from pipeline.cli import main
from pipeline.config import load_config
from shm.records import REASON_ENTRY, TICK_GAP

from conftest import data_file, toml

ROOT = Path(__file__).resolve().parent.parent
BTC = ROOT / "samples" / "binance_BTC-USDT_5m.csv"
ETH = ROOT / "samples" / "binance_ETH-USDT_5m.csv"
SLIP_BPS = 2.0
TO = "2026-02-09"           # the first four days of the samples: ~1150 bars a symbol


def config(tmp_path: Path, name: str = "bt", **execution) -> Path:
    """5-minute bars, the momentum rule, a strategy that trades often (so there are fills
    to compare) and wide risk limits."""
    path = tmp_path / f"{name}.toml"
    path.write_text(toml({
        "pipeline": {"name": name},
        "indicators": {"bar_seconds": 300.0, "ema": [3, 8], "rsi": [14]},
        "model": {"kind": "momentum", "threshold": 0.0005},
        "strategy": {"enter_margin": 0.05, "exit_margin": 0.02, "min_hold_bars": 1},
        "risk": {"max_position_notional": 1e9, "max_order_notional": 1e9, "max_gross_exposure": 1e9,
                 "max_venue_exposure": 1e9, "max_drawdown_frac": 0.9, "max_daily_loss_frac": 0.9},
        "execution": {"venue_rules": False, "slippage_bps": SLIP_BPS, **execution},
    }))
    return path


def candles(path: Path) -> dict[int, dict[str, float]]:
    """open time (ns) -> the candle."""
    with open(path) as f:
        return {int(r["timestamp_ms"]) * 1_000_000: {k: float(v) for k, v in r.items()}
                for r in csv.DictReader(f)}


def test_same_data_same_fills(tmp_path):
    cfg = load_config(config(tmp_path))
    a = run_backtest(cfg, [str(BTC), str(ETH)], end=TO)
    b = run_backtest(cfg, [str(BTC), str(ETH)], end=TO)
    assert len(a.fills) >= 20, "the test strategy should trade"
    assert fingerprint(a.fills) == fingerprint(b.fills)
    assert np.array_equal(a.equity, b.equity)
    assert a.symbols == ["BTC/USDT@binance", "ETH/USDT@binance"]
    assert set(a.fills["symbol_id"].tolist()) == {0, 1}
    # equity accounts for every fill: capital + realised - fees + open marked
    assert a.counts["desk"]["fills"] == len(a.fills)


def test_market_orders_fill_at_the_next_open_plus_slippage(tmp_path):
    """The tick that closes a bar (the next bar's open) reaches the desk before the
    intents that bar causes: a market order fills at that open, moved by slippage."""
    r = run_backtest(load_config(config(tmp_path)), [str(BTC)], end=TO)
    bars = candles(BTC)
    assert len(r.fills) >= 10
    for f in r.fills:
        bar = bars[int(f["ts_ns"])]                       # a fill happens at a bar's open time
        want = bar["open"] * (1 + int(f["side"]) * SLIP_BPS / 1e4)
        assert math.isclose(f["price"], want, rel_tol=1e-12), (f, bar)
        assert math.isclose(f["slippage"], bar["open"] * SLIP_BPS / 1e4 * f["qty"], rel_tol=1e-9)
        assert math.isclose(f["fee"], f["price"] * f["qty"] * 10 / 1e4, rel_tol=1e-9)   # taker 10 bps
    assert f["client_order_id"]


def test_latency_delays_the_fill_to_a_later_trade(tmp_path):
    """With 100 s to reach the venue, an order decided at a 5-minute bar's close meets the
    next bar's second trade (75 s in: its low or high), not its open."""
    r = run_backtest(load_config(config(tmp_path, ack_latency_ms=100_000)), [str(BTC)], end=TO)
    bars = candles(BTC)
    assert len(r.fills) >= 10
    for f in r.fills:
        open_ns = int(f["ts_ns"]) - 100 * 10**9
        bar = bars[open_ns]
        second = bar["low"] if bar["close"] >= bar["open"] else bar["high"]
        want = second * (1 + int(f["side"]) * SLIP_BPS / 1e4)
        assert math.isclose(f["price"], want, rel_tol=1e-12), (f, bar)


def test_bad_rows_are_counted_and_gaps_open_nothing(tmp_path):
    """NaN and negative prices and repeated rows are skipped and counted, rows out of
    order are sorted and counted; a hole in the candles flags the bar across it, which
    opens no position."""
    with open(BTC) as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:1200]
    body[100][4] = "nan"                        # close
    body[200][1] = "-5"                         # open
    body[300], body[301] = body[301], body[300]  # out of order
    body.insert(400, list(body[399]))            # the same row twice
    del body[600:612]                            # an hour missing
    path = tmp_path / "binance_BTC-USDT_5m.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([head] + body)
    data = load_data([str(path)])
    info = data.files[0]
    assert info["bad_rows"] == {"nan": 1, "non-positive": 1, "duplicate": 1}
    assert info["reordered_rows"] == 1
    gap_times = data.ticks["ts_exchange_ns"][data.ticks["kind"] == TICK_GAP]
    assert info["gaps"] == len(gap_times) == 3       # the two bad rows and the missing hour

    r = run_backtest(load_config(config(tmp_path)), [str(path)])
    assert r.counts["gap_bars"] == 3
    assert r.counts["files"][0]["bad_rows"] == info["bad_rows"]
    entries = r.fills[r.fills["reason"] == REASON_ENTRY]
    assert len(entries) >= 5
    assert not np.isin(entries["ts_ns"], gap_times).any(), "an entry traded across a hole"


def test_cli_writes_the_report_and_a_journal_that_verifies(tmp_path, capsys):
    out, journal = tmp_path / "report", tmp_path / "bt.sqlite"
    args = ["backtest", "--config", str(config(tmp_path)), "--data", str(BTC), str(ETH),
            "--to", TO, "--no-progress"]
    assert main(args + ["--out", str(out), "--journal", str(journal)]) == 0
    text = capsys.readouterr().out
    assert "fingerprint   sha256:" in text and "buy-and-hold" in text
    for name in ("report.html", "report.json", "equity.png", "drawdown.png", "trades.csv"):
        assert (out / name).is_file(), name
    assert main(["journal", "verify", "--journal", str(journal)]) == 0
    # the same run again prints the same fingerprint
    again = tmp_path / "again"
    assert main(args + ["--out", str(again)]) == 0
    fp = [line for line in text.splitlines() if line.startswith("fingerprint")]
    assert fp and fp[0] in capsys.readouterr().out


@pytest.mark.parametrize("extra, words", [
    (["--data", str(BTC)], "bar_seconds = 300"),
    (["--data", "/no/such/file.csv"], "no such file"),
    (["--data", str(BTC), str(BTC)], "a second file of trades for BTC/USDT@binance"),
    (["--data", str(BTC), "--from", "2026-02-10", "--to", "2026-02-09"], "is not after"),
    (["--data", str(BTC), "--from", "yesterday"], "is not a date"),
])
def test_cli_mistakes_are_one_line(tmp_path, capsys, extra, words):
    cfg = config(tmp_path) if words != "bar_seconds = 300" else tmp_path / "one_second.toml"
    if words == "bar_seconds = 300":
        cfg.write_text(toml({"indicators": {"bar_seconds": 1.0}, "model": {"kind": "momentum"}}))
    assert main(["backtest", "--config", str(cfg), "--out", str(tmp_path / "o"), "--no-progress",
                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err


def test_funding_of_a_perpetual_is_paid_on_the_position_held(tmp_path):
    """Long a perpetual through 8-hourly funding at +0.01 %: each funding time costs
    position x mark x rate, and the equity carries it."""
    perp = data_file("candles/binance-usdm_BTC-USDT-PERP_1h.csv")
    rates = data_file("candles/binance-usdm_BTC-USDT-PERP_funding_rate.csv")
    conf = config(tmp_path)
    text = conf.read_text().replace("bar_seconds = 300.0", "bar_seconds = 3600.0")
    conf.write_text(text.replace("min_hold_bars = 1", "min_hold_bars = 1000"))   # hold once in
    r = run_backtest(load_config(conf), [str(perp), str(rates)])
    assert r.symbols == ["BTC/USDT@binance-usdm"]
    assert r.funding is not None and len(r.funding) >= 15
    held = r.funding[r.funding["position"] != 0]
    assert len(held) >= 5, "the test strategy should hold through funding times"
    for f in held:
        assert math.isclose(f["payment"], -f["position"] * f["mark"] * f["rate"], rel_tol=1e-12)
    total = float(r.funding["payment"].sum())
    assert total < 0 and math.isclose(r.counts["funding_paid"]["BTC/USDT@binance-usdm"], total,
                                      rel_tol=1e-6)
    # equity = capital + realised - fees + open marked + funding (the fills alone miss it)
    fills_only = run_backtest(load_config(conf), [str(perp)])
    assert fingerprint(fills_only.fills) == fingerprint(r.fills)
    assert math.isclose(r.equity[-1] - fills_only.equity[-1], total, rel_tol=1e-9)


def test_funding_for_a_symbol_not_traded_is_a_one_line_error(tmp_path, capsys):
    rates = data_file("candles/binance-usdm_BTC-USDT-PERP_funding_rate.csv")
    assert main(["backtest", "--config", str(config(tmp_path)), "--data", str(BTC), str(rates),
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "funding rates of BTC/USDT@binance-usdm, and no --data file trades it" in err


def test_the_ensemble_trades_and_each_members_vote_is_reported(tmp_path):
    """[model] kind = "ensemble": the registry pipeline train wrote, served as the model
    worker serves it; every signal's member votes are in the result and the report."""
    from models.train import train
    from pipeline.backtest_report import metrics, write_report
    from conftest import TINY_TREES
    conf = config(tmp_path)
    registry = tmp_path / "models"
    text = conf.read_text().replace('kind = "momentum"', 'kind = "ensemble"')
    extra = "".join(f"{k} = {v}\n" for k, v in TINY_TREES.items())
    conf.write_text(text.replace("[model]\n", f'[model]\nartifacts = "{registry}"\nmodels = ["forest", '
                                 f'"xgboost"]\nfolds = 2\nhorizon = 6\n{extra}'))
    cfg = load_config(conf)
    train(str(BTC), cfg, registry, progress=False)
    r = run_backtest(cfg, [str(BTC)], start="2026-02-10", end="2026-02-13")
    assert r.members == ["forest", "xgboost"]
    assert r.votes is not None and len(r.votes) == len(r.signals) == r.counts["signals"]
    assert np.allclose(r.votes["probs"], r.signals["probs"])
    assert r.meta["model_versions"] == {"ensemble": 1, "forest": 1, "xgboost": 1}
    written = write_report(r, metrics(r), tmp_path / "report")
    assert written["votes_0_BTC_USDT_binance.png"].is_file()
    assert "Votes on BTC\\u002fUSDT@binance" in written["report.html"].read_text()   # plotly's JSON


def test_with_quotes_beside_the_trades_market_orders_fill_at_the_quote(tmp_path):
    """A trade file and a quote file of one symbol: bars come from the trades, and a
    market order fills at the quote the desk saw last (ask to buy, bid to sell), moved by
    slippage, not at the last trade."""
    trades = data_file("trades/binance_BTC-USDT_trades_2021-01-08.csv")
    quotes = data_file("quotes/binance_BTC-USDT_bookticker_2021-01-08.csv")
    conf = config(tmp_path)
    conf.write_text(conf.read_text().replace("bar_seconds = 300.0", "bar_seconds = 1.0")
                    .replace("ema = [3, 8]", "ema = [2, 4]").replace("threshold = 0.0005", "threshold = 0.00001"))
    data = load_data([str(trades), str(quotes)])
    assert data.symbols == ["BTC/USDT@binance"]
    r = run_backtest(load_config(conf), data)
    assert len(r.fills) >= 4
    q = data.ticks[data.ticks["kind"] == 2]                      # TICK_QUOTE
    for f in r.fills:
        last = q[q["ts_exchange_ns"] <= f["ts_ns"]][-1]
        top = last["ask"] if f["side"] > 0 else last["bid"]
        assert math.isclose(f["price"], top * (1 + int(f["side"]) * SLIP_BPS / 1e4), rel_tol=1e-12)


def test_fees_per_venue(tmp_path):
    """[[execution.venue_fees]] charges a venue's orders its own taker fee; the others pay
    [execution] fee_bps (10 bps)."""
    eth = tmp_path / "bybit_ETH-USDT_5m.csv"
    eth.write_text(ETH.read_text())
    path = config(tmp_path)
    path.write_text(path.read_text() + '[[execution.venue_fees]]\nvenue = "bybit"\ntaker_bps = 30.0\n'
                    'maker_bps = 1.0\n')
    r = run_backtest(load_config(path), [str(BTC), str(eth)], end=TO)
    assert r.symbols == ["BTC/USDT@binance", "ETH/USDT@bybit"]
    rate = r.fills["fee"] / (r.fills["qty"] * r.fills["price"])
    btc, eth_fills = r.fills["symbol_id"] == 0, r.fills["symbol_id"] == 1
    assert btc.sum() >= 5 and eth_fills.sum() >= 5
    assert np.allclose(rate[btc], 10e-4) and np.allclose(rate[eth_fills], 30e-4)
    assert r.meta["execution"]["venue_fees"] == {"binance": {"maker_bps": 2.0, "taker_bps": 10.0},
                                                 "bybit": {"maker_bps": 1.0, "taker_bps": 30.0}}


def test_a_venue_fee_mistake_is_one_line(tmp_path, capsys):
    path = config(tmp_path)
    path.write_text(path.read_text() + '[[execution.venue_fees]]\nvenue = "bybit"\ntaker_bps = -3.0\n')
    assert main(["backtest", "--config", str(path), "--data", str(BTC), "--no-progress",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "execution.venue_fees[0].taker_bps must be in [0, 100)" in err and "\n" not in err


def test_symbols_in_two_quote_currencies_are_a_one_line_error(tmp_path, capsys):
    """Without an FX rate the account would add KRW and USDT up as one currency."""
    krw = tmp_path / "upbit_BTC-KRW_5m.csv"
    krw.write_text(BTC.read_text())
    assert main(["backtest", "--config", str(config(tmp_path)), "--data", str(BTC), str(krw),
                 "--no-progress", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "quoted in KRW, USDT" in err and "\n" not in err and "Traceback" not in err


def test_limit_entries_rest_fill_as_maker_and_end_at_their_expiry(tmp_path):
    """``entry_order = "limit"``: entries rest 5 bps better than the bar's close and fill
    (maker fee) only when a later trade prints through; what has not filled within the
    time to live is cancelled by the desk; exits stay market orders (taker fee)."""
    cfg = load_config(config(tmp_path))
    cfg = dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy, entry_order="limit",
                                                                entry_offset_bps=5.0, entry_ttl_s=600.0))
    r = run_backtest(cfg, [str(BTC)], end=TO)
    bars = candles(BTC)
    entries = r.fills[r.fills["reason"] == REASON_ENTRY]
    exits = r.fills[r.fills["reason"] != REASON_ENTRY]
    assert len(entries) >= 5 and len(exits) >= 5
    for f in entries:
        assert math.isclose(f["fee"], f["price"] * f["qty"] * 2 / 1e4, rel_tol=1e-9)     # maker 2 bps
        bar = bars[(int(f["ts_ns"]) // 300_000_000_000) * 300_000_000_000]
        assert bar["low"] <= f["price"] <= bar["high"]         # a trade of that bar printed through it
    for f in exits:
        assert math.isclose(f["fee"], f["price"] * f["qty"] * 10 / 1e4, rel_tol=1e-9)    # taker 10 bps
    desk, strategy = r.counts["desk"], r.counts["strategy"]
    assert desk["cancels"] >= 1                                 # entries that did not fill in time
    assert strategy["intents"] > len(set(r.fills["client_order_id"].tolist()))
    # every fill is in the position, and nothing was entered twice: flat at every exit's end
    assert desk["fills"] == len(r.fills)
    held = np.cumsum(r.fills["side"] * r.fills["qty"])
    assert np.all(np.abs(held) <= max(np.abs(entries["qty"])) * (1 + 1e-9))


def book_file(path: Path, bars: dict, level_size: float, levels: int = 10, step: float = 1e-4) -> Path:
    """ccxt-style snapshots, one at each bar's open: ``levels`` a side, ``step`` of the open
    apart, ``level_size`` each (what a recorder of a thin book would have saved)."""
    with open(path, "w") as f:
        for open_ns, bar in bars.items():
            o = bar["open"]
            f.write(json.dumps({"timestamp": open_ns // 1_000_000, "symbol": "BTC/USDT",
                                "bids": [[o * (1 - step * (j + 1)), level_size] for j in range(levels)],
                                "asks": [[o * (1 + step * (j + 1)), level_size] for j in range(levels)]}) + "\n")
    return path


def test_market_orders_walk_the_recorded_books(tmp_path):
    """A book file beside the candles: each market order walks the book recorded at the
    bar's open (the time it is sent), level by level, at the levels' prices and sizes,
    instead of the open plus a constant slippage."""
    bars = {t: b for t, b in candles(BTC).items() if t < 1_770_595_200_000_000_000}
    books = book_file(tmp_path / "binance_BTC-USDT_books.jsonl", bars, level_size=0.0004)
    r = run_backtest(load_config(config(tmp_path)), [str(BTC), str(books)], end=TO)
    assert len(r.fills) >= 20
    read = [f for f in load_data([str(BTC), str(books)], end=TO).files if f["kind"] == "books"]
    assert read[0]["books"] == len(bars) and read[0]["layout"] == "snapshots"
    by_order: dict[str, list] = {}
    for f in r.fills:
        by_order.setdefault(str(f["client_order_id"]), []).append(f)
    walked = 0
    for fills in by_order.values():
        open_ns = int(fills[0]["ts_ns"])
        o, side = bars[open_ns]["open"], int(fills[0]["side"])
        levels = [o * (1 + side * 1e-4 * (j + 1)) for j in range(10)]
        got = [float(f["price"]) for f in fills]
        assert got == pytest.approx(levels[:len(got)], rel=1e-12)        # best first, none skipped
        assert all(float(f["qty"]) <= 0.0004 * (1 + 1e-9) for f in fills)
        walked += len(fills) > 1
    assert walked >= 5, "orders larger than a level should walk several"


def test_an_order_larger_than_the_recorded_book_fills_partly(tmp_path):
    bars = {t: b for t, b in candles(BTC).items() if t < 1_770_595_200_000_000_000}
    books = book_file(tmp_path / "binance_BTC-USDT_books.jsonl", bars, level_size=0.0001, levels=2)
    r = run_backtest(load_config(config(tmp_path)), [str(BTC), str(books)], end=TO)
    assert len(r.fills) >= 10
    assert max(r.fills["qty"]) <= 0.0001 * (1 + 1e-9)
    per_order = {}
    for f in r.fills:
        per_order[str(f["client_order_id"])] = per_order.get(str(f["client_order_id"]), 0) + 1
    assert max(per_order.values()) == 2                 # two levels, then nothing more to take


@pytest.mark.parametrize("line, words", [
    ('{"timestamp": "2025-08-24T06:05:21", "bids": [[1, 1]], "asks": [[2, 1]]}', "has no zone"),
    ('{"timestamp": 1700000000000, "bids": [[1, 1]]', "line 1: not JSON"),
    ('{"topic": "orderbook.50.BTCUSDT", "type": "delta", "ts": 1, "data": {"u": 2, "b": [], "a": []}}',
     "a delta before any snapshot"),
])
def test_a_bad_book_file_is_one_line(tmp_path, capsys, line, words):
    books = tmp_path / "binance_BTC-USDT_books.jsonl"
    books.write_text(line + "\n")
    out = tmp_path / "out"
    assert main(["backtest", "--data", str(BTC), str(books), "--config", str(config(tmp_path)),
                 "--out", str(out), "--no-progress", "--to", TO]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_stop_loss_is_checked_on_every_trade_not_at_the_next_close(tmp_path):
    """With a stop-loss the strategy checks every trade of a held symbol (a candle's
    low or high included), as the strategy process does live on the tick rings: the
    exit is sent at the trade that crossed the stop, inside the bar."""
    from shm.records import REASON_STOP_LOSS
    cfg = load_config(config(tmp_path))
    cfg = dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy, stop_loss=0.002))
    r = run_backtest(cfg, [str(BTC)], end=TO)
    stops = r.fills[r.fills["reason"] == REASON_STOP_LOSS]
    assert len(stops) >= 3
    bar_ns = 300_000_000_000
    inside = [int(f["ts_ns"]) % bar_ns != 0 for f in stops]
    assert any(inside)                              # at a candle's low or high, a quarter bar in
    # every stop sells (or buys back) what the entry before it bought (or sold)
    for f in stops:
        before = r.fills[(r.fills["ts_ns"] < f["ts_ns"])]
        assert int(before["side"][-1]) == -int(f["side"]) and before["qty"][-1] == pytest.approx(f["qty"])
    again = run_backtest(cfg, [str(BTC)], end=TO)
    assert fingerprint(again.fills) == fingerprint(r.fills)


# -- the shortcuts a backtest takes give what playing every step gives --------------------
def closes_both_ways(cfg, data, folder: Path):
    """(`_bar_closes_at_once`, `_bar_closes_by_segment`) of one backtest's data (its journal
    in ``folder``, never beside the data: that may be the repository's samples)."""
    from pipeline.backtest import Backtest
    from workers.bars import bar_steps
    bt = Backtest(cfg, data, Path(tempfile.mkdtemp(dir=folder)) / "j.sqlite")
    try:
        ends = bar_steps(data.ticks, bt.bar_ns)
        return bt._bar_closes_at_once(ends), bt._bar_closes_by_segment(ends)
    finally:
        bt.close()


def with_holes(tmp_path: Path, source: Path, name: str, holes: list[tuple[int, int]]) -> Path:
    with open(source) as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:1200]
    for a, b in sorted(holes, reverse=True):
        del body[a:b]
    path = tmp_path / name
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([head] + body)
    return path


def test_bar_closes_built_at_once_are_those_of_each_step(tmp_path):
    """One bar builder call over all the ticks closes the same bars, in the same steps and
    engine calls, as the builder fed step by step; where a step's timer would close a bar
    (one symbol's hole while the other trades) it declines, and the steps are played."""
    cfg = load_config(config(tmp_path))
    btc = with_holes(tmp_path, BTC, "binance_BTC-USDT_5m.csv", [(600, 612), (900, 901)])
    fast, slow = closes_both_ways(cfg, load_data([str(btc)]), tmp_path)
    assert fast is not None and (slow[0].flags & 1).sum() >= 2       # FLAG_GAP on the bars across the holes
    for a, b in zip(fast[1:], slow[1:]):
        assert np.array_equal(a, b)
    for f in dataclasses.fields(fast[0]):
        assert np.array_equal(getattr(fast[0], f.name), getattr(slow[0], f.name)), f.name
    both = load_data([str(BTC), str(ETH)], end=TO)                  # the same hours: no timer
    fast, slow = closes_both_ways(cfg, both, tmp_path)
    assert fast is not None and np.array_equal(fast[0].c, slow[0].c) and np.array_equal(fast[1], slow[1])
    eth = with_holes(tmp_path, ETH, "binance_ETH-USDT_5m.csv", [(300, 310)])
    fast, slow = closes_both_ways(cfg, load_data([str(BTC), str(eth)], end=TO), tmp_path)
    assert fast is None and (slow[0].flags & 2).any()               # FLAG_TIMER_CLOSE


@pytest.mark.parametrize("strategy", [
    {},
    {"stop_loss": 0.002, "take_profit": 0.003},
    {"entry_order": "limit", "entry_ttl_s": 600.0},
    {"allow_short": True, "min_hold_bars": 3, "walk_forward": True},
])
def test_quiet_stretches_shown_at_once_change_nothing(tmp_path, strategy):
    """While no order is open or due the desk sees the market only when it must act, and the
    strategy passes the bars it certainly does nothing on over in bulk; the fills, the
    equity, the denials, the counters and every journal row are those of a run shown each
    step (with a walk-forward start too: the bars before it trade nothing either way)."""
    import sqlite3
    from pipeline.backtest import Backtest
    cfg = load_config(config(tmp_path))
    cfg.risk.max_daily_loss_frac = 0.0005                        # entries denied, some days
    walk_forward = strategy.pop("walk_forward", False)
    for key, value in strategy.items():
        setattr(cfg.strategy, key, value)
    data = load_data([str(BTC), str(ETH)], end=TO)
    start = int(data.ticks["ts_exchange_ns"][len(data.ticks) // 3]) if walk_forward else None
    results, journals = [], []
    for defer in (True, False):
        j = tmp_path / f"j{defer}.sqlite"
        bt = Backtest(cfg, data, j, trade_from_ns=start, defer=defer)
        try:
            results.append(bt.run())
        finally:
            bt.close()
        with sqlite3.connect(j) as db:
            journals.append(db.execute("SELECT * FROM entries ORDER BY rowid").fetchall())
    a, b = results
    assert len(a.fills) >= 20 and fingerprint(a.fills) == fingerprint(b.fills)
    assert np.array_equal(a.equity, b.equity) and np.array_equal(a.position, b.position)
    assert np.array_equal(a.close, b.close, equal_nan=True) and a.counts == b.counts
    assert a.counts["denials"]["DAILY_LOSS"] > 0
    assert journals[0] == journals[1] and len(journals[0]) > 100
    assert a.meta["bars_passed_over"] > 100 and b.meta["bars_passed_over"] == 0


def test_a_journal_thrown_away_is_kept_in_memory_and_a_dead_runs_is_swept(tmp_path):
    """Without --journal the run's journal lives in /dev/shm where there is room (no disk
    writes), and is gone after; a scratch journal left by a run killed with -9 (its lock no
    longer held) is removed by the next run's sweep, one still held is not."""
    from pipeline.backtest import SCRATCH_PREFIX, _sweep_scratch, scratch_dir
    from pipeline.journal import Journal
    r = run_backtest(load_config(config(tmp_path)), [str(BTC)], end=TO)
    where = Path(r.meta["journal"])
    if scratch_dir(1000) is not None:
        assert str(where).startswith("/dev/shm/")
    assert not where.exists() and not where.parent.exists()
    dead, alive = tmp_path / f"{SCRATCH_PREFIX}dead", tmp_path / f"{SCRATCH_PREFIX}alive"
    dead.mkdir()
    (dead / "journal.sqlite.lock").write_text("12345\n")
    held = Journal(alive / "journal.sqlite")
    try:
        _sweep_scratch(tmp_path)
        assert not dead.exists() and alive.exists()
    finally:
        held.close()
    _sweep_scratch(tmp_path)
    assert not alive.exists()
    assert scratch_dir(10**15) is None                  # no room for the largest journal: the disk
