"""ZeroMQ endpoints of a run and the small helpers every process uses.

Bulk data never goes over ZeroMQ inside a host; it carries control,
heartbeats and the debugging tap. Everything binds ipc:// sockets in the
run directory (owner-only) unless the config asks for tcp on loopback.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import zmq


@dataclass
class Endpoints:
    control: str      # REP: CLI requests (status, report, stop)
    heartbeat: str    # PULL: workers' heartbeats
    command: str      # PUB: supervisor -> workers (stop)
    tap: str          # XPUB: decoded records for `pipeline tap`

    @classmethod
    def for_run(cls, run_dir: Path, run_id: str) -> "Endpoints":
        base = f"ipc://{run_dir}/{run_id}"
        return cls(f"{base}.control", f"{base}.hb", f"{base}.cmd", f"{base}.tap")

    def ipc_paths(self) -> list[str]:
        return [e[len("ipc://"):] for e in (self.control, self.heartbeat, self.command, self.tap)
                if e.startswith("ipc://")]


def socket(ctx: zmq.Context, kind: int, **opts) -> zmq.Socket:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    for k, v in opts.items():
        s.setsockopt(getattr(zmq, k), v)
    return s


def send_json(sock: zmq.Socket, obj, flags: int = 0) -> None:
    sock.send(json.dumps(obj, separators=(",", ":")).encode(), flags)


def recv_json(sock: zmq.Socket, flags: int = 0):
    return json.loads(sock.recv(flags))


def request(endpoint: str, obj: dict, timeout_s: float = 5.0) -> dict:
    """One request/reply to a supervisor's control socket; raises TimeoutError."""
    ctx = zmq.Context.instance()
    s = socket(ctx, zmq.REQ, RCVTIMEO=int(timeout_s * 1000), SNDTIMEO=int(timeout_s * 1000))
    try:
        s.connect(endpoint)
        send_json(s, obj)
        return recv_json(s)
    except zmq.Again:
        raise TimeoutError(f"no answer from the supervisor at {endpoint} within {timeout_s:g} s") from None
    finally:
        s.close()


def remove_ipc_files(endpoints: Endpoints) -> None:
    for path in endpoints.ipc_paths():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
