"""The debugging tap: decoded records from the rings, over ZeroMQ.

The supervisor owns an XPUB socket. Only while somebody subscribes to a
stream does it read that stream's rings, through followers: unregistered,
read-only cursors that never slow a writer (a lapped follower just skips).
Records go out as JSON under the topic ``<stream>|<symbol>@<venue>`` (so a
subscriber can filter by symbol on the publisher side), at most
``bus.tap_max_rate`` records per second per stream; the rest are counted as
skipped and announced under ``<stream>|`` with ``{"skipped": n}``.
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
        self.tokens = {s: float(self.rate) for s in STREAMS}
        self.last_refill = time.monotonic()
        self.sent = {s: 0 for s in STREAMS}
        self.skipped = {s: 0 for s in STREAMS}

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
        now = time.monotonic()
        dt = now - self.last_refill
        self.last_refill = now
        for s in STREAMS:
            self.tokens[s] = min(float(self.rate), self.tokens[s] + dt * self.rate)
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
                    topic = f"{stream}|{d.get('symbol', '')}".encode()
                    try:
                        self.socket.send_multipart([topic, json.dumps(d).encode()], zmq.NOBLOCK)
                    except zmq.Again:
                        skipped += 1
                self.sent[stream] += n_send
            if skipped:
                self.skipped[stream] += skipped
                try:
                    self.socket.send_multipart([f"{stream}|".encode(), json.dumps(
                        {"ring": name, "skipped": skipped}).encode()], zmq.NOBLOCK)
                except zmq.Again:
                    pass

    def publish_health(self, feeds: list[dict]) -> None:
        if not self._subscribed(HEALTH):
            return
        for f in feeds:
            topic = f"{HEALTH}|{f['venue']}".encode()
            try:
                self.socket.send_multipart([topic, json.dumps(f).encode()], zmq.NOBLOCK)
            except zmq.Again:
                pass

    def stats(self) -> dict:
        return {"subscribed_topics": sorted(t.decode(errors="replace") for t in self.topics),
                "sent": dict(self.sent), "skipped": dict(self.skipped)}

    def close(self) -> None:
        self.followers.clear()
        self.socket.close()
