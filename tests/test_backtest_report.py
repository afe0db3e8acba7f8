"""The backtest report: figures against values worked out by hand on tiny series, the
round trips, the fingerprint, the month split, the edge cases, and the files it writes
(HTML that opens offline with every plot, valid PNGs, strict JSON)."""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import statistics

import numpy as np
import pytest

from pipeline.backtest_report import (FILL_ROW, VOTE_ROW, BacktestResult, fingerprint, metrics,
                                      open_trades, plot_index, round_trips, summary_lines,
                                      write_report)
from pipeline.errors import UserError

DAY = 86400
DAY_NS = DAY * 10**9
T0 = int(dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc).timestamp()) * 10**9


def fills_of(*rows) -> np.ndarray:
    """(ts_ns, symbol_id, side, qty, price, fee[, slippage]) tuples as FILL_ROW rows."""
    out = np.zeros(len(rows), dtype=FILL_ROW)
    for i, r in enumerate(rows):
        ts, sid, side, qty, price, fee, *slip = r
        out[i] = (ts, sid, side, qty, price, fee, slip[0] if slip else 0.0, 1, f"c{i}")
    return out


def hand_result() -> BacktestResult:
    """6 daily bars of one symbol, 2 trades, equity worked out by hand:

    bar  close  fill                 cash        position  equity
    0    100    buy 1 @100, fee 1    899         1         999
    1    110    sell 1 @110, fee 1   1008        0         1008   trade 1: +10 - 2 = +8
    2    105    buy 2 @105, fee 2    796         2         1006
    3    120                         796         2         1036   (the peak)
    4    100    sell 2 @100, fee 2   994         0         994    trade 2: -10 - 4 = -14
    5    110                         994         0         994
    """
    ts = T0 + DAY_NS * np.arange(6)
    fills = fills_of((ts[0], 0, 1, 1.0, 100.0, 1.0, 0.5), (ts[1], 0, -1, 1.0, 110.0, 1.0, 0.5),
                     (ts[2], 0, 1, 2.0, 105.0, 2.0), (ts[4], 0, -1, 2.0, 100.0, 2.0))
    return BacktestResult(
        symbols=["BTC/USDT@test"], bar_seconds=DAY, capital=1000.0, ts_ns=ts,
        close=np.array([[100.0], [110.0], [105.0], [120.0], [100.0], [110.0]]),
        position=np.array([[1.0], [0.0], [2.0], [2.0], [0.0], [0.0]]),
        equity=np.array([999.0, 1008.0, 1006.0, 1036.0, 994.0, 994.0]), fills=fills)


