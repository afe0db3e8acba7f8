"""The garbage collector run between steps (pipeline/collector.py): off inside them, a
pass between them frees the cycles made, what survives is frozen, and stopping gives the
process its collector back as it was."""
from __future__ import annotations

import gc
import weakref

from pipeline.collector import StepCollector


class _Node:
    def __init__(self):
        self.me = self                      # a reference cycle: only the collector frees it


def test_the_collector_runs_between_steps_only_and_frees_the_cycles_a_step_made():
    assert gc.isenabled() and gc.get_freeze_count() == 0
    c = StepCollector(idle_objects=100, busy_objects=50_000)
    c.start()
    try:
        assert not gc.isenabled() and gc.get_freeze_count() > 0      # what lived at the start: frozen
        kept = _Node()
        cycles = [weakref.ref(_Node()) for _ in range(2_000)]     # garbage a step left behind
        assert all(r() is not None for r in cycles)               # no pass inside the "step"
        assert not c.between_steps(idle=False)                    # busy: fewer than 50,000 wait
        frozen = gc.get_freeze_count()
        assert c.between_steps(idle=True)
        assert all(r() is None for r in cycles)                   # the cycles are gone
        assert gc.get_freeze_count() > frozen and kept.me is kept # the survivors are frozen
        assert c.stats()["gc_passes"] == 1 and c.stats()["gc_pause_max_ms"] >= 0
        assert not c.between_steps(idle=True)                     # nothing young waits now
    finally:
        c.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0

