"""Benchmark: tickpipe's shared-memory ring against the usual IPC peers.

One writer process sends 64-byte records (``shm.records.TICK``) to one reader
process; both are started with the multiprocessing ``spawn`` context, as the
pipeline starts its workers. Each transport runs three phases in the same
pair of processes, separated by a barrier:

throughput
    The writer sends N records as fast as it can (per record, or in batches
    of 1000 for the batched transports). The clock runs from the writer's
    first send to the reader's receipt of the last record, both read with
    ``time.perf_counter_ns`` (CLOCK_MONOTONIC, one clock for all processes on
    Linux). Our ring is LOSSLESS and its reader busy-polls ``get()``/``read()``;
    the peers' readers use their blocking receive. The reader counts the
    records and checks that the last one carries sequence N-1, so a transport
    that loses or duplicates records fails instead of reporting a figure.

latency, reader awake
    The writer sends one record at a time, one every ``--awake-gap-us``
    (paced by busy-waiting on perf_counter_ns, not sleep), stamping
    perf_counter_ns into ``ts_origin_ns`` just before the send. The reader
    busy-spins on a non-blocking receive and records ``now - stamp``.

latency, reader sleeping
    The same, one record every ``--sleep-gap-us`` so that the reader really
    goes to sleep: our ring's reader blocks in ``RingReader.wait()`` on its
    Doorbell (the writer rings it only when the reader's waiting flag is set),
    the peers in their blocking receive.

While pacing, the writer's GIL switch interval is 20 us instead of 5 ms: a
multiprocessing.Queue sends from a feeder thread, which a busy-waiting main
thread would otherwise hold off for 5 ms per record. Nothing else here has a
Python helper thread. ZeroMQ does have I/O threads (C, one per process);
with the reader spinning and the writer busy-waiting on a 2-core machine
they get no core until the scheduler preempts someone, which is what its
"awake" figures then show.

The batched transports are timed for latency with batches of one record
through the same batched calls (``write``/``read``, one-record messages), so
the batched ring's latency includes the fixed cost of one ``write`` and one
``read`` call (a few microseconds of numpy overhead).
The first ``--warmup`` latency samples of each phase are discarded.

Ratios: our batched ring's throughput over every peer's, and our per-record
ring over each per-record peer (throughput, and peer latency over ours).

Our ring has two per-record paths (shm/ring.py): compiled (shm._ringfast, C11
atomics) and pure Python. Where the compiled one is built, the per-record ring
runs twice in one run, once per path (the pure one with TICKPIPE_RING=python in
its processes), and both rows are printed side by side with their ratios over
the peers and over each other. In the JSON the row of the path in use stays in
``results`` (with ``path``), the other is under ``other_path``; ``aims`` checks
the figures against issue 15's.

Every number depends on what else runs on the machine: on 2 cores, two
busy-spinning processes plus any other load produce millisecond outliers.
The JSON records the load average before and after.

Usage::

    python3 bench/ring.py [--quick] [--json OUT.json] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import struct
import sys
import time
import traceback
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

import common
from shm import segment
from shm.doorbell import Doorbell
from shm.records import TICK
from shm.ring import FAST_PATH, LOSSLESS, FastRingWriter, Ring, RingSpec

BATCH = 1000                   # records per batch for the batched transports
POOL = 4096                    # distinct pre-built per-record payloads
RING_CAPACITY = 1 << 16        # 65536 records, 4 MiB
_STAMP = struct.Struct("<q")   # ts_origin_ns, the first field
_SEQ = struct.Struct("<Q")
SEQ_OFF = TICK.fields["seq"][1]
assert TICK.itemsize == 64 and TICK.fields["ts_origin_ns"][1] == 0
SWITCH_S = 20e-6               # GIL switch interval of the writer while pacing
OURS_BATCHED, OURS_RECORD = "shm ring, batched", "shm ring, per record"
OURS_PURE = "shm ring, per record, pure Python"
AIMS = {"per_record_records_per_s": 2.5e6, "awake_p50_us": 2.0, "awake_p99_us": 5.0,
        "batched_records_per_s": 100e6}   # issue 15, on this machine

Send = Callable[[Any], Any]
Recv = Callable[[], Any]


# -- transports ----------------------------------------------------------------
@dataclass
class Tx:
    send: Send
    close: Callable[[], None]
    stats: Callable[[], dict] = dict  # transport counters worth reporting


@dataclass
class Rx:
    poll: Recv            # non-blocking: a payload or None
    recv: Recv            # blocking (sleeps when idle)
    close: Callable[[], None]
    busy_throughput: bool  # drain the throughput phase with poll instead of recv


@dataclass(frozen=True)
class Transport:
    name: str
    batched: bool
    ours: bool
    count: int            # throughput records in a full run
    setup: Callable[[Any, str], tuple[Any, Any, Callable[[], None]]]
    tx: Callable[[Any], Tx]
    rx: Callable[[Any], Rx]
    ring_path: str | None = None   # TICKPIPE_RING for its processes (ours only)


# our ring ---------------------------------------------------------------------
def ring_setup(ctx: Any, tag: str) -> tuple[Any, Any, Callable[[], None]]:
    name = f"/tp_{tag}_ring"
    segment.unlink(name)  # a leftover of a killed run with a reused pid
    spec = RingSpec("bench", name, TICK, RING_CAPACITY, LOSSLESS, ["r"],
                    writer_bell=Doorbell(), reader_bells={"r": Doorbell()})
    ring = Ring.create(spec)

    def cleanup() -> None:
        try:
            ring.close()
        finally:
            segment.unlink(name)
    return spec, spec, cleanup


def _ring_tx(spec: RingSpec, batched: bool) -> Tx:
    ring = Ring.attach(spec)
    w = ring.writer()

    path = "compiled" if isinstance(w, FastRingWriter) else "python"

    def stats() -> dict:
        st = ring.stats()
        return {"path": path, **{k: st[k] for k in ("backpressure_waits", "backpressure_s",
                                                    "backpressure_timeouts")}}
    return Tx(w.write if batched else w.put, ring.close, stats)


def _ring_rx(spec: RingSpec, batched: bool) -> Rx:
    ring = Ring.attach(spec)
    r = ring.reader("r")

    def read_batch() -> np.ndarray | None:
        b = r.read()
        if b is None:
            return None
        r.commit()
        return b.records

    poll = read_batch if batched else r.get

    def recv() -> Any:
        while (got := poll()) is None:
            r.wait(1.0)
        return got
    return Rx(poll, recv, ring.close, busy_throughput=True)


# multiprocessing.Queue --------------------------------------------------------
def queue_setup(ctx: Any, tag: str) -> tuple[Any, Any, Callable[[], None]]:
    q = ctx.Queue()
    return q, q, q.close


def queue_tx(q: Any) -> Tx:
    def close() -> None:
        q.close()
        q.join_thread()
    return Tx(q.put, close)


def queue_rx(q: Any) -> Rx:
    def poll() -> Any:
        try:
            return q.get_nowait()
        except queue.Empty:
            return None
    return Rx(poll, q.get, q.close, busy_throughput=False)


# multiprocessing.Pipe ---------------------------------------------------------
def pipe_setup(ctx: Any, tag: str) -> tuple[Any, Any, Callable[[], None]]:
    r, w = ctx.Pipe(duplex=False)

    def cleanup() -> None:
        r.close()
        w.close()
    return w, r, cleanup


def pipe_tx(conn: Any) -> Tx:
    return Tx(conn.send_bytes, conn.close)


def pipe_rx(conn: Any) -> Rx:
    def poll() -> Any:
        return conn.recv_bytes() if conn.poll() else None
    return Rx(poll, conn.recv_bytes, conn.close, busy_throughput=False)


# ZeroMQ ipc PUSH/PULL ---------------------------------------------------------
def zmq_setup(ctx: Any, tag: str) -> tuple[Any, Any, Callable[[], None]]:
    path = f"/tmp/{tag}_zmq.ipc"

    def cleanup() -> None:
        if os.path.exists(path):
            os.unlink(path)
    cleanup()
    return f"ipc://{path}", f"ipc://{path}", cleanup


def _zmq_socket(kind: int, addr: str, bind: bool) -> tuple[Any, Callable[[], None]]:
    import zmq
    zctx = zmq.Context()
    sock = zctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    (sock.bind if bind else sock.connect)(addr)

    def close() -> None:
        sock.close(linger=0)
        zctx.term()
    return sock, close


def zmq_tx(addr: str) -> Tx:
    import zmq
    sock, close = _zmq_socket(zmq.PUSH, addr, bind=False)
    return Tx(sock.send, close)


def _zmq_rx(addr: str, decode: Callable[[bytes], Any] | None) -> Rx:
    import zmq
    sock, close = _zmq_socket(zmq.PULL, addr, bind=True)
    recv_raw, again, noblock = sock.recv, zmq.Again, zmq.NOBLOCK

    def poll() -> Any:
        try:
            msg = recv_raw(noblock)
        except again:
            return None
        return decode(msg) if decode else msg

    def recv() -> Any:
        return decode(recv_raw()) if decode else recv_raw()
    return Rx(poll, recv, close, busy_throughput=False)


def zmq_rx(addr: str) -> Rx:
    return _zmq_rx(addr, None)


def zmq_batch_rx(addr: str) -> Rx:
    return _zmq_rx(addr, lambda msg: np.frombuffer(msg, TICK))


TRANSPORTS: dict[str, Transport] = {t.name: t for t in [
    Transport(OURS_RECORD, False, True, 2_000_000, ring_setup,
              partial(_ring_tx, batched=False), partial(_ring_rx, batched=False)),
    Transport(OURS_BATCHED, True, True, 250_000_000, ring_setup,
              partial(_ring_tx, batched=True), partial(_ring_rx, batched=True)),
    Transport("multiprocessing.Queue", False, False, 300_000, queue_setup, queue_tx, queue_rx),
    Transport("multiprocessing.Pipe", False, False, 800_000, pipe_setup, pipe_tx, pipe_rx),
    Transport("zmq ipc, per record", False, False, 1_500_000, zmq_setup, zmq_tx, zmq_rx),
    Transport("zmq ipc, batched", True, False, 60_000_000, zmq_setup, zmq_tx, zmq_batch_rx),
]}
# the pure-Python per-record path, run beside the compiled one (see the docstring)
PURE = Transport(OURS_PURE, False, True, 1_000_000, ring_setup,
                 partial(_ring_tx, batched=False), partial(_ring_rx, batched=False),
                 ring_path="python")


# -- payloads ------------------------------------------------------------------
def make_records(first_seq: int, n: int) -> np.ndarray:
    recs = np.zeros(n, TICK)
    recs["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint64)
    recs["symbol_id"] = 1
    recs["kind"] = 1
    recs["price"] = 50_000.0
    recs["size"] = 0.01
    return recs


def last_seq(payload: Any) -> int:
    if isinstance(payload, np.ndarray):
        return int(payload["seq"][-1])
    return _SEQ.unpack_from(payload, SEQ_OFF)[0]


def stamps_of(payload: Any) -> list[int]:
    """Origin stamps of every record in a payload (a lagging batched reader
    can get several latency probes in one read)."""
    if isinstance(payload, np.ndarray):
        return payload["ts_origin_ns"].tolist()
    return [_STAMP.unpack_from(payload, 0)[0]]


def stamper(batched: bool) -> Callable[[int], Any]:
    """Returns f(t): a payload of one record stamped with t, built just before sending."""
    if batched:
        one = make_records(0, 1)
        words = one.view(np.int64)

        def stamp_batch(t: int) -> np.ndarray:
            words[0] = t
            return one
        return stamp_batch
    tail = make_records(0, 1).tobytes()[_STAMP.size:]
    pack = _STAMP.pack
    return lambda t: pack(t) + tail  # fresh bytes: a Queue pickles later, in its thread


# -- the two roles -------------------------------------------------------------
@dataclass
class Plan:
    count: int
    awake_n: int
    awake_gap_ns: int
    sleep_n: int
    sleep_gap_ns: int
    warmup: int
    barrier_s: float


def pump(send: Send, batched: bool, n: int) -> None:
    """Send n records: pre-built payloads, then a final one carrying seq n-1."""
    if batched:
        batch = make_records(0, BATCH)
        for _ in range(n // BATCH - 1):
            send(batch)
        send(make_records(n - BATCH, BATCH))
        return
    pool = [r.tobytes() for r in make_records(0, POOL)]
    final = make_records(n - 1, 1).tobytes()
    mask = POOL - 1
    for i in range(n - 1):
        send(pool[i & mask])
    send(final)


def drain(recv: Recv, batched: bool, n: int) -> tuple[int, int, Any]:
    """Receive until n records arrived; returns (end ns, records, last payload)."""
    got = 0
    last = None
    if batched:
        while got < n:
            p = recv()
            if p is not None:
                got += len(p)
                last = p
    else:
        while got < n:
            p = recv()
            if p is not None:
                got += 1
                last = p
    return time.perf_counter_ns(), got, last


def send_paced(send: Send, stamp: Callable[[int], Any], n: int, gap_ns: int) -> None:
    clock = time.perf_counter_ns
    due = clock()
    for _ in range(n):
        due += gap_ns
        while clock() < due:
            pass
        send(stamp(clock()))


def collect(get: Recv, n: int, spin: bool) -> list[int]:
    """One-way latencies in ns of n records; spin=True busy-polls a non-blocking get."""
    clock = time.perf_counter_ns
    out: list[int] = []
    while len(out) < n:
        if spin:
            while (p := get()) is None:
                pass
        else:
            p = get()
        now = clock()
        out.extend(now - s for s in stamps_of(p))
    return out


def writer_main(t: Transport, end: Any, plan: Plan, barrier: Any) -> dict:
    tx = t.tx(end)
    try:
        barrier.wait(plan.barrier_s)
        t0 = time.perf_counter_ns()
        pump(tx.send, t.batched, plan.count)
        barrier.wait(plan.barrier_s * 4)
        throughput_stats = tx.stats()
        stamp = stamper(t.batched)
        sys.setswitchinterval(SWITCH_S)  # see the module docstring (Queue's feeder thread)
        send_paced(tx.send, stamp, plan.awake_n + plan.warmup, plan.awake_gap_ns)
        barrier.wait(plan.barrier_s * 4)
        send_paced(tx.send, stamp, plan.sleep_n + plan.warmup, plan.sleep_gap_ns)
        barrier.wait(plan.barrier_s * 4)
        return {"t0": t0, "stats": throughput_stats}
    finally:
        tx.close()


def reader_main(t: Transport, end: Any, plan: Plan, barrier: Any) -> dict:
    rx = t.rx(end)
    try:
        barrier.wait(plan.barrier_s)
        t_end, got, last = drain(rx.poll if rx.busy_throughput else rx.recv,
                                 t.batched, plan.count)
        if got != plan.count or last_seq(last) != plan.count - 1:
            raise AssertionError(f"{t.name}: received {got} records ending with seq "
                                 f"{last_seq(last)}, expected {plan.count} ending with "
                                 f"{plan.count - 1}")
        barrier.wait(plan.barrier_s * 4)
        awake = collect(rx.poll, plan.awake_n + plan.warmup, spin=True)
        barrier.wait(plan.barrier_s * 4)
        sleeping = collect(rx.recv, plan.sleep_n + plan.warmup, spin=False)
        barrier.wait(plan.barrier_s * 4)
        return {"t_end": t_end, "got": got, "awake": awake[plan.warmup:],
                "sleeping": sleeping[plan.warmup:]}
    finally:
        rx.close()


def child(role: str, name: str, end: Any, plan: Plan, barrier: Any, results: Any) -> None:
    """Process entry point (spawn): run one role, report to the parent."""
    try:
        t = PURE if name == OURS_PURE else TRANSPORTS[name]
        out = (writer_main if role == "writer" else reader_main)(t, end, plan, barrier)
        results.put((role, out))
    except KeyboardInterrupt:
        pass
    except BaseException:
        try:
            barrier.abort()
        except Exception:
            pass
        results.put((role, {"error": traceback.format_exc()}))


# -- orchestration -------------------------------------------------------------
def percentiles(ns: list[int]) -> dict:
    if not ns:
        return {"p50_us": None, "p99_us": None, "p999_us": None, "samples": 0}
    p = np.percentile(np.asarray(ns, np.float64), [50, 99, 99.9]) / 1000.0
    return {"p50_us": round(float(p[0]), 2), "p99_us": round(float(p[1]), 2),
            "p999_us": round(float(p[2]), 2), "samples": len(ns)}


def gather(results: Any, procs: list[Any], deadline: float) -> dict[str, dict]:
    """Wait for both roles' reports; a child that dies silently is an error."""
    got: dict[str, dict] = {}
    while len(got) < 2:
        try:
            role, out = results.get(timeout=0.2)
            got[role] = out
            if "error" in out:
                break
            continue
        except queue.Empty:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result after the deadline (have {sorted(got)})")
        dead = [p.name for p in procs if p.exitcode is not None and p.name not in got]
        if dead:
            time.sleep(0.5)  # its report may still be in flight
            while not results.empty():
                role, out = results.get()
                got[role] = out
            if any(d not in got for d in dead):
                raise RuntimeError(f"{', '.join(dead)} exited without a result")
    return got


