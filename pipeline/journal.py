"""The execution journal: an append-only, hash-chained record of everything
execution decides and learns, the record that money questions are answered from.

One SQLite file per pipeline (``journal/<pipeline name>.sqlite`` unless the
config says otherwise: `pipeline.config.Config.journal_path`), written by one process only: execution. Every intent,
risk verdict, order event, fill, position change, risk state change and manual
command is a row of ``entries``; at start, execution replays the journal to
rebuild positions, open orders, balances, realised P&L and risk states.

Why WAL: readers (``pipeline journal show``, ``verify``, ``export``) read a
consistent snapshot while the writer keeps appending, and neither blocks the
other. ``synchronous=NORMAL`` makes a commit an append to the WAL without an
fsync: a committed row survives a crash of the process (kill -9, os._exit), and
only a power loss or kernel crash can take back the last commits.

Why the chain: each row stores the sha256 of the row before it (``prev_hash``)
and its own ``hash`` = sha256(prev_hash + the row's canonical content, id
included; see `row_hash`). A row edited, deleted or moved after the fact breaks
the chain there, and `verify` names the first bad row. The ``head`` table holds
the id and hash of the last committed row, so rows cut off the end are found too;
the writer checks it on open (cheap) and refuses a journal that does not end
where it was last committed, rather than rebuild state from it. The chain has no
secret: whoever can rewrite the file can cut rows off the end and rewrite the head
to match, and that `verify` cannot see; it prints the head (last row's id and hash),
which kept somewhere else (an auditor's note, another machine) rules it out.

Batching: `Journal.append` only adds a row to the batch in memory (its JSON and
hash made then, so bad input fails at once); `Journal.commit` writes the batch in
one transaction, once per step of the execution loop.

Write-ahead, the caller's part (the journal cannot send orders, so it cannot
enforce this; execution must):

    journal.append("order", now, order, symbol=sym, venue=v, client_order_id=coid)
    journal.durable()          # fsync'd: the order is on disk even after a power loss
    venue.send(order)          # only now may the venue learn of it

    journal.append("fill", now, fill, ...)
    journal.append("position", now, position, ...)
    journal.commit()           # the fill is journaled ...
    publish(positions)         # ... before anyone sees the new positions

`durable` is `commit` followed by an fsync of the WAL: use it before anything
leaves the process that the journal must not forget (an order sent); `commit`
is enough for the rest.

Secrets never reach the journal: a payload key that looks like a credential
(api_key, secret, signature, token, password, ...) is refused. NaN and infinity
are refused too (a NaN price replayed at start would rebuild wrong positions),
as is anything JSON cannot hold exactly; numpy scalars and arrays are converted.

The schema is versioned: ``schema_version`` lists the migrations applied, and
opening a file applies the missing ones from `MIGRATIONS`, in order, each in
its own transaction. A file is recognised as a journal by its SQLite
application_id.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import itertools
import json
import math
import operator
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, compress, repeat
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UserError

try:        # the payload check's common case compiled (setup.py; optional: without it, Python)
    from ._journalfast import plain as _plain_compiled
except ImportError:
    _plain_compiled = None

KINDS = ("intent", "verdict", "order", "fill", "position", "risk_state", "command", "note")
BATCH = "batch"                    # a stored row holding many rows of the kinds above (see `append_batch`)
BATCH_VERSION = 1
GENESIS = "0" * 64                 # prev_hash of the first row
APPLICATION_ID = 0x7469636B        # "tick": SQLite header field that marks a tickpipe journal
COLUMNS = ("id", "ts_ns", "kind", "symbol", "venue", "client_order_id", "payload",
           "prev_hash", "hash")
EXPORT_SCHEMA = pa.schema([
    ("id", pa.int64()), ("part", pa.int32()), ("ts_ns", pa.int64()), ("kind", pa.string()),
    ("symbol", pa.string()), ("venue", pa.string()), ("client_order_id", pa.string()),
    ("payload", pa.string()), ("prev_hash", pa.string()), ("hash", pa.string()),
])
_EXPORT_BATCH = 65_536
TS_LIMIT = 2**63                    # ts_ns is SQLite's signed 64-bit integer
BUSY_TIMEOUT_MS = 5000              # the writer waits this long for the file's lock

# payload keys that name credentials, matched on the key lower-cased without - and _
_SECRET = re.compile(r"apikey|secret|signature|token|passw(or)?d|passphrase|privatekey|credential"
                     r"|authorization|listenkey|^sig$|^auth$")
# the same words anywhere in a payload's JSON (keys and values): a cheap first look; only
# a hit pays for the walk over the keys that decides
_SECRET_IN_TEXT = re.compile(_SECRET.pattern.replace("^sig$", '"sig"').replace("^auth$", '"auth"'))


class JournalError(UserError):
    """A journal that cannot be opened, read or written as asked; one line."""


# -- canonical content and the chain -------------------------------------------------
def _plain(value: Any) -> Any:
    """json's fallback: numpy values as Python ones; anything else is refused."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"a value of type {type(value).__name__} is not JSON")


# built once: json.dumps with options builds a new encoder at every call
_PAYLOAD = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False, default=_plain)
_CONTENT = json.JSONEncoder(separators=(",", ":"))
_LEAVES = (str, int, bool, type(None))


@lru_cache(maxsize=4096)
def _is_secret(key: str) -> bool:
    return bool(_SECRET.search(key.lower().replace("_", "").replace("-", "")))


