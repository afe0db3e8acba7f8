"""What every venue feed shares: tick building with validation, message
accounting, and the VenueFeed interface a venue module implements.

Parsing is kept pure (text in, ticks out) so tests can replay captured
payloads through the real parser, and a local server can replay them
through the real connection code.
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import orjson

from shm.records import BOOK, BOOK_LEVELS, FLAG_GAP, TICK, TICK_GAP, TICK_QUOTE, TICK_TRADE

log = logging.getLogger("feed")


class MalformedMessage(ValueError):
    """A message we cannot use: counted and logged once per kind, never fatal."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def _fits(exch_ns: int, seq: int) -> bool:
    """Whether a venue's timestamp and sequence fit the record's int64/uint64 fields:
    an out-of-range value would otherwise fail take() and take the feed down."""
    return 0 <= exch_ns < 1 << 63 and 0 <= seq < 1 << 64


# the defaults of FeedConfig's guards, for a TickBuffer made without a config
MAX_AHEAD_S = 30.0        # an event time this far past its receive time is a broken clock
PRICE_BAND = 0.5          # a price this fraction above (or 1/(1+band) below) the reference
MAX_SIZE = 1e12           # base units in one trade
REANCHOR = 50             # consecutive out-of-band prices that agree: the level really moved


class PriceBand:
    """Per symbol, the last accepted price; a price outside ``[ref / (1 + band), ref *
    (1 + band)]`` is implausible (1e300, 99999999 against 0.35, 1e-300). If ``REANCHOR``
    prices in a row fall outside and agree with each other within the band, the level
    really moved (or the first reference was the bad one): the newest becomes the
    reference, and the buffer marks a gap before it (what it held back was the market's).
    The first price of a symbol is its first reference."""

    def __init__(self, band: float = PRICE_BAND, reanchor: int = REANCHOR):
        self.factor = 1.0 + band
        self.reanchor = reanchor
        self.ref: dict[int, float] = {}
        self.outside: dict[int, list[float]] = {}
        self.reanchored = False             # whether the last accept took a new level

    def accept(self, symbol_id: int, low: float, high: float | None = None) -> bool:
        """Whether a trade's price (``low``), or a quote's bid and ask (``low``, ``high``),
        lie in the band; an accepted one (its midpoint) is the new reference."""
        high = low if high is None else high
        price = (low + high) / 2
        self.reanchored = False
        ref = self.ref.get(symbol_id)
        if ref is None or (ref / self.factor <= low and high <= ref * self.factor):
            self.ref[symbol_id] = price
            self.outside.pop(symbol_id, None)
            return True
        run = self.outside.setdefault(symbol_id, [])
        run.append(price)
        del run[:-self.reanchor]
        if len(run) == self.reanchor and max(run) <= min(run) * self.factor:
            log.warning("symbol %d: %d prices in a row near %.10g, outside the band around %.10g: "
                        "taking that as the new level", symbol_id, len(run), price, ref)
            self.ref[symbol_id] = price
            self.outside.pop(symbol_id, None)
            self.reanchored = True
            return True
        return False


