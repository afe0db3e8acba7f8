"""Feed process: puts ticks into its venue's tick ring.

This module holds the synthetic feed, the no-network default: several symbols
with volatility clustering (a GARCH(1,1)-like variance per symbol), drift
regimes that switch at random, trades and quotes around a spread that widens
with volatility. Ticks are emitted on a wall-clock schedule at ``ticks_per_s``
and stamped with ``ts_origin_ns`` when made, as a venue feed stamps receipt.
ReplaySource plays candles or trades from a CSV or Parquet file instead.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from models.synthetic import SyntheticMarket, start_prices
from shm.records import SIDE_BUY, SIDE_SELL, TICK, TICK_GAP, TICK_QUOTE, TICK_TRADE
from shm.ring import Ring

from .bars import bar_steps
from .base import Worker
from .venues.base import Health, MalformedMessage, TickBuffer, flush_ticks, short_reason

MAX_BATCH = 4096
LOCKSTEP_POLL_S = 0.001     # a lockstep replay looks this often whether the pipeline settled
NETWORK_TIMEOUT_S = 10.0     # the longest any one network call may take (less with a short
                             # heartbeat timeout: see network_timeout)


def network_timeout(cfg) -> float:
    """Every network call's limit: well under the heartbeat timeout (a third of it), so
    that even a call the heartbeat pulse did not cover cannot get the feed killed."""
    return min(NETWORK_TIMEOUT_S, cfg.pipeline.heartbeat_timeout_s / 3)


def newest_per_symbol(ticks: np.ndarray) -> dict[int, np.void]:
    """The last record of each symbol id in ``ticks`` (arrival order)."""
    ids, last = np.unique(ticks["symbol_id"][::-1], return_index=True)
    return {int(sid): ticks[len(ticks) - 1 - i] for sid, i in zip(ids, last)}


class SyntheticSource:
    """Ticks from SyntheticMarket on a wall-clock schedule at ``ticks_per_s``."""

    def __init__(self, feed, symbol_ids: np.ndarray, start_count: int, restart: int, bell,
                 last: dict[int, np.void] | None = None):
        self.feed = feed
        self.symbol_ids = symbol_ids
        self.market = SyntheticMarket(len(symbol_ids), start_prices(feed), feed.seed + 1000 * restart)
        # a restarted feed goes on from its predecessor's last prices, not from new random ones
        for i, sid in enumerate(symbol_ids.tolist()):
            tick = (last or {}).get(sid)
            if tick is not None and tick["bid"] > 0 and tick["ask"] > 0:
                self.market.logp[i] = np.log((float(tick["bid"]) + float(tick["ask"])) / 2)
        self.emitted = start_count       # resume the count where an earlier incarnation stopped
        self.base = start_count
        self.t0 = time.monotonic()
        self.bell = bell

    def due(self) -> int:
        target = self.base + int((time.monotonic() - self.t0) * self.feed.ticks_per_s)
        if self.feed.max_ticks:
            target = min(target, self.feed.max_ticks)
        return target - self.emitted

    def step(self) -> np.ndarray | None:
        k = min(self.due(), MAX_BATCH)
        if k <= 0:
            return None
        ticks = self.market.make(k, self.symbol_ids)
        now = time.time_ns()
        ticks["ts_origin_ns"] = now
        ticks["ts_exchange_ns"] = now
        self.emitted += k
        return ticks

    def wait(self, timeout: float) -> None:
        """Sleep until the next batch is due, on our doorbell so that a stop command
        never waits out the sleep."""
        if self.feed.max_ticks and self.emitted >= self.feed.max_ticks:
            wait = timeout
        else:
            wait = min(timeout, max(1.0 / self.feed.ticks_per_s, 0.002))
        if self.bell is not None:
            self.bell.wait(wait)
        else:
            time.sleep(wait)

    def housekeeping(self) -> None:
        pass

    def stats(self) -> dict:
        return {"emitted": self.emitted - self.base}    # by this process; the supervisor sums

    def close(self) -> None:
        pass


class VenueSource:
    """A venue's websocket through WsConnection, parsed by its venue module."""

    def __init__(self, feed, symbol_ids: dict[str, int], resume: dict[int, np.void] | None = None,
                 timeout_s: float = NETWORK_TIMEOUT_S, wait_hook=None):
        """``resume``: None for a first start; for a restarted feed process, the newest
        trade per symbol id its predecessor wrote (maybe none): its first connection is
        then a reconnect, with gap markers and a backfill from those trades.
        ``timeout_s`` bounds every network call; ``wait_hook`` wraps those that wait on
        the venue (the worker's network_wait)."""
        from .venues import feed_class
        from .venues.rest import RateLimiter, RestClient, make_exchange
        from .venues.ws import WsConnection
        self.feed = feed
        self.health = Health()
        self.venue = feed_class(feed.kind)(feed, symbol_ids)
        self.venue.health = self.health
        self.buffer = TickBuffer.for_feed(feed)
        self.limiter = RateLimiter(feed.rest_rate_per_s)
        self.venue.rest = None
        if self.venue.rest_url or self.venue.default_rest_url:
            ex = make_exchange(feed.kind, self.venue.rest_url if feed.rest_url else "", timeout_s)
            self.venue.rest = RestClient(ex, self.limiter, self.health,
                                         wait_hook)
        self.conn = WsConnection(self.venue.url(), self.venue.subscribe_messages(), self.health,
                                 ping_interval_s=feed.ping_interval_s,
                                 no_message_timeout_s=feed.no_message_timeout_s,
                                 backoff_s=feed.reconnect_backoff_s,
                                 backoff_max_s=feed.reconnect_backoff_max_s,
                                 connect_timeout_s=timeout_s, wait_hook=wait_hook)
        self.emitted = 0
        if resume is not None:
            native = {sid: self.venue.native(sym) for sym, sid in symbol_ids.items()}
            for sid, trade in resume.items():
                if sid in native:
                    self.venue.resume(native[sid], trade)
            self.conn.connected_once = True

    def step(self) -> np.ndarray | None:
        out = self.buffer
        if not self.conn.connected:
            was = self.conn.connected_once
            if self.conn.connect():
                try:
                    self.venue.on_connected(out, time.time_ns(), reconnect=was)
                except Exception as e:  # a failed snapshot or backfill: retried on reconnect
                    self.conn.drop(f"after connecting: {short_reason(e)}")
        frames = self.conn.receive()
        for raw in frames:
            recv_ns = time.time_ns()
            self.health.messages += 1
            self.health.last_message_ns = recv_ns
            try:
                self.venue.parse(raw, recv_ns, out)
            except MalformedMessage as e:
                self.health.malformed_message(e, raw)
            except Exception as e:  # a parser bug must not take the feed down
                self.health.malformed_message(MalformedMessage(type(e).__name__, str(e)), raw)
        ticks = flush_ticks(out, self.health)
        if ticks is not None:
            self.emitted += len(ticks)
        return ticks

    def wait(self, timeout: float) -> None:
        self.conn.wait(timeout)

    def housekeeping(self) -> None:
        self.conn.maintain()

    def stats(self) -> dict:
        return {"emitted": self.emitted, "health": self.health.as_dict(time.time_ns()),
                **self.venue.stats()}

    def close(self) -> None:
        self.conn.close()


