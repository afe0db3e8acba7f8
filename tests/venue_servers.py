"""Local servers on 127.0.0.1 that replay real captured payloads from
tests/data/payloads (copies from ../shared/data/payloads, tests/data/SOURCES.md)
into the real feed code (never a mock of our code).

* ``WsReplayServer``: a websocket server. Each connection first receives the
  client's subscription messages, then the capture's "recv" messages sent
  byte for byte as they were recorded. It can drop the connection after N
  messages, insert a malformed frame, or go silent (a server that stops
  answering), each on chosen connections only.
* ``HttpReplayServer``: answers GET requests from a table of path -> body
  (captured REST responses), and records what was asked.
* ``captured``: what a capture's venue sent (text, decoded, time) and what its
  client sent; ``venue_feed``: a
  venue's parser; ``parse_all``: a parser over a list of messages;
  ``reconnect_twice``: a parser's backfill over REST from HttpReplayServer.
* ``collect_ticks``: a venue's real VenueSource on these servers, run until a
  condition holds (``run_until``).
"""
from __future__ import annotations

import importlib
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.sync.server import serve

from pipeline.config import FeedConfig
from shm.records import TICK
from conftest import DATA
from workers.venues.capture import capture_lines, recv_messages  # noqa: F401 (re-exported)

PAYLOADS = DATA / "payloads"


@dataclass
class Behaviour:
    """What one connection (by its 0-based index) does differently."""
    drop_after: int | None = None        # close the socket after sending this many messages
    silent_after: int | None = None      # stop sending (but keep the socket open) after this many
    malformed: dict[int, str] = field(default_factory=dict)  # before message i, send this text
    skip: int = 0                        # start this far into the capture
    stall_mid_frame_after: int | None = None  # after this many, half a frame, then nothing


