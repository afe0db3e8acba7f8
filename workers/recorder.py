"""Recorder: every tick of every feed and every closed bar with its features,
to Parquet, in batches.

A registered reader on each ticks ring and an observer of each features ring
(an observer never holds the indicators back). Records are held in memory
and written when ``recorder.flush_records`` are held or
``recorder.flush_seconds`` have passed since the last write: one part file
per (dataset, venue, symbol, UTC day), under ``recorder.dir`` (layout in
pipeline/storage.py).

Nothing held is lost on a stop: the supervisor stops the feeds first, then
the recorder, which drains its rings and writes what it holds (``finish``);
a SIGTERM does the same. The ring cursors are committed only after the files
are in place, so a recorder killed with -9 resumes, when restarted, from its
last write and re-reads what the ring still holds (a lossy ring may have
overwritten some of it by then: those ticks count as dropped). A kill
between a write and its commit can write that batch twice.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .base import Worker
from pipeline.storage import NS_PER_DAY, day_dir, records_table, utc_day, write_parts


class RecorderWorker(Worker):
    role = "recorder"

    def setup(self) -> None:
        rc = self.cfg.recorder
        self.root = Path(rc.dir).expanduser()
        self.flush_records = rc.flush_records
        self.flush_seconds = rc.flush_seconds
        # registry key "BTC/USDT@binance" -> (venue, symbol), by symbol id
        self.keys = [tuple(reversed(k.split("@", 1))) for k in self.topo.symbols.keys]
        self.held: dict[str, list[np.ndarray]] = {"ticks": [], "bars": []}
        self.n_held = 0
        self.last_flush = time.monotonic()
        self.counters.update(written=0, bars=0, files=0, flushes=0, gaps=0)

    def step(self) -> bool:
        did = False
        for reader, batch in self.drain():
            did = True
            dataset = "ticks" if reader.ring.spec.name.startswith("ticks.") else "bars"
            self.held[dataset].append(batch.records)
            self.n_held += len(batch)
            self.counters["in"] += len(batch)
        if self.n_held >= self.flush_records:
            self.flush()
        return did

    def on_idle(self) -> None:
        if self.n_held and time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def finish(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Write what is held, one part per (dataset, symbol, day), then commit the cursors."""
        self.last_flush = time.monotonic()
        if not self.n_held:
            return
        parts = []
        written = {}
        for dataset, held in self.held.items():
            if not held:
                continue
            recs = np.concatenate(held)
            if dataset == "ticks":
                ts = recs["ts_exchange_ns"]
                ts = np.where(ts > 0, ts, recs["ts_origin_ns"])
            else:
                ts = recs["ts_bar_ns"]
            parts += self._parts(dataset, recs, ts)
            written[dataset] = len(recs)
        files = write_parts(parts)
        for reader in self.readers:
            reader.commit()
        for held in self.held.values():
            held.clear()
        self.n_held = 0
        self.counters["written"] += written.get("ticks", 0)
        self.counters["bars"] += written.get("bars", 0)
        self.counters["files"] += len(files)
        self.counters["flushes"] += 1

    def _parts(self, dataset: str, recs: np.ndarray, ts: np.ndarray) -> list:
        """Split records by (symbol, UTC day), each group in arrival order."""
        day = ts // NS_PER_DAY
        key = recs["symbol_id"].astype(np.int64) << 32 | (day & 0xFFFFFFFF)
        order = np.argsort(key, kind="stable")
        recs, key, day = recs[order], key[order], day[order]
        starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
        ends = np.r_[starts[1:], len(recs)]
        parts = []
        for a, b in zip(starts, ends):
            venue, symbol = self.keys[int(recs["symbol_id"][a])]
            parts.append((day_dir(self.root, dataset, venue, symbol, utc_day(int(day[a]))),
                          records_table(recs[a:b])))
        return parts


WORKER = RecorderWorker
