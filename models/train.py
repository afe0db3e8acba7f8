"""`pipeline train`: walk-forward training of every configured model, the ensemble, a report.

Steps (all settings from ``[model]`` in the config):

1. `build_dataset`: features and down / flat / up labels over ``horizon`` bars,
   the threshold ``label_threshold`` (0 = the round-trip cost from [execution]).
2. `walk_forward` folds, purge = ``horizon`` (no training label reaches into a
   validation block). In each fold every model is fitted on the training rows
   with the fixed ``seed`` and predicts the validation rows: the out-of-fold
   (OOF) predictions. A model with ``predict_sequence`` (a sequence model with
   a ``window`` of rows) is given the window-1 rows before the block as input
   context (inputs only: features at a row use no later data; no label of those
   rows is used), and its NaN rows, if any, are left out for every model: all
   models and the ensemble are scored on the same rows.
3. The ensemble (models/ensemble.py) is fitted on all OOF predictions. Its
   per-fold figures are therefore **in-sample for its weights**: the weights
   saw those validation rows (the members did not). The report says so. With a
   soft vote over two to four members that is a handful of parameters fitted on
   thousands of rows, so the optimism is small, but it is there.
4. Every model is refitted on all rows and saved in the registry at ``out_dir``
   (``<out>/<model>/<version>/``) with its metadata; the ensemble is saved as
   ``ensemble`` with the members' names, order and versions. The report goes to
   ``<out>/report.json`` and is returned.

What the artifacts were trained on, for serving to check (models/registry.py):
``bar_seconds``, the data's median step between bars (a gap or a missing bar
does not move a median; the bootstrap passes the length it generated), and
``market``: venue, symbol and quote currency as far as the data says (the
``venue=``/``symbol=`` folders `pipeline download` and the recorder write, or a
file named ``<venue>_<BASE>-<QUOTE>_...``; None when unknown) and whether the
market is synthetic. A pipeline serves the artifacts only on bars of that length.

What the report's returns are (format_report says it above the table): every
member's per-fold figures are walk-forward out-of-sample (each fold's model saw
only rows before its validation block, less the purge); the ensemble's are
in-sample for its weights (step 3); the saved models are refitted on all rows,
so for them every row here is in-sample. On the synthetic market (the
bootstrap) the figures measure the generator the models were trained on, whose
drift regimes are made to be learnable: they say nothing about a real market.

Metrics per model and fold, on the scored validation rows:

* accuracy and log loss (scikit-learn, labels 0, 1, 2);
* ``strategy_return``: trading the model's signals after fees. The position at
  a row is the argmax class mapped down -> -1 (short), flat -> 0, up -> +1
  (``long_only``: down -> 0). It is taken at that row's close and held to the
  next row's close; the last row's signal is not traded. Every change of
  position pays ``(fee_bps + slippage_bps) / 1e4`` per unit changed (a flip
  from short to long pays twice), including entering from flat at the fold's
  first row and going flat after its last: each fold is one complete trading
  episode. Equity compounds bar by bar: ``prod((1 - cost * |change|) * (1 +
  position * bar_return)) * (1 - cost * |last position|) - 1``.
* ``buy_hold_return``: the price return over the same rows, ``close[last] /
  close[first] - 1``, without fees (the market, as usually quoted).
* ``all`` folds: accuracy and log loss over all scored rows together; the
  returns are the folds' returns compounded (the bar between two adjacent
  folds belongs to neither, for the strategy and buy-and-hold alike).

The signals are evaluated one bar at a time while the labels look ``horizon``
bars ahead: a model is scored on what trading its latest signal would have
earned, not on a return it was trained to predict.
"""
from __future__ import annotations

import difflib
import inspect
import json
import math
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from models.dataset import CLASSES, Dataset, build_dataset, walk_forward
from models.ensemble import Ensemble, log_loss
from models.registry import ENSEMBLE, MODELS, Registry, bar_text, same_bars
from pipeline.config import Config, ModelConfig
from pipeline.storage import rows_note

