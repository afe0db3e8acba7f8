"""Binance spot feed on real payloads (tests/data/payloads/binance, from ../shared/data).

* The parser and the order book run on the real websocket capture (combined
  stream: depthUpdate, bookTicker, kline, aggTrade for NKNUSDT, BLZETH,
  LRCBTC, RUNEEUR) and the real REST depth snapshots taken in the same session.
* The connection tests run the real feed code (VenueSource: WsConnection,
  RestClient through ccxt) against WsReplayServer and HttpReplayServer on
  127.0.0.1, which replay those payloads.

The data holds no later Binance REST snapshot of the same symbols (the
orderbook/ CSVs are USDT-M futures BTCUSDT, whose update rows do not follow
their snapshot), so the rebuilt book is checked against the venue's own
bookTicker stream at the same update ids instead, plus consistency rules.
"""
from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter

import numpy as np
import pytest

from pipeline.config import FeedConfig
from shm.records import SIDE_BUY, SIDE_SELL, TICK_GAP, TICK_QUOTE, TICK_TRADE
from venue_servers import (PAYLOADS, Behaviour, HttpReplayServer, WsReplayServer, capture_lines,
                           collect_ticks, recv_messages)
from workers.venues.base import MalformedMessage, TickBuffer
from workers.venues.binance import BinanceFeed, L2Book, SequenceGap
from workers.venues.rest import RateLimiter, RestClient, make_exchange

BINANCE = PAYLOADS / "binance"
WS_CAPTURE = BINANCE / "ws" / "spot_depth100ms_bookTicker_kline1m_aggTrade_2021-10-12.capture.jsonl"
DEPTH_CAPTURE = BINANCE / "rest" / "depth_limit1000_snapshots_2021-10-12.capture.jsonl"
AGG_TRADES = BINANCE / "rest" / "aggTrades_XRPETH_2019-10-11_info_objects.json"

SYMBOLS = ["NKN/USDT", "BLZ/ETH", "LRC/BTC", "RUNE/EUR"]
NATIVE = {"NKN/USDT": "NKNUSDT", "BLZ/ETH": "BLZETH", "LRC/BTC": "LRCBTC", "RUNE/EUR": "RUNEEUR"}
IDS = {s: i + 1 for i, s in enumerate(SYMBOLS + ["XRP/ETH"])}
ALL = ["trades", "quotes", "depth"]
RECV_NS = 1_633_998_600_000_000_000
TIMEOUT = 60.0   # generous: a loaded, shared 2-core machine


# -- the captured data ------------------------------------------------------------
@functools.cache
def ws_messages() -> tuple[str, ...]:
    """The capture's frames, byte for byte."""
    return tuple(recv_messages(WS_CAPTURE))


@functools.cache
def ws_events() -> tuple[dict, ...]:
    return tuple(json.loads(m) for m in ws_messages())


def stream_kind(ev: dict) -> str:
    return ev["stream"].partition("@")[2]


@functools.cache
def snapshots() -> dict[str, str]:
    """Native symbol -> the captured /api/v3/depth?limit=1000 body."""
    out = {}
    for rec in capture_lines(DEPTH_CAPTURE):
        query = rec["url"].partition("?")[2]
        symbol = dict(kv.split("=") for kv in query.split("&"))["symbol"]
        out[symbol] = rec["raw"]
    return out


@functools.cache
def xrp_agg_trades() -> tuple[dict, ...]:
    """Real /api/v3/aggTrades rows of XRPETH (consecutive ids)."""
    return tuple(json.loads(AGG_TRADES.read_text()))


def xrp_ws_events(n: int) -> list[str]:
    """The first ``n`` of those trades as aggTrade websocket events: the same
    fields, in Binance's documented combined-stream envelope."""
    return [json.dumps({"stream": "xrpeth@aggTrade",
                        "data": {"e": "aggTrade", "E": t["T"], "s": "XRPETH", **t}})
            for t in xrp_agg_trades()[:n]]


def levels(raw) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in raw]