class ReplaySource:
    """Candles, trades or quotes from a CSV or Parquet file, played into the ring with
    their original times in ``ts_exchange_ns`` (``ts_origin_ns`` is the time
    of emission, as a venue feed stamps receipt).

    ``speed`` 0 plays as fast as the feed can write (batches of MAX_BATCH; on
    the lossy ticks ring a reader that cannot keep up is lapped and counts
    drops); ``speed`` s plays s seconds of market time per second. A restarted
    feed resumes after the ticks its ring already holds.

    Candles become four trades at the open time plus 0, 1/4, 1/2 and 3/4 of the
    bar (the bar length is the file's median step): open, then low then high
    for a candle that closes at or above its open, high then low for one that
    closes below, then close; each carries a quarter of the volume. The side
    follows the tick rule (up or unchanged: buy). A candle with zero volume
    had no trades and makes no ticks. Where candles are missing (the next one
    comes more than 1.5 steps later) a gap marker (TICK_GAP) goes before the
    next candle's ticks: the bar open across the hole is flagged FLAG_GAP and
    opens no position. Trades keep their time, price, size,
    trade id and side (``side`` buy/sell, or ``buyer_maker``: the taker
    sold), else the tick rule. Quotes (``timestamp_ms,bid,ask``, sizes
    ignored) become quote ticks: execution fills market orders at them. Bad rows (pipeline/storage.check_candles and
    check_trades: NaN, <= 0; repeated rows) are skipped and counted; rows out of
    order are sorted by time first (pipeline/storage.tidy_market_rows).

    ``lockstep`` (a callable: has the pipeline settled?) plays the ticks in the
    steps a backtest plays them (workers/bars.bar_steps: up to and including each
    tick that closes a bar) and waits, before each step, until every ring of the
    pipeline has been read: everything the last bar close caused (features,
    signals, intents, orders, fills) has happened, so the fills are the backtest's.
    """

    def __init__(self, feed, symbol_id: int, start_index: int, bell, bar_ns: int = 0,
                 lockstep: Callable[[], bool] | None = None):
        self.feed = feed
        self.speed = feed.speed
        self.ticks, self.rejected, self.reordered = replay_ticks(feed.path, symbol_id)
        self.ts = self.ticks["ts_exchange_ns"]
        self.pos = self.start = min(start_index, len(self.ticks))
        self.lockstep = lockstep
        self.steps = bar_steps(self.ticks, bar_ns) if lockstep is not None else None
        self.settled = False
        self.bell = bell
        self.t0 = time.monotonic()
        self.x0 = int(self.ts[self.pos]) if self.pos < len(self.ts) else 0
        self.done_logged = False

    @property
    def done(self) -> bool:
        return self.pos >= len(self.ticks)

    def _market_now(self) -> float:
        """The market time (ns) that the wall clock has reached."""
        return self.x0 + (time.monotonic() - self.t0) * 1e9 * self.speed

    def step(self) -> np.ndarray | None:
        if self.lockstep is not None:
            return self._lockstep()
        end = min(self.pos + MAX_BATCH, len(self.ticks))
        if self.speed > 0:
            end = min(end, int(np.searchsorted(self.ts, self._market_now(), side="right")))
        if end <= self.pos:
            return None
        ticks = self.ticks[self.pos:end].copy()
        ticks["ts_origin_ns"] = time.time_ns()
        self.pos = end
        return ticks

    def _lockstep(self) -> np.ndarray | None:
        """The next step's ticks once the pipeline has settled on the last one."""
        if not self.lockstep():
            return None
        if self.done:
            self.settled = True
            return None
        end = int(self.steps[np.searchsorted(self.steps, self.pos, side="right")])
        ticks = self.ticks[self.pos:end].copy()
        ticks["ts_origin_ns"] = time.time_ns()
        self.pos = end
        return ticks

    def wait(self, timeout: float) -> None:
        """Sleep until the next tick is due (or the timeout), on our doorbell so that
        a stop command never waits out the sleep."""
        wait = timeout
        if self.lockstep is not None and not self.settled:
            wait = min(timeout, LOCKSTEP_POLL_S)
        elif not self.done and self.speed == 0:
            wait = 0.0
        elif not self.done:
            due_in = (self.ts[self.pos] - self._market_now()) / 1e9 / self.speed
            wait = min(timeout, max(due_in, 0.0))
        if self.bell is not None:
            self.bell.wait(wait)
        elif wait > 0:
            time.sleep(wait)

    def housekeeping(self) -> None:
        if self.done and not self.done_logged:
            self.done_logged = True
            logging.getLogger("feed").info("replay of %s finished: %d ticks, bad rows skipped: %s, "
                                           "rows sorted into time order: %d", self.feed.path,
                                           len(self.ticks), self.rejected or "none", self.reordered)

    def stats(self) -> dict:
        # emitted by this process (the supervisor adds its predecessors'); the file's bad
        # rows are the file's, the same for every process that reads it
        return {"emitted": self.pos - self.start, "replay_position": self.pos,
                "replay_total": len(self.ticks), "replay_done": self.done,
                "bad_rows": sum(self.rejected.values()), "rejected_rows": dict(self.rejected),
                "reordered_rows": self.reordered, "replay_settled": self.settled}

    def close(self) -> None:
        pass


