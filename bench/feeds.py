"""Benchmark: venue feeds parsing real captures into the tick ring, against cryptofeed.

For each venue with a real websocket capture in ../shared/data/payloads, the
capture's received frames (byte for byte, as tests/venue_servers.py replays
them) are handled over and over, in this one process, by:

ours
    The venue module (workers/venues/<venue>.py) built as the feed process
    builds it: ``FEED(FeedConfig(kind=..., symbols=...), symbol ids)``, with
    the symbols the capture subscribed to. Per message
    ``venue.parse(raw, time.time_ns(), buf)`` into a ``TickBuffer``
    (a ``MalformedMessage`` is counted, as ``VenueSource.step`` does), and
    every 256 messages, and at the end, ``writer.write(buf.take())`` into a
    real shared-memory tick ring (LOSSY, 65536 TICK records, no registered
    reader, so the writer never waits). That is ``VenueSource.step`` plus
    ``FeedWorker.step`` without the socket: it "parses and publishes into
    the ring".

cryptofeed
    The same frames through cryptofeed's own parser: per message
    ``await feed.message_handler(raw, None, time.time())``, which is what its
    ConnectionHandler does per websocket frame, inside one asyncio event loop,
    with every callback an async no-op that counts. cryptofeed resolves its
    symbols over the network when a feed is built; instead its symbol table is
    seeded (``cryptofeed.symbols.Symbols.set``) with the venue class's own
    ``_parse_symbol_data`` of the captured REST answers: Binance
    ``/api/v3/exchangeInfo``, Upbit ``/v1/market/all``, Bithumb
    ``/public/ticker/ALL_BTC`` and ``ALL_KRW``. Nothing here touches the network.

Cases (rows):

binance aggTrade+bookTicker
    The spot capture's aggTrade and bookTicker messages (channels trades and
    quotes), for both. Its kline messages are left out (we read past them) and
    so are the depth diffs, because cryptofeed fetches a REST snapshot inside
    ``message_handler`` when a symbol's first diff arrives. Before each pass
    over the capture (outside the clock) ours forgets the last aggregate trade
    id per symbol: otherwise every replayed trade would be dropped as a
    duplicate, less work than a live stream costs.
binance depthUpdate (ours only)
    The capture's depth diffs (channel depth). No cryptofeed figure: see above.
    Before each pass (outside the clock) every symbol's book is reset and
    seeded from the captured ``/api/v3/depth?limit=1000`` snapshot of the same
    session, so every pass applies the diffs through the real update-id checks
    and emits quotes when the top changes; snapshot parsing is not timed.
upbit
    Every frame of the capture (trade and orderbook, SIMPLE format), as bytes:
    Upbit sends binary frames and both clients receive bytes.
bithumb
    Every frame of the capture (two status acks, four transaction lists with
    seven trades). cryptofeed has no Bithumb order book, and the capture has
    none either.

Timing: one untimed warm-up pass each (its tick and callback counts per
capture, our rejected ticks and the venue module's own counters are in the
JSON, to show both did the work), then ours and cryptofeed alternate in
``--rounds`` rounds (4; 2 with ``--quick``), each side looping over the
capture for ``--duration / rounds`` seconds per round (2 s in all per side and
case; 0.5 s with ``--quick``), so that load from elsewhere hits both alike.
Only the time inside the loops counts (perf_counter_ns), resets between passes
do not. A capture smaller than 256 frames with nothing to reset is repeated to
256 frames per pass. messages/s = frames handled / timed seconds; ticks/s =
ticks written to the ring; cryptofeed events/s = callbacks. ratio = ours
msg/s / cryptofeed msg/s (above 1: ours is faster).

The work is alike, not identical: cryptofeed reads numbers as Decimal and
builds Trade, Ticker and OrderBook objects (for Upbit the whole 15-level book
of every orderbook message); ours converts to float, validates (NaN, zero and
negative values never reach the ring), keeps the top of book only, and copies
the ticks into shared memory.

Without cryptofeed installed (the ``bench`` extra: ``pip install -e
'.[bench]'``) its figures are reported missing and ours still run; a venue
whose capture is absent is reported and skipped. Every number depends on what
else runs on the machine (see loadavg in the JSON).

Usage::

    python bench/feeds.py [--quick] [--json OUT.json] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import common
from pipeline.config import FeedConfig
from shm import segment
from shm.records import TICK
from shm.ring import LOSSY, Ring, RingSpec
from workers.venues import feed_class
from workers.venues.base import MalformedMessage, TickBuffer
from workers.venues.capture import capture_lines as read_capture

PAYLOADS = common.SHARED_DATA / "payloads"
BINANCE_WS = "binance/ws/spot_depth100ms_bookTicker_kline1m_aggTrade_2021-10-12.capture.jsonl"
BINANCE_INFO = "binance/rest/exchangeInfo_2021-10-12.capture.jsonl"
BINANCE_DEPTH = "binance/rest/depth_limit1000_snapshots_2021-10-12.capture.jsonl"
UPBIT_WS = "upbit/ws/trade_orderbook_SIMPLE-format_2021-04-17.capture.jsonl"
UPBIT_MARKETS = "upbit/rest/market_all_2021-04-17.capture.jsonl"
BITHUMB_WS = "bithumb/ws/transaction_2021-06-01.capture.jsonl"
BITHUMB_TICKERS = "bithumb/rest/public_ticker_ALL_2021-06-01.capture.jsonl"

FLUSH_EVERY = 256              # messages between writes into the ring
RING_CAPACITY = 1 << 16        # TICK records, 4 MiB


class Unavailable(Exception):
    """A figure that cannot be measured here (missing capture, cryptofeed, ...)."""


# -- captures ------------------------------------------------------------------
def capture_lines(path: Path) -> list[dict]:
    if not path.exists():
        raise Unavailable(f"capture {path} not found")
    return read_capture(path)


# -- the two sides ---------------------------------------------------------------
@dataclass
class Side:
    """One side (ours or cryptofeed) of one case: the frames of one pass, what
    runs before each pass outside the clock, and what was measured (``events``:
    ticks written to the ring, or cryptofeed callbacks)."""
    frames: list
    reset: Callable[[], None] | None = None
    messages: int = 0
    events: int = 0
    errors: int = 0
    ns: int = 0
    warmup_events: int = 0
    warmup_errors: int = 0

    def passes(self, seconds: float, passes: int | None = None) -> Iterator[list]:
        """The frames, once per pass, until the passes took ``seconds`` (or ``passes``
        times): ``reset`` before each pass, outside the clock; the time spent in the
        passes and their messages are added to ``ns`` and ``messages``."""
        perf = time.perf_counter_ns
        budget = int(seconds * 1e9)
        spent = done = 0
        n = len(self.frames)
        while (spent < budget) if passes is None else (done < passes * n):
            if self.reset is not None:
                self.reset()
            t0 = perf()
            yield self.frames
            spent += perf() - t0
            done += n
        self.ns += spent
        self.messages += done


@dataclass
class Case:
    name: str
    venue: str
    messages: int = 0
    ours: Side | None = None
    cf: Side | None = None
    cf_handler: Any = None
    cf_counter: Any = None
    cf_missing: str = ""
    notes: list[str] = field(default_factory=list)


class Ours:
    """Parse and publish: the venue module into a TickBuffer, flushed into the ring."""

    def __init__(self, venue: Any, writer: Any):
        self.venue = venue
        self.writer = writer
        self.buf = TickBuffer()

    def run(self, side: Side, seconds: float, passes: int | None = None) -> None:
        parse, buf, write = self.venue.parse, self.buf, self.writer.write
        now, perf = time.time_ns, time.perf_counter_ns
        errors = ticks = 0
        pending = 0           # messages since the last write
        for frames in side.passes(seconds, passes):
            for raw in frames:
                try:
                    parse(raw, now(), buf)
                except MalformedMessage:
                    errors += 1
                pending += 1
                if pending == FLUSH_EVERY:
                    ticks += write(buf.take())
                    pending = 0
        t0 = perf()
        ticks += write(buf.take())        # the end of a run flushes too
        side.ns += perf() - t0
        side.events += ticks
        side.errors += errors


class CfCounter:
    """cryptofeed callbacks that do nothing but count."""

    def __init__(self) -> None:
        self.n = 0

    async def __call__(self, obj: Any, receipt_timestamp: float) -> None:
        self.n += 1


async def cf_run(handler: Any, counter: CfCounter, side: Side, seconds: float,
                 passes: int | None = None) -> None:
    now = time.time
    errors = 0
    start = counter.n
    for frames in side.passes(seconds, passes):
        for raw in frames:
            try:
                await handler(raw, None, now())
            except Exception:
                errors += 1
    side.events += counter.n - start
    side.errors += errors


def cf_import() -> None:
    try:
        import cryptofeed  # noqa: F401
        from cryptofeed.symbols import Symbols  # noqa: F401
    except ImportError as e:
        raise Unavailable(f"cryptofeed is not installed ({e}); pip install -e '.[bench]'") from None


def cf_seed(cls: Any, data: Any) -> None:
    """cryptofeed's symbol table for one venue, from captured REST answers, through
    the venue class's own parser: no network when the feed is built."""
    from cryptofeed.symbols import Symbols
    normalized, info = cls._parse_symbol_data(data)
    Symbols.set(cls.id, normalized, info)