class TickBuffer:
    """Collects ticks from parsed messages, rejecting bad values, until flushed
    into one numpy batch for the ring. Rejected: times or ids that do not fit the
    record, event times more than ``max_ahead_s`` past their receive time, NaN or
    non-positive prices and sizes, sizes above ``max_size``, prices outside the
    symbol's `PriceBand`, crossed quotes. Each reason is counted and its first
    occurrence logged."""

    def __init__(self, max_ahead_s: float = MAX_AHEAD_S, price_band: float = PRICE_BAND,
                 max_size: float = MAX_SIZE):
        self.rows: list[tuple] = []
        self.rejected: dict[str, int] = {}
        self.max_ahead_ns = int(max_ahead_s * 1e9)
        self.band = PriceBand(price_band)
        self.max_size = max_size
        # symbol id -> its newest book since the last take_books; None (the default): the
        # venue parsers skip building books (no ``books`` table in this run)
        self.books: dict[int, tuple] | None = None

    @classmethod
    def for_feed(cls, feed) -> "TickBuffer":
        """With the guards of a FeedConfig."""
        return cls(feed.max_ahead_s, feed.price_band, feed.max_size)

    def __len__(self) -> int:
        return len(self.rows)

    def _reject(self, why: str, detail: str = "") -> None:
        n = self.rejected.get(why, 0)
        self.rejected[why] = n + 1
        if n == 0:
            log.warning("rejected a tick (%s), first of its kind%s", why, f": {detail}" if detail else "")

    def _time_ok(self, symbol_id: int, recv_ns: int, exch_ns: int, seq: int) -> bool:
        if not _fits(exch_ns, seq):
            self._reject("bad time or seq", f"symbol {symbol_id} time {exch_ns} seq {seq}")
            return False
        if exch_ns - recv_ns > self.max_ahead_ns:
            self._reject("time ahead of receipt",
                         f"symbol {symbol_id} event {(exch_ns - recv_ns) / 1e9:.0f} s after receipt")
            return False
        return True

    def trade(self, symbol_id: int, recv_ns: int, exch_ns: int, seq: int, price: float,
              size: float, side: int) -> bool:
        if not self._time_ok(symbol_id, recv_ns, exch_ns, seq):
            return False
        if not (math.isfinite(price) and price > 0):
            self._reject("bad price", f"symbol {symbol_id} price {price!r}")
            return False
        if not (math.isfinite(size) and 0 < size <= self.max_size):
            self._reject("bad size", f"symbol {symbol_id} size {size!r}")
            return False
        ref = self.band.ref.get(symbol_id)
        if not self.band.accept(symbol_id, price):
            self._reject("price out of band", f"symbol {symbol_id} price {price!r} against {ref!r}")
            return False
        if self.band.reanchored:            # the prices held back were the market's: trades lost
            self.gap(symbol_id, recv_ns)
        self.rows.append((recv_ns, exch_ns, seq, symbol_id, TICK_TRADE, side, 0, price, size,
                          math.nan, math.nan))
        return True

    def quote(self, symbol_id: int, recv_ns: int, exch_ns: int, seq: int, bid: float,
              ask: float) -> bool:
        if not self._time_ok(symbol_id, recv_ns, exch_ns, seq):
            return False
        if not (math.isfinite(bid) and math.isfinite(ask) and bid > 0 and ask > 0):
            self._reject("bad quote", f"symbol {symbol_id} bid {bid!r} ask {ask!r}")
            return False
        if bid > ask:
            self._reject("crossed quote", f"symbol {symbol_id} bid {bid!r} ask {ask!r}")
            return False
        ref = self.band.ref.get(symbol_id)
        if not self.band.accept(symbol_id, bid, ask):        # both sides: no ask of 1e300
            self._reject("quote out of band", f"symbol {symbol_id} bid {bid!r} ask {ask!r} "
                                              f"against {ref!r}")
            return False
        if self.band.reanchored:
            self.gap(symbol_id, recv_ns)
        self.rows.append((recv_ns, exch_ns, seq, symbol_id, TICK_QUOTE, 0, 0, (bid + ask) / 2,
                          0.0, bid, ask))
        return True

    def book(self, symbol_id: int, recv_ns: int, exch_ns: int, seq: int,
             bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> None:
        """The symbol's newest book (levels best first, (price, size) each; beyond
        ``BOOK_LEVELS`` cut), kept until ``take_books``: only the newest of a batch counts.
        Not checked here: the reader screens a book before it prices anything on it."""
        if self.books is None or not _fits(exch_ns, seq):
            return
        self.books[symbol_id] = (recv_ns, exch_ns, seq, bids[:BOOK_LEVELS], asks[:BOOK_LEVELS])

    def take_books(self) -> np.ndarray | None:
        """The books collected since the last call as BOOK records (None if none)."""
        if not self.books:
            return None
        out = np.zeros(len(self.books), BOOK)
        for name in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
            out[name] = math.nan
        for r, (sid, (recv_ns, exch_ns, seq, bids, asks)) in zip(out, self.books.items()):
            r["ts_origin_ns"], r["ts_exchange_ns"], r["seq"], r["symbol_id"] = recv_ns, exch_ns, seq, sid
            r["n_bids"], r["n_asks"] = len(bids), len(asks)
            if bids:
                r["bid_px"][:len(bids)], r["bid_sz"][:len(bids)] = zip(*bids)
            if asks:
                r["ask_px"][:len(asks)], r["ask_sz"][:len(asks)] = zip(*asks)
        self.books.clear()
        return out

    def gap(self, symbol_id: int, recv_ns: int) -> None:
        """Marks that data for this symbol may be missing before what follows. Where books
        are kept, the symbol's book is emptied too: a reader must not price on a book
        that the feed no longer knows to be right (the next book replaces it)."""
        if self.books is not None:
            self.books[symbol_id] = (recv_ns, recv_ns, 0, [], [])
        self.rows.append((recv_ns, recv_ns, 0, symbol_id, TICK_GAP, 0, FLAG_GAP, math.nan,
                          math.nan, math.nan, math.nan))

    def take(self) -> np.ndarray:
        out = np.zeros(len(self.rows), TICK)
        if self.rows:
            names = ("ts_origin_ns", "ts_exchange_ns", "seq", "symbol_id", "kind", "side",
                     "flags", "price", "size", "bid", "ask")
            cols = list(zip(*self.rows))
            for name, col in zip(names, cols):
                out[name] = col
        self.rows.clear()
        return out


def flush_ticks(out: TickBuffer, health: "Health") -> np.ndarray | None:
    """The ticks collected since the last flush (None if none), with the
    buffer's rejections recorded in the feed's health."""
    health.rejected = sum(out.rejected.values())
    return out.take() if len(out) else None


@dataclass
class Health:
    """Exchange health, shown in `pipeline report` and the worker's heartbeat."""
    state: str = "connecting"
    messages: int = 0
    malformed: int = 0
    reconnects: int = 0
    errors: int = 0
    last_message_ns: int = 0
    rest_calls: int = 0
    rest_retries: int = 0      # calls tried again after a 5xx, a 429 or a timeout
    rest_latency_ms: float = 0.0
    rejected: int = 0
    backfilled: int = 0
    duplicates: int = 0
    failing: int = 0           # failed attempts in a row (connects, polls) until one works
    last_error: str = ""       # the short reason of the latest of those
    malformed_kinds: dict = field(default_factory=dict)

    def as_dict(self, now_ns: int) -> dict:
        age = (now_ns - self.last_message_ns) / 1e9 if self.last_message_ns else None
        return {"state": self.state, "messages": self.messages, "malformed": self.malformed,
                "reconnects": self.reconnects, "errors": self.errors,
                "last_message_age_s": None if age is None else round(age, 3),
                "rest_calls": self.rest_calls, "rest_retries": self.rest_retries,
                "rest_latency_ms": round(self.rest_latency_ms, 2),
                "rejected": self.rejected, "backfilled": self.backfilled,
                "duplicates": self.duplicates, "failing": self.failing,
                "last_error": self.last_error if self.failing else ""}

    def malformed_message(self, err: MalformedMessage, raw) -> None:
        """Count it; log the first of each kind with the raw text cut short."""
        self.malformed += 1
        n = self.malformed_kinds.get(err.kind, 0)
        self.malformed_kinds[err.kind] = n + 1
        if n == 0:
            text = raw if isinstance(raw, str) else repr(raw)
            log.warning("malformed message (%s), first of its kind: %.200s", err, text)


# -- a failing feed, in few words and few lines -------------------------------------

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{},]+")
SUMMARY_EVERY_S = 60.0     # a feed still failing says so this often, in one line


