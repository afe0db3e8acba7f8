"""Benchmark: the incremental indicator engine (``models/ta.py``) per update
against talipp and against recomputing with pandas, and its batch path against TA-Lib.

Indicators
    The default configuration's parameter sets (``pipeline.config.IndicatorsConfig``:
    ema 12 and 26, sma 20, rsi 14, macd 12/26/9, bbands 20/2, atr 14, stoch 14/3/3,
    vwap 20, volatility 20, volume_z 20, obv), restricted to the kinds
    ``models.ta.INDICATORS`` has when the benchmark runs. Each comparison uses
    the kinds both sides have, and our engine is timed again with exactly that
    set: talipp has no rolling volatility of log returns or volume z-score (and
    its closest to our rolling VWAP is VWMA, close x volume over the window; its
    Stoch is fast %K with a %D, one smoothing fewer than TA-Lib's slow stochastic);
    TA-Lib has no VWAP, volatility or volume z-score function. pandas does all.

Data
    The 5-minute BTC-USDT candles in ``shared/data/candles`` (about 120k bars).
    Symbol ``s`` of ``N`` is the same series starting ``s * stride`` bars later,
    so the N symbols are N different stretches of real market data. If the file
    is absent, a seeded geometric random walk of the same length is used instead
    and the output says so.

Per update (live): N = 1, 100, 1000 symbols, one step = one new bar for every symbol
    ours    one ``Engine.update`` call per step with N events (symbol ids and
            five arrays of N floats, as an indicator shard makes them when
            the bars of all its symbols close together). Warm-up: the first
            ``--window`` bars of every symbol in one call, which also makes
            numba compile (or load its cache), outside the clock. Timed:
            ``--repeats`` blocks of steps; the figure is the median block.
    talipp  per symbol one talipp 2.x object per indicator, ``.add(value)`` per
            step (a float, or an ``OHLCV`` for ATR/Stoch/OBV/VWMA). Warm-up:
            the engine's lookback + 1 bars, so every indicator is past its
            warm-up, outside the clock. The floats and OHLCV objects are built
            outside the clock too (in talipp's favour). talipp keeps every
            input and output in lists; nothing is purged during the run.
    pandas  the naive approach: per step and symbol, slice the trailing
            ``--window`` bars of that symbol's DataFrame and recompute every
            indicator with pandas (``ewm``, ``rolling``, ``diff``, ``cumsum``),
            keeping the last value. Over a window, recursive indicators (EMA,
            RSI, ATR, OBV) are approximations of the full-history value; the
            cost is what is measured.
    The peers run until ``--budget`` seconds have passed (at most the data
    prepared): talipp whole steps (at least one), pandas symbol-updates in step
    order, stopping possibly within a step (its cost per symbol does not depend
    on N; at 1000 symbols one step takes seconds).
    Figures are ns per symbol-update (one symbol, one bar, every indicator of
    the set); a ratio is peer ns / our ns: how many times faster ours is.

Batch
    All bars of the file as the events of one symbol: ``Engine(1, specs).update``
    (a fresh engine per repeat, compile excluded by a call on a short slice first)
    against the TA-Lib functions of the same indicators on the same float64
    arrays, alternating, 5 x ``--repeats`` runs each. The figure is the fastest run
    of each (a run takes milliseconds; on a shared machine other work only ever
    adds to it, and the median moves by 20-30 % from run to run); the medians are
    in the JSON too. The ratio is our ms / TA-Lib's ms (aim: at most 2). Each
    TA-Lib output is also checked against our columns (after warm-up, to 1e-9
    relative) and the count printed. The same is then timed one indicator at a
    time (JSON ``per_indicator``, and the slowest printed): where the time goes.

Aims (issue 4): at 100 symbols at least 50x faster per update than talipp, and
the batch path within 2x of TA-Lib. On a shared 2-core machine every figure
depends on what else runs; the JSON records the load average before and after.

Usage::

    python3 bench/indicators.py [--quick] [--json OUT.json] [--symbols 1 100 1000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import common
from models.ta import INDICATORS, Engine
from pipeline.config import IndicatorsConfig, indicator_specs

FIELDS = ("open", "high", "low", "close", "volume")
Spec = tuple[str, tuple]
JSON_NOTE = ("per_update: ns per symbol-update; ratio_X = X_ns / ours_ns_X_set "
             "(times faster than X, each on the indicators both have); "
             "batch.ratio = ours_ms / talib_ms")

clock = time.perf_counter_ns


# -- data ----------------------------------------------------------------------
def load_candles(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """OHLCV float64 arrays of the file, or a seeded random walk if it is absent."""
    if path.exists():
        import pandas as pd
        df = pd.read_csv(path, usecols=list(FIELDS))
        return {f: np.ascontiguousarray(df[f].to_numpy(np.float64)) for f in FIELDS}, str(path)
    return common.random_walk(120_000, path)


def symbol_rows(base: dict[str, np.ndarray], n_symbols: int, rows: int) -> dict[str, np.ndarray]:
    """Time-major (rows x symbols) arrays: symbol s is the base series from s*stride on,
    so row t (one bar of every symbol) is contiguous, as a live batch of closes."""
    total = len(base["close"])
    if rows > total:
        raise ValueError(f"need {rows} bars per symbol, the data has {total}")
    stride = (total - rows) // max(n_symbols - 1, 1) if n_symbols > 1 else 0
    idx = (np.arange(n_symbols) * stride)[None, :] + np.arange(rows)[:, None]
    return {f: np.ascontiguousarray(base[f][idx]) for f in FIELDS}


# -- specs ---------------------------------------------------------------------
def engine_specs() -> tuple[list[Spec], list[str]]:
    """The default configuration's specs whose kind the engine has (and accepts)."""
    specs, notes = [], []
    for kind, params in indicator_specs(IndicatorsConfig()):
        if kind not in INDICATORS:
            notes.append(f"{kind}: not in models.ta.INDICATORS yet")
            continue
        try:
            Engine(1, [(kind, params)])
        except Exception as e:  # a kind whose signature differs from the config's
            notes.append(f"{kind}{params}: Engine rejects it ({type(e).__name__}: {e})")
            continue
        specs.append((kind, params))
    return specs, notes


