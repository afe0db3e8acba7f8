"""Single-writer, multi-reader ring of fixed-size records in shared memory.

Layout (all counters uint64, each group on its own cache line)::

    segment header (64 B)
    ring config:  capacity, record_size, policy, max_readers, schema
    writer line:  write_seq (published), claim_seq (being written)
    writer stats: waiting, pid, backpressure waits, backpressure ns, timeouts
    wait flags:   one byte per reader (a byte store needs no atomic RMW)
    reader lines: cursor, registered, dropped, gaps, pid, interest, wake lag (one line each)
    reader names: 32 bytes each
    data:         capacity * record_size, capacity a power of two

Sequences only grow; slot = seq & (capacity - 1). The writer stores
``claim_seq`` before copying and ``write_seq`` after, so a reader that copied
slots can tell afterwards which of them the writer may have been overwriting.

Policies:
* lossy: the writer never waits. A reader that was lapped skips ahead, counts
  the records it lost (``dropped``) and gets ``Batch.dropped`` > 0 so it can
  mark the gap downstream.
* lossless: the writer waits, bounded, until the slowest registered reader has
  room for it, then raises RingFullError naming that reader.

Interest: a sleeping reader may name the symbols it waits for (a 64-bit mask of
``symbol_id % 64`` in its reader line) and a wake lag (0: no filter, the default); a
writer then rings it only for a batch written with ``write`` that holds one of them, or
once it has that many records unread (so a lossy ring never laps it for want of a
wake-up); a ``put`` rings it always. Its waiting flag stays set until then. The records
it sleeps through are still there when it wakes: interest changes wake-ups, not data.

Observers are reader slots that keep their cursor in shared memory (so they
resume after a restart and show their lag) but never gate the writer, even
on a lossless ring: a recorder can follow the features without ever slowing
the indicators. Like lossy readers they count what they miss when lapped.

Followers (tap, report) read with a private cursor, never register and never
write to the header: they can never slow the writer, and are lossy.

Two implementations of the per-record path share this layout: the compiled one
(``shm._ringfast``, built at install when a C compiler is present: C11
release/acquire atomics on the counters, ``atomic_thread_fence`` as the fence)
and pure Python (memoryview stores, an uncontended lock as the fence). The
compiled one is used when it imports, unless ``TICKPIPE_RING=python``;
``FAST_PATH`` says which. Both follow one contract, so a compiled writer and a
pure-Python reader (or the reverse) share a ring.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from .doorbell import Doorbell, _fence_lock, fence
from .records import schema_id
from .segment import KIND_RING, Segment, SegmentError

LOSSY = 0
LOSSLESS = 1
POLICIES = {"lossy": LOSSY, "lossless": LOSSLESS}

MAX_READERS = 32
NAME_BYTES = 32

# word offsets (uint64) relative to the ring's own header start
_CFG = 0          # capacity, record_size, policy, max_readers
W_WRITE = 8       # write_seq
W_CLAIM = 9       # claim_seq
W_WAITING = 16    # writer waiting for space
W_PID = 17
W_BP_WAITS = 18
W_BP_NS = 19
W_TIMEOUTS = 20
FLAGS_WORD = 24   # 64 bytes of per-reader waiting flags (words 24..31)
READERS_WORD = 32  # reader i: words 32 + 8*i ...
R_CURSOR, R_REGISTERED, R_DROPPED, R_GAPS, R_PID, R_INTEREST, R_WAKE_LAG = range(7)
GATING, OBSERVER = 1, 2   # values of R_REGISTERED: a lossless writer waits only for GATING
HEADER_WORDS = READERS_WORD + 8 * MAX_READERS
NAMES_BYTES = NAME_BYTES * MAX_READERS
HEADER_BYTES = HEADER_WORDS * 8 + NAMES_BYTES


def _choose_path() -> tuple[object | None, str, str]:
    """The compiled per-record path when it imports and is not turned off."""
    if os.environ.get("TICKPIPE_RING", "").strip().lower() in ("python", "pure"):
        return None, "python", "TICKPIPE_RING=python"
    try:
        from . import _ringfast
    except ImportError as e:
        return None, "python", f"shm._ringfast not built ({e})"
    return _ringfast, "compiled", "shm._ringfast, C11 atomics"


_ringfast, FAST_PATH, FAST_PATH_WHY = _choose_path()
_lock_fence = fence
if _ringfast is not None:
    fence = _ringfast.fence  # noqa: F811 - a real fence instead of the lock


def compiled_available() -> bool:
    """True when shm._ringfast is built and importable (whatever FAST_PATH says)."""
    try:
        from . import _ringfast as _  # noqa: F401
    except ImportError:
        return False
    return True


def set_path(path: str) -> str:
    """Use ``"compiled"`` or ``"python"`` for writers and readers made from now on
    (tests, benchmarks); returns the previous path."""
    global _ringfast, FAST_PATH, FAST_PATH_WHY, fence
    prev = FAST_PATH
    if path == "compiled":
        from . import _ringfast as mod
        _ringfast, FAST_PATH, FAST_PATH_WHY, fence = mod, "compiled", "set_path", mod.fence
    elif path == "python":
        _ringfast, FAST_PATH, FAST_PATH_WHY, fence = None, "python", "set_path", _lock_fence
    else:
        raise ValueError(f"ring path is 'compiled' or 'python', not {path!r}")
    return prev


class RingFullError(TimeoutError):
    """A lossless writer waited its full timeout for a slow reader."""

    def __init__(self, message: str, written: int):
        super().__init__(message)
        self.written = written


@dataclass
class Batch:
    """Records read in one drain. ``first_seq`` is the sequence of records[0];
    ``dropped`` counts records lost just before it (lossy rings only)."""
    records: np.ndarray
    first_seq: int
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class RingSpec:
    """Everything a process needs to attach to a ring; picklable for spawn."""
    name: str            # logical name, e.g. "ticks.synthetic"
    segment: str         # POSIX shm name
    dtype: np.dtype
    capacity: int
    policy: int
    readers: list[str] = field(default_factory=list)
    writer_bell: Doorbell | None = None
    observers: list[str] = field(default_factory=list)  # cursor in shm, never gate the writer
    reader_bells: dict[str, Doorbell] = field(default_factory=dict)


class Ring:
    """A mapped ring. Use ``writer()``, ``reader(name)`` or ``follower()``."""

    def __init__(self, spec: RingSpec, seg: Segment):
        self.spec = spec
        self.seg = seg
        self.dtype = spec.dtype
        mm = seg.mm
        off = seg.body_offset
        self.hdr = np.ndarray((HEADER_WORDS,), np.uint64, buffer=mm, offset=off)
        self._hdr_off = off
        self._fast: list = []   # compiled writers/readers: released before unmapping
        self._q = memoryview(mm)[off:off + HEADER_WORDS * 8].cast("Q")
        flags_off = off + FLAGS_WORD * 8
        self._flags = memoryview(mm)[flags_off:flags_off + MAX_READERS]
        names_off = off + HEADER_WORDS * 8
        self._names = memoryview(mm)[names_off:names_off + NAMES_BYTES]
        cap = int(self.hdr[0])
        rec = int(self.hdr[1])
        if cap != spec.capacity or rec != spec.dtype.itemsize:
            self.hdr = None
            seg.close()
            raise SegmentError(f"ring {spec.name}: header says capacity {cap} x {rec} B, "
                             f"spec says {spec.capacity} x {spec.dtype.itemsize} B")
        self.capacity = cap
        self.mask = cap - 1
        self.record_size = rec
        self.words = rec // 8
        self.policy = int(self.hdr[2])
        data_off = off + HEADER_BYTES
        self._data_off = data_off
        self._mm = mm
        self.data = np.ndarray((cap, self.words), np.uint64, buffer=mm, offset=data_off)
        self._mv = memoryview(mm)[data_off:data_off + cap * rec]
        self.reader_names = self._read_names()

    # -- creation -------------------------------------------------------------
    @staticmethod
    def create(spec: RingSpec, owner_pid: int | None = None) -> "Ring":
        cap = spec.capacity
        if cap < 2 or cap & (cap - 1):
            raise ValueError(f"ring {spec.name}: capacity must be a power of two, got {cap}")
        if spec.dtype.itemsize % 64:
            raise ValueError(f"ring {spec.name}: record size must be a multiple of 64")
        if len(spec.readers) + len(spec.observers) > MAX_READERS:
            raise ValueError(f"ring {spec.name}: at most {MAX_READERS} readers and observers")
        size = HEADER_BYTES + cap * spec.dtype.itemsize
        seg = Segment.create(spec.segment, size, KIND_RING, schema_id(spec.dtype), owner_pid)
        hdr = np.ndarray((HEADER_WORDS,), np.uint64, buffer=seg.mm, offset=seg.body_offset)
        slots = spec.readers + spec.observers
        hdr[0:4] = (cap, spec.dtype.itemsize, spec.policy, len(slots))
        names = np.ndarray((NAMES_BYTES,), np.uint8, buffer=seg.mm,
                           offset=seg.body_offset + HEADER_WORDS * 8)
        for i, rname in enumerate(slots):
            raw = rname.encode()[:NAME_BYTES]
            names[i * NAME_BYTES:i * NAME_BYTES + len(raw)] = np.frombuffer(raw, np.uint8)
            hdr[READERS_WORD + 8 * i + R_REGISTERED] = GATING if i < len(spec.readers) else OBSERVER
        del hdr, names
        return Ring(spec, seg)

    @staticmethod
    def attach(spec: RingSpec, readonly: bool = False) -> "Ring":
        seg = Segment.attach(spec.segment, KIND_RING, schema_id(spec.dtype), readonly=readonly)
        return Ring(spec, seg)

    def _read_names(self) -> list[str]:
        n = int(self.hdr[3])
        raw = bytes(self._names)
        return [raw[i * NAME_BYTES:(i + 1) * NAME_BYTES].rstrip(b"\0").decode()
                for i in range(n)]

    def close(self) -> None:
        for obj in self._fast:
            obj.release()
        self._fast = []
        for attr in ("hdr", "data", "_mm"):
            setattr(self, attr, None)
        for attr in ("_q", "_flags", "_names", "_mv"):
            v = getattr(self, attr, None)
            if v is not None:
                v.release()
        self.seg.close()

    # -- roles ----------------------------------------------------------------
    def writer(self, bell: Doorbell | None = None) -> "RingWriter":
        bell = bell if bell is not None else self.spec.writer_bell
        if _ringfast is not None:
            try:
                return FastRingWriter(self, bell)
            except (BufferError, TypeError):  # a read-only mapping: Python reports it
                pass
        return RingWriter(self, bell)

    def reader(self, name: str, bell: Doorbell | None = None) -> "RingReader":
        if name not in self.reader_names:
            raise KeyError(f"ring {self.spec.name} has no reader {name!r} "
                           f"(readers: {', '.join(self.reader_names) or 'none'})")
        idx = self.reader_names.index(name)
        bell = bell if bell is not None else self.spec.reader_bells.get(name)
        if _ringfast is not None:
            try:
                return FastRingReader(self, idx, bell)
            except (BufferError, TypeError):
                pass
        return RingReader(self, idx, bell)

    def follower(self, from_start: bool = False) -> "RingFollower":
        return RingFollower(self, from_start)

    # -- stats (read-only) ----------------------------------------------------
    def stats(self) -> dict:
        q = self._q
        w = q[W_WRITE]
        readers = []
        for i, name in enumerate(self.reader_names):
            b = READERS_WORD + 8 * i
            readers.append({"name": name, "cursor": q[b + R_CURSOR], "lag": w - q[b + R_CURSOR],
                            "dropped": q[b + R_DROPPED], "gaps": q[b + R_GAPS],
                            "pid": q[b + R_PID], "observer": q[b + R_REGISTERED] == OBSERVER})
        return {"name": self.spec.name, "policy": "lossless" if self.policy else "lossy",
                "capacity": self.capacity, "record_size": self.record_size,
                "write_seq": w, "writer_pid": q[W_PID],
                "backpressure_waits": q[W_BP_WAITS], "backpressure_s": q[W_BP_NS] / 1e9,
                "backpressure_timeouts": q[W_TIMEOUTS], "readers": readers}

    def _copy_out(self, start_seq: int, n: int) -> np.ndarray:
        out = np.empty((n, self.words), np.uint64)
        s = start_seq & self.mask
        first = min(n, self.capacity - s)
        out[:first] = self.data[s:s + first]
        if first < n:
            out[first:] = self.data[:n - first]
        return np.frombuffer(out, self.dtype)


class RingWriter:
    """The one writer of a ring. Not safe to share between threads."""

    def __init__(self, ring: Ring, bell: Doorbell | None):
        self.ring = ring
        self.bell = bell
        q = ring._q
        self._q = q
        self.seq = q[W_WRITE]
        q[W_CLAIM] = self.seq  # a writer that died mid-copy left claim ahead
        q[W_PID] = os.getpid()
        self.lossless = ring.policy == LOSSLESS
        self._registered = [READERS_WORD + 8 * i + R_CURSOR
                            for i in range(len(ring.reader_names))
                            if q[READERS_WORD + 8 * i + R_REGISTERED] == GATING]
        self._gate = self._min_cursor()  # cached lower bound of reader cursors
        self._bells = [ring.spec.reader_bells.get(n) for n in ring.reader_names]
        # per-record hot path: everything it touches, one attribute away
        self._gated = self.lossless and bool(self._registered)
        self._cap, self._mask, self._rs = ring.capacity, ring.mask, ring.record_size
        self._mv = ring._mv
        self._flag_words = range(FLAGS_WORD, FLAGS_WORD + max(1, -(-len(ring.reader_names) // 8)))
        self._many_readers = len(ring.reader_names) > 8
        self._fence_acquire, self._fence_release = _fence_lock.acquire, _fence_lock.release
        self._lines = [READERS_WORD + 8 * i for i in range(len(ring.reader_names))]
        self._symbols = ring.dtype.names is not None and "symbol_id" in ring.dtype.names
        self._batch: np.ndarray | None = None   # the raw words being written by write()

    def tail(self, n: int | None = None) -> np.ndarray:
        """The newest records still in the ring (at most ``n``), oldest first: what a
        restarted writer resumes from (its last order, its last tick per symbol)."""
        w = int(self.seq)
        keep = min(w, self.ring.capacity if n is None else min(n, self.ring.capacity))
        return self.ring._copy_out(w - keep, keep) if keep else np.zeros(0, self.ring.dtype)

    def _min_cursor(self) -> int:
        q = self._q
        return min((q[w] for w in self._registered), default=self.seq)

    def _slowest(self) -> str:
        q = self._q
        i = min(range(len(self.ring.reader_names)),
                key=lambda i: q[READERS_WORD + 8 * i + R_CURSOR])
        return self.ring.reader_names[i]

    def free(self) -> int:
        """Records that can be written now without waiting."""
        if not self.lossless or not self._registered:
            return self.ring.capacity
        self._gate = self._min_cursor()
        return self.ring.capacity - (self.seq - self._gate)

    def _wait_for_space(self, need: int, deadline: float) -> int:
        """Block until ``need`` slots are free or the deadline passes; returns free slots."""
        q = self._q
        cap = self.ring.capacity
        t0 = time.monotonic_ns()
        q[W_BP_WAITS] += 1
        try:
            while True:
                q[W_WAITING] = 1
                fence()
                free = cap - (self.seq - self._min_cursor())
                if free >= need:
                    return free
                left = deadline - time.monotonic()
                if left <= 0:
                    return free
                if self.bell is not None:
                    self.bell.wait(min(left, 0.05))
                else:
                    time.sleep(min(left, 0.001))  # no doorbell given: bounded timed wait
        finally:
            q[W_WAITING] = 0
            q[W_BP_NS] += time.monotonic_ns() - t0

    def write(self, records: np.ndarray, timeout: float = 5.0) -> int:
        """Append records (a 1-D array of the ring's dtype). Lossless rings wait up to
        ``timeout`` seconds for room, then raise RingFullError with what was written."""
        if records.dtype != self.ring.dtype:
            raise TypeError(f"ring {self.ring.spec.name} holds {self.ring.dtype}, "
                            f"got {records.dtype}")
        n = len(records)
        if n == 0:
            return 0
        src = np.frombuffer(np.ascontiguousarray(records), np.uint64).reshape(n, self.ring.words)
        cap = self.ring.capacity
        done = 0
        deadline = None
        while done < n:
            chunk = n - done
            if self.lossless and self._registered:
                free = cap - (self.seq - self._gate)
                if free < chunk:
                    self._gate = self._min_cursor()
                    free = cap - (self.seq - self._gate)
                    if free <= 0:
                        if deadline is None:
                            deadline = time.monotonic() + timeout
                        free = self._wait_for_space(min(chunk, cap), deadline)
                        if free <= 0:
                            self._q[W_TIMEOUTS] += 1
                            raise RingFullError(
                                f"ring {self.ring.spec.name} is full: reader "
                                f"{self._slowest()!r} has not advanced for {timeout:g} s "
                                f"({done} of {n} records written)", done)
                        self._gate = self._min_cursor()
                chunk = min(chunk, free)
            else:
                chunk = min(chunk, cap)
            self._batch = src[done:done + chunk]
            try:
                self._copy_in(self._batch)
            finally:
                self._batch = None
            done += chunk
        return done

    def _copy_in(self, src: np.ndarray) -> None:
        ring = self.ring
        q = self._q
        n = len(src)
        s = self.seq & ring.mask
        first = min(n, ring.capacity - s)
        q[W_CLAIM] = self.seq + n
        ring.data[s:s + first] = src[:first]
        if first < n:
            ring.data[:n - first] = src[first:]
        self.seq += n
        q[W_WRITE] = self.seq
        self._notify()

    def put(self, buf, timeout: float = 5.0) -> None:
        """Append one record given as bytes (the per-record path)."""
        rs = self._rs
        if len(buf) != rs:
            raise ValueError(f"ring {self.ring.spec.name}: a record is {rs} bytes, got {len(buf)}")
        seq = self.seq
        if self._gated and seq - self._gate >= self._cap:
            self._make_room(timeout)
        off = (seq & self._mask) * rs
        seq += 1
        self.seq = seq
        q = self._q
        q[W_CLAIM] = seq
        self._mv[off:off + rs] = buf
        q[W_WRITE] = seq
        self._fence_acquire()   # StoreLoad: publish before reading the waiting flags
        self._fence_release()
        if q[FLAGS_WORD] or (self._many_readers and self._any_flag()):
            self._ring_waiters()

    def _any_flag(self) -> bool:
        q = self._q
        return any(q[w] for w in self._flag_words)

    def _make_room(self, timeout: float) -> None:
        self._gate = self._min_cursor()
        if self.seq - self._gate >= self._cap:
            if self._wait_for_space(1, time.monotonic() + timeout) <= 0:
                self._q[W_TIMEOUTS] += 1
                raise RingFullError(f"ring {self.ring.spec.name} is full: reader "
                                    f"{self._slowest()!r} has not advanced for {timeout:g} s", 0)
            self._gate = self._min_cursor()

    def _ring_waiters(self) -> None:
        flags = self.ring._flags
        q = self._q
        bits = None
        for i, bell in enumerate(self._bells):
            if flags[i]:
                line = self._lines[i]
                lag = q[line + R_WAKE_LAG]
                if lag:                 # filtering: its symbols, or that many unread
                    if bits is None:
                        bits = self._batch_bits()
                    if not bits & q[line + R_INTEREST] and q[W_WRITE] - q[line + R_CURSOR] < lag:
                        continue        # it sleeps on, flag set
                flags[i] = 0
                if bell is not None:
                    bell.ring()

    def _batch_bits(self) -> int:
        """The symbols (bits of symbol_id % 64) of the batch being written; every bit
        when unknown (a put, or records without a symbol)."""
        if self._batch is None or not self._symbols:
            return (1 << 64) - 1
        sids = self._batch.reshape(-1).view(self.ring.dtype)["symbol_id"].astype(np.uint64)
        return int(np.bitwise_or.reduce(np.left_shift(np.uint64(1), sids & np.uint64(63))))

    def _notify(self) -> None:
        fence()
        if self._q[FLAGS_WORD] or (self._many_readers and self._any_flag()):
            self._ring_waiters()


class _Cursor:
    """Shared read logic: copy [cursor, write_seq) and validate it against claim."""

    ring: Ring
    cursor: int

    def _read(self, max_records: int | None) -> Batch | None:
        ring = self.ring
        q = ring._q
        w = q[W_WRITE]
        cur = self.cursor
        if w == cur:
            return None
        dropped = 0
        if w - cur > ring.capacity:          # lapped (lossy ring, or a follower)
            new = w - ring.capacity
            dropped = new - cur
            cur = new
        n = w - cur
        if max_records is not None and n > max_records:
            n = max_records
        recs = ring._copy_out(cur, n)
        if ring.policy == LOSSY or not self._gating:
            oldest_safe = q[W_CLAIM] - ring.capacity  # slots below may have been overwritten
            if cur < oldest_safe:
                skip = min(oldest_safe - cur, n)
                dropped += skip
                cur += skip
                recs = recs[skip:]
                n -= skip
        self.cursor = cur + n
        return Batch(recs, cur, dropped)

    _gating = False

    def available(self) -> int:
        return self.ring._q[W_WRITE] - self.cursor


class RingReader(_Cursor):
    """A registered reader: its cursor lives in shared memory, so a restarted
    process resumes where the last one committed, and a lossless writer waits
    for it."""

    def __init__(self, ring: Ring, index: int, bell: Doorbell | None):
        self.ring = ring
        self.index = index
        self.name = ring.reader_names[index]
        self.bell = bell
        self._base = READERS_WORD + 8 * index
        q = ring._q
        q[self._base + R_PID] = os.getpid()
        q[self._base + R_WAKE_LAG] = 0       # a predecessor's interest is not ours
        self.cursor = q[self._base + R_CURSOR]
        self.committed = self.cursor
        self.writer_bell = ring.spec.writer_bell
        self._q = q
        self._cap, self._mask, self._rs = ring.capacity, ring.mask, ring.record_size
        self._data_off, self._mm = ring._data_off, ring._mm
        self._gating = q[self._base + R_REGISTERED] == GATING
        self._lossy = ring.policy == LOSSY or not self._gating   # may be lapped
        self._cursor_word = self._base + R_CURSOR
        self._fence_acquire, self._fence_release = _fence_lock.acquire, _fence_lock.release

    def read(self, max_records: int | None = None) -> Batch | None:
        """Copy out everything available (or up to max_records). The records stay
        protected from a lossless writer until ``commit()``."""
        batch = self._read(max_records)
        if batch is not None and batch.dropped:
            q = self.ring._q
            q[self._base + R_DROPPED] += batch.dropped
            q[self._base + R_GAPS] += 1
        return batch

    def commit(self) -> None:
        """Publish the cursor: records read so far are done with."""
        if self.cursor == self.committed:
            return
        q = self.ring._q
        q[self._base + R_CURSOR] = self.cursor
        self.committed = self.cursor
        if self.ring.policy == LOSSLESS:
            fence()
            if q[W_WAITING]:
                q[W_WAITING] = 0
                if self.writer_bell is not None:
                    self.writer_bell.ring()

    def get(self):
        """Per-record path: one record as bytes, or None. Commits at once; records
        lost to a lap (lossy ring) are counted like ``read`` counts them."""
        q = self._q
        cur = self.cursor
        w = q[W_WRITE]
        if w == cur:
            return None
        if w - cur > self._cap:
            return self._get_checked()
        off = (cur & self._mask) * self._rs + self._data_off
        rec = self._mm[off:off + self._rs]  # slicing an mmap copies to bytes
        if self._lossy:
            if q[W_CLAIM] - self._cap > cur:   # overwritten while we copied
                return self._get_checked()
        cur += 1
        self.cursor = self.committed = cur
        q[self._cursor_word] = cur
        if not self._lossy:
            self._fence_acquire()
            self._fence_release()
            if q[W_WAITING]:
                q[W_WAITING] = 0
                if self.writer_bell is not None:
                    self.writer_bell.ring()
        return rec

    def _get_checked(self):
        """get() for the rare cases: lapped, or the slot overwritten mid-copy."""
        ring = self.ring
        q = ring._q
        cap = ring.capacity
        cur = self.cursor
        lost = 0
        while True:
            w = q[W_WRITE]
            if w == cur:
                rec = None
                break
            if w - cur > cap:                      # lapped before we started
                lost += w - cap - cur
                cur = w - cap
            off = (cur & ring.mask) * ring.record_size
            off += ring._data_off
            rec = ring._mm[off:off + ring.record_size]  # slicing an mmap copies to bytes
            oldest_safe = q[W_CLAIM] - cap
            if self._lossy and oldest_safe > cur:   # overwritten while we copied
                lost += oldest_safe - cur
                cur = oldest_safe
                continue
            cur += 1
            break
        if lost:
            q[self._base + R_DROPPED] += lost
            q[self._base + R_GAPS] += 1
        self.cursor = cur
        self.commit()
        return rec

    def set_waiting(self, on: bool) -> None:
        self.ring._flags[self.index] = 1 if on else 0

    def set_interest(self, mask: int, wake_lag: int) -> None:
        """Wake this reader only for records of these symbols (bits of symbol_id % 64)
        or once ``wake_lag`` records are unread; ``wake_lag`` 0: any record wakes it.
        Set before waiting; see the module's Interest."""
        q = self._q
        q[self._base + R_INTEREST] = mask
        q[self._base + R_WAKE_LAG] = wake_lag

    def wait(self, timeout: float, spin_us: float = 0.0) -> bool:
        """Wait until data is available; True if there is some."""
        return wait_any([self], self.bell, timeout, spin_us)

    def lag(self) -> int:
        return self.ring._q[W_WRITE] - self.committed


class RingFollower(_Cursor):
    """An unregistered, read-only reader (tap, report): never slows the writer."""

    def __init__(self, ring: Ring, from_start: bool = False):
        self.ring = ring
        w = ring._q[W_WRITE]
        self.cursor = max(0, w - ring.capacity) if from_start else w
        self.dropped = 0

    def read(self, max_records: int | None = None) -> Batch | None:
        batch = self._read(max_records)
        if batch is not None:
            self.dropped += batch.dropped
        return batch

    def skip_to_end(self) -> None:
        self.cursor = self.ring._q[W_WRITE]


class FastRingWriter(RingWriter):
    """RingWriter whose per-record put and batched copy run compiled (shm._ringfast).
    ``seq`` and the cached gate live in the C object, so the Python methods
    (write, free, tail, waiting for space) and the C put see one state."""

    def __init__(self, ring: Ring, bell: Doorbell | None):
        q = ring._q
        gated = ring.policy == LOSSLESS and any(
            q[READERS_WORD + 8 * i + R_REGISTERED] == GATING
            for i in range(len(ring.reader_names)))
        self._c = _ringfast.Writer(ring._mm, ring._hdr_off, ring._data_off, ring.capacity,
                                   ring.record_size, len(ring.reader_names), gated,
                                   ring.spec.name, self._make_room, self._ring_waiters)
        super().__init__(ring, bell)
        ring._fast.append(self._c)
        self.put = self._c.put   # no Python frame on the per-record path

    seq = property(lambda self: self._c.seq, lambda self, v: setattr(self._c, "seq", int(v)))
    _gate = property(lambda self: self._c.gate,
                     lambda self, v: setattr(self._c, "gate", int(v)))

    def _make_room(self, timeout: float = 5.0) -> None:
        super()._make_room(timeout)

    def _copy_in(self, src: np.ndarray) -> None:
        self._c.write_words(src)


class FastRingReader(RingReader):
    """RingReader whose per-record get and waiting flag run compiled; ``cursor`` and
    ``committed`` live in the C object, read() and commit() stay in Python."""

    def __init__(self, ring: Ring, index: int, bell: Doorbell | None):
        base = READERS_WORD + 8 * index
        gating = ring._q[base + R_REGISTERED] == GATING
        wb = ring.spec.writer_bell
        self._c = _ringfast.Reader(ring._mm, ring._hdr_off, ring._data_off, ring.capacity,
                                   ring.record_size, base + R_CURSOR, index,
                                   ring.policy == LOSSY or not gating, self._get_checked,
                                   wb.ring if wb is not None else None)
        super().__init__(ring, index, bell)
        ring._fast.append(self._c)
        self.get = self._c.get

    cursor = property(lambda self: self._c.cursor,
                      lambda self, v: setattr(self._c, "cursor", int(v)))
    committed = property(lambda self: self._c.committed,
                         lambda self, v: setattr(self._c, "committed", int(v)))

    def set_waiting(self, on: bool) -> None:
        self._c.set_waiting(on)

    def _set_mm(self, mm) -> None:
        """``_mm`` is the mapping get() copies from: one that is not the segment's
        own (a test interposing a racing view) sends get() through Python."""
        self.__dict__["_mm_"] = mm
        self.get = self._c.get if mm is self.ring.seg.mm else partial(RingReader.get, self)

    _mm = property(lambda self: self.__dict__["_mm_"], _set_mm)


def wait_any(readers: list[RingReader], bell: Doorbell | None, timeout: float,
             spin_us: float = 0.0) -> bool:
    """Hybrid wait over several rings read by one process: spin up to spin_us,
    then set the waiting flags, fence, forget stale rings, re-check and sleep
    on the doorbell until data arrives or the timeout passes."""
    def ready() -> bool:
        return any(r.ring._q[W_WRITE] != r.cursor for r in readers)

    if ready():
        return True
    if spin_us > 0:
        end = time.perf_counter_ns() + int(spin_us * 1000)
        while time.perf_counter_ns() < end:
            if ready():
                return True
    if bell is None:
        return False
    deadline = time.monotonic() + timeout
    try:
        while True:
            for r in readers:
                r.set_waiting(True)
            fence()
            bell.drain()          # rings from before the flags were set are stale
            if ready():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            bell.wait(left)
            if ready():
                return True
    finally:
        for r in readers:
            r.set_waiting(False)
