"""ZeroMQ endpoints of a run and the small helpers every process uses.

Bulk data never goes over ZeroMQ inside a host; it carries control,
heartbeats and the debugging tap. Everything binds ipc:// sockets in the
run directory (owner-only) unless the config asks for tcp on loopback.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq

from .errors import UserError


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


def check_run_dir(path: Path, create: bool = False) -> Path:
    """The run directory, made owner-only when ``create``; a UserError (one line) when it
    is a link, not a directory, not ours, or writable by others: state files and sockets
    there steer every command, so nobody else may plant or swap them."""
    path = Path(path)
    if create and not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass                               # made meanwhile: checked below like any other
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    why = None
    if stat.S_ISLNK(st.st_mode):
        why = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a directory"
    elif st.st_uid != os.getuid():
        why = f"belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})"
    elif st.st_mode & 0o022:
        why = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        raise UserError(f"run directory {path} {why}; refusing to use it (remove it, or set "
                        "TICKPIPE_RUN_DIR or pipeline.run_dir to a directory of your own, mode 0700)")
    if create and stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` whole, owner-only, never through a link: a new temporary file
    (O_EXCL | O_NOFOLLOW, mode 0600) renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)                         # a leftover (or a planted link) goes, not its target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def private_umask():
    """Files made meanwhile (ipc sockets bound by ZeroMQ) are owner-only from the start."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


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
