"""Binance spot: aggregate trades, best bid/ask and a local L2 order book from
depth diffs, over one combined-stream websocket.

Subscription is by URL (``{ws_url}/stream?streams=nknusdt@aggTrade/...``), the
way Binance documents combined streams, so ``subscribe_messages()`` is empty
and a test server must expect no subscribe message (``expect_subscribe=0``).

Channels (``FeedConfig.channels``):

* ``trades`` -> ``<sym>@aggTrade``: TICK_TRADE, seq = aggregate trade id. The
  last id per symbol is kept so that after a reconnect the missed trades are
  fetched over REST (``/api/v3/aggTrades?fromId=``) and the websocket's
  repeats of them are dropped as duplicates.
* ``quotes`` -> ``<sym>@bookTicker``: TICK_QUOTE, seq = book update id.
* ``depth`` -> ``<sym>@depth@100ms``: a local book per symbol (``L2Book``),
  kept with Binance's documented procedure: buffer diffs, fetch a REST
  snapshot (``/api/v3/depth?limit=1000``), drop diffs with ``u <=
  lastUpdateId``, the first applied diff must have ``U <= lastUpdateId+1 <=
  u``, every later one ``U == previous u + 1``. A gap emits TICK_GAP for the
  symbol and resyncs from a new snapshot. A TICK_QUOTE goes out whenever the
  top of the book changes.

The snapshot is fetched when a symbol's first diff arrives (then it is
already buffered), not in ``on_connected``: one symbol without diffs or a
failing snapshot then never holds up the others or the connection.
"""
from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shm.records import BOOK_LEVELS, SIDE_BUY, SIDE_SELL

from pipeline.config import FEED_CHANNELS

from .base import (REST_RETRIES, MalformedMessage, TickBuffer, VenueFeed, decode_json, integer,
                   number, requested_channels, short_reason, to_integer, to_number)

log = logging.getLogger("feed.binance")

CHANNEL_STREAMS = {"trades": "aggTrade", "quotes": "bookTicker", "depth": "depth@100ms"}
DEPTH_LIMIT = 1000          # snapshot levels per side (as Binance documents for a local book)
BACKFILL_LIMIT = 1000       # aggTrades per REST page (Binance's maximum)
BACKFILL_MAX_PAGES = 10     # per symbol and reconnect: beyond that, the gap marker says it all
MAX_PENDING_DIFFS = 2000    # diffs held per symbol while waiting for a snapshot

Levels = list[tuple[float, float]]


class SequenceGap(Exception):
    """A depth diff does not follow the book's last update id."""