def snapshot_book(native: str) -> L2Book:
    snap = json.loads(snapshots()[native])
    book = L2Book()
    book.apply_snapshot(snap["lastUpdateId"], snap["bids"], snap["asks"])
    return book


def book_after(native: str, messages) -> L2Book:
    """The captured snapshot rolled forward through the diffs in ``messages``."""
    book = snapshot_book(native)
    for raw in messages:
        d = json.loads(raw)["data"]
        if d.get("e") == "depthUpdate" and d["s"] == native:
            book.apply_diff(d["U"], d["u"], levels(d["b"]), levels(d["a"]))
    return book


def snapshot_body(book: L2Book) -> str:
    return json.dumps({"lastUpdateId": book.last_update_id,
                       "bids": [[repr(p), repr(q)] for p, q in book.bids.items()],
                       "asks": [[repr(p), repr(q)] for p, q in book.asks.items()]})


# -- feeds ------------------------------------------------------------------------
def feed_config(channels=ALL, symbols=SYMBOLS, **kw) -> FeedConfig:
    return FeedConfig(name="binance", kind="binance", symbols=list(symbols),
                      channels=list(channels), **kw)


def make_feed(channels=ALL, rest_url: str | None = None) -> BinanceFeed:
    feed = BinanceFeed(feed_config(channels), {s: IDS[s] for s in SYMBOLS})
    if rest_url:
        feed.rest = RestClient(make_exchange("binance", rest_url), RateLimiter(1000), feed.health)
    return feed


def parse_all(feed: BinanceFeed, messages) -> np.ndarray:
    out = TickBuffer()
    for raw in messages:
        feed.parse(raw, RECV_NS, out)
    assert out.rejected == {}
    return out.take()


def rest_routes(trades_upto: int = 0) -> dict:
    """/api/v3/depth from the captured snapshots; /api/v3/aggTrades from the
    real XRPETH rows, as if the venue had traded ``trades_upto`` of them so far
    (the capture holds no later trades of the other symbols: an empty page)."""
    def depth(q):
        return snapshots().get(q["symbol"])

    def agg_trades(q):
        if q["symbol"] != "XRPETH":
            return "[]"
        rows = [t for t in xrp_agg_trades()[:trades_upto] if t["a"] >= int(q["fromId"])]
        return json.dumps(rows[:int(q.get("limit", 500))])
    return {"/api/v3/depth": depth, "/api/v3/aggTrades": agg_trades}


def collect(ws, until, what: str, routes: dict | None = None, symbols=SYMBOLS, **kw):
    """The real connection code on ``ws``, every channel, REST on ``routes``
    (rest_routes() unless given), until ``until(ticks, source)``."""
    opts = dict(channels=list(ALL), ping_interval_s=60.0, no_message_timeout_s=30.0)
    return collect_ticks("binance", ws, {s: IDS[s] for s in symbols}, until,
                         rest_routes() if routes is None else routes, what, **{**opts, **kw})


def of(ticks: np.ndarray, symbol: str, kind: int | None = None) -> np.ndarray:
    sel = ticks["symbol_id"] == IDS[symbol]
    if kind is not None:
        sel &= ticks["kind"] == kind
    return ticks[sel]