def stop(procs: list[Any]) -> None:
    for p in procs:
        p.join(2.0)
        if p.exitcode is None:
            p.terminate()
            p.join(2.0)
        if p.exitcode is None:
            p.kill()
            p.join()


def run_one(ctx: Any, t: Transport, plan: Plan, tag: str, time_limit: float) -> dict:
    w_end, r_end, cleanup = t.setup(ctx, tag)
    procs: list[Any] = []
    try:
        barrier = ctx.Barrier(2)
        results = ctx.Queue()
        before = os.environ.get("TICKPIPE_RING")
        if t.ring_path:
            os.environ["TICKPIPE_RING"] = t.ring_path   # spawned children inherit it
        try:
            for role, end in (("reader", r_end), ("writer", w_end)):
                p = ctx.Process(target=child, name=role, daemon=True,
                                args=(role, t.name, end, plan, barrier, results))
                p.start()
                procs.append(p)
        finally:
            if before is None:
                os.environ.pop("TICKPIPE_RING", None)
            else:
                os.environ["TICKPIPE_RING"] = before
        got = gather(results, procs, time.monotonic() + time_limit)
        errors = [f"{role}: {out['error']}" for role, out in got.items() if "error" in out]
        if errors:
            raise RuntimeError("\n".join(errors))
        return summarize(t, plan, got["writer"], got["reader"])
    finally:
        stop(procs)
        cleanup()