def spec_name(spec: Spec) -> str:
    kind, params = spec
    return "_".join([kind] + [str(int(p)) if float(p).is_integer() else str(p) for p in params])


# -- talipp --------------------------------------------------------------------
def _talipp_makers() -> dict[str, Callable[[tuple], tuple[Any, bool]]]:
    """kind -> params -> (indicator object, takes OHLCV rather than a close)."""
    from talipp.indicators import ATR, BB, EMA, MACD, OBV, RSI, SMA, VWMA, Stoch
    return {
        "ema": lambda p: (EMA(int(p[0])), False),
        "sma": lambda p: (SMA(int(p[0])), False),
        "rsi": lambda p: (RSI(int(p[0])), False),
        "macd": lambda p: (MACD(int(p[0]), int(p[1]), int(p[2])), False),
        "bbands": lambda p: (BB(int(p[0]), float(p[1])), False),
        "atr": lambda p: (ATR(int(p[0])), True),
        "stoch": lambda p: (Stoch(int(p[0]), int(p[-1])), True),
        "obv": lambda p: (OBV(), True),
        "vwap": lambda p: (VWMA(int(p[0])), True),
    }


class TalippSide:
    def __init__(self, specs: list[Spec], n_symbols: int):
        makers = _talipp_makers()
        self.per_symbol = []
        for _ in range(n_symbols):
            closes, bars = [], []
            for kind, params in specs:
                ind, ohlcv = makers[kind](params)
                (bars if ohlcv else closes).append(ind.add)
            self.per_symbol.append((closes, bars))

    @staticmethod
    def inputs(rows: dict[str, np.ndarray], first: int, stop: int) -> list[list[tuple]]:
        """Per step, per symbol: (close as a float, OHLCV object), built before timing."""
        from talipp.ohlcv import OHLCV
        out = []
        for t in range(first, stop):
            o, h, lo, c, v = (rows[f][t].tolist() for f in FIELDS)
            out.append([(c[s], OHLCV(o[s], h[s], lo[s], c[s], v[s])) for s in range(len(c))])
        return out

    def step(self, bars: list[tuple]) -> None:
        for (closes, ohlcvs), (c, bar) in zip(self.per_symbol, bars):
            for add in closes:
                add(c)
            for add in ohlcvs:
                add(bar)