def test_metrics_against_hand_computed_values():
    m = metrics(hand_result())
    o = m["overall"]
    curve = [1000, 999, 1008, 1006, 1036, 994, 994]
    r = [curve[i + 1] / curve[i] - 1 for i in range(6)]
    assert o["total_return"] == pytest.approx(-0.006)
    assert o["cagr"] == pytest.approx(0.994 ** (365 / 6) - 1)
    sd = statistics.stdev(r)
    assert o["volatility"] == pytest.approx(sd * math.sqrt(365))
    assert o["sharpe"] == pytest.approx(statistics.mean(r) / sd * math.sqrt(365))
    downside = math.sqrt(sum(min(x, 0) ** 2 for x in r) / 6)
    assert o["sortino"] == pytest.approx(statistics.mean(r) / downside * math.sqrt(365))
    assert o["max_drawdown"] == pytest.approx(42 / 1036)            # 1036 -> 994
    assert o["max_drawdown_days"] == pytest.approx(2.0)              # bar 3 to the end (not recovered)
    assert o["max_drawdown_recovered"] is False
    assert o["calmar"] == pytest.approx(o["cagr"] / (42 / 1036))
    assert o["trades"] == 2 and o["winning_trades"] == 1 and o["win_rate"] == 0.5
    assert o["profit_factor"] == pytest.approx(8 / 14)
    assert o["expectancy"] == pytest.approx(-3.0)
    assert o["fees"] == pytest.approx(6.0) and o["slippage"] == pytest.approx(1.0)
    assert o["exposure"] == pytest.approx(0.5)                        # bars 0, 2 and 3 of 6
    assert o["traded_notional"] == pytest.approx(620.0)
    assert o["turnover"] == pytest.approx(620 / (sum(curve) / 7))
    assert o["turnover_per_year"] == pytest.approx(620 / (sum(curve) / 7) / (6 / 365))
    # buy-and-hold: 10 units at 100 -> 1000 1100 1050 1200 1000 1100
    b = o["buy_and_hold"]
    assert b["total_return"] == pytest.approx(0.1)
    assert b["max_drawdown"] == pytest.approx(200 / 1200)
    assert b["max_drawdown_days"] == pytest.approx(2.0)
    bh = [1000, 1000, 1100, 1050, 1200, 1000, 1100]
    rb = [bh[i + 1] / bh[i] - 1 for i in range(6)]
    assert b["sharpe"] == pytest.approx(statistics.mean(rb) / statistics.stdev(rb) * math.sqrt(365))
    # one symbol: its attributed P&L is the account's
    s = m["symbols"]["BTC/USDT@test"]
    assert s["pnl"] == pytest.approx(-6.0) and s["total_return"] == pytest.approx(-0.006)
    assert m["unattributed_pnl"] == pytest.approx(0.0, abs=1e-9)
    assert m["open_trades"] == []
    assert m["period"]["bars"] == 6 and m["period"]["start"] == "2025-01-01T00:00:00Z"


def test_round_trips_hand_values():
    trips = round_trips(hand_result().fills, 1)
    assert len(trips) == 2
    t1, t2 = trips
    assert (t1["side"], t1["qty"], t1["entry_price"], t1["exit_price"]) == (1, 1.0, 100.0, 110.0)
    assert t1["pnl"] == pytest.approx(8.0) and t1["return"] == pytest.approx(0.08)
    assert t1["entry_ns"] == T0 and t1["exit_ns"] == T0 + DAY_NS
    assert t2["pnl"] == pytest.approx(-14.0) and t2["return"] == pytest.approx(-14 / 210)
    assert t2["fees"] == pytest.approx(4.0) and t2["fills"] == 2


def test_round_trips_with_a_partial_close_and_a_flip():
    f = fills_of((1, 0, 1, 2.0, 100.0, 2.0),     # long 2
                 (2, 0, 1, 2.0, 110.0, 2.0),     # long 4, avg 105
                 (3, 0, -1, 1.0, 120.0, 1.0),    # partial: long 3 (stays in the trade)
                 (4, 0, -1, 5.0, 90.0, 5.0),     # closes 3 @90, flips short 2 @90
                 (5, 1, -1, 1.0, 50.0, 0.0),     # another symbol, short, still open
                 (6, 0, 1, 2.0, 80.0, 2.0))      # closes the short
    trips = round_trips(f, 2)
    assert len(trips) == 2
    long_, short = trips
    assert long_["side"] == 1 and long_["qty"] == 4.0 and long_["entry_price"] == pytest.approx(105.0)
    assert long_["exit_price"] == pytest.approx((120 + 3 * 90) / 4)
    fees = 2 + 2 + 1 + 5 * 3 / 5                                    # the flip's fee split 3:2
    assert long_["fees"] == pytest.approx(fees)
    assert long_["pnl"] == pytest.approx((120 + 270) - 4 * 105 - fees)
    assert long_["entry_ns"] == 1 and long_["exit_ns"] == 4 and long_["fills"] == 4
    assert short["side"] == -1 and short["qty"] == 2.0 and short["entry_ns"] == 4 and short["exit_ns"] == 6
    assert short["pnl"] == pytest.approx(2 * (90 - 80) - (2 + 2))
    assert short["return"] == pytest.approx(16 / 180)
    still = open_trades(f, 2)
    assert len(still) == 1 and still["symbol_id"][0] == 1 and still["exit_ns"][0] == -1
    assert still["side"][0] == -1 and still["entry_price"][0] == 50.0