def summarize(t: Transport, plan: Plan, w: dict, r: dict) -> dict:
    seconds = (r["t_end"] - w["t0"]) / 1e9
    out = {"name": t.name, "records_per_s": round(plan.count / seconds)}
    out.update(percentiles(r["awake"]))
    out["sleeping"] = percentiles(r["sleeping"])
    out.update({"ours": t.ours, "batched": t.batched, "records": r["got"],
                "seconds": round(seconds, 3), "verified": True})
    if w["stats"]:
        out["path"] = w["stats"].pop("path", None)
        out["writer_stats"] = w["stats"]
    return out


def ratios(results: list[dict]) -> dict[str, Any]:
    by = {r["name"]: r for r in results if "error" not in r}
    peers = [r for r in by.values() if not r["ours"]]
    out: dict[str, Any] = {}
    rb, rr = by.get(OURS_BATCHED), by.get(OURS_RECORD)
    if rb:
        out["batched_ring_throughput_vs"] = {
            p["name"]: round(rb["records_per_s"] / p["records_per_s"], 2) for p in peers}
    if rr:
        def lat(p: dict, key: str, sub: str | None = None) -> float | None:
            a = (p[sub] if sub else p)[key]
            b = (rr[sub] if sub else rr)[key]
            return round(a / b, 2) if a and b else None
        out["per_record_ring_vs"] = {p["name"]: {
            "throughput": round(rr["records_per_s"] / p["records_per_s"], 2),
            "awake_p50_latency": lat(p, "p50_us"), "awake_p99_latency": lat(p, "p99_us"),
            "sleeping_p50_latency": lat(p, "p50_us", "sleeping"),
            "sleeping_p99_latency": lat(p, "p99_us", "sleeping"),
        } for p in peers if not p["batched"]}
    if rp := by.get(OURS_PURE):
        def vs(p: dict, key: str) -> float | None:
            return round(p[key] / rp[key], 2) if p[key] and rp[key] else None
        out["pure_per_record_ring_vs"] = {p["name"]: {
            "throughput": round(rp["records_per_s"] / p["records_per_s"], 2),
            "awake_p50_latency": vs(p, "p50_us"), "awake_p99_latency": vs(p, "p99_us"),
            "sleeping_p50_latency": round(p["sleeping"]["p50_us"] / rp["sleeping"]["p50_us"], 2)
            if p["sleeping"]["p50_us"] and rp["sleeping"]["p50_us"] else None,
        } for p in peers if not p["batched"]}
        if rr:
            out["compiled_vs_pure"] = {
                "throughput": round(rr["records_per_s"] / rp["records_per_s"], 2),
                **{f"awake_{k[:3]}_latency": round(rp[k] / rr[k], 2) if rp[k] and rr[k] else None
                   for k in ("p50_us", "p99_us")}}
    out["note"] = ("throughput: ours / peer records per s; latency: peer / ours "
                   "(above 1 means ours is better in both)")
    return out


