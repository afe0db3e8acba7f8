"""The whole pipeline as a user runs it: `pipeline start` in a subprocess, and
status / report / tap / stop from other processes, kill -9 of workers and of
the supervisor, and the promise that nothing is left behind.

Waits are on events (a tap record arriving, a process exiting) or on status
polled against a generous deadline; there is no fixed sleep.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import write_config

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 90  # generous: a loaded 2-core machine spawning 6+ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pipeline:
    """A `pipeline start` subprocess and the CLI pointed at it."""

    def __init__(self, tmp: Path, name: str = "t", workers: int = 4, hb_timeout: float = 10.0,
                 max_restarts: int = 5, tap_bind: str = "", metrics_bind: str = "",
                 config: Path | None = None, **sections):
        """Runs ``config``, or else the fast test pipeline (conftest's FAST) with these
        settings and ``sections`` (fast_config's overrides) written to tmp/<name>.toml."""
        self.tmp = tmp
        if config is None:
            config = write_config(tmp, name, bus={"tap_bind": tap_bind, "metrics_bind": metrics_bind},
                                  pipeline={"workers": workers, "heartbeat_timeout_s": hb_timeout,
                                            "max_restarts": max_restarts}, **sections)
        else:
            name = config.stem
        self.name = name
        self.config = config
        self.env = {**os.environ, "TICKPIPE_RUN_DIR": str(tmp / "run"),
                    "TICKPIPE_LOG_LEVEL": "WARNING"}
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"{name}.log"
        # how `start` runs the CLI: `python -m pipeline`, as a user does (a test may put a
        # `-c` script here that sets a module constant first)
        self.entry = ["-m", "pipeline"]

    def cli(self, *args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", *args, "--config", str(self.config)],
                              env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *extra) -> "Pipeline":
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, *self.entry, "start", "--config", str(self.config), *extra],
            env=self.env, cwd=ROOT, stdout=self._logf, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        return self

    def output(self) -> str:
        return self.log.read_text()

    def status(self) -> dict:
        r = self.cli("status", "--json")
        return json.loads(r.stdout)

    def wait_status(self, pred, what: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        st = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"pipeline exited early:\n{self.output()}"
            st = self.status()  # a blocking request/reply: paces the loop
            if st.get("running") and pred(st):
                return st
        raise AssertionError(f"timed out waiting for {what}; last status {st}\n{self.output()}")

    def wait_running(self) -> dict:
        return self.wait_status(lambda st: all(w["state"] == "running" and w["heartbeat_age_s"]
                                               is not None for w in st["workers"]),
                                "all workers running")

    def tap(self, stream: str, *extra, limit: int = 3) -> list[dict]:
        r = self.cli("tap", stream, "--json", "--limit", str(limit), "--timeout", str(TIMEOUT),
                     *extra)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]

    def pids(self, st: dict) -> dict[str, int]:
        return {w["id"]: w["pid"] for w in st["workers"]}

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(TIMEOUT)
        finally:
            self._logf.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(TIMEOUT)


def leftovers(run_id: str, run_dir: Path) -> list[str]:
    shm = [e for e in os.listdir("/dev/shm") if e.startswith(f"tp_{run_id}_")]
    files = list(run_dir.glob(f"{run_id}*")) if run_dir.exists() else []
    return shm + [str(f) for f in files]


def assert_gone(pids, timeout: float = TIMEOUT) -> None:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(procs, timeout=timeout)
    assert not alive, f"processes still running: {alive}"


@pytest.fixture
def pipe(tmp_path):
    made = []

    def make(**kw) -> Pipeline:
        p = Pipeline(tmp_path, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        p.kill()


def test_ticks_flow_to_fills_and_clean_stop(pipe):
    port = free_port()
    p = pipe(metrics_bind=f"127.0.0.1:{port}").start()
    st = p.wait_running()
    roles = sorted(w["id"] for w in st["workers"])
    assert roles == ["execution.0", "feed.0", "indicators.0", "indicators.1", "indicators.2",
                     "model.0", "strategy.0"]
    fills = p.tap("fills")
    assert len(fills) == 3
    for f in fills:
        assert f["price"] > 0 and f["qty"] > 0 and f["side"] in (-1, 1)
        assert f["symbol"].endswith("@synthetic") and f["ts_ns"] >= f["ts_origin_ns"] > 0
    ticks = p.tap("ticks", "--symbol", "ETH/USDT", limit=5)
    assert {t["symbol"] for t in ticks} == {"ETH/USDT@synthetic"}
    assert all(t["bid"] <= t["price"] <= t["ask"] for t in ticks)
    for stream in ("features", "signals", "intents", "orders"):
        assert len(p.tap(stream, limit=1)) == 1
    (health,) = p.tap("health", limit=1)
    assert health["id"] == "feed.0" and health["venue"] == "synthetic" and health["emitted"] > 0

    rep = json.loads(p.cli("report", "--json").stdout)
    by_id = {x["id"]: x for x in rep["processes"]}
    assert set(by_id) == {"supervisor", *roles}
    for proc in rep["processes"]:
        assert proc["pid"] > 0 and proc["rss_mb"] > 0 and proc["threads"] >= 1 and proc["fds"] > 0
    rings = {r["name"]: r for r in rep["rings"]}
    assert rings["ticks.synthetic"]["policy"] == "lossy"
    assert [r["name"] for r in rings["ticks.synthetic"]["readers"]] == [
        "indicators.0", "indicators.1", "indicators.2", "execution.0"]   # execution: the market it checks
    assert rings["fills"]["write_seq"] > 0
    assert rep["latency"]["tick_to_fill"]["count"] > 0
    assert rep["latency"]["tick_to_fill"]["p50_us"] > 0
    human = p.cli("report").stdout
    assert "tick_to_fill" in human and "ticks.synthetic" in human and "feeds" in human
    assert rep["feeds"][0]["venue"] == "synthetic"

    # the same figures for Prometheus
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as resp:
        metrics = resp.read().decode()
    assert 'tickpipe_ring_written_total{ring="fills"}' in metrics
    assert 'tickpipe_ring_reader_dropped_total{reader="indicators.0",ring="ticks.synthetic"}' in metrics
    assert 'tickpipe_process_rss_bytes{id="execution.0",role="execution"}' in metrics
    assert 'tickpipe_stage_latency_seconds{quantile="0.99",stage="tick_to_fill"}' in metrics
    assert 'tickpipe_worker_up{id="model.0"} 1.0' in metrics
    assert 'tickpipe_model_degraded{id="model.0"} 0.0' in metrics

    run_id = st["run_id"]
    pids = list(p.pids(st).values())
    r = p.cli("stop")
    assert r.returncode == 0, r.stderr
    assert p.wait_exit() == 0
    out = p.output()
    assert "stopped: stop requested" in out and "Traceback" not in out
    assert "fills" in out and "tick-to-fill latency" in out
    assert_gone(pids)
    assert leftovers(run_id, p.tmp / "run") == []
    assert not (p.tmp / "run" / "t.json").exists()
    assert "not running" in p.cli("status").stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly(pipe, sig):
    p = pipe().start()
    st = p.wait_running()
    p.tap("signals", limit=1)
    # Ctrl-C reaches the whole process group; workers must leave the stop to the supervisor
    os.killpg(p.proc.pid, sig) if sig == signal.SIGINT else p.proc.send_signal(sig)
    assert p.wait_exit() == 0
    assert f"received {sig.name}" in p.output()
    assert "Traceback" not in p.output()
    assert_gone(p.pids(st).values())
    assert leftovers(st["run_id"], p.tmp / "run") == []


KILLED = ("feed.0", "indicators.1", "model.0", "execution.0")


def test_kill9_workers_restart_and_resume(pipe):
    p = pipe().start()
    st = p.wait_running()
    p.tap("fills", limit=1)
    st = p.status()
    before = p.pids(st)
    counted = {w["id"]: {k: w["stats"].get(k, 0) for k in ("out", "fills", "orders")}
               for w in st["workers"] if w["id"] in KILLED}
    for wid in KILLED:
        os.kill(before[wid], signal.SIGKILL)
    st = p.wait_status(lambda s: all(w["restarts"] == (1 if w["id"] in KILLED else 0)
                                     and w["state"] == "running" and w["pid"]
                                     and w["heartbeat_age_s"] is not None
                                     for w in s["workers"]), "restarted workers running")
    after = p.pids(st)
    assert all(after[w] != before[w] for w in KILLED)
    # counters cover the whole run: a new process adds to its predecessors' counts
    for w in st["workers"]:
        for key, n in counted.get(w["id"], {}).items():
            assert w["stats"].get(key, 0) >= n, (w["id"], key, n, w["stats"])
    assert after["indicators.0"] == before["indicators.0"]
    # trading goes on; execution resumed from its rings: order ids continue without
    # reuse, and no intent is acted on twice (intent_seq strictly increasing: one model
    # worker, so one source of intents)
    orders = p.tap("orders", limit=12)
    ids = [o["order_id"] for o in orders]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    sig = [o["intent_seq"] for o in orders]
    assert sig == sorted(set(sig))
    run_id = st["run_id"]
    assert p.cli("stop").returncode == 0
    assert p.wait_exit() == 0
    assert "Traceback" not in p.output()
    assert_gone(list(before.values()) + list(after.values()))
    assert leftovers(run_id, p.tmp / "run") == []


def test_start_removes_stale_segments_and_says_so_and_duration_stops_it(pipe):
    """Two behaviours of one short run (one pipeline start, not two): a start removes a
    dead run's segments and says so, and --duration stops the run by itself."""
    from shm.segment import KIND_RING, Segment, segment_name
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = segment_name("deadbeef", "ticks.synthetic")
    seg = Segment.create(name, 4096, KIND_RING, owner_pid=dead.pid)
    seg.close()
    try:
        p = pipe().start("--duration", "1")
        assert p.wait_exit() == 0
        out = p.output()
        assert "removed 1 stale shared-memory segments of dead runs deadbeef" in out
        assert not os.path.exists("/dev/shm" + name)
        # the duration stopped it by itself, with its summary
        assert "duration of 1 s reached" in out and "ticks " in out
        assert not [e for e in os.listdir("/dev/shm") if e.startswith("tp_") and
                    json.dumps(e) and "Traceback" in out]
    finally:
        from shm.segment import unlink
        unlink(name)


def test_hung_worker_is_killed_and_restarted(pipe):
    p = pipe(hb_timeout=2.0).start()
    st = p.wait_running()
    pid = p.pids(st)["model.0"]
    os.kill(pid, signal.SIGSTOP)  # alive but silent
    st = p.wait_status(lambda s: [w for w in s["workers"] if w["id"] == "model.0"][0]["restarts"] >= 1
                       and [w for w in s["workers"] if w["id"] == "model.0"][0]["state"] == "running",
                       "hung model worker replaced")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "stopped heartbeating" in p.output() or "no heartbeat" in p.output()
    assert p.cli("stop").returncode == 0
    assert p.wait_exit() == 0


def test_restart_limit_gives_up_clearly(pipe):
    p = pipe(max_restarts=1).start()
    st = p.wait_running()
    os.kill(p.pids(st)["model.0"], signal.SIGKILL)
    st = p.wait_status(lambda s: [w for w in s["workers"] if w["id"] == "model.0"][0]["restarts"] == 1
                       and [w for w in s["workers"] if w["id"] == "model.0"][0]["state"] == "running",
                       "first restart")
    os.kill(p.pids(st)["model.0"], signal.SIGKILL)
    assert p.wait_exit() == 1
    out = p.output()
    assert "model.0 exited with code -9 and was restarted 1 times" in out and "giving up" in out
    assert_gone(p.pids(st).values())
    assert leftovers(st["run_id"], p.tmp / "run") == []


def test_supervisor_kill9_leaves_nothing_after_next_start(pipe):
    p = pipe().start()
    st = p.wait_running()
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait(TIMEOUT)
    # orphaned workers notice, remove the run's segments and exit on their own
    assert_gone(p.pids(st).values())
    assert [e for e in os.listdir("/dev/shm") if e.startswith(f"tp_{st['run_id']}_")] == []
    r = p.cli("status")
    assert "died without cleaning up" in r.stdout
    p2 = pipe().start("--duration", "2")
    assert p2.wait_exit() == 0
    assert leftovers(st["run_id"], p.tmp / "run") == []


def test_whole_group_kill9_is_cleaned_by_the_next_start(pipe):
    """kill -9 of every process at once (the resource tracker too): the next start
    removes the dead run's segments, sockets, state file and doorbell semaphores."""
    p = pipe().start()
    st = p.wait_running()
    state = json.loads((p.tmp / "run" / "t.json").read_text())
    sems = ["/dev/shm/sem." + name.lstrip("/") for name in state["semaphores"]]
    assert sems and all(os.path.exists(x) for x in sems)
    os.killpg(p.proc.pid, signal.SIGKILL)
    p.proc.wait(TIMEOUT)
    assert_gone(p.pids(st).values())
    p2 = pipe().start("--duration", "1")
    assert p2.wait_exit() == 0
    assert leftovers(st["run_id"], p.tmp / "run") == []
    assert [x for x in sems if os.path.exists(x)] == []


def test_tap_over_tcp_and_a_second_start_with_same_name_is_refused(pipe):
    """Two behaviours of one running pipeline (one start, not two)."""
    port = free_port()
    p = pipe(tap_bind=f"tcp://127.0.0.1:{port}").start()
    p.wait_running()
    r = p.cli("start", "--duration", "1")
    assert r.returncode == 2
    assert "already running" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pipeline", "tap", "fills", "--json", "--limit", "2",
                        "--connect", f"tcp://127.0.0.1:{port}", "--timeout", str(TIMEOUT)],
                       cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2
    assert p.cli("stop").returncode == 0
    assert p.wait_exit() == 0


def test_workers_8(pipe):
    p = pipe(workers=8).start()
    st = p.wait_running()
    ids = {w["id"] for w in st["workers"]}
    assert {f"indicators.{i}" for i in range(6)} <= ids and {"model.0", "model.1"} <= ids
    assert len(p.tap("fills", limit=2)) == 2
    assert p.cli("stop").returncode == 0
    assert p.wait_exit() == 0


def test_old_signals_never_open_a_position(pipe):
    """[risk] max_intent_age_s: an intent older than that (from its tick) is refused for
    anything that opens or grows a position; with an impossible 1 us every one is."""
    p = pipe(risk={"max_intent_age_s": 1e-6}).start()
    ex = lambda st: next(w["stats"] for w in st["workers"] if w["id"] == "execution.0")
    st = p.wait_status(lambda st: ex(st).get("denials", {}).get("STALE_INTENT", 0) >= 20,
                       "stale intents refused")
    assert ex(st)["orders"] == 0 and ex(st)["fills"] == 0
    assert p.cli("stop").returncode == 0 and p.wait_exit() == 0


def test_positions_survive_stop_start_and_a_group_kill9(pipe, journal_dir):
    """The journal is the positions' memory: after `pipeline stop` and `start`, and
    after kill -9 of the whole process group, execution starts from exactly the
    positions the journal's fills add up to, and the journal verifies."""
    from pipeline import journal
    from pipeline.pnl import pnl_report
    path = journal_dir / "t.sqlite"

    def held() -> dict[str, float]:
        rep = pnl_report(path)
        assert rep["mismatches"] == []
        return {s["symbol"]: s["qty"] for s in rep["symbols"]}

    def restored(st: dict) -> dict[str, float]:
        return next(w["stats"]["restored"] for w in st["workers"] if w["id"] == "execution.0")

    p = pipe().start()
    p.wait_running()
    p.tap("fills", limit=3)
    assert p.cli("stop").returncode == 0 and p.wait_exit() == 0
    first = held()
    assert first and journal.verify(path).ok

    p.start()
    st = p.wait_running()
    assert restored(st) == pytest.approx(first)
    p.tap("fills", limit=3)                     # trading goes on from there
    os.killpg(p.proc.pid, signal.SIGKILL)       # the whole group, mid-run
    p.proc.wait(TIMEOUT)
    p._logf.close()
    second = held()                             # every committed fill, no half-written one
    assert journal.verify(path).ok and sum(s["fills"] for s in pnl_report(path)["symbols"]) > 3

    p.start()                                   # removes the dead run's segments
    st = p.wait_running()
    assert restored(st) == pytest.approx(second)
    assert p.cli("stop").returncode == 0 and p.wait_exit() == 0
    assert "Traceback" not in p.output()
    # over the three runs: no client order id created twice, no fill applied twice, and
    # every order the stops and the kill left open was resolved
    created = [r["client_order_id"] for r in journal.rows(path, kinds=("order",))
               if r["payload"]["old"] == r["payload"]["new"] == "CREATED"]
    assert created and len(created) == len(set(created))
    fill_ids = [r["payload"]["fill_id"] for r in journal.rows(path, kinds=("fill",))]
    assert len(fill_ids) == len(set(fill_ids))
    last = {}
    for r in journal.rows(path, kinds=("order",)):
        last[r["client_order_id"]] = r["payload"]["new"]
    assert set(last.values()) <= {"FILLED", "EXPIRED", "CANCELLED", "REJECTED"}