# -- parser -----------------------------------------------------------------------
def test_every_trade_and_book_ticker_of_the_capture_parses():
    feed = make_feed(["trades", "quotes"])
    ticks = parse_all(feed, ws_messages())
    kinds = Counter(stream_kind(ev) for ev in ws_events())
    trades, quotes = ticks[ticks["kind"] == TICK_TRADE], ticks[ticks["kind"] == TICK_QUOTE]
    assert len(trades) == kinds["aggTrade"] == 2
    assert len(quotes) == kinds["bookTicker"] == 84
    assert len(ticks) == len(trades) + len(quotes)
    # depth diffs (not subscribed here) and klines are read past, not malformed
    assert feed.stats()["ignored"] == kinds["depth@100ms"] + kinds["kline_1m"]
    assert (trades["price"] > 0).all() and (trades["size"] > 0).all()
    assert (quotes["bid"] > 0).all() and (quotes["bid"] < quotes["ask"]).all()

    # field by field against the capture
    agg = [ev["data"] for ev in ws_events() if stream_kind(ev) == "aggTrade"]
    for t, d in zip(trades, agg):
        assert t["symbol_id"] == IDS[{v: k for k, v in NATIVE.items()}[d["s"]]]
        assert (t["seq"], t["price"], t["size"]) == (d["a"], float(d["p"]), float(d["q"]))
        assert t["ts_exchange_ns"] == d["T"] * 1_000_000 and t["ts_origin_ns"] == RECV_NS
        assert t["side"] == (SIDE_SELL if d["m"] else SIDE_BUY)
    assert trades["side"].tolist() == [SIDE_BUY, SIDE_BUY]   # both "m": false: buyer took
    tickers = [ev["data"] for ev in ws_events() if stream_kind(ev) == "bookTicker"]
    assert [(q["seq"], q["bid"], q["ask"]) for q in quotes] == [
        (d["u"], float(d["b"]), float(d["a"])) for d in tickers]


@pytest.mark.parametrize("raw, kind", [
    ("{not json", "bad json"),
    ('{"stream":"x","data":{}}', "unknown stream"),
    ('{"stream":"nknusdt@aggTrade","data":{}}', "bad aggTrade"),
    ('{"stream":"nknusdt@bookTicker","data":{"u":1,"s":"NKNUSDT","b":"x","a":"0.3"}}',
     "bad number"),
    ('{"stream":"nknusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"NKNUSDT","U":1,'
     '"u":2,"b":[["-1","2"]],"a":[]}}', "bad depth level"),
    ('{"stream":"btcusdt@aggTrade","data":{"s":"BTCUSDT","a":1,"p":"1","q":"1","T":1,"m":true}}',
     "unknown symbol"),
    ('{"code":-1121,"msg":"Invalid symbol."}', "unexpected message"),
    ("[1, 2]", "not an object"),
])
def test_malformed_frame_raises_and_the_parser_goes_on(raw, kind):
    feed = make_feed(ALL)
    out = TickBuffer()
    with pytest.raises(MalformedMessage) as e:
        feed.parse(raw, RECV_NS, out)
    assert e.value.kind == kind
    # the next real message still parses
    ticker = next(m for m, ev in zip(ws_messages(), ws_events()) if stream_kind(ev) == "bookTicker")
    feed.parse(ticker, RECV_NS, out)
    assert out.take()["kind"].tolist() == [TICK_QUOTE]


def test_subscription_ack_and_bad_values_never_reach_the_ring():
    feed = make_feed(["trades"])
    out = TickBuffer()
    feed.parse('{"result":null,"id":1}', RECV_NS, out)
    for i, (price, size) in enumerate((("0", "1"), ("-0.3", "1"), ("NaN", "1"), ("0.3", "0"))):
        feed.parse(json.dumps({"stream": "nknusdt@aggTrade", "data": {
            "e": "aggTrade", "s": "NKNUSDT", "a": i, "p": price, "q": size,
            "T": 1, "m": False}}), RECV_NS, out)
    assert len(out) == 0 and sum(out.rejected.values()) == 4


def test_stream_url_subscribes_to_every_symbol_and_channel():
    feed = BinanceFeed(feed_config(ALL, ["NKN/USDT", "BLZ/ETH"]), {"NKN/USDT": 1, "BLZ/ETH": 2})
    assert feed.url() == ("wss://stream.binance.com:9443/stream?streams=nknusdt@aggTrade/"
                          "blzeth@aggTrade/nknusdt@bookTicker/blzeth@bookTicker/"
                          "nknusdt@depth@100ms/blzeth@depth@100ms")
    assert feed.subscribe_messages() == []
    assert feed.rest_url == "https://api.binance.com"
    with pytest.raises(ValueError, match="channels must be some of trades, quotes, depth"):
        BinanceFeed(feed_config(["book"]), {"NKN/USDT": 1})


