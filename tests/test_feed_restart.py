"""A restarted feed process goes on from what its predecessor left in the ticks
ring: the synthetic market from its last prices (no jump), a venue feed with
gap markers and a backfill from the last trade id."""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from pipeline import bus, topology
from pipeline.config import load_config
from shm.records import TICK_QUOTE, TICK_TRADE
from shm.ring import Ring
from shm.segment import remove_run
from shm.table import Table
from workers.base import WorkerArgs
from workers.feed import FeedWorker, newest_per_symbol

SYMBOLS = ["AAA/USDT", "BBB/USDT", "CCC/USDT"]


@pytest.fixture
def feed_ring(tmp_path):
    """A run's segments, and a function that makes its feed worker (as a restart would)."""
    path = tmp_path / "c.toml"
    path.write_text(f"""
[pipeline]
workers = 2
[[feeds]]
name = "synthetic"
symbols = {SYMBOLS!r}
ticks_per_s = 1000000
start_price = 100.0
""".replace("'", '"'))
    cfg = load_config(path)
    run_id = "t" + uuid.uuid4().hex[:8]
    topo = topology.build(cfg, run_id)
    made = [Ring.create(s) for s in topo.rings.values()] + [Table.create(s) for s in topo.tables.values()]
    workers = []

    def worker(restart: int) -> FeedWorker:
        args = WorkerArgs(cfg, topo, "feed.0", bus.Endpoints.for_run(tmp_path, run_id), os.getppid(),
                          restart)
        w = FeedWorker(args)
        w.attach()
        w.setup()
        workers.append(w)
        return w

    yield worker, topo
    for w in workers:
        w.close()
    for obj in made:
        obj.close()
    remove_run(run_id)


def produce(w: FeedWorker, n: int) -> None:
    while w.counters["out"] < n:
        w.step()


def test_newest_per_symbol():
    t = np.zeros(5, dtype=[("symbol_id", "<u4"), ("price", "<f8")])
    t["symbol_id"] = [1, 2, 1, 3, 2]
    t["price"] = [10, 20, 11, 30, 21]
    got = {k: float(v["price"]) for k, v in newest_per_symbol(t).items()}
    assert got == {1: 11.0, 2: 21.0, 3: 30.0}
    assert newest_per_symbol(t[:0]) == {}


def test_a_restarted_synthetic_feed_goes_on_from_the_last_prices(feed_ring):
    worker, topo = feed_ring
    first = worker(0)
    produce(first, 20_000)
    last = {sid: (float(t["bid"]) + float(t["ask"])) / 2
            for sid, t in newest_per_symbol(first.writers["ticks.synthetic"].tail()).items()}
    assert len(last) == len(SYMBOLS)
    first.close()
    second = worker(1)                         # the supervisor's restart: a new seed
    seq0 = second.writers["ticks.synthetic"].seq
    produce(second, 300)
    ring = second.writers["ticks.synthetic"]
    new = ring.tail(int(ring.seq - seq0))
    assert len(new) >= 300
    for sid, price in last.items():
        mine = new[(new["symbol_id"] == sid) & np.isin(new["kind"], [TICK_TRADE, TICK_QUOTE])]
        mid = (mine["bid"][0] + mine["ask"][0]) / 2
        assert abs(mid / price - 1) < 0.01, f"symbol {sid} jumped from {price} to {mid}"
