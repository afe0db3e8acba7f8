"""Doorbells: how a sleeping process is woken when there is work for it.

One doorbell per process (a counting semaphore made by the supervisor and
handed to workers at spawn). A reader sets its waiting flag in the ring
header, puts a fence, re-checks the ring, then sleeps on its doorbell; the
writer publishes, puts a fence, and rings only the doorbells whose flag is
set. The same doorbell wakes a writer waiting for space in a lossless ring.
Every sleep has a timeout, so a missed ring costs latency, never a hang.
"""
from __future__ import annotations

import threading

_fence_lock = threading.Lock()


def fence() -> None:
    """Full memory barrier: an uncontended lock is a locked instruction on x86
    and orders the flag store against the following counter load (Dekker)."""
    _fence_lock.acquire()
    _fence_lock.release()


class Doorbell:
    """Wraps a multiprocessing semaphore; picklable to spawned children."""

    def __init__(self, sem=None):
        if sem is None:
            import multiprocessing as mp
            sem = mp.get_context("spawn").Semaphore(0)
        self._sem = sem

    @property
    def name(self) -> str:
        """The semaphore's POSIX name (/mp-...)."""
        return self._sem._semlock.name

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove a doorbell left behind by a run whose processes were all killed."""
        import _multiprocessing
        try:
            _multiprocessing.sem_unlink(name)
            return True
        except FileNotFoundError:
            return False

    def ring(self) -> None:
        self._sem.release()

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or timeout; True if rung."""
        return self._sem.acquire(True, timeout)

    def drain(self) -> None:
        """Forget rings that arrived while we were awake."""
        while self._sem.acquire(False):
            pass

    def __getstate__(self):
        return {"sem": self._sem}

    def __setstate__(self, state):
        self._sem = state["sem"]
