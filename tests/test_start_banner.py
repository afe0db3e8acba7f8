"""`pipeline start` in the foreground (issue 12 item 6): the banner prints when
ticks flow and ``--duration`` counts from there, the warm-up note prints once,
a status line every few seconds unless ``--quiet``, and with no feed
delivering, a line that says so and a run that still ends.

Waits are on the process exiting (``--duration``), with generous timeouts; no
fixed sleep.
"""
from __future__ import annotations

import io
import random
import re
import socket
from types import SimpleNamespace

import pytest

from pipeline.config import Config, indicator_specs
from pipeline.supervisor import (FIRST_TICKS_WAIT_S, STATUS_INTERVAL_S, Console, LOOKBACK,
                                 warmup_bars, warmup_note)
from test_pipeline import Pipeline

STATUS = re.compile(r"^up [0-9.]+ s, \d+ ticks/s, signals \d+, intents \d+, fills \d+, "
                    r"realized P&L [+-][0-9.]+ \(fees [0-9.]+\), open positions \d+", re.M)


def summary_ticks(out: str) -> int:
    m = re.search(r"^ticks (\d+), bars", out, re.M)
    assert m, out
    return int(m.group(1))


# the CLI with the supervisor's FIRST_TICKS_WAIT_S and STATUS_INTERVAL_S set to argv[1] and
# argv[2] seconds first: the dead-feed test then waits a few seconds for the note, not the
# 30 s a user waits, and the status lines come every second or two, not every 5 s
SHORT_WAIT_CLI = ("import sys, pipeline.supervisor as s; s.FIRST_TICKS_WAIT_S = float(sys.argv.pop(1)); "
                  "s.STATUS_INTERVAL_S = float(sys.argv.pop(1)); from pipeline.cli import main; sys.exit(main())")
SHORT_INTERVAL_S = 1.5


def run(tmp_path, *extra, name="t", first_ticks_wait_s: float | None = None, interval_s: float | None = None,
        **sections) -> str:
    p = Pipeline(tmp_path, name=name, **sections)
    p.env["TICKPIPE_LOG_LEVEL"] = "INFO"        # the supervisor's "started feed.0" line
    if first_ticks_wait_s is not None or interval_s is not None:
        p.entry = ["-c", SHORT_WAIT_CLI, str(first_ticks_wait_s or FIRST_TICKS_WAIT_S),
                   str(interval_s or STATUS_INTERVAL_S)]
    p.start(*extra)
    try:
        assert p.wait_exit() == 0, p.output()
    finally:
        p.kill()
    return p.output()


def test_duration_counts_from_the_first_ticks_and_the_banner_follows_them(tmp_path):
    out = run(tmp_path, "--duration", "3")
    assert "Traceback" not in out
    assert "stopped: duration of 3 s reached" in out
    assert summary_ticks(out) > 0                   # --duration 5 used to give 0 ticks
    lines = out.splitlines()
    starting = next(i for i, x in enumerate(lines) if x.startswith("starting tickpipe 't' run "))
    feed = next(i for i, x in enumerate(lines) if "started feed.0 (pid" in x)
    banner = [i for i, x in enumerate(lines) if x.startswith("tickpipe 't' run ") and " started: " in x]
    assert len(banner) == 1 and starting < feed < banner[0], out
    assert "waiting for the first ticks" in lines[starting]
    # the momentum rule of the test config reads ema_2 and ema_4: 4 bars of 0.2 s
    warm = [x for x in lines if x.startswith("indicators warming up")]
    assert warm == ["indicators warming up: about 0.8 s (4 bars of 0.2 s) before the first "
                    "trading signal"], out
    assert lines.index(warm[0]) > banner[0]
    assert not STATUS.search(out)                   # 3 s: before the first status line


