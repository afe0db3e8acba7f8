"""The indicator engine (models/ta.py) against TA-Lib on real candles, and live
(streaming, many symbols, one bar each per call) against batch.

Oracles: the TA-Lib functions of the ``ta-lib`` wheel, except VWAP (numpy sums
over sliding windows; no TA-Lib counterpart), volatility (talib.STDDEV over
numpy log returns) and the volume z-score (talib.SMA and talib.STDDEV).

Agreement: |ours - ref| <= 1e-9 * |ref| + 1e-12 * max|ref of that column|. The
absolute term, 1e-12 of the column's scale, is for values at or crossing zero
(MACD histogram, OBV, z-score, %K at 0), where a relative bound means nothing.
NaN patterns must be identical, and the first valid index must be the
indicator's ``lookback``. (With the TA-Lib build these tests were written
against, the values are in fact bit-identical; only VWAP and volatility, whose
oracles sum and take logarithms differently, differ by an ulp.)

The candles are cut-down copies of ../shared/data/candles in tests/data/candles
(tests/data/SOURCES.md): a few thousand bars of each file.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from models.ta import INDICATORS, Engine

from conftest import DATA

talib = pytest.importorskip("talib", reason="ta-lib (the test oracle) is not installed")

CANDLES = DATA / "candles"

# binance 5m: 10k rows; 1h: 5k rows (2017-18, with outage gaps); coinbase 1d: a bad
# print (2017-04-15 low 0.06) and gaps; bittrex ETH/BTC 5m and binance XRP/ETH 1m:
# prices of 0.09 and 0.0014 (variance far below TA-Lib's old 1e-8 zero test), absent
# no-trade minutes.
FILES = ["binance_BTC-USDT_5m.csv", "binance_BTC-USDT_1h.csv", "coinbase_BTC-USD_1d.csv",
         "bittrex_ETH-BTC_5m.csv", "binance_XRP-ETH_1m.csv"]

# at least two parameter sets per indicator (OBV has no parameters)
PARAMS: dict[str, list[tuple]] = {
    "ema": [(12,), (26,), (35,)],
    "sma": [(20,), (7,)],
    "rsi": [(14,), (5,)],
    "macd": [(12, 26, 9), (5, 35, 5), (26, 12, 9)],     # the last: slow < fast, swapped
    "bbands": [(20, 2), (10, 1.5)],
    "atr": [(14,), (1,), (35,)],
    "stoch": [(14, 3, 3), (5, 1, 4)],
    "obv": [()],
    "vwap": [(20,), (5,)],
    "volatility": [(20,), (60,)],
    "volume_z": [(20,), (50,)],
}


def _vwap(h, l, c, v, p):
    from numpy.lib.stride_tricks import sliding_window_view as windows
    out = np.full(len(c), np.nan)
    pv = windows((h + l + c) / 3.0 * v, p).sum(axis=1)   # terms >= 0: sums exact to p ulps
    vol = windows(v, p).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[p - 1:] = np.where(vol > 0, pv / vol, np.nan)
    return out


def _log_returns(c):
    r = np.full(len(c), np.nan)
    r[1:] = np.log(c[1:] / c[:-1])
    return r


def _volume_z(v, p):
    sd = talib.STDDEV(v, p, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (v - talib.SMA(v, p)) / sd
    z[sd == 0] = 0.0
    return z


ORACLES = {   # kind -> f(bars, *params) -> list of columns, in the indicator's order
    "ema": lambda b, p: [talib.EMA(b["close"], p)],
    "sma": lambda b, p: [talib.SMA(b["close"], p)],
    "rsi": lambda b, p: [talib.RSI(b["close"], p)],
    "macd": lambda b, f, s, g: list(talib.MACD(b["close"], f, s, g)),
    "bbands": lambda b, p, d: list(talib.BBANDS(b["close"], p, d, d, 0)),
    "atr": lambda b, p: [talib.ATR(b["high"], b["low"], b["close"], p)],
    "stoch": lambda b, k, s, d: list(talib.STOCH(b["high"], b["low"], b["close"], k, s, 0, d, 0)),
    "obv": lambda b: [talib.OBV(b["close"], b["volume"])],
    "vwap": lambda b, p: [_vwap(b["high"], b["low"], b["close"], b["volume"], p)],
    "volatility": lambda b, p: [talib.STDDEV(_log_returns(b["close"]), p, 1)],
    "volume_z": lambda b, p: [_volume_z(b["volume"], p)],
}

FIELDS = ("open", "high", "low", "close", "volume")


@functools.lru_cache(maxsize=None)
def candles(name: str) -> dict[str, np.ndarray]:
    import pandas as pd
    df = pd.read_csv(CANDLES / name)
    return {f: np.ascontiguousarray(df[f].to_numpy(np.float64)) for f in FIELDS}


def batch(specs, bars) -> tuple[Engine, np.ndarray]:
    """All bars as the events of one symbol, in one call (the `pipeline features` path)."""
    eng = Engine(1, specs)
    out = eng.update(np.zeros(len(bars["close"]), np.int64), *(bars[f] for f in FIELDS))
    return eng, out


def assert_agrees(name: str, ours: np.ndarray, ref: np.ndarray, lookback: int) -> None:
    nan_ours, nan_ref = np.isnan(ours), np.isnan(ref)
    assert np.array_equal(nan_ours, nan_ref), (
        f"{name}: NaN pattern differs first at index {np.argmax(nan_ours != nan_ref)}")
    assert not nan_ref[lookback] and nan_ref[:lookback].all(), (
        f"{name}: TA-Lib's first valid index is {np.argmax(~nan_ref)}, lookback says {lookback}")
    ok = ~nan_ref
    scale = np.max(np.abs(ref[ok]))
    err = np.abs(ours[ok] - ref[ok])
    bound = 1e-9 * np.abs(ref[ok]) + 1e-12 * scale
    worst = int(np.argmax(err / bound))
    assert (err <= bound).all(), (
        f"{name}: {int((err > bound).sum())} values off, worst at valid index {worst}: "
        f"ours {ours[ok][worst]!r} ref {ref[ok][worst]!r}")


# -- against TA-Lib / the oracles ----------------------------------------------------------
def test_every_indicator_has_an_oracle_and_parameter_sets():
    assert set(ORACLES) == set(INDICATORS) == set(PARAMS), (
        "each kind in models.ta.INDICATORS needs an oracle and parameter sets here")


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("kind", sorted(INDICATORS))
def test_equals_talib(kind, name):
    if kind not in ORACLES or kind not in PARAMS:
        pytest.fail(f"{kind}: no oracle / parameter sets in tests/test_ta.py")
    bars = candles(name)
    for params in PARAMS[kind]:
        eng, out = batch([(kind, params)], bars)
        refs = ORACLES[kind](bars, *params)
        assert len(refs) == len(eng.columns)
        for j, (col, ref) in enumerate(zip(eng.columns, refs)):
            assert_agrees(f"{name} {col}", out[:, j], ref, eng.indicators[0].lookback)


def test_first_valid_indices():
    """Warm-up as TA-Lib (checked on data above); here the figures themselves."""
    eng = Engine(1, [("macd", (12, 26, 9)), ("bbands", (20, 2)), ("atr", (14,)),
                     ("stoch", (14, 3, 3)), ("obv", ()), ("vwap", (20,)),
                     ("volatility", (20,)), ("volume_z", (20,)), ("rsi", (14,)), ("ema", (12,))])
    assert [ind.lookback for ind in eng.indicators] == [33, 19, 14, 17, 0, 19, 20, 19, 14, 11]
    assert eng.lookback == 33


# -- live equals batch ---------------------------------------------------------------------
ALL_SPECS = [(kind, p) for kind in PARAMS for p in PARAMS[kind]]


def _symbols() -> list[dict[str, np.ndarray]]:
    """Three symbols of different lengths: they stop appearing one after another."""
    a = candles("coinbase_BTC-USD_1d.csv")                    # 1317 bars, the bad print
    b = {f: x[:3000] for f, x in candles("binance_BTC-USDT_1h.csv").items()}
    c = candles("binance_XRP-ETH_1m.csv")                     # 2469 bars
    return [a, b, c]


def test_streaming_equals_batch_one_bar_per_symbol_per_call():
    """As a live shard: each call holds the bars closing at one time, one per symbol,
    in a different order each step; every symbol's rows equal its own batch run."""
    syms = _symbols()
    rng = np.random.default_rng(4)
    eng = Engine(len(syms), ALL_SPECS)
    rows = [[] for _ in syms]
    for t in range(max(len(s["close"]) for s in syms)):
        ids = np.array([k for k in range(len(syms)) if t < len(syms[k]["close"])], np.int64)
        rng.shuffle(ids)
        out = eng.update(ids, *(np.array([syms[k][f][t] for k in ids]) for f in FIELDS))
        for k, row in zip(ids, out):
            rows[k].append(row)
    for k, bars in enumerate(syms):
        _, ref = batch(ALL_SPECS, bars)
        live = np.array(rows[k])
        for j, col in enumerate(eng.columns):
            assert np.array_equal(live[:, j], ref[:, j], equal_nan=True), (
                f"symbol {k} {col}: live differs from batch first at bar "
                f"{np.argmax(~((live[:, j] == ref[:, j]) | np.isnan(ref[:, j])))}")


