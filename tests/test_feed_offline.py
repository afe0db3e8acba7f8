"""Venue feeds with no venue to reach (a closed port on 127.0.0.1, as offline):
each failure is logged once with a short reason and then counted, the tries back
off, and `pipeline status` shows each feed's connection state, not only that its
process runs."""
from __future__ import annotations

import json
import logging
import socket
import time

import ccxt
import pytest

from pipeline import cli
from pipeline.config import FeedConfig
from workers.venues.base import FailureLog, Health, backoff_delay, short_reason, short_url
from workers.venues.rest import make_exchange

TIMEOUT = 90


def closed_port() -> int:
    """A port nobody listens on (bound, then closed at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def warnings_of(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


# -- the reason, in few words ---------------------------------------------------------
def test_short_reason_of_a_refused_ccxt_call_names_the_cause_not_the_query():
    ex = make_exchange("binance", f"http://127.0.0.1:{closed_port()}", 5.0)
    with pytest.raises(ccxt.NetworkError) as info:
        ex.public_get_depth({"symbol": "BTCUSDT", "limit": 1000})
    why = short_reason(info.value)
    assert "Connection refused" in why and why.startswith("NetworkError: binance GET http://")
    assert "?" not in why and "limit" not in why and len(why) <= 120, why
    assert "HTTPConnectionPool" not in why and "Max retries" not in why


def test_short_url_and_short_reason_cut_long_urls():
    streams = "/".join(f"sym{i}usdt@depth@100ms" for i in range(40))
    url = f"wss://user:pw@stream.binance.com:9443/stream?streams={streams}"
    assert short_url(url) == "wss://stream.binance.com:9443/stream"
    why = short_reason(RuntimeError(f"connection to {url} lost " + "x" * 300))
    assert len(why) <= 120 and "streams" not in why and "pw" not in why


# -- once, then a count ---------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failure_log_warns_once_then_sums_up_each_minute_then_says_it_works(caplog):
    clock, health = Clock(), Health()
    flog = FailureLog(logging.getLogger("feed.test"), "kraken REST poll", health, clock=clock)
    with caplog.at_level(logging.INFO, logger="feed.test"):
        assert flog.failed("NetworkError: Connection refused", 2.0, 60.0)
        logged = []
        for k in range(1, 31):                              # one try every 2 s
            clock.now = 1000.0 + 2 * k
            logged.append(flog.failed("NetworkError: Connection refused", 2.0, 60.0))
        assert logged == [False] * 29 + [True]             # quiet, then one line at 60 s
        assert health.failing == 31 and health.last_error == "NetworkError: Connection refused"
        assert flog.failed("RequestTimeout: timed out", 4.0, 60.0)   # a new reason: said
        assert not flog.failed("NetworkError: Connection refused", 8.0, 60.0)
        flog.succeeded()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == ("kraken REST poll failed: NetworkError: Connection refused; retrying in "
                       "2.0 s (backing off up to 60 s; further failures are counted)")
    assert msgs[1] == ("kraken REST poll still failing: 30 tries in the last 60 s, 31 in all "
                       "(NetworkError: Connection refused); next in 2.0 s")
    assert msgs[2].startswith("kraken REST poll failed: RequestTimeout: timed out; retrying in 4.0 s "
                              "(32 failed tries in a row)")
    assert msgs[3] == "kraken REST poll works again after 33 failed tries"
    assert len(msgs) == 4 and health.failing == 0 and health.last_error == ""


def test_backoff_doubles_up_to_the_max():
    assert [backoff_delay(n, 2.0, 20.0) for n in range(1, 7)] == [2, 4, 8, 16, 20, 20]


# -- the real feed code against a closed port ----------------------------------------
def step_until(src, cond, what: str, timeout: float = TIMEOUT) -> list[float]:
    """Step the source as its feed process does until ``cond()``; the times at which a
    REST call or connect was tried."""
    deadline = time.monotonic() + timeout
    tries, seen = [], src.health.errors
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {src.stats()}"
        src.step()
        src.housekeeping()
        if src.health.errors != seen:
            seen = src.health.errors
            tries.append(time.monotonic())
        src.wait(0.2)
    return tries


def test_an_unreachable_ccxt_venue_backs_off_and_is_logged_once(caplog):
    from workers.venues.poller import PollSource
    feed = FeedConfig(name="kraken", kind="ccxt", venue="kraken", symbols=["BTC/USD"],
                      rest_url=f"http://127.0.0.1:{closed_port()}", poll_interval_s=0.05,
                      reconnect_backoff_s=0.05, reconnect_backoff_max_s=0.4, rest_rate_per_s=100.0)
    src = PollSource(feed, {"BTC/USD": 1}, 5.0)
    with caplog.at_level(logging.INFO):
        tries = step_until(src, lambda: src.health.failing >= 6, "six failed polls")
    h = src.stats()["health"]
    assert h["state"] == "disconnected" and "Connection refused" in h["last_error"]
    # a timer per failure, not a try per loop: each gap at least the backoff so far
    for n, (a, b) in enumerate(zip(tries, tries[1:]), start=1):
        assert b - a >= backoff_delay(n, 0.05, 0.4) * 0.95, (n, b - a)
    said = warnings_of(caplog, "kraken REST poll")
    assert len(said) == 1, said
    assert "Connection refused" in said[0] and len(said[0]) < 250


def test_an_unreachable_websocket_venue_is_logged_once_without_its_stream_query(caplog):
    from workers.feed import VenueSource
    port = closed_port()
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"]
    feed = FeedConfig(name="binance", kind="binance", symbols=symbols,
                      channels=["trades", "quotes", "depth"], ws_url=f"ws://127.0.0.1:{port}",
                      rest_url=f"http://127.0.0.1:{port}", reconnect_backoff_s=0.02,
                      reconnect_backoff_max_s=0.1)
    src = VenueSource(feed, {s: i for i, s in enumerate(symbols)}, None, 5.0)
    assert len(src.conn.url) > 150        # the stream URL names every stream
    with caplog.at_level(logging.INFO):
        step_until(src, lambda: src.health.failing >= 5, "five failed connects")
    said = warnings_of(caplog, "connect to")
    assert said == [f"connect to ws://127.0.0.1:{port}/stream failed: ConnectionRefusedError: "
                    "Connection refused; retrying in " + said[0].split("retrying in ")[1]], said
    assert "backing off up to 0.1 s" in said[0]
    assert not any("streams" in r.getMessage() for r in caplog.records)
    assert src.stats()["health"]["state"] == "disconnected"


# -- pipeline status -----------------------------------------------------------------
def status_of(workers: list[dict]) -> dict:
    return {"name": "v", "started": time.time(), "uptime_s": 5.0, "run_id": "r1", "pid": 1,
            "config": "v.toml", "workers": workers}


def worker(wid: str, role: str, health: dict | None = None) -> dict:
    return {"id": wid, "role": role, "state": "running", "pid": 10, "restarts": 0,
            "heartbeat_age_s": 0.2, "stats": {"health": health} if health else {}}


def run_status(monkeypatch, capsys, st: dict) -> list[str]:
    monkeypatch.setattr(cli, "_target", lambda args: None)
    monkeypatch.setattr(cli, "_request", lambda cfg, what: st)
    assert cli.main(["status"]) == 0
    return capsys.readouterr().out.splitlines()


def test_status_shows_each_venue_feeds_connection(monkeypatch, capsys):
    lines = run_status(monkeypatch, capsys, status_of([
        worker("feed.binance", "feed", {"state": "connected", "last_message_age_s": 0.31,
                                        "failing": 0}),
        worker("feed.kraken", "feed", {"state": "disconnected", "failing": 7,
                                       "last_error": "NetworkError: Connection refused"}),
        worker("feed.synth", "feed"),
        worker("model.0", "model")]))
    assert lines[1].endswith("  connection")
    row = {line.split()[0]: line for line in lines[2:]}
    assert row["feed.binance"].endswith("  connected, last message 0.3s ago")
    assert row["feed.kraken"].endswith(
        "  disconnected, 7 failed tries in a row (NetworkError: Connection refused)")
    assert row["feed.synth"].endswith("ago") and row["model.0"].endswith("ago")
    assert not any("no feed is connected" in line for line in lines)


def test_status_says_in_one_line_when_no_feed_is_connected(monkeypatch, capsys):
    lines = run_status(monkeypatch, capsys, status_of([
        worker("feed.binance", "feed", {"state": "disconnected", "failing": 3,
                                        "last_error": "ConnectionRefusedError: Connection refused"}),
        worker("feed.kraken", "feed", {"state": "connecting", "failing": 0})]))
    assert sum("no feed is connected" in line for line in lines) == 1


def test_status_of_synthetic_feeds_has_no_venue_column(monkeypatch, capsys):
    lines = run_status(monkeypatch, capsys, status_of([worker("feed.synth", "feed"),
                                                       worker("model.0", "model")]))
    assert lines[1].split() == ["worker", "state", "pid", "restarts", "heartbeat"]
    assert not any("no feed" in line for line in lines)


OFFLINE_FEEDS = """
[[feeds]]
name = "binance"
kind = "binance"
symbols = ["BTC/USDT", "ETH/USDT"]
channels = ["trades", "quotes", "depth"]
ws_url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{port}"
reconnect_backoff_s = 0.05
reconnect_backoff_max_s = 0.5

