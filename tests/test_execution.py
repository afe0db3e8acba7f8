"""The execution process on real rings and a journal on disk: orders and fills are
journaled before they are published, positions come back from the journal after a
restart of execution and after a new run, an intent is never acted on twice, an
order a crash left open is resolved before anything else, and the risk guard's
verdicts and states are journaled and survive restarts."""
from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import RunSegments, data_file
from pipeline import journal
from shm.records import INTENT, ORDER_LIMIT, ORDER_MARKET, SIDE_BUY, SIDE_SELL, TICK, TICK_TRADE, TIF_GTC
from shm.ring import Ring
from workers.execution.desk import PAPER_LOST
from workers.execution.worker import ExecutionWorker

SYMBOLS = ["AAA/USDT", "BBB/USDT"]
HALF_SPREAD = 0.0005          # of the price: a 10 bps quote around each trade


class Run(RunSegments):
    """One run's segments, its execution worker (``worker(restart)``), and writers of
    its ticks (``tick``) and intents (``send``) rings."""

    def __init__(self, tmp_path, journal_path, extra: str = ""):
        super().__init__(tmp_path, f"""
[pipeline]
name = "ex"
workers = 2
[execution]
journal = "{journal_path}"
{extra}
[risk]
max_position_notional = 1e9
max_order_notional = 1e9
max_gross_exposure = 1e9
max_venue_exposure = 1e9
[[feeds]]
name = "synthetic"
symbols = {SYMBOLS!r}
""".replace("'", '"'))
        self.rings = [Ring.attach(self.topo.rings[name]) for name in ("intents", "ticks.synthetic")]
        self.intents, self.ticks = (r.writer() for r in self.rings)

    def worker(self, restart: int = 0) -> ExecutionWorker:
        return super().worker(ExecutionWorker, "execution.0", restart)

    def tick(self, *trades: tuple[str, float]) -> None:
        """(symbol, price) trades, each with a quote HALF_SPREAD either side, received now."""
        rows = np.zeros(len(trades), TICK)
        for row, (sym, price) in zip(rows, trades):
            row["symbol_id"] = self.topo.symbols.id(f"{sym}@synthetic")
            row["kind"], row["side"], row["price"], row["size"] = TICK_TRADE, SIDE_BUY, price, 1.0
            row["bid"], row["ask"] = price * (1 - HALF_SPREAD), price * (1 + HALF_SPREAD)
        rows["ts_origin_ns"] = rows["ts_exchange_ns"] = time.time_ns()
        self.ticks.write(rows)

    def send(self, *intents: tuple[int, str, int, float, float]) -> None:
        """(seq, symbol, side, qty, price) market intents into the ring, with a trade at
        that price just before each (the market the risk guard checks them against)."""
        self.tick(*[(sym, price) for _, sym, _, _, price in intents])
        rows = np.zeros(len(intents), INTENT)
        for row, (seq, sym, side, qty, price) in zip(rows, intents):
            row["seq"] = seq
            row["symbol_id"] = self.topo.symbols.id(f"{sym}@synthetic")
            row["side"], row["qty"], row["ref_price"] = side, qty, price
            row["order_type"] = ORDER_MARKET
            row["limit_price"] = np.nan
            row["tif"] = 2
            row["strategy_id"] = 1
        rows["ts_origin_ns"] = rows["ts_ns"] = time.time_ns()   # fresh: not stale
        self.intents.write(rows)

    def close(self) -> None:
        for r in self.rings:
            r.close()
        super().close()


@pytest.fixture
def runs(tmp_path):
    made = []

    def run(sub: str = "a", extra: str = "") -> Run:
        folder = tmp_path / sub
        folder.mkdir()
        r = Run(folder, tmp_path / "ex.sqlite", extra)
        made.append(r)
        return r
    yield run, tmp_path / "ex.sqlite"
    for r in made:
        r.close()


