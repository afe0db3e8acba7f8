"""Strategy process: model signals in, intents out, for execution.

A thin adapter around the pure core in signals.py: it drains every model
worker's signals ring, reads each signalling symbol's volatility from the
latest-features table (``vol_N``, else ``atr_N / close``) for the size, the
FX markets' last closes from the same table (sizes are in the account currency), and
publishes the intents the core returns to the ``intents`` ring. With a stop-loss or
take-profit set it also reads every feed's ticks (a lossy reader, as the indicator
shards): each trade of a held symbol goes to the core's stop check at once, not at the
next bar's close.

A restarted strategy skips the signals its predecessor already turned into
intents (their sequence is in the intents ring), and takes the positions it
holds from the positions table, with their average price as the entry; the
holding period of those positions counts as served. An intent it derives a
second time anyway carries the same seq, which execution never acts on twice.
"""
from __future__ import annotations

import numpy as np

from shm.records import TICK_TRADE

from ..base import Worker
from ..execution.fx import FxRates
from ..execution.fx_feed import RatePoller
from .signals import SOURCE_BITS, STOP_SOURCE, SignalStrategy, bar_volatility, volatility_columns


class StrategyWorker(Worker):
    role = "strategy"
    collect_between_steps = True

    def setup(self) -> None:
        n = len(self.topo.symbols)
        self.fx = FxRates.from_config(self.topo.symbols.keys, self.cfg.execution)
        self.fx_poller = RatePoller(self.fx.url_sources(), self.log).start()
        self.core = SignalStrategy(n, self.cfg.strategy, self.clock, fx=self.fx)
        self.features = self.table("features")
        self.positions = self.table("positions")
        self.vol_column, self.atr_column = volatility_columns(self.topo.feature_names)
        self.tick_readers = [r for r in self.readers if r.ring.spec.name.startswith("ticks.")]
        self.signal_readers = [r for r in self.readers if r not in self.tick_readers]
        self.last_seen = np.full(len(self.signal_readers), -1, np.int64)
        self.counters.update(signals=0, intents=0, skipped_replay=0, ticks=0, ticks_dropped=0)
        writer = self.writers["intents"]
        if writer.seq > 0:
            self.resume(writer.tail())

    def resume(self, intents: np.ndarray) -> None:
        """Restarted: the signals already acted on, and the positions held."""
        mask = (1 << SOURCE_BITS) - 1
        for row in intents:
            source = int(row["seq"]) >> SOURCE_BITS
            if source < len(self.last_seen) and row["signal_seq"]:
                self.last_seen[source] = max(self.last_seen[source], int(row["seq"]) & mask)
        rows, seqs = self.positions.read()
        held = np.flatnonzero((seqs > 0) & (rows["qty"] != 0))
        self.core.restore({"positions": {int(sid): {
            "direction": int(np.sign(rows["qty"][sid])), "qty": float(rows["qty"][sid]),
            "entry": float(rows["avg_price"][sid]), "held_bars": self.cfg.strategy.min_hold_bars,
            "last_bar": -1} for sid in held}})
        self.log.info("restarted: %d positions held; signals acted on up to %s", len(held),
                      self.last_seen.tolist())

    def volatility(self, ids: np.ndarray) -> np.ndarray:
        """Per-bar volatility by symbol id for ``ids`` (NaN where unknown)."""
        vol = np.full(len(self.topo.symbols), np.nan)
        if self.vol_column is None and self.atr_column is None:
            return vol
        rows, seqs = self.features.read(ids.astype(np.intp))
        vol[ids] = np.where(seqs > 0, bar_volatility(rows, self.vol_column, self.atr_column), np.nan)
        return vol

    def rates(self) -> None:
        """The FX markets' newest bar closes (features table) and the polled reference rates
        into the sizing rates."""
        for index, rate, ts in self.fx_poller.drain():
            self.fx.on_value(index, rate, ts)
        sids = self.fx.market_sids
        if len(sids):
            rows, seqs = self.features.read(sids.astype(np.intp))
            self.fx.on_bars(rows[seqs > 0])

    def held(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Execution's positions and its open orders' working quantities by symbol id (0
        where never written), for ``ids``."""
        qty, working = np.zeros(len(self.topo.symbols)), np.zeros(len(self.topo.symbols))
        rows, seqs = self.positions.read(ids)
        qty[ids] = np.where(seqs > 0, rows["qty"], 0.0)
        working[ids] = np.where(seqs > 0, rows["working"], 0.0)
        return qty, working

    def step(self) -> bool:
        did = self._stops()
        for j, reader in enumerate(self.signal_readers):
            batch = reader.read()
            if batch is None:
                continue
            did = True
            sig = batch.records
            self.counters["in"] += len(sig)
            fresh = sig["seq"].astype(np.int64) > self.last_seen[j]
            self.counters["skipped_replay"] += int((~fresh).sum())
            sig = sig[fresh]
            if len(sig):
                self.rates()
                ids = np.unique(sig["symbol_id"]).astype(np.intp)
                intents = self.core.on_signals(sig, self.volatility(ids), j, *self.held(ids))
                self.last_seen[j] = int(sig["seq"][-1])
                self.counters["signals"] += len(sig)
                self._publish_intents(intents)
            reader.commit()
        return did

    def _publish_intents(self, intents: np.ndarray) -> None:
        if len(intents):
            self.publish("intents", intents)
            self.record_latency(intents["ts_origin_ns"])
            self.counters["intents"] += len(intents)

    def _stops(self) -> bool:
        """Every trade of a held symbol to the stop-loss and take-profit; an exit they make
        is published at once. Its seq comes from the tick's place in its ring (a source of
        its own per feed), so a restarted strategy that reads the tick again derives the same
        intent, which execution never acts on twice."""
        did = False
        for j, reader in enumerate(self.tick_readers):
            batch = reader.read()
            if batch is None:
                continue
            did = True
            self.counters["ticks"] += len(batch)
            self.counters["ticks_dropped"] += batch.dropped
            t = batch.records
            held = self.core.direction[np.minimum(t["symbol_id"], self.core.n - 1)] != 0
            hit = np.flatnonzero((t["kind"] == TICK_TRADE) & held & (t["symbol_id"] < self.core.n))
            for i in hit.tolist():
                self._publish_intents(self.core.on_price(int(t["symbol_id"][i]), float(t["price"][i]),
                                                         batch.first_seq + i, int(t["ts_origin_ns"][i]),
                                                         source=STOP_SOURCE - j))
            reader.commit()
        return did

    def stats(self) -> dict:
        return {**self.counters, **self.collector_stats(), "rules": dict(self.core.counters)}

    def close(self) -> None:
        if getattr(self, "fx_poller", None) is not None:
            self.fx_poller.close()
        super().close()


def WORKER(args):
    """The strategy process the config asks for: the signals strategy (above), or the
    route trader (``[strategy] kind = "arbitrage"``, arb_worker.py)."""
    if args.cfg.strategy.kind == "arbitrage":
        from .arb_worker import ArbWorker
        return ArbWorker(args)
    return StrategyWorker(args)
