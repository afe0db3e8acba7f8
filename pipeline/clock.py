"""Time, passed in rather than read inline, so a core runs live or simulated.

A core (bar building, execution) asks its clock for the time; a live process
hands it `LiveClock`, a backtest a `SimClock` it advances with the data. The
same code then makes the same decisions on both.
"""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time_ns(self) -> int:
        """Wall-clock time, nanoseconds since the epoch (UTC)."""
        ...


class LiveClock:
    """The machine's wall clock."""

    def time_ns(self) -> int:
        return time.time_ns()

    def __repr__(self) -> str:
        return "LiveClock()"


class SimClock:
    """A clock that moves only when told to, and never backwards."""

    def __init__(self, start_ns: int = 0):
        self.now_ns = int(start_ns)

    def time_ns(self) -> int:
        return self.now_ns

    def set(self, ns: int) -> None:
        """Move to ``ns``; a time before the current one is an error (a simulation that
        goes back in time would reorder events)."""
        ns = int(ns)
        if ns < self.now_ns:
            raise ValueError(f"SimClock cannot go back from {self.now_ns} to {ns}")
        self.now_ns = ns

    def advance(self, ns: int) -> None:
        if ns < 0:
            raise ValueError(f"SimClock cannot advance by a negative {ns} ns")
        self.now_ns += int(ns)

    def __repr__(self) -> str:
        return f"SimClock({self.now_ns})"
