"""The arbitrage backtest (issue 14): the route trader and execution's desk on candles.

The live chain is book updates -> the route trader (the strategy process's
``ArbStrategy``, workers/strategy/arb_strategy.py, around routes.py) -> the desk (risk
guard with its route tier, paper broker, portfolio, hedge obligations, journal). Here
the same two cores run on a simulated clock and are driven as the two processes drive
them: per bar close the desk's ticks and housekeeping, the desk's ORDER and FILL
records back to ``ArbStrategy.on_orders``/``on_fills`` (re-hedges included), legs not
done expired, then ``on_books`` with the ``books`` table's rows; its intents to the
desk. Route selection ([strategy] max_active_routes and gates) runs here as live.

Candles carry no books, so at each bar close a venue shows a one-level book around
the close, ``half_spread_bps`` either side, as deep as the bar's volume: the route
trader walks it, the paper broker fills the IOC legs against the same quote. Only
bar closes are used: the two venues' closes are the one price pair known to be
simultaneous (a bar's high on one venue and low on the other happened at unknown
times, and a premium between them would be made up): the routes allow no skew
between their books, so a bar close of one leg alone (1-minute bars against
5-minute ones) is refused and counted (``books_apart``).

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
from pipeline.config import Config, symbol_parts
from pipeline.errors import UserError
from pipeline.journal import Journal
from pipeline.storage import read_market_table, tidy_market_rows
from shm.records import BOOK, FILL, ORDER, TICK, TICK_TRADE
from workers.execution.desk import Desk, in_account
from workers.execution.venue_rules import SymbolRules, upbit_rules
from workers.strategy.arb_strategy import ArbStrategy
from workers.strategy.arbitrage import Book

from .backtest import JOURNAL_GROUP_ROWS, _ns, check_currencies, symbol_of

PIPELINE, RUN_ID = "arb-backtest", "bt"
HOUR_NS = 3_600 * 10**9
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
    journal = Journal(journal_path, group_rows=JOURNAL_GROUP_ROWS)
    desk = Desk(symbols, venue_of, venues, cfg.execution, cfg.risk, clock, journal, PIPELINE, RUN_ID,
                routes=cfg.routes)
    desk.recover()
    if desk.portfolio.rows["qty"].any():
        raise UserError(f"the journal {journal_path} holds positions of an earlier run; give a new file")
    ec = cfg.execution
    for i, r in enumerate(cfg.routes):
        krw, usdt = sorted(r.legs, key=lambda k: symbol_parts(k)[1] != "KRW")
        if symbol_parts(krw)[1] != "KRW" or symbol_parts(usdt)[1] == "KRW":
            raise UserError(f"routes[{i}]: the arbitrage backtest prices a KRW leg against another "
                            f"currency, got {r.legs}")
        missing = [k for k in (krw, usdt) if k not in symbols]
        if missing:
            raise UserError(f"routes[{i}]: no --data file for {', '.join(missing)} (the files give {symbols})")
    rules_of = {sid: _rules(symbols[sid], int(ts_all[0]), ec.venue_rules)
                for r in cfg.routes for sid in (symbols.index(k) for k in r.legs)}
    # the live adapter on the simulated clock: bar closes are simultaneous by construction
    # (no skew allowed) and as old as the clock says (no book age); the FX file's own age
    fx_age = min((f.stale_after_s for f in ec.fx), default=math.inf)
    strat = ArbStrategy(symbols, cfg, clock, rules=rules_of, route_params={
        "max_fx_age_ns": int(fx_age * 1e9) if math.isfinite(fx_age) else 2**62,
        "max_skew_ns": 0, "max_book_age_ns": None})
    coins, cash = strat.funding
    legs = _Legs(strat)

    h = half_spread_bps / 1e4
    last = np.full(len(symbols), np.nan)
    book_rows = np.zeros(len(symbols), BOOK)
    book_rows["symbol_id"] = np.arange(len(symbols))
    book_seqs = np.zeros(len(symbols), np.uint64)
    rows_eq, rows_hold, rows_prem, selection = [], [], [], []
    path_coins: dict[str, list[float]] = {f"{v}/{a}": [] for v, a in coins}
    cursor = [0] * len(closes)
    hour = int(ts_all[0]) // HOUR_NS
    for t in ts_all.tolist():
        clock.set(t)
        if t // HOUR_NS != hour:            # Upbit's tick tables are dated: the rules of the hour
            hour = t // HOUR_NS
            changed = {k: new for k, new in ((k, _rules(symbols[k], t, ec.venue_rules)) for k in rules_of)
                       if new != rules_of[k]}
            if changed:
                rules_of.update(changed)
                strat.set_rules("upbit", changed)
        rec = []
        for k, c in enumerate(closes):
            j = cursor[k]
            if j < len(c.ts_ns) and c.ts_ns[j] == t:
                cursor[k] = j + 1
                px, vol = float(c.close[j]), float(c.volume[j])
                last[k] = px
                top = _book(px, h, vol, rules_of.get(k), t)
                _write_book(book_rows[k], top)
                book_seqs[k] += 1
                rec.append((k, px, vol, top))
        ticks = np.zeros(len(rec), TICK)
        for i, (k, px, vol, top) in enumerate(rec):
            ticks[i]["symbol_id"], ticks[i]["kind"], ticks[i]["price"], ticks[i]["size"] = k, TICK_TRADE, px, vol
            ticks[i]["bid"], ticks[i]["ask"] = top.bid_px[0], top.ask_px[0]
            ticks[i]["ts_origin_ns"] = ticks[i]["ts_exchange_ns"] = t
        # as the live processes do it: execution's reports due, then the strategy's turn
        desk.on_ticks(ticks)
        legs.back(desk.housekeeping())
        strat.on_ticks(ticks)
        strat.expire(t)
        intents = strat.on_books(book_rows[strat.sids], book_seqs[strat.sids])
        selection += [{"ts_ns": t, "route": e["route"], "state": e["state"], "reason": e["reason"]}
                      for _, _, e in strat.selection_changes()]
        if len(intents):
            legs.sent(intents, t)
            out = desk.on_intents(intents)
            legs.back(out.extend(desk.poll()))
        rows_eq.append(desk.equity())
        rows_hold.append(_value(coins, cash, symbols, last, desk.fx.factor))
        rows_prem.append([r.trader.last_mid_bps if r.trader is not None else math.nan for r in strat.routes])
        for (v, a) in coins:
            path_coins[f"{v}/{a}"].append(strat.inventory.coins.get((v, a), 0.0))
    rows = desk.portfolio.rows
    counts = {"period": [_iso(ts_all[0]), _iso(ts_all[-1])],
              "bad_rows": {c.symbol: c.dropped for c in closes if c.dropped},
              "routes": {_route_name(strat, r): dict(r.trader.counters) if r.trader is not None
                         else {"problem": r.problem} for r in strat.routes},
              "denials": {k: v for k, v in desk.guard.denials().items() if v},
              "hedges": dict(desk.hedges.counters) if desk.hedges else {},
              "fees_account": in_account(rows["fees"], desk.fx.factor),
              "half_spread_bps": half_spread_bps}
    if strat.selector is not None:
        counts["selection"] = selection
    journal.close()
    return ArbResult(symbols, desk.fx.currency, float(ec.capital), ts_all, np.array(rows_eq),
                     np.array(rows_hold), np.array(rows_prem), {k: np.array(v) for k, v in path_coins.items()},
                     legs.pairs, counts)


class _Legs:
    """The desk's ORDER and FILL records back to the route trader (ArbStrategy.on_orders,
    on_fills, as the live strategy process reads them off the rings), and each pair's
    fills summed for the result: how many legs filled and the premium captured."""

    def __init__(self, strat: ArbStrategy):
        self.strat = strat
        self.pairs: list[dict] = []
        self._pair_of: dict[int, dict] = {}             # leg seq -> its pair
        self._seq_of: dict[int, int] = {}               # order id -> leg seq (ours)
        self._got: dict[int, list] = {}                 # leg seq -> [qty, USDT notional, side]

    def sent(self, intents: np.ndarray, t: int) -> None:
        """The pairs of one ``on_books``: two rows each, sell leg first."""
        for k in range(0, len(intents), 2):
            seqs = [int(x) for x in intents["seq"][k:k + 2]]
            ri = self.strat.sent[seqs[0]][0]
            pair = {"ts_ns": t, "route": ri, "direction": "sell " + self.strat.symbols[int(intents["symbol_id"][k])],
                    "legs": seqs, "filled": 0, "captured_bps": math.nan,
                    "edges_bps": [round(x, 3) for x in self.strat.routes[ri].trader.last_edges]}
            self.pairs.append(pair)
            for seq in seqs:
                self._pair_of[seq] = pair

    def back(self, out) -> None:
        if out.orders:
            orders = np.array(out.orders, ORDER)
            self.strat.on_orders(orders)
            for oid, seq in zip(orders["order_id"].tolist(), orders["intent_seq"].tolist()):
                if seq in self._pair_of:
                    self._seq_of[oid] = seq
        if not out.fills:
            return
        fills = np.array(out.fills, FILL)
        self.strat.on_fills(fills)
        krw, _ = self.strat.krw_per_usdt(self.strat.clock.time_ns())
        for f in fills:
            seq = self._seq_of.get(int(f["order_id"]))
            if seq is None:
                continue
            quote = symbol_parts(self.strat.symbols[int(f["symbol_id"])])[1]
            usdt = float(f["price"]) / (krw if quote == "KRW" and krw else 1.0)
            got = self._got.setdefault(seq, [0.0, 0.0, int(f["side"])])
            got[0] += float(f["qty"])
            got[1] += float(f["qty"]) * usdt
            pair = self._pair_of[seq]
            done = [self._got[s] for s in pair["legs"] if s in self._got]
            pair["filled"] = len(done)
            if len(done) == 2:
                sell = next(n / q for q, n, side in done if side < 0)
                buy = next(n / q for q, n, side in done if side > 0)
                pair["captured_bps"] = round((sell / buy - 1) * 1e4, 3)


def _route_name(strat: ArbStrategy, r) -> str:
    """"BTC upbit/binance": a route's asset and its Korean and other venue."""
    asset, _, kv = symbol_parts(strat.symbols[r.krw])
    return f"{asset} {kv}/{symbol_parts(strat.symbols[r.usdt])[2]}"


def _write_book(row, book: Book) -> None:
    """A Book as the ``books`` table's BOOK row holds it."""
    nb, na = len(book.bid_px), len(book.ask_px)
    row["n_bids"], row["n_asks"] = nb, na
    row["bid_px"][:nb], row["bid_sz"][:nb] = book.bid_px, book.bid_sz
    row["ask_px"][:na], row["ask_sz"][:na] = book.ask_px, book.ask_sz
    row["ts_origin_ns"] = row["ts_exchange_ns"] = book.ts_ns


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(int(ns) / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


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
