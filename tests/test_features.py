"""Features: `pipeline features` over a candle file, the live path giving the
same values as that batch path, and the desk alert on the tap."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from conftest import data_file

ROOT = Path(__file__).resolve().parent.parent
CANDLES = data_file("candles/binance_BTC-USDT_5m.csv")
TRADES = data_file("trades/binance_BTC-USDT_trades_2021-01-08.csv")
TIMEOUT = 120


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT, env=env)


def write_slice(path: Path, start: int, n: int) -> None:
    with open(CANDLES) as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + rows[1 + start:1 + start + n])


def test_features_cli_equals_talib(tmp_path):
    import talib
    data = tmp_path / "slice.csv"
    write_slice(data, 0, 5000)
    r = cli("features", "--data", str(data), "--out", str(tmp_path / "f.parquet"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("5000 bars") and "warm-up" in r.stdout
    t = pq.read_table(tmp_path / "f.parquet")
    for name in ("ema_12", "ema_26", "sma_20", "rsi_14", "macd_12_26_9", "bb_upper_20_2", "atr_14",
                 "obv", "vwap_20", "vol_20", "volz_20"):
        assert name in t.column_names, name
    c = np.array(t.column("close").to_pylist())
    np.testing.assert_allclose(np.array(t.column("ema_12").to_pylist(), dtype=float),
                               talib.EMA(c, 12), rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(np.array(t.column("rsi_14").to_pylist(), dtype=float),
                               talib.RSI(c, 14), rtol=1e-9, equal_nan=True)


def test_features_cli_one_line_errors(tmp_path):
    r = cli("features", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.parquet"))
    assert r.returncode == 2 and r.stderr.strip().endswith("nope.csv: no such file")
    r = cli("features", "--data", str(TRADES), "--out", str(tmp_path / "o.parquet"))
    assert r.returncode == 2 and "holds trades" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.csv"
    write_slice(bad, 0, 100)
    lines = bad.read_text().splitlines()
    lines[10] = lines[10].split(",")[0] + ",nan,1,1,1,1"
    bad.write_text("\n".join(lines) + "\n")
    r = cli("features", "--data", str(bad), "--out", str(tmp_path / "o.parquet"))
    assert r.returncode == 0 and "99 bars" in r.stdout and "dropped 1 bad rows (nan 1)" in r.stdout


LIVE = """
[model]
kind = "momentum"
[pipeline]
name = "live"
workers = 2
heartbeat_interval_s = 0.25
[bus]
metrics_bind = ""
[rings]
ticks_capacity = 65536
[indicators]
bar_seconds = 300.0
close_grace_s = 1.0
alert_volatility = {alert}
alert_volume_z = 1.0
[[feeds]]
name = "replay"
kind = "replay"
symbols = ["BTC/USDT"]
path = "{data}"
speed = 0.0
[recorder]
enabled = true
dir = "{out}"
"""


class Live:
    def __init__(self, tmp: Path, data: Path, alert: float = 0.0):
        self.config = tmp / "live.toml"
        self.config.write_text(LIVE.format(data=data, out=tmp / "rec", alert=alert))
        self.env = {**os.environ, "TICKPIPE_RUN_DIR": str(tmp / "run"), "TICKPIPE_LOG_LEVEL": "WARNING"}
        self.log = tmp / "live.log"
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "start", "--config",
                                      str(self.config)], cwd=ROOT, env=self.env, stdout=self._logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def cli(self, *args):
        return cli(*args, "--config", str(self.config), env=self.env)

    def wait_bars(self, n: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            st = json.loads(self.cli("status", "--json").stdout)   # blocking: paces the loop
            if st.get("running"):
                shard = {w["id"]: w for w in st["workers"]}["indicators.0"]
                if shard["stats"].get("bars", 0) >= n:
                    return
        raise AssertionError(f"fewer than {n} bars closed\n{self.log.read_text()}")

    def stop(self) -> str:
        assert self.cli("stop").returncode == 0
        assert self.proc.wait(TIMEOUT) == 0
        self._logf.close()
        return self.log.read_text()

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(TIMEOUT)


def test_live_bars_equal_batch_features(tmp_path):
    """A real candle file replayed through the feed, the shard and the recorder
    gives bars and features equal to `pipeline features` on the same file."""
    data = tmp_path / "slice.csv"
    n = 600
    write_slice(data, 1000, n)
    assert cli("features", "--data", str(data), "--out", str(tmp_path / "batch.parquet")).returncode == 0
    live = Live(tmp_path, data)
    try:
        live.wait_bars(n - 1)            # the last bar stays open: no later tick closes it
        live.stop()
    finally:
        live.kill()
    batch = pq.read_table(tmp_path / "batch.parquet").to_pandas().set_index("timestamp_ms")
    bars = pds.dataset(tmp_path / "rec" / "bars", format="parquet", partitioning="hive").to_table()
    bars = bars.to_pandas()
    bars["timestamp_ms"] = bars["ts_bar_ns"] // 1_000_000
    bars = bars.set_index("timestamp_ms").sort_index()
    assert len(bars) >= n - 1 and bars.index.is_unique
    common = bars.index.intersection(batch.index)
    assert len(common) >= n - 1
    for col in batch.columns:
        np.testing.assert_allclose(bars.loc[common, col].to_numpy(float),
                                   batch.loc[common, col].to_numpy(float), rtol=1e-9, atol=1e-9,
                                   equal_nan=True, err_msg=col)


def test_alert_on_volatility_with_volume_surge(tmp_path):
    """Real candles: the bars whose volatility and volume z-score both pass the
    thresholds are flagged, logged, and only those."""
    data = tmp_path / "slice.csv"
    write_slice(data, 0, 400)
    live = Live(tmp_path, data, alert=0.0005)
    try:
        live.wait_bars(399)
        out = live.stop()
    finally:
        live.kill()
    bars = pds.dataset(tmp_path / "rec" / "bars", format="parquet", partitioning="hive").to_table()
    flags = np.array(bars.column("flags").to_pylist())
    vol = np.array(bars.column("vol_20").to_pylist(), dtype=float)
    volz = np.array(bars.column("volz_20").to_pylist(), dtype=float)
    with np.errstate(invalid="ignore"):
        expected = (vol > 0.0005) & (volz > 1.0)
    assert expected.any() and not expected.all()
    assert np.array_equal((flags & 8) != 0, expected)
    assert out.count("alert: BTC/USDT@replay volatility") == int(expected.sum())


SYNTH_ALERTS = """
[model]
kind = "momentum"
[pipeline]
name = "alerts"
workers = 2
[bus]
metrics_bind = ""
[indicators]
bar_seconds = 0.2
close_grace_s = 0.05
volatility = [3]
volume_z = [3]
alert_volatility = 1e-12
alert_volume_z = -1000.0
[[feeds]]
name = "synthetic"
symbols = ["BTC/USDT", "ETH/USDT"]
ticks_per_s = 2000
"""


def test_alerts_on_the_tap(tmp_path):
    config = tmp_path / "alerts.toml"
    config.write_text(SYNTH_ALERTS)
    env = {**os.environ, "TICKPIPE_RUN_DIR": str(tmp_path / "run"), "TICKPIPE_LOG_LEVEL": "ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "start", "--config", str(config)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        r = None
        while time.monotonic() < deadline:     # until the pipeline is up and the tap attaches
            r = cli("tap", "alerts", "--json", "--limit", "2", "--timeout", str(TIMEOUT),
                    "--config", str(config), env=env)
            if r.returncode == 0:
                break
            assert "no pipeline named" in r.stderr or "not running" in r.stderr, r.stderr
        assert r is not None and r.returncode == 0, r.stderr
        recs = [json.loads(x) for x in r.stdout.splitlines()]
        assert len(recs) == 2
        assert all(x["flags"] & 8 and x["vol_3"] > 0 for x in recs)
        assert cli("stop", "--config", str(config), env=env).returncode == 0
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(TIMEOUT)


def test_absurd_candles_are_dropped_and_counted(tmp_path):
    """high = 1e300 (or a price of 1e-300) is a broken row: dropped, never kept to overflow
    the float32 a model takes."""
    from models.features import compute
    from pipeline.config import load_config
    n = 300
    ts = 1_600_000_000_000 + 60_000 * np.arange(n)
    close = 100 + np.cumsum(np.random.default_rng(1).standard_normal(n) * 0.1)
    rows = [[int(t), c, c + 0.5, c - 0.5, c, 10.0] for t, c in zip(ts, close)]
    rows[50][2] = 1e300
    rows[60][3] = 1e-300
    rows[70][5] = 1e30
    path = tmp_path / "c.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["timestamp_ms", "open", "high", "low", "close", "volume"]] + rows)
    table, summary = compute(path, load_config(None))
    assert summary["rows"] == n - 3 and summary["dropped"] == {"out of range": 3}
    assert max(table.column("high").to_pylist()) < 1e6


# -- reading the file: BOM, shuffled rows, duplicates --------------------------------------------
def _real_rows(start: int, n: int) -> tuple[list[str], list[list[str]]]:
    with open(CANDLES, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1 + start:1 + start + n]


def _write(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        csv.writer(f).writerows([header] + rows)
    return path


def test_shuffled_rows_are_sorted_not_dropped(tmp_path):
    """20 real bars in a shuffled order: all 20 come back in time order, the same
    features as the file in order, and the summary says how many were moved."""
    from models.features import compute
    from pipeline.config import load_config
    header, rows = _real_rows(1000, 20)
    mixed = [rows[i] for i in np.random.default_rng(5).permutation(20)]
    cfg = load_config(None)
    want, _ = compute(_write(tmp_path / "sorted.csv", header, rows), cfg)
    got, summary = compute(_write(tmp_path / "shuffled.csv", header, mixed), cfg)
    assert summary["rows"] == 20 and summary["dropped"] == {}
    assert got.column("timestamp_ms").to_pylist() == [int(r[0]) for r in rows]
    assert got.column_names == want.column_names
    for name in want.column_names:                  # NaN in warm-up: equal where both are NaN
        np.testing.assert_array_equal(got.column(name).to_numpy(), want.column(name).to_numpy())
    ts = [int(r[0]) for r in mixed]
    late = sum(t < max(ts[:k]) for k, t in enumerate(ts) if k)     # came after a later bar
    assert summary["reordered"] == late > 10


def test_duplicate_rows_are_dropped_and_counted(tmp_path):
    from models.features import compute
    from pipeline.config import load_config
    header, rows = _real_rows(2000, 50)
    other = list(rows[30])
    other[4] = str(float(other[4]) * 1.0001)                   # same time, another close
    other[2] = str(max(float(other[2]), float(other[4])))
    data = rows[:40] + [rows[5], rows[6], other] + rows[40:] + [rows[49]]
    table, summary = compute(_write(tmp_path / "dups.csv", header, data), load_config(None))
    assert summary["dropped"] == {"duplicate": 3, "conflicting duplicate": 1}
    assert table.column("timestamp_ms").to_pylist() == [int(r[0]) for r in rows]
    assert table.column("close").to_pylist() == [float(r[4]) for r in rows]   # the first kept
    assert summary["reordered"] == 0


def test_features_cli_reads_a_bom_csv_and_reports_sorting(tmp_path):
    header, rows = _real_rows(3000, 100)
    data = rows[50:] + rows[:50] + [rows[7]]
    path = _write(tmp_path / "bom.csv", header, data, bom=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    r = cli("features", "--data", str(path), "--out", str(tmp_path / "o.parquet"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("100 bars"), r.stdout
    assert "dropped 1 bad rows (duplicate 1)" in r.stdout
    assert "sorted 50 rows that were out of order" in r.stdout
    assert pq.read_table(tmp_path / "o.parquet").column("timestamp_ms").to_pylist() == \
        [int(r[0]) for r in rows]
