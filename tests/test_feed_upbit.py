"""The Upbit feed against cryptofeed's real capture (SIMPLE format, KRW and BTC
markets, 2021-04-17) from tests/data: the parser on every message, then
the real connection code (workers.feed.VenueSource over WsConnection) against
a local websocket server replaying the capture as binary frames, as Upbit
sends them.

Expectations are computed from the capture's JSON here, independently of the
parser. The capture has no USDT market and no DEFAULT-format message: those
are built from real values and said so where it is done.

The backfill after a reconnect goes through ccxt (the real RestClient) to a
local HTTP server. The only real REST trade we hold is the one ccxt recorded
(USDT-BTC, 2024), served verbatim; for the reconnect tests the server answers
GET /v1/trades/ticks with the capture's own trades written as REST rows (same
trades, the REST field names of ccxt's recorded row), as the venue would once
it had traded them.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from shm.records import SIDE_BUY, SIDE_SELL, TICK_GAP, TICK_QUOTE, TICK_TRADE
from venue_servers import (PAYLOADS, Behaviour, WsReplayServer, captured, collect_ticks,
                           RECV_NS, parse_all, reconnect_twice, venue_feed)

CAPTURE = PAYLOADS / "upbit" / "ws" / "trade_orderbook_SIMPLE-format_2021-04-17.capture.jsonl"
CCXT_REST = PAYLOADS / "upbit" / "rest" / "ccxt_static_httpResponses.json"


# -- the capture, read independently of the parser ---------------------------------

def capture() -> tuple[list[str], list[dict], list[float], list[str]]:
    """(raw texts, decoded messages, receive times, subscribed codes) of the capture."""
    return captured(CAPTURE, lambda tickets: next(t["codes"] for t in tickets
                                                  if t.get("type") == "trade"))


def symbol_of(code: str) -> str:
    quote, base = code.split("-")
    return f"{base}/{quote}"


def symbol_ids(codes: list[str]) -> dict[str, int]:
    return {symbol_of(c): 100 + i for i, c in enumerate(codes)}


def make_feed(codes: list[str], **cfg):
    return venue_feed("upbit", symbol_ids(codes), **cfg)


# -- the parser on the real capture ---------------------------------------------------

def test_subscription_is_one_upbit_request_list():
    _, _, _, codes = capture()
    feed = make_feed(codes)
    (text,) = feed.subscribe_messages()
    req = json.loads(text)
    assert "ticket" in req[0] and req[-1] == {"format": "SIMPLE"}
    by_type = {r["type"]: r for r in req[1:-1]}
    assert sorted(by_type["trade"]["codes"]) == sorted(codes)
    assert by_type["trade"]["isOnlyRealtime"] is True
    assert sorted(by_type["orderbook"]["codes"]) == sorted(codes)
    only_trades = json.loads(make_feed(codes, channels=["trades"]).subscribe_messages()[0])
    assert [r.get("type") for r in only_trades[1:-1]] == ["trade"]
    with pytest.raises(ValueError, match="channels"):
        make_feed(codes, channels=["trade"])
    assert make_feed(["KRW-BTC", "USDT-BTC"]).native("BTC/USDT") == "USDT-BTC"


@pytest.mark.parametrize("as_bytes", [True, False], ids=["binary", "text"])
def test_every_captured_message_parses(as_bytes):
    raws, msgs, _, codes = capture()
    feed = make_feed(codes)
    ticks, rejected = parse_all(feed, [r.encode() if as_bytes else r for r in raws])
    assert rejected == {}
    ids = symbol_ids(codes)

    trades = [m for m in msgs if m["ty"] == "trade"]
    books = [m for m in msgs if m["ty"] == "orderbook"]
    assert len(trades) + len(books) == len(msgs) == len(ticks)
    t = ticks[ticks["kind"] == TICK_TRADE]
    assert len(t) == len(trades) == 304
    assert t["price"].tolist() == [m["tp"] for m in trades]
    assert t["size"].tolist() == [m["tv"] for m in trades]
    assert t["side"].tolist() == [SIDE_BUY if m["ab"] == "BID" else SIDE_SELL for m in trades]
    assert t["seq"].tolist() == [m["sid"] for m in trades]
    assert t["symbol_id"].tolist() == [ids[symbol_of(m["cd"])] for m in trades]
    assert t["ts_exchange_ns"].tolist() == [m["ttms"] * 1_000_000 for m in trades]
    assert set(t["side"].tolist()) == {SIDE_BUY, SIDE_SELL}

    q = ticks[ticks["kind"] == TICK_QUOTE]
    assert len(q) == len(books) == 145
    assert q["bid"].tolist() == [m["obu"][0]["bp"] for m in books]
    assert q["ask"].tolist() == [m["obu"][0]["ap"] for m in books]
    assert q["ts_exchange_ns"].tolist() == [m["tms"] * 1_000_000 for m in books]
    assert (q["bid"] < q["ask"]).all()


def test_markets_map_back_to_registry_symbols():
    raws, msgs, recv_ts, codes = capture()
    ids = symbol_ids(codes)
    names = {i: s for s, i in ids.items()}
    ticks, _ = parse_all(make_feed(codes), raws)
    seen = {names[i] for i in ticks["symbol_id"].tolist()}
    assert seen == {symbol_of(m["cd"]) for m in msgs}
    assert {"LAMB/KRW", "WAVES/KRW"} <= seen and {"ITAM/BTC", "XTZ/BTC", "PAX/BTC"} <= seen
    # venue times are sane against when cryptofeed received each message
    # (trade times in this capture are whole seconds, hence the wide window)
    lag_s = np.array(recv_ts) - ticks["ts_exchange_ns"] / 1e9
    assert ((lag_s > -0.1) & (lag_s < 3.0)).all(), lag_s


def test_usdt_market_simple_and_default_formats():
    raws, msgs, _, _ = capture()
    feed = make_feed(["KRW-BTC", "USDT-BTC"])
    usdt = symbol_ids(["KRW-BTC", "USDT-BTC"])["BTC/USDT"]
    # A real SIMPLE trade from the capture with its code changed to USDT-BTC
    # (the capture has no USDT market).
    i = next(i for i, m in enumerate(msgs) if m["ty"] == "trade")
    simple = raws[i].replace(f'"cd":"{msgs[i]["cd"]}"', '"cd":"USDT-BTC"')
    assert simple != raws[i]
    # A DEFAULT-format trade built from the real USDT-BTC trade that ccxt recorded
    # from Upbit's REST API (same field names as the websocket's DEFAULT format;
    # ccxt keeps numbers as strings, which the parser accepts).
    rest = json.loads(CCXT_REST.read_text())["fetchTrades"]["httpResponse"][0]
    default = json.dumps({"type": "trade", "code": rest["market"], "timestamp": int(rest["timestamp"]),
                          "trade_timestamp": rest["timestamp"], "trade_price": rest["trade_price"],
                          "trade_volume": rest["trade_volume"], "ask_bid": rest["ask_bid"],
                          "sequential_id": rest["sequential_id"], "stream_type": "REALTIME"})
    # one parser each: the two prices (a KRW one moved to USDT) lie far apart, and one
    # parser's price band would refuse the second
    parsed = [parse_all(feed, [raw.encode()]) for raw in (simple, default)]
    ticks = np.concatenate([t for t, _ in parsed])
    assert [r for _, r in parsed] == [{}, {}] and ticks["symbol_id"].tolist() == [usdt, usdt]
    assert ticks["price"].tolist() == [msgs[i]["tp"], float(rest["trade_price"])]
    assert ticks["side"][1] == SIDE_SELL and ticks["seq"][1] == int(rest["sequential_id"])
    assert ticks["ts_exchange_ns"][1] == int(rest["timestamp"]) * 1_000_000


def test_default_format_orderbook():
    """A real SIMPLE orderbook message rewritten with the DEFAULT format's keys."""
    raws, msgs, _, codes = capture()
    m = next(m for m in msgs if m["ty"] == "orderbook")
    keys = {"ap": "ask_price", "bp": "bid_price", "as": "ask_size", "bs": "bid_size"}
    default = {"type": "orderbook", "code": m["cd"], "timestamp": m["tms"],
               "total_ask_size": m["tas"], "total_bid_size": m["tbs"],
               "orderbook_units": [{keys[k]: v for k, v in u.items()} for u in m["obu"]],
               "stream_type": "SNAPSHOT"}
    ticks, _ = parse_all(make_feed(codes), [json.dumps(default)])
    assert ticks["kind"].tolist() == [TICK_QUOTE]
    assert (ticks["bid"][0], ticks["ask"][0]) == (m["obu"][0]["bp"], m["obu"][0]["ap"])


