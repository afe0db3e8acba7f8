"""Named POSIX shared-memory segments owned by one pipeline run.

multiprocessing.shared_memory is not used because, on Python 3.11, every
process that attaches registers the segment with the resource tracker, which
unlinks it when that process exits: a restarted worker would destroy the
pipeline's rings. Here the supervisor owns the segments and removes them on
every exit path; ``remove_stale`` removes those of runs whose owner died.

Every segment starts with a 64-byte header: magic, kind, owner pid, the
owner's start time (to tell a reused pid apart), size and schema id.
"""
from __future__ import annotations

import mmap
import os
import stat
import time
from dataclasses import dataclass

import _posixshmem  # CPython's own binding of shm_open/shm_unlink
import numpy as np
import psutil

PREFIX = "tp"
MAGIC = 0x7469636B70697065  # "tickpipe"
SHM_DIR = "/dev/shm"

KIND_RING = 1
KIND_TABLE = 2

# header words (uint64) of the first cache line
H_MAGIC, H_KIND, H_OWNER_PID, H_OWNER_START_US, H_SIZE, H_SCHEMA, H_CREATED_NS = range(7)
HEADER_BYTES = 64
CREATING_GRACE_S = 10.0  # a segment without a header this young is being created


class SegmentError(RuntimeError):
    """A segment could not be created or attached (missing, wrong kind or schema)."""


def segment_name(run_id: str, part: str) -> str:
    """POSIX shm name for one part of a run: ``/tp_<run>_<part>``."""
    return f"/{PREFIX}_{run_id}_{part}"


def _process_start_us(pid: int) -> int:
    try:
        return int(psutil.Process(pid).create_time() * 1_000_000)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


class Segment:
    """A mapped shared-memory segment. Closing unmaps; ``unlink`` removes the name."""

    def __init__(self, name: str, mm: mmap.mmap, created: bool):
        self.name = name
        self.mm = mm
        self.created = created
        self.header = np.ndarray((8,), dtype=np.uint64, buffer=mm, offset=0)

    @classmethod
    def create(cls, name: str, size: int, kind: int, schema: int = 0,
               owner_pid: int | None = None) -> "Segment":
        """Create a new segment readable and writable by its owner only (0600)."""
        size = HEADER_BYTES + size
        fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            _posixshmem.shm_unlink(name)
            raise
        os.close(fd)
        seg = cls(name, mm, True)
        pid = owner_pid or os.getpid()
        h = seg.header
        h[H_KIND] = kind
        h[H_OWNER_PID] = pid
        h[H_OWNER_START_US] = _process_start_us(pid)
        h[H_SIZE] = size
        h[H_SCHEMA] = schema
        h[H_CREATED_NS] = time.time_ns()
        h[H_MAGIC] = MAGIC  # last: a half-made segment is never taken as valid
        return seg

    @classmethod
    def attach(cls, name: str, kind: int, schema: int | None = None,
               readonly: bool = False) -> "Segment":
        """Map an existing segment, checking its kind and schema."""
        flags = os.O_RDONLY if readonly else os.O_RDWR
        try:
            fd = _posixshmem.shm_open(name, flags, mode=0o600)
        except FileNotFoundError:
            raise SegmentError(f"shared-memory segment {name} does not exist "
                               "(is the pipeline running?)") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:
                raise SegmentError(f"segment {name} is truncated ({size} bytes)")
            access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
            mm = mmap.mmap(fd, size, access=access)
        finally:
            os.close(fd)
        seg = cls(name, mm, False)
        magic, found_kind, found_schema = (int(seg.header[H_MAGIC]), int(seg.header[H_KIND]),
                                           int(seg.header[H_SCHEMA]))
        if magic != MAGIC or found_kind != kind:
            seg.close()
            raise SegmentError(f"segment {name} is not a tickpipe segment of the expected kind")
        if schema is not None and found_schema != schema:
            seg.close()
            raise SegmentError(f"segment {name} holds records of another schema "
                               f"(found {found_schema:#x}, expected {schema:#x})")
        return seg

    @property
    def body_offset(self) -> int:
        return HEADER_BYTES

    def close(self) -> None:
        """Unmap. Views into the mapping must be dropped first."""
        self.header = None
        try:
            self.mm.close()
        except BufferError:
            pass  # a caller still holds a view; the OS unmaps at exit

    def unlink(self) -> None:
        unlink(self.name)


def unlink(name: str) -> bool:
    """Remove a segment name; returns False if it was already gone."""
    try:
        _posixshmem.shm_unlink(name)
        return True
    except FileNotFoundError:
        return False


@dataclass
class SegmentInfo:
    name: str
    run_id: str
    owner_pid: int
    owner_alive: bool


def list_segments() -> list[SegmentInfo]:
    """All tickpipe segments visible in /dev/shm with their owner's liveness."""
    out = []
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return out
    for entry in entries:
        if not entry.startswith(PREFIX + "_"):
            continue
        path = os.path.join(SHM_DIR, entry)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue
            with open(path, "rb") as f:
                head = np.frombuffer(f.read(HEADER_BYTES), dtype=np.uint64)
        except OSError:
            continue
        run_id = entry.split("_")[1] if entry.count("_") >= 2 else ""
        if len(head) < 8 or int(head[H_MAGIC]) != MAGIC:
            # not finished yet: another process may be creating it right now
            young = time.time() - st.st_mtime < CREATING_GRACE_S
            out.append(SegmentInfo("/" + entry, run_id, 0, young))
            continue
        pid = int(head[H_OWNER_PID])
        alive = psutil.pid_exists(pid) and _process_start_us(pid) == int(head[H_OWNER_START_US])
        out.append(SegmentInfo("/" + entry, run_id, pid, alive))
    return out


def remove_stale() -> list[SegmentInfo]:
    """Unlink segments whose owning supervisor is dead. Returns what was removed."""
    removed = []
    for info in list_segments():
        if not info.owner_alive and unlink(info.name):
            removed.append(info)
    return removed


def remove_run(run_id: str) -> int:
    """Unlink every segment of one run; used on every exit path."""
    n = 0
    for info in list_segments():
        if info.run_id == run_id and unlink(info.name):
            n += 1
    return n
