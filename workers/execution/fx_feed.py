"""Polling a reference FX rate from a URL, for the processes that value money (execution,
and the strategy's sizing): ``[[execution.fx]] url`` sources.

One daemon thread fetches each URL source every ``poll_s`` (a public rate API has a rate
limit, and a rate a minute old is fresh enough to check a market's against), reads the
number at ``field`` of its JSON and hands (source index, rate, time) over through a
deque that the process's loop drains into its ``FxRates`` (``drain``), so the loop never
waits on the network. A failed or malformed answer is logged once per distinct reason
and gives no rate: the source goes stale in its own time and its currency's symbols
only reduce, as with any stale rate.
"""
from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections import deque

from pipeline.config import FxSource

TIMEOUT_S = 5.0


def rate_at(payload, field: str) -> float:
    """The number at ``field`` ("rates.KRW", "0.basePrice") of a parsed JSON payload; a
    ValueError naming the step that fails."""
    x = payload
    for part in field.split("."):
        if isinstance(x, list) and part.lstrip("-").isdigit() and -len(x) <= int(part) < len(x):
            x = x[int(part)]
        elif isinstance(x, dict) and part in x:
            x = x[part]
        else:
            raise ValueError(f"no {part!r} at {field!r} in the answer")
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        raise ValueError(f"{field!r} is {type(x).__name__}, not a number")
    try:
        rate = float(x)
    except ValueError:
        raise ValueError(f"{field!r} is {x!r}, not a number") from None
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{field!r} is {x!r}, not a rate > 0")
    return rate


def fetch_rate(src: FxSource, timeout: float = TIMEOUT_S) -> float:
    req = urllib.request.Request(src.url, headers={"Accept": "application/json",
                                                   "User-Agent": "tickpipe-fx/1"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read(1_000_000)
    try:
        payload = json.loads(body)
    except ValueError:
        raise ValueError(f"not JSON: {body[:80]!r}") from None
    return rate_at(payload, src.field)


class RatePoller:
    """Fetches ``sources`` ((index, FxSource) pairs, FxRates.url_sources) in a daemon thread."""

    def __init__(self, sources: list[tuple[int, FxSource]], log, timeout: float = TIMEOUT_S):
        self.sources, self.log, self.timeout = list(sources), log, timeout
        self.got: deque[tuple[int, float, int]] = deque(maxlen=1024)
        self.failures: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fx-poll", daemon=True)

    def start(self) -> "RatePoller":
        if self.sources:
            self._thread.start()
        return self

    def _run(self) -> None:
        due = {i: 0.0 for i, _ in self.sources}
        while not self._stop.is_set():
            now = time.monotonic()
            for i, src in self.sources:
                if now < due[i]:
                    continue
                due[i] = now + src.poll_s
                try:
                    rate = fetch_rate(src, self.timeout)
                except Exception as e:       # any failure of a peer: said once per reason
                    why = f"{type(e).__name__}: {str(e)[:200]}"
                    if self.failures.get(i) != why:
                        self.log.error("FX rate of %s from %s not read (%s); retrying every %gs",
                                       src.quote, src.url, why, src.poll_s)
                    self.failures[i] = why
                    continue
                if i in self.failures:
                    self.log.info("FX rate of %s from %s read again", src.quote, src.url)
                    self.failures.pop(i)
                self.got.append((i, rate, time.time_ns()))
            self._stop.wait(max(min(due.values()) - time.monotonic(), 0.05))

    def drain(self) -> list[tuple[int, float, int]]:
        out = []
        while self.got:
            out.append(self.got.popleft())
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout + 1)
