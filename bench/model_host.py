"""Benchmark: what serving the ensemble from a remote model host costs, against the
model worker's local in-process path, measured in the same run on 127.0.0.1.

Models
    A config for a synthetic feed of 256 symbols ("S000/USDT" ... "S255/USDT",
    5120 ticks/s, 1 s bars), the default indicators and the default ``[model]``
    sizes with all four members (LSTM window 32 x 32 units, forest 100 trees of
    depth 8, XGBoost 300 rounds of depth 6, RL agent), trained with
    `models.synthetic.bootstrap` on its ``bootstrap_bars`` synthetic bars into a
    temporary registry. Training is off the clock and shortened where latency does
    not depend on it: one LSTM epoch and two walk-forward folds. ``--quick`` trains
    the tiny sizes of tests/test_model_host.py instead (window 8) on 500 bars, and
    times fewer calls.

Paths
    local   `models.serving.EnsembleModel` in this process: what a model worker runs.
    remote  `workers.model_host.RemoteEnsemble` (the bridge a model worker becomes
            with ``[model] remote``) asking a host started as a user starts it,
            ``python -m pipeline serve-model --bind tcp://127.0.0.1:PORT --config
            CFG --keys KEYS``, with keys from `make_keys`: CURVE-encrypted ZeroMQ
            over loopback TCP, the host running the same EnsembleModel. The host is
            a separate process, so the two never compete for the interpreter; on a
            2-core machine they still share the cores with everything else.

Inputs
    The live feed's own market (the feed seed, not the training history's) for
    all 256 symbols at once, built into bars as `synthetic_candles` builds one
    symbol's, then through `models.ta.Engine` as an indicator shard computes
    them, into rows of the features table (``shm.records.features_dtype``). The
    indicator warm-up bars are skipped: every model input is finite. Batch b is the
    first b symbols' rows of one bar. Every call carries the next bar (a larger
    ``ts_bar_ns``), so the LSTM histories advance as live, on both sides alike.

Timing
    Per batch size (``--batches``, default 1 64 256): untimed calls until the
    LSTM windows of those b symbols are full (no signal flagged FLAG_PARTIAL,
    checked), ``--warmup`` more, then ``--calls`` timed calls, local and remote
    alternating which goes first, each call timed alone with
    ``time.perf_counter_ns``. Figures are p50 and p99 in ms: local; remote (the
    round trip as the model worker sees it: request encoding, CURVE, loopback
    TCP, the host's inference, the reply's decoding); the host's own inference
    time (``RemoteEnsemble.infer_ms``, the host's clock around its predict);
    wire = remote - host inference, per call; overhead = remote p50 - local p50;
    the ratio remote / local at p50 and p99. Every call's five output arrays
    (probs, member probs, versions, flags, hold) must be equal, bit for bit, on
    both paths (``np.array_equal``), else the benchmark fails; the JSON records
    ``"equal": true``.

On a shared 2-core machine every figure depends on what else runs; the JSON
records the load average before and after. The host is stopped (SIGTERM, then
SIGKILL) and the temporary directory removed at the end, on an error or Ctrl-C too.

Usage::

    python3 bench/model_host.py [--quick] [--json OUT.json] [--batches 1 64 256]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import common

N_SYMBOLS = 256
TICKS_PER_S = 5120.0          # 20 ticks (about 15 trades) per symbol per 1 s bar
HOST_START_S = 300.0          # TensorFlow import and one LSTM compile per padded batch size
SERVING = "model host serving"
JSON_NOTE = ("ms per call for a whole batch; remote = round trip through the bridge; "
             "host_infer = the host's own predict time; wire = remote - host_infer per "
             "call; overhead = remote p50 - local p50; ratio_* = remote / local")

clock = time.perf_counter_ns

CONFIG = """
[pipeline]
name = "bench-model-host"
[bus]
metrics_bind = ""
[model]
kind = "ensemble"
artifacts = "{artifacts}"
remote_keys = "{keys}"
# a slow answer on a loaded machine is a figure here, not a stale batch
remote_timeout_s = 60.0
models = ["lstm", "forest", "xgboost", "rl"]
folds = 2
lstm_epochs = 1
{sizes}
[[feeds]]
name = "synthetic"
symbols = {symbols}
ticks_per_s = {ticks_per_s}
"""

QUICK_SIZES = """bootstrap_bars = 500
horizon = 6
forest_trees = 8
forest_depth = 4
xgb_rounds = 8
xgb_depth = 3
lstm_window = 8
lstm_units = 8"""


def symbols() -> list[str]:
    return [f"S{i:03d}/USDT" for i in range(N_SYMBOLS)]


def write_config(tmp: Path, quick: bool) -> Path:
    """The host's and the bridge's config (one file, as the host requires the same
    features and symbols); default model sizes unless ``quick``."""
    path = tmp / "bench.toml"
    path.write_text(CONFIG.format(artifacts=tmp / "artifacts", keys=tmp / "keys",
                                  sizes=QUICK_SIZES if quick else "",
                                  symbols=json.dumps(symbols()), ticks_per_s=TICKS_PER_S))
    return path


# -- inputs ---------------------------------------------------------------------
def market_bars(feed, bar_seconds: float, bars: int, seed: int) -> dict[str, np.ndarray]:
    """(bars, n_symbols) arrays of OHLCV and timestamp_ms: all symbols of ``feed``'s
    synthetic market from one pass of `synthetic_trades`, each built as
    `synthetic_candles` builds one symbol's (trades only). A bar without trades (rare
    at this tick rate) repeats the previous close with volume 0."""
    from models.synthetic import START_MS, synthetic_trades
    n = len(feed.symbols)
    s, b, p, v = synthetic_trades(feed, bar_seconds, bars, seed)
    order = np.argsort(b * n + s, kind="stable")           # by (bar, symbol), time order kept
    key, p, v = (b * n + s)[order], p[order], v[order]
    first = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    last = np.r_[first[1:] - 1, len(key) - 1]
    out = {k: np.full((bars, n), np.nan) for k in ("open", "high", "low", "close")}
    out["volume"] = np.zeros((bars, n))
    cell = np.unravel_index(key[first], (bars, n))
    out["open"][cell], out["close"][cell] = p[first], p[last]
    out["high"][cell] = np.maximum.reduceat(p, first)
    out["low"][cell] = np.minimum.reduceat(p, first)
    out["volume"][cell] = np.add.reduceat(v, first)
    close = out["close"]
    for t in range(bars):                                  # a bar without trades: flat
        gap = np.isnan(close[t])
        if gap.any():
            prev = close[t - 1, gap] if t else np.nanmean(close[: min(bars, 50)], axis=0)[gap]
            for k in ("open", "high", "low", "close"):
                out[k][t, gap] = prev
    out["timestamp_ms"] = np.broadcast_to(
        START_MS + np.round(np.arange(bars) * bar_seconds * 1e3).astype(np.int64)[:, None],
        (bars, n))
    return out


def feature_rows(cfg, bars: int) -> tuple[np.ndarray, int]:
    """(rows (usable bars, n_symbols) of the features dtype, warm-up bars skipped):
    the live feed's bars through the indicator engine, one engine update per bar
    for all symbols, as the indicator shards compute them."""
    from models.dataset import model_inputs
    from pipeline.config import indicator_specs
    from pipeline.config import feature_names
    from shm.records import features_dtype
    from models.ta import Engine
    names = feature_names(cfg)
    feed = cfg.feeds[0]
    m = market_bars(feed, cfg.indicators.bar_seconds, bars, feed.seed)
    n = len(feed.symbols)
    engine = Engine(n, indicator_specs(cfg.indicators))
    ids = np.arange(n)
    rows = np.zeros((bars, n), features_dtype(names))
    for t in range(bars):
        o, h, l, c, v = (np.ascontiguousarray(m[k][t]) for k in ("open", "high", "low", "close", "volume"))
        values = engine.update(ids, o, h, l, c, v)
        r = rows[t]
        r["ts_bar_ns"] = m["timestamp_ms"][t] * 1_000_000
        r["symbol_id"] = ids
        for k, col in zip(("open", "high", "low", "close", "volume"), (o, h, l, c, v)):
            r[k] = col
        for j, name in enumerate(engine.columns):
            r[name] = values[:, j]
    finite = np.array([np.isfinite(model_inputs(rows[t], names)).all() for t in range(bars)])
    bad = np.flatnonzero(~finite)
    skip = int(bad[-1]) + 1 if len(bad) else 0            # every later bar is finite
    return rows[skip:], skip


# -- the host -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HostProcess:
    """`pipeline serve-model` in a subprocess of its own session, its output drained by a
    thread (so it can never block on a full pipe); ready when it prints its serving line."""

    def __init__(self, config: Path, keys: Path):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve-model", "--bind", self.endpoint,
             "--config", str(config), "--keys", str(keys)],
            cwd=common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, env={**os.environ, "TICKPIPE_LOG_LEVEL": "WARNING"})
        self.lines: list[str] = []
        self.ready = threading.Event()           # the serving line, or the end of its output
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if SERVING in line:
                self.ready.set()
        self.ready.set()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_serving(self, timeout: float) -> None:
        """Block until the host serves; RuntimeError with its output when it does not."""
        if not self.ready.wait(timeout):
            raise RuntimeError(f"the model host did not serve within {timeout:.0f} s:\n{self.output()}")
        if not any(SERVING in line for line in self.lines):
            self.proc.wait(10)
            raise RuntimeError(f"the model host exited ({self.proc.returncode}):\n{self.output()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (a clean stop: it prints its counters), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self.thread.join(timeout)
        self.proc.stdout.close()
        return self.proc.returncode

    def kill(self) -> None:
        """Whatever happened: nothing of the host's session is left running."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(15)
        if not self.proc.stdout.closed:
            self.thread.join(5)


