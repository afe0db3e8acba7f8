"""Kimchi-premium arbitrage as a pipeline (issue 14): the ``books`` table, the route
trader as the strategy stage (``[strategy] kind = "arbitrage"``) and conf/arb.toml.

* The books table from real payloads: Binance's depth capture rolled onto its REST
  snapshots (served by a local HTTP server through ccxt) and Upbit's orderbook capture,
  through the venue parsers, written as the feed process writes them; what a reader
  sees is checked against the capture read independently, and a reader in this process
  never sees a torn book while a child process rewrites one.
* The strategy core (workers/strategy/arb_strategy.py) on the simultaneous Upbit and
  Binance BTC books in tests/data/orderbook: a premium spike (the KRW per USDT rate
  falling 1.4 %) opens a pair, both legs priced on those books; fills come back as
  execution publishes them; a leg that never fills is declared over and its late fill
  still counts; a restarted core takes its inventory from the positions table.
* The strategy and execution processes' adapters on real rings and tables (as the
  supervisor makes them, in this process): books and ticks in, intents to execution,
  paper fills back to the route's inventory.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from conftest import RunSegments, data_file
from pipeline import topology
from pipeline.clock import SimClock
from pipeline.config import Config, load_config
from shm.records import (BOOK, BOOK_LEVELS, FILL, ORDER, ORDER_LIMIT, REASON_ENTRY, REASON_EXIT,
                         SIDE_BUY, SIDE_SELL, TICK, TICK_QUOTE, TICK_TRADE, TIF_IOC)
from shm.ring import Ring
from shm.table import Table, TableSpec
from test_feed_binance import NATIVE, book_after, make_feed as binance_feed, rest_routes
from test_feed_binance import ws_messages as binance_messages
from test_feed_upbit import capture as upbit_capture, make_feed as upbit_feed, symbol_ids as upbit_ids
from venue_servers import HttpReplayServer, WsReplayServer
from workers.execution.portfolio import Portfolio
from workers.strategy.arb_strategy import ArbStrategy
from workers.venues.base import TickBuffer

ROOT = data_file("orderbook").parent.parent.parent
KST = timezone(timedelta(hours=9))


# -- helpers ------------------------------------------------------------------------------

def book_buffer() -> TickBuffer:
    out = TickBuffer()
    out.books = {}          # as the feed process sets it when the run has a books table
    return out


def table(shm_names, rows: int) -> Table:
    return Table.create(TableSpec("books", shm_names("books"), BOOK, rows))


def levels_of(row, side: str) -> list[tuple[float, float]]:
    n = int(row[f"n_{side}s"])
    return list(zip(row[f"{side}_px"][:n].tolist(), row[f"{side}_sz"][:n].tolist()))


# -- the books table from the venue parsers ----------------------------------------------

def test_binance_depth_books_reach_the_table_as_the_captured_book(shm_names):
    """Every diff of the capture on its REST snapshot (ccxt, local server); after each
    message the feed's books go to the table, as FeedWorker.step writes them."""
    ids = {s: 1 + i for i, s in enumerate(NATIVE)}
    t = table(shm_names, 8)
    try:
        with HttpReplayServer(rest_routes()) as http:
            feed = binance_feed(["depth"], http.url)
            out = book_buffer()
            written = 0
            for raw in binance_messages():
                feed.parse(raw, 1_633_998_600_000_000_000, out)
                rows = out.take_books()
                if rows is not None:
                    t.write(rows["symbol_id"].astype(np.intp), rows)
                    written += len(rows)
        assert written > 50
        recs, seqs = t.read()
        for symbol, native in NATIVE.items():
            sid = ids[symbol]
            ref = book_after(native, binance_messages())
            row = recs[sid]
            assert seqs[sid] > 0 and int(row["symbol_id"]) == sid
            assert int(row["seq"]) == ref.last_update_id
            want_b = sorted(ref.bids.items(), key=lambda kv: -kv[0])[:BOOK_LEVELS]
            want_a = sorted(ref.asks.items())[:BOOK_LEVELS]
            assert levels_of(row, "bid") == want_b and levels_of(row, "ask") == want_a
            assert np.isnan(row["bid_px"][len(want_b):]).all()
        assert (seqs[[0, 5, 6, 7]] == 0).all()      # symbols no feed wrote
    finally:
        t.close()


def test_upbit_orderbook_books_reach_the_table_with_their_sizes(shm_names):
    raws, msgs, recv, codes = upbit_capture()
    ids = upbit_ids(codes)
    feed = upbit_feed(codes)
    t = table(shm_names, max(ids.values()) + 1)
    try:
        out = book_buffer()
        for raw, ts in zip(raws, recv):
            feed.parse(raw, int(ts * 1e9), out)
            rows = out.take_books()
            if rows is not None:
                t.write(rows["symbol_id"].astype(np.intp), rows)
        out.take()
        last = {}
        for m, ts in zip(msgs, recv):
            if m.get("ty") == "orderbook":
                last[m["cd"]] = (m, int(ts * 1e9))
        assert len(last) >= 3
        recs, seqs = t.read()
        for code, (m, recv_ns) in last.items():
            sid = ids[f"{code.split('-')[1]}/{code.split('-')[0]}"]
            row = recs[sid]
            units = m["obu"][:BOOK_LEVELS]
            assert seqs[sid] > 0
            assert int(row["ts_origin_ns"]) == recv_ns and int(row["ts_exchange_ns"]) == m["tms"] * 1_000_000
            assert levels_of(row, "bid") == [(u["bp"], u["bs"]) for u in units]
            assert levels_of(row, "ask") == [(u["ap"], u["as"]) for u in units]
    finally:
        t.close()