def _check_payload(value: Any, where: str) -> None:
    """Refuse credential keys and NaN/inf at any depth, naming where they are.
    Plain dicts, lists and leaves take the fast type checks; the rest the slow ones."""
    t = type(value)
    if t in _LEAVES:
        return
    if t is float:
        if not math.isfinite(value):
            raise JournalError(f"payload value {where} is {value}; the journal keeps only finite "
                               f"numbers (a NaN replayed at start would rebuild wrong state)")
    elif t is dict or isinstance(value, Mapping):
        for k, v in value.items():
            if type(k) is str and _is_secret(k):
                raise JournalError(f"payload key {where}[{k!r}] looks like a credential; "
                                   f"keys and signatures never go into the journal")
            if type(v) not in _LEAVES:
                _check_payload(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if type(v) not in _LEAVES:
                _check_payload(v, f"{where}[{i}]")
    elif isinstance(value, (float, np.floating)):
        _check_payload(float(value), where)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fc" and not np.isfinite(value).all():
        raise JournalError(f"payload array {where} holds NaN or infinity; the journal keeps "
                           f"only finite numbers")
    elif isinstance(value, np.ndarray) and value.dtype.kind == "O":     # objects: what they hold
        _check_payload(value.tolist(), where)


_SAFE_KEYS: set[str] = set()       # payload keys already found not to name a credential
_SCALARS = frozenset({str, int, bool, type(None)})
_CONTAINERS = frozenset({dict, list, tuple})
_PLAIN = _SCALARS | _CONTAINERS | {float}
_FLOATS, _DICTS, _LISTS, _STR = {float}, {dict}, {list}, {str}
_FLAT = _SCALARS | {float}
_is_dict = functools.partial(type.__instancecheck__, dict)
_is_list = functools.partial(type.__instancecheck__, list)
_is_tuple = functools.partial(type.__instancecheck__, tuple)


def _check_fast(value: Any, where: str) -> None:
    """The refusals of `_check_payload` (credential keys, NaN/inf at any depth) for the
    plain dicts and lists a batch is built of, paid per container rather than per value,
    in C: keys against the set of keys already cleared, values by their types, floats by
    their sum (finite only if every one is). A container's dicts are taken together (their
    keys at once, their values as one list) and its many short rows of one length as
    columns, so a
    batch's many small rows cost as few large containers. Any doubt (a new key, a sum or
    float that is not finite, a value of another type) takes the slow walk, which raises
    naming where. Where pipeline._journalfast is built, one compiled pass clears the
    common case (nothing but plain values and cleared keys) first; its "not sure" goes on
    here."""
    if _plain_compiled is not None and _plain_compiled(value, _SAFE_KEYS):
        return
    stack = [value]
    pop = stack.pop
    while stack:
        v = pop()
        t = type(v)
        if t is dict:
            if not _SAFE_KEYS.issuperset(v):
                _clear_keys(v, value, where)
            vals = v.values()
        elif t is list or t is tuple:
            vals = v
        else:
            _check_payload(value, where)
            continue
        types = set(map(type, vals))
        if types <= _SCALARS:
            continue
        if not types <= _PLAIN:
            _check_payload(value, where)            # numpy values, mappings: the slow walk (all of it)
        elif float in types and not math.isfinite(
                sum(vals if types == _FLOATS else compress(vals, map(operator.is_, map(type, vals), repeat(float))))):
            _check_payload(value, where)            # raises, naming where (or a sum overflowed)
        if dict in types:
            dicts = list(vals) if types == _DICTS else list(filter(_is_dict, vals))
            keys = set().union(*dicts)
            if not _SAFE_KEYS.issuperset(keys):
                _clear_keys(keys, value, where)
            stack.append(list(chain.from_iterable(map(dict.values, dicts))))
        if list in types:
            rows = list(vals) if types == _LISTS else list(filter(_is_list, vals))
            if len(rows) > len(rows[0]) and len(set(map(len, rows))) == 1:
                stack.extend(zip(*rows))            # many short rows of one length: their columns
            else:
                stack.extend(rows)
        if tuple in types:
            stack.extend(filter(_is_tuple, vals))


def _clear_keys(keys: Iterable, value: Any, where: str) -> None:
    """Keys not yet cleared: strings that name no credential (the slow walk of the whole
    payload raises, naming where), then remembered as cleared."""
    for k in keys:
        if type(k) is not str:
            raise JournalError(f"payload key {where}: {k!r} is not a string")
    _check_payload(value, where)
    _SAFE_KEYS.update(keys)


def canonical(payload: Mapping[str, Any]) -> str:
    """The payload as the journal stores and hashes it: JSON, sorted keys, no spaces.
    Raises JournalError for a credential key, NaN/inf or a value JSON cannot hold."""
    if not isinstance(payload, Mapping):
        raise JournalError(f"a journal payload is a dict, not {type(payload).__name__}")
    try:
        text = _PAYLOAD.encode(payload if type(payload) is dict else dict(payload))
    except (TypeError, ValueError) as e:
        _check_payload(payload, "payload")          # NaN or a credential: say where
        raise JournalError(f"payload cannot be journaled: {e}") from None
    if type(payload) is dict and set(map(type, payload.values())) <= _FLAT and set(map(type, payload)) <= _STR:
        # one level of string keys: each key checked itself (cached), no scan of the text
        if not _SAFE_KEYS.issuperset(payload):
            if any(map(_is_secret, payload)):
                _check_payload(payload, "payload")  # raises, naming the key
            _SAFE_KEYS.update(payload)
    elif _SECRET_IN_TEXT.search(text.lower().replace("_", "").replace("-", "")):
        _check_payload(payload, "payload")          # a credential key raises, naming it
    return text


def row_hash(prev_hash: str, id: int, ts_ns: int, kind: str, symbol: str | None,
             venue: str | None, client_order_id: str | None, payload: str) -> str:
    """The chain's definition: sha256 hex of prev_hash followed by the row's content as
    a JSON list (id first, so a row moved to another id no longer matches its hash).
    A batch row (a large payload) hashes its columns but the payload as a JSON list,
    then a newline (which that JSON cannot hold), then the payload as it is: escaping a
    large payload into a JSON string costs more than hashing it."""
    if kind == BATCH:
        return _batch_hash(prev_hash, id, ts_ns, symbol, venue, client_order_id, payload.encode())
    content = _CONTENT.encode([id, ts_ns, kind, symbol, venue, client_order_id, payload])
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def _batch_hash(prev_hash: str, id: int, ts_ns: int, symbol: str | None, venue: str | None,
                client_order_id: str | None, payload: bytes) -> str:
    """`row_hash` of a batch row from its payload's UTF-8 bytes (as orjson makes them), fed
    to the hash as they are: no copy of a large payload into one string and back."""
    if symbol is None and venue is None and client_order_id is None and type(id) is int and type(ts_ns) is int:
        head = f'[{id},{ts_ns},"{BATCH}",null,null,null]'      # what the encoder writes, without it
    else:
        head = _CONTENT.encode([id, ts_ns, BATCH, symbol, venue, client_order_id])
    h = hashlib.sha256(f"{prev_hash}{head}\n".encode())
    h.update(payload)
    return h.hexdigest()


# -- schema and migrations -----------------------------------------------------------
def _v1(db: sqlite3.Connection) -> None:
    """The first schema: the entries and the migrations applied."""
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_ns INTEGER NOT NULL)")
    db.execute("""CREATE TABLE entries (
        id INTEGER PRIMARY KEY,
        ts_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        symbol TEXT,
        venue TEXT,
        client_order_id TEXT,
        payload TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL)""")
    db.execute("CREATE INDEX entries_client_order_id ON entries (client_order_id)")


