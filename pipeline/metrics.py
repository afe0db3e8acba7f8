"""Latency histograms: log-spaced buckets, mergeable across processes.

Each stage adds ``now - ts_origin_ns`` for the records it produces; the
histogram travels in heartbeats as sparse counts and the supervisor merges
them per stage. 32 buckets per octave gives about 2 % resolution from 64 ns
to about 70 s, enough for p50 / p99 / p99.9.
"""
from __future__ import annotations

import numpy as np

PER_OCTAVE = 32
MIN_LOG2 = 6            # 64 ns
OCTAVES = 30
N_BUCKETS = PER_OCTAVE * OCTAVES


class LatencyHistogram:
    def __init__(self):
        self.counts = np.zeros(N_BUCKETS, np.int64)

    def add(self, latencies_ns: np.ndarray) -> None:
        lat = np.asarray(latencies_ns, dtype=np.float64)
        if lat.size == 0:
            return
        idx = (np.log2(np.maximum(lat, 1.0)) - MIN_LOG2) * PER_OCTAVE
        idx = np.clip(idx.astype(np.int64), 0, N_BUCKETS - 1)
        self.counts += np.bincount(idx, minlength=N_BUCKETS)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float | None:
        """Approximate q-th percentile in nanoseconds (bucket's geometric middle)."""
        total = self.total
        if total == 0:
            return None
        rank = q / 100.0 * total
        i = int(np.searchsorted(np.cumsum(self.counts), max(rank, 1), side="left"))
        return float(2.0 ** (MIN_LOG2 + (i + 0.5) / PER_OCTAVE))

    def summary_us(self) -> dict:
        def us(q):
            v = self.percentile(q)
            return None if v is None else round(v / 1000.0, 2)
        return {"count": self.total, "p50_us": us(50), "p99_us": us(99), "p999_us": us(99.9)}

    def to_sparse(self) -> dict[str, int]:
        nz = np.nonzero(self.counts)[0]
        return {str(int(i)): int(self.counts[i]) for i in nz}

    @classmethod
    def from_sparse(cls, data: dict[str, int]) -> "LatencyHistogram":
        h = cls()
        for k, v in data.items():
            h.counts[int(k)] = v
        return h

    def merge(self, other: "LatencyHistogram") -> None:
        self.counts += other.counts


def machine_info() -> dict:
    """What a benchmark figure was measured on (stored beside it in the JSON)."""
    import os
    import platform

    import zmq
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "platform": platform.platform(),
            "numpy": np.__version__, "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "loadavg_start": list(os.getloadavg())}
