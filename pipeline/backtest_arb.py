"""The arbitrage backtest (issue 14): the route trader and execution's desk on candles.

The live chain is book updates -> the route trader (workers/strategy/routes.py) ->
the desk (risk guard with its route tier, paper broker, portfolio, hedge obligations,
journal). Candles carry no books, so at each bar close a venue shows a one-level book
around the close, ``half_spread_bps`` either side, as deep as the bar's volume: the
route trader walks it, the paper broker fills the IOC legs against the same quote.
Only bar closes are used: the two venues' closes are the one price pair known to be
simultaneous (a bar's high on one venue and low on the other happened at unknown
times, and a premium between them would be made up).

Money is the account's (``[execution] currency``): the equity is the desk's, KRW
valued at the ``[[execution.fx]]`` rate of the moment (FRED's daily fixing, valid from
the end of its day). The result says what the route earned against simply holding
the pre-funded inventory over the same period: trades, P&L after fees, the premium
captured, the inventory path, and what the data held that was not traded on (bad
rows, as the loader counts them: Bithumb's four daily prints with low = 0 among them).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.clock import SimClock
from pipeline.config import Config, fees_of, symbol_parts
from pipeline.errors import UserError
from pipeline.journal import Journal
from pipeline.storage import read_market_table, tidy_market_rows
from shm.records import TICK, TICK_TRADE
from workers.execution.desk import Desk, in_account
from workers.execution.orders import client_order_id
from workers.execution.venue_rules import SymbolRules, upbit_rules
from workers.strategy.arbitrage import Book
from workers.strategy.routes import ArbRoute, Inventory, RouteParams, RouteSpec

from .backtest import _ns, check_currencies, symbol_of

PIPELINE, RUN_ID = "arb-backtest", "bt"
DEFAULT_HALF_SPREAD_BPS = 1.0


@dataclass
class Closes:
    """One candle file's good bars: close times (ns), closes and volumes; ``dropped``
    counts the bad rows by reason."""
    symbol: str
    ts_ns: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    dropped: dict


@dataclass
class ArbResult:
    symbols: list[str]
    currency: str
    capital: float
    ts_ns: np.ndarray                   # one row per bar close of any leg
    equity: np.ndarray                  # the account in its currency
    hold: np.ndarray                    # the inventory held untouched, valued the same way
    premium_bps: np.ndarray             # per route and row: the mid premium (NaN: no pair of closes)
    coins: dict[str, np.ndarray]        # "venue/asset" -> coins held, per row
    pairs: list[dict]                   # every pair the routes sent, with what filled
    counts: dict = field(default_factory=dict)

    def summary(self) -> dict:
        sent = len(self.pairs)
        filled = sum(1 for p in self.pairs if p["filled"] == 2)
        pnl = float(self.equity[-1] - self.capital) if len(self.equity) else 0.0
        valued = self.hold[np.isfinite(self.hold)]      # from the first moment every leg has a close
        hold = float(valued[-1] - valued[0]) if len(valued) else math.nan
        captured = [p["captured_bps"] for p in self.pairs if p["filled"] == 2]
        return {"currency": self.currency, "bars": int(len(self.ts_ns)), "pairs_sent": sent,
                "pairs_filled": filled, "one_leg_only": sum(1 for p in self.pairs if p["filled"] == 1),
                "pnl_after_fees": round(pnl, 6), "hold_inventory_change": round(hold, 6),
                "premium_captured_bps_mean": round(float(np.mean(captured)), 3) if captured else None,
                "fees": round(float(self.counts.get("fees_account", 0.0)), 6),
                **{k: v for k, v in self.counts.items() if k != "fees_account"}}


def load_closes(path: str, lo: int | None = None, hi: int | None = None) -> Closes:
    """The bars of a candle file (checked and tidied as every reader does), at their close;
    ``lo``/``hi`` (ns) keep the closes in [lo, hi)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--data {path}: no such file or directory")
    try:
        rows = tidy_market_rows(read_market_table(p))
    except (OSError, ValueError) as e:
        raise UserError(f"--data {path}: {e}") from None
    if rows.kind != "candles":
        raise UserError(f"--data {path}: the arbitrage backtest reads candles, this file holds {rows.kind}")
    t = rows.table
    ts = np.asarray(t.column("timestamp_ms").to_numpy(zero_copy_only=False), np.float64).astype(np.int64)
    if len(ts) < 2:
        raise UserError(f"--data {path}: fewer than two good bars")
    step = int(np.median(np.diff(ts)))
    close = np.asarray(t.column("close").to_numpy(zero_copy_only=False), np.float64)
    volume = np.asarray(t.column("volume").to_numpy(zero_copy_only=False), np.float64)
    at = (ts + step) * 1_000_000
    keep = np.ones(len(at), bool)
    if lo is not None:
        keep &= at >= lo
    if hi is not None:
        keep &= at < hi
    if not keep.any():
        raise UserError(f"--data {path}: no bar closes in the period asked")
    return Closes(symbol_of(str(p)), at[keep], close[keep], volume[keep], dict(rows.dropped))


