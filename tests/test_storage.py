"""Data at rest: `pipeline download` against a local server that answers
Binance's /api/v3/klines and /api/v3/aggTrades from the real candles and
trades of tests/data, the Parquet layout helpers, and the recorder worker
inside a running pipeline.

The kline server serves slices of binance_BTC-USDT_5m.csv the way Binance
does (bars with startTime <= open time <= endTime, at most ``limit``),
copying the CSV's number texts into the JSON as Binance sends strings. ccxt
asks for /api/v3/exchangeInfo first: that is the real captured response
(it lists BTCUSDT, so nothing is added to it). The aggTrades server serves
binance_BTC-USDT_trades_2021-01-08.csv (2001 trades with consecutive ids) as
Binance's aggregate trades, honouring fromId, startTime/endTime and limit.
"""
from __future__ import annotations

import bisect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.storage import (append_ohlcv, append_trades, ohlcv_dir, read_ohlcv, read_trades,
                             tidy_market_rows, trades_dir, write_parts)
from venue_servers import HttpReplayServer, capture_lines

from conftest import data_file

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 90
CANDLES = data_file("candles/binance_BTC-USDT_5m.csv")
EXCHANGE_INFO = data_file("payloads/binance/rest/exchangeInfo_2021-10-12.capture.jsonl")
TF_MS = 5 * 60 * 1000


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


# -- a Binance klines server over the real candles ----------------------------------------
class Klines:
    """/api/v3/klines from the CSV rows. ``corrupt`` maps an open time to the row
    served instead (texts); ``dup`` is an open time whose row is served twice,
    the second time with another close (ccxt sorts a page by time, so a
    duplicate is how a venue's out-of-order row reaches us). ``hold_at``
    blocks that request (1-based) until released."""

    def __init__(self, corrupt: dict[int, list[str]] | None = None, dup: int | None = None,
                 hold_at: int | None = None):
        lines = CANDLES.read_text().splitlines()[1:]
        self.rows = [line.split(",") for line in lines if line]
        self.ts = [int(r[0]) for r in self.rows]
        self.corrupt = corrupt or {}
        self.dup = dup
        self.calls = 0
        self.hold_at = hold_at
        self.held = threading.Event()
        self.release = threading.Event()

    def __call__(self, q: dict) -> str:
        self.calls += 1
        if self.calls == self.hold_at:
            self.held.set()
            self.release.wait(TIMEOUT)
        limit = min(int(q.get("limit", 500)), 1000)
        end = bisect.bisect_right(self.ts, int(q["endTime"])) if "endTime" in q else len(self.ts)
        start = bisect.bisect_left(self.ts, int(q["startTime"])) if "startTime" in q else end - limit
        rows = [self.corrupt.get(int(r[0]), r) for r in self.rows[start:min(end, start + limit)]]
        i = next((k for k, r in enumerate(rows) if r[0] == str(self.dup)), None)
        if i is not None:
            rows.insert(i + 1, rows[i][:4] + [str(float(rows[i][4]) + 1.0), rows[i][5]])
        return json.dumps([[int(r[0]), *r[1:6], int(r[0]) + TF_MS - 1, "0", 1, "0", "0", "0"]
                           for r in rows])


def exchange_info() -> str:
    return next(r["raw"] for r in capture_lines(EXCHANGE_INFO) if r["dir"] == "http")


@pytest.fixture
def binance():
    """Start a kline server: binance(**Klines kwargs) -> (server, klines)."""
    servers = []

    def start(**kw):
        kl = Klines(**kw)
        srv = HttpReplayServer({"/api/v3/exchangeInfo": exchange_info(), "/api/v3/klines": kl})
        srv.__enter__()
        servers.append((srv, kl))
        return srv, kl
    yield start
    for srv, kl in servers:
        kl.release.set()
        srv.__exit__(None, None, None)


def csv_slice(since: str, until: str) -> pa.Table:
    t = pcsv.read_csv(CANDLES)
    ts = t.column("timestamp_ms").to_numpy()
    return t.filter(pa.array((ts >= ms(since)) & (ts < ms(until))))


def download_cmd(url: str, out: Path, since: str, until: str, *extra) -> list[str]:
    return [sys.executable, "-m", "pipeline", "download", "--venue", "binance", "--symbol",
            "BTC/USDT", "--timeframe", "5m", "--since", since, "--until", until,
            "--out", str(out), "--rest-url", url, *extra]


