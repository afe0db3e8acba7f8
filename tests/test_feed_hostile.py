"""A hostile venue: real Binance frames (tests/data/payloads/binance), mutated
the way a broken or malicious peer would send them. One bad message is counted
and dropped; it must never silence the symbol it names."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import FeedConfig
from shm.records import TICK_GAP, TICK_TRADE
from venue_servers import PAYLOADS
from workers.venues.base import MalformedMessage, TickBuffer, to_integer, to_number
from workers.venues.binance import BinanceFeed
from workers.venues.capture import recv_messages

BINANCE = PAYLOADS / "binance"
WS_CAPTURE = BINANCE / "ws" / "spot_depth100ms_bookTicker_kline1m_aggTrade_2021-10-12.capture.jsonl"
AGG_TRADES = BINANCE / "rest" / "aggTrades_XRPETH_2019-10-11_info_objects.json"
SYMBOLS = {"XRP/ETH": 1, "NKN/USDT": 2}
RECV_NS = 1_633_998_600_000_000_000

def agg_trades(n: int = 400) -> list[dict]:
    """Real XRPETH aggregate trades (REST rows carry the websocket event's fields), each in
    the combined-stream envelope of a real aggTrade frame from the websocket capture."""
    frames = [json.loads(m) for m in recv_messages(WS_CAPTURE)]
    env = next(f for f in frames if isinstance(f, dict) and f.get("stream", "").endswith("@aggTrade"))
    rows = json.loads(AGG_TRADES.read_text())[:n]
    return [{"stream": "xrpeth@aggTrade",
             "data": {"e": env["data"]["e"], "E": r["T"], "s": "XRPETH", **r}} for r in rows]


def run(frames: list) -> tuple[np.ndarray, dict, list[str]]:
    """Every frame through the real parser: (ticks, buffer rejections and duplicates,
    malformed kinds)."""
    feed = BinanceFeed(FeedConfig(name="binance", kind="binance", symbols=list(SYMBOLS),
                                  channels=["trades"]), SYMBOLS)
    out, malformed = TickBuffer(), []
    for f in frames:
        raw = f if isinstance(f, (str, bytes)) else json.dumps(f)
        try:
            feed.parse(raw, RECV_NS, out)
        except MalformedMessage as e:
            malformed.append(e.kind)
    rejected = dict(out.rejected)
    if feed.health.duplicates:
        rejected["duplicate"] = feed.health.duplicates
    return out.take(), rejected, malformed


def mutated(frames: list[dict], index: int, raw_value: str, key: str) -> list:
    """The frames with ``data[key]`` of frame ``index`` replaced by a raw JSON text (so a
    number such as 1.2e29 stays a JSON number, as a peer would send it)."""
    out: list = list(frames)
    f = json.loads(json.dumps(frames[index]))
    f["data"][key] = "__X__"
    out[index] = json.dumps(f).replace('"__X__"', raw_value)
    return out


@pytest.mark.parametrize("bad_id", [str(2 ** 64 + 1), "1.2e29", "-5", "true", "12.5"])
def test_a_bad_trade_id_does_not_silence_the_symbol(bad_id):
    frames = agg_trades()
    base, _, _ = run(frames)
    assert len(base) == len(frames) == 400
    idx = 2
    ticks, rejected, malformed = run(mutated(frames, idx, bad_id, "a"))
    gaps = ticks["kind"] == TICK_GAP
    ticks = ticks[~gaps]
    lost = len(base) - len(ticks)
    assert lost == 1, f"{lost} trades lost after one bad id {bad_id}"
    assert sum(rejected.values()) + len(malformed) == 1
    assert gaps.sum() <= 1                       # the lost trade's id is missed: a gap where it shows
    # every later trade of every symbol still came through, ids intact
    keep = np.ones(len(base), bool)
    keep[idx] = False
    assert np.array_equal(ticks["seq"], base["seq"][keep])


@pytest.mark.parametrize("key, value", [("p", "true"), ("q", "false"), ("p", "[1]"), ("T", "true"),
                                        ("p", '"abc"'), ("T", "1.2e29")])
def test_booleans_and_junk_are_not_numbers(key, value):
    frames = agg_trades()
    base, _, _ = run(frames)
    ticks, rejected, malformed = run(mutated(frames, 3, value, key))
    gaps = ticks["kind"] == TICK_GAP
    assert gaps.sum() == 1                       # the next trade of its symbol shows the id missed
    ticks = ticks[~gaps]
    assert len(ticks) == len(base) - 1
    assert malformed == ["bad number" if key in "pq" else "bad integer"] and not rejected
    assert not (ticks["price"] == 1.0).any() and (ticks["kind"] == TICK_TRADE).all()


def test_number_and_integer_conversions():
    assert to_number("0.35") == 0.35 and to_number(7) == 7.0
    for bad in (True, False, None, [1], {"a": 1}, "x"):
        with pytest.raises(MalformedMessage, match="bad number"):
            to_number(bad)
    assert to_integer(12) == 12 and to_integer("12") == 12 and to_integer(1.634e12) == 1_634_000_000_000
    for bad in (True, 1.2e29, 12.5, "12.5", None, [3], float("nan"), float("inf")):
        with pytest.raises(MalformedMessage, match="bad integer"):
            to_integer(bad)


def test_a_trade_id_missed_is_a_gap_before_the_next_trade():
    frames = agg_trades()
    base, _, _ = run(frames)
    ticks, rejected, malformed = run(frames[:5] + frames[6:])       # one aggregate trade never came
    assert not rejected and not malformed
    (at,) = np.flatnonzero(ticks["kind"] == TICK_GAP)
    assert at == 5 and ticks["kind"][at + 1] == TICK_TRADE and ticks["seq"][at + 1] == base["seq"][6]


# -- implausible times, prices and sizes ---------------------------------------------------------
YEAR_MS = 365 * 86400 * 1000


@pytest.mark.parametrize("key, value, why", [
    ("T", str(RECV_NS // 1_000_000 + YEAR_MS), "time ahead of receipt"),
    ("p", "1e300", "price out of band"), ("p", '"99999999"', "price out of band"),
    ("p", "1e-300", "price out of band"), ("q", "1e300", "bad size")])
def test_one_implausible_trade_is_rejected_and_the_rest_pass(key, value, why):
    frames = agg_trades()
    base, _, _ = run(frames)
    ticks, rejected, malformed = run(mutated(frames, 5, value, key))
    assert rejected == {why: 1} and not malformed
    gaps = ticks["kind"] == TICK_GAP
    assert gaps.sum() == 1                       # the trade refused is a trade missing: flagged
    ticks = ticks[~gaps]
    keep = np.ones(len(base), bool)
    keep[5] = False
    assert np.array_equal(ticks["seq"], base["seq"][keep]) and np.array_equal(ticks["price"], base["price"][keep])


def test_a_real_level_shift_is_taken_after_a_run_of_agreeing_prices():
    """Prices that jump x3 and stay there: the first REANCHOR - 1 are held back, then the
    new level is the reference (a feed never stays deaf to a market that really moved)."""
    from workers.venues.base import REANCHOR
    frames = agg_trades()
    shifted = json.loads(json.dumps(frames))
    for f in shifted[100:]:
        f["data"]["p"] = repr(float(f["data"]["p"]) * 3)
    ticks, rejected, _ = run(shifted)
    assert rejected == {"price out of band": REANCHOR - 1}
    gaps = ticks["kind"] == TICK_GAP
    assert 1 <= gaps.sum() <= 2                  # the trades held back are trades missing: flagged
    assert (~gaps).sum() == len(frames) - (REANCHOR - 1)


def test_a_quote_with_one_absurd_side_is_rejected():
    frames = [json.loads(m) for m in recv_messages(WS_CAPTURE)]
    quotes = [f for f in frames if isinstance(f, dict) and f.get("stream", "").endswith("@bookTicker")]
    assert len(quotes) > 20
    feed_cfg = FeedConfig(name="binance", kind="binance", symbols=["NKN/USDT", "BLZ/ETH", "LRC/BTC",
                                                                   "RUNE/EUR"], channels=["quotes"])
    ids = {s: i + 1 for i, s in enumerate(feed_cfg.symbols)}

    def parse(fs):
        feed, out = BinanceFeed(feed_cfg, ids), TickBuffer()
        for f in fs:
            feed.parse(json.dumps(f), RECV_NS, out)
        return out.take(), dict(out.rejected)

    base, rejected = parse(quotes)
    assert rejected == {} and len(base) == len(quotes)
    bad = json.loads(json.dumps(quotes))
    bad[10]["data"]["a"] = "1e300"
    ticks, rejected = parse(bad)
    assert rejected == {"quote out of band": 1} and len(ticks) == len(quotes) - 1
    assert np.nanmax(ticks["ask"]) < 1e6


def test_a_new_level_taken_after_prices_held_back_is_a_gap_on_every_venue():
    from workers.venues.base import REANCHOR, TickBuffer
    out = TickBuffer()
    out.trade(1, RECV_NS, RECV_NS, 1, 100.0, 1.0, 1)
    for k in range(REANCHOR):                           # the market moved x3: held back, then taken
        out.trade(1, RECV_NS, RECV_NS, 2 + k, 300.0, 1.0, 1)
    ticks = out.take()
    assert ticks["kind"].tolist() == [TICK_TRADE, TICK_GAP, TICK_TRADE]
    assert out.rejected == {"price out of band": REANCHOR - 1}
