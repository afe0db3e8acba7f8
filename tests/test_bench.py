"""The benchmarks still run and their JSON keeps its shape (--quick, small counts).
Figures are not asserted: speed is measured in bench/, not in tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, out: Path, *extra: str) -> dict:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", "--json", str(out), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, _why(out) + r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text())


def _why(out: Path) -> str:
    """What a failed bench's JSON says went wrong (its runs' verdicts), ahead of the output's tail."""
    try:
        res = json.loads(out.read_text())
    except (OSError, ValueError):
        return "(no JSON written)\n"
    keys = ("passed", "error", "exit_code", "dropped", "restarts", "emitted", "consumed_by_shards",
            "tick_ring_cursors_at_end", "intents", "fills", "denied")
    runs = {name: {k: run.get("run", run).get(k) for k in keys}
            for name, run in (res.get("latency") or {}).items() if isinstance(run, dict)}
    return f"errors: {res.get('errors')}; leftovers: {res.get('leftovers')}; latency runs: {runs}\n"


def test_ring_bench_quick(tmp_path):
    res = run_bench("ring.py", tmp_path / "ring.json")
    names = [r["name"] for r in res["results"]]
    assert names == ["shm ring, per record", "shm ring, batched", "multiprocessing.Queue",
                     "multiprocessing.Pipe", "zmq ipc, per record", "zmq ipc, batched"]
    for r in res["results"]:
        assert r["records_per_s"] > 0
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"]


def test_end_to_end_bench_quick(tmp_path):
    # shorter latency runs than --quick's (5 s and 15 s): enough for fills, and the ensemble's
    # warm-up (35 bars of 0.25 s) ends with seconds to spare
    res = run_bench("end_to_end.py", tmp_path / "end_to_end.json", "--latency-seconds", "3",
                    "--ensemble-seconds", "12")
    assert res["workers"] == 8
    assert res["trials"] and "sustained_ticks_per_s" in res   # 0 when a loaded machine drops
    assert not res["errors"] and res["leftovers"] == []
    lat = res["latency"]
    assert set(lat) == {"momentum", "ensemble"}
    for name, run in lat.items():
        assert run["run"]["passed"], name
        assert run["run"]["denied"] == 0, name                 # the bench's [risk] passes everything
        assert run["tick_to_signal"]["count"] > 0, name
        assert set(run["hops"]) == {"model", "strategy", "execution"}
        assert run["hops"]["strategy"]["before"] == "tick_to_signal"
        assert run["hops"]["strategy"]["after"] == "tick_to_intent"
        ch = run["churn"]
        assert ch["fills"] == run["run"]["fills"] == run["tick_to_fill"]["count"], name  # journal == counters
        assert ch["bars"] == run["run"]["bars"] > 0
        assert {"fills_per_symbol_per_100_bars", "mean_bars_held", "positions_opened"} <= set(ch)
    mom, ens = lat["momentum"], lat["ensemble"]
    assert mom["tick_to_fill"]["count"] > 0 and mom["hops"]["strategy"]["p50_us"] is not None
    trade = mom["trade_latency"]["synthetic"]
    assert trade["intent_to_submit"]["count"] > 0 and trade["tick_to_fill"]["count"] > 0
    assert ens["model"]["size"] == "tiny" and ens["model"]["models"] == ["lstm", "forest", "xgboost", "rl"]
    assert ens["model"]["trained_now"] and ens["model"]["training_data"].startswith("synthetic:")
    # the ensemble trades under the default [strategy], whatever its fills
    assert ens["run"]["config"]["strategy"] == {"enter_margin": 0.1, "exit_margin": 0.02,
                                                "min_hold_bars": 6, "allow_short": False}
    assert ens["aim"]["p50_ms"] == 2.0 and ens["aim"]["p99_ms"] == 10.0
    assert {"whole_run", "steady"} <= set(ens["aim"])
    assert mom["steady"]["tick_to_fill"]["count"] > 0 and ens["steady"] is not None


def test_feeds_bench_quick(tmp_path):
    res = run_bench("feeds.py", tmp_path / "feeds.json")
    rows = {r["venue"]: r for r in res["results"]}
    assert {"upbit", "bithumb"} <= set(rows)
    for r in rows.values():
        if r.get("skipped"):
            continue
        assert r["ours_msgs_per_s"] > 0


def test_indicators_bench_quick(tmp_path):
    res = run_bench("indicators.py", tmp_path / "indicators.json")
    assert [r["symbols"] for r in res["per_update"]] == [1, 100, 1000]
    for r in res["per_update"]:
        assert r["ours_ns"] > 0 and r["talipp_ns"] > 0 and r["pandas_ns"] > 0
    assert res["batch"]["ours_ms"] > 0 and res["batch"]["talib_ms"] > 0


def test_inference_bench_quick(tmp_path):
    res = run_bench("inference.py", tmp_path / "inference.json")
    rows = {(r["model"], r["batch"]): r for r in res["results"]}
    assert set(rows) == {(m, b) for m in ("forest", "xgboost", "lstm", "rl", "ensemble")
                         for b in (1, 64, 256)}
    for r in rows.values():
        assert 0 < r["ours_p50_ms"] <= r["ours_p99_ms"]
        assert 0 < r["naive_p50_ms"] <= r["naive_p99_ms"]
        assert r["max_abs_diff"] < 1e-3            # ours and naive are the same model
    assert rows[("forest", 64)]["naive_njobs_all_p50_ms"] > 0
    assert {"p99_met", "ratio_met"} <= set(res["aims"])


def test_model_host_bench_quick(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow", reason="TensorFlow is needed for the LSTM and the RL agent")
    scratch = tmp_path / "scratch"             # the bench's temporary directory goes here
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    res = run_bench("model_host.py", tmp_path / "model_host.json")
    rows = {r["batch"]: r for r in res["results"]}
    assert set(rows) == {1, 64, 256} and res["symbols"] == 256
    assert res["members"] == ["lstm", "forest", "xgboost", "rl"]
    assert res["equal"] is True and all(r["equal"] is True for r in rows.values())
    for r in rows.values():
        assert 0 < r["local_p50_ms"] <= r["local_p99_ms"]
        assert 0 < r["remote_p50_ms"] <= r["remote_p99_ms"]
        assert 0 < r["host_infer_p50_ms"] <= r["host_infer_p99_ms"]
        assert r["warmup_calls_to_fill"] <= res["model"]["lstm_window"]
        assert r["first_ts_bar_ns"] < r["last_ts_bar_ns"]
    assert rows[1]["last_ts_bar_ns"] < rows[64]["first_ts_bar_ns"]   # a new bar per call
    # the host served every call and stopped cleanly; nothing of it is left behind
    assert res["bridge"]["remote_batches"] == res["calls_compared"] == res["bars_used"]
    assert res["bridge"]["stale_batches"] == 0
    assert res["host_exit"] == 0
    assert res["host_stopped"].startswith(f"stopped: {res['calls_compared']} batches")
    with pytest.raises(ProcessLookupError):
        os.kill(res["host_pid"], 0)
    assert not [p for p in scratch.iterdir() if p.name.startswith("tickpipe-bench-model-host-")]


def test_execution_bench_quick(tmp_path):
    res = run_bench("execution.py", tmp_path / "execution.json")
    steps = res["steps"]
    assert steps["intents_per_step"] == 64 and steps["fills"] > 0
    assert 0 < steps["p50_ms"] <= steps["p99_ms"] and steps["intents_per_s"] > 0
    rates = res["journal_rows_per_s"]
    assert rates["ours (commit per 64)"] > 0 and rates["sqlite autocommit per row"] > 0
