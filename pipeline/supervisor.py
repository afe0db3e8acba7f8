"""The supervisor: creates a run's segments, spawns and watches its workers,
serves the CLI, feeds the tap, and cleans everything up on every exit path.

`run` starts the run's clock (``--duration``) when ticks first flow, or when no
feed has delivered any FIRST_TICKS_WAIT_S after the feeds started (then it says
so, naming the feeds and their state), so a run always ends; a `Console` prints
the banner at that moment, the warm-up note, and a status line every
STATUS_INTERVAL_S.

Threads: none. One loop polls the ZeroMQ sockets (control, heartbeats, tap
subscriptions) with a short timeout and, between polls, checks children,
restarts, tap publishing and report sampling.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import secrets
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import zmq

from shm import segment
from shm.doorbell import Doorbell
from shm.ring import Ring
from shm.table import Table

from . import bus, topology
from .config import Config, indicator_specs
from .errors import CONFIG_EXIT, UserError
from .metrics import LatencyHistogram
from .symbols import SymbolRegistry
from .tap import TapPublisher
from workers.base import WorkerArgs, run_worker

log = logging.getLogger("supervisor")

LATENCY_STAGES = {"indicators": "tick_to_features", "model": "tick_to_signal",
                  "strategy": "tick_to_intent", "execution": "tick_to_fill"}


STATUS_INTERVAL_S = 5.0       # the live status line of `pipeline start`, in the foreground
FEEDS_DOWN_S = 60.0      # every venue feed down this long, mid-run: one line says so
FIRST_TICKS_WAIT_S = 30.0     # no ticks this long after the feeds started: say so, start the clock


class SupervisorError(RuntimeError):
    """The pipeline cannot start or keep running; the message says why."""


@dataclass
class WorkerState:
    spec: topology.WorkerSpec
    proc: mp.process.BaseProcess | None = None
    state: str = "starting"
    started_at: float = 0.0
    last_hb: float = 0.0
    hb: dict = field(default_factory=dict)
    restarts: int = 0
    restart_times: deque = field(default_factory=deque)
    restart_at: float | None = None
    last_exit: int | None = None
    psproc: psutil.Process | None = None
    carried: dict = field(default_factory=dict)      # counters of the incarnations before this one

    def stats(self) -> dict:
        """The last heartbeat's stats, counters summed over every incarnation."""
        return add_counters(self.carried, self.hb.get("stats", {}))

    def retire(self) -> None:
        """The process is gone: keep its counters, forget its heartbeat."""
        self.carried = counters_of(self.stats())
        self.hb = {}


# counts a worker keeps per process: a restarted worker starts them at zero, and the
# supervisor adds what its predecessors counted, so status and the exit summary count
# the whole run. Other stats (positions, P&L, latencies, states) are as last reported.
COUNTERS = {"in", "out", "dropped", "rejected", "gaps", "emitted", "bars", "timer_closes", "alerts",
            "batches", "signals", "stale_signals", "intents", "orders", "fills", "denied",
            "skipped_replay", "resolved_at_start"}
HEALTH_COUNTERS = {"messages", "malformed", "reconnects", "errors", "rest_calls", "rest_retries",
                   "rejected", "backfilled", "duplicates"}


def add_counters(total: dict, stats: dict, keys: set = COUNTERS) -> dict:
    """``stats`` with ``total``'s counters added to its own (a feed's health too)."""
    out = dict(stats)
    for key, value in total.items():
        if key == "health" and isinstance(value, dict):
            out[key] = add_counters(value, stats.get(key, {}), HEALTH_COUNTERS)
        elif key in keys and isinstance(value, (int, float)) and not isinstance(value, bool):
            mine = stats.get(key, 0)
            out[key] = value + (mine if isinstance(mine, (int, float)) and not isinstance(mine, bool) else 0)
    return out


def counters_of(stats: dict, keys: set = COUNTERS) -> dict:
    """The counters among a worker's stats (the ones `add_counters` sums)."""
    out = {k: v for k, v in stats.items() if k in keys and isinstance(v, (int, float))
           and not isinstance(v, bool)}
    if isinstance(stats.get("health"), dict) and keys is COUNTERS:
        out["health"] = counters_of(stats["health"], HEALTH_COUNTERS)
    return out


# -- manual risk commands (`pipeline halt` / `pipeline resume`) ---------------------------
RISK_ACTIONS = ("halt", "resume")
RISK_TIERS = ("global", "venue", "symbol")
RISK_FIELDS = ("cmd", "action", "tier", "key", "reducing", "reason", "id")
MAX_REASON = 500


def risk_venues(cfg: Config) -> list[str]:
    """The venues the config trades (its feeds' venue names), in config order."""
    return list(dict.fromkeys(f.venue_name for f in cfg.feeds))