# -- pandas (the naive approach) ------------------------------------------------
def _pd_ema(w, p):
    return [w["close"].ewm(span=int(p[0]), adjust=False).mean().iat[-1]]


def _pd_sma(w, p):
    return [w["close"].rolling(int(p[0])).mean().iat[-1]]


def _pd_rsi(w, p):
    d = w["close"].diff()
    a = 1.0 / int(p[0])
    g = d.clip(lower=0).ewm(alpha=a, adjust=False).mean()
    lo = (-d).clip(lower=0).ewm(alpha=a, adjust=False).mean()
    return [(100.0 * g / (g + lo)).iat[-1]]


def _pd_macd(w, p):
    c = w["close"]
    m = c.ewm(span=int(p[0]), adjust=False).mean() - c.ewm(span=int(p[1]), adjust=False).mean()
    s = m.ewm(span=int(p[2]), adjust=False).mean()
    return [m.iat[-1], s.iat[-1], (m - s).iat[-1]]


def _pd_bbands(w, p):
    r = w["close"].rolling(int(p[0]))
    mid, sd = r.mean(), r.std(ddof=0)
    k = float(p[1])
    return [(mid + k * sd).iat[-1], mid.iat[-1], (mid - k * sd).iat[-1]]


def _true_range(w):
    import pandas as pd
    pc = w["close"].shift()
    return pd.concat([w["high"] - w["low"], (w["high"] - pc).abs(), (w["low"] - pc).abs()],
                     axis=1).max(axis=1)


def _pd_atr(w, p):
    return [_true_range(w).ewm(alpha=1.0 / int(p[0]), adjust=False).mean().iat[-1]]


def _pd_stoch(w, p):
    fk, sk, sd = (int(x) for x in p) if len(p) == 3 else (int(p[0]), int(p[1]), int(p[1]))
    ll = w["low"].rolling(fk).min()
    hh = w["high"].rolling(fk).max()
    k = (100.0 * (w["close"] - ll) / (hh - ll)).rolling(sk).mean()
    return [k.iat[-1], k.rolling(sd).mean().iat[-1]]


def _pd_obv(w, p):
    return [(np.sign(w["close"].diff()).fillna(0.0) * w["volume"]).cumsum().iat[-1]]


def _pd_vwap(w, p):
    n = int(p[0]) if p else len(w)
    tp = (w["high"] + w["low"] + w["close"]) / 3.0
    return [((tp * w["volume"]).rolling(n).sum() / w["volume"].rolling(n).sum()).iat[-1]]


def _pd_volatility(w, p):
    return [np.log(w["close"]).diff().rolling(int(p[0])).std(ddof=0).iat[-1]]


def _pd_volume_z(w, p):
    r = w["volume"].rolling(int(p[0]))
    return [((w["volume"] - r.mean()) / r.std(ddof=0)).iat[-1]]


PANDAS = {"ema": _pd_ema, "sma": _pd_sma, "rsi": _pd_rsi, "macd": _pd_macd,
          "bbands": _pd_bbands, "atr": _pd_atr, "stoch": _pd_stoch, "obv": _pd_obv,
          "vwap": _pd_vwap, "volatility": _pd_volatility, "volume_z": _pd_volume_z}


class PandasSide:
    def __init__(self, specs: list[Spec], rows: dict[str, np.ndarray], first: int, window: int):
        import pandas as pd
        self.fns = [(PANDAS[kind], params) for kind, params in specs]
        self.window = window
        self.first = first                     # row of `rows` that is row 0 of the frames
        n = rows["close"].shape[1]
        self.frames = [pd.DataFrame({f: rows[f][first:, s] for f in FIELDS}) for s in range(n)]

    def items(self, first: int, stop: int) -> list[tuple[int, Any]]:
        """(row, frame) of every symbol-update of steps first..stop-1, in step order."""
        return [(t - self.first + 1, df) for t in range(first, stop) for df in self.frames]

    def update(self, item: tuple[int, Any]) -> list:
        """One symbol's new bar: recompute everything over its trailing window."""
        end, df = item
        w = df.iloc[end - self.window:end]
        return [x for fn, p in self.fns for x in fn(w, p)]


