"""The honesty of `pipeline backtest` (issue 13): walk-forward, look-ahead and warm-up.

* `walk_forward`: retrain the ensemble on each training window and trade only the
  window after it, so every trade is out of sample; the result says which model
  (registry folder and versions) traded which period.
* `check_lookahead`: perturb the data after sampled times and prove that no decision
  at or before such a time changed. Every decision is compared (each bar close's
  signal, traded or not, and each intent), not only the signals that fired.
* `check_warmup`: start the run later and show after how many bars its decisions
  and model inputs equal the full run's, against the configured warm-up.

Each check runs `pipeline.backtest.run_backtest`, the live chain, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from models.dataset import input_names, model_inputs
from models.serving import EnsembleModel
from models.ta import Engine
from models.train import TrainError, market_of, train
from pipeline.config import Config, feature_names, indicator_specs
from pipeline.errors import ConfigurationError, UserError
from pipeline.storage import read_market_rows
from shm.records import TICK_TRADE

from .backtest import MarketData, check_bars, load_data, run_backtest
from .backtest_report import BacktestResult, _iso, traded_part

MAX_REPORTED = 20          # look-aheads listed per sampled time (all are counted)


def model_window(cfg: Config) -> int:
    """Bars of history the served model needs beyond the indicators: the LSTM's window."""
    m = cfg.model
    return m.lstm_window if m.kind == "ensemble" and "lstm" in m.models else 0


def _data(paths: list[str] | MarketData, start: str | None, end: str | None) -> MarketData:
    return paths if isinstance(paths, MarketData) else load_data(paths, start, end)


def _span(data: MarketData, bar_ns: int) -> tuple[int, int]:
    """[first bar's open, last bar's end) of the data, in ns."""
    ts = data.ticks["ts_exchange_ns"]
    return int(ts[0]) // bar_ns * bar_ns, int(ts[-1]) // bar_ns * bar_ns + bar_ns


# -- walk-forward ------------------------------------------------------------------------------
@dataclass
class Window:
    """One walk-forward step: the models trained on the candles opening in
    [train_from_ns, start_ns) serve the bars opening in [start_ns, end_ns), whose
    decisions fall at their closes, after the training data ends."""
    train_from_ns: int
    start_ns: int
    end_ns: int
    registry: Path


def plan_windows(first_ns: int, end_ns: int, train_bars: int, test_bars: int, bar_ns: int) -> list[tuple]:
    """(train_from_ns, start_ns, end_ns) of consecutive test windows of ``test_bars``
    bars (the last one may be shorter), each after a rolling ``train_bars`` bars of
    training; a window needs a bar with a next price to trade at."""
    if train_bars < 1 or test_bars < 1:
        raise UserError("--train-bars and --test-bars must be at least 1")
    spans = []
    start = first_ns + train_bars * bar_ns
    while start + bar_ns < end_ns:
        spans.append((start - train_bars * bar_ns, start, min(start + test_bars * bar_ns, end_ns)))
        start += test_bars * bar_ns
    if not spans:
        raise UserError(f"the data holds {(end_ns - first_ns) // bar_ns} bars: --train-bars {train_bars} "
                        "leaves none to trade")
    return spans