def run_download(url: str, out: Path, since: str, until: str, *extra) -> subprocess.CompletedProcess:
    r = subprocess.run(download_cmd(url, out, since, until, *extra), cwd=ROOT, capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r


def got_dir(out: Path) -> Path:
    return ohlcv_dir(out, "binance", "BTC/USDT", "5m")


def stored(out: Path) -> pa.Table:
    return read_ohlcv(got_dir(out))


def starts(srv) -> list[int]:
    return [int(q["startTime"]) for path, q in srv.requests if path == "/api/v3/klines"]


# -- download -----------------------------------------------------------------------------
def test_download_equals_csv_then_resumes_without_duplicates_or_gaps(binance, tmp_path):
    srv, kl = binance()
    out = tmp_path / "data"
    r = run_download(srv.url, out, "2025-01-01", "2025-01-08")
    assert stored(out).equals(csv_slice("2025-01-01", "2025-01-08"))
    assert "100%" in r.stderr and "bar" in r.stderr          # the progress bar, on stderr
    assert "2016 new bars" in r.stdout
    assert got_dir(out) == out / "ohlcv/venue=binance/symbol=BTC-USDT/timeframe=5m"
    assert sorted(p.name for p in got_dir(out).iterdir()) == ["2025-01.parquet"]

    # a later --until resumes right after the last stored bar
    n = kl.calls
    run_download(srv.url, out, "2025-01-01", "2025-02-03")
    assert starts(srv)[n] == ms("2025-01-08")
    # an earlier --since fills in before the first stored bar, and nothing is asked twice
    n = kl.calls
    run_download(srv.url, out, "2024-12-31", "2025-02-03")
    assert starts(srv)[n:] == [ms("2024-12-31")]                         # one page: 288 bars
    got = stored(out)
    assert got.equals(csv_slice("2024-12-31", "2025-02-03"))
    ts = got.column("timestamp_ms").to_numpy()
    assert len(ts) == (ms("2025-02-03") - ms("2024-12-31")) // TF_MS     # no gap
    assert (np.diff(ts) == TF_MS).all()                                  # no duplicate
    assert sorted(p.name for p in got_dir(out).iterdir()) == ["2024-12.parquet", "2025-01.parquet",
                                                             "2025-02.parquet"]
    # up to date: nothing asked, nothing added
    n = kl.calls
    r = run_download(srv.url, out, "2024-12-31", "2025-02-03")
    assert kl.calls == n and "0 new bars" in r.stdout


def test_interrupted_download_keeps_its_pages_and_resumes(binance, tmp_path):
    srv, kl = binance(hold_at=3)                  # the third page hangs until we let it go
    out = tmp_path / "data"
    proc = subprocess.Popen(download_cmd(srv.url, out, "2025-01-01", "2025-01-15"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert kl.held.wait(TIMEOUT), "the download never asked for its third page"
        proc.send_signal(signal.SIGINT)           # Ctrl-C while it waits for the venue
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        kl.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "resumes" in err and "Traceback" not in err
    # the two pages answered before the interrupt are stored
    assert stored(out).equals(csv_slice("2025-01-01", "2025-01-15").slice(0, 2000))
    n = kl.calls
    run_download(srv.url, out, "2025-01-01", "2025-01-15")
    assert starts(srv)[n] == ms("2025-01-01") + 2000 * TF_MS       # resumed after them
    assert stored(out).equals(csv_slice("2025-01-01", "2025-01-15"))


def test_bad_rows_from_the_venue_are_dropped_counted_and_reported(binance, tmp_path):
    rows = {int(r.split(",")[0]): r.split(",") for r in
            CANDLES.read_text().splitlines()[1:] if r.startswith("17357")}
    t0 = ms("2025-01-02")
    bad_ts = [t0 + k * TF_MS for k in (10, 20, 30)]
    corrupt = {
        bad_ts[0]: rows[bad_ts[0]][:1] + ["NaN"] + rows[bad_ts[0]][2:],      # NaN open
        bad_ts[1]: rows[bad_ts[1]][:3] + ["-1.0"] + rows[bad_ts[1]][4:],     # negative low
        bad_ts[2]: rows[bad_ts[2]][:5] + ["-3"],                              # negative volume
    }
    dup = t0 + 50 * TF_MS                         # served twice: the second is dropped
    srv, _ = binance(corrupt=corrupt, dup=dup)
    out = tmp_path / "data"
    r = run_download(srv.url, out, "2025-01-02", "2025-01-03")
    assert "dropped 4 bad rows from the venue (nan 1, non-positive 2, out of order 1)" in r.stdout
    want = csv_slice("2025-01-02", "2025-01-03")
    keep = ~np.isin(want.column("timestamp_ms").to_numpy(), bad_ts[:3])
    assert stored(out).equals(want.filter(pa.array(keep)))


@pytest.mark.parametrize("args, message", [
    (["--since", "2025-13-01"], "--since: not a date: '2025-13-01'"),
    (["--since", "yesterday"], "--since: not a date: 'yesterday'"),
    (["--until", "2024-12-01"], "is not before --until 2024-12-01 00:00"),
    (["--venue", "binanse"], "unknown venue 'binanse': ccxt has no exchange of that name; did you mean binance"),
    (["--symbol", "BTC/USDX"], "unknown symbol 'BTC/USDX' on binance; did you mean BTC/USDT"),
    (["--timeframe", "7m"], "unknown timeframe '7m' for binance (known: 1s, 1m"),
    (["--since", "2999-01-01", "--until", "2999-02-01"], "--since 2999-01-01 00:00 is in the future"),
])
def test_download_mistakes_are_one_line(binance, tmp_path, capsys, args, message):
    srv, _ = binance()
    base = {"--venue": "binance", "--symbol": "BTC/USDT", "--timeframe": "5m",
            "--since": "2025-01-01", "--until": "2025-01-02"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["download", *[x for kv in base.items() for x in kv], "--out", str(tmp_path),
            "--rest-url", srv.url]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipeline: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "ohlcv").exists()


# -- trades: a Binance aggTrades server over the real trades --------------------------------
TRADES = data_file("trades/binance_BTC-USDT_trades_2021-01-08.csv")
HOUR_MS = 3_600_000
DAY0 = "2021-01-08"


def binance_error(code: int, msg: str) -> tuple[int, str]:
    return 400, json.dumps({"code": code, "msg": msg})


class AggTrades:
    """/api/v3/aggTrades from the CSV rows, as Binance answers: ``fromId`` -> the
    trades from that id on; ``startTime``/``endTime`` (both inclusive, at most an
    hour apart) -> the trades in that window; neither -> the most recent; at most
    ``limit`` (default 500, at most 1000), oldest first. A window holding more
    than ``limit`` is answered from its start, or with ``window_end="last"``
    from its end (what ccxt's comments say Binance does). ``corrupt`` maps a
    trade id to fields served instead; ``dup`` is an id served twice; ``hold_at``
    blocks that fromId request (1-based) until released."""

    def __init__(self, corrupt: dict[int, dict] | None = None, dup: int | None = None,
                 hold_at: int | None = None, window_end: str = "first"):
        lines = TRADES.read_text().splitlines()[1:]
        self.rows = [line.split(",") for line in lines if line]
        self.ts = [int(r[0]) for r in self.rows]
        self.ids = [int(r[1]) for r in self.rows]
        self.corrupt = corrupt or {}
        self.dup = dup
        self.window_end = window_end
        self.by_id = 0
        self.hold_at = hold_at
        self.held = threading.Event()
        self.release = threading.Event()

    def agg(self, r: list[str]) -> dict:
        a = int(r[1])
        return {"a": a, "p": r[2], "q": r[3], "f": a, "l": a, "T": int(r[0]),
                "m": r[4] == "True", "M": True, **self.corrupt.get(a, {})}

    def __call__(self, q: dict):
        limit = int(q.get("limit", 500))
        if not 1 <= limit <= 1000:
            return binance_error(-1130, "Invalid data sent for a parameter.")
        timed = "startTime" in q or "endTime" in q
        if "fromId" in q and timed:
            return binance_error(-1128, "Combination of optional parameters invalid.")
        if "startTime" in q and "endTime" in q and int(q["endTime"]) - int(q["startTime"]) > HOUR_MS:
            return binance_error(-1127, "More than 1 hours between startTime and endTime.")
        if "fromId" in q:
            self.by_id += 1
            if self.by_id == self.hold_at:
                self.held.set()
                self.release.wait(TIMEOUT)
            lo = bisect.bisect_left(self.ids, int(q["fromId"]))
            hi = min(len(self.ids), lo + limit)
        elif timed:
            lo = bisect.bisect_left(self.ts, int(q["startTime"])) if "startTime" in q else 0
            hi = bisect.bisect_right(self.ts, int(q["endTime"])) if "endTime" in q else len(self.ts)
            if self.window_end == "last":
                lo = max(lo, hi - limit)
            hi = min(hi, lo + limit)
        else:
            lo, hi = max(0, len(self.ids) - limit), len(self.ids)
        out = [self.agg(r) for r in self.rows[lo:max(lo, hi)]]
        i = next((k for k, t in enumerate(out) if t["a"] == self.dup), None)
        if i is not None:
            out.insert(i + 1, {**out[i], "p": str(float(out[i]["p"]) + 1.0)})
        return json.dumps(out)


@pytest.fixture
def binance_trades():
    """Start an aggTrades server: binance_trades(**AggTrades kwargs) -> (server, aggtrades)."""
    servers = []

    def start(**kw):
        agg = AggTrades(**kw)
        srv = HttpReplayServer({"/api/v3/exchangeInfo": exchange_info(), "/api/v3/aggTrades": agg})
        srv.__enter__()
        servers.append((srv, agg))
        return srv, agg
    yield start
    for srv, agg in servers:
        agg.release.set()
        srv.__exit__(None, None, None)


def trades_cmd(url: str, out: Path, since: str, until: str | None, *extra) -> list[str]:
    return [sys.executable, "-m", "pipeline", "download", "--venue", "binance", "--symbol",
            "BTC/USDT", "--trades", "--since", since, *(["--until", until] if until else []),
            "--out", str(out), "--rest-url", url, *extra]


def run_trades(url: str, out: Path, since: str, until: str | None = None,
               *extra) -> subprocess.CompletedProcess:
    r = subprocess.run(trades_cmd(url, out, since, until, *extra), cwd=ROOT, capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r


def csv_trades(since: str = DAY0, until: str = "2021-01-09") -> pa.Table:
    t = pcsv.read_csv(TRADES, convert_options=pcsv.ConvertOptions(
        column_types={"quantity": pa.float64(), "price": pa.float64()}))
    ts = t.column("timestamp_ms").to_numpy()
    t = t.filter(pa.array((ts >= ms(since)) & (ts < ms(until))))
    side = np.where(t.column("buyer_maker").to_numpy(zero_copy_only=False), "sell", "buy")
    return pa.table({"timestamp_ms": t.column("timestamp_ms"), "trade_id": t.column("trade_id"),
                     "price": t.column("price"), "amount": t.column("quantity"),
                     "side": pa.array(side, pa.string())})


def trades_got(out: Path) -> pa.Table:
    return read_trades(trades_dir(out, "binance", "BTC/USDT"))


def agg_requests(srv) -> list[dict]:
    return [q for path, q in srv.requests if path == "/api/v3/aggTrades"]


def test_trades_download_equals_csv_then_resumes_without_duplicates_or_gaps(binance_trades,
                                                                             tmp_path):
    srv, _ = binance_trades()
    out = tmp_path / "data"
    r = run_trades(srv.url, out, f"{DAY0}T00:00:10", f"{DAY0}T00:00:20")
    want = csv_trades(f"{DAY0}T00:00:10", f"{DAY0}T00:00:20")
    assert 0 < want.num_rows < 2001
    assert trades_got(out).equals(want)
    assert f"{want.num_rows} new trades" in r.stdout
    assert "100%" in r.stderr and "trades" in r.stderr              # the progress bar, on stderr
    d = trades_dir(out, "binance", "BTC/USDT")
    assert d == out / "trades/venue=binance/symbol=BTC-USDT"
    assert sorted(p.name for p in d.iterdir()) == [f"{DAY0}.parquet"]
    last_id = trades_got(out).column("trade_id").to_numpy()[-1]

    # the interrupted range goes on: an earlier --since fills in before the first stored
    # trade (looked up by time once, then by id), no --until goes on after the last one
    n = len(agg_requests(srv))
    r = run_trades(srv.url, out, DAY0)
    asked = agg_requests(srv)[n:]
    assert asked[0]["startTime"] == str(ms(DAY0)) and int(asked[0]["endTime"]) < ms(DAY0) + HOUR_MS
    assert {"fromId": str(last_id + 1), "limit": "1000", "symbol": "BTCUSDT"} in asked
    got = trades_got(out)
    assert got.equals(csv_trades())
    ids = got.column("trade_id").to_numpy()
    assert len(ids) == 2001 and (np.diff(ids) == 1).all()          # no gap, no duplicate
    assert f"{2001 - want.num_rows} new trades" in r.stdout
    assert f"the dataset holds {DAY0} 00:00:00 .. {DAY0} 00:00:46" in r.stdout

    # up to date, and a --since a day before the first trade: found with one look at
    # the venue's oldest trade instead of 24 empty hours; nothing added
    n = len(agg_requests(srv))
    r = run_trades(srv.url, out, "2021-01-07")
    assert "0 new trades" in r.stdout and len(agg_requests(srv)) - n <= 3, agg_requests(srv)[n:]
    assert trades_got(out).equals(csv_trades())


@pytest.mark.parametrize("window_end", ["first", "last"])
def test_trades_first_trade_is_found_whichever_end_a_full_window_is_answered_from(
        binance_trades, tmp_path, window_end):
    srv, _ = binance_trades(window_end=window_end)
    out = tmp_path / "data"
    run_trades(srv.url, out, f"{DAY0}T00:00:05", f"{DAY0}T00:00:30", "--limit", "100")
    assert trades_got(out).equals(csv_trades(f"{DAY0}T00:00:05", f"{DAY0}T00:00:30"))


def test_interrupted_trades_download_keeps_what_it_fetched_and_resumes(binance_trades, tmp_path):
    srv, agg = binance_trades(hold_at=3)     # the third page by id hangs until we let it go
    out = tmp_path / "data"
    proc = subprocess.Popen(trades_cmd(srv.url, out, DAY0, None, "--limit", "500"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agg.held.wait(TIMEOUT), "the download never asked for its third page"
        proc.send_signal(signal.SIGINT)           # Ctrl-C while it waits for the venue
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        agg.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "resumes" in err and "Traceback" not in err
    # the two pages held in memory were written on the way out
    assert trades_got(out).equals(csv_trades().slice(0, 1000))
    n = len(agg_requests(srv))
    run_trades(srv.url, out, DAY0)
    by_id = [q["fromId"] for q in agg_requests(srv)[n:] if q.get("fromId", "0") != "0"]
    assert by_id[0] == str(agg.ids[1000])                           # resumed after them
    assert trades_got(out).equals(csv_trades())


def test_bad_trades_from_the_venue_are_dropped_counted_and_reported(binance_trades, tmp_path):
    ids = [int(r.split(",")[1]) for r in TRADES.read_text().splitlines()[1:] if r]
    ts = {int(r.split(",")[1]): int(r.split(",")[0]) for r in TRADES.read_text().splitlines()[1:]
          if r}
    bad = [ids[k] for k in (999, 1200, 1300, 1400)]
    corrupt = {bad[0]: {"p": "NaN"},                # ccxt cannot read its page; the page's last
               bad[1]: {"p": "-1.5"},
               bad[2]: {"q": "0"},
               bad[3]: {"T": ts[bad[3]] - 60_000}}          # a minute before its neighbours
    srv, _ = binance_trades(corrupt=corrupt, dup=ids[1500])  # served twice: the second dropped
    out = tmp_path / "data"
    r = run_trades(srv.url, out, DAY0)
    assert "dropped 5 bad rows from the venue (nan 1, non-positive 2, out of order 2)" in r.stdout
    want = csv_trades()
    keep = ~np.isin(want.column("trade_id").to_numpy(), bad)
    assert trades_got(out).equals(want.filter(pa.array(keep)))
    assert "1997 new trades" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--timeframe", "5m"], "--trades and --timeframe exclude each other"),
    (["--trades", None], "say what to download: --timeframe TF (OHLCV bars, e.g. 5m) or --trades"),
    (["--venue", "binanse"], "unknown venue 'binanse': ccxt has no exchange of that name"),
    (["--venue", "kraken"], "kraken is not supported yet"),
    (["--symbol", "BTC/USDX"], "unknown symbol 'BTC/USDX' on binance; did you mean BTC/USDT"),
    (["--since", "2999-01-01", "--until", "2999-02-01"], "--since 2999-01-01 00:00 is in the future"),
    (["--limit", "0"], "--limit must be >= 1, got 0"),
    (["--limit", "5000"], "binance: fetch_trades: BadRequest: "),
])
def test_trades_download_mistakes_are_one_line(binance_trades, tmp_path, capsys, args, message):
    srv, _ = binance_trades()
    base = {"--venue": "binance", "--symbol": "BTC/USDT", "--trades": "", "--since": DAY0,
            "--until": "2021-01-09"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["download", *[x for k, v in base.items() if v is not None for x in (k, v) if x],
            "--out", str(tmp_path), "--rest-url", srv.url, "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipeline: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "trades").exists()


# -- layout helpers -------------------------------------------------------------------------
def test_append_ohlcv_merges_months_without_duplicates(tmp_path):
    def bars(first: int, n: int, price: float) -> pa.Table:
        ts = ms("2025-01-31T23:50") + (first + np.arange(n)) * TF_MS
        return pa.table({"timestamp_ms": ts, "open": np.full(n, price), "high": np.full(n, price),
                         "low": np.full(n, price), "close": np.full(n, price),
                         "volume": np.ones(n)})
    d = tmp_path / "ohlcv"
    assert append_ohlcv(d, bars(0, 4, 1.0)) == 4          # two January bars, two February
    assert append_ohlcv(d, bars(2, 4, 2.0)) == 2          # two overlap: the stored ones win
    t = read_ohlcv(d)
    assert t.column("timestamp_ms").to_numpy().tolist() == (
        ms("2025-01-31T23:50") + np.arange(6) * TF_MS).tolist()
    assert t.column("close").to_pylist() == [1.0] * 4 + [2.0] * 2
    assert sorted(p.name for p in d.iterdir()) == ["2025-01.parquet", "2025-02.parquet"]


def test_append_trades_merges_days_by_trade_id(tmp_path):
    def trades(ids, price: float) -> pa.Table:
        ids = np.asarray(ids)
        return pa.table({"timestamp_ms": ms("2025-01-31T23:59:58") + (ids - 10) * 1000,
                         "trade_id": ids, "price": np.full(len(ids), price),
                         "amount": np.ones(len(ids)), "side": ["buy"] * len(ids)})
    d = tmp_path / "trades"
    assert append_trades(d, trades([10, 11, 12, 13], 1.0)) == 4    # two on Jan 31, two on Feb 1
    assert append_trades(d, trades([13, 12, 14], 2.0)) == 1        # stored ones win; sorted by id
    t = read_trades(d)
    assert t.column("trade_id").to_pylist() == [10, 11, 12, 13, 14]
    assert t.column("price").to_pylist() == [1.0] * 4 + [2.0]
    assert sorted(p.name for p in d.iterdir()) == ["2025-01-31.parquet", "2025-02-01.parquet"]


def test_write_parts_numbers_parts_and_never_overwrites(tmp_path):
    d = tmp_path / "p"
    tables = [pa.table({"x": [i]}) for i in range(3)]
    paths = write_parts([(d, t) for t in tables])
    assert [p.name for p in paths] == ["part-00000.parquet", "part-00001.parquet",
                                       "part-00002.parquet"]
    (d / "part-00007.parquet").write_bytes(b"someone else's")
    assert write_parts([(d, tables[0])])[0].name == "part-00008.parquet"
    assert (d / "part-00007.parquet").read_bytes() == b"someone else's"
    assert not [p for p in d.iterdir() if p.name.startswith(".")]       # no temporary left
    assert pq.read_table(d / "part-00001.parquet").column("x").to_pylist() == [1]


# -- the recorder in a running pipeline -------------------------------------------------------
RECORDER_CONF = """
[model]
kind = "momentum"
[pipeline]
name = "rec"
workers = 2
heartbeat_interval_s = 0.25
restart_backoff_s = 0.2
[bus]
metrics_bind = ""
[indicators]
bar_seconds = 0.2
[[feeds]]
name = "synthetic"
symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
ticks_per_s = 2000
max_ticks = {max_ticks}
[recorder]
enabled = true
dir = "{dir}"
flush_records = 1000000     # nothing is written before a stop or a SIGTERM
flush_seconds = 3600.0
"""


class Run:
    """`pipeline start` in a subprocess and the CLI pointed at it."""

    def __init__(self, tmp: Path, max_ticks: int, extra: str = ""):
        self.config = tmp / "rec.toml"
        self.config.write_text(RECORDER_CONF.format(max_ticks=max_ticks, dir=tmp / "data") + extra)
        self.env = {**os.environ, "TICKPIPE_RUN_DIR": str(tmp / "run"),
                    "TICKPIPE_LOG_LEVEL": "WARNING"}
        self.log = open(tmp / "rec.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "start", "--config",
                                      str(self.config)], env=self.env, cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", *args, "--config",
                               str(self.config)], env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=TIMEOUT)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_status(self, pred, what: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        st = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"pipeline exited early:\n{self.output()}"
            st = json.loads(self.cli("status", "--json").stdout)   # blocking: paces the loop
            if st.get("running") and pred({w["id"]: w for w in st["workers"]}):
                return st
        raise AssertionError(f"timed out waiting for {what}; last status {st}\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(TIMEOUT)
        self.log.close()


def recorded(tmp_path: Path) -> pa.Table:
    return pds.dataset(tmp_path / "data" / "ticks", format="parquet", partitioning="hive").to_table()


@pytest.mark.parametrize("how", ["stop", "sigterm"])
def test_recorder_writes_every_tick_once(tmp_path, how):
    """Every tick the feed emitted is on disk exactly once, written by the recorder's
    stop flush (`pipeline stop`), or by its SIGTERM flush while the pipeline runs."""
    n = 6000
    run = Run(tmp_path, max_ticks=n)
    try:
        run.wait_status(lambda w: w["recorder.0"]["state"] == "running"
                        and w["feed.0"]["stats"].get("emitted") == n, f"{n} ticks emitted")
        rep = json.loads(run.cli("report", "--json").stdout)
        ring = next(r for r in rep["rings"] if r["name"] == "ticks.synthetic")
        assert ring["write_seq"] == n
        assert [r["name"] for r in ring["readers"]] == ["indicators.0", "recorder.0", "execution.0"]
        assert all(r["dropped"] == 0 for r in ring["readers"])
        assert not (tmp_path / "data").exists()          # all held: thresholds not reached
        if how == "sigterm":
            st = json.loads(run.cli("status", "--json").stdout)
            os.kill({w["id"]: w for w in st["workers"]}["recorder.0"]["pid"], signal.SIGTERM)
            # it drains, writes, exits; the supervisor may or may not restart it
            run.wait_status(lambda w: w["recorder.0"]["state"] == "stopped"
                            or w["recorder.0"]["restarts"] >= 1, "the recorder to stop")
            assert recorded(tmp_path).num_rows == n
        stop = run.cli("stop")
        assert stop.returncode == 0, stop.stderr
        assert run.proc.wait(TIMEOUT) == 0
        output = run.output()
    finally:
        run.kill()

    t = recorded(tmp_path)
    assert t.num_rows == n
    assert sorted(t.column("seq").to_pylist()) == list(range(1, n + 1))   # all, each once
    assert set(t.column("venue").to_pylist()) == {"synthetic"}
    assert set(t.column("symbol").to_pylist()) == {"BTC-USDT", "ETH-USDT", "SOL-USDT"}
    days = [datetime.fromtimestamp(x / 1e9, timezone.utc).strftime("%Y-%m-%d")
            for x in t.column("ts_exchange_ns").to_pylist()]
    assert t.column("date").to_pylist() == days
    assert np.all(np.array(t.column("price").to_pylist()) > 0)
    names = set(t.column_names)
    assert {"ts_origin_ns", "ts_exchange_ns", "seq", "kind", "side", "price", "size", "bid",
            "ask"} <= names and "symbol_id" not in names

    # every closed bar, with the features the models saw, once
    bars = pds.dataset(tmp_path / "data" / "bars", format="parquet", partitioning="hive").to_table()
    summary = re.search(r"ticks \d+, bars (\d+)", output)
    assert summary and bars.num_rows == int(summary.group(1)) > 0
    assert {"ts_bar_ns", "open", "high", "low", "close", "volume", "n_ticks", "ema_12", "ema_26",
            "rsi_14", "macd_12_26_9", "atr_14", "venue", "symbol", "date"} <= set(bars.column_names)
    o, h, lo, c = (np.array(bars.column(k).to_pylist()) for k in ("open", "high", "low", "close"))
    assert np.all(h >= np.maximum(o, c)) and np.all(lo <= np.minimum(o, c)) and np.all(lo > 0)
    keys = list(zip(bars.column("symbol").to_pylist(), bars.column("ts_bar_ns").to_pylist()))
    assert len(keys) == len(set(keys))


# -- reading market files: BOM, sorting, duplicates ---------------------------------------------
BOM = "\ufeff"


@pytest.mark.parametrize("name", ["bom.csv", "bom.csv.gz"])
def test_a_bom_csv_reads_like_one_without(tmp_path, name):
    """Excel and many exporters start a UTF-8 CSV with a BOM; it is not part of the first name."""
    import gzip
    from pipeline.storage import OHLCV_COLUMNS, detect_kind, market_columns, read_market_table
    text = BOM + ",".join(OHLCV_COLUMNS) + "\n1000,2,3,1,2,5\n2000,2,3,1,2,5\n"
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    assert market_columns(path) == OHLCV_COLUMNS
    assert detect_kind(market_columns(path)) == "candles"
    assert read_market_table(path).column_names == OHLCV_COLUMNS     # pyarrow skips the BOM


def _candles(ts, close) -> pa.Table:
    close = np.asarray(close, float)
    return pa.table({"timestamp_ms": np.asarray(ts, np.int64), "open": close, "high": close + 1,
                     "low": close - 1, "close": close, "volume": np.ones(len(close))})


def test_market_rows_are_sorted_then_duplicates_dropped_and_counted():
    from pipeline.storage import tidy_market_rows
    t = _candles([3, 1, 2, 5, 4, 2, 4], [30, 10, 20, 50, 40, 20, 41])
    rows = tidy_market_rows(t)
    assert rows.kind == "candles"
    assert rows.table.column("timestamp_ms").to_pylist() == [1, 2, 3, 4, 5]
    assert rows.table.column("close").to_pylist() == [10, 20, 30, 40, 50]   # the first 4 wins
    assert rows.dropped == {"duplicate": 1, "conflicting duplicate": 1}
    assert rows.reordered == 3              # 1, 2 and 4 came after a later time
    # bad rows are still dropped first: a NaN row never wins a timestamp over a good one
    t = _candles([1, 2, 2, 3], [10, np.nan, 20, 30])
    rows = tidy_market_rows(t)
    assert rows.table.column("close").to_pylist() == [10, 20, 30]
    assert rows.dropped == {"nan": 1} and rows.reordered == 0


def test_market_trades_sort_by_time_then_id_and_share_times():
    from pipeline.storage import tidy_market_rows
    t = pa.table({"timestamp_ms": [2, 1, 1, 2, 3], "trade_id": [11, 10, 9, 11, 12],
                  "price": [1.0, 1.0, 1.0, 1.0, 2.0], "quantity": [1.0] * 5,
                  "side": ["buy", "sell", "buy", "buy", "sell"]})
    rows = tidy_market_rows(t)
    assert rows.table.column("trade_id").to_pylist() == [9, 10, 11, 12]
    assert rows.dropped == {"duplicate": 1} and rows.reordered == 2
    t = t.set_column(1, "trade_id", pa.array([11, 10, 9, 11, 11]))     # id 11 again, another trade
    assert tidy_market_rows(t).dropped == {"duplicate": 1, "conflicting duplicate": 1}
    # without ids, trades at one time are many trades: only copies of a whole row are dropped
    rows = tidy_market_rows(t.drop_columns(["trade_id"]))
    assert rows.table.column("timestamp_ms").to_pylist() == [1, 1, 2, 3]
    assert rows.table.column("side").to_pylist() == ["sell", "buy", "buy", "sell"]   # file order
    assert rows.dropped == {"duplicate": 1} and rows.reordered == 2


def test_venue_pages_still_drop_out_of_order_rows():
    """pipeline download checks a page as the venue sent it: out of order is bad there."""
    from pipeline.storage import check_candles
    t = _candles([1, 3, 2], [10, 30, 20])
    ok, bad = check_candles(*(t.column(c).to_numpy().astype(float) for c in t.column_names))
    assert ok.tolist() == [True, True, False] and bad == {"out of order": 1}


def test_an_investing_com_export_reads_as_candles(tmp_path):
    """investing.com exports (the daily Upbit, Bithumb and Coinone files in ../shared/data)
    name their volume ``volume_approx``: read as the volume, so the files load as they are."""
    from pipeline.storage import detect_kind, market_columns, read_market_table
    path = tmp_path / "upbit_BTC-KRW_1d_investingcom.csv"
    path.write_text("timestamp_ms,open,high,low,close,volume_approx\n"
                    "1519084800000,12654000,14148000,12653000,13542000,41010\n"
                    "1519171200000,13550000,13648000,12412000,12815000,37630\n")
    assert detect_kind(market_columns(path)) == "candles"
    table = read_market_table(path)
    assert table.column_names[-1] == "volume" and table.column("volume").to_pylist() == [41010, 37630]


@pytest.mark.parametrize("scale, unit", [(1e-3, "seconds"), (1e3, "microseconds"), (1e6, "nanoseconds")])
def test_timestamps_in_another_unit_are_named_not_played_in_another_century(scale, unit):
    ms = 1_700_000_000_000 + np.arange(10) * 60_000
    table = pa.table({"timestamp_ms": ms * scale, "open": np.full(10, 100.0), "high": np.full(10, 101.0),
                      "low": np.full(10, 99.0), "close": np.full(10, 100.5), "volume": np.full(10, 1.0)})
    with pytest.raises(ValueError, match=f"look like {unit}"):
        tidy_market_rows(table)
