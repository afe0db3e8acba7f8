"""The cyclic garbage collector kept out of the steps that money waits on.

CPython runs its collector whenever enough objects were allocated, inside whatever code is
running then: in a step of the execution process that is a pause of its own, and a full pass
walks every object the process keeps (every order of the run, by design), so it grows with
the run: tens of ms after an hour of trading. The cores make almost no reference cycles
(reference counting frees nearly everything at once: a whole backtest leaves a handful), so
a process that waits on steps turns the collector off and runs it between steps, on the
young objects only, and freezes what survives (`gc.freeze`: never walked again).

What this costs: a cycle that becomes garbage after surviving a pass is never freed (a
few hundred objects in 192,000 orders of bench/execution.py); a pass between two steps
delays the next one by its length (bench/execution.py reports them).
"""
from __future__ import annotations

import gc
import time

IDLE_OBJECTS = 1_000        # young objects that make a pass worth it while nothing waits
BUSY_OBJECTS = 10_000       # the most left waiting while steps come back to back


class StepCollector:
    """The collector of a process that works in steps: off inside them, run by
    `between_steps`."""

    def __init__(self, idle_objects: int = IDLE_OBJECTS, busy_objects: int = BUSY_OBJECTS):
        self.idle_objects, self.busy_objects = int(idle_objects), int(busy_objects)
        self.passes = 0
        self.pause_ns_max = 0
        self.pause_ns_total = 0
        self._froze = False
        self._was_enabled = True

    def start(self) -> None:
        """From now on the collector runs only in `between_steps`; what lives now (the
        state a process set up or recovered) is frozen."""
        self._froze, self._was_enabled = gc.get_freeze_count() == 0, gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()

    def between_steps(self, idle: bool) -> bool:
        """A pass over the young objects, if enough wait (fewer when ``idle``: nothing else
        to do); its survivors frozen. Returns whether it ran."""
        if gc.get_count()[0] < (self.idle_objects if idle else self.busy_objects):
            return False
        t0 = time.perf_counter_ns()
        gc.collect(1)
        gc.freeze()
        pause = time.perf_counter_ns() - t0
        self.passes += 1
        self.pause_ns_total += pause
        self.pause_ns_max = max(self.pause_ns_max, pause)
        return True

    def stop(self) -> None:
        """The collector as `start` found it (unfrozen if it was not frozen then)."""
        if self._froze:
            gc.unfreeze()
        if self._was_enabled:
            gc.enable()

    def stats(self) -> dict:
        return {"gc_passes": self.passes, "gc_pause_max_ms": round(self.pause_ns_max / 1e6, 3),
                "gc_pause_total_ms": round(self.pause_ns_total / 1e6, 3)}