def cf_feed(case: Case, cls: Any, symbols: list[str], channels: list[str]) -> None:
    counter = CfCounter()
    feed = cls(symbols=symbols, channels=channels,
               callbacks={ch: counter for ch in channels})
    case.cf_handler, case.cf_counter = feed.message_handler, counter


# -- cases ---------------------------------------------------------------------
def ours_feed(kind: str, symbols: list[str], channels: list[str] | None = None) -> Any:
    cfg = FeedConfig(name=kind, kind=kind, symbols=symbols,
                     **({"channels": channels} if channels else {}))
    return feed_class(kind)(cfg, {s: i + 1 for i, s in enumerate(symbols)})


def binance_setup(payloads: Path, depth: bool) -> tuple[Case, Any]:
    lines = capture_lines(payloads / BINANCE_WS)
    url = next(r["url"] for r in lines if r["dir"] == "connect")
    natives = sorted({s.split("@")[0].upper() for s in url.partition("streams=")[2].split("/")})
    info = capture_lines(payloads / BINANCE_INFO)[0]["msg"]
    assets = {s["symbol"]: (s["baseAsset"], s["quoteAsset"]) for s in info["symbols"]}
    symbols = [f"{assets[n][0]}/{assets[n][1]}" for n in natives]
    kinds = ("depth",) if depth else ("aggTrade", "bookTicker")
    frames = [r["raw"] for r in lines if r["dir"] == "recv"
              and r["msg"]["stream"].partition("@")[2].split("@")[0] in kinds]
    if depth:
        case = Case("binance depthUpdate (ours only)", "binance")
        venue = ours_feed("binance", symbols, ["depth"])
        snaps = {}
        for r in capture_lines(payloads / BINANCE_DEPTH):
            query = dict(kv.split("=") for kv in r["url"].partition("?")[2].split("&"))
            m = r["msg"]
            snaps[query["symbol"]] = (m["lastUpdateId"],
                                      [(float(p), float(q)) for p, q in m["bids"]],
                                      [(float(p), float(q)) for p, q in m["asks"]])
        missing = [n for n in venue.depth if n not in snaps]
        if missing:
            raise Unavailable(f"no captured depth snapshot for {', '.join(missing)}")

        def reset() -> None:
            for native, st in venue.depth.items():
                st.reset()
                st.book.apply_snapshot(*snaps[native])
        case.cf_missing = ("n/a: cryptofeed fetches a REST depth snapshot inside "
                           "message_handler; depth measured for ours only")
    else:
        case = Case("binance aggTrade+bookTicker", "binance")
        venue = ours_feed("binance", symbols, ["trades", "quotes"])
        reset = venue.last_trade_id.clear     # else the replayed trades are duplicates
        case.notes.append("klines and depth diffs left out for both")
    case.messages = len(frames)
    case.ours = Side(frames, reset=reset)
    if not depth:
        try:
            cf_import()
            from cryptofeed.defines import TICKER, TRADES
            from cryptofeed.exchanges import Binance
            cf_seed(Binance, info)
            cf_feed(case, Binance, [s.replace("/", "-") for s in symbols], [TRADES, TICKER])
            case.cf = Side(frames)
        except Unavailable as e:
            case.cf_missing = f"n/a: {e}"
    return case, venue


