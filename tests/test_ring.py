"""Ring buffer contract: ordering, lossless backpressure, lossy drop accounting,
independent cursors, followers, restart, doorbell wake-up and schema checks."""
from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _procs
from _procs import make_ticks, tick_errors
from shm.doorbell import Doorbell
from shm.records import BAR, TICK
from shm.ring import LOSSLESS, LOSSY, Ring, RingFullError, RingSpec
from shm.segment import SegmentError


def ring_spec(shm_names, capacity, policy, readers=("r",), bells=False, dtype=TICK):
    return RingSpec(name="test.ticks", segment=shm_names("ring"), dtype=dtype,
                    capacity=capacity, policy=policy, readers=list(readers),
                    writer_bell=Doorbell() if bells else None,
                    reader_bells={r: Doorbell() for r in readers} if bells else {})


def reader_stats(ring, name):
    return [r for r in ring.stats()["readers"] if r["name"] == name][0]


def one(buf) -> np.ndarray:
    """Decode the bytes returned by RingReader.get() into a 1-record array."""
    assert isinstance(buf, bytes) and len(buf) == TICK.itemsize
    return np.frombuffer(buf, TICK)


def put_ticks(writer, start, stop, timeout=5.0):
    for rec in make_ticks(start, stop):
        writer.put(rec.tobytes(), timeout=timeout)


@pytest.fixture
def ring_factory(shm_names):
    """Create rings for a test; close their mappings afterwards (shm_names unlinks)."""
    made = []

    def make(*args, **kwargs):
        spec = ring_spec(shm_names, *args, **kwargs)
        ring = Ring.create(spec)
        made.append(ring)
        return spec, ring

    yield make
    for ring in made:
        ring.close()


def test_writer_tail_is_the_newest_records_still_held(ring_factory):
    """What a restarted writer resumes from: a new writer on the same ring sees them."""
    spec, ring = ring_factory(16, LOSSY, readers=())
    w = ring.writer()
    assert len(w.tail()) == 0
    w.write(make_ticks(0, 5))
    assert tick_errors(w.tail(), 0) is None and len(w.tail()) == 5
    w.write(make_ticks(5, 40))                      # wraps: the oldest 24 are gone
    successor = Ring.attach(spec)                   # as a restarted writer process does
    again = successor.writer()
    assert len(again.tail()) == 16 and tick_errors(again.tail(), 24) is None
    assert tick_errors(again.tail(3), 37) is None
    successor.close()


# -- ordering ---------------------------------------------------------------------
def test_batched_write_and_read_in_order_across_wrap(ring_factory):
    spec, ring = ring_factory(8, LOSSLESS)
    w, r = ring.writer(), ring.reader("r")
    seq = 0
    for k in [5, 3, 7, 8, 1, 6, 8, 2, 8, 4]:     # 52 records through 8 slots
        assert w.write(make_ticks(seq, seq + k)) == k
        b = r.read()
        assert (b.first_seq, len(b), b.dropped) == (seq, k, 0)
        assert tick_errors(b.records, seq) is None
        r.commit()
        seq += k
    assert r.read() is None
    # a full ring read back in capped batches, across the wrap point
    w.write(make_ticks(seq, seq + 8))
    got = []
    while (b := r.read(3)) is not None:
        assert b.first_seq == seq + len(got) and len(b) <= 3
        got.extend(b.records["seq"].tolist())
        r.commit()
    assert got == list(range(seq, seq + 8))
    assert ring.stats()["write_seq"] == seq + 8


def test_put_and_get_per_record_in_order_across_wrap(ring_factory):
    spec, ring = ring_factory(4, LOSSLESS)
    w, r = ring.writer(), ring.reader("r")
    assert r.get() is None
    seq = 0
    for burst in [1, 4, 3, 4, 2, 1, 4]:          # up to a full ring between drains
        put_ticks(w, seq, seq + burst)
        for i in range(burst):
            rec = one(r.get())
            assert tick_errors(rec, seq + i) is None
        assert r.get() is None
        seq += burst
    st_r = reader_stats(ring, "r")
    assert (st_r["cursor"], st_r["lag"], st_r["dropped"]) == (seq, 0, 0)


