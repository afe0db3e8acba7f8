"""Any ccxt venue without a websocket module: poll its REST API.

One request per step, round-robin over (symbol, trades) and (symbol, book),
each due every ``poll_interval_s`` and all of them inside the token bucket
(the lower of the config's rate and ccxt's own ``rateLimit``), so the loop
stays responsive and heartbeats between calls. New trades are told apart by
trade id (or timestamp where a venue has no id); a trade seen in an earlier
poll is a duplicate and dropped. The best bid/ask of each book poll becomes a
quote tick.
"""
from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from shm.records import SIDE_BUY, SIDE_SELL

from .base import Health, SeenTrades, TickBuffer, flush_ticks
from .rest import RateLimiter, RestClient, make_exchange

log = logging.getLogger("feed.poll")


class PollSource:
    def __init__(self, feed, symbol_ids: dict[str, int], timeout_s: float = 10.0, wait_hook=None):
        self.feed = feed
        self.health = Health(state="polling")
        ex = make_exchange(feed.venue, feed.rest_url, timeout_s)
        venue_rate = 1000.0 / ex.rateLimit if getattr(ex, "rateLimit", 0) else feed.rest_rate_per_s
        self.limiter = RateLimiter(min(feed.rest_rate_per_s, venue_rate))
        self.rest = RestClient(ex, self.limiter, self.health,
                               wait_hook)
        self.symbol_ids = symbol_ids
        self.buffer = TickBuffer.for_feed(feed)
        self.tasks = deque((sym, kind) for sym in symbol_ids for kind in ("trades", "book")
                           if (kind == "trades" and "trades" in feed.channels)
                           or (kind == "book" and "quotes" in feed.channels))
        self.due = {t: 0.0 for t in self.tasks}
        self.seen = SeenTrades()       # keys: trade id (or time:price:amount), times in ms
        self.markets_loaded = False
        self.emitted = 0

    def _next_delay(self) -> float:
        now = time.monotonic()
        soonest = min(self.due.values(), default=now + 1.0)
        return max(0.0, soonest - now, self.limiter.delay())

    def step(self) -> np.ndarray | None:
        if not self.tasks or self._next_delay() > 0:
            return None
        try:
            if not self.markets_loaded:
                self.rest.call("load_markets")
                self.markets_loaded = True
                self.health.state = "polling"
                return None
            task = self.tasks[0]
            self.tasks.rotate(-1)
            if time.monotonic() < self.due[task]:
                return None
            self.due[task] = time.monotonic() + self.feed.poll_interval_s
            sym, kind = task
            if kind == "trades":
                self._poll_trades(sym)
            else:
                self._poll_book(sym)
            self.health.state = "polling"
        except Exception as e:  # network, venue or parse errors: counted, retried next round
            self.health.state = "error"
            log.warning("%s REST poll failed: %s: %.200s", self.feed.venue, type(e).__name__, e)
        out = self.buffer
        ticks = flush_ticks(out, self.health)
        if ticks is not None:
            self.emitted += len(ticks)
        return ticks

    def _poll_trades(self, sym: str) -> None:
        trades = self.rest.call("fetch_trades", sym, self.seen.newest.get(sym))
        recv_ns = time.time_ns()
        self.health.messages += 1
        self.health.last_message_ns = recv_ns
        sid = self.symbol_ids[sym]
        for t in sorted(trades, key=lambda t: (t.get("timestamp") or 0, str(t.get("id")))):
            key = t.get("id") or f"{t.get('timestamp')}:{t.get('price')}:{t.get('amount')}"
            if self.seen.has(sym, key):
                self.health.duplicates += 1
                continue
            ts = t.get("timestamp") or 0
            side = SIDE_BUY if t.get("side") == "buy" else SIDE_SELL if t.get("side") == "sell" else 0
            seq = int(key) if str(key).isdigit() else 0
            if self.buffer.trade(sid, recv_ns, ts * 1_000_000, seq, float(t.get("price") or "nan"),
                                 float(t.get("amount") or "nan"), side):
                self.seen.add(sym, key, ts)

    def _poll_book(self, sym: str) -> None:
        book = self.rest.call("fetch_order_book", sym, 5)
        recv_ns = time.time_ns()
        self.health.messages += 1
        self.health.last_message_ns = recv_ns
        if book.get("bids") and book.get("asks"):
            ts = book.get("timestamp") or 0
            self.buffer.quote(self.symbol_ids[sym], recv_ns, ts * 1_000_000, 0,
                              float(book["bids"][0][0]), float(book["asks"][0][0]))

    def wait(self, timeout: float) -> None:
        time.sleep(min(timeout, self._next_delay()) if self.tasks else timeout)

    def housekeeping(self) -> None:
        pass

    def stats(self) -> dict:
        return {"emitted": self.emitted, "health": self.health.as_dict(time.time_ns())}

    def close(self) -> None:
        self.health.state = "closed"
