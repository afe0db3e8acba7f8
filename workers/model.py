"""Model worker: on each batch of bar closes, one inference over all symbols
whose bars closed, written as signal records.

The bar-close events come from the features rings; the values are read from
the latest-features table (seqlock), so a symbol whose bar closed twice in a
batch is scored once, on its newest row. The models themselves are served by
models/serving.py: ``[model] kind = "ensemble"`` (the default) runs
`EnsembleModel`, ``kind = "momentum"`` the transparent `MomentumModel`.
``[model] remote`` makes the worker a bridge to a remote model host
(workers/model_host.py): the same ensemble, run there; its state is the
host's ("degraded" while it does not answer).

A missing, corrupt or mismatching artifact (other features, or other bars
than ``[indicators] bar_seconds``) is a configuration error: the
worker logs the one-line error, reports it in a last heartbeat and exits with
`CONFIG_EXIT` (2); the supervisor then stops the pipeline with that message
instead of restarting the worker into the same error.

The signal rows are built by models/serving.make_signals (a backtest builds its
own there too): action = argmax down / flat / up -> SELL / HOLD / BUY, confidence =
max prob. The signal carries each member's own probabilities (``member_probs``, in the
ensemble's member order, listed in the worker's stats) and its registry
version (``model_versions``, 0 where the member did not run for that row).
"""
from __future__ import annotations

import numpy as np

from models.serving import EnsembleModel, MomentumModel, make_signals
from pipeline.errors import CONFIG_EXIT, ConfigurationError

from .base import Worker
from .model_host import KeysError, RemoteEnsemble, RemoteError


class ModelWorker(Worker):
    role = "model"

    def setup(self) -> None:
        self.features = self.table("features")
        self.out = self.spec.outputs[0]
        self.counters.update(batches=0, signals=0)
        self.ensemble: EnsembleModel | None = None
        if self.cfg.model.remote:
            self.ensemble = self._bridge()
            return
        if self.cfg.model.kind == "ensemble":
            try:
                self.ensemble = EnsembleModel(self.cfg.model.artifacts, self.topo.feature_names,
                                              self.topo.tables["features"].rows,
                                              bar_seconds=self.cfg.indicators.bar_seconds,
                                              symbols=self.topo.symbols.keys)
            except ConfigurationError as e:
                self.config_error(str(e))
            for note in self.ensemble.notes:
                self.log.warning("%s", note)
            self.log.info("serving the ensemble from %s: %s on %s", self.cfg.model.artifacts,
                          self.ensemble.versions, self.ensemble.device)
            return
        ema = [f"ema_{p}" for p in self.cfg.indicators.ema]
        self.model = MomentumModel(ema[0], ema[-1], self.cfg.model.threshold)

    def _bridge(self):
        """The remote model host's ensemble (workers/model_host.py); not answering is a
        degraded stage, refusing this pipeline is a configuration error."""
        try:
            remote = RemoteEnsemble(self.cfg, self.topo.feature_names, self.topo.symbols.keys)
        except KeysError as e:
            self.config_error(str(e))
        try:
            remote.hello()
        except RemoteError as e:
            remote.close()
            self.config_error(str(e))
        self.state = remote.state
        self.log.info("bridge to the model host %s: %s", remote.endpoint,
                      remote.info["versions"] if remote.info else remote.reason)
        return remote

    def on_idle(self) -> None:
        # a bridge's state is the remote stage's: "degraded" while the host does not answer
        if self.cfg.model.remote and self.ensemble is not None and self.state != "blocked":
            self.state = self.ensemble.state

    def close(self) -> None:
        if self.cfg.model.remote and getattr(self, "ensemble", None) is not None:
            self.ensemble.close()
        super().close()

    def config_error(self, message: str) -> None:
        """Log it, tell the supervisor in a last heartbeat (stats ``error``) and exit
        with CONFIG_EXIT; base.run_worker's ``finally`` closes the sockets, lingering
        until that heartbeat is sent."""
        self.log.error("configuration error: %s", message)
        self.state = "error"
        self.error = message
        self._send_heartbeat()
        raise SystemExit(CONFIG_EXIT)

    def stats(self) -> dict:
        out = super().stats()
        if getattr(self, "error", None):
            out["error"] = self.error
        if getattr(self, "ensemble", None) is not None:
            out.update(self.ensemble.stats())
        return out

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
        model = self.ensemble if self.ensemble is not None else self.model
        try:
            sig = make_signals(model, ids, rows, newest["ts_origin_ns"], newest["flags"],
                               self.writers[self.out].seq)
        except ConfigurationError as e:                # the model host refused this pipeline
            self.config_error(str(e))
        self.publish(self.out, sig)
        self.record_latency(sig["ts_origin_ns"])
        for reader in self.readers:
            reader.commit()
        self.counters["batches"] += 1
        self.counters["signals"] += len(sig)
        return True


WORKER = ModelWorker
