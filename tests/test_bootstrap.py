"""The default config serves the full ensemble with no network and no data files:
at first start it trains one on the synthetic market's history and keeps it.

The quick tests use a tiny forest + XGBoost config; the last one runs the real
conf/default.toml as a user does (`pipeline start` from a fresh directory).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from models.registry import ENSEMBLE, Registry
from models.synthetic import SOURCE, bootstrap, needs_bootstrap, synthetic_candles
from models.train import train
from pipeline.config import FeedConfig, load_config
from pipeline.storage import OHLCV_COLUMNS, check_candles

from conftest import TINY_TREES, toml
from test_pipeline import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


def tiny(tmp: Path, artifacts: Path, ema=(12, 26), name: str = "tiny"):
    """A tiny forest + XGBoost ensemble; every other setting but the EMAs is the default."""
    path = tmp / f"{name}.toml"
    path.write_text(toml({"indicators": {"ema": list(ema)},
                          "model": {"artifacts": artifacts, "models": ["forest", "xgboost"],
                                    "bootstrap_bars": 600, "folds": 2, **TINY_TREES}}))
    return load_config(path)


def test_synthetic_candles_are_valid_bars_of_the_live_market():
    feed = FeedConfig(symbols=["A/USDT", "B/USDT"], ticks_per_s=400.0)
    t = synthetic_candles(feed, 0.5, 300, seed=11)
    assert t.column_names == OHLCV_COLUMNS
    cols = [t.column(c).to_numpy() for c in OHLCV_COLUMNS]
    good, bad = check_candles(*cols)
    assert good.all() and not bad
    ts = cols[0]
    assert len(ts) >= 290 and np.all(np.diff(ts) % 500 == 0)   # 0.5 s bars, a quiet one may be absent
    assert (cols[5] > 0).all()
    again = synthetic_candles(feed, 0.5, 300, seed=11)
    assert again.equals(t)                                      # the seed fixes the history
    assert not synthetic_candles(feed, 0.5, 300, seed=12).equals(t)
    with pytest.raises(ValueError, match="outside the feed's 2 symbols"):
        synthetic_candles(feed, 0.5, 10, seed=1, symbol=2)


def test_bootstrap_trains_once_and_keeps_it(tmp_path):
    arts = tmp_path / "artifacts"
    cfg = tiny(tmp_path, arts)
    assert "no trained ensemble" in needs_bootstrap(cfg)
    report = bootstrap(cfg, progress=False, out=open(os.devnull, "w"))
    assert report["artifacts"] == {"forest": 1, "xgboost": 1, ENSEMBLE: 1}
    assert report["data"]["source"].startswith(f"{SOURCE}:BTC/USDT")
    _, meta = Registry(arts).load(ENSEMBLE)
    assert meta["training"]["data"] == report["data"]["source"]
    assert needs_bootstrap(cfg) is None and bootstrap(cfg, progress=False) is None
    assert Registry(arts).versions(ENSEMBLE) == [1]

    # the indicators change: the synthetic ensemble is ours to replace, as a new version
    other = tiny(tmp_path, arts, ema=(5, 9), name="other")
    assert "trained for other indicators" in needs_bootstrap(other)
    bootstrap(other, progress=False, out=open(os.devnull, "w"))
    assert Registry(arts).versions(ENSEMBLE) == [1, 2]


def test_bootstrap_never_replaces_the_users_artifacts(tmp_path):
    arts = tmp_path / "artifacts"
    cfg = tiny(tmp_path, arts)
    user_data = tmp_path / "mine.parquet"
    import pyarrow.parquet as pq
    pq.write_table(synthetic_candles(FeedConfig(), 1.0, 700, seed=5), user_data)
    train(user_data, cfg, arts, progress=False)
    # trained by the user for ema [12, 26]; a run with other indicators is refused by
    # the model worker (test_serving), never silently retrained over
    assert needs_bootstrap(tiny(tmp_path, arts, ema=(5, 9), name="other")) is None
    off = tiny(tmp_path, tmp_path / "empty")
    off.model.bootstrap = ""
    assert needs_bootstrap(off) is None


def test_default_config_serves_the_ensemble_from_a_fresh_directory(tmp_path):
    """`pipeline start` exactly as README's first command runs it, in a new directory."""
    pytest.importorskip("tensorflow", reason="TensorFlow is needed for the LSTM and the RL agent")
    (tmp_path / "conf").mkdir()
    shutil.copy(ROOT / "conf" / "default.toml", tmp_path / "conf" / "default.toml")
    env = {**os.environ, "TICKPIPE_RUN_DIR": str(tmp_path / "run"), "TICKPIPE_LOG_LEVEL": "WARNING"}

    def cli(*args, timeout=TIMEOUT):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    log = open(tmp_path / "first.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "start"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        signals = []
        deadline = time.monotonic() + 6 * TIMEOUT          # training first: about a minute here
        while not signals and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            r = cli("tap", "signals", "--json", "--limit", "3", "--timeout", "5")
            if r.returncode == 0:
                signals = [json.loads(line) for line in r.stdout.splitlines()]
        assert signals, (tmp_path / "first.log").read_text()
        assert all(s["model_id"] == 1 for s in signals)          # the ensemble, not the momentum rule
        st = json.loads(cli("status", "--json").stdout)
        (model,) = [w["stats"] for w in st["workers"] if w["id"].startswith("model.")]
        assert model["members"] == ["lstm", "forest", "xgboost", "rl"]
        assert model["versions"] == {"ensemble": 1, "lstm": 1, "forest": 1, "xgboost": 1, "rl": 1}
        assert cli("stop").returncode == 0
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(TIMEOUT)
    first = (tmp_path / "first.log").read_text()
    assert "no trained ensemble in artifacts: training lstm, forest, xgboost, rl" in first
    assert "ensemble: soft vote, weights" in first                # the training report's table
    assert Registry(tmp_path / "artifacts").versions(ENSEMBLE) == [1]

    # the second start loads what the first one trained
    r = cli("start", "--duration", "3", timeout=3 * TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "training" not in r.stdout and "stopped: duration of 3 s reached" in r.stdout
    assert Registry(tmp_path / "artifacts").versions(ENSEMBLE) == [1]
