"""Latency histograms: log-spaced buckets, mergeable across processes.

Each stage adds ``now - ts_origin_ns`` for the records it produces; the
histogram travels in heartbeats as sparse counts and the supervisor merges
them per stage. 32 buckets per octave gives about 2 % resolution from 64 ns
to about 70 s, enough for p50 / p99 / p99.9.
"""
from __future__ import annotations

import numpy as np

# execution's per-venue stages of a trade (heartbeat stats "trade_latency"), in order
TRADE_STAGES = ("signal_to_intent", "intent_to_submit", "submit_to_ack", "ack_to_fill",
                "tick_to_fill")
# the risk guard's trading states, as `tickpipe_risk_state` reports them
RISK_STATE_VALUES = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}

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


class ReportCollector:
    """Prometheus collector: the figures of `pipeline report`, built on each
    scrape from the supervisor's own report (no second bookkeeping)."""

    def __init__(self, report, status):
        self._report = report
        self._status = status

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        rep, st = self._report(), self._status()
        cpu = GaugeMetricFamily("tickpipe_process_cpu_percent", "CPU % per process",
                                labels=["id", "role"])
        rss = GaugeMetricFamily("tickpipe_process_rss_bytes", "resident memory per process",
                                labels=["id", "role"])
        thr = GaugeMetricFamily("tickpipe_process_threads", "threads per process", labels=["id", "role"])
        fds = GaugeMetricFamily("tickpipe_process_open_fds", "open fds per process", labels=["id", "role"])
        for p in rep["processes"]:
            if p.get("pid") is None or "rss_mb" not in p:
                continue
            lab = [p["id"], p["role"]]
            cpu.add_metric(lab, p["cpu_percent"])
            rss.add_metric(lab, p["rss_mb"] * 2**20)
            thr.add_metric(lab, p["threads"])
            fds.add_metric(lab, p["fds"])
        written = CounterMetricFamily("tickpipe_ring_written", "records written", labels=["ring"])
        rate = GaugeMetricFamily("tickpipe_ring_write_rate", "records written per second",
                                 labels=["ring"])
        bp_waits = CounterMetricFamily("tickpipe_ring_backpressure_waits",
                                       "times the writer waited for a slow reader", labels=["ring"])
        bp_secs = CounterMetricFamily("tickpipe_ring_backpressure_seconds",
                                      "time the writer spent waiting", labels=["ring"])
        lag = GaugeMetricFamily("tickpipe_ring_reader_lag", "records not yet read",
                                labels=["ring", "reader"])
        dropped = CounterMetricFamily("tickpipe_ring_reader_dropped", "records lost by a lapped reader",
                                      labels=["ring", "reader"])
        for r in rep["rings"]:
            written.add_metric([r["name"]], r["write_seq"])
            rate.add_metric([r["name"]], r["write_rate_per_s"])
            bp_waits.add_metric([r["name"]], r["backpressure_waits"])
            bp_secs.add_metric([r["name"]], r["backpressure_s"])
            for x in r["readers"]:
                lag.add_metric([r["name"], x["name"]], x["lag"])
                dropped.add_metric([r["name"], x["name"]], x["dropped"])
        lat = GaugeMetricFamily("tickpipe_stage_latency_seconds",
                                "latency from tick receipt, by stage", labels=["stage", "quantile"])
        cnt = CounterMetricFamily("tickpipe_stage_records", "records measured, by stage",
                                  labels=["stage"])
        for stage, s in rep["latency"].items():
            cnt.add_metric([stage], s["count"])
            for q, key in (("0.5", "p50_us"), ("0.99", "p99_us"), ("0.999", "p999_us")):
                if s[key] is not None:
                    lat.add_metric([stage, q], s[key] / 1e6)
        up = GaugeMetricFamily("tickpipe_worker_up", "1 if the worker is running", labels=["id"])
        restarts = CounterMetricFamily("tickpipe_worker_restarts", "restarts per worker", labels=["id"])
        for w in st["workers"]:
            up.add_metric([w["id"]], 1.0 if w["state"] == "running" else 0.0)
            restarts.add_metric([w["id"]], w["restarts"])
        degraded = GaugeMetricFamily("tickpipe_model_degraded",
                                     "1 while the model stage cannot answer (remote host unreachable)",
                                     labels=["id"])
        stale = CounterMetricFamily("tickpipe_model_stale_signals",
                                    "HOLD signals written because the model stage did not answer",
                                    labels=["id"])
        for m in rep.get("models", []):
            degraded.add_metric([m["id"]], 1.0 if m["state"] == "degraded" else 0.0)
            stale.add_metric([m["id"]], m["stale_signals"])
        yield from (cpu, rss, thr, fds, written, rate, bp_waits, bp_secs, lag, dropped, lat, cnt,
                    up, restarts, degraded, stale)
        yield from risk_metrics(rep)


def risk_metrics(rep: dict) -> list:
    """The risk guard's figures of a report: denials per code, intents passed, each
    listed tier's state (the global tier always) and execution's per-venue trade latency."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    risk = rep.get("risk") or {}
    denials = CounterMetricFamily("tickpipe_risk_denials", "intents refused by the risk guard, "
                                  "by denial code", labels=["code"])
    for code, n in sorted((risk.get("denials") or {}).items()):
        denials.add_metric([code], n)
    passed = CounterMetricFamily("tickpipe_risk_passed", "intents the risk guard passed")
    passed.add_metric([], risk.get("passed") or 0)
    state = GaugeMetricFamily("tickpipe_risk_state", "trading state of a risk tier: "
                              "0 ACTIVE, 1 REDUCING, 2 HALTED", labels=["tier", "key"])
    tiers = {("global", ""): 0}
    for s in risk.get("states") or []:
        key = (str(s.get("tier")), "" if s.get("key") is None else str(s.get("key")))
        tiers[key] = max(tiers.get(key, 0), RISK_STATE_VALUES.get(s.get("state"), 0))
    for (tier, key), value in tiers.items():
        state.add_metric([tier, key], value)
    lat = GaugeMetricFamily("tickpipe_trade_latency_seconds", "execution's latency per venue "
                            "and stage of a trade", labels=["venue", "stage", "quantile"])
    for venue, stages in (rep.get("trade_latency") or {}).items():
        for stage, s in stages.items():
            for q, key in (("0.5", "p50_us"), ("0.99", "p99_us"), ("0.999", "p999_us")):
                if s.get(key) is not None:
                    lat.add_metric([venue, stage, q], s[key] / 1e6)
    return [denials, passed, state, lat]


def serve_prometheus(bind: str, report, status):
    """Start the /metrics endpoint on HOST:PORT in a daemon thread; returns the server."""
    from prometheus_client import CollectorRegistry, start_http_server
    host, _, port = bind.rpartition(":")
    registry = CollectorRegistry()
    registry.register(ReportCollector(report, status))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server
