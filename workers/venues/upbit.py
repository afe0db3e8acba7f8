"""Upbit: websocket trades and order book for KRW, USDT and BTC markets.

Upbit names markets quote first ("KRW-BTC" is BTC/KRW) and subscribes with one
JSON list per connection: a ticket, one entry per data type, and the format.
We ask for the SIMPLE format (abbreviated keys) but parse the DEFAULT format
too, since both are documented and a venue-side change must not blind us.
Frames arrive as binary UTF-8 JSON; ping frames keep the connection alive.

Sides: ``ask_bid`` is the aggressor's side as Upbit reports it: "BID" means
the buyer took liquidity (side +1), "ASK" the seller (side -1), as cryptofeed
reads it too. A trade's time is its ``trade_timestamp``, as cryptofeed uses.

Backfill: after a reconnect, the trades of each market that traded before the
drop are fetched over REST (``GET /v1/trades/ticks?market=KRW-BTC&count=200``:
newest first; ``cursor=<sequential_id>`` pages further back) and sent on
oldest first, after the gap markers. Upbit documents ``sequential_id`` as
unique, not as ordered, and the capture agrees (ids go back within a second),
so the cut is by trade time: every trade at or after the newest trade time
seen before the drop, less those seen already. Every trade passed on is
remembered by sequential_id (``SeenTrades``), so a trade that comes twice (in
the backfill and again on the new connection) goes out once and is counted as
a duplicate. Markets that had not traded before the drop are not backfilled:
there is no trade to start from, and their gap marker says so.
"""
from __future__ import annotations

import json
import uuid
from typing import NamedTuple

from shm.records import BOOK_LEVELS, SIDE_BUY, SIDE_SELL

from pipeline.config import FEED_CHANNELS

from .base import (MalformedMessage, SeenTrades, TickBuffer, VenueFeed, decode_json, integer, need,
                   number, requested_channels)


class _Keys(NamedTuple):
    """Field names of one Upbit message format."""
    type: str
    code: str
    timestamp: str
    trade_timestamp: str
    price: str
    volume: str
    ask_bid: str
    seq: str
    units: str
    bid: str
    ask: str
    bid_size: str
    ask_size: str


SIMPLE = _Keys("ty", "cd", "tms", "ttms", "tp", "tv", "ab", "sid", "obu", "bp", "ap", "bs", "as")
DEFAULT = _Keys("type", "code", "timestamp", "trade_timestamp", "trade_price", "trade_volume",
                "ask_bid", "sequential_id", "orderbook_units", "bid_price", "ask_price", "bid_size",
                "ask_size")
# a row of GET /v1/trades/ticks: DEFAULT's names, the market as "market", its time as "timestamp"
REST = DEFAULT._replace(type="", code="market", trade_timestamp="timestamp")

BACKFILL_COUNT = 200        # trades per REST page
BACKFILL_MAX_PAGES = 5      # per market and reconnect: beyond that, the gap marker says it all

SIDES = {"BID": SIDE_BUY, "ASK": SIDE_SELL}


