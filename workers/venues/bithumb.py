"""Bithumb (legacy public websocket, pubwss): trades and order book, KRW and BTC markets.

One filter message per data type. Trades come as ``transaction`` lists; the
order book as ``orderbooksnapshot`` (the top levels, whole) and
``orderbookdepth`` (changed levels only, quantity 0 removes a level). Depth
alone cannot be trusted for the top of book: a level that never changes is
never sent. So a small book per symbol is seeded by a snapshot, updated by
the depth messages newer than it, and a quote goes out when its top changes.

Sides: ``buySellGb`` "2" is a buy (the buyer was the aggressor, side +1), "1" a
sell (side -1), as Bithumb documents it (1: 매도체결, 2: 매수체결) and as
cryptofeed reads it. The capture agrees: four trades within 2.2 ms that walk
the price up 7.523 -> 7.524 -> 7.525 (one order sweeping the asks) are all "2".

Times: ``contDtm`` is Korean local time (UTC+9) without a zone, to the
microsecond; the book's ``datetime`` is epoch microseconds. Bithumb has no
trade id on this stream, so a tick's ``seq`` is its exchange time in
microseconds: the same trade gets the same seq after a reconnect or replay.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

from shm.records import SIDE_BUY, SIDE_SELL

from .base import (MalformedMessage, TickBuffer, VenueFeed, decode_json, integer, need, number,
                   requested_channels)

KST = timezone(timedelta(hours=9))
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
KST_EPOCH = datetime(1970, 1, 1, 9)   # the epoch on a Korean wall clock (KST has no DST)
SIDES = {"2": SIDE_BUY, "1": SIDE_SELL}
MAX_LEVELS = 200    # per side; depth updates far from the top are dropped beyond this


class Book:
    """One symbol's book as far as the quotes need it: price -> size per side."""

    def __init__(self):
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.seeded_us: int | None = None    # time of the snapshot it was built from
        self.last_top: tuple[float, float] | None = None

    def reset(self, bids: list[tuple[float, float]], asks: list[tuple[float, float]],
              ts_us: int) -> None:
        self.bids = {p: q for p, q in bids if q > 0}
        self.asks = {p: q for p, q in asks if q > 0}
        self.seeded_us = ts_us

    def update(self, is_bid: bool, price: float, size: float) -> None:
        side = self.bids if is_bid else self.asks
        if size > 0:
            side[price] = size
            if len(side) > MAX_LEVELS:
                del side[min(side) if is_bid else max(side)]
        else:
            side.pop(price, None)

    def top(self) -> tuple[float, float] | None:
        if not (self.bids and self.asks):
            return None
        return max(self.bids), min(self.asks)


