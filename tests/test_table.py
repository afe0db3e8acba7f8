"""Latest-value table: seqlock rows are never torn, never go backwards, and rows
that were never written read as sequence 0."""
from __future__ import annotations

import time

import numpy as np
import pytest

import _procs
from _procs import feature_rows
from shm.records import features_dtype
from shm.segment import SegmentError
from shm.table import Table, TableSpec

NAMES = ["ema_fast", "ema_slow", "rsi", "vwap", "ret_1m", "vol_1m"]
FEAT = features_dtype(NAMES)


def table_spec(shm_names, rows, dtype=FEAT):
    return TableSpec(name="test.features", segment=shm_names("table"), dtype=dtype, rows=rows)


def row_counters(recs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The counter each row holds; fails if any row mixes two writes (torn)."""
    c = recs["ts_origin_ns"].astype(np.int64)
    for name in FEAT.names:
        f = recs[name]
        if name == "symbol_id":
            want = np.where(c == 0, 0, rows)            # never-written rows are all zero
        elif FEAT.fields[name][0].itemsize == 8:
            want = c.astype(f.dtype)
        else:
            want = (c % 65536).astype(f.dtype)
        bad = np.flatnonzero(f != want)
        assert len(bad) == 0, (f"torn row {int(rows[bad[0]])}: {name}={f[bad[0]]!r} but "
                               f"ts_origin_ns={int(c[bad[0]])}; row={recs[bad[0]]!r}")
    return c


@pytest.fixture
def table_factory(shm_names):
    made = []

    def make(rows, dtype=FEAT):
        spec = table_spec(shm_names, rows, dtype)
        t = Table.create(spec)
        made.append(t)
        return spec, t

    yield make
    for t in made:
        t.close()


def test_features_dtype_is_padded_to_cache_lines():
    assert FEAT.itemsize % 64 == 0
    assert set(NAMES) <= set(FEAT.names)


def test_unwritten_rows_read_seq_zero_and_written_rows_round_trip(table_factory):
    spec, t = table_factory(8)
    recs, seqs = t.read()
    assert seqs.tolist() == [0] * 8
    assert not recs.view(np.uint64).any()

    t.write([1, 3], feature_rows(FEAT, np.array([1, 3]), 5))
    recs, seqs = t.read()
    assert seqs.tolist() == [0, 2, 0, 2, 0, 0, 0, 0]
    c = row_counters(recs, np.arange(8))
    assert c.tolist() == [0, 5, 0, 5, 0, 0, 0, 0]

    t.write([3], feature_rows(FEAT, np.array([3]), 9))
    recs, seqs = t.read([3, 1, 6])                   # rows come back in the order asked
    assert seqs.tolist() == [4, 2, 0]
    assert row_counters(recs, np.array([3, 1, 6])).tolist() == [9, 5, 0]

    other = Table.attach(spec, readonly=True)        # another process's view of the rows
    try:
        recs, seqs = other.read()
        assert seqs.tolist() == [0, 2, 0, 4, 0, 0, 0, 0]
        assert row_counters(recs, np.arange(8)).tolist() == [0, 5, 0, 9, 0, 0, 0, 0]
    finally:
        other.close()


def test_seqlock_read_never_torn_under_concurrent_writer(shm_names, children):
    rows, written_rows = 24, 20                      # rows 20..23 are never written
    spec = table_spec(shm_names, rows)
    table = Table.create(spec)
    try:
        q, started, stop = children.ctx.Queue(), children.ctx.Event(), children.ctx.Event()
        p = children.start(_procs.table_writer, spec, written_rows, started, stop, q, 60.0)
        assert started.wait(60), "table writer did not start"
        all_rows = np.arange(rows)
        subset = np.array([19, 0, 7, 21, 7, 12])       # unordered, repeated, one unwritten
        last_c = np.zeros(rows, np.int64)
        last_s = np.zeros(rows, np.uint64)
        seen = set()
        reads = 0
        deadline = time.monotonic() + 5
        while reads < 20000 and time.monotonic() < deadline:
            idx = all_rows if reads % 2 == 0 else subset
            # a writer descheduled mid-row is waited for (back-off), never returned torn
            recs, seqs = table.read(idx, timeout=30.0)
            c = row_counters(recs, idx)
            assert not (seqs & 1).any(), f"odd sequence returned: {seqs}"
            assert (c[idx >= written_rows] == 0).all() and (seqs[idx >= written_rows] == 0).all()
            assert (c[idx < written_rows] > 0).all() and (seqs[idx < written_rows] > 0).all()
            assert (c >= last_c[idx]).all(), "a row's counter went backwards"
            assert (seqs >= last_s[idx]).all(), "a row's sequence went backwards"
            last_c[idx] = c
            last_s[idx] = seqs
            seen.update(c.tolist())
            reads += 1
        stop.set()
        res = children.results(q, 1, timeout=60)["table_writer"]
        assert children.join(p) == 0
        assert reads >= 200, f"only {reads} reads in 5 s"
        assert len(seen) > 20, "the writer barely ran while we read: nothing was tested"
        recs, seqs = table.read()
        c = row_counters(recs, all_rows)
        assert c.max() == res["counter"]
        assert (seqs[:written_rows] >= 2).all() and (seqs[written_rows:] == 0).all()
    finally:
        table.close()


def test_attach_with_other_dtype_raises_segment_error(table_factory, children):
    """Attached from a child process: a crash while attaching fails this test only."""
    spec, t = table_factory(4)
    other = TableSpec(name=spec.name, segment=spec.segment,
                      dtype=features_dtype(NAMES[:-1] + ["spread"]), rows=4)
    assert other.dtype.itemsize == FEAT.itemsize     # same size: only the schema differs
    err = children.run(_procs.attach_and_report, Table, other)
    assert err is not None, "attaching with another dtype succeeded"
    assert err["type"] == "shm.segment.SegmentError", err
    assert "another schema" in err["msg"] and spec.segment in err["msg"]


def test_attach_missing_table_raises_clear_error(shm_names):
    spec = table_spec(shm_names, 4)
    with pytest.raises(SegmentError) as ei:
        Table.attach(spec)
    assert spec.segment in str(ei.value) and "does not exist" in str(ei.value)
