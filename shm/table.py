"""Latest-value table: one row per key (symbol), overwritten in place.

Each row has its own sequence counter (a seqlock): the writer makes it odd,
writes the row, then makes it even. A reader copies the counters, the rows,
then the counters again, and retries any row whose counter moved or was odd,
so it never returns a torn row. Rows are written by exactly one process each
(an indicator shard owns its symbols' rows); any number of processes read.

Where the ring's compiled path is in use (``shm.ring.FAST_PATH``), a write or a
read pass is one C call with C11 release/acquire orderings on the counters
instead of several numpy fancy-indexing calls (6 and 9 us for one row).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import ring as _ring
from .records import schema_id
from .segment import KIND_TABLE, Segment


class TornReadError(RuntimeError):
    """A row kept changing while we read it (writer stuck mid-write or far too busy)."""


@dataclass
class TableSpec:
    name: str
    segment: str
    dtype: np.dtype
    rows: int


class Table:
    def __init__(self, spec: TableSpec, seg: Segment):
        self.spec = spec
        self.seg = seg
        self.dtype = spec.dtype
        self.words = spec.dtype.itemsize // 8
        off = seg.body_offset
        n = spec.rows
        self.seqs = np.ndarray((n,), np.uint64, buffer=seg.mm, offset=off)
        data_off = off + (-(-n * 8 // 64) * 64)
        self.data = np.ndarray((n, self.words), np.uint64, buffer=seg.mm, offset=data_off)

    @staticmethod
    def _size(spec: TableSpec) -> int:
        return -(-spec.rows * 8 // 64) * 64 + spec.rows * spec.dtype.itemsize

    @staticmethod
    def create(spec: TableSpec, owner_pid: int | None = None) -> "Table":
        seg = Segment.create(spec.segment, Table._size(spec), KIND_TABLE,
                             schema_id(spec.dtype), owner_pid)
        return Table(spec, seg)

    @staticmethod
    def attach(spec: TableSpec, readonly: bool = False) -> "Table":
        seg = Segment.attach(spec.segment, KIND_TABLE, schema_id(spec.dtype), readonly=readonly)
        return Table(spec, seg)

    def close(self) -> None:
        self.seqs = self.data = None
        self.seg.close()

    def write(self, rows: np.ndarray | list[int], records: np.ndarray) -> None:
        """Overwrite rows ``rows`` with ``records`` (same length). Only the row's owner calls this."""
        idx = np.asarray(rows, dtype=np.intp)
        src = np.ascontiguousarray(records).view(np.uint64).reshape(len(idx), self.words)
        if _ring._ringfast is not None:
            _ring._ringfast.table_write(self.seqs, self.data, np.ascontiguousarray(idx), src,
                                        self.words * 8)
            return
        self.seqs[idx] += 1   # odd: row being written
        self.data[idx] = src
        self.seqs[idx] += 1   # even: row stable

    def read(self, rows: np.ndarray | list[int] | None = None,
             timeout: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Consistent copies of ``rows`` (all if None) and their sequence numbers.
        A sequence of 0 means the row was never written. Retries rows caught
        mid-write; after a short spin it backs off so that a writer descheduled
        mid-row (more processes than cores) gets the CPU to finish."""
        idx = np.arange(self.spec.rows) if rows is None else np.asarray(rows, dtype=np.intp)
        out = np.empty((len(idx), self.words), np.uint64)
        seqs = np.empty(len(idx), np.uint64)
        todo = np.arange(len(idx))
        deadline = None
        attempt = 0
        fast = _ring._ringfast
        if fast is not None:
            idx = np.ascontiguousarray(idx)
        while True:
            attempt += 1
            r = idx[todo]
            if fast is not None:
                torn = fast.table_read(self.seqs, self.data, r, todo, out, seqs, self.words * 8)
                todo = todo[torn] if torn else todo[:0]
            else:
                s1 = self.seqs[r].copy()
                d = self.data[r]          # fancy indexing copies
                s2 = self.seqs[r].copy()
                ok = (s1 == s2) & ((s1 & 1) == 0)
                out[todo[ok]] = d[ok]
                seqs[todo[ok]] = s1[ok]
                todo = todo[~ok]
            if len(todo) == 0:
                return out.view(self.dtype).reshape(len(idx)), seqs
            if attempt >= 100:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                elif now > deadline:
                    raise TornReadError(f"table {self.spec.name}: rows {idx[todo][:5].tolist()} "
                                        f"kept changing for {timeout:g} s")
                time.sleep(0.0001)
