"""Model worker: on each batch of bar closes, one inference over all symbols
whose bars closed, written as signal records.

The bar-close events come from the features rings; the values are read from
the latest-features table (seqlock), so a symbol whose bar closed twice in a
batch is scored once, on its newest row. The model here is a transparent
momentum rule on the EMA spread (the ML ensemble replaces it): probabilities
for down / flat / up from a logistic of the spread in units of ``threshold``.
"""
from __future__ import annotations

import numpy as np

from shm.records import ACTION_BUY, ACTION_HOLD, ACTION_SELL, FLAG_GAP, SIGNAL

from .base import Worker


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


class ModelWorker(Worker):
    role = "model"

    def setup(self) -> None:
        ema = [f"ema_{p}" for p in self.cfg.indicators.ema]
        self.model = MomentumModel(ema[0], ema[-1], self.cfg.model.threshold)
        self.features = self.table("features")
        self.out = self.spec.outputs[0]
        self.counters.update(batches=0, signals=0)

    def step(self) -> bool:
        events = []
        for _, batch in self.drain():
            events.append(batch.records)
        if not events:
            return False
        ev = np.concatenate(events) if len(events) > 1 else events[0]
        self.counters["in"] += len(ev)
        # newest event per symbol: its ts_origin_ns is the tick that caused it
        ids, idx = np.unique(ev["symbol_id"][::-1], return_index=True)
        newest = ev[::-1][idx]
        rows, _ = self.features.read(ids.astype(np.intp))
        probs = self.model.predict(rows)
        cls = probs.argmax(axis=1)
        sig = np.zeros(len(ids), SIGNAL)
        sig["ts_origin_ns"] = newest["ts_origin_ns"]
        sig["ts_bar_ns"] = rows["ts_bar_ns"]
        writer = self.writers[self.out]
        sig["seq"] = writer.seq + np.arange(len(ids))
        sig["symbol_id"] = ids
        sig["action"] = np.choose(cls, [ACTION_SELL, ACTION_HOLD, ACTION_BUY])
        sig["confidence"] = probs.max(axis=1)
        sig["probs"] = probs
        sig["ref_price"] = rows["close"]
        sig["flags"] = newest["flags"] & FLAG_GAP
        self.publish(self.out, sig)
        self.record_latency(sig["ts_origin_ns"])
        for reader in self.readers:
            reader.commit()
        self.counters["batches"] += 1
        self.counters["signals"] += len(sig)
        return True


WORKER = ModelWorker