def test_bithumb_books_follow_snapshot_and_depth():
    """Bithumb (no captured book: messages in its documented format, as
    tests/test_feed_bithumb.py builds them): the book after each message, levels below
    the top included, sizes too."""
    from test_feed_bithumb import depth, make_feed as bithumb_feed, snapshot, symbol_ids as bithumb_ids
    feed = bithumb_feed(["BTC_KRW"])
    sid = bithumb_ids(["BTC_KRW"])["BTC/KRW"]
    t0 = 1580268255864325
    out = book_buffer()
    feed.parse(snapshot("BTC_KRW", t0, bids=[(10572000, 2.3), (10571000, 1.4)],
                        asks=[(10593000, 1.1), (10596000, 0.5)]), 10, out)
    row = out.take_books()[0]
    assert int(row["symbol_id"]) == sid and int(row["ts_exchange_ns"]) == t0 * 1000
    assert levels_of(row, "bid") == [(10572000, 2.3), (10571000, 1.4)]
    assert (out.take()["kind"] == TICK_QUOTE).all()
    feed.parse(depth(t0 + 20, ("BTC_KRW", "bid", 10571000, 9.0), ("BTC_KRW", "ask", 10596000, 0)), 11, out)
    row = out.take_books()[0]                # below the top: no quote tick, but a new book
    assert levels_of(row, "bid") == [(10572000, 2.3), (10571000, 9.0)]
    assert levels_of(row, "ask") == [(10593000, 1.1)]
    assert len(out.take()) == 0


def test_a_reconnect_empties_the_books_until_the_next_one(tmp_path):
    """A feed that reconnects may have missed book updates: its symbols' rows become empty
    books (the route trader refuses them: BOOK_EMPTY) until a new book comes."""
    raws, msgs, recv, codes = upbit_capture()
    feed = upbit_feed(codes)
    out = book_buffer()
    for raw, ts in zip(raws, recv):
        feed.parse(raw, int(ts * 1e9), out)
    assert len(out.take_books()) >= 3
    feed.on_connected(out, 2 ** 62, reconnect=True)
    rows = out.take_books()
    assert sorted(rows["symbol_id"].tolist()) == sorted(upbit_ids(codes).values())
    assert (rows["n_bids"] == 0).all() and (rows["n_asks"] == 0).all() and np.isnan(rows["bid_px"]).all()
    # what the route trader makes of such a row
    cfg = arb_config(tmp_path)
    keys = topology.build(cfg, "tcore").symbols.keys
    r = Rounds(keys)
    t0 = r.up[0][0]
    s = ArbStrategy(keys, cfg, SimClock(t0))
    s.on_ticks(r.fx_tick(1390.0, t0))
    books, seqs = r.books(0, t0)
    k = int(np.flatnonzero(books["symbol_id"] == r.usdt)[0])
    books[k] = rows[0]                                      # an emptied row, as the feed writes it
    books["symbol_id"][k], books["ts_origin_ns"][k] = r.usdt, t0
    assert len(s.on_books(books, seqs)) == 0
    assert s.routes[0].trader.counters["bad_book"] == 1 and "BOOK_EMPTY" in s.routes[0].trader.denials


def test_a_feed_without_a_books_table_builds_no_books():
    raws, _, recv, codes = upbit_capture()
    feed = upbit_feed(codes)
    out = TickBuffer()                  # books None: the default pipeline
    for raw, ts in zip(raws, recv):
        feed.parse(raw, int(ts * 1e9), out)
    assert out.books is None and out.take_books() is None and len(out.take()) > 0


def upbit_books_rows() -> np.ndarray:
    """Two real Upbit KRW books of one market (the capture's last two), as BOOK rows."""
    raws, msgs, recv, codes = upbit_capture()
    books = [(m, ts) for m, ts in zip(msgs, recv) if m.get("ty") == "orderbook"]
    code = books[-1][0]["cd"]
    mine = [(m, ts) for m, ts in books if m["cd"] == code and len(m["obu"]) >= BOOK_LEVELS]
    out = book_buffer()
    rows = []
    for m, ts in mine[-2:]:
        out.book(0, int(ts * 1e9), m["tms"] * 1_000_000, 0, [(u["bp"], u["bs"]) for u in m["obu"]],
                 [(u["ap"], u["as"]) for u in m["obu"]])
        rows.append(out.take_books()[0])
    assert len(rows) == 2 and levels_of(rows[0], "bid") != levels_of(rows[1], "bid")
    return np.array(rows, BOOK)


def book_writer(spec, rows, started, stop, q):
    """Child: rewrite row 0 with the two books in turn until ``stop``."""
    try:
        t = Table.attach(spec)
        n = 0
        while not stop.is_set() or n < 100:
            t.write([0], rows[n % 2:n % 2 + 1])
            n += 1
            if n == 100:
                started.set()
        t.close()
        q.put(("book_writer", "ok", n))
    except BaseException as e:  # noqa: BLE001
        started.set()
        q.put(("book_writer", "error", repr(e)))