def test_batched_and_per_record_paths_interleave(ring_factory):
    spec, ring = ring_factory(8, LOSSLESS)
    w, r = ring.writer(), ring.reader("r")
    w.write(make_ticks(0, 3))
    put_ticks(w, 3, 6)
    assert tick_errors(one(r.get()), 0) is None
    b = r.read(4)
    assert b.first_seq == 1 and tick_errors(b.records, 1) is None
    r.commit()
    w.write(make_ticks(6, 12))                    # wraps
    assert tick_errors(one(r.get()), 5) is None
    b = r.read()
    assert b.first_seq == 6 and tick_errors(b.records, 6) is None and len(b) == 6


_ops = st.lists(st.tuples(st.sampled_from(["write", "put", "read", "get"]),
                          st.integers(1, 100)), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cap_exp=st.integers(1, 6), lossy=st.booleans(), ops=_ops)
def test_order_property_over_batch_sizes_and_capacity(shm_names, cap_exp, lossy, ops):
    """Any mix of batched/per-record writes and reads: sequences come out in order;
    a lossless ring loses nothing, a lossy one loses exactly what was lapped."""
    cap = 1 << cap_exp
    spec = ring_spec(shm_names, cap, LOSSY if lossy else LOSSLESS)
    ring = Ring.create(spec)
    try:
        w, r = ring.writer(), ring.reader("r")
        written = expected = dropped = gaps = 0

        def lost_now():                  # records a reader at `expected` has been lapped by
            return max(0, written - cap - expected)

        for op, k in ops + [("read", 10 ** 6)]:    # the last op drains
            if op in ("write", "put"):
                free = w.free()
                assert free == (cap if lossy else cap - (written - expected))
                n = k if lossy else min(k, free)
                if op == "write":
                    assert w.write(make_ticks(written, written + n), timeout=0) == n
                else:
                    put_ticks(w, written, written + n, timeout=0)
                written += n
            elif op == "read":
                lost = lost_now()
                b = r.read(k)
                if written == expected:
                    assert b is None
                    continue
                assert b.dropped == lost
                start = expected + lost
                assert b.first_seq == start and len(b) == min(k, written - start)
                assert tick_errors(b.records, start) is None
                expected = start + len(b)
                dropped += lost
                gaps += lost > 0
                r.commit()
            else:
                for _ in range(k):
                    lost = lost_now()
                    buf = r.get()
                    if written == expected:
                        assert buf is None
                        break
                    assert tick_errors(one(buf), expected + lost) is None
                    expected += lost + 1
                    dropped += lost
                    gaps += lost > 0
        assert expected == written
        s = reader_stats(ring, "r")
        assert (s["cursor"], s["lag"], s["dropped"], s["gaps"]) == (written, 0, dropped, gaps)
        if not lossy:
            assert dropped == 0
    finally:
        ring.close()
        ring.seg.unlink()