def aims(results: list[dict]) -> dict[str, Any]:
    """Issue 15's aims against this run's figures (the per-record row of the path in use)."""
    by = {r["name"]: r for r in results if "error" not in r}
    rr, rb = by.get(OURS_RECORD), by.get(OURS_BATCHED)
    out: dict[str, Any] = {"path": rr.get("path") if rr else None}
    if rr:
        out["per_record_records_per_s"] = [rr["records_per_s"],
                                           rr["records_per_s"] >= AIMS["per_record_records_per_s"]]
        out["awake_p50_us"] = [rr["p50_us"], rr["p50_us"] <= AIMS["awake_p50_us"]]
        out["awake_p99_us"] = [rr["p99_us"], rr["p99_us"] <= AIMS["awake_p99_us"]]
    if rb:
        out["batched_records_per_s"] = [rb["records_per_s"],
                                        rb["records_per_s"] >= AIMS["batched_records_per_s"]]
    return out


def aims_line(a: dict) -> str:
    marks = {"per_record_records_per_s": lambda v: f"per record {_rate(v)}/s (>= 2.5 M)",
             "awake_p50_us": lambda v: f"awake p50 {v} us (<= 2)",
             "awake_p99_us": lambda v: f"awake p99 {v} us (<= 5)",
             "batched_records_per_s": lambda v: f"batched {_rate(v)}/s (>= 100 M)"}
    parts = [f"{fmt(a[k][0])} {'met' if a[k][1] else 'MISSED'}" for k, fmt in marks.items() if k in a]
    return f"aims of issue 15 ({a.get('path')} path): " + ("; ".join(parts) or "-")


