"""The execution journal (pipeline/journal.py): batching, the hash chain and what
`verify` says about a tampered file, secrets and bad numbers refused, readers
beside a live writer, Parquet export, migrations from version 1, a writer killed
mid-batch and a second writer refused."""
from __future__ import annotations

import fcntl
import functools
import json
import time
import os
import sqlite3
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import journal as J
from pipeline.errors import UserError
from pipeline.journal import Journal, JournalError

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]


def fill_mixed(j: Journal, n: int, start_ns: int = 1_000) -> list[dict]:
    """n rows of every kind, committed a step (7 rows) at a time; returns what was written."""
    written = []
    for i in range(n):
        kind = J.KINDS[i % len(J.KINDS)]
        symbol = SYMBOLS[i % 3] if kind != "command" else None
        coid = f"c{i // 4}" if kind in ("order", "fill") else None
        payload = {"i": i, "price": 100.0 + i / 8, "qty": (i % 5) - 2, "nested": {"note": f"r{i}"}}
        row = dict(kind=kind, ts_ns=start_ns + i, payload=payload, symbol=symbol,
                   venue="binance" if symbol else None, client_order_id=coid)
        row["id"] = j.append(**row)
        written.append(row)
        if i % 7 == 6:
            j.commit()
    j.commit()
    return written


@pytest.fixture
def path(tmp_path):
    return tmp_path / "journal" / "t.sqlite"


# -- writing and reading --------------------------------------------------------------
def test_mixed_rows_read_back_in_order_and_verify(path):
    with Journal(path) as j:
        written = fill_mixed(j, 300)
        assert [r["id"] for r in written] == list(range(1, 301))
        assert j.pending == 0 and j.last_id == 300
    got = list(J.rows(path))
    assert len(got) == 300
    for w, g in zip(written, got):
        assert {k: g[k] for k in w} == w
    assert got[0]["prev_hash"] == J.GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(got, got[1:]))
    result = J.verify(path)
    assert result.ok and result.rows == 300 and result.first_bad_id is None
    assert "300 rows" in str(result)


def test_rows_filter_by_time_symbol_and_kind(path):
    with Journal(path) as j:
        written = fill_mixed(j, 120)
    want = [w["id"] for w in written if w["ts_ns"] >= 1_050 and w["symbol"] == "ETH/USDT"
            and w["kind"] in ("order", "fill")]
    got = [r["id"] for r in J.rows(path, since_ns=1_050, symbol="ETH/USDT", kinds=["order", "fill"])]
    assert got == want and got
    assert [r["kind"] for r in J.rows(path, kinds="command")] == ["command"] * 15
    with pytest.raises(JournalError, match="'trade' is not one of"):
        J.rows(path, kinds=["fill", "trade"])                 # raised at the call, not the first row


def test_append_never_commits_and_readers_see_only_commits_while_the_writer_is_live(path):
    j = Journal(path)
    try:
        j.append("intent", 1, {"side": "buy"}, symbol="BTC/USDT")
        j.append("verdict", 2, {"ok": True}, symbol="BTC/USDT")
        assert j.pending == 2
        assert list(J.rows(path)) == []                    # a reader beside the live writer
        assert j.commit() == 2 and j.pending == 0
        assert [r["kind"] for r in J.rows(path)] == ["intent", "verdict"]
        j.append("order", 3, {"qty": 1.0}, symbol="BTC/USDT", client_order_id="o1")
        assert len(list(J.rows(path))) == 2
        assert j.durable() == 1                             # the write-ahead commit
        assert [r["client_order_id"] for r in J.rows(path, kinds=["order"])] == ["o1"]
        assert j.commit() == 0 and j.durable() == 0          # nothing pending: nothing to do
        assert J.verify(path).ok
    finally:
        j.close()