def test_bad_messages_are_counted_never_raised_further():
    from workers.venues.base import MalformedMessage, TickBuffer
    raws, msgs, _, codes = capture()
    feed = make_feed(codes)
    trade = next(m for m in msgs if m["ty"] == "trade")

    def variant(**change):
        d = dict(trade, **change)
        return json.dumps({k: v for k, v in d.items() if v is not None})

    malformed = {
        b"\xff\xfe\x00garbage": "bad json",
        "{not json": "bad json",
        "[1, 2]": "not an object",
        '{"error":{"name":"INVALID_AUTH","message":"auth failed"}}': "venue error",
        '{"ty":"ticker","cd":"KRW-LAMB"}': "unexpected message type",
        variant(tp=None): "missing field",
        variant(tp="abc"): "bad number",
        variant(ab="XYZ"): "bad side",
        variant(cd="KRW-NOPE"): "unknown symbol",
        variant(cd=["KRW-LAMB"]): "unknown symbol",
        variant(sid="x"): "bad integer",
        variant(ttms=10 ** 20): "bad integer",      # beyond 64 bits: decoded as a float
        '{"ty":"orderbook","cd":"KRW-LAMB","tms":1,"obu":[]}': "missing field",
        # a literal NaN is not JSON: refused at decoding
        variant(tp=float("nan")): "bad json",
    }
    for raw, kind in malformed.items():
        with pytest.raises(MalformedMessage) as e:
            feed.parse(raw, RECV_NS, TickBuffer())
        assert e.value.kind == kind, raw
    # values that parse but must never reach the ring
    out = TickBuffer()
    for raw in (variant(tp=0), variant(tv=-1.0), variant(sid=-5), variant(ttms=10 ** 17)):
        feed.parse(raw, RECV_NS, out)
    assert len(out) == 0
    assert out.rejected == {"bad price": 1, "bad size": 1, "bad time or seq": 2}
    feed.parse('{"status":"UP"}', RECV_NS, out)
    assert feed.stats() == {"status_messages": 1}


