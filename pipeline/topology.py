"""The shape of a run, derived from the config: which workers exist, which
rings and tables connect them, and who reads and writes each.

Every process derives the same plan from the same config, so the supervisor
only hands each worker its WorkerSpec (ring specs with their doorbells).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shm.doorbell import Doorbell
from shm.records import BOOK, FILL, INTENT, ORDER, POSITION, SIGNAL, TICK, features_dtype
from shm.ring import LOSSLESS, LOSSY, RingSpec
from shm.segment import segment_name
from shm.table import TableSpec

from .config import Config, feature_names
from .symbols import SymbolRegistry

# the order of stages, upstream first; a clean stop goes in this order so
# every record already in flight is processed before its consumer stops.
# The recorder stops after the indicators: it writes every tick and every bar.
STAGES = ["feed", "indicators", "recorder", "model", "strategy", "execution"]


@dataclass
class WorkerSpec:
    role: str
    index: int
    inputs: list[str] = field(default_factory=list)    # ring names it reads
    outputs: list[str] = field(default_factory=list)   # ring names it writes
    feed: int | None = None                            # index into cfg.feeds for feed workers

    @property
    def id(self) -> str:
        return f"{self.role}.{self.index}"


@dataclass
class Topology:
    run_id: str
    workers: list[WorkerSpec]
    rings: dict[str, RingSpec]
    tables: dict[str, TableSpec]
    symbols: SymbolRegistry
    feature_names: list[str]                            # indicator columns of a feature row
    bells: dict[str, Doorbell] = field(default_factory=dict)  # worker id -> its doorbell

    def worker(self, wid: str) -> WorkerSpec:
        return next(w for w in self.workers if w.id == wid)

    def stage_workers(self, role: str) -> list[WorkerSpec]:
        return [w for w in self.workers if w.role == role]


def shard_of(symbol_id: int, n_shards: int) -> int:
    return symbol_id % n_shards


def needs_books(cfg: Config) -> bool:
    """Whether the run has a ``books`` table (latest order book per symbol, written by the
    feeds with depth): the route trader's, and a run whose feed keeps a depth book (Binance
    ``depth``), whose paper broker then walks it; other runs do not pay for it."""
    return cfg.strategy.kind == "arbitrage" or any("depth" in f.channels for f in cfg.feeds)


def build(cfg: Config, run_id: str, with_bells: bool = False) -> Topology:
    """The run's plan. ``with_bells`` creates the doorbells (supervisor only)."""
    symbols = SymbolRegistry.from_config(cfg)
    n_shards, n_models = cfg.n_shards, cfg.n_model_workers
    rc = cfg.rings
    workers: list[WorkerSpec] = []
    rings: dict[str, RingSpec] = {}

    def ring(name, dtype, cap, policy, readers, observers=()):
        rings[name] = RingSpec(name, segment_name(run_id, name), dtype, cap, policy, readers,
                               observers=list(observers))

    shard_ids = [f"indicators.{i}" for i in range(n_shards)]
    recorder = ["recorder.0"] if cfg.recorder.enabled else []
    # the route trader reads the ticks (its wake-up when a book changes, and the FX market's
    # price), and the orders and fills (which of its legs filled: its inventory)
    arb = cfg.strategy.kind == "arbitrage"
    arb_reader = ["strategy.0"] if arb else []
    # the signals strategy reads them too when it has stops to check on every trade
    stops = not arb and (cfg.strategy.stop_loss > 0 or cfg.strategy.take_profit > 0)
    tick_readers = ["strategy.0"] if arb or stops else []
    for i, feed in enumerate(cfg.feeds):
        out = f"ticks.{feed.name}"
        ring(out, TICK, rc.ticks_capacity, LOSSY, shard_ids + recorder + ["execution.0"] + tick_readers)
        workers.append(WorkerSpec("feed", i, outputs=[out], feed=i))
    if recorder:
        # ticks as a reader of the lossy tick rings; bars as an observer of the
        # lossless features rings, so a slow disk never holds the indicators back
        workers.append(WorkerSpec("recorder", 0, inputs=[f"ticks.{f.name}" for f in cfg.feeds]
                                  + [f"features.{i}" for i in range(n_shards)]))
    names = feature_names(cfg)
    fdt = features_dtype(names)
    for i in range(n_shards):
        out = f"features.{i}"
        ring(out, fdt, rc.features_capacity, LOSSLESS, [f"model.{i % n_models}"], recorder)
        workers.append(WorkerSpec("indicators", i, inputs=[f"ticks.{f.name}" for f in cfg.feeds],
                                  outputs=[out]))
    for j in range(n_models):
        out = f"signals.{j}"
        ring(out, SIGNAL, rc.signals_capacity, LOSSLESS, ["strategy.0"])
        workers.append(WorkerSpec("model", j,
                                  inputs=[f"features.{i}" for i in range(n_shards) if i % n_models == j],
                                  outputs=[out]))
    ring("intents", INTENT, rc.intents_capacity, LOSSLESS, ["execution.0"])
    strategy_inputs = [f"signals.{j}" for j in range(n_models)]
    if arb:
        strategy_inputs += [f"ticks.{f.name}" for f in cfg.feeds] + ["fills", "orders"]
    elif stops:
        strategy_inputs += [f"ticks.{f.name}" for f in cfg.feeds]
    workers.append(WorkerSpec("strategy", 0, inputs=strategy_inputs, outputs=["intents"]))
    ring("orders", ORDER, rc.orders_capacity, LOSSLESS, arb_reader)
    ring("fills", FILL, rc.fills_capacity, LOSSLESS, arb_reader)
    # the ticks (lossy) for the market its risk checks and paper fills see, then the intents
    workers.append(WorkerSpec("execution", 0, inputs=[f"ticks.{f.name}" for f in cfg.feeds] + ["intents"],
                              outputs=["orders", "fills"]))
    tables = {
        "features": TableSpec("features", segment_name(run_id, "tbl.features"), fdt, len(symbols)),
        "positions": TableSpec("positions", segment_name(run_id, "tbl.positions"), POSITION,
                               len(symbols)),
    }
    if needs_books(cfg):
        tables["books"] = TableSpec("books", segment_name(run_id, "tbl.books"), BOOK, len(symbols))
    topo = Topology(run_id, workers, rings, tables, symbols, names)
    if with_bells:
        bells = topo.bells = {w.id: Doorbell() for w in workers}
        for w in workers:
            for name in w.outputs:
                rings[name].writer_bell = bells[w.id]
        for spec in rings.values():
            spec.reader_bells = {r: bells[r] for r in spec.readers + spec.observers}
    return topo
