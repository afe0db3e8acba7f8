"""One account in one currency (workers/execution/fx.py, the [execution] currency and
[[execution.fx]] config, the risk guard's conversion): KRW symbols valued in USDT at a
market's, a fixed or a dated file's rate; stale or diverging rates only reduce; mixed
currencies without a rate are refused at load."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from pipeline.clock import SimClock
from pipeline.config import (ConfigError, ExecutionConfig, FxSource, RiskConfig, account_currency,
                             currency_problem, load_config)
from pipeline.errors import UserError
from shm.records import INTENT, ORDER_MARKET, SIDE_BUY, SIDE_SELL, TICK, TICK_QUOTE, TICK_TRADE, TIF_IOC
from workers.execution.fx import DAY_NS, FxRates, load_rate_file
from workers.execution.risk import Denial, MarketView, RiskGuard, Tier, TradingState

FRED = Path(__file__).parent / "data" / "fx" / "usdkrw_1d_fred_DEXKOUS.csv"
SYMBOLS = ["BTC/USDT@binance", "BTC/KRW@upbit", "USDT/KRW@upbit", "ETH/KRW@bithumb"]
T0 = int(dt.datetime(2025, 8, 23, 21, 3, tzinfo=dt.timezone.utc).timestamp()) * 10**9
S = 10**9


def quote_tick(sid: int, bid: float, ask: float, ts: int) -> np.ndarray:
    t = np.zeros(1, TICK)
    t["symbol_id"], t["kind"], t["bid"], t["ask"], t["price"], t["ts_origin_ns"] = sid, TICK_QUOTE, bid, ask, np.nan, ts
    return t


def market_rates(**over) -> FxRates:
    src = [FxSource(quote="KRW", symbol="USDT/KRW@upbit", **over)]
    return FxRates(SYMBOLS, "USDT", src, band_bps=150.0)


def test_market_rate_values_krw_symbols_and_is_nan_until_known():
    fx = market_rates()
    fx.update(T0)
    assert fx.factor[0] == 1.0 and fx.fresh[0]                     # USDT: the account's own
    assert np.isnan(fx.factor[[1, 2, 3]]).all() and not fx.fresh[[1, 2, 3]].any()
    assert "no rate yet" in fx.problems["KRW"]
    ticks = quote_tick(2, 1383.0, 1384.0, T0)
    fx.on_ticks(ticks["symbol_id"].astype(np.int64), ticks)
    assert fx.update(T0 + S)                                       # KRW became fresh: a change
    assert fx.factor[1] == pytest.approx(1 / 1383.5) and fx.fresh[[1, 2, 3]].all()
    assert fx.problems == {}


def test_a_stale_market_rate_keeps_its_value_but_is_not_fresh():
    fx = market_rates(max_age_s=30.0)
    ticks = quote_tick(2, 1383.0, 1384.0, T0)
    fx.on_ticks(ticks["symbol_id"].astype(np.int64), ticks)
    fx.update(T0 + 30 * S)
    assert fx.fresh[1]
    assert fx.update(T0 + 31 * S)
    assert not fx.fresh[1] and fx.factor[1] == pytest.approx(1 / 1383.5)
    assert "31s old" in fx.problems["KRW"]


def test_a_market_quoted_the_other_way_round_and_trades_as_rates():
    fx = FxRates(["BTC/KRW@upbit", "KRW/USDT@x"], "USDT", [FxSource(quote="KRW", symbol="KRW/USDT@x")], 150.0)
    t = np.zeros(1, TICK)
    t["symbol_id"], t["kind"], t["price"], t["bid"], t["ask"], t["ts_origin_ns"] = 1, TICK_TRADE, 0.000725, np.nan, np.nan, T0
    fx.on_ticks(np.array([1]), t)
    fx.update(T0)
    assert fx.factor[0] == pytest.approx(0.000725)


def test_sources_that_disagree_beyond_the_band_are_not_fresh():
    # Upbit's USDT/KRW against FRED's fixing of the day before (1,401.88 on 2025-08-21, valid
    # from the 22nd's start; 1,381.71 of the 22nd valid from the 23rd's)
    src = [FxSource(quote="KRW", symbol="USDT/KRW@upbit"), FxSource(quote="KRW", file=str(FRED))]
    fx = FxRates(SYMBOLS, "USDT", src, band_bps=150.0)
    ticks = quote_tick(2, 1383.0, 1384.0, T0)
    fx.on_ticks(np.array([2]), ticks)
    fx.update(T0)
    assert fx.fresh[1] and fx.factor[1] == pytest.approx(1 / 1383.5)   # 13 bps apart: fine
    ticks = quote_tick(2, 1420.0, 1421.0, T0 + S)                      # +2.8 % on Upbit
    fx.on_ticks(np.array([2]), ticks)
    assert fx.update(T0 + S)
    assert not fx.fresh[1] and "bps apart" in fx.problems["KRW"]


def test_a_fixed_rate_never_goes_stale():
    fx = FxRates(SYMBOLS, "USDT", [FxSource(quote="KRW", rate=1380.0)], 150.0)
    fx.update(T0 + 10**6 * S)
    assert fx.fresh.all() and fx.factor[3] == pytest.approx(1 / 1380)


def test_a_dated_rate_counts_from_the_end_of_its_day():
    times, rates = load_rate_file(FRED)
    assert len(rates) == 21 and rates[0] == 1388.34
    first = int(dt.datetime(2025, 8, 1, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    assert times[0] == first + DAY_NS                # the fixing of Aug 1 is known from Aug 2
    fx = FxRates(SYMBOLS, "USDT", [FxSource(quote="KRW", file=str(FRED))], 150.0,
                 series={str(FRED): (times, rates)})
    fx.update(first + DAY_NS - 1)
    assert np.isnan(fx.factor[1])                    # nothing published yet
    fx.update(T0)                                    # Saturday 23rd: Friday 22nd's fixing
    assert fx.factor[1] == pytest.approx(1 / 1381.71) and fx.fresh[1]


@pytest.mark.parametrize("text, says", [
    ("date,rate\n2025-08-01,-5\n", "must be a number > 0"),
    ("date,rate\n2025-08-02,1\n2025-08-01,2\n", "not after the row before"),
    ("date,rate\nyesterday-ish,1\n", "not a date"),
    ("date,rate\n2025-08-01T00:00:00,1\n", "not a date or a zoned"),
    ("date,rate\n2025-08-01,.\n", "no row with a rate"),
    ("date\n", "needs a header and at least one row"),
])
def test_a_bad_rate_file_is_a_clear_error(tmp_path, text, says):
    p = tmp_path / "rates.csv"
    p.write_text(text)
    with pytest.raises(UserError, match=says):
        load_rate_file(p)
    with pytest.raises(UserError, match="is a directory"):
        load_rate_file(tmp_path)


def test_fred_holidays_are_skipped(tmp_path):
    p = tmp_path / "rates.csv"
    p.write_text("date,usdkrw\n2025-08-14,1390.59\n2025-08-15,.\n2025-08-18,1387.34\n")
    times, rates = load_rate_file(p)
    assert rates.tolist() == [1390.59, 1387.34]


# -- config -------------------------------------------------------------------------------------
def test_mixed_quote_currencies_need_an_account_currency_and_rates():
    ec = ExecutionConfig()
    assert account_currency(ec, ["BTC/USDT@binance", "ETH/USDT@binance"]) == "USDT"
    assert "set [execution] currency" in currency_problem(ec, SYMBOLS)
    ec.currency = "USDT"
    assert "KRW need an [[execution.fx]] source" in currency_problem(ec, SYMBOLS)
    ec.fx = [FxSource(quote="KRW", symbol="USDT/KRW@upbit")]
    assert currency_problem(ec, SYMBOLS) is None
    for bad, says in [(FxSource(quote="KRW", symbol="USDT/KRW@bithumb"), "one of the pipeline's symbols"),
                      (FxSource(quote="KRW", symbol="BTC/KRW@upbit"), "does not trade KRW against USDT"),
                      (FxSource(quote="KRW"), "exactly one of symbol, rate, file or url"),
                      (FxSource(quote="KRW", rate=-1.0), "must be a finite number > 0"),
                      (FxSource(quote="KRW", file="/nonexistent.csv"), "is not a file"),
                      (FxSource(quote="USDT", rate=1.0), "other than the account's")]:
        ec.fx = [FxSource(quote="KRW", rate=1380.0), bad] if bad.quote == "USDT" else [bad]
        assert says in currency_problem(ec, SYMBOLS)


def _write_conf(tmp_path, fx: str) -> Path:
    p = tmp_path / "mixed.toml"
    p.write_text('[[feeds]]\nname = "binance"\nkind = "synthetic"\nsymbols = ["BTC/USDT"]\n\n'
                 '[[feeds]]\nname = "upbit"\nkind = "synthetic"\nsymbols = ["BTC/KRW", "USDT/KRW"]\n\n' + fx)
    return p


def test_a_config_mixing_currencies_without_a_rate_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match="set \\[execution\\] currency"):
        load_config(_write_conf(tmp_path, ""))
    (tmp_path / "fred.csv").write_text(FRED.read_text())
    cfg = load_config(_write_conf(tmp_path, '[execution]\ncurrency = "USDT"\n\n[[execution.fx]]\n'
                                            'quote = "KRW"\nfile = "fred.csv"\n'))
    assert cfg.execution.fx[0].file == str(tmp_path / "fred.csv")     # relative to the file
    with pytest.raises(ConfigError, match="fx\\[0\\].symbol 'USDT/KRW@bithumb'"):
        load_config(_write_conf(tmp_path, '[execution]\ncurrency = "USDT"\n\n[[execution.fx]]\n'
                                          'quote = "KRW"\nsymbol = "USDT/KRW@bithumb"\n'))


def test_the_shipped_venues_config_values_every_symbol_in_usdt():
    cfg = load_config(Path(__file__).parent.parent / "conf" / "venues.toml")
    assert cfg.execution.currency == "USDT" and {f.quote for f in cfg.execution.fx} == {"KRW", "USD"}


# -- the risk guard in the account currency ---------------------------------------------------
KRW_PER_USDT = 1380.0


def _guard_and_market(fx: np.ndarray, fresh: np.ndarray, position=(0.0, 0.0)):
    limits = RiskConfig(max_gross_exposure=100_000.0, max_venue_exposure=50_000.0,
                        max_position_notional=20_000.0, max_order_notional=5_000.0)
    guard = RiskGuard(2, np.array([0, 1]), ["binance", "upbit"], limits, SimClock(T0))
    btc_usdt, btc_krw = 60_000.0, 60_000.0 * KRW_PER_USDT * 1.01     # a 1 % premium
    last = np.array([btc_usdt, btc_krw])
    mv = MarketView(position=np.array(position), last=last, bid=last * 0.9999, ask=last * 1.0001,
                    quote_ns=np.full(2, T0, np.int64), venue_connected=np.ones(2, bool),
                    venue_last_ns=np.full(2, T0, np.int64), open_orders=np.zeros(2, np.int64),
                    equity=100_000.0, equity_peak=100_000.0, day_start_equity=100_000.0,
                    fx=fx, fx_fresh=fresh)
    return guard, mv


def _intent(sym: int, side: int, qty: float, ref: float) -> np.ndarray:
    it = np.zeros(1, INTENT)
    it["symbol_id"], it["side"], it["qty"], it["ref_price"] = sym, side, qty, ref
    it["order_type"], it["tif"], it["limit_price"], it["ts_origin_ns"], it["seq"] = ORDER_MARKET, TIF_IOC, np.nan, T0, 1
    return it


def test_krw_notionals_are_checked_in_usdt():
    guard, mv = _guard_and_market(np.array([1.0, 1 / KRW_PER_USDT]), np.ones(2, bool))
    px = mv.last[1]
    # 0.08 BTC on Upbit: 6.7 M KRW, 4,848 USDT: under the 5,000 order limit (in KRW it is far over)
    assert guard.check(_intent(1, SIDE_BUY, 0.08, px), mv)[0] == Denial.PASSED
    assert guard.check(_intent(1, SIDE_BUY, 0.09, px), mv)[0] == Denial.ORDER_NOTIONAL
    # a 0.4 BTC position (24,240 USDT) is over the 20,000 position limit: the symbol only reduces
    guard, mv = _guard_and_market(np.array([1.0, 1 / KRW_PER_USDT]), np.ones(2, bool), position=(0.0, 0.4))
    assert guard.check(_intent(1, SIDE_BUY, 0.01, px), mv)[0] == Denial.POSITION_LIMIT
    assert guard.tier_state(Tier.SYMBOL, 1) == TradingState.REDUCING
    assert guard.check(_intent(1, SIDE_SELL, 0.01, px), mv)[0] == Denial.PASSED


def test_no_rate_denies_the_symbol_and_a_stale_one_only_reduces():
    guard, mv = _guard_and_market(np.array([1.0, np.nan]), np.array([True, False]))
    assert guard.check(_intent(1, SIDE_BUY, 0.01, mv.last[1]), mv)[0] == Denial.FX_RATE
    assert guard.check(_intent(0, SIDE_BUY, 0.01, mv.last[0]), mv)[0] == Denial.PASSED
    guard, mv = _guard_and_market(np.array([1.0, 1 / KRW_PER_USDT]), np.array([True, False]),
                                  position=(0.0, 0.05))
    assert guard.check(_intent(1, SIDE_BUY, 0.01, mv.last[1]), mv)[0] == Denial.FX_RATE
    assert guard.tier_state(Tier.SYMBOL, 1) == TradingState.REDUCING
    assert guard.check(_intent(1, SIDE_SELL, 0.01, mv.last[1]), mv)[0] == Denial.PASSED
    mv.fx_fresh = np.ones(2, bool)                                   # the rate is back
    assert guard.check(_intent(1, SIDE_BUY, 0.01, mv.last[1]), mv)[0] == Denial.PASSED
    assert guard.tier_state(Tier.SYMBOL, 1) == TradingState.ACTIVE


# -- the strategy sizes in the account currency ------------------------------------------------
def test_the_strategy_sizes_a_krw_symbol_in_the_account_currency():
    from pipeline.config import StrategyConfig
    from shm.records import SIGNAL
    from workers.strategy.signals import SignalStrategy

    fx = market_rates()
    strat = SignalStrategy(len(SYMBOLS), StrategyConfig(notional=100.0, max_notional=100.0), SimClock(T0), fx=fx)

    def entry(sid: int, price: float, seq: int) -> np.ndarray:
        s = np.zeros(1, SIGNAL)
        s["probs"], s["symbol_id"], s["seq"], s["ref_price"] = [[0.1, 0.2, 0.7]], sid, seq, price
        s["ts_bar_ns"], s["ts_origin_ns"] = T0, T0
        return strat.on_signals(s, np.full(len(SYMBOLS), 0.002))

    btc_krw = 160_000_000.0
    assert len(entry(1, btc_krw, 1)) == 0 and strat.counters["no_fx_rate"] == 1   # no rate: no size
    bars = np.zeros(1, [("symbol_id", "<u4"), ("close", "<f8"), ("ts_origin_ns", "<i8")])
    bars[0] = (2, 1380.0, T0)                       # a USDT/KRW bar closes at 1,380 KRW per USDT
    fx.on_bars(bars)
    rows = entry(1, btc_krw, 2)
    assert rows["qty"][0] == pytest.approx(100.0 / (btc_krw / 1380.0))           # 100 USDT of BTC
    rows = entry(0, 116_000.0, 3)
    assert rows["qty"][0] == pytest.approx(100.0 / 116_000.0)                     # USDT: as it was


# -- a backtest of KRW against USDT, in USDT ---------------------------------------------------
CANDLES = Path(__file__).parent / "data" / "candles"
UPBIT = CANDLES / "upbit_BTC-KRW_5m_2025-08-20.csv"
BINANCE = CANDLES / "binance_BTC-USDT_5m_2025-08-20.csv"
KRW_AUG_19 = 1392.04           # FRED's fixing of 2025-08-19: the rate all through the 20th


def test_a_backtest_of_krw_and_usdt_symbols_keeps_one_account_in_usdt(tmp_path):
    from conftest import toml
    from pipeline.backtest import run_backtest
    from workers.execution.portfolio import Portfolio

    path = tmp_path / "krw.toml"
    path.write_text(toml({
        "pipeline": {"name": "krw"},
        "indicators": {"bar_seconds": 300.0, "ema": [3, 8]},
        "model": {"kind": "momentum", "threshold": 0.0005},
        "strategy": {"enter_margin": 0.05, "exit_margin": 0.02, "min_hold_bars": 1,
                     "notional": 200.0, "max_notional": 200.0},
        "risk": {"max_position_notional": 500.0, "max_order_notional": 500.0, "max_gross_exposure": 1e6,
                 "max_venue_exposure": 1e6, "max_drawdown_frac": 0.9, "max_daily_loss_frac": 0.9},
        "execution": {"venue_rules": False, "currency": "USDT"},
        "execution.fx": [{"quote": "KRW", "file": str(FRED)}],
    }))
    res = run_backtest(load_config(path), [str(BINANCE), str(UPBIT)])
    sid = {s: i for i, s in enumerate(res.symbols)}
    krw = sid["BTC/KRW@upbit"]
    on_upbit = res.fills[res.fills["symbol_id"] == krw]
    assert len(on_upbit) >= 4 and len(res.fills) > len(on_upbit)
    # sized in USDT: 200 USDT of BTC at most (KRW sizing would have been 200 KRW, or 1,392 times more)
    usdt = on_upbit["qty"] * on_upbit["price"] / KRW_AUG_19
    assert (usdt <= 200.0 * 1.01).all() and (usdt > 20.0).all()
    assert res.counts.get("denials", {}).get("FX_RATE", 0) == 0
    # the equity is the account in USDT: KRW money converted at the day's rate
    book = Portfolio.empty(len(res.symbols))
    for f in res.fills:
        book.apply_values(int(f["symbol_id"]), int(f["side"]), float(f["qty"]), float(f["price"]),
                          float(f["fee"]), 0, int(f["ts_ns"]))
    rows, mark = book.rows, res.close[-1]
    conv = np.where(np.arange(len(res.symbols)) == krw, 1 / KRW_AUG_19, 1.0)
    money = rows["realized_pnl"] - rows["fees"] + rows["qty"] * (mark - rows["avg_price"])
    assert res.equity[-1] == pytest.approx(10_000.0 + float((money * conv).sum()), rel=1e-9)
    assert abs(res.equity[-1] - 10_000.0) < 50.0


# -- a reference rate polled from a URL ----------------------------------------------------------
DUNAMU = Path(__file__).parent / "data" / "fx" / "dunamu_forex_recent_FRX.KRWUSD_2021-08-13.json"


def test_the_rate_is_read_at_its_path_in_a_real_answer():
    import json
    from workers.execution.fx_feed import rate_at
    payload = json.loads(DUNAMU.read_text())
    assert rate_at(payload, "0.basePrice") == 1169.0
    for field, says in [("0.nothere", "no 'nothere'"), ("1.basePrice", "no '1'"), ("0.change", "not a number"),
                        ("0.tcBuyingPrice", "NoneType, not a number")]:
        with pytest.raises(ValueError, match=says):
            rate_at(payload, field)
    with pytest.raises(ValueError, match="not a rate > 0"):
        rate_at({"rates": {"KRW": -1}}, "rates.KRW")


def test_a_polled_reference_rate_feeds_the_rates_and_a_bad_answer_only_lets_it_age(tmp_path):
    import logging
    import time
    from venue_servers import HttpReplayServer
    from workers.execution.fx_feed import RatePoller
    answers = {"/v1/forex/recent": DUNAMU.read_text()}
    log = logging.getLogger("test-fx-poll")
    with HttpReplayServer(answers) as srv:
        src = FxSource(quote="KRW", url=srv.url + "/v1/forex/recent?codes=FRX.KRWUSD", field="0.basePrice",
                       poll_s=1.0)
        assert src.kind == "url" and src.stale_after_s == 3.0
        fx = FxRates(["BTC/KRW@upbit", "BTC/USDT@binance"], "USDT", [src], 150.0)
        poller = RatePoller(fx.url_sources(), log).start()
        try:
            deadline = time.monotonic() + 60
            got = []
            while not got and time.monotonic() < deadline:
                got = poller.drain()
                time.sleep(0.05)              # polling, with a deadline
            assert got and got[0][0] == 0 and got[0][1] == 1169.0
            for index, rate, ts in got:
                fx.on_value(index, rate, ts)
            fx.update(got[-1][2])
            assert fx.fresh[0] and fx.factor[0] == pytest.approx(1 / 1169.0)
            answers["/v1/forex/recent"] = (500, "oops")          # the source breaks: no new rate
            while "0" not in str(poller.failures) and time.monotonic() < deadline:
                time.sleep(0.05)              # polling, with a deadline
                for index, rate, ts in poller.drain():
                    fx.on_value(index, rate, ts)
            assert "HTTPError" in poller.failures[0]
        finally:
            poller.close()
        fx.update(fx.sources[0].ts_ns + 4 * 10**9)                # three polls missed: stale
        assert not fx.fresh[0] and fx.factor[0] == pytest.approx(1 / 1169.0)
        assert "url source's rate is 4s old" in fx.problems["KRW"]


def test_a_url_source_is_checked_at_load():
    ec = ExecutionConfig(currency="USDT")
    for src, says in [(FxSource(quote="KRW", url="ftp://x", field="a"), "url must be http(s)"),
                      (FxSource(quote="KRW", url="https://x"), "url must be http(s)"),
                      (FxSource(quote="KRW", url="https://x", field="a", poll_s=0.1), "poll_s must be at least 1")]:
        ec.fx = [src]
        assert says in currency_problem(ec, SYMBOLS)