def upbit_setup(payloads: Path) -> tuple[Case, Any]:
    lines = capture_lines(payloads / UPBIT_WS)
    send = next(r for r in lines if r["dir"] == "send")
    codes = sorted({c for part in send["msg"] if "codes" in part for c in part["codes"]})
    symbols = [f"{c.split('-')[1]}/{c.split('-')[0]}" for c in codes]
    frames = [r["raw"].encode() for r in lines if r["dir"] == "recv"]   # binary frames
    case = Case("upbit", "upbit", len(frames))
    venue = ours_feed("upbit", symbols)
    case.ours = Side(frames, reset=venue.seen.clear)   # else replayed trades are duplicates
    try:
        cf_import()
        from cryptofeed.defines import L2_BOOK, TRADES
        from cryptofeed.exchanges import Upbit
        cf_seed(Upbit, capture_lines(payloads / UPBIT_MARKETS)[0]["msg"])
        cf_feed(case, Upbit, [s.replace("/", "-") for s in symbols], [TRADES, L2_BOOK])
        case.cf = Side(frames)
    except Unavailable as e:
        case.cf_missing = f"n/a: {e}"
    case.notes.append("cryptofeed builds the whole 15-level book of each orderbook "
                      "message (Decimal); ours sends the top as one quote")
    return case, venue


