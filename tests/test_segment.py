"""Segments: owner-only permissions, owner liveness, stale and per-run cleanup."""
from __future__ import annotations

import os
import stat

import pytest

import _procs
from shm.records import TICK, features_dtype
from shm.ring import LOSSY, Ring, RingSpec
from shm.segment import (H_OWNER_PID, H_OWNER_START_US, KIND_RING, KIND_TABLE, MAGIC,
                         SHM_DIR, Segment, SegmentError, list_segments, remove_run,
                         remove_stale, segment_name)
from shm.table import Table, TableSpec


def shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, name.lstrip("/"))


def exists(name: str) -> bool:
    return os.path.exists(shm_path(name))


@pytest.fixture
def segments():
    """Segments made by a test, closed afterwards (shm_names unlinks them)."""
    made = []
    yield made
    for seg in made:
        seg.close()


def test_segment_name_carries_run_id():
    assert segment_name("r42", "ticks.binance") == "/tp_r42_ticks.binance"


def test_segments_are_created_owner_only(shm_names, segments):
    seg = Segment.create(shm_names("plain"), 256, KIND_RING)
    segments.append(seg)
    ring = Ring.create(RingSpec(name="t", segment=shm_names("ring"), dtype=TICK,
                                capacity=8, policy=LOSSY, readers=["r"]))
    table = Table.create(TableSpec(name="t", segment=shm_names("table"),
                                   dtype=features_dtype(["a"]), rows=4))
    try:
        for name in (seg.name, ring.seg.name, table.seg.name):
            st = os.stat(shm_path(name))
            assert stat.S_ISREG(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600, f"{name}: mode {oct(st.st_mode)}"
            assert st.st_uid == os.getuid()
    finally:
        ring.close()
        table.close()


def test_header_records_owner_and_list_segments_sees_it(shm_names, segments):
    seg = Segment.create(shm_names("plain"), 128, KIND_TABLE, schema=7)
    segments.append(seg)
    assert int(seg.header[0]) == MAGIC and int(seg.header[H_OWNER_PID]) == os.getpid()
    info = {i.name: i for i in list_segments()}[seg.name]
    assert (info.run_id, info.owner_pid, info.owner_alive) == (shm_names.run_id,
                                                               os.getpid(), True)
    again = Segment.attach(seg.name, KIND_TABLE, schema=7)
    segments.append(again)
    assert not again.created and int(again.header[H_OWNER_PID]) == os.getpid()


def test_attach_missing_segment_raises_clear_error(shm_names):
    name = shm_names("missing")
    with pytest.raises(SegmentError) as ei:
        Segment.attach(name, KIND_RING)
    assert name in str(ei.value) and "does not exist" in str(ei.value)


def test_attach_with_wrong_kind_raises_segment_error(shm_names, segments):
    seg = Segment.create(shm_names("ring"), 64, KIND_RING)
    segments.append(seg)
    with pytest.raises(SegmentError, match="expected kind"):
        Segment.attach(seg.name, KIND_TABLE)


def test_remove_stale_removes_dead_owners_and_keeps_live_ones(shm_names, segments, children):
    dead = children.start(_procs.exit_at_once)
    assert children.join(dead) == 0                   # its pid now belongs to no process
    hold = children.ctx.Event()
    alive = children.start(_procs.wait_for, hold, 60.0)
    try:
        dead_seg = Segment.create(shm_names("deadowner"), 64, KIND_RING, owner_pid=dead.pid)
        mine = Segment.create(shm_names("mine"), 64, KIND_RING)
        child_seg = Segment.create(shm_names("liveowner"), 64, KIND_RING, owner_pid=alive.pid)
        reused = Segment.create(shm_names("reusedpid"), 64, KIND_RING)
        segments.extend([dead_seg, mine, child_seg, reused])
        # same pid as a live process, but another start time: the pid was reused
        reused.header[H_OWNER_START_US] = int(reused.header[H_OWNER_START_US]) - 10_000_000

        removed = {i.name: i for i in remove_stale()}
        assert dead_seg.name in removed and removed[dead_seg.name].owner_pid == dead.pid
        assert reused.name in removed
        assert mine.name not in removed and child_seg.name not in removed
        assert not exists(dead_seg.name) and not exists(reused.name)
        assert exists(mine.name) and exists(child_seg.name)
    finally:
        hold.set()
    assert children.join(alive) == 0
    # once its owner has exited, the child's segment is stale too
    removed = {i.name for i in remove_stale()}
    assert child_seg.name in removed and mine.name not in removed
    assert exists(mine.name) and not exists(child_seg.name)


def test_remove_run_removes_every_segment_of_one_run(shm_names, segments):
    other_run = shm_names.new_run()
    ring = Ring.create(RingSpec(name="t", segment=shm_names("ring"), dtype=TICK,
                                capacity=8, policy=LOSSY, readers=["r"]))
    table = Table.create(TableSpec(name="t", segment=shm_names("table"),
                                   dtype=features_dtype(["a"]), rows=4))
    plain = Segment.create(shm_names("plain"), 64, KIND_RING)
    keep = Segment.create(other_run("ring"), 64, KIND_RING)
    segments.extend([plain, keep])
    try:
        names = [ring.seg.name, table.seg.name, plain.name]
        assert all(exists(n) for n in names)
        assert remove_run(shm_names.run_id) == 3
        assert not any(exists(n) for n in names)
        assert exists(keep.name)
        assert remove_run(shm_names.run_id) == 0
        assert remove_run(other_run.run_id) == 1 and not exists(keep.name)
    finally:
        ring.close()
        table.close()