def test_a_reader_never_sees_a_torn_book_while_a_feed_rewrites_it(shm_names, children):
    rows = upbit_books_rows()
    t = table(shm_names, 1)
    try:
        q, started, stop = children.ctx.Queue(), children.ctx.Event(), children.ctx.Event()
        p = children.start(book_writer, t.spec, rows, started, stop, q)
        assert started.wait(60), "book writer did not start"
        seen = set()
        reads, last_seq = 0, 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline or reads < 100:
            got, seqs = t.read([0], timeout=30.0)
            assert seqs[0] >= last_seq and seqs[0] % 2 == 0
            last_seq = seqs[0]
            match = [k for k in range(2) if got[0].tobytes() == rows[k].tobytes()]
            assert match, "a book that is neither of the two written: torn"
            seen.add(match[0])
            reads += 1
        stop.set()
        n = children.results(q, 1, timeout=60)["book_writer"]
        assert children.join(p) == 0 and n >= 100
        assert seen == {0, 1}, "the writer barely ran while we read: nothing was tested"
    finally:
        t.close()


# -- config ------------------------------------------------------------------------------

def test_conf_arb_toml_loads_and_validates():
    cfg = load_config(ROOT / "conf" / "arb.toml")
    assert cfg.strategy.kind == "arbitrage" and cfg.execution.mode == "paper"
    assert cfg.execution.currency == "USDT"
    assert [f.symbol for f in cfg.execution.fx] == ["USDT/KRW@upbit"]
    fees = {f.venue: (f.maker_bps, f.taker_bps) for f in cfg.execution.venue_fees}
    assert fees == {"upbit": (5.0, 5.0), "binance": (10.0, 10.0)}
    assets = [r.legs[0].split("/")[0] for r in cfg.routes]
    assert assets == ["BTC", "ETH", "XRP", "SOL", "DOGE", "ADA", "TRX", "LINK", "AVAX", "SUI"]
    assert all(r.legs == [f"{a}/KRW@upbit", f"{a}/USDT@binance"] for a, r in zip(assets, cfg.routes))
    held = {(i.venue, i.asset) for i in cfg.inventory}
    assert {("upbit", "KRW"), ("binance", "USDT")} <= held
    assert all(("upbit", a) in held and ("binance", a) in held for a in assets)
    assert all(not f.ws_url and not f.rest_url for f in cfg.feeds)     # the venues' public endpoints
    assert "depth" in next(f for f in cfg.feeds if f.kind == "binance").channels
    topo = topology.build(cfg, "tarb")
    assert "books" in topo.tables and topo.tables["books"].dtype == BOOK
    assert set(topo.worker("strategy.0").inputs) >= {"ticks.upbit", "ticks.binance", "fills", "orders"}
    assert "strategy.0" in topo.rings["fills"].readers


def test_the_default_pipeline_has_no_books_table():
    topo = topology.build(Config(), "tdef")
    assert "books" not in topo.tables
    assert topo.worker("strategy.0").inputs == [w for w in topo.worker("strategy.0").inputs
                                                 if w.startswith("signals.")]
    assert topo.rings["fills"].readers == [] and topo.rings["orders"].readers == []


# both sides pre-funded: what every test pipeline here starts from
INVENTORY = """
[[inventory]]
venue = "upbit"
asset = "KRW"
amount = 20000000.0
[[inventory]]
venue = "binance"
asset = "USDT"
amount = 15000.0
[[inventory]]
venue = "upbit"
asset = "BTC"
amount = 0.1
[[inventory]]
venue = "binance"
asset = "BTC"
amount = 0.1
"""

# each venue's fees and risk limits that never bind, in every test pipeline here
FEES_AND_LIMITS = """
[[execution.venue_fees]]
venue = "upbit"
taker_bps = 5.0
maker_bps = 5.0
[[execution.venue_fees]]
venue = "binance"
taker_bps = 10.0
maker_bps = 10.0
[risk]
max_position_notional = 1e9
max_order_notional = 1e9
max_gross_exposure = 1e9
max_venue_exposure = 1e9
max_route_imbalance = 1e9
"""

ARB = """
[pipeline]
name = "arbt"
workers = 2
heartbeat_interval_s = 0.25
[model]
kind = "momentum"
[strategy]
kind = "arbitrage"
[execution]
currency = "USDT"
venue_rules = false
{execution}
[[execution.fx]]
quote = "KRW"
symbol = "USDT/KRW@upbit"
""" + FEES_AND_LIMITS + """[[feeds]]
name = "upbit"
kind = "upbit"
ws_url = "ws://127.0.0.1:9"
rest_url = "http://127.0.0.1:9"
symbols = ["BTC/KRW", "USDT/KRW"]
[[feeds]]
name = "binance"
kind = "binance"
ws_url = "ws://127.0.0.1:9"
rest_url = "http://127.0.0.1:9"
channels = ["trades", "depth"]
symbols = ["BTC/USDT"]
{routes}
""" + INVENTORY
ROUTE = """
[[routes]]
legs = ["BTC/KRW@upbit", "BTC/USDT@binance"]
qty = 0.01
entry_bps = 30.0
exit_bps = -5.0
band_bps = 5.0
window = 1
"""


def arb_config(tmp_path, routes: str = ROUTE, execution: str = "") -> Config:
    path = tmp_path / "arb.toml"
    path.write_text(ARB.format(routes=routes, execution=execution))
    return load_config(path)


def test_arbitrage_needs_routes_with_a_krw_and_a_usdt_leg(tmp_path):
    with pytest.raises(ValueError, match=r"needs at least one \[\[routes\]\]"):
        arb_config(tmp_path, routes="")
    cfg = arb_config(tmp_path)
    assert cfg.strategy.kind == "arbitrage" and len(cfg.routes) == 1


# -- the strategy core on real books ------------------------------------------------------