def bithumb_setup(payloads: Path) -> tuple[Case, Any]:
    lines = capture_lines(payloads / BITHUMB_WS)
    send = next(r for r in lines if r["dir"] == "send")
    symbols = sorted(n.replace("_", "/") for n in send["msg"]["symbols"])
    frames = [r["raw"] for r in lines if r["dir"] == "recv"]
    case = Case("bithumb", "bithumb", len(frames))
    venue = ours_feed("bithumb", symbols)
    case.ours = Side(frames, reset=venue.seen.clear)   # else replayed trades are duplicates
    try:
        cf_import()
        from cryptofeed.defines import TRADES
        from cryptofeed.exchanges import Bithumb
        data = {}
        for r in capture_lines(payloads / BITHUMB_TICKERS):
            data[r["url"].rsplit("_", 1)[1]] = r["msg"]      # .../ALL_BTC -> "BTC"
        cf_seed(Bithumb, data)
        cf_feed(case, Bithumb, [s.replace("/", "-") for s in symbols], [TRADES])
        case.cf = Side(frames)
    except Unavailable as e:
        case.cf_missing = f"n/a: {e}"
    case.notes.append("capture: 2 status acks + 4 transaction lists (7 trades), trades only")
    return case, venue


SETUPS: dict[str, Callable[[Path], tuple[Case, Any]]] = {
    "binance aggTrade+bookTicker": lambda p: binance_setup(p, depth=False),
    "binance depthUpdate (ours only)": lambda p: binance_setup(p, depth=True),
    "upbit": upbit_setup,
    "bithumb": bithumb_setup,
}


# -- running -------------------------------------------------------------------
def run_case(name: str, setup: Callable, payloads: Path, writer: Any, loop: Any,
             seconds: float, rounds: int) -> dict:
    try:
        case, venue = setup(payloads)
    except Unavailable as e:
        return {"venue": name, "skipped": str(e)}
    ours = Ours(venue, writer)
    cf = case.cf
    # warm-up: one pass of the capture each, counted apart
    ours.run(case.ours, 0, passes=1)
    case.ours.warmup_events, case.ours.warmup_errors = case.ours.events, case.ours.errors
    warm_stats = venue.stats()
    rejected = dict(ours.buf.rejected)
    if cf is not None:
        loop.run_until_complete(cf_run(case.cf_handler, case.cf_counter, cf, 0, passes=1))
        cf.warmup_events, cf.warmup_errors = cf.events, cf.errors
    for s in (case.ours, cf):
        if s is not None:
            s.messages = s.events = s.errors = s.ns = 0
    for _ in range(rounds):
        ours.run(case.ours, seconds / rounds)
        if cf is not None:
            loop.run_until_complete(cf_run(case.cf_handler, case.cf_counter, cf,
                                           seconds / rounds))

    def rate(n: int, side: Side) -> float:
        return round(n / (side.ns / 1e9)) if side.ns else 0

    passes_per = len(case.ours.frames) // case.messages
    res: dict[str, Any] = {
        "venue": case.name, "kind": case.venue, "messages": case.messages,
        "ours_msgs_per_s": rate(case.ours.messages, case.ours),
        "ours_ticks_per_s": rate(case.ours.events, case.ours),
        "cryptofeed_msgs_per_s": None, "cryptofeed_events_per_s": None, "ratio": None,
        "ours_ticks_per_capture": case.ours.warmup_events // passes_per,
        "ours_malformed_per_capture": case.ours.warmup_errors // passes_per,
        "ours_rejected_warmup": rejected,
        "ours_venue_stats_warmup": warm_stats,
        "ours_messages_timed": case.ours.messages,
        "ours_seconds": round(case.ours.ns / 1e9, 3),
        "ours_malformed_timed": case.ours.errors,
    }
    if cf is not None:
        res["cryptofeed_msgs_per_s"] = rate(cf.messages, cf)
        res["cryptofeed_events_per_s"] = rate(cf.events, cf)
        res["cryptofeed_events_per_capture"] = cf.warmup_events // passes_per
        res["cryptofeed_errors_per_capture"] = cf.warmup_errors // passes_per
        res["cryptofeed_messages_timed"] = cf.messages
        res["cryptofeed_seconds"] = round(cf.ns / 1e9, 3)
        if res["cryptofeed_msgs_per_s"]:
            res["ratio"] = round(res["ours_msgs_per_s"] / res["cryptofeed_msgs_per_s"], 2)
        if cf.errors:
            case.notes.append(f"cryptofeed raised on {cf.errors} of {cf.messages} messages")
    else:
        case.notes.append(case.cf_missing)
    if case.ours.errors:
        case.notes.append(f"ours: {case.ours.errors} malformed of {case.ours.messages} messages")
    res["notes"] = "; ".join(case.notes)
    return res


