"""The replay feed on real candles and trades from tests/data: the ticks
it makes (checked against the file read here with the csv module, not with
our reader), pacing by market time, bad rows skipped and counted, and a
replay through a running pipeline into the recorder's Parquet files.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, FeedConfig, load_config
from shm.records import SIDE_BUY, SIDE_SELL, TICK_GAP, TICK_TRADE
from conftest import data_file
from test_storage import Run
from workers.feed import MAX_BATCH, ReplaySource, replay_ticks

CANDLES = data_file("candles/binanceus_BTC-USDT_1m.csv")
TRADES = data_file("trades/binance_BTC-USDT_trades_2021-01-08.csv")
MS_NS = 1_000_000


def write_slice(src: Path, dst: Path, first: int, n: int, edits: dict | None = None) -> list[list[str]]:
    """Copy rows [first, first + n) of a CSV, with ``edits`` {row: {column: text}};
    returns the rows written (texts)."""
    with open(src, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [r for i, r in enumerate(reader) if first <= i < first + n]
    for i, change in (edits or {}).items():
        for col, text in change.items():
            rows[i][header.index(col)] = text
    with open(dst, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    return rows


def feed(path: Path, speed: float = 0.0) -> FeedConfig:
    return FeedConfig(name="replay", kind="replay", symbols=["BTC/USDT"], path=str(path),
                      speed=speed)


def play_all(src: ReplaySource) -> np.ndarray:
    out = []
    while (b := src.step()) is not None:
        out.append(b)
    assert src.done
    return np.concatenate(out)


def expected_candle_ticks(rows: list[list[str]]) -> dict[str, list]:
    """The documented rule, from the CSV texts: 4 trades per traded candle."""
    ts, price, size = [], [], []
    for t, o, h, l, c, v in ([int(r[0])] + [float(x) for x in r[1:]] for r in rows):
        if v == 0:
            continue
        path = [o, l, h, c] if c >= o else [o, h, l, c]
        ts += [t * MS_NS + k * 15_000 * MS_NS for k in range(4)]    # 1m bars: quarters of 60 s
        price += path
        size += [v / 4] * 4
    return {"ts": ts, "price": price, "size": size}


def test_candles_become_four_trades_each(tmp_path):
    path = tmp_path / "slice.csv"
    rows = write_slice(CANDLES, path, 2700, 300)   # holds minutes with no trades (volume 0)
    want = expected_candle_ticks(rows)
    assert len(want["ts"]) < 4 * 300
    ticks, rejected, _ = replay_ticks(str(path), 5)
    assert rejected == {}
    assert ticks["ts_exchange_ns"].tolist() == want["ts"]
    assert ticks["price"].tolist() == want["price"]
    assert ticks["size"].tolist() == want["size"]
    assert (ticks["symbol_id"] == 5).all() and (ticks["kind"] == TICK_TRADE).all()
    assert ticks["seq"].tolist() == list(range(1, len(ticks) + 1))
    up = np.diff(ticks["price"], prepend=ticks["price"][0]) >= 0
    assert (ticks["side"] == np.where(up, SIDE_BUY, SIDE_SELL)).all()

    src = ReplaySource(feed(path), 5, 0, None)
    t0 = time.time_ns()
    played = play_all(src)
    assert len(played) == len(ticks) and (played["ts_origin_ns"] >= t0).all()
    assert (played[["ts_exchange_ns", "seq", "price", "size", "side"]]
            == ticks[["ts_exchange_ns", "seq", "price", "size", "side"]]).all()
    # a restarted feed resumes after the ticks its ring already holds
    again = play_all(ReplaySource(feed(path), 5, 100, None))
    assert again["seq"].tolist() == list(range(101, len(ticks) + 1))


def test_parquet_plays_like_csv(tmp_path):
    path = tmp_path / "slice.csv"
    write_slice(CANDLES, path, 0, 500)
    pq.write_table(pcsv.read_csv(path), tmp_path / "slice.parquet")
    a, _, _ = replay_ticks(str(path), 0)
    b, _, _ = replay_ticks(str(tmp_path / "slice.parquet"), 0)
    assert len(a) == 2000 and a.tobytes() == b.tobytes()      # bid and ask are NaN: compare bytes


def test_trades_keep_time_price_size_id_and_side():
    ticks, rejected, _ = replay_ticks(str(TRADES), 1)
    with open(TRADES, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rejected == {} and len(ticks) == len(rows) == 2001
    assert ticks["ts_exchange_ns"].tolist() == [int(r["timestamp_ms"]) * MS_NS for r in rows]
    assert ticks["price"].tolist() == [float(r["price"]) for r in rows]
    assert ticks["size"].tolist() == [float(r["quantity"]) for r in rows]
    assert ticks["seq"].tolist() == [int(r["trade_id"]) for r in rows]
    # buyer is maker: the taker sold
    assert ticks["side"].tolist() == [SIDE_SELL if r["buyer_maker"] == "True" else SIDE_BUY
                                      for r in rows]


def test_speed_paces_by_market_time(tmp_path):
    """Speed 600 on 1m candles: a candle (4 ticks) per 0.1 s. No tick leaves
    before its market time is due, and after each step none that is due is left."""
    path = tmp_path / "slice.csv"
    write_slice(CANDLES, path, 0, 200)
    speed = 600.0
    src = ReplaySource(feed(path, speed), 0, 0, None)
    x0 = int(src.ts[0])
    emitted = 0
    while time.monotonic() - src.t0 < 1.5:
        before = time.monotonic()
        batch = src.step()
        after = time.monotonic()
        if batch is not None:
            emitted += len(batch)
            assert batch["ts_exchange_ns"][-1] <= x0 + (after - src.t0) * speed * 1e9   # not early
        assert src.ts[src.pos] > x0 + (before - src.t0) * speed * 1e9              # not behind
        src.wait(0.05)
    elapsed = time.monotonic() - src.t0
    assert 0 < emitted <= 4 * (elapsed * speed / 60 + 1)
    assert not src.done


def test_bad_rows_are_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.csv"
    rows = write_slice(CANDLES, path, 0, 200, {
        10: {"open": "nan"}, 20: {"close": "-5"}, 30: {"volume": "-1"}, 40: {"high": "1.0"},
        50: {"timestamp_ms": "1677631500000"},    # row 45's time again: the first one is kept
        60: {"low": ""}})
    assert rows[45][0] == rows[50][0]
    src = ReplaySource(feed(path), 0, 0, None)
    assert src.stats()["rejected_rows"] == {"nan": 2, "non-positive": 2, "inconsistent ohlc": 1,
                                            "conflicting duplicate": 1}
    assert src.stats()["bad_rows"] == 6
    played = play_all(src)
    good = [r for i, r in enumerate(rows) if i not in (10, 20, 30, 40, 50, 60)]
    ticks = played[played["kind"] == TICK_TRADE]
    assert ticks["ts_exchange_ns"].tolist() == expected_candle_ticks(good)["ts"]
    # each skipped candle is a hole: a gap marker goes just before the next candle's ticks
    marks = np.flatnonzero(played["kind"] == TICK_GAP)
    assert played["ts_exchange_ns"][marks].tolist() == [int(rows[i + 1][0]) * 1_000_000 - 1   # the hole's end
                                                        for i in (10, 20, 30, 40, 50, 60)]
    assert (played["kind"][marks + 1] == TICK_TRADE).all()
    assert (played["ts_exchange_ns"][marks + 1] == played["ts_exchange_ns"][marks] + 1).all()
    assert np.isfinite(ticks["price"]).all() and (ticks["price"] > 0).all()
    assert (ticks["size"] > 0).all() and (np.diff(ticks["ts_exchange_ns"]) > 0).all()

    trades = tmp_path / "bad_trades.csv"
    rows = write_slice(TRADES, trades, 0, 100, {5: {"price": "NaN"}, 6: {"quantity": "0"},
                                                7: {"price": "-39000"},
                                                8: {"timestamp_ms": "1610064000000"}})
    ticks, rejected, _ = replay_ticks(str(trades), 0)
    assert rejected == {"nan": 1, "non-positive": 2}      # row 8 is the earliest: sorted first
    assert ticks["seq"].tolist() == [int(rows[8][1])] + [
        int(r[1]) for i, r in enumerate(rows) if i not in (5, 6, 7, 8)]


def test_shuffled_rows_play_in_time_order(tmp_path):
    """A shuffled file with repeated rows plays like the file in order: rows sorted,
    copies dropped and counted."""
    for src, n in ((CANDLES, 120), (TRADES, 300)):
        path = tmp_path / "in_order.csv"
        rows = write_slice(src, path, 0, n)
        want, none, _ = replay_ticks(str(path), 0)
        assert none == {}
        mixed = [rows[i] for i in np.random.default_rng(3).permutation(n)] + rows[10:13]
        shuffled = tmp_path / "shuffled.csv"
        with open(path) as f:
            header = next(csv.reader(f))
        with open(shuffled, "w", newline="") as f:
            csv.writer(f).writerows([header] + mixed)
        got, rejected, _ = replay_ticks(str(shuffled), 0)
        assert rejected == {"duplicate": 3}, src
        for name in ("ts_exchange_ns", "seq", "price", "size", "side"):
            assert got[name].tolist() == want[name].tolist(), (src, name)


@pytest.mark.parametrize("extra, message", [
    ('symbols = ["BTC/USDT", "ETH/USDT"]\npath = "{candles}"', "a replay feed plays one symbol"),
    ('symbols = ["BTC/USDT"]', "path is needed for a replay feed"),
    ('symbols = ["BTC/USDT"]\npath = "/nonexistent.csv"', "path '/nonexistent.csv' does not exist"),
    ('symbols = ["BTC/USDT"]\npath = "{funding}"', "are neither candles"),
    ('symbols = ["BTC/USDT"]\npath = "{candles}"\nspeed = -1', "speed must be >= 0"),
])
def test_replay_config_mistakes(tmp_path, extra, message):
    funding = data_file("candles/binance-usdm_BTC-USDT-PERP_funding_rate.csv")
    conf = tmp_path / "r.toml"
    conf.write_text('[[feeds]]\nname = "r"\nkind = "replay"\n'
                    + extra.format(candles=CANDLES, funding=funding) + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(conf)
    assert message in str(e.value) and str(e.value).startswith(f"{conf}: feeds[0]")


def test_replay_through_the_pipeline_into_the_recorder(tmp_path):
    """A candle slice replayed (as fast as possible) next to a synthetic feed; the
    recorder's files hold the replayed ticks exactly, under the replay's venue."""
    path = tmp_path / "slice.csv"
    write_slice(CANDLES, path, 1000, 600)          # 2023-03-01 16:40 .. 2023-03-02 02:39
    want, _, _ = replay_ticks(str(path), 0)
    run = Run(tmp_path, max_ticks=500, extra=f"""