# -- lossless -----------------------------------------------------------------------
def test_lossless_writer_never_overwrites_unread_and_names_slow_reader(ring_factory):
    spec, ring = ring_factory(8, LOSSLESS, readers=("fast", "slow"))
    w = ring.writer()
    fast, slow = ring.reader("fast"), ring.reader("slow")
    w.write(make_ticks(0, 6))
    fast.read()
    fast.commit()
    t0 = time.monotonic()
    with pytest.raises(RingFullError) as ei:
        w.write(make_ticks(6, 11), timeout=0.2)   # room for 2 of 5
    waited = time.monotonic() - t0
    e = ei.value
    assert e.written == 2
    assert "'slow'" in str(e) and "fast" not in str(e) and spec.name in str(e)
    assert "2 of 5" in str(e)
    assert 0.2 <= waited < 30
    with pytest.raises(RingFullError, match="'slow'") as ei:
        w.put(make_ticks(8, 9).tobytes(), timeout=0.2)
    assert ei.value.written == 0
    s = ring.stats()
    assert s["write_seq"] == 8 and s["backpressure_timeouts"] == 2
    assert s["backpressure_waits"] >= 2 and s["backpressure_s"] >= 0.35

    # nothing unread was overwritten; reading without commit still protects the records
    b = slow.read()
    assert b.first_seq == 0 and len(b) == 8 and tick_errors(b.records, 0) is None
    with pytest.raises(RingFullError) as ei:
        w.write(make_ticks(8, 11), timeout=0.2)
    assert ei.value.written == 0

    # the writer resumes after the reader commits
    slow.commit()
    assert w.free() == 6    # now 'fast' (cursor 6) is the slowest
    fast.read()
    fast.commit()
    assert w.free() == 8
    assert w.write(make_ticks(8, 11), timeout=0.2) == 3
    for rd, first in ((fast, 8), (slow, 8)):
        b = rd.read()
        assert b.first_seq == first and tick_errors(b.records, first) is None and len(b) == 3
        rd.commit()
    assert ring.stats()["backpressure_timeouts"] == 3


def test_lossless_no_loss_across_processes(shm_names, children):
    total, cap = 200_000, 256
    spec = ring_spec(shm_names, cap, LOSSLESS, readers=("a", "b"), bells=True)
    ring = Ring.create(spec)
    try:
        q = children.ctx.Queue()
        readers = [children.start(_procs.checking_reader, spec, "a", total, 1, 0, 1, 60.0, q),
                   children.start(_procs.checking_reader, spec, "b", total, 2, 200, 3, 60.0, q)]
        writer = children.start(_procs.lossless_writer, spec, total, 3, 2 * cap + 88, 30.0, q)
        res = children.results(q, 3, timeout=90)
        for p in readers + [writer]:
            assert children.join(p) == 0
        wr = res["writer"]
        assert wr["written"] == wr["write_seq"] == total
        assert wr["max_batch_used"] > cap              # batches larger than the ring
        assert wr["backpressure_timeouts"] == 0
        assert wr["backpressure_waits"] > 0            # the writer did wait for readers
        for name, p in zip("ab", readers):
            rr = res[f"reader:{name}"]
            assert rr["received"] == total
            assert rr["dropped"] == rr["gaps"] == 0
            assert rr["cursor"] == total and rr["pid"] == rr["my_pid"] == p.pid
        s = ring.stats()
        assert s["write_seq"] == total and s["writer_pid"] == writer.pid
        assert [(x["cursor"], x["lag"]) for x in s["readers"]] == [(total, 0), (total, 0)]
    finally:
        ring.close()


# -- lossy --------------------------------------------------------------------------
def test_lossy_lapped_reader_counts_exact_drops(ring_factory):
    spec, ring = ring_factory(16, LOSSY, readers=("r", "idle"))
    w, r = ring.writer(), ring.reader("r")
    w.write(make_ticks(0, 5))
    b = r.read()
    assert (b.first_seq, len(b), b.dropped) == (0, 5, 0)
    r.commit()
    seq = 5
    t0 = time.monotonic()
    for k in [7, 30, 1, 16, 17, 29]:             # 100 records; the writer never waits
        assert w.write(make_ticks(seq, seq + k), timeout=0) == k
        seq += k
    assert time.monotonic() - t0 < 5
    assert ring.stats()["backpressure_waits"] == 0

    b = r.read()                                  # lapped: 105 - 16 - 5 = 84 lost
    assert (b.dropped, b.first_seq, len(b)) == (84, 89, 16)
    assert tick_errors(b.records, 89) is None
    r.commit()
    s = reader_stats(ring, "r")
    assert (s["dropped"], s["gaps"], s["cursor"]) == (84, 1, 105)

    w.write(make_ticks(105, 145))
    b = r.read(10)                                # 145 - 16 - 105 = 24 lost, then 10 read
    assert (b.dropped, b.first_seq, len(b)) == (24, 129, 10)
    assert tick_errors(b.records, 129) is None
    b = r.read()
    assert (b.dropped, b.first_seq, len(b)) == (0, 139, 6)
    assert tick_errors(b.records, 139) is None
    r.commit()
    s = reader_stats(ring, "r")
    assert (s["dropped"], s["gaps"], s["cursor"], s["lag"]) == (108, 2, 145, 0)

    idle = ring.reader("idle")                    # its own cursor: still at 0
    assert reader_stats(ring, "idle")["lag"] == 145
    b = idle.read()
    assert (b.dropped, b.first_seq, len(b)) == (129, 129, 16)
    assert tick_errors(b.records, 129) is None
    assert reader_stats(ring, "idle")["dropped"] == 129