class L2Book:
    """Price -> size per side, with the update id it is valid at.

    The best price of each side is cached and only recomputed when that level
    is removed, so a diff costs O(levels in the diff)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.last_update_id: int | None = None
        self.bridged = False             # a diff has been applied on top of the snapshot
        self._best_bid: float | None = None
        self._best_ask: float | None = None

    @property
    def ready(self) -> bool:
        return self.last_update_id is not None

    def apply_snapshot(self, last_update_id: int, bids: Iterable, asks: Iterable) -> None:
        self.clear()
        self.bids = {float(p): float(q) for p, q in bids if float(q) > 0}
        self.asks = {float(p): float(q) for p, q in asks if float(q) > 0}
        self._best_bid = max(self.bids, default=None)
        self._best_ask = min(self.asks, default=None)
        self.last_update_id = int(last_update_id)

    def apply_diff(self, first_id: int, final_id: int, bids: Levels, asks: Levels) -> bool:
        """Apply one depthUpdate (``U``, ``u``). False if the book already holds it
        (``u <= lastUpdateId``); SequenceGap if updates are missing in between."""
        if self.last_update_id is None:
            raise SequenceGap("no snapshot")
        if final_id <= self.last_update_id:
            return False
        expected = self.last_update_id + 1
        if first_id > expected or (self.bridged and first_id != expected):
            raise SequenceGap(f"expected update {expected}, got {first_id}..{final_id}")
        self._best_bid = self._update(self.bids, bids, self._best_bid, max)
        self._best_ask = self._update(self.asks, asks, self._best_ask, min)
        self.last_update_id = final_id
        self.bridged = True
        return True

    def apply_delta(self, update_id: int, bids: Levels, asks: Levels) -> None:
        """Apply a delta of a venue that numbers each message one past the last (Bybit's
        ``u``); SequenceGap if one is missing or there is no snapshot."""
        if self.last_update_id is None:
            raise SequenceGap("no snapshot")
        if update_id != self.last_update_id + 1:
            raise SequenceGap(f"expected update {self.last_update_id + 1}, got {update_id}")
        self._best_bid = self._update(self.bids, bids, self._best_bid, max)
        self._best_ask = self._update(self.asks, asks, self._best_ask, min)
        self.last_update_id = update_id
        self.bridged = True

    @staticmethod
    def _update(side: dict[float, float], levels: Levels, best: float | None, pick) -> float | None:
        lost_best = False
        for price, size in levels:
            if size == 0:
                side.pop(price, None)
                lost_best |= price == best
            else:
                side[price] = size
                best = price if best is None else pick(best, price)
        return pick(side, default=None) if lost_best else best

    def best_bid(self) -> float | None:
        return self._best_bid

    def best_ask(self) -> float | None:
        return self._best_ask

    def crossed(self) -> bool:
        return (self._best_bid is not None and self._best_ask is not None
                and self._best_bid >= self._best_ask)

    def top(self, n: int = 5) -> tuple[Levels, Levels]:
        """The best ``n`` levels of each side, best first."""
        bids = sorted(self.bids.items(), key=lambda kv: -kv[0])[:n]
        asks = sorted(self.asks.items())[:n]
        return bids, asks


@dataclass
class Diff:
    first_id: int
    final_id: int
    event_ns: int
    bids: Levels
    asks: Levels


@dataclass
class DepthState:
    """One symbol's book, the diffs held until a snapshot bridges them, and the
    top of book last sent (to send a quote only when it changes)."""
    book: L2Book = field(default_factory=L2Book)
    pending: deque = field(default_factory=lambda: deque(maxlen=MAX_PENDING_DIFFS))
    top: tuple[float, float] | None = None
    failing: bool = False                # the last snapshot request failed (log once)

    def reset(self) -> None:
        self.book.clear()
        self.pending.clear()
        self.top = None


def _levels(raw) -> Levels:
    """[["price", "qty"], ...] -> floats; anything unusable is malformed (before
    the book is touched, so a bad diff never half-applies)."""
    out = []
    for p, q in raw:
        price, size = to_number(p, "price"), to_number(q, "qty")
        if not (math.isfinite(price) and math.isfinite(size) and price > 0 and size >= 0):
            raise MalformedMessage("bad depth level", f"{p} {q}")
        out.append((price, size))
    return out


class BinanceFeed(VenueFeed):
    venue = "binance"
    default_ws_url = "wss://stream.binance.com:9443"
    default_rest_url = "https://api.binance.com"

    def __init__(self, cfg, symbol_ids: dict[str, int]):
        super().__init__(cfg, symbol_ids)
        self.channels = requested_channels(cfg, FEED_CHANNELS["binance"])
        self.depth = {n: DepthState() for n in self.by_native} if "depth" in self.channels else {}
        self.last_trade_id: dict[str, int] = {}
        self.counts = {"ignored": 0, "depth_updates": 0, "depth_stale": 0, "depth_gaps": 0, "trade_id_gaps": 0,
                       "snapshots": 0}
        self._gap_after: dict[str, int] = {}       # native -> the last trade id a gap was marked after
        self._handlers = {"aggTrade": self._on_trade, "bookTicker": self._on_book_ticker,
                          "depthUpdate": self._on_depth}

    # -- subscription -----------------------------------------------------------
    @staticmethod
    def native(symbol: str) -> str:
        return symbol.replace("/", "").upper()

    def url(self) -> str:
        """The combined-stream URL: ``ws_url``'s path ends in ``/stream`` and ``streams``
        joins the query it may already carry (a testnet token, say)."""
        parts = urlsplit(self.ws_url)
        path = parts.path.rstrip("/")
        for suffix in ("/stream", "/ws"):
            path = path.removesuffix(suffix)
        streams = [f"{n.lower()}@{CHANNEL_STREAMS[c]}" for c in self.cfg.channels
                   for n in self.by_native]
        query = parse_qsl(parts.query, keep_blank_values=True) + [("streams", "/".join(streams))]
        return urlunsplit((parts.scheme, parts.netloc, f"{path}/stream",
                           urlencode(query, safe="@/"), ""))

    # -- parsing ------------------------------------------------------------------
    def parse(self, raw: str | bytes, recv_ns: int, out: TickBuffer) -> None:
        msg = decode_json(raw)
        if not isinstance(msg, dict):
            raise MalformedMessage("not an object", type(msg).__name__)
        if "stream" not in msg:
            if "result" in msg and "id" in msg:   # reply to a (un)subscribe request
                return
            raise MalformedMessage("unexpected message", ",".join(sorted(msg))[:80])
        stream, data = msg["stream"], msg.get("data")
        if not isinstance(stream, str) or not isinstance(data, dict):
            raise MalformedMessage("bad envelope", f"stream={stream!r}")
        kind = self._stream_kind(stream)
        if kind is None:
            self.counts["ignored"] += 1
            return
        try:
            self._handlers[kind](data, recv_ns, out)
        except MalformedMessage:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise MalformedMessage(f"bad {kind}", f"{type(e).__name__}: {e}") from None

    def _stream_kind(self, stream: str) -> str | None:
        """The handler for a stream name, None for a stream we read past (klines,
        channels not configured); an unknown stream is malformed."""
        _, _, name = stream.partition("@")
        if name == "aggTrade":
            return "aggTrade" if "trades" in self.channels else None
        if name == "bookTicker":
            return "bookTicker" if "quotes" in self.channels else None
        if name == "depth" or name.startswith("depth@"):
            return "depthUpdate" if "depth" in self.channels else None
        if name.startswith("kline_"):
            return None
        raise MalformedMessage("unknown stream", stream[:80])

    # -- trades -----------------------------------------------------------------
    def _on_trade(self, d: dict, recv_ns: int, out: TickBuffer) -> None:
        self._trade(d["s"], d, recv_ns, out)

    def _trade(self, native: str, d: dict, recv_ns: int, out: TickBuffer) -> bool:
        """One aggregate trade (websocket event or REST row, same keys); False if
        its id was seen already."""
        sid = self.symbol_id(native)
        tid = integer(d, "a")
        maker = d["m"]
        if not isinstance(maker, bool):
            raise MalformedMessage("bad aggTrade", f"m={maker!r}")
        price, size, ts_ms = number(d, "p"), number(d, "q"), integer(d, "T")
        last = self.last_trade_id.get(native)
        if last is not None and tid <= last:
            self.health.duplicates += 1
            return False
        if last is not None and tid > last + 1 and self._gap_after.get(native) != last:
            # aggregate ids are consecutive: trades went missing (marked once per trade taken)
            self._gap_after[native] = last
            self.counts["trade_id_gaps"] += 1
            out.gap(sid, recv_ns)
        # buyer is the maker => the seller crossed the spread. Remembered only once the
        # buffer took it: a rejected id (out of range, say) must not shadow later trades
        if not out.trade(sid, recv_ns, ts_ms * 1_000_000, tid, price, size,
                         SIDE_SELL if maker else SIDE_BUY):
            return False
        self.last_trade_id[native] = tid
        return True

    # -- quotes -----------------------------------------------------------------
    def _on_book_ticker(self, d: dict, recv_ns: int, out: TickBuffer) -> None:
        # spot bookTicker carries no event time: the receive time stands in
        out.quote(self.symbol_id(d["s"]), recv_ns, recv_ns, integer(d, "u"), number(d, "b"),
                  number(d, "a"))

    # -- depth ------------------------------------------------------------------
    def _on_depth(self, d: dict, recv_ns: int, out: TickBuffer) -> None:
        native = d["s"]
        sid = self.symbol_id(native)
        diff = Diff(integer(d, "U"), integer(d, "u"), integer(d, "E") * 1_000_000, _levels(d["b"]),
                    _levels(d["a"]))
        st = self.depth[native]
        if not st.book.ready:
            st.pending.append(diff)
            self._resync(native, sid, st, recv_ns, out)
            return
        if self._apply(native, sid, st, diff, recv_ns, out):
            self._resync(native, sid, st, recv_ns, out)

    def _apply(self, native: str, sid: int, st: DepthState, diff: Diff, recv_ns: int,
               out: TickBuffer) -> bool:
        """Apply one diff to a ready book; True if a gap was found (the book is
        then cleared and the diff kept for the next snapshot)."""
        try:
            applied = st.book.apply_diff(diff.first_id, diff.final_id, diff.bids, diff.asks)
            if st.book.crossed():
                raise SequenceGap(f"book crossed at update {diff.final_id}")
        except SequenceGap as e:
            log.warning("%s depth: %s; resyncing from a new snapshot", native, e)
            self.counts["depth_gaps"] += 1
            out.gap(sid, recv_ns)
            st.reset()
            st.pending.append(diff)
            return True
        if not applied:
            self.counts["depth_stale"] += 1
            return False
        self.counts["depth_updates"] += 1
        self._emit_top(sid, st, diff.event_ns, diff.final_id, recv_ns, out)
        return False

    def _resync(self, native: str, sid: int, st: DepthState, recv_ns: int,
                out: TickBuffer) -> None:
        """Fetch a snapshot and replay the held diffs onto it. If the snapshot is
        older than the first held diff, or REST is unavailable or out of tokens
        right now, the diffs stay held and the next diff tries again: the feed
        loop never blocks on the rate limiter."""
        if self.rest is None or self.rest.limiter.delay() > 0:
            return
        try:
            snap = self.rest.call("publicGetDepth", {"symbol": native, "limit": DEPTH_LIMIT})
            last_id = to_integer(snap["lastUpdateId"], "lastUpdateId")
            bids, asks = _levels(snap["bids"]), _levels(snap["asks"])
        except Exception as e:  # network, HTTP error or a bad body: retried on the next diff
            if not st.failing:
                log.warning("%s depth snapshot failed: %s", native, short_reason(e))
            st.failing = True
            return
        st.failing = False
        self.counts["snapshots"] += 1
        held = [d for d in st.pending if d.final_id > last_id]
        if held and held[0].first_id > last_id + 1:
            return          # snapshot older than the stream we hold: fetch again
        self.counts["depth_stale"] += len(st.pending) - len(held)
        st.pending.clear()
        st.book.apply_snapshot(last_id, bids, asks)
        self._emit_top(sid, st, recv_ns, last_id, recv_ns, out)
        for i, diff in enumerate(held):
            if self._apply(native, sid, st, diff, recv_ns, out):
                st.pending.extend(held[i + 1:])   # a gap inside what we held
                return

    def _emit_top(self, sid: int, st: DepthState, exch_ns: int, seq: int, recv_ns: int,
                  out: TickBuffer) -> None:
        if out.books is not None:          # a run with a books table: the top levels too
            out.book(sid, recv_ns, exch_ns, seq, heapq.nlargest(BOOK_LEVELS, st.book.bids.items()),
                     heapq.nsmallest(BOOK_LEVELS, st.book.asks.items()))
        bid, ask = st.book.best_bid(), st.book.best_ask()
        if bid is None or ask is None or (bid, ask) == st.top:
            return
        st.top = (bid, ask)
        out.quote(sid, recv_ns, exch_ns, seq, bid, ask)

    # -- (re)connection -----------------------------------------------------------
    def resume(self, native: str, trade) -> None:
        self.last_trade_id[native] = int(trade["seq"])          # seq is the aggregate trade id

    def on_connected(self, out: TickBuffer, recv_ns: int, reconnect: bool) -> None:
        """After a reconnect: gap markers (base), books resync from fresh snapshots
        as their diffs arrive, and missed trades come over REST."""
        super().on_connected(out, recv_ns, reconnect)
        if not reconnect:
            return
        for st in self.depth.values():
            st.reset()
        if self.rest is not None and "trades" in self.channels:
            for native in list(self.last_trade_id):
                self._backfill(native, recv_ns, out)

    def _backfill(self, native: str, recv_ns: int, out: TickBuffer) -> None:
        """Aggregate trades after the last id seen, page by page. A failure leaves
        the gap marker to tell downstream; it never blocks the reconnect."""
        for _ in range(BACKFILL_MAX_PAGES):
            from_id = self.last_trade_id[native] + 1
            try:
                rows = self.rest.call("publicGetAggTrades", {"symbol": native, "fromId": from_id,
                                                             "limit": BACKFILL_LIMIT},
                                      retries=REST_RETRIES)
            except Exception as e:
                log.warning("%s trade backfill from id %d failed: %s", native, from_id,
                            short_reason(e))
                return
            if not isinstance(rows, list):
                self.health.malformed_message(MalformedMessage("bad aggTrades reply"), rows)
                return
            for row in rows:
                try:
                    if self._trade(native, row, recv_ns, out):
                        self.health.backfilled += 1
                except (MalformedMessage, KeyError, TypeError, ValueError) as e:
                    err = e if isinstance(e, MalformedMessage) else MalformedMessage(
                        "bad aggTrades row", f"{type(e).__name__}: {e}")
                    self.health.malformed_message(err, row)
            if len(rows) < BACKFILL_LIMIT:
                return

    def stats(self) -> dict:
        return dict(self.counts)


FEED = BinanceFeed