def positions(w: ExecutionWorker) -> dict[str, float]:
    rows = w.desk.portfolio.rows
    return {w.topo.symbols.name(int(i)): float(rows["qty"][i]) for i in np.flatnonzero(rows["n_fills"])}


def journaled(path, *kinds: str) -> list[dict]:
    return list(journal.rows(path, kinds=kinds or None))


def drain(w: ExecutionWorker) -> None:
    while w.step():
        pass


def test_orders_and_fills_are_journaled_and_positions_survive_restarts(runs):
    make, path = runs
    run = make("a")
    w = run.worker()
    run.send((1, "AAA/USDT", SIDE_BUY, 2.0, 100.0), (2, "BBB/USDT", SIDE_BUY, 5.0, 10.0),
             (3, "AAA/USDT", SIDE_SELL, 0.5, 100.0))     # two for AAA in one step: both go
    drain(w)
    run.send((4, "AAA/USDT", SIDE_SELL, 0.5, 110.0), (5, "AAA/USDT", SIDE_BUY, 0.5, 110.0))
    drain(w)
    held = positions(w)
    assert held == {"AAA/USDT@synthetic": 1.5, "BBB/USDT@synthetic": 5.0}
    rows = journaled(path, "intent", "order", "fill", "position")
    # write-ahead: a step's intents and its orders created and submitted are one stored
    # row, committed before the venue hears of them; what the venue said, the fills and the
    # positions they make come in a later row, together
    first = [(r["kind"], r["payload"].get("new")) for r in rows if r["id"] == rows[0]["id"]]
    assert first[:2] == [("intent", None)] * 2
    assert ("order", "CREATED") in first and ("order", "SUBMITTED") in first
    for i, r in enumerate(rows):
        if r["kind"] == "fill":
            cid = r["client_order_id"]
            sent = next(x["id"] for x in rows if x["client_order_id"] == cid
                        and x["payload"].get("new") == "SUBMITTED")
            assert sent < r["id"]
            assert any(x["kind"] == "position" and x["id"] == r["id"] and x["symbol"] == r["symbol"]
                       and x["part"] > r["part"] for x in rows)
    fills = journaled(path, "fill")
    assert len(fills) == 5 and len({r["client_order_id"] for r in fills}) == 5
    # a market buy pays the ask plus slippage (2 bps), a sell gets the bid less it
    assert fills[0]["payload"]["price"] == pytest.approx(100.0 * (1 + HALF_SPREAD) * (1 + 2e-4))
    assert fills[3]["payload"]["price"] == pytest.approx(110.0 * (1 - HALF_SPREAD) * (1 - 2e-4))
    assert all(r["payload"]["run_id"] == run.run_id for r in journaled(path, "order"))
    pnl = w.desk.portfolio.stats()

    # execution killed and restarted in the same run: the same positions and P&L, and
    # an intent it sees again is not acted on twice
    w.close()
    again = run.worker(restart=1)
    assert positions(again) == held and again.desk.portfolio.stats() == pnl
    assert again.desk.restored == held
    run.send((5, "AAA/USDT", SIDE_BUY, 0.5, 110.0))       # seen before: skipped
    drain(again)
    assert again.desk.counters["skipped_replay"] == 1 and positions(again) == held
    again.close()

    # a new run (pipeline stop, start): the positions come back from the journal
    run.close()
    second = make("b")
    w2 = second.worker()
    assert positions(w2) == held and w2.desk.portfolio.stats() == pnl
    rows_table, seqs = w2.positions.read()
    aaa = second.topo.symbols.id("AAA/USDT@synthetic")
    assert seqs[aaa] > 0 and rows_table["qty"][aaa] == 1.5   # published for the strategy
    # new intents of the new run trade on (their seqs start again: another run), and the
    # order ids go on from the last one journaled
    assert w2.desk.next_order_id == 6
    second.send((1, "AAA/USDT", SIDE_SELL, 1.5, 120.0))
    drain(w2)
    assert positions(w2)["AAA/USDT@synthetic"] == 0.0
    ids = [r["payload"]["order_id"] for r in journaled(path, "fill")]
    assert ids == [1, 2, 3, 4, 5, 6]
    assert journal.verify(path).ok


