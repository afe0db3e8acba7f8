"""Model registry: versioned artifacts, checksums, clear errors, feature and bar checks."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from models.registry import ArtifactError, Registry, bar_text, check_bars, check_features, market_notes

FEATURES = ["ema_12", "ema_26", "rsi_14", "obv"]


def meta(**extra) -> dict:
    return {"feature_names": FEATURES, "bar_seconds": 300.0, "parameters": {"n_estimators": 10, "seed": 7},
            "data_range": {"first_ms": 1_500_000_000_000, "last_ms": 1_600_000_000_000},
            "metrics": {"accuracy": 0.41}, **extra}


def test_roundtrip_and_metadata(tmp_path):
    reg = Registry(tmp_path / "models")
    v = reg.save("forest", {"model.bin": b"\x00\x01trees", "sub/extra.json": b"{}"}, meta())
    assert v == 1
    path, m = reg.load("forest")
    assert path == tmp_path / "models" / "forest" / "1"
    assert (path / "model.bin").read_bytes() == b"\x00\x01trees"
    assert (path / "sub" / "extra.json").read_bytes() == b"{}"
    assert m["feature_names"] == FEATURES and m["parameters"]["seed"] == 7
    assert m["data_range"]["first_ms"] == 1_500_000_000_000 and m["metrics"] == {"accuracy": 0.41}
    assert m["name"] == "forest" and m["version"] == 1 and m["created"].endswith("+00:00")
    assert {"python", "numpy"} <= set(m["libraries"])
    assert set(m["checksum"]["files"]) == {"model.bin", "sub/extra.json"}
    assert len(m["checksum"]["total"]) == 64
    assert json.loads((path / "metadata.json").read_text()) == m
    check_features(m, list(FEATURES))                       # the same features: accepted


def test_writer_callable_and_file_list(tmp_path):
    reg = Registry(tmp_path)
    src = tmp_path / "weights.npy"
    src.write_bytes(b"w" * 1000)
    assert reg.save("lstm", lambda d: (d / "model.keras").write_bytes(b"keras"), meta()) == 1
    assert reg.save("lstm", [src], meta()) == 2
    path, _ = reg.load("lstm", 1)
    assert (path / "model.keras").read_bytes() == b"keras"
    path, _ = reg.load("lstm")
    assert (path / "weights.npy").read_bytes() == b"w" * 1000
    with pytest.raises(ValueError, match="outside"):
        reg.save("lstm", {"../evil": b"x"}, meta())
    with pytest.raises(ValueError, match="metadata.json"):
        reg.save("lstm", {"metadata.json": b"{}"}, meta())
    with pytest.raises(ValueError, match="metrics"):
        reg.save("lstm", {"a": b"x"}, {k: v for k, v in meta().items() if k != "metrics"})
    with pytest.raises(ValueError, match="metadata lacks bar_seconds"):
        reg.save("lstm", {"a": b"x"}, {k: v for k, v in meta().items() if k != "bar_seconds"})
    for bad in (0, -1.0, float("nan"), "60", True):
        with pytest.raises(ValueError, match="bar_seconds must be a number of seconds > 0"):
            reg.save("lstm", {"a": b"x"}, meta(bar_seconds=bad))
    assert reg.versions("lstm") == [1, 2]
    assert not [p for p in (tmp_path / "lstm").iterdir() if p.name.startswith(".")]   # no temp left


def test_latest_version_and_no_overwrite(tmp_path):
    reg = Registry(tmp_path)
    for i in range(3):
        assert reg.save("xgb", {"model.json": f"v{i}".encode()}, meta(metrics={"i": i})) == i + 1
    path, m = reg.load("xgb")
    assert m["version"] == 3 and (path / "model.json").read_text() == "v2"
    path, m = reg.load("xgb", version=2)
    assert m["metrics"] == {"i": 1} and (path / "model.json").read_text() == "v1"
    # a stale temporary directory of a crashed save is neither a version nor in the way
    (tmp_path / "xgb" / ".tmp-1-dead").mkdir()
    assert reg.save("xgb", {"model.json": b"v3"}, meta()) == 4
    assert reg.versions("xgb") == [1, 2, 3, 4]
    assert (tmp_path / "xgb" / "1" / "model.json").read_text() == "v0"


def test_no_overwrite_when_number_taken(tmp_path, monkeypatch):
    """Two writers picking the same number: the second takes the next one."""
    reg = Registry(tmp_path)
    reg.save("rf", {"m": b"first"}, meta())
    monkeypatch.setattr(Registry, "versions", lambda self, name: [])   # a writer that saw no versions
    assert reg.save("rf", {"m": b"second"}, meta()) == 2
    monkeypatch.undo()
    assert (tmp_path / "rf" / "1" / "m").read_bytes() == b"first"
    assert (tmp_path / "rf" / "2" / "m").read_bytes() == b"second"


def test_missing_artifact_is_clear(tmp_path):
    reg = Registry(tmp_path / "models")
    with pytest.raises(ArtifactError) as e:
        reg.load("ensemble")
    assert str(e.value).startswith(f"no model 'ensemble' in {tmp_path / 'models'}: run pipeline train")
    reg.save("ensemble", {"m": b"x"}, meta())
    with pytest.raises(ArtifactError, match=r"no version 5 of model 'ensemble' .*\(saved: 1\)"):
        reg.load("ensemble", 5)


def test_corrupt_artifacts_name_the_file(tmp_path):
    reg = Registry(tmp_path)
    reg.save("rf", {"model.bin": b"0123456789", "scaler.bin": b"s"}, meta())
    d = tmp_path / "rf" / "1"

    (d / "model.bin").write_bytes(b"0123456780")                       # one byte changed
    with pytest.raises(ArtifactError, match=f"corrupt artifact: {d / 'model.bin'} does not match its checksum"):
        reg.load("rf")
    (d / "model.bin").write_bytes(b"0123456789")
    reg.load("rf")

    os.remove(d / "scaler.bin")
    with pytest.raises(ArtifactError, match=f"corrupt artifact: {d / 'scaler.bin'} is missing"):
        reg.load("rf")
    (d / "scaler.bin").write_bytes(b"s")

    (d / "stray.pkl").write_bytes(b"?")
    with pytest.raises(ArtifactError, match=f"{d / 'stray.pkl'} is not listed"):
        reg.load("rf")
    os.remove(d / "stray.pkl")

    text = (d / "metadata.json").read_text()
    (d / "metadata.json").write_text(text[: len(text) // 2])            # truncated
    with pytest.raises(ArtifactError, match=f"corrupt artifact: {d / 'metadata.json'} is unreadable"):
        reg.load("rf")
    (d / "metadata.json").write_text(json.dumps({"feature_names": FEATURES}))   # no checksum
    with pytest.raises(ArtifactError, match="metadata.json is unreadable"):
        reg.load("rf")
    os.remove(d / "metadata.json")
    with pytest.raises(ArtifactError, match=f"corrupt artifact: {d / 'metadata.json'} is missing"):
        reg.load("rf")


def test_feature_mismatch_refused_with_names(tmp_path):
    reg = Registry(tmp_path)
    reg.save("rf", {"m": b"x"}, meta())
    _, m = reg.load("rf")

    with pytest.raises(ArtifactError) as e:
        check_features(m, ["ema_12", "ema_26", "rsi_14"])
    msg = str(e.value)
    assert "model 'rf' version 1" in msg and "missing from the running config: obv" in msg
    assert "pipeline train" in msg

    with pytest.raises(ArtifactError, match="extra in the config\\): sma_20"):
        check_features(m, [*FEATURES, "sma_20"])

    with pytest.raises(ArtifactError) as e:
        check_features(m, ["ema_26", "ema_12", "rsi_14", "obv"])
    msg = str(e.value)
    assert "another order" in msg and "first misplaced: ema_26" in msg
    assert "model order: ema_12, ema_26, rsi_14, obv" in msg


def test_bad_model_name(tmp_path):
    with pytest.raises(ValueError, match="model name"):
        Registry(tmp_path).save("../x", {"m": b"x"}, meta())
    assert not any(Path(tmp_path).iterdir())


def test_bar_text():
    assert [bar_text(s) for s in (0.2, 1.0, 30, 60.0, 300, 90, 3600, 14400, 86400)] == \
        ["0.2 s", "1 s", "30 s", "1 min", "5 min", "90 s", "1 h", "4 h", "1 d"]


def test_bar_mismatch_refused_in_one_line(tmp_path):
    reg = Registry(tmp_path)
    reg.save("rf", {"m": b"x"}, meta())                       # 5-minute bars
    _, m = reg.load("rf")
    check_bars(m, 300)                                        # the same bars: accepted
    check_bars(m, 300.0000001)
    with pytest.raises(ArtifactError) as e:
        check_bars(m, 1.0)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("model 'rf' version 1 was trained on 5 min bars but this config closes 1 s bars "
                          "([indicators] bar_seconds = 1)"), msg
    assert "retrain it with pipeline train on 1 s bars, or run it with bar_seconds = 300" in msg


def test_artifact_without_bar_length_refused_with_a_hint(tmp_path):
    """Saved before artifacts recorded their bars: refused, with the data's mean step as a hint."""
    reg = Registry(tmp_path)
    reg.save("rf", {"m": b"x"}, meta(data_range={"first_ms": 0, "last_ms": 3_600_000 * 99, "rows": 100}))
    path = tmp_path / "rf" / "1" / "metadata.json"
    old = json.loads(path.read_text())
    del old["bar_seconds"]
    path.write_text(json.dumps(old))                          # metadata.json is not in the checksum
    _, m = reg.load("rf")                                     # loads: only serving refuses it
    with pytest.raises(ArtifactError) as e:
        check_bars(m, 60)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == ("model 'rf' version 1 does not record the bar length it was trained on (saved by an "
                   "older tickpipe; its data averages about 1 h per bar); retrain it with pipeline train on "
                   "1 min bars, this config's [indicators] bar_seconds = 60")


