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

Backfill: after a reconnect, each symbol that traded before the drop gets the
legacy REST history (``GET /public/transaction_history/BTC_KRW?count=100``:
the latest trades, ``transaction_date`` in Korean time to the whole second,
``type`` bid (a buy, as "2" on the websocket) or ask, ``units_traded``,
``price``). Nothing names a trade on both sides (the websocket has no trade
number; ``cont_no``, where a REST answer has one, never appears on it), and
REST times are whole seconds where the websocket's are microseconds: within
one second the two cannot be told apart. So it is kept conservative:

* only rows strictly newer than the newest trade time passed on are sent: a
  trade missed in the same second as the last one seen is left to the gap
  marker rather than risk sending a seen one twice;
* a backfilled trade that the new connection delivers too (it happened after
  the subscription, before the REST answer) is known by (second, price, size,
  side) and dropped as a duplicate. A new trade alike in all four in that
  second would be dropped with it: rarer, and a lost trade is what the gap
  marker already warns of, where a doubled one would go unnoticed.

The websocket's own repeats are known by (microsecond time, price, size, side).
"""
from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from datetime import datetime, timedelta, timezone

from shm.records import BOOK_LEVELS, SIDE_BUY, SIDE_SELL

from pipeline.config import FEED_CHANNELS

from .base import (MalformedMessage, SeenTrades, TickBuffer, VenueFeed, decode_json, integer, need,
                   number, requested_channels)

KST = timezone(timedelta(hours=9))
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
KST_EPOCH = datetime(1970, 1, 1, 9)   # the epoch on a Korean wall clock (KST has no DST)
SIDES = {"2": SIDE_BUY, "1": SIDE_SELL}
REST_SIDES = {"bid": SIDE_BUY, "ask": SIDE_SELL}
BACKFILL_COUNT = 100    # the most transaction_history returns
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
        self.channels = requested_channels(cfg, FEED_CHANNELS["bithumb"])
        self.books: dict[str, Book] = {}
        self.acks = 0
        self.unseeded_depth = 0    # depth updates that came before any snapshot: dropped
        self.books_distrusted = 0  # books dropped until a snapshot (a message lost, a crossed top)
        self.seen = SeenTrades()   # by (us, price, size, side); times in us
        # per symbol, (second, price, size, side) of the last backfill's trades: the
        # websocket may bring them again
        self.backfilled: dict[str, Counter] = {}

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

    def resume(self, native: str, trade) -> None:
        ts_us = int(trade["ts_exchange_ns"]) // 1000
        key = (ts_us, float(trade["price"]), float(trade["size"]), int(trade["side"]))
        self.seen.add(native, key, ts_us)

    def on_connected(self, out: TickBuffer, recv_ns: int, reconnect: bool) -> None:
        """After a reconnect: books forgotten, gap markers (base), missed trades over REST."""
        self.books.clear()    # whatever we held may have changed while we were away
        super().on_connected(out, recv_ns, reconnect)
        if reconnect and self.rest is not None and "trades" in self.channels:
            for symbol in list(self.seen.newest):
                self._backfill(symbol, recv_ns, out)

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
            symbol = need(t, "symbol")
            self.symbol_id(symbol)
            ts_us = kst_to_epoch_us(need(t, "contDtm"))
            trades.append((symbol, (ts_us, number(t, "contPrice"), number(t, "contQty"), side)))
        for symbol, key in trades:
            ts_us, price, size, side = key
            if self._repeat(symbol, key):
                self.health.duplicates += 1
            elif out.trade(self.by_native[symbol], recv_ns, ts_us * 1000, ts_us, price, size, side):
                self.seen.add(symbol, key, ts_us)

    def _repeat(self, symbol: str, key: tuple) -> bool:
        """Whether a websocket trade (us, price, size, side) went out already: on the
        websocket, or in the last backfill (known there to the second only)."""
        if self.seen.has(symbol, key):
            return True
        ts_us, price, size, side = key
        pending = self.backfilled.get(symbol)
        second = (ts_us // 1_000_000, price, size, side)
        if pending and pending[second] > 0:
            pending[second] -= 1
            self.seen.add(symbol, key, ts_us)
            return True
        return False

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
        try:
            for lv in _list(need(content, "list"), "list"):
                symbol, side = need(lv, "symbol"), need(lv, "orderType")
                self.symbol_id(symbol)
                if side not in ("bid", "ask"):
                    raise MalformedMessage("bad side", f"orderType={side!r:.40}")
                price, size = _checked(number(lv, "price"), number(lv, "quantity"))
                updates.append((symbol, side == "bid", price, size))
        except MalformedMessage:
            # the message is dropped, and with it updates the books needed (Bithumb numbers
            # nothing to resync by): the books its levels name (every one, where its list is
            # unreadable) wait for the next snapshot, with a gap
            levels = content.get("list") if isinstance(content, dict) else None
            named = ({lv.get("symbol") for lv in levels if isinstance(lv, dict)} if isinstance(levels, list)
                     else set(self.books))
            for symbol in [s for s in self.books if s in named]:
                self._distrust(symbol, recv_ns, out)
            raise
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
        if out.books is not None:          # a run with a books table: the top levels too
            out.book(self.symbol_id(symbol), recv_ns, ts_us * 1000, ts_us,
                     heapq.nlargest(BOOK_LEVELS, book.bids.items()),
                     heapq.nsmallest(BOOK_LEVELS, book.asks.items()))
        top = book.top()
        if top is not None and top[0] > top[1]:     # crossed: an update was missed; wait for a snapshot
            self._distrust(symbol, recv_ns, out)
            return
        if top is not None and top != book.last_top:
            book.last_top = top
            out.quote(self.symbol_id(symbol), recv_ns, ts_us * 1000, ts_us, *top)

    def _distrust(self, symbol: str, recv_ns: int, out: TickBuffer) -> None:
        """A book known to be wrong: no longer updated or quoted until the next snapshot
        seeds it; a gap marks it (and empties it in the books table)."""
        book = self.books.get(symbol)
        if book is None or book.seeded_us is None:
            return
        book.seeded_us, book.last_top = None, None
        self.books_distrusted += 1
        out.gap(self.symbol_id(symbol), recv_ns)

    def _backfill(self, symbol: str, recv_ns: int, out: TickBuffer) -> None:
        """The rows of the REST history strictly newer than the newest trade
        passed on, oldest first (see the module's docstring for why so strict)."""
        base, quote = symbol.split("_")
        reply = self.try_rest(f"{symbol} trade backfill",
                              "publicGetPublicTransactionHistoryBaseIdQuoteId",
                              {"baseId": base, "quoteId": quote, "count": BACKFILL_COUNT})
        if reply is None:
            return
        rows = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(rows, list):
            self.health.malformed_message(MalformedMessage("bad transaction_history reply"), reply)
            return
        trades = []
        for row in rows:
            try:
                trades.append(_history_trade(row))
            except MalformedMessage as e:
                self.health.malformed_message(e, row)
        if trades and trades[0][0] > trades[-1][0]:
            trades.reverse()                 # newest first, as Bithumb documents it
        trades.sort(key=lambda t: t[0])      # stable: the venue's order within a second
        since = self.seen.newest[symbol]
        pending = self.backfilled[symbol] = Counter()
        sid = self.symbol_id(symbol)
        for ts_us, price, size, side in trades:
            if ts_us > since and out.trade(sid, recv_ns, ts_us * 1000, ts_us, price, size, side):
                self.health.backfilled += 1
                pending[(ts_us // 1_000_000, price, size, side)] += 1
                self.seen.newest[symbol] = ts_us     # the next backfill starts after it

    def stats(self) -> dict:
        return {"acks": self.acks, "unseeded_depth": self.unseeded_depth, "books_distrusted": self.books_distrusted}


def kst_to_epoch_us(text) -> int:
    """"2021-06-02 08:43:34.555058" (Korean time, no zone) -> microseconds since the epoch (UTC)."""
    try:
        local = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise MalformedMessage("bad timestamp", f"{text!r:.40}") from None
    d = local - KST_EPOCH if local.tzinfo is None else local - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _history_trade(row) -> tuple[int, float, float, int]:
    """A transaction_history row as (time us, price, size, side)."""
    kind = need(row, "type")
    side = REST_SIDES.get(kind) if isinstance(kind, str) else None
    if side is None:
        raise MalformedMessage("bad side", f"type={kind!r:.40}")
    when = need(row, "transaction_date")
    if isinstance(when, str) and when.find(":") - when.find(" ") == 2:
        when = when.replace(" ", " 0", 1)    # an hour without its leading zero, as ccxt has seen
    return kst_to_epoch_us(when), number(row, "price"), number(row, "units_traded"), side


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
