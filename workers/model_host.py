"""Remote model host: the ensemble served over ZeroMQ, for a host with a GPU.

``pipeline serve-model --bind tcp://0.0.0.0:PORT`` runs `ModelHost` on the
model host: the same `models.serving.EnsembleModel` the local model worker
runs, loaded from that host's ``[model] artifacts``. On the main host each
model worker is then a bridge (`RemoteEnsemble`, ``[model] remote =
"tcp://HOST:PORT"``): it reads the bar closes from shared memory as always,
sends the feature rows of one batch and writes the signals the host returns.
The rows travel as the raw bytes of the features table, and the host runs the
very code the local worker runs, so the signals equal the local worker's.

Security: every connection is encrypted and authenticated with CURVE. The host
holds ``server.key_secret`` and accepts only the client public keys in
``clients/``; the bridge holds its ``clients/*.key_secret`` and the host's
``server.key``. `make_keys` (``pipeline keys DIR``) writes both pairs.

Wire format (DEALER bridge -> ROUTER host, multipart):

* ``hello``, JSON {feature_names, symbols, bar_seconds} -> ``ready``, JSON
  {members, versions, method, device} or ``error``, JSON {error}. The host
  refuses a pipeline whose features, symbols or bar length differ from its own
  config's: the LSTM keeps each symbol's history by id, and the models were
  trained on those columns over bars of that length (the host checks its
  artifacts against its own config's bar length when it loads them).
* ``predict``, JSON {req, itemsize, features}, ids (int64 bytes), rows (bytes of
  the features dtype) -> ``result``, JSON {req, infer_ms}, probs f8 (n, 3),
  member_probs f8 (n, SIGNAL_MEMBERS, 3), versions u2 (n, SIGNAL_MEMBERS),
  flags u2 (n,), hold bool (n,); or ``error``.

When the host is unreachable (no connection, or no answer within ``[model]
remote_timeout_s``) the bridge reports the model stage ``degraded`` and every
signal of that batch is HOLD with FLAG_STALE, so execution opens nothing on
it; a late answer to an older batch is dropped. The connection comes back by
itself (ZeroMQ reconnects) and the next answered batch clears the state.
"""
from __future__ import annotations

import hashlib
import json
import logging
import signal
import time
from collections import deque
from pathlib import Path

import numpy as np
import zmq

from pipeline.config import feature_names
from pipeline.errors import ConfigurationError
from pipeline.symbols import SymbolRegistry
from shm.records import FLAG_STALE, SIGNAL_MEMBERS, features_dtype

SERVER_KEY = "server.key"              # the host's public key (the bridge needs it)
SERVER_SECRET = "server.key_secret"    # the host's key pair (the host only)
CLIENTS = "clients"                    # public keys the host accepts; the bridge's own pair
CLIENT_NAME = "client"

log = logging.getLogger("model_host")


class KeysError(ValueError):
    """Missing or unreadable CURVE keys; printed in one line."""


class RemoteError(ConfigurationError):
    """The host refused this pipeline (features, symbols or bars differ): a configuration error."""


# -- keys -----------------------------------------------------------------------------------
def make_keys(directory: str | Path) -> list[Path]:
    """A host key pair and one client key pair under ``directory`` (never overwrites)."""
    import zmq.auth
    d = Path(directory).expanduser()
    existing = [p for p in (d / SERVER_SECRET, d / CLIENTS / f"{CLIENT_NAME}.key_secret") if p.exists()]
    if existing:
        raise KeysError(f"{existing[0]} already exists; keys are never overwritten "
                        "(remove the directory to make new ones)")
    (d / CLIENTS).mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    made = []
    for where, name in ((d, "server"), (d / CLIENTS, CLIENT_NAME)):
        public, secret = zmq.auth.create_certificates(str(where), name)
        Path(secret).chmod(0o600)
        made += [Path(public), Path(secret)]
    return made


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth
    if not path.exists():
        raise KeysError(f"{path}: no such key file; make keys with 'pipeline keys {path.parent}' "
                        "(see README, remote model host)")
    try:
        public, sec = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as e:
        raise KeysError(f"{path}: not a CURVE key file ({e})") from None
    if secret and not sec:
        raise KeysError(f"{path}: holds no secret key")
    return public, sec