# -- output --------------------------------------------------------------------
def _rate(x: float | None) -> str:
    return common.rate(x, none="n/a")


def table(results: list[dict]) -> str:
    head = ["venue", "messages", "ours msg/s", "ours ticks/s", "cryptofeed msg/s",
            "ratio (ours/cf)"]
    rows = [head]
    notes = []
    for r in results:
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or r["error"].strip().splitlines()[-1]
            rows.append([r["venue"], "-", "SKIPPED" if "skipped" in r else "ERROR", "", "", ""])
            notes.append(f"{r['venue']}: {why[:200]}")
            continue
        rows.append([r["venue"], str(r["messages"]), _rate(r["ours_msgs_per_s"]),
                     _rate(r["ours_ticks_per_s"]), _rate(r["cryptofeed_msgs_per_s"]),
                     "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"])
        if r["notes"]:
            notes.append(f"{r['venue']}: {r['notes']}")
    return "\n".join([common.table(rows), "", "notes:"] + [f"  {n}" for n in notes])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = common.parser(__doc__, "0.5 s per side and venue, 2 rounds")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="substrings of case names")
    ap.add_argument("--duration", type=float, default=None,
                    help="timed seconds per side and case (default 2, 0.5 with --quick)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternations of ours and cryptofeed (default 4, 2 with --quick)")
    ap.add_argument("--payloads", type=Path, default=PAYLOADS, help="captures directory")
    return common.defaults(ap.parse_args(argv), (("duration", 2.0, 0.5), ("rounds", 4, 2)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds, rounds = args.duration, args.rounds
    info = common.machine("cryptofeed", "yapic.json")
    try:
        cf_import()
    except Unavailable as e:
        print(f"  cryptofeed figures missing: {e}", file=sys.stderr)
    chosen = {n: s for n, s in SETUPS.items()
              if not args.only or any(o.lower() in n.lower() for o in args.only)}
    name = f"/tp_bench{os.getpid()}_feeds"
    segment.unlink(name)  # a leftover of a killed run with a reused pid
    results: list[dict] = []
    written = 0
    loop = asyncio.new_event_loop()
    try:
        ring = Ring.create(RingSpec("bench.feeds", name, TICK, RING_CAPACITY, LOSSY, []))
        try:
            writer = ring.writer()
            for case_name, setup in chosen.items():
                print(f"  {case_name}: {seconds:g} s per side in {rounds} rounds ...",
                      file=sys.stderr, flush=True)
                try:
                    results.append(run_case(case_name, setup, args.payloads, writer, loop,
                                            seconds, rounds))
                except Exception:
                    results.append({"venue": case_name, "error": traceback.format_exc()})
            written = int(writer.seq)
            del writer
        finally:
            ring.close()
    finally:
        loop.close()
        segment.unlink(name)
    load = common.finish(info)
    print(table(results))
    print(f"ratio = ours msg/s / cryptofeed msg/s (above 1: ours is faster); {load}")
    common.save(args, info, {
        "seconds_per_side": seconds, "rounds": rounds,
        "ring": {"capacity": RING_CAPACITY, "policy": "lossy", "ticks_written": written},
        "results": results})
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    common.run(main)