def _cut(table: pa.Table, lo_ns: int, hi_ns: int) -> pa.Table:
    """The candles opening in [lo_ns, hi_ns)."""
    ms = table.column("timestamp_ms").to_numpy().astype(np.int64)
    return table.filter(pa.array((ms >= lo_ns // 10**6) & (ms < hi_ns // 10**6)))


class WalkForwardModel:
    """Serves each bar with the ensemble of its window (bars before the first window,
    warm-up that trades nothing, get the first window's). A window's ensemble also
    sees the ``warm_ns`` before its start, so a sequence member (the LSTM) has a full
    history when it starts serving; indicators need no such help, since one run plays
    the whole span. Ensembles load when first needed and go once their window is past."""

    def __init__(self, windows: list[Window], load, warm_ns: int):
        self.windows, self.load, self.warm_ns = windows, load, warm_ns
        self.starts = np.array([w.start_ns for w in windows], np.int64)
        self.live: dict[int, EnsembleModel] = {}
        self.members = list(self._model(0).members)
        self.versions: dict = {}

    def _model(self, k: int):
        if k not in self.live:
            self.live[k] = self.load(self.windows[k].registry)
        return self.live[k]

    def predict(self, ids: np.ndarray, rows: np.ndarray):
        t = rows["ts_bar_ns"].astype(np.int64)
        serving = np.maximum(np.searchsorted(self.starts, t, side="right") - 1, 0)
        out = None
        for k in range(len(self.windows)):
            lo = self.starts[k] - self.warm_ns if k else np.iinfo(np.int64).min
            feed = np.flatnonzero((t >= lo) & (serving <= k))
            if not len(feed):
                if k in self.live and (serving > k).all():
                    del self.live[k]                      # its window is past
                continue
            got = self._model(k).predict(ids[feed], rows[feed])
            if out is None:
                out = [np.zeros((len(t),) + g.shape[1:], g.dtype) for g in got]
            mine = serving[feed] == k
            for o, g in zip(out, got):
                o[feed[mine]] = g[mine]
        return tuple(out)


def walk_forward(cfg: Config, paths: list[str], train_bars: int, test_bars: int, out_dir: str | Path,
                 start: str | None = None, end: str | None = None, journal: str | None = None,
                 progress: bool = False) -> BacktestResult:
    """Train the ensemble on each rolling window of ``train_bars`` bars of the first
    file's candles (registry ``out_dir/models/window_N``) and trade the ``test_bars``
    bars after it with it; every symbol trades with it, as `pipeline start` serves one
    ensemble to all.

    The windows chain as ONE backtest over the whole span whose model changes at each
    window's start, as a pipeline that is retrained and restarted on its journal would
    run: positions, cash and indicator state carry over and equity is continuous. That
    is both simpler and more honest than backtesting each window alone: there is no
    forced close at a boundary (fees and fills a live account would not pay) and no
    indicator restart that the live pipeline never makes. The bars before the first
    window warm up without trading (``trade_from_ns``). ``result.meta["periods"]``
    says which registry and versions decided in which period and on which bars they
    were trained."""
    if cfg.model.kind != "ensemble":
        raise UserError("--walk-forward retrains the ensemble: give a config with [model] kind = 'ensemble'")
    data = _data(paths, start, end)
    bar_ns = int(round(cfg.indicators.bar_seconds * 1e9))
    check_bars(data, cfg.indicators.bar_seconds)
    source = data.files[0]["path"]
    rows = read_market_rows(source)
    if rows.kind != "candles":
        raise UserError(f"--walk-forward trains on the first --data file's candles; {source} holds trades")
    first_ns, end_ns = _span(data, bar_ns)
    windows, periods = [], []
    for k, (lo, s, e) in enumerate(plan_windows(first_ns, end_ns, train_bars, test_bars, bar_ns)):
        table = _cut(rows.table, lo, s)
        registry = Path(out_dir) / "models" / f"window_{k + 1}"
        try:
            report = train(table, cfg, registry, progress=False, source=f"{source} [{_iso(lo)}, {_iso(s)})",
                           bar_seconds=cfg.indicators.bar_seconds, market=market_of(source))
        except TrainError as err:
            raise UserError(f"walk-forward window {k + 1} (training {_iso(lo)} to {_iso(s)}): {err}") from None
        windows.append(Window(lo, s, e, registry))
        ms = table.column("timestamp_ms").to_numpy().astype(np.int64)
        periods.append({"from_ns": s + bar_ns, "to_ns": e, "registry": str(registry),
                        "model_versions": report["artifacts"], "train_from_ns": int(ms[0]) * 10**6,
                        "train_to_ns": int(ms[-1]) * 10**6 + bar_ns, "train_rows": table.num_rows,
                        "from": _iso(s + bar_ns), "to": _iso(e)})

    names, n = feature_names(cfg), len(data.symbols)

    def load(registry: Path) -> EnsembleModel:
        try:
            return EnsembleModel(registry, names, n, bar_seconds=cfg.indicators.bar_seconds, symbols=data.symbols)
        except ConfigurationError as err:
            raise UserError(f"the ensemble in {registry} cannot serve this backtest: {err}") from None

    model = WalkForwardModel(windows, load, model_window(cfg) * bar_ns)
    # the first decision traded is the first test bar's close: the bar closing at the
    # window's start is the last training bar
    last = windows[-1].end_ns
    played = replace(data, ticks=data.ticks[data.ticks["ts_exchange_ns"] < last])
    result = run_backtest(cfg, played, journal=journal, progress=progress, model=model,
                          trade_from_ns=windows[0].start_ns + bar_ns)
    result = traded_part(result, windows[0].start_ns + bar_ns)   # the figures start with trading
    result.meta["periods"] = periods
    result.meta["model_versions"] = {}
    result.meta["walk_forward"] = {"train_bars": train_bars, "test_bars": test_bars, "windows": len(windows),
                                   "training_data": source, "warm_bars": model_window(cfg),
                                   "rule": "one run, the model swapped at each window's start; "
                                           "positions and equity carry over"}
    return result


# -- look-ahead --------------------------------------------------------------------------------
def perturb_after(data: MarketData, t_ns: int, rng: np.random.Generator, bar_ns: int,
                  scale: float = 0.02) -> MarketData:
    """The data with every tick after ``t_ns`` changed: each future candle (symbol and
    bar) has its prices multiplied by one random factor (its open, high, low and close
    stay consistent) and its sizes by another (positive); times are kept, so the bars
    and the order of events are the same and only what could not be known at t differs."""
    ticks = data.ticks.copy()
    after = np.flatnonzero(ticks["ts_exchange_ns"] > t_ns)
    key = ticks["symbol_id"][after].astype(np.int64) << 40 | ticks["ts_exchange_ns"][after] // bar_ns
    _, candle = np.unique(key, return_inverse=True)
    m = int(candle.max()) + 1 if len(candle) else 0
    price = np.exp(rng.normal(0.0, scale, m))[candle]
    for col in ("price", "bid", "ask"):
        ticks[col][after] *= price
    ticks["size"][after] *= rng.uniform(0.5, 2.0, m)[candle]
    return replace(data, ticks=ticks)


def _decisions(result: BacktestResult) -> dict[str, np.ndarray]:
    return {"signal": result.signals, "intent": result.intents}


def _changed(base: BacktestResult, run: BacktestResult, t_ns: int) -> tuple[int, list[dict]]:
    """(decisions compared, those at or before ``t_ns`` that differ), byte for byte."""
    checked, found = 0, []
    for what, a in _decisions(base).items():
        b = _decisions(run)[what]
        a, b = a[a["ts_ns"] <= t_ns], b[b["ts_ns"] <= t_ns]
        checked += len(a)
        k = min(len(a), len(b))
        va = np.frombuffer(a[:k].tobytes(), f"V{a.dtype.itemsize}")
        vb = np.frombuffer(b[:k].tobytes(), f"V{b.dtype.itemsize}")
        bad = np.flatnonzero(va != vb).tolist()
        if len(a) != len(b):                          # a decision more or less: its first is reported
            bad.append(k)
        for i in bad:
            row = a[i] if i < len(a) else b[i]
            found.append({"at_ns": int(t_ns), "what": what, "ts_ns": int(row["ts_ns"]), "time": _iso(row["ts_ns"]),
                          "symbol": base.symbols[int(row["symbol_id"])],
                          "base": _row(a, i), "perturbed": _row(b, i)})
    return checked, found


def _row(rows: np.ndarray, i: int) -> dict | None:
    if i >= len(rows):
        return None
    return {name: np.asarray(rows[i][name]).tolist() for name in rows.dtype.names}


def check_lookahead(cfg: Config, paths: list[str] | MarketData, n_times: int = 5, seed: int = 0,
                    model=None, start: str | None = None, end: str | None = None) -> dict:
    """Run once, then for each of ``n_times`` bar closes t sampled at random (``seed``)
    rerun with every tick after t perturbed (`perturb_after`): any signal or intent at
    or before t that differs from the first run's is a look-ahead, reported with its
    time and symbol. ``model``: a function of the run's MarketData giving the model to
    serve (so a model that reads its data sees the perturbed data); None: [model]'s."""
    data = _data(paths, start, end)
    bar_ns = int(round(cfg.indicators.bar_seconds * 1e9))

    def run(d: MarketData) -> BacktestResult:
        return run_backtest(cfg, d, model=model(d) if model is not None else None)

    base = run(data)
    last = int(data.ticks["ts_exchange_ns"][-1])
    closes = np.unique(base.signals["ts_ns"])
    closes = closes[closes < last]                 # a time with something after it to perturb
    if not len(closes):
        raise UserError("the data closes no bar with data after it: nothing to check for look-ahead")
    rng = np.random.default_rng(seed)
    times = np.sort(rng.choice(closes, min(n_times, len(closes)), replace=False))
    checked, found, per_time = 0, [], []
    for t in times.tolist():
        n, diff = _changed(base, run(perturb_after(data, t, rng, bar_ns)), t)
        checked += n
        found += diff[:MAX_REPORTED]
        per_time.append({"t_ns": t, "time": _iso(t), "decisions": n, "changed": len(diff)})
    return {"check": "lookahead", "clean": not found, "times": per_time, "decisions_checked": checked,
            "lookaheads": found, "symbols": base.symbols,
            "rule": "every tick after t: prices times one random factor per candle, sizes times another; "
                    "each signal and intent at or before t compared byte for byte"}


# -- warm-up -----------------------------------------------------------------------------------
def _run_keeping_inputs(cfg: Config, data: MarketData, model) -> tuple[BacktestResult, np.ndarray]:
    """The run and the feature rows of every bar close."""
    kept: list[np.ndarray] = []
    result = run_backtest(cfg, data, model=model, on_features=kept.append)
    return result, np.concatenate(kept)


def _agree_after(bar_no: np.ndarray, sid: np.ndarray, ok: np.ndarray, n: int) -> int | None:
    """Bars from the start after which every row agrees, the worst symbol's; None: the
    last row disagrees (no convergence seen)."""
    worst = 0
    for s in range(n):
        mine = sid == s
        if not mine.any():
            continue
        bad = np.flatnonzero(~ok[mine])
        if len(bad) and bad[-1] == mine.sum() - 1:
            return None
        if len(bad):
            worst = max(worst, int(bar_no[mine][bad[-1]]))
    return worst


def check_warmup(cfg: Config, paths: list[str] | MarketData, offsets: tuple[int, ...] | None = None,
                 n_starts: int = 5, tol: float = 1e-6, start: str | None = None, end: str | None = None,
                 model=None) -> dict:
    """Run the whole data, then runs starting ``offsets`` bars later (None: ``n_starts``
    starts spread evenly over the first half of the data); for each, the
    number of bars after its start from which its decisions (action exactly,
    probabilities within ``tol``) and model inputs (within ``tol``, relative and
    absolute) equal the full run's at the same bars. The configured warm-up is the
    indicator engine's lookback plus the model's window; the check passes when
    every later run agrees within it. Intents are not compared: a later run starts
    flat, so its positions (and so its orders) may rightly differ."""
    data = _data(paths, start, end)
    bar_ns = int(round(cfg.indicators.bar_seconds * 1e9))
    n = len(data.symbols)
    lookback = Engine(n, indicator_specs(cfg.indicators)).lookback
    warmup = lookback + model_window(cfg)
    names = feature_names(cfg)
    inputs = input_names(names)
    full, full_rows = _run_keeping_inputs(cfg, data, model)
    first_ns, end_ns = _span(data, bar_ns)
    total = (end_ns - first_ns) // bar_ns
    if offsets is None:
        offsets = sorted({max(1, total * (i + 1) // (2 * n_starts)) for i in range(n_starts)})
    runs = []
    for off in offsets:
        t0 = first_ns + int(off) * bar_ns
        ticks = data.ticks[data.ticks["ts_exchange_ns"] >= t0]
        if not (ticks["kind"] == TICK_TRADE).any() or (end_ns - t0) // bar_ns < 2 * warmup:
            raise UserError(f"a start {off} bars in leaves fewer than twice the warm-up ({warmup} bars) "
                            f"to compare; the data holds {total} bars")
        late, late_rows = _run_keeping_inputs(cfg, replace(data, ticks=ticks), model)
        runs.append({"offset_bars": int(off), "start": _iso(t0),
                     **_compare(full, full_rows, late, late_rows, names, inputs, t0, bar_ns, tol, n)})
    agree = [r["decisions_agree_after_bars"] for r in runs] + [r["inputs_agree_after_bars"] for r in runs]
    needed = None if None in agree else max(agree)
    return {"check": "warmup", "converged": needed is not None and needed <= warmup,
            "warmup_bars": warmup, "indicator_lookback": lookback, "model_window": model_window(cfg),
            "needed_bars": needed, "tolerance": tol, "runs": runs,
            "rule": "later starts against the full run at the same bars: actions exactly, probabilities "
                    "and model inputs within the tolerance; intents not compared (positions differ)"}


def _compare(full: BacktestResult, full_rows: np.ndarray, late: BacktestResult, late_rows: np.ndarray,
             names: list[str], inputs: list[str], t0: int, bar_ns: int, tol: float, n: int) -> dict:
    """Per later run: bars after which decisions, model inputs and each indicator agree."""
    a, b = full.signals, late.signals
    ia = _index(a["ts_ns"], a["symbol_id"], b["ts_ns"], b["symbol_id"])
    a = a[ia]
    bar_no = (b["ts_ns"] - t0) // bar_ns                     # the late run's bar count at each close
    sid = b["symbol_id"].astype(np.int64)
    ok = (a["action"] == b["action"]) & (np.abs(a["probs"] - b["probs"]) <= tol).all(axis=1)
    fa, fb = full_rows, late_rows
    ja = _index(fa["ts_bar_ns"], fa["symbol_id"], fb["ts_bar_ns"], fb["symbol_id"])
    fa = fa[ja]
    fbar = (fb["ts_bar_ns"] + bar_ns - t0) // bar_ns
    fsid = fb["symbol_id"].astype(np.int64)
    xa, xb = model_inputs(fa, names), model_inputs(fb, names)
    close = np.isclose(xa, xb, rtol=tol, atol=tol, equal_nan=True)
    columns = {name: _agree_after(fbar, fsid, np.isclose(fa[name], fb[name], rtol=tol, atol=0, equal_nan=True), n)
               for name in names}
    return {"bars": int(bar_no.max()) if len(bar_no) else 0,
            "decisions_agree_after_bars": _agree_after(bar_no, sid, ok, n),
            "decisions_differing": int((~ok).sum()),
            "inputs_agree_after_bars": _agree_after(fbar, fsid, close.all(axis=1), n),
            "input_columns": {name: _agree_after(fbar, fsid, close[:, j], n) for j, name in enumerate(inputs)},
            "indicator_columns": columns}


def _index(ts_a: np.ndarray, sid_a: np.ndarray, ts_b: np.ndarray, sid_b: np.ndarray) -> np.ndarray:
    """Index into a of each (time, symbol) of b; every one of b's must be in a."""
    key_a = np.rec.fromarrays([sid_a.astype(np.int64), ts_a.astype(np.int64)])
    key_b = np.rec.fromarrays([sid_b.astype(np.int64), ts_b.astype(np.int64)])
    order = np.argsort(key_a, kind="stable")
    pos = np.searchsorted(key_a[order], key_b)
    idx = order[np.minimum(pos, len(order) - 1)]
    if len(idx) and not (key_a[idx] == key_b).all():
        raise AssertionError("a later run closed a bar the full run did not")
    return idx
