"""The Bithumb feed against cryptofeed's real capture of the legacy public
websocket (``transaction`` messages and status acks, 2021-06-01) from
tests/data: the parser on every message, then the real connection code
(workers.feed.VenueSource over WsConnection) against a local websocket server
replaying it.

There is no capture of Bithumb's order book stream: those tests use messages
built from the format in Bithumb's API documentation, and say so.

The backfill after a reconnect goes through ccxt (the real RestClient) to a
local HTTP server. The only real REST trade we hold is the one ccxt recorded
(BTC/KRW, 2024), served verbatim; for the reconnect tests the server answers
the legacy GET /public/transaction_history/{symbol} with the capture's own
trades written as REST rows (same trades, the field names of ccxt's recorded
row, the time cut to the whole second as the REST gives it), as the venue
would once it had traded them.
"""
from __future__ import annotations

import calendar
import json
from datetime import datetime

import numpy as np
import pytest

from shm.records import SIDE_BUY, SIDE_SELL, TICK_GAP, TICK_QUOTE, TICK_TRADE
from venue_servers import (PAYLOADS, Behaviour, WsReplayServer, captured, collect_ticks,
                           RECV_NS, parse_all, reconnect_twice, venue_feed)

CAPTURE = PAYLOADS / "bithumb" / "ws" / "transaction_2021-06-01.capture.jsonl"
CCXT_REST = PAYLOADS / "bithumb" / "rest" / "ccxt_static_httpResponses.json"


# -- the capture, read independently of the parser ---------------------------------

def capture() -> tuple[list[str], list[dict], list[float], list[str]]:
    """(raw texts, decoded messages, receive times, subscribed symbols) of the capture."""
    return captured(CAPTURE, lambda subscription: subscription["symbols"])


def captured_trades() -> list[tuple[dict, float]]:
    """Every trade item of the capture with the time cryptofeed received it."""
    _, msgs, recv_ts, _ = capture()
    return [(item, ts) for m, ts in zip(msgs, recv_ts) if m.get("type") == "transaction"
            for item in m["content"]["list"]]


def kst_ns(text: str) -> int:
    """contDtm (Korean time, UTC+9) -> epoch ns, by another route than the parser's."""
    head, frac = text.split(".")
    t = calendar.timegm(datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timetuple()) - 9 * 3600
    return t * 1_000_000_000 + int(frac.ljust(6, "0")) * 1000


def symbol_of(native: str) -> str:
    return native.replace("_", "/")


def symbol_ids(natives: list[str]) -> dict[str, int]:
    return {symbol_of(n): 200 + i for i, n in enumerate(natives)}


def make_feed(natives: list[str], **cfg):
    return venue_feed("bithumb", symbol_ids(natives), **cfg)


# -- the parser on the real capture ---------------------------------------------------

def test_subscriptions():
    _, _, _, natives = capture()
    msgs = [json.loads(m) for m in make_feed(natives).subscribe_messages()]
    assert [m["type"] for m in msgs] == ["transaction", "orderbooksnapshot", "orderbookdepth"]
    assert all(sorted(m["symbols"]) == sorted(natives) for m in msgs)
    only_trades = make_feed(natives, channels=["trades"]).subscribe_messages()
    assert [json.loads(m)["type"] for m in only_trades] == ["transaction"]
    with pytest.raises(ValueError, match="channels"):
        make_feed(natives, channels=["book"])
    assert make_feed(["BTC_KRW"]).native("BTC/KRW") == "BTC_KRW"


