"""Serving the trained ensemble in the live pipeline ([model] kind = "ensemble").

A tiny ensemble of all four models is trained on 0.2 s bars of the synthetic
market (what the feed will produce, on another seed) with the very
[indicators] the pipeline then runs; the pipeline runs it on the synthetic feed
with 0.2 s bars, and the tap shows signals carrying every member's
probabilities and fills following them. Artifacts trained on other indicators,
or on bars of another length, stop the pipeline at once with one clear line
(no restart loop).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import pyarrow.parquet as pq

from models.synthetic import synthetic_candles
from models.train import train
from pipeline.config import FeedConfig, load_config
from shm.records import FLAG_PARTIAL, FLAG_WARMUP

from conftest import ALL_FOUR, FAST, SYNTHETIC_SYMBOLS
from test_pipeline import TIMEOUT, Pipeline, leftovers

BAR_S = FAST["indicators"]["bar_seconds"]          # the test pipeline's bars: 0.2 s


@pytest.fixture
def serving_config(config_file):
    """``serving_config(name, artifacts, ema, models)``: the tiny ensemble (seed 3) on
    4 workers and 6 symbols, in this test's tmp_path; no [bus], so its defaults apply."""
    def write(name: str, artifacts: Path, ema=(2, 4), models=ALL_FOUR) -> Path:
        return config_file(name, ensemble=True, pipeline={"startup_timeout_s": 120}, bus=None,
                           indicators={"ema": list(ema)},
                           model={"artifacts": artifacts, "models": list(models), "seed": 3})
    return write


def synthetic_file(path: Path, bar_seconds: float, bars: int) -> Path:
    """Candles of the test pipeline's synthetic market (its symbols and tick rate, another seed)."""
    feed = FeedConfig(symbols=SYNTHETIC_SYMBOLS, ticks_per_s=FAST["feeds"][0]["ticks_per_s"])
    pq.write_table(synthetic_candles(feed, bar_seconds, bars, seed=11), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """1500 bars of 0.2 s, the bars the test pipeline closes."""
    return synthetic_file(tmp_path_factory.mktemp("serving-data") / "candles.parquet", BAR_S, 1500)


@pytest.fixture
def pipe(tmp_path):
    made = []

    def make(config: Path) -> Pipeline:
        p = Pipeline(tmp_path, config=config)
        made.append(p)
        return p
    yield make
    for p in made:
        p.kill()


def test_ensemble_signals_carry_members_and_trade(data, tmp_path, pipe, serving_config):
    pytest.importorskip("tensorflow", reason="TensorFlow is needed for the LSTM and the RL agent")
    models = tmp_path / "models"
    cfg_path = serving_config("serve", models)
    report = train(data, load_config(cfg_path), models, progress=False)
    assert report["artifacts"] == {"lstm": 1, "forest": 1, "xgboost": 1, "rl": 1, "ensemble": 1}

    p = pipe(cfg_path).start()
    p.wait_running()                       # the model worker loads and compiles first
    # the first signals are warm-up (NaN features) or partial (LSTM window filling)
    complete = []
    deadline = time.monotonic() + TIMEOUT
    while len(complete) < 6 and time.monotonic() < deadline:
        for s in p.tap("signals", limit=30):
            assert s["model_id"] == 1
            assert abs(sum(s["probs"]) - 1) < 1e-5 and abs(s["confidence"] - max(s["probs"])) < 1e-6
            if s["flags"] & FLAG_WARMUP:
                assert s["action"] == 0 and s["model_versions"] == [0, 0, 0, 0]
            elif not s["flags"] & FLAG_PARTIAL:
                complete.append(s)
    assert len(complete) >= 6, f"no complete ensemble signals\n{p.output()}"
    for s in complete:
        assert s["model_versions"] == [1, 1, 1, 1]
        for member in s["member_probs"]:
            assert abs(sum(member) - 1) < 1e-5 and min(member) >= 0
        best = max(range(3), key=lambda k: s["probs"][k])
        assert s["action"] == (-1, 0, 1)[best]

    st = p.status()
    (model,) = [w["stats"] for w in st["workers"] if w["id"].startswith("model.")]
    assert model["members"] == ["lstm", "forest", "xgboost", "rl"]
    assert model["versions"] == {"ensemble": 1, "lstm": 1, "forest": 1, "xgboost": 1, "rl": 1}
    assert model["device"] and model["infer_ms_p50"] is not None

    assert len(p.tap("fills", limit=2)) == 2
    assert p.cli("stop").returncode == 0
    assert p.wait_exit() == 0
    assert leftovers(st["run_id"], p.tmp / "run") == []


def test_artifacts_for_other_indicators_stop_the_pipeline(data, tmp_path, pipe, serving_config):
    models = tmp_path / "models"
    # trained with ema = [3, 5] (forest and XGBoost only: no TensorFlow needed) ...
    train_cfg = serving_config("trained", models, ema=(3, 5), models=("forest", "xgboost"))
    train(data, load_config(train_cfg), models, progress=False)
    # ... served by a pipeline running ema = [2, 4]
    p = pipe(serving_config("mismatch", models)).start()
    code = p.wait_exit()
    out = p.output()
    assert code == 2, out
    stopped = [line for line in out.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1, out
    line = stopped[0]
    assert "model.0 configuration error" in line and "trained on other features" in line, line
    assert "ema_3" in line and "ema_2" in line, line
    assert "restarting" not in out, out


def test_artifacts_for_other_bars_stop_the_pipeline(tmp_path, pipe, serving_config):
    """Trained on 1 s bars with the very indicators it runs, served on 0.2 s bars: refused."""
    models = tmp_path / "models"
    cfg_path = serving_config("bars", models, models=("forest", "xgboost"))
    one_second = synthetic_file(tmp_path / "one-second.parquet", 1.0, 600)
    report = train(one_second, load_config(cfg_path), models, progress=False)
    assert report["data"]["bar_seconds"] == 1.0
    p = pipe(cfg_path).start()
    code = p.wait_exit()
    out = p.output()
    assert code == 2, out
    stopped = [line for line in out.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1, out
    line = stopped[0]
    assert "model.0 configuration error" in line, line
    assert ("model 'ensemble' version 1 was trained on 1 s bars but this config closes 0.2 s bars "
            "([indicators] bar_seconds = 0.2)") in line, line
    assert "restarting" not in out, out