def short_url(url: str) -> str:
    """``scheme://host:port/path`` for a log line: no user info, no query (a Binance
    stream URL's query names every stream, hundreds of characters)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "***"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def short_reason(e: BaseException, limit: int = 120) -> str:
    """A failure in a few words: the exception's class and message (its URLs cut by
    `short_url`), then the innermost cause, such as ``Connection refused``, ``Name or
    service not known`` or ``timed out``, where the message does not already say it
    (ccxt's NetworkError names only the request; what went wrong is in its cause chain,
    wrapped in a requests and a urllib3 message of a few hundred characters). At most
    ``limit`` characters."""
    def words(x: BaseException) -> str:
        if isinstance(x, OSError) and x.strerror:
            return str(x.strerror)
        return _URL.sub(lambda m: short_url(m.group(0)), " ".join(str(x).split()))

    seen, root, x = set(), None, e.__cause__ or e.__context__
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if str(x):
            root = x
        x = x.__cause__ or x.__context__
    text = words(e)
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    if root is not None:
        cause = words(root)
        if cause and cause not in text:
            text = f"{text}: {cause}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class FailureLog:
    """A failing connection or poll, logged once and then counted, not once per try.

    The first failure of a streak is a warning with its short reason (and so is a
    reason not seen yet in the streak); the same failure again is only counted, and
    every ``summary_s`` one warning says how many tries failed since (``still
    failing: 12 tries in the last 60 s, 15 in all``). The first success after a streak
    says how many tries it took (info). The count and the last reason are kept in
    ``health`` (``failing``, ``last_error``) for `pipeline status`."""

    def __init__(self, logger: logging.Logger, what: str, health: "Health | None" = None,
                 summary_s: float = SUMMARY_EVERY_S, clock=time.monotonic):
        self.log, self.what, self.health = logger, what, health
        self.summary_s, self.clock = summary_s, clock
        self.failures = 0             # tries in a row that failed
        self.reasons: set[str] = set()
        self.unsaid = 0               # failures not logged since the last line
        self.said_at = 0.0

    def failed(self, reason: str, retry_in: float, backoff_max_s: float) -> bool:
        """Count one failed try (the next in ``retry_in`` s); True if it was logged."""
        now = self.clock()
        self.failures += 1
        if self.health is not None:
            self.health.failing, self.health.last_error = self.failures, reason
        if reason not in self.reasons:
            self.reasons.add(reason)
            more = ("backing off up to %g s; further failures are counted" % backoff_max_s
                    if self.failures == 1 else f"{self.failures} failed tries in a row")
            self.log.warning("%s failed: %s; retrying in %.1f s (%s)", self.what, reason,
                             retry_in, more)
            self.unsaid, self.said_at = 0, now
            return True
        self.unsaid += 1
        if now - self.said_at >= self.summary_s:
            self.log.warning("%s still failing: %d tries in the last %.0f s, %d in all (%s); "
                             "next in %.1f s", self.what, self.unsaid, now - self.said_at,
                             self.failures, reason, retry_in)
            self.unsaid, self.said_at = 0, now
            return True
        return False

    def succeeded(self) -> None:
        if self.failures:
            self.log.info("%s works again after %d failed tries", self.what, self.failures)
        self.failures, self.unsaid = 0, 0
        self.reasons.clear()
        if self.health is not None:
            self.health.failing, self.health.last_error = 0, ""


def backoff_delay(failures: int, base_s: float, max_s: float) -> float:
    """The wait before the next try after ``failures`` failed ones in a row: ``base_s``
    doubling per failure, at most ``max_s``."""
    return min(max_s, base_s * 2 ** max(0, failures - 1))


class VenueFeed:
    """One venue's websocket protocol. Subclasses set ``venue`` and implement
    ``native``, ``url``, ``subscribe_messages`` and ``parse``."""

    venue = ""
    default_ws_url = ""
    default_rest_url = ""

    def __init__(self, cfg, symbol_ids: dict[str, int]):
        self.cfg = cfg                                   # FeedConfig
        self.symbol_ids = symbol_ids                     # "BTC/USDT" -> registry id
        self.by_native = {self.native(s): i for s, i in symbol_ids.items()}
        self.ws_url = cfg.ws_url or self.default_ws_url
        self.rest_url = cfg.rest_url or self.default_rest_url
        self.rest = None          # a RestClient, set by the feed process (VenueSource)
        self.health = Health()    # replaced by the feed process's own, so venues can count
                                  # backfilled trades and duplicates there

    def native(self, symbol: str) -> str:
        """"BTC/USDT" -> the venue's own name for the market."""
        raise NotImplementedError

    def url(self) -> str:
        return self.ws_url

    def subscribe_messages(self) -> list[str]:
        return []

    def parse(self, raw: str | bytes, recv_ns: int, out: TickBuffer) -> None:
        """Turn one message into ticks; raise MalformedMessage for what can't be used."""
        raise NotImplementedError

    def resume(self, native: str, trade) -> None:
        """A restarted feed process: ``trade`` (a TICK record) is the newest trade of
        ``native`` its predecessor passed on, read back from the ticks ring. The venue
        takes it as the last trade seen, so the first connection backfills from there."""

    def on_connected(self, out: TickBuffer, recv_ns: int, reconnect: bool) -> None:
        """After (re)connecting and subscribing: snapshots, gap markers, backfill."""
        if reconnect:
            for sid in self.symbol_ids.values():
                out.gap(sid, recv_ns)

    def try_rest(self, what: str, method: str, params: dict):
        """One REST call for a backfill, or None if it failed. The failure is
        logged (RestClient has counted it in health.errors) and left at that:
        the gap marker has gone out already, and a reconnect never waits on a
        backfill that cannot be had."""
        try:
            return self.rest.call(method, params, retries=REST_RETRIES)
        except Exception as e:  # network, HTTP error, the venue's error answer
            log.warning("%s %s failed: %s", self.venue, what, short_reason(e))
            return None

    def symbol_id(self, native: str) -> int:
        try:
            return self.by_native[native]
        except (KeyError, TypeError):   # TypeError: not even a string (unhashable)
            raise MalformedMessage("unknown symbol", str(native)[:40]) from None

    def stats(self) -> dict:
        return {}