# -- timing ---------------------------------------------------------------------
def call(model, ids: np.ndarray, rows: np.ndarray) -> tuple[tuple, int]:
    t0 = clock()
    out = model.predict(ids, rows)
    return out, clock() - t0


def check_equal(a: tuple, b: tuple, where: str) -> None:
    """The remote answer must be the local one, bit for bit (same code, same inputs)."""
    for name, x, y in zip(("probs", "member_probs", "versions", "flags", "hold"), a, b):
        if not np.array_equal(x, y):
            raise AssertionError(f"{where}: remote {name} differ from local:\n{x!r}\n{y!r}")


class Walk:
    """The precomputed bars, handed out one per call: each call carries a new bar."""

    def __init__(self, rows: np.ndarray):
        self.rows, self.t = rows, 0

    def next(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        if self.t >= len(self.rows):
            raise RuntimeError(f"only {len(self.rows)} bars were prepared")
        rows = np.ascontiguousarray(self.rows[self.t, :b])
        self.t += 1
        return np.arange(b), rows


def bench_batch(b: int, local, remote, walk: Walk, window: int,
                args: argparse.Namespace) -> dict:
    from shm.records import FLAG_PARTIAL

    def both(i: int, ids: np.ndarray, rows: np.ndarray) -> tuple[tuple, tuple]:
        """((local out, ns), (remote out, ns)); which goes first alternates, so neither
        always runs on the caches the other left."""
        if i % 2 == 0:
            lo = call(local, ids, rows)
            return lo, call(remote, ids, rows)
        ro = call(remote, ids, rows)
        return call(local, ids, rows), ro

    # until the LSTM windows of these b symbols are full, then --warmup more
    to_fill, i = 0, 0
    while True:
        ids, rows = walk.next(b)
        (lo, _), (ro, _) = both(i, ids, rows)
        check_equal(lo, ro, f"batch {b}, warm-up call {i}")
        i += 1
        to_fill += 1
        if not (lo[3] & FLAG_PARTIAL).any():
            break
        if to_fill > window + 1:
            raise RuntimeError(f"batch {b}: still FLAG_PARTIAL after {to_fill} bars "
                               f"(LSTM window {window})")
    for _ in range(args.warmup):
        ids, rows = walk.next(b)
        (lo, _), (ro, _) = both(i, ids, rows)
        check_equal(lo, ro, f"batch {b}, warm-up call {i}")
        i += 1
    gc.collect()
    local_ns = np.empty(args.calls, np.int64)
    remote_ns = np.empty(args.calls, np.int64)
    infer_ms = np.empty(args.calls)
    first_bar = int(walk.rows[walk.t, 0]["ts_bar_ns"])
    for k in range(args.calls):
        ids, rows = walk.next(b)
        (lo, local_ns[k]), (ro, remote_ns[k]) = both(i, ids, rows)
        i += 1
        infer_ms[k] = remote.infer_ms[-1]
        check_equal(lo, ro, f"batch {b}, timed call {k}")
        if (lo[3] != 0).any():
            raise AssertionError(f"batch {b}, timed call {k}: flags {np.unique(lo[3])}: "
                                 "not every member ran on every row")
    last_bar = int(rows["ts_bar_ns"][0])
    lp50, lp99 = (float(np.percentile(local_ns, q)) / 1e6 for q in (50, 99))
    rp50, rp99 = (float(np.percentile(remote_ns, q)) / 1e6 for q in (50, 99))
    wire = remote_ns / 1e6 - infer_ms
    return {
        "batch": b, "calls": args.calls,
        "local_p50_ms": round(lp50, 4), "local_p99_ms": round(lp99, 4),
        "remote_p50_ms": round(rp50, 4), "remote_p99_ms": round(rp99, 4),
        "host_infer_p50_ms": round(float(np.percentile(infer_ms, 50)), 4),
        "host_infer_p99_ms": round(float(np.percentile(infer_ms, 99)), 4),
        "wire_p50_ms": round(float(np.percentile(wire, 50)), 4),
        "wire_p99_ms": round(float(np.percentile(wire, 99)), 4),
        "overhead_p50_ms": round(rp50 - lp50, 4),
        "ratio_p50": round(rp50 / lp50, 2), "ratio_p99": round(rp99 / lp99, 2),
        "request_bytes": int(rows.nbytes + 8 * b),
        "reply_bytes": int(sum(x.nbytes for x in lo)),
        "warmup_calls_to_fill": to_fill, "warmup_calls": to_fill + args.warmup,
        "first_ts_bar_ns": first_bar, "last_ts_bar_ns": last_bar,
        "equal": True,
    }


# -- output ---------------------------------------------------------------------
def table_text(results: list[dict]) -> str:
    ms = common.ms
    head = ["batch", "local p50 ms", "local p99 ms", "remote p50 ms", "remote p99 ms",
            "host infer p50", "wire p50", "overhead p50", "remote/local p50", "p99"]
    rows = [head]
    for r in results:
        rows.append([str(r["batch"]), ms(r["local_p50_ms"]), ms(r["local_p99_ms"]),
                     ms(r["remote_p50_ms"]), ms(r["remote_p99_ms"]), ms(r["host_infer_p50_ms"]),
                     ms(r["wire_p50_ms"]), f"{r['overhead_p50_ms']:+.3f}",
                     f"{r['ratio_p50']:.2f}x", f"{r['ratio_p99']:.2f}x"])
    return common.table(rows, "r")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = common.parser(__doc__, "tiny models (tests/test_model_host.py's sizes) on fewer bars, "
                                "fewer calls (8 timed, 1 warm-up)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--calls", type=int, default=None, help="timed calls per batch size (default 200, 8 with --quick)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed calls once the LSTM windows are full (default 10, 1 with --quick)")
    args = common.defaults(ap.parse_args(argv), (("calls", 200, 8), ("warmup", 10, 1)))
    bad = [b for b in args.batches if not 1 <= b <= N_SYMBOLS]
    if bad or args.calls < 1 or args.warmup < 0:
        ap.error(f"batch sizes are 1..{N_SYMBOLS}, --calls >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = common.machine()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tickpipe-bench-model-host-"))
    host: HostProcess | None = None
    local = remote = None
    try:
        from models.synthetic import bootstrap
        from pipeline.config import load_config
        from pipeline.symbols import SymbolRegistry
        from pipeline.config import feature_names
        from models.serving import EnsembleModel
        from workers.model_host import RemoteEnsemble, make_keys

        make_keys(tmp / "keys")
        cfg_path = write_config(tmp, args.quick)
        cfg = load_config(cfg_path)
        m = cfg.model
        print(f"  training {', '.join(m.models)} on {m.bootstrap_bars} synthetic bars ...",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with open(os.devnull, "w") as quiet:          # its report: training, not latency
            bootstrap(cfg, progress=not args.quick, out=quiet)
        train_s = round(time.perf_counter() - t0, 1)

        t_host = time.perf_counter()
        host = HostProcess(cfg_path, tmp / "keys")    # loads while this process does too
        names = feature_names(cfg)
        needed = sum(m.lstm_window + 1 + args.warmup + args.calls for _ in args.batches)
        rows, skipped = feature_rows(cfg, needed + 100)
        if len(rows) < needed:
            raise RuntimeError(f"{len(rows)} bars after the indicator warm-up, {needed} needed")
        t0 = time.perf_counter()
        local = EnsembleModel(m.artifacts, names, N_SYMBOLS)
        local_load_s = round(time.perf_counter() - t0, 1)
        host.wait_serving(HOST_START_S)
        host_ready_s = round(time.perf_counter() - t_host, 1)
        rcfg = load_config(cfg_path)
        rcfg.model.remote = host.endpoint
        remote = RemoteEnsemble(rcfg, names, SymbolRegistry.from_config(rcfg).keys)
        if not remote.hello():
            raise RuntimeError(f"no answer from the model host: {remote.reason}\n{host.output()}")
        if remote.info["versions"] != local.versions:
            raise RuntimeError(f"host versions {remote.info['versions']} != local {local.versions}")

        walk = Walk(rows)
        results = []
        for b in args.batches:
            print(f"  batch {b} ...", file=sys.stderr, flush=True)
            results.append(bench_batch(b, local, remote, walk, m.lstm_window, args))
        st = remote.stats()
        if st["stale_signals"] or st["remote_state"] != "running":
            raise RuntimeError(f"the bridge saw stale batches: {st}")
        remote.close()
        remote = None
        host_exit = host.stop()
        host_out = host.output()
        stopped = next((ln.strip() for ln in host.lines if ln.startswith("stopped:")), "")
        if host_exit != 0 or not stopped:
            raise RuntimeError(f"the model host did not stop cleanly ({host_exit}):\n{host_out}")
        load = common.finish(info)
    finally:
        if remote is not None:
            remote.close()
        if host is not None:
            host.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    total_calls = sum(r["warmup_calls"] + r["calls"] for r in results)
    print(f"models: {', '.join(local.members)} ({local.method}); LSTM window {m.lstm_window} x "
          f"{m.lstm_units} units, forest {m.forest_trees} trees depth {m.forest_depth}, XGBoost "
          f"{m.xgb_rounds} rounds depth {m.xgb_depth}; trained on {m.bootstrap_bars} synthetic bars "
          f"in {train_s:.0f} s")
    print(f"inputs: {N_SYMBOLS} symbols x {len(names)} features, {skipped} warm-up bars skipped, "
          f"one new bar per call ({walk.t} bars); device local {local.device}, host "
          f"{st['device']}; host at {host.endpoint} (CURVE) serving {host_ready_s:.0f} s "
          f"after its start; the local model loaded in {local_load_s:.0f} s")
    print("latency per call for the whole batch (one row per symbol); wire = remote - host "
          "infer per call; overhead = remote p50 - local p50")
    print(table_text(results))
    print(f"outputs equal on all {total_calls} calls (np.array_equal, 5 arrays); host: {stopped}")
    print(f"{load}; {time.perf_counter() - t_start:.0f} s")
    if args.json:
        import sklearn
        import xgboost
        from models.tfruntime import tensorflow
        info.update(tensorflow=tensorflow().__version__, sklearn=sklearn.__version__,
                    xgboost=xgboost.__version__, device_local=local.device,
                    device_host=st["device"])
        common.save(args, info, {
            "symbols": N_SYMBOLS, "features": len(names), "warmup_bars_skipped": skipped,
            "bars_used": walk.t, "members": list(local.members), "method": local.method,
            "versions": local.versions,
            "model": {k: getattr(m, k) for k in ("bootstrap_bars", "folds", "lstm_window",
                                                 "lstm_units", "lstm_epochs", "forest_trees",
                                                 "forest_depth", "xgb_rounds", "xgb_depth")},
            "train_s": train_s, "local_load_s": local_load_s, "host_ready_s": host_ready_s,
            "endpoint": host.endpoint, "host_pid": host.proc.pid, "host_exit": host_exit,
            "host_stopped": stopped, "bridge": {k: st[k] for k in ("remote_batches",
                                                                   "stale_batches", "late_replies")},
            "results": results, "equal": True, "calls_compared": total_calls,
            "note": JSON_NOTE})
    return 0


if __name__ == "__main__":
    common.run(main, "interrupted: the model host is stopped and the temporary files removed")