def test_fingerprint_is_stable_and_sensitive():
    f = hand_result().fills
    fp = fingerprint(f)
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert fingerprint(f.copy()) == fp == fingerprint(hand_result().fills)
    for name, value in (("ts_ns", T0 + 1), ("symbol_id", 1), ("side", -1), ("qty", 1.0000000001),
                        ("price", 100.00000000001), ("fee", 1.5), ("slippage", 0.25), ("reason", 2),
                        ("client_order_id", "other")):
        g = f.copy()
        g[name][0] = value
        assert fingerprint(g) != fp, name
    assert fingerprint(f[:-1]) != fp and fingerprint(f[::-1]) != fp
    assert fingerprint(np.zeros(0, dtype=FILL_ROW)) != fp


def month_result() -> BacktestResult:
    """4 daily bars, Jan 30 .. Feb 2, two symbols; a trade closes in each month."""
    ts = int(dt.datetime(2025, 1, 30, tzinfo=dt.timezone.utc).timestamp()) * 10**9 + DAY_NS * np.arange(4)
    close = np.array([[10.0, np.nan], [11.0, 20.0], [12.0, 22.0], [12.0, 18.0]])
    f = fills_of((ts[0], 0, 1, 10.0, 10.0, 0.0), (ts[1], 0, -1, 10.0, 11.0, 0.0),   # +10 in Jan
                 (ts[1], 1, -1, 5.0, 20.0, 0.0), (ts[3], 1, 1, 5.0, 18.0, 0.0))     # +10 in Feb
    position = np.array([[10.0, 0.0], [0.0, -5.0], [0.0, -5.0], [0.0, 0.0]])
    equity = np.array([1000.0, 1010.0, 1000.0, 1020.0])
    return BacktestResult(symbols=["A/USDT@x", "B/USDT@x"], bar_seconds=DAY, capital=1000.0, ts_ns=ts,
                          close=close, position=position, equity=equity, fills=f,
                          counts={"gaps": 1}, meta={"config": "conf/default.toml", "nan": float("nan")})


def test_months_split_at_the_boundary_and_chain_to_the_total():
    m = metrics(month_result())
    assert list(m["months"]) == ["2025-01", "2025-02"]
    jan, feb = m["months"]["2025-01"], m["months"]["2025-02"]
    assert jan["bars"] == 2 and feb["bars"] == 2
    assert jan["total_return"] == pytest.approx(0.01)                       # 1000 -> 1010
    assert feb["total_return"] == pytest.approx(1020 / 1010 - 1)            # from Jan's last equity
    assert (1 + jan["total_return"]) * (1 + feb["total_return"]) == pytest.approx(1.02)
    assert jan["trades"] == 1 and feb["trades"] == 1 and jan["fills"] == 3 and feb["fills"] == 1
    assert feb["max_drawdown"] == pytest.approx(10 / 1010) and feb["max_drawdown_days"] == pytest.approx(2.0)
    # per symbol, P&L attributed from each one's fills and closes, adding up to the account's
    a, b = m["symbols"]["A/USDT@x"], m["symbols"]["B/USDT@x"]
    assert a["pnl"] == pytest.approx(10.0) and b["pnl"] == pytest.approx(10.0)
    assert b["max_drawdown"] == pytest.approx(10 / 1000)                    # short 5 marked at 22
    assert m["unattributed_pnl"] == pytest.approx(0.0, abs=1e-9)
    assert a["exposure"] == pytest.approx(0.25) and b["exposure"] == pytest.approx(0.5)
    # buy-and-hold: 500 in A at 10 from bar 0, 500 in B at 20 from bar 1 (cash before)
    bh_end = 500 * 12 / 10 + 500 * 18 / 20
    assert m["overall"]["buy_and_hold"]["total_return"] == pytest.approx(bh_end / 1000 - 1)
    assert b["buy_and_hold"]["total_return"] == pytest.approx(18 / 20 - 1)
    assert feb["buy_and_hold"]["total_return"] == pytest.approx(bh_end / (500 * 1.1 + 500) - 1)