# -- end to end through the real connection code ----------------------------------

def collect(server, codes, until, routes=None, **cfg):
    """The real connection code on ``server`` (and REST on ``routes``) until ``until(ticks, source)``."""
    return collect_ticks("upbit", server, symbol_ids(codes), until, routes, **cfg)


def rest_row(m: dict) -> dict:
    """A captured (SIMPLE) trade as a row of GET /v1/trades/ticks: the same trade
    under the REST names, with JSON numbers as the live API sends them."""
    return {"market": m["cd"], "trade_date_utc": m["td"], "trade_time_utc": m["ttm"],
            "timestamp": m["ttms"], "trade_price": m["tp"], "trade_volume": m["tv"],
            "prev_closing_price": m["pcp"], "change_price": m["cp"], "ask_bid": m["ab"],
            "sequential_id": m["sid"]}


def trades_ticks(msgs: list[dict]):
    """GET /v1/trades/ticks as the venue answers once it has traded the trades in
    ``msgs``: a market's trades newest first, ``count`` of them, those after the
    ``cursor`` trade (a sequential_id) when one is given."""
    rows = [rest_row(m) for m in reversed(msgs) if m["ty"] == "trade"]

    def answer(q):
        mine = [r for r in rows if r["market"] == q["market"]]
        if "cursor" in q:
            mine = mine[[str(r["sequential_id"]) for r in mine].index(q["cursor"]) + 1:]
        return json.dumps(mine[:int(q["count"])])
    return answer


def replay(behaviours=None) -> tuple[WsReplayServer, list[str], list[dict]]:
    raws, msgs, _, codes = capture()
    # bytes: sent as binary frames, as Upbit does
    server = WsReplayServer([r.encode() for r in raws], behaviours, expect_subscribe=1)
    return server, codes, msgs


def kinds(ticks: np.ndarray, kind: int) -> np.ndarray:
    return ticks[ticks["kind"] == kind]


def trade_keys(ticks: np.ndarray) -> list[tuple[int, int]]:
    """(symbol id, sequential_id) of every trade tick, sorted: a sequential_id is
    unique within a market only (the capture repeats some across markets)."""
    t = kinds(ticks, TICK_TRADE)
    return sorted(zip(t["symbol_id"].tolist(), t["seq"].tolist()))


def capture_keys(msgs: list[dict], codes: list[str]) -> list[tuple[int, int]]:
    ids = symbol_ids(codes)
    return sorted((ids[symbol_of(m["cd"])], m["sid"]) for m in msgs if m["ty"] == "trade")