# model name -> its constructor parameters from the flat [model] fields; a model
# missing here is built with its own defaults
PARAMS = {
    "forest": lambda m: dict(n_estimators=m.forest_trees, max_depth=m.forest_depth,
                             min_samples_leaf=m.forest_min_leaf),
    "xgboost": lambda m: dict(n_estimators=m.xgb_rounds, max_depth=m.xgb_depth,
                              learning_rate=m.xgb_learning_rate),
    "lstm": lambda m: dict(window=m.lstm_window, units=m.lstm_units, epochs=m.lstm_epochs),
}

REPORT = "report.json"
ENSEMBLE_NOTE = ("the ensemble's weights were learned on these validation folds' predictions, "
                 "so its per-fold figures are in-sample for the weights (not for the members)")


class TrainError(ValueError):
    """A user mistake (missing file, too few rows, unknown model); printed in one line."""


# -- models -------------------------------------------------------------------------------
def model_names(cfg: Config) -> list[str]:
    """The configured models, checked against MODELS."""
    for name in cfg.model.models:
        if name not in MODELS:
            near = difflib.get_close_matches(name, list(MODELS), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise TrainError(f"{cfg.source}: model.models: unknown model '{name}' "
                             f"({hint}available: {', '.join(MODELS)})")
    return list(cfg.model.models)


def make_model(name: str, m: ModelConfig):
    params = PARAMS[name](m) if name in PARAMS else {}
    return MODELS[name](**params)


def _fit(name: str, m: ModelConfig, X: np.ndarray, y: np.ndarray, close: np.ndarray, where: str):
    """A new model fitted with the configured seed; a ValueError (data the model cannot
    take, e.g. fewer rows than a sequence model's window) becomes a one-line TrainError."""
    try:
        model = make_model(name, m)
        # a model that learns from rewards (the RL agent) also needs the prices
        extra = {"close": close} if "close" in inspect.signature(model.fit).parameters else {}
        return model.fit(X, y, seed=m.seed, **extra)
    except ValueError as e:
        raise TrainError(f"{name}, {where} ({len(X)} training rows): {e}") from None


def predict_rows(model, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), 3) probabilities for the contiguous ``rows`` of ``X``.

    A model with ``predict_sequence`` gets the ``window - 1`` rows before the first
    one as context; rows it cannot predict come back NaN."""
    rows = np.asarray(rows)
    if hasattr(model, "predict_sequence"):
        window = int(getattr(model, "window", 1) or 1)
        start = max(0, int(rows[0]) - (window - 1))
        p = np.asarray(model.predict_sequence(X[start:int(rows[-1]) + 1]), dtype=np.float64)
        p = p[rows - start]
    else:
        p = np.asarray(model.predict_proba(X[rows]), dtype=np.float64)
    if p.shape != (len(rows), 3):
        raise RuntimeError(f"{type(model).__name__} returned probabilities of shape {p.shape}, "
                           f"expected ({len(rows)}, 3)")
    return p


def load_artifact(root: str | Path, name: str, version: int | None = None):
    """(model or Ensemble, metadata) of a saved artifact, checksums verified."""
    path, meta = Registry(root).load(name, version)
    kind = meta.get("model", name)
    if kind == ENSEMBLE:
        return Ensemble.load(path), meta
    if kind not in MODELS:
        raise TrainError(f"{path}: model kind '{kind}' is not known to this build "
                         f"(known: {', '.join(MODELS)}, {ENSEMBLE})")
    return MODELS[kind].load(path), meta


# -- trading and metrics ---------------------------------------------------------------
def positions(proba: np.ndarray, long_only: bool = False) -> np.ndarray:
    """Position per row from the argmax class: down -> -1 (0 when long_only), flat -> 0, up -> +1."""
    cls = np.argmax(proba, axis=1)
    pos = np.where(cls == 2, 1.0, np.where(cls == 0, 0.0 if long_only else -1.0, 0.0))
    return pos


def strategy_return(pos: np.ndarray, close: np.ndarray, cost_per_side: float) -> tuple[float, int]:
    """(compounded return after fees, number of position changes) of holding ``pos[i]``
    from ``close[i]`` to ``close[i+1]``; flat before the first row and after the last
    (the last row's position is never held). See the module docstring."""
    pos = np.asarray(pos, dtype=np.float64)
    close = np.asarray(close, dtype=np.float64)
    if len(pos) != len(close):
        raise ValueError(f"{len(pos)} positions for {len(close)} closes")
    if len(close) < 2:
        return 0.0, 0
    held = pos[:-1]
    bar = close[1:] / close[:-1] - 1.0
    change = np.abs(np.diff(np.concatenate([[0.0], held, [0.0]])))   # entries, changes, final exit
    equity = np.prod((1.0 - cost_per_side * change[:-1]) * (1.0 + held * bar))
    equity *= 1.0 - cost_per_side * change[-1]
    return float(equity - 1.0), int(np.count_nonzero(change))


def buy_hold_return(close: np.ndarray) -> float:
    close = np.asarray(close, dtype=np.float64)
    return float(close[-1] / close[0] - 1.0) if len(close) >= 2 else 0.0


def _metrics(y: np.ndarray, p: np.ndarray, close: np.ndarray, cost: float, long_only: bool) -> dict:
    from sklearn.metrics import accuracy_score
    ret, trades = strategy_return(positions(p, long_only), close, cost)
    return {"rows": int(len(y)),
            "accuracy": float(accuracy_score(y, np.argmax(p, axis=1))),
            "log_loss": log_loss(y, p),
            "strategy_return": ret, "buy_hold_return": buy_hold_return(close), "trades": trades}


def _all_folds(y: np.ndarray, p: np.ndarray, folds: list[dict]) -> dict:
    from sklearn.metrics import accuracy_score
    return {"rows": int(len(y)),
            "accuracy": float(accuracy_score(y, np.argmax(p, axis=1))),
            "log_loss": log_loss(y, p),
            "strategy_return": float(np.prod([1 + f["strategy_return"] for f in folds]) - 1),
            "buy_hold_return": float(np.prod([1 + f["buy_hold_return"] for f in folds]) - 1),
            "trades": int(sum(f["trades"] for f in folds))}


# -- training ---------------------------------------------------------------------------
def median_step_seconds(timestamps_ms: np.ndarray) -> float | None:
    """The bar length of candles: the median step between their (sorted, distinct) times,
    in seconds; None with fewer than two bars."""
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    if len(ts) < 2:
        return None
    return float(np.median(np.diff(ts))) / 1e3


_FILE_MARKET = re.compile(r"^(?P<venue>[a-z][a-z0-9.-]*)_(?P<base>[A-Za-z0-9]+)-(?P<quote>[A-Za-z0-9]+)(?:[-_.]|$)")


def market_of(data: Any) -> dict:
    """Venue, symbol and quote currency of a candle file as far as its path says: the
    ``venue=``/``symbol=BASE-QUOTE`` folders of `pipeline download` and the recorder, or
    a name ``<venue>_<BASE>-<QUOTE>_...`` (binance_BTC-USDT_1h.csv); None where unknown."""
    out = {"venue": None, "symbol": None, "quote": None, "synthetic": False}
    if isinstance(data, pa.Table):
        return out
    parts = Path(data).expanduser().parts
    for part in parts:
        key, eq, value = part.partition("=")
        if eq and key == "venue" and value:
            out["venue"] = value.lower()
        elif eq and key == "symbol" and "-" in value:
            base, quote = value.split("-")[:2]
            out["symbol"], out["quote"] = f"{base.upper()}/{quote.upper()}", quote.upper()
    if out["venue"] is None and out["symbol"] is None and parts:
        m = _FILE_MARKET.match(parts[-1])
        if m:
            out["venue"] = m["venue"]
            out["symbol"] = f"{m['base'].upper()}/{m['quote'].upper()}"
            out["quote"] = m["quote"].upper()
    return out


def _dataset(data: str | Path | pa.Table, cfg: Config) -> tuple[Dataset, int, float | None]:
    """The dataset, how many rows reading the data sorted and the bars' median step in
    seconds. The file is read here (models/features.load_candles: sorted, bad rows
    counted) so the report can say what reading changed; build_dataset then gets the
    clean rows."""
    from models.features import FeaturesError, load_candles
    m = cfg.model
    try:
        rows = load_candles(data)
        ds = build_dataset(rows.table, cfg, m.horizon, m.label_threshold or None)
    except FeaturesError as e:
        raise TrainError(str(e)) from None
    except FileNotFoundError as e:
        raise TrainError(f"{data}: no such file ({e.strerror})") from None
    ds.dropped = {k: int(v) for k, v in rows.dropped.items()}
    step = median_step_seconds(rows.table.column("timestamp_ms").to_numpy()) if rows.table.num_rows else None
    return ds, rows.reordered, step



class FitTimes:
    """Seconds per row of each model's fits so far, for an estimate of the time left:
    a fit's cost grows with its rows and differs by model (an LSTM against a forest), so
    counting fits, as a plain progress bar does, misleads."""

    def __init__(self):
        self.per_row: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float, rows: int) -> None:
        self.per_row.setdefault(name, []).append(seconds / max(rows, 1))

    def left(self, todo: list[tuple[str, int]]) -> float | None:
        """Seconds for the (model, rows) fits still to do; None before the first fit. A
        model not yet timed counts at the mean of those that were."""
        if not self.per_row:
            return None
        mean = {name: sum(v) / len(v) for name, v in self.per_row.items()}
        other = sum(mean.values()) / len(mean)
        return sum(rows * mean.get(name, other) for name, rows in todo)

    def left_text(self, todo: list[tuple[str, int]]) -> str:
        s = self.left(todo)
        if s is None:
            return ""
        return f", about {int(s // 60)} min {int(s % 60):02d} s left" if s >= 60 else f", about {int(s)} s left"