# -- order book -------------------------------------------------------------------
def test_book_from_real_snapshot_and_diffs_follows_the_sequence_and_matches_book_ticker():
    """Binance's rules hold on the real data for all 4 symbols; the book is never
    crossed; and wherever the venue's bookTicker carries the same update id as a
    diff's last, our top of book equals it, price and size on both sides."""
    books = {n: snapshot_book(n) for n in NATIVE.values()}
    tickers = {(ev["data"]["s"], ev["data"]["u"]): ev["data"] for ev in ws_events()
               if stream_kind(ev) == "bookTicker"}
    applied, stale, matched = Counter(), Counter(), 0
    for ev in ws_events():
        d = ev["data"]
        if d.get("e") != "depthUpdate":
            continue
        book, U, u = books[d["s"]], d["U"], d["u"]
        if u <= book.last_update_id:                 # older than the snapshot
            assert not book.bridged
            assert book.apply_diff(U, u, levels(d["b"]), levels(d["a"])) is False
            stale[d["s"]] += 1
            continue
        if book.bridged:
            assert U == book.last_update_id + 1
        else:
            assert U <= book.last_update_id + 1 <= u
        assert book.apply_diff(U, u, levels(d["b"]), levels(d["a"])) is True
        applied[d["s"]] += 1
        bids, asks = book.top(5)
        assert book.best_bid() == max(book.bids) == bids[0][0]
        assert book.best_ask() == min(book.asks) == asks[0][0]
        assert book.best_bid() < book.best_ask()
        assert [p for p, _ in bids] == sorted((p for p, _ in bids), reverse=True)
        assert all(q > 0 for _, q in bids + asks)
        t = tickers.get((d["s"], u))
        if t is not None:
            assert (bids[0], asks[0]) == ((float(t["b"]), float(t["B"])),
                                          (float(t["a"]), float(t["A"])))
            matched += 1
    assert set(applied) == set(NATIVE.values()), f"a symbol never bridged: {applied}"
    assert all(stale[n] >= 1 for n in NATIVE.values())   # the stream began before each snapshot
    assert matched >= 20


def test_book_rejects_a_diff_that_skips_updates():
    book = snapshot_book("NKNUSDT")
    last = book.last_update_id
    with pytest.raises(SequenceGap):
        book.apply_diff(last + 2, last + 3, [], [])       # update last+1 is missing
    assert book.apply_diff(last, last + 1, [(0.3, 1.0)], []) is True   # bridges
    with pytest.raises(SequenceGap):
        book.apply_diff(last + 1, last + 2, [], [])       # overlaps: must start at last+2
    with pytest.raises(SequenceGap):
        L2Book().apply_diff(1, 2, [], [])                 # no snapshot yet


def test_feed_rebuilds_all_books_through_ccxt_from_the_local_rest_server():
    with HttpReplayServer(rest_routes()) as http:
        feed = make_feed(["depth"], http.url)
        ticks = parse_all(feed, ws_messages())
    stats = feed.stats()
    n_depth = sum(stream_kind(ev) == "depth@100ms" for ev in ws_events())
    # every diff was buffered for, dropped as older than, or applied to the snapshot
    assert stats["depth_updates"] + stats["depth_stale"] == n_depth
    assert stats["depth_gaps"] == 0 and stats["snapshots"] == 4
    assert sorted(q["symbol"] for _, q in http.requests) == sorted(NATIVE.values())
    assert all(q["limit"] == "1000" for _, q in http.requests)
    assert (ticks["kind"] == TICK_QUOTE).all() and (ticks["bid"] < ticks["ask"]).all()
    for symbol, native in NATIVE.items():
        ref = book_after(native, ws_messages())
        got = feed.depth[native].book
        assert (got.last_update_id, got.bids, got.asks) == (ref.last_update_id, ref.bids, ref.asks)
        last = of(ticks, symbol)[-1]
        assert (last["bid"], last["ask"]) == (ref.best_bid(), ref.best_ask())


