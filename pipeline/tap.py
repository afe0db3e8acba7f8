"""The debugging tap: decoded records from the rings, over ZeroMQ.

The supervisor owns an XPUB socket. Only while somebody subscribes to a
stream does it read that stream's rings, through followers: unregistered,
read-only cursors that never slow a writer (a lapped follower just skips).
Records go out as JSON under the topic ``<stream>|<symbol>@<venue>`` (so a
subscriber can filter by symbol on the publisher side), at most
``bus.tap_max_rate`` records per second per stream; the rest are counted as
skipped and announced under ``<stream>|`` with ``{"skipped": n}``.

Two streams come from heartbeats, not rings: ``health`` (each feed's exchange
health, once per report interval) and ``risk`` (the risk guard's state changes
and denials, as execution reports them in each heartbeat's ``risk_events``;
topic ``risk|<symbol>`` for a denial or a symbol tier, ``risk|`` otherwise).
"""
from __future__ import annotations

import json
import math
import time

import zmq

from shm.records import FLAG_ALERT, to_dicts
from shm.ring import Ring, RingFollower

from . import bus
from .config import BusConfig
from .topology import Topology

STREAMS = ("ticks", "features", "signals", "intents", "orders", "fills", "alerts")
# a stream read from another stream's rings, keeping only the flagged records
DERIVED = {"alerts": ("features", FLAG_ALERT)}
HEALTH = "health"   # not a ring: each feed's exchange health, once per report interval
RISK = "risk"       # not a ring: execution's risk events, from its heartbeats
LIMITED = STREAMS + (RISK,)   # the streams held to tap_max_rate


def stream_of(ring_name: str) -> str:
    return ring_name.split(".")[0]


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


class TapPublisher:
    def __init__(self, ctx: zmq.Context, topo: Topology, rings: dict[str, Ring], cfg: BusConfig):
        self.socket = bus.socket(ctx, zmq.XPUB, SNDHWM=10000)
        self.topo = topo
        self.rings = rings
        self.rate = cfg.tap_max_rate
        self.topics: set[bytes] = set()
        self.followers: dict[tuple[str, str], RingFollower] = {}   # (stream, ring name)
        self.tokens = {s: float(self.rate) for s in LIMITED}
        self.last_refill = time.monotonic()
        self.sent = {s: 0 for s in LIMITED}
        self.skipped = {s: 0 for s in LIMITED}

    def bind(self, endpoint: str) -> None:
        self.socket.bind(endpoint)

    def on_subscriptions(self) -> None:
        while True:
            try:
                msg = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not msg:
                continue
            topic = msg[1:]
            if msg[0] == 1:
                self.topics.add(topic)
            else:
                self.topics.discard(topic)
        for stream in STREAMS:
            source = DERIVED.get(stream, (stream, 0))[0]
            wanted = self._subscribed(stream)
            for name, ring in self.rings.items():
                if stream_of(name) != source:
                    continue
                if wanted and (stream, name) not in self.followers:
                    self.followers[(stream, name)] = ring.follower()
                elif not wanted:
                    self.followers.pop((stream, name), None)

    def _subscribed(self, stream: str) -> bool:
        s = stream.encode()
        head = s + b"|"
        return any(head.startswith(t) or t.startswith(head) for t in self.topics)

    def publish(self) -> None:
        if not self.followers:
            return
        self._refill()
        name_of = self.topo.symbols.name
        for (stream, name), follower in self.followers.items():
            batch = follower.read()
            if batch is None:
                continue
            records = batch.records
            if stream in DERIVED:
                records = records[(records["flags"] & DERIVED[stream][1]) != 0]
            n_send = min(len(records), int(self.tokens[stream]))
            skipped = len(records) - n_send + batch.dropped
            if n_send:
                self.tokens[stream] -= n_send
                for d in to_dicts(records[-n_send:], name_of):
                    d = _clean(d)
                    d["ring"] = name
                    skipped += not self._send(stream, d.get("symbol", ""), d)
                self.sent[stream] += n_send
            self._say_skipped(stream, name, skipped)

    def _send(self, stream: str, symbol: str, d: dict) -> bool:
        """One record on the tap (topic ``stream|symbol``); False if the socket is full."""
        try:
            self.socket.send_multipart([f"{stream}|{symbol}".encode(), json.dumps(d).encode()], zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _say_skipped(self, stream: str, source: str, skipped: int) -> None:
        """Count what was not sent and tell the subscribers how much."""
        if skipped:
            self.skipped[stream] += skipped
            self._send(stream, "", {"ring": source, "skipped": skipped})

    def _refill(self) -> None:
        now = time.monotonic()
        dt = now - self.last_refill
        self.last_refill = now
        for s in LIMITED:
            self.tokens[s] = min(float(self.rate), self.tokens[s] + dt * self.rate)

    def publish_risk(self, source: str, events: list, dropped: int = 0) -> None:
        """One heartbeat's risk events of ``source`` (the execution worker's id), each as
        its own message: the event dict plus ``source`` (and ``symbol`` = the key for a
        symbol tier's state change). State changes always go out; denials past the rate
        limit, and the events the worker could not fit in its heartbeat (``dropped``),
        are announced as skipped."""
        if not self._subscribed(RISK):
            return
        self._refill()
        budget = int(self.tokens[RISK])
        chosen = []
        for e in events:
            if isinstance(e, dict) and (e.get("kind") == "state" or budget > 0):
                chosen.append(e)
                budget -= e.get("kind") != "state"
        n_send = len(chosen)
        skipped = len(events) - n_send + (dropped if isinstance(dropped, int) else 0)
        if n_send:
            self.tokens[RISK] = max(0.0, self.tokens[RISK] - n_send)
            for event in chosen:
                d = _clean(event)
                if "symbol" not in d and d.get("tier") == "symbol" and isinstance(d.get("key"), str):
                    d["symbol"] = d["key"]
                d["source"] = source
                skipped += not self._send(RISK, d.get("symbol") or "", d)
            self.sent[RISK] += n_send
        self._say_skipped(RISK, source, skipped)

    def publish_health(self, feeds: list[dict]) -> None:
        if not self._subscribed(HEALTH):
            return
        for f in feeds:
            self._send(HEALTH, f["venue"], f)

    def stats(self) -> dict:
        return {"subscribed_topics": sorted(t.decode(errors="replace") for t in self.topics),
                "sent": dict(self.sent), "skipped": dict(self.skipped)}

    def close(self) -> None:
        self.followers.clear()
        self.socket.close()
