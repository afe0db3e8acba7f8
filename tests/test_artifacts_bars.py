"""A model is served only on bars of the length it was trained on (issue 12, item 2).

`pipeline train` records the bar length (the file's median step) and what the
path says of venue, symbol and quote currency; serving (the model worker's
EnsembleModel and the remote model host) refuses another bar length in one
line and only warns about another venue or quote currency. The candles are
the synthetic market's at 5-minute bars, written where `pipeline download`
would put Upbit's BTC/KRW, so no data file is needed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.registry import ENSEMBLE, Registry
from models.serving import EnsembleModel
from models.synthetic import synthetic_candles
from models.train import format_report, market_of, median_step_seconds, train
from pipeline.cli import main
from pipeline.config import FeedConfig, feature_names, load_config
from pipeline.errors import ConfigurationError

from conftest import TINY_TREES, toml

BAR_S = 300.0


def write_cfg(tmp: Path, name: str, artifacts: Path, bar_seconds: float) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(toml({"indicators": {"bar_seconds": bar_seconds},
                          "model": {"artifacts": artifacts, "models": ["forest", "xgboost"], "folds": 2,
                                    **TINY_TREES}}))
    return path


@pytest.fixture(scope="module")
def candles(tmp_path_factory) -> Path:
    """800 synthetic 5-minute bars, three missing, where `pipeline download` keeps Upbit's BTC/KRW."""
    tmp = tmp_path_factory.mktemp("bars")
    t = synthetic_candles(FeedConfig(symbols=["BTC/KRW"], ticks_per_s=1.0), BAR_S, 800, seed=5)
    keep = np.ones(t.num_rows, bool)
    keep[[100, 101, 400]] = False                              # gaps: the median step stays 5 min
    t = t.filter(pa.array(keep))
    path = tmp / "data" / "ohlcv" / "venue=upbit" / "symbol=BTC-KRW" / "timeframe=5m" / "2026-01.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(t, path)
    return path


@pytest.fixture(scope="module")
def trained(candles, tmp_path_factory):
    """(report, artifacts dir, tmp) of a tiny forest + XGBoost run on the 5-minute candles,
    with a config whose own bar length is 1 s (the default)."""
    tmp = tmp_path_factory.mktemp("trained")
    arts = tmp / "artifacts"
    cfg = load_config(write_cfg(tmp, "one-second", arts, 1.0))
    return train(candles, cfg, arts, progress=False), arts, tmp


def test_market_of_a_path():
    assert market_of("data/binance_BTC-USDT_1h.csv") == {"venue": "binance", "symbol": "BTC/USDT",
                                                         "quote": "USDT", "synthetic": False}
    assert market_of("x/upbit_BTC-KRW_5m_sampled.csv")["quote"] == "KRW"
    assert market_of("d/ohlcv/venue=kraken/symbol=BTC-USD/timeframe=1m/2024-01.parquet") == \
        {"venue": "kraken", "symbol": "BTC/USD", "quote": "USD", "synthetic": False}
    assert market_of("mine.csv") == {"venue": None, "symbol": None, "quote": None, "synthetic": False}
    assert market_of(pa.table({"a": [1]}))["venue"] is None
    assert median_step_seconds(np.array([0, 60_000, 120_000, 300_000, 360_000])) == 60.0
    assert median_step_seconds(np.array([5])) is None


def test_train_records_the_bars_and_the_market(trained):
    report, arts, _ = trained
    assert report["data"]["bar_seconds"] == BAR_S
    market = {"venue": "upbit", "symbol": "BTC/KRW", "quote": "KRW", "synthetic": False}
    assert report["data"]["market"] == market
    for name in ("forest", "xgboost", ENSEMBLE):
        _, meta = Registry(arts).load(name)
        assert meta["bar_seconds"] == BAR_S and meta["market"] == market
    text = format_report(report)
    assert ("bars: 5 min (the data's median step); BTC/KRW on upbit; a pipeline serves these artifacts "
            "only with [indicators] bar_seconds = 300 (this config has 1: it would refuse them)") in text
    assert "figures below are walk-forward out-of-sample: each fold's models were trained only on rows " \
           "before it" in text
    assert "SYNTHETIC" not in text            # the path says upbit: a real market as far as train knows