def test_grouped_commits_write_the_same_rows_once_a_group_waits(path, tmp_path):
    """A backtest's journal (``group_rows``): commits write nothing until a group waits,
    durable and close write the rest; the file holds exactly what an ungrouped writer's
    holds, and verifies."""
    j = Journal(path, group_rows=20)
    try:
        for i in range(19):
            j.append("fill", 1_000 + i, {"i": i, "price": 100.0 + i})
            assert j.commit() == 0
        assert j.pending == 19 and list(J.rows(path)) == []
        j.append("fill", 2_000, {"i": 19, "price": 119.0})
        assert j.commit() == 20 and j.pending == 0
        assert len(list(J.rows(path))) == 20
        j.append("order", 2_001, {"i": 20})
        assert j.commit() == 0 and j.durable() == 1 and len(list(J.rows(path))) == 21
        j.append("order", 2_002, {"i": 21})
        assert j.commit() == 0
    finally:
        j.close()
    other = tmp_path / "ungrouped.sqlite"
    with Journal(other) as u:
        for r in J.rows(path):
            u.append(r["kind"], r["ts_ns"], r["payload"])
            u.commit()
    cols = ("id", "ts_ns", "kind", "payload", "prev_hash", "hash")
    assert [[r[c] for c in cols] for r in J.rows(path)] == [[r[c] for c in cols] for r in J.rows(other)]
    assert len(list(J.rows(path))) == 22 and J.verify(path).ok


def test_rollback_drops_the_batch_and_the_chain_continues(path):
    with Journal(path) as j:
        fill_mixed(j, 10)
        j.append("note", 50, {"a": 1})
        j.append("note", 51, {"a": 2})
        assert j.rollback() == 2 and j.pending == 0 and j.last_id == 10
        assert j.append("note", 52, {"a": 3}) == 11
        j.commit()
    assert [r["payload"] for r in J.rows(path, kinds=["note"])][-1] == {"a": 3}
    assert J.verify(path).ok and J.verify(path).rows == 11


def test_close_commits_what_is_pending_and_reopening_continues_the_chain(path):
    with Journal(path) as j:
        j.append("command", 1, {"cmd": "pause"})
    with Journal(path) as j:
        assert j.last_id == 1
        assert j.append("command", 2, {"cmd": "resume"}) == 2
    assert [r["payload"]["cmd"] for r in J.rows(path)] == ["pause", "resume"]
    assert J.verify(path).ok


def test_replay_gives_rows_of_the_asked_kinds_in_order(path):
    with Journal(path) as j:
        written = fill_mixed(j, 64)
    with Journal(path) as j:
        got = list(j.replay(["fill", "position"]))
        assert [r["id"] for r in got] == [w["id"] for w in written if w["kind"] in ("fill", "position")]
        assert got[0]["payload"] == next(w["payload"] for w in written if w["kind"] == "fill")
        assert len(list(j.replay())) == 64
        with pytest.raises(JournalError, match="not one of"):
            j.replay(["fills"])


def test_default_path_is_journal_folder_and_pipeline_name(tmp_path, monkeypatch):
    from pipeline.config import Config
    cfg = Config()
    cfg.pipeline.name = "alpha"
    monkeypatch.delenv("TICKPIPE_JOURNAL_DIR")
    assert cfg.journal_path() == Path("journal") / "alpha.sqlite"
    monkeypatch.setenv("TICKPIPE_JOURNAL_DIR", str(tmp_path / "js"))
    assert cfg.journal_path() == tmp_path / "js" / "alpha.sqlite"
    cfg.execution.journal = str(tmp_path / "j.sqlite")
    assert cfg.journal_path() == tmp_path / "j.sqlite"


# -- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["api_key", "apiKey", "X-MBX-APIKEY", "secret", "api_secret",
                                 "signature", "sig", "token", "access_token", "password",
                                 "passphrase", "private_key", "listenKey", "Authorization"])
def test_credential_keys_are_refused_at_any_depth(path, key):
    with Journal(path) as j:
        with pytest.raises(JournalError, match="credential"):
            j.append("order", 1, {key: "abc"})
        with pytest.raises(JournalError, match="credential") as e:
            j.append("order", 1, {"request": {"params": [{"qty": 1}, {key: "abc"}]}})
        assert key in str(e.value) and "abc" not in str(e.value)
        assert j.pending == 0
    assert list(J.rows(path)) == []


def test_ordinary_keys_that_contain_no_credential_word_pass(path):
    with Journal(path) as j:
        j.append("order", 1, {"client_order_id": "x", "price": 1.0, "side": "buy", "signed_qty": -2,
                              "sight": 1, "status": "new", "time_in_force": "gtc"})
        j.commit()
    assert len(list(J.rows(path))) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan"),
                                 np.array([1.0, np.nan])])
def test_nan_and_infinity_are_refused_naming_the_key(path, bad):
    with Journal(path) as j:
        with pytest.raises(JournalError, match=r"payload\['fill'\]\['price'\]"):
            j.append("fill", 1, {"fill": {"price": bad}})
        assert j.pending == 0


