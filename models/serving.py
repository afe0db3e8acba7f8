"""Serving the models: feature rows in, class probabilities out.

`EnsembleModel` is the trained ensemble and its members, loaded once from the
registry (the member versions the ensemble's metadata records), every
artifact's feature names and bar length checked against the running config
(models/registry.py: check_features, check_bars), the LSTM compiled for the
padded batch sizes it will see. A missing, corrupt or mismatching artifact is
a `ConfigurationError` (one line). Another venue or quote currency than the
training data's is not refused (the inputs are scale-free; see
registry.market_notes): ``notes`` holds one warning line per difference, for
the caller to log. The model worker
(workers/model.py) and the remote model host (workers/model_host.py) run this
same object, and so will a backtest.

Per batch: X = models.dataset.model_inputs(rows) for the closing symbols; rows
with a NaN input (indicator warm-up) give HOLD with uniform probabilities and
FLAG_WARMUP, and are not fed to any model; every member predicts the remaining
rows in one call; the ensemble combines them. The LSTM needs the last
``window`` input rows of a symbol (a numpy ring per symbol, fed one row per
newly closed bar); until a symbol has them, a soft-vote ensemble combines the
other members with their weights renormalised and the signal gets FLAG_PARTIAL
(a stacking ensemble, which cannot drop an input, gives HOLD with
FLAG_PARTIAL).

`MomentumModel` is a transparent rule on the EMA spread: probabilities for
down / flat / up from a logistic of the spread in units of ``threshold``.
"""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigurationError
from shm.records import (ACTION_BUY, ACTION_HOLD, ACTION_SELL, FLAG_GAP, FLAG_PARTIAL, FLAG_WARMUP,
                         MODEL_ENSEMBLE, MODEL_MOMENTUM, SIGNAL, SIGNAL_MEMBERS)

from .dataset import input_names, model_inputs
from .ensemble import Ensemble
from .lstm import CHUNK, devices
from .registry import ENSEMBLE, MODELS, ArtifactError, Registry, check_bars, check_features, \
    market_notes