def check_risk_command(cfg: Config, req: dict) -> str | None:
    """Why a {"cmd": "risk", ...} request is malformed, or None if it is sound: the action,
    the tier and its key (a venue of the config, a full symbol key "BTC/USDT@binance" of
    the config, None for global), ``reducing`` a bool, ``reason`` a string, ``id`` a
    non-empty string."""
    action, tier, key = req.get("action"), req.get("tier"), req.get("key")
    if action not in RISK_ACTIONS:
        return f"unknown risk action {action!r}; one of {', '.join(RISK_ACTIONS)}"
    if tier not in RISK_TIERS:
        return f"unknown risk tier {tier!r}; one of {', '.join(RISK_TIERS)}"
    if tier == "global" and key is not None:
        return f"the global tier takes no key, not {key!r}"
    if tier == "venue" and key not in risk_venues(cfg):
        return (f"venue {key!r} is not traded by this pipeline "
                f"(venues: {', '.join(risk_venues(cfg))})")
    if tier == "symbol" and key not in SymbolRegistry.from_config(cfg).ids:
        return (f"symbol {key!r} is not traded by this pipeline (give the full key, e.g. "
                f"{SymbolRegistry.from_config(cfg).keys[0]!r})")
    if not isinstance(req.get("reducing"), bool):
        return f"risk 'reducing' must be true or false, not {req.get('reducing')!r}"
    if req.get("reducing") and action != "halt":
        return "'reducing' goes with halt only"
    reason = req.get("reason")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        return f"risk 'reason' must be a string of at most {MAX_REASON} characters"
    cid = req.get("id")
    if not isinstance(cid, str) or not cid or len(cid) > 64:
        return "risk 'id' must be a non-empty string (a uuid4 hex)"
    return None


def risk_summary(exec_stats: list[dict]) -> dict:
    """The risk guard as the execution workers last reported it: ``states`` (every
    non-ACTIVE cause), ``denials`` per code and ``passed`` (totals of the run, which the
    worker restores across restarts, so taken as reported and added across workers only),
    ``commands`` (ids of the manual commands applied). ``reported`` is False until an
    execution heartbeat carries these figures."""
    out = {"reported": False, "states": [], "denials": {}, "passed": 0, "commands": [], "routes": {},
           "hedges_open": {}}
    for st in exec_stats:
        if not any(k in st for k in ("risk_states", "denials", "passed")):
            continue
        out["reported"] = True
        out["states"] += [s for s in st.get("risk_states") or [] if isinstance(s, dict)]
        for code, n in (st.get("denials") or {}).items():
            out["denials"][code] = out["denials"].get(code, 0) + int(n)
        out["passed"] += int(st.get("passed") or 0)
        out["commands"] += list(st.get("risk_commands") or [])
        out["routes"].update(st.get("routes") or {})
        out["hedges_open"].update(st.get("hedges_open") or {})
    return out


def trade_latency(exec_stats: list[dict]) -> dict:
    """Per venue and stage (signal_to_intent, ..., tick_to_fill): count and p50 / p99 /
    p99.9 in us, the execution workers' histograms merged."""
    merged: dict[str, dict[str, LatencyHistogram]] = {}
    for st in exec_stats:
        for venue, stages in (st.get("trade_latency") or {}).items():
            for stage, sparse in (stages or {}).items():
                h = merged.setdefault(venue, {}).setdefault(stage, LatencyHistogram())
                h.merge(LatencyHistogram.from_sparse(sparse or {}))
    return {venue: {stage: h.summary_us() for stage, h in stages.items()}
            for venue, stages in merged.items()}


def state_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.json"


def running_pipelines(run_dir: Path) -> list[dict]:
    """The state of every pipeline whose supervisor is alive in ``run_dir``, by name."""
    if not run_dir.is_dir():
        return []
    states = (read_state(run_dir, p.stem) for p in sorted(run_dir.glob("*.json")))
    return [st for st in states if st is not None and st.get("alive") and "name" in st]