def _random_payload(rng, depth: int = 0):
    """A nested payload of the kinds a batch holds, now and then with a bad or unusual part."""
    pick = rng.integers(12) if depth < 4 else rng.integers(7)
    leaves = [lambda: float(rng.normal()), lambda: int(rng.integers(-9, 9)), lambda: "t",
              lambda: None, lambda: bool(rng.integers(2)),
              lambda: [float("nan"), float("inf"), -float("inf"), np.float64(1.5), np.int64(2),
                       10**30, 1e308 * 10][rng.integers(7)] if rng.random() < 0.2 else 1.25,
              lambda: (1, 2.5, "x")]
    if pick < 7:
        return leaves[pick]()
    keys = ["price", "qty", "order", "fills", "note", "api_key", "signature", "NewKey", 3]
    if pick < 10:
        n = int(rng.integers(0, 4))
        return {(keys[rng.integers(len(keys))] if rng.random() < 0.15 else keys[rng.integers(5)]):
                _random_payload(rng, depth + 1) for _ in range(n)}
    return [_random_payload(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]


def test_the_compiled_payload_check_agrees_with_the_python_one(monkeypatch):
    """pipeline._journalfast only ever clears what the Python walk clears: random nested
    payloads, some with NaN, infinity, numpy values, credential keys, keys that are not
    text or keys never seen, get the same verdict (and message) both ways."""
    if J._plain_compiled is None:
        pytest.skip("pipeline._journalfast is not built here (no C compiler at install)")
    plain = J._plain_compiled
    assert plain({"price": 1.0, "qty": [1, None, "x", True, (2, 3.5)]}, {"price", "qty"})
    assert not plain({"price": float("nan")}, {"price"}) and not plain([float("inf")], set())
    assert not plain({"new": 1}, set()) and not plain({1: 1}, set()) and not plain(np.float64(1), set())
    assert not plain(functools.reduce(lambda x, _: [x], range(100), 1), set())     # deeper than it walks
    rng = np.random.default_rng(7)
    for _ in range(3000):
        value = _random_payload(rng)
        verdicts = []
        for compiled in (plain, None):
            monkeypatch.setattr(J, "_plain_compiled", compiled)
            monkeypatch.setattr(J, "_SAFE_KEYS", {"price", "qty", "order", "fills", "note"})
            try:
                J._check_fast(value, "payload")
                verdicts.append("ok")
            except JournalError as e:
                verdicts.append(str(e))
        assert verdicts[0] == verdicts[1], value


def test_a_batch_rows_hash_head_is_what_the_encoder_writes():
    """`_batch_hash` writes the head of a batch row (no symbol, venue or client id) by
    hand: the same text, and so the same hash, as the chain's JSON encoder gives."""
    payload = b'{"v":1,"sections":[]}'
    for row_id, ts in [(1, 0), (7, 1_700_000_000_123_456_789), (2**40, 2**62)]:
        fast = J._batch_hash("ab" * 32, row_id, ts, None, None, None, payload)
        head = J._CONTENT.encode([row_id, ts, J.BATCH, None, None, None])
        slow = J.hashlib.sha256(f"{'ab' * 32}{head}\n".encode() + payload).hexdigest()
        assert fast == slow
    assert J._batch_hash("0", 1, 2, "BTC/USDT", None, None, payload) != J._batch_hash("0", 1, 2, None, None, None,
                                                                                      payload)


def test_numpy_values_are_stored_as_plain_json(path):
    with Journal(path) as j:
        j.append("position", np.int64(5), {"qty": np.float64(1.5), "n": np.int32(3),
                                           "flag": np.bool_(True), "v": np.array([1, 2])})
        j.commit()
    row = next(J.rows(path))
    assert row["ts_ns"] == 5 and row["payload"] == {"flag": True, "n": 3, "qty": 1.5, "v": [1, 2]}
    assert J.verify(path).ok


@pytest.mark.parametrize("args, match", [
    (("trade", 1, {}), "kind 'trade' is not one of"),
    (("note", -1, {}), "ts_ns must be a non-negative integer"),
    (("note", 1.5, {}), "ts_ns must be a non-negative integer"),
    (("note", True, {}), "ts_ns must be a non-negative integer"),
    (("note", 1, [1, 2]), "payload is a dict, not list"),
    (("note", 1, {"x": object()}), "payload cannot be journaled"),
    (("note", 1, {"x": {1, 2}}), "payload cannot be journaled"),
])
def test_bad_rows_are_refused_and_add_nothing(path, args, match):
    with Journal(path) as j:
        j.append("note", 0, {"first": 1})
        with pytest.raises(JournalError, match=match):
            j.append(*args)
        assert j.pending == 1 and j.last_id == 1
    assert J.verify(path).ok and J.verify(path).rows == 1


def test_symbol_venue_and_order_id_must_be_text(path):
    with Journal(path) as j:
        for field in ("symbol", "venue", "client_order_id"):
            with pytest.raises(JournalError, match=field):
                j.append("order", 1, {}, **{field: 7})
            with pytest.raises(JournalError, match=field):
                j.append("order", 1, {}, **{field: ""})


def test_journal_error_is_a_user_error():
    assert issubclass(JournalError, UserError)


# -- files that are not a journal ---------------------------------------------------------
def test_a_directory_is_refused_in_one_line(tmp_path):
    for call in (Journal, J.verify, lambda p: list(J.rows(p))):
        with pytest.raises(JournalError, match="is a directory") as e:
            call(tmp_path)
        assert "\n" not in str(e.value)


def test_a_text_file_and_another_programs_database_are_refused(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all\n" * 100)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    for p, why in ((text, "not a database"), (other, "another program")):
        for call in (Journal, J.verify, lambda p: list(J.rows(p))):
            with pytest.raises(JournalError, match=f"not a tickpipe journal.*{why}") as e:
                call(p)
            assert "\n" not in str(e.value)
    assert text.read_text().startswith("not a database")          # left untouched
    assert sqlite3.connect(other).execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]


def test_readers_do_not_create_a_missing_journal(tmp_path):
    with pytest.raises(JournalError, match="no journal at"):
        J.verify(tmp_path / "none.sqlite")
    with pytest.raises(JournalError, match="no journal at"):
        J.rows(tmp_path / "none.sqlite")
    with pytest.raises(JournalError, match="no journal at"):
        J.export(tmp_path / "none.sqlite", tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []


def test_a_journal_from_a_newer_tickpipe_is_refused(path):
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (?, 0)", (J.SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="upgrade tickpipe"):
        Journal(path)


# -- tampering ------------------------------------------------------------------------
def _tamper(path, *statements):
    db = sqlite3.connect(path)
    for sql, args in statements:
        db.execute(sql, args)
    db.commit()
    db.close()


@pytest.mark.parametrize("how, bad_id, problem", [
    ("edit payload", 137, "edited"),
    ("edit price by a cent", 42, "edited"),
    ("edit kind", 1, "edited"),
    ("delete", 137, "deleted"),
    ("delete first", 1, "deleted"),
    ("delete last", 300, "deleted"),
    ("swap", 120, "reordered"),
    ("swap neighbours", 200, "reordered"),
    ("delete and renumber", 137, "deleted"),
    ("insert at end", 301, "inserted"),
])
def test_verify_names_the_first_tampered_row(path, how, bad_id, problem):
    with Journal(path) as j:
        fill_mixed(j, 300)
    assert J.verify(path).ok
    if how == "edit payload":
        _tamper(path, ("UPDATE entries SET payload = '{\"i\":0}' WHERE id = ?", (bad_id,)))
    elif how == "edit price by a cent":
        row = next(r for r in J.rows(path) if r["id"] == bad_id)
        payload = dict(row["payload"], price=row["payload"]["price"] + 0.01)
        _tamper(path, ("UPDATE entries SET payload = ? WHERE id = ?", (J.canonical(payload), bad_id)))
    elif how == "edit kind":
        _tamper(path, ("UPDATE entries SET kind = 'note' WHERE id = ?", (bad_id,)))
    elif how.startswith("delete") and how != "delete and renumber":
        _tamper(path, ("DELETE FROM entries WHERE id = ?", (bad_id,)))
    elif how == "swap":
        _swap_rows(path, bad_id, 250)
    elif how == "swap neighbours":
        _swap_rows(path, bad_id, bad_id + 1)
    elif how == "delete and renumber":
        _tamper(path, ("DELETE FROM entries WHERE id = ?", (bad_id,)),
                ("UPDATE entries SET id = id - 1 WHERE id > ?", (bad_id,)))
    elif how == "insert at end":
        last = list(J.rows(path))[-1]
        text = J.canonical({"forged": True})
        digest = J.row_hash(last["hash"], 301, 9_999, "fill", None, None, None, text)
        _tamper(path, ("INSERT INTO entries VALUES (301, 9999, 'fill', NULL, NULL, NULL, ?, ?, ?)",
                       (text, last["hash"], digest)))
    result = J.verify(path)
    assert not result.ok
    assert (result.first_bad_id, result.problem) == (bad_id, problem), str(result)
    assert f"row {bad_id}" in str(result) and "\n" not in str(result)


def _swap_rows(path, a: int, b: int) -> None:
    """Exchange everything but the ids of rows a and b (what a reordering of ids does)."""
    db = sqlite3.connect(path)
    cols = J.COLUMNS[1:]
    ra = db.execute(f"SELECT {', '.join(cols)} FROM entries WHERE id = ?", (a,)).fetchone()
    rb = db.execute(f"SELECT {', '.join(cols)} FROM entries WHERE id = ?", (b,)).fetchone()
    sets = ", ".join(f"{c} = ?" for c in cols)
    db.execute(f"UPDATE entries SET {sets} WHERE id = ?", (*rb, a))
    db.execute(f"UPDATE entries SET {sets} WHERE id = ?", (*ra, b))
    db.commit()
    db.close()


def test_a_forged_row_with_a_recomputed_hash_still_breaks_the_chain(path):
    """Rewriting a row and its hash breaks the link of the row after it."""
    with Journal(path) as j:
        fill_mixed(j, 50)
    row = next(r for r in J.rows(path) if r["id"] == 20)
    text = J.canonical(dict(row["payload"], qty=1000))
    digest = J.row_hash(row["prev_hash"], 20, row["ts_ns"], row["kind"], row["symbol"], row["venue"],
                        row["client_order_id"], text)
    _tamper(path, ("UPDATE entries SET payload = ?, hash = ? WHERE id = 20", (text, digest)))
    result = J.verify(path)
    assert not result.ok and result.first_bad_id == 21 and result.rows == 20


def test_a_payload_rewritten_as_a_blob_is_an_edit(path):
    with Journal(path) as j:
        fill_mixed(j, 20)
    _tamper(path, ("UPDATE entries SET payload = ? WHERE id = 9", (b"\x00\x01",)))
    result = J.verify(path)
    assert (result.first_bad_id, result.problem) == (9, "edited")


def test_the_record_of_the_last_commit_deleted_fails_verify(path):
    with Journal(path) as j:
        fill_mixed(j, 20)
    _tamper(path, ("DELETE FROM head", ()))
    result = J.verify(path)
    assert not result.ok and result.problem == "deleted" and "last commit is gone" in result.reason
    with pytest.raises(JournalError, match="does not end where it was last committed"):
        Journal(path)


@pytest.mark.parametrize("tamper", [("DELETE FROM entries WHERE id = 20", ()),
                                    ("UPDATE entries SET hash = ? WHERE id = 20", ("f" * 64,))])
def test_the_writer_refuses_a_journal_whose_end_was_cut_or_changed(path, tamper):
    """Execution must not rebuild its state from, and append to, a truncated journal."""
    with Journal(path) as j:
        fill_mixed(j, 20)
    _tamper(path, tamper)
    with pytest.raises(JournalError, match="run `pipeline journal verify`"):
        Journal(path)
    assert not J.verify(path).ok
    with open(path.with_name(path.name + ".lock")) as f:   # the refused open let go of the lock
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- export ------------------------------------------------------------------------------
def test_export_writes_every_row_with_typed_columns(path, tmp_path):
    with Journal(path) as j:
        written = fill_mixed(j, 100)
    out = tmp_path / "out" / "journal.parquet"
    assert J.export(path, out) == 100
    table = pq.read_table(out)
    assert table.schema.equals(J.EXPORT_SCHEMA)
    assert table.column("id").to_pylist() == list(range(1, 101))
    assert [json.loads(p) for p in table.column("payload").to_pylist()] == [w["payload"] for w in written]
    assert table.column("symbol").null_count == sum(w["symbol"] is None for w in written)
    assert table.column("hash").to_pylist() == [r["hash"] for r in J.rows(path)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["journal.parquet"]   # no temporary left


def test_export_of_an_empty_journal_and_into_a_directory(path, tmp_path):
    Journal(path).close()
    out = tmp_path / "empty.parquet"
    assert J.export(path, out) == 0
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.equals(J.EXPORT_SCHEMA)
    with pytest.raises(JournalError, match="is a directory"):
        J.export(path, tmp_path)


def test_export_in_batches_keeps_every_row(path, tmp_path, monkeypatch):
    monkeypatch.setattr(J, "_EXPORT_BATCH", 16)
    with Journal(path) as j:
        fill_mixed(j, 70)
    assert J.export(path, tmp_path / "b.parquet") == 70
    assert pq.read_table(tmp_path / "b.parquet").column("id").to_pylist() == list(range(1, 71))
    assert pq.read_table(tmp_path / "b.parquet").column("ts_ns").type == pa.int64()


def test_export_lists_a_batchs_rows_each_on_its_own(path, tmp_path):
    with Journal(path) as j:
        j.append("command", 1, {"action": "halt"})
        j.append_batch(5, [{"kind": "fill", "n": 2, "ts_ns": [3, 4], "symbol": ["A/USDT@x", "B/USDT@x"],
                            "client_order_id": ["c1", "c2"], "cols": {"qty": [1.5, 2.5], "price": [10.0, 20.0]}},
                           {"kind": "position", "n": 1, "ts_ns": 5, "symbol": "A/USDT@x",
                            "payloads": [{"qty": 1.5}]}])
        j.commit()
    assert J.export(path, tmp_path / "x.parquet") == 4
    t = pq.read_table(tmp_path / "x.parquet").to_pylist()
    assert [(r["id"], r["part"], r["kind"], r["symbol"], r["client_order_id"]) for r in t] == [
        (1, 0, "command", None, None), (2, 1, "fill", "A/USDT@x", "c1"), (2, 2, "fill", "B/USDT@x", "c2"),
        (2, 3, "position", "A/USDT@x", None)]
    assert [json.loads(r["payload"]) for r in t[1:]] == [{"qty": 1.5, "price": 10.0}, {"qty": 2.5, "price": 20.0},
                                                         {"qty": 1.5}]
    assert [r["payload"] for r in t] == [json.dumps(r["payload"], sort_keys=True, separators=(",", ":"))
                                         for r in J.rows(path)]


def test_export_never_writes_over_an_sqlite_file(path, tmp_path):
    with Journal(path) as j:
        fill_mixed(j, 10)
    for out in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + ".lock")):
        with pytest.raises(JournalError, match="SQLite file"):
            J.export(path, out)
    assert J.verify(path).ok and len(list(J.rows(path))) == 10


# -- migrations --------------------------------------------------------------------------
V1_SCHEMA = [     # frozen copy of the first schema: what a version-1 tickpipe wrote
    f"PRAGMA application_id = {0x7469636B}",
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_ns INTEGER NOT NULL)",
    """CREATE TABLE entries (id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, kind TEXT NOT NULL,
       symbol TEXT, venue TEXT, client_order_id TEXT, payload TEXT NOT NULL,
       prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    "CREATE INDEX entries_client_order_id ON entries (client_order_id)",
    "INSERT INTO schema_version VALUES (1, 0)",
]


def _version_1_file(path, n: int) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    for sql in V1_SCHEMA:
        db.execute(sql)
    prev, hashes = J.GENESIS, []
    for i in range(1, n + 1):
        text = json.dumps({"i": i})
        digest = J.row_hash(prev, i, i * 10, "fill", "BTC/USDT", "binance", f"o{i}", text)
        db.execute("INSERT INTO entries VALUES (?, ?, 'fill', 'BTC/USDT', 'binance', ?, ?, ?, ?)",
                   (i, i * 10, f"o{i}", text, prev, digest))
        prev = digest
        hashes.append(digest)
    db.commit()
    db.close()
    return hashes


def test_a_version_1_journal_is_read_and_migrated_on_open(path):
    hashes = _version_1_file(path, 25)
    assert J.verify(path).ok and J.verify(path).rows == 25        # readers take version 1 as is
    assert len(list(J.rows(path, since_ns=100))) == 16
    with Journal(path) as j:
        assert j.schema_version == J.SCHEMA_VERSION == 3
        assert j.last_id == 25
        assert j.append("note", 300, {"after": "migration"}) == 26
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [(1,), (2,), (3,)]
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"entries_ts_ns", "entries_symbol_ts_ns", "entries_client_order_id"} <= indexes
    db.close()
    got = list(J.rows(path))
    assert [r["hash"] for r in got[:25]] == hashes and got[25]["prev_hash"] == hashes[-1]
    result = J.verify(path)
    assert result.ok and result.rows == 26


def test_migration_2_records_the_head_of_a_version_1_file(path):
    _version_1_file(path, 5)
    Journal(path).close()                                    # migrates, appends nothing
    _tamper(path, ("DELETE FROM entries WHERE id = 5", ()))
    result = J.verify(path)
    assert (result.ok, result.first_bad_id, result.problem) == (False, 5, "deleted")


def test_a_new_journal_gets_every_migration_once(path):
    Journal(path).close()
    Journal(path).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(v,) for v, _ in J.MIGRATIONS]
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


# -- crashes and a second writer ----------------------------------------------------------
def child_crashes_mid_batch(path: str, committed: int, uncommitted: int) -> None:
    """Commit ``committed`` rows (a durable one among them), append ``uncommitted`` more,
    then die without closing anything."""
    j = Journal(path)
    j.append("order", 0, {"i": 0}, symbol="BTC/USDT", client_order_id="o0")
    j.durable()
    for i in range(1, committed):
        j.append(J.KINDS[i % len(J.KINDS)], i, {"i": i}, symbol="BTC/USDT")
        if i % 10 == 0:
            j.commit()
    j.commit()
    for i in range(committed, committed + uncommitted):
        j.append("fill", i, {"i": i}, symbol="BTC/USDT")
    os._exit(7)


def test_a_writer_killed_mid_batch_keeps_every_committed_row_and_no_other(path, children):
    p = children.start(child_crashes_mid_batch, str(path), 95, 12)
    assert children.join(p) == 7
    assert [r["payload"]["i"] for r in J.rows(path)] == list(range(95))
    result = J.verify(path)
    assert result.ok and result.rows == 95
    with Journal(path) as j:                               # the dead writer's lock is gone
        assert j.last_id == 95
        assert j.append("note", 200, {"restart": True}) == 96
    assert J.verify(path).ok and J.verify(path).rows == 96


def child_tries_to_write(path: str, q) -> None:
    try:
        Journal(path)
        q.put(("second", "ok", "opened"))
    except JournalError as e:
        q.put(("second", "ok", f"refused: {e}"))
    except Exception:
        q.put(("second", "error", traceback.format_exc()))


def test_a_second_writer_is_refused_in_this_process_and_in_another(path, children):
    with Journal(path) as j:
        j.append("note", 1, {"a": 1})
        with pytest.raises(JournalError, match=f"already open by another writer \\(pid {os.getpid()}\\)"):
            Journal(path)
        said = children.run(child_tries_to_write, str(path))
        assert said.startswith("refused:") and "already open by another writer" in said
        assert j.append("note", 2, {"a": 2}) == 2          # the first writer is unharmed
    assert J.verify(path).ok and J.verify(path).rows == 2
    Journal(path).close()                                   # closed: the next writer may open


def test_the_wal_is_checkpointed_off_the_commit_path_and_emptied_when_large(path, monkeypatch):
    """Commits never run SQLite's automatic checkpoint: a thread copies the WAL into the
    main file every CHECKPOINT_BYTES of payload; a WAL past WAL_LIMIT_BYTES (a writer that
    is never idle) is emptied by the writer, after any pass of the thread. Every row stays, and the
    chain verifies."""
    monkeypatch.setattr(J, "CHECKPOINT_BYTES", 20_000)
    monkeypatch.setattr(J, "WAL_LIMIT_BYTES", 400_000)
    wal = path.with_name(path.name + "-wal")
    sizes = []
    with Journal(path) as j:
        for step in range(120):
            j.append_batch(step, [{"kind": "note", "n": 50, "ts_ns": step, "cols": {"text": ["x" * 200] * 50}}])
            j.commit()
            sizes.append(wal.stat().st_size)
        assert j._checkpointer.is_alive() and j._checkpointer.passes > 0
        j.idle()
        checkpointer = j._checkpointer
    assert not checkpointer.is_alive() and checkpointer.failures == 0
    # emptied once past the limit (the file only shrinks when emptied; 120 commits are 3 MB)
    past = next(i for i, size in enumerate(sizes) if size >= J.WAL_LIMIT_BYTES)
    assert min(sizes[past:]) < J.WAL_LIMIT_BYTES / 4 and max(sizes) < 3_000_000
    assert J.verify(path).ok and len(list(J.rows(path))) == 120 * 50


@pytest.mark.parametrize("bad", [{"ts_ns": 2**63}, {"symbol": "BTC\ud800"}, {"symbol": "A\x00B"},
                                 {"client_order_id": "c\n1"}])
def test_a_value_sqlite_cannot_keep_is_refused_at_append_and_the_writer_goes_on(path, bad):
    with Journal(path) as j:
        row = {"kind": "fill", "ts_ns": 1, "payload": {"qty": 1.0}, "symbol": "A/USDT@x", **bad}
        with pytest.raises(JournalError):
            j.append(**row)
        sec = {"kind": "fill", "n": 1, "ts_ns": row["ts_ns"], "symbol": [row["symbol"]],
               "client_order_id": row.get("client_order_id"), "payloads": [row["payload"]]}
        with pytest.raises(JournalError):
            j.append_batch(1, [sec])
        j.append("fill", 2, {"qty": 1.0}, symbol="A/USDT@x")
        assert j.commit() == 1
    assert J.verify(path).ok and [r["ts_ns"] for r in J.rows(path)] == [2]


def test_a_reader_paused_mid_read_never_stalls_the_writer(path, monkeypatch):
    monkeypatch.setattr(J, "CHECKPOINT_BYTES", 1 << 10)
    monkeypatch.setattr(J, "WAL_LIMIT_BYTES", 64 << 10)   # small, so the WAL passes it here
    with Journal(path) as j:
        for i in range(50):
            j.append("note", i, {"pad": "x" * 200})
            j.commit()
        reader = J.rows(path)                           # `journal show` paused in a pager
        next(reader)
        slowest = 0.0
        for i in range(600):
            j.append("note", 100 + i, {"pad": "x" * 200})
            t0 = time.perf_counter()
            j.commit()
            slowest = max(slowest, time.perf_counter() - t0)
            if slowest >= 2.0:
                break
        reader.close()
    assert slowest < 2.0                                # the lock's wait is 5 s: never taken
    assert J.verify(path).ok


@pytest.mark.parametrize("edit", ["UPDATE entries SET symbol = CAST(x'53ff31' AS TEXT) WHERE id = 3",
                                  "UPDATE entries SET payload = CAST(payload AS BLOB) WHERE id = 3",
                                  "UPDATE entries SET payload = '{not json' WHERE id = 3"])
def test_a_row_changed_into_what_readers_cannot_parse_is_named_not_a_crash(path, tmp_path, edit):
    with Journal(path) as j:
        fill_mixed(j, 10)
    db = sqlite3.connect(path)
    db.execute(edit)
    db.commit()
    db.close()
    result = J.verify(path)
    assert not result.ok and result.first_bad_id == 3 and result.problem == "edited"
    if "BLOB" not in edit:                               # (a blob of the same JSON still reads)
        with pytest.raises(JournalError, match="verify"):
            list(J.rows(path))
    if "symbol" in edit:                                 # (export keeps a single row's text as stored)
        with pytest.raises(JournalError, match="verify"):
            J.export(path, tmp_path / "x.parquet")


def test_verify_prints_the_head_to_keep_elsewhere(path):
    with Journal(path) as j:
        fill_mixed(j, 10)
    result = J.verify(path)
    last = list(J.rows(path))[-1]
    assert result.ok and result.head == (last["id"], last["hash"])
    assert str(result).endswith(f"head row {last['id']} {last['hash']}")


def test_an_integer_past_64_bits_reads_back_exactly(path):
    with Journal(path) as j:
        j.append("note", 1, {"order_id": 2**70 + 1, "neg": -2**63 - 1, "price": 0.1})
        j.commit()
    (row,) = J.rows(path)
    assert row["payload"] == {"order_id": 2**70 + 1, "neg": -2**63 - 1, "price": 0.1}


def test_a_credential_inside_an_array_of_objects_is_refused(path):
    with Journal(path) as j:
        with pytest.raises(JournalError, match="credential"):
            j.append("note", 1, {"d": np.array([{"api_key": "K"}], dtype=object)})
        assert j.pending == 0


def test_a_locked_journal_is_said_to_be_locked(path, monkeypatch):
    monkeypatch.setattr(J, "BUSY_TIMEOUT_MS", 100)
    with Journal(path) as j:
        fill_mixed(j, 5)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("SELECT count(*) FROM entries").fetchall()
    try:
        for read in (J.verify, lambda p: list(J.rows(p)), Journal):
            with pytest.raises(JournalError, match="is locked by another process"):
                read(path)
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert J.verify(path).ok
