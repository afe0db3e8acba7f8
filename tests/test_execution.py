"""The execution process on real rings and a journal on disk: orders and fills are
journaled before they are published, positions come back from the journal after a
restart of execution and after a new run, an intent is never acted on twice, and an
order journaled without its fill is filled before anything else."""
from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import RunSegments
from pipeline import journal
from shm.records import FLAG_RECOVERED, INTENT, ORDER_MARKET, SIDE_BUY, SIDE_SELL
from shm.ring import Ring
from workers.execution.worker import ExecutionWorker

SYMBOLS = ["AAA/USDT", "BBB/USDT"]


class Run(RunSegments):
    """One run's segments, its execution worker (``worker(restart)``) and a writer of
    its intents ring (``send``)."""

    def __init__(self, tmp_path, journal_path):
        super().__init__(tmp_path, f"""
[pipeline]
name = "ex"
workers = 2
[execution]
journal = "{journal_path}"
max_position_notional = 1e9
[[feeds]]
name = "synthetic"
symbols = {SYMBOLS!r}
""".replace("'", '"'))
        self.intents_ring = Ring.attach(self.topo.rings["intents"])
        self.intents = self.intents_ring.writer()

    def worker(self, restart: int = 0) -> ExecutionWorker:
        return super().worker(ExecutionWorker, "execution.0", restart)

    def send(self, *intents: tuple[int, str, int, float, float]) -> None:
        """(seq, symbol, side, qty, price) intents into the ring."""
        rows = np.zeros(len(intents), INTENT)
        for row, (seq, sym, side, qty, price) in zip(rows, intents):
            row["seq"] = seq
            row["symbol_id"] = self.topo.symbols.id(f"{sym}@synthetic")
            row["side"], row["qty"], row["ref_price"] = side, qty, price
            row["order_type"] = ORDER_MARKET
            row["strategy_id"] = 1
        rows["ts_origin_ns"] = rows["ts_ns"] = time.time_ns()   # fresh: not stale
        self.intents.write(rows)

    def close(self) -> None:
        self.intents_ring.close()
        super().close()


@pytest.fixture
def runs(tmp_path):
    made = []

    def run(sub: str = "a") -> Run:
        folder = tmp_path / sub
        folder.mkdir()
        r = Run(folder, tmp_path / "ex.sqlite")
        made.append(r)
        return r
    yield run, tmp_path / "ex.sqlite"
    for r in made:
        r.close()


def positions(w: ExecutionWorker) -> dict[str, float]:
    rows = w.portfolio.rows
    return {w.topo.symbols.name(int(i)): float(rows["qty"][i]) for i in np.flatnonzero(rows["n_fills"])}


def journaled(path) -> list[dict]:
    return list(journal.rows(path))


def test_orders_and_fills_are_journaled_and_positions_survive_restarts(runs):
    make, path = runs
    run = make("a")
    w = run.worker()
    run.send((1, "AAA/USDT", SIDE_BUY, 2.0, 100.0), (2, "BBB/USDT", SIDE_BUY, 5.0, 10.0),
             (3, "AAA/USDT", SIDE_SELL, 0.5, 110.0))
    while w.step():
        pass
    held = positions(w)
    assert held == {"AAA/USDT@synthetic": 1.5, "BBB/USDT@synthetic": 5.0}
    rows = journaled(path)
    assert [r["kind"] for r in rows] == ["order", "fill", "position"] * 3
    # write-ahead: each order's row comes before its fill's
    orders = [r for r in rows if r["kind"] == "order"]
    assert len({r["client_order_id"] for r in orders}) == 3
    assert all(r["payload"]["run_id"] == run.run_id for r in orders)
    pnl = w.portfolio.stats()

    # execution killed and restarted in the same run: the same positions and P&L, and
    # the intents it saw again (its reader had not committed) are not acted on twice
    w.close()
    again = run.worker(restart=1)
    assert positions(again) == held and again.portfolio.stats() == pnl
    assert again.restored == held
    run.send((3, "AAA/USDT", SIDE_SELL, 0.5, 110.0))       # seen before: skipped
    while again.step():
        pass
    assert again.counters["skipped_replay"] >= 1 and positions(again) == held
    again.close()

    # a new run (pipeline stop, start): the positions come back from the journal
    run.close()
    second = make("b")
    w2 = second.worker()
    assert positions(w2) == held and w2.portfolio.stats() == pnl
    rows_table, seqs = w2.positions.read()
    aaa = second.topo.symbols.id("AAA/USDT@synthetic")
    assert seqs[aaa] > 0 and rows_table["qty"][aaa] == 1.5   # published for the strategy
    # new intents of the new run trade on (their seqs start again: another run)
    second.send((1, "AAA/USDT", SIDE_SELL, 1.5, 120.0))
    while w2.step():
        pass
    assert positions(w2)["AAA/USDT@synthetic"] == 0.0
    assert journal.verify(path).ok