def snapshots(name: str) -> list[tuple[int, list, list]]:
    """(UTC ns, bids, asks) of a ccxt top-20 snapshot file; its times are naive KST."""
    out = []
    for line in data_file(f"orderbook/{name}").read_text().splitlines():
        d = json.loads(line)
        ts = datetime.fromisoformat(d["timestamp"]).replace(tzinfo=KST)
        out.append((int(ts.timestamp() * 1e9), d["bids"], d["asks"]))
    return out


UPBIT = "upbit_BTC-KRW_top20_snapshots_2025-08-23T2103Z.jsonl"
BINANCE = "binance_BTC-USDT_top20_snapshots_2025-08-23T2105Z.jsonl"


class Rounds:
    """The Binance snapshots with the Upbit ones taken with them (the 4th to 6th: the
    same minute), one round per pair, each received at the Upbit snapshot's time, as
    BOOK rows with table sequences growing as the table's do (2 per write)."""

    def __init__(self, symbols):
        self.krw, self.usdt, self.fx = (symbols.index(k) for k in ("BTC/KRW@upbit", "BTC/USDT@binance",
                                                                    "USDT/KRW@upbit"))
        self.up, self.bn = snapshots(UPBIT)[4:7], snapshots(BINANCE)
        self.n = 0

    def books(self, k: int, recv_ns: int) -> tuple[np.ndarray, np.ndarray]:
        out = book_buffer()
        for sid, (_, bids, asks) in ((self.krw, self.up[k]), (self.usdt, self.bn[k])):
            out.book(sid, recv_ns, recv_ns, 0, [tuple(x) for x in bids], [tuple(x) for x in asks])
        self.n += 2
        rows = out.take_books()
        return rows, np.full(len(rows), self.n, np.uint64)

    def fx_tick(self, rate: float, recv_ns: int) -> np.ndarray:
        t = np.zeros(1, TICK)
        t["symbol_id"], t["kind"], t["ts_origin_ns"], t["ts_exchange_ns"] = self.fx, TICK_QUOTE, recv_ns, recv_ns
        t["bid"], t["ask"] = rate - 0.5, rate + 0.5
        t["price"] = rate
        return t


def fills_of(intents: np.ndarray, first_oid: int, fee_bps: dict) -> tuple[np.ndarray, np.ndarray]:
    """ORDER and FILL records execution would publish for ``intents`` filled in full at
    their reference (walked) prices."""
    orders, fills = np.zeros(len(intents), ORDER), np.zeros(len(intents), FILL)
    for k, i in enumerate(intents):
        orders[k]["order_id"] = fills[k]["order_id"] = first_oid + k
        orders[k]["intent_seq"] = i["seq"]
        for r in (orders[k], fills[k]):
            r["symbol_id"], r["side"], r["qty"] = i["symbol_id"], i["side"], i["qty"]
        fills[k]["price"] = i["ref_price"]
        fills[k]["fee"] = i["qty"] * i["ref_price"] * fee_bps[int(i["symbol_id"])] * 1e-4
    return orders, fills