# -- TA-Lib --------------------------------------------------------------------
def _talib_calls() -> dict[str, Callable]:
    import talib
    return {
        "ema": lambda a, p: [talib.EMA(a["close"], int(p[0]))],
        "sma": lambda a, p: [talib.SMA(a["close"], int(p[0]))],
        "rsi": lambda a, p: [talib.RSI(a["close"], int(p[0]))],
        "macd": lambda a, p: list(talib.MACD(a["close"], int(p[0]), int(p[1]), int(p[2]))),
        "bbands": lambda a, p: list(talib.BBANDS(a["close"], int(p[0]), float(p[1]),
                                                 float(p[-1]), 0)),
        "atr": lambda a, p: [talib.ATR(a["high"], a["low"], a["close"], int(p[0]))],
        "stoch": lambda a, p: list(talib.STOCH(a["high"], a["low"], a["close"], int(p[0]),
                                               int(p[1]), 0, int(p[-1]), 0)),
        "obv": lambda a, p: [talib.OBV(a["close"], a["volume"])],
    }


def agreement(ours: np.ndarray, theirs: list[np.ndarray], skip: int) -> tuple[int, int]:
    """How many TA-Lib outputs equal one of our columns after warm-up (1e-9 relative)."""
    cols = [ours[skip:, j] for j in range(ours.shape[1])]
    ok = 0
    for x in theirs:
        x = x[skip:]
        if any(np.allclose(c, x, rtol=1e-9, atol=0.0, equal_nan=True) for c in cols):
            ok += 1
    return ok, len(theirs)


def _time_batch(specs: list[Spec], base: dict[str, np.ndarray], sym: np.ndarray,
                repeats: int) -> tuple[list[int], list[int], np.ndarray, list, int]:
    """ns of each run of ours and of TA-Lib (alternating), and the last outputs."""
    calls = _talib_calls()
    arrays = [base[f] for f in FIELDS]
    Engine(1, specs).update(sym[:64], *(a[:64] for a in arrays))  # compile / load the cache
    ours, theirs = [], []
    for _ in range(repeats):
        eng = Engine(1, specs)
        t0 = clock()
        out = eng.update(sym, *arrays)
        ours.append(clock() - t0)
        t0 = clock()
        ref = [x for kind, p in specs for x in calls[kind](base, p)]
        theirs.append(clock() - t0)
    return ours, theirs, out, ref, eng.lookback