def test_streaming_equals_batch_in_chunks_with_runs():
    """The symbols' bars interleaved in one stream cut into calls of random size, so a
    call holds runs of one symbol and the same symbol several times: same values."""
    syms = _symbols()
    rng = np.random.default_rng(7)
    order = np.concatenate([np.full(len(s["close"]), k) for k, s in enumerate(syms)])
    rng.shuffle(order)                                   # per-symbol bar order is kept below
    pos = [0] * len(syms)
    index = np.empty(len(order), np.int64)
    for i, k in enumerate(order):
        index[i] = pos[k]
        pos[k] += 1
    eng = Engine(len(syms), ALL_SPECS)
    outs = []
    start = 0
    while start < len(order):
        stop = min(len(order), start + int(rng.integers(1, 200)))
        ids = order[start:stop].astype(np.int64)
        outs.append(eng.update(ids, *(np.array([syms[k][f][t] for k, t in
                                                zip(ids, index[start:stop])]) for f in FIELDS)))
        start = stop
    out = np.concatenate(outs)
    for k, bars in enumerate(syms):
        _, ref = batch(ALL_SPECS, bars)
        assert np.array_equal(out[order == k], ref, equal_nan=True), f"symbol {k}"


# -- the engine ------------------------------------------------------------------------------
def test_parameter_sets_side_by_side():
    bars = candles("binance_BTC-USDT_1h.csv")
    specs = [("ema", (12,)), ("ema", (26,)), ("macd", (12, 26, 9)), ("macd", (5, 35, 5)),
             ("bbands", (20, 2.0)), ("stoch", (14, 3, 3)), ("volatility", (20,)),
             ("volume_z", (20,))]
    eng, out = batch(specs, bars)
    assert eng.columns == [
        "ema_12", "ema_26", "macd_12_26_9", "macd_signal_12_26_9", "macd_hist_12_26_9",
        "macd_5_35_5", "macd_signal_5_35_5", "macd_hist_5_35_5",
        "bb_upper_20_2", "bb_middle_20_2", "bb_lower_20_2", "stoch_k_14_3", "stoch_d_14_3_3",
        "vol_20", "volz_20"]
    assert out.shape == (len(bars["close"]), len(eng.columns))
    col = 0
    for spec in specs:                                   # each set as if alone
        _, alone = batch([spec], bars)
        k = alone.shape[1]
        assert np.array_equal(out[:, col:col + k], alone, equal_nan=True), spec
        col += k
    assert eng.lookback == 38                            # macd 5/35/5