def test_real_books_and_a_premium_spike_make_both_legs_and_fills_move_the_inventory(tmp_path):
    cfg = arb_config(tmp_path)
    keys = topology.build(cfg, "tcore").symbols.keys
    r = Rounds(keys)
    t0 = r.up[0][0]
    clock = SimClock(t0)
    s = ArbStrategy(keys, cfg, clock)
    assert s.ready == [True]
    fee = {r.krw: 5.0, r.usdt: 10.0}

    # round 1: the rolling window's first sample (Upbit 1.595e8 KRW against 115,279 USDT
    # at 1,390 KRW per USDT: a premium of about -45 bps)
    s.on_ticks(r.fx_tick(1390.0, t0))
    assert len(s.on_books(*r.books(0, t0))) == 0
    trader = s.routes[0].trader
    assert trader.counters["warmup"] == 1 and -60 < trader.last_mid_bps < -30
    # nothing new in the table: no call
    rows, seqs = r.books(0, t0)
    assert len(s.on_books(rows, seqs - 2)) == 0 and trader.counters["updates"] == 1

    # round 2, 10 s on: KRW per USDT fell 1.4 % (1,370): the Korean price is rich against
    # its level by about 100 bps: sell BTC on Upbit, buy it on Binance
    t1 = r.up[1][0]
    clock.set(t1 + 100_000_000)
    s.on_ticks(r.fx_tick(1370.0, t1))
    intents = s.on_books(*r.books(1, t1))
    assert len(intents) == 2, trader.counters
    sell, buy = intents
    assert (int(sell["symbol_id"]), int(sell["side"]), int(buy["symbol_id"]), int(buy["side"])) == \
        (r.krw, SIDE_SELL, r.usdt, SIDE_BUY)
    assert (intents["order_type"] == ORDER_LIMIT).all() and (intents["tif"] == TIF_IOC).all()
    assert (intents["reason"] == REASON_ENTRY).all() and (intents["qty"] == 0.01).all()
    assert (intents["strategy_id"] == 2).all()
    # the update's seq: half the sum of the two rows' table seqs (6 + 6: the third write of
    # each row), in the route's space
    assert intents["seq"].tolist() == [(1 << 48) | (6 << 1), (1 << 48) | (6 << 1) | 1]
    # walked on the books: 0.01 BTC is inside Upbit's best bid and Binance's best ask
    (_, ub, _), (_, _, ba) = r.up[1], r.bn[1]
    assert ub[0][1] >= 0.01 and ba[0][1] >= 0.01
    assert sell["ref_price"] == ub[0][0] and buy["ref_price"] == ba[0][0]
    # each limit 5 bps through the walked level (band_bps), no tick to round to here
    assert sell["limit_price"] == pytest.approx(ub[0][0] * (1 - 5e-4))
    assert buy["limit_price"] == pytest.approx(ba[0][0] * (1 + 5e-4))
    assert int(sell["ts_origin_ns"]) == t1
    inv = s.inventory
    assert inv.free_coins("upbit", "BTC") == pytest.approx(0.09)

    # the same books again: the level (a window of one sample) has caught up: nothing
    assert len(s.on_books(*r.books(1, t1))) == 0 and trader.counters["below_threshold"] == 1

    # execution's records: both legs filled in full
    orders, fills = fills_of(intents, 11, fee)
    s.on_orders(orders)
    s.on_fills(fills)
    assert s.counters["fills"] == 2 and not trader.legs and not s.sent
    assert trader.position == pytest.approx(0.01)
    assert inv.coins[("upbit", "BTC")] == pytest.approx(0.09)
    assert inv.coins[("binance", "BTC")] == pytest.approx(0.11)
    krw = 0.01 * ub[0][0]
    assert inv.cash["upbit"] == pytest.approx(20_000_000 + krw - krw * 5e-4)
    usdt = 0.01 * ba[0][0]
    assert inv.cash["binance"] == pytest.approx(15_000 - usdt - usdt * 1e-3)
    assert inv.reserved_cash["binance"] == pytest.approx(0) and inv.reserved_coins[("upbit", "BTC")] == 0

    # round 3: the rate back at 1,390: the premium falls ~145 bps below the last sample:
    # the position is unwound (sell on Binance, buy on Upbit)
    t2 = r.up[2][0]
    clock.set(t2 + 100_000_000)
    s.on_ticks(r.fx_tick(1390.0, t2))
    unwind = s.on_books(*r.books(2, t2))
    assert len(unwind) == 2 and (unwind["reason"] == REASON_EXIT).all()
    assert (int(unwind[0]["symbol_id"]), int(unwind[1]["symbol_id"])) == (r.usdt, r.krw)
    # only the Binance leg fills; the Upbit leg's IOC finds nothing (no record comes)
    orders, fills = fills_of(unwind, 21, fee)
    s.on_orders(orders)
    s.on_fills(fills[:1])
    assert set(trader.legs) == {int(unwind[1]["seq"])}
    assert inv.reserved_cash["upbit"] > 0
    clock.advance(5_000_000_000)
    assert s.expire() == 0
    clock.advance(6_000_000_000)
    assert s.expire() == 1 and not trader.legs and inv.reserved_cash["upbit"] == pytest.approx(0)
    assert trader.position == pytest.approx(0.01)          # the Korean leg did not fill
    # ... until its fill turns up late after all: still counted
    s.on_fills(fills[1:])
    assert s.counters["late_fills"] == 1 and trader.position == pytest.approx(0.0)
    assert inv.coins[("upbit", "BTC")] == pytest.approx(0.1)
    assert inv.coins[("binance", "BTC")] == pytest.approx(0.1)

    # a fill of an order that is not ours on a route symbol (execution's re-hedge)
    hedge = np.zeros(1, FILL)
    hedge["order_id"], hedge["symbol_id"], hedge["side"] = 99, r.usdt, SIDE_SELL
    hedge["qty"], hedge["price"], hedge["fee"] = 0.001, 115_000.0, 0.1
    before = inv.cash["binance"]
    s.on_fills(hedge)
    assert s.counters["other_fills"] == 1
    assert inv.coins[("binance", "BTC")] == pytest.approx(0.099)
    assert inv.cash["binance"] == pytest.approx(before + 115.0 - 0.1)

    # a restarted core: the same inventory from the positions execution keeps
    pf = Portfolio.empty(len(keys))
    everything = np.concatenate([fills_of(intents, 11, fee)[1], fills, hedge])
    everything["ts_ns"] = np.arange(1, len(everything) + 1)
    pf.apply_many([(int(f["symbol_id"]), int(f["side"]), float(f["qty"]), float(f["price"]),
                    float(f["fee"]), int(f["order_id"]), int(f["ts_ns"])) for f in everything])
    again = ArbStrategy(keys, cfg, clock)
    again.restore_positions(pf.rows, np.full(len(keys), 2, np.uint64))
    # the fills ring hands the last ones over again (read, not committed, before a crash):
    # the positions hold them already
    again.on_fills(everything[-2:])
    assert again.counters["fills_restored"] == 2 and again.counters["other_fills"] == 0
    for key, value in inv.coins.items():
        assert again.inventory.coins[key] == pytest.approx(value), key
    for venue, value in inv.cash.items():
        assert again.inventory.cash[venue] == pytest.approx(value), venue
    assert again.routes[0].trader.position == pytest.approx(trader.position)

    # a fresh start over that journal, before execution has written what it rebuilt: the
    # funding alone; once the positions are there (and no leg in flight), the same inventory
    fresh = ArbStrategy(keys, cfg, clock)
    assert not fresh.sync_positions(pf.rows, np.zeros(len(keys), np.uint64)) or \
        fresh.inventory.coins[("upbit", "BTC")] == pytest.approx(fresh.funding[0][("upbit", "BTC")])
    assert fresh.sync_positions(pf.rows, np.full(len(keys), 3, np.uint64))
    assert not fresh.sync_positions(pf.rows, np.full(len(keys), 3, np.uint64))     # unchanged rows
    for key, value in inv.coins.items():
        assert fresh.inventory.coins[key] == pytest.approx(value), key
    for venue, value in inv.cash.items():
        assert fresh.inventory.cash[venue] == pytest.approx(value), venue