class UpbitFeed(VenueFeed):
    venue = "upbit"
    default_ws_url = "wss://api.upbit.com/websocket/v1"
    default_rest_url = "https://api.upbit.com"

    def __init__(self, cfg, symbol_ids: dict[str, int]):
        super().__init__(cfg, symbol_ids)
        self.channels = requested_channels(cfg, FEED_CHANNELS["upbit"])
        self.ticket = str(uuid.uuid4())
        self.status_messages = 0
        self.seen = SeenTrades()      # by sequential_id, times in ms

    @staticmethod
    def native(symbol: str) -> str:
        base, quote = symbol.split("/")
        return f"{quote}-{base}"

    def subscribe_messages(self) -> list[str]:
        codes = sorted(self.by_native)
        req: list[dict] = [{"ticket": self.ticket}]
        if "trades" in self.channels:
            # realtime only: the snapshot would be the last trade again after every reconnect
            req.append({"type": "trade", "codes": codes, "isOnlyRealtime": True})
        if "quotes" in self.channels:
            # with the snapshot: a quote right after (re)connecting, before the book next changes
            req.append({"type": "orderbook", "codes": codes})
        req.append({"format": "SIMPLE"})
        return [json.dumps(req)]

    def parse(self, raw: str | bytes, recv_ns: int, out: TickBuffer) -> None:
        msg = decode_json(raw)
        if not isinstance(msg, dict):
            raise MalformedMessage("not an object")
        k = SIMPLE if "ty" in msg else DEFAULT
        kind = msg.get(k.type)
        if kind == "trade":
            self._trade(msg, k, recv_ns, out)
        elif kind == "orderbook":
            self._orderbook(msg, k, recv_ns, out)
        elif "error" in msg:
            raise MalformedMessage("venue error", str(msg["error"]))
        elif "status" in msg:   # {"status":"UP"}: the answer to a text "PING"
            self.status_messages += 1
        else:
            raise MalformedMessage("unexpected message type", str(kind))

    def _trade(self, msg: dict, k: _Keys, recv_ns: int, out: TickBuffer) -> None:
        self._emit(self._read_trade(msg, k), recv_ns, out)

    def _read_trade(self, msg: dict, k: _Keys) -> tuple[int, int, str, float, float, int]:
        """A trade message (or REST row) as (time ms, sequential_id, market, price,
        size, side)."""
        code = need(msg, k.code)
        self.symbol_id(code)
        ab = need(msg, k.ask_bid)
        side = SIDES.get(ab) if isinstance(ab, str) else None
        if side is None:
            raise MalformedMessage("bad side", f"{ab!r:.40}")
        # the trade's own time (whole seconds in 2021 captures, ms since); the message
        # time only where a message lacks it
        ts_key = k.trade_timestamp if msg.get(k.trade_timestamp) else k.timestamp
        return (integer(msg, ts_key), integer(msg, k.seq), code, number(msg, k.price),
                number(msg, k.volume), side)

    def _emit(self, trade: tuple, recv_ns: int, out: TickBuffer) -> bool:
        """Pass a trade on; False for a duplicate (counted) or a bad value (TickBuffer)."""
        ts_ms, seq, code, price, size, side = trade
        if self.seen.has(code, seq):
            self.health.duplicates += 1
            return False
        if not out.trade(self.by_native[code], recv_ns, ts_ms * 1_000_000, seq, price, size, side):
            return False
        self.seen.add(code, seq, ts_ms)
        return True

    def _orderbook(self, msg: dict, k: _Keys, recv_ns: int, out: TickBuffer) -> None:
        sid = self.symbol_id(need(msg, k.code))
        units = need(msg, k.units)
        best = need(units, 0)
        exch_ns = integer(msg, k.timestamp) * 1_000_000
        if out.books is not None:          # a run with a books table: every level (15) too
            if not isinstance(units, list):
                raise MalformedMessage("bad orderbook units", f"{units!r:.40}")
            out.book(sid, recv_ns, exch_ns, 0,
                     [(number(u, k.bid), number(u, k.bid_size)) for u in units[:BOOK_LEVELS]],
                     [(number(u, k.ask), number(u, k.ask_size)) for u in units[:BOOK_LEVELS]])
        out.quote(sid, recv_ns, exch_ns, 0, number(best, k.bid), number(best, k.ask))

    # -- (re)connection -----------------------------------------------------------
    def resume(self, native: str, trade) -> None:
        self.seen.add(native, int(trade["seq"]), int(trade["ts_exchange_ns"]) // 1_000_000)

    def on_connected(self, out: TickBuffer, recv_ns: int, reconnect: bool) -> None:
        """After a reconnect: gap markers (base), then the missed trades over REST."""
        super().on_connected(out, recv_ns, reconnect)
        if reconnect and self.rest is not None and "trades" in self.channels:
            for code in list(self.seen.newest):
                self._backfill(code, recv_ns, out)

    def _backfill(self, code: str, recv_ns: int, out: TickBuffer) -> None:
        """The trades of ``code`` at or after the newest trade time seen, page by
        page back from the newest, sent on oldest first. A failed page ends it
        with what was fetched; the gap marker tells of anything left out."""
        since = self.seen.newest[code]
        fetched = []                          # newest first, as Upbit answers
        params = {"market": code, "count": BACKFILL_COUNT}
        for _ in range(BACKFILL_MAX_PAGES):
            page = self.try_rest(f"{code} trade backfill", "publicGetTradesTicks", params)
            if not isinstance(page, list):
                if page is not None:
                    self.health.malformed_message(MalformedMessage("bad trades reply"), page)
                break
            rows = []
            for row in page:
                try:
                    if not isinstance(row, dict):
                        raise MalformedMessage("bad trades row", type(row).__name__)
                    rows.append(self._read_trade(row, REST))
                except MalformedMessage as e:
                    self.health.malformed_message(e, row)
            fetched += [t for t in rows if t[0] >= since]
            if len(page) < BACKFILL_COUNT or not rows or min(t[0] for t in rows) < since:
                break
            params = {**params, "cursor": rows[-1][1]}    # older than the page's last trade
        fetched.reverse()
        fetched.sort(key=lambda t: t[0])      # by time; stable: the venue's order within one
        for trade in fetched:
            if self._emit(trade, recv_ns, out):
                self.health.backfilled += 1

    def stats(self) -> dict:
        return {"status_messages": self.status_messages}


FEED = UpbitFeed