def test_column_names():
    def cols(kind, *p):
        return Engine(1, [(kind, p)]).columns
    assert cols("bbands", 20, 2.0) == ["bb_upper_20_2", "bb_middle_20_2", "bb_lower_20_2"]
    assert cols("bbands", 20, 2.5)[0] == "bb_upper_20_2.5"
    assert cols("stoch", 14, 3, 3) == ["stoch_k_14_3", "stoch_d_14_3_3"]
    assert cols("macd", 12, 26, 9) == ["macd_12_26_9", "macd_signal_12_26_9", "macd_hist_12_26_9"]
    assert cols("atr", 14) == ["atr_14"]
    assert cols("obv") == ["obv"]
    assert cols("vwap", 20) == ["vwap_20"]
    assert cols("volatility", 20) == ["vol_20"]
    assert cols("volume_z", 20) == ["volz_20"]


def test_duplicate_columns_and_bad_parameters_rejected():
    with pytest.raises(ValueError, match="ema_12"):
        Engine(1, [("ema", (12,)), ("ema", (12,))])
    with pytest.raises(ValueError, match="stoch_k_14_3"):       # same %K, different %D
        Engine(1, [("stoch", (14, 3, 3)), ("stoch", (14, 3, 5))])
    with pytest.raises(IndexError):
        Engine(2, [("ema", (3,))]).update(np.array([0, 2]), *np.ones((5, 2)))
    for spec in [("ema", (0,)), ("bbands", (1, 2.0)), ("macd", (12, 26, 0)),
                 ("stoch", (14, 0, 3)), ("volatility", (1,)), ("atr", (2.5,))]:
        with pytest.raises(ValueError):
            Engine(1, [spec])