def test_stale_or_missing_fx_and_bad_books_make_no_order(tmp_path):
    cfg = arb_config(tmp_path)
    keys = topology.build(cfg, "tcore").symbols.keys
    r = Rounds(keys)
    t0 = r.up[0][0]
    clock = SimClock(t0)
    s = ArbStrategy(keys, cfg, clock)
    trader = s.routes[0].trader
    assert len(s.on_books(*r.books(0, t0))) == 0 and trader.counters["no_fx"] == 1   # no rate yet
    s.on_ticks(r.fx_tick(1390.0, t0))
    clock.advance(61_000_000_000)                          # the rate is over a minute old
    assert len(s.on_books(*r.books(0, clock.time_ns()))) == 0 and trader.counters["stale_fx"] == 1
    s.on_ticks(r.fx_tick(1390.0, clock.time_ns()))
    rows, seqs = r.books(0, clock.time_ns())
    rows[0]["bid_px"][0] = rows[0]["ask_px"][0] + 1000     # crossed
    assert len(s.on_books(rows, seqs)) == 0 and trader.counters["bad_book"] == 1


def test_routes_wait_for_the_venue_rules(tmp_path):
    from decimal import Decimal

    from workers.execution.venue_rules import SymbolRules
    cfg = arb_config(tmp_path)
    cfg.execution.venue_rules = True
    keys = topology.build(cfg, "tcore").symbols.keys
    s = ArbStrategy(keys, cfg, SimClock(0))
    assert s.ready == [False]
    krw, usdt = keys.index("BTC/KRW@upbit"), keys.index("BTC/USDT@binance")
    s.set_rules("upbit", {krw: SymbolRules("KRW-BTC", lot_step=None)})
    assert s.ready == [False]
    s.set_rules("binance", {usdt: SymbolRules("BTCUSDT", lot_step=Decimal("0.00001"),
                                               tick_size=Decimal("0.01"))})
    assert s.ready == [True]
    assert s.stats()["routes"]["BTC/KRW@upbit / BTC/USDT@binance"]["position"] == 0.0
    # a dated tick table that changed: the route trading takes it for its next orders
    from workers.execution.venue_rules import upbit_rules
    july, august = (upbit_rules(["KRW-BTC"], int(datetime(2025, m, d, tzinfo=timezone.utc).timestamp() * 1e9))
                    ["KRW-BTC"] for m, d in ((7, 30), (8, 1)))
    assert july != august
    s.set_rules("upbit", {krw: july})
    s.set_rules("upbit", {krw: august})
    assert s.routes[0].trader.spec.krw_rules == august


# -- the processes' adapters on real rings -------------------------------------------------

class Run(RunSegments):
    def __init__(self, tmp_path):
        super().__init__(tmp_path, ARB.format(routes=ROUTE, execution="").replace(
            "[execution]\n", f'[execution]\njournal = "{tmp_path / "j.sqlite"}"\n', 1))
        self.rings = [Ring.attach(self.topo.rings[n]) for n in ("ticks.upbit", "ticks.binance")]
        self.ticks = {n: ring.writer() for n, ring in zip(("upbit", "binance"), self.rings)}
        self.books = Table.attach(self.topo.tables["books"])

    def close(self) -> None:
        self.books.close()
        for r in self.rings:
            r.close()
        super().close()


def test_strategy_and_execution_trade_a_pair_on_real_rings(tmp_path):
    from workers.execution.worker import ExecutionWorker
    from workers.strategy.arb_worker import ArbWorker
    from workers.strategy.worker import WORKER
    run = Run(tmp_path)
    try:
        strat = run.worker(WORKER, "strategy.0")
        assert isinstance(strat, ArbWorker)
        execution = run.worker(ExecutionWorker, "execution.0")
        keys = run.topo.symbols.keys
        r = Rounds(keys)

        def feed(k: int, rate: float) -> None:
            """What the two feed processes write for round k: books, then ticks (a
            trade at each book's mid with its best quote, and the FX market's quote)."""
            now = time.time_ns()
            rows, _ = r.books(k, now)
            run.books.write(rows["symbol_id"].astype(np.intp), rows)
            for venue, sid in (("upbit", r.krw), ("binance", r.usdt)):
                row = rows[rows["symbol_id"] == sid][0]
                t = np.zeros(1, TICK)
                t["symbol_id"], t["kind"], t["side"], t["size"] = sid, TICK_TRADE, SIDE_BUY, 0.01
                t["bid"], t["ask"] = row["bid_px"][0], row["ask_px"][0]
                t["price"] = (t["bid"] + t["ask"]) / 2
                t["ts_origin_ns"] = t["ts_exchange_ns"] = now
                if venue == "upbit":
                    q = r.fx_tick(rate, now)
                    t = np.concatenate([t, q])
                run.ticks[venue].write(t)

        def settle():
            """Step both until neither has anything left (bounded)."""
            for _ in range(200):
                a, b = strat.step(), execution.step()
                if not a and not b:
                    return
            raise AssertionError("the two workers kept stepping")

        feed(0, 1390.0)
        settle()
        core = strat.core
        trader = core.routes[0].trader
        assert trader.counters["warmup"] == 1
        feed(1, 1370.0)
        settle()
        assert core.counters["intents"] == 2, (trader.counters, core.counters)
        assert execution.desk.counters["orders"] == 2, execution.stats()["denials"]
        assert core.counters["fills"] == 2, core.stats()
        assert not trader.legs and trader.position == pytest.approx(0.01)
        inv = core.inventory
        assert inv.coins[("upbit", "BTC")] == pytest.approx(0.09)
        assert inv.coins[("binance", "BTC")] == pytest.approx(0.11)
        assert inv.cash["upbit"] > 20_000_000 and inv.cash["binance"] < 15_000
        pos, seqs = strat.positions.read()
        assert pos["qty"][r.krw] == pytest.approx(-0.01) and pos["qty"][r.usdt] == pytest.approx(0.01)
        stats = strat.stats()
        assert stats["intents"] == 2 and stats["ticks"] >= 4
        # a route selection change (route_select.py) is said once: logged, and in the next
        # heartbeat's risk_events, which the supervisor puts on the tap's risk stream
        from workers.strategy.route_select import Change
        core._selected.append((123, Change(0, False, "spread 9.0 bps over max_spread_bps 5")))
        strat.on_idle()
        (event,) = [e for e in strat.stats()["risk_events"] if e["kind"] == "route_selection"]
        assert event == {"kind": "route_selection", "tier": "route", "key": core.cfg.routes[0].name, "route": 0,
                         "state": "PARKED", "reason": "spread 9.0 bps over max_spread_bps 5", "ts_ns": 123}
        assert strat.stats()["risk_events"] == []

        # a restarted strategy takes the same inventory from the positions table
        again = run.worker(WORKER, "strategy.0", restart=1)
        for key, value in inv.coins.items():
            assert again.core.inventory.coins[key] == pytest.approx(value), key
        for venue, value in inv.cash.items():
            assert again.core.inventory.cash[venue] == pytest.approx(value, rel=1e-9), venue
        assert again.core.routes[0].trader.position == pytest.approx(0.01)
    finally:
        run.close()