[[feeds]]
name = "replay"
kind = "replay"
venue = "binanceus"
symbols = ["BTC/USDT"]
path = "{path}"
""")
    try:
        run.wait_status(lambda w: w["feed.0"]["stats"].get("emitted") == 500
                        and w["feed.1"]["stats"].get("replay_done")
                        and w["feed.1"]["stats"].get("emitted") == len(want),
                        "both feeds done")
        rep = json.loads(run.cli("report", "--json").stdout)
        ring = next(r for r in rep["rings"] if r["name"] == "ticks.replay")
        assert ring["write_seq"] == len(want) and all(r["dropped"] == 0 for r in ring["readers"])
        assert run.cli("stop").returncode == 0
        assert run.proc.wait(90) == 0
    finally:
        run.kill()
    ds = pds.dataset(tmp_path / "data" / "ticks", format="parquet", partitioning="hive")
    got = ds.to_table(filter=pds.field("venue") == "binanceus").sort_by("seq")
    assert set(got.column("symbol").to_pylist()) == {"BTC-USDT"}
    assert sorted(set(got.column("date").to_pylist())) == ["2023-03-01", "2023-03-02"]
    for name in ("ts_exchange_ns", "seq", "price", "size", "side", "kind"):
        assert got.column(name).to_numpy().tolist() == want[name].tolist(), name
    assert ds.to_table(filter=pds.field("venue") == "synthetic").num_rows == 500
