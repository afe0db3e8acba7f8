"""The compiled ring path (shm._ringfast) against the same contract as the pure-Python
one: the ring's property and contract tests on both paths, compiled and pure processes
sharing one ring, a writer with three reader processes, and the sleeping-reader
guarantee (a reader blocked in wait() is woken, never left until its timeout); the
seqlock table's tests on both paths too."""
from __future__ import annotations

import inspect
import os
import time

import numpy as np
import pytest

import _procs
import test_ring
import test_table
from _procs import make_ticks, tick_errors
from shm import ring as ringmod
from shm.doorbell import Doorbell
from shm.records import TICK
from shm.ring import LOSSLESS, LOSSY, Ring, RingSpec
from test_ring import ring_factory  # noqa: F401 - fixtures of the re-run tests
from test_table import table_factory  # noqa: F401

pytestmark = pytest.mark.skipif(
    not ringmod.compiled_available(),
    reason="shm._ringfast is not built (no C compiler at install); build it with "
           "`pip install -e .` or `python setup.py build_ext --inplace`")

PATHS = ["compiled", "python"]
SIZE = TICK.itemsize
SLEEP_TIMEOUT = 20.0   # a lost wake-up shows as a wait() this long


@pytest.fixture(params=PATHS)
def path(request, monkeypatch) -> str:
    """Writers and readers made in this process and in spawned children use this path."""
    monkeypatch.setenv("TICKPIPE_RING", request.param)
    prev = ringmod.set_path(request.param)
    yield request.param
    ringmod.set_path(prev)


def spec_of(shm_names, capacity: int, policy: int, readers=("r",)) -> RingSpec:
    return RingSpec(name="test.fast", segment=shm_names("ring"), dtype=TICK, capacity=capacity,
                    policy=policy, readers=list(readers), writer_bell=Doorbell(),
                    reader_bells={r: Doorbell() for r in readers})


# -- the ring's own tests, on both paths ------------------------------------------------
RERUN = [
    "test_order_property_over_batch_sizes_and_capacity",
    "test_put_and_get_per_record_in_order_across_wrap",
    "test_batched_and_per_record_paths_interleave",
    "test_batched_write_and_read_in_order_across_wrap",
    "test_lossless_writer_never_overwrites_unread_and_names_slow_reader",
    "test_lossy_get_counts_drops",
    "test_lossy_get_after_uncommitted_read_counts_exact_drops",
    "test_readers_have_independent_cursors",
    "test_restarted_reader_and_writer_resume",
    "test_put_of_wrong_size_changes_nothing",
    "test_wait_does_not_return_early_after_a_stale_ring",
    "test_observer_never_gates_a_lossless_writer_and_counts_what_it_misses",
    "test_lossless_no_loss_across_processes",
    "test_lossy_get_reader_accounts_every_record_across_processes",
    "test_doorbell_wakes_reader_in_other_process",
]


@pytest.mark.parametrize("case", RERUN)
def test_ring_contract_on_both_paths(path, case, request):
    fn = getattr(test_ring, case)
    fn(**{name: request.getfixturevalue(name) for name in inspect.signature(fn).parameters})


TABLE_RERUN = ["test_unwritten_rows_read_seq_zero_and_written_rows_round_trip",
               "test_seqlock_read_never_torn_under_concurrent_writer"]


@pytest.mark.parametrize("case", TABLE_RERUN)
def test_table_contract_on_both_paths(path, case, request):
    fn = getattr(test_table, case)
    fn(**{name: request.getfixturevalue(name) for name in inspect.signature(fn).parameters})


def test_path_is_chosen_and_reported(path, shm_names):
    """set_path picks the classes; FAST_PATH says which; a closed ring refuses the C calls."""
    ring = Ring.create(spec_of(shm_names, 8, LOSSLESS))
    try:
        w, r = ring.writer(), ring.reader("r")
        assert ringmod.FAST_PATH == path
        compiled = path == "compiled"
        assert isinstance(w, ringmod.FastRingWriter) == compiled
        assert isinstance(r, ringmod.FastRingReader) == compiled
        w.put(make_ticks(0, 1).tobytes())
        w.put(memoryview(make_ticks(1, 2).tobytes()))  # any buffer of one record
        assert tick_errors(np.frombuffer(r.get(), TICK), 0) is None
        assert tick_errors(np.frombuffer(r.get(), TICK), 1) is None
        assert (w.seq, r.cursor, r.committed) == (2, 2, 2)
    finally:
        ring.close()
    if compiled:
        with pytest.raises(ValueError, match="closed"):
            w.put(make_ticks(2, 3).tobytes())
        with pytest.raises(ValueError, match="closed"):
            r.get()


