"""Shared pytest fixtures.

* ``shm_names``: unique POSIX shared-memory names for one test, removed after it,
  with a check that the test left nothing behind in /dev/shm.
* ``children``: start processes with the spawn method; results come back on a
  queue; anything still running at teardown is killed.
* ``config_file``: write a config of the fast test pipeline into the test's
  tmp_path; ``write_config`` does the same into any folder and ``fast_config``
  returns its text. FAST is that pipeline (a momentum rule on the synthetic
  feed, 0.2 s bars, fast heartbeats), TINY_ENSEMBLE its ensemble of four tiny
  models; ``toml`` writes any such dict of sections.
* ``RunSegments``: one run's segments and its workers, made as the supervisor
  makes them (restarts included), for tests that drive a worker by hand.
* ``journal_dir`` (every test): TICKPIPE_JOURNAL_DIR in the test's tmp_path, so a
  pipeline a test starts journals there and never into the repository.
* ``DATA`` / ``data_file(rel)``: the real market data and venue captures the tests
  use, cut-down copies shipped in tests/data (tests/data/SOURCES.md names each
  file's origin and licence). The one place test data paths are resolved.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import sys
import time
import uuid
from pathlib import Path

import pytest

# spawned children import helper modules of tests/ (tests/_procs.py) by name
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

SHM_DIR = "/dev/shm"

# -- test data -------------------------------------------------------------------------
DATA = Path(_TESTS_DIR) / "data"


def data_file(rel: str) -> Path:
    """``tests/data/<rel>`` (the same relative path as under ../shared/data, where
    the full file came from); fails loudly when a sample is missing from the checkout."""
    path = DATA / rel
    if not path.exists():
        raise FileNotFoundError(f"{path}: test data missing from the checkout (tests/data/SOURCES.md)")
    return path


class ShmNames:
    """Names ``/tp_<run>_<part><n>`` under a run id unique to this test.

    ``names("ring")`` returns a fresh name each call; ``names.new_run()`` gives a
    sibling with another run id whose names are cleaned up with these."""

    def __init__(self, registry: list | None = None):
        self.run_id = f"t{os.getpid()}x{uuid.uuid4().hex[:6]}"
        self._n = 0
        self._registry = registry if registry is not None else []
        self._registry.append(self)
        self.created: list[str] = []

    def __call__(self, part: str = "seg") -> str:
        self._n += 1
        name = f"/tp_{self.run_id}_{part}{self._n}"
        self.created.append(name)
        return name

    def new_run(self) -> "ShmNames":
        return ShmNames(self._registry)

    def leftovers(self) -> list[str]:
        """Entries of /dev/shm under any of these run ids."""
        prefixes = tuple(f"tp_{n.run_id}_" for n in self._registry)
        return sorted(e for e in os.listdir(SHM_DIR) if e.startswith(prefixes))


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name.lstrip("/")))
    except FileNotFoundError:
        pass


@pytest.fixture
def shm_names():
    names = ShmNames()
    yield names
    for n in names._registry:
        for name in n.created:
            _unlink(name)
    left = names.leftovers()
    for entry in left:
        _unlink(entry)
    assert not left, f"segments left in {SHM_DIR} by this test: {left}"


class Children:
    """Spawned child processes of one test."""

    def __init__(self):
        self.ctx = mp.get_context("spawn")
        self.procs: list = []

    def start(self, target, *args):
        p = self.ctx.Process(target=target, args=args, daemon=True)
        p.start()
        self.procs.append(p)
        return p

    @staticmethod
    def results(q, n: int, timeout: float) -> dict:
        """Collect ``n`` (tag, status, payload) reports; fail on an error report."""
        out = {}
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            try:
                tag, status, payload = q.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(f"children reported {sorted(out)} only, "
                                     f"{n} reports expected within {timeout} s") from None
            assert status == "ok", f"child {tag} failed:\n{payload}"
            out[tag] = payload
        return out

    @staticmethod
    def join(p, timeout: float = 30.0) -> int:
        p.join(timeout)
        assert not p.is_alive(), f"child {p.pid} still running after {timeout} s"
        return p.exitcode

    def run(self, target, *args, timeout: float = 60.0):
        """Run ``target(*args, q)`` in a child to its end and return its one report.
        A child killed by a signal (a crash) fails with its exit code."""
        q = self.ctx.Queue()
        p = self.start(target, *args, q)
        p.join(timeout)
        assert not p.is_alive(), f"child {p.pid} still running after {timeout} s"
        assert p.exitcode == 0, (f"child {p.pid} ({target.__name__}) died with exit code "
                                 f"{p.exitcode} (negative: killed by that signal, -11 = SIGSEGV)")
        return next(iter(self.results(q, 1, timeout=10).values()))

    def kill_all(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(10)


@pytest.fixture
def children():
    c = Children()
    yield c
    c.kill_all()


# -- the fast test pipeline ----------------------------------------------------------

SYNTHETIC_SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "BNB/USDT", "DOGE/USDT"]
ALL_FOUR = ["lstm", "forest", "xgboost", "rl"]
TINY_TREES = {"forest_trees": 8, "forest_depth": 4, "xgb_rounds": 8, "xgb_depth": 3}
TINY_LSTM = {"lstm_window": 8, "lstm_units": 8, "lstm_epochs": 1}
TINY_ENSEMBLE = {"kind": "ensemble", "models": ALL_FOUR, "folds": 2, "horizon": 6,
                 **TINY_TREES, **TINY_LSTM}

FAST = {
    "pipeline": {"name": "t", "workers": 4, "heartbeat_interval_s": 0.25, "heartbeat_timeout_s": 10.0,
                 "max_restarts": 5, "restart_backoff_s": 0.2},
    "indicators": {"bar_seconds": 0.2, "ema": [2, 4], "rsi": [3], "close_grace_s": 0.05},
    "model": {"kind": "momentum", "threshold": 0.00001},
    "risk": {"max_position_notional": 1e12, "max_order_notional": 1e12, "max_gross_exposure": 1e12,
             "max_venue_exposure": 1e12, "max_orders_per_s": 1e6, "order_burst": 1000000},
    "bus": {"tap_bind": "", "metrics_bind": ""},
    "feeds": [{"name": "synthetic", "symbols": SYNTHETIC_SYMBOLS, "ticks_per_s": 3000}],
}


def toml(sections: dict) -> str:
    """TOML text of {section: {key: value}}; a list of tables is an array ([[feeds]]).
    A section or key whose value is None is left out. Values are written as JSON,
    which is valid TOML for strings, numbers, booleans and lists of them; paths as strings."""
    lines = []
    for name, body in sections.items():
        if body is None:
            continue
        for table in body if isinstance(body, list) else [body]:
            lines.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            lines += [f"{k} = {json.dumps(v, default=str)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def fast_config(name: str = "t", *, ensemble: bool = False, **sections) -> str:
    """FAST named ``name``, with TINY_ENSEMBLE for its model when ``ensemble``. Each
    keyword names a section and updates its keys (``feeds`` updates the one synthetic
    feed); None for a key leaves it out, None for a section leaves the whole section out:
    either way the config's default applies."""
    base = {**FAST, "model": TINY_ENSEMBLE if ensemble else FAST["model"]}
    out = {}
    for section, body in base.items():
        change = sections.pop(section, {})
        if change is None:
            continue
        if section == "feeds":
            out[section] = [{**body[0], **change}]
        else:
            out[section] = {**body, **change}
    assert not sections, f"no such section in FAST: {sorted(sections)}"
    if "pipeline" in out:
        out["pipeline"]["name"] = name
    return toml(out)