def bench_batch(base: dict[str, np.ndarray], specs: list[Spec], repeats: int) -> dict:
    n = len(base["close"])
    sym = np.zeros(n, np.int64)
    ours, theirs, out, ref, lookback = _time_batch(specs, base, sym, repeats)
    ok, total = agreement(out, ref, skip=lookback + 200)
    ours_ms, talib_ms = min(ours) / 1e6, min(theirs) / 1e6
    per_indicator = {}
    for spec in specs:                      # where the time goes, one indicator at a time
        o, t, *_ = _time_batch([spec], base, sym, max(3, repeats // 3))
        per_indicator[spec_name(spec)] = {"ours_ms": round(min(o) / 1e6, 3),
                                          "talib_ms": round(min(t) / 1e6, 3),
                                          "ratio": round(min(o) / min(t), 2)}
    return {"rows": n, "ours_ms": round(ours_ms, 3), "talib_ms": round(talib_ms, 3),
            "ratio": round(ours_ms / talib_ms, 2), "repeats": repeats,
            "ours_median_ms": round(statistics.median(ours) / 1e6, 3),
            "talib_median_ms": round(statistics.median(theirs) / 1e6, 3),
            "indicators": [spec_name(s) for s in specs],
            "talib_outputs_equal_ours": f"{ok}/{total}", "per_indicator": per_indicator}


# -- per update ----------------------------------------------------------------
def time_ours(specs: list[Spec], rows: dict[str, np.ndarray], warm: int, steps: int,
              repeats: int) -> float:
    """ns per symbol-update: median over `repeats` blocks of `steps` steps."""
    n = rows["close"].shape[1]
    eng = Engine(n, specs)
    sym_w = np.tile(np.arange(n, dtype=np.int64), warm)
    eng.update(sym_w, *(rows[f][:warm].ravel() for f in FIELDS))  # time-major: live order
    sym = np.arange(n, dtype=np.int64)
    o, h, lo, c, v = (rows[f] for f in FIELDS)
    update = eng.update
    blocks = []
    t = warm
    for _ in range(repeats):
        t0 = clock()
        for i in range(t, t + steps):
            update(sym, o[i], h[i], lo[i], c[i], v[i])
        blocks.append((clock() - t0) / (steps * n))
        t += steps
    return statistics.median(blocks)


def time_budget(step: Callable[[Any], Any], items: list, budget_s: float) -> tuple[float, int]:
    """Run step(item) in order until budget_s passed (at least once): (ns per step, steps)."""
    limit = budget_s * 1e9
    t0 = clock()
    k = 0
    for item in items:
        step(item)
        k += 1
        if clock() - t0 >= limit:
            break
    return (clock() - t0) / k, k


def bench_symbols(base: dict[str, np.ndarray], n: int, specs: list[Spec], sets: dict,
                  args: argparse.Namespace, lookback: int) -> dict:
    warm = args.window                     # history before the first timed bar
    ours_steps = max(20, min(args.ours_updates // n, 20_000))
    peer_steps = max(1, min(args.peer_updates // n, 5_000))
    rows_needed = warm + max(ours_steps * args.repeats, peer_steps)
    rows = symbol_rows(base, n, rows_needed)
    res: dict[str, Any] = {"symbols": n}

    ours = {"all": time_ours(specs, rows, warm, ours_steps, args.repeats)}
    for side in ("talipp", "pandas"):
        key = tuple(sets[side])
        if key != tuple(specs) and key:
            ours[side] = time_ours(sets[side], rows, warm, ours_steps, args.repeats)
        else:
            ours[side] = ours["all"]
    res["ours_ns"] = round(ours["all"], 1)
    res["ours_updates"] = ours_steps * args.repeats * n

    if sets["talipp"]:
        side = TalippSide(sets["talipp"], n)
        for bars in side.inputs(rows, warm - lookback - 1, warm):
            side.step(bars)
        inputs = side.inputs(rows, warm, warm + peer_steps)
        ns, k = time_budget(side.step, inputs, args.budget)
        res.update(talipp_ns=round(ns / n, 1), talipp_updates=k * n,
                   ours_ns_talipp_set=round(ours["talipp"], 1),
                   ratio_talipp=round(ns / n / ours["talipp"], 1))
    if sets["pandas"]:
        side = PandasSide(sets["pandas"], rows, warm - args.window, args.window)
        items = side.items(warm, warm + peer_steps)
        side.update(items[0])               # first-call costs outside the clock
        ns, k = time_budget(side.update, items, args.budget)
        res.update(pandas_ns=round(ns, 1), pandas_updates=k,
                   ours_ns_pandas_set=round(ours["pandas"], 1),
                   ratio_pandas=round(ns / ours["pandas"], 1))
    return res


# -- output --------------------------------------------------------------------
def _ns(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if x >= 1e3:
        return f"{x / 1e3:.2f} us"
    return f"{x:.0f} ns"


def _r(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}x"


def table(per_update: list[dict]) -> str:
    head = ["symbols", "ours / update", "talipp / update", "ours (talipp set)", "vs talipp",
            "pandas / update", "vs pandas", "updates timed (ours/talipp/pandas)"]
    rows = [head]
    for r in per_update:
        rows.append([str(r["symbols"]), _ns(r["ours_ns"]), _ns(r.get("talipp_ns")),
                     _ns(r.get("ours_ns_talipp_set")), _r(r.get("ratio_talipp")),
                     _ns(r.get("pandas_ns")), _r(r.get("ratio_pandas")),
                     "/".join(f"{r[k]:,}" if k in r else "-"
                              for k in ("ours_updates", "talipp_updates", "pandas_updates"))])
    return common.table(rows, "lr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = common.parser(__doc__, "about 20 s: shorter budgets", candles=True)
    ap.add_argument("--symbols", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--window", type=int, default=200,
                    help="bars pandas recomputes over; also the warm-up history")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds per peer measurement (default 4, --quick 0.7)")
    ap.add_argument("--repeats", type=int, default=None, help="ours blocks / batch runs")
    ap.add_argument("--ours-updates", type=int, default=None,
                    help="symbol-updates per timed block of ours")
    ap.add_argument("--peer-updates", type=int, default=None,
                    help="most symbol-updates prepared for a peer")
    return common.defaults(ap.parse_args(argv), (
        ("budget", 4.0, 0.7), ("repeats", 5, 3), ("ours_updates", 300_000, 50_000),
        ("peer_updates", 100_000, 20_000)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = common.machine()
    base, source = load_candles(args.data)
    if not args.data.exists():
        print(f"  note: {source}", file=sys.stderr)
    specs, notes = engine_specs()
    if not specs:
        print("no indicator of the configuration is in models.ta.INDICATORS", file=sys.stderr)
        return 1
    talipp_kinds = set(_talipp_makers())
    talib_kinds = set(_talib_calls())
    sets = {"talipp": [s for s in specs if s[0] in talipp_kinds],
            "pandas": [s for s in specs if s[0] in PANDAS],
            "talib": [s for s in specs if s[0] in talib_kinds]}
    lookback = Engine(1, specs).lookback
    names = [spec_name(s) for s in specs]
    print(f"  indicators: {', '.join(names)}", file=sys.stderr)
    for n in notes:
        print(f"  skipped {n}", file=sys.stderr)
    for side, chosen in sets.items():
        left = [spec_name(s) for s in specs if s not in chosen]
        if left:
            print(f"  {side} lacks: {', '.join(left)} (compared without them)", file=sys.stderr)

    per_update = []
    for n in args.symbols:
        print(f"  {n} symbol(s) ...", file=sys.stderr, flush=True)
        per_update.append(bench_symbols(base, n, specs, sets, args, lookback))
    print(f"  batch, {len(base['close']):,} bars ...", file=sys.stderr, flush=True)
    batch = bench_batch(base, sets["talib"], 5 * args.repeats) if sets["talib"] else None
    load = common.finish(info)

    print(f"data: {source}")
    print(f"indicators: {', '.join(names)}")
    print("per symbol-update (one bar of one symbol through every indicator of the set); "
          "vs = peer time / ours")
    print(table(per_update))
    if batch:
        print(f"batch, {batch['rows']:,} bars, {len(batch['indicators'])} indicators "
              f"({', '.join(batch['indicators'])}): ours {batch['ours_ms']:.2f} ms, "
              f"TA-Lib {batch['talib_ms']:.2f} ms, ours / TA-Lib = {batch['ratio']:.2f} "
              f"(TA-Lib outputs equal to ours: {batch['talib_outputs_equal_ours']})")
        worst = sorted(batch["per_indicator"].items(), key=lambda kv: -kv[1]["ratio"])[:4]
        print("  one at a time, ours / TA-Lib: " + ", ".join(
            f"{k} {v['ours_ms']:.2f}/{v['talib_ms']:.2f} ms = {v['ratio']:.2f}" for k, v in worst)
            + " (the highest ratios)")
    aims = []
    at100 = next((r for r in per_update if r["symbols"] == 100), None)
    if at100 and "ratio_talipp" in at100:
        aims.append(f"100 symbols vs talipp {at100['ratio_talipp']:.1f}x (aim >= 50x: "
                    f"{'met' if at100['ratio_talipp'] >= 50 else 'MISSED'})")
    if batch:
        aims.append(f"batch {batch['ratio']:.2f}x TA-Lib's time (aim <= 2x: "
                    f"{'met' if batch['ratio'] <= 2 else 'MISSED'})")
    if aims:
        print("aims: " + "; ".join(aims))
    print(load)
    common.save(args, info, {
        "data": source, "indicators": names, "columns": Engine(1, specs).columns,
        "sets": {side: [spec_name(s) for s in chosen] for side, chosen in sets.items()},
        "skipped": notes,
        "per_update": per_update, "batch": batch, "note": JSON_NOTE})
    return 0


if __name__ == "__main__":
    common.run(main)
