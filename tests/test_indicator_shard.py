"""The indicator shard on its own, on real rings: bars from ticks, bad ticks
rejected with a count without touching any other symbol, gaps flagged."""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from pipeline import bus, topology
from pipeline.config import load_config
from shm.records import FLAG_GAP, TICK, TICK_GAP, TICK_TRADE
from shm.ring import Ring
from shm.segment import remove_run
from shm.table import Table
from workers.base import WorkerArgs
from workers.indicators import IndicatorWorker

SEC = 1_000_000_000


@pytest.fixture
def shard(tmp_path):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text("""
[pipeline]
workers = 2
[indicators]
bar_seconds = 1.0
close_grace_s = 1000.0
ema = [2, 3]
[[feeds]]
name = "synthetic"
symbols = ["AAA/USDT", "BBB/USDT"]
""")
    cfg = load_config(cfg_path)
    run_id = "t" + uuid.uuid4().hex[:8]
    topo = topology.build(cfg, run_id)
    made = [Ring.create(s) for s in topo.rings.values()] + [Table.create(s) for s in topo.tables.values()]
    args = WorkerArgs(cfg, topo, "indicators.0", bus.Endpoints.for_run(tmp_path, run_id), os.getppid())
    worker = IndicatorWorker(args)
    worker.attach()
    worker.setup()
    feed = Ring.attach(topo.rings["ticks.synthetic"]).writer()
    features = Ring.attach(topo.rings["features.0"]).reader("model.0")
    yield worker, feed, features, topo
    worker.close()
    for obj in made:
        obj.close()
    remove_run(run_id)


def ticks(rows) -> np.ndarray:
    """rows: (symbol_id, second, price, size[, kind])."""
    out = np.zeros(len(rows), TICK)
    for i, r in enumerate(rows):
        sid, sec, price, size = r[:4]
        out[i]["symbol_id"] = sid
        out[i]["ts_exchange_ns"] = out[i]["ts_origin_ns"] = int(sec * SEC) + 1_700_000_000 * SEC
        out[i]["price"], out[i]["size"] = price, size
        out[i]["kind"] = r[4] if len(r) > 4 else TICK_TRADE
    return out


def bars_of(features, sid):
    batch = features.read()
    features.commit()
    recs = batch.records if batch is not None else np.zeros(0)
    return recs[recs["symbol_id"] == sid] if len(recs) else recs


def test_bad_ticks_are_rejected_and_other_symbols_untouched(shard):
    worker, feed, features, topo = shard
    a, b = topo.symbols.id("AAA/USDT"), topo.symbols.id("BBB/USDT")
    assert worker.bars.owned[a] and worker.bars.owned[b]            # one shard owns both (2 workers: 1 shard)
    clean = [(b, 0.1, 10.0, 1.0), (b, 0.5, 12.0, 2.0), (b, 0.9, 11.0, 1.0)]
    bad = [(a, 0.1, 100.0, 1.0), (a, 0.2, float("nan"), 1.0), (a, 0.3, 0.0, 1.0),
           (a, 0.4, -5.0, 1.0), (a, 0.5, 101.0, float("inf")), (a, 0.6, 102.0, -1.0),
           (a, 0.7, 99.0, 2.0)]
    feed.write(ticks(clean + bad))
    worker.step()
    # the next second's first ticks close both bars; then a late tick for the closed bar
    feed.write(ticks([(a, 1.1, 103.0, 1.0), (b, 1.2, 13.0, 1.0), (a, 0.95, 50.0, 1.0)]))
    worker.step()
    rows = {int(r["symbol_id"]): r for r in features.read().records}
    features.commit()
    ra, rb = rows[a], rows[b]
    assert (ra["open"], ra["high"], ra["low"], ra["close"], ra["volume"]) == (100.0, 100.0, 99.0, 99.0, 3.0)
    assert (rb["open"], rb["high"], rb["low"], rb["close"], rb["volume"]) == (10.0, 12.0, 10.0, 11.0, 4.0)
    assert ra["n_ticks"] == 2 and rb["n_ticks"] == 3
    assert worker.counters["rejected"] == 6      # NaN, 0, -5, inf size, -1 size, the late tick
    # the late tick did not open an older bar: the open bar of AAA is still the second one
    assert worker.bars.open_ns[a] == 1_700_000_001 * SEC and worker.bars.c[a] == 103.0


def test_gap_marker_flags_the_bar(shard):
    worker, feed, features, topo = shard
    a = topo.symbols.id("AAA/USDT")
    feed.write(ticks([(a, 0.1, 100.0, 1.0), (a, 0.2, float("nan"), float("nan"), TICK_GAP),
                      (a, 0.3, 101.0, 1.0), (a, 1.1, 102.0, 1.0), (a, 2.1, 103.0, 1.0)]))
    worker.step()
    recs = features.read().records
    assert [bool(r["flags"] & FLAG_GAP) for r in recs] == [True, False]
