"""REST through ccxt, inside the venue's rate limit.

``make_exchange`` builds a ccxt exchange whose API URLs can be pointed at
another origin (a testnet, or a local server in tests). ``RateLimiter`` is a
token bucket shared by everything one feed process sends to a venue.
"""
from __future__ import annotations

import contextlib
import time
from urllib.parse import urlsplit

from .base import Health


class RateLimiter:
    """Token bucket: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def try_acquire(self, cost: float = 1.0) -> bool:
        self._refill()
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def delay(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are available (0 if now)."""
        self._refill()
        return max(0.0, (cost - self.tokens) / self.rate)

    def acquire(self, cost: float = 1.0) -> None:
        """Block until the request may go (a timed wait for the bucket, not a poll)."""
        while not self.try_acquire(cost):
            time.sleep(self.delay(cost))


def _rebase(urls, origin: str):
    if isinstance(urls, dict):
        return {k: _rebase(v, origin) for k, v in urls.items()}
    if isinstance(urls, str) and urls.startswith(("http://", "https://")):
        parts = urlsplit(urls)
        return origin.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
    return urls


def make_exchange(venue: str, rest_url: str = "", timeout_s: float = 10.0):
    """A ccxt exchange for ``venue``; with ``rest_url``, every API URL keeps its
    path but goes to that origin instead."""
    import ccxt
    try:
        cls = getattr(ccxt, venue)
    except AttributeError:
        raise ValueError(f"ccxt has no exchange named {venue!r}") from None
    ex = cls({"enableRateLimit": False, "timeout": int(timeout_s * 1000)})
    if rest_url:
        ex.urls["api"] = _rebase(ex.urls["api"], rest_url)
    return ex


RETRY_BACKOFF_S = 0.5


def no_wait_hook(what: str, limit_s: float):
    return contextlib.nullcontext()


class RestClient:
    """ccxt calls behind the rate limiter, timed into the venue's health. ``wait_hook``
    wraps each call (the feed worker's `network_wait`, which keeps its heartbeats
    going while a slow venue answers)."""

    def __init__(self, exchange, limiter: RateLimiter, health: Health, wait_hook=None):
        self.exchange = exchange
        self.limiter = limiter
        self.health = health
        self.wait_hook = wait_hook or no_wait_hook

    def call(self, method: str, *args, retries: int = 0, **kwargs):
        """One ccxt call; with ``retries``, a failure worth trying again (a timeout, a 5xx,
        a 429) is tried again that many times, after 0.5, 1, 2 ... s and inside the rate limit (a
        backfill that gives up at the first 500 loses what a second try would fetch)."""
        import ccxt
        # what the call may take by its own limits: each try's timeout and its turn in
        # the rate limit (the bucket empty), the backoffs between tries
        limit_s = ((self.exchange.timeout / 1000 + self.limiter.capacity / self.limiter.rate)
                   * (retries + 1) + sum(RETRY_BACKOFF_S * 2 ** k for k in range(retries)))
        with self.wait_hook(f"REST {method}", limit_s):
            for attempt in range(retries + 1):
                self.limiter.acquire()
                try:
                    return self._timed(method, *args, **kwargs)
                # ccxt's "may succeed if tried again": timeouts, 5xx, 429, a venue's
                # "internal error" code; never a bad request or a bad symbol
                except ccxt.OperationFailed:
                    if attempt == retries:
                        raise
                    self.health.rest_retries += 1
                    time.sleep(RETRY_BACKOFF_S * 2 ** attempt)   # a backoff timer, not a sync

    def _timed(self, method: str, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return getattr(self.exchange, method)(*args, **kwargs)
        except Exception:
            self.health.errors += 1
            raise
        finally:
            ms = (time.perf_counter() - t0) * 1000
            h = self.health
            h.rest_calls += 1
            h.rest_latency_ms = ms if h.rest_calls == 1 else 0.8 * h.rest_latency_ms + 0.2 * ms