def replay_ticks(path: str, symbol_id: int) -> tuple[np.ndarray, dict[str, int], int]:
    """The ticks a replay feed plays from ``path`` (trades, and gap markers where candles
    are missing), the bad rows it skips by reason, and how many rows reading sorted into
    time order (the file's rows as pipeline/storage.read_market_rows gives them: sorted,
    duplicates dropped). A backtest plays the same ticks."""
    from pipeline.storage import numeric, read_market_rows
    rows = read_market_rows(path)
    table = rows.table
    ts = numeric(table, "timestamp_ms")
    if rows.kind == "candles":
        o, h, l, c, v = (numeric(table, n) for n in ("open", "high", "low", "close", "volume"))
        ticks = candle_ticks(ts, o, h, l, c, v)
    elif rows.kind == "quotes":
        ticks = np.zeros(len(ts), TICK)
        ticks["ts_exchange_ns"] = ts.astype(np.int64) * 1_000_000
        ticks["bid"], ticks["ask"] = numeric(table, "bid"), numeric(table, "ask")
        ticks["price"] = (ticks["bid"] + ticks["ask"]) / 2       # as a venue feed's quote tick
        ticks["seq"] = np.arange(1, len(ticks) + 1)
        ticks["kind"] = TICK_QUOTE
    else:
        size = numeric(table, "quantity" if "quantity" in table.column_names else "amount")
        price = numeric(table, "price")
        ticks = np.zeros(len(ts), TICK)
        ticks["ts_exchange_ns"] = ts.astype(np.int64) * 1_000_000
        ticks["price"], ticks["size"] = price, size
        ticks["side"] = _trade_sides(table, np.ones(len(ts), bool), price)
        ticks["seq"] = np.arange(1, len(ticks) + 1)
        ticks["kind"] = TICK_TRADE
        if "trade_id" in table.column_names:
            ids = numeric(table, "trade_id")
            if np.isfinite(ids).all():
                ticks["seq"] = ids
    if rows.kind != "quotes":
        ticks["bid"] = ticks["ask"] = np.nan
    ticks["symbol_id"] = symbol_id
    return ticks, dict(rows.dropped), rows.reordered