def test_ticks_come_out_of_the_real_connection():
    server, codes, msgs = replay()
    ticks, src, _ = collect(server, codes, lambda t, src: len(t) >= len(msgs))
    assert len(ticks) == len(msgs)
    assert len(kinds(ticks, TICK_TRADE)) == sum(m["ty"] == "trade" for m in msgs)
    assert len(kinds(ticks, TICK_QUOTE)) == sum(m["ty"] == "orderbook" for m in msgs)
    assert json.loads(server.received[0][0]) == json.loads(src.venue.subscribe_messages()[0])
    assert src.health.malformed == 0 and src.health.messages == len(msgs)
    assert (ticks["ts_origin_ns"] > 0).all()


def test_rest_rows_have_the_fields_of_the_recorded_real_response():
    recorded = json.loads(CCXT_REST.read_text())["fetchTrades"]["httpResponse"][0]
    _, msgs, _, _ = capture()
    assert rest_row(next(m for m in msgs if m["ty"] == "trade")).keys() == recorded.keys()


def test_backfill_of_the_recorded_real_rest_trade():
    """ccxt's recorded answer of Upbit's GET /v1/trades/ticks, served verbatim (numbers
    as strings, as ccxt recorded them): after a reconnect it is the one trade newer
    than the last one seen, and on a second reconnect a duplicate."""
    recorded = json.loads(CCXT_REST.read_text())["fetchTrades"]["httpResponse"]
    raws, msgs, _, _ = capture()
    # a real trade of the capture moved to USDT-BTC at the recorded trade's price (the
    # feed's price band would refuse the jump from a KRW price): the feed saw it before
    # the drop
    i = next(i for i, m in enumerate(msgs) if m["ty"] == "trade")
    seen = json.dumps({**msgs[i], "cd": "USDT-BTC", "tp": float(recorded[0]["trade_price"])})
    feed = make_feed(["USDT-BTC"])
    usdt = symbol_ids(["USDT-BTC"])["BTC/USDT"]
    ticks, again, http = reconnect_twice("upbit", feed, seen, {"/v1/trades/ticks": json.dumps(recorded)})
    assert http.requests == [("/v1/trades/ticks", {"market": "USDT-BTC", "count": "200"})] * 2
    assert ticks["kind"].tolist() == [TICK_TRADE, TICK_GAP, TICK_TRADE]
    row, t = recorded[0], ticks[2]
    assert (t["symbol_id"], t["seq"], t["ts_exchange_ns"], t["price"], t["size"], t["side"]) == (
        usdt, int(row["sequential_id"]), int(row["timestamp"]) * 1_000_000,
        float(row["trade_price"]), float(row["trade_volume"]), SIDE_SELL)
    assert again["kind"].tolist() == [TICK_GAP]
    assert (feed.health.backfilled, feed.health.duplicates) == (1, 1)