def client_keys(directory: str | Path) -> tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret) for the bridge."""
    d = Path(directory).expanduser()
    server_public, _ = _load(d / SERVER_KEY, secret=False)
    secrets = sorted((d / CLIENTS).glob("*.key_secret")) if (d / CLIENTS).is_dir() else []
    public, secret = _load(secrets[0] if secrets else d / CLIENTS / f"{CLIENT_NAME}.key_secret", True)
    return server_public, public, secret


def server_keys(directory: str | Path) -> tuple[bytes, bytes, Path]:
    """(server public, server secret, directory of accepted client keys) for the host."""
    d = Path(directory).expanduser()
    public, secret = _load(d / SERVER_SECRET, secret=True)
    clients = d / CLIENTS
    if not clients.is_dir() or not list(clients.glob("*.key")):
        raise KeysError(f"{clients}: no client public keys to accept (pipeline keys {d})")
    return public, secret, clients


def features_id(feature_names: list[str]) -> str:
    """Short hash of the feature columns, sent with every batch."""
    return hashlib.sha256("\0".join(feature_names).encode()).hexdigest()[:16]


def _json(frame: bytes) -> dict:
    obj = json.loads(frame)
    if not isinstance(obj, dict):
        raise ValueError("header is not a JSON object")
    return obj


# -- the host -----------------------------------------------------------------------------
class ModelHost:
    """`pipeline serve-model`: one EnsembleModel answering every bridge in turn."""

    def __init__(self, cfg, bind: str, keys_dir: str | Path):
        from models.serving import EnsembleModel      # the trained models: loaded by the host only
        self.sock = None
        server_public, server_secret, clients = server_keys(keys_dir)
        self.cfg = cfg
        self.feature_names = feature_names(cfg)
        self.features = features_id(self.feature_names)
        self.symbols = SymbolRegistry.from_config(cfg).keys
        self.dtype = features_dtype(self.feature_names)
        self.bar_seconds = float(cfg.indicators.bar_seconds)
        self.model = EnsembleModel(cfg.model.artifacts, self.feature_names, len(self.symbols),
                                   bar_seconds=self.bar_seconds, symbols=self.symbols)
        for note in self.model.notes:
            log.warning("%s", note)
        self.ctx = zmq.Context()
        from zmq.auth.thread import ThreadAuthenticator
        self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("model_host.auth"))
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(clients))
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.curve_server = True
        self.sock.curve_publickey = server_public
        self.sock.curve_secretkey = server_secret
        try:
            self.sock.bind(bind)
        except zmq.ZMQError as e:
            self.close()
            raise KeysError(f"cannot bind {bind}: {e}") from None
        self.bind = bind
        self.stopping = False
        self.counters = {"batches": 0, "rows": 0, "errors": 0, "clients": 0}
        self._clients: set[bytes] = set()

    def ready_info(self) -> dict:
        m = self.model
        return {"members": list(m.members), "versions": dict(m.versions), "method": m.method,
                "device": m.device, "features": self.features}

    def handle(self, frames: list[bytes]) -> list[bytes]:
        """The reply frames to one request (without the routing id)."""
        kind = frames[0] if frames else b""
        try:
            if kind == b"hello":
                hello = _json(frames[1])
                if list(hello.get("feature_names", [])) != self.feature_names:
                    raise RemoteError(
                        "the model host serves features " + ", ".join(self.feature_names)
                        + " but this pipeline computes " + ", ".join(hello.get("feature_names", []))
                        + "; run both with the same [indicators]")
                if list(hello.get("symbols", [])) != self.symbols:
                    raise RemoteError("the model host's config lists the symbols "
                                      + ", ".join(self.symbols) + " but this pipeline's lists "
                                      + ", ".join(hello.get("symbols", []))
                                      + "; run both with the same [[feeds]]")
                from models.registry import bar_text, same_bars
                bar = hello.get("bar_seconds")
                number = isinstance(bar, (int, float)) and not isinstance(bar, bool) and bar > 0
                if not number or not same_bars(bar, self.bar_seconds):
                    theirs = (f"closes {bar_text(bar)} bars" if number
                              else "does not say its bar length (an older tickpipe?)")
                    raise RemoteError(f"the model host serves models trained on {bar_text(self.bar_seconds)} "
                                      f"bars but this pipeline {theirs}; run both with the same "
                                      "[indicators] bar_seconds")
                return [b"ready", json.dumps(self.ready_info()).encode()]
            if kind == b"predict":
                head = _json(frames[1])
                if head.get("features") != self.features:
                    raise RemoteError("the batch's features differ from the model host's; "
                                      "run both with the same [indicators]")
                if int(head.get("itemsize", -1)) != self.dtype.itemsize:
                    raise ValueError(f"row size {head.get('itemsize')} != {self.dtype.itemsize}")
                ids = np.frombuffer(frames[2], np.int64).astype(np.intp)
                rows = np.frombuffer(frames[3], self.dtype)
                if len(ids) != len(rows) or len(ids) == 0:
                    raise ValueError(f"{len(ids)} ids for {len(rows)} rows")
                if ids.min() < 0 or ids.max() >= len(self.symbols):
                    raise ValueError(f"symbol id outside the host's {len(self.symbols)} symbols")
                t0 = time.perf_counter()
                probs, member, versions, flags, hold = self.model.predict(ids, rows)
                self.counters["batches"] += 1
                self.counters["rows"] += len(ids)
                reply = {"req": head.get("req"), "infer_ms": (time.perf_counter() - t0) * 1e3}
                return [b"result", json.dumps(reply).encode(),
                        np.ascontiguousarray(probs, np.float64).tobytes(),
                        np.ascontiguousarray(member, np.float64).tobytes(),
                        np.ascontiguousarray(versions, np.uint16).tobytes(),
                        np.ascontiguousarray(flags, np.uint16).tobytes(),
                        np.ascontiguousarray(hold, np.bool_).tobytes()]
            raise ValueError(f"unknown request {kind[:20]!r}")
        except RemoteError as e:
            self.counters["errors"] += 1
            log.error("refused: %s", e)
            return [b"error", json.dumps({"error": str(e), "config": True}).encode()]
        except (ValueError, IndexError, KeyError, TypeError) as e:
            self.counters["errors"] += 1
            log.warning("malformed request: %s", e)
            return [b"error", json.dumps({"error": f"malformed request: {e}"}).encode()]
        except Exception as e:                 # a model failing on one batch must not end the host
            self.counters["errors"] += 1
            log.exception("batch failed")
            return [b"error", json.dumps({"error": f"the model host failed on this batch: "
                                                   f"{type(e).__name__}: {e}"}).encode()]

    def serve(self, duration: float | None = None) -> None:
        """Answer requests until SIGINT / SIGTERM (or ``duration`` seconds)."""
        def stop(signum, frame):
            self.stopping = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        end = None if duration is None else time.monotonic() + duration
        while not self.stopping and (end is None or time.monotonic() < end):
            if not self.sock.poll(200):
                continue
            frames = self.sock.recv_multipart()
            ident, body = frames[0], frames[1:]
            if ident not in self._clients:
                self._clients.add(ident)
                self.counters["clients"] += 1
            self.sock.send_multipart([ident, *self.handle(body)])

    def close(self) -> None:
        self.sock.close(0)
        self.auth.stop()
        self.ctx.term()


# -- the bridge -------------------------------------------------------------------------
class RemoteEnsemble:
    """The model worker's ensemble, served by a ModelHost: same ``predict`` and ``stats``
    as EnsembleModel, plus a ``state`` ("running" or "degraded") and its reason."""

    def __init__(self, cfg, feature_names: list[str], symbols: list[str]):
        server_public, public, secret = client_keys(cfg.model.remote_keys)
        self.endpoint = cfg.model.remote
        self.timeout = cfg.model.remote_timeout_s
        self.feature_names = list(feature_names)
        self.features = features_id(self.feature_names)
        self.symbols = list(symbols)
        self.bar_seconds = float(cfg.indicators.bar_seconds)
        self.itemsize = features_dtype(self.feature_names).itemsize
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)        # no queueing for a host that is not there
        self.sock.setsockopt(zmq.SNDHWM, 4)
        self.sock.curve_serverkey = server_public
        self.sock.curve_publickey = public
        self.sock.curve_secretkey = secret
        self.sock.connect(self.endpoint)
        self.req = 0
        self.info: dict | None = None                 # the host's "ready" answer
        self.answered = False                         # has the host ever answered
        self.state, self.reason = "degraded", f"connecting to {self.endpoint}"
        self.degraded_since: float | None = time.time()
        self.counters = {"remote_batches": 0, "stale_batches": 0, "stale_signals": 0,
                         "late_replies": 0}
        self.infer_ms: deque = deque(maxlen=1000)     # the host's inference, per answered batch
        self.rtt_ms: deque = deque(maxlen=1000)       # the round trip the worker waited

    # what the worker's stats show
    @property
    def members(self) -> list[str]:
        return list(self.info["members"]) if self.info else []

    def _degrade(self, reason: str) -> None:
        if self.state != "degraded" or self.reason != reason:
            log.warning("model stage degraded: %s", reason)
        if self.state != "degraded":
            self.degraded_since = time.time()
        self.state, self.reason = "degraded", reason

    def _recover(self) -> None:
        if self.state != "running" and self.answered:
            log.warning("model host %s answering again", self.endpoint)
        self.answered = True
        self.state, self.reason, self.degraded_since = "running", "", None

    def _ask(self, frames: list[bytes], want: bytes, req: int | None) -> list[bytes] | None:
        """Send and wait for the matching answer; None (and degraded) when there is none.
        A connection (TCP and the CURVE handshake) is waited for up to the timeout, except
        right after a batch found none: then the batch is stale at once, and the next one
        finds the connection ZeroMQ re-made meanwhile."""
        no_connection = f"no connection to the model host {self.endpoint}"
        wait_ms = 0 if self.reason == no_connection else int(self.timeout * 1000)
        try:
            if not self.sock.poll(wait_ms, zmq.POLLOUT):
                raise zmq.Again()
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self._degrade(no_connection)
            return None
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(max(1, int(left * 1000))):
                self._degrade(f"the model host {self.endpoint} did not answer within {self.timeout:g} s")
                return None
            reply = self.sock.recv_multipart()
            if reply[0] == b"error":
                err = _json(reply[1])
                if err.get("config"):
                    raise RemoteError(f"model host {self.endpoint}: {err['error']}")
                self._degrade(f"model host {self.endpoint}: {err.get('error')}")
                return None
            if reply[0] != want:
                self.counters["late_replies"] += 1
                continue
            if req is not None and _json(reply[1]).get("req") != req:
                self.counters["late_replies"] += 1      # an answer to a batch we gave up on
                continue
            return reply

    def hello(self) -> bool:
        """Ask the host who it is; raises RemoteError when it refuses this pipeline."""
        body = json.dumps({"feature_names": self.feature_names, "symbols": self.symbols,
                           "bar_seconds": self.bar_seconds}).encode()
        reply = self._ask([b"hello", body], b"ready", None)
        if reply is None:
            return False
        self.info = _json(reply[1])
        self._recover()
        log.info("model host %s: %s on %s", self.endpoint, self.info["versions"], self.info["device"])
        return True

    def predict(self, ids: np.ndarray, rows: np.ndarray):
        """As EnsembleModel.predict; on no answer, HOLD with FLAG_STALE for every row."""
        n = len(ids)
        if self.info is None and not self.hello():
            return self._stale(n)
        self.req += 1
        head = json.dumps({"req": self.req, "itemsize": self.itemsize, "features": self.features})
        t0 = time.perf_counter()
        reply = self._ask([b"predict", head.encode(), np.asarray(ids, np.int64).tobytes(),
                           np.ascontiguousarray(rows).tobytes()], b"result", self.req)
        if reply is None:
            return self._stale(n)
        try:
            probs = np.frombuffer(reply[2], np.float64).reshape(n, 3)
            member = np.frombuffer(reply[3], np.float64).reshape(n, SIGNAL_MEMBERS, 3)
            versions = np.frombuffer(reply[4], np.uint16).reshape(n, SIGNAL_MEMBERS)
            flags = np.frombuffer(reply[5], np.uint16).reshape(n).copy()
            hold = np.frombuffer(reply[6], np.bool_).reshape(n).copy()
            infer_ms = float(_json(reply[1])["infer_ms"])
        except (ValueError, IndexError, KeyError, TypeError) as e:
            self._degrade(f"malformed answer from the model host {self.endpoint}: {e}")
            return self._stale(n)
        self._recover()
        self.rtt_ms.append((time.perf_counter() - t0) * 1e3)
        self.infer_ms.append(infer_ms)
        self.counters["remote_batches"] += 1
        return probs, member, versions, flags, hold

    def _stale(self, n: int):
        self.counters["stale_batches"] += 1
        self.counters["stale_signals"] += n
        return (np.full((n, 3), 1.0 / 3.0), np.zeros((n, SIGNAL_MEMBERS, 3)),
                np.zeros((n, SIGNAL_MEMBERS), np.uint16), np.full(n, FLAG_STALE, np.uint16),
                np.ones(n, bool))

    def stats(self) -> dict:
        def pct(v, q):
            return round(float(np.percentile(v, q)), 3) if v else None
        info = self.info or {}
        return {"model": "ensemble", "remote": self.endpoint, "remote_state": self.state,
                "remote_reason": self.reason, "degraded_since": self.degraded_since,
                "method": info.get("method"), "members": self.members,
                "versions": info.get("versions", {}), "device": info.get("device"),
                "infer_ms_p50": pct(self.infer_ms, 50), "infer_ms_p99": pct(self.infer_ms, 99),
                "rtt_ms_p50": pct(self.rtt_ms, 50), "rtt_ms_p99": pct(self.rtt_ms, 99),
                **self.counters}

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