class _Served:
    """Serves on a daemon thread for the length of a ``with`` block."""

    def _serve_in_thread(self, serve_forever) -> None:
        self._thread = threading.Thread(target=serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._shutdown()
        self._thread.join(10)

    def _shutdown(self) -> None:
        raise NotImplementedError


class WsReplayServer(_Served):
    def __init__(self, messages: list[str], behaviours: dict[int, Behaviour] | None = None,
                 expect_subscribe: int = 1):
        self.messages = messages
        self.behaviours = behaviours or {}
        self.expect_subscribe = expect_subscribe
        self.connections = 0
        self.received: list[list[str]] = []      # per connection, what the client sent
        self.sent: list[int] = []                # per connection, messages sent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.server = serve(self._handler, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        self._serve_in_thread(self.server.serve_forever)

    def _shutdown(self) -> None:
        self._stop.set()
        self.server.shutdown()

    def _handler(self, ws) -> None:
        with self._lock:
            idx = self.connections
            self.connections += 1
            self.received.append([])
            self.sent.append(0)
        b = self.behaviours.get(idx, Behaviour())
        try:
            for _ in range(self.expect_subscribe):
                self.received[idx].append(ws.recv(timeout=30))
            for i, msg in enumerate(self.messages[b.skip:]):
                if self._stop.is_set():
                    return
                if b.drop_after is not None and i >= b.drop_after:
                    ws.socket.close()    # abrupt: no close frame, like a dropped line
                    return
                if b.stall_mid_frame_after is not None and i >= b.stall_mid_frame_after:
                    # a text frame's header announcing 256 bytes, 10 of them, then silence
                    ws.socket.sendall(b"\x81\x7e\x01\x00" + b'{"stream":')
                    self._stop.wait()
                    return
                if b.silent_after is not None and i >= b.silent_after:
                    self._stop.wait()    # keep the socket open, say nothing more
                    return
                if i in b.malformed:
                    ws.send(b.malformed[i])
                ws.send(msg)
                self.sent[idx] += 1
            self._stop.wait()            # the capture is over; stay connected
        except Exception:
            return


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv: HttpReplayServer = self.server.owner
        parts = urlsplit(self.path)
        srv.requests.append((parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}))
        route = srv.routes.get(parts.path)
        if callable(route):
            route = route({k: v[0] for k, v in parse_qs(parts.query).items()})
        if route is None:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"code":-1,"msg":"not found"}')
            return
        status, body = route if isinstance(route, tuple) else (200, route)
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class HttpReplayServer(_Served):
    """routes: path -> body text, (status, body), or a callable(query dict) -> either."""

    def __init__(self, routes: dict):
        self.routes = routes
        self.requests: list[tuple[str, dict]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._serve_in_thread(self.httpd.serve_forever)

    def _shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def captured(path, symbols) -> tuple[list[str], list[dict], list[float], list]:
    """What the venue sent in a capture, as raw texts, decoded messages and receive
    times, and the venue's symbols the client subscribed to: ``symbols`` picks them
    out of its first subscription message."""
    lines = capture_lines(path)
    recv = [r for r in lines if r["dir"] == "recv"]
    first_sent = next(r["msg"] for r in lines if r["dir"] == "send")
    return ([r["raw"] for r in recv], [r["msg"] for r in recv], [r["recv_ts"] for r in recv],
            symbols(first_sent))


def venue_feed(kind: str, ids: dict[str, int], **cfg):
    """The parser of venue ``kind`` (workers.venues.<kind>.FEED) for the symbols of
    ``ids`` (symbol -> id)."""
    module = importlib.import_module(f"workers.venues.{kind}")
    return module.FEED(FeedConfig(name=kind, kind=kind, symbols=list(ids), **cfg), ids)


# A receive time after every capture (in 2116): no captured event is then dated
# ahead of its receipt, which a feed rejects.
RECV_NS = 2 ** 62


def parse_all(feed, raws) -> tuple[np.ndarray, dict]:
    """Every message through ``feed.parse`` (receive times RECV_NS, RECV_NS + 1, ...):
    (the ticks, what was rejected)."""
    from workers.venues.base import TickBuffer
    out = TickBuffer()
    for i, raw in enumerate(raws):
        feed.parse(raw, RECV_NS + i, out)
    return out.take(), out.rejected


def reconnect_twice(kind: str, feed, seen, routes: dict) -> tuple[np.ndarray, np.ndarray, "HttpReplayServer"]:
    """The parser ``feed`` of venue ``kind`` passes on the message ``seen``, then
    reconnects twice, its REST client (ccxt) on an HttpReplayServer serving ``routes``:
    (the ticks up to the first reconnect, those of the second, the server)."""
    from workers.venues.base import TickBuffer
    from workers.venues.rest import RateLimiter, RestClient, make_exchange
    with HttpReplayServer(routes) as http:
        feed.rest = RestClient(make_exchange(kind, http.url), RateLimiter(1000), feed.health)
        out = TickBuffer()
        feed.parse(seen, RECV_NS, out)
        feed.on_connected(out, RECV_NS + 1, reconnect=True)
        ticks = out.take()
        feed.on_connected(out, RECV_NS + 2, reconnect=True)
        again = out.take()
    return ticks, again, http


# reconnect fast and never wait on the rate limit
FAST_RECONNECT = dict(reconnect_backoff_s=0.05, reconnect_backoff_max_s=0.2,
                      no_message_timeout_s=10.0, rest_rate_per_s=1000.0)


def venue_source(kind: str, ws, http, ids: dict[str, int], **cfg):
    """The real VenueSource of venue ``kind`` for the symbols of ``ids`` (symbol -> id),
    on the websocket server ``ws`` and, for REST (ccxt), the HTTP server ``http`` (none:
    no REST), so nothing ever reaches the real venue. FAST_RECONNECT unless ``cfg`` says."""
    from workers.feed import VenueSource
    feed = FeedConfig(name=kind, kind=kind, ws_url=ws.url, rest_url=http.url if http else "",
                      symbols=list(ids), **{**FAST_RECONNECT, **cfg})
    return VenueSource(feed, ids)


def collect_ticks(kind: str, ws, ids: dict[str, int], until, routes: dict | None = None,
                  what: str = "the condition", timeout: float = 60.0, **cfg):
    """Serve ``ws`` and, given ``routes``, an HttpReplayServer on them; run
    ``venue_source(kind, ws, http, ids, **cfg)`` until ``until(ticks so far, source)``.
    Returns (ticks, source, http server or None), the servers stopped, the source closed."""
    with ExitStack() as stack:
        stack.enter_context(ws)
        http = stack.enter_context(HttpReplayServer(routes)) if routes is not None else None
        src = venue_source(kind, ws, http, ids, **cfg)
        ticks = run_until(src, lambda t: until(t, src), what, timeout)
    return ticks, src, http


def run_until(source, cond, what: str = "the condition", timeout: float = 60.0) -> np.ndarray:
    """Drive a feed source as the feed process does (step, housekeeping, wait)
    until ``cond(ticks so far)`` holds; the source is closed afterwards."""
    got = np.zeros(0, TICK)
    deadline = time.monotonic() + timeout
    try:
        while True:
            ticks = source.step()
            if ticks is not None:
                got = np.concatenate([got, ticks])
            if cond(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; stats {source.stats()}")
            source.housekeeping()
            source.wait(0.05)
    finally:
        source.close()