def _v2(db: sqlite3.Connection) -> None:
    """The chain's head (so rows cut off the end are found) and the indexes that
    `journal show --since --symbol` reads by."""
    db.execute("""CREATE TABLE head (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        id INTEGER NOT NULL,
        hash TEXT NOT NULL)""")
    last = db.execute("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
    db.execute("INSERT INTO head VALUES (1, ?, ?)", last or (0, GENESIS))
    db.execute("CREATE INDEX entries_ts_ns ON entries (ts_ns)")
    db.execute("CREATE INDEX entries_symbol_ts_ns ON entries (symbol, ts_ns)")


def _v3(db: sqlite3.Connection) -> None:
    """Batch rows (kind ``batch``, see `Journal.append_batch`): no table changes, but a
    tickpipe that reads up to version 2 would skip them and rebuild positions without
    their fills, so it must refuse the file rather than read it."""


# (version, migration); a new schema is a new entry at the end, never an edit of one here
MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [(1, _v1), (2, _v2), (3, _v3)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _version(db: sqlite3.Connection, path: Path) -> int:
    """The schema version of an open file; 0 for a new, empty database. Raises
    JournalError for a file that is not a tickpipe journal or is newer than this code."""
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = _tables(db)
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise JournalError(f"journal {path} is locked by another process (a transaction open "
                               f"on it); try again when it is done") from None
        raise JournalError(f"{path} is not a tickpipe journal ({e})") from None
    except sqlite3.DatabaseError as e:
        raise JournalError(f"{path} is not a tickpipe journal ({e})") from None
    if app_id == 0 and not tables:
        return 0
    if app_id != APPLICATION_ID or "schema_version" not in tables:
        raise JournalError(f"{path} is not a tickpipe journal (an SQLite file of another program)")
    version = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
    if version > SCHEMA_VERSION:
        raise JournalError(f"{path} has journal schema version {version}; this tickpipe reads "
                           f"up to version {SCHEMA_VERSION}: upgrade tickpipe")
    return version


def _migrate(db: sqlite3.Connection, path: Path, now_ns: int) -> None:
    """Apply the migrations the file lacks, each with its version row in one transaction."""
    for version, step in MIGRATIONS:
        if version <= _version(db, path):
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            db.execute("INSERT INTO schema_version VALUES (?, ?)", (version, now_ns))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:           # SQLite may have rolled back already
                db.execute("ROLLBACK")
            raise


# -- the writer ----------------------------------------------------------------------
class Journal:
    """The single writer of one journal file.

    Opening takes an exclusive lock (flock on ``<file>.lock``), so a second writer,
    in this process or another, fails at once instead of forking the chain. The lock
    dies with the process, so a crashed execution does not block its restart.
    """

    _INSERT = ("INSERT INTO entries (id, ts_ns, kind, symbol, venue, client_order_id, payload,"
               " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")

    def __init__(self, path: str | Path, group_rows: int = 0):
        """``group_rows`` > 0: `commit` writes only once that many rows wait (`durable`
        and `close` write whatever waits), for a writer that is never recovered in the
        middle of its run: a backtest, which a rerun repeats exactly. What is written is
        the same rows, in the same order, in fewer transactions; a crash loses at most the
        last group (the file still verifies). 0: every commit writes."""
        self.path = Path(path)
        self.group_rows = max(0, int(group_rows))
        if self.path.is_dir():
            raise JournalError(f"journal {self.path} is a directory; give a file path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JournalError(f"cannot create the journal's folder {self.path.parent}: "
                               f"{e.strerror}") from None
        self._lock_fd = self._lock()
        try:
            self._db = self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._rows: list[tuple] = []        # appended, not yet committed
        self._dir_synced = False
        self._unchecked = 0                  # payload bytes committed since the last checkpoint call
        self._checkpointer: _Checkpointer | None = None

    def _lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise JournalError(f"cannot create the journal lock {lock_path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise JournalError(f"journal {self.path} is already open by another writer "
                               f"(pid {holder}); execution is its only writer") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                 timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as e:
            raise JournalError(f"cannot open journal {self.path}: {e}") from None
        try:
            _version(db, self.path)                 # refuse a foreign file before writing to it
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA wal_autocheckpoint = 0")     # `_Checkpointer` does it, off the hot path
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _migrate(db, self.path, time.time_ns())
            last = db.execute("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
            head = db.execute("SELECT id, hash FROM head WHERE one = 1").fetchone()
        except sqlite3.Error as e:
            db.close()
            raise JournalError(f"cannot open journal {self.path}: {e}") from None
        except BaseException:
            db.close()
            raise
        if tuple(last or (0, GENESIS)) != tuple(head or ()):
            db.close()
            raise JournalError(
                f"journal {self.path} does not end where it was last committed (head row "
                f"{head[0] if head else 'gone'}, last row {last[0] if last else 0}): rows were cut "
                f"off or changed; run `pipeline journal verify` before trading on it")
        self._next_id, self._last_hash = (last[0] + 1, last[1]) if last else (1, GENESIS)
        return db

    @property
    def pending(self) -> int:
        """Rows appended since the last commit."""
        return len(self._rows)

    @property
    def last_id(self) -> int:
        """Id of the last row appended (committed or not); 0 for an empty journal."""
        return self._next_id - 1

    def append(self, kind: str, ts_ns: int, payload: Mapping[str, Any], symbol: str | None = None,
               venue: str | None = None, client_order_id: str | None = None) -> int:
        """Add a row to the open batch and return its id; nothing is on disk before
        `commit` or `durable`. Bad input raises JournalError and adds nothing."""
        if kind not in KINDS:
            raise JournalError(f"journal kind {kind!r} is not one of {', '.join(KINDS)}")
        if isinstance(ts_ns, bool) or not isinstance(ts_ns, (int, np.integer)) or not 0 <= ts_ns < TS_LIMIT:
            raise JournalError(f"journal ts_ns must be a non-negative integer of ns, not {ts_ns!r}")
        for name, value in (("symbol", symbol), ("venue", venue), ("client_order_id", client_order_id)):
            if value is not None and (not isinstance(value, str) or not value or not value.isprintable()):
                raise JournalError(f"journal {name} must be a non-empty printable string or None, not {value!r}")
        text = canonical(payload)
        ts_ns = int(ts_ns)
        row_id = self._next_id
        digest = row_hash(self._last_hash, row_id, ts_ns, kind, symbol, venue, client_order_id, text)
        self._rows.append((row_id, ts_ns, kind, symbol, venue, client_order_id, text, self._last_hash,
                           digest))
        self._next_id, self._last_hash = row_id + 1, digest
        return row_id

    def append_batch(self, ts_ns: int, sections: list[dict]) -> int:
        """Add many rows, of one step, as one stored row of kind ``batch``: one JSON text,
        one hash and one insert instead of one per row. Readers (`rows`, `replay`) give
        them back as the rows they stand for, in section order, each with the batch row's
        id and its place in it (``part``, from 1); `verify` checks the stored row, so an
        edit anywhere in a batch is found at the batch's row. Returns the stored row's id,
        or 0 when the sections hold no rows (nothing is appended).

        A section is rows of one kind: ``{"kind": k, "n": rows, "ts_ns": ..., "symbol":
        ..., "venue": ..., "client_order_id": ...}`` (each one value for all its rows or a
        list of ``n``; symbol, venue and client_order_id may be left out: None) and their
        payloads, either ``"cols": {field: list of n values}`` or ``"payloads": [n dicts]``.
        Optional, to keep a batch small: ``"const": {field: value}`` (the same in every
        payload), ``"copy": {field: "ts_ns" | "symbol" | "venue" | "client_order_id"}`` (the
        row's own value) and ``"attach": {"into": field, "key": name, "at": [row indexes],
        "fields": [names], "rows": [lists of values]}``: payload[into][key] =
        dict(zip(fields, row)) for those rows (the field names written once, not per row).
        The same refusals as `append` (credential keys, NaN, bad kinds, times and names).
        The stored row's ts_ns is the latest of its rows' (and ``ts_ns``), so ``since``
        filters never skip it."""
        latest = ts_ns
        keep = []
        for i, sec in enumerate(sections):
            n = sec.get("n")
            if type(n) is not int or n < 0:
                raise JournalError(f"batch section {i}: n must be a row count, not {n!r}")
            if n == 0:
                continue
            if sec.get("kind") not in KINDS:
                raise JournalError(f"journal kind {sec.get('kind')!r} is not one of {', '.join(KINDS)}")
            ts = sec.get("ts_ns")
            if type(ts) is list:
                if len(ts) != n or not set(map(type, ts)) <= {int} or min(ts) < 0:
                    raise JournalError(f"batch section {i}: ts_ns must be {n} non-negative integers of ns")
                latest = max(latest, max(ts))
            elif type(ts) is not int or ts < 0:
                raise JournalError(f"journal ts_ns must be a non-negative integer of ns, not {ts!r}")
            else:
                latest = max(latest, ts)
            for name in ("symbol", "venue", "client_order_id"):
                v = sec.get(name)
                if type(v) is list:
                    if (len(v) != n or not set(map(type, v)) <= {str, type(None)} or "" in v
                            or not "".join(filter(None, set(v))).isprintable()):
                        raise JournalError(f"batch section {i}: {name} must be {n} non-empty printable strings "
                                           f"or None")
                elif v is not None and (type(v) is not str or not v or not v.isprintable()):
                    raise JournalError(f"journal {name} must be a non-empty printable string or None, not {v!r}")
            if not set(sec) <= _SECTION_KEYS:
                raise JournalError(f"batch section {i}: unknown parts {sorted(set(sec) - _SECTION_KEYS)}")
            if "cols" in sec:
                cols = sec["cols"]
                if (type(cols) is not dict or not set(map(type, cols.values())) <= _LISTS
                        or not set(map(len, cols.values())) <= {n}):
                    raise JournalError(f"batch section {i}: cols must be lists of {n} values")
                _check_fast(cols, "payload")
                for name in ("const", "copy", "attach"):
                    if name in sec and type(sec[name]) is not dict:
                        raise JournalError(f"batch section {i}: {name} must be a dict")
                _check_fast(sec.get("const", {}), "payload")
                if not set(sec.get("copy", {}).values()) <= {"ts_ns", "symbol", "venue", "client_order_id"}:
                    raise JournalError(f"batch section {i}: copy names a row's ts_ns, symbol, venue or "
                                       f"client_order_id")
                _check_fast(sec.get("copy", {}), "payload")
                if "attach" in sec:
                    _check_attach(sec["attach"], n, cols, i)
            else:
                if {"const", "copy", "attach"} & set(sec):
                    raise JournalError(f"batch section {i}: const, copy and attach go with cols")
                payloads = sec.get("payloads")
                if type(payloads) is not list or len(payloads) != n or not set(map(type, payloads)) <= {dict}:
                    raise JournalError(f"batch section {i}: payloads must be a list of {n} dicts")
                _check_fast(payloads, "payload")
            keep.append(sec)
        if not keep:
            return 0
        if isinstance(latest, bool) or not isinstance(latest, (int, np.integer)) or not 0 <= latest < TS_LIMIT:
            raise JournalError(f"journal ts_ns must be a non-negative integer of ns, not {ts_ns!r}")
        try:
            raw = orjson.dumps({"v": BATCH_VERSION, "sections": keep}, default=_plain)
        except (TypeError, orjson.JSONEncodeError) as e:
            raise JournalError(f"payload cannot be journaled: {e}") from None
        text = raw.decode()
        latest = int(latest)
        row_id = self._next_id
        digest = _batch_hash(self._last_hash, row_id, latest, None, None, None, raw)
        self._rows.append((row_id, latest, BATCH, None, None, None, text, self._last_hash, digest))
        self._next_id, self._last_hash = row_id + 1, digest
        return row_id

    def commit(self) -> int:
        """Write the batch appended since the last commit in one transaction (one per
        step); returns the rows committed. Survives a process crash; see `durable` for a
        power loss. If SQLite refuses the batch, nothing of it is written and the rows
        stay pending: ``commit`` may be called again. With ``group_rows``, nothing is
        written (0) until that many rows wait."""
        if len(self._rows) < self.group_rows:
            return 0
        return self._write()

    def _write(self) -> int:
        if not self._rows:
            return 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(self._INSERT, self._rows)
            self._db.execute("UPDATE head SET id = ?, hash = ? WHERE one = 1",
                             (self._next_id - 1, self._last_hash))
            self._db.execute("COMMIT")
        except Exception as e:             # SQLite's, or a value it cannot bind: never left mid-transaction
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise JournalError(f"journal {self.path}: commit failed, the {len(self._rows)} rows are "
                               f"still pending (call commit again): {e}") from None
        done = len(self._rows)
        self._unchecked += sum(len(r[6]) for r in self._rows)
        self._rows = []
        if self._unchecked >= CHECKPOINT_BYTES:
            self._unchecked = 0
            self.checkpoint()
        return done

    def idle(self) -> None:
        """The writer has nothing to do for now: the moment to copy the WAL into the main
        file (only if something was committed since it last was)."""
        if self._unchecked:
            self._unchecked = 0
            self.checkpoint()

    def checkpoint(self) -> None:
        """Have the WAL copied into the main file, by the checkpointer thread (started at
        the first call; this connection does it if that thread is gone). The writer's next
        commit starts the WAL over if the copy caught up with it: call this when idle. A WAL
        grown past WAL_LIMIT_BYTES (a writer never idle) is copied and emptied here, at
        once (after the thread's pass, if one runs): the one step that does it waits, but
        never on a reader (`journal show` paused in a pager): then it tries again later."""
        c = self._checkpointer
        if c is None:
            c = self._checkpointer = _Checkpointer(self.path)
            c.start()
        try:
            if os.stat(self.path.with_name(self.path.name + "-wal")).st_size >= WAL_LIMIT_BYTES:
                with c.lock:                # SQLite refuses a checkpoint while another runs
                    self._db.execute("PRAGMA busy_timeout = 0")
                    try:
                        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                    finally:
                        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                return
            if c.is_alive():
                c.wake.set()
            else:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (OSError, sqlite3.Error):
            pass                            # the next call tries again; the WAL only grows meanwhile

    def durable(self) -> int:
        """`commit`, then fsync the WAL: call it after journaling an order and before
        sending it, so the order is on disk even if the machine loses power.
        (SQLite refuses to change ``synchronous`` inside a transaction, so the fsync
        is ours; any descriptor of the file flushes it.) Writes whatever waits, grouped or not."""
        done = self._write()
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:          # checkpointed and removed: already in the main file
            return done
        try:
            os.fsync(fd)
            if not self._dir_synced:       # the WAL's name itself must survive a power loss
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
                self._dir_synced = True
        except OSError as e:
            raise JournalError(f"journal {self.path}: cannot fsync its WAL: {e.strerror}") from None
        finally:
            os.close(fd)
        return done

    def rollback(self) -> int:
        """Drop the rows not yet written (the batch appended since the last commit, or with
        ``group_rows`` every commit's since the last write); returns the rows dropped."""
        dropped = len(self._rows)
        self._rows = []
        self._resync()
        return dropped

    def _resync(self) -> None:
        last = self._db.execute("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
        self._next_id, self._last_hash = (last[0] + 1, last[1]) if last else (1, GENESIS)

    def replay(self, kinds: Iterable[str] | None = None) -> Iterator[dict]:
        """Rows in journal order, as dicts with the payload parsed: what execution reads
        at start to rebuild its state. Call it before appending."""
        return _select(self._db, kinds=_check_kinds(kinds))

    @property
    def schema_version(self) -> int:
        return _version(self._db, self.path)

    def close(self) -> None:
        """Commit what is pending (a clean stop keeps every row) and release the lock."""
        if self._db is None:
            return
        if self._checkpointer is not None:
            self._checkpointer.finish()
        try:
            self._write()
        finally:
            self._db.close()
            self._db = None
            os.close(self._lock_fd)

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if not hasattr(self, "_rows"):            # not opened (the lock refused it)
            return f"Journal({str(self.path)!r}, not open)"
        return f"Journal({str(self.path)!r}, last_id={self.last_id}, pending={self.pending})"


CHECKPOINT_BYTES = 4 << 20          # payload committed between two WAL checkpoints
WAL_LIMIT_BYTES = 64 << 20          # a WAL this large is emptied by the writer itself


class _Checkpointer(threading.Thread):
    """Copies the WAL into the journal's main file (a PASSIVE checkpoint: it never blocks
    the writer) on its own connection, when the writer asks. SQLite would otherwise run
    the copy, and its fsync, inside whichever commit crosses ``wal_autocheckpoint``: a
    step every few dozen would wait tens of ms. A checkpoint moves committed rows from one
    file to the other; what is committed, and when, is the same either way."""

    def __init__(self, path: Path):
        super().__init__(name="journal-checkpoint", daemon=True)
        self.path = path
        self.wake = threading.Event()
        self.failures = 0
        self.passes = 0
        self.lock = threading.Lock()        # held by whichever connection checkpoints
        self._halt = False

    def run(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 5000")
        except sqlite3.Error:
            return                          # the writer checkpoints itself when this thread is gone
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self._halt:
                    return
                try:
                    self.passes += 1
                    with self.lock:
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    self.failures += 1      # asked again after the next CHECKPOINT_BYTES
        finally:
            db.close()

    def finish(self) -> None:
        self._halt = True
        self.wake.set()
        self.join(timeout=30)


# -- readers -------------------------------------------------------------------------
def _read_only(path: str | Path) -> sqlite3.Connection:
    """A read-only connection (it never creates or changes the file; reads while the
    writer is live, thanks to WAL). Raises JournalError for a missing or foreign file."""
    path = Path(path)
    if path.is_dir():
        raise JournalError(f"journal {path} is a directory; give a file path")
    if not path.exists():
        raise JournalError(f"no journal at {path}")
    uri = "file:" + quote(str(path.resolve())) + "?mode=ro"
    try:
        # a writer's moment holding the file is waited for
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise JournalError(f"cannot open journal {path}: {e}") from None
    try:
        if _version(db, path) == 0:
            raise JournalError(f"{path} is not a tickpipe journal (an empty database)")
    except BaseException:
        db.close()
        raise
    return db


def _check_kinds(kinds: Iterable[str] | None) -> list[str] | None:
    if kinds is None:
        return None
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise JournalError(f"journal kind {bad[0]!r} is not one of {', '.join(KINDS)}")
    return kinds


def _select(db: sqlite3.Connection, since_ns: int | None = None, symbol: str | None = None,
            kinds: Iterable[str] | None = None) -> Iterator[dict]:
    kinds = _check_kinds(kinds)
    where, args = [], []
    if since_ns is not None:
        where.append("ts_ns >= ?")
        args.append(int(since_ns))
    if symbol is not None:
        where.append("(symbol = ? OR kind = 'batch')")
        args.append(symbol)
    if kinds is not None:
        where.append(f"kind IN ({', '.join('?' * (len(kinds) + 1))})")
        args += kinds + [BATCH]
    sql = f"SELECT {', '.join(COLUMNS)} FROM entries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    wanted = None if kinds is None else set(kinds)
    for row in _unreadable_named(db.execute(sql + " ORDER BY id", args)):
        out = dict(zip(COLUMNS, row))
        try:
            out["payload"] = _loads(out["payload"])
        except (ValueError, TypeError):
            raise JournalError(f"journal row {out['id']}: its payload is not JSON (changed by hand?); "
                               f"run `pipeline journal verify`") from None
        if out["kind"] != BATCH:
            out["part"] = 0
            yield out
            continue
        for r in expand(out):
            if ((wanted is None or r["kind"] in wanted) and (symbol is None or r["symbol"] == symbol)
                    and (since_ns is None or r["ts_ns"] >= since_ns)):
                yield r


_SECTION_KEYS = frozenset({"kind", "n", "ts_ns", "symbol", "venue", "client_order_id", "cols", "payloads",
                           "const", "copy", "attach"})


def _check_attach(a: dict, n: int, cols: dict, i: int) -> None:
    fields, at, rows = a.get("fields"), a.get("at"), a.get("rows")
    if (type(a.get("into")) is not str or a["into"] not in cols or type(a.get("key")) is not str
            or type(fields) is not list or type(at) is not list or type(rows) is not list
            or len(at) != len(rows) or not set(map(type, at)) <= {int} or (at and not 0 <= min(at) <= max(at) < n)
            or len(set(at)) != len(at) or not set(map(type, rows)) <= {list} or not set(map(len, rows)) <= {len(fields)}
            or not set(map(type, map(cols[a["into"]].__getitem__, at))) <= {dict}):
        raise JournalError(f"batch section {i}: attach must name a column of dicts, a key, distinct row "
                           f"indexes below {n} and a row of values per index for its fields")
    names = (*fields, a["key"])
    if not _SAFE_KEYS.issuperset(names):            # names cleared once (the same few, batch after batch)
        _check_fast(dict.fromkeys(names), "payload")
    _check_fast(rows, "payload")


# an integer orjson may read as a float: 20 digits or more, or 19 after a minus (a time in ns
# has 19 digits and reads exactly: it must not send every row to the slower reader)
_LONG_DIGITS = re.compile(r"\d{20}|-\d{19}")


def _loads(text: str) -> Any:
    try:
        out = orjson.loads(text)
    except orjson.JSONDecodeError:          # what only Python's json reads
        return json.loads(text)
    # orjson reads an integer past 64 bits as a float: where one may be, Python's json (exact)
    return json.loads(text) if _LONG_DIGITS.search(text) else out


def expand(row: dict) -> list[dict]:
    """The rows a stored ``batch`` row (payload parsed) stands for, in order, each as a
    row of its own kind with the batch's id, ``part`` (its place, from 1) and hashes."""
    body = row["payload"]
    if body.get("v") != BATCH_VERSION:
        raise JournalError(f"journal row {row['id']}: batch layout {body.get('v')!r}, this tickpipe "
                           f"reads layout {BATCH_VERSION}: upgrade tickpipe")
    out, part = [], 0
    for sec in body["sections"]:
        n, kind = sec["n"], sec["kind"]
        per = [(name, sec.get(name)) for name in ("ts_ns", "symbol", "venue", "client_order_id")]
        ts, sym, venue, coid = (v if type(v) is list else [v] * n for _, v in per)
        if "cols" in sec:
            names = list(sec["cols"])
            payloads = [dict(zip(names, vals)) for vals in zip(*sec["cols"].values())] if names \
                else [{} for _ in range(n)]
            own = {"ts_ns": ts, "symbol": sym, "venue": venue, "client_order_id": coid}
            for field, source in sec.get("copy", {}).items():
                for p, v in zip(payloads, own[source]):
                    p[field] = v
            for field, value in sec.get("const", {}).items():
                for p in payloads:
                    p[field] = value
            if "attach" in sec:
                a = sec["attach"]
                for k, values in zip(a["at"], a["rows"]):
                    payloads[k][a["into"]] = {**payloads[k][a["into"]], a["key"]: dict(zip(a["fields"], values))}
        else:
            payloads = sec["payloads"]
        for i in range(n):
            part += 1
            out.append({"id": row["id"], "ts_ns": ts[i], "kind": kind, "symbol": sym[i], "venue": venue[i],
                        "client_order_id": coid[i], "payload": payloads[i], "prev_hash": row["prev_hash"],
                        "hash": row["hash"], "part": part})
    return out


def rows(path: str | Path, since_ns: int | None = None, symbol: str | None = None,
         kinds: Iterable[str] | None = None) -> Iterator[dict]:
    """Rows in journal order (ts_ns >= since_ns, of the symbol, of the kinds), as dicts
    with the payload parsed; for `pipeline journal show` and reconciliation. A missing
    or foreign file and a bad kind raise here, not at the first row."""
    kinds = _check_kinds(kinds)
    db = _read_only(path)

    def read() -> Iterator[dict]:
        try:
            yield from _select(db, since_ns, symbol, kinds)
        finally:
            db.close()
    return read()


def export(path: str | Path, out: str | Path) -> int:
    """Write every row to a Parquet file and return the row count: the rows `rows` reads,
    a batch's each on its own (``part``: its place in the stored row, 0 for a row stored
    alone; ``payload`` its JSON text), so every fill is a row for reconciliation. The
    file appears whole or not at all (written aside, then renamed); it never replaces an
    SQLite file (the journal itself, a typo away)."""
    from .storage import output_file
    try:
        out = output_file(out)
    except UserError as e:
        raise JournalError(f"export: {e}") from None
    _refuse_database(out)
    db = _read_only(path)
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex}-{out.name}")
    count = 0
    try:
        db.execute("BEGIN")                                   # one snapshot for the whole file
        cursor = db.execute(f"SELECT {', '.join(COLUMNS)} FROM entries ORDER BY id")
        with pq.ParquetWriter(tmp, EXPORT_SCHEMA) as writer:
            stored = _unreadable_named(cursor)
            while batch := list(itertools.islice(stored, _EXPORT_BATCH)):
                try:
                    rows = _export_rows(batch)
                    table = _table(rows)
                except (ValueError, TypeError, KeyError, pa.ArrowException) as e:
                    raise JournalError(f"a journal row cannot be exported ({str(e)[:120]}): it was "
                                       f"changed by hand; run `pipeline journal verify` to find it") from None
                writer.write_table(table)
                count += len(rows)
            if not count:
                writer.write_table(_table([]))
        os.replace(tmp, out)
    except OSError as e:
        raise JournalError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        db.close()
        if tmp.exists():
            tmp.unlink()
    return count


def _unreadable_named(cursor: sqlite3.Cursor) -> Iterator[tuple]:
    """The cursor's rows; a row SQLite cannot hand over (text that is not UTF-8: written by
    hand) is a JournalError that sends the user to `verify`, which names it."""
    while True:
        try:
            row = next(cursor)
        except StopIteration:
            return
        except sqlite3.Error as e:
            raise JournalError(f"a journal row cannot be read ({e}): it was changed by hand; run "
                               f"`pipeline journal verify` to find it") from None
        yield row


def _refuse_database(out: Path) -> None:
    """Export never writes over an SQLite file: the journal, its WAL or another one."""
    head = b""
    try:
        with open(out, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise JournalError(f"export: cannot read {out}: {e.strerror or e}") from None
    if head == b"SQLite format 3\x00" or out.name.endswith(("-wal", "-shm", ".lock")):
        raise JournalError(f"export: {out} is an SQLite file (a journal?); give a new .parquet path")


def _export_rows(stored: list[tuple]) -> list[tuple]:
    """Stored rows as export rows (EXPORT_SCHEMA's order): a batch row expanded."""
    out = []
    for r in stored:
        if r[2] != BATCH:
            out.append((r[0], 0) + tuple(r[1:]))
            continue
        for e in expand(dict(zip(COLUMNS, r), payload=_loads(r[6]))):
            out.append((e["id"], e["part"], e["ts_ns"], e["kind"], e["symbol"], e["venue"], e["client_order_id"],
                        orjson.dumps(e["payload"], option=orjson.OPT_SORT_KEYS).decode(), e["prev_hash"],
                        e["hash"]))
    return out


def _table(batch: list[tuple]) -> pa.Table:
    columns = list(zip(*batch)) if batch else [()] * len(EXPORT_SCHEMA)
    return pa.Table.from_arrays([pa.array(list(c), type=f.type)
                                 for c, f in zip(columns, EXPORT_SCHEMA)], schema=EXPORT_SCHEMA)


@dataclass(frozen=True)
class VerifyResult:
    """What `verify` found: ok, how many rows it checked, and the first bad row."""
    ok: bool
    rows: int
    first_bad_id: int | None = None
    problem: str | None = None        # "edited", "deleted", "reordered" or "inserted"
    reason: str = ""
    head: tuple[int, str] | None = None   # (id, hash) of the last row, when ok

    def __str__(self) -> str:
        if self.ok:
            head = "" if self.head is None else f"; head row {self.head[0]} {self.head[1]}"
            return f"journal ok: {self.rows} rows, chain intact{head}"
        return f"journal BROKEN at row {self.first_bad_id} ({self.problem}): {self.reason}"


def verify(path: str | Path) -> VerifyResult:
    """Walk the chain of one snapshot of the journal and name the first row that was
    edited, deleted or reordered since it was written."""
    db = _read_only(path)
    # text as stored, even where it is not UTF-8 (rewritten by hand): it fails its hash and
    # is named, not a crash of the reader
    db.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        db.execute("BEGIN")
        return _verify(db)
    finally:
        db.close()


def _verify(db: sqlite3.Connection) -> VerifyResult:
    expected_id, last_hash, checked = 1, GENESIS, 0
    cursor = db.execute(f"SELECT {', '.join(COLUMNS)} FROM entries ORDER BY id")
    for row_id, ts_ns, kind, symbol, venue, coid, payload, prev_hash, digest in cursor:
        if row_id != expected_id:
            span = f"row {expected_id}" if row_id == expected_id + 1 else \
                f"rows {expected_id} to {row_id - 1}"
            return VerifyResult(False, checked, expected_id, "deleted",
                                f"{span} missing: ids jump from {expected_id - 1} to {row_id}")
        if prev_hash != last_hash:
            owner = db.execute("SELECT id FROM entries WHERE hash = ? AND id != ? LIMIT 1",
                               (prev_hash, row_id - 1)).fetchone()
            if owner is not None:
                return VerifyResult(False, checked, row_id, "reordered",
                                    f"row {row_id} was written after row {owner[0]}, "
                                    f"not after row {row_id - 1}")
            return VerifyResult(False, checked, row_id, "deleted",
                                f"row {row_id} does not follow row {row_id - 1}: the row written "
                                f"before it is gone (deleted and ids renumbered) or was rewritten")
        try:
            recomputed = row_hash(prev_hash, row_id, ts_ns, kind, symbol, venue, coid, payload)
        except (TypeError, ValueError, AttributeError):  # a column rewritten as a blob or badly
            recomputed = None
        if recomputed != digest:
            return VerifyResult(False, checked, row_id, "edited",
                                f"row {row_id} ({kind}) does not match its hash: it was changed "
                                f"after it was written")
        checked += 1
        expected_id, last_hash = row_id + 1, digest
    if "head" in _tables(db):
        head = db.execute("SELECT id, hash FROM head WHERE one = 1").fetchone()
        last_id = expected_id - 1
        if head is None:
            return VerifyResult(False, checked, last_id, "deleted",
                                f"the record of the last commit is gone, so rows cut off after "
                                f"row {last_id} cannot be ruled out")
        head_id, head_hash = head
        if last_id < head_id:
            return VerifyResult(False, checked, last_id + 1, "deleted",
                                f"the journal was committed up to row {head_id} but ends at row "
                                f"{last_id}: rows {last_id + 1} to {head_id} were cut off")
        if last_id > head_id:
            return VerifyResult(False, checked, head_id + 1, "inserted",
                                f"rows {head_id + 1} to {last_id} were not written by the journal "
                                f"(its head is row {head_id})")
        if head_hash != last_hash:
            return VerifyResult(False, checked, last_id, "edited",
                                f"row {last_id} is not the row the journal committed last "
                                f"(it was rewritten)")
    return VerifyResult(True, checked, head=(expected_id - 1, last_hash))
