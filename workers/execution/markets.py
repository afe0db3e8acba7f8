"""The venues' order rules for execution, fetched from each venue feed's REST.

A paper order the venue would refuse, or round to another size, must not trade on
paper either: execution holds each venue's orders (denied ``VENUE_RULES``, with
the reason) until that venue's tick, lot and notional rules are in. They are
fetched once at start, in a thread, so the loop never waits on a peer, and
retried with a growing pause until they come: Binance's ``exchangeInfo``, Upbit's
market list with its dated KRW tick tables (venue_rules.py reads both). A symbol
the venue does not list gets rules that deny every order for it (not trading).
Venues of other kinds (the synthetic and replay feeds, ccxt polling) have no rules
to fetch and are not held.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from pipeline.config import FeedConfig

from ..venues.binance import BinanceFeed
from ..venues.rest import make_exchange
from ..venues.upbit import UpbitFeed
from .venue_rules import SymbolRules, binance_rules, upbit_rules

# feed kind -> (the venue's name for "BTC/USDT", fetch: ccxt exchange -> native symbol -> rules)
RULE_KINDS: dict[str, tuple[Callable[[str], str], Callable]] = {
    "binance": (BinanceFeed.native, lambda ex: binance_rules(ex.publicGetExchangeInfo())),
    "upbit": (UpbitFeed.native, lambda ex: upbit_rules(ex.publicGetMarketAll(), time.time_ns())),
}
TIMEOUT_S = 5.0
RETRY_FIRST_S, RETRY_MAX_S = 2.0, 60.0


def needs_rules(feed: FeedConfig) -> bool:
    return feed.kind in RULE_KINDS


def fetch_rules(feed: FeedConfig, symbol_ids: dict[str, int]) -> dict[int, SymbolRules]:
    """Rules by symbol id for ``symbol_ids`` ("BTC/USDT" -> id) from the feed's venue;
    raises whatever the REST call raises."""
    native_of, fetch = RULE_KINDS[feed.kind]
    listed = fetch(make_exchange(feed.kind, feed.rest_url, TIMEOUT_S))
    out = {}
    for symbol, sid in symbol_ids.items():
        native = native_of(symbol)
        out[sid] = listed.get(native) or SymbolRules(symbol=native, lot_step=None, trading=False)
    return out


class RulesLoader:
    """Fetches the rules of every feed that has them, in a daemon thread, handing each
    venue's to ``deliver(venue, rules by symbol id)`` as it arrives; ``close`` stops it."""

    def __init__(self, feeds: list[tuple[FeedConfig, dict[str, int]]],
                 deliver: Callable[[str, dict[int, SymbolRules]], None], log):
        self.pending = [(f, ids) for f, ids in feeds if needs_rules(f)]
        self.deliver, self.log = deliver, log
        self.failures: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="venue-rules", daemon=True)

    def start(self) -> "RulesLoader":
        if self.pending:
            self._thread.start()
        return self

    def _run(self) -> None:
        pause = RETRY_FIRST_S
        while self.pending and not self._stop.is_set():
            for feed, ids in list(self.pending):
                venue = feed.venue_name
                try:
                    rules = fetch_rules(feed, ids)
                except Exception as e:   # any failure of a peer: said once, then retried
                    why = f"{type(e).__name__}: {str(e)[:200]}"
                    if self.failures.get(venue) != why:
                        self.log.error("venue rules of %s not loaded (%s); its orders are held "
                                       "until they are, retrying", venue, why)
                    self.failures[venue] = why
                    continue
                self.deliver(venue, rules)
                self.failures.pop(venue, None)
                self.pending.remove((feed, ids))
                self.log.info("venue rules of %s loaded for %d symbols", venue, len(rules))
            if self.pending:
                self._stop.wait(pause)
                pause = min(pause * 2, RETRY_MAX_S)

    def join(self, timeout: float) -> bool:
        """Wait until every venue's rules are in (or ``timeout``); True if they are."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self.pending

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(TIMEOUT_S + 1)
