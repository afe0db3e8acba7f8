"""A websocket connection that stays alive: ping, a no-message watchdog,
reconnect with exponential backoff and jitter, resubscribe.

Single-threaded on purpose: the feed process's loop asks ``wait(timeout)``
(select on the socket) and ``receive()`` (every frame available now), and
calls ``maintain()`` between, which pings, runs the watchdog and reconnects
when the time has come. websocket-client does the protocol.
"""
from __future__ import annotations

import contextlib
import logging
import random
import select
import time

import websocket

from .base import FailureLog, Health, backoff_delay, short_reason, short_url

log = logging.getLogger("feed.ws")

READ_TIMEOUT_S = 1.0       # a peer that stalls in the middle of a frame is dropped after this


class WsConnection:
    def __init__(self, url: str, subscribe: list[str], health: Health, *,
                 ping_interval_s: float = 20.0, no_message_timeout_s: float = 30.0,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 connect_timeout_s: float = 10.0, seed: int | None = None, wait_hook=None):
        self.url = url
        self.shown_url = short_url(url)       # for log lines: no query, no user info
        # wraps what may wait on the peer (the feed worker's network_wait: heartbeats go on)
        self.wait_hook = wait_hook or (lambda what, limit_s: contextlib.nullcontext())
        self.subscribe = subscribe
        self.health = health
        self.ping_interval_s = ping_interval_s
        self.no_message_timeout_s = no_message_timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self.ws: websocket.WebSocket | None = None
        self.failures = 0
        self.next_attempt = 0.0
        self.last_ping = 0.0
        self.last_rx = 0.0
        self.connected_once = False
        self._rng = random.Random(seed)
        # connecting while the venue cannot be reached: one warning, then a count
        self.connect_log = FailureLog(log, f"connect to {self.shown_url}", health)

    # -- connection state ---------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.ws is not None

    def connect(self) -> bool:
        """Try to connect and subscribe if it is time; True on a fresh connection."""
        now = time.monotonic()
        if self.ws is not None or now < self.next_attempt:
            return False
        self.health.state = "connecting"
        try:
            # the timeout bounds each step: the TCP connect, the TLS and HTTP handshake
            with self.wait_hook("websocket connect", 3 * self.connect_timeout_s):
                ws = websocket.create_connection(self.url, timeout=self.connect_timeout_s,
                                                 enable_multithread=False)
                for msg in self.subscribe:
                    ws.send(msg)
            # a frame that stalls halfway blocks a read for at most this long per chunk
            ws.settimeout(min(self.connect_timeout_s, READ_TIMEOUT_S))
        except Exception as e:  # any failure to connect is retried, never fatal
            delay = self._schedule_retry()
            self.connect_log.failed(short_reason(e), delay, self.backoff_max_s)
            return False
        self.ws = ws
        self.failures = 0
        self.connect_log.succeeded()
        self.last_rx = self.last_ping = time.monotonic()
        self.health.state = "connected"
        if self.connected_once:
            self.health.reconnects += 1
        self.connected_once = True
        log.info("connected to %s", self.shown_url)
        return True

    def _schedule_retry(self) -> float:
        """Count a failure; the next attempt after the backoff. Returns the delay."""
        self.health.errors += 1
        self.health.state = "disconnected"
        self.failures += 1
        delay = backoff_delay(self.failures, self.backoff_s, self.backoff_max_s)
        delay *= 0.5 + self._rng.random()  # jitter: venues dislike synchronised reconnects
        self.next_attempt = time.monotonic() + delay
        return delay

    def _failed(self, why: str) -> None:
        """A connection that was up is lost: said every time (each follows a success)."""
        delay = self._schedule_retry()
        log.warning("%s; reconnecting in %.1f s", why, delay)

    def _close_socket(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=0.2)
            except Exception:
                pass   # the peer is gone already: nothing left to close politely
            self.ws = None

    def drop(self, why: str) -> None:
        """Close the socket and schedule a reconnect."""
        self._close_socket()
        self._failed(why)

    def close(self) -> None:
        self._close_socket()
        self.health.state = "closed"

    # -- I/O ------------------------------------------------------------------------
    def _pending(self) -> bool:
        sock = self.ws.sock if self.ws is not None else None
        return bool(sock is not None and hasattr(sock, "pending") and sock.pending())

    def wait(self, timeout: float) -> None:
        """Block until the socket is readable, the timeout passes, or (if we are
        disconnected) until the next reconnect attempt is due."""
        if self.ws is None:
            time.sleep(max(0.0, min(timeout, self.next_attempt - time.monotonic())))
            return
        if self._pending():
            return
        try:
            select.select([self.ws.sock], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            pass

    def receive(self, limit: int = 1000) -> list[str | bytes]:
        """Every complete frame available now (at most ``limit``)."""
        out: list[str | bytes] = []
        ws = self.ws
        while ws is not None and len(out) < limit:
            if not self._pending():
                try:
                    ready, _, _ = select.select([ws.sock], [], [], 0)
                except (OSError, ValueError):
                    ready = []
                if not ready:
                    break
            try:
                opcode, data = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                self.drop(f"{self.shown_url} stalled in the middle of a frame")   # its rest is lost
                break
            except Exception as e:
                self.drop(f"connection to {self.shown_url} lost: {short_reason(e)}")
                break
            # only data feeds the no-message watchdog: a server whose websocket layer
            # still answers our pings but sends nothing has stopped answering too
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self.last_rx = time.monotonic()
                out.append(data.decode("utf-8", errors="replace"))
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self.last_rx = time.monotonic()
                out.append(data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                self.drop(f"{self.shown_url} closed the connection")
                break
            elif opcode == websocket.ABNF.OPCODE_PING:
                try:
                    ws.pong(data)
                except Exception:
                    pass
        return out

    def send(self, text: str) -> None:
        if self.ws is not None:
            try:
                self.ws.send(text)
            except Exception as e:
                self.drop(f"send to {self.shown_url} failed: {short_reason(e)}")

    def maintain(self) -> None:
        """Ping when due; drop a connection that has gone silent too long."""
        if self.ws is None:
            return
        now = time.monotonic()
        if now - self.last_rx > self.no_message_timeout_s:
            self.drop(f"no message from {self.shown_url} for {now - self.last_rx:.1f} s")
            return
        if now - self.last_ping >= self.ping_interval_s:
            self.last_ping = now
            try:
                self.ws.ping()
            except Exception as e:
                self.drop(f"ping to {self.shown_url} failed: {short_reason(e)}")