def candle_ticks(ts_ms, o, h, l, c, v) -> np.ndarray:
    """Four trade ticks per candle with volume, and a gap marker before a candle that
    follows missing ones (the rule in ReplaySource's docstring)."""
    step_ms = float(np.median(np.diff(ts_ms))) if len(ts_ms) > 1 else 60_000.0
    after_gap = np.r_[False, np.diff(ts_ms) > 1.5 * step_ms]
    traded = v > 0
    gap_ms = ts_ms[after_gap]
    ts_ms, o, h, l, c, v = (x[traded] for x in (ts_ms, o, h, l, c, v))
    up = c >= o
    prices = np.column_stack([o, np.where(up, l, h), np.where(up, h, l), c]).ravel()
    offsets = (np.arange(4) * step_ms / 4 * 1e6).astype(np.int64)
    out = np.zeros(len(prices), TICK)
    out["ts_exchange_ns"] = (ts_ms.astype(np.int64)[:, None] * 1_000_000 + offsets).ravel()
    out["price"] = prices
    out["size"] = np.repeat(v / 4, 4)
    out["side"] = _tick_rule(prices)
    out["seq"] = np.arange(1, len(prices) + 1)
    out["kind"] = TICK_TRADE
    if len(gap_ms) == 0:
        return out
    marks = np.zeros(len(gap_ms), TICK)
    marks["ts_exchange_ns"] = gap_ms.astype(np.int64) * 1_000_000 - 1    # the hole ends just before it
    marks["kind"] = TICK_GAP
    marks["price"] = marks["size"] = np.nan
    both = np.concatenate([marks, out])
    # by time; at one time the marker first (TICK_GAP > TICK_TRADE, so sort on -kind)
    order = np.lexsort((-both["kind"].astype(np.int64), both["ts_exchange_ns"]))
    return both[order]


def _tick_rule(prices: np.ndarray) -> np.ndarray:
    return np.where(np.diff(prices, prepend=prices[:1]) >= 0, SIDE_BUY, SIDE_SELL)