@pytest.mark.parametrize("quiet", [False, True])
def test_status_lines_unless_quiet(tmp_path, quiet):
    seconds = SHORT_INTERVAL_S * 2 + 1
    out = run(tmp_path, "--duration", f"{seconds:g}", *(["--quiet"] if quiet else []), interval_s=SHORT_INTERVAL_S)
    assert summary_ticks(out) > 0 and "Traceback" not in out
    status = STATUS.findall(out)
    banner = out.index(" started: ")
    if quiet:
        assert status == [] and "indicators warming up" not in out
    else:
        assert len(status) >= 1, out
        assert out.index(status[0]) > banner
        assert out.count("indicators warming up") == 1
        assert re.search(r"^up [0-9.]+ s, [1-9]\d* ticks/s", out, re.M), out
    assert "tickpipe 't' run " in out and "stopped: duration of" in out


def test_a_feed_that_delivers_nothing_is_named_and_duration_still_ends(tmp_path):
    with socket.socket() as s:                      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wait = 4.0                                      # FIRST_TICKS_WAIT_S (30 s) shortened
    assert wait < FIRST_TICKS_WAIT_S
    out = run(tmp_path, "--duration", "1", "--quiet", first_ticks_wait_s=wait,
              feeds={"kind": "binance", "name": "dead", "symbols": ["BTC/USDT"],
                     "ws_url": f"ws://127.0.0.1:{port}/ws", "rest_url": f"http://127.0.0.1:{port}"})
    assert "Traceback" not in out
    note = re.search(r"^no feed has delivered ticks (\d+) s after the feeds "
                     r"started: dead \((\w+)\); --duration counts from now$", out, re.M)
    assert note and note.group(2) != "running", out
    # said once the wait was over (rounded; a loaded machine polls a little late)
    assert wait <= int(note.group(1)) <= wait + 3, out
    assert out.index(note.group(0)) < out.index(" started: ")
    assert "stopped: duration of 1 s reached" in out and summary_ticks(out) == 0


# -- without processes ---------------------------------------------------------------------
def test_lookbacks_agree_with_the_engine():
    from models.ta import Engine
    rnd = random.Random(7)
    cfg = Config()
    cases = [indicator_specs(cfg.indicators)]
    for _ in range(20):
        cases.append([("ema", (rnd.randint(1, 60),)), ("sma", (rnd.randint(1, 60),)),
                      ("rsi", (rnd.randint(2, 60),)),
                      ("macd", (rnd.randint(2, 20), rnd.randint(21, 60), rnd.randint(1, 20))),
                      ("bbands", (rnd.randint(2, 60), 2.0)), ("atr", (rnd.randint(1, 60),)),
                      ("stoch", (rnd.randint(1, 30), rnd.randint(1, 10), rnd.randint(1, 10))),
                      ("obv", ()), ("vwap", (rnd.randint(1, 60),)),
                      ("volatility", (rnd.randint(2, 60),)), ("volume_z", (rnd.randint(2, 60),))])
    for specs in cases:
        engine = Engine(1, specs)
        for (kind, params), ind in zip(specs, engine.indicators):
            assert LOOKBACK[kind](params) == ind.lookback, (kind, params)


def test_warmup_of_the_default_ensemble_and_of_the_momentum_rule():
    cfg = Config()                                  # 1 s bars; MACD 12/26/9 is the longest
    assert cfg.model.kind == "ensemble" and warmup_bars(cfg) == 34
    assert warmup_note(cfg) == ("indicators warming up: about 34 s (34 bars of 1 s) before the "
                                "first trading signal")
    cfg.model.kind = "momentum"                     # only its two EMAs
    assert warmup_bars(cfg) == 26


class FakeSup:
    """What a Console reads of a supervisor."""

    def __init__(self):
        self.cfg = Config()
        self.launched = 0.0
        self.clock_start = self.first_ticks = None
        self.feeds_started = 0.0
        self.stats = {"feed": {"emitted": 0}, "model": {"signals": 0}, "strategy": {"intents": 0},
                      "execution": {"fills": 0, "realized_pnl": 0.0, "fees": 0.0,
                                    "open_positions": 0, "equity": 10000.0, "risk_states": []}}

    @property
    def workers(self):
        return {role: SimpleNamespace(spec=SimpleNamespace(role=role, id=f"{role}.0"),
                                      stats=lambda r=role: self.stats[r])
                for role in self.stats}

    def no_ticks_note(self, now):
        return "no feed has delivered ticks"