[[feeds]]
name = "kraken"
kind = "ccxt"
venue = "kraken"
symbols = ["BTC/USD"]
rest_url = "http://127.0.0.1:{port}"
poll_interval_s = 0.1
reconnect_backoff_s = 0.05
reconnect_backoff_max_s = 0.5

[execution]                 # one account in USDT: Kraken's USD at a fixed rate
currency = "USDT"

[[execution.fx]]
quote = "USD"
rate = 1.0
"""


def test_pipeline_status_shows_offline_feeds_disconnected_and_logs_each_once(tmp_path):
    """`pipeline start` with a Binance and a Kraken feed, both pointed at a closed port."""
    from test_pipeline import Pipeline
    p = Pipeline(tmp_path, name="off", workers=2)
    base = p.config.read_text().split("[[feeds]]")[0]
    p.config.write_text(base + OFFLINE_FEEDS.format(port=closed_port()))
    try:
        p.start()
        feeds = lambda s: [w for w in s["workers"] if w["role"] == "feed"]
        st = p.wait_status(lambda s: len(feeds(s)) == 2 and all(
            w["stats"].get("health", {}).get("failing", 0) >= 4 for w in feeds(s)),
            "both feeds failing four times")
        for w in feeds(st):
            assert w["state"] == "running" and w["stats"]["health"]["state"] == "disconnected"
        r = p.cli("status")
        assert r.returncode == 0, r.stderr
        rows = [line for line in r.stdout.splitlines() if line.startswith("feed.")]
        assert len(rows) == 2 and all("  disconnected, " in row and "failed tries in a row" in row
                                      for row in rows), r.stdout
        assert "Connection refused" in r.stdout
        assert r.stdout.count("no feed is connected") == 1
        out = p.output()
        assert out.count("REST poll failed") == 1, out
        assert out.count("connect to ws://") == 1, out
        assert "streams" not in out and max(len(line) for line in out.splitlines()) < 300
        r = p.cli("stop")
        assert r.returncode == 0, r.stderr
        assert p.wait_exit() == 0
        assert "Traceback" not in p.output()
    finally:
        p.kill()