class BithumbFeed(VenueFeed):
    venue = "bithumb"
    default_ws_url = "wss://pubwss.bithumb.com/pub/ws"
    default_rest_url = "https://api.bithumb.com"

    def __init__(self, cfg, symbol_ids: dict[str, int]):
        super().__init__(cfg, symbol_ids)
        self.channels = requested_channels(cfg, ("trades", "quotes"))
        self.books: dict[str, Book] = {}
        self.acks = 0
        self.unseeded_depth = 0    # depth updates that came before any snapshot: dropped

    def native(self, symbol: str) -> str:
        base, quote = symbol.split("/")
        return f"{base}_{quote}"

    def subscribe_messages(self) -> list[str]:
        symbols = sorted(self.by_native)
        types = []
        if "trades" in self.channels:
            types.append("transaction")
        if "quotes" in self.channels:
            types += ["orderbooksnapshot", "orderbookdepth"]
        return [json.dumps({"type": t, "symbols": symbols}) for t in types]

    def on_connected(self, out: TickBuffer, recv_ns: int, reconnect: bool) -> None:
        self.books.clear()    # whatever we held may have changed while we were away
        super().on_connected(out, recv_ns, reconnect)

    def parse(self, raw: str | bytes, recv_ns: int, out: TickBuffer) -> None:
        msg = decode_json(raw)
        if not isinstance(msg, dict):
            raise MalformedMessage("not an object")
        kind = msg.get("type")
        if kind == "transaction":
            self._transactions(need(need(msg, "content"), "list"), recv_ns, out)
        elif kind == "orderbookdepth":
            self._depth(need(msg, "content"), recv_ns, out)
        elif kind == "orderbooksnapshot":
            self._snapshot(need(msg, "content"), recv_ns, out)
        elif kind is None and "status" in msg:
            # {"status":"0000","resmsg":"Connected Successfully" | "Filter Registered Successfully"}
            if msg["status"] != "0000":
                raise MalformedMessage("venue error", f"{msg['status']} {msg.get('resmsg')}")
            self.acks += 1
        else:
            raise MalformedMessage("unexpected message type", str(kind))

    def _transactions(self, items, recv_ns: int, out: TickBuffer) -> None:
        if not isinstance(items, list):
            raise MalformedMessage("missing field", "content.list")
        # the whole message is checked before any of it goes out: all or nothing
        trades = []
        for t in items:
            gb = need(t, "buySellGb")
            side = SIDES.get(gb) if isinstance(gb, str) else None
            if side is None:
                raise MalformedMessage("bad side", f"buySellGb={gb!r:.40}")
            ts_us = kst_to_epoch_us(need(t, "contDtm"))
            trades.append((self.symbol_id(need(t, "symbol")), ts_us, number(t, "contPrice"),
                           number(t, "contQty"), side))
        for sid, ts_us, price, size, side in trades:
            out.trade(sid, recv_ns, ts_us * 1000, ts_us, price, size, side)

    def _snapshot(self, content, recv_ns: int, out: TickBuffer) -> None:
        symbol = need(content, "symbol")
        self.symbol_id(symbol)
        ts_us = integer(content, "datetime")
        bids = [_level(lv) for lv in _list(need(content, "bids"), "bids")]
        asks = [_level(lv) for lv in _list(need(content, "asks"), "asks")]
        self.books.setdefault(symbol, Book()).reset(bids, asks, ts_us)
        self._quote(symbol, ts_us, recv_ns, out)

    def _depth(self, content, recv_ns: int, out: TickBuffer) -> None:
        ts_us = integer(content, "datetime")
        updates = []
        for lv in _list(need(content, "list"), "list"):
            symbol, side = need(lv, "symbol"), need(lv, "orderType")
            self.symbol_id(symbol)
            if side not in ("bid", "ask"):
                raise MalformedMessage("bad side", f"orderType={side!r:.40}")
            price, size = _checked(number(lv, "price"), number(lv, "quantity"))
            updates.append((symbol, side == "bid", price, size))
        touched = []
        for symbol, is_bid, price, size in updates:
            book = self.books.get(symbol)
            if book is None or book.seeded_us is None:
                self.unseeded_depth += 1
            elif ts_us > book.seeded_us:    # older ones are in the snapshot already
                book.update(is_bid, price, size)
                if symbol not in touched:
                    touched.append(symbol)
        for symbol in touched:
            self._quote(symbol, ts_us, recv_ns, out)

    def _quote(self, symbol: str, ts_us: int, recv_ns: int, out: TickBuffer) -> None:
        book = self.books[symbol]
        top = book.top()
        if top is not None and top != book.last_top:
            book.last_top = top
            out.quote(self.symbol_id(symbol), recv_ns, ts_us * 1000, ts_us, *top)

    def stats(self) -> dict:
        return {"acks": self.acks, "unseeded_depth": self.unseeded_depth}


def kst_to_epoch_us(text) -> int:
    """"2021-06-02 08:43:34.555058" (Korean time, no zone) -> microseconds since the epoch (UTC)."""
    try:
        local = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise MalformedMessage("bad timestamp", f"{text!r:.40}") from None
    d = local - KST_EPOCH if local.tzinfo is None else local - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _list(v, key: str) -> list:
    if not isinstance(v, list):
        raise MalformedMessage("missing field", key)
    return v


def _level(lv) -> tuple[float, float]:
    """A snapshot level ["price", "quantity"]."""
    return _checked(number(lv, 0), number(lv, 1))


def _checked(price: float, size: float) -> tuple[float, float]:
    """A book level that can go into a Book: one NaN price would poison max()/min() for good."""
    if not (math.isfinite(price) and price > 0 and math.isfinite(size) and size >= 0):
        raise MalformedMessage("bad book level", f"{price} x {size}")
    return price, size


FEED = BithumbFeed
