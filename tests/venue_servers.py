"""Local servers on 127.0.0.1 that replay real captured payloads from
../shared/data/payloads into the real feed code (never a mock of our code).

* ``WsReplayServer``: a websocket server. Each connection first receives the
  client's subscription messages, then the capture's "recv" messages sent
  byte for byte as they were recorded. It can drop the connection after N
  messages, insert a malformed frame, or go silent (a server that stops
  answering), each on chosen connections only.
* ``HttpReplayServer``: answers GET requests from a table of path -> body
  (captured REST responses), and records what was asked.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.sync.server import serve

from shm.records import TICK
from workers.venues.capture import capture_lines, recv_messages  # noqa: F401 (re-exported)

SHARED = Path(__file__).resolve().parents[2] / "shared"
PAYLOADS = SHARED / "data" / "payloads"


@dataclass
class Behaviour:
    """What one connection (by its 0-based index) does differently."""
    drop_after: int | None = None        # close the socket after sending this many messages
    silent_after: int | None = None      # stop sending (but keep the socket open) after this many
    malformed: dict[int, str] = field(default_factory=dict)  # before message i, send this text
    skip: int = 0                        # start this far into the capture


class WsReplayServer:
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
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WsReplayServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.server.shutdown()
        self._thread.join(10)

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


class HttpReplayServer:
    """routes: path -> body text, (status, body), or a callable(query dict) -> either."""

    def __init__(self, routes: dict):
        self.routes = routes
        self.requests: list[tuple[str, dict]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HttpReplayServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


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
