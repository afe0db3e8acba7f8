"""What the CLI prints for people: the tap's text lines say times in ISO 8601 and codes
as words (``--json`` keeps the raw records), counts agree in number."""
from __future__ import annotations

from pipeline.cli import _count, format_record
from shm.records import ORDER_CANCEL, ORDER_MARKET, REASON_ENTRY, REASON_EXIT, SIDE_SELL, TICK_QUOTE, TIF_IOC


def test_tap_lines_speak_words_and_times():
    tick = {"symbol": "BTC/USDT@binance", "ts_origin_ns": 1_700_000_000_123_456_789, "kind": TICK_QUOTE,
            "side": 0, "price": 100.5, "seq": 42}
    line = format_record("ticks", tick)
    assert line.startswith("ticks    BTC/USDT@binance")
    assert "ts_origin_ns=2023-11-14T22:13:20.123456Z" in line and "kind=quote" in line and "side=-" in line
    assert "seq=42" in line and "price=100.5" in line
    intent = {"symbol": "ETH/USDT@x", "side": SIDE_SELL, "order_type": ORDER_MARKET, "tif": TIF_IOC,
              "reason": REASON_ENTRY, "ts_ns": 1_700_000_000_000_000_000, "qty": 0.5}
    line = format_record("intents", intent)
    for word in ("side=sell", "order_type=market", "tif=ioc", "reason=entry", "ts_ns=2023-11-14T22:13:20."):
        assert word in line
    cancel = {"symbol": "ETH/USDT@x", "side": SIDE_SELL, "order_type": ORDER_CANCEL, "tif": 0,
              "reason": REASON_EXIT, "expire_ns": 0}
    line = format_record("intents", cancel)
    assert "order_type=cancel" in line and "tif=-" in line and "expire_ns=0" in line
    # a risk event's reason is text already, and its kind a word
    ev = {"kind": "denial", "code": "HALTED", "reason": "halted by hand", "ts_ns": 1_700_000_000_000_000_000}
    assert "kind=denial" in format_record("risk", ev)


def test_counts_agree_in_number():
    assert [_count(1, "feed"), _count(2, "feed"), _count(0, "model worker")] == \
        ["1 feed", "2 feeds", "0 model workers"]