def test_an_order_journaled_without_its_fill_is_filled_first(runs):
    make, path = runs
    run = make("a")
    w = run.worker()
    run.send((1, "AAA/USDT", SIDE_BUY, 2.0, 100.0))
    while w.step():
        pass
    # a crash between the order and its fill: the journal holds an order alone
    order = next(r for r in journaled(path) if r["kind"] == "order")
    p = {**order["payload"], "order_id": 2, "intent_seq": 9}
    w.journal.append("order", order["ts_ns"], p, symbol=order["symbol"],
                     client_order_id="tp-test-orphan")
    w.journal.commit()
    w.close()
    again = run.worker(restart=1)
    assert positions(again) == {"AAA/USDT@synthetic": 4.0}
    fills = [r for r in journaled(path) if r["kind"] == "fill"]
    assert [f["payload"]["order_id"] for f in fills] == [1, 2]
    assert fills[1]["payload"]["flags"] & FLAG_RECOVERED
    assert again.next_order_id == 3
    assert journal.verify(path).ok


def test_a_second_execution_on_the_same_journal_is_refused(runs):
    make, path = runs
    run = make("a")
    run.worker()
    with pytest.raises(journal.JournalError, match="already open by another writer"):
        run.worker(restart=1)


def test_pnl_and_journal_commands_read_the_journal(runs, capsys, tmp_path):
    import json
    import sqlite3

    import pyarrow.parquet as pq

    from pipeline.cli import main
    make, path = runs
    run = make("a")
    w = run.worker()
    run.send((1, "AAA/USDT", SIDE_BUY, 2.0, 100.0), (2, "AAA/USDT", SIDE_SELL, 0.5, 110.0),
             (3, "BBB/USDT", SIDE_BUY, 5.0, 10.0))
    while w.step():
        pass
    stats = w.portfolio.stats()
    capsys.readouterr()

    assert main(["pnl", "--journal", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["fills"] == 3 and rep["mismatches"] == []
    assert rep["totals"]["realized_pnl"] == pytest.approx(stats["realized_pnl"])
    assert rep["totals"]["fees"] == pytest.approx(stats["fees"])
    aaa = next(s for s in rep["symbols"] if s["symbol"] == "AAA/USDT@synthetic")
    assert aaa["qty"] == 1.5 and aaa["mark"] == pytest.approx(110.0 * (1 - 2e-4))
    assert set(rep["venues"]) == {"synthetic"}
    assert main(["pnl", "--journal", str(path)]) == 0
    assert "the fills add up to the positions journaled" in capsys.readouterr().out

    assert main(["journal", "verify", "--journal", str(path)]) == 0
    assert "journal ok: 9 rows" in capsys.readouterr().out
    assert main(["journal", "show", "--journal", str(path), "--kind", "fill",
                 "--symbol", "AAA/USDT"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    out = tmp_path / "x" / "j.parquet"
    assert main(["journal", "export", "--journal", str(path), "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == 9
    w.close()

    # a position row rewritten behind execution's back: verify names it, pnl alerts
    db = sqlite3.connect(path)
    (row_id, payload), = db.execute("SELECT id, payload FROM entries WHERE kind = 'position' "
                                    "ORDER BY id LIMIT 1")
    db.execute("UPDATE entries SET payload = ? WHERE id = ?",
               (payload.replace('"qty":2.0', '"qty":3.0'), row_id))
    db.execute("UPDATE entries SET payload = replace(payload, '\"qty\":1.5', '\"qty\":9.5') "
               "WHERE kind = 'position'")
    db.commit()
    db.close()
    capsys.readouterr()
    assert main(["journal", "verify", "--journal", str(path)]) == 1
    assert f"BROKEN at row {row_id} (edited)" in capsys.readouterr().out
    assert main(["pnl", "--journal", str(path)]) == 1
    assert "ALERT: the journaled positions disagree with the fills" in capsys.readouterr().out
    assert main(["pnl", "--journal", str(tmp_path / "missing.sqlite")]) == 2
    assert "no journal at" in capsys.readouterr().err