# -- output --------------------------------------------------------------------
def _lat(d: dict) -> str:
    if d.get("p50_us") is None:
        return "-"
    return f"{d['p50_us']:.1f} / {d['p99_us']:.1f} / {d['p999_us']:.1f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}"


def _rate(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e5 else f"{x / 1e3:.0f} k"


def table(results: list[dict], rat: dict) -> str:
    head = ["transport", "records/s", "awake p50/p99/p99.9 us",
            "sleeping p50/p99/p99.9 us", "batched ring x",
            "per-record ring x (tput / awake p50 / sleep p50)"]
    rows = [head]
    vb = rat.get("batched_ring_throughput_vs", {})
    vr = rat.get("per_record_ring_vs", {})
    vp = rat.get("pure_per_record_ring_vs", {})
    for r in results:
        if r["name"] == OURS_PURE and "error" not in r:
            cp = rat.get("compiled_vs_pure")
            rows.append([r["name"], _rate(r["records_per_s"]), _lat(r), _lat(r["sleeping"]), "-",
                         f"compiled / pure: {_x(cp['throughput'])} / "
                         f"{_x(cp['awake_p50_latency'])} / -" if cp else "-"])
            continue
        if "error" in r:
            rows.append([r["name"], "ERROR", r["error"].strip().splitlines()[-1][:60], "", "", ""])
            continue
        pr = vr.get(r["name"])
        cells = " / ".join(_x(pr[k]) for k in ("throughput", "awake_p50_latency",
                                               "sleeping_p50_latency")) if pr else "-"
        if pr and r["name"] in vp:
            cells += "  (pure: " + " / ".join(_x(vp[r["name"]][k]) for k in (
                "throughput", "awake_p50_latency", "sleeping_p50_latency")) + ")"
        name = r["name"] + (f" ({r['path']})" if r.get("path") else "")
        rows.append([name, _rate(r["records_per_s"]), _lat(r), _lat(r["sleeping"]),
                     f"{vb[r['name']]:.1f}" if r["name"] in vb else "-", cells])
    return common.table(rows)


def make_plan(args: argparse.Namespace, t: Transport) -> Plan:
    scale = 0.1 if args.quick else args.scale
    count = max(2 * BATCH, int(t.count * scale) // BATCH * BATCH)
    n = 1000 if args.quick else args.samples
    return Plan(count=count, awake_n=n, awake_gap_ns=int(args.awake_gap_us * 1000),
                sleep_n=n, sleep_gap_ns=int(args.sleep_gap_us * 1000),
                warmup=args.warmup, barrier_s=30.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = common.parser(__doc__, "about 15 s: fewer records and samples")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="substrings of transport names")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply throughput counts")
    ap.add_argument("--samples", type=int, default=8000, help="latency samples per mode")
    ap.add_argument("--warmup", type=int, default=200, help="latency samples discarded")
    ap.add_argument("--awake-gap-us", type=float, default=30.0)
    ap.add_argument("--sleep-gap-us", type=float, default=300.0)
    ap.add_argument("--no-pure", action="store_true",
                    help="skip the pure-Python per-record row when the compiled path is built")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = mp.get_context("spawn")
    pool = list(TRANSPORTS.values())
    if FAST_PATH == "compiled" and not args.no_pure:
        pool.insert(1, PURE)     # beside the compiled per-record row
    chosen = [t for t in pool
              if not args.only or any(s.lower() in t.name.lower() for s in args.only)]
    info = common.machine()
    tag = f"bench{os.getpid()}"
    results: list[dict] = []
    for t in chosen:
        plan = make_plan(args, t)
        print(f"  {t.name}: {plan.count:,} records, {plan.awake_n} + {plan.sleep_n} "
              "latency samples ...", file=sys.stderr, flush=True)
        try:
            results.append(run_one(ctx, t, plan, tag, 45.0 if args.quick else 120.0))
        except (RuntimeError, TimeoutError) as e:
            results.append({"name": t.name, "ours": t.ours, "batched": t.batched,
                            "error": str(e)})
    load = common.finish(info)
    rat = ratios(results)
    goals = aims(results)
    print(table(results, rat))
    print(aims_line(goals))
    print(load)
    main_rows = [r for r in results if r["name"] != OURS_PURE]
    other = [r for r in results if r["name"] == OURS_PURE]
    common.save(args, info, {"results": main_rows, "other_path": other[0] if other else None,
                             "ring_path": FAST_PATH, "ratios": rat, "aims": goals})
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    common.run(main)
