"""`pipeline download` with the venue out of reach says so in one line: it cannot
reach the venue, the short reason, and to check the network (exit status 2), in
seconds, not after a minute of retries; lost halfway, it adds that what came is
stored and the same command goes on after it."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline import cli, download
from pipeline.storage import ohlcv_dir, read_ohlcv
from test_storage import Klines, exchange_info
from venue_servers import HttpReplayServer

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 90


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_offline_says_it_cannot_reach_the_venue(tmp_path):
    out = tmp_path / "data"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pipeline", "download", "--venue", "binance",
                        "--symbol", "BTC/USDT", "--timeframe", "5m", "--since", "2025-01-01",
                        "--until", "2025-01-02", "--out", str(out), "--rest-url",
                        f"http://127.0.0.1:{closed_port()}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    line = r.stderr.strip()
    assert line.startswith("pipeline: cannot reach binance (") and line.endswith(
        "): check the network"), line
    assert "Connection refused" in line and "run the same command" not in line
    assert "Traceback" not in r.stderr and len(line) < 250
    assert time.monotonic() - t0 < 60          # one retry after 1 s, not 1 + 2 + 4 + 8 s
    assert not out.exists()


def test_download_that_loses_the_venue_halfway_keeps_what_came_and_says_so(tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 1)             # one retry, not four: a short test
    kl = Klines()

    def klines(q):
        if kl.calls >= 2:                                   # two pages, then the venue is gone
            return 503, "<html>Service Unavailable</html>"
        return kl(q)
    with HttpReplayServer({"/api/v3/exchangeInfo": exchange_info(), "/api/v3/klines": klines}) as srv:
        code = cli.main(["download", "--venue", "binance", "--symbol", "BTC/USDT", "--timeframe",
                         "5m", "--since", "2025-01-01", "--until", "2025-01-03", "--limit", "100",
                         "--out", str(tmp_path), "--rest-url", srv.url, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("pipeline: cannot reach binance (ExchangeNotAvailable: "), err
    assert "check the network; the 200 new bars fetched before are stored, and the same command " \
           "goes on after them" in err
    assert read_ohlcv(ohlcv_dir(tmp_path, "binance", "BTC/USDT", "5m")).num_rows == 200


def test_a_venue_that_keeps_refusing_for_its_rate_limit_is_not_called_unreachable(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 1)
    monkeypatch.setattr(download, "FIRST_RETRIES", 0)
    routes = {"/api/v3/exchangeInfo": exchange_info(),
              "/api/v3/klines": (429, '{"code":-1003,"msg":"Too many requests"}')}
    with HttpReplayServer(routes) as srv:
        code = cli.main(["download", "--venue", "binance", "--symbol", "BTC/USDT", "--timeframe",
                         "5m", "--since", "2025-01-01", "--until", "2025-01-02", "--out",
                         str(tmp_path), "--rest-url", srv.url, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "refused 2 times for the rate limit" in err and "try a lower --rate" in err
    assert "cannot reach" not in err