def test_lossy_get_counts_drops(ring_factory):
    spec, ring = ring_factory(8, LOSSY)
    w, r = ring.writer(), ring.reader("r")
    put_ticks(w, 0, 30, timeout=0)
    assert tick_errors(one(r.get()), 22) is None  # 30 - 8: 22 lost
    s = reader_stats(ring, "r")
    assert (s["dropped"], s["gaps"], s["cursor"]) == (22, 1, 23)
    for seq in range(23, 30):
        assert tick_errors(one(r.get()), seq) is None
    assert r.get() is None
    assert reader_stats(ring, "r")["dropped"] == 22
    w.write(make_ticks(30, 50))
    assert tick_errors(one(r.get()), 42) is None  # 50 - 8 - 30 = 12 more lost
    s = reader_stats(ring, "r")
    assert (s["dropped"], s["gaps"]) == (34, 2)


class _RacingView:
    """Stands in for the mapping get() copies from (``reader._mm``): runs ``hook`` once, just before the
    next slice is taken, i.e. the writer overwrites the slot while the reader copies."""

    def __init__(self, mv, hook):
        self.mv = mv
        self.hook = hook

    def __getitem__(self, key):
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return self.mv[key]


def test_lossy_get_counts_record_overwritten_while_copying(ring_factory):
    """The writer overwrites the slot get() is copying (a reader at lag == capacity,
    as after every lap): that record is lost and must be counted as dropped."""
    spec, ring = ring_factory(8, LOSSY)
    wring = Ring.attach(spec)                      # the writer's own mapping
    try:
        w, r = wring.writer(), ring.reader("r")
        w.write(make_ticks(0, 8))                  # full: reader lag == capacity
        view = _RacingView(r._mm, lambda: put_ticks(w, 8, 9, timeout=0))
        r._mm = ring._mm = view
        try:
            first = one(r.get())
        finally:
            r._mm = ring._mm = view.mv
        assert tick_errors(first, 1) is None       # seq 0 was overwritten (now holds 8)
        got = [1]
        while (buf := r.get()) is not None:
            got.append(int(one(buf)["seq"][0]))
        assert got == list(range(1, 9))
        s = reader_stats(ring, "r")
        assert s["dropped"] == 1, f"record 0 was lost but dropped counter is {s['dropped']}"
        assert s["gaps"] == 1
        assert len(got) + s["dropped"] == 9        # every record read or counted
    finally:
        wring.close()


def test_lossy_get_after_uncommitted_read_counts_exact_drops(ring_factory):
    spec, ring = ring_factory(8, LOSSY)
    w, r = ring.writer(), ring.reader("r")
    w.write(make_ticks(0, 4))
    b = r.read()                                   # read, not yet committed
    assert (b.first_seq, len(b)) == (0, 4)
    w.write(make_ticks(4, 30))                     # laps the reader: 4..21 lost
    assert tick_errors(one(r.get()), 22) is None
    s = reader_stats(ring, "r")
    assert s["dropped"] == 22 - 4, (f"records 4..21 (18) were lost, dropped counter says "
                                    f"{s['dropped']}")
    assert s["gaps"] == 1


