"""A restarted feed process goes on from what its predecessor left in the ticks
ring: the synthetic market from its last prices (no jump), a venue feed with
gap markers and a backfill from the last trade id."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from conftest import RunSegments
from shm.records import TICK_GAP, TICK_QUOTE, TICK_TRADE
from workers.feed import FeedWorker, newest_per_symbol

SYMBOLS = ["AAA/USDT", "BBB/USDT", "CCC/USDT"]


class Run(RunSegments):
    """A run whose [[feeds]] table is ``feeds`` (TOML); ``worker(restart)`` makes its
    feed worker."""

    def __init__(self, tmp_path, feeds: str):
        super().__init__(tmp_path, "[pipeline]\nworkers = 2\n" + feeds)

    def worker(self, restart: int = 0) -> FeedWorker:
        return super().worker(FeedWorker, "feed.0", restart)


@pytest.fixture
def feed_ring(tmp_path):
    """A synthetic feed's run: (its worker maker, the topology)."""
    run = Run(tmp_path, f"""
[[feeds]]
name = "synthetic"
symbols = {SYMBOLS!r}
ticks_per_s = 1000000
start_price = 100.0
""".replace("'", '"'))
    yield run.worker, run.topo
    run.close()


def produce(w: FeedWorker, n: int) -> None:
    while w.counters["out"] < n:
        w.step()


def test_newest_per_symbol():
    t = np.zeros(5, dtype=[("symbol_id", "<u4"), ("price", "<f8")])
    t["symbol_id"] = [1, 2, 1, 3, 2]
    t["price"] = [10, 20, 11, 30, 21]
    got = {k: float(v["price"]) for k, v in newest_per_symbol(t).items()}
    assert got == {1: 11.0, 2: 21.0, 3: 30.0}
    assert newest_per_symbol(t[:0]) == {}


def test_a_restarted_synthetic_feed_goes_on_from_the_last_prices(feed_ring):
    worker, topo = feed_ring
    first = worker(0)
    produce(first, 20_000)
    last = {sid: (float(t["bid"]) + float(t["ask"])) / 2
            for sid, t in newest_per_symbol(first.writers["ticks.synthetic"].tail()).items()}
    assert len(last) == len(SYMBOLS)
    first.close()
    second = worker(1)                         # the supervisor's restart: a new seed
    seq0 = second.writers["ticks.synthetic"].seq
    produce(second, 300)
    ring = second.writers["ticks.synthetic"]
    new = ring.tail(int(ring.seq - seq0))
    assert len(new) >= 300
    for sid, price in last.items():
        mine = new[(new["symbol_id"] == sid) & np.isin(new["kind"], [TICK_TRADE, TICK_QUOTE])]
        mid = (mine["bid"][0] + mine["ask"][0]) / 2
        assert abs(mid / price - 1) < 0.01, f"symbol {sid} jumped from {price} to {mid}"


def test_a_restarted_venue_feed_marks_the_gap_and_backfills_from_the_ring(tmp_path):
    """A Binance feed process writes 50 XRPETH trades and dies. Meanwhile the venue
    trades 100 more. Its successor knows nothing but the ticks ring: its first
    connection is a reconnect, with a gap marker per symbol and a backfill from the
    last trade id in the ring; the new connection brings trades 150 to 199."""
    from test_feed_binance import (SYMBOLS as BN_SYMBOLS, USDT_ACCOUNT, rest_routes, ws_messages,
                                   xrp_agg_trades, xrp_ws_events)
    from venue_servers import Behaviour, HttpReplayServer, WsReplayServer
    capture, xrp = list(ws_messages()), xrp_ws_events(200)
    first_id = xrp_agg_trades()[0]["a"]
    symbols = BN_SYMBOLS + ["XRP/ETH"]
    behaviours = {0: Behaviour(silent_after=len(capture) + 50),
                  1: Behaviour(skip=len(capture) + 150)}
    with WsReplayServer(capture + xrp, behaviours, expect_subscribe=0) as ws, \
            HttpReplayServer(rest_routes(150)) as http:
        run = Run(tmp_path, f"""
[[feeds]]
name = "binance"
kind = "binance"
symbols = {json.dumps(symbols)}
channels = ["trades"]
ws_url = "{ws.url}"
rest_url = "{http.url}"
reconnect_backoff_s = 0.05
rest_rate_per_s = 1000.0
""" + USDT_ACCOUNT)
        try:
            ring = lambda w: w.writers["ticks.binance"]
            ids = {s: run.topo.symbols.id(f"{s}@binance") for s in symbols}

            def xrp_trades(w: FeedWorker) -> np.ndarray:
                t = ring(w).tail()
                return t[(t["symbol_id"] == ids["XRP/ETH"]) & (t["kind"] == TICK_TRADE)]["seq"]
            first = run.worker(0)
            step_until(first, lambda: len(xrp_trades(first)) == 50, "50 XRPETH trades")
            first.close()                      # as if killed: nothing else is handed over
            second = run.worker(1)
            seq0 = int(ring(second).seq)
            step_until(second, lambda: xrp_trades(second).max(initial=0) == first_id + 199,
                       "the last XRPETH trade")
            assert xrp_trades(second).tolist() == list(range(first_id, first_id + 200))
            new = ring(second).tail(int(ring(second).seq) - seq0)
            gaps = new[new["kind"] == TICK_GAP]
            assert sorted(gaps["symbol_id"]) == sorted(ids.values())
            assert new["kind"][0] == TICK_GAP          # before anything the new process got
            asked = [q for path, q in http.requests
                     if path == "/api/v3/aggTrades" and q["symbol"] == "XRPETH"]
            assert [q["fromId"] for q in asked] == [str(first_id + 50)]
            assert second.source.health.backfilled == 100
        finally:
            run.close()


def step_until(w: FeedWorker, cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        w.step()
