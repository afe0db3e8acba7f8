"""Shared pytest fixtures.

* ``shm_names``: unique POSIX shared-memory names for one test, removed after it,
  with a check that the test left nothing behind in /dev/shm.
* ``children``: start processes with the spawn method; results come back on a
  queue; anything still running at teardown is killed.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import time
import uuid

import pytest

# spawned children import helper modules of tests/ (tests/_procs.py) by name
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

SHM_DIR = "/dev/shm"


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