SEEN_TRADES = 10_000   # keys kept per symbol: more than one backfill brings
REST_RETRIES = 3       # a backfill page is tried again after a 5xx, a 429 or a timeout


class SeenTrades:
    """The trades a feed has passed on, per symbol: the keys of the most recent
    ``keep`` and the newest trade time. A trade that comes again (a REST
    backfill overlapping what the websocket delivered, before the drop or on
    the new connection) is recognised by its key and dropped; the newest time
    is where a backfill after a reconnect starts. Add only trades that went
    out: one the TickBuffer refused is no reason to drop a repeat.

    A key is whatever names a trade at the venue (a trade id; for a venue
    without one, its time, price and size); times are in the venue's unit."""

    def __init__(self, keep: int = SEEN_TRADES):
        self.keep = keep
        self.newest: dict[str, int] = {}            # native -> newest trade time seen
        self._order: dict[str, deque] = {}          # native -> keys, oldest first
        self._keys: dict[str, set] = {}

    def has(self, native: str, key) -> bool:
        keys = self._keys.get(native)
        return keys is not None and key in keys

    def add(self, native: str, key, ts: int) -> None:
        """Remember a trade passed on."""
        keys = self._keys.get(native)
        if keys is None:
            keys = self._keys[native] = set()
            self._order[native] = deque()
        elif key in keys:
            return
        order = self._order[native]
        if len(order) >= self.keep:
            keys.discard(order.popleft())
        order.append(key)
        keys.add(key)
        if native not in self.newest or ts > self.newest[native]:
            self.newest[native] = ts

    def clear(self) -> None:
        self.newest.clear()
        self._order.clear()
        self._keys.clear()