def train(data_path: str | Path | pa.Table, cfg: Config, out_dir: str | Path,
          progress: bool = True, source: str | None = None, bar_seconds: float | None = None,
          market: dict | None = None) -> dict:
    """Train, evaluate and save every configured model and the ensemble; return the report.
    ``source`` names the data in the report and metadata (default: the path, or "<table>");
    ``bar_seconds`` the bar length when the caller knows it (default: the data's median
    step); ``market`` what the caller knows of venue, symbol, quote and synthetic (default:
    `market_of` the path)."""
    from tqdm import tqdm
    m = cfg.model
    names = model_names(cfg)
    ds, reordered, step = _dataset(data_path, cfg)
    where = source or _source(data_path)             # a table's repr is many lines: its name instead
    bar_seconds = float(bar_seconds) if bar_seconds is not None else step
    market = {**market_of(data_path), **(market or {})}
    try:
        splits = walk_forward(len(ds), m.folds, purge=m.horizon)
    except ValueError as e:
        raise TrainError(f"{where}: {e} (after dropping {ds.warmup_rows} warm-up rows and the "
                         f"last {m.horizon}); use more data or fewer model.folds") from None
    cost = (cfg.execution.fee_bps + cfg.execution.slippage_bps) / 1e4
    n = len(ds)

    oof = {name: np.full((n, 3), np.nan) for name in names}
    # tqdm's own estimate counts fits as equal; an LSTM fit costs ten forests: FitTimes says
    bar = tqdm(total=(len(splits) + 1) * len(names), desc="train", unit="fit", file=sys.stderr,
               disable=not progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    todo = [(name, len(tr)) for _, (tr, _) in enumerate(splits) for name in names] + \
        [(name, n) for name in names]
    times = FitTimes()
    try:
        for k, (tr, va) in enumerate(splits):
            for name in names:
                bar.set_postfix_str(f"fold {k + 1}/{len(splits)} {name}{times.left_text(todo)}")
                t0 = time.perf_counter()
                model = _fit(name, m, ds.X[tr], ds.y[tr], ds.close[tr], f"fold {k + 1}")
                times.add(name, time.perf_counter() - t0, len(tr))
                todo.pop(0)
                oof[name][va] = predict_rows(model, ds.X, va)
                bar.update()

        # rows every model predicts: all models and the ensemble are scored on these
        fold_rows = [va[np.all([np.isfinite(oof[name][va]).all(axis=1) for name in names], axis=0)]
                     for _, va in splits]
        for k, rows in enumerate(fold_rows):
            if len(rows) < 2:
                raise TrainError(f"{where}: fold {k + 1} has {len(rows)} rows where every model "
                                 "predicts; use more data or fewer model.folds")
        scored = np.concatenate(fold_rows)

        ensemble = Ensemble(m.ensemble, seed=m.seed)
        try:
            ensemble.fit({name: oof[name][scored] for name in names}, ds.y[scored])
        except ValueError as e:
            raise TrainError(str(e)) from None
        preds = dict(oof)
        preds[ENSEMBLE] = np.full((n, 3), np.nan)
        preds[ENSEMBLE][scored] = ensemble.predict_proba({name: oof[name][scored] for name in names})

        results: dict[str, dict] = {}
        for name in [*names, ENSEMBLE]:
            folds = [{"fold": k + 1, **_metrics(ds.y[rows], preds[name][rows], ds.close[rows], cost,
                                                 m.long_only)}
                     for k, rows in enumerate(fold_rows)]
            results[name] = {"folds": folds, "all": _all_folds(ds.y[scored], preds[name][scored], folds)}

        # the artifacts: every model refitted on all rows, then the ensemble over them
        registry = Registry(out_dir)
        versions: dict[str, int] = {}
        training = _training_meta(cfg, ds, source or _source(data_path), cost)
        if bar_seconds is None or not math.isfinite(bar_seconds) or bar_seconds <= 0:
            raise TrainError(f"{where}: cannot tell the bar length of the candles "
                             f"(median step {bar_seconds})")
        for name in names:
            bar.set_postfix_str(f"all rows {name}{times.left_text(todo)}")
            t0 = time.perf_counter()
            model = _fit(name, m, ds.X, ds.y, ds.close, "all rows")
            times.add(name, time.perf_counter() - t0, n)
            todo.pop(0)
            versions[name] = registry.save(name, model.save, {
                "model": name, "class": f"{type(model).__module__}.{type(model).__name__}",
                "bar_seconds": bar_seconds, "market": market,
                "feature_names": list(ds.feature_names), "input_names": list(ds.input_names),
                "classes": list(CLASSES), "parameters": dict(model.params),
                "data_range": ds.data_range(), "metrics": results[name], "training": training})
            bar.update()
        versions[ENSEMBLE] = registry.save(ENSEMBLE, ensemble.save, {
            "model": ENSEMBLE, "members": list(names),
            "member_versions": {name: versions[name] for name in names},
            "bar_seconds": bar_seconds, "market": market,
            "feature_names": list(ds.feature_names), "input_names": list(ds.input_names),
            "classes": list(CLASSES), "parameters": ensemble.describe(),
            "data_range": ds.data_range(), "metrics": results[ENSEMBLE], "note": ENSEMBLE_NOTE,
            "training": training})
    finally:
        bar.close()

    report = {
        "data": {"source": source or _source(data_path), **ds.data_range(), "dropped": ds.dropped,
                 "reordered": reordered, "warmup_rows": ds.warmup_rows, "bar_seconds": bar_seconds,
                 "market": market, "config_bar_seconds": float(cfg.indicators.bar_seconds)},
        "training": training,
        "folds": [{"fold": k + 1, "train_rows": int(len(tr)), "val_rows": int(len(va)),
                   "scored_rows": int(len(rows)),
                   "first_ms": int(ds.timestamps_ms[rows[0]]), "last_ms": int(ds.timestamps_ms[rows[-1]]),
                   "labels": {c: int((ds.y[rows] == i).sum()) for i, c in enumerate(CLASSES)}}
                  for k, ((tr, va), rows) in enumerate(zip(splits, fold_rows))],
        "models": {name: results[name] for name in names},
        "ensemble": {**ensemble.describe(), "note": ENSEMBLE_NOTE, **results[ENSEMBLE]},
        "artifacts": versions,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _source(data: Any) -> str:
    return "<table>" if isinstance(data, pa.Table) else str(data)


def _training_meta(cfg: Config, ds: Dataset, source: str, cost: float) -> dict:
    m = cfg.model
    return {"data": source, "models": list(m.models), "horizon": ds.horizon,
            "label_threshold": ds.threshold, "folds": m.folds, "purge": m.horizon, "seed": m.seed,
            "ensemble": m.ensemble, "positions": "long_flat" if m.long_only else "long_short",
            "cost_per_side": cost}


# -- the readable table -----------------------------------------------------------------
def _day(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1e3, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


UNIFORM_LOG_LOSS = math.log(3.0)      # guessing 1/3 for each class


def _bars_line(d: dict) -> str | None:
    """What the models were trained on and what serves them, or None for an older report."""
    bar_s = d.get("bar_seconds")
    if not bar_s:
        return None
    market = d.get("market") or {}
    where = ""
    if market.get("symbol") or market.get("venue"):
        where = (f"; {market.get('symbol') or 'symbol unknown'} on "
                 f"{'the synthetic market' if market.get('synthetic') else market.get('venue') or 'an unknown venue'}")
    how = "generated" if market.get("synthetic") else "the data's median step"
    line = (f"bars: {bar_text(bar_s)} ({how}){where}; a pipeline serves these artifacts only with "
            f"[indicators] bar_seconds = {bar_s:g}")
    cfg_s = d.get("config_bar_seconds")
    if cfg_s and not same_bars(cfg_s, bar_s):
        line += f" (this config has {cfg_s:g}: it would refuse them)"
    return line


def _returns_lines(report: dict) -> tuple[str, str | None]:
    """(the line above the table, a line below it or None): what the returns are."""
    t, d = report["training"], report["data"]
    if (d.get("market") or {}).get("synthetic"):
        return ("SYNTHETIC MARKET: every figure below is in-sample for the market the models were "
                "trained on (history made by the live feed's own generator, whose drift regimes are "
                "learnable by design); it means nothing for a real market",
                "the returns above are on the synthetic market: not a forecast of any real one; "
                "train on real candles with pipeline train to judge the models")
    return (f"figures below are walk-forward out-of-sample: each fold's models were trained only on "
            f"rows before it (purge {t['purge']} rows); the ensemble's weights saw these folds, and the "
            "saved models were refitted on all rows, these included", None)


def format_report(report: dict) -> str:
    """The report as a table: one row per model per fold and an "all" row, then the
    ensemble; above the table, what the returns are (walk-forward out-of-sample on real
    data, meaningless for a real market on the synthetic one); a log loss worse than
    a uniform guess is starred."""
    t, d = report["training"], report["data"]
    note = rows_note(d.get("dropped", {}), d.get("reordered", 0))
    above, below = _returns_lines(report)
    lines = [
        f"data {d['source']}: {d['rows']} rows, {_day(d['first_ms'])} to {_day(d['last_ms'])} UTC"
        + (f"; {note}" if note else ""),
        *filter(None, [_bars_line(d)]),
        f"labels: return over {t['horizon']} bars beyond +/-{t['label_threshold'] * 100:.3g}% is "
        f"up/down; {t['folds']} walk-forward folds, purge {t['purge']} rows; seed {t['seed']}",
        f"strategy: {'long/flat' if t['positions'] == 'long_flat' else 'long/short'} on the argmax "
        f"signal, held bar to bar, {t['cost_per_side'] * 1e4:.3g} bps per side at each change; "
        "buy & hold without fees",
        "",
        above,
        f"{'model':<10}{'fold':>5}{'rows':>7}{'accuracy':>10}{'log loss':>10}"
        f"{'strategy':>11}{'buy&hold':>11}{'trades':>8}",
    ]
    worse = False

    def row(name, fold, r):
        nonlocal worse
        bad = r["log_loss"] > UNIFORM_LOG_LOSS
        worse |= bad
        lines.append(f"{name:<10}{fold:>5}{r['rows']:>7}{r['accuracy']:>10.3f}{r['log_loss']:>9.4f}"
                     f"{'*' if bad else ' '}"
                     f"{r['strategy_return'] * 100:>+10.2f}%{r['buy_hold_return'] * 100:>+10.2f}%"
                     f"{r['trades']:>8}")

    for name, res in [*report["models"].items(), (ENSEMBLE, report["ensemble"])]:
        for f in res["folds"]:
            row(name, str(f["fold"]), f)
        row(name, "all", res["all"])
    if worse:
        lines.append(f"* log loss above ln 3 = {UNIFORM_LOG_LOSS:.4f}: worse than guessing 1/3 for each class")
    if below:
        lines.append(below)
    ens = report["ensemble"]
    lines.append("")
    if ens["method"] == "soft_vote":
        weights = ", ".join(f"{k} {w:.3f}" for k, w in ens["weights"].items())
        lines.append(f"ensemble: soft vote, weights {weights}")
    else:
        lines.append(f"ensemble: stacking (logistic regression on {', '.join(ens['members'])} "
                     "probabilities; coefficients in report.json)")
    lines.append(f"note: {ens['note']}")
    return "\n".join(lines)
