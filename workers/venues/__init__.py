"""One module per venue: how to subscribe to it and how to parse its messages.

A venue module defines a subclass of ``base.VenueFeed``; ``feed_class(kind)``
finds it by the feed's ``kind`` in the config.
"""
from __future__ import annotations

import importlib

VENUE_MODULES = {
    "binance": "workers.venues.binance",
    "upbit": "workers.venues.upbit",
    "bithumb": "workers.venues.bithumb",
}


def feed_class(kind: str):
    module = importlib.import_module(VENUE_MODULES[kind])
    return module.FEED