def test_market_notes_warn_and_never_refuse():
    """Another quote currency or venue is a warning only: the inputs are scale-free."""
    krw = {"name": "ensemble", "version": 2,
           "market": {"venue": "upbit", "symbol": "BTC/KRW", "quote": "KRW", "synthetic": False}}
    assert market_notes(krw, ["BTC/KRW@upbit", "ETH/KRW@upbit"]) == []
    assert market_notes(krw, ["BTC/KRW@upbit", "BTC/USDT@binance"]) == []     # one shares it
    (note,) = market_notes(krw, ["BTC/USDT@upbit", "ETH/USDT@upbit"])
    assert note.startswith("model 'ensemble' version 2 was trained on BTC/KRW (quoted in KRW) and serves "
                           "symbols quoted in USDT: its inputs are scale-free"), note
    quote, venue = market_notes(krw, ["BTC/USDT@binance"])
    assert "quoted in USDT" in quote and venue == ("model 'ensemble' version 2 was trained on upbit data "
                                                   "(BTC/KRW) and serves binance")
    synthetic = {**krw, "market": {"venue": "synthetic", "symbol": "BTC/USDT", "quote": "USDT",
                                   "synthetic": True}}
    assert market_notes(synthetic, ["BTC/USDT@synthetic", "ETH/USDT@synthetic"]) == []
    (note,) = market_notes(synthetic, ["BTC/USDT@binance", "BTC/KRW@upbit"])
    assert "trained on the synthetic market and serves binance, upbit" in note
    unknown = {**krw, "market": {"venue": None, "symbol": None, "quote": None, "synthetic": False}}
    assert market_notes(unknown, ["BTC/USDT@binance"]) == [] and market_notes({}, ["X/Y@z"]) == []