def empty_fills_result(equity) -> BacktestResult:
    n = len(equity)
    return BacktestResult(symbols=["A/USDT@x"], bar_seconds=60.0, capital=1000.0,
                          ts_ns=T0 + 60 * 10**9 * np.arange(n), close=np.full((n, 1), 5.0),
                          position=np.zeros((n, 1)), equity=np.asarray(equity, dtype=float),
                          fills=np.zeros(0, dtype=FILL_ROW))


@pytest.mark.parametrize("n", [1, 2, 50])
def test_no_trades_and_flat_equity_give_nulls_not_nans(n):
    m = metrics(empty_fills_result([1000.0] * n))
    o = m["overall"]
    assert o["total_return"] == 0 and o["max_drawdown"] == 0 and o["max_drawdown_days"] == 0
    assert o["sharpe"] is None and o["sortino"] is None and o["calmar"] is None   # undefined: null
    assert o["volatility"] == (0.0 if n >= 2 else None)          # n bars give n returns; one has no spread
    assert o["trades"] == 0 and o["win_rate"] is None and o["expectancy"] is None
    assert o["profit_factor"] is None and o["exposure"] == 0 and o["fees"] == 0
    assert o["buy_and_hold"]["total_return"] == 0 and o["buy_and_hold"]["sharpe"] is None
    json.dumps(m, allow_nan=False)
    lines = summary_lines(m, fingerprint(np.zeros(0, dtype=FILL_ROW)))
    assert any("n/a" in line for line in lines) and lines[-1].startswith("fingerprint")


def test_one_bar_with_a_loss_has_no_volatility_and_no_sharpe():
    o = metrics(empty_fills_result([990.0]))["overall"]
    assert o["total_return"] == pytest.approx(-0.01) and o["max_drawdown"] == pytest.approx(0.01)
    assert o["volatility"] is None and o["sharpe"] is None and o["sortino"] is None
    assert o["max_drawdown_days"] == pytest.approx(60 / DAY)


def test_a_gain_over_minutes_has_no_cagr_rather_than_an_overflow():
    o = metrics(empty_fills_result([1000.0, 1020.0]))["overall"]      # +2 % in a minute
    assert o["total_return"] == pytest.approx(0.02) and o["cagr"] is None
    json.dumps(o, allow_nan=False)


def test_the_deepest_drawdown_and_the_longest_are_told_apart():
    # curve 1000 | 995 996 997 1000 900 1001, one bar a minute: a long shallow spell (4 bars)
    # then a deep short one (10 %, 2 bars), both recovered
    o = metrics(empty_fills_result([995.0, 996.0, 997.0, 1000.0, 900.0, 1001.0]))["overall"]
    assert o["max_drawdown"] == pytest.approx(0.1) and o["max_drawdown_recovered"] is True
    assert o["max_drawdown_days"] == pytest.approx(120 / DAY)
    assert o["longest_drawdown_days"] == pytest.approx(240 / DAY)


def test_a_trade_open_at_the_end_is_listed_apart_with_its_unrealised_pnl():
    r = hand_result()
    r.fills = r.fills[:3]                        # the second trade is never closed
    r.position[4:] = 2.0
    m = metrics(r)
    assert m["overall"]["trades"] == 1
    (t,) = m["open_trades"]
    assert t["symbol"] == "BTC/USDT@test" and t["side"] == "long" and t["exit"] is None
    assert t["position"] == 2.0 and t["mark"] == 110.0 and t["entry_price"] == 105.0
    assert t["unrealised_pnl"] == pytest.approx(10.0) and t["pnl"] == pytest.approx(-2.0)
    assert t["return"] is None