def test_lossy_batch_read_counts_records_overwritten_while_copying(ring_factory):
    spec, ring = ring_factory(8, LOSSY)
    wring = Ring.attach(spec)
    try:
        w, r = wring.writer(), ring.reader("r")
        w.write(make_ticks(0, 8))
        copy_out = ring._copy_out

        def racing_copy(start, n):                 # writer laps 3 slots during the copy
            out = copy_out(start, n)
            w.write(make_ticks(8, 11))
            return out

        ring._copy_out = racing_copy
        try:
            b = r.read()
        finally:
            del ring._copy_out
        assert (b.dropped, b.first_seq, len(b)) == (3, 3, 5)
        assert tick_errors(b.records, 3) is None
        b = r.read()
        assert (b.dropped, b.first_seq, len(b)) == (0, 8, 3)
        assert tick_errors(b.records, 8) is None
        s = reader_stats(ring, "r")
        assert (s["dropped"], s["gaps"]) == (3, 1)
    finally:
        wring.close()


def test_lossy_batch_reader_accounts_every_record_across_processes(shm_names, children):
    total, cap = 100_000, 64
    spec = ring_spec(shm_names, cap, LOSSY)
    ring = Ring.create(spec)
    try:
        q, started = children.ctx.Queue(), children.ctx.Event()
        p = children.start(_procs.lossy_batch_writer, spec, total, 50, 5, started, q)
        assert started.wait(60), "writer did not start"
        r = ring.reader("r")
        expected = received = dropped = gaps = 0
        deadline = time.monotonic() + 60
        while expected < total:
            assert time.monotonic() < deadline, f"only up to seq {expected} of {total}"
            b = r.read(7)
            if b is None:
                continue
            assert b.first_seq == expected + b.dropped
            err = tick_errors(b.records, b.first_seq)
            assert err is None, err
            expected = b.first_seq + len(b)
            received += len(b)
            dropped += b.dropped
            gaps += b.dropped > 0
            r.commit()
        res = children.results(q, 1, timeout=60)
        assert children.join(p) == 0
        assert res["batch_writer"]["write_seq"] == total
        assert gaps > 0, "the reader was never lapped: the test exercised nothing"
        s = reader_stats(ring, "r")
        assert (s["dropped"], s["gaps"]) == (dropped, gaps)
        assert received + dropped == total
    finally:
        ring.close()


def test_lossy_get_reader_accounts_every_record_across_processes(shm_names, children):
    total, cap = 100_000, 64
    spec = ring_spec(shm_names, cap, LOSSY)
    ring = Ring.create(spec)
    try:
        q, started = children.ctx.Queue(), children.ctx.Event()
        p = children.start(_procs.lossy_putter, spec, total, started, q)
        assert started.wait(60), "writer did not start"
        r = ring.reader("r")
        last = -1
        received = 0
        deadline = time.monotonic() + 60
        while last < total - 1:
            buf = r.get()
            if buf is None:
                assert time.monotonic() < deadline, f"only up to seq {last} of {total}"
                continue
            rec = one(buf)
            seq = int(rec["seq"][0])
            assert seq > last, f"seq {seq} after {last}"
            err = tick_errors(rec, seq)
            assert err is None, err
            last = seq
            received += 1
        res = children.results(q, 1, timeout=60)
        assert children.join(p) == 0
        assert res["putter"]["write_seq"] == total
        s = reader_stats(ring, "r")
        assert s["gaps"] > 0, "the reader was never lapped: the test exercised nothing"
        assert received + s["dropped"] == total, (
            f"received {received} + dropped counter {s['dropped']} != {total} written")
    finally:
        ring.close()