class MomentumModel:
    """Scores feature rows; NaN features (warm-up) give a flat, hold signal."""

    def __init__(self, fast: str, slow: str, threshold: float):
        self.fast, self.slow, self.threshold = fast, slow, threshold

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities (n, 3) for down / flat / up."""
        with np.errstate(invalid="ignore", divide="ignore"):
            x = (rows[self.fast] - rows[self.slow]) / rows["close"] / self.threshold
        x = np.clip(np.nan_to_num(x, nan=0.0), -50.0, 50.0)
        up = 1.0 / (1.0 + np.exp(-2.0 * (x - 1.0)))
        down = 1.0 / (1.0 + np.exp(-2.0 * (-x - 1.0)))
        flat = np.clip(1.0 - up - down, 0.0, 1.0)
        p = np.stack([down, flat, up], axis=1)
        return p / p.sum(axis=1, keepdims=True)


BULK_WINDOWS = 8192          # sequence windows built and predicted at once by `predict_bulk`


def _pad_sizes(n_symbols: int, cap: int) -> list[int]:
    """Batch sizes the LSTM is compiled for: powers of two up to the first >= n_symbols
    (at most ``cap``); a batch is padded up to the next one."""
    sizes, b = [], 1
    while True:
        sizes.append(min(b, cap))
        if b >= n_symbols or b >= cap:
            return sizes
        b *= 2


class EnsembleModel:
    """The trained ensemble and its members, loaded once from the registry, with a
    per-symbol history of model-input rows for sequence members (the LSTM)."""

    def __init__(self, root: str | Path, feature_names: list[str], n_symbols: int,
                 bar_seconds: float | None = None, symbols: list[str] | None = None):
        """``bar_seconds``: the running config's [indicators] bar_seconds; every artifact
        must have been trained on bars of that length (the model worker and the model
        host always pass it; None skips the check, for tools that only read a model).
        ``symbols``: the served symbol keys (``BTC/USDT@binance``), for `notes`."""
        self.root = Path(root).expanduser()
        self.feature_names = list(feature_names)
        self.bar_seconds = bar_seconds
        self.notes: list[str] = []
        try:
            self.input_names = input_names(self.feature_names)
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
        reg = Registry(self.root)
        try:
            path, meta = reg.load(ENSEMBLE)
            check_features(meta, self.feature_names)
            if bar_seconds is not None:
                check_bars(meta, bar_seconds)
            if symbols is not None:
                self.notes = market_notes(meta, list(symbols))
            try:
                self.ensemble = Ensemble.load(path)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ArtifactError(f"corrupt artifact: {path}: {e}") from None
            self.members: list[str] = list(self.ensemble.members)
            if len(self.members) > SIGNAL_MEMBERS:
                raise ConfigurationError(f"{path}: the ensemble has {len(self.members)} members; a signal "
                                         f"record carries at most {SIGNAL_MEMBERS}")
            recorded = meta.get("member_versions", {}) or {}
            self.versions = {ENSEMBLE: int(meta["version"])}
            self.models: dict = {}
            self.windows: dict[str, int] = {}
            self.sizes = _pad_sizes(n_symbols, CHUNK)
            for name in self.members:
                mpath, mmeta = reg.load(name, recorded.get(name))
                check_features(mmeta, self.feature_names)
                if bar_seconds is not None:
                    check_bars(mmeta, bar_seconds)
                kind = mmeta.get("model", name)
                if kind not in MODELS:
                    raise ArtifactError(f"{mpath}: model kind '{kind}' is not known to this build "
                                        f"(known: {', '.join(MODELS)})")
                cls = MODELS[kind]
                try:
                    if kind == "lstm":
                        model = cls.load(mpath, warmup=tuple(self.sizes))
                    else:
                        model = cls.load(mpath)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise ArtifactError(f"corrupt artifact: {mpath}: {e}") from None
                self.models[name] = model
                self.versions[name] = int(mmeta["version"])
                if hasattr(model, "predict_sequence"):
                    self.windows[name] = int(getattr(model, "window", 1) or 1)
        except ArtifactError as e:
            raise ConfigurationError(str(e)) from None
        self.method = self.ensemble.method
        self.device = "cpu"
        if self.windows:
            self.device = ", ".join(devices()) or "cpu"
        # per-symbol ring of the last `window` input rows (for sequence members)
        self.window = max(self.windows.values(), default=0)
        f = len(self.input_names)
        self.hist = np.zeros((n_symbols, max(self.window, 1), f))
        self.count = np.zeros(n_symbols, np.int64)         # rows appended so far
        self.last_bar = np.full(n_symbols, np.iinfo(np.int64).min, np.int64)
        self.slot_versions = np.array([self.versions[m] for m in self.members], np.uint16)
        self.infer_ms: deque = deque(maxlen=1000)
        # warm the non-sequence members too (first-call allocations, lazy imports)
        z = np.zeros((1, f))
        for name, model in self.models.items():
            if name not in self.windows:
                model.predict_proba(z)

    def _push(self, ids: np.ndarray, X: np.ndarray, bar_ns: np.ndarray) -> None:
        """Append each symbol's newly closed row to its history (a bar seen again, e.g.
        re-read after a restart, is not appended twice)."""
        if not self.window:
            return
        new = bar_ns > self.last_bar[ids]
        ids, X = ids[new], X[new]
        self.hist[ids, self.count[ids] % self.window] = X
        self.count[ids] += 1
        self.last_bar[ids] = bar_ns[new]

    def _windows(self, ids: np.ndarray, window: int) -> np.ndarray:
        """(len(ids), window, f) of each symbol's last ``window`` rows, oldest first."""
        end = self.count[ids] % self.window                                 # slot after the newest
        idx = (end[:, None] + np.arange(self.window - window, self.window)[None, :]) % self.window
        return self.hist[ids[:, None], idx]

    def _predict_seq(self, model, W: np.ndarray) -> np.ndarray:
        """Padded up to a warmed-up batch size, so no compile happens while serving."""
        m = len(W)
        size = next((b for b in self.sizes if b >= m), None)
        if size is None or size == m:
            return model.predict_proba(W)
        pad = np.concatenate([W, np.repeat(W[-1:], size - m, axis=0)])
        return model.predict_proba(pad)[:m]

    def predict(self, ids: np.ndarray, rows: np.ndarray):
        """(probs (n, 3), member_probs (n, M, 3), versions (n, M), flags (n,), hold (n,) bool)."""
        t0 = time.perf_counter()
        n, M = len(ids), len(self.members)
        X = model_inputs(rows, self.feature_names)
        ok = np.isfinite(X).all(axis=1)
        probs = np.full((n, 3), 1.0 / 3.0)
        member = np.zeros((n, SIGNAL_MEMBERS, 3))
        versions = np.zeros((n, SIGNAL_MEMBERS), np.uint16)
        flags = np.where(ok, 0, FLAG_WARMUP).astype(np.uint16)
        hold = ~ok
        okr = np.flatnonzero(ok)
        if len(okr):
            self._push(ids[okr], X[okr], rows["ts_bar_ns"][okr].astype(np.int64))
            Xo = X[okr]
            have = np.ones((len(okr), M), bool)
            for j, name in enumerate(self.members):
                model = self.models[name]
                if name in self.windows:
                    w = self.windows[name]
                    full = self.count[ids[okr]] >= w
                    have[:, j] = full
                    if full.any():
                        member[okr[full], j] = self._predict_seq(model, self._windows(ids[okr][full], w))
                else:
                    member[okr, j] = model.predict_proba(Xo)
            self._combine(okr, have, member, versions, flags, hold, probs)
        self.infer_ms.append((time.perf_counter() - t0) * 1e3)
        return probs, member, versions, flags, hold

    def _combine(self, okr: np.ndarray, have: np.ndarray, member: np.ndarray, versions: np.ndarray,
                 flags: np.ndarray, hold: np.ndarray, probs: np.ndarray) -> None:
        """The members' probabilities of rows ``okr`` (``have``: which members had one)
        into the ensemble's, in place: a row missing a member is FLAG_PARTIAL, combined by
        the others with their weights renormalised (soft vote), else HOLD."""
        M = len(self.members)
        versions[okr, :M] = np.where(have, self.slot_versions[None, :], 0)
        P = member[okr, :M]                                       # (k, M, 3)
        complete = have.all(axis=1)
        out = np.full((len(okr), 3), 1.0 / 3.0)
        if complete.any():
            c = np.flatnonzero(complete)
            out[c] = self.ensemble.predict_proba({name: P[c, j] for j, name in enumerate(self.members)})
        part = np.flatnonzero(~complete)
        if len(part):
            flags[okr[part]] |= FLAG_PARTIAL
            if self.method == "soft_vote":
                w = self.ensemble.weights[None, :] * have[part]              # (p, M)
                tot = w.sum(axis=1)
                good = tot > 0
                out[part[good]] = np.einsum("pm,pmk->pk", w[good] / tot[good, None], P[part[good]])
                hold[okr[part[~good]]] = True
            else:
                hold[okr[part]] = True
        probs[okr] = out
        probs[hold] = 1.0 / 3.0

    def predict_bulk(self, ids: np.ndarray, rows: np.ndarray, batch: np.ndarray):
        """``predict`` of many bar closes at once: ``ids``/``rows`` are the batches one
        after another, ``batch`` each row's batch number (non-decreasing). The outputs are
        those of calling ``predict`` batch by batch in order (each member is a function of
        a row, or for a sequence member of the symbol's last ``window`` rows), with every
        member called on all rows in a few large calls: a backtest knows every bar before
        it trades, a live worker only the newest. The symbols' histories end as those calls
        would leave them."""
        t0 = time.perf_counter()
        n, M = len(ids), len(self.members)
        ids = np.asarray(ids, np.int64)
        X = model_inputs(rows, self.feature_names)
        ok = np.isfinite(X).all(axis=1)
        member = np.zeros((n, SIGNAL_MEMBERS, 3))
        versions = np.zeros((n, SIGNAL_MEMBERS), np.uint16)
        flags = np.where(ok, 0, FLAG_WARMUP).astype(np.uint16)
        hold = ~ok
        probs = np.full((n, 3), 1.0 / 3.0)
        okr = np.flatnonzero(ok)
        have = np.ones((len(okr), M), bool)
        after = np.zeros(len(okr), np.int64)
        if len(okr) and self.window:
            # each symbol's history as `_push` builds it: a row is appended when its bar is
            # newer than the symbol's last; `after` is the count after the row's own push
            bar_ns = rows["ts_bar_ns"][okr].astype(np.int64)
            count, last = self.count.copy(), self.last_bar.copy()
            appended = []
            for k, (sid, b) in enumerate(zip(ids[okr].tolist(), bar_ns.tolist())):
                if b > last[sid]:
                    last[sid] = b
                    count[sid] += 1
                    appended.append(k)
                after[k] = count[sid]
            hist = {int(s): self._windows(np.array([s]), self.window)[0][self.window - min(int(self.count[s]),
                                                                                        self.window):]
                    for s in np.unique(ids[okr])}     # what each symbol held before
            rows_of = {s: [h] for s, h in hist.items()}
            app = np.array(appended, np.int64)
            for s in rows_of:
                mine = app[ids[okr][app] == s]
                rows_of[s].append(X[okr][mine])
            series = {s: np.concatenate(parts) for s, parts in rows_of.items()}
            before = {s: len(h) for s, h in hist.items()}   # rows of history kept before the bulk
            base = {s: int(self.count[s]) for s in hist}
        for j, name in enumerate(self.members):
            model = self.models[name]
            if name in self.windows:
                w = self.windows[name]
                full = after >= w
                have[:, j] = full
                rows_full = np.flatnonzero(full)
                for start in range(0, len(rows_full), BULK_WINDOWS):     # bounded memory
                    chunk = rows_full[start:start + BULK_WINDOWS]
                    W = np.empty((len(chunk), w, X.shape[1]))
                    for i, k in enumerate(chunk.tolist()):
                        s = int(ids[okr[k]])
                        end = before[s] + (int(after[k]) - base[s])      # rows of `series[s]` up to k
                        W[i] = series[s][end - w:end]
                    member[okr[chunk], j] = model.predict_proba(W)
            elif len(okr):
                member[okr, j] = model.predict_proba(X[okr])
        if len(okr):
            self._combine(okr, have, member, versions, flags, hold, probs)
            if self.window:                              # the histories as the calls would leave them
                for s, arr in series.items():
                    total = base[s] + len(arr) - before[s]
                    for k in range(max(total - self.window, 0), total):
                        self.hist[s, k % self.window] = arr[before[s] + k - base[s]]
                    self.count[s] = total
                    self.last_bar[s] = last[s]
        self.infer_ms.append((time.perf_counter() - t0) * 1e3)
        return probs, member, versions, flags, hold

    def stats(self) -> dict:
        lat = np.asarray(self.infer_ms) if self.infer_ms else None
        return {"model": "ensemble", "method": self.method, "members": list(self.members),
                "versions": dict(self.versions), "device": self.device, "artifacts": str(self.root),
                "infer_ms_p50": round(float(np.percentile(lat, 50)), 3) if lat is not None else None,
                "infer_ms_p99": round(float(np.percentile(lat, 99)), 3) if lat is not None else None,
                "infer_ms_max": round(float(lat.max()), 3) if lat is not None else None}