def test_no_bars_is_a_user_error():
    r = empty_fills_result([])
    with pytest.raises(UserError, match="no bars"):
        metrics(r)


def test_only_winning_trades_have_no_profit_factor():
    r = hand_result()
    r.fills = r.fills[:2]
    o = metrics(r)["overall"]
    assert o["trades"] == 1 and o["win_rate"] == 1.0 and o["profit_factor"] is None


def test_plot_index_keeps_the_extremes():
    y = np.sin(np.linspace(0, 50, 100_000))
    y[12_345] = -7.0
    y[77_777] = 9.0
    i = plot_index(y)
    assert len(i) <= 5001 and i[0] == 0 and i[-1] == len(y) - 1 and np.all(np.diff(i) > 0)
    assert 12_345 in i and 77_777 in i
    assert np.array_equal(plot_index(np.arange(10.0)), np.arange(10))


def with_votes(r: BacktestResult) -> BacktestResult:
    r.members = ["lstm", "xgboost"]
    v = np.zeros(len(r.ts_ns) * 2, dtype=VOTE_ROW(2))
    v["ts_ns"] = np.repeat(r.ts_ns, 2)
    v["symbol_id"] = np.tile([0, 1], len(r.ts_ns))
    v["probs"] = [0.2, 0.3, 0.5]
    v["member_probs"] = [[0.1, 0.2, 0.7], [0.5, 0.2, 0.3]]
    r.votes = v
    return r


def test_report_files(tmp_path):
    r = with_votes(month_result())
    m = metrics(r)
    out = tmp_path / "report"
    files = write_report(r, m, out)
    names = {"report.json", "report.html", "trades.csv", "equity.png", "drawdown.png",
             "monthly_returns.png", "trades_0_A_USDT_x.png", "trades_1_B_USDT_x.png",
             "votes_0_A_USDT_x.png", "votes_1_B_USDT_x.png"}
    assert set(files) == names and all(p.parent == out and p.is_file() for p in files.values())
    for name, path in files.items():
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    page = files["report.html"].read_text()
    titles = ["Equity against buy-and-hold", "Drawdown", "Trades on A/USDT@x", "Trades on B/USDT@x",
              "Monthly returns", "Votes on A/USDT@x", "Votes on B/USDT@x"]
    found = [json.loads(t) for t in re.findall(r'"title":\{"text":("(?:[^"\\]|\\.)*")', page)]
    assert all(title in found for title in titles), found            # plotly's JSON writes / as \u002f
    assert page.count('class="plotly-graph-div"') == len(titles)
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", page, re.I)   # opens offline
    assert "Plotly.newPlot" in page and len(page) < 10_000_000
    report = json.loads(files["report.json"].read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in report.json"))
    assert report["fingerprint"] == fingerprint(r.fills)
    assert report["counts"] == {"gaps": 1} and report["meta"]["nan"] is None
    assert report["metrics"]["overall"]["total_return"] == pytest.approx(0.02)
    assert files["trades.csv"].read_text().count("\n") == 3                 # header and 2 trades


def test_report_folder_mistakes_are_one_line_user_errors(tmp_path):
    r = hand_result()
    m = metrics(r)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(UserError, match="is a file") as e:
        write_report(r, m, tmp_path / "taken")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        write_report(r, m, tmp_path / "no" / "such" / "dir")
    files = write_report(r, m, tmp_path / "fresh")                          # parent exists: made
    assert set(files) >= {"report.json", "report.html", "equity.png", "trades_0_BTC_USDT_test.png"}
    assert not any(k.startswith("votes") for k in files)                    # no ensemble, no vote plot