def test_environment_forces_the_pure_path():
    """TICKPIPE_RING=python is honoured at import (a fresh interpreter)."""
    import subprocess
    import sys
    code = "import shm.ring as r; print(r.FAST_PATH, '|', r.FAST_PATH_WHY)"
    for env, want in (("python", "python | TICKPIPE_RING=python"), ("", "compiled")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "TICKPIPE_RING": env}, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().startswith(want), out.stdout


# -- child targets (spawned children import this module by name) ------------------------
def mixed_writer(spec, path, total, seed, q):
    """Write seqs [0, total): mostly put(), some batched write() of 1..40 records."""
    def body():
        ringmod.set_path(path)
        ring = Ring.attach(spec)
        w = ring.writer()
        rng = np.random.default_rng(seed)
        raw = make_ticks(0, total).tobytes()
        i = puts = 0
        while i < total:
            if rng.random() < 0.9:
                w.put(raw[i * SIZE:(i + 1) * SIZE], timeout=60.0)
                i += 1
                puts += 1
            else:
                k = min(int(rng.integers(1, 41)), total - i)
                if w.write(make_ticks(i, i + k), timeout=60.0) != k:
                    raise AssertionError("short write")
                i += k
        cls = type(w).__name__
        ring.close()
        return {"written": i, "puts": puts, "class": cls}
    _procs._run(q, "writer", body)


def mixed_reader(spec, name, path, total, seed, q):
    """Read until seq total-1, by get() and capped read(); every record checked."""
    def body():
        ringmod.set_path(path)
        ring = Ring.attach(spec)
        r = ring.reader(name)
        rng = np.random.default_rng(seed)
        lossy = ring.policy == LOSSY
        expected = received = 0
        deadline = time.monotonic() + 240
        while expected < total:
            if time.monotonic() > deadline:
                raise AssertionError(f"reader {name}: at seq {expected} of {total} after 240 s")
            if rng.random() < 0.8:
                buf = r.get()
                if buf is None:
                    r.wait(timeout=1.0)
                    continue
                rec = np.frombuffer(buf, TICK)
                seq = int(rec["seq"][0])
                first, n = seq, 1
                recs = rec
            else:
                b = r.read(int(rng.integers(1, 30)))
                if b is None:
                    r.commit()
                    r.wait(timeout=1.0)
                    continue
                first, n, recs = b.first_seq, len(b), b.records
                r.commit()
            if first < expected or (not lossy and first != expected):
                raise AssertionError(f"reader {name}: got seq {first}, expected {expected}")
            err = tick_errors(recs, first)
            if err:
                raise AssertionError(f"reader {name} (torn or misplaced record): {err}")
            expected = first + n
            received += n
        me = [x for x in ring.stats()["readers"] if x["name"] == name][0]
        out = {"received": received, "dropped": int(me["dropped"]), "gaps": int(me["gaps"]),
               "cursor": int(me["cursor"]), "class": type(r).__name__}
        ring.close()
        return out
    _procs._run(q, f"reader:{name}", body)


def sleepy_reader(spec, path, rounds, timeout, ready, q):
    """Block in wait() for every record; report how long each wait slept."""
    def body():
        ringmod.set_path(path)
        ring = Ring.attach(spec)
        r = ring.reader("r")
        ready.set()
        slept = []
        for i in range(rounds):
            t0 = time.monotonic()
            woke = r.wait(timeout=timeout)
            slept.append(time.monotonic() - t0)
            if not woke or slept[-1] > timeout / 4:  # wait() re-checks the ring at its timeout
                raise AssertionError(f"round {i}: wait() slept {slept[-1]:.1f} s of its "
                                     f"{timeout} s timeout: the writer's ring was lost")
            buf = r.get()
            if buf is None or tick_errors(np.frombuffer(buf, TICK), i) is not None:
                raise AssertionError(f"round {i}: woken without record {i}")
        out = {"max_slept": max(slept), "class": type(r).__name__}
        ring.close()
        return out
    _procs._run(q, "sleeper", body)


# -- compiled and pure processes on one ring --------------------------------------------
@pytest.mark.parametrize("policy", [LOSSLESS, LOSSY], ids=["lossless", "lossy"])
@pytest.mark.parametrize("writer_path,reader_path",
                         [("compiled", "python"), ("python", "compiled")])
