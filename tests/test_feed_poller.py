"""The REST poller for any ccxt venue, against real OKX responses served from
127.0.0.1 (fixtures from NautilusTrader's OKX tests, in tests/data).

The instruments fixture lists BTC-USDT only among MARGIN instruments (OKX lists
it as SPOT too); the server adds it to the SPOT answer so ccxt knows the
market the trades fixture is about. Nothing else is changed.
"""
from __future__ import annotations

import json
import time

from pipeline.config import FeedConfig
from shm.records import SIDE_BUY, SIDE_SELL, TICK_QUOTE, TICK_TRADE
from venue_servers import PAYLOADS, HttpReplayServer, run_until

OKX = PAYLOADS / "okx" / "fixtures_nautilus"


def okx_routes(book_status: int = 200) -> dict:
    def load(name):
        return json.loads((OKX / name).read_text())

    kinds = {"SPOT": "spot", "MARGIN": "margin", "SWAP": "swap", "FUTURES": "futures",
             "OPTION": "option"}

    def instruments(q):
        kind = q.get("instType", "SPOT")
        body = load(f"http_get_instruments_{kinds[kind]}.json")
        if kind == "SPOT":
            margin = load("http_get_instruments_margin.json")["data"]
            body["data"] += [dict(m, instType="SPOT") for m in margin if m["instId"] == "BTC-USDT"]
        return json.dumps(body)

    trades = (OKX / "http_get_trades.json").read_text()
    book = (OKX / "http_get_order_book.json").read_text()
    return {"/api/v5/public/instruments": instruments,
            "/api/v5/market/trades": trades,
            "/api/v5/market/books": (book_status, book if book_status == 200 else
                                     '{"code":"50011","msg":"Too Many Requests"}')}


def make_source(url: str, **kw):
    from workers.venues.poller import PollSource
    feed = FeedConfig(name="okx", kind="ccxt", venue="okx", symbols=["BTC/USDT"], rest_url=url,
                      poll_interval_s=0.05, rest_rate_per_s=50.0, **kw)
    return PollSource(feed, {"BTC/USDT": 3})


def test_trades_and_quotes_from_real_okx_responses():
    expected = json.loads((OKX / "http_get_trades.json").read_text())["data"]
    with HttpReplayServer(okx_routes()) as srv:
        src = make_source(srv.url)
        ticks = run_until(src, lambda t: sum(x["kind"] == TICK_QUOTE for x in t) >= 2
                          and src.health.duplicates >= len(expected))
    trades = [t for t in ticks if t["kind"] == TICK_TRADE]
    # every trade once, oldest first, although each poll returns the same page
    assert [int(t["seq"]) for t in trades] == sorted(int(e["tradeId"]) for e in expected)
    for t in trades:
        e = next(x for x in expected if int(x["tradeId"]) == t["seq"])
        assert t["price"] == float(e["px"]) and t["size"] == float(e["sz"])
        assert t["side"] == (SIDE_BUY if e["side"] == "buy" else SIDE_SELL)
        assert t["ts_exchange_ns"] == int(e["ts"]) * 1_000_000 and t["symbol_id"] == 3
    quote = next(t for t in ticks if t["kind"] == TICK_QUOTE)
    assert (quote["bid"], quote["ask"]) == (41006.7, 41006.8)
    paths = {p for p, _ in srv.requests}
    assert {"/api/v5/public/instruments", "/api/v5/market/trades", "/api/v5/market/books"} <= paths
    assert src.health.messages >= 3 and src.health.rest_calls >= 4


def test_venue_errors_are_counted_and_polling_goes_on():
    with HttpReplayServer(okx_routes(book_status=429)) as srv:
        src = make_source(srv.url)
        ticks = run_until(src, lambda t: src.health.errors >= 2 and any(
            x["kind"] == TICK_TRADE for x in t))
    assert not any(t["kind"] == TICK_QUOTE for t in ticks)   # the book endpoint only fails


def test_rate_limit_is_respected():
    with HttpReplayServer(okx_routes()) as srv:
        src = make_source(srv.url)
        src.limiter.rate = 20.0
        src.limiter.capacity = src.limiter.tokens = 1.0
        t0 = time.monotonic()
        run_until(src, lambda t: src.health.rest_calls >= 11)
        elapsed = time.monotonic() - t0
    assert elapsed >= 10 / 20.0 * 0.9   # 11 calls with a burst of 1 at 20/s take >= 0.5 s
