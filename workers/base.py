"""What every worker process shares: attach to its rings, loop, heartbeat.

A worker drains its input rings in batches, does its work, and sleeps on its
doorbell when there is nothing to do. Housekeeping runs between batches at
the heartbeat interval: a heartbeat over ZeroMQ (state, counters, latency
histogram), supervisor commands, and a check that the supervisor is still
alive. Heartbeats come from the main loop itself, so a stuck loop is noticed.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np
import zmq

from pipeline import bus, logs
from pipeline.clock import Clock, LiveClock
from pipeline.collector import StepCollector
from pipeline.config import Config
from pipeline.metrics import LatencyHistogram
from pipeline.topology import Topology, WorkerSpec
from shm import segment
from shm.ring import Ring, RingFullError, RingReader, RingWriter, wait_any
from shm.table import Table

ROLE_MODULES = {"feed": "workers.feed", "indicators": "workers.indicators",
                "model": "workers.model", "strategy": "workers.strategy.worker",
                "execution": "workers.execution.worker",
                "recorder": "workers.recorder"}


@dataclass
class WorkerArgs:
    """Everything a spawned worker gets; pickled once at spawn."""
    cfg: Config
    topology: Topology
    worker_id: str
    endpoints: bus.Endpoints
    supervisor_pid: int
    restart_count: int = 0


class Worker:
    role = "worker"
    spin_us = 0.0
    # the garbage collector run between steps, not inside them (pipeline/collector.py): for the
    # workers on the tick-to-fill path whose state is plain Python (not TensorFlow's)
    collect_between_steps = False

    def __init__(self, args: WorkerArgs):
        self.args = args
        self.cfg = args.cfg
        self.topo = args.topology
        self.spec: WorkerSpec = self.topo.worker(args.worker_id)
        self.id = self.spec.id
        self.log = logging.getLogger(self.id)
        self.stopping = False
        self.state = "starting"
        self.latency = LatencyHistogram()
        self.clock: Clock = LiveClock()   # what the cores are given; a backtest gives a SimClock
        self.counters: dict[str, int] = {"in": 0, "out": 0, "dropped": 0, "rejected": 0}
        self._rings: list[Ring] = []
        self._tables: list[Table] = []
        self.readers: list[RingReader] = []
        self.writers: dict[str, RingWriter] = {}
        self.bell = None
        self._ctx = zmq.Context()
        # linger so that the last heartbeat (final counters) reaches the supervisor
        self._hb = bus.socket(self._ctx, zmq.PUSH, SNDHWM=100, LINGER=1000)
        self._cmd = bus.socket(self._ctx, zmq.SUB)
        self._hb_seq = 0
        self._hb_lock = threading.Lock()      # the main loop and the network-wait pulse share _hb
        self._next_house = 0.0
        self._blocked_since: float | None = None
        self._net_wait: tuple[str, float, float] | None = None   # (what, since, deadline)
        self._pulse: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------
    def attach(self) -> None:
        ep = self.args.endpoints
        self._hb.connect(ep.heartbeat)
        self._cmd.connect(ep.command)
        self._cmd.setsockopt(zmq.SUBSCRIBE, b"")
        for name in self.spec.inputs:
            ring = Ring.attach(self.topo.rings[name])
            self._rings.append(ring)
            reader = ring.reader(self.id)
            self.bell = reader.bell or self.bell
            self.readers.append(reader)
        for name in self.spec.outputs:
            ring = Ring.attach(self.topo.rings[name])
            self._rings.append(ring)
            self.writers[name] = ring.writer()
            self.bell = self.bell or ring.spec.writer_bell

    def table(self, name: str) -> Table:
        t = Table.attach(self.topo.tables[name])
        self._tables.append(t)
        return t

    def setup(self) -> None:
        """Role-specific initialisation after the rings are attached."""

    def step(self) -> bool:
        """Process what is available; return True if anything was done."""
        return False

    def on_idle(self) -> None:
        """Called at housekeeping time (timers, e.g. closing quiet bars)."""

    def finish(self) -> None:
        """Called once after the last drain on a clean stop."""

    def idle_wait(self, timeout: float) -> None:
        if self.readers:
            wait_any(self.readers, self.bell, timeout, self.spin_us)
        elif self.bell is not None:
            self.bell.wait(timeout)
        else:
            time.sleep(timeout)

    def run(self) -> int:
        self.attach()
        self.setup()
        self.state = "running"
        self._housekeeping(force=True)
        interval = self.cfg.pipeline.heartbeat_interval_s
        collector = self.collector = StepCollector() if self.collect_between_steps else None
        if collector is not None:
            collector.start()
        while not self.stopping:
            did = self.step()
            if collector is not None:
                collector.between_steps(idle=not did)
            now = time.monotonic()
            if now >= self._next_house:
                self._housekeeping()
            elif not did:
                self.idle_wait(max(0.0, min(self._next_house - now, interval)))
                if self._cmd.poll(0):  # woken by the supervisor (stop): act now
                    self._housekeeping()
        # clean stop: everything already in our input rings is processed first
        deadline = time.monotonic() + self.cfg.pipeline.stop_timeout_s / 2
        while self.step() and time.monotonic() < deadline:
            pass
        self.finish()
        self.state = "stopped"
        self._send_heartbeat()
        return 0

    def close(self) -> None:
        """Release everything. Cursors are not committed here: a worker commits
        what it has processed, so after a crash its successor reads the rest again."""
        self.readers.clear()
        self.writers.clear()
        for obj in self._rings + self._tables:
            obj.close()
        self._hb.close()
        self._cmd.close()
        self._ctx.term()

    # -- housekeeping -------------------------------------------------------------
    def _housekeeping(self, force: bool = False) -> None:
        self._next_house = time.monotonic() + self.cfg.pipeline.heartbeat_interval_s
        self._check_commands()
        self._check_parent()
        self.on_idle()
        self._send_heartbeat()

    def _check_commands(self) -> None:
        while True:
            try:
                msg = bus.recv_json(self._cmd, zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg.get("target", "*") not in ("*", self.spec.role, self.id):
                continue
            if msg.get("cmd") == "stop":
                self.stopping = True
            else:
                self.on_command(msg)

    def on_command(self, msg: dict) -> None:
        """A supervisor command other than stop, addressed to this worker (``target``
        "*", its role or its id), e.g. {"cmd": "risk", ...} to execution."""

    def _check_parent(self) -> None:
        if os.getppid() != self.args.supervisor_pid:
            # the supervisor died without cleaning up (kill -9): leave nothing behind
            n = segment.remove_run(self.topo.run_id)
            self.log.error("supervisor %d is gone; exiting (removed %d segments)",
                           self.args.supervisor_pid, n)
            self.close()
            os._exit(3)

    def stats(self) -> dict:
        return {**self.counters, **self.collector_stats()}

    def collector_stats(self) -> dict:
        collector = getattr(self, "collector", None)
        return collector.stats() if collector is not None else {}

    def _send_heartbeat(self) -> None:
        with self._hb_lock:
            self._hb_seq += 1
            msg = {"id": self.id, "pid": os.getpid(), "seq": self._hb_seq, "state": self.state,
                   "stats": self.stats(), "latency": self.latency.to_sparse()}
            if self._net_wait is not None:
                what, since, _ = self._net_wait
                msg["waiting_on"] = {"what": what, "seconds": round(time.monotonic() - since, 1)}
            try:
                bus.send_json(self._hb, msg, zmq.NOBLOCK)
            except zmq.Again:
                pass

    @contextlib.contextmanager
    def network_wait(self, what: str, limit_s: float):
        """Around a call that waits on a peer (a REST request with its retries, a
        websocket connect) and that gives up by itself within ``limit_s``: heartbeats go
        on from a helper thread meanwhile, so a slow venue does not get a healthy feed
        killed. For one heartbeat timeout past ``limit_s`` at most: a call stuck beyond
        its own limit stops the pulse, and the supervisor restarts the worker as hung."""
        if self._net_wait is not None:              # nested: the outer wait covers it
            yield
            return
        now = time.monotonic()
        self._net_wait = (what, now, now + limit_s + self.cfg.pipeline.heartbeat_timeout_s)
        if self._pulse is None or not self._pulse.is_alive():
            self._pulse = threading.Thread(target=self._pulse_loop, name="heartbeat-pulse",
                                           daemon=True)
            self._pulse.start()
        try:
            yield
        finally:
            self._net_wait = None

    def _pulse_loop(self) -> None:
        interval = self.cfg.pipeline.heartbeat_interval_s
        while True:
            wait = self._net_wait
            if wait is None or self.stopping:
                return
            what, since, deadline = wait
            if time.monotonic() > deadline:
                self.log.error("waiting on %s for %.0f s, past its own limit; heartbeats stop",
                               what, time.monotonic() - since)
                return
            time.sleep(interval)          # a pacing timer between heartbeats, not a sync
            if self._net_wait is wait:
                try:
                    self._send_heartbeat()
                except RuntimeError:      # a stats dict changed under us: the next beat will do
                    pass

    # -- helpers for subclasses -----------------------------------------------------
    def drain(self):
        """Each input ring's available batch, as (reader, batch); records lost to a
        lap are counted (``dropped``, ``gaps``) and logged before the batch is
        handed over, so the caller only has to mark the gap in its own output."""
        for reader in self.readers:
            batch = reader.read()
            if batch is None:
                continue
            if batch.dropped:
                self.counters["dropped"] += batch.dropped
                self.counters["gaps"] = self.counters.get("gaps", 0) + 1
                self.log.warning("lapped on %s: %d records lost before seq %d",
                                 reader.ring.spec.name, batch.dropped, batch.first_seq)
            yield reader, batch

    def publish(self, ring_name: str, records: np.ndarray) -> None:
        """Write to an output ring; on a lossless ring, wait as long as it takes,
        heartbeating and reporting backpressure while blocked."""
        writer = self.writers[ring_name]
        total = len(records)
        timeout = self.cfg.rings.lossless_timeout_s
        while True:
            try:
                writer.write(records, timeout=min(timeout, self.cfg.pipeline.heartbeat_interval_s))
                if self._blocked_since is not None:
                    self.log.warning("backpressure on %s cleared after %.1f s", ring_name,
                                     time.monotonic() - self._blocked_since)
                    self._blocked_since = None
                    self.state = "running"
                break
            except RingFullError as e:
                records = records[e.written:]
                now = time.monotonic()
                if self._blocked_since is None:
                    self._blocked_since = now
                elif self.state != "blocked" and now - self._blocked_since >= timeout:
                    self.state = "blocked"
                    self.log.error("backpressure: %s", e)
                self._housekeeping()
        self.counters["out"] += total

    def record_latency(self, ts_origin_ns: np.ndarray) -> None:
        self.latency.add(self.clock.time_ns() - ts_origin_ns.astype(np.int64))


def run_worker(args: WorkerArgs) -> None:
    """Spawn target. Ctrl-C in the terminal reaches the whole process group, so
    workers ignore SIGINT and stop only when the supervisor says so; a direct
    SIGTERM also stops the worker cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.configure(args.worker_id)
    role = args.worker_id.split(".")[0]
    module = importlib.import_module(ROLE_MODULES[role])
    worker: Worker = module.WORKER(args)

    def on_term(signum, frame):
        worker.stopping = True
    signal.signal(signal.SIGTERM, on_term)
    code = 1
    try:
        code = worker.run()
    except Exception:
        logging.getLogger(args.worker_id).error("crashed:\n%s", traceback.format_exc())
        code = 1
    finally:
        try:
            worker.close()
        except Exception:
            pass
    sys.exit(code)