def test_compiled_and_pure_processes_share_a_ring(shm_names, children, writer_path,
                                                  reader_path, policy):
    total = 60_000
    spec = spec_of(shm_names, 64, policy)
    ring = Ring.create(spec)
    try:
        q = children.ctx.Queue()
        pr = children.start(mixed_reader, spec, "r", reader_path, total, 5, q)
        pw = children.start(mixed_writer, spec, writer_path, total, 6, q)
        res = children.results(q, 2, timeout=300)
        assert children.join(pr) == 0 and children.join(pw) == 0
        want = {"compiled": ("FastRingWriter", "FastRingReader"),
                "python": ("RingWriter", "RingReader")}
        assert res["writer"]["class"] == want[writer_path][0]
        rr = res["reader:r"]
        assert rr["class"] == want[reader_path][1]
        assert rr["cursor"] == total
        assert rr["received"] + rr["dropped"] == total
        if policy == LOSSLESS:
            assert rr["received"] == total and rr["dropped"] == 0   # every record once
    finally:
        ring.close()


# -- one writer, three readers ------------------------------------------------------------
@pytest.mark.parametrize("policy", [LOSSLESS, LOSSY], ids=["lossless", "lossy"])
def test_stress_one_writer_three_readers(shm_names, children, policy):
    """Compiled writer; readers compiled, compiled and pure: nothing lost on a lossless
    ring, nothing torn or out of order on either, every loss counted on a lossy one."""
    total = 80_000
    names = ("a", "b", "c")
    spec = spec_of(shm_names, 128, policy, readers=names)
    ring = Ring.create(spec)
    try:
        q = children.ctx.Queue()
        paths = {"a": "compiled", "b": "compiled", "c": "python"}
        readers = [children.start(mixed_reader, spec, n, paths[n], total, 10 + i, q)
                   for i, n in enumerate(names)]
        writer = children.start(mixed_writer, spec, "compiled", total, 9, q)
        res = children.results(q, 4, timeout=400)
        for p in readers + [writer]:
            assert children.join(p) == 0
        assert res["writer"]["written"] == total
        for n in names:
            rr = res[f"reader:{n}"]
            assert rr["cursor"] == total, (n, rr)
            assert rr["received"] + rr["dropped"] == total, (n, rr)
            if policy == LOSSLESS:
                assert rr["received"] == total and rr["dropped"] == rr["gaps"] == 0, (n, rr)
        s = ring.stats()
        assert s["write_seq"] == total and s["backpressure_timeouts"] == 0
    finally:
        ring.close()


# -- the sleeping reader is woken ---------------------------------------------------------
@pytest.mark.parametrize("writer_path,reader_path",
                         [("compiled", "compiled"), ("compiled", "python"),
                          ("python", "compiled")])
def test_sleeping_reader_is_always_woken(shm_names, children, monkeypatch, writer_path,
                                         reader_path):
    """Each record is written while the reader is going to sleep or asleep (the writer
    does not wait for the flag): a lost wake-up would leave the reader in wait() until
    its timeout. Every wait must end with the record, long before that."""
    rounds, timeout = 400, SLEEP_TIMEOUT
    monkeypatch.setenv("TICKPIPE_RING", writer_path)
    prev = ringmod.set_path(writer_path)
    spec = spec_of(shm_names, 16, LOSSLESS)
    ring = Ring.create(spec)
    try:
        q, ready = children.ctx.Queue(), children.ctx.Event()
        p = children.start(sleepy_reader, spec, reader_path, rounds, timeout, ready, q)
        assert ready.wait(120), "reader did not start"
        w = ring.writer()
        raw = make_ticks(0, rounds).tobytes()
        for i in range(rounds):
            w.put(raw[i * SIZE:(i + 1) * SIZE])
            deadline = time.monotonic() + 2 * timeout
            while ring._q[ringmod.READERS_WORD + ringmod.R_CURSOR] <= i:  # consumed
                if not q.empty() or not p.is_alive():     # it failed: show its report
                    children.results(q, 1, timeout=30)
                    raise AssertionError(f"reader stopped before record {i}")
                assert time.monotonic() < deadline, f"record {i} never read"
        res = children.results(q, 1, timeout=120)["sleeper"]
        assert children.join(p) == 0
        assert res["max_slept"] < timeout / 4, res
        assert res["class"] == ("FastRingReader" if reader_path == "compiled" else "RingReader")
    finally:
        ringmod.set_path(prev)
        ring.close()