# -- edge cases, on synthetic bars (TA-Lib still the oracle where it has the indicator) ----
def _bars(close, volume=None, spread=0.0):
    close = np.asarray(close, np.float64)
    return {"open": close.copy(), "high": close + spread, "low": close - spread, "close": close,
            "volume": np.ones_like(close) if volume is None else np.asarray(volume, np.float64)}


def test_variance_recentring_matches_talib():
    """TA-Lib's variance re-centres its shifted sums on cancellation: a level shift
    of 1e6, a huge bar leaving the window, a flat stretch, and a long series."""
    rng = np.random.default_rng(1)
    close = np.concatenate([1e6 + rng.normal(0, 1, 300), 1.0 + rng.normal(0, 1e-3, 300),
                            np.full(100, 5.0), 5.0 + np.cumsum(rng.normal(0, 1e-4, 3000))])
    close = np.abs(close) + 1e-3
    volume = np.concatenate([np.full(300, 1e9), rng.random(400), np.full(1000, 2.0),
                             rng.random(2000)])
    bars = _bars(close, volume, spread=1e-3)
    for kind, params in [("bbands", (20, 2.0)), ("bbands", (5, 1.0)), ("volatility", (20,)),
                         ("volume_z", (20,)), ("volume_z", (3,))]:
        eng, out = batch([(kind, params)], bars)
        for j, ref in enumerate(ORACLES[kind](bars, *params)):
            assert_agrees(eng.columns[j], out[:, j], ref, eng.indicators[0].lookback)


def test_flat_windows():
    """%K is 0 on a window with no range (as TA-Lib); the volume z-score is 0 over equal
    volumes (defined: STDDEV is 0); VWAP is NaN over a window without volume."""
    close = np.concatenate([np.linspace(100, 110, 30), np.full(40, 105.0),
                            np.linspace(105, 90, 30)])
    volume = np.concatenate([np.full(40, 3.0), np.zeros(30), np.linspace(1, 5, 30)])
    bars = _bars(close, volume)
    eng, out = batch([("stoch", (5, 3, 3)), ("volume_z", (10,)), ("vwap", (10,))], bars)
    k, d = talib.STOCH(bars["high"], bars["low"], bars["close"], 5, 3, 0, 3, 0)
    assert_agrees("stoch_k", out[:, 0], k, 8)
    assert_agrees("stoch_d", out[:, 1], d, 8)
    assert (out[45:70, 0] == 0).all()
    assert (out[9:40, 2] == 0).all()                     # equal volumes: z = 0
    assert np.isnan(out[49:70, 3]).all() and not np.isnan(out[70:, 3]).any()
    assert_agrees("vwap_10", out[:, 3], _vwap(bars["high"], bars["low"], close, volume, 10), 9)


def test_vwap_window_sums_do_not_drift():
    """The VWAP window sums are compensated: after a million huge bars a window of
    tiny ones is still exact (a plain running sum is about 5 % off here)."""
    n = 1_000_000
    rng = np.random.default_rng(2)
    close = 100.0 + rng.random(n)
    volume = np.concatenate([rng.random(n - 20) * 1e6, rng.random(20) * 1e-6])
    bars = _bars(close, volume, spread=0.5)
    eng, out = batch([("vwap", (20,))], bars)
    h, l, c, v = bars["high"][-20:], bars["low"][-20:], close[-20:], volume[-20:]
    exact = math.fsum((h + l + c) / 3.0 * v) / math.fsum(v)
    assert abs(out[-1, 0] - exact) <= 1e-12 * exact