def test_an_order_a_crash_left_open_is_resolved_before_anything_else(runs):
    """The paper venue lives in the execution process: an order still unanswered when it
    dies can fill no more. The restarted desk expires it (journaled, with the reason)
    before it reads an intent, and the symbol trades again."""
    make, path = runs
    run = make("a", "ack_latency_ms = 3600000.0")       # the venue never answers in this test
    w = run.worker()
    run.send((1, "AAA/USDT", SIDE_BUY, 2.0, 100.0))
    drain(w)
    order = w.desk.orders.open_orders()[0]
    assert order.state.name == "SUBMITTED" and positions(w) == {}
    run.send((2, "AAA/USDT", SIDE_BUY, 1.0, 100.0))       # unanswered order: refused
    drain(w)
    assert w.desk.guard.denials()["IN_FLIGHT"] == 1
    w.close()                                             # a crash: nothing more written
    again = run.worker(restart=1)
    assert again.desk.orders.open_orders() == []
    assert again.desk.orders.get(order.client_id).state.name == "EXPIRED"
    last = journaled(path, "order")[-1]
    assert last["client_order_id"] == order.client_id and last["payload"]["new"] == "EXPIRED"
    assert last["payload"]["detail"]["order"]["reason"] == PAPER_LOST
    assert again.desk.counters["resolved_at_start"] == 1
    assert again.desk.guard.denials()["IN_FLIGHT"] == 1   # counters survive the restart too
    assert journal.verify(path).ok


def test_risk_verdicts_and_a_halt_are_journaled_and_survive_a_restart(runs):
    make, path = runs
    run = make("a")
    w = run.worker()
    w.on_command({"cmd": "risk", "action": "halt", "tier": "symbol", "key": "AAA/USDT@synthetic",
                  "reducing": False, "reason": "desk says no", "id": "c1"})
    run.send((1, "AAA/USDT", SIDE_BUY, 1.0, 100.0), (2, "BBB/USDT", SIDE_BUY, 1.0, 10.0),
             (3, "AAA/USDT", SIDE_BUY, float("nan"), 100.0))
    drain(w)
    assert positions(w) == {"BBB/USDT@synthetic": 1.0}
    verdicts = [(r["symbol"], r["payload"]["code"]) for r in journaled(path, "verdict")]
    assert verdicts == [("AAA/USDT@synthetic", "HALTED"), ("AAA/USDT@synthetic", "BAD_INPUT")]
    assert "desk says no" in journaled(path, "verdict")[0]["payload"]["reason"]
    stats = w.stats()
    assert stats["risk_commands"] == ["c1"] and stats["denials"]["HALTED"] == 1
    assert any(s["tier"] == "symbol" and s["state"] == "HALTED" for s in stats["risk_states"])
    assert any(e["kind"] == "denial" for e in stats["risk_events"])
    assert stats["trade_latency"]["synthetic"]["tick_to_fill"]
    w.close()
    # a new run: still halted, by the journal
    run.close()
    w2 = make("b").worker()
    assert w2.desk.guard.tier_state("symbol", 0).name == "HALTED"
    w2.on_command({"cmd": "risk", "action": "resume", "tier": "symbol", "key": "AAA/USDT@synthetic",
                   "id": "c2"})
    assert w2.desk.guard.tier_state("symbol", 0).name == "ACTIVE"
    assert [r["payload"]["action"] for r in journaled(path, "command")] == ["halt", "resume"]
    assert journal.verify(path).ok