# -- several readers, followers -------------------------------------------------------
def test_readers_have_independent_cursors(ring_factory):
    spec, ring = ring_factory(16, LOSSLESS, readers=("a", "b", "c"))
    w = ring.writer()
    a, b, c = (ring.reader(n) for n in "abc")
    w.write(make_ticks(0, 10))
    assert a.read().first_seq == 0
    a.commit()
    assert len(b.read(4)) == 4
    b.commit()
    s = ring.stats()["readers"]
    assert [(x["name"], x["cursor"], x["lag"]) for x in s] == [("a", 10, 0), ("b", 4, 6),
                                                                ("c", 0, 10)]
    assert w.free() == 6                           # bounded by the slowest, 'c'
    w.write(make_ticks(10, 16), timeout=0.2)
    with pytest.raises(RingFullError, match="'c'"):
        w.write(make_ticks(16, 17), timeout=0.2)
    bc = c.read()
    assert bc.first_seq == 0 and len(bc) == 16 and tick_errors(bc.records, 0) is None
    c.commit()
    assert w.free() == 4                           # now 'b' (cursor 4) is the slowest
    w.write(make_ticks(16, 20), timeout=0.2)
    with pytest.raises(RingFullError, match="'b'"):
        w.write(make_ticks(20, 21), timeout=0.2)
    bb = b.read()
    assert bb.first_seq == 4 and tick_errors(bb.records, 4) is None and len(bb) == 16
    ba = a.read()
    assert ba.first_seq == 10 and tick_errors(ba.records, 10) is None and len(ba) == 10
    with pytest.raises(KeyError, match="no reader 'zz'"):
        ring.reader("zz")


def test_follower_never_blocks_lossless_writer_and_detects_lap(ring_factory):
    spec, ring = ring_factory(16, LOSSLESS)
    fring = Ring.attach(spec, readonly=True)       # a tap maps the ring read-only
    try:
        follower = fring.follower(from_start=True)
        tail = fring.follower()                    # starts at the current end
        w, r = ring.writer(), ring.reader("r")
        for seq in range(0, 160, 16):              # 10 laps of the follower
            assert w.write(make_ticks(seq, seq + 16), timeout=0.2) == 16
            assert r.read().first_seq == seq
            r.commit()
        s = ring.stats()
        assert s["backpressure_waits"] == 0 and s["backpressure_timeouts"] == 0
        assert [x["name"] for x in s["readers"]] == ["r"]

        b = follower.read()
        assert (b.dropped, b.first_seq, len(b)) == (144, 144, 16)
        assert tick_errors(b.records, 144) is None
        assert follower.dropped == 144
        b = tail.read(5)
        assert (b.dropped, b.first_seq) == (144, 144)
        w.write(make_ticks(160, 165))
        b = follower.read()
        assert (b.dropped, b.first_seq, len(b)) == (0, 160, 5)
        assert tick_errors(b.records, 160) is None
        assert follower.read() is None and follower.dropped == 144
        assert reader_stats(ring, "r")["dropped"] == 0
    finally:
        fring.close()


# -- restart --------------------------------------------------------------------------
def test_restarted_reader_and_writer_resume(ring_factory):
    spec, ring = ring_factory(32, LOSSLESS, readers=("r",))
    w = Ring.attach(spec).writer()
    w.write(make_ticks(0, 20))
    del w                                          # writer process gone

    ring1 = Ring.attach(spec)
    r1 = ring1.reader("r")
    assert r1.read(10).first_seq == 0
    r1.commit()
    b = r1.read(6)                                 # read but never committed
    assert b.first_seq == 10
    del r1, b
    ring1.close()                                  # reader process gone

    ring2 = Ring.attach(spec)                      # restarted reader
    r2 = ring2.reader("r")
    ring3 = Ring.attach(spec)                      # restarted writer
    w2 = ring3.writer()
    try:
        assert w2.seq == 20
        w2.write(make_ticks(20, 30))
        b = r2.read()
        assert (b.first_seq, len(b)) == (10, 20)
        assert tick_errors(b.records, 10) is None
        r2.commit()
        assert reader_stats(ring, "r")["cursor"] == 30
    finally:
        ring2.close()
        ring3.close()


