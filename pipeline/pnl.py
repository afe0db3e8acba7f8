"""`pipeline pnl` and `pipeline journal`: what the journal says, running or not.

P&L is recomputed from the journal's fills alone, with the same position
arithmetic execution uses (workers/execution/portfolio.py), and checked
against the positions execution journaled after each fill: the two must agree,
or something wrote positions that no fill explains (or lost a fill). Open
positions are marked at the newest price the journal knows for the symbol (its
last fill), which `mark` says. Money is summed per currency (a symbol's quote
currency): KRW and USDT are never added into one figure here, since the journal holds
no rates; execution's equity converts them into the account's currency.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from shm.records import FILL
from pipeline.config import symbol_parts
from workers.execution.portfolio import Portfolio, balances

from . import journal

TOLERANCE = 1e-9     # relative: what float arithmetic may differ by between two sums


def pnl_report(path: str | Path) -> dict:
    """Per symbol: quantity, average price, realised P&L, fees, fills, mark and
    unrealised P&L; totals per venue and currency and per currency; and ``mismatches``, where the
    journaled positions disagree with the fills."""
    keys: list[str] = []
    index: dict[str, int] = {}
    fills: list[tuple[int, dict]] = []
    journaled: dict[str, dict] = {}
    for row in journal.rows(path, kinds=("fill", "position")):
        key = row["symbol"]
        if key not in index:
            index[key] = len(keys)
            keys.append(key)
        if row["kind"] == "fill":
            fills.append((index[key], row["payload"]))
        else:
            journaled[key] = row["payload"]
    book = Portfolio.empty(len(keys))
    marks = np.full(len(keys), np.nan)
    for sid, payload in fills:
        rec = np.zeros(1, FILL)
        for name in FILL.names:
            if name in payload:
                rec[name] = payload[name]
        rec["symbol_id"] = sid
        book.apply(rec[0])
        marks[sid] = rec["price"][0]
    symbols, venues, mismatches = [], {}, []
    for key, sid in index.items():
        row = book.rows[sid]
        qty, avg = float(row["qty"]), float(row["avg_price"])
        unrealised = qty * (marks[sid] - avg) if qty else 0.0
        _, currency, venue = symbol_parts(key)
        entry = {"symbol": key, "currency": currency or "?", "qty": qty, "avg_price": avg, "realized_pnl": float(row["realized_pnl"]),
                 "unrealized_pnl": float(unrealised), "fees": float(row["fees"]),
                 "fills": int(row["n_fills"]), "mark": float(marks[sid])}
        symbols.append(entry)
        v = venues.setdefault(venue or "?", {}).setdefault(
            entry["currency"], {"realized_pnl": 0.0, "unrealized_pnl": 0.0, "fees": 0.0})
        for k in v:
            v[k] += entry[k]
        last = journaled.get(key)
        if last is not None:
            for name in ("qty", "realized_pnl", "fees"):
                want, got = float(last[name]), entry[name]
                if abs(want - got) > TOLERANCE * max(1.0, abs(want), abs(got)):
                    mismatches.append({"symbol": key, "field": name, "journaled": want,
                                       "from_fills": got})
    totals = {c: {k: sum(s[k] for s in symbols if s["currency"] == c)
                  for k in ("realized_pnl", "unrealized_pnl", "fees")}
              for c in sorted({s["currency"] for s in symbols})}
    return {"journal": str(path), "symbols": symbols, "venues": venues, "totals": totals,
            "balances": balances(keys, book.rows), "fills": len(fills), "mismatches": mismatches}


def format_pnl(rep: dict) -> str:
    lines = [f"journal {rep['journal']}: {rep['fills']} fills"]
    if rep["symbols"]:
        lines.append(f"{'symbol':<24}{'qty':>14}{'avg price':>14}{'mark':>14}{'realized':>12}"
                     f"{'unrealized':>12}{'fees':>10}")
        for s in rep["symbols"]:
            lines.append(f"{s['symbol']:<24}{s['qty']:>14.8g}{s['avg_price']:>14.8g}{s['mark']:>14.8g}"
                         f"{s['realized_pnl']:>12.2f}{s['unrealized_pnl']:>12.2f}{s['fees']:>10.2f}")
    for venue, by_currency in rep["venues"].items():
        for c, v in by_currency.items():
            lines.append(f"venue {venue} ({c}): realized {v['realized_pnl']:.2f}, unrealized "
                         f"{v['unrealized_pnl']:.2f}, fees {v['fees']:.2f}")
    for venue, assets in rep.get("balances", {}).items():
        moved = ", ".join(f"{a} {x:+.8g}" for a, x in sorted(assets.items()))
        lines.append(f"balances on {venue} (moved by the fills): {moved}")
    for c, t in rep["totals"].items():
        lines.append(f"total in {c}: realized {t['realized_pnl']:.2f}, unrealized "
                     f"{t['unrealized_pnl']:.2f} (marked at the last fill), fees {t['fees']:.2f}")
    if rep["mismatches"]:
        lines.append("ALERT: the journaled positions disagree with the fills:")
        lines += [f"  {m['symbol']} {m['field']}: journaled {m['journaled']:.10g}, "
                  f"from fills {m['from_fills']:.10g}" for m in rep["mismatches"]]
    else:
        lines.append("check: the fills add up to the positions journaled")
    return "\n".join(lines)


def format_row(row: dict) -> str:
    """One journal row as a line: id, UTC time, kind, symbol, client order id, payload."""
    when = dt.datetime.fromtimestamp(row["ts_ns"] / 1e9, dt.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S.%f")[:-3]
    extra = f" {row['client_order_id']}" if row.get("client_order_id") else ""
    payload = json.dumps(row["payload"], sort_keys=True, separators=(",", ":"))
    return f"{row['id']:>8} {when} {row['kind']:<8} {row['symbol'] or '-'}{extra} {payload}"