def write_config(folder: Path, name: str, **overrides) -> Path:
    """``fast_config(name, **overrides)`` written to ``folder/<name>.toml``."""
    path = Path(folder) / f"{name}.toml"
    path.write_text(fast_config(name, **overrides))
    return path


@pytest.fixture(autouse=True)
def journal_dir(tmp_path, monkeypatch):
    """Every test's pipelines journal into its own folder (the environment that its
    subprocesses inherit), never into the repository's journal/."""
    folder = tmp_path / "journal"
    monkeypatch.setenv("TICKPIPE_JOURNAL_DIR", str(folder))
    return folder


@pytest.fixture
def config_file(tmp_path):
    """``config_file(name, **overrides)``: write_config into this test's tmp_path."""
    def write(name: str = "t", **overrides) -> Path:
        return write_config(tmp_path, name, **overrides)
    return write


# -- one run's segments, with its workers made as the supervisor makes them -------------

class RunSegments:
    """The segments of a run of the config text ``toml`` (written to tmp_path/c.toml),
    and ``worker(cls, worker_id, restart)``: a worker attached and set up as a spawned
    one is. ``close`` closes the workers and removes the segments."""

    def __init__(self, tmp_path: Path, toml_text: str):
        from pipeline import topology
        from pipeline.config import load_config
        from shm.ring import Ring
        from shm.table import Table
        path = Path(tmp_path) / "c.toml"
        path.write_text(toml_text)
        self.cfg = load_config(path)
        self.tmp_path = Path(tmp_path)
        self.run_id = "t" + uuid.uuid4().hex[:8]
        self.topo = topology.build(self.cfg, self.run_id)
        self.made = ([Ring.create(s) for s in self.topo.rings.values()]
                     + [Table.create(s) for s in self.topo.tables.values()])
        self.workers: list = []

    def worker(self, cls, worker_id: str, restart: int = 0):
        from pipeline import bus
        from workers.base import WorkerArgs
        args = WorkerArgs(self.cfg, self.topo, worker_id,
                          bus.Endpoints.for_run(self.tmp_path, self.run_id), os.getppid(), restart)
        w = cls(args)
        w.attach()
        w.setup()
        self.workers.append(w)
        return w

    def close(self) -> None:
        from shm.segment import remove_run
        for w in self.workers:
            w.close()
        for obj in self.made:
            obj.close()
        remove_run(self.run_id)
