"""Incremental technical indicators, one implementation for live and batch.

Each indicator is a numba kernel that consumes a sequence of *bar events*
``(symbol index, open, high, low, close, volume)`` in order, updating that
symbol's state in O(1) and writing the indicator's value(s) for the event.
Live, an indicator shard passes the bars that just closed (one event per
symbol, all symbols of the shard in one call); in batch (`pipeline features`)
a whole file's bars are the events of one symbol. Same compiled code, so
training features and live features cannot differ.

Values follow TA-Lib's definitions, seeding and warm-up (first valid index);
before that they are NaN. Column names say the indicator and its parameters:
``ema_12``, ``macd_12_26_9``, ``bb_upper_20_2``, ...
"""
from __future__ import annotations

import math

import numba
import numpy as np

NAN = math.nan
JIT = dict(nopython=True, cache=True, nogil=True)


def _fmt(x) -> str:
    """Parameter in a column name: 2.0 -> "2", 2.5 -> "2.5"."""
    return str(int(x)) if float(x).is_integer() else str(x)


class Indicator:
    """State for ``n_symbols`` symbols plus the kernel that advances it."""

    columns: list[str]
    lookback: int          # TA-Lib's lookback: index of the first valid value

    def __init__(self, n_symbols: int):
        self.n = n_symbols

    def update(self, sym: np.ndarray, o, h, l, c, v, out: np.ndarray) -> None:
        """Write this indicator's values for each event into ``out`` (columns x events:
        each column a contiguous row, which is what the kernels write fastest)."""
        raise NotImplementedError


@numba.jit(**JIT)
def _is_zero(x):
    """TA-Lib's TA_IS_ZERO: what it treats as a zero denominator."""
    return -0.00000001 < x < 0.00000001


# -- EMA --------------------------------------------------------------------------------
@numba.jit(**JIT)
def _ema_kernel(sym, x, period, count, acc, ema, out):
    k = 2.0 / (period + 1)
    n = sym.shape[0]
    i = 0
    while i < n:                           # a run of events of one symbol: state in registers
        s = sym[i]
        cnt, a, e = count[s], acc[s], ema[s]
        while i < n and sym[i] == s:
            cnt += 1
            if cnt < period:
                a += x[i]
                out[i] = NAN
            elif cnt == period:            # seeded with the SMA of the first `period` values
                a += x[i]
                e = a / period
                out[i] = e
            else:
                e = (x[i] - e) * k + e
                out[i] = e
            i += 1
        count[s], acc[s], ema[s] = cnt, a, e


class EMA(Indicator):
    def __init__(self, n_symbols: int, period: int):
        super().__init__(n_symbols)
        self.period = period
        self.columns = [f"ema_{period}"]
        self.lookback = period - 1
        self.count = np.zeros(n_symbols, np.int64)
        self.acc = np.zeros(n_symbols)
        self.ema = np.zeros(n_symbols)

    def update(self, sym, o, h, l, c, v, out):
        _ema_kernel(sym, c, self.period, self.count, self.acc, self.ema, out[0])


# -- SMA --------------------------------------------------------------------------------
@numba.jit(**JIT)
def _sma_kernel(sym, x, period, count, window, total, out):
    n = sym.shape[0]
    i = 0
    while i < n:
        s = sym[i]
        cnt, tot = count[s], total[s]
        slot = cnt % period
        while i < n and sym[i] == s:
            if cnt >= period:
                tot -= window[s, slot]
            window[s, slot] = x[i]
            tot += x[i]
            cnt += 1
            slot += 1
            if slot == period:
                slot = 0
            out[i] = tot / period if cnt >= period else NAN
            i += 1
        count[s], total[s] = cnt, tot


class SMA(Indicator):
    def __init__(self, n_symbols: int, period: int):
        super().__init__(n_symbols)
        self.period = period
        self.columns = [f"sma_{period}"]
        self.lookback = period - 1
        self.count = np.zeros(n_symbols, np.int64)
        self.window = np.zeros((n_symbols, period))
        self.total = np.zeros(n_symbols)

    def update(self, sym, o, h, l, c, v, out):
        _sma_kernel(sym, c, self.period, self.count, self.window, self.total, out[0])


# -- RSI (Wilder) -------------------------------------------------------------------------
@numba.jit(**JIT)
def _rsi_kernel(sym, x, period, count, prev, gain, loss, out):
    n_ev = sym.shape[0]
    i = 0
    while i < n_ev:
        s = sym[i]
        n, p, g_avg, l_avg = count[s], prev[s], gain[s], loss[s]
        while i < n_ev and sym[i] == s:
            out[i] = NAN
            if n == 0:                     # n: changes seen before this bar
                p = x[i]
                n += 1
                i += 1
                continue
            d = x[i] - p
            p = x[i]
            g = d if d > 0 else 0.0
            lo = -d if d < 0 else 0.0
            if n <= period:                # summing changes 1..period, then averaging
                g_avg += g
                l_avg += lo
                if n == period:
                    l_avg /= period
                    g_avg /= period
            else:                          # Wilder's smoothing, in TA-Lib's order of operations
                l_avg *= period - 1
                g_avg *= period - 1
                l_avg += lo
                g_avg += g
                l_avg /= period
                g_avg /= period
            if n >= period:
                total = g_avg + l_avg
                out[i] = 100.0 * (g_avg / total) if not _is_zero(total) else 0.0
            n += 1
            i += 1
        count[s], prev[s], gain[s], loss[s] = n, p, g_avg, l_avg


class RSI(Indicator):
    def __init__(self, n_symbols: int, period: int):
        super().__init__(n_symbols)
        self.period = period
        self.columns = [f"rsi_{period}"]
        self.lookback = period
        self.count = np.zeros(n_symbols, np.int64)
        self.prev = np.zeros(n_symbols)
        self.gain = np.zeros(n_symbols)
        self.loss = np.zeros(n_symbols)

    def update(self, sym, o, h, l, c, v, out):
        _rsi_kernel(sym, c, self.period, self.count, self.prev, self.gain, self.loss, out[0])


# -- the engine ---------------------------------------------------------------------------
INDICATORS: dict[str, type] = {"ema": EMA, "sma": SMA, "rsi": RSI}


class Engine:
    """Every configured indicator for ``n_symbols`` symbols; ``update`` takes a
    batch of bar events and returns the feature matrix (events x columns)."""

    def __init__(self, n_symbols: int, specs: list[tuple[str, tuple]]):
        self.indicators = [INDICATORS[kind](n_symbols, *params) for kind, params in specs]
        self.columns = [c for ind in self.indicators for c in ind.columns]
        self.lookback = max((ind.lookback for ind in self.indicators), default=0)

    def update(self, sym: np.ndarray, o, h, l, c, v) -> np.ndarray:
        sym = np.ascontiguousarray(sym, dtype=np.int64)
        arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (o, h, l, c, v)]
        out = np.empty((len(self.columns), len(sym)))
        col = 0
        for ind in self.indicators:
            k = len(ind.columns)
            ind.update(sym, *arrays, out[col:col + k])
            col += k
        return out.T