# -- helpers for venue parsers (shared so each venue module stays short) ------------

def decode_json(raw: str | bytes):
    """One frame as JSON. Some venues (Upbit) send binary frames of UTF-8 JSON,
    others text: both are accepted. Undecodable frames are MalformedMessage."""
    try:
        return orjson.loads(raw)           # about twice the speed of the json module
    except (ValueError, TypeError) as e:   # orjson.JSONDecodeError is a ValueError
        raise MalformedMessage("bad json", str(e)) from None


def need(obj, key):
    """obj[key], or MalformedMessage("missing field") when obj has no such key
    (or is not even a container): a venue changing its format must not crash the feed."""
    try:
        return obj[key]
    except (KeyError, IndexError, TypeError):
        raise MalformedMessage("missing field", str(key)) from None


def to_number(v, what: str = "number") -> float:
    """A JSON number or a decimal string as a float (venues send both); a boolean, a
    container or a non-numeric string is MalformedMessage (``float(True)`` would be a
    price of 1.0). NaN passes through on purpose: TickBuffer rejects it and counts it."""
    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
        try:
            return float(v)
        except (ValueError, OverflowError):
            pass
    raise MalformedMessage("bad number", f"{what}={v!r:.40}")


def number(obj, key) -> float:
    """The numeric field ``obj[key]`` (see `to_number`)."""
    return to_number(need(obj, key), str(key))


MAX_EXACT = 1 << 53        # a float is an exact integer only below this


def to_integer(v, what: str = "integer") -> int:
    """An integer sent as a JSON integer, a string of digits or an integral float small
    enough to be exact; anything else (a boolean, 1.2e29, "12.5") is MalformedMessage,
    so an id or a time never comes from a rounded or absurd number."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer() and abs(v) < MAX_EXACT:
        return int(v)
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
    raise MalformedMessage("bad integer", f"{what}={v!r:.40}")


def integer(obj, key) -> int:
    """The integer field ``obj[key]`` (a time, a sequence number; see `to_integer`)."""
    return to_integer(need(obj, key), str(key))


def requested_channels(cfg, supported: tuple[str, ...]) -> set[str]:
    """FeedConfig.channels checked against what the venue module can subscribe to:
    a typo is a startup error, not a feed that silently never quotes."""
    wanted = set(cfg.channels)
    unknown = wanted - set(supported)
    if unknown or not wanted:
        raise ValueError(f"feed {cfg.name!r}: channels must be some of {', '.join(supported)}, "
                         f"got {cfg.channels!r}")
    return wanted
