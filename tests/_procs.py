"""Record builders and child-process targets for the shm tests.

Spawned children import this module by name, so everything a child runs is a
top-level function here. Children get picklable specs (RingSpec, TableSpec,
doorbells, events, queues) and attach to the segments themselves. Each target
reports ``(tag, "ok", payload)`` or ``(tag, "error", traceback)`` on a queue,
so a failure in a child shows up as a readable assertion in the parent.
"""
from __future__ import annotations

import os
import time
import traceback

import numpy as np

from shm.records import TICK
from shm.ring import Ring
from shm.table import Table


# -- records whose every field is derived from the sequence number ---------------
def make_ticks(start: int, stop: int) -> np.ndarray:
    """TICK records for sequences [start, stop); every field is a function of seq."""
    seq = np.arange(start, stop, dtype=np.int64)
    r = np.zeros(len(seq), TICK)
    r["seq"] = seq
    r["ts_origin_ns"] = seq * 3 + 1
    r["ts_exchange_ns"] = -seq
    r["symbol_id"] = seq % 997
    r["kind"] = 1 + seq % 2
    r["side"] = np.where(seq % 2 == 0, 1, -1)
    r["flags"] = seq % 65521
    r["price"] = seq * 0.5
    r["size"] = seq + 0.25
    r["bid"] = seq * 0.5 - 1.0
    r["ask"] = seq * 0.5 + 1.0
    return r


def tick_errors(recs: np.ndarray, first: int) -> str | None:
    """None if ``recs`` are exactly make_ticks(first, first + len(recs)), else a description."""
    if recs.dtype != TICK:
        return f"dtype {recs.dtype} is not TICK"
    if len(recs) == 0:
        return None
    want = make_ticks(first, first + len(recs))
    bad = np.flatnonzero(recs.view(np.uint64).reshape(len(recs), -1)
                         != want.view(np.uint64).reshape(len(want), -1))
    if len(bad):
        i = int(bad[0]) // (TICK.itemsize // 8)
        return (f"record {i} (expected seq {first + i}) differs: got seq {int(recs['seq'][i])}, "
                f"price {float(recs['price'][i])}, ts_origin_ns {int(recs['ts_origin_ns'][i])}")
    return None


def feature_rows(dtype: np.dtype, rows: np.ndarray, counter: int) -> np.ndarray:
    """Feature rows where every i8/f8 field holds ``counter``, symbol_id the row index
    and the two u2 fields counter mod 2**16: a torn row shows as unequal fields."""
    r = np.zeros(len(rows), dtype)
    for name in dtype.names:
        kind = dtype.fields[name][0].kind
        if name == "symbol_id":
            r[name] = rows
        elif dtype.fields[name][0].itemsize == 8:
            r[name] = counter if kind != "f" else float(counter)
        else:
            r[name] = counter % 65536
    return r