def test_a_halt_journaled_while_stopped_applies_at_start(runs):
    """`pipeline halt` with no pipeline running appends a command row; execution applies it
    before it reads any intent."""
    make, path = runs
    j = journal.Journal(path)
    j.append("command", time.time_ns(), {"cmd": "risk", "action": "halt", "tier": "global", "key": None,
                                         "reducing": True, "reason": "offline", "id": "c0"})
    j.commit()
    j.close()
    run = make("a")
    w = run.worker()
    assert w.desk.guard.tier_state("global").name == "REDUCING"
    run.send((1, "AAA/USDT", SIDE_BUY, 1.0, 100.0))
    drain(w)
    assert positions(w) == {} and w.desk.guard.denials()["REDUCING_ONLY"] == 1


def test_positions_the_fills_do_not_explain_halt_everything(runs):
    make, path = runs
    run = make("a")
    w = run.worker()
    run.send((1, "AAA/USDT", SIDE_BUY, 2.0, 100.0))
    drain(w)
    pos = journaled(path, "position")[-1]
    w.journal.append("position", pos["ts_ns"], {**pos["payload"], "qty": 7.0}, symbol=pos["symbol"])
    w.journal.commit()
    w.close()
    again = run.worker(restart=1)
    assert again.desk.guard.tier_state("global").name == "HALTED"
    assert "pnl check failed" in again.desk.guard.describe(np.zeros(1, INTENT)[0], 2)


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
    drain(w)
    stats = w.desk.portfolio.stats()
    n_rows = len({r["id"] for r in journaled(path)})        # stored rows: a step's rows are one
    capsys.readouterr()

    assert main(["pnl", "--journal", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["fills"] == 3 and rep["mismatches"] == []
    assert list(rep["totals"]) == ["USDT"]                 # per currency: never KRW + USDT
    assert rep["totals"]["USDT"]["realized_pnl"] == pytest.approx(stats["realized_pnl"])
    assert rep["totals"]["USDT"]["fees"] == pytest.approx(stats["fees"])
    aaa = next(s for s in rep["symbols"] if s["symbol"] == "AAA/USDT@synthetic")
    assert aaa["qty"] == 1.5 and aaa["mark"] == pytest.approx(110.0 * (1 - HALF_SPREAD) * (1 - 2e-4))
    assert set(rep["venues"]) == {"synthetic"}
    bal = rep["balances"]["synthetic"]                   # what the fills moved, per asset
    assert bal["AAA"] == 1.5 and bal["BBB"] == 5.0
    cash = sum(-f["payload"]["side"] * f["payload"]["qty"] * f["payload"]["price"] - f["payload"]["fee"]
               for f in journaled(path, "fill"))
    assert bal["USDT"] == pytest.approx(cash)
    assert main(["pnl", "--journal", str(path)]) == 0
    assert "the fills add up to the positions journaled" in capsys.readouterr().out

    assert main(["journal", "verify", "--journal", str(path)]) == 0
    assert f"journal ok: {n_rows} rows" in capsys.readouterr().out
    assert main(["journal", "show", "--journal", str(path), "--kind", "fill",
                 "--symbol", "AAA/USDT"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    out = tmp_path / "x" / "j.parquet"
    assert main(["journal", "export", "--journal", str(path), "--out", str(out)]) == 0
    exported = pq.read_table(out)                        # every row, a batch's each on its own
    assert exported.num_rows == len(journaled(path)) > n_rows
    assert exported.column("kind").to_pylist().count("fill") == len(journaled(path, "fill"))
    w.close()

    # a position rewritten behind execution's back: verify names its row, pnl alerts
    ids = sorted({r["id"] for r in journaled(path, "position")})
    row_id = ids[0]
    db = sqlite3.connect(path)
    for i in ids:
        (payload,), = db.execute("SELECT payload FROM entries WHERE id = ?", (i,))
        body = json.loads(payload)
        section = next(x for x in body["sections"] if x["kind"] == "position")
        section["cols"]["qty"] = [q + 1.0 for q in section["cols"]["qty"]]
        db.execute("UPDATE entries SET payload = ? WHERE id = ?", (json.dumps(body), i))
    db.commit()
    db.close()
    capsys.readouterr()
    assert main(["journal", "verify", "--journal", str(path)]) == 1
    assert f"BROKEN at row {row_id} (edited)" in capsys.readouterr().out
    assert main(["pnl", "--journal", str(path)]) == 1
    out = capsys.readouterr()
    assert "ALERT: the journaled positions disagree with the fills" in out.out
    assert "ALERT: a global halt is journaled for the next start" in out.err
    halt = journaled(path, "command")[-1]["payload"]
    assert (halt["action"], halt["tier"]) == ("halt", "global") and "pnl check failed" in halt["reason"]
    assert main(["pnl", "--journal", str(tmp_path / "missing.sqlite")]) == 2
    assert "no journal at" in capsys.readouterr().err


EXCHANGE_INFO = data_file("payloads/binance/rest/exchangeInfo_2021-10-12.capture.jsonl")


def test_orders_follow_the_venues_rules_fetched_at_start(tmp_path):
    """A Binance feed: execution fetches exchangeInfo (a local server replaying the real
    one) in a thread, holds the venue's orders until it is in, then rounds each order
    to the lot step and denies one under the minimum notional; a venue that does not
    answer keeps its orders held, with the reason."""
    import json

    from venue_servers import HttpReplayServer
    from workers.venues.capture import capture_lines
    info = json.dumps(capture_lines(EXCHANGE_INFO)[0]["msg"])

    def run(folder, rest_url) -> RunSegments:
        folder.mkdir()
        return RunSegments(folder, f"""
[pipeline]
name = "vr"
workers = 2
[execution]
journal = "{folder / 'vr.sqlite'}"
[[feeds]]
name = "binance"
kind = "binance"
symbols = ["BTC/USDT", "ETH/USDT"]
rest_url = "{rest_url}"
""")

    def send(r: RunSegments, ticks, intents: list[tuple[int, int, float, float]]) -> None:
        rows = np.zeros(len(intents), TICK)
        for row, (_, sid, _, price) in zip(rows, intents):
            row["symbol_id"], row["kind"], row["side"], row["price"], row["size"] = sid, TICK_TRADE, 1, price, 1.0
            row["bid"], row["ask"] = price * 0.9999, price * 1.0001
        rows["ts_origin_ns"] = time.time_ns()
        ticks.write(rows)
        its = np.zeros(len(intents), INTENT)
        for it, (seq, sid, qty, price) in zip(its, intents):
            it["seq"], it["symbol_id"], it["side"], it["qty"], it["ref_price"] = seq, sid, SIDE_BUY, qty, price
            it["order_type"], it["tif"], it["limit_price"], it["strategy_id"] = ORDER_MARKET, 2, np.nan, 1
        its["ts_origin_ns"] = its["ts_ns"] = time.time_ns()
        r.intents.write(its)

    def verdicts_of(folder, rest_url, intents_of) -> tuple[ExecutionWorker, list[dict]]:
        """A run whose feed's REST is ``rest_url``; its worker gets ``intents_of(run)``."""
        r = run(folder, rest_url)
        rings = [Ring.attach(r.topo.rings[n]) for n in ("intents", "ticks.binance")]
        r.intents, ticks = (x.writer() for x in rings)
        try:
            w = r.worker(ExecutionWorker, "execution.0")
            if "127.0.0.1:9" not in rest_url:
                assert w.rules.join(60), w.rules.failures
            send(r, ticks, intents_of(r))
            drain(w)
            return journaled(folder / "vr.sqlite", "order"), journaled(folder / "vr.sqlite", "verdict")
        finally:
            for x in rings:
                x.close()
            r.close()

    btc = lambda r: r.topo.symbols.id("BTC/USDT@binance")   # noqa: E731
    with HttpReplayServer({"/api/v3/exchangeInfo": info}) as http:
        orders, verdicts = verdicts_of(tmp_path / "up", http.url,
                                       lambda r: [(1, btc(r), 0.0012345, 50_000.0), (2, btc(r), 0.0001, 50_000.0)])
    assert {o["payload"]["detail"]["order"]["qty"] for o in orders         # floored to the 0.00001 lot
            if "order" in o["payload"]["detail"]} == {0.00123}
    assert verdicts[0]["payload"]["code"] == "VENUE_RULES"
    assert "NOTIONAL_BELOW_MIN" in verdicts[0]["payload"]["reason"]
    # nothing listens at port 9: the rules never come, the venue's orders wait
    orders, verdicts = verdicts_of(tmp_path / "down", "http://127.0.0.1:9", lambda r: [(1, btc(r), 0.01, 50_000.0)])
    assert orders == [] and verdicts[0]["payload"]["code"] == "VENUE_RULES"
    assert "not loaded yet" in verdicts[0]["payload"]["reason"]


def test_a_resting_limit_shows_in_the_positions_table_until_its_expiry_ends_it(runs):
    """The working quantity of a resting limit is published with the positions (the
    strategy counts it as asked for), and the worker wakes for its expiry and cancels it."""
    make, path = runs
    run = make("a")
    w = run.worker()
    run.tick(("AAA/USDT", 100.0))
    rows = np.zeros(1, INTENT)
    rows["seq"], rows["symbol_id"] = 1, run.topo.symbols.id("AAA/USDT@synthetic")
    rows["side"], rows["qty"], rows["ref_price"], rows["limit_price"] = SIDE_BUY, 2.0, 100.0, 99.0
    rows["order_type"], rows["tif"], rows["strategy_id"] = ORDER_LIMIT, TIF_GTC, 1
    rows["ts_origin_ns"] = rows["ts_ns"] = now = time.time_ns()
    rows["expire_ns"] = now + 300_000_000                      # 0.3 s to rest
    run.intents.write(rows)
    drain(w)
    aaa = int(rows["symbol_id"][0])
    table, seqs = w.positions.read()
    assert seqs[aaa] > 0 and table["working"][aaa] == 2.0 and table["qty"][aaa] == 0.0
    assert w.desk.next_due_ns() <= now + 300_000_000           # idle_wait wakes for it
    deadline = time.monotonic() + 60
    while w.desk.orders.open_orders() and time.monotonic() < deadline:
        w.idle_wait(0.05)
        w.step()
        w.on_idle()
    order = w.desk.orders.get(next(iter(w.desk.orders.orders)))
    assert order.state.name == "CANCELLED" and order.cancel_ns >= now + 300_000_000
    table, seqs = w.positions.read()
    assert table["working"][aaa] == 0.0
    events = [r["payload"]["detail"]["event"] for r in journaled(path, "order") if "cid" in r["payload"]]
    assert events.index("cancel_requested") < events.index("cancel")
    w.close()


def test_a_resting_limit_entry_is_never_entered_twice_by_the_strategy_process(runs):
    """The strategy and execution processes on real rings, limit entries: the entry rests
    (the positions table shows its working quantity), further strong signals send no second
    entry, an exit cancels it through a cancel intent, and after the cancel the next signal
    may enter again."""
    from shm.records import ORDER_CANCEL, SIGNAL
    from workers.strategy.worker import WORKER
    make, path = runs
    run = make("a", extra='[strategy]\nentry_order = "limit"\nentry_offset_bps = 50.0\nentry_ttl_s = 600.0\n'
                          'min_hold_bars = 0\n')
    signals = Ring.attach(run.topo.rings["signals.0"])
    run.rings.append(signals)
    to_strategy = signals.writer()
    execution = run.worker()
    strat = RunSegments.worker(run, WORKER, "strategy.0")
    aaa = run.topo.symbols.id("AAA/USDT@synthetic")
    seq = iter(range(1, 100))

    def signal(margin: float, bar: int) -> None:
        run.tick(("AAA/USDT", 100.0))
        s = np.zeros(1, SIGNAL)
        s["symbol_id"], s["seq"], s["ts_bar_ns"], s["ref_price"] = aaa, next(seq), bar, 100.0
        s["probs"] = [[0.5 - margin / 2, 0.0, 0.5 + margin / 2]]
        s["ts_origin_ns"] = time.time_ns()
        to_strategy.write(s)
        for _ in range(100):                    # both, until neither has anything left
            if not (strat.step() | execution.step()):
                return
        raise AssertionError("the two workers kept stepping")

    signal(0.5, 1)                              # an entry: a limit 50 bps under 100, resting
    table, _ = execution.positions.read()
    assert table["working"][aaa] > 0 and table["qty"][aaa] == 0.0
    assert [o.order_type for o in execution.desk.orders.open_orders()] == [ORDER_LIMIT]
    signal(0.5, 2)                              # still strong: nothing more is sent
    signal(0.6, 3)
    assert execution.desk.counters["orders"] == 1 and strat.core.counters["reconciled"] == 0
    signal(-0.5, 4)                             # an exit: the resting entry is cancelled
    assert strat.core.counters["cancels"] == 1
    events = [r["payload"]["detail"]["event"] for r in journaled(path, "order") if "cid" in r["payload"]]
    assert "cancel_requested" in events
    intents = journaled(path, "intent")
    assert [r["payload"]["order_type"] for r in intents] == [ORDER_LIMIT, ORDER_CANCEL]
    deadline = time.monotonic() + 60           # the paper venue answers the cancel
    while execution.desk.orders.open_orders() and time.monotonic() < deadline:
        execution.idle_wait(0.05)
        execution.step()
    assert not execution.desk.orders.open_orders()
    table, _ = execution.positions.read()
    assert table["working"][aaa] == 0.0 and table["qty"][aaa] == 0.0
    signal(0.5, 5)                              # flat again: a new entry may rest
    assert execution.desk.counters["orders"] == 2
    strat.close()
    execution.close()


def test_the_strategy_process_stops_out_on_a_trade_between_bars(runs):
    """With a stop-loss the strategy process reads the feeds' ticks: a trade through the
    stop of a held position sends the exit at once (a seq of the tick ring's own source),
    not at the next bar's signal."""
    from shm.records import REASON_STOP_LOSS, SIGNAL
    from workers.strategy.signals import SOURCE_BITS, STOP_SOURCE
    from workers.strategy.worker import WORKER
    make, path = runs
    run = make("a", extra="[strategy]\nstop_loss = 0.01\nmin_hold_bars = 0\n")
    signals = Ring.attach(run.topo.rings["signals.0"])
    run.rings.append(signals)
    execution = run.worker()
    strat = RunSegments.worker(run, WORKER, "strategy.0")
    assert [r.ring.spec.name for r in strat.tick_readers] == ["ticks.synthetic"]
    aaa = run.topo.symbols.id("AAA/USDT@synthetic")

    def settle() -> None:
        for _ in range(100):
            if not (strat.step() | execution.step()):
                return
        raise AssertionError("the two workers kept stepping")

    run.tick(("AAA/USDT", 100.0))
    s = np.zeros(1, SIGNAL)
    s["symbol_id"], s["seq"], s["ts_bar_ns"], s["ref_price"] = aaa, 1, 1, 100.0
    s["probs"] = [[0.2, 0.2, 0.6]]
    s["ts_origin_ns"] = time.time_ns()
    signals.writer().write(s)
    settle()
    assert execution.desk.portfolio.qty(aaa) > 0
    run.tick(("AAA/USDT", 99.5))                  # inside the stop: nothing
    settle()
    assert execution.desk.counters["orders"] == 1
    run.tick(("AAA/USDT", 98.5))                  # 1.5 % down: out at once
    settle()
    assert execution.desk.portfolio.qty(aaa) == 0.0
    (stop,) = [r["payload"] for r in journaled(path, "intent") if r["payload"]["reason"] == REASON_STOP_LOSS]
    assert stop["seq"] >> SOURCE_BITS == STOP_SOURCE and stop["signal_seq"] == 0
    assert strat.stats()["ticks"] >= 3
    strat.close()
    execution.close()