def test_console_status_line_and_quiet():
    for quiet in (False, True):
        sup, out = FakeSup(), io.StringIO()
        con = Console(sup, ["BANNER"], quiet=quiet, interval=5.0, out=out)
        con.update(1.0)
        assert out.getvalue() == ""                 # nothing before the ticks flow
        sup.clock_start = sup.first_ticks = 2.0
        con.on_flow("ticks", 2.0)
        sup.stats["feed"]["emitted"] = 5000
        sup.stats["model"]["signals"] = 12
        sup.stats["execution"].update(fills=3, realized_pnl=-1.5, fees=0.25, open_positions=2,
                                      risk_states=[{"tier": "global", "key": None, "state": "HALTED",
                                                    "manual": True}])
        con.update(4.0)                             # before the interval
        con.update(7.0)
        con.update(8.0)
        lines = out.getvalue().splitlines()
        if quiet:
            assert lines == ["BANNER"]
            continue
        assert lines == [
            "BANNER", warmup_note(sup.cfg),
            "up 5.0 s, 1000 ticks/s, signals 12, intents 0, fills 3, realized P&L -1.50 (fees 0.25), "
            "open positions 2, equity 10000.00, warming up, about 29 s left, "
            "risk: global HALTED (manual)"]


def test_console_when_no_ticks_come_then_they_do():
    sup, out = FakeSup(), io.StringIO()
    sup.stats["execution"]["equity"] = 0.0         # execution has not marked its account yet
    con = Console(sup, ["BANNER"], interval=5.0, out=out)
    sup.clock_start = 30.0
    con.on_flow("no ticks", 30.0)
    con.update(35.0)                               # 5 s after the clock started
    sup.first_ticks = 42.0
    con.on_flow("ticks", 42.0)
    assert out.getvalue().splitlines() == [
        "no feed has delivered ticks", "BANNER",
        "up 5.0 s, 0 ticks/s, signals 0, intents 0, fills 0, realized P&L +0.00 (fees 0.00), "
        "open positions 0, no ticks yet",
        "first ticks 42 s after the start", warmup_note(sup.cfg)]


def test_console_says_once_when_every_venue_feed_is_down_and_when_one_is_back():
    from pipeline.supervisor import FEEDS_DOWN_S
    sup, out = FakeSup(), io.StringIO()
    con = Console(sup, ["BANNER"], quiet=True, interval=5.0, out=out)   # a warning: even when quiet
    sup.clock_start = sup.first_ticks = 1.0
    con.on_flow("ticks", 1.0)
    sup.stats["feed"]["health"] = {"state": "disconnected", "last_error": "ConnectionRefusedError"}
    con.update(10.0)
    con.update(10.0 + FEEDS_DOWN_S - 1)
    assert out.getvalue().splitlines() == ["BANNER"]              # not yet
    con.update(10.0 + FEEDS_DOWN_S)
    con.update(10.0 + FEEDS_DOWN_S + 30)                           # said once
    sup.stats["feed"]["health"] = {"state": "connected"}
    con.update(10.0 + FEEDS_DOWN_S + 40)
    con.update(10.0 + FEEDS_DOWN_S + 50)
    lines = out.getvalue().splitlines()
    assert lines[1:] == [
        "no feed connected for 60 s: feed.0 disconnected (ConnectionRefusedError); their venues only "
        "reduce positions until one is back (check the network)",
        "feeds connected again after 100 s down"]
    sup.stats["feed"]["health"] = {"state": "running"}                # a synthetic feed: never down
    con.update(1000.0)
    con.update(2000.0)
    assert len(out.getvalue().splitlines()) == 3