def test_depth_gap_emits_gap_marker_and_resyncs_from_a_new_snapshot():
    """One NKNUSDT diff is taken out of the replay. The local REST server answers
    each snapshot request with the book as of the stream so far: the captured
    snapshot rolled forward through the real diffs (no later real snapshot exists)."""
    messages = ws_messages()
    nkn = [i for i, ev in enumerate(ws_events())
           if ev["data"].get("e") == "depthUpdate" and ev["data"]["s"] == "NKNUSDT"]
    removed = nkn[len(nkn) // 2]
    now = {"i": 0}

    def depth(q):
        return snapshot_body(book_after(q["symbol"], messages[:now["i"] + 1]))

    with HttpReplayServer({"/api/v3/depth": depth}) as http:
        feed = make_feed(["depth"], http.url)
        out, ticks = TickBuffer(), []
        for i, raw in enumerate(messages):
            if i == removed:
                continue
            now["i"] = i
            feed.parse(raw, RECV_NS + i, out)
            ticks.append(out.take())
    ticks = np.concatenate(ticks)
    gaps = ticks[ticks["kind"] == TICK_GAP]
    assert gaps["symbol_id"].tolist() == [IDS["NKN/USDT"]]
    assert gaps["ts_origin_ns"][0] == RECV_NS + nkn[nkn.index(removed) + 1]  # the next diff saw it
    assert feed.stats()["depth_gaps"] == 1
    asked = Counter(q["symbol"] for _, q in http.requests)
    assert asked == {"NKNUSDT": 2, "BLZETH": 1, "LRCBTC": 1, "RUNEEUR": 1}
    # quotes go on after the resync, and the book ends where the full stream leads
    after = of(ticks, "NKN/USDT")[np.flatnonzero(of(ticks, "NKN/USDT")["kind"] == TICK_GAP)[0]:]
    assert (after["kind"] == TICK_QUOTE).sum() >= 1
    ref, got = book_after("NKNUSDT", messages), feed.depth["NKNUSDT"].book
    assert (got.last_update_id, got.bids, got.asks) == (ref.last_update_id, ref.bids, ref.asks)


def test_a_diff_that_crosses_the_book_counts_as_a_gap():
    """A consistent sequence cannot cross the book; if it does, our book is wrong
    and is rebuilt rather than trusted."""
    with HttpReplayServer(rest_routes()) as http:
        feed = make_feed(["depth"], http.url)
        parse_all(feed, ws_messages())
        book = feed.depth["NKNUSDT"].book
        last, ask = book.last_update_id, book.best_ask()
        out = TickBuffer()
        feed.parse(json.dumps({"stream": "nknusdt@depth@100ms", "data": {
            "e": "depthUpdate", "E": 1, "s": "NKNUSDT", "U": last + 1, "u": last + 1,
            "b": [[repr(ask * 1.01), "5"]], "a": []}}), RECV_NS, out)
    assert out.take()["kind"].tolist() == [TICK_GAP]
    assert feed.stats()["depth_gaps"] == 1
    assert [q["symbol"] for _, q in http.requests].count("NKNUSDT") == 2


# -- the real connection code against local servers ---------------------------------
def test_dropped_connection_reconnects_backfills_and_drops_duplicates():
    """Connection 0 drops after 50 XRPETH trades; meanwhile the venue has traded
    150. On reconnect: gap markers, a backfill from the last id seen + 1 over
    REST, fresh depth snapshots; connection 1 replays everything, so whatever
    was seen or backfilled comes again and must be dropped."""
    capture, xrp = list(ws_messages()), xrp_ws_events(200)
    messages = capture + xrp
    first = xrp_agg_trades()[0]["a"]
    symbols = SYMBOLS + ["XRP/ETH"]
    ws = WsReplayServer(messages, {0: Behaviour(drop_after=len(capture) + 50)}, expect_subscribe=0)
    ticks, src, http = collect(ws, lambda t, src: of(t, "XRP/ETH", TICK_TRADE)["seq"].max(initial=0)
                               == first + 199, "the last XRPETH trade", rest_routes(150), symbols)
    h = src.health
    assert (h.reconnects, ws.connections, h.state) == (1, 2, "closed")
    assert h.malformed == 0 and h.rejected == 0

    # gap markers for every symbol, right after what connection 0 delivered
    (gap_rows,) = np.nonzero(ticks["kind"] == TICK_GAP)
    assert sorted(ticks["symbol_id"][gap_rows]) == sorted(IDS[s] for s in symbols)
    xrp_ticks = of(ticks, "XRP/ETH")
    before = xrp_ticks["seq"][:np.flatnonzero(xrp_ticks["kind"] == TICK_GAP)[0]]
    assert before.tolist() == list(range(first, first + 50))

    # backfill from the last id seen, for the symbols that had traded
    fills = {q["symbol"]: q for path, q in http.requests if path == "/api/v3/aggTrades"}
    assert {k: q["fromId"] for k, q in fills.items()} == {
        "XRPETH": str(first + 50), "NKNUSDT": "15683431", "LRCBTC": "9213680"}
    assert h.backfilled == 100
    # every XRPETH trade exactly once, in order, sides as the venue sent them
    trades = of(ticks, "XRP/ETH", TICK_TRADE)
    assert trades["seq"].tolist() == list(range(first, first + 200))
    sent = xrp_agg_trades()[:200]
    assert trades["side"].tolist() == [SIDE_SELL if t["m"] else SIDE_BUY for t in sent]
    assert trades["price"].tolist() == [float(t["p"]) for t in sent]
    # repeats: NKN and LRC trades of the capture, XRPETH 0..149 (seen or backfilled)
    assert h.duplicates == 2 + 150
    assert len(of(ticks, "NKN/USDT", TICK_TRADE)) == 1
    # depth books resynced from fresh snapshots on the new connection
    snaps = Counter(q["symbol"] for path, q in http.requests if path == "/api/v3/depth")
    assert snaps == {n: 2 for n in NATIVE.values()}
    nkn = of(ticks, "NKN/USDT")
    after_gap = nkn[np.flatnonzero(nkn["kind"] == TICK_GAP)[0] + 1:]
    assert (after_gap["kind"] == TICK_QUOTE).any()


def test_backfill_is_retried_after_a_500_and_a_429():
    """The venue answers the XRPETH backfill with a 500, then a 429, then the trades:
    the feed tries again (after a backoff, inside the rate limit) rather than leave the
    gap marker alone."""
    capture, xrp = list(ws_messages()), xrp_ws_events(200)
    first = xrp_agg_trades()[0]["a"]
    routes = rest_routes(150)
    served, failures = routes["/api/v3/aggTrades"], [
        (500, '{"code":-1000,"msg":"An unknown error occured while processing the request."}'),
        (429, '{"code":-1003,"msg":"Too many requests."}')]

    def agg_trades(q):
        return failures.pop(0) if q["symbol"] == "XRPETH" and failures else served(q)
    routes["/api/v3/aggTrades"] = agg_trades
    ws = WsReplayServer(capture + xrp, {0: Behaviour(drop_after=len(capture) + 50)},
                        expect_subscribe=0)
    ticks, src, http = collect(ws, lambda t, src: of(t, "XRP/ETH", TICK_TRADE)["seq"].max(initial=0)
                               == first + 199, "the last XRPETH trade", routes,
                               SYMBOLS + ["XRP/ETH"])
    asked = [q["fromId"] for path, q in http.requests
             if path == "/api/v3/aggTrades" and q["symbol"] == "XRPETH"]
    assert asked == [str(first + 50)] * 3 and not failures
    assert src.health.backfilled == 100 and src.health.rest_retries == 2
    trades = of(ticks, "XRP/ETH", TICK_TRADE)
    assert trades["seq"].tolist() == list(range(first, first + 200))


def test_a_frame_that_stalls_halfway_drops_the_connection_not_the_feed():
    """Connection 0 sends 50 XRPETH trades and then half a frame, and nothing more: the
    read gives up after READ_TIMEOUT_S, the connection is dropped and made again, and
    the trades missed meanwhile are backfilled."""
    capture, xrp = list(ws_messages()), xrp_ws_events(200)
    first = xrp_agg_trades()[0]["a"]
    ws = WsReplayServer(capture + xrp, {0: Behaviour(stall_mid_frame_after=len(capture) + 50)},
                        expect_subscribe=0)
    ticks, src, _ = collect(ws, lambda t, src: of(t, "XRP/ETH", TICK_TRADE)["seq"].max(initial=0)
                            == first + 199, "the last XRPETH trade", rest_routes(150),
                            SYMBOLS + ["XRP/ETH"])
    assert (src.health.reconnects, ws.connections) == (1, 2)
    assert of(ticks, "XRP/ETH", TICK_TRADE)["seq"].tolist() == list(range(first, first + 200))


def test_malformed_frames_mid_stream_are_counted_and_the_feed_goes_on():
    messages = ws_messages()
    bad = {10: "{not json", 20: '{"stream":"x","data":{}}',
           30: '{"stream":"nknusdt@aggTrade","data":{"e":"aggTrade","s":"NKNUSDT"}}'}
    ws = WsReplayServer(messages, {0: Behaviour(malformed=bad)}, expect_subscribe=0)
    ticks, src, _ = collect(ws, lambda t, src: src.health.messages == len(messages) + len(bad),
                            "every frame")
    h = src.health
    assert h.malformed == 3 and h.reconnects == 0
    assert h.malformed_kinds == {"bad json": 1, "unknown stream": 1, "missing field": 1}
    # everything after the bad frames still arrived: both trades, all four books
    assert sorted(ticks[ticks["kind"] == TICK_TRADE]["seq"]) == [9213679, 15683430]
    assert src.venue.stats()["depth_gaps"] == 0
    for native in NATIVE.values():
        assert src.venue.depth[native].book.last_update_id == \
            book_after(native, messages).last_update_id


def test_silent_server_is_detected_by_the_watchdog_and_reconnected():
    """Connection 0 goes quiet after 60 frames but keeps the socket open, and its
    websocket layer still answers our pings: the watchdog must count data, not
    pongs, and reconnect."""
    messages = ws_messages()
    ws = WsReplayServer(messages, {0: Behaviour(silent_after=60)}, expect_subscribe=0)
    t0 = time.monotonic()
    ticks, src, _ = collect(ws, lambda t, src: src.health.messages == 60 + len(messages),
                            "the replay on a second connection", ping_interval_s=0.2,
                            no_message_timeout_s=1.5)
    h = src.health
    assert h.reconnects >= 1 and ws.connections >= 2
    assert time.monotonic() - t0 >= 1.5                  # not before the timeout
    assert {int(s) for s in ticks[ticks["kind"] == TICK_GAP]["symbol_id"]} == \
        {IDS[s] for s in SYMBOLS}
    # the capture's two trades arrived once each: the second connection's repeats
    # of those seen on the first are dropped
    assert sorted(ticks[ticks["kind"] == TICK_TRADE]["seq"]) == [9213679, 15683430]


# -- the whole pipeline --------------------------------------------------------------
BINANCE_FEED = """
[[feeds]]
name = "binance"
kind = "binance"
symbols = {symbols}
channels = ["trades", "quotes", "depth"]
ws_url = "{ws_url}"
rest_url = "{rest_url}"
no_message_timeout_s = 2.0
reconnect_backoff_s = 0.1
reconnect_backoff_max_s = 0.5
rest_rate_per_s = 100.0
"""
# one account in USDT: the ETH, BTC and EUR quotes at fixed rates (of 2021, the capture's)
USDT_ACCOUNT = """
[execution]
currency = "USDT"

[[execution.fx]]
quote = "ETH"
rate = 0.0005

[[execution.fx]]
quote = "BTC"
rate = 0.00003

[[execution.fx]]
quote = "EUR"
rate = 0.85
"""
BINANCE_FEED += USDT_ACCOUNT


def test_pipeline_runs_a_binance_feed_from_local_servers(tmp_path):
    """`pipeline start` with a binance feed pointed at the local servers. The
    replay server sends the capture on each connection and then goes quiet, so
    the watchdog reconnects every few seconds and the capture flows again for
    the tap."""
    from test_pipeline import Pipeline
    messages = ws_messages()
    nkn = [(stream_kind(ev), ev["data"]) for ev in ws_events() if ev["data"]["s"] == "NKNUSDT"]
    nkn_ids = {d["a"] if kind == "aggTrade" else d.get("u") for kind, d in nkn}
    tickers = {d["u"]: (float(d["b"]), float(d["a"])) for kind, d in nkn if kind == "bookTicker"}
    with WsReplayServer(messages, expect_subscribe=0) as ws, \
            HttpReplayServer(rest_routes()) as http:
        p = Pipeline(tmp_path, name="bn", workers=2)
        base = p.config.read_text().split("[[feeds]]")[0]
        p.config.write_text(base + BINANCE_FEED.format(symbols=json.dumps(SYMBOLS),
                                                       ws_url=ws.url, rest_url=http.url))
        try:
            p.start()
            st = p.wait_status(lambda s: any(
                w["id"].startswith("feed.") and w["stats"].get("health", {}).get("messages", 0) > 0
                for w in s["workers"]), "the binance feed's first messages")
            (feed,) = [w for w in st["workers"] if w["id"].startswith("feed.")]
            health = feed["stats"]["health"]
            assert health["state"] == "connected" and health["messages"] > 0
            assert health["malformed"] == 0
            ticks = p.tap("ticks", "--symbol", "NKN/USDT", limit=8)
            assert {t["symbol"] for t in ticks} == {"NKN/USDT@binance"}
            real = [t for t in ticks if t["kind"] != TICK_GAP]
            assert real, ticks
            for t in real:
                assert t["seq"] in nkn_ids       # a trade id or book update id of the capture
                if t["kind"] == TICK_QUOTE:
                    assert 0 < t["bid"] < t["ask"]
                    if t["seq"] in tickers:
                        assert (t["bid"], t["ask"]) == tickers[t["seq"]]
            r = p.cli("stop")
            assert r.returncode == 0, r.stderr
            assert p.wait_exit() == 0
            assert "Traceback" not in p.output()
        finally:
            p.kill()


def test_a_hanging_backfill_does_not_get_the_feed_killed(tmp_path):
    """The venue's REST hangs on every backfill. With a 2 s heartbeat timeout each try
    gives up after a third of it and is tried three more times: about 6 s per symbol,
    in the feed's only thread. Heartbeats go on meanwhile, so the supervisor never
    takes the feed for hung, and its stream goes on after each backfill gives up."""
    from test_pipeline import Pipeline
    release = threading.Event()

    def hang(q):
        release.wait(60)             # answers when the test ends
        return "[]"
    routes = {**rest_routes(), "/api/v3/aggTrades": hang}
    messages = ws_messages()
    feed_of = lambda st: next(w for w in st["workers"] if w["id"].startswith("feed."))
    with WsReplayServer(messages, {0: Behaviour(drop_after=len(messages))}, expect_subscribe=0) as ws, \
            HttpReplayServer(routes) as http:
        p = Pipeline(tmp_path, name="slow", workers=2, hb_timeout=2.0)
        base = p.config.read_text().split("[[feeds]]")[0]
        p.config.write_text(base + BINANCE_FEED.format(symbols=json.dumps(SYMBOLS),
                                                       ws_url=ws.url, rest_url=http.url))
        try:
            p.start()
            # NKNUSDT and LRCBTC had traded before the drop: two backfills, four tries each
            st = p.wait_status(lambda s: feed_of(s)["stats"].get("health", {}).get("rest_retries", 0)
                               >= 6, "two backfills tried four times each")
            feed = feed_of(st)
            assert feed["restarts"] == 0 and feed["state"] == "running"
            asked = [q["symbol"] for path, q in http.requests if path == "/api/v3/aggTrades"]
            assert Counter(asked)["NKNUSDT"] >= 4
            release.set()
            r = p.cli("stop")
            assert r.returncode == 0, r.stderr
            assert p.wait_exit() == 0
            assert "hung" not in p.output() and "Traceback" not in p.output()
        finally:
            release.set()
            p.kill()