def _trade_sides(table, ok: np.ndarray, prices: np.ndarray) -> np.ndarray:
    names = table.column_names
    if "side" in names:
        side = np.array(table.column("side").to_pylist(), dtype=object)[ok]
        return np.where(side == "sell", SIDE_SELL, SIDE_BUY)
    if "buyer_maker" in names:
        maker = np.array(table.column("buyer_maker").to_pylist(), dtype=object)[ok]
        return np.where(maker == True, SIDE_SELL, SIDE_BUY)  # noqa: E712 (None stays buy)
    return _tick_rule(prices)


class FeedWorker(Worker):
    role = "feed"

    def setup(self) -> None:
        self.feed = self.cfg.feeds[self.spec.feed]
        self.out = self.spec.outputs[0]
        keys = {s: f"{s}@{self.feed.venue_name}" for s in self.feed.symbols}
        ids = {s: self.topo.symbols.id(k) for s, k in keys.items()}
        writer = self.writers[self.out]
        restarted = writer.seq > 0            # the ring holds what a predecessor wrote
        if self.feed.kind == "synthetic":
            self.source = SyntheticSource(self.feed, np.array(list(ids.values()), np.uint32),
                                          int(writer.seq), self.args.restart_count, self.bell,
                                          newest_per_symbol(writer.tail()) if restarted else None)
        elif self.feed.kind == "replay":
            settled = self._settled if self.feed.lockstep else None
            self.source = ReplaySource(self.feed, next(iter(ids.values())),
                                       int(self.writers[self.out].seq), self.bell,
                                       int(round(self.cfg.indicators.bar_seconds * 1e9)), settled)
        elif self.feed.kind == "ccxt":
            from .venues.poller import PollSource
            self.source = PollSource(self.feed, ids, network_timeout(self.cfg), self.network_wait)
        else:
            resume = None
            if restarted:
                tail = writer.tail()
                resume = newest_per_symbol(tail[tail["kind"] == TICK_TRADE])
                self.log.info("restarted: the first connection marks the gap and backfills from "
                              "the last trade in the ring of %d of %d symbols", len(resume), len(ids))
            self.source = VenueSource(self.feed, ids, resume, network_timeout(self.cfg),
                                      self.network_wait)
        # the latest book per symbol, where the run has a books table (the route trader's) and
        # this feed's venue sends depth: its parsers fill them in only when asked (books = {})
        self.books = None
        if "books" in self.topo.tables and isinstance(self.source, VenueSource):
            self.books = self.table("books")
            self.source.buffer.books = {}

    def _settled(self) -> bool:
        """Every reader of every ring has read all there is (lockstep replay). The rings
        are read upstream first: a stage publishes before it commits what it read, so
        work in flight always shows as an unread record somewhere downstream."""
        if not hasattr(self, "_watched"):
            order = ("ticks", "features", "signals", "intents", "orders", "fills")
            names = sorted(self.topo.rings, key=lambda n: (next(
                (i for i, p in enumerate(order) if n.startswith(p)), len(order)), n))
            self._watched = [Ring.attach(self.topo.rings[n], readonly=True) for n in names]
            self._rings.extend(self._watched)          # closed with ours
        return all(r["lag"] == 0 for ring in self._watched for r in ring.stats()["readers"]
                   if not r["observer"])

    def step(self) -> bool:
        ticks = self.source.step()
        wrote = False
        if self.books is not None:
            # the books before the ticks: a reader woken by a tick finds the book it goes with
            books = self.source.buffer.take_books()
            if books is not None:
                self.books.write(books["symbol_id"].astype(np.intp), books)
                self.counters["books"] = self.counters.get("books", 0) + len(books)
                wrote = True
        if ticks is None:
            return wrote
        self.writers[self.out].write(ticks)   # lossy ring: never waits
        self.counters["out"] += len(ticks)
        return True

    def idle_wait(self, timeout: float) -> None:
        self.source.wait(timeout)

    def on_idle(self) -> None:
        self.source.housekeeping()

    def finish(self) -> None:
        self.source.close()

    def stats(self) -> dict:
        return {**self.counters, **self.source.stats()}


WORKER = FeedWorker