# -- child targets ------------------------------------------------------------------
def _run(q, tag, fn, *args):
    try:
        q.put((tag, "ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        q.put((tag, "error", traceback.format_exc()))


def lossless_writer(spec, total, seed, max_batch, timeout, q):
    """Write seqs [0, total) in random batch sizes 1..max_batch (some larger than the ring)."""
    def body():
        ring = Ring.attach(spec)
        w = ring.writer()
        rng = np.random.default_rng(seed)
        sizes = []
        i = 0
        while i < total:
            k = min(int(rng.integers(1, max_batch + 1)), total - i)
            n = w.write(make_ticks(i, i + k), timeout=timeout)
            if n != k:
                raise AssertionError(f"write returned {n}, expected {k}")
            sizes.append(k)
            i += k
        st = ring.stats()
        return {"written": i, "write_seq": int(st["write_seq"]), "batches": len(sizes),
                "max_batch_used": max(sizes), "pid": os.getpid(),
                "backpressure_waits": int(st["backpressure_waits"]),
                "backpressure_timeouts": int(st["backpressure_timeouts"])}
    _run(q, "writer", body)


def checking_reader(spec, name, total, seed, max_records, commit_every, deadline_s, q):
    """Registered reader: drain in (optionally capped) batches, commit every
    ``commit_every`` batches and always before sleeping, check every record."""
    def body():
        ring = Ring.attach(spec)
        r = ring.reader(name)
        rng = np.random.default_rng(seed)
        expected = 0
        batches = 0
        wakeups = 0
        deadline = time.monotonic() + deadline_s
        while expected < total:
            if time.monotonic() > deadline:
                raise AssertionError(f"reader {name}: only {expected} of {total} records "
                                     f"after {deadline_s} s")
            cap = int(rng.integers(1, max_records + 1)) if max_records else None
            b = r.read(cap)
            if b is None:
                r.commit()
                r.wait(timeout=1.0)
                wakeups += 1
                continue
            if b.dropped:
                raise AssertionError(f"reader {name}: lossless batch reports {b.dropped} dropped")
            if b.first_seq != expected:
                raise AssertionError(f"reader {name}: batch starts at {b.first_seq}, "
                                     f"expected {expected}")
            err = tick_errors(b.records, expected)
            if err:
                raise AssertionError(f"reader {name}: {err}")
            expected += len(b)
            batches += 1
            if batches % commit_every == 0:
                r.commit()
        r.commit()
        me = [x for x in ring.stats()["readers"] if x["name"] == name][0]
        return {"received": expected, "batches": batches, "wakeups": wakeups,
                "dropped": int(me["dropped"]), "gaps": int(me["gaps"]),
                "cursor": int(me["cursor"]), "pid": int(me["pid"]), "my_pid": os.getpid()}
    _run(q, f"reader:{name}", body)


def waiting_reader(spec, name, ready, q, timeout):
    """Signal ``ready``, block in RingReader.wait(timeout) and report how long it slept."""
    def body():
        ring = Ring.attach(spec)
        r = ring.reader(name)
        if r.read() is not None:
            raise AssertionError("ring was expected to be empty")
        ready.set()
        t0 = time.monotonic()
        woke = r.wait(timeout=timeout)
        slept = time.monotonic() - t0
        b = r.read()
        r.commit()
        return {"woke": woke, "slept": slept, "first_seq": None if b is None else b.first_seq,
                "seqs": [] if b is None else b.records["seq"].tolist()}
    _run(q, "waiter", body)


def lossy_putter(spec, total, started, q):
    """Per-record writer on a lossy ring: put() seqs [0, total) as fast as it can."""
    def body():
        ring = Ring.attach(spec)
        w = ring.writer()
        raw = make_ticks(0, total).tobytes()
        size = TICK.itemsize
        started.set()
        for i in range(total):
            w.put(raw[i * size:(i + 1) * size])
        return {"write_seq": int(ring.stats()["write_seq"])}
    _run(q, "putter", body)


def lossy_batch_writer(spec, total, max_batch, seed, started, q):
    """Batched writer on a lossy ring: never waits, whatever the readers do."""
    def body():
        ring = Ring.attach(spec)
        w = ring.writer()
        rng = np.random.default_rng(seed)
        started.set()
        i = 0
        while i < total:
            k = min(int(rng.integers(1, max_batch + 1)), total - i)
            w.write(make_ticks(i, i + k), timeout=0.0)
            i += k
        return {"write_seq": int(ring.stats()["write_seq"])}
    _run(q, "batch_writer", body)


def range_writer(spec, start, stop, q):
    """A (re)started writer: report where it resumed, then write seqs [start, stop)."""
    def body():
        ring = Ring.attach(spec)
        w = ring.writer()
        resumed_at = int(w.seq)
        if resumed_at != start:
            raise AssertionError(f"writer resumed at {resumed_at}, expected {start}")
        w.write(make_ticks(start, stop), timeout=5.0)
        return {"resumed_at": resumed_at, "write_seq": int(w.seq)}
    _run(q, "range_writer", body)


def partial_reader(spec, name, commit_n, extra_n, q):
    """Read and commit ``commit_n`` records, read ``extra_n`` more without committing,
    then exit abruptly (os._exit: no cleanup) as a crashed worker would."""
    try:
        ring = Ring.attach(spec)
        r = ring.reader(name)
        b1 = r.read(commit_n)
        r.commit()
        b2 = r.read(extra_n)
        q.put(("partial_reader", "ok", {"first": b1.first_seq, "n1": len(b1),
                                        "n2": len(b2), "cursor": int(r.cursor)}))
    except BaseException:  # noqa: BLE001
        q.put(("partial_reader", "error", traceback.format_exc()))
    q.close()
    q.join_thread()
    os._exit(0)


def table_writer(spec, write_rows, started, stop, q, max_s):
    """Overwrite rows with ever-growing counters until ``stop`` is set (or max_s).
    Alternates whole-table writes with writes of random subsets of rows."""
    def body():
        table = Table.attach(spec)
        rows = np.arange(write_rows)
        rng = np.random.default_rng(7)
        counter = 0
        end = time.monotonic() + max_s
        while True:
            counter += 1
            if counter % 3:
                idx = rows
            else:
                idx = np.sort(rng.choice(rows, size=int(rng.integers(1, write_rows + 1)),
                                         replace=False))
            table.write(idx, feature_rows(spec.dtype, idx, counter))
            if counter == 50:
                started.set()
            if counter % 64 == 0 and (stop.is_set() or time.monotonic() > end):
                break
        started.set()
        return {"counter": counter}
    _run(q, "table_writer", body)


def exit_at_once():
    """A process that exits immediately: its pid is then dead."""


def wait_for(event, timeout):
    """A process that stays alive until ``event`` is set."""
    event.wait(timeout)


def attach_and_report(cls, spec, q):
    """Attach ``spec`` with ``cls`` (Ring or Table) and report the exception raised,
    if any. Run in a child so that a crash while attaching fails one test only."""
    try:
        obj = cls.attach(spec)
        obj.close()
        q.put(("attach", "ok", None))
    except BaseException as e:  # noqa: BLE001
        q.put(("attach", "ok", {"type": f"{type(e).__module__}.{type(e).__qualname__}",
                                "msg": str(e)}))
