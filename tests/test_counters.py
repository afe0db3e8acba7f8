"""Counters survive restarts: the supervisor adds what a worker's earlier processes
counted to what the current one reports, so status and the exit summary count the
whole run (positions, P&L and states stay as last reported)."""
from __future__ import annotations

from pipeline.supervisor import WorkerState, add_counters, counters_of
from pipeline.topology import WorkerSpec


def test_counters_are_summed_gauges_are_not():
    carried = {"orders": 14, "fills": 14, "health": {"messages": 100, "reconnects": 2}}
    now = {"orders": 3, "fills": 3, "open_positions": 2, "realized_pnl": -1.5,
           "health": {"messages": 7, "reconnects": 0, "state": "connected", "last_message_age_s": 0.1}}
    total = add_counters(carried, now)
    assert total == {"orders": 17, "fills": 17, "open_positions": 2, "realized_pnl": -1.5,
                     "health": {"messages": 107, "reconnects": 2, "state": "connected",
                                "last_message_age_s": 0.1}}
    assert counters_of(total) == {"orders": 17, "fills": 17, "health": {"messages": 107, "reconnects": 2}}
    assert add_counters({}, now) == now and add_counters(carried, {})["fills"] == 14


def test_a_worker_state_keeps_its_counts_across_incarnations():
    ws = WorkerState(WorkerSpec("execution", 0))
    ws.hb = {"stats": {"orders": 99, "fills": 99, "open_positions": 1}}
    ws.retire()                                   # killed
    assert ws.stats() == {"orders": 99, "fills": 99}
    ws.hb = {"stats": {"orders": 14, "fills": 14, "open_positions": 3}}     # the new process
    assert ws.stats() == {"orders": 113, "fills": 113, "open_positions": 3}
    ws.retire()
    ws.hb = {"stats": {"orders": 1, "fills": 0}}
    assert ws.stats()["orders"] == 114 and ws.stats()["fills"] == 113