def test_dropped_connection_backfills_missed_trades_and_drops_duplicates():
    """Connection 0 drops after 100 messages. By the time the feed is back the venue
    has traded the whole capture, and the new connection (realtime only) starts at
    message 110: trades 100..109 exist only over REST, and everything the new
    connection brings was backfilled already."""
    drop, resume = 100, 110
    server, codes, msgs = replay({0: Behaviour(drop_after=drop), 1: Behaviour(skip=resume)})
    trades = [m for m in msgs if m["ty"] == "trade"]
    before = [m for m in msgs[:drop] if m["ty"] == "trade"]
    # what the backfill must fetch: for each market that traded before the drop,
    # every trade at or after the last trade time seen (Upbit's ids are not ordered)
    cut = {}
    for m in before:
        cut[m["cd"]] = max(cut.get(m["cd"], 0), m["ttms"])
    fetched = [m for m in trades if m["cd"] in cut and m["ttms"] >= cut[m["cd"]]]
    seen_ids = {(m["cd"], m["sid"]) for m in before}
    missed = [m for m in fetched if (m["cd"], m["sid"]) not in seen_ids]
    fetched_ids = {(m["cd"], m["sid"]) for m in fetched}
    ticks, src, http = collect(server, codes, lambda t, src: src.health.messages >= drop + len(msgs) - resume,
                               {"/v1/trades/ticks": trades_ticks(msgs)})
    h = src.health
    assert (server.connections, server.sent[0], h.reconnects) == (2, drop, 1)
    assert server.received[1] == server.received[0] == src.venue.subscribe_messages()
    assert h.errors == 1 and h.malformed == 0 and h.rejected == 0   # the drop, nothing else

    # connection 0's ticks, the gap markers, then the backfill, oldest first
    kind = ticks["kind"]
    assert (kind[drop:drop + len(codes)] == TICK_GAP).all() and (kind[:drop] != TICK_GAP).all()
    assert sorted(ticks["symbol_id"][kind == TICK_GAP].tolist()) == \
        sorted(symbol_ids(codes).values())
    backfill = ticks[drop + len(codes):drop + len(codes) + len(missed)]
    missed.sort(key=lambda m: m["ttms"])
    assert backfill["seq"].tolist() == [m["sid"] for m in missed]
    assert backfill["ts_exchange_ns"].tolist() == [m["ttms"] * 1_000_000 for m in missed]
    assert backfill["price"].tolist() == [m["tp"] for m in missed]
    assert backfill["size"].tolist() == [m["tv"] for m in missed]
    assert backfill["side"].tolist() == [SIDE_BUY if m["ab"] == "BID" else SIDE_SELL
                                         for m in missed]
    assert h.backfilled == len(missed) > resume - drop
    # the trades newer than the cut outnumber a page: fetched in two, the second
    # from the last trade of the first
    newest_first = [m for m in reversed(trades) if m["cd"] == "KRW-LAMB"]
    assert cut.keys() == {"KRW-LAMB"} and len(fetched) > 200
    assert http.requests == [
        ("/v1/trades/ticks", {"market": "KRW-LAMB", "count": "200"}),
        ("/v1/trades/ticks", {"market": "KRW-LAMB", "count": "200",
                              "cursor": str(newest_first[199]["sid"])})]

    # every trade of the capture exactly once; what came twice was counted
    assert trade_keys(ticks) == capture_keys(msgs, codes)
    repeats = sum((m["cd"], m["sid"]) in fetched_ids
                  for m in msgs[resume:] if m["ty"] == "trade")
    assert h.duplicates == (len(fetched) - len(missed)) + repeats
    assert len(kinds(ticks, TICK_QUOTE)) == sum(m["ty"] == "orderbook"
                                                for m in msgs[:drop] + msgs[resume:])


def test_failed_backfill_never_holds_up_the_reconnect():
    """The REST server answers the backfill with an error: counted and logged, the
    new connection goes on; its repeats of what connection 0 delivered are dropped."""
    drop = 100
    server, codes, msgs = replay({0: Behaviour(drop_after=drop)})
    error = (500, json.dumps({"error": {"name": "server_error", "message": "unavailable"}}))
    ticks, src, http = collect(server, codes, lambda t, src: src.health.messages >= drop + len(msgs),
                               {"/v1/trades/ticks": error})
    h = src.health
    assert [p for p, _ in http.requests] == ["/v1/trades/ticks"]    # KRW-LAMB, once
    assert h.reconnects == 1 and h.errors == 2 and h.rest_calls == 1   # the drop, the backfill
    assert h.backfilled == 0
    assert trade_keys(ticks) == capture_keys(msgs, codes)
    assert h.duplicates == sum(m["ty"] == "trade" for m in msgs[:drop])


def test_malformed_frame_is_counted_and_the_feed_goes_on():
    server, codes, msgs = replay({0: Behaviour(malformed={7: "{this is not json"})})
    ticks, src, _ = collect(server, codes, lambda t, src: len(t) >= len(msgs))
    assert len(ticks) == len(msgs)
    assert src.health.malformed == 1 and src.health.malformed_kinds == {"bad json": 1}
    assert src.health.reconnects == 0


def test_silent_server_trips_the_watchdog():
    server, codes, msgs = replay({0: Behaviour(silent_after=20)})
    # the venue has traded nothing since connection 0 fell silent
    ticks, src, http = collect(server, codes, lambda t, src: src.health.messages >= 20 + len(msgs),
                               {"/v1/trades/ticks": trades_ticks(msgs[:20])}, no_message_timeout_s=0.5)
    assert server.sent[0] == 20 and server.connections >= 2
    assert server.received[1] == src.venue.subscribe_messages()
    assert src.health.reconnects >= 1
    assert np.flatnonzero(ticks["kind"] == TICK_GAP)[0] == 20
    assert len(kinds(ticks, TICK_GAP)) == len(codes) * src.health.reconnects
    # every trade once: the second connection's repeats of the first 20 messages dropped
    assert trade_keys(ticks) == capture_keys(msgs, codes)
    # a backfill for KRW-LAMB on each reconnect, with nothing newer to bring
    assert [p for p, _ in http.requests] == ["/v1/trades/ticks"] * src.health.reconnects
    assert src.health.backfilled == 0
