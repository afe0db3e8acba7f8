"""Upbit: websocket trades and order book for KRW, USDT and BTC markets.

Upbit names markets quote first ("KRW-BTC" is BTC/KRW) and subscribes with one
JSON list per connection: a ticket, one entry per data type, and the format.
We ask for the SIMPLE format (abbreviated keys) but parse the DEFAULT format
too, since both are documented and a venue-side change must not blind us.
Frames arrive as binary UTF-8 JSON; ping frames keep the connection alive.

Sides: ``ask_bid`` is the aggressor's side as Upbit reports it: "BID" means
the buyer took liquidity (side +1), "ASK" the seller (side -1), as cryptofeed
reads it too. A trade's time is its ``trade_timestamp``, as cryptofeed uses.
"""
from __future__ import annotations

import json
import uuid
from typing import NamedTuple

from shm.records import SIDE_BUY, SIDE_SELL

from .base import (MalformedMessage, TickBuffer, VenueFeed, decode_json, integer, need, number,
                   requested_channels)


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


SIMPLE = _Keys("ty", "cd", "tms", "ttms", "tp", "tv", "ab", "sid", "obu", "bp", "ap")
DEFAULT = _Keys("type", "code", "timestamp", "trade_timestamp", "trade_price", "trade_volume",
                "ask_bid", "sequential_id", "orderbook_units", "bid_price", "ask_price")

SIDES = {"BID": SIDE_BUY, "ASK": SIDE_SELL}


class UpbitFeed(VenueFeed):
    venue = "upbit"
    default_ws_url = "wss://api.upbit.com/websocket/v1"
    default_rest_url = "https://api.upbit.com"

    def __init__(self, cfg, symbol_ids: dict[str, int]):
        super().__init__(cfg, symbol_ids)
        self.channels = requested_channels(cfg, ("trades", "quotes"))
        self.ticket = str(uuid.uuid4())
        self.status_messages = 0

    def native(self, symbol: str) -> str:
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
        sid = self.symbol_id(need(msg, k.code))
        ab = need(msg, k.ask_bid)
        side = SIDES.get(ab) if isinstance(ab, str) else None
        if side is None:
            raise MalformedMessage("bad side", f"{ab!r:.40}")
        # the trade's own time (whole seconds in 2021 captures, ms since); the message
        # time only where a message lacks it
        ts_key = k.trade_timestamp if msg.get(k.trade_timestamp) else k.timestamp
        out.trade(sid, recv_ns, integer(msg, ts_key) * 1_000_000, integer(msg, k.seq),
                  number(msg, k.price), number(msg, k.volume), side)

    def _orderbook(self, msg: dict, k: _Keys, recv_ns: int, out: TickBuffer) -> None:
        sid = self.symbol_id(need(msg, k.code))
        best = need(need(msg, k.units), 0)
        out.quote(sid, recv_ns, integer(msg, k.timestamp) * 1_000_000, 0,
                  number(best, k.bid), number(best, k.ask))

    def stats(self) -> dict:
        return {"status_messages": self.status_messages}


FEED = UpbitFeed