def read_state(run_dir: Path, name: str) -> dict | None:
    """The state file of a pipeline, with ``alive`` set from its supervisor pid."""
    bus.check_run_dir(run_dir)
    path = state_path(run_dir, name)
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as f:
            st = json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    except OSError as e:                       # a link planted in place of the state file
        raise UserError(f"{path}: cannot read the state file ({e.strerror})") from None
    if not isinstance(st, dict):
        return None
    pid = st.get("pid", 0)
    try:
        p = psutil.Process(pid)
        st["alive"] = abs(p.create_time() - st.get("pid_start", 0)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        st["alive"] = False
    return st


class Supervisor:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_dir = cfg.run_dir()
        self.run_id = secrets.token_hex(4)
        self.topo: topology.Topology | None = None
        self.workers: dict[str, WorkerState] = {}
        self.rings: dict[str, Ring] = {}
        self.tables: dict[str, Table] = {}
        self.ctx: zmq.Context | None = None
        self.endpoints = bus.Endpoints.for_run(self.run_dir, self.run_id)
        self.stop_reason: str | None = None
        self.exit_code = 0
        self.started = time.time()
        self._mp = mp.get_context("spawn")
        self._ring_rates: dict[str, tuple[float, int, float]] = {}
        self._next_sample = 0.0
        self._me = psutil.Process()
        self._cleaned = False
        self.launched = time.monotonic()
        self.feeds_started: float | None = None   # when the feeds were spawned
        self.first_ticks: float | None = None     # when the first tick was in a ticks ring
        self.clock_start: float | None = None     # when --duration began to count

    # -- start ----------------------------------------------------------------------
    def start(self) -> None:
        bus.check_run_dir(self.run_dir, create=True)
        existing = read_state(self.run_dir, self.cfg.pipeline.name)
        if existing and existing["alive"]:
            raise SupervisorError(
                f"pipeline '{self.cfg.pipeline.name}' is already running (pid {existing['pid']}, "
                f"run {existing['run_id']}); stop it with 'pipeline stop' or pick another "
                "pipeline.name")
        removed = segment.remove_stale()
        if removed:
            runs = sorted({r.run_id for r in removed})
            print(f"removed {len(removed)} stale shared-memory segments of dead runs "
                  f"{', '.join(runs)}", flush=True)
        if existing and not existing["alive"]:
            self._remove_run_files(existing)
        try:
            self._create()
        except BaseException:
            self.cleanup()
            raise

    def _create(self) -> None:
        cfg = self.cfg
        self.topo = topology.build(cfg, self.run_id, with_bells=True)
        for name, spec in self.topo.rings.items():
            self.rings[name] = Ring.create(spec)
        for name, spec in self.topo.tables.items():
            self.tables[name] = Table.create(spec)
        self.ctx = zmq.Context()
        ep = self.endpoints
        with bus.private_umask():               # every ipc socket owner-only from its creation
            self.control = bus.socket(self.ctx, zmq.REP)
            self.control.bind(ep.control)
            self.heartbeats = bus.socket(self.ctx, zmq.PULL, RCVHWM=10000)
            self.heartbeats.bind(ep.heartbeat)
            self.command = bus.socket(self.ctx, zmq.PUB)
            self.command.bind(ep.command)
            self.tap = TapPublisher(self.ctx, self.topo, self.rings, cfg.bus)
            self.tap.bind(ep.tap)
            if cfg.bus.tap_bind:
                try:
                    self.tap.bind(cfg.bus.tap_bind)
                except zmq.ZMQError as e:
                    raise SupervisorError(f"cannot bind bus.tap_bind {cfg.bus.tap_bind}: {e}") from None
        extra = [cfg.bus.tap_bind[len("ipc://"):]] if cfg.bus.tap_bind.startswith("ipc://") else []
        for path in ep.ipc_paths() + extra:
            if os.path.exists(path):
                os.chmod(path, 0o600)
        self.metrics_server = None
        if cfg.bus.metrics_bind:
            from .metrics import serve_prometheus
            try:
                self.metrics_server = serve_prometheus(cfg.bus.metrics_bind, self.report, self.status)
            except OSError as e:
                log.warning("Prometheus metrics not served: cannot bind %s: %s "
                            "(set bus.metrics_bind to another port, or \"\" to turn it off)",
                            cfg.bus.metrics_bind, e)
        self.poller = zmq.Poller()
        for s in (self.control, self.heartbeats, self.tap.socket):
            self.poller.register(s, zmq.POLLIN)
        for spec in self.topo.workers:
            self.workers[spec.id] = WorkerState(spec)
        self._write_state()
        # feeds start last, once every reader of their rings is up: a fast feed
        # would otherwise lap shards that are still importing
        for ws in self.workers.values():
            if ws.spec.role == "feed":
                ws.state = "waiting"
            else:
                self._spawn(ws)

    def _write_state(self) -> None:
        st = {"name": self.cfg.pipeline.name, "run_id": self.run_id, "pid": os.getpid(),
              "pid_start": self._me.create_time(), "started": self.started,
              "config": self.cfg.source, "endpoints": self.endpoints.__dict__,
              "tap_bind": self.cfg.bus.tap_bind,
              "workers": [w.id for w in self.topo.workers],
              # doorbells are named POSIX semaphores: if the whole process group is
              # killed (the resource tracker with it), the next start unlinks these
              "semaphores": [b.name for b in self.topo.bells.values()]}
        bus.write_private(state_path(self.run_dir, self.cfg.pipeline.name),
                          json.dumps(st, indent=1).encode())

    def _spawn(self, ws: WorkerState) -> None:
        args = WorkerArgs(self.cfg, self.topo, ws.spec.id, self.endpoints, os.getpid(),
                          ws.restarts)
        proc = self._mp.Process(target=run_worker, args=(args,), name=ws.spec.id, daemon=True)
        proc.start()
        ws.proc = proc
        ws.state = "starting"
        ws.started_at = time.monotonic()
        ws.last_hb = 0.0
        ws.restart_at = None
        try:
            ws.psproc = psutil.Process(proc.pid)
            ws.psproc.cpu_percent(None)
        except psutil.Error:
            ws.psproc = None
        log.info("started %s (pid %d)", ws.spec.id, proc.pid)

    # -- main loop --------------------------------------------------------------------
    def run(self, duration: float | None = None, console: "Console | None" = None) -> int:
        """Serve until a stop; ``duration`` seconds count from `clock_start` (the first
        ticks, or the wait for them given up), which ``console`` announces."""
        while self.stop_reason is None:
            now = time.monotonic()
            event = self.check_flow(now)
            if event and console is not None:
                console.on_flow(event, now)
            if self.clock_start is not None:
                if duration and now >= self.clock_start + duration:
                    self.stop_reason = f"duration of {duration:g} s reached"
                    break
                if console is not None:
                    console.update(now)
            self.poll_once(0.05)
        return self.shutdown()

    def ticks_written(self) -> int:
        """Records in the feeds' ticks rings so far (the rings count, not heartbeats)."""
        return sum(self.rings[f"ticks.{f.name}"].stats()["write_seq"] for f in self.cfg.feeds
                   if f"ticks.{f.name}" in self.rings)

    def check_flow(self, now: float) -> str | None:
        """"ticks" the first time a ticks ring holds a record; "no ticks" once, when none
        has FIRST_TICKS_WAIT_S after the feeds started (or after the workers' startup
        timeout plus that, if the feeds never started); else None. Either event starts
        the run's clock."""
        if self.first_ticks is None and self.ticks_written() > 0:
            self.first_ticks = now
            if self.clock_start is None:
                self.clock_start = now
            return "ticks"
        if self.clock_start is None:
            since = (self.feeds_started if self.feeds_started is not None
                     else self.launched + self.cfg.pipeline.startup_timeout_s)
            if now - since >= FIRST_TICKS_WAIT_S:
                self.clock_start = now
                return "no ticks"
        return None

    def no_ticks_note(self, now: float) -> str:
        """One line: no feed has delivered ticks, and where each one stands."""
        if self.feeds_started is None:
            late = [ws.spec.id for ws in self.workers.values()
                    if ws.state != "waiting" and not ws.last_hb]
            why = (f"the feeds wait for the first heartbeat of {', '.join(late)}" if late
                   else "the feeds have not started")
            return (f"no feed has delivered ticks {now - self.launched:.0f} s after the start: "
                    f"{why}; --duration counts from now")
        feeds = ", ".join(f"{h['name']} ({h['health'].get('state', '?')})" for h in self.feed_health())
        return (f"no feed has delivered ticks {now - self.feeds_started:.0f} s after the feeds "
                f"started: {feeds}; --duration counts from now")

    def poll_once(self, timeout: float) -> None:
        events = dict(self.poller.poll(int(timeout * 1000)))
        if self.heartbeats in events:
            self._drain_heartbeats()
        if self.control in events:
            self._serve_control()
        if self.tap.socket in events:
            self.tap.on_subscriptions()
        self.tap.publish()
        self._watch_children()
        if self._sample():
            self.tap.publish_health(self.feed_health())

    def _drain_heartbeats(self) -> None:
        now = time.monotonic()
        while True:
            try:
                msg = bus.recv_json(self.heartbeats, zmq.NOBLOCK)
            except zmq.Again:
                return
            ws = self.workers.get(msg.get("id"))
            if ws is None or ws.proc is None or msg.get("pid") != ws.proc.pid:
                continue  # a heartbeat from an incarnation we already replaced
            ws.last_hb = now
            ws.hb = msg
            stats = msg.get("stats")
            if isinstance(stats, dict) and (stats.get("risk_events") or stats.get("risk_events_dropped")):
                self.tap.publish_risk(ws.spec.id, stats.get("risk_events") or [],
                                      stats.get("risk_events_dropped") or 0)
            # "stopped" is the supervisor's word alone: a worker that leaves without
            # being asked is restarted like any other dead worker
            if ws.state in ("starting", "running", "blocked", "degraded") and msg.get("state") in (
                    "running", "blocked", "degraded"):
                ws.state = msg["state"]

    def _watch_children(self) -> None:
        now = time.monotonic()
        pc = self.cfg.pipeline
        waiting = [ws for ws in self.workers.values() if ws.state == "waiting"]
        if waiting and all(ws.last_hb for ws in self.workers.values() if ws.state != "waiting"):
            for ws in waiting:
                self._spawn(ws)
            if self.feeds_started is None:
                self.feeds_started = now
        for ws in self.workers.values():
            if ws.state in ("stopped", "failed", "waiting"):
                continue
            if ws.restart_at is not None:
                if now >= ws.restart_at:
                    self._spawn(ws)
                continue
            proc = ws.proc
            if proc is None:
                continue
            if proc.exitcode is not None:
                ws.last_exit = proc.exitcode
                proc.join(0)
                if proc.exitcode == CONFIG_EXIT:
                    self._on_config_error(ws)
                    return
                self._on_death(ws, f"exited with code {proc.exitcode}")
                continue
            silent = now - (ws.last_hb or ws.started_at)
            limit = pc.heartbeat_timeout_s if ws.last_hb else pc.startup_timeout_s
            if silent > limit:
                log.error("%s sent no heartbeat for %.1f s; killing it", ws.spec.id, silent)
                proc.kill()
                proc.join(5)
                self._on_death(ws, "stopped heartbeating")

    def _on_config_error(self, ws: WorkerState) -> None:
        """A worker exited with CONFIG_EXIT: restarting it would meet the same error
        (a bad artifact, a feature mismatch), so the pipeline stops with its message."""
        self._drain_heartbeats()             # its last heartbeat carries the message
        hb = ws.hb or {}
        why = hb.get("stats", {}).get("error") if hb.get("pid") == ws.proc.pid else None
        ws.proc = None
        ws.psproc = None
        ws.state = "failed"
        self.stop_reason = f"{ws.spec.id} configuration error: {why or 'see its log above'}"
        self.exit_code = CONFIG_EXIT
        log.error("%s", self.stop_reason)

    def _on_death(self, ws: WorkerState, why: str) -> None:
        pc = self.cfg.pipeline
        now = time.monotonic()
        self._drain_heartbeats()             # its last words, if any, count
        ws.retire()
        ws.proc = None
        ws.psproc = None
        while ws.restart_times and now - ws.restart_times[0] > pc.restart_window_s:
            ws.restart_times.popleft()
        if len(ws.restart_times) >= pc.max_restarts:
            ws.state = "failed"
            self.stop_reason = (f"{ws.spec.id} {why} and was restarted {len(ws.restart_times)} "
                                f"times in {pc.restart_window_s:g} s; giving up")
            self.exit_code = 1
            log.error("%s", self.stop_reason)
            return
        delay = min(pc.restart_backoff_s * 2 ** len(ws.restart_times), 10.0)
        ws.restart_times.append(now)
        ws.restarts += 1
        ws.state = "restarting"
        ws.restart_at = now + delay
        log.warning("%s %s; restarting in %.1f s (restart %d)", ws.spec.id, why, delay, ws.restarts)

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    # -- control ------------------------------------------------------------------------
    def _serve_control(self) -> None:
        try:
            req = bus.recv_json(self.control, zmq.NOBLOCK)
        except zmq.Again:
            return
        except json.JSONDecodeError:
            bus.send_json(self.control, {"ok": False, "error": "request is not JSON"})
            return
        cmd = req.get("cmd")
        if cmd == "status":
            reply = {"ok": True, **self.status()}
        elif cmd == "report":
            reply = {"ok": True, **self.report()}
        elif cmd == "stop":
            self.request_stop("stop requested by 'pipeline stop'")
            reply = {"ok": True, "stopping": True}
        elif cmd == "risk":
            reply = self.risk_command(req)
        else:
            reply = {"ok": False, "error": f"unknown command {cmd!r}"}
        bus.send_json(self.control, reply)

    def risk_command(self, req: dict) -> dict:
        """A halt or resume from the CLI: checked, then published to execution, whose
        heartbeat lists the ids it applied (``risk_commands``) once it has."""
        why = check_risk_command(self.cfg, req)
        if why:
            return {"ok": False, "error": why}
        msg = {k: req[k] for k in RISK_FIELDS}
        bus.send_json(self.command, {**msg, "target": "execution"})
        execs = [ws for ws in self.workers.values() if ws.spec.role == "execution"]
        for ws in execs:                     # an idle execution worker sees it now
            self.topo.bells[ws.spec.id].ring()
        log.warning("risk %s%s of %s %s sent to execution (id %s): %s", msg["action"],
                    " (reducing)" if msg["reducing"] else "", msg["tier"], msg["key"] or "",
                    msg["id"], msg["reason"] or "no reason given")
        return {"ok": True, "id": msg["id"],
                "execution": {ws.spec.id: ws.state for ws in execs}}

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "name": self.cfg.pipeline.name, "run_id": self.run_id, "pid": os.getpid(),
            "started": self.started, "uptime_s": round(time.time() - self.started, 1),
            "config": self.cfg.source,
            "workers": [{"id": ws.spec.id, "role": ws.spec.role, "state": ws.state,
                         "pid": ws.proc.pid if ws.proc else None, "restarts": ws.restarts,
                         "heartbeat_age_s": round(now - ws.last_hb, 2) if ws.last_hb else None,
                         "stats": ws.stats()}
                        for ws in self.workers.values()],
        }

    def _sample(self) -> bool:
        """Every report interval: ring write rates and process CPU %. True if sampled."""
        now = time.monotonic()
        if now < self._next_sample:
            return False
        self._next_sample = now + self.cfg.bus.report_interval_s
        for name, ring in self.rings.items():
            w = ring.stats()["write_seq"]
            prev = self._ring_rates.get(name)
            rate = 0.0
            if prev is not None and now > prev[0]:
                rate = (w - prev[1]) / (now - prev[0])
            self._ring_rates[name] = (now, w, rate)
        self._cpu = {"supervisor": self._me.cpu_percent(None)}
        for ws in self.workers.values():
            if ws.psproc is not None:
                try:
                    self._cpu[ws.spec.id] = ws.psproc.cpu_percent(None)
                except psutil.Error:
                    pass
        return True

    def report(self) -> dict:
        procs = []
        cpu = getattr(self, "_cpu", {})
        entries = [("supervisor", "supervisor", self._me)] + [
            (ws.spec.id, ws.spec.role, ws.psproc) for ws in self.workers.values()]
        for wid, role, p in entries:
            if p is None:
                procs.append({"id": wid, "role": role, "pid": None, "state": "down"})
                continue
            try:
                with p.oneshot():
                    procs.append({"id": wid, "role": role, "pid": p.pid,
                                  "cpu_percent": round(cpu.get(wid, 0.0), 1),
                                  "rss_mb": round(p.memory_info().rss / 2**20, 1),
                                  "threads": p.num_threads(), "fds": p.num_fds()})
            except psutil.Error:
                procs.append({"id": wid, "role": role, "pid": p.pid, "state": "gone"})
        rings = []
        for name, ring in self.rings.items():
            st = ring.stats()
            st["write_rate_per_s"] = round(self._ring_rates.get(name, (0, 0, 0.0))[2], 1)
            rings.append(st)
        stages = {}
        for role, stage in LATENCY_STAGES.items():
            h = LatencyHistogram()
            for ws in self.workers.values():
                if ws.spec.role == role and ws.hb.get("latency"):
                    h.merge(LatencyHistogram.from_sparse(ws.hb["latency"]))
            stages[stage] = h.summary_us()
        execs = [ws.stats() for ws in self.workers.values() if ws.spec.role == "execution"]
        routes: dict = {}                       # the route trader's routes, as it last said
        for ws in self.workers.values():
            if ws.spec.role == "strategy" and isinstance(ws.stats().get("routes"), dict):
                routes.update(ws.stats()["routes"])
        return {"name": self.cfg.pipeline.name, "run_id": self.run_id, "routes": routes,
                "uptime_s": round(time.time() - self.started, 1),
                "processes": procs, "rings": rings, "latency": stages,
                "feeds": self.feed_health(), "models": self.model_health(),
                "risk": risk_summary(execs), "trade_latency": trade_latency(execs),
                "tap": self.tap.stats()}

    def model_health(self) -> list[dict]:
        """Each model worker's stage: state ("degraded" while a remote host does not
        answer), where it runs, and its inference latency, as its last heartbeat told it."""
        out = []
        for ws in self.workers.values():
            if ws.spec.role != "model":
                continue
            st = ws.stats()
            out.append({"id": ws.spec.id, "state": ws.state, "model": st.get("model", "momentum"),
                        "remote": st.get("remote", ""), "reason": st.get("remote_reason", ""),
                        "device": st.get("device"), "versions": st.get("versions", {}),
                        "infer_ms_p50": st.get("infer_ms_p50"), "infer_ms_p99": st.get("infer_ms_p99"),
                        "stale_signals": st.get("stale_signals", 0)})
        return out

    def feed_health(self) -> list[dict]:
        """Each feed's exchange health, as its last heartbeat told it."""
        out = []
        for ws in self.workers.values():
            if ws.spec.role != "feed":
                continue
            feed = self.cfg.feeds[ws.spec.feed]
            stats = ws.stats()
            out.append({"id": ws.spec.id, "name": feed.name, "kind": feed.kind,
                        "venue": feed.venue_name, "emitted": stats.get("emitted", 0),
                        "health": stats.get("health", {"state": ws.state})})
        return out

    # -- stop -------------------------------------------------------------------------
    def shutdown(self) -> int:
        """Stop stage by stage, upstream first, so records in flight are processed."""
        log.info("stopping: %s", self.stop_reason)
        for role in topology.STAGES:
            group = [ws for ws in self.workers.values() if ws.spec.role == role]
            for ws in group:
                ws.restart_at = None
            self._send_stop(role, group)
            deadline = time.monotonic() + self.cfg.pipeline.stop_timeout_s
            while any(ws.proc is not None and ws.proc.exitcode is None for ws in group):
                if time.monotonic() > deadline:
                    for ws in group:
                        if ws.proc is not None and ws.proc.exitcode is None:
                            log.error("%s did not stop in time; killing it", ws.spec.id)
                            ws.proc.kill()
                    break
                # keep serving heartbeats and the CLI while we wait; resend in case
                # a worker subscribed after the first stop was published
                events = dict(self.poller.poll(50))
                if self.heartbeats in events:
                    self._drain_heartbeats()
                if self.control in events:
                    self._serve_control()
                self._send_stop(role, group)
            for ws in group:
                if ws.proc is not None:
                    ws.proc.join(5)
                    ws.last_exit = ws.proc.exitcode
                if ws.state != "failed":
                    ws.state = "stopped"
        self._drain_heartbeats()
        self.final_report = self.report()
        self.cleanup()
        return self.exit_code

    def _send_stop(self, role: str, group: list[WorkerState]) -> None:
        """Publish stop, then ring the workers' doorbells so that idle ones see it now."""
        bus.send_json(self.command, {"cmd": "stop", "target": role})
        for ws in group:
            self.topo.bells[ws.spec.id].ring()

    def cleanup(self) -> None:
        """Release everything: children, segments, sockets, files. Safe to call twice."""
        if self._cleaned:
            return
        self._cleaned = True
        server = getattr(self, "metrics_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
            self.metrics_server = None
        for ws in self.workers.values():
            if ws.proc is not None and ws.proc.exitcode is None:
                ws.proc.kill()
                ws.proc.join(5)
        if getattr(self, "tap", None) is not None:
            self.tap.close()
        for obj in list(self.rings.values()) + list(self.tables.values()):
            try:
                obj.close()
            except Exception:
                pass
        for obj in list(self.rings.values()) + list(self.tables.values()):
            obj.seg.unlink()
        segment.remove_run(self.run_id)
        if self.ctx is not None:
            for s in ("control", "heartbeats", "command"):
                sock = getattr(self, s, None)
                if sock is not None:
                    sock.close()
            self.ctx.term()
        bus.remove_ipc_files(self.endpoints)
        st = read_state(self.run_dir, self.cfg.pipeline.name)
        if st and st.get("run_id") == self.run_id:
            state_path(self.run_dir, self.cfg.pipeline.name).unlink(missing_ok=True)

    def _remove_run_files(self, st: dict) -> None:
        """Leftovers of a supervisor that was killed: its state file and sockets."""
        for ep in st.get("endpoints", {}).values():
            if ep.startswith("ipc://"):
                Path(ep[6:]).unlink(missing_ok=True)
        state_path(self.run_dir, st["name"]).unlink(missing_ok=True)
        segment.remove_run(st["run_id"])
        for name in st.get("semaphores", []):
            Doorbell.unlink(name)


# -- the foreground console of `pipeline start` ---------------------------------------------
# bars before an indicator's first value (TA-Lib's lookback, as models/ta.py computes it;
# tests/test_start_banner.py checks these against the engine)
LOOKBACK = {
    "ema": lambda p: p[0] - 1, "sma": lambda p: p[0] - 1, "rsi": lambda p: p[0],
    "macd": lambda p: p[1] - 1 + p[2] - 1, "bbands": lambda p: p[0] - 1, "atr": lambda p: p[0],
    "stoch": lambda p: p[0] - 1 + p[1] - 1 + p[2] - 1, "obv": lambda p: 0,
    "vwap": lambda p: p[0] - 1, "volatility": lambda p: p[0], "volume_z": lambda p: p[0] - 1,
}


def warmup_bars(cfg: Config) -> int:
    """Closed bars a symbol needs before the model can give a trading signal: the
    momentum rule reads its two EMAs; the ensemble every indicator (a NaN input gives
    HOLD with FLAG_WARMUP). The first bar after the start is partial, so this many bar
    lengths is how long it takes at most."""
    if cfg.model.kind == "momentum":
        ema = cfg.indicators.ema
        specs = [("ema", (ema[0],)), ("ema", (ema[-1],))] if ema else []
    else:
        specs = indicator_specs(cfg.indicators)
    return 1 + max((int(LOOKBACK[kind](params)) for kind, params in specs), default=0)


def _secs(x: float) -> str:
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


def warmup_note(cfg: Config) -> str:
    bars, bar_s = warmup_bars(cfg), cfg.indicators.bar_seconds
    return (f"indicators warming up: about {_secs(bars * bar_s)} s ({bars} bars of {bar_s:g} s) "
            "before the first trading signal")


class Console:
    """What `pipeline start` prints in the foreground while the pipeline runs: the
    banner once ticks flow (or once the wait for them is given up, after a line that
    says so), the warm-up note once, and every ``interval`` seconds a status line
    (uptime, ticks/s, signals, intents, fills, realized P&L, open positions, equity,
    and the risk tiers that are not ACTIVE). ``quiet``: no status line and no warm-up
    note; the banner and the warnings still print."""

    def __init__(self, sup: Supervisor, banner: list[str], quiet: bool = False,
                 interval: float | None = None, out=None):
        self.sup, self.banner, self.quiet = sup, banner, quiet
        self.interval = STATUS_INTERVAL_S if interval is None else interval
        self.out = out if out is not None else sys.stdout
        self.warmup_s = warmup_bars(sup.cfg) * sup.cfg.indicators.bar_seconds
        self.shown = False
        self._last: tuple[float, int] | None = None
        self._next = 0.0
        self._down_since: float | None = None     # every venue feed down since then
        self._down_said = False

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def on_flow(self, event: str, now: float) -> None:
        sup = self.sup
        if event == "no ticks":
            self._print(sup.no_ticks_note(now))
        elif self.shown:                      # ticks at last, after the wait was given up
            self._print(f"first ticks {_secs(now - sup.launched)} s after the start")
        if not self.shown:
            self.shown = True
            for line in self.banner:
                self._print(line)
            self._last = (now, self.emitted())
            self._next = now + self.interval
        if event == "ticks" and not self.quiet:
            self._print(warmup_note(sup.cfg))

    def watch_feeds(self, now: float) -> None:
        """A warning (printed even when quiet) once every venue feed has been down for
        FEEDS_DOWN_S, naming each with its state and last error; and a line when one is
        back. Feeds without a connection (synthetic, replay) are never down."""
        feeds = [(ws.spec.id, ws.stats().get("health")) for ws in self.sup.workers.values()
                 if ws.spec.role == "feed"]
        venues = [(wid, h) for wid, h in feeds if isinstance(h, dict) and h.get("state")
                  in ("connected", "polling", "connecting", "disconnected", "error")]
        down = bool(venues) and all(h["state"] not in ("connected", "polling") for _, h in venues)
        if not down:
            if self._down_said:
                self._print(f"feeds connected again after {_secs(now - self._down_since)} s down")
            self._down_since, self._down_said = None, False
            return
        if self._down_since is None:
            self._down_since = now
        if not self._down_said and now - self._down_since >= FEEDS_DOWN_S:
            self._down_said = True
            named = ", ".join(f"{wid} {h['state']}" + (f" ({h['last_error']})" if h.get("last_error") else "")
                              for wid, h in venues)
            self._print(f"no feed connected for {_secs(now - self._down_since)} s: {named}; their venues "
                        f"only reduce positions until one is back (check the network)")

    def emitted(self) -> int:
        return sum(ws.stats().get("emitted", 0) for ws in self.sup.workers.values()
                   if ws.spec.role == "feed")

    def update(self, now: float) -> None:
        if self.shown:
            self.watch_feeds(now)
        if self.quiet or not self.shown or now < self._next:
            return
        self._next = now + self.interval
        self._print(self.status_line(now))

    def status_line(self, now: float) -> str:
        sup = self.sup
        emitted = self.emitted()
        t0, e0 = self._last or (now, emitted)
        rate = (emitted - e0) / (now - t0) if now > t0 else 0.0
        self._last = (now, emitted)

        def total(role: str, key: str) -> int:
            return sum(int(ws.stats().get(key, 0) or 0) for ws in sup.workers.values()
                       if ws.spec.role == role)
        execs = [ws.stats() for ws in sup.workers.values() if ws.spec.role == "execution"]
        pnl = sum(float(st.get("realized_pnl", 0.0) or 0.0) for st in execs)
        fees = sum(float(st.get("fees", 0.0) or 0.0) for st in execs)
        parts = [f"up {_secs(now - sup.clock_start)} s", f"{rate:.0f} ticks/s",
                 f"signals {total('model', 'signals')}", f"intents {total('strategy', 'intents')}",
                 f"fills {total('execution', 'fills')}", f"realized P&L {pnl:+.2f} (fees {fees:.2f})",
                 f"open positions {total('execution', 'open_positions')}"]
        # 0.0 until execution first marks its account (its first intent): not shown till then
        equity = [st["equity"] for st in execs if isinstance(st.get("equity"), (int, float))]
        if equity and any(equity):
            parts.append(f"equity {sum(equity):.2f}")
        if sup.first_ticks is None:
            parts.append("no ticks yet")
        elif now - sup.first_ticks < self.warmup_s:
            parts.append(f"warming up, about {_secs(self.warmup_s - (now - sup.first_ticks))} s left")
        risk = [s for st in execs for s in st.get("risk_states") or [] if isinstance(s, dict)]
        if risk:
            parts.append("risk: " + "; ".join(
                f"{s.get('tier', '?')}{' ' + str(s['key']) if s.get('key') else ''} "
                f"{s.get('state', '?')} ({'manual' if s.get('manual') else s.get('code') or '?'})"
                for s in risk))
        return ", ".join(parts)


def install_signal_handlers(sup: Supervisor) -> None:
    def handler(signum, frame):
        sup.request_stop(f"received {signal.Signals(signum).name}")
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
