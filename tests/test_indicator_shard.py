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


def test_a_restarted_shard_rebuilds_its_indicators_and_flags_the_partial_bar(shard):
    """The shard closes bars 0-9 and has read the first tick of bar 10 when it dies.
    Its successor rebuilds the indicators from the bars in its features ring (no new
    warm-up: its values continue the series as one process would have), takes a
    re-read tick of a closed bar as late, and flags bar 10, which lost a tick, FLAG_GAP."""
    import dataclasses

    from models.ta import Engine
    from pipeline.config import indicator_specs
    worker, feed, features, topo = shard
    a, b = topo.symbols.id("AAA/USDT"), topo.symbols.id("BBB/USDT")
    prices = {a: 100.0, b: 20.0}

    def bar(k: int, halves=(0.1, 0.6)) -> np.ndarray:
        return ticks([(sid, k + f, p * (1 + 0.01 * np.sin(k + 3 * f + sid)), 1.0 + k % 3)
                      for f in halves for sid, p in prices.items()])
    for k in range(10):
        feed.write(bar(k))
    feed.write(bar(10, halves=(0.1,)))
    worker.step()
    worker.close()                                   # as if killed, its bar 10 open
    successor = IndicatorWorker(dataclasses.replace(worker.args, restart_count=1))
    successor.attach()
    successor.setup()
    try:
        feed.write(bar(5, halves=(0.6,)))            # re-read: a bar already closed
        feed.write(bar(10, halves=(0.6,)))
        for k in range(11, 14):
            feed.write(bar(k))
        successor.step()
        rows = features.read().records
        assert successor.bars.counters["rejected"] == 2
        for sid in (a, b):
            mine = rows[rows["symbol_id"] == sid]
            assert (mine["ts_bar_ns"] - mine["ts_bar_ns"][0]).tolist() == [k * SEC for k in range(13)]
            assert [bool(f & FLAG_GAP) for f in mine["flags"]] == [False] * 10 + [True, False, False]
        # one engine over every bar in order: what an uninterrupted shard computes
        engine = Engine(len(topo.symbols), indicator_specs(successor.cfg.indicators))
        expected = engine.update(rows["symbol_id"].astype(np.int64), rows["open"], rows["high"],
                                 rows["low"], rows["close"], rows["volume"])
        got = np.column_stack([rows[name] for name in topo.feature_names])
        emas = [i for i, name in enumerate(topo.feature_names) if name.startswith("ema")]
        assert emas and np.isfinite(got[-6:, emas]).all()   # the successor's: out of warm-up
        np.testing.assert_array_equal(got, expected)
    finally:
        successor.close()


def test_a_shard_is_woken_only_by_ticks_that_may_close_its_bars(shard):
    """Between bars a shard sleeps through ticks (a tick that closes nothing can wait):
    it asks to be woken by its symbols whose open bar ends within the margin, and says
    when the next one will."""
    worker, feed, features, topo = shard
    a, b = topo.symbols.id("AAA/USDT"), topo.symbols.id("BBB/USDT")
    assert worker.due() == (0, float("inf"))            # nothing open: no bar to close
    feed.write(ticks([(a, 0.1, 100.0, 1.0), (b, 0.5, 10.0, 1.0)]))
    worker.step()
    bits, soon = worker.due()
    assert bits == 0 and 0.3 < soon <= 0.48             # the bars end 0.5 s after the newest tick, less 0.02
    feed.write(ticks([(a, 0.99, 100.0, 1.0)]))
    worker.step()
    assert worker.due()[0] == 1 << (a & 63) | 1 << (b & 63)   # both bars end within the margin
    feed.write(ticks([(a, 1.1, 101.0, 1.0)]))           # closes AAA's bar 0, opens its bar 1
    worker.step()
    assert len(bars_of(features, a)) == 1
    assert worker.due()[0] == 1 << (b & 63)