def test_every_captured_message_parses():
    raws, msgs, _, natives = capture()
    feed = make_feed(natives)
    ticks, rejected = parse_all(feed, raws)
    assert rejected == {}
    assert feed.stats()["acks"] == sum("status" in m for m in msgs) == 2

    trades = captured_trades()
    ids = symbol_ids(natives)
    assert len(ticks) == len(trades) == 7 and (ticks["kind"] == TICK_TRADE).all()
    assert ticks["price"].tolist() == [float(t["contPrice"]) for t, _ in trades]
    assert ticks["size"].tolist() == [float(t["contQty"]) for t, _ in trades]
    assert ticks["symbol_id"].tolist() == [ids[symbol_of(t["symbol"])] for t, _ in trades]
    # the side convention: "2" is a buy (the buyer took liquidity), "1" a sell
    assert ticks["side"].tolist() == [SIDE_BUY if t["buySellGb"] == "2" else SIDE_SELL
                                      for t, _ in trades]
    assert set(ticks["side"].tolist()) == {SIDE_BUY, SIDE_SELL}
    # KST -> UTC, to the microsecond; seq is the exchange time in microseconds
    assert ticks["ts_exchange_ns"].tolist() == [kst_ns(t["contDtm"]) for t, _ in trades]
    assert ticks["seq"].tolist() == [kst_ns(t["contDtm"]) // 1000 for t, _ in trades]
    # and the result is sane against when cryptofeed received each trade (a 9 h error
    # in the time zone would be far outside this)
    lag_s = np.array([ts for _, ts in trades]) - ticks["ts_exchange_ns"] / 1e9
    assert ((lag_s > 0) & (lag_s < 5)).all(), lag_s
    # the markets map back to registry symbols
    names = {i: s for s, i in ids.items()}
    assert {names[i] for i in ticks["symbol_id"].tolist()} == {"CON/KRW", "GOM2/KRW"}


def test_side_convention_agrees_with_the_capture():
    """Four trades within 2.2 ms at rising prices: the mark of one buy order taking the
    asks level by level (a sell sweeping the bids walks the price down). Bithumb labels
    them "2"."""
    sweep = [t for t, _ in captured_trades() if t["contDtm"].startswith("2021-06-02 08:43:42.2")]
    assert [t["contPrice"] for t in sweep] == ["7.523", "7.524", "7.525", "7.525"]
    assert {t["buySellGb"] for t in sweep} == {"2"}


def test_btc_market_parses():
    """A real trade of the capture moved to ETH_BTC (the capture's BTC markets did not
    trade while it ran)."""
    raws, _, _, natives = capture()
    raw = next(r for r in raws if '"CON_KRW"' in r).replace('"CON_KRW"', '"ETH_BTC"')
    ticks, _ = parse_all(make_feed(natives), [raw])
    assert ticks["symbol_id"].tolist() == [symbol_ids(natives)["ETH/BTC"]]


def test_bad_messages_are_counted_never_raised_further():
    from workers.venues.base import MalformedMessage, TickBuffer
    raws, _, _, natives = capture()
    feed = make_feed(natives)
    item = captured_trades()[0][0]

    def variant(**change):
        d = {k: v for k, v in dict(item, **change).items() if v is not None}
        return json.dumps({"type": "transaction", "content": {"list": [d]}})

    malformed = {
        "{not json": "bad json",
        b"\xff\xfe": "bad json",
        '"text"': "not an object",
        '{"status":"5100","resmsg":"Invalid Filter Syntax"}': "venue error",
        '{"type":"ticker","content":{}}': "unexpected message type",
        '{"type":"transaction","content":{}}': "missing field",
        '{"type":"transaction","content":{"list":"x"}}': "missing field",
        variant(contPrice=None): "missing field",
        variant(contQty="1,000"): "bad number",
        variant(buySellGb="3"): "bad side",
        variant(buySellGb=2): "bad side",
        variant(symbol="NOPE_KRW"): "unknown symbol",
        variant(contDtm="yesterday"): "bad timestamp",
        variant(contDtm=None): "missing field",
    }
    for raw, kind in malformed.items():
        with pytest.raises(MalformedMessage) as e:
            feed.parse(raw, RECV_NS, TickBuffer())
        assert e.value.kind == kind, raw
    out = TickBuffer()
    for raw in (variant(contPrice="NaN"), variant(contPrice="0"), variant(contQty="-1"),
                variant(contQty="inf")):
        feed.parse(raw, RECV_NS, out)
    assert len(out) == 0 and out.rejected == {"bad price": 2, "bad size": 2}


# -- order book: no capture, so messages in the format of Bithumb's documentation -------

def snapshot(symbol, ts_us, bids, asks) -> str:
    """An ``orderbooksnapshot`` message as Bithumb documents it: content.symbol,
    content.datetime (epoch us, a string), asks/bids as [price, quantity] strings."""
    return json.dumps({"type": "orderbooksnapshot", "content": {
        "symbol": symbol, "datetime": str(ts_us),
        "asks": [[str(p), str(q)] for p, q in asks], "bids": [[str(p), str(q)] for p, q in bids]}})


def depth(ts_us, *levels) -> str:
    """An ``orderbookdepth`` message as Bithumb documents it: changed levels only,
    quantity 0 removes the level, content.datetime epoch us (a number)."""
    return json.dumps({"type": "orderbookdepth", "content": {"list": [
        {"symbol": s, "orderType": side, "price": str(p), "quantity": str(q), "total": "1"}
        for s, side, p, q in levels], "datetime": ts_us}})


def test_order_book_seeded_by_snapshot_quotes_when_the_top_changes():
    from workers.venues.base import TickBuffer
    feed = make_feed(["BTC_KRW", "ETH_KRW"])
    btc = symbol_ids(["BTC_KRW", "ETH_KRW"])["BTC/KRW"]
    t0 = 1580268255864325
    out = TickBuffer()

    def quotes():
        q = out.take()
        assert (q["kind"] == TICK_QUOTE).all()
        return [(float(b), float(a)) for b, a in zip(q["bid"], q["ask"])]

    # the documented depth example, before any snapshot: cannot be trusted, dropped
    feed.parse(depth(t0, ("BTC_KRW", "ask", 10593000, 1.11223318),
                     ("BTC_KRW", "bid", 10572000, 2.3324)), RECV_NS, out)
    assert quotes() == [] and feed.stats()["unseeded_depth"] == 2

    feed.parse(snapshot("BTC_KRW", t0 + 10, bids=[(10572000, 2.3), (10571000, 1.4)],
                        asks=[(10593000, 1.1), (10596000, 0.5)]), RECV_NS, out)
    q = out.take()
    assert q["symbol_id"].tolist() == [btc] and q["ts_exchange_ns"][0] == (t0 + 10) * 1000
    assert (q["bid"][0], q["ask"][0]) == (10572000, 10593000)

    feed.parse(depth(t0 + 5, ("BTC_KRW", "bid", 10580000, 1.0)), RECV_NS, out)   # older than the snapshot
    feed.parse(depth(t0 + 20, ("BTC_KRW", "bid", 10571000, 9.0)), RECV_NS, out)  # below the top
    feed.parse(depth(t0 + 30, ("BTC_KRW", "ask", 10593000, 0.7)), RECV_NS, out)  # size only
    assert quotes() == []
    feed.parse(depth(t0 + 40, ("BTC_KRW", "bid", 10572000, 0)), RECV_NS, out)    # best bid gone
    assert quotes() == [(10571000, 10593000)]
    feed.parse(depth(t0 + 50, ("BTC_KRW", "ask", 10590000, 0.2),
                     ("BTC_KRW", "bid", 10575000, 0.3)), RECV_NS, out)           # both improve, one quote
    assert quotes() == [(10575000, 10590000)]
    feed.parse(depth(t0 + 60, ("BTC_KRW", "ask", 10590000, 0),
                     ("BTC_KRW", "ask", 10593000, 0), ("BTC_KRW", "ask", 10596000, 0)), RECV_NS, out)
    assert quotes() == []                                                  # no ask side: no quote

    # a reconnect forgets the books: depth alone is not trusted again until a snapshot
    feed.on_connected(out, RECV_NS + 5, reconnect=True)
    assert (out.take()["kind"] == TICK_GAP).all()
    feed.parse(depth(t0 + 70, ("BTC_KRW", "ask", 10600000, 1.0)), RECV_NS, out)
    assert quotes() == []


def test_a_book_a_lost_or_crossing_update_makes_wrong_waits_for_a_snapshot_with_a_gap():
    from workers.venues.base import MalformedMessage, TickBuffer
    t0 = 1622591000000000
    seed = snapshot("BTC_KRW", t0, bids=[(50_000_000, 1)], asks=[(50_100_000, 1), (50_200_000, 1)])
    for bad, malformed in ((depth(t0 + 10, ("BTC_KRW", "ask", 50_100_000, 0), ("BTC_KRW", "bid", 50_050_000, "abc")),
                            True),                                   # one junk level drops the message
                           (depth(t0 + 10, ("BTC_KRW", "bid", 50_300_000, 1)), False)):   # the top crosses
        feed, out = make_feed(["BTC_KRW"]), TickBuffer()
        feed.parse(seed, RECV_NS, out)
        out.take()
        if malformed:
            with pytest.raises(MalformedMessage):
                feed.parse(bad, RECV_NS, out)
        else:
            feed.parse(bad, RECV_NS, out)
        assert out.take()["kind"].tolist() == [TICK_GAP] and feed.stats()["books_distrusted"] == 1
        feed.parse(depth(t0 + 20, ("BTC_KRW", "bid", 50_010_000, 2)), RECV_NS, out)
        assert len(out.take()) == 0                                  # no quote off a book known wrong
        feed.parse(snapshot("BTC_KRW", t0 + 30, bids=[(50_010_000, 2)], asks=[(50_200_000, 1)]), RECV_NS, out)
        q = out.take()
        assert q["kind"].tolist() == [TICK_QUOTE] and (q["bid"][0], q["ask"][0]) == (50_010_000, 50_200_000)
        with pytest.raises(MalformedMessage):               # another symbol's level: our book stands
            feed.parse(depth(t0 + 40, ("XRP_KRW", "bid", 1, 1)), RECV_NS, out)
        assert len(out.take()) == 0 and feed.stats()["books_distrusted"] == 1


def test_bad_book_levels_are_malformed():
    from workers.venues.base import MalformedMessage, TickBuffer
    feed = make_feed(["BTC_KRW"])
    for raw, kind in {
        snapshot("BTC_KRW", 1, bids=[("NaN", 1)], asks=[(2, 1)]): "bad book level",
        snapshot("BTC_KRW", 1, bids=[(1, 1)], asks=[(-2, 1)]): "bad book level",
        depth(1, ("BTC_KRW", "bid", 1, "inf")): "bad book level",
        depth(1, ("BTC_KRW", "middle", 1, 1)): "bad side",
        depth(1, ("XRP_KRW", "bid", 1, 1)): "unknown symbol",
        '{"type":"orderbooksnapshot","content":{"symbol":"BTC_KRW","datetime":"x"}}': "bad integer",
    }.items():
        with pytest.raises(MalformedMessage) as e:
            feed.parse(raw, RECV_NS, TickBuffer())
        assert e.value.kind == kind, raw


# -- end to end through the real connection code ----------------------------------

def collect(server, natives, until, routes=None, **cfg):
    """The real connection code on ``server`` (and REST on ``routes``) until ``until(ticks, source)``."""
    return collect_ticks("bithumb", server, symbol_ids(natives), until, routes, **cfg)


def history_row(t: dict) -> dict:
    """A captured websocket trade as a row of the legacy transaction_history: the
    same trade under the REST names, its Korean time cut to the whole second, and
    ``type`` bid for a buy ("2"), ask for a sell."""
    return {"transaction_date": t["contDtm"][:19],
            "type": "bid" if t["buySellGb"] == "2" else "ask",
            "units_traded": t["contQty"], "price": t["contPrice"], "total": t["contAmt"]}


def history_routes(natives: list[str], items: list[dict]) -> dict:
    """GET /public/transaction_history/{symbol} as the venue answers once it has
    traded ``items``: a symbol's trades newest first (as Bithumb documents it),
    ``count`` of them."""
    def route(native):
        rows = [history_row(t) for t in reversed(items) if t["symbol"] == native]
        return lambda q: json.dumps({"status": "0000", "data": rows[:int(q.get("count", 20))]})
    return {f"/public/transaction_history/{n}": route(n) for n in natives}


def trade_keys(ticks: np.ndarray, whole_seconds=False) -> list[tuple]:
    """(symbol id, time ns, price, size, side) of every trade tick, sorted; the
    time cut to the second with ``whole_seconds`` (where trades came over REST)."""
    t = trades(ticks)
    ns = t["ts_exchange_ns"] // 10 ** 9 * 10 ** 9 if whole_seconds else t["ts_exchange_ns"]
    return sorted(zip(t["symbol_id"].tolist(), ns.tolist(), t["price"].tolist(),
                      t["size"].tolist(), t["side"].tolist()))


def capture_keys(natives: list[str], whole_seconds=False) -> list[tuple]:
    ids = symbol_ids(natives)
    out = []
    for t, _ in captured_trades():
        ns = kst_ns(t["contDtm"])
        out.append((ids[symbol_of(t["symbol"])], ns // 10 ** 9 * 10 ** 9 if whole_seconds else ns,
                    float(t["contPrice"]), float(t["contQty"]),
                    SIDE_BUY if t["buySellGb"] == "2" else SIDE_SELL))
    return sorted(out)


def replay(behaviours=None):
    raws, msgs, _, natives = capture()
    # the feed sends one filter per data type: transaction, orderbooksnapshot, orderbookdepth
    return WsReplayServer(raws, behaviours, expect_subscribe=3), natives


def trades(ticks: np.ndarray) -> np.ndarray:
    return ticks[ticks["kind"] == TICK_TRADE]


def test_ticks_come_out_of_the_real_connection():
    server, natives = replay()
    n = len(captured_trades())
    ticks, src, _ = collect(server, natives, lambda t, src: len(t) >= n)
    assert len(ticks) == len(trades(ticks)) == n
    assert server.received[0] == src.venue.subscribe_messages()
    assert src.stats()["acks"] == 2 and src.health.malformed == 0


def test_history_rows_have_the_fields_of_the_recorded_real_response():
    recorded = json.loads(CCXT_REST.read_text())["fetchTrades"]["httpResponse"]["data"][0]
    assert history_row(captured_trades()[0][0]).keys() == recorded.keys()


def test_backfill_of_the_recorded_real_rest_trade():
    """ccxt's recorded answer of the legacy transaction_history, served verbatim:
    after a reconnect it is the one trade newer than the last one seen; on a second
    reconnect it is no longer newer than the newest trade passed on."""
    recorded = json.loads(CCXT_REST.read_text())["fetchTrades"]["httpResponse"]
    raws, _, _, _ = capture()
    # a real trade of the capture moved to BTC_KRW at the recorded trade's price (the
    # feed's price band would refuse a jump from CON's 3.9 KRW): the feed saw it before
    # the drop
    msg = json.loads(next(r for r in raws if '"CON_KRW"' in r))
    msg["content"]["list"] = [{**item, "symbol": "BTC_KRW", "contPrice": recorded["data"][0]["price"]}
                              for item in msg["content"]["list"][:1]]
    seen = json.dumps(msg)
    feed = make_feed(["BTC_KRW"])
    path = "/public/transaction_history/BTC_KRW"
    ticks, again, http = reconnect_twice("bithumb", feed, seen, {path: json.dumps(recorded)})
    assert http.requests == [(path, {"count": "100"})] * 2
    assert ticks["kind"].tolist() == [TICK_TRADE, TICK_GAP, TICK_TRADE]
    row, t = recorded["data"][0], ticks[2]       # 2024-08-08 17:14:33 KST, "ask"
    assert (t["ts_exchange_ns"], t["seq"], t["price"], t["size"], t["side"]) == (
        kst_ns(row["transaction_date"] + ".0"), kst_ns(row["transaction_date"] + ".0") // 1000,
        float(row["price"]), float(row["units_traded"]), SIDE_SELL)
    assert again["kind"].tolist() == [TICK_GAP]
    assert (feed.health.backfilled, feed.health.duplicates) == (1, 0)


def test_dropped_connection_backfills_missed_trades_and_drops_duplicates():
    """Connection 0 sends the two acks and the first two trades, then the line drops.
    By the time the feed is back the venue has traded the whole capture; the new
    connection replays all of it, so every trade comes again."""
    server, natives = replay({0: Behaviour(drop_after=4)})
    items = [t for t, _ in captured_trades()]
    ticks, src, http = collect(server, natives, lambda t, src: src.health.messages >= 4 + 6,
                               history_routes(natives, items))
    h = src.health
    assert (server.connections, server.sent[0], h.reconnects, h.errors) == (2, 4, 1, 1)
    assert server.received[1] == server.received[0] == src.venue.subscribe_messages()
    # the two trades of connection 0, a gap marker per symbol, then the backfill
    gap_at = np.flatnonzero(ticks["kind"] == TICK_GAP)
    assert gap_at.tolist() == list(range(2, 2 + len(natives)))
    assert sorted(ticks["symbol_id"][gap_at].tolist()) == sorted(symbol_ids(natives).values())
    # only the symbols that had traded are asked for
    assert sorted(p for p, _ in http.requests) == ["/public/transaction_history/CON_KRW",
                                                   "/public/transaction_history/GOM2_KRW"]
    assert {q["count"] for _, q in http.requests} == {"100"}
    # the five GOM2 trades after the last one seen (08:43:41.4), in seconds 42 and 43,
    # oldest first, as REST gives them: to the second
    backfill = ticks[gap_at[-1] + 1:]
    missed = items[2:]
    assert h.backfilled == len(backfill) == len(missed) == 5
    assert backfill["ts_exchange_ns"].tolist() == [kst_ns(t["contDtm"]) // 10 ** 9 * 10 ** 9
                                                   for t in missed]
    assert backfill["price"].tolist() == [float(t["contPrice"]) for t in missed]
    assert backfill["size"].tolist() == [float(t["contQty"]) for t in missed]
    assert backfill["side"].tolist() == [SIDE_BUY if t["buySellGb"] == "2" else SIDE_SELL
                                         for t in missed]
    # the new connection's seven trades were all passed on already: dropped, counted
    assert h.duplicates == 7
    assert trade_keys(ticks, whole_seconds=True) == capture_keys(natives, whole_seconds=True)


def test_trades_in_the_second_of_the_last_one_seen_are_left_to_the_gap_marker():
    """Connection 0 drops after GOM2's trade at 08:43:42.239684; the new connection
    (realtime) brings the last message: three more trades in second 42 and one at
    43.188333. REST times are whole seconds, so the backfill cannot tell the missed
    trades of second 42 from the one seen: it sends only the one at 43 (strictly
    newer), and the new connection's copy of that one is dropped."""
    server, natives = replay({0: Behaviour(drop_after=5), 1: Behaviour(skip=5)})
    items = [t for t, _ in captured_trades()]
    ticks, src, http = collect(server, natives, lambda t, src: src.health.messages >= 5 + 1,
                               history_routes(natives, items))
    h = src.health
    assert h.reconnects == 1 and len(http.requests) == 2
    assert (h.backfilled, h.duplicates) == (1, 1)
    t = trades(ticks)
    assert t["ts_exchange_ns"].tolist() == [kst_ns(x["contDtm"]) for x in items[:3]] + [
        kst_ns(items[-1]["contDtm"]) // 10 ** 9 * 10 ** 9] + [
        kst_ns(x["contDtm"]) for x in items[3:6]]
    # each trade exactly once
    assert trade_keys(ticks, whole_seconds=True) == capture_keys(natives, whole_seconds=True)


def test_failed_backfill_never_holds_up_the_reconnect():
    """The REST server answers with an error: counted and logged, the new connection
    goes on and brings the missed trades; its repeats of the first two are dropped."""
    server, natives = replay({0: Behaviour(drop_after=4)})
    error = (500, json.dumps({"status": "5600", "message": "unavailable"}))
    routes = {f"/public/transaction_history/{n}": error for n in natives}
    ticks, src, http = collect(server, natives, lambda t, src: src.health.messages >= 4 + 6, routes)
    h = src.health
    assert len(http.requests) == 2                       # CON_KRW and GOM2_KRW
    assert h.reconnects == 1 and h.errors == 1 + 2       # the drop, both backfills
    assert (h.backfilled, h.duplicates) == (0, 2)
    assert trade_keys(ticks) == capture_keys(natives)


def test_malformed_frame_is_counted_and_the_feed_goes_on():
    server, natives = replay({0: Behaviour(malformed={3: '{"type":"transaction","content":'})})
    n = len(captured_trades())
    ticks, src, _ = collect(server, natives, lambda t, src: len(t) >= n)
    assert len(trades(ticks)) == n
    assert src.health.malformed == 1 and src.health.malformed_kinds == {"bad json": 1}
    assert src.health.reconnects == 0


def test_silent_server_trips_the_watchdog():
    server, natives = replay({0: Behaviour(silent_after=3)})
    # the venue has traded nothing since connection 0 fell silent after CON's trade
    items = [t for t, _ in captured_trades()][:1]
    ticks, src, http = collect(server, natives, lambda t, src: src.health.messages >= 3 + 6,
                               history_routes(natives, items), no_message_timeout_s=0.5)
    assert server.sent[0] == 3 and server.connections >= 2
    assert server.received[1] == src.venue.subscribe_messages()
    assert src.health.reconnects >= 1
    assert np.flatnonzero(ticks["kind"] == TICK_GAP)[0] == 1   # after the one trade before silence
    # every trade once: the second connection's repeat of CON's trade dropped
    assert trade_keys(ticks) == capture_keys(natives)
    assert len(http.requests) == src.health.reconnects and src.health.backfilled == 0
