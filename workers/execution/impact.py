"""Market impact of a market order filled against a quote of unknown size.

The ticks carry no depth, so the paper broker takes a top of book of unknown size to
hold any order, at the top price moved by ``slippage_bps``: a flat cost, the same for
1 unit as for 1,000. Real fills cost more the larger the order is against what the
market trades, and the more the price moves. The square-root law (Almgren et al.,
"Direct estimation of equity market impact", 2005; Toth et al., "Anomalous price
impact and the critical nature of liquidity", 2011) says

    impact = coef x sigma_T x sqrt(Q / V_T)

for an order of Q against the volume V_T traded and the volatility sigma_T over a
horizon T. With sigma_T = sigma sqrt(T) and V_T = v T, T cancels: impact = coef x
sigma x sqrt(Q / v), with sigma the volatility of the log price per square-root
second and v the base volume traded per second. Both are measured here from the
trades seen, weighted exponentially over ``window_s`` of market time, per symbol.
``coef`` is about 0.5 to 1 on liquid markets; 0 turns the model off.

From candles (a replay plays each as four trades, open, low or high, high or low,
close) sigma is measured along that path, which is longer than close to close: the
impact is then on the high side, never the low one.
"""
from __future__ import annotations

import math

import numpy as np


class MarketImpact:
    """Per symbol: exponentially weighted variance of log returns per second and traded
    volume per second, from the trades in time order; ``bps(symbol, qty)`` the impact."""

    def __init__(self, n_symbols: int, coef: float, window_s: float):
        if not (math.isfinite(coef) and coef >= 0 and math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"impact coef must be >= 0 and window_s > 0, got {coef!r}, {window_s!r}")
        self.coef, self.tau_ns = float(coef), float(window_s) * 1e9
        self.var_rate = np.zeros(n_symbols)          # (log return)^2 per second
        self.volume_rate = np.zeros(n_symbols)       # base volume per second
        self.measured = np.zeros(n_symbols, bool)    # a rate is known (else: no impact yet)
        self.last_price = np.full(n_symbols, np.nan)
        self.last_ns = np.full(n_symbols, -1, np.int64)
        self._r2 = np.zeros(n_symbols)               # folded in once market time moves on
        self._volume = np.zeros(n_symbols)

    def on_trades(self, sid: np.ndarray, ts_ns: np.ndarray, price: np.ndarray, size: np.ndarray) -> None:
        """Valid trades (positive finite price and size) in time order per symbol."""
        if not len(sid):
            return
        order = np.argsort(sid, kind="stable")
        s, t = sid[order].astype(np.intp), ts_ns[order].astype(np.int64)
        p, q = price[order], size[order]
        logp = np.log(p)
        edge = np.empty(len(s), bool)
        edge[0] = True
        np.not_equal(s[1:], s[:-1], out=edge[1:])
        starts = np.flatnonzero(edge)
        ends = np.append(starts[1:], len(s))
        for a, b in zip(starts.tolist(), ends.tolist()):
            k = int(s[a])
            prev = self.last_price[k]
            path = logp[a:b] if math.isnan(prev) else np.concatenate(([math.log(prev)], logp[a:b]))
            self._r2[k] += float(np.square(np.diff(path)).sum())
            first = self.last_ns[k] < 0
            self._volume[k] += float(q[a + 1:b].sum() if first else q[a:b].sum())
            self.last_price[k] = p[b - 1]
            t0, t1 = int(self.last_ns[k]) if not first else int(t[a]), int(t[b - 1])
            if first:
                self.last_ns[k] = t0
            dt = t1 - t0
            if dt <= 0:
                continue                              # same time: folded in with the next move
            r2, vol = self._r2[k] / (dt / 1e9), self._volume[k] / (dt / 1e9)
            if self.measured[k]:
                w = 1.0 - math.exp(-dt / self.tau_ns)
                self.var_rate[k] += w * (r2 - self.var_rate[k])
                self.volume_rate[k] += w * (vol - self.volume_rate[k])
            else:
                self.var_rate[k], self.volume_rate[k], self.measured[k] = r2, vol, True
            self._r2[k] = self._volume[k] = 0.0
            self.last_ns[k] = t1

    def bps(self, symbol_id: int, qty: float) -> float:
        """The impact of a market order of ``qty`` (base) on ``symbol_id``, in bps."""
        k = int(symbol_id)
        if not self.coef or not self.measured[k] or self.volume_rate[k] <= 0 or not qty > 0:
            return 0.0
        return self.coef * math.sqrt(self.var_rate[k]) * math.sqrt(qty / self.volume_rate[k]) * 1e4
