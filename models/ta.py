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

The arithmetic is that of the TA-Lib C library in the ``ta-lib`` 0.8.2 wheel,
operation for operation, so the values are bit-identical to it (the tests check
to 1e-9). That build differs from the classic C sources in places, named where
they matter: explicit ``fma()`` in the EMA and Wilder (ATR) updates, a variance
on shifted sums that re-centres itself, multiplication by 1/period in RSI.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic

from pipeline.config import check_indicator, indicator_columns

NAN = math.nan
JIT = dict(nopython=True, cache=True, nogil=True)


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


# -- shared arithmetic ------------------------------------------------------------------
@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once, as C's fma(): TA-Lib's EMA and ATR updates call it
    (a hardware instruction where the CPU has one, libm's fma otherwise; same result)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return sig, codegen


# TA-Lib's VAR (this build): running sums of (x - shift) and (x - shift)^2, the shift
# being the first value seen, variance = E[d^2] - E[d]^2. When that looks cancelled
# (below 1e-6 of the mean square), a leaving square dwarfs what remains (1e6 times),
# or every 32 * period steps, it re-centres: shift = the window's mean, both sums
# recomputed over the window, and a variance under 1e-12 of the mean square is 0.
# BBANDS, volatility and volume_z run it over a ring of the last `period` values,
# each value through ``_ring_var``.
@numba.jit(inline="always", **JIT)
def _var_warm(x, shift, s1, s2):
    """Warm-up: add one value to the sums."""
    d = x - shift
    return s1 + d, s2 + d * d


@numba.jit(inline="always", **JIT)
def _var_step(x_new, x_old, shift, s1, s2, left, inv_p):
    """One full-window step: x_new enters, x_old (the oldest) leaves. Returns
    (variance, s1, s2, left, whether to re-centre now)."""
    d = x_new - shift
    s1 += d
    m1 = inv_p * s1
    s2 += d * d
    m2 = inv_p * s2
    var = m2 - m1 * m1
    leaving = x_old - shift
    leaving_sq = leaving * leaving
    s2 -= leaving_sq
    left -= 1
    recentre = inv_p * s2 * 1e-6 > var or leaving_sq > s2 * 1e6 or left == 0
    return var, s1 - leaving, s2, left, recentre


@numba.jit(inline="always", **JIT)
def _var_recentre(win, s, oldest, p, inv_p):
    """Re-centre on the window ``win[s]`` (a ring, oldest value at slot `oldest`):
    O(p), about once per 32 * p steps. Returns (variance, shift, s1, s2) with the
    oldest value already taken out of the sums, as a step does. Inlined although
    rarely run: see ``_ring_var``."""
    total = 0.0
    k = oldest
    for _ in range(p):                     # oldest to newest, as TA-Lib sums them
        total += win[s, k]
        k = k + 1 if k + 1 < p else 0
    shift = total * inv_p
    s1 = 0.0
    s2 = 0.0
    for _ in range(p):
        d = win[s, k] - shift
        s1 += d
        s2 += d * d
        k = k + 1 if k + 1 < p else 0
    m1 = inv_p * s1
    m2 = inv_p * s2
    var = m2 - m1 * m1
    if not var >= m2 * 1e-12:
        var = 0.0
    leaving = win[s, oldest] - shift
    return var, shift, s1 - leaving, s2 - leaving * leaving


@numba.jit(inline="always", **JIT)
def _ring_var(win, s, slot, j, x, p, inv_p, total, shift, s1, s2, left):
    """Put x, value j (from 0) of symbol s's series, in the ring ``win[s]`` of its last
    `p` values at `slot` and advance VAR and a running total (TA-Lib's SMA) by it:
    warm-up while j < p - 1, then a step, re-centring when it asks to (``left``
    starting again at 32 * p). Returns (std, wsum, total, shift, s1, s2, left, slot
    for the next value): std = sqrt(VAR) and wsum = the sum of the window with x in
    (the SMA is wsum / p; `total` has the oldest value already dropped, TA-Lib's
    order), both NaN during the warm-up, so that values computed from them are NaN
    there.

    Inlined, as everything it calls: an array passed to an inlined helper costs a
    reference-count increment and decrement per event unless numba can prune them,
    which it cannot with a call (which might raise) between them; so the kernels'
    per-event loop has no call, not even the rare ``_var_recentre``."""
    oldest = slot + 1 if slot + 1 < p else 0
    win[s, slot] = x
    total += x
    if j == 0:
        shift = x
    if j < p - 1:
        s1, s2 = _var_warm(x, shift, s1, s2)
        std = NAN
        wsum = NAN
    else:
        var, s1, s2, left, recentre = _var_step(x, win[s, oldest], shift, s1, s2, left,
                                                inv_p)
        if recentre:
            var, shift, s1, s2 = _var_recentre(win, s, oldest, p, inv_p)
            left = 32 * p
        std = math.sqrt(var)
        wsum = total
        total -= win[s, oldest]
    return std, wsum, total, shift, s1, s2, left, oldest


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
                e = _fma(x[i] - e, k, e)   # TA-Lib: fma(x - ema, k, ema)
                out[i] = e
            i += 1
        count[s], acc[s], ema[s] = cnt, a, e


class EMA(Indicator):
    def __init__(self, n_symbols: int, period: int):
        super().__init__(n_symbols)
        check_indicator("ema", (period,))
        self.period = int(period)
        self.columns = indicator_columns("ema", (period,))
        self.lookback = self.period - 1
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
        slot = cnt % period                # the ring holds the last `period` values
        while i < n and sym[i] == s:
            window[s, slot] = x[i]
            tot += x[i]
            slot += 1
            if slot == period:
                slot = 0
            if cnt >= period - 1:          # TA-Lib's order: add, take the mean, drop the oldest
                out[i] = tot / period
                tot -= window[s, slot]
            else:
                out[i] = NAN
            cnt += 1
            i += 1
        count[s], total[s] = cnt, tot


class SMA(Indicator):
    def __init__(self, n_symbols: int, period: int):
        super().__init__(n_symbols)
        check_indicator("sma", (period,))
        self.period = int(period)
        self.columns = indicator_columns("sma", (period,))
        self.lookback = self.period - 1
        self.count = np.zeros(n_symbols, np.int64)
        self.window = np.zeros((n_symbols, self.period))
        self.total = np.zeros(n_symbols)

    def update(self, sym, o, h, l, c, v, out):
        _sma_kernel(sym, c, self.period, self.count, self.window, self.total, out[0])


# -- RSI (Wilder) -------------------------------------------------------------------------
@numba.jit(**JIT)
def _rsi_kernel(sym, x, period, count, prev, gain, loss, out):
    inv_p = 1.0 / period
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
            g = d if 0.0 < d else 0.0
            lo = g - d                     # TA-Lib's form of max(-d, 0)
            if n <= period:                # summing changes 1..period, then averaging
                g_avg += g
                l_avg += lo
                if n == period:
                    g_avg *= inv_p
                    l_avg *= inv_p
            else:                          # Wilder's smoothing, in TA-Lib's order of operations
                g_avg = (g_avg * (period - 1) + g) * inv_p
                l_avg = (lo + l_avg * (period - 1)) * inv_p
            if n >= period:
                total = l_avg + g_avg
                out[i] = g_avg / total * 100.0 if total > 0.0 else 0.0
            n += 1
            i += 1
        count[s], prev[s], gain[s], loss[s] = n, p, g_avg, l_avg


class RSI(Indicator):
    def __init__(self, n_symbols: int, period: int):
        super().__init__(n_symbols)
        check_indicator("rsi", (period,))
        self.period = int(period)
        self.columns = indicator_columns("rsi", (period,))
        self.lookback = self.period
        self.count = np.zeros(n_symbols, np.int64)
        self.prev = np.zeros(n_symbols)
        self.gain = np.zeros(n_symbols)
        self.loss = np.zeros(n_symbols)

    def update(self, sym, o, h, l, c, v, out):
        _rsi_kernel(sym, c, self.period, self.count, self.prev, self.gain, self.loss, out[0])


# -- MACD -------------------------------------------------------------------------------
@numba.jit(**JIT)
def _macd_kernel(sym, x, fast, slow, signal, count, fast_acc, slow_acc, fast_ema, slow_ema,
                 sig_acc, sig_ema, out_macd, out_sig, out_hist):
    kf = 2.0 / (fast + 1)
    ks = 2.0 / (slow + 1)
    kg = 2.0 / (signal + 1)
    first_fast = slow - fast               # TA-Lib starts both EMAs at index slow-1
    n_ev = sym.shape[0]
    i = 0
    while i < n_ev:
        s = sym[i]
        t, fa, sa, fe, se, ga, ge = (count[s], fast_acc[s], slow_acc[s], fast_ema[s],
                                     slow_ema[s], sig_acc[s], sig_ema[s])
        while i < n_ev and sym[i] == s:    # t: index of this bar in the symbol's series
            xi = x[i]
            out_macd[i] = NAN
            out_sig[i] = NAN
            out_hist[i] = NAN
            if t < slow - 1:
                sa += xi
                if t >= first_fast:
                    fa += xi
            else:
                if t == slow - 1:          # seeds: SMA of the last `slow` / last `fast` closes
                    sa += xi
                    fa += xi
                    se = sa / slow
                    fe = fa / fast
                else:
                    se = _fma(xi - se, ks, se)
                    fe = _fma(xi - fe, kf, fe)
                m = fe - se
                j = t - (slow - 1)         # index in the MACD series
                if j < signal - 1:
                    ga += m
                else:
                    if j == signal - 1:    # signal seeded with the SMA of the first `signal` MACDs
                        ga += m
                        ge = ga / signal
                    else:
                        ge = _fma(m - ge, kg, ge)
                    out_macd[i] = m
                    out_sig[i] = ge
                    out_hist[i] = m - ge
            t += 1
            i += 1
        count[s], fast_acc[s], slow_acc[s], fast_ema[s], slow_ema[s], sig_acc[s], sig_ema[s] = (
            t, fa, sa, fe, se, ga, ge)


class MACD(Indicator):
    """MACD line, signal and histogram, as TA-Lib's MACD (EMA moving averages).

    TA-Lib quirks kept: both EMAs start at index slow-1, so the fast EMA is seeded with
    the SMA of closes [slow-fast .. slow-1] (not of the first `fast` closes); the signal
    EMA is seeded with the SMA of the first `signal` MACD values; all three columns are
    NaN before index slow-1 + signal-1 (33 for 12/26/9), the MACD line included. As in
    TA-Lib, a slow period shorter than the fast one is swapped (the column names keep
    the configured order)."""

    def __init__(self, n_symbols: int, fast: int = 12, slow: int = 26, signal: int = 9):
        super().__init__(n_symbols)
        check_indicator("macd", (fast, slow, signal))
        self.columns = indicator_columns("macd", (fast, slow, signal))
        if slow < fast:
            fast, slow = slow, fast
        self.fast, self.slow, self.signal = int(fast), int(slow), int(signal)
        self.lookback = self.slow - 1 + self.signal - 1
        self.count = np.zeros(n_symbols, np.int64)
        (self.fast_acc, self.slow_acc, self.fast_ema, self.slow_ema,
         self.sig_acc, self.sig_ema) = np.zeros((6, n_symbols))

    def update(self, sym, o, h, l, c, v, out):
        _macd_kernel(sym, c, self.fast, self.slow, self.signal, self.count, self.fast_acc,
                     self.slow_acc, self.fast_ema, self.slow_ema, self.sig_acc, self.sig_ema,
                     out[0], out[1], out[2])


# -- Bollinger bands --------------------------------------------------------------------
@numba.jit(**JIT)
def _bbands_kernel(sym, x, period, nbdev, count, window, total, shift, sum1, sum2, left,
                   out_up, out_mid, out_low):
    inv_p = 1.0 / period
    n_ev = sym.shape[0]
    i = 0
    while i < n_ev:
        s = sym[i]
        t, tot, sh, s1, s2, lft = count[s], total[s], shift[s], sum1[s], sum2[s], left[s]
        slot = t % period                  # the ring holds the last `period` closes
        while i < n_ev and sym[i] == s:
            std, wsum, tot, sh, s1, s2, lft, slot = _ring_var(window, s, slot, t, x[i], period,
                                                             inv_p, tot, sh, s1, s2, lft)
            mid = wsum / period            # NaN, as std, during the warm-up
            dev = std * nbdev
            out_up[i] = dev + mid
            out_mid[i] = mid
            out_low[i] = mid - dev
            t += 1
            i += 1
        count[s], total[s], shift[s], sum1[s], sum2[s], left[s] = t, tot, sh, s1, s2, lft


class BBANDS(Indicator):
    """Bollinger bands: SMA middle band +- nbdev population standard deviations, as
    TA-Lib's BBANDS with matype 0 and nbdevup = nbdevdn: its SMA for the middle, its
    STDDEV (the square root of its VAR, see the notes above ``_var_warm``) for
    the width."""

    def __init__(self, n_symbols: int, period: int = 20, nbdev: float = 2.0):
        super().__init__(n_symbols)
        check_indicator("bbands", (period, nbdev))
        self.period, self.nbdev = int(period), float(nbdev)
        self.columns = indicator_columns("bbands", (period, nbdev))
        self.lookback = self.period - 1
        self.count = np.zeros(n_symbols, np.int64)
        self.window = np.zeros((n_symbols, self.period))
        self.total, self.shift, self.sum1, self.sum2 = np.zeros((4, n_symbols))
        self.left = np.full(n_symbols, 32 * self.period, np.int64)

    def update(self, sym, o, h, l, c, v, out):
        _bbands_kernel(sym, c, self.period, self.nbdev, self.count, self.window, self.total,
                       self.shift, self.sum1, self.sum2, self.left, out[0], out[1], out[2])


# -- ATR (Wilder) -----------------------------------------------------------------------
@numba.jit(**JIT)
def _atr_kernel(sym, h, l, c, period, count, prev_close, atr, out):
    decay = (period - 1.0) / period
    weight = 1.0 - decay
    n_ev = sym.shape[0]
    i = 0
    while i < n_ev:
        s = sym[i]
        t, pc, a = count[s], prev_close[s], atr[s]
        while i < n_ev and sym[i] == s:
            hi, lo = h[i], l[i]
            tr = hi - lo                   # TA-Lib's TRANGE, in its order
            d = abs(pc - hi)
            if d > tr:
                tr = d
            d = abs(pc - lo)
            if d > tr:
                tr = d
            if t > period:                 # Wilder's smoothing as this TA-Lib computes it
                a = _fma(decay, a, tr * weight)
                out[i] = a
            else:
                out[i] = NAN
                if t > 0:                  # true range needs the previous close: from bar 1
                    a += tr                # summing the first `period` TRs ...
                    if t == period:
                        a /= period        # ... seed = their SMA
                        out[i] = a
            pc = c[i]
            t += 1
            i += 1
        count[s], prev_close[s], atr[s] = t, pc, a


class ATR(Indicator):
    """Average true range as TA-Lib's ATR: true range from bar 1, seeded with the SMA
    of the first `period` true ranges, then Wilder's smoothing, which this TA-Lib
    computes as fma((p-1)/p, atr, tr * (1 - (p-1)/p)); first value at index `period`."""

    def __init__(self, n_symbols: int, period: int = 14):
        super().__init__(n_symbols)
        check_indicator("atr", (period,))
        self.period = int(period)
        self.columns = indicator_columns("atr", (period,))
        self.lookback = self.period
        self.count = np.zeros(n_symbols, np.int64)
        self.prev_close = np.zeros(n_symbols)
        self.atr = np.zeros(n_symbols)

    def update(self, sym, o, h, l, c, v, out):
        _atr_kernel(sym, h, l, c, self.period, self.count, self.prev_close, self.atr, out[0])


# -- Stochastic -------------------------------------------------------------------------
@numba.jit(**JIT)
def _stoch_kernel(sym, h, l, c, fastk, slowk, slowd, count, hi_val, hi_idx, lo_val, lo_idx,
                  win_h, win_l, k_sum, win_k, d_sum, win_d, out_k, out_d):
    n_ev = sym.shape[0]
    i = 0
    while i < n_ev:
        s = sym[i]
        t, hv, hx, lv, lx, ks, ds = (count[s], hi_val[s], hi_idx[s], lo_val[s], lo_idx[s],
                                     k_sum[s], d_sum[s])
        # ring slots: last `fastk` highs/lows, last `slowk` fast %K, last `slowd` slow %K
        hslot = t % fastk
        jk = t - (fastk - 1)               # index of this bar's fast %K
        kslot = jk % slowk if jk > 0 else 0
        jd = jk - (slowk - 1)              # index of this bar's slow %K
        dslot = jd % slowd if jd > 0 else 0
        while i < n_ev and sym[i] == s:
            out_k[i] = NAN
            out_d[i] = NAN
            win_h[s, hslot] = h[i]
            win_l[s, hslot] = l[i]
            hslot = hslot + 1 if hslot + 1 < fastk else 0      # now the oldest of the window
            if jk >= 0:
                # rolling extremes as TA-Lib: keep the extreme and its index; rescan the
                # window only when that index has left it (amortised O(1))
                first = t - fastk + 1
                if lx < first:
                    lx, lv = first, win_l[s, hslot]
                    k = hslot
                    for j in range(first + 1, t + 1):
                        k = k + 1 if k + 1 < fastk else 0
                        if win_l[s, k] < lv:
                            lx, lv = j, win_l[s, k]
                elif l[i] <= lv:
                    lx, lv = t, l[i]
                if hx < first:
                    hx, hv = first, win_h[s, hslot]
                    k = hslot
                    for j in range(first + 1, t + 1):
                        k = k + 1 if k + 1 < fastk else 0
                        if win_h[s, k] > hv:
                            hx, hv = j, win_h[s, k]
                elif h[i] >= hv:
                    hx, hv = t, h[i]
                # fast %K, TA-Lib's order; 0 when the range is nil (relative to the prices)
                rng = hv - lv
                if (abs(hv) + abs(lv)) * 1e-14 < abs(rng):
                    fk = (c[i] - lv) / rng * 100.0
                else:
                    fk = 0.0
                # slow %K: SMA(slowk) of fast %K, TA-Lib's order (add, mean, drop oldest)
                win_k[s, kslot] = fk
                kslot = kslot + 1 if kslot + 1 < slowk else 0
                ks += fk
                if jd >= 0:
                    sk = ks / slowk
                    ks -= win_k[s, kslot]
                    # slow %D: SMA(slowd) of slow %K
                    win_d[s, dslot] = sk
                    dslot = dslot + 1 if dslot + 1 < slowd else 0
                    ds += sk
                    if jd >= slowd - 1:
                        out_k[i] = sk      # TA-Lib emits %K only once %D is ready too
                        out_d[i] = ds / slowd
                        ds -= win_d[s, dslot]
            t += 1
            jk += 1
            jd += 1
            i += 1
        count[s], hi_val[s], hi_idx[s], lo_val[s], lo_idx[s], k_sum[s], d_sum[s] = (
            t, hv, hx, lv, lx, ks, ds)


class STOCH(Indicator):
    """Slow stochastic as TA-Lib's STOCH with SMA smoothing (matype 0 for both).

    Columns ``stoch_k_{fastk}_{slowk}`` (slow %K: its values depend on those two
    only) and ``stoch_d_{fastk}_{slowk}_{slowd}`` (slow %D). As TA-Lib, both are NaN
    before index fastk + slowk + slowd - 3 (%K waits for %D), and fast %K is 0 when
    the window's highest high equals its lowest low (to 1e-14 of the prices). Two
    stoch sets with the same fastk and slowk would both name their %K column
    ``stoch_k_{fastk}_{slowk}``: the engine refuses duplicate column names."""

    def __init__(self, n_symbols: int, fastk: int = 14, slowk: int = 3, slowd: int = 3):
        super().__init__(n_symbols)
        check_indicator("stoch", (fastk, slowk, slowd))
        self.fastk, self.slowk, self.slowd = int(fastk), int(slowk), int(slowd)
        self.columns = indicator_columns("stoch", (fastk, slowk, slowd))
        self.lookback = self.fastk - 1 + self.slowk - 1 + self.slowd - 1
        self.count = np.zeros(n_symbols, np.int64)
        self.hi_val = np.zeros(n_symbols)
        self.lo_val = np.zeros(n_symbols)
        self.hi_idx = np.full(n_symbols, -1, np.int64)
        self.lo_idx = np.full(n_symbols, -1, np.int64)
        self.win_h = np.zeros((n_symbols, self.fastk))
        self.win_l = np.zeros((n_symbols, self.fastk))
        self.k_sum = np.zeros(n_symbols)
        self.win_k = np.zeros((n_symbols, self.slowk))
        self.d_sum = np.zeros(n_symbols)
        self.win_d = np.zeros((n_symbols, self.slowd))

    def update(self, sym, o, h, l, c, v, out):
        _stoch_kernel(sym, h, l, c, self.fastk, self.slowk, self.slowd, self.count,
                      self.hi_val, self.hi_idx, self.lo_val, self.lo_idx, self.win_h,
                      self.win_l, self.k_sum, self.win_k, self.d_sum, self.win_d,
                      out[0], out[1])


# -- OBV --------------------------------------------------------------------------------
@numba.jit(**JIT)
def _obv_kernel(sym, c, vol, count, prev_close, obv, out):
    n_ev = sym.shape[0]
    i = 0
    while i < n_ev:
        s = sym[i]
        t, pc, ob = count[s], prev_close[s], obv[s]
        while i < n_ev and sym[i] == s:
            ci = c[i]
            if t == 0:
                ob = vol[i]                # TA-Lib starts at the first bar's volume
            else:                          # +v up, -v down, unchanged flat; branch-free
                ob += vol[i] * (np.float64(ci > pc) - np.float64(ci < pc))
            out[i] = ob
            pc = ci
            t += 1
            i += 1
        count[s], prev_close[s], obv[s] = t, pc, ob


class OBV(Indicator):
    """On-balance volume as TA-Lib's OBV: starts at the first bar's volume (valid from
    index 0); a bar whose close equals the previous one leaves it unchanged."""

    def __init__(self, n_symbols: int):
        super().__init__(n_symbols)
        self.columns = indicator_columns("obv", ())
        self.lookback = 0
        self.count = np.zeros(n_symbols, np.int64)
        self.prev_close = np.zeros(n_symbols)
        self.obv = np.zeros(n_symbols)

    def update(self, sym, o, h, l, c, v, out):
        _obv_kernel(sym, c, v, self.count, self.prev_close, self.obv, out[0])


# -- rolling VWAP -----------------------------------------------------------------------
@numba.jit(inline="always", **JIT)
def _two_sum(s, c, x):
    """Add x to the compensated sum (s, c): Knuth's TwoSum gives the rounding error of
    s + x exactly, kept in c, so s + c stays the exact running total (to the rounding
    of c) however many values went in and out. Branch-free."""
    t = s + x
    bp = t - s
    c += (s - (t - bp)) + (x - bp)
    return t, c


@numba.jit(**JIT)
def _vwap_kernel(sym, h, l, c, vol, period, count, win_pv, win_v, pv_sum, pv_comp,
                 v_sum, v_comp, nonzero, out):
    n_ev = sym.shape[0]
    i = 0
    while i < n_ev:
        s = sym[i]
        t, ps, pc, vs, vc, nz = (count[s], pv_sum[s], pv_comp[s], v_sum[s], v_comp[s],
                                 nonzero[s])
        while i < n_ev and sym[i] == s:
            slot = t % period
            if t >= period:                # the bar `period` back leaves the window
                ps, pc = _two_sum(ps, pc, -win_pv[s, slot])
                vs, vc = _two_sum(vs, vc, -win_v[s, slot])
                if win_v[s, slot] != 0.0:
                    nz -= 1
            vi = vol[i]
            pv = (h[i] + l[i] + c[i]) / 3.0 * vi
            win_pv[s, slot] = pv
            win_v[s, slot] = vi
            ps, pc = _two_sum(ps, pc, pv)
            vs, vc = _two_sum(vs, vc, vi)
            if vi != 0.0:
                nz += 1
            if t >= period - 1 and nz > 0:
                out[i] = (ps + pc) / (vs + vc)
            else:                          # warm-up, or no volume in the window
                out[i] = NAN
            t += 1
            i += 1
        count[s], pv_sum[s], pv_comp[s], v_sum[s], v_comp[s], nonzero[s] = t, ps, pc, vs, vc, nz


class VWAP(Indicator):
    """Rolling VWAP: sum(typical price * volume) / sum(volume) over the last `period`
    bars, typical price (h + l + c) / 3. No TA-Lib counterpart.

    First value at index period - 1. NaN when every bar of the window has zero
    volume (an exact count of such bars, not a float test). The two window sums are
    compensated running sums: they stay equal to the exact sums of the window (to
    the rounding of the result) however long the series, with O(1) updates."""

    def __init__(self, n_symbols: int, period: int = 20):
        super().__init__(n_symbols)
        check_indicator("vwap", (period,))
        self.period = int(period)
        self.columns = indicator_columns("vwap", (period,))
        self.lookback = self.period - 1
        self.count = np.zeros(n_symbols, np.int64)
        self.win_pv = np.zeros((n_symbols, self.period))
        self.win_v = np.zeros((n_symbols, self.period))
        self.pv_sum, self.pv_comp, self.v_sum, self.v_comp = np.zeros((4, n_symbols))
        self.nonzero = np.zeros(n_symbols, np.int64)

    def update(self, sym, o, h, l, c, v, out):
        _vwap_kernel(sym, h, l, c, v, self.period, self.count, self.win_pv, self.win_v,
                     self.pv_sum, self.pv_comp, self.v_sum, self.v_comp, self.nonzero, out[0])


# -- rolling volatility of log returns ----------------------------------------------------
@numba.jit(**JIT)
def _volatility_kernel(sym, c, period, count, prev_close, window, shift, sum1, sum2, left,
                       out):
    inv_p = 1.0 / period
    n_ev = sym.shape[0]
    i = 0
    while i < n_ev:
        s = sym[i]
        t, p, sh, s1, s2, lft = count[s], prev_close[s], shift[s], sum1[s], sum2[s], left[s]
        slot = (t - 1) % period if t > 0 else 0   # ring of the last `period` returns
        while i < n_ev and sym[i] == s:
            out[i] = NAN
            if t > 0:                      # return t - 1 enters (no SMA: total unused)
                out[i], _, _, sh, s1, s2, lft, slot = _ring_var(
                    window, s, slot, t - 1, math.log(c[i] / p), period, inv_p, 0.0, sh, s1, s2,
                    lft)
            p = c[i]
            t += 1
            i += 1
        count[s], prev_close[s], shift[s], sum1[s], sum2[s], left[s] = t, p, sh, s1, s2, lft


class Volatility(Indicator):
    """Population standard deviation of the last `period` log returns ln(c_t / c_t-1),
    first value at index `period`: talib.STDDEV(log returns, period, 1), i.e. the
    square root of TA-Lib's VAR (see the notes above ``_var_warm``) over the
    returns."""

    def __init__(self, n_symbols: int, period: int = 20):
        super().__init__(n_symbols)
        check_indicator("volatility", (period,))
        self.period = int(period)
        self.columns = indicator_columns("volatility", (period,))
        self.lookback = self.period
        self.count = np.zeros(n_symbols, np.int64)
        self.prev_close = np.zeros(n_symbols)
        self.window = np.zeros((n_symbols, self.period))
        self.shift, self.sum1, self.sum2 = np.zeros((3, n_symbols))
        self.left = np.full(n_symbols, 32 * self.period, np.int64)

    def update(self, sym, o, h, l, c, v, out):
        _volatility_kernel(sym, c, self.period, self.count, self.prev_close, self.window,
                           self.shift, self.sum1, self.sum2, self.left, out[0])


# -- volume z-score ---------------------------------------------------------------------
@numba.jit(**JIT)
def _volume_z_kernel(sym, vol, period, count, window, total, shift, sum1, sum2, left, out):
    inv_p = 1.0 / period
    n_ev = sym.shape[0]
    i = 0
    while i < n_ev:
        s = sym[i]
        t, tot, sh, s1, s2, lft = count[s], total[s], shift[s], sum1[s], sum2[s], left[s]
        slot = t % period                  # the ring holds the last `period` volumes
        while i < n_ev and sym[i] == s:
            vi = vol[i]
            std, wsum, tot, sh, s1, s2, lft, slot = _ring_var(window, s, slot, t, vi, period,
                                                             inv_p, tot, sh, s1, s2, lft)
            mean = wsum / period           # NaN, as std, during the warm-up
            out[i] = (vi - mean) / std if std != 0.0 else 0.0
            t += 1
            i += 1
        count[s], total[s], shift[s], sum1[s], sum2[s], left[s] = t, tot, sh, s1, s2, lft


class VolumeZ(Indicator):
    """Volume z-score (v - SMA(v)) / STDDEV(v) over the last `period` bars (population
    standard deviation): talib.SMA and talib.STDDEV combined; first value at index
    period - 1. Where the deviation is 0 (TA-Lib's VAR reports 0 for a variance
    below 1e-12 of the mean square, e.g. a window of equal volumes) the score is
    defined as 0: a flat volume is no surge."""

    def __init__(self, n_symbols: int, period: int = 20):
        super().__init__(n_symbols)
        check_indicator("volume_z", (period,))
        self.period = int(period)
        self.columns = indicator_columns("volume_z", (period,))
        self.lookback = self.period - 1
        self.count = np.zeros(n_symbols, np.int64)
        self.window = np.zeros((n_symbols, self.period))
        self.total, self.shift, self.sum1, self.sum2 = np.zeros((4, n_symbols))
        self.left = np.full(n_symbols, 32 * self.period, np.int64)

    def update(self, sym, o, h, l, c, v, out):
        _volume_z_kernel(sym, v, self.period, self.count, self.window, self.total,
                         self.shift, self.sum1, self.sum2, self.left, out[0])


# -- the engine ---------------------------------------------------------------------------
INDICATORS: dict[str, type] = {
    "ema": EMA, "sma": SMA, "rsi": RSI, "macd": MACD, "bbands": BBANDS, "atr": ATR,
    "stoch": STOCH, "obv": OBV, "vwap": VWAP, "volatility": Volatility, "volume_z": VolumeZ,
}


class Engine:
    """Every configured indicator for ``n_symbols`` symbols; ``update`` takes a
    batch of bar events and returns the feature matrix (events x columns)."""

    def __init__(self, n_symbols: int, specs: list[tuple[str, tuple]]):
        self.n = n_symbols
        self.indicators = [INDICATORS[kind](n_symbols, *params) for kind, params in specs]
        self.columns = [c for ind in self.indicators for c in ind.columns]
        dup = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if dup:
            raise ValueError(f"indicator columns configured twice: {', '.join(dup)}")
        self.lookback = max((ind.lookback for ind in self.indicators), default=0)

    def update(self, sym: np.ndarray, o, h, l, c, v) -> np.ndarray:
        sym = np.ascontiguousarray(sym, dtype=np.int64)
        if len(sym) and not (0 <= sym.min() and sym.max() < self.n):   # kernels index unchecked
            raise IndexError(f"symbol index outside 0..{self.n - 1}")
        arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (o, h, l, c, v)]
        out = np.empty((len(self.columns), len(sym)))
        col = 0
        for ind in self.indicators:
            k = len(ind.columns)
            ind.update(sym, *arrays, out[col:col + k])
            col += k
        return out.T
