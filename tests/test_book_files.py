"""Recorded order books for backtests (pipeline/book_files.py) on real files: a Bybit
order-book archive (a snapshot, then numbered deltas) rebuilt message by message, ccxt
snapshots whose recorder wrote local time, and what cannot be read refused by line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.book_files import read_books
from shm.records import BOOK_LEVELS

from conftest import data_file

BYBIT = data_file("orderbook/bybit_XRPUSDT_ob500_2024-12-01.jsonl")
UPBIT = data_file("orderbook/upbit_BTC-KRW_top20_snapshots_2025-08-23T2103Z.jsonl")


def replay(lines: list[dict]) -> list[tuple[list, list]]:
    """The 10 best levels a side after each message, rebuilt here with plain dicts."""
    bids, asks, out = {}, {}, []
    for msg in lines:
        if msg["type"] == "snapshot":
            bids, asks = {}, {}
        for side, key in ((bids, "b"), (asks, "a")):
            for p, q in msg["data"][key]:
                if float(q) == 0:
                    side.pop(float(p), None)
                else:
                    side[float(p)] = float(q)
        out.append((sorted(bids.items(), reverse=True)[:BOOK_LEVELS], sorted(asks.items())[:BOOK_LEVELS]))
    return out


def test_a_bybit_archive_is_rebuilt_delta_by_delta():
    books, stats = read_books(BYBIT, 3)
    lines = [json.loads(x) for x in BYBIT.read_text().splitlines()]
    assert stats == {"books": 50, "bad_rows": 0, "crossed": 0, "layout": "bybit"}
    assert (books["symbol_id"] == 3).all() and (np.diff(books["ts_exchange_ns"]) > 0).all()
    assert books["ts_exchange_ns"][0] == 1733011200691 * 1_000_000
    assert (books["bid_px"][0][0], books["bid_sz"][0][0], books["ask_px"][0][0]) == (1.9531, 6203.0, 1.9532)
    for row, (bids, asks) in zip(books, replay(lines)):
        assert list(zip(row["bid_px"], row["bid_sz"])) == bids
        assert list(zip(row["ask_px"], row["ask_sz"])) == asks


def test_a_missing_delta_is_refused_at_its_line(tmp_path):
    lines = BYBIT.read_text().splitlines()
    gap = tmp_path / "bybit_XRP-USDT_book.jsonl"
    gap.write_text("\n".join(lines[:10] + lines[11:]) + "\n")
    with pytest.raises(ValueError, match=r"line 11: expected update 20254879, got 20254880"):
        read_books(gap, 0)


def test_ccxt_snapshots_need_a_zone_and_bad_ones_are_counted(tmp_path):
    with pytest.raises(ValueError, match="line 1: timestamp '2025-08-24T06:03:18.382000' has no zone"):
        read_books(UPBIT, 0)
    lines = [json.loads(x) for x in UPBIT.read_text().splitlines()]
    for msg in lines:
        msg["timestamp"] += "+09:00"                 # the recorder's Korean time, said
    lines[2]["bids"][0][0] = float("nan")            # a bad level: that snapshot is skipped
    lines[3]["asks"][0][0] = lines[3]["bids"][0][0]  # crossed: skipped too
    fixed = tmp_path / "upbit_BTC-KRW_book.jsonl"
    fixed.write_text("\n".join(json.dumps(m) for m in lines) + "\n")
    books, stats = read_books(fixed, 1)
    assert stats["books"] == 6 and stats["bad_rows"] == 1 and stats["crossed"] == 1
    assert books["ts_exchange_ns"][0] == 1755982998382000000        # 2025-08-23T21:03:18.382Z
    assert books["bid_px"][0][0] == lines[0]["bids"][0][0] and books["ask_px"][0][0] == lines[0]["asks"][0][0]
    assert (books["n_bids"] == BOOK_LEVELS).all()


def test_time_going_backwards_is_refused(tmp_path):
    f = tmp_path / "binance_BTC-USDT_book.jsonl"
    f.write_text('{"timestamp": 2000, "bids": [[1, 1]], "asks": [[2, 1]]}\n'
                 '{"timestamp": 1000, "bids": [[1, 1]], "asks": [[2, 1]]}\n')
    with pytest.raises(ValueError, match="line 2: time goes backwards"):
        read_books(f, 0)
