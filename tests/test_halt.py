"""`pipeline halt` / `pipeline resume`: the command as the CLI builds it, journaled when
nothing runs, checked and published by the supervisor to execution when the pipeline
runs; the worker hook that receives it; and the risk figures execution reports in its
heartbeats as `pipeline report`, Prometheus and the tap's "risk" stream show them.

Execution's side (applying the command, listing its id in ``risk_commands``) lives in
workers/execution; the round trip through it is tested when it handles commands.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest
import zmq

from conftest import FAST, RunSegments, fast_config, toml, write_config
from pipeline import bus, cli
from pipeline.config import BusConfig, load_config
from pipeline.journal import Journal, rows
from pipeline.metrics import LatencyHistogram, ReportCollector
from pipeline.supervisor import (WorkerState, check_risk_command, read_state, risk_summary,
                                 trade_latency)
from pipeline.tap import TapPublisher
from pipeline.topology import WorkerSpec
from workers.base import Worker

TIMEOUT = 90  # generous: a loaded 2-core machine spawning 6+ processes


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    monkeypatch.setenv("TICKPIPE_RUN_DIR", str(folder))
    return folder


def two_venues(tmp_path):
    """FAST with two synthetic feeds, venues "alpha" (BTC, ETH) and "beta" (BTC, SOL)."""
    feed = FAST["feeds"][0]
    path = tmp_path / "two.toml"
    body = {**FAST, "pipeline": {**FAST["pipeline"], "name": "two"},
            "feeds": [{**feed, "name": "a", "venue": "alpha", "symbols": ["BTC/USDT", "ETH/USDT"]},
                      {**feed, "name": "b", "venue": "beta", "symbols": ["BTC/USDT", "SOL/USDT"]}]}
    path.write_text(toml(body))
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- not running: journaled -----------------------------------------------------------
def test_halt_when_not_running_is_journaled(tmp_path, run_dir, journal_dir, capsys):
    cfg_path = write_config(tmp_path, "h")
    code, out, err = run_cli(capsys, "halt", "--config", cfg_path, "--symbol", "BTC/USDT",
                             "--reducing", "--reason", "fat finger")
    assert (code, err) == (0, "")
    assert out.strip() == "not running: the halt is journaled and applies when `pipeline start` runs"
    code, out, err = run_cli(capsys, "resume", "--config", cfg_path)
    assert (code, err) == (0, "") and "the resume is journaled" in out

    got = list(rows(journal_dir / "h.sqlite", kinds=["command"]))
    assert [r["kind"] for r in got] == ["command", "command"]
    first, second = got[0]["payload"], got[1]["payload"]
    assert len(first.pop("id")) == 32 and len(second.pop("id")) == 32
    assert first == {"cmd": "risk", "action": "halt", "tier": "symbol", "key": "BTC/USDT@synthetic",
                     "reducing": True, "reason": "fat finger"}
    assert second == {"cmd": "risk", "action": "resume", "tier": "global", "key": None,
                      "reducing": False, "reason": ""}
    # what execution reads at start
    with Journal(journal_dir / "h.sqlite") as j:
        assert [r["payload"]["action"] for r in j.replay(["command"])] == ["halt", "resume"]


def test_bare_symbol_of_one_venue_and_full_keys(tmp_path, run_dir, journal_dir, capsys):
    cfg_path = two_venues(tmp_path)
    assert run_cli(capsys, "halt", "--config", cfg_path, "--symbol", "SOL/USDT")[0] == 0
    assert run_cli(capsys, "halt", "--config", cfg_path, "--symbol", "BTC/USDT@beta")[0] == 0
    assert run_cli(capsys, "halt", "--config", cfg_path, "--venue", "alpha")[0] == 0
    keys = [(r["payload"]["tier"], r["payload"]["key"])
            for r in rows(journal_dir / "two.sqlite", kinds=["command"])]
    assert keys == [("symbol", "SOL/USDT@beta"), ("symbol", "BTC/USDT@beta"), ("venue", "alpha")]


@pytest.mark.parametrize("argv, words", [
    (["halt", "--venue", "nowhere"], "venue 'nowhere' is not traded by this pipeline"),
    (["resume", "--venue", "nowhere"], "venue 'nowhere' is not traded by this pipeline"),
    (["halt", "--symbol", "FOO/USDT"], "unknown symbol 'FOO/USDT'"),
    (["halt", "--symbol", "ETH/USDT@beta"], "unknown symbol 'ETH/USDT@beta'"),
    (["halt", "--symbol", "BTC/USDT"], "symbol 'BTC/USDT' is on several venues"),
    (["halt", "--venue", "alpha", "--symbol", "ETH/USDT"], "give --venue or --symbol, not both"),
    (["halt", "--reason", "x" * 600], "at most 500 characters"),
])
def test_a_bad_target_is_one_line_and_exit_2(tmp_path, run_dir, journal_dir, capsys, argv, words):
    code, out, err = run_cli(capsys, *argv, "--config", two_venues(tmp_path))
    assert code == 2 and out == ""
    assert err.startswith("pipeline: ") and words in err and len(err.strip().splitlines()) == 1
    assert not (journal_dir / "two.sqlite").exists()


def test_a_bad_action_is_exit_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["pause"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'pause'" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        cli.main(["resume", "--reducing"])        # reducing is a kind of halt
    assert e.value.code == 2


def test_a_journal_held_by_a_writer_says_so(tmp_path, run_dir, journal_dir, capsys):
    cfg_path = write_config(tmp_path, "h")
    with Journal(journal_dir / "h.sqlite"):       # what a running execution holds
        code, out, err = run_cli(capsys, "halt", "--config", cfg_path)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "already open by another writer" in err and "the halt was not journaled" in err
    assert list(rows(journal_dir / "h.sqlite", kinds=["command"])) == []


# -- the supervisor's check ------------------------------------------------------------
def test_the_supervisor_checks_a_risk_request(tmp_path):
    cfg = load_config(two_venues(tmp_path))
    good = {"cmd": "risk", "action": "halt", "tier": "global", "key": None, "reducing": False,
            "reason": "", "id": uuid.uuid4().hex}
    assert check_risk_command(cfg, good) is None
    assert check_risk_command(cfg, {**good, "tier": "venue", "key": "beta"}) is None
    assert check_risk_command(cfg, {**good, "tier": "symbol", "key": "SOL/USDT@beta",
                                    "reducing": True}) is None
    bad = {"action": ({"action": "pause"}, "unknown risk action 'pause'"),
           "tier": ({"tier": "route"}, "unknown risk tier 'route'"),
           "global key": ({"key": "alpha"}, "the global tier takes no key"),
           "venue": ({"tier": "venue", "key": "gamma"}, "venue 'gamma' is not traded"),
           "bare symbol": ({"tier": "symbol", "key": "SOL/USDT"}, "give the full key"),
           "reducing": ({"reducing": "yes"}, "'reducing' must be true or false"),
           "reducing resume": ({"action": "resume", "reducing": True}, "goes with halt only"),
           "reason": ({"reason": None}, "'reason' must be a string"),
           "id": ({"id": ""}, "'id' must be a non-empty string")}
    for what, (change, words) in bad.items():
        why = check_risk_command(cfg, {**good, **change})
        assert why is not None and words in why, what
    missing = dict(good)
    del missing["id"]
    assert "'id'" in check_risk_command(cfg, missing)


# -- the CLI's wait for execution ------------------------------------------------------
def status_with(*execution_stats) -> dict:
    workers = [{"id": "strategy.0", "role": "strategy", "stats": {"risk_commands": ["x"]}}]
    workers += [{"id": f"execution.{i}", "role": "execution", "stats": st}
                for i, st in enumerate(execution_stats)]
    return {"workers": workers}


HALTED = {"tier": "global", "key": None, "code": "HALTED", "state": "HALTED", "reason": "fat finger",
          "manual": True, "since_ns": 1, "until_ns": 2**62}
REDUCING = {"tier": "symbol", "key": "BTC/USDT@binance", "code": "DAILY_LOSS", "state": "REDUCING",
            "reason": "daily loss 510 > 500", "manual": False, "since_ns": 1, "until_ns": -1}


def test_confirmed_once_execution_lists_the_id():
    assert not cli.risk_confirmed(status_with({}), "x")            # before execution reports
    assert not cli.risk_confirmed(status_with({"risk_commands": ["a", "b"]}), "x")
    assert cli.risk_confirmed(status_with({"risk_commands": ["a", "x"]}), "x")
    assert not cli.risk_confirmed(status_with({"risk_commands": ["x"]}, {"risk_commands": []}), "x")
    assert not cli.risk_confirmed({"workers": []}, "x")
    statuses = iter([status_with({}), status_with({"risk_commands": ["a"]}),
                     status_with({"risk_commands": ["a", "x"], "risk_states": [HALTED]})])
    st = cli.wait_risk_applied(lambda: next(statuses), "x", timeout=60, poll_s=0)
    assert cli.risk_states(st) == [HALTED]
    assert cli.wait_risk_applied(lambda: status_with({}), "x", timeout=0, poll_s=0) is None


def test_risk_states_read_as_one_line():
    assert cli.format_risk_state(HALTED) == "global HALTED (manual: fat finger)"
    assert (cli.format_risk_state(REDUCING)
            == "symbol BTC/USDT@binance REDUCING (DAILY_LOSS: daily loss 510 > 500)")
    assert cli.format_risk_state({**HALTED, "reason": ""}) == "global HALTED (manual)"


# -- figures from execution's heartbeat ------------------------------------------------
def histogram(*latencies_ns) -> dict:
    h = LatencyHistogram()
    h.add(list(latencies_ns))
    return h.to_sparse()


def execution_heartbeat() -> dict:
    """The stats an execution heartbeat carries (the contract of issue 11)."""
    return {"orders": 5, "fills": 5, "passed": 40,
            "denials": {"HALTED": 3, "POSITION_LIMIT": 2, "SPREAD": 0},
            "risk_states": [HALTED, REDUCING],
            "risk_commands": ["c1"],
            "risk_events": [{"kind": "denial", "symbol": "BTC/USDT@binance", "code": "HALTED",
                             "reason": "halted by hand", "intent_seq": 7, "ts_ns": 5}],
            "risk_events_dropped": 0,
            "trade_latency": {"binance": {"tick_to_fill": histogram(2_000_000, 3_000_000),
                                          "signal_to_intent": histogram(50_000)},
                              "upbit": {"submit_to_ack": histogram(9_000_000)}}}


def test_report_and_prometheus_show_the_risk_guard():
    ws = WorkerState(WorkerSpec("execution", 0))
    ws.hb = {"stats": execution_heartbeat()}
    ws.retire()                               # a restart: totals are as the new process reports
    ws.hb = {"stats": execution_heartbeat()}
    st = ws.stats()
    assert st["passed"] == 40 and st["denials"]["HALTED"] == 3 and st["orders"] == 10

    risk = risk_summary([st])
    assert risk == {"reported": True, "states": [HALTED, REDUCING], "passed": 40,
                    "denials": {"HALTED": 3, "POSITION_LIMIT": 2, "SPREAD": 0}, "commands": ["c1"],
                    "routes": {}, "hedges_open": {}}
    assert risk_summary([{"orders": 1}])["reported"] is False
    lat = trade_latency([st, {"trade_latency": {"binance": {"tick_to_fill": histogram(2_500_000)}}}])
    assert lat["binance"]["tick_to_fill"]["count"] == 3            # merged across workers
    assert 1900 < lat["binance"]["tick_to_fill"]["p50_us"] < 2600
    assert lat["upbit"]["submit_to_ack"]["count"] == 1

    text = "\n".join(cli.format_risk_report(risk, lat))
    assert "passed 40, denied 5 (HALTED 3, POSITION_LIMIT 2)" in text and "SPREAD" not in text
    assert "  global HALTED (manual: fat finger)" in text
    assert "symbol BTC/USDT@binance REDUCING (DAILY_LOSS" in text
    lines = text.splitlines()
    binance = [ln.split()[1] for ln in lines if ln.startswith("  binance")]
    assert binance == ["signal_to_intent", "tick_to_fill"]          # in the order of a trade
    assert "not reported by execution yet" in "\n".join(cli.format_risk_report(risk_summary([]), {}))
    arb = risk_summary([{**st, "routes": {0: {"score": 0.1, "feeds": 1.0, "fill_ratio": 0.1}},
                         "hedges_open": {0: 0.01}}])
    text = "\n".join(cli.format_risk_report(arb, {}))
    assert "route 0 health 0.10 (feeds 1.00, fill_ratio 0.10)" in text
    assert "route 0 hedge obligation open: +0.01 to trade on its hedge leg" in text

    from prometheus_client import CollectorRegistry, generate_latest
    rep = {"processes": [], "rings": [], "latency": {}, "risk": risk, "trade_latency": lat}
    registry = CollectorRegistry()
    registry.register(ReportCollector(lambda: rep, lambda: {"workers": []}))
    metrics = generate_latest(registry).decode()
    assert 'tickpipe_risk_denials_total{code="HALTED"} 3.0' in metrics
    assert 'tickpipe_risk_denials_total{code="SPREAD"} 0.0' in metrics
    assert "tickpipe_risk_passed_total 40.0" in metrics
    assert 'tickpipe_risk_state{key="",tier="global"} 2.0' in metrics
    assert 'tickpipe_risk_state{key="BTC/USDT@binance",tier="symbol"} 1.0' in metrics
    assert 'tickpipe_trade_latency_seconds{quantile="0.5",stage="submit_to_ack",venue="upbit"}' in metrics
    # nothing reported: the global tier is still there, ACTIVE
    rep = {"processes": [], "rings": [], "latency": {}}
    registry = CollectorRegistry()
    registry.register(ReportCollector(lambda: rep, lambda: {"workers": []}))
    assert 'tickpipe_risk_state{key="",tier="global"} 0.0' in generate_latest(registry).decode()


# -- the tap's risk stream ---------------------------------------------------------------
def test_tap_publishes_risk_events_rate_limited(tmp_path):
    ctx = zmq.Context()
    tap = TapPublisher(ctx, None, {}, BusConfig(tap_max_rate=2))
    endpoint = f"ipc://{tmp_path}/tap"
    tap.bind(endpoint)
    sub = bus.socket(ctx, zmq.SUB)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"risk|")
    try:
        assert tap.socket.poll(TIMEOUT * 1000), "the subscription never reached the tap"
        tap.on_subscriptions()
        denial = execution_heartbeat()["risk_events"][0]
        state = {"kind": "state", "tier": "symbol", "key": "ETH/USDT@binance", "old": "ACTIVE",
                 "new": "HALTED", "code": "HALTED", "reason": "by hand", "ts_ns": 9, "manual": True}
        tap.publish_risk("execution.0", [denial] * 4 + [state], dropped=5)
        got = []
        while sub.poll(TIMEOUT * 1000):
            topic, payload = sub.recv_multipart()
            got.append((topic.decode(), json.loads(payload)))
            if "skipped" in got[-1][1]:
                break
        # two denials (the rate), the state change whatever the rate, then the rest counted
        assert [t for t, _ in got] == ["risk|BTC/USDT@binance"] * 2 + ["risk|ETH/USDT@binance", "risk|"]
        assert got[0][1] == {**denial, "source": "execution.0"}
        assert got[2][1] == {**state, "symbol": "ETH/USDT@binance", "source": "execution.0"}
        assert got[3][1] == {"ring": "execution.0", "skipped": 2 + 5}
        assert tap.stats()["sent"]["risk"] == 3 and tap.stats()["skipped"]["risk"] == 7
    finally:
        sub.close()
        tap.close()
        ctx.term()


def test_risk_is_a_tap_stream():
    assert "risk" in cli.STREAMS
    assert "risk" in cli.build_parser().parse_args(["tap", "risk"]).stream


# -- the worker hook ---------------------------------------------------------------------
class Listener(Worker):
    """A worker that keeps the commands it is given."""

    def __init__(self, args):
        super().__init__(args)
        self.got: list[dict] = []

    def on_command(self, msg: dict) -> None:
        self.got.append(msg)


def test_a_worker_gets_the_commands_addressed_to_it(tmp_path):
    seg = RunSegments(tmp_path, fast_config())
    ctx = zmq.Context()
    pub = bus.socket(ctx, zmq.PUB)
    try:
        pub.bind(bus.Endpoints.for_run(tmp_path, seg.run_id).command)
        w = seg.worker(Listener, "execution.0")
        deadline = time.monotonic() + TIMEOUT
        while not w.got:                       # until the subscription is through
            assert time.monotonic() < deadline, "no command reached the worker"
            bus.send_json(pub, {"cmd": "risk", "target": "strategy", "n": 0})
            bus.send_json(pub, {"cmd": "risk", "target": "execution", "n": 1})
            w._cmd.poll(100)
            w._check_commands()
        assert {m["n"] for m in w.got} == {1}                  # not strategy's
        w.got.clear()
        for target in ("execution.0", "*", "execution.1", "model"):
            bus.send_json(pub, {"cmd": "note", "target": target})
        bus.send_json(pub, {"cmd": "stop", "target": "execution"})
        while not w.stopping:
            assert w._cmd.poll(TIMEOUT * 1000)
            w._check_commands()
        assert [m["target"] for m in w.got] == ["execution.0", "*"]   # stop is not a hook call
    finally:
        pub.close()
        seg.close()
        ctx.term()


# -- a running pipeline ----------------------------------------------------------------
def test_a_running_pipeline_forwards_halt_to_execution(tmp_path):
    from test_pipeline import Pipeline
    p = Pipeline(tmp_path, name="h").start()
    ctx = zmq.Context()
    sub = bus.socket(ctx, zmq.SUB)
    try:
        p.wait_running()
        st = read_state(tmp_path / "run", "h")
        control = st["endpoints"]["control"]
        sub.connect(st["endpoints"]["command"])
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        # the supervisor publishes each request; ask until our subscription is through
        got, sent = None, {}
        deadline = time.monotonic() + TIMEOUT
        while got is None:
            assert time.monotonic() < deadline, "no risk command published"
            req = {"cmd": "risk", "action": "halt", "tier": "venue", "key": "synthetic",
                   "reducing": True, "reason": "test", "id": uuid.uuid4().hex}
            assert bus.request(control, req, TIMEOUT) == {
                "ok": True, "id": req["id"], "execution": {"execution.0": "running"}}
            sent[req["id"]] = req
            while sub.poll(200):
                msg = bus.recv_json(sub)
                if msg.get("cmd") == "risk":
                    got = msg
        assert got == {**sent[got["id"]], "target": "execution"}
        bad = bus.request(control, {**req, "tier": "venue", "key": "nowhere"}, TIMEOUT)
        assert bad["ok"] is False and "venue 'nowhere' is not traded" in bad["error"]
        # a bad target never reaches the supervisor: the CLI checks first
        r = p.cli("halt", "--symbol", "NOPE/USDT")
        assert r.returncode == 2 and "unknown symbol 'NOPE/USDT'" in r.stderr
        # execution may have applied the venue halts: lift them (confirmed, or not yet)
        r = p.cli("resume", "--venue", "synthetic", "--timeout", "30")
        assert r.returncode == 0, r.stderr
        ex = lambda st: next(w["stats"] for w in st["workers"] if w["id"] == "execution.0")
        p.wait_status(lambda st: ex(st).get("orders", 0) > 0, "orders before the halt")
        r = p.cli("halt", "--reason", "e2e", "--timeout", "30")
        assert r.returncode == 0, r.stderr
        assert "risk: " in r.stdout and "global HALTED (manual: e2e)" in r.stdout
        # confirmed means applied: from then on not one new order, only denials
        orders = ex(p.status())["orders"]
        st = p.wait_status(lambda st: ex(st)["denials"]["HALTED"] >= 5, "intents denied while halted")
        assert ex(st)["orders"] == orders
        assert "risk: global HALTED (manual: e2e)" in p.cli("status").stdout
        assert p.cli("resume", "--timeout", "30").returncode == 0
        rep = json.loads(p.cli("report", "--json").stdout)
        assert set(rep["risk"]) == {"reported", "states", "denials", "passed", "commands", "routes", "hedges_open"}
        assert isinstance(rep["trade_latency"], dict)
        assert "\nrisk\n" in p.cli("report").stdout
        assert p.cli("stop").returncode == 0
        assert p.wait_exit() == 0
    finally:
        sub.close()
        ctx.term()
        p.kill()