def bulk_outputs(model, ids: np.ndarray, rows: np.ndarray, batch: np.ndarray):
    """The model's outputs for many bar closes at once (``batch``: each row's close, in
    order), as `make_signals` takes them per close: the momentum rule's probabilities
    (it scores each row alone), an ensemble's ``predict_bulk``; None for a model that
    serves one close at a time only (the model host bridge, a test's model)."""
    if isinstance(model, MomentumModel):
        return model.predict(rows)
    if hasattr(model, "predict_bulk"):
        return model.predict_bulk(ids, rows, batch)
    return None


def make_signals(model, ids: np.ndarray, rows: np.ndarray, origin_ns: np.ndarray,
                 bar_flags: np.ndarray, first_seq: int, outputs=None) -> np.ndarray:
    """SIGNAL rows for the symbols ``ids`` from their newest feature ``rows``: the
    model's probabilities, action (argmax down / flat / up -> SELL / HOLD / BUY, HOLD
    where the model holds), confidence, reference price (the bar's close) and flags
    (the bar's FLAG_GAP, and the model's own). ``model``: a `MomentumModel`, or an
    ensemble (`EnsembleModel` or the model host bridge, which serve the same
    ``predict``). The model worker and a backtest build their signals here, so both
    trade on the same rows; an ensemble's ConfigurationError goes to the caller.
    ``outputs``: the model's outputs for these rows computed ahead (`bulk_outputs`),
    instead of calling it."""
    ids = np.asarray(ids, np.intp)
    sig = np.zeros(len(ids), SIGNAL)
    flags = np.asarray(bar_flags, np.uint16) & FLAG_GAP
    if isinstance(model, MomentumModel):
        probs = model.predict(rows) if outputs is None else outputs
        hold = np.zeros(len(ids), bool)
        sig["model_id"] = MODEL_MOMENTUM
    else:
        probs, member, versions, extra, hold = model.predict(ids, rows) if outputs is None else outputs
        sig["model_id"] = MODEL_ENSEMBLE
        sig["member_probs"] = member
        sig["model_versions"] = versions
        flags = flags | extra
    action = np.choose(probs.argmax(axis=1), [ACTION_SELL, ACTION_HOLD, ACTION_BUY])
    sig["ts_origin_ns"] = origin_ns
    sig["ts_bar_ns"] = rows["ts_bar_ns"]
    sig["seq"] = first_seq + np.arange(len(ids))
    sig["symbol_id"] = ids
    sig["action"] = np.where(hold, ACTION_HOLD, action)
    sig["confidence"] = probs.max(axis=1)
    sig["probs"] = probs
    sig["ref_price"] = rows["close"]
    sig["flags"] = flags
    return sig
