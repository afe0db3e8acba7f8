"""Market impact (workers/execution/impact.py): the square-root law from the trades
seen, in the paper broker and in a backtest."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.backtest import run_backtest
from pipeline.clock import SimClock
from pipeline.config import load_config
from shm.records import ORDER_MARKET, SIDE_BUY, SIDE_SELL, TIF_IOC
from workers.execution.broker import LatencyModel, PaperBroker
from workers.execution.impact import MarketImpact

from test_backtest import BTC, SLIP_BPS, TO, config

SEC = 10**9


def zigzag(n: int, start_s: int = 0):
    """A trade a second, the log price +1 % and -1 % in turn, 2 units each: the variance
    of the log price is 1e-4 per second and the volume 2 per second, exactly."""
    ts = (start_s + np.arange(n)) * SEC
    logp = math.log(100.0) + 0.01 * (np.arange(n) % 2)
    return ts, np.exp(logp), np.full(n, 2.0)


@pytest.mark.parametrize("batches", [1, 3, 17, 200])
def test_the_square_root_law_from_the_trades_in_any_batching(batches):
    ts, price, size = zigzag(200)
    m = MarketImpact(2, coef=0.5, window_s=60.0)
    assert m.bps(0, 8.0) == 0.0                         # nothing measured yet: no impact
    for part in np.array_split(np.arange(200), batches):
        m.on_trades(np.zeros(len(part), np.int64), ts[part], price[part], size[part])
    assert m.var_rate[0] == pytest.approx(1e-4, rel=1e-9)
    assert m.volume_rate[0] == pytest.approx(2.0, rel=1e-9)
    # 0.5 x 0.01 per sqrt(s) x sqrt(8 / 2 per s) = 0.01 = 100 bps; four times the size, twice that
    assert m.bps(0, 8.0) == pytest.approx(100.0, rel=1e-9)
    assert m.bps(0, 32.0) == pytest.approx(200.0, rel=1e-9)
    assert m.bps(1, 8.0) == 0.0                         # another symbol: nothing seen


def test_trades_at_one_time_wait_for_the_clock_to_move():
    m = MarketImpact(1, coef=1.0, window_s=60.0)
    m.on_trades(np.zeros(3, np.int64), np.array([5, 5, 5]) * SEC, np.array([100.0, 101.0, 100.0]),
                np.ones(3))
    assert not m.measured[0]                           # no time has passed: no rate yet
    m.on_trades(np.zeros(1, np.int64), np.array([7 * SEC]), np.array([100.0]), np.ones(1))
    r2 = math.log(101 / 100) ** 2 * 2                  # up, down, then flat, over 2 s
    assert m.var_rate[0] == pytest.approx(r2 / 2, rel=1e-12)
    assert m.volume_rate[0] == pytest.approx(3 / 2, rel=1e-12)   # the first trade opens the clock


def test_the_broker_moves_a_fill_of_unknown_size_by_slippage_plus_impact():
    clock = SimClock(0)
    m = MarketImpact(1, coef=0.5, window_s=60.0)
    ts, price, size = zigzag(100)
    m.on_trades(np.zeros(100, np.int64), ts, price, size)
    b = PaperBroker(clock, {"binance": (2.0, 5.0)}, LatencyModel(), 3.0, m.bps)
    b.on_quote(0, 99.0, math.inf, 100.0, math.inf, 0)
    b.submit("b", 0, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 8.0)
    b.submit("s", 0, "binance", SIDE_SELL, ORDER_MARKET, TIF_IOC, 32.0)
    clock.set(0)
    fills = {e.client_order_id: e.price for e in b.poll() if e.kind == "fill"}
    assert fills["b"] == pytest.approx(100.0 * (1 + (3.0 + 100.0) / 1e4), rel=1e-12)
    assert fills["s"] == pytest.approx(99.0 * (1 - (3.0 + 200.0) / 1e4), rel=1e-12)
    # a top of book with its size known fills that size at the top moved by slippage only
    # (at a new price: the paper book remembers what we took at 100)
    b.on_quote(0, 99.0, 5.0, 100.5, 5.0, 1)
    b.submit("k", 0, "binance", SIDE_BUY, ORDER_MARKET, TIF_IOC, 1.0)
    clock.set(1)
    assert [e.price for e in b.poll() if e.kind == "fill"] == [pytest.approx(100.5 * 1.0003, rel=1e-12)]


def test_a_backtest_pays_impact_growing_with_the_root_of_the_order_size(tmp_path):
    """The same signals at 100 and at 1,000 per position: beyond slippage_bps, each fill's
    cost in bps grows by sqrt(10); with impact_coef = 0 it is slippage_bps alone."""
    def run(notional: float, coef: float):
        path = config(tmp_path, f"n{int(notional)}c{int(coef * 10)}", impact_coef=coef)
        text = path.read_text().replace("[strategy]\n", f"[strategy]\nnotional = {notional}\n"
                                                         f"max_notional = {notional}\n")
        path.write_text(text)
        return run_backtest(load_config(path), [str(BTC)], end=TO).fills

    f0, f1, f2 = run(100.0, 0.0), run(100.0, 0.5), run(1000.0, 0.5)
    assert len(f0) >= 10 and len(f0) == len(f1) == len(f2)
    assert np.array_equal(f0["ts_ns"], f2["ts_ns"]) and np.array_equal(f0["side"], f2["side"])
    top = f0["price"] / (1 + f0["side"] * SLIP_BPS / 1e4)          # the quote each fill met
    extra1 = (f1["price"] / top - 1) * f1["side"] * 1e4 - SLIP_BPS
    extra2 = (f2["price"] / top - 1) * f2["side"] * 1e4 - SLIP_BPS
    assert np.allclose((f0["price"] / top - 1) * f0["side"] * 1e4, SLIP_BPS)
    assert (extra1 > 0).all()
    assert np.allclose(extra2 / extra1, math.sqrt(10), rtol=1e-6)   # ten times the size, same market


def test_an_impact_mistake_is_one_line(tmp_path, capsys):
    from pipeline.cli import main
    path = config(tmp_path, impact_coef=-1.0)
    assert main(["backtest", "--config", str(path), "--data", str(BTC), "--no-progress",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "execution.impact_coef must be in [0, 100)" in err and "\n" not in err