def test_restart_across_processes(shm_names, children):
    spec = ring_spec(shm_names, 64, LOSSLESS, readers=("r",))
    ring = Ring.create(spec)
    try:
        q = children.ctx.Queue()
        p = children.start(_procs.range_writer, spec, 0, 50, q)
        assert children.results(q, 1, 60)["range_writer"]["write_seq"] == 50
        assert children.join(p) == 0
        p = children.start(_procs.partial_reader, spec, "r", 30, 15, q)
        res = children.results(q, 1, 60)["partial_reader"]
        assert children.join(p) == 0
        assert res == {"first": 0, "n1": 30, "n2": 15, "cursor": 45}
        assert reader_stats(ring, "r")["cursor"] == 30

        r = Ring.attach(spec).reader("r")          # the restarted reader
        p = children.start(_procs.range_writer, spec, 50, 70, q)   # and writer
        assert children.results(q, 1, 60)["range_writer"]["resumed_at"] == 50
        assert children.join(p) == 0
        b = r.read()
        assert (b.first_seq, len(b), b.dropped) == (30, 40, 0)
        assert tick_errors(b.records, 30) is None
    finally:
        ring.close()


# -- doorbell -------------------------------------------------------------------------
def test_doorbell_wakes_reader_in_other_process(shm_names, children):
    spec = ring_spec(shm_names, 16, LOSSY, readers=("r",), bells=True)
    ring = Ring.create(spec)
    try:
        q, ready = children.ctx.Queue(), children.ctx.Event()
        p = children.start(_procs.waiting_reader, spec, "r", ready, q, 30.0)
        assert ready.wait(60), "reader did not start"
        idx = ring.reader_names.index("r")
        deadline = time.monotonic() + 30
        while not ring._flags[idx]:                # the reader is about to sleep
            assert time.monotonic() < deadline, "reader never set its waiting flag"
        w = ring.writer()
        w.write(make_ticks(0, 3))
        res = children.results(q, 1, 60)["waiter"]
        assert children.join(p) == 0
        assert res["woke"] is True
        assert res["slept"] < 10, f"reader slept {res['slept']:.1f} s: not woken by the doorbell"
        assert res["first_seq"] == 0 and res["seqs"] == [0, 1, 2]
        assert ring._flags[idx] == 0
    finally:
        ring.close()


# -- schema and attach errors -------------------------------------------------------
def test_attach_with_other_dtype_raises_segment_error(ring_factory, children):
    """Attached from a child process: a crash while attaching fails this test only."""
    spec, ring = ring_factory(16, LOSSY)
    other = RingSpec(name=spec.name, segment=spec.segment, dtype=BAR, capacity=16,
                     policy=LOSSY, readers=["r"])
    assert BAR.itemsize == TICK.itemsize           # same size: only the schema differs
    err = children.run(_procs.attach_and_report, Ring, other)
    assert err is not None, "attaching with another dtype succeeded"
    assert err["type"] == "shm.segment.SegmentError", err
    assert "another schema" in err["msg"] and spec.segment in err["msg"]


def test_attach_missing_segment_raises_clear_error(shm_names):
    spec = ring_spec(shm_names, 16, LOSSY)
    with pytest.raises(SegmentError) as ei:
        Ring.attach(spec)
    assert spec.segment in str(ei.value) and "does not exist" in str(ei.value)


def test_put_of_wrong_size_changes_nothing(ring_factory):
    spec, ring = ring_factory(8, LOSSLESS)
    w, r = ring.writer(), ring.reader("r")
    with pytest.raises(ValueError, match="a record is 64 bytes, got 63"):
        w.put(b"\x01" * 63)
    w.put(make_ticks(0, 1).tobytes())
    first = r.get()
    assert tick_errors(one(first), 0) is None
    assert r.get() is None                     # no stale slot was published