def _rules(symbol: str, at_ns: int, use_rules: bool) -> SymbolRules:
    """Upbit's KRW rules are known offline (its dated tick tables); other venues' come from
    their REST at run time, so a backtest trades them on no rule but a fine lot step."""
    base, quote, venue = symbol_parts(symbol)
    if use_rules and venue == "upbit" and quote == "KRW":
        return upbit_rules([f"KRW-{base}"], at_ns)[f"KRW-{base}"]
    return SymbolRules(symbol=symbol, lot_step=None)


def run_arb_backtest(cfg: Config, paths: list[str], journal_path: str | Path | None = None,
                     half_spread_bps: float = DEFAULT_HALF_SPREAD_BPS, start: str | None = None,
                     end: str | None = None) -> ArbResult:
    """Play the candle files' closes through the routes of ``cfg`` and the desk; ``journal_path``
    None: a temporary journal, removed after."""
    if journal_path is None:
        with tempfile.TemporaryDirectory(prefix="tickpipe-arb-") as tmp:
            return run_arb_backtest(cfg, paths, Path(tmp) / "journal.sqlite", half_spread_bps, start, end)
    if not cfg.routes:
        raise UserError("the arbitrage backtest trades [[routes]]: the config has none")
    if not (math.isfinite(half_spread_bps) and 0 <= half_spread_bps < 1000):
        raise UserError(f"--half-spread-bps must be in [0, 1000), got {half_spread_bps}")
    lo, hi = _ns(start, "--from"), _ns(end, "--to")
    closes = [load_closes(p, lo, hi) for p in paths]
    # the period every file covers: outside it one leg's price would be marked stale for months
    first, last_ts = max(int(c.ts_ns[0]) for c in closes), min(int(c.ts_ns[-1]) for c in closes)
    if first > last_ts:
        raise UserError("the --data files share no period: " + ", ".join(
            f"{c.symbol} {_iso(c.ts_ns[0])} to {_iso(c.ts_ns[-1])}" for c in closes))
    for c in closes:
        keep = (c.ts_ns >= first) & (c.ts_ns <= last_ts)
        c.ts_ns, c.close, c.volume = c.ts_ns[keep], c.close[keep], c.volume[keep]
    symbols = [c.symbol for c in closes]
    if len(set(symbols)) != len(symbols):
        raise UserError(f"--data names one symbol twice: {symbols}")
    venues = sorted({symbol_parts(s)[2] for s in symbols})
    venue_of = np.array([venues.index(symbol_parts(s)[2]) for s in symbols], np.int64)
    check_currencies(cfg, symbols)
    ts_all = np.unique(np.concatenate([c.ts_ns for c in closes]))
    clock = SimClock(int(ts_all[0]) - 1)
    journal = Journal(journal_path)
    desk = Desk(symbols, venue_of, venues, cfg.execution, cfg.risk, clock, journal, PIPELINE, RUN_ID,
                routes=cfg.routes)
    desk.recover()
    if desk.portfolio.rows["qty"].any():
        raise UserError(f"the journal {journal_path} holds positions of an earlier run; give a new file")
    ec = cfg.execution
    coins = {(i.venue, i.asset): i.amount for i in cfg.inventory if i.asset != _cash_of(i.venue, symbols)}
    cash = {i.venue: i.amount for i in cfg.inventory if i.asset == _cash_of(i.venue, symbols)}
    inventory = Inventory(coins, cash)
    routes, by_sid, rules_of = [], {}, {}
    fx_age = min((f.stale_after_s for f in ec.fx), default=math.inf)
    for i, r in enumerate(cfg.routes):
        krw, usdt = sorted(r.legs, key=lambda k: symbol_parts(k)[1] != "KRW")
        if symbol_parts(krw)[1] != "KRW" or symbol_parts(usdt)[1] == "KRW":
            raise UserError(f"routes[{i}]: the arbitrage backtest prices a KRW leg against another "
                            f"currency, got {r.legs}")
        a, b = symbols.index(krw), symbols.index(usdt)
        spec = RouteSpec(i, symbol_parts(krw)[0], symbol_parts(krw)[2], a,
                         _rules(krw, int(ts_all[0]), ec.venue_rules), fees_of(ec, symbol_parts(krw)[2])[1],
                         symbol_parts(usdt)[2], b, _rules(usdt, int(ts_all[0]), ec.venue_rules),
                         fees_of(ec, symbol_parts(usdt)[2])[1])
        params = RouteParams(qty=r.qty, entry_bps=r.entry_bps, exit_bps=r.exit_bps, band_bps=r.band_bps,
                             window=r.window,
                             max_fx_age_ns=int(fx_age * 1e9) if math.isfinite(fx_age) else 2**62,
                             max_skew_ns=0, max_book_age_ns=None)
        route = ArbRoute(spec, params, inventory, clock)
        rules_of[a], rules_of[b] = spec.krw_rules, spec.usdt_rules
        routes.append(route)
        by_sid[a] = by_sid[b] = route

    h = half_spread_bps / 1e4
    hold_coins = {k: v for k, v in coins.items()}
    hold_cash = dict(cash)
    last = np.full(len(symbols), np.nan)
    rows_eq, rows_hold, rows_prem, pairs = [], [], [], {}
    path_coins: dict[str, list[float]] = {f"{v}/{a}": [] for v, a in coins}
    cursor = [0] * len(closes)
    update = 0
    for t in ts_all.tolist():
        clock.set(t)
        ticks, moved = [], []
        for k, c in enumerate(closes):
            j = cursor[k]
            if j < len(c.ts_ns) and c.ts_ns[j] == t:
                cursor[k] = j + 1
                px, vol = float(c.close[j]), float(c.volume[j])
                ticks.append((k, px, vol))
                last[k] = px
                moved.append(k)
        rec = np.zeros(len(ticks), TICK)
        for i, (k, px, vol) in enumerate(ticks):
            top = _book(px, h, vol, rules_of.get(k), t)
            rec[i]["symbol_id"], rec[i]["kind"], rec[i]["price"], rec[i]["size"] = k, TICK_TRADE, px, vol
            rec[i]["bid"], rec[i]["ask"] = top.bid_px[0], top.ask_px[0]
            rec[i]["ts_origin_ns"] = rec[i]["ts_exchange_ns"] = t
        desk.on_ticks(rec)
        desk.housekeeping()
        krw_rate = desk.fx.rates.get("KRW")
        for route in routes:
            s = route.spec
            if not (s.krw_symbol_id in moved and s.usdt_symbol_id in moved):
                continue                              # only closes of the same moment make a pair
            update += 1
            books = [_book(last[sid], h, _size(closes[sid], cursor[sid]), rules, t)
                     for sid, rules in ((s.krw_symbol_id, s.krw_rules), (s.usdt_symbol_id, s.usdt_rules))]
            intents = route.on_books(books[0], books[1], krw_rate[0] if krw_rate else None,
                                     krw_rate[1] if krw_rate else None, update, t)
            if not len(intents):
                continue
            intents["ts_ns"] = t
            out = desk.on_intents(intents)
            out.extend(desk.poll())
            pair = {"ts_ns": t, "route": s.index, "direction": "sell " + desk.symbols[int(intents["symbol_id"][0])],
                    "legs": [int(x) for x in intents["seq"]], "filled": 0, "captured_bps": math.nan,
                    "edges_bps": [round(x, 3) for x in route.last_edges]}
            pairs[pair["legs"][0]] = pair
            _report_fills(desk, route, out, intents, pair, krw_rate[0] if krw_rate else math.nan)
        for route in routes:                          # legs over without a fill: free what they held
            for seq in list(route.legs):
                cid = _cid(desk, seq, route.strategy_id)
                if cid in desk.orders.orders and desk.orders.orders[cid].state.name in (
                        "FILLED", "CANCELLED", "REJECTED", "EXPIRED"):
                    route.on_leg_done(seq)
        rows_eq.append(desk.equity())
        rows_hold.append(_value(hold_coins, hold_cash, symbols, last, desk.fx.factor))
        rows_prem.append([route.last_mid_bps for route in routes])
        for (v, a) in coins:
            path_coins[f"{v}/{a}"].append(inventory.coins.get((v, a), 0.0))
    rows = desk.portfolio.rows
    counts = {"period": [_iso(ts_all[0]), _iso(ts_all[-1])],
              "bad_rows": {c.symbol: c.dropped for c in closes if c.dropped},
              "routes": {f"{r.spec.asset} {r.spec.krw_venue}/{r.spec.usdt_venue}": dict(r.counters)
                         for r in routes},
              "denials": {k: v for k, v in desk.guard.denials().items() if v},
              "hedges": dict(desk.hedges.counters) if desk.hedges else {},
              "fees_account": in_account(rows["fees"], desk.fx.factor),
              "half_spread_bps": half_spread_bps}
    journal.close()
    return ArbResult(symbols, desk.fx.currency, float(ec.capital), ts_all, np.array(rows_eq),
                     np.array(rows_hold), np.array(rows_prem), {k: np.array(v) for k, v in path_coins.items()},
                     list(pairs.values()), counts)


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(int(ns) / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _cash_of(venue: str, symbols: list[str]) -> str:
    """A venue's quote currency among the symbols (its cash in the inventory)."""
    quotes = {symbol_parts(s)[1] for s in symbols if symbol_parts(s)[2] == venue}
    return quotes.pop() if len(quotes) == 1 else ""


def _book(close: float, h: float, size: float, rules: SymbolRules | None, ts_ns: int) -> Book:
    """One level either side of ``close``, ``h`` away, on the venue's tick (the bid down,
    the ask up: never narrower than asked), as deep as ``size``."""
    bid, ask = float(close) * (1 - h), float(close) * (1 + h)
    if rules is not None:
        tb = rules.tick_at(Decimal(repr(bid)))
        ta = rules.tick_at(Decimal(repr(ask)))
        if tb:
            bid = float((Decimal(repr(bid)) / tb).to_integral_value(ROUND_FLOOR) * tb)
        if ta:
            ask = float((Decimal(repr(ask)) / ta).to_integral_value(ROUND_CEILING) * ta)
    return Book(np.array([bid]), np.array([size]), np.array([ask]), np.array([size]), ts_ns)


def _size(c: Closes, cursor: int) -> float:
    """The bar's volume, the depth of its one-level book (the bar just closed)."""
    return float(c.volume[cursor - 1]) if cursor else 0.0


def _cid(desk: Desk, seq: int, strategy_id: int) -> str:
    """The client order id the desk gave the intent ``seq`` (orders.create_values)."""
    return client_order_id(desk.pipeline, f"{strategy_id}.{desk.run_id}", seq)


def _report_fills(desk: Desk, route: ArbRoute, out, intents: np.ndarray, pair: dict, krw_per: float) -> None:
    """The pair's fills into the route's inventory, and what the pair captured."""
    got = {}
    ids = {v: k for k, v in desk.order_ids.items()}
    for f in out.fills:
        cid = ids.get(int(f["order_id"]))
        order = desk.orders.orders.get(cid) if cid else None
        if order is None or int(order.intent_seq) not in route.legs:
            continue
        quote = symbol_parts(desk.symbols[order.symbol_id])[1]
        route.on_fill(int(order.intent_seq), float(f["qty"]), float(f["price"]),
                      fee_quote=float(f["fee"]) if quote else 0.0)
        got[int(order.intent_seq)] = (float(f["price"]) / (krw_per if quote == "KRW" else 1.0),
                                      float(f["qty"]), int(order.side))
    pair["filled"] = len(got)
    if len(got) == 2:
        sell = next(p for p, _, side in got.values() if side < 0)
        buy = next(p for p, _, side in got.values() if side > 0)
        pair["captured_bps"] = round((sell / buy - 1) * 1e4, 3)


def _value(coins: dict, cash: dict, symbols: list[str], last: np.ndarray, factor: np.ndarray) -> float:
    """Holdings valued in the account currency at the last closes."""
    total = 0.0
    for (venue, asset), q in coins.items():
        sid = next((i for i, s in enumerate(symbols) if symbol_parts(s)[0] == asset
                    and symbol_parts(s)[2] == venue), None)
        if sid is not None:
            total += q * last[sid] * factor[sid]
    for venue, amount in cash.items():
        sid = next((i for i, s in enumerate(symbols) if symbol_parts(s)[2] == venue), None)
        if sid is not None:
            total += amount * factor[sid]
    return total


def write_result(res: ArbResult, out: str | Path) -> Path:
    """summary.json and the per-bar path (equity, hold, premium, inventory) as CSV."""
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"summary": res.summary(), "pairs": res.pairs},
                                                    indent=2, default=float))
    cols = ["ts_ns", "equity", "hold"] + [f"premium_bps_route{i}" for i in range(res.premium_bps.shape[1])] \
        + [f"coins_{k}" for k in res.coins]
    data = np.column_stack([res.ts_ns, res.equity, res.hold, res.premium_bps, *res.coins.values()])
    np.savetxt(folder / "path.csv", data, delimiter=",", header=",".join(cols), comments="", fmt="%.10g")
    return folder
