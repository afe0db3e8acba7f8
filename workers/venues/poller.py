"""Any ccxt venue without a websocket module: poll its REST API.

One request per step, round-robin over (symbol, trades) and (symbol, book),
each due every ``poll_interval_s`` and all of them inside the token bucket
(the lower of the config's rate and ccxt's own ``rateLimit``), so the loop
stays responsive and heartbeats between calls. New trades are told apart by
trade id (or timestamp where a venue has no id); a trade seen in an earlier
poll is a duplicate and dropped. The best bid/ask of each book poll becomes a
quote tick.

A failing call (the venue unreachable, an error answer) puts its task, or the
market loading everything waits on, off by ``reconnect_backoff_s`` (at least
``poll_interval_s``) doubling per failure in a row up to
``reconnect_backoff_max_s``; the failure is logged once and then counted
(`FailureLog`), not once per try.
"""
from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from shm.records import SIDE_BUY, SIDE_SELL

from .base import (FailureLog, Health, SeenTrades, TickBuffer, backoff_delay, flush_ticks,
                   short_reason)
from .rest import RateLimiter, RestClient, make_exchange

log = logging.getLogger("feed.poll")


class PollSource:
    def __init__(self, feed, symbol_ids: dict[str, int], timeout_s: float = 10.0, wait_hook=None):
        self.feed = feed
        self.health = Health(state="connecting")
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
        self.markets_due = 0.0
        self.failures: dict = {}       # task (or "markets") -> failed calls in a row
        self.fail_log = FailureLog(log, f"{feed.venue} REST poll", self.health)
        self.emitted = 0

    def _next_delay(self) -> float:
        now = time.monotonic()
        if not self.markets_loaded:
            soonest = self.markets_due
        else:
            soonest = min(self.due.values(), default=now + 1.0)
        return max(0.0, soonest - now, self.limiter.delay())

    def step(self) -> np.ndarray | None:
        if not self.tasks or self._next_delay() > 0:
            return None
        task = "markets"
        try:
            if not self.markets_loaded:
                self.rest.call("load_markets")
                self.markets_loaded = True
                self._worked(task)
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
            self._worked(task)
        except Exception as e:  # network, venue or parse errors: counted, retried after a backoff
            self._failed(task, e)
        out = self.buffer
        ticks = flush_ticks(out, self.health)
        if ticks is not None:
            self.emitted += len(ticks)
        return ticks

    def _worked(self, task) -> None:
        self.failures.pop(task, None)
        if not self.failures:
            self.health.state = "polling"
            self.fail_log.succeeded()

    def _failed(self, task, e: Exception) -> None:
        """Put the task (or the market loading) off by the backoff; log it once, then count."""
        import ccxt
        n = self.failures[task] = self.failures.get(task, 0) + 1
        feed = self.feed
        delay = backoff_delay(n, max(feed.reconnect_backoff_s, feed.poll_interval_s),
                              max(feed.reconnect_backoff_max_s, feed.poll_interval_s))
        if task == "markets":
            self.markets_due = time.monotonic() + delay
        else:
            self.due[task] = time.monotonic() + delay
        # the venue out of reach (refused, timed out, unavailable) or answering with an error
        reach = isinstance(e, ccxt.NetworkError) and not isinstance(e, ccxt.DDoSProtection)
        self.health.state = "disconnected" if reach else "error"
        self.fail_log.failed(short_reason(e), delay, feed.reconnect_backoff_max_s)

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