def test_wait_does_not_return_early_after_a_stale_ring(shm_names):
    bell = Doorbell()
    spec = RingSpec("t", shm_names("ring"), TICK, 8, LOSSY, ["r"], reader_bells={"r": bell})
    ring = Ring.create(spec)
    try:
        r = ring.reader("r")
        bell.ring()                            # left over from data already consumed
        t0 = time.monotonic()
        assert r.wait(0.3) is False
        assert time.monotonic() - t0 >= 0.29   # waited its timeout, did not give up early
        ring.writer().write(make_ticks(0, 1))
        assert r.wait(30) is True
    finally:
        ring.close()
        ring.seg.unlink()


def test_a_reader_with_interest_is_rung_only_for_its_symbols(shm_names):
    """An indicator shard waiting for its bars' closing ticks: the writer leaves it
    asleep (flag still set) through batches of other symbols, rings it for one of its
    own (symbol_id % 64), once its wake lag is unread, for any put, and the records it
    slept through stay."""
    bell, other = Doorbell(), Doorbell()
    spec = RingSpec("t", shm_names("ring"), TICK, 64, LOSSY, ["r", "all"],
                    reader_bells={"r": bell, "all": other})
    ring = Ring.create(spec)
    try:
        r, every, w = ring.reader("r"), ring.reader("all"), ring.writer()
        r.set_interest(1 << 5, 12)
        r.set_waiting(True)
        every.set_waiting(True)
        ticks = make_ticks(0, 4)
        ticks["symbol_id"] = 3
        w.write(ticks)
        assert not bell.wait(0) and ring._flags[r.index] == 1      # asleep, still waiting
        assert other.wait(0) and ring._flags[every.index] == 0     # no interest: rung
        ticks = make_ticks(4, 8)
        ticks["symbol_id"] = [3, 69, 3, 3]                          # 69 % 64 == 5
        w.write(ticks)
        assert bell.wait(0) and ring._flags[r.index] == 0
        r.set_waiting(True)
        w.put(make_ticks(8, 9).tobytes())                           # a put: symbols unknown
        assert bell.wait(0)
        r.set_waiting(True)
        ticks = make_ticks(9, 12)
        ticks["symbol_id"] = 3
        w.write(ticks)                                              # 12 unread: its wake lag
        assert bell.wait(0)
        assert [int(x) for x in r.read().records["seq"]] == list(range(12))
    finally:
        ring.close()
        ring.seg.unlink()


def test_observer_never_gates_a_lossless_writer_and_counts_what_it_misses(shm_names):
    spec = RingSpec("t", shm_names("ring"), TICK, 8, LOSSLESS, ["r"], observers=["obs"])
    ring = Ring.create(spec)
    try:
        w, r, obs = ring.writer(), ring.reader("r"), ring.reader("obs")
        w.write(make_ticks(0, 4))
        first = obs.read()
        obs.commit()
        assert [int(x) for x in first.records["seq"]] == [0, 1, 2, 3]
        for start in range(4, 20, 4):          # the gating reader keeps up, the observer idles
            w.write(make_ticks(start, start + 4), timeout=0.5)
            r.read()
            r.commit()
        later = obs.read()                     # lapped: 4..11 are gone, 12..19 remain
        assert later.dropped == 8 and [int(x) for x in later.records["seq"]] == list(range(12, 20))
        obs.commit()
        stats = {x["name"]: x for x in ring.stats()["readers"]}
        assert stats["obs"]["observer"] and not stats["r"]["observer"]
        assert stats["obs"]["dropped"] == 8 and stats["obs"]["lag"] == 0
        assert Ring.attach(spec).reader("obs").cursor == 20   # a restart resumes there
    finally:
        ring.close()
        ring.seg.unlink()