# -- `pipeline start` on local venue servers -----------------------------------------------

def upbit_orderbook_messages() -> list[str]:
    """The Upbit BTC/KRW snapshots as Upbit's SIMPLE ``orderbook`` messages (15 levels, as
    Upbit sends them): real prices and sizes, the message shape of the capture."""
    out = []
    for k, (ts, bids, asks) in enumerate(snapshots(UPBIT)):
        units = [{"ap": a[0], "as": a[1], "bp": b[0], "bs": b[1]} for b, a in zip(bids[:15], asks[:15])]
        out.append(json.dumps({"ty": "orderbook", "cd": "KRW-BTC", "tms": ts // 1_000_000,
                               "tas": sum(a[1] for a in asks[:15]), "tbs": sum(b[1] for b in bids[:15]),
                               "obu": units, "st": "REALTIME"}))
        # and a trade at the touch (the risk guard's price band needs a last trade): a
        # buyer taking the best ask's first 0.001 BTC
        out.append(json.dumps({"ty": "trade", "cd": "KRW-BTC", "tms": ts // 1_000_000,
                               "ttms": ts // 1_000_000, "tp": asks[0][0], "tv": 0.001, "ab": "BID",
                               "sid": 17_560_000_000_000_000 + k, "st": "REALTIME"}))
    return out


def binance_depth() -> tuple[str, list[str]]:
    """The Binance BTC/USDT snapshots as Binance serves them: the first as the REST
    snapshot (GET /api/v3/depth), each later one as the ``depthUpdate`` diff from the one
    before (levels gone: size 0), with consecutive update ids."""
    snaps = snapshots(BINANCE)
    first = 7_000_000_000

    def text(levels):
        return [[repr(float(p)), repr(float(q))] for p, q in levels]
    rest = json.dumps({"lastUpdateId": first, "bids": text(snaps[0][1]), "asks": text(snaps[0][2])})
    diffs = []
    for k in range(1, len(snaps)):
        ts, bids, asks = snaps[k]
        side = {}
        for name, new, old in (("b", bids, snaps[k - 1][1]), ("a", asks, snaps[k - 1][2])):
            now = {p for p, _ in new}
            side[name] = text(new) + text([(p, 0.0) for p, _ in old if p not in now])
        diffs.append(json.dumps({"stream": "btcusdt@depth@100ms", "data": {
            "e": "depthUpdate", "E": ts // 1_000_000, "s": "BTCUSDT", "U": first + k, "u": first + k,
            "b": side["b"], "a": side["a"]}}))
        # a trade at the touch, as for Upbit
        ms = ts // 1_000_000
        diffs.append(json.dumps({"stream": "btcusdt@aggTrade", "data": {
            "e": "aggTrade", "E": ms, "s": "BTCUSDT", "a": 3_000_000_000 + k, "p": repr(float(asks[0][0])),
            "q": "0.001", "f": 5_000_000_000 + k, "l": 5_000_000_000 + k, "T": ms, "m": False, "M": True}}))
    return rest, diffs


E2E = """
[pipeline]
name = "arbe"
workers = 2
heartbeat_interval_s = 0.25
heartbeat_timeout_s = 10.0
[bus]
tap_bind = ""
metrics_bind = ""
[indicators]
bar_seconds = 1.0
[model]
kind = "momentum"
[strategy]
kind = "arbitrage"
[execution]
currency = "USDT"
venue_rules = false
[[execution.fx]]
quote = "KRW"
rate = 1389.0
""" + FEES_AND_LIMITS + """max_orders_per_s = 1000.0
order_burst = 1000
[[feeds]]
name = "upbit"
kind = "upbit"
channels = ["trades", "quotes"]
symbols = ["BTC/KRW"]
ws_url = "{upbit_ws}"
rest_url = "{rest}"
no_message_timeout_s = 1.0
reconnect_backoff_s = 0.1
reconnect_backoff_max_s = 0.5
rest_rate_per_s = 100.0
[[feeds]]
name = "binance"
kind = "binance"
channels = ["trades", "depth"]
symbols = ["BTC/USDT"]
ws_url = "{binance_ws}"
rest_url = "{rest}"
no_message_timeout_s = 1.0
reconnect_backoff_s = 0.1
reconnect_backoff_max_s = 0.5
rest_rate_per_s = 100.0
[[routes]]
legs = ["BTC/KRW@upbit", "BTC/USDT@binance"]
qty = 0.01
entry_bps = -100.0
exit_bps = -100.0
window = 1
""" + INVENTORY