def test_serving_refuses_other_bars_in_one_line(trained):
    _, arts, tmp = trained
    cfg = load_config(write_cfg(tmp, "serve", arts, 1.0))
    names = feature_names(cfg)
    with pytest.raises(ConfigurationError) as e:
        EnsembleModel(arts, names, 4, bar_seconds=1.0, symbols=["BTC/KRW@upbit"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("model 'ensemble' version 1 was trained on 5 min bars but this config closes "
                          "1 s bars ([indicators] bar_seconds = 1)"), msg

    # the same bars: served; another quote currency and venue are warnings, not refusals
    model = EnsembleModel(arts, names, 4, bar_seconds=BAR_S, symbols=["BTC/USDT@binance", "ETH/USDT@binance"])
    assert model.members == ["forest", "xgboost"]
    quote, venue = model.notes
    assert "trained on BTC/KRW (quoted in KRW) and serves symbols quoted in USDT" in quote
    assert "trained on upbit data (BTC/KRW) and serves binance" in venue
    assert EnsembleModel(arts, names, 4, bar_seconds=BAR_S, symbols=["BTC/KRW@upbit"]).notes == []


def test_old_artifacts_without_the_bar_length_are_refused(trained):
    _, arts, tmp = trained
    old = tmp / "old-artifacts"
    shutil.copytree(arts, old)
    for meta_path in old.glob("*/1/metadata.json"):
        meta = json.loads(meta_path.read_text())
        del meta["bar_seconds"]                           # as artifacts were saved before
        meta_path.write_text(json.dumps(meta))
    names = feature_names(load_config(write_cfg(tmp, "old", old, BAR_S)))
    with pytest.raises(ConfigurationError) as e:
        EnsembleModel(old, names, 4, bar_seconds=BAR_S)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model 'ensemble' version 1 does not record the bar length")
    assert "its data averages about 5 min per bar" in msg and "retrain it with pipeline train on 5 min bars" in msg


def test_the_model_host_refuses_a_pipeline_on_other_bars(trained):
    from workers.model_host import ModelHost, make_keys
    _, arts, tmp = trained
    keys = tmp / "keys"
    if not keys.exists():
        make_keys(keys)
    host = ModelHost(load_config(write_cfg(tmp, "host", arts, BAR_S)), f"ipc://{tmp}/host.sock", keys)
    try:
        hello = {"feature_names": host.feature_names, "symbols": host.symbols}
        kind, body = host.handle([b"hello", json.dumps({**hello, "bar_seconds": BAR_S}).encode()])
        assert kind == b"ready", body
        kind, body = host.handle([b"hello", json.dumps({**hello, "bar_seconds": 1.0}).encode()])
        err = json.loads(body)
        assert kind == b"error" and err["config"] is True
        assert err["error"] == ("the model host serves models trained on 5 min bars but this pipeline closes "
                                "1 s bars; run both with the same [indicators] bar_seconds")
        kind, body = host.handle([b"hello", json.dumps(hello).encode()])      # an older bridge
        assert kind == b"error" and "does not say its bar length" in json.loads(body)["error"]
    finally:
        host.close()


def test_cli_train_prints_the_bars(candles, tmp_path, capsys):
    cfg = write_cfg(tmp_path, "five-minutes", tmp_path / "unused", BAR_S)
    rc = main(["train", "--data", str(candles), "--config", str(cfg), "--out", str(tmp_path / "m"),
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert ("bars: 5 min (the data's median step); BTC/KRW on upbit; a pipeline serves these artifacts "
            "only with [indicators] bar_seconds = 300\n") in out
    assert "figures below are walk-forward out-of-sample" in out
    assert Registry(tmp_path / "m").load(ENSEMBLE)[1]["bar_seconds"] == BAR_S
