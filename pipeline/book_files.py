"""Recorded order books for `pipeline backtest`: a file of L2 books beside a symbol's
trades or candles, so that market orders walk the depth the venue showed at the time
(the paper broker's L2 path, as live with a depth feed) instead of the top of book plus
a constant slippage.

Two layouts, one JSON message a line (``.jsonl``, or ``.jsonl.gz``):

* snapshots as ccxt returns them (``fetch_order_book`` / ``watch_order_book``, what
  most recorders save): ``{"timestamp": ms, "bids": [[price, size], ...], "asks":
  [...]}``; ``timestamp`` may also be ISO 8601 *with* a zone (or ``datetime``, as ccxt
  writes it). A time without a zone is refused: a recorder's local time read as UTC
  would move every book by hours against the trades.
* Bybit v5 order-book archives (``orderbook.N.SYMBOL``, as its public archive serves
  them): a ``snapshot``, then ``delta`` messages numbered ``u`` one after another, whose
  levels replace the book's (size 0 removes one).

Every message becomes a BOOK record (shm/records.py: the 10 best levels a side, the
message's time). A snapshot line with a NaN or non-positive price, a negative size or a
crossed book is skipped and counted; so is a book a delta leaves crossed (the deltas go
on). What cannot be read around is refused with the line: a malformed line, a delta
before any snapshot or after a missing one, time going backwards.
"""
from __future__ import annotations

import gzip
import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from shm.records import BOOK, BOOK_LEVELS
from workers.venues.binance import L2Book, SequenceGap

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def is_book_file(path: str | Path) -> bool:
    """A JSON Lines file (the layouts above), by its name."""
    name = Path(path).name
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def read_books(path: str | Path, symbol_id: int) -> tuple[np.ndarray, dict]:
    """BOOK records of a book file, in time order, and what reading it found
    (``books``, ``bad_rows``, ``crossed``, ``layout``). ValueError names the line of
    what cannot be read."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    rows: list[tuple[int, list, list, int]] = []
    stats = {"books": 0, "bad_rows": 0, "crossed": 0, "layout": ""}
    book: L2Book | None = None
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"line {n}: not JSON ({e.msg})") from None
            if not isinstance(msg, dict):
                raise ValueError(f"line {n}: not a JSON object")
            try:
                if "topic" in msg and "data" in msg:
                    stats["layout"] = stats["layout"] or "bybit"
                    book = _bybit(msg, book, rows, stats)
                else:
                    stats["layout"] = stats["layout"] or "snapshots"
                    _snapshot(msg, rows, stats)
            except (KeyError, TypeError, ValueError, SequenceGap) as e:
                text = f"missing {e}" if isinstance(e, KeyError) else str(e)
                raise ValueError(f"line {n}: {text}") from None
            if len(rows) > 1 and rows[-1][0] < rows[-2][0]:
                raise ValueError(f"line {n}: time goes backwards ({rows[-1][0]} after {rows[-2][0]} ns)")
    out = np.zeros(len(rows), BOOK)
    for name in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
        out[name] = math.nan
    for r, (ts, bids, asks, seq) in zip(out, rows):
        r["ts_origin_ns"] = r["ts_exchange_ns"] = ts
        r["seq"], r["symbol_id"] = seq, symbol_id
        r["n_bids"], r["n_asks"] = len(bids), len(asks)
        r["bid_px"][:len(bids)], r["bid_sz"][:len(bids)] = zip(*bids)
        r["ask_px"][:len(asks)], r["ask_sz"][:len(asks)] = zip(*asks)
    stats["books"] = len(out)
    return out, stats


def _time_ns(value) -> int:
    """ms since the epoch, or ISO 8601 with a zone, as ns."""
    if isinstance(value, bool):
        raise ValueError(f"timestamp {value!r} is not a time")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"timestamp {value!r} is not a time")
        return value * 1_000_000
    if isinstance(value, float):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"timestamp {value!r} is not a time")
        return int(round(value * 1e3)) * 1000
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp {value!r} is neither ms nor ISO 8601") from None
        if t.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no zone: give ms since the epoch or add the "
                             f"recorder's zone (e.g. {value}+09:00 for Korean time)")
        return (t - EPOCH) // timedelta(microseconds=1) * 1000
    raise ValueError(f"timestamp {value!r} is not a time")


def _levels(raw, best_first_desc: bool) -> list[tuple[float, float]]:
    """[[price, size], ...] as floats, best first, zero sizes left out; ValueError for
    a NaN, a non-positive price or a negative size."""
    out = [(price, size) for price, size in _raw(raw) if size > 0]
    out.sort(key=lambda lv: -lv[0] if best_first_desc else lv[0])
    return out


def _keep(rows: list, ts: int, bids: list, asks: list, seq: int, stats: dict) -> None:
    bids, asks = bids[:BOOK_LEVELS], asks[:BOOK_LEVELS]
    if not bids or not asks or bids[0][0] >= asks[0][0]:
        stats["crossed"] += 1                   # crossed or one-sided: nothing to walk
        return
    rows.append((ts, bids, asks, seq))


def _snapshot(msg: dict, rows: list, stats: dict) -> None:
    ts = _time_ns(msg["timestamp"] if msg.get("timestamp") is not None else msg["datetime"])
    try:
        bids, asks = _levels(msg["bids"], True), _levels(msg["asks"], False)
    except ValueError:
        stats["bad_rows"] += 1
        return
    _keep(rows, ts, bids, asks, int(msg.get("nonce") or 0), stats)


def _bybit(msg: dict, book: L2Book | None, rows: list, stats: dict) -> L2Book:
    data, kind = msg["data"], msg.get("type")
    ts = _time_ns(msg["ts"])
    bids, asks = _raw(data.get("b", [])), _raw(data.get("a", []))
    if kind == "snapshot":
        book = book or L2Book()
        book.apply_snapshot(int(data["u"]), bids, asks)
    elif kind == "delta":
        if book is None:
            raise SequenceGap("a delta before any snapshot")
        book.apply_delta(int(data["u"]), bids, asks)
    else:
        raise ValueError(f"type {kind!r} is neither snapshot nor delta")
    top_bids, top_asks = book.top(BOOK_LEVELS)
    _keep(rows, ts, top_bids, top_asks, int(data.get("seq") or data["u"]), stats)
    return book


def _raw(levels) -> list[tuple[float, float]]:
    """A delta's levels as floats, size 0 kept (it removes the level)."""
    out = []
    for level in levels:
        price, size = float(level[0]), float(level[1])
        if not (math.isfinite(price) and price > 0 and math.isfinite(size) and size >= 0):
            raise ValueError(f"level {level!r}: a price must be > 0 and a size >= 0")
        out.append((price, size))
    return out