def E2E_REST(depth: str) -> dict:
    """The REST the two feeds call: Binance's depth snapshot; no trades to backfill after
    a reconnect (the replay has no more than it sent)."""
    return {"/api/v3/depth": depth, "/api/v3/aggTrades": "[]", "/v1/trades/ticks": "[]"}


def test_pipeline_start_trades_pairs_from_local_venue_servers(tmp_path):
    """`pipeline start` with the Upbit and Binance feeds on local servers replaying the real
    BTC books (each connection gets them all, then silence: the watchdog reconnects after
    1 s and they come again; with cycles of about 1.2 s, each cycle has an update of one
    venue within the route's 1 s skew of the other's, whatever the phase between them). The entry threshold is set below any premium (-100 bps,
    window 1) so that every valid update may trade: this checks the wiring (feeds write
    books, the route trader reads them, execution fills the IOC legs on paper, the fills
    come back to the inventory), not the premium. Then a clean stop leaves nothing behind."""
    from test_pipeline import Pipeline, leftovers
    rest, diffs = binance_depth()
    with WsReplayServer(upbit_orderbook_messages()) as up, \
            WsReplayServer(diffs, expect_subscribe=0) as bn, \
            HttpReplayServer(E2E_REST(rest)) as http:
        p = Pipeline(tmp_path, name="arbe", workers=2)
        p.config.write_text(E2E.format(upbit_ws=up.url, binance_ws=bn.url, rest=http.url))
        try:
            p.start()

            def traded(st) -> bool:
                by = {w["id"]: w["stats"] for w in st["workers"]}
                return (by.get("strategy.0", {}).get("fills", 0) >= 2
                        and by.get("execution.0", {}).get("fills", 0) >= 2)
            st = p.wait_status(traded, "a pair of legs filled and reported back")
            by = {w["id"]: w["stats"] for w in st["workers"]}
            strat = by["strategy.0"]
            assert strat["intents"] >= 2 and strat["book_updates"] >= 2
            route = strat["routes"]["BTC/KRW@upbit / BTC/USDT@binance"]
            assert route["pairs"] >= 1
            # no book the table handed over was damaged (torn, crossed, unsorted); an empty
            # one (a feed reconnecting: the replay server goes quiet after each pass) is refused
            damaged = {"BOOK_CROSSED", "BOOK_UNSORTED", "BOOK_BAD_PRICE", "BOOK_BAD_SIZE", "BOOK_SHAPE"}
            assert not damaged & set(route["denials"]), route
            coins = strat["inventory"]["coins"]
            # every pair moves 0.01 BTC from one venue to the other, none is lost
            assert coins["upbit/BTC"] + coins["binance/BTC"] == pytest.approx(0.2, abs=0.011)
            books = [w["stats"].get("books", 0) for w in st["workers"] if w["id"].startswith("feed.")]
            assert len(books) == 2 and all(n > 0 for n in books), books
            rep = p.cli("report")                   # the routes, as the route trader last said
            assert rep.returncode == 0, rep.stderr
            line = next(x for x in rep.stdout.splitlines() if x.strip().startswith("BTC/KRW@upbit / BTC/USDT@binance"))
            assert "active" in line and "\nroutes\n" in rep.stdout
            r = p.cli("stop")
            assert r.returncode == 0, r.stderr
            assert p.wait_exit() == 0
            out = p.output()
            assert "Traceback" not in out, out
            assert leftovers(st["run_id"], p.tmp / "run") == []
        finally:
            p.kill()


def test_an_inventory_drifting_past_its_band_is_said_once_with_a_suggested_transfer(tmp_path):
    cfg = arb_config(tmp_path)
    keys = topology.build(cfg, "tinv").symbols.keys
    s = ArbStrategy(keys, cfg, SimClock(0))
    assert s.imbalance_changes() == []                       # as funded: nothing to say
    inv = s.inventory
    funded = {k: v for k, v in inv.coins.items() if k[1] == "BTC"}
    total = sum(funded.values())
    up, bn = ("upbit", "BTC"), ("binance", "BTC")
    inv.coins[up] -= 0.3 * total                             # sold in Korea, bought on Binance
    inv.coins[bn] += 0.3 * total
    (alert, text), = [c for c in s.imbalance_changes() if "BTC" in c[1]]
    assert alert and "suggested transfer" in text and "binance -> upbit" in text
    assert s.imbalance_changes() == []                       # said once
    (btc,) = [i for i in s.stats()["imbalances"] if i["asset"] == "BTC"]
    assert btc["alert"] and btc["rebalance"]["amount"] == pytest.approx(0.3 * total)
    inv.coins[up], inv.coins[bn] = funded[up], funded[bn]
    (alert, text), = [c for c in s.imbalance_changes() if "BTC" in c[1]]
    assert not alert and "back within its band" in text
